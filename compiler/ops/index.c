/*
 * compiler/ops/index.c: Gather (an embedding lookup when data is a table and
 * indices are token ids), GatherElements, GatherND and OneHot (forward only,
 * any data dtype: elements move by size, runtime/kernels_shape.h; float32
 * Gather keeps its NaN rows for bad fed indices), and Gather's internal
 * gradient GatherGrad (float32). Gather and GatherGrad are lowered
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
#include "../../runtime/kernels_shape.h"
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
  AD_TRY(check_indices(g, n, idx));
  if (x->rank < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: data '%s' must have rank >= 1", ad_node_where(g, n),
                   x->name);
  int axis = 0;
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
  y->dtype = x->dtype;
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
  int axis = 0;
  AD_TRY(gather_axis(g, n, r, &axis));
  AD_ASSERT(n->in[0]->rank == r - 1 + n->in[1]->rank);
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  y->rank = r;
  memcpy(y->dims, shape, sizeof(int64_t) * (size_t)r);
  return AD_OK;
}

static ad_status lower_gather(ad_cg *cg, const ad_node *n) {
  int axis = 0;
  AD_TRY(gather_axis(ad_cg_graph(cg), n, n->in[0]->rank, &axis));
  int64_t p[6];
  gather_params(n->in[0]->rank, n->in[0]->dims, axis, n->in[1], p);
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0])};
  if (n->in[0]->dtype == AD_F32) {
    ad_cg_call_kernel(cg, "ad_k_gather", p, 5, ptrs, 3);
    return AD_OK;
  }
  /* Other dtypes move elements by size: {esize, outer, n, inner, m, is_i32}. */
  memmove(p + 1, p, sizeof(int64_t) * 5);
  p[0] = (int64_t)ad_dtype_size(n->in[0]->dtype);
  ad_cg_call_kernel(cg, "ad_k_gather_bytes", p, 6, ptrs, 3);
  return AD_OK;
}

static ad_status lower_gather_grad(ad_cg *cg, const ad_node *n) {
  ad_value *dx = n->out[0];
  int axis = 0;
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
  int axis = 0;
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

/* ---- GatherElements, GatherND, OneHot (forward only, any data dtype) ---- */

static ad_status infer_gather_elements(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *idx = n->in[1], *y = n->out[0];
  AD_TRY(check_indices(g, n, idx));
  if (idx->rank != x->rank || x->rank < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: indices %s must have the rank of data %s",
                   ad_node_where(g, n), ad_shape_str(idx->rank, idx->dims),
                   ad_shape_str(x->rank, x->dims));
  int axis = 0;
  AD_TRY(gather_axis(g, n, x->rank, &axis));
  if (x->batched || idx->batched) {
    if (axis == 0 || (x->batched != idx->batched))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: GatherElements at axis %d would mix samples of the batch",
                     ad_node_where(g, n), axis);
  }
  AD_TRY(check_const_indices(g, n, idx, x->dims[axis]));
  y->dtype = x->dtype;
  y->rank = idx->rank;
  memcpy(y->dims, idx->dims, sizeof(int64_t) * (size_t)idx->rank);
  return AD_OK;
}

static ad_status lower_gather_elements(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *idx = n->in[1];
  int axis = 0;
  AD_TRY(gather_axis(ad_cg_graph(cg), n, x->rank, &axis));
  int64_t p[4 + 2 * AD_MAX_RANK];
  int k = 0;
  p[k++] = (int64_t)ad_dtype_size(x->dtype);
  p[k++] = x->rank;
  p[k++] = axis;
  p[k++] = idx->dtype == AD_I32;
  for (int i = 0; i < x->rank; i++)
    p[k++] = idx->dims[i];
  for (int i = 0; i < x->rank; i++)
    p[k++] = x->dims[i];
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, idx), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_gather_elements", p, k, ptrs, 3);
  return AD_OK;
}

