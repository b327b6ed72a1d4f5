/*
 * compiler/onnx_load.c: ONNX model file -> IR graph.
 *
 * The protobuf is parsed by the protobuf-c code generated at build time from
 * the system onnx.proto; this file only walks the parsed message, in the order
 * the ONNX spec defines it:
 *   1. the opset imports (the default domain must be at 1-17; each node's op
 *      must then have a registry entry at that opset),
 *   2. initializers (PARAM, or CONST for integers and for floats that feed only
 *      attribute-like inputs such as Reshape's shape or Clip's bounds; a
 *      BatchNormalization's running statistics are frozen PARAMs),
 *   3. graph inputs that are not initializers (data inputs; a dynamic dim 0 is
 *      the batch),
 *   4. nodes in their (topological) order: Constant nodes become CONST values,
 *      every other node goes through the op registry and ad_node_add, which runs
 *      shape inference; a node whose constant slot (Reshape's shape) is
 *      computed waits until its level of such values is folded (fold.h),
 *   5. graph outputs.
 * Names are resolved through a hash table local to the load (ad_graph_find is
 * a linear scan, fine for passes but quadratic over a whole model). Every
 * error names the file and, where there is one, the node or tensor.
 */
#include "onnx_load.h"

#include "../runtime/npy.h"

#include "fold.h"
#include "onnx.pb-c.h"
#include "op.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OPSET_MIN AD_OPSET_MIN
#define OPSET_MAX AD_OPSET_MAX

/* Optional proto2 strings are NULL when absent. */
static const char *str(const char *s) {
  return s ? s : "";
}

/* ---- name -> value table (open addressing; keys live in the graph arena) ---- */

typedef struct slot {
  const char *key;
  ad_value *v;
} slot;

typedef struct loader {
  const char *path;
  ad_graph *g;
  const Onnx__GraphProto *gp;
  int64_t batch;
  int n_bind; /* infer's data bound as constants (ad_onnx_load_bound) */
  ad_onnx_binding *bind;
  slot *tab;
  size_t cap, len;
} loader;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static ad_value *map_get(const loader *ld, const char *key) {
  if (!ld->cap)
    return NULL;
  for (size_t i = hash_str(key) & (ld->cap - 1);; i = (i + 1) & (ld->cap - 1)) {
    if (!ld->tab[i].key)
      return NULL;
    if (!strcmp(ld->tab[i].key, key))
      return ld->tab[i].v;
  }
}

static void map_put(loader *ld, const char *key, ad_value *v) {
  if (2 * (ld->len + 1) > ld->cap) {
    size_t cap = ld->cap ? 2 * ld->cap : 256;
    slot *tab = ad_xcalloc(cap, sizeof *tab);
    for (size_t j = 0; j < ld->cap; j++) {
      if (!ld->tab[j].key)
        continue;
      size_t i = hash_str(ld->tab[j].key) & (cap - 1);
      while (tab[i].key)
        i = (i + 1) & (cap - 1);
      tab[i] = ld->tab[j];
    }
    free(ld->tab);
    ld->tab = tab;
    ld->cap = cap;
  }
  size_t i = hash_str(key) & (ld->cap - 1);
  while (ld->tab[i].key && strcmp(ld->tab[i].key, key))
    i = (i + 1) & (ld->cap - 1);
  if (!ld->tab[i].key)
    ld->len++;
  ld->tab[i] = (slot){key, v};
}

/* ---- dtypes and tensors ---- */

static const char *onnx_type_name(int32_t t) {
  static const char *names[] = {"undefined",  "float32", "uint8",  "int8",   "uint16",
                                "int16",      "int32",   "int64",  "string", "bool",
                                "float16",    "float64", "uint32", "uint64", "complex64",
                                "complex128", "bfloat16"};
  return t >= 0 && t < (int32_t)(sizeof names / sizeof *names) ? names[t] : "unknown";
}

/*
 * Converts a TensorProto into a new value named `name` holding a copy of its
 * data. `what` names it in messages ("initializer 'w'", "node 'c' (Constant)").
 * Data comes from raw_data (little-endian) or the typed repeated field ONNX
 * uses for the dtype (uint8 and bool are stored one per int32_data entry).
 */
