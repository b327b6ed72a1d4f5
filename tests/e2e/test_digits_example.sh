#!/usr/bin/env bash
# tests/e2e/test_digits_example.sh: the README's demo, examples/digits, trains
# on two CPU workers and reaches the accuracy it promises (evaluate.py exits
# nonzero below 0.95 test accuracy).
set -euo pipefail
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
out=$(OUT="$T" AUTODIST="${AUTODIST:?}" bash "${AD_SRC:?}/examples/digits/run.sh" 2>&1) || {
  echo "$out"
  echo "0 passed, 1 failed"
  exit 1
}
line=$(echo "$out" | grep -E '^digits: test accuracy [0-9.]+ after [0-9]+ steps on 2 workers$')
echo "$line"
echo "1 passed, 0 failed"
