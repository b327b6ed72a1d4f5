/*
 * compiler/train_config.h: train.yml (docs/train.md). Parsed with libyaml and
 * validated strictly like the resource spec (file:line:column messages).
 * Checking names against the model (output, label, frozen) happens in the
 * compiler, which knows the graph.
 */
#ifndef AD_TRAIN_CONFIG_H
#define AD_TRAIN_CONFIG_H

#include "../common/ad.h"

#include <stdbool.h>

typedef enum ad_loss_kind { AD_LOSS_CROSS_ENTROPY, AD_LOSS_MSE, AD_LOSS_OUTPUT, AD_LOSS_COUNT } ad_loss_kind;
typedef enum ad_optim_kind { AD_OPT_SGD, AD_OPT_ADAM, AD_OPT_ADAMW, AD_OPT_COUNT } ad_optim_kind;

typedef struct ad_train_config {
  char *path;
  ad_loss_kind loss;       /* default cross_entropy */
  char *output;            /* NULL: the model's only output */
  char *label;             /* default "label" */
  int64_t batch_size;      /* global batch; default 64 */
  ad_optim_kind optimizer; /* default sgd */
  double lr;               /* default 0.01 (sgd), 0.001 (adam, adamw) */
  double momentum;         /* sgd; default 0 */
  double dampening;        /* sgd; default 0 */
  double weight_decay;     /* default 0 (sgd, adam), 0.01 (adamw) */
  bool nesterov;           /* sgd; default false */
  double beta1, beta2, eps;/* adam/adamw; defaults 0.9, 0.999, 1e-8 */
  int n_frozen;
  char **frozen;
  int line_output, line_label; /* where the output/label values were given (0: defaulted) */
  int col_output, col_label;
} ad_train_config;

ad_status ad_train_config_parse(const char *path, ad_train_config **out);
ad_status ad_train_config_parse_buffer(const char *path, const char *data, size_t len,
                                       ad_train_config **out);
ad_train_config *ad_train_config_default(void);
void ad_train_config_free(ad_train_config *c);
const char *ad_loss_name(ad_loss_kind k);
const char *ad_optim_name(ad_optim_kind k);

#endif
