/*
 * compiler/compile.c: `autodist compile` and `autodist infer`, the compiler's
 * drivers: read the inputs, build the program, run the strategy, generate the
 * device module and write the plan. A plan is first written to a temporary
 * folder beside PLAN_DIR and renamed into place at the end, so bad input never
 * leaves a half-written plan.
 */
#include "../cli/commands.h"
#include "../resource_specs/spec.h"
#include "../runtime/jit.h"
#include "../runtime/npy.h"
#include "../runtime/plan.h"
#include "../strategies/strategy.h"
#include "codegen_module.h"
#include "onnx_load.h"
#include "op.h"
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char compile_usage[] =
    "usage: autodist compile MODEL.onnx [-r SPEC.yml] [-t TRAIN.yml] [-s STRATEGY] [-o PLAN_DIR]\n"
    "                        [--infer] [--explain] [--bucket-mb MB] [--compress none|fp16]\n"
    "  -r  resource spec (default: ./resource_spec.yml if present, else one local CPU worker)\n"
    "  -t  training config (default: ./train.yml if present, else defaults)\n"
    "  -s  strategy: auto (default) | allreduce\n"
    "  -o  plan folder (default: plan)\n"
    "  --infer      compile a data-parallel inference plan (no loss, no training)\n"
    "  --explain    print the strategy choice and its predicted costs\n"
    "  --bucket-mb  all-reduce bucket size in MiB (default 25)\n"
    "  --compress   all-reduce gradients as float16 (fp16) or float32 (none, default)\n";

typedef struct compile_args {
  const char *model, *spec, *train, *strategy, *out;
  int infer, explain, compress_fp16;
  double bucket_mb;
} compile_args;

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static ad_status parse_compile_args(int argc, char **argv, compile_args *a) {
  *a = (compile_args){.strategy = "auto", .out = "plan", .bucket_mb = 25};
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char **dst = NULL;
    if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
      fputs(compile_usage, stdout);
      exit(0);
    } else if (!strcmp(s, "-r")) {
      dst = &a->spec;
    } else if (!strcmp(s, "-t")) {
      dst = &a->train;
    } else if (!strcmp(s, "-s")) {
      dst = &a->strategy;
    } else if (!strcmp(s, "-o")) {
      dst = &a->out;
    } else if (!strcmp(s, "--infer")) {
      a->infer = 1;
      continue;
    } else if (!strcmp(s, "--explain")) {
      a->explain = 1;
      continue;
    } else if (!strcmp(s, "--bucket-mb")) {
      char *end;
      if (i + 1 >= argc || (a->bucket_mb = strtod(argv[i + 1], &end), *end) || a->bucket_mb <= 0)
        return ad_fail(AD_ERR_INPUT, "error: --bucket-mb needs a positive number\n%s",
                       compile_usage);
      i++;
      continue;
    } else if (!strcmp(s, "--compress")) {
      const char *v = i + 1 < argc ? argv[++i] : "";
      if (strcmp(v, "fp16") && strcmp(v, "none"))
        return ad_fail(AD_ERR_INPUT, "error: --compress takes fp16 or none, got '%s'\n%s", v,
                       compile_usage);
      a->compress_fp16 = !strcmp(v, "fp16");
      continue;
    } else if (s[0] == '-') {
      return ad_fail(AD_ERR_INPUT, "error: unknown option '%s'\n%s", s, compile_usage);
    } else if (!a->model) {
      a->model = s;
      continue;
    } else {
      return ad_fail(AD_ERR_INPUT, "error: unexpected argument '%s'\n%s", s, compile_usage);
    }
    if (i + 1 >= argc)
      return ad_fail(AD_ERR_INPUT, "error: option '%s' needs a value\n%s", s, compile_usage);
    *dst = argv[++i];
  }
  if (!a->model)
    return ad_fail(AD_ERR_INPUT, "error: no model given\n%s", compile_usage);
  if (strcmp(a->strategy, "auto") && strcmp(a->strategy, "allreduce")) {
    static const char *later[] = {"ps", "ps-lb", "partitioned-ps", "parallax", "pipeline"};
    for (size_t i = 0; i < sizeof later / sizeof *later; i++)
      if (!strcmp(a->strategy, later[i]))
        return ad_fail(AD_ERR_INPUT,
                       "error: strategy '%s' is not available in this version (available: auto, "
                       "allreduce)",
                       a->strategy);
    return ad_fail(AD_ERR_INPUT, "error: unknown strategy '%s' (available: auto, allreduce)",
                   a->strategy);
  }
  return AD_OK;
}

