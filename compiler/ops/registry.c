/*
 * compiler/ops/registry.c: the list of op family tables. An op is found by
 * (op_type, domain) and the opset range of its entry, so one family file may
 * hold two entries for one op whose semantics changed between opsets.
 */
#include "../op.h"

#include <stdio.h>
#include <string.h>

static const ad_op *const families[] = {
    ad_ops_elementwise, ad_ops_shape,  ad_ops_linear, ad_ops_conv, ad_ops_softmax, ad_ops_train,
    ad_ops_index,       ad_ops_reduce, ad_ops_ps,     ad_ops_norm, ad_ops_random,  ad_ops_loss,
};

static int domain_eq(const char *a, const char *b) {
  if (!strcmp(a, "ai.onnx"))
    a = "";
  if (!strcmp(b, "ai.onnx"))
    b = "";
  return !strcmp(a, b);
}

const ad_op *ad_op_find(const char *op_type, const char *domain, int opset) {
  for (size_t f = 0; f < sizeof families / sizeof *families; f++)
    for (const ad_op *op = families[f]; op->name; op++) {
      if (strcmp(op->name, op_type) || !domain_eq(op->domain, domain))
        continue;
      if (!strcmp(op->domain, "ad") || (opset >= op->min_opset && opset <= op->max_opset))
        return op;
    }
  return NULL;
}

int ad_op_known(const char *op_type, const char *domain) {
  for (size_t f = 0; f < sizeof families / sizeof *families; f++)
    for (const ad_op *op = families[f]; op->name; op++)
      if (!strcmp(op->name, op_type) && domain_eq(op->domain, domain))
        return 1;
  return 0;
}

void ad_op_opsets(const char *op_type, const char *domain, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = 0;
  /* Registry entries of one op are disjoint; walk the opsets upwards. */
  for (int v = AD_OPSET_MIN; v <= AD_OPSET_MAX;) {
    if (!ad_op_find(op_type, domain, v)) {
      v++;
      continue;
    }
    int hi = v;
    while (hi < AD_OPSET_MAX && ad_op_find(op_type, domain, hi + 1))
      hi++;
    int k = snprintf(buf + len, cap - len, "%s%d-%d", len ? ", " : "", v, hi);
    if (k < 0 || (size_t)k >= cap - len)
      return;
    len += (size_t)k;
    v = hi + 1;
  }
}

const ad_op *ad_op_at(int i) {
  for (size_t f = 0; f < sizeof families / sizeof *families; f++)
    for (const ad_op *op = families[f]; op->name; op++)
      if (i-- == 0)
        return op;
  return NULL;
}
