#!/usr/bin/env python3
"""tests/ref/test_ops_ew.py: the elementwise op family (compiler/ops/elementwise.c)
against outside references, one single-node ONNX model at a time.

Inference: each case is built with onnx.helper and run by onnxruntime (the
reference) and by `autodist infer`. Float outputs must agree to rtol 1e-4,
atol 1e-5 (NaN where onnxruntime has NaN); integer and bool outputs must be
equal, with the same dtype. Cases cover broadcasting, int64 / int32 / uint8 /
bool inputs where ONNX allows them, the opsets where the allowed types change,
NaN propagation and rounding ties. Inputs of the wrong type must fail at
compile time with exit code 2 and a message naming the node.

Gradients: as in test_ops_ort.py, the fed input x enters as Add(x, px) with a
trainable zero initializer px, float initializers are trainable, and after one
SGD step (lr 1) on an MSE loss every updated initializer is w - dL/dw. These
must equal PyTorch autograd's (rtol 1e-4, atol 1e-5); each PyTorch forward is
first checked against onnxruntime, so a wrong reference cannot pass.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_ops_ew.py [-k SUBSTRING] [-v]
"""
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The harness shared with the other op families: onnxruntime and autodist
# runs, the exit-2 error check and the one-SGD-step gradient check.
from test_ops_ort import _torch, check_error, check_grad, ort_run, run_infer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("AD_SRC", os.path.dirname(os.path.dirname(HERE)))
AUTODIST = os.path.abspath(os.environ.get("AUTODIST", os.path.join(SRC, "build", "autodist")))
RTOL, ATOL = 1e-4, 1e-5

rng = np.random.default_rng(4321)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (rng.random(shape) * 3 + 0.1).astype(np.float32)


def unit(*shape):
    return (rng.random(shape) * 1.8 - 0.9).astype(np.float32)


def ints(dt, *shape, lo=-20, hi=20):
    return rng.integers(lo, hi, size=shape).astype(dt)


def bools(*shape):
    return rng.random(shape) < 0.5


def onnx_type(a):
    return onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[a.dtype]


class Case:
    """One single-node model: inputs fed at run time, initializers baked in."""

    def __init__(self, name, op, opset, inputs, inits=None, attrs=None, node_inputs=None,
                 numpy_ref=None):
        self.name, self.op, self.opset = name, op, opset
        # onnxruntime lacks some integer kernels (Relu-14 on int64/int32): there
        # numpy_ref(inputs) is ONNX's reference definition.
        self.numpy_ref = numpy_ref
        self.inputs = inputs            # dict name -> array (fed)
        self.inits = inits or {}        # dict name -> array (initializers)
        self.attrs = attrs or {}
        self.node_inputs = node_inputs or list(inputs) + list(self.inits)

    def model(self):
        vi = [helper.make_tensor_value_info(k, onnx_type(v), v.shape)
              for k, v in self.inputs.items()]
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        node = helper.make_node(self.op, self.node_inputs, ["out"], name="n0", **self.attrs)
        graph = helper.make_graph([node], self.name, vi,
                                  [helper.make_value_info("out", onnx.TypeProto())], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)


def compare(got, ref):
    if got.shape != ref.shape:
        return "shape %s, expected %s" % (got.shape, ref.shape)
    if got.dtype != ref.dtype:
        return "dtype %s, expected %s" % (got.dtype, ref.dtype)
    if ref.dtype.kind in "biu":
        if not np.array_equal(got, ref):
            bad = np.argwhere(got != ref)[0]
            return "differs at %s: %s, expected %s" % (tuple(bad), got[tuple(bad)], ref[tuple(bad)])
        return None
    if not np.allclose(got, ref, rtol=RTOL, atol=ATOL, equal_nan=True):
        err = np.nanmax(np.abs(got - ref))
        return "max abs error %g (ref max %g)" % (err, np.nanmax(np.abs(ref)))
    return None


def check_infer(case, verbose):
    if case.numpy_ref:
        ref = case.numpy_ref(case.inputs)
    else:
        ref = ort_run(case.model(), case.inputs)[0]
    with tempfile.TemporaryDirectory() as tmp:
        r, _ = run_infer(case, tmp)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        got = np.load(os.path.join(tmp, "y.npy"))
    return compare(got, ref)


