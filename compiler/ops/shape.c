/*
 * compiler/ops/shape.c: ops that move or view data without arithmetic:
 * Flatten, Reshape, Identity and Dropout (ALIAS: the output is the input's
 * bytes under another shape, no code), Transpose and Pad (CALL: runtime
 * kernels), and the internal PadGrad.
 *
 * Shapes are static, so everything shape-like (Reshape's target, Pad's pads
 * and value) must be a compile-time constant; a computed one is an input
 * error naming the node rather than a run-time surprise. Gradients of the
 * views are views back to the input's shape (Reshape with a constant shape).
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* ---- helpers ---- */

/* An int64 1-D constant holding `dims`: the shape input of a gradient Reshape. */
static ad_value *const_shape(ad_graph *g, int rank, const int64_t *dims) {
  int64_t len = rank;
  ad_value *v = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
  v->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(rank ? rank : 1));
  memcpy(v->data, dims, sizeof(int64_t) * (size_t)rank);
  return v;
}

/* Gradient of a view: dy reshaped back to x's shape. */
static ad_status grad_view(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_value *x = n->in[0];
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  ad_value *args[2] = {dy, const_shape(ad_grad_graph(gc), x->rank, x->dims)};
  ad_grad_acc(gc, x, ad_grad_emit(gc, "Reshape", 2, args, NULL, 0));
  return AD_OK;
}

static ad_status grad_identity(ad_grad *gc, const ad_node *n) {
  ad_grad_acc(gc, n->in[0], ad_grad_out(gc, n, 0));
  return AD_OK;
}

/* Reads a constant int64 vector input (Reshape's shape, Pad's pads/axes). */
static ad_status const_ints(ad_graph *g, const ad_node *n, int i, const char *what, int64_t **vals,
                            int *len) {
  ad_value *v = n->in[i];
  if (v->kind != AD_VAL_CONST || !v->data)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: %s input '%s' must be a constant (known at compile time)",
                   ad_node_where(g, n), what, v->name);
  if (v->dtype != AD_I64 || v->rank != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: %s input '%s' must be a 1-D int64 tensor, got %s %s",
                   ad_node_where(g, n), what, v->name, ad_dtype_name(v->dtype),
                   ad_shape_str(v->rank, v->dims));
  *vals = v->data;
  *len = (int)v->dims[0];
  return AD_OK;
}

static void cost_copy(const ad_node *n, double *flops, double *bytes) {
  *flops = 0;
  *bytes = (double)ad_value_bytes(n->in[0]) + (double)ad_value_bytes(n->out[0]);
}

/* ---- Identity, Dropout ---- */

static ad_status infer_identity(ad_graph *g, ad_node *n) {
  return ad_infer_same(g, n);
}

/* Dropout is the identity at inference, which is how autodist runs it in
 * training too (exported models carry it in eval mode). A graph that asks for
 * training-mode dropout or its mask cannot be served and is rejected. */
static ad_status infer_dropout(ad_graph *g, ad_node *n) {
  if (n->n_out > 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: the mask output is not supported",
                   ad_node_where(g, n));
  if (n->n_in > 2 && n->in[2]) {
    ad_value *t = n->in[2];
    if (t->kind != AD_VAL_CONST || !t->data || t->dtype != AD_BOOL || ad_value_numel(t) != 1)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: training_mode input '%s' must be a constant boolean scalar",
                     ad_node_where(g, n), t->name);
    if (*(const uint8_t *)t->data)
      return ad_fail(AD_ERR_INPUT, "%s: error: training_mode=true is not supported",
                     ad_node_where(g, n));
  }
  return ad_infer_same(g, n);
}

/* ---- Flatten ---- */

static ad_status infer_flatten(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t axis = ad_attr_int(n, "axis", 1);
  if (axis < -x->rank || axis > x->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)axis, x->rank);
  if (axis < 0)
    axis += x->rank;
  int64_t a = 1, b = 1;
  for (int i = 0; i < x->rank; i++)
    *(i < axis ? &a : &b) *= x->dims[i];
  y->dtype = x->dtype;
  y->rank = 2;
  y->dims[0] = a;
  y->dims[1] = b;
  return AD_OK;
}

