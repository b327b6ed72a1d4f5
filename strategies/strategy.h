/*
 * strategies/strategy.h: a strategy turns a training program (forward, loss,
 * backward) into what each device runs: it places communication between the
 * backward pass and the optimizer updates and appends the updates.
 */
#ifndef AD_STRATEGY_H
#define AD_STRATEGY_H

#include "../compiler/program.h"

typedef struct ad_strategy_opts {
  double bucket_mb;   /* all-reduce bucket size in MiB (default 25, like PyTorch DDP) */
  int compress_fp16;  /* all-reduce gradients as IEEE binary16 (--compress fp16) */
} ad_strategy_opts;

/* Data-parallel all-reduce: gradients are grouped into buckets in the order the
 * backward pass finishes them; each bucket's all-reduce starts as soon as its
 * last gradient is computed and is waited for just before its updates. */
ad_status ad_strategy_allreduce(ad_program *p, const ad_train_config *cfg,
                                const ad_strategy_opts *opts);

#endif
