#!/usr/bin/env python3
"""bench/strategies.py: each strategy's predicted cost against its measured one.

`autodist compile --explain` prints the cost model's prediction for every
candidate strategy, and `-s auto` picks the fastest predicted one. This bench
checks the prediction against reality on three models, each trained on two CPU
workers (a resource spec with `cpus: [0, 1]`) at global batch 64:

  mlp    784-512-512-10 (tests/ref/models.py), SGD lr 0.01 momentum 0.9,
         random MNIST-shaped data (as bench/run.py)
  cnn    PyTorch's MNIST-example CNN (tests/ref/models.py), same optimizer/data
  embed  examples/embedding: a 50,000x32 embedding table; its own model.onnx,
         train.yml (Adam) and x_train/y_train

For each model it compiles every candidate (allreduce, ps, ps-lb,
partitioned-ps, parallax) with --explain and reads, from the candidate's own
row of the table, the predicted step ms and bytes/step; `-s auto --explain`
says which one auto chooses. Then it runs every candidate with --metrics,
interleaved over --rounds rounds (strategy order rotated each round) so that a
slow phase of the machine hits all of them alike. Per run, after WARMUP steps:

  measured step ms  median of the deltas of elapsed_sec between steps
  samples/s         median of samples_per_sec
  bytes/step        median of bytes_sent

and the table shows the median of these over the rounds. The ranks are 1 for
the fastest; predicted times within TIE (5%) of each other share a rank (ps,
ps-lb and partitioned-ps are one plan when there is one server on one node).
Of every pair of strategies it counts whether the measured order agrees with
the predicted one; a pair predicted within TIE is a tie and agrees in either
order. Discordant pairs are listed.

It measures, never asserts: the exit status is 0 even when the orders
disagree, 1 only when a compile or a run failed (its command and output are
printed). Compilation and process start-up are outside the timings; every
worker runs with OMP/OpenBLAS/MKL threads set to 1.

    /usr/bin/python3 bench/strategies.py [--rounds 5] [--models mlp,cnn,embed]
        [--steps N] [--autodist PATH] [--out tables.json] [--keep]

AUTODIST (or build/autodist) is the binary. A full run takes about 2-5
minutes on two cores (more when the machine is busy: the last line prints the
load average, to judge how quiet it was).
"""
import argparse
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))

# bench/run.py's constants and helpers, loaded by path ("run" is too common a
# module name to put bench/ on sys.path for).
_spec = importlib.util.spec_from_file_location("ad_bench_run", os.path.join(HERE, "run.py"))
adrun = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(adrun)

CANDIDATES = ["allreduce", "ps", "ps-lb", "partitioned-ps", "parallax"]
MODELS = ["mlp", "cnn", "embed"]
BATCH = adrun.BATCH
WARMUP = adrun.WARMUP
TIE = 0.05
# Steps per run: enough for a stable median after the warm-up, few enough that
# 3 models x 5 strategies x 5 rounds fit in a few minutes. Other work on this
# shared machine comes in bursts of tens of seconds; more, shorter rounds let
# the median over rounds step over a disturbed one.
STEPS = {"mlp": 150, "cnn": 45, "embed": 150}
RUN_TIMEOUT = 120
EMBED_DIR = os.path.join(REPO, "examples", "embedding")


# ---------------------------------------------------------------- --explain

UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
VALUE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*(?:[kMG]i?B|B)\b)?|-(?=\s|$)")


def to_number(text):
  """'296.1 kB' -> 296100.0, '7.528' -> 7.528, '-' -> None."""
  text = text.strip()
  if text == "-":
    return None
  m = re.match(r"(-?[\d.eE+-]+)\s*([A-Za-z]+)?$", text)
  if not m:
    raise ValueError("not a number: %r" % text)
  return float(m.group(1)) * UNITS.get(m.group(2) or "B", 1)


