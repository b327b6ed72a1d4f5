/*
 * runtime/data.c: run options, data-file checks and the sample order (see
 * data.h). Everything here is deterministic and process-independent, so the
 * launcher can reject bad input before starting anything and every worker
 * computes the same order without talking to the others.
 */
#include "data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- run options ---- */

static ad_status parse_count(const char *flag, const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno || v <= 0)
    return ad_fail(AD_ERR_INPUT, "error: %s: expected a positive integer, got '%s'", flag, s);
  *out = v;
  return AD_OK;
}

static ad_status parse_seed(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (!*s || *end || errno || s[0] == '-')
    return ad_fail(AD_ERR_INPUT, "error: --shuffle: expected a non-negative integer seed, got '%s'",
                   s);
  *out = v;
  return AD_OK;
}

/* NAME=FILE into a binding; the same NAME twice is an error. */
static ad_status parse_bind(const char *flag, const char *s, ad_run_bind **list, int *n) {
  const char *eq = strchr(s, '=');
  if (!eq || eq == s || !eq[1])
    return ad_fail(AD_ERR_INPUT, "error: %s: expected NAME=FILE.npy, got '%s'", flag, s);
  size_t len = (size_t)(eq - s);
  for (int i = 0; i < *n; i++)
    if (strlen((*list)[i].name) == len && !strncmp((*list)[i].name, s, len))
      return ad_fail(AD_ERR_INPUT, "error: %s: '%.*s' given twice", flag, (int)len, s);
  *list = ad_xrealloc(*list, (size_t)(*n + 1) * sizeof **list);
  char *name = ad_xmalloc(len + 1);
  memcpy(name, s, len);
  name[len] = 0;
  (*list)[*n].name = name;
  (*list)[*n].path = ad_xstrdup(eq + 1);
  (*n)++;
  return AD_OK;
}

static ad_status parse_opts(int argc, char **argv, ad_run_opts *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || !a[1]) {
      if (o->plan_dir)
        return ad_fail(AD_ERR_INPUT, "error: unexpected argument '%s' (the plan is '%s')", a,
                       o->plan_dir);
      o->plan_dir = ad_xstrdup(a);
      continue;
    }
    if (!strcmp(a, "--accept-new-hosts") || !strcmp(a, "--resume")) {
      bool *dst = a[2] == 'a' ? &o->accept_new_hosts : &o->resume;
      if (*dst)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' given twice", a);
      *dst = true;
      continue;
    }
    static const char *const options[] = {
        "--data",  "--out",     "--steps",      "--epochs",           "--metrics",
        "--save",  "--shuffle", "--checkpoint", "--checkpoint-every", "--accept-new-hosts",
        "--resume"};
    int known = 0;
    for (size_t k = 0; k < sizeof options / sizeof *options; k++)
      known |= !strcmp(a, options[k]);
    if (!known) {
      const char *best = NULL;
      int best_d = 3;
      for (size_t k = 0; k < sizeof options / sizeof *options; k++) {
        int d = ad_edit_distance(a, options[k]);
        if (d < best_d) {
          best_d = d;
          best = options[k];
        }
      }
      if (best)
        return ad_fail(AD_ERR_INPUT, "error: unknown option '%s' (did you mean '%s'?)", a, best);
      return ad_fail(AD_ERR_INPUT, "error: unknown option '%s' (see 'autodist run --help')", a);
    }
    if (i + 1 >= argc)
      return ad_fail(AD_ERR_INPUT, "error: option '%s' needs a value", a);
    const char *v = argv[++i];
    if (!strcmp(a, "--data")) {
      AD_TRY(parse_bind(a, v, &o->data, &o->n_data));
    } else if (!strcmp(a, "--out")) {
      AD_TRY(parse_bind(a, v, &o->out, &o->n_out));
    } else if (!strcmp(a, "--steps") || !strcmp(a, "--epochs")) {
      int64_t *dst = a[2] == 's' ? &o->steps : &o->epochs;
      if (*dst)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' given twice", a);
      AD_TRY(parse_count(a, v, dst));
    } else if (!strcmp(a, "--checkpoint-every")) {
      if (o->checkpoint_every)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' given twice", a);
      AD_TRY(parse_count(a, v, &o->checkpoint_every));
    } else if (!strcmp(a, "--shuffle")) {
      if (o->shuffle)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' given twice", a);
      AD_TRY(parse_seed(v, &o->seed));
      o->shuffle = true;
    } else {
      char **dst = !strcmp(a, "--metrics") ? &o->metrics
                   : !strcmp(a, "--save")  ? &o->save
                                           : &o->checkpoint;
      if (*dst)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' given twice", a);
      if (!*v)
        return ad_fail(AD_ERR_INPUT, "error: option '%s' needs a file name", a);
      *dst = ad_xstrdup(v);
    }
  }
  if (!o->plan_dir)
    return ad_fail(AD_ERR_INPUT,
                   "error: missing PLAN_DIR (usage: autodist run PLAN_DIR [options])");
  if (o->steps && o->epochs)
    return ad_fail(AD_ERR_INPUT, "error: --steps and --epochs are mutually exclusive");
  if ((o->checkpoint_every || o->resume) && !o->checkpoint)
    return ad_fail(AD_ERR_INPUT, "error: %s needs --checkpoint DIR",
                   o->resume ? "--resume" : "--checkpoint-every");
  return AD_OK;
}

