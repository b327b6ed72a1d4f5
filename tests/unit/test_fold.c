/*
 * tests/unit/test_fold.c: constant folding (compiler/fold.c) on graphs built
 * node by node, the way PyTorch exports x.view(x.size(0), -1, 4):
 *     Shape(x) -> Gather(0) -> Unsqueeze -> Concat([b], [-1], [4]) -> Reshape(x, .)
 * Expected values are what the ONNX definitions give for the static shapes
 * (the same chain run by onnxruntime on a batch of 5 gives [5, 6, 4]).
 * Also: a value that depends on data is left alone, dead nodes go, and one
 * folding of a whole cone costs one JIT run (its time is printed).
 */
#include "compiler/fold.h"
#include "compiler/op.h"

#include "check.h"

#include <stdint.h>
#include <stdio.h>

static ad_value *const_i64(ad_graph *g, int n, const int64_t *vals) {
  int64_t len = n;
  ad_value *v = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
  v->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(n ? n : 1));
  memcpy(v->data, vals, sizeof(int64_t) * (size_t)n);
  return v;
}

static ad_value *scalar_i64(ad_graph *g, int64_t x) {
  ad_value *v = ad_value_new(g, NULL, AD_I64, 0, NULL, AD_VAL_CONST);
  v->data = ad_arena_alloc(g->arena, sizeof(int64_t));
  *(int64_t *)v->data = x;
  return v;
}

static ad_value *add(ad_graph *g, const char *op, int n_in, ad_value **in, const ad_attr *at,
                     int n_at) {
  ad_node *n = NULL;
  ad_status st = ad_node_add(g, NULL, op, n_in, in, 1, at, n_at, &n);
  if (st != AD_OK) {
    fprintf(stderr, "%s\n", ad_error_message());
    failures++;
    return NULL;
  }
  return n->out[0];
}

/* x [5, 24] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1], [4])). */
static void test_view_chain(void) {
  ad_graph *g = ad_graph_create("view.onnx");
  g->opset = 13;
  int64_t xd[2] = {5, 24};
  ad_value *x = ad_value_new(g, "x", AD_F32, 2, xd, AD_VAL_INPUT);
  x->batched = true;
  AD_VEC_PUSH(g->inputs, x);
  ad_fold_stats s0 = ad_fold_get_stats();

  ad_value *shape = add(g, "Shape", 1, &x, NULL, 0);
  CHECK(shape && shape->kind == AD_VAL_ACT && ad_fold_is_const(g, shape));
  CHECK(ad_fold_value(g, shape) == AD_OK);
  CHECK(shape->kind == AD_VAL_CONST && !shape->batched);
  CHECK(((int64_t *)shape->data)[0] == 5 && ((int64_t *)shape->data)[1] == 24);
  CHECK(ad_fold_get_stats().jit_runs == s0.jit_runs); /* Shape needs no JIT */

  ad_value *in[3] = {shape, scalar_i64(g, 0)};
  ad_value *b = add(g, "Gather", 2, in, NULL, 0);
  int64_t zero = 0;
  in[0] = b;
  in[1] = const_i64(g, 1, &zero);
  ad_value *bu = add(g, "Unsqueeze", 2, in, NULL, 0);
  int64_t m1 = -1, four = 4;
  ad_value *cat_in[3] = {bu, const_i64(g, 1, &m1), const_i64(g, 1, &four)};
  ad_attr axis = ad_attr_i("axis", 0);
  ad_value *target = add(g, "Concat", 3, cat_in, &axis, 1);
  CHECK(target && target->kind == AD_VAL_ACT && ad_fold_is_const(g, target));

  /* The loader folds the cone when Reshape needs it: one JIT run. */
  CHECK(ad_fold_value(g, target) == AD_OK);
  ad_fold_stats s1 = ad_fold_get_stats();
  CHECK(s1.jit_runs == s0.jit_runs + 1);
  CHECK(target->kind == AD_VAL_CONST);
  const int64_t *t = target->data;
  CHECK(t[0] == 5 && t[1] == -1 && t[2] == 4);
  CHECK(b->kind == AD_VAL_CONST && *(int64_t *)b->data == 5);
  printf("fold: one cone of 3 nodes in %.1f ms\n", 1e3 * (s1.jit_seconds - s0.jit_seconds));

  in[0] = x;
  in[1] = target;
  ad_value *y = add(g, "Reshape", 2, in, NULL, 0);
  CHECK(y && y->rank == 3 && y->dims[0] == 5 && y->dims[1] == 6 && y->dims[2] == 4);
  AD_VEC_PUSH(g->outputs, y);

  /* A node of data stays; the folded nodes and a dead one leave. */
  ad_value *dead = add(g, "Relu", 1, &x, NULL, 0);
  CHECK(dead && !ad_fold_is_const(g, dead) && !ad_fold_is_const(g, y));
  CHECK(ad_fold_graph(g) == AD_OK);
  CHECK(g->nodes.len == 1 && !strcmp(g->nodes.data[0]->op_type, "Reshape"));
  CHECK(g->nodes.data[0]->id == 0 && y->kind == AD_VAL_ACT);
  CHECK(ad_fold_get_stats().jit_runs == s1.jit_runs); /* nothing left to run */
  ad_graph_destroy(g);
}

