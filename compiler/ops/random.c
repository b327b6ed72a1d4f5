/*
 * compiler/ops/random.c: Dropout, the op that draws random numbers.
 *
 * Dropout is the identity at inference (opsets 7-11 always; 12+ when the
 * constant training_mode input is false or absent) and in training mode with
 * ratio 0: then it is an ALIAS (no code, y is x's bytes) as long as the mask
 * output is not declared. A node that must compute something (a declared
 * mask, all true when nothing is dropped; or training_mode with ratio > 0,
 * which draws a mask) is switched by shape inference to the internal CALL
 * entry DropoutDraw (domain "ad", so constant folding never runs it at
 * compile time; messages still name the node's op type, Dropout). It calls
 * ad_k_dropout (runtime/kernels_random.c), which reproduces ONNX's reference
 * draw exactly: np.random.seed(seed); keep = uniform(0, 1, shape) >= ratio;
 * y = keep * x * scale, scale = 1 / (1 - ratio) computed in double and
 * rounded to x's type (numpy 1.x's promotion in the reference), for x of
 * float32, float64 or float16. The node's `seed` attribute picks the stream;
 * without one the seed is 0 (ONNX lets the runtime choose; autodist stays
 * deterministic).
 *
 * Training: ad_dropout_prepare_training gives a drawing node that has no
 * mask output one, so that the gradient dx = dy * mask * scale (the internal
 * EW op DropoutGrad) reads the mask the forward pass saved. Each step and
 * each worker draws its own mask: the stream of (step, rank) is documented at
 * ad_k_dropout_key (runtime/kernels.h); step 0 on worker 0 is numpy's stream
 * for `seed`. Replicas therefore do not reproduce a one-device run exactly
 * once dropout draws, unlike every other op. Inference plans and `autodist
 * infer` draw step 0's stream for each batch (or chunk) they run.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* What a Dropout node computes, from its attributes and constant inputs. */
typedef struct {
  int training; /* training_mode (opset 12+) */
  double ratio; /* drop probability, in the ratio's own precision */
  double scale; /* 1 / (1 - ratio), in double */
  int64_t seed; /* the seed attribute, 0 when absent */
  int random;   /* training with ratio > 0: draws a mask */
} dropout_cfg;

static ad_status dropout_config(ad_graph *g, const ad_node *n, dropout_cfg *c) {
  memset(c, 0, sizeof *c);
  c->ratio = 0.5; /* the ONNX default */
  if (g->opset < 12) {
    if (n->n_in > 1)
      return ad_fail(AD_ERR_INPUT, "%s: error: Dropout-%d takes one input, got %d",
                     ad_node_where(g, n), g->opset, n->n_in);
    c->ratio = ad_attr_float(n, "ratio", 0.5f);
  } else {
    ad_value *r = n->n_in > 1 ? n->in[1] : NULL, *t = n->n_in > 2 ? n->in[2] : NULL;
    if (t) {
      if (t->kind != AD_VAL_CONST || !t->data || t->dtype != AD_BOOL || ad_value_numel(t) != 1)
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: training_mode input '%s' must be a constant boolean scalar",
                       ad_node_where(g, n), t->name);
      c->training = *(const uint8_t *)t->data != 0;
    }
    if (r) {
      if (r->kind != AD_VAL_CONST || !r->data || ad_value_numel(r) != 1 ||
          (r->dtype != AD_F32 && r->dtype != AD_F64 && r->dtype != AD_F16))
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: ratio input '%s' must be a constant float scalar (float16, "
                       "float32 or float64)",
                       ad_node_where(g, n), r->name);
      c->ratio = r->dtype == AD_F64   ? *(const double *)r->data
                 : r->dtype == AD_F32 ? (double)*(const float *)r->data
                                      : (double)*(const _Float16 *)r->data;
    }
  }
  c->seed = ad_attr_int(n, "seed", 0);
  if (c->training && !(c->ratio >= 0 && c->ratio < 1))
    return ad_fail(AD_ERR_INPUT, "%s: error: ratio %g is outside [0, 1)", ad_node_where(g, n),
                   c->ratio);
  if (c->training && c->ratio > 0) {
    c->random = 1;
    if (c->seed < 0 || c->seed > (int64_t)UINT32_MAX)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: seed %lld is outside [0, 2^32) (numpy's legacy seeding, "
                     "which ONNX's reference uses)",
                     ad_node_where(g, n), (long long)c->seed);
    /* As ONNX's reference computes it with numpy 1.x: 1 - r promotes a float32
     * r to double, and the double scale is rounded to x's type when applied. */
    c->scale = 1.0 / (1.0 - c->ratio);
  }
  return AD_OK;
}