/* ---- Reshape ---- */

/* The target comes from a constant: 0 copies the input's extent at that
 * position (unless allowzero), one -1 takes what remains. */
static ad_status infer_reshape(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t *shape;
  int r;
  AD_TRY(const_ints(g, n, 1, "shape", &shape, &r));
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: rank %d exceeds the supported maximum %d",
                   ad_node_where(g, n), r, AD_MAX_RANK);
  int allowzero = (int)ad_attr_int(n, "allowzero", 0);
  int infer_at = -1;
  int64_t known = 1;
  for (int i = 0; i < r; i++) {
    int64_t d = shape[i];
    if (d == 0 && !allowzero) {
      if (i >= x->rank)
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: shape[%d] is 0 (copy) but the input %s has no axis %d",
                       ad_node_where(g, n), i, ad_shape_str(x->rank, x->dims), i);
      d = x->dims[i];
    } else if (d == -1) {
      if (infer_at >= 0)
        return ad_fail(AD_ERR_INPUT, "%s: error: shape %s has more than one -1",
                       ad_node_where(g, n), ad_shape_str(r, shape));
      infer_at = i;
      continue;
    } else if (d <= 0) {
      return ad_fail(AD_ERR_INPUT, "%s: error: invalid extent %lld in shape %s",
                     ad_node_where(g, n), (long long)d, ad_shape_str(r, shape));
    }
    y->dims[i] = d;
    known *= d;
  }
  int64_t numel = ad_value_numel(x);
  if (infer_at >= 0) {
    if (numel % known)
      return ad_fail(AD_ERR_INPUT, "%s: error: cannot reshape %s to %s", ad_node_where(g, n),
                     ad_shape_str(x->rank, x->dims), ad_shape_str(r, shape));
    y->dims[infer_at] = numel / known;
    known = numel;
  }
  if (known != numel)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot reshape %s to %s", ad_node_where(g, n),
                   ad_shape_str(x->rank, x->dims), ad_shape_str(r, shape));
  y->dtype = x->dtype;
  y->rank = r;
  return AD_OK;
}

/* ---- Transpose ---- */

/* perm of the node (default: reversed axes), validated. */
static ad_status transpose_perm(ad_graph *g, const ad_node *n, int64_t *perm) {
  int r = n->in[0]->rank;
  const int64_t *p;
  int np = ad_attr_ints(n, "perm", &p);
  if (np < 0) {
    for (int i = 0; i < r; i++)
      perm[i] = r - 1 - i;
    return AD_OK;
  }
  if (np != r)
    return ad_fail(AD_ERR_INPUT, "%s: error: perm has %d entries but the input has rank %d",
                   ad_node_where(g, n), np, r);
  int seen[AD_MAX_RANK] = {0};
  for (int i = 0; i < r; i++) {
    if (p[i] < 0 || p[i] >= r || seen[p[i]]++)
      return ad_fail(AD_ERR_INPUT, "%s: error: perm %s is not a permutation of the axes",
                     ad_node_where(g, n), ad_shape_str(np, p));
    perm[i] = p[i];
  }
  return AD_OK;
}

static ad_status infer_transpose(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t perm[AD_MAX_RANK];
  AD_TRY(transpose_perm(g, n, perm));
  y->dtype = x->dtype;
  y->rank = x->rank;
  for (int i = 0; i < x->rank; i++)
    y->dims[i] = x->dims[perm[i]];
  return AD_OK;
}

static ad_status grad_transpose(ad_grad *gc, const ad_node *n) {
  int64_t perm[AD_MAX_RANK], inv[AD_MAX_RANK];
  AD_TRY(transpose_perm(ad_grad_graph(gc), n, perm));
  int r = n->in[0]->rank;
  for (int i = 0; i < r; i++)
    inv[perm[i]] = i;
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_attr a = ad_attr_is("perm", r, inv);
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "Transpose", 1, &dy, &a, 1));
  return AD_OK;
}

