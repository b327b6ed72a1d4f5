/*
 * runtime/kernels_index.c: the indexing kernels of compiler/ops/index.c
 * (Gather forward and its scatter-add gradient) and the axis reduction of
 * compiler/ops/reduce.c (ReduceSum, ReduceMean).
 *
 * Gather views data as [outer, n, inner] around the gathered axis and the
 * indices as a flat list of m entries, so one memcpy moves `inner` floats.
 * Indices are int64 or int32 (p[4]); negative ones count from the end like
 * ONNX. A fed index out of range is a data error the kernels cannot report:
 * gather writes a NaN row (the loss becomes NaN, as with bad labels) and
 * scatter_add skips it.
 */
#include "kernels.h"
#include "kernels_axes.h"

#include <math.h>

static int64_t index_at(const void *idx, int64_t j, int is_i32) {
  return is_i32 ? (int64_t)((const int32_t *)idx)[j] : ((const int64_t *)idx)[j];
}

/* p = {outer, n, inner, m, idx_is_i32}; y is [outer, m, inner]. */
void ad_k_gather(const int64_t *p, const float *x, const void *idx, float *y) {
  int64_t outer = p[0], n = p[1], inner = p[2], m = p[3];
  int is_i32 = (int)p[4];
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < m; j++) {
      int64_t k = index_at(idx, j, is_i32);
      if (k < 0)
        k += n;
      float *dst = y + (o * m + j) * inner;
      if (k < 0 || k >= n) {
        for (int64_t i = 0; i < inner; i++)
          dst[i] = NAN;
        continue;
      }
      memcpy(dst, x + (o * n + k) * inner, sizeof(float) * (size_t)inner);
    }
}

/* dx = 0, then dx[o, idx[j], i] += dy[o, j, i] in order of j, so repeated
 * indices accumulate in a fixed order. p as for ad_k_gather. */
void ad_k_scatter_add(const int64_t *p, const float *dy, const void *idx, float *dx) {
  int64_t outer = p[0], n = p[1], inner = p[2], m = p[3];
  int is_i32 = (int)p[4];
  memset(dx, 0, sizeof(float) * (size_t)(outer * n * inner));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < m; j++) {
      int64_t k = index_at(idx, j, is_i32);
      if (k < 0)
        k += n;
      if (k < 0 || k >= n)
        continue;
      float *dst = dx + (o * n + k) * inner;
      const float *src = dy + (o * m + j) * inner;
      for (int64_t i = 0; i < inner; i++)
        dst[i] += src[i];
    }
}

/* p = {rank, dims[rank]..., mask[rank]..., div_bits}: y = (sum of x over the
 * axes whose mask is 1) / div, y dense over the others, in order. Sums are
 * accumulated in input order, then divided once. */
void ad_k_reduce_axes(const int64_t *p, const float *x, float *y) {
  int r = (int)p[0];
  const int64_t *dims = p + 1, *mask = p + 1 + r;
  float div = ad_k_f32(p[1 + 2 * r]);
  int64_t ystride[16], ny, nx;
  ad_k_axes_layout(r, dims, mask, ystride, &ny, &nx);
  memset(y, 0, sizeof(float) * (size_t)ny);
  int64_t pos[16] = {0}, off = 0;
  for (int64_t e = 0; e < nx; e++) {
    y[off] += x[e];
    ad_k_axes_next(r, dims, ystride, pos, &off);
  }
  if (div != 1.0f)
    for (int64_t i = 0; i < ny; i++)
      y[i] /= div;
}
