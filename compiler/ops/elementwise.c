/*
 * compiler/ops/elementwise.c: the ONNX elementwise ops (arithmetic, math
 * functions, activations, comparisons, logic, Where, Cast) and the internal
 * elementwise ops their gradients use. All are EW lowerings: codegen fuses
 * chains of them into single loops; broadcasting follows numpy, and the
 * gradient of a broadcast input is summed back with ReduceSumTo.
 *
 * Dtypes: every numeric type and bool. Each op's shape inference checks its
 * inputs against the types ONNX allows at the model's opset. The scalar
 * emitters are driven by the LLVM type of their operands (codegen.h: float,
 * double, i64, i32, i16, i8, i1 = bool; float16 and bfloat16 compute in float
 * and are rounded after each op), so one emitter serves every width; where
 * signedness matters it comes from the node's input dtype. float32 takes the
 * same instructions as always. Integer semantics follow onnxruntime: Div
 * truncates, Add/Sub/Mul wrap. Gradients are float32 only.
 */
#include "../codegen.h"
#include "../op.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- dtype sets ---- */

#define T_F ((1u << AD_F32) | (1u << AD_F64) | (1u << AD_F16) | (1u << AD_BF16))
#define T_I ((1u << AD_I64) | (1u << AD_I32) | (1u << AD_I16) | (1u << AD_I8))
#define T_U ((1u << AD_U8) | (1u << AD_U16) | (1u << AD_U32) | (1u << AD_U64))
#define T_B (1u << AD_BOOL)
#define T_NUM (T_F | T_I | T_U)
#define T_ALL (T_NUM | T_B)
#define SAME_AS_IN0 (-1)

static const char *mask_str(unsigned mask) {
  static char buf[128];
  buf[0] = 0;
  for (int t = 0; t < AD_DTYPE_COUNT; t++)
    if (mask >> t & 1) {
      if (buf[0])
        strcat(buf, ", ");
      strcat(buf, ad_dtype_name((ad_dtype)t));
    }
  return buf;
}

static ad_status need_input(ad_graph *g, ad_node *n, int i) {
  if (i >= n->n_in || !n->in[i])
    return ad_fail(AD_ERR_INPUT, "%s: error: input %d is missing", ad_node_where(g, n), i);
  return AD_OK;
}

/* Input i (present) has a dtype in mask. */
static ad_status need_type(ad_graph *g, ad_node *n, int i, unsigned mask) {
  AD_TRY(need_input(g, n, i));
  ad_value *x = n->in[i];
  if (!(mask >> x->dtype & 1))
    return ad_fail(AD_ERR_INPUT, "%s: error: input %d ('%s') is %s; supported at opset %d: %s",
                   ad_node_where(g, n), i, x->name, ad_dtype_name(x->dtype), g->opset,
                   mask_str(mask));
  return AD_OK;
}

/* out = numpy broadcast of the present inputs, dtype dt. */
static ad_status set_broadcast(ad_graph *g, ad_node *n, ad_dtype dt) {
  int r = 0, first = 1;
  int64_t dims[AD_MAX_RANK];
  for (int i = 0; i < n->n_in; i++) {
    ad_value *x = n->in[i];
    if (!x)
      continue;
    if (first) {
      r = x->rank;
      memcpy(dims, x->dims, sizeof(int64_t) * (size_t)r);
      first = 0;
    } else if (ad_broadcast_shape(r, dims, x->rank, x->dims, &r, dims) != AD_OK) {
      ad_error_prefix("%s: error", ad_node_where(g, n));
      return AD_ERR_INPUT;
    }
  }
  ad_value *y = n->out[0];
  y->dtype = dt;
  y->rank = r;
  memcpy(y->dims, dims, sizeof(int64_t) * (size_t)r);
  return AD_OK;
}

/* The common rule: every present input has in[0]'s dtype, which is in mask;
 * out is their broadcast, of dtype out (or in[0]'s). */
static ad_status ew_infer(ad_graph *g, ad_node *n, unsigned mask, int out) {
  AD_TRY(need_type(g, n, 0, mask));
  for (int i = 1; i < n->n_in; i++) {
    ad_value *x = n->in[i];
    if (x && x->dtype != n->in[0]->dtype)
      return ad_fail(AD_ERR_INPUT, "%s: error: inputs have different types (%s and %s)",
                     ad_node_where(g, n), ad_dtype_name(n->in[0]->dtype), ad_dtype_name(x->dtype));
  }
  return set_broadcast(g, n, out == SAME_AS_IN0 ? n->in[0]->dtype : (ad_dtype)out);
}

#define INFER(NAME, MASK, OUT)                                                                     \
  static ad_status NAME(ad_graph *g, ad_node *n) {                                                 \
    int opset = g->opset;                                                                          \
    (void)opset;                                                                                   \
    return ew_infer(g, n, MASK, OUT);                                                              \
  }

INFER(infer_float, T_F, SAME_AS_IN0)
INFER(infer_arith, opset >= 14 ? T_NUM : T_F | T_I, SAME_AS_IN0)
INFER(infer_signed, T_F | T_I, SAME_AS_IN0)
INFER(infer_numeric, T_NUM, SAME_AS_IN0)
INFER(infer_relu, opset >= 14 ? T_F | T_I : T_F, SAME_AS_IN0)
INFER(infer_maxmin, opset >= 12 ? T_NUM : T_F, SAME_AS_IN0)
INFER(infer_compare, opset >= 9 ? T_NUM : T_F, AD_BOOL)
INFER(infer_equal, opset >= 11 ? T_ALL : T_I | T_B, AD_BOOL)
INFER(infer_logic, T_B, AD_BOOL)
INFER(infer_float_test, T_F, AD_BOOL)
INFER(infer_bitshift_types, T_U, SAME_AS_IN0)

static ad_status infer_bitshift(ad_graph *g, ad_node *n) {
  const char *d = ad_attr_str(n, "direction", "");
  if (strcmp(d, "LEFT") && strcmp(d, "RIGHT"))
    return ad_fail(AD_ERR_INPUT, "%s: error: direction must be 'LEFT' or 'RIGHT', got '%s'",
                   ad_node_where(g, n), d);
  return infer_bitshift_types(g, n);
}

