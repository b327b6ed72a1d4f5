/*
 * compiler/ops/elementwise.c: elementwise arithmetic and activations, and the
 * internal elementwise ops their gradients use. All are EW lowerings: codegen
 * fuses chains of them into single loops; broadcasting follows numpy, and the
 * gradient of a broadcast input is summed back with ReduceSumTo.
 */
#include "../codegen.h"
#include "../op.h"

#include <stdio.h>
#include <string.h>

/* ---- shape inference ---- */

static ad_status infer_binary(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  AD_TRY(ad_infer_need_f32(g, n, 1));
  return ad_infer_broadcast(g, n);
}

static ad_status infer_unary(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  return ad_infer_same(g, n);
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

/* ---- scalar emission ---- */

static LLVMValueRef emit_add(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFAdd(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_sub(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFSub(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_mul(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFMul(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_div(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFDiv(ad_cg_builder(cg), in[0], in[1], "");
}
static LLVMValueRef emit_neg(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFNeg(ad_cg_builder(cg), in[0], "");
}
static LLVMValueRef emit_copy(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return in[0];
}
static LLVMValueRef emit_scale(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return LLVMBuildFMul(ad_cg_builder(cg), in[0], ad_cg_f32(cg, ad_attr_float(n, "alpha", 1)), "");
}

/* relu(x) = x > 0 ? x : 0, which keeps NaN propagation like PyTorch's. */
static LLVMValueRef emit_relu(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef zero = ad_cg_f32(cg, 0);
  LLVMValueRef le = LLVMBuildFCmp(b, LLVMRealOLE, in[0], zero, "");
  return LLVMBuildSelect(b, le, zero, in[0], "");
}

/* ReluGrad(dy, y) = y > 0 ? dy : 0 (PyTorch's threshold_backward on the result). */
static LLVMValueRef emit_relu_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef gt = LLVMBuildFCmp(b, LLVMRealOGT, in[1], ad_cg_f32(cg, 0), "");
  return LLVMBuildSelect(b, gt, in[0], ad_cg_f32(cg, 0), "");
}

static LLVMValueRef emit_sigmoid(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef negx = LLVMBuildFNeg(b, in[0], "");
  LLVMValueRef e = ad_cg_intrinsic(cg, "llvm.exp.f32", 1, &negx);
  return LLVMBuildFDiv(b, ad_cg_f32(cg, 1), LLVMBuildFAdd(b, ad_cg_f32(cg, 1), e, ""), "");
}

/* SigmoidGrad(dy, y) = dy * (1 - y) * y, PyTorch's order of operations. */
static LLVMValueRef emit_sigmoid_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef one_minus = LLVMBuildFSub(b, ad_cg_f32(cg, 1), in[1], "");
  return LLVMBuildFMul(b, LLVMBuildFMul(b, in[0], one_minus, ""), in[1], "");
}

static LLVMValueRef emit_tanh(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  return ad_cg_intrinsic(cg, "tanhf", 1, in);
}

/* TanhGrad(dy, y) = dy * (1 - y * y). */
static LLVMValueRef emit_tanh_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef yy = LLVMBuildFMul(b, in[1], in[1], "");
  return LLVMBuildFMul(b, in[0], LLVMBuildFSub(b, ad_cg_f32(cg, 1), yy, ""), "");
}

/* ---- gradients ---- */

static ad_status grad_add(ad_grad *gc, const ad_node *n) {
  ad_value *dy = ad_grad_out(gc, n, 0);
  for (int i = 0; i < 2; i++)
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

/* Activations whose gradient is Op##Grad(dy, y). */
static ad_status grad_activation(ad_grad *gc, const ad_node *n) {
  char name[64];
  snprintf(name, sizeof name, "%sGrad", n->op_type);
  ad_value *args[2] = {ad_grad_out(gc, n, 0), n->out[0]};
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, name, 2, args, NULL, 0));
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

static void cost_ew(const ad_node *n, double *flops, double *bytes) {
  *flops = (double)ad_value_numel(n->out[0]);
  *bytes = (double)ad_value_bytes(n->out[0]);
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      *bytes += (double)ad_value_bytes(n->in[i]);
}

#define ONNX_EW(NAME, NIN, INFER, GRAD, EMIT)                                                      \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = 1, .max_opset = AD_OPSET_MAX, .min_in = NIN,          \
    .max_in = NIN, .n_out = 1, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_EW,            \
    .emit = EMIT, .cost = cost_ew                                                                  \
  }
#define INTERNAL_EW(NAME, NIN, INFER, GRAD, EMIT)                                                  \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = NIN, .max_in = NIN, .n_out = 1, .infer = INFER,        \
    .grad = GRAD, .lower_kind = AD_LOWER_EW, .emit = EMIT, .cost = cost_ew                         \
  }

const ad_op ad_ops_elementwise[] = {
    ONNX_EW("Add", 2, infer_binary, grad_add, emit_add),
    ONNX_EW("Sub", 2, infer_binary, grad_sub, emit_sub),
    ONNX_EW("Mul", 2, infer_binary, grad_mul, emit_mul),
    ONNX_EW("Div", 2, infer_binary, grad_div, emit_div),
    ONNX_EW("Relu", 1, infer_unary, grad_activation, emit_relu),
    ONNX_EW("Sigmoid", 1, infer_unary, grad_activation, emit_sigmoid),
    ONNX_EW("Tanh", 1, infer_unary, grad_activation, emit_tanh),
    ONNX_EW("Neg", 1, infer_unary, grad_neg, emit_neg),
    INTERNAL_EW("ReluGrad", 2, infer_binary, NULL, emit_relu_grad),
    INTERNAL_EW("SigmoidGrad", 2, infer_binary, NULL, emit_sigmoid_grad),
    INTERNAL_EW("TanhGrad", 2, infer_binary, NULL, emit_tanh_grad),
    INTERNAL_EW("Scale", 1, infer_unary, grad_scale, emit_scale),
    INTERNAL_EW("Copy", 1, infer_unary, grad_copy, emit_copy),
    INTERNAL_EW("BroadcastTo", 1, infer_broadcast_to, NULL, emit_copy),
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
