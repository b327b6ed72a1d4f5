#!/usr/bin/env python3
"""tests/ref/torch_train.py: the reference trainer autodist is checked against.

It runs exactly the training that DESIGN.md defines, in PyTorch:
- initial weights: the ONNX file's initializers, loaded by name onto the
  nn.Module that was exported (models.py); every parameter must map, and every
  float initializer must be a parameter, or the run is refused;
- data order: step k uses samples (k*B + j) mod N for j in [0, B), no shuffle;
- loss: mean over the global batch (F.cross_entropy / F.mse_loss with their
  default 'mean' reduction; for mse that is the mean over all B*outputs
  elements, PyTorch's definition);
- optimizer: torch.optim.SGD / Adam / AdamW with train.yml's hyperparameters;
- one thread, float32 (float64 on request, to measure rounding drift).

The loss reported for step k is the loss of that step's forward pass, before
its update (what autodist's --metrics "loss" is).

    /usr/bin/python3 tests/ref/torch_train.py --model NAME --onnx MODEL.onnx -t train.yml
        --data input=x.npy --data label=y.npy (--steps S | --epochs E)
        [--losses OUT.json] [--save OUT.onnx]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402


def load_onnx_weights(module, onnx_path):
  """Copies the initializers of `onnx_path` onto `module` by name. Raises
  ValueError when a parameter has no initializer (or another shape), or a float
  initializer is not a parameter. Returns the names loaded."""
  inits = common.onnx_initializers(onnx_path)
  sd = module.state_dict()
  problems = []
  for k, v in sd.items():
    if k not in inits:
      problems.append("parameter %s has no initializer" % k)
    elif tuple(inits[k].shape) != tuple(v.shape):
      problems.append("%s: initializer shape %s, parameter %s" % (
          k, tuple(inits[k].shape), tuple(v.shape)))
  for k, v in inits.items():
    if v.dtype.kind == "f" and k not in sd:
      problems.append("float initializer %s is not a parameter of %s" % (
          k, type(module).__name__))
  if problems:
    raise ValueError("%s: %s" % (onnx_path, "; ".join(problems)))
  with torch.no_grad():
    for k, v in sd.items():
      v.copy_(torch.from_numpy(np.array(inits[k])))
  return list(sd)


def make_optimizer(params, opt):
  """torch.optim for a filled-in train.yml optimizer dict (common.train_config)."""
  name = opt["name"]
  if name == "sgd":
    return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"],
                           dampening=opt["dampening"], weight_decay=opt["weight_decay"],
                           nesterov=bool(opt["nesterov"]))
  cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
  return cls(params, lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
             weight_decay=opt["weight_decay"])


def steps_for_epochs(epochs, n, batch):
  """--epochs E means ceil(E*N/B) steps (the last one wraps around)."""
  return int(math.ceil(epochs * n / batch))


def train(module, x, y, cfg, steps, dtype=torch.float32):
  """Trains `module` in place for `steps` steps on inputs `x` and labels `y`
  (numpy) with the train.yml dict `cfg`. Returns (per-step losses, final
  state_dict as numpy float32 arrays)."""
  cfg = common.train_config(cfg)
  torch.set_num_threads(1)
  module.to(dtype)
  module.train()
  frozen = set(cfg.get("frozen") or [])
  params = []
  for k, p in module.named_parameters():
    p.requires_grad_(k not in frozen)
    if k not in frozen:
      params.append(p)
  opt = make_optimizer(params, cfg["optimizer"])
  n = x.shape[0]
  b = int(cfg["batch_size"])
  if y.shape[0] != n:
    raise ValueError("inputs have %d samples, labels %d" % (n, y.shape[0]))
  xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
  if cfg["loss"] == "cross_entropy":
    yt = torch.from_numpy(np.ascontiguousarray(y)).long()
  else:
    yt = torch.from_numpy(np.ascontiguousarray(y)).to(dtype)
  losses = []
  for k in range(steps):
    idx = torch.from_numpy((k * b + np.arange(b)) % n)
    out = module(xt[idx])
    if cfg["loss"] == "cross_entropy":
      loss = F.cross_entropy(out, yt[idx])
    else:
      loss = F.mse_loss(out, yt[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.item()))
  state = {k: v.detach().to(torch.float32).numpy().copy()
           for k, v in module.state_dict().items()}
  return losses, state


def train_onnx(model_name, onnx_path, x, y, cfg, steps, dtype=torch.float32):
  """Rebuilds models.py's `model_name`, loads the initial weights from
  `onnx_path` and trains it (see train)."""
  m = models.build(model_name)
  load_onnx_weights(m, onnx_path)
  return train(m, x, y, cfg, steps, dtype)


def save_onnx(onnx_in, state, onnx_out):
  """Writes `onnx_in` with its initializers replaced by `state` (name -> array)."""
  import onnx
  from onnx import numpy_helper
  m = onnx.load(onnx_in)
  for i, t in enumerate(m.graph.initializer):
    if t.name in state:
      m.graph.initializer[i].CopyFrom(
          numpy_helper.from_array(np.asarray(state[t.name], dtype=np.float32), t.name))
  onnx.save(m, onnx_out)


def main(argv):
  ap = argparse.ArgumentParser(description="PyTorch reference trainer")
  ap.add_argument("--model", required=True, choices=sorted(models.MODELS))
  ap.add_argument("--onnx", required=True)
  ap.add_argument("-t", "--train", required=True, help="train.yml")
  ap.add_argument("--data", action="append", default=[], help="NAME=FILE.npy")
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--steps", type=int)
  g.add_argument("--epochs", type=float)
  ap.add_argument("--losses", help="write the per-step losses (JSON list)")
  ap.add_argument("--save", help="write the trained model (ONNX)")
  a = ap.parse_args(argv[1:])
  cfg = common.train_config(common.load_train(a.train))
  data = dict(d.split("=", 1) for d in a.data)
  x = np.load(data["input"])
  y = np.load(data[cfg["label"]])
  steps = a.steps if a.steps is not None else steps_for_epochs(a.epochs, x.shape[0],
                                                                cfg["batch_size"])
  losses, state = train_onnx(a.model, a.onnx, x, y, cfg, steps)
  print("%d steps: loss %.6f -> %.6f" % (steps, losses[0], losses[-1]))
  if a.losses:
    with open(a.losses, "w") as f:
      json.dump(losses, f)
  if a.save:
    save_onnx(a.onnx, state, a.save)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
