/*
 * tests/unit/test_codegen.c: fused elementwise loops with numpy broadcasting
 * and ReduceSumTo, compiled to a module, JIT-compiled and run in process. The
 * expected values are computed here with direct loops that follow numpy's
 * broadcasting rules (the reference semantics of ONNX's elementwise ops).
 */
#include "compiler/codegen_module.h"
#include "compiler/op.h"
#include "runtime/jit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(c, ...)                                                                              \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                  \
      printf(__VA_ARGS__);                                                                         \
      printf("\n");                                                                                \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static ad_value *node1(ad_graph *g, const char *op, int n_in, ad_value **in, ad_attr *a, int na) {
  ad_node *n;
  ad_status st = ad_node_add(g, NULL, op, n_in, in, 0, a, na, &n);
  AD_ASSERT(st == AD_OK);
  return n->out[0];
}

static float frand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Generates the program's module, JIT-compiles it and returns a zeroed arena
 * for it (NULL after a failed check); *jit must be destroyed by the caller. */
static char *build(ad_program *p, ad_jit **jit, void (**fwd)(char *, void *)) {
  char bc[64];
  snprintf(bc, sizeof bc, "/tmp/test_codegen_%d.bc", (int)getpid());
  *jit = NULL;
  *fwd = NULL;
  CHECK(ad_codegen(p, bc) == AD_OK, "codegen: %s", ad_error_message());
  CHECK(ad_jit_create(bc, jit) == AD_OK, "jit: %s", ad_error_message());
  unlink(bc);
  if (!*jit || ad_jit_lookup(*jit, "ad_forward", (void **)fwd) != AD_OK || !*fwd) {
    CHECK(0, "no ad_forward: %s", ad_error_message());
    return NULL;
  }
  char *mem = aligned_alloc(64, (size_t)p->mem_bytes);
  memset(mem, 0, (size_t)p->mem_bytes);
  return mem;
}

/* y = relu(a * b + c) - a, a [2,3,4], b [3,1], c [4]; z = sum of y to [3,1]. */
static void test_fused_broadcast_and_reduce(void) {
  ad_graph *g = ad_graph_create("test");
  g->opset = 13;
  ad_value *a = ad_value_new(g, "a", AD_F32, 3, (int64_t[]){2, 3, 4}, AD_VAL_INPUT);
  ad_value *b = ad_value_new(g, "b", AD_F32, 2, (int64_t[]){3, 1}, AD_VAL_INPUT);
  ad_value *c = ad_value_new(g, "c", AD_F32, 1, (int64_t[]){4}, AD_VAL_INPUT);
  AD_VEC_PUSH(g->inputs, a);
  AD_VEC_PUSH(g->inputs, b);
  AD_VEC_PUSH(g->inputs, c);
  ad_value *m = node1(g, "Mul", 2, (ad_value *[]){a, b}, NULL, 0);
  ad_value *s = node1(g, "Add", 2, (ad_value *[]){m, c}, NULL, 0);
  ad_value *r = node1(g, "Relu", 1, (ad_value *[]){s}, NULL, 0);
  ad_value *y = node1(g, "Sub", 2, (ad_value *[]){r, a}, NULL, 0);
  ad_attr shape = ad_attr_is("shape", 2, (int64_t[]){3, 1});
  ad_value *z = node1(g, "ReduceSumTo", 1, (ad_value *[]){y}, &shape, 1);
  AD_VEC_PUSH(g->outputs, y);
  AD_VEC_PUSH(g->outputs, z);

  ad_program *p = ad_program_create(g, false);
  ad_jit *jit;
  void (*fwd)(char *, void *);
  char *mem = build(p, &jit, &fwd);
  if (!mem)
    return;
  /* The chain Mul, Add, Relu, Sub is one group: only its result has memory. */
  CHECK(p->offset[m->id] < 0 && p->offset[s->id] < 0 && p->offset[r->id] < 0,
        "intermediates of the fused chain must not be in memory");
  CHECK(p->offset[y->id] >= 0 && p->offset[z->id] >= 0, "outputs must be in memory");
  float *A = (float *)(mem + p->offset[a->id]), *B = (float *)(mem + p->offset[b->id]);
  float *C = (float *)(mem + p->offset[c->id]);
  unsigned seed = 7;
  for (int i = 0; i < 24; i++)
    A[i] = frand(&seed);
  for (int i = 0; i < 3; i++)
    B[i] = frand(&seed);
  for (int i = 0; i < 4; i++)
    C[i] = frand(&seed);
  fwd(mem, NULL);
  float *Y = (float *)(mem + p->offset[y->id]), *Z = (float *)(mem + p->offset[z->id]);
  float zs[3] = {0};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++)
      for (int k = 0; k < 4; k++) {
        float av = A[(i * 3 + j) * 4 + k];
        float t = av * B[j] + C[k];
        float want = (t > 0 ? t : 0) - av;
        float got = Y[(i * 3 + j) * 4 + k];
        CHECK(got == want, "y[%d,%d,%d] = %g, want %g", i, j, k, got, want);
        zs[j] += want;
      }
  for (int j = 0; j < 3; j++)
    CHECK(fabsf(Z[j] - zs[j]) <= 1e-6f * (1 + fabsf(zs[j])), "z[%d] = %g, want %g", j, Z[j], zs[j]);
  free(mem);
  ad_jit_destroy(jit);
  ad_program_destroy(p);
  ad_graph_destroy(g);
}

