#!/usr/bin/env python3
"""tests/ref/test_norm_ops.py: normalization, reduction and pooling ops against
outside references.

- Forward: one-node ONNX models (BatchNormalization in inference and ONNX
  training mode, LayerNormalization with its Mean/InvStdDev outputs,
  InstanceNormalization, MeanVarianceNormalization, LRN, the Reduce* family,
  Hardmax, MaxPool / AveragePool / GlobalMaxPool / LpPool variants) run by
  `autodist infer` and by onnxruntime; allclose rtol 1e-4, atol 1e-5.
- Int64 outputs (ArgMax / ArgMin with ties and select_last_index, MaxPool's
  Indices in both storage orders) the same way, compared exactly.
- Gradients: a model out = OP(input + P) trained one SGD step (lr 1, loss mse)
  moves P (and the op's own parameters) by minus their gradient; PyTorch
  autograd computes the same gradients (rtol 1e-4 on the updated values).
- BatchNormalization training: a Conv+BN+ReLU+Linear model exported from
  PyTorch in eval mode (TrainingMode.PRESERVE: TrainingMode.EVAL would fold the
  BN into the Conv), trained 10 steps by autodist and by PyTorch in
  model.train(): per-step loss within 1e-4 relative, saved weights and running
  statistics within 1e-4 relative (to the tensor's scale); the same on 2 and 4
  replicas (the batch statistics are the global batch's: synchronized batch norm).

    AUTODIST=build/autodist AD_SRC=. /usr/bin/python3 tests/ref/test_norm_ops.py
"""
import copy
import os
import shutil
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

RNG = np.random.default_rng(7)


def rand(*shape, lo=-1.0, hi=1.0):
  return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def one_node_model(path, op, inputs, n_out, attrs, opset, inits=None, out_types=None):
  """Saves a model with one `op` node; inputs: list of (name, array) fed as
  graph inputs; inits: (name, array) initializers. Returns output names."""
  inits = inits or []
  outs = ["y%d" % i for i in range(n_out)]
  node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in inits], outs, **attrs)
  g = helper.make_graph(
      [node], "t",
      [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs],
      [helper.make_tensor_value_info(o, (out_types or {}).get(o, TensorProto.FLOAT), None)
       for o in outs],
      [numpy_helper.from_array(a, n) for n, a in inits])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
  m.ir_version = 8
  onnx.save(m, path)
  return outs


def infer_vs_ort(ck, autodist, work, name, op, inputs, attrs, opset, n_out=1, inits=None,
                 out_types=None):
  d = os.path.join(work, name)
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, "model.onnx")
  outs = one_node_model(path, op, inputs, n_out, attrs, opset, inits, out_types)
  try:
    want = common.ort_run(path, {n: a for n, a in inputs})
  except Exception as e:  # noqa: BLE001 - the reference must run
    return ck.check(name + ": onnxruntime runs", False, str(e).splitlines()[0])
  cmd = [autodist, "infer", path]
  for n, a in inputs:
    np.save(os.path.join(d, n + ".npy"), a)
    cmd += ["--data", "%s=%s" % (n, os.path.join(d, n + ".npy"))]
  for o in outs:
    cmd += ["--out", "%s=%s" % (o, os.path.join(d, o + ".out.npy"))]
  if not common.run_checked(ck, name + ": autodist infer", cmd, timeout=120):
    return False
  ok = True
  for o in outs:
    ok &= common.check_allclose(ck, "%s: %s vs onnxruntime" % (name, o),
                                np.load(os.path.join(d, o + ".out.npy")), want[o])
  return ok


