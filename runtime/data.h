/*
 * runtime/data.h: what `run` feeds the step function, shared by the launcher
 * (which checks everything before any process starts) and the workers.
 *
 * - the run options (`autodist run PLAN_DIR ...`), parsed strictly;
 * - the data files (.npy), checked against the plan's INPUT/LABEL tensors;
 * - the sample order: step k (0-based) reads stream positions k*B + j,
 *   j in [0, B), where position p is sample p mod N of epoch p / N; replica r
 *   takes the contiguous slice j in [r*b, (r+1)*b), b = B / replicas. Without
 *   --shuffle epoch order is 0..N-1; with --shuffle SEED each epoch is a
 *   Fisher-Yates permutation driven by splitmix64 (ad_data_permutation), the
 *   same on every rank. docs/cli.md gives the same generator in Python.
 */
#ifndef AD_DATA_H
#define AD_DATA_H

#include "npy.h"
#include "plan.h"

#include <stdbool.h>

/* ---- run options ---- */

typedef struct ad_run_bind {
  char *name; /* tensor name */
  char *path; /* .npy file */
} ad_run_bind;

typedef struct ad_run_opts {
  char *plan_dir;
  int n_data, n_out;
  ad_run_bind *data, *out;
  int64_t steps;  /* 0: not given */
  int64_t epochs; /* 0: not given (default: 1 epoch) */
  char *metrics;  /* NULL: none */
  char *save;     /* NULL: none */
  bool shuffle;
  uint64_t seed;
  bool accept_new_hosts;    /* --accept-new-hosts: record unknown host keys */
  char *checkpoint;         /* --checkpoint DIR (NULL: none) */
  int64_t checkpoint_every; /* --checkpoint-every N (0: not given) */
  bool resume;              /* --resume: continue from the last checkpoint in DIR */
} ad_run_opts;

/* Parses argv[1..argc) (argv[0] is the command name): PLAN_DIR then flags, in
 * any order. Unknown flags, missing values, bad numbers, --steps with --epochs,
 * the same name given twice: AD_ERR_INPUT. *opts is owned by the caller
 * (ad_run_opts_free) and zeroed on failure. */
ad_status ad_run_opts_parse(int argc, char **argv, ad_run_opts *opts);
void ad_run_opts_free(ad_run_opts *opts);

/* Checks the options against the plan (every name bound is an input or label
 * of the plan and every input has data; --out only on an inference plan, each
 * naming an output with the batch axis, no two the same file; training-only
 * options on an inference plan) and loads the data files, checking dtype and
 * per-sample shape against the tensors, equal sample counts, and (training) at
 * least one global batch. arrays[i] is the file of opts->data[i]; the caller
 * frees them (ad_npy_free each, then free(arrays)). *n_samples is N. */
ad_status ad_run_data_load(const ad_plan *plan, const ad_run_opts *opts, ad_npy **arrays,
                           int64_t *n_samples);

/* Number of training steps: --steps, or ceil(epochs * N / B) (1 epoch by default). */
int64_t ad_run_steps(const ad_plan *plan, const ad_run_opts *opts, int64_t n_samples);

/* ---- sample order ---- */

/* splitmix64 (Steele, Lea, Flood 2014; Vigna's reference code): advances
 * *state and returns the next 64-bit output. */
uint64_t ad_splitmix64(uint64_t *state);

/* The sample order of `epoch`: perm[i] is the sample at position i. The
 * generator of epoch e is splitmix64 seeded with output number e (0-based) of
 * splitmix64 seeded with `seed`; then for i = n-1 down to 1:
 * j = next() mod (i+1), swap(perm[i], perm[j]) starting from perm = 0..n-1. */
void ad_data_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm);

typedef struct ad_data_order {
  int64_t n;
  bool shuffle;
  uint64_t seed;
  int64_t epoch; /* epoch held in perm; -1 none */
  int64_t *perm; /* owned; NULL without shuffle */
} ad_data_order;

void ad_data_order_init(ad_data_order *o, int64_t n, bool shuffle, uint64_t seed);
/* The sample at stream position p (p >= 0). */
int64_t ad_data_sample(ad_data_order *o, int64_t p);
/* rows[i], i in [0, B / replicas): the samples replica r reads at step k. */
void ad_data_replica_rows(ad_data_order *o, int64_t step, int64_t global_batch, int replica,
                          int replicas, int64_t *rows);
void ad_data_order_free(ad_data_order *o);

/* Bytes of one sample (one row along axis 0) of a loaded array. */
int64_t ad_data_row_bytes(const ad_npy *a);
/* Copies rows `rows[0..n)` of `a` to dst, one after another. */
void ad_data_copy_rows(const ad_npy *a, const int64_t *rows, int64_t n, void *dst);

/* ---- outputs ---- */

/* The temporary file an inference run writes --out file `path` to before it
 * renames it into place: "PATH.<run folder's name>.tmp" with the launcher's
 * $AD_RUN_DIR (so the launcher can remove it after a failed job), else
 * "PATH.pid<PID>.tmp". The caller frees the string. */
char *ad_out_tmp_path(const char *path, const char *run_dir);

#endif
