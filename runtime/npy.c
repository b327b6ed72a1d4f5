/*
 * runtime/npy.c: NumPy .npy reader and writer (format versions 1.0, 2.0, 3.0).
 *
 * The header is a Python dict literal; numpy writes it in one fixed form
 * ({'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }) but the format
 * allows any key order and spacing, so the reader parses the literal with a
 * tiny tokenizer instead of matching text. Every error names the file and what
 * is wrong, and a file whose data is shorter than its header promises is an
 * error, never a short read. Floats are converted to float32 and integers to
 * int64 on load, which is what the runtime feeds to the step function.
 * The writer produces exactly numpy's bytes (format 1.0, header padded with
 * spaces to a multiple of 64 bytes), so files round-trip with np.load/np.save.
 */
#include "npy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* Cursor over the header dict literal. */
typedef struct hdr {
  const char *path;
  const char *p, *end;
} hdr;

static void skip_ws(hdr *h) {
  while (h->p < h->end && isspace((unsigned char)*h->p))
    h->p++;
}

static int accept(hdr *h, char c) {
  skip_ws(h);
  if (h->p < h->end && *h->p == c) {
    h->p++;
    return 1;
  }
  return 0;
}

static ad_status bad_header(hdr *h, const char *what) {
  return ad_fail(AD_ERR_INPUT, "%s: error: malformed .npy header: %s", h->path, what);
}

/* A quoted Python string ('...' or "..."), without escapes (numpy never writes any). */
static ad_status parse_str(hdr *h, char *out, size_t cap) {
  skip_ws(h);
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"'))
    return bad_header(h, "expected a string");
  char q = *h->p++;
  size_t n = 0;
  while (h->p < h->end && *h->p != q) {
    if (n + 1 >= cap)
      return bad_header(h, "string too long");
    out[n++] = *h->p++;
  }
  if (h->p >= h->end)
    return bad_header(h, "unterminated string");
  h->p++;
  out[n] = 0;
  return AD_OK;
}

static ad_status parse_bool(hdr *h, int *out) {
  skip_ws(h);
  size_t left = (size_t)(h->end - h->p);
  if (left >= 4 && !memcmp(h->p, "True", 4)) {
    h->p += 4;
    *out = 1;
  } else if (left >= 5 && !memcmp(h->p, "False", 5)) {
    h->p += 5;
    *out = 0;
  } else {
    return bad_header(h, "fortran_order must be True or False");
  }
  return AD_OK;
}

/* A shape tuple: (), (n,), (n, m), ... Python's trailing comma is optional
 * except for one element, and numpy may write dims with an L suffix (Python 2). */
static ad_status parse_shape(hdr *h, int *rank, int64_t *dims) {
  if (!accept(h, '('))
    return bad_header(h, "shape must be a tuple");
  *rank = 0;
  for (;;) {
    if (accept(h, ')'))
      return AD_OK;
    skip_ws(h);
    if (h->p >= h->end || !isdigit((unsigned char)*h->p))
      return bad_header(h, "shape must hold non-negative integers");
    int64_t v = 0;
    while (h->p < h->end && isdigit((unsigned char)*h->p)) {
      if (v > (INT64_MAX - 9) / 10)
        return bad_header(h, "dimension too large");
      v = v * 10 + (*h->p++ - '0');
    }
    if (h->p < h->end && *h->p == 'L')
      h->p++;
    if (*rank >= 8)
      return ad_fail(AD_ERR_INPUT, "%s: error: arrays of rank above 8 are not supported", h->path);
    dims[(*rank)++] = v;
    if (!accept(h, ',')) {
      if (accept(h, ')'))
        return AD_OK;
      return bad_header(h, "expected ',' or ')' in shape");
    }
  }
}

/* "(2, 3)" for messages, as numpy prints shapes. */
static const char *shape_str(int rank, const int64_t *dims, char buf[256]) {
  int n = snprintf(buf, 256, "(");
  for (int i = 0; i < rank; i++)
    n += snprintf(buf + n, 256 - (size_t)n, i ? ", %lld" : "%lld", (long long)dims[i]);
  snprintf(buf + n, 256 - (size_t)n, rank == 1 ? ",)" : ")");
  return buf;
}

/* The .npy descriptors autodist reads and writes, by dtype name. bfloat16,
 * which numpy lacks, is written as its bits ('<u2'); ad_npy_fit reads a uint16
 * file as bfloat16 for a bfloat16 input. */