/* batch_dims b and the index depth k, validated. */
static ad_status gather_nd_dims(ad_graph *g, const ad_node *n, int *b, int *k) {
  ad_value *x = n->in[0], *idx = n->in[1];
  int64_t bd = ad_attr_int(n, "batch_dims", 0);
  if (idx->rank < 1 || x->rank < 1 || bd < 0 || bd >= idx->rank || bd >= x->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: batch_dims %lld does not fit data %s, indices %s",
                   ad_node_where(g, n), (long long)bd, ad_shape_str(x->rank, x->dims),
                   ad_shape_str(idx->rank, idx->dims));
  *b = (int)bd;
  int64_t kk = idx->dims[idx->rank - 1];
  if (kk < 1 || kk > x->rank - bd)
    return ad_fail(AD_ERR_INPUT, "%s: error: index depth %lld does not fit data of rank %d",
                   ad_node_where(g, n), (long long)kk, x->rank);
  *k = (int)kk;
  for (int i = 0; i < *b; i++)
    if (x->dims[i] != idx->dims[i])
      return ad_fail(AD_ERR_INPUT, "%s: error: batch dims of data %s and indices %s differ",
                     ad_node_where(g, n), ad_shape_str(x->rank, x->dims),
                     ad_shape_str(idx->rank, idx->dims));
  return AD_OK;
}

static ad_status infer_gather_nd(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *idx = n->in[1], *y = n->out[0];
  AD_TRY(check_indices(g, n, idx));
  int b = 0, k = 0;
  AD_TRY(gather_nd_dims(g, n, &b, &k));
  if ((x->batched || idx->batched) && b < 1)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: GatherND on fed data needs batch_dims >= 1 (the batch axis)",
                   ad_node_where(g, n));
  int r = idx->rank - 1 + x->rank - b - k;
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: output rank %d exceeds %d", ad_node_where(g, n), r,
                   AD_MAX_RANK);
  y->dtype = x->dtype;
  y->rank = 0;
  for (int i = 0; i < idx->rank - 1; i++)
    y->dims[y->rank++] = idx->dims[i];
  for (int i = b + k; i < x->rank; i++)
    y->dims[y->rank++] = x->dims[i];
  return AD_OK;
}

static ad_status lower_gather_nd(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *idx = n->in[1];
  int b = 0, k = 0;
  AD_TRY(gather_nd_dims(ad_cg_graph(cg), n, &b, &k));
  int64_t B = 1, M = 1, S = 1, xb = 1;
  for (int i = 0; i < b; i++)
    B *= x->dims[i];
  for (int i = b; i < idx->rank - 1; i++)
    M *= idx->dims[i];
  for (int i = b + k; i < x->rank; i++)
    S *= x->dims[i];
  for (int i = b; i < x->rank; i++)
    xb *= x->dims[i];
  int64_t p[7 + 2 * AD_MAX_RANK];
  p[0] = (int64_t)ad_dtype_size(x->dtype);
  p[1] = B;
  p[2] = M;
  p[3] = k;
  p[4] = S;
  p[5] = xb;
  p[6] = idx->dtype == AD_I32;
  for (int j = 0; j < k; j++) {
    p[7 + j] = x->dims[b + j];
    int64_t st = 1;
    for (int i = b + j + 1; i < x->rank; i++)
      st *= x->dims[i];
    p[7 + k + j] = st;
  }
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, idx), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_gather_nd", p, 7 + 2 * k, ptrs, 3);
  return AD_OK;
}