static ad_status infer_mod(ad_graph *g, ad_node *n) {
  int64_t fm = ad_attr_int(n, "fmod", 0);
  if (fm != 0 && fm != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: fmod must be 0 or 1, got %lld", ad_node_where(g, n),
                   (long long)fm);
  AD_TRY(ew_infer(g, n, T_NUM, SAME_AS_IN0));
  if (ad_dtype_is_float(n->in[0]->dtype) && fm == 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: float inputs need fmod=1", ad_node_where(g, n));
  return AD_OK;
}

/* Clip: min and max are optional scalars (a one-element tensor is accepted
 * too) of x's dtype; y has x's shape. */
static ad_status infer_clip(ad_graph *g, ad_node *n) {
  AD_TRY(ew_infer(g, n, g->opset >= 12 ? T_NUM : T_F, SAME_AS_IN0));
  ad_value *x = n->in[0];
  for (int i = 1; i < n->n_in; i++) {
    ad_value *b = n->in[i];
    if (b && (ad_value_numel(b) != 1 || b->rank > x->rank))
      return ad_fail(AD_ERR_INPUT, "%s: error: %s ('%s') must be a scalar, got shape %s",
                     ad_node_where(g, n), i == 1 ? "min" : "max", b->name,
                     ad_shape_str(b->rank, b->dims));
  }
  return AD_OK;
}

/* PRelu: slope broadcasts to x (unidirectionally); y has x's shape. */
static ad_status infer_prelu(ad_graph *g, ad_node *n) {
  AD_TRY(ew_infer(g, n, g->opset >= 9 ? T_F | T_I : T_F, SAME_AS_IN0));
  ad_value *x = n->in[0], *y = n->out[0];
  if (y->rank != x->rank || memcmp(y->dims, x->dims, sizeof(int64_t) * (size_t)x->rank))
    return ad_fail(AD_ERR_INPUT, "%s: error: slope %s does not broadcast to X %s",
                   ad_node_where(g, n), ad_shape_str(n->in[1]->rank, n->in[1]->dims),
                   ad_shape_str(x->rank, x->dims));
  return AD_OK;
}

/* Pow: base and exponent may differ in type from opset 12; y has the base's. */
static ad_status infer_pow(ad_graph *g, ad_node *n) {
  unsigned base = g->opset >= 12 ? T_F | T_I : T_F;
  unsigned expo = g->opset >= 12 ? T_NUM : T_F;
  AD_TRY(need_type(g, n, 0, base));
  AD_TRY(need_type(g, n, 1, expo));
  return set_broadcast(g, n, n->in[0]->dtype);
}

static ad_status infer_where(ad_graph *g, ad_node *n) {
  AD_TRY(need_type(g, n, 0, T_B));
  AD_TRY(need_type(g, n, 1, T_ALL));
  AD_TRY(need_type(g, n, 2, T_ALL));
  if (n->in[1]->dtype != n->in[2]->dtype)
    return ad_fail(AD_ERR_INPUT, "%s: error: X and Y have different types (%s and %s)",
                   ad_node_where(g, n), ad_dtype_name(n->in[1]->dtype),
                   ad_dtype_name(n->in[2]->dtype));
  return set_broadcast(g, n, n->in[1]->dtype);
}

static ad_status infer_cast(ad_graph *g, ad_node *n) {
  int64_t code = ad_attr_int(n, "to", -1);
  ad_dtype to;
  if (!ad_op_dtype_of_onnx(code, &to))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: cast to ONNX type %lld is not supported (numeric types and bool "
                   "only)",
                   ad_node_where(g, n), (long long)code);
  AD_TRY(need_type(g, n, 0, T_ALL));
  return set_broadcast(g, n, to);
}

static ad_status infer_cast_like(ad_graph *g, ad_node *n) {
  AD_TRY(need_type(g, n, 0, T_ALL));
  AD_TRY(need_type(g, n, 1, T_ALL));
  ad_value *x = n->in[0], *y = n->out[0];
  y->dtype = n->in[1]->dtype;
  y->rank = x->rank;
  memcpy(y->dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
  return AD_OK;
}

/* Internal gradient ops: float32 gradient and saved values (an exponent may be
 * an integer); out is their broadcast. */
static ad_status infer_grad(ad_graph *g, ad_node *n) {
  AD_ASSERT(n->in[0] && n->in[0]->dtype == AD_F32);
  return set_broadcast(g, n, AD_F32);
}

/* ReduceSumTo: attribute "shape" is the output shape; input broadcasts to... from it. */
static ad_status infer_reduce_to(ad_graph *g, ad_node *n) {
  const int64_t *shape;
  int r = ad_attr_ints(n, "shape", &shape);
  AD_ASSERT(r >= 0 && r <= n->in[0]->rank);
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  y->rank = r;
  for (int i = 0; i < r; i++) {
    int64_t d = n->in[0]->dims[n->in[0]->rank - r + i];
    AD_ASSERT(shape[i] == d || shape[i] == 1);
    y->dims[i] = shape[i];
  }
  return AD_OK;
}

static ad_status infer_broadcast_to(ad_graph *g, ad_node *n) {
  const int64_t *shape;
  int r = ad_attr_ints(n, "shape", &shape);
  AD_ASSERT(r >= n->in[0]->rank);
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  y->rank = r;
  memcpy(y->dims, shape, sizeof(int64_t) * (size_t)r);
  return AD_OK;
}

/* ---- scalar helpers, driven by the operand's LLVM type ---- */

static int is_float(LLVMValueRef v) {
  LLVMTypeKind k = LLVMGetTypeKind(LLVMTypeOf(v));
  return k == LLVMFloatTypeKind || k == LLVMDoubleTypeKind;
}

static int is_double(LLVMValueRef v) {
  return LLVMGetTypeKind(LLVMTypeOf(v)) == LLVMDoubleTypeKind;
}

/* Input i of n is of an unsigned type (uint8..64, bool). */
static int uns(const ad_node *n, int i) {
  return n->in[i] && ad_dtype_is_unsigned(n->in[i]->dtype);
}

/* Constant x of v's type (an integer x in range of it). */
static LLVMValueRef cst(LLVMValueRef like, double x) {
  LLVMTypeRef t = LLVMTypeOf(like);
  if (is_float(like))
    return LLVMConstReal(t, x);
  return LLVMConstInt(t, (unsigned long long)(int64_t)x, 1);
}

/* The float function `base` for x's width: "llvm.exp" -> "llvm.exp.f32" or
 * ".f64"; a libm name ("tan") -> "tanf" or "tan". */
static const char *fn_name(const char *base, LLVMValueRef x, char *buf, size_t cap) {
  if (!strncmp(base, "llvm.", 5))
    snprintf(buf, cap, "%s.%s", base, is_double(x) ? "f64" : "f32");
  else
    snprintf(buf, cap, "%s%s", base, is_double(x) ? "" : "f");
  return buf;
}

static LLVMValueRef call1(ad_cg *cg, const char *base, LLVMValueRef x) {
  char name[64];
  return ad_cg_intrinsic(cg, fn_name(base, x, name, sizeof name), 1, &x);
}

enum { CMP_EQ, CMP_LT, CMP_GT, CMP_LE, CMP_GE };

/* Ordered float comparisons (false on NaN); integer ones signed, or unsigned
 * when u. */
static LLVMValueRef ucmp(ad_cg *cg, int op, LLVMValueRef a, LLVMValueRef b, int u) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  if (is_float(a)) {
    static const LLVMRealPredicate fp[] = {LLVMRealOEQ, LLVMRealOLT, LLVMRealOGT, LLVMRealOLE,
                                           LLVMRealOGE};
    return LLVMBuildFCmp(bd, fp[op], a, b, "");
  }
  static const LLVMIntPredicate sp[] = {LLVMIntEQ, LLVMIntSLT, LLVMIntSGT, LLVMIntSLE, LLVMIntSGE};
  static const LLVMIntPredicate up[] = {LLVMIntEQ, LLVMIntULT, LLVMIntUGT, LLVMIntULE, LLVMIntUGE};
  return LLVMBuildICmp(bd, u ? up[op] : sp[op], a, b, "");
}

/* A float or signed comparison. */
static LLVMValueRef cmp(ad_cg *cg, int op, LLVMValueRef a, LLVMValueRef b) {
  return ucmp(cg, op, a, b, 0);
}

static LLVMValueRef sel(ad_cg *cg, LLVMValueRef c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(ad_cg_builder(cg), c, a, b, "");
}

static LLVMValueRef add(ad_cg *cg, LLVMValueRef a, LLVMValueRef b) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  return is_float(a) ? LLVMBuildFAdd(bd, a, b, "") : LLVMBuildAdd(bd, a, b, "");
}
static LLVMValueRef sub(ad_cg *cg, LLVMValueRef a, LLVMValueRef b) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  return is_float(a) ? LLVMBuildFSub(bd, a, b, "") : LLVMBuildSub(bd, a, b, "");
}
static LLVMValueRef mul(ad_cg *cg, LLVMValueRef a, LLVMValueRef b) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  return is_float(a) ? LLVMBuildFMul(bd, a, b, "") : LLVMBuildMul(bd, a, b, "");
}
static LLVMValueRef fdiv(ad_cg *cg, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFDiv(ad_cg_builder(cg), a, b, "");
}
static LLVMValueRef neg(ad_cg *cg, LLVMValueRef a) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  return is_float(a) ? LLVMBuildFNeg(bd, a, "") : LLVMBuildNeg(bd, a, "");
}
static LLVMValueRef fabs_(ad_cg *cg, LLVMValueRef x) {
  return call1(cg, "llvm.fabs", x);
}

