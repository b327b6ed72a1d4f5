/*
 * tests/unit/test_kernels_reduce.c: the reductions over the dtypes other than
 * float32 (ad_k_reduce_<dt>, ad_k_argmax_<dt>, ad_k_hardmax_<dt>) on the
 * cases whose answers follow from the definitions by hand: wrapping integer
 * sums and products, the exact mean of int64 values whose sum needs more than
 * 64 bits, log-sum-exp beyond exp's range, NaN and infinities, float16
 * rounding, extrema of int64 values beyond double's precision. The random
 * cases are tests/ref/test_reduce_dtypes.py (onnxruntime and numpy).
 */
#include "check.h"
#include "runtime/kernels.h"

#include <math.h>
#include <stdint.h>

/* p for x of shape {1, n} reduced over axis 1: {rank, dims, mask, kind}. */
static void row_params(int64_t *p, int64_t n, int64_t kind) {
  int64_t q[6] = {2, 1, n, 0, 1, kind};
  memcpy(p, q, sizeof q);
}

static void int_wrapping(void) {
  int64_t p[6];
  double ws[2];
  int32_t x32[3] = {INT32_MAX, 1, 1}, y32;
  row_params(p, 3, AD_K_REDUCE_SUM);
  ad_k_reduce_i32(p, x32, &y32, ws);
  CHECK(y32 == INT32_MIN + 1); /* 2^31 + 1 wraps */
  row_params(p, 3, AD_K_REDUCE_MEAN);
  ad_k_reduce_i32(p, x32, &y32, ws);
  CHECK(y32 == 715827883); /* (2^31 + 1) / 3, exact */
  int64_t x64[2] = {INT64_MAX, INT64_MAX}, y64;
  row_params(p, 2, AD_K_REDUCE_MEAN);
  ad_k_reduce_i64(p, x64, &y64, ws);
  CHECK(y64 == INT64_MAX); /* the sum needs 65 bits */
  int64_t n64[3] = {INT64_MIN, INT64_MIN, 1};
  row_params(p, 3, AD_K_REDUCE_MEAN);
  ad_k_reduce_i64(p, n64, &y64, ws);
  CHECK(y64 == -6148914691236517205); /* (-2^64 + 1) / 3 truncated toward zero */
  row_params(p, 3, AD_K_REDUCE_L1);
  ad_k_reduce_i64(p, n64, &y64, ws);
  CHECK(y64 == 1); /* 2^64 + 1 wraps */
  uint32_t u32[2] = {0x10000u, 0x10001u}, yu;
  row_params(p, 2, AD_K_REDUCE_PROD);
  ad_k_reduce_u32(p, u32, &yu, ws);
  CHECK(yu == 0x10000u); /* 2^32 + 2^16 */
  uint64_t u64[3] = {UINT64_MAX, UINT64_MAX, 3}, yu64;
  row_params(p, 3, AD_K_REDUCE_MEAN);
  ad_k_reduce_u64(p, u64, &yu64, ws);
  CHECK(yu64 == 12297829382473034411u); /* (2^65 + 1) / 3 */
  int8_t i8[3] = {-128, 127, 0}, y8;
  row_params(p, 3, AD_K_REDUCE_MIN);
  ad_k_reduce_i8(p, i8, &y8, ws);
  CHECK(y8 == -128);
  row_params(p, 3, AD_K_REDUCE_MAX);
  ad_k_reduce_i8(p, i8, &y8, ws);
  CHECK(y8 == 127);
}

static void int_through_double(void) {
  int64_t p[6];
  double ws[2];
  int32_t x[3] = {-1, 0, 0}, y;
  row_params(p, 3, AD_K_REDUCE_LOG_SUM_EXP);
  ad_k_reduce_i32(p, x, &y, ws);
  CHECK(y == 0); /* log(2 + e^-1) = 0.86 */
  int32_t z[2] = {3, 3};
  row_params(p, 2, AD_K_REDUCE_LOG_SUM_EXP);
  ad_k_reduce_i32(p, z, &y, ws);
  CHECK(y == 3); /* 3 + log 2 = 3.69 */
  row_params(p, 2, AD_K_REDUCE_L2);
  int32_t t[2] = {3, 4};
  ad_k_reduce_i32(p, t, &y, ws);
  CHECK(y == 5);
  row_params(p, 2, AD_K_REDUCE_LOG_SUM);
  int32_t zero[2] = {1, -1};
  ad_k_reduce_i32(p, zero, &y, ws);
  CHECK(y == INT32_MIN); /* log 0 = -inf */
  int32_t neg[2] = {-3, 1};
  ad_k_reduce_i32(p, neg, &y, ws);
  CHECK(y == INT32_MIN); /* NaN */
  uint32_t un[2] = {0, 0}, yu;
  ad_k_reduce_u32(p, un, &yu, ws);
  CHECK(yu == 0);
}

