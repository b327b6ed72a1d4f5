/*
 * compiler/ops/conv.c: convolution over NCHW images (and NCW sequences, run
 * as images of height 1) and pooling over NCW / NCHW / NCDHW inputs, lowered
 * to the runtime's im2col + GEMM convolution and its pooling kernels; plus
 * their internal gradient ops.
 *
 * One geometry function per family reads the ONNX attributes (strides, pads,
 * auto_pad, dilations, group, ceil_mode) and the input shapes, validates them
 * and yields the kernels' parameter block. Shape inference, lowering and cost
 * all go through it, so they cannot disagree. Gradient ops copy the forward
 * node's attributes and take the forward inputs whose shapes they need as
 * inputs (ConvGradData(dy, w, x) has x's shape), so the geometry is recomputed
 * from the same data.
 *
 * Bottom/right padding is implied by the output size in the kernels, so
 * asymmetric explicit pads and SAME_* auto padding need no extra parameters.
 * GlobalMaxPool is a max pool whose one window covers the image; MaxPool's
 * optional Indices output and LpPool (forward only) have their own kernels.
 */
#include "../../runtime/kernels.h"
#include "../codegen.h"
#include "../op.h"

#include <string.h>

/* Geometry of a 1-D, 2-D or 3-D window op, always as 3-D (depth, height,
 * width; the op's spatial axes are the last ones: a 2-D op has D = 1, a 1-D op
 * also H = 1). Convolution is 1-D or 2-D only. */
typedef struct geom {
  int sp;                 /* spatial rank of the ONNX op: 1, 2 or 3 */
  int64_t n, c, m, group; /* m: output channels (conv), c for pooling */
  int64_t in[3], k[3], out[3], s[3], d[3], pb[3], pe[3];
  int include_pad;
} geom;

/* x must be N x C x spatial axes: 1 or 2 of them for convolution, up to 3 for
 * pooling. */
static ad_status check_image(ad_graph *g, const ad_node *n, const ad_value *x) {
  int conv = strstr(n->op_type, "Conv") != NULL;
  if (x->rank == 5 && conv)
    return ad_fail(AD_ERR_INPUT, "%s: error: 3-D convolution is not supported (input %s)",
                   ad_node_where(g, n), ad_shape_str(x->rank, x->dims));
  if (x->rank != 3 && x->rank != 4 && x->rank != 5)
    return ad_fail(AD_ERR_INPUT, "%s: error: input must be N x C x W, N x C x H x W%s, got %s",
                   ad_node_where(g, n), conv ? "" : " or N x C x D x H x W",
                   ad_shape_str(x->rank, x->dims));
  return AD_OK;
}

/* Window attributes (strides, dilations, kernel_shape, pads) above this are
 * rejected, so that the geometry below cannot overflow int64. */
#define MAX_WINDOW_ATTR ((int64_t)1 << 30)

/* Reads an INTS attribute of `len` entries, each in [lo, MAX_WINDOW_ATTR], into
 * out (3-D layout: the op's values go to the last sp slots). Absent: `dflt`
 * everywhere. */
static ad_status spatial_ints(ad_graph *g, const ad_node *n, const char *name, int sp, int64_t lo,
                              int64_t dflt, int64_t *out) {
  const int64_t *v;
  int len = ad_attr_ints(n, name, &v);
  out[0] = out[1] = out[2] = dflt;
  if (len < 0)
    return AD_OK;
  if (len != sp)
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute %s has %d entries, expected %d",
                   ad_node_where(g, n), name, len, sp);
  for (int i = 0; i < sp; i++) {
    if (v[i] < lo || v[i] > MAX_WINDOW_ATTR)
      return ad_fail(AD_ERR_INPUT, "%s: error: attribute %s %s must be between %lld and %lld",
                     ad_node_where(g, n), name, ad_shape_str(len, v), (long long)lo,
                     (long long)MAX_WINDOW_ATTR);
    out[3 - sp + i] = v[i];
  }
  return AD_OK;
}

