#!/usr/bin/env bash
# tests/e2e/test_ssh.sh: reaching the other nodes of a plan over SSH, through
# `autodist __rsh HOST WORD...` (the remote-shell agent `run` gives mpirun),
# against real sshd servers on 127.0.0.2 and 127.0.0.3 with generated keys.
#
# Checked, with the exact exit code and message: an unknown host key is
# refused (exit 2, naming the node and --accept-new-hosts) unless
# AD_ACCEPT_NEW_HOSTS=1, which records the line ssh-keygen finds; a changed
# host key is always refused (exit 2, naming CHANGED and the fix, and the fix
# works); a wrong user, a wrong key and an unreadable key are exit 2; a node
# that is not listening is exit 1 within seconds. The remote command's
# stdout, stderr and exit code come back unchanged (a 3 MB output byte for
# byte); shared_envs full of shell metacharacters reach the command literally
# and run nothing; the agent killed with SIGTERM or SIGKILL leaves no remote
# process behind. Every call runs under `timeout`, so a hang is a failure, and
# no sshd of the test survives it. Needs root (sshd), /usr/sbin/sshd,
# ssh-keygen, $AUTODIST and Debian's python3 with onnx + numpy.
set -euo pipefail

: "${AUTODIST:?set AUTODIST to the autodist binary}"
PYTHON=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh" ad_ssh
# shellcheck source=sshd.sh
source "$here/sshd.sh"

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# rsh CODE [VAR=VALUE...] -- WORD...: runs `autodist __rsh` on the plan $PLAN
# (10 s at most), expects exit CODE; stdout in $T/out.txt, stderr in
# $T/err.txt, seconds taken in $secs.
rsh() {
  local code=$1 rc=0 t0 env=()
  shift
  while [ "$1" != -- ]; do env+=("$1"); shift; done
  shift
  t0=$(date +%s%N)
  env AD_PLAN_DIR="$PLAN" "${env[@]}" timeout 10 "$AUTODIST" __rsh "$@" \
    </dev/null >"$T/out.txt" 2>"$T/err.txt" || rc=$?
  secs=$((($(date +%s%N) - t0) / 1000000000))
  if [ "$rc" != "$code" ]; then
    fail "__rsh $*: exit $rc, expected $code; stderr: $(cat "$T/err.txt")"
    return 1
  fi
}

# expect_err MESSAGE: stderr is exactly that one line.
expect_err() {
  if [ "$(cat "$T/err.txt")" != "$1" ]; then
    fail "stderr: got '$(cat "$T/err.txt")', want '$1'"
  fi
}

# fingerprint ADDR PORT: "ED25519 SHA256:..." of the server's host key, by ssh-keygen.
fingerprint() {
  echo "ED25519 $(ssh-keygen -lf "$(sshd_dir "$1" "$2")/host_ed25519.pub" -E sha256 | cut -d' ' -f2)"
}

# A model and a plan for three nodes: the chief and two nodes over SSH.
"$PYTHON" - <<'EOF'
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
w = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
g = helper.make_graph(
    [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)], "linear",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w, b])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), "model.onnx")
# 3 MB that the remote side prints back.
open("blob.bin", "wb").write(np.random.default_rng(0).integers(0, 256, 3 << 20, np.uint8).tobytes())
EOF
printf 'loss: cross_entropy\nbatch_size: 6\noptimizer: {name: sgd, lr: 0.1}\n' >train.yml

P2=$(free_port 127.0.0.2)
P3=$(free_port 127.0.0.3)
start_sshd 127.0.0.2 "$P2"
start_sshd 127.0.0.3 "$P3"
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/other_key" # not in authorized_keys

# The values each need quoting for a different reason; none may run anything.
cat >envs.yml <<EOF
      QUOTE: "'; touch $T/pwned; echo '"
      SUBST: "\$(touch $T/pwned2)"
      SPACES: '"a b"  c'
      BACKSLASH: 'a\\b\\\\c\\'
      NEWLINE: "x\ny"
      EMPTY: ''
EOF
# compile_plan DIR [USER [KEY_FILE]]: the three-node plan; 127.0.0.2 logs in
# as USER (root) with KEY_FILE (the authorized key).
compile_plan() {
  local dir=$1 user=${2:-root} key=${3:-$T/ssh/id_ed25519}
  {
    cat <<EOF
nodes:
  - address: localhost
    chief: true
  - address: 127.0.0.2
    ssh_config: two
  - address: 127.0.0.3
    ssh_config: three
ssh:
  two:
    username: $user
    port: $P2
    key_file: $key
    known_hosts: $T/known_hosts
    python_venv: 'VENV_MARK="from venv"; export VENV_MARK # a comment'
    shared_envs:
EOF
    cat envs.yml
    cat <<EOF
  three:
    username: root
    port: $P3
    key_file: $T/ssh/id_ed25519
    known_hosts: $T/kh/three/known_hosts
EOF
  } >spec.yml
  "$AUTODIST" compile model.onnx -r spec.yml -t train.yml -o "$dir" >"$T/c.txt" 2>&1 ||
    { cat "$T/c.txt" >&2; exit 1; }
}
compile_plan "$T/plan"
compile_plan "$T/plan_user" nosuchuser
compile_plan "$T/plan_key" root "$T/ssh/other_key"
compile_plan "$T/plan_nokey" root "$T/ssh/missing_key"
PLAN=$T/plan