/* max/min as numpy's maximum/minimum: a NaN in either operand propagates. */
static LLVMValueRef max2(ad_cg *cg, LLVMValueRef a, LLVMValueRef b, int is_max, int u) {
  LLVMValueRef t = sel(cg, ucmp(cg, is_max ? CMP_LT : CMP_GT, a, b, u), b, a);
  if (!is_float(a))
    return t;
  LLVMValueRef b_nan = LLVMBuildFCmp(ad_cg_builder(cg), LLVMRealUNO, b, b, "");
  return sel(cg, b_nan, b, t);
}

/* Integer division and remainder (unsigned when u) with a zero divisor give 0
 * rather than a trap; INT_MIN / -1 wraps. */
static LLVMValueRef int_divrem(ad_cg *cg, LLVMValueRef a, LLVMValueRef b, int rem, int u) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef zero = cst(a, 0), one = cst(a, 1);
  LLVMValueRef bz = cmp(cg, CMP_EQ, b, zero);
  if (u) {
    LLVMValueRef d = sel(cg, bz, one, b);
    LLVMValueRef q = rem ? LLVMBuildURem(bd, a, d, "") : LLVMBuildUDiv(bd, a, d, "");
    return sel(cg, bz, zero, q);
  }
  LLVMValueRef bm1 = cmp(cg, CMP_EQ, b, cst(a, -1));
  LLVMValueRef d = sel(cg, LLVMBuildOr(bd, bz, bm1, ""), one, b);
  LLVMValueRef q = rem ? LLVMBuildSRem(bd, a, d, "") : LLVMBuildSDiv(bd, a, d, "");
  q = sel(cg, bm1, rem ? zero : neg(cg, a), q);
  return sel(cg, bz, zero, q);
}

/* Converts a scalar of dtype `from` to dtype `to` like onnxruntime's Cast:
 * float -> int truncates, anything -> bool is "!= 0", bool -> number is 0 or
 * 1; floats round to nearest even. float16 and bfloat16 are reached through
 * float32 (their register type), as onnxruntime and PyTorch do: a float64 is
 * rounded twice, where numpy rounds once. */
static LLVMValueRef convert(ad_cg *cg, LLVMValueRef v, ad_dtype from, ad_dtype to) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMTypeRef tt = ad_cg_type(cg, to);
  int u = ad_dtype_is_unsigned(from);
  if (to == AD_BOOL)
    return is_float(v) ? LLVMBuildFCmp(bd, LLVMRealUNE, v, cst(v, 0), "")
                       : LLVMBuildICmp(bd, LLVMIntNE, v, cst(v, 0), "");
  if (LLVMTypeOf(v) == tt)
    return v;
  if (ad_dtype_is_float(to)) {
    if (is_float(v))
      return is_double(v) ? LLVMBuildFPTrunc(bd, v, tt, "") : LLVMBuildFPExt(bd, v, tt, "");
    return u ? LLVMBuildUIToFP(bd, v, tt, "") : LLVMBuildSIToFP(bd, v, tt, "");
  }
  if (is_float(v)) {
    if (to == AD_U64)
      return LLVMBuildFPToUI(bd, v, tt, "");
    if (ad_dtype_is_unsigned(to)) /* wraps like numpy's astype for in-range int64 values */
      return LLVMBuildTrunc(bd, LLVMBuildFPToSI(bd, v, ad_cg_type(cg, AD_I64), ""), tt, "");
    return LLVMBuildFPToSI(bd, v, tt, "");
  }
  return LLVMBuildIntCast2(bd, v, tt, !u, "");
}

/* ---- scalar emission: arithmetic ---- */

static LLVMValueRef emit_add(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return add(cg, in[0], in[1]);
}
static LLVMValueRef emit_sub(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return sub(cg, in[0], in[1]);
}
static LLVMValueRef emit_mul(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return mul(cg, in[0], in[1]);
}
static LLVMValueRef emit_div(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return is_float(in[0]) ? fdiv(cg, in[0], in[1]) : int_divrem(cg, in[0], in[1], 0, uns(n, 0));
}
static LLVMValueRef emit_neg(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return neg(cg, in[0]);
}
static LLVMValueRef emit_copy(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return in[0];
}
static LLVMValueRef emit_scale(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFMul(ad_cg_builder(cg), in[0], cst(in[0], ad_attr_float(n, "alpha", 1)), "");
}

static LLVMValueRef emit_abs(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  if (is_float(x))
    return fabs_(cg, x);
  if (uns(n, 0))
    return x;
  return sel(cg, cmp(cg, CMP_LT, x, cst(x, 0)), neg(cg, x), x);
}

/* sign: -1, 0 or 1; NaN stays NaN (numpy). */
static LLVMValueRef emit_sign(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  LLVMValueRef rest = is_float(x) ? x : cst(x, 0);
  if (!uns(n, 0))
    rest = sel(cg, cmp(cg, CMP_LT, x, cst(x, 0)), cst(x, -1), rest);
  return sel(cg, ucmp(cg, CMP_GT, x, cst(x, 0), uns(n, 0)), cst(x, 1), rest);
}

static LLVMValueRef emit_max(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef r = in[0];
  for (int i = 1; i < n->n_in; i++)
    r = max2(cg, r, in[i], 1, uns(n, 0));
  return r;
}
static LLVMValueRef emit_min(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef r = in[0];
  for (int i = 1; i < n->n_in; i++)
    r = max2(cg, r, in[i], 0, uns(n, 0));
  return r;
}
static LLVMValueRef emit_sum(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef r = in[0];
  for (int i = 1; i < n->n_in; i++)
    r = add(cg, r, in[i]);
  return r;
}
static LLVMValueRef emit_mean(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return fdiv(cg, emit_sum(cg, n, in), cst(in[0], n->n_in));
}

/* Clip(x, min, max) = min(max(x, lo), hi); NaN passes; a missing bound is no bound. */
static LLVMValueRef emit_clip(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef v = in[0];
  int u = uns(n, 0);
  if (n->n_in > 1 && in[1])
    v = sel(cg, ucmp(cg, CMP_LT, v, in[1], u), in[1], v);
  if (n->n_in > 2 && in[2])
    v = sel(cg, ucmp(cg, CMP_LT, in[2], v, u), in[2], v);
  return v;
}

/* Clip-6: min and max are float attributes, by default -/+FLT_MAX (so
 * infinities clip to them, as ONNX's reference does). */
static void clip6_bounds(const ad_node *n, float *lo, float *hi) {
  *lo = ad_attr_float(n, "min", -FLT_MAX);
  *hi = ad_attr_float(n, "max", FLT_MAX);
}

static LLVMValueRef emit_clip6(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  float lo, hi;
  clip6_bounds(n, &lo, &hi);
  LLVMValueRef v = in[0], l = cst(v, lo), h = cst(v, hi);
  v = sel(cg, cmp(cg, CMP_LT, v, l), l, v);
  return sel(cg, cmp(cg, CMP_LT, h, v), h, v);
}

/* Pow: a float base uses pow of its width (the exponent converted to it); an
 * integer base goes through double and truncates back (numpy's int ** int for
 * the values tests use). */
static LLVMValueRef emit_pow(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef x = in[0], e = in[1];
  char name[32];
  if (is_float(x)) {
    ad_dtype xt = is_double(x) ? AD_F64 : AD_F32;
    LLVMValueRef args[2] = {x, convert(cg, e, n->in[1]->dtype, xt)};
    return ad_cg_intrinsic(cg, fn_name("llvm.pow", x, name, sizeof name), 2, args);
  }
  LLVMTypeRef f64 = ad_cg_type(cg, AD_F64);
  LLVMValueRef args[2] = {uns(n, 0) ? LLVMBuildUIToFP(bd, x, f64, "")
                                    : LLVMBuildSIToFP(bd, x, f64, ""),
                          convert(cg, e, n->in[1]->dtype, AD_F64)};
  LLVMValueRef r = ad_cg_intrinsic(cg, "llvm.pow.f64", 2, args);
  return uns(n, 0) ? LLVMBuildFPToUI(bd, r, LLVMTypeOf(x), "")
                   : LLVMBuildFPToSI(bd, r, LLVMTypeOf(x), "");
}

