/*
 * runtime/worker.c: `autodist __worker PLAN [run options]`, one process of a
 * job, started by `autodist run` through mpirun (rank and size come from MPI).
 *
 * A process whose plan device is a parameter server (ranks from `replicas`
 * on) runs the server loop of runtime/ps.c instead and prints nothing; the
 * collectives below (loss and byte sums, output gathers) run over the workers
 * only (ad_comm_set_workers). With servers, each worker tells them it is done
 * after its last step, and worker 0 takes the servers' final weights into its
 * arena before --save. Checkpoints (--checkpoint, --resume) are
 * runtime/checkpoint.c's: worker 0 writes one after the steps it names, and
 * a resumed run starts its loop after the checkpoint's step.
 *
 * A worker loads the plan, pins itself to its CPU core, JIT-compiles its
 * device module for this CPU, lays out its arena (parameters from
 * weights.bin, everything else zero), and then runs the step loop: copy its
 * slice of the global batch into the INPUT/LABEL tensors (runtime/data.h has
 * the order), call ad_step(mem, comm, k + 1), and sum the loss and the bytes
 * sent over the ranks once per step for --metrics. Inference plans run
 * ad_forward over the data once, in order, and gather each batch's outputs to
 * rank 0, which streams them into temporary files renamed into place at the
 * end (the launcher removes them if the job fails).
 *
 * The launcher watches files in $AD_RUN_DIR: rank<R>.pid ("PID HOST") at
 * start, rank<R>.done at a clean end, rank<R>.err (the message) on failure.
 * A failing worker exits without MPI_Finalize, so mpirun stops the others; the
 * launcher reports the message, which is why the worker does not print it too.
 *
 * On another node of a multi-node job there is no $AD_RUN_DIR the launcher
 * could read; with $AD_MARKERS set the same three reports travel as marker
 * lines on stderr ("@autodist:pid PID HOST", "@autodist:done",
 * "@autodist:err MESSAGE"), which mpirun forwards to the launcher. Two hidden
 * forms serve the launcher of a multi-node job: `__worker --job ID ...` only
 * puts the job's id on the command line (so that `run` can find what is left
 * of the job on a node with pkill -f), and `__worker --verify-staged PLAN
 * [FILE]...` checks, without MPI, a plan staged on a node and data files
 * named by their SHA-256 ("HASH.npy"): exit 0 when all are valid, else 1 with
 * one "bad PATH" line per invalid one on stdout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_setaffinity */
#endif
#include "../cli/commands.h"
#include "checkpoint.h"
#include "comm.h"
#include "data.h"
#include "jit.h"
#include "onnx_save.h"
#include "plan.h"
#include "ps.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* OpenBLAS's own control; the workers are the parallelism, one thread each. */
extern void openblas_set_num_threads(int n);

typedef void (*step_fn)(char *mem, void *rt, int64_t step);
typedef void (*forward_fn)(char *mem, void *rt);

typedef struct worker {
  ad_run_opts opts;
  ad_plan *plan;
  ad_comm *comm;
  int rank; /* in the job (workers: also among the workers) */
  int size; /* processes of the job; after setup, on a worker: the workers */
  const ad_plan_device *device;
  ad_ps_worker *ps; /* with servers: this worker's side of them */
  ad_jit *jit;
  char *mem;
  ad_npy *arrays;               /* one per opts.data */
  const ad_plan_tensor **feeds; /* the tensor each array feeds */
  int64_t n_samples;
  int64_t local_batch; /* b = B / replicas */
  FILE *metrics;
  bool tty;
  double last_print; /* of the progress line */
} worker;

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *plan_path(const ad_plan *plan, const char *name) {
  size_t n = strlen(plan->dir) + strlen(name) + 2;
  char *p = ad_xmalloc(n);
  snprintf(p, n, "%s/%s", plan->dir, name);
  return p;
}

/* Whether status reports go to stderr as marker lines (a node without the
 * launcher's run folder). */