def parse_explain(text):
  """The --explain table of `text`: (title line, {strategy: {column: value}},
  chosen strategy). Columns are named by the header row (split at runs of 2+
  spaces), so a column added or moved keeps the parse right; values with a
  unit ("12.82 MB") are bytes."""
  lines = text.splitlines()
  head = None
  for i, line in enumerate(lines):
    if line.split()[:1] == ["strategy"] and "step ms" in line:
      head = i
      break
  if head is None:
    raise ValueError("no --explain table (header with 'strategy' and 'step ms') in:\n" + text)
  cols = re.split(r"\s{2,}", lines[head].strip())
  title = lines[head - 1].strip() if head > 0 else ""
  rows, chosen = {}, None
  for line in lines[head + 1:]:
    words = line.split()
    if not words or words[0] not in CANDIDATES:
      if rows:
        break
      continue
    body = line.strip()[len(words[0]):]
    if "<-" in body:
      body, mark = body.split("<-", 1)
      if "chosen" in mark:
        chosen = words[0]
    vals = [to_number(v) for v in VALUE.findall(body)]
    if len(vals) != len(cols) - 1:
      raise ValueError("explain row %r: %d values for columns %s" % (line, len(vals), cols[1:]))
    rows[words[0]] = dict(zip(cols[1:], vals))
  m = re.search(r"^strategy:\s*(\S+)", text, re.M)
  if m:
    chosen = m.group(1)
  return title, rows, chosen


# ---------------------------------------------------------------- runs

def run_job(cmd, log, env, cwd=None, timeout=RUN_TIMEOUT):
  """Runs `cmd` in its own session (mpirun and its workers and servers form
  one process group, killed together on a timeout); output to `log`. Returns
  the exit status, 124 on a timeout."""
  with open(log, "w") as f:
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                         start_new_session=True)
    try:
      return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
      f.write("\n(killed after %d s)\n" % timeout)
      return 124


def shell_line(cmd):
  import shlex
  return " ".join(shlex.quote(c) for c in cmd)


class Model:
  """One model's files: model.onnx, train.yml, spec.yml, data, in `d`."""

  def __init__(self, name, work):
    self.name = name
    self.d = os.path.join(work, name)
    os.makedirs(self.d, exist_ok=True)
    self.spec = os.path.join(self.d, "spec.yml")
    import common
    common.write_spec(self.spec, [0, 1])
    if name == "embed":
      self.onnx = os.path.join(EMBED_DIR, "model.onnx")
      self.train = os.path.join(EMBED_DIR, "train.yml")
      self.data = {"input": os.path.join(EMBED_DIR, "x_train.npy"),
                   "label": os.path.join(EMBED_DIR, "y_train.npy")}
      return
    import numpy as np
    import models
    self.onnx = os.path.join(self.d, "model.onnx")
    models.export(name, self.onnx)
    rng = np.random.default_rng(0)
    n = BATCH * 8
    x = rng.standard_normal((n,) + models.sample_shape(name)).astype(np.float32)
    y = rng.integers(0, 10, size=(n,)).astype(np.int64)
    self.data = {"input": os.path.join(self.d, "x.npy"), "label": os.path.join(self.d, "y.npy")}
    np.save(self.data["input"], x)
    np.save(self.data["label"], y)
    self.train = os.path.join(self.d, "train.yml")
    common.write_train(self.train, {"loss": "cross_entropy", "batch_size": BATCH,
                                    "optimizer": adrun.OPT})


