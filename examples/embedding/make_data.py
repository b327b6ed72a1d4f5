#!/usr/bin/env python3
"""examples/embedding/make_data.py: a synthetic text-classification data set
as .npy files, deterministic (one seed).

Documents are 16 token ids over a 50,000-word vocabulary, in 4 classes. Each
class owns 100 keywords (disjoint sets drawn from the vocabulary); every token
of a document is, independently, one of its class's keywords with probability
0.15 and otherwise a noise word shared by all classes, drawn from a Zipf-like
distribution over the whole vocabulary (rank r has weight 1 / (r + 10)), as in
real text. A document has 2.4 keywords on average, and none with probability
0.85^16 = 7.4%: those cannot be classified better than chance, so the best
possible test accuracy is about 0.93 + 0.07 / 4 = 0.94.

Inputs are int64 [N, 16] token ids ("input"), labels int64 [N]: 8192 training
documents (128 batches of 64) and 2048 test documents, about 1.3 MB in all.

    /usr/bin/python3 make_data.py      # writes x_train.npy y_train.npy x_test.npy y_test.npy
"""
import os
import sys

import numpy as np

SEED = 0
VOCAB = 50000
SEQ = 16
CLASSES = 4
KEYWORDS = 100
P_KEYWORD = 0.15
N_TRAIN = 8192
N_TEST = 2048


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  rng = np.random.default_rng(SEED)
  order = rng.permutation(VOCAB)
  keywords = order[:CLASSES * KEYWORDS].reshape(CLASSES, KEYWORDS)
  # Noise words: a Zipf-like law over a shuffled vocabulary (keywords included,
  # so that a keyword alone is not a perfect signal).
  weight = 1.0 / (np.arange(VOCAB) + 10.0)
  noise_words = rng.permutation(VOCAB)
  n = N_TRAIN + N_TEST
  y = rng.integers(0, CLASSES, size=n).astype(np.int64)
  noise = noise_words[rng.choice(VOCAB, size=(n, SEQ), p=weight / weight.sum())]
  kw = keywords[y[:, None], rng.integers(0, KEYWORDS, size=(n, SEQ))]
  x = np.where(rng.random((n, SEQ)) < P_KEYWORD, kw, noise).astype(np.int64)
  parts = {"x_train": x[:N_TRAIN], "y_train": y[:N_TRAIN],
           "x_test": x[N_TRAIN:], "y_test": y[N_TRAIN:]}
  for k, v in parts.items():
    np.save(os.path.join(here, k + ".npy"), np.ascontiguousarray(v))
    print("%s.npy: %s %s" % (k, v.dtype, v.shape))
  return 0


if __name__ == "__main__":
  sys.exit(main())