def forward_cases(ck, autodist, work):
  x4 = rand(2, 3, 5, 4)
  c = 3
  stats = [("scale", rand(c, lo=0.5, hi=1.5)), ("bias", rand(c)), ("mean", rand(c)),
           ("var", rand(c, lo=0.5, hi=2.0))]
  for opset in (13, 15):
    infer_vs_ort(ck, autodist, work, "bn_infer_opset%d" % opset, "BatchNormalization",
                 [("x", x4)] + stats, {"epsilon": 1e-3}, opset)
  infer_vs_ort(ck, autodist, work, "bn_training_mode", "BatchNormalization", [("x", x4)] + stats,
               {"epsilon": 1e-5, "momentum": 0.8, "training_mode": 1}, 15, n_out=3)
  infer_vs_ort(ck, autodist, work, "bn_2d_input", "BatchNormalization", [("x", rand(4, 3))] + stats,
               {}, 15)
  x3 = rand(2, 4, 6)
  for axis in (-1, 1, 0):
    shape = x3.shape[axis % 3:]
    infer_vs_ort(ck, autodist, work, "layernorm_axis%d" % axis, "LayerNormalization",
                 [("x", x3), ("s", rand(*shape)), ("b", rand(*shape))],
                 {"axis": axis, "epsilon": 1e-4}, 17, n_out=3)
  infer_vs_ort(ck, autodist, work, "layernorm_no_bias", "LayerNormalization",
               [("x", x3), ("s", rand(6))], {}, 17)
  infer_vs_ort(ck, autodist, work, "instancenorm", "InstanceNormalization",
               [("x", x4), ("s", rand(3)), ("b", rand(3))], {"epsilon": 1e-3}, 13)
  infer_vs_ort(ck, autodist, work, "mvn_default", "MeanVarianceNormalization", [("x", x4)], {}, 13)
  infer_vs_ort(ck, autodist, work, "mvn_axes", "MeanVarianceNormalization", [("x", x4)],
               {"axes": [1, 3]}, 13)
  infer_vs_ort(ck, autodist, work, "lrn", "LRN", [("x", rand(2, 6, 3, 3))],
               {"size": 3, "alpha": 1e-2, "beta": 0.6, "bias": 2.0}, 13)
  infer_vs_ort(ck, autodist, work, "lrn_size5", "LRN", [("x", rand(2, 6, 3, 3))], {"size": 5}, 13)

  xr = rand(3, 4, 5, lo=0.2, hi=1.5)
  for op in ("ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
             "ReduceLogSumExp", "ReduceSumSquare", "ReduceMean"):
    for axes, keep in (([1], 1), ([0, 2], 0), ([-1], 0), (None, 1)):
      attrs = {"keepdims": keep}
      if axes is not None:
        attrs["axes"] = axes
      infer_vs_ort(ck, autodist, work, "%s_%s_k%d" % (op, axes, keep), op, [("x", xr)], attrs, 13)
  for opset in (11, 13):
    for axis in (0, 1, -1):
      infer_vs_ort(ck, autodist, work, "hardmax_o%d_a%d" % (opset, axis), "Hardmax",
                   [("x", rand(2, 3, 4))], {"axis": axis}, opset)

  xp = rand(2, 3, 9, 8)
  pools = [
      ("maxpool_ceil", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
      ("maxpool_dil", "MaxPool", {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 0, 1, 2]}),
      ("maxpool_same_upper", "MaxPool", {"kernel_shape": [3, 2], "strides": [2, 3],
                                         "auto_pad": "SAME_UPPER"}),
      ("maxpool_same_lower", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2],
                                         "auto_pad": "SAME_LOWER"}),
      ("avgpool_include_pad", "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                              "count_include_pad": 1}),
      ("avgpool_exclude_pad_ceil", "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2],
                                                   "pads": [1, 1, 1, 1], "ceil_mode": 1}),
      ("globalmaxpool", "GlobalMaxPool", {}),
      ("lppool_p2", "LpPool", {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [1, 0, 0, 1]}),
      ("lppool_p3", "LpPool", {"kernel_shape": [3, 3], "p": 3}),
  ]
  for name, op, attrs in pools:
    infer_vs_ort(ck, autodist, work, name, op, [("x", xp)], attrs, 13)
  infer_vs_ort(ck, autodist, work, "maxpool_1d", "MaxPool", [("x", rand(2, 3, 11))],
               {"kernel_shape": [3], "strides": [2], "ceil_mode": 1}, 13)


# ---------------------------------------------------------------- int64 outputs

