/*
 * tests/unit/test_ops_shape.c: shape inference and attribute validation of the
 * shape, linear, conv and softmax op families (compiler/ops/{shape,linear,
 * conv,softmax}.c), one node at a time through ad_node_add.
 *
 * Expected output shapes are those of onnx.shape_inference.infer_shapes
 * (onnx 1.12) and onnxruntime 1.31 on the same single-node models; expected
 * errors are the exact messages users see.
 */
#include "compiler/ir.h"
#include "compiler/op.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                                        \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static ad_graph *graph(int opset) {
  ad_graph *g = ad_graph_create("test.onnx");
  g->opset = opset;
  return g;
}

/* A float32 input of the given shape; dims end with -1 (so rank 0 is {-1}). */
static ad_value *input(ad_graph *g, const char *name, const int64_t *dims) {
  int r = 0;
  while (dims[r] >= 0)
    r++;
  return ad_value_new(g, name, AD_F32, r, dims, AD_VAL_INPUT);
}
#define IN(g, name, ...) input(g, name, (const int64_t[]){__VA_ARGS__, -1})
#define SCALAR(g, name) input(g, name, (const int64_t[]){-1})

static ad_value *ints(ad_graph *g, const char *name, int n, const int64_t *v) {
  int64_t len = n;
  ad_value *c = ad_value_new(g, name, AD_I64, 1, &len, AD_VAL_CONST);
  c->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(n ? n : 1));
  memcpy(c->data, v, sizeof(int64_t) * (size_t)n);
  return c;
}
#define INTS(g, name, ...)                                                                         \
  ints(g, name, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),                         \
       (const int64_t[]){__VA_ARGS__})

static ad_attr attr_s(const char *name, const char *s) {
  return (ad_attr){.name = name, .type = AD_ATTR_STRING, .s = s};
}
#define ATTR_INTS(name, ...)                                                                       \
  ad_attr_is(name, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),                      \
             (const int64_t[]){__VA_ARGS__})

/* Adds node "n" and returns its status; *out gets out[0] on success. */
static ad_status add(ad_graph *g, const char *op, int n_in, ad_value **in, int n_out,
                     const ad_attr *attrs, int n_attr, ad_value **out) {
  ad_node *node = NULL;
  ad_status st = ad_node_add(g, "n", op, n_in, in, n_out, attrs, n_attr, &node);
  *out = st == AD_OK ? node->out[0] : NULL;
  return st;
}

static void expect_shape_(int line, ad_status st, const ad_value *y, int rank,
                          const int64_t *dims) {
  if (st != AD_OK) {
    fprintf(stderr, "%s:%d: FAIL: unexpected error: %s\n", __FILE__, line, ad_error_message());
    failures++;
    return;
  }
  if (y->rank != rank || memcmp(y->dims, dims, sizeof(int64_t) * (size_t)rank) ||
      y->dtype != AD_F32) {
    char want[256];
    snprintf(want, sizeof want, "%s", ad_shape_str(rank, dims));
    fprintf(stderr, "%s:%d: FAIL: shape %s %s, expected %s float32\n", __FILE__, line,
            ad_shape_str(y->rank, y->dims), ad_dtype_name(y->dtype), want);
    failures++;
  }
}
/* The call runs first: `y` is read after it set it. */
#define EXPECT_SHAPE(call, y, ...)                                                                 \
  do {                                                                                             \
    ad_status st_ = (call);                                                                        \
    expect_shape_(__LINE__, st_, y, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),     \
                  (const int64_t[]){__VA_ARGS__});                                                 \
  } while (0)
#define EXPECT_SCALAR(call, y)                                                                     \
  do {                                                                                             \
    ad_status st_ = (call);                                                                        \
    expect_shape_(__LINE__, st_, y, 0, (const int64_t[]){0});                                      \
  } while (0)

static void expect_error_(int line, ad_status st, const char *msg) {
  if (st != AD_ERR_INPUT || strcmp(ad_error_message(), msg)) {
    fprintf(stderr, "%s:%d: FAIL: status %d, message\n  got:      %s\n  expected: %s\n", __FILE__,
            line, st, st == AD_OK ? "(none)" : ad_error_message(), msg);
    failures++;
  }
}
#define EXPECT_ERROR(st, msg) expect_error_(__LINE__, st, msg)

/* ---- shape.c ---- */

