/*
 * runtime/checkpoint.c: checkpoints of a training run (see checkpoint.h).
 *
 * File DIR/ckpt-<k>: a text header, binary records, a text trailer.
 *
 *   autodist checkpoint 1
 *   autodist_version: 0.1.0
 *   model_sha256: <64 hex>          the plan's model_sha256
 *   plan_sha256: <64 hex>           of PLAN/plan.yaml
 *   strategy: ps
 *   global_batch: 12
 *   samples: 40                     N of the data files
 *   shuffle: 7                      the --shuffle seed, or none
 *   step: 10                        the checkpoint is taken after step k
 *   records: 5
 *   (empty line)
 *   per record: int64 name length, the name, int64 bytes, the bytes
 *   sha256: <64 hex>                of everything before this line
 *
 * Record names: "param NAME" and "state NAME" (worker 0's tensors of those
 * roles), "server S" (server S's arena, device mem_bytes bytes). Integers are
 * little-endian, as the plan's weights.bin.
 *
 * The header says what the data order depends on, so a resumed run reads the
 * same samples: step k + 1 reads stream positions k*B.. whatever came before
 * (runtime/data.h); only the seed and N must be those of the checkpointed run.
 *
 * Handing a checkpoint to the other workers uses MPI point-to-point messages
 * on MPI_COMM_WORLD, like runtime/ps.c (the workers' collectives of comm.h
 * have no broadcast); the servers get theirs through runtime/ps.c.
 */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "autodist checkpoint 1\n"
#define TRAILER 73 /* "sha256: " + 64 hex + "\n" */
#define TAG_SHARE 7101
#define SEND_CHUNK ((int64_t)1 << 30)

/* What a checkpoint must match to be resumed (the header's fields). */
typedef struct ckpt_id {
  char model[65], plan[65];
  char strategy[64];
  int64_t global_batch, samples;
  bool shuffle;
  uint64_t seed;
} ckpt_id;

/* A checkpoint file read and verified. */
typedef struct ckpt {
  char path[4096];
  char *data;
  size_t len;
  int64_t step;
  ckpt_id id;
  int64_t n_records;
  size_t records; /* offset of the first record */
} ckpt;

static ad_status id_of(const ad_plan *plan, const ad_run_opts *o, int64_t n_samples, ckpt_id *id) {
  memset(id, 0, sizeof *id);
  char path[4096];
  snprintf(path, sizeof path, "%s/plan.yaml", plan->dir);
  char *yaml = NULL;
  size_t len = 0;
  AD_TRY(ad_file_read(path, &yaml, &len));
  ad_sha256_hex(yaml, len, id->plan);
  free(yaml);
  snprintf(id->model, sizeof id->model, "%s", plan->model_sha256);
  snprintf(id->strategy, sizeof id->strategy, "%s", plan->strategy);
  id->global_batch = plan->global_batch;
  id->samples = n_samples;
  id->shuffle = o->shuffle;
  id->seed = o->seed;
  return AD_OK;
}

static void shuffle_str(bool shuffle, uint64_t seed, char *buf, size_t cap) {
  if (shuffle)
    snprintf(buf, cap, "%llu", (unsigned long long)seed);
  else
    snprintf(buf, cap, "none");
}

/* ---- the folder ---- */

/* k when `name` is "ckpt-<k>" (k >= 1, no leading zeros) and, with `tmp`,
 * "ckpt-<k>.tmp"; else -1. */
static int64_t name_step(const char *name, bool tmp) {
  if (strncmp(name, "ckpt-", 5) || name[5] < '1' || name[5] > '9')
    return -1;
  char *end;
  errno = 0;
  long long k = strtoll(name + 5, &end, 10);
  if (errno || k <= 0)
    return -1;
  return !strcmp(end, tmp ? ".tmp" : "") ? k : -1;
}

static int cmp_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x > y ? -1 : x < y;
}

/* The steps of the files named ckpt-<k> in dir, newest first (*n = 0 when
 * there are none or dir does not exist). The caller frees *steps. */
static void list_steps(const char *dir, int64_t **steps, int *n) {
  AD_VEC(int64_t) v = {0};
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    int64_t k = name_step(e->d_name, false);
    if (k > 0)
      AD_VEC_PUSH(v, k);
  }
  if (d)
    closedir(d);
  if (v.len)
    qsort(v.data, (size_t)v.len, sizeof *v.data, cmp_desc);
  *steps = v.data;
  *n = v.len;
}

