/*
 * runtime/kernels_conv.c: 2-D convolution (forward, data gradient, weight
 * gradient) by im2col / col2im and single-threaded SGEMM.
 *
 * Design: per image and group, the input patch matrix col[K, P] (K = C/group *
 * KH * KW rows in weight order, P = OH * OW columns) is built in the caller's
 * workspace, so that
 *     forward      y_g[Mg, P]  = w_g[Mg, K] * col + bias
 *     data grad    col         = w_g^T * dy_g, then col2im adds col into dx
 *     weight grad  dw_g[Mg, K] += dy_g * col^T   (summed over the batch)
 * are one SGEMM each (the bias rides in the forward GEMM as an extra row of
 * ones in col). im2col / col2im compute, per kernel tap, the range of output
 * pixels that read real input, so the inner loops have no bounds tests; for
 * stride 1 "same"-width convolutions a tap row is even one flat copy of the
 * plane (see conv_flat). Pointwise convolutions (1x1, stride 1, no padding)
 * read the image itself as col.
 *
 * Measured on the benchmark CNN's layers (3x3 convolutions of 28x28 and 14x14
 * images, one thread), building the columns of several images side by side for
 * one wider SGEMM did not pay: the larger column buffer falls out of L2 and
 * the result needs a scatter. One image-group at a time keeps col in L2.
 */
#include "runtime/kernels.h"

#include <cblas.h>
#include <stddef.h>

typedef struct conv_geom {
  int64_t n, c, h, w, m, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, g;
  int64_t cg, mg; /* channels and filters per group */
  int64_t k;      /* rows of col: cg * kh * kw */
  int64_t hw, pq; /* input and output pixels per channel */
  int pointwise;  /* col is the image itself */
} conv_geom;

static conv_geom conv_geom_of(const int64_t *p) {
  /* The 16 parameters in order, then the derived fields (set below). */
  conv_geom g = {p[0],  p[1],  p[2],  p[3],  p[4],  p[5], p[6], p[7], p[8], p[9], p[10],
                 p[11], p[12], p[13], p[14], p[15], 0,    0,    0,    0,    0,    0};
  if (g.g < 1)
    g.g = 1;
  g.cg = g.c / g.g;
  g.mg = g.m / g.g;
  g.k = g.cg * g.kh * g.kw;
  g.hw = g.h * g.w;
  g.pq = g.oh * g.ow;
  g.pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
                g.oh == g.h && g.ow == g.w;
  return g;
}

/* col[K + 1, P] (the extra row of ones carries the forward's bias) and the
 * bias-extended weights [M, K + 1]. */
int64_t ad_k_conv2d_workspace(const int64_t *p) {
  conv_geom g = conv_geom_of(p);
  return g.pointwise ? 0 : (g.k + 1) * (g.pq + g.m);
}

/* Range [lo, hi) of output positions o with 0 <= o * s + off < n (o < out_n). */
static void tap_range(int64_t off, int64_t s, int64_t n, int64_t out_n, int64_t *lo, int64_t *hi) {
  int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
  int64_t t = n - 1 - off; /* o * s <= t */
  int64_t b = t < 0 ? 0 : t / s + 1;
  if (a > out_n)
    a = out_n;
  if (b > out_n)
    b = out_n;
  if (b < a)
    b = a;
  *lo = a;
  *hi = b;
}

/* For stride 1 with OW == W ("same"-width convolutions, the common case) a
 * tap row of col is the input plane read flat at one offset: output pixel j
 * reads input pixel j + (ih0 * W + iw0). Such rows are one long copy (or add)
 * plus a fix-up of the few columns that wrap across a row edge, instead of OH
 * short row segments. */
static int conv_flat(const conv_geom *g) {
  return g->sh == 1 && g->sw == 1 && g->ow == g->w;
}

/* The flat range [*a, *b) of col-row indices, within valid output rows
 * [ylo, yhi), whose source j + off lies inside the plane. */
static void flat_range(const conv_geom *g, int64_t ylo, int64_t yhi, int64_t off, int64_t *a,
                       int64_t *b) {
  int64_t lo = ylo * g->ow, hi = yhi * g->ow;
  if (lo < -off)
    lo = -off;
  if (hi > g->hw - off)
    hi = g->hw - off;
  if (hi <= lo)
    lo = hi = 0; /* nothing to read: the whole row is padding */
  *a = lo;
  *b = hi;
}

/* dst[i] += src[i]. Written with explicit 4-float vectors: the build's -O2
 * only auto-vectorizes loops whose trip count is a known multiple of the
 * vector width, and this is the inner loop of col2im. */
