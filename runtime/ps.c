/*
 * runtime/ps.c: parameter servers over MPI point-to-point messages.
 *
 * Server s is MPI rank replicas + s and holds the shards the plan gives it
 * (rows [row0, row0 + rows) of a PARAM tensor, each with a gradient region and
 * the optimizer state of its server program). Workers are ranks 0..W-1. Every
 * message goes over MPI_COMM_WORLD (the collectives of the workers run on a
 * communicator of their own, runtime/comm_mpi.c); all integers are int64.
 *
 * Wire protocol. What a server receives starts with an announcement, three
 * integers {kind, a, b} on TAG_ANNOUNCE, which is all a server ever probes for;
 * a body, if any, follows on the kind's own tag. Every body travels as chunks
 * of at most CHUNK bytes (see "waiting" below); the receiver knows its size.
 *   push      worker -> server, once per step and server (every worker pushes
 *             to every server each step, possibly with no segment):
 *             announce {PUSH, step, bytes}; body {step, n} then n segments
 *   reply     server -> worker, the answer to a push: {step pushed, n} then one
 *             whole segment per dense shard of the server (current values);
 *             the worker knows its size from the plan
 *   rows      worker -> server: announce {ROWS, shard, n}; body n local row ids
 *             of a sparse shard, ascending; answer: those rows' current values
 *   done      worker -> server: announce {DONE, 0, 0}: it ran its last step
 *   final     server -> worker 0 once every worker is done: {0, n} then one
 *             whole segment per shard of the server (sparse ones included)
 *   ckpt      worker 0 -> server (sync only), after it pulled the reply of step
 *             k: announce {CKPT, k, 0}; answer {k, bytes} then the server's
 *             whole arena (its shards, their gradient regions and the optimizer
 *             state of its program, which the plan does not list) as it is
 *             after the update of step k: no update of step k + 1 can come
 *             before, since it needs worker 0's next push, announced later
 *   restore   worker 0 -> a resuming server, before anything else (the server
 *             waits for it before it serves): {k, bytes} then the arena of a
 *             checkpoint; the server's next update is that of step k + 1
 * A segment is {shard, kind, n} and then, for kind 0 (whole shard) n bytes of
 * values, for kind 1 (rows of a sparse shard) n local row ids and n rows of
 * values; each segment is padded to 8 bytes so that ids and floats stay
 * aligned. MPI keeps messages of one (source, tag) in order; a worker has at
 * most one push and one row request in flight per server.
 *
 * How a server combines pushes (plan `sync`):
 *   sync   it keeps the pushes of step k until all W are in, then zeroes every
 *          gradient region, adds the pushes in worker rank order, runs its
 *          ad_step (the shards' optimizer updates) once and replies to all:
 *          the update one device makes with the summed gradient.
 *   stale  every push is applied on its own (zero, add, ad_step); the reply to
 *          a worker at step k waits until every worker has pushed step k - K
 *          (a worker that is done counts as ahead of all).
 *   async  every push is applied on its own and answered at once.
 * A row request from a worker whose push is not yet answered waits for that
 * answer, so that a worker always reads rows after its own last update.
 *
 * bytes_sent counts parameter-server payload on the worker side only (row
 * ids and values, not headers): the pushes it sends, the replies it receives,
 * the row ids it requests and the rows it receives.
 *
 * Waiting. A job may run more processes (workers and servers) than the
 * machine has cores, so a waiter must not spin: it would take the core a
 * worker needs. But OpenMPI moves a large message only while both ends call
 * into MPI, so a waiter that sleeps between tests slows every big transfer.
 * Hence the chunks: a waiter tests its chunk requests, keeps testing while
 * chunks complete, and sleeps ~20 us between tests once nothing has moved for
 * ~50 us (a server waiting for work does the same). The timer slack is
 * lowered so that these sleeps stay short.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ps.h"

#include "jit.h"
#include "kernels.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

enum {
  TAG_ANNOUNCE = 7001,
  TAG_PUSH,
  TAG_REPLY,
  TAG_ROWS_REQ,
  TAG_ROWS,
  TAG_FINAL,
  TAG_CKPT,
  TAG_RESTORE
};
enum { ANN_PUSH = 1, ANN_ROWS, ANN_DONE, ANN_CKPT };
enum { SEG_WHOLE = 0, SEG_ROWS = 1 };

#define HEADER 16     /* {step, n_segments} */
#define SEG_HEADER 24 /* {shard, kind, n} */
#define CHUNK ((int64_t)64 << 10)
#define SPIN_SEC 50e-6 /* keep testing this long after the last progress */
#define NAP_NS 20000L

static int64_t pad8(int64_t n) {
  return (n + 7) / 8 * 8;
}

static int64_t get_i64(const char *p) {
  int64_t v;
  memcpy(&v, p, 8);
  return v;
}

