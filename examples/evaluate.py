#!/usr/bin/env python3
"""examples/evaluate.py: test accuracy of an example's trained model, in one
line, for example

    digits: test accuracy 0.9769 after 220 steps on 2 workers

The steps are counted from the --metrics file of the training run and the
workers from the resource spec. Exits 1 when the accuracy is below --min, so
run.sh (and `make demo`) fail loudly when training went wrong.

    evaluate.py --name NAME --pred pred.npy --labels y_test.npy
                --metrics metrics.jsonl --spec resource_spec.yml --min 0.95
"""
import argparse
import json
import sys

import numpy as np


def count_workers(spec_path):
  """One worker per listed GPU of a node, or per listed CPU where it has no
  gpus (DESIGN.md's resource spec)."""
  import yaml
  with open(spec_path) as f:
    spec = yaml.safe_load(f) or {}
  n = 0
  for node in spec.get("nodes") or []:
    n += len(node.get("gpus") or []) or len(node.get("cpus") or [0])
  return n


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
  ap.add_argument("--name", required=True, help="the example, first word of the line")
  ap.add_argument("--pred", required=True, help="logits [N, classes] from autodist infer")
  ap.add_argument("--labels", required=True, help="int labels [N]")
  ap.add_argument("--metrics", required=True, help="metrics.jsonl of the training run")
  ap.add_argument("--spec", required=True, help="resource_spec.yml of the training run")
  ap.add_argument("--min", type=float, required=True, help="lowest accepted accuracy")
  a = ap.parse_args(argv[1:])
  logits = np.load(a.pred)
  labels = np.load(a.labels)
  if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
    print("evaluate: %s has shape %s, expected [%d, classes]" % (a.pred, logits.shape,
                                                                 labels.shape[0]))
    return 2
  acc = float(np.mean(np.argmax(logits, axis=1) == labels))
  with open(a.metrics) as f:
    steps = sum(1 for line in f if line.strip() and "step" in json.loads(line))
  w = count_workers(a.spec)
  print("%s: test accuracy %.4f after %d steps on %d worker%s" % (a.name, acc, steps, w,
                                                                "" if w == 1 else "s"))
  if acc < a.min:
    print("%s: accuracy below %.2f" % (a.name, a.min))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