# ---- inference cases ----

UNARY_FLOAT = [
    ("Exp", rand), ("Log", pos), ("Sqrt", pos), ("Reciprocal", pos), ("Floor", rand),
    ("Ceil", rand), ("Erf", rand), ("Sin", rand), ("Cos", rand), ("Tan", unit), ("Asin", unit),
    ("Acos", unit), ("Atan", rand), ("Sinh", rand), ("Cosh", rand), ("Asinh", rand),
    ("Acosh", lambda *s: pos(*s) + 1), ("Atanh", unit), ("Softplus", rand), ("Softsign", rand),
    ("Sigmoid", rand), ("Tanh", rand), ("Relu", rand), ("Abs", rand), ("Neg", rand),
    ("Sign", rand), ("Elu", rand), ("Selu", rand), ("LeakyRelu", rand), ("HardSigmoid", rand),
    ("ThresholdedRelu", rand), ("Shrink", rand),
]


def cases():
    out = []

    def add(*a, **k):
        out.append(Case(*a, **k))

    x = rand(3, 4, 5) * 3
    for op, gen in UNARY_FLOAT:
        add(op.lower(), op, 13, {"x": gen(3, 4, 5) * (3 if gen is rand else 1)})
    add("celu", "Celu", 13, {"x": x})
    add("celu_alpha", "Celu", 13, {"x": x}, attrs={"alpha": 2.0})
    add("hardswish", "HardSwish", 14, {"x": x})
    add("elu_alpha", "Elu", 11, {"x": x}, attrs={"alpha": 0.3})
    add("selu_attrs", "Selu", 11, {"x": x}, attrs={"alpha": 2.0, "gamma": 3.0})
    add("leakyrelu_alpha", "LeakyRelu", 16, {"x": x}, attrs={"alpha": 0.2})
    add("hardsigmoid_attrs", "HardSigmoid", 11, {"x": x}, attrs={"alpha": 0.3, "beta": 0.4})
    add("thresholdedrelu_alpha", "ThresholdedRelu", 11, {"x": x}, attrs={"alpha": 0.5})
    add("shrink_attrs", "Shrink", 11, {"x": x}, attrs={"lambd": 1.0, "bias": 0.5})
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, -3.7, 2.2], np.float32)
    add("round_ties", "Round", 11, {"x": ties})
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -3.0], np.float32)
    add("isnan", "IsNaN", 13, {"x": special})
    for at in ({}, {"detect_negative": 0}, {"detect_positive": 0}):
        add("isinf_%s" % "_".join("%s%d" % kv for kv in at.items()), "IsInf", 11, {"x": special},
            attrs=at)
    add("relu_nan", "Relu", 13, {"x": special})
    add("sign_special", "Sign", 13, {"x": special})

    # Binary arithmetic: broadcasting and integer types.
    shapes = [((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (5,)), ((3, 1, 5), (4, 1)), ((1,), (3, 4)),
              ((), (2, 3)), ((2, 1, 3, 1), (1, 4, 1, 5))]
    for op in ("Add", "Sub", "Mul", "Div"):
        for i, (sa, sb) in enumerate(shapes):
            add("%s_bcast%d" % (op.lower(), i), op, 13, {"a": rand(*sa), "b": rand(*sb)})
        for dt in (np.int64, np.int32):
            b = ints(dt, 4, 5)
            b[b == 0] = 7
            add("%s_%s" % (op.lower(), dt.__name__), op, 13, {"a": ints(dt, 3, 4, 5, lo=-100, hi=100), "b": b})
        b = ints(np.uint8, 3, 4, lo=1, hi=30)
        add("%s_uint8" % op.lower(), op, 14, {"a": ints(np.uint8, 3, 4, lo=0, hi=255), "b": b})
    add("add_int64_wrap", "Add", 13, {"a": np.array([2**62, -2**63], np.int64),
                                      "b": np.array([2**62, -1], np.int64)})
    add("add_uint8_wrap", "Add", 14, {"a": np.array([250, 3], np.uint8),
                                      "b": np.array([10, 255], np.uint8)})
    add("div_int_trunc", "Div", 13, {"a": np.array([-7, 7, -7, 7, -1, 0], np.int64),
                                      "b": np.array([2, -2, -2, 2, 3, 5], np.int64)})
    for dt in (np.int64, np.int32):
        add("neg_%s" % dt.__name__, "Neg", 13, {"x": ints(dt, 3, 4)})
        add("abs_%s" % dt.__name__, "Abs", 13, {"x": ints(dt, 3, 4)})
        add("sign_%s" % dt.__name__, "Sign", 13, {"x": ints(dt, 3, 4, lo=-2, hi=3)})
        add("relu_%s" % dt.__name__, "Relu", 14, {"x": ints(dt, 3, 4)},
            numpy_ref=lambda i: np.maximum(i["x"], 0))
    add("abs_uint8", "Abs", 13, {"x": ints(np.uint8, 3, 4, lo=0, hi=255)})
    add("sign_uint8", "Sign", 13, {"x": ints(np.uint8, 3, 4, lo=0, hi=3)})

    # Pow: float and integer bases, mixed exponent types (opset 12+).
    add("pow", "Pow", 13, {"a": pos(3, 4), "b": rand(3, 4)})
    add("pow_bcast", "Pow", 13, {"a": rand(3, 4)}, {"b": np.array(2.0, np.float32)})
    add("pow_bcast_row", "Pow", 11, {"a": pos(3, 4), "b": rand(4)})
    add("pow_f32_i64", "Pow", 13, {"a": rand(3, 4), "b": ints(np.int64, 3, 4, lo=0, hi=4)})
    add("pow_f32_i32", "Pow", 15, {"a": rand(3, 4), "b": ints(np.int32, 3, 4, lo=-2, hi=4)})
    add("pow_i64_i64", "Pow", 13, {"a": ints(np.int64, 3, 4, lo=-5, hi=6),
                                  "b": ints(np.int64, 3, 4, lo=0, hi=5)})
    add("pow_i32_i32", "Pow", 13, {"a": ints(np.int32, 3, 4, lo=-5, hi=6),
                                  "b": ints(np.int32, 3, 4, lo=0, hi=5)})
    add("pow_i64_f32", "Pow", 13, {"a": ints(np.int64, 3, 4, lo=0, hi=6),
                                  "b": np.array([[0.0, 1.0, 2.0, 3.0]] * 3, np.float32)})

    # Mod: Python's % (fmod=0) on integers, C's fmod (fmod=1).
    a = np.array([-4, 7, 5, 4, -7, 8, 0, -9], np.int64)
    b = np.array([2, -3, 8, -2, 3, 5, 3, -4], np.int64)
    for dt in (np.int64, np.int32):
        add("mod_%s" % dt.__name__, "Mod", 13, {"a": a.astype(dt), "b": b.astype(dt)})
        add("mod_fmod_%s" % dt.__name__, "Mod", 13, {"a": a.astype(dt), "b": b.astype(dt)},
            attrs={"fmod": 1})
    add("mod_uint8", "Mod", 13, {"a": np.array([4, 7, 5], np.uint8), "b": np.array([2, 3, 8], np.uint8)})
    add("mod_float", "Mod", 13, {"a": rand(3, 4) * 5, "b": rand(4)}, attrs={"fmod": 1})
    add("mod_bcast", "Mod", 13, {"a": ints(np.int64, 3, 4, lo=-50, hi=50),
                                 "b": np.array(7, np.int64)})

    # BitShift on uint8, including shifts past the width.
    xa = np.array([16, 4, 1, 255, 128, 3], np.uint8)
    ya = np.array([1, 2, 3, 7, 8, 0], np.uint8)
    for d in ("LEFT", "RIGHT"):
        add("bitshift_%s" % d.lower(), "BitShift", 11, {"x": xa, "y": ya}, attrs={"direction": d})

    # Clip: optional bounds (absent, one, both), integer types from opset 12.
    xc = np.concatenate([rand(12) * 3, [np.nan]]).astype(np.float32)
    lo, hi = np.array(-1.0, np.float32), np.array(1.5, np.float32)
    for opset in (11, 13):
        add("clip_both_op%d" % opset, "Clip", opset, {"x": xc}, {"lo": lo, "hi": hi},
            node_inputs=["x", "lo", "hi"])
        add("clip_min_op%d" % opset, "Clip", opset, {"x": xc}, {"lo": lo}, node_inputs=["x", "lo"])
        add("clip_max_op%d" % opset, "Clip", opset, {"x": xc}, {"hi": hi},
            node_inputs=["x", "", "hi"])
        add("clip_none_op%d" % opset, "Clip", opset, {"x": xc})
    add("clip_inverted", "Clip", 13, {"x": xc}, {"lo": hi, "hi": lo}, node_inputs=["x", "lo", "hi"])
    add("clip_fed_bounds", "Clip", 13, {"x": xc, "lo": lo, "hi": hi})
    for dt in (np.int64, np.int32, np.uint8):
        add("clip_%s" % dt.__name__, "Clip", 13,
            {"x": ints(dt, 3, 4, lo=0 if dt == np.uint8 else -20, hi=40)},
            {"lo": np.array(3, dt), "hi": np.array(17, dt)}, node_inputs=["x", "lo", "hi"])

    # Variadic Max / Min / Sum / Mean.
    for op in ("Max", "Min", "Sum", "Mean"):
        add("%s_1" % op.lower(), op, 13, {"a": rand(3, 4)})
        add("%s_3_bcast" % op.lower(), op, 13, {"a": rand(3, 4), "b": rand(4), "c": rand(2, 1, 1)})
        add("%s_8" % op.lower(), op, 13, {"i%d" % k: rand(2, 3) for k in range(8)})
    for op in ("Max", "Min"):
        add("%s_nan" % op.lower(), op, 13, {"a": np.array([np.nan, 1, 2], np.float32),
                                            "b": np.array([0, np.nan, 3], np.float32)})
        for dt in (np.int64, np.int32, np.uint8):
            add("%s_%s" % (op.lower(), dt.__name__), op, 13,
                {"a": ints(dt, 3, 4, lo=0, hi=100), "b": ints(dt, 4, lo=0, hi=100)})

    # PRelu: slope broadcast to x.
    add("prelu", "PRelu", 13, {"x": x}, {"s": rand(3, 4, 5)})
    add("prelu_bcast", "PRelu", 13, {"x": x}, {"s": rand(5)})
    add("prelu_channel", "PRelu", 11, {"x": rand(2, 3, 4, 4)}, {"s": rand(3, 1, 1)})
    add("prelu_int64", "PRelu", 16, {"x": ints(np.int64, 3, 4)}, {"s": ints(np.int64, 4)})

    # Comparisons and logic (bool outputs).
    fa, fb = rand(3, 4), rand(4)
    fb[0] = fa[0, 0]
    for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        add("%s_f32" % op.lower(), op, 16, {"a": fa, "b": fb})
        for dt in (np.int64, np.int32, np.uint8):
            add("%s_%s" % (op.lower(), dt.__name__), op, 16,
                {"a": ints(dt, 3, 4, lo=0, hi=4), "b": ints(dt, 4, lo=0, hi=4)})
        add("%s_nan" % op.lower(), op, 13, {"a": np.array([np.nan, 1, np.nan], np.float32),
                                            "b": np.array([1, np.nan, np.nan], np.float32)})
    add("equal_bool", "Equal", 13, {"a": bools(3, 4), "b": bools(3, 4)})
    for op in ("And", "Or", "Xor"):
        add(op.lower(), op, 13, {"a": bools(3, 4), "b": bools(3, 4)})
        add("%s_bcast" % op.lower(), op, 13, {"a": bools(2, 3, 4), "b": bools(4)})
    add("not", "Not", 13, {"x": bools(3, 4)})

    # Where: three-way broadcast, any value type.
    add("where", "Where", 16, {"c": bools(3, 4), "x": rand(3, 4), "y": rand(3, 4)})
    add("where_bcast", "Where", 16, {"c": bools(4), "x": rand(3, 1), "y": rand(2, 1, 1)})
    for dt in (np.int64, np.int32, np.uint8):
        add("where_%s" % dt.__name__, "Where", 16,
            {"c": bools(3, 4), "x": ints(dt, 3, 4, lo=0, hi=9), "y": ints(dt, 4, lo=0, hi=9)})
    add("where_bool", "Where", 16, {"c": bools(3, 4), "x": bools(3, 4), "y": bools(3, 4)},
        numpy_ref=lambda i: np.where(i["c"], i["x"], i["y"]))

    # Cast and CastLike between every pair of numeric types and bool (bfloat16,
    # which numpy lacks, is in the conformance suite's Cast tests).
    fvals = [0.0, -0.0, 1.5, -2.7, 3.99, 100.2, -0.4, 7.0, 0.1, 65519.0, 1e-5, 2.5]
    ivals = [0, 1, -2, 3, 100, -100, 127, 7, -128, 64, 5, -3]
    vals = {np.float32: np.array(fvals, np.float32), np.float64: np.array(fvals, np.float64),
            np.float16: np.array(fvals, np.float16), np.bool_: np.array(ivals, np.bool_)}
    for dt in (np.int8, np.int16, np.int32, np.int64):
        vals[dt] = np.array(ivals, dt)
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        vals[dt] = np.abs(np.array(ivals, np.int64)).astype(dt)
    for src, v in vals.items():
        for dst in vals:
            if np.issubdtype(dst, np.integer) and not np.issubdtype(src, np.bool_):
                # out-of-range values are implementation-defined in onnxruntime
                info = np.iinfo(dst)
                v = np.clip(np.trunc(np.abs(v.astype(np.float64))), 0, min(info.max, 127)) \
                    .astype(src)
            add("cast_%s_%s" % (src.__name__, dst.__name__), "Cast", 13, {"x": v},
                attrs={"to": onnx_type(np.zeros(1, dst))})
            add("castlike_%s_%s" % (src.__name__, dst.__name__), "CastLike", 15, {"x": v},
                {"like": np.zeros(1, dst)}, node_inputs=["x", "like"])
    # float64 -> float16 goes through float32, as in onnxruntime and PyTorch
    # (numpy rounds once): 1 + 2^-11 + 2^-40 becomes the halfway 1 + 2^-11 in
    # float32, then 1 (to even).
    add("cast_f64_f16_once", "Cast", 13,
        {"x": np.array([1 + 2.0**-11 + 2.0**-40, -(1 + 2.0**-11 + 2.0**-40), 65520.0, 1e-8])},
        attrs={"to": 10})
    # Arithmetic on float16 rounds after each op, as onnxruntime's (Add then Mul).
    add("add_f16", "Add", 14, {"a": rand(3, 4).astype(np.float16), "b": rand(3, 4).astype(np.float16)})
    add("mul_f64", "Mul", 14, {"a": rand(3, 4).astype(np.float64), "b": rand(4).astype(np.float64)})
    add("div_u32", "Div", 14, {"a": ints(np.int64, 3, 4, lo=0, hi=1000).astype(np.uint32),
                               "b": ints(np.int64, 3, 4, lo=1, hi=9).astype(np.uint32)})
    add("less_u64", "Less", 13, {"a": np.array([0, 2**63, 5], np.uint64),
                                 "b": np.array([1, 1, 2**63 + 1], np.uint64)})
    add("max_i8", "Max", 13, {"a": ints(np.int8, 3, 4, lo=-128, hi=127),
                              "b": ints(np.int8, 3, 4, lo=-128, hi=127)})
    add("exp_f64", "Exp", 13, {"x": rand(3, 4).astype(np.float64)})
    add("sigmoid_f16", "Sigmoid", 13, {"x": rand(3, 4).astype(np.float16)})

    add("max_32", "Max", 13, {"i%d" % k: rand(2, 3) for k in range(32)})

    # Fusion: a chain of mixed-type ops in one loop; a chain with more operands
    # than one loop nest holds (split into several groups).
    out.append(chain_case())
    out.append(wide_chain_case())
    return out


def wide_chain_case():
    """12 chained Sum nodes of 7 operands each (84 operands): y = s11."""
    inputs = {"a": rand(3, 4)}
    inits = {}
    nodes, prev = [], "a"
    for k in range(12):
        names = [prev] + ["w%d_%d" % (k, j) for j in range(6)]
        for j, nm in enumerate(names[1:]):
            inits[nm] = rand(4) if j % 2 else rand(3, 4)
        out = "s%d" % k if k < 11 else "out"
        nodes.append(helper.make_node("Sum", names, [out], name="n0" if k == 11 else "s%d" % k))
        prev = out
    case = Case("sum_chain_84_operands", "Sum", 13, inputs, inits)

    def model():
        vi = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4])]
        g = helper.make_graph(nodes, case.name, vi,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m
    case.model = model
    return case


def chain_case():
    """Where(Less(a, b), Cast(i), Mul(a, b)) + Abs: float, int and bool in one fused group."""
    a, b, i = rand(3, 4), rand(4), ints(np.int64, 3, 4)
    nodes = [helper.make_node("Less", ["a", "b"], ["c"]),
             helper.make_node("Cast", ["i"], ["fi"], to=1),
             helper.make_node("Mul", ["a", "b"], ["m"]),
             helper.make_node("Where", ["c", "fi", "m"], ["w"]),
             helper.make_node("Abs", ["w"], ["out"], name="n0")]
    case = Case("chain_mixed_types", "Abs", 16, {"a": a, "b": b, "i": i})

    def model():
        vi = [helper.make_tensor_value_info(k, onnx_type(v), v.shape) for k, v in case.inputs.items()]
        g = helper.make_graph(nodes, case.name, vi,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 4])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 16)])
        m.ir_version = 8
        return m
    case.model = model
    return case


