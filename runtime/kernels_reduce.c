/*
 * runtime/kernels_reduce.c: reductions. ad_k_reduce does every ONNX Reduce*
 * kind over a mask of axes (one odometer walk over the input, double
 * accumulators, numpy's results for float32 data); ad_k_reduce_minmax_bwd is
 * the gradient of ReduceMax/Min; ad_k_argmax and ad_k_hardmax work along one
 * axis. The kernels suffixed by a dtype (ad_k_reduce_f64, ad_k_argmax_i32,
 * ...) are the same reductions over the other dtypes the ONNX ops accept (see
 * "Other dtypes" below). ad_k_sum_row is the contiguous-row sum that generated reduction
 * loops call when the reduced axis is the innermost one (conv bias gradients,
 * row sums). LLVM 16's C API cannot mark float adds reassociable, so the JIT
 * would keep such a sum one add at a time; eight partial sums here let the C
 * compiler use vector adds. The order of additions differs from a sequential
 * sum only in float rounding.
 */
#include "kernels.h"
#include "kernels_axes.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* ---- Other dtypes ----
 *
 * Floats (float64, float16): ad_k_reduce's steps (double accumulators, a
 * NaN wins Max / Min as in numpy), Sum and Mean too, the result rounded
 * once to the dtype (double -> binary16 rounds correctly). numpy's float16
 * sums also accumulate wider (float32) and round once: [2048, 1, 1] sums to
 * 2050, where float16 additions one at a time would give 2048. LogSumExp
 * keeps the running maximum m and the sum s of exp(v - m) per output (two
 * doubles), so that float64 data beyond exp's range (|v| > 709) still gives
 * the finite result, as onnxruntime's does.
 *
 * Integers: Max and Min exact. Sum, Prod, L1 and SumSquare wrap modulo
 * 2^bits when the result does not fit the dtype (numpy's sum / prod with the
 * dtype, PyTorch's integer sum; here computed in 64 bits, which is the same
 * modulo 2^bits). Mean is the exact sum (128 bits) divided by the count,
 * truncated toward zero: the exact mean truncated, which always fits. L2,
 * LogSum and LogSumExp are computed in double from the elements, then
 * truncated toward zero into the dtype; a double that does not fit (log 0 =
 * -inf, NaN) becomes the dtype's minimum (maximum above it), what x86's
 * conversion gives for int32/int64. Without overflow these are onnxruntime's
 * results for int32/int64, except LogSumExp, where onnxruntime truncates each
 * exp term to the dtype, and an int64 Mean whose sum exceeds 2^53, which
 * onnxruntime rounds through double; with overflow onnxruntime's results
 * follow no rule (saturated or computed in double). The caller's ws holds
 * two 8-byte slots per output element. */

/* Online log-sum-exp: ws = {m, s}, sum exp(v) = exp(m) * s. */
static void lse_step(double *ws, double v) {
  if (v > ws[0]) {
    ws[1] = ws[1] * exp(ws[0] - v) + 1.0;
    ws[0] = v;
  } else if (v == ws[0]) {
    ws[1] += 1.0; /* also +-inf == m, where v - m is NaN */
  } else {
    ws[1] += exp(v - ws[0]); /* NaN v lands here and poisons s */
  }
}

static double lse_final(const double *ws) {
  if (ws[1] != ws[1] || isinf(ws[0]))
    return ws[1] != ws[1] ? ws[1] : ws[0]; /* a NaN; all -inf (or none); a +inf */
  return ws[0] + log(ws[1]);
}

static double ld_f64(const double *x) {
  return *x;
}
static void st_f64(double *y, double v) {
  *y = v;
}
static double ld_f16(const _Float16 *x) {
  return (double)*x;
}
static void st_f16(_Float16 *y, double v) {
  *y = (_Float16)v; /* libgcc's double -> binary16 rounds to nearest even */
}

