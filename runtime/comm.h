/*
 * runtime/comm.h: the communication layer of a job, one backend behind one
 * opaque handle (ggml/NCCL style). A backend is a table of function pointers
 * plus its private state; today the only one is MPI over host memory
 * (runtime/comm_mpi.c). A GPU backend (NCCL) plugs in as another table whose
 * `device` is AD_DEVICE_CUDA; callers never see which one they talk to.
 *
 * The handle also counts the payload bytes handed to collective calls of the
 * step (an all-reduce of S bytes counts S), which `run --metrics` reports as
 * bytes_sent. Bookkeeping calls (ad_comm_sum_f64, ad_comm_gather) are not
 * counted: they are the runtime's, not the model's. Parameter-server traffic
 * (runtime/ps.c) is counted on the worker side with ad_comm_add_bytes.
 *
 * A job may have more ranks than replicas: parameter servers are the ranks
 * from `replicas` on. After ad_comm_set_workers the collectives (all-reduce,
 * sum_f64, gather) run over the workers only, and a worker's rank and size are
 * those among the workers.
 *
 * Generated code reaches the handle through the `rt` pointer the worker passes
 * to ad_step: that pointer IS the ad_comm * (see ad_rt_allreduce_start in
 * runtime/kernels.h, implemented in comm.c).
 */
#ifndef AD_COMM_H
#define AD_COMM_H

#include "../common/ad.h"

#include <stdbool.h>

typedef enum ad_device_type {
  AD_DEVICE_CPU,  /* host memory */
  AD_DEVICE_CUDA, /* device memory (NCCL backend, not built yet) */
  AD_DEVICE_TYPE_COUNT
} ad_device_type;

const char *ad_device_type_name(ad_device_type t);

/* Element type of an all-reduce buffer: float32, or float16 (IEEE binary16,
 * summed by converting to float32 and rounding each sum back, so the result of
 * one addition is exact binary16 arithmetic). */
typedef enum ad_comm_elem { AD_COMM_F32, AD_COMM_F16, AD_COMM_ELEM_COUNT } ad_comm_elem;

/* One backend: every function gets the backend's own state `ctx`. Functions
 * returning ad_status fail with AD_ERR_JOB and a message. */
typedef struct ad_comm_backend {
  const char *name;      /* "mpi" */
  ad_device_type device; /* where the buffers it is given live */
  /* Non-blocking in-place sum of `count` floats at `buf`, tracked as `bucket`. */
  ad_status (*allreduce_start)(void *ctx, int64_t bucket, void *buf, int64_t count,
                               ad_comm_elem elem);
  /* Blocks until `bucket` (started before) is reduced. */
  ad_status (*allreduce_wait)(void *ctx, int64_t bucket);
  /* Blocking in-place sum of `count` floats at `buf` (a bucket with nothing
   * left to overlap with). */
  ad_status (*allreduce)(void *ctx, void *buf, int64_t count, ad_comm_elem elem);
  /* Blocking in-place sum of n doubles over all ranks. */
  ad_status (*sum_f64)(void *ctx, double *vals, int n);
  /* Blocking gather of `bytes` bytes from every rank into `recv` on rank 0, in
   * rank order (recv holds size * bytes bytes; ignored on other ranks). */
  ad_status (*gather)(void *ctx, const void *send, int64_t bytes, void *recv);
  /* Restricts the collectives above to ranks 0..n_workers-1 (collective over
   * every rank of the job; ranks from n_workers on take part in no collective
   * afterwards). */
  ad_status (*set_workers)(void *ctx, int n_workers);
  /* Ends the backend's part of the job cleanly (collective). */
  ad_status (*finalize)(void *ctx);
  /* Frees ctx (after finalize, or after a failure without it). */
  void (*destroy)(void *ctx);
} ad_comm_backend;

typedef struct ad_comm ad_comm;

