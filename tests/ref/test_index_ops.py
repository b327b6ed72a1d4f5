#!/usr/bin/env python3
"""tests/ref/test_index_ops.py: the index (Gather) and reduce (ReduceMean,
ReduceSum) op families against outside references, one single-op ONNX model
at a time, in the manner of test_ops_ort.py (whose helpers it reuses).

Inference: onnxruntime is the reference, at opsets 11, 13 and 17: Gather at
axes 0, 1 and -1 with int64 and int32 indices, negative and repeated indices
and a scalar index; fed int64 token ids into a table (the embedding lookup);
ReduceMean and ReduceSum over single and several axes with and without
keepdims, ReduceSum's axes as an input from opset 13 and noop_with_empty_axes.
Outputs must agree to rtol 1e-4, atol 1e-5. Unsupported forms fail at compile
time with exit code 2 and a message naming the node.

Gradients: PyTorch autograd is the reference, through test_ops_ort's one SGD
step (lr 1) on an MSE loss; the embedding table's gradient (scatter-add of the
output rows, repeated ids accumulating) is checked the same way with the ids
fed and the table trained.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_index_ops.py [-k SUBSTRING] [-v]
"""
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_ops_ort as T  # noqa: E402

rng = np.random.default_rng(4321)
ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
             np.dtype(np.int32): TensorProto.INT32}


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


class Case(T.Case):
    """test_ops_ort.Case with fed inputs of their own dtypes (int64 token ids),
    and with batch=True a symbolic first axis "N" (autodist's batch axis)."""

    def __init__(self, *a, batch=False, **k):
        super().__init__(*a, **k)
        self.batch = batch

    def model(self):
        m = super().model()
        for vi in m.graph.input:
            vi.type.tensor_type.elem_type = ONNX_TYPE[self.inputs[vi.name].dtype]
            if self.batch:
                vi.type.tensor_type.shape.dim[0].dim_param = "N"
        return m


def cases():
    out = []

    def add(*a, **k):
        out.append(Case(*a, **k))

    for opset in (11, 13, 17):
        s = "_op%d" % opset
        # Gather. `autodist infer` splits fed inputs along axis 0, so either the
        # indices are fed (axis 0, the embedding lookup) or the data is (other axes).
        table = rand(10, 5)
        ids = np.array([[1, 9, 0, 1], [-1, 3, -10, 9], [2, 2, 2, 2]], np.int64)
        add("gather_ids_i64" + s, "Gather", opset, {"ids": ids}, {"w": table},
            node_inputs=["w", "ids"])
        add("gather_ids_i64_3d" + s, "Gather", opset, {"ids": ids[:, :3]}, {"w": rand(10, 3, 2)},
            node_inputs=["w", "ids"])
        add("gather_ids_1d" + s, "Gather", opset, {"ids": np.array([4, -2, 4, 0], np.int64)},
            {"w": table}, node_inputs=["w", "ids"], attrs={"axis": 0})
        x = rand(2, 6, 4)
        for dt in (np.int64, np.int32):
            tag = "i64" if dt == np.int64 else "i32"
            add("gather_axis1_%s%s" % (tag, s), "Gather", opset, {"x": x},
                {"i": np.array([[0, -1], [5, 2], [-6, 5]], dt)}, attrs={"axis": 1})
            add("gather_axis-1_%s%s" % (tag, s), "Gather", opset, {"x": x},
                {"i": np.array([3, -2, 0, 3, 1], dt)}, attrs={"axis": -1})
            add("gather_scalar_%s%s" % (tag, s), "Gather", opset, {"x": x},
                {"i": np.array(-2, dt)}, attrs={"axis": 1})
            add("gather_axis2_%s%s" % (tag, s), "Gather", opset, {"x": x},
                {"i": np.array([[1], [3]], dt)}, attrs={"axis": 2})

        # ReduceMean: axes attribute through opset 17.
        x = rand(2, 3, 4, 5)
        for axes, keep in (([1], 0), ([1], 1), ([-1], 0), ([1, 3], 1), ([3, 1], 0),
                           ([2, 3], 0), ([1, 2, 3], 1), ([-2], None)):
            at = {"axes": axes}
            if keep is not None:
                at["keepdims"] = keep
            name = "reducemean_%s_k%s%s" % ("_".join(map(str, axes)), keep, s)
            add(name, "ReduceMean", opset, {"x": x}, attrs=at)
        # ReduceSum: axes attribute before 13, an (optional) input from 13.
        for axes, keep in (([1], 0), ([2], 1), ([-1, 1], 0), ([1, 2, 3], None)):
            at = {} if keep is None else {"keepdims": keep}
            name = "reducesum_%s_k%s%s" % ("_".join(map(str, axes)), keep, s)
            if opset < 13:
                add(name, "ReduceSum", opset, {"x": x}, attrs=dict(at, axes=axes))
            else:
                add(name, "ReduceSum", opset, {"x": x}, {"axes": np.array(axes, np.int64)},
                    attrs=at)
        if opset >= 13:
            add("reducesum_noop" + s, "ReduceSum", opset, {"x": x},
                attrs={"noop_with_empty_axes": 1})
            add("reducesum_noop_empty" + s, "ReduceSum", opset, {"x": x},
                {"axes": np.zeros(0, np.int64)}, attrs={"noop_with_empty_axes": 1})
    return out


