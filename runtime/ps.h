/*
 * runtime/ps.h: the parameter-server runtime of the server strategies (ps,
 * ps-lb, partitioned-ps, parallax): the worker side behind the ad_rt_ps_*
 * calls of generated code (runtime/kernels.h) and the server loop that a
 * process whose plan device has role server runs instead of training. The
 * wire protocol is described at the top of runtime/ps.c.
 *
 * The message building and row de-duplication below are exported for the unit
 * tests (tests/unit/test_ps.c); the rest of the runtime uses only the
 * create / finish / destroy and server_run functions.
 */
#ifndef AD_PS_H
#define AD_PS_H

#include "comm.h"
#include "plan.h"

#include <stdbool.h>

/* ---- worker side ---- */

typedef struct ad_ps_worker ad_ps_worker;

/* The parameter-server state of this worker of `plan` (which has servers),
 * attached to `comm` (ad_comm_set_ps) so that the ad_rt_ps_* calls find it.
 * The plan and the handle must outlive it. */
ad_ps_worker *ad_ps_worker_create(const ad_plan *plan, ad_comm *comm);

/* After the last step, on every worker: completes what is still in flight,
 * tells every server this worker is done, and on worker 0 receives each
 * server's final shard values and writes them into `mem` (the worker's arena)
 * at their PARAM tensors, so that --save writes the servers' weights.
 * Blocking; AD_ERR_JOB on a failure (also one recorded during the steps). */
ad_status ad_ps_worker_finish(ad_ps_worker *ps, char *mem);

/* On worker 0 after step `step` (every reply of it pulled), for a checkpoint
 * (runtime/checkpoint.h; sync plans only): asks every server for its whole
 * arena as it is after that step's update. *arenas gets one malloc'd buffer
 * per server (its device's mem_bytes), owned by the caller (free each, then
 * the array). Blocking; AD_ERR_JOB on a failure. */
ad_status ad_ps_worker_checkpoint(ad_ps_worker *ps, int64_t step, char ***arenas);

/* On worker 0 of a resumed job, before the first step: sends server s the
 * arena arenas[s] of a checkpoint taken after step `step` (the servers were
 * started with restore and wait for it). Blocking. */
ad_status ad_ps_worker_restore(ad_ps_worker *ps, int64_t step, const char *const *arenas);

/* Detaches from the handle and frees. NULL is a no-op. */
void ad_ps_worker_destroy(ad_ps_worker *ps);

/* ---- server side ---- */

/* Runs parameter server `server` (MPI rank replicas + server) of a training
 * plan until every worker is done and the final values went to worker 0:
 * JIT-compiles the device's module, lays out its arena (mem_bytes, zeroed;
 * each shard's initial value from weights.bin), then serves row requests and
 * pushes as the plan's sync mode says. With `restore` (run --resume) it first
 * waits for worker 0's ad_ps_worker_restore and continues from there. A
 * checkpoint request of worker 0 is answered with the arena. Blocking;
 * AD_ERR_JOB on a malformed message, AD_ERR_INPUT on a bad module or weights
 * file. */
ad_status ad_ps_server_run(const ad_plan *plan, ad_comm *comm, int server, bool restore);

/* ---- message building (exported for tests) ---- */

/* A growable message: a 16-byte header {int64 step, int64 n_segments} and
 * segments, each 8-byte aligned. */
typedef struct ad_ps_msg {
  char *data;
  int64_t len, cap;
} ad_ps_msg;

/* Empties m and writes the header (step, no segments). */
void ad_ps_msg_begin(ad_ps_msg *m, int64_t step);
/* Appends a whole-shard segment: `bytes` bytes at src. */
void ad_ps_msg_add(ad_ps_msg *m, int64_t shard, const void *src, int64_t bytes);
/* Appends a rows segment of sparse `shard` (rows [row0, row0 + rows) of an
 * n_rows-row table, `inner` floats a row) with the rows the m indices touch
 * and, per row, the sum of the dy rows that touched it (ad_ps_rows_touched).
 * Returns the number of rows; appends nothing when there are none. */
int64_t ad_ps_msg_add_rows(ad_ps_msg *m, int64_t shard, int64_t row0, int64_t rows, int64_t n_rows,
                           const void *idx, int64_t n_idx, bool is_i32, const float *dy,
                           int64_t inner);
void ad_ps_msg_free(ad_ps_msg *m);

/* The distinct rows of a shard [row0, row0 + rows) of an n_rows-row table
 * that the n_idx indices idx (int64, or int32 when is_i32) touch: negative
 * indices count from the end, out-of-range ones are skipped. Writes them as
 * local rows (index - row0), ascending, to ids (room for min(n_idx, rows))
 * and returns their count. When dy is not NULL, sums (room for that many rows
 * of `inner` floats) gets per row 0 + the dy rows j that touched it, added in
 * order of j (exactly the scatter-add of ad_k_scatter_add). */
int64_t ad_ps_rows_touched(const void *idx, int64_t n_idx, bool is_i32, int64_t n_rows,
                           int64_t row0, int64_t rows, const float *dy, int64_t inner, int64_t *ids,
                           float *sums);

/* One segment of a message, as read by ad_ps_msg_next. */
typedef struct ad_ps_seg {
  int64_t shard;
  bool rows;          /* a rows segment (n rows, ids), else the whole shard */
  int64_t n;          /* rows segment: rows; whole: bytes */
  const int64_t *ids; /* rows segment: n local rows */
  const char *data;   /* whole: n bytes; rows: n * row_bytes bytes, in ids order */
} ad_ps_seg;

/* Reads the segment at *pos (start at 16, after the header) of a message of
 * len bytes and advances *pos. Each segment is checked against the plan: a
 * shard of server `server` (-1: of any server), a whole segment of exactly its
 * bytes, a rows segment only of a sparse shard with local rows in range.
 * AD_ERR_JOB naming what is wrong. */
ad_status ad_ps_msg_next(const ad_plan *plan, int server, const char *msg, int64_t len,
                         int64_t *pos, ad_ps_seg *seg);

#endif