/* Strides, dilations, pads and auto_pad, and from them the output extents.
 * g->in and g->k must be set. `ceil_mode` applies to pooling only. */
static ad_status window_read(ad_graph *g, const ad_node *n, geom *w, int ceil_mode) {
  int sp = w->sp;
  AD_TRY(spatial_ints(g, n, "strides", sp, 1, 1, w->s));
  AD_TRY(spatial_ints(g, n, "dilations", sp, 1, 1, w->d));
  const char *auto_pad = ad_attr_str(n, "auto_pad", "NOTSET");
  const int64_t *pads;
  int np = ad_attr_ints(n, "pads", &pads);
  memset(w->pb, 0, sizeof w->pb);
  memset(w->pe, 0, sizeof w->pe);
  int same = !strcmp(auto_pad, "SAME_UPPER") || !strcmp(auto_pad, "SAME_LOWER");
  if (strcmp(auto_pad, "NOTSET") && strcmp(auto_pad, "VALID") && !same)
    return ad_fail(AD_ERR_INPUT, "%s: error: auto_pad '%s' is not supported", ad_node_where(g, n),
                   auto_pad);
  if (np >= 0) {
    if (strcmp(auto_pad, "NOTSET"))
      return ad_fail(AD_ERR_INPUT, "%s: error: pads cannot be combined with auto_pad '%s'",
                     ad_node_where(g, n), auto_pad);
    if (np != 2 * sp)
      return ad_fail(AD_ERR_INPUT, "%s: error: attribute pads has %d entries, expected %d",
                     ad_node_where(g, n), np, 2 * sp);
    for (int i = 0; i < 2 * sp; i++)
      if (pads[i] < 0 || pads[i] > MAX_WINDOW_ATTR)
        return ad_fail(AD_ERR_INPUT, "%s: error: pads %s must be between 0 and %lld",
                       ad_node_where(g, n), ad_shape_str(np, pads), (long long)MAX_WINDOW_ATTR);
    for (int i = 0; i < sp; i++) {
      w->pb[3 - sp + i] = pads[i];
      w->pe[3 - sp + i] = pads[sp + i];
    }
  }
  for (int i = 0; i < 3; i++) {
    int64_t span; /* the dilated window */
    if (__builtin_mul_overflow(w->d[i], w->k[i] - 1, &span) || span > INT64_MAX / 4)
      return ad_fail(AD_ERR_INPUT, "%s: error: the window (%lld with dilation %lld) is too large",
                     ad_node_where(g, n), (long long)w->k[i], (long long)w->d[i]);
    span += 1;
    if (same) {
      /* Output ceil(in / stride); the padding that needs, the odd cell at the
       * end (SAME_UPPER) or at the beginning (SAME_LOWER). */
      w->out[i] = (w->in[i] + w->s[i] - 1) / w->s[i];
      int64_t total = (w->out[i] - 1) * w->s[i] + span - w->in[i];
      if (total < 0)
        total = 0;
      w->pb[i] = auto_pad[5] == 'U' ? total / 2 : total - total / 2;
      w->pe[i] = total - w->pb[i];
      continue;
    }
    int64_t num = w->in[i] + w->pb[i] + w->pe[i] - span;
    if (num < 0)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: the window (%lld with dilation %lld) is larger than the padded "
                     "input (%lld)",
                     ad_node_where(g, n), (long long)w->k[i], (long long)w->d[i],
                     (long long)(w->in[i] + w->pb[i] + w->pe[i]));
    if (ceil_mode) {
      w->out[i] = (num + w->s[i] - 1) / w->s[i] + 1;
      /* The last window must start inside the input or its leading padding. */
      if ((w->out[i] - 1) * w->s[i] >= w->in[i] + w->pb[i])
        w->out[i]--;
    } else {
      w->out[i] = num / w->s[i] + 1;
    }
  }
  return AD_OK;
}

/* Conv geometry from the node, image x and weight wt (x: in[0] of Conv, also
 * an input of the gradient ops). */
