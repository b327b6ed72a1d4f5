/*
 * runtime/kernels.c: the dense kernels that generated code calls (GEMM, row
 * bias, softmax / log-softmax, cross entropy, transpose, pad).
 * Convolution lives in kernels_conv.c, pooling in kernels_pool.c.
 *
 * Design: every kernel follows the ABI of runtime/kernels.h (an int64 parameter
 * block, then raw buffers). The kernels depend only on libc, libm and CBLAS so
 * that tests/ref/test_kernels_torch.py can build them alone into a shared
 * object and compare them with PyTorch. They never allocate: scratch space is
 * small fixed-size stack blocks. Threads are the worker's business (it fixes
 * OpenBLAS to one thread per process); the kernels are single-threaded.
 */
#include "runtime/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

/* ---- GEMM ---- */

void ad_k_gemm(const int64_t *p, const float *A, const float *B, float *C) {
  const enum CBLAS_TRANSPOSE ta = p[0] ? CblasTrans : CblasNoTrans;
  const enum CBLAS_TRANSPOSE tb = p[1] ? CblasTrans : CblasNoTrans;
  const int m = (int)p[2], n = (int)p[3], k = (int)p[4];
  const int lda = (int)p[5], ldb = (int)p[6], ldc = (int)p[7];
  const float alpha = ad_k_f32(p[8]), beta = ad_k_f32(p[9]);
  const int64_t batch = p[10] < 1 ? 1 : p[10];
  const int64_t sa = p[11], sb = p[12], sc = p[13];
  if (m == 0 || n == 0)
    return;
  for (int64_t i = 0; i < batch; i++) {
    float *c = C + i * sc;
    if (k == 0) {
      /* BLAS with K = 0 only scales C; do it here so that lda/ldb checks
       * (which depend on K) never trip on an empty reduction. */
      for (int r = 0; r < m; r++)
        for (int j = 0; j < n; j++)
          c[(int64_t)r * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(int64_t)r * ldc + j];
      continue;
    }
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A + i * sa, lda, B + i * sb, ldb, beta, c,
                ldc);
  }
}

void ad_k_add_rowvec(const int64_t *p, float *Y, const float *bias) {
  const int64_t m = p[0], n = p[1];
  for (int64_t i = 0; i < m; i++) {
    float *y = Y + i * n;
    for (int64_t j = 0; j < n; j++)
      y[j] += bias[j];
  }
}

/* ---- softmax family ----
 * The tensor is viewed as [outer, n, inner]. For inner == 1 each row is
 * contiguous; otherwise the inner axis is processed in blocks of SM_BLOCK
 * columns so that the loops over n read contiguous memory, with the per-column
 * max and sum kept in small stack arrays (kernels do not allocate). */

#define SM_BLOCK 64

/* Softmax (log_out = 0) or log-softmax (log_out = 1) of `n` values spaced
 * `stride` apart, for `w` adjacent columns starting at x / y. */
static void softmax_block(const float *x, float *y, int64_t n, int64_t stride, int w, int log_out) {
  float mx[SM_BLOCK], sum[SM_BLOCK];
  for (int j = 0; j < w; j++) {
    mx[j] = -INFINITY;
    sum[j] = 0.0f;
  }
  for (int64_t k = 0; k < n; k++) {
    const float *xk = x + k * stride;
    for (int j = 0; j < w; j++)
      mx[j] = xk[j] > mx[j] ? xk[j] : mx[j];
  }
  /* A row of -inf (or a NaN max) is left to propagate as NaN like PyTorch's. */
  for (int64_t k = 0; k < n; k++) {
    const float *xk = x + k * stride;
    float *yk = y + k * stride;
    for (int j = 0; j < w; j++) {
      float e = expf(xk[j] - mx[j]);
      sum[j] += e;
      if (!log_out)
        yk[j] = e;
    }
  }
  if (log_out) {
    /* (x - max) - log(sum): subtracting max + log(sum) in one go would round
     * max + log(sum) to max's precision (2.4e-4 lost near 1e4). */
    for (int j = 0; j < w; j++)
      sum[j] = logf(sum[j]);
    for (int64_t k = 0; k < n; k++) {
      const float *xk = x + k * stride;
      float *yk = y + k * stride;
      for (int j = 0; j < w; j++)
        yk[j] = (xk[j] - mx[j]) - sum[j];
    }
  } else {
    for (int j = 0; j < w; j++)
      sum[j] = 1.0f / sum[j];
    for (int64_t k = 0; k < n; k++) {
      float *yk = y + k * stride;
      for (int j = 0; j < w; j++)
        yk[j] *= sum[j];
    }
  }
}