/* Mod: fmod=1 is C's fmod (sign of the dividend); fmod=0 is Python's % (sign
 * of the divisor), integers only. */
static LLVMValueRef emit_mod(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef a = in[0], b = in[1];
  if (is_float(a))
    return LLVMBuildFRem(bd, a, b, "");
  LLVMValueRef r = int_divrem(cg, a, b, 1, uns(n, 0));
  if (ad_attr_int(n, "fmod", 0) || uns(n, 0))
    return r;
  LLVMValueRef zero = cst(a, 0);
  LLVMValueRef differ = LLVMBuildXor(bd, cmp(cg, CMP_LT, r, zero), cmp(cg, CMP_LT, b, zero), "");
  LLVMValueRef fix = LLVMBuildAnd(bd, differ, LLVMBuildICmp(bd, LLVMIntNE, r, zero, ""), "");
  return sel(cg, fix, add(cg, r, b), r);
}

/* BitShift on unsigned types: shifting by the width or more gives 0. */
static LLVMValueRef emit_bitshift(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef a = in[0], b = in[1];
  int left = !strcmp(ad_attr_str(n, "direction", ""), "LEFT");
  LLVMValueRef s = left ? LLVMBuildShl(bd, a, b, "") : LLVMBuildLShr(bd, a, b, "");
  LLVMValueRef wide = ucmp(cg, CMP_GE, b, cst(b, LLVMGetIntTypeWidth(LLVMTypeOf(a))), 1);
  return sel(cg, wide, cst(a, 0), s);
}

/* ---- scalar emission: float functions ---- */

/* Float functions of one argument that are one call: an LLVM intrinsic or libm
 * (named for double; fn_name picks the width). */
static const struct {
  const char *op, *fn;
} unary_fns[] = {
    {"Exp", "llvm.exp"},     {"Log", "llvm.log"},   {"Sqrt", "llvm.sqrt"},
    {"Floor", "llvm.floor"}, {"Ceil", "llvm.ceil"}, {"Round", "llvm.roundeven"},
    {"Sin", "llvm.sin"},     {"Cos", "llvm.cos"},   {"Tan", "tan"},
    {"Asin", "asin"},        {"Acos", "acos"},      {"Atan", "atan"},
    {"Sinh", "sinh"},        {"Cosh", "cosh"},      {"Asinh", "asinh"},
    {"Acosh", "acosh"},      {"Atanh", "atanh"},    {"Erf", "erf"},
    {"Tanh", "tanh"},
};

static LLVMValueRef emit_unary_fn(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  for (size_t i = 0; i < sizeof unary_fns / sizeof *unary_fns; i++)
    if (!strcmp(unary_fns[i].op, n->op_type))
      return call1(cg, unary_fns[i].fn, in[0]);
  AD_ASSERT(!"no function for this op");
  return NULL;
}

static LLVMValueRef emit_reciprocal(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return fdiv(cg, cst(in[0], 1), in[0]);
}

/* relu(x) = x > 0 ? x : 0 in the form that keeps NaN propagation like PyTorch's. */
static LLVMValueRef emit_relu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef zero = cst(in[0], 0);
  return sel(cg, cmp(cg, CMP_LE, in[0], zero), zero, in[0]);
}

/* ReluGrad(dy, y) = y > 0 ? dy : 0 (PyTorch's threshold_backward on the result). */
static LLVMValueRef emit_relu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef gt = LLVMBuildFCmp(b, LLVMRealOGT, in[1], ad_cg_f32(cg, 0), "");
  return LLVMBuildSelect(b, gt, in[0], ad_cg_f32(cg, 0), "");
}

static LLVMValueRef emit_sigmoid(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef one = cst(in[0], 1);
  return fdiv(cg, one, add(cg, one, call1(cg, "llvm.exp", neg(cg, in[0]))));
}

/* SigmoidGrad(dy, y) = dy * (1 - y) * y, PyTorch's order of operations. */
static LLVMValueRef emit_sigmoid_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef one_minus = LLVMBuildFSub(b, ad_cg_f32(cg, 1), in[1], "");
  return LLVMBuildFMul(b, LLVMBuildFMul(b, in[0], one_minus, ""), in[1], "");
}

/* TanhGrad(dy, y) = dy * (1 - y * y). */
static LLVMValueRef emit_tanh_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef yy = LLVMBuildFMul(b, in[1], in[1], "");
  return LLVMBuildFMul(b, in[0], LLVMBuildFSub(b, ad_cg_f32(cg, 1), yy, ""), "");
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)): log(1 + e^x) without overflow. */
static LLVMValueRef emit_softplus(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  LLVMValueRef pos = sel(cg, cmp(cg, CMP_GT, x, cst(x, 0)), x, cst(x, 0));
  LLVMValueRef e = call1(cg, "llvm.exp", neg(cg, fabs_(cg, x)));
  return add(cg, pos, call1(cg, "log1p", e));
}

static LLVMValueRef emit_softsign(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return fdiv(cg, in[0], add(cg, cst(in[0], 1), fabs_(cg, in[0])));
}

/* x > 0 ? x : alpha * (e^x - 1), with expm1 for accuracy near 0. */
static LLVMValueRef elu(ad_cg *cg, LLVMValueRef x, float alpha) {
  LLVMValueRef e = mul(cg, cst(x, alpha), call1(cg, "expm1", x));
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, 0)), x, e);
}

static LLVMValueRef emit_elu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return elu(cg, in[0], ad_attr_float(n, "alpha", 1.0f));
}

static LLVMValueRef emit_selu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  float alpha = ad_attr_float(n, "alpha", 1.67326319217681884765625f);
  float gamma = ad_attr_float(n, "gamma", 1.05070102214813232421875f);
  return mul(cg, cst(in[0], gamma), elu(cg, in[0], alpha));
}

/* celu(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)). */
static LLVMValueRef emit_celu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  float alpha = ad_attr_float(n, "alpha", 1.0f);
  LLVMValueRef e = mul(cg, cst(x, alpha), call1(cg, "expm1", fdiv(cg, x, cst(x, alpha))));
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, 0)), x, e);
}

static LLVMValueRef emit_leaky_relu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  LLVMValueRef ax = mul(cg, x, cst(x, ad_attr_float(n, "alpha", 0.01f)));
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, 0)), x, ax);
}

static LLVMValueRef emit_prelu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, 0)), x, mul(cg, x, in[1]));
}

/* max(0, min(1, alpha * x + beta)); NaN passes. */
static LLVMValueRef hard_sigmoid(ad_cg *cg, LLVMValueRef x, float alpha, float beta) {
  LLVMValueRef v = add(cg, mul(cg, x, cst(x, alpha)), cst(x, beta));
  v = sel(cg, cmp(cg, CMP_GT, v, cst(x, 1)), cst(x, 1), v);
  return sel(cg, cmp(cg, CMP_LT, v, cst(x, 0)), cst(x, 0), v);
}

static LLVMValueRef emit_hard_sigmoid(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return hard_sigmoid(cg, in[0], ad_attr_float(n, "alpha", 0.2f), ad_attr_float(n, "beta", 0.5f));
}

static LLVMValueRef emit_hard_swish(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return mul(cg, in[0], hard_sigmoid(cg, in[0], 1.0f / 6.0f, 0.5f));
}

static LLVMValueRef emit_thresholded_relu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, ad_attr_float(n, "alpha", 1.0f))), x, cst(x, 0));
}

