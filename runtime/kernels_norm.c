/*
 * runtime/kernels_norm.c: normalization kernels (BatchNormalization,
 * LayerNormalization, InstanceNormalization, MeanVarianceNormalization, LRN),
 * forward and the backward passes that training needs.
 *
 * Design: statistics are accumulated in double, as PyTorch's CPU kernels do
 * for float tensors (its accumulation type), and the normalized value is
 * formed as (x - mean) * invstd * scale + bias in float, PyTorch's order.
 * Gradient kernels take the forward input and recompute the statistics rather
 * than keeping them from the forward pass: one extra read of x, no extra
 * buffers in the IR. Batch normalization views its input as [N, C, S]
 * (S = spatial cells), layer normalization as [outer, inner] rows.
 */
#include "kernels.h"
#include "kernels_axes.h"

#include <math.h>
#include <stddef.h>

/* Mean and biased variance of channel c of x viewed as [n, C, s]. */
static void channel_stats(const float *x, int64_t n, int64_t C, int64_t s, int64_t c, double *mean,
                          double *var) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + (i * C + c) * s;
    for (int64_t k = 0; k < s; k++)
      sum += r[k];
  }
  double m = sum / (double)(n * s), sq = 0;
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + (i * C + c) * s;
    for (int64_t k = 0; k < s; k++) {
      double d = r[k] - m;
      sq += d * d;
    }
  }
  *mean = m;
  *var = sq / (double)(n * s);
}

static void bn_apply(const float *x, float *y, int64_t n, int64_t C, int64_t s, int64_t c,
                     float mean, float invstd, float w, float b) {
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + (i * C + c) * s;
    float *o = y + (i * C + c) * s;
    for (int64_t k = 0; k < s; k++)
      o[k] = (r[k] - mean) * invstd * w + b;
  }
}

void ad_k_bn_infer(const int64_t *p, const float *x, const float *scale, const float *bias,
                   const float *mean, const float *var, float *y) {
  int64_t n = p[0], C = p[1], s = p[2];
  float eps = ad_k_f32(p[3]);
  for (int64_t c = 0; c < C; c++) {
    float invstd = (float)(1.0 / sqrt((double)var[c] + (double)eps));
    bn_apply(x, y, n, C, s, c, mean[c], invstd, scale[c], bias[c]);
  }
}

void ad_k_bn_train_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                       const float *mean_in, const float *var_in, float *y, float *mean_out,
                       float *var_out, float *saved_mean, float *saved_var) {
  int64_t n = p[0], C = p[1], s = p[2], unbiased = p[5];
  double eps = ad_k_f32(p[3]), mom = ad_k_f32(p[4]);
  int64_t m = n * s;
  for (int64_t c = 0; c < C; c++) {
    double mean, var;
    channel_stats(x, n, C, s, c, &mean, &var);
    float invstd = (float)(1.0 / sqrt(var + eps));
    bn_apply(x, y, n, C, s, c, (float)mean, invstd, scale[c], bias[c]);
    double run_var = unbiased && m > 1 ? var * (double)m / (double)(m - 1) : var;
    if (saved_mean)
      saved_mean[c] = (float)mean;
    if (saved_var)
      saved_var[c] = (float)var;
    if (mean_out && mean_in)
      mean_out[c] = (float)((double)mean_in[c] * mom + mean * (1.0 - mom));
    if (var_out && var_in)
      var_out[c] = (float)((double)var_in[c] * mom + run_var * (1.0 - mom));
  }
}

void ad_k_bn_bwd(const int64_t *p, const float *x, const float *scale, const float *mean_in,
                 const float *var_in, const float *dy, float *dx, float *dscale, float *dbias) {
  int64_t n = p[0], C = p[1], s = p[2], batch_stats = p[4];
  double eps = ad_k_f32(p[3]);
  double m = (double)(n * s);
  for (int64_t c = 0; c < C; c++) {
    double mean, var;
    if (batch_stats) {
      channel_stats(x, n, C, s, c, &mean, &var);
    } else {
      mean = mean_in[c];
      var = var_in[c];
    }
    double invstd = 1.0 / sqrt(var + eps);
    double sdy = 0, sdyx = 0;
    for (int64_t i = 0; i < n; i++) {
      const float *r = x + (i * C + c) * s, *g = dy + (i * C + c) * s;
      for (int64_t k = 0; k < s; k++) {
        sdy += g[k];
        sdyx += (double)g[k] * ((double)r[k] - mean);
      }
    }
    if (dscale)
      dscale[c] = (float)(sdyx * invstd);
    if (dbias)
      dbias[c] = (float)sdy;
    if (!dx)
      continue;
    double w = scale[c];
    for (int64_t i = 0; i < n; i++) {
      const float *r = x + (i * C + c) * s, *g = dy + (i * C + c) * s;
      float *o = dx + (i * C + c) * s;
      for (int64_t k = 0; k < s; k++) {
        if (batch_stats) {
          double xm = (double)r[k] - mean;
          o[k] = (float)(w * invstd * (g[k] - sdy / m - xm * invstd * invstd * sdyx / m));
        } else {
          o[k] = (float)(g[k] * w * invstd);
        }
      }
    }
  }
}

