# tests/e2e/lib.sh: the set-up the e2e tests share (sourced, not a test).
# Makes the test's temp folder $T (named after $1), points TMPDIR (where `run`
# makes its run folder) into it, cds there, and on exit stops a run still
# going in $run_pid (a failed check) through `run` itself, then removes $T.
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
