#!/usr/bin/env bash
# tests/e2e/test_compile_errors.sh: bad input to `autodist compile` and
# `autodist infer` exits 2 with one message naming the place, and never leaves
# a plan folder (or a half-written one) behind.
set -euo pipefail
A=${AUTODIST:?} PY=${PYTHON:-/usr/bin/python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
pass=0 fail=0

# expect NAME WANTED_MESSAGE COMMAND...: exit code 2 and stderr containing the message.
expect() {
  local name=$1 want=$2
  shift 2
  local rc=0
  "$@" >out.txt 2>err.txt || rc=$?
  if [ "$rc" -eq 2 ] && grep -qF -- "$want" err.txt && [ ! -e plan ] && ! ls -d plan.tmp.* >/dev/null 2>&1; then
    pass=$((pass + 1))
    echo "PASS $name"
  else
    fail=$((fail + 1))
    echo "FAIL $name: rc=$rc, stderr: $(cat err.txt)"
    echo "     wanted: $want"
  fi
}

"$PY" - <<'PY'
import numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
good = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["logits"], transB=1, name="fc")],
                         "g", [x], [y], [w])
onnx.save(helper.make_model(good, opset_imports=[helper.make_opsetid("", 13)]), "good.onnx")
xi = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])
yo = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 5, 5])
k = numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "k")
bad = helper.make_graph([helper.make_node("ConvTranspose", ["input", "k"], ["logits"], name="deconv1")],
                        "g", [xi], [yo], [k])
onnx.save(helper.make_model(bad, opset_imports=[helper.make_opsetid("", 13)]), "unsupported.onnx")
onnx.save(helper.make_model(good, opset_imports=[helper.make_opsetid("", 18)]), "new.onnx")
fixed = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["logits"], transB=1, name="fc")],
                          "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [w])
onnx.save(helper.make_model(fixed, opset_imports=[helper.make_opsetid("", 13)]), "fixed.onnx")
np.save("x3.npy", np.zeros((5, 3), np.float32))
np.save("x4.npy", np.zeros((5, 4), np.float32))
PY
head -c 60 good.onnx >truncated.onnx
echo "not a model" >text.onnx
printf 'nodes:\n  - address: localhost\n    gpu: [0]\n' >unknown_key.yml
printf 'nodes:\n  - address: localhost\n    cpus: [0, 1]\n    chief: maybe\n' >wrong_type.yml
printf 'loss: cross_entropy\noutput: probs\n' >bad_output.yml
printf 'loss: cross_entropy\nfrozen: [nothere]\n' >bad_frozen.yml
printf 'batch_size: 5\n' >odd_batch.yml
printf 'nodes:\n  - address: localhost\n    cpus: [0, 1]\n' >two.yml

expect truncated_onnx "truncated.onnx: error: not a valid ONNX model" "$A" compile truncated.onnx
expect text_file "text.onnx: error: not a valid ONNX model" "$A" compile text.onnx
expect missing_model "nothere.onnx: error: cannot open" "$A" compile nothere.onnx
expect unsupported_op "unsupported.onnx: node 'deconv1' (ConvTranspose): error: op not supported" \
  "$A" compile unsupported.onnx
expect new_opset "new.onnx: error: opset 18 of domain 'ai.onnx' is not supported (autodist supports 1-17)" \
  "$A" compile new.onnx
expect unknown_key "unknown_key.yml:3:5: error: unknown key 'gpu' (did you mean 'gpus'?)" \
  "$A" compile good.onnx -r unknown_key.yml
expect wrong_type "wrong_type.yml:4:12: error:" "$A" compile good.onnx -r wrong_type.yml
expect bad_output "bad_output.yml:2:9: error: output 'probs' is not an output of good.onnx" \
  "$A" compile good.onnx -t bad_output.yml
expect bad_frozen "error: frozen: 'nothere' is not an initializer of good.onnx" \
  "$A" compile good.onnx -t bad_frozen.yml
expect uneven_batch "error: batch_size 5 cannot be split evenly over 2 workers" \
  "$A" compile good.onnx -r two.yml -t odd_batch.yml
expect fixed_batch "fixed.onnx: error: input 'input' has the fixed shape [1, 4], so it cannot take 64 samples per worker" \
  "$A" compile fixed.onnx
expect unknown_strategy "error: unknown strategy 'magic'" "$A" compile good.onnx -s magic
expect unknown_flag "error: unknown option '--fast'" "$A" compile good.onnx --fast
expect infer_shape "x3.npy: error: float32 [5, 3] does not fit input 'input' (float32 [5, 4])" \
  "$A" infer good.onnx --data input=x3.npy --out logits=y.npy
expect infer_output "error: --out probs: good.onnx has no output named 'probs'" \
  "$A" infer good.onnx --data input=x4.npy --out probs=y.npy

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
