#!/usr/bin/env python3
"""tests/ref/test_dropout.py: Dropout's masks against ONNX's reference, run live.

Inference (`autodist infer`): one-node Dropout models in training mode are
compared with onnx.backend.test.case.node.dropout.dropout (np.random.seed(seed);
mask = np.random.uniform(0, 1, shape) >= ratio; y = mask * x * scale) for
several shapes, ratios and seeds, float32, float64 and float16, the default seed (0),
and the identities (eval mode, ratio 0, Dropout-11, Dropout-9's float mask):
masks exactly, y exactly. Out-of-range ratio and seed, and an int32 input, are
input errors.

Training (`autodist compile` + `run`, SGD lr 1, loss = sum(Dropout(x * W))):
W is [B, D] so that each element's gradient is x * mask * scale; the weights
after 1 and after 2 steps give each step's mask, which must be numpy's stream
for `seed` at step 1 and for ad_k_dropout_key(seed, 1, 0) (runtime/kernels.h)
at step 2, and differ between the steps. With 2 workers (W [D], each worker a
half batch) the first step's loss and update are those of worker 0 drawing
`seed`'s stream and worker 1 drawing ad_k_dropout_key(seed, 0, 1)'s.

Env: AUTODIST (binary), AD_SRC (repository root). Run: /usr/bin/python3 THIS.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.case.node.dropout import dropout as onnx_dropout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

M64 = (1 << 64) - 1


def fmix64(z):
  z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
  z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
  return z ^ (z >> 31)


def key(seed, step, rank):
  """runtime/kernels.h's ad_k_dropout_key: the stream of (seed, 0-based step, rank)."""
  if step == 0 and rank == 0:
    return seed
  h = fmix64(seed ^ 0x9e3779b97f4a7c15)
  h = fmix64(h ^ step)
  h = fmix64(h ^ rank)
  return h >> 32


def np_mask(seed, shape, ratio):
  np.random.seed(seed)
  return np.random.uniform(0, 1.0, shape) >= ratio


def dropout_model(path, shape, opset=13, ratio=None, training=None, seed=0, mask=True,
                  dtype=np.float32, ratio_attr=None):
  et = onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype(dtype)]
  inits, ins = [], ["x"]
  if ratio is not None or training is not None:
    r = np.array(0.5 if ratio is None else ratio, dtype=dtype)
    inits.append(numpy_helper.from_array(r, "r"))
    ins.append("r")
  if training is not None:
    inits.append(numpy_helper.from_array(np.array(training), "t"))
    ins.append("t")
  attrs = {}
  if seed is not None:
    attrs["seed"] = seed
  if ratio_attr is not None:
    attrs["ratio"] = ratio_attr
  outs = ["y", "z"] if mask else ["y"]
  node = helper.make_node("Dropout", ins, outs, **attrs)
  mask_t = et if opset < 10 else TensorProto.BOOL
  g = helper.make_graph([node], "dropout", [helper.make_tensor_value_info("x", et, list(shape))],
                        [helper.make_tensor_value_info("y", et, list(shape))] +
                        ([helper.make_tensor_value_info("z", mask_t, list(shape))] if mask else []),
                        initializer=inits)
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
  m.ir_version = 7
  onnx.save(m, path)


def infer(ck, work, tag, model, x, outs):
  xp = os.path.join(work, tag + "_x.npy")
  np.save(xp, x)
  cmd = [common.autodist_path(), "infer", model, "--data", "x=" + xp]
  for o in outs:
    cmd += ["--out", "%s=%s" % (o, os.path.join(work, "%s_%s.npy" % (tag, o)))]
  if not common.run_checked(ck, tag + ": infer", cmd):
    return None
  return [np.load(os.path.join(work, "%s_%s.npy" % (tag, o))) for o in outs]


def check_exact(ck, name, got, ref):
  ok = got.shape == ref.shape and got.dtype == ref.dtype and np.array_equal(got, ref)
  detail = "" if ok else "got %s %s, expected %s %s, %d differ" % (
      got.dtype, got.shape, ref.dtype, ref.shape,
      int(np.sum(got != ref)) if got.shape == ref.shape else -1)
  return ck.check(name, ok, detail)


