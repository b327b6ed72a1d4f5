/*
 * runtime/kernels_reduce.c: the contiguous-row sum that generated reduction
 * loops call when the reduced axis is the innermost one (conv bias gradients,
 * row sums). LLVM 16's C API cannot mark float adds reassociable, so the JIT
 * would keep such a sum one add at a time; eight partial sums here let the C
 * compiler use vector adds. The order of additions differs from a sequential
 * sum only in float rounding.
 */
#include "kernels.h"

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
