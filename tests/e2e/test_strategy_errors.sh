#!/usr/bin/env bash
# tests/e2e/test_strategy_errors.sh: misuse of the parameter-server strategies
# (issue 3) and a parameter server that dies.
#
# Compile-time misuse (a server placed on a node without cpus, a variable with
# fewer rows than --shards, strategy options given to a strategy they do not
# apply to, out-of-range values, unknown options) must exit 2 with a message
# that names the culprit, and leave no plan folder (nor a plan.tmp.*) behind.
# A server process killed with SIGKILL must stop the job with exit 1 within
# 10 s, with a message naming the server, and leave no process of the test
# (anything with the test's temp folder in its command line) and no run folder.
# A worker killed in a server job must take the servers down the same way.
# Needs $AUTODIST (the binary) and Debian's python3 with onnx + numpy.
set -euo pipefail

: "${AUTODIST:?set AUTODIST to the autodist binary}"
A=$AUTODIST
PY=${PYTHON:-/usr/bin/python3}
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" ad_strategy_errors
pass=0 fail=0
ok() {
  pass=$((pass + 1))
  echo "PASS $*"
}
bad() {
  fail=$((fail + 1))
  echo "FAIL $*"
}

# expect NAME COMMAND... -- WORD...: `autodist COMMAND` exits 2, its stderr
# contains every WORD (fixed strings), and no plan folder is left behind.
expect() {
  local name=$1
  shift
  local args=()
  while [ "$1" != "--" ]; do
    args+=("$1")
    shift
  done
  shift
  local rc=0 missing=""
  "$A" "${args[@]}" >out.txt 2>err.txt || rc=$?
  for w in "$@"; do
    grep -qF -- "$w" err.txt || missing="$missing '$w'"
  done
  local left
  left=$(ls -d plan plan.tmp.* 2>/dev/null || true)
  if [ "$rc" -eq 2 ] && [ -z "$missing" ] && [ -z "$left" ]; then
    ok "$name: $(head -1 err.txt)"
  else
    bad "$name: autodist ${args[*]}: rc=$rc (expected 2)${missing:+, stderr lacks$missing}" \
      "${left:+, left behind: $left}"
    echo "     stderr: $(head -3 err.txt)"
  fi
  rm -rf plan plan.tmp.*
}

# A linear classifier (logits = x W^T + b, 8 features, 4 classes), its data,
# and two models with a variable of one row: a [1, 4] bias and a scalar scale.
"$PY" - <<'EOF'
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(0)
def save(nodes, inits, path):
  g = helper.make_graph(
      nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
      [numpy_helper.from_array(v, k) for k, v in inits.items()])
  onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
w = rng.standard_normal((4, 8)).astype(np.float32)
save([helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)],
     {"w": w, "b": np.zeros(4, np.float32)}, "model.onnx")
# MatMul by w^T [8, 4] (8 rows), then Add of a [1, 4] bias (1 row).
save([helper.make_node("MatMul", ["x", "wt"], ["h"]),
      helper.make_node("Add", ["h", "b1"], ["logits"])],
     {"wt": np.ascontiguousarray(w.T), "b1": np.zeros((1, 4), np.float32)}, "one_row.onnx")
# Gemm with 4 rows, then Mul by a scalar (no axis 0 to split).
save([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
      helper.make_node("Mul", ["h", "scale"], ["logits"])],
     {"w": w, "b": np.zeros(4, np.float32), "scale": np.array(1.0, np.float32)}, "scalar.onnx")
