/*
 * runtime/plan.c: plan.yaml, written by `autodist compile` and read by
 * `autodist run` (layout in docs/plan-format.md).
 *
 * The writer prints the manifest itself (every free-form string double-quoted
 * and escaped, so names like "1" or "yes" stay strings for any YAML reader) and
 * hashes every listed file. The reader is strict and distrustful: the format
 * and autodist version must match, every value is range-checked (tensors inside
 * the arena, weights inside weights.bin, modules listed as files, workers then
 * servers, shards inside their parameter and their server's arena, one chief
 * and an ssh group on every other node, every device on a listed node), file paths
 * must stay inside the plan folder, and every hash must match, all before any
 * process starts. Every pointer in an ad_plan is malloc'd and owned by the plan
 * (ad_plan_free frees them one by one, so a half-read plan is freed the same
 * way as a complete one).
 */
#include "plan.h"

#include "../resource_specs/yaml_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const role_names[AD_ROLE_COUNT] = {"param", "frozen", "state", "input",
                                                      "label", "output", "loss",  "grad"};

static const struct {
  const char *name;
  int size;
} dtypes[] = {{"float32", 4}, {"float64", 8}, {"float16", 2}, {"bfloat16", 2}, {"int8", 1},
              {"uint8", 1},   {"int16", 2},   {"uint16", 2},  {"int32", 4},    {"uint32", 4},
              {"int64", 8},   {"uint64", 8},  {"bool", 1}};

static const char *const top_keys[] = {"format",       "autodist_version",
                                       "model_sha256", "strategy",
                                       "training",     "global_batch",
                                       "replicas",     "mem_bytes",
                                       "loss",         "nodes",
                                       "devices",      "tensors",
                                       "buckets",      "sync",
                                       "staleness",    "shards",
                                       "files",        NULL};
static const char *const node_keys[] = {"address", "chief", "ssh", NULL};
static const char *const ssh_keys[] = {"username",    "port",        "key_file", "known_hosts",
                                       "python_venv", "shared_envs", NULL};
static const char *const device_keys[] = {"rank", "role",   "node",      "type",
                                          "id",   "module", "mem_bytes", NULL};
static const char *const tensor_keys[] = {"name",   "role", "dtype", "dims",
                                          "offset", "init", "bytes", NULL};
static const char *const bucket_keys[] = {"offset", "bytes", NULL};
static const char *const shard_keys[] = {
    "var", "server", "row0", "rows", "row_bytes", "sparse", "param_offset", "grad_offset", NULL};
static const char *const file_keys[] = {"path", "sha256", NULL};
static const char *const device_role_names[AD_DEVICE_ROLE_COUNT] = {"worker", "server"};
static const char *const sync_names[AD_SYNC_MODE_COUNT] = {"sync", "stale", "async"};

const char *ad_role_name(ad_tensor_role r) {
  return r >= 0 && r < AD_ROLE_COUNT ? role_names[r] : "?";
}

const char *ad_device_role_name(ad_device_role r) {
  return r >= 0 && r < AD_DEVICE_ROLE_COUNT ? device_role_names[r] : "?";
}

const char *ad_sync_mode_name(ad_sync_mode m) {
  return m >= 0 && m < AD_SYNC_MODE_COUNT ? sync_names[m] : "?";
}

static int dtype_size(const char *name) {
  for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
    if (!strcmp(name, dtypes[i].name))
      return dtypes[i].size;
  return 0;
}

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir);
  bool slash = n > 0 && dir[n - 1] == '/';
  size_t len = n + strlen(name) + 2;
  char *p = ad_xmalloc(len);
  snprintf(p, len, "%s%s%s", dir, slash ? "" : "/", name);
  return p;
}

/* A plan names its files relative to its folder and never outside it. */
static bool plan_path_ok(const char *p) {
  if (!*p || p[0] == '/')
    return false;
  for (const char *s = p; *s;) {
    size_t n = strcspn(s, "/");
    if (n == 0 || (n == 2 && s[0] == '.' && s[1] == '.'))
      return false;
    s += n;
    if (*s == '/')
      s++;
  }
  return true;
}

/* [A-Za-z_][A-Za-z0-9_]*, as the resource spec requires of shared_envs. */
static bool env_name_ok(const char *s) {
  if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
    return false;
  for (s++; *s; s++)
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
          *s == '_'))
      return false;
  return true;
}

static bool hex64_ok(const char *s) {
  if (strlen(s) != 64)
    return false;
  for (; *s; s++)
    if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
      return false;
  return true;
}

/* SHA-256 of a whole file through mmap, so a large weights.bin is not copied. */
static ad_status hash_file(const char *path, char out[65], int64_t *size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return ad_fail(AD_ERR_INPUT, "%s: error: not a regular file", path);
  }
  void *p = NULL;
  if (st.st_size > 0) {
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      close(fd);
      return ad_fail(AD_ERR_INPUT, "%s: error: cannot read: %s", path, strerror(e));
    }
  }
  ad_sha256_hex(p ? p : "", (size_t)st.st_size, out);
  if (p)
    munmap(p, (size_t)st.st_size);
  close(fd);
  *size = st.st_size;
  return AD_OK;
}

/* ---- writer ---- */

static bool utf8_ok(const unsigned char *s) {
  while (*s) {
    int n = *s < 0x80 ? 0 : (*s >> 5) == 6 ? 1 : (*s >> 4) == 14 ? 2 : (*s >> 3) == 30 ? 3 : -1;
    if (n < 0)
      return false;
    for (s++; n > 0; n--, s++)
      if ((*s >> 6) != 2)
        return false;
  }
  return true;
}

