/*
 * compiler/ops/common.c: shape-inference helpers shared by the op families.
 */
#include "../../runtime/kernels_shape.h"
#include "../op.h"

#include <string.h>

ad_status ad_infer_need_f32(ad_graph *g, ad_node *n, int i) {
  if (i >= n->n_in || !n->in[i])
    return ad_fail(AD_ERR_INPUT, "%s: error: input %d is missing", ad_node_where(g, n), i);
  if (n->in[i]->dtype != AD_F32)
    return ad_fail(AD_ERR_INPUT, "%s: error: input %d ('%s') is %s; only float32 is supported",
                   ad_node_where(g, n), i, n->in[i]->name, ad_dtype_name(n->in[i]->dtype));
  return AD_OK;
}

ad_status ad_infer_same(ad_graph *g, ad_node *n) {
  ad_value *x = n->in[0], *y = n->out[0];
  y->dtype = x->dtype;
  y->rank = x->rank;
  for (int i = 0; i < x->rank; i++)
    y->dims[i] = x->dims[i];
  return AD_OK;
}

ad_status ad_infer_broadcast(ad_graph *g, ad_node *n) {
  ad_value *y = n->out[0];
  int r = 0;
  int64_t dims[AD_MAX_RANK];
  for (int i = 0; i < n->n_in; i++) {
    ad_value *x = n->in[i];
    if (!x)
      continue;
    if (x->dtype != n->in[0]->dtype)
      return ad_fail(AD_ERR_INPUT, "%s: error: inputs have different types (%s and %s)",
                     ad_node_where(g, n), ad_dtype_name(n->in[0]->dtype), ad_dtype_name(x->dtype));
    if (i == 0) {
      r = x->rank;
      for (int k = 0; k < r; k++)
        dims[k] = x->dims[k];
      continue;
    }
    if (ad_broadcast_shape(r, dims, x->rank, x->dims, &r, dims) != AD_OK) {
      ad_error_prefix("%s: error", ad_node_where(g, n));
      return AD_ERR_INPUT;
    }
  }
  y->dtype = n->in[0]->dtype;
  y->rank = r;
  for (int k = 0; k < r; k++)
    y->dims[k] = dims[k];
  return AD_OK;
}

int ad_op_kernel_dtype(ad_dtype t) {
  switch (t) {
  case AD_F32:
    return AD_K_F32;
  case AD_I64:
    return AD_K_I64;
  case AD_I32:
    return AD_K_I32;
  case AD_U8:
    return AD_K_U8;
  case AD_BOOL:
    return AD_K_BOOL;
  default:
    AD_ASSERT(!"no kernel dtype code: the op's shape inference must refuse this dtype");
    return -1;
  }
}

int64_t ad_op_one_slot(ad_dtype t) {
  int64_t slot = 0;
  switch (t) {
  case AD_F32: {
    float f = 1.0f;
    memcpy(&slot, &f, 4);
    break;
  }
  case AD_F64: {
    double d = 1.0;
    memcpy(&slot, &d, 8);
    break;
  }
  case AD_F16:
    slot = 0x3c00;
    break;
  case AD_BF16:
    slot = 0x3f80;
    break;
  default:
    slot = 1;
  }
  return slot;
}

/* ONNX TensorProto.DataType codes of the dtypes autodist stores (string 8,
 * complex 14/15 and the float8 kinds are not among them). */
static const struct {
  int64_t code;
  ad_dtype t;
} onnx_codes[] = {
    {1, AD_F32},  {2, AD_U8},   {3, AD_I8},    {4, AD_U16},  {5, AD_I16},
    {6, AD_I32},  {7, AD_I64},  {9, AD_BOOL},  {10, AD_F16}, {11, AD_F64},
    {12, AD_U32}, {13, AD_U64}, {16, AD_BF16},
};

int ad_op_dtype_of_onnx(int64_t code, ad_dtype *out) {
  for (size_t i = 0; i < sizeof onnx_codes / sizeof *onnx_codes; i++)
    if (onnx_codes[i].code == code) {
      *out = onnx_codes[i].t;
      return 1;
    }
  return 0;
}

int64_t ad_op_onnx_of_dtype(ad_dtype t) {
  for (size_t i = 0; i < sizeof onnx_codes / sizeof *onnx_codes; i++)
    if (onnx_codes[i].t == t)
      return onnx_codes[i].code;
  AD_ASSERT(!"every dtype has an ONNX code");
  return 0;
}
