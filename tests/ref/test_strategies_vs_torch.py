#!/usr/bin/env python3
"""tests/ref/test_strategies_vs_torch.py: every strategy against PyTorch.

Exactness (DESIGN.md, Semantics: every synchronous strategy on any number of
replicas computes the same training run as one device). For the strategies
allreduce, ps, ps-lb, partitioned-ps and parallax, each on 1, 2 and 3 CPU
workers (one node, cpus [0], [0, 1], [0, 1, 2]; 3 workers oversubscribe this
2-core machine on purpose), and for the MLP (784-512-512-10) and the CNN of
bench/ and their small variants, and the two embedding models (Embedding -> mean -> Linear -> ReLU -> Linear, with 500 and
50,000 rows), it trains 50 steps and checks every step's loss (--metrics) and
every trained initializer (--save) within a relative 1e-4 of the reference
trainer (torch_train.py: same initial weights, data order and optimizer) and
of autodist's own 1-worker allreduce run. ps-lb, partitioned-ps and parallax
run with 2 servers (and 2 or 3 shards) on some cases, so that several servers
are exercised (parallax on a model without lookup tables takes no server
options: it is the allreduce plan); plan.yaml must show the strategy, the
servers and the shards asked for. SGD with momentum, Adam and Adam with weight decay are covered: the
last two also move embedding rows that a step does not touch (PyTorch's dense
update), which a server applying only the pushed rows would get wrong.

Relaxed sync modes: ps on the MLP and parallax on the 50,000-row embedding
model, 2 workers, 300 steps with --staleness 2 and with --async; the mean
loss of the last 10 steps must be within 10% of the --sync run's (and the
sync run must have learnt, so that the comparison means something). In these
modes a server applies each push as its own optimizer step, so the runs are
set up where that legitimately changes little: the MLP with SGD (two steps on
the two halves of a batch are one step on their sum, up to the staleness),
the embedding model with Adam (two normalized steps per batch instead of one)
on keyword documents it learns to its noise floor by step 300 (a PyTorch
simulation of per-push Adam: last-10 mean 0.3265 against 0.3211 in sync).

Bytes: on the 50,000-row model with 2 workers, parallax's bytes_sent per step
(--metrics) is at most 1/4 of allreduce's, and at least the bytes of the rows
the workers must push; allreduce's is 2 x the parameter bytes (DESIGN.md).

Env: AUTODIST (binary), AD_SRC (repository root). Run: /usr/bin/python3 THIS.
"""
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402
import torch_train  # noqa: E402

STEPS = 50
BATCH = 12  # divides over 1, 2 and 3 workers
N = 40      # not a multiple of BATCH: the data order wraps around
TOL = 1e-4

SGDM = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
# The full-size MLP and CNN fit 40 samples within 50 steps at lr 0.05, and a
# loss near 1e-4 is all float32 rounding; at 0.01 it stays well above that.
SGDM_FULL = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 1e-3}
ADAM_WD = {"name": "adam", "lr": 2e-3, "weight_decay": 1e-3}

# (model, optimizer): every strategy x 1, 2, 3 workers runs each.
CASES = [
    ("mlp_small", SGDM),
    ("mlp_small", ADAM),
    ("cnn_small", SGDM),
    ("mlp", SGDM_FULL),
    ("cnn", SGDM_FULL),
    ("embed_small", SGDM),
    ("embed_small", ADAM_WD),
    ("embed", ADAM),
]
STRATEGIES = ["allreduce", "ps", "ps-lb", "partitioned-ps", "parallax"]
WORKERS = [1, 2, 3]

# Extra compile options per (strategy, workers), and the servers and shards
# per partitioned variable the plan must then have (None: not checked).
SERVER_OPTS = {
    ("ps-lb", 2): ["--servers", "2"],
    ("ps-lb", 3): ["--servers", "2"],
    ("partitioned-ps", 2): ["--servers", "2", "--shards", "2"],
    ("partitioned-ps", 3): ["--shards", "3"],
    ("parallax", 2): ["--servers", "2"],
    ("parallax", 3): ["--servers", "2", "--shards", "3"],
}