extern const ad_op ad_ops_random[];
#define DRAW (&ad_ops_random[1]) /* the DropoutDraw entry of the table below */

static ad_status infer_dropout(ad_graph *g, ad_node *n) {
  dropout_cfg c;
  AD_TRY(dropout_config(g, n, &c));
  ad_value *x = n->in[0];
  if (x->dtype != AD_F32 && x->dtype != AD_F64 && x->dtype != AD_F16)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: input '%s' is %s; Dropout takes float32, float64 or float16",
                   ad_node_where(g, n), x->name, ad_dtype_name(x->dtype));
  AD_TRY(ad_infer_same(g, n));
  if (n->n_out > 1 && n->out[1]) {
    ad_value *m = n->out[1];
    m->dtype = g->opset < 10 ? x->dtype : AD_BOOL; /* Dropout-7: T; 10+: bool */
    m->rank = x->rank;
    memcpy(m->dims, x->dims, sizeof(int64_t) * (size_t)m->rank);
  }
  if (c.random || n->n_out > 1) {
    n->op = DRAW;
    n->domain = DRAW->domain;
  }
  return AD_OK;
}

/* A drawing node scales the kept entries; any other Dropout passes dy through. */
static ad_status grad_dropout(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (!dy || !ad_grad_wants(gc, n->in[0]))
    return AD_OK;
  dropout_cfg c;
  AD_TRY(dropout_config(g, n, &c));
  if (!c.random) {
    ad_grad_acc(gc, n->in[0], dy);
    return AD_OK;
  }
  AD_ASSERT(n->n_out > 1 && n->out[1]); /* ad_dropout_prepare_training added it */
  ad_value *args[2] = {dy, n->out[1]};
  ad_attr a = ad_attr_fl("scale", (float)c.scale);
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "DropoutGrad", 2, args, &a, 1));
  return AD_OK;
}

ad_status ad_dropout_prepare_training(ad_graph *g) {
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    if (n->op != DRAW)
      continue;
    dropout_cfg c;
    AD_TRY(dropout_config(g, n, &c));
    if (!c.random)
      continue;
    ad_value *x = n->in[0], *y = n->out[0];
    if (x->dtype != AD_F32)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: training draws dropout masks over float32 only; '%s' is %s",
                     ad_node_where(g, n), x->name, ad_dtype_name(x->dtype));
    if (n->n_out > 1 && n->out[1])
      continue;
    ad_value **out = ad_arena_alloc(g->arena, 2 * sizeof *out);
    out[0] = y;
    out[1] = ad_value_new(g, ad_arena_printf(g->arena, "%s.dropout_mask", y->name), AD_BOOL,
                          y->rank, y->dims, AD_VAL_ACT);
    out[1]->producer = n;
    out[1]->batched = y->batched;
    n->out = out;
    n->n_out = 2;
  }
  return AD_OK;
}

