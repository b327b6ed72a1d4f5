/*
 * compiler/train.c: loss, backward pass and optimizer updates.
 *
 * Every replica computes its share of the global mean loss (its local sum
 * divided by the GLOBAL batch), so that summing gradients over replicas with
 * an all-reduce gives exactly the gradient of one device with the whole batch
 * (DESIGN.md, semantics).
 */
#include "train.h"

#include "autodiff.h"
#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ad_program *ad_program_create(ad_graph *g, bool training) {
  ad_program *p = ad_xcalloc(1, sizeof *p);
  p->g = g;
  p->training = training;
  p->replicas = 1;
  return p;
}

void ad_program_destroy(ad_program *p) {
  if (!p)
    return;
  free(p->params);
  free(p->grads);
  free(p->states.data);
  free(p->comm_bufs.data);
  free(p->buckets);
  free(p->offset);
  free(p);
}

void ad_graph_move_last(ad_graph *g, int pos) {
  int last = g->nodes.len - 1;
  AD_ASSERT(pos >= 0 && pos <= last);
  ad_node *n = g->nodes.data[last];
  memmove(&g->nodes.data[pos + 1], &g->nodes.data[pos], sizeof(ad_node *) * (size_t)(last - pos));
  g->nodes.data[pos] = n;
}

static ad_value *add1(ad_graph *g, const char *op, int n_in, ad_value *const *in,
                      const ad_attr *attrs, int n_attr) {
  ad_node *n;
  /* Loss and update nodes use the newest opset's ops, whatever the model imports. */
  int opset = g->opset;
  g->opset = AD_OPSET_MAX;
  ad_status st = ad_node_add(g, NULL, op, n_in, in, 0, attrs, n_attr, &n);
  g->opset = opset;
  AD_ASSERT(st == AD_OK);
  return n->n_out ? n->out[0] : NULL;
}

static ad_status find_output(ad_graph *g, const ad_train_config *cfg, ad_value **out) {
  if (cfg->output) {
    for (int i = 0; i < g->outputs.len; i++)
      if (!strcmp(g->outputs.data[i]->name, cfg->output)) {
        *out = g->outputs.data[i];
        return AD_OK;
      }
    char names[512] = "";
    for (int i = 0; i < g->outputs.len; i++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
               g->outputs.data[i]->name);
    return ad_fail(AD_ERR_INPUT,
                   "%s:%d:%d: error: output '%s' is not an output of %s (outputs: %s)", cfg->path,
                   cfg->line_output, cfg->col_output, cfg->output, g->source, names);
  }
  if (g->outputs.len != 1)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: %s has %d outputs; say which one the loss reads with 'output:'",
                   cfg->path, g->source, g->outputs.len);
  *out = g->outputs.data[0];
  return AD_OK;
}

static ad_status build_loss(ad_program *p, const ad_train_config *cfg, ad_value *y) {
  ad_graph *g = p->g;
  double B = (double)cfg->batch_size;
  if (cfg->loss == AD_LOSS_OUTPUT) {
    if (y->dtype != AD_F32 || ad_value_numel(y) != 1)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: loss 'output' needs a float32 scalar output; '%s' is %s %s",
                     cfg->path, y->name, ad_dtype_name(y->dtype), ad_shape_str(y->rank, y->dims));
    ad_attr a = ad_attr_fl("alpha", (float)(1.0 / p->replicas));
    p->loss = add1(g, "Scale", 1, &y, &a, 1);
    return AD_OK;
  }
  const char *label = cfg->label ? cfg->label : "label";
  if (ad_graph_find(g, label))
    return ad_fail(AD_ERR_INPUT,
                   "%s:%d:%d: error: label '%s' is already a value of %s; choose another name",
                   cfg->path, cfg->line_label, cfg->col_label, label, g->source);
  if (y->dtype != AD_F32 || y->rank < 1)
    return ad_fail(
        AD_ERR_INPUT,
        "%s: error: the loss needs a float32 output with a batch dimension; '%s' is %s %s",
        cfg->path, y->name, ad_dtype_name(y->dtype), ad_shape_str(y->rank, y->dims));
  if (cfg->loss == AD_LOSS_CROSS_ENTROPY) {
    if (y->rank != 2)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: cross_entropy needs logits of shape [batch, classes]; '%s' is %s",
                     cfg->path, y->name, ad_shape_str(y->rank, y->dims));
    p->label = ad_value_new(g, label, AD_I64, 1, y->dims, AD_VAL_INPUT);
    ad_value *args[2] = {y, p->label};
    ad_attr a = ad_attr_fl("scale", (float)(1.0 / B));
    p->loss = add1(g, "SoftmaxCrossEntropy", 2, args, &a, 1);
  } else {
    p->label = ad_value_new(g, label, AD_F32, y->rank, y->dims, AD_VAL_INPUT);
    ad_value *args[2] = {y, p->label};
    ad_value *d = add1(g, "Sub", 2, args, NULL, 0);
    ad_value *sq_args[2] = {d, d};
    ad_value *sq = add1(g, "Mul", 2, sq_args, NULL, 0);
    ad_attr shape = ad_attr_is("shape", 0, NULL);
    ad_value *s = add1(g, "ReduceSumTo", 1, &sq, &shape, 1);
    double per_sample = (double)ad_value_numel(y) / (double)y->dims[0];
    ad_attr a = ad_attr_fl("alpha", (float)(1.0 / (B * per_sample)));
    p->loss = add1(g, "Scale", 1, &s, &a, 1);
  }
  p->label->batched = true;
  AD_VEC_PUSH(g->inputs, p->label);
  return AD_OK;
}

