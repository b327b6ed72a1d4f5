"""tests/ref/common.py: helpers shared by the reference tests, the examples and
the benchmark.

The reference tests are plain scripts run by ctest with /usr/bin/python3 and
the environment AUTODIST (the built binary) and AD_SRC (the repository root).
Each prints one line per check and ends with "N passed, M failed"; the exit
status is nonzero when a check failed. Checks are collected in a Checks object
so that one failure does not hide the others.

The train-config dict used here is train.yml as loaded by yaml (docs/train.md),
with the defaults of compiler/train_config.h filled in by train_config(): the
same dict is written to train.yml for autodist and handed to the reference
trainer, so both read one description of the run.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("AD_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
if HERE not in sys.path:
  sys.path.insert(0, HERE)


def autodist_path():
  """The binary under test: $AUTODIST, else build/autodist in the repo."""
  return os.environ.get("AUTODIST") or os.path.join(REPO, "build", "autodist")


# ---------------------------------------------------------------- checks

class Checks:
  """Collects named pass/fail checks; prints one line each as it goes."""

  def __init__(self):
    self.passed = 0
    self.failed = 0

  def check(self, name, ok, detail=""):
    ok = bool(ok)
    if ok:
      self.passed += 1
    else:
      self.failed += 1
    print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""),
          flush=True)
    return ok

  def close(self):
    """Prints the summary line; returns the process exit status."""
    print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
    return 1 if self.failed or not self.passed else 0


def rel_err(a, b, floor=1e-3):
  """Worst per-element relative error of `a` against the reference `b`:
  max |a-b| / max(|b|, floor). Returns (error, flat index of the worst)."""
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.shape != b.shape:
    return float("inf"), -1
  if a.size == 0:
    return 0.0, -1
  e = np.abs(a - b) / np.maximum(np.abs(b), floor)
  if not np.all(np.isfinite(a)):
    return float("inf"), int(np.argmax(~np.isfinite(a.ravel())))
  i = int(np.argmax(e))
  return float(e.ravel()[i]), i


def check_close(ck, name, got, ref, tol=1e-4, floor=1e-3):
  """One check: `got` matches `ref` within relative `tol` (see rel_err)."""
  got = np.asarray(got)
  ref = np.asarray(ref)
  if got.shape != ref.shape:
    return ck.check(name, False, "shape %s, expected %s" % (got.shape, ref.shape))
  e, i = rel_err(got, ref, floor)
  detail = "worst rel err %.3g" % e
  if i >= 0:
    detail += " at %s (got %.7g, expected %.7g)" % (
        np.unravel_index(i, ref.shape), got.ravel()[i], ref.ravel()[i])
  return ck.check(name, e <= tol, detail)


def check_allclose(ck, name, got, ref, rtol=1e-4, atol=1e-5):
  """One check in numpy.allclose terms: |got-ref| <= atol + rtol*|ref|."""
  got = np.asarray(got)
  ref = np.asarray(ref)
  if got.shape != ref.shape:
    return ck.check(name, False, "shape %s, expected %s" % (got.shape, ref.shape))
  if got.size == 0:
    return ck.check(name, True, "empty")
  d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
  excess = d - (atol + rtol * np.abs(ref.astype(np.float64)))
  i = int(np.argmax(excess))
  ok = bool(np.all(np.isfinite(got))) and excess.ravel()[i] <= 0
  return ck.check(name, ok, "max |diff| %.3g, worst at %s (got %.7g, expected %.7g)" % (
      float(d.max()), np.unravel_index(i, ref.shape), got.ravel()[i], ref.ravel()[i]))


# ---------------------------------------------------------------- processes

def run(cmd, cwd=None, timeout=600, env=None):
  """Runs `cmd` (a list); returns (exit status, stdout+stderr as text).
  A timeout is reported as status 124 rather than raised."""
  try:
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace")
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode("utf-8", "replace")
    return 124, out + "\n(timed out after %ds)" % timeout
  except OSError as e:
    return 127, "cannot run %s: %s" % (cmd[0], e)


def run_checked(ck, name, cmd, cwd=None, timeout=600):
  """Runs `cmd` as one check (exit status 0); prints its output on failure."""
  rc, out = run(cmd, cwd=cwd, timeout=timeout)
  if rc != 0:
    tail = "\n".join(out.strip().splitlines()[-20:])
    print("  $ %s\n  %s" % (" ".join(cmd), tail.replace("\n", "\n  ")), flush=True)
  ck.check(name, rc == 0, "exit %d" % rc if rc else "")
  return rc == 0


def tmpdir(prefix):
  return tempfile.mkdtemp(prefix="ad-" + prefix + "-")


# ---------------------------------------------------------------- configs

def write_spec(path, cpus, address="localhost"):
  """resource_spec.yml: one node with one CPU worker per id in `cpus`."""
  with open(path, "w") as f:
    f.write("nodes:\n  - address: %s\n    cpus: [%s]\n" % (address, ", ".join(map(str, cpus))))


OPT_DEFAULTS = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
            "nesterov": False},
    "adam": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
}


def train_config(d):
  """A train.yml dict with every default of compiler/train_config.h filled in."""
  c = {"loss": "cross_entropy", "label": "label", "batch_size": 64, "frozen": []}
  c.update({k: v for k, v in d.items() if k != "optimizer"})
  opt = dict(d.get("optimizer") or {"name": "sgd"})
  name = opt.get("name", "sgd")
  if name not in OPT_DEFAULTS:
    raise ValueError("unknown optimizer %r" % name)
  full = dict(OPT_DEFAULTS[name])
  full.update(opt)
  full["name"] = name
  c["optimizer"] = full
  if c["loss"] not in ("cross_entropy", "mse"):
    raise ValueError("reference trainer: loss %r not supported" % c["loss"])
  return c


def _yaml_scalar(v):
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
  if isinstance(v, float):
    return repr(v)
  return str(v)


def write_train(path, d):
  """Writes train.yml from the dict `d` as given (only the keys it holds, so
  autodist's own defaults are exercised where the dict leaves them out)."""
  lines = []
  for k, v in d.items():
    if k == "optimizer":
      lines.append("optimizer: {" + ", ".join(
          "%s: %s" % (ok, _yaml_scalar(ov)) for ok, ov in v.items()) + "}")
    else:
      lines.append("%s: %s" % (k, _yaml_scalar(v)))
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def load_train(path):
  """Reads train.yml into a dict (without defaults; see train_config)."""
  import yaml
  with open(path) as f:
    return yaml.safe_load(f) or {}


# ---------------------------------------------------------------- files

def read_metrics(path):
  """The --metrics file: a list of per-step dicts, in step order."""
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rows.append(json.loads(line))
  return rows


def onnx_initializers(path):
  """name -> numpy array for every initializer of the model at `path`."""
  import onnx
  from onnx import numpy_helper
  m = onnx.load(path)
  return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def ort_run(path, feeds, outputs=None):
  """Runs the model at `path` in onnxruntime (CPU, one thread); returns a dict
  output name -> array."""
  import onnxruntime as ort
  so = ort.SessionOptions()
  so.intra_op_num_threads = 1
  so.inter_op_num_threads = 1
  so.log_severity_level = 3
  s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
  names = outputs or [o.name for o in s.get_outputs()]
  return dict(zip(names, s.run(names, feeds)))


def random_data(sample_shape, n, kind, seed, outputs=10):
  """Fixed-seed training data: float32 inputs in [-1, 1) and labels (int64 in
  [0, outputs) for "classes", float32 [n, outputs] targets for "regress")."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, size=(n,) + tuple(sample_shape)).astype(np.float32)
  if kind == "classes":
    y = rng.integers(0, outputs, size=(n,)).astype(np.int64)
  else:
    y = rng.uniform(-1.0, 1.0, size=(n, outputs)).astype(np.float32)
  return x, y