static const struct {
  const char *descr, *dtype;
  size_t size;
} descrs[] = {
    {"<f4", "float32", 4},  {"<f8", "float64", 8}, {"<f2", "float16", 2}, {"<i8", "int64", 8},
    {"<i4", "int32", 4},    {"<i2", "int16", 2},   {"|i1", "int8", 1},    {"|u1", "uint8", 1},
    {"<u2", "uint16", 2},   {"<u4", "uint32", 4},  {"<u8", "uint64", 8},  {"|b1", "bool", 1},
    {"<u2", "bfloat16", 2},
};

ad_status ad_npy_load_buffer(const char *path, const void *buf, size_t len, ad_npy *out) {
  const unsigned char *b = buf;
  memset(out, 0, sizeof *out);
  if (len < 10 || memcmp(b, magic, 6))
    return ad_fail(AD_ERR_INPUT, "%s: error: not a .npy file (bad magic)", path);
  int major = b[6];
  size_t hlen, hoff;
  if (major == 1) {
    hlen = (size_t)b[8] | (size_t)b[9] << 8;
    hoff = 10;
  } else if (major == 2 || major == 3) {
    if (len < 12)
      return ad_fail(AD_ERR_INPUT, "%s: error: truncated .npy header", path);
    hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    hoff = 12;
  } else {
    return ad_fail(AD_ERR_INPUT, "%s: error: unsupported .npy format version %d.%d", path, major,
                   b[7]);
  }
  if (hlen > len - hoff)
    return ad_fail(AD_ERR_INPUT, "%s: error: truncated .npy header", path);

  hdr h = {path, (const char *)b + hoff, (const char *)b + hoff + hlen};
  char descr[32] = "";
  int fortran = 0, have_descr = 0, have_fortran = 0, have_shape = 0;
  if (!accept(&h, '{'))
    return bad_header(&h, "expected '{'");
  while (!accept(&h, '}')) {
    char key[32];
    AD_TRY(parse_str(&h, key, sizeof key));
    if (!accept(&h, ':'))
      return bad_header(&h, "expected ':'");
    if (!strcmp(key, "descr")) {
      AD_TRY(parse_str(&h, descr, sizeof descr));
      have_descr = 1;
    } else if (!strcmp(key, "fortran_order")) {
      AD_TRY(parse_bool(&h, &fortran));
      have_fortran = 1;
    } else if (!strcmp(key, "shape")) {
      AD_TRY(parse_shape(&h, &out->rank, out->dims));
      have_shape = 1;
    } else {
      return ad_fail(AD_ERR_INPUT, "%s: error: malformed .npy header: unknown key '%s'", path, key);
    }
    if (!accept(&h, ',')) {
      if (accept(&h, '}'))
        break;
      return bad_header(&h, "expected ',' or '}'");
    }
  }
  if (!have_descr || !have_fortran || !have_shape)
    return bad_header(&h, "missing 'descr', 'fortran_order' or 'shape'");

  int which = -1;
  for (size_t i = 0; i < sizeof descrs / sizeof *descrs && which < 0; i++)
    if (!strcmp(descr, descrs[i].descr))
      which = (int)i;
  if (which < 0) {
    if (descr[0] == '>' && descr[1])
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: big-endian dtype '%s' is not supported (save it little-endian)",
                     path, descr);
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: dtype '%s' is not supported (float16/32/64, int8/16/32/64, "
                   "uint8/16/32/64, bool)",
                   path, descr);
  }
  if (fortran)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: Fortran-ordered arrays are not supported (save a C-ordered copy)",
                   path);

  int64_t numel = 1;
  for (int i = 0; i < out->rank; i++) {
    if (out->dims[i] && numel > INT64_MAX / 16 / out->dims[i])
      return ad_fail(AD_ERR_INPUT, "%s: error: array too large", path);
    numel *= out->dims[i];
  }
  size_t need = (size_t)numel * descrs[which].size, have = len - hoff - hlen;
  char sbuf[256];
  if (have < need)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: truncated data: shape %s needs %zu bytes, file has %zu", path,
                   shape_str(out->rank, out->dims, sbuf), need, have);

  const unsigned char *src = b + hoff + hlen;
  size_t bytes = (size_t)numel * descrs[which].size;
  void *data = ad_xmalloc(bytes ? bytes : 1);
  /* numpy's data offset is 64-byte aligned, other writers' need not be */
  memcpy(data, src, bytes);
  if (!strcmp(descrs[which].dtype, "bool"))
    for (size_t i = 0; i < bytes; i++)
      ((uint8_t *)data)[i] = ((uint8_t *)data)[i] != 0;
  snprintf(out->dtype, sizeof out->dtype, "%s", descrs[which].dtype);
  out->numel = numel;
  out->data = data;
  return AD_OK;
}

