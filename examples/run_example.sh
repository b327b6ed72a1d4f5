#!/usr/bin/env bash
# examples/run_example.sh NAME EPOCHS MIN_ACCURACY: the steps every example
# runs, from its folder examples/NAME:
#
#   compile  model.onnx + resource_spec.yml + train.yml -> plan (-s auto, with --explain)
#   run      EPOCHS epochs over x_train.npy / y_train.npy -> trained.onnx, metrics.jsonl
#   infer    trained.onnx on x_test.npy -> pred.npy (logits)
#   evaluate prints "NAME: test accuracy A after N steps on W workers"; fails below MIN_ACCURACY
#
# Uses build/autodist unless AUTODIST is set; writes into build/NAME (or $OUT).
set -euo pipefail
NAME=${1:?usage: run_example.sh NAME EPOCHS MIN_ACCURACY}
EPOCHS=${2:?}
MIN=${3:?}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/examples/$NAME"
AUTODIST="${AUTODIST:-$ROOT/build/autodist}"
PYTHON="${PYTHON:-/usr/bin/python3}"
OUT="${OUT:-$ROOT/build/$NAME}"

if [ ! -x "$AUTODIST" ]; then
  echo "run.sh: $AUTODIST not found; build first (make build) or set AUTODIST" >&2
  exit 2
fi
mkdir -p "$OUT"
cd "$OUT"
set -x
"$AUTODIST" compile "$HERE/model.onnx" -r "$HERE/resource_spec.yml" -t "$HERE/train.yml" \
  -s auto --explain -o plan
"$AUTODIST" run plan --data input="$HERE/x_train.npy" --data label="$HERE/y_train.npy" \
  --epochs "$EPOCHS" --metrics metrics.jsonl --save trained.onnx
"$AUTODIST" infer trained.onnx --data input="$HERE/x_test.npy" --out logits=pred.npy
{ set +x; } 2>/dev/null
"$PYTHON" "$ROOT/examples/evaluate.py" --name "$NAME" --pred pred.npy \
  --labels "$HERE/y_test.npy" --metrics metrics.jsonl --spec "$HERE/resource_spec.yml" --min "$MIN"