/* A YAML double-quoted scalar: escapes quotes, backslashes and control bytes. */
static void put_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(f, "\\%c", *p);
    else if (*p == '\n')
      fputs("\\n", f);
    else if (*p == '\t')
      fputs("\\t", f);
    else if (*p < 0x20 || *p == 0x7f)
      fprintf(f, "\\x%02x", *p);
    else
      fputc(*p, f);
  }
  fputc('"', f);
}

static ad_status check_write_str(const char *what, const char *s) {
  if (s && !utf8_ok((const unsigned char *)s))
    return ad_fail(AD_ERR_INPUT, "plan: error: %s is not valid UTF-8", what);
  return AD_OK;
}

static void emit_node(FILE *f, const ad_plan_node *nd) {
  fputs("\n  - {address: ", f);
  put_str(f, nd->address);
  fprintf(f, ", chief: %s", nd->chief ? "true" : "false");
  if (nd->ssh) {
    /* Absent settings are left out (the reader's defaults apply); the port
     * always has a value. */
    fputs(", ssh: {", f);
    if (nd->username) {
      fputs("username: ", f);
      put_str(f, nd->username);
      fputs(", ", f);
    }
    fprintf(f, "port: %d", nd->port ? nd->port : 22);
    const char *const keys[] = {"key_file", "known_hosts", "python_venv"};
    const char *const values[] = {nd->key_file, nd->known_hosts, nd->python_venv};
    for (int k = 0; k < 3; k++)
      if (values[k]) {
        fprintf(f, ", %s: ", keys[k]);
        put_str(f, values[k]);
      }
    if (nd->n_envs) {
      fputs(", shared_envs: {", f);
      for (int k = 0; k < nd->n_envs; k++) {
        fputs(k ? ", " : "", f);
        put_str(f, nd->envs[k].key);
        fputs(": ", f);
        put_str(f, nd->envs[k].value);
      }
      fputs("}", f);
    }
    fputs("}", f);
  }
  fputs("}", f);
}

static ad_status emit(const ad_plan *pl, char (*hashes)[65], FILE *f) {
  fprintf(f, "# autodist plan (docs/plan-format.md), written by `autodist compile`.\n"
             "# Every file below is hash-checked by `autodist run`: recompile, do not edit.\n");
  fprintf(f, "format: %d\n", pl->format ? pl->format : 1);
  fputs("autodist_version: ", f);
  put_str(f, pl->autodist_version ? pl->autodist_version : AD_VERSION);
  fputs("\nmodel_sha256: ", f);
  put_str(f, pl->model_sha256);
  fputs("\nstrategy: ", f);
  put_str(f, pl->strategy);
  fprintf(f, "\ntraining: %s\n", pl->training ? "true" : "false");
  fprintf(f, "global_batch: %lld\nreplicas: %d\nmem_bytes: %lld\n", (long long)pl->global_batch,
          pl->replicas, (long long)pl->mem_bytes);
  fputs("loss: ", f);
  put_str(f, pl->loss_kind);
  fputs("\nnodes:", f);
  if (!pl->n_nodes)
    fputs(" []", f);
  for (int i = 0; i < pl->n_nodes; i++)
    emit_node(f, &pl->nodes[i]);
  fputs("\ndevices:", f);
  if (!pl->n_devices)
    fputs(" []", f);
  for (int i = 0; i < pl->n_devices; i++) {
    const ad_plan_device *dv = &pl->devices[i];
    /* A worker's arena is the plan's (the compiler may leave the field 0). */
    int64_t mem = dv->role == AD_DEVICE_WORKER ? pl->mem_bytes : dv->mem_bytes;
    fprintf(f, "\n  - {rank: %d, role: %s, node: ", dv->rank, ad_device_role_name(dv->role));
    put_str(f, dv->node);
    fputs(", type: ", f);
    put_str(f, dv->type);
    fprintf(f, ", id: %d, module: ", dv->id);
    put_str(f, dv->module);
    fprintf(f, ", mem_bytes: %lld}", (long long)mem);
  }
  fputs("\ntensors:", f);
  if (!pl->n_tensors)
    fputs(" []", f);
  for (int i = 0; i < pl->n_tensors; i++) {
    const ad_plan_tensor *t = &pl->tensors[i];
    fputs("\n  - {name: ", f);
    put_str(f, t->name);
    fprintf(f, ", role: %s, dtype: ", ad_role_name(t->role));
    put_str(f, t->dtype);
    fputs(", dims: [", f);
    for (int j = 0; j < t->rank; j++)
      fprintf(f, "%s%lld", j ? ", " : "", (long long)t->dims[j]);
    fprintf(f, "], offset: %lld, init: %lld, bytes: %lld}", (long long)t->offset,
            (long long)t->init, (long long)t->bytes);
  }
  fputs("\nbuckets:", f);
  if (!pl->n_buckets)
    fputs(" []", f);
  for (int i = 0; i < pl->n_buckets; i++)
    fprintf(f, "\n  - {offset: %lld, bytes: %lld}", (long long)pl->buckets[i].offset,
            (long long)pl->buckets[i].bytes);
  fputs("\nsync: ", f);
  put_str(f, ad_sync_mode_name(pl->sync));
  fprintf(f, "\nstaleness: %d\nshards:", pl->staleness);
  if (!pl->n_shards)
    fputs(" []", f);
  for (int i = 0; i < pl->n_shards; i++) {
    const ad_plan_shard *sh = &pl->shards[i];
    fputs("\n  - {var: ", f);
    put_str(f, sh->var);
    fprintf(f,
            ", server: %d, row0: %lld, rows: %lld, row_bytes: %lld, sparse: %s, "
            "param_offset: %lld, grad_offset: %lld}",
            sh->server, (long long)sh->row0, (long long)sh->rows, (long long)sh->row_bytes,
            sh->sparse ? "true" : "false", (long long)sh->param_offset, (long long)sh->grad_offset);
  }
  fputs("\nfiles:", f);
  if (!pl->n_files)
    fputs(" []", f);
  for (int i = 0; i < pl->n_files; i++) {
    fputs("\n  - {path: ", f);
    put_str(f, pl->files[i].path);
    fputs(", sha256: ", f);
    put_str(f, hashes[i]);
    fputs("}", f);
  }
  fputs("\n", f);
  return AD_OK;
}

