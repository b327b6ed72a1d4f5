#!/usr/bin/env bash
# tests/e2e/test_examples.sh: every example trains on two CPU workers and
# reaches the accuracy it promises (examples/evaluate.py exits nonzero below
# the threshold its run.sh gives):
#   digits     the README's demo, sklearn digits, MLP (>= 0.95)
#   embedding  a 50,000 x 32 embedding table: Gather, ReduceMean and their
#              gradients (>= 0.85; PyTorch reaches 0.9087 on the same setup)
set -uo pipefail
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
for ex in digits embedding; do
  if out=$(OUT="$T/$ex" AUTODIST="${AUTODIST:?}" bash "${AD_SRC:?}/examples/$ex/run.sh" 2>&1) &&
    line=$(echo "$out" | grep -E "^$ex: test accuracy [0-9.]+ after [0-9]+ steps on 2 workers$"); then
    echo "PASS $line"
    pass=$((pass + 1))
  else
    echo "$out" | tail -20
    echo "FAIL $ex"
    fail=$((fail + 1))
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
