/*
 * compiler/ops/shape.c: ops that move or view data without arithmetic:
 * Flatten, Reshape, Identity, Squeeze and Unsqueeze (ALIAS: the
 * output is the input's bytes under another shape, no code); Transpose, Pad,
 * Concat, Slice, Split, Expand, Tile, DepthToSpace, SpaceToDepth, Trilu,
 * ConstantOfShape, Range and EyeLike (CALL: runtime kernels); Shape and Size
 * (always folded, compiler/fold.c); the internal PadGrad and SliceGrad.
 *
 * The data-movement kernels work for any dtype by element size; most are one
 * strided copy (runtime/kernels_shape.h): a view of the input under element
 * strides (0 to broadcast, negative to reverse) copied into a view of the
 * output, so Slice with steps, Expand, Tile (a rank-2r view), Concat and Split
 * (one copy per piece) and the block rearrangements share one kernel.
 *
 * Shapes are static, so everything shape-like (Reshape's target, Slice's
 * starts, Pad's pads and value) must be a compile-time constant: the loader
 * folds computed ones (Shape -> Gather -> Concat chains) before shape
 * inference runs, and what still is not constant is an input error naming the
 * node rather than a run-time surprise. Gradients of the views are views back
 * to the input's shape (Reshape with a constant shape); Concat's are Slices,
 * Split's a Concat, Slice's a SliceGrad (zeros, then the strided copy back),
 * Expand's and Tile's sums over the broadcast axes (ReduceSumTo).
 */
#include "../../runtime/kernels.h"
#include "../../runtime/kernels_shape.h"
#include "../codegen.h"
#include "../op.h"

#include <math.h>
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

/* Input v (named `what` in messages) must be a compile-time constant. */
static ad_status need_const(ad_graph *g, const ad_node *n, const ad_value *v, const char *what) {
  if (v->kind != AD_VAL_CONST || !v->data)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: %s input '%s' must be a constant (known at compile time)",
                   ad_node_where(g, n), what, v->name);
  return AD_OK;
}

/* Reads a constant int64 vector input (Reshape's shape, Pad's pads/axes). */
static ad_status const_ints(ad_graph *g, const ad_node *n, int i, const char *what, int64_t **vals,
                            int *len) {
  ad_value *v = n->in[i];
  AD_TRY(need_const(g, n, v, what));
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

/* ---- shared helpers of the data-movement ops ---- */

/* Reads a constant integer tensor input (int64 or int32, rank <= 1) into an
 * int64 array of the graph arena; `what` names it in messages. */
static ad_status const_int_list(ad_graph *g, const ad_node *n, int i, const char *what,
                                int64_t **vals, int *len) {
  ad_value *v = n->in[i];
  AD_TRY(need_const(g, n, v, what));
  if ((v->dtype != AD_I64 && v->dtype != AD_I32) || v->rank > 1)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: %s input '%s' must be an int64 or int32 list, got %s %s",
                   ad_node_where(g, n), what, v->name, ad_dtype_name(v->dtype),
                   ad_shape_str(v->rank, v->dims));
  int64_t m = ad_value_numel(v);
  int64_t *out = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(m + 1));
  for (int64_t k = 0; k < m; k++)
    out[k] = v->dtype == AD_I32 ? ((const int32_t *)v->data)[k] : ((const int64_t *)v->data)[k];
  *vals = out;
  *len = (int)m;
  return AD_OK;
}

/* Normalizes axis a of a rank-r tensor (negative counts from the end). */
static ad_status norm_axis(ad_graph *g, const ad_node *n, int64_t a, int r, int *out) {
  if (a < -r || a >= r)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)a, r);
  *out = (int)(a < 0 ? a + r : a);
  return AD_OK;
}

static void dense_strides(int r, const int64_t *dims, int64_t *st) {
  int64_t s = 1;
  for (int i = r - 1; i >= 0; i--) {
    st[i] = s;
    s *= dims[i];
  }
}

/* One strided copy (runtime/kernels_shape.h): a box of `dims` read from src at
 * element offset soff with strides sstr, written to dst at doff, dstr. */
typedef struct copy_view {
  int rank;
  int64_t dims[AD_K_COPY_MAX_RANK];
  int64_t soff, sstr[AD_K_COPY_MAX_RANK];
  int64_t doff, dstr[AD_K_COPY_MAX_RANK];
} copy_view;

static void emit_copy(ad_cg *cg, size_t esize, const copy_view *cv, LLVMValueRef src,
                      LLVMValueRef dst) {
  int64_t p[4 + 3 * AD_K_COPY_MAX_RANK];
  int k = 0, r = cv->rank;
  p[k++] = (int64_t)esize;
  p[k++] = r;
  for (int i = 0; i < r; i++)
    p[k++] = cv->dims[i];
  p[k++] = cv->soff;
  for (int i = 0; i < r; i++)
    p[k++] = cv->sstr[i];
  p[k++] = cv->doff;
  for (int i = 0; i < r; i++)
    p[k++] = cv->dstr[i];
  LLVMValueRef ptrs[2] = {src, dst};
  ad_cg_call_kernel(cg, "ad_k_copy_strided", p, k, ptrs, 2);
}

/* The copy cv from value x to value y, by x's element size; none when y is empty. */
static void copy_values(ad_cg *cg, const copy_view *cv, const ad_value *x, const ad_value *y) {
  if (ad_value_numel(y))
    emit_copy(cg, ad_dtype_size(x->dtype), cv, ad_cg_ptr(cg, x), ad_cg_ptr(cg, y));
}

static void emit_fill(ad_cg *cg, size_t esize, int64_t n, int64_t value, LLVMValueRef dst) {
  int64_t p[3] = {(int64_t)esize, n, value};
  ad_cg_call_kernel(cg, "ad_k_fill", p, 3, &dst, 1);
}

/* A copy of a dense value into a dense value of the same shape, as a view. */
static void view_dense(copy_view *cv, int r, const int64_t *dims) {
  memset(cv, 0, sizeof *cv);
  cv->rank = r;
  memcpy(cv->dims, dims, sizeof(int64_t) * (size_t)r);
  dense_strides(r, dims, cv->sstr);
  dense_strides(r, dims, cv->dstr);
}

/* An int64 constant list (inputs of gradient Slice nodes). */
static ad_value *const_list(ad_graph *g, int len, const int64_t *vals) {
  return const_shape(g, len, vals);
}

static void cost_out(const ad_node *n, double *flops, double *bytes) {
  *flops = 0;
  *bytes = 0;
  for (int i = 0; i < n->n_out; i++)
    *bytes += 2.0 * (double)ad_value_bytes(n->out[i]);
}

static ad_status refuse_batch_axis(ad_graph *g, const ad_node *n, const ad_value *x, int axis,
                                   const char *what) {
  if (x->batched && axis == 0)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: %s along axis 0 of '%s', the batch axis, is not supported "
                   "(autodist splits the batch over devices)",
                   ad_node_where(g, n), what, x->name);
  return AD_OK;
}