def int64_cases(ck, autodist, work):
  """ArgMax / ArgMin (with many ties, for select_last_index) and MaxPool's Indices."""
  x = RNG.integers(0, 4, size=(3, 5, 4)).astype(np.float32)
  i64 = {"y0": TensorProto.INT64}
  for op in ("ArgMax", "ArgMin"):
    for axis in (0, 1, -1):
      for keep in (0, 1):
        for last in (0, 1):
          infer_vs_ort(ck, autodist, work, "%s_a%d_k%d_l%d" % (op, axis, keep, last), op,
                       [("x", x)], {"axis": axis, "keepdims": keep, "select_last_index": last},
                       13, out_types=i64)
  xp = rand(2, 3, 7, 6)
  for order in (0, 1):
    infer_vs_ort(ck, autodist, work, "maxpool_indices_order%d" % order, "MaxPool", [("x", xp)],
                 {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1],
                  "storage_order": order}, 13, n_out=2, out_types={"y1": TensorProto.INT64})


# ---------------------------------------------------------------- gradients

def train_one_step(ck, autodist, d, model_path, x, label, steps=1, lr=1.0, momentum=0.0,
                   workers=1):
  """Compiles and runs `steps` SGD steps; returns (losses, saved initializers) or None."""
  np.save(os.path.join(d, "x.npy"), x)
  np.save(os.path.join(d, "y.npy"), label)
  common.write_spec(os.path.join(d, "resource_spec.yml"), list(range(workers)))
  common.write_train(os.path.join(d, "train.yml"), {
      "loss": "mse", "batch_size": x.shape[0],
      "optimizer": {"name": "sgd", "lr": lr, "momentum": momentum}})
  tag = os.path.basename(d)
  if not common.run_checked(ck, tag + ": compile", [
      autodist, "compile", model_path, "-r", "resource_spec.yml", "-t", "train.yml",
      "-s", "allreduce", "-o", "plan"], cwd=d, timeout=300):
    return None
  if not common.run_checked(ck, tag + ": run", [
      autodist, "run", "plan", "--data", "input=x.npy", "--data", "label=y.npy",
      "--steps", str(steps), "--metrics", "m.jsonl", "--save", "out.onnx"], cwd=d, timeout=300):
    return None
  losses = [r["loss"] for r in common.read_metrics(os.path.join(d, "m.jsonl"))]
  return losses, common.onnx_initializers(os.path.join(d, "out.onnx"))


def grad_case(ck, autodist, work, name, x, params, build_node, torch_fn, opset=13):
  """out = OP(input + P, params...); one SGD step (lr 1) of autodist vs PyTorch
  autograd: every trained initializer moves by minus its gradient."""
  d = os.path.join(work, "grad_" + name)
  os.makedirs(d, exist_ok=True)
  p0 = rand(*x.shape[1:])
  inits = {"P": p0}
  inits.update(params)
  node_inputs, node_attrs, op = build_node()
  nodes = [helper.make_node("Add", ["input", "P"], ["xp"]),
           helper.make_node(op, ["xp"] + node_inputs, ["out"], **node_attrs)]
  shape = ["batch"] + list(x.shape[1:])
  g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                        [numpy_helper.from_array(v, k) for k, v in inits.items()])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
  m.ir_version = 8
  path = os.path.join(d, "model.onnx")
  onnx.save(m, path)
  # Reference: PyTorch autograd of the same function and loss.
  tp = {k: torch.tensor(v, requires_grad=True) for k, v in inits.items()}
  y = torch_fn(torch.from_numpy(x) + tp["P"], tp)
  label = rand(*y.shape)
  loss = F.mse_loss(y, torch.from_numpy(label))
  loss.backward()
  r = train_one_step(ck, autodist, d, path, x, label)
  if r is None:
    return
  losses, saved = r
  common.check_close(ck, name + ": loss", np.array(losses[:1]), np.array([loss.item()]), 1e-4)
  for k, t in tp.items():
    if t.grad is None:
      continue
    want = (t.detach() - t.grad).numpy()
    if k in saved:
      common.check_allclose(ck, "%s: gradient of %s" % (name, k), saved[k], want, rtol=1e-4,
                            atol=1e-5)
    else:
      ck.check("%s: %s saved" % (name, k), False)


