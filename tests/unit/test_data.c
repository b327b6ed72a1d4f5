/*
 * tests/unit/test_data.c: runtime/data.c. The splitmix64 outputs are the
 * reference vector of Vigna's splitmix64.c for seed 1234567; the permutations
 * are those of the Python generator printed in docs/cli.md (the one users
 * reproduce the --shuffle order with), run with Debian's python3. Option and
 * data errors are checked word for word, since users and scripts read them.
 */
#include "runtime/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* The status is `st` and the message is exactly `msg`. */
#define CHECK_ERR(call, st, msg)                                                                   \
  do {                                                                                             \
    ad_status got_ = (call);                                                                       \
    CHECK(got_ == (st));                                                                           \
    if (strcmp(ad_error_message(), (msg))) {                                                       \
      fprintf(stderr, "%s:%d: message\n  got:  %s\n  want: %s\n", __FILE__, __LINE__,              \
              ad_error_message(), (msg));                                                          \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static void test_splitmix64_reference_vector(void) {
  static const uint64_t want[5] = {6457827717110365317ull, 3203168211198807973ull,
                                   9817491932198370423ull, 4593380528125082431ull,
                                   16408922859458223821ull};
  uint64_t s = 1234567;
  for (int i = 0; i < 5; i++)
    CHECK(ad_splitmix64(&s) == want[i]);
}

static void test_permutations_match_python_generator(void) {
  static const int64_t e0[10] = {4, 6, 7, 0, 9, 5, 1, 2, 3, 8};
  static const int64_t e1[10] = {5, 7, 3, 1, 8, 2, 9, 4, 0, 6};
  static const int64_t s7[5] = {0, 3, 4, 2, 1};
  int64_t p[10];
  ad_data_permutation(42, 0, 10, p);
  CHECK(!memcmp(p, e0, sizeof e0));
  ad_data_permutation(42, 1, 10, p);
  CHECK(!memcmp(p, e1, sizeof e1));
  ad_data_permutation(7, 0, 5, p);
  CHECK(!memcmp(p, s7, sizeof s7));
}

static void test_replica_slices_follow_the_stream(void) {
  /* N = 10, B = 4, 2 replicas (b = 2). Step 2 reads positions 8..11: replica 0
   * gets 8, 9; replica 1 gets 10, 11 = samples 0, 1 of the next epoch. */
  ad_data_order o;
  int64_t rows[2];
  ad_data_order_init(&o, 10, false, 0);
  ad_data_replica_rows(&o, 0, 4, 1, 2, rows);
  CHECK(rows[0] == 2 && rows[1] == 3);
  ad_data_replica_rows(&o, 2, 4, 0, 2, rows);
  CHECK(rows[0] == 8 && rows[1] == 9);
  ad_data_replica_rows(&o, 2, 4, 1, 2, rows);
  CHECK(rows[0] == 0 && rows[1] == 1);
  ad_data_order_free(&o);

  /* Shuffled with seed 42: epoch 0 order then epoch 1 order (lists above). */
  ad_data_order_init(&o, 10, true, 42);
  ad_data_replica_rows(&o, 2, 4, 0, 2, rows);
  CHECK(rows[0] == 3 && rows[1] == 8);
  ad_data_replica_rows(&o, 2, 4, 1, 2, rows);
  CHECK(rows[0] == 5 && rows[1] == 7);
  ad_data_replica_rows(&o, 0, 4, 0, 2, rows); /* back to epoch 0 */
  CHECK(rows[0] == 4 && rows[1] == 6);
  ad_data_order_free(&o);
}

static void test_copy_rows(void) {
  float x[4][3] = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}};
  ad_npy a = {.dtype = "float32", .rank = 2, .dims = {4, 3}, .numel = 12, .data = x};
  int64_t rows[3] = {3, 0, 3};
  float out[9];
  CHECK(ad_data_row_bytes(&a) == 12);
  ad_data_copy_rows(&a, rows, 3, out);
  float want[9] = {9, 10, 11, 0, 1, 2, 9, 10, 11};
  CHECK(!memcmp(out, want, sizeof want));
}

static ad_status parse(ad_run_opts *o, int argc, const char **argv) {
  return ad_run_opts_parse(argc, (char **)argv, o);
}

