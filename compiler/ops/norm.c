/*
 * compiler/ops/norm.c: normalization ops (BatchNormalization,
 * LayerNormalization, InstanceNormalization, MeanVarianceNormalization, LRN)
 * and the internal gradient ops of the first two, lowered to the kernels of
 * runtime/kernels_norm.c.
 *
 * BatchNormalization has three behaviours:
 *  - inference (ONNX training_mode 0, or opset < 14 with Y only): normalize
 *    with the running statistics inputs;
 *  - ONNX training mode (training_mode 1, or opset < 14 with more outputs):
 *    normalize with the batch statistics and output the updated running
 *    statistics (ONNX: biased batch variance);
 *  - autodist training ("ad_train" attribute, set by ad_norm_prepare_training
 *    when a training program is built): PyTorch's model.train(). Batch
 *    statistics normalize, and the running mean / variance initializers are
 *    updated in place (momentum as ONNX defines it, i.e. 1 - PyTorch's, and the
 *    unbiased batch variance, as PyTorch), so that `run --save` writes them.
 * Gradient ops recompute the statistics from x (no saved buffers).
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

enum { BN_INFER, BN_ONNX_TRAIN, BN_AD_TRAIN };

static int bn_mode(const ad_node *n) {
  if (ad_attr_int(n, "ad_train", 0))
    return BN_AD_TRAIN;
  if (n->op->min_opset >= 14)
    return ad_attr_int(n, "training_mode", 0) ? BN_ONNX_TRAIN : BN_INFER;
  return n->n_out > 1 ? BN_ONNX_TRAIN : BN_INFER;
}

static LLVMValueRef null_ptr(ad_cg *cg) {
  return LLVMConstPointerNull(ad_cg_ptr_type(cg));
}

static LLVMValueRef opt_ptr(ad_cg *cg, const ad_node *n, int out_index) {
  return out_index < n->n_out && n->out[out_index] ? ad_cg_ptr(cg, n->out[out_index])
                                                   : null_ptr(cg);
}

/* x as [N, C, S]. */
static void ncs(const ad_value *x, int64_t *p) {
  p[0] = x->dims[0];
  p[1] = x->dims[1];
  p[2] = 1;
  for (int i = 2; i < x->rank; i++)
    p[2] *= x->dims[i];
}

static ad_status need_vec(ad_graph *g, ad_node *n, int i, int64_t c) {
  AD_TRY(ad_infer_need_f32(g, n, i));
  const ad_value *v = n->in[i];
  if (v->rank != 1 || v->dims[0] != c)
    return ad_fail(AD_ERR_INPUT, "%s: error: input %d ('%s') must have shape [%lld], got %s",
                   ad_node_where(g, n), i, v->name, (long long)c, ad_shape_str(v->rank, v->dims));
  return AD_OK;
}

static void set_vec(ad_value *v, int64_t c) {
  v->dtype = AD_F32;
  v->rank = 1;
  v->dims[0] = c;
}

/* ---- BatchNormalization ---- */

static ad_status infer_bn(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  ad_value *x = n->in[0];
  if (x->rank < 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must be N x C x ..., got %s",
                   ad_node_where(g, n), ad_shape_str(x->rank, x->dims));
  for (int i = 1; i < 5; i++)
    AD_TRY(need_vec(g, n, i, x->dims[1]));
  if (g->opset < 9 && ad_attr_int(n, "spatial", 1) != 1)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: spatial=0 (statistics per activation) is not supported",
                   ad_node_where(g, n));
  if (g->opset < 7 && (!ad_attr_int(n, "is_test", 0) || n->n_out > 1))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: only is_test=1 with the one output Y is supported at opset %d",
                   ad_node_where(g, n), g->opset);
  int mode = bn_mode(n);
  if (mode == BN_INFER && n->n_out > 1)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: outputs running_mean/running_var exist only with training_mode=1",
                   ad_node_where(g, n));
  AD_TRY(ad_infer_same(g, n));
  for (int i = 1; i < n->n_out; i++)
    set_vec(n->out[i], x->dims[1]);
  return AD_OK;
}

