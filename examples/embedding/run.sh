#!/usr/bin/env bash
# examples/embedding/run.sh: train the 50,000-word embedding classifier with
# autodist on two CPU workers and report its test accuracy.
#
#   compile  model.onnx + resource_spec.yml + train.yml -> plan (allreduce)
#   run      2 epochs over x_train.npy / y_train.npy -> trained.onnx, metrics.jsonl
#   infer    trained.onnx on x_test.npy -> pred.npy (logits)
#   evaluate prints "embedding: test accuracy A after N steps on W workers"; fails below 0.85
#
# Uses build/autodist unless AUTODIST is set; writes into build/embedding (or $OUT).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
AUTODIST="${AUTODIST:-$ROOT/build/autodist}"
PYTHON="${PYTHON:-/usr/bin/python3}"
OUT="${OUT:-$ROOT/build/embedding}"
EPOCHS=2

if [ ! -x "$AUTODIST" ]; then
  echo "run.sh: $AUTODIST not found; build first (make build) or set AUTODIST" >&2
  exit 2
fi
mkdir -p "$OUT"
cd "$OUT"
set -x
"$AUTODIST" compile "$HERE/model.onnx" -r "$HERE/resource_spec.yml" -t "$HERE/train.yml" \
  -s allreduce -o plan
"$AUTODIST" run plan --data input="$HERE/x_train.npy" --data label="$HERE/y_train.npy" \
  --epochs "$EPOCHS" --metrics metrics.jsonl --save trained.onnx
"$AUTODIST" infer trained.onnx --data input="$HERE/x_test.npy" --out logits=pred.npy
{ set +x; } 2>/dev/null
"$PYTHON" "$HERE/evaluate.py" --pred pred.npy --labels "$HERE/y_test.npy" \
  --metrics metrics.jsonl --spec "$HERE/resource_spec.yml" --min 0.85
