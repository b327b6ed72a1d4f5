#!/usr/bin/env python3
"""tests/ref/test_train_vs_torch.py: autodist training runs against PyTorch.

For the small MLP and CNN, SGD with momentum and Adam, on 1 and 2 CPU workers
(allreduce; the CNN also with 1 KiB all-reduce buckets, so that most buckets
overlap the backward pass), and an MSE regression model, it compiles and runs 50 steps with
the CLI and compares every step's loss (--metrics) and every trained
initializer (--save) with the reference trainer (torch_train.py) within a
relative 1e-4 per element, printing the worst element; the saved model must
also load and run in onnxruntime and agree with PyTorch on the trained weights.

The data (N = 40 samples, global batch 16) is fixed-seed random; N is not a
multiple of B so that the wrap-around of the data order (samples (k*B+j) mod
N) is exercised.

Before that, checks that need no autodist validate the reference itself:
exports stay inside autodist's op set, the ONNX weights map onto the modules by
name (and a wrong module is refused), onnxruntime agrees with the modules, and
the reference trainer matches an independent NumPy implementation of the
forward/backward pass and of the optimizer update rules as PyTorch documents
them (SGD with momentum/dampening/nesterov/weight decay, Adam, AdamW).

Env: AUTODIST (binary), AD_SRC (repository root). Run: /usr/bin/python3 THIS.
"""
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402
import torch_train  # noqa: E402

STEPS = 50
BATCH = 16
N = 40
TOL = 1e-4

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 1e-3}


# ------------------------------------------------------------ NumPy reference

def np_mlp_train(sizes, act, inits, x, y, cfg, steps):
  """Independent float64 reference for MLP training: hand-written forward and
  backward, and the optimizer formulas of the PyTorch docs. `inits`: name ->
  array (fc1.weight, fc1.bias, ...)."""
  cfg = common.train_config(cfg)
  o = cfg["optimizer"]
  p = {k: np.array(v, dtype=np.float64) for k, v in inits.items()}
  names = list(p)
  state = {k: {} for k in names}
  nl = len(sizes) - 1
  b = cfg["batch_size"]
  n = x.shape[0]
  losses = []
  for t in range(1, steps + 1):
    idx = ((t - 1) * b + np.arange(b)) % n
    h = [x[idx].astype(np.float64)]
    pre = []
    for i in range(nl):
      z = h[-1] @ p["fc%d.weight" % (i + 1)].T + p["fc%d.bias" % (i + 1)]
      pre.append(z)
      if i < nl - 1:
        z = np.maximum(z, 0) if act == "relu" else np.tanh(z)
      h.append(z)
    z = h[-1]
    if cfg["loss"] == "cross_entropy":
      lab = y[idx]
      zs = z - z.max(axis=1, keepdims=True)
      lse = np.log(np.exp(zs).sum(axis=1))
      losses.append(float(np.mean(lse - zs[np.arange(b), lab])))
      prob = np.exp(zs - lse[:, None])
      prob[np.arange(b), lab] -= 1.0
      dz = prob / b
    else:
      tgt = y[idx].astype(np.float64)
      losses.append(float(np.mean((z - tgt) ** 2)))
      dz = 2.0 * (z - tgt) / z.size
    g = {}
    for i in reversed(range(nl)):
      g["fc%d.weight" % (i + 1)] = dz.T @ h[i]
      g["fc%d.bias" % (i + 1)] = dz.sum(axis=0)
      if i > 0:
        dh = dz @ p["fc%d.weight" % (i + 1)]
        dz = dh * (pre[i - 1] > 0) if act == "relu" else dh * (1.0 - np.tanh(pre[i - 1]) ** 2)
    for k in names:
      gk, s, lr, wd = g[k], state[k], o["lr"], o["weight_decay"]
      if o["name"] == "sgd":
        if wd:
          gk = gk + wd * p[k]
        if o["momentum"]:
          if "buf" not in s:
            s["buf"] = gk.copy()
          else:
            s["buf"] = o["momentum"] * s["buf"] + (1.0 - o["dampening"]) * gk
          gk = gk + o["momentum"] * s["buf"] if o["nesterov"] else s["buf"]
        p[k] = p[k] - lr * gk
      else:
        b1, b2 = o["betas"]
        if o["name"] == "adamw":
          p[k] = p[k] * (1.0 - lr * wd)
        elif wd:
          gk = gk + wd * p[k]
        s["m"] = b1 * s.get("m", 0.0) + (1.0 - b1) * gk
        s["v"] = b2 * s.get("v", 0.0) + (1.0 - b2) * gk * gk
        mhat = s["m"] / (1.0 - b1 ** t)
        vhat = s["v"] / (1.0 - b2 ** t)
        p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + o["eps"])
  return losses, p