static ad_status tensor_to_value(loader *ld, const Onnx__TensorProto *t, const char *what,
                                 const char *name, ad_value_kind kind, ad_value **out) {
  const char *path = ld->path;
  if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
    return ad_fail(AD_ERR_INPUT,
                   "%s: %s: error: data stored in an external file is not supported (save the "
                   "model with its data inside)",
                   path, what);
  if (t->segment)
    return ad_fail(AD_ERR_INPUT, "%s: %s: error: segmented tensors are not supported", path, what);
  ad_dtype dt;
  int32_t et = t->has_data_type ? t->data_type : 0;
  if (!ad_op_dtype_of_onnx(et, &dt))
    return ad_fail(AD_ERR_INPUT,
                   "%s: %s: error: dtype %s is not supported (numeric and bool tensors only)", path,
                   what, onnx_type_name(et));
  if (t->n_dims > AD_MAX_RANK)
    return ad_fail(AD_ERR_INPUT, "%s: %s: error: rank %zu is above the maximum %d", path, what,
                   t->n_dims, AD_MAX_RANK);
  int64_t numel = 1;
  for (size_t i = 0; i < t->n_dims; i++) {
    if (t->dims[i] < 0)
      return ad_fail(AD_ERR_INPUT, "%s: %s: error: negative dimension %lld", path, what,
                     (long long)t->dims[i]);
    if (t->dims[i] && numel > (INT64_MAX >> 4) / t->dims[i])
      return ad_fail(AD_ERR_INPUT, "%s: %s: error: tensor too large", path, what);
    numel *= t->dims[i];
  }
  ad_value *v = ad_value_new(ld->g, name, dt, (int)t->n_dims, t->dims, kind);
  size_t bytes = ad_value_bytes(v);
  /* The values present decide before anything is allocated: the shape alone
   * may claim any size. */
  size_t have; /* elements present in the file */
  if (t->has_raw_data) {
    if (t->raw_data.len != bytes)
      return ad_fail(AD_ERR_INPUT,
                     "%s: %s: error: raw_data has %zu bytes, shape %s of %s needs %zu", path, what,
                     t->raw_data.len, ad_shape_str(v->rank, v->dims), ad_dtype_name(dt), bytes);
    have = (size_t)numel;
  } else if (dt == AD_F32) {
    have = t->n_float_data;
  } else if (dt == AD_F64) {
    have = t->n_double_data;
  } else if (dt == AD_I64) {
    have = t->n_int64_data;
  } else if (dt == AD_U32 || dt == AD_U64) {
    have = t->n_uint64_data;
  } else {
    have = t->n_int32_data; /* int32 and the narrower types, one per entry (halfs as bits) */
  }
  if (have != (size_t)numel)
    return ad_fail(AD_ERR_INPUT, "%s: %s: error: has %zu values, shape %s needs %lld", path, what,
                   have, ad_shape_str(v->rank, v->dims), (long long)numel);
  v->data = ad_arena_alloc(ld->g->arena, bytes);
  if (t->has_raw_data) {
    if (bytes)
      memcpy(v->data, t->raw_data.data, bytes);
  } else if (dt == AD_F32) {
    if (have)
      memcpy(v->data, t->float_data, bytes);
  } else if (dt == AD_F64) {
    if (have)
      memcpy(v->data, t->double_data, bytes);
  } else if (dt == AD_I64) {
    if (have)
      memcpy(v->data, t->int64_data, bytes);
  } else if (dt == AD_I32) {
    if (have)
      memcpy(v->data, t->int32_data, bytes);
  } else if (dt == AD_U64) {
    if (have)
      memcpy(v->data, t->uint64_data, bytes);
  } else if (dt == AD_U32) {
    for (size_t i = 0; i < have; i++)
      ((uint32_t *)v->data)[i] = (uint32_t)t->uint64_data[i];
  } else if (ad_dtype_size(dt) == 2) {
    for (size_t i = 0; i < have; i++)
      ((uint16_t *)v->data)[i] = (uint16_t)t->int32_data[i];
  } else {
    for (size_t i = 0; i < have; i++)
      ((uint8_t *)v->data)[i] = (uint8_t)(dt == AD_BOOL ? t->int32_data[i] != 0 : t->int32_data[i]);
  }
  *out = v;
  return AD_OK;
}

/* ---- initializers ---- */

/*
 * Inputs that ONNX passes as tensors but that act as attributes: shapes, axes,
 * bounds, ratios. A float initializer read only through these is a constant,
 * not a weight (Clip's min/max of an exported ReLU6 must not be trained).
 * BatchNormalization's running mean and variance are state that the op, not
 * the optimizer, updates: they stay initializers but are frozen (training
 * updates them in place and saves them: ad_norm_prepare_training, ops/norm.c).
 */
static const struct {
  const char *op;
  unsigned const_mask, frozen_mask;
} attr_inputs[] = {
    {"Reshape", 1u << 1, 0},
    {"Expand", 1u << 1, 0},
    {"Tile", 1u << 1, 0},
    {"Slice", 0x1eu, 0},
    {"Pad", 0xeu, 0},
    {"Resize", 0xeu, 0},
    {"Upsample", 1u << 1, 0},
    {"Clip", 0x6u, 0},
    {"Squeeze", 1u << 1, 0},
    {"Unsqueeze", 1u << 1, 0},
    {"Split", 1u << 1, 0},
    {"ReduceSum", 1u << 1, 0},
    {"ReduceMean", 1u << 1, 0},
    {"ReduceMax", 1u << 1, 0},
    {"ReduceMin", 1u << 1, 0},
    {"ReduceProd", 1u << 1, 0},
    {"ReduceL1", 1u << 1, 0},
    {"ReduceL2", 1u << 1, 0},
    {"ReduceLogSumExp", 1u << 1, 0},
    {"ReduceSumSquare", 1u << 1, 0},
    {"ConstantOfShape", 1u << 0, 0},
    {"TopK", 1u << 1, 0},
    {"Range", 0x7u, 0},
    {"OneHot", 0x6u, 0},
    {"Dropout", 0x6u, 0},
    {"CumSum", 1u << 1, 0},
    {"Gather", 1u << 1, 0},
    {"Trilu", 1u << 1, 0},
    {"BatchNormalization", 0, 0x18u},
};

