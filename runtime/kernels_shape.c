/*
 * runtime/kernels_shape.c: the data-movement kernels of runtime/kernels_shape.h.
 *
 * Elements are moved as esize bytes (1, 2, 4 or 8), so one kernel serves every
 * dtype. The strided copy is the workhorse: a view of the source under
 * arbitrary element strides copied into a view of the destination, with the
 * innermost axis turned into one memcpy when both sides are contiguous there.
 */
#include "kernels_shape.h"

#include <string.h>

static void copy_elem(void *dst, const void *src, int64_t esize) {
  switch (esize) {
  case 1:
    *(uint8_t *)dst = *(const uint8_t *)src;
    break;
  case 2:
    memcpy(dst, src, 2);
    break;
  case 4:
    memcpy(dst, src, 4);
    break;
  default:
    memcpy(dst, src, 8);
    break;
  }
}

void ad_k_copy_strided(const int64_t *p, const void *src, void *dst) {
  int64_t es = p[0];
  int r = (int)p[1];
  const int64_t *dims = p + 2, *sstr = p + 3 + r, *dstr = p + 4 + 2 * r;
  int64_t soff = p[2 + r], doff = p[3 + 2 * r];
  const char *s = src;
  char *d = dst;
  for (int i = 0; i < r; i++)
    if (dims[i] <= 0)
      return;
  if (r == 0) {
    copy_elem(d + doff * es, s + soff * es, es);
    return;
  }
  int64_t idx[AD_K_COPY_MAX_RANK] = {0};
  int64_t inner = dims[r - 1], si = sstr[r - 1], di = dstr[r - 1];
  int contiguous = si == 1 && di == 1;
  for (;;) {
    int64_t so = soff, dof = doff;
    for (int i = 0; i < r - 1; i++) {
      so += idx[i] * sstr[i];
      dof += idx[i] * dstr[i];
    }
    if (contiguous) {
      memcpy(d + dof * es, s + so * es, (size_t)(inner * es));
    } else {
      for (int64_t j = 0; j < inner; j++)
        copy_elem(d + (dof + j * di) * es, s + (so + j * si) * es, es);
    }
    int i = r - 2;
    for (; i >= 0; i--) {
      if (++idx[i] < dims[i])
        break;
      idx[i] = 0;
    }
    if (i < 0)
      return;
  }
}

void ad_k_fill(const int64_t *p, void *dst) {
  int64_t es = p[0], n = p[1];
  uint64_t v = (uint64_t)p[2];
  char *d = dst;
  unsigned char b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)(v >> (8 * i)); /* little-endian bytes of the element */
  int zero = v == 0;
  if (zero) {
    memset(d, 0, (size_t)(n * es));
    return;
  }
  for (int64_t i = 0; i < n; i++)
    memcpy(d + i * es, b, (size_t)es);
}

static int64_t index_at(const void *idx, int64_t j, int is_i32) {
  return is_i32 ? (int64_t)((const int32_t *)idx)[j] : ((const int64_t *)idx)[j];
}

void ad_k_gather_bytes(const int64_t *p, const void *x, const void *idx, void *y) {
  int64_t es = p[0], outer = p[1], n = p[2], inner = p[3], m = p[4];
  int is_i32 = (int)p[5];
  size_t row = (size_t)(inner * es);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < m; j++) {
      int64_t k = index_at(idx, j, is_i32);
      if (k < 0)
        k += n;
      char *dst = (char *)y + (size_t)(o * m + j) * row;
      if (k < 0 || k >= n)
        memset(dst, 0, row);
      else
        memcpy(dst, (const char *)x + (size_t)(o * n + k) * row, row);
    }
}

void ad_k_range(const int64_t *p, void *y) {
  int dt = (int)p[0];
  int64_t n = p[1];
  if (dt == AD_K_F32) {
    float start, delta;
    uint32_t u = (uint32_t)p[2];
    memcpy(&start, &u, 4);
    u = (uint32_t)p[3];
    memcpy(&delta, &u, 4);
    for (int64_t i = 0; i < n; i++)
      ((float *)y)[i] = start + (float)i * delta;
  } else if (dt == AD_K_I32) {
    for (int64_t i = 0; i < n; i++)
      ((int32_t *)y)[i] = (int32_t)(p[2] + i * p[3]);
  } else {
    for (int64_t i = 0; i < n; i++)
      ((int64_t *)y)[i] = p[2] + i * p[3];
  }
}