static ad_status conv_geom_read(ad_graph *g, const ad_node *n, const ad_value *x,
                                const ad_value *wt, geom *w) {
  AD_TRY(check_image(g, n, x));
  memset(w, 0, sizeof *w);
  w->sp = x->rank - 2;
  if (wt->rank != x->rank)
    return ad_fail(AD_ERR_INPUT, "%s: error: weight %s does not match input %s",
                   ad_node_where(g, n), ad_shape_str(wt->rank, wt->dims),
                   ad_shape_str(x->rank, x->dims));
  w->n = x->dims[0];
  w->c = x->dims[1];
  w->m = wt->dims[0];
  w->group = ad_attr_int(n, "group", 1);
  w->in[0] = w->k[0] = 1;
  w->in[1] = w->sp == 2 ? x->dims[2] : 1;
  w->in[2] = x->dims[x->rank - 1];
  w->k[1] = w->sp == 2 ? wt->dims[2] : 1;
  w->k[2] = wt->dims[wt->rank - 1];
  if (w->group < 1 || w->c % w->group || w->m % w->group || wt->dims[1] * w->group != w->c)
    return ad_fail(AD_ERR_INPUT, "%s: error: weight %s does not fit input %s with group=%lld",
                   ad_node_where(g, n), ad_shape_str(wt->rank, wt->dims),
                   ad_shape_str(x->rank, x->dims), (long long)w->group);
  const int64_t *ks;
  int nk = ad_attr_ints(n, "kernel_shape", &ks);
  if (nk >= 0 && (nk != w->sp || memcmp(ks, wt->dims + 2, sizeof(int64_t) * (size_t)nk)))
    return ad_fail(AD_ERR_INPUT, "%s: error: kernel_shape %s does not match weight %s",
                   ad_node_where(g, n), ad_shape_str(nk, ks), ad_shape_str(wt->rank, wt->dims));
  return window_read(g, n, w, 0);
}

/* Pool geometry; GlobalAveragePool (and AvgPoolGrad with global=1) is one
 * window over all spatial cells, flattened to a 1 x 1 x S input. */
static ad_status pool_geom_read(ad_graph *g, const ad_node *n, const ad_value *x, geom *w) {
  memset(w, 0, sizeof *w);
  w->n = x->dims[0];
  w->c = w->m = x->rank > 1 ? x->dims[1] : 1;
  w->group = 1;
  int global = !strncmp(n->op_type, "Global", 6) || ad_attr_int(n, "global", 0);
  if (global) {
    if (x->rank < 3)
      return ad_fail(AD_ERR_INPUT, "%s: error: input must have rank >= 3, got %s",
                     ad_node_where(g, n), ad_shape_str(x->rank, x->dims));
    int64_t cells = 1;
    for (int i = 2; i < x->rank; i++)
      cells *= x->dims[i];
    w->sp = x->rank - 2;
    for (int i = 0; i < 3; i++)
      w->in[i] = w->k[i] = w->out[i] = w->s[i] = w->d[i] = 1;
    w->in[2] = w->k[2] = cells;
    return AD_OK;
  }
  AD_TRY(check_image(g, n, x));
  w->sp = x->rank - 2;
  for (int i = 0; i < 3; i++)
    w->in[i] = i < 3 - w->sp ? 1 : x->dims[2 + i - (3 - w->sp)];
  const int64_t *ks;
  if (ad_attr_ints(n, "kernel_shape", &ks) < 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: attribute kernel_shape is required",
                   ad_node_where(g, n));
  AD_TRY(spatial_ints(g, n, "kernel_shape", w->sp, 1, 1, w->k));
  int is_max = strstr(n->op_type, "Max") != NULL;
  int ceil_mode = (int)ad_attr_int(n, "ceil_mode", 0);
  AD_TRY(window_read(g, n, w, ceil_mode));
  if (!is_max) {
    w->include_pad = ad_attr_int(n, "count_include_pad", 0) != 0;
    /* The kernel divides by the full window when padding counts; that is the
     * reference's divisor unless a ceil_mode window reaches past the padding. */
    for (int i = 0; i < 3 && w->include_pad; i++)
      if ((w->out[i] - 1) * w->s[i] + w->d[i] * (w->k[i] - 1) + 1 > w->in[i] + w->pb[i] + w->pe[i])
        return ad_fail(AD_ERR_INPUT,
                       "%s: error: count_include_pad=1 with ceil_mode windows that extend past "
                       "the padding is not supported",
                       ad_node_where(g, n));
  }
  return AD_OK;
}