/* ---- Identity ---- */

static ad_status infer_identity(ad_graph *g, ad_node *n) {
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
    } else if (d < 0) {
      return ad_fail(AD_ERR_INPUT, "%s: error: invalid extent %lld in shape %s",
                     ad_node_where(g, n), (long long)d, ad_shape_str(r, shape));
    }
    y->dims[i] = d;
    if (__builtin_mul_overflow(known, d, &known))
      return ad_fail(AD_ERR_INPUT, "%s: error: cannot reshape %s to %s", ad_node_where(g, n),
                     ad_shape_str(x->rank, x->dims), ad_shape_str(r, shape));
  }
  int64_t numel = ad_value_numel(x);
  if (infer_at >= 0) {
    if (known == 0 || numel % known)
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
  if (x->dtype != AD_F32) { /* other dtypes: a strided copy by element size */
    copy_view cv;
    int64_t xst[AD_MAX_RANK];
    dense_strides(r, x->dims, xst);
    view_dense(&cv, r, n->out[0]->dims);
    for (int i = 0; i < r; i++)
      cv.sstr[i] = xst[perm[i]];
    copy_values(cg, &cv, x, n->out[0]);
    return AD_OK;
  }
  p[k++] = r;
  for (int i = 0; i < r; i++)
    p[k++] = x->dims[i];
  for (int i = 0; i < r; i++)
    p[k++] = perm[i];
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_transpose", p, k, ptrs, 2);
  return AD_OK;
}

/* ---- Pad (opset 11+: pads, constant_value and axes are inputs; 2-10: attributes) ----
 * Modes constant, edge and reflect, any dtype the opset allows (the kernel
 * moves bytes; the constant is x's dtype). Gradients (float32): the constant
 * pad's crops dy, edge and reflect add each dy element to its source. */

typedef struct pad_spec {
  int rank, mode; /* mode: AD_K_PAD_* */
  int64_t begin[AD_MAX_RANK], end[AD_MAX_RANK];
  int64_t value; /* the constant's bytes (x's dtype), low first */
} pad_spec;

/* Whether Pad at the graph's opset takes dtype t: Pad-2 float16/32/64,
 * Pad-11 also the integer types, Pad-13 also bfloat16 and bool. */
static int pad_dtype_ok(int opset, ad_dtype t) {
  if (t == AD_F32 || t == AD_F64 || t == AD_F16)
    return 1;
  if (opset < 11)
    return 0;
  if (t == AD_BF16 || t == AD_BOOL)
    return opset >= 13;
  return 1; /* the integer types */
}

/* Pad-2's float attribute `value` as the bytes of dtype t (a float type). */
static int64_t pad_attr_value(ad_dtype t, float v) {
  int64_t slot = 0;
  if (t == AD_F64) {
    double d = v;
    memcpy(&slot, &d, sizeof d);
  } else if (t == AD_F16) {
    _Float16 h = (_Float16)v;
    memcpy(&slot, &h, sizeof h);
  } else {
    memcpy(&slot, &v, sizeof v);
  }
  return slot;
}

/* Reads and validates the pads of a Pad node into full-rank begin/end arrays. */
static ad_status pad_read(ad_graph *g, const ad_node *n, pad_spec *ps) {
  ad_value *x = n->in[0];
  const char *mode = ad_attr_str(n, "mode", "constant");
  if (!strcmp(mode, "constant"))
    ps->mode = AD_K_PAD_CONSTANT;
  else if (!strcmp(mode, "edge"))
    ps->mode = AD_K_PAD_EDGE;
  else if (!strcmp(mode, "reflect"))
    ps->mode = AD_K_PAD_REFLECT;
  else
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: mode '%s' is not supported (only constant, edge and reflect)",
                   ad_node_where(g, n), mode);
  if (!pad_dtype_ok(g->opset, x->dtype))
    return ad_fail(AD_ERR_INPUT, "%s: error: input 0 ('%s') is %s, which Pad-%d does not take",
                   ad_node_where(g, n), x->name, ad_dtype_name(x->dtype), g->opset);
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
  int attrs = n->op->max_opset < 11; /* Pad-2: pads and value are attributes */
  if (attrs) {
    const int64_t *a;
    np = ad_attr_ints(n, "pads", &a);
    if (np < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: attribute pads is required", ad_node_where(g, n));
    pads = (int64_t *)a;
  } else {
    AD_TRY(const_ints(g, n, 1, "pads", &pads, &np));
  }
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
  /* Edge and reflect read the input's cells: a padded axis must have some. */
  for (int i = 0; i < r && ps->mode != AD_K_PAD_CONSTANT; i++)
    if (x->dims[i] == 0 && (ps->begin[i] > 0 || ps->end[i] > 0))
      return ad_fail(AD_ERR_INPUT, "%s: error: mode '%s' cannot pad the empty axis %d",
                     ad_node_where(g, n), mode, i);
  ps->value = attrs ? pad_attr_value(x->dtype, ad_attr_float(n, "value", 0)) : 0;
  if (n->n_in > 2 && n->in[2]) {
    ad_value *v = n->in[2];
    if (v->kind != AD_VAL_CONST || !v->data || v->dtype != x->dtype || ad_value_numel(v) != 1)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: constant_value input '%s' must be a constant %s scalar",
                     ad_node_where(g, n), v->name, ad_dtype_name(x->dtype));
    memcpy(&ps->value, v->data, ad_dtype_size(x->dtype));
  }
  return AD_OK;
}

/* Output extents of x padded by ps; an empty or negative extent is an error. */
static ad_status pad_out_dims(ad_graph *g, const ad_node *n, const ad_value *x, const pad_spec *ps,
                              ad_value *y, int sign) {
  y->dtype = x->dtype;
  y->rank = x->rank;
  for (int i = 0; i < x->rank; i++) {
    int64_t total;
    if (__builtin_add_overflow(ps->begin[i], ps->end[i], &total) ||
        __builtin_mul_overflow(total, (int64_t)sign, &total) ||
        __builtin_add_overflow(x->dims[i], total, &y->dims[i]))
      return ad_fail(AD_ERR_INPUT, "%s: error: pads of axis %d are too large", ad_node_where(g, n),
                     i);
    if (y->dims[i] <= 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: padding %s leaves axis %d empty",
                     ad_node_where(g, n), ad_shape_str(x->rank, x->dims), i);
  }
  return AD_OK;
}

static ad_status infer_pad(ad_graph *g, ad_node *n) {
  pad_spec ps;
  AD_TRY(pad_read(g, n, &ps));
  return pad_out_dims(g, n, n->in[0], &ps, n->out[0], 1);
}

/* The kernels' parameter block: {esize, mode, rank, dims (of the unpadded x),
 * begin, end, value}. */
