/*
 * runtime/kernels.h: the C ABI that generated code calls for heavy ops. Every
 * kernel has the form
 *     void ad_k_NAME(const int64_t *p, float *a0, float *a1, ...);
 * `p` holds the integer parameters (shapes, strides, pads) in the order given
 * for each kernel; float parameters (alpha, beta) are passed as the bit pattern
 * of the float in an int64 slot (ad_k_f32 below reads them back). Buffers are
 * caller-owned; kernels never allocate except where noted. The worker binary
 * exports these symbols so that the JIT finds them in the process.
 *
 * Layouts: tensors are dense, row-major; images NCHW; conv weights (M, C/group, KH, KW).
 */
#ifndef AD_KERNELS_H
#define AD_KERNELS_H

#include <stdint.h>
#include <string.h>

static inline float ad_k_f32(int64_t slot) {
  float f;
  uint32_t u = (uint32_t)slot;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline int64_t ad_k_slot(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (int64_t)u;
}

/* C = alpha * op(A) op(B) + beta * C, row-major, through cblas_sgemm.
 * p = {transA, transB, M, N, K, lda, ldb, ldc, alpha_bits, beta_bits, batch,
 *      strideA, strideB, strideC}   (batch >= 1: a batch of independent GEMMs,
 *      element strides between consecutive A, B, C; stride 0 broadcasts) */
void ad_k_gemm(const int64_t *p, const float *A, const float *B, float *C);

/* Y[m, n] += bias[n] (bias row broadcast over rows); p = {M, N}. */
void ad_k_add_rowvec(const int64_t *p, float *Y, const float *bias);

/* 2-D convolution parameters shared by the conv kernels:
 * p = {N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top, pad_left,
 *      dil_h, dil_w, group}
 * Workspace: ad_k_conv2d_workspace(p) floats, provided by the caller. */
int64_t ad_k_conv2d_workspace(const int64_t *p);
/* y = conv(x, w) + b (b may be NULL). */
void ad_k_conv2d_fwd(const int64_t *p, const float *x, const float *w, const float *b, float *y,
                     float *ws);
/* dx = conv_transpose(dy, w) (overwrites dx). */
void ad_k_conv2d_bwd_data(const int64_t *p, const float *dy, const float *w, float *dx, float *ws);
/* dw = correlation of x and dy (overwrites dw). */
void ad_k_conv2d_bwd_weight(const int64_t *p, const float *x, const float *dy, float *dw,
                            float *ws);

/* Pooling over 1 to 3 spatial axes, always given as 3 (depth, height, width;
 * a 2-D pool has D = OD = KD = 1, a 1-D pool also H = OH = KH = 1):
 * p = {N, C, D, H, W, OD, OH, OW, KD, KH, KW, stride[3], pad_begin[3], dil[3],
 *      count_include_pad, extra, dtype}   (23 slots)
 * extra: storage_order for maxpool_idx_fwd, the norm's p for lppool_fwd, else 0.
 * dtype: AD_K_POOL_* of x and y (max pooling forward only; the others are float).
 * Trailing padding is implied by the output size. Padding cells are ignored by
 * max pooling. */
enum { AD_K_POOL_F32 = 0, AD_K_POOL_U8 = 1, AD_K_POOL_I8 = 2 };
void ad_k_maxpool_fwd(const int64_t *p, const void *x, void *y);
/* dx = scatter of dy to the argmax of each window (first maximum wins, like
 * PyTorch); overwrites dx. float only. */
void ad_k_maxpool_bwd(const int64_t *p, const float *x, const float *dy, float *dx);
/* Max pooling that also writes the ONNX Indices output (int64 flat offsets into x;
 * spatial cells column-major when storage_order = extra is 1). */
void ad_k_maxpool_idx_fwd(const int64_t *p, const void *x, void *y, int64_t *idx);
/* LpPool (padding counts as zeros). */
void ad_k_lppool_fwd(const int64_t *p, const float *x, float *y);
void ad_k_avgpool_fwd(const int64_t *p, const float *x, float *y);
void ad_k_avgpool_bwd(const int64_t *p, const float *dy, float *dx);

/* Softmax / LogSoftmax along one axis: p = {outer, n, inner} (the tensor viewed
 * as [outer, n, inner], the axis being n). */
void ad_k_softmax_fwd(const int64_t *p, const float *x, float *y);
void ad_k_softmax_bwd(const int64_t *p, const float *y, const float *dy, float *dx);
void ad_k_logsoftmax_fwd(const int64_t *p, const float *x, float *y);
void ad_k_logsoftmax_bwd(const int64_t *p, const float *y, const float *dy, float *dx);

/* Cross entropy of logits [N, C] with int64 labels [N]:
 * p = {N, C, scale_bits}; loss[0] = scale * sum_i -log softmax(x_i)[label_i];
 * dx = scale * (softmax(x) - onehot(label)) (scale = 1 / global batch).
 * Labels outside [0, C) are a data error: the kernel writes NaN to loss. */
void ad_k_xent_fwd(const int64_t *p, const float *x, const int64_t *label, float *loss);
void ad_k_xent_bwd(const int64_t *p, const float *x, const int64_t *label, const float *dloss,
                   float *dx);

/* ONNX NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (kernels_loss.c):
 * scores x viewed as [N, C, D], targets [N, D] (int64, or int32 when is_i32),
 * weight [C] or NULL; p = {N, C, D, reduction, ignore_index, has_ignore,
 * is_i32, dtype, softmax}, dtype AD_K_LOSS_F32, _F64 or _F16 (binary16) for x,
 * weight, loss and log_prob. softmax = 0: x holds log-probabilities; 1: the
 * log-softmax of x over C is taken first and written to log_prob (same shape
 * as x) unless it is NULL. loss is [N, D] (reduction NONE) or one element
 * (SUM; MEAN divides by the sum of the targets' weights). Ignored targets
 * count 0; a target outside [0, C) that is not ignored gives a NaN loss
 * element (and a NaN sum or mean). */
enum { AD_K_LOSS_NONE = 0, AD_K_LOSS_SUM = 1, AD_K_LOSS_MEAN = 2 };
enum { AD_K_LOSS_F32 = 0, AD_K_LOSS_F64 = 1, AD_K_LOSS_F16 = 2 };
void ad_k_nll_loss(const int64_t *p, const void *x, const void *target, const void *weight,
                   void *loss, void *log_prob);

/* Transpose of a dense tensor: p = {rank, dims[rank]..., perm[rank]...};
 * y has dims[perm[i]] at axis i. */
void ad_k_transpose(const int64_t *p, const float *x, float *y);

/* Pad of elements of esize bytes:
 * p = {esize, mode, rank, dims[rank]..., pads_begin[rank]..., pads_end[rank]..., value}
 * mode: AD_K_PAD_*; value: the constant's bytes in the low esize bytes of the slot.
 * Pads may be negative (crop). pad_bwd (float32 only, esize 4) is the gradient:
 * dy cropped back to x's shape (constant), or each dy element added to the x
 * element it was read from (edge, reflect). */
enum { AD_K_PAD_CONSTANT = 0, AD_K_PAD_EDGE = 1, AD_K_PAD_REFLECT = 2 };
void ad_k_pad_fwd(const int64_t *p, const void *x, void *y);
void ad_k_pad_bwd(const int64_t *p, const float *dy, float *dx);

/* Dropout (runtime/kernels_random.c): p = {numel, elem_size, kind, seed, ratio_bits,
 * scale_bits, random, mask_elem_size, mask_one} (ratio and scale as the bits of
 * doubles; kind AD_K_DROPOUT_F32, _F64 or _F16). random = 0: y = x (copied unless
 * the same buffer) and mask (when not NULL) = mask_elem_size-byte copies of
 * the little-endian pattern mask_one. random = 1: numpy's legacy generator
 * seeded with ad_k_dropout_key(seed, *step - 1 (0 when *step is 0), rank of
 * rt (0 when rt is NULL)) draws u in [0, 1) per element in C order;
 * keep = u >= ratio; y = keep * x * scale; mask (bool bytes, may be NULL) = keep. */
enum { AD_K_DROPOUT_F32 = 0, AD_K_DROPOUT_F64 = 1, AD_K_DROPOUT_F16 = 2 };
void ad_k_dropout(const int64_t *p, const void *x, void *y, void *mask, const int64_t *step,
                  void *rt);
/* The MT19937 seed of (seed, 0-based step, worker rank): seed itself for step 0
 * on rank 0, else the top 32 bits of h, where f is splitmix64's finalizer
 * (z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb;
 * z ^= z >> 31) and h = f(f(f(seed ^ 0x9e3779b97f4a7c15) ^ step) ^ rank). */
uint32_t ad_k_dropout_key(uint32_t seed, int64_t step, int64_t rank);

/* y[0] += sum of the n contiguous floats at x; p = {n} (kernels_reduce.c). */
void ad_k_sum_row(const int64_t *p, const float *x, float *y);

/* Gather along one axis (runtime/kernels_index.c): data viewed as [outer, n, inner],
 * idx a flat list of m int64 (or int32 when p[4] = 1) indices, negative ones
 * counting from the end; p = {outer, n, inner, m, idx_is_i32}; y is [outer, m, inner].
 * An index out of range gives a NaN row. scatter_add is its gradient:
 * dx = 0, then dx[o, idx[j], :] += dy[o, j, :] (repeated indices accumulate;
 * out-of-range ones are skipped). */
void ad_k_gather(const int64_t *p, const float *x, const void *idx, float *y);
void ad_k_scatter_add(const int64_t *p, const float *dy, const void *idx, float *dx);

/* Reductions over the axes whose mask is 1 (kernels_reduce.c), y dense over
 * the kept axes: p = {rank, dims[rank]..., mask[rank]..., kind}; ws holds one
 * double per output element (caller's scratch). */
#define AD_K_MAX_RANK 16
enum {
  AD_K_REDUCE_SUM,
  AD_K_REDUCE_MEAN,
  AD_K_REDUCE_MAX,
  AD_K_REDUCE_MIN,
  AD_K_REDUCE_PROD,
  AD_K_REDUCE_L1,
  AD_K_REDUCE_L2,
  AD_K_REDUCE_LOG_SUM,
  AD_K_REDUCE_LOG_SUM_EXP,
  AD_K_REDUCE_SUM_SQUARE,
  AD_K_REDUCE_KIND_COUNT
};
void ad_k_reduce(const int64_t *p, const float *x, float *y, double *ws);
/* Gradient of ReduceMax/ReduceMin (same p; y the forward result): dy is shared
 * evenly among the elements equal to the extremum (PyTorch's amax/amin
 * backward); ws holds one float per output element. */
void ad_k_reduce_minmax_bwd(const int64_t *p, const float *x, const float *y, const float *dy,
                            float *dx, float *ws);
/* ArgMax / ArgMin of x viewed as [outer, n, inner] along n, int64 result
 * [outer, inner]: p = {outer, n, inner, is_min, select_last_index}. */
void ad_k_argmax(const int64_t *p, const float *x, int64_t *y);
/* Hardmax: one-hot (first maximum) along n of x viewed as [outer, n, inner];
 * p = {outer, n, inner}. */
void ad_k_hardmax(const int64_t *p, const float *x, float *y);
/* The same over the other dtypes (suffix f64, f16 (binary16), i8, u8, i32,
 * u32, i64, u64; argmax also i16, u16; hardmax f64, f16), x and y of that
 * dtype. ad_k_reduce_<dt> takes every kind, Sum and Mean included, and ws of
 * 2 * 8 bytes per output element; kernels_reduce.c gives the integer
 * semantics (onnxruntime's). */
#define AD_K_REDUCE_DECL(SUF)                                                                      \
  void ad_k_reduce_##SUF(const int64_t *p, const void *x, void *y, double *ws);                    \
  void ad_k_argmax_##SUF(const int64_t *p, const void *x, int64_t *y);
AD_K_REDUCE_DECL(f64)
AD_K_REDUCE_DECL(f16)
AD_K_REDUCE_DECL(i8)
AD_K_REDUCE_DECL(u8)
AD_K_REDUCE_DECL(i32)
AD_K_REDUCE_DECL(u32)
AD_K_REDUCE_DECL(i64)
AD_K_REDUCE_DECL(u64)
#undef AD_K_REDUCE_DECL
void ad_k_argmax_i16(const int64_t *p, const void *x, int64_t *y);
void ad_k_argmax_u16(const int64_t *p, const void *x, int64_t *y);
void ad_k_hardmax_f64(const int64_t *p, const void *x, void *y);
void ad_k_hardmax_f16(const int64_t *p, const void *x, void *y);

/* Normalization (kernels_norm.c). BatchNormalization views x as [N, C, S]:
 * p = {N, C, S, eps_bits, momentum_bits, flags}.
 * infer: y = (x - mean) / sqrt(var + eps) * scale + bias with the given statistics.
 * train_fwd: the same with the batch's statistics; writes (each may be NULL)
 *   mean_out = mean_in * momentum + batch_mean * (1 - momentum), var_out likewise
 *   with the batch variance (unbiased when p[5] = 1, PyTorch's running_var;
 *   biased otherwise, ONNX's), saved_mean / saved_var = the batch's (biased)
 *   statistics. mean_out may be mean_in (in-place update of running stats).
 * bwd: p[4] = 1: the statistics are the batch's (recomputed from x), else
 *   mean_in / var_in; writes dx, dscale, dbias (each may be NULL). */
void ad_k_bn_infer(const int64_t *p, const float *x, const float *scale, const float *bias,
                   const float *mean, const float *var, float *y);
void ad_k_bn_train_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                       const float *mean_in, const float *var_in, float *y, float *mean_out,
                       float *var_out, float *saved_mean, float *saved_var);
