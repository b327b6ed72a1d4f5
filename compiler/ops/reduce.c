/*
 * compiler/ops/reduce.c: the Reduce* family over a set of axes, ArgMax /
 * ArgMin and Hardmax. ReduceSum and ReduceMean are lowered to one runtime
 * kernel (ad_k_reduce_axes) that sums the masked axes and divides (by 1 for a
 * sum, by the count for a mean: PyTorch divides, and a multiplication by
 * 1/count would round differently); the other reductions (Max, Min, Prod,
 * L1, L2, LogSum, LogSumExp, SumSquare) to ad_k_reduce. ReduceMax/Min have a
 * gradient (dy shared among the tied extrema, PyTorch's amax/amin); the
 * others have none yet (an error names the node if one is needed).
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
 * Dtypes: float32 keeps the kernels above; the other dtypes each op accepts
 * in ONNX (float64, float16, int32, int64, uint32, uint64; ReduceMax/Min
 * also int8 and uint8 from opset 12) go to ad_k_reduce_<dtype>, every kind
 * (Sum and Mean included; runtime/kernels_reduce.c gives the integer
 * semantics: wrapping sums, the exact mean truncated). ArgMax/ArgMin take
 * every int, float16, float32 and float64; Hardmax float16/32/64. bfloat16
 * is refused, and so is a gradient through a reduction of anything but
 * float32.
 *
 * A fed input's axis 0 is each worker's slice of the batch, so a reduction
 * over it is per worker: what a loss computed inside the model (`loss:
 * output`) wants, since the replicas' losses and gradients are averaged.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <stdio.h>
#include <string.h>

/* The reduced axes of node n as a mask over its input's axes, and the count
 * of reduced elements. */
static ad_status reduce_mask(ad_graph *g, const ad_node *n, int *mask, int64_t *count) {
  ad_value *x = n->in[0];
  int rank = x->rank;
  const int64_t *axes = NULL;
  int n_axes = 0, noop = 0;
  if (!strcmp(n->op_type, "ReduceSum") && n->op->min_opset >= 13) {
    if (ad_attr_find(n, "axes"))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: ReduceSum takes its axes as an input from opset 13, not as an "
                     "attribute",
                     ad_node_where(g, n));
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

/* The suffix of the runtime kernels for dtype t other than float32
 * (ad_k_reduce_f64, ad_k_argmax_i32, ...); need_dtype has admitted t. */
static const char *kernel_suffix(ad_dtype t) {
  switch (t) {
  case AD_F64:
    return "f64";
  case AD_F16:
    return "f16";
  case AD_I8:
    return "i8";
  case AD_U8:
    return "u8";
  case AD_I16:
    return "i16";
  case AD_U16:
    return "u16";
  case AD_I32:
    return "i32";
  case AD_U32:
    return "u32";
  case AD_I64:
    return "i64";
  case AD_U64:
    return "u64";
  default:
    AD_ASSERT(!"no reduction kernel for this dtype: shape inference must refuse it");
    return NULL;
  }
}

#define DT(t) (1u << (t))
_Static_assert(AD_DTYPE_COUNT <= 32, "a dtype set is a 32-bit mask");

/* Input 0 of n is present and of a dtype in the set `accepted` (a mask of
 * DT(...)); the error lists the set. */
static ad_status need_dtype(ad_graph *g, ad_node *n, uint32_t accepted) {
  if (n->n_in < 1 || !n->in[0])
    return ad_fail(AD_ERR_INPUT, "%s: error: input 0 is missing", ad_node_where(g, n));
  ad_value *x = n->in[0];
  if (accepted & DT(x->dtype))
    return AD_OK;
  char list[256] = "";
  size_t len = 0;
  for (int t = 0; t < AD_DTYPE_COUNT; t++)
    if (accepted & DT(t) && len < sizeof list)
      len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "",
                              ad_dtype_name((ad_dtype)t));
  return ad_fail(AD_ERR_INPUT, "%s: error: input 0 ('%s') is %s; %s supports %s",
                 ad_node_where(g, n), x->name, ad_dtype_name(x->dtype), n->op_type, list);
}