static void test_options(void) {
  ad_run_opts o;
  const char *ok[] = {"run",       "--data",  "x=a.npy",     "plan",      "--epochs",
                      "3",         "--data",  "label=b.npy", "--shuffle", "0x10",
                      "--metrics", "m.jsonl", "--out",       "y=y.npy"};
  CHECK(parse(&o, 14, ok) == AD_OK);
  CHECK(!strcmp(o.plan_dir, "plan") && o.n_data == 2 && o.n_out == 1 && o.epochs == 3);
  CHECK(!strcmp(o.data[1].name, "label") && !strcmp(o.data[1].path, "b.npy"));
  CHECK(o.shuffle && o.seed == 16 && !strcmp(o.metrics, "m.jsonl") && !o.save && !o.steps);
  ad_run_opts_free(&o);

  const char *unknown[] = {"run", "plan", "--step", "3"};
  CHECK_ERR(parse(&o, 4, unknown), AD_ERR_INPUT,
            "error: unknown option '--step' (did you mean '--steps'?)");
  const char *far[] = {"run", "plan", "--frobnicate"};
  CHECK_ERR(parse(&o, 3, far), AD_ERR_INPUT,
            "error: unknown option '--frobnicate' (see 'autodist run --help')");
  const char *novalue[] = {"run", "plan", "--metrics"};
  CHECK_ERR(parse(&o, 3, novalue), AD_ERR_INPUT, "error: option '--metrics' needs a value");
  const char *both[] = {"run", "plan", "--steps", "3", "--epochs", "1"};
  CHECK_ERR(parse(&o, 6, both), AD_ERR_INPUT, "error: --steps and --epochs are mutually exclusive");
  const char *bad_n[] = {"run", "plan", "--steps", "0"};
  CHECK_ERR(parse(&o, 4, bad_n), AD_ERR_INPUT,
            "error: --steps: expected a positive integer, got '0'");
  const char *bad_bind[] = {"run", "plan", "--data", "x.npy"};
  CHECK_ERR(parse(&o, 4, bad_bind), AD_ERR_INPUT,
            "error: --data: expected NAME=FILE.npy, got 'x.npy'");
  const char *twice[] = {"run", "plan", "--data", "x=a.npy", "--data", "x=b.npy"};
  CHECK_ERR(parse(&o, 6, twice), AD_ERR_INPUT, "error: --data: 'x' given twice");
  const char *noplan[] = {"run", "--steps", "2"};
  CHECK_ERR(parse(&o, 3, noplan), AD_ERR_INPUT,
            "error: missing PLAN_DIR (usage: autodist run PLAN_DIR [options])");
  const char *two_plans[] = {"run", "p1", "p2"};
  CHECK_ERR(parse(&o, 3, two_plans), AD_ERR_INPUT,
            "error: unexpected argument 'p2' (the plan is 'p1')");
}

/* A training plan with input x float32 (b, 3) and label int64 (b), global batch 4. */
static ad_plan_tensor tensors[] = {
    {.name = "x", .role = AD_ROLE_INPUT, .dtype = "float32", .rank = 2, .dims = {2, 3}},
    {.name = "label", .role = AD_ROLE_LABEL, .dtype = "int64", .rank = 1, .dims = {2}},
    {.name = "w", .role = AD_ROLE_PARAM, .dtype = "float32", .rank = 1, .dims = {3}},
    {.name = "y", .role = AD_ROLE_OUTPUT, .dtype = "float32", .rank = 2, .dims = {2, 2}},
};