static ad_status lower_dropout(ad_cg *cg, const ad_node *n) {
  ad_graph *g = ad_cg_graph(cg);
  dropout_cfg c;
  AD_TRY(dropout_config(g, n, &c));
  ad_value *x = n->in[0], *y = n->out[0];
  /* Written whenever declared: use counts may predate the gradient that reads it. */
  ad_value *m = n->n_out > 1 ? n->out[1] : NULL;
  /* The mask's "one": true, or 1 in x's float type at opsets 7-9 (infer_dropout
   * admits float x only, so the mask is bool or a float type). */
  int64_t one = m ? ad_op_one_slot(m->dtype) : 0;
  int64_t p[9] = {ad_value_numel(x),
                  (int64_t)ad_dtype_size(x->dtype),
                  x->dtype == AD_F64   ? AD_K_DROPOUT_F64
                  : x->dtype == AD_F16 ? AD_K_DROPOUT_F16
                                       : AD_K_DROPOUT_F32,
                  c.seed,
                  0,
                  0,
                  c.random,
                  m ? (int64_t)ad_dtype_size(m->dtype) : 0,
                  one};
  memcpy(&p[4], &c.ratio, sizeof c.ratio);
  memcpy(&p[5], &c.scale, sizeof c.scale);
  LLVMValueRef step = ad_cg_scratch(cg, sizeof(int64_t));
  LLVMBuildStore(ad_cg_builder(cg), ad_cg_step(cg), step);
  LLVMValueRef null = LLVMConstPointerNull(ad_cg_ptr_type(cg));
  LLVMValueRef ptrs[5] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, y), m ? ad_cg_ptr(cg, m) : null, step,
                          ad_cg_rt(cg)};
  ad_cg_call_kernel(cg, "ad_k_dropout", p, 9, ptrs, 5);
  return AD_OK;
}

static void cost_dropout(const ad_node *n, double *flops, double *bytes) {
  *flops = 2.0 * (double)ad_value_numel(n->in[0]);
  *bytes = (double)ad_value_bytes(n->in[0]);
  for (int i = 0; i < n->n_out; i++)
    *bytes += (double)ad_value_bytes(n->out[i]);
}

/* ---- DropoutGrad(dy, mask) = mask * dy * scale ---- */

static ad_status infer_dropout_grad(ad_graph *g, ad_node *n) {
  if (n->in[0]->dtype != AD_F32 || n->in[1]->dtype != AD_BOOL)
    return ad_fail(AD_ERR_INPUT, "%s: error: expects float32 dy and a bool mask",
                   ad_node_where(g, n));
  return ad_infer_same(g, n);
}

static LLVMValueRef emit_dropout_grad(ad_cg *cg, const ad_node *n, LLVMValueRef *in) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef keep = LLVMBuildUIToFP(b, in[1], ad_cg_f32_type(cg), "");
  LLVMValueRef scale = ad_cg_f32(cg, ad_attr_float(n, "scale", 1.0f));
  return LLVMBuildFMul(b, LLVMBuildFMul(b, keep, in[0], ""), scale, "");
}

static void cost_dropout_grad(const ad_node *n, double *flops, double *bytes) {
  *flops = 2.0 * (double)ad_value_numel(n->out[0]);
  *bytes =
      (double)(ad_value_bytes(n->in[0]) + ad_value_bytes(n->in[1]) + ad_value_bytes(n->out[0]));
}

/* ---- table ---- */

const ad_op ad_ops_random[] = {
    {.name = "Dropout",
     .domain = "",
     .min_opset = 7,
     .max_opset = AD_OPSET_MAX,
     .min_in = 1,
     .max_in = 3,
     .n_out = 2,
     .infer = infer_dropout,
     .grad = grad_dropout,
     .lower_kind = AD_LOWER_ALIAS},
    /* Must stay second (DRAW): a Dropout node that computes, set by infer_dropout. */
    {.name = "DropoutDraw",
     .domain = "ad",
     .min_in = 1,
     .max_in = 3,
     .n_out = 2,
     .infer = infer_dropout,
     .grad = grad_dropout,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_dropout,
     .cost = cost_dropout},
    {.name = "DropoutGrad",
     .domain = "ad",
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_dropout_grad,
     .lower_kind = AD_LOWER_EW,
     .emit = emit_dropout_grad,
     .cost = cost_dropout_grad},
    {0},
};