# 1. Unknown host key: refused at once, nothing recorded.
if rsh 2 -- 127.0.0.2 echo hi; then
  expect_err "autodist: error: node '127.0.0.2': unknown host key ($(fingerprint 127.0.0.2 "$P2")); check it and run again with --accept-new-hosts to record it in $T/known_hosts"
  [ "$secs" -le 3 ] || fail "unknown host key: took $secs s"
fi
[ ! -e "$T/known_hosts" ] || fail "known_hosts was written without AD_ACCEPT_NEW_HOSTS"

# 2. Accepted: recorded as ssh records it, then the command runs.
if rsh 0 AD_ACCEPT_NEW_HOSTS=1 -- 127.0.0.2 echo hi; then
  [ "$(cat "$T/out.txt")" = hi ] || fail "accept-new: stdout '$(cat "$T/out.txt")'"
  expect_err "autodist: node '127.0.0.2': recorded its host key ($(fingerprint 127.0.0.2 "$P2")) in $T/known_hosts"
fi
[ "$(cat "$T/known_hosts" 2>/dev/null)" = "$(known_hosts_line 127.0.0.2 "$P2")" ] ||
  fail "known_hosts: got '$(cat "$T/known_hosts" 2>/dev/null)', want '$(known_hosts_line 127.0.0.2 "$P2")'"
ssh-keygen -F "[127.0.0.2]:$P2" -f "$T/known_hosts" >/dev/null || fail "ssh-keygen -F does not find the recorded key"
# The other node: its own known_hosts file, in a folder that does not exist yet.
if rsh 0 AD_ACCEPT_NEW_HOSTS=1 -- 127.0.0.3 echo three; then
  [ "$(cat "$T/out.txt")" = three ] || fail "node 3: stdout '$(cat "$T/out.txt")'"
fi
[ "$(cat "$T/kh/three/known_hosts" 2>/dev/null)" = "$(known_hosts_line 127.0.0.3 "$P3")" ] ||
  fail "node 3 known_hosts: '$(cat "$T/kh/three/known_hosts" 2>/dev/null)'"

# 3. The command's streams and exit code, unchanged.
rsh 0 -- 127.0.0.2 'echo out; echo err >&2' && {
  [ "$(cat "$T/out.txt")" = out ] || fail "stdout: '$(cat "$T/out.txt")'"
  [ "$(cat "$T/err.txt")" = err ] || fail "stderr: '$(cat "$T/err.txt")'"
}
rsh 7 -- 127.0.0.2 exit 7 || true
rsh 137 -- 127.0.0.2 'kill -9 $$' || true
rsh 0 -- 127.0.0.2 cat "$T/blob.bin" &&
  { cmp -s "$T/out.txt" "$T/blob.bin" || fail "3 MB output: $(wc -c <"$T/out.txt") bytes differ"; }
# A compound line, as mpirun sends for sh (and a trailing comment).
rsh 0 -- 127.0.0.2 '( test ! -r ./.profile || . ./.profile; echo compound )' '# done' &&
  { [ "$(cat "$T/out.txt")" = compound ] || fail "compound: '$(cat "$T/out.txt")'"; }

# 4. python_venv ran; shared_envs arrive literally and execute nothing.
if rsh 0 -- 127.0.0.2 "$PYTHON" -c "'import os, json; print(json.dumps([os.environ.get(k) for k in (\"VENV_MARK\", \"QUOTE\", \"SUBST\", \"SPACES\", \"BACKSLASH\", \"NEWLINE\", \"EMPTY\")]))'"; then
  want=$("$PYTHON" -c "import json; print(json.dumps(['from venv', \"'; touch $T/pwned; echo '\", '\$(touch $T/pwned2)', '\"a b\"  c', 'a\\\\b\\\\\\\\c\\\\', 'x\\ny', '']))")
  [ "$(cat "$T/out.txt")" = "$want" ] || fail "environment: got $(cat "$T/out.txt"), want $want"
fi
[ ! -e "$T/pwned" ] && [ ! -e "$T/pwned2" ] || fail "a shared_envs value was executed"

