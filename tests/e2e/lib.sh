# tests/e2e/lib.sh: the set-up the e2e tests share (sourced, not a test).
# Makes the test's temp folder $T (named after $1), points TMPDIR (where `run`
# makes its run folder) into it, cds there, and on exit stops a run still
# going in $run_pid (a failed check) through `run` itself, then removes $T.
# await_run waits for such a run to end (see there).
T=$(mktemp -d "/tmp/$1.XXXXXX")
run_pid=
cleanup() {
  if [ -n "${run_pid:-}" ]; then
    kill -TERM "$run_pid" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
  fi
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/tmp"
export TMPDIR="$T/tmp"
cd "$T"

# Waits up to 10 s for the run started in the background ($run_pid) to end;
# sets run_s to the tenths of seconds that took (100: it was still running,
# and is then sent SIGTERM), run_rc to its exit code, and clears run_pid.
await_run() {
  local t
  for t in $(seq 100); do
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.1
  done
  run_s=$t
  if [ "$t" = 100 ]; then
    kill -TERM "$run_pid" 2>/dev/null || true
  fi
  run_rc=0
  wait "$run_pid" || run_rc=$?
  run_pid=
}
