/*
 * compiler/fold.c: constant folding by running the generated code.
 *
 * Exported models compute shapes at run time (Shape -> Gather -> Unsqueeze ->
 * Concat -> Reshape). autodist's shapes are static, so all of that is known
 * once the batch is fixed: this file evaluates it while the model loads.
 *
 * Folding is lazy and batched. The loader asks for values when an op's
 * shape inference needs them (a slot of its attr_inputs table: Reshape's
 * shape, Slice's starts, ...): a node that needs one waits while the loader
 * goes on with the nodes that do not depend on it, and then all the values
 * waited for fold, with their cones, in one JIT run. After the last node,
 * ad_fold_graph folds every other (small) constant activation in one more run
 * and removes the nodes that are no longer needed. A model therefore costs one
 * JIT run per level of shape computations, plus one; Shape and Size alone
 * never need one. Measured: a 6-layer PyTorch TransformerEncoder (801 ONNX
 * nodes, batch 8) folds 258 nodes in 24 runs, 0.4 s; each run is ~10-20 ms
 * of LLVM optimization and code generation of a tiny module.
 *
 * The cone is copied into a scratch graph (ad_node_add re-runs shape
 * inference there, on the same attributes), lowered by codegen.c, compiled by
 * the JIT and run once; its outputs are copied into the main graph's arena and
 * the values become CONST. One semantics per op: folding runs the very code
 * that would otherwise run each step.
 */
#include "fold.h"

#include "../runtime/jit.h"
#include "codegen_module.h"
#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static ad_fold_stats stats;

ad_fold_stats ad_fold_get_stats(void) {
  return stats;
}

/* Ops whose outputs depend only on their inputs' static shapes. */
static int shape_only(const ad_node *n) {
  return !strcmp(n->domain, "") && (!strcmp(n->op_type, "Shape") || !strcmp(n->op_type, "Size"));
}

/* Ops never folded: internal ones (communication, optimizer state). */
static int foldable_op(const ad_node *n) {
  return !strcmp(n->domain, "");
}

/* memo by value id: 0 unknown, 1 constant, 2 not. Iterative over the
 * producers would be longer; recursion depth is bounded by the graph depth. */
static int is_const_memo(const ad_value *v, unsigned char *memo) {
  if (v->kind == AD_VAL_CONST)
    return 1;
  if (v->kind != AD_VAL_ACT || !v->producer)
    return 0;
  if (memo[v->id])
    return memo[v->id] == 1;
  const ad_node *n = v->producer;
  int ok = foldable_op(n);
  if (ok && !shape_only(n))
    for (int i = 0; i < n->n_in && ok; i++)
      ok = !n->in[i] || is_const_memo(n->in[i], memo);
  memo[v->id] = ok ? 1 : 2;
  return ok;
}

bool ad_fold_is_const(const ad_graph *g, const ad_value *v) {
  unsigned char *memo = ad_xcalloc((size_t)g->values.len + 1, 1);
  int r = is_const_memo(v, memo);
  free(memo);
  return r;
}

/* Turns v into a CONST holding `bytes` (copied into g's arena). */
static void make_const(ad_graph *g, ad_value *v, const void *bytes) {
  size_t n = ad_value_bytes(v);
  v->data = ad_arena_alloc(g->arena, n ? n : 1);
  if (n)
    memcpy(v->data, bytes, n);
  v->kind = AD_VAL_CONST;
  v->producer = NULL;
  v->batched = false;
}

/* Shape (opset 15: start/end attributes, clamped) and Size, from static dims. */
static void fold_shape_only(ad_graph *g, ad_node *n) {
  const ad_value *x = n->in[0];
  if (!strcmp(n->op_type, "Size")) {
    int64_t s = ad_value_numel(x);
    make_const(g, n->out[0], &s);
  } else {
    int64_t r = x->rank, start = ad_attr_int(n, "start", 0), end = ad_attr_int(n, "end", r);
    start = start < 0 ? start + r : start;
    end = end < 0 ? end + r : end;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    AD_ASSERT(n->out[0]->dims[0] == (end > start ? end - start : 0));
    make_const(g, n->out[0], x->dims + start);
  }
  stats.nodes_folded++;
}