/* {N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, group} */
static void conv_params(const geom *w, int64_t *p) {
  int64_t q[16] = {w->n,      w->c,    w->in[1], w->in[2], w->m,     w->k[1], w->k[2], w->out[1],
                   w->out[2], w->s[1], w->s[2],  w->pb[1], w->pb[2], w->d[1], w->d[2], w->group};
  memcpy(p, q, sizeof q);
}

/* The pooling kernels' block (runtime/kernels.h): {N, C, in[3], out[3], k[3],
 * strides[3], pads_begin[3], dilations[3], count_include_pad, extra, dtype}. */
#define POOL_NP 23
static void pool_params(const geom *w, int64_t extra, int64_t dtype, int64_t *p) {
  p[0] = w->n;
  p[1] = w->c;
  for (int i = 0; i < 3; i++) {
    p[2 + i] = w->in[i];
    p[5 + i] = w->out[i];
    p[8 + i] = w->k[i];
    p[11 + i] = w->s[i];
    p[14 + i] = w->pb[i];
    p[17 + i] = w->d[i];
  }
  p[20] = w->include_pad;
  p[21] = extra;
  p[22] = dtype;
}

/* Output shape N x M x out (x's rank and dtype). */
static void set_out(ad_value *y, const ad_value *x, const geom *w, int64_t channels) {
  y->dtype = x->dtype;
  y->rank = x->rank;
  y->dims[0] = x->dims[0];
  y->dims[1] = channels;
  for (int i = 2; i < x->rank; i++)
    y->dims[i] = w->out[3 - (x->rank - i)];
}

static int same_dims(const ad_value *a, const ad_value *b) {
  return a->rank == b->rank && !memcmp(a->dims, b->dims, sizeof(int64_t) * (size_t)a->rank);
}

/* Gradient ops: dy must have the forward output's shape. */
static ad_status check_dy(ad_graph *g, const ad_node *n, const ad_value *dy, const ad_value *x,
                          const geom *w, int64_t channels) {
  ad_value expect = {0};
  set_out(&expect, x, w, channels);
  if (!same_dims(&expect, dy))
    return ad_fail(AD_ERR_INPUT, "%s: error: gradient %s does not match the output %s",
                   ad_node_where(g, n), ad_shape_str(dy->rank, dy->dims),
                   ad_shape_str(expect.rank, expect.dims));
  return AD_OK;
}

static void copy_shape(ad_value *y, const ad_value *x) {
  y->dtype = AD_F32;
  y->rank = x->rank;
  memcpy(y->dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
}

static LLVMValueRef null_ptr(ad_cg *cg) {
  return LLVMConstPointerNull(ad_cg_ptr_type(cg));
}

static LLVMValueRef conv_ws(ad_cg *cg, const int64_t *p) {
  int64_t floats = ad_k_conv2d_workspace(p);
  return floats > 0 ? ad_cg_scratch(cg, (size_t)floats * 4) : null_ptr(cg);
}

/* ---- Conv ---- */

static ad_status infer_conv(ad_graph *g, ad_node *n) {
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      AD_TRY(ad_infer_need_f32(g, n, i));
  geom w;
  AD_TRY(conv_geom_read(g, n, n->in[0], n->in[1], &w));
  ad_value *b = n->n_in > 2 ? n->in[2] : NULL;
  if (b && (b->rank != 1 || b->dims[0] != w.m))
    return ad_fail(AD_ERR_INPUT, "%s: error: bias %s must be [%lld]", ad_node_where(g, n),
                   ad_shape_str(b->rank, b->dims), (long long)w.m);
  set_out(n->out[0], n->in[0], &w, w.m);
  return AD_OK;
}

static ad_status lower_conv(ad_cg *cg, const ad_node *n) {
  geom w;
  AD_TRY(conv_geom_read(ad_cg_graph(cg), n, n->in[0], n->in[1], &w));
  int64_t p[16];
  conv_params(&w, p);
  ad_value *b = n->n_in > 2 ? n->in[2] : NULL;
  LLVMValueRef ptrs[5] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          b ? ad_cg_ptr(cg, b) : null_ptr(cg), ad_cg_ptr(cg, n->out[0]),
                          conv_ws(cg, p)};
  ad_cg_call_kernel(cg, "ad_k_conv2d_fwd", p, 16, ptrs, 5);
  return AD_OK;
}