static void softmax_any(const int64_t *p, const float *x, float *y, int log_out) {
  const int64_t outer = p[0], n = p[1], inner = p[2];
  for (int64_t o = 0; o < outer; o++) {
    const float *xo = x + o * n * inner;
    float *yo = y + o * n * inner;
    for (int64_t i = 0; i < inner; i += SM_BLOCK) {
      int w = (int)(inner - i < SM_BLOCK ? inner - i : SM_BLOCK);
      softmax_block(xo + i, yo + i, n, inner, w, log_out);
    }
  }
}

void ad_k_softmax_fwd(const int64_t *p, const float *x, float *y) {
  softmax_any(p, x, y, 0);
}

void ad_k_logsoftmax_fwd(const int64_t *p, const float *x, float *y) {
  softmax_any(p, x, y, 1);
}

/* dx = y * (dy - sum(dy * y)) for softmax; dx = dy - exp(y) * sum(dy) for
 * log-softmax (y being the forward output in both cases). */
static void softmax_bwd_any(const int64_t *p, const float *y, const float *dy, float *dx,
                            int log_out) {
  const int64_t outer = p[0], n = p[1], inner = p[2];
  for (int64_t o = 0; o < outer; o++) {
    const int64_t base = o * n * inner;
    for (int64_t i = 0; i < inner; i += SM_BLOCK) {
      const int w = (int)(inner - i < SM_BLOCK ? inner - i : SM_BLOCK);
      const float *yb = y + base + i, *db = dy + base + i;
      float *xb = dx + base + i;
      float s[SM_BLOCK];
      for (int j = 0; j < w; j++)
        s[j] = 0.0f;
      for (int64_t k = 0; k < n; k++)
        for (int j = 0; j < w; j++)
          s[j] += log_out ? db[k * inner + j] : db[k * inner + j] * yb[k * inner + j];
      for (int64_t k = 0; k < n; k++)
        for (int j = 0; j < w; j++) {
          const int64_t q = k * inner + j;
          xb[q] = log_out ? db[q] - expf(yb[q]) * s[j] : yb[q] * (db[q] - s[j]);
        }
    }
  }
}

void ad_k_softmax_bwd(const int64_t *p, const float *y, const float *dy, float *dx) {
  softmax_bwd_any(p, y, dy, dx, 0);
}

void ad_k_logsoftmax_bwd(const int64_t *p, const float *y, const float *dy, float *dx) {
  softmax_bwd_any(p, y, dy, dx, 1);
}

/* ---- cross entropy ---- */

/* log(sum(exp(x))) of a row, computed as max + log(sum(exp(x - max))). */
static float row_logsumexp(const float *x, int64_t c, float *mx_out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < c; j++)
    mx = x[j] > mx ? x[j] : mx;
  float s = 0.0f;
  for (int64_t j = 0; j < c; j++)
    s += expf(x[j] - mx);
  *mx_out = mx;
  return mx + logf(s);
}

void ad_k_xent_fwd(const int64_t *p, const float *x, const int64_t *label, float *loss) {
  const int64_t n = p[0], c = p[1];
  const float scale = ad_k_f32(p[2]);
  /* The batch sum is accumulated in double: it adds N terms of similar size. */
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const int64_t l = label[i];
    if (l < 0 || l >= c) {
      loss[0] = NAN;
      return;
    }
    float mx;
    const float *xi = x + i * c;
    total += (double)(row_logsumexp(xi, c, &mx) - xi[l]);
  }
  loss[0] = (float)((double)scale * total);
}