static ad_status load_spec(const char *path, ad_spec **out) {
  if (path)
    return ad_spec_parse(path, out);
  if (file_exists("resource_spec.yml"))
    return ad_spec_parse("resource_spec.yml", out);
  *out = ad_spec_default();
  return AD_OK;
}

static ad_status load_train(const char *path, ad_train_config **out) {
  if (path)
    return ad_train_config_parse(path, out);
  if (file_exists("train.yml"))
    return ad_train_config_parse("train.yml", out);
  *out = ad_train_config_default();
  return AD_OK;
}

/* Removes a folder this process created (flat: plans have no subfolders). */
static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return;
  struct dirent *e;
  char path[4096];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

static ad_plan_tensor tensor_of(const ad_program *p, const ad_value *v, ad_tensor_role role) {
  ad_plan_tensor t = {.name = (char *)v->name, .role = role, .rank = v->rank, .init = -1};
  snprintf(t.dtype, sizeof t.dtype, "%s", ad_dtype_name(v->dtype));
  memcpy(t.dims, v->dims, sizeof(int64_t) * (size_t)v->rank);
  const ad_value *r = v;
  while (r->kind == AD_VAL_ACT && r->producer->op->lower_kind == AD_LOWER_ALIAS)
    r = r->producer->in[0];
  t.offset = p->offset[r->id];
  t.bytes = (int64_t)ad_value_bytes(v);
  return t;
}

