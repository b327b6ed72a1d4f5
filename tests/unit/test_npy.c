/*
 * tests/unit/test_npy.c: the .npy reader and writer against NumPy itself.
 * NumPy (Debian's /usr/bin/python3) writes reference files into a temporary
 * folder; the reader must return their exact contents, the writer must produce
 * byte-identical files, and every malformed file must fail with its message.
 */
#include "runtime/npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char dir[64];

static const char *at(const char *name) {
  static char buf[8][256];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

/* NumPy writes the reference files. Values are small integers so that every
 * dtype holds them exactly. */
static const char gen_script[] =
    "import sys, numpy as np\n"
    "d = sys.argv[1]\n"
    "a = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1\n"
    "np.save(d + '/f4.npy', a)\n"
    "np.save(d + '/f8.npy', a.astype(np.float64) + 0.25)\n"
    "np.save(d + '/i4.npy', np.array([[-3, 7], [2**31 - 1, -2**31]], dtype=np.int32))\n"
    "np.save(d + '/i8.npy', np.array([2**40, -5, 0], dtype=np.int64))\n"
    "np.save(d + '/u1.npy', np.array([0, 200, 255], dtype=np.uint8))\n"
    "np.save(d + '/f2.npy', np.array([1.5, -2, 65504], dtype=np.float16))\n"
    "np.save(d + '/i1.npy', np.array([-128, 5, 127], dtype=np.int8))\n"
    "np.save(d + '/i2.npy', np.array([-32768, 5, 32767], dtype=np.int16))\n"
    "np.save(d + '/u2.npy', np.array([0, 16256, 65535], dtype=np.uint16))\n"
    "np.save(d + '/u4.npy', np.array([0, 7, 2**32 - 1], dtype=np.uint32))\n"
    "np.save(d + '/u8.npy', np.array([0, 7, 2**64 - 1], dtype=np.uint64))\n"
    "np.save(d + '/big.npy', np.array([2**31], dtype=np.int64))\n"
    "np.save(d + '/b1.npy', np.array([True, False, True]))\n"
    "np.save(d + '/scalar.npy', np.float32(3.5))\n"
    "np.save(d + '/empty.npy', np.zeros((0, 3), np.float32))\n"
    "np.save(d + '/r4.npy', np.arange(24, dtype=np.int64).reshape(1, 2, 3, 4))\n"
    "with open(d + '/v2.npy', 'wb') as f:\n"
    "    np.lib.format.write_array(f, a, version=(2, 0))\n"
    "np.save(d + '/fortran.npy', np.asfortranarray(a))\n"
    "np.save(d + '/be.npy', a.astype('>f4'))\n"
    "np.save(d + '/c8.npy', a.astype(np.complex64))\n"
    "raw = open(d + '/f4.npy', 'rb').read()\n"
    "open(d + '/trunc_data.npy', 'wb').write(raw[:-5])\n"
    "open(d + '/trunc_hdr.npy', 'wb').write(raw[:40])\n"
    "open(d + '/bad_magic.npy', 'wb').write(b'PK' + raw[2:])\n"
    "open(d + '/bad_hdr.npy', 'wb').write(raw.replace(b\"'shape': (2, 3)\", b\"'shape': [2, "
    "3]\"))\n"
    "np.save(d + '/ref_f4.npy', a)\n"
    "np.save(d + '/ref_i8.npy', np.array([1, -2, 3], dtype=np.int64))\n"
    "np.save(d + '/ref_scalar.npy', np.float32(3.5))\n"
    "np.save(d + '/ref_r3.npy', np.zeros((2, 1, 4), np.float32))\n"
    "np.save(d + '/ref_i4.npy', np.array([[-3, 7], [2**31 - 1, -2**31]], dtype=np.int32))\n";

static int same_file(const char *a, const char *b) {
  char *x, *y;
  size_t nx, ny;
  if (ad_file_read(a, &x, &nx) || ad_file_read(b, &y, &ny))
    return 0;
  int same = nx == ny && !memcmp(x, y, nx);
  free(x);
  free(y);
  return same;
}

static void test_read_numpy_files(void) {
  ad_npy a;
  CHECK(ad_npy_load(at("f4.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "float32") && a.rank == 2 && a.dims[0] == 2 && a.dims[1] == 3);
  CHECK(a.numel == 6);
  for (int i = 0; i < 6 && a.data; i++)
    CHECK(((float *)a.data)[i] == i * 0.5f - 1);
  ad_npy_free(&a);

  /* Files load with their dtype; ad_npy_fit converts what a float32 or
   * int64 tensor accepts. */
  CHECK(ad_npy_load(at("f8.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "float64") && a.rank == 2 && a.numel == 6);
  for (int i = 0; i < 6 && a.data; i++)
    CHECK(((double *)a.data)[i] == i * 0.5 - 0.75);
  CHECK(ad_npy_fit("f8.npy", &a, "float32") == AD_OK && !strcmp(a.dtype, "float32"));
  for (int i = 0; i < 6 && a.data; i++)
    CHECK(((float *)a.data)[i] == i * 0.5f - 0.75f);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("i4.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "int32") && a.rank == 2 && a.numel == 4);
  CHECK(ad_npy_fit("i4.npy", &a, "int64") == AD_OK && !strcmp(a.dtype, "int64"));
  if (a.data) {
    int64_t *v = a.data;
    CHECK(v[0] == -3 && v[1] == 7 && v[2] == 2147483647 && v[3] == -2147483648LL);
  }
  CHECK(ad_npy_fit("i4.npy", &a, "int32") == AD_OK && !strcmp(a.dtype, "int32"));
  if (a.data)
    CHECK(((int32_t *)a.data)[3] == INT32_MIN);
  CHECK(ad_npy_fit("i4.npy", &a, "uint8") == AD_OK && !strcmp(a.dtype, "int32")); /* no match */
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("big.npy"), &a) == AD_OK);
  CHECK(ad_npy_fit("big.npy", &a, "int32") == AD_ERR_INPUT);
  CHECK(!strcmp(ad_error_message(),
                "big.npy: error: element 0 (2147483648) does not fit the int32 input"));
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("f2.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "float16") && a.numel == 3);
  if (a.data) /* 1.5, -2, 65504 in binary16 */
    CHECK(((uint16_t *)a.data)[0] == 0x3e00 && ((uint16_t *)a.data)[1] == 0xc000 &&
          ((uint16_t *)a.data)[2] == 0x7bff);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("i1.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "int8") && a.data && ((int8_t *)a.data)[0] == -128);
  ad_npy_free(&a);
  CHECK(ad_npy_load(at("i2.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "int16") && a.data && ((int16_t *)a.data)[2] == 32767);
  ad_npy_free(&a);
  CHECK(ad_npy_load(at("u4.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "uint32") && a.data && ((uint32_t *)a.data)[2] == UINT32_MAX);
  ad_npy_free(&a);
  CHECK(ad_npy_load(at("u8.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "uint64") && a.data && ((uint64_t *)a.data)[2] == UINT64_MAX);
  ad_npy_free(&a);
  /* uint16 bits are a bfloat16 tensor's data (numpy has no bfloat16) */
  CHECK(ad_npy_load(at("u2.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "uint16") && a.data && ((uint16_t *)a.data)[1] == 16256);
  CHECK(ad_npy_fit("u2.npy", &a, "bfloat16") == AD_OK && !strcmp(a.dtype, "bfloat16"));
  CHECK(((uint16_t *)a.data)[1] == 16256);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("i8.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "int64") && a.rank == 1 && a.dims[0] == 3);
  if (a.data) {
    int64_t *v = a.data;
    CHECK(v[0] == (int64_t)1 << 40 && v[1] == -5 && v[2] == 0);
  }
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("u1.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "uint8") && a.numel == 3);
  if (a.data)
    CHECK(((uint8_t *)a.data)[1] == 200 && ((uint8_t *)a.data)[2] == 255);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("b1.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "bool") && a.numel == 3);
  if (a.data)
    CHECK(((uint8_t *)a.data)[0] == 1 && ((uint8_t *)a.data)[1] == 0);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("scalar.npy"), &a) == AD_OK);
  CHECK(a.rank == 0 && a.numel == 1 && a.data && *(float *)a.data == 3.5f);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("empty.npy"), &a) == AD_OK);
  CHECK(a.rank == 2 && a.dims[0] == 0 && a.dims[1] == 3 && a.numel == 0);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("r4.npy"), &a) == AD_OK);
  CHECK(!strcmp(a.dtype, "int64"));
  CHECK(a.rank == 4 && a.dims[3] == 4 && a.numel == 24 && ((int64_t *)a.data)[23] == 23);
  ad_npy_free(&a);

  CHECK(ad_npy_load(at("v2.npy"), &a) == AD_OK);
  CHECK(a.rank == 2 && a.numel == 6 && ((float *)a.data)[5] == 1.5f);
  ad_npy_free(&a);
}

/* Loads `name`, expects AD_ERR_INPUT and the message `want` after "DIR/name: ". */
static void expect_error(const char *name, const char *want) {
  ad_npy a;
  ad_status st = ad_npy_load(at(name), &a);
  char full[512];
  snprintf(full, sizeof full, "%s: %s", at(name), want);
  CHECK(st == AD_ERR_INPUT);
  if (strcmp(ad_error_message(), full)) {
    fprintf(stderr, "%s: got message\n  %s\nwant\n  %s\n", name, ad_error_message(), full);
    failures++;
  }
  CHECK(a.data == NULL);
}

static void test_errors(void) {
  expect_error("fortran.npy",
               "error: Fortran-ordered arrays are not supported (save a C-ordered copy)");
  expect_error("be.npy", "error: big-endian dtype '>f4' is not supported (save it little-endian)");
  expect_error("c8.npy", "error: dtype '<c8' is not supported (float16/32/64, int8/16/32/64, "
                         "uint8/16/32/64, bool)");
  expect_error("trunc_data.npy", "error: truncated data: shape (2, 3) needs 24 bytes, file has 19");
  expect_error("trunc_hdr.npy", "error: truncated .npy header");
  expect_error("bad_magic.npy", "error: not a .npy file (bad magic)");
  expect_error("bad_hdr.npy", "error: malformed .npy header: shape must be a tuple");
  expect_error("missing.npy", "error: cannot open: No such file or directory");
}

/* The writer's bytes equal np.save's for the same array. */
static void test_write_matches_numpy(void) {
  float f[6];
  for (int i = 0; i < 6; i++)
    f[i] = i * 0.5f - 1;
  int64_t d23[2] = {2, 3};
  CHECK(ad_npy_save(at("out_f4.npy"), "float32", 2, d23, f) == AD_OK);
  CHECK(same_file(at("out_f4.npy"), at("ref_f4.npy")));

  int64_t i8[3] = {1, -2, 3}, d3[1] = {3};
  CHECK(ad_npy_save(at("out_i8.npy"), "int64", 1, d3, i8) == AD_OK);
  CHECK(same_file(at("out_i8.npy"), at("ref_i8.npy")));

  float s = 3.5f;
  CHECK(ad_npy_save(at("out_scalar.npy"), "float32", 0, NULL, &s) == AD_OK);
  CHECK(same_file(at("out_scalar.npy"), at("ref_scalar.npy")));

  float z[8] = {0};
  int64_t d214[3] = {2, 1, 4};
  CHECK(ad_npy_save(at("out_r3.npy"), "float32", 3, d214, z) == AD_OK);
  CHECK(same_file(at("out_r3.npy"), at("ref_r3.npy")));

  /* int32 (an inference output), and the header alone for a streaming
   * writer (run --out): the same bytes as np.save's. */
  int32_t i4[4] = {-3, 7, INT32_MAX, INT32_MIN};
  int64_t d22[2] = {2, 2};
  CHECK(ad_npy_save(at("out_i4.npy"), "int32", 2, d22, i4) == AD_OK);
  CHECK(same_file(at("out_i4.npy"), at("ref_i4.npy")));
  char head[AD_NPY_HEADER_MAX], *ref;
  size_t esize = 0, n = ad_npy_header(head, sizeof head, "int32", 2, d22, &esize), ref_len;
  CHECK(n == 128 && esize == 4);
  CHECK(ad_file_read(at("ref_i4.npy"), &ref, &ref_len) == AD_OK && ref_len == n + 16 &&
        !memcmp(ref, head, n));
  free(ref);
  CHECK(ad_npy_header(head, sizeof head, "complex64", 2, d22, &esize) == 0);

  /* Round trip through our own reader. */
  ad_npy a;
  CHECK(ad_npy_load(at("out_i8.npy"), &a) == AD_OK);
  CHECK(a.rank == 1 && a.numel == 3 && ((int64_t *)a.data)[1] == -2);
  ad_npy_free(&a);

  CHECK(ad_npy_save(at("out_bad.npy"), "complex64", 1, d3, f) == AD_ERR_INPUT);

  /* The new dtypes as numpy writes them. */
  uint16_t h[3] = {0x3e00, 0xc000, 0x7bff};
  CHECK(ad_npy_save(at("out_f2.npy"), "float16", 1, d3, h) == AD_OK);
  CHECK(same_file(at("out_f2.npy"), at("f2.npy")));
  uint64_t u8[3] = {0, 7, UINT64_MAX};
  CHECK(ad_npy_save(at("out_u8.npy"), "uint64", 1, d3, u8) == AD_OK);
  CHECK(same_file(at("out_u8.npy"), at("u8.npy")));
  uint16_t bf[3] = {0, 16256, 65535};
  CHECK(ad_npy_save(at("out_bf.npy"), "bfloat16", 1, d3, bf) == AD_OK);
  CHECK(same_file(at("out_bf.npy"), at("u2.npy")));
}

/* NumPy reads what the writer wrote. */
static void test_numpy_reads_ours(void) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c \"import numpy as np; a = np.load('%s'); "
           "assert a.dtype == np.float32 and a.shape == (2, 3), a; "
           "assert (a == np.arange(6).reshape(2, 3) * 0.5 - 1).all(); "
           "b = np.load('%s'); assert b.dtype == np.int64 and list(b) == [1, -2, 3]\"",
           at("out_f4.npy"), at("out_i8.npy"));
  CHECK(system(cmd) == 0);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ad_test_npy_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  char script[128], cmd[512];
  snprintf(script, sizeof script, "%s/gen.py", dir);
  if (ad_file_write(script, gen_script, strlen(gen_script)) != AD_OK) {
    fprintf(stderr, "%s\n", ad_error_message());
    return 1;
  }
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s", script, dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_npy: numpy could not write the reference files\n");
    return 1;
  }
  test_read_numpy_files();
  test_errors();
  test_write_matches_numpy();
  test_numpy_reads_ours();
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "test_npy: could not remove %s\n", dir);
  if (failures)
    fprintf(stderr, "test_npy: %d check(s) failed\n", failures);
  else
    printf("test_npy: ok\n");
  return failures != 0;
}
