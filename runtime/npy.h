/*
 * runtime/npy.h: NumPy .npy files (format 1.0-3.0), the data format of
 * `run --data`, `infer --data` and `--out`. Dtypes: float16/32/64,
 * int8/16/32/64, uint8/16/32/64 and bool, loaded as they are; ad_npy_fit then
 * converts what a tensor of another dtype accepts. C order only; a
 * Fortran-ordered or big-endian file is an input error naming the file.
 */
#ifndef AD_NPY_H
#define AD_NPY_H

#include "../common/ad.h"

typedef struct ad_npy {
  char dtype[16]; /* ad_dtype_name's names: "float32", "int64", "bool", ... */
  int rank;
  int64_t dims[8];
  int64_t numel;
  void *data; /* owned; numel elements of dtype */
} ad_npy;

/* Loads a file with its dtype. */
ad_status ad_npy_load(const char *path, ad_npy *out);
ad_status ad_npy_load_buffer(const char *path, const void *buf, size_t len, ad_npy *out);
/* Writes an array of one of those dtypes (bfloat16 as its bits, '<u2'),
 * atomically (a temporary file renamed into place). */
ad_status ad_npy_save(const char *path, const char *dtype, int rank, const int64_t *dims,
                      const void *data);
/* The .npy header (format 1.0) of such an array into buf (cap >=
 * AD_NPY_HEADER_MAX), for a writer that streams the data after it; returns its
 * length, 0 for a dtype not listed above. *elem_size (may be NULL): bytes per
 * element. */
#define AD_NPY_HEADER_MAX 640
size_t ad_npy_header(char *buf, size_t cap, const char *dtype, int rank, const int64_t *dims,
                     size_t *elem_size);
void ad_npy_free(ad_npy *a);
/* Converts a loaded array for a tensor of `dtype` where a file of its dtype
 * is accepted: float64 -> float32, int32 -> int64, int64 -> int32 (each value
 * must fit: else an input error naming the file and the element), uint16 ->
 * bfloat16 (the bits). Any other pair is left as it is, for the caller's
 * dtype check. */
ad_status ad_npy_fit(const char *path, ad_npy *a, const char *dtype);

#endif