/* dx = ConvGradData(dy, w, x), dw = ConvGradWeight(x, dy, w), db = dy summed
 * over all axes but the channel one. */
static ad_status grad_conv(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0], *wt = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
  ad_value *dy = ad_grad_out(gc, n, 0);
  if (ad_grad_wants(gc, x)) {
    ad_value *args[3] = {dy, wt, x};
    ad_grad_acc(gc, x, ad_grad_emit(gc, "ConvGradData", 3, args, n->attrs, n->n_attr));
  }
  if (ad_grad_wants(gc, wt)) {
    ad_value *args[3] = {x, dy, wt};
    ad_grad_acc(gc, wt, ad_grad_emit(gc, "ConvGradWeight", 3, args, n->attrs, n->n_attr));
  }
  if (ad_grad_wants(gc, b)) {
    /* Sum to [M, 1, 1] (right-aligned against dy), then view as [M]. */
    ad_value like = {.rank = dy->rank - 1};
    like.dims[0] = b->dims[0];
    for (int i = 1; i < like.rank; i++)
      like.dims[i] = 1;
    ad_value *s = ad_grad_reduce_to(gc, dy, &like);
    int64_t len = 1;
    ad_graph *g = ad_grad_graph(gc);
    ad_value *shape = ad_value_new(g, NULL, AD_I64, 1, &len, AD_VAL_CONST);
    shape->data = ad_arena_alloc(g->arena, sizeof(int64_t));
    *(int64_t *)shape->data = b->dims[0];
    ad_value *args[2] = {s, shape};
    ad_grad_acc(gc, b, ad_grad_emit(gc, "Reshape", 2, args, NULL, 0));
  }
  return AD_OK;
}

static double conv_flops(const geom *w) {
  return 2.0 * (double)w->n * (double)w->m * (double)(w->out[1] * w->out[2]) *
         (double)(w->c / w->group) * (double)(w->k[1] * w->k[2]);
}

static void cost_io(const ad_node *n, double *bytes) {
  *bytes = 0;
  for (int i = 0; i < n->n_in; i++)
    if (n->in[i])
      *bytes += (double)ad_value_bytes(n->in[i]);
  for (int i = 0; i < n->n_out; i++)
    *bytes += (double)ad_value_bytes(n->out[i]);
}

/* Geometry of a conv-family node whatever its input order. */
static ad_status conv_node_geom(ad_graph *g, const ad_node *n, geom *w) {
  if (!strcmp(n->op_type, "ConvGradData"))
    return conv_geom_read(g, n, n->in[2], n->in[1], w);
  if (!strcmp(n->op_type, "ConvGradWeight"))
    return conv_geom_read(g, n, n->in[0], n->in[2], w);
  return conv_geom_read(g, n, n->in[0], n->in[1], w);
}

static void cost_conv(const ad_node *n, double *flops, double *bytes) {
  geom w;
  *flops = 0;
  /* The node was inferred, so the geometry is valid; no graph needed for messages. */
  ad_graph dummy = {.source = ""};
  if (conv_node_geom(&dummy, n, &w) == AD_OK)
    *flops = conv_flops(&w);
  cost_io(n, bytes);
}

