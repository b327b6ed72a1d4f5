/*
 * compiler/ops/loss.c: the ONNX losses NegativeLogLikelihoodLoss (opsets 12
 * and 13) and SoftmaxCrossEntropyLoss (12 and 13), for inference, both
 * lowered to one runtime kernel (ad_k_nll_loss, runtime/kernels_loss.c) that
 * views the scores as [N, C, D] and the targets as [N, D].
 *
 *   NLL: loss[n, d] = -input[n, target[n, d], d] * weight[target[n, d]]
 *   SCE: the same on log_prob = LogSoftmax(scores) over axis 1, which is the
 *        optional second output
 *
 * reduction "none" keeps [N, d1..dk]; "sum" and "mean" give a scalar, the
 * mean dividing by the sum of the targets' weights (their count without a
 * weight). Targets equal to ignore_index count 0. Opset 13 changes only the
 * dtypes (SoftmaxCrossEntropyLoss adds bfloat16). autodist computes on
 * float32, float64 and float16 (ops/types.c; bfloat16 is refused), the weight
 * of the scores' dtype, the targets int64 or int32.
 *
 * Bad targets: constant ones outside [0, C) (and not ignored) are refused
 * here; fed ones give NaN loss elements at run time, the way Gather's and the
 * internal cross-entropy's kernels report bad indices. The reduction over the
 * batch axis of fed scores is per worker, as for ReduceMean (ops/reduce.c).
 *
 * There is no gradient: training through these ops is a compile-time error
 * naming the node. The internal SoftmaxCrossEntropy of the training compiler
 * (ops/train.c) is a different op.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* The kernel's reduction code of node n's "reduction" attribute. */
static ad_status loss_reduction(ad_graph *g, const ad_node *n, int64_t *code) {
  const char *r = ad_attr_str(n, "reduction", "mean");
  if (!strcmp(r, "none"))
    *code = AD_K_LOSS_NONE;
  else if (!strcmp(r, "sum"))
    *code = AD_K_LOSS_SUM;
  else if (!strcmp(r, "mean"))
    *code = AD_K_LOSS_MEAN;
  else
    return ad_fail(AD_ERR_INPUT, "%s: error: reduction '%s' is not one of none, sum, mean",
                   ad_node_where(g, n), r);
  return AD_OK;
}

static ad_status infer_loss(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *t = n->in[1], *w = n->n_in > 2 ? n->in[2] : NULL;
  if (!x || !t)
    return ad_fail(AD_ERR_INPUT, "%s: error: inputs 0 and 1 are required", ad_node_where(g, n));
  if (x->dtype != AD_F32 && x->dtype != AD_F64 && x->dtype != AD_F16)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: input 0 ('%s') is %s; %s supports float32, float64, float16",
                   ad_node_where(g, n), x->name, ad_dtype_name(x->dtype), n->op_type);
  if (t->dtype != AD_I64 && t->dtype != AD_I32)
    return ad_fail(AD_ERR_INPUT, "%s: error: target '%s' is %s; it must be int64 or int32",
                   ad_node_where(g, n), t->name, ad_dtype_name(t->dtype));
  if (x->rank < 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' %s must have rank >= 2 ([N, C, ...])",
                   ad_node_where(g, n), x->name, ad_shape_str(x->rank, x->dims));
  int same = t->rank == x->rank - 1 && t->dims[0] == x->dims[0];
  for (int i = 1; same && i < t->rank; i++)
    same = t->dims[i] == x->dims[i + 1];
  if (!same)
    return ad_fail(AD_ERR_INPUT, "%s: error: target %s does not fit input %s (want [N, d1, ...])",
                   ad_node_where(g, n), ad_shape_str(t->rank, t->dims),
                   ad_shape_str(x->rank, x->dims));
  int64_t C = x->dims[1];
  if (w && (w->dtype != x->dtype || w->rank != 1 || w->dims[0] != C))
    return ad_fail(AD_ERR_INPUT, "%s: error: weight '%s' is %s %s; it must be %s [%lld]",
                   ad_node_where(g, n), w->name, ad_dtype_name(w->dtype),
                   ad_shape_str(w->rank, w->dims), ad_dtype_name(x->dtype), (long long)C);
  int64_t red;
  AD_TRY(loss_reduction(g, n, &red));
  const ad_attr *ii = ad_attr_find(n, "ignore_index");
  if (ii && ii->type != AD_ATTR_INT)
    return ad_fail(AD_ERR_INPUT, "%s: error: ignore_index must be an integer", ad_node_where(g, n));
  if (t->kind == AD_VAL_CONST && t->data)
    for (int64_t j = 0; j < ad_value_numel(t); j++) {
      int64_t k =
          t->dtype == AD_I32 ? ((const int32_t *)t->data)[j] : ((const int64_t *)t->data)[j];
      if ((k < 0 || k >= C) && !(ii && k == ii->i))
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: target %lld is out of range for %lld classes (and is not "
                       "ignore_index)",
                       ad_node_where(g, n), (long long)k, (long long)C);
    }
  ad_value *y = n->out[0];
  y->dtype = x->dtype;
  y->rank = red == AD_K_LOSS_NONE ? t->rank : 0;
  memcpy(y->dims, t->dims, sizeof(int64_t) * (size_t)y->rank);
  if (n->n_out > 1) {
    if (strcmp(n->op_type, "SoftmaxCrossEntropyLoss"))
      return ad_fail(AD_ERR_INPUT, "%s: error: %s has one output", ad_node_where(g, n), n->op_type);
    ad_value *lp = n->out[1];
    lp->dtype = x->dtype;
    lp->rank = x->rank;
    memcpy(lp->dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
  }
  return AD_OK;
}

