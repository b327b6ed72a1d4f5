/*
 * compiler/train_config.c: train.yml -> ad_train_config (docs/train.md).
 *
 * Strict like the resource spec: unknown keys (with "did you mean"), wrong types
 * and values PyTorch would reject are errors at their line:column. The
 * optimizer's options depend on its name (momentum for sgd, betas for adam...),
 * so the name is read first and decides which keys are allowed. Defaults and
 * rules are torch.optim's (SGD, Adam, AdamW), so that a run here and a run in
 * PyTorch with the same file mean the same thing. Names (output, label, frozen)
 * are checked against the model by the compiler, which has the graph.
 */
#include "train_config.h"

#include "../resource_specs/yaml_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const top_keys[] = {"loss",      "output", "label", "batch_size",
                                       "optimizer", "frozen", NULL};
static const char *const loss_names[] = {"cross_entropy", "mse", "output", NULL};
static const char *const optim_names[] = {"sgd", "adam", "adamw", NULL};
static const char *const optim_keys[] = {
    "name", "lr", "weight_decay", "momentum", "dampening", "nesterov", "betas", "eps", NULL};
static const char *const sgd_only[] = {"momentum", "dampening", "nesterov", NULL};
static const char *const adam_only[] = {"betas", "eps", NULL};

const char *ad_loss_name(ad_loss_kind k) {
  return k >= 0 && k < AD_LOSS_COUNT ? loss_names[k] : "?";
}

const char *ad_optim_name(ad_optim_kind k) {
  return k >= 0 && k < AD_OPT_COUNT ? optim_names[k] : "?";
}

static bool in_list(const char *s, const char *const *list) {
  for (int i = 0; list[i]; i++)
    if (!strcmp(s, list[i]))
      return true;
  return false;
}

