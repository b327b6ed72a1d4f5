/*
 * compiler/ops/softmax.c: Softmax and LogSoftmax, and their internal
 * gradients SoftmaxGrad(y, dy) and LogSoftmaxGrad(y, dy), all lowered to the
 * runtime kernels that view the tensor as [outer, n, inner].
 *
 * The meaning of `axis` changed at opset 13: before, the input is coerced to
 * 2-D at axis (default 1) and normalized over everything from axis on
 * (inner = 1, n = the product of the trailing extents); from 13 on, only that
 * one axis (default -1) is normalized. Each version is its own table entry.
 * The gradient ops carry the normalized axis and a "legacy" flag, so they view
 * the tensor exactly as the forward did. Gradients read the output y, not x
 * (dx = y * (dy - sum(dy * y)) and dx = dy - exp(y) * sum(dy)).
 */
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* Normalized axis and legacy flag of a forward or gradient node. */
static ad_status softmax_axis(ad_graph *g, const ad_node *n, int rank, int *axis, int *legacy) {
  int internal = !strcmp(n->domain, "ad");
  *legacy = internal ? (int)ad_attr_int(n, "legacy", 0) : n->op->max_opset < 13;
  int64_t a = ad_attr_int(n, "axis", *legacy ? 1 : -1);
  if (a < -rank || a >= rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)a, rank);
  *axis = (int)(a < 0 ? a + rank : a);
  return AD_OK;
}

/* {outer, n, inner} of the kernels for a tensor of shape v. */
static void softmax_params(const ad_value *v, int axis, int legacy, int64_t *p) {
  p[0] = p[1] = p[2] = 1;
  for (int i = 0; i < v->rank; i++) {
    if (i < axis)
      p[0] *= v->dims[i];
    else if (i == axis || legacy)
      p[1] *= v->dims[i];
    else
      p[2] *= v->dims[i];
  }
}

static ad_status infer_softmax(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  int axis, legacy;
  AD_TRY(softmax_axis(g, n, n->in[0]->rank, &axis, &legacy));
  return ad_infer_same(g, n);
}

static ad_status infer_softmax_grad(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  AD_TRY(ad_infer_need_f32(g, n, 1));
  ad_value *y = n->in[0], *dy = n->in[1];
  AD_ASSERT(y->rank == dy->rank && !memcmp(y->dims, dy->dims, sizeof(int64_t) * (size_t)y->rank));
  return ad_infer_same(g, n);
}

static ad_status lower_softmax(ad_cg *cg, const ad_node *n) {
  int axis, legacy;
  AD_TRY(softmax_axis(ad_cg_graph(cg), n, n->in[0]->rank, &axis, &legacy));
  int64_t p[3];
  softmax_params(n->in[0], axis, legacy, p);
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, strcmp(n->op_type, "Softmax") ? "ad_k_logsoftmax_fwd" : "ad_k_softmax_fwd",
                    p, 3, ptrs, 2);
  return AD_OK;
}

static ad_status lower_softmax_grad(ad_cg *cg, const ad_node *n) {
  int axis, legacy;
  AD_TRY(softmax_axis(ad_cg_graph(cg), n, n->in[0]->rank, &axis, &legacy));
  int64_t p[3];
  softmax_params(n->in[0], axis, legacy, p);
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg,
                    strcmp(n->op_type, "SoftmaxGrad") ? "ad_k_logsoftmax_bwd" : "ad_k_softmax_bwd",
                    p, 3, ptrs, 3);
  return AD_OK;
}

static ad_status grad_softmax(ad_grad *gc, const ad_node *n) {
  int axis, legacy;
  AD_TRY(softmax_axis(ad_grad_graph(gc), n, n->in[0]->rank, &axis, &legacy));
  ad_attr at[2] = {ad_attr_i("axis", axis), ad_attr_i("legacy", legacy)};
  ad_value *args[2] = {n->out[0], ad_grad_out(gc, n, 0)};
  const char *op = strcmp(n->op_type, "Softmax") ? "LogSoftmaxGrad" : "SoftmaxGrad";
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, op, 2, args, at, 2));
  return AD_OK;
}

/* exp, subtract, sum and divide per element, roughly. */
static void cost_softmax(const ad_node *n, double *flops, double *bytes) {
  *flops = 5.0 * (double)ad_value_numel(n->out[0]);
  *bytes = (double)ad_value_bytes(n->out[0]);
  for (int i = 0; i < n->n_in; i++)
    *bytes += (double)ad_value_bytes(n->in[i]);
}

#define SOFTMAX(NAME, LO, HI)                                                                      \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = HI, .min_in = 1, .max_in = 1,        \
    .n_out = 1, .infer = infer_softmax, .grad = grad_softmax, .lower_kind = AD_LOWER_CALL,         \
    .lower = lower_softmax, .cost = cost_softmax                                                   \
  }
#define SOFTMAX_GRAD(NAME)                                                                         \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = 2, .max_in = 2, .n_out = 1,                            \
    .infer = infer_softmax_grad, .lower_kind = AD_LOWER_CALL, .lower = lower_softmax_grad,         \
    .cost = cost_softmax                                                                           \
  }

const ad_op ad_ops_softmax[] = {
    SOFTMAX("Softmax", 1, 12),
    SOFTMAX("Softmax", 13, AD_OPSET_MAX),
    SOFTMAX("LogSoftmax", 1, 12),
    SOFTMAX("LogSoftmax", 13, AD_OPSET_MAX),
    SOFTMAX_GRAD("SoftmaxGrad"),
    SOFTMAX_GRAD("LogSoftmaxGrad"),
    {0},
};