#define REDUCE_FLOAT(SUF, T)                                                                       \
  void ad_k_reduce_##SUF(const int64_t *p, const void *xv, void *yv, double *ws) {                 \
    const T *x = xv;                                                                               \
    T *y = yv;                                                                                     \
    int r = (int)p[0];                                                                             \
    const int64_t *dims = p + 1, *mask = p + 1 + r;                                                \
    int64_t kind = p[1 + 2 * r];                                                                   \
    int64_t ystride[AD_K_MAX_RANK], ny, nx;                                                        \
    ad_k_axes_layout(r, dims, mask, ystride, &ny, &nx);                                            \
    int lse = kind == AD_K_REDUCE_LOG_SUM_EXP;                                                     \
    for (int64_t i = 0; i < ny; i++) {                                                             \
      ws[2 * i] = lse ? -INFINITY : reduce_init(kind);                                             \
      ws[2 * i + 1] = 0.0;                                                                         \
    }                                                                                              \
    int64_t pos[AD_K_MAX_RANK] = {0}, off = 0;                                                     \
    for (int64_t e = 0; e < nx; e++) {                                                             \
      double v = ld_##SUF(x + e);                                                                  \
      if (lse)                                                                                     \
        lse_step(ws + 2 * off, v);                                                                 \
      else                                                                                         \
        ws[2 * off] = reduce_step(kind, ws[2 * off], v);                                           \
      ad_k_axes_next(r, dims, ystride, pos, &off);                                                 \
    }                                                                                              \
    double count = ny ? (double)(nx / ny) : 0;                                                     \
    for (int64_t i = 0; i < ny; i++)                                                               \
      st_##SUF(y + i, lse ? lse_final(ws + 2 * i) : reduce_final(kind, ws[2 * i], count));         \
  }

REDUCE_FLOAT(f64, double)
REDUCE_FLOAT(f16, _Float16)

/* T's value nearest to the double v, truncated toward zero; NaN gives T's minimum. */
#define TO_INT(T, LO, HI)                                                                          \
  static T to_##T(double v) {                                                                      \
    if (v != v || v <= (double)(LO))                                                               \
      return LO;                                                                                   \
    if (v >= (double)(HI))                                                                         \
      return HI;                                                                                   \
    return (T)v;                                                                                   \
  }
TO_INT(int8_t, INT8_MIN, INT8_MAX)
TO_INT(uint8_t, 0, UINT8_MAX)
TO_INT(int32_t, INT32_MIN, INT32_MAX)
TO_INT(uint32_t, 0, UINT32_MAX)
TO_INT(int64_t, INT64_MIN, INT64_MAX)
TO_INT(uint64_t, 0, UINT64_MAX)

/* ws slot i (two 8-byte words) holds, by kind: the wrapped sum / product /
 * extremum as a 64-bit word (two's complement for signed T: Sum, Prod, L1,
 * SumSquare, Max, Min); the exact sum as WT, a 128-bit integer (Mean); a
 * double sum (L2, LogSum); the log-sum-exp pair {m, s}. The integer words go
 * through memcpy, so that ws is never read as another type than written. ST
 * is the 64-bit type T widens to. */
static uint64_t ws_word(const double *w) {
  uint64_t u;
  memcpy(&u, w, sizeof u);
  return u;
}
static void ws_set_word(double *w, uint64_t u) {
  memcpy(w, &u, sizeof u);
}

