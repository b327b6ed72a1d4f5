/*
 * tests/unit/test_train_config.c: train.yml parsing and validation.
 *
 * Optimizer defaults and rules are torch.optim's (torch 1.13, checked with
 * /usr/bin/python3): SGD momentum/dampening/weight_decay 0, nesterov false;
 * Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0; AdamW the same with
 * weight_decay 1e-2; "Nesterov momentum requires a momentum and zero dampening".
 * Error messages are compared whole, position included.
 */
#include "compiler/train_config.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

static ad_train_config *parse(const char *text) {
  ad_train_config *c = NULL;
  if (ad_train_config_parse_buffer("train.yml", text, strlen(text), &c) != AD_OK) {
    fprintf(stderr, "unexpected error: %s\nfor:\n%s\n", ad_error_message(), text);
    failures++;
    return NULL;
  }
  return c;
}

static void expect_error(const char *text, const char *want) {
  ad_train_config *c = NULL;
  if (ad_train_config_parse_buffer("train.yml", text, strlen(text), &c) != AD_ERR_INPUT) {
    fprintf(stderr, "parsed, want error '%s' for:\n%s\n", want, text);
    failures++;
    ad_train_config_free(c);
    return;
  }
  CHECK_STR(ad_error_message(), want);
}

static void test_defaults(void) {
  ad_train_config *c = ad_train_config_default();
  CHECK_STR(c->path, "(default)");
  CHECK(c->loss == AD_LOSS_CROSS_ENTROPY);
  CHECK(c->output == NULL);
  CHECK_STR(c->label, "label");
  CHECK(c->batch_size == 64);
  CHECK(c->optimizer == AD_OPT_SGD);
  CHECK(c->lr == 0.01 && c->momentum == 0 && c->dampening == 0 && c->weight_decay == 0);
  CHECK(!c->nesterov);
  CHECK(c->beta1 == 0.9 && c->beta2 == 0.999 && c->eps == 1e-8);
  CHECK(c->n_frozen == 0 && c->frozen == NULL);
  CHECK(c->line_output == 0 && c->line_label == 0);
  ad_train_config_free(c);

  /* An empty file (or only comments) means every default. */
  c = parse("# defaults\n");
  if (c) {
    CHECK_STR(c->path, "train.yml");
    CHECK(c->batch_size == 64 && c->optimizer == AD_OPT_SGD && c->lr == 0.01);
    ad_train_config_free(c);
  }
  CHECK_STR(ad_loss_name(AD_LOSS_MSE), "mse");
  CHECK_STR(ad_loss_name(AD_LOSS_OUTPUT), "output");
  CHECK_STR(ad_optim_name(AD_OPT_ADAMW), "adamw");
}

static void test_full_sgd(void) {
  ad_train_config *c = parse("loss: mse\n"
                             "output: logits\n"
                             "label: y\n"
                             "batch_size: 32\n"
                             "optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1e-4,\n"
                             "            nesterov: true}\n"
                             "frozen: [emb.weight, '1']\n");
  if (!c)
    return;
  CHECK(c->loss == AD_LOSS_MSE);
  CHECK_STR(c->output, "logits");
  CHECK(c->line_output == 2);
  CHECK_STR(c->label, "y");
  CHECK(c->line_label == 3);
  CHECK(c->batch_size == 32);
  CHECK(c->optimizer == AD_OPT_SGD);
  CHECK(c->lr == 0.05 && c->momentum == 0.9 && c->weight_decay == 1e-4 && c->dampening == 0);
  CHECK(c->nesterov);
  CHECK(c->n_frozen == 2);
  if (c->n_frozen == 2) {
    CHECK_STR(c->frozen[0], "emb.weight");
    CHECK_STR(c->frozen[1], "1");
  }
  ad_train_config_free(c);
}

static void test_adam_family(void) {
  ad_train_config *c = parse("optimizer:\n  name: adamw\n");
  if (c) {
    CHECK(c->optimizer == AD_OPT_ADAMW);
    CHECK(c->lr == 0.001 && c->weight_decay == 0.01);
    CHECK(c->beta1 == 0.9 && c->beta2 == 0.999 && c->eps == 1e-8);
    ad_train_config_free(c);
  }
  c = parse("optimizer: adam\nloss: output\n");
  if (c) {
    CHECK(c->optimizer == AD_OPT_ADAM && c->loss == AD_LOSS_OUTPUT);
    CHECK(c->lr == 0.001 && c->weight_decay == 0);
    ad_train_config_free(c);
  }
  c = parse("optimizer: {name: adam, lr: 3e-4, betas: [0.8, 0.99], eps: 1.0e-6, "
            "weight_decay: 0.1}\n");
  if (c) {
    CHECK(c->lr == 3e-4 && c->beta1 == 0.8 && c->beta2 == 0.99 && c->eps == 1e-6);
    CHECK(c->weight_decay == 0.1);
    ad_train_config_free(c);
  }
  /* adamw's weight_decay default is replaced when given. */
  c = parse("optimizer: {name: adamw, weight_decay: 0}\n");
  if (c) {
    CHECK(c->weight_decay == 0);
    ad_train_config_free(c);
  }
}

