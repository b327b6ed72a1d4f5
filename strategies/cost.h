/*
 * strategies/cost.h: predicted step time, traffic and memory of each strategy
 * for a training program and a resource spec (strategies/cost.c); `-s auto`
 * picks the fastest and `compile --explain` prints the table.
 */
#ifndef AD_COST_H
#define AD_COST_H

#include "strategy.h"

#include <stdio.h>

typedef struct ad_cost {
  ad_strategy_kind kind;
  bool applicable;
  char why_not[128];
  int servers;
  double compute, comm, step;    /* seconds per step of one worker */
  double bytes_step;             /* --metrics bytes_sent per step (all workers) */
  double mem_worker, mem_server; /* bytes (server: the busiest) */
} ad_cost;

/* Fills out[k] for every strategy k (AD_STRAT_COUNT entries) with base's
 * options (bucket size, compression, servers, shards, sync). p is the program
 * from ad_train_build, before any strategy. */
ad_status ad_cost_predict(const ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                          const ad_strategy_opts *base, ad_cost *out);
/* The applicable candidate with the smallest predicted step (allreduce first
 * on ties); AD_STRAT_COUNT when none is applicable. */
ad_strategy_kind ad_cost_choose(const ad_cost *c);
/* The --explain table; `automatic`: the choice came from -s auto. */
void ad_cost_print(FILE *out, const ad_cost *c, ad_strategy_kind chosen, bool automatic,
                   const ad_spec *spec, int workers);

#endif