ad_status ad_plan_write(const ad_plan *pl, const char *dir) {
  AD_TRY(check_write_str("model_sha256", pl->model_sha256));
  AD_TRY(check_write_str("strategy", pl->strategy));
  AD_TRY(check_write_str("loss", pl->loss_kind));
  for (int i = 0; i < pl->n_nodes; i++) {
    const ad_plan_node *nd = &pl->nodes[i];
    AD_ASSERT(nd->address);
    AD_TRY(check_write_str("a node address", nd->address));
    AD_TRY(check_write_str("a node's username", nd->username));
    AD_TRY(check_write_str("a node's key_file", nd->key_file));
    AD_TRY(check_write_str("a node's known_hosts", nd->known_hosts));
    AD_TRY(check_write_str("a node's python_venv", nd->python_venv));
    for (int k = 0; k < nd->n_envs; k++) {
      AD_TRY(check_write_str("a shared_envs name", nd->envs[k].key));
      AD_TRY(check_write_str("a shared_envs value", nd->envs[k].value));
    }
  }
  for (int i = 0; i < pl->n_devices; i++) {
    AD_TRY(check_write_str("a device node", pl->devices[i].node));
    AD_TRY(check_write_str("a device type", pl->devices[i].type));
    AD_TRY(check_write_str("a device module", pl->devices[i].module));
    AD_ASSERT(pl->devices[i].role >= 0 && pl->devices[i].role < AD_DEVICE_ROLE_COUNT);
    AD_ASSERT(pl->devices[i].role != AD_DEVICE_WORKER || !pl->devices[i].mem_bytes ||
              pl->devices[i].mem_bytes == pl->mem_bytes);
  }
  AD_ASSERT(pl->sync >= 0 && pl->sync < AD_SYNC_MODE_COUNT);
  for (int i = 0; i < pl->n_shards; i++)
    AD_TRY(check_write_str("a shard var", pl->shards[i].var));
  for (int i = 0; i < pl->n_tensors; i++) {
    AD_TRY(check_write_str("a tensor name", pl->tensors[i].name));
    AD_ASSERT(pl->tensors[i].rank >= 0 && pl->tensors[i].rank <= 8);
    AD_ASSERT(pl->tensors[i].role >= 0 && pl->tensors[i].role < AD_ROLE_COUNT);
  }
  char(*hashes)[65] = ad_xcalloc((size_t)pl->n_files + 1, sizeof *hashes);
  ad_status st = AD_OK;
  for (int i = 0; i < pl->n_files && st == AD_OK; i++) {
    const char *p = pl->files[i].path;
    if (!p || !plan_path_ok(p) || !utf8_ok((const unsigned char *)p)) {
      st = ad_fail(AD_ERR_INPUT, "%s: error: plan file '%s' must be a path inside the plan folder",
                   dir, p ? p : "(null)");
      break;
    }
    char *full = path_join(dir, p);
    int64_t size;
    st = hash_file(full, hashes[i], &size);
    free(full);
  }
  if (st == AD_OK) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    AD_ASSERT(f);
    emit(pl, hashes, f);
    fclose(f);
    char *path = path_join(dir, "plan.yaml");
    st = ad_file_write(path, buf, len);
    free(path);
    free(buf);
  }
  free(hashes);
  return st;
}

/* ---- reader ---- */

static char *dup_str(const ad_yaml_doc *d, const ad_yaml_node *m, const char *key, ad_status *st) {
  const ad_yaml_node *v;
  const char *s;
  if ((*st = ad_yaml_require(d, m, key, &v)) != AD_OK)
    return NULL;
  if ((*st = ad_yaml_string(d, v, key, &s)) != AD_OK)
    return NULL;
  return ad_xstrdup(s);
}

/* An integer key in [lo, hi]. */
static ad_status get_int(const ad_yaml_doc *d, const ad_yaml_node *m, const char *key, int64_t lo,
                         int64_t hi, int64_t *out) {
  const ad_yaml_node *v;
  AD_TRY(ad_yaml_require(d, m, key, &v));
  AD_TRY(ad_yaml_int(d, v, key, out));
  if (*out < lo || *out > hi)
    return ad_yaml_error(d, v, "'%s' must be between %lld and %lld, got %lld", key, (long long)lo,
                         (long long)hi, (long long)*out);
  return AD_OK;
}

static ad_status get_int32(const ad_yaml_doc *d, const ad_yaml_node *m, const char *key, int64_t lo,
                           int64_t hi, int *out) {
  int64_t v;
  AD_TRY(get_int(d, m, key, lo, hi, &v));
  *out = (int)v;
  return AD_OK;
}

/* A string key naming one of n values: *out is its index. `hint` ends the
 * message for an unknown name (may be ""). */
