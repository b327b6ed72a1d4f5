#!/usr/bin/env python3
"""examples/digits/export_model.py: the model of the digits example.

A PyTorch MLP 64-128-64-10 with ReLU (tests/ref/models.py "digits_mlp", seeded,
so the export is reproducible), exported to ONNX opset 13 with a dynamic batch
axis: input "input" [batch, 64], output "logits" [batch, 10], weights as
initializers (fc1.weight, fc1.bias, ...). This is all autodist needs: the
training itself is described by train.yml.

    /usr/bin/python3 export_model.py   # writes model.onnx
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import models  # noqa: E402


def main():
  _, ops = models.export("digits_mlp", os.path.join(HERE, "model.onnx"))
  print("model.onnx: %s" % " ".join(ops))
  return 0


if __name__ == "__main__":
  sys.exit(main())