/* Float `k` of the buffer at base. */
static LLVMValueRef f32_at(ad_cg *cg, LLVMValueRef base, int64_t k) {
  LLVMValueRef idx = ad_cg_i64(cg, k);
  return LLVMBuildGEP2(ad_cg_builder(cg), ad_cg_f32_type(cg), base, &idx, 1, "");
}

static void allreduce(ad_cg *cg, LLVMValueRef buf, int64_t count) {
  LLVMValueRef args[3] = {ad_cg_rt(cg), buf, ad_cg_i64(cg, count)};
  ad_cg_call_void(cg, "ad_rt_allreduce", 3, args);
}

/* The global per-channel sum and centered sum of squares of x (several
 * replicas) into sum[0..C) and sq[0..C): two all-reduces of C floats. */
static void sync_stats(ad_cg *cg, const ad_node *n, LLVMValueRef sum, LLVMValueRef sq,
                       int64_t count) {
  int64_t q[5];
  ncs(n->in[0], q);
  q[3] = 0;
  q[4] = count;
  LLVMValueRef x = ad_cg_ptr(cg, n->in[0]);
  LLVMValueRef a[3] = {x, sum, sum};
  ad_cg_call_kernel(cg, "ad_k_bn_channel_sums", q, 5, a, 3);
  allreduce(cg, sum, q[1]);
  q[3] = 1;
  LLVMValueRef b[3] = {x, sum, sq};
  ad_cg_call_kernel(cg, "ad_k_bn_channel_sums", q, 5, b, 3);
  allreduce(cg, sq, q[1]);
}

/* Values per channel over all replicas. */
static int64_t bn_count(const ad_node *n) {
  int64_t q[3];
  ncs(n->in[0], q);
  return q[0] * q[2] * ad_attr_int(n, "ad_replicas", 1);
}

typedef struct {
  LLVMValueRef src, dst;
} copy_ctx;

static void copy_body(ad_cg *cg, LLVMValueRef i, void *vctx) {
  copy_ctx *c = vctx;
  LLVMBuilderRef b = ad_cg_builder(cg);
  LLVMValueRef s = LLVMBuildGEP2(b, ad_cg_f32_type(cg), c->src, &i, 1, "");
  LLVMValueRef d = LLVMBuildGEP2(b, ad_cg_f32_type(cg), c->dst, &i, 1, "");
  LLVMBuildStore(b, LLVMBuildLoad2(b, ad_cg_f32_type(cg), s, ""), d);
}

/* A training-mode export's running_mean / running_var outputs (outputs 1, 2)
 * are the updated statistics, which autodist training keeps in the inputs. */
static void copy_running_outputs(ad_cg *cg, const ad_node *n) {
  for (int i = 1; i < 3 && i < n->n_out; i++) {
    copy_ctx c = {ad_cg_ptr(cg, n->in[2 + i]), ad_cg_ptr(cg, n->out[i])};
    ad_cg_loop(cg, ad_cg_i64(cg, n->in[0]->dims[1]), copy_body, &c);
  }
}