typedef float v4f __attribute__((vector_size(16)));
static void add_into(float *dst, const float *src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v4f d0, d1, s0, s1;
    memcpy(&d0, dst + i, sizeof d0);
    memcpy(&d1, dst + i + 4, sizeof d1);
    memcpy(&s0, src + i, sizeof s0);
    memcpy(&s1, src + i + 4, sizeof s1);
    d0 += s0;
    d1 += s1;
    memcpy(dst + i, &d0, sizeof d0);
    memcpy(dst + i + 4, &d1, sizeof d1);
  }
  for (; i < n; i++)
    dst[i] += src[i];
}

/* Zeroes, in rows [ylo, yhi) of a col row, the columns outside [lo, hi). */
static void zero_edges(float *row, int64_t ow, int64_t ylo, int64_t yhi, int64_t lo, int64_t hi) {
  if (lo == 0 && hi == ow)
    return;
  for (int64_t oy = ylo; oy < yhi; oy++) {
    float *r = row + oy * ow;
    for (int64_t o = 0; o < lo; o++)
      r[o] = 0.0f;
    for (int64_t o = hi; o < ow; o++)
      r[o] = 0.0f;
  }
}

/* col[K, P] for the cg channels of one image-group at x. Rows are written
 * sequentially; each (channel, tap) row reads one shifted window of the
 * channel, so the input plane stays in L1 while its KH * KW rows are built. */
static void im2col(const conv_geom *g, const float *x, float *col) {
  const int64_t ow = g->ow, sw = g->sw, flat = conv_flat(g);
  float *row = col;
  for (int64_t c = 0; c < g->cg; c++) {
    const float *xc = x + c * g->hw;
    for (int64_t ky = 0; ky < g->kh; ky++) {
      int64_t ylo, yhi;
      const int64_t ih0 = ky * g->dh - g->pt;
      tap_range(ih0, g->sh, g->h, g->oh, &ylo, &yhi);
      for (int64_t kx = 0; kx < g->kw; kx++, row += g->pq) {
        int64_t lo, hi;
        const int64_t iw0 = kx * g->dw - g->pl;
        tap_range(iw0, sw, g->w, ow, &lo, &hi);
        if (flat) {
          const int64_t off = ih0 * g->w + iw0;
          int64_t a, b;
          flat_range(g, ylo, yhi, off, &a, &b);
          memset(row, 0, (size_t)a * sizeof(float));
          memcpy(row + a, xc + a + off, (size_t)(b - a) * sizeof(float));
          memset(row + b, 0, (size_t)(g->pq - b) * sizeof(float));
          zero_edges(row, ow, ylo, yhi, lo, hi);
          continue;
        }
        memset(row, 0, (size_t)(ylo * ow) * sizeof(float));
        for (int64_t oy = ylo; oy < yhi; oy++) {
          float *r = row + oy * ow;
          const float *xr = xc + (oy * g->sh + ih0) * g->w;
          for (int64_t o = 0; o < lo; o++)
            r[o] = 0.0f;
          if (sw == 1) {
            for (int64_t o = lo; o < hi; o++)
              r[o] = xr[o + iw0];
          } else {
            for (int64_t o = lo; o < hi; o++)
              r[o] = xr[o * sw + iw0];
          }
          for (int64_t o = hi; o < ow; o++)
            r[o] = 0.0f;
        }
        memset(row + yhi * ow, 0, (size_t)(g->pq - yhi * ow) * sizeof(float));
      }
    }
  }
}

/* dx (one image-group, cg channels) += col2im(col[K, P]); only the taps that
 * land inside the image are visited. In the flat case the wrapping columns of
 * col (scratch) are zeroed first so that one long add per row is exact. */
static void col2im_add(const conv_geom *g, float *col, float *dx) {
  const int64_t ow = g->ow, sw = g->sw, flat = conv_flat(g);
  float *row = col;
  for (int64_t c = 0; c < g->cg; c++) {
    float *xc = dx + c * g->hw;
    for (int64_t ky = 0; ky < g->kh; ky++) {
      int64_t ylo, yhi;
      const int64_t ih0 = ky * g->dh - g->pt;
      tap_range(ih0, g->sh, g->h, g->oh, &ylo, &yhi);
      for (int64_t kx = 0; kx < g->kw; kx++, row += g->pq) {
        int64_t lo, hi;
        const int64_t iw0 = kx * g->dw - g->pl;
        tap_range(iw0, sw, g->w, ow, &lo, &hi);
        if (flat) {
          const int64_t off = ih0 * g->w + iw0;
          int64_t a, b;
          flat_range(g, ylo, yhi, off, &a, &b);
          zero_edges(row, ow, ylo, yhi, lo, hi);
          if (b > a)
            add_into(xc + (a + off), row + a, b - a);
          continue;
        }
        for (int64_t oy = ylo; oy < yhi; oy++) {
          const float *r = row + oy * ow;
          float *xr = xc + (oy * g->sh + ih0) * g->w;
          if (sw == 1) {
            for (int64_t o = lo; o < hi; o++)
              xr[o + iw0] += r[o];
          } else {
            for (int64_t o = lo; o < hi; o++)
              xr[o * sw + iw0] += r[o];
          }
        }
      }
    }
  }
}

