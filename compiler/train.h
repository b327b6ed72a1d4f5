/*
 * compiler/train.h: turns a forward graph into a training program: the loss
 * train.yml asks for, the backward pass, and (called by the strategy, after its
 * communication) the optimizer update of each parameter.
 */
#ifndef AD_TRAIN_H
#define AD_TRAIN_H

#include "program.h"

/* Adds loss and backward to g (whose batch dim is the per-replica batch
 * cfg->batch_size / replicas) and returns the program; params and grads are in
 * the order the backward pass finishes them. Errors name train.yml's lines. */
ad_status ad_train_build(ad_graph *g, const ad_train_config *cfg, int replicas,
                         ad_program **out);

/* Appends the optimizer update of p->params[i] (PyTorch's torch.optim
 * semantics), creating its state values. */
void ad_train_add_update(ad_program *p, const ad_train_config *cfg, int i);

#endif