static ad_status lower_bn(ad_cg *cg, const ad_node *n) {
  int64_t p[6];
  ncs(n->in[0], p);
  p[3] = ad_k_slot(ad_attr_float(n, "epsilon", 1e-5f));
  p[4] = ad_k_slot(ad_attr_float(n, "momentum", 0.9f));
  int mode = bn_mode(n);
  p[5] = mode == BN_AD_TRAIN;
  LLVMValueRef in[5];
  for (int i = 0; i < 5; i++)
    in[i] = ad_cg_ptr(cg, n->in[i]);
  if (mode == BN_INFER) {
    LLVMValueRef ptrs[6] = {in[0], in[1], in[2], in[3], in[4], ad_cg_ptr(cg, n->out[0])};
    ad_cg_call_kernel(cg, "ad_k_bn_infer", p, 4, ptrs, 6);
    return AD_OK;
  }
  LLVMValueRef ptrs[10] = {in[0],
                           in[1],
                           in[2],
                           in[3],
                           in[4],
                           ad_cg_ptr(cg, n->out[0]),
                           opt_ptr(cg, n, 1),
                           opt_ptr(cg, n, 2),
                           opt_ptr(cg, n, 3),
                           opt_ptr(cg, n, 4)};
  if (mode == BN_AD_TRAIN && ad_attr_int(n, "ad_replicas", 1) > 1) {
    int64_t C = p[1], count = bn_count(n);
    LLVMValueRef ws = ad_cg_scratch(cg, (size_t)(2 * C) * sizeof(float));
    LLVMValueRef sum = f32_at(cg, ws, 0), sq = f32_at(cg, ws, C);
    sync_stats(cg, n, sum, sq, count);
    p[5] = count;
    LLVMValueRef a[10] = {in[0],
                          in[1],
                          in[2],
                          sum,
                          sq,
                          ad_cg_ptr(cg, n->out[0]),
                          in[3],
                          in[4],
                          opt_ptr(cg, n, 3),
                          opt_ptr(cg, n, 4)};
    ad_cg_call_kernel(cg, "ad_k_bn_sync_fwd", p, 6, a, 10);
    copy_running_outputs(cg, n);
    return AD_OK;
  }
  if (mode == BN_AD_TRAIN) {
    /* In place: the running statistics are initializers (state, see
     * ad_norm_prepare_training). */
    ptrs[6] = in[3];
    ptrs[7] = in[4];
  }
  ad_cg_call_kernel(cg, "ad_k_bn_train_fwd", p, 6, ptrs, 10);
  if (mode == BN_AD_TRAIN)
    copy_running_outputs(cg, n);
  return AD_OK;
}

/* BatchNormGrad(x, scale, mean, var, dy) -> dx, dscale, dbias. */
static ad_status grad_bn(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  int mode = bn_mode(n);
  for (int i = 1; i < n->n_out; i++)
    if (ad_grad_out(gc, n, i))
      return ad_fail(AD_ERR_INPUT, "%s: error: no gradient through the statistics outputs",
                     ad_node_where(g, n));
  if (mode == BN_ONNX_TRAIN)
    return ad_fail(AD_ERR_INPUT, "%s: error: no gradient for training_mode=1 outside training",
                   ad_node_where(g, n));
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (!dy)
    return AD_OK;
  ad_value *args[5] = {n->in[0], n->in[1], n->in[3], n->in[4], dy};
  ad_attr at[3] = {ad_attr_fl("epsilon", ad_attr_float(n, "epsilon", 1e-5f)),
                   ad_attr_i("batch_stats", mode == BN_AD_TRAIN),
                   ad_attr_i("ad_replicas", ad_attr_int(n, "ad_replicas", 1))};
  ad_value *dx = ad_grad_emit(gc, "BatchNormGrad", 5, args, at, 3);
  ad_node *gn = dx->producer;
  if (ad_grad_wants(gc, n->in[0]))
    ad_grad_acc(gc, n->in[0], dx);
  if (ad_grad_wants(gc, n->in[1]))
    ad_grad_acc(gc, n->in[1], gn->out[1]);
  if (ad_grad_wants(gc, n->in[2]))
    ad_grad_acc(gc, n->in[2], gn->out[2]);
  return AD_OK;
}

static ad_status infer_bn_grad(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *dy = n->in[4];
  AD_ASSERT(x->rank == dy->rank && x->rank >= 2);
  AD_TRY(ad_infer_same(g, n));
  set_vec(n->out[1], x->dims[1]);
  set_vec(n->out[2], x->dims[1]);
  return AD_OK;
}

