#!/usr/bin/env python3
"""tests/ref/test_ops_ort.py: the shape, linear, conv and softmax op families
against outside references, one single-op ONNX model at a time.

Inference: each case is built with onnx.helper, run by onnxruntime (the
reference) and by `autodist infer`; outputs must agree to rtol 1e-4, atol 1e-5.
Cases cover the attributes each op accepts, at opsets 11, 13 and 17 where the
op exists there, and the dtypes it takes (Pad's numeric and bool inputs in its
three modes, MaxPool's int8 / uint8): the output dtype must match, and integer
and bool outputs must be equal. Unsupported attributes must fail at compile time with exit
code 2 and a message naming the node.

Gradients: the op's float initializers are trainable, and the fed input x
enters as Add(x, px) with a trainable zero initializer px of x's shape, so
that after one SGD step (lr 1, no momentum) on an MSE loss every updated
initializer is w - dL/dw: px' = -dL/dx. These must equal PyTorch autograd's
(rtol 1e-4, atol 1e-5). Each PyTorch forward is first checked against
onnxruntime, so a wrong reference cannot pass.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_ops_ort.py [-k SUBSTRING] [-v]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, mapping, numpy_helper

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
        self.checked = 0                # the output compared (MaxPool's Indices: 1)
        # Node input names in order ("" for an omitted optional one).
        self.node_inputs = node_inputs or list(inputs) + list(self.inits)

    def model(self):
        vi = [helper.make_tensor_value_info(k, mapping.NP_TYPE_TO_TENSOR_TYPE[v.dtype], v.shape)
              for k, v in self.inputs.items()]
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        outs = ["y"] if self.n_out == 1 else ["y%d" % i for i in range(self.n_out)]
        node = helper.make_node(self.op, self.node_inputs, outs, name="n0", **self.attrs)
        # The outputs' types are left to shape inference (onnxruntime's and
        # autodist's: their dtypes are compared).
        graph = helper.make_graph([node], self.name, vi,
                                  [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                                  inits)
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
    """`autodist infer` of case.model() on case.inputs; its graph output
    case.checked (the first unless set) is written to tmp/y.npy. Returns (the
    completed process, the model path)."""
    path = os.path.join(tmp, "model.onnx")
    model = case.model()
    onnx.save(model, path)
    args = ["infer", path]
    for k, v in case.inputs.items():
        f = os.path.join(tmp, "in_%s.npy" % k)
        np.save(f, v)
        args += ["--data", "%s=%s" % (k, f)]
    args += ["--out", "%s=%s" % (model.graph.output[getattr(case, "checked", 0)].name,
                                 os.path.join(tmp, "y.npy"))]
    return autodist(args, tmp), path


def check_infer(case, verbose):
    ref = ort_run(case.model(), case.inputs)[case.checked]
    with tempfile.TemporaryDirectory() as tmp:
        r, _ = run_infer(case, tmp)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        got = np.load(os.path.join(tmp, "y.npy"))
    if got.shape != ref.shape:
        return "shape %s, expected %s" % (got.shape, ref.shape)
    if got.dtype != ref.dtype:
        return "dtype %s, expected %s" % (got.dtype, ref.dtype)
    if ref.dtype.kind in "iub" and not np.array_equal(got, ref):
        return "%d of %d elements differ" % (int((got != ref).sum()), ref.size)
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
        # Edge and reflect (pads below the axis extent, as onnxruntime needs for
        # reflect), and the dtypes Pad takes; the constant has x's dtype.
        pads = np.array([0, 1, 3, 2, 0, 2, 1, 4], np.int64)
        xi = rng.integers(-50, 50, (2, 3, 4, 5))
        dtypes = [np.float32, np.float64, np.float16, np.int32, np.int64, np.int8, np.uint8,
                  np.uint32, np.uint64] + ([np.bool_] if opset >= 13 else [])
        for dt in dtypes:
            xd = (xi % 2 == 0) if dt == np.bool_ else \
                (xi % 100 if np.dtype(dt).kind == "u" else xi).astype(dt)
            if np.dtype(dt).kind == "f":
                xd = (xd * 0.37).astype(dt)
            for mode in ("constant", "edge", "reflect"):
                inits = {"pads": pads}
                names = ["x", "pads"]
                if mode == "constant":
                    inits["value"] = np.array(1 if dt == np.bool_ else 7, dt)
                    names.append("value")
                add("pad_%s_%s%s" % (mode, np.dtype(dt).name, s), "Pad", opset, {"x": xd}, inits,
                    attrs={"mode": mode}, node_inputs=names)

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
        # 3-D pooling.
        x5 = rand(2, 3, 6, 7, 5)
        pool3d_attrs = [
            {"kernel_shape": [2, 2, 2]},
            {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1]},
            {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "ceil_mode": 1},
            {"kernel_shape": [2, 2, 3], "strides": [2, 3, 1], "pads": [1, 1, 0, 1, 1, 1],
             "ceil_mode": 1},
            {"kernel_shape": [3, 2, 2], "strides": [2, 2, 2], "auto_pad": "SAME_UPPER"},
            {"kernel_shape": [2, 3, 3], "strides": [1, 2, 2], "auto_pad": "SAME_LOWER"},
            {"kernel_shape": [1, 2, 2], "strides": [1, 2, 2]},
        ]
        for i, at in enumerate(pool3d_attrs):
            add("maxpool3d_%d%s" % (i, s), "MaxPool", opset, {"x": x5}, attrs=at)
            add("avgpool3d_%d%s" % (i, s), "AveragePool", opset, {"x": x5}, attrs=at)
            if "ceil_mode" not in at and "auto_pad" not in at:
                add("avgpool3d_%d_incl%s" % (i, s), "AveragePool", opset, {"x": x5},
                    attrs=dict(at, count_include_pad=1))
        add("maxpool3d_dil" + s, "MaxPool", opset, {"x": x5},
            attrs={"kernel_shape": [2, 2, 2], "dilations": [2, 1, 2], "pads": [1, 1, 1, 1, 0, 1]})
        add("lppool3d" + s, "LpPool", opset, {"x": x5},
            attrs={"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1]})
        add("lppool3d_p3" + s, "LpPool", opset, {"x": x5}, attrs={"kernel_shape": [2, 2, 2], "p": 3})
        add("globalavg3d" + s, "GlobalAveragePool", opset, {"x": x5})
        add("globalmax3d" + s, "GlobalMaxPool", opset, {"x": x5})
        # MaxPool on int8 / uint8 (MaxPool-12+), 2-D and 3-D, with Indices.
        if opset >= 12:
            for dt in (np.int8, np.uint8):
                info = np.iinfo(dt)
                for i, (shape, at) in enumerate((
                        ((2, 3, 9, 8), {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [1, 1, 1, 1]}),
                        ((2, 3, 9, 8), {"kernel_shape": [2, 3], "dilations": [2, 1],
                                        "ceil_mode": 1, "strides": [2, 2]}),
                        ((2, 3, 5, 6, 4), {"kernel_shape": [2, 2, 2], "strides": [2, 1, 2],
                                           "pads": [0, 1, 1, 1, 0, 1]}))):
                    xq = rng.integers(info.min, info.max + 1, shape).astype(dt)
                    name = "maxpool_%s_%d%s" % (np.dtype(dt).name, i, s)
                    add(name, "MaxPool", opset, {"x": xq}, attrs=at)
                    add(name + "_idx", "MaxPool", opset, {"x": xq}, attrs=at, n_out=2)
                    out[-1].checked = 1
        for order in (0, 1):  # 3-D Indices
            add("maxpool3d_idx_order%d%s" % (order, s), "MaxPool", opset, {"x": x5}, n_out=2,
                attrs={"kernel_shape": [2, 3, 2], "strides": [2, 1, 2],
                       "pads": [1, 0, 1, 0, 1, 1], "storage_order": order})
            out[-1].checked = 1

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
        (Case("pad_bool_op11", "Pad", 11, {"x": x > 0}, {"pads": np.zeros(8, np.int64)}),
         "input 0 ('x') is bool, which Pad-11 does not take"),
        (Case("pad_value_dtype", "Pad", 13, {"x": x}, {"pads": np.zeros(8, np.int64),
                                                        "v": np.array(1.0, np.float64)}),
         "constant_value input 'v' must be a constant float32 scalar"),
        (Case("maxpool_int8_op11", "MaxPool", 11, {"x": (x * 10).astype(np.int8)},
              attrs={"kernel_shape": [2, 2]}),
         "input 0 ('x') is int8; only float32 is supported"),
        (Case("avgpool_uint8", "AveragePool", 13, {"x": (x * 10).astype(np.uint8)},
              attrs={"kernel_shape": [2, 2]}),
         "input 0 ('x') is uint8; only float32 is supported"),
        # MaxPool's Indices output and storage_order=1 are supported now
        # (checked against onnxruntime in test_norm_ops.py).
        (Case("conv3d", "Conv", 13, {"x": rand(1, 2, 4, 4, 4)}, {"w": rand(3, 2, 2, 2, 2)}),
         "3-D convolution is not supported (input [1, 2, 4, 4, 4])"),
        (Case("reshape_dynamic", "Reshape", 13,
              {"x": rand(2, 3, 6), "s": np.array([2, 18], np.float32)}),
         "shape input 's' must be"),
    ]


# ---- gradient cases (PyTorch autograd as the reference) ----

def _torch():
    import torch  # Debian's torch; only the gradient checks need it
    return torch


def same_pads(size, k, s, d, upper):
    """ONNX SAME_UPPER / SAME_LOWER padding of one axis: (begin, end)."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
    begin = total // 2 if upper else total - total // 2
    return begin, total - begin