void ad_k_xent_bwd(const int64_t *p, const float *x, const int64_t *label, const float *dloss,
                   float *dx) {
  const int64_t n = p[0], c = p[1];
  const float g = ad_k_f32(p[2]) * dloss[0];
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * c;
    float *di = dx + i * c;
    float mx;
    const float lse = row_logsumexp(xi, c, &mx);
    for (int64_t j = 0; j < c; j++)
      di[j] = g * expf(xi[j] - lse);
    /* An out-of-range label already made the loss NaN; here it is ignored. */
    if (label[i] >= 0 && label[i] < c)
      di[label[i]] -= g;
  }
}

/* ---- transpose ----
 * The permutation is first simplified: axes of size 1 are dropped and runs of
 * input axes that stay adjacent and in order in the output are merged. What is
 * left is either a plain copy, a (batched) 2-D transpose done in cache blocks,
 * or a general odometer walk over the output with a strided inner loop. */

#define TR_MAX_RANK 8
#define TR_TILE 32

static void transpose2d(const float *x, float *y, int64_t rows, int64_t cols) {
  /* x is [rows, cols], y is [cols, rows]. */
  for (int64_t r0 = 0; r0 < rows; r0 += TR_TILE)
    for (int64_t c0 = 0; c0 < cols; c0 += TR_TILE) {
      const int64_t r1 = r0 + TR_TILE < rows ? r0 + TR_TILE : rows;
      const int64_t c1 = c0 + TR_TILE < cols ? c0 + TR_TILE : cols;
      for (int64_t c = c0; c < c1; c++)
        for (int64_t r = r0; r < r1; r++)
          y[c * rows + r] = x[r * cols + c];
    }
}

void ad_k_transpose(const int64_t *p, const float *x, float *y) {
  const int rank = (int)p[0];
  const int64_t *dims = p + 1, *perm = p + 1 + rank;
  int64_t total = 1;
  for (int i = 0; i < rank; i++)
    total *= dims[i];
  if (total == 0)
    return;

  /* Output axes in order, as input axes, without size-1 axes. */
  int64_t ax[TR_MAX_RANK];
  int na = 0;
  for (int i = 0; i < rank; i++)
    if (dims[perm[i]] != 1)
      ax[na++] = perm[i];
  /* Merge output-adjacent axes that are input-adjacent too (a then a+1, with
   * no surviving axis between them in the input). Merged axes keep the first
   * input axis as their id and get the product size. */
  int64_t msize[TR_MAX_RANK], mid[TR_MAX_RANK];
  int nm = 0;
  for (int i = 0; i < na; i++) {
    if (nm > 0) {
      int64_t prev_last = ax[i - 1], a = ax[i];
      int adjacent = a > prev_last;
      for (int64_t b = prev_last + 1; b < a && adjacent; b++)
        if (dims[b] != 1)
          adjacent = 0;
      if (adjacent) {
        msize[nm - 1] *= dims[a];
        continue;
      }
    }
    mid[nm] = ax[i];
    msize[nm] = dims[ax[i]];
    nm++;
  }
  if (nm <= 1) {
    memcpy(y, x, (size_t)total * sizeof(float));
    return;
  }
  /* Input strides of the merged axes: order merged axes by input position. */
  int64_t istride[TR_MAX_RANK];
  for (int i = 0; i < nm; i++) {
    int64_t s = 1;
    for (int j = 0; j < nm; j++)
      if (mid[j] > mid[i])
        s *= msize[j];
    istride[i] = s;
  }
  /* Batched 2-D transpose: [B, R, C] -> [B, C, R]. */
  if ((nm == 2) || (nm == 3 && istride[0] == msize[1] * msize[2])) {
    const int o = nm - 2;
    const int64_t rows = msize[o + 1], cols = msize[o];
    if (istride[o + 1] == cols && istride[o] == 1) {
      const int64_t batch = nm == 3 ? msize[0] : 1;
      for (int64_t b = 0; b < batch; b++)
        transpose2d(x + b * rows * cols, y + b * rows * cols, rows, cols);
      return;
    }
  }
  /* General case: odometer over the output's outer axes. */
  int64_t idx[TR_MAX_RANK] = {0};
  const int64_t inner = msize[nm - 1], is = istride[nm - 1];
  const float *src = x;
  for (int64_t done = 0; done < total; done += inner) {
    for (int64_t j = 0; j < inner; j++)
      y[done + j] = src[j * is];
    for (int d = nm - 2; d >= 0; d--) {
      src += istride[d];
      if (++idx[d] < msize[d])
        break;
      src -= istride[d] * msize[d];
      idx[d] = 0;
    }
  }
}

