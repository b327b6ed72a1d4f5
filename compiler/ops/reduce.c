/*
 * compiler/ops/reduce.c: ReduceSum and ReduceMean over a set of axes, lowered
 * to one runtime kernel (ad_k_reduce_axes) that sums the masked axes and
 * divides (by 1 for a sum, by the count for a mean: PyTorch divides, and a
 * multiplication by 1/count would round differently).
 *
 * The AD_LOWER_REDUCE_SUM kind of the core matches its output to the input
 * right-aligned, which keepdims=0 breaks (reducing axis 1 of [N, S, D] gives
 * [N, D]), hence a CALL. The axes come from the "axes" attribute, except for
 * ReduceSum from opset 13 where they are an optional input that must be a
 * compile-time constant (shapes are static). An empty axes list reduces
 * everything, unless noop_with_empty_axes (ReduceSum 13+) makes the op an
 * identity.
 *
 * Gradients broadcast dy back: a Reshape to the keepdims shape (a view, no
 * code) when the axes were dropped, then the internal BroadcastTo and, for a
 * mean, a Div by the count (PyTorch's mean backward); the last two are EW and
 * fuse into one loop.
 *
 * A fed input's axis 0 is each worker's slice of the batch, so a reduction
 * over it is per worker: what a loss computed inside the model (`loss:
 * output`) wants, since the replicas' losses and gradients are averaged.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* The reduced axes of node n as a mask over its input's axes, and the count
 * of reduced elements. */
static ad_status reduce_mask(ad_graph *g, const ad_node *n, int *mask, int64_t *count) {
  ad_value *x = n->in[0];
  int rank = x->rank;
  const int64_t *axes = NULL;
  int n_axes = 0, noop = 0;
  if (!strcmp(n->op_type, "ReduceSum") && n->op->min_opset >= 13) {
    noop = (int)ad_attr_int(n, "noop_with_empty_axes", 0);
    ad_value *a = n->n_in > 1 ? n->in[1] : NULL;
    if (a) {
      if (a->kind != AD_VAL_CONST || !a->data)
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: axes input '%s' must be a constant (known at compile time)",
                       ad_node_where(g, n), a->name);
      if (a->dtype != AD_I64 || a->rank != 1)
        return ad_fail(AD_ERR_INPUT, "%s: error: axes input '%s' must be a 1-D int64 tensor",
                       ad_node_where(g, n), a->name);
      axes = a->data;
      n_axes = (int)a->dims[0];
    }
  } else {
    n_axes = ad_attr_ints(n, "axes", &axes);
    if (n_axes < 0)
      n_axes = 0;
  }
  for (int i = 0; i < rank; i++)
    mask[i] = n_axes == 0 && !noop;
  for (int k = 0; k < n_axes; k++) {
    int64_t a = axes[k];
    if (a < -rank || a >= rank)
      return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                     ad_node_where(g, n), (long long)a, rank);
    int ax = (int)(a < 0 ? a + rank : a);
    if (mask[ax])
      return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is repeated", ad_node_where(g, n),
                     (long long)a);
    mask[ax] = 1;
  }
  *count = 1;
  for (int i = 0; i < rank; i++)
    if (mask[i])
      *count *= x->dims[i];
  return AD_OK;
}

static ad_status infer_reduce(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  ad_value *x = n->in[0], *y = n->out[0];
  int mask[AD_MAX_RANK];
  int64_t count;
  AD_TRY(reduce_mask(g, n, mask, &count));
  int keep = (int)ad_attr_int(n, "keepdims", 1);
  y->dtype = AD_F32;
  y->rank = 0;
  for (int i = 0; i < x->rank; i++)
    if (!mask[i])
      y->dims[y->rank++] = x->dims[i];
    else if (keep)
      y->dims[y->rank++] = 1;
  return AD_OK;
}

static ad_status lower_reduce(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0];
  int mask[AD_MAX_RANK];
  int64_t count;
  AD_TRY(reduce_mask(ad_cg_graph(cg), n, mask, &count));
  int64_t p[2 + 2 * AD_MAX_RANK];
  int r = x->rank;
  p[0] = r;
  for (int i = 0; i < r; i++) {
    p[1 + i] = x->dims[i];
    p[1 + r + i] = mask[i];
  }
  float div = strcmp(n->op_type, "ReduceMean") || count == 0 ? 1.0f : (float)count;
  p[1 + 2 * r] = ad_k_slot(div);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_reduce_axes", p, 2 + 2 * r, ptrs, 2);
  return AD_OK;
}

/* dx = BroadcastTo(dy viewed with the reduced axes kept as 1) [* 1/count]. */
static ad_status grad_reduce(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  ad_value *x = n->in[0], *dy = ad_grad_out(gc, n, 0);
  int mask[AD_MAX_RANK];
  int64_t count;
  AD_TRY(reduce_mask(g, n, mask, &count));
  if (dy->rank != x->rank) {
    int64_t kept[AD_MAX_RANK];
    for (int i = 0; i < x->rank; i++)
      kept[i] = mask[i] ? 1 : x->dims[i];
    int64_t len = x->rank;
    ad_value *shape = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
    shape->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(len ? len : 1));
    memcpy(shape->data, kept, sizeof(int64_t) * (size_t)len);
    ad_value *args[2] = {dy, shape};
    dy = ad_grad_emit(gc, "Reshape", 2, args, NULL, 0);
  }
  ad_attr at = ad_attr_is("shape", x->rank, x->dims);
  ad_value *dx = ad_grad_emit(gc, "BroadcastTo", 1, &dy, &at, 1);
  if (!strcmp(n->op_type, "ReduceMean") && count > 1) {
    ad_value *args[2] = {dx, ad_const_scalar(g, (float)count)};
    dx = ad_grad_emit(gc, "Div", 2, args, NULL, 0);
  }
  ad_grad_acc(gc, x, dx);
  return AD_OK;
}

/* One add per input element, reading the input and writing the output. */
static void cost_reduce(const ad_node *n, double *flops, double *bytes) {
  *flops = (double)ad_value_numel(n->in[0]);
  *bytes = (double)ad_value_bytes(n->in[0]) + (double)ad_value_bytes(n->out[0]);
}

#define REDUCE(NAME, LO, HI, MAXIN)                                                                \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = HI, .min_in = 1, .max_in = MAXIN,    \
    .n_out = 1, .infer = infer_reduce, .grad = grad_reduce, .lower_kind = AD_LOWER_CALL,           \
    .lower = lower_reduce, .cost = cost_reduce                                                     \
  }

const ad_op ad_ops_reduce[] = {
    REDUCE("ReduceSum", 1, 12, 1),
    REDUCE("ReduceSum", 13, AD_OPSET_MAX, 2),
    /* Opset 18 moves ReduceMean's axes to an input, beyond AD_OPSET_MAX. */
    REDUCE("ReduceMean", 1, AD_OPSET_MAX, 1),
    {0},
};
