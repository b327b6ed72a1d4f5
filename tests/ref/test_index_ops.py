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

Losses (inference): NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss,
which pick scores at target indices, at opsets 12 and 13 on 2-D [N, C] and
4-D [N, C, d1, d2] scores: each reduction, with and without a weight,
ignore_index (also a batch whose targets are all ignored: a mean of 0 / 0, NaN
in PyTorch and onnxruntime alike), int64 and int32 targets, the log_prob
output, float64 and float16 data. Each is compared with PyTorch
(F.nll_loss / F.cross_entropy, F.log_softmax) and with onnxruntime, rtol 1e-5,
atol 1e-6 (float16: one rounding, rtol 1e-3). A fed target out of range gives
NaN at its element (the kernels' data error, as Gather's), a constant one and
an unlisted dtype (int32, bfloat16) are refused with exit 2
naming the node, and training through the losses is refused at compile time.

Run: AUTODIST=build/autodist /usr/bin/python3 tests/ref/test_index_ops.py [-k SUBSTRING] [-v]
"""
import functools
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


# ---- losses ----

LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
LOSSES = {"nll": "NegativeLogLikelihoodLoss", "sce": "SoftmaxCrossEntropyLoss"}


class LossCase:
    """One NLL or SCE node: scores x and targets t fed (axis 0 the batch "N"),
    the weight (when given) an initializer; outputs y (the loss) and, with
    log_prob, lp."""

    def __init__(self, name, kind, opset, x, t, w=None, reduction=None, ii=None, log_prob=False,
                 const_target=False, batch=True):
        self.name, self.kind, self.opset = name, kind, opset
        self.batch = batch  # axis 0 of the fed inputs symbolic ("N")
        self.op = LOSSES[kind]
        self.x, self.t, self.w = x, t, w
        self.reduction, self.ii, self.log_prob = reduction, ii, log_prob
        self.const_target = const_target

    def model(self):
        def dim0(a):
            return (["N"] if self.batch else [a.shape[0]]) + list(a.shape[1:])
        ins = [helper.make_tensor_value_info("x", T.mapping.NP_TYPE_TO_TENSOR_TYPE[self.x.dtype],
                                             dim0(self.x))]
        inits = []
        if self.const_target:
            inits.append(numpy_helper.from_array(self.t, "t"))
        else:
            ins.append(helper.make_tensor_value_info(
                "t", T.mapping.NP_TYPE_TO_TENSOR_TYPE[self.t.dtype], dim0(self.t)))
        names = ["x", "t"]
        if self.w is not None:
            inits.append(numpy_helper.from_array(self.w, "w"))
            names.append("w")
        attrs = {}
        if self.reduction is not None:
            attrs["reduction"] = self.reduction
        if self.ii is not None:
            attrs["ignore_index"] = self.ii
        outs = ["y", "lp"] if self.log_prob else ["y"]
        node = helper.make_node(self.op, names, outs, name="n0", **attrs)
        graph = helper.make_graph([node], self.name, ins,
                                  [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                                  inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m

    def feeds(self):
        return {"x": self.x} if self.const_target else {"x": self.x, "t": self.t}

    def torch_ref(self):
        """PyTorch's outputs, computed in float64 and rounded to the data's dtype."""
        torch = T._torch()
        F = torch.nn.functional
        x = torch.tensor(self.x.astype(np.float64))
        t = torch.tensor(self.t.astype(np.int64))
        w = None if self.w is None else torch.tensor(self.w.astype(np.float64))
        ii = -100 if self.ii is None else self.ii
        red = self.reduction or "mean"
        lp = F.log_softmax(x, dim=1)
        y = F.nll_loss(lp if self.kind == "sce" else x, t, weight=w, ignore_index=ii,
                       reduction=red)
        if self.kind == "sce":  # the same through cross_entropy
            y2 = F.cross_entropy(x, t, weight=w, ignore_index=ii, reduction=red)
            assert np.allclose(y.numpy(), y2.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
        outs = [y.numpy().astype(self.x.dtype)]
        if self.log_prob:
            outs.append(lp.numpy().astype(self.x.dtype))
        return outs


def _close(got, want, dt):
    rtol, atol = (1e-3, 1e-3) if dt == np.float16 else (LOSS_RTOL, LOSS_ATOL)
    return (got.shape == want.shape and got.dtype == want.dtype and
            bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                             atol=atol, equal_nan=True)))


def infer_args(case, tmp):
    """(model path, `autodist infer` arguments with the feeds) of case,
    written to tmp."""
    path = os.path.join(tmp, "model.onnx")
    onnx.save(case.model(), path)
    args = ["infer", path]
    for k, v in case.feeds().items():
        np.save(os.path.join(tmp, k + ".npy"), v)
        args += ["--data", "%s=%s.npy" % (k, os.path.join(tmp, k))]
    return path, args


def check_loss(case, verbose):
    """autodist infer against PyTorch and onnxruntime, every output."""
    want = case.torch_ref()
    ort_outs = T.ort_run(case.model(), case.feeds())
    for i, (o, w) in enumerate(zip(ort_outs, want)):
        if not _close(o, w, case.x.dtype):
            return "PyTorch and onnxruntime disagree on output %d (test bug)" % i
    with tempfile.TemporaryDirectory() as tmp:
        _, args = infer_args(case, tmp)
        outs = ["y", "lp"][:len(want)]
        for o in outs:
            args += ["--out", "%s=%s.npy" % (o, os.path.join(tmp, "out_" + o))]
        r = T.autodist(args, tmp)
        if r.returncode != 0:
            return "autodist infer failed (%d): %s" % (r.returncode, r.stderr.strip())
        got = [np.load(os.path.join(tmp, "out_%s.npy" % o)) for o in outs]
    for o, g, w in zip(outs, got, want):
        if not _close(g, w, case.x.dtype):
            if g.shape != w.shape or g.dtype != w.dtype:
                return "%s: %s %s, expected %s %s" % (o, g.dtype, g.shape, w.dtype, w.shape)
            return "%s: max abs error %g (ref %s)" % (o, np.nanmax(np.abs(g - w)), w.ravel()[:4])
    return None


def loss_cases():
    out = []
    for opset in (12, 13):
        for dt in (np.int64, np.int32):
            tag = "%s_op%d" % ("i64" if dt == np.int64 else "i32", opset)
            x2, t2 = rand(6, 5), np.array([0, 4, 2, 2, 1, 3], dt)
            x4 = rand(3, 4, 2, 3)
            t4 = rng.integers(0, 4, (3, 2, 3)).astype(dt)
            w5, w4 = rng.uniform(0.2, 2, 5).astype(np.float32), \
                rng.uniform(0.2, 2, 4).astype(np.float32)
            for kind in ("nll", "sce"):
                # NLL takes log-probabilities; any scores will do for the formula.
                for red in (None, "mean", "sum", "none"):
                    r = red or "default"
                    out.append(LossCase("%s_2d_%s_%s" % (kind, r, tag), kind, opset, x2, t2,
                                        reduction=red, log_prob=kind == "sce"))
                    out.append(LossCase("%s_2d_%s_w_%s" % (kind, r, tag), kind, opset, x2, t2,
                                        w5, reduction=red))
                    out.append(LossCase("%s_4d_%s_%s" % (kind, r, tag), kind, opset, x4, t4,
                                        reduction=red, log_prob=kind == "sce"))
                    out.append(LossCase("%s_4d_%s_w_%s" % (kind, r, tag), kind, opset, x4, t4,
                                        w4, reduction=red, log_prob=kind == "sce"))
                    # ignore_index inside [0, C), and a negative one
                    out.append(LossCase("%s_2d_%s_w_ii2_%s" % (kind, r, tag), kind, opset, x2,
                                        t2, w5, reduction=red, ii=2))
                    t4n = t4.copy()
                    t4n[0, 1, :] = -1
                    out.append(LossCase("%s_4d_%s_ii-1_%s" % (kind, r, tag), kind, opset, x4,
                                        t4n, reduction=red, ii=-1, log_prob=kind == "sce"))
                    # every target ignored: mean is 0 / 0 = NaN
                    out.append(LossCase("%s_2d_%s_all_ignored_%s" % (kind, r, tag), kind, opset,
                                        x2, np.full(6, 3, dt), w5, reduction=red, ii=3))
    for dtype in (np.float64, np.float16):
        name = np.dtype(dtype).name
        x4 = rand(3, 4, 2, 3).astype(dtype)
        t4 = rng.integers(0, 4, (3, 2, 3))
        t4[1, 0, 0] = 2
        w4 = rng.uniform(0.2, 2, 4).astype(dtype)
        for kind in ("nll", "sce"):
            for red in ("mean", "sum", "none"):
                out.append(LossCase("%s_4d_%s_w_ii2_%s" % (kind, red, name), kind, 13, x4, t4, w4,
                                    reduction=red, ii=2, log_prob=kind == "sce"))
    return out


def check_loss_bad_fed_target(kind, verbose):
    """A fed target outside [0, C) that is not ignore_index: NaN at its
    element (reduction none), NaN mean; the others as PyTorch."""
    x = rand(4, 3)
    good = np.array([0, 2, 1, 1], np.int64)
    for bad in (3, -2):
        t = good.copy()
        t[1] = bad
        for red in ("none", "mean"):
            c = LossCase("bad", kind, 13, x, t, reduction=red, ii=-1)
            ok = LossCase("ok", kind, 13, x, good, reduction="none").torch_ref()[0]
            want = ok.copy() if red == "none" else np.array(np.nan, np.float32)
            if red == "none":
                want[1] = np.nan
            with tempfile.TemporaryDirectory() as tmp:
                _, args = infer_args(c, tmp)
                r = T.autodist(args + ["--out", "y=y.npy"], tmp)
                if r.returncode != 0:
                    return "target %d: exit %d: %s" % (bad, r.returncode, r.stderr.strip())
                got = np.load(os.path.join(tmp, "y.npy"))
            if not _close(got, want, np.float32):
                return "target %d, %s: got %s, expected %s" % (bad, red, got, want)
    return None


def loss_error_cases():
    x = rand(4, 3)
    t = np.array([0, 2, 1, 1], np.int64)
    tb = np.array([0, 3, 1, -1], np.int64)
    out = []
    case = functools.partial(LossCase, batch=False)  # fixed shapes: the messages show them
    for kind, op in LOSSES.items():
        out += [
            (case("%s_const_target_range" % kind, kind, 13, x, tb, const_target=True, ii=-1),
             "target 3 is out of range for 3 classes (and is not ignore_index)"),
            (case("%s_int32_data" % kind, kind, 13, (x * 4).astype(np.int32), t),
             "input 0 ('x') is int32; %s supports float32, float64, float16" % op),
            (case("%s_bad_reduction" % kind, kind, 13, x, t, reduction="avg"),
             "reduction 'avg' is not one of none, sum, mean"),
            (case("%s_weight_dtype" % kind, kind, 13, x, t, np.ones(3, np.float64)),
             "weight 'w' is float64 [3]; it must be float32 [3]"),
            (case("%s_target_shape" % kind, kind, 13, rand(4, 3, 2), t),
             "target [4] does not fit input [4, 3, 2] (want [N, d1, ...])"),
        ]
    return out


def check_loss_error(case, expect, verbose):
    with tempfile.TemporaryDirectory() as tmp:
        path, args = infer_args(case, tmp)
        r = T.autodist(args + ["--out", "y=%s" % os.path.join(tmp, "y.npy")], tmp)
    want = "%s: node 'n0' (%s): error: %s" % (path, case.op, expect)
    if r.returncode != 2 or want not in r.stderr:
        return "exit %d, stderr %r; expected exit 2 and %r" % (r.returncode, r.stderr.strip(),
                                                               want)
    return None


def check_loss_bfloat16(verbose):
    """bfloat16 scores (not listed; an initializer, since numpy has no
    bfloat16 to feed) are refused at compile time."""
    x = helper.make_tensor("x", TensorProto.BFLOAT16, [2, 3], [1.0, 2.0, 0.5, -1.0, 0.0, 3.0])
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y"], name="n0")
    graph = helper.make_graph([node], "bf16",
                              [helper.make_tensor_value_info("t", TensorProto.INT64, [2])],
                              [helper.make_value_info("y", onnx.TypeProto())], [x])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(m, path)
        np.save(os.path.join(tmp, "t.npy"), np.array([0, 2], np.int64))
        r = T.autodist(["infer", path, "--data", "t=t.npy", "--out", "y=y.npy"], tmp)
    want = "%s: node 'n0' (SoftmaxCrossEntropyLoss): error: input 0 ('x') is bfloat16" % path
    if r.returncode != 2 or want not in r.stderr:
        return "exit %d, stderr %r; expected exit 2 and %r" % (r.returncode, r.stderr.strip(),
                                                               want)
    return None


def check_loss_no_training(verbose):
    """Training through the loss (loss: output) is refused at compile time."""
    node0 = helper.make_node("MatMul", ["x", "W"], ["s"], name="fc")
    node1 = helper.make_node("SoftmaxCrossEntropyLoss", ["s", "t"], ["loss"], name="n0")
    graph = helper.make_graph(
        [node0, node1], "train",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("t", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(rand(4, 3), "W")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(m, os.path.join(tmp, "m.onnx"))
        with open(os.path.join(tmp, "train.yml"), "w") as f:
            f.write("loss: output\nbatch_size: 4\noptimizer: {name: sgd, lr: 0.1}\n")
        r = T.autodist(["compile", "m.onnx", "-t", "train.yml", "-o", "plan"], tmp)
    want = "node 'n0' (SoftmaxCrossEntropyLoss): error: cannot train through this op"
    if r.returncode != 2 or want not in r.stderr:
        return "exit %d, stderr %r; expected exit 2 and %r" % (r.returncode, r.stderr.strip(),
                                                               want)
    return None


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
    for c in loss_cases():
        if pattern in c.name:
            report(c.name, check_loss(c, verbose))
    for kind in LOSSES:
        name = "%s_bad_fed_target" % kind
        if pattern in name:
            report(name, check_loss_bad_fed_target(kind, verbose))
    for c, expect in loss_error_cases():
        if pattern in c.name:
            report(c.name, check_loss_error(c, expect, verbose))
    if pattern in "sce_bfloat16":
        report("sce_bfloat16", check_loss_bfloat16(verbose))
    if pattern in "sce_no_training":
        report("sce_no_training", check_loss_no_training(verbose))
    print("test_index_ops: %d/%d passed" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