def self_checks(ck, work):
  """Checks of the reference itself (no autodist needed)."""
  for name in ["mlp_small", "cnn_small", "mlp_mse", "mlp", "cnn"]:
    path = os.path.join(work, name + ".onnx")
    try:
      m, ops = models.export(name, path)
      ck.check("export %s: ops in scope" % name, True, " ".join(ops))
    except RuntimeError as e:
      ck.check("export %s: ops in scope" % name, False, str(e))
      continue
    m2 = models.build(name, seed=123)
    try:
      loaded = torch_train.load_onnx_weights(m2, path)
      ck.check("%s: every parameter maps to an initializer by name" % name,
               sorted(loaded) == sorted(m.state_dict()), ", ".join(loaded))
    except ValueError as e:
      ck.check("%s: every parameter maps to an initializer by name" % name, False, str(e))
      continue
    x, _ = common.random_data(models.sample_shape(name), 5, "classes", seed=7)
    with torch.no_grad():
      ref = m2(torch.from_numpy(x)).numpy()
    got = common.ort_run(path, {"input": x})["logits"]
    common.check_allclose(ck, "%s: onnxruntime == PyTorch on the loaded weights" % name, got, ref,
                          rtol=1e-4, atol=1e-5)
  try:
    torch_train.load_onnx_weights(models.build("cnn_small"), os.path.join(work, "mlp_small.onnx"))
    ck.check("loading MLP weights into the CNN is refused", False)
  except ValueError as e:
    ck.check("loading MLP weights into the CNN is refused", True, str(e)[:100] + "...")

  # The reference trainer against the NumPy implementation, in float64 (the
  # algorithm: exact up to 1e-9) and in float32 (what autodist is held to).
  cases = [
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": SGD}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": {
          "name": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3}}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 8, "optimizer": {
          "name": "sgd", "lr": 0.03, "momentum": 0.8, "weight_decay": 0.01, "nesterov": True}}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": {
          "name": "sgd", "lr": 0.1}}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": ADAM}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": {
          "name": "adam", "lr": 2e-3, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.01}}),
      ("mlp_small", {"loss": "cross_entropy", "batch_size": 16, "optimizer": {
          "name": "adamw", "lr": 2e-3, "weight_decay": 0.05}}),
      ("mlp_mse", {"loss": "mse", "batch_size": 16, "optimizer": SGD}),
      ("mlp_mse", {"loss": "mse", "batch_size": 16, "optimizer": ADAM}),
  ]
  for name, cfg in cases:
    kind = models.MODELS[name][2]
    mod = models.build(name)
    x, y = common.random_data(models.sample_shape(name), N, kind, seed=1,
                              outputs=models.outputs(name))
    path = os.path.join(work, name + ".onnx")
    inits = common.onnx_initializers(path)
    ref_l, ref_p = np_mlp_train(mod.sizes, mod.act, inits, x, y, cfg, 30)
    tag = "%s %s %s" % (name, cfg["loss"], common.train_config(cfg)["optimizer"])
    # float32 drifts from the exact algorithm by rounding alone: up to ~1.3e-4
    # after 30 Adam steps with eps 1e-6 on AVX-512 machines (the float64 run
    # checks the algorithm; autodist is held to TOL against the float32 run).
    for dtype, tol in [(torch.float64, 1e-9), (torch.float32, 5 * TOL)]:
      m = models.build(name)
      torch_train.load_onnx_weights(m, path)
      got_l, _ = torch_train.train(m, x, y, cfg, 30, dtype=dtype)
      got_p = {k: v.detach().numpy() for k, v in m.state_dict().items()}
      worst = max(common.rel_err(got_p[k], ref_p[k])[0] for k in ref_p)
      lerr = common.rel_err(got_l, ref_l)[0]
      ck.check("reference trainer (%s) == NumPy: %s" % (str(dtype)[6:], tag),
               worst <= tol and lerr <= tol,
               "loss rel err %.3g, weights rel err %.3g" % (lerr, worst))


# ------------------------------------------------------------ autodist

def case_tag(name, cfg, workers, bucket_mb=None):
  tag = "%s %s %s x%d" % (name, cfg["loss"], cfg["optimizer"]["name"], workers)
  return tag + (" buckets %gMiB" % bucket_mb if bucket_mb else "")