static ad_status lower_bn_grad(ad_cg *cg, const ad_node *n) {
  int64_t p[5];
  ncs(n->in[0], p);
  p[3] = ad_k_slot(ad_attr_float(n, "epsilon", 1e-5f));
  p[4] = ad_attr_int(n, "batch_stats", 0);
  if (p[4] && ad_attr_int(n, "ad_replicas", 1) > 1) {
    /* Global statistics again (as the forward), then the global sums of dy
     * and dy * (x - mean): three all-reduces. */
    int64_t C = p[1], count = bn_count(n);
    LLVMValueRef ws = ad_cg_scratch(cg, (size_t)(4 * C) * sizeof(float));
    LLVMValueRef sum = f32_at(cg, ws, 0), sq = f32_at(cg, ws, C), gs = f32_at(cg, ws, 2 * C);
    sync_stats(cg, n, sum, sq, count);
    p[4] = count;
    LLVMValueRef x = ad_cg_ptr(cg, n->in[0]), dy = ad_cg_ptr(cg, n->in[4]);
    LLVMValueRef a[7] = {x, sum, sq, dy, gs, ad_cg_ptr(cg, n->out[1]), ad_cg_ptr(cg, n->out[2])};
    ad_cg_call_kernel(cg, "ad_k_bn_sync_bwd_sums", p, 5, a, 7);
    allreduce(cg, gs, 2 * C);
    LLVMValueRef b[7] = {x, ad_cg_ptr(cg, n->in[1]), sum, sq, gs, dy, ad_cg_ptr(cg, n->out[0])};
    ad_cg_call_kernel(cg, "ad_k_bn_sync_bwd", p, 5, b, 7);
    return AD_OK;
  }
  LLVMValueRef ptrs[8];
  for (int i = 0; i < 5; i++)
    ptrs[i] = ad_cg_ptr(cg, n->in[i]);
  for (int i = 0; i < 3; i++)
    ptrs[5 + i] = ad_cg_ptr(cg, n->out[i]);
  ad_cg_call_kernel(cg, "ad_k_bn_bwd", p, 5, ptrs, 8);
  return AD_OK;
}

/*
 * Called when a training program is built: every BatchNormalization trains
 * like PyTorch's model.train() (see the file comment). With several replicas
 * the statistics are those of the global batch (a synchronized batch norm:
 * all-reduces of per-channel sums in the forward and backward passes), so
 * that any replica count trains like one device (DESIGN.md, semantics).
 */
ad_status ad_norm_prepare_training(ad_graph *g, int replicas) {
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    if (strcmp(n->op_type, "BatchNormalization") || strcmp(n->domain, ""))
      continue;
    for (int i = 3; i < 5; i++)
      if (n->in[i]->kind != AD_VAL_PARAM)
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: running %s '%s' is not an initializer of its own, so training "
                       "cannot update and save it (torch.onnx.export merges initializers with "
                       "equal values, e.g. a fresh BatchNorm's running_var and weight, into "
                       "Identity nodes: give them distinct values before exporting)",
                       ad_node_where(g, n), i == 3 ? "mean" : "variance", n->in[i]->name);
    ad_attr *attrs = ad_arena_alloc(g->arena, sizeof(ad_attr) * (size_t)(n->n_attr + 2));
    if (n->n_attr)
      memcpy(attrs, n->attrs, sizeof(ad_attr) * (size_t)n->n_attr);
    attrs[n->n_attr] = ad_attr_i("ad_train", 1);
    attrs[n->n_attr + 1] = ad_attr_i("ad_replicas", replicas);
    n->attrs = attrs;
    n->n_attr += 2;
    n->in[3]->updated = n->in[4]->updated = true;
  }
  return AD_OK;
}

/* ---- LayerNormalization (opset 17) ---- */