static void test_flatten(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 2, 3, 4, 5), *y;
  EXPECT_SHAPE(add(g, "Flatten", 1, &x, 1, NULL, 0, &y), y, 2, 60);
  ad_attr a = ad_attr_i("axis", 0);
  EXPECT_SHAPE(add(g, "Flatten", 1, &x, 1, &a, 1, &y), y, 1, 120);
  a = ad_attr_i("axis", -1);
  EXPECT_SHAPE(add(g, "Flatten", 1, &x, 1, &a, 1, &y), y, 24, 5);
  a = ad_attr_i("axis", 4);
  EXPECT_SHAPE(add(g, "Flatten", 1, &x, 1, &a, 1, &y), y, 120, 1);
  a = ad_attr_i("axis", 5);
  EXPECT_ERROR(add(g, "Flatten", 1, &x, 1, &a, 1, &y),
               "test.onnx: node 'n' (Flatten): error: axis 5 is out of range for rank 4");
  ad_graph_destroy(g);
}

static void test_reshape(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 2, 3, 4), *y;
  ad_value *in[2] = {x, INTS(g, "s", 0, -1)};
  EXPECT_SHAPE(add(g, "Reshape", 2, in, 1, NULL, 0, &y), y, 2, 12);
  in[1] = INTS(g, "s", -1, 4);
  EXPECT_SHAPE(add(g, "Reshape", 2, in, 1, NULL, 0, &y), y, 6, 4);
  in[1] = INTS(g, "s", 4, 0, 2);
  EXPECT_SHAPE(add(g, "Reshape", 2, in, 1, NULL, 0, &y), y, 4, 3, 2);
  in[1] = INTS(g, "s", 24);
  EXPECT_SHAPE(add(g, "Reshape", 2, in, 1, NULL, 0, &y), y, 24);
  in[1] = INTS(g, "s", 0, 0, -1, 1);
  EXPECT_SHAPE(add(g, "Reshape", 2, in, 1, NULL, 0, &y), y, 2, 3, 4, 1);
  in[1] = INTS(g, "s", -1, -1);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: shape [-1, -1] has more than one -1");
  in[1] = INTS(g, "s", 5, -1);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: cannot reshape [2, 3, 4] to [5, -1]");
  in[1] = INTS(g, "s", 2, 3, 5);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: cannot reshape [2, 3, 4] to [2, 3, 5]");
  in[1] = INTS(g, "s", 0, 0, 0, 0);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: shape[3] is 0 (copy) but the input "
               "[2, 3, 4] has no axis 3");
  in[1] = INTS(g, "s", 2, -3, 4);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: invalid extent -3 in shape [2, -3, 4]");
  in[1] = IN(g, "shape_in", 2);
  EXPECT_ERROR(add(g, "Reshape", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Reshape): error: shape input 'shape_in' must be a constant "
               "(known at compile time)");
  ad_graph_destroy(g);
}

static void test_transpose(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 2, 3, 4), *y;
  EXPECT_SHAPE(add(g, "Transpose", 1, &x, 1, NULL, 0, &y), y, 4, 3, 2);
  ad_attr a = ATTR_INTS("perm", 1, 0, 2);
  EXPECT_SHAPE(add(g, "Transpose", 1, &x, 1, &a, 1, &y), y, 3, 2, 4);
  a = ATTR_INTS("perm", 2, 0, 1);
  EXPECT_SHAPE(add(g, "Transpose", 1, &x, 1, &a, 1, &y), y, 4, 2, 3);
  a = ATTR_INTS("perm", 0, 0, 1);
  EXPECT_ERROR(add(g, "Transpose", 1, &x, 1, &a, 1, &y),
               "test.onnx: node 'n' (Transpose): error: perm [0, 0, 1] is not a permutation of "
               "the axes");
  a = ATTR_INTS("perm", 1, 0);
  EXPECT_ERROR(add(g, "Transpose", 1, &x, 1, &a, 1, &y),
               "test.onnx: node 'n' (Transpose): error: perm has 2 entries but the input has "
               "rank 3");
  ad_graph_destroy(g);
}

