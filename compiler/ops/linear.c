/*
 * compiler/ops/linear.c: Gemm and MatMul, both lowered to the runtime's
 * batched ad_k_gemm (OpenBLAS underneath).
 *
 * Gemm: Y = alpha * A' B' + beta * C. C is written into Y first (broadcast,
 * scaled by beta) and the GEMM accumulates onto it, so no temporary is needed.
 * MatMul follows numpy: 1-D operands are promoted (and the added axis dropped
 * from the result), batch axes broadcast. The kernel takes one element stride
 * per operand, which covers the batch when each operand's batch axes are either
 * all present or all broadcast; other patterns split the leading axes into one
 * kernel call per index, unrolled at compile time.
 *
 * Gradients are again Gemm / MatMul nodes (with transposes as attributes for
 * Gemm, Transpose nodes for MatMul) followed by ReduceSumTo for broadcast axes.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* At most this many unrolled kernel calls for one MatMul. */
#define MATMUL_MAX_CALLS 4096

static ad_value *const_shape(ad_graph *g, int rank, const int64_t *dims) {
  int64_t len = rank;
  ad_value *v = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
  v->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(rank ? rank : 1));
  memcpy(v->data, dims, sizeof(int64_t) * (size_t)rank);
  return v;
}

static ad_value *emit_reshape(ad_grad *gc, ad_value *x, int rank, const int64_t *dims) {
  if (x->rank == rank && !memcmp(x->dims, dims, sizeof(int64_t) * (size_t)rank))
    return x;
  ad_value *args[2] = {x, const_shape(ad_grad_graph(gc), rank, dims)};
  return ad_grad_emit(gc, "Reshape", 2, args, NULL, 0);
}

static void gemm_call(ad_cg *cg, int ta, int tb, int64_t m, int64_t nn, int64_t k, float alpha,
                      float beta, int64_t batch, int64_t sa, int64_t sb, int64_t sc, LLVMValueRef a,
                      LLVMValueRef b, LLVMValueRef c) {
  int64_t p[14] = {
      ta,    tb, m,  nn, k, ta ? m : k, tb ? k : nn, nn, ad_k_slot(alpha), ad_k_slot(beta),
      batch, sa, sb, sc};
  LLVMValueRef ptrs[3] = {a, b, c};
  ad_cg_call_kernel(cg, "ad_k_gemm", p, 14, ptrs, 3);
}

/* ---- Gemm ---- */

typedef struct gemm_dims {
  int ta, tb;
  int64_t m, n, k;
  float alpha, beta;
} gemm_dims;

static ad_status gemm_read(ad_graph *g, const ad_node *n, gemm_dims *d) {
  ad_value *a = n->in[0], *b = n->in[1];
  if (a->rank != 2 || b->rank != 2)
    return ad_fail(AD_ERR_INPUT, "%s: error: A and B must be 2-D, got %s and %s",
                   ad_node_where(g, n), ad_shape_str(a->rank, a->dims),
                   ad_shape_str(b->rank, b->dims));
  d->ta = ad_attr_int(n, "transA", 0) != 0;
  d->tb = ad_attr_int(n, "transB", 0) != 0;
  d->alpha = ad_attr_float(n, "alpha", 1.0f);
  d->beta = ad_attr_float(n, "beta", 1.0f);
  d->m = a->dims[d->ta ? 1 : 0];
  d->k = a->dims[d->ta ? 0 : 1];
  d->n = b->dims[d->tb ? 0 : 1];
  int64_t kb = b->dims[d->tb ? 1 : 0];
  if (kb != d->k)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: inner dimensions differ: A %s (transA=%d), B %s (transB=%d)",
                   ad_node_where(g, n), ad_shape_str(a->rank, a->dims), d->ta,
                   ad_shape_str(b->rank, b->dims), d->tb);
  return AD_OK;
}

