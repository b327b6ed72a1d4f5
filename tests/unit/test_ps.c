/*
 * tests/unit/test_ps.c: the pure parts of the parameter-server runtime
 * (runtime/ps.c): which rows a lookup touches and how their gradients are
 * summed (the same rows, order and float sums as the scatter-add of a dense
 * gradient), and push messages built and read back, with the checks a server
 * makes on what it receives. The MPI traffic itself is exercised by running
 * plans (tests/e2e, tests/ref).
 */
#include "runtime/ps.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"

/* A plan with what the message checks read: two servers, a dense 2x3
 * parameter on server 0, and a 6-row table of 2 floats split over server 0
 * (rows 0..3, sparse) and server 1 (rows 4..5, sparse). */
static ad_plan_tensor tensors[] = {
    {.name = "w",
     .role = AD_ROLE_PARAM,
     .dtype = "float32",
     .rank = 2,
     .dims = {2, 3},
     .bytes = 24},
    {.name = "emb",
     .role = AD_ROLE_PARAM,
     .dtype = "float32",
     .rank = 2,
     .dims = {6, 2},
     .offset = 24,
     .bytes = 48},
};
static ad_plan_shard shards[] = {
    {.var = "w", .server = 0, .row0 = 0, .rows = 2, .row_bytes = 12},
    {.var = "emb", .server = 0, .row0 = 0, .rows = 4, .row_bytes = 8, .sparse = true},
    {.var = "emb", .server = 1, .row0 = 4, .rows = 2, .row_bytes = 8, .sparse = true},
};

static ad_plan test_plan(void) {
  return (ad_plan){.training = true,
                   .replicas = 2,
                   .n_servers = 2,
                   .n_tensors = 2,
                   .tensors = tensors,
                   .n_shards = 3,
                   .shards = shards};
}

static void test_rows_touched(void) {
  /* Table of 6 rows; the shard holds rows 2..4. -1 is row 5 (outside), 7 and
   * -7 are out of range, -4 is row 2. */
  int64_t idx[] = {3, -1, 3, 7, 2, -4, 4, -7};
  float dy[8 * 2];
  for (int j = 0; j < 8; j++) {
    dy[2 * j] = (float)(j + 1);
    dy[2 * j + 1] = (float)(10 * (j + 1));
  }
  int64_t ids[8];
  float sums[8 * 2];
  int64_t n = ad_ps_rows_touched(idx, 8, false, 6, 2, 3, dy, 2, ids, sums);
  CHECK(n == 3);
  /* local rows ascending: 0 (row 2: j = 4, 5), 1 (row 3: j = 0, 2), 2 (row 4: j = 6) */
  CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2);
  CHECK(sums[0] == 5 + 6 && sums[1] == 50 + 60);
  CHECK(sums[2] == 1 + 3 && sums[3] == 10 + 30);
  CHECK(sums[4] == 7 && sums[5] == 70);

  /* The same with int32 indices and without sums. */
  int32_t idx32[] = {3, -1, 3, 7, 2, -4, 4, -7};
  int64_t ids32[8];
  CHECK(ad_ps_rows_touched(idx32, 8, true, 6, 2, 3, NULL, 0, ids32, NULL) == 3);
  CHECK(ids32[0] == 0 && ids32[1] == 1 && ids32[2] == 2);

  /* Repeated rows are summed from 0 in order of j, as ad_k_scatter_add does:
   * ((0 + 1e8) + 1) + -1e8 is 0 in float32 (1e8 + 1 rounds to 1e8), while
   * another order (1e8 - 1e8 first) would give 1. */
  int64_t rep[] = {0, 0, 0};
  float big[] = {1e8f, 1.0f, -1e8f};
  float s;
  int64_t one;
  CHECK(ad_ps_rows_touched(rep, 3, false, 1, 0, 1, big, 1, &one, &s) == 1);
  CHECK(one == 0 && s == 0.0f);

  /* No index in the shard: nothing. */
  int64_t none[] = {0, 1, 5};
  CHECK(ad_ps_rows_touched(none, 3, false, 6, 2, 3, dy, 2, ids, sums) == 0);
}