static void test_pad(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 1, 3, 4, 5), *y;
  ad_value *in[3] = {x, INTS(g, "p", 0, 0, 1, 2, 0, 0, 3, 4), NULL};
  EXPECT_SHAPE(add(g, "Pad", 2, in, 1, NULL, 0, &y), y, 1, 3, 8, 11);
  in[1] = INTS(g, "p", 0, 0, -1, 0, 0, 0, 0, -2);
  EXPECT_SHAPE(add(g, "Pad", 2, in, 1, NULL, 0, &y), y, 1, 3, 3, 3);
  in[2] = ad_const_scalar(g, 1.5f);
  EXPECT_SHAPE(add(g, "Pad", 3, in, 1, NULL, 0, &y), y, 1, 3, 3, 3);
  ad_attr a = attr_s("mode", "reflect");
  EXPECT_SHAPE(add(g, "Pad", 2, in, 1, &a, 1, &y), y, 1, 3, 3, 3);
  a = attr_s("mode", "wrap");
  EXPECT_ERROR(add(g, "Pad", 2, in, 1, &a, 1, &y),
               "test.onnx: node 'n' (Pad): error: mode 'wrap' is not supported (only constant, "
               "edge and reflect)");
  in[1] = INTS(g, "p", 0, 0, 1, 1);
  EXPECT_ERROR(add(g, "Pad", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Pad): error: pads has 4 entries, expected 8 (2 per axis)");
  in[1] = INTS(g, "p", 0, 0, -2, 0, 0, 0, -2, 0);
  EXPECT_ERROR(add(g, "Pad", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Pad): error: padding [1, 3, 4, 5] leaves axis 2 empty");
  in[1] = IN(g, "pads_in", 8);
  EXPECT_ERROR(add(g, "Pad", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Pad): error: pads input 'pads_in' must be a constant (known "
               "at compile time)");
  ad_graph_destroy(g);
  g = graph(1);
  x = IN(g, "x", 2, 2);
  in[0] = x;
  in[1] = INTS(g, "p", 1, 1, 1, 1);
  EXPECT_ERROR(add(g, "Pad", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Pad): error: op Pad is supported at opsets 2-17, the model "
               "imports 1");
  ad_graph_destroy(g);
}

static void test_identity_dropout(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 8, 16), *y;
  EXPECT_SHAPE(add(g, "Identity", 1, &x, 1, NULL, 0, &y), y, 8, 16);
  EXPECT_SHAPE(add(g, "Dropout", 1, &x, 1, NULL, 0, &y), y, 8, 16);
  ad_value *t = ad_value_new(g, "training", AD_BOOL, 0, NULL, AD_VAL_CONST);
  t->data = ad_arena_alloc(g->arena, 1);
  ad_value *in[3] = {x, ad_const_scalar(g, 0.5f), t};
  EXPECT_SHAPE(add(g, "Dropout", 3, in, 1, NULL, 0, &y), y, 8, 16);
  *(uint8_t *)t->data = 1;
  /* Training mode with ratio > 0 draws a mask (compiler/ops/random.c). */
  EXPECT_SHAPE(add(g, "Dropout", 3, in, 1, NULL, 0, &y), y, 8, 16);
  in[1] = ad_const_scalar(g, 1.0f);
  EXPECT_ERROR(add(g, "Dropout", 3, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Dropout): error: ratio 1 is outside [0, 1)");
  /* Training mode with ratio 0 is the identity; the mask output is all true. */
  in[1] = ad_const_scalar(g, 0.0f);
  EXPECT_SHAPE(add(g, "Dropout", 3, in, 2, NULL, 0, &y), y, 8, 16);
  ad_graph_destroy(g);
}

/* ---- linear.c ---- */

static void test_gemm(void) {
  ad_graph *g = graph(13);
  ad_value *a = IN(g, "a", 4, 3), *b = IN(g, "b", 5, 3), *y;
  ad_value *in[3] = {a, b, IN(g, "c", 5)};
  ad_attr at[2] = {ad_attr_i("transB", 1), ad_attr_i("transA", 1)};
  EXPECT_SHAPE(add(g, "Gemm", 2, in, 1, at, 1, &y), y, 4, 5);
  EXPECT_SHAPE(add(g, "Gemm", 3, in, 1, at, 1, &y), y, 4, 5);
  in[2] = IN(g, "c", 4, 1);
  EXPECT_SHAPE(add(g, "Gemm", 3, in, 1, at, 1, &y), y, 4, 5);
  in[2] = SCALAR(g, "c");
  EXPECT_SHAPE(add(g, "Gemm", 3, in, 1, at, 1, &y), y, 4, 5);
  in[2] = IN(g, "c", 3);
  EXPECT_ERROR(add(g, "Gemm", 3, in, 1, at, 1, &y),
               "test.onnx: node 'n' (Gemm): error: C [3] does not broadcast to the output [4, 5]");
  in[0] = IN(g, "a", 3, 4);
  EXPECT_SHAPE(add(g, "Gemm", 2, in, 1, at, 2, &y), y, 4, 5);
  EXPECT_ERROR(add(g, "Gemm", 2, in, 1, at, 1, &y),
               "test.onnx: node 'n' (Gemm): error: inner dimensions differ: A [3, 4] (transA=0), "
               "B [5, 3] (transB=1)");
  in[0] = IN(g, "a", 2, 3, 4);
  EXPECT_ERROR(add(g, "Gemm", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Gemm): error: A and B must be 2-D, got [2, 3, 4] and [5, 3]");
  ad_graph_destroy(g);
}

static void test_matmul(void) {
  ad_graph *g = graph(13);
  ad_value *y, *in[2];
  in[0] = IN(g, "a", 2, 3, 4), in[1] = IN(g, "b", 4, 5);
  EXPECT_SHAPE(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y, 2, 3, 5);
  in[0] = IN(g, "a", 4), in[1] = IN(g, "b", 4, 5);
  EXPECT_SHAPE(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y, 5);
  in[0] = IN(g, "a", 3, 4), in[1] = IN(g, "b", 4);
  EXPECT_SHAPE(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y, 3);
  in[0] = IN(g, "a", 4), in[1] = IN(g, "b", 4);
  EXPECT_SCALAR(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y);
  in[0] = IN(g, "a", 2, 1, 3, 4), in[1] = IN(g, "b", 5, 4, 6);
  EXPECT_SHAPE(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y, 2, 5, 3, 6);
  in[0] = IN(g, "a", 4), in[1] = IN(g, "b", 7, 4, 6);
  EXPECT_SHAPE(add(g, "MatMul", 2, in, 1, NULL, 0, &y), y, 7, 6);
  in[0] = IN(g, "a", 2, 3, 4), in[1] = IN(g, "b", 5, 6);
  EXPECT_ERROR(add(g, "MatMul", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (MatMul): error: inner dimensions differ: [2, 3, 4] and "
               "[5, 6]");
  in[0] = IN(g, "a", 2, 3, 4), in[1] = IN(g, "b", 3, 4, 6);
  EXPECT_ERROR(add(g, "MatMul", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (MatMul): error: batch axes of [2, 3, 4] and [3, 4, 6] do "
               "not broadcast");
  ad_graph_destroy(g);
}

/* ---- conv.c ---- */

static void test_conv(void) {
  ad_graph *g = graph(13);
  ad_value *y, *in[3] = {IN(g, "x", 1, 3, 32, 32), IN(g, "w", 8, 3, 3, 3), IN(g, "b", 8)};
  ad_attr at[4];
  at[0] = ATTR_INTS("pads", 1, 1, 1, 1);
  EXPECT_SHAPE(add(g, "Conv", 3, in, 1, at, 1, &y), y, 1, 8, 32, 32);
  at[0] = ATTR_INTS("strides", 2, 2);
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 1, &y), y, 1, 8, 15, 15);
  at[1] = attr_s("auto_pad", "SAME_UPPER");
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 2, &y), y, 1, 8, 16, 16);
  at[1] = attr_s("auto_pad", "SAME_LOWER");
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 2, &y), y, 1, 8, 16, 16);
  at[1] = attr_s("auto_pad", "VALID");
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 2, &y), y, 1, 8, 15, 15);
  at[0] = ATTR_INTS("dilations", 2, 3);
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 1, &y), y, 1, 8, 28, 26);
  at[0] = ATTR_INTS("pads", 0, 1, 2, 3);
  at[1] = ATTR_INTS("strides", 1, 2);
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 2, &y), y, 1, 8, 32, 17);
  at[1] = attr_s("auto_pad", "SAME_UPPER");
  EXPECT_ERROR(add(g, "Conv", 2, in, 1, at, 2, &y),
               "test.onnx: node 'n' (Conv): error: pads cannot be combined with auto_pad "
               "'SAME_UPPER'");
  at[0] = ATTR_INTS("kernel_shape", 3, 2);
  EXPECT_ERROR(add(g, "Conv", 2, in, 1, at, 1, &y),
               "test.onnx: node 'n' (Conv): error: kernel_shape [3, 2] does not match weight "
               "[8, 3, 3, 3]");
  in[2] = IN(g, "b", 4);
  EXPECT_ERROR(add(g, "Conv", 3, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Conv): error: bias [4] must be [8]");
  /* Depthwise-style groups: w is [M, C / group, KH, KW]. */
  in[1] = IN(g, "w", 6, 1, 3, 3);
  at[0] = ad_attr_i("group", 3);
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 1, &y), y, 1, 6, 30, 30);
  at[0] = ad_attr_i("group", 2);
  EXPECT_ERROR(add(g, "Conv", 2, in, 1, at, 1, &y),
               "test.onnx: node 'n' (Conv): error: weight [6, 1, 3, 3] does not fit input "
               "[1, 3, 32, 32] with group=2");
  /* 1-D convolution runs as 2-D with height 1. */
  in[0] = IN(g, "x", 2, 4, 10), in[1] = IN(g, "w", 5, 4, 3);
  at[0] = ATTR_INTS("pads", 2, 0);
  EXPECT_SHAPE(add(g, "Conv", 2, in, 1, at, 1, &y), y, 2, 5, 10);
  in[0] = IN(g, "x", 1, 3, 8, 8, 8), in[1] = IN(g, "w", 4, 3, 3, 3, 3);
  EXPECT_ERROR(add(g, "Conv", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Conv): error: 3-D convolution is not supported (input "
               "[1, 3, 8, 8, 8])");
  in[0] = IN(g, "x", 1, 3, 2, 2), in[1] = IN(g, "w", 4, 3, 3, 3);
  EXPECT_ERROR(add(g, "Conv", 2, in, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Conv): error: the window (3 with dilation 1) is larger than "
               "the padded input (2)");
  ad_graph_destroy(g);
}

