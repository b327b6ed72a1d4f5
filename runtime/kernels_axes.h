/*
 * runtime/kernels_axes.h: the walk shared by the kernels that reduce over a
 * mask of axes (ReduceSumTo's ad_k_reduce_axes, the Reduce* family,
 * MeanVarianceNormalization). x is dense over dims[rank]; y is dense over the
 * axes whose mask is 0, in order. Private to runtime/ (static inline).
 */
#ifndef AD_KERNELS_AXES_H
#define AD_KERNELS_AXES_H

#include <stdint.h>

/* ystride[i]: y's element stride along axis i of x (0 on masked axes); *ny and
 * *nx: the element counts of y and x. */
static inline void ad_k_axes_layout(int r, const int64_t *dims, const int64_t *mask,
                                    int64_t *ystride, int64_t *ny, int64_t *nx) {
  *ny = 1;
  *nx = 1;
  for (int i = r - 1; i >= 0; i--) {
    ystride[i] = mask[i] ? 0 : *ny;
    if (!mask[i])
      *ny *= dims[i];
    *nx *= dims[i];
  }
}

/* Steps the index pos of x (row-major) by one element and moves *off, y's
 * offset for it, along. */
static inline void ad_k_axes_next(int r, const int64_t *dims, const int64_t *ystride, int64_t *pos,
                                  int64_t *off) {
  for (int i = r - 1; i >= 0; i--) {
    *off += ystride[i];
    if (++pos[i] < dims[i])
      break;
    *off -= ystride[i] * dims[i];
    pos[i] = 0;
  }
}

#endif