def expected_layout(strategy, workers):
  """(servers, shards per partitioned variable) the plan must have."""
  opts = SERVER_OPTS.get((strategy, workers), [])
  servers = int(opts[opts.index("--servers") + 1]) if "--servers" in opts else 1
  shards = int(opts[opts.index("--shards") + 1]) if "--shards" in opts else servers
  if strategy == "allreduce":
    return 0, None
  if strategy in ("ps", "ps-lb"):
    return servers, 1
  return servers, shards


# ------------------------------------------------------------ data

def case_data(name, seed=2):
  """Fixed-seed inputs and labels for model `name` (N samples). Token ids mix
  a few frequent words (rows repeat within a batch, their gradients add up)
  with words from the whole vocabulary, including the first and last rows and
  the rows on both sides of every 2- and 3-shard boundary."""
  kind = models.MODELS[name][2]
  x, y = common.random_data(models.sample_shape(name), N, kind, seed=seed,
                            outputs=models.outputs(name))
  if name in models.VOCAB:
    v = models.VOCAB[name]
    rng = np.random.default_rng(seed + 1)
    frequent = rng.integers(0, 40, size=x.shape)
    anywhere = rng.integers(0, v, size=x.shape)
    x = np.where(rng.random(x.shape) < 0.5, frequent, anywhere).astype(np.int64)
    edges = sorted({0, v - 1} | {b + d for k in (2, 3) for i in range(1, k)
                                 for b in [(v * i) // k, -(-v * i // k)] for d in (-1, 0)})
    flat = x.reshape(-1)
    flat[7:7 + 3 * len(edges):3] = edges  # spread over several samples
  return x, y


# ------------------------------------------------------------ plans

def plan_layout(plan_dir):
  """(strategy, workers, servers, {var: [(server, row0, rows, sparse)]}) from
  plan.yaml, or an error string."""
  import yaml
  try:
    with open(os.path.join(plan_dir, "plan.yaml")) as f:
      p = yaml.safe_load(f)
    devs = p.get("devices") or []
    roles = [d.get("role", "worker") for d in devs]
    shards = {}
    for s in p.get("shards") or []:
      shards.setdefault(s["var"], []).append((s["server"], s["row0"], s["rows"], s["sparse"]))
    return p.get("strategy"), roles.count("worker"), roles.count("server"), shards
  except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
    return "plan.yaml unreadable: %s" % e


def check_layout(ck, tag, plan_dir, strategy, workers, shapes, embedding_tables):
  """plan.yaml has the strategy, workers, servers and shards asked for, and
  the shards of each server-held variable tile its rows. `shapes`: parameter
  name -> shape."""
  got = plan_layout(plan_dir)
  if isinstance(got, str):
    return ck.check(tag + ": plan layout", False, got)
  strat, w, servers, shards = got
  want_servers, want_shards = expected_layout(strategy, workers)
  if strategy == "parallax":
    # Only the embedding tables go to servers, by row; the rest is all-reduced.
    held = set(embedding_tables) & set(shapes)
    if not held:
      want_servers = 0  # no lookup table: the allreduce plan, no servers
  else:
    held = set(shapes) if strategy != "allreduce" else set()
  problems = []
  if strat != strategy:
    problems.append("strategy %r" % strat)
  if w != workers:
    problems.append("%d workers" % w)
  if want_servers is not None and servers != want_servers:
    problems.append("%d servers, expected %d" % (servers, want_servers))
  if set(shards) != held:
    problems.append("server-held %s, expected %s" % (sorted(shards), sorted(held)))
  for var, sh in shards.items():
    if len(sh) != want_shards:
      problems.append("%s in %d shards, expected %d" % (var, len(sh), want_shards))
    rows = sorted((r0, n) for _, r0, n, _ in sh)
    total = shapes[var][0] if var in shapes and len(shapes[var]) else 1
    if [r0 for r0, _ in rows] != [sum(n for _, n in rows[:i]) for i in range(len(rows))] or \
        sum(n for _, n in rows) != total:
      problems.append("%s: shards (row0, rows) %s do not tile its %d rows" % (var, rows, total))
    sparse = {sp for _, _, _, sp in sh}
    if sparse != {strategy == "parallax"}:
      problems.append("%s: sparse %s" % (var, sorted(sparse)))
  used = {s for sh in shards.values() for s, _, _, _ in sh}
  if shards and servers and used != set(range(servers)):
    problems.append("shards on servers %s of %d" % (sorted(used), servers))
  return ck.check(tag + ": plan.yaml layout", not problems, "; ".join(problems) or
                  "%d servers, shards %s" % (servers, {k: len(v) for k, v in shards.items()}))


# ------------------------------------------------------------ runs

def autodist_run(ck, autodist, d, tag, strategy, workers, steps, opts=(), data=None):
  """Compiles `d`/model.onnx with `strategy` for `workers` and runs `steps`
  steps on `data` ((x, y), written to d). Returns (metrics rows, saved
  initializers) or None after a failed check."""
  common.write_spec(os.path.join(d, "resource_spec.yml"), list(range(workers)))
  if data is not None:
    np.save(os.path.join(d, "x.npy"), data[0])
    np.save(os.path.join(d, "y.npy"), data[1])
  shutil.rmtree(os.path.join(d, "plan"), ignore_errors=True)
  if not common.run_checked(ck, tag + ": compile", [
      autodist, "compile", "model.onnx", "-r", "resource_spec.yml", "-t", "train.yml",
      "-s", strategy, "-o", "plan"] + list(opts), cwd=d, timeout=300):
    return None
  for f in ("m.jsonl", "out.onnx"):
    if os.path.exists(os.path.join(d, f)):
      os.remove(os.path.join(d, f))
  if not common.run_checked(ck, tag + ": run", [
      autodist, "run", "plan", "--data", "input=x.npy", "--data", "label=y.npy",
      "--steps", str(steps), "--metrics", "m.jsonl", "--save", "out.onnx"], cwd=d, timeout=300):
    return None
  try:
    rows = common.read_metrics(os.path.join(d, "m.jsonl"))
    saved = common.onnx_initializers(os.path.join(d, "out.onnx"))
  except Exception as e:  # noqa: BLE001 - any read failure is the finding
    ck.check(tag + ": metrics and saved model readable", False, str(e))
    return None
  got_steps = [r.get("step") for r in rows]
  if not ck.check(tag + ": metrics has steps 1..%d" % steps,
                  got_steps == list(range(1, steps + 1)),
                  "" if got_steps == list(range(1, steps + 1)) else "steps %s" % got_steps[:8]):
    return None
  return rows, saved


def compare_state(ck, name, saved, ref_state):
  """One check: every parameter of `ref_state` saved, each within TOL; names
  the worst parameter."""
  missing = sorted(set(ref_state) - set(saved))
  if missing:
    return ck.check(name, False, "missing from the saved model: %s" % ", ".join(missing))
  worst = (-1.0, "", -1)
  for k in ref_state:
    e, i = common.rel_err(saved[k], ref_state[k])
    if e > worst[0]:
      worst = (e, k, i)
  e, k, i = worst
  detail = "worst rel err %.3g in %s" % (e, k)
  if i >= 0:
    shape = ref_state[k].shape
    detail += " at %s (got %.7g, expected %.7g)" % (
        np.unravel_index(i, shape), saved[k].ravel()[i], ref_state[k].ravel()[i])
  return ck.check(name, e <= TOL, detail)


def exactness(ck, autodist, work):
  """The strategy x workers matrix against PyTorch and the 1-worker allreduce
  run. Returns the metrics of the embed runs on 2 workers by strategy."""
  embed_metrics = {}
  for name, opt in CASES:
    cfg = {"loss": "cross_entropy", "batch_size": BATCH, "optimizer": opt}
    ctag = "%s %s%s" % (name, opt["name"], " wd" if opt.get("weight_decay") else "")
    onnx_path = os.path.join(work, name + ".onnx")
    if not os.path.exists(onnx_path):
      models.export(name, onnx_path)
    x, y = case_data(name)
    ref_losses, ref_state = torch_train.train_onnx(name, onnx_path, x, y, cfg, STEPS)
    params = list(ref_state)
    shapes = {k: v.shape for k, v in ref_state.items()}
    tables = ["emb.weight"] if name in models.VOCAB else []
    base = None  # the 1-worker allreduce run
    for strategy in STRATEGIES:
      for workers in WORKERS:
        opts = SERVER_OPTS.get((strategy, workers), [])
        if strategy == "parallax" and not tables:
          opts = []  # no lookup table: server options are refused (exit 2)
        tag = "%s %s x%d%s" % (ctag, strategy, workers, (" " + " ".join(opts)) if opts else "")
        d = os.path.join(work, tag.replace(" ", "_").replace("--", ""))
        os.makedirs(d, exist_ok=True)
        shutil.copy(onnx_path, os.path.join(d, "model.onnx"))
        common.write_train(os.path.join(d, "train.yml"), cfg)
        res = autodist_run(ck, autodist, d, tag, strategy, workers, STEPS, opts, (x, y))
        if res is None:
          continue
        rows, saved = res
        check_layout(ck, tag, os.path.join(d, "plan"), strategy, workers, shapes, tables)
        losses = np.array([r.get("loss", np.nan) for r in rows], dtype=np.float64)
        common.check_close(ck, tag + ": per-step loss == PyTorch", losses, np.array(ref_losses),
                           TOL)
        compare_state(ck, tag + ": trained weights == PyTorch", saved, ref_state)
        if strategy == "allreduce" and workers == 1:
          base = (losses, saved)
        elif base is not None:
          common.check_close(ck, tag + ": per-step loss == 1-worker allreduce", losses, base[0],
                             TOL)
          compare_state(ck, tag + ": trained weights == 1-worker allreduce", saved,
                        {k: base[1][k] for k in params if k in base[1]})
        if name == "embed" and workers == 2:
          embed_metrics[strategy] = (rows, d)
  return embed_metrics


# ------------------------------------------------------------ bytes

def bytes_checks(ck, embed_metrics):
  """parallax moves rows, allreduce the whole table (embed, 2 workers)."""
  if "allreduce" not in embed_metrics or "parallax" not in embed_metrics:
    return ck.check("embed x2: bytes_sent of parallax vs allreduce", False,
                    "a run failed above")
  ar, d = embed_metrics["allreduce"]
  px, _ = embed_metrics["parallax"]
  inits = common.onnx_initializers(os.path.join(d, "model.onnx"))
  param_bytes = sum(v.nbytes for v in inits.values() if v.dtype.kind == "f")
  ar_b = [r.get("bytes_sent") for r in ar]
  px_b = [r.get("bytes_sent") for r in px]
  ck.check("embed x2 allreduce: bytes_sent = 2 x %d parameter bytes every step" % param_bytes,
           all(b == 2 * param_bytes for b in ar_b), "got %s" % sorted(set(map(str, ar_b)))[:4])
  if not all(isinstance(b, (int, float)) for b in px_b):
    return ck.check("embed x2 parallax: bytes_sent present", False, str(px_b[:4]))
  ratio = max(p / a for p, a in zip(px_b, ar_b))
  ck.check("embed x2: parallax bytes_sent <= 1/4 of allreduce's every step", ratio <= 0.25,
           "worst ratio %.4f (parallax %d, allreduce %d bytes in step 1)" % (
               ratio, px_b[0], ar_b[0]))
  # Lower bound: each worker pushes the gradient rows of its own distinct
  # tokens (32 floats each), and the dense rest is all-reduced (2 x bytes).
  x = np.load(os.path.join(d, "x.npy"))
  row_bytes = inits["emb.weight"].shape[1] * 4
  dense = param_bytes - inits["emb.weight"].nbytes
  short = []
  for k, b in enumerate(px_b):
    idx = (k * BATCH + np.arange(BATCH)) % x.shape[0]
    halves = np.split(x[idx], 2)
    need = sum(len(np.unique(h)) for h in halves) * row_bytes + 2 * dense
    if b < need:
      short.append("step %d: %d < %d" % (k + 1, b, need))
  ck.check("embed x2 parallax: bytes_sent >= pushed rows + dense all-reduce every step",
           not short, "; ".join(short[:3]) or "step 1: %d bytes" % px_b[0])


# ------------------------------------------------------------ sync modes

def teacher_data(n, seed=5):
  """A learnable 10-class problem for mlp_small: labels are the argmax of a
  fixed random linear map, 20% of them replaced by random classes, so the
  loss settles well above 0 (a relative comparison stays meaningful)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, size=(n, 64)).astype(np.float32)
  w = rng.standard_normal((10, 64)).astype(np.float32)
  y = np.argmax(x @ w.T, axis=1)
  flip = rng.random(n) < 0.2
  y[flip] = rng.integers(0, 10, size=int(flip.sum()))
  return x, y.astype(np.int64)


def keyword_docs(n, vocab=50000, seed=6):
  """Documents of 16 token ids for the embedding models, 4 classes: each
  token is one of its class's 100 keywords with probability 0.5, otherwise a
  word from the whole vocabulary; 10% of the labels are random. n = 20,000
  documents: 300 steps of 64 never see one twice, so the loss settles near
  the label noise floor instead of going to 0 by memorizing."""
  rng = np.random.default_rng(seed)
  keywords = rng.permutation(vocab)[:400].reshape(4, 100)
  y = rng.integers(0, 4, size=n)
  kw = keywords[y[:, None], rng.integers(0, 100, size=(n, 16))]
  x = np.where(rng.random((n, 16)) < 0.5, kw, rng.integers(0, vocab, size=(n, 16)))
  flip = rng.random(n) < 0.1
  y[flip] = rng.integers(0, 4, size=int(flip.sum()))
  return x.astype(np.int64), y.astype(np.int64)


def sync_modes(ck, autodist, work):
  steps = 300
  runs = [
      # (model, strategy, train.yml, data)
      ("mlp_small", "ps", {"batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05,
                                                           "momentum": 0.9}},
       teacher_data(4096)),
      ("embed", "parallax", {"batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}},
       keyword_docs(20000)),
  ]
  for name, strategy, cfg, data in runs:
    cfg = dict(cfg, loss="cross_entropy")
    onnx_path = os.path.join(work, name + ".onnx")
    if not os.path.exists(onnx_path):
      models.export(name, onnx_path)
    smooth = {}
    for mode in (["--sync"], ["--staleness", "2"], ["--async"]):
      tag = "%s %s x2 %s %d steps" % (name, strategy, " ".join(mode), steps)
      d = os.path.join(work, tag.replace(" ", "_").replace("--", ""))
      os.makedirs(d, exist_ok=True)
      shutil.copy(onnx_path, os.path.join(d, "model.onnx"))
      common.write_train(os.path.join(d, "train.yml"), cfg)
      res = autodist_run(ck, autodist, d, tag, strategy, 2, steps, mode, data)
      if res is None:
        continue
      losses = np.array([r.get("loss", np.nan) for r in res[0]], dtype=np.float64)
      if not ck.check(tag + ": losses finite", np.all(np.isfinite(losses))):
        continue
      smooth[mode[0]] = (losses[0], float(np.mean(losses[-10:])))
      print("info %s: loss step 1 %.5f, mean of steps %d-%d %.5f" % (
          tag, losses[0], steps - 9, steps, smooth[mode[0]][1]), flush=True)
    if "--sync" not in smooth:
      continue
    first, ref = smooth["--sync"]
    ck.check("%s %s x2 --sync: learnt (last-10 mean < 0.75 x step 1 loss)" % (name, strategy),
             ref < 0.75 * first, "%.5f -> %.5f" % (first, ref))
    for mode in ("--staleness", "--async"):
      if mode in smooth:
        got = smooth[mode][1]
        ck.check("%s %s x2 %s: last-10 mean loss within 10%% of --sync's" % (
            name, strategy, mode), abs(got - ref) <= 0.1 * ref,
            "%.5f vs sync %.5f (%+.1f%%)" % (got, ref, 100.0 * (got - ref) / ref))


def main():
  ck = common.Checks()
  work = common.tmpdir("strategies-vs-torch")
  autodist = common.autodist_path()
  if not ck.check("autodist binary exists", os.access(autodist, os.X_OK), autodist):
    return ck.close()
  embed_metrics = exactness(ck, autodist, work)
  bytes_checks(ck, embed_metrics)
  sync_modes(ck, autodist, work)
  if ck.failed == 0:
    shutil.rmtree(work, ignore_errors=True)
  else:
    print("work files kept in %s" % work)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
