#!/usr/bin/env bash
# Installs what autodist needs to build and test on Debian 12 (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
pkgs=(cmake gcc g++ make pkg-config libprotobuf-c-dev protobuf-c-compiler libonnx-dev libyaml-dev
      llvm-16-dev libopenblas-dev libopenmpi-dev openmpi-bin libssh-dev openssh-server openssh-client
      python3 python3-pip python3-numpy python3-torch python3-onnx python3-sklearn python3-yaml
      python3-torchvision
      clang-16 libclang-rt-16-dev)  # clang + libFuzzer: scripts/fuzz.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# onnxruntime is a test-time reference only (never needed at run time).
if ! /usr/bin/python3 -c "import onnxruntime" 2>/dev/null; then
  /usr/bin/python3 -m pip install -q --break-system-packages onnxruntime
fi