/* ---- pad ----
 * Walks the output (fwd) or the input gradient (bwd) recursively, one axis at
 * a time, elements of esize bytes. Inside the input's range the innermost axis
 * copies its one contiguous run; a constant pad fills a slab that falls
 * entirely in the padding at once; edge and reflect padding read each outer
 * padding row from its source row (clamped or mirrored) and each inner
 * padding element from its source element. Negative pads crop. */

typedef struct pad_geom {
  int rank, mode;
  size_t es; /* element size, bytes */
  const int64_t *xdims, *pb;
  int64_t ydims[TR_MAX_RANK];
  int64_t xsz[TR_MAX_RANK + 1], ysz[TR_MAX_RANK + 1]; /* elements per slab from axis d on */
  int64_t value;                                      /* constant: its bytes, low first */
} pad_geom;

static void pad_geom_init(pad_geom *g, const int64_t *p) {
  g->es = (size_t)p[0];
  g->mode = (int)p[1];
  g->rank = (int)p[2];
  g->xdims = p + 3;
  g->pb = p + 3 + g->rank;
  const int64_t *pe = p + 3 + 2 * g->rank;
  g->value = p[3 + 3 * g->rank];
  for (int d = 0; d < g->rank; d++) {
    int64_t yd = g->xdims[d] + g->pb[d] + pe[d];
    g->ydims[d] = yd < 0 ? 0 : yd;
  }
  g->xsz[g->rank] = g->ysz[g->rank] = 1;
  for (int d = g->rank - 1; d >= 0; d--) {
    g->xsz[d] = g->xsz[d + 1] * g->xdims[d];
    g->ysz[d] = g->ysz[d + 1] * g->ydims[d];
  }
}

/* n elements of es bytes at y, each the low es bytes of v. */
static void fill_bytes(char *y, int64_t n, size_t es, int64_t v) {
  unsigned char b[8];
  memcpy(b, &v, sizeof b); /* little-endian: the low bytes first */
  int zero = 1;
  for (size_t i = 0; i < es; i++)
    zero &= b[i] == 0;
  if (zero || es == 1) {
    memset(y, b[0], (size_t)n * es);
    return;
  }
  for (int64_t i = 0; i < n; i++)
    memcpy(y + (size_t)i * es, b, es);
}

/* Valid range [lo, hi) of output indices i whose source index i - off lies in [0, n). */
static void shifted_range(int64_t off, int64_t n, int64_t out_n, int64_t *lo, int64_t *hi) {
  int64_t a = off, b = off + n;
  a = a < 0 ? 0 : (a > out_n ? out_n : a);
  b = b > out_n ? out_n : b;
  if (b < a)
    b = a;
  *lo = a;
  *hi = b;
}

/* The source index of padded index s (outside [0, n)): the nearest edge, or
 * the mirror image without repeating the edge (period 2 (n - 1), numpy's
 * 'reflect'). */
static int64_t pad_source(int mode, int64_t s, int64_t n) {
  if (mode == AD_K_PAD_EDGE || n == 1)
    return s < 0 ? 0 : (s >= n ? n - 1 : s);
  const int64_t period = 2 * (n - 1);
  int64_t m = s % period;
  m = m < 0 ? m + period : m;
  return m < n ? m : period - m;
}