/* The dtypes of the Reduce* ops (ONNX's, less bfloat16). */
#define REDUCE_DTYPES                                                                              \
  (DT(AD_F32) | DT(AD_F64) | DT(AD_F16) | DT(AD_I32) | DT(AD_I64) | DT(AD_U32) | DT(AD_U64))

static ad_status infer_reduce(ad_graph *g, ad_node *n) {
  int minmax = !strcmp(n->op_type, "ReduceMax") || !strcmp(n->op_type, "ReduceMin");
  /* ReduceMax/Min take int8 and uint8 from opset 12. */
  AD_TRY(need_dtype(g, n, REDUCE_DTYPES | (minmax && g->opset >= 12 ? DT(AD_I8) | DT(AD_U8) : 0)));
  ad_value *x = n->in[0], *y = n->out[0];
  ad_dtype t = x->dtype;
  int mask[AD_MAX_RANK];
  int64_t count;
  AD_TRY(reduce_mask(g, n, mask, &count));
  if (count == 0 && !ad_dtype_is_float(t) && !strcmp(n->op_type, "ReduceMean"))
    return ad_fail(AD_ERR_INPUT, "%s: error: the mean of no elements is not defined for %s",
                   ad_node_where(g, n), ad_dtype_name(t));
  int keep = (int)ad_attr_int(n, "keepdims", 1);
  y->dtype = t;
  y->rank = 0;
  for (int i = 0; i < x->rank; i++)
    if (!mask[i])
      y->dims[y->rank++] = x->dims[i];
    else if (keep)
      y->dims[y->rank++] = 1;
  return AD_OK;
}

/* The kernel's reduction kind of a Reduce* node. */
static int64_t reduce_kind(const ad_node *n) {
  static const struct {
    const char *op;
    int64_t kind;
  } kinds[] = {
      {"ReduceSum", AD_K_REDUCE_SUM},
      {"ReduceMean", AD_K_REDUCE_MEAN},
      {"ReduceMax", AD_K_REDUCE_MAX},
      {"ReduceMin", AD_K_REDUCE_MIN},
      {"ReduceProd", AD_K_REDUCE_PROD},
      {"ReduceL1", AD_K_REDUCE_L1},
      {"ReduceL2", AD_K_REDUCE_L2},
      {"ReduceLogSum", AD_K_REDUCE_LOG_SUM},
      {"ReduceLogSumExp", AD_K_REDUCE_LOG_SUM_EXP},
      {"ReduceSumSquare", AD_K_REDUCE_SUM_SQUARE},
      {"ReduceMinMaxGrad", AD_K_REDUCE_MAX},
  };
  for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
    if (!strcmp(kinds[i].op, n->op_type))
      return kinds[i].kind;
  AD_ASSERT(0);
  return 0;
}

/* {rank, dims..., mask...}: the common head of the reduction kernels' parameters. */
static int reduce_params(const ad_value *x, const int *mask, int64_t *p) {
  int r = x->rank;
  p[0] = r;
  for (int i = 0; i < r; i++) {
    p[1 + i] = x->dims[i];
    p[1 + r + i] = mask[i];
  }
  return 1 + 2 * r;
}

static ad_status lower_reduce(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0];
  int mask[AD_MAX_RANK];
  int64_t count;
  AD_TRY(reduce_mask(ad_cg_graph(cg), n, mask, &count));
  int64_t p[2 + 2 * AD_MAX_RANK];
  int r = x->rank;
  reduce_params(x, mask, p);
  int64_t kind = reduce_kind(n);
  if (x->dtype != AD_F32) {
    char fn[32];
    snprintf(fn, sizeof fn, "ad_k_reduce_%s", kernel_suffix(x->dtype));
    p[1 + 2 * r] = kind;
    int64_t ny = ad_value_numel(n->out[0]);
    LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0]),
                            ad_cg_scratch(cg, (size_t)(ny ? ny : 1) * 2 * sizeof(double))};
    ad_cg_call_kernel(cg, fn, p, 2 + 2 * r, ptrs, 3);
    return AD_OK;
  }
  if (kind != AD_K_REDUCE_SUM && kind != AD_K_REDUCE_MEAN) {
    p[1 + 2 * r] = kind;
    int64_t ny = ad_value_numel(n->out[0]);
    LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0]),
                            ad_cg_scratch(cg, (size_t)(ny ? ny : 1) * sizeof(double))};
    ad_cg_call_kernel(cg, "ad_k_reduce", p, 2 + 2 * r, ptrs, 3);
    return AD_OK;
  }
  float div = strcmp(n->op_type, "ReduceMean") || count == 0 ? 1.0f : (float)count;
  p[1 + 2 * r] = ad_k_slot(div);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_reduce_axes", p, 2 + 2 * r, ptrs, 2);
  return AD_OK;
}

