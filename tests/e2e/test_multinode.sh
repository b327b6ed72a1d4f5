#!/usr/bin/env bash
# tests/e2e/test_multinode.sh: `autodist run` of a plan on two nodes, the chief
# (localhost) and 127.0.0.2, a real sshd started by the test (sshd.sh), with
# two CPU workers each.
#
# - The 4-worker job trains mlp_small to the per-step losses of the same plan
#   on one node (relative 1e-5), with the plan and data staged on the node;
#   a second run copies nothing, and two runs staging at once both succeed.
# - An inference plan (compile --infer) on the two nodes writes every sample's
#   outputs on the chief, equal to `autodist infer`'s.
# - An unknown host key is refused (exit 2, nothing staged); with
#   --accept-new-hosts the run works and the key is recorded. Output of a
#   worker on the other node is prefixed with its node and rank.
# - shared_envs values holding shell metacharacters reach the node literally:
#   the staging folder (XDG_CACHE_HOME) and OpenMPI's session folder there
#   (OMPI_MCA_orte_tmpdir_base, read by the MPI daemon and the workers) are
#   created under the literal names.
# - After SIGKILL of a worker on the other node during a run with
#   --checkpoint-every 5, --resume finishes with the weights of an
#   uninterrupted run, byte for byte.
# - SIGKILL of a worker on the other node, SIGTERM to `run` and the loss of the
#   node's MPI daemon stop the job: exit 1 within 10 s naming what failed, and
#   no process of the job is left (pgrep -f on the job's id and the test's
#   folder), no run folder, no half-staged plan.
# - A node that cannot be reached (exit 1), a failing python_venv, a key the
#   node refuses and a changed host key (exit 2, even with --accept-new-hosts)
#   are errors naming the node before anything starts.
#
# Both "nodes" are this machine, so they would share OpenMPI's shared-memory
# segment and session names (same host name): the node's shared_envs give its
# daemon and workers folders of their own (docs/multinode.md).
# Needs $AUTODIST, $AD_SRC, Debian's python3 (torch, onnx), sshd, root.
set -euo pipefail

: "${AUTODIST:?set AUTODIST to the autodist binary}"
: "${AD_SRC:?set AD_SRC to the repository root}"
PYTHON=${PYTHON:-/usr/bin/python3}
# shellcheck source=lib.sh
source "$AD_SRC/tests/e2e/lib.sh" ad_multinode
# shellcheck source=sshd.sh
source "$AD_SRC/tests/e2e/sshd.sh"

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
pass() { echo "PASS $*"; }

P2=$(free_port 127.0.0.2)
start_sshd 127.0.0.2 "$P2"
known_hosts_line 127.0.0.2 "$P2" >"$T/known_hosts"

"$PYTHON" "$AD_SRC/tests/ref/models.py" "$T" mlp_small >/dev/null
"$PYTHON" - <<'EOF'
import numpy as np
rng = np.random.default_rng(0)
np.save("x.npy", rng.standard_normal((64, 64)).astype(np.float32))
np.save("y.npy", rng.integers(0, 10, 64).astype(np.int64))
EOF
cat >train.yml <<'EOF'
loss: cross_entropy
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
EOF

# Folder names with shell metacharacters, for shared_envs.
META="$T/node2/c a\$b'c;d"
TMPB="$T/node2/t a\$b'c;d"
mkdir -p "$T/node2/shm" "$TMPB"

# spec FILE KNOWN_HOSTS CPUS2 CACHE [PYTHON_VENV]: a two-node resource spec.
# Values are written as YAML double-quoted strings (the paths hold ' and $).
spec() {
  local venv=""
  [ -z "${5:-}" ] || venv="    python_venv: \"$5\""
  cat >"$1" <<EOF
nodes:
  - address: localhost
    cpus: [0, 1]
    chief: true
  - address: 127.0.0.2
    cpus: $3
    ssh_config: n2
ssh:
  n2:
    port: $P2
    key_file: "$T/ssh/id_ed25519"
    known_hosts: "$2"
$venv
    shared_envs:
      XDG_CACHE_HOME: "$4"
      OMPI_MCA_orte_tmpdir_base: "$TMPB"
      OMPI_MCA_btl_vader_backing_directory: "$T/node2/shm"
EOF
}
compile() {
  "$AUTODIST" compile mlp_small.onnx -r "$1" -t train.yml -s allreduce -o "$2" >"$T/c.txt" 2>&1 ||
    { cat "$T/c.txt" >&2; exit 1; }
}
cat >one.yml <<'EOF'
nodes:
  - address: localhost
    cpus: [0, 1, 2, 3]
