#!/usr/bin/env python3
"""tests/ref/test_shape_ops.py: the data-movement ops (compiler/ops/shape.c,
compiler/ops/index.c) and constant folding (compiler/fold.c) against outside
references.

Inference: onnxruntime is the reference. Each op runs as a one-node model on
several dtypes (float32, int64, int32, uint8, bool where onnxruntime has the
kernel); shape-like inputs (Reshape's shape, Slice's starts, ...) are graph
inputs that `autodist infer` binds at compile time, the way ONNX's own node
tests feed them. Outputs must be equal (integers) or agree to rtol 1e-4,
atol 1e-5 (floats).

Gradients: PyTorch autograd is the reference, through test_ops_ort's one SGD
step (lr 1) on an MSE loss: Concat, Slice, Split, Squeeze, Unsqueeze, Expand,
Tile, Transpose and Gather on float data.

Folding: PyTorch modules exported with a dynamic batch axis, whose graphs
compute shapes at run time (Shape -> Gather -> Unsqueeze -> Concat ->
Reshape, ConstantOfShape, Range, Expand), compile and match onnxruntime on a
batch size other than the export's.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_shape_ops.py [-k SUBSTRING] [-v]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_ops_ort as T  # noqa: E402

AUTODIST = T.AUTODIST
RTOL, ATOL = 1e-4, 1e-5
rng = np.random.default_rng(2024)
ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
             np.dtype(np.int32): TensorProto.INT32, np.dtype(np.uint8): TensorProto.UINT8,
             np.dtype(np.bool_): TensorProto.BOOL}
DTYPES = (np.float32, np.int64, np.int32, np.uint8, np.bool_)


def arr(shape, dt):
    dt = np.dtype(dt)
    if dt == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dt == np.uint8:
        return rng.integers(0, 255, shape).astype(np.uint8)
    return rng.integers(-1000, 1000, shape).astype(dt)


def i64(*v):
    return np.array(v, np.int64)


class Case:
    """One node; every input is a graph input of its own dtype (data or a
    shape-like input bound at compile time); outputs typed by onnxruntime."""

    def __init__(self, name, op, opset, inputs, attrs=None, n_out=1, out_dtypes=None):
        self.name, self.op, self.opset = name, op, opset
        self.inputs = inputs  # list of (name, array); name "" for an omitted input
        self.attrs = attrs or {}
        self.n_out = n_out
        self.out_dtypes = out_dtypes

    def model(self, out_types):
        vi = [helper.make_tensor_value_info(k, ONNX_TYPE[v.dtype], v.shape)
              for k, v in self.inputs if k]
        outs = ["y%d" % i for i in range(self.n_out)]
        node = helper.make_node(self.op, [k for k, _ in self.inputs], outs, name="n0",
                                **self.attrs)
        ovi = [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, out_types)]
        g = helper.make_graph([node], self.name, vi, ovi)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def ort_run(case):
    # The output types: those onnx shape inference gives the node.
    m = case.model([TensorProto.UNDEFINED] * case.n_out)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = [o.type.tensor_type.elem_type for o in inferred.graph.output]
    vmap = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types = [t or vmap.get("y%d" % i, 0) for i, t in enumerate(types)]
    if not all(types):
        types = [ONNX_TYPE[next(v for k, v in case.inputs if k).dtype]] * case.n_out
    m = case.model(types)
    return m, T.ort_run(m, {k: v for k, v in case.inputs if k})


def check_infer(case, verbose):
    try:
        model, refs = ort_run(case)
    except Exception as e:  # a reference that cannot run is a test bug
        return "onnxruntime cannot run the case (test bug): %s" % str(e).splitlines()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        args = ["infer", path]
        for k, v in case.inputs:
            if k:
                np.save(os.path.join(tmp, k + ".npy"), v)
                args += ["--data", "%s=%s" % (k, os.path.join(tmp, k + ".npy"))]
        for i in range(case.n_out):
            args += ["--out", "y%d=%s" % (i, os.path.join(tmp, "y%d.npy" % i))]
        r = subprocess.run([AUTODIST] + args, cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        gots = [np.load(os.path.join(tmp, "y%d.npy" % i)) for i in range(case.n_out)]
    for i, (got, ref) in enumerate(zip(gots, refs)):
        if got.shape != ref.shape:
            return "y%d shape %s, expected %s" % (i, got.shape, ref.shape)
        if ref.dtype == np.float32:
            if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
                return "y%d max abs error %g" % (i, np.abs(got - ref).max())
        elif got.dtype != ref.dtype or not np.array_equal(got, ref):
            return "y%d differs (%s vs %s)" % (i, got.dtype, ref.dtype)
    return None


def cases():
    out = []

    def add(*a, **k):
        out.append(Case(*a, **k))

    for dt in DTYPES:
        t = np.dtype(dt).name
        x = arr((3, 4, 5), dt)
        for op in (13, 17):
            s = "_%s_op%d" % (t, op)
            add("concat_ax1" + s, "Concat", op, [("a", x), ("b", arr((3, 2, 5), dt))],
                {"axis": 1})
            add("concat_ax-1_3in" + s, "Concat", op,
                [("a", x), ("b", arr((3, 4, 1), dt)), ("c", arr((3, 4, 2), dt))], {"axis": -1})
            add("slice_steps" + s, "Slice", op,
                [("x", x), ("st", i64(1, -1)), ("en", i64(100, 0)), ("ax", i64(2, 1)),
                 ("sp", i64(2, -2))])
            add("slice_default" + s, "Slice", op, [("x", x), ("st", i64(0, 1)), ("en", i64(2, -1))])
            add("slice_neg_clamp" + s, "Slice", op,
                [("x", x), ("st", i64(-100)), ("en", i64(-2)), ("ax", i64(-1))])
            add("split_input" + s, "Split", op, [("x", x), ("sp", i64(1, 3))], {"axis": 1},
                n_out=2)
            add("split_equal" + s, "Split", op, [("x", x)], {"axis": 0}, n_out=3)
            add("squeeze" + s, "Squeeze", op, [("x", arr((3, 1, 5, 1), dt)), ("ax", i64(-1, 1))])
            add("squeeze_all" + s, "Squeeze", op, [("x", arr((1, 3, 1), dt))])
            add("unsqueeze" + s, "Unsqueeze", op, [("x", x), ("ax", i64(0, -1, 2))])
            add("expand" + s, "Expand", op, [("x", arr((4, 1), dt)), ("sh", i64(2, 1, 3))])
            add("tile" + s, "Tile", op, [("x", arr((2, 3), dt)), ("r", i64(3, 2))])
            add("reshape_copy0" + s, "Reshape", op, [("x", x), ("sh", i64(0, -1))])
            if op >= 14:
                add("reshape_allowzero" + s, "Reshape", op, [("x", x), ("sh", i64(5, 12))],
                    {"allowzero": 1})
            add("transpose" + s, "Transpose", op, [("x", x)], {"perm": [2, 0, 1]})
            add("gather_ax1" + s, "Gather", op, [("x", x), ("i", i64(3, -1, 0))], {"axis": 1})
            add("gather_elements" + s, "GatherElements", op,
                [("x", x), ("i", rng.integers(-5, 5, (3, 4, 2)).astype(np.int64))], {"axis": 2})
            add("gathernd_b1" + s, "GatherND", op,
                [("x", x), ("i", np.array([[[1, 2]], [[0, -1]], [[3, 4]]], np.int64))],
                {"batch_dims": 1})
            add("gathernd" + s, "GatherND", op, [("x", x), ("i", np.array([[2], [0]], np.int64))])
        add("squeeze_attr_%s_op11" % t, "Squeeze", 11, [("x", arr((3, 1, 5), dt))],
            {"axes": [1]})
        add("unsqueeze_attr_%s_op11" % t, "Unsqueeze", 11, [("x", x)], {"axes": [3, 0]})
        add("split_attr_%s_op11" % t, "Split", 11, [("x", x)], {"axis": 2, "split": [2, 3]},
            n_out=2)
    for dt in (np.float32, np.int64, np.int32):
        t = np.dtype(dt).name
        add("range_%s" % t, "Range", 13, [("s", np.array(7, dt)), ("l", np.array(-3, dt)),
                                          ("d", np.array(-2, dt))])
        add("constantofshape_%s" % t, "ConstantOfShape", 13, [("sh", i64(2, 3))],
            {"value": onnx.numpy_helper.from_array(np.array([5], dt))})
        add("onehot_idx_%s" % t, "OneHot", 13,
            [("i", np.array([[1, -1], [0, 3]], dt)), ("d", np.array(4, dt)),
             ("v", np.array([0, 3], np.float32))], {"axis": 1})
    for dt in (np.float32, np.int64):
        t = np.dtype(dt).name
        add("trilu_upper_%s" % t, "Trilu", 14, [("x", arr((2, 4, 5), dt)), ("k", np.array(1))])
        add("trilu_lower_%s" % t, "Trilu", 14, [("x", arr((4, 3), dt)), ("k", np.array(-1))],
            {"upper": 0})
        add("eyelike_%s" % t, "EyeLike", 13, [("x", arr((3, 5), dt))], {"k": 1})
    add("eyelike_dtype", "EyeLike", 13, [("x", arr((4, 4), np.float32))],
        {"dtype": TensorProto.INT64, "k": -1})
    add("depthtospace_dcr", "DepthToSpace", 13, [("x", arr((2, 8, 2, 3), np.float32))],
        {"blocksize": 2})
    add("depthtospace_crd", "DepthToSpace", 13, [("x", arr((2, 8, 2, 3), np.float32))],
        {"blocksize": 2, "mode": "CRD"})
    add("spacetodepth", "SpaceToDepth", 13, [("x", arr((2, 3, 4, 6), np.float32))],
        {"blocksize": 2})
    add("shape_start_end_op15", "Shape", 15, [("x", arr((2, 3, 4, 5), np.float32))],
        {"start": 1, "end": -1})
    add("shape_op13", "Shape", 13, [("x", arr((2, 3, 4), np.int64))])
    add("size_op13", "Size", 13, [("x", arr((2, 3, 4), np.uint8))])
    return out


def grad_cases():
    out = []
    torch = T._torch()
    x = T.rand(2, 6, 4)

    def add(name, op, opset, arrays, fn, attrs=None):
        out.append(T.GradCase("grad_" + name, op, opset, arrays, "x", fn, attrs))

    add("concat", "Concat", 13, [("x", x), ("w", T.rand(2, 3, 4))],
        lambda t: torch.cat([t[0], t[1]], 1), {"axis": 1})
    add("slice", "Slice", 13, [("x", x), ("s", i64(5, 1)), ("e", i64(0, 4)), ("a", i64(1, 2)),
                               ("p", i64(-2, 2))],
        lambda t: t[0].flip(1)[:, 0:5:2][:, :, 1:4:2])
    add("squeeze", "Squeeze", 13, [("x", T.rand(2, 1, 4)), ("a", i64(1))],
        lambda t: t[0].squeeze(1))
    add("unsqueeze", "Unsqueeze", 13, [("x", x), ("a", i64(2))], lambda t: t[0].unsqueeze(2))
    add("expand", "Expand", 13, [("x", T.rand(2, 1, 4)), ("s", i64(3, 4))],
        lambda t: t[0].expand(2, 3, 4))
    add("tile", "Tile", 13, [("x", x), ("r", i64(1, 2, 3))], lambda t: t[0].repeat(1, 2, 3))
    add("transpose", "Transpose", 13, [("x", x)], lambda t: t[0].permute(0, 2, 1),
        {"perm": [0, 2, 1]})
    add("gather_f32", "Gather", 13, [("x", x), ("i", i64(5, 0, 5))], lambda t: t[0][:, [5, 0, 5]],
        {"axis": 1})
    return out


class SplitGrad(T.GradCase):
    """Split with two outputs of which only the first is the model's output:
    the other's gradient is zero."""

    def model(self, train):
        m = super().model(train)
        m.graph.node[-1].output.append("unused")
        return m