static ad_status lower_loss(ad_cg *cg, const ad_node *n) {
  ad_value *x = n->in[0], *t = n->in[1], *w = n->n_in > 2 ? n->in[2] : NULL;
  int64_t red;
  AD_TRY(loss_reduction(ad_cg_graph(cg), n, &red));
  const ad_attr *ii = ad_attr_find(n, "ignore_index");
  int64_t D = 1;
  for (int i = 2; i < x->rank; i++)
    D *= x->dims[i];
  int64_t dt = x->dtype == AD_F64   ? AD_K_LOSS_F64
               : x->dtype == AD_F16 ? AD_K_LOSS_F16
                                    : AD_K_LOSS_F32;
  int64_t p[9] = {x->dims[0],
                  x->dims[1],
                  D,
                  red,
                  ii ? ii->i : 0,
                  ii != NULL,
                  t->dtype == AD_I32,
                  dt,
                  !strcmp(n->op_type, "SoftmaxCrossEntropyLoss")};
  LLVMValueRef null = LLVMConstPointerNull(ad_cg_ptr_type(cg));
  LLVMValueRef ptrs[5] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, t), w ? ad_cg_ptr(cg, w) : null,
                          ad_cg_ptr(cg, n->out[0]), n->n_out > 1 ? ad_cg_ptr(cg, n->out[1]) : null};
  ad_cg_call_kernel(cg, "ad_k_nll_loss", p, 9, ptrs, 5);
  return AD_OK;
}

/* A log-softmax (about 5 FLOPs per score) and a gather; every score is read
 * once, the log-probs written when wanted. */
static void cost_loss(const ad_node *n, double *flops, double *bytes) {
  int sce = !strcmp(n->op_type, "SoftmaxCrossEntropyLoss");
  *flops = (sce ? 5.0 * (double)ad_value_numel(n->in[0]) : 0) + 2.0 * ad_value_numel(n->in[1]);
  *bytes = (double)ad_value_bytes(n->in[0]) + (double)ad_value_bytes(n->in[1]) +
           (double)ad_value_bytes(n->out[0]);
  if (n->n_out > 1)
    *bytes += (double)ad_value_bytes(n->out[1]);
}

#define LOSS(NAME, LO, HI, NOUT)                                                                   \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = HI, .min_in = 2, .max_in = 3,        \
    .n_out = NOUT, .infer = infer_loss, .lower_kind = AD_LOWER_CALL, .lower = lower_loss,          \
    .cost = cost_loss                                                                              \
  }

const ad_op ad_ops_loss[] = {
    /* Opsets 12 and 13 differ only in dtypes: one entry covers both. */
    LOSS("NegativeLogLikelihoodLoss", 12, AD_OPSET_MAX, 1),
    LOSS("SoftmaxCrossEntropyLoss", 12, AD_OPSET_MAX, 2),
    {0},
};