/* Writes every plan file into `tmpdir`. */
static ad_status write_plan_files(ad_program *p, const ad_spec *spec, const compile_args *a,
                                  const ad_train_config *cfg, const char *tmpdir) {
  ad_graph *g = p->g;
  char path[4096];
  snprintf(path, sizeof path, "%s/step.bc", tmpdir);
  AD_TRY(ad_codegen(p, path));

  AD_VEC(ad_plan_tensor) tensors = {0};
  AD_VEC(char) weights = {0};
  char **trained = ad_xcalloc((size_t)g->params.len + 1, sizeof(char *));
  int n_trained = 0;
  for (int i = 0; i < g->params.len; i++) {
    ad_value *v = g->params.data[i];
    int trainable = 0;
    for (int j = 0; j < p->n_params; j++)
      trainable |= p->params[j] == v;
    if (p->offset[v->id] < 0)
      continue;
    ad_plan_tensor t = tensor_of(p, v, trainable ? AD_ROLE_PARAM : AD_ROLE_FROZEN);
    t.init = weights.len;
    size_t n = ad_value_bytes(v);
    for (size_t k = 0; k < n; k++)
      AD_VEC_PUSH(weights, ((char *)v->data)[k]);
    while (weights.len % 64)
      AD_VEC_PUSH(weights, 0);
    AD_VEC_PUSH(tensors, t);
    if (trainable)
      trained[n_trained++] = (char *)v->name;
  }
  for (int i = 0; i < p->states.len; i++)
    AD_VEC_PUSH(tensors, tensor_of(p, p->states.data[i], AD_ROLE_STATE));
  for (int i = 0; i < p->n_params; i++) {
    ad_plan_tensor t = tensor_of(p, p->grads[i], AD_ROLE_GRAD);
    t.name = ad_arena_printf(g->arena, "%s.grad", p->params[i]->name);
    AD_VEC_PUSH(tensors, t);
  }
  for (int i = 0; i < g->inputs.len; i++) {
    ad_value *v = g->inputs.data[i];
    AD_VEC_PUSH(tensors, tensor_of(p, v, v == p->label ? AD_ROLE_LABEL : AD_ROLE_INPUT));
  }
  if (p->loss) {
    ad_plan_tensor t = tensor_of(p, p->loss, AD_ROLE_LOSS);
    t.name = "loss";
    AD_VEC_PUSH(tensors, t);
  }
  for (int i = 0; i < g->outputs.len; i++)
    AD_VEC_PUSH(tensors, tensor_of(p, g->outputs.data[i], AD_ROLE_OUTPUT));

  ad_plan_bucket *buckets = ad_xcalloc((size_t)p->n_buckets + 1, sizeof *buckets);
  for (int b = 0; b < p->n_buckets; b++) {
    ad_bucket *bk = &p->buckets[b];
    buckets[b].offset = p->offset[p->grads[bk->first]->id];
    for (int j = bk->first; j < bk->first + bk->count; j++)
      buckets[b].bytes += (int64_t)ad_value_bytes(p->grads[j]);
  }

  ad_plan_device *devices = ad_xcalloc((size_t)p->replicas, sizeof *devices);
  int rank = 0;
  for (int ni = 0; ni < spec->n_nodes; ni++) {
    ad_spec_node *nd = &spec->nodes[ni];
    int n = nd->n_cpus ? nd->n_cpus : 1;
    for (int k = 0; k < n; k++, rank++)
      devices[rank] = (ad_plan_device){.rank = rank,
                                       .node = nd->address,
                                       .type = "cpu",
                                       .id = nd->n_cpus ? nd->cpus[k] : 0,
                                       .module = "step.bc"};
  }
  AD_ASSERT(rank == p->replicas);

  snprintf(path, sizeof path, "%s/weights.bin", tmpdir);
  ad_status st = ad_file_write(path, weights.data, (size_t)weights.len);
  if (st == AD_OK) {
    snprintf(path, sizeof path, "%s/model.onnx", tmpdir);
    st = ad_onnx_strip_initializers(a->model, path, n_trained, trained);
  }
  if (st == AD_OK) {
    char *model_data;
    size_t model_len;
    char model_hash[65] = "";
    st = ad_file_read(a->model, &model_data, &model_len);
    if (st == AD_OK) {
      ad_sha256_hex(model_data, model_len, model_hash);
      free(model_data);
    }
    ad_plan_file files[3] = {{.path = "step.bc"}, {.path = "weights.bin"}, {.path = "model.onnx"}};
    ad_plan plan = {
        .format = 1,
        .autodist_version = AD_VERSION,
        .model_sha256 = model_hash,
        .strategy = "allreduce",
        .training = p->training,
        .global_batch = p->global_batch,
        .replicas = p->replicas,
        .mem_bytes = p->mem_bytes,
        .loss_kind = p->training ? (char *)ad_loss_name(cfg->loss) : "",
        .n_devices = p->replicas,
        .devices = devices,
        .n_tensors = tensors.len,
        .tensors = tensors.data,
        .n_buckets = p->n_buckets,
        .buckets = buckets,
        .n_files = 3,
        .files = files,
    };
    if (st == AD_OK)
      st = ad_plan_write(&plan, tmpdir);
  }
  free(devices);
  free(buckets);
  free(trained);
  free(weights.data);
  free(tensors.data);
  return st;
}

static void explain(const ad_program *p, const ad_spec *spec, int compress_fp16) {
  double flops = 0, bytes = 0;
  for (int i = 0; i < p->g->nodes.len; i++) {
    ad_node *n = p->g->nodes.data[i];
    double f = 0, b = 0;
    if (n->op->cost)
      n->op->cost(n, &f, &b);
    flops += f;
    bytes += b;
  }
  int64_t grad_bytes = 0;
  for (int i = 0; i < p->n_params; i++)
    grad_bytes += (int64_t)ad_value_bytes(p->grads[i]);
  printf("strategy: allreduce (the only strategy in this version; -s auto chooses it)\n");
  printf("  replicas: %d, global batch %lld, per replica %lld\n", p->replicas,
         (long long)p->global_batch, (long long)(p->global_batch / p->replicas));
  printf("  compute per replica per step: %.3g FLOP, %.3g bytes moved\n", flops, bytes);
  if (compress_fp16)
    grad_bytes /= 2;
  printf("  all-reduce per replica per step: %lld bytes%s in %d bucket(s)%s\n",
         (long long)(p->replicas > 1 ? grad_bytes : 0), compress_fp16 ? " (fp16)" : "",
         p->n_buckets, p->replicas > 1 ? "" : " (one replica: no communication)");
  printf("  arena per device: %lld bytes\n", (long long)p->mem_bytes);
  (void)spec;
}