static bool status_markers(void) {
  const char *dir = getenv("AD_RUN_DIR"), *m = getenv("AD_MARKERS");
  return (!dir || !*dir) && m && !strcmp(m, "1");
}

/* $AD_RUN_DIR/rank<R>.<ext> with `text`, or the marker line
 * "@autodist:<ext> <text>" (newlines made spaces: one line); no-op when run
 * by hand. */
static void write_status_file(int rank, const char *ext, const char *text) {
  const char *dir = getenv("AD_RUN_DIR");
  if (status_markers()) {
    char *line = ad_xstrdup(text);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
      line[--n] = 0;
    for (char *c = line; *c; c++)
      if (*c == '\n' || *c == '\r')
        *c = ' ';
    fprintf(stderr, "@autodist:%s%s%s\n", ext, *line ? " " : "", line);
    fflush(stderr);
    free(line);
    return;
  }
  if (!dir || !*dir)
    return;
  char path[4096];
  snprintf(path, sizeof path, "%s/rank%d.%s", dir, rank, ext);
  ad_status st = ad_file_write(path, text, strlen(text));
  (void)st; /* the launcher also notices a vanished process without the file */
}

/* ---- setup ---- */

static ad_status check_plan(worker *w) {
  const ad_plan *p = w->plan;
  if (w->size != p->n_devices || p->n_devices != p->replicas + p->n_servers)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: the plan has %d devices (%d replicas, %d servers) but the job has "
                   "%d processes",
                   p->dir, p->n_devices, p->replicas, p->n_servers, w->size);
  if (p->global_batch <= 0 || p->global_batch % p->replicas)
    return ad_fail(AD_ERR_INPUT, "%s: error: global batch %lld does not split over %d replicas",
                   p->dir, (long long)p->global_batch, p->replicas);
  w->local_batch = p->global_batch / p->replicas;
  for (int i = 0; i < p->n_devices; i++)
    if (p->devices[i].rank == w->rank)
      w->device = &p->devices[i];
  if (!w->device)
    return ad_fail(AD_ERR_INPUT, "%s: error: no device with rank %d", p->dir, w->rank);
  if (strcmp(w->device->type, "cpu"))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: device type '%s' of rank %d is not supported by this "
                   "build (cpu only)",
                   p->dir, w->device->type, w->rank);
  if (p->training) {
    const ad_plan_tensor *loss = NULL;
    for (int i = 0; i < p->n_tensors; i++)
      if (p->tensors[i].role == AD_ROLE_LOSS)
        loss = &p->tensors[i];
    if (!loss || strcmp(loss->dtype, "float32") || loss->bytes != 4)
      return ad_fail(AD_ERR_INPUT, "%s: error: training plan without a float32 scalar loss",
                     p->dir);
  }
  return AD_OK;
}

/* Pins to the device's core where this machine has it (the spec may describe
 * a bigger machine); otherwise runs unpinned, saying so once. id -1 (a
 * server) means unpinned by design. */
static void pin_to_core(const worker *w) {
  int core = w->device->id;
  if (core == -1)
    return;
  long n = sysconf(_SC_NPROCESSORS_CONF);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (core >= 0 && core < n && core < CPU_SETSIZE) {
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set) == 0)
      return;
  }
  fprintf(stderr,
          "autodist: warning: worker rank %d: CPU core %d does not exist on this machine "
          "(%ld cores) or is not allowed; running unpinned\n",
          w->rank, core, n);
}