enum { USE_NONE = 0, USE_CONST = 1, USE_FROZEN = 2, USE_TRAIN = 4 };

static int use_kind(const char *op_type, size_t slot_index) {
  for (size_t i = 0; i < sizeof attr_inputs / sizeof *attr_inputs; i++) {
    if (strcmp(attr_inputs[i].op, op_type))
      continue;
    if (slot_index < 32 && (attr_inputs[i].const_mask >> slot_index & 1))
      return USE_CONST;
    if (slot_index < 32 && (attr_inputs[i].frozen_mask >> slot_index & 1))
      return USE_FROZEN;
    return USE_TRAIN;
  }
  return USE_TRAIN;
}

static ad_status load_initializers(loader *ld) {
  const Onnx__GraphProto *gp = ld->gp;
  /* How each initializer is read (OR of use kinds), in one pass over the
   * nodes: `idx` maps a name to its initializer index + 1, stored in the
   * pointer slot of the table. */
  int *uses = ad_xcalloc(gp->n_initializer ? gp->n_initializer : 1, sizeof *uses);
  loader idx = {0};
  for (size_t i = 0; i < gp->n_initializer; i++)
    map_put(&idx, str(gp->initializer[i]->name), (ad_value *)(uintptr_t)(i + 1));
  for (size_t i = 0; i < gp->n_node; i++) {
    const Onnx__NodeProto *n = gp->node[i];
    for (size_t j = 0; j < n->n_input; j++) {
      uintptr_t k = (uintptr_t)map_get(&idx, n->input[j]);
      if (k)
        uses[k - 1] |= use_kind(str(n->op_type), j);
    }
  }
  for (size_t i = 0; i < gp->n_output; i++) {
    uintptr_t k = (uintptr_t)map_get(&idx, str(gp->output[i]->name));
    if (k)
      uses[k - 1] |= USE_TRAIN;
  }
  free(idx.tab);

  ad_status st = AD_OK;
  for (size_t i = 0; i < gp->n_initializer && st == AD_OK; i++) {
    const Onnx__TensorProto *t = gp->initializer[i];
    if (!t->name || !*t->name) {
      st = ad_fail(AD_ERR_INPUT, "%s: error: initializer #%zu has no name", ld->path, i);
      break;
    }
    if (map_get(ld, t->name)) {
      st = ad_fail(AD_ERR_INPUT, "%s: error: initializer '%s' is defined twice", ld->path, t->name);
      break;
    }
    char what[512];
    snprintf(what, sizeof what, "initializer '%s'", t->name);
    ad_value *v;
    st = tensor_to_value(ld, t, what, t->name, AD_VAL_PARAM, &v);
    if (st)
      break;
    int u = uses[i];
    if (v->dtype != AD_F32 || u == USE_CONST) {
      v->kind = AD_VAL_CONST;
    } else {
      v->frozen = u != USE_NONE && !(u & USE_TRAIN);
      AD_VEC_PUSH(ld->g->params, v);
    }
    map_put(ld, v->name, v);
  }
  free(uses);
  return st;
}

/* ---- graph inputs ---- */

/* Whether every node that reads graph input `name` (there may be none) reads
 * only its dtype (CastLike's target): then its shape does not matter. */
static int read_for_dtype_only(const loader *ld, const char *name) {
  const Onnx__GraphProto *gp = ld->gp;
  for (size_t i = 0; i < gp->n_node; i++) {
    const Onnx__NodeProto *n = gp->node[i];
    for (size_t k = 0; k < n->n_input; k++) {
      if (strcmp(n->input[k], name))
        continue;
      if (!(k == 1 && !strcmp(str(n->op_type), "CastLike") && !*str(n->domain)))
        return 0;
    }
  }
  return 1;
}

/* Data of another shape than an input's declared one is an error (the
 * caller's), except for an input read only for its dtype, or not at all: it
 * takes the data's shape, as ONNX's CastLike tests give a one-element `like`
 * for a declared [3, 4]. Only `autodist infer` gives data. */
static ad_status shape_from_data(loader *ld, const char *name, int *rank, int64_t *dims,
                                 bool *batched) {
  ad_onnx_binding *b = NULL;
  for (int i = 0; i < ld->n_bind && !b; i++)
    if (!strcmp(ld->bind[i].name, name))
      b = &ld->bind[i];
  if (!b)
    return AD_OK;
  const ad_npy *arr = b->array;
  if (!read_for_dtype_only(ld, name))
    return AD_OK;
  int same = arr->rank == *rank;
  for (int a = 0; same && a < *rank; a++)
    same = arr->dims[a] == dims[a] || (a == 0 && *batched);
  if (same)
    return AD_OK;
  *batched = false;
  *rank = arr->rank;
  memcpy(dims, arr->dims, sizeof(int64_t) * (size_t)arr->rank);
  return AD_OK;
}

/* The binding for a graph input whose value some node needs as a constant:
 * read through a slot that must be constant (attr_inputs), directly or
 * through nodes that compute that slot (not through Shape or Size, which
 * read only static dims), or NULL. Only `autodist infer` binds inputs. */