/* Rows of x for axis a: outer = prod(dims[:a]), inner = prod(dims[a:]). */
static ad_status ln_rows(ad_graph *g, const ad_node *n, const ad_value *x, int64_t *outer,
                         int64_t *inner, int *axis) {
  int64_t a = ad_attr_int(n, "axis", -1);
  if (a < -x->rank || a >= x->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                   ad_node_where(g, n), (long long)a, x->rank);
  *axis = (int)(a < 0 ? a + x->rank : a);
  *outer = *inner = 1;
  for (int i = 0; i < x->rank; i++)
    *(i < *axis ? outer : inner) *= x->dims[i];
  return AD_OK;
}

static ad_status infer_ln(ad_graph *g, ad_node *n) {
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      AD_TRY(ad_infer_need_f32(g, n, i));
  ad_value *x = n->in[0];
  int64_t outer, inner;
  int axis;
  AD_TRY(ln_rows(g, n, x, &outer, &inner, &axis));
  for (int i = 1; i < n->n_in; i++)
    if (n->in[i] && ad_value_numel(n->in[i]) != inner)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: input %d ('%s') %s must have the normalized shape (%lld "
                     "elements); broadcasting it is not supported",
                     ad_node_where(g, n), i, n->in[i]->name,
                     ad_shape_str(n->in[i]->rank, n->in[i]->dims), (long long)inner);
  if (ad_attr_int(n, "stash_type", 1) != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: only stash_type=1 (float32) is supported",
                   ad_node_where(g, n));
  AD_TRY(ad_infer_same(g, n));
  for (int j = 1; j < n->n_out; j++) {
    ad_value *v = n->out[j];
    v->dtype = AD_F32;
    v->rank = x->rank;
    for (int i = 0; i < x->rank; i++)
      v->dims[i] = i < axis ? x->dims[i] : 1;
  }
  return AD_OK;
}

static ad_status lower_ln(ad_cg *cg, const ad_node *n) {
  int64_t p[3];
  int axis;
  AD_TRY(ln_rows(ad_cg_graph(cg), n, n->in[0], &p[0], &p[1], &axis));
  p[2] = ad_k_slot(ad_attr_float(n, "epsilon", 1e-5f));
  ad_value *b = n->n_in > 2 ? n->in[2] : NULL;
  LLVMValueRef ptrs[6] = {
      ad_cg_ptr(cg, n->in[0]),  ad_cg_ptr(cg, n->in[1]), b ? ad_cg_ptr(cg, b) : null_ptr(cg),
      ad_cg_ptr(cg, n->out[0]), opt_ptr(cg, n, 1),       opt_ptr(cg, n, 2)};
  ad_cg_call_kernel(cg, "ad_k_layernorm_fwd", p, 3, ptrs, 6);
  return AD_OK;
}

/* LayerNormGrad(x, scale, dy) -> dx, dscale, dbias (dscale, dbias shaped like scale). */
static ad_status grad_ln(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  for (int i = 1; i < n->n_out; i++)
    if (ad_grad_out(gc, n, i))
      return ad_fail(AD_ERR_INPUT, "%s: error: no gradient through the Mean/InvStdDev outputs",
                     ad_node_where(g, n));
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (!dy)
    return AD_OK;
  ad_value *args[3] = {n->in[0], n->in[1], dy};
  ad_attr at[2] = {ad_attr_i("axis", ad_attr_int(n, "axis", -1)),
                   ad_attr_fl("epsilon", ad_attr_float(n, "epsilon", 1e-5f))};
  ad_value *dx = ad_grad_emit(gc, "LayerNormGrad", 3, args, at, 2);
  ad_node *gn = dx->producer;
  ad_value *b = n->n_in > 2 ? n->in[2] : NULL;
  if (ad_grad_wants(gc, n->in[0]))
    ad_grad_acc(gc, n->in[0], dx);
  if (ad_grad_wants(gc, n->in[1]))
    ad_grad_acc(gc, n->in[1], gn->out[1]);
  if (b && ad_grad_wants(gc, b)) {
    ad_value *db = gn->out[2];
    if (b->rank != db->rank || memcmp(b->dims, db->dims, sizeof(int64_t) * (size_t)b->rank)) {
      int64_t len = b->rank;
      ad_value *shape = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
      shape->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(len ? len : 1));
      memcpy(shape->data, b->dims, sizeof(int64_t) * (size_t)len);
      ad_value *r[2] = {db, shape};
      db = ad_grad_emit(gc, "Reshape", 2, r, NULL, 0);
    }
    ad_grad_acc(gc, b, db);
  }
  return AD_OK;
}

