/*
 * runtime/npy.h: NumPy .npy files (format 1.0-3.0), the data format of
 * `run --data` and `--out`. Supported dtypes: <f4, <f8 (converted to float32 on
 * load), <i8, <i4 (converted to int64 on load), |u1, |b1. C order only; a
 * Fortran-ordered or big-endian file is an input error naming the file.
 */
#ifndef AD_NPY_H
#define AD_NPY_H

#include "../common/ad.h"

typedef struct ad_npy {
  char dtype[16];   /* after conversion: "float32" or "int64" (or "uint8", "bool") */
  int rank;
  int64_t dims[8];
  int64_t numel;
  void *data;       /* owned; numel elements of dtype */
} ad_npy;

/* Loads a file; floats become float32 and integers int64. */
ad_status ad_npy_load(const char *path, ad_npy *out);
ad_status ad_npy_load_buffer(const char *path, const void *buf, size_t len, ad_npy *out);
/* Writes an array of dtype "float32", "int64", "int32", "uint8" or "bool",
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
/* Narrows a loaded int64 array to int32 in place (for a model input of type
 * int32, since integer files load as int64); a value outside int32 is an input
 * error naming the file and the element. */
ad_status ad_npy_narrow_int32(const char *path, ad_npy *a);

#endif
