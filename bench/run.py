#!/usr/bin/env python3
"""bench/run.py: autodist against PyTorch, side by side, in one run.

Trains the full MLP (784-512-512-10) and CNN (PyTorch's MNIST-example shape)
of tests/ref/models.py with SGD (lr 0.01, momentum 0.9) at global batch 64 on
random MNIST-shaped data (--models resnet18,encoder17: the real models of
models.py, exported in training mode), with four contenders:

  autodist x1    `autodist run` on a plan for one CPU worker (core 0)
  pytorch x1     one process, torch.set_num_threads(1), pinned to core 0
  autodist x2    `autodist run` on an allreduce plan for two CPU workers (cores 0, 1)
  pytorch DDP x2 DistributedDataParallel, gloo backend, 2 processes with one
                 thread each (pinned to cores 0 and 1), init over 127.0.0.1 on
                 a free port, each rank on its half of the global batch

The contenders alternate over several rounds (A B C D A B C D ...) so that a
slow phase of the machine hits all of them alike; the table shows medians over
the rounds of:
- samples/s: global samples per second of the steady state. autodist: the
  median of "samples_per_sec" in its --metrics file over the steps after the
  warm-up; PyTorch: batch / median step time after the same warm-up.
- peak RSS: the largest resident set of any one process of the job (so: one
  worker), from wait4()'s rusage in a small wrapper process (it covers
  waited-for descendants) and from polling VmHWM in /proc/PID/status of the
  job's processes.
Compilation (autodist compile) and process start-up are outside the timings.
Every contender runs with OMP/OpenBLAS/MKL threads set to 1.

    /usr/bin/python3 bench/run.py [--rounds 3] [--models mlp,cnn] [--autodist PATH] [--keep]

AUTODIST (or build/autodist) is the binary. A full run takes about 3-5 minutes
on two cores.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "ref"))

BATCH = 64
N_SAMPLES = BATCH * 8
WARMUP = 5
OPT = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
STEPS = {"mlp": 60, "cnn": 30, "resnet18": 15, "encoder17": 30, "encoder": 30}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------- PyTorch side
# These run in the child processes; torch is imported there only, so the
# parent (and the DDP launcher) stay small and do not count in the RSS.

def torch_worker(model, data_dir, steps, rank, world, port, out):
  """Trains `model` for `steps` steps (DDP when world > 1) and writes its step
  times (seconds, rank 0) as JSON to `out`."""
  os.sched_setaffinity(0, {rank % os.cpu_count()})
  import numpy as np
  import torch
  import torch.nn.functional as F
  import models
  torch.set_num_threads(1)
  torch.manual_seed(0)
  m = models.build(model)
  m.train()
  x = torch.from_numpy(np.load(os.path.join(data_dir, "x_%s.npy" % model)))
  y = torch.from_numpy(np.load(os.path.join(data_dir, "y.npy")))
  if world > 1:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=world)
    m = DistributedDataParallel(m)
  opt = torch.optim.SGD(m.parameters(), lr=OPT["lr"], momentum=OPT["momentum"])
  local = BATCH // world
  n = x.shape[0]
  times = []
  for k in range(steps):
    idx = torch.from_numpy((k * BATCH + rank * local + np.arange(local)) % n)
    t0 = time.perf_counter()
    loss = F.cross_entropy(m(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
  if world > 1:
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()
  if rank == 0:
    with open(out, "w") as f:
      json.dump({"step_times": times, "loss": float(loss.item())}, f)


def ddp_launcher(model, data_dir, steps, out):
  """Starts the two DDP ranks and waits for them (their rusage then counts in
  this process's children: wait4 on the launcher sees the largest rank)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--torch-worker", model,
                             data_dir, str(steps), str(r), "2", str(port), out])
           for r in range(2)]
  rc = 0
  for p in procs:
    rc |= p.wait()
  return rc


# ---------------------------------------------------------------- measuring

def descendants(pid):
  """pid and all its descendants, from /proc (children lists)."""
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    try:
      with open("/proc/%d/task/%d/children" % (p, p)) as f:
        todo.extend(int(c) for c in f.read().split())
    except OSError:
      pass
  return out