def error_cases():
    x = rand(3, 4)
    i8 = ints(np.uint8, 3, 4, lo=0, hi=9)
    return [
        (Case("add_uint8_op13", "Add", 13, {"a": i8, "b": i8}),
         "input 0 ('a') is uint8; supported at opset 13: float32, int64, int32"),
        (Case("sub_bool", "Sub", 14, {"a": bools(3), "b": bools(3)}),
         "input 0 ('a') is bool; supported at opset 14: float32, int64, int32, uint8"),
        (Case("exp_int64", "Exp", 13, {"x": ints(np.int64, 3)}),
         "input 0 ('x') is int64; supported at opset 13: float32"),
        (Case("max_int_op11", "Max", 11, {"a": ints(np.int64, 3), "b": ints(np.int64, 3)}),
         "input 0 ('a') is int64; supported at opset 11: float32"),
        (Case("mod_float_no_fmod", "Mod", 13, {"a": x, "b": x}), "float inputs need fmod=1"),
        (Case("cast_to_string", "Cast", 13, {"x": x}, attrs={"to": 8}),
         "cast to ONNX type 8 is not supported"),
        (Case("not_float", "Not", 13, {"x": x}), "input 0 ('x') is float32; supported at opset 13: bool"),
        (Case("where_mixed", "Where", 16, {"c": bools(3, 4), "x": x, "y": ints(np.int64, 3, 4)}),
         "X and Y have different types (float32 and int64)"),
        (Case("hardswish_op13", "HardSwish", 13, {"x": x}),
         "op HardSwish is supported at opsets 14-17, the model imports 13"),
        (Case("add_bad_bcast", "Add", 13, {"a": rand(3, 4), "b": rand(3)}),
         "shapes [3, 4] and [3] cannot be broadcast"),
        (Case("clip_vector_min", "Clip", 13, {"x": x}, {"lo": rand(4)}, node_inputs=["x", "lo"]),
         "min ('lo') must be a scalar, got shape [4]"),
        (Case("bitshift_direction", "BitShift", 11, {"x": i8, "y": i8}, attrs={"direction": "UP"}),
         "direction must be 'LEFT' or 'RIGHT', got 'UP'"),
        (Case("prelu_bad_slope", "PRelu", 13, {"x": rand(3, 4)}, {"s": rand(2, 3, 4)}),
         "slope [2, 3, 4] does not broadcast to X [3, 4]"),
    ]


