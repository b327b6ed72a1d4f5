/*
 * runtime/comm_mpi.c: the MPI backend of runtime/comm.h, for CPU workers on
 * one or more nodes. All-reduce buckets are MPI_Iallreduce(MPI_IN_PLACE,
 * MPI_FLOAT, MPI_SUM) requests kept in a table indexed by bucket number, so
 * the reduction of one bucket overlaps the backward pass computing the next;
 * wait is MPI_Wait on that request. A bucket with nothing left to overlap
 * uses the blocking MPI_Allreduce. fp16 buffers (--compress fp16) are
 * MPI_UINT16_T with a user sum op. Counts above INT_MAX elements are split into
 * several requests per bucket (MPI counts are int).
 *
 * Collectives run over `comm`: MPI_COMM_WORLD, or after set_workers the
 * communicator of the workers (MPI_Comm_split of ranks 0..n_workers-1), so
 * that parameter servers (the other ranks) take part in none. The servers'
 * point-to-point traffic (runtime/ps.c) uses MPI_COMM_WORLD directly.
 *
 * MPI's default error handler aborts the job on a failed call; the launcher
 * notices the dead processes and reports them. The status checks below cover
 * the error-returning handler too.
 */
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct bucket {
  MPI_Request *req;
  int n_req, cap;
  int active;
} bucket;

typedef struct mpi_ctx {
  bucket *buckets;
  int64_t n_buckets;
  MPI_Op sum_f16; /* user op: binary16 sum (MPI has no half type) */
  MPI_Comm comm;  /* the collectives' ranks: MPI_COMM_WORLD or the workers' */
} mpi_ctx;

/* inout[i] = in[i] + inout[i] in binary16: the float32 sum of two halves rounded
 * to half is the correctly rounded half sum (float32 has more than 2*11+2
 * significand bits), the same as PyTorch's CPU half addition. */
static void sum_f16(void *in, void *inout, int *len, MPI_Datatype *dt) {
  const _Float16 *a = in;
  _Float16 *b = inout;
  for (int i = 0; i < *len; i++)
    b[i] = (_Float16)((float)a[i] + (float)b[i]);
}

/* MPI type, op and element size of an all-reduce buffer. */
static void elem_mpi(const mpi_ctx *m, ad_comm_elem elem, MPI_Datatype *type, MPI_Op *op,
                     size_t *size) {
  AD_ASSERT(elem == AD_COMM_F32 || elem == AD_COMM_F16);
  *type = elem == AD_COMM_F32 ? MPI_FLOAT : MPI_UINT16_T;
  *op = elem == AD_COMM_F32 ? MPI_SUM : m->sum_f16;
  *size = elem == AD_COMM_F32 ? 4 : 2;
}

ad_status ad_mpi_check(int rc, const char *what) {
  if (rc == MPI_SUCCESS)
    return AD_OK;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return ad_fail(AD_ERR_JOB, "error: %s failed: %s", what, msg);
}

static ad_status mpi_allreduce_start(void *ctx, int64_t b, void *buf, int64_t count,
                                     ad_comm_elem elem) {
  mpi_ctx *m = ctx;
  MPI_Datatype type;
  MPI_Op op;
  size_t size;
  elem_mpi(m, elem, &type, &op, &size);
  if (b >= m->n_buckets) {
    int64_t n = b + 1 > 2 * m->n_buckets ? b + 1 : 2 * m->n_buckets;
    m->buckets = ad_xrealloc(m->buckets, (size_t)n * sizeof *m->buckets);
    for (int64_t i = m->n_buckets; i < n; i++)
      m->buckets[i] = (bucket){0};
    m->n_buckets = n;
  }
  bucket *bk = &m->buckets[b];
  AD_ASSERT(!bk->active); /* generated code waits before restarting a bucket */
  int need = (int)((count + INT_MAX - 1) / INT_MAX);
  if (need > bk->cap) {
    bk->req = ad_xrealloc(bk->req, (size_t)need * sizeof *bk->req);
    bk->cap = need;
  }
  bk->n_req = 0;
  for (int64_t done = 0; done < count; done += INT_MAX) {
    int n = (int)(count - done < INT_MAX ? count - done : INT_MAX);
    AD_TRY(ad_mpi_check(MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + done * (int64_t)size, n, type,
                                       op, m->comm, &bk->req[bk->n_req++]),
                        "MPI_Iallreduce"));
  }
  bk->active = 1;
  return AD_OK;
}

static ad_status mpi_allreduce_wait(void *ctx, int64_t b) {
  mpi_ctx *m = ctx;
  AD_ASSERT(b < m->n_buckets && m->buckets[b].active);
  bucket *bk = &m->buckets[b];
  bk->active = 0;
  return ad_mpi_check(MPI_Waitall(bk->n_req, bk->req, MPI_STATUSES_IGNORE), "MPI_Wait");
}

