/*
 * strategies/cost.c: the cost model behind `-s auto` and `compile --explain`.
 *
 * From the training program before any strategy (forward, loss, backward:
 * per-replica FLOPs and bytes of every node, the bytes of every variable and
 * which variables are sparse lookups) and the resource spec (workers, nodes,
 * network_bandwidth), it predicts for each candidate strategy one step of one
 * worker:
 *
 *   compute  = sum over the worker's nodes of max(FLOPs / F, bytes / M)
 *              (a roofline per node), plus the optimizer updates it runs
 *   comm     = the time of the communication that a step waits for:
 *     allreduce       ring all-reduce of the gradient bytes S:
 *                     2 (W-1)/W * S / BW + 2 (W-1) * latency per bucket
 *     ps family       the busiest server receives W pushes and sends W
 *                     replies of its bytes S_s (2 W S_s / BW), sums the W
 *                     pushes and runs its updates (roofline, as above)
 *     parallax        all-reduce of the dense gradients plus, per server, the
 *                     rows a step touches (pull and push, W workers) and its
 *                     dense update of its table shards
 *   step     = compute + comm (the model does not credit overlap)
 *
 * and the bytes that --metrics' bytes_sent will show per step (all workers),
 * and the memory of a worker and of the largest server. BW is the spec's
 * network_bandwidth (the slowest node's) when the job spans nodes, and the
 * node's shared-memory copy rate when it does not. The machine constants are
 * measured figures of this class of CPU (bench/strategies.py prints predicted
 * next to measured step times so they can be checked and refit).
 */
#include "cost.h"

#include "../compiler/op.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per core: sustained FLOP/s of the kernels and memory bytes/s. */
#define CPU_FLOPS 5.0e10
#define CPU_BYTES 3.0e10
/* Between processes of one node (MPI shared memory): bytes/s and latency. */
#define SHM_BYTES 3.0e9
#define SHM_LATENCY 5e-6
/* Between nodes: latency per message (bandwidth from the spec). */
#define NET_LATENCY 50e-6

static double roofline(double flops, double bytes) {
  double a = flops / CPU_FLOPS, b = bytes / CPU_BYTES;
  return a > b ? a : b;
}

/* Optimizer state tensors per parameter element (SGD momentum: 1; Adam: 2). */
static int n_states(const ad_train_config *cfg) {
  if (cfg->optimizer == AD_OPT_SGD)
    return cfg->momentum != 0 ? 1 : 0;
  return 2;
}

/* Time and traffic of the update of `bytes` bytes of parameters. */
static double update_time(const ad_train_config *cfg, double bytes) {
  double n = bytes / 4;
  return roofline(8 * n, 2.0 * (2 + n_states(cfg)) * bytes);
}

/* Expected distinct rows among m uniform draws from v rows. */
static double distinct_rows(double m, double v) {
  if (v <= 0)
    return 0;
  return v * (1 - pow(1 - 1 / v, m));
}

typedef struct model_facts {
  int workers, n_nodes;
  double bw, latency; /* of the links that carry the traffic */
  double compute;     /* forward + backward per worker, seconds */
  double param_bytes; /* trainable */
  double frozen_bytes, act_bytes;
  int n_params;
  double *bytes;      /* per trainable parameter */
  bool *sparse;       /* per trainable parameter: a lookup table */
  double *touched;    /* sparse: expected distinct rows per worker and step */
  double *row_bytes;  /* sparse */
  double gather_grad; /* time of the dense GatherGrads parallax removes */
} model_facts;