static void set_i64(char *p, int64_t v) {
  memcpy(p, &v, 8);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(void) {
  struct timespec ts = {0, NAP_NS};
  nanosleep(&ts, NULL);
}

/* MPI failures read "error: parameter server: MPI_Isend failed: ...". */
static ad_status mpi_check(int rc, const char *what) {
  char where[96];
  snprintf(where, sizeof where, "parameter server: %s", what);
  return ad_mpi_check(rc, where);
}

static void grow(char **buf, int64_t *cap, int64_t need) {
  if (need <= *cap)
    return;
  int64_t n = *cap ? *cap : 256;
  while (n < need)
    n *= 2;
  *buf = ad_xrealloc(*buf, (size_t)n);
  *cap = n;
}

/* ---- transfers: one message body as chunks ---- */

typedef struct xfer {
  MPI_Request *req;
  int *done_idx; /* MPI_Testsome's scratch */
  int n, cap, left;
} xfer;

/* Starts sending (or receiving) len bytes at buf to (from) rank `peer` as
 * ceil(len / CHUNK) messages with `tag`. The buffer must stay until the
 * transfer is complete. */
static ad_status xfer_start(xfer *x, bool send, void *buf, int64_t len, int peer, int tag) {
  AD_ASSERT(x->left == 0 && len >= 0);
  int64_t n = (len + CHUNK - 1) / CHUNK;
  if (n > INT_MAX / 2)
    return ad_fail(AD_ERR_JOB, "error: parameter server: a message of %lld bytes is too large",
                   (long long)len);
  if (n > x->cap) {
    x->req = ad_xrealloc(x->req, (size_t)n * sizeof *x->req);
    x->done_idx = ad_xrealloc(x->done_idx, (size_t)n * sizeof *x->done_idx);
    x->cap = (int)n;
  }
  x->n = (int)n;
  for (int i = 0; i < x->n; i++) {
    char *p = (char *)buf + i * CHUNK;
    int count = (int)(len - i * CHUNK < CHUNK ? len - i * CHUNK : CHUNK);
    int rc = send ? MPI_Isend(p, count, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &x->req[i])
                  : MPI_Irecv(p, count, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &x->req[i]);
    AD_TRY(mpi_check(rc, send ? "MPI_Isend" : "MPI_Irecv"));
    x->left = i + 1;
  }
  return AD_OK;
}

/* Tests the transfer's chunks: *moved when some completed now. */
static ad_status xfer_test(xfer *x, bool *moved) {
  if (x->left == 0)
    return AD_OK;
  int out = 0;
  AD_TRY(mpi_check(MPI_Testsome(x->n, x->req, &out, x->done_idx, MPI_STATUSES_IGNORE),
                   "MPI_Testsome"));
  if (out > 0 && out != MPI_UNDEFINED) {
    x->left -= out;
    *moved = true;
  }
  return AD_OK;
}

static bool xfer_busy(const xfer *x) {
  return x->left > 0;
}

static void xfer_free(xfer *x) {
  free(x->req);
  free(x->done_idx);
  *x = (xfer){0};
}

/* Blocks until the n transfers are complete, testing while chunks move and
 * napping once nothing has moved for SPIN_SEC. */
static ad_status xfer_wait(xfer **xs, int n) {
  double last = now_sec();
  for (;;) {
    bool moved = false, busy = false;
    for (int i = 0; i < n; i++) {
      AD_TRY(xfer_test(xs[i], &moved));
      busy |= xfer_busy(xs[i]);
    }
    if (!busy)
      return AD_OK;
    double t = now_sec();
    if (moved)
      last = t;
    else if (t - last > SPIN_SEC)
      nap();
  }
}

static ad_status xfer_wait1(xfer *x) {
  return xfer_wait(&x, 1);
}

/* The three integers every message to a server starts with (small enough
 * that MPI sends them at once, whatever the server is doing). */
static ad_status announce(int dest, int64_t kind, int64_t a, int64_t b) {
  int64_t m[3] = {kind, a, b};
  return mpi_check(MPI_Send(m, 3, MPI_INT64_T, dest, TAG_ANNOUNCE, MPI_COMM_WORLD), "MPI_Send");
}

/* ---- messages ---- */

void ad_ps_msg_begin(ad_ps_msg *m, int64_t step) {
  grow(&m->data, &m->cap, HEADER);
  set_i64(m->data, step);
  set_i64(m->data + 8, 0);
  m->len = HEADER;
}

static char *msg_segment(ad_ps_msg *m, int64_t shard, int64_t kind, int64_t n, int64_t body) {
  AD_ASSERT(m->len >= HEADER);
  int64_t need = m->len + SEG_HEADER + pad8(body);
  grow(&m->data, &m->cap, need);
  char *p = m->data + m->len;
  set_i64(p, shard);
  set_i64(p + 8, kind);
  set_i64(p + 16, n);
  memset(p + SEG_HEADER + body, 0, (size_t)(pad8(body) - body));
  m->len = need;
  set_i64(m->data + 8, get_i64(m->data + 8) + 1);
  return p + SEG_HEADER;
}

void ad_ps_msg_add(ad_ps_msg *m, int64_t shard, const void *src, int64_t bytes) {
  char *p = msg_segment(m, shard, SEG_WHOLE, bytes, bytes);
  if (bytes)
    memcpy(p, src, (size_t)bytes);
}

/* Entries (local row, j) sorted by row, then j: the order the sums follow. */
static int cmp_pair(const void *a, const void *b) {
  const int64_t *x = a, *y = b;
  if (x[0] != y[0])
    return x[0] < y[0] ? -1 : 1;
  return x[1] < y[1] ? -1 : x[1] > y[1];
}

int64_t ad_ps_rows_touched(const void *idx, int64_t n_idx, bool is_i32, int64_t n_rows,
                           int64_t row0, int64_t rows, const float *dy, int64_t inner, int64_t *ids,
                           float *sums) {
  int64_t *pairs = ad_xmalloc((size_t)(2 * n_idx + 2) * sizeof *pairs);
  int64_t n = 0;
  for (int64_t j = 0; j < n_idx; j++) {
    int64_t r = is_i32 ? ((const int32_t *)idx)[j] : ((const int64_t *)idx)[j];
    if (r < 0)
      r += n_rows;
    if (r < 0 || r >= n_rows || r < row0 || r >= row0 + rows)
      continue;
    pairs[2 * n] = r - row0;
    pairs[2 * n + 1] = j;
    n++;
  }
  /* Sorting by (row, j) keeps each row's contributions in order of j and makes
   * the row order (ascending) independent of the indices' order. */
  qsort(pairs, (size_t)n, 2 * sizeof *pairs, cmp_pair);
  int64_t k = -1;
  for (int64_t i = 0; i < n; i++) {
    if (i == 0 || pairs[2 * i] != pairs[2 * i - 2]) {
      ids[++k] = pairs[2 * i];
      if (dy)
        memset(sums + k * inner, 0, (size_t)inner * sizeof *sums);
    }
    if (dy) {
      float *s = sums + k * inner;
      const float *d = dy + pairs[2 * i + 1] * inner;
      for (int64_t c = 0; c < inner; c++)
        s[c] += d[c];
    }
  }
  free(pairs);
  return k + 1;
}

int64_t ad_ps_msg_add_rows(ad_ps_msg *m, int64_t shard, int64_t row0, int64_t rows, int64_t n_rows,
                           const void *idx, int64_t n_idx, bool is_i32, const float *dy,
                           int64_t inner) {
  int64_t most = n_idx < rows ? n_idx : rows, row_bytes = inner * 4;
  if (most <= 0)
    return 0;
  /* Room for the most rows there can be; the segment is cut to size after. */
  int64_t start = m->len;
  char *p = msg_segment(m, shard, SEG_ROWS, most, most * (8 + row_bytes));
  int64_t *ids = (int64_t *)p;
  float *sums = (float *)(p + 8 * most);
  int64_t n = ad_ps_rows_touched(idx, n_idx, is_i32, n_rows, row0, rows, dy, inner, ids, sums);
  if (n == 0) {
    m->len = start;
    set_i64(m->data + 8, get_i64(m->data + 8) - 1);
    return 0;
  }
  if (n < most)
    memmove(p + 8 * n, sums, (size_t)(n * row_bytes));
  int64_t body = n * (8 + row_bytes);
  set_i64(p - 8, n);
  memset(p + body, 0, (size_t)(pad8(body) - body));
  m->len = start + SEG_HEADER + pad8(body);
  return n;
}

void ad_ps_msg_free(ad_ps_msg *m) {
  free(m->data);
  *m = (ad_ps_msg){0};
}

ad_status ad_ps_msg_next(const ad_plan *plan, int server, const char *msg, int64_t len,
                         int64_t *pos, ad_ps_seg *seg) {
  if (*pos + SEG_HEADER > len)
    return ad_fail(AD_ERR_JOB, "error: parameter server: truncated message (%lld bytes)",
                   (long long)len);
  const char *p = msg + *pos;
  int64_t shard = get_i64(p), kind = get_i64(p + 8), n = get_i64(p + 16);
  if (shard < 0 || shard >= plan->n_shards || (server >= 0 && plan->shards[shard].server != server))
    return ad_fail(
        AD_ERR_JOB, "error: parameter server: segment of shard %lld, which %s", (long long)shard,
        shard < 0 || shard >= plan->n_shards ? "the plan does not have" : "is on another server");
  const ad_plan_shard *sh = &plan->shards[shard];
  int64_t body;
  *seg = (ad_ps_seg){.shard = shard, .rows = kind == SEG_ROWS, .n = n};
  if (kind == SEG_WHOLE) {
    if (n != sh->rows * sh->row_bytes)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server: shard %lld ('%s') has %lld bytes, a segment "
                     "of it %lld",
                     (long long)shard, sh->var, (long long)(sh->rows * sh->row_bytes),
                     (long long)n);
    body = n;
    seg->data = p + SEG_HEADER;
  } else if (kind == SEG_ROWS) {
    if (!sh->sparse)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server: rows of shard %lld ('%s'), which is not sparse",
                     (long long)shard, sh->var);
    if (n < 1 || n > sh->rows)
      return ad_fail(AD_ERR_JOB, "error: parameter server: %lld rows of shard %lld ('%s')",
                     (long long)n, (long long)shard, sh->var);
    body = n * (8 + sh->row_bytes);
  } else {
    return ad_fail(AD_ERR_JOB, "error: parameter server: segment kind %lld", (long long)kind);
  }
  if (*pos + SEG_HEADER + pad8(body) > len)
    return ad_fail(AD_ERR_JOB, "error: parameter server: truncated segment of shard %lld",
                   (long long)shard);
  if (seg->rows) {
    seg->ids = (const int64_t *)(p + SEG_HEADER);
    seg->data = p + SEG_HEADER + 8 * n;
    for (int64_t i = 0; i < n; i++)
      if (seg->ids[i] < 0 || seg->ids[i] >= sh->rows)
        return ad_fail(AD_ERR_JOB,
                       "error: parameter server: row %lld of shard %lld ('%s', %lld rows)",
                       (long long)seg->ids[i], (long long)shard, sh->var, (long long)sh->rows);
  }
  *pos += SEG_HEADER + pad8(body);
  return AD_OK;
}