static ad_status get_enum(const ad_yaml_doc *d, const ad_yaml_node *m, const char *key,
                          const char *const *names, int n, const char *what, const char *hint,
                          int *out) {
  const ad_yaml_node *v;
  const char *s;
  AD_TRY(ad_yaml_require(d, m, key, &v));
  AD_TRY(ad_yaml_string(d, v, key, &s));
  for (*out = 0; *out < n; (*out)++)
    if (!strcmp(s, names[*out]))
      return AD_OK;
  return ad_yaml_error(d, v, "unknown %s '%s'%s", what, s, hint);
}

static ad_status get_list(const ad_yaml_doc *d, const ad_yaml_node *m, const char *key,
                          const ad_yaml_node **out) {
  AD_TRY(ad_yaml_require(d, m, key, out));
  if ((*out)->kind != AD_YAML_SEQ)
    return ad_yaml_error(d, *out, "'%s' must be a list, got %s", key, ad_yaml_describe(*out));
  return AD_OK;
}

static ad_status entry_map(const ad_yaml_doc *d, const ad_yaml_node *m, const char *list,
                           const char *const *keys) {
  if (m->kind != AD_YAML_MAP)
    return ad_yaml_error(d, m, "each entry of '%s' must be a mapping, got %s", list,
                         ad_yaml_describe(m));
  return ad_yaml_check_keys(d, m, keys);
}

#define MAX_BYTES ((int64_t)1 << 50)

static ad_status read_tensor(const ad_yaml_doc *d, const ad_yaml_node *m, const ad_plan *pl,
                             ad_plan_tensor *t) {
  ad_status st;
  AD_TRY(entry_map(d, m, "tensors", tensor_keys));
  if (!(t->name = dup_str(d, m, "name", &st)))
    return st;
  if (!*t->name)
    return ad_yaml_error(d, ad_yaml_get(m, "name"), "a tensor name must not be empty");
  const ad_yaml_node *v;
  const char *s;
  int role;
  AD_TRY(get_enum(d, m, "role", role_names, AD_ROLE_COUNT, "tensor role", "", &role));
  t->role = (ad_tensor_role)role;
  AD_TRY(ad_yaml_require(d, m, "dtype", &v));
  AD_TRY(ad_yaml_string(d, v, "dtype", &s));
  int esize = dtype_size(s);
  if (!esize || strlen(s) >= sizeof t->dtype)
    return ad_yaml_error(d, v, "unknown dtype '%s'", s);
  strcpy(t->dtype, s);
  AD_TRY(ad_yaml_require(d, m, "dims", &v));
  if (v->kind != AD_YAML_SEQ || v->n > 8)
    return ad_yaml_error(d, v, "'dims' must be a list of at most 8 sizes, got %s",
                         v->kind == AD_YAML_SEQ ? "more" : ad_yaml_describe(v));
  t->rank = v->n;
  int64_t numel = 1;
  for (int i = 0; i < v->n; i++) {
    AD_TRY(ad_yaml_int(d, v->items[i], "dims", &t->dims[i]));
    if (t->dims[i] < 0 || t->dims[i] > MAX_BYTES)
      return ad_yaml_error(d, v->items[i], "a tensor dimension must be >= 0, got %lld",
                           (long long)t->dims[i]);
    numel = numel > 0 && t->dims[i] > MAX_BYTES / numel ? MAX_BYTES + 1 : numel * t->dims[i];
  }
  AD_TRY(get_int(d, m, "offset", 0, pl->mem_bytes, &t->offset));
  AD_TRY(get_int(d, m, "bytes", 0, pl->mem_bytes, &t->bytes));
  if (t->offset + t->bytes > pl->mem_bytes)
    return ad_yaml_error(d, m, "tensor '%s' (offset %lld, %lld bytes) ends past mem_bytes %lld",
                         t->name, (long long)t->offset, (long long)t->bytes,
                         (long long)pl->mem_bytes);
  if (numel > MAX_BYTES / esize || t->bytes < numel * esize)
    return ad_yaml_error(d, ad_yaml_get(m, "bytes"),
                         "tensor '%s' has %lld bytes, too few for its dims and dtype", t->name,
                         (long long)t->bytes);
  bool weight = t->role == AD_ROLE_PARAM || t->role == AD_ROLE_FROZEN;
  AD_TRY(get_int(d, m, "init", weight ? 0 : -1, weight ? MAX_BYTES : -1, &t->init));
  return AD_OK;
}

/* Whether byte ranges [a, a + n) and [b, b + m) share a byte. */
static bool ranges_overlap(int64_t a, int64_t n, int64_t b, int64_t m) {
  return n > 0 && m > 0 && a < b + m && b < a + n;
}

/* Shard i, checked against its variable, its server's arena and the shards
 * before it (devices and tensors are already read). */