static void f64_edges(void) {
  int64_t p[6];
  double ws[2], y;
  double big[2] = {1000.0, 1000.0};
  row_params(p, 2, AD_K_REDUCE_LOG_SUM_EXP);
  ad_k_reduce_f64(p, big, &y, ws);
  CHECK(y == 1000.0 + log(2.0));
  double small[2] = {-1000.0, -1001.0};
  ad_k_reduce_f64(p, small, &y, ws);
  CHECK(fabs(y - (-1000.0 + log1p(exp(-1.0)))) <= 1e-12 * 1000.0);
  double infs[2] = {INFINITY, INFINITY};
  ad_k_reduce_f64(p, infs, &y, ws);
  CHECK(y == INFINITY);
  double ninfs[2] = {-INFINITY, -INFINITY};
  ad_k_reduce_f64(p, ninfs, &y, ws);
  CHECK(y == -INFINITY);
  double nan_first[2] = {NAN, 1.0}, nan_last[2] = {1.0, NAN};
  ad_k_reduce_f64(p, nan_first, &y, ws);
  CHECK(isnan(y));
  ad_k_reduce_f64(p, nan_last, &y, ws);
  CHECK(isnan(y));
  row_params(p, 2, AD_K_REDUCE_MAX);
  ad_k_reduce_f64(p, nan_last, &y, ws);
  CHECK(isnan(y));
  row_params(p, 2, AD_K_REDUCE_SUM);
  double tiny[2] = {1.0, 0x1p-30};
  ad_k_reduce_f64(p, tiny, &y, ws);
  CHECK(y == 1.0 + 0x1p-30); /* float would round it to 1 */
  double third[3] = {1.0, 0.0, 0.0};
  row_params(p, 3, AD_K_REDUCE_MEAN);
  ad_k_reduce_f64(p, third, &y, ws);
  CHECK(y == 1.0 / 3.0); /* divided in double, not rounded to float */
}

static void f16_rounding(void) {
  int64_t p[6];
  double ws[2];
  /* 2048 + 1 + 1 in float16: each add alone would round 2049 back to 2048
   * (ties to even), the sum rounded once is 2050. */
  _Float16 x[3] = {2048, 1, 1}, y;
  row_params(p, 3, AD_K_REDUCE_SUM);
  ad_k_reduce_f16(p, x, &y, ws);
  CHECK(y == (_Float16)2050);
  _Float16 m[3] = {1, 2, 2};
  row_params(p, 3, AD_K_REDUCE_MEAN);
  ad_k_reduce_f16(p, m, &y, ws);
  CHECK(y == (_Float16)(5.0 / 3.0));
  _Float16 big[2] = {60000, 60000};
  row_params(p, 2, AD_K_REDUCE_SUM);
  ad_k_reduce_f16(p, big, &y, ws);
  CHECK(y == (_Float16)INFINITY); /* beyond 65504 */
  row_params(p, 2, AD_K_REDUCE_MEAN);
  ad_k_reduce_f16(p, big, &y, ws);
  CHECK(y == (_Float16)60000); /* the double sum does not overflow */
}

static void arg_and_hardmax(void) {
  /* int64 values 2^62 and 2^62 + 1 are one double: the comparison must be exact. */
  int64_t x[4] = {(int64_t)1 << 62, ((int64_t)1 << 62) + 1, ((int64_t)1 << 62) + 1, 0};
  int64_t p[5] = {1, 4, 1, 0, 0}, y;
  ad_k_argmax_i64(p, x, &y);
  CHECK(y == 1);
  p[4] = 1; /* select_last_index */
  ad_k_argmax_i64(p, x, &y);
  CHECK(y == 2);
  p[3] = 1; /* ArgMin, last */
  ad_k_argmax_i64(p, x, &y);
  CHECK(y == 3);
  uint16_t u[3] = {65535, 7, 65535};
  int64_t q[5] = {1, 3, 1, 0, 0};
  ad_k_argmax_u16(q, u, &y);
  CHECK(y == 0);
  double d[3] = {1.0, NAN, 5.0};
  ad_k_argmax_f64(q, d, &y);
  CHECK(y == 1); /* a NaN wins, as in numpy */
  /* Hardmax along axis 1 of [2, 3]: p = {outer, n, inner}. */
  double h[6] = {1, 3, 3, -1, -2, -3}, hy[6];
  int64_t hp[3] = {2, 3, 1};
  ad_k_hardmax_f64(hp, h, hy);
  CHECK(hy[0] == 0 && hy[1] == 1 && hy[2] == 0 && hy[3] == 1 && hy[4] == 0 && hy[5] == 0);
  _Float16 hh[3] = {0, 2, 1}, hhy[3];
  int64_t hp1[3] = {1, 3, 1};
  ad_k_hardmax_f16(hp1, hh, hhy);
  CHECK(hhy[0] == 0 && hhy[1] == 1 && hhy[2] == 0);
}

/* Reduce axes 0 and 2 of a [2, 3, 2] int64 tensor (keeps axis 1): the walk is
 * the float32 kernels' (kernels_axes.h). */
static void axes_walk(void) {
  int64_t x[12], y[3];
  for (int i = 0; i < 12; i++)
    x[i] = i;
  int64_t p[8] = {3, 2, 3, 2, 1, 0, 1, AD_K_REDUCE_SUM};
  double ws[6];
  ad_k_reduce_i64(p, x, y, ws);
  /* x[a][b][c] = 6a + 2b + c; sum over a, c: 4 * 2b + (0 + 6) * 2 + (0 + 1) * 2 */
  CHECK(y[0] == 14 && y[1] == 22 && y[2] == 30);
}

int main(void) {
  int_wrapping();
  int_through_double();
  f64_edges();
  f16_rounding();
  arg_and_hardmax();
  axes_walk();
  if (failures)
    fprintf(stderr, "%d check(s) failed\n", failures);
  return failures != 0;
}