/* Header of a message: its step and segment count. */
static ad_status msg_header(const char *msg, int64_t len, int64_t *step, int64_t *n) {
  if (len < HEADER)
    return ad_fail(AD_ERR_JOB, "error: parameter server: message of %lld bytes has no header",
                   (long long)len);
  *step = get_i64(msg);
  *n = get_i64(msg + 8);
  if (*n < 0 || *n > len / SEG_HEADER)
    return ad_fail(AD_ERR_JOB, "error: parameter server: message claims %lld segments",
                   (long long)*n);
  return AD_OK;
}

static const ad_plan_tensor *param_of(const ad_plan *plan, const char *name) {
  for (int i = 0; i < plan->n_tensors; i++)
    if (plan->tensors[i].role == AD_ROLE_PARAM && !strcmp(plan->tensors[i].name, name))
      return &plan->tensors[i];
  AD_ASSERT(0 && "ad_plan_load checks that every shard's var is a param");
  return NULL;
}

/* ---- worker side ---- */

/* This worker's traffic with one server. */
typedef struct ps_link {
  ad_ps_msg push; /* the push being built, then in flight */
  bool building;  /* segments are being appended to `push` */
  xfer push_out, reply_in;
  bool pending; /* a push is out and its reply not yet pulled */
  int64_t pushed_step;
  char *reply; /* the last reply; its size is fixed by the plan */
  int64_t reply_len;
  bool have_reply;
  char *ids; /* a row request: local row ids */
  int64_t ids_cap;
  char *rows; /* its answer */
  int64_t rows_cap;
  xfer ids_out, rows_in;
} ps_link;

struct ad_ps_worker {
  const ad_plan *plan;
  ad_comm *comm;
  int rank, n_servers;
  ps_link *links;
};

/* Bytes of a message holding, per shard of `server`, a whole segment (dense
 * shards only unless `all`): a reply, or the final values. */
static int64_t values_bytes(const ad_plan *p, int server, bool all) {
  int64_t n = HEADER;
  for (int k = 0; k < p->n_shards; k++)
    if (p->shards[k].server == server && (all || !p->shards[k].sparse))
      n += SEG_HEADER + pad8(p->shards[k].rows * p->shards[k].row_bytes);
  return n;
}

ad_ps_worker *ad_ps_worker_create(const ad_plan *plan, ad_comm *comm) {
  AD_ASSERT(plan->n_servers > 0);
  prctl(PR_SET_TIMERSLACK, 1000UL);
  ad_ps_worker *ps = ad_xcalloc(1, sizeof *ps);
  ps->plan = plan;
  ps->comm = comm;
  ps->rank = ad_comm_rank(comm);
  ps->n_servers = plan->n_servers;
  ps->links = ad_xcalloc((size_t)plan->n_servers, sizeof *ps->links);
  for (int s = 0; s < ps->n_servers; s++) {
    ps->links[s].reply_len = values_bytes(plan, s, false);
    ps->links[s].reply = ad_xmalloc((size_t)ps->links[s].reply_len);
  }
  ad_comm_set_ps(comm, ps);
  return ps;
}

void ad_ps_worker_destroy(ad_ps_worker *ps) {
  if (!ps)
    return;
  if (ad_comm_ps(ps->comm) == ps)
    ad_comm_set_ps(ps->comm, NULL);
  for (int s = 0; s < ps->n_servers; s++) {
    ps_link *l = &ps->links[s];
    ad_ps_msg_free(&l->push);
    free(l->reply);
    free(l->ids);
    free(l->rows);
    xfer_free(&l->push_out);
    xfer_free(&l->reply_in);
    xfer_free(&l->ids_out);
    xfer_free(&l->rows_in);
  }
  free(ps->links);
  free(ps);
}

/* The worker state behind rt, or NULL when a failure is (now) recorded:
 * generated code cannot take a status, so calls after a failure do nothing
 * and the worker reports it after the step (ad_comm_check). */
static ad_ps_worker *worker_of(void *rt, int64_t server) {
  ad_comm *c = rt;
  if (ad_comm_failed(c))
    return NULL;
  ad_ps_worker *ps = ad_comm_ps(c);
  if (!ps) {
    ad_comm_record(c,
                   ad_fail(AD_ERR_JOB, "error: parameter-server call in a plan without servers"));
    return NULL;
  }
  if (server < 0 || server >= ps->n_servers) {
    ad_comm_record(c,
                   ad_fail(AD_ERR_JOB, "error: parameter server %lld does not exist (%d servers)",
                           (long long)server, ps->n_servers));
    return NULL;
  }
  return ps;
}

static bool fail(ad_ps_worker *ps, ad_status st) {
  ad_comm_record(ps->comm, st);
  return st != AD_OK;
}

