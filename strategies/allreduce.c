/*
 * strategies/allreduce.c: data-parallel training with bucketed all-reduce,
 * the scheme of PyTorch DDP and Horovod. Every replica runs the same program
 * on its slice of the batch. Gradients are laid out contiguously in the order
 * the backward pass finishes them, cut into buckets of at most bucket_mb; the
 * all-reduce of a bucket starts right after the node that completes it, so it
 * overlaps the rest of the backward pass, and is waited for just before that
 * bucket's optimizer updates. A bucket completed by the last backward node has
 * nothing to overlap with and uses the blocking all-reduce, which MPI
 * implementations run faster than their non-blocking one.
 */
#include "strategy.h"

#include "../compiler/op.h"
#include "../compiler/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A gradient must own its buffer so that buckets can be laid out contiguously:
 * copy it when it is a constant (a parameter the loss does not reach), a view
 * of another value, or shared with another parameter's gradient. */
static void own_gradients(ad_program *p) {
  ad_graph *g = p->g;
  for (int i = 0; i < p->n_params; i++) {
    ad_value *gr = p->grads[i];
    int shared = 0;
    for (int j = 0; j < i; j++)
      shared |= p->grads[j] == gr;
    if (gr->kind == AD_VAL_ACT && gr->producer->op->lower_kind != AD_LOWER_ALIAS && !shared)
      continue;
    ad_node *n;
    ad_status st = ad_node_add(g, NULL, "Copy", 1, &gr, 1, NULL, 0, &n);
    AD_ASSERT(st == AD_OK);
    p->grads[i] = n->out[0];
  }
}

/* The inputs of a bucket's communication nodes: its gradients, and with
 * compression the bucket's binary16 staging buffer last. Returns their number. */
static int bucket_inputs(ad_program *p, int bi, const ad_strategy_opts *opts, ad_value **in) {
  ad_bucket *bk = &p->buckets[bi];
  int64_t count = 0;
  for (int j = 0; j < bk->count; j++) {
    in[j] = p->grads[bk->first + j];
    count += ad_value_numel(in[j]);
  }
  if (!opts->compress_fp16)
    return bk->count;
  while (p->comm_bufs.len <= bi) {
    char name[64];
    snprintf(name, sizeof name, "bucket%d.fp16", p->comm_bufs.len);
    AD_VEC_PUSH(p->comm_bufs, ad_value_new(p->g, name, AD_F16, 1, &count, AD_VAL_STATE));
  }
  in[bk->count] = p->comm_bufs.data[bi];
  return bk->count + 1;
}

/* Appends a communication node of bucket bi (its attributes: bucket number and
 * compression) and returns it. */
static ad_node *add_comm(ad_program *p, const char *op, int bi, const ad_strategy_opts *opts,
                         ad_value **in) {
  ad_attr a[2] = {ad_attr_i("bucket", bi), ad_attr_i("compress", opts->compress_fp16)};
  ad_node *n;
  ad_status st = ad_node_add(p->g, NULL, op, bucket_inputs(p, bi, opts, in), in, 0, a, 2, &n);
  AD_ASSERT(st == AD_OK);
  return n;
}

ad_status ad_strategy_allreduce(ad_program *p, const ad_train_config *cfg,
                                const ad_strategy_opts *opts) {
  ad_graph *g = p->g;
  own_gradients(p);
  int64_t limit = (int64_t)(opts->bucket_mb * 1024 * 1024);
  if (limit < 4)
    limit = 4;
  p->buckets = ad_xcalloc((size_t)p->n_params + 1, sizeof(ad_bucket));
  p->n_buckets = 0;
  int64_t bytes = 0;
  for (int i = 0; i < p->n_params; i++) {
    int64_t b = (int64_t)ad_value_bytes(p->grads[i]);
    ad_bucket *cur = p->n_buckets ? &p->buckets[p->n_buckets - 1] : NULL;
    if (!cur || bytes + b > limit) {
      cur = &p->buckets[p->n_buckets++];
      cur->first = i;
      bytes = 0;
    }
    cur->count++;
    bytes += b;
  }
  unsigned char *overlap = ad_xcalloc((size_t)p->n_buckets + 1, 1);
  ad_value **in = ad_xcalloc((size_t)p->n_params + 2, sizeof *in);
  if (p->replicas > 1) {
    for (int bi = 0; bi < p->n_buckets; bi++) {
      ad_bucket *bk = &p->buckets[bi];
      int after = -1;
      for (int k = 0; k < g->nodes.len; k++)
        for (int j = bk->first; j < bk->first + bk->count; j++)
          for (int o = 0; o < g->nodes.data[k]->n_out; o++)
            if (g->nodes.data[k]->out[o] == p->grads[j] && k > after)
              after = k;
      /* Non-blocking only when backward compute remains to overlap with. */
      for (int k = after + 1; k < g->nodes.len; k++)
        overlap[bi] |= strncmp(g->nodes.data[k]->op_type, "AllReduce", 9) != 0;
      add_comm(p, overlap[bi] ? "AllReduceStart" : "AllReduce", bi, opts, in);
      ad_graph_move_last(g, after + 1);
    }
  }
  for (int bi = 0; bi < p->n_buckets; bi++) {
    ad_bucket *bk = &p->buckets[bi];
    if (overlap[bi])
      add_comm(p, "AllReduceWait", bi, opts, in);
    for (int j = bk->first; j < bk->first + bk->count; j++)
      ad_train_add_update(p, cfg, j);
  }
  free(in);
  free(overlap);
  return AD_OK;
}
