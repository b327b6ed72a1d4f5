/*
 * compiler/autodiff.c: reverse-mode autodiff over the IR. Gradients are
 * ordinary graph nodes appended after the forward pass (so fusion, memory
 * planning and codegen treat them like any other node); each op's table entry
 * says how its inputs' gradients follow from its outputs'. Only the nodes on a
 * path from a trainable parameter to the loss are differentiated.
 */
#include "autodiff.h"

#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ad_grad {
  ad_graph *g;
  int n_fwd_values;
  unsigned char *wants; /* by value id (forward values): needs a gradient */
  ad_value **grad;      /* by value id: accumulated gradient */
};

ad_graph *ad_grad_graph(ad_grad *gc) {
  return gc->g;
}

ad_value *ad_grad_out(ad_grad *gc, const ad_node *n, int i) {
  ad_value *v = n->out[i];
  return v->id < gc->n_fwd_values ? gc->grad[v->id] : NULL;
}

int ad_grad_wants(ad_grad *gc, const ad_value *v) {
  return v && v->id < gc->n_fwd_values && gc->wants[v->id];
}

static int same_shape(const ad_value *a, const ad_value *b) {
  return a->rank == b->rank && !memcmp(a->dims, b->dims, sizeof(int64_t) * (size_t)a->rank);
}

ad_value *ad_grad_emit(ad_grad *gc, const char *op_type, int n_in, ad_value *const *in,
                       const ad_attr *attrs, int n_attr) {
  ad_node *n;
  /* Gradient nodes take the forms of the newest opset (Slice's starts as
   * inputs, ...), whatever opset the model imports. */
  int opset = gc->g->opset;
  gc->g->opset = AD_OPSET_MAX;
  ad_status st = ad_node_add(gc->g, NULL, op_type, n_in, in, 0, attrs, n_attr, &n);
  gc->g->opset = opset;
  if (st != AD_OK) {
    fprintf(stderr, "autodist: internal error building gradient: %s\n", ad_error_message());
    AD_ASSERT(st == AD_OK);
  }
  return n->n_out ? n->out[0] : NULL;
}

void ad_grad_acc(ad_grad *gc, const ad_value *v, ad_value *g) {
  if (!ad_grad_wants(gc, v))
    return;
  AD_ASSERT(same_shape(v, g));
  ad_value *old = gc->grad[v->id];
  if (!old) {
    gc->grad[v->id] = g;
    return;
  }
  ad_value *args[2] = {old, g};
  gc->grad[v->id] = ad_grad_emit(gc, "Add", 2, args, NULL, 0);
}

ad_value *ad_grad_reduce_to(ad_grad *gc, ad_value *g, const ad_value *like) {
  if (same_shape(g, like))
    return g;
  ad_attr a = ad_attr_is("shape", like->rank, like->dims);
  return ad_grad_emit(gc, "ReduceSumTo", 1, &g, &a, 1);
}

ad_status ad_autodiff(ad_graph *g, ad_value *loss, ad_value **grads) {
  AD_ASSERT(loss->dtype == AD_F32 && ad_value_numel(loss) == 1);
  ad_grad gc = {.g = g, .n_fwd_values = g->values.len};
  gc.wants = ad_xcalloc((size_t)gc.n_fwd_values, 1);
  gc.grad = ad_xcalloc((size_t)gc.n_fwd_values, sizeof(ad_value *));
  int n_fwd_nodes = g->nodes.len;

  /* Forward: values that depend on a trainable parameter. */
  for (int i = 0; i < g->params.len; i++)
    if (!g->params.data[i]->frozen)
      gc.wants[g->params.data[i]->id] = 1;
  unsigned char *on_path = ad_xcalloc((size_t)n_fwd_nodes, 1);
  for (int i = 0; i < n_fwd_nodes; i++) {
    ad_node *n = g->nodes.data[i];
    int any = 0;
    for (int j = 0; j < n->n_in; j++)
      any |= ad_grad_wants(&gc, n->in[j]);
    for (int j = 0; j < n->n_out && any; j++)
      gc.wants[n->out[j]->id] = 1;
    on_path[i] = (unsigned char)any;
  }
  /* Backward: keep only what reaches the loss. */
  unsigned char *reaches = ad_xcalloc((size_t)gc.n_fwd_values, 1);
  reaches[loss->id] = 1;
  for (int i = n_fwd_nodes - 1; i >= 0; i--) {
    ad_node *n = g->nodes.data[i];
    int r = 0;
    for (int j = 0; j < n->n_out; j++)
      r |= reaches[n->out[j]->id];
    if (!r)
      on_path[i] = 0;
    else
      for (int j = 0; j < n->n_in; j++)
        if (n->in[j])
          reaches[n->in[j]->id] = 1;
  }
  for (int v = 0; v < gc.n_fwd_values; v++)
    gc.wants[v] &= reaches[v];

  ad_status st = AD_OK;
  gc.grad[loss->id] = ad_const_scalar(g, 1.0f);
  if (loss->rank)
    gc.grad[loss->id] = ad_const_f32(g, loss->rank, loss->dims, (float[]){1.0f});
  for (int i = n_fwd_nodes - 1; i >= 0 && st == AD_OK; i--) {
    ad_node *n = g->nodes.data[i];
    if (!on_path[i])
      continue;
    int has = 0;
    for (int j = 0; j < n->n_out; j++)
      has |= gc.grad[n->out[j]->id] != NULL;
    if (!has)
      continue;
    if (!n->op->grad) {
      st = ad_fail(AD_ERR_INPUT, "%s: error: cannot train through this op (no gradient)",
                   ad_node_where(g, n));
      break;
    }
    for (int j = 0; j < n->n_in && st == AD_OK; j++)
      if (n->in[j] && ad_grad_wants(&gc, n->in[j]) && ad_dtype_is_float(n->in[j]->dtype) &&
          n->in[j]->dtype != AD_F32)
        st = ad_fail(AD_ERR_INPUT,
                     "%s: error: cannot train through %s values ('%s'); gradients are float32",
                     ad_node_where(g, n), ad_dtype_name(n->in[j]->dtype), n->in[j]->name);
    if (st != AD_OK)
      break;
    st = n->op->grad(&gc, n);
  }
  for (int i = 0; i < g->params.len && st == AD_OK; i++) {
    ad_value *p = g->params.data[i];
    grads[i] = NULL;
    if (p->frozen)
      continue;
    grads[i] = gc.grad[p->id] ? gc.grad[p->id] : ad_const_f32(g, p->rank, p->dims, NULL);
  }
  free(on_path);
  free(reaches);
  free(gc.wants);
  free(gc.grad);
  return st;
}