static void pad_fwd_rec(const pad_geom *g, int d, const char *x, char *y) {
  int64_t lo, hi;
  const int64_t n = g->xdims[d], yd = g->ydims[d], pb = g->pb[d];
  shifted_range(pb, n, yd, &lo, &hi);
  const size_t es = g->es, ys = (size_t)g->ysz[d + 1] * es, xs = (size_t)g->xsz[d + 1] * es;
  if (g->mode == AD_K_PAD_CONSTANT) {
    fill_bytes(y, lo * g->ysz[d + 1], es, g->value);
    fill_bytes(y + (size_t)hi * ys, (yd - hi) * g->ysz[d + 1], es, g->value);
  } else {
    for (int64_t i = 0; i < yd; i++) {
      if (i >= lo && i < hi)
        continue;
      const int64_t s = pad_source(g->mode, i - pb, n);
      if (d == g->rank - 1)
        memcpy(y + (size_t)i * es, x + (size_t)s * es, es);
      else
        pad_fwd_rec(g, d + 1, x + (size_t)s * xs, y + (size_t)i * ys);
    }
  }
  if (d == g->rank - 1) {
    if (hi > lo)
      memcpy(y + (size_t)lo * es, x + (size_t)(lo - pb) * es, (size_t)(hi - lo) * es);
  } else {
    for (int64_t i = lo; i < hi; i++)
      pad_fwd_rec(g, d + 1, x + (size_t)(i - pb) * xs, y + (size_t)i * ys);
  }
}

void ad_k_pad_fwd(const int64_t *p, const void *x, void *y) {
  pad_geom g;
  pad_geom_init(&g, p);
  if (g.ysz[0] == 0)
    return;
  if (g.rank == 0) {
    memcpy(y, x, g.es);
    return;
  }
  pad_fwd_rec(&g, 0, x, y);
}

/* Constant pad: dx[i] = dy[i + pb] where that lies inside dy, else 0 (the
 * cropped part). */
static void pad_bwd_rec(const pad_geom *g, int d, const float *dy, float *dx) {
  int64_t lo, hi;
  shifted_range(-g->pb[d], g->ydims[d], g->xdims[d], &lo, &hi);
  const int64_t ys = g->ysz[d + 1], xs = g->xsz[d + 1];
  memset(dx, 0, (size_t)(lo * xs) * sizeof(float));
  if (d == g->rank - 1) {
    if (hi > lo)
      memcpy(dx + lo, dy + (lo + g->pb[d]), (size_t)(hi - lo) * sizeof(float));
  } else {
    for (int64_t i = lo; i < hi; i++)
      pad_bwd_rec(g, d + 1, dy + (i + g->pb[d]) * ys, dx + i * xs);
  }
  memset(dx + hi * xs, 0, (size_t)((g->xdims[d] - hi) * xs) * sizeof(float));
}

/* Edge and reflect pads: every dy element adds to the dx element it was read
 * from (dx zeroed first). */
static void pad_bwd_scatter_rec(const pad_geom *g, int d, const float *dy, float *dx) {
  const int64_t n = g->xdims[d], ys = g->ysz[d + 1], xs = g->xsz[d + 1];
  for (int64_t i = 0; i < g->ydims[d]; i++) {
    const int64_t s = pad_source(g->mode, i - g->pb[d], n);
    if (d == g->rank - 1)
      dx[s] += dy[i];
    else
      pad_bwd_scatter_rec(g, d + 1, dy + i * ys, dx + s * xs);
  }
}

void ad_k_pad_bwd(const int64_t *p, const float *dy, float *dx) {
  pad_geom g;
  pad_geom_init(&g, p);
  if (g.xsz[0] == 0)
    return;
  if (g.rank == 0) {
    dx[0] = dy[0];
    return;
  }
  if (g.mode == AD_K_PAD_CONSTANT) {
    pad_bwd_rec(&g, 0, dy, dx);
    return;
  }
  memset(dx, 0, (size_t)g.xsz[0] * sizeof(float));
  if (g.ysz[0] > 0)
    pad_bwd_scatter_rec(&g, 0, dy, dx);
}