static ad_onnx_binding *find_binding(const loader *ld, const char *name) {
  ad_onnx_binding *b = NULL;
  for (int i = 0; i < ld->n_bind && !b; i++)
    if (!strcmp(ld->bind[i].name, name))
      b = &ld->bind[i];
  if (!b)
    return NULL;
  const Onnx__GraphProto *gp = ld->gp;
  /* Values needed as constants, found backwards from the constant slots:
   * `need` holds names (graph-arena strings are not needed: proto strings
   * live until the load ends). */
  loader prod = {0}; /* output name -> node index + 1 */
  for (size_t i = 0; i < gp->n_node; i++)
    for (size_t k = 0; k < gp->node[i]->n_output; k++)
      if (*gp->node[i]->output[k])
        map_put(&prod, gp->node[i]->output[k], (ad_value *)(uintptr_t)(i + 1));
  AD_VEC(const char *) need = {0};
  for (size_t i = 0; i < gp->n_node; i++) {
    const Onnx__NodeProto *n = gp->node[i];
    /* Gather's indices are in attr_inputs only so that index initializers
     * are not trained; fed indices are data. */
    for (size_t j = 0; j < n->n_input; j++)
      if (*n->input[j] && use_kind(str(n->op_type), j) == USE_CONST &&
          strcmp(str(n->op_type), "Gather"))
        AD_VEC_PUSH(need, n->input[j]);
  }
  unsigned char *seen = ad_xcalloc(gp->n_node + 1, 1);
  int found = 0;
  for (int q = 0; q < need.len && !found; q++) {
    const char *v = need.data[q];
    if (!strcmp(v, name)) {
      found = 1;
      break;
    }
    uintptr_t k = (uintptr_t)map_get(&prod, v);
    if (!k || seen[k - 1])
      continue;
    seen[k - 1] = 1;
    const Onnx__NodeProto *n = gp->node[k - 1];
    const char *op = str(n->op_type);
    if (!strcmp(op, "Shape") || !strcmp(op, "Size"))
      continue;
    for (size_t j = 0; j < n->n_input; j++)
      if (*n->input[j])
        AD_VEC_PUSH(need, n->input[j]);
  }
  free(seen);
  free(need.data);
  free(prod.tab);
  return found ? b : NULL;
}

/* A bound input becomes a CONST holding the given data, which must match the
 * declared dtype and the declared dims (a dynamic one takes the data's). */
static ad_status bind_input(loader *ld, ad_onnx_binding *b, const char *name, ad_dtype dt, int rank,
                            const int64_t *dims, bool batched) {
  ad_npy *arr = b->array;
  AD_TRY(ad_npy_fit(b->file, arr, ad_dtype_name(dt)));
  int ok = !strcmp(arr->dtype, ad_dtype_name(dt)) && arr->rank == rank;
  for (int a = 0; ok && a < rank; a++)
    ok = arr->dims[a] == dims[a] || (a == 0 && batched);
  if (!ok)
    return ad_fail(AD_ERR_INPUT, "%s: error: data for input '%s' is %s %s, the model declares %s",
                   ld->path, name, arr->dtype, ad_shape_str(arr->rank, arr->dims),
                   ad_dtype_name(dt));
  ad_value *v = ad_value_new(ld->g, name, dt, rank, arr->dims, AD_VAL_CONST);
  size_t bytes = ad_value_bytes(v);
  v->data = ad_arena_alloc(ld->g->arena, bytes ? bytes : 1);
  if (bytes)
    memcpy(v->data, arr->data, bytes);
  b->bound = 1;
  map_put(ld, v->name, v);
  return AD_OK;
}

static ad_status load_inputs(loader *ld) {
  const Onnx__GraphProto *gp = ld->gp;
  for (size_t i = 0; i < gp->n_input; i++) {
    const Onnx__ValueInfoProto *vi = gp->input[i];
    const char *name = vi->name ? vi->name : "";
    if (!*name)
      return ad_fail(AD_ERR_INPUT, "%s: error: graph input #%zu has no name", ld->path, i);
    ad_value *prev = map_get(ld, name);
    if (prev && prev->kind != AD_VAL_INPUT)
      continue; /* an initializer listed as input too (IR < 4 exporters): a parameter */
    if (prev)
      return ad_fail(AD_ERR_INPUT, "%s: error: graph input '%s' is listed twice", ld->path, name);
    const Onnx__TypeProto *tp = vi->type;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
      return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' is not a tensor", ld->path, name);
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    ad_dtype dt;
    int32_t et = tt->has_elem_type ? tt->elem_type : 0;
    if (!ad_op_dtype_of_onnx(et, &dt))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: input '%s' has dtype %s (autodist supports numeric and bool "
                     "tensors)",
                     ld->path, name, onnx_type_name(et));
    if (!tt->shape)
      return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' has no shape (export it with one)",
                     ld->path, name);
    if (tt->shape->n_dim > AD_MAX_RANK)
      return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' has rank %zu, above the maximum %d",
                     ld->path, name, tt->shape->n_dim, AD_MAX_RANK);
    int rank = (int)tt->shape->n_dim;
    int64_t dims[AD_MAX_RANK];
    bool batched = false;
    for (int a = 0; a < rank; a++) {
      const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[a];
      int known = d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                  d->dim_value >= 0;
      if (known) {
        dims[a] = d->dim_value;
      } else if (a == 0) {
        dims[a] = ld->batch;
        batched = true;
      } else {
        const char *sym = d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                              ? str(d->dim_param)
                              : "?";
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: input '%s' has a dynamic dimension '%s' at axis %d (only axis "
                       "0, the batch, may be dynamic)",
                       ld->path, name, sym, a);
      }
    }
    int64_t numel = 1;
    for (int a = 0; a < rank; a++) {
      if (dims[a] && numel > (INT64_MAX >> 4) / dims[a])
        return ad_fail(AD_ERR_INPUT, "%s: error: input '%s' is too large (%s)", ld->path, name,
                       ad_shape_str(rank, dims));
      numel *= dims[a];
    }
    ad_onnx_binding *b = find_binding(ld, name);
    if (b) {
      AD_TRY(bind_input(ld, b, name, dt, rank, dims, batched));
      continue;
    }
    AD_TRY(shape_from_data(ld, name, &rank, dims, &batched));
    ad_value *v = ad_value_new(ld->g, name, dt, rank, dims, AD_VAL_INPUT);
    v->batched = batched;
    AD_VEC_PUSH(ld->g->inputs, v);
    map_put(ld, v->name, v);
  }
  return AD_OK;
}