static ad_status read_shard(const ad_yaml_doc *d, const ad_yaml_node *m, ad_plan *pl, int i) {
  ad_plan_shard *sh = &pl->shards[i];
  ad_status st;
  AD_TRY(entry_map(d, m, "shards", shard_keys));
  if (!(sh->var = dup_str(d, m, "var", &st)))
    return st;
  const ad_plan_tensor *t = NULL;
  for (int k = 0; k < pl->n_tensors; k++)
    if (pl->tensors[k].role == AD_ROLE_PARAM && !strcmp(pl->tensors[k].name, sh->var))
      t = &pl->tensors[k];
  if (!t)
    return ad_yaml_error(d, ad_yaml_get(m, "var"), "shard variable '%s' is not a param tensor",
                         sh->var);
  if (strcmp(t->dtype, "float32"))
    return ad_yaml_error(d, ad_yaml_get(m, "var"),
                         "shard variable '%s' is %s; servers hold float32 parameters", sh->var,
                         t->dtype);
  if (pl->n_servers == 0)
    return ad_yaml_error(d, m, "shard of '%s' but the plan has no server devices", sh->var);
  AD_TRY(get_int32(d, m, "server", 0, pl->n_servers - 1, &sh->server));
  int64_t n_rows = t->rank ? t->dims[0] : 1;
  AD_TRY(get_int(d, m, "row0", 0, n_rows, &sh->row0));
  AD_TRY(get_int(d, m, "rows", 1, n_rows, &sh->rows));
  if (sh->row0 + sh->rows > n_rows)
    return ad_yaml_error(d, m, "shard of '%s' (rows %lld..%lld) ends past its %lld rows", sh->var,
                         (long long)sh->row0, (long long)(sh->row0 + sh->rows - 1),
                         (long long)n_rows);
  AD_TRY(get_int(d, m, "row_bytes", 4, t->bytes, &sh->row_bytes));
  if (sh->row_bytes % 4 || sh->row_bytes > t->bytes / n_rows)
    return ad_yaml_error(d, ad_yaml_get(m, "row_bytes"),
                         "'row_bytes' %lld does not fit: '%s' has %lld rows of float32 in %lld "
                         "bytes",
                         (long long)sh->row_bytes, sh->var, (long long)n_rows, (long long)t->bytes);
  const ad_yaml_node *v;
  AD_TRY(ad_yaml_require(d, m, "sparse", &v));
  AD_TRY(ad_yaml_bool(d, v, "sparse", &sh->sparse));
  const ad_plan_device *srv = &pl->devices[pl->replicas + sh->server];
  int64_t bytes = sh->rows * sh->row_bytes;
  AD_TRY(get_int(d, m, "param_offset", 0, srv->mem_bytes, &sh->param_offset));
  AD_TRY(get_int(d, m, "grad_offset", 0, srv->mem_bytes, &sh->grad_offset));
  const char *const what[2] = {"param_offset", "grad_offset"};
  const int64_t at[2] = {sh->param_offset, sh->grad_offset};
  for (int k = 0; k < 2; k++)
    if (at[k] + bytes > srv->mem_bytes)
      return ad_yaml_error(d, ad_yaml_get(m, what[k]),
                           "shard of '%s' (%s %lld, %lld bytes) ends past server %d's "
                           "mem_bytes %lld",
                           sh->var, what[k], (long long)at[k], (long long)bytes, sh->server,
                           (long long)srv->mem_bytes);
  if (ranges_overlap(sh->param_offset, bytes, sh->grad_offset, bytes))
    return ad_yaml_error(d, m, "shard of '%s': its param and grad ranges overlap", sh->var);
  for (int j = 0; j < i; j++) {
    const ad_plan_shard *o = &pl->shards[j];
    if (!strcmp(o->var, sh->var) && ranges_overlap(o->row0, o->rows, sh->row0, sh->rows))
      return ad_yaml_error(d, m, "shard of '%s' (rows %lld..%lld) overlaps an earlier one", sh->var,
                           (long long)sh->row0, (long long)(sh->row0 + sh->rows - 1));
    if (o->server != sh->server)
      continue;
    int64_t ob = o->rows * o->row_bytes;
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 2; b++)
        if (ranges_overlap(at[a], bytes, b ? o->grad_offset : o->param_offset, ob))
          return ad_yaml_error(d, ad_yaml_get(m, what[a]),
                               "shard of '%s': its %s range overlaps the %s range of the shard "
                               "of '%s' on server %d",
                               sh->var, a ? "grad" : "param", b ? "grad" : "param", o->var,
                               sh->server);
  }
  return AD_OK;
}

/* A node and its ssh settings. Addresses are checked like the resource
 * spec's (they reach mpirun's command line); shared_envs names must be
 * environment variable names, since `__rsh` exports them. */
static ad_status read_node(const ad_yaml_doc *d, const ad_yaml_node *m, ad_plan_node *nd) {
  ad_status st;
  const ad_yaml_node *v, *ssh;
  const char *s;
  AD_TRY(entry_map(d, m, "nodes", node_keys));
  if (!(nd->address = dup_str(d, m, "address", &st)))
    return st;
  if (!*nd->address || strpbrk(nd->address, " \t\n'\"`$;&|<>\\"))
    return ad_yaml_error(d, ad_yaml_get(m, "address"),
                         "'address' must be a host name or IP address, got '%s'", nd->address);
  AD_TRY(ad_yaml_require(d, m, "chief", &v));
  AD_TRY(ad_yaml_bool(d, v, "chief", &nd->chief));
  nd->port = 22;
  if (!(ssh = ad_yaml_get(m, "ssh")))
    return AD_OK;
  nd->ssh = true;
  AD_TRY(ad_yaml_expect_map(d, ssh, "ssh"));
  AD_TRY(ad_yaml_check_keys(d, ssh, ssh_keys));
  if (ad_yaml_get(ssh, "port"))
    AD_TRY(get_int32(d, ssh, "port", 1, 65535, &nd->port));
  char **const fields[] = {&nd->username, &nd->key_file, &nd->known_hosts, &nd->python_venv};
  const char *const names[] = {"username", "key_file", "known_hosts", "python_venv"};
  for (int k = 0; k < 4; k++) {
    if (!(v = ad_yaml_get(ssh, names[k])))
      continue;
    AD_TRY(ad_yaml_string(d, v, names[k], &s));
    if (!*s)
      return ad_yaml_error(d, v, "'%s' must not be empty (leave the key out instead)", names[k]);
    *fields[k] = ad_xstrdup(s);
  }
  if (!(v = ad_yaml_get(ssh, "shared_envs")))
    return AD_OK;
  AD_TRY(ad_yaml_expect_map(d, v, "shared_envs"));
  nd->envs = ad_xcalloc((size_t)v->n + 1, sizeof(ad_plan_env));
  for (int k = 0; k < v->n; k++) {
    if (!env_name_ok(v->keys[k]->str))
      return ad_yaml_error(d, v->keys[k], "'%s' is not a valid environment variable name",
                           v->keys[k]->str);
    AD_TRY(ad_yaml_string(d, v->items[k], v->keys[k]->str, &s));
    nd->envs[k].key = ad_xstrdup(v->keys[k]->str);
    nd->envs[k].value = ad_xstrdup(s);
    nd->n_envs = k + 1;
  }
  return AD_OK;
}