/* ConvGradData(dy, w, x) -> dx with x's shape. */
static ad_status infer_conv_grad_data(ad_graph *g, ad_node *n) {
  geom w;
  AD_TRY(conv_geom_read(g, n, n->in[2], n->in[1], &w));
  AD_TRY(check_dy(g, n, n->in[0], n->in[2], &w, w.m));
  copy_shape(n->out[0], n->in[2]);
  return AD_OK;
}

static ad_status lower_conv_grad_data(ad_cg *cg, const ad_node *n) {
  geom w;
  AD_TRY(conv_geom_read(ad_cg_graph(cg), n, n->in[2], n->in[1], &w));
  int64_t p[16];
  conv_params(&w, p);
  LLVMValueRef ptrs[4] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0]), conv_ws(cg, p)};
  ad_cg_call_kernel(cg, "ad_k_conv2d_bwd_data", p, 16, ptrs, 4);
  return AD_OK;
}

/* ConvGradWeight(x, dy, w) -> dw with w's shape. */
static ad_status infer_conv_grad_weight(ad_graph *g, ad_node *n) {
  geom w;
  AD_TRY(conv_geom_read(g, n, n->in[0], n->in[2], &w));
  AD_TRY(check_dy(g, n, n->in[1], n->in[0], &w, w.m));
  copy_shape(n->out[0], n->in[2]);
  return AD_OK;
}

static ad_status lower_conv_grad_weight(ad_cg *cg, const ad_node *n) {
  geom w;
  AD_TRY(conv_geom_read(ad_cg_graph(cg), n, n->in[0], n->in[2], &w));
  int64_t p[16];
  conv_params(&w, p);
  LLVMValueRef ptrs[4] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->in[1]),
                          ad_cg_ptr(cg, n->out[0]), conv_ws(cg, p)};
  ad_cg_call_kernel(cg, "ad_k_conv2d_bwd_weight", p, 16, ptrs, 4);
  return AD_OK;
}

/* ---- MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LpPool ---- */

/* The kernels' dtype code of a pool's input: float32 everywhere, and uint8 /
 * int8 for MaxPool from opset 12 (forward only: integers are not trained). */
static ad_status pool_dtype(ad_graph *g, const ad_node *n, int64_t *code) {
  ad_value *x = n->in[0];
  *code = AD_K_POOL_F32;
  if (!strcmp(n->op_type, "MaxPool") && g->opset >= 12 &&
      (x->dtype == AD_U8 || x->dtype == AD_I8)) {
    *code = x->dtype == AD_U8 ? AD_K_POOL_U8 : AD_K_POOL_I8;
    return AD_OK;
  }
  if (x->dtype != AD_F32)
    return ad_fail(AD_ERR_INPUT, "%s: error: input 0 ('%s') is %s; only float32%s is supported",
                   ad_node_where(g, n), x->name, ad_dtype_name(x->dtype),
                   !strcmp(n->op_type, "MaxPool") && g->opset >= 12 ? ", uint8 and int8" : "");
  return AD_OK;
}

static ad_status infer_pool(ad_graph *g, ad_node *n) {
  int64_t code;
  AD_TRY(pool_dtype(g, n, &code));
  int64_t order = ad_attr_int(n, "storage_order", 0);
  if (order != 0 && order != 1)
    return ad_fail(AD_ERR_INPUT, "%s: error: storage_order must be 0 or 1, got %lld",
                   ad_node_where(g, n), (long long)order);
  geom w;
  AD_TRY(pool_geom_read(g, n, n->in[0], &w));
  set_out(n->out[0], n->in[0], &w, w.c);
  if (n->n_out > 1) { /* MaxPool's Indices */
    set_out(n->out[1], n->in[0], &w, w.c);
    n->out[1]->dtype = AD_I64;
  }
  if (!strncmp(n->op_type, "Global", 6))
    for (int i = 2; i < n->in[0]->rank; i++)
      n->out[0]->dims[i] = 1;
  return AD_OK;
}

