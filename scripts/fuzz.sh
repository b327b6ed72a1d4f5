#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in
# build-fuzz and runs each one for SECONDS (default 30) from its seed corpus.
# Fails on any crash, leak, timeout (> 10 s for one input), out-of-memory
# (> 2048 MB) or UBSan report; the input that did it is saved under
# build-fuzz/artifacts/TARGET/ (docs/testing.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     TARGET: onnx spec train plan (default: all)
#
# Environment: AD_FUZZ_BUILD (build folder, default build-fuzz), JOBS (build
# jobs, default nproc), CC_FUZZ (clang, default clang-16).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(onnx spec train plan)
build="${AD_FUZZ_BUILD:-$root/build-fuzz}"
cc="${CC_FUZZ:-clang-16}"
command -v "$cc" >/dev/null || { echo "fuzz: $cc not found (scripts/install-deps.sh installs it)" >&2; exit 2; }
cxx="${cc/clang/clang++}"

cmake -S "$root" -B "$build" -DAD_FUZZ=ON -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null

status=0
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  seeds="$root/tests/fuzz/seeds/$t"
  corpus="$build/corpus/$t"     # grows across runs; the seeds stay as they are
  art="$build/artifacts/$t"
  log="$build/logs/fuzz_$t.log"
  mkdir -p "$corpus" "$art" "$(dirname "$log")"
  case "$t" in
    onnx) opts=(-dict="$root/tests/fuzz/onnx.dict" -max_len=16384) ;;
    *) opts=(-dict="$root/tests/fuzz/yaml.dict" -max_len=4096) ;;
  esac
  rc=0
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
    "$bin" "${opts[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 \
    -print_final_stats=1 -artifact_prefix="$art/" "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    echo "fuzz_$t: FAILED (exit $rc) after ${execs:-?} runs; log: $log" >&2
    grep -E "^(==[0-9]+==ERROR|SUMMARY|.*runtime error)|Test unit written to" "$log" | head -20 >&2 || true
    status=1
  else
    echo "fuzz_$t: ok, ${execs:-?} runs in ${secs}s (${rate:-?} exec/s)"
  fi
done
exit $status
