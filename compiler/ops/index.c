/*
 * compiler/ops/index.c: Gather (an embedding lookup when data is a table and
 * indices are token ids) and its internal gradient GatherGrad, both lowered
 * to runtime kernels that view data as [outer, n, inner] around the gathered
 * axis and the indices as a flat list of m entries:
 *     y[o, j, i] = data[o, idx[j], i]             (ad_k_gather)
 *     ddata = 0; ddata[o, idx[j], i] += dy[o, j, i] (ad_k_scatter_add)
 * Repeated indices accumulate, negative ones count from the end (ONNX).
 *
 * The batch: autodist splits fed inputs along axis 0, so the output's axis 0
 * must be the batch whenever an input is batched. That holds for batched
 * indices at axis 0 (token ids into a table) and for batched data gathered at
 * another axis; the other combinations would move the batch axis and are
 * rejected with an input error.
 *
 * The gradient of the data is dense (zeros of the data's shape plus the
 * scattered rows). For a 50,000-row embedding table this is a 6 MB buffer per
 * step, acceptable for now; issue 3 (parameter servers) plugs a sparse path
 * in grad_gather: emit the (indices, dy rows) pair instead of GatherGrad and
 * let the strategy push only those rows.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* Normalized axis of a Gather (attribute) or GatherGrad (attribute, data rank
 * from its "shape"). */
static ad_status gather_axis(ad_graph *g, const ad_node *n, int rank, int *axis) {
  int64_t a = ad_attr_int(n, "axis", 0);
  if (a < -rank || a >= rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)a, rank);
  *axis = (int)(a < 0 ? a + rank : a);
  return AD_OK;
}

/* Kernel parameters {outer, n, inner, m, idx_is_i32} for data of shape
 * (rank, dims) gathered at axis with indices idx. */
static void gather_params(int rank, const int64_t *dims, int axis, const ad_value *idx,
                          int64_t *p) {
  p[0] = p[2] = 1;
  for (int i = 0; i < rank; i++) {
    if (i < axis)
      p[0] *= dims[i];
    else if (i > axis)
      p[2] *= dims[i];
  }
  p[1] = dims[axis];
  p[3] = ad_value_numel(idx);
  p[4] = idx->dtype == AD_I32;
}

static ad_status check_indices(ad_graph *g, const ad_node *n, const ad_value *idx) {
  if (idx->dtype != AD_I64 && idx->dtype != AD_I32)
    return ad_fail(AD_ERR_INPUT, "%s: error: indices '%s' are %s; Gather takes int64 or int32",
                   ad_node_where(g, n), idx->name, ad_dtype_name(idx->dtype));
  return AD_OK;
}

/* Out-of-range constant indices are caught here; fed ones at run time (the
 * kernel writes NaN rows, like the cross-entropy kernel for bad labels). */
static ad_status check_const_indices(ad_graph *g, const ad_node *n, const ad_value *idx,
                                     int64_t extent) {
  if (idx->kind != AD_VAL_CONST || !idx->data)
    return AD_OK;
  for (int64_t j = 0; j < ad_value_numel(idx); j++) {
    int64_t k =
        idx->dtype == AD_I32 ? ((const int32_t *)idx->data)[j] : ((const int64_t *)idx->data)[j];
    if (k < -extent || k >= extent)
      return ad_fail(AD_ERR_INPUT, "%s: error: index %lld is out of range for axis extent %lld",
                     ad_node_where(g, n), (long long)k, (long long)extent);
  }
  return AD_OK;
}

