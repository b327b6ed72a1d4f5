#!/usr/bin/env python3
"""bench/infer.py: batched inference, autodist against PyTorch and onnxruntime.

Runs the eval-mode exports of tests/ref/models.py's real models (resnet18 on
3x64x64 images, the transformer encoder at opset 17 on 12 tokens) over a data
file of N_SAMPLES samples, in batches of BATCH, with six contenders:

  autodist x1     `autodist compile --infer --batch 64` for `cpus: [0]`, then
                  `autodist run PLAN --data --out --metrics`
  autodist x2     the same plan compiled for `cpus: [0, 1]` (data-parallel)
  pytorch x1      the nn.Module in eval mode under torch.no_grad(), 1 thread
  pytorch x2      the same with torch.set_num_threads(2)
  ort x1          onnxruntime CPU session, intra_op_num_threads 1
  ort x2          the same with 2 threads

The contenders alternate over several rounds; the table shows medians over
the rounds of samples/s in the steady state (autodist: the median of
"samples_per_sec" in --metrics after the warm-up batches; the others: BATCH /
median batch time after the same warm-up) and the peak RSS of the largest
process. Compilation, model loading and process start-up are outside the
timings. Every process runs with OMP/OpenBLAS/MKL threads set to 1 except
where the contender sets its own thread count.

    /usr/bin/python3 bench/infer.py [--rounds 3] [--models resnet18,encoder17] [--autodist PATH]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (measured_run, log_tail, thread settings)

BATCH = 64
N_SAMPLES = {"resnet18": 1024, "encoder17": 8192, "encoder": 8192}
WARMUP = 3


# ---------------------------------------------------------------- child side

def child(kind, threads, model, data, out):
  """Runs `model` over `data` in batches with PyTorch or onnxruntime; writes the
  per-batch times (seconds) as JSON to `out`."""
  os.sched_setaffinity(0, set(range(min(threads, os.cpu_count()))))
  import numpy as np
  x = np.load(data)
  times = []
  if kind == "torch":
    import torch
    import models
    torch.set_num_threads(threads)
    m = models.build(model)
    with torch.no_grad():
      for i in range(0, x.shape[0], BATCH):
        xb = torch.from_numpy(x[i:i + BATCH])
        t0 = time.perf_counter()
        m(xb)
        times.append(time.perf_counter() - t0)
  else:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(os.path.dirname(data), "model.onnx"), so,
                             providers=["CPUExecutionProvider"])
    for i in range(0, x.shape[0], BATCH):
      xb = x[i:i + BATCH]
      t0 = time.perf_counter()
      s.run(None, {"input": xb})
      times.append(time.perf_counter() - t0)
  with open(out, "w") as f:
    json.dump({"batch_times": times}, f)


# ---------------------------------------------------------------- parent side

class Bench(bench_run.Bench):
  """run.py's interleaved rounds and medians, with inference contenders: each
  kind below is a method returning (samples/s, peak RSS MiB) or None."""
  CONTENDERS = [("autodist x1", "autodist", 1), ("pytorch x1", "torch", 1), ("ort x1", "ort", 1),
                ("autodist x2", "autodist", 2), ("pytorch x2", "torch", 2), ("ort x2", "ort", 2)]

  def prepare(self, model):
    import numpy as np
    import common
    import models
    d = os.path.join(self.work, model)
    os.makedirs(d)
    models.export(model, os.path.join(d, "model.onnx"))
    rng = np.random.default_rng(0)
    shape = (N_SAMPLES[model],) + tuple(models.sample_shape(model))
    if model in models.VOCAB:
      x = rng.integers(0, models.VOCAB[model], size=shape).astype(np.int64)
    else:
      x = rng.standard_normal(shape).astype(np.float32)
    np.save(os.path.join(d, "x.npy"), x)
    for w in (1, 2):
      common.write_spec(os.path.join(d, "spec%d.yml" % w), list(range(w)))
      rc, out = common.run([self.a.autodist, "compile", "model.onnx", "--infer", "--batch",
                            str(BATCH), "-r", "spec%d.yml" % w, "-o", "plan%d" % w], cwd=d,
                           env=self.env)
      if rc != 0:
        print("autodist compile --infer (%s, %d workers) failed:\n%s" % (model, w, out),
              flush=True)

  def autodist(self, model, w):
    d = os.path.join(self.work, model)
    plan = os.path.join(d, "plan%d" % w)
    if not os.path.isdir(plan):
      return None
    metrics = os.path.join(d, "m%d.jsonl" % w)
    log = os.path.join(d, "autodist%d.log" % w)
    rc, mib, _ = bench_run.measured_run(
        [self.a.autodist, "run", plan, "--data", "input=" + os.path.join(d, "x.npy"), "--out",
         "logits=" + os.path.join(d, "y%d.npy" % w), "--metrics", metrics], log, self.env)
    if rc != 0:
      print("autodist run (%s, %d workers) failed (exit %d):\n%s" % (
          model, w, rc, bench_run.log_tail(log)), flush=True)
      return None
    with open(metrics) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    sps = [r["samples_per_sec"] for r in rows[WARMUP:]]
    return (statistics.median(sps), mib) if sps else None

  def other(self, kind, model, w):
    d = os.path.join(self.work, model)
    out = os.path.join(d, "%s%d.json" % (kind, w))
    log = os.path.join(d, "%s%d.log" % (kind, w))
    rc, mib, _ = bench_run.measured_run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, str(w), model,
         os.path.join(d, "x.npy"), out], log, self.env)
    if rc != 0:
      print("%s (%s, %d threads) failed (exit %d):\n%s" % (
          kind, model, w, rc, bench_run.log_tail(log)), flush=True)
      return None
    with open(out) as f:
      times = json.load(f)["batch_times"][WARMUP:-1]  # the last batch may be short
    return BATCH / statistics.median(times), mib

  def torch(self, model, w):
    return self.other("torch", model, w)

  def ort(self, model, w):
    return self.other("ort", model, w)

  def report(self):
    fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
    print("\ninference, batch %d, %d rounds, medians (samples/s after %d warm-up batches; peak "
          "RSS of one process)" % (BATCH, self.a.rounds, WARMUP))
    print("%-9s %-12s %12s %14s" % ("model", "contender", "samples/s", "peak RSS MiB"))
    for model in self.a.models:
      for label, _, _ in self.CONTENDERS:
        print("%-9s %-12s %12s %14s" % (model, label, fmt(self.median(model, label, 0), "%.1f"),
                                        fmt(self.median(model, label, 1), "%.1f")))
    print()

    def ratio(model, a, b):
      x, y = self.median(model, a, 0), self.median(model, b, 0)
      return "%.2f" % (x / y) if x is not None and y else "-"
    for model in self.a.models:
      print("%-9s speed autodist/pytorch x1 %s, x2 %s; autodist/ort x1 %s, x2 %s" % (
          model, ratio(model, "autodist x1", "pytorch x1"),
          ratio(model, "autodist x2", "pytorch x2"), ratio(model, "autodist x1", "ort x1"),
          ratio(model, "autodist x2", "ort x2")))


def main(argv):
  if len(argv) > 1 and argv[1] == "--child":
    kind, threads, model, data, out = argv[2:7]
    child(kind, int(threads), model, data, out)
    return 0
  import common
  ap = argparse.ArgumentParser(description="batched inference: autodist vs PyTorch and "
                               "onnxruntime (see bench/README.md)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--models", default="resnet18,encoder17")
  ap.add_argument("--autodist", default=common.autodist_path())
  ap.add_argument("--keep", action="store_true", help="keep the work folder")
  a = ap.parse_args(argv[1:])
  a.models = a.models.split(",")
  work = tempfile.mkdtemp(prefix="ad-bench-infer-")
  b = Bench(a, work)
  t0 = time.time()
  for model in a.models:
    b.prepare(model)
  for r in range(a.rounds):
    b.round(r)
  b.report()
  if b.failed or a.keep:
    print("\n(total %.0f s; work files in %s)" % (time.time() - t0, work))
  else:
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    print("\n(total %.0f s)" % (time.time() - t0))
  return 1 if b.failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