EOF
spec two.yml "$T/known_hosts" "[0, 1]" "$T/node2/cache"
spec new.yml "$T/kh_new" "[0, 4096]" "$META"
compile one.yml "$T/one"
compile two.yml "$T/two"
compile new.yml "$T/new"
D=(--data input=x.npy --data label=y.npy)

# Processes with $1 in their command line, but for the test's sshd servers.
procs() { pgrep -af -- "$1" | grep -v -e "/usr/sbin/sshd" -e "sshd: " || true; }

# Nothing of this test (or of job $2) may be left running, and no run folder
# or half-staged plan may remain.
check_clean() {
  local what=$1 job=${2:-}
  sleep 0.2
  if [ -n "$(procs "$T/")" ]; then
    fail "$what: processes left: $(procs "$T/" | tr '\n' ';')"
  fi
  if [ -n "$job" ] && [ -n "$(procs "$job")" ]; then
    fail "$what: processes of job $job left: $(procs "$job" | tr '\n' ';')"
  fi
  if [ -n "$(ls -A "$T/tmp")" ]; then
    fail "$what: run folder left: $(ls -A "$T/tmp")"
    rm -rf "${T:?}/tmp/"*
  fi
  if compgen -G "$T/node2/*/autodist/plans/*.tmp.*" >/dev/null; then
    fail "$what: half-staged plan left: $(echo "$T"/node2/*/autodist/plans/*.tmp.*)"
  fi
}

# expect NAME CODE MESSAGE -- ARGS: `autodist ARGS` exits CODE, stderr has MESSAGE.
expect() {
  local name=$1 code=$2 msg=$3 rc=0
  shift 4
  "$AUTODIST" "$@" >"$T/out.txt" 2>"$T/err.txt" || rc=$?
  if [ "$rc" != "$code" ]; then
    fail "$name: exit $rc, expected $code; stderr: $(cat "$T/err.txt")"
  elif ! grep -qF -- "$msg" "$T/err.txt"; then
    fail "$name: stderr lacks '$msg'; got: $(cat "$T/err.txt")"
  else
    pass "$name"
  fi
  check_clean "$name"
}

# ---- host keys ----
expect "unknown host key is refused" 2 "autodist: error: node '127.0.0.2': unknown host key" -- run "$T/new" "${D[@]}" --steps 2
[ ! -e "$META" ] || fail "unknown host key: something was staged: $(find "$META" | head -3)"
expect "--accept-new-hosts runs" 0 "autodist: trained 2 steps" -- \
  run "$T/new" "${D[@]}" --steps 2 --accept-new-hosts
grep -qF "$(known_hosts_line 127.0.0.2 "$P2")" "$T/kh_new" 2>/dev/null ||
  fail "--accept-new-hosts: key not recorded in kh_new: $(cat "$T/kh_new" 2>&1)"
grep -qF "[127.0.0.2 rank 3] autodist: warning: worker rank 3: CPU core 4096 does not exist" \
  "$T/err.txt" || fail "remote output is not prefixed with node and rank: $(cat "$T/err.txt")"
hash_new=$(sha256sum "$T/new/plan.yaml" | cut -d' ' -f1)
[ -f "$META/autodist/plans/$hash_new/plan.yaml" ] ||
  fail "shared_envs: no staged plan under the literal XDG_CACHE_HOME '$META'"
expect "recorded host key is accepted" 0 "autodist: trained 2 steps" -- \
  run "$T/new" "${D[@]}" --steps 2

# ---- the same run on one node and on two ----
expect "one node, 4 workers" 0 "on 4 workers" -- run "$T/one" "${D[@]}" --steps 8 --metrics one.jsonl
# Two runs at once stage the fresh plan into the same folder.
"$AUTODIST" run "$T/two" "${D[@]}" --steps 8 --metrics two_a.jsonl >"$T/a.out" 2>"$T/a.err" &
pa=$!
"$AUTODIST" run "$T/two" "${D[@]}" --steps 8 --metrics two_b.jsonl >"$T/b.out" 2>"$T/b.err" &
pb=$!
rca=0 rcb=0
wait "$pa" || rca=$?
wait "$pb" || rcb=$?
if [ "$rca" != 0 ] || [ "$rcb" != 0 ]; then
  fail "two runs staging at once: exit $rca and $rcb: $(cat "$T/a.err" "$T/b.err")"
else
  pass "two runs staging at once"
fi
grep -qF "autodist: node '127.0.0.2': copied the plan and" "$T/a.err" "$T/b.err" ||
  fail "staging: no run copied the plan: $(cat "$T/a.err" "$T/b.err")"
