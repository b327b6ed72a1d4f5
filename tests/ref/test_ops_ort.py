#!/usr/bin/env python3
"""tests/ref/test_ops_ort.py: the shape, linear, conv and softmax op families
against outside references, one single-op ONNX model at a time.

Inference: each case is built with onnx.helper, run by onnxruntime (the
reference) and by `autodist infer`; outputs must agree to rtol 1e-4, atol 1e-5.
Cases cover the attributes each op accepts, at opsets 11, 13 and 17 where the
op exists there. Unsupported attributes must fail at compile time with exit
code 2 and a message naming the node.

Gradients (when `autodist compile -t` works): the same op with trainable
initializers and an MSE loss is trained for one SGD step (lr 1, no momentum);
the updated initializers must equal w - dL/dw computed by PyTorch autograd.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_ops_ort.py [-k SUBSTRING] [-v]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("AD_SRC", os.path.dirname(os.path.dirname(HERE)))
AUTODIST = os.path.abspath(os.environ.get("AUTODIST", os.path.join(SRC, "build", "autodist")))
RTOL, ATOL = 1e-4, 1e-5

rng = np.random.default_rng(1234)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


class Case:
    """One single-node model: inputs fed at run time, initializers baked in."""

    def __init__(self, name, op, opset, inputs, inits=None, attrs=None, n_out=1, node_inputs=None):
        self.name, self.op, self.opset = name, op, opset
        self.inputs = inputs            # dict name -> array (fed)
        self.inits = inits or {}        # dict name -> array (initializers)
        self.attrs = attrs or {}
        self.n_out = n_out
        # Node input names in order ("" for an omitted optional one).
        self.node_inputs = node_inputs or list(inputs) + list(self.inits)

    def model(self):
        vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
              for k, v in self.inputs.items()]
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        outs = ["y"] if self.n_out == 1 else ["y%d" % i for i in range(self.n_out)]
        node = helper.make_node(self.op, self.node_inputs, outs, name="n0", **self.attrs)
        graph = helper.make_graph([node], self.name, vi,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                   for o in outs], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def ort_run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def autodist(args, cwd):
    return subprocess.run([AUTODIST] + args, cwd=cwd, capture_output=True, text=True)


def run_infer(case, tmp):
    path = os.path.join(tmp, "model.onnx")
    onnx.save(case.model(), path)
    args = ["infer", path]
    for k, v in case.inputs.items():
        f = os.path.join(tmp, "in_%s.npy" % k)
        np.save(f, v)
        args += ["--data", "%s=%s" % (k, f)]
    args += ["--out", "y=%s" % os.path.join(tmp, "y.npy")]
    return autodist(args, tmp), path


def check_infer(case, verbose):
    ref = ort_run(case.model(), case.inputs)[0]
    with tempfile.TemporaryDirectory() as tmp:
        r, _ = run_infer(case, tmp)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        got = np.load(os.path.join(tmp, "y.npy"))
    if got.shape != ref.shape:
        return "shape %s, expected %s" % (got.shape, ref.shape)
    if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
        err = np.abs(got - ref).max()
        return "max abs error %g (ref max %g)" % (err, np.abs(ref).max())
    return None


def check_error(case, expect, verbose):
    with tempfile.TemporaryDirectory() as tmp:
        r, path = run_infer(case, tmp)
    want = "%s: node 'n0' (%s): error: %s" % (path, case.op, expect)
    if r.returncode != 2:
        return "exit code %d, expected 2 (stderr: %s)" % (r.returncode, r.stderr.strip())
    if want not in r.stderr:
        return "stderr %r does not contain %r" % (r.stderr.strip(), want)
    return None


# ---- inference cases ----

def cases():
    out = []

    def add(*a, **k):
        out.append(Case(*a, **k))

    for opset in (11, 13, 17):
        s = "_op%d" % opset
        # Shape family. `autodist infer` feeds inputs by samples (axis 0) and
        # writes outputs with axis 0 = samples, so every case keeps the fed
        # inputs' first extent as the output's first extent.
        x = rand(2, 3, 4, 5)
        add("flatten_default" + s, "Flatten", opset, {"x": x})
        add("flatten_axis0" + s, "Flatten", opset, {"x": rand(1, 3, 4, 5)}, attrs={"axis": 0})
        add("flatten_axis2" + s, "Flatten", opset, {"x": rand(2, 1, 4, 5)}, attrs={"axis": 2})
        add("flatten_axis-1" + s, "Flatten", opset, {"x": rand(2, 1, 1, 5)}, attrs={"axis": -1})
        add("flatten_axis4" + s, "Flatten", opset, {"x": rand(2, 1, 1, 1)}, attrs={"axis": 4})
        for shape in ([0, -1], [2, -1, 5], [0, 0, 20], [2, 60], [0, 0, 0, -1], [2, 1, 60, 1]):
            add("reshape_%s%s" % ("_".join(map(str, shape)), s), "Reshape", opset, {"x": x},
                {"shape": np.array(shape, np.int64)})
        xt = rand(2, 3, 4, 2)
        for perm in (None, [0, 2, 3, 1], [3, 1, 0, 2], [0, 1, 2, 3]):
            add("transpose_%s%s" % (perm and "".join(map(str, perm)), s), "Transpose", opset,
                {"x": xt}, attrs={} if perm is None else {"perm": perm})
        add("identity" + s, "Identity", opset, {"x": x})
        add("dropout" + s, "Dropout", opset, {"x": x},
            attrs={} if opset >= 12 else {"ratio": 0.3})
        for i, (pads, val) in enumerate((([0, 0, 1, 2, 0, 0, 3, 0], None),
                                         ([1, 0, 0, 1, -1, 2, 1, 0], 1.5),
                                         ([0, 0, -1, 1, 0, 1, 0, -2], -2.0),
                                         ([0, 3, 0, 0, 0, -2, 0, 0], 0.0))):
            inits = {"pads": np.array(pads, np.int64)}
            names = ["x", "pads"]
            if val is not None:
                inits["value"] = np.array(val, np.float32)
                names.append("value")
            add("pad%d%s" % (i, s), "Pad", opset, {"x": x}, inits, node_inputs=names)

        # Linear family. With transA the fed operand is C (A's first axis is K).
        for ta, tb in ((0, 0), (1, 0), (0, 1), (1, 1)):
            a = rand(4, 4) if ta else rand(4, 3)
            k = a.shape[0] if ta else a.shape[1]
            b = rand(5, k) if tb else rand(k, 5)
            add("gemm_t%d%d%s" % (ta, tb, s), "Gemm", opset, {"a": a}, {"b": b},
                attrs={"transA": ta, "transB": tb, "alpha": 0.5 + ta, "beta": 2.0})
            for c in (rand(5), rand(4, 1), rand(4, 5), rand(1)):
                fed, init = ({"a": a}, {"b": b, "c": c}) if not ta or c.shape[0] != 4 \
                    else ({"c": c}, {"a": a, "b": b})
                add("gemm_c%s_t%d%d%s" % ("x".join(map(str, c.shape)), ta, tb, s), "Gemm",
                    opset, fed, init, node_inputs=["a", "b", "c"],
                    attrs={"transA": ta, "transB": tb, "alpha": 1.5, "beta": 0.5})
        # (shape of A, shape of B, which one is fed: its axis 0 is the output's)
        for sa, sb, fed in (((4, 3), (3, 5), "a"), ((2, 4, 3), (3, 5), "a"),
                            ((4, 3), (3,), "a"), ((2, 1, 4, 3), (5, 3, 6), "a"),
                            ((2, 3, 4, 3), (3, 3, 2), "a"), ((3, 4, 3), (2, 1, 3, 2), "b"),
                            ((3,), (2, 3, 4), "b"), ((2, 4, 3), (3,), "a"),
                            ((2, 3, 4, 3), (2, 1, 3, 2), "a"), ((1, 3, 4, 3), (2, 3, 3, 2), "b")):
            arrs = {"a": rand(*sa), "b": rand(*sb)}
            other = "b" if fed == "a" else "a"
            add("matmul_%s_%s%s" % ("x".join(map(str, sa)), "x".join(map(str, sb)), s),
                "MatMul", opset, {fed: arrs[fed]}, {other: arrs[other]}, node_inputs=["a", "b"])

        # Conv family.
        x = rand(2, 4, 9, 8)
        conv_attrs = [
            {}, {"pads": [1, 1, 1, 1]}, {"strides": [2, 2]}, {"strides": [2, 1], "pads": [0, 1, 2, 0]},
            {"dilations": [2, 1]}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
            {"auto_pad": "SAME_LOWER", "strides": [2, 3]}, {"auto_pad": "VALID", "strides": [2, 2]},
            {"group": 2}, {"group": 4, "pads": [1, 1, 1, 1]}, {"kernel_shape": [3, 3]},
        ]
        for i, at in enumerate(conv_attrs):
            g = at.get("group", 1)
            w = rand(6 if g != 4 else 8, 4 // g, 3, 3)
            add("conv%d_bias%s" % (i, s), "Conv", opset, {"x": x}, {"w": w, "b": rand(w.shape[0])},
                attrs=at)
            add("conv%d%s" % (i, s), "Conv", opset, {"x": x}, {"w": w}, attrs=at)
        add("conv_1x1" + s, "Conv", opset, {"x": x}, {"w": rand(5, 4, 1, 1)})
        add("conv1d" + s, "Conv", opset, {"x": rand(2, 3, 11)}, {"w": rand(4, 3, 3)},
            attrs={"pads": [2, 1], "strides": [2]})
        pool_attrs = [
            {"kernel_shape": [2, 2], "strides": [2, 2]},
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1]},
            {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
            {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
            {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
            {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
            {"kernel_shape": [3, 3], "auto_pad": "VALID"},
        ]
        for i, at in enumerate(pool_attrs):
            add("maxpool%d%s" % (i, s), "MaxPool", opset, {"x": x}, attrs=at)
            add("avgpool%d%s" % (i, s), "AveragePool", opset, {"x": x}, attrs=at)
            if "ceil_mode" not in at and "auto_pad" not in at:
                add("avgpool%d_incl%s" % (i, s), "AveragePool", opset, {"x": x},
                    attrs=dict(at, count_include_pad=1))
        add("maxpool_dil" + s, "MaxPool", opset, {"x": x},
            attrs={"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]})
        add("maxpool1d" + s, "MaxPool", opset, {"x": rand(2, 3, 11)},
            attrs={"kernel_shape": [3], "strides": [2]})
        add("avgpool1d" + s, "AveragePool", opset, {"x": rand(2, 3, 11)},
            attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 1})
        add("globalavg" + s, "GlobalAveragePool", opset, {"x": x})
        add("globalavg1d" + s, "GlobalAveragePool", opset, {"x": rand(2, 3, 7)})

        # Softmax family: axis meaning changes at 13.
        x = rand(2, 3, 4, 5) * 3
        for op in ("Softmax", "LogSoftmax"):
            add("%s_default%s" % (op, s), op, opset, {"x": x})
            for axis in (0, 1, 2, -1, -3):
                add("%s_axis%d%s" % (op, axis, s), op, opset, {"x": x}, attrs={"axis": axis})
    return out


def error_cases():
    x = rand(1, 2, 6, 6)
    return [
        (Case("pad_reflect", "Pad", 13, {"x": x}, {"pads": np.zeros(8, np.int64)},
              attrs={"mode": "reflect"}),
         "mode 'reflect' is not supported (only 'constant')"),
        (Case("maxpool_storage", "MaxPool", 13, {"x": x},
              attrs={"kernel_shape": [2, 2], "storage_order": 1}),
         "storage_order=1 is not supported"),
        (Case("maxpool_indices", "MaxPool", 13, {"x": x}, attrs={"kernel_shape": [2, 2]},
              n_out=2),
         "the Indices output is not supported"),
        (Case("conv3d", "Conv", 13, {"x": rand(1, 2, 4, 4, 4)}, {"w": rand(3, 2, 2, 2, 2)}),
         "3-D convolution is not supported (input [1, 2, 4, 4, 4])"),
        (Case("reshape_dynamic", "Reshape", 13,
              {"x": rand(2, 3, 6), "s": np.array([2, 18], np.float32)}),
         "shape input 's' must be"),
    ]


def main():
    verbose = "-v" in sys.argv
    pattern = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else ""
    if not os.path.exists(AUTODIST):
        print("test_ops_ort: %s not found (set AUTODIST)" % AUTODIST)
        return 1
    failed = ran = 0
    for c in cases():
        if pattern not in c.name:
            continue
        ran += 1
        msg = check_infer(c, verbose)
        if msg:
            failed += 1
            print("FAIL %s: %s" % (c.name, msg))
        elif verbose:
            print("ok   %s" % c.name)
    for c, expect in error_cases():
        if pattern not in c.name:
            continue
        ran += 1
        msg = check_error(c, expect, verbose)
        if msg:
            failed += 1
            print("FAIL %s: %s" % (c.name, msg))
        elif verbose:
            print("ok   %s" % c.name)
    print("test_ops_ort: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
