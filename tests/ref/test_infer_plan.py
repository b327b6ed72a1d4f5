#!/usr/bin/env python3
"""tests/ref/test_infer_plan.py: batched inference as a plan.

`autodist compile MODEL --infer [--batch N]` and `autodist run PLAN --data ...
--out ...` on 1, 2 and 3 workers (3: the batch does not divide the data) must
write every sample's outputs, in order, equal to onnxruntime's; the last
partial batch is padded and the padding dropped. Also checked: the progress
line (on a terminal: rewritten in place), --metrics, the input errors (exit 2,
nothing written), and a worker killed mid-run (exit 1, neither the output nor
its temporary file left).

Run: AUTODIST=build/autodist AD_SRC=. /usr/bin/python3 tests/ref/test_infer_plan.py
"""
import glob
import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import models  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
N = 37  # not a multiple of any batch below


def run(cmd, cwd, timeout=300):
  p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stderr


def leftovers(d, name):
  """Files of an --out `name` in folder d: the output and any temporary."""
  return sorted(os.path.basename(f) for f in glob.glob(os.path.join(d, name + "*")))


def check_models(ck, A, work):
  cases = [("mlp_data", os.path.join(common.REPO, "tests/data/onnx/mlp.onnx"), "x", "y", (4,))]
  for name in ("mlp_small", "cnn_small"):
    path = os.path.join(work, name + ".onnx")
    models.export(name, path)
    cases.append((name, path, "input", "logits", models.sample_shape(name)))
  for name, path, inp, out, shape in cases:
    x, _ = common.random_data(shape, N, "classes", seed=3)
    xs = os.path.join(work, "%s_x.npy" % name)
    np.save(xs, x)
    want = common.ort_run(path, {inp: x})[out]
    # (workers, --batch): 8 and 9 leave a partial last batch of 37; None is
    # the default (256 over 3 workers: 258, more than the data).
    for workers, batch in ((1, 8), (2, 8), (3, 9), (3, None)):
      tag = "%s: %d worker%s, batch %s" % (name, workers, "s" if workers > 1 else "",
                                          batch or "default")
      spec = os.path.join(work, "spec%d.yml" % workers)
      common.write_spec(spec, list(range(workers)))
      plan = os.path.join(work, "plan_%s_%d_%s" % (name, workers, batch))
      cmd = [A, "compile", path, "--infer", "-r", spec, "-o", plan]
      if batch:
        cmd += ["--batch", str(batch)]
      if not common.run_checked(ck, tag + ": compile --infer", cmd, cwd=work):
        continue
      with open(os.path.join(plan, "plan.yaml")) as f:
        manifest = f.read()
      B = batch or 258
      ck.check(tag + ": plan.yaml says inference, global batch %d" % B,
               "training: false\n" in manifest and "global_batch: %d\n" % B in manifest)
      ys = os.path.join(work, "%s_y.npy" % name)
      ms = os.path.join(work, "%s_m.jsonl" % name)
      rc, err = run([A, "run", plan, "--data", "%s=%s" % (inp, xs), "--out", "%s=%s" % (out, ys),
                     "--metrics", ms], work)
      if not ck.check(tag + ": run exit 0", rc == 0, err.strip()[-400:]):
        continue
      got = np.load(ys)
      ck.check(tag + ": output float32", got.dtype == np.float32, str(got.dtype))
      common.check_allclose(ck, tag + ": == onnxruntime", got, want, RTOL, ATOL)
      ck.check(tag + ": progress line", "infer: %d/%d samples (100%%)\n" % (N, N) in err, err)
      m = common.read_metrics(ms)
      steps = (N + B - 1) // B
      ck.check(tag + ": --metrics one line per batch, every sample once",
               len(m) == steps and [r["step"] for r in m] == list(range(1, steps + 1)) and
               sum(r["samples"] for r in m) == N and
               all(r["samples_per_sec"] > 0 and "elapsed_sec" in r for r in m), str(m))
      ck.check(tag + ": no temporary files", leftovers(work, "%s_y.npy" % name) ==
               ["%s_y.npy" % name], str(leftovers(work, "%s_y.npy" % name)))


