/*
 * compiler/inspect.c: `autodist inspect MODEL.onnx [--batch N]`.
 *
 * Loads the model exactly as `compile` does (so every error it would report
 * shows here first) and prints what a user checks before training: the data
 * inputs and graph outputs with dtype and shape, node counts per op type, the
 * parameters, and the FLOPs of one forward pass. Dynamic batch dimensions are
 * set to N (default 1), so the shapes and FLOPs are those of a batch of N.
 * FLOPs sum each op's cost function (a multiply-add counts 2); an op that
 * lowers to no code (ALIAS: Reshape, Flatten, ...) does no arithmetic. When any
 * other op has no cost function the total is unknown and printed as "-" with
 * the ops that lack one.
 *
 * `autodist inspect --ops` prints the ONNX ops autodist accepts, one line per
 * op: its name and the opsets of the default domain it is accepted at, within
 * the AD_OPSET_MIN..AD_OPSET_MAX a model may import (several registry entries
 * of one op, for semantics that changed between opsets, are merged where their
 * ranges touch). Internal ops (domain "ad") are left out.
 * docs/ops.md and the conformance runner read this list.
 */
#include "../cli/commands.h"
#include "onnx_load.h"
#include "op.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char inspect_usage[] = "usage: autodist inspect MODEL.onnx [--batch N]";

static const char inspect_help[] =
    "usage: autodist inspect MODEL.onnx [--batch N]\n"
    "       autodist inspect --ops\n"
    "\n"
    "Prints the model's inputs, outputs, op counts, parameters and the FLOPs of\n"
    "one forward pass. Dynamic batch dimensions are set to N (default 1).\n"
    "With --ops, prints the ONNX ops autodist supports and their opsets.\n";

static void print_value(const ad_value *v) {
  printf("  %-24s %-8s %s%s\n", v->name, ad_dtype_name(v->dtype), ad_shape_str(v->rank, v->dims),
         v->batched ? "  (axis 0 is the batch)" : "");
}