def error_cases():
    x = rand(2, 3, 4)
    ids = np.array([[0, 1]], np.int64)
    return [
        (Case("reducesum_dynamic_axes", "ReduceSum", 13,
              {"x": x, "a": np.array([[1]], np.int64)}),
         # infer binds data fed to a constant slot at compile time (docs/cli.md);
         # this one has the wrong shape for axes.
         "axes input 'a' must be a 1-D int64 tensor"),
        (Case("reducemean_axis_range", "ReduceMean", 13, {"x": x}, attrs={"axes": [3]}),
         "axis 3 is out of range for rank 3"),
        (Case("gather_const_range", "Gather", 13, {"x": x}, {"i": np.array([3], np.int64)},
              attrs={"axis": 1}),
         "index 3 is out of range for axis extent 3"),
        (Case("gather_axis_range", "Gather", 13, {"x": x}, {"i": np.array([0], np.int64)},
              attrs={"axis": -4}),
         "axis -4 is out of range for rank 3"),
        (Case("gather_batch_axis", "Gather", 13, {"x": x}, {"i": np.array([0], np.int64)},
              batch=True),
         "Gather at axis 0 of fed data with constant indices would move the batch axis"),
        (Case("gather_float_ids", "Gather", 13, {"ids": ids.astype(np.float32)},
              {"w": rand(4, 2)}, node_inputs=["w", "ids"]),
         "indices 'ids' are float32; Gather takes int64 or int32"),
    ]


def grad_cases():
    out = []

    def add(name, op, opset, arrays, fn, attrs=None):
        out.append(T.GradCase("grad_" + name, op, opset, arrays, "x", fn, attrs))

    torch = T._torch()
    x = rand(2, 6, 4)
    for opset in (11, 13):
        for dt in (np.int64, np.int32):
            tag = "%s_op%d" % ("i64" if dt == np.int64 else "i32", opset)
            i1 = np.array([[0, -1], [5, 2], [0, 0]], dt)  # repeated rows accumulate
            add("gather_axis1_" + tag, "Gather", opset, [("x", x), ("i", i1)],
                lambda t: t[0][:, torch.as_tensor(t[1]).long()], {"axis": 1})
            i2 = np.array([3, -1, 3, 1], dt)
            add("gather_axis-1_" + tag, "Gather", opset, [("x", x), ("i", i2)],
                lambda t: t[0][:, :, torch.as_tensor(t[1]).long()], {"axis": -1})
            add("gather_scalar_" + tag, "Gather", opset, [("x", x), ("i", np.array(-2, dt))],
                lambda t: t[0][:, -2], {"axis": 1})
    x = rand(2, 3, 4, 5)
    for opset in (11, 13, 17):
        for axes, keep in (([1], 0), ([1, 3], 1), ([-1], 0), ([2, 3], 0), ([1, 2, 3], 1)):
            name = "reducemean_%s_k%d_op%d" % ("_".join(map(str, axes)), keep, opset)
            add(name, "ReduceMean", opset, [("x", x)],
                lambda t, axes=axes, keep=keep: t[0].mean(dim=axes, keepdim=bool(keep)),
                {"axes": axes, "keepdims": keep})
            name = "reducesum_%s_k%d_op%d" % ("_".join(map(str, axes)), keep, opset)
            fn = (lambda t, axes=axes, keep=keep: t[0].sum(dim=axes, keepdim=bool(keep)))
            if opset < 13:
                add(name, "ReduceSum", opset, [("x", x)], fn, {"axes": axes, "keepdims": keep})
            else:
                add(name, "ReduceSum", opset, [("x", x), ("a", np.array(axes, np.int64))], fn,
                    {"keepdims": keep})
    return out