void ad_k_bn_bwd(const int64_t *p, const float *x, const float *scale, const float *mean_in,
                 const float *var_in, const float *dy, float *dx, float *dscale, float *dbias);
/* Synchronized BatchNormalization over several replicas: the generated code
 * all-reduces (sums) the per-channel buffers between these calls; `count` is
 * the global number of values per channel (N * S * replicas).
 * channel_sums: p = {N, C, S, centered, count}: out[c] = local sum of x
 *   (centered 0) or of (x - sum[c] / count)^2 (centered 1).
 * sync_fwd: p = {N, C, S, eps_bits, momentum_bits, count}; sum / sq the global
 *   sums; normalizes and updates mean_run / var_run in place (unbiased var);
 *   saved_mean / saved_var (may be NULL) get the batch's mean and biased variance.
 * sync_bwd_sums: p = {N, C, S, eps_bits, count}: g[c] = local sum of dy,
 *   g[C + c] = local sum of dy * (x - mean); dscale / dbias: this replica's
 *   share (the strategy sums parameter gradients over replicas).
 * sync_bwd: the same p; g the global sums; writes dx. */
void ad_k_bn_channel_sums(const int64_t *p, const float *x, const float *sum, float *out);
void ad_k_bn_sync_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                      const float *sum, const float *sq, float *y, float *mean_run, float *var_run,
                      float *saved_mean, float *saved_var);