/* ---- nodes ---- */

static const char *attr_type_name(Onnx__AttributeProto__AttributeType t) {
  switch (t) {
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH:
    return "GRAPH";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS:
    return "GRAPHS";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR:
    return "SPARSE_TENSOR";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSORS:
    return "SPARSE_TENSORS";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS:
    return "STRINGS";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS:
    return "TENSORS";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTO:
    return "TYPE_PROTO";
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTOS:
    return "TYPE_PROTOS";
  default:
    return "UNDEFINED";
  }
}

/* The attribute's type; models from IR version 1 may leave it unset. */
static Onnx__AttributeProto__AttributeType attr_type(const Onnx__AttributeProto *a) {
  if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED)
    return a->type;
  if (a->n_floats)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
  if (a->n_ints)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
  if (a->n_strings)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS;
  if (a->n_tensors)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS;
  if (a->n_graphs)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS;
  if (a->has_f)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
  if (a->has_i)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
  if (a->has_s)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
  if (a->t)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
  if (a->g)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
  if (a->sparse_tensor)
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR;
  return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
}

/* Converts one attribute; arrays are allocated in the graph arena. */
static ad_status convert_attr(loader *ld, const char *where, const char *node_name,
                              const Onnx__AttributeProto *a, ad_attr *out) {
  ad_arena *arena = ld->g->arena;
  const char *name = a->name ? a->name : "";
  memset(out, 0, sizeof *out);
  out->name = name;
  Onnx__AttributeProto__AttributeType t = attr_type(a);
  switch (t) {
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT:
    out->type = AD_ATTR_FLOAT;
    out->f = a->f;
    return AD_OK;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT:
    out->type = AD_ATTR_INT;
    out->i = a->i;
    return AD_OK;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING: {
    out->type = AD_ATTR_STRING;
    char *s = ad_arena_alloc(arena, a->s.len + 1);
    if (a->s.len)
      memcpy(s, a->s.data, a->s.len);
    out->s = s;
    return AD_OK;
  }
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS:
    out->type = AD_ATTR_FLOATS;
    out->n = (int)a->n_floats;
    out->floats = ad_arena_alloc(arena, sizeof(float) * (a->n_floats + 1));
    if (a->n_floats)
      memcpy(out->floats, a->floats, sizeof(float) * a->n_floats);
    return AD_OK;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
    out->type = AD_ATTR_INTS;
    out->n = (int)a->n_ints;
    out->ints = ad_arena_alloc(arena, sizeof(int64_t) * (a->n_ints + 1));
    if (a->n_ints)
      memcpy(out->ints, a->ints, sizeof(int64_t) * a->n_ints);
    return AD_OK;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR: {
    if (!a->t)
      return ad_fail(AD_ERR_INPUT, "%s: error: attribute '%s' has no tensor", where, name);
    char what[1024];
    snprintf(what, sizeof what, "node '%s' attribute '%s'", node_name, name);
    char *vname = ad_arena_printf(arena, "%s.%s", node_name, name);
    out->type = AD_ATTR_TENSOR;
    return tensor_to_value(ld, a->t, what, vname, AD_VAL_CONST, &out->t);
  }
  default:
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute '%s' of type %s is not supported", where,
                   name, attr_type_name(t));
  }
}

/* A Constant node: its value is known now, so it becomes a CONST value rather
 * than a node (constant folding starts here). */
