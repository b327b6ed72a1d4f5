/*
 * runtime/kernels_pool.c: 1-D, 2-D and 3-D max, average and Lp pooling,
 * forward and backward.
 *
 * Design: every pool is seen as 3-D (a 2-D pool has depth 1, a 1-D pool
 * depth and height 1). A pool whose depth window is trivial (one tap, stride
 * 1, no padding) runs as 2-D pooling of N * C * D planes, so 2-D models take
 * exactly the 2-D loops. Windows may be padded (front/top/left given,
 * back/bottom/right implied by the output size) and dilated. For each output
 * cell the range of kernel taps that land inside the input is computed once
 * per axis (depth and rows hoisted out of the column loop), so the window
 * loops carry no bounds tests and padding cells are never read. Max pooling
 * keeps no index buffer: the backward pass recomputes the argmax from x with
 * the same rule as the forward (first maximum wins; a NaN wins over numbers,
 * the last NaN over earlier ones, exactly PyTorch's `val > max || isnan(val)`
 * rule). The common 2x2 / stride 2 unpadded max pool has its own loop.
 *
 * Max pooling also runs on uint8 and int8 (forward and Indices only: integers
 * are not trained); a window that holds no input cell yields the type's lowest
 * value (-inf for float).
 *
 * Average pooling divides by the full window when padding counts
 * (count_include_pad 1; with the implied trailing padding every window lies
 * inside the padded input) and by the number of input cells otherwise (ONNX
 * semantics). PyTorch's ceil_mode windows that overhang the padded input
 * divide by the clipped size instead; that case cannot be told apart from
 * here (the compiler refuses it).
 */
#include "runtime/kernels.h"

#include <math.h>
#include <stddef.h>

typedef struct pool_geom {
  int64_t planes;                                  /* N * C (* D when folded) */
  int64_t in[3], out[3], k[3], s[3], pb[3], d[3];  /* depth, height, width */
  int64_t include_pad, extra, dtype, isz, osz, hw; /* isz, osz: cells per plane */
} pool_geom;

/* fold: whether a trivial depth window may be folded into the planes (not for
 * column-major Indices, which number the cells across the depth axis). */
static pool_geom pool_geom_of(const int64_t *p, int fold) {
  pool_geom g = {.planes = p[0] * p[1], .include_pad = p[20], .extra = p[21], .dtype = p[22]};
  for (int i = 0; i < 3; i++) {
    g.in[i] = p[2 + i];
    g.out[i] = p[5 + i];
    g.k[i] = p[8 + i];
    g.s[i] = p[11 + i];
    g.pb[i] = p[14 + i];
    g.d[i] = p[17 + i];
  }
  /* A trivial depth window: D independent 2-D planes per channel. */
  if (fold && g.k[0] == 1 && g.s[0] == 1 && g.pb[0] == 0 && g.out[0] == g.in[0]) {
    g.planes *= g.in[0];
    g.in[0] = g.out[0] = 1;
  }
  g.hw = g.in[1] * g.in[2];
  g.isz = g.in[0] * g.hw;
  g.osz = g.out[0] * g.out[1] * g.out[2];
  return g;
}

/* Taps [lo, hi) of a kernel of k taps with dilation d whose cell o0 + t * d
 * lies in [0, n). */
static inline void taps(int64_t o0, int64_t d, int64_t k, int64_t n, int64_t *lo, int64_t *hi) {
  int64_t a, b, t = n - 1 - o0;
  if (d == 1) { /* no divisions (they cost more than the rest of a small window) */
    a = o0 >= 0 ? 0 : -o0;
    b = t < 0 ? 0 : t + 1;
  } else {
    a = o0 >= 0 ? 0 : (-o0 + d - 1) / d;
    b = t < 0 ? 0 : t / d + 1;
  }
  a = a > k ? k : a;
  b = b > k ? k : b;
  *lo = a;
  *hi = b < a ? a : b;
}

/* The window of an output cell along each axis: its first cell c0 (possibly
 * in the padding) and the taps [lo, hi) that land in the input. */
typedef struct pool_win {
  int64_t c0[3], lo[3], hi[3];
} pool_win;

/* Inlined: the window's fields then live in registers, not on the stack. */
static inline __attribute__((always_inline)) void win_axis(const pool_geom *g, int i, int64_t o,
                                                           pool_win *w) {
  w->c0[i] = o * g->s[i] - g->pb[i];
  taps(w->c0[i], g->d[i], g->k[i], g->in[i], &w->lo[i], &w->hi[i]);
}

/* Calls BODY for each input cell of window w of the plane (`off`: its offset
 * in the plane), in tap order (depth, then rows, then columns). ROW_CELLS
 * walks the rows and columns of the depth slice at offset z_ (all of a 2-D
 * window, z_ = 0). */