static LLVMValueRef emit_shrink(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[0];
  float bias = ad_attr_float(n, "bias", 0.0f), lambd = ad_attr_float(n, "lambd", 0.5f);
  LLVMValueRef hi = sel(cg, cmp(cg, CMP_GT, x, cst(x, lambd)), sub(cg, x, cst(x, bias)), cst(x, 0));
  return sel(cg, cmp(cg, CMP_LT, x, cst(x, -lambd)), add(cg, x, cst(x, bias)), hi);
}

/* ---- scalar emission: comparisons, logic, selection, conversion ---- */

static LLVMValueRef emit_equal(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ucmp(cg, CMP_EQ, in[0], in[1], uns(n, 0));
}
static LLVMValueRef emit_less(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ucmp(cg, CMP_LT, in[0], in[1], uns(n, 0));
}
static LLVMValueRef emit_greater(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ucmp(cg, CMP_GT, in[0], in[1], uns(n, 0));
}
static LLVMValueRef emit_less_equal(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ucmp(cg, CMP_LE, in[0], in[1], uns(n, 0));
}
static LLVMValueRef emit_greater_equal(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ucmp(cg, CMP_GE, in[0], in[1], uns(n, 0));
}
static LLVMValueRef emit_and(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildAnd(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_or(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildOr(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_xor(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildXor(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_not(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildNot(ad_cg_builder(cg), in[0], "");
}
static LLVMValueRef emit_where(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return sel(cg, in[0], in[1], in[2]);
}
static LLVMValueRef emit_isnan(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFCmp(ad_cg_builder(cg), LLVMRealUNO, in[0], in[0], "");
}
static LLVMValueRef emit_isinf(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef x = in[0];
  LLVMValueRef r = LLVMConstInt(ad_cg_type(cg, AD_BOOL), 0, 0);
  if (ad_attr_int(n, "detect_positive", 1))
    r = LLVMBuildOr(bd, r, cmp(cg, CMP_EQ, x, cst(x, INFINITY)), "");
  if (ad_attr_int(n, "detect_negative", 1))
    r = LLVMBuildOr(bd, r, cmp(cg, CMP_EQ, x, cst(x, -INFINITY)), "");
  return r;
}
static LLVMValueRef emit_cast(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return convert(cg, in[0], n->in[0]->dtype, n->out[0]->dtype);
}

/* ---- scalar emission: gradient ops (PyTorch's formulas and order) ---- */

/* SqrtGrad(dy, y) = dy / (2 y). */
static LLVMValueRef emit_sqrt_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return fdiv(cg, in[0], add(cg, in[1], in[1]));
}

/* PowGrad(dy, x, e) = e == 0 ? 0 : dy * (e * x^(e-1)). */
static LLVMValueRef emit_pow_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef dy = in[0], x = in[1], e = convert(cg, in[2], n->in[2]->dtype, AD_F32);
  LLVMValueRef args[2] = {x, sub(cg, e, cst(e, 1))};
  LLVMValueRef d = mul(cg, e, ad_cg_intrinsic(cg, "llvm.pow.f32", 2, args));
  return sel(cg, cmp(cg, CMP_EQ, e, cst(e, 0)), cst(dy, 0), mul(cg, dy, d));
}

/* PowGradExp(dy, x, e, y) = x == 0 && e >= 0 ? 0 : dy * (y * log(x)). */
static LLVMValueRef emit_pow_grad_exp(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef dy = in[0], x = in[1], e = in[2];
  LLVMValueRef g = mul(cg, dy, mul(cg, in[3], call1(cg, "llvm.log", x)));
  LLVMValueRef z =
      LLVMBuildAnd(bd, cmp(cg, CMP_EQ, x, cst(x, 0)), cmp(cg, CMP_GE, e, cst(e, 0)), "");
  return sel(cg, z, cst(dy, 0), g);
}

/* ErfGrad(dy, x) = 2/sqrt(pi) * exp(-x^2) * dy. */
static LLVMValueRef emit_erf_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef x = in[1];
  LLVMValueRef e = call1(cg, "llvm.exp", neg(cg, mul(cg, x, x)));
  return mul(cg, mul(cg, cst(x, 1.1283791670955126), e), in[0]);
}

/* ClipGrad(dy, x, lo, hi) = lo <= x <= hi ? dy : 0 (torch.clamp's backward). */
static LLVMValueRef emit_clip_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef x = in[1];
  LLVMValueRef ok = LLVMConstInt(ad_cg_type(cg, AD_BOOL), 1, 0);
  if (n->n_in > 2 && in[2])
    ok = LLVMBuildAnd(bd, ok, cmp(cg, CMP_GE, x, in[2]), "");
  if (n->n_in > 3 && in[3])
    ok = LLVMBuildAnd(bd, ok, cmp(cg, CMP_LE, x, in[3]), "");
  return sel(cg, ok, in[0], cst(in[0], 0));
}

/* LeakyReluGrad(dy, x) = x > 0 ? dy : dy * alpha. */
static LLVMValueRef emit_leaky_relu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef dy = in[0];
  LLVMValueRef a = mul(cg, dy, cst(dy, ad_attr_float(n, "alpha", 0.01f)));
  return sel(cg, cmp(cg, CMP_GT, in[1], cst(dy, 0)), dy, a);
}

/* PyTorch's elu_backward on the input: x <= 0 ? dy * s * neg * e^(x s) : dy * pos. */
static LLVMValueRef elu_grad(ad_cg *cg, LLVMValueRef dy, LLVMValueRef x, float neg, float pos,
                             float s) {
  LLVMValueRef e = call1(cg, "llvm.exp", s == 1 ? x : mul(cg, x, cst(x, s)));
  LLVMValueRef a = mul(cg, mul(cg, s == 1 ? dy : mul(cg, dy, cst(dy, s)), cst(dy, neg)), e);
  return sel(cg, cmp(cg, CMP_LE, x, cst(x, 0)), a, pos == 1 ? dy : mul(cg, dy, cst(dy, pos)));
}

/* EluGrad(dy, x) = x <= 0 ? dy * alpha * e^x : dy. */
static LLVMValueRef emit_elu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return elu_grad(cg, in[0], in[1], ad_attr_float(n, "alpha", 1.0f), 1, 1);
}

/* SeluGrad(dy, x) = x <= 0 ? dy * (alpha gamma) * e^x : dy * gamma. */
static LLVMValueRef emit_selu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  float alpha = ad_attr_float(n, "alpha", 1.67326319217681884765625f);
  float gamma = ad_attr_float(n, "gamma", 1.05070102214813232421875f);
  return elu_grad(cg, in[0], in[1], alpha * gamma, gamma, 1);
}

/* CeluGrad(dy, x) = x <= 0 ? dy / alpha * alpha * e^(x / alpha) : dy (torch.celu). */
static LLVMValueRef emit_celu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  float alpha = ad_attr_float(n, "alpha", 1.0f);
  return elu_grad(cg, in[0], in[1], alpha, 1, 1.0f / alpha);
}

/* HardSigmoidGrad(dy, x) = 0 < alpha x + beta < 1 ? dy * alpha : 0. */
static LLVMValueRef emit_hard_sigmoid_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef bd = ad_cg_builder(cg);
  LLVMValueRef dy = in[0], x = in[1];
  float alpha = ad_attr_float(n, "alpha", 0.2f), beta = ad_attr_float(n, "beta", 0.5f);
  LLVMValueRef v = add(cg, mul(cg, x, cst(x, alpha)), cst(x, beta));
  LLVMValueRef in_range =
      LLVMBuildAnd(bd, cmp(cg, CMP_GT, v, cst(v, 0)), cmp(cg, CMP_LT, v, cst(v, 1)), "");
  return sel(cg, in_range, mul(cg, dy, cst(dy, alpha)), cst(dy, 0));
}

/* HardSwishGrad(dy, x) = x < -3 ? 0 : x <= 3 ? dy * (x / 3 + 0.5) : dy (PyTorch). */
static LLVMValueRef emit_hard_swish_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef dy = in[0], x = in[1];
  LLVMValueRef mid = mul(cg, dy, add(cg, fdiv(cg, x, cst(x, 3)), cst(x, 0.5)));
  LLVMValueRef hi = sel(cg, cmp(cg, CMP_LE, x, cst(x, 3)), mid, dy);
  return sel(cg, cmp(cg, CMP_LT, x, cst(x, -3)), cst(dy, 0), hi);
}

