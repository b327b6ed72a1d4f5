/*
 * runtime/kernels_pool.c: 2-D max and average pooling, forward and backward.
 *
 * Design: windows may be padded (top/left given, bottom/right implied by the
 * output size) and dilated. For each output row and column the range of kernel
 * taps that land inside the image is computed once, so the window loops carry
 * no bounds tests and padding cells are never read. Max pooling keeps no index
 * buffer: the backward pass recomputes the argmax from x with the same rule as
 * the forward (first maximum wins; a NaN wins over numbers, the last NaN over
 * earlier ones, exactly PyTorch's `val > max || isnan(val)` rule).
 * The common 2x2 / stride 2 unpadded max pool has its own loop.
 *
 * Average pooling divides by kh * kw when padding counts (count_include_pad
 * 1; with the implied bottom/right padding every window lies inside the padded
 * image) and by the number of image cells otherwise (ONNX semantics). PyTorch's
 * ceil_mode windows that overhang the padded image divide by the clipped size
 * instead; that case cannot be told apart from here.
 */
#include "runtime/kernels.h"

#include <math.h>
#include <stddef.h>

typedef struct pool_geom {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, include_pad;
} pool_geom;

static pool_geom pool_geom_of(const int64_t *p) {
  pool_geom g = {p[0], p[1], p[2],  p[3],  p[4],  p[5],  p[6], p[7],
                 p[8], p[9], p[10], p[11], p[12], p[13], p[14]};
  return g;
}

/* Taps [lo, hi) of a kernel of k taps with dilation d whose cell o0 + t * d
 * lies in [0, n). */
static void taps(int64_t o0, int64_t d, int64_t k, int64_t n, int64_t *lo, int64_t *hi) {
  int64_t a = o0 >= 0 ? 0 : (-o0 + d - 1) / d;
  int64_t t = n - 1 - o0;
  int64_t b = t < 0 ? 0 : t / d + 1;
  a = a > k ? k : a;
  b = b > k ? k : b;
  *lo = a;
  *hi = b < a ? a : b;
}

/* The window of output (oy, ox): its top-left cell (y0, x0), possibly in the
 * padding, and the taps [ylo, yhi) x [xlo, xhi) that land in the image. */
typedef struct pool_win {
  int64_t y0, x0, ylo, yhi, xlo, xhi;
} pool_win;

static pool_win window_of(const pool_geom *g, int64_t oy, int64_t ox) {
  pool_win w = {.y0 = oy * g->sh - g->pt, .x0 = ox * g->sw - g->pl};
  taps(w.y0, g->dh, g->kh, g->h, &w.ylo, &w.yhi);
  taps(w.x0, g->dw, g->kw, g->w, &w.xlo, &w.xhi);
  return w;
}

/* The max pooling rule: v replaces the running max m when greater, and a NaN
 * always replaces it (so NaN propagates). Branch-free selects: with random
 * data a branch here mispredicts about half the time. */
static inline int takes(float v, float m) {
  return (v > m) | (v != v);
}

/* Offset in the plane of the window maximum for output (oy, ox), or -1 when
 * the window holds no image cell. */
static int64_t window_argmax(const pool_geom *g, const float *xp, int64_t oy, int64_t ox) {
  const pool_win w = window_of(g, oy, ox);
  int64_t best = -1;
  float mx = -INFINITY;
  for (int64_t ky = w.ylo; ky < w.yhi; ky++) {
    const int64_t row = (w.y0 + ky * g->dh) * g->w;
    for (int64_t kx = w.xlo; kx < w.xhi; kx++) {
      const int64_t off = row + w.x0 + kx * g->dw;
      const float v = xp[off];
      if (best < 0 || takes(v, mx)) {
        best = off;
        mx = v;
      }
    }
  }
  return best;
}

static int is_pool2x2(const pool_geom *g) {
  return g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 && g->pt == 0 && g->pl == 0 &&
         g->dh == 1 && g->dw == 1 && 2 * g->oh <= g->h && 2 * g->ow <= g->w;
}

