/*
 * compiler/ops/train.c: internal ops that only training programs contain: the
 * cross-entropy loss, optimizer updates (PyTorch's torch.optim definitions,
 * operation for operation) and the all-reduce start/wait pair that strategies
 * place between the backward pass and the updates.
 *
 * Updates and communication have no outputs: they act on the buffers of their
 * inputs (parameters, optimizer state, gradient buckets), and the node order
 * fixes when.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* ---- SoftmaxCrossEntropy(logits [N, C], label int64 [N]) -> scalar ---- */

static ad_status infer_xent(ad_graph *g, ad_node *n) {
  AD_ASSERT(n->in[0]->rank == 2 && n->in[1]->dtype == AD_I64);
  n->out[0]->dtype = AD_F32;
  n->out[0]->rank = 0;
  return AD_OK;
}

static ad_status lower_xent(ad_cg *cg, const ad_node *n) {
  int64_t p[3] = {n->in[0]->dims[0], n->in[0]->dims[1], ad_k_slot(ad_attr_float(n, "scale", 1))};
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_xent_fwd", p, 3, ptrs, 3);
  return AD_OK;
}

static ad_status grad_xent(ad_grad *gc, const ad_node *n) {
  ad_value *args[3] = {n->in[0], n->in[1], ad_grad_out(gc, n, 0)};
  ad_attr a = ad_attr_fl("scale", ad_attr_float(n, "scale", 1));
  ad_grad_acc(gc, n->in[0], ad_grad_emit(gc, "SoftmaxCrossEntropyGrad", 3, args, &a, 1));
  return AD_OK;
}

static ad_status infer_xent_grad(ad_graph *g, ad_node *n) {
  return ad_infer_same(g, n);
}

static ad_status lower_xent_grad(ad_cg *cg, const ad_node *n) {
  int64_t p[3] = {n->in[0]->dims[0], n->in[0]->dims[1], ad_k_slot(ad_attr_float(n, "scale", 1))};
  LLVMValueRef ptrs[4] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]), ad_cg_ptr(cg, n->in[2]),
                          ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_xent_bwd", p, 3, ptrs, 4);
  return AD_OK;
}

static void cost_xent(const ad_node *n, double *flops, double *bytes) {
  *flops = 4.0 * (double)ad_value_numel(n->in[0]);
  *bytes = (double)ad_value_bytes(n->in[0]) * 2;
}

/* ---- optimizer updates ---- */

static ad_status infer_none(ad_graph *g, ad_node *n) {
  return AD_OK;
}

typedef struct {
  const ad_node *n;
  LLVMValueRef ptr[4];
  LLVMValueRef first_step;                 /* i1: step == 1 */
  LLVMValueRef step_size, bc2_sqrt, decay; /* Adam's per-step scalars */
} update_ctx;

static LLVMValueRef load_at(ad_cg *cg, LLVMValueRef base, LLVMValueRef i) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef addr = LLVMBuildGEP2(b, ad_cg_f32_type(cg), base, &i, 1, "");
  return LLVMBuildLoad2(b, ad_cg_f32_type(cg), addr, "");
}

static void store_at(ad_cg *cg, LLVMValueRef base, LLVMValueRef i, LLVMValueRef x) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMBuildStore(b, x, LLVMBuildGEP2(b, ad_cg_f32_type(cg), base, &i, 1, ""));
}

/*
 * torch.optim.SGD, per element:
 *   d = g + wd * p
 *   buf = step == 1 ? d : momentum * buf + (1 - dampening) * d
 *   d = nesterov ? d + momentum * buf : buf
 *   p = p - lr * d
 */
static void sgd_body(ad_cg *cg, LLVMValueRef i, void *vctx) {
  update_ctx *c = vctx;
  LLVMBuilderRef b = ad_cg_builder(cg);
  const ad_node *n = c->n;
  float lr = ad_attr_float(n, "lr", 0), mom = ad_attr_float(n, "momentum", 0);
  float damp = ad_attr_float(n, "dampening", 0), wd = ad_attr_float(n, "weight_decay", 0);
  LLVMValueRef p = load_at(cg, c->ptr[0], i), d = load_at(cg, c->ptr[1], i);
  if (wd != 0)
    d = LLVMBuildFAdd(b, d, LLVMBuildFMul(b, p, ad_cg_f32(cg, wd), ""), "");
  if (n->n_in == 3) {
    LLVMValueRef buf = load_at(cg, c->ptr[2], i);
    LLVMValueRef upd = LLVMBuildFAdd(b, LLVMBuildFMul(b, buf, ad_cg_f32(cg, mom), ""),
                                     LLVMBuildFMul(b, d, ad_cg_f32(cg, 1 - damp), ""), "");
    buf = LLVMBuildSelect(b, c->first_step, d, upd, "");
    store_at(cg, c->ptr[2], i, buf);
    d = ad_attr_int(n, "nesterov", 0)
            ? LLVMBuildFAdd(b, d, LLVMBuildFMul(b, buf, ad_cg_f32(cg, mom), ""), "")
            : buf;
  }
  p = LLVMBuildFAdd(b, p, LLVMBuildFMul(b, d, ad_cg_f32(cg, -lr), ""), "");
  store_at(cg, c->ptr[0], i, p);
}

