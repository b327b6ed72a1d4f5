/*
 * compiler/program.h: one device's program: the graph to run (forward, loss,
 * backward, communication and optimizer nodes in execution order) and what the
 * later stages need to know about it. Built by train.c (training) or compile.c
 * (inference), extended by a strategy, laid out by memplan.c, lowered by
 * codegen.c, written out by compile.c.
 */
#ifndef AD_PROGRAM_H
#define AD_PROGRAM_H

#include "ir.h"
#include "train_config.h"

typedef struct ad_bucket {
  int first, count;       /* range of ad_program.params (availability order) */
} ad_bucket;

typedef struct ad_program {
  ad_graph *g;
  bool training;
  int replicas;
  int64_t global_batch;
  ad_value *loss;         /* training: scalar, this replica's share of the global mean */
  ad_value *label;        /* training with cross_entropy/mse: the label input */
  /* Trainable parameters and their final gradients, in the order the backward
   * pass finishes them (so buckets fill in order). */
  int n_params;
  ad_value **params;
  ad_value **grads;
  AD_VEC(ad_value *) states; /* optimizer state values (zero at start) */
  AD_VEC(ad_value *) comm_bufs; /* staging buffers of communication (fp16 buckets) */
  int n_buckets;
  ad_bucket *buckets;
  /* Memory plan (memplan.c): byte offset of each value id in the device
   * arena, -1 for constants and values that live only in registers. */
  int64_t *offset;
  int64_t scratch_offset;
  int64_t mem_bytes;
} ad_program;

ad_program *ad_program_create(ad_graph *g, bool training);
void ad_program_destroy(ad_program *p);

/* Moves the last node of the graph to position `pos` of the node list. */
void ad_graph_move_last(ad_graph *g, int pos);

#endif