/* Checks that `shard` is a shard of `server` of the expected kind. */
static bool shard_ok(ad_ps_worker *ps, int64_t server, int64_t shard, bool sparse) {
  const ad_plan *p = ps->plan;
  if (shard < 0 || shard >= p->n_shards || p->shards[shard].server != server ||
      p->shards[shard].sparse != sparse)
    return !fail(ps, ad_fail(AD_ERR_JOB, "error: shard %lld is not a %s shard of server %lld",
                             (long long)shard, sparse ? "sparse" : "dense", (long long)server));
  return true;
}

/* Starts the step's push message; the previous one must have left (the pull
 * normally saw to that). */
static bool begin_push(ad_ps_worker *ps, ps_link *l) {
  if (l->building)
    return true;
  if (xfer_busy(&l->push_out) && fail(ps, xfer_wait1(&l->push_out)))
    return false;
  ad_ps_msg_begin(&l->push, 0);
  l->building = true;
  return true;
}

void ad_rt_ps_add(void *rt, int64_t server, int64_t shard, const void *src, int64_t bytes) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps || !shard_ok(ps, server, shard, false))
    return;
  const ad_plan_shard *sh = &ps->plan->shards[shard];
  if (bytes != sh->rows * sh->row_bytes) {
    fail(ps, ad_fail(AD_ERR_JOB, "error: push of %lld bytes of shard %lld ('%s', %lld bytes)",
                     (long long)bytes, (long long)shard, sh->var,
                     (long long)(sh->rows * sh->row_bytes)));
    return;
  }
  ps_link *l = &ps->links[server];
  if (!begin_push(ps, l))
    return;
  ad_ps_msg_add(&l->push, shard, src, bytes);
  ad_comm_add_bytes(ps->comm, bytes);
}

/* The shard's geometry as generated code passes it must be the plan's. */
static bool rows_ok(ad_ps_worker *ps, int64_t server, int64_t shard, int64_t row0, int64_t rows,
                    int64_t n_rows, int64_t inner) {
  if (!shard_ok(ps, server, shard, true))
    return false;
  const ad_plan_shard *sh = &ps->plan->shards[shard];
  if (row0 != sh->row0 || rows != sh->rows || inner * 4 != sh->row_bytes || n_rows < row0 + rows)
    return !fail(ps, ad_fail(AD_ERR_JOB,
                             "error: rows %lld..%lld of %lld floats (table of %lld rows) do not "
                             "match shard %lld ('%s', rows %lld..%lld of %lld bytes)",
                             (long long)row0, (long long)(row0 + rows - 1), (long long)inner,
                             (long long)n_rows, (long long)shard, sh->var, (long long)sh->row0,
                             (long long)(sh->row0 + sh->rows - 1), (long long)sh->row_bytes));
  return true;
}

void ad_rt_ps_add_rows(void *rt, int64_t server, int64_t shard, int64_t row0, int64_t rows,
                       int64_t n_rows, const void *idx, int64_t m, int64_t is_i32, const float *dy,
                       int64_t inner) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps || !rows_ok(ps, server, shard, row0, rows, n_rows, inner))
    return;
  ps_link *l = &ps->links[server];
  if (!begin_push(ps, l))
    return;
  int64_t n =
      ad_ps_msg_add_rows(&l->push, shard, row0, rows, n_rows, idx, m, is_i32 != 0, dy, inner);
  ad_comm_add_bytes(ps->comm, n * (8 + inner * 4));
}

void ad_rt_ps_push(void *rt, int64_t server, int64_t step) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps)
    return;
  ps_link *l = &ps->links[server];
  if (l->pending) /* the last reply was never pulled: take it now */
    ad_rt_ps_pull(rt, server);
  if (ad_comm_failed(ps->comm) || !begin_push(ps, l))
    return;
  set_i64(l->push.data, step);
  int dest = ps->plan->replicas + (int)server;
  /* The reply's receive is posted first, so that it lands in place. */
  if (fail(ps, xfer_start(&l->reply_in, false, l->reply, l->reply_len, dest, TAG_REPLY)) ||
      fail(ps, announce(dest, ANN_PUSH, step, l->push.len)) ||
      fail(ps, xfer_start(&l->push_out, true, l->push.data, l->push.len, dest, TAG_PUSH)))
    return;
  l->building = false;
  l->pending = true;
  l->have_reply = false;
  l->pushed_step = step;
}

void ad_rt_ps_pull(void *rt, int64_t server) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps)
    return;
  ps_link *l = &ps->links[server];
  if (!l->pending) {
    fail(ps, ad_fail(AD_ERR_JOB, "error: pull from server %lld without a push", (long long)server));
    return;
  }
  xfer *xs[2] = {&l->push_out, &l->reply_in};
  if (fail(ps, xfer_wait(xs, 2)))
    return;
  l->pending = false;
  /* Its header says which push it answers; the segments are checked once
   * here, so that take can trust them. */
  int64_t step = 0, n = 0, pos = HEADER, payload = 0;
  if (fail(ps, msg_header(l->reply, l->reply_len, &step, &n)))
    return;
  if (step != l->pushed_step) {
    fail(ps, ad_fail(AD_ERR_JOB, "error: server %lld answered step %lld to the push of step %lld",
                     (long long)server, (long long)step, (long long)l->pushed_step));
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    ad_ps_seg seg;
    if (fail(ps, ad_ps_msg_next(ps->plan, (int)server, l->reply, l->reply_len, &pos, &seg)))
      return;
    payload += seg.n;
  }
  ad_comm_add_bytes(ps->comm, payload);
  l->have_reply = true;
}

void ad_rt_ps_take(void *rt, int64_t server, int64_t shard, void *dst, int64_t bytes) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps || !shard_ok(ps, server, shard, false))
    return;
  ps_link *l = &ps->links[server];
  if (!l->have_reply) {
    fail(ps, ad_fail(AD_ERR_JOB, "error: take of shard %lld before a pull from server %lld",
                     (long long)shard, (long long)server));
    return;
  }
  int64_t step = 0, n = 0, pos = HEADER;
  if (fail(ps, msg_header(l->reply, l->reply_len, &step, &n)))
    return;
  for (int64_t i = 0; i < n; i++) {
    ad_ps_seg seg;
    if (fail(ps, ad_ps_msg_next(ps->plan, (int)server, l->reply, l->reply_len, &pos, &seg)))
      return;
    if (seg.shard != shard || seg.rows)
      continue;
    if (seg.n != bytes) {
      fail(ps, ad_fail(AD_ERR_JOB, "error: take of %lld bytes of shard %lld, which has %lld",
                       (long long)bytes, (long long)shard, (long long)seg.n));
      return;
    }
    memcpy(dst, seg.data, (size_t)bytes);
    return;
  }
  fail(ps, ad_fail(AD_ERR_JOB, "error: the reply of server %lld has no shard %lld",
                   (long long)server, (long long)shard));
}

