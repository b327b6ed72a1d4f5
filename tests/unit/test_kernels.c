/*
 * tests/unit/test_kernels.c: every runtime kernel against a naive direct
 * implementation written here (direct convolution loops, window scans,
 * index-by-index transpose and pad), computed in double, on random shapes that
 * cover strides, padding, dilation, groups and the kernels' special paths
 * (pointwise convolution, flat im2col of stride-1 'same' convolutions, bias
 * folded into the GEMM, 2x2 pooling, 3-D and integer pooling, blocked softmax,
 * merged-axis transpose).
 * Outputs are pre-filled with NaN so that a kernel that fails to overwrite
 * shows up, and conv workspaces carry a guard zone.
 * Tolerance: |got - ref| <= 1e-5 * (|ref| + 1) (inputs are in [-1, 1]).
 */
#include "runtime/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}
/* Uniform integer in [lo, hi]. */
static int64_t rnd_int(int64_t lo, int64_t hi) {
  return lo + (int64_t)(rnd_u32() % (uint32_t)(hi - lo + 1));
}
static float rnd_f(void) {
  return (float)((rnd_u32() & 0xffffff) / 8388608.0 - 1.0);
}
static float *rnd_buf(int64_t n) {
  float *b = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    b[i] = rnd_f();
  return b;
}
static float *nan_buf(int64_t n) {
  float *b = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    b[i] = NAN;
  return b;
}
static double *dzero(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* Compares n values; prints the first mismatch with the case description. */
static void check(const char *what, const char *desc, const float *got, const double *ref,
                  int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const double r = ref[i], g = got[i];
    int ok = isnan(r) ? isnan(g) : (isinf(r) ? g == r : fabs(g - r) <= 1e-5 * (fabs(r) + 1.0));
    if (!ok) {
      printf("FAIL %s [%s]: element %lld: got %.9g, want %.9g\n", what, desc, (long long)i, g, r);
      failures++;
      return;
    }
  }
}

/* ---- gemm ---- */

static void test_gemm(void) {
  for (int t = 0; t < 60; t++) {
    const int ta = (int)rnd_int(0, 1), tb = (int)rnd_int(0, 1);
    const int64_t m = rnd_int(1, 17), n = rnd_int(1, 19), k = rnd_int(0, 13);
    const int64_t batch = rnd_int(1, 3);
    /* A is m x k (k x m when transposed), stored with a padded leading dim. */
    const int64_t lda = (ta ? m : k) + rnd_int(0, 2) + (ta ? 0 : (k == 0));
    const int64_t ldb = (tb ? k : n) + rnd_int(0, 2) + (tb ? (k == 0) : 0);
    const int64_t ldc = n + rnd_int(0, 2);
    const int64_t arows = ta ? k : m, brows = tb ? n : k;
    const int64_t asz = arows * lda + 1, bsz = brows * ldb + 1, csz = m * ldc;
    const int64_t sa = rnd_int(0, 1) ? asz : 0, sb = rnd_int(0, 1) ? bsz : 0, sc = csz;
    const float alpha = rnd_int(0, 1) ? 1.0f : 0.75f;
    const float beta = (float)rnd_int(0, 2) * 0.5f;
    float *a = rnd_buf(asz * batch), *b = rnd_buf(bsz * batch), *c = rnd_buf(csz * batch);
    double *ref = dzero(csz * batch);
    for (int64_t bi = 0; bi < batch; bi++)
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < ldc; j++) {
          const int64_t ci = bi * sc + i * ldc + j;
          if (j >= n) {
            ref[ci] = c[ci]; /* outside the matrix: untouched */
            continue;
          }
          double s = 0;
          for (int64_t q = 0; q < k; q++) {
            const double av = a[bi * sa + (ta ? q * lda + i : i * lda + q)];
            const double bv = b[bi * sb + (tb ? j * ldb + q : q * ldb + j)];
            s += av * bv;
          }
          ref[ci] = alpha * s + (beta == 0.0f ? 0.0 : beta * c[ci]);
        }
    const int64_t p[14] = {ta,    tb, m,  n, k, lda, ldb, ldc, ad_k_slot(alpha), ad_k_slot(beta),
                           batch, sa, sb, sc};
    ad_k_gemm(p, a, b, c);
    char desc[160];
    snprintf(desc, sizeof desc, "ta=%d tb=%d m=%lld n=%lld k=%lld batch=%lld sa=%lld sb=%lld", ta,
             tb, (long long)m, (long long)n, (long long)k, (long long)batch, (long long)sa,
             (long long)sb);
    check("gemm", desc, c, ref, csz * batch);
    free(a), free(b), free(c), free(ref);
  }
  /* add_rowvec */
  const int64_t m = 5, n = 7;
  float *y = rnd_buf(m * n), *bias = rnd_buf(n);
  double *ref = dzero(m * n);
  for (int64_t i = 0; i < m * n; i++)
    ref[i] = (double)y[i] + bias[i % n];
  const int64_t p[2] = {m, n};
  ad_k_add_rowvec(p, y, bias);
  check("add_rowvec", "5x7", y, ref, m * n);
  free(y), free(bias), free(ref);
}