static ad_status lower_pool(ad_cg *cg, const ad_node *n) {
  geom w;
  ad_graph *g = ad_cg_graph(cg);
  int64_t code;
  AD_TRY(pool_dtype(g, n, &code));
  AD_TRY(pool_geom_read(g, n, n->in[0], &w));
  int64_t p[POOL_NP];
  LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, n->in[0]), ad_cg_ptr(cg, n->out[0]),
                          n->n_out > 1 ? ad_cg_ptr(cg, n->out[1]) : NULL};
  if (n->n_out > 1) {
    pool_params(&w, ad_attr_int(n, "storage_order", 0), code, p);
    ad_cg_call_kernel(cg, "ad_k_maxpool_idx_fwd", p, POOL_NP, ptrs, 3);
  } else if (!strcmp(n->op_type, "LpPool")) {
    pool_params(&w, ad_attr_int(n, "p", 2), code, p);
    ad_cg_call_kernel(cg, "ad_k_lppool_fwd", p, POOL_NP, ptrs, 2);
  } else {
    int max = strstr(n->op_type, "MaxPool") != NULL;
    pool_params(&w, 0, code, p);
    ad_cg_call_kernel(cg, max ? "ad_k_maxpool_fwd" : "ad_k_avgpool_fwd", p, POOL_NP, ptrs, 2);
  }
  return AD_OK;
}

/* MaxPoolGrad(x, dy) recomputes the argmax from x; AvgPoolGrad(dy, x) needs
 * x only for its shape. Both copy the forward attributes. (An integer x, which
 * only MaxPool takes, is never trained: no gradient wanted.) */
static ad_status grad_pool(ad_grad *gc, const ad_node *n) {
  ad_value *x = n->in[0], *dy = ad_grad_out(gc, n, 0);
  if (!ad_grad_wants(gc, x))
    return AD_OK;
  AD_ASSERT(x->dtype == AD_F32);
  if (n->n_out > 1 && ad_grad_out(gc, n, 1))
    return ad_fail(AD_ERR_INPUT, "%s: error: no gradient through Indices",
                   ad_node_where(ad_grad_graph(gc), n));
  if (!strcmp(n->op_type, "GlobalMaxPool")) {
    ad_value *args[2] = {x, dy};
    ad_attr a = ad_attr_i("global", 1);
    ad_grad_acc(gc, x, ad_grad_emit(gc, "MaxPoolGrad", 2, args, &a, 1));
    return AD_OK;
  }
  if (!strcmp(n->op_type, "MaxPool")) {
    ad_value *args[2] = {x, dy};
    ad_grad_acc(gc, x, ad_grad_emit(gc, "MaxPoolGrad", 2, args, n->attrs, n->n_attr));
    return AD_OK;
  }
  ad_value *args[2] = {dy, x};
  if (!strcmp(n->op_type, "GlobalAveragePool")) {
    ad_attr a = ad_attr_i("global", 1);
    ad_grad_acc(gc, x, ad_grad_emit(gc, "AvgPoolGrad", 2, args, &a, 1));
  } else {
    ad_grad_acc(gc, x, ad_grad_emit(gc, "AvgPoolGrad", 2, args, n->attrs, n->n_attr));
  }
  return AD_OK;
}

/* Index of x and dy among a pool gradient node's inputs. */
static void pool_grad_inputs(const ad_node *n, ad_value **x, ad_value **dy) {
  int max = !strcmp(n->op_type, "MaxPoolGrad");
  *x = n->in[max ? 0 : 1];
  *dy = n->in[max ? 1 : 0];
}

static ad_status infer_pool_grad(ad_graph *g, ad_node *n) {
  ad_value *x, *dy;
  pool_grad_inputs(n, &x, &dy);
  geom w;
  AD_TRY(pool_geom_read(g, n, x, &w));
  if (ad_attr_int(n, "global", 0)) {
    ad_value expect = {.rank = x->rank};
    expect.dims[0] = x->dims[0];
    expect.dims[1] = x->dims[1];
    for (int i = 2; i < x->rank; i++)
      expect.dims[i] = 1;
    AD_ASSERT(same_dims(&expect, dy));
  } else {
    AD_TRY(check_dy(g, n, dy, x, &w, w.c));
  }
  copy_shape(n->out[0], x);
  return AD_OK;
}