/* The checkpoint before the next one, known to be complete: the last one
 * this process wrote or resumed from (0: none). One job per process. */
static int64_t last_good;

/* Keeps ckpt-<step> and ckpt-<last_good>; removes every other checkpoint
 * (a damaged one that resuming skipped, too) and leftover ckpt-<k>.tmp of dir. */
static void prune(const char *dir, int64_t step) {
  int64_t keep = last_good;
  last_good = step;
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    int64_t k = name_step(e->d_name, false);
    if ((k > 0 && k != step && k != keep) || name_step(e->d_name, true) > 0) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
  }
  if (d)
    closedir(d);
}

/* ---- reading ---- */

/* The value of "key: value" in the header text hdr (NUL-terminated) into buf;
 * false when the key is missing. */
static bool field(const char *hdr, const char *key, char *buf, size_t cap) {
  size_t kl = strlen(key);
  for (const char *p = hdr; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
    if (strncmp(p, key, kl) || p[kl] != ':' || p[kl + 1] != ' ')
      continue;
    const char *v = p + kl + 2, *e = strchr(v, '\n');
    size_t n = e ? (size_t)(e - v) : strlen(v);
    if (n + 1 > cap)
      return false;
    memcpy(buf, v, n);
    buf[n] = 0;
    return true;
  }
  return false;
}

static bool field_i64(const char *hdr, const char *key, int64_t *out) {
  char v[64], *end;
  if (!field(hdr, key, v, sizeof v) || !v[0])
    return false;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  *out = x;
  return !*end && !errno && x >= 0;
}

/* Checks the format of c->data (the trailer's hash, the header, that the
 * records fill the file exactly) and fills the rest of c. NULL when the file
 * is a complete checkpoint, else what is wrong. */
static const char *parse(ckpt *c) {
  size_t ml = strlen(MAGIC);
  if (c->len < ml + TRAILER || memcmp(c->data, MAGIC, ml))
    return "not an autodist checkpoint, or cut short";
  const char *tr = c->data + c->len - TRAILER;
  char want[65];
  ad_sha256_hex(c->data, c->len - TRAILER, want);
  if (memcmp(tr, "sha256: ", 8) || memcmp(tr + 8, want, 64) || tr[72] != '\n')
    return "its SHA-256 does not match (cut short or damaged)";
  const char *end = NULL;
  for (size_t i = ml; !end && i + 1 < c->len - TRAILER && i < 65536; i++)
    if (c->data[i] == '\n' && c->data[i + 1] == '\n')
      end = c->data + i + 2;
  if (!end)
    return "no end of header";
  size_t hl = (size_t)(end - c->data);
  char *hdr = ad_xmalloc(hl + 1);
  memcpy(hdr, c->data, hl);
  hdr[hl] = 0;
  char shuffle[64];
  ckpt_id *id = &c->id;
  bool ok = field(hdr, "model_sha256", id->model, sizeof id->model) &&
            field(hdr, "plan_sha256", id->plan, sizeof id->plan) &&
            field(hdr, "strategy", id->strategy, sizeof id->strategy) &&
            field_i64(hdr, "global_batch", &id->global_batch) &&
            field_i64(hdr, "samples", &id->samples) && field_i64(hdr, "step", &c->step) &&
            field_i64(hdr, "records", &c->n_records) &&
            field(hdr, "shuffle", shuffle, sizeof shuffle);
  free(hdr);
  if (!ok)
    return "a header field is missing or malformed";
  id->shuffle = strcmp(shuffle, "none") != 0;
  id->seed = id->shuffle ? strtoull(shuffle, NULL, 10) : 0;
  c->records = hl;
  /* Each record: a length, that many bytes, twice (name, then data). */
  size_t pos = hl, stop = c->len - TRAILER;
  for (int64_t r = 0; r < 2 * c->n_records; r++) {
    int64_t n = -1;
    if (pos + 8 <= stop)
      memcpy(&n, c->data + pos, 8);
    if (n < 0 || (uint64_t)n > stop - pos - 8)
      return "a record is cut short";
    pos += 8 + (size_t)n;
  }
  return pos == stop ? NULL : "stray bytes after the records";
}

/* The bytes of record `name`, which must hold exactly `bytes`; NULL when the
 * checkpoint has no such record. */