static ad_status load_constant(loader *ld, const Onnx__NodeProto *np, const char *where,
                               const char *node_name, ad_value **out) {
  const char *oname = np->n_output ? np->output[0] : "";
  if (np->n_attribute != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: a Constant needs exactly one value attribute, has %zu",
                   where, np->n_attribute);
  const Onnx__AttributeProto *a = np->attribute[0];
  const char *an = a->name ? a->name : "";
  ad_graph *g = ld->g;
  Onnx__AttributeProto__AttributeType t = attr_type(a);
  if (!strcmp(an, "value") && t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR && a->t) {
    char what[1024];
    snprintf(what, sizeof what, "node '%s' (Constant)", node_name);
    return tensor_to_value(ld, a->t, what, oname, AD_VAL_CONST, out);
  }
  ad_value *v = NULL;
  if (!strcmp(an, "value_float") && t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT) {
    v = ad_value_new(g, oname, AD_F32, 0, NULL, AD_VAL_CONST);
    v->data = ad_arena_alloc(g->arena, sizeof(float));
    *(float *)v->data = a->f;
  } else if (!strcmp(an, "value_floats") && t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS) {
    int64_t n = (int64_t)a->n_floats;
    v = ad_value_new(g, oname, AD_F32, 1, &n, AD_VAL_CONST);
    v->data = ad_arena_alloc(g->arena, sizeof(float) * (size_t)(n + 1));
    if (n)
      memcpy(v->data, a->floats, sizeof(float) * (size_t)n);
  } else if (!strcmp(an, "value_int") && t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT) {
    v = ad_value_new(g, oname, AD_I64, 0, NULL, AD_VAL_CONST);
    v->data = ad_arena_alloc(g->arena, sizeof(int64_t));
    *(int64_t *)v->data = a->i;
  } else if (!strcmp(an, "value_ints") && t == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS) {
    int64_t n = (int64_t)a->n_ints;
    v = ad_value_new(g, oname, AD_I64, 1, &n, AD_VAL_CONST);
    v->data = ad_arena_alloc(g->arena, sizeof(int64_t) * (size_t)(n + 1));
    if (n)
      memcpy(v->data, a->ints, sizeof(int64_t) * (size_t)n);
  } else {
    return ad_fail(AD_ERR_INPUT, "%s: error: Constant attribute '%s' is not supported", where, an);
  }
  *out = v;
  return AD_OK;
}

/* The opset of `domain` imported by the model, or -1. */
static int64_t opset_of(const Onnx__ModelProto *m, const char *domain) {
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const char *d = m->opset_import[i]->domain ? m->opset_import[i]->domain : "";
    if (!strcmp(d, domain))
      return m->opset_import[i]->has_version ? m->opset_import[i]->version : -1;
  }
  return -1;
}

static int is_default_domain(const char *d) {
  return !d || !*d || !strcmp(d, "ai.onnx");
}

static ad_status load_node(loader *ld, const Onnx__ModelProto *m, size_t index) {
  const Onnx__NodeProto *np = ld->gp->node[index];
  ad_graph *g = ld->g;
  const char *op_type = np->op_type ? np->op_type : "";
  const char *node_name =
      np->name && *np->name ? np->name : ad_arena_printf(g->arena, "%s_%zu", op_type, index);
  const char *where = ad_arena_printf(g->arena, "%s: node '%s' (%s)", ld->path, node_name, op_type);

  if (!is_default_domain(np->domain)) {
    int64_t v = opset_of(m, np->domain);
    if (v < 0)
      return ad_fail(AD_ERR_INPUT, "%s: error: domain '%s' is not imported by the model", where,
                     np->domain);
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: opset %lld of domain '%s' is not supported (autodist "
                   "supports the default domain 'ai.onnx' only)",
                   ld->path, (long long)v, np->domain);
  }

  for (size_t k = 0; k < np->n_output; k++)
    if (*np->output[k] && map_get(ld, np->output[k]))
      return ad_fail(AD_ERR_INPUT, "%s: error: output '%s' is already defined", where,
                     np->output[k]);

  if (!strcmp(op_type, "Constant")) {
    if (np->n_output != 1 || !*np->output[0])
      return ad_fail(AD_ERR_INPUT, "%s: error: a Constant has exactly one output", where);
    ad_value *v;
    AD_TRY(load_constant(ld, np, where, node_name, &v));
    map_put(ld, v->name, v);
    return AD_OK;
  }

  if (!ad_op_known(op_type, ""))
    return ad_fail(AD_ERR_INPUT, "%s: error: op not supported", where);
  if (!ad_op_find(op_type, "", g->opset)) {
    char ranges[128];
    ad_op_opsets(op_type, "", ranges, sizeof ranges);
    return ad_fail(AD_ERR_INPUT, "%s: error: op %s is supported at opsets %s, the model imports %d",
                   where, op_type, ranges, g->opset);
  }

  /* Omitted optional inputs are empty names; trailing ones are dropped. */
  int n_in = (int)np->n_input;
  while (n_in > 0 && !*np->input[n_in - 1])
    n_in--;
  ad_value **in = ad_arena_alloc(g->arena, sizeof(ad_value *) * (size_t)(n_in + 1));
  for (int k = 0; k < n_in; k++) {
    if (!*np->input[k])
      continue;
    in[k] = map_get(ld, np->input[k]);
    if (!in[k])
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: input '%s' is not a graph input, an initializer or the output "
                     "of an earlier node",
                     where, np->input[k]);
  }

  /* A computed input the op needs as a constant (its shape, axes...) is
   * folded now, with its cone, so that shape inference sees its values. */
  ad_value *need[32];
  int n_need = 0;
  for (int k = 0; k < n_in && k < 32; k++)
    if (in[k] && in[k]->kind == AD_VAL_ACT && use_kind(op_type, (size_t)k) == USE_CONST)
      need[n_need++] = in[k];
  if (n_need)
    AD_TRY(ad_fold_values(g, n_need, need));

  ad_attr *attrs = ad_arena_alloc(g->arena, sizeof(ad_attr) * (np->n_attribute + 1));
  for (size_t k = 0; k < np->n_attribute; k++)
    AD_TRY(convert_attr(ld, where, node_name, np->attribute[k], &attrs[k]));

  int n_out = (int)np->n_output;
  while (n_out > 0 && !*np->output[n_out - 1])
    n_out--;
  if (n_out == 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: node has no outputs", where);
  ad_node *node;
  AD_TRY(ad_node_add(g, node_name, op_type, n_in, in, n_out, attrs, (int)np->n_attribute, &node));
  AD_ASSERT(node->n_out == n_out);
  /* Shape and Size read only static dims: constant at once (and unbatched). */
  if (!strcmp(op_type, "Shape") || !strcmp(op_type, "Size"))
    AD_TRY(ad_fold_value(g, node->out[0]));
  for (int k = 0; k < n_out; k++) {
    if (!*np->output[k])
      continue; /* an omitted optional output keeps its generated name */
    node->out[k]->name = ad_arena_strdup(g->arena, np->output[k]);
    map_put(ld, node->out[k]->name, node->out[k]);
  }
  return AD_OK;
}