/* Wraps a backend (the table is not copied and must outlive the handle; ctx is
 * owned by the handle from now on). */
ad_comm *ad_comm_create(const ad_comm_backend *backend, void *ctx, int rank, int size);

/* AD_OK when an MPI call returned MPI_SUCCESS, else an AD_ERR_JOB failure
 * "error: WHAT failed: <MPI's message>" (comm_mpi.c; also used by ps.c). */
ad_status ad_mpi_check(int rc, const char *what);

/* The MPI backend: calls MPI_Init (once per process) and takes rank and size
 * from MPI_COMM_WORLD. Fails with AD_ERR_JOB when MPI cannot start. */
ad_status ad_comm_create_mpi(ad_comm **out);

/* The rank and the number of ranks the collectives run over: every rank of the
 * job until ad_comm_set_workers, then the workers (a server keeps its rank in
 * the job and the job's size). */
int ad_comm_rank(const ad_comm *c);
int ad_comm_size(const ad_comm *c);

/* Called by every rank of the job, with the plan's replicas, once the plan is
 * known: ranks 0..replicas-1 are the workers, the rest parameter servers.
 * Blocking and collective; a no-op when every rank is a worker. */
ad_status ad_comm_set_workers(ad_comm *c, int replicas);
/* Whether this rank is a worker (true until ad_comm_set_workers says not). */
bool ad_comm_is_worker(const ad_comm *c);
ad_device_type ad_comm_device(const ad_comm *c);
const char *ad_comm_backend_name(const ad_comm *c);

/* The step's all-reduce pair (what ad_rt_allreduce_start/wait call). With one
 * rank both are no-ops and count nothing. A backend failure is recorded and
 * reported by ad_comm_check (generated code cannot take a status). */
void ad_comm_allreduce_start(ad_comm *c, int64_t bucket, void *buf, int64_t count,
                             ad_comm_elem elem);
void ad_comm_allreduce_wait(ad_comm *c, int64_t bucket);
/* Blocking all-reduce (what ad_rt_allreduce calls); counts like start. */
void ad_comm_allreduce(ad_comm *c, void *buf, int64_t count, ad_comm_elem elem);
/* AD_OK, or the first failure recorded since the handle was created. */
ad_status ad_comm_check(const ad_comm *c);
/* Records `st` (with the calling thread's ad_error_message) as the handle's
 * failure unless one is already recorded; AD_OK is a no-op. For runtime C ABI
 * calls other than the all-reduce (runtime/ps.c) that cannot return a status. */
void ad_comm_record(ad_comm *c, ad_status st);
/* Whether a failure is recorded (later communication calls are skipped). */
bool ad_comm_failed(const ad_comm *c);

/* Bytes handed to step communication since the last call; resets the counter. */
int64_t ad_comm_take_bytes(ad_comm *c);
/* Adds n bytes of step communication that did not go through the calls above
 * (parameter-server pushes and pulls). */
void ad_comm_add_bytes(ad_comm *c, int64_t n);

/* The worker's parameter-server state (runtime/ps.h), reached by the
 * ad_rt_ps_* calls of generated code through this handle; NULL when the plan
 * has no servers. Not owned by the handle. */
void ad_comm_set_ps(ad_comm *c, void *ps);
void *ad_comm_ps(const ad_comm *c);

/* Blocking sum of n doubles over all ranks, in place (no-op with one rank). */
ad_status ad_comm_sum_f64(ad_comm *c, double *vals, int n);
/* Blocking gather to rank 0 in rank order; see ad_comm_backend.gather. */
ad_status ad_comm_gather(ad_comm *c, const void *send, int64_t bytes, void *recv);

/* Collective clean end (MPI_Finalize). Call only when every rank succeeded. */
ad_status ad_comm_finalize(ad_comm *c);
/* Frees the handle and the backend state. NULL is a no-op. */
void ad_comm_destroy(ad_comm *c);

#endif