static ad_status load_weights(worker *w) {
  const ad_plan *p = w->plan;
  int any = 0;
  for (int i = 0; i < p->n_tensors; i++)
    any |= p->tensors[i].init >= 0 &&
           (p->tensors[i].role == AD_ROLE_PARAM || p->tensors[i].role == AD_ROLE_FROZEN);
  if (!any)
    return AD_OK;
  char *path = plan_path(p, "weights.bin");
  char *data = NULL;
  size_t len = 0;
  ad_status st = ad_file_read(path, &data, &len);
  bool read = st == AD_OK;
  for (int i = 0; st == AD_OK && i < p->n_tensors; i++) {
    const ad_plan_tensor *t = &p->tensors[i];
    if (t->init < 0 || (t->role != AD_ROLE_PARAM && t->role != AD_ROLE_FROZEN))
      continue;
    if (t->init + t->bytes > (int64_t)len)
      st = ad_fail(AD_ERR_INPUT, "%s: error: tensor '%s' lies outside the file (%lld + %lld > %zu)",
                   path, t->name, (long long)t->init, (long long)t->bytes, len);
    else
      memcpy(w->mem + t->offset, data + t->init, (size_t)t->bytes);
  }
  if (read)
    free(data);
  free(path);
  return st;
}

/* Each data file feeds one tensor with the local batch as axis 0. */
static ad_status bind_data(worker *w) {
  AD_TRY(ad_run_data_load(w->plan, &w->opts, &w->arrays, &w->n_samples));
  w->feeds = ad_xcalloc((size_t)w->opts.n_data + 1, sizeof *w->feeds);
  for (int i = 0; i < w->opts.n_data; i++) {
    const ad_plan_tensor *t = ad_plan_tensor_find(w->plan, w->opts.data[i].name);
    w->feeds[i] = t;
    if (t->dims[0] != w->local_batch ||
        t->bytes != w->local_batch * ad_data_row_bytes(&w->arrays[i]))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: tensor '%s' holds %lld bytes, not %lld samples "
                     "of %lld bytes",
                     w->plan->dir, t->name, (long long)t->bytes, (long long)w->local_batch,
                     (long long)ad_data_row_bytes(&w->arrays[i]));
  }
  return AD_OK;
}

static ad_status setup(worker *w, int argc, char **argv) {
  AD_TRY(ad_run_opts_parse(argc, argv, &w->opts));
  AD_TRY(ad_plan_load(w->opts.plan_dir, &w->plan));
  AD_TRY(check_plan(w));
  AD_TRY(ad_comm_set_workers(w->comm, w->plan->replicas));
  pin_to_core(w);
  openblas_set_num_threads(1);
  if (w->device->role == AD_DEVICE_SERVER)
    return AD_OK; /* ad_ps_server_run sets up the rest */
  w->size = ad_comm_size(w->comm);

  char *module = plan_path(w->plan, w->device->module);
  ad_status st = ad_jit_create(module, &w->jit);
  free(module);
  AD_TRY(st);

  int64_t bytes = (w->plan->mem_bytes + 63) / 64 * 64;
  w->mem = aligned_alloc(64, (size_t)(bytes ? bytes : 64));
  AD_ASSERT(w->mem);
  memset(w->mem, 0, (size_t)bytes);
  AD_TRY(load_weights(w));
  AD_TRY(bind_data(w));
  if (w->rank == 0 && w->opts.metrics) {
    /* --resume appends (ad_ckpt_resume cuts the steps it computes again). */
    w->metrics = fopen(w->opts.metrics, w->opts.resume ? "a+" : "w");
    if (!w->metrics)
      return ad_fail(AD_ERR_INPUT, "%s: error: cannot write: %s", w->opts.metrics, strerror(errno));
  }
  const char *tty = getenv("AD_TTY");
  w->tty = tty ? !strcmp(tty, "1") : isatty(2);
  if (w->plan->n_servers)
    w->ps = ad_ps_worker_create(w->plan, w->comm);
  return AD_OK;
}

/* Copies the samples of global batch `step` that this replica reads. */
static void feed_batch(worker *w, ad_data_order *order, int64_t step, int64_t *rows) {
  ad_data_replica_rows(order, step, w->plan->global_batch, w->rank, w->plan->replicas, rows);
  for (int i = 0; i < w->opts.n_data; i++)
    ad_data_copy_rows(&w->arrays[i], rows, w->local_batch, w->mem + w->feeds[i]->offset);
}