static ad_status infer_gemm(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  AD_TRY(ad_infer_need_f32(g, n, 1));
  gemm_dims d;
  AD_TRY(gemm_read(g, n, &d));
  ad_value *y = n->out[0];
  y->dtype = AD_F32;
  y->rank = 2;
  y->dims[0] = d.m;
  y->dims[1] = d.n;
  if (n->n_in > 2 && n->in[2]) {
    AD_TRY(ad_infer_need_f32(g, n, 2));
    ad_value *c = n->in[2];
    int r;
    int64_t out[AD_MAX_RANK];
    /* C broadcasts to Y (unidirectionally): the broadcast must give Y's shape. */
    if (c->rank > 2 || ad_broadcast_shape(2, y->dims, c->rank, c->dims, &r, out) != AD_OK ||
        out[0] != d.m || out[1] != d.n)
      return ad_fail(AD_ERR_INPUT, "%s: error: C %s does not broadcast to the output %s",
                     ad_node_where(g, n), ad_shape_str(c->rank, c->dims), ad_shape_str(2, y->dims));
  }
  return AD_OK;
}

static ad_status lower_gemm(ad_cg *cg, const ad_node *n) {
  gemm_dims d;
  AD_TRY(gemm_read(ad_cg_graph(cg), n, &d));
  ad_value *y = n->out[0];
  LLVMValueRef yp = ad_cg_ptr(cg, y);
  float beta = 0;
  if (n->n_in > 2 && n->in[2] && d.beta != 0) {
    ad_cg_broadcast(cg, n->in[2], yp, 2, y->dims, d.beta);
    beta = 1;
  }
  gemm_call(cg, d.ta, d.tb, d.m, d.n, d.k, d.alpha, beta, 1, 0, 0, 0, ad_cg_ptr(cg, n->in[0]),
            ad_cg_ptr(cg, n->in[1]), yp);
  return AD_OK;
}

static ad_value *emit_gemm(ad_grad *gc, ad_value *a, ad_value *b, int ta, int tb, float alpha) {
  ad_attr at[3] = {ad_attr_i("transA", ta), ad_attr_i("transB", tb), ad_attr_fl("alpha", alpha)};
  ad_value *args[2] = {a, b};
  return ad_grad_emit(gc, "Gemm", 2, args, at, alpha == 1.0f ? 2 : 3);
}

/* With A' = op(A), B' = op(B): dA' = alpha dY B'^T, dB' = alpha A'^T dY, and
 * the transposes of op() fold into the Gemm flags. dC = beta * dY summed to C. */
static ad_status grad_gemm(ad_grad *gc, const ad_node *n) {
  gemm_dims d;
  AD_TRY(gemm_read(ad_grad_graph(gc), n, &d));
  ad_value *dy = ad_grad_out(gc, n, 0), *a = n->in[0], *b = n->in[1];
  if (ad_grad_wants(gc, a)) {
    ad_value *da =
        d.ta ? emit_gemm(gc, b, dy, d.tb, 1, d.alpha) : emit_gemm(gc, dy, b, 0, !d.tb, d.alpha);
    ad_grad_acc(gc, a, da);
  }
  if (ad_grad_wants(gc, b)) {
    ad_value *db =
        d.tb ? emit_gemm(gc, dy, a, 1, d.ta, d.alpha) : emit_gemm(gc, a, dy, !d.ta, 0, d.alpha);
    ad_grad_acc(gc, b, db);
  }
  ad_value *c = n->n_in > 2 ? n->in[2] : NULL;
  if (ad_grad_wants(gc, c)) {
    ad_value *dc = dy;
    if (d.beta != 1.0f) {
      ad_attr s = ad_attr_fl("alpha", d.beta);
      dc = ad_grad_emit(gc, "Scale", 1, &dy, &s, 1);
    }
    ad_grad_acc(gc, c, ad_grad_reduce_to(gc, dc, c));
  }
  return AD_OK;
}