ad_status ad_run_opts_parse(int argc, char **argv, ad_run_opts *opts) {
  memset(opts, 0, sizeof *opts);
  ad_status st = parse_opts(argc, argv, opts);
  if (st != AD_OK)
    ad_run_opts_free(opts);
  return st;
}

void ad_run_opts_free(ad_run_opts *o) {
  for (int i = 0; i < o->n_data; i++) {
    free(o->data[i].name);
    free(o->data[i].path);
  }
  for (int i = 0; i < o->n_out; i++) {
    free(o->out[i].name);
    free(o->out[i].path);
  }
  free(o->data);
  free(o->out);
  free(o->plan_dir);
  free(o->metrics);
  free(o->save);
  free(o->checkpoint);
  memset(o, 0, sizeof *o);
}

/* ---- data files ---- */

static bool is_data_role(ad_tensor_role r) {
  return r == AD_ROLE_INPUT || r == AD_ROLE_LABEL;
}

/* "(100, 3, 28, 28)"; with `any_batch`, axis 0 prints as N. */
static void shape_str(char *buf, size_t cap, int rank, const int64_t *dims, bool any_batch) {
  size_t n = (size_t)snprintf(buf, cap, "(");
  for (int i = 0; i < rank && n < cap; i++) {
    if (i == 0 && any_batch)
      n += (size_t)snprintf(buf + n, cap - n, "N");
    else
      n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (i == 0 && rank == 1 && n < cap)
      n += (size_t)snprintf(buf + n, cap - n, ",");
  }
  if (n < cap)
    snprintf(buf + n, cap - n, ")");
}

/* "x, label": the names of tensors with the given roles. */
static void names_str(char *buf, size_t cap, const ad_plan *plan, bool outputs) {
  size_t n = 0;
  buf[0] = 0;
  for (int i = 0; i < plan->n_tensors && n < cap; i++) {
    const ad_plan_tensor *t = &plan->tensors[i];
    if (outputs ? t->role != AD_ROLE_OUTPUT : !is_data_role(t->role))
      continue;
    n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", t->name);
  }
  if (!n)
    snprintf(buf, cap, "none");
}