static void test_pool(void) {
  ad_graph *g = graph(13);
  ad_value *x = IN(g, "x", 1, 3, 32, 31), *y;
  ad_attr at[4];
  at[0] = ATTR_INTS("kernel_shape", 2, 2);
  at[1] = ATTR_INTS("strides", 2, 2);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 2, &y), y, 1, 3, 16, 15);
  at[2] = ad_attr_i("ceil_mode", 1);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 3, &y), y, 1, 3, 16, 16);
  at[0] = ATTR_INTS("kernel_shape", 3, 3);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 3, &y), y, 1, 3, 16, 15);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 2, &y), y, 1, 3, 15, 15);
  /* ceil_mode drops a last window that would start in the end padding. */
  at[2] = ATTR_INTS("pads", 1, 1, 1, 1);
  at[3] = ad_attr_i("ceil_mode", 1);
  ad_value *x5 = IN(g, "x5", 1, 1, 5, 5);
  at[0] = ATTR_INTS("kernel_shape", 2, 2);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x5, 1, at, 4, &y), y, 1, 1, 3, 3);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x5, 1, at, 3, &y), y, 1, 1, 3, 3);
  at[2] = attr_s("auto_pad", "SAME_UPPER");
  at[0] = ATTR_INTS("kernel_shape", 3, 3);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 3, &y), y, 1, 3, 16, 16);
  at[2] = ATTR_INTS("dilations", 2, 2);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 3, &y), y, 1, 3, 14, 14);
  /* storage_order sets the layout of the optional int64 Indices output only. */
  at[2] = ad_attr_i("storage_order", 1);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 1, at, 3, &y), y, 1, 3, 15, 15);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x, 2, at, 3, &y), y, 1, 3, 15, 15);
  CHECK(y->producer->out[1]->dtype == AD_I64 && y->producer->out[1]->rank == 4 &&
            y->producer->out[1]->dims[3] == 15,
        "MaxPool Indices: int64 [1, 3, 15, 15]");
  EXPECT_ERROR(add(g, "MaxPool", 1, &x, 1, at + 1, 1, &y),
               "test.onnx: node 'n' (MaxPool): error: attribute kernel_shape is required");
  at[2] = ATTR_INTS("pads", 1, 1, 1, 1);
  at[3] = ad_attr_i("count_include_pad", 1);
  EXPECT_SHAPE(add(g, "AveragePool", 1, &x, 1, at, 4, &y), y, 1, 3, 16, 16);
  at[1] = ad_attr_i("ceil_mode", 1);
  at[0] = ATTR_INTS("kernel_shape", 2, 2);
  at[2] = ATTR_INTS("strides", 2, 2);
  EXPECT_ERROR(add(g, "AveragePool", 1, &x, 1, at, 4, &y),
               "test.onnx: node 'n' (AveragePool): error: count_include_pad=1 with ceil_mode "
               "windows that extend past the padding is not supported");
  at[3] = ad_attr_i("count_include_pad", 0);
  EXPECT_SHAPE(add(g, "AveragePool", 1, &x, 1, at, 4, &y), y, 1, 3, 16, 16);
  EXPECT_SHAPE(add(g, "GlobalAveragePool", 1, &x, 1, NULL, 0, &y), y, 1, 3, 1, 1);
  ad_value *x1 = IN(g, "x1", 2, 3, 7);
  EXPECT_SHAPE(add(g, "GlobalAveragePool", 1, &x1, 1, NULL, 0, &y), y, 2, 3, 1);
  at[0] = ATTR_INTS("kernel_shape", 3);
  EXPECT_SHAPE(add(g, "AveragePool", 1, &x1, 1, at, 1, &y), y, 2, 3, 5);
  at[0] = ATTR_INTS("kernel_shape", 3, 3);
  EXPECT_ERROR(add(g, "AveragePool", 1, &x1, 1, at, 1, &y),
               "test.onnx: node 'n' (AveragePool): error: attribute kernel_shape has 2 entries, "
               "expected 1");
  /* 3-D pooling: per axis (9 + 1 + 1 - 3) / 2 + 1, (8 - 2) / 2 + 1, (7 + 1 - 2) / 2 + 1. */
  ad_value *x3 = IN(g, "x3", 1, 2, 9, 8, 7);
  at[0] = ATTR_INTS("kernel_shape", 3, 2, 2);
  at[1] = ATTR_INTS("strides", 2, 2, 2);
  at[2] = ATTR_INTS("pads", 1, 0, 1, 1, 0, 0);
  EXPECT_SHAPE(add(g, "MaxPool", 1, &x3, 1, at, 3, &y), y, 1, 2, 5, 4, 4);
  EXPECT_SHAPE(add(g, "AveragePool", 1, &x3, 1, at, 3, &y), y, 1, 2, 5, 4, 4);
  EXPECT_SHAPE(add(g, "GlobalMaxPool", 1, &x3, 1, NULL, 0, &y), y, 1, 2, 1, 1, 1);
  at[3] = ad_attr_i("storage_order", 2);
  EXPECT_ERROR(add(g, "MaxPool", 1, &x3, 1, at, 4, &y),
               "test.onnx: node 'n' (MaxPool): error: storage_order must be 0 or 1, got 2");
  ad_value *x6 = IN(g, "x6", 1, 2, 3, 3, 3, 3);
  EXPECT_ERROR(add(g, "MaxPool", 1, &x6, 1, at, 3, &y),
               "test.onnx: node 'n' (MaxPool): error: input must be N x C x W, N x C x H x W or "
               "N x C x D x H x W, got [1, 2, 3, 3, 3, 3]");
  ad_graph_destroy(g);
}

