/*
 * compiler/ir.c: graph construction and the small shape utilities every pass
 * uses. ad_node_add is the one way nodes enter a graph: it resolves the op,
 * creates the outputs and runs the op's shape inference, so a graph is always
 * fully typed.
 */
#include "ir.h"

#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ad_dtype_name(ad_dtype t) {
  static const char *names[AD_DTYPE_COUNT] = {"float32", "int64",   "int32",   "uint8", "bool",
                                              "float16", "float64", "int8",    "int16", "uint16",
                                              "uint32",  "uint64",  "bfloat16"};
  AD_ASSERT(t >= 0 && t < AD_DTYPE_COUNT);
  return names[t];
}

size_t ad_dtype_size(ad_dtype t) {
  static const size_t sizes[AD_DTYPE_COUNT] = {4, 8, 4, 1, 1, 2, 8, 1, 2, 2, 4, 8, 2};
  AD_ASSERT(t >= 0 && t < AD_DTYPE_COUNT);
  return sizes[t];
}

bool ad_dtype_is_float(ad_dtype t) {
  return t == AD_F32 || t == AD_F64 || t == AD_F16 || t == AD_BF16;
}

bool ad_dtype_is_unsigned(ad_dtype t) {
  return t == AD_U8 || t == AD_BOOL || t == AD_U16 || t == AD_U32 || t == AD_U64;
}

int64_t ad_value_numel(const ad_value *v) {
  int64_t n = 1;
  for (int i = 0; i < v->rank; i++)
    n *= v->dims[i];
  return n;
}

size_t ad_value_bytes(const ad_value *v) {
  return (size_t)ad_value_numel(v) * ad_dtype_size(v->dtype);
}

ad_graph *ad_graph_create(const char *source) {
  ad_arena *a = ad_arena_create();
  ad_graph *g = ad_arena_alloc(a, sizeof *g);
  g->arena = a;
  g->source = ad_arena_strdup(a, source ? source : "model");
  return g;
}

void ad_graph_destroy(ad_graph *g) {
  if (!g)
    return;
  free(g->values.data);
  free(g->nodes.data);
  free(g->inputs.data);
  free(g->outputs.data);
  free(g->params.data);
  ad_arena_destroy(g->arena);
}

ad_value *ad_value_new(ad_graph *g, const char *name, ad_dtype dt, int rank, const int64_t *dims,
                       ad_value_kind kind) {
  AD_ASSERT(rank >= 0 && rank <= AD_MAX_RANK);
  ad_value *v = ad_arena_alloc(g->arena, sizeof *v);
  v->id = g->values.len;
  v->name = name ? ad_arena_strdup(g->arena, name) : ad_arena_printf(g->arena, "%%%d", v->id);
  v->dtype = dt;
  v->rank = rank;
  if (dims)
    memcpy(v->dims, dims, sizeof(int64_t) * (size_t)rank);
  v->kind = kind;
  AD_VEC_PUSH(g->values, v);
  return v;
}

ad_value *ad_const_f32(ad_graph *g, int rank, const int64_t *dims, const float *data) {
  ad_value *v = ad_value_new(g, NULL, AD_F32, rank, dims, AD_VAL_CONST);
  v->data = ad_arena_alloc(g->arena, ad_value_bytes(v));
  if (data)
    memcpy(v->data, data, ad_value_bytes(v));
  return v;
}

ad_value *ad_const_scalar(ad_graph *g, float x) {
  return ad_const_f32(g, 0, NULL, &x);
}

ad_value *ad_graph_find(const ad_graph *g, const char *name) {
  for (int i = g->values.len - 1; i >= 0; i--)
    if (!strcmp(g->values.data[i]->name, name))
      return g->values.data[i];
  return NULL;
}