static ad_value *alias_root(ad_value *v) {
  while (v->kind == AD_VAL_ACT && v->producer->op->lower_kind == AD_LOWER_ALIAS)
    v = v->producer->in[0];
  return v;
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Folds the cone of the marked nodes (mark[node index] set, all constant).
 * Shape/Size first (directly), then the rest in one scratch graph.
 */
static ad_status fold_marked(ad_graph *g, const unsigned char *mark) {
  int any = 0;
  for (int k = 0; k < g->nodes.len; k++) {
    if (!mark[k])
      continue;
    if (shape_only(g->nodes.data[k]))
      fold_shape_only(g, g->nodes.data[k]);
    else
      any = 1;
  }
  if (!any)
    return AD_OK;
  double t0 = now_sec();
  ad_graph *tg = ad_graph_create(g->source);
  tg->opset = g->opset;
  ad_value **map = ad_xcalloc((size_t)g->values.len, sizeof *map);
  ad_status st = AD_OK;
  for (int k = 0; k < g->nodes.len && st == AD_OK; k++) {
    ad_node *n = g->nodes.data[k];
    if (!mark[k] || shape_only(n))
      continue;
    ad_value **in = ad_xcalloc((size_t)n->n_in + 1, sizeof *in);
    for (int i = 0; i < n->n_in; i++) {
      ad_value *x = n->in[i];
      if (!x)
        continue;
      if (!map[x->id]) {
        AD_ASSERT(x->kind == AD_VAL_CONST);
        ad_value *c = ad_value_new(tg, x->name, x->dtype, x->rank, x->dims, AD_VAL_CONST);
        c->data = x->data;
        map[x->id] = c;
      }
      in[i] = map[x->id];
    }
    ad_node *tn;
    st = ad_node_add(tg, n->name, n->op_type, n->n_in, in, n->n_out, n->attrs, n->n_attr, &tn);
    free(in);
    for (int o = 0; st == AD_OK && o < n->n_out; o++) {
      map[n->out[o]->id] = tn->out[o];
      if (alias_root(tn->out[o])->kind != AD_VAL_CONST)
        AD_VEC_PUSH(tg->outputs, tn->out[o]);
    }
  }
  ad_program *p = NULL;
  ad_jit *jit = NULL;
  char *mem = NULL;
  int views_only = st == AD_OK && !tg->outputs.len; /* all outputs view constants */
  if (st == AD_OK && !views_only) {
    char bc[128];
    static int seq;
    snprintf(bc, sizeof bc, "/tmp/autodist-fold-%d-%d.bc", (int)getpid(), seq++);
    p = ad_program_create(tg, false);
    p->global_batch = 1;
    st = ad_codegen(p, bc);
    if (st == AD_OK)
      st = ad_jit_create(bc, &jit);
    unlink(bc);
  }
  void (*forward)(char *, void *) = NULL;
  if (st == AD_OK && !views_only)
    st = ad_jit_lookup(jit, "ad_forward", (void **)&forward);
  if (st == AD_OK) {
    if (!views_only) {
      size_t bytes = (size_t)((p->mem_bytes + 63) / 64 * 64);
      mem = aligned_alloc(64, bytes ? bytes : 64);
      AD_ASSERT(mem);
      memset(mem, 0, bytes);
      forward(mem, NULL);
      stats.jit_runs++;
    }
    for (int k = 0; k < g->nodes.len; k++) {
      ad_node *n = g->nodes.data[k];
      if (!mark[k] || shape_only(n))
        continue;
      for (int o = 0; o < n->n_out; o++) {
        ad_value *r = alias_root(map[n->out[o]->id]);
        make_const(g, n->out[o], r->kind == AD_VAL_CONST ? r->data : mem + p->offset[r->id]);
      }
      stats.nodes_folded++;
    }
  }
  free(mem);
  ad_jit_destroy(jit);
  ad_program_destroy(p);
  ad_graph_destroy(tg);
  free(map);
  stats.jit_seconds += now_sec() - t0;
  return st;
}

/* Marks the producers of v's constant cone (v constant). */
static void mark_cone(ad_value *v, const ad_graph *g, unsigned char *mark, const int *index) {
  if (v->kind != AD_VAL_ACT)
    return;
  ad_node *n = v->producer;
  int k = index[n->id];
  if (mark[k])
    return;
  mark[k] = 1;
  if (shape_only(n))
    return;
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      mark_cone(n->in[i], g, mark, index);
}

/* node id -> position in g->nodes (ids are positions until nodes are removed). */
static int *node_index(const ad_graph *g) {
  int max = 0;
  for (int k = 0; k < g->nodes.len; k++)
    if (g->nodes.data[k]->id > max)
      max = g->nodes.data[k]->id;
  int *index = ad_xmalloc(sizeof(int) * (size_t)(max + 1));
  for (int k = 0; k < g->nodes.len; k++)
    index[g->nodes.data[k]->id] = k;
  return index;
}

ad_status ad_fold_values(ad_graph *g, int n, ad_value *const *vs) {
  unsigned char *memo = ad_xcalloc((size_t)g->values.len + 1, 1);
  unsigned char *mark = ad_xcalloc((size_t)g->nodes.len + 1, 1);
  int *index = node_index(g);
  for (int i = 0; i < n; i++)
    if (vs[i] && vs[i]->kind == AD_VAL_ACT && is_const_memo(vs[i], memo))
      mark_cone(vs[i], g, mark, index);
  ad_status st = fold_marked(g, mark);
  free(index);
  free(mark);
  free(memo);
  return st;
}

ad_status ad_fold_value(ad_graph *g, ad_value *v) {
  return ad_fold_values(g, 1, &v);
}

/* Drops nodes whose outputs are all constant or all unused (in one reverse
 * sweep: a node is dead when nothing live reads it), then renumbers node ids
 * to positions and recounts uses. */
static void remove_dead(ad_graph *g) {
  ad_graph_recount(g);
  int n = g->nodes.len;
  unsigned char *dead = ad_xcalloc((size_t)n + 1, 1);
  for (int k = n - 1; k >= 0; k--) {
    ad_node *nd = g->nodes.data[k];
    int used = 0, folded = 1;
    for (int o = 0; o < nd->n_out; o++) {
      used |= nd->out[o]->n_uses > 0;
      folded &= nd->out[o]->kind == AD_VAL_CONST;
    }
    if (used && !folded)
      continue;
    dead[k] = 1;
    if (folded)
      continue; /* its readers read the constant; its inputs lose this use */
    for (int i = 0; i < nd->n_in; i++)
      if (nd->in[i])
        nd->in[i]->n_uses--;
  }
  /* Folded nodes' inputs: their uses go too, which may kill producers; a
   * second sweep settles it (folded nodes only lose uses, never gain). */
  int m = 0;
  for (int k = 0; k < n; k++)
    if (!dead[k])
      g->nodes.data[m++] = g->nodes.data[k];
  g->nodes.len = m;
  for (int k = 0; k < m; k++)
    g->nodes.data[k]->id = k;
  free(dead);
  ad_graph_recount(g);
}

/* The final pass leaves large constants to run time (zeros of the batch's
 * shape, masks): folded, they would be stored in the device module. Values
 * shape inference needs are folded whatever their size. */
#define FOLD_MAX_BYTES (64 * 1024)

ad_status ad_fold_graph(ad_graph *g) {
  remove_dead(g); /* never fold what nothing reads */
  unsigned char *memo = ad_xcalloc((size_t)g->values.len + 1, 1);
  unsigned char *mark = ad_xcalloc((size_t)g->nodes.len + 1, 1);
  int *index = node_index(g);
  /* In order: a node folds when its outputs are constant and small and each
   * computed input comes from a node that folds too (or Shape/Size). */
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    int ok = 1;
    for (int o = 0; o < n->n_out && ok; o++)
      ok = is_const_memo(n->out[o], memo) && ad_value_bytes(n->out[o]) <= FOLD_MAX_BYTES;
    for (int i = 0; i < n->n_in && ok && !shape_only(n); i++) {
      ad_value *x = n->in[i];
      ok = !x || x->kind != AD_VAL_ACT || mark[index[x->producer->id]];
    }
    mark[k] = (unsigned char)ok;
  }
  ad_status st = fold_marked(g, mark);
  free(index);
  free(mark);
  free(memo);
  if (st != AD_OK)
    return st;
  /* Removing folded nodes can leave their inputs' producers unread. */
  for (int before = -1; before != g->nodes.len;) {
    before = g->nodes.len;
    remove_dead(g);
  }
  return AD_OK;
}