ad_status ad_cmd_compile(int argc, char **argv) {
  compile_args a;
  AD_TRY(parse_compile_args(argc, argv, &a));
  ad_spec *spec = NULL;
  ad_train_config *cfg = NULL;
  ad_graph *g = NULL;
  ad_program *p = NULL;
  char tmpdir[4096] = "";
  ad_status st = load_spec(a.spec, &spec);
  if (st == AD_OK)
    st = load_train(a.train, &cfg);
  int workers = 0;
  if (st == AD_OK) {
    for (int i = 0; i < spec->n_nodes; i++)
      if (spec->nodes[i].n_gpus)
        st = ad_fail(AD_ERR_INPUT,
                     "%s:%d: error: node '%s' lists gpus; GPU workers are not supported in this "
                     "version (list cpus instead)",
                     spec->path, spec->nodes[i].line, spec->nodes[i].address);
    workers = ad_spec_worker_count(spec);
  }
  if (st == AD_OK && cfg->batch_size % workers)
    st = ad_fail(AD_ERR_INPUT, "%s: error: batch_size %lld cannot be split evenly over %d workers",
                 cfg->path, (long long)cfg->batch_size, workers);
  if (st == AD_OK)
    st = ad_onnx_load(a.model, cfg->batch_size / workers, &g);
  /* Every data input is split along its first axis: it must be the batch. */
  for (int i = 0; st == AD_OK && i < g->inputs.len; i++) {
    ad_value *v = g->inputs.data[i];
    int64_t local = cfg->batch_size / workers;
    if (v->rank == 0 || (!v->batched && v->dims[0] != local))
      st = ad_fail(AD_ERR_INPUT,
                   "%s: error: input '%s' has the fixed shape %s, so it cannot take %lld samples "
                   "per worker; export it with a dynamic batch axis (torch.onnx.export(..., "
                   "dynamic_axes={'%s': {0: 'batch'}}))",
                   a.model, v->name, ad_shape_str(v->rank, v->dims), (long long)local, v->name);
  }
  if (st == AD_OK) {
    if (a.infer) {
      p = ad_program_create(g, false);
      p->replicas = workers;
      p->global_batch = cfg->batch_size;
    } else {
      st = ad_train_build(g, cfg, workers, &p);
      if (st == AD_OK) {
        ad_strategy_opts opts = {.bucket_mb = a.bucket_mb, .compress_fp16 = a.compress_fp16};
        st = ad_strategy_allreduce(p, cfg, &opts);
      }
    }
  }
  if (st == AD_OK) {
    snprintf(tmpdir, sizeof tmpdir, "%s.tmp.%d", a.out, (int)getpid());
    if (mkdir(tmpdir, 0755) != 0)
      st = ad_fail(AD_ERR_INPUT, "%s: error: cannot create: %s", tmpdir, strerror(errno));
    else
      st = write_plan_files(p, spec, &a, cfg, tmpdir);
  }
  if (st == AD_OK) {
    char old[4096];
    snprintf(old, sizeof old, "%s/plan.yaml", a.out);
    if (file_exists(a.out) && !file_exists(old)) {
      st = ad_fail(AD_ERR_INPUT, "%s: error: exists and is not a plan folder; not replacing it",
                   a.out);
    } else {
      remove_dir(a.out);
      if (rename(tmpdir, a.out) != 0)
        st = ad_fail(AD_ERR_INPUT, "%s: error: cannot create: %s", a.out, strerror(errno));
    }
  }
  if (st != AD_OK && tmpdir[0])
    remove_dir(tmpdir);
  if (st == AD_OK) {
    if (a.explain)
      explain(p, spec, a.compress_fp16);
    fprintf(stderr, "autodist: compiled %s for %d worker%s (%s) -> %s/\n", a.model, workers,
            workers > 1 ? "s" : "", a.infer ? "inference" : "allreduce", a.out);
  }
  ad_program_destroy(p);
  ad_graph_destroy(g);
  ad_train_config_free(cfg);
  ad_spec_free(spec);
  return st;
}