ad_status ad_node_add(ad_graph *g, const char *name, const char *op_type, int n_in,
                      ad_value *const *in, int n_out, const ad_attr *attrs, int n_attr,
                      ad_node **out_node) {
  ad_node *n = ad_arena_alloc(g->arena, sizeof *n);
  n->id = g->nodes.len;
  n->op_type = ad_arena_strdup(g->arena, op_type);
  n->name = name && *name ? ad_arena_strdup(g->arena, name)
                          : ad_arena_printf(g->arena, "%s_%d", op_type, n->id);
  const ad_op *op = ad_op_find(op_type, "", g->opset);
  if (!op)
    op = ad_op_find(op_type, "ad", 0);
  if (!op) {
    if (ad_op_known(op_type, "")) {
      char ranges[128];
      ad_op_opsets(op_type, "", ranges, sizeof ranges);
      return ad_fail(AD_ERR_INPUT,
                     "%s: node '%s' (%s): error: op %s is supported at opsets %s, the model "
                     "imports %d",
                     g->source, n->name, op_type, op_type, ranges, g->opset);
    }
    return ad_fail(AD_ERR_INPUT, "%s: node '%s' (%s): error: op not supported", g->source, n->name,
                   op_type);
  }
  n->op = op;
  n->domain = op->domain;
  if (n_in < op->min_in || n_in > op->max_in)
    return ad_fail(AD_ERR_INPUT, "%s: error: expects %d to %d inputs, got %d", ad_node_where(g, n),
                   op->min_in, op->max_in, n_in);
  for (int i = 0; i < op->min_in; i++)
    if (!in[i])
      return ad_fail(AD_ERR_INPUT, "%s: error: input %d is required but omitted",
                     ad_node_where(g, n), i);
  if (n_out < 1)
    n_out = op->n_out;
  if (n_out > op->n_out)
    return ad_fail(AD_ERR_INPUT, "%s: error: has %d outputs, autodist supports %d",
                   ad_node_where(g, n), n_out, op->n_out);
  n->n_in = n_in;
  n->in = ad_arena_alloc(g->arena, sizeof(ad_value *) * (size_t)(n_in ? n_in : 1));
  if (n_in)
    memcpy(n->in, in, sizeof(ad_value *) * (size_t)n_in);
  n->n_attr = n_attr;
  n->attrs = ad_arena_alloc(g->arena, sizeof(ad_attr) * (size_t)(n_attr ? n_attr : 1));
  for (int i = 0; i < n_attr; i++) {
    ad_attr *a = &n->attrs[i];
    *a = attrs[i];
    a->name = ad_arena_strdup(g->arena, attrs[i].name);
    if (attrs[i].s)
      a->s = ad_arena_strdup(g->arena, attrs[i].s);
    if (attrs[i].ints) {
      a->ints = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(a->n ? a->n : 1));
      memcpy(a->ints, attrs[i].ints, sizeof(int64_t) * (size_t)a->n);
    }
    if (attrs[i].floats) {
      a->floats = ad_arena_alloc(g->arena, sizeof(float) * (size_t)(a->n ? a->n : 1));
      memcpy(a->floats, attrs[i].floats, sizeof(float) * (size_t)a->n);
    }
  }
  n->n_out = n_out;
  n->out = ad_arena_alloc(g->arena, sizeof(ad_value *) * (size_t)n_out);
  for (int i = 0; i < n_out; i++) {
    n->out[i] = ad_value_new(g, NULL, AD_F32, 0, NULL, AD_VAL_ACT);
    n->out[i]->producer = n;
  }
  AD_TRY(op->infer(g, n));
  /* Every value's element count stays far from int64 overflow (as the loader
   * requires of initializers), so byte sizes and products of dims are exact. */
  for (int i = 0; i < n_out; i++) {
    const ad_value *o = n->out[i];
    int64_t numel = 1;
    for (int a = 0; a < o->rank; a++) {
      if (o->dims[a] < 0 || (o->dims[a] && numel > (INT64_MAX >> 4) / o->dims[a]))
        return ad_fail(AD_ERR_INPUT, "%s: error: output shape %s is invalid or too large",
                       ad_node_where(g, n), ad_shape_str(o->rank, o->dims));
      numel *= o->dims[a];
    }
  }
  /* An activation is batched when any input is: the batch flows through. */
  bool batched = false;
  for (int i = 0; i < n_in; i++)
    batched |= in[i] && in[i]->batched;
  for (int i = 0; i < n_out; i++)
    n->out[i]->batched = batched;
  AD_VEC_PUSH(g->nodes, n);
  if (out_node)
    *out_node = n;
  return AD_OK;
}

