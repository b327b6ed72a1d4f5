/*
 * compiler/memplan.c: the device arena layout (ggml's idea: building the graph
 * records ops, a separate plan step sizes the buffers). Persistent regions are
 * laid out in order; activations and gradients that are not pinned reuse
 * workspace by liveness with first-fit. A node's outputs never reuse the memory
 * of its own inputs (kernels are not in-place).
 */
#include "memplan.h"

#include "op.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64

static int64_t align_up(int64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* The value whose buffer v views (itself when v owns its buffer). */
static ad_value *alias_root(ad_value *v) {
  while (v->kind == AD_VAL_ACT && v->producer->op->lower_kind == AD_LOWER_ALIAS)
    v = v->producer->in[0];
  return v;
}

typedef struct {
  int64_t off, size;
  int last;
} block;

void ad_memplan(ad_program *p, const unsigned char *fused, const int *emit_pos,
                int64_t scratch_bytes) {
  ad_graph *g = p->g;
  int nv = g->values.len;
  free(p->offset);
  p->offset = ad_xmalloc(sizeof(int64_t) * (size_t)nv);
  for (int i = 0; i < nv; i++)
    p->offset[i] = -1;
  unsigned char *pinned = ad_xcalloc((size_t)nv, 1);
  int64_t top = 0;
#define PIN(v)                                                                                     \
  do {                                                                                             \
    ad_value *v_ = (v);                                                                            \
    if (p->offset[v_->id] < 0) {                                                                   \
      p->offset[v_->id] = top;                                                                     \
      top = align_up(top + (int64_t)ad_value_bytes(v_));                                           \
      pinned[v_->id] = 1;                                                                          \
    }                                                                                              \
  } while (0)
  for (int i = 0; i < p->n_params; i++)
    PIN(p->params[i]);
  for (int i = 0; i < g->params.len; i++)
    PIN(g->params.data[i]);
  for (int i = 0; i < p->states.len; i++)
    PIN(p->states.data[i]);
  for (int i = 0; i < p->comm_bufs.len; i++)
    PIN(p->comm_bufs.data[i]);
  /* Gradients of a bucket must be contiguous: no alignment padding inside. */
  for (int b = 0; b < p->n_buckets; b++) {
    ad_bucket *bk = &p->buckets[b];
    for (int j = bk->first; j < bk->first + bk->count; j++) {
      ad_value *gr = p->grads[j];
      AD_ASSERT(p->offset[gr->id] < 0);
      p->offset[gr->id] = top;
      pinned[gr->id] = 1;
      top += (int64_t)ad_value_bytes(gr);
    }
    top = align_up(top);
  }
  for (int i = 0; i < g->inputs.len; i++)
    PIN(g->inputs.data[i]);
  if (p->loss)
    PIN(alias_root(p->loss));
  for (int i = 0; i < g->outputs.len; i++)
    PIN(alias_root(g->outputs.data[i]));

  /* Last use of each buffer root, at emission positions. */
  int *last = ad_xmalloc(sizeof(int) * (size_t)nv);
  for (int i = 0; i < nv; i++)
    last[i] = -1;
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    for (int j = 0; j < n->n_in; j++)
      if (n->in[j]) {
        ad_value *r = alias_root(n->in[j]);
        if (emit_pos[k] > last[r->id])
          last[r->id] = emit_pos[k];
      }
  }
  /* Workspace: walk nodes in emission order (emit_pos is non-decreasing in
   * the order codegen emits groups; sort node indices by it). */
  int nn = g->nodes.len;
  int *order = ad_xmalloc(sizeof(int) * (size_t)(nn ? nn : 1));
  for (int k = 0; k < nn; k++)
    order[k] = k;
  for (int a = 1; a < nn; a++) { /* insertion sort, stable */
    int x = order[a], b = a - 1;
    while (b >= 0 && emit_pos[order[b]] > emit_pos[x]) {
      order[b + 1] = order[b];
      b--;
    }
    order[b + 1] = x;
  }
  int64_t ws_base = top, ws_top = 0;
  block *live = ad_xmalloc(sizeof(block) * (size_t)(nv + 1));
  int n_live = 0;
  for (int oi = 0; oi < nn; oi++) {
    ad_node *n = g->nodes.data[order[oi]];
    int at = emit_pos[order[oi]];
    /* Free blocks whose last use is before this node. */
    int w = 0;
    for (int i = 0; i < n_live; i++)
      if (live[i].last >= at)
        live[w++] = live[i];
    n_live = w;
    for (int j = 0; j < n->n_out; j++) {
      ad_value *v = n->out[j];
      if (pinned[v->id] || fused[v->id] || n->op->lower_kind == AD_LOWER_ALIAS ||
          p->offset[v->id] >= 0)
        continue;
      int64_t size = align_up((int64_t)ad_value_bytes(v));
      if (size == 0)
        size = ALIGN;
      /* First fit among gaps of the live blocks, which are sorted by offset. */
      int64_t off = 0;
      int pos = 0;
      for (; pos < n_live; pos++) {
        if (live[pos].off - off >= size)
          break;
        off = live[pos].off + live[pos].size;
      }
      memmove(&live[pos + 1], &live[pos], sizeof(block) * (size_t)(n_live - pos));
      int lu = last[v->id] < at ? at : last[v->id];
      live[pos] = (block){off, size, lu};
      n_live++;
      p->offset[v->id] = ws_base + off;
      if (off + size > ws_top)
        ws_top = off + size;
    }
  }
  /* Aliases take their root's offset. */
  for (int i = 0; i < nv; i++) {
    ad_value *v = g->values.data[i];
    if (v->kind == AD_VAL_ACT && v->producer->op->lower_kind == AD_LOWER_ALIAS)
      p->offset[i] = p->offset[alias_root(v)->id];
  }
  p->scratch_offset = align_up(ws_base + ws_top);
  p->mem_bytes = align_up(p->scratch_offset + scratch_bytes);
  free(live);
  free(order);
  free(last);
  free(pinned);
#undef PIN
}