ad_status ad_npy_load(const char *path, ad_npy *out) {
  char *buf;
  size_t len;
  memset(out, 0, sizeof *out);
  AD_TRY(ad_file_read(path, &buf, &len));
  ad_status st = ad_npy_load_buffer(path, buf, len, out);
  free(buf);
  return st;
}

size_t ad_npy_header(char *buf, size_t cap, const char *dtype, int rank, const int64_t *dims,
                     size_t *elem_size) {
  const char *descr = NULL;
  size_t esize = 0;
  for (size_t i = 0; i < sizeof descrs / sizeof *descrs && !descr; i++)
    if (!strcmp(dtype, descrs[i].dtype)) {
      descr = descrs[i].descr;
      esize = descrs[i].size;
    }
  if (!descr)
    return 0;
  AD_ASSERT(rank >= 0 && rank <= 8);
  char dict[512];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  for (int i = 0; i < rank; i++) {
    AD_ASSERT(dims[i] >= 0);
    n += snprintf(dict + n, sizeof dict - (size_t)n, i ? ", %lld" : "%lld", (long long)dims[i]);
  }
  n += snprintf(dict + n, sizeof dict - (size_t)n, rank == 1 ? ",), }" : "), }");
  /* numpy pads with spaces so that magic + version + length + header (ending
   * in '\n') is a multiple of 64 bytes. */
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)n + pad + 1;
  AD_ASSERT(10 + hlen <= cap);
  memcpy(buf, magic, 6);
  buf[6] = 1;
  buf[7] = 0;
  buf[8] = (char)(hlen & 0xff);
  buf[9] = (char)(hlen >> 8);
  memcpy(buf + 10, dict, (size_t)n);
  memset(buf + 10 + n, ' ', pad);
  buf[10 + hlen - 1] = '\n';
  if (elem_size)
    *elem_size = esize;
  return 10 + hlen;
}

ad_status ad_npy_save(const char *path, const char *dtype, int rank, const int64_t *dims,
                      const void *data) {
  char head[AD_NPY_HEADER_MAX];
  size_t esize = 0, hlen = ad_npy_header(head, sizeof head, dtype, rank, dims, &esize);
  if (!hlen)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot save dtype '%s' as .npy", path, dtype);
  int64_t numel = 1;
  for (int i = 0; i < rank; i++)
    numel *= dims[i];
  size_t bytes = (size_t)numel * esize;
  char *buf = ad_xmalloc(hlen + bytes);
  memcpy(buf, head, hlen);
  if (bytes)
    memcpy(buf + hlen, data, bytes);
  ad_status st = ad_file_write(path, buf, hlen + bytes);
  free(buf);
  return st;
}

static void retype(ad_npy *a, const char *dtype, size_t size) {
  void *d = ad_xmalloc((size_t)(a->numel ? a->numel : 1) * size);
  for (int64_t i = 0; i < a->numel; i++)
    if (!strcmp(dtype, "float32"))
      ((float *)d)[i] = (float)((const double *)a->data)[i];
    else if (!strcmp(dtype, "int64"))
      ((int64_t *)d)[i] = ((const int32_t *)a->data)[i];
    else
      ((int32_t *)d)[i] = (int32_t)((const int64_t *)a->data)[i];
  free(a->data);
  a->data = d;
  snprintf(a->dtype, sizeof a->dtype, "%s", dtype);
}

ad_status ad_npy_fit(const char *path, ad_npy *a, const char *dtype) {
  if (!strcmp(a->dtype, dtype))
    return AD_OK;
  if (!strcmp(dtype, "float32") && !strcmp(a->dtype, "float64")) {
    retype(a, dtype, 4);
  } else if (!strcmp(dtype, "int64") && !strcmp(a->dtype, "int32")) {
    retype(a, dtype, 8);
  } else if (!strcmp(dtype, "int32") && !strcmp(a->dtype, "int64")) {
    const int64_t *src = a->data;
    for (int64_t i = 0; i < a->numel; i++)
      if (src[i] < INT32_MIN || src[i] > INT32_MAX)
        return ad_fail(AD_ERR_INPUT, "%s: error: element %lld (%lld) does not fit the int32 input",
                       path, (long long)i, (long long)src[i]);
    retype(a, dtype, 4);
  } else if (!strcmp(dtype, "bfloat16") && !strcmp(a->dtype, "uint16")) {
    snprintf(a->dtype, sizeof a->dtype, "bfloat16");
  }
  return AD_OK;
}

void ad_npy_free(ad_npy *a) {
  free(a->data);
  a->data = NULL;
}