void ad_rt_ps_pull_rows(void *rt, int64_t server, int64_t shard, int64_t row0, int64_t rows,
                        int64_t n_rows, const void *idx, int64_t m, int64_t is_i32, float *table,
                        int64_t inner) {
  ad_ps_worker *ps = worker_of(rt, server);
  if (!ps || !rows_ok(ps, server, shard, row0, rows, n_rows, inner))
    return;
  ps_link *l = &ps->links[server];
  int64_t most = m < rows ? m : rows, row_bytes = inner * 4;
  if (most <= 0)
    return;
  grow(&l->ids, &l->ids_cap, 8 * most);
  int64_t *ids = (int64_t *)l->ids;
  int64_t n = ad_ps_rows_touched(idx, m, is_i32 != 0, n_rows, row0, rows, NULL, 0, ids, NULL);
  if (n == 0)
    return;
  grow(&l->rows, &l->rows_cap, n * row_bytes);
  int dest = ps->plan->replicas + (int)server;
  xfer *xs[2] = {&l->ids_out, &l->rows_in};
  if (fail(ps, xfer_start(&l->rows_in, false, l->rows, n * row_bytes, dest, TAG_ROWS)) ||
      fail(ps, announce(dest, ANN_ROWS, shard, n)) ||
      fail(ps, xfer_start(&l->ids_out, true, ids, 8 * n, dest, TAG_ROWS_REQ)) ||
      fail(ps, xfer_wait(xs, 2)))
    return;
  for (int64_t i = 0; i < n; i++)
    memcpy(table + (row0 + ids[i]) * inner, l->rows + i * row_bytes, (size_t)row_bytes);
  ad_comm_add_bytes(ps->comm, n * (8 + row_bytes));
}

/* Worker 0's transfers with every server at once (final values, checkpoint
 * arenas): one buffer and one chunked transfer per server. */
typedef struct fan {
  int n;
  char **bufs;
  xfer *xs;
  xfer **xp;
} fan;

static fan fan_create(int n) {
  fan f = {.n = n};
  f.bufs = ad_xcalloc((size_t)n, sizeof *f.bufs);
  f.xs = ad_xcalloc((size_t)n, sizeof *f.xs);
  f.xp = ad_xcalloc((size_t)n, sizeof *f.xp);
  for (int s = 0; s < n; s++)
    f.xp[s] = &f.xs[s];
  return f;
}

/* Server s's buffer of len bytes (to fill before fan_start sends it). */
static char *fan_buf(fan *f, int s, int64_t len) {
  f->bufs[s] = ad_xrealloc(f->bufs[s], (size_t)len);
  return f->bufs[s];
}

static void fan_free(fan *f) {
  for (int s = 0; s < f->n; s++) {
    if (f->bufs)
      free(f->bufs[s]);
    xfer_free(&f->xs[s]);
  }
  free(f->bufs);
  free(f->xs);
  free(f->xp);
}

ad_status ad_ps_worker_finish(ad_ps_worker *ps, char *mem) {
  AD_TRY(ad_comm_check(ps->comm));
  const ad_plan *p = ps->plan;
  for (int s = 0; s < ps->n_servers; s++) {
    ps_link *l = &ps->links[s];
    if (l->pending)
      ad_rt_ps_pull(ps->comm, s);
    AD_TRY(ad_comm_check(ps->comm));
    AD_TRY(xfer_wait1(&l->push_out));
    AD_TRY(announce(p->replicas + s, ANN_DONE, 0, 0));
  }
  if (ps->rank != 0)
    return AD_OK;
  /* Worker 0 writes the servers' final values over its own copies. */
  fan f = fan_create(ps->n_servers);
  ad_status st = AD_OK;
  for (int s = 0; s < ps->n_servers && st == AD_OK; s++) {
    int64_t len = values_bytes(p, s, true);
    st = xfer_start(&f.xs[s], false, fan_buf(&f, s, len), len, p->replicas + s, TAG_FINAL);
  }
  if (st == AD_OK)
    st = xfer_wait(f.xp, ps->n_servers);
  for (int s = 0; st == AD_OK && s < ps->n_servers; s++) {
    int64_t len = values_bytes(p, s, true), step = 0, n = 0, pos = HEADER;
    st = msg_header(f.bufs[s], len, &step, &n);
    for (int64_t i = 0; st == AD_OK && i < n; i++) {
      ad_ps_seg seg;
      st = ad_ps_msg_next(p, s, f.bufs[s], len, &pos, &seg);
      if (st == AD_OK && seg.rows)
        st = ad_fail(AD_ERR_JOB, "error: parameter server %d sent rows as a final value", s);
      if (st == AD_OK) {
        const ad_plan_shard *sh = &p->shards[seg.shard];
        const ad_plan_tensor *t = param_of(p, sh->var);
        memcpy(mem + t->offset + sh->row0 * sh->row_bytes, seg.data, (size_t)seg.n);
      }
    }
  }
  fan_free(&f);
  return st;
}

/* Bytes of server s's arena (what a checkpoint holds of it). */
static int64_t arena_bytes(const ad_plan *p, int s) {
  return p->devices[p->replicas + s].mem_bytes;
}

ad_status ad_ps_worker_checkpoint(ad_ps_worker *ps, int64_t step, char ***arenas) {
  AD_TRY(ad_comm_check(ps->comm));
  const ad_plan *p = ps->plan;
  AD_ASSERT(ps->rank == 0);
  for (int s = 0; s < ps->n_servers; s++)
    if (ps->links[s].pending)
      return ad_fail(AD_ERR_JOB,
                     "error: checkpoint of step %lld while the push to server %d is unanswered",
                     (long long)step, s);
  fan f = fan_create(ps->n_servers);
  ad_status st = AD_OK;
  /* Each receive is posted before the request, so that the answer lands in place. */
  for (int s = 0; s < ps->n_servers && st == AD_OK; s++) {
    int64_t len = HEADER + arena_bytes(p, s);
    st = xfer_start(&f.xs[s], false, fan_buf(&f, s, len), len, p->replicas + s, TAG_CKPT);
    if (st == AD_OK)
      st = announce(p->replicas + s, ANN_CKPT, step, 0);
  }
  if (st == AD_OK)
    st = xfer_wait(f.xp, ps->n_servers);
  for (int s = 0; st == AD_OK && s < ps->n_servers; s++) {
    char *b = f.bufs[s];
    if (get_i64(b) != step || get_i64(b + 8) != arena_bytes(p, s))
      st = ad_fail(AD_ERR_JOB,
                   "error: parameter server %d answered the checkpoint of step %lld with step "
                   "%lld (%lld bytes)",
                   s, (long long)step, (long long)get_i64(b), (long long)get_i64(b + 8));
    else
      memmove(b, b + HEADER, (size_t)arena_bytes(p, s));
  }
  if (st == AD_OK) { /* the buffers are the caller's now */
    *arenas = f.bufs;
    f.bufs = NULL;
  }
  fan_free(&f);
  return st;
}