class Bench:
  def __init__(self, a, work):
    self.a = a
    self.work = work
    self.env = dict(os.environ, **adrun.THREAD_ENV)
    self.models = {}
    self.predicted = {}   # model -> {strategy: {column: value}}
    self.title = {}       # model -> the table's title line
    self.auto = {}        # model -> strategy -s auto chose
    self.runs = {}        # (model, strategy) -> list of (step ms, samples/s, bytes/step)
    self.failed = []      # (model, strategy, what)

  def fail(self, model, strategy, what, cmd, log_or_text):
    text = adrun.log_tail(log_or_text, 15) if os.path.exists(log_or_text) else log_or_text
    print("FAILED %s %s %s:\n  $ %s\n  %s" % (model, strategy, what, shell_line(cmd),
                                               text.strip().replace("\n", "\n  ")), flush=True)
    self.failed.append((model, strategy, what))

  def compile(self, name, strategy):
    """Compiles plan_STRATEGY with --explain; returns the output or None."""
    m = self.models[name]
    cmd = [self.a.autodist, "compile", m.onnx, "-r", m.spec, "-t", m.train, "-s", strategy,
           "-o", os.path.join(m.d, "plan_" + strategy), "--explain"]
    log = os.path.join(m.d, "compile_%s.log" % strategy)
    rc = run_job(cmd, log, self.env, cwd=m.d)
    with open(log) as f:
      out = f.read()
    if rc != 0:
      self.fail(name, strategy, "compile (exit %d)" % rc, cmd, log)
      return None
    return out

  def prepare(self, name):
    self.models[name] = Model(name, self.work)
    self.predicted[name] = {}
    for s in CANDIDATES + ["auto"]:
      out = self.compile(name, s)
      if out is None:
        continue
      try:
        title, rows, chosen = parse_explain(out)
      except ValueError as e:
        self.fail(name, s, "parsing --explain", ["(output of compile)"], str(e))
        continue
      self.title[name] = title
      if s == "auto":
        self.auto[name] = chosen
      elif s in rows:
        # The candidate's own compile is the authority for its row.
        self.predicted[name][s] = rows[s]
      else:
        self.fail(name, s, "--explain has no row for it", ["(output of compile)"], out)

  def run(self, name, strategy, r):
    """One run of plan_STRATEGY; returns (step ms, samples/s, bytes/step) or None."""
    m = self.models[name]
    plan = os.path.join(m.d, "plan_" + strategy)
    if not os.path.isdir(plan):
      return None
    metrics = os.path.join(m.d, "m_%s_%d.jsonl" % (strategy, r))
    log = os.path.join(m.d, "run_%s_%d.log" % (strategy, r))
    cmd = [self.a.autodist, "run", plan]
    for k, v in m.data.items():
      cmd += ["--data", "%s=%s" % (k, v)]
    cmd += ["--steps", str(self.a.steps or STEPS[name]), "--metrics", metrics]
    rc = run_job(cmd, log, self.env, cwd=m.d)
    if rc != 0:
      self.fail(name, strategy, "run (exit %d)" % rc, cmd, log)
      return None
    import common
    rows = common.read_metrics(metrics)
    if len(rows) <= WARMUP + 1:
      self.fail(name, strategy, "run: %d metrics rows, need > %d" % (len(rows), WARMUP + 1), cmd,
                log)
      return None
    t = [row["elapsed_sec"] for row in rows]
    steady = rows[WARMUP:]
    step_ms = round(statistics.median(1e3 * (t[i] - t[i - 1]) for i in range(WARMUP, len(t))), 4)
    sps = statistics.median(row["samples_per_sec"] for row in steady)
    sent = statistics.median(row.get("bytes_sent", 0) for row in steady)
    return step_ms, sps, sent

  def round(self, r):
    for name in self.a.models:
      order = CANDIDATES[r % len(CANDIDATES):] + CANDIDATES[:r % len(CANDIDATES)]
      for s in order:
        if s not in self.predicted.get(name, {}):
          continue
        res = self.run(name, s, r)
        print("round %d %-5s %-14s %s" % (r + 1, name, s, "failed" if res is None else
                                           "%8.3f ms/step %9.1f samples/s %12.0f bytes/step" %
                                           res), flush=True)
        if res is not None:
          self.runs.setdefault((name, s), []).append(res)

  # -------------------------------------------------------------- report

  def measured(self, name, s, i):
    v = self.runs.get((name, s))
    return statistics.median(x[i] for x in v) if v else None

  def table(self, name):
    """The model's rows, ranks, pair agreement and summary, as a dict."""
    pred = self.predicted.get(name, {})
    rows = []
    for s in CANDIDATES:
      p = pred.get(s)
      rows.append({
          "strategy": s,
          "predicted_step_ms": p.get("step ms") if p else None,
          "measured_step_ms": self.measured(name, s, 0),
          "predicted_bytes_per_step": p.get("bytes/step") if p else None,
          "measured_bytes_per_step": self.measured(name, s, 2),
          "samples_per_sec": self.measured(name, s, 1),
          # Per run (in round order): step ms, samples/s, bytes/step; to judge
          # the spread, or to take another statistic than the median.
          "runs": self.runs.get((name, s), []),
      })
    # Predicted rank: sorted by prediction, one rank for a run of values each
    # within TIE of the previous; measured rank: plain order.
    by_pred = sorted((r for r in rows if r["predicted_step_ms"] is not None),
                     key=lambda r: r["predicted_step_ms"])
    prev = None
    for i, r in enumerate(by_pred):
      if prev is not None and tied(prev["predicted_step_ms"], r["predicted_step_ms"]):
        r["rank_predicted"] = prev["rank_predicted"]
      else:
        r["rank_predicted"] = i + 1
      prev = r
    both = [r for r in rows if r["predicted_step_ms"] is not None and
            r["measured_step_ms"] is not None]
    for i, r in enumerate(sorted(both, key=lambda r: r["measured_step_ms"])):
      r["rank_measured"] = i + 1
    agree, ties, discordant = 0, 0, []
    for i in range(len(both)):
      for j in range(i + 1, len(both)):
        a, b = both[i], both[j]
        if tied(a["predicted_step_ms"], b["predicted_step_ms"]):
          ties += 1
          agree += 1
        elif ((a["predicted_step_ms"] < b["predicted_step_ms"]) ==
              (a["measured_step_ms"] < b["measured_step_ms"])):
          agree += 1
        else:
          fast, slow = (a, b) if a["predicted_step_ms"] < b["predicted_step_ms"] else (b, a)
          discordant.append(
              "%s predicted faster than %s (%.3f < %.3f ms) but measured slower (%.3f > %.3f ms)"
              % (fast["strategy"], slow["strategy"], fast["predicted_step_ms"],
                 slow["predicted_step_ms"], fast["measured_step_ms"], slow["measured_step_ms"]))
    n = len(both) * (len(both) - 1) // 2
    fastest = min(both, key=lambda r: r["measured_step_ms"])["strategy"] if both else None
    t = {"title": self.title.get(name, ""), "batch": BATCH, "rounds": self.a.rounds,
         "steps": self.a.steps or STEPS[name], "warmup": WARMUP, "rows": rows,
         "auto": self.auto.get(name), "fastest_measured": fastest, "pairs": n,
         "pairs_agree": agree, "pairs_tied": ties, "discordant": discordant}
    if name == "embed":
      par = next(r for r in rows if r["strategy"] == "parallax")
      ar = next(r for r in rows if r["strategy"] == "allreduce")
      t["parallax_over_allreduce"] = {
          "bytes_measured": ratio(par["measured_bytes_per_step"], ar["measured_bytes_per_step"]),
          "bytes_predicted": ratio(par["predicted_bytes_per_step"],
                                   ar["predicted_bytes_per_step"]),
          "samples_per_sec": ratio(par["samples_per_sec"], ar["samples_per_sec"]),
          "step_ms_predicted": ratio(par["predicted_step_ms"], ar["predicted_step_ms"]),
      }
    return t

  def report(self):
    tables = {}
    for name in self.a.models:
      t = self.table(name)
      tables[name] = t
      print("\n%s: batch %d, %s; medians over %d rounds of %d steps (after %d warm-up)" % (
          name, BATCH, t["title"] or "2 workers", self.a.rounds, t["steps"], WARMUP))
      print("  %-14s %9s %9s %11s %11s %10s %5s %5s" % (
          "strategy", "pred ms", "meas ms", "pred B/st", "meas B/st", "samples/s", "rk-p",
          "rk-m"))
      for r in t["rows"]:
        print("  %-14s %9s %9s %11s %11s %10s %5s %5s" % (
            r["strategy"], fmt(r["predicted_step_ms"], "%.3f"), fmt(r["measured_step_ms"], "%.3f"),
            fmt_bytes(r["predicted_bytes_per_step"]), fmt_bytes(r["measured_bytes_per_step"]),
            fmt(r["samples_per_sec"], "%.0f"), fmt(r.get("rank_predicted"), "%d"),
            fmt(r.get("rank_measured"), "%d")))
      print("  auto chose %s; fastest measured %s" % (t["auto"] or "?", t["fastest_measured"]
                                                     or "?"))
      print("  predicted order agrees with measured on %d of %d pairs (%d predicted ties "
            "within %d%%, counted as agreeing)" % (t["pairs_agree"], t["pairs"],
                                                    t["pairs_tied"], TIE * 100))
      for d in t["discordant"]:
        print("  discordant: " + d)
      if "parallax_over_allreduce" in t:
        q = t["parallax_over_allreduce"]
        print("  parallax / allreduce: bytes/step %s (predicted %s), samples/s %s "
              "(predicted speed-up %s)" % (
                  fmt(q["bytes_measured"], "%.4f"), fmt(q["bytes_predicted"], "%.4f"),
                  fmt(q["samples_per_sec"], "%.2f"),
                  fmt(1 / q["step_ms_predicted"] if q["step_ms_predicted"] else None, "%.2f")))
    if self.a.out:
      with open(self.a.out, "w") as f:
        json.dump(tables, f, indent=1)