def check_tty(ck, A, work):
  """On a terminal the progress line is rewritten in place ("\\r")."""
  plan = os.path.join(work, "plan_mlp_data_2_8")
  if not os.path.isdir(plan):
    return
  master, slave = pty.openpty()
  p = subprocess.Popen([A, "run", plan, "--data", "x=mlp_data_x.npy", "--out", "y=tty_y.npy"],
                       cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=slave)
  os.close(slave)
  chunks = []
  while True:
    try:
      b = os.read(master, 4096)
    except OSError:
      break
    if not b:
      break
    chunks.append(b)
  rc = p.wait(timeout=120)
  os.close(master)
  text = b"".join(chunks).decode("utf-8", "replace")
  ck.check("terminal: exit 0", rc == 0, text)
  ck.check("terminal: progress rewritten in place",
           "\rinfer: %d/%d samples (100%%)\r\n" % (N, N) in text, repr(text))


def check_errors(ck, A, work):
  """Bad input: exit 2 with the message, and no output file of any kind."""
  mlp = os.path.join(common.REPO, "tests/data/onnx/mlp.onnx")
  np.save(os.path.join(work, "x5.npy"), np.zeros((10, 5), np.float32))
  np.save(os.path.join(work, "xi.npy"), np.zeros((10, 4), np.int64))
  np.save(os.path.join(work, "lab.npy"), np.zeros(N, np.int64))
  with open(os.path.join(work, "t.yml"), "w") as f:
    f.write("batch_size: 8\n")
  plan = os.path.join(work, "plan_mlp_data_2_8")
  run([A, "compile", mlp, "-r", "spec2.yml", "-t", "t.yml", "-o", "ptrain"], work)
  # A model with an output without the batch axis (a sum over the batch).
  import onnx
  from onnx import TensorProto, helper
  g = helper.make_graph(
      [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0)], "sum",
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
      [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
  m.ir_version = 8
  onnx.save(m, os.path.join(work, "sum.onnx"))
  run([A, "compile", "sum.onnx", "--infer", "-r", "spec2.yml", "--batch", "8", "-o", "psum"],
      work)
  cases = [
      (["compile", mlp, "--infer", "-t", "t.yml", "-o", "pe"],
       "error: -t applies to training; an inference plan (--infer) reads no train.yml (give the "
       "samples per step with --batch N)"),
      (["compile", mlp, "--infer", "-s", "ps", "-o", "pe"],
       "error: -s ps applies to training; an inference plan (--infer) replicates the model on "
       "every worker (-s auto or allreduce)"),
      (["compile", mlp, "--infer", "--compress", "fp16", "-o", "pe"],
       "error: --bucket-mb or --compress applies to training"),
      (["compile", mlp, "--infer", "--staleness", "2", "-o", "pe"],
       "error: --staleness applies to training"),
      (["compile", mlp, "--batch", "8", "-o", "pe"],
       "error: --batch applies to --infer; a training plan takes its global batch from "
       "train.yml (batch_size)"),
      (["compile", mlp, "--infer", "-r", "spec3.yml", "--batch", "8", "-o", "pe"],
       "error: --batch 8 cannot be split evenly over 3 workers (give a multiple of 3)"),
      (["compile", mlp, "--infer", "--batch", "0", "-o", "pe"],
       "error: --batch needs an integer >= 1"),
      (["run", plan, "--data", "x=mlp_data_x.npy", "--out", "z=e.npy"],
       "error: --out z=e.npy: the plan has no output 'z' (outputs: y)"),
      (["run", plan, "--out", "y=e.npy"],
       "error: missing --data x=FILE.npy (input float32 (N, 4) of the plan)"),
      (["run", plan, "--data", "x=x5.npy", "--out", "y=e.npy"],
       "x5.npy: error: shape (10, 5) does not fit input 'x' of the plan: float32 (N, 4)"),
      (["run", plan, "--data", "x=xi.npy", "--out", "y=e.npy"],
       "xi.npy: error: dtype int64 (10, 4) does not fit input 'x' of the plan: float32 (N, 4)"),
      (["run", plan, "--data", "x=mlp_data_x.npy", "--out", "y=e.npy", "--shuffle", "1"],
       "error: --shuffle applies to training plans"),
      (["run", plan, "--data", "x=mlp_data_x.npy", "--out", "y=no/such/e.npy"],
       "error: --out y=no/such/e.npy: folder 'no/such' does not exist"),
      (["run", "psum", "--data", "x=mlp_data_x.npy", "--out", "s=e.npy"],
       "error: --out s=e.npy: output 's' has the shape () per worker, without the batch axis "
       "(4 samples per worker), so it has no row per sample"),
      (["run", "ptrain", "--data", "x=mlp_data_x.npy", "--data", "label=lab.npy", "--out",
        "y=e.npy"],
       "error: --out y=e.npy: ptrain is a training plan; --out applies to inference plans"),
  ]
  for args, msg in cases:
    rc, err = run([A] + args, work)
    tag = "error: autodist %s" % " ".join(a.replace(work + "/", "") for a in args)
    ck.check(tag + ": exit 2", rc == 2, "exit %d: %s" % (rc, err.strip()))
    ck.check(tag + ": message", msg in err, err.strip())
    ck.check(tag + ": nothing written",
             not leftovers(work, "e.npy") and not os.path.exists(os.path.join(work, "pe")),
             str(leftovers(work, "e.npy")))


def check_killed(ck, A, work):
  """A worker killed mid-run: exit 1; neither y.npy nor its temporary remain."""
  path = os.path.join(work, "cnn.onnx")
  models.export("cnn", path)
  x, _ = common.random_data(models.sample_shape("cnn"), 40000, "classes", seed=4)
  np.save(os.path.join(work, "big.npy"), x)
  common.write_spec(os.path.join(work, "spec2.yml"), [0, 1])
  if not common.run_checked(ck, "kill: compile", [A, "compile", path, "--infer", "-r",
                                                   "spec2.yml", "-o", "pbig"], cwd=work):
    return
  for rank in (1, 0):  # rank 0 writes the output
    kill_one(ck, A, work, rank)


def kill_one(ck, A, work, rank):
  """The run folder (in $TMPDIR) has each worker's rank<R>.pid ("PID HOST")."""
  tag = "kill rank %d: " % rank
  tmp = os.path.join(work, "tmp")
  os.makedirs(tmp, exist_ok=True)
  p = subprocess.Popen([A, "run", "pbig", "--data", "input=big.npy", "--out", "logits=big_y.npy"],
                       cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, TMPDIR=tmp))
  # Rank 0 opens the temporary output once its loop starts.
  t0 = time.time()
  while not glob.glob(os.path.join(work, "big_y.npy.*.tmp")) and p.poll() is None and \
      time.time() - t0 < 60:
    time.sleep(0.02)
  started = bool(glob.glob(os.path.join(work, "big_y.npy.*.tmp")))
  ck.check(tag + "temporary output while running", started, str(leftovers(work, "big_y.npy")))
  pid_files = glob.glob(os.path.join(tmp, "autodist-run.*", "rank%d.pid" % rank))
  if pid_files:
    with open(pid_files[0]) as f:
      os.kill(int(f.read().split()[0]), signal.SIGKILL)
  try:
    _, err = p.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    p.kill()
    _, err = p.communicate()
  ck.check(tag + "run exits 1", p.returncode == 1, "exit %s: %s" % (p.returncode, err.strip()))
  ck.check(tag + "the message names the worker", "worker rank" in err, err.strip())
  ck.check(tag + "no output and no temporary left", leftovers(work, "big_y.npy") == [],
           str(leftovers(work, "big_y.npy")))
  ck.check(tag + "no run folder left", os.listdir(tmp) == [], str(os.listdir(tmp)))


def main():
  ck = common.Checks()
  A = common.autodist_path()
  if not ck.check("autodist binary exists", os.access(A, os.X_OK), A):
    return ck.close()
  work = common.tmpdir("infer-plan")
  check_models(ck, A, work)
  check_tty(ck, A, work)
  check_errors(ck, A, work)
  check_killed(ck, A, work)
  if ck.failed == 0:
    shutil.rmtree(work, ignore_errors=True)
  else:
    print("work files kept in %s" % work)
  return ck.close()


if __name__ == "__main__":
  sys.exit(main())
