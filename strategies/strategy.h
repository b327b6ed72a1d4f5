/*
 * strategies/strategy.h: a strategy turns a training program (forward, loss,
 * backward) into what each device runs: it places communication between the
 * backward pass and the optimizer updates and appends the updates. The server
 * strategies also build one program per parameter server (its shards' updates).
 */
#ifndef AD_STRATEGY_H
#define AD_STRATEGY_H

#include "../compiler/program.h"
#include "../resource_specs/spec.h"
#include "../runtime/plan.h"

typedef enum ad_strategy_kind {
  AD_STRAT_ALLREDUCE,
  AD_STRAT_PS,
  AD_STRAT_PS_LB,
  AD_STRAT_PARTITIONED_PS,
  AD_STRAT_PARALLAX,
  AD_STRAT_COUNT
} ad_strategy_kind;

/* "allreduce", "ps", "ps-lb", "partitioned-ps", "parallax". */
const char *ad_strategy_name(ad_strategy_kind k);
/* -1 when `name` is not a strategy. */
int ad_strategy_find(const char *name);

typedef struct ad_strategy_opts {
  ad_strategy_kind kind;
  double bucket_mb;  /* all-reduce bucket size in MiB (default 25, like PyTorch DDP) */
  int compress_fp16; /* all-reduce gradients as IEEE binary16 (--compress fp16) */
  int servers;       /* server strategies: number of servers (0: one per node; ps: 1) */
  int shards;        /* partitioned-ps, parallax: shards per variable (0: one per server) */
  ad_sync_mode sync; /* server strategies: --sync (default), --staleness K, --async */
  int staleness;
} ad_strategy_opts;

/* One shard of a server-held parameter: rows [row0, row0 + rows) of axis 0. */
typedef struct ad_ps_shard {
  ad_value *param; /* in the worker program */
  int server;
  int64_t row0, rows, row_bytes;
  bool sparse;              /* pushed and pulled by row (parallax) */
  ad_value *sparam, *sgrad; /* the shard's value and gradient in its server's program */
} ad_ps_shard;

typedef struct ad_ps_server {
  int node;      /* index in the resource spec */
  int64_t bytes; /* of the shards it holds */
  ad_graph *g;   /* its program: the updates of its shards */
  ad_program *prog;
} ad_ps_server;

/* Where the server strategies put the parameters; empty for allreduce. */
typedef struct ad_ps_layout {
  int n_servers;
  ad_ps_server *servers;
  int n_shards; /* in server order, then by placement within a server */
  ad_ps_shard *shards;
} ad_ps_layout;

void ad_ps_layout_free(ad_ps_layout *l);

/* Data-parallel all-reduce: gradients are grouped into buckets in the order the
 * backward pass finishes them; each bucket's all-reduce starts as soon as its
 * last gradient is computed and is waited for just before its updates. */
ad_status ad_strategy_allreduce(ad_program *p, const ad_train_config *cfg,
                                const ad_strategy_opts *opts);

/* ps, ps-lb, partitioned-ps (strategies/ps.c): every trainable parameter lives
 * on servers; workers push gradients and pull new values each step. */
ad_status ad_strategy_ps(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                         const ad_strategy_opts *opts, ad_ps_layout *out);

/* parallax (strategies/parallax.c): parameters read only through lookups
 * (Gather on axis 0) are sharded over servers and move only touched rows; the
 * others are all-reduced. */
ad_status ad_strategy_parallax(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                               const ad_strategy_opts *opts, ad_ps_layout *out);

/* Whether p->params[i] is a sparse parameter in parallax's sense: trainable,
 * read by exactly one Gather on axis 0 and nothing else, so that its gradient
 * is that lookup's GatherGrad. Returns the Gather node or NULL. */
ad_node *ad_sparse_lookup(const ad_program *p, int i);

/* ---- shared by the server strategies (strategies/ps.c) ---- */

/* The servers' nodes for `opts` (ps: the chief; otherwise opts->servers or
 * one per node, round-robin over the nodes). Errors when a server would land on
 * a node that lists no cpus. */
ad_status ad_ps_place_servers(const ad_spec *spec, const ad_strategy_opts *opts, ad_ps_layout *l);
/* Adds the shards of p->params[i] (split into `parts` along axis 0, each part
 * to the least-loaded server). Errors when the parameter has fewer rows. */
ad_status ad_ps_add_param(ad_program *p, int i, int parts, bool sparse, ad_ps_layout *l);
/* Builds each server's program (its shards' optimizer updates) and puts the
 * workers' push/pull nodes in p (the PsPushRows of sparse shards must already
 * be in place). */
void ad_ps_finish(ad_program *p, const ad_train_config *cfg, ad_ps_layout *l);

#endif