/* One of `names` (NULL-terminated), else "unknown WHAT 'x' (did you mean ...)". */
static ad_status parse_enum(const ad_yaml_doc *d, const ad_yaml_node *v, const char *key,
                            const char *what, const char *const *names, int *out) {
  const char *s;
  AD_TRY(ad_yaml_string(d, v, key, &s));
  for (int i = 0; names[i]; i++)
    if (!strcmp(s, names[i]))
      return *out = i, AD_OK;
  const char *near = ad_yaml_suggest(s, names);
  if (near)
    return ad_yaml_error(d, v, "unknown %s '%s' (did you mean '%s'?)", what, s, near);
  char list[256] = "";
  for (int i = 0; names[i]; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
  return ad_yaml_error(d, v, "unknown %s '%s' (expected one of: %s)", what, s, list);
}

/* A number in [lo, hi) (hi = INFINITY: unbounded); `rule` says it in words. */
static ad_status parse_range(const ad_yaml_doc *d, const ad_yaml_node *v, const char *key,
                             double lo, bool lo_open, double hi, const char *rule, double *out) {
  AD_TRY(ad_yaml_number(d, v, key, out));
  bool ok = (lo_open ? *out > lo : *out >= lo) && *out < hi;
  if (!ok)
    return ad_yaml_error(d, v, "'%s' must be %s, got %s", key, rule, v->str);
  return AD_OK;
}

static ad_status parse_optimizer(const ad_yaml_doc *d, const ad_yaml_node *o, ad_train_config *c) {
  int kind = AD_OPT_SGD;
  const ad_yaml_node *name = o->kind == AD_YAML_MAP ? ad_yaml_get(o, "name") : o;
  if (o->kind == AD_YAML_SEQ)
    return ad_yaml_error(d, o,
                         "'optimizer' must be a name or a mapping {name: sgd, lr: ...}, "
                         "got a list");
  if (name)
    AD_TRY(parse_enum(d, name, o->kind == AD_YAML_MAP ? "name" : "optimizer", "optimizer",
                      optim_names, &kind));
  c->optimizer = (ad_optim_kind)kind;
  bool sgd = kind == AD_OPT_SGD;
  c->lr = sgd ? 0.01 : 0.001;
  c->weight_decay = kind == AD_OPT_ADAMW ? 0.01 : 0;
  if (o->kind != AD_YAML_MAP)
    return AD_OK;

  /* Keys of another optimizer get their own message before the generic check. */
  for (int i = 0; i < o->n; i++) {
    const char *k = o->keys[i]->str;
    if ((!sgd && in_list(k, sgd_only)) || (sgd && in_list(k, adam_only)))
      return ad_yaml_error(d, o->keys[i], "'%s' is not an option of %s (it applies to %s)", k,
                           optim_names[kind], sgd ? "adam and adamw" : "sgd");
  }
  AD_TRY(ad_yaml_check_keys(d, o, optim_keys));

  const ad_yaml_node *v;
  if ((v = ad_yaml_get(o, "lr")))
    AD_TRY(parse_range(d, v, "lr", 0, true, INFINITY, "a positive number", &c->lr));
  if ((v = ad_yaml_get(o, "weight_decay")))
    AD_TRY(parse_range(d, v, "weight_decay", 0, false, INFINITY, ">= 0", &c->weight_decay));
  if ((v = ad_yaml_get(o, "momentum")))
    AD_TRY(parse_range(d, v, "momentum", 0, false, INFINITY, ">= 0", &c->momentum));
  if ((v = ad_yaml_get(o, "dampening")))
    AD_TRY(parse_range(d, v, "dampening", -INFINITY, false, INFINITY, "a number", &c->dampening));
  if ((v = ad_yaml_get(o, "eps")))
    AD_TRY(parse_range(d, v, "eps", 0, false, INFINITY, ">= 0", &c->eps));
  if ((v = ad_yaml_get(o, "betas"))) {
    if (v->kind != AD_YAML_SEQ || v->n != 2)
      return ad_yaml_error(d, v, "'betas' must be a list of two numbers [beta1, beta2], got %s",
                           v->kind == AD_YAML_SEQ ? "a list of another length"
                                                  : ad_yaml_describe(v));
    AD_TRY(parse_range(d, v->items[0], "betas", 0, false, 1, "in [0, 1)", &c->beta1));
    AD_TRY(parse_range(d, v->items[1], "betas", 0, false, 1, "in [0, 1)", &c->beta2));
  }
  if ((v = ad_yaml_get(o, "nesterov"))) {
    AD_TRY(ad_yaml_bool(d, v, "nesterov", &c->nesterov));
    if (c->nesterov && (c->momentum <= 0 || c->dampening != 0))
      return ad_yaml_error(d, v,
                           "nesterov momentum requires a momentum > 0 and zero dampening "
                           "(as in torch.optim.SGD)");
  }
  return AD_OK;
}

static ad_status parse_config(const ad_yaml_doc *d, ad_train_config *c) {
  const ad_yaml_node *root = d->root, *v;
  if (!root)
    return AD_OK; /* an empty train.yml means every default */
  if (root->kind != AD_YAML_MAP)
    return ad_yaml_error(d, root, "the top level must be a mapping, got %s",
                         ad_yaml_describe(root));
  AD_TRY(ad_yaml_check_keys(d, root, top_keys));
  const char *s;
  if ((v = ad_yaml_get(root, "loss"))) {
    int k;
    AD_TRY(parse_enum(d, v, "loss", "loss", loss_names, &k));
    c->loss = (ad_loss_kind)k;
  }
  if ((v = ad_yaml_get(root, "output"))) {
    AD_TRY(ad_yaml_string(d, v, "output", &s));
    c->output = ad_xstrdup(s);
    c->line_output = v->line;
    c->col_output = v->col;
  }
  if ((v = ad_yaml_get(root, "label"))) {
    AD_TRY(ad_yaml_string(d, v, "label", &s));
    free(c->label);
    c->label = ad_xstrdup(s);
    c->line_label = v->line;
    c->col_label = v->col;
  }
  if ((v = ad_yaml_get(root, "batch_size"))) {
    if (!ad_yaml_scalar_int(v, &c->batch_size))
      return ad_yaml_error(d, v, "'batch_size' must be a positive integer, got %s",
                           ad_yaml_describe(v));
    if (c->batch_size <= 0)
      return ad_yaml_error(d, v, "'batch_size' must be a positive integer, got %lld",
                           (long long)c->batch_size);
  }
  if ((v = ad_yaml_get(root, "optimizer")))
    AD_TRY(parse_optimizer(d, v, c));
  if ((v = ad_yaml_get(root, "frozen"))) {
    if (v->kind != AD_YAML_SEQ)
      return ad_yaml_error(d, v, "'frozen' must be a list of initializer names, got %s",
                           ad_yaml_describe(v));
    c->frozen = ad_xcalloc((size_t)v->n, sizeof(char *));
    for (int i = 0; i < v->n; i++) {
      const ad_yaml_node *it = v->items[i];
      if (it->kind != AD_YAML_SCALAR || ad_yaml_is_null(it))
        return ad_yaml_error(d, it, "'frozen' must be a list of initializer names, got %s in it",
                             ad_yaml_describe(it));
      for (int j = 0; j < i; j++)
        if (!strcmp(c->frozen[j], it->str))
          return ad_yaml_error(d, it, "'%s' is listed twice in 'frozen'", it->str);
      c->frozen[i] = ad_xstrdup(it->str);
      c->n_frozen = i + 1;
    }
  }
  return AD_OK;
}

ad_train_config *ad_train_config_default(void) {
  ad_train_config *c = ad_xcalloc(1, sizeof *c);
  c->path = ad_xstrdup("(default)");
  c->loss = AD_LOSS_CROSS_ENTROPY;
  c->label = ad_xstrdup("label");
  c->batch_size = 64;
  c->optimizer = AD_OPT_SGD;
  c->lr = 0.01;
  c->beta1 = 0.9;
  c->beta2 = 0.999;
  c->eps = 1e-8;
  return c;
}

ad_status ad_train_config_parse_buffer(const char *path, const char *data, size_t len,
                                       ad_train_config **out) {
  ad_yaml_doc *d;
  AD_TRY(ad_yaml_load(path, data, len, &d));
  ad_train_config *c = ad_train_config_default();
  free(c->path);
  c->path = ad_xstrdup(path);
  ad_status st = parse_config(d, c);
  ad_yaml_free(d);
  if (st != AD_OK) {
    ad_train_config_free(c);
    return st;
  }
  *out = c;
  return AD_OK;
}

ad_status ad_train_config_parse(const char *path, ad_train_config **out) {
  char *data;
  size_t len;
  AD_TRY(ad_file_read(path, &data, &len));
  ad_status st = ad_train_config_parse_buffer(path, data, len, out);
  free(data);
  return st;
}

void ad_train_config_free(ad_train_config *c) {
  if (!c)
    return;
  for (int i = 0; i < c->n_frozen; i++)
    free(c->frozen[i]);
  free(c->frozen);
  free(c->output);
  free(c->label);
  free(c->path);
  free(c);
}