static ad_status infer_ln_grad(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_same(g, n));
  for (int i = 1; i < 3; i++) {
    ad_value *v = n->out[i], *s = n->in[1];
    v->dtype = AD_F32;
    v->rank = s->rank;
    memcpy(v->dims, s->dims, sizeof(int64_t) * (size_t)s->rank);
  }
  return AD_OK;
}

static ad_status lower_ln_grad(ad_cg *cg, const ad_node *n) {
  int64_t p[3];
  int axis;
  AD_TRY(ln_rows(ad_cg_graph(cg), n, n->in[0], &p[0], &p[1], &axis));
  p[2] = ad_k_slot(ad_attr_float(n, "epsilon", 1e-5f));
  LLVMValueRef ptrs[6] = {ad_cg_ptr(cg, n->in[0]),  ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->in[2]),  ad_cg_ptr(cg, n->out[0]),
                          ad_cg_ptr(cg, n->out[1]), ad_cg_ptr(cg, n->out[2])};
  ad_cg_call_kernel(cg, "ad_k_layernorm_bwd", p, 3, ptrs, 6);
  return AD_OK;
}

/* ---- InstanceNormalization ---- */

static ad_status infer_in(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  ad_value *x = n->in[0];
  if (x->rank < 3)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must be N x C x D1 x ..., got %s",
                   ad_node_where(g, n), ad_shape_str(x->rank, x->dims));
  AD_TRY(need_vec(g, n, 1, x->dims[1]));
  AD_TRY(need_vec(g, n, 2, x->dims[1]));
  return ad_infer_same(g, n);
}

static ad_status lower_in(ad_cg *cg, const ad_node *n) {
  int64_t p[4];
  ncs(n->in[0], p);
  p[3] = ad_k_slot(ad_attr_float(n, "epsilon", 1e-5f));
  LLVMValueRef ptrs[4] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]), ad_cg_ptr(cg, n->in[2]),
                          ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_instnorm_fwd", p, 4, ptrs, 4);
  return AD_OK;
}

/* ---- MeanVarianceNormalization ---- */

static ad_status mvn_params(ad_graph *g, const ad_node *n, int64_t *p, int64_t *kept) {
  const ad_value *x = n->in[0];
  int r = x->rank;
  const int64_t *axes;
  static const int64_t dflt[3] = {0, 2, 3};
  int na = ad_attr_ints(n, "axes", &axes);
  if (na < 0) {
    axes = dflt;
    na = 3;
  }
  p[0] = r;
  for (int i = 0; i < r; i++) {
    p[1 + i] = x->dims[i];
    p[1 + r + i] = 0;
  }
  for (int k = 0; k < na; k++) {
    int64_t a = axes[k];
    if (a < -r || a >= r)
      return ad_fail(AD_ERR_INPUT, "%s: error: axis %lld is out of range for rank %d",
                     ad_node_where(g, n), (long long)a, r);
    p[1 + r + (a < 0 ? a + r : a)] = 1;
  }
  p[1 + 2 * r] = ad_k_slot(1e-9f);
  *kept = 1;
  for (int i = 0; i < r; i++)
    if (!p[1 + r + i])
      *kept *= x->dims[i];
  return AD_OK;
}

static ad_status infer_mvn(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  int64_t p[2 + 2 * AD_MAX_RANK], kept;
  AD_TRY(mvn_params(g, n, p, &kept));
  return ad_infer_same(g, n);
}