def gradient_cases(ck, autodist, work):
  x = rand(4, 3, 5)
  grad_case(ck, autodist, work, "reducemax", x, {},
            lambda: ([], {"axes": [2], "keepdims": 0}, "ReduceMax"),
            lambda v, p: torch.amax(v, dim=2))
  grad_case(ck, autodist, work, "reducemin_keep", x, {},
            lambda: ([], {"axes": [1], "keepdims": 1}, "ReduceMin"),
            lambda v, p: torch.amin(v, dim=1, keepdim=True))
  grad_case(ck, autodist, work, "reducemean", x, {},
            lambda: ([], {"axes": [1, 2], "keepdims": 0}, "ReduceMean"),
            lambda v, p: v.mean(dim=(1, 2)))
  ln = {"s": rand(3, 5, lo=0.5, hi=1.5), "b": rand(3, 5)}
  grad_case(ck, autodist, work, "layernorm", x, ln,
            lambda: (["s", "b"], {"axis": 1, "epsilon": 1e-5}, "LayerNormalization"),
            lambda v, p: F.layer_norm(v, (3, 5), p["s"], p["b"], 1e-5), opset=17)
  xb = rand(6, 3, 4, 2)
  bn = {"s": rand(3, lo=0.5, hi=1.5), "b": rand(3), "rm": rand(3), "rv": rand(3, lo=0.5, hi=2)}
  grad_case(ck, autodist, work, "batchnorm_train", xb, bn,
            lambda: (["s", "b", "rm", "rv"], {"epsilon": 1e-5, "momentum": 0.9},
                     "BatchNormalization"),
            lambda v, p: F.batch_norm(v, torch.from_numpy(bn["rm"].copy()),
                                      torch.from_numpy(bn["rv"].copy()), p["s"], p["b"],
                                      training=True, momentum=0.1, eps=1e-5))
  grad_case(ck, autodist, work, "globalmaxpool", xb, {},
            lambda: ([], {}, "GlobalMaxPool"),
            lambda v, p: torch.amax(v, dim=(2, 3), keepdim=True))


# ---------------------------------------------------------------- BN training