/* ---- convolution ---- */

typedef struct conv_case {
  int64_t n, c, h, w, m, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, g;
} conv_case;

static void run_conv_case(const conv_case *cc) {
  const int64_t oh = (cc->h + cc->pt + cc->pb - cc->dh * (cc->kh - 1) - 1) / cc->sh + 1;
  const int64_t ow = (cc->w + cc->pl + cc->pr - cc->dw * (cc->kw - 1) - 1) / cc->sw + 1;
  if (oh < 1 || ow < 1)
    return;
  const int64_t p[16] = {cc->n, cc->c,  cc->h,  cc->w,  cc->m,  cc->kh, cc->kw, oh,
                         ow,    cc->sh, cc->sw, cc->pt, cc->pl, cc->dh, cc->dw, cc->g};
  const int64_t cg = cc->c / cc->g, mg = cc->m / cc->g;
  const int64_t xsz = cc->n * cc->c * cc->h * cc->w, ysz = cc->n * cc->m * oh * ow;
  const int64_t wsz = cc->m * cg * cc->kh * cc->kw;
  float *x = rnd_buf(xsz), *w = rnd_buf(wsz), *b = rnd_buf(cc->m), *dy = rnd_buf(ysz);
  double *yref = dzero(ysz), *dxref = dzero(xsz), *dwref = dzero(wsz);
  for (int64_t n = 0; n < cc->n; n++)
    for (int64_t m = 0; m < cc->m; m++) {
      const int64_t gi = m / mg;
      for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
          const int64_t yi = ((n * cc->m + m) * oh + oy) * ow + ox;
          double s = b[m];
          for (int64_t c = 0; c < cg; c++)
            for (int64_t ky = 0; ky < cc->kh; ky++)
              for (int64_t kx = 0; kx < cc->kw; kx++) {
                const int64_t iy = oy * cc->sh - cc->pt + ky * cc->dh;
                const int64_t ix = ox * cc->sw - cc->pl + kx * cc->dw;
                if (iy < 0 || iy >= cc->h || ix < 0 || ix >= cc->w)
                  continue;
                const int64_t xi = ((n * cc->c + gi * cg + c) * cc->h + iy) * cc->w + ix;
                const int64_t wi = ((m * cg + c) * cc->kh + ky) * cc->kw + kx;
                s += (double)x[xi] * w[wi];
                dxref[xi] += (double)w[wi] * dy[yi];
                dwref[wi] += (double)x[xi] * dy[yi];
              }
          yref[yi] = s;
        }
    }
  const int64_t wsn = ad_k_conv2d_workspace(p);
  const int64_t guard = 64;
  float *ws = nan_buf(wsn + guard);
  for (int64_t i = 0; i < guard; i++)
    ws[wsn + i] = 12345.0f;
  char desc[200];
  snprintf(desc, sizeof desc,
           "N%lld C%lld %lldx%lld M%lld k%lldx%lld s%lld,%lld p%lld,%lld,%lld,%lld d%lld,%lld "
           "g%lld",
           (long long)cc->n, (long long)cc->c, (long long)cc->h, (long long)cc->w, (long long)cc->m,
           (long long)cc->kh, (long long)cc->kw, (long long)cc->sh, (long long)cc->sw,
           (long long)cc->pt, (long long)cc->pl, (long long)cc->pb, (long long)cc->pr,
           (long long)cc->dh, (long long)cc->dw, (long long)cc->g);
  float *y = nan_buf(ysz), *dx = nan_buf(xsz), *dw = nan_buf(wsz);
  ad_k_conv2d_fwd(p, x, w, b, y, ws);
  check("conv2d_fwd", desc, y, yref, ysz);
  /* Without bias. */
  for (int64_t i = 0; i < ysz; i++)
    yref[i] -= b[(i / (oh * ow)) % cc->m];
  for (int64_t i = 0; i < ysz; i++)
    y[i] = NAN;
  ad_k_conv2d_fwd(p, x, w, NULL, y, ws);
  check("conv2d_fwd(no bias)", desc, y, yref, ysz);
  ad_k_conv2d_bwd_data(p, dy, w, dx, ws);
  check("conv2d_bwd_data", desc, dx, dxref, xsz);
  ad_k_conv2d_bwd_weight(p, x, dy, dw, ws);
  check("conv2d_bwd_weight", desc, dw, dwref, wsz);
  for (int64_t i = 0; i < guard; i++)
    if (ws[wsn + i] != 12345.0f) {
      printf("FAIL conv2d workspace overrun [%s]: %lld floats declared\n", desc, (long long)wsn);
      failures++;
      break;
    }
  free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(ws);
  free(yref), free(dxref), free(dwref);
}

