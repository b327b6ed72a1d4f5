/*
 * strategies/parallax.c: the Parallax hybrid (Kim et al., EuroSys 2019, as in
 * AutoDist). A variable that the model reads only through a lookup (Gather on
 * axis 0: an embedding table) has a sparse gradient: a step touches only the
 * rows its batch indexes. Such variables are sharded over parameter servers
 * and move only those rows:
 *
 *   forward   PsPullRows(table, idx) right before the lookup fetches the
 *             current value of the rows it will read into the worker's copy
 *             of the table (the other rows of that copy are never read)
 *   backward  the dense GatherGrad (zeros of the table's shape plus the
 *             scattered rows) is replaced by PsPushRows(dy, idx), which hands
 *             the touched rows to the push of each shard's server
 *
 * The servers add the rows into a dense gradient and apply the same optimizer
 * update as one device, so momentum and weight decay reach every row exactly
 * like PyTorch's dense nn.Embedding gradient. Every other variable is
 * all-reduced (strategies/allreduce.c).
 */
#include "strategy.h"

#include <stdlib.h>
#include <string.h>

static int node_pos(const ad_graph *g, const ad_node *n) {
  for (int k = 0; k < g->nodes.len; k++)
    if (g->nodes.data[k] == n)
      return k;
  return -1;
}

ad_node *ad_sparse_lookup(const ad_program *p, int i) {
  const ad_graph *g = p->g;
  const ad_value *v = p->params[i], *gr = p->grads[i];
  ad_node *lookup = NULL;
  for (int k = 0; k < g->nodes.len; k++) {
    ad_node *n = g->nodes.data[k];
    for (int j = 0; j < n->n_in; j++) {
      if (n->in[j] != v)
        continue;
      if (lookup || strcmp(n->op_type, "Gather") || j != 0 || ad_attr_int(n, "axis", 0) != 0 ||
          n->in[1] == v)
        return NULL;
      lookup = n;
    }
  }
  for (int k = 0; k < g->outputs.len; k++)
    if (g->outputs.data[k] == v)
      return NULL;
  if (!lookup || !gr || gr->kind != AD_VAL_ACT || strcmp(gr->producer->op_type, "GatherGrad") ||
      gr->producer->in[1] != lookup->in[1])
    return NULL;
  for (int k = 0; k < g->nodes.len; k++)
    for (int j = 0; j < g->nodes.data[k]->n_in; j++)
      if (g->nodes.data[k]->in[j] == gr)
        return NULL;
  return lookup;
}

/* Adds a row op over the shards of `v` (shards first..first+n-1) and moves it
 * to position pos. */
static void add_rows_op(ad_program *p, const ad_ps_layout *l, int first, int n, const char *op,
                        ad_value *a, ad_value *idx, int pos) {
  int64_t *servers = ad_xcalloc((size_t)n, sizeof(int64_t));
  int64_t *shards = ad_xcalloc((size_t)n, sizeof(int64_t));
  int64_t *row0s = ad_xcalloc((size_t)n, sizeof(int64_t));
  int64_t *rows = ad_xcalloc((size_t)n, sizeof(int64_t));
  const ad_ps_shard *sh = &l->shards[first];
  const ad_value *v = sh->param;
  for (int k = 0; k < n; k++) {
    servers[k] = sh[k].server;
    shards[k] = first + k;
    row0s[k] = sh[k].row0;
    rows[k] = sh[k].rows;
  }
  ad_attr at[6] = {ad_attr_is("servers", n, servers), ad_attr_is("shards", n, shards),
                   ad_attr_is("row0s", n, row0s),     ad_attr_is("rows", n, rows),
                   ad_attr_i("n_rows", v->dims[0]),   ad_attr_i("inner", sh->row_bytes / 4)};
  ad_value *in[2] = {a, idx};
  ad_node *node;
  ad_status st = ad_node_add(p->g, NULL, op, 2, in, 0, at, 6, &node);
  AD_ASSERT(st == AD_OK);
  ad_graph_move_last(p->g, pos);
  free(servers);
  free(shards);
  free(row0s);
  free(rows);
}

/* Replaces the dense gradient of sparse parameter i by row traffic. */
static void make_sparse(ad_program *p, ad_node *lookup, int i, const ad_ps_layout *l, int first,
                        int n) {
  ad_graph *g = p->g;
  ad_node *gg = p->grads[i]->producer;
  int pos = node_pos(g, gg);
  AD_ASSERT(pos >= 0);
  memmove(&g->nodes.data[pos], &g->nodes.data[pos + 1],
          sizeof(ad_node *) * (size_t)(g->nodes.len - pos - 1));
  g->nodes.len--;
  add_rows_op(p, l, first, n, "PsPushRows", gg->in[0], lookup->in[1], pos);
  add_rows_op(p, l, first, n, "PsPullRows", p->params[i], lookup->in[1], node_pos(g, lookup));
  p->grads[i] = NULL;
}

ad_status ad_strategy_parallax(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                               const ad_strategy_opts *opts, ad_ps_layout *out) {
  ad_node **lookup = ad_xcalloc((size_t)p->n_params + 1, sizeof *lookup);
  int n_sparse = 0;
  for (int i = 0; i < p->n_params; i++)
    n_sparse += (lookup[i] = ad_sparse_lookup(p, i)) != NULL;
  ad_ps_layout l = {0};
  ad_status st = AD_OK;
  if (n_sparse) {
    st = ad_ps_place_servers(spec, opts, &l);
    int parts = opts->shards ? opts->shards : l.n_servers;
    for (int i = 0; st == AD_OK && i < p->n_params; i++) {
      if (!lookup[i])
        continue;
      int first = l.n_shards;
      st = ad_ps_add_param(p, i, parts, true, &l);
      if (st == AD_OK)
        make_sparse(p, lookup[i], i, &l, first, l.n_shards - first);
    }
  }
  if (st != AD_OK) {
    free(lookup);
    ad_ps_layout_free(&l);
    return st;
  }
  /* Dense parameters first (in availability order) for the all-reduce, which
   * works on the prefix p->params[0 .. n_dense). */
  int n_all = p->n_params, n_dense = 0;
  ad_value **params = ad_xcalloc((size_t)n_all + 1, sizeof *params);
  ad_value **grads = ad_xcalloc((size_t)n_all + 1, sizeof *grads);
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < n_all; i++)
      if ((lookup[i] != NULL) == pass) {
        params[n_dense] = p->params[i];
        grads[n_dense++] = p->grads[i];
      }
  memcpy(p->params, params, sizeof *params * (size_t)n_all);
  memcpy(p->grads, grads, sizeof *grads * (size_t)n_all);
  free(params);
  free(grads);
  p->n_params = n_all - n_sparse;
  st = ad_strategy_allreduce(p, cfg, opts);
  p->n_params = n_all;
  free(lookup);
  if (st == AD_OK && n_sparse)
    ad_ps_finish(p, cfg, &l);
  if (st != AD_OK)
    ad_ps_layout_free(&l);
  else
    *out = l;
  return st;
}