/* ---- outputs ---- */

static ad_status save_model(worker *w) {
  if (w->rank != 0 || !w->opts.save)
    return AD_OK;
  const ad_plan *p = w->plan;
  ad_named_tensor *ts = ad_xcalloc((size_t)p->n_tensors + 1, sizeof *ts);
  int n = 0;
  for (int i = 0; i < p->n_tensors; i++) {
    const ad_plan_tensor *t = &p->tensors[i];
    if (t->role != AD_ROLE_PARAM)
      continue;
    ts[n++] = (ad_named_tensor){.name = t->name,
                                .rank = t->rank,
                                .dims = t->dims,
                                .data = (const float *)(w->mem + t->offset)};
  }
  char *base = plan_path(p, "model.onnx");
  ad_status st = ad_onnx_save(base, w->opts.save, n, ts);
  free(base);
  free(ts);
  return st;
}

/* ---- the loops ---- */

static void progress(worker *w, int64_t k, int64_t steps, double loss, double rate, bool last) {
  if (w->rank != 0)
    return;
  int64_t every = steps >= 10 ? steps / 10 : 1;
  if (!w->tty && !last && (k + 1) % every)
    return;
  /* On a terminal: at most 10 updates a second (fast steps would flood it). */
  double t = now_sec();
  if (w->tty && !last && k > 0 && t - w->last_print < 0.1)
    return;
  w->last_print = t;
  double epoch = (double)(k + 1) * (double)w->plan->global_batch / (double)w->n_samples;
  fprintf(stderr, "%sstep %lld/%lld  epoch %.2f  loss %.6g  %.0f samples/s%s", w->tty ? "\r" : "",
          (long long)(k + 1), (long long)steps, epoch, loss, rate, w->tty && !last ? "  " : "\n");
  fflush(stderr);
}

static void metrics_line(worker *w, int64_t step, double loss, double rate, double elapsed,
                         double bytes) {
  if (!w->metrics)
    return;
  char num[64];
  if (isfinite(loss))
    snprintf(num, sizeof num, "%.9g", loss);
  else /* JSON has no NaN; Python's json reads these */
    snprintf(num, sizeof num, "%s", isnan(loss) ? "NaN" : loss > 0 ? "Infinity" : "-Infinity");
  fprintf(w->metrics,
          "{\"step\": %lld, \"loss\": %s, \"samples_per_sec\": %.1f, \"elapsed_sec\": %.6f, "
          "\"bytes_sent\": %lld}\n",
          (long long)step, num, rate, elapsed, (long long)bytes);
  fflush(w->metrics);
}