# An embedding bag: Gather of token ids [N, 4] from a [20, 8] table, mean over
# the tokens, Gemm: parallax sends the table to servers. And one with a
# 1-row table, which cannot be split into 2 shards.
def save_emb(rows, path):
  g = helper.make_graph(
      [helper.make_node("Gather", ["emb", "ids"], ["e"]),
       helper.make_node("ReduceMean", ["e"], ["h"], axes=[1], keepdims=0),
       helper.make_node("Gemm", ["h", "w", "b"], ["logits"], transB=1)], "emb",
      [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
      [numpy_helper.from_array(rng.standard_normal((rows, 8)).astype(np.float32), "emb"),
       numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
  onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
save_emb(20, "emb.onnx")
save_emb(1, "emb1.onnx")
np.save("x.npy", rng.standard_normal((64, 8)).astype(np.float32))
np.save("y.npy", rng.integers(0, 4, 64).astype(np.int64))
EOF
cat >train.yml <<'EOF'
loss: cross_entropy
batch_size: 8
optimizer: {name: sgd, lr: 0.1}
EOF
printf 'nodes:\n  - address: localhost\n    cpus: [0, 1]\n' >two.yml
# A node without cpus runs one unpinned CPU worker, but no server.
printf 'nodes:\n  - address: localhost\n' >nocpus.yml
# The chief has cpus; the second node (line 5) has none.
cat >second_nocpus.yml <<'EOF'
nodes:
  - address: localhost
    cpus: [0]
    chief: true
  - address: 127.0.0.2
    ssh_config: c
ssh:
  c:
    username: x
EOF
# The chief lists only gpus.
printf 'nodes:\n  - address: localhost\n    gpus: [0]\n' >gpus.yml

# ---------------------------------------------------------------- placement
for s in ps ps-lb partitioned-ps parallax; do
  expect "$s: server on a node without cpus" \
    compile emb.onnx -r nocpus.yml -t train.yml -s "$s" -- \
    "nocpus.yml:2" "error:" "'localhost'" "server" "cpus"
done
# ps-lb and parallax put one server per node by default: server 1 lands on
# the second node, which has no cpus.
for s in ps-lb parallax; do
  expect "$s: server on the second node, which has no cpus" \
    compile emb.onnx -r second_nocpus.yml -t train.yml -s "$s" -- \
    "second_nocpus.yml:5" "error:" "'127.0.0.2'" "server" "cpus"
done
# ps places its one server on the chief, which has cpus: that compiles.
rc=0
"$A" compile model.onnx -r second_nocpus.yml -t train.yml -s ps -o ps_plan >out.txt 2>err.txt ||
  rc=$?
if [ "$rc" -eq 0 ] && [ -f ps_plan/plan.yaml ]; then
  ok "ps: the one server goes to the chief, a second node without cpus is fine"
else
  bad "ps on second_nocpus.yml: rc=$rc (expected 0): $(head -3 err.txt)"
fi
# The chief lists only gpus: refused either because GPU workers are not
# supported yet or because the server has no CPU; both name the node.
expect "ps: chief lists only gpus" compile model.onnx -r gpus.yml -t train.yml -s ps -- \
  "gpus.yml:2" "error:" "'localhost'"
echo "     (gpus-only chief: $(head -1 err.txt))"

# ---------------------------------------------------------------- partitioning
expect "partitioned-ps --shards 2: a [1, 4] variable" \
  compile one_row.onnx -t train.yml -s partitioned-ps --shards 2 -- \
  "one_row.onnx" "error:" "'b1'" "2 shards" "--shards"
expect "partitioned-ps --servers 2 (2 shards): a [1, 4] variable" \
  compile one_row.onnx -t train.yml -r two.yml -s partitioned-ps --servers 2 -- \
  "one_row.onnx" "error:" "'b1'" "2 shards"
expect "partitioned-ps --shards 2: a scalar variable" \
  compile scalar.onnx -t train.yml -s partitioned-ps --shards 2 -- \
  "scalar.onnx" "error:" "'scale'" "2 shards"
expect "parallax --shards 2: a 1-row embedding table" \
  compile emb1.onnx -t train.yml -s parallax --shards 2 -- \
  "emb1.onnx" "error:" "'emb'" "2 shards"
expect "partitioned-ps --shards 5: a 4-row variable" \
  compile model.onnx -t train.yml -s partitioned-ps --shards 5 -- \
  "model.onnx" "error:" "'w'" "5 shards"

# ---------------------------------------------------------------- options
expect "unknown option" compile model.onnx -t train.yml -s ps --bogus -- \
  "error: unknown option '--bogus'"
expect "misspelt --servers" compile model.onnx -t train.yml -s ps-lb --server 2 -- \
  "error: unknown option '--server'"
expect "misspelt --staleness" compile model.onnx -t train.yml -s ps --stale 2 -- \
  "error: unknown option '--stale'"
expect "--staleness with allreduce" compile model.onnx -t train.yml -s allreduce --staleness 2 -- \
  "error:" "--staleness" "allreduce"
expect "--async with allreduce" compile model.onnx -t train.yml -s allreduce --async -- \
  "error:" "--async" "allreduce"
expect "--servers with ps" compile model.onnx -t train.yml -s ps --servers 2 -- \
  "error:" "--servers" "ps"
expect "--servers with allreduce" compile model.onnx -t train.yml -s allreduce --servers 2 -- \
  "error:" "--servers" "allreduce"
expect "--shards with ps-lb" compile model.onnx -t train.yml -s ps-lb --shards 2 -- \
  "error:" "--shards" "ps-lb"
expect "--shards with ps" compile model.onnx -t train.yml -s ps --shards 2 -- \
  "error:" "--shards" "ps"
expect "parallax --async on a model without lookup tables" \
  compile model.onnx -t train.yml -s parallax --async -- \
  "model.onnx: error: strategy parallax found no lookup table" "--async"
expect "--compress with ps" compile model.onnx -t train.yml -s ps --compress fp16 -- \
  "error: --bucket-mb and --compress apply to all-reduce" "ps"
expect "--staleness -1" compile model.onnx -t train.yml -s ps --staleness -1 -- \
  "error: --staleness needs an integer >= 0"
expect "--staleness without a value" compile model.onnx -t train.yml -s ps --staleness -- \
  "error: --staleness needs an integer >= 0"
expect "--servers 0" compile model.onnx -t train.yml -s ps-lb --servers 0 -- \
  "error: --servers needs an integer >= 1"
expect "--servers two" compile model.onnx -t train.yml -s ps-lb --servers two -- \
  "error: --servers needs an integer >= 1"
expect "--shards 0" compile model.onnx -t train.yml -s partitioned-ps --shards 0 -- \
  "error: --shards needs an integer >= 1"

# ---------------------------------------------------------------- a dying job
# Nothing of this test may be left running, and no run folder may remain.
check_clean() {
  local what=$1
  sleep 0.3
  if pgrep -f "$T/" >/dev/null; then
    bad "$what: processes left: $(pgrep -af "$T/" | tr '\n' ';')"
    # Stopped by pid; the pattern holds this test's unique temp folder.
    for p in $(pgrep -f "$T/"); do kill -KILL "$p" 2>/dev/null || true; done
  else
    ok "$what: no process left"
  fi
  if [ -n "$(ls -A "$T/tmp")" ]; then
    bad "$what: run folder left: $(ls -A "$T/tmp")"
    rm -rf "${T:?}/tmp/"*
  fi
}

# start_long_run PLAN RANK...: starts a practically endless run of PLAN and
# waits until every listed rank has written its pid file.
start_long_run() {
  local plan=$1
  shift
  "$A" run "$plan" --data x=x.npy --data label=y.npy --steps 100000000 \
    >"$T/out.txt" 2>"$T/err.txt" &
  run_pid=$!
  for _ in $(seq 150); do
    local all=1
    for r in "$@"; do
      compgen -G "$T/tmp/*/rank$r.pid" >/dev/null || all=0
    done
    [ "$all" = 1 ] && return 0
    sleep 0.1
  done
  bad "the ranks $* of $plan did not start: $(cat "$T/err.txt")"
  return 1
}

rc=0
"$A" compile model.onnx -r two.yml -t train.yml -s ps -o "$T/psplan" >c.txt 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
  bad "compile -s ps for 2 workers: rc=$rc: $(cat c.txt)"
else
  # The happy path first, so that the failures below are the kills' doing.
  rc=0
  "$A" run "$T/psplan" --data x=x.npy --data label=y.npy --steps 3 >out.txt 2>err.txt || rc=$?
  if [ "$rc" = 0 ] && grep -qF "autodist: trained 3 steps" err.txt; then
    ok "ps on 2 workers: 3 steps train"
  else
    bad "ps on 2 workers, 3 steps: rc=$rc: $(tail -3 err.txt)"
  fi
  check_clean "ps happy path"

  # The server is rank 2 (the ranks after the 2 workers).
  if start_long_run "$T/psplan" 0 1 2; then
    sleep 0.5
    pid=$(cut -d' ' -f1 "$T"/tmp/*/rank2.pid)
    kill -KILL "$pid"
    await_run
    msg=$(grep -i "error" "$T/err.txt" | head -2 | tr '\n' ' ')
    # The message names the server, its rank and pid, and the signal.
    if [ "$run_rc" = 1 ] && [ "$run_s" != 100 ] && grep "error:" "$T/err.txt" |
      grep "server 0" | grep "rank 2" | grep "pid $pid" | grep -q "killed by signal 9"; then
      ok "SIGKILL of the server (pid $pid): exit 1 after ${run_s}00 ms: $msg"
    else
      bad "SIGKILL of the server (pid $pid): exit $run_rc (expected 1)," \
        "${run_s}00 ms (limit 10 s),"
        "stderr (must name server 0, rank 2, pid $pid, signal 9): $(tail -3 "$T/err.txt")"
    fi
    check_clean "SIGKILL of the server"
  fi

  # A worker dies: the server must go down with the job too.
  if start_long_run "$T/psplan" 0 1 2; then
    sleep 0.5
    pid=$(cut -d' ' -f1 "$T"/tmp/*/rank1.pid)
    kill -KILL "$pid"
    await_run
    if [ "$run_rc" = 1 ] && [ "$run_s" != 100 ] &&
      grep -qF "worker rank 1 (localhost, pid $pid) died (killed by signal 9)" "$T/err.txt"; then
      ok "SIGKILL of worker 1 in a ps job: exit 1 after ${run_s}00 ms"
    else
      bad "SIGKILL of worker 1 in a ps job: exit $run_rc (expected 1)," \
        "${run_s}00 ms (limit 10 s):"
        "$(tail -3 "$T/err.txt")"
    fi
    check_clean "SIGKILL of a worker in a ps job"
  fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