staged=$(ls -A "$T/node2/cache/autodist/plans")
hash_two=$(sha256sum "$T/two/plan.yaml" | cut -d' ' -f1)
[ "$(echo "$staged" | grep -v '^\.lock$')" = "$hash_two" ] ||
  fail "staging: expected only $hash_two (and .lock) in plans/, got: $staged"
check_clean "two runs staging at once"
for m in two_a two_b; do
  "$PYTHON" - "$m.jsonl" one.jsonl <<'EOF' || fail "$m: losses differ from one node"
import json, sys
got = [json.loads(l)["loss"] for l in open(sys.argv[1])]
ref = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert len(got) == len(ref) == 8, (len(got), len(ref))
worst = max(abs(g - r) / abs(r) for g, r in zip(got, ref))
print("losses of %s vs one node: worst relative difference %.2e" % (sys.argv[1], worst))
assert worst <= 1e-5, worst
EOF
done
expect "a second run copies nothing" 0 "on 4 workers" -- run "$T/two" "${D[@]}" --steps 2
if grep -qF "copied" "$T/err.txt"; then
  fail "second run copied again: $(cat "$T/err.txt")"
fi

# ---- an inference plan on two nodes: every sample's output, written on the chief ----
"$AUTODIST" compile mlp_small.onnx -r two.yml --infer --batch 12 -o "$T/inf2" >"$T/c.txt" 2>&1 ||
  fail "compile --infer on two nodes: $(cat "$T/c.txt")"
expect "inference on two nodes" 0 "autodist: inferred 64 samples on 4 workers" -- \
  run "$T/inf2" --data input=x.npy --out logits=inf2.npy
grep -qF "infer: 64/64 samples (100%)" "$T/err.txt" ||
  fail "inference on two nodes: no progress line: $(cat "$T/err.txt")"
"$AUTODIST" infer mlp_small.onnx --data input=x.npy --out logits=inf1.npy 2>"$T/c.txt" ||
  fail "autodist infer: $(cat "$T/c.txt")"
"$PYTHON" - <<'EOF' || fail "inference on two nodes: outputs differ from autodist infer"
import numpy as np
got, ref = np.load("inf2.npy"), np.load("inf1.npy")
assert got.shape == ref.shape == (64, 10), (got.shape, ref.shape)
assert np.allclose(got, ref, rtol=1e-5, atol=1e-6), np.abs(got - ref).max()
EOF
if compgen -G "$T/inf2.npy.*.tmp" >/dev/null; then
  fail "inference on two nodes: temporary output left"
fi