/* Mean and biased variance of one row of n floats. */
static void row_stats(const float *r, int64_t n, double *mean, double *var) {
  double sum = 0, sq = 0;
  for (int64_t k = 0; k < n; k++)
    sum += r[k];
  double m = sum / (double)n;
  for (int64_t k = 0; k < n; k++) {
    double d = r[k] - m;
    sq += d * d;
  }
  *mean = m;
  *var = sq / (double)n;
}

void ad_k_layernorm_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                        float *y, float *mean_out, float *invstd_out) {
  int64_t outer = p[0], n = p[1];
  double eps = ad_k_f32(p[2]);
  for (int64_t o = 0; o < outer; o++) {
    const float *r = x + o * n;
    float *yr = y + o * n;
    double mean, var;
    row_stats(r, n, &mean, &var);
    float fm = (float)mean, inv = (float)(1.0 / sqrt(var + eps));
    for (int64_t k = 0; k < n; k++)
      yr[k] = (r[k] - fm) * inv * scale[k] + (bias ? bias[k] : 0.0f);
    if (mean_out)
      mean_out[o] = fm;
    if (invstd_out)
      invstd_out[o] = inv;
  }
}

void ad_k_layernorm_bwd(const int64_t *p, const float *x, const float *scale, const float *dy,
                        float *dx, float *dscale, float *dbias) {
  int64_t outer = p[0], n = p[1];
  double eps = ad_k_f32(p[2]);
  if (dscale)
    memset(dscale, 0, sizeof(float) * (size_t)n);
  if (dbias)
    memset(dbias, 0, sizeof(float) * (size_t)n);
  for (int64_t o = 0; o < outer; o++) {
    const float *r = x + o * n, *g = dy + o * n;
    double mean, var;
    row_stats(r, n, &mean, &var);
    double inv = 1.0 / sqrt(var + eps), sg = 0, sgx = 0;
    for (int64_t k = 0; k < n; k++) {
      double xh = ((double)r[k] - mean) * inv, gw = (double)g[k] * scale[k];
      sg += gw;
      sgx += gw * xh;
      if (dscale)
        dscale[k] += (float)(g[k] * xh);
      if (dbias)
        dbias[k] += g[k];
    }
    if (!dx)
      continue;
    for (int64_t k = 0; k < n; k++) {
      double xh = ((double)r[k] - mean) * inv, gw = (double)g[k] * scale[k];
      dx[o * n + k] = (float)(inv * (gw - sg / (double)n - xh * sgx / (double)n));
    }
  }
}

void ad_k_instnorm_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                       float *y) {
  int64_t n = p[0], C = p[1], s = p[2];
  double eps = ad_k_f32(p[3]);
  for (int64_t i = 0; i < n; i++)
    for (int64_t c = 0; c < C; c++) {
      const float *r = x + (i * C + c) * s;
      float *o = y + (i * C + c) * s;
      double mean, var;
      row_stats(r, s, &mean, &var);
      float fm = (float)mean, inv = (float)(1.0 / sqrt(var + eps));
      for (int64_t k = 0; k < s; k++)
        o[k] = (r[k] - fm) * inv * scale[c] + bias[c];
    }
}

/* MeanVarianceNormalization over the masked axes: y = (x - mean) / (sqrt(var) + eps)
 * with mean and var over the masked axes (ONNX's function body; eps = 1e-9).
 * p = {rank, dims[rank]..., mask[rank]..., eps_bits}; ws: 2 * (kept elements) doubles. */
void ad_k_mvn_fwd(const int64_t *p, const float *x, float *y, double *ws) {
  int r = (int)p[0];
  const int64_t *dims = p + 1, *mask = p + 1 + r;
  double eps = ad_k_f32(p[1 + 2 * r]);
  int64_t stride[16], ny, nx;
  ad_k_axes_layout(r, dims, mask, stride, &ny, &nx);
  double *sum = ws, *sq = ws + ny, cnt = (double)(nx / (ny ? ny : 1));
  for (int pass = 0; pass < 3; pass++) {
    if (pass == 0)
      for (int64_t i = 0; i < 2 * ny; i++)
        ws[i] = 0;
    int64_t pos[16] = {0}, off = 0;
    for (int64_t e = 0; e < nx; e++) {
      if (pass == 0)
        sum[off] += x[e];
      else if (pass == 1)
        sq[off] += ((double)x[e] - sum[off]) * ((double)x[e] - sum[off]);
      else
        y[e] = (float)(((double)x[e] - sum[off]) / (sqrt(sq[off]) + eps));
      ad_k_axes_next(r, dims, stride, pos, &off);
    }
    if (pass == 0)
      for (int64_t i = 0; i < ny; i++)
        sum[i] /= cnt;
    if (pass == 1)
      for (int64_t i = 0; i < ny; i++)
        sq[i] /= cnt;
  }
}