def onnx_pads(at, x_shape, kshape):
    """Explicit (begin..., end...) pads of a window op from its attributes."""
    sp = len(kshape)
    ap = at.get("auto_pad", "NOTSET")
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        st = at.get("strides", [1] * sp)
        dl = at.get("dilations", [1] * sp)
        pr = [same_pads(x_shape[2 + i], kshape[i], st[i], dl[i], ap == "SAME_UPPER")
              for i in range(sp)]
        return [p[0] for p in pr] + [p[1] for p in pr]
    return list(at.get("pads", [0] * (2 * sp)))


def t_pad_input(x, pads, value, mode="constant"):
    """F.pad with ONNX's (begin..., end...) order for the last len(pads) / 2
    axes; mode "edge" is PyTorch's "replicate"."""
    F = _torch().nn.functional
    sp = len(pads) // 2
    tp = []
    for i in reversed(range(sp)):
        tp += [pads[i], pads[sp + i]]
    if mode != "constant":
        return F.pad(x, tp, mode={"edge": "replicate"}.get(mode, mode))
    return F.pad(x, tp, value=value)


def t_conv(at, xx, w, b=None):
    F = _torch().nn.functional
    sp = w.dim() - 2
    x = t_pad_input(xx, onnx_pads(at, xx.shape, list(w.shape[2:])), 0.0)
    f = F.conv2d if sp == 2 else F.conv1d
    return f(x, w, b, stride=at.get("strides", 1), dilation=at.get("dilations", 1),
             groups=at.get("group", 1))