static int pad_params(const ad_value *x, const pad_spec *ps, int64_t *p) {
  int k = 0, r = x->rank;
  p[k++] = (int64_t)ad_dtype_size(x->dtype);
  p[k++] = ps->mode;
  p[k++] = r;
  for (int i = 0; i < r; i++)
    p[k++] = x->dims[i];
  for (int i = 0; i < r; i++)
    p[k++] = ps->begin[i];
  for (int i = 0; i < r; i++)
    p[k++] = ps->end[i];
  p[k++] = ps->value;
  return k;
}

/* Calls the pad kernel `kernel` from in[0] to out[0]; x is the unpadded side. */
static void call_pad(ad_cg *cg, const ad_node *n, const ad_value *x, const pad_spec *ps,
                     const char *kernel) {
  int64_t p[4 + 3 * AD_MAX_RANK];
  int k = pad_params(x, ps, p);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, kernel, p, k, ptrs, 2);
}

static ad_status lower_pad(ad_cg *cg, const ad_node *n) {
  pad_spec ps;
  AD_TRY(pad_read(ad_cg_graph(cg), n, &ps));
  call_pad(cg, n, n->in[0], &ps, "ad_k_pad_fwd");
  return AD_OK;
}

/* d(x): PadGrad(dy) carrying the full pads as attribute "pads" = begin...,
 * end... (the forward Pad's, normalized) and the mode as "pad_mode". */
static ad_status grad_pad(ad_grad *gc, const ad_node *n) {
  if (!ad_grad_wants(gc, n->in[0]))
    return AD_OK;
  pad_spec ps;
  AD_TRY(pad_read(ad_grad_graph(gc), n, &ps));
  AD_ASSERT(n->in[0]->dtype == AD_F32);
  int64_t pads[2 * AD_MAX_RANK];
  for (int i = 0; i < ps.rank; i++) {
    pads[i] = ps.begin[i];
    pads[ps.rank + i] = ps.end[i];
  }
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_attr a[2] = {ad_attr_is("pads", 2 * ps.rank, pads), ad_attr_i("pad_mode", ps.mode)};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "PadGrad", 1, &dy, a, 2));
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
  ps->mode = (int)ad_attr_int(n, "pad_mode", AD_K_PAD_CONSTANT);
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
  call_pad(cg, n, n->out[0], &ps, "ad_k_pad_bwd");
  return AD_OK;
}

/* ---- Shape, Size (always folded: their outputs depend on static dims only) ---- */

static ad_status infer_shape(ad_graph *g, ad_node *n) {
  int64_t r = n->in[0]->rank, start = ad_attr_int(n, "start", 0), end = ad_attr_int(n, "end", r);
  start = start < 0 ? start + r : start;
  end = end < 0 ? end + r : end;
  start = start < 0 ? 0 : start > r ? r : start;
  end = end < 0 ? 0 : end > r ? r : end;
  ad_value *y = n->out[0];
  y->dtype = AD_I64;
  y->rank = 1;
  y->dims[0] = end > start ? end - start : 0;
  return AD_OK;
}

static ad_status infer_size(ad_graph *g, ad_node *n) {
  n->out[0]->dtype = AD_I64;
  n->out[0]->rank = 0;
  return AD_OK;
}

/* ---- Concat ---- */

static ad_status infer_concat(ad_graph *g, ad_node *n) {
  ad_value *x0 = n->in[0], *y = n->out[0];
  const ad_attr *aa = ad_attr_find(n, "axis");
  if (!aa)
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute axis is required", ad_node_where(g, n));
  int axis = 0;
  AD_TRY(norm_axis(g, n, aa->i, x0->rank, &axis));
  int64_t total = 0;
  for (int i = 0; i < n->n_in; i++) {
    ad_value *x = n->in[i];
    if (!x)
      return ad_fail(AD_ERR_INPUT, "%s: error: input %d is missing", ad_node_where(g, n), i);
    int ok = x->dtype == x0->dtype && x->rank == x0->rank;
    for (int d = 0; ok && d < x->rank; d++)
      ok = d == axis || x->dims[d] == x0->dims[d];
    if (!ok)
      return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' (%s %s) does not fit '%s' (%s %s)",
                     ad_node_where(g, n), x->name, ad_dtype_name(x->dtype),
                     ad_shape_str(x->rank, x->dims), x0->name, ad_dtype_name(x0->dtype),
                     ad_shape_str(x0->rank, x0->dims));
    if (n->n_in > 1)
      AD_TRY(refuse_batch_axis(g, n, x, axis, "Concat"));
    if (__builtin_add_overflow(total, x->dims[axis], &total))
      return ad_fail(AD_ERR_INPUT, "%s: error: the output is too large", ad_node_where(g, n));
  }
  ad_infer_same(g, n);
  y->dims[axis] = total;
  return AD_OK;
}

/* Copies `piece` (dense) into `whole` (into_whole: Concat) or out of it
 * (Split) at element offset `off` of whole, whose dense strides are wst. */
static void copy_piece(ad_cg *cg, const ad_value *piece, const ad_value *whole, const int64_t *wst,
                       int64_t off, int into_whole) {
  copy_view cv;
  view_dense(&cv, piece->rank, piece->dims);
  memcpy(into_whole ? cv.dstr : cv.sstr, wst, sizeof(int64_t) * (size_t)whole->rank);
  if (into_whole)
    cv.doff = off;
  else
    cv.soff = off;
  if (!ad_value_numel(piece))
    return;
  LLVMValueRef src = ad_cg_ptr(cg, into_whole ? piece : whole);
  emit_copy(cg, ad_dtype_size(piece->dtype), &cv, src, ad_cg_ptr(cg, into_whole ? whole : piece));
}

static ad_status lower_concat(ad_cg *cg, const ad_node *n) {
  ad_value *y = n->out[0];
  int axis = 0;
  AD_TRY(norm_axis(ad_cg_graph(cg), n, ad_attr_int(n, "axis", 0), y->rank, &axis));
  int64_t yst[AD_MAX_RANK], at = 0;
  dense_strides(y->rank, y->dims, yst);
  for (int i = 0; i < n->n_in; i++) {
    copy_piece(cg, n->in[i], y, yst, at * yst[axis], 1);
    at += n->in[i]->dims[axis];
  }
  return AD_OK;
}

/* dx_i = dy sliced back along the axis (a Slice with constant inputs). */
static ad_status grad_concat(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  ad_value *dy = ad_grad_out(gc, n, 0);
  int axis = 0;
  AD_TRY(norm_axis(g, n, ad_attr_int(n, "axis", 0), dy->rank, &axis));
  int64_t at = 0;
  for (int i = 0; i < n->n_in; i++) {
    ad_value *x = n->in[i];
    int64_t s = at, e = at + x->dims[axis], a = axis;
    at = e;
    if (!ad_grad_wants(gc, x))
      continue;
    ad_value *args[4] = {dy, const_list(g, 1, &s), const_list(g, 1, &e), const_list(g, 1, &a)};
    ad_grad_acc(gc, x, ad_grad_emit(gc, "Slice", 4, args, NULL, 0));
  }
  return AD_OK;
}

