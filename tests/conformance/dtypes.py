#!/usr/bin/python3
"""The dtypes `autodist inspect --ops` lists, checked op by op against onnxruntime.

    AUTODIST=build/autodist /usr/bin/python3 tests/conformance/dtypes.py --data DIR
        [--filter REGEX] [--per-op N] [--jobs N] [--verbose]

ONNX's node tests mostly use float32. For each listed op this takes its own
tests (one-node models, see run.py; N per op, default 2) whose data has a
listed dtype and rewrites them to every other numeric dtype: the graph
inputs, outputs and initializers of the data's dtype become the new one, and
the first data set is converted (floats to integers as round(4 x), to
unsigned as |round(4 x)|, NaN as 0, clipped to the dtype's range). onnxruntime runs the rewritten model; where it
cannot (it lacks that op for the dtype, or the model breaks a type rule), the
case is skipped. Otherwise `autodist infer` runs it:

- a dtype the op lists must give onnxruntime's outputs (floats within
  |a - b| <= atol + rtol |b|: 1e-5 + 1e-4 |b|, for float16 and bfloat16
  1e-3 + 4e-3 |b| since onnxruntime may compute them in half precision;
  integers exactly);
- a dtype the op does not list must be refused cleanly (exit 2, an error
  naming model.onnx and the node), not computed: the listing would be wrong.

Cases that would divide integers by zero (undefined in onnxruntime), and
integer cases whose float64 twin leaves the dtype's range (ONNX leaves
overflow undefined), are skipped. The last line is
`N checked, M skipped, K wrong`; the exit status is 1 when any case is wrong.
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (the node-test runner: op listing, own tests, comparison)

T = onnx.TensorProto
NP = {
    "float32": np.float32, "float64": np.float64, "float16": np.float16,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_,
}
CODE = {v: k for k, v in run.ONNX_DTYPE.items()}
TARGETS = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8",
           "uint16", "uint32", "uint64"]
# Ops whose output dtype comes from an attribute: rewriting the data's dtype
# does not rewrite them (their own tests cover their dtypes).
SKIP_OPS = {"Cast", "CastLike", "ConstantOfShape", "EyeLike", "OneHot"}


def convert(x, dt):
    if dt == x.dtype.name:
        return x
    if np.issubdtype(x.dtype, np.floating) and not dt.startswith("float"):
        r = np.nan_to_num(np.round(x.astype(np.float64) * 4), nan=0.0)
        if dt.startswith("uint"):
            r = np.abs(r)
        info = np.iinfo(NP[dt])
        # The largest float64 not above the dtype's maximum (2^63 - 1 and
        # 2^64 - 1 round up to a value the cast would overflow).
        hi = float(info.max)
        if hi > info.max:
            hi = np.nextafter(hi, 0)
        return np.clip(r, info.min, hi).astype(NP[dt])
    return x.astype(NP[dt])


def rewrite(model, src, dst):
    """A copy of model with every graph input, output and initializer of dtype
    src (an ONNX code) made dst; None when nothing changes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    changed = False
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type == src:
            v.type.tensor_type.elem_type = dst
            changed = True
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == src:
            a = convert(numpy_helper.to_array(t), run.ONNX_DTYPE[dst])
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
            changed = True
    return m if changed else None


def tolerance(dt):
    return (4e-3, 1e-3) if dt in ("float16", "bfloat16") else (run.RTOL, run.ATOL)


def close(a, b, dt):
    if a.shape != b.shape or a.dtype != b.dtype:
        return "got %s %s, onnxruntime %s %s" % (a.dtype, list(a.shape), b.dtype, list(b.shape))
    if a.size == 0:
        return None
    if np.issubdtype(b.dtype, np.floating):
        rtol, atol = tolerance(dt)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = (a64 == b64) | (np.abs(a64 - b64) <= atol + rtol * np.abs(b64)) | (
                np.isnan(a64) & np.isnan(b64))
        if ok.all():
            return None
        at = np.unravel_index(int(np.argmax(~ok)), a.shape)
        return "%d of %d differ, first at %s: got %.7g, onnxruntime %.7g" % (
            int((~ok).sum()), a.size, list(at), a64[at], b64[at])
    bad = a != b
    if not bad.any():
        return None
    at = np.unravel_index(int(np.argmax(bad)), a.shape)
    return "%d of %d differ, first at %s: got %r, onnxruntime %r" % (
        int(bad.sum()), a.size, list(at), a[at].item(), b[at].item())