/* The gradients are float32 only. */
static ad_status need_f32_grad(ad_graph *g, const ad_node *n) {
  if (n->in[0]->dtype == AD_F32)
    return AD_OK;
  return ad_fail(AD_ERR_INPUT, "%s: error: no gradient for %s input '%s' (only float32)",
                 ad_node_where(g, n), ad_dtype_name(n->in[0]->dtype), n->in[0]->name);
}

/* dx = BroadcastTo(dy viewed with the reduced axes kept as 1) [* 1/count]. */
static ad_status grad_reduce(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  AD_TRY(need_f32_grad(g, n));
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

/* ReduceMax / ReduceMin: dx = ReduceMinMaxGrad(x, y, dy) (the forward's attributes). */
static ad_status grad_reduce_minmax(ad_grad *gc, const ad_node *n) {
  AD_TRY(need_f32_grad(ad_grad_graph(gc), n));
  ad_value *args[3] = {n->in[0], n->out[0], ad_grad_out(gc, n, 0)};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "ReduceMinMaxGrad", 3, args, n->attrs, n->n_attr));
  return AD_OK;
}

static ad_status infer_minmax_grad(ad_graph *g, ad_node *n) {
  return ad_infer_same(g, n);
}

static ad_status lower_minmax_grad(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0];
  int mask[AD_MAX_RANK];
  int64_t count, p[2 + 2 * AD_MAX_RANK];
  AD_TRY(reduce_mask(ad_cg_graph(cg), n, mask, &count));
  int np = reduce_params(x, mask, p);
  int64_t ny = ad_value_numel(n->in[1]);
  LLVMValueRef ptrs[5] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, n->in[1]), ad_cg_ptr(cg, n->in[2]),
                          ad_cg_ptr(cg, n->out[0]),
                          ad_cg_scratch(cg, (size_t)(ny ? ny : 1) * sizeof(float))};
  ad_cg_call_kernel(cg, "ad_k_reduce_minmax_bwd", p, np, ptrs, 5);
  return AD_OK;
}

/* ---- ArgMax, ArgMin, Hardmax: one axis, x viewed as [outer, n, inner] ---- */

static ad_status axis_view(ad_graph *g, const ad_node *n, int64_t dflt, int flatten, int64_t *p,
                           int *axis) {
  const ad_value *x = n->in[0];
  int64_t a = ad_attr_int(n, "axis", dflt);
  if (a < -x->rank || a >= x->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)a, x->rank);
  *axis = (int)(a < 0 ? a + x->rank : a);
  p[0] = p[1] = p[2] = 1;
  for (int i = 0; i < x->rank; i++)
    p[i < *axis ? 0 : i == *axis || flatten ? 1 : 2] *= x->dims[i];
  return AD_OK;
}

static ad_status infer_arg(ad_graph *g, ad_node *n) {
  AD_TRY(need_dtype(g, n, REDUCE_DTYPES | DT(AD_I8) | DT(AD_U8) | DT(AD_I16) | DT(AD_U16)));
  int64_t p[3];
  int axis;
  AD_TRY(axis_view(g, n, 0, 0, p, &axis));
  ad_value *x = n->in[0], *y = n->out[0];
  int keep = (int)ad_attr_int(n, "keepdims", 1);
  y->dtype = AD_I64;
  y->rank = 0;
  for (int i = 0; i < x->rank; i++)
    if (i != axis)
      y->dims[y->rank++] = x->dims[i];
    else if (keep)
      y->dims[y->rank++] = 1;
  return AD_OK;
}

