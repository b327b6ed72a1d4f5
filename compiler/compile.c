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
#include "../strategies/cost.h"
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
    "                        [--infer [--batch N]] [--explain] [--bucket-mb MB]\n"
    "                        [--compress none|fp16] [--servers N] [--shards N]\n"
    "                        [--sync | --staleness K | --async]\n"
    "  -s  strategy: auto (default) | allreduce | ps | ps-lb | partitioned-ps | parallax\n"
    "  -r  resource spec (default: ./resource_spec.yml if present, else one local CPU worker)\n"
    "  -t  training config (default: ./train.yml if present, else defaults)\n"
    "  -o  plan folder (default: plan)\n"
    "  --infer      compile a data-parallel inference plan (forward pass only)\n"
    "  --batch N    --infer: samples per step over all workers (default: 256, rounded up\n"
    "               to a multiple of the worker count)\n"
    "  --explain    print every candidate strategy's predicted costs and the choice\n"
    "  --bucket-mb  all-reduce bucket size in MiB (default 25)\n"
    "  --compress   all-reduce gradients as float16 (fp16) or float32 (none, default)\n"
    "  --servers    parameter servers (ps-lb, partitioned-ps, parallax; default one per node)\n"
    "  --shards     shards per variable (partitioned-ps, parallax; default one per server)\n"
    "  --sync       servers apply the sum of every worker's push once per step (default)\n"
    "  --staleness  servers apply each push; a worker may run K steps ahead of the slowest\n"
    "  --async      servers apply each push and answer at once\n";