static void test_data_checks(const char *dir) {
  ad_plan plan = {
      .training = true, .global_batch = 4, .replicas = 2, .n_tensors = 4, .tensors = tensors};
  char x10[512], x10w[512], l10[512], l9[512], xs[512], lf[512];
  snprintf(x10, sizeof x10, "%s/x10.npy", dir);
  snprintf(x10w, sizeof x10w, "%s/x10w.npy", dir);
  snprintf(l10, sizeof l10, "%s/l10.npy", dir);
  snprintf(l9, sizeof l9, "%s/l9.npy", dir);
  snprintf(xs, sizeof xs, "%s/xs.npy", dir);
  snprintf(lf, sizeof lf, "%s/lf.npy", dir);
  float fx[40] = {0};
  int64_t lx[10] = {0};
  CHECK(ad_npy_save(x10, "float32", 2, (int64_t[]){10, 3}, fx) == AD_OK);
  CHECK(ad_npy_save(x10w, "float32", 2, (int64_t[]){10, 4}, fx) == AD_OK);
  CHECK(ad_npy_save(l10, "int64", 1, (int64_t[]){10}, lx) == AD_OK);
  CHECK(ad_npy_save(l9, "int64", 1, (int64_t[]){9}, lx) == AD_OK);
  CHECK(ad_npy_save(xs, "float32", 2, (int64_t[]){3, 3}, fx) == AD_OK);
  CHECK(ad_npy_save(lf, "float32", 1, (int64_t[]){10}, fx) == AD_OK);

  char a1[600], a2[600], msg[2048];
  ad_run_opts o;
  ad_npy *arrays = NULL;
  int64_t n = 0;
#define OPTS(...)                                                                                  \
  do {                                                                                             \
    const char *argv_[] = {"run", "plan", __VA_ARGS__};                                            \
    CHECK(parse(&o, (int)(sizeof argv_ / sizeof *argv_), argv_) == AD_OK);                         \
  } while (0)

  snprintf(a1, sizeof a1, "x=%s", x10);
  snprintf(a2, sizeof a2, "label=%s", l10);
  OPTS("--data", a1, "--data", a2, "--epochs", "3");
  CHECK(ad_run_data_load(&plan, &o, &arrays, &n) == AD_OK);
  CHECK(n == 10 && arrays[0].dims[1] == 3 && !strcmp(arrays[1].dtype, "int64"));
  CHECK(ad_run_steps(&plan, &o, n) == 8); /* ceil(3 * 10 / 4) */
  ad_npy_free(&arrays[0]);
  ad_npy_free(&arrays[1]);
  free(arrays);
  ad_run_opts_free(&o);

  OPTS("--data", a1);
  CHECK(ad_run_steps(&plan, &o, 10) == 3); /* one epoch: ceil(10 / 4) */
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT,
            "error: missing --data label=FILE.npy (label int64 (N,) of the plan)");
  ad_run_opts_free(&o);

  OPTS("--data", a1, "--data", a2, "--data", "w=w.npy");
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT,
            "error: --data w=w.npy: the plan has no input 'w' (inputs: x, label)");
  ad_run_opts_free(&o);

  OPTS("--data", a1, "--data", a2, "--out", "z=z.npy");
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT,
            "error: --out z=z.npy: the plan has no output 'z' (outputs: y)");
  ad_run_opts_free(&o);

  snprintf(a1, sizeof a1, "x=%s", x10w);
  OPTS("--data", a1, "--data", a2);
  snprintf(msg, sizeof msg,
           "%s: error: shape (10, 4) does not fit input 'x' of the plan: float32 (N, 3)", x10w);
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT, msg);
  ad_run_opts_free(&o);

  snprintf(a1, sizeof a1, "x=%s", x10);
  snprintf(a2, sizeof a2, "label=%s", lf);
  OPTS("--data", a1, "--data", a2);
  snprintf(msg, sizeof msg,
           "%s: error: dtype float32 (10,) does not fit label 'label' of the plan: int64 (N,)", lf);
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT, msg);
  ad_run_opts_free(&o);

  snprintf(a2, sizeof a2, "label=%s", l9);
  OPTS("--data", a1, "--data", a2);
  snprintf(msg, sizeof msg,
           "%s: error: 9 samples, but %s has 10 (the data files must have the same number of "
           "samples)",
           l9, x10);
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT, msg);
  ad_run_opts_free(&o);

  char l3[512];
  snprintf(l3, sizeof l3, "%s/l3.npy", dir);
  CHECK(ad_npy_save(l3, "int64", 1, (int64_t[]){3}, lx) == AD_OK);
  snprintf(a1, sizeof a1, "x=%s", xs);
  snprintf(a2, sizeof a2, "label=%s", l3);
  snprintf(msg, sizeof msg, "%s: error: 3 samples, fewer than one global batch (4) of the plan",
           xs);
  OPTS("--data", a1, "--data", a2);
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT, msg);
  ad_run_opts_free(&o);

  /* Inference plans run once over the data: training options are errors,
   * and fewer samples than a batch are fine (the last batch is padded). */
  plan.training = false;
  OPTS("--data", a1, "--data", a2, "--steps", "5");
  CHECK_ERR(ad_run_data_load(&plan, &o, &arrays, &n), AD_ERR_INPUT,
            "error: --steps applies to training plans; plan is an inference plan (it runs once "
            "over the data)");
  ad_run_opts_free(&o);
  OPTS("--data", a1, "--data", a2);
  CHECK(ad_run_data_load(&plan, &o, &arrays, &n) == AD_OK && n == 3);
  if (arrays) {
    ad_npy_free(&arrays[0]);
    ad_npy_free(&arrays[1]);
    free(arrays);
  }
  ad_run_opts_free(&o);
#undef OPTS
}

int main(void) {
  char dir[] = "/tmp/ad_test_data.XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_splitmix64_reference_vector();
  test_permutations_match_python_generator();
  test_replica_slices_follow_the_stream();
  test_copy_rows();
  test_options();
  test_data_checks(dir);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    failures++;
  if (failures)
    fprintf(stderr, "test_data: %d check(s) failed\n", failures);
  return failures != 0;
}