class ConvBN(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    self.bn = torch.nn.BatchNorm2d(6)
    self.fc = torch.nn.Linear(6 * 5 * 5, 4)

  def forward(self, x):
    return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def bn_training(ck, autodist, work):
  """Eval-mode export (PRESERVE: BN with running statistics, one output) and
  training-mode exports (BN with its statistics outputs: five at opset 13,
  three at opset 15) all train like PyTorch's model.train()."""
  runs = [(1, "allreduce"), (2, "allreduce"), (4, "allreduce"), (2, "ps")]
  exports = [("eval13", torch.onnx.TrainingMode.PRESERVE, 13, runs),
             ("train13", torch.onnx.TrainingMode.TRAINING, 13, runs[:2]),
             ("train15", torch.onnx.TrainingMode.TRAINING, 15, runs[:2])]
  for tag, mode, opset, worker_counts in exports:
    d = os.path.join(work, "bn_train_" + tag)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(3)
    m = ConvBN()
    with torch.no_grad():  # distinct values, or the exporter merges equal initializers
      m.bn.weight.uniform_(0.5, 1.5)
      m.bn.bias.uniform_(-0.5, 0.5)
      m.bn.running_mean.uniform_(-0.2, 0.2)
      m.bn.running_var.uniform_(0.5, 1.5)
    m.eval()
    path = os.path.join(d, "model.onnx")
    # A training-mode trace runs BN's forward, which moves the running
    # statistics: export a copy; the reference starts from the ONNX file anyway.
    torch.onnx.export(copy.deepcopy(m), (torch.zeros(2, 3, 5, 5),), path, opset_version=opset,
                      training=mode, do_constant_folding=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    bns = [n for n in onnx.load(path).graph.node if n.op_type == "BatchNormalization"]
    ck.check("%s export keeps BatchNormalization" % tag, len(bns) == 1,
             str([n.op_type for n in onnx.load(path).graph.node]))
    B, N, steps, lr, mom = 8, 24, 10, 0.1, 0.9
    x = rand(N, 3, 5, 5)
    label = rand(N, 4)
    # PyTorch: model.train(), same data order (DESIGN.md), SGD with momentum.
    inits = common.onnx_initializers(path)
    with torch.no_grad():
      for k, v in m.state_dict().items():
        if k in inits:
          v.copy_(torch.from_numpy(np.array(inits[k])))
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=mom)
    ref = []
    for k in range(steps):
      idx = [(k * B + j) % N for j in range(B)]
      opt.zero_grad()
      loss = F.mse_loss(m(torch.from_numpy(x[idx])), torch.from_numpy(label[idx]))
      loss.backward()
      opt.step()
      ref.append(loss.item())
    for workers, strategy in worker_counts:
      bn_training_run(ck, autodist, d, tag, path, workers, strategy, x, label, B, steps, lr, mom,
                      ref, m)


def bn_training_run(ck, autodist, work, export_tag, model_path, workers, strategy, x, label, B,
                    steps, lr, mom, ref, m):
  """autodist on `workers` replicas (synchronized batch norm) against the PyTorch run."""
  tag = "bn train %s, %d replica%s (%s)" % (export_tag, workers, "" if workers == 1 else "s",
                                            strategy)
  d = os.path.join(work, "w%d-%s" % (workers, strategy))
  os.makedirs(d, exist_ok=True)
  shutil.copy(model_path, os.path.join(d, "model.onnx"))
  np.save(os.path.join(d, "x.npy"), x)
  np.save(os.path.join(d, "y.npy"), label)
  common.write_spec(os.path.join(d, "resource_spec.yml"), list(range(workers)))
  common.write_train(os.path.join(d, "train.yml"), {
      "loss": "mse", "batch_size": B, "optimizer": {"name": "sgd", "lr": lr, "momentum": mom}})
  if not common.run_checked(ck, tag + ": compile", [
      autodist, "compile", "model.onnx", "-r", "resource_spec.yml", "-t", "train.yml",
      "-s", strategy, "-o", "plan"], cwd=d, timeout=300):
    return
  if not common.run_checked(ck, tag + ": run", [
      autodist, "run", "plan", "--data", "input=x.npy", "--data", "label=y.npy",
      "--steps", str(steps), "--metrics", "m.jsonl", "--save", "out.onnx"], cwd=d, timeout=300):
    return
  losses = [r["loss"] for r in common.read_metrics(os.path.join(d, "m.jsonl"))]
  common.check_close(ck, tag + ": per-step loss vs PyTorch model.train()", np.array(losses),
                     np.array(ref), 1e-4)
  saved = common.onnx_initializers(os.path.join(d, "out.onnx"))
  for k, v in m.state_dict().items():
    if k.endswith("num_batches_tracked"):
      continue
    if k not in saved:
      ck.check("%s: saved %s" % (tag, k), False, "missing")
      continue
    # Relative to the tensor's scale (1% of its largest magnitude as the floor):
    # elements that pass near zero carry rounding of the size of the others'.
    ref_v = v.numpy()
    common.check_close(ck, "%s: saved %s" % (tag, k), saved[k], ref_v, 1e-4,
                       floor=max(1e-3, 0.01 * float(np.abs(ref_v).max())))


def main():
  ck = common.Checks()
  autodist = common.autodist_path()
  if not ck.check("autodist binary exists", os.access(autodist, os.X_OK), autodist):
    return ck.close()
  work = common.tmpdir("norm")
  forward_cases(ck, autodist, work)
  int64_cases(ck, autodist, work)
  gradient_cases(ck, autodist, work)
  bn_training(ck, autodist, work)
  if ck.failed:
    print("work folder kept: %s" % work)
  else:
    shutil.rmtree(work, ignore_errors=True)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
