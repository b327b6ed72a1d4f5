/*
 * runtime/kernels_shape.h: data-movement kernels of compiler/ops/shape.c and
 * compiler/ops/index.c. They work for any dtype by element size (`esize`,
 * bytes), since they only move elements; the few that compute (Range, OneHot
 * indices) take a dtype code (AD_K_F32 ...). Same ABI as runtime/kernels.h:
 * integer parameters in `p`, buffers as pointers, nothing allocated.
 */
#ifndef AD_KERNELS_SHAPE_H
#define AD_KERNELS_SHAPE_H

#include <stdint.h>

/* Dtype codes for the kernels that read or write numbers. */
enum { AD_K_F32 = 0, AD_K_I64 = 1, AD_K_I32 = 2, AD_K_U8 = 3, AD_K_BOOL = 4 };

/* Rank limit of the strided copy (Tile doubles the rank). */
#define AD_K_COPY_MAX_RANK 16

/* dst[dst_off + sum i_k dstr_k] = src[src_off + sum i_k sstr_k] over the index
 * box dims (element offsets and strides; a stride may be 0 or negative):
 * p = {esize, rank, dims[rank], src_off, sstr[rank], dst_off, dstr[rank]}.
 * Slice, Expand, Tile, Concat, Split, DepthToSpace, SpaceToDepth, Transpose. */
void ad_k_copy_strided(const int64_t *p, const void *src, void *dst);

/* dst[0..n) = the element `value` (its bytes in the low esize bytes of the
 * slot): p = {esize, n, value}. */
void ad_k_fill(const int64_t *p, void *dst);

/* Gather of elements of esize bytes: data viewed [outer, n, inner], indices
 * flat (m entries, int64 or int32, negative from the end):
 * p = {esize, outer, n, inner, m, idx_is_i32}. An index out of range writes
 * zero bytes. */
void ad_k_gather_bytes(const int64_t *p, const void *x, const void *idx, void *y);

/* y[i] = start + i * delta for i < n, in dtype: p = {dtype, n, start, delta}
 * (start and delta as int64, or the float bits for AD_K_F32). */
void ad_k_range(const int64_t *p, void *y);

/* GatherElements: y[i] = x[i with axis coordinate replaced by idx[i]]:
 * p = {esize, rank, axis, idx_is_i32, idims[rank], xdims[rank]}. */
void ad_k_gather_elements(const int64_t *p, const void *x, const void *idx, void *y);

/* GatherND with b batch dims: x viewed [B, X...], idx viewed [B, M, k],
 * y viewed [B, M, S] (S = elements of one gathered slice):
 * p = {esize, B, M, k, S, xbatch (elements of x per batch entry), idx_is_i32,
 *      xdims[k] (the k indexed extents), xstr[k] (their strides, elements)}. */
void ad_k_gather_nd(const int64_t *p, const void *x, const void *idx, void *y);

/* OneHot: y[o, d, i] = values[idx[o, i] == d (after adding depth to a
 * negative index)]: p = {esize, outer, depth, inner, idx_dtype}. */
void ad_k_onehot(const int64_t *p, const void *idx, const void *values, void *y);

/* Trilu over the last two axes of [batch, N, M]: keeps j - i >= k (upper) or
 * j - i <= k (lower), zero elsewhere: p = {esize, batch, N, M, k, upper}. */
void ad_k_trilu(const int64_t *p, const void *x, void *y);

/* EyeLike: y[N, M] = one where j - i == k, zero elsewhere:
 * p = {esize, N, M, k, one} (one's bytes in the slot). */
void ad_k_eye(const int64_t *p, void *y);

#endif