/* 2x2 / stride 2 windows tile the image (but for an odd last row or column,
 * which no window reads): the forward is a pairwise max; the backward writes
 * every dx cell of a window (dy at the argmax, 0 elsewhere) without a
 * separate zeroing pass. Both use selects that compile to maxss / blends: with
 * random data a branch per comparison mispredicts about half the time. NaNs
 * are rare, so they are detected once per window and take the general rule. */
static void maxpool2x2_fwd(const pool_geom *g, const float *xp, float *yp) {
  for (int64_t oy = 0; oy < g->oh; oy++) {
    const float *r0 = xp + 2 * oy * g->w, *r1 = r0 + g->w;
    float *yr = yp + oy * g->ow;
    for (int64_t ox = 0; ox < g->ow; ox++) {
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
  for (int64_t oy = 0; oy < g->oh; oy++) {
    const float *r0 = xp + 2 * oy * g->w, *r1 = r0 + g->w;
    float *d0 = dxp + 2 * oy * g->w, *d1 = d0 + g->w;
    const float *dyr = dyp + oy * g->ow;
    for (int64_t ox = 0; ox < g->ow; ox++) {
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
        /* The last NaN wins (takes() on each tap in order). */
        at = v3 != v3 ? 3 : v2 != v2 ? 2 : v1 != v1 ? 1 : 0;
      }
      uint32_t v;
      memcpy(&v, dyr + ox, sizeof v);
      const uint32_t out[4] = {v & -(uint32_t)(at == 0), v & -(uint32_t)(at == 1),
                               v & -(uint32_t)(at == 2), v & -(uint32_t)(at == 3)};
      memcpy(d0 + c0, out, 2 * sizeof(float));
      memcpy(d1 + c0, out + 2, 2 * sizeof(float));
    }
    for (int64_t c = 2 * g->ow; c < g->w; c++)
      d0[c] = d1[c] = 0.0f;
  }
  memset(dxp + 2 * g->oh * g->w, 0, (size_t)((g->h - 2 * g->oh) * g->w) * sizeof(float));
}

void ad_k_maxpool2d_fwd(const int64_t *p, const float *x, float *y) {
  const pool_geom g = pool_geom_of(p);
  const int64_t planes = g.n * g.c;
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * g.h * g.w;
    float *yp = y + pl * g.oh * g.ow;
    if (is_pool2x2(&g)) {
      maxpool2x2_fwd(&g, xp, yp);
      continue;
    }
    for (int64_t oy = 0; oy < g.oh; oy++)
      for (int64_t ox = 0; ox < g.ow; ox++) {
        const int64_t a = window_argmax(&g, xp, oy, ox);
        yp[oy * g.ow + ox] = a < 0 ? -INFINITY : xp[a];
      }
  }
}

void ad_k_maxpool2d_bwd(const int64_t *p, const float *x, const float *dy, float *dx) {
  const pool_geom g = pool_geom_of(p);
  const int64_t planes = g.n * g.c;
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * g.h * g.w;
    const float *dyp = dy + pl * g.oh * g.ow;
    float *dxp = dx + pl * g.h * g.w;
    if (is_pool2x2(&g)) {
      maxpool2x2_bwd(&g, xp, dyp, dxp);
      continue;
    }
    memset(dxp, 0, (size_t)(g.h * g.w) * sizeof(float));
    for (int64_t oy = 0; oy < g.oh; oy++)
      for (int64_t ox = 0; ox < g.ow; ox++) {
        const int64_t a = window_argmax(&g, xp, oy, ox);
        if (a >= 0)
          dxp[a] += dyp[oy * g.ow + ox];
      }
  }
}

/* The divisor of window (oy, ox): all kh * kw taps when padding counts (the
 * implied bottom/right padding keeps every window inside the padded image),
 * else the taps that land in the image. */
static int64_t avg_count(const pool_geom *g, const pool_win *w) {
  if (g->include_pad)
    return g->kh * g->kw;
  return (w->yhi - w->ylo) * (w->xhi - w->xlo);
}

/* A pooled output cell from the window w of the plane xp; e: LpPool's p. */
typedef float (*pool_cell)(const pool_geom *g, const float *xp, const pool_win *w, double e);