void ad_k_bn_sync_bwd_sums(const int64_t *p, const float *x, const float *sum, const float *sq,
                           const float *dy, float *g, float *dscale, float *dbias);
void ad_k_bn_sync_bwd(const int64_t *p, const float *x, const float *scale, const float *sum,
                      const float *sq, const float *g, const float *dy, float *dx);
/* LayerNormalization of the rows of x viewed as [outer, n]: p = {outer, n, eps_bits};
 * scale, bias (bias may be NULL) have n elements; mean_out / invstd_out (may be
 * NULL) get one value per row. bwd recomputes the row statistics from x and
 * writes dx, dscale, dbias (each may be NULL). */
void ad_k_layernorm_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                        float *y, float *mean_out, float *invstd_out);
void ad_k_layernorm_bwd(const int64_t *p, const float *x, const float *scale, const float *dy,
                        float *dx, float *dscale, float *dbias);
/* InstanceNormalization of x viewed as [N, C, S]: p = {N, C, S, eps_bits}. */
void ad_k_instnorm_fwd(const int64_t *p, const float *x, const float *scale, const float *bias,
                       float *y);
/* MeanVarianceNormalization: p = {rank, dims..., mask..., eps_bits}; ws: 2 doubles
 * per kept element. */
void ad_k_mvn_fwd(const int64_t *p, const float *x, float *y, double *ws);
/* LRN across channels of [N, C, S]: p = {N, C, S, size, alpha_bits, beta_bits, bias_bits}. */
void ad_k_lrn_fwd(const int64_t *p, const float *x, float *y);

