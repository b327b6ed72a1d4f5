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
      ad_attr a = ad_attr_i("bucket", bi);
      ad_node *n;
      ad_status st = ad_node_add(g, NULL, overlap[bi] ? "AllReduceStart" : "AllReduce", bk->count,
                                 &p->grads[bk->first], 0, &a, 1, &n);
      AD_ASSERT(st == AD_OK);
      ad_graph_move_last(g, after + 1);
    }
  }
  for (int bi = 0; bi < p->n_buckets; bi++) {
    ad_bucket *bk = &p->buckets[bi];
    if (overlap[bi]) {
      ad_attr a = ad_attr_i("bucket", bi);
      ad_status st = ad_node_add(g, NULL, "AllReduceWait", 0, NULL, 0, &a, 1, NULL);
      AD_ASSERT(st == AD_OK);
    }
    for (int j = bk->first; j < bk->first + bk->count; j++)
      ad_train_add_update(p, cfg, j);
  }
  free(overlap);
  return AD_OK;
}