static ad_status lower_pool_grad(ad_cg *cg, const ad_node *n) {
  ad_value *x, *dy;
  pool_grad_inputs(n, &x, &dy);
  geom w;
  AD_TRY(pool_geom_read(ad_cg_graph(cg), n, x, &w));
  int64_t p[POOL_NP];
  pool_params(&w, 0, AD_K_POOL_F32, p);
  if (!strcmp(n->op_type, "MaxPoolGrad")) {
    LLVMValueRef ptrs[3] = {ad_cg_ptr(cg, x), ad_cg_ptr(cg, dy), ad_cg_ptr(cg, n->out[0])};
    ad_cg_call_kernel(cg, "ad_k_maxpool_bwd", p, POOL_NP, ptrs, 3);
  } else {
    LLVMValueRef ptrs[2] = {ad_cg_ptr(cg, dy), ad_cg_ptr(cg, n->out[0])};
    ad_cg_call_kernel(cg, "ad_k_avgpool_bwd", p, POOL_NP, ptrs, 2);
  }
  return AD_OK;
}

static void cost_pool(const ad_node *n, double *flops, double *bytes) {
  const ad_value *x = n->in[0];
  if (!strcmp(n->op_type, "AvgPoolGrad"))
    x = n->in[1];
  geom w;
  ad_graph dummy = {.source = ""};
  *flops = 0;
  if (pool_geom_read(&dummy, n, x, &w) == AD_OK)
    *flops = (double)(w.n * w.c) * (double)(w.out[0] * w.out[1] * w.out[2]) *
             (double)(w.k[0] * w.k[1] * w.k[2]);
  cost_io(n, bytes);
}

#define ONNX_OP(...) ONNX_OP_FROM(1, __VA_ARGS__)
#define ONNX_OP_FROM(LO, NAME, MINI, MAXI, NOUT, INFER, GRAD, LOWER, COST)                         \
  {                                                                                                \
    .name = NAME, .domain = "", .min_opset = LO, .max_opset = AD_OPSET_MAX, .min_in = MINI,        \
    .max_in = MAXI, .n_out = NOUT, .infer = INFER, .grad = GRAD, .lower_kind = AD_LOWER_CALL,      \
    .lower = LOWER, .cost = COST                                                                   \
  }
#define INTERNAL_OP(NAME, NIN, INFER, LOWER, COST)                                                 \
  {                                                                                                \
    .name = NAME, .domain = "ad", .min_in = NIN, .max_in = NIN, .n_out = 1, .infer = INFER,        \
    .lower_kind = AD_LOWER_CALL, .lower = LOWER, .cost = COST                                      \
  }

const ad_op ad_ops_conv[] = {
    ONNX_OP("Conv", 2, 3, 1, infer_conv, grad_conv, lower_conv, cost_conv),
    ONNX_OP("MaxPool", 1, 1, 2, infer_pool, grad_pool, lower_pool, cost_pool),
    ONNX_OP("AveragePool", 1, 1, 1, infer_pool, grad_pool, lower_pool, cost_pool),
    ONNX_OP("GlobalAveragePool", 1, 1, 1, infer_pool, grad_pool, lower_pool, cost_pool),
    ONNX_OP("GlobalMaxPool", 1, 1, 1, infer_pool, grad_pool, lower_pool, cost_pool),
    /* LpPool: forward only (no gradient). LpPool-1's p is a float attribute. */
    ONNX_OP_FROM(2, "LpPool", 1, 1, 1, infer_pool, NULL, lower_pool, cost_pool),
    INTERNAL_OP("ConvGradData", 3, infer_conv_grad_data, lower_conv_grad_data, cost_conv),
    INTERNAL_OP("ConvGradWeight", 3, infer_conv_grad_weight, lower_conv_grad_weight, cost_conv),
    INTERNAL_OP("MaxPoolGrad", 2, infer_pool_grad, lower_pool_grad, cost_pool),
    INTERNAL_OP("AvgPoolGrad", 2, infer_pool_grad, lower_pool_grad, cost_pool),
    {0},
};