static ad_status lower_arg(ad_cg *cg, const ad_node *n) {
  int64_t p[5];
  int axis;
  AD_TRY(axis_view(ad_cg_graph(cg), n, 0, 0, p, &axis));
  p[3] = !strcmp(n->op_type, "ArgMin");
  p[4] = ad_attr_int(n, "select_last_index", 0);
  char fn[32] = "ad_k_argmax";
  if (n->in[0]->dtype != AD_F32)
    snprintf(fn, sizeof fn, "ad_k_argmax_%s", kernel_suffix(n->in[0]->dtype));
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, fn, p, 5, ptrs, 2);
  return AD_OK;
}

/* Hardmax before opset 13 flattens x to 2-D at axis (default 1); from 13 it
 * works along one axis (default -1). */
static ad_status hardmax_view(ad_graph *g, const ad_node *n, int64_t *p) {
  int axis;
  int old = n->op->min_opset < 13;
  return axis_view(g, n, old ? 1 : -1, old, p, &axis);
}

static ad_status infer_hardmax(ad_graph *g, ad_node *n) {
  AD_TRY(need_dtype(g, n, DT(AD_F32) | DT(AD_F64) | DT(AD_F16)));
  int64_t p[3];
  AD_TRY(hardmax_view(g, n, p));
  return ad_infer_same(g, n);
}

static ad_status lower_hardmax(ad_cg *cg, const ad_node *n) {
  int64_t p[3];
  AD_TRY(hardmax_view(ad_cg_graph(cg), n, p));
  char fn[32] = "ad_k_hardmax";
  if (n->in[0]->dtype != AD_F32)
    snprintf(fn, sizeof fn, "ad_k_hardmax_%s", kernel_suffix(n->in[0]->dtype));
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, fn, p, 3, ptrs, 2);
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

#define REDUCE_NG(NAME, GRAD)                                                                      \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = 1, .max_opset = AD_OPSET_MAX, .min_in = 1,            \
    .max_in = 1, .n_out = 1, .infer = infer_reduce, .grad = GRAD, .lower_kind = AD_LOWER_CALL,     \
    .lower = lower_reduce, .cost = cost_reduce                                                     \
  }
#define AXIS_OP(NAME, LO, HI, INFER, LOWER)                                                        \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = HI, .min_in = 1, .max_in = 1,        \
    .n_out = 1, .infer = INFER, .lower_kind = AD_LOWER_CALL, .lower = LOWER, .cost = cost_reduce   \
  }

const ad_op ad_ops_reduce[] = {
    REDUCE("ReduceSum", 1, 12, 1),
    REDUCE("ReduceSum", 13, AD_OPSET_MAX, 2),
    /* Opset 18 moves ReduceMean's axes to an input, beyond AD_OPSET_MAX. */
    REDUCE("ReduceMean", 1, AD_OPSET_MAX, 1),
    /* The others keep their axes attribute up to opset 17. */
    REDUCE_NG("ReduceMax", grad_reduce_minmax),
    REDUCE_NG("ReduceMin", grad_reduce_minmax),
    REDUCE_NG("ReduceProd", NULL),
    REDUCE_NG("ReduceL1", NULL),
    REDUCE_NG("ReduceL2", NULL),
    REDUCE_NG("ReduceLogSum", NULL),
    REDUCE_NG("ReduceLogSumExp", NULL),
    REDUCE_NG("ReduceSumSquare", NULL),
    AXIS_OP("ArgMax", 1, AD_OPSET_MAX, infer_arg, lower_arg),
    AXIS_OP("ArgMin", 1, AD_OPSET_MAX, infer_arg, lower_arg),
    AXIS_OP("Hardmax", 1, 12, infer_hardmax, lower_hardmax),
    AXIS_OP("Hardmax", 13, AD_OPSET_MAX, infer_hardmax, lower_hardmax),
    {.name = "ReduceMinMaxGrad",
     .domain = "ad",
     .min_in = 3,
     .max_in = 3,
     .n_out = 1,
     .infer = infer_minmax_grad,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_minmax_grad,
     .cost = cost_reduce},
    {0},
};
