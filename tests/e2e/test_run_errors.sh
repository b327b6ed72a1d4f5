#!/usr/bin/env bash
# tests/e2e/test_run_errors.sh: `autodist run` on bad input and on a failing job.
#
# Bad input (options, data that does not fit the plan, a plan on other nodes)
# must exit 2 with the exact message before any process starts; a worker
# killed with SIGKILL, or SIGTERM to `run`, must stop the whole job with exit
# 1 within 10 s. After every case no process of the test (anything with the
# test's temp folder in its command line) and no run folder may remain.
# Needs $AUTODIST (the binary), $AD_SRC and Debian's python3 with onnx + numpy.
set -euo pipefail

: "${AUTODIST:?set AUTODIST to the autodist binary}"
PYTHON=${PYTHON:-/usr/bin/python3}
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" ad_run_errors

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# Nothing of this test may be left running, and no run folder may remain.
check_clean() {
  local what=$1
  sleep 0.2
  if pgrep -f "$T/" >/dev/null; then
    fail "$what: processes left: $(pgrep -af "$T/" | tr '\n' ';')"
  fi
  if [ -n "$(ls -A "$T/tmp")" ]; then
    fail "$what: run folder left: $(ls -A "$T/tmp")"
    rm -rf "${T:?}/tmp/"*
  fi
}

# expect CODE MESSAGE -- ARGS...: run `autodist ARGS`, check exit code and that
# stderr contains MESSAGE verbatim.
expect() {
  local code=$1 msg=$2
  shift 3
  local rc=0
  "$AUTODIST" "$@" >"$T/out.txt" 2>"$T/err.txt" || rc=$?
  if [ "$rc" != "$code" ]; then
    fail "autodist $*: exit $rc, expected $code; stderr: $(cat "$T/err.txt")"
  elif ! grep -qF -- "$msg" "$T/err.txt"; then
    fail "autodist $*: stderr lacks '$msg'; got: $(cat "$T/err.txt")"
  fi
  check_clean "autodist $*"
}

# A linear classifier (logits = x W^T + b, 8 features, 4 classes) and data.
"$PYTHON" - <<'EOF'
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w")
b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
g = helper.make_graph(
    [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)], "linear",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w, b])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), "model.onnx")
np.save("x.npy", rng.standard_normal((64, 8)).astype(np.float32))
np.save("y.npy", rng.integers(0, 4, 64).astype(np.int64))
np.save("x9.npy", rng.standard_normal((64, 9)).astype(np.float32))
np.save("x3d.npy", rng.standard_normal((64, 2, 4)).astype(np.float32))
np.save("yf.npy", rng.standard_normal(64).astype(np.float32))
np.save("y60.npy", rng.integers(0, 4, 60).astype(np.int64))
np.save("xs.npy", rng.standard_normal((4, 8)).astype(np.float32))
np.save("ys.npy", rng.integers(0, 4, 4).astype(np.int64))
EOF
cat >train.yml <<'EOF'
loss: cross_entropy
batch_size: 8
optimizer: {name: sgd, lr: 0.1}
EOF
cat >spec.yml <<'EOF'
nodes:
  - address: localhost
    cpus: [0, 1]
EOF
cat >remote.yml <<'EOF'
nodes:
  - address: 10.9.8.7
    cpus: [0]
EOF
for s in spec:plan remote:remote; do
  "$AUTODIST" compile model.onnx -r "${s%%:*}.yml" -t train.yml -o "$T/${s##*:}" >"$T/c.txt" 2>&1 ||
    { cat "$T/c.txt" >&2; exit 1; }
done
P=$T/plan
D=(--data x=x.npy --data label=y.npy)

# The happy path, so that the failures below are failures of the input only.
expect 0 "autodist: trained 2 steps" -- run "$P" "${D[@]}" --steps 2 --metrics m.jsonl
[ "$(wc -l <m.jsonl)" = 2 ] || fail "--metrics: expected 2 lines, got $(cat m.jsonl)"

# Options.
expect 2 "autodist: error: unknown option '--frobnicate' (see 'autodist run --help')" -- \
  run "$P" "${D[@]}" --frobnicate
expect 2 "autodist: error: unknown option '--step' (did you mean '--steps'?)" -- \
  run "$P" "${D[@]}" --step 3
expect 2 "autodist: error: option '--steps' needs a value" -- run "$P" "${D[@]}" --steps
expect 2 "autodist: error: --steps and --epochs are mutually exclusive" -- \
  run "$P" "${D[@]}" --steps 3 --epochs 1