/*
 * Whether node i must wait: 1 when an input is not defined yet because its
 * producer, an earlier node, waits (`prod` maps output names to node index +
 * 1; an input defined by no earlier node is load_node's error), 2 when a
 * constant slot (Reshape's shape ...) reads a computed value that folding can
 * make constant; such values are appended to `need`.
 */
static int node_waits(loader *ld, const loader *prod, size_t i, ad_value ***need, int *n_need,
                      int *cap) {
  const Onnx__NodeProto *np = ld->gp->node[i];
  const char *op_type = str(np->op_type);
  int w = 0;
  for (size_t k = 0; k < np->n_input; k++) {
    if (!*np->input[k])
      continue;
    ad_value *v = map_get(ld, np->input[k]);
    if (!v) {
      uintptr_t p = (uintptr_t)map_get(prod, np->input[k]);
      if (p && p - 1 < i)
        return 1;
      return 0;
    }
    if (v->kind == AD_VAL_ACT && use_kind(op_type, k) == USE_CONST && ad_fold_is_const(ld->g, v)) {
      if (*n_need == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        *need = ad_xrealloc(*need, sizeof(ad_value *) * (size_t)*cap);
      }
      (*need)[(*n_need)++] = v;
      w = 2;
    }
  }
  return w;
}

/*
 * Nodes load in model order, except that a node whose constant slot reads a
 * computed value waits: loading goes on with the nodes that do not depend on
 * it, and then every value waited for is folded in one JIT run
 * (compiler/fold.h). A model costs one run per level of shape computations
 * (a transformer layer's Q, K and V reshapes share one), not one per node.
 * The IR stays in topological order: a node loads once its inputs exist.
 */
static ad_status load_nodes(loader *ld, const Onnx__ModelProto *m) {
  size_t np = ld->gp->n_node;
  size_t *pending = ad_xmalloc(sizeof(size_t) * (np + 1));
  loader prod = {0};
  for (size_t i = 0; i < np; i++) {
    pending[i] = i;
    const Onnx__NodeProto *n = ld->gp->node[i];
    for (size_t k = 0; k < n->n_output; k++)
      if (*n->output[k] && !map_get(&prod, n->output[k]))
        map_put(&prod, n->output[k], (ad_value *)(uintptr_t)(i + 1));
  }
  ad_status st = AD_OK;
  while (np && st == AD_OK) {
    ad_value **need = NULL;
    int n_need = 0, cap = 0, progressed = 0;
    size_t keep = 0;
    for (size_t j = 0; j < np && st == AD_OK; j++) {
      if (node_waits(ld, &prod, pending[j], &need, &n_need, &cap)) {
        pending[keep++] = pending[j];
        continue;
      }
      st = load_node(ld, m, pending[j]);
      progressed = 1;
    }
    np = keep;
    if (st == AD_OK && n_need)
      st = ad_fold_values(ld->g, n_need, need);
    else if (st == AD_OK && np && !progressed)
      st = load_node(ld, m, pending[0]); /* an input nothing defines: its error */
    free(need);
  }
  free(prod.tab);
  free(pending);
  return st;
}

/* ---- model ---- */

static ad_status check_opsets(loader *ld, const Onnx__ModelProto *m) {
  int64_t opset = -1;
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const Onnx__OperatorSetIdProto *o = m->opset_import[i];
    if (!is_default_domain(o->domain))
      continue; /* other domains matter only where a node uses them */
    int64_t v = o->has_version ? o->version : -1;
    if (v < OPSET_MIN || v > OPSET_MAX)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: opset %lld of domain '%s' is not supported (autodist supports "
                     "%d-%d)",
                     ld->path, (long long)v, o->domain && *o->domain ? o->domain : "ai.onnx",
                     OPSET_MIN, OPSET_MAX);
    opset = v;
  }
  if (opset < 0)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: the model imports no opset of the default domain 'ai.onnx'",
                   ld->path);
  ld->g->opset = (int)opset;
  return AD_OK;
}