def autodist_case(ck, autodist, work, name, cfg, workers, ref, bucket_mb=None):
  """Compiles and runs one training job; compares it with `ref` = (losses,
  state). Returns True when every check passed. A small `bucket_mb` splits the
  gradients into many all-reduce buckets, which overlap the backward pass."""
  tag = case_tag(name, cfg, workers, bucket_mb)
  d = os.path.join(work, tag.replace(" ", "_"))
  os.makedirs(d, exist_ok=True)
  failed0 = ck.failed
  shutil.copy(os.path.join(work, name + ".onnx"), os.path.join(d, "model.onnx"))
  common.write_spec(os.path.join(d, "resource_spec.yml"), list(range(workers)))
  common.write_train(os.path.join(d, "train.yml"), cfg)
  if not common.run_checked(ck, tag + ": compile", [
      autodist, "compile", "model.onnx", "-r", "resource_spec.yml", "-t", "train.yml",
      "-s", "allreduce", "-o", "plan"] + (["--bucket-mb", str(bucket_mb)] if bucket_mb else []),
      cwd=d, timeout=300):
    return False
  if not common.run_checked(ck, tag + ": run", [
      autodist, "run", "plan", "--data", "input=x.npy", "--data", "label=y.npy",
      "--steps", str(STEPS), "--metrics", "m.jsonl", "--save", "out.onnx"], cwd=d, timeout=300):
    return False
  ref_losses, ref_state = ref
  try:
    rows = common.read_metrics(os.path.join(d, "m.jsonl"))
    steps = [r.get("step") for r in rows]
    ck.check(tag + ": metrics has steps 1..%d" % STEPS, steps == list(range(1, STEPS + 1)),
             "" if steps == list(range(1, STEPS + 1)) else "steps %s" % steps[:8])
    losses = [r.get("loss", float("nan")) for r in rows][:STEPS]
    if len(losses) == STEPS:
      common.check_close(ck, tag + ": per-step loss", np.array(losses), np.array(ref_losses), TOL)
  except (OSError, ValueError) as e:
    ck.check(tag + ": metrics readable", False, str(e))
  try:
    saved = common.onnx_initializers(os.path.join(d, "out.onnx"))
  except Exception as e:  # noqa: BLE001 - any load failure is the finding
    ck.check(tag + ": saved model loads", False, str(e))
    return False
  missing = sorted(set(ref_state) - set(saved))
  ck.check(tag + ": saved model has every parameter", not missing, ", ".join(missing))
  for k in ref_state:
    if k in saved:
      common.check_close(ck, "%s: trained %s" % (tag, k), saved[k], ref_state[k], TOL)
  # The saved model runs in onnxruntime and computes what PyTorch computes with
  # the reference's trained weights.
  x = np.load(os.path.join(d, "x.npy"))[:8]
  m = models.build(name)
  with torch.no_grad():
    for k, v in m.state_dict().items():
      v.copy_(torch.from_numpy(ref_state[k]))
    want = m(torch.from_numpy(x)).numpy()
  try:
    got = common.ort_run(os.path.join(d, "out.onnx"), {"input": x})["logits"]
    common.check_allclose(ck, tag + ": saved model in onnxruntime", got, want, rtol=1e-3, atol=1e-4)
  except Exception as e:  # noqa: BLE001
    ck.check(tag + ": saved model in onnxruntime", False, str(e).splitlines()[0])
  return ck.failed == failed0


def main():
  ck = common.Checks()
  work = common.tmpdir("train-vs-torch")
  self_checks(ck, work)

  autodist = common.autodist_path()
  if not ck.check("autodist binary exists", os.access(autodist, os.X_OK), autodist):
    return ck.close()
  cases = []
  for name in ["mlp_small", "cnn_small"]:
    for opt in [SGD, ADAM]:
      cases.append((name, {"loss": "cross_entropy", "batch_size": BATCH, "optimizer": opt}))
  cases.append(("mlp_mse", {"loss": "mse", "batch_size": BATCH, "optimizer": SGD}))
  # Embedding lookup (Gather into a 500-row table, its scatter-add gradient)
  # and ReduceMean over the sequence.
  for opt in [SGD, ADAM]:
    cases.append(("embed_small", {"loss": "cross_entropy", "batch_size": BATCH, "optimizer": opt}))
  all_ok = True
  for name, cfg in cases:
    kind = models.MODELS[name][2]
    x, y = common.random_data(models.sample_shape(name), N, kind, seed=2,
                              outputs=models.outputs(name))
    if name in models.VOCAB:
      # Token ids, drawn from a small part of the vocabulary so that rows
      # repeat within a batch (their gradients accumulate) and most rows
      # get no gradient at all.
      rng = np.random.default_rng(3)
      x = rng.integers(0, 60, size=x.shape).astype(np.int64)
      x[0, :3] = models.VOCAB[name] - 1  # the last row, three times in one sample
      if not os.path.exists(os.path.join(work, name + ".onnx")):
        models.export(name, os.path.join(work, name + ".onnx"))
    ref = torch_train.train_onnx(name, os.path.join(work, name + ".onnx"), x, y, cfg, STEPS)
    # How far float32 rounding alone moves the reference (for the record: the
    # tolerance must stay well above it).
    ref64 = torch_train.train_onnx(name, os.path.join(work, name + ".onnx"), x, y, cfg, STEPS,
                                   dtype=torch.float64)
    drift = max(common.rel_err(ref[1][k], ref64[1][k])[0] for k in ref[1])
    print("info %s %s: float32 vs float64 reference drift %.3g" % (
        name, cfg["optimizer"]["name"], drift))
    runs = [(1, None), (2, None)]
    if name == "cnn_small" and cfg["optimizer"] is SGD:
      runs.append((2, 0.001))  # 1 KiB buckets: the overlapped start/wait path
    for workers, bucket_mb in runs:
      d = os.path.join(work, case_tag(name, cfg, workers, bucket_mb).replace(" ", "_"))
      os.makedirs(d, exist_ok=True)
      np.save(os.path.join(d, "x.npy"), x)
      np.save(os.path.join(d, "y.npy"), y)
      all_ok &= autodist_case(ck, autodist, work, name, cfg, workers, ref, bucket_mb)
  if all_ok and ck.failed == 0:
    shutil.rmtree(work, ignore_errors=True)
  else:
    print("work files kept in %s" % work)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