/* LRN across channels of x viewed as [N, C, S]:
 * y = x / (bias + alpha / size * sum of x^2 over channels [c - (size-1)/2, c +
 * ceil((size-1)/2)])^beta p = {N, C, S, size, alpha_bits, beta_bits, bias_bits}. */
void ad_k_lrn_fwd(const int64_t *p, const float *x, float *y) {
  int64_t n = p[0], C = p[1], s = p[2], size = p[3];
  double alpha = ad_k_f32(p[4]), beta = ad_k_f32(p[5]), bias = ad_k_f32(p[6]);
  int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  for (int64_t i = 0; i < n; i++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t k = 0; k < s; k++) {
        double sq = 0;
        for (int64_t j = c - lo; j <= c + hi; j++)
          if (j >= 0 && j < C) {
            double v = x[(i * C + j) * s + k];
            sq += v * v;
          }
        double v = x[(i * C + c) * s + k];
        y[(i * C + c) * s + k] = (float)(v / pow(bias + alpha / (double)size * sq, beta));
      }
}

/* ---- synchronized batch normalization (several replicas) ----
 * The generated code all-reduces the per-channel sums these kernels write
 * between the calls, so that every replica normalizes with the statistics of
 * the global batch of `count` = N * S * replicas values per channel. */

void ad_k_bn_channel_sums(const int64_t *p, const float *x, const float *sum, float *out) {
  int64_t n = p[0], C = p[1], s = p[2], centered = p[3];
  double count = (double)p[4];
  for (int64_t c = 0; c < C; c++) {
    double mean = centered ? sum[c] / count : 0, acc = 0;
    for (int64_t i = 0; i < n; i++) {
      const float *r = x + (i * C + c) * s;
      for (int64_t k = 0; k < s; k++) {
        double d = r[k] - mean;
        acc += centered ? d * d : d;
      }
    }
    out[c] = (float)acc;
  }
}

void ad_k_bn_sync_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                      const float *sum, const float *sq, float *y, float *mean_run, float *var_run,
                      float *saved_mean, float *saved_var) {
  int64_t n = p[0], C = p[1], s = p[2];
  double eps = ad_k_f32(p[3]), mom = ad_k_f32(p[4]), count = (double)p[5];
  for (int64_t c = 0; c < C; c++) {
    double mean = sum[c] / count, var = sq[c] / count;
    bn_apply(x, y, n, C, s, c, (float)mean, (float)(1.0 / sqrt(var + eps)), scale[c], bias[c]);
    double unbiased = count > 1 ? sq[c] / (count - 1) : var;
    if (saved_mean)
      saved_mean[c] = (float)mean;
    if (saved_var)
      saved_var[c] = (float)var;
    mean_run[c] = (float)((double)mean_run[c] * mom + mean * (1.0 - mom));
    var_run[c] = (float)((double)var_run[c] * mom + unbiased * (1.0 - mom));
  }
}

void ad_k_bn_sync_bwd_sums(const int64_t *p, const float *x, const float *sum, const float *sq,
                           const float *dy, float *g, float *dscale, float *dbias) {
  int64_t n = p[0], C = p[1], s = p[2];
  double eps = ad_k_f32(p[3]), count = (double)p[4];
  for (int64_t c = 0; c < C; c++) {
    double mean = sum[c] / count, invstd = 1.0 / sqrt(sq[c] / count + eps), sdy = 0, sdyx = 0;
    for (int64_t i = 0; i < n; i++) {
      const float *r = x + (i * C + c) * s, *d = dy + (i * C + c) * s;
      for (int64_t k = 0; k < s; k++) {
        sdy += d[k];
        sdyx += (double)d[k] * ((double)r[k] - mean);
      }
    }
    g[c] = (float)sdy;
    g[C + c] = (float)sdyx;
    dscale[c] = (float)(sdyx * invstd);
    dbias[c] = (float)sdy;
  }
}

void ad_k_bn_sync_bwd(const int64_t *p, const float *x, const float *scale, const float *sum,
                      const float *sq, const float *g, const float *dy, float *dx) {
  int64_t n = p[0], C = p[1], s = p[2];
  double eps = ad_k_f32(p[3]), count = (double)p[4];
  for (int64_t c = 0; c < C; c++) {
    double mean = sum[c] / count, invstd = 1.0 / sqrt(sq[c] / count + eps), w = scale[c];
    double sdy = g[c], sdyx = g[C + c];
    for (int64_t i = 0; i < n; i++) {
      const float *r = x + (i * C + c) * s, *d = dy + (i * C + c) * s;
      float *o = dx + (i * C + c) * s;
      for (int64_t k = 0; k < s; k++) {
        double xm = (double)r[k] - mean;
        o[k] = (float)(w * invstd * (d[k] - sdy / count - xm * invstd * invstd * sdyx / count));
      }
    }
  }
}