static void test_push_round_trip(void) {
  ad_plan p = test_plan();
  ad_ps_msg m = {0};
  ad_ps_msg_begin(&m, 7);
  float w[6] = {1, 2, 3, 4, 5, 6};
  ad_ps_msg_add(&m, 0, w, sizeof w);
  /* Lookup of rows 1, 3, 1, 5 of emb (row 5 is on server 1): shard 1 gets
   * rows 1 and 3. */
  int64_t idx[] = {1, 3, 1, 5};
  float dy[] = {1, 2, 3, 4, 5, 6, 7, 8};
  CHECK(ad_ps_msg_add_rows(&m, 1, 0, 4, 6, idx, 4, false, dy, 2) == 2);
  /* A lookup that touches none of the shard's rows adds no segment. */
  int64_t far[] = {4, 5};
  CHECK(ad_ps_msg_add_rows(&m, 1, 0, 4, 6, far, 2, false, dy, 2) == 0);
  /* header 16 + whole segment (24 + 24) + rows segment (24 + 2 ids + 2 rows of 8) */
  CHECK(m.len == 16 + 48 + 24 + 16 + 16);
  int64_t step, n_seg;
  memcpy(&step, m.data, 8);
  memcpy(&n_seg, m.data + 8, 8);
  CHECK(step == 7 && n_seg == 2);

  int64_t pos = 16;
  ad_ps_seg seg;
  CHECK(ad_ps_msg_next(&p, 0, m.data, m.len, &pos, &seg) == AD_OK);
  CHECK(seg.shard == 0 && !seg.rows && seg.n == 24 && !memcmp(seg.data, w, 24));
  CHECK(ad_ps_msg_next(&p, 0, m.data, m.len, &pos, &seg) == AD_OK);
  CHECK(seg.shard == 1 && seg.rows && seg.n == 2 && seg.ids[0] == 1 && seg.ids[1] == 3);
  const float *rows = (const float *)seg.data;
  CHECK(rows[0] == 1 + 5 && rows[1] == 2 + 6 && rows[2] == 3 && rows[3] == 4);
  CHECK(pos == m.len);

  /* A server reads only its own shards. */
  pos = 16;
  CHECK(ad_ps_msg_next(&p, 1, m.data, m.len, &pos, &seg) == AD_ERR_JOB);
  CHECK_STR(ad_error_message(), "error: parameter server: segment of shard 0, which is on another "
                                "server");
  /* Truncated. */
  pos = 16;
  CHECK(ad_ps_msg_next(&p, 0, m.data, 16 + 40, &pos, &seg) == AD_ERR_JOB);
  CHECK_STR(ad_error_message(), "error: parameter server: truncated segment of shard 0");
  ad_ps_msg_free(&m);
}

/* One hand-made segment {shard, kind, n} + body, read back by a server. */
static void expect_bad_segment(int64_t shard, int64_t kind, int64_t n, const int64_t *body,
                               int n_body, const char *want) {
  ad_plan p = test_plan();
  int64_t msg[16] = {1, 1, shard, kind, n};
  memcpy(msg + 5, body, (size_t)n_body * 8);
  int64_t pos = 16;
  ad_ps_seg seg;
  CHECK(ad_ps_msg_next(&p, -1, (const char *)msg, (5 + n_body) * 8, &pos, &seg) == AD_ERR_JOB);
  CHECK_STR(ad_error_message(), want);
}

static void test_bad_segments(void) {
  int64_t body[4] = {0, 0, 0, 0};
  expect_bad_segment(3, 0, 8, body, 1,
                     "error: parameter server: segment of shard 3, which the "
                     "plan does not have");
  expect_bad_segment(0, 0, 16, body, 2,
                     "error: parameter server: shard 0 ('w') has 24 bytes, a "
                     "segment of it 16");
  expect_bad_segment(0, 1, 1, body, 2,
                     "error: parameter server: rows of shard 0 ('w'), which is "
                     "not sparse");
  expect_bad_segment(2, 1, 3, body, 4, "error: parameter server: 3 rows of shard 2 ('emb')");
  int64_t bad_row[2] = {2, 0};
  expect_bad_segment(2, 1, 1, bad_row, 2,
                     "error: parameter server: row 2 of shard 2 ('emb', 2 "
                     "rows)");
  expect_bad_segment(2, 5, 1, body, 2, "error: parameter server: segment kind 5");
}

int main(void) {
  test_rows_touched();
  test_push_round_trip();
  test_bad_segments();
  if (failures)
    fprintf(stderr, "test_ps: %d failure(s)\n", failures);
  else
    printf("test_ps: ok\n");
  return failures != 0;
}
