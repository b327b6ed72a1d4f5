#!/usr/bin/env python3
"""tests/ref/test_infer_vs_ort.py: `autodist infer` against onnxruntime and
PyTorch.

1. The small models of models.py (and the full MLP/CNN on a few samples): the
   output of `autodist infer` must match onnxruntime and the PyTorch module.
2. One single-op model per op and attribute combination in autodist's scope,
   built with onnx.helper, at opsets 11 and 13, and 17 for the ops whose
   definition changed after 13 (Add/Sub/Mul/Div, Relu, Reshape, Identity took
   new versions in 14/16): the output must match onnxruntime.
Tolerance: |got - ref| <= 1e-5 + 1e-4 |ref| per element.

Env: AUTODIST (binary), AD_SRC (repository root). Run: /usr/bin/python3 THIS.
"""
import os
import shutil
import sys

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402

RTOL = 1e-4
ATOL = 1e-5
# Ops whose ONNX definition got a new version after opset 13 and up to 17.
CHANGED_AFTER_13 = {"Add", "Sub", "Mul", "Div", "Relu", "Reshape", "Identity"}

rng = np.random.default_rng(42)


def rand(*shape):
  return rng.standard_normal(shape).astype(np.float32)


def nonzero(*shape):
  """Divisors: magnitude in [0.5, 2), random sign."""
  v = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
  return v.astype(np.float32)


class Case:
  """One single-op model: `inputs` are graph inputs (name -> array, fed with
  --data), `inits` initializers (name -> array, any dtype), `node` the node
  (inputs/outputs by name) and `out` the output name (output "y")."""

  def __init__(self, tag, op, inputs, attrs=None, inits=None, node_inputs=None, opsets=(11, 13),
               extra_nodes=()):
    self.tag = tag
    self.op = op
    self.inputs = inputs
    self.inits = inits or {}
    self.attrs = attrs or {}
    self.node_inputs = node_inputs if node_inputs is not None else list(inputs) + list(self.inits)
    self.extra_nodes = list(extra_nodes)
    self.opsets = list(opsets)
    if op in CHANGED_AFTER_13 and 17 not in self.opsets:
      self.opsets.append(17)

  def model(self, opset, out_shape=None):
    """The model at `opset`. The output's shape is left open unless given (the
    checker wants one: the caller learns it from onnxruntime first)."""
    node = helper.make_node(self.op, self.node_inputs, ["y"], name="n0", **self.attrs)
    graph = helper.make_graph(
        self.extra_nodes + [node], "g_" + self.tag,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
         for k, v in self.inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="autodist-tests")
    m.ir_version = 7
    if out_shape is not None:
      onnx.checker.check_model(m, full_check=True)
    return m


