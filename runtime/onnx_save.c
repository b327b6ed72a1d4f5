/*
 * runtime/onnx_save.c: `run --save OUT.onnx` without an ONNX parser.
 *
 * The plan keeps the model with its trained initializers removed
 * (ad_onnx_strip_initializers). Saving copies those bytes and appends one more
 * ModelProto field 7 (`graph`) whose GraphProto holds only field 5
 * (`initializer`) entries. A protobuf parser merges a singular message field
 * that occurs twice, concatenating its repeated fields, so every reader sees
 * one graph with all initializers. Each TensorProto carries dims (field 1,
 * one unpacked varint each, which every proto2 reader accepts), data_type
 * (field 2, 1 = FLOAT), name (field 8) and raw_data (field 9, little-endian
 * float32). Sizes are computed first so that every length prefix is exact.
 */
#include "onnx_save.h"

#include <stdlib.h>
#include <string.h>

/* raw_data is little-endian: the float bytes are copied as the host holds them. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "raw_data needs a little-endian host");

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

typedef struct buf {
  unsigned char *p;
  size_t len, cap;
} buf;

static void put(buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    while (b->len + n > b->cap)
      b->cap = b->cap ? 2 * b->cap : 4096;
    b->p = ad_xrealloc(b->p, b->cap);
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static void put_varint(buf *b, uint64_t v) {
  unsigned char tmp[10];
  size_t n = 0;
  while (v >= 0x80) {
    tmp[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  tmp[n++] = (unsigned char)v;
  put(b, tmp, n);
}

static void put_tag(buf *b, int field, int wire) {
  put_varint(b, (uint64_t)field << 3 | wire);
}

static int64_t numel(const ad_named_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->rank; i++)
    n *= t->dims[i];
  return n;
}

/* Bytes of one TensorProto's body (without its own tag and length). */
static size_t tensor_size(const ad_named_tensor *t) {
  size_t n = 0;
  for (int i = 0; i < t->rank; i++)
    n += 1 + varint_size((uint64_t)t->dims[i]);
  n += 1 + 1; /* data_type = 1 */
  size_t name = strlen(t->name);
  n += 1 + varint_size(name) + name;
  size_t raw = (size_t)numel(t) * 4;
  n += 1 + varint_size(raw) + raw;
  return n;
}

static void put_tensor(buf *b, const ad_named_tensor *t) {
  for (int i = 0; i < t->rank; i++) {
    put_tag(b, 1, WIRE_VARINT);
    put_varint(b, (uint64_t)t->dims[i]);
  }
  put_tag(b, 2, WIRE_VARINT);
  put_varint(b, 1);
  size_t name = strlen(t->name);
  put_tag(b, 8, WIRE_LEN);
  put_varint(b, name);
  put(b, t->name, name);
  size_t raw = (size_t)numel(t) * 4;
  put_tag(b, 9, WIRE_LEN);
  put_varint(b, raw);
  if (raw)
    put(b, t->data, raw);
}

ad_status ad_onnx_save(const char *base_model_path, const char *out_path, int n,
                       const ad_named_tensor *tensors) {
  char *base;
  size_t base_len;
  AD_TRY(ad_file_read(base_model_path, &base, &base_len));
  buf b = {0};
  put(&b, base, base_len);
  free(base);
  if (n > 0) {
    size_t graph = 0;
    for (int i = 0; i < n; i++) {
      AD_ASSERT(tensors[i].rank >= 0 && tensors[i].name);
      for (int d = 0; d < tensors[i].rank; d++)
        AD_ASSERT(tensors[i].dims[d] >= 0);
      size_t t = tensor_size(&tensors[i]);
      graph += 1 + varint_size(t) + t;
    }
    put_tag(&b, 7, WIRE_LEN);
    put_varint(&b, graph);
    size_t start = b.len;
    for (int i = 0; i < n; i++) {
      put_tag(&b, 5, WIRE_LEN);
      put_varint(&b, tensor_size(&tensors[i]));
      put_tensor(&b, &tensors[i]);
    }
    AD_ASSERT(b.len - start == graph);
  }
  ad_status st = ad_file_write(out_path, b.p, b.len);
  free(b.p);
  return st;
}