/* The bias rides in the GEMM: col gets a row of ones (row K) and the weights
 * are copied once per call into wb[M, K + 1] with the bias as last column, so
 * y is written once (filling y with the bias first and accumulating costs a
 * whole extra pass over y, 40% of the forward time of a 1-channel layer). */
void ad_k_conv2d_fwd(const int64_t *p, const float *x, const float *w, const float *b, float *y,
                     float *ws) {
  const conv_geom g = conv_geom_of(p);
  if (g.n == 0 || g.pq == 0 || g.mg == 0)
    return;
  const int mg = (int)g.mg, pq = (int)g.pq;
  if (g.pointwise || g.k == 0) {
    /* Pointwise reads x in place, so the bias goes in first (beta = 1). */
    const int k = (int)g.k;
    for (int64_t n = 0; n < g.n; n++)
      for (int64_t gi = 0; gi < g.g; gi++) {
        float *yg = y + (n * g.m + gi * g.mg) * g.pq;
        for (int64_t r = 0; r < g.mg; r++)
          for (int64_t j = 0; j < g.pq; j++)
            yg[r * g.pq + j] = b ? b[gi * g.mg + r] : 0.0f;
        if (k > 0)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mg, pq, k, 1.0f,
                      w + gi * g.mg * g.k, k, x + (n * g.c + gi * g.cg) * g.hw, pq, 1.0f, yg, pq);
      }
    return;
  }
  const int64_t kb = b ? g.k + 1 : g.k; /* GEMM depth, with the bias row */
  const float *wk = w;
  if (b) {
    float *wb = ws + kb * g.pq;
    for (int64_t m = 0; m < g.m; m++) {
      memcpy(wb + m * kb, w + m * g.k, (size_t)g.k * sizeof(float));
      wb[m * kb + g.k] = b[m];
    }
    for (int64_t j = 0; j < g.pq; j++)
      ws[g.k * g.pq + j] = 1.0f;
    wk = wb;
  }
  for (int64_t n = 0; n < g.n; n++)
    for (int64_t gi = 0; gi < g.g; gi++) {
      im2col(&g, x + (n * g.c + gi * g.cg) * g.hw, ws);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mg, pq, (int)kb, 1.0f,
                  wk + gi * g.mg * kb, (int)kb, ws, pq, 0.0f, y + (n * g.m + gi * g.mg) * g.pq, pq);
    }
}

void ad_k_conv2d_bwd_data(const int64_t *p, const float *dy, const float *w, float *dx, float *ws) {
  const conv_geom g = conv_geom_of(p);
  const int mg = (int)g.mg, k = (int)g.k, pq = (int)g.pq;
  if (g.mg == 0 || g.pq == 0 || g.k == 0) {
    memset(dx, 0, (size_t)(g.n * g.c * g.hw) * sizeof(float));
    return;
  }
  /* Pointwise: the GEMM writes dx directly; otherwise columns, then col2im
   * into a zeroed dx (each image-group is zeroed just before its col2im so
   * that it is still in cache). */
  for (int64_t n = 0; n < g.n; n++)
    for (int64_t gi = 0; gi < g.g; gi++) {
      float *dxg = dx + (n * g.c + gi * g.cg) * g.hw;
      float *out = g.pointwise ? dxg : ws;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, pq, mg, 1.0f, w + gi * g.mg * g.k, k,
                  dy + (n * g.m + gi * g.mg) * g.pq, pq, 0.0f, out, pq);
      if (!g.pointwise) {
        memset(dxg, 0, (size_t)(g.cg * g.hw) * sizeof(float));
        col2im_add(&g, ws, dxg);
      }
    }
}

void ad_k_conv2d_bwd_weight(const int64_t *p, const float *x, const float *dy, float *dw,
                            float *ws) {
  const conv_geom g = conv_geom_of(p);
  const int mg = (int)g.mg, k = (int)g.k, pq = (int)g.pq;
  if (g.mg == 0 || g.k == 0)
    return;
  if (g.n == 0 || g.pq == 0) {
    memset(dw, 0, (size_t)(g.m * g.k) * sizeof(float));
    return;
  }
  /* dw_g = sum over images of dy_g * col^T: the first image overwrites. */
  for (int64_t n = 0; n < g.n; n++)
    for (int64_t gi = 0; gi < g.g; gi++) {
      const float *xg = x + (n * g.c + gi * g.cg) * g.hw;
      if (!g.pointwise) {
        im2col(&g, xg, ws);
        xg = ws;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mg, k, pq, 1.0f,
                  dy + (n * g.m + gi * g.mg) * g.pq, pq, xg, pq, n == 0 ? 0.0f : 1.0f,
                  dw + gi * g.mg * g.k, k);
    }
}