static ad_status train(worker *w) {
  void *fn;
  AD_TRY(ad_jit_lookup(w->jit, "ad_step", &fn));
  step_fn step = (step_fn)fn;
  const ad_plan *p = w->plan;
  const ad_plan_tensor *loss_t = NULL;
  for (int i = 0; i < p->n_tensors; i++)
    if (p->tensors[i].role == AD_ROLE_LOSS)
      loss_t = &p->tensors[i];

  int64_t steps = ad_run_steps(p, &w->opts, w->n_samples), first = 0;
  if (w->opts.resume) /* continue after the checkpoint's step */
    AD_TRY(ad_ckpt_resume(p, &w->opts, w->n_samples, w->rank, w->ps, w->mem, w->metrics, &first));
  ad_data_order order;
  ad_data_order_init(&order, w->n_samples, w->opts.shuffle, w->opts.seed);
  int64_t *rows = ad_xmalloc((size_t)w->local_batch * sizeof *rows);
  ad_status st = AD_OK;
  double t0 = now_sec(), loss = 0, elapsed = 0;
  for (int64_t k = first; k < steps && st == AD_OK; k++) {
    double ts = now_sec();
    feed_batch(w, &order, k, rows);
    step(w->mem, w->comm, k + 1);
    st = ad_comm_check(w->comm);
    float local_loss;
    memcpy(&local_loss, w->mem + loss_t->offset, sizeof local_loss);
    double sums[2] = {local_loss, (double)ad_comm_take_bytes(w->comm)};
    if (st == AD_OK)
      st = ad_comm_sum_f64(w->comm, sums, 2);
    double te = now_sec();
    loss = sums[0];
    elapsed = te - t0;
    double rate = (double)p->global_batch / (te - ts > 0 ? te - ts : 1e-9);
    if (st == AD_OK && w->rank == 0) {
      metrics_line(w, k + 1, loss, rate, elapsed, sums[1]);
      progress(w, k, steps, loss, rate, k + 1 == steps);
    }
    if (st == AD_OK && w->rank == 0 && ad_ckpt_due(&w->opts, k + 1, steps))
      st = ad_ckpt_save(p, &w->opts, w->n_samples, w->ps, w->mem, k + 1);
  }
  free(rows);
  ad_data_order_free(&order);
  AD_TRY(st);
  if (w->ps)
    AD_TRY(ad_ps_worker_finish(w->ps, w->mem));
  if (w->rank == 0) {
    char servers[64] = "";
    if (p->n_servers)
      snprintf(servers, sizeof servers, " and %d server%s", p->n_servers,
               p->n_servers == 1 ? "" : "s");
    fprintf(stderr,
            "autodist: trained %lld steps (%.2f epochs of %lld samples) on %d worker%s%s in "
            "%.3f s: %.0f samples/s, final loss %.6g\n",
            (long long)(steps - first),
            (double)(steps - first) * (double)p->global_batch / (double)w->n_samples,
            (long long)w->n_samples, w->size, w->size == 1 ? "" : "s", servers, elapsed,
            (double)(steps - first) * (double)p->global_batch / (elapsed > 0 ? elapsed : 1e-9),
            loss);
  }

  return save_model(w);
}

/* ---- inference ---- */

/* The --out files of an inference run: rank 0 streams each output's rows into
 * a temporary file beside it (header first: the sample count is known) and
 * renames them all into place once every row is written. */
typedef struct out_file {
  const ad_plan_tensor *t;
  int64_t row;  /* bytes per sample */
  char *tmp;    /* rank 0: the temporary path */
  FILE *f;      /* rank 0 */
  char *gather; /* rank 0: one global batch of rows */
} out_file;

static ad_status out_open(worker *w, out_file *o, int i) {
  const ad_run_bind *b = &w->opts.out[i];
  o->t = ad_plan_tensor_find(w->plan, b->name);
  o->row = o->t->bytes / w->local_batch;
  if (w->rank != 0)
    return AD_OK;
  int64_t dims[8];
  memcpy(dims, o->t->dims, sizeof dims);
  dims[0] = w->n_samples;
  char head[AD_NPY_HEADER_MAX];
  size_t n = ad_npy_header(head, sizeof head, o->t->dtype, o->t->rank, dims, NULL);
  AD_ASSERT(n); /* ad_run_data_load checked the dtype */
  o->gather = ad_xmalloc((size_t)(o->row * w->plan->global_batch));
  o->tmp = ad_out_tmp_path(b->path, getenv("AD_RUN_DIR"));
  o->f = fopen(o->tmp, "wb");
  if (!o->f)
    return ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", b->path, strerror(errno));
  if (fwrite(head, 1, n, o->f) != n)
    return ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", b->path, strerror(errno));
  return AD_OK;
}

/* Gathers global batch k's rows of one output to rank 0, which appends the
 * first n_valid of them (the rest is padding). Replica r's slice is rows
 * [r*b, (r+1)*b) of the batch, so rank order is sample order. */
static ad_status out_append(worker *w, out_file *o, int64_t n_valid) {
  AD_TRY(ad_comm_gather(w->comm, w->mem + o->t->offset, o->t->bytes, o->gather));
  if (w->rank == 0 &&
      fwrite(o->gather, 1, (size_t)(o->row * n_valid), o->f) != (size_t)(o->row * n_valid))
    return ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", o->tmp, strerror(errno));
  return AD_OK;
}