static void cost_gemm(const ad_node *n, double *flops, double *bytes) {
  ad_value *y = n->out[0], *a = n->in[0];
  int64_t k = ad_attr_int(n, "transA", 0) ? a->dims[0] : a->dims[1];
  *flops = 2.0 * (double)ad_value_numel(y) * (double)k;
  *bytes = (double)ad_value_bytes(y);
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      *bytes += (double)ad_value_bytes(n->in[i]);
}

/* ---- MatMul ---- */

/* The operands as [batch..., M, K] and [batch..., K, N] with the batch axes of
 * both right-aligned to the output's (nb axes, missing ones as 1). */
typedef struct matmul_dims {
  int nb;
  int64_t obatch[AD_MAX_RANK], abatch[AD_MAX_RANK], bbatch[AD_MAX_RANK];
  int64_t m, n, k;
  int a_vec, b_vec; /* operand was 1-D */
} matmul_dims;

static ad_status matmul_read(ad_graph *g, const ad_node *n, matmul_dims *d) {
  ad_value *a = n->in[0], *b = n->in[1];
  if (a->rank < 1 || b->rank < 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: operands must have rank >= 1, got %s and %s",
                   ad_node_where(g, n), ad_shape_str(a->rank, a->dims),
                   ad_shape_str(b->rank, b->dims));
  memset(d, 0, sizeof *d);
  d->a_vec = a->rank == 1;
  d->b_vec = b->rank == 1;
  d->m = d->a_vec ? 1 : a->dims[a->rank - 2];
  d->k = a->dims[a->rank - 1];
  int64_t kb = d->b_vec ? b->dims[0] : b->dims[b->rank - 2];
  d->n = d->b_vec ? 1 : b->dims[b->rank - 1];
  if (kb != d->k)
    return ad_fail(AD_ERR_INPUT, "%s: error: inner dimensions differ: %s and %s",
                   ad_node_where(g, n), ad_shape_str(a->rank, a->dims),
                   ad_shape_str(b->rank, b->dims));
  int ra = d->a_vec ? 0 : a->rank - 2, rb = d->b_vec ? 0 : b->rank - 2;
  if (ad_broadcast_shape(ra, a->dims, rb, b->dims, &d->nb, d->obatch) != AD_OK)
    return ad_fail(AD_ERR_INPUT, "%s: error: batch axes of %s and %s do not broadcast",
                   ad_node_where(g, n), ad_shape_str(a->rank, a->dims),
                   ad_shape_str(b->rank, b->dims));
  for (int i = 0; i < d->nb; i++) {
    d->abatch[i] = i < d->nb - ra ? 1 : a->dims[i - (d->nb - ra)];
    d->bbatch[i] = i < d->nb - rb ? 1 : b->dims[i - (d->nb - rb)];
  }
  return AD_OK;
}

