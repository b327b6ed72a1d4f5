#!/usr/bin/env python3
"""tests/ref/test_checkpoint.py: `run --checkpoint DIR --checkpoint-every N`
and `run --checkpoint DIR --resume` (docs/cli.md, "Checkpoints").

A run that is killed and resumed from its last checkpoint must train exactly
the run that was never interrupted: the same final weights, bit for bit, and
the same loss at every step. Cases, each on 2 CPU workers with Adam (state
tensors and the step number both matter) and --shuffle (the data order
crosses epochs): allreduce and ps on the small MLP, parallax with 2 servers
on the small embedding model (the table lives on the servers, the rest is
all-reduced). For each:

  1. a run of many steps with --checkpoint d --checkpoint-every 5 --metrics;
     once d holds a checkpoint at step >= 10, worker rank 1 (its pid from the
     run folder) gets SIGKILL: `run` must exit 1. Steps take microseconds, so
     the run cannot be stopped at a chosen step; the test takes the newest
     checkpoint c it left (at most 2 of them, a multiple of 5);
  2. the same command with --resume and --steps S, S = c + 7 (--steps counts
     from the start of the run), appending to the same --metrics file;
  3. an uninterrupted run of S steps.
The saved initializers of 2 and 3 must be equal bit for bit; the metrics file
of 1+2 must hold steps 1..S once each (the lines the killed run wrote after
step c are dropped) with the losses of 3; d must then hold ckpt-(c+5) and
ckpt-S only (the last two). In the allreduce case, d also gets a damaged
newer checkpoint (a cut copy named ckpt-(c+100)) and a leftover
ckpt-(c+1).tmp: resuming must skip both (a warning names the damaged one)
and remove them.

Errors, exit 2 before any process starts: resuming with another plan's
checkpoint (the message names the checkpoint), from an empty folder, from a
folder of checkpoints with another --shuffle seed, a fresh --checkpoint run
into a folder that holds checkpoints, and --checkpoint on a plan compiled
with --async.

Env: AUTODIST (binary), AD_SRC (repository root). Run: /usr/bin/python3 THIS.
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402

BATCH = 12
N = 40  # not a multiple of BATCH: epochs wrap inside a batch
EVERY = 5
SEED = 7
TRAIN = {"loss": "cross_entropy", "batch_size": BATCH, "optimizer": {"name": "adam", "lr": 2e-3}}

# (tag, model, strategy, extra compile options)
CASES = [
    ("allreduce", "mlp_small", "allreduce", []),
    ("ps", "mlp_small", "ps", []),
    ("parallax", "embed_small", "parallax", ["--servers", "2"]),
]


def data(name):
  x, y = common.random_data(models.sample_shape(name), N, "classes", seed=5,
                            outputs=models.outputs(name))
  if name in models.VOCAB:
    rng = np.random.default_rng(6)
    x = rng.integers(0, models.VOCAB[name], size=x.shape).astype(np.int64)
  return x, y


def ckpt_steps(d):
  """Steps of the ckpt-<k> files in d, ascending."""
  if not os.path.isdir(d):
    return []
  return sorted(int(m.group(1)) for m in (re.fullmatch(r"ckpt-(\d+)", f) for f in os.listdir(d))
                if m)


def run_args(autodist, plan, steps, extra=()):
  return [autodist, "run", plan, "--data", "input=x.npy", "--data", "label=y.npy", "--steps",
          str(steps), "--shuffle", str(SEED)] + list(extra)


def killed_run(ck, tag, autodist, d, tmp):
  """Step 1: starts a long run with checkpoints, SIGKILLs worker 1 once a
  checkpoint at step >= 10 exists. Returns True when it went as expected."""
  env = dict(os.environ, TMPDIR=tmp)
  p = subprocess.Popen(run_args(autodist, "plan", 10 ** 7, [
      "--checkpoint", "ckpt", "--checkpoint-every", str(EVERY), "--metrics", "m.jsonl"]),
      cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  pid, deadline = None, time.time() + 60
  while time.time() < deadline and p.poll() is None:
    pids = glob.glob(os.path.join(tmp, "autodist-run.*", "rank1.pid"))
    if pids and any(k >= 10 for k in ckpt_steps(os.path.join(d, "ckpt"))):
      try:
        with open(pids[0]) as f:
          pid = int(f.read().split()[0])
        os.kill(pid, signal.SIGKILL)
        break
      except (OSError, ValueError, IndexError):
        pid = None
    time.sleep(0.002)
  if pid is None:
    p.kill()
  try:
    out = p.communicate(timeout=60)[0].decode("utf-8", "replace")
  except subprocess.TimeoutExpired:
    p.kill()
    out = p.communicate()[0].decode("utf-8", "replace")
  last = out.strip().splitlines()[-1:] or [""]
  return ck.check(tag + ": SIGKILL of worker rank 1 after a checkpoint at step >= 10: run exits 1",
                  pid is not None and p.returncode == 1,
                  "pid %s, exit %s: %s" % (pid, p.returncode, last[0]))


def saved_bits(path):
  return {k: v.tobytes() for k, v in common.onnx_initializers(path).items()}


def case(ck, autodist, work, tag, name, strategy, copts):
  d = os.path.join(work, tag)
  os.makedirs(d)
  tmp = os.path.join(d, "tmp")
  os.makedirs(tmp)
  shutil.copy(os.path.join(work, name + ".onnx"), os.path.join(d, "model.onnx"))
  x, y = data(name)
  np.save(os.path.join(d, "x.npy"), x)
  np.save(os.path.join(d, "y.npy"), y)
  common.write_spec(os.path.join(d, "resource_spec.yml"), [0, 1])
  common.write_train(os.path.join(d, "train.yml"), TRAIN)
  if not common.run_checked(ck, tag + ": compile", [
      autodist, "compile", "model.onnx", "-s", strategy, "-o", "plan"] + copts, cwd=d):
    return
  if not killed_run(ck, tag, autodist, d, tmp):
    return
  cdir = os.path.join(d, "ckpt")
  left = ckpt_steps(cdir)
  c = left[-1] if left else 0
  ck.check(tag + ": the killed run left at most 2 checkpoints, the newest at a multiple of %d >= 10"
           % EVERY, 1 <= len(left) <= 2 and c >= 10 and c % EVERY == 0, "left %s" % left)
  S = c + 7
  damaged = None
  if tag == "allreduce":
    damaged = "ckpt-%d" % (c + 100)
    with open(os.path.join(cdir, "ckpt-%d" % c), "rb") as f:
      body = f.read()
    with open(os.path.join(cdir, damaged), "wb") as f:
      f.write(body[:len(body) // 2])
    with open(os.path.join(cdir, "ckpt-%d.tmp" % (c + 1)), "wb") as f:
      f.write(body[:100])
  rc, out = common.run(run_args(autodist, "plan", S, [
      "--checkpoint", "ckpt", "--checkpoint-every", str(EVERY), "--resume", "--metrics", "m.jsonl",
      "--save", "B.onnx"]), cwd=d)
  if not ck.check(tag + ": resume from ckpt-%d to step %d" % (c, S), rc == 0,
                  "exit %d: %s" % (rc, out.strip()[-400:])):
    return
  said = "resuming from ckpt/ckpt-%d (step %d)" % (c, c)
  ck.check(tag + ": resume says '%s'" % said, said in out, "" if said in out else out[-300:])
  if damaged:
    warned = "warning: ckpt/%s:" % damaged in out
    ck.check(tag + ": the damaged newer checkpoint is skipped with a warning", warned,
             "" if warned else out[-300:])
  ck.check(tag + ": the folder keeps the last 2 checkpoints (ckpt-%d, ckpt-%d) and nothing else"
           % (c + EVERY, S), sorted(os.listdir(cdir)) == ["ckpt-%d" % (c + EVERY), "ckpt-%d" % S],
           "holds %s" % sorted(os.listdir(cdir)))
  if not common.run_checked(ck, tag + ": uninterrupted run of %d steps" % S, run_args(
      autodist, "plan", S, ["--metrics", "a.jsonl", "--save", "A.onnx"]), cwd=d):
    return
  a, b = saved_bits(os.path.join(d, "A.onnx")), saved_bits(os.path.join(d, "B.onnx"))
  diff = sorted(k for k in a if a[k] != b.get(k))
  ck.check(tag + ": final weights of the resumed run equal the uninterrupted run's bit for bit",
           a and set(a) == set(b) and not diff, "differ: %s" % diff if diff else
           "%d initializers" % len(a))
  ma = common.read_metrics(os.path.join(d, "a.jsonl"))
  mb = common.read_metrics(os.path.join(d, "m.jsonl"))
  steps_b = [r["step"] for r in mb]
  ck.check(tag + ": the metrics file holds steps 1..%d once each (killed run + resumed run)" % S,
           steps_b == list(range(1, S + 1)), "steps %s" % steps_b[max(0, c - 3):c + 10])
  bad = [r["step"] for r, q in zip(mb, ma) if r["loss"] != q["loss"]]
  ck.check(tag + ": every step's loss equals the uninterrupted run's", len(ma) == S and not bad
           and len(mb) == S, "differ at steps %s" % bad[:10])
  return d


def errors(ck, autodist, work, dirs):
  """Exit-2 cases; dirs: tag -> the case folder (with plan/ and ckpt/)."""
  ar, ps = dirs.get("allreduce"), dirs.get("ps")
  if not ar or not ps:
    return ck.check("error cases need the allreduce and ps cases", False)
  ar_ckpt = os.path.join(ar, "ckpt")
  newest = ckpt_steps(ar_ckpt)[-1]

  def expect(what, args, cwd, pattern):
    rc, out = common.run(args, cwd=cwd)
    ck.check(what + ": exit 2, " + pattern, rc == 2 and re.search(pattern, out),
             "exit %d: %s" % (rc, out.strip()[-300:]))

  expect("resume with another plan's checkpoint (same model, allreduce's, on the ps plan)",
         run_args(autodist, "plan", newest + 5, ["--checkpoint", ar_ckpt, "--resume"]), ps,
         re.escape("%s/ckpt-%d: error:" % (ar_ckpt, newest)) + ".*another plan")
  os.makedirs(os.path.join(work, "empty"))
  expect("resume from an empty folder", run_args(autodist, "plan", 20, [
      "--checkpoint", os.path.join(work, "empty"), "--resume"]), ar, "no checkpoint in")
  expect("resume with another --shuffle seed", [
      autodist, "run", "plan", "--data", "input=x.npy", "--data", "label=y.npy", "--steps",
      str(newest + 5), "--shuffle", "8", "--checkpoint", "ckpt", "--resume"], ar,
      r"ckpt-%d: error: .*--shuffle 7, this run has --shuffle 8" % newest)
  expect("a fresh run into a folder holding checkpoints", run_args(autodist, "plan", 20, [
      "--checkpoint", "ckpt"]), ar, "holds checkpoints already")
  if common.run_checked(ck, "compile ps --async", [
      autodist, "compile", "model.onnx", "-s", "ps", "--async", "-o", "plan_async"], cwd=ps):
    expect("--checkpoint on an --async plan", run_args(autodist, "plan_async", 20, [
        "--checkpoint", "ckpt_async"]), ps, "--checkpoint: .*--async.*--sync")
    ck.check("the refused --async run made no folder",
             not os.path.exists(os.path.join(ps, "ckpt_async")))


def main():
  ck = common.Checks()
  autodist = common.autodist_path()
  work = common.tmpdir("checkpoint")
  try:
    for name in {m for _, m, _, _ in CASES}:
      models.export(name, os.path.join(work, name + ".onnx"))
    dirs = {}
    for tag, name, strategy, copts in CASES:
      dirs[tag] = case(ck, autodist, work, tag, name, strategy, copts)
    errors(ck, autodist, work, dirs)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