static void facts_of(const ad_program *p, const ad_spec *spec, model_facts *f) {
  const ad_graph *g = p->g;
  f->workers = p->replicas;
  f->n_nodes = spec->n_nodes;
  if (spec->n_nodes > 1) {
    double gbit = spec->nodes[0].network_bandwidth;
    for (int i = 1; i < spec->n_nodes; i++)
      if (spec->nodes[i].network_bandwidth < gbit)
        gbit = spec->nodes[i].network_bandwidth;
    f->bw = gbit * 1e9 / 8;
    f->latency = NET_LATENCY;
  } else {
    f->bw = SHM_BYTES;
    f->latency = SHM_LATENCY;
  }
  for (int i = 0; i < g->nodes.len; i++) {
    const ad_node *n = g->nodes.data[i];
    double fl = 0, by = 0;
    if (n->op->cost)
      n->op->cost(n, &fl, &by);
    f->compute += roofline(fl, by);
    for (int o = 0; o < n->n_out; o++)
      f->act_bytes += (double)ad_value_bytes(n->out[o]);
  }
  for (int i = 0; i < g->params.len; i++)
    f->frozen_bytes += (double)ad_value_bytes(g->params.data[i]);
  f->n_params = p->n_params;
  f->bytes = ad_xcalloc((size_t)p->n_params + 1, sizeof(double));
  f->sparse = ad_xcalloc((size_t)p->n_params + 1, sizeof(bool));
  f->touched = ad_xcalloc((size_t)p->n_params + 1, sizeof(double));
  f->row_bytes = ad_xcalloc((size_t)p->n_params + 1, sizeof(double));
  for (int i = 0; i < p->n_params; i++) {
    const ad_value *v = p->params[i];
    f->bytes[i] = (double)ad_value_bytes(v);
    f->param_bytes += f->bytes[i];
    ad_node *lookup = ad_sparse_lookup(p, i);
    if (lookup) {
      f->sparse[i] = true;
      f->row_bytes[i] = f->bytes[i] / (double)v->dims[0];
      f->touched[i] = distinct_rows((double)ad_value_numel(lookup->in[1]), (double)v->dims[0]);
      const ad_node *gg = p->grads[i]->producer;
      double fl = 0, by = 0;
      gg->op->cost(gg, &fl, &by);
      f->gather_grad += roofline(fl, by);
    }
  }
  f->frozen_bytes -= f->param_bytes;
}

static void facts_free(model_facts *f) {
  free(f->bytes);
  free(f->sparse);
  free(f->touched);
  free(f->row_bytes);
}

static double allreduce_time(const model_facts *f, double bytes, double bucket_bytes) {
  int w = f->workers;
  if (w <= 1 || bytes <= 0)
    return 0;
  double buckets = ceil(bytes / bucket_bytes);
  return 2.0 * (w - 1) / w * bytes / f->bw + 2.0 * (w - 1) * f->latency * buckets;
}

/* Greedy placement by bytes (largest first, least-loaded server), the same
 * rule as strategies/ps.c; per server: dense bytes. */