#define REDUCE_INT(SUF, T, ST, WT, LO, HI, ABS)                                                    \
  void ad_k_reduce_##SUF(const int64_t *p, const void *xv, void *yv, double *ws) {                 \
    const T *x = xv;                                                                               \
    T *y = yv;                                                                                     \
    int r = (int)p[0];                                                                             \
    const int64_t *dims = p + 1, *mask = p + 1 + r;                                                \
    int64_t kind = p[1 + 2 * r];                                                                   \
    int64_t ystride[AD_K_MAX_RANK], ny, nx;                                                        \
    ad_k_axes_layout(r, dims, mask, ystride, &ny, &nx);                                            \
    T init = kind == AD_K_REDUCE_MAX ? (T)(LO) : kind == AD_K_REDUCE_MIN ? (T)(HI) : 0;            \
    for (int64_t i = 0; i < ny; i++) {                                                             \
      double *w = ws + 2 * i;                                                                      \
      WT zero = 0;                                                                                 \
      switch (kind) {                                                                              \
      case AD_K_REDUCE_MEAN:                                                                       \
        memcpy(w, &zero, sizeof zero);                                                             \
        break;                                                                                     \
      case AD_K_REDUCE_L2:                                                                         \
      case AD_K_REDUCE_LOG_SUM:                                                                    \
        w[0] = 0.0;                                                                                \
        break;                                                                                     \
      case AD_K_REDUCE_LOG_SUM_EXP:                                                                \
        w[0] = -INFINITY;                                                                          \
        w[1] = 0.0;                                                                                \
        break;                                                                                     \
      default:                                                                                     \
        ws_set_word(w, kind == AD_K_REDUCE_PROD ? 1u : (uint64_t)(ST)init);                        \
      }                                                                                            \
    }                                                                                              \
    int64_t pos[AD_K_MAX_RANK] = {0}, off = 0;                                                     \
    for (int64_t e = 0; e < nx; e++) {                                                             \
      T v = x[e];                                                                                  \
      double *w = ws + 2 * off;                                                                    \
      uint64_t u = (uint64_t)(ST)v, a = 0;                                                         \
      WT s;                                                                                        \
      switch (kind) {                                                                              \
      case AD_K_REDUCE_MEAN:                                                                       \
        memcpy(&s, w, sizeof s);                                                                   \
        s += v;                                                                                    \
        memcpy(w, &s, sizeof s);                                                                   \
        break;                                                                                     \
      case AD_K_REDUCE_L2:                                                                         \
        w[0] += (double)v * (double)v;                                                             \
        break;                                                                                     \
      case AD_K_REDUCE_LOG_SUM:                                                                    \
        w[0] += (double)v;                                                                         \
        break;                                                                                     \
      case AD_K_REDUCE_LOG_SUM_EXP:                                                                \
        lse_step(w, (double)v);                                                                    \
        break;                                                                                     \
      default:                                                                                     \
        a = ws_word(w);                                                                            \
        if (kind == AD_K_REDUCE_MAX)                                                               \
          a = v > (T)(ST)a ? u : a;                                                                \
        else if (kind == AD_K_REDUCE_MIN)                                                          \
          a = v < (T)(ST)a ? u : a;                                                                \
        else if (kind == AD_K_REDUCE_PROD)                                                         \
          a *= u;                                                                                  \
        else if (kind == AD_K_REDUCE_L1)                                                           \
          a += ABS(v, u);                                                                          \
        else if (kind == AD_K_REDUCE_SUM_SQUARE)                                                   \
          a += u * u;                                                                              \
        else                                                                                       \
          a += u;                                                                                  \
        ws_set_word(w, a);                                                                         \
      }                                                                                            \
      ad_k_axes_next(r, dims, ystride, pos, &off);                                                 \
    }                                                                                              \
    int64_t count = ny ? nx / ny : 0;                                                              \
    for (int64_t i = 0; i < ny; i++) {                                                             \
      double *w = ws + 2 * i;                                                                      \
      WT s;                                                                                        \
      switch (kind) {                                                                              \
      case AD_K_REDUCE_MEAN: /* ops/reduce.c refuses count 0 */                                    \
        memcpy(&s, w, sizeof s);                                                                   \
        y[i] = count ? (T)(s / count) : 0;                                                         \
        break;                                                                                     \
      case AD_K_REDUCE_L2:                                                                         \
        y[i] = to_##T(sqrt(w[0]));                                                                 \
        break;                                                                                     \
      case AD_K_REDUCE_LOG_SUM:                                                                    \
        y[i] = to_##T(log(w[0]));                                                                  \
        break;                                                                                     \
      case AD_K_REDUCE_LOG_SUM_EXP:                                                                \
        y[i] = to_##T(lse_final(w));                                                               \
        break;                                                                                     \
      default:                                                                                     \
        y[i] = (T)(ST)ws_word(w); /* the result modulo 2^bits */                                   \
      }                                                                                            \
    }                                                                                              \
  }