def vm_hwm_kib(pid):
  try:
    with open("/proc/%d/status" % pid) as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1])
  except (OSError, ValueError):
    pass
  return 0


# Runs the command as its child and writes the child's rusage maxrss (KiB) to
# argv[1]. Measuring through this small exec'ed Python matters: a child forked
# straight from this process (which holds torch and numpy) would report this
# process's resident set as its own peak, since Linux keeps the pre-exec high
# water mark in ru_maxrss. The wrapper's own ~10 MiB is the floor instead.
RSS_WRAPPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, st, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(st))
"""


def measured_run(cmd, log, env, timeout=300):
  """Runs `cmd`; returns (exit status, peak RSS of its largest process in MiB,
  wall seconds). Output goes to `log`."""
  rss_file = log + ".maxrss"
  t0 = time.time()
  with open(log, "w") as f:
    p = subprocess.Popen([sys.executable, "-S", "-c", RSS_WRAPPER, rss_file] + cmd, stdout=f,
                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
  peak = 0
  while p.poll() is None:
    for d in descendants(p.pid)[1:]:
      peak = max(peak, vm_hwm_kib(d))
    if time.time() - t0 > timeout:
      os.killpg(p.pid, 9)
    time.sleep(0.05)
  try:
    with open(rss_file) as f:
      peak = max(peak, int(f.read()))
  except (OSError, ValueError):
    pass
  return p.returncode, peak / 1024.0, time.time() - t0


def log_tail(path, n=12):
  try:
    with open(path) as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


# ---------------------------------------------------------------- contenders

class Bench:
  def __init__(self, args, work):
    self.a = args
    self.work = work
    self.env = dict(os.environ, **THREAD_ENV)
    self.results = {}   # (model, contender) -> list of (samples/s, MiB)
    self.failed = []

  def prepare(self, model):
    """Exports the model, writes data, specs and train.yml, compiles the plans."""
    import numpy as np
    import common
    import models
    d = os.path.join(self.work, model)
    os.makedirs(d, exist_ok=True)
    models.export(model, os.path.join(d, "model.onnx"), training=model in models.REAL)
    rng = np.random.default_rng(0)
    shape = (N_SAMPLES,) + tuple(models.sample_shape(model))
    if model in models.VOCAB:
      x = rng.integers(0, models.VOCAB[model], size=shape).astype(np.int64)
    else:
      x = rng.standard_normal(shape).astype(np.float32)
    np.save(os.path.join(self.work, "x_%s.npy" % model), x)
    y = rng.integers(0, 10, size=(N_SAMPLES,)).astype(np.int64)
    np.save(os.path.join(self.work, "y.npy"), y)
    common.write_train(os.path.join(d, "train.yml"),
                       {"loss": "cross_entropy", "batch_size": BATCH, "optimizer": OPT})
    for w in (1, 2):
      common.write_spec(os.path.join(d, "spec%d.yml" % w), list(range(w)))
      if not os.access(self.a.autodist, os.X_OK):
        continue
      rc, out = common.run([self.a.autodist, "compile", "model.onnx", "-r", "spec%d.yml" % w,
                            "-t", "train.yml", "-s", "allreduce", "-o", "plan%d" % w], cwd=d,
                           env=self.env)
      if rc != 0:
        print("autodist compile (%s, %d workers) failed:\n%s" % (model, w, out), flush=True)

  def autodist(self, model, workers):
    d = os.path.join(self.work, model)
    metrics = os.path.join(d, "m%d.jsonl" % workers)
    if os.path.exists(metrics):
      os.unlink(metrics)
    log = os.path.join(d, "autodist%d.log" % workers)
    plan = os.path.join(d, "plan%d" % workers)
    if not os.path.isdir(plan):
      return None
    rc, mib, _ = measured_run([self.a.autodist, "run", plan, "--data",
                               "input=" + os.path.join(self.work, "x_%s.npy" % model), "--data",
                               "label=" + os.path.join(self.work, "y.npy"), "--steps",
                               str(STEPS[model]), "--metrics", metrics], log, self.env)
    if rc != 0:
      print("autodist run (%s, %d workers) failed (exit %d):\n%s" % (
          model, workers, rc, log_tail(log)), flush=True)
      return None
    with open(metrics) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    sps = [r["samples_per_sec"] for r in rows[WARMUP:]]
    return (statistics.median(sps), mib) if sps else None

  def torch(self, model, workers):
    out = os.path.join(self.work, "torch_%s_%d.json" % (model, workers))
    log = os.path.join(self.work, "torch_%s_%d.log" % (model, workers))
    if workers == 1:
      cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", model, self.work,
             str(STEPS[model]), "0", "1", "0", out]
    else:
      cmd = [sys.executable, os.path.abspath(__file__), "--ddp", model, self.work,
             str(STEPS[model]), out]
    rc, mib, _ = measured_run(cmd, log, self.env)
    if rc != 0:
      print("pytorch (%s, %d processes) failed (exit %d):\n%s" % (
          model, workers, rc, log_tail(log)), flush=True)
      return None
    with open(out) as f:
      times = json.load(f)["step_times"][WARMUP:]
    return BATCH / statistics.median(times), mib

  CONTENDERS = [("autodist x1", "autodist", 1), ("pytorch x1", "torch", 1),
                ("autodist x2", "autodist", 2), ("pytorch DDP x2", "torch", 2)]

  def round(self, r):
    for model in self.a.models:
      for label, kind, w in self.CONTENDERS:
        res = getattr(self, kind)(model, w)
        print("round %d %-4s %-15s %s" % (r + 1, model, label, "failed" if res is None else
                                            "%9.1f samples/s %7.1f MiB" % res), flush=True)
        if res is None:
          self.failed.append((model, label))
        else:
          self.results.setdefault((model, label), []).append(res)

  def median(self, model, label, i):
    v = self.results.get((model, label))
    return statistics.median(x[i] for x in v) if v else None

  def report(self):
    fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
    print("\nbatch %d, %d rounds, medians (samples/s after %d warm-up steps; peak RSS of one "
          "process)" % (BATCH, self.a.rounds, WARMUP))
    print("%-5s %-15s %12s %14s" % ("model", "contender", "samples/s", "peak RSS MiB"))
    for model in self.a.models:
      for label, _, _ in self.CONTENDERS:
        print("%-5s %-15s %12s %14s" % (model, label, fmt(self.median(model, label, 0), "%.1f"),
                                        fmt(self.median(model, label, 1), "%.1f")))
    print()

    def ratio(model, a, b, i):
      x, y = self.median(model, a, i), self.median(model, b, i)
      return "%.2f" % (x / y) if x is not None and y else "-"
    for model in self.a.models:
      print("%-5s speed autodist1/torch1 %s, autodist2/ddp %s; RSS autodist1/torch1 %s, "
            "autodist2/ddp %s" % (
                model, ratio(model, "autodist x1", "pytorch x1", 0),
                ratio(model, "autodist x2", "pytorch DDP x2", 0),
                ratio(model, "autodist x1", "pytorch x1", 1),
                ratio(model, "autodist x2", "pytorch DDP x2", 1)))
    if self.a.json:
      with open(self.a.json, "w") as f:
        json.dump({"%s/%s" % k: v for k, v in self.results.items()}, f, indent=1)


def main(argv):
  if len(argv) > 1 and argv[1] == "--torch-worker":
    m, d, steps, rank, world, port, out = argv[2:9]
    torch_worker(m, d, int(steps), int(rank), int(world), int(port), out)
    return 0
  if len(argv) > 1 and argv[1] == "--ddp":
    m, d, steps, out = argv[2:6]
    return ddp_launcher(m, d, int(steps), out)
  import common
  ap = argparse.ArgumentParser(description="autodist vs PyTorch (see bench/README.md)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--models", default="mlp,cnn")
  ap.add_argument("--autodist", default=common.autodist_path())
  ap.add_argument("--json", help="also write every measurement here")
  ap.add_argument("--keep", action="store_true", help="keep the work folder (plans, logs)")
  a = ap.parse_args(argv[1:])
  a.models = a.models.split(",")
  work = tempfile.mkdtemp(prefix="ad-bench-")
  b = Bench(a, work)
  if not os.access(a.autodist, os.X_OK):
    print("bench: %s not found (build first, or --autodist); timing PyTorch only" % a.autodist)
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