static ad_status lower_mvn(ad_cg *cg, const ad_node *n) {
  int64_t p[2 + 2 * AD_MAX_RANK], kept;
  AD_TRY(mvn_params(ad_cg_graph(cg), n, p, &kept));
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0]),
                          ad_cg_scratch(cg, (size_t)(2 * kept) * sizeof(double))};
  ad_cg_call_kernel(cg, "ad_k_mvn_fwd", p, 2 + 2 * n->in[0]->rank, ptrs, 3);
  return AD_OK;
}

/* ---- LRN ---- */

static ad_status infer_lrn(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  if (n->in[0]->rank < 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must be N x C x ..., got %s",
                   ad_node_where(g, n), ad_shape_str(n->in[0]->rank, n->in[0]->dims));
  if (ad_attr_int(n, "size", 0) < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute size (>= 1) is required",
                   ad_node_where(g, n));
  return ad_infer_same(g, n);
}

static ad_status lower_lrn(ad_cg *cg, const ad_node *n) {
  int64_t p[7];
  ncs(n->in[0], p);
  p[3] = ad_attr_int(n, "size", 1);
  p[4] = ad_k_slot(ad_attr_float(n, "alpha", 1e-4f));
  p[5] = ad_k_slot(ad_attr_float(n, "beta", 0.75f));
  p[6] = ad_k_slot(ad_attr_float(n, "bias", 1.0f));
  LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0])};
  ad_cg_call_kernel(cg, "ad_k_lrn_fwd", p, 7, ptrs, 2);
  return AD_OK;
}

/* A few passes over the input and output. */
static void cost_norm(const ad_node *n, double *flops, double *bytes) {
  *flops = 8.0 * (double)ad_value_numel(n->in[0]);
  *bytes = 0;
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      *bytes += (double)ad_value_bytes(n->in[i]);
  for (int i = 0; i < n->n_out; i++)
    *bytes += (double)ad_value_bytes(n->out[i]);
}

#define NORM_OP(NAME, LO, HI, MINI, MAXI, NOUT, INFER, GRAD, LOWER)                                \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = HI, .min_in = MINI, .max_in = MAXI,  \
    .n_out = NOUT, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_CALL, .lower = LOWER,      \
    .cost = cost_norm                                                                              \
  }
#define INTERNAL_OP(NAME, NIN, NOUT, INFER, LOWER)                                                 \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = NIN, .max_in = NIN, .n_out = NOUT, .infer = INFER,     \
    .lower_kind = AD_LOWER_CALL, .lower = LOWER, .cost = cost_norm                                 \
  }

const ad_op ad_ops_norm[] = {
    /* Opset 9 (in force at 11-13): the number of outputs selects training. */
    /* BatchNormalization-7 is 9 with a 'spatial' attribute (1: what 9 does);
     * 6 adds 'is_test' (1: inference, what 9 does without the extra outputs). */
    NORM_OP("BatchNormalization", 6, 13, 5, 5, 5, infer_bn, grad_bn, lower_bn),
    NORM_OP("BatchNormalization", 14, AD_OPSET_MAX, 5, 5, 3, infer_bn, grad_bn, lower_bn),
    NORM_OP("LayerNormalization", 17, AD_OPSET_MAX, 2, 3, 3, infer_ln, grad_ln, lower_ln),
    NORM_OP("InstanceNormalization", 6, AD_OPSET_MAX, 3, 3, 1, infer_in, NULL, lower_in),
    NORM_OP("MeanVarianceNormalization", 9, AD_OPSET_MAX, 1, 1, 1, infer_mvn, NULL, lower_mvn),
    NORM_OP("LRN", 1, AD_OPSET_MAX, 1, 1, 1, infer_lrn, NULL, lower_lrn),
    INTERNAL_OP("BatchNormGrad", 5, 3, infer_bn_grad, lower_bn_grad),
    INTERNAL_OP("LayerNormGrad", 3, 3, infer_ln_grad, lower_ln_grad),
    {0},
};
