/*
 * runtime/kernels_loss.c: the ONNX losses of compiler/ops/loss.c,
 * NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, in one kernel.
 *
 * The scores are viewed as [N, C, D] (D the product of the trailing extents
 * d1..dk), the targets as [N, D]. SoftmaxCrossEntropyLoss is the NLL loss of
 * the log-softmax over C; the kernel computes that log-softmax per (n, d)
 * column, writes it when the log_prob output is wanted, and reads only the
 * target's entry otherwise, so no scratch buffer is needed. Everything is
 * computed in double and rounded once to the data's dtype (float32, float64
 * or float16), sums included, so the summation order hardly shows.
 *
 * A target equal to ignore_index contributes 0 to the loss and 0 to the
 * weight of a mean (a mean over only ignored targets is 0 / 0 = NaN, as in
 * PyTorch and onnxruntime). A fed target outside [0, C) that is not ignored is
 * a data error the kernel cannot report (as Gather's, kernels_index.c): its
 * loss element is NaN, and so is a reduced loss. No out-of-range element of
 * the scores or the weight is ever read.
 */
#include "kernels.h"

#include <math.h>

/* Element i of x, or y's element i set to v, in dtype code dt (AD_K_LOSS_*). */
static double ld(const void *x, int64_t i, int dt) {
  if (dt == AD_K_LOSS_F64)
    return ((const double *)x)[i];
  if (dt == AD_K_LOSS_F16)
    return (double)((const _Float16 *)x)[i];
  return (double)((const float *)x)[i];
}

static void st(void *y, int64_t i, double v, int dt) {
  if (dt == AD_K_LOSS_F64)
    ((double *)y)[i] = v;
  else if (dt == AD_K_LOSS_F16)
    ((_Float16 *)y)[i] = (_Float16)v; /* rounds to nearest even */
  else
    ((float *)y)[i] = (float)v;
}

/* log(sum_c exp(x[c] - max)) + max over the column (n, d) of x [N, C, D]. */
static double log_sum_exp(const void *x, int64_t base, int64_t C, int64_t D, int dt) {
  double m = -INFINITY;
  for (int64_t c = 0; c < C; c++) {
    double v = ld(x, base + c * D, dt);
    if (v > m || v != v)
      m = v;
  }
  if (m != m || isinf(m))
    return m; /* NaN, or all -inf / some +inf: the log-probs are NaN or -inf */
  double s = 0;
  for (int64_t c = 0; c < C; c++)
    s += exp(ld(x, base + c * D, dt) - m);
  return m + log(s);
}

void ad_k_nll_loss(const int64_t *p, const void *x, const void *target, const void *weight,
                   void *loss, void *log_prob) {
  int64_t N = p[0], C = p[1], D = p[2], reduction = p[3], ignore = p[4];
  int has_ignore = (int)p[5], is_i32 = (int)p[6], dt = (int)p[7];
  int softmax = (int)p[8];
  double sum = 0, wsum = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) {
      int64_t base = n * C * D + d, j = n * D + d;
      double lse = softmax ? log_sum_exp(x, base, C, D, dt) : 0;
      int64_t t = is_i32 ? (int64_t)((const int32_t *)target)[j] : ((const int64_t *)target)[j];
      double l, w;
      if (has_ignore && t == ignore) {
        l = 0;
        w = 0;
      } else if (t < 0 || t >= C) {
        l = NAN;
        w = NAN;
      } else {
        w = weight ? ld(weight, t, dt) : 1.0;
        l = -(ld(x, base + t * D, dt) - lse) * w;
      }
      if (reduction == AD_K_LOSS_NONE)
        st(loss, j, l, dt);
      if (softmax && log_prob)
        for (int64_t c = 0; c < C; c++)
          st(log_prob, base + c * D, ld(x, base + c * D, dt) - lse, dt);
      sum += l;
      wsum += w;
    }
  if (reduction == AD_K_LOSS_SUM)
    st(loss, 0, sum, dt);
  else if (reduction == AD_K_LOSS_MEAN)
    st(loss, 0, sum / wsum, dt);
}