ad_status ad_ps_worker_restore(ad_ps_worker *ps, int64_t step, const char *const *arenas) {
  const ad_plan *p = ps->plan;
  AD_ASSERT(ps->rank == 0);
  fan f = fan_create(ps->n_servers);
  ad_status st = AD_OK;
  for (int s = 0; s < ps->n_servers && st == AD_OK; s++) {
    int64_t bytes = arena_bytes(p, s);
    char *b = fan_buf(&f, s, HEADER + bytes);
    set_i64(b, step);
    set_i64(b + 8, bytes);
    memcpy(b + HEADER, arenas[s], (size_t)bytes);
    st = xfer_start(&f.xs[s], true, b, HEADER + bytes, p->replicas + s, TAG_RESTORE);
  }
  if (st == AD_OK)
    st = xfer_wait(f.xp, ps->n_servers);
  fan_free(&f);
  return st;
}

/* ---- server side ---- */

typedef void (*step_fn)(char *mem, void *rt, int64_t step);

/* What the server knows of one worker. */
typedef struct peer {
  char *push; /* its last push: arriving, then kept until applied */
  int64_t push_len, push_cap, push_step;
  xfer push_in;
  bool has_push; /* received, not yet applied (sync) */
  bool waiting;  /* pushed, not yet answered */
  int64_t step;  /* the step of that push */
  int64_t last;  /* the last step it pushed (0: none yet) */
  bool done;
  char *ids; /* a row request: arriving, or deferred while its push is unanswered */
  int64_t ids_cap, rows_shard, rows_n;
  xfer ids_in;
  bool rows_deferred;
  char *reply; /* stale / async: the answer to its push, in flight */
  int64_t reply_cap;
  xfer reply_out;
  char *rows; /* the answer to a row request, in flight */
  int64_t rows_cap;
  xfer rows_out;
} peer;

typedef struct server {
  const ad_plan *plan;
  ad_comm *comm;
  int s, W;
  char *mem;
  ad_jit *jit;
  step_fn step;
  int64_t updates;       /* applied so far: ad_step gets updates + 1 */
  int *shards, n_shards; /* the plan's shards this server holds */
  int *seen;             /* per shard of the plan: segments in the push being added */
  ad_ps_msg shared;      /* sync: the one reply every worker gets */
  peer *peers;
  char *ckpt; /* a checkpoint's copy of the arena, in flight to worker 0 */
  int64_t ckpt_cap;
  xfer ckpt_out;
} server;

static ad_status load_shards(server *sv) {
  const ad_plan *p = sv->plan;
  size_t n = strlen(p->dir) + 16;
  char *path = ad_xmalloc(n), *data = NULL;
  snprintf(path, n, "%s/weights.bin", p->dir);
  size_t len = 0;
  ad_status st = sv->n_shards ? ad_file_read(path, &data, &len) : AD_OK;
  for (int i = 0; st == AD_OK && i < sv->n_shards; i++) {
    const ad_plan_shard *sh = &p->shards[sv->shards[i]];
    const ad_plan_tensor *t = param_of(p, sh->var);
    int64_t from = t->init + sh->row0 * sh->row_bytes, bytes = sh->rows * sh->row_bytes;
    if (t->init < 0 || from + bytes > (int64_t)len)
      st = ad_fail(AD_ERR_INPUT, "%s: error: shard of '%s' lies outside the file", path, sh->var);
    else
      memcpy(sv->mem + sh->param_offset, data + from, (size_t)bytes);
  }
  free(data);
  free(path);
  return st;
}

static ad_status server_setup(server *sv) {
  const ad_plan *p = sv->plan;
  const ad_plan_device *dev = &p->devices[p->replicas + sv->s];
  size_t n = strlen(p->dir) + strlen(dev->module) + 2;
  char *module = ad_xmalloc(n);
  snprintf(module, n, "%s/%s", p->dir, dev->module);
  ad_status st = ad_jit_create(module, &sv->jit);
  free(module);
  AD_TRY(st);
  void *fn;
  AD_TRY(ad_jit_lookup(sv->jit, "ad_step", &fn));
  sv->step = (step_fn)fn;
  int64_t bytes = (dev->mem_bytes + 63) / 64 * 64;
  bytes = bytes ? bytes : 64;
  sv->mem = aligned_alloc(64, (size_t)bytes);
  AD_ASSERT(sv->mem);
  memset(sv->mem, 0, (size_t)bytes);
  sv->shards = ad_xcalloc((size_t)p->n_shards + 1, sizeof *sv->shards);
  sv->seen = ad_xcalloc((size_t)p->n_shards + 1, sizeof *sv->seen);
  for (int k = 0; k < p->n_shards; k++)
    if (p->shards[k].server == sv->s)
      sv->shards[sv->n_shards++] = k;
  sv->peers = ad_xcalloc((size_t)sv->W, sizeof *sv->peers);
  return load_shards(sv);
}

static void server_free(server *sv) {
  for (int w = 0; sv->peers && w < sv->W; w++) {
    peer *pr = &sv->peers[w];
    free(pr->push);
    free(pr->ids);
    free(pr->reply);
    free(pr->rows);
    xfer_free(&pr->push_in);
    xfer_free(&pr->ids_in);
    xfer_free(&pr->reply_out);
    xfer_free(&pr->rows_out);
  }
  free(sv->peers);
  free(sv->ckpt);
  xfer_free(&sv->ckpt_out);
  ad_ps_msg_free(&sv->shared);
  free(sv->shards);
  free(sv->seen);
  free(sv->mem);
  ad_jit_destroy(sv->jit);
}

static void zero_grads(server *sv) {
  for (int i = 0; i < sv->n_shards; i++) {
    const ad_plan_shard *sh = &sv->plan->shards[sv->shards[i]];
    memset(sv->mem + sh->grad_offset, 0, (size_t)(sh->rows * sh->row_bytes));
  }
}

static void add_floats(float *restrict dst, const float *restrict src, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    dst[i] += src[i];
}

/* Adds worker w's push to the gradient regions: a whole segment elementwise,
 * a rows segment at its rows. Every dense shard must be in it exactly once. */
static ad_status add_push(server *sv, int w) {
  const ad_plan *p = sv->plan;
  peer *pr = &sv->peers[w];
  int64_t step = 0, n = 0, pos = HEADER;
  AD_TRY(msg_header(pr->push, pr->push_len, &step, &n));
  for (int i = 0; i < sv->n_shards; i++)
    sv->seen[sv->shards[i]] = 0;
  for (int64_t i = 0; i < n; i++) {
    ad_ps_seg seg;
    AD_TRY(ad_ps_msg_next(p, sv->s, pr->push, pr->push_len, &pos, &seg));
    const ad_plan_shard *sh = &p->shards[seg.shard];
    float *grad = (float *)(sv->mem + sh->grad_offset);
    sv->seen[seg.shard]++;
    if (!seg.rows) {
      add_floats(grad, (const float *)seg.data, seg.n / 4);
      continue;
    }
    int64_t inner = sh->row_bytes / 4;
    for (int64_t r = 0; r < seg.n; r++)
      add_floats(grad + seg.ids[r] * inner, (const float *)seg.data + r * inner, inner);
  }
  if (pos != pr->push_len)
    return ad_fail(AD_ERR_JOB, "error: parameter server %d: %lld stray bytes after a push", sv->s,
                   (long long)(pr->push_len - pos));
  for (int i = 0; i < sv->n_shards; i++) {
    const ad_plan_shard *sh = &p->shards[sv->shards[i]];
    if (!sh->sparse && sv->seen[sv->shards[i]] != 1)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: the push of step %lld from worker %d has "
                     "%d segments of dense shard %d ('%s'), not 1",
                     sv->s, (long long)step, w, sv->seen[sv->shards[i]], sv->shards[i], sh->var);
  }
  return AD_OK;
}

