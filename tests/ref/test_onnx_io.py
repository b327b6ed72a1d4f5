#!/usr/bin/python3
"""ONNX in and out, checked against onnx and onnxruntime.

1. Saving (runtime/onnx_save.c): a model is stripped of its initializers with
   the onnx package (as the plan writer does), a small C program compiled here
   against runtime/onnx_save.c, runtime/npy.c and common/ad.c appends new values
   read from .npy files, and the result must pass onnx.checker, hold exactly the
   new values, and run in onnxruntime with the output numpy computes from them.
   One tensor is big enough (240 KB) that its length prefixes take 3-byte varints.
2. Loading (compiler/onnx_load.c) through `autodist inspect`: the report of
   tests/data/onnx/mlp.onnx matches what onnx reads from the same file, and every
   broken model fails with exit code 2 and its exact message.

Run by ctest with AUTODIST (the built CLI) and AD_SRC (the source tree) set.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SRC = os.environ.get("AD_SRC") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
AUTODIST = os.environ.get("AUTODIST")
DATA = os.path.join(SRC, "tests", "data", "onnx")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


DRIVER = r"""
#include "runtime/npy.h"
#include "runtime/onnx_save.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* save_drv BASE OUT NAME=FILE.npy... : appends each array as an initializer. */
int main(int argc, char **argv) {
  int n = argc - 3;
  ad_named_tensor *t = calloc((size_t)n + 1, sizeof *t);
  ad_npy *a = calloc((size_t)n + 1, sizeof *a);
  for (int i = 0; i < n; i++) {
    char *eq = strchr(argv[3 + i], '=');
    *eq = 0;
    if (ad_npy_load(eq + 1, &a[i]) != AD_OK) {
      fprintf(stderr, "%s\n", ad_error_message());
      return 2;
    }
    t[i] = (ad_named_tensor){argv[3 + i], a[i].rank, a[i].dims, a[i].data};
  }
  ad_status st = ad_onnx_save(argv[1], argv[2], n, t);
  if (st != AD_OK)
    fprintf(stderr, "%s\n", ad_error_message());
  for (int i = 0; i < n; i++)
    ad_npy_free(&a[i]);
  free(a);
  free(t);
  return st != AD_OK;
}
"""


def build_driver(tmp):
    src = os.path.join(tmp, "save_drv.c")
    exe = os.path.join(tmp, "save_drv")
    with open(src, "w") as f:
        f.write(DRIVER)
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror",
                    "-Wno-unused-parameter",
                    "-I", SRC, src, os.path.join(SRC, "runtime", "onnx_save.c"),
                    os.path.join(SRC, "runtime", "npy.c"), os.path.join(SRC, "common", "ad.c"),
                    "-o", exe], check=True)
    return exe


def wide_model():
    """x[N,300] @ W[300,200] + b -> Relu -> MatMul V[200,2] + c (scalar) -> y."""
    rng = np.random.RandomState(3)
    inits = {"W": rng.randn(300, 200).astype(np.float32) * 0.05,
             "b": rng.randn(200).astype(np.float32),
             "V": rng.randn(200, 2).astype(np.float32),
             "c": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "V"], ["z"], name="mm2"),
             helper.make_node("Add", ["z", "c"], ["y"], name="add2")]
    g = helper.make_graph(nodes, "wide",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, inits


def forward_wide(x, p):
    return np.maximum(x @ p["W"] + p["b"], 0) @ p["V"] + p["c"]


def forward_mlp(x, p):
    h = np.maximum(x @ p["W1"].T + p["b1"], 0)
    return h @ p["W2"].T + p["b2"]


def test_save(tmp):
    drv = build_driver(tmp)
    cases = [("mlp", onnx.load(os.path.join(DATA, "mlp.onnx")), ["W1", "b1", "W2"], forward_mlp, 4)]
    wide, _ = wide_model()
    cases.append(("wide", wide, ["W", "b", "c"], forward_wide, 300))
    rng = np.random.RandomState(11)
    for name, m, names, forward, nin in cases:
        orig = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        stripped = onnx.ModelProto()
        stripped.CopyFrom(m)
        del stripped.graph.initializer[:]
        stripped.graph.initializer.extend(t for t in m.graph.initializer if t.name not in names)
        base = os.path.join(tmp, name + "_base.onnx")
        with open(base, "wb") as f:
            f.write(stripped.SerializeToString())
        trained = {k: orig[k] + np.asarray(rng.randn(*orig[k].shape), np.float32)
                   for k in names}
        args = []
        for k, v in trained.items():
            p = os.path.join(tmp, "%s_%s.npy" % (name, k))
            np.save(p, v)
            args.append("%s=%s" % (k, p))
        out = os.path.join(tmp, name + "_saved.onnx")
        r = subprocess.run([drv, base, out] + args, capture_output=True, text=True)
        check(r.returncode == 0, "%s: save driver failed: %s" % (name, r.stderr))
        if r.returncode:
            continue
        saved = onnx.load(out)
        onnx.checker.check_model(saved)
        got = {t.name: numpy_helper.to_array(t) for t in saved.graph.initializer}
        check(sorted(got) == sorted(orig), "%s: initializer names %s" % (name, sorted(got)))
        want = dict(orig, **trained)
        for k in want:
            check(k in got and got[k].dtype == np.float32 and got[k].shape == want[k].shape
                  and np.array_equal(got[k], want[k]), "%s: initializer %s differs" % (name, k))
        check([n.name for n in saved.graph.node] == [n.name for n in m.graph.node],
              "%s: nodes changed" % name)
        x = rng.randn(5, nin).astype(np.float32)
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        y = sess.run(None, {"x": x})[0]
        check(np.allclose(y, forward(x, want), rtol=1e-5, atol=1e-5),
              "%s: onnxruntime output differs from numpy with the saved weights" % name)
        check(not np.allclose(y, forward(x, orig), rtol=1e-3, atol=1e-3),
              "%s: onnxruntime still computes with the original weights" % name)


def run_cli(*args):
    return subprocess.run([AUTODIST, *args], capture_output=True, text=True)


def test_inspect():
    if not AUTODIST or not os.path.exists(AUTODIST):
        check(False, "AUTODIST is not set to the built CLI (%r)" % AUTODIST)
        return
    path = os.path.join(DATA, "mlp.onnx")
    m = onnx.load(path)
    inits = [numpy_helper.to_array(t) for t in m.graph.initializer]
    n_elems = sum(a.size for a in inits)
    # FLOPs from the model itself: a multiply-add is 2 FLOPs, Relu 1 per element.
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    hidden = w["W1"].shape[0]
    for batch in (1, 2):
        flops = batch * (2 * w["W1"].size + hidden + 2 * w["W2"].size)
        extra = ("--batch", str(batch)) if batch > 1 else ()
        r = run_cli("inspect", path, *extra)
        check(r.returncode == 0, "inspect mlp.onnx: exit %d: %s" % (r.returncode, r.stderr))
        want = [
            "model: %s (opset %d)" % (path, m.opset_import[0].version),
            "inputs:",
            "  %-24s %-8s [%d, 4]  (axis 0 is the batch)" % ("x", "float32", batch),
            "outputs:",
            "  %-24s %-8s [%d, 3]  (axis 0 is the batch)" % ("y", "float32", batch),
            "ops: 3 nodes",
            "  %-24s %d" % ("Gemm", 2),
            "  %-24s %d" % ("Relu", 1),
            "parameters: %d tensors, %d elements, %d bytes" % (len(inits), n_elems, 4 * n_elems),
            "flops: %d (forward, batch %d)" % (flops, batch),
        ]
        check(r.stdout.splitlines() == want,
              "inspect mlp.onnx --batch %d:\n%s\nwant:\n%s" % (batch, r.stdout, "\n".join(want)))

    legacy = os.path.join(DATA, "mlp_legacy.onnx")
    r = run_cli("inspect", legacy)
    check(r.returncode == 0, "inspect mlp_legacy.onnx: %s" % r.stderr)
    lines = r.stdout.splitlines()
    check("  %-24s %-8s [2, 4]" % ("x", "float32") in lines, "legacy input line:\n" + r.stdout)
    check("parameters: 4 tensors, 67 elements, 268 bytes" in lines, "legacy params:\n" + r.stdout)
    check("flops: %d (forward, fixed input shapes)" % (2 * 120 + 6) in lines,
          "legacy flops:\n" + r.stdout)

    errors = {
        "err_opset18.onnx": "error: opset 18 of domain 'ai.onnx' is not supported "
                            "(autodist supports 1-17)",
        "err_op_opset.onnx": "node 'relu1' (Relu): error: op Relu is supported at opsets 6-17, "
                             "the model imports 5",
        "err_convt.onnx": "node 'conv3' (ConvTranspose): error: op not supported",
        "err_truncated.onnx": "error: not a valid ONNX model (protobuf parse failed)",
        "err_dyn_axis.onnx": "error: input 'x' has a dynamic dimension 'features' at axis 1 "
                             "(only axis 0, the batch, may be dynamic)",
        "err_str_init.onnx": "initializer 'w': error: dtype string is not supported "
                             "(numeric and bool tensors only)",
        "err_domain.onnx": "error: opset 1 of domain 'com.example' is not supported "
                           "(autodist supports the default domain 'ai.onnx' only)",
        "err_no_graph.onnx": "error: not a valid ONNX model (no graph)",
        "err_undefined.onnx": "node 'add' (Add): error: input 'ghost' is not a graph input, an "
                              "initializer or the output of an earlier node",
    }
    for f, msg in sorted(errors.items()):
        p = os.path.join(DATA, f)
        r = run_cli("inspect", p)
        want = "autodist: %s: %s" % (p, msg)
        check(r.returncode == 2 and r.stderr.strip() == want and not r.stdout,
              "%s: exit %d, stderr:\n  %s\nwant:\n  %s" % (f, r.returncode, r.stderr.strip(), want))

    usage = "usage: autodist inspect MODEL.onnx [--batch N]"
    for args, msg in [((), "error: no model given"),
                      ((path, "--batch", "0"),
                       "error: --batch must be a positive integer, got '0'"),
                      ((path, "--batch"), "error: --batch needs a value"),
                      ((path, "--bogus"), "error: unknown option '--bogus'"),
                      ((path, path),
                       "error: more than one model given ('%s', '%s')" % (path, path)),
                      (("missing.onnx",),
                       "missing.onnx: error: cannot open: No such file or directory")]:
        r = run_cli("inspect", *args)
        want = "autodist: " + msg + ("" if "cannot open" in msg else "\n" + usage)
        check(r.returncode == 2 and r.stderr.strip() == want,
              "inspect %s: exit %d, stderr:\n%s\nwant:\n%s" % (args, r.returncode, r.stderr, want))
    r = run_cli("inspect", "--help")
    check(r.returncode == 0 and r.stdout.startswith(usage), "inspect --help: " + r.stdout)


def main():
    with tempfile.TemporaryDirectory(prefix="ad_test_onnx_io_") as tmp:
        test_save(tmp)
    test_inspect()
    if failures:
        print("test_onnx_io: %d check(s) failed" % len(failures))
        return 1
    print("test_onnx_io: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