static const char *record(const ckpt *c, const char *name, int64_t bytes) {
  size_t pos = c->records, nl = strlen(name);
  for (int64_t r = 0; r < c->n_records; r++) {
    int64_t n, b;
    memcpy(&n, c->data + pos, 8);
    const char *nm = c->data + pos + 8;
    memcpy(&b, nm + n, 8);
    if ((size_t)n == nl && !memcmp(nm, name, nl) && b == bytes)
      return nm + n + 8;
    pos += 16 + (size_t)n + (size_t)b;
  }
  return NULL;
}

/* Whether checkpoint c can continue the run `id` of `steps` steps; else an
 * AD_ERR_INPUT naming the checkpoint. */
static ad_status check_id(const ckpt *c, const ckpt_id *id, int64_t steps) {
  const ckpt_id *h = &c->id;
  if (strcmp(h->model, id->model))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint is of another model (model_sha256 %.12s..., the "
                   "plan's model is %.12s...)",
                   c->path, h->model, id->model);
  if (h->global_batch != id->global_batch)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint was written with global batch %lld; the plan has "
                   "%lld",
                   c->path, (long long)h->global_batch, (long long)id->global_batch);
  if (strcmp(h->plan, id->plan))
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint was written by another plan of this model "
                   "(strategy %s, plan.yaml sha256 %.12s...; this plan: strategy %s, %.12s...); "
                   "resume with the plan that wrote it",
                   c->path, h->strategy, h->plan, id->strategy, id->plan);
  if (h->shuffle != id->shuffle || h->seed != id->seed) {
    char was[32], now[32];
    shuffle_str(h->shuffle, h->seed, was, sizeof was);
    shuffle_str(id->shuffle, id->seed, now, sizeof now);
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint was written by a run with --shuffle %s, this run "
                   "has --shuffle %s (the data order must stay the same)",
                   c->path, was, now);
  }
  if (h->samples != id->samples)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint was written by a run over %lld samples; this "
                   "run's data has %lld (the data order must stay the same)",
                   c->path, (long long)h->samples, (long long)id->samples);
  if (c->step >= steps)
    return ad_fail(AD_ERR_INPUT,
                   "%s: error: this checkpoint is at step %lld and the run ends at step %lld: "
                   "nothing left to train (--steps and --epochs count from the start of the run)",
                   c->path, (long long)c->step, (long long)steps);
  return AD_OK;
}

static void ckpt_free(ckpt *c) {
  free(c->data);
  c->data = NULL;
}

/* The newest complete checkpoint of dir, checked against the run `id` of
 * `steps` steps. Damaged ones are skipped (with a warning when `warn`). */
static ad_status load_latest(const char *dir, const ckpt_id *id, int64_t steps, bool warn,
                             ckpt *c) {
  int64_t *list;
  int n, damaged = 0;
  list_steps(dir, &list, &n);
  for (int i = 0; i < n; i++) {
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s/ckpt-%lld", dir, (long long)list[i]);
    const char *bad = NULL;
    if (ad_file_read(c->path, &c->data, &c->len) != AD_OK)
      bad = "cannot be read";
    else if (!(bad = parse(c)) && c->step != list[i])
      bad = "its step is not the one its name says";
    if (bad) {
      if (warn)
        fprintf(stderr, "autodist: warning: %s: %s; checkpoint skipped\n", c->path, bad);
      ckpt_free(c);
      damaged++;
      continue;
    }
    free(list);
    ad_status st = check_id(c, id, steps);
    if (st != AD_OK)
      ckpt_free(c);
    return st;
  }
  free(list);
  if (damaged)
    return ad_fail(AD_ERR_INPUT, "error: --resume: no complete checkpoint in '%s' (%d damaged)",
                   dir, damaged);
  return ad_fail(AD_ERR_INPUT,
                 "error: --resume: no checkpoint in '%s' (ckpt-<step> files written by "
                 "--checkpoint)",
                 dir);
}

/* ---- checks before the job ---- */