/* Closes the files; on success renames every one into place (after all were
 * written: a failure leaves none), otherwise removes them. */
static ad_status out_finish(worker *w, out_file *outs, ad_status st) {
  for (int i = 0; i < w->opts.n_out; i++)
    if (outs[i].f && fclose(outs[i].f) != 0 && st == AD_OK)
      st = ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", outs[i].tmp, strerror(errno));
  for (int i = 0; st == AD_OK && i < w->opts.n_out; i++)
    if (outs[i].tmp && rename(outs[i].tmp, w->opts.out[i].path) != 0)
      st = ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", w->opts.out[i].path, strerror(errno));
  for (int i = 0; i < w->opts.n_out; i++) {
    if (outs[i].tmp)
      unlink(outs[i].tmp); /* after a rename: nothing there */
    free(outs[i].tmp);
    free(outs[i].gather);
  }
  return st;
}

/* "infer: 1536/10000 samples (15%)" on rank 0: on a terminal rewritten in
 * place (at most 10 times a second), otherwise a line every 5 s; both end
 * with the complete line. */
static void infer_progress(worker *w, int64_t done, bool last) {
  double t = now_sec();
  if (!last && t - w->last_print < (w->tty ? 0.1 : 5.0))
    return;
  w->last_print = t;
  fprintf(stderr, "%sinfer: %lld/%lld samples (%d%%)%s", w->tty ? "\r" : "", (long long)done,
          (long long)w->n_samples, (int)(100 * done / w->n_samples), w->tty && !last ? "" : "\n");
  fflush(stderr);
}

/* One pass over the data in order, in global batches (runtime/data.h's order
 * without --shuffle); the last partial batch is padded by wrapping around to
 * the first samples, and the padding is dropped. --metrics: one line per
 * batch, with the samples it wrote. */
static ad_status infer(worker *w) {
  void *fn;
  AD_TRY(ad_jit_lookup(w->jit, "ad_forward", &fn));
  forward_fn forward = (forward_fn)fn;
  const ad_plan *p = w->plan;
  int64_t B = p->global_batch, N = w->n_samples, n_batches = (N + B - 1) / B;
  out_file *outs = ad_xcalloc((size_t)w->opts.n_out + 1, sizeof *outs);
  ad_status st = AD_OK;
  for (int i = 0; st == AD_OK && i < w->opts.n_out; i++)
    st = out_open(w, &outs[i], i);
  ad_data_order order;
  ad_data_order_init(&order, N, false, 0);
  int64_t *rows = ad_xmalloc((size_t)w->local_batch * sizeof *rows);
  double t0 = now_sec();
  w->last_print = t0;
  for (int64_t k = 0; k < n_batches && st == AD_OK; k++) {
    double ts = now_sec();
    int64_t valid = N - k * B < B ? N - k * B : B;
    feed_batch(w, &order, k, rows);
    forward(w->mem, w->comm);
    st = ad_comm_check(w->comm);
    for (int i = 0; st == AD_OK && i < w->opts.n_out; i++)
      st = out_append(w, &outs[i], valid);
    if (st != AD_OK || w->rank != 0)
      continue;
    double te = now_sec();
    if (w->metrics)
      fprintf(w->metrics,
              "{\"step\": %lld, \"samples\": %lld, \"samples_per_sec\": %.1f, \"elapsed_sec\": "
              "%.6f, \"bytes_sent\": 0}\n",
              (long long)(k + 1), (long long)valid, (double)valid / (te - ts > 0 ? te - ts : 1e-9),
              te - t0);
    infer_progress(w, k * B + valid, k + 1 == n_batches);
  }
  double elapsed = now_sec() - t0;
  free(rows);
  ad_data_order_free(&order);
  st = out_finish(w, outs, st);
  free(outs);
  if (st == AD_OK && w->metrics && fflush(w->metrics) != 0)
    st = ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", w->opts.metrics, strerror(errno));
  if (st == AD_OK && w->rank == 0)
    fprintf(stderr, "autodist: inferred %lld samples on %d worker%s in %.3f s: %.0f samples/s\n",
            (long long)N, w->size, w->size == 1 ? "" : "s", elapsed,
            (double)N / (elapsed > 0 ? elapsed : 1e-9));
  return st;
}