static void place(const model_facts *f, int servers, int parts, bool sparse_only, double *load) {
  int n = f->n_params;
  int *order = ad_xcalloc((size_t)n + 1, sizeof *order);
  for (int i = 0; i < n; i++)
    order[i] = i;
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && f->bytes[order[j]] > f->bytes[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  for (int k = 0; k < n; k++) {
    int i = order[k];
    if (sparse_only && !f->sparse[i])
      continue;
    for (int s = 0; s < parts; s++) {
      int best = 0;
      for (int j = 1; j < servers; j++)
        if (load[j] < load[best])
          best = j;
      load[best] += f->bytes[i] / parts;
    }
  }
  free(order);
}

static void predict(const model_facts *f, const ad_train_config *cfg, const ad_spec *spec,
                    const ad_strategy_opts *o, ad_cost *c) {
  int w = f->workers;
  double bucket = o->bucket_mb * 1024 * 1024;
  c->kind = o->kind;
  c->applicable = true;
  c->compute = f->compute;
  double states = (double)n_states(cfg);
  double held = 0; /* bytes of parameters the servers hold */
  if (o->kind == AD_STRAT_ALLREDUCE) {
    double s = f->param_bytes * (o->compress_fp16 ? 0.5 : 1);
    c->compute += update_time(cfg, f->param_bytes);
    c->comm = allreduce_time(f, s, bucket * (o->compress_fp16 ? 0.5 : 1));
    c->bytes_step = w > 1 ? s * w : 0;
    c->mem_worker = f->param_bytes * (2 + states) + f->frozen_bytes + f->act_bytes;
    c->step = c->compute + c->comm;
    return;
  }
  bool any_sparse = false;
  for (int i = 0; i < f->n_params; i++)
    any_sparse |= f->sparse[i];
  if (o->kind == AD_STRAT_PARALLAX && !any_sparse) {
    /* No lookup tables: parallax is the all-reduce. */
    ad_strategy_opts ar = *o;
    ar.kind = AD_STRAT_ALLREDUCE;
    predict(f, cfg, spec, &ar, c);
    c->kind = AD_STRAT_PARALLAX;
    snprintf(c->why_not, sizeof c->why_not, "no lookup tables: the same plan as allreduce");
    return;
  }
  int servers = o->kind == AD_STRAT_PS ? 1 : o->servers ? o->servers : spec->n_nodes;
  c->servers = servers;
  double *load = ad_xcalloc((size_t)servers, sizeof(double));
  int parts = o->kind == AD_STRAT_PARTITIONED_PS || o->kind == AD_STRAT_PARALLAX
                  ? (o->shards ? o->shards : servers)
                  : 1;
  place(f, servers, parts, o->kind == AD_STRAT_PARALLAX, load);
  double busiest = 0;
  for (int s = 0; s < servers; s++)
    busiest = load[s] > busiest ? load[s] : busiest;
  if (o->kind != AD_STRAT_PARALLAX) {
    held = f->param_bytes;
    /* Each worker pushes every gradient and pulls every value; the busiest
     * server receives and answers W of each, sums the pushes and updates. */
    double server = 2.0 * w * busiest / f->bw + roofline(w * busiest / 4, 2.0 * w * busiest) +
                    update_time(cfg, busiest) + 2.0 * w * f->latency;
    c->comm = server;
    c->bytes_step = 2.0 * w * f->param_bytes;
  } else {
    double dense = 0, row_traffic = 0;
    for (int i = 0; i < f->n_params; i++) {
      if (!f->sparse[i]) {
        dense += f->bytes[i];
        continue;
      }
      held += f->bytes[i];
      /* pull: ids + rows; push: ids + rows */
      row_traffic += 2.0 * f->touched[i] * (f->row_bytes[i] + 8);
    }
    c->compute += update_time(cfg, dense) - f->gather_grad;
    double share = busiest / (held > 0 ? held : 1); /* of the rows, on the busiest server */
    double server = 2.0 * w * row_traffic * share / f->bw + update_time(cfg, busiest) +
                    roofline(0, busiest) /* zeroing the gradient */ +
                    4.0 * w * f->latency * servers;
    c->comm = allreduce_time(f, dense, bucket) + server;
    c->bytes_step = (w > 1 ? dense * w : 0) + w * row_traffic;
  }
  c->mem_worker =
      f->param_bytes + f->frozen_bytes + f->act_bytes + (f->param_bytes - held) * (1 + states);
  c->mem_server = busiest * (2 + states) + (o->sync == AD_SYNC_BSP ? w * busiest : busiest);
  c->step = c->compute + c->comm;
  free(load);
}

ad_status ad_cost_predict(const ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                          const ad_strategy_opts *base, ad_cost *out) {
  model_facts f = {0};
  facts_of(p, spec, &f);
  for (int k = 0; k < AD_STRAT_COUNT; k++) {
    ad_strategy_opts o = *base;
    o.kind = (ad_strategy_kind)k;
    if (k == AD_STRAT_ALLREDUCE || k == AD_STRAT_PS)
      o.servers = 0;
    if (k != AD_STRAT_PARTITIONED_PS && k != AD_STRAT_PARALLAX)
      o.shards = 0;
    out[k] = (ad_cost){0};
    predict(&f, cfg, spec, &o, &out[k]);
  }
  /* Candidates whose placement is impossible (a server on a node without
   * cpus, a variable with fewer rows than shards) are not applicable. */
  for (int k = AD_STRAT_PS; k < AD_STRAT_COUNT; k++) {
    ad_strategy_opts o = *base;
    o.kind = (ad_strategy_kind)k;
    int servers = k == AD_STRAT_PS ? 1 : o.servers ? o.servers : spec->n_nodes;
    for (int s = 0; s < servers; s++) {
      const ad_spec_node *nd = &spec->nodes[k == AD_STRAT_PS ? spec->chief : s % spec->n_nodes];
      if (!nd->n_cpus) {
        out[k].applicable = false;
        snprintf(out[k].why_not, sizeof out[k].why_not, "node '%s' lists no cpus", nd->address);
      }
    }
    int parts = k == AD_STRAT_PARTITIONED_PS || k == AD_STRAT_PARALLAX
                    ? (o.shards ? o.shards : servers)
                    : 1;
    for (int i = 0; i < p->n_params && out[k].applicable; i++) {
      const ad_value *v = p->params[i];
      bool partitioned = k == AD_STRAT_PARTITIONED_PS || (k == AD_STRAT_PARALLAX && f.sparse[i]);
      if (partitioned && (v->rank ? v->dims[0] : 1) < parts) {
        out[k].applicable = false;
        snprintf(out[k].why_not, sizeof out[k].why_not, "'%s' has fewer than %d rows", v->name,
                 parts);
      }
    }
  }
  facts_free(&f);
  return AD_OK;
}

ad_strategy_kind ad_cost_choose(const ad_cost *c) {
  int best = -1;
  for (int k = 0; k < AD_STRAT_COUNT; k++)
    if (c[k].applicable && (best < 0 || c[k].step < c[best].step * (1 - 1e-9)))
      best = k;
  return best < 0 ? AD_STRAT_COUNT : (ad_strategy_kind)best;
}

static void human(double bytes, char *out, size_t cap) {
  if (bytes >= 1e6)
    snprintf(out, cap, "%.2f MB", bytes / 1e6);
  else if (bytes >= 1e3)
    snprintf(out, cap, "%.1f kB", bytes / 1e3);
  else
    snprintf(out, cap, "%.0f B", bytes);
}

void ad_cost_print(FILE *out, const ad_cost *c, ad_strategy_kind chosen, bool automatic,
                   const ad_spec *spec, int workers) {
  double bw = 0;
  if (spec->n_nodes > 1) {
    bw = spec->nodes[0].network_bandwidth;
    for (int i = 1; i < spec->n_nodes; i++)
      bw = spec->nodes[i].network_bandwidth < bw ? spec->nodes[i].network_bandwidth : bw;
  }
  fprintf(out, "predicted cost per step, %d worker%s on %d node%s", workers,
          workers == 1 ? "" : "s", spec->n_nodes, spec->n_nodes == 1 ? "" : "s");
  if (spec->n_nodes > 1)
    fprintf(out, " (network %.3g Gbit/s)\n", bw);
  else
    fprintf(out, " (shared memory, %.3g GB/s)\n", SHM_BYTES / 1e9);
  fprintf(out, "  %-15s %7s %11s %9s %9s %12s %11s %11s\n", "strategy", "servers", "compute ms",
          "comm ms", "step ms", "bytes/step", "worker mem", "server mem");
  for (int k = 0; k < AD_STRAT_COUNT; k++) {
    char b[32], mw[32], ms[32];
    human(c[k].bytes_step, b, sizeof b);
    human(c[k].mem_worker, mw, sizeof mw);
    human(c[k].mem_server, ms, sizeof ms);
    if (!c[k].servers)
      snprintf(ms, sizeof ms, "-");
    char note[192] = "";
    if (k == (int)chosen)
      snprintf(note, sizeof note, "  <- chosen");
    else if (!c[k].applicable)
      snprintf(note, sizeof note, "  (not applicable: %s)", c[k].why_not);
    else if (c[k].why_not[0])
      snprintf(note, sizeof note, "  (%s)", c[k].why_not);
    fprintf(out, "  %-15s %7d %11.3f %9.3f %9.3f %12s %11s %11s%s\n",
            ad_strategy_name((ad_strategy_kind)k), c[k].servers, c[k].compute * 1e3,
            c[k].comm * 1e3, c[k].step * 1e3, b, mw, ms, note);
  }
  if (chosen == AD_STRAT_COUNT)
    return;
  const ad_cost *ch = &c[chosen], *ar = &c[AD_STRAT_ALLREDUCE];
  if (!automatic) {
    fprintf(out, "strategy: %s (chosen with -s)\n", ad_strategy_name(chosen));
    return;
  }
  int second = -1;
  for (int k = 0; k < AD_STRAT_COUNT; k++)
    if (k != (int)chosen && c[k].applicable && !c[k].why_not[0] &&
        (second < 0 || c[k].step < c[second].step))
      second = k; /* (a candidate with a note is the same plan as another) */
  fprintf(out, "strategy: %s (-s auto: the fastest predicted step, %.3f ms",
          ad_strategy_name(chosen), ch->step * 1e3);
  if (second >= 0)
    fprintf(out, "; next %s at %.3f ms", ad_strategy_name((ad_strategy_kind)second),
            c[second].step * 1e3);
  fputs(")\n", out);
  if (chosen == AD_STRAT_PARALLAX)
    fprintf(out,
            "  why: lookup tables move only the rows a step touches (%.3g of the %.3g bytes "
            "all-reduce would send)\n",
            ch->bytes_step, ar->bytes_step);
  else if (chosen == AD_STRAT_ALLREDUCE && workers > 1)
    fputs("  why: every gradient is dense, and the all-reduce splits the traffic over all "
          "workers instead of funnelling it through servers\n",
          out);
  else if (chosen == AD_STRAT_ALLREDUCE)
    fputs("  why: one worker: no communication at all\n", out);
}
