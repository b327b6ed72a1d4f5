/*
 * compiler/ops/ps.c: the parameter-server ops that the server strategies
 * (strategies/ps.c, strategies/parallax.c) place in a worker's step. They have
 * no outputs and act through the runtime (ad_rt_ps_* in runtime/kernels.h);
 * the node order fixes when.
 *
 *   PsPush(grads...)       appends the dense gradient of each shard this server
 *                          holds (attributes per shard: shard index, byte offset
 *                          of its rows in the gradient, bytes) and sends the
 *                          step's push to server `server` (non-blocking)
 *   PsPull(params...)      waits for that server's reply and copies the new
 *                          value of each dense shard into the parameter
 *   PsPushRows(dy, idx)    a lookup's gradient rows: appends, for each shard of
 *                          the table, the rows the indices touched
 *   PsPullRows(table, idx) before a lookup: fetches the rows it will read from
 *                          the shards' servers into the worker's copy of the table
 *
 * Per-shard attributes are parallel INTS lists: `servers`, `shards`, `offsets`
 * (bytes, PsPush/PsPull) or `row0s`/`rows` (row ops), `bytes`.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

static ad_status infer_none(ad_graph *g, ad_node *n) {
  return AD_OK;
}

static const int64_t *ints(const ad_node *n, const char *name, int want) {
  const int64_t *v;
  int len = ad_attr_ints(n, name, &v);
  AD_ASSERT(len == want);
  return v;
}

/* Address `off` bytes past value v's first byte. */
static LLVMValueRef ptr_at(ad_cg *cg, const ad_value *v, int64_t off) {
  LLVMValueRef base = ad_cg_ptr(cg, v);
  if (!off)
    return base;
  LLVMValueRef o = ad_cg_i64(cg, off);
  return LLVMBuildGEP2(ad_cg_builder(cg), LLVMInt8TypeInContext(ad_cg_context(cg)), base, &o, 1,
                       "");
}

/* PsPush / PsPull: attribute server; shards, offsets, bytes (one per input). */
static ad_status lower_push_pull(ad_cg *cg, const ad_node *n) {
  int push = !strcmp(n->op_type, "PsPush");
  LLVMValueRef rt = ad_cg_rt(cg), server = ad_cg_i64(cg, ad_attr_int(n, "server", 0));
  const int64_t *shard = ints(n, "shards", n->n_in), *off = ints(n, "offsets", n->n_in);
  const int64_t *bytes = ints(n, "bytes", n->n_in);
  if (!push) {
    LLVMValueRef args[2] = {rt, server};
    ad_cg_call_void(cg, "ad_rt_ps_pull", 2, args);
  }
  for (int i = 0; i < n->n_in; i++) {
    LLVMValueRef args[5] = {rt, server, ad_cg_i64(cg, shard[i]), ptr_at(cg, n->in[i], off[i]),
                            ad_cg_i64(cg, bytes[i])};
    ad_cg_call_void(cg, push ? "ad_rt_ps_add" : "ad_rt_ps_take", 5, args);
  }
  if (push) {
    LLVMValueRef args[3] = {rt, server, ad_cg_step(cg)};
    ad_cg_call_void(cg, "ad_rt_ps_push", 3, args);
  }
  return AD_OK;
}

/* PsPushRows(dy, idx) / PsPullRows(table, idx): attributes servers, shards,
 * row0s, rows (one per shard of the table), n_rows, inner. */
static ad_status lower_rows(ad_cg *cg, const ad_node *n) {
  int push = !strcmp(n->op_type, "PsPushRows");
  const int64_t *servers;
  int k = ad_attr_ints(n, "servers", &servers);
  AD_ASSERT(k >= 1);
  const int64_t *shard = ints(n, "shards", k), *row0 = ints(n, "row0s", k);
  const int64_t *rows = ints(n, "rows", k);
  const ad_value *idx = n->in[1];
  for (int i = 0; i < k; i++) {
    LLVMValueRef args[11] = {ad_cg_rt(cg),
                             ad_cg_i64(cg, servers[i]),
                             ad_cg_i64(cg, shard[i]),
                             ad_cg_i64(cg, row0[i]),
                             ad_cg_i64(cg, rows[i]),
                             ad_cg_i64(cg, ad_attr_int(n, "n_rows", 0)),
                             ad_cg_ptr(cg, idx),
                             ad_cg_i64(cg, ad_value_numel(idx)),
                             ad_cg_i64(cg, idx->dtype == AD_I32),
                             ad_cg_ptr(cg, n->in[0]),
                             ad_cg_i64(cg, ad_attr_int(n, "inner", 0))};
    ad_cg_call_void(cg, push ? "ad_rt_ps_add_rows" : "ad_rt_ps_pull_rows", 11, args);
  }
  return AD_OK;
}

/* Bytes handed to the runtime: what the cost model counts as communication. */
static void cost_push_pull(const ad_node *n, double *flops, double *bytes) {
  const int64_t *b;
  int k = ad_attr_ints(n, "bytes", &b);
  *flops = 0;
  *bytes = 0;
  for (int i = 0; i < k; i++)
    *bytes += (double)b[i];
}

static void cost_rows(const ad_node *n, double *flops, double *bytes) {
  *flops = 0;
  *bytes = (double)ad_value_numel(n->in[1]) * (double)ad_attr_int(n, "inner", 0) * 4.0;
}

#define PS_OP(NAME, MIN, MAX, LOWER, COST)                                                         \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = MIN, .max_in = MAX, .n_out = 0, .infer = infer_none,   \
    .lower_kind = AD_LOWER_CALL, .lower = LOWER, .cost = COST                                      \
  }

const ad_op ad_ops_ps[] = {
    PS_OP("PsPush", 0, 1 << 20, lower_push_pull, cost_push_pull),
    PS_OP("PsPull", 0, 1 << 20, lower_push_pull, cost_push_pull),
    PS_OP("PsPushRows", 2, 2, lower_rows, cost_rows),
    PS_OP("PsPullRows", 2, 2, lower_rows, cost_rows),
    {0},
};