/*
 * torch.optim.Adam / AdamW (single-tensor path), per element:
 *   AdamW: p = p * (1 - lr * wd);  Adam: g = g + wd * p
 *   m = m * b1 + (1 - b1) * g;  v = v * b2 + (1 - b2) * g * g
 *   p = p - step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t)
 * The per-step scalars are computed in double, like Python floats in torch.optim.
 */
static void adam_body(ad_cg *cg, LLVMValueRef i, void *vctx) {
  update_ctx *c = vctx;
  LLVMBuilderRef b = ad_cg_builder(cg);
  const ad_node *n = c->n;
  float b1 = ad_attr_float(n, "beta1", 0.9f), b2 = ad_attr_float(n, "beta2", 0.999f);
  float eps = ad_attr_float(n, "eps", 1e-8f), wd = ad_attr_float(n, "weight_decay", 0);
  LLVMValueRef p = load_at(cg, c->ptr[0], i), g = load_at(cg, c->ptr[1], i);
  LLVMValueRef m = load_at(cg, c->ptr[2], i), v = load_at(cg, c->ptr[3], i);
  if (ad_attr_int(n, "decoupled", 0)) {
    if (wd != 0)
      p = LLVMBuildFMul(b, p, c->decay, "");
  } else if (wd != 0) {
    g = LLVMBuildFAdd(b, g, LLVMBuildFMul(b, p, ad_cg_f32(cg, wd), ""), "");
  }
  m = LLVMBuildFAdd(b, LLVMBuildFMul(b, m, ad_cg_f32(cg, b1), ""),
                    LLVMBuildFMul(b, g, ad_cg_f32(cg, 1 - b1), ""), "");
  v = LLVMBuildFAdd(b, LLVMBuildFMul(b, v, ad_cg_f32(cg, b2), ""),
                    LLVMBuildFMul(b, LLVMBuildFMul(b, g, g, ""), ad_cg_f32(cg, 1 - b2), ""), "");
  store_at(cg, c->ptr[2], i, m);
  store_at(cg, c->ptr[3], i, v);
  LLVMValueRef sq = ad_cg_intrinsic(cg, "llvm.sqrt.f32", 1, &v);
  LLVMValueRef denom =
      LLVMBuildFAdd(b, LLVMBuildFDiv(b, sq, c->bc2_sqrt, ""), ad_cg_f32(cg, eps), "");
  LLVMValueRef upd = LLVMBuildFMul(b, LLVMBuildFDiv(b, m, denom, ""), c->step_size, "");
  store_at(cg, c->ptr[0], i, LLVMBuildFSub(b, p, upd, ""));
}

/* 1 - beta^step in double, emitted once before the loop. */
static LLVMValueRef one_minus_pow(ad_cg *cg, float beta) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(ad_cg_context(cg));
  LLVMValueRef args[2] = {LLVMConstReal(f64, (double)beta),
                          LLVMBuildSIToFP(b, ad_cg_step(cg), f64, "")};
  return LLVMBuildFSub(b, LLVMConstReal(f64, 1.0), ad_cg_intrinsic(cg, "llvm.pow.f64", 2, args),
                       "");
}

static ad_status lower_update(ad_cg *cg, const ad_node *n) {
  LLVMBuilderRef b = ad_cg_builder(cg);
  update_ctx c = {.n = n};
  for (int i = 0; i < n->n_in; i++)
    c.ptr[i] = ad_cg_ptr(cg, n->in[i]);
  c.first_step = LLVMBuildICmp(b, LLVMIntEQ, ad_cg_step(cg), ad_cg_i64(cg, 1), "");
  LLVMValueRef count = ad_cg_i64(cg, ad_value_numel(n->in[0]));
  if (!strcmp(n->op_type, "SgdUpdate")) {
    ad_cg_loop(cg, count, sgd_body, &c);
    return AD_OK;
  }
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(ad_cg_context(cg));
  LLVMTypeRef f32 = ad_cg_f32_type(cg);
  double lr = ad_attr_float(n, "lr", 0), wd = ad_attr_float(n, "weight_decay", 0);
  LLVMValueRef bc1 = one_minus_pow(cg, ad_attr_float(n, "beta1", 0.9f));
  LLVMValueRef bc2 = one_minus_pow(cg, ad_attr_float(n, "beta2", 0.999f));
  LLVMValueRef step_size = LLVMBuildFDiv(b, LLVMConstReal(f64, lr), bc1, "");
  LLVMValueRef bc2_sqrt = ad_cg_intrinsic(cg, "llvm.sqrt.f64", 1, &bc2);
  c.step_size = LLVMBuildFPTrunc(b, step_size, f32, "");
  c.bc2_sqrt = LLVMBuildFPTrunc(b, bc2_sqrt, f32, "");
  c.decay = ad_cg_f32(cg, (float)(1.0 - lr * wd));
  ad_cg_loop(cg, count, adam_body, &c);
  return AD_OK;
}