void ad_k_gather_elements(const int64_t *p, const void *x, const void *idx, void *y) {
  int64_t es = p[0];
  int r = (int)p[1], axis = (int)p[2], is_i32 = (int)p[3];
  const int64_t *id = p + 4, *xd = p + 4 + r;
  int64_t xs[AD_K_COPY_MAX_RANK], c[AD_K_COPY_MAX_RANK] = {0}, total = 1;
  int64_t s = 1;
  for (int i = r - 1; i >= 0; i--) {
    xs[i] = s;
    s *= xd[i];
    total *= id[i];
  }
  for (int64_t e = 0; e < total; e++) {
    int64_t k = index_at(idx, e, is_i32);
    if (k < 0)
      k += xd[axis];
    char *dst = (char *)y + e * es;
    if (k < 0 || k >= xd[axis]) {
      memset(dst, 0, (size_t)es);
    } else {
      int64_t off = 0;
      for (int i = 0; i < r; i++)
        off += (i == axis ? k : c[i]) * xs[i];
      copy_elem(dst, (const char *)x + off * es, es);
    }
    for (int i = r - 1; i >= 0; i--) {
      if (++c[i] < id[i])
        break;
      c[i] = 0;
    }
  }
}

void ad_k_gather_nd(const int64_t *p, const void *x, const void *idx, void *y) {
  int64_t es = p[0], B = p[1], M = p[2], k = p[3], S = p[4], xb = p[5];
  int is_i32 = (int)p[6];
  const int64_t *xd = p + 7, *xs = p + 7 + k;
  size_t slice = (size_t)(S * es);
  for (int64_t b = 0; b < B; b++)
    for (int64_t m = 0; m < M; m++) {
      int64_t off = b * xb, ok = 1;
      for (int64_t j = 0; j < k; j++) {
        int64_t t = index_at(idx, (b * M + m) * k + j, is_i32);
        if (t < 0)
          t += xd[j];
        ok &= t >= 0 && t < xd[j];
        off += t * xs[j];
      }
      char *dst = (char *)y + (size_t)(b * M + m) * slice;
      if (ok)
        memcpy(dst, (const char *)x + off * es, slice);
      else
        memset(dst, 0, slice);
    }
}

static int64_t number_at(const void *v, int64_t j, int dt) {
  switch (dt) {
  case AD_K_F32:
    return (int64_t)((const float *)v)[j];
  case AD_K_I32:
    return ((const int32_t *)v)[j];
  case AD_K_U8:
  case AD_K_BOOL:
    return ((const uint8_t *)v)[j];
  default:
    return ((const int64_t *)v)[j];
  }
}

void ad_k_onehot(const int64_t *p, const void *idx, const void *values, void *y) {
  int64_t es = p[0], outer = p[1], depth = p[2], inner = p[3];
  int dt = (int)p[4];
  const char *off = values, *on = (const char *)values + es;
  char *d = y;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      int64_t t = number_at(idx, o * inner + i, dt);
      if (t < 0)
        t += depth;
      for (int64_t k = 0; k < depth; k++)
        copy_elem(d + ((o * depth + k) * inner + i) * es, k == t ? on : off, es);
    }
}

void ad_k_trilu(const int64_t *p, const void *x, void *y) {
  int64_t es = p[0], batch = p[1], N = p[2], M = p[3], k = p[4];
  int upper = (int)p[5];
  for (int64_t b = 0; b < batch; b++)
    for (int64_t i = 0; i < N; i++)
      for (int64_t j = 0; j < M; j++) {
        int64_t e = (b * N + i) * M + j;
        int keep = upper ? j - i >= k : j - i <= k;
        if (keep)
          copy_elem((char *)y + e * es, (const char *)x + e * es, es);
        else
          memset((char *)y + e * es, 0, (size_t)es);
      }
}

void ad_k_eye(const int64_t *p, void *y) {
  int64_t es = p[0], N = p[1], M = p[2], k = p[3];
  uint64_t v = (uint64_t)p[4];
  unsigned char one[8];
  for (int i = 0; i < 8; i++)
    one[i] = (unsigned char)(v >> (8 * i));
  memset(y, 0, (size_t)(N * M * es));
  for (int64_t i = 0; i < N; i++) {
    int64_t j = i + k;
    if (j >= 0 && j < M)
      memcpy((char *)y + (i * M + j) * es, one, (size_t)es);
  }
}