static ad_status check_names(const ad_plan *plan, const ad_run_opts *o) {
  char names[1024];
  for (int i = 0; i < o->n_data; i++) {
    const ad_plan_tensor *t = ad_plan_tensor_find(plan, o->data[i].name);
    if (!t || !is_data_role(t->role)) {
      names_str(names, sizeof names, plan, false);
      return ad_fail(AD_ERR_INPUT, "error: --data %s=%s: the plan has no input '%s' (inputs: %s)",
                     o->data[i].name, o->data[i].path, o->data[i].name, names);
    }
  }
  for (int i = 0; i < plan->n_tensors; i++) {
    const ad_plan_tensor *t = &plan->tensors[i];
    if (!is_data_role(t->role))
      continue;
    int found = 0;
    for (int k = 0; k < o->n_data; k++)
      found |= !strcmp(o->data[k].name, t->name);
    if (!found) {
      char shape[256];
      shape_str(shape, sizeof shape, t->rank, t->dims, true);
      return ad_fail(AD_ERR_INPUT, "error: missing --data %s=FILE.npy (%s %s %s of the plan)",
                     t->name, t->role == AD_ROLE_LABEL ? "label" : "input", t->dtype, shape);
    }
  }
  int64_t b = plan->replicas > 0 ? plan->global_batch / plan->replicas : 0;
  for (int i = 0; i < o->n_out; i++) {
    const ad_plan_tensor *t = ad_plan_tensor_find(plan, o->out[i].name);
    if (!t || t->role != AD_ROLE_OUTPUT) {
      names_str(names, sizeof names, plan, true);
      return ad_fail(AD_ERR_INPUT, "error: --out %s=%s: the plan has no output '%s' (outputs: %s)",
                     o->out[i].name, o->out[i].path, o->out[i].name, names);
    }
    if (plan->training)
      return ad_fail(AD_ERR_INPUT,
                     "error: --out %s=%s: %s is a training plan; --out applies to inference "
                     "plans (compile with --infer; to predict after training, --save OUT.onnx "
                     "and compile that)",
                     o->out[i].name, o->out[i].path, o->plan_dir);
    /* Rows are gathered per sample: an output must have the batch axis. */
    if (t->rank < 1 || t->dims[0] != b) {
      char shape[256];
      shape_str(shape, sizeof shape, t->rank, t->dims, false);
      return ad_fail(AD_ERR_INPUT,
                     "error: --out %s=%s: output '%s' has the shape %s per worker, without the "
                     "batch axis (%lld samples per worker), so it has no row per sample",
                     o->out[i].name, o->out[i].path, t->name, shape, (long long)b);
    }
    if (strcmp(t->dtype, "float32") && strcmp(t->dtype, "int64") && strcmp(t->dtype, "int32") &&
        strcmp(t->dtype, "uint8") && strcmp(t->dtype, "bool"))
      return ad_fail(AD_ERR_INPUT,
                     "error: --out %s=%s: output '%s' has dtype %s; --out writes float32, "
                     "int64, int32, uint8 and bool",
                     o->out[i].name, o->out[i].path, t->name, t->dtype);
    for (int k = 0; k < i; k++)
      if (!strcmp(o->out[k].path, o->out[i].path))
        return ad_fail(AD_ERR_INPUT, "error: --out %s=%s and --out %s=%s write the same file",
                       o->out[k].name, o->out[k].path, o->out[i].name, o->out[i].path);
  }
  if (!plan->training) {
    const char *flag = o->steps     ? "--steps"
                       : o->epochs  ? "--epochs"
                       : o->shuffle ? "--shuffle"
                       : o->save    ? "--save"
                                    : NULL;
    if (flag)
      return ad_fail(AD_ERR_INPUT,
                     "error: %s applies to training plans; %s is an inference plan "
                     "(it runs once over the data)",
                     flag, o->plan_dir);
  }
  return AD_OK;
}

/* dtype and per-sample shape of one file against its tensor. */
static ad_status check_array(const ad_plan_tensor *t, const char *path, ad_npy *a) {
  char want[256], got[256];
  shape_str(want, sizeof want, t->rank, t->dims, true);
  shape_str(got, sizeof got, a->rank, a->dims, false);
  AD_TRY(ad_npy_fit(path, a, t->dtype));
  if (strcmp(a->dtype, t->dtype))
    return ad_fail(AD_ERR_INPUT, "%s: error: dtype %s %s does not fit %s '%s' of the plan: %s %s",
                   path, a->dtype, got, t->role == AD_ROLE_LABEL ? "label" : "input", t->name,
                   t->dtype, want);
  int fits = a->rank == t->rank && a->rank >= 1;
  for (int d = 1; fits && d < a->rank; d++)
    fits = a->dims[d] == t->dims[d];
  if (!fits)
    return ad_fail(AD_ERR_INPUT, "%s: error: shape %s does not fit %s '%s' of the plan: %s %s",
                   path, got, t->role == AD_ROLE_LABEL ? "label" : "input", t->name, t->dtype,
                   want);
  return AD_OK;
}

ad_status ad_run_data_load(const ad_plan *plan, const ad_run_opts *o, ad_npy **arrays_out,
                           int64_t *n_samples) {
  AD_TRY(check_names(plan, o));
  ad_npy *arrays = ad_xcalloc((size_t)(o->n_data ? o->n_data : 1), sizeof *arrays);
  ad_status st = AD_OK;
  int loaded = 0;
  int64_t n = -1;
  for (int i = 0; i < o->n_data && st == AD_OK; i++) {
    st = ad_npy_load(o->data[i].path, &arrays[i]);
    if (st != AD_OK)
      break;
    loaded++;
    st = check_array(ad_plan_tensor_find(plan, o->data[i].name), o->data[i].path, &arrays[i]);
    if (st == AD_OK && n >= 0 && arrays[i].dims[0] != n)
      st = ad_fail(AD_ERR_INPUT,
                   "%s: error: %lld samples, but %s has %lld (the data files must "
                   "have the same number of samples)",
                   o->data[i].path, (long long)arrays[i].dims[0], o->data[0].path, (long long)n);
    if (n < 0)
      n = arrays[i].dims[0];
  }
  if (st == AD_OK && n == 0)
    st = ad_fail(AD_ERR_INPUT, "%s: error: no samples", o->data[0].path);
  if (st == AD_OK && plan->training && n < plan->global_batch)
    st = ad_fail(AD_ERR_INPUT,
                 "%s: error: %lld samples, fewer than one global batch (%lld) of "
                 "the plan",
                 o->data[0].path, (long long)n, (long long)plan->global_batch);
  if (st == AD_OK && n < 0)
    st = ad_fail(AD_ERR_INPUT, "error: the plan has no inputs to feed");
  if (st != AD_OK) {
    for (int i = 0; i < loaded; i++)
      ad_npy_free(&arrays[i]);
    free(arrays);
    return st;
  }
  *arrays_out = arrays;
  *n_samples = n;
  return AD_OK;
}