def t_pool(op, at, xx):
    torch = _torch()
    F = torch.nn.functional
    k = at["kernel_shape"]
    pads = onnx_pads(at, xx.shape, k)
    sp = len(k)
    sym = pads[:sp] == pads[sp:]
    kw = dict(kernel_size=k, stride=at.get("strides", [1] * sp),
              ceil_mode=bool(at.get("ceil_mode", 0)))
    max_pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[sp]
    avg_pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[sp]
    if op == "MaxPool":
        kw["dilation"] = at.get("dilations", 1)
        if sym:
            return max_pool(xx, padding=pads[:sp], **kw)
        return max_pool(t_pad_input(xx, pads, float("-inf")), **kw)
    assert sym, "asymmetric average pooling has no PyTorch equivalent here"
    return avg_pool(xx, padding=pads[:sp], count_include_pad=bool(at.get("count_include_pad", 0)),
                    **kw)


def t_softmax(op, opset, at, x):
    torch = _torch()
    axis = at.get("axis", 1 if opset < 13 else -1)
    axis = axis + x.dim() if axis < 0 else axis
    f = torch.softmax if op == "Softmax" else torch.log_softmax
    if opset < 13:
        lead = 1
        for d in x.shape[:axis]:
            lead *= d
        return f(x.reshape(lead, -1), 1).reshape(x.shape)
    return f(x, axis)