/* The nodes: unique addresses, exactly one chief, an ssh group on every other
 * node (that is how `run` reaches it). */
static ad_status read_nodes(const ad_yaml_doc *d, const ad_yaml_node *list, ad_plan *pl) {
  pl->nodes = ad_xcalloc((size_t)list->n + 1, sizeof(ad_plan_node));
  int chief = -1;
  for (int i = 0; i < list->n; i++) {
    const ad_yaml_node *m = list->items[i];
    ad_plan_node *nd = &pl->nodes[i];
    pl->n_nodes = i + 1;
    AD_TRY(read_node(d, m, nd));
    for (int j = 0; j < i; j++)
      if (!strcmp(pl->nodes[j].address, nd->address))
        return ad_yaml_error(d, m, "node '%s' is listed twice", nd->address);
    if (nd->chief && chief >= 0)
      return ad_yaml_error(d, ad_yaml_get(m, "chief"), "two chief nodes: '%s' and '%s'",
                           pl->nodes[chief].address, nd->address);
    if (nd->chief)
      chief = i;
  }
  if (chief < 0)
    return ad_yaml_error(d, list, "no node has 'chief: true'; exactly one node is the chief");
  for (int i = 0; i < list->n; i++)
    if (!pl->nodes[i].chief && !pl->nodes[i].ssh)
      return ad_yaml_error(d, list->items[i],
                           "node '%s' is not the chief and has no 'ssh'; `run` reaches the "
                           "other nodes over SSH",
                           pl->nodes[i].address);
  return AD_OK;
}