static void apply_update(server *sv) {
  sv->updates++;
  sv->step(sv->mem, sv->comm, sv->updates);
}

/* A message with, per shard of the server, its current value as a whole
 * segment (dense shards only unless `all`): a reply, or the final values. */
static void build_values(server *sv, ad_ps_msg *m, int64_t step, bool all) {
  ad_ps_msg_begin(m, step);
  for (int i = 0; i < sv->n_shards; i++) {
    const ad_plan_shard *sh = &sv->plan->shards[sv->shards[i]];
    if (all || !sh->sparse)
      ad_ps_msg_add(m, sv->shards[i], sv->mem + sh->param_offset, sh->rows * sh->row_bytes);
  }
}

/* Answers worker w's row request with the rows' current values. */
static ad_status answer_rows(server *sv, int w) {
  peer *pr = &sv->peers[w];
  const ad_plan_shard *sh = &sv->plan->shards[pr->rows_shard];
  const int64_t *ids = (const int64_t *)pr->ids;
  pr->rows_deferred = false;
  AD_TRY(xfer_wait1(&pr->rows_out)); /* the last answer (w had it before asking again) */
  grow(&pr->rows, &pr->rows_cap, pr->rows_n * sh->row_bytes);
  for (int64_t i = 0; i < pr->rows_n; i++) {
    if (ids[i] < 0 || ids[i] >= sh->rows)
      return ad_fail(AD_ERR_JOB, "error: parameter server %d: row %lld of shard %lld ('%s')", sv->s,
                     (long long)ids[i], (long long)pr->rows_shard, sh->var);
    memcpy(pr->rows + i * sh->row_bytes, sv->mem + sh->param_offset + ids[i] * sh->row_bytes,
           (size_t)sh->row_bytes);
  }
  return xfer_start(&pr->rows_out, true, pr->rows, pr->rows_n * sh->row_bytes, w, TAG_ROWS);
}

/* Sends worker w the reply to its push (the shared one under sync, else its
 * own snapshot), then the answer to the row request it may have sent since. */
static ad_status reply(server *sv, int w, const ad_ps_msg *shared) {
  peer *pr = &sv->peers[w];
  pr->waiting = false;
  if (shared) {
    AD_TRY(xfer_start(&pr->reply_out, true, shared->data, shared->len, w, TAG_REPLY));
  } else {
    AD_TRY(xfer_wait1(&pr->reply_out));
    ad_ps_msg m = {.data = pr->reply, .cap = pr->reply_cap};
    build_values(sv, &m, pr->step, false);
    pr->reply = m.data;
    pr->reply_cap = m.cap;
    AD_TRY(xfer_start(&pr->reply_out, true, pr->reply, m.len, w, TAG_REPLY));
  }
  return pr->rows_deferred ? answer_rows(sv, w) : AD_OK;
}

/* stale / async: answers every waiting worker that is at most K steps ahead
 * of the slowest (done workers hold no one back). */
static ad_status release(server *sv) {
  const ad_plan *p = sv->plan;
  int64_t slowest = INT64_MAX;
  for (int w = 0; w < sv->W; w++)
    if (!sv->peers[w].done && sv->peers[w].last < slowest)
      slowest = sv->peers[w].last;
  for (int w = 0; w < sv->W; w++) {
    peer *pr = &sv->peers[w];
    if (pr->waiting && (p->sync == AD_SYNC_ASYNC || slowest >= pr->step - p->staleness))
      AD_TRY(reply(sv, w, NULL));
  }
  return AD_OK;
}

/* Worker w's push has arrived. */
static ad_status on_push(server *sv, int w) {
  const ad_plan *p = sv->plan;
  peer *pr = &sv->peers[w];
  int64_t step = 0, n = 0;
  AD_TRY(msg_header(pr->push, pr->push_len, &step, &n));
  if (step != pr->push_step)
    return ad_fail(AD_ERR_JOB,
                   "error: parameter server %d: worker %d announced step %lld and sent step %lld",
                   sv->s, w, (long long)pr->push_step, (long long)step);
  pr->step = step;
  pr->last = step;
  pr->waiting = true;
  if (p->sync != AD_SYNC_BSP) {
    zero_grads(sv);
    AD_TRY(add_push(sv, w));
    apply_update(sv);
    return release(sv);
  }
  pr->has_push = true;
  for (int v = 0; v < sv->W; v++)
    if (!sv->peers[v].has_push)
      return AD_OK;
  for (int v = 0; v < sv->W; v++)
    if (sv->peers[v].step != step)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: worker %d pushed step %lld while worker %d "
                     "pushed step %lld",
                     sv->s, v, (long long)sv->peers[v].step, w, (long long)step);
  /* The sum in worker rank order, then one update, then one reply for all
   * (the last one has left: every worker received it before pushing again). */
  zero_grads(sv);
  for (int v = 0; v < sv->W; v++)
    AD_TRY(add_push(sv, v));
  apply_update(sv);
  for (int v = 0; v < sv->W; v++)
    AD_TRY(xfer_wait1(&sv->peers[v].reply_out));
  build_values(sv, &sv->shared, step, false);
  for (int v = 0; v < sv->W; v++) {
    sv->peers[v].has_push = false;
    AD_TRY(reply(sv, v, &sv->shared));
  }
  return AD_OK;
}

/* Worker 0 asks for the arena after the update of `step` (checkpoint): a
 * copy goes out at once, so later updates do not touch what it sends. */
static ad_status send_arena(server *sv, int64_t step) {
  int64_t bytes = arena_bytes(sv->plan, sv->s);
  AD_TRY(xfer_wait1(&sv->ckpt_out));
  grow(&sv->ckpt, &sv->ckpt_cap, HEADER + bytes);
  set_i64(sv->ckpt, step);
  set_i64(sv->ckpt + 8, bytes);
  memcpy(sv->ckpt + HEADER, sv->mem, (size_t)bytes);
  return xfer_start(&sv->ckpt_out, true, sv->ckpt, HEADER + bytes, 0, TAG_CKPT);
}

/* A resuming server: the arena of the checkpoint from worker 0, before
 * anything else. */