/* ---- Slice (opset 10+: starts, ends, axes, steps are inputs; 1-9: attributes) ---- */

typedef struct slice_spec {
  int rank;
  int64_t start[AD_MAX_RANK], step[AD_MAX_RANK], count[AD_MAX_RANK];
} slice_spec;

/* ONNX's clamping: negative starts/ends count from the end; with a positive
 * step both clamp to [0, dim], with a negative one start to [0, dim-1] and end
 * to [-1, dim-1]. */
static ad_status slice_read(ad_graph *g, const ad_node *n, slice_spec *ss) {
  ad_value *x = n->in[0];
  int r = x->rank;
  int64_t *starts, *ends, *axes = NULL, *steps = NULL;
  int ns, ne, na = -1, nst = -1;
  if (n->op->max_opset < 10) { /* Slice-1: starts, ends and axes are attributes */
    const int64_t *s, *e, *a;
    ns = ad_attr_ints(n, "starts", &s);
    ne = ad_attr_ints(n, "ends", &e);
    na = ad_attr_ints(n, "axes", &a);
    if (ns < 0 || ne < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: attributes starts and ends are required",
                     ad_node_where(g, n));
    starts = (int64_t *)s;
    ends = (int64_t *)e;
    axes = na >= 0 ? (int64_t *)a : NULL;
  } else {
    AD_TRY(const_int_list(g, n, 1, "starts", &starts, &ns));
    AD_TRY(const_int_list(g, n, 2, "ends", &ends, &ne));
  }
  if (n->n_in > 3 && n->in[3])
    AD_TRY(const_int_list(g, n, 3, "axes", &axes, &na));
  if (n->n_in > 4 && n->in[4])
    AD_TRY(const_int_list(g, n, 4, "steps", &steps, &nst));
  if (ne != ns || (na >= 0 && na != ns) || (nst >= 0 && nst != ns) || ns > r)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: starts, ends, axes and steps must have the same length (<= rank "
                   "%d)",
                   ad_node_where(g, n), r);
  ss->rank = r;
  for (int i = 0; i < r; i++) {
    ss->start[i] = 0;
    ss->step[i] = 1;
    ss->count[i] = x->dims[i];
  }
  int seen[AD_MAX_RANK] = {0};
  for (int i = 0; i < ns; i++) {
    int a = 0;
    AD_TRY(norm_axis(g, n, axes ? axes[i] : i, r, &a));
    if (seen[a]++)
      return ad_fail(AD_ERR_INPUT, "%s: error: axis %d is sliced twice", ad_node_where(g, n), a);
    int64_t d = x->dims[a], st = steps ? steps[i] : 1, s = starts[i], e = ends[i];
    if (st == 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: step 0 on axis %d", ad_node_where(g, n), a);
    if (s < 0)
      s += d;
    if (e < 0)
      e += d;
    if (st > 0) {
      s = s < 0 ? 0 : s > d ? d : s;
      e = e < 0 ? 0 : e > d ? d : e;
    } else {
      s = s < 0 ? 0 : s > d - 1 ? d - 1 : s;
      e = e < -1 ? -1 : e > d - 1 ? d - 1 : e;
    }
    /* In unsigned arithmetic: a step may be any int64, INT64_MIN included. */
    int64_t span = st > 0 ? e - s : s - e;
    uint64_t ast = st > 0 ? (uint64_t)st : -(uint64_t)st;
    int64_t c = span > 0 ? (int64_t)(((uint64_t)span + ast - 1) / ast) : 0;
    ss->start[a] = s;
    ss->step[a] = st;
    ss->count[a] = c > 0 ? c : 0;
  }
  return AD_OK;
}

static ad_status infer_slice(ad_graph *g, ad_node *n) {
  slice_spec ss;
  AD_TRY(slice_read(g, n, &ss));
  ad_value *x = n->in[0];
  if (x->batched && x->rank > 0 &&
      (ss.start[0] != 0 || ss.step[0] != 1 || ss.count[0] != x->dims[0]))
    AD_TRY(refuse_batch_axis(g, n, x, 0, "Slice"));
  ad_infer_same(g, n);
  memcpy(n->out[0]->dims, ss.count, sizeof(int64_t) * (size_t)ss.rank);
  return AD_OK;
}

/* The view of x that a slice reads. */
static void slice_view(const ad_value *x, const slice_spec *ss, copy_view *cv) {
  int64_t xst[AD_MAX_RANK];
  dense_strides(x->rank, x->dims, xst);
  view_dense(cv, x->rank, ss->count);
  for (int i = 0; i < x->rank; i++) {
    cv->soff += ss->start[i] * xst[i];
    cv->sstr[i] = ss->step[i] * xst[i];
  }
}

static ad_status lower_slice(ad_cg *cg, const ad_node *n) {
  slice_spec ss;
  AD_TRY(slice_read(ad_cg_graph(cg), n, &ss));
  copy_view cv;
  slice_view(n->in[0], &ss, &cv);
  copy_values(cg, &cv, n->in[0], n->out[0]);
  return AD_OK;
}

/* dx = zeros with dy written where the slice read: SliceGrad(dy) with
 * attributes shape (x's), starts and steps (full rank, normalized). */
static ad_status grad_slice(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0];
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  slice_spec ss;
  AD_TRY(slice_read(ad_grad_graph(gc), n, &ss));
  ad_attr at[3] = {ad_attr_is("shape", x->rank, x->dims), ad_attr_is("starts", x->rank, ss.start),
                   ad_attr_is("steps", x->rank, ss.step)};
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_grad_acc(gc, x, ad_grad_emit(gc, "SliceGrad", 1, &dy, at, 3));
  return AD_OK;
}

static ad_status slice_grad_spec(ad_graph *g, const ad_node *n, slice_spec *ss) {
  const int64_t *shape, *starts, *steps;
  int r = ad_attr_ints(n, "shape", &shape);
  AD_ASSERT(r == n->in[0]->rank && ad_attr_ints(n, "starts", &starts) == r &&
            ad_attr_ints(n, "steps", &steps) == r);
  ss->rank = r;
  for (int i = 0; i < r; i++) {
    ss->start[i] = starts[i];
    ss->step[i] = steps[i];
    ss->count[i] = n->in[0]->dims[i];
  }
  return AD_OK;
}

static ad_status infer_slice_grad(ad_graph *g, ad_node *n) {
  const int64_t *shape;
  int r = ad_attr_ints(n, "shape", &shape);
  ad_value *y = n->out[0];
  y->dtype = n->in[0]->dtype;
  y->rank = r;
  memcpy(y->dims, shape, sizeof(int64_t) * (size_t)r);
  return AD_OK;
}