/* Blocking: OpenMPI's blocking all-reduce is faster than its non-blocking one
 * (libnbc) when there is nothing to overlap. */
static ad_status mpi_allreduce(void *ctx, void *buf, int64_t count, ad_comm_elem elem) {
  mpi_ctx *m = ctx;
  MPI_Datatype type;
  MPI_Op op;
  size_t size;
  elem_mpi(ctx, elem, &type, &op, &size);
  for (int64_t done = 0; done < count; done += INT_MAX) {
    int n = (int)(count - done < INT_MAX ? count - done : INT_MAX);
    AD_TRY(ad_mpi_check(
        MPI_Allreduce(MPI_IN_PLACE, (char *)buf + done * (int64_t)size, n, type, op, m->comm),
        "MPI_Allreduce"));
  }
  return AD_OK;
}

static ad_status mpi_sum_f64(void *ctx, double *vals, int n) {
  mpi_ctx *m = ctx;
  return ad_mpi_check(MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_DOUBLE, MPI_SUM, m->comm),
                      "MPI_Allreduce");
}

static ad_status mpi_gather(void *ctx, const void *send, int64_t bytes, void *recv) {
  /* MPI_Gatherv with equal counts (the contract allows per-rank sizes later). */
  mpi_ctx *m = ctx;
  int size, rank;
  MPI_Comm_size(m->comm, &size);
  MPI_Comm_rank(m->comm, &rank);
  if (bytes > INT_MAX || bytes * size > INT_MAX)
    return ad_fail(AD_ERR_JOB, "error: gather of %lld bytes per rank is too large",
                   (long long)bytes);
  int *counts = ad_xmalloc((size_t)size * sizeof(int));
  int *displs = ad_xmalloc((size_t)size * sizeof(int));
  for (int r = 0; r < size; r++) {
    counts[r] = (int)bytes;
    displs[r] = (int)(bytes * r);
  }
  ad_status st = ad_mpi_check(MPI_Gatherv(send, (int)bytes, MPI_BYTE, rank == 0 ? recv : NULL,
                                          counts, displs, MPI_BYTE, 0, m->comm),
                              "MPI_Gatherv");
  free(counts);
  free(displs);
  return st;
}

/* Ranks from n_workers on get MPI_COMM_NULL: they must call no collective. */
static ad_status mpi_set_workers(void *ctx, int n_workers) {
  mpi_ctx *m = ctx;
  AD_ASSERT(m->comm == MPI_COMM_WORLD);
  int rank;
  AD_TRY(ad_mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank"));
  return ad_mpi_check(
      MPI_Comm_split(MPI_COMM_WORLD, rank < n_workers ? 0 : MPI_UNDEFINED, rank, &m->comm),
      "MPI_Comm_split");
}

static ad_status mpi_finalize(void *ctx) {
  mpi_ctx *m = ctx;
  if (m->sum_f16 != MPI_OP_NULL)
    MPI_Op_free(&m->sum_f16);
  if (m->comm != MPI_COMM_WORLD && m->comm != MPI_COMM_NULL)
    MPI_Comm_free(&m->comm);
  return ad_mpi_check(MPI_Finalize(), "MPI_Finalize");
}

static void mpi_destroy(void *ctx) {
  mpi_ctx *m = ctx;
  for (int64_t i = 0; i < m->n_buckets; i++)
    free(m->buckets[i].req);
  free(m->buckets);
  free(m);
}

static const ad_comm_backend mpi_backend = {
    .name = "mpi",
    .device = AD_DEVICE_CPU,
    .allreduce_start = mpi_allreduce_start,
    .allreduce_wait = mpi_allreduce_wait,
    .allreduce = mpi_allreduce,
    .sum_f64 = mpi_sum_f64,
    .gather = mpi_gather,
    .set_workers = mpi_set_workers,
    .finalize = mpi_finalize,
    .destroy = mpi_destroy,
};

ad_status ad_comm_create_mpi(ad_comm **out) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited)
    AD_TRY(ad_mpi_check(MPI_Init(NULL, NULL), "MPI_Init"));
  int rank = 0, size = 1;
  AD_TRY(ad_mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank"));
  AD_TRY(ad_mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size"));
  mpi_ctx *m = ad_xcalloc(1, sizeof(mpi_ctx));
  m->comm = MPI_COMM_WORLD;
  AD_TRY(ad_mpi_check(MPI_Op_create(sum_f16, 1, &m->sum_f16), "MPI_Op_create"));
  *out = ad_comm_create(&mpi_backend, m, rank, size);
  return AD_OK;
}