/* SoftsignGrad(dy, x) = dy / (1 + |x|)^2. */
static LLVMValueRef emit_softsign_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef d = add(cg, cst(in[1], 1), fabs_(cg, in[1]));
  return fdiv(cg, in[0], mul(cg, d, d));
}

/* SoftplusGrad(dy, x) = x > 20 ? dy : dy * z / (z + 1), z = e^x. */
static LLVMValueRef emit_softplus_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef dy = in[0], x = in[1];
  LLVMValueRef z = call1(cg, "llvm.exp", x);
  LLVMValueRef g = fdiv(cg, mul(cg, dy, z), add(cg, z, cst(z, 1)));
  return sel(cg, cmp(cg, CMP_GT, x, cst(x, 20)), dy, g);
}

/* AbsGrad(dy, x) = dy * sign(x). */
static LLVMValueRef emit_abs_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef s = emit_sign(cg, n, &in[1]);
  return mul(cg, in[0], s);
}

/* MaxGrad / MinGrad(dy, a, b), attribute input = 0 (for a) or 1 (for b): the
 * gradient goes to the winner, split in half on ties (torch.maximum). */
static LLVMValueRef maxmin_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in, int is_max) {
  int which = (int)ad_attr_int(n, "input", 0);
  LLVMValueRef dy = in[0], mine = in[1 + which], theirs = in[2 - which];
  LLVMValueRef h = sel(cg, cmp(cg, CMP_EQ, mine, theirs), fdiv(cg, dy, cst(dy, 2)), dy);
  LLVMValueRef lose = cmp(cg, is_max ? CMP_LT : CMP_GT, mine, theirs);
  return sel(cg, lose, cst(dy, 0), h);
}
static LLVMValueRef emit_max_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return maxmin_grad(cg, n, in, 1);
}
static LLVMValueRef emit_min_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return maxmin_grad(cg, n, in, 0);
}

/* PReluGrad(dy, x, slope), attribute input = 0 (for x) or 1 (for slope). */
static LLVMValueRef emit_prelu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMValueRef dy = in[0], x = in[1];
  LLVMValueRef pos = cmp(cg, CMP_GT, x, cst(x, 0));
  if (ad_attr_int(n, "input", 0) == 0)
    return sel(cg, pos, dy, mul(cg, in[2], dy));
  return sel(cg, pos, cst(dy, 0), mul(cg, x, dy));
}

/* ReciprocalGrad(dy, y) = -dy * (y * y). */
static LLVMValueRef emit_reciprocal_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return mul(cg, neg(cg, in[0]), mul(cg, in[1], in[1]));
}

/* SinGrad(dy, x) = dy * cos(x); CosGrad(dy, x) = dy * -sin(x). */
static LLVMValueRef emit_sin_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return mul(cg, in[0], call1(cg, "llvm.cos", in[1]));
}
static LLVMValueRef emit_cos_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return mul(cg, in[0], neg(cg, call1(cg, "llvm.sin", in[1])));
}

/* ---- gradients ---- */

static ad_status grad_add(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  for (int i = 0; i < n->n_in; i++)
    if (ad_grad_wants(gc, n->in[i]))
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, dy, n->in[i]));
  return AD_OK;
}

static ad_status grad_sub(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (ad_grad_wants(gc, n->in[0]))
    ad_grad_acc(gc, n->in[0], ad_grad_reduce_to(gc, dy, n->in[0]));
  if (ad_grad_wants(gc, n->in[1])) {
    ad_value *neg = ad_grad_emit(gc, "Neg", 1, &dy, NULL, 0);
    ad_grad_acc(gc, n->in[1], ad_grad_reduce_to(gc, neg, n->in[1]));
  }
  return AD_OK;
}

static ad_status grad_mul(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  for (int i = 0; i < 2; i++)
    if (ad_grad_wants(gc, n->in[i])) {
      ad_value *args[2] = {dy, n->in[1 - i]};
      ad_value *g = ad_grad_emit(gc, "Mul", 2, args, NULL, 0);
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, g, n->in[i]));
    }
  return AD_OK;
}

/* y = a / b: da = dy / b, db = -dy * y / b. */
static ad_status grad_div(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (ad_grad_wants(gc, n->in[0])) {
    ad_value *args[2] = {dy, n->in[1]};
    ad_value *g = ad_grad_emit(gc, "Div", 2, args, NULL, 0);
    ad_grad_acc(gc, n->in[0], ad_grad_reduce_to(gc, g, n->in[0]));
  }
  if (ad_grad_wants(gc, n->in[1])) {
    ad_value *q_args[2] = {n->out[0], n->in[1]};
    ad_value *q = ad_grad_emit(gc, "Div", 2, q_args, NULL, 0);
    ad_value *m_args[2] = {dy, q};
    ad_value *m = ad_grad_emit(gc, "Mul", 2, m_args, NULL, 0);
    ad_value *neg = ad_grad_emit(gc, "Neg", 1, &m, NULL, 0);
    ad_grad_acc(gc, n->in[1], ad_grad_reduce_to(gc, neg, n->in[1]));
  }
  return AD_OK;
}

/* Ops whose gradient is Op##Grad(dy, y) on the result. */
static ad_status grad_activation(ad_grad *gc, const ad_node *n) {
  char name[64];
  snprintf(name, sizeof name, "%sGrad", n->op_type);
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->out[0]};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, name, 2, args, NULL, 0));
  return AD_OK;
}

/* Ops whose gradient is Op##Grad(dy, x) on the input, with the node's attributes. */
static ad_status grad_of_input(ad_grad *gc, const ad_node *n) {
  char name[64];
  snprintf(name, sizeof name, "%sGrad", n->op_type);
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->in[0]};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, name, 2, args, n->attrs, n->n_attr));
  return AD_OK;
}

/* exp: dy * y. */
static ad_status grad_exp(ad_grad *gc, const ad_node *n) {
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->out[0]};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "Mul", 2, args, NULL, 0));
  return AD_OK;
}

/* log: dy / x. */
static ad_status grad_log(ad_grad *gc, const ad_node *n) {
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->in[0]};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "Div", 2, args, NULL, 0));
  return AD_OK;
}

static ad_status grad_pow(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (ad_grad_wants(gc, n->in[0])) {
    ad_value *args[3] = {dy, n->in[0], n->in[1]};
    ad_value *g = ad_grad_emit(gc, "PowGrad", 3, args, NULL, 0);
    ad_grad_acc(gc, n->in[0], ad_grad_reduce_to(gc, g, n->in[0]));
  }
  if (ad_grad_wants(gc, n->in[1])) {
    ad_value *args[4] = {dy, n->in[0], n->in[1], n->out[0]};
    ad_value *g = ad_grad_emit(gc, "PowGradExp", 4, args, NULL, 0);
    ad_grad_acc(gc, n->in[1], ad_grad_reduce_to(gc, g, n->in[1]));
  }
  return AD_OK;
}

static ad_status grad_clip(ad_grad *gc, const ad_node *n) {
  for (int i = 1; i < n->n_in; i++)
    if (ad_grad_wants(gc, n->in[i]))
      return ad_fail(AD_ERR_INPUT, "%s: error: the gradient with respect to %s is not supported",
                     ad_node_where(ad_grad_graph(gc), n), i == 1 ? "min" : "max");
  ad_value *args[4] = {ad_grad_out(gc, n, 0), n->in[0], n->n_in > 1 ? n->in[1] : NULL,
                       n->n_in > 2 ? n->in[2] : NULL};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "ClipGrad", 4, args, NULL, 0));
  return AD_OK;
}