def op_cases():
  c = []
  # Gemm: Y = alpha * A' B' + beta * C, C broadcast.
  a, b = rand(4, 6), rand(6, 5)
  c.append(Case("gemm_bias_vec", "Gemm", {"x": a}, inits={"B": b, "C": rand(5)}))
  c.append(Case("gemm_transA", "Gemm", {"x": rand(6, 4)}, {"transA": 1},
                inits={"B": b, "C": rand(5)}))
  c.append(Case("gemm_transB_alpha_beta", "Gemm", {"x": a},
                {"transB": 1, "alpha": 0.5, "beta": 2.0},
                inits={"B": rand(5, 6), "C": rand(4, 5)}))
  c.append(Case("gemm_transAB_C_col", "Gemm", {"x": rand(6, 4)}, {"transA": 1, "transB": 1},
                inits={"B": rand(5, 6), "C": rand(4, 1)}))
  c.append(Case("gemm_C_scalar", "Gemm", {"x": a}, {"beta": 0.25}, inits={"B": b, "C": rand(1)}))
  c.append(Case("gemm_no_C", "Gemm", {"x": a}, {"alpha": 3.0}, inits={"B": b}))
  c.append(Case("gemm_two_inputs", "Gemm", {"x": a, "w": b}, {"transA": 0},
                inits={"C": rand(1, 5)}))
  # MatMul with numpy broadcasting of the batch dims.
  c.append(Case("matmul_2d", "MatMul", {"x": rand(3, 4)}, inits={"W": rand(4, 5)}))
  c.append(Case("matmul_3d_2d", "MatMul", {"x": rand(2, 3, 4)}, inits={"W": rand(4, 5)}))
  c.append(Case("matmul_batched", "MatMul", {"x": rand(2, 3, 4), "w": rand(2, 4, 5)}))
  c.append(Case("matmul_broadcast", "MatMul", {"x": rand(2, 1, 3, 4), "w": rand(3, 4, 5)}))
  # Elementwise binary ops with broadcasting.
  for op in ["Add", "Sub", "Mul", "Div"]:
    y = nonzero if op == "Div" else rand
    lo = op.lower()
    c.append(Case(lo + "_same", op, {"x": rand(2, 3, 4), "z": y(2, 3, 4)}))
    c.append(Case(lo + "_bcast_last", op, {"x": rand(2, 3, 4)}, inits={"b": y(4)}))
    c.append(Case(lo + "_bcast_mid", op, {"x": rand(2, 3, 4)}, inits={"b": y(3, 1)}))
    c.append(Case(lo + "_bcast_both", op, {"x": rand(2, 1, 4), "z": y(1, 3, 1)}))
    c.append(Case(lo + "_scalar_first", op, {"x": y(2, 3)}, inits={"s": rand()},
                  node_inputs=["s", "x"]))
  # Unary activations (inputs span both signs and the saturating range).
  for op in ["Relu", "Sigmoid", "Tanh"]:
    c.append(Case(op.lower(), op, {"x": rand(2, 3, 4) * 4.0}))
  # Softmax / LogSoftmax: axis semantics differ between 11 (flatten to 2-D at
  # axis) and 13 (one axis); the default axis differs too (1 vs -1).
  for op in ["Softmax", "LogSoftmax"]:
    lo = op.lower()
    c.append(Case(lo + "_default_2d", op, {"x": rand(3, 5) * 3.0}))
    c.append(Case(lo + "_default_3d", op, {"x": rand(2, 3, 4) * 3.0}))
    for ax in [0, 1, -1]:
      c.append(Case("%s_axis%d" % (lo, ax), op, {"x": rand(2, 3, 4) * 3.0}, {"axis": ax}))
  # Conv.
  c.append(Case("conv_basic", "Conv", {"x": rand(2, 3, 7, 7)},
                inits={"W": rand(4, 3, 3, 3), "B": rand(4)}))
  c.append(Case("conv_kernel_shape_no_bias", "Conv", {"x": rand(1, 3, 7, 7)},
                {"kernel_shape": [3, 3]}, inits={"W": rand(4, 3, 3, 3)}))
  c.append(Case("conv_strides", "Conv", {"x": rand(1, 3, 8, 9)}, {"strides": [2, 3]},
                inits={"W": rand(4, 3, 3, 3), "B": rand(4)}))
  c.append(Case("conv_pads_asym", "Conv", {"x": rand(1, 3, 6, 6)}, {"pads": [1, 0, 2, 1]},
                inits={"W": rand(5, 3, 3, 3), "B": rand(5)}))
  c.append(Case("conv_dilations", "Conv", {"x": rand(1, 2, 9, 9)},
                {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
                inits={"W": rand(3, 2, 3, 3), "B": rand(3)}))
  c.append(Case("conv_groups", "Conv", {"x": rand(2, 4, 6, 6)}, {"group": 2, "pads": [1, 1, 1, 1]},
                inits={"W": rand(6, 2, 3, 3), "B": rand(6)}))
  c.append(Case("conv_depthwise", "Conv", {"x": rand(1, 4, 6, 6)}, {"group": 4},
                inits={"W": rand(4, 1, 3, 3), "B": rand(4)}))
  c.append(Case("conv_1x1", "Conv", {"x": rand(2, 5, 4, 4)}, inits={"W": rand(3, 5, 1, 1)}))
  c.append(Case("conv_rect_kernel_all", "Conv", {"x": rand(1, 2, 10, 9)},
                {"kernel_shape": [2, 3], "strides": [2, 1], "pads": [0, 1, 1, 0],
                 "dilations": [1, 2]},
                inits={"W": rand(4, 2, 2, 3), "B": rand(4)}))
  # Pools.
  c.append(Case("maxpool_2x2", "MaxPool", {"x": rand(2, 3, 6, 6)},
                {"kernel_shape": [2, 2], "strides": [2, 2]}))
  c.append(Case("maxpool_floor", "MaxPool", {"x": rand(1, 2, 5, 7)},
                {"kernel_shape": [2, 2], "strides": [2, 2]}))
  c.append(Case("maxpool_pads", "MaxPool", {"x": rand(1, 2, 7, 7)},
                {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}))
  c.append(Case("maxpool_rect_asym", "MaxPool", {"x": rand(1, 2, 6, 8)},
                {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1]}))
  c.append(Case("maxpool_default_stride", "MaxPool", {"x": rand(1, 2, 5, 5)},
                {"kernel_shape": [2, 2]}))
  c.append(Case("avgpool_2x2", "AveragePool", {"x": rand(2, 3, 6, 6)},
                {"kernel_shape": [2, 2], "strides": [2, 2]}))
  c.append(Case("avgpool_pads_exclude", "AveragePool", {"x": rand(1, 2, 5, 5)},
                {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}))
  c.append(Case("avgpool_pads_include", "AveragePool", {"x": rand(1, 2, 5, 5)},
                {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                 "count_include_pad": 1}))
  c.append(Case("avgpool_rect_asym", "AveragePool", {"x": rand(1, 2, 6, 7)},
                {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}))
  c.append(Case("globalavgpool", "GlobalAveragePool", {"x": rand(2, 3, 5, 4)}))
  # Shape ops.
  for ax in [0, 1, 2, 4, -1]:
    c.append(Case("flatten_axis%d" % ax, "Flatten", {"x": rand(2, 3, 4, 5)}, {"axis": ax}))
  c.append(Case("flatten_default", "Flatten", {"x": rand(2, 3, 4)}))
  for i, shape in enumerate([[-1, 4], [0, -1], [-1], [4, 0, 2], [0, 0, 2, 2], [2, 12]]):
    c.append(Case("reshape_%d" % i, "Reshape", {"x": rand(2, 3, 4)},
                  inits={"shape": np.array(shape, dtype=np.int64)}))
  c.append(Case("transpose_2d", "Transpose", {"x": rand(3, 4)}, {"perm": [1, 0]}))
  c.append(Case("transpose_nchw_nhwc", "Transpose", {"x": rand(2, 3, 4, 5)},
                {"perm": [0, 2, 3, 1]}))
  c.append(Case("transpose_3d", "Transpose", {"x": rand(2, 3, 4)}, {"perm": [2, 0, 1]}))
  c.append(Case("transpose_default", "Transpose", {"x": rand(2, 3, 4)}))
  # Pad (constant mode; pads and the value are inputs since opset 11).
  c.append(Case("pad_constant_value", "Pad", {"x": rand(1, 2, 3, 4)},
                inits={"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64),
                       "value": np.array(0.5, dtype=np.float32)}, attrs={"mode": "constant"}))
  c.append(Case("pad_default_zero", "Pad", {"x": rand(2, 3)},
                inits={"pads": np.array([1, 0, 0, 3], dtype=np.int64)}))
  # Constant, Identity, Dropout (inference: the identity).
  cval = rand(3, 4)
  c.append(Case("constant_add", "Add", {"x": rand(2, 3, 4)}, node_inputs=["x", "k"],
                extra_nodes=[helper.make_node("Constant", [], ["k"], name="c0",
                                              value=numpy_helper.from_array(cval, "k"))]))
  c.append(Case("identity", "Identity", {"x": rand(2, 3)}))
  c.append(Case("dropout_inference", "Dropout", {"x": rand(4, 5)}))
  return c