static ad_status lower_transpose(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0];
  int64_t perm[AD_MAX_RANK], p[1 + 2 * AD_MAX_RANK];
  AD_TRY(transpose_perm(ad_cg_graph(cg), n, perm));
  int r = x->rank, k = 0;
  p[k++] = r;
  for (int i = 0; i < r; i++)
    p[k++] = x->dims[i];
  for (int i = 0; i < r; i++)
    p[k++] = perm[i];
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_transpose", p, k, ptrs, 2);
  return AD_OK;
}

/* ---- Pad (opset 11+: pads, constant_value and axes are inputs) ---- */

typedef struct pad_spec {
  int rank;
  int64_t begin[AD_MAX_RANK], end[AD_MAX_RANK];
  float value;
} pad_spec;

/* Reads and validates the pads of a Pad node into full-rank begin/end arrays. */
static ad_status pad_read(ad_graph *g, const ad_node *n, pad_spec *ps) {
  ad_value *x = n->in[0];
  const char *mode = ad_attr_str(n, "mode", "constant");
  if (strcmp(mode, "constant"))
    return ad_fail(AD_ERR_INPUT, "%s: error: mode '%s' is not supported (only 'constant')",
                   ad_node_where(g, n), mode);
  int r = x->rank;
  int64_t axes[AD_MAX_RANK];
  int n_axes = r;
  for (int i = 0; i < r; i++)
    axes[i] = i;
  if (n->n_in > 3 && n->in[3]) {
    int64_t *av;
    AD_TRY(const_ints(g, n, 3, "axes", &av, &n_axes));
    if (n_axes > r)
      return ad_fail(AD_ERR_INPUT, "%s: error: %d axes for an input of rank %d",
                     ad_node_where(g, n), n_axes, r);
    int seen[AD_MAX_RANK] = {0};
    for (int i = 0; i < n_axes; i++) {
      int64_t a = av[i] < 0 ? av[i] + r : av[i];
      if (a < 0 || a >= r || seen[a]++)
        return ad_fail(AD_ERR_INPUT, "%s: error: invalid axes %s for rank %d", ad_node_where(g, n),
                       ad_shape_str(n_axes, av), r);
      axes[i] = a;
    }
  }
  int64_t *pads;
  int np;
  AD_TRY(const_ints(g, n, 1, "pads", &pads, &np));
  if (np != 2 * n_axes)
    return ad_fail(AD_ERR_INPUT, "%s: error: pads has %d entries, expected %d (2 per axis)",
                   ad_node_where(g, n), np, 2 * n_axes);
  ps->rank = r;
  memset(ps->begin, 0, sizeof ps->begin);
  memset(ps->end, 0, sizeof ps->end);
  for (int i = 0; i < n_axes; i++) {
    ps->begin[axes[i]] = pads[i];
    ps->end[axes[i]] = pads[n_axes + i];
  }
  ps->value = 0;
  if (n->n_in > 2 && n->in[2]) {
    ad_value *v = n->in[2];
    if (v->kind != AD_VAL_CONST || !v->data || v->dtype != AD_F32 || ad_value_numel(v) != 1)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: constant_value input '%s' must be a constant float32 scalar",
                     ad_node_where(g, n), v->name);
    ps->value = *(const float *)v->data;
  }
  return AD_OK;
}

/* Output extents of x padded by ps; an empty or negative extent is an error. */
static ad_status pad_out_dims(ad_graph *g, const ad_node *n, const ad_value *x, const pad_spec *ps,
                              ad_value *y, int sign) {
  y->dtype = AD_F32;
  y->rank = x->rank;
  for (int i = 0; i < x->rank; i++) {
    y->dims[i] = x->dims[i] + sign * (ps->begin[i] + ps->end[i]);
    if (y->dims[i] <= 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: padding %s leaves axis %d empty",
                     ad_node_where(g, n), ad_shape_str(x->rank, x->dims), i);
  }
  return AD_OK;
}

static ad_status infer_pad(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  pad_spec ps;
  AD_TRY(pad_read(g, n, &ps));
  return pad_out_dims(g, n, n->in[0], &ps, n->out[0], 1);
}