/* Whether the FLOPs of node n are unknown: no cost function, and it runs code. */
static int cost_unknown(const ad_node *n) {
  return !n->op->cost && n->op->lower_kind != AD_LOWER_ALIAS;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void print_report(const ad_graph *g, int64_t batch) {
  printf("model: %s (opset %d)\n", g->source, g->opset);

  printf("inputs:\n");
  for (int i = 0; i < g->inputs.len; i++)
    print_value(g->inputs.data[i]);
  if (!g->inputs.len)
    printf("  (none)\n");

  printf("outputs:\n");
  for (int i = 0; i < g->outputs.len; i++)
    print_value(g->outputs.data[i]);

  /* Op counts, alphabetically: sort the op_type pointers and count runs. */
  int n = g->nodes.len;
  const char **types = ad_xmalloc(sizeof *types * (size_t)(n ? n : 1));
  for (int i = 0; i < n; i++)
    types[i] = g->nodes.data[i]->op_type;
  qsort(types, (size_t)n, sizeof *types, cmp_str);
  printf("ops: %d node%s\n", n, n == 1 ? "" : "s");
  for (int i = 0; i < n;) {
    int j = i;
    while (j < n && !strcmp(types[j], types[i]))
      j++;
    printf("  %-24s %d\n", types[i], j - i);
    i = j;
  }
  free(types);

  int64_t elems = 0, bytes = 0, frozen = 0;
  for (int i = 0; i < g->params.len; i++) {
    const ad_value *p = g->params.data[i];
    elems += ad_value_numel(p);
    bytes += (int64_t)ad_value_bytes(p);
    frozen += p->frozen;
  }
  printf("parameters: %d tensor%s, %lld elements, %lld bytes", g->params.len,
         g->params.len == 1 ? "" : "s", (long long)elems, (long long)bytes);
  if (frozen)
    printf(" (%lld frozen)", (long long)frozen);
  printf("\n");

  double flops = 0;
  int unknown = 0;
  for (int i = 0; i < n; i++) {
    const ad_node *nd = g->nodes.data[i];
    if (!nd->op->cost) {
      unknown += cost_unknown(nd);
      continue;
    }
    double f = 0, b = 0;
    nd->op->cost(nd, &f, &b);
    flops += f;
  }
  /* The batch applies only where an input has a dynamic batch axis. */
  int batched = 0;
  for (int i = 0; i < g->inputs.len; i++)
    batched |= g->inputs.data[i]->batched;
  char at[64];
  if (batched)
    snprintf(at, sizeof at, "forward, batch %lld", (long long)batch);
  else
    snprintf(at, sizeof at, "forward, fixed input shapes");
  if (!unknown) {
    printf("flops: %.0f (%s)\n", flops, at);
  } else {
    printf("flops: - (%s; no cost model for:", at);
    for (int i = 0; i < n; i++) {
      const ad_node *nd = g->nodes.data[i];
      /* Each op type once; nodes are few enough for a quadratic check. */
      int seen = 0;
      for (int j = 0; j < i && !seen; j++)
        seen = cost_unknown(g->nodes.data[j]) && !strcmp(g->nodes.data[j]->op_type, nd->op_type);
      if (cost_unknown(nd) && !seen)
        printf(" %s", nd->op_type);
    }
    printf(")\n");
  }
}

/* Orders registry entries by name, then by first opset. */
static int cmp_op(const void *a, const void *b) {
  const ad_op *x = *(const ad_op *const *)a, *y = *(const ad_op *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : x->min_opset - y->min_opset;
}

static void print_ops(void) {
  int n = 0;
  while (ad_op_at(n))
    n++;
  const ad_op **ops = ad_xmalloc(sizeof *ops * (size_t)(n ? n : 1));
  int m = 0;
  for (int i = 0; i < n; i++) {
    const ad_op *op = ad_op_at(i);
    if (!op->domain[0] || !strcmp(op->domain, "ai.onnx"))
      ops[m++] = op;
  }
  qsort(ops, (size_t)m, sizeof *ops, cmp_op);
  printf("# ONNX ops (default domain) that autodist supports: opsets : dtypes of the op's data\n");
  for (int i = 0; i < m;) {
    printf("%-24s", ops[i]->name);
    int j = i;
    while (j < m && !strcmp(ops[j]->name, ops[i]->name)) {
      int lo = ops[j]->min_opset, hi = ops[j]->max_opset;
      /* Merge the following entries whose ranges touch this one. */
      while (j + 1 < m && !strcmp(ops[j + 1]->name, ops[i]->name) &&
             ops[j + 1]->min_opset <= hi + 1) {
        j++;
        if (ops[j]->max_opset > hi)
          hi = ops[j]->max_opset;
      }
      /* The loader accepts models of opsets AD_OPSET_MIN..AD_OPSET_MAX only. */
      if (lo < AD_OPSET_MIN)
        lo = AD_OPSET_MIN;
      if (hi > AD_OPSET_MAX)
        hi = AD_OPSET_MAX;
      if (lo <= hi)
        printf(" %d-%d", lo, hi);
      j++;
    }
    char types[160];
    int which;
    ad_op_types_str(ad_op_types(ops[i]->name, &which), types, sizeof types);
    printf("  : %s", types);
    if (which)
      printf(which < 0 ? " (output)" : " (input %d)", which);
    printf("\n");
    i = j;
  }
  free(ops);
}

ad_status ad_cmd_inspect(int argc, char **argv) {
  const char *model = NULL;
  int64_t batch = 1;
  int list_ops = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(inspect_help, stdout);
      return AD_OK;
    }
    if (!strcmp(a, "--ops")) {
      list_ops = 1;
    } else if (!strcmp(a, "--batch")) {
      if (i + 1 >= argc)
        return ad_fail(AD_ERR_INPUT, "error: --batch needs a value\n%s", inspect_usage);
      char *end;
      errno = 0;
      long long v = strtoll(argv[++i], &end, 10);
      if (errno || *end || end == argv[i] || v < 1)
        return ad_fail(AD_ERR_INPUT, "error: --batch must be a positive integer, got '%s'\n%s",
                       argv[i], inspect_usage);
      batch = v;
    } else if (a[0] == '-' && a[1]) {
      return ad_fail(AD_ERR_INPUT, "error: unknown option '%s'\n%s", a, inspect_usage);
    } else if (model) {
      return ad_fail(AD_ERR_INPUT, "error: more than one model given ('%s', '%s')\n%s", model, a,
                     inspect_usage);
    } else {
      model = a;
    }
  }
  if (list_ops) {
    if (model)
      return ad_fail(AD_ERR_INPUT, "error: --ops takes no model (got '%s')\n%s", model,
                     "usage: autodist inspect --ops");
    print_ops();
    return AD_OK;
  }
  if (!model)
    return ad_fail(AD_ERR_INPUT, "error: no model given\n%s", inspect_usage);
  ad_graph *g;
  AD_TRY(ad_onnx_load(model, batch, &g));
  print_report(g, batch);
  ad_graph_destroy(g);
  return AD_OK;
}