expect 2 "autodist: error: --epochs: expected a positive integer, got 'two'" -- \
  run "$P" "${D[@]}" --epochs two
expect 2 "autodist: error: --data: expected NAME=FILE.npy, got 'x.npy'" -- run "$P" --data x.npy
expect 2 "autodist: error: missing PLAN_DIR (usage: autodist run PLAN_DIR [options])" -- \
  run --steps 1
expect 2 "$T/nope/plan.yaml" -- run "$T/nope" "${D[@]}"

# Data against the plan.
expect 2 "autodist: error: --data z=x.npy: the plan has no input 'z' (inputs: x, label)" -- \
  run "$P" "${D[@]}" --data z=x.npy
expect 2 "autodist: error: missing --data label=FILE.npy (label int64 (N,) of the plan)" -- \
  run "$P" --data x=x.npy
expect 2 "autodist: x9.npy: error: shape (64, 9) does not fit input 'x' of the plan: float32 (N, 8)" -- \
  run "$P" --data x=x9.npy --data label=y.npy
expect 2 "autodist: x3d.npy: error: shape (64, 2, 4) does not fit input 'x' of the plan: float32 (N, 8)" -- \
  run "$P" --data x=x3d.npy --data label=y.npy
expect 2 "autodist: yf.npy: error: dtype float32 (64,) does not fit label 'label' of the plan: int64 (N,)" -- \
  run "$P" --data x=x.npy --data label=yf.npy
expect 2 "autodist: y60.npy: error: 60 samples, but x.npy has 64 (the data files must have the same number of samples)" -- \
  run "$P" --data x=x.npy --data label=y60.npy
expect 2 "autodist: xs.npy: error: 4 samples, fewer than one global batch (8) of the plan" -- \
  run "$P" --data x=xs.npy --data label=ys.npy
expect 2 "autodist: missing.npy: error: cannot open" -- run "$P" --data x=missing.npy --data label=y.npy
expect 2 "autodist: error: --out z=z.npy: the plan has no output 'z' (outputs: logits)" -- \
  run "$P" "${D[@]}" --out z=z.npy
expect 2 "autodist: error: --save $T/no/such/out.onnx: folder '$T/no/such' does not exist" -- \
  run "$P" "${D[@]}" --save "$T/no/such/out.onnx"
expect 2 "device rank 0 is on node '10.9.8.7', the plan's chief, which is not this machine: start \`autodist run\` on '10.9.8.7'" -- \
  run "$T/remote" "${D[@]}"

# A worker killed mid-run stops the job: exit 1 within 10 s, naming the rank.
run_pid=
start_long_run() {
  "$AUTODIST" run "$P" "${D[@]}" --steps 100000000 >"$T/out.txt" 2>"$T/err.txt" &
  run_pid=$!
  for _ in $(seq 100); do
    compgen -G "$T/tmp/*/rank1.pid" >/dev/null && compgen -G "$T/tmp/*/rank0.pid" >/dev/null &&
      return 0
    sleep 0.1
  done
  fail "the workers did not start"
}
# Sets run_rc to the exit code of the run started above; fails when it takes
# more than 10 s.
wait_run() {
  await_run
  [ "$run_s" != 100 ] || fail "run did not exit within 10 s"
}

start_long_run
sleep 0.5
pid=$(cut -d' ' -f1 "$T"/tmp/*/rank1.pid)
kill -KILL "$pid"
wait_run
[ "$run_rc" = 1 ] || fail "SIGKILL of a worker: exit $run_rc, expected 1"
grep -qF "autodist: error: worker rank 1 (localhost, pid $pid) died (killed by signal 9); the job was stopped" \
  "$T/err.txt" || fail "SIGKILL of a worker: got: $(cat "$T/err.txt")"
check_clean "SIGKILL of a worker"

# SIGTERM to `run` stops the job the same way.
start_long_run
sleep 0.5
kill -TERM "$run_pid"
wait_run
[ "$run_rc" = 1 ] || fail "SIGTERM to run: exit $run_rc, expected 1"
grep -qF "autodist: error: interrupted by signal 15; the job was stopped" "$T/err.txt" ||
  fail "SIGTERM to run: got: $(cat "$T/err.txt")"
check_clean "SIGTERM to run"

if [ "$failures" != 0 ]; then
  echo "test_run_errors: $failures failure(s)" >&2
  exit 1
fi
echo "test_run_errors: ok"