/* A final pass folds every constant in one run, graph outputs included:
 * Range(0, Size(x), 2) and Slice of it, Tile, Expand. */
static void test_final_pass(void) {
  ad_graph *g = ad_graph_create("final.onnx");
  g->opset = 13;
  int64_t xd[2] = {3, 4};
  ad_value *x = ad_value_new(g, "x", AD_F32, 2, xd, AD_VAL_INPUT);
  AD_VEC_PUSH(g->inputs, x);
  ad_value *size = add(g, "Size", 1, &x, NULL, 0);
  CHECK(ad_fold_value(g, size) == AD_OK && *(int64_t *)size->data == 12);
  ad_value *rin[3] = {scalar_i64(g, 0), size, scalar_i64(g, 2)};
  ad_value *r = add(g, "Range", 3, rin, NULL, 0);
  CHECK(r && r->rank == 1 && r->dims[0] == 6);
  int64_t s = 1, e = 100, st = 2, rep = 2, shp[2] = {2, 1}, zero_axis = 0;
  ad_value *sin[5] = {r, const_i64(g, 1, &s), const_i64(g, 1, &e), const_i64(g, 1, &zero_axis),
                      const_i64(g, 1, &st)};
  ad_value *sl = add(g, "Slice", 5, sin, NULL, 0);
  CHECK(sl && sl->dims[0] == 3);
  ad_value *tin[2] = {sl, const_i64(g, 1, &rep)};
  ad_value *tile = add(g, "Tile", 2, tin, NULL, 0);
  ad_value *ein[2] = {tile, const_i64(g, 2, shp)};
  ad_value *ex = add(g, "Expand", 2, ein, NULL, 0);
  CHECK(ex && ex->rank == 2 && ex->dims[0] == 2 && ex->dims[1] == 6);
  AD_VEC_PUSH(g->outputs, ex);
  int before = ad_fold_get_stats().jit_runs;
  CHECK(ad_fold_graph(g) == AD_OK);
  CHECK(ad_fold_get_stats().jit_runs == before + 1);
  CHECK(g->nodes.len == 0 && ex->kind == AD_VAL_CONST);
  /* arange(0, 12, 2)[1::2] = [2, 6, 10], tiled twice, expanded to 2 rows. */
  static const int64_t want[12] = {2, 6, 10, 2, 6, 10, 2, 6, 10, 2, 6, 10};
  CHECK(ex->kind == AD_VAL_CONST && !memcmp(ex->data, want, sizeof want));
  ad_graph_destroy(g);
}

int main(void) {
  test_view_chain();
  test_final_pass();
  if (failures)
    fprintf(stderr, "%d check(s) failed\n", failures);
  return failures != 0;
}
