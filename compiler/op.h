/*
 * compiler/op.h: what an op is to the compiler. One table entry per op, in one
 * file per op family under compiler/ops/ (STYLE rule 3): verify, shape
 * inference, gradient, lowering and cost live together. compiler/ops/registry.c
 * lists the family tables; adding an op to a family touches that file only.
 *
 * Lowering kinds (how codegen.c turns a node into LLVM IR):
 *  - EW: an elementwise function of its inputs, broadcast numpy-style to the
 *    output shape; `emit` builds the scalar. Chains of EW nodes fuse into one loop.
 *  - REDUCE_SUM: out = in[0] summed over the axes where out (right-aligned) has
 *    extent 1 or is missing. The core emits the loop.
 *  - ALIAS: out[0] is in[0]'s bytes viewed with another shape (Reshape, Flatten,
 *    Identity, Dropout at inference); no code.
 *  - CALL: `lower` emits its own code, usually a call to a kernel of runtime/.
 *  - NONE: must have been folded at compile time (Constant); reaching codegen is a bug.
 */
#ifndef AD_OP_H
#define AD_OP_H

#include "ir.h"

#include <llvm-c/Core.h>

/* The ONNX opsets of the default domain that a model may import; each op's
 * entry states the opsets it implements (min_opset..max_opset). */
#define AD_OPSET_MIN 1
#define AD_OPSET_MAX 17

typedef struct ad_cg ad_cg;     /* codegen state, see codegen.h */
typedef struct ad_grad ad_grad; /* autodiff state, see below */

typedef enum ad_lower_kind {
  AD_LOWER_EW,
  AD_LOWER_REDUCE_SUM,
  AD_LOWER_ALIAS,
  AD_LOWER_CALL,
  AD_LOWER_NONE,
  AD_LOWER_KIND_COUNT
} ad_lower_kind;

typedef struct ad_op {
  const char *name;         /* op_type */
  const char *domain;       /* "" ONNX, "ad" internal */
  int min_opset, max_opset; /* ONNX opsets this entry implements (0,0 for internal) */
  int min_in, max_in, n_out;
  /* Checks attributes and input dtypes/ranks; sets out[i] dtype/rank/dims. Errors
   * name the node via ad_node_where(). Required. */
  ad_status (*infer)(ad_graph *g, ad_node *n);
  /* Adds gradient nodes: reads ad_grad_out(), calls ad_grad_acc() for inputs
   * that need it. NULL: not differentiable (an error if a gradient must flow). */
  ad_status (*grad)(ad_grad *gc, const ad_node *n);
  ad_lower_kind lower_kind;
  /* EW: scalar of the output from the input scalars (already converted to the
   * node's input dtypes). */
  LLVMValueRef (*emit)(ad_cg *cg, const ad_node *n, LLVMValueRef *in);
  /* CALL: emits code for the node. */
  ad_status (*lower)(ad_cg *cg, const ad_node *n);
  /* Optional: multiply-adds counted as 2 FLOPs; bytes read + written. */
  void (*cost)(const ad_node *n, double *flops, double *bytes);
} ad_op;

/* Registry: finds the entry for (op_type, domain) valid at `opset`. */
const ad_op *ad_op_find(const char *op_type, const char *domain, int opset);
/* Whether any entry exists for op_type (to tell "unsupported opset" from "unsupported op"). */
int ad_op_known(const char *op_type, const char *domain);
/* Writes the opsets at which op_type has entries, as "A-B" ranges (those that
 * touch merged) separated by ", ", into buf (for "op X is supported at opsets ..."). */
void ad_op_opsets(const char *op_type, const char *domain, char *buf, size_t cap);
/* Iterates all entries (for `inspect` and docs): returns NULL past the end. */
const ad_op *ad_op_at(int i);

/* The dtypes (a mask of 1 << ad_dtype) op_type computes on, as listed by
 * `inspect --ops` (ops/types.c); *which (may be NULL): the input they are of,
 * -1 for output 0. */
unsigned ad_op_types(const char *op_type, int *which);
/* "float int uint bool"-style text of a mask. */
void ad_op_types_str(unsigned types, char *buf, size_t cap);

/* Family tables, each terminated by an entry with name == NULL. */
extern const ad_op ad_ops_elementwise[];
extern const ad_op ad_ops_shape[];
extern const ad_op ad_ops_linear[];
extern const ad_op ad_ops_conv[];
extern const ad_op ad_ops_softmax[];
extern const ad_op ad_ops_train[];
extern const ad_op ad_ops_index[];
extern const ad_op ad_ops_reduce[];
extern const ad_op ad_ops_ps[];
extern const ad_op ad_ops_norm[];
extern const ad_op ad_ops_random[];
extern const ad_op ad_ops_loss[];

/* Switches every BatchNormalization of g to training with batch statistics
 * and in-place running-statistics updates (PyTorch's model.train()); called
 * when a training program is built. Errors name the node (ops/norm.c). */
ad_status ad_norm_prepare_training(ad_graph *g, int replicas);
/* Gives every Dropout of g that draws masks (training_mode, ratio > 0) a mask
 * output for its gradient to read; errors name the node (ops/random.c). */
ad_status ad_dropout_prepare_training(ad_graph *g);

/* ---- autodiff API for grad functions (implemented in autodiff.c) ---- */

/* Gradient flowing into output i of n, or NULL when none does. */
ad_value *ad_grad_out(ad_grad *gc, const ad_node *n, int i);
/* Whether input value v needs a gradient. */
int ad_grad_wants(ad_grad *gc, const ad_value *v);
/* Adds g to v's gradient (summing with Add when several contributions arrive).
 * g must have v's shape; use ad_grad_reduce_to() after broadcasting ops. */
void ad_grad_acc(ad_grad *gc, const ad_value *v, ad_value *g);
/* Sums g over broadcast axes so that it has `like`'s shape. Returns g when equal. */
ad_value *ad_grad_reduce_to(ad_grad *gc, ad_value *g, const ad_value *like);
/* Appends a node to the training graph and returns its first output. Building
 * a gradient node never fails on valid graphs; a failure is a bug (asserts). */
ad_value *ad_grad_emit(ad_grad *gc, const char *op_type, int n_in, ad_value *const *in,
                       const ad_attr *attrs, int n_attr);
ad_graph *ad_grad_graph(ad_grad *gc);

/* Common infer helpers shared by op families (implemented in ops/common.c). */
ad_status ad_infer_broadcast(ad_graph *g,
                             ad_node *n); /* out = broadcast of all inputs, dtype of in[0] */
ad_status ad_infer_same(ad_graph *g, ad_node *n);            /* out = shape/dtype of in[0] */
ad_status ad_infer_need_f32(ad_graph *g, ad_node *n, int i); /* input i is float32 */
/* The runtime kernels' dtype code (AD_K_F32 ..., runtime/kernels_shape.h) of t. */
int ad_op_kernel_dtype(ad_dtype t);
/* The dtype of ONNX TensorProto.DataType `code` when autodist has it (1), else 0. */
int ad_op_dtype_of_onnx(int64_t code, ad_dtype *out);
/* The bytes of the number 1 in dtype t, in the low bytes of a kernel slot. */
int64_t ad_op_one_slot(ad_dtype t);
/* The ONNX TensorProto.DataType code of t. */
int64_t ad_op_onnx_of_dtype(ad_dtype t);

#endif