def check_table_grad(opset, verbose):
    """The embedding table's gradient: scatter-add of dy rows at the fed ids."""
    torch = T._torch()
    w = rand(12, 3)
    ids = np.array([[1, 11, 1, -1], [0, 1, 5, 5], [7, -12, 2, 1]], np.int64)
    wt = torch.tensor(w, requires_grad=True)
    y = torch.nn.functional.embedding(torch.as_tensor(ids) % 12, wt)
    ref = T.ort_run(_table_onnx(w, opset), {"ids": ids})[0]
    if not np.allclose(y.detach().numpy(), ref, T.RTOL, T.ATOL):
        return "the PyTorch reference disagrees with onnxruntime (test bug)"
    label = rand(*ref.shape)
    torch.nn.functional.mse_loss(y, torch.tensor(label)).backward()
    want = wt.grad.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(_table_onnx(w, opset), os.path.join(tmp, "m.onnx"))
        np.save(os.path.join(tmp, "ids.npy"), ids)
        np.save(os.path.join(tmp, "label.npy"), label)
        with open(os.path.join(tmp, "train.yml"), "w") as f:
            f.write("loss: mse\nbatch_size: %d\noptimizer: {name: sgd, lr: 1.0}\n" % ids.shape[0])
        r = T.autodist(["compile", "m.onnx", "-t", "train.yml", "-o", "plan"], tmp)
        if r.returncode != 0:
            return "compile failed (%d): %s" % (r.returncode, r.stderr.strip())
        r = T.autodist(["run", "plan", "--data", "ids=ids.npy", "--data", "label=label.npy",
                        "--steps", "1", "--save", "out.onnx"], tmp)
        if r.returncode != 0:
            return "run failed (%d): %s" % (r.returncode, r.stderr.strip())
        trained = {t.name: numpy_helper.to_array(t)
                   for t in onnx.load(os.path.join(tmp, "out.onnx")).graph.initializer}
    got = w - trained["w"]
    if not np.allclose(got, want, rtol=T.RTOL, atol=T.ATOL):
        return "gradient of w: max abs error %g (ref max %g)" % (np.abs(got - want).max(),
                                                                 np.abs(want).max())
    return None


def check_fed_int32(verbose):
    """A fed int32 input: integer .npy files load as int64 and are narrowed for
    an int32 input (infer and an inference plan), matching onnxruntime; a value
    outside int32 is exit 2 naming the file and element."""
    w = rand(10, 3)
    ids = np.array([[1, 9, 0, -1], [3, 3, 5, -10]], np.int32)
    ref = T.ort_run(_table_onnx(w, 13, TensorProto.INT32), {"ids": ids})[0]
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(_table_onnx(w, 13, TensorProto.INT32), os.path.join(tmp, "m.onnx"))
        np.save(os.path.join(tmp, "ids.npy"), ids)
        np.save(os.path.join(tmp, "big.npy"), np.array([[1, 2, 3, 2**31]] * 2, np.int64))
        for args in (["infer", "m.onnx", "--data", "ids=ids.npy", "--out", "y=y.npy"],
                     ["compile", "m.onnx", "--infer", "--batch", "2", "-o", "plan"],
                     ["run", "plan", "--data", "ids=ids.npy", "--out", "y=y2.npy"]):
            r = T.autodist(args, tmp)
            if r.returncode != 0:
                return "%s failed (%d): %s" % (args[0], r.returncode, r.stderr.strip())
        for out in ("y.npy", "y2.npy"):
            got = np.load(os.path.join(tmp, out))
            if got.shape != ref.shape or not np.allclose(got, ref, T.RTOL, T.ATOL):
                return "%s differs from onnxruntime" % out
        want = "big.npy: error: element 3 (2147483648) does not fit the int32 input"
        for args in (["infer", "m.onnx", "--data", "ids=big.npy", "--out", "y=y.npy"],
                     ["run", "plan", "--data", "ids=big.npy", "--out", "y=y3.npy"]):
            r = T.autodist(args, tmp)
            if r.returncode != 2 or want not in r.stderr:
                return "%s with big.npy: exit %d, %s" % (args[0], r.returncode, r.stderr.strip())
    return None


def _table_onnx(w, opset, ids_type=TensorProto.INT64):
    node = helper.make_node("Gather", ["w", "ids"], ["y"], name="n0")
    graph = helper.make_graph([node], "table",
                              [helper.make_tensor_value_info("ids", ids_type, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def main():
    verbose = "-v" in sys.argv
    pattern = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else ""
    if not os.path.exists(T.AUTODIST):
        print("test_index_ops: %s not found (set AUTODIST)" % T.AUTODIST)
        return 1
    failed = ran = 0

    def report(name, msg):
        nonlocal failed, ran
        ran += 1
        if msg:
            failed += 1
            print("FAIL %s: %s" % (name, msg))
        elif verbose:
            print("ok   %s" % name)

    for c in cases():
        if pattern in c.name:
            report(c.name, T.check_infer(c, verbose))
    for c, expect in error_cases():
        if pattern in c.name:
            report(c.name, T.check_error(c, expect, verbose))
    for c in grad_cases():
        if pattern in c.name:
            report(c.name, T.check_grad(c, verbose))
    for opset in (11, 13, 17):
        name = "grad_table_op%d" % opset
        if pattern in name:
            report(name, check_table_grad(opset, verbose))
    if pattern in "fed_int32":
        report("fed_int32", check_fed_int32(verbose))
    print("test_index_ops: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
