/*
 * compiler/onnx_load.h: ONNX model file -> IR graph. The protobuf parser is
 * generated at build time by protoc-c from the system /usr/include/onnx/onnx.proto.
 *
 * Initializers become PARAM values (CONST when they are integer or feed only
 * shape-like inputs such as Reshape's shape); Constant nodes become CONST values;
 * graph inputs that are also initializers are parameters (older exporters).
 * Every node is checked against the op registry: an unsupported op, domain or
 * opset is an error naming the node, op type and opset
 * ("model.onnx: node 'conv3' (ConvTranspose): error: op not supported").
 * Dynamic dimensions (dim_param or missing) of the inputs are the batch
 * dimension: they are set to `batch` (> 0); any other unknown dim is an error.
 */
#ifndef AD_ONNX_LOAD_H
#define AD_ONNX_LOAD_H

#include "ir.h"

ad_status ad_onnx_load(const char *path, int64_t batch, ad_graph **out);
ad_status ad_onnx_load_buffer(const char *path, const void *data, size_t len, int64_t batch,
                              ad_graph **out);

/*
 * `autodist infer` only: data given for a graph input that a node reads
 * through a slot that must be constant (Reshape's shape, Slice's starts, ...)
 * becomes a CONST value at load time instead of a data input. Data for other
 * inputs is ignored here (bound stays 0); the caller feeds it as usual. The
 * loader sets `bound` of each binding it used; data is copied.
 */
typedef struct ad_onnx_binding {
  const char *name;
  const char *file;     /* the array's file, for messages */
  struct ad_npy *array; /* converted in place to the input's dtype (ad_npy_fit) */
  int bound;            /* out */
} ad_onnx_binding;
ad_status ad_onnx_load_bound(const char *path, const void *data, size_t len, int64_t batch,
                             int n_bind, ad_onnx_binding *bind, ad_graph **out);

/* For the plan: writes a copy of the model file without the named initializers
 * (the runtime appends trained ones again at --save time: runtime/onnx_save.h). */
ad_status ad_onnx_strip_initializers(const char *in_path, const char *out_path, int n_names,
                                     char *const *names);

#endif