static void test_conv(void) {
  for (int t = 0; t < 150; t++) {
    conv_case cc;
    cc.g = rnd_int(1, 3);
    cc.n = rnd_int(1, 3);
    cc.c = cc.g * rnd_int(1, 3);
    cc.m = cc.g * rnd_int(1, 4);
    cc.h = rnd_int(1, 9);
    cc.w = rnd_int(1, 9);
    cc.kh = rnd_int(1, 4);
    cc.kw = rnd_int(1, 4);
    cc.sh = rnd_int(1, 3);
    cc.sw = rnd_int(1, 3);
    cc.dh = rnd_int(1, 2);
    cc.dw = rnd_int(1, 2);
    cc.pt = rnd_int(0, 2);
    cc.pl = rnd_int(0, 2);
    cc.pb = rnd_int(0, 2);
    cc.pr = rnd_int(0, 2);
    run_conv_case(&cc);
  }
  /* Pointwise (no im2col), with groups. */
  const conv_case pw[] = {
      {2, 6, 5, 7, 9, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 3},
      {3, 4, 4, 4, 8, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1},
      /* 1x1 but strided or padded: goes through im2col. */
      {2, 4, 5, 5, 4, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1, 1},
      {2, 4, 5, 5, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2},
      /* Many small images; a non-square kernel with mixed strides and dilations. */
      {37, 3, 6, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
      {9, 4, 5, 4, 6, 2, 3, 1, 2, 0, 1, 1, 0, 2, 1, 2},
      /* The benchmark CNN's layers on a small batch. */
      {4, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
      {3, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
      /* Depthwise, kernel larger than the image with padding. */
      {2, 4, 3, 3, 4, 5, 5, 1, 1, 2, 2, 2, 2, 1, 1, 4},
  };
  for (size_t i = 0; i < sizeof pw / sizeof pw[0]; i++)
    run_conv_case(&pw[i]);
}

/* ---- pooling ---- */

/* One random pooling case over 3 spatial axes (a 2-D case has depth 1): max
 * (float32, uint8 and int8 forward, Indices in both storage orders, backward),
 * average (forward, backward) and Lp (p = 2) against window scans in double. */
static void run_pool_case(int t) {
  int64_t n = rnd_int(1, 2), c = rnd_int(1, 3), in[3], k[3], s[3], d[3], pb[3], pe[3], out[3];
  for (int i = 0; i < 3; i++) {
    in[i] = rnd_int(1, 7);
    k[i] = rnd_int(1, 3);
    s[i] = rnd_int(1, 3);
    d[i] = rnd_int(1, 2);
    pb[i] = rnd_int(0, k[i] / 2);
    pe[i] = rnd_int(0, k[i] / 2);
  }
  if (t < 60) { /* 2-D: depth 1 (every fourth case with a trivial depth window over D > 1) */
    in[0] = t % 4 ? 1 : rnd_int(2, 3);
    k[0] = s[0] = d[0] = 1;
    pb[0] = pe[0] = 0;
  }
  if (t < 10) { /* the 2x2 stride-2 fast path, odd sizes included */
    k[1] = k[2] = s[1] = s[2] = 2;
    d[1] = d[2] = 1;
    pb[1] = pb[2] = pe[1] = pe[2] = 0;
    in[1] = rnd_int(2, 9), in[2] = rnd_int(2, 9);
  }
  int64_t osz = 1, isz = 1;
  for (int i = 0; i < 3; i++) {
    out[i] = (in[i] + pb[i] + pe[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1;
    if (in[i] + pb[i] + pe[i] - d[i] * (k[i] - 1) - 1 < 0)
      return;
    osz *= out[i];
    isz *= in[i];
  }
  const int64_t inc = rnd_int(0, 1);
  int64_t p[23] = {n, c};
  for (int i = 0; i < 3; i++) {
    p[2 + i] = in[i], p[5 + i] = out[i], p[8 + i] = k[i];
    p[11 + i] = s[i], p[14 + i] = pb[i], p[17 + i] = d[i];
  }
  p[20] = inc;
  const int64_t xsz = n * c * isz, ysz = n * c * osz;
  /* Few distinct values so that ties (first max wins) are common. */
  float *x = malloc((size_t)xsz * sizeof(float));
  uint8_t *xu = malloc((size_t)xsz);
  int8_t *xi = malloc((size_t)xsz);
  for (int64_t i = 0; i < xsz; i++) {
    const int64_t v = rnd_int(-3, 3);
    x[i] = (float)v * 0.25f;
    xi[i] = (int8_t)(v * 40);
    xu[i] = (uint8_t)(v * 40 + 128);
  }
  float *dy = rnd_buf(ysz);
  double *ymax = dzero(ysz), *yavg = dzero(ysz), *ylp = dzero(ysz), *dxmax = dzero(xsz),
         *dxavg = dzero(xsz);
  int64_t *argm = malloc((size_t)ysz * sizeof(int64_t)),
          *argc = malloc((size_t)ysz * sizeof(int64_t));
  for (int64_t pl_ = 0; pl_ < n * c; pl_++)
    for (int64_t oi = 0; oi < osz; oi++) {
      const int64_t o[3] = {oi / (out[1] * out[2]), oi / out[2] % out[1], oi % out[2]};
      const int64_t yi = pl_ * osz + oi;
      double mx = -INFINITY, sum = 0, sq = 0;
      int64_t arg = -1, cnt = 0;
      for (int64_t kk = 0; kk < k[0] * k[1] * k[2]; kk++) {
        const int64_t kt[3] = {kk / (k[1] * k[2]), kk / k[2] % k[1], kk % k[2]};
        int64_t at[3], inside = 1;
        for (int i = 0; i < 3; i++) {
          at[i] = o[i] * s[i] - pb[i] + kt[i] * d[i];
          inside &= at[i] >= 0 && at[i] < in[i];
        }
        if (!inside)
          continue;
        const int64_t xo = pl_ * isz + (at[0] * in[1] + at[1]) * in[2] + at[2];
        if (arg < 0 || x[xo] > mx) {
          mx = x[xo];
          arg = xo;
        }
        sum += x[xo];
        sq += (double)x[xo] * x[xo];
        cnt++;
      }
      ymax[yi] = mx;
      ylp[yi] = sqrt(sq);
      argm[yi] = arg;
      argc[yi] = -1;
      if (arg >= 0) {
        dxmax[arg] += dy[yi];
        const int64_t a = arg - pl_ * isz;
        const int64_t z = a / (in[1] * in[2]), y = a / in[2] % in[1], xx = a % in[2];
        argc[yi] = pl_ * isz + z + in[0] * (y + in[1] * xx);
      }
      const int64_t div = inc ? k[0] * k[1] * k[2] : cnt;
      yavg[yi] = div ? sum / (double)div : 0.0;
      for (int64_t kk = 0; kk < k[0] * k[1] * k[2] && div; kk++) {
        const int64_t kt[3] = {kk / (k[1] * k[2]), kk / k[2] % k[1], kk % k[2]};
        int64_t at[3], inside = 1;
        for (int i = 0; i < 3; i++) {
          at[i] = o[i] * s[i] - pb[i] + kt[i] * d[i];
          inside &= at[i] >= 0 && at[i] < in[i];
        }
        if (inside)
          dxavg[pl_ * isz + (at[0] * in[1] + at[1]) * in[2] + at[2]] += dy[yi] / (double)div;
      }
    }
  char desc[200];
  snprintf(desc, sizeof desc,
           "in %lldx%lldx%lld k%lldx%lldx%lld s%lld,%lld,%lld p%lld,%lld,%lld "
           "d%lld,%lld,%lld inc%lld",
           (long long)in[0], (long long)in[1], (long long)in[2], (long long)k[0], (long long)k[1],
           (long long)k[2], (long long)s[0], (long long)s[1], (long long)s[2], (long long)pb[0],
           (long long)pb[1], (long long)pb[2], (long long)d[0], (long long)d[1], (long long)d[2],
           (long long)inc);
  float *y = nan_buf(ysz), *dx = nan_buf(xsz);
  ad_k_maxpool_fwd(p, x, y);
  check("maxpool_fwd", desc, y, ymax, ysz);
  ad_k_maxpool_bwd(p, x, dy, dx);
  check("maxpool_bwd", desc, dx, dxmax, xsz);
  ad_k_avgpool_fwd(p, x, y);
  check("avgpool_fwd", desc, y, yavg, ysz);
  ad_k_avgpool_bwd(p, dy, dx);
  check("avgpool_bwd", desc, dx, dxavg, xsz);
  p[21] = 2;
  ad_k_lppool_fwd(p, x, y);
  check("lppool_fwd", desc, y, ylp, ysz);
  /* Indices (row-major, then column-major) and the integer types: the window
   * scan's argmax, since the integer inputs order as x does. */
  int64_t *idx = malloc((size_t)ysz * sizeof(int64_t));
  uint8_t *yu = malloc((size_t)ysz);
  int8_t *yi8 = malloc((size_t)ysz);
  for (int order = 0; order < 2; order++) {
    p[21] = order;
    p[22] = AD_K_POOL_F32;
    ad_k_maxpool_idx_fwd(p, x, y, idx);
    check("maxpool_idx_fwd", desc, y, ymax, ysz);
    for (int64_t i = 0; i < ysz; i++)
      if (idx[i] != (order ? argc : argm)[i]) {
        printf("FAIL maxpool_idx_fwd order %d [%s]: element %lld: got %lld, want %lld\n", order,
               desc, (long long)i, (long long)idx[i], (long long)(order ? argc : argm)[i]);
        failures++;
        break;
      }
    for (int dt = AD_K_POOL_U8; dt <= AD_K_POOL_I8; dt++) {
      p[22] = dt;
      if (order)
        ad_k_maxpool_idx_fwd(p, dt == AD_K_POOL_U8 ? (void *)xu : (void *)xi,
                             dt == AD_K_POOL_U8 ? (void *)yu : (void *)yi8, idx);
      else
        ad_k_maxpool_fwd(p, dt == AD_K_POOL_U8 ? (void *)xu : (void *)xi,
                         dt == AD_K_POOL_U8 ? (void *)yu : (void *)yi8);
      for (int64_t i = 0; i < ysz; i++) {
        const int64_t a = argm[i];
        const int64_t want = dt == AD_K_POOL_U8 ? (a < 0 ? 0 : xu[a]) : (a < 0 ? INT8_MIN : xi[a]);
        const int64_t got = dt == AD_K_POOL_U8 ? yu[i] : yi8[i];
        if (got != want || (order && idx[i] != argc[i])) {
          printf("FAIL maxpool %s order %d [%s]: element %lld: got %lld, want %lld\n",
                 dt == AD_K_POOL_U8 ? "uint8" : "int8", order, desc, (long long)i, (long long)got,
                 (long long)want);
          failures++;
          break;
        }
      }
    }
  }
  free(idx), free(yu), free(yi8), free(xu), free(xi), free(argm), free(argc);
  free(x), free(dy), free(y), free(dx), free(ymax), free(yavg), free(ylp), free(dxmax), free(dxavg);
}

static void test_pool(void) {
  for (int t = 0; t < 160; t++)
    run_pool_case(t);
  /* A NaN in a window wins (PyTorch propagates it) and takes the gradient. */
  int64_t p[23] = {1, 1, 1, 2, 4, 1, 1, 2, 1, 2, 2, 1, 2, 2, 0, 0, 0, 1, 1, 1, 0, 0, 0};
  const float x[8] = {1, NAN, 5, 6, 2, 3, 7, 8};
  const float dy[2] = {1, 1};
  float y[2], dx[8];
  ad_k_maxpool_fwd(p, x, y);
  ad_k_maxpool_bwd(p, x, dy, dx);
  if (!isnan(y[0]) || y[1] != 8 || dx[1] != 1 || dx[0] != 0 || dx[7] != 1) {
    printf("FAIL maxpool NaN: y = {%g, %g}, dx[0,1,7] = {%g, %g, %g}\n", y[0], y[1], dx[0], dx[1],
           dx[7]);
    failures++;
  }
}

/* ---- softmax, log-softmax, cross entropy ---- */

static void test_softmax(void) {
  const int64_t shapes[][3] = {{1, 1, 1},  {3, 10, 1},  {2, 5, 3},
                               {2, 7, 70}, {1, 129, 1}, {4, 3, 200}};
  for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
    const int64_t *p = shapes[t];
    const int64_t sz = p[0] * p[1] * p[2];
    float *x = rnd_buf(sz), *dy = rnd_buf(sz);
    /* Large logits: a naive exp would overflow. */
    for (int64_t i = 0; i < sz; i += 3)
      x[i] *= 100.0f;
    double *sm = dzero(sz), *lsm = dzero(sz), *dsm = dzero(sz), *dlsm = dzero(sz);
    for (int64_t o = 0; o < p[0]; o++)
      for (int64_t in = 0; in < p[2]; in++) {
        const int64_t base = o * p[1] * p[2] + in, st = p[2];
        double mx = -INFINITY, s = 0, sdy = 0, sdyy = 0;
        for (int64_t k = 0; k < p[1]; k++)
          mx = fmax(mx, x[base + k * st]);
        for (int64_t k = 0; k < p[1]; k++)
          s += exp(x[base + k * st] - mx);
        for (int64_t k = 0; k < p[1]; k++) {
          const int64_t i = base + k * st;
          sm[i] = exp(x[i] - mx) / s;
          lsm[i] = x[i] - mx - log(s);
          sdy += dy[i];
          sdyy += dy[i] * sm[i];
        }
        for (int64_t k = 0; k < p[1]; k++) {
          const int64_t i = base + k * st;
          dsm[i] = sm[i] * (dy[i] - sdyy);
          dlsm[i] = dy[i] - sm[i] * sdy;
        }
      }
    char desc[64];
    snprintf(desc, sizeof desc, "[%lld,%lld,%lld]", (long long)p[0], (long long)p[1],
             (long long)p[2]);
    float *y = nan_buf(sz), *dx = nan_buf(sz);
    ad_k_softmax_fwd(p, x, y);
    check("softmax_fwd", desc, y, sm, sz);
    ad_k_softmax_bwd(p, y, dy, dx);
    check("softmax_bwd", desc, dx, dsm, sz);
    ad_k_logsoftmax_fwd(p, x, y);
    check("logsoftmax_fwd", desc, y, lsm, sz);
    ad_k_logsoftmax_bwd(p, y, dy, dx);
    check("logsoftmax_bwd", desc, dx, dlsm, sz);
    free(x), free(dy), free(y), free(dx), free(sm), free(lsm), free(dsm), free(dlsm);
  }
}

static void test_xent(void) {
  const int64_t n = 13, c = 11;
  float *x = rnd_buf(n * c);
  for (int64_t i = 0; i < n * c; i += 4)
    x[i] *= 90.0f;
  int64_t label[13];
  for (int64_t i = 0; i < n; i++)
    label[i] = rnd_int(0, c - 1);
  const float scale = 1.0f / 64.0f, dloss = 0.5f;
  double loss_ref = 0;
  double *dref = dzero(n * c);
  for (int64_t i = 0; i < n; i++) {
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < c; j++)
      mx = fmax(mx, x[i * c + j]);
    for (int64_t j = 0; j < c; j++)
      s += exp(x[i * c + j] - mx);
    loss_ref += mx + log(s) - x[i * c + label[i]];
    for (int64_t j = 0; j < c; j++)
      dref[i * c + j] = scale * dloss * (exp(x[i * c + j] - mx) / s - (j == label[i]));
  }
  loss_ref *= scale;
  const int64_t p[3] = {n, c, ad_k_slot(scale)};
  float loss = NAN, *dx = nan_buf(n * c);
  ad_k_xent_fwd(p, x, label, &loss);
  check("xent_fwd", "13x11", &loss, &loss_ref, 1);
  ad_k_xent_bwd(p, x, label, &dloss, dx);
  check("xent_bwd", "13x11", dx, dref, n * c);
  /* An out-of-range label: NaN loss; the backward ignores that row's label. */
  label[5] = c;
  ad_k_xent_fwd(p, x, label, &loss);
  if (!isnan(loss)) {
    printf("FAIL xent_fwd: label out of range gave loss %g, want NaN\n", loss);
    failures++;
  }
  for (int64_t j = 0; j < c; j++) {
    double mx = -INFINITY, s = 0;
    for (int64_t q = 0; q < c; q++)
      mx = fmax(mx, x[5 * c + q]);
    for (int64_t q = 0; q < c; q++)
      s += exp(x[5 * c + q] - mx);
    dref[5 * c + j] = scale * dloss * exp(x[5 * c + j] - mx) / s;
  }
  ad_k_xent_bwd(p, x, label, &dloss, dx);
  check("xent_bwd(bad label)", "13x11", dx, dref, n * c);
  free(x), free(dx), free(dref);
}

/* ---- transpose and pad ---- */

static void test_transpose(void) {
  for (int t = 0; t < 200; t++) {
    const int rank = (int)rnd_int(1, 6);
    int64_t p[1 + 16], dims[8], perm[8], total = 1;
    p[0] = rank;
    for (int i = 0; i < rank; i++) {
      dims[i] = rnd_int(0, 4) == 0 ? 1 : rnd_int(1, rank <= 3 ? 40 : 5);
      total *= dims[i];
      perm[i] = i;
    }
    for (int i = rank - 1; i > 0; i--) {
      int j = (int)rnd_int(0, i);
      int64_t tmp = perm[i];
      perm[i] = perm[j];
      perm[j] = tmp;
    }
    for (int i = 0; i < rank; i++) {
      p[1 + i] = dims[i];
      p[1 + rank + i] = perm[i];
    }
    float *x = rnd_buf(total), *y = nan_buf(total);
    double *ref = dzero(total);
    int64_t xs[8];
    xs[rank - 1] = 1;
    for (int i = rank - 2; i >= 0; i--)
      xs[i] = xs[i + 1] * dims[i + 1];
    for (int64_t yi = 0; yi < total; yi++) {
      int64_t rem = yi, xi = 0;
      for (int i = rank - 1; i >= 0; i--) {
        const int64_t d = dims[perm[i]];
        xi += (rem % d) * xs[perm[i]];
        rem /= d;
      }
      ref[yi] = x[xi];
    }
    ad_k_transpose(p, x, y);
    char desc[128];
    int off = snprintf(desc, sizeof desc, "dims");
    for (int i = 0; i < rank; i++)
      off += snprintf(desc + off, sizeof desc - (size_t)off, " %lld", (long long)dims[i]);
    off += snprintf(desc + off, sizeof desc - (size_t)off, " perm");
    for (int i = 0; i < rank; i++)
      off += snprintf(desc + off, sizeof desc - (size_t)off, " %lld", (long long)perm[i]);
    check("transpose", desc, y, ref, total);
    free(x), free(y), free(ref);
  }
}

/* Source index of padded index c of an axis of n cells: edge clamps; reflect
 * bounces between the ends, one step at a time (numpy's 'reflect'). */
static int64_t pad_ref_source(int mode, int64_t c, int64_t n) {
  if (mode == AD_K_PAD_EDGE)
    return c < 0 ? 0 : (c >= n ? n - 1 : c);
  while (n > 1 && (c < 0 || c >= n))
    c = c < 0 ? -c : 2 * (n - 1) - c;
  return n > 1 ? c : 0;
}

static void test_pad(void) {
  for (int t = 0; t < 240; t++) {
    const int rank = (int)rnd_int(1, 4), mode = t % 3;
    int64_t p[3 + 24 + 1], dims[8], pb[8], pe[8], ydims[8], xtot = 1, ytot = 1;
    p[0] = 4;
    p[1] = mode;
    p[2] = rank;
    for (int i = 0; i < rank; i++) {
      dims[i] = rnd_int(1, 6);
      pb[i] = rnd_int(-2, 3);
      pe[i] = rnd_int(-2, 3);
      if (dims[i] + pb[i] + pe[i] < 1)
        pe[i] = 1 - dims[i] - pb[i];
      ydims[i] = dims[i] + pb[i] + pe[i];
      xtot *= dims[i];
      ytot *= ydims[i];
      p[3 + i] = dims[i];
      p[3 + rank + i] = pb[i];
      p[3 + 2 * rank + i] = pe[i];
    }
    const float value = t % 2 == 0 ? 0.0f : -2.5f;
    p[3 + 3 * rank] = ad_k_slot(value);
    float *x = rnd_buf(xtot), *y = nan_buf(ytot), *dy = rnd_buf(ytot), *dx = nan_buf(xtot);
    double *yref = dzero(ytot), *dxref = dzero(xtot);
    int16_t *x16 = malloc((size_t)xtot * 2), *y16 = malloc((size_t)ytot * 2);
    for (int64_t i = 0; i < xtot; i++)
      x16[i] = (int16_t)(i * 37 - 1000);
    int bad16 = 0;
    /* src[yi]: the element of x that output yi copies, -1 for the constant. */
    int64_t *src = malloc((size_t)ytot * sizeof *src);
    for (int64_t yi = 0; yi < ytot; yi++) {
      int64_t rem = yi, xi = 0, xs = 1, inside = 1;
      for (int i = rank - 1; i >= 0; i--) {
        int64_t c = rem % ydims[i] - pb[i];
        rem /= ydims[i];
        if (c < 0 || c >= dims[i]) {
          inside = 0;
          c = pad_ref_source(mode, c, dims[i]);
        }
        xi += c * xs;
        xs *= dims[i];
      }
      src[yi] = inside || mode != AD_K_PAD_CONSTANT ? xi : -1;
      yref[yi] = src[yi] >= 0 ? x[xi] : value;
      if (src[yi] >= 0)
        dxref[xi] += dy[yi];
    }
    char desc[64];
    snprintf(desc, sizeof desc, "rank %d mode %d case %d", rank, mode, t);
    ad_k_pad_fwd(p, x, y);
    check("pad_fwd", desc, y, yref, ytot);
    ad_k_pad_bwd(p, dy, dx);
    check("pad_bwd", desc, dx, dxref, xtot);
    /* The same pad of 2-byte elements (constant 0x1234): the bytes move alike. */
    p[0] = 2;
    p[3 + 3 * rank] = 0x1234;
    ad_k_pad_fwd(p, x16, y16);
    for (int64_t yi = 0; yi < ytot && !bad16; yi++) {
      const int16_t want = src[yi] >= 0 ? x16[src[yi]] : 0x1234;
      if (y16[yi] != want) {
        printf("FAIL pad_fwd int16 [%s]: element %lld: got %d, want %d\n", desc, (long long)yi,
               y16[yi], want);
        failures++;
        bad16 = 1;
      }
    }
    free(x), free(y), free(dy), free(dx), free(yref), free(dxref), free(x16), free(y16);
    free(src);
  }
}

/* ad_k_sum_row (runtime/kernels_reduce.c): accumulates into y[0]. */
static void test_sum_row(void) {
  const int64_t lens[] = {0, 1, 7, 8, 9, 100, 1001};
  for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
    const int64_t n = lens[t];
    float *x = rnd_buf(n), y = 0.25f;
    double ref = 0.25;
    for (int64_t i = 0; i < n; i++)
      ref += x[i];
    const int64_t p[1] = {n};
    ad_k_sum_row(p, x, &y);
    char desc[32];
    snprintf(desc, sizeof desc, "n=%lld", (long long)n);
    check("sum_row", desc, &y, &ref, 1);
    free(x);
  }
}

int main(void) {
  test_gemm();
  test_conv();
  test_pool();
  test_softmax();
  test_xent();
  test_transpose();
  test_pad();
  test_sum_row();
  if (failures) {
    printf("test_kernels: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_kernels: ok\n");
  return 0;
}