static ad_status infer_matmul(ad_graph *g, ad_node *n) {
  AD_TRY(ad_infer_need_f32(g, n, 0));
  AD_TRY(ad_infer_need_f32(g, n, 1));
  matmul_dims d;
  AD_TRY(matmul_read(g, n, &d));
  ad_value *y = n->out[0];
  int r = 0;
  for (int i = 0; i < d.nb; i++)
    y->dims[r++] = d.obatch[i];
  if (!d.a_vec)
    y->dims[r++] = d.m;
  if (!d.b_vec)
    y->dims[r++] = d.n;
  if (r > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: error: rank exceeds %d", ad_node_where(g, n), AD_MAX_RANK);
  y->dtype = AD_F32;
  y->rank = r;
  return AD_OK;
}

/* Whether the batch axes [s, nb) of an operand are all the output's (full) or
 * all 1 (broadcast); *full tells which. */
static int batch_uniform(const matmul_dims *d, const int64_t *ob, int s, int *full) {
  int all_eq = 1, all_one = 1;
  for (int i = s; i < d->nb; i++) {
    all_eq &= ob[i] == d->obatch[i];
    all_one &= ob[i] == 1;
  }
  *full = all_eq;
  return all_eq || all_one;
}

static ad_status lower_matmul(ad_cg *cg, const ad_node *n) {
  ad_graph *g = ad_cg_graph(cg);
  matmul_dims d;
  AD_TRY(matmul_read(g, n, &d));
  /* Smallest split s such that the inner batch axes [s, nb) need one stride each. */
  int s = 0, a_full = 0, b_full = 0;
  while (!(batch_uniform(&d, d.abatch, s, &a_full) && batch_uniform(&d, d.bbatch, s, &b_full)))
    s++;
  int64_t inner = 1, outer = 1;
  for (int i = s; i < d.nb; i++)
    inner *= d.obatch[i];
  for (int i = 0; i < s; i++)
    outer *= d.obatch[i];
  if (outer > MATMUL_MAX_CALLS)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: batch broadcast of %s and %s would need %lld GEMM calls; "
                   "not supported",
                   ad_node_where(g, n), ad_shape_str(n->in[0]->rank, n->in[0]->dims),
                   ad_shape_str(n->in[1]->rank, n->in[1]->dims), (long long)outer);
  int64_t mk = d.m * d.k, kn = d.k * d.n, mn = d.m * d.n;
  LLVMValueRef pa = ad_cg_ptr(cg, n->in[0]), pb = ad_cg_ptr(cg, n->in[1]),
               py = ad_cg_ptr(cg, n->out[0]);
  LLVMBuilderRef bld = ad_cg_builder(cg);
  LLVMTypeRef f32 = ad_cg_f32_type(cg);
  for (int64_t o = 0; o < outer; o++) {
    /* Element offsets of this outer index in A, B and Y (row-major strides). */
    int64_t rem = o, offa = 0, offb = 0;
    int64_t astride = (a_full ? inner : 1) * mk, bstride = (b_full ? inner : 1) * kn;
    for (int i = s - 1; i >= 0; i--) {
      int64_t idx = rem % d.obatch[i];
      rem /= d.obatch[i];
      if (d.abatch[i] != 1)
        offa += idx * astride;
      if (d.bbatch[i] != 1)
        offb += idx * bstride;
      astride *= d.abatch[i];
      bstride *= d.bbatch[i];
    }
    LLVMValueRef a = pa, b = pb, y = py;
    if (offa) {
      LLVMValueRef i = ad_cg_i64(cg, offa);
      a = LLVMBuildGEP2(bld, f32, pa, &i, 1, "");
    }
    if (offb) {
      LLVMValueRef i = ad_cg_i64(cg, offb);
      b = LLVMBuildGEP2(bld, f32, pb, &i, 1, "");
    }
    if (o) {
      LLVMValueRef i = ad_cg_i64(cg, o * inner * mn);
      y = LLVMBuildGEP2(bld, f32, py, &i, 1, "");
    }
    gemm_call(cg, 0, 0, d.m, d.n, d.k, 1.0f, 0.0f, inner, a_full ? mk : 0, b_full ? kn : 0, mn, a,
              b, y);
  }
  return AD_OK;
}

/* Transpose of the last two axes. */
static ad_value *emit_t(ad_grad *gc, ad_value *x) {
  int64_t perm[AD_MAX_RANK];
  for (int i = 0; i < x->rank; i++)
    perm[i] = i;
  perm[x->rank - 2] = x->rank - 1;
  perm[x->rank - 1] = x->rank - 2;
  ad_attr a = ad_attr_is("perm", x->rank, perm);
  return ad_grad_emit(gc, "Transpose", 1, &x, &a, 1);
}

static ad_value *emit_matmul(ad_grad *gc, ad_value *a, ad_value *b) {
  ad_value *args[2] = {a, b};
  return ad_grad_emit(gc, "MatMul", 2, args, NULL, 0);
}