int64_t ad_run_steps(const ad_plan *plan, const ad_run_opts *o, int64_t n) {
  if (o->steps)
    return o->steps;
  int64_t epochs = o->epochs ? o->epochs : 1;
  int64_t b = plan->global_batch;
  return (epochs * n + b - 1) / b;
}

/* ---- sample order ---- */

uint64_t ad_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void ad_data_permutation(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm) {
  uint64_t s = seed, state = 0;
  for (int64_t e = 0; e <= epoch; e++)
    state = ad_splitmix64(&s);
  for (int64_t i = 0; i < n; i++)
    perm[i] = i;
  /* The modulo bias (at most n / 2^64) is irrelevant for sample order. */
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(ad_splitmix64(&state) % (uint64_t)(i + 1));
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

void ad_data_order_init(ad_data_order *o, int64_t n, bool shuffle, uint64_t seed) {
  AD_ASSERT(n > 0);
  *o = (ad_data_order){.n = n, .shuffle = shuffle, .seed = seed, .epoch = -1};
  if (shuffle)
    o->perm = ad_xmalloc((size_t)n * sizeof *o->perm);
}

int64_t ad_data_sample(ad_data_order *o, int64_t p) {
  AD_ASSERT(p >= 0);
  int64_t pos = p % o->n;
  if (!o->shuffle)
    return pos;
  int64_t epoch = p / o->n;
  if (epoch != o->epoch) {
    ad_data_permutation(o->seed, epoch, o->n, o->perm);
    o->epoch = epoch;
  }
  return o->perm[pos];
}

void ad_data_replica_rows(ad_data_order *o, int64_t step, int64_t global_batch, int replica,
                          int replicas, int64_t *rows) {
  AD_ASSERT(replicas > 0 && global_batch % replicas == 0 && replica >= 0 && replica < replicas);
  int64_t b = global_batch / replicas;
  for (int64_t i = 0; i < b; i++)
    rows[i] = ad_data_sample(o, step * global_batch + replica * b + i);
}

void ad_data_order_free(ad_data_order *o) {
  free(o->perm);
  o->perm = NULL;
}

static int64_t dtype_size(const char *dtype) {
  if (!strcmp(dtype, "float32"))
    return 4;
  if (!strcmp(dtype, "int64"))
    return 8;
  if (!strcmp(dtype, "int32"))
    return 4;
  AD_ASSERT(!strcmp(dtype, "uint8") || !strcmp(dtype, "bool"));
  return 1;
}

int64_t ad_data_row_bytes(const ad_npy *a) {
  int64_t n = dtype_size(a->dtype);
  for (int d = 1; d < a->rank; d++)
    n *= a->dims[d];
  return n;
}

void ad_data_copy_rows(const ad_npy *a, const int64_t *rows, int64_t n, void *dst) {
  int64_t rb = ad_data_row_bytes(a);
  for (int64_t i = 0; i < n; i++) {
    AD_ASSERT(rows[i] >= 0 && rows[i] < a->dims[0]);
    memcpy((char *)dst + i * rb, (const char *)a->data + rows[i] * rb, (size_t)rb);
  }
}

/* Where rank 0 writes --out file `path` until the run is complete: beside it
 * (so the final rename stays on one file system), named after the job's run
 * folder, which the launcher knows too: it removes the file if the job fails
 * (runtime/launcher.c). */
char *ad_out_tmp_path(const char *path, const char *run_dir) {
  char token[64];
  const char *base = run_dir && *run_dir ? strrchr(run_dir, '/') : NULL;
  if (base)
    snprintf(token, sizeof token, "%s", base + 1);
  else
    snprintf(token, sizeof token, "pid%d", (int)getpid());
  size_t n = strlen(path) + strlen(token) + 8;
  char *tmp = ad_xmalloc(n);
  snprintf(tmp, n, "%s.%s.tmp", path, token);
  return tmp;
}