static ad_status grad_clip6(ad_grad *gc, const ad_node *n) {
  float lo, hi;
  clip6_bounds(n, &lo, &hi);
  ad_graph *g = ad_grad_graph(gc);
  ad_value *args[4] = {ad_grad_out(gc, n, 0), n->in[0], ad_const_scalar(g, lo),
                       ad_const_scalar(g, hi)};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "ClipGrad", 4, args, NULL, 0));
  return AD_OK;
}

/* PRelu: dx = x > 0 ? dy : slope * dy, dslope = x > 0 ? 0 : x * dy (summed). */
static ad_status grad_prelu(ad_grad *gc, const ad_node *n) {
  for (int i = 0; i < 2; i++)
    if (ad_grad_wants(gc, n->in[i])) {
      ad_value *args[3] = {ad_grad_out(gc, n, 0), n->in[0], n->in[1]};
      ad_attr a = ad_attr_i("input", i);
      ad_value *g = ad_grad_emit(gc, "PReluGrad", 3, args, &a, 1);
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, g, n->in[i]));
    }
  return AD_OK;
}

static ad_status grad_maxmin(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (n->n_in == 1) {
    ad_grad_acc(gc, n->in[0], dy);
    return AD_OK;
  }
  if (n->n_in > 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: the gradient of %s with %d inputs is not supported",
                   ad_node_where(ad_grad_graph(gc), n), n->op_type, n->n_in);
  char name[64];
  snprintf(name, sizeof name, "%sGrad", n->op_type);
  for (int i = 0; i < 2; i++)
    if (ad_grad_wants(gc, n->in[i])) {
      ad_value *args[3] = {dy, n->in[0], n->in[1]};
      ad_attr a = ad_attr_i("input", i);
      ad_value *g = ad_grad_emit(gc, name, 3, args, &a, 1);
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, g, n->in[i]));
    }
  return AD_OK;
}

static ad_status grad_mean(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_attr a = ad_attr_fl("alpha", 1.0f / (float)n->n_in);
  ad_value *g = ad_grad_emit(gc, "Scale", 1, &dy, &a, 1);
  for (int i = 0; i < n->n_in; i++)
    if (ad_grad_wants(gc, n->in[i]))
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, g, n->in[i]));
  return AD_OK;
}

/* where: dx = where(c, dy, 0), dy_ = where(c, 0, dy). */
static ad_status grad_where(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_value *zero = ad_const_scalar(ad_grad_graph(gc), 0.0f);
  for (int i = 1; i < 3; i++)
    if (ad_grad_wants(gc, n->in[i])) {
      ad_value *args[3] = {n->in[0], i == 1 ? dy : zero, i == 1 ? zero : dy};
      ad_value *g = ad_grad_emit(gc, "Where", 3, args, NULL, 0);
      ad_grad_acc(gc, n->in[i], ad_grad_reduce_to(gc, g, n->in[i]));
    }
  return AD_OK;
}

static ad_status grad_neg(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "Neg", 1, &dy, NULL, 0));
  return AD_OK;
}

static ad_status grad_scale(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_attr a = ad_attr_fl("alpha", ad_attr_float(n, "alpha", 1));
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "Scale", 1, &dy, &a, 1));
  return AD_OK;
}

static ad_status grad_copy(ad_grad *gc, const ad_node *n) {
  ad_grad_acc(gc, n->in[0], ad_grad_out(gc, n, 0));
  return AD_OK;
}

/* Piecewise-constant ops (Floor, Ceil, Round, Sign) have a zero gradient, as
 * in PyTorch: nothing is added, and an input with no other contribution gets zeros. */
static ad_status grad_zero(ad_grad *gc, const ad_node *n) {
  return AD_OK;
}

/* Cast float32 -> float32 passes the gradient; a cast through an integer or
 * bool type is piecewise constant (a mask such as Cast(Greater(x, 0))); one to
 * another float type is refused (gradients are float32). */
static ad_status grad_cast(ad_grad *gc, const ad_node *n) {
  if (n->in[0]->dtype == AD_F32 && n->out[0]->dtype == AD_F32)
    return grad_copy(gc, n);
  if (ad_dtype_is_float(n->in[0]->dtype) && ad_dtype_is_float(n->out[0]->dtype))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: cannot train through a cast from %s to %s; gradients are float32",
                   ad_node_where(ad_grad_graph(gc), n), ad_dtype_name(n->in[0]->dtype),
                   ad_dtype_name(n->out[0]->dtype));
  return grad_zero(gc, n);
}

/* The gradient of a sum is its output gradient broadcast back: Expand via Add
 * with zeros would cost a pass, so broadcast with Scale(alpha 1) against the
 * input's shape through BroadcastTo. */
static ad_status grad_reduce_to(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  ad_value *x = n->in[0];
  ad_attr a = ad_attr_is("shape", x->rank, x->dims);
  ad_grad_acc(gc, x, ad_grad_emit(gc, "BroadcastTo", 1, &dy, &a, 1));
  return AD_OK;
}

static void cost_ew(const ad_node *n, double *flops, double *bytes) {
  *flops = (double)ad_value_numel(n->out[0]);
  *bytes = (double)ad_value_bytes(n->out[0]);
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      *bytes += (double)ad_value_bytes(n->in[i]);
}

/* Variadic ops (Max, Min, Sum, Mean) take up to this many inputs: codegen's
 * loop nests hold 64 operands. */
#define MAX_VARIADIC 32

#define ONNX_EW(NAME, SINCE, MIN_IN, MAX_IN, INFER, GRAD, EMIT)                                    \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = SINCE, .max_opset = AD_OPSET_MAX, .min_in = MIN_IN,   \
    .max_in = MAX_IN, .n_out = 1, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_EW,         \
    .emit = EMIT, .cost = cost_ew                                                                  \
  }
#define INTERNAL_EW(NAME, MIN_IN, MAX_IN, INFER, GRAD, EMIT)                                       \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = MIN_IN, .max_in = MAX_IN, .n_out = 1, .infer = INFER,  \
    .grad = GRAD, .lower_kind = AD_LOWER_EW, .emit = EMIT, .cost = cost_ew                         \
  }