typedef struct compile_args {
  const char *model, *spec, *train, *strategy, *out;
  int infer, explain, compress_fp16;
  int batch; /* --batch (inference); 0: not given */
  double bucket_mb;
  int bucket_given;      /* --bucket-mb or --compress fp16 was given */
  int servers, shards;   /* 0: the strategy's default */
  const char *sync_flag; /* the last of --sync/--staleness/--async given, or NULL */
  ad_sync_mode sync;
  int staleness;
} compile_args;

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* An integer option value >= min (argv[i + 1]). */
static ad_status int_option(int argc, char **argv, int i, int min, int *out) {
  char *end = NULL;
  long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
  if (i + 1 >= argc || !*argv[i + 1] || *end || v < min || v > 1 << 20)
    return ad_fail(AD_ERR_INPUT, "error: %s needs an integer >= %d\n%s", argv[i], min,
                   compile_usage);
  *out = (int)v;
  return AD_OK;
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
    } else if (!strcmp(s, "--batch")) {
      AD_TRY(int_option(argc, argv, i, 1, &a->batch));
      i++;
      continue;
    } else if (!strcmp(s, "--explain")) {
      a->explain = 1;
      continue;
    } else if (!strcmp(s, "--bucket-mb")) {
      char *end;
      if (i + 1 >= argc || (a->bucket_mb = strtod(argv[i + 1], &end), *end) || a->bucket_mb <= 0)
        return ad_fail(AD_ERR_INPUT, "error: --bucket-mb needs a positive number\n%s",
                       compile_usage);
      a->bucket_given = 1;
      i++;
      continue;
    } else if (!strcmp(s, "--servers") || !strcmp(s, "--shards")) {
      AD_TRY(int_option(argc, argv, i, 1, !strcmp(s, "--servers") ? &a->servers : &a->shards));
      i++;
      continue;
    } else if (!strcmp(s, "--sync") || !strcmp(s, "--async")) {
      a->sync_flag = s;
      a->sync = !strcmp(s, "--sync") ? AD_SYNC_BSP : AD_SYNC_ASYNC;
      continue;
    } else if (!strcmp(s, "--staleness")) {
      AD_TRY(int_option(argc, argv, i, 0, &a->staleness));
      a->sync_flag = s;
      a->sync = AD_SYNC_STALE;
      i++;
      continue;
    } else if (!strcmp(s, "--compress")) {
      const char *v = i + 1 < argc ? argv[++i] : "";
      if (strcmp(v, "fp16") && strcmp(v, "none"))
        return ad_fail(AD_ERR_INPUT, "error: --compress takes fp16 or none, got '%s'\n%s", v,
                       compile_usage);
      a->compress_fp16 = !strcmp(v, "fp16");
      a->bucket_given |= a->compress_fp16;
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
  int k = ad_strategy_find(a->strategy);
  if (strcmp(a->strategy, "auto") && k < 0) {
    if (!strcmp(a->strategy, "pipeline"))
      return ad_fail(AD_ERR_INPUT,
                     "error: strategy 'pipeline' is not available in this version (available: "
                     "auto, allreduce, ps, ps-lb, partitioned-ps, parallax)");
    return ad_fail(AD_ERR_INPUT,
                   "error: unknown strategy '%s' (available: auto, allreduce, ps, ps-lb, "
                   "partitioned-ps, parallax)",
                   a->strategy);
  }
  /* Options that the chosen strategy would silently ignore are errors. */
  if (k == AD_STRAT_ALLREDUCE && a->sync_flag)
    return ad_fail(AD_ERR_INPUT,
                   "error: %s applies to parameter servers; strategy allreduce is always "
                   "synchronous (use -s ps, ps-lb, partitioned-ps or parallax)",
                   a->sync_flag);
  if (a->bucket_given && k >= AD_STRAT_PS && k != AD_STRAT_PARALLAX)
    return ad_fail(AD_ERR_INPUT,
                   "error: --bucket-mb and --compress apply to all-reduce (allreduce, parallax); "
                   "strategy %s sends gradients to parameter servers",
                   a->strategy);
  if (a->servers && (k == AD_STRAT_ALLREDUCE || k == AD_STRAT_PS))
    return ad_fail(AD_ERR_INPUT,
                   "error: --servers applies to ps-lb, partitioned-ps and parallax; strategy %s "
                   "uses %s",
                   a->strategy, k == AD_STRAT_PS ? "one server" : "no servers");
  if (a->shards && k >= 0 && k != AD_STRAT_PARTITIONED_PS && k != AD_STRAT_PARALLAX)
    return ad_fail(AD_ERR_INPUT,
                   "error: --shards applies to partitioned-ps and parallax; strategy %s does not "
                   "partition variables",
                   a->strategy);
  /* An inference plan replicates the model and runs its forward pass: the
   * options of training and of the other strategies mean nothing there. */
  if (a->infer) {
    const char *opt = a->train                 ? "-t"
                      : k > AD_STRAT_ALLREDUCE ? "-s"
                      : a->bucket_given        ? "--bucket-mb or --compress"
                      : a->servers             ? "--servers"
                      : a->shards              ? "--shards"
                      : a->sync_flag           ? a->sync_flag
                                               : NULL;
    if (opt && !strcmp(opt, "-t"))
      return ad_fail(AD_ERR_INPUT,
                     "error: -t applies to training; an inference plan (--infer) reads no "
                     "train.yml (give the samples per step with --batch N)");
    if (opt && !strcmp(opt, "-s"))
      return ad_fail(AD_ERR_INPUT,
                     "error: -s %s applies to training; an inference plan (--infer) replicates "
                     "the model on every worker (-s auto or allreduce)",
                     a->strategy);
    if (opt)
      return ad_fail(AD_ERR_INPUT,
                     "error: %s applies to training; an inference plan (--infer) has no "
                     "gradients to communicate",
                     opt);
  } else if (a->batch) {
    return ad_fail(AD_ERR_INPUT, "error: --batch applies to --infer; a training plan takes its "
                                 "global batch from train.yml (batch_size)");
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
static ad_status write_plan_files(ad_program *p, const ad_ps_layout *l, const ad_spec *spec,
                                  const compile_args *a, const ad_strategy_opts *opts,
                                  const ad_train_config *cfg, const char *tmpdir) {
  ad_graph *g = p->g;
  char path[4096];
  snprintf(path, sizeof path, "%s/step.bc", tmpdir);
  AD_TRY(ad_codegen(p, path));
  for (int s = 0; s < l->n_servers; s++) {
    snprintf(path, sizeof path, "%s/server%d.bc", tmpdir, s);
    AD_TRY(ad_codegen(l->servers[s].prog, path));
  }

  AD_VEC(ad_plan_tensor) tensors = {0};
  AD_VEC(char) weights = {0};
  char **trained = ad_xcalloc((size_t)g->params.len + 1, sizeof(char *));
  int n_trained = 0;
  for (int i = 0; i < g->params.len; i++) {
    ad_value *v = g->params.data[i];
    int trainable = 0;
    for (int j = 0; j < p->n_params; j++)
      trainable |= p->params[j] == v;
    trainable |= v->updated && p->training; /* saved like trained ones */
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
    if (!p->grads[i]) /* sparse: only rows move, there is no dense gradient */
      continue;
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

  int n_devices = p->replicas + l->n_servers;
  ad_plan_device *devices = ad_xcalloc((size_t)n_devices, sizeof *devices);
  int rank = 0;
  /* The chief's workers first: rank 0 (metrics, --save, checkpoints) runs on
   * the node `autodist run` is started from. */
  for (int k = 0; k < spec->n_nodes; k++) {
    int ni = k == 0 ? spec->chief : k <= spec->chief ? k - 1 : k;
    ad_spec_node *nd = &spec->nodes[ni];
    int n = nd->n_cpus ? nd->n_cpus : 1;
    for (int c = 0; c < n; c++, rank++)
      devices[rank] = (ad_plan_device){.rank = rank,
                                       .role = AD_DEVICE_WORKER,
                                       .node = nd->address,
                                       .type = "cpu",
                                       .id = nd->n_cpus ? nd->cpus[c] : 0,
                                       .module = "step.bc",
                                       .mem_bytes = p->mem_bytes};
  }
  AD_ASSERT(rank == p->replicas);
  ad_plan_file *files = ad_xcalloc((size_t)l->n_servers + 3, sizeof *files);
  int n_files = 0;
  files[n_files++].path = "step.bc";
  for (int s = 0; s < l->n_servers; s++, rank++) {
    char *module = ad_arena_printf(g->arena, "server%d.bc", s);
    devices[rank] = (ad_plan_device){.rank = rank,
                                     .role = AD_DEVICE_SERVER,
                                     .node = spec->nodes[l->servers[s].node].address,
                                     .type = "cpu",
                                     .id = -1,
                                     .module = module,
                                     .mem_bytes = l->servers[s].prog->mem_bytes};
    files[n_files++].path = module;
  }
  files[n_files++].path = "weights.bin";
  files[n_files++].path = "model.onnx";
  ad_plan_shard *shards = ad_xcalloc((size_t)l->n_shards + 1, sizeof *shards);
  for (int k = 0; k < l->n_shards; k++) {
    const ad_ps_shard *sh = &l->shards[k];
    const ad_program *sp = l->servers[sh->server].prog;
    shards[k] = (ad_plan_shard){.var = (char *)sh->param->name,
                                .server = sh->server,
                                .row0 = sh->row0,
                                .rows = sh->rows,
                                .row_bytes = sh->row_bytes,
                                .sparse = sh->sparse,
                                .param_offset = sp->offset[sh->sparam->id],
                                .grad_offset = sp->offset[sh->sgrad->id]};
  }

  /* Each node with its ssh group, so that `run` (and its `__rsh` agent) need
   * nothing but the plan. The spec already expanded ~ in the paths. */
  ad_plan_node *nodes = ad_xcalloc((size_t)spec->n_nodes, sizeof *nodes);
  for (int i = 0; i < spec->n_nodes; i++) {
    const ad_spec_node *nd = &spec->nodes[i];
    nodes[i] = (ad_plan_node){.address = nd->address, .chief = i == spec->chief, .port = 22};
    const ad_ssh_group *g = NULL;
    for (int j = 0; nd->ssh_config && j < spec->n_ssh; j++)
      if (!strcmp(spec->ssh[j].name, nd->ssh_config))
        g = &spec->ssh[j];
    AD_ASSERT(!nd->ssh_config || g); /* ad_spec_parse checks ssh_config names */
    if (!g)
      continue;
    nodes[i].ssh = true;
    nodes[i].username = g->username;
    nodes[i].port = g->port ? g->port : 22;
    nodes[i].key_file = g->key_file;
    nodes[i].known_hosts = g->known_hosts;
    nodes[i].python_venv = g->python_venv;
    nodes[i].n_envs = g->n_envs;
    nodes[i].envs = ad_xcalloc((size_t)g->n_envs + 1, sizeof(ad_plan_env));
    for (int k = 0; k < g->n_envs; k++)
      nodes[i].envs[k] = (ad_plan_env){g->shared_envs[k].key, g->shared_envs[k].value};
  }

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
    ad_plan plan = {
        .format = 1,
        .autodist_version = AD_VERSION,
        .model_sha256 = model_hash,
        .strategy = p->training ? (char *)ad_strategy_name(opts->kind) : "allreduce",
        .training = p->training,
        .global_batch = p->global_batch,
        .replicas = p->replicas,
        .mem_bytes = p->mem_bytes,
        .loss_kind = p->training ? (char *)ad_loss_name(cfg->loss) : "",
        .n_nodes = spec->n_nodes,
        .nodes = nodes,
        .n_devices = n_devices,
        .devices = devices,
        .n_tensors = tensors.len,
        .tensors = tensors.data,
        .n_buckets = p->n_buckets,
        .buckets = buckets,
        .n_servers = l->n_servers,
        .sync = opts->sync,
        .staleness = opts->staleness,
        .n_shards = l->n_shards,
        .shards = shards,
        .n_files = n_files,
        .files = files,
    };
    if (st == AD_OK)
      st = ad_plan_write(&plan, tmpdir);
  }
  for (int i = 0; i < spec->n_nodes; i++)
    free(nodes[i].envs);
  free(nodes);
  free(devices);
  free(files);
  free(shards);
  free(buckets);
  free(trained);
  free(weights.data);
  free(tensors.data);
  return st;
}

/* --explain: the candidates' predicted costs, the choice, and the plan's own
 * figures. */
static void explain(const ad_program *p, const ad_ps_layout *l, const ad_spec *spec,
                    const ad_cost *costs, ad_strategy_kind chosen, bool automatic) {
  if (!p->training) {
    printf("inference plan: %d replica%s, global batch %lld, arena %lld bytes per device\n",
           p->replicas, p->replicas == 1 ? "" : "s", (long long)p->global_batch,
           (long long)p->mem_bytes);
    return;
  }
  ad_cost_print(stdout, costs, chosen, automatic, spec, p->replicas);
  printf("plan: %s, %d replica%s (global batch %lld, %lld per replica), %d all-reduce "
         "bucket%s, %d server%s holding %d shard%s, arena %lld bytes per worker\n",
         ad_strategy_name(chosen), p->replicas, p->replicas == 1 ? "" : "s",
         (long long)p->global_batch, (long long)(p->global_batch / p->replicas), p->n_buckets,
         p->n_buckets == 1 ? "" : "s", l->n_servers, l->n_servers == 1 ? "" : "s", l->n_shards,
         l->n_shards == 1 ? "" : "s", (long long)p->mem_bytes);
  for (int s = 0; s < l->n_servers; s++)
    printf("  server %d on %s: %lld bytes of variables, arena %lld bytes\n", s,
           spec->nodes[l->servers[s].node].address, (long long)l->servers[s].bytes,
           (long long)l->servers[s].prog->mem_bytes);
}

/* " and 2 servers" for the summary line. */
static const char *server_note(const ad_ps_layout *l) {
  static char buf[64];
  buf[0] = 0;
  if (l->n_servers)
    snprintf(buf, sizeof buf, " and %d server%s", l->n_servers, l->n_servers > 1 ? "s" : "");
  return buf;
}

/* -s NAME, or for auto the cost model's choice. */
static ad_status choose_strategy(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                                 const compile_args *a, ad_strategy_opts *opts, ad_cost *costs) {
  AD_TRY(ad_cost_predict(p, cfg, spec, opts, costs));
  /* Options given with -s auto limit the candidates to the strategies they
   * apply to, so that none is silently ignored. */
  for (int c = 0; c < AD_STRAT_COUNT; c++) {
    const char *why = NULL;
    bool servers = c != AD_STRAT_ALLREDUCE && (c != AD_STRAT_PARALLAX || costs[c].servers);
    if (a->bucket_given && c != AD_STRAT_ALLREDUCE && c != AD_STRAT_PARALLAX)
      why = "--bucket-mb/--compress are all-reduce options";
    else if (a->sync_flag && !servers)
      why = "--sync/--staleness/--async are parameter-server options";
    else if (a->servers && (c == AD_STRAT_PS || !servers))
      why = "--servers was given";
    else if (a->shards && c != AD_STRAT_PARTITIONED_PS && (c != AD_STRAT_PARALLAX || !servers))
      why = "--shards was given";
    if (why && costs[c].applicable) {
      costs[c].applicable = false;
      snprintf(costs[c].why_not, sizeof costs[c].why_not, "%s", why);
    }
  }
  int k = ad_strategy_find(a->strategy);
  opts->kind = k >= 0 ? (ad_strategy_kind)k : ad_cost_choose(costs);
  if (opts->kind == AD_STRAT_COUNT) {
    ad_cost_print(stderr, costs, AD_STRAT_COUNT, true, spec, p->replicas);
    return ad_fail(AD_ERR_INPUT,
                   "error: -s auto: no strategy can apply with these options (table above)");
  }
  return AD_OK;
}

static ad_status apply_strategy(ad_program *p, const ad_train_config *cfg, const ad_spec *spec,
                                const ad_strategy_opts *opts, ad_ps_layout *layout) {
  switch (opts->kind) {
  case AD_STRAT_ALLREDUCE:
    return ad_strategy_allreduce(p, cfg, opts);
  case AD_STRAT_PARALLAX:
    return ad_strategy_parallax(p, cfg, spec, opts, layout);
  default:
    return ad_strategy_ps(p, cfg, spec, opts, layout);
  }
}

ad_status ad_cmd_compile(int argc, char **argv) {
  compile_args a;
  AD_TRY(parse_compile_args(argc, argv, &a));
  ad_spec *spec = NULL;
  ad_train_config *cfg = NULL;
  ad_graph *g = NULL;
  ad_program *p = NULL;
  ad_strategy_opts opts = {0};
  ad_ps_layout layout = {0};
  ad_cost costs[AD_STRAT_COUNT];
  char tmpdir[4096] = "";
  ad_status st = load_spec(a.spec, &spec);
  /* An inference plan reads no train.yml (not even ./train.yml): its batch is
   * --batch N. */
  if (st == AD_OK)
    st = a.infer ? (cfg = ad_train_config_default(), AD_OK) : load_train(a.train, &cfg);
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
  if (st == AD_OK && a.infer) {
    if (a.batch && a.batch % workers)
      st = ad_fail(AD_ERR_INPUT,
                   "error: --batch %d cannot be split evenly over %d workers (give a multiple of "
                   "%d)",
                   a.batch, workers, workers);
    cfg->batch_size = a.batch ? a.batch : (256 + workers - 1) / workers * workers;
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
      opts = (ad_strategy_opts){.kind = AD_STRAT_ALLREDUCE,
                                .bucket_mb = a.bucket_mb,
                                .compress_fp16 = a.compress_fp16,
                                .servers = a.servers,
                                .shards = a.shards,
                                .sync = a.sync,
                                .staleness = a.staleness};
      if (st == AD_OK)
        st = choose_strategy(p, cfg, spec, &a, &opts, costs);
      if (st == AD_OK)
        st = apply_strategy(p, cfg, spec, &opts, &layout);
      if (st == AD_OK && opts.kind == AD_STRAT_PARALLAX && !layout.n_servers &&
          (a.sync_flag || a.servers || a.shards))
        st = ad_fail(AD_ERR_INPUT,
                     "%s: error: strategy parallax found no lookup table (a Gather on axis 0 of a "
                     "trained initializer, read by nothing else), so it has no servers for %s",
                     a.model,
                     a.sync_flag ? a.sync_flag
                     : a.servers ? "--servers"
                                 : "--shards");
    }
  }
  if (st == AD_OK) {
    snprintf(tmpdir, sizeof tmpdir, "%s.tmp.%d", a.out, (int)getpid());
    if (mkdir(tmpdir, 0755) != 0)
      st = ad_fail(AD_ERR_INPUT, "%s: error: cannot create: %s", tmpdir, strerror(errno));
    else
      st = write_plan_files(p, &layout, spec, &a, &opts, cfg, tmpdir);
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
      explain(p, &layout, spec, costs, opts.kind, ad_strategy_find(a.strategy) < 0);
    char kind[64];
    snprintf(kind, sizeof kind, "%s", ad_strategy_name(opts.kind));
    if (a.infer)
      snprintf(kind, sizeof kind, "inference, %lld samples per step", (long long)cfg->batch_size);
    fprintf(stderr, "autodist: compiled %s for %d worker%s%s (%s) -> %s/\n", a.model, workers,
            workers > 1 ? "s" : "", server_note(&layout), kind, a.out);
  }
  ad_ps_layout_free(&layout);
  ad_program_destroy(p);
  ad_graph_destroy(g);
  ad_train_config_free(cfg);
  ad_spec_free(spec);
  return st;
}