# ---- failures while running ----
run_pid=
job=
start_long_run() {
  "$AUTODIST" run "$T/two" "${D[@]}" --steps 100000000 "$@" >"$T/out.txt" 2>"$T/err.txt" &
  run_pid=$!
  local i
  for i in $(seq 150); do
    [ "$(pgrep -fc "$T/node2/cache/autodist/plans/$hash_two" || true)" -ge 2 ] &&
      compgen -G "$T/tmp/*/rank1.pid" >/dev/null && break
    sleep 0.1
  done
  job=$(pgrep -af "__worker --job adj-" | grep -F "$T/" | grep -o "adj-[0-9a-f]*" | head -1 || true)
  [ -n "$job" ] || fail "the job did not start: $(cat "$T/err.txt")"
  sleep 0.5
}
# Sets run_rc; fails when `run` takes more than 10 s to exit.
wait_run() {
  await_run
  [ "$run_s" != 100 ] || fail "run did not exit within 10 s"
}
# The worker on 127.0.0.2 with MPI rank $1.
remote_rank_pid() {
  local p
  for p in $(pgrep -f "$T/node2/cache/autodist/plans/$hash_two"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
      return 0
    fi
  done
}

start_long_run
compgen -G "$TMPB/ompi.*" >/dev/null ||
  fail "shared_envs: OpenMPI's session folder is not under the literal '$TMPB'"
pid=$(remote_rank_pid 3)
[ -n "$pid" ] || fail "no worker of rank 3 on 127.0.0.2"
kill -KILL "${pid:-0}" 2>/dev/null || true
wait_run
if [ "$run_rc" = 1 ] && grep -qF \
  "autodist: error: worker rank 3 (127.0.0.2, pid $pid) died (killed by signal 9); the job was stopped" \
  "$T/err.txt"; then
  pass "SIGKILL of a worker on 127.0.0.2"
else
  fail "SIGKILL of a worker on 127.0.0.2: exit $run_rc; got: $(cat "$T/err.txt")"
fi
check_clean "SIGKILL of a worker on 127.0.0.2" "$job"

# ---- resume on two nodes after a worker there was killed ----
start_long_run --checkpoint "$T/ck" --checkpoint-every 5
for _ in $(seq 150); do
  ls "$T/ck" 2>/dev/null | grep -qE '^ckpt-[1-9][0-9]+$' && break # a checkpoint at step >= 10
  sleep 0.1
done
pid=$(remote_rank_pid 3)
kill -KILL "${pid:-0}" 2>/dev/null || true
wait_run
[ "$run_rc" = 1 ] || fail "checkpointed run: exit $run_rc after SIGKILL of rank 3, expected 1"
check_clean "checkpointed run killed on 127.0.0.2" "$job"
c=$(ls "$T/ck" 2>/dev/null | sed -n 's/^ckpt-\([0-9]*\)$/\1/p' | sort -n | tail -1)
if [ -z "$c" ] || [ "$c" -lt 10 ]; then
  fail "no checkpoint at step >= 10 before the kill: $(ls "$T/ck" 2>&1)"
else
  S=$((c + 7))
  # (it must say so: a run from scratch would end with the same weights)
  expect "resume on two nodes from ckpt-$c" 0 "ckpt-$c (step $c)" -- \
    run "$T/two" "${D[@]}" --steps "$S" --checkpoint "$T/ck" --resume --save "$T/resumed.onnx"
  expect "uninterrupted run of $S steps on two nodes" 0 "" -- \
    run "$T/two" "${D[@]}" --steps "$S" --save "$T/straight.onnx"
  if cmp -s "$T/resumed.onnx" "$T/straight.onnx"; then
    pass "resumed weights equal the uninterrupted run's, byte for byte"
  else
    fail "resumed weights differ from the uninterrupted run's"
  fi
fi

start_long_run
kill -TERM "$run_pid"
wait_run
if [ "$run_rc" = 1 ] &&
  grep -qF "autodist: error: interrupted by signal 15; the job was stopped" "$T/err.txt"; then
  pass "SIGTERM to run"
else
  fail "SIGTERM to run: exit $run_rc; got: $(cat "$T/err.txt")"
fi
check_clean "SIGTERM to run" "$job"

start_long_run
orted=$(pgrep -f "orted .*autodist_job \"?$job" | while read -r p; do
  # the daemon itself, not the shell or agent that started it
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = orted ] && echo "$p"
done | head -1 || true)
[ -n "$orted" ] || fail "no MPI daemon of job $job on 127.0.0.2"
kill -KILL "${orted:-0}" 2>/dev/null || true
wait_run
if [ "$run_rc" = 1 ] && grep -qF "autodist: error: lost the connection to node '127.0.0.2'" \
  "$T/err.txt"; then
  pass "loss of the MPI daemon on 127.0.0.2"
else
  fail "loss of the MPI daemon on 127.0.0.2: exit $run_rc; got: $(cat "$T/err.txt")"
fi
check_clean "loss of the MPI daemon on 127.0.0.2" "$job"

# ---- nodes that are not ready ----
P3=$(free_port 127.0.0.3)
sed -e "s/127.0.0.2/127.0.0.3/" -e "s/port: $P2/port: $P3/" two.yml >down.yml
compile down.yml "$T/down"
expect "unreachable node" 1 "autodist: error: node '127.0.0.3' port $P3 is unreachable" -- run "$T/down" "${D[@]}" --steps 2
spec venv.yml "$T/known_hosts" "[0, 1]" "$T/node2/cache" "false"
compile venv.yml "$T/venv"
expect "failing python_venv" 2 "error: node '127.0.0.2': its python_venv 'false' failed" -- \
  run "$T/venv" "${D[@]}" --steps 2

# A key the node does not accept, then a node whose host key changed: both
# refused by `run` itself (exit 2) before anything starts.
ssh-keygen -q -t ed25519 -N '' -f "$T/wrong_key"
sed -e "s|key_file: \"$T/ssh/id_ed25519\"|key_file: \"$T/wrong_key\"|" two.yml >wrongkey.yml
grep -qF "$T/wrong_key" wrongkey.yml || fail "wrongkey.yml does not name the wrong key"
compile wrongkey.yml "$T/wrongkey"
expect "a key the node refuses" 2 "error: node '127.0.0.2': authentication as" -- \
  run "$T/wrongkey" "${D[@]}" --steps 2
new_host_key 127.0.0.2 "$P2"
expect "changed host key is refused" 2 "error: node '127.0.0.2': host key has CHANGED" -- \
  run "$T/new" "${D[@]}" --steps 2 --accept-new-hosts

if [ "$failures" != 0 ]; then
  echo "test_multinode: $failures failure(s)" >&2
  exit 1
fi
echo "test_multinode: ok"