# ---- gradient cases (PyTorch autograd as the reference) ----

class GradCase:
    """op(inputs) where input `fed` (named "x") is data, the float arrays in
    `arrays` are initializers (trainable unless named in `fixed`: Clip's bounds
    are constants to the loader) and those in `consts` Constant nodes;
    fn(torch tensors in node order) is the PyTorch forward."""

    def __init__(self, name, op, opset, arrays, fn, attrs=None, consts=(), fed="x", node_inputs=None,
                 fixed=(), pre=()):
        self.name, self.op, self.opset = name, op, opset
        self.arrays = arrays
        self.fn, self.attrs, self.consts, self.fed = fn, attrs or {}, set(consts), fed
        self.fixed = set(fixed) | self.consts
        self.pre = pre  # nodes before n0: (op, inputs, outputs, attrs)
        self.node_inputs = node_inputs or [n for n, _ in arrays]

    def model(self, train):
        x = dict(self.arrays)[self.fed]
        names = [n if n != self.fed or not train else "xx" for n in self.node_inputs]
        nodes, inits = [], []
        for n, v in self.arrays:
            if n == self.fed:
                continue
            if n in self.consts:
                nodes.append(helper.make_node("Constant", [], [n],
                                              value=numpy_helper.from_array(v, n)))
            else:
                inits.append(numpy_helper.from_array(v, n))
        if train:
            nodes.append(helper.make_node("Add", [self.fed, "px"], ["xx"]))
            inits.append(numpy_helper.from_array(np.zeros_like(x), "px"))
        for op, ins, outs, at in self.pre:
            ins = [n if n != self.fed or not train else "xx" for n in ins]
            nodes.append(helper.make_node(op, ins, outs, **at))
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
    torch = _torch()
    F = torch.nn.functional
    out = []

    def add(name, op, opset, arrays, fn, **k):
        out.append(GradCase("grad_" + name, op, opset, arrays, fn, **k))

    x = rand(4, 3, 5)
    xp = pos(4, 3, 5)
    add("exp", "Exp", 13, [("x", x)], lambda t: torch.exp(t[0]))
    add("log", "Log", 13, [("x", xp)], lambda t: torch.log(t[0]))
    add("sqrt", "Sqrt", 13, [("x", xp)], lambda t: torch.sqrt(t[0]))
    add("reciprocal", "Reciprocal", 13, [("x", xp)], lambda t: torch.reciprocal(t[0]))
    add("erf", "Erf", 13, [("x", x)], lambda t: torch.erf(t[0]))
    add("sin", "Sin", 13, [("x", x)], lambda t: torch.sin(t[0]))
    add("cos", "Cos", 13, [("x", x)], lambda t: torch.cos(t[0]))
    add("abs", "Abs", 13, [("x", x)], lambda t: torch.abs(t[0]))
    add("softplus", "Softplus", 13, [("x", x * 10)], lambda t: F.softplus(t[0]))
    add("leakyrelu", "LeakyRelu", 13, [("x", x)], lambda t: F.leaky_relu(t[0], 0.2),
        attrs={"alpha": 0.2})
    add("leakyrelu_default", "LeakyRelu", 16, [("x", x)], lambda t: F.leaky_relu(t[0], 0.01))
    add("elu", "Elu", 13, [("x", x)], lambda t: F.elu(t[0], 0.7), attrs={"alpha": 0.7})
    add("sigmoid_chain", "Sigmoid", 13, [("x", x)], lambda t: torch.sigmoid(t[0]))
    x5 = x * 5
    add("selu", "Selu", 13, [("x", x)], lambda t: F.selu(t[0]))
    add("celu", "Celu", 13, [("x", x)], lambda t: F.celu(t[0], 0.6), attrs={"alpha": 0.6})
    add("softsign", "Softsign", 13, [("x", x)], lambda t: F.softsign(t[0]))
    add("hardswish", "HardSwish", 14, [("x", x5)], lambda t: F.hardswish(t[0]))
    add("hardsigmoid", "HardSigmoid", 13, [("x", x5)], lambda t: F.hardsigmoid(t[0]),
        attrs={"alpha": 1.0 / 6, "beta": 0.5})
    for e in (2.0, 3.0, 0.5, 0.0, -1.5):
        add("pow_const%g" % e, "Pow", 13, [("x", xp), ("e", np.array(e, np.float32))],
            lambda t, e=e: torch.pow(t[0], e), consts=["e"])
    add("pow_const_square_neg", "Pow", 13, [("x", x), ("e", np.array(2.0, np.float32))],
        lambda t: torch.pow(t[0], 2.0), consts=["e"])
    add("pow_trained_exponent", "Pow", 13, [("x", xp), ("e", rand(5))],
        lambda t: torch.pow(t[0], t[1]))
    lo, hi = np.array(-0.5, np.float32), np.array(0.8, np.float32)
    for opset in (11, 13):
        add("clip_op%d" % opset, "Clip", opset, [("x", x), ("lo", lo), ("hi", hi)],
            lambda t: torch.clamp(t[0], t[1], t[2]), fixed=["lo", "hi"])
        add("clip_min_op%d" % opset, "Clip", opset, [("x", x), ("lo", lo)],
            lambda t: torch.clamp(t[0], min=t[1]), fixed=["lo"])
    add("clip_max", "Clip", 13, [("x", x), ("hi", hi)], lambda t: torch.clamp(t[0], max=t[1]),
        node_inputs=["x", "", "hi"], fixed=["hi"])
    add("clip_relu6", "Clip", 13, [("x", x * 8), ("lo", np.array(0, np.float32)),
                                   ("hi", np.array(6, np.float32))],
        lambda t: torch.clamp(t[0], t[1], t[2]), consts=["lo", "hi"])
    for op, f in (("Max", torch.maximum), ("Min", torch.minimum)):
        w = rand(3, 5)
        w[0] = x[0, 0]  # ties split the gradient
        add(op.lower(), op, 13, [("x", x), ("w", w)], lambda t, f=f: f(t[0], t[1]))
        add(op.lower() + "_bcast", op, 13, [("x", x), ("w", rand(5))], lambda t, f=f: f(t[0], t[1]))
        add(op.lower() + "_1", op, 13, [("x", x)], lambda t: t[0] * 1)
    add("sum3", "Sum", 13, [("x", x), ("w", rand(3, 5)), ("v", rand(5))],
        lambda t: t[0] + t[1] + t[2])
    add("mean3", "Mean", 13, [("x", x), ("w", rand(3, 5)), ("v", rand(5))],
        lambda t: (t[0] + t[1] + t[2]) / 3)
    c = bools(3, 5)
    add("where", "Where", 16, [("c", c), ("x", x), ("w", rand(5))],
        lambda t: torch.where(t[0], t[1], t[2]))
    add("where_y", "Where", 16, [("c", c), ("w", rand(4, 3, 5)), ("x", x)],
        lambda t: torch.where(t[0], t[1], t[2]))
    add("prelu", "PRelu", 13, [("x", x), ("s", rand(3, 1))],
        lambda t: torch.where(t[0] > 0, t[0], t[0] * t[1]))
    add("cast_f32", "Cast", 13, [("x", x)], lambda t: t[0] * 1, attrs={"to": 1})
    # Piecewise-constant ops pass no gradient (PyTorch: zeros), so masks train.
    zero = ("zero", np.array(0, np.float32))
    add("mask_cast_greater", "Mul", 13, [("x", x), zero], lambda t: t[0] * (t[0] > 0).float(),
        consts=["zero"], node_inputs=["x", "m"],
        pre=[("Greater", ["x", "zero"], ["c"], {}), ("Cast", ["c"], ["m"], {"to": 1})])
    for op, f in (("Floor", torch.floor), ("Ceil", torch.ceil), ("Round", torch.round),
                  ("Sign", torch.sign)):
        add("zero_" + op.lower(), "Mul", 13, [("x", x * 3)], lambda t, f=f: f(t[0]) * t[0],
            node_inputs=["f", "x"], pre=[(op, ["x"], ["f"], {})])
    return out


def main():
    verbose = "-v" in sys.argv
    pattern = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else ""
    if not os.path.exists(AUTODIST):
        print("test_ops_ew: %s not found (set AUTODIST)" % AUTODIST)
        return 1
    failed = ran = 0
    checks = [(c, check_infer) for c in cases()]
    checks += [(c, lambda c, v, e=e: check_error(c, e, v)) for c, e in error_cases()]
    checks += [(c, check_grad) for c in grad_cases()]
    for c, check in checks:
        if pattern not in c.name:
            continue
        ran += 1
        try:
            msg = check(c, verbose)
        except Exception as e:  # a reference that cannot run the case is a test bug
            msg = "exception: %s" % e
        if msg:
            failed += 1
            print("FAIL %s: %s" % (c.name, msg))
        elif verbose:
            print("ok   %s" % c.name)
    print("test_ops_ew: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