/* DIR is a writable folder, or (without --resume) can be made. */
static ad_status check_folder(const ad_run_opts *o) {
  struct stat s;
  bool exists = stat(o->checkpoint, &s) == 0;
  if (exists && !S_ISDIR(s.st_mode))
    return ad_fail(AD_ERR_INPUT, "error: --checkpoint %s: is not a folder", o->checkpoint);
  if (exists) {
    if (access(o->checkpoint, W_OK | X_OK) != 0)
      return ad_fail(AD_ERR_INPUT, "error: --checkpoint %s: folder is not writable", o->checkpoint);
    return AD_OK;
  }
  if (o->resume)
    return ad_fail(AD_ERR_INPUT, "error: --resume: no checkpoint in '%s' (no such folder)",
                   o->checkpoint);
  /* Worker 0 makes the folder at the first checkpoint; its parent must be there. */
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", o->checkpoint);
  size_t n = strlen(parent);
  while (n > 1 && parent[n - 1] == '/')
    parent[--n] = 0;
  char *slash = strrchr(parent, '/');
  if (!slash)
    snprintf(parent, sizeof parent, ".");
  else if (slash == parent)
    parent[1] = 0;
  else
    *slash = 0;
  if (stat(parent, &s) != 0 || !S_ISDIR(s.st_mode))
    return ad_fail(AD_ERR_INPUT, "error: --checkpoint %s: folder '%s' does not exist",
                   o->checkpoint, parent);
  if (access(parent, W_OK | X_OK) != 0)
    return ad_fail(AD_ERR_INPUT, "error: --checkpoint %s: folder '%s' is not writable",
                   o->checkpoint, parent);
  return AD_OK;
}

ad_status ad_ckpt_check(const ad_plan *plan, const ad_run_opts *o, int64_t n_samples) {
  if (!o->checkpoint)
    return AD_OK;
  if (!plan->training)
    return ad_fail(AD_ERR_INPUT,
                   "error: --checkpoint applies to training plans; %s is an inference plan",
                   o->plan_dir);
  if (plan->n_servers && plan->sync != AD_SYNC_BSP)
    return ad_fail(AD_ERR_INPUT,
                   "error: --checkpoint: the servers of %s apply each push on its own (compiled "
                   "with --%s), so no step has one consistent state to save; compile with --sync "
                   "to checkpoint",
                   o->plan_dir, plan->sync == AD_SYNC_ASYNC ? "async" : "staleness");
  AD_TRY(check_folder(o));
  if (!o->resume) {
    int64_t *list;
    int n;
    list_steps(o->checkpoint, &list, &n);
    int64_t newest = n ? list[0] : 0;
    free(list);
    if (n)
      return ad_fail(AD_ERR_INPUT,
                     "error: --checkpoint %s: the folder holds checkpoints already (ckpt-%lld); "
                     "continue from them with --resume, or use another folder",
                     o->checkpoint, (long long)newest);
    return AD_OK;
  }
  ckpt_id id;
  AD_TRY(id_of(plan, o, n_samples, &id));
  ckpt c;
  AD_TRY(load_latest(o->checkpoint, &id, ad_run_steps(plan, o, n_samples), true, &c));
  ckpt_free(&c);
  return AD_OK;
}

bool ad_ckpt_due(const ad_run_opts *o, int64_t step, int64_t steps) {
  return o->checkpoint &&
         (step == steps || (o->checkpoint_every && step % o->checkpoint_every == 0));
}

/* ---- writing ---- */

typedef struct sbuf {
  char *data;
  size_t len, cap;
} sbuf;

static void put(sbuf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t c = b->cap ? b->cap : 4096;
    while (c < b->len + n)
      c *= 2;
    b->data = ad_xrealloc(b->data, c);
    b->cap = c;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_record(sbuf *b, const char *name, const void *data, int64_t bytes) {
  int64_t n = (int64_t)strlen(name);
  put(b, &n, 8);
  put(b, name, (size_t)n);
  put(b, &bytes, 8);
  put(b, data, (size_t)bytes);
}

static bool is_saved(const ad_plan_tensor *t) {
  return t->role == AD_ROLE_PARAM || t->role == AD_ROLE_STATE;
}

static ad_status write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return AD_ERR_JOB;
    p += k;
    n -= (size_t)k;
  }
  return AD_OK;
}

