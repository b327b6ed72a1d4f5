#!/usr/bin/env python3
"""examples/embedding/export_model.py: the model of the embedding example.

tests/ref/models.py "embed" (seeded, so the export is reproducible): an
nn.Embedding of 50,000 x 32, the mean over the 16 tokens, Linear 32-64, ReLU,
Linear 64-4, exported to ONNX opset 13 with a dynamic batch axis: input
"input" int64 [batch, 16] token ids, output "logits" [batch, 4]; ops Gather,
ReduceMean, Gemm, Relu, Gemm; weights as initializers (emb.weight, fc1.weight,
...). The training itself is described by train.yml.

    /usr/bin/python3 export_model.py   # writes model.onnx
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import models  # noqa: E402


def main():
  _, ops = models.export("embed", os.path.join(HERE, "model.onnx"))
  print("model.onnx: %s" % " ".join(ops))
  return 0


if __name__ == "__main__":
  sys.exit(main())
