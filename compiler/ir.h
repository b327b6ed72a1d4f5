/*
 * compiler/ir.h: the graph IR every compiler stage reads and writes.
 *
 * A graph is a list of nodes in topological order over values. A value has a
 * static dtype and shape (the plan's batch size is fixed at compile time, like
 * ggml's graphs). Values are inputs (data fed per step), parameters (trainable
 * or frozen initializers), constants (folded at compile time, data owned by the
 * graph arena) or activations (produced by a node). Everything lives in the
 * graph's arena and is freed with ad_graph_destroy.
 *
 * Nodes carry their ONNX attributes unchanged; an op's table entry (op.h)
 * interprets them. Internal ops that autodiff inserts (ReluGrad, ReduceSumTo,
 * ...) are nodes of the same kind with domain "ad".
 */
#ifndef AD_IR_H
#define AD_IR_H

#include "../common/ad.h"

#include <stdbool.h>

#define AD_MAX_RANK 8

typedef enum ad_dtype {
  AD_F32,
  AD_I64,
  AD_I32,
  AD_U8,
  AD_BOOL,
  AD_F16, /* IEEE binary16; also the fp16-compressed all-reduce's buffers */
  AD_F64,
  AD_I8,
  AD_I16,
  AD_U16,
  AD_U32,
  AD_U64,
  AD_BF16, /* bfloat16: the upper half of a float32's bits */
  AD_DTYPE_COUNT
} ad_dtype;

const char *ad_dtype_name(ad_dtype t); /* "float32", "int64", ... */
size_t ad_dtype_size(ad_dtype t);
bool ad_dtype_is_float(ad_dtype t);    /* float32, float64, float16, bfloat16 */
bool ad_dtype_is_unsigned(ad_dtype t); /* uint8..uint64 and bool */

typedef enum ad_value_kind {
  AD_VAL_INPUT, /* data fed each step (a batch slice) */
  AD_VAL_PARAM, /* initializer: trained unless frozen */
  AD_VAL_CONST, /* compile-time constant */
  AD_VAL_ACT,   /* produced by a node */
  AD_VAL_STATE, /* persistent per-device state, zero at start (optimizer moments) */
} ad_value_kind;

typedef struct ad_node ad_node;

typedef struct ad_value {
  int id;
  const char *name;
  ad_dtype dtype;
  int rank;
  int64_t dims[AD_MAX_RANK];
  ad_value_kind kind;
  bool frozen;       /* PARAM only: not trained */
  bool batched;      /* dims[0] is the batch dimension (inputs and what flows from them) */
  bool updated;      /* PARAM: not trained, but updated in place by its op during training
                        (BatchNormalization running statistics); saved like trained ones */
  void *data;        /* PARAM/CONST: initial contents, ad_value_bytes() long */
  ad_node *producer; /* ACT only */
  int n_uses;        /* maintained by ad_graph_recount() */
  void *aux;         /* scratch slot for the pass that currently runs */
} ad_value;

int64_t ad_value_numel(const ad_value *v);
size_t ad_value_bytes(const ad_value *v);

typedef enum ad_attr_type {
  AD_ATTR_INT,
  AD_ATTR_FLOAT,
  AD_ATTR_STRING,
  AD_ATTR_INTS,
  AD_ATTR_FLOATS,
  AD_ATTR_TENSOR,
  AD_ATTR_TYPE_COUNT
} ad_attr_type;

typedef struct ad_attr {
  const char *name;
  ad_attr_type type;
  int64_t i;
  float f;
  const char *s;
  int n; /* INTS / FLOATS length */
  int64_t *ints;
  float *floats;
  ad_value *t; /* TENSOR: a CONST value */
} ad_attr;

struct ad_node {
  int id;
  const char *name;    /* ONNX node name, or a generated one; used in messages */
  const char *op_type; /* "Gemm", "ReluGrad", ... */
  const char *domain;  /* "" for ONNX, "ad" for internal ops */
  const struct ad_op *op;
  int n_in, n_out, n_attr;
  ad_value **in; /* an omitted optional input is NULL */
  ad_value **out;
  ad_attr *attrs;
};

typedef struct ad_graph {
  ad_arena *arena;
  const char *source; /* model file name, for messages */
  int opset;
  AD_VEC(ad_value *) values;
  AD_VEC(ad_node *) nodes;    /* topological order */
  AD_VEC(ad_value *) inputs;  /* data inputs, in model order */
  AD_VEC(ad_value *) outputs; /* graph outputs, in model order */
  AD_VEC(ad_value *) params;  /* initializers that are not folded to constants */
} ad_graph;

ad_graph *ad_graph_create(const char *source);
void ad_graph_destroy(ad_graph *g);

/* New value owned by the graph; dims may be NULL when rank is 0 or set later. */
ad_value *ad_value_new(ad_graph *g, const char *name, ad_dtype dt, int rank, const int64_t *dims,
                       ad_value_kind kind);
/* A float32 constant; data (numel floats) is copied, NULL gives zeros. */
ad_value *ad_const_f32(ad_graph *g, int rank, const int64_t *dims, const float *data);
/* A scalar float32 constant. */
ad_value *ad_const_scalar(ad_graph *g, float x);
ad_value *ad_graph_find(const ad_graph *g, const char *name);

/*
 * Appends a node of op `op_type` (looked up in the op registry) with the given
 * inputs and attributes, creates its outputs and runs the op's verify and shape
 * inference. Used by the loader and by gradient builders. On error the message
 * names the node. `attrs` are copied.
 */
ad_status ad_node_add(ad_graph *g, const char *name, const char *op_type, int n_in,
                      ad_value *const *in, int n_out, const ad_attr *attrs, int n_attr,
                      ad_node **out_node);

/* Attribute access, with defaults. */
const ad_attr *ad_attr_find(const ad_node *n, const char *name);
int64_t ad_attr_int(const ad_node *n, const char *name, int64_t dflt);
float ad_attr_float(const ad_node *n, const char *name, float dflt);
const char *ad_attr_str(const ad_node *n, const char *name, const char *dflt);
/* INTS attribute: returns its length (or -1 when absent) and the array. */
int ad_attr_ints(const ad_node *n, const char *name, const int64_t **ints);

/* Attribute constructors for ad_node_add callers. */
ad_attr ad_attr_i(const char *name, int64_t v);
ad_attr ad_attr_fl(const char *name, float v);
ad_attr ad_attr_is(const char *name, int n, const int64_t *v);

/* Recomputes n_uses of every value (graph outputs count as a use). */
void ad_graph_recount(ad_graph *g);

/* Message prefix for a node: "model.onnx: node 'fc1' (Gemm)". */
const char *ad_node_where(const ad_graph *g, const ad_node *n);

/* Numpy-style broadcast of two shapes; AD_ERR_INPUT when incompatible. */
ad_status ad_broadcast_shape(int ra, const int64_t *a, int rb, const int64_t *b, int *rout,
                             int64_t *out);

/* Shape as "[64, 784]" in a static buffer (for messages). */
const char *ad_shape_str(int rank, const int64_t *dims);

#endif