static ad_status read_plan(const ad_yaml_doc *d, ad_plan *pl) {
  const ad_yaml_node *root = d->root, *v, *list;
  ad_status st;
  if (!root)
    return ad_yaml_error(d, NULL, "the plan manifest is empty; recompile the plan");
  if (root->kind != AD_YAML_MAP)
    return ad_yaml_error(d, root, "the top level must be a mapping, got %s",
                         ad_yaml_describe(root));
  /* Format and version first: another version's manifest may have other keys. */
  int64_t format;
  AD_TRY(ad_yaml_require(d, root, "format", &v));
  AD_TRY(ad_yaml_int(d, v, "format", &format));
  if (format != 1)
    return ad_yaml_error(d, v,
                         "plan format %lld is not supported (this autodist reads format "
                         "1); recompile the plan",
                         (long long)format);
  pl->format = 1;
  if (!(pl->autodist_version = dup_str(d, root, "autodist_version", &st)))
    return st;
  if (strcmp(pl->autodist_version, AD_VERSION) != 0)
    return ad_yaml_error(d, ad_yaml_get(root, "autodist_version"),
                         "plan compiled by autodist %s, this is autodist %s; recompile it",
                         pl->autodist_version, AD_VERSION);
  AD_TRY(ad_yaml_check_keys(d, root, top_keys));
  if (!(pl->model_sha256 = dup_str(d, root, "model_sha256", &st)))
    return st;
  if (!hex64_ok(pl->model_sha256))
    return ad_yaml_error(d, ad_yaml_get(root, "model_sha256"),
                         "'model_sha256' must be 64 lowercase hex digits");
  if (!(pl->strategy = dup_str(d, root, "strategy", &st)))
    return st;
  AD_TRY(ad_yaml_require(d, root, "training", &v));
  AD_TRY(ad_yaml_bool(d, v, "training", &pl->training));
  AD_TRY(get_int(d, root, "global_batch", 1, INT32_MAX, &pl->global_batch));
  AD_TRY(get_int32(d, root, "replicas", 1, 1 << 20, &pl->replicas));
  AD_TRY(get_int(d, root, "mem_bytes", 0, MAX_BYTES, &pl->mem_bytes));
  if (!(pl->loss_kind = dup_str(d, root, "loss", &st)))
    return st;
  AD_TRY(get_list(d, root, "nodes", &list));
  if (list->n == 0)
    return ad_yaml_error(d, list, "'nodes' is empty");
  AD_TRY(read_nodes(d, list, pl));

  /* files first: devices and tensors refer to them. */
  AD_TRY(get_list(d, root, "files", &list));
  pl->files = ad_xcalloc((size_t)list->n + 1, sizeof(ad_plan_file));
  for (int i = 0; i < list->n; i++) {
    const ad_yaml_node *m = list->items[i];
    ad_plan_file *f = &pl->files[i];
    pl->n_files = i + 1;
    AD_TRY(entry_map(d, m, "files", file_keys));
    if (!(f->path = dup_str(d, m, "path", &st)))
      return st;
    if (!plan_path_ok(f->path))
      return ad_yaml_error(d, ad_yaml_get(m, "path"), "'%s' is not a path inside the plan folder",
                           f->path);
    for (int j = 0; j < i; j++)
      if (!strcmp(pl->files[j].path, f->path))
        return ad_yaml_error(d, m, "file '%s' is listed twice", f->path);
    AD_TRY(ad_yaml_require(d, m, "sha256", &v));
    const char *s;
    AD_TRY(ad_yaml_string(d, v, "sha256", &s));
    if (!hex64_ok(s))
      return ad_yaml_error(d, v, "'sha256' must be 64 lowercase hex digits");
    memcpy(f->sha256, s, 65);
  }

  AD_TRY(get_list(d, root, "devices", &list));
  if (list->n == 0)
    return ad_yaml_error(d, list, "'devices' is empty");
  if (pl->replicas > list->n)
    return ad_yaml_error(d, ad_yaml_get(root, "replicas"),
                         "'replicas' is %d but the plan lists %d devices", pl->replicas, list->n);
  pl->devices = ad_xcalloc((size_t)list->n, sizeof(ad_plan_device));
  for (int i = 0; i < list->n; i++) {
    const ad_yaml_node *m = list->items[i];
    ad_plan_device *dv = &pl->devices[i];
    pl->n_devices = i + 1;
    AD_TRY(entry_map(d, m, "devices", device_keys));
    AD_TRY(get_int32(d, m, "rank", i, i, &dv->rank));
    /* Workers first (they are the replicas, ranks 0..replicas-1), then the
     * servers: every rank past the replicas is a server. */
    int role;
    AD_TRY(get_enum(d, m, "role", device_role_names, AD_DEVICE_ROLE_COUNT, "device role",
                    " (expected worker or server)", &role));
    dv->role = (ad_device_role)role;
    v = ad_yaml_get(m, "role");
    if (i < pl->replicas && dv->role != AD_DEVICE_WORKER)
      return ad_yaml_error(d, v, "device rank %d must be a worker: ranks 0..%d are the %d replicas",
                           i, pl->replicas - 1, pl->replicas);
    if (i >= pl->replicas && dv->role != AD_DEVICE_SERVER)
      return ad_yaml_error(d, v,
                           "device rank %d must be a server: ranks from %d on are parameter "
                           "servers (replicas: %d)",
                           i, pl->replicas, pl->replicas);
    if (dv->role == AD_DEVICE_SERVER && !pl->training)
      return ad_yaml_error(d, v, "an inference plan has no parameter servers");
    pl->n_servers += dv->role == AD_DEVICE_SERVER;
    if (!(dv->node = dup_str(d, m, "node", &st)) || !(dv->type = dup_str(d, m, "type", &st)))
      return st;
    bool known = false;
    for (int j = 0; j < pl->n_nodes; j++)
      known |= !strcmp(pl->nodes[j].address, dv->node);
    if (!known)
      return ad_yaml_error(d, ad_yaml_get(m, "node"), "node '%s' is not listed under 'nodes'",
                           dv->node);
    if (strcmp(dv->type, "cpu") && strcmp(dv->type, "gpu"))
      return ad_yaml_error(d, ad_yaml_get(m, "type"), "device type must be cpu or gpu, got '%s'",
                           dv->type);
    AD_TRY(get_int32(d, m, "id", -1, 1000000, &dv->id));
    AD_TRY(get_int(d, m, "mem_bytes", 0, MAX_BYTES, &dv->mem_bytes));
    if (dv->role == AD_DEVICE_WORKER && dv->mem_bytes != pl->mem_bytes)
      return ad_yaml_error(d, ad_yaml_get(m, "mem_bytes"),
                           "a worker's 'mem_bytes' must be the plan's mem_bytes %lld, got %lld",
                           (long long)pl->mem_bytes, (long long)dv->mem_bytes);
    if (!(dv->module = dup_str(d, m, "module", &st)))
      return st;
    bool listed = false;
    for (int j = 0; j < pl->n_files; j++)
      listed |= !strcmp(pl->files[j].path, dv->module);
    if (!listed)
      return ad_yaml_error(d, ad_yaml_get(m, "module"), "module '%s' is not listed under 'files'",
                           dv->module);
  }

  AD_TRY(get_list(d, root, "tensors", &list));
  pl->tensors = ad_xcalloc((size_t)list->n + 1, sizeof(ad_plan_tensor));
  for (int i = 0; i < list->n; i++) {
    pl->n_tensors = i + 1;
    AD_TRY(read_tensor(d, list->items[i], pl, &pl->tensors[i]));
    for (int j = 0; j < i; j++)
      if (!strcmp(pl->tensors[j].name, pl->tensors[i].name) &&
          pl->tensors[j].role == pl->tensors[i].role)
        return ad_yaml_error(d, list->items[i], "tensor '%s' is listed twice as %s",
                             pl->tensors[i].name, role_names[pl->tensors[i].role]);
  }

  AD_TRY(get_list(d, root, "buckets", &list));
  pl->buckets = ad_xcalloc((size_t)list->n + 1, sizeof(ad_plan_bucket));
  for (int i = 0; i < list->n; i++) {
    const ad_yaml_node *m = list->items[i];
    ad_plan_bucket *b = &pl->buckets[i];
    pl->n_buckets = i + 1;
    AD_TRY(entry_map(d, m, "buckets", bucket_keys));
    AD_TRY(get_int(d, m, "offset", 0, pl->mem_bytes, &b->offset));
    AD_TRY(get_int(d, m, "bytes", 1, pl->mem_bytes, &b->bytes));
    if (b->offset + b->bytes > pl->mem_bytes)
      return ad_yaml_error(d, m, "bucket (offset %lld, %lld bytes) ends past mem_bytes %lld",
                           (long long)b->offset, (long long)b->bytes, (long long)pl->mem_bytes);
  }

  int sync;
  AD_TRY(get_enum(d, root, "sync", sync_names, AD_SYNC_MODE_COUNT, "sync mode",
                  " (expected sync, stale or async)", &sync));
  pl->sync = (ad_sync_mode)sync;
  AD_TRY(get_int32(d, root, "staleness", 0, 1000000, &pl->staleness));
  if (pl->sync != AD_SYNC_STALE && pl->staleness != 0)
    return ad_yaml_error(d, ad_yaml_get(root, "staleness"),
                         "'staleness' must be 0 unless sync is \"stale\", got %d", pl->staleness);

  AD_TRY(get_list(d, root, "shards", &list));
  pl->shards = ad_xcalloc((size_t)list->n + 1, sizeof(ad_plan_shard));
  for (int i = 0; i < list->n; i++) {
    pl->n_shards = i + 1;
    AD_TRY(read_shard(d, list->items[i], pl, i));
  }
  return AD_OK;
}