static ad_status infer_gather(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *idx = n->in[1], *y = n->out[0];
  if (x->dtype != AD_F32)
    return ad_fail(AD_ERR_INPUT, "%s: error: data '%s' is %s; only float32 data is supported",
                   ad_node_where(g, n), x->name, ad_dtype_name(x->dtype));
  AD_TRY(check_indices(g, n, idx));
  if (x->rank < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: data '%s' must have rank >= 1", ad_node_where(g, n),
                   x->name);
  int axis;
  AD_TRY(gather_axis(g, n, x->rank, &axis));
  int r = x->rank - 1 + idx->rank;
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: output rank %d exceeds %d", ad_node_where(g, n), r,
                   AD_MAX_RANK);
  if ((x->batched && axis == 0) || (idx->batched && (axis != 0 || x->batched)))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: Gather at axis %d of %s data with %s indices would move the batch "
                   "axis (supported: fed indices at axis 0, or fed data at another axis)",
                   ad_node_where(g, n), axis, x->batched ? "fed" : "constant",
                   idx->batched ? "fed" : "constant");
  AD_TRY(check_const_indices(g, n, idx, x->dims[axis]));
  y->dtype = AD_F32;
  y->rank = r;
  int k = 0;
  for (int i = 0; i < axis; i++)
    y->dims[k++] = x->dims[i];
  for (int i = 0; i < idx->rank; i++)
    y->dims[k++] = idx->dims[i];
  for (int i = axis + 1; i < x->rank; i++)
    y->dims[k++] = x->dims[i];
  return AD_OK;
}

/* GatherGrad(dy, indices) with attributes axis and shape (the data's). */
static ad_status infer_gather_grad(ad_graph *g, ad_node *n) {
  const int64_t *shape;
  int r = ad_attr_ints(n, "shape", &shape);
  AD_ASSERT(r >= 1 && n->in[0]->dtype == AD_F32);
  AD_TRY(check_indices(g, n, n->in[1]));
  int axis;
  AD_TRY(gather_axis(g, n, r, &axis));
  AD_ASSERT(n->in[0]->rank == r - 1 + n->in[1]->rank);
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  y->rank = r;
  memcpy(y->dims, shape, sizeof(int64_t) * (size_t)r);
  return AD_OK;
}

static ad_status lower_gather(ad_cg *cg, const ad_node *n) {
  int axis;
  AD_TRY(gather_axis(ad_cg_graph(cg), n, n->in[0]->rank, &axis));
  int64_t p[5];
  gather_params(n->in[0]->rank, n->in[0]->dims, axis, n->in[1], p);
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_gather", p, 5, ptrs, 3);
  return AD_OK;
}

static ad_status lower_gather_grad(ad_cg *cg, const ad_node *n) {
  ad_value *dx = n->out[0];
  int axis;
  AD_TRY(gather_axis(ad_cg_graph(cg), n, dx->rank, &axis));
  int64_t p[5];
  gather_params(dx->rank, dx->dims, axis, n->in[1], p);
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]), ad_cg_ptr(cg, dx)};
  ad_cg_call_kernel(cg, "ad_k_scatter_add", p, 5, ptrs, 3);
  return AD_OK;
}

/* Only the data is differentiable; the indices are integers. Sparse gradients
 * (issue 3) replace this dense GatherGrad. */
static ad_status grad_gather(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0];
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  int axis;
  AD_TRY(gather_axis(ad_grad_graph(gc), n, x->rank, &axis));
  ad_attr at[2] = {ad_attr_i("axis", axis), ad_attr_is("shape", x->rank, x->dims)};
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->in[1]};
  ad_grad_acc(gc, x, ad_grad_emit(gc, "GatherGrad", 2, args, at, 2));
  return AD_OK;
}

/* Pure data movement: the gathered rows are read and written once. */
static void cost_gather(const ad_node *n, double *flops, double *bytes) {
  *flops = 0;
  *bytes = 2.0 * (double)ad_value_bytes(n->out[0]) + (double)ad_value_bytes(n->in[1]);
}

/* Zeroing the dense gradient, then one add per scattered element. */
static void cost_gather_grad(const ad_node *n, double *flops, double *bytes) {
  *flops = (double)ad_value_numel(n->in[0]);
  *bytes = (double)ad_value_bytes(n->out[0]) + 2.0 * (double)ad_value_bytes(n->in[0]) +
           (double)ad_value_bytes(n->in[1]);
}

const ad_op ad_ops_index[] = {
    /* Gather is unchanged from opset 11 (negative indices) through 17. */
    {.name = "Gather",
     .domain = "",
     .min_opset = 11,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_gather,
     .grad = grad_gather,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gather,
     .cost = cost_gather},
    {.name = "GatherGrad",
     .domain = "ad",
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_gather_grad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gather_grad,
     .cost = cost_gather_grad},
    {0},
};