static ad_status restore_arena(server *sv) {
  int64_t bytes = arena_bytes(sv->plan, sv->s), step;
  char *buf = ad_xmalloc((size_t)(HEADER + bytes));
  xfer x = {0};
  ad_status st = xfer_start(&x, false, buf, HEADER + bytes, 0, TAG_RESTORE);
  if (st == AD_OK)
    st = xfer_wait1(&x);
  xfer_free(&x);
  step = get_i64(buf);
  if (st == AD_OK && (step < 1 || get_i64(buf + 8) != bytes))
    st = ad_fail(AD_ERR_JOB,
                 "error: parameter server %d: a restore of step %lld with %lld bytes (its arena "
                 "has %lld)",
                 sv->s, (long long)step, (long long)get_i64(buf + 8), (long long)bytes);
  if (st == AD_OK) {
    memcpy(sv->mem, buf + HEADER, (size_t)bytes);
    sv->updates = step;
    for (int w = 0; w < sv->W; w++)
      sv->peers[w].last = step;
  }
  free(buf);
  return st;
}

/* An announcement from worker w: starts receiving the body it announces. */
static ad_status on_announce(server *sv, int w, const int64_t m[3]) {
  const ad_plan *p = sv->plan;
  peer *pr = &sv->peers[w];
  if (pr->done)
    return ad_fail(AD_ERR_JOB, "error: parameter server %d: message from worker %d after its end",
                   sv->s, w);
  switch (m[0]) {
  case ANN_PUSH:
    if (pr->waiting || xfer_busy(&pr->push_in) || m[1] <= pr->last || m[2] < HEADER ||
        m[2] > ((int64_t)1 << 40))
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: unexpected push of step %lld (%lld bytes) from "
                     "worker %d (last pushed: step %lld%s)",
                     sv->s, (long long)m[1], (long long)m[2], w, (long long)pr->last,
                     pr->waiting ? ", not yet answered" : "");
    grow(&pr->push, &pr->push_cap, m[2]);
    pr->push_len = m[2];
    pr->push_step = m[1];
    return xfer_start(&pr->push_in, false, pr->push, pr->push_len, w, TAG_PUSH);
  case ANN_ROWS:
    if (xfer_busy(&pr->ids_in) || pr->rows_deferred || m[1] < 0 || m[1] >= p->n_shards ||
        p->shards[m[1]].server != sv->s || !p->shards[m[1]].sparse || m[2] < 1 ||
        m[2] > p->shards[m[1]].rows)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: unexpected request of %lld rows of shard %lld "
                     "from worker %d",
                     sv->s, (long long)m[2], (long long)m[1], w);
    pr->rows_shard = m[1];
    pr->rows_n = m[2];
    grow(&pr->ids, &pr->ids_cap, 8 * m[2]);
    return xfer_start(&pr->ids_in, false, pr->ids, 8 * m[2], w, TAG_ROWS_REQ);
  case ANN_DONE:
    if (pr->waiting || xfer_busy(&pr->push_in) || xfer_busy(&pr->ids_in) || pr->rows_deferred)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: worker %d ended with a request unanswered", sv->s,
                     w);
    pr->done = true;
    return p->sync != AD_SYNC_BSP ? release(sv) : AD_OK;
  case ANN_CKPT:
    /* Under sync, the update of the step worker 0 has its reply of is the
     * last one applied: one update per step. */
    if (w != 0 || p->sync != AD_SYNC_BSP || pr->waiting || m[1] != sv->updates)
      return ad_fail(AD_ERR_JOB,
                     "error: parameter server %d: unexpected checkpoint of step %lld from worker "
                     "%d (updates applied: %lld)",
                     sv->s, (long long)m[1], w, (long long)sv->updates);
    return send_arena(sv, m[1]);
  default:
    return ad_fail(AD_ERR_JOB, "error: parameter server %d: unknown message %lld from worker %d",
                   sv->s, (long long)m[0], w);
  }
}

/* One round: completes what arrived, moves what is in flight, takes one new
 * announcement. *moved when anything happened. */
static ad_status serve_round(server *sv, bool *moved) {
  for (int w = 0; w < sv->W; w++) {
    peer *pr = &sv->peers[w];
    if (xfer_busy(&pr->push_in)) {
      AD_TRY(xfer_test(&pr->push_in, moved));
      if (!xfer_busy(&pr->push_in))
        AD_TRY(on_push(sv, w));
    }
    if (xfer_busy(&pr->ids_in)) {
      AD_TRY(xfer_test(&pr->ids_in, moved));
      if (!xfer_busy(&pr->ids_in)) {
        pr->rows_deferred = true; /* until its push is answered */
        if (!pr->waiting)
          AD_TRY(answer_rows(sv, w));
      }
    }
    AD_TRY(xfer_test(&pr->reply_out, moved));
    AD_TRY(xfer_test(&pr->rows_out, moved));
  }
  AD_TRY(xfer_test(&sv->ckpt_out, moved));
  int flag = 0;
  MPI_Status st;
  AD_TRY(mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, TAG_ANNOUNCE, MPI_COMM_WORLD, &flag, &st),
                   "MPI_Iprobe"));
  if (!flag)
    return AD_OK;
  int64_t m[3];
  AD_TRY(mpi_check(
      MPI_Recv(m, 3, MPI_INT64_T, st.MPI_SOURCE, TAG_ANNOUNCE, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
      "MPI_Recv"));
  *moved = true;
  if (st.MPI_SOURCE < 0 || st.MPI_SOURCE >= sv->W)
    return ad_fail(AD_ERR_JOB, "error: parameter server %d: message from rank %d, not a worker",
                   sv->s, st.MPI_SOURCE);
  return on_announce(sv, st.MPI_SOURCE, m);
}

static ad_status serve(server *sv) {
  double last = now_sec();
  for (;;) {
    bool all_done = true, moved = false;
    for (int w = 0; w < sv->W; w++)
      all_done &= sv->peers[w].done;
    if (all_done)
      break;
    AD_TRY(serve_round(sv, &moved));
    double t = now_sec();
    if (moved)
      last = t;
    else if (t - last > SPIN_SEC)
      nap();
  }
  /* Every worker is done: what is in flight completes, then worker 0 gets the
   * final values. */
  for (int w = 0; w < sv->W; w++) {
    xfer *xs[3] = {&sv->peers[w].reply_out, &sv->peers[w].rows_out, &sv->ckpt_out};
    AD_TRY(xfer_wait(xs, 3));
  }
  ad_ps_msg m = {0};
  xfer x = {0};
  build_values(sv, &m, 0, true);
  ad_status st = xfer_start(&x, true, m.data, m.len, 0, TAG_FINAL);
  if (st == AD_OK)
    st = xfer_wait1(&x);
  xfer_free(&x);
  ad_ps_msg_free(&m);
  return st;
}

ad_status ad_ps_server_run(const ad_plan *plan, ad_comm *comm, int s, bool restore) {
  AD_ASSERT(plan->training && s >= 0 && s < plan->n_servers);
  prctl(PR_SET_TIMERSLACK, 1000UL);
  server sv = {.plan = plan, .comm = comm, .s = s, .W = plan->replicas};
  ad_status st = server_setup(&sv);
  if (st == AD_OK && restore)
    st = restore_arena(&sv);
  if (st == AD_OK)
    st = serve(&sv);
  server_free(&sv);
  return st;
}