def infer(ck, autodist, d, tag, model_path, feeds, outputs):
  """Runs `autodist infer`; returns name -> array, or None (a failed check)."""
  cmd = [autodist, "infer", model_path]
  for k, v in feeds.items():
    p = os.path.join(d, "in_%s.npy" % k)
    np.save(p, v)
    cmd += ["--data", "%s=%s" % (k, p)]
  outs = {k: os.path.join(d, "out_%s.npy" % k) for k in outputs}
  for k, p in outs.items():
    cmd += ["--out", "%s=%s" % (k, p)]
  if not common.run_checked(ck, tag + ": autodist infer", cmd, cwd=d, timeout=120):
    return None
  try:
    return {k: np.load(p) for k, p in outs.items()}
  except OSError as e:
    ck.check(tag + ": output written", False, str(e))
    return None


def main():
  ck = common.Checks()
  work = common.tmpdir("infer-vs-ort")
  autodist = common.autodist_path()
  have = ck.check("autodist binary exists", os.access(autodist, os.X_OK), autodist)

  # 1. Models: autodist vs onnxruntime vs PyTorch.
  for name, n in [("mlp_small", 7), ("cnn_small", 5), ("mlp_mse", 4), ("digits_mlp", 6),
                  ("mlp", 3), ("cnn", 3)]:
    path = os.path.join(work, name + ".onnx")
    m, _ = models.export(name, path)
    x, _ = common.random_data(models.sample_shape(name), n, "classes", seed=5)
    with torch.no_grad():
      want_pt = m(torch.from_numpy(x)).numpy()
    want = common.ort_run(path, {"input": x})["logits"]
    common.check_allclose(ck, "%s: onnxruntime == PyTorch" % name, want, want_pt, RTOL, ATOL)
    if not have:
      continue
    got = infer(ck, autodist, work, name, path, {"input": x}, ["logits"])
    if got is not None:
      g = got["logits"]
      ck.check(name + ": output dtype float32", g.dtype == np.float32, str(g.dtype))
      common.check_allclose(ck, name + ": autodist == onnxruntime", g, want, RTOL, ATOL)
      common.check_allclose(ck, name + ": autodist == PyTorch", g, want_pt, RTOL, ATOL)

  # 2. Single-op models.
  for case in op_cases():
    for opset in case.opsets:
      tag = "%s (%s, opset %d)" % (case.tag, case.op, opset)
      path = os.path.join(work, "%s_op%d.onnx" % (case.tag, opset))
      try:
        onnx.save(case.model(opset), path)
        want = common.ort_run(path, case.inputs)["y"]
        onnx.save(case.model(opset, list(want.shape)), path)
      except Exception as e:  # noqa: BLE001 - a model ORT or the checker rejects is a bug here
        ck.check(tag + ": valid model", False, str(e).splitlines()[0])
        continue
      if not have:
        continue
      got = infer(ck, autodist, work, tag, path, case.inputs, ["y"])
      if got is not None:
        common.check_allclose(ck, tag + ": autodist == onnxruntime", got["y"], want, RTOL, ATOL)

  if ck.failed == 0:
    shutil.rmtree(work, ignore_errors=True)
  else:
    print("work files kept in %s" % work)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
