/*
 * strategies/ps.c: the parameter-server family of AutoDist (TensorFlow's
 * replica_device_setter lineage):
 *
 *   ps              every variable on one server, a process on the chief's CPU
 *   ps-lb           one server per node (or --servers N), variables placed
 *                   greedily by bytes: the largest first, each on the server
 *                   holding the fewest bytes so far
 *   partitioned-ps  every variable split along axis 0 into --shards N shards
 *                   (default: one per server), the shards placed greedily
 *
 * A worker computes forward and backward like a replica under all-reduce; its
 * gradient of each server's shards goes out in one push per server and step
 * (PsPush, placed right after the last of those gradients is computed, so it
 * overlaps the rest of the backward pass), and the step ends by pulling the new
 * values (PsPull). Workers hold no optimizer state for server-held variables:
 * each server runs its own program, the optimizer updates of its shards, which
 * is the same update code a single device runs. How pushes are combined (sum
 * then one update: --sync; one update per push: --staleness K, --async) is the
 * server runtime's business (runtime/ps.c).
 */
#include "strategy.h"

#include "../compiler/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[AD_STRAT_COUNT] = {"allreduce", "ps", "ps-lb", "partitioned-ps",
                                                  "parallax"};

const char *ad_strategy_name(ad_strategy_kind k) {
  return k >= 0 && k < AD_STRAT_COUNT ? names[k] : "?";
}

int ad_strategy_find(const char *name) {
  for (int k = 0; k < AD_STRAT_COUNT; k++)
    if (!strcmp(name, names[k]))
      return k;
  return -1;
}

void ad_ps_layout_free(ad_ps_layout *l) {
  for (int s = 0; s < l->n_servers; s++) {
    ad_program_destroy(l->servers[s].prog);
    ad_graph_destroy(l->servers[s].g);
  }
  free(l->servers);
  free(l->shards);
  *l = (ad_ps_layout){0};
}

ad_status ad_ps_place_servers(const ad_spec *spec, const ad_strategy_opts *opts, ad_ps_layout *l) {
  const char *name = ad_strategy_name(opts->kind);
  int n = opts->kind == AD_STRAT_PS ? 1 : opts->servers ? opts->servers : spec->n_nodes;
  l->n_servers = n;
  l->servers = ad_xcalloc((size_t)n, sizeof *l->servers);
  for (int s = 0; s < n; s++) {
    int node = opts->kind == AD_STRAT_PS ? spec->chief : s % spec->n_nodes;
    const ad_spec_node *nd = &spec->nodes[node];
    if (nd->n_cpus == 0)
      return ad_fail(
          AD_ERR_INPUT,
          "%s:%d: error: strategy %s places parameter server %d on node '%s', which "
          "lists no cpus; a server runs on a CPU: list the node's cores (cpus: [0, ...])",
          spec->path, nd->line, name, s, nd->address);
    l->servers[s].node = node;
  }
  return AD_OK;
}

ad_status ad_ps_add_param(ad_program *p, int i, int parts, bool sparse, ad_ps_layout *l) {
  ad_value *v = p->params[i];
  int64_t rows = v->rank ? v->dims[0] : 1;
  int64_t bytes = (int64_t)ad_value_bytes(v);
  if (rows < parts)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: cannot partition variable '%s' (shape %s, %lld row%s along axis 0) "
                   "into %d shards; use fewer shards (--shards) or a strategy that does not "
                   "partition (ps, ps-lb)",
                   p->g->source, v->name, ad_shape_str(v->rank, v->dims), (long long)rows,
                   rows == 1 ? "" : "s", parts);
  int64_t row_bytes = rows ? bytes / rows : 0;
  int64_t row0 = 0;
  l->shards = realloc(l->shards, sizeof *l->shards * (size_t)(l->n_shards + parts));
  AD_ASSERT(l->shards);
  for (int k = 0; k < parts; k++) {
    int64_t r = rows / parts + (k < rows % parts);
    int best = 0;
    for (int s = 1; s < l->n_servers; s++)
      if (l->servers[s].bytes < l->servers[best].bytes)
        best = s;
    l->servers[best].bytes += r * row_bytes;
    l->shards[l->n_shards++] = (ad_ps_shard){.param = v,
                                             .server = best,
                                             .row0 = row0,
                                             .rows = r,
                                             .row_bytes = row_bytes,
                                             .sparse = sparse};
    row0 += r;
  }
  return AD_OK;
}

static int param_index(const ad_program *p, const ad_value *v) {
  for (int i = 0; i < p->n_params; i++)
    if (p->params[i] == v)
      return i;
  AD_ASSERT(0 && "shard of an unknown parameter");
  return -1;
}

/* Position of the node producing v (-1 for values no node produces). */
static int producer_pos(const ad_graph *g, const ad_value *v) {
  if (v->kind != AD_VAL_ACT)
    return -1;
  for (int k = g->nodes.len - 1; k >= 0; k--)
    for (int o = 0; o < g->nodes.data[k]->n_out; o++)
      if (g->nodes.data[k]->out[o] == v)
        return k;
  return -1;
}

/* Whether node n is a PsPushRows to server s. */
static bool pushes_rows_to(const ad_node *n, int s) {
  if (strcmp(n->op_type, "PsPushRows"))
    return false;
  const int64_t *servers;
  int k = ad_attr_ints(n, "servers", &servers);
  for (int j = 0; j < k; j++)
    if (servers[j] == s)
      return true;
  return false;
}

