/*
 * runtime/kernels_random.c: random masks for Dropout (compiler/ops/random.c).
 *
 * ONNX's reference draws Dropout's mask with numpy's legacy generator:
 *     np.random.seed(seed); mask = np.random.uniform(0, 1, x.shape) >= ratio
 * so this file implements the same generator, written from its definition:
 * MT19937 (Matsumoto and Nishimura, 1998) seeded the way numpy's RandomState
 * seeds it from an integer in [0, 2^32) (the 1998 reference's init_genrand:
 * a linear recurrence over the 624 state words), and numpy's double in [0, 1)
 * made of two 32-bit outputs a, b: ((a >> 5) * 2^26 + (b >> 6)) / 2^53.
 * uniform(0, 1) is that double unchanged. Elements are drawn in C order, so an
 * inference (and the first training step on worker 0) matches numpy exactly.
 *
 * Training draws a fresh mask each step and on each worker: the stream of
 * (0-based step s, worker rank r) is seeded with `seed` itself for s = 0,
 * r = 0, and otherwise with ad_k_dropout_key(seed, s, r), a 32-bit mix of the
 * three (splitmix64's finalizer applied three times; documented in kernels.h
 * and reproduced by tests/ref/test_dropout.py).
 */
#include "comm.h"
#include "kernels.h"

#include <math.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

typedef struct {
  uint32_t s[MT_N];
} mt19937;

static void mt_seed(mt19937 *mt, uint32_t seed) {
  mt->s[0] = seed;
  for (uint32_t i = 1; i < MT_N; i++)
    mt->s[i] = 1812433253u * (mt->s[i - 1] ^ (mt->s[i - 1] >> 30)) + i;
}

/* The state's next 624 words: each from the top bit of one word, the low 31
 * of the next, and the word 397 ahead (the recurrence's twist), in three runs
 * so that no index wraps inside a loop. */
static uint32_t mt_mix(uint32_t hi, uint32_t lo, uint32_t far) {
  uint32_t y = (hi & 0x80000000u) | (lo & 0x7fffffffu);
  return far ^ (y >> 1) ^ (0x9908b0dfu & (0u - (y & 1u)));
}

static void mt_twist(mt19937 *mt) {
  uint32_t *s = mt->s;
  int i = 0;
  for (; i < MT_N - MT_M; i++)
    s[i] = mt_mix(s[i], s[i + 1], s[i + MT_M]);
  for (; i < MT_N - 1; i++)
    s[i] = mt_mix(s[i], s[i + 1], s[i + MT_M - MT_N]);
  s[MT_N - 1] = mt_mix(s[MT_N - 1], s[0], s[MT_M - 1]);
}

/* The tempered outputs of one twist, all 624 at once (a loop that vectorizes). */
static void mt_block(mt19937 *mt, uint32_t *out) {
  mt_twist(mt);
  for (int i = 0; i < MT_N; i++) {
    uint32_t y = mt->s[i];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    out[i] = y;
  }
}

/* numpy's random_sample takes 27 bits of one output and 26 of the next:
 * u = k / 2^53 with k = (a >> 5) * 2^26 + (b >> 6). As ratio * 2^53 is exact,
 * u >= ratio is k >= ceil(ratio * 2^53), compared in integers. Each element
 * takes two outputs, so a block of 624 decides 312 elements. */
#define MT_PAIRS (MT_N / 2)
static void keep_block(const uint32_t *out, uint64_t thresh, int n, uint8_t *keep) {
  for (int j = 0; j < n; j++) {
    uint64_t k = ((uint64_t)(out[2 * j] >> 5) << 26) + (out[2 * j + 1] >> 6);
    keep[j] = k >= thresh;
  }
}

static uint64_t fmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint32_t ad_k_dropout_key(uint32_t seed, int64_t step, int64_t rank) {
  if (step == 0 && rank == 0)
    return seed;
  uint64_t h = fmix64((uint64_t)seed ^ 0x9e3779b97f4a7c15ull);
  h = fmix64(h ^ (uint64_t)step);
  h = fmix64(h ^ (uint64_t)rank);
  return (uint32_t)(h >> 32);
}

/* Writes `count` copies of the `size`-byte little-endian pattern `one`. */
static void fill_ones(uint8_t *dst, int64_t count, int64_t size, int64_t one) {
  uint8_t pat[8];
  for (int k = 0; k < 8; k++)
    pat[k] = (uint8_t)((uint64_t)one >> (8 * k));
  if (size == 1) {
    memset(dst, pat[0], (size_t)count);
    return;
  }
  for (int64_t i = 0; i < count; i++)
    memcpy(dst + i * size, pat, (size_t)size);
}

void ad_k_dropout(const int64_t *p, const void *x, void *y, void *mask, const int64_t *step,
                  void *rt) {
  int64_t n = p[0], esize = p[1], kind = p[2], random = p[6], msize = p[7], one = p[8];
  if (!random) {
    if (y != x)
      memcpy(y, x, (size_t)(n * esize));
    if (mask)
      fill_ones(mask, n, msize, one);
    return;
  }
  double ratio, scale;
  memcpy(&ratio, &p[4], sizeof ratio);
  memcpy(&scale, &p[5], sizeof scale);
  int64_t s = *step > 0 ? *step - 1 : 0; /* ad_step's steps are 1-based; inference is 0 */
  int64_t r = rt ? ad_comm_rank(rt) : 0;
  mt19937 mt;
  mt_seed(&mt, ad_k_dropout_key((uint32_t)p[3], s, r));
  uint64_t thresh = (uint64_t)ceil(ratio * 9007199254740992.0);
  uint32_t out[MT_N];
  uint8_t keep[MT_PAIRS];
  for (int64_t i0 = 0; i0 < n; i0 += MT_PAIRS) {
    int c = n - i0 < MT_PAIRS ? (int)(n - i0) : MT_PAIRS;
    mt_block(&mt, out);
    keep_block(out, thresh, c, keep);
    if (mask)
      memcpy((uint8_t *)mask + i0, keep, (size_t)c);
    if (kind == AD_K_DROPOUT_F64) {
      const double *xd = (const double *)x + i0;
      double *yd = (double *)y + i0;
      for (int j = 0; j < c; j++)
        yd[j] = (keep[j] ? 1.0 : 0.0) * xd[j] * scale;
    } else if (kind == AD_K_DROPOUT_F16) {
      /* numpy's float16 product: the float32 product of the halves (exact), rounded once. */
      const _Float16 *xh = (const _Float16 *)x + i0;
      _Float16 *yh = (_Float16 *)y + i0;
      float sh = (float)(_Float16)scale;
      for (int j = 0; j < c; j++)
        yh[j] = (_Float16)((keep[j] ? 1.0f : 0.0f) * (float)xh[j] * sh);
    } else {
      const float *xf = (const float *)x + i0;
      float *yf = (float *)y + i0, sf = (float)scale;
      for (int j = 0; j < c; j++)
        yf[j] = (keep[j] ? 1.0f : 0.0f) * xf[j] * sf;
    }
  }
}