def inference_checks(ck, work):
  rng = np.random.default_rng(5)
  cases = [((3, 4, 5), 0.5, 0, np.float32), ((3, 4, 5), 0.75, 0, np.float32),
           ((7,), 0.1, 1, np.float32), ((2, 3, 4, 5), 0.3, 12345, np.float32),
           ((1000, 37), 0.5, 2**32 - 1, np.float32), ((64, 129), 0.9, 42, np.float32),
           ((5, 6), 0.25, 7, np.float64), ((9, 11), 0.4, 8, np.float16),
           ((4, 4), 0.5, None, np.float32)]
  for i, (shape, ratio, seed, dt) in enumerate(cases):
    tag = "draw%d %s ratio %g seed %s %s" % (i, shape, ratio, seed, np.dtype(dt).name)
    model = os.path.join(work, "draw%d.onnx" % i)
    dropout_model(model, shape, ratio=ratio, training=True, seed=seed, dtype=dt)
    x = rng.standard_normal(shape).astype(dt)
    got = infer(ck, work, "draw%d" % i, model, x, ["y", "z"])
    if got is None:
      continue
    y, z = onnx_dropout(x, dt(ratio), 0 if seed is None else seed, training_mode=True,
                        return_mask=True)
    check_exact(ck, tag + ": mask", got[1], z)
    check_exact(ck, tag + ": y", got[0], y.astype(dt))
  # Identities: eval mode, ratio 0 in training, Dropout-11 (attribute), Dropout-9 (mask is T).
  x = rng.standard_normal((3, 5)).astype(np.float32)
  ones = np.ones(x.shape, dtype=bool)
  for tag, kw, mask_ref in [
      ("eval ratio 0.5", dict(ratio=0.5, training=False), ones),
      ("eval default", dict(), ones),
      ("training ratio 0", dict(ratio=0.0, training=True), ones),
      ("opset 11 ratio attribute", dict(opset=11, seed=None, ratio_attr=0.3), ones),
      ("opset 9 float mask", dict(opset=9, seed=None), np.ones(x.shape, dtype=np.float32))]:
    model = os.path.join(work, tag.replace(" ", "_") + ".onnx")
    dropout_model(model, x.shape, **kw)
    got = infer(ck, work, tag.replace(" ", "_"), model, x, ["y", "z"])
    if got is not None:
      check_exact(ck, tag + ": y is x", got[0], x)
      check_exact(ck, tag + ": mask all ones", got[1], mask_ref)
  # Without the mask output the identity stays a view of x.
  model = os.path.join(work, "nomask.onnx")
  dropout_model(model, x.shape, ratio=0.5, training=False, mask=False)
  got = infer(ck, work, "nomask", model, x, ["y"])
  if got is not None:
    check_exact(ck, "eval without mask: y is x", got[0], x)
  # Input errors: exit 2, naming the node.
  for tag, kw, want in [("ratio 1", dict(ratio=1.0, training=True), "ratio 1 is outside [0, 1)"),
                        ("seed -1", dict(ratio=0.5, training=True, seed=-1),
                         "seed -1 is outside [0, 2^32)"),
                        ("int32 input", dict(dtype=np.int32), "input 'x' is int32; Dropout takes "
                         "float32, float64 or float16")]:
    model = os.path.join(work, tag.replace(" ", "_") + ".onnx")
    dropout_model(model, x.shape, **kw)
    np.save(os.path.join(work, "err_x.npy"), x.astype(kw.get("dtype", np.float32)))
    rc, out = common.run([common.autodist_path(), "infer", model, "--data",
                          "x=" + os.path.join(work, "err_x.npy"), "--out",
                          "y=" + os.path.join(work, "err_y.npy")])
    ck.check(tag + ": exit 2 naming the node", rc == 2 and "(Dropout): error: " + want in out,
             "exit %d: %s" % (rc, out.strip()[-300:]))