/* The server's program: per shard a value, its gradient and the update. */
static void build_server(ad_program *p, const ad_train_config *cfg, ad_ps_layout *l, int s) {
  ad_ps_server *sv = &l->servers[s];
  sv->g = ad_graph_create(p->g->source);
  sv->prog = ad_program_create(sv->g, true);
  sv->prog->replicas = 1;
  int n = 0;
  for (int k = 0; k < l->n_shards; k++)
    n += l->shards[k].server == s;
  sv->prog->params = ad_xcalloc((size_t)n + 1, sizeof(ad_value *));
  sv->prog->grads = ad_xcalloc((size_t)n + 1, sizeof(ad_value *));
  for (int k = 0; k < l->n_shards; k++) {
    ad_ps_shard *sh = &l->shards[k];
    if (sh->server != s)
      continue;
    const ad_value *v = sh->param;
    int64_t dims[8];
    memcpy(dims, v->dims, sizeof(int64_t) * (size_t)v->rank);
    if (v->rank)
      dims[0] = sh->rows;
    char name[512];
    snprintf(name, sizeof name, "%s[%lld:%lld]", v->name, (long long)sh->row0,
             (long long)(sh->row0 + sh->rows));
    sh->sparam = ad_value_new(sv->g, name, AD_F32, v->rank, dims, AD_VAL_STATE);
    snprintf(name, sizeof name, "%s[%lld:%lld].grad", v->name, (long long)sh->row0,
             (long long)(sh->row0 + sh->rows));
    sh->sgrad = ad_value_new(sv->g, name, AD_F32, v->rank, dims, AD_VAL_STATE);
    int j = sv->prog->n_params++;
    sv->prog->params[j] = sh->sparam;
    sv->prog->grads[j] = sh->sgrad;
    ad_train_add_update(sv->prog, cfg, j);
  }
  /* One "bucket" pins the gradients, contiguous, so the memory plan gives them
   * a place although no node produces them (the runtime writes them). */
  sv->prog->n_buckets = 1;
  sv->prog->buckets = ad_xcalloc(1, sizeof(ad_bucket));
  sv->prog->buckets[0] = (ad_bucket){.first = 0, .count = n};
}

/* PsPush or PsPull of server s over its dense shards. */
static ad_node *add_push_pull(ad_program *p, ad_ps_layout *l, int s, bool push) {
  int n = 0;
  for (int k = 0; k < l->n_shards; k++)
    n += l->shards[k].server == s && !l->shards[k].sparse;
  ad_value **in = ad_xcalloc((size_t)n + 1, sizeof *in);
  int64_t *shard = ad_xcalloc((size_t)n + 1, sizeof(int64_t));
  int64_t *off = ad_xcalloc((size_t)n + 1, sizeof(int64_t));
  int64_t *bytes = ad_xcalloc((size_t)n + 1, sizeof(int64_t));
  n = 0;
  for (int k = 0; k < l->n_shards; k++) {
    ad_ps_shard *sh = &l->shards[k];
    if (sh->server != s || sh->sparse)
      continue;
    in[n] = push ? p->grads[param_index(p, sh->param)] : sh->param;
    shard[n] = k;
    off[n] = sh->row0 * sh->row_bytes;
    bytes[n] = sh->rows * sh->row_bytes;
    n++;
  }
  ad_attr a[4] = {ad_attr_i("server", s), ad_attr_is("shards", n, shard),
                  ad_attr_is("offsets", n, off), ad_attr_is("bytes", n, bytes)};
  ad_node *node;
  ad_status st = ad_node_add(p->g, NULL, push ? "PsPush" : "PsPull", n, in, 0, a, 4, &node);
  AD_ASSERT(st == AD_OK);
  free(in);
  free(shard);
  free(off);
  free(bytes);
  return node;
}

void ad_ps_finish(ad_program *p, const ad_train_config *cfg, ad_ps_layout *l) {
  ad_graph *g = p->g;
  for (int s = 0; s < l->n_servers; s++)
    build_server(p, cfg, l, s);
  /* Each push goes right after the last node it needs. */
  for (int s = 0; s < l->n_servers; s++) {
    int after = -1;
    for (int k = 0; k < l->n_shards; k++) {
      ad_ps_shard *sh = &l->shards[k];
      if (sh->server == s && !sh->sparse) {
        int pos = producer_pos(g, p->grads[param_index(p, sh->param)]);
        after = pos > after ? pos : after;
      }
    }
    for (int k = 0; k < g->nodes.len; k++)
      if (pushes_rows_to(g->nodes.data[k], s) && k > after)
        after = k;
    add_push_pull(p, l, s, true);
    ad_graph_move_last(g, after + 1);
  }
  for (int s = 0; s < l->n_servers; s++)
    add_push_pull(p, l, s, false);
}

ad_status ad_strategy_ps(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                         const ad_strategy_opts *opts, ad_ps_layout *out) {
  ad_ps_layout l = {0};
  ad_status st = ad_ps_place_servers(spec, opts, &l);
  /* ps-lb and partitioned-ps place the largest first (greedy by bytes). */
  int *order = ad_xcalloc((size_t)p->n_params + 1, sizeof *order);
  for (int i = 0; i < p->n_params; i++)
    order[i] = i;
  if (opts->kind != AD_STRAT_PS)
    for (int i = 1; i < p->n_params; i++)
      for (int j = i;
           j > 0 && ad_value_bytes(p->params[order[j]]) > ad_value_bytes(p->params[order[j - 1]]);
           j--) {
        int t = order[j];
        order[j] = order[j - 1];
        order[j - 1] = t;
      }
  int parts = opts->kind != AD_STRAT_PARTITIONED_PS ? 1 : opts->shards ? opts->shards : l.n_servers;
  for (int i = 0; st == AD_OK && i < p->n_params; i++)
    st = ad_ps_add_param(p, order[i], parts, false, &l);
  free(order);
  if (st != AD_OK) {
    ad_ps_layout_free(&l);
    return st;
  }
  ad_ps_finish(p, cfg, &l);
  *out = l;
  return AD_OK;
}