def t_gemm(at, a, b, c=None):
    if at.get("transA", 0):
        a = a.t()
    if at.get("transB", 0):
        b = b.t()
    y = at.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + at.get("beta", 1.0) * c


class GradCase:
    """op(inputs) where input `fed` (named "x") is data and the others are
    initializers; fn(torch tensors in node order) is the PyTorch forward."""

    def __init__(self, name, op, opset, arrays, fed, fn, attrs=None):
        self.name, self.op, self.opset = name, op, opset
        self.arrays = arrays      # list of (name, array) in node input order
        self.fed, self.fn, self.attrs = fed, fn, attrs or {}
        self.fixed = set()        # float initializers that are not trained

    def model(self, train):
        names = [n if n != self.fed or not train else "xx" for n, _ in self.arrays]
        x = dict(self.arrays)[self.fed]
        nodes = []
        inits = [numpy_helper.from_array(v, n) for n, v in self.arrays if n != self.fed]
        if train:
            nodes.append(helper.make_node("Add", [self.fed, "px"], ["xx"]))
            inits.append(numpy_helper.from_array(np.zeros_like(x), "px"))
        nodes.append(helper.make_node(self.op, names, ["y"], name="n0", **self.attrs))
        shape = ["N"] + list(x.shape[1:])
        graph = helper.make_graph(nodes, self.name,
                                  [helper.make_tensor_value_info(self.fed, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def grad_cases():
    out = []
    x4 = rand(2, 4, 7, 6)

    def add(name, op, opset, arrays, fn, attrs=None, fed="x"):
        out.append(GradCase("grad_" + name, op, opset, arrays, fed, fn, attrs))

    for i, at in enumerate(({"pads": [1, 1, 1, 1], "strides": [2, 2]},
                            {"group": 2, "dilations": [2, 1]},
                            {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                            {"auto_pad": "SAME_LOWER", "strides": [1, 2]},
                            {"pads": [0, 1, 2, 0], "strides": [2, 1]})):
        w = rand(6, 4 // at.get("group", 1), 3, 3)
        add("conv%d" % i, "Conv", 13, [("x", x4), ("w", w), ("b", rand(6))],
            lambda t, at=at: t_conv(at, *t), at)
        add("conv%d_nobias" % i, "Conv", 13, [("x", x4), ("w", w)],
            lambda t, at=at: t_conv(at, *t), at)
    add("conv1d", "Conv", 13, [("x", rand(2, 3, 11)), ("w", rand(4, 3, 3)), ("b", rand(4))],
        lambda t: t_conv({"pads": [2, 1], "strides": [2]}, *t), {"pads": [2, 1], "strides": [2]})
    for i, at in enumerate(({"kernel_shape": [2, 2], "strides": [2, 2]},
                            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                            {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
                            {"kernel_shape": [2, 2], "dilations": [2, 2]},
                            {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1]})):
        add("maxpool%d" % i, "MaxPool", 13, [("x", x4)], lambda t, at=at: t_pool("MaxPool", at, *t),
            at)
    for i, at in enumerate(({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                             "count_include_pad": 1},
                            {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
                            {"kernel_shape": [2, 3], "strides": [1, 1]})):
        add("avgpool%d" % i, "AveragePool", 13, [("x", x4)],
            lambda t, at=at: t_pool("AveragePool", at, *t), at)
    add("globalavg", "GlobalAveragePool", 13, [("x", x4)],
        lambda t: t[0].mean(dim=(2, 3), keepdim=True))
    x5 = rand(2, 3, 6, 7, 5)
    for i, at in enumerate(({"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]},
                            {"kernel_shape": [3, 3, 2], "strides": [2, 1, 2],
                             "pads": [1, 1, 0, 1, 1, 0]},
                            {"kernel_shape": [3, 2, 3], "strides": [2, 2, 2], "ceil_mode": 1},
                            {"kernel_shape": [2, 2, 2], "dilations": [2, 1, 2]},
                            {"kernel_shape": [3, 2, 2], "pads": [1, 0, 1, 0, 1, 0]})):
        add("maxpool3d_%d" % i, "MaxPool", 13, [("x", x5)],
            lambda t, at=at: t_pool("MaxPool", at, *t), at)
    for i, at in enumerate(({"kernel_shape": [3, 3, 3], "strides": [2, 2, 2],
                             "pads": [1, 1, 1, 1, 1, 1]},
                            {"kernel_shape": [3, 3, 2], "strides": [2, 2, 1],
                             "pads": [1, 1, 0, 1, 1, 0], "count_include_pad": 1},
                            {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "ceil_mode": 1},
                            {"kernel_shape": [2, 3, 1]})):
        add("avgpool3d_%d" % i, "AveragePool", 13, [("x", x5)],
            lambda t, at=at: t_pool("AveragePool", at, *t), at)
    add("globalavg3d", "GlobalAveragePool", 13, [("x", x5)],
        lambda t: t[0].mean(dim=(2, 3, 4), keepdim=True))

    add("gemm_c", "Gemm", 13, [("x", rand(4, 3)), ("b", rand(5, 3)), ("c", rand(5))],
        lambda t: t_gemm({"transB": 1, "alpha": 0.5, "beta": 2.0}, *t),
        {"transB": 1, "alpha": 0.5, "beta": 2.0})
    for ta, tb in ((0, 0), (1, 0), (1, 1)):
        at = {"transA": ta, "transB": tb, "alpha": 1.5, "beta": 0.5}
        add("gemm_t%d%d" % (ta, tb), "Gemm", 13,
            [("x", rand(4, 4)), ("b", rand(5, 4) if tb else rand(4, 5)), ("c", rand(4, 1))],
            lambda t, at=at: t_gemm(at, *t), at)
    add("gemm_c1", "Gemm", 13, [("x", rand(4, 3)), ("b", rand(3, 5)), ("c", rand(1))],
        lambda t: t_gemm({}, *t))
    for sa, sb, fed in (((2, 4, 3), (3, 5), "x"), ((4, 3), (3, 5), "x"), ((4, 3), (3,), "x"),
                        ((2, 3, 4, 3), (3, 3, 2), "x"), ((2, 3, 4, 3), (1, 3, 2), "x"),
                        ((3,), (2, 3, 4), "w"), ((3, 4, 3), (2, 1, 3, 2), "w")):
        arrays = [("x", rand(*sa)), ("w", rand(*sb))] if fed == "x" else \
            [("w", rand(*sa)), ("x", rand(*sb))]
        add("matmul_%s_%s" % ("x".join(map(str, sa)), "x".join(map(str, sb))), "MatMul", 13,
            arrays, lambda t: _torch().matmul(*t), fed="x")

    x = rand(2, 3, 4, 5)
    add("transpose", "Transpose", 13, [("x", x)], lambda t: t[0].permute(0, 2, 3, 1),
        {"perm": [0, 2, 3, 1]})
    add("reshape", "Reshape", 13, [("x", x), ("s", np.array([0, -1, 2], np.int64))],
        lambda t: t[0].reshape(2, -1, 2))
    add("flatten", "Flatten", 13, [("x", x)], lambda t: t[0].reshape(2, -1))
    add("identity", "Identity", 13, [("x", x)], lambda t: t[0])
    add("dropout", "Dropout", 13, [("x", x)], lambda t: t[0])
    add("pad", "Pad", 13, [("x", x), ("p", np.array([0, 1, -1, 2, 0, 0, 1, -2], np.int64)),
                           ("v", np.array(0.5, np.float32))],
        lambda t: t_pad_input(t[0], [1, -1, 2, 0, 1, -2], 0.5))
    # Edge and reflect: every padding cell's gradient goes back to its source
    # (PyTorch pads only the last two axes of a 4-D tensor in these modes).
    for mode in ("edge", "reflect"):
        add("pad_" + mode, "Pad", 13,
            [("x", x), ("p", np.array([0, 0, 2, 3, 0, 0, 3, 4], np.int64))],
            lambda t, mode=mode: t_pad_input(t[0], [2, 3, 3, 4], 0.0, mode), {"mode": mode})
    for opset in (11, 13):
        for op in ("Softmax", "LogSoftmax"):
            for at in ({}, {"axis": 1}, {"axis": 2}):
                add("%s%s_op%d" % (op.lower(), at.get("axis", ""), opset), op, opset, [("x", x)],
                    lambda t, op=op, opset=opset, at=at: t_softmax(op, opset, at, t[0]), at)
    return out


def check_grad(case, verbose):
    torch = _torch()
    fwd = case.model(False)
    x = dict(case.arrays)[case.fed]
    ref = ort_run(fwd, {case.fed: x})[0]
    ts = [torch.tensor(v, requires_grad=v.dtype == np.float32 and n not in case.fixed)
          for n, v in case.arrays]
    y = case.fn(ts)
    if tuple(y.shape) != ref.shape or not np.allclose(y.detach().numpy(), ref, RTOL, ATOL):
        return "the PyTorch reference disagrees with onnxruntime (test bug)"
    label = rand(*ref.shape)
    torch.nn.functional.mse_loss(y, torch.tensor(label)).backward()
    want = {("px" if n == case.fed else n): (t.grad.numpy() if t.grad is not None else None)
            for (n, _), t in zip(case.arrays, ts)}
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(case.model(True), os.path.join(tmp, "m.onnx"))
        np.save(os.path.join(tmp, "x.npy"), x)
        np.save(os.path.join(tmp, "label.npy"), label)
        with open(os.path.join(tmp, "train.yml"), "w") as f:
            f.write("loss: mse\nbatch_size: %d\noptimizer: {name: sgd, lr: 1.0}\n" % x.shape[0])
        r = autodist(["compile", "m.onnx", "-t", "train.yml", "-o", "plan"], tmp)
        if r.returncode != 0:
            return "compile failed (%d): %s" % (r.returncode, r.stderr.strip())
        r = autodist(["run", "plan", "--data", "%s=x.npy" % case.fed, "--data", "label=label.npy",
                      "--steps", "1", "--save", "out.onnx"], tmp)
        if r.returncode != 0:
            return "run failed (%d): %s" % (r.returncode, r.stderr.strip())
        trained = {t.name: numpy_helper.to_array(t)
                   for t in onnx.load(os.path.join(tmp, "out.onnx")).graph.initializer}
    before = dict(case.arrays)
    before["px"] = np.zeros_like(x)
    for name, g in want.items():
        if g is None:
            continue
        got = before[name] - trained[name]
        if got.shape != g.shape or not np.allclose(got, g, rtol=RTOL, atol=ATOL):
            return "gradient of %s: max abs error %g (ref max %g)" % (
                name, np.abs(got - g).max(), np.abs(g).max())
    return None


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
    for c in grad_cases():
        if pattern not in c.name:
            continue
        ran += 1
        msg = check_grad(c, verbose)
        if msg:
            failed += 1
            print("FAIL %s: %s" % (c.name, msg))
        elif verbose:
            print("ok   %s" % c.name)
    print("test_ops_ort: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
