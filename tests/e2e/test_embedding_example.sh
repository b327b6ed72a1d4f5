#!/usr/bin/env bash
# tests/e2e/test_embedding_example.sh: examples/embedding (a 50,000 x 32
# embedding table: Gather, ReduceMean, their gradients) trains on two CPU
# workers and reaches the accuracy it promises (evaluate.py exits nonzero
# below 0.85 test accuracy; PyTorch reaches 0.9087 on the same setup).
set -euo pipefail
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
out=$(OUT="$T" AUTODIST="${AUTODIST:?}" bash "${AD_SRC:?}/examples/embedding/run.sh" 2>&1) || {
  echo "$out"
  echo "0 passed, 1 failed"
  exit 1
}
line=$(echo "$out" | grep -E '^embedding: test accuracy [0-9.]+ after [0-9]+ steps on 2 workers$')
echo "$line"
echo "1 passed, 0 failed"