def train_model(path, batch, w_shape, w0, ratio, seed):
  """loss = ReduceSum(Dropout(x * W, ratio, training_mode=true, seed))."""
  D = w_shape[-1]
  inits = [numpy_helper.from_array(w0, "W"),
           numpy_helper.from_array(np.array(ratio, dtype=np.float32), "r"),
           numpy_helper.from_array(np.array(True), "t")]
  nodes = [helper.make_node("Mul", ["x", "W"], ["h"]),
           helper.make_node("Dropout", ["h", "r", "t"], ["y"], seed=seed),
           helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
  g = helper.make_graph(nodes, "train_dropout",
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
                        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                        initializer=inits)
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
  m.ir_version = 7
  onnx.save(m, path)


def train(ck, work, tag, model, x, workers, steps, batch):
  d = os.path.join(work, "%s_w%d_s%d" % (tag, workers, steps))
  os.makedirs(d)
  np.save(os.path.join(d, "x.npy"), x)
  common.write_spec(os.path.join(d, "spec.yml"), list(range(workers)))
  common.write_train(os.path.join(d, "train.yml"), {
      "loss": "output", "batch_size": batch, "optimizer": {"name": "sgd", "lr": 1.0}})
  name = "%s x%d %d steps" % (tag, workers, steps)
  a = common.autodist_path()
  if not common.run_checked(ck, name + ": compile", [
      a, "compile", model, "-r", "spec.yml", "-t", "train.yml", "-o", "plan"], cwd=d):
    return None, None
  if not common.run_checked(ck, name + ": run", [
      a, "run", "plan", "--data", "x=x.npy", "--steps", str(steps), "--metrics", "m.jsonl",
      "--save", "out.onnx"], cwd=d):
    return None, None
  rows = common.read_metrics(os.path.join(d, "m.jsonl"))
  return [r["loss"] for r in rows], common.onnx_initializers(os.path.join(d, "out.onnx"))["W"]


def training_checks(ck, work):
  B, D, ratio, seed = 6, 10, 0.5, 3
  rng = np.random.default_rng(9)
  x = rng.uniform(0.5, 1.5, (B, D)).astype(np.float32)
  w0 = rng.uniform(-1, 1, (B, D)).astype(np.float32)
  scale = np.float32(1 / (1 - np.float32(ratio)))
  model = os.path.join(work, "train.onnx")
  train_model(model, B, (B, D), w0, ratio, seed)
  l1, w1 = train(ck, work, "dropout", model, x, 1, 1, B)
  l2, w2 = train(ck, work, "dropout", model, x, 1, 2, B)
  if w1 is None or w2 is None:
    return
  m1 = np_mask(key(seed, 0, 0), (B, D), ratio)
  m2 = np_mask(key(seed, 1, 0), (B, D), ratio)
  # SGD, lr 1: W_k = W_{k-1} - x * mask_k * scale (the gradient of sum(y) wrt W).
  check_exact(ck, "step 1 update is -x * mask * scale with numpy's mask for seed", w1,
              w0 - x * m1 * scale)
  check_exact(ck, "step 2 update is -x * mask * scale with the mask of key(seed, 1, 0)", w2,
              w1 - x * m2 * scale)
  ck.check("step 1 and step 2 masks differ", not np.array_equal(m1, m2))
  common.check_close(ck, "step 1 loss", l1[0], np.sum((x * w0) * m1 * scale, dtype=np.float64),
                     tol=1e-5)
  common.check_close(ck, "step 2 loss", l2[1], np.sum((x * w1) * m2 * scale, dtype=np.float64),
                     tol=1e-5)
  # Two workers: W [D] broadcast over the rows; worker r draws key(seed, 0, r) on its half.
  wv = rng.uniform(-1, 1, (D,)).astype(np.float32)
  model2 = os.path.join(work, "train2.onnx")
  train_model(model2, B, (D,), wv, ratio, seed)
  l, w = train(ck, work, "dropout-vec", model2, x, 2, 1, B)
  if w is None:
    return
  h = B // 2
  masks = [np_mask(key(seed, 0, r), (h, D), ratio) for r in range(2)]
  ck.check("workers 0 and 1 draw different masks", not np.array_equal(masks[0], masks[1]))
  # Each replica's output is its own sum; the global loss and gradient are their mean.
  losses = [np.sum((x[r * h:(r + 1) * h] * wv) * masks[r] * scale, dtype=np.float64)
            for r in range(2)]
  grads = [np.sum(x[r * h:(r + 1) * h] * masks[r] * scale, axis=0, dtype=np.float64)
           for r in range(2)]
  common.check_close(ck, "x2 step 1 loss: mean of the workers' draws", l[0], np.mean(losses),
                     tol=1e-5)
  common.check_close(ck, "x2 step 1 update: mean of the workers' gradients", w,
                     wv - np.mean(grads, axis=0), tol=1e-5)


def main():
  ck = common.Checks()
  work = common.tmpdir("dropout")
  inference_checks(ck, work)
  training_checks(ck, work)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