/* The kernels' parameter block: {rank, dims (of the unpadded x), begin, end, value}. */
static int pad_params(const ad_value *x, const pad_spec *ps, int64_t *p) {
  int k = 0, r = x->rank;
  p[k++] = r;
  for (int i = 0; i < r; i++)
    p[k++] = x->dims[i];
  for (int i = 0; i < r; i++)
    p[k++] = ps->begin[i];
  for (int i = 0; i < r; i++)
    p[k++] = ps->end[i];
  p[k++] = ad_k_slot(ps->value);
  return k;
}

static ad_status lower_pad(ad_cg *cg, const ad_node *n) {
  pad_spec ps;
  AD_TRY(pad_read(ad_cg_graph(cg), n, &ps));
  int64_t p[2 + 3 * AD_MAX_RANK];
  int k = pad_params(n->in[0], &ps, p);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_pad_fwd", p, k, ptrs, 2);
  return AD_OK;
}

/* d(x) is dy cropped by the pads: PadGrad(dy) carrying the full pads as
 * attribute "pads" = begin..., end... (the forward Pad's, normalized). */
static ad_status grad_pad(ad_grad *gc, const ad_node *n) {
  pad_spec ps;
  AD_TRY(pad_read(ad_grad_graph(gc), n, &ps));
  int64_t pads[2 * AD_MAX_RANK];
  for (int i = 0; i < ps.rank; i++) {
    pads[i] = ps.begin[i];
    pads[ps.rank + i] = ps.end[i];
  }
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_attr a = ad_attr_is("pads", 2 * ps.rank, pads);
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "PadGrad", 1, &dy, &a, 1));
  return AD_OK;
}

static ad_status pad_grad_spec(ad_graph *g, const ad_node *n, pad_spec *ps) {
  const int64_t *pads;
  int np = ad_attr_ints(n, "pads", &pads);
  int r = n->in[0]->rank;
  if (np != 2 * r)
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute pads must have %d entries",
                   ad_node_where(g, n), 2 * r);
  ps->rank = r;
  ps->value = 0;
  for (int i = 0; i < r; i++) {
    ps->begin[i] = pads[i];
    ps->end[i] = pads[r + i];
  }
  return AD_OK;
}

static ad_status infer_pad_grad(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  pad_spec ps;
  AD_TRY(pad_grad_spec(g, n, &ps));
  return pad_out_dims(g, n, n->in[0], &ps, n->out[0], -1);
}

static ad_status lower_pad_grad(ad_cg *cg, const ad_node *n) {
  pad_spec ps;
  AD_TRY(pad_grad_spec(ad_cg_graph(cg), n, &ps));
  int64_t p[2 + 3 * AD_MAX_RANK];
  int k = pad_params(n->out[0], &ps, p);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_pad_bwd", p, k, ptrs, 2);
  return AD_OK;
}

/* ---- table ---- */

#define VIEW(NAME, MINOP, MINI, MAXI, NOUT, INFER, GRAD)                                           \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = MINOP, .max_opset = AD_OPSET_MAX, .min_in = MINI,     \
    .max_in = MAXI, .n_out = NOUT, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_ALIAS,     \
    .cost = NULL                                                                                   \
  }

const ad_op ad_ops_shape[] = {
    VIEW("Flatten", 1, 1, 1, 1, infer_flatten, grad_view),
    VIEW("Reshape", 5, 2, 2, 1, infer_reshape, grad_view),
    VIEW("Identity", 1, 1, 1, 1, infer_identity, grad_identity),
    VIEW("Dropout", 7, 1, 3, 2, infer_dropout, grad_identity),
    {.name = "Transpose",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_transpose,
     .grad = grad_transpose,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_transpose,
     .cost = cost_copy},
    {.name = "Pad",
     .domain = "",
     .min_opset = 11,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 4,
     .n_out = 1,
     .infer = infer_pad,
     .grad = grad_pad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_pad,
     .cost = cost_copy},
    {.name = "PadGrad",
     .domain = "ad",
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_pad_grad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_pad_grad,
     .cost = cost_copy},
    {0},
};