static ad_status load_model(loader *ld, const Onnx__ModelProto *m) {
  if (!m->graph)
    return ad_fail(AD_ERR_INPUT, "%s: error: not a valid ONNX model (no graph)", ld->path);
  ld->gp = m->graph;
  AD_TRY(check_opsets(ld, m));
  if (m->graph->n_sparse_initializer)
    return ad_fail(AD_ERR_INPUT, "%s: error: sparse initializers are not supported", ld->path);
  AD_TRY(load_initializers(ld));
  AD_TRY(load_inputs(ld));
  AD_TRY(load_nodes(ld, m));
  for (size_t i = 0; i < ld->gp->n_output; i++) {
    const char *name = ld->gp->output[i]->name ? ld->gp->output[i]->name : "";
    ad_value *v = map_get(ld, name);
    if (!v)
      return ad_fail(AD_ERR_INPUT, "%s: error: graph output '%s' is not produced by any node",
                     ld->path, name);
    AD_VEC_PUSH(ld->g->outputs, v);
  }
  if (!ld->g->outputs.len)
    return ad_fail(AD_ERR_INPUT, "%s: error: the graph has no outputs", ld->path);
  return ad_fold_graph(ld->g);
}

ad_status ad_onnx_load_buffer(const char *path, const void *data, size_t len, int64_t batch,
                              ad_graph **out) {
  return ad_onnx_load_bound(path, data, len, batch, 0, NULL, out);
}

ad_status ad_onnx_load_bound(const char *path, const void *data, size_t len, int64_t batch,
                             int n_bind, ad_onnx_binding *bind, ad_graph **out) {
  AD_ASSERT(batch > 0);
  *out = NULL;
  Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, data);
  if (!m)
    return ad_fail(AD_ERR_INPUT, "%s: error: not a valid ONNX model (protobuf parse failed)", path);
  loader ld = {.path = path, .batch = batch, .n_bind = n_bind, .bind = bind};
  ld.g = ad_graph_create(path);
  ad_status st = load_model(&ld, m);
  free(ld.tab);
  onnx__model_proto__free_unpacked(m, NULL);
  if (st != AD_OK) {
    ad_graph_destroy(ld.g);
    return st;
  }
  *out = ld.g;
  return AD_OK;
}

ad_status ad_onnx_load(const char *path, int64_t batch, ad_graph **out) {
  char *data;
  size_t len;
  *out = NULL;
  AD_TRY(ad_file_read(path, &data, &len));
  ad_status st = ad_onnx_load_buffer(path, data, len, batch, out);
  free(data);
  return st;
}

/* ---- stripping initializers for the plan ---- */

static int in_names(const char *s, int n, char *const *names) {
  for (int i = 0; i < n; i++)
    if (!strcmp(s, names[i]))
      return 1;
  return 0;
}

/*
 * Re-serializes the model without the named initializers. The graph inputs of
 * the same names are kept: `run --save` appends the trained initializers, and
 * the saved model must then have the input model's structure (IR < 4 requires
 * every initializer to be a graph input as well).
 */
ad_status ad_onnx_strip_initializers(const char *in_path, const char *out_path, int n_names,
                                     char *const *names) {
  char *data;
  size_t len;
  AD_TRY(ad_file_read(in_path, &data, &len));
  Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, (const uint8_t *)data);
  free(data);
  if (!m)
    return ad_fail(AD_ERR_INPUT, "%s: error: not a valid ONNX model (protobuf parse failed)",
                   in_path);
  if (!m->graph) {
    onnx__model_proto__free_unpacked(m, NULL);
    return ad_fail(AD_ERR_INPUT, "%s: error: not a valid ONNX model (no graph)", in_path);
  }
  Onnx__GraphProto *gp = m->graph;
  size_t n_all = gp->n_initializer;
  Onnx__TensorProto **all = gp->initializer;
  Onnx__TensorProto **kept = ad_xmalloc(sizeof *kept * (n_all + 1));
  size_t n_kept = 0;
  for (size_t i = 0; i < n_all; i++)
    if (!in_names(all[i]->name ? all[i]->name : "", n_names, names))
      kept[n_kept++] = all[i];
  /* Pack the filtered view, then restore the arrays so that free_unpacked
   * frees every tensor it allocated. */
  gp->initializer = kept;
  gp->n_initializer = n_kept;
  size_t size = onnx__model_proto__get_packed_size(m);
  uint8_t *buf = ad_xmalloc(size);
  size_t packed = onnx__model_proto__pack(m, buf);
  AD_ASSERT(packed == size);
  gp->initializer = all;
  gp->n_initializer = n_all;
  free(kept);
  onnx__model_proto__free_unpacked(m, NULL);
  ad_status st = ad_file_write(out_path, buf, size);
  free(buf);
  return st;
}