/* dir/ckpt-<step>: to ckpt-<step>.tmp, fsync, rename, fsync dir. */
static ad_status write_file(const char *dir, int64_t step, const sbuf *b) {
  if (mkdir(dir, 0777) != 0 && errno != EEXIST)
    return ad_fail(AD_ERR_JOB, "error: --checkpoint %s: cannot make the folder: %s", dir,
                   strerror(errno));
  char tmp[4096], path[4096];
  snprintf(path, sizeof path, "%s/ckpt-%lld", dir, (long long)step);
  snprintf(tmp, sizeof tmp, "%s/ckpt-%lld.tmp", dir, (long long)step);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0)
    return ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", tmp, strerror(errno));
  bool ok = write_all(fd, b->data, b->len) == AD_OK && fsync(fd) == 0;
  int err = errno;
  ok = close(fd) == 0 && ok;
  if (ok && rename(tmp, path) != 0) {
    err = errno;
    ok = false;
  }
  if (!ok) {
    unlink(tmp);
    return ad_fail(AD_ERR_JOB, "%s: error: cannot write: %s", tmp, strerror(err ? err : EIO));
  }
  /* The rename itself must reach the disk before older checkpoints go. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return AD_OK;
}

ad_status ad_ckpt_save(const ad_plan *plan, const ad_run_opts *o, int64_t n_samples,
                       ad_ps_worker *ps, const char *mem, int64_t step) {
  ckpt_id id;
  AD_TRY(id_of(plan, o, n_samples, &id));
  char **arenas = NULL;
  if (ps)
    AD_TRY(ad_ps_worker_checkpoint(ps, step, &arenas));
  int64_t n = plan->n_servers;
  for (int i = 0; i < plan->n_tensors; i++)
    n += is_saved(&plan->tensors[i]);
  char shuffle[32], head[1024];
  shuffle_str(id.shuffle, id.seed, shuffle, sizeof shuffle);
  int hl = snprintf(head, sizeof head,
                    MAGIC "autodist_version: %s\nmodel_sha256: %s\nplan_sha256: %s\nstrategy: "
                          "%s\nglobal_batch: %lld\nsamples: %lld\nshuffle: %s\nstep: %lld\n"
                          "records: %lld\n\n",
                    AD_VERSION, id.model, id.plan, id.strategy, (long long)id.global_batch,
                    (long long)id.samples, shuffle, (long long)step, (long long)n);
  AD_ASSERT(hl > 0 && (size_t)hl < sizeof head);
  sbuf b = {0};
  put(&b, head, (size_t)hl);
  for (int i = 0; i < plan->n_tensors; i++) {
    const ad_plan_tensor *t = &plan->tensors[i];
    if (!is_saved(t))
      continue;
    char name[1024];
    snprintf(name, sizeof name, "%s %s", t->role == AD_ROLE_PARAM ? "param" : "state", t->name);
    put_record(&b, name, mem + t->offset, t->bytes);
  }
  for (int s = 0; s < plan->n_servers; s++) {
    char name[32];
    snprintf(name, sizeof name, "server %d", s);
    put_record(&b, name, arenas[s], plan->devices[plan->replicas + s].mem_bytes);
    free(arenas[s]);
  }
  free(arenas);
  char sum[65], tail[TRAILER + 1];
  ad_sha256_hex(b.data, b.len, sum);
  snprintf(tail, sizeof tail, "sha256: %s\n", sum);
  put(&b, tail, TRAILER);
  ad_status st = write_file(o->checkpoint, step, &b);
  free(b.data);
  if (st == AD_OK)
    prune(o->checkpoint, step);
  return st;
}

/* ---- resuming ---- */

/* Bytes of every PARAM and STATE tensor of a worker arena. */
static int64_t saved_bytes(const ad_plan *plan) {
  int64_t n = 0;
  for (int i = 0; i < plan->n_tensors; i++)
    if (is_saved(&plan->tensors[i]))
      n += plan->tensors[i].bytes;
  return n;
}

/* Copies the saved tensors between the arena and buf (in plan order). */
static void pack(const ad_plan *plan, char *mem, char *buf, bool to_buf) {
  int64_t at = 0;
  for (int i = 0; i < plan->n_tensors; i++) {
    const ad_plan_tensor *t = &plan->tensors[i];
    if (!is_saved(t))
      continue;
    if (to_buf)
      memcpy(buf + at, mem + t->offset, (size_t)t->bytes);
    else
      memcpy(mem + t->offset, buf + at, (size_t)t->bytes);
    at += t->bytes;
  }
}

/* Worker 0 sends the step and its saved tensors to every other worker, which
 * receive them into their arenas. */