static ad_status lower_slice_grad(ad_cg *cg, const ad_node *n) {
  slice_spec ss;
  AD_TRY(slice_grad_spec(ad_cg_graph(cg), n, &ss));
  ad_value *dy = n->in[0], *dx = n->out[0];
  size_t es = ad_dtype_size(dx->dtype);
  emit_fill(cg, es, ad_value_numel(dx), 0, ad_cg_ptr(cg, dx));
  copy_view cv, sv;
  slice_view(dx, &ss, &sv); /* where the forward read: here written */
  view_dense(&cv, dy->rank, dy->dims);
  cv.doff = sv.soff;
  memcpy(cv.dstr, sv.sstr, sizeof(int64_t) * (size_t)dy->rank);
  if (ad_value_numel(dy))
    emit_copy(cg, es, &cv, ad_cg_ptr(cg, dy), ad_cg_ptr(cg, dx));
  return AD_OK;
}

/* ---- Split (opset 11: split attribute; 13+: split input) ---- */

static ad_status split_sizes(ad_graph *g, const ad_node *n, int *axis, int64_t *sizes) {
  ad_value *x = n->in[0];
  AD_TRY(norm_axis(g, n, ad_attr_int(n, "axis", 0), x->rank, axis));
  int64_t d = x->dims[*axis];
  int64_t *sp = NULL;
  int ns = -1;
  if (n->n_in > 1 && n->in[1]) {
    AD_TRY(const_int_list(g, n, 1, "split", &sp, &ns));
  } else {
    const int64_t *a;
    ns = ad_attr_ints(n, "split", &a);
    sp = (int64_t *)a;
  }
  if (ns < 0) {
    if (d % n->n_out)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: axis %d of extent %lld does not split into %d equal "
                     "parts",
                     ad_node_where(g, n), *axis, (long long)d, n->n_out);
    for (int i = 0; i < n->n_out; i++)
      sizes[i] = d / n->n_out;
    return AD_OK;
  }
  if (ns != n->n_out)
    return ad_fail(AD_ERR_INPUT, "%s: error: split has %d entries for %d outputs",
                   ad_node_where(g, n), ns, n->n_out);
  int64_t sum = 0;
  for (int i = 0; i < ns; i++) {
    if (sp[i] < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: negative split size %lld", ad_node_where(g, n),
                     (long long)sp[i]);
    if (sp[i] > d || __builtin_add_overflow(sum, sp[i], &sum))
      return ad_fail(AD_ERR_INPUT, "%s: error: split size %lld exceeds axis %d of extent %lld",
                     ad_node_where(g, n), (long long)sp[i], *axis, (long long)d);
    sizes[i] = sp[i];
  }
  if (sum != d)
    return ad_fail(AD_ERR_INPUT, "%s: error: split sizes sum to %lld, axis %d has %lld",
                   ad_node_where(g, n), (long long)sum, *axis, (long long)d);
  return AD_OK;
}

#define MAX_SPLIT 64

static ad_status infer_split(ad_graph *g, ad_node *n) {
  int axis = 0;
  int64_t sizes[MAX_SPLIT];
  AD_TRY(split_sizes(g, n, &axis, sizes));
  AD_TRY(refuse_batch_axis(g, n, n->in[0], axis, "Split"));
  for (int i = 0; i < n->n_out; i++) {
    ad_value *x = n->in[0], *y = n->out[i];
    y->dtype = x->dtype;
    y->rank = x->rank;
    memcpy(y->dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
    y->dims[axis] = sizes[i];
  }
  return AD_OK;
}

static ad_status lower_split(ad_cg *cg, const ad_node *n) {
  int axis = 0;
  int64_t sizes[MAX_SPLIT], xst[AD_MAX_RANK], at = 0;
  AD_TRY(split_sizes(ad_cg_graph(cg), n, &axis, sizes));
  ad_value *x = n->in[0];
  dense_strides(x->rank, x->dims, xst);
  for (int i = 0; i < n->n_out; i++) {
    copy_piece(cg, n->out[i], x, xst, at * xst[axis], 0);
    at += sizes[i];
  }
  return AD_OK;
}

/* dx = Concat of the outputs' gradients (zeros for outputs nothing read). */
static ad_status grad_split(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0];
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  ad_graph *g = ad_grad_graph(gc);
  int axis = 0;
  int64_t sizes[MAX_SPLIT];
  AD_TRY(split_sizes(g, n, &axis, sizes));
  ad_value *parts[MAX_SPLIT];
  for (int i = 0; i < n->n_out; i++) {
    parts[i] = ad_grad_out(gc, n, i);
    if (!parts[i])
      parts[i] = ad_const_f32(g, n->out[i]->rank, n->out[i]->dims, NULL);
  }
  ad_attr a = ad_attr_i("axis", axis);
  ad_grad_acc(gc, x, ad_grad_emit(gc, "Concat", n->n_out, parts, &a, 1));
  return AD_OK;
}

/* ---- Squeeze, Unsqueeze (axes: attribute before opset 13, input since) ---- */

static ad_status axes_of(ad_graph *g, const ad_node *n, int64_t **axes, int *na) {
  *na = -1;
  if (g->opset < 13) {
    const int64_t *a;
    *na = ad_attr_ints(n, "axes", &a);
    *axes = (int64_t *)a;
    return AD_OK;
  }
  if (n->n_in > 1 && n->in[1])
    return const_int_list(g, n, 1, "axes", axes, na);
  return AD_OK;
}

static ad_status infer_squeeze(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t *axes;
  int na;
  AD_TRY(axes_of(g, n, &axes, &na));
  int drop[AD_MAX_RANK] = {0};
  if (na < 0) {
    for (int i = x->batched ? 1 : 0; i < x->rank; i++) /* never the batch axis */
      drop[i] = x->dims[i] == 1;
  } else {
    for (int i = 0; i < na; i++) {
      int a = 0;
      AD_TRY(norm_axis(g, n, axes[i], x->rank, &a));
      if (x->dims[a] != 1)
        return ad_fail(AD_ERR_INPUT, "%s: error: axis %d of %s has extent %lld, not 1",
                       ad_node_where(g, n), a, ad_shape_str(x->rank, x->dims),
                       (long long)x->dims[a]);
      AD_TRY(refuse_batch_axis(g, n, x, a, "Squeeze"));
      drop[a] = 1;
    }
  }
  y->dtype = x->dtype;
  y->rank = 0;
  for (int i = 0; i < x->rank; i++)
    if (!drop[i])
      y->dims[y->rank++] = x->dims[i];
  return AD_OK;
}