def tied(a, b):
  return abs(a - b) <= TIE * min(a, b)


def ratio(a, b):
  return round(a / b, 5) if a is not None and b else None


def fmt(v, f):
  return (f % v) if v is not None else "-"


def fmt_bytes(v):
  if v is None:
    return "-"
  for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if v >= scale:
      return "%.2f %s" % (v / scale, unit)
  return "%.0f B" % v


def main(argv):
  import common
  ap = argparse.ArgumentParser(description="predicted vs measured cost of each strategy")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--steps", type=int, help="steps per run (default: mlp %(mlp)d, cnn %(cnn)d, "
                  "embed %(embed)d)" % STEPS)
  ap.add_argument("--autodist", default=common.autodist_path())
  ap.add_argument("--out", help="also write the tables here as JSON")
  ap.add_argument("--keep", action="store_true", help="keep the work folder (plans, logs)")
  a = ap.parse_args(argv[1:])
  a.models = a.models.split(",")
  a.autodist = os.path.abspath(a.autodist)   # compiles and runs happen in the work folder
  bad = [m for m in a.models if m not in MODELS]
  if bad:
    ap.error("unknown model %s (choose from %s)" % (", ".join(bad), ", ".join(MODELS)))
  if a.steps is not None and a.steps <= WARMUP + 1:
    ap.error("--steps must exceed the %d warm-up steps by at least 2" % WARMUP)
  if not os.access(a.autodist, os.X_OK):
    print("bench: %s not found (build first, or --autodist)" % a.autodist)
    return 1
  work = tempfile.mkdtemp(prefix="ad-bench-strat-")
  b = Bench(a, work)
  t0 = time.time()
  load0 = os.getloadavg()[0]
  for name in a.models:
    b.prepare(name)
  for r in range(a.rounds):
    b.round(r)
  b.report()
  # Other work on the machine moves every figure; the load says how quiet it was.
  print("\n(1-minute load average %.2f at the start, %.2f at the end)" % (load0,
                                                                        os.getloadavg()[0]))
  if b.failed or a.keep:
    print("\n(total %.0f s; work files in %s)" % (time.time() - t0, work))
  else:
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    print("\n(total %.0f s)" % (time.time() - t0))
  return 1 if b.failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
