/*
 * runtime/checkpoint.h: `run --checkpoint DIR [--checkpoint-every N]` and
 * `run --checkpoint DIR --resume` (docs/cli.md, "Checkpoints").
 *
 * A checkpoint holds everything that decides the rest of a run: worker 0's
 * PARAM and STATE tensors (under all-reduce every replica holds the same),
 * each parameter server's whole arena (its shards and the optimizer state of
 * its program), the step k it was taken after, and what the data order
 * depends on (k, --shuffle SEED and the number of samples; runtime/data.h).
 * Its identity (the model's and plan.yaml's SHA-256, the global batch) must
 * match the plan that resumes it. Worker 0 (on the chief) writes it as one
 * file DIR/ckpt-<k>: to ckpt-<k>.tmp, fsync, rename, fsync DIR; the file ends
 * with the SHA-256 of everything before it, so a half-written or damaged file
 * never counts. DIR keeps the run's last two checkpoints.
 *
 * Resuming, worker 0 reads the newest complete checkpoint and hands every
 * other worker its tensors and every server its arena (over MPI: the folder
 * need only exist on the chief); the run continues with step k + 1.
 */
#ifndef AD_CHECKPOINT_H
#define AD_CHECKPOINT_H

#include "data.h"
#include "plan.h"
#include "ps.h"

#include <stdbool.h>
#include <stdio.h>

/* `run`, before any process starts: --checkpoint on an inference plan or on
 * servers that do not run --sync, a DIR that is not a folder (or, without
 * --resume, a DIR that already holds checkpoints, or whose parent folder is
 * missing), and with --resume: no complete checkpoint in DIR, one of another
 * model, plan, global batch, --shuffle seed or sample count, or one at or
 * beyond the run's last step. AD_ERR_INPUT naming DIR or the checkpoint. */
ad_status ad_ckpt_check(const ad_plan *plan, const ad_run_opts *opts, int64_t n_samples);

/* Whether step `step` (1-based) of a run of `steps` ends with a checkpoint:
 * every --checkpoint-every N steps, and the last step. */
bool ad_ckpt_due(const ad_run_opts *opts, int64_t step, int64_t steps);

/* On worker 0 after step `step` (its update done; with servers, every reply
 * of the step pulled): takes each server's arena (ps; NULL without servers),
 * writes DIR/ckpt-<step> and keeps only it and the one before it that this
 * process wrote or resumed from (removing damaged and leftover files too).
 * Blocking; AD_ERR_JOB when the file cannot be written. */
ad_status ad_ckpt_save(const ad_plan *plan, const ad_run_opts *opts, int64_t n_samples,
                       ad_ps_worker *ps, const char *mem, int64_t step);

/* --resume, on every worker (worker rank `rank`) before the first step: worker
 * 0 loads the newest complete checkpoint of DIR into its arena `mem`, sends
 * the servers their arenas (ps) and the other workers its tensors, and cuts
 * from the open --metrics file (`metrics`, opened for append; NULL: none) the
 * lines of steps after the checkpoint's; the others receive. *step is the
 * checkpoint's step on every worker. Blocking; the checks of ad_ckpt_check
 * are repeated on worker 0. */
ad_status ad_ckpt_resume(const ad_plan *plan, const ad_run_opts *opts, int64_t n_samples, int rank,
                         ad_ps_worker *ps, char *mem, FILE *metrics, int64_t *step);

#endif
