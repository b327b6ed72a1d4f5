/*
 * runtime/onnx_save.h: `run --save OUT.onnx`. The runtime does not parse ONNX:
 * the plan holds the model without its trained initializers, and saving
 * appends a serialized `graph` field that carries only the trained
 * initializers. Protobuf merges repeated fields of a message field given twice,
 * so readers (onnxruntime, onnx.load, PyTorch tooling) see one graph with every
 * initializer. This file encodes that tail by hand (it is a few varints).
 */
#ifndef AD_ONNX_SAVE_H
#define AD_ONNX_SAVE_H

#include "../common/ad.h"

typedef struct ad_named_tensor {
  const char *name;
  int rank;
  const int64_t *dims;
  const float *data;  /* float32, numel(dims) values */
} ad_named_tensor;

/* Writes base_model (stripped bytes) + trained initializers to out_path, atomically. */
ad_status ad_onnx_save(const char *base_model_path, const char *out_path, int n,
                       const ad_named_tensor *tensors);

#endif