def split_grad_case():
    torch = T._torch()
    x = T.rand(2, 6, 4)
    return SplitGrad("grad_split", "Split", 13, [("x", x), ("s", i64(2, 4))], "x",
                     lambda t: torch.split(t[0], [2, 4], 1)[0], {"axis": 1})


# ---- PyTorch modules with run-time shape computations ----

def torch_modules():
    torch = T._torch()
    nn = torch.nn

    class View(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.view(x.size(0), -1, 4)).flatten(1)

    class Heads(nn.Module):
        """Attention-style head split and merge."""

        def forward(self, x):
            b, t, c = x.shape
            h = x.reshape(b, t, 2, c // 2).permute(0, 2, 1, 3)
            h = h * torch.arange(h.shape[-1]).float()
            return h.transpose(1, 2).reshape(b, t, -1) + torch.zeros(b, t, c)

    class Mask(nn.Module):
        """Causal mask from the sequence length, ones and expand."""

        def forward(self, x):
            t = x.shape[1]
            m = torch.ones(t, t).triu(1)
            y = x @ x.transpose(1, 2) - 1e4 * m
            return y + x.new_ones(1).expand(x.shape[0], t, t)

    return [("view", View(), (5, 8, 2)), ("heads", Heads(), (3, 5, 6)),
            ("mask", Mask(), (2, 4, 3))]


def check_torch_module(name, mod, shape, verbose):
    torch = T._torch()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name + ".onnx")
        torch.onnx.export(mod, torch.randn(*shape), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=14)
        ops = {n.op_type for n in onnx.load(path).graph.node}
        if "Shape" not in ops:
            return "the export has no Shape node (test bug)"
        x = rng.standard_normal((7,) + tuple(shape[1:])).astype(np.float32)
        ref = T.ort_run(onnx.load(path), {"x": x})[0]
        np.save(os.path.join(tmp, "x.npy"), x)
        r = subprocess.run([AUTODIST, "infer", path, "--data", "x=x.npy", "--out", "y=y.npy"],
                           cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        got = np.load(os.path.join(tmp, "y.npy"))
        if verbose:
            print("     %s ops: %s" % (name, sorted(ops)))
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
        return "mismatch: shape %s vs %s" % (got.shape, ref.shape)
    return None


def main():
    verbose = "-v" in sys.argv
    pattern = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else ""
    if not os.path.exists(AUTODIST):
        print("test_shape_ops: %s not found (set AUTODIST)" % AUTODIST)
        return 1
    failed = ran = 0

    def report(name, msg):
        nonlocal failed, ran
        ran += 1
        if msg:
            failed += 1
            print("FAIL %s: %s" % (name, msg), flush=True)
        elif verbose:
            print("ok   %s" % name, flush=True)

    for c in cases():
        if pattern in c.name:
            report(c.name, check_infer(c, verbose))
    for c in grad_cases() + [split_grad_case()]:
        if pattern in c.name:
            report(c.name, T.check_grad(c, verbose))
    for name, mod, shape in torch_modules():
        if pattern in "torch_" + name:
            report("torch_" + name, check_torch_module(name, mod, shape, verbose))
    print("test_shape_ops: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