/* y = (sum of x over the axes whose mask is 1) / div, y dense over the kept
 * axes: p = {rank, dims[rank]..., mask[rank]..., div_bits} (kernels_index.c). */
void ad_k_reduce_axes(const int64_t *p, const float *x, float *y);

/* ---- communication, called from generated code; `rt` is the handle the
 * worker passed to ad_step. Implemented in runtime/comm.c over the backend. ----
 * Starts an in-place sum all-reduce of `count` floats at `buf` as bucket
 * number `bucket` (non-blocking); wait blocks until that bucket is reduced.
 * Every rank starts the same buckets in the same order. */
void ad_rt_allreduce_start(void *rt, int64_t bucket, float *buf, int64_t count);
void ad_rt_allreduce_wait(void *rt, int64_t bucket);
/* Blocking form, for a bucket whose start would be followed by its wait with no
 * compute in between. */
void ad_rt_allreduce(void *rt, float *buf, int64_t count);
/* The same on IEEE binary16 buffers (--compress fp16): the generated code
 * converts the gradients to fp16 before and back to float32 after. */
void ad_rt_allreduce_start_f16(void *rt, int64_t bucket, uint16_t *buf, int64_t count);
void ad_rt_allreduce_f16(void *rt, uint16_t *buf, int64_t count);

