# tests/e2e/sshd.sh: real sshd servers for the multi-node tests (sourced after
# lib.sh, not a test). Everything lives under the test's temp folder $T:
#
#   start_sshd ADDR PORT     starts /usr/sbin/sshd on ADDR:PORT (a loopback
#                            address such as 127.0.0.2) with its own host key,
#                            accepting the user key $T/ssh/id_ed25519 (made on
#                            first use, with $T/ssh/authorized_keys); returns
#                            once it accepts connections.
#   stop_sshd ADDR PORT      stops it and every session it started.
#   new_host_key ADDR PORT   gives it a new host key (restarts it): a
#                            "reinstalled node" for host-key-change tests.
#   known_hosts_line ADDR PORT   prints the known_hosts line for its key, as
#                            ssh would record it ("[ADDR]:PORT ssh-ed25519 ...").
#   free_port ADDR           prints a port nothing listens on at ADDR (another
#                            sshd may hold 2222 on the machine).
#
# The tests run as root (sshd must); logins are as root with the generated key.
# On exit every sshd started here is stopped, with its sessions, before lib.sh
# removes $T, so no server outlives the test.
: "${T:?source lib.sh first}"

SSHD=/usr/sbin/sshd
sshd_started=()

sshd_dir() { echo "$T/ssh/sshd-$1-$2"; }

sshd_user_key() {
  mkdir -p "$T/ssh"
  if [ ! -f "$T/ssh/id_ed25519" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "autodist-test" -f "$T/ssh/id_ed25519"
    cp "$T/ssh/id_ed25519.pub" "$T/ssh/authorized_keys"
  fi
}

start_sshd() {
  local addr=$1 port=$2 d
  d=$(sshd_dir "$addr" "$port")
  sshd_user_key
  mkdir -p "$d" /run/sshd
  [ -f "$d/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "$addr" -f "$d/host_ed25519"
  cat >"$d/sshd_config" <<EOF
ListenAddress $addr:$port
HostKey $d/host_ed25519
PidFile $d/sshd.pid
AuthorizedKeysFile $T/ssh/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
MaxStartups 100
LogLevel VERBOSE
EOF
  rm -f "$d/sshd.pid"
  "$SSHD" -f "$d/sshd_config" -E "$d/sshd.log" || {
    echo "start_sshd $addr $port: sshd failed: $(cat "$d/sshd.log")" >&2
    return 1
  }
  sshd_started+=("$addr:$port")
  local i
  for i in $(seq 100); do
    if [ -s "$d/sshd.pid" ] && (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then
      return 0
    fi
    grep -q "Cannot bind" "$d/sshd.log" 2>/dev/null && break
    sleep 0.05
  done
  echo "start_sshd $addr $port: not listening after 5 s: $(cat "$d/sshd.log")" >&2
  return 1
}

# Every descendant of pid $1 (the sshd listener forks one process per
# connection, which forks the session), deepest first.
sshd_descendants() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    sshd_descendants "$c"
    echo "$c"
  done
}

# The listener's pid, empty when it is gone (sshd removes its pid file as
# it exits, so the file is read once and may vanish at any time).
sshd_pid() {
  cat "$(sshd_dir "$1" "$2")/sshd.pid" 2>/dev/null || true
}

stop_sshd() {
  local pid p
  pid=$(sshd_pid "$1" "$2")
  [ -n "$pid" ] || return 0
  # Sessions first, so that no remote command of the test survives.
  for p in $(sshd_descendants "$pid") "$pid"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  wait_pid_gone "$pid"
  rm -f "$(sshd_dir "$1" "$2")/sshd.pid"
}

# Waits up to 5 s for process $1 to end; SIGKILL if it has not.
wait_pid_gone() {
  local i
  for i in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.05
  done
  kill -KILL "$1" 2>/dev/null || true
}

new_host_key() {
  local d
  d=$(sshd_dir "$1" "$2")
  stop_sshd "$1" "$2"
  rm -f "$d/host_ed25519" "$d/host_ed25519.pub"
  start_sshd "$1" "$2"
}

known_hosts_line() {
  local d host
  d=$(sshd_dir "$1" "$2")
  if [ "$2" = 22 ]; then host=$1; else host="[$1]:$2"; fi
  echo "$host $(cut -d' ' -f1,2 "$d/host_ed25519.pub")"
}

free_port() {
  local p
  for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/$1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "free_port $1: no free port found" >&2
  return 1
}

sshd_cleanup() {
  local s
  for s in "${sshd_started[@]}"; do
    stop_sshd "${s%:*}" "${s##*:}"
  done
}
# lib.sh's cleanup (which removes $T) runs after the servers are gone.
trap 'sshd_cleanup; cleanup' EXIT