/*
 * Y = A B: dA = dY B^T, dB = A^T dY, summed over broadcast batch axes.
 * The common case of a 2-D weight B under a batch of rows A ([..., K] x [K, N])
 * flattens A and dY to matrices and uses two plain Gemms, with no transposes
 * and no batch reduction. The general case promotes 1-D operands to matrices
 * (reshaping dY to match) and uses MatMul and Transpose nodes.
 */
static ad_status grad_matmul(ad_grad *gc, const ad_node *n) {
  ad_graph *g = ad_grad_graph(gc);
  matmul_dims d;
  AD_TRY(matmul_read(g, n, &d));
  ad_value *a = n->in[0], *b = n->in[1], *dy = ad_grad_out(gc, n, 0);
  int wa = ad_grad_wants(gc, a), wb = ad_grad_wants(gc, b);
  if (b->rank == 2 && a->rank >= 2) {
    int64_t rows = ad_value_numel(a) / d.k;
    ad_value *dy2 = emit_reshape(gc, dy, 2, (int64_t[]){rows, d.n});
    if (wa) {
      ad_value *da = emit_gemm(gc, dy2, b, 0, 1, 1.0f);
      ad_grad_acc(gc, a, emit_reshape(gc, da, a->rank, a->dims));
    }
    if (wb)
      ad_grad_acc(gc, b,
                  emit_gemm(gc, emit_reshape(gc, a, 2, (int64_t[]){rows, d.k}), dy2, 1, 0, 1.0f));
    return AD_OK;
  }
  /* Promote: A' = [..., M, K], B' = [..., K, N], dY' = [obatch..., M, N]. */
  ad_value *a2 = d.a_vec ? emit_reshape(gc, a, 2, (int64_t[]){1, d.k}) : a;
  ad_value *b2 = d.b_vec ? emit_reshape(gc, b, 2, (int64_t[]){d.k, 1}) : b;
  int64_t ydims[AD_MAX_RANK];
  memcpy(ydims, d.obatch, sizeof(int64_t) * (size_t)d.nb);
  ydims[d.nb] = d.m;
  ydims[d.nb + 1] = d.n;
  ad_value *dy2 = emit_reshape(gc, dy, d.nb + 2, ydims);
  if (wa) {
    /* [obatch..., M, K]; for a 1-D A (M = 1) the right-aligned sum gives [K]. */
    ad_value *da = emit_matmul(gc, dy2, emit_t(gc, b2));
    ad_grad_acc(gc, a, ad_grad_reduce_to(gc, da, a));
  }
  if (wb) {
    /* For a 1-D B compute dB^T = dY'^T A' ([..., 1, K]) so that it sums to [K]. */
    ad_value *db =
        d.b_vec ? emit_matmul(gc, emit_t(gc, dy2), a2) : emit_matmul(gc, emit_t(gc, a2), dy2);
    ad_grad_acc(gc, b, ad_grad_reduce_to(gc, db, b));
  }
  return AD_OK;
}

static void cost_matmul(const ad_node *n, double *flops, double *bytes) {
  ad_value *a = n->in[0];
  *flops = 2.0 * (double)ad_value_numel(n->out[0]) * (double)a->dims[a->rank - 1];
  *bytes = (double)ad_value_bytes(n->out[0]) + (double)ad_value_bytes(a) +
           (double)ad_value_bytes(n->in[1]);
}

const ad_op ad_ops_linear[] = {
    {.name = "Gemm",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 3,
     .n_out = 1,
     .infer = infer_gemm,
     .grad = grad_gemm,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_gemm,
     .cost = cost_gemm},
    {.name = "MatMul",
     .domain = "",
     .min_opset = 1,
     .max_opset = AD_OPSET_MAX,
     .min_in = 2,
     .max_in = 2,
     .n_out = 1,
     .infer = infer_matmul,
     .grad = grad_matmul,
     .lower_kind = AD_LOWER_CALL,
     .lower = lower_matmul,
     .cost = cost_matmul},
    {0},
};