static ad_status infer_unsqueeze(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t *axes;
  int na;
  AD_TRY(axes_of(g, n, &axes, &na));
  if (na < 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: axes are required", ad_node_where(g, n));
  int r = x->rank + na;
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: output rank %d exceeds %d", ad_node_where(g, n), r,
                   AD_MAX_RANK);
  int ins[AD_MAX_RANK] = {0};
  for (int i = 0; i < na; i++) {
    int a = 0;
    AD_TRY(norm_axis(g, n, axes[i], r, &a));
    if (ins[a]++)
      return ad_fail(AD_ERR_INPUT, "%s: error: axis %d is repeated", ad_node_where(g, n), a);
    if (a == 0 && x->batched)
      AD_TRY(refuse_batch_axis(g, n, x, 0, "Unsqueeze"));
  }
  y->dtype = x->dtype;
  y->rank = r;
  for (int i = 0, k = 0; i < r; i++)
    y->dims[i] = ins[i] ? 1 : x->dims[k++];
  return AD_OK;
}

/* ---- Expand, Tile ---- */

static ad_status infer_expand(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t *shape;
  int r;
  AD_TRY(const_int_list(g, n, 1, "shape", &shape, &r));
  int ro;
  int64_t dims[AD_MAX_RANK];
  if (r > AD_MAX_RANK || ad_broadcast_shape(x->rank, x->dims, r, shape, &ro, dims) != AD_OK)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot expand %s to %s", ad_node_where(g, n),
                   ad_shape_str(x->rank, x->dims), ad_shape_str(r, shape));
  y->dtype = x->dtype;
  y->rank = ro;
  memcpy(y->dims, dims, sizeof(int64_t) * (size_t)ro);
  return AD_OK;
}

static ad_status lower_expand(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  copy_view cv;
  view_dense(&cv, y->rank, y->dims);
  int64_t xst[AD_MAX_RANK];
  dense_strides(x->rank, x->dims, xst);
  for (int i = 0; i < y->rank; i++) {
    int xi = i - (y->rank - x->rank);
    cv.sstr[i] = xi < 0 || x->dims[xi] == 1 ? 0 : xst[xi];
  }
  copy_values(cg, &cv, x, y);
  return AD_OK;
}

static ad_status grad_expand(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0];
  if (ad_grad_wants(gc, x))
    ad_grad_acc(gc, x, ad_grad_reduce_to(gc, ad_grad_out(gc, n, 0), x));
  return AD_OK;
}

static ad_status tile_repeats(ad_graph *g, const ad_node *n, int64_t **rep) {
  int r;
  AD_TRY(const_int_list(g, n, 1, "repeats", rep, &r));
  if (r != n->in[0]->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: repeats has %d entries for rank %d",
                   ad_node_where(g, n), r, n->in[0]->rank);
  for (int i = 0; i < r; i++)
    if ((*rep)[i] < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: negative repeat %lld", ad_node_where(g, n),
                     (long long)(*rep)[i]);
  return AD_OK;
}

static ad_status infer_tile(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0];
  int64_t *rep;
  AD_TRY(tile_repeats(g, n, &rep));
  if (x->rank && rep[0] != 1)
    AD_TRY(refuse_batch_axis(g, n, x, 0, "Tile"));
  ad_infer_same(g, n);
  for (int i = 0; i < x->rank; i++)
    if (__builtin_mul_overflow(x->dims[i], rep[i], &n->out[0]->dims[i]))
      return ad_fail(AD_ERR_INPUT, "%s: error: repeats make the output too large",
                     ad_node_where(g, n));
  return AD_OK;
}

/* y viewed as [rep0, d0, rep1, d1, ...]: x read with stride 0 on the repeats. */
static ad_status lower_tile(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t *rep;
  AD_TRY(tile_repeats(ad_cg_graph(cg), n, &rep));
  int64_t xst[AD_MAX_RANK], yst[AD_MAX_RANK];
  dense_strides(x->rank, x->dims, xst);
  dense_strides(y->rank, y->dims, yst);
  copy_view cv = {.rank = 2 * x->rank};
  for (int i = 0; i < x->rank; i++) {
    cv.dims[2 * i] = rep[i];
    cv.dims[2 * i + 1] = x->dims[i];
    cv.sstr[2 * i] = 0;
    cv.sstr[2 * i + 1] = xst[i];
    cv.dstr[2 * i] = x->dims[i] * yst[i];
    cv.dstr[2 * i + 1] = yst[i];
  }
  copy_values(cg, &cv, x, y);
  return AD_OK;
}

/* dx = dy viewed [rep0, d0, ...] summed over the repeat axes. */
static ad_status grad_tile(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0];
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  ad_graph *g = ad_grad_graph(gc);
  int64_t *rep;
  AD_TRY(tile_repeats(g, n, &rep));
  int r = x->rank;
  if (2 * r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: the gradient of Tile supports rank <= %d",
                   ad_node_where(g, n), AD_MAX_RANK / 2);
  int64_t big[AD_MAX_RANK], small[AD_MAX_RANK];
  for (int i = 0; i < r; i++) {
    big[2 * i] = rep[i];
    big[2 * i + 1] = small[2 * i + 1] = x->dims[i];
    small[2 * i] = 1;
  }
  ad_value *args[2] = {ad_grad_out(gc, n, 0), const_shape(g, 2 * r, big)};
  ad_value *v = ad_grad_emit(gc, "Reshape", 2, args, NULL, 0);
  ad_attr a = ad_attr_is("shape", 2 * r, small);
  v = ad_grad_emit(gc, "ReduceSumTo", 1, &v, &a, 1);
  ad_value *args2[2] = {v, const_shape(g, r, x->dims)};
  ad_grad_acc(gc, x, ad_grad_emit(gc, "Reshape", 2, args2, NULL, 0));
  return AD_OK;
}

/* ---- ConstantOfShape, Range, EyeLike, Trilu ---- */

/* The element's bytes of a one-element constant, in an int64 slot. */
static int64_t elem_slot(const ad_value *v) {
  uint64_t u = 0;
  memcpy(&u, v->data, ad_dtype_size(v->dtype));
  return (int64_t)u;
}

static ad_status infer_constant_of_shape(ad_graph *g, ad_node *n) {
  int64_t *shape;
  int r;
  AD_TRY(const_int_list(g, n, 0, "shape", &shape, &r));
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: rank %d exceeds %d", ad_node_where(g, n), r,
                   AD_MAX_RANK);
  const ad_attr *va = ad_attr_find(n, "value");
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  if (va) {
    if (va->type != AD_ATTR_TENSOR || ad_value_numel(va->t) != 1)
      return ad_fail(AD_ERR_INPUT, "%s: error: value must be a one-element tensor",
                     ad_node_where(g, n));
    y->dtype = va->t->dtype;
  }
  y->rank = r;
  for (int i = 0; i < r; i++) {
    if (shape[i] < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: negative extent in shape %s", ad_node_where(g, n),
                     ad_shape_str(r, shape));
    y->dims[i] = shape[i];
  }
  return AD_OK;
}