/* y[plane, oy, ox] = cell(window (oy, ox) of x's plane), every plane. */
static void pool_fwd(const int64_t *p, const float *x, float *y, pool_cell cell, double e) {
  const pool_geom g = pool_geom_of(p);
  const int64_t planes = g.n * g.c;
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * g.h * g.w;
    float *yp = y + pl * g.oh * g.ow;
    for (int64_t oy = 0; oy < g.oh; oy++)
      for (int64_t ox = 0; ox < g.ow; ox++) {
        const pool_win w = window_of(&g, oy, ox);
        yp[oy * g.ow + ox] = cell(&g, xp, &w, e);
      }
  }
}

static float avg_cell(const pool_geom *g, const float *xp, const pool_win *w, double e) {
  (void)e;
  float s = 0.0f;
  for (int64_t ky = w->ylo; ky < w->yhi; ky++) {
    const int64_t r = (w->y0 + ky * g->dh) * g->w + w->x0;
    for (int64_t kx = w->xlo; kx < w->xhi; kx++)
      s += xp[r + kx * g->dw];
  }
  const int64_t cnt = avg_count(g, w);
  /* A window entirely in the padding has no cells to average: 0. */
  return cnt > 0 ? s / (float)cnt : 0.0f;
}

void ad_k_avgpool2d_fwd(const int64_t *p, const float *x, float *y) {
  pool_fwd(p, x, y, avg_cell, 0);
}

void ad_k_avgpool2d_bwd(const int64_t *p, const float *dy, float *dx) {
  const pool_geom g = pool_geom_of(p);
  const int64_t planes = g.n * g.c;
  memset(dx, 0, (size_t)(planes * g.h * g.w) * sizeof(float));
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *dyp = dy + pl * g.oh * g.ow;
    float *dxp = dx + pl * g.h * g.w;
    for (int64_t oy = 0; oy < g.oh; oy++) {
      for (int64_t ox = 0; ox < g.ow; ox++) {
        const pool_win w = window_of(&g, oy, ox);
        const int64_t cnt = avg_count(&g, &w);
        if (cnt <= 0)
          continue;
        const float v = dyp[oy * g.ow + ox] / (float)cnt;
        for (int64_t ky = w.ylo; ky < w.yhi; ky++) {
          const int64_t r = (w.y0 + ky * g.dh) * g.w + w.x0;
          for (int64_t kx = w.xlo; kx < w.xhi; kx++)
            dxp[r + kx * g.dw] += v;
        }
      }
    }
  }
}

/* Max pooling with the ONNX Indices output: idx = the flat offset in x of each
 * window's maximum (the forward's argmax rule), NCHW for storage_order 0
 * (p[15]), with the spatial cells column-major (NCWH) for 1. */
void ad_k_maxpool2d_idx_fwd(const int64_t *p, const float *x, float *y, int64_t *idx) {
  const pool_geom g = pool_geom_of(p);
  const int64_t planes = g.n * g.c;
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * g.h * g.w;
    for (int64_t oy = 0; oy < g.oh; oy++)
      for (int64_t ox = 0; ox < g.ow; ox++) {
        const int64_t a = window_argmax(&g, xp, oy, ox), o = (pl * g.oh + oy) * g.ow + ox;
        y[o] = a < 0 ? -INFINITY : xp[a];
        const int64_t cell = p[15] ? (a % g.w) * g.h + a / g.w : a;
        idx[o] = a < 0 ? -1 : pl * g.h * g.w + cell;
      }
  }
}

/* LpPool: y = (sum over the window's image cells of |x|^p)^(1/p), padding
 * counting as zeros; p[15] = the norm's p. */
static float lp_cell(const pool_geom *g, const float *xp, const pool_win *w, double e) {
  double s = 0;
  for (int64_t ky = w->ylo; ky < w->yhi; ky++) {
    const int64_t r = (w->y0 + ky * g->dh) * g->w + w->x0;
    for (int64_t kx = w->xlo; kx < w->xhi; kx++)
      s += pow(fabs((double)xp[r + kx * g->dw]), e);
  }
  return (float)pow(s, 1.0 / e);
}

void ad_k_lppool2d_fwd(const int64_t *p, const float *x, float *y) {
  pool_fwd(p, x, y, lp_cell, (double)p[15]);
}