const ad_attr *ad_attr_find(const ad_node *n, const char *name) {
  for (int i = 0; i < n->n_attr; i++)
    if (!strcmp(n->attrs[i].name, name))
      return &n->attrs[i];
  return NULL;
}

int64_t ad_attr_int(const ad_node *n, const char *name, int64_t dflt) {
  const ad_attr *a = ad_attr_find(n, name);
  return a && a->type == AD_ATTR_INT ? a->i : dflt;
}

float ad_attr_float(const ad_node *n, const char *name, float dflt) {
  const ad_attr *a = ad_attr_find(n, name);
  return a && a->type == AD_ATTR_FLOAT ? a->f : dflt;
}

const char *ad_attr_str(const ad_node *n, const char *name, const char *dflt) {
  const ad_attr *a = ad_attr_find(n, name);
  return a && a->type == AD_ATTR_STRING ? a->s : dflt;
}

int ad_attr_ints(const ad_node *n, const char *name, const int64_t **ints) {
  const ad_attr *a = ad_attr_find(n, name);
  if (!a || a->type != AD_ATTR_INTS)
    return -1;
  *ints = a->ints;
  return a->n;
}

ad_attr ad_attr_i(const char *name, int64_t v) {
  return (ad_attr){.name = name, .type = AD_ATTR_INT, .i = v};
}

ad_attr ad_attr_fl(const char *name, float v) {
  return (ad_attr){.name = name, .type = AD_ATTR_FLOAT, .f = v};
}

ad_attr ad_attr_is(const char *name, int n, const int64_t *v) {
  return (ad_attr){.name = name, .type = AD_ATTR_INTS, .n = n, .ints = (int64_t *)v};
}

void ad_graph_recount(ad_graph *g) {
  for (int i = 0; i < g->values.len; i++)
    g->values.data[i]->n_uses = 0;
  for (int i = 0; i < g->nodes.len; i++) {
    ad_node *n = g->nodes.data[i];
    for (int j = 0; j < n->n_in; j++)
      if (n->in[j])
        n->in[j]->n_uses++;
  }
  for (int i = 0; i < g->outputs.len; i++)
    g->outputs.data[i]->n_uses++;
}

const char *ad_node_where(const ad_graph *g, const ad_node *n) {
  static _Thread_local char buf[1024];
  snprintf(buf, sizeof buf, "%s: node '%s' (%s)", g->source, n->name, n->op_type);
  return buf;
}

ad_status ad_broadcast_shape(int ra, const int64_t *a, int rb, const int64_t *b, int *rout,
                             int64_t *out) {
  int r = ra > rb ? ra : rb;
  int64_t res[AD_MAX_RANK]; /* out may alias a or b */
  AD_ASSERT(r <= AD_MAX_RANK);
  for (int i = 0; i < r; i++) {
    int64_t da = i < r - ra ? 1 : a[i - (r - ra)];
    int64_t db = i < r - rb ? 1 : b[i - (r - rb)];
    if (da != db && da != 1 && db != 1)
      return ad_fail(AD_ERR_INPUT, "shapes %s and %s cannot be broadcast", ad_shape_str(ra, a),
                     ad_shape_str(rb, b));
    res[i] = da == 1 ? db : da;
  }
  memcpy(out, res, sizeof(int64_t) * (size_t)r);
  *rout = r;
  return AD_OK;
}

const char *ad_shape_str(int rank, const int64_t *dims) {
  static _Thread_local char bufs[2][256];
  static _Thread_local int which;
  char *buf = bufs[which ^= 1];
  int k = snprintf(buf, 256, "[");
  for (int i = 0; i < rank && k < 240; i++)
    k += snprintf(buf + k, (size_t)(256 - k), "%s%lld", i ? ", " : "", (long long)dims[i]);
  snprintf(buf + k, (size_t)(256 - k), "]");
  return buf;
}