static ad_status lower_constant_of_shape(ad_cg *cg, const ad_node *n) {
  const ad_attr *va = ad_attr_find(n, "value");
  ad_value *y = n->out[0];
  emit_fill(cg, ad_dtype_size(y->dtype), ad_value_numel(y), va ? elem_slot(va->t) : 0,
            ad_cg_ptr(cg, y));
  return AD_OK;
}

/* Range's scalar inputs as doubles (int64 exactly below 2^53). */
static ad_status range_read(ad_graph *g, const ad_node *n, double v[3]) {
  static const char *names[3] = {"start", "limit", "delta"};
  for (int i = 0; i < 3; i++) {
    ad_value *x = n->in[i];
    if (x->kind != AD_VAL_CONST || !x->data || ad_value_numel(x) != 1)
      return ad_fail(AD_ERR_INPUT, "%s: error: %s input '%s' must be a constant scalar",
                     ad_node_where(g, n), names[i], x->name);
    if (x->dtype != n->in[0]->dtype)
      return ad_fail(AD_ERR_INPUT, "%s: error: inputs have different types", ad_node_where(g, n));
    switch (x->dtype) {
    case AD_F32:
      v[i] = *(const float *)x->data;
      break;
    case AD_I64:
      v[i] = (double)*(const int64_t *)x->data;
      break;
    case AD_I32:
      v[i] = *(const int32_t *)x->data;
      break;
    default:
      return ad_fail(AD_ERR_INPUT, "%s: error: %s is %s; Range takes float32, int64 or int32",
                     ad_node_where(g, n), names[i], ad_dtype_name(x->dtype));
    }
  }
  if (v[2] == 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: delta is 0", ad_node_where(g, n));
  return AD_OK;
}

static ad_status infer_range(ad_graph *g, ad_node *n) {
  double v[3];
  AD_TRY(range_read(g, n, v));
  double c = ceil((v[1] - v[0]) / v[2]);
  if (!(c < 0x1p59)) /* also NaN (an infinite or NaN bound) */
    return ad_fail(AD_ERR_INPUT, "%s: error: the range has too many elements", ad_node_where(g, n));
  ad_value *y = n->out[0];
  y->dtype = n->in[0]->dtype;
  y->rank = 1;
  y->dims[0] = c > 0 ? (int64_t)c : 0;
  return AD_OK;
}

static ad_status lower_range(ad_cg *cg, const ad_node *n) {
  ad_value *s = n->in[0], *d = n->in[2], *y = n->out[0];
  int64_t p[4] = {ad_op_kernel_dtype(y->dtype), ad_value_numel(y), 0, 0};
  if (y->dtype == AD_F32) {
    p[2] = ad_k_slot(*(const float *)s->data);
    p[3] = ad_k_slot(*(const float *)d->data);
  } else if (y->dtype == AD_I32) {
    p[2] = *(const int32_t *)s->data;
    p[3] = *(const int32_t *)d->data;
  } else {
    p[2] = *(const int64_t *)s->data;
    p[3] = *(const int64_t *)d->data;
  }
  LLVMValueRef yp = ad_cg_ptr(cg, y);
  ad_cg_call_kernel(cg, "ad_k_range", p, 4, &yp, 1);
  return AD_OK;
}

static ad_status infer_eye_like(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  if (x->rank != 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must have rank 2, has %d", ad_node_where(g, n),
                   x->rank);
  AD_TRY(refuse_batch_axis(g, n, x, 0, "EyeLike"));
  ad_infer_same(g, n);
  const ad_attr *dt = ad_attr_find(n, "dtype");
  if (dt && !ad_op_dtype_of_onnx(dt->i, &y->dtype))
    return ad_fail(AD_ERR_INPUT, "%s: error: dtype %lld is not supported", ad_node_where(g, n),
                   (long long)dt->i);
  return AD_OK;
}

static ad_status lower_eye_like(ad_cg *cg, const ad_node *n) {
  ad_value *y = n->out[0];
  int64_t one = ad_op_one_slot(y->dtype);
  int64_t p[5] = {(int64_t)ad_dtype_size(y->dtype), y->dims[0], y->dims[1], ad_attr_int(n, "k", 0),
                  one};
  LLVMValueRef yp = ad_cg_ptr(cg, y);
  ad_cg_call_kernel(cg, "ad_k_eye", p, 5, &yp, 1);
  return AD_OK;
}

static ad_status trilu_k(ad_graph *g, const ad_node *n, int64_t *k) {
  *k = 0;
  if (n->n_in < 2 || !n->in[1])
    return AD_OK;
  ad_value *v = n->in[1];
  if (v->kind != AD_VAL_CONST || !v->data || v->dtype != AD_I64 || ad_value_numel(v) != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: k input '%s' must be a constant int64 scalar",
                   ad_node_where(g, n), v->name);
  *k = *(const int64_t *)v->data;
  return AD_OK;
}

static ad_status infer_trilu(ad_graph *g, ad_node *n) {
  int64_t k;
  AD_TRY(trilu_k(g, n, &k));
  if (n->in[0]->rank < 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must have rank >= 2", ad_node_where(g, n));
  return ad_infer_same(g, n);
}

static ad_status lower_trilu(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0];
  int64_t k;
  AD_TRY(trilu_k(ad_cg_graph(cg), n, &k));
  int64_t N = x->dims[x->rank - 2], M = x->dims[x->rank - 1];
  int64_t p[6] = {
      (int64_t)ad_dtype_size(x->dtype), N * M != 0 ? ad_value_numel(x) / (N * M) : 0, N, M, k,
      ad_attr_int(n, "upper", 1)};
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_trilu", p, 6, ptrs, 2);
  return AD_OK;
}

/* ---- DepthToSpace, SpaceToDepth (NCHW; strided copies of 6-D views) ---- */

static ad_status block_size(ad_graph *g, const ad_node *n, int64_t *bs) {
  *bs = ad_attr_int(n, "blocksize", 0);
  if (*bs < 1 || *bs > (1 << 15))
    return ad_fail(AD_ERR_INPUT, "%s: error: blocksize must be between 1 and 32768",
                   ad_node_where(g, n));
  if (n->in[0]->rank != 4)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must have rank 4 (NCHW), has %d",
                   ad_node_where(g, n), n->in[0]->rank);
  return AD_OK;
}

/* y (dense, viewed with the 6-D dims) = x read with the 6 element strides st. */
static void emit_copy6(ad_cg *cg, const ad_value *x, const ad_value *y, const int64_t dims[6],
                       const int64_t st[6]) {
  copy_view cv;
  view_dense(&cv, 6, dims);
  memcpy(cv.sstr, st, sizeof(int64_t) * 6);
  emit_copy(cg, ad_dtype_size(x->dtype), &cv, ad_cg_ptr(cg, x), ad_cg_ptr(cg, y));
}