/* ---- parameter servers (runtime/ps.c), called from generated code of the
 * server strategies (ps, ps-lb, partitioned-ps, parallax). Server s is MPI
 * rank replicas + s; `shard` indexes the plan's shards list. Per step and
 * server a worker appends segments to its push message (ad_rt_ps_add,
 * ad_rt_ps_add_rows), sends it (ad_rt_ps_push, non-blocking), and before the
 * next step blocks for the server's reply (ad_rt_ps_pull), from which it copies
 * the new values of the dense shards (ad_rt_ps_take). Sparse shards are read
 * on demand (ad_rt_ps_pull_rows, before the lookup that needs them).
 * Failures are recorded like the all-reduce's (ad_comm_check). ---- */
/* Appends the dense gradient of `shard` (`bytes` bytes at src). */
void ad_rt_ps_add(void *rt, int64_t server, int64_t shard, const void *src, int64_t bytes);
/* Appends the rows of a sparse shard that a lookup touched: for each of the m
 * indices idx[j] (int64, or int32 when is_i32; negative ones count from the
 * end of the n_rows-row table, out-of-range ones are skipped) within
 * [row0, row0 + rows), row idx[j] - row0 of the shard gets the `inner` floats
 * of dy row j. Repeated rows are summed in order of j and sent once. */
void ad_rt_ps_add_rows(void *rt, int64_t server, int64_t shard, int64_t row0, int64_t rows,
                       int64_t n_rows, const void *idx, int64_t m, int64_t is_i32, const float *dy,
                       int64_t inner);
/* Sends the appended segments as step `step`'s push (non-blocking). */
void ad_rt_ps_push(void *rt, int64_t server, int64_t step);
/* Blocks until the server's reply to the last push has arrived. */
void ad_rt_ps_pull(void *rt, int64_t server);
/* Copies the new value of dense `shard` (bytes bytes) from that reply to dst. */
void ad_rt_ps_take(void *rt, int64_t server, int64_t shard, void *dst, int64_t bytes);
/* Fetches the current value of the rows of sparse `shard` that idx touches
 * (same index rules as ad_rt_ps_add_rows) into the worker's full copy of the
 * table: global row r is at table + r * inner. Blocking. */
void ad_rt_ps_pull_rows(void *rt, int64_t server, int64_t shard, int64_t row0, int64_t rows,
                        int64_t n_rows, const void *idx, int64_t m, int64_t is_i32, float *table,
                        int64_t inner);

#endif