#define ABS_SIGNED(v, u) ((v) < 0 ? 0u - (u) : (u))
#define ABS_UNSIGNED(v, u) (u)
typedef __int128 ad_i128;
typedef unsigned __int128 ad_u128;
REDUCE_INT(i8, int8_t, int64_t, ad_i128, INT8_MIN, INT8_MAX, ABS_SIGNED)
REDUCE_INT(u8, uint8_t, uint64_t, ad_u128, 0, UINT8_MAX, ABS_UNSIGNED)
REDUCE_INT(i32, int32_t, int64_t, ad_i128, INT32_MIN, INT32_MAX, ABS_SIGNED)
REDUCE_INT(u32, uint32_t, uint64_t, ad_u128, 0, UINT32_MAX, ABS_UNSIGNED)
REDUCE_INT(i64, int64_t, int64_t, ad_i128, INT64_MIN, INT64_MAX, ABS_SIGNED)
REDUCE_INT(u64, uint64_t, uint64_t, ad_u128, 0, UINT64_MAX, ABS_UNSIGNED)

/* ArgMax / ArgMin / Hardmax over T, the float32 arg_best's rules (first
 * extremum, or the last with select_last_index; a NaN wins). */
#define ARG_KERNELS(SUF, T)                                                                        \
  static int64_t arg_best_##SUF(const T *x, int64_t n, int64_t inner, int64_t o, int64_t i,        \
                                int is_min, int last) {                                            \
    const T *c = x + o * n * inner + i;                                                            \
    int64_t best = 0;                                                                              \
    T bv = c[0];                                                                                   \
    for (int64_t k = 1; k < n; k++) {                                                              \
      T v = c[k * inner];                                                                          \
      if (is_nan_##SUF(bv))                                                                        \
        break;                                                                                     \
      int better = is_nan_##SUF(v) || (is_min ? v < bv : v > bv) || (last && v == bv);             \
      if (better) {                                                                                \
        best = k;                                                                                  \
        bv = v;                                                                                    \
      }                                                                                            \
    }                                                                                              \
    return best;                                                                                   \
  }                                                                                                \
  void ad_k_argmax_##SUF(const int64_t *p, const void *xv, int64_t *y) {                           \
    const T *x = xv;                                                                               \
    int64_t outer = p[0], n = p[1], inner = p[2];                                                  \
    for (int64_t o = 0; o < outer; o++)                                                            \
      for (int64_t i = 0; i < inner; i++)                                                          \
        y[o * inner + i] = arg_best_##SUF(x, n, inner, o, i, (int)p[3], (int)p[4]);                \
  }

static int is_nan_f64(double v) {
  return v != v;
}
static int is_nan_f16(_Float16 v) {
  return v != v;
}
#define INT_NAN(SUF, T)                                                                            \
  static int is_nan_##SUF(T v) {                                                                   \
    return 0;                                                                                      \
  }
INT_NAN(i8, int8_t)
INT_NAN(u8, uint8_t)
INT_NAN(i16, int16_t)
INT_NAN(u16, uint16_t)
INT_NAN(i32, int32_t)
INT_NAN(u32, uint32_t)
INT_NAN(i64, int64_t)
INT_NAN(u64, uint64_t)

ARG_KERNELS(f64, double)
ARG_KERNELS(f16, _Float16)
ARG_KERNELS(i8, int8_t)
ARG_KERNELS(u8, uint8_t)
ARG_KERNELS(i16, int16_t)
ARG_KERNELS(u16, uint16_t)
ARG_KERNELS(i32, int32_t)
ARG_KERNELS(u32, uint32_t)
ARG_KERNELS(i64, int64_t)
ARG_KERNELS(u64, uint64_t)

void ad_k_hardmax_f64(const int64_t *p, const void *xv, void *yv) {
  const double *x = xv;
  double *y = yv;
  int64_t outer = p[0], n = p[1], inner = p[2];
  memset(y, 0, sizeof(double) * (size_t)(outer * n * inner));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++)
      y[(o * n + arg_best_f64(x, n, inner, o, i, 0, 0)) * inner + i] = 1.0;
}

void ad_k_hardmax_f16(const int64_t *p, const void *xv, void *yv) {
  const _Float16 *x = xv;
  _Float16 *y = yv;
  int64_t outer = p[0], n = p[1], inner = p[2];
  memset(y, 0, sizeof(_Float16) * (size_t)(outer * n * inner));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++)
      y[(o * n + arg_best_f16(x, n, inner, o, i, 0, 0)) * inner + i] = (_Float16)1.0f;
}