/* OneHot's depth (a constant scalar of any numeric dtype) and axis. */
static ad_status onehot_read(ad_graph *g, const ad_node *n, int64_t *depth, int *axis) {
  ad_value *d = n->in[1], *idx = n->in[0];
  if (d->kind != AD_VAL_CONST || !d->data || ad_value_numel(d) != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: depth input '%s' must be a constant scalar",
                   ad_node_where(g, n), d->name);
  switch (d->dtype) {
  case AD_F32: {
    float f = *(const float *)d->data;
    if (!(f > -0x1p31f && f < 0x1p31f)) /* also NaN */
      return ad_fail(AD_ERR_INPUT, "%s: error: depth %g is out of range", ad_node_where(g, n),
                     (double)f);
    *depth = (int64_t)f;
    break;
  }
  case AD_I64:
    *depth = *(const int64_t *)d->data;
    break;
  case AD_I32:
    *depth = *(const int32_t *)d->data;
    break;
  default:
    *depth = *(const uint8_t *)d->data;
    break;
  }
  if (*depth < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: depth %lld must be >= 1", ad_node_where(g, n),
                   (long long)*depth);
  int64_t a = ad_attr_int(n, "axis", -1), r = idx->rank + 1;
  if (a < -r || a >= r)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %lld",
                   ad_node_where(g, n), (long long)a, (long long)r);
  *axis = (int)(a < 0 ? a + r : a);
  return AD_OK;
}

static ad_status infer_onehot(ad_graph *g, ad_node *n) {
  ad_value *idx = n->in[0], *vals = n->in[2], *y = n->out[0];
  if (ad_value_numel(vals) != 2 || vals->rank != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: values must be [off_value, on_value]",
                   ad_node_where(g, n));
  if (idx->dtype == AD_BOOL)
    return ad_fail(AD_ERR_INPUT, "%s: error: indices must be numbers", ad_node_where(g, n));
  int64_t depth;
  int axis = 0;
  AD_TRY(onehot_read(g, n, &depth, &axis));
  if (idx->rank + 1 > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: output rank exceeds %d", ad_node_where(g, n),
                   AD_MAX_RANK);
  if (idx->batched && axis == 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis 0 would move the batch axis",
                   ad_node_where(g, n));
  y->dtype = vals->dtype;
  y->rank = idx->rank + 1;
  for (int i = 0, k = 0; i < y->rank; i++)
    y->dims[i] = i == axis ? depth : idx->dims[k++];
  return AD_OK;
}

static ad_status lower_onehot(ad_cg *cg, const ad_node *n) {
  ad_value *idx = n->in[0], *y = n->out[0];
  int64_t depth;
  int axis = 0;
  AD_TRY(onehot_read(ad_cg_graph(cg), n, &depth, &axis));
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < idx->rank; i++)
    *(i < axis ? &outer : &inner) *= idx->dims[i];
  int64_t p[5] = {(int64_t)ad_dtype_size(y->dtype), outer, depth, inner,
                  ad_op_kernel_dtype(idx->dtype)};
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, idx), ad_cg_ptr(cg, n->in[2]), ad_cg_ptr(cg, y)};
  ad_cg_call_kernel(cg, "ad_k_onehot", p, 5, ptrs, 3);
  return AD_OK;
}

static void cost_move(const ad_node *n, double *flops, double *bytes) {
  *flops = 0;
  *bytes = 2.0 * (double)ad_value_bytes(n->out[0]);
}

const ad_op ad_ops_index[] = {
    /* Gather is unchanged from opset 1 through 17 (11 allows negative indices). */
    {.name = "Gather",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_gather,
     .grad = grad_gather,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gather,
     .cost = cost_gather},
    {.name = "GatherElements",
     .domain = "",
     .min_opset = 11,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_gather_elements,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gather_elements,
     .cost = cost_move},
    {.name = "GatherND",
     .domain = "",
     .min_opset = 11,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_gather_nd,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gather_nd,
     .cost = cost_move},
    {.name = "OneHot",
     .domain = "",
     .min_opset = 9,
     .max_opset = AD_OPSET_MAX,
     .min_in = 3,
     .max_in = 3,
     .n_out = 1,
     .infer = infer_onehot,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_onehot,
     .cost = cost_move},
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