def ort_run(m, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def overflows(model, src, dst, feeds, want):
    """Whether the same integer inputs, in float64, give an output of dtype dst
    outside its range (ONNX leaves integer overflow undefined)."""
    m = rewrite(model, CODE[src], CODE["float64"])
    f = {k: (v.astype(np.float64) if v.dtype == NP[dst] else v) for k, v in feeds.items()}
    try:
        ref = ort_run(m, f)
    except Exception:
        return False
    for r, w in zip(ref, want):
        if np.asarray(w).dtype == NP[dst]:
            info = np.iinfo(NP[dst])
            r = np.asarray(r, dtype=np.float64)
            if r.size and (np.nanmax(r) > info.max or np.nanmin(r) < info.min):
                return True
    return False


def check(autodist, test_dir, src, dst, listed, timeout):
    """(outcome, message): outcome is "ok", "skip" or "wrong"."""
    import onnxruntime as ort

    model = onnx.load(os.path.join(test_dir, "model.onnx"))
    m = rewrite(model, CODE[src], CODE[dst])
    if m is None:
        return "skip", "nothing of dtype %s to rewrite" % src
    inits = {t.name for t in m.graph.initializer}
    ins = [v for v in m.graph.input if v.name not in inits]
    set_dir = os.path.join(test_dir, "test_data_set_0")
    feeds = {}
    for i, v in enumerate(ins):
        t = onnx.TensorProto()
        with open(os.path.join(set_dir, "input_%d.pb" % i), "rb") as f:
            t.ParseFromString(f.read())
        x = numpy_helper.to_array(t)
        if v.type.tensor_type.elem_type == CODE[dst] and x.dtype.name == src:
            x = convert(x, dst)
        feeds[v.name] = x
    node = m.graph.node[0]
    if node.op_type in ("Div", "Mod") and not dst.startswith("float"):
        if any((np.asarray(feeds.get(n, 1)) == 0).any() for n in node.input[1:2]):
            return "skip", "integer division by zero"
    try:
        want = ort_run(m, feeds)
    except Exception as e:
        return "skip", "onnxruntime: %s" % str(e).splitlines()[0][:100]
    if not dst.startswith("float") and overflows(model, src, dst, feeds, want):
        return "skip", "integer overflow (undefined in ONNX)"
    tmp = tempfile.mkdtemp(prefix="addt-")
    try:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(m, path)
        args = [autodist, "infer", path]
        for name, x in feeds.items():
            p = os.path.join(tmp, "in_%d.npy" % len(args))
            np.save(p, x)
            args += ["--data", "%s=%s" % (name, p)]
        outs = []
        for k, v in enumerate(m.graph.output):
            p = os.path.join(tmp, "out%d.npy" % k)
            args += ["--out", "%s=%s" % (v.name, p)]
            outs.append(p)
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return "wrong", "timeout"
        first = (r.stderr.strip().splitlines() or ["(no message)"])[0].replace(tmp + "/", "")
        first = re.sub(r"^autodist: ", "", first)
        if r.returncode == 2 and run.CLEAN_REJECTION.search(first):
            if listed:
                return "wrong", "listed, but refused: %s" % first
            return "ok", "refused"
        if r.returncode != 0:
            return "wrong", "exit %d: %s" % (r.returncode, first)
        for p, b in zip(outs, want):
            diff = close(np.load(p), np.asarray(b), dst)
            if diff:
                return "wrong", diff
        if not listed:
            return "wrong", "computes %s (right), but inspect --ops does not list it" % dst
        return "ok", "matches onnxruntime"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder holding node/ (see run.py)")
    ap.add_argument("--autodist", default=os.environ.get("AUTODIST"), help="default: $AUTODIST")
    ap.add_argument("--filter", help="only ops whose name matches this regex")
    ap.add_argument("--per-op", type=int, default=2, help="own tests per op (default 2)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=30)
    ap.add_argument("--verbose", "-v", action="store_true")
    opt = ap.parse_args()
    if not opt.autodist:
        ap.error("give the binary with --autodist or $AUTODIST")
    autodist = os.path.abspath(opt.autodist)
    node_dir = os.path.join(os.path.abspath(opt.data), "node")
    if not os.path.isdir(node_dir):
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), opt.data], check=True)
    ops = run.supported_ops(autodist)
    runner = run.Runner(autodist, opt.timeout, ops)

    picked = {}  # op -> [(test_dir, data dtype)]
    for t in sorted(os.listdir(node_dir)):
        d = os.path.join(node_dir, t)
        model = onnx.load(os.path.join(d, "model.onnx"))
        own = runner.own_op(model)
        if not own or not own[2] or own[0] in SKIP_OPS:
            continue
        if opt.filter and not re.search(opt.filter, own[0]):
            continue
        sup = ops[own[0]]
        node = model.graph.node[0]
        names = node.output if sup.which < 0 else node.input
        name = names[max(sup.which, 0)]
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(model.graph.input) + list(model.graph.output)}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        src = run.ONNX_DTYPE.get(types.get(name))
        if src and len(picked.setdefault(own[0], [])) < opt.per_op:
            picked[own[0]].append((d, src))

    cases = [(op, d, src, dst, dst in ops[op].dtypes)
             for op, tests in sorted(picked.items()) for d, src in tests
             for dst in TARGETS if dst != src]
    counts = {"ok": 0, "skip": 0, "wrong": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=opt.jobs) as pool:
        futs = [(c, pool.submit(check, autodist, c[1], c[2], c[3], c[4], opt.timeout))
                for c in cases]
        for (op, d, src, dst, listed), fut in futs:
            outcome, msg = fut.result()
            counts[outcome] += 1
            if outcome == "wrong" or opt.verbose:
                print("%-5s %s %s -> %s (%s): %s" % (
                    "WRONG" if outcome == "wrong" else outcome, os.path.basename(d), src, dst,
                    "listed" if listed else "not listed", msg), flush=True)
    print("%d checked, %d skipped, %d wrong" % (counts["ok"], counts["skip"], counts["wrong"]))
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
