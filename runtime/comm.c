/*
 * runtime/comm.c: the backend-independent half of the communication layer
 * (see comm.h): the handle, byte accounting, the single-rank shortcut, and the
 * C ABI that generated code calls (ad_rt_allreduce_start/wait). The
 * parameter-server calls (ad_rt_ps_*) live in runtime/ps.c and reach this
 * handle through ad_comm_ps, ad_comm_add_bytes and ad_comm_record.
 *
 * Generated code cannot take an ad_status, so a failing backend call is
 * recorded in the handle (the first failure wins) and later calls become
 * no-ops; the worker asks ad_comm_check after every step. With the MPI backend
 * a failed collective normally aborts the job before that (MPI's default
 * error handler), which the launcher reports.
 */
#include "comm.h"

#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ad_comm {
  const ad_comm_backend *backend;
  void *ctx;
  int rank, size;   /* over the ranks the collectives run on */
  bool worker;      /* false on a parameter server */
  void *ps;         /* the worker's parameter-server state (runtime/ps.c) */
  int64_t bytes;    /* since the last ad_comm_take_bytes */
  ad_status failed; /* first backend failure, AD_OK when none */
  char failure[1024];
};

const char *ad_device_type_name(ad_device_type t) {
  static const char *names[AD_DEVICE_TYPE_COUNT] = {"cpu", "cuda"};
  AD_ASSERT(t >= 0 && t < AD_DEVICE_TYPE_COUNT);
  return names[t];
}

ad_comm *ad_comm_create(const ad_comm_backend *backend, void *ctx, int rank, int size) {
  AD_ASSERT(backend && size >= 1 && rank >= 0 && rank < size);
  ad_comm *c = ad_xcalloc(1, sizeof *c);
  c->backend = backend;
  c->ctx = ctx;
  c->rank = rank;
  c->size = size;
  c->worker = true;
  return c;
}

int ad_comm_rank(const ad_comm *c) {
  return c->rank;
}
int ad_comm_size(const ad_comm *c) {
  return c->size;
}
ad_status ad_comm_set_workers(ad_comm *c, int replicas) {
  AD_ASSERT(replicas >= 1 && replicas <= c->size);
  if (replicas == c->size)
    return AD_OK;
  AD_TRY(c->backend->set_workers(c->ctx, replicas));
  c->worker = c->rank < replicas;
  if (c->worker)
    c->size = replicas;
  return AD_OK;
}

bool ad_comm_is_worker(const ad_comm *c) {
  return c->worker;
}

ad_device_type ad_comm_device(const ad_comm *c) {
  return c->backend->device;
}
const char *ad_comm_backend_name(const ad_comm *c) {
  return c->backend->name;
}

void ad_comm_record(ad_comm *c, ad_status st) {
  if (st == AD_OK || c->failed != AD_OK)
    return;
  c->failed = st;
  snprintf(c->failure, sizeof c->failure, "%s", ad_error_message());
}

bool ad_comm_failed(const ad_comm *c) {
  return c->failed != AD_OK;
}

static const int64_t elem_bytes[AD_COMM_ELEM_COUNT] = {4, 2};

void ad_comm_allreduce_start(ad_comm *c, int64_t bucket, void *buf, int64_t count,
                             ad_comm_elem elem) {
  AD_ASSERT(bucket >= 0 && count >= 0 && c->worker);
  if (c->size == 1 || c->failed != AD_OK)
    return;
  c->bytes += count * elem_bytes[elem];
  ad_comm_record(c, c->backend->allreduce_start(c->ctx, bucket, buf, count, elem));
}

void ad_comm_allreduce_wait(ad_comm *c, int64_t bucket) {
  AD_ASSERT(bucket >= 0);
  if (c->size == 1 || c->failed != AD_OK)
    return;
  ad_comm_record(c, c->backend->allreduce_wait(c->ctx, bucket));
}

void ad_comm_allreduce(ad_comm *c, void *buf, int64_t count, ad_comm_elem elem) {
  AD_ASSERT(count >= 0);
  if (c->size == 1 || c->failed != AD_OK)
    return;
  c->bytes += count * elem_bytes[elem];
  ad_comm_record(c, c->backend->allreduce(c->ctx, buf, count, elem));
}

ad_status ad_comm_check(const ad_comm *c) {
  if (c->failed == AD_OK)
    return AD_OK;
  return ad_fail(c->failed, "%s", c->failure);
}

int64_t ad_comm_take_bytes(ad_comm *c) {
  int64_t b = c->bytes;
  c->bytes = 0;
  return b;
}

void ad_comm_add_bytes(ad_comm *c, int64_t n) {
  AD_ASSERT(n >= 0);
  c->bytes += n;
}

void ad_comm_set_ps(ad_comm *c, void *ps) {
  c->ps = ps;
}

void *ad_comm_ps(const ad_comm *c) {
  return c->ps;
}

ad_status ad_comm_sum_f64(ad_comm *c, double *vals, int n) {
  AD_ASSERT(c->worker);
  if (c->size == 1)
    return AD_OK;
  return c->backend->sum_f64(c->ctx, vals, n);
}

ad_status ad_comm_gather(ad_comm *c, const void *send, int64_t bytes, void *recv) {
  AD_ASSERT(c->worker);
  if (c->size == 1) {
    if (bytes)
      memmove(recv, send, (size_t)bytes);
    return AD_OK;
  }
  return c->backend->gather(c->ctx, send, bytes, recv);
}

ad_status ad_comm_finalize(ad_comm *c) {
  return c->backend->finalize(c->ctx);
}

void ad_comm_destroy(ad_comm *c) {
  if (!c)
    return;
  c->backend->destroy(c->ctx);
  free(c);
}

/* ---- the C ABI of generated code: rt is the worker's ad_comm * ---- */

void ad_rt_allreduce_start(void *rt, int64_t bucket, float *buf, int64_t count) {
  ad_comm_allreduce_start(rt, bucket, buf, count, AD_COMM_F32);
}

void ad_rt_allreduce_start_f16(void *rt, int64_t bucket, uint16_t *buf, int64_t count) {
  ad_comm_allreduce_start(rt, bucket, buf, count, AD_COMM_F16);
}

void ad_rt_allreduce_wait(void *rt, int64_t bucket) {
  ad_comm_allreduce_wait(rt, bucket);
}

void ad_rt_allreduce(void *rt, float *buf, int64_t count) {
  ad_comm_allreduce(rt, buf, count, AD_COMM_F32);
}

void ad_rt_allreduce_f16(void *rt, uint16_t *buf, int64_t count) {
  ad_comm_allreduce(rt, buf, count, AD_COMM_F16);
}