static ad_status share(const ad_plan *plan, int rank, char *mem, int64_t *step) {
  if (plan->replicas == 1)
    return AD_OK;
  int64_t len = 8 + saved_bytes(plan);
  char *buf = ad_xmalloc((size_t)len);
  if (rank == 0) {
    memcpy(buf, step, 8);
    pack(plan, mem, buf + 8, true);
  }
  ad_status st = AD_OK;
  for (int r = rank == 0 ? 1 : 0; st == AD_OK && r < (rank == 0 ? plan->replicas : 1); r++)
    for (int64_t at = 0; st == AD_OK && at < len; at += SEND_CHUNK) {
      int n = (int)(len - at < SEND_CHUNK ? len - at : SEND_CHUNK);
      int rc = rank == 0 ? MPI_Send(buf + at, n, MPI_BYTE, r, TAG_SHARE, MPI_COMM_WORLD)
                         : MPI_Recv(buf + at, n, MPI_BYTE, 0, TAG_SHARE, MPI_COMM_WORLD,
                                    MPI_STATUS_IGNORE);
      st = ad_mpi_check(rc, rank == 0 ? "checkpoint: MPI_Send" : "checkpoint: MPI_Recv");
    }
  if (st == AD_OK && rank != 0) {
    memcpy(step, buf, 8);
    pack(plan, mem, buf + 8, false);
  }
  free(buf);
  return st;
}

/* Drops from the --metrics file the lines of steps after `step` (the run
 * computes them again) and a last line without its newline. */
static ad_status metrics_cut(FILE *f, const char *path, int64_t step) {
  fflush(f);
  rewind(f);
  char *line = NULL;
  size_t cap = 0;
  long at = 0, cut = -1;
  for (ssize_t n; (n = getline(&line, &cap, f)) > 0; at += n) {
    long long s;
    if (line[n - 1] != '\n' || (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step)) {
      cut = at;
      break;
    }
  }
  free(line);
  if (cut >= 0 && ftruncate(fileno(f), cut) != 0)
    return ad_fail(AD_ERR_JOB, "%s: error: cannot cut the steps after %lld: %s", path,
                   (long long)step, strerror(errno));
  fseek(f, 0, SEEK_END);
  return AD_OK;
}

ad_status ad_ckpt_resume(const ad_plan *plan, const ad_run_opts *o, int64_t n_samples, int rank,
                         ad_ps_worker *ps, char *mem, FILE *metrics, int64_t *step) {
  *step = 0;
  if (rank == 0) {
    ckpt_id id;
    AD_TRY(id_of(plan, o, n_samples, &id));
    ckpt c;
    AD_TRY(load_latest(o->checkpoint, &id, ad_run_steps(plan, o, n_samples), false, &c));
    ad_status st = AD_OK;
    for (int i = 0; st == AD_OK && i < plan->n_tensors; i++) {
      const ad_plan_tensor *t = &plan->tensors[i];
      if (!is_saved(t))
        continue;
      char name[1024];
      snprintf(name, sizeof name, "%s %s", t->role == AD_ROLE_PARAM ? "param" : "state", t->name);
      const char *src = record(&c, name, t->bytes);
      if (!src)
        st = ad_fail(AD_ERR_INPUT, "%s: error: no record '%s' of %lld bytes", c.path, name,
                     (long long)t->bytes);
      else
        memcpy(mem + t->offset, src, (size_t)t->bytes);
    }
    const char **arenas = ad_xcalloc((size_t)plan->n_servers + 1, sizeof *arenas);
    for (int s = 0; st == AD_OK && s < plan->n_servers; s++) {
      char name[32];
      int64_t bytes = plan->devices[plan->replicas + s].mem_bytes;
      snprintf(name, sizeof name, "server %d", s);
      arenas[s] = record(&c, name, bytes);
      if (!arenas[s])
        st = ad_fail(AD_ERR_INPUT, "%s: error: no record '%s' of %lld bytes", c.path, name,
                     (long long)bytes);
    }
    if (st == AD_OK && ps)
      st = ad_ps_worker_restore(ps, c.step, arenas);
    if (st == AD_OK && metrics)
      st = metrics_cut(metrics, o->metrics, c.step);
    if (st == AD_OK) {
      *step = last_good = c.step;
      fprintf(stderr, "autodist: resuming from %s (step %lld)\n", c.path, (long long)c.step);
    }
    free(arenas);
    ckpt_free(&c);
    AD_TRY(st);
  }
  return share(plan, rank, mem, step);
}
