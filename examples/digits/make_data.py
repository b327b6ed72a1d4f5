#!/usr/bin/env python3
"""examples/digits/make_data.py: the digits data set as .npy files.

scikit-learn's load_digits: 1797 grayscale 8x8 images of the digits 0-9. Pixels
(0..16) are scaled to [0, 1] and flattened: inputs float32 [N, 64], labels int64
[N]. One seeded permutation splits them into 1408 training samples (22 batches
of 64, so an epoch is a whole number of steps) and 389 test samples; the
permutation also mixes the classes, since autodist reads the training data in
file order.

    /usr/bin/python3 make_data.py      # writes x_train.npy y_train.npy x_test.npy y_test.npy
"""
import os
import sys

import numpy as np
from sklearn.datasets import load_digits

SEED = 0
N_TRAIN = 1408


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  y = d.target.astype(np.int64)
  perm = np.random.default_rng(SEED).permutation(len(y))
  x, y = x[perm], y[perm]
  parts = {"x_train": x[:N_TRAIN], "y_train": y[:N_TRAIN],
           "x_test": x[N_TRAIN:], "y_test": y[N_TRAIN:]}
  for k, v in parts.items():
    np.save(os.path.join(here, k + ".npy"), np.ascontiguousarray(v))
    print("%s.npy: %s %s" % (k, v.dtype, v.shape))
  return 0


if __name__ == "__main__":
  sys.exit(main())
