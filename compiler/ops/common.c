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
  default:
    return AD_K_BOOL;
  }
}

int ad_op_dtype_of_onnx(int64_t code, ad_dtype *out) {
  switch (code) {
  case 1:
    *out = AD_F32;
    return 1;
  case 2:
    *out = AD_U8;
    return 1;
  case 6:
    *out = AD_I32;
    return 1;
  case 7:
    *out = AD_I64;
    return 1;
  case 9:
    *out = AD_BOOL;
    return 1;
  default:
    return 0;
  }
}
