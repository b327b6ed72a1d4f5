/*
 * runtime/kernels_reduce.c: reductions. ad_k_reduce does every ONNX Reduce*
 * kind over a mask of axes (one odometer walk over the input, double
 * accumulators, numpy's results for float32 data); ad_k_reduce_minmax_bwd is
 * the gradient of ReduceMax/Min; ad_k_argmax and ad_k_hardmax work along one
 * axis. ad_k_sum_row is the contiguous-row sum that generated reduction
 * loops call when the reduced axis is the innermost one (conv bias gradients,
 * row sums). LLVM 16's C API cannot mark float adds reassociable, so the JIT
 * would keep such a sum one add at a time; eight partial sums here let the C
 * compiler use vector adds. The order of additions differs from a sequential
 * sum only in float rounding.
 */
#include "kernels.h"
#include "kernels_axes.h"

#include <math.h>

/* y[0] += x[0] + ... + x[n-1]; p = {n}. */
void ad_k_sum_row(const int64_t *p, const float *x, float *y) {
  int64_t n = p[0], i = 0;
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++)
      s[j] += x[i + j];
  float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; i++)
    t += x[i];
  y[0] += t;
}

/* The reduction of ad_k_reduce: how an element enters the accumulator and how
 * the accumulator becomes the result. Accumulators are double so that
 * products and sums of squares keep float32's precision in the result. */
static double reduce_init(int64_t kind) {
  switch (kind) {
  case AD_K_REDUCE_MAX:
    return -INFINITY;
  case AD_K_REDUCE_MIN:
    return INFINITY;
  case AD_K_REDUCE_PROD:
    return 1.0;
  default:
    return 0.0;
  }
}

static double reduce_step(int64_t kind, double acc, double v) {
  switch (kind) {
  case AD_K_REDUCE_MAX:
    return v > acc || v != v ? v : acc;
  case AD_K_REDUCE_MIN:
    return v < acc || v != v ? v : acc;
  case AD_K_REDUCE_PROD:
    return acc * v;
  case AD_K_REDUCE_L1:
    return acc + fabs(v);
  case AD_K_REDUCE_L2:
  case AD_K_REDUCE_SUM_SQUARE:
    return acc + v * v;
  case AD_K_REDUCE_LOG_SUM_EXP:
    return acc + exp(v);
  default:
    return acc + v;
  }
}

static double reduce_final(int64_t kind, double acc, double count) {
  switch (kind) {
  case AD_K_REDUCE_MEAN:
    return acc / count;
  case AD_K_REDUCE_L2:
    return sqrt(acc);
  case AD_K_REDUCE_LOG_SUM:
  case AD_K_REDUCE_LOG_SUM_EXP:
    return log(acc);
  default:
    return acc;
  }
}

void ad_k_reduce(const int64_t *p, const float *x, float *y, double *ws) {
  int r = (int)p[0];
  const int64_t *dims = p + 1, *mask = p + 1 + r;
  int64_t kind = p[1 + 2 * r];
  int64_t ystride[AD_K_MAX_RANK], ny, nx;
  ad_k_axes_layout(r, dims, mask, ystride, &ny, &nx);
  for (int64_t i = 0; i < ny; i++)
    ws[i] = reduce_init(kind);
  int64_t pos[AD_K_MAX_RANK] = {0}, off = 0;
  for (int64_t e = 0; e < nx; e++) {
    ws[off] = reduce_step(kind, ws[off], x[e]);
    ad_k_axes_next(r, dims, ystride, pos, &off);
  }
  double count = ny ? (double)(nx / ny) : 0;
  for (int64_t i = 0; i < ny; i++)
    y[i] = (float)reduce_final(kind, ws[i], count);
}

void ad_k_reduce_minmax_bwd(const int64_t *p, const float *x, const float *y, const float *dy,
                            float *dx, float *ws) {
  int r = (int)p[0];
  const int64_t *dims = p + 1, *mask = p + 1 + r;
  int64_t ystride[AD_K_MAX_RANK], ny, nx;
  ad_k_axes_layout(r, dims, mask, ystride, &ny, &nx);
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 0)
      memset(ws, 0, sizeof(float) * (size_t)ny);
    int64_t pos[AD_K_MAX_RANK] = {0}, off = 0;
    for (int64_t e = 0; e < nx; e++) {
      int hit = x[e] == y[off] || (x[e] != x[e] && y[off] != y[off]);
      if (pass == 0)
        ws[off] += (float)hit;
      else
        dx[e] = hit ? dy[off] / ws[off] : 0.0f;
      ad_k_axes_next(r, dims, ystride, pos, &off);
    }
  }
}

/* Index along n of the max (or min) of column (o, i) of x viewed as [outer, n, inner]. */
static int64_t arg_best(const float *x, int64_t n, int64_t inner, int64_t o, int64_t i, int is_min,
                        int last) {
  const float *c = x + o * n * inner + i;
  int64_t best = 0;
  float bv = c[0];
  for (int64_t k = 1; k < n; k++) {
    float v = c[k * inner];
    if (bv != bv)
      break; /* a NaN wins (numpy) */
    int better = v != v || (is_min ? v < bv : v > bv) || (last && v == bv);
    if (better) {
      best = k;
      bv = v;
    }
  }
  return best;
}

void ad_k_argmax(const int64_t *p, const float *x, int64_t *y) {
  int64_t outer = p[0], n = p[1], inner = p[2];
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++)
      y[o * inner + i] = arg_best(x, n, inner, o, i, (int)p[3], (int)p[4]);
}

void ad_k_hardmax(const int64_t *p, const float *x, float *y) {
  int64_t outer = p[0], n = p[1], inner = p[2];
  memset(y, 0, sizeof(float) * (size_t)(outer * n * inner));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++)
      y[(o * n + arg_best(x, n, inner, o, i, 0, 0)) * inner + i] = 1.0f;
}
