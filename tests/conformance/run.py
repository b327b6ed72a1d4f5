#!/usr/bin/python3
"""ONNX backend conformance: runs ONNX's node tests through `autodist infer`.

    AUTODIST=build/autodist /usr/bin/python3 tests/conformance/run.py --data DIR
        [--filter REGEX] [--jobs N] [--timeout S] [--expected FILE]
        [--update-expected | --list-supported-check] [--verbose]

DIR/node/test_*/ are ONNX's backend node tests (model.onnx, test_data_set_*/
input_*.pb, output_*.pb); when DIR/node is missing they are generated first
with generate.py (Debian's python3-onnx). For each test and data set the
inputs are written as .npy (named after the model's graph inputs, in order),
`autodist infer model.onnx --data NAME=FILE.npy... --out NAME=FILE.npy...`
runs with a timeout, and every output is compared with ONNX's expected one:
shapes and dtypes must match; floats within |a - b| <= 1e-5 + 1e-4 |b| (NaN
equals NaN); integers, bools and strings exactly. A test whose inputs or
outputs are not tensors (sequences, optionals, maps) or are strings cannot be
given to `infer`; it fails, and `autodist inspect model.onnx` tells whether
autodist rejects the model (the cause printed) or would accept it.

Each failure prints one line with its cause: autodist's error message (first
line), the worst mismatch, a crash or a timeout. The last line is
`N passed, M failed (K expected failures, U unexpected)`.

Expected failures live in tests/conformance/expected_failures.txt, one
`test_name  # reason` per line. The exit status is 1 when a test outside that
list fails, when a listed test now passes (the list must stay honest: remove
it), and when the supported-op rule below is broken; 0 otherwise.
--update-expected rewrites the list from this run's failures and reasons
(with --filter, entries of tests not run are kept).

The supported-op rule. `autodist inspect --ops` lists the ops autodist
supports, with their opsets and the dtypes of each op's data (input 0, or the
input or output the line names). A test is an op's own test when its model is
one node of that op (the *_expanded tests, several nodes, count toward the
total but are no op's own test). An own test is in scope when the op is listed
at the model's opset, every graph input and output is a numeric or bool tensor
(not a string, sequence, optional or map) and the op's data has a listed
dtype. Every own test in scope must pass. The one excuse is ONNX's data
itself: when autodist's outputs differ from the expected ones but equal
onnxruntime's on the same inputs (checked live, for every mismatch), the
failure is a `reference` one. An own test of a listed op out of scope may
fail only by a clean refusal: autodist refuses the model up front (exit 2, an
error naming model.onnx and the node, or the input file). A wrong answer, a
crash, a timeout or a failure while running (exit 1) is never excused, and
the expected list cannot excuse a broken rule. A listed op that passes none of
its own tests in scope gets a note. --list-supported-check runs only the own
tests of listed ops, prints each op's tally and checks the rule.
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
RTOL, ATOL = 1e-4, 1e-5

# Outcome kinds of a failure. Only REJECTED excuses a supported op's own test.
REJECTED = "rejected"  # exit 2, refused at load or compile time (CLEAN_REJECTION)
ERROR = "error"  # another error exit (1, or 2 from elsewhere)
CRASH = "crash"  # a signal or an exit code autodist never uses
TIMEOUT = "timeout"
MISMATCH = "mismatch"  # exit 0 but a wrong or missing output
UNRUNNABLE = "unrunnable"  # not expressible as .npy tensors, and autodist accepts the model
REFERENCE = "reference"  # a mismatch with ONNX's data where autodist equals onnxruntime


# A clean rejection: autodist refuses the model up front, at load or compile
# time, with an error that names the model (and the node) or the input file:
# "model.onnx: node 'n' (Add): error: input 0 ('x') is uint8; only float32 is
# supported", "model.onnx: error: input 'x' is not a tensor". Not clean: a
# wrong answer, a crash, a timeout, a failure while running (exit 1), or an
# error of infer's own plumbing.
CLEAN_REJECTION = re.compile(r"^(model\.onnx|in\d+\.npy): (node '[^']*' \([^)]*\): )?error: ")


class Failure(Exception):
    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# `inspect --ops` names dtypes singly or by class.
DTYPE_CLASSES = {
    "float": ("float16", "bfloat16", "float32", "float64"),
    "int": ("int8", "int16", "int32", "int64"),
    "uint": ("uint8", "uint16", "uint32", "uint64"),
}
ONNX_DTYPE = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


class OpSupport:
    """One line of `autodist inspect --ops`: `Op  A-B ...  : dtypes [(input k) | (output)]`."""

    def __init__(self, line):
        head, _, tail = line.partition(":")
        self.name, *ranges = head.split()
        self.ranges = [tuple(int(x) for x in r.split("-")) for r in ranges]
        m = re.search(r"\((input (\d+)|output)\)\s*$", tail)
        self.which = (-1 if m.group(1) == "output" else int(m.group(2))) if m else 0
        words = (tail[: m.start()] if m else tail).split()
        self.dtypes = {d for w in words for d in DTYPE_CLASSES.get(w, (w,))}

    def at(self, opset):
        return any(lo <= opset <= hi for lo, hi in self.ranges)


def supported_ops(autodist):
    """{op_type: OpSupport} from `autodist inspect --ops`."""
    out = subprocess.run([autodist, "inspect", "--ops"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("run.py: error: %s inspect --ops failed: %s" % (autodist, out.stderr.strip()))
    ops = {}
    for line in out.stdout.splitlines():
        if line.strip() and not line.startswith("#"):
            o = OpSupport(line)
            ops[o.name] = o
    return ops


def read_expected(path):
    """{test_name: reason} from the expected-failures file."""
    expected = {}
    if not os.path.exists(path):
        return expected
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("#")
            name = name.strip()
            if not re.fullmatch(r"test_\w+", name):
                sys.exit("%s:%d: error: expected 'test_name  # reason', got '%s'" % (path, n, line))
            expected[name] = reason.strip()
    return expected


def write_expected(path, failures):
    with open(path, "w") as f:
        f.write(
            "# ONNX backend node tests that autodist fails today, one per line:\n"
            "#   test_name  # why (autodist's error, or the worst mismatch)\n"
            "# tests/conformance/run.py fails when a test outside this list fails and\n"
            "# when a listed test passes. Regenerate with run.py --update-expected.\n"
        )
        for name in sorted(failures):
            f.write("%s  # %s\n" % (name, failures[name].replace("\n", " ")))


def not_npy(ins, outs):
    """Why the graph inputs ins / outputs outs cannot be .npy tensors, or None."""
    for role, values in (("input", ins), ("output", outs)):
        for v in values:
            kind = v.type.WhichOneof("value")
            if kind != "tensor_type":
                return "%s '%s' is a %s, not a tensor" % (role, v.name, kind.replace("_type", ""))
            if v.type.tensor_type.elem_type == onnx.TensorProto.STRING:
                return "%s '%s' holds strings" % (role, v.name)
    return None


class Runner:
    def __init__(self, autodist, timeout, ops):
        self.autodist, self.timeout, self.ops = autodist, timeout, ops

    def own_op(self, model):
        """(op_type, listed, in_scope) when the model is one node of the default
        domain, else None. listed: autodist lists the op at the model's opset.
        in_scope: also every graph input and output is a numeric or bool tensor
        and the op's data (the input or output that `inspect --ops` names) has
        one of the listed dtypes."""
        if len(model.graph.node) != 1 or model.graph.node[0].domain not in ("", "ai.onnx"):
            return None
        node = model.graph.node[0]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        sup = self.ops.get(node.op_type)
        if not sup or not sup.at(opset):
            return node.op_type, False, False
        types = {v.name: v.type for v in list(model.graph.input) + list(model.graph.output)}
        for v in list(model.graph.input) + list(model.graph.output):
            if (v.type.WhichOneof("value") != "tensor_type"
                    or v.type.tensor_type.elem_type not in ONNX_DTYPE):
                return node.op_type, True, False
        inits = {t.name: t.data_type for t in model.graph.initializer}
        names = node.output if sup.which < 0 else node.input
        k = max(sup.which, 0)
        name = names[k] if k < len(names) else ""
        if name in inits:
            dt = inits[name]
        elif name in types:
            dt = types[name].tensor_type.elem_type
        else:
            return node.op_type, True, False
        return node.op_type, True, ONNX_DTYPE.get(dt) in sup.dtypes

    def clean(self, text, test_dir, tmp):
        """Message text without this machine's paths, so that reasons are stable."""
        text = text.replace(os.path.join(test_dir, "model.onnx"), "model.onnx")
        text = text.replace(tmp + os.sep, "").replace(test_dir + os.sep, "")
        return re.sub(r"^autodist: ", "", text)

    def autodist_run(self, args, test_dir, tmp):
        """Runs autodist; raises Failure unless it exits 0."""
        try:
            p = subprocess.run([self.autodist] + args, capture_output=True, text=True,
                               timeout=self.timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise Failure(TIMEOUT, "timeout: autodist %s ran over %ds" % (args[0], self.timeout))
        if p.returncode == 0:
            return
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        first = self.clean(lines[0] if lines else "(no message)", test_dir, tmp)
        if p.returncode < 0:
            sig = signal.Signals(-p.returncode).name
            last = self.clean(lines[-1], test_dir, tmp) if lines else "(no message)"
            raise Failure(CRASH, "crash: autodist %s killed by %s: %s" % (args[0], sig, last))
        if p.returncode not in (1, 2):
            raise Failure(CRASH, "crash: autodist %s exit %d: %s" % (args[0], p.returncode, first))
        reason = "exit %d: %s" % (p.returncode, first)
        if p.returncode == 2 and CLEAN_REJECTION.search(first):
            raise Failure(REJECTED, reason)
        raise Failure(ERROR, reason)

    def run_test(self, test_dir):
        """(test_name, own_op, Failure or None)."""
        name = os.path.basename(test_dir)
        model = onnx.load(os.path.join(test_dir, "model.onnx"))
        own = self.own_op(model)
        tmp = tempfile.mkdtemp(prefix="adconf-")
        try:
            inits = {t.name for t in model.graph.initializer}
            ins = [v for v in model.graph.input if v.name not in inits]
            outs = list(model.graph.output)
            why = not_npy(ins, outs)
            if why:
                # Not expressible as .npy tensors: autodist should refuse the model.
                self.autodist_run(["inspect", os.path.join(test_dir, "model.onnx")], test_dir, tmp)
                raise Failure(UNRUNNABLE, "unrunnable: %s, but autodist accepts the model"
                              % why)
            sets = sorted(d for d in os.listdir(test_dir) if d.startswith("test_data_set_"))
            for s in sets:
                self.run_set(ins, outs, os.path.join(test_dir, s), test_dir, tmp)
            return name, own, None
        except Failure as f:
            return name, own, f
        except Exception as e:  # a test this runner cannot read: report it, go on
            return name, own, Failure(UNRUNNABLE, "runner error: %s: %s" % (type(e).__name__, e))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run_set(self, ins, outs, set_dir, test_dir, tmp):
        """Runs one data set; raises Failure unless every output matches."""

        def load(prefix, i):
            t = onnx.TensorProto()
            with open(os.path.join(set_dir, "%s_%d.pb" % (prefix, i)), "rb") as f:
                t.ParseFromString(f.read())
            return numpy_helper.to_array(t)

        args = ["infer", os.path.join(test_dir, "model.onnx")]
        n_in = len([f for f in os.listdir(set_dir) if f.startswith("input_")])
        if n_in != len(ins):
            raise Failure(UNRUNNABLE, "unrunnable: %d input files for the model's %d inputs"
                          % (n_in, len(ins)))
        for i in range(n_in):
            path = os.path.join(tmp, "in%d.npy" % i)
            np.save(path, load("input", i), allow_pickle=False)
            args += ["--data", "%s=%s" % (ins[i].name, path)]
        want = []
        for i, v in enumerate(outs):
            path = os.path.join(tmp, "out%d.npy" % i)
            args += ["--out", "%s=%s" % (v.name, path)]
            want.append((v.name, path, load("output", i)))
        for _, path, _ in want:
            if os.path.exists(path):
                os.unlink(path)
        self.autodist_run(args, test_dir, tmp)
        got = []
        for out_name, path, b in want:
            if not os.path.exists(path):
                raise Failure(MISMATCH, "mismatch: output '%s' was not written" % out_name)
            got.append(np.load(path, allow_pickle=False))
        try:
            for (out_name, _, b), a in zip(want, got):
                compare(out_name, a, b)
        except Failure as f:
            if ort_agrees(os.path.join(test_dir, "model.onnx"), ins, outs,
                          [load("input", i) for i in range(n_in)], got):
                raise Failure(REFERENCE, "reference: %s; autodist equals onnxruntime"
                              % f.reason)
            raise


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def ort_agrees(model_path, ins, outs, inputs, got):
    """Whether onnxruntime's outputs for these inputs equal autodist's (got).
    bfloat16, which numpy lacks (its data are uint16 bits), goes through
    float32: Cast nodes are added around the model for onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    BF16, F32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    m = onnx.load(model_path)
    g = m.graph
    feeds = {}
    for v, x in zip(ins, inputs):
        # Data of another shape than the declared one (autodist runs it with
        # a warning; onnxruntime refuses another rank): declare the data's.
        gi = next(i for i in g.input if i.name == v.name)
        gi.type.tensor_type.ClearField("shape")
        for d in x.shape:
            gi.type.tensor_type.shape.dim.add().dim_value = d
        if v.type.tensor_type.elem_type == BF16:
            gi = next(i for i in g.input if i.name == v.name)
            gi.name = v.name + "__f32"
            gi.type.tensor_type.elem_type = F32
            g.node.insert(0, onnx.helper.make_node("Cast", [gi.name], [v.name], to=BF16))
            feeds[gi.name] = bf16_to_f32(x)
        else:
            feeds[v.name] = x
    names, want = [], []
    for v, a in zip(outs, got):
        if v.type.tensor_type.elem_type == BF16:
            go = next(o for o in g.output if o.name == v.name)
            go.name = v.name + "__f32"
            go.type.tensor_type.elem_type = F32
            g.node.append(onnx.helper.make_node("Cast", [v.name], [go.name], to=F32))
            names.append(go.name)
            want.append(bf16_to_f32(a))
        else:
            names.append(v.name)
            want.append(a)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        res = ort.InferenceSession(m.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"]).run(names, feeds)
        for n, a, r in zip(names, want, res):
            compare(n, a, np.asarray(r))
    except Failure:
        return False
    except Exception:  # onnxruntime cannot run this model
        return False
    return True


def compare(name, a, b):
    """Raises Failure(MISMATCH) unless a (autodist's) equals b (ONNX's)."""
    if a.dtype != b.dtype:
        raise Failure(MISMATCH,
                      "mismatch: output '%s' is %s, expected %s" % (name, a.dtype, b.dtype))
    if a.shape != b.shape:
        raise Failure(MISMATCH, "mismatch: output '%s' has shape %s, expected %s"
                      % (name, list(a.shape), list(b.shape)))
    if a.size == 0:
        return
    if np.issubdtype(b.dtype, np.floating):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a64 - b64)
            near = np.isfinite(a64) & np.isfinite(b64) & (diff <= ATOL + RTOL * np.abs(b64))
            bad = ~((a64 == b64) | near | (np.isnan(a64) & np.isnan(b64)))
            if not bad.any():
                return
            excess = diff - (ATOL + RTOL * np.abs(b64))
            excess = np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf)
        at = np.unravel_index(int(np.argmax(excess)), a.shape)
        raise Failure(
            MISMATCH,
            "mismatch: output '%s': %d of %d differ, worst at %s: got %.7g, expected %.7g"
            % (name, int(bad.sum()), a.size, list(at), a64[at], b64[at]),
        )
    bad = a != b
    if not bad.any():
        return
    at = np.unravel_index(int(np.argmax(bad)), a.shape)
    raise Failure(
        MISMATCH,
        "mismatch: output '%s': %d of %d differ, first at %s: got %r, expected %r"
        % (name, int(bad.sum()), a.size, list(at), a[at].item(), b[at].item()),
    )


def cause_of(f):
    """A failure's reason without the names and numbers of its test, to group by."""
    if f.kind == MISMATCH:
        r = re.sub(r"output '[^']*'", "output", f.reason)
        r = re.sub(r": \d+ of \d+ differ.*", ": wrong values", r)
        return re.sub(r"\[[^\]]*\]", "[...]", r)
    r = re.sub(r"\b(node|input|output|initializer) (\d+ \()?'[^']*'", r"\1 \2'_'", f.reason)
    r = re.sub(r"(--out|--data) [^ :]+", r"\1 _", r)
    return re.sub(r"\bin\d+\.npy", "in.npy", r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder holding node/ (generated when missing)")
    ap.add_argument("--autodist", default=os.environ.get("AUTODIST"), help="default: $AUTODIST")
    ap.add_argument("--filter", help="run only tests whose name matches this regex (re.search)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=30, help="seconds per autodist run")
    ap.add_argument("--expected", default=os.path.join(HERE, "expected_failures.txt"))
    ap.add_argument("--update-expected", action="store_true")
    ap.add_argument("--list-supported-check", action="store_true")
    ap.add_argument("--verbose", "-v", action="store_true", help="print passes too")
    opt = ap.parse_args()
    if not opt.autodist:
        ap.error("give the binary with --autodist or $AUTODIST")
    opt.autodist = os.path.abspath(opt.autodist)
    opt.data = os.path.abspath(opt.data)
    if opt.update_expected and opt.list_supported_check:
        ap.error("--update-expected and --list-supported-check exclude each other")

    node_dir = os.path.join(opt.data, "node")
    if not os.path.isdir(node_dir):
        print("generating ONNX node tests into %s" % opt.data, flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), opt.data], check=True)
    all_tests = sorted(d for d in os.listdir(node_dir) if d.startswith("test_"))
    tests = [t for t in all_tests if not opt.filter or re.search(opt.filter, t)]
    ops = supported_ops(opt.autodist)
    runner = Runner(opt.autodist, opt.timeout, ops)
    expected = read_expected(opt.expected)

    if opt.list_supported_check:

        def own_supported(t):
            own = runner.own_op(onnx.load(os.path.join(node_dir, t, "model.onnx")))
            return own is not None and own[1]

        tests = [t for t in tests if own_supported(t)]

    start = time.time()
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=opt.jobs) as pool:
        futs = [pool.submit(runner.run_test, os.path.join(node_dir, t)) for t in tests]
        for fut in futs:
            name, own, fail = fut.result()
            results.append((name, own, fail))
            if fail is None:
                if opt.verbose:
                    print("pass  %s" % name, flush=True)
                continue
            tag = "xfail" if name in expected else "FAIL "
            print("%s %s: %s" % (tag, name, fail.reason), flush=True)
    elapsed = time.time() - start

    failures = {n: f for n, _, f in results if f is not None}
    passed = len(results) - len(failures)
    # The supported-op rule: an own test of a listed op, within its listed
    # dtypes, passes (or differs from ONNX's data only where onnxruntime agrees
    # with autodist); outside them it may be refused cleanly, nothing else.
    def breaks_rule(own, f):
        if not f or not own or not own[1]:
            return False
        return f.kind != REFERENCE if own[2] else f.kind not in (REJECTED, REFERENCE)

    broken = sorted((n, own[0], f) for n, own, f in results if breaks_rule(own, f))
    unexpected = sorted(n for n in failures if n not in expected)
    run_names = {n for n, _, _ in results}
    stale = sorted(n for n in expected if n in run_names and n not in failures)
    if not opt.filter and not opt.list_supported_check:
        stale += sorted(n for n in expected if n not in all_tests)

    status = 0
    if opt.list_supported_check:
        tally = {}
        for n, own, f in results:
            t = tally.setdefault(own[0], [0, 0, 0, 0])
            t[3 if breaks_rule(own, f) else 0 if f is None else 1 if f.kind == REFERENCE else 2] += 1
        print("listed ops (autodist inspect --ops), own tests: passed / differ from ONNX's data "
              "where onnxruntime agrees / outside the listed dtypes, refused / broken")
        for op in sorted(ops):
            p, r, o, b = tally.get(op, (0, 0, 0, 0))
            print("  %-26s %3d %3d %3d %3d%s" % (op, p, r, o, b,
                                                "" if p + r + o + b else "  (no node test)"))
    elif opt.update_expected:
        kept = {n: r for n, r in expected.items() if n in all_tests and n not in run_names}
        kept.update({n: f.reason for n, f in failures.items()})
        write_expected(opt.expected, kept)
        print("wrote %d expected failures to %s" % (len(kept), opt.expected))
    else:
        for n in unexpected:
            print("unexpected failure: %s: %s" % (n, failures[n].reason))
        for n in stale:
            why = "now passes" if n in run_names else "is no ONNX node test"
            print("stale expected failure: %s %s: remove it from %s" % (n, why, opt.expected))
        if unexpected or stale:
            status = 1
    for n, op, f in broken:
        print(
            "supported op broken: %s (%s is listed by autodist inspect --ops): %s; it must "
            "pass, or autodist must refuse the model (exit 2, an error naming model.onnx)"
            % (n, op, f.reason)
        )
        status = 1
    # A note (not a failure) for a listed op that passes none of its own tests.
    if not opt.filter:
        own_passed, own_total = {}, {}
        for n, own, f in results:
            if own and own[2]:
                own_total[own[0]] = own_total.get(own[0], 0) + 1
                own_passed[own[0]] = own_passed.get(own[0], 0) + (f is None)
        for op in sorted(own_total):
            if not own_passed[op]:
                print(
                    "note: %s is listed by autodist inspect --ops but passes none of its %d "
                    "own tests" % (op, own_total[op])
                )

    if failures:
        print("most common causes of failure:")
        causes = {}
        for f in failures.values():
            causes[cause_of(f)] = causes.get(cause_of(f), 0) + 1
        for c, k in sorted(causes.items(), key=lambda x: (-x[1], x[0]))[:15]:
            print("  %4d  %s" % (k, c))
    if results:
        print(
            "%.1f%% of %d node tests passed in %.0fs"
            % (100.0 * passed / len(results), len(results), elapsed)
        )
    n_exp = len([n for n in failures if n in expected])
    print(
        "%d passed, %d failed (%d expected failures, %d unexpected)"
        % (passed, len(failures), n_exp, len(failures) - n_exp)
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