static void test_errors(void) {
  expect_error("optimizer: {name: sgd, lr: 0.1, nesterov: true}\n",
               "train.yml:1:43: error: nesterov momentum requires a momentum > 0 and zero "
               "dampening (as in torch.optim.SGD)");
  expect_error("optimizer: {name: sgd, momentum: 0.9, dampening: 0.1, nesterov: true}\n",
               "train.yml:1:65: error: nesterov momentum requires a momentum > 0 and zero "
               "dampening (as in torch.optim.SGD)");
  expect_error("batch_size: 0\n",
               "train.yml:1:13: error: 'batch_size' must be a positive integer, got 0");
  expect_error("batch_size: -8\n",
               "train.yml:1:13: error: 'batch_size' must be a positive integer, got -8");
  expect_error("batch_size: '64'\n",
               "train.yml:1:13: error: 'batch_size' must be a positive integer, got a string");
  expect_error("batch_size: 6.5\n",
               "train.yml:1:13: error: 'batch_size' must be a positive integer, got a number");
  expect_error("optimizer: {name: sgd, lr: 0}\n",
               "train.yml:1:28: error: 'lr' must be a positive number, got 0");
  expect_error("optimizer: {name: adam, lr: -0.1}\n",
               "train.yml:1:29: error: 'lr' must be a positive number, got -0.1");
  expect_error("optimizer:\n  lr: fast\n",
               "train.yml:2:7: error: 'lr' must be a number, got a string");
  expect_error("optimizer: {name: sgd, betas: [0.9, 0.99]}\n",
               "train.yml:1:24: error: 'betas' is not an option of sgd (it applies to adam and "
               "adamw)");
  expect_error("optimizer: {name: adamw, momentum: 0.9}\n",
               "train.yml:1:26: error: 'momentum' is not an option of adamw (it applies to sgd)");
  expect_error("optimizer: {name: adma}\n",
               "train.yml:1:19: error: unknown optimizer 'adma' (did you mean 'adam'?)");
  expect_error("optimizer: rmsprop\n",
               "train.yml:1:12: error: unknown optimizer 'rmsprop' (expected one of: sgd, adam, "
               "adamw)");
  expect_error("optimizer: {name: sgd, lrr: 0.1}\n",
               "train.yml:1:24: error: unknown key 'lrr' (did you mean 'lr'?)");
  expect_error("optimizer: [sgd]\n",
               "train.yml:1:12: error: 'optimizer' must be a name or a mapping {name: sgd, lr: "
               "...}, got a list");
  expect_error("loss: crossentropy\n",
               "train.yml:1:7: error: unknown loss 'crossentropy' (did you mean "
               "'cross_entropy'?)");
  expect_error("loss: nll\n",
               "train.yml:1:7: error: unknown loss 'nll' (expected one of: cross_entropy, mse, "
               "output)");
  expect_error("optimiser: sgd\n",
               "train.yml:1:1: error: unknown key 'optimiser' (did you mean 'optimizer'?)");
  expect_error("optimizer: {name: adam, betas: [0.9]}\n",
               "train.yml:1:32: error: 'betas' must be a list of two numbers [beta1, beta2], got "
               "a list of another length");
  expect_error("optimizer: {name: adam, betas: [0.9, 1.0]}\n",
               "train.yml:1:38: error: 'betas' must be in [0, 1), got 1.0");
  expect_error("optimizer: {name: adam, eps: -1e-8}\n",
               "train.yml:1:30: error: 'eps' must be >= 0, got -1e-8");
  expect_error("optimizer: {name: sgd, momentum: -0.5}\n",
               "train.yml:1:34: error: 'momentum' must be >= 0, got -0.5");
  expect_error("optimizer: {name: sgd, weight_decay: -1}\n",
               "train.yml:1:38: error: 'weight_decay' must be >= 0, got -1");
  expect_error("optimizer: {name: sgd, nesterov: 1}\n",
               "train.yml:1:34: error: 'nesterov' must be true or false, got an integer");
  expect_error("frozen: w\n",
               "train.yml:1:9: error: 'frozen' must be a list of initializer names, got a string");
  expect_error("frozen: [w, w]\n", "train.yml:1:13: error: 'w' is listed twice in 'frozen'");
  expect_error("frozen: [w, {a: 1}]\n",
               "train.yml:1:13: error: 'frozen' must be a list of initializer names, got a "
               "mapping in it");
  expect_error("output: [a, b]\n", "train.yml:1:9: error: 'output' must be a string, got a list");
  expect_error("label:\n", "train.yml:1:7: error: 'label' must be a string, got null");
  expect_error("- loss: mse\n",
               "train.yml:1:1: error: the top level must be a mapping, got a list");
  expect_error("loss: mse\nloss: output\n",
               "train.yml:2:1: error: duplicate key 'loss' (first given at line 1)");
  expect_error("loss: [mse\n",
               "train.yml:2:1: error: invalid YAML: did not find expected ',' or ']' (while "
               "parsing a flow sequence that started at 1:7)");
  ad_train_config *c = NULL;
  CHECK(ad_train_config_parse("data/no_such_train.yml", &c) == AD_ERR_INPUT);
  CHECK_STR(ad_error_message(),
            "data/no_such_train.yml: error: cannot open: No such file or directory");
}

int main(void) {
  test_defaults();
  test_full_sgd();
  test_adam_family();
  test_errors();
  if (failures)
    fprintf(stderr, "test_train_config: %d failure(s)\n", failures);
  else
    printf("test_train_config: ok\n");
  return failures != 0;
}