typedef struct {
  ad_value *param, *grad;
  int order;
} avail;

static int by_order(const void *a, const void *b) {
  const avail *x = a, *y = b;
  return x->order != y->order ? (x->order > y->order) - (x->order < y->order)
                              : (x->param->id > y->param->id) - (x->param->id < y->param->id);
}

ad_status ad_train_build(ad_graph *g, const ad_train_config *cfg, int replicas, ad_program **out) {
  for (int i = 0; i < cfg->n_frozen; i++) {
    ad_value *v = ad_graph_find(g, cfg->frozen[i]);
    if (!v || v->kind != AD_VAL_PARAM)
      return ad_fail(AD_ERR_INPUT, "%s: error: frozen: '%s' is not an initializer of %s", cfg->path,
                     cfg->frozen[i], g->source);
    v->frozen = true;
  }
  ad_value *y;
  AD_TRY(find_output(g, cfg, &y));
  AD_TRY(ad_norm_prepare_training(g, replicas));
  AD_TRY(ad_dropout_prepare_training(g));
  ad_program *p = ad_program_create(g, true);
  p->replicas = replicas;
  p->global_batch = cfg->batch_size;
  ad_status st = build_loss(p, cfg, y);
  ad_value **grads = NULL;
  if (st == AD_OK) {
    grads = ad_xcalloc((size_t)g->params.len + 1, sizeof *grads);
    st = ad_autodiff(g, p->loss, grads);
  }
  if (st != AD_OK) {
    free(grads);
    ad_program_destroy(p);
    return st;
  }
  /* Order parameters by where their final gradient is produced. */
  int *pos = ad_xcalloc((size_t)g->values.len, sizeof *pos);
  for (int i = 0; i < g->nodes.len; i++)
    for (int j = 0; j < g->nodes.data[i]->n_out; j++)
      pos[g->nodes.data[i]->out[j]->id] = i;
  avail *a = ad_xcalloc((size_t)g->params.len + 1, sizeof *a);
  int n = 0;
  for (int i = 0; i < g->params.len; i++)
    if (grads[i]) {
      a[n].param = g->params.data[i];
      a[n].grad = grads[i];
      a[n].order = grads[i]->kind == AD_VAL_ACT ? pos[grads[i]->id] : -1;
      n++;
    }
  qsort(a, (size_t)n, sizeof *a, by_order);
  p->n_params = n;
  p->params = ad_xcalloc((size_t)n + 1, sizeof(ad_value *));
  p->grads = ad_xcalloc((size_t)n + 1, sizeof(ad_value *));
  for (int i = 0; i < n; i++) {
    p->params[i] = a[i].param;
    p->grads[i] = a[i].grad;
  }
  free(a);
  free(pos);
  free(grads);
  *out = p;
  return AD_OK;
}

static ad_value *new_state(ad_program *p, ad_value *param, const char *what) {
  char name[512];
  snprintf(name, sizeof name, "%s.%s", param->name, what);
  ad_value *s = ad_value_new(p->g, name, AD_F32, param->rank, param->dims, AD_VAL_STATE);
  AD_VEC_PUSH(p->states, s);
  return s;
}

void ad_train_add_update(ad_program *p, const ad_train_config *cfg, int i) {
  ad_value *param = p->params[i], *grad = p->grads[i];
  if (cfg->optimizer == AD_OPT_SGD) {
    ad_attr attrs[] = {
        ad_attr_fl("lr", (float)cfg->lr),
        ad_attr_fl("momentum", (float)cfg->momentum),
        ad_attr_fl("dampening", (float)cfg->dampening),
        ad_attr_fl("weight_decay", (float)cfg->weight_decay),
        ad_attr_i("nesterov", cfg->nesterov),
    };
    ad_value *in[3] = {param, grad, NULL};
    int n_in = 2;
    if (cfg->momentum != 0)
      in[n_in++] = new_state(p, param, "momentum_buffer");
    add1(p->g, "SgdUpdate", n_in, in, attrs, 5);
  } else {
    ad_attr attrs[] = {
        ad_attr_fl("lr", (float)cfg->lr),
        ad_attr_fl("beta1", (float)cfg->beta1),
        ad_attr_fl("beta2", (float)cfg->beta2),
        ad_attr_fl("eps", (float)cfg->eps),
        ad_attr_fl("weight_decay", (float)cfg->weight_decay),
        ad_attr_i("decoupled", cfg->optimizer == AD_OPT_ADAMW),
    };
    ad_value *in[4] = {param, grad, new_state(p, param, "exp_avg"),
                       new_state(p, param, "exp_avg_sq")};
    add1(p->g, "AdamUpdate", 4, in, attrs, 6);
  }
}