/* Hashes, then weights inside weights.bin (its size is known only now). */
static ad_status verify_files(const ad_plan *pl, const char *dir, const char *manifest) {
  int64_t weights_size = -1;
  for (int i = 0; i < pl->n_files; i++) {
    char *full = path_join(dir, pl->files[i].path), hex[65];
    int64_t size;
    ad_status st = hash_file(full, hex, &size);
    if (st == AD_OK && strcmp(hex, pl->files[i].sha256) != 0)
      st = ad_fail(AD_ERR_INPUT,
                   "%s: error: hash mismatch, the plan was modified after compile; recompile it",
                   full);
    free(full);
    AD_TRY(st);
    if (!strcmp(pl->files[i].path, "weights.bin"))
      weights_size = size;
  }
  for (int i = 0; i < pl->n_tensors; i++) {
    const ad_plan_tensor *t = &pl->tensors[i];
    if (t->init < 0)
      continue;
    if (weights_size < 0)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: tensor '%s' has an initial value but weights.bin is not "
                     "listed under 'files'",
                     manifest, t->name);
    if (t->init + t->bytes > weights_size)
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: tensor '%s' (init %lld, %lld bytes) ends past the end of "
                     "weights.bin (%lld bytes)",
                     manifest, t->name, (long long)t->init, (long long)t->bytes,
                     (long long)weights_size);
  }
  return AD_OK;
}

ad_status ad_plan_load(const char *dir, ad_plan **out) {
  char *path = path_join(dir, "plan.yaml");
  ad_yaml_doc *d;
  ad_status st = ad_yaml_load_file(path, &d);
  if (st != AD_OK) {
    free(path);
    return st;
  }
  ad_plan *pl = ad_xcalloc(1, sizeof *pl);
  st = read_plan(d, pl);
  ad_yaml_free(d);
  if (st == AD_OK)
    st = verify_files(pl, dir, path);
  free(path);
  if (st != AD_OK) {
    ad_plan_free(pl);
    return st;
  }
  pl->dir = ad_xstrdup(dir);
  *out = pl;
  return AD_OK;
}

ad_status ad_plan_parse_buffer(const char *path, const char *data, size_t len, ad_plan **out) {
  ad_yaml_doc *d;
  *out = NULL;
  AD_TRY(ad_yaml_load(path, data, len, &d));
  ad_plan *pl = ad_xcalloc(1, sizeof *pl);
  ad_status st = read_plan(d, pl);
  ad_yaml_free(d);
  if (st != AD_OK) {
    ad_plan_free(pl);
    return st;
  }
  *out = pl;
  return AD_OK;
}

void ad_plan_free(ad_plan *pl) {
  if (!pl)
    return;
  free(pl->autodist_version);
  free(pl->model_sha256);
  free(pl->strategy);
  free(pl->loss_kind);
  for (int i = 0; i < pl->n_nodes; i++) {
    ad_plan_node *nd = &pl->nodes[i];
    free(nd->address);
    free(nd->username);
    free(nd->key_file);
    free(nd->known_hosts);
    free(nd->python_venv);
    for (int k = 0; k < nd->n_envs; k++) {
      free(nd->envs[k].key);
      free(nd->envs[k].value);
    }
    free(nd->envs);
  }
  free(pl->nodes);
  for (int i = 0; i < pl->n_devices; i++) {
    free(pl->devices[i].node);
    free(pl->devices[i].type);
    free(pl->devices[i].module);
  }
  free(pl->devices);
  for (int i = 0; i < pl->n_tensors; i++)
    free(pl->tensors[i].name);
  free(pl->tensors);
  free(pl->buckets);
  for (int i = 0; i < pl->n_shards; i++)
    free(pl->shards[i].var);
  free(pl->shards);
  for (int i = 0; i < pl->n_files; i++)
    free(pl->files[i].path);
  free(pl->files);
  free(pl->dir);
  free(pl);
}

const ad_plan_tensor *ad_plan_tensor_find(const ad_plan *pl, const char *name) {
  for (int i = 0; i < pl->n_tensors; i++)
    if (!strcmp(pl->tensors[i].name, name))
      return &pl->tensors[i];
  return NULL;
}