/* ---- softmax.c ---- */

static void test_softmax(void) {
  for (int opset = 11; opset <= 13; opset += 2) {
    ad_graph *g = graph(opset);
    ad_value *x = IN(g, "x", 2, 3, 4), *y;
    ad_attr a = ad_attr_i("axis", -3);
    EXPECT_SHAPE(add(g, "Softmax", 1, &x, 1, NULL, 0, &y), y, 2, 3, 4);
    EXPECT_SHAPE(add(g, "LogSoftmax", 1, &x, 1, &a, 1, &y), y, 2, 3, 4);
    a = ad_attr_i("axis", 3);
    EXPECT_ERROR(add(g, "Softmax", 1, &x, 1, &a, 1, &y),
                 "test.onnx: node 'n' (Softmax): error: axis 3 is out of range for rank 3");
    ad_graph_destroy(g);
  }
  ad_graph *g = graph(13);
  ad_value *x = ad_value_new(g, "i", AD_I64, 1, (int64_t[]){3}, AD_VAL_INPUT), *y;
  EXPECT_ERROR(add(g, "Softmax", 1, &x, 1, NULL, 0, &y),
               "test.onnx: node 'n' (Softmax): error: input 0 ('i') is int64; only float32 is "
               "supported");
  ad_graph_destroy(g);
}

int main(void) {
  test_flatten();
  test_reshape();
  test_transpose();
  test_pad();
  test_identity_dropout();
  test_gemm();
  test_matmul();
  test_conv();
  test_pool();
  test_softmax();
  if (failures) {
    fprintf(stderr, "test_ops_shape: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_ops_shape: ok\n");
  return 0;
}