#define ROW_CELLS(g, w, z_, BODY)                                                                  \
  for (int64_t ky_ = (w)->lo[1]; ky_ < (w)->hi[1]; ky_++) {                                        \
    const int64_t r_ = (z_) + ((w)->c0[1] + ky_ * (g)->d[1]) * (g)->in[2] + (w)->c0[2];            \
    const int64_t dx_ = (g)->d[2], x1_ = r_ + (w)->hi[2] * dx_;                                    \
    for (int64_t off = r_ + (w)->lo[2] * dx_; off < x1_; off += dx_) {                             \
      BODY;                                                                                        \
    }                                                                                              \
  }
#define WINDOW_CELLS(g, w, BODY)                                                                   \
  for (int64_t kz_ = (w)->lo[0]; kz_ < (w)->hi[0]; kz_++) {                                        \
    const int64_t z_ = ((w)->c0[0] + kz_ * (g)->d[0]) * (g)->hw;                                   \
    ROW_CELLS(g, w, z_, BODY)                                                                      \
  }

/* Calls BODY(o, w) for each output cell of a plane: o its offset in the output
 * plane, w its window (depth and row parts computed once per row). */
#define FOR_OUTPUT_CELLS(g, BODY)                                                                  \
  do {                                                                                             \
    pool_win w;                                                                                    \
    int64_t o = 0;                                                                                 \
    for (int64_t oz_ = 0; oz_ < (g)->out[0]; oz_++) {                                              \
      win_axis((g), 0, oz_, &w);                                                                   \
      for (int64_t oy_ = 0; oy_ < (g)->out[1]; oy_++) {                                            \
        win_axis((g), 1, oy_, &w);                                                                 \
        for (int64_t ox_ = 0; ox_ < (g)->out[2]; ox_++, o++) {                                     \
          win_axis((g), 2, ox_, &w);                                                               \
          BODY;                                                                                    \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
  } while (0)

/* The max pooling rule: v replaces the running max m when greater, and a NaN
 * always replaces it (so NaN propagates). Branch-free selects: with random
 * data a branch here mispredicts about half the time. */
static inline int takes_f32(float v, float m) {
  return (v > m) | (v != v);
}
static inline int takes_int(int v, int m) {
  return v > m;
}

/* Offset in the plane of the maximum of window w, or -1 when the window holds
 * no input cell; one function per element type. */
#define DEF_ARGMAX(NAME, T, TAKES)                                                                 \
  static int64_t NAME(const pool_geom *g, const T *xp, const pool_win *w) {                        \
    int64_t best = -1;                                                                             \
    T mx = 0;                                                                                      \
    WINDOW_CELLS(g, w, {                                                                           \
      const T v = xp[off];                                                                         \
      if (best < 0 || TAKES(v, mx)) {                                                              \
        best = off;                                                                                \
        mx = v;                                                                                    \
      }                                                                                            \
    })                                                                                             \
    return best;                                                                                   \
  }
DEF_ARGMAX(argmax_f32, float, takes_f32)
DEF_ARGMAX(argmax_u8, uint8_t, takes_int)
DEF_ARGMAX(argmax_i8, int8_t, takes_int)

static int is_pool2x2(const pool_geom *g) {
  return g->out[0] == 1 && g->in[0] == 1 && g->k[1] == 2 && g->k[2] == 2 && g->s[1] == 2 &&
         g->s[2] == 2 && g->pb[1] == 0 && g->pb[2] == 0 && g->d[1] == 1 && g->d[2] == 1 &&
         2 * g->out[1] <= g->in[1] && 2 * g->out[2] <= g->in[2];
}

/* 2x2 / stride 2 windows tile the image (but for an odd last row or column,
 * which no window reads): the forward is a pairwise max; the backward writes
 * every dx cell of a window (dy at the argmax, 0 elsewhere) without a
 * separate zeroing pass. Both use selects that compile to maxss / blends: with
 * random data a branch per comparison mispredicts about half the time. NaNs
 * are rare, so they are detected once per window and take the general rule. */
static void maxpool2x2_fwd(const pool_geom *g, const float *xp, float *yp) {
  const int64_t w = g->in[2], ow = g->out[2];
  for (int64_t oy = 0; oy < g->out[1]; oy++) {
    const float *r0 = xp + 2 * oy * w, *r1 = r0 + w;
    float *yr = yp + oy * ow;
    for (int64_t ox = 0; ox < ow; ox++) {
      const float v0 = r0[2 * ox], v1 = r0[2 * ox + 1], v2 = r1[2 * ox], v3 = r1[2 * ox + 1];
      float m = v1 > v0 ? v1 : v0;
      m = v2 > m ? v2 : m;
      m = v3 > m ? v3 : m;
      const int nan = (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3);
      yr[ox] = nan ? NAN : m;
    }
  }
}

static void maxpool2x2_bwd(const pool_geom *g, const float *xp, const float *dyp, float *dxp) {
  const int64_t h = g->in[1], w = g->in[2], oh = g->out[1], ow = g->out[2];
  for (int64_t oy = 0; oy < oh; oy++) {
    const float *r0 = xp + 2 * oy * w, *r1 = r0 + w;
    float *d0 = dxp + 2 * oy * w, *d1 = d0 + w;
    const float *dyr = dyp + oy * ow;
    for (int64_t ox = 0; ox < ow; ox++) {
      const int64_t c0 = 2 * ox;
      const float v0 = r0[c0], v1 = r0[c0 + 1], v2 = r1[c0], v3 = r1[c0 + 1];
      /* First maximum in tap order, as a tournament: the first-wins winner of
       * each row pair, then the second row only if strictly greater. Integer
       * arithmetic only, so that GCC emits no branches. */
      const int i01 = v1 > v0, i23 = v3 > v2;
      const float m01 = i01 ? v1 : v0, m23 = i23 ? v3 : v2;
      const unsigned second = -(unsigned)(m23 > m01);
      int at = (int)(((unsigned)i01 & ~second) | ((unsigned)(2 + i23) & second));
      if ((v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3)) {
        /* The last NaN wins (takes_f32() on each tap in order). */
        at = v3 != v3 ? 3 : v2 != v2 ? 2 : v1 != v1 ? 1 : 0;
      }
      uint32_t v;
      memcpy(&v, dyr + ox, sizeof v);
      const uint32_t out[4] = {v & -(uint32_t)(at == 0), v & -(uint32_t)(at == 1),
                               v & -(uint32_t)(at == 2), v & -(uint32_t)(at == 3)};
      memcpy(d0 + c0, out, 2 * sizeof(float));
      memcpy(d1 + c0, out + 2, 2 * sizeof(float));
    }
    for (int64_t c = 2 * ow; c < w; c++)
      d0[c] = d1[c] = 0.0f;
  }
  memset(dxp + 2 * oh * w, 0, (size_t)((h - 2 * oh) * w) * sizeof(float));
}

/* Max pooling forward (and Indices when idx is not NULL) of element type T. */
#define DEF_MAXPOOL_FWD(NAME, T, ARGMAX, EMPTY)                                                    \
  static void NAME(const pool_geom *g, const T *x, T *y, int64_t *idx, int col_major) {            \
    for (int64_t pl = 0; pl < g->planes; pl++) {                                                   \
      const T *xp = x + pl * g->isz;                                                               \
      T *yp = y + pl * g->osz;                                                                     \
      int64_t *ip = idx ? idx + pl * g->osz : NULL;                                                \
      FOR_OUTPUT_CELLS(g, {                                                                        \
        const int64_t a = ARGMAX(g, xp, &w);                                                       \
        yp[o] = a < 0 ? (EMPTY) : xp[a];                                                           \
        if (ip)                                                                                    \
          ip[o] = a < 0 ? -1 : pl * g->isz + (col_major ? col_major_cell(g, a) : a);               \
      });                                                                                          \
    }                                                                                              \
  }

/* Offset a (row-major in the plane) in column-major order (storage_order 1):
 * the spatial axes reversed, as onnxruntime numbers them. */
static int64_t col_major_cell(const pool_geom *g, int64_t a) {
  const int64_t z = a / g->hw, y = (a / g->in[2]) % g->in[1], x = a % g->in[2];
  return z + g->in[0] * (y + g->in[1] * x);
}

DEF_MAXPOOL_FWD(maxpool_fwd_f32, float, argmax_f32, -INFINITY)
DEF_MAXPOOL_FWD(maxpool_fwd_u8, uint8_t, argmax_u8, 0)
DEF_MAXPOOL_FWD(maxpool_fwd_i8, int8_t, argmax_i8, INT8_MIN)

static void maxpool_any(const pool_geom *g, const void *x, void *y, int64_t *idx, int col_major) {
  switch (g->dtype) {
  case AD_K_POOL_U8:
    maxpool_fwd_u8(g, x, y, idx, col_major);
    break;
  case AD_K_POOL_I8:
    maxpool_fwd_i8(g, x, y, idx, col_major);
    break;
  default:
    maxpool_fwd_f32(g, x, y, idx, col_major);
    break;
  }
}

void ad_k_maxpool_fwd(const int64_t *p, const void *x, void *y) {
  const pool_geom g = pool_geom_of(p, 1);
  if (g.dtype == AD_K_POOL_F32 && is_pool2x2(&g)) {
    for (int64_t pl = 0; pl < g.planes; pl++)
      maxpool2x2_fwd(&g, (const float *)x + pl * g.isz, (float *)y + pl * g.osz);
    return;
  }
  maxpool_any(&g, x, y, NULL, 0);
}

void ad_k_maxpool_idx_fwd(const int64_t *p, const void *x, void *y, int64_t *idx) {
  const pool_geom g = pool_geom_of(p, p[21] == 0);
  maxpool_any(&g, x, y, idx, p[21] != 0);
}

void ad_k_maxpool_bwd(const int64_t *p, const float *x, const float *dy, float *dx) {
  const pool_geom g = pool_geom_of(p, 1);
  for (int64_t pl = 0; pl < g.planes; pl++) {
    const float *xp = x + pl * g.isz;
    const float *dyp = dy + pl * g.osz;
    float *dxp = dx + pl * g.isz;
    if (is_pool2x2(&g)) {
      maxpool2x2_bwd(&g, xp, dyp, dxp);
      continue;
    }
    memset(dxp, 0, (size_t)g.isz * sizeof(float));
    FOR_OUTPUT_CELLS(&g, {
      const int64_t a = argmax_f32(&g, xp, &w);
      if (a >= 0)
        dxp[a] += dyp[o];
    });
  }
}

/* The divisor of window w: all taps when padding counts (the implied trailing
 * padding keeps every window inside the padded input), else the taps that
 * land in the input. */
static inline int64_t avg_count(const pool_geom *g, const pool_win *w, int flat) {
  if (g->include_pad)
    return g->k[0] * g->k[1] * g->k[2];
  const int64_t rows = (w->hi[1] - w->lo[1]) * (w->hi[2] - w->lo[2]);
  return flat ? rows : (w->hi[0] - w->lo[0]) * rows;
}

/* Whether the pool is 2-D (depth 1): the average pools then walk rows and
 * columns only, which small windows notice. */
static int is_flat(const pool_geom *g) {
  return g->in[0] == 1 && g->out[0] == 1 && g->k[0] == 1 && g->pb[0] == 0;
}

/* y = the window averages of plane xp; CELLS walks a window. */
#define AVG_FWD_PLANE(CELLS, FLAT)                                                                 \
  FOR_OUTPUT_CELLS(&g, {                                                                           \
    float s = 0.0f;                                                                                \
    CELLS(&g, &w, s += xp[off]);                                                                   \
    const int64_t cnt = avg_count(&g, &w, FLAT);                                                   \
    /* A window entirely in the padding has no cells to average: 0. */                             \
    yp[o] = cnt > 0 ? s / (float)cnt : 0.0f;                                                       \
  })
#define FLAT_CELLS(g, w, BODY) ROW_CELLS(g, w, 0, BODY)

void ad_k_avgpool_fwd(const int64_t *p, const float *x, float *y) {
  const pool_geom g = pool_geom_of(p, 1);
  for (int64_t pl = 0; pl < g.planes; pl++) {
    const float *xp = x + pl * g.isz;
    float *yp = y + pl * g.osz;
    if (is_flat(&g))
      AVG_FWD_PLANE(FLAT_CELLS, 1);
    else
      AVG_FWD_PLANE(WINDOW_CELLS, 0);
  }
}

/* dx = each window's dy spread evenly over its cells; CELLS walks a window. */
#define AVG_BWD_PLANE(CELLS, FLAT)                                                                 \
  FOR_OUTPUT_CELLS(&g, {                                                                           \
    const int64_t cnt = avg_count(&g, &w, FLAT);                                                   \
    if (cnt > 0) {                                                                                 \
      const float v = dyp[o] / (float)cnt;                                                         \
      CELLS(&g, &w, dxp[off] += v);                                                                \
    }                                                                                              \
  })

void ad_k_avgpool_bwd(const int64_t *p, const float *dy, float *dx) {
  const pool_geom g = pool_geom_of(p, 1);
  memset(dx, 0, (size_t)(g.planes * g.isz) * sizeof(float));
  for (int64_t pl = 0; pl < g.planes; pl++) {
    const float *dyp = dy + pl * g.osz;
    float *dxp = dx + pl * g.isz;
    if (is_flat(&g))
      AVG_BWD_PLANE(FLAT_CELLS, 1);
    else
      AVG_BWD_PLANE(WINDOW_CELLS, 0);
  }
}

/* LpPool: y = (sum over the window's input cells of |x|^p)^(1/p), padding
 * counting as zeros; p[21] = the norm's p. */
void ad_k_lppool_fwd(const int64_t *p, const float *x, float *y) {
  const pool_geom g = pool_geom_of(p, 1);
  const double e = (double)g.extra;
  for (int64_t pl = 0; pl < g.planes; pl++) {
    const float *xp = x + pl * g.isz;
    float *yp = y + pl * g.osz;
    FOR_OUTPUT_CELLS(&g, {
      double s = 0;
      WINDOW_CELLS(&g, &w, s += pow(fabs((double)xp[off]), e));
      yp[o] = (float)pow(s, 1.0 / e);
    });
  }
}