/* ReduceSumTo over a long innermost axis takes the ad_k_sum_row path:
 * x [2, 3, 40] -> [3, 1], summed over axes 0 and 2. */
static void test_inner_axis_reduce(void) {
  ad_graph *g = ad_graph_create("test");
  g->opset = 13;
  ad_value *x = ad_value_new(g, "x", AD_F32, 3, (int64_t[]){2, 3, 40}, AD_VAL_INPUT);
  AD_VEC_PUSH(g->inputs, x);
  ad_attr shape = ad_attr_is("shape", 2, (int64_t[]){3, 1});
  ad_value *z = node1(g, "ReduceSumTo", 1, (ad_value *[]){x}, &shape, 1);
  AD_VEC_PUSH(g->outputs, z);
  ad_program *p = ad_program_create(g, false);
  ad_jit *jit;
  void (*fwd)(char *, void *);
  char *mem = build(p, &jit, &fwd);
  if (!mem)
    return;
  float *X = (float *)(mem + p->offset[x->id]);
  unsigned seed = 11;
  for (int i = 0; i < 240; i++)
    X[i] = frand(&seed);
  fwd(mem, NULL);
  float *Z = (float *)(mem + p->offset[z->id]);
  for (int j = 0; j < 3; j++) {
    double want = 0;
    for (int i = 0; i < 2; i++)
      for (int k = 0; k < 40; k++)
        want += X[(i * 3 + j) * 40 + k];
    CHECK(fabs(Z[j] - want) <= 1e-5 * (1 + fabs(want)), "z[%d] = %g, want %g", j, Z[j], want);
  }
  free(mem);
  ad_jit_destroy(jit);
  ad_program_destroy(p);
  ad_graph_destroy(g);
}

/* A chain of 50 Adds, longer than one fusion group may be: y = x + 50 * c, with
 * c broadcast from [1]; the chain is split into several groups. */
static void test_long_chain(void) {
  ad_graph *g = ad_graph_create("test");
  g->opset = 13;
  ad_value *x = ad_value_new(g, "x", AD_F32, 2, (int64_t[]){3, 5}, AD_VAL_INPUT);
  ad_value *c = ad_value_new(g, "c", AD_F32, 1, (int64_t[]){1}, AD_VAL_INPUT);
  AD_VEC_PUSH(g->inputs, x);
  AD_VEC_PUSH(g->inputs, c);
  ad_value *y = x;
  for (int i = 0; i < 50; i++)
    y = node1(g, "Add", 2, (ad_value *[]){y, c}, NULL, 0);
  AD_VEC_PUSH(g->outputs, y);
  ad_program *p = ad_program_create(g, false);
  ad_jit *jit;
  void (*fwd)(char *, void *);
  char *mem = build(p, &jit, &fwd);
  if (!mem)
    return;
  float *X = (float *)(mem + p->offset[x->id]), *C = (float *)(mem + p->offset[c->id]);
  for (int i = 0; i < 15; i++)
    X[i] = (float)i;
  C[0] = 0.5f;
  fwd(mem, NULL);
  float *Y = (float *)(mem + p->offset[y->id]);
  for (int i = 0; i < 15; i++) {
    float want = (float)i;
    for (int k = 0; k < 50; k++)
      want += 0.5f;
    CHECK(Y[i] == want, "y[%d] = %g, want %g", i, Y[i], want);
  }
  free(mem);
  ad_jit_destroy(jit);
  ad_program_destroy(p);
  ad_graph_destroy(g);
}

int main(void) {
  test_fused_broadcast_and_reduce();
  test_inner_axis_reduce();
  test_long_chain();
  printf("%s\n", failures ? "test_codegen: FAILED" : "test_codegen: ok");
  return failures != 0;
}