static ad_status infer_depth_to_space(ad_graph *g, ad_node *n) {
  int64_t bs;
  AD_TRY(block_size(g, n, &bs));
  const char *mode = ad_attr_str(n, "mode", "DCR");
  if (strcmp(mode, "DCR") && strcmp(mode, "CRD"))
    return ad_fail(AD_ERR_INPUT, "%s: error: mode '%s' (DCR or CRD)", ad_node_where(g, n), mode);
  ad_value *x = n->in[0];
  if (x->dims[1] % (bs * bs))
    return ad_fail(AD_ERR_INPUT, "%s: error: channels %lld are not a multiple of blocksize^2",
                   ad_node_where(g, n), (long long)x->dims[1]);
  ad_infer_same(g, n);
  int64_t *d = n->out[0]->dims;
  d[1] /= bs * bs;
  if (__builtin_mul_overflow(d[2], bs, &d[2]) || __builtin_mul_overflow(d[3], bs, &d[3]))
    return ad_fail(AD_ERR_INPUT, "%s: error: output is too large", ad_node_where(g, n));
  return AD_OK;
}

/* y[n, c, h, b1, w, b2] (y viewed 6-D) from x[n, b1, b2, c, h, w] (DCR) or
 * x[n, c, b1, b2, h, w] (CRD). */
static ad_status lower_depth_to_space(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t bs;
  AD_TRY(block_size(ad_cg_graph(cg), n, &bs));
  int64_t C = y->dims[1], H = x->dims[2], W = x->dims[3], HW = H * W;
  int dcr = !strcmp(ad_attr_str(n, "mode", "DCR"), "DCR");
  int64_t dims[6] = {x->dims[0], C, H, bs, W, bs};
  int64_t sn = x->dims[1] * HW;
  int64_t sc = dcr ? HW : bs * bs * HW, sb1 = dcr ? bs * C * HW : bs * HW, sb2 = dcr ? C * HW : HW;
  int64_t st[6] = {sn, sc, W, sb1, 1, sb2};
  emit_copy6(cg, x, y, dims, st);
  return AD_OK;
}

static ad_status infer_space_to_depth(ad_graph *g, ad_node *n) {
  int64_t bs;
  AD_TRY(block_size(g, n, &bs));
  ad_value *x = n->in[0];
  if (x->dims[2] % bs || x->dims[3] % bs)
    return ad_fail(AD_ERR_INPUT, "%s: error: spatial dims %s are not multiples of blocksize",
                   ad_node_where(g, n), ad_shape_str(4, x->dims));
  ad_infer_same(g, n);
  int64_t *d = n->out[0]->dims;
  if (__builtin_mul_overflow(d[1], bs * bs, &d[1]))
    return ad_fail(AD_ERR_INPUT, "%s: error: output is too large", ad_node_where(g, n));
  d[2] /= bs;
  d[3] /= bs;
  return AD_OK;
}

/* y[n, b1, b2, c, h, w] (y viewed 6-D) = x[n, c, h * bs + b1, w * bs + b2]. */
static ad_status lower_space_to_depth(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  int64_t bs;
  AD_TRY(block_size(ad_cg_graph(cg), n, &bs));
  int64_t C = x->dims[1], H = x->dims[2], W = x->dims[3];
  int64_t dims[6] = {x->dims[0], bs, bs, C, y->dims[2], y->dims[3]};
  int64_t st[6] = {C * H * W, W, 1, H * W, bs * W, bs};
  emit_copy6(cg, x, y, dims, st);
  return AD_OK;
}

/* ---- table ---- */

#define VIEW(NAME, MINOP, MINI, MAXI, NOUT, INFER, GRAD)                                           \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = MINOP, .max_opset = AD_OPSET_MAX, .min_in = MINI,     \
    .max_in = MAXI, .n_out = NOUT, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_ALIAS,     \
    .cost = NULL                                                                                   \
  }

/* A data-movement op lowered by `lower` (a runtime kernel call). */
#define MOVE(NAME, MINOP, MINI, MAXI, NOUT, INFER, GRAD, LOWER)                                    \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = MINOP, .max_opset = AD_OPSET_MAX, .min_in = MINI,     \
    .max_in = MAXI, .n_out = NOUT, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_CALL,      \
    .lower = LOWER, .cost = cost_out                                                               \
  }

const ad_op ad_ops_shape[] = {
    VIEW("Flatten", 1, 1, 1, 1, infer_flatten, grad_view),
    VIEW("Reshape", 5, 2, 2, 1, infer_reshape, grad_view),
    VIEW("Identity", 1, 1, 1, 1, infer_identity, grad_identity),
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
    /* Pad-2: one input; pads and value are attributes. */
    {.name = "Pad",
     .domain = "",
     .min_opset = 2,
     .max_opset = 10,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_pad,
     .grad = grad_pad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_pad,
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
    {.name = "Shape",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_shape,
     .lower_kind = AD_LOWER_NONE},
    {.name = "Size",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_size,
     .lower_kind = AD_LOWER_NONE},
    VIEW("Squeeze", 1, 1, 2, 1, infer_squeeze, grad_view),
    VIEW("Unsqueeze", 1, 1, 2, 1, infer_unsqueeze, grad_view),
    MOVE("Concat", 4, 1, 64, 1, infer_concat, grad_concat, lower_concat),
    /* Slice-1: one input; starts, ends and axes are attributes. */
    {.name = "Slice",
     .domain = "",
     .min_opset = 1,
     .max_opset = 9,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_slice,
     .grad = grad_slice,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_slice,
     .cost = cost_out},
    MOVE("Slice", 10, 3, 5, 1, infer_slice, grad_slice, lower_slice),
    MOVE("Split", 2, 1, 2, MAX_SPLIT, infer_split, grad_split, lower_split),
    MOVE("Expand", 8, 2, 2, 1, infer_expand, grad_expand, lower_expand),
    MOVE("Tile", 6, 2, 2, 1, infer_tile, grad_tile, lower_tile),
    MOVE("ConstantOfShape", 9, 1, 1, 1, infer_constant_of_shape, NULL, lower_constant_of_shape),
    MOVE("Range", 11, 3, 3, 1, infer_range, NULL, lower_range),
    MOVE("EyeLike", 9, 1, 1, 1, infer_eye_like, NULL, lower_eye_like),
    MOVE("Trilu", 14, 1, 2, 1, infer_trilu, NULL, lower_trilu),
    MOVE("DepthToSpace", 1, 1, 1, 1, infer_depth_to_space, NULL, lower_depth_to_space),
    MOVE("SpaceToDepth", 1, 1, 1, 1, infer_space_to_depth, NULL, lower_space_to_depth),
    {.name = "SliceGrad",
     .domain = "ad",
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_slice_grad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_slice_grad,
     .cost = cost_out},
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