static void worker_free(worker *w) {
  if (w->metrics)
    fclose(w->metrics);
  if (w->arrays) {
    for (int i = 0; i < w->opts.n_data; i++)
      ad_npy_free(&w->arrays[i]);
    free(w->arrays);
  }
  free(w->feeds);
  free(w->mem);
  ad_ps_worker_destroy(w->ps);
  ad_jit_destroy(w->jit);
  if (w->plan)
    ad_plan_free(w->plan);
  ad_run_opts_free(&w->opts);
  ad_comm_destroy(w->comm);
}

/* `__worker --verify-staged PLAN [HASH.npy]...` (argv[0] is the flag): what
 * `run` asks a node before it copies anything there. */
static ad_status verify_staged(int argc, char **argv) {
  if (argc < 2)
    return ad_fail(AD_ERR_INPUT, "usage: autodist __worker --verify-staged PLAN [HASH.npy]...");
  int bad = 0;
  ad_plan *plan = NULL;
  if (ad_plan_load(argv[1], &plan) == AD_OK)
    ad_plan_free(plan);
  else {
    printf("bad %s\n", argv[1]);
    bad++;
  }
  for (int i = 2; i < argc; i++) {
    const char *base = strrchr(argv[i], '/');
    base = base ? base + 1 : argv[i];
    char *data = NULL, hash[65] = "";
    size_t len = 0;
    if (ad_file_read(argv[i], &data, &len) == AD_OK) {
      ad_sha256_hex(data, len, hash);
      free(data);
    }
    if (!*hash || strlen(base) != 68 || strncmp(base, hash, 64) || strcmp(base + 64, ".npy")) {
      printf("bad %s\n", argv[i]);
      bad++;
    }
  }
  fflush(stdout);
  return bad ? ad_fail(AD_ERR_JOB, "error: %d staged file%s not valid", bad,
                       bad == 1 ? " is" : "s are")
             : AD_OK;
}

ad_status ad_cmd_worker(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "--verify-staged"))
    return verify_staged(argc - 1, argv + 1);
  if (argc >= 3 && !strcmp(argv[1], "--job")) {
    /* The id is for pkill -f only; the run options follow it. */
    argc -= 2;
    argv += 2;
  }
  worker w = {0};
  ad_status st = ad_comm_create_mpi(&w.comm);
  if (st != AD_OK)
    return st;
  w.rank = ad_comm_rank(w.comm);
  w.size = ad_comm_size(w.comm);
  char host[256] = "localhost", line[512];
  gethostname(host, sizeof host - 1);
  snprintf(line, sizeof line, "%d %s\n", (int)getpid(), host);
  write_status_file(w.rank, "pid", line);

  st = setup(&w, argc, argv);
  if (st == AD_OK && w.device->role == AD_DEVICE_SERVER)
    st = ad_ps_server_run(w.plan, w.comm, w.rank - w.plan->replicas, w.opts.resume);
  else if (st == AD_OK)
    st = w.plan->training ? train(&w) : infer(&w);
  if (st == AD_OK)
    st = ad_comm_finalize(w.comm);
  if (st == AD_OK) {
    write_status_file(w.rank, "done", "");
  } else {
    const char *dir = getenv("AD_RUN_DIR");
    write_status_file(w.rank, "err", ad_error_message());
    /* The launcher prints the message; main() printing it too would show it
     * twice (once per failing rank). */
    if ((dir && *dir) || status_markers()) {
      fflush(stderr);
      int fd = open("/dev/null", O_WRONLY);
      if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
      }
    }
  }
  worker_free(&w);
  return st;
}