static void cost_update(const ad_node *n, double *flops, double *bytes) {
  *flops = 8.0 * (double)ad_value_numel(n->in[0]);
  *bytes = 2.0 * (double)n->n_in * (double)ad_value_bytes(n->in[0]);
}

/* ---- all-reduce of one gradient bucket (inputs: the bucket's gradients,
 * contiguous in memory by the memory plan): AllReduceStart/AllReduceWait
 * around compute it overlaps with, or blocking AllReduce ---- */

/* With attribute compress=1 the last input is the bucket's binary16 staging
 * buffer: the gradients (contiguous from in[0]) are rounded to it before the
 * all-reduce and widened back after. */
typedef struct {
  LLVMValueRef f32, f16;
  int to_half;
} convert_ctx;

static void convert_body(ad_cg *cg, LLVMValueRef i, void *vctx) {
  convert_ctx *c = vctx;
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMTypeRef half = LLVMHalfTypeInContext(ad_cg_context(cg));
  LLVMValueRef pf = LLVMBuildGEP2(b, ad_cg_f32_type(cg), c->f32, &i, 1, "");
  LLVMValueRef ph = LLVMBuildGEP2(b, half, c->f16, &i, 1, "");
  if (c->to_half)
    LLVMBuildStore(b, LLVMBuildFPTrunc(b, LLVMBuildLoad2(b, ad_cg_f32_type(cg), pf, ""), half, ""),
                   ph);
  else
    LLVMBuildStore(b, LLVMBuildFPExt(b, LLVMBuildLoad2(b, half, ph, ""), ad_cg_f32_type(cg), ""),
                   pf);
}

static int64_t bucket_count(const ad_node *n, int compressed) {
  int64_t count = 0;
  for (int i = 0; i < n->n_in - compressed; i++)
    count += ad_value_numel(n->in[i]);
  return count;
}

static void convert_bucket(ad_cg *cg, const ad_node *n, int to_half) {
  convert_ctx c = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[n->n_in - 1]), to_half};
  ad_cg_loop(cg, ad_cg_i64(cg, bucket_count(n, 1)), convert_body, &c);
}

static ad_status lower_allreduce_start(ad_cg *cg, const ad_node *n) {
  int z = (int)ad_attr_int(n, "compress", 0);
  int blocking = !strcmp(n->op_type, "AllReduce");
  if (z)
    convert_bucket(cg, n, 1);
  LLVMValueRef rt = ad_cg_rt(cg), cnt = ad_cg_i64(cg, bucket_count(n, z));
  LLVMValueRef buf = ad_cg_ptr(cg, n->in[z ? n->n_in - 1 : 0]);
  if (blocking) {
    LLVMValueRef args[3] = {rt, buf, cnt};
    ad_cg_call_void(cg, z ? "ad_rt_allreduce_f16" : "ad_rt_allreduce", 3, args);
    if (z)
      convert_bucket(cg, n, 0);
  } else {
    LLVMValueRef args[4] = {rt, ad_cg_i64(cg, ad_attr_int(n, "bucket", 0)), buf, cnt};
    ad_cg_call_void(cg, z ? "ad_rt_allreduce_start_f16" : "ad_rt_allreduce_start", 4, args);
  }
  return AD_OK;
}

static ad_status lower_allreduce_wait(ad_cg *cg, const ad_node *n) {
  LLVMValueRef args[2] = {ad_cg_rt(cg), ad_cg_i64(cg, ad_attr_int(n, "bucket", 0))};
  ad_cg_call_void(cg, "ad_rt_allreduce_wait", 2, args);
  if (ad_attr_int(n, "compress", 0))
    convert_bucket(cg, n, 0);
  return AD_OK;
}

#define INTERNAL_CALL(NAME, MIN, MAX, NOUT, INFER, GRAD, LOWER, COST)                              \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = MIN, .max_in = MAX, .n_out = NOUT, .infer = INFER,     \
    .grad = GRAD, .lower_kind = AD_LOWER_CALL, .lower = LOWER, .cost = COST                        \
  }

const ad_op ad_ops_train[] = {
    INTERNAL_CALL("SoftmaxCrossEntropy", 2, 2, 1, infer_xent, grad_xent, lower_xent, cost_xent),
    INTERNAL_CALL("SoftmaxCrossEntropyGrad", 3, 3, 1, infer_xent_grad, NULL, lower_xent_grad,
                  cost_xent),
    INTERNAL_CALL("SgdUpdate", 2, 3, 0, infer_none, NULL, lower_update, cost_update),
    INTERNAL_CALL("AdamUpdate", 4, 4, 0, infer_none, NULL, lower_update, cost_update),
    INTERNAL_CALL("AllReduceStart", 1, 1 << 20, 0, infer_none, NULL, lower_allreduce_start, NULL),
    INTERNAL_CALL("AllReduceWait", 1, 1 << 20, 0, infer_none, NULL, lower_allreduce_wait, NULL),
    INTERNAL_CALL("AllReduce", 1, 1 << 20, 0, infer_none, NULL, lower_allreduce_start, NULL),
    {0},
};