const ad_op ad_ops_elementwise[] = {
    /* arithmetic */
    ONNX_EW("Add", 7, 2, 2, infer_arith, grad_add, emit_add),
    ONNX_EW("Sub", 7, 2, 2, infer_arith, grad_sub, emit_sub),
    ONNX_EW("Mul", 7, 2, 2, infer_arith, grad_mul, emit_mul),
    ONNX_EW("Div", 7, 2, 2, infer_arith, grad_div, emit_div),
    ONNX_EW("Neg", 6, 1, 1, infer_signed, grad_neg, emit_neg),
    ONNX_EW("Abs", 6, 1, 1, infer_numeric, grad_of_input, emit_abs),
    ONNX_EW("Sign", 9, 1, 1, infer_numeric, grad_zero, emit_sign),
    ONNX_EW("Max", 6, 1, MAX_VARIADIC, infer_maxmin, grad_maxmin, emit_max),
    ONNX_EW("Min", 6, 1, MAX_VARIADIC, infer_maxmin, grad_maxmin, emit_min),
    ONNX_EW("Sum", 6, 1, MAX_VARIADIC, infer_float, grad_add, emit_sum),
    ONNX_EW("Mean", 6, 1, MAX_VARIADIC, infer_float, grad_mean, emit_mean),
    ONNX_EW("Pow", 7, 2, 2, infer_pow, grad_pow, emit_pow),
    ONNX_EW("Mod", 10, 2, 2, infer_mod, NULL, emit_mod),
    ONNX_EW("BitShift", 11, 2, 2, infer_bitshift, NULL, emit_bitshift),
    /* Clip-6: min and max are attributes (inputs from opset 11). */
    {.name = "Clip",
     .domain = "",
     .min_opset = 6,
     .max_opset = 10,
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_float,
     .grad = grad_clip6,
     .lower_kind = AD_LOWER_EW,
     .emit = emit_clip6,
     .cost = cost_ew},
    ONNX_EW("Clip", 11, 1, 3, infer_clip, grad_clip, emit_clip),
    ONNX_EW("Reciprocal", 6, 1, 1, infer_float, grad_activation, emit_reciprocal),
    /* float functions */
    ONNX_EW("Exp", 6, 1, 1, infer_float, grad_exp, emit_unary_fn),
    ONNX_EW("Log", 6, 1, 1, infer_float, grad_log, emit_unary_fn),
    ONNX_EW("Sqrt", 6, 1, 1, infer_float, grad_activation, emit_unary_fn),
    ONNX_EW("Floor", 6, 1, 1, infer_float, grad_zero, emit_unary_fn),
    ONNX_EW("Ceil", 6, 1, 1, infer_float, grad_zero, emit_unary_fn),
    ONNX_EW("Round", 11, 1, 1, infer_float, grad_zero, emit_unary_fn),
    ONNX_EW("Erf", 9, 1, 1, infer_float, grad_of_input, emit_unary_fn),
    ONNX_EW("Sin", 7, 1, 1, infer_float, grad_of_input, emit_unary_fn),
    ONNX_EW("Cos", 7, 1, 1, infer_float, grad_of_input, emit_unary_fn),
    ONNX_EW("Tan", 7, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Asin", 7, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Acos", 7, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Atan", 7, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Sinh", 9, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Cosh", 9, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Asinh", 9, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Acosh", 9, 1, 1, infer_float, NULL, emit_unary_fn),
    ONNX_EW("Atanh", 9, 1, 1, infer_float, NULL, emit_unary_fn),
    /* activations */
    ONNX_EW("Relu", 6, 1, 1, infer_relu, grad_activation, emit_relu),
    ONNX_EW("Sigmoid", 6, 1, 1, infer_float, grad_activation, emit_sigmoid),
    ONNX_EW("Tanh", 6, 1, 1, infer_float, grad_activation, emit_unary_fn),
    ONNX_EW("Softplus", 1, 1, 1, infer_float, grad_of_input, emit_softplus),
    ONNX_EW("Softsign", 1, 1, 1, infer_float, grad_of_input, emit_softsign),
    ONNX_EW("Elu", 6, 1, 1, infer_float, grad_of_input, emit_elu),
    ONNX_EW("Selu", 6, 1, 1, infer_float, grad_of_input, emit_selu),
    ONNX_EW("Celu", 12, 1, 1, infer_float, grad_of_input, emit_celu),
    ONNX_EW("LeakyRelu", 6, 1, 1, infer_float, grad_of_input, emit_leaky_relu),
    ONNX_EW("PRelu", 7, 2, 2, infer_prelu, grad_prelu, emit_prelu),
    ONNX_EW("HardSigmoid", 6, 1, 1, infer_float, grad_of_input, emit_hard_sigmoid),
    ONNX_EW("HardSwish", 14, 1, 1, infer_float, grad_of_input, emit_hard_swish),
    ONNX_EW("ThresholdedRelu", 10, 1, 1, infer_float, NULL, emit_thresholded_relu),
    ONNX_EW("Shrink", 9, 1, 1, infer_float, NULL, emit_shrink),
    /* comparisons, logic, selection, conversion */
    ONNX_EW("Equal", 7, 2, 2, infer_equal, NULL, emit_equal),
    ONNX_EW("Less", 7, 2, 2, infer_compare, NULL, emit_less),
    ONNX_EW("Greater", 7, 2, 2, infer_compare, NULL, emit_greater),
    ONNX_EW("LessOrEqual", 12, 2, 2, infer_compare, NULL, emit_less_equal),
    ONNX_EW("GreaterOrEqual", 12, 2, 2, infer_compare, NULL, emit_greater_equal),
    ONNX_EW("And", 7, 2, 2, infer_logic, NULL, emit_and),
    ONNX_EW("Or", 7, 2, 2, infer_logic, NULL, emit_or),
    ONNX_EW("Xor", 7, 2, 2, infer_logic, NULL, emit_xor),
    ONNX_EW("Not", 1, 1, 1, infer_logic, NULL, emit_not),
    ONNX_EW("IsNaN", 9, 1, 1, infer_float_test, NULL, emit_isnan),
    ONNX_EW("IsInf", 10, 1, 1, infer_float_test, NULL, emit_isinf),
    ONNX_EW("Where", 9, 3, 3, infer_where, grad_where, emit_where),
    ONNX_EW("Cast", 6, 1, 1, infer_cast, grad_cast, emit_cast),
    ONNX_EW("CastLike", 15, 2, 2, infer_cast_like, NULL, emit_cast),
    /* internal: gradients */
    INTERNAL_EW("ReluGrad", 2, 2, infer_grad, NULL, emit_relu_grad),
    INTERNAL_EW("SigmoidGrad", 2, 2, infer_grad, NULL, emit_sigmoid_grad),
    INTERNAL_EW("TanhGrad", 2, 2, infer_grad, NULL, emit_tanh_grad),
    INTERNAL_EW("SqrtGrad", 2, 2, infer_grad, NULL, emit_sqrt_grad),
    INTERNAL_EW("PowGrad", 3, 3, infer_grad, NULL, emit_pow_grad),
    INTERNAL_EW("PowGradExp", 4, 4, infer_grad, NULL, emit_pow_grad_exp),
    INTERNAL_EW("ErfGrad", 2, 2, infer_grad, NULL, emit_erf_grad),
    INTERNAL_EW("ClipGrad", 2, 4, infer_grad, NULL, emit_clip_grad),
    INTERNAL_EW("LeakyReluGrad", 2, 2, infer_grad, NULL, emit_leaky_relu_grad),
    INTERNAL_EW("EluGrad", 2, 2, infer_grad, NULL, emit_elu_grad),
    INTERNAL_EW("SeluGrad", 2, 2, infer_grad, NULL, emit_selu_grad),
    INTERNAL_EW("CeluGrad", 2, 2, infer_grad, NULL, emit_celu_grad),
    INTERNAL_EW("HardSigmoidGrad", 2, 2, infer_grad, NULL, emit_hard_sigmoid_grad),
    INTERNAL_EW("HardSwishGrad", 2, 2, infer_grad, NULL, emit_hard_swish_grad),
    INTERNAL_EW("SoftsignGrad", 2, 2, infer_grad, NULL, emit_softsign_grad),
    INTERNAL_EW("SoftplusGrad", 2, 2, infer_grad, NULL, emit_softplus_grad),
    INTERNAL_EW("AbsGrad", 2, 2, infer_grad, NULL, emit_abs_grad),
    INTERNAL_EW("MaxGrad", 3, 3, infer_grad, NULL, emit_max_grad),
    INTERNAL_EW("MinGrad", 3, 3, infer_grad, NULL, emit_min_grad),
    INTERNAL_EW("PReluGrad", 3, 3, infer_grad, NULL, emit_prelu_grad),
    INTERNAL_EW("ReciprocalGrad", 2, 2, infer_grad, NULL, emit_reciprocal_grad),
    INTERNAL_EW("SinGrad", 2, 2, infer_grad, NULL, emit_sin_grad),
    INTERNAL_EW("CosGrad", 2, 2, infer_grad, NULL, emit_cos_grad),
    /* internal: plumbing */
    INTERNAL_EW("Scale", 1, 1, infer_float, grad_scale, emit_scale),
    INTERNAL_EW("Copy", 1, 1, infer_float, grad_copy, emit_copy),
    INTERNAL_EW("BroadcastTo", 1, 1, infer_broadcast_to, NULL, emit_copy),
    {.name = "ReduceSumTo",
     .domain = "ad",
     .min_in = 1,
     .max_in = 1,
     .n_out = 1,
     .infer = infer_reduce_to,
     .grad = grad_reduce_to,
     .lower_kind = AD_LOWER_REDUCE_SUM,
     .cost = cost_ew},
    {0},
};