# 5. Authentication: wrong user, wrong key, unreadable key (config: exit 2).
PLAN=$T/plan_user
rsh 2 -- 127.0.0.2 true &&
  expect_err "autodist: error: node '127.0.0.2': authentication as 'nosuchuser' failed (key $T/ssh/id_ed25519); check username and key_file in its ssh group"
PLAN=$T/plan_key
rsh 2 -- 127.0.0.2 true &&
  expect_err "autodist: error: node '127.0.0.2': authentication as 'root' failed (key $T/ssh/other_key); check username and key_file in its ssh group"
PLAN=$T/plan_nokey
rsh 2 -- 127.0.0.2 true &&
  expect_err "autodist: error: node '127.0.0.2': cannot read key_file '$T/ssh/missing_key': No such file or directory"
PLAN=$T/plan

# 6. Not the plan's node, no plan.
rsh 2 -- 127.0.0.4 true &&
  expect_err "autodist: error: node '127.0.0.4' is not in the plan $T/plan/plan.yaml (nodes: localhost, 127.0.0.2, 127.0.0.3)"
rsh 2 -- localhost true &&
  expect_err "autodist: error: node 'localhost' has no ssh group in the plan $T/plan/plan.yaml; the chief runs its own workers"
rc=0
env -u AD_PLAN_DIR timeout 10 "$AUTODIST" __rsh 127.0.0.2 true 2>"$T/err.txt" || rc=$?
[ "$rc" = 2 ] || fail "no AD_PLAN_DIR: exit $rc"
expect_err "autodist: error: __rsh: AD_PLAN_DIR is not set (the agent is started by \`autodist run\`, which names the plan)"

# 7. Killed agent: the remote command goes too (SIGTERM is forwarded; SIGKILL
# cannot be, the lifeline stops it). A copy of sleep, to find it by path.
cp "$(command -v sleep)" "$T/sleep"
for sig in TERM KILL; do
  AD_PLAN_DIR=$PLAN "$AUTODIST" __rsh 127.0.0.2 "$T/sleep" 30 </dev/null >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do pgrep -f "^$T/sleep 30" >/dev/null && break; sleep 0.05; done
  pgrep -f "^$T/sleep 30" >/dev/null || fail "SIG$sig: the remote sleep never started"
  kill -"$sig" "$pid" || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "SIG$sig: the agent is still running after 5 s"
    kill -KILL "$pid"
  fi
  rc=0
  wait "$pid" || rc=$?
  want=$((128 + $(kill -l "$sig")))
  [ "$rc" = "$want" ] || fail "SIG$sig: the agent exited $rc, expected $want"
  for _ in $(seq 60); do pgrep -f "^$T/sleep 30" >/dev/null || break; sleep 0.05; done
  if pgrep -f "^$T/sleep 30" >/dev/null; then
    fail "SIG$sig: remote process left: $(pgrep -af "^$T/sleep")"
    pkill -KILL -f "^$T/sleep 30" || true
  fi
done

# 8. A changed host key (a reinstalled node): refused even with
# AD_ACCEPT_NEW_HOSTS; the fix the message gives works.
new_host_key 127.0.0.2 "$P2"
before=$(cat "$T/known_hosts")
fix="ssh-keygen -R '[127.0.0.2]:$P2' -f $T/known_hosts"
for accept in 0 1; do
  rsh 2 AD_ACCEPT_NEW_HOSTS=$accept -- 127.0.0.2 echo hi &&
    expect_err "autodist: error: node '127.0.0.2': host key has CHANGED (possible man-in-the-middle); if the node was reinstalled, remove its line from $T/known_hosts ($fix)"
done
[ "$(cat "$T/known_hosts")" = "$before" ] || fail "a changed host key altered known_hosts"
eval "$fix" >/dev/null 2>&1
rsh 0 AD_ACCEPT_NEW_HOSTS=1 -- 127.0.0.2 echo hi || true
grep -qF "$(known_hosts_line 127.0.0.2 "$P2")" "$T/known_hosts" || fail "the new host key was not recorded after the fix"

# 9. A node that does not answer: a job failure (exit 1), at once.
stop_sshd 127.0.0.3 "$P3"
rsh 1 -- 127.0.0.3 true &&
  expect_err "autodist: error: node '127.0.0.3' port $P3 is unreachable: Connection refused"
[ "$secs" -le 3 ] || fail "unreachable: took $secs s"

# No server of the test and no remote command may outlive it.
sshd_cleanup
if pgrep -f "$T/" >/dev/null; then
  fail "processes left: $(pgrep -af "$T/" | tr '\n' ';')"
fi
if [ "$failures" -gt 0 ]; then
  echo "test_ssh: $failures failure(s)" >&2
  exit 1
fi
echo "test_ssh: ok"
