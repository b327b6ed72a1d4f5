/*
 * tests/unit/test_plan.c: plan.yaml write -> load round trip, the exact layout
 * documented in docs/plan-format.md, and the loader's refusals (tampered file,
 * other format or version, tensors outside the arena, paths leaving the plan,
 * workers and servers out of place, shards outside their parameter or their
 * server's arena, nodes without one chief or without ssh, devices on unlisted
 * nodes). The sample plan has two workers and a parameter server on the
 * chief, and a second node reached over SSH.
 *
 * File hashes are compared with sha256sum's output for the same bytes
 * (computed outside the project), and the round-tripped manifest must also load
 * with PyYAML-compatible meaning (quoted names stay strings).
 */
#include "runtime/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

/* sha256sum of the bytes written below. */
#define SHA_DEV0 "f97480fc9ff014172828fd38ce092d12047d25ae7a743b8fffdb0f4c918a5d66"
#define SHA_DEV1 "8a244db732729ce0757e2d5d1b31ceea6cf87af620356c89cd90ab3e9e223902"
#define SHA_SRV0 "dfbe6847e25ed3804e10baef856d753372a8a963b3a0156481fe13291a36c410"
#define SHA_ONNX "7e89398aeeeba2389c659c9eee508c74b99efe3bed7bd8e30ea63284bd0a83a1"
#define SHA_WEIGHTS "06d1bf4aae75e801329467c4241c5b8e13ab47963b8cc6c3a9cc08e51184afa5"
#define MODEL_SHA "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static char dir[256];

static void put(const char *name, const void *data, size_t len) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  CHECK(f && fwrite(data, 1, len, f) == len);
  if (f)
    fclose(f);
}

static char *slurp(const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "rb");
  if (!f)
    return NULL;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return buf;
}

/* Two workers and one parameter server (rank 2, unpinned). A worker's
 * mem_bytes is left 0: the writer puts the plan's. */
static ad_plan_device devices[] = {
    {.rank = 0,
     .role = AD_DEVICE_WORKER,
     .node = "localhost",
     .type = "cpu",
     .id = 0,
     .module = "device0.bc"},
    {.rank = 1,
     .role = AD_DEVICE_WORKER,
     .node = "localhost",
     .type = "cpu",
     .id = 1,
     .module = "device1.bc",
     .mem_bytes = 384},
    {.rank = 2,
     .role = AD_DEVICE_SERVER,
     .node = "localhost",
     .type = "cpu",
     .id = -1,
     .module = "server0.bc",
     .mem_bytes = 128},
};
static ad_plan_tensor tensors[] = {
    {"fc.weight", AD_ROLE_PARAM, "float32", 2, {2, 4}, 0, 0, 32},
    {"fc.bias", AD_ROLE_PARAM, "float32", 1, {4}, 32, 32, 16},
    {"x", AD_ROLE_INPUT, "float32", 2, {8, 2}, 48, -1, 64},
    {"label", AD_ROLE_LABEL, "int64", 1, {8}, 112, -1, 64},
    {"loss", AD_ROLE_LOSS, "float32", 0, {0}, 176, -1, 4},
    {"fc.weight.grad", AD_ROLE_GRAD, "float32", 2, {2, 4}, 192, -1, 32},
    {"we\"ird\\1", AD_ROLE_STATE, "float32", 1, {4}, 224, -1, 16},
    {"yes", AD_ROLE_OUTPUT, "float32", 2, {8, 4}, 256, -1, 128},
};
static ad_plan_bucket buckets[] = {{192, 32}};
/* fc.weight whole on server 0; fc.bias as a sparse table of 4 one-float rows. */
static ad_plan_shard shards[] = {
    {.var = "fc.weight",
     .server = 0,
     .row0 = 0,
     .rows = 2,
     .row_bytes = 16,
     .sparse = false,
     .param_offset = 0,
     .grad_offset = 32},
    {.var = "fc.bias",
     .server = 0,
     .row0 = 1,
     .rows = 3,
     .row_bytes = 4,
     .sparse = true,
     .param_offset = 64,
     .grad_offset = 80},
};
/* The chief and a node reached over SSH, with a shared_envs value full of
 * shell and YAML metacharacters (it must come back byte for byte). */
static ad_plan_env envs[] = {{"OMP_NUM_THREADS", "1"}, {"X_Y", "$(id); \"a b\" \\"}};
static ad_plan_node nodes[] = {
    {.address = "localhost", .chief = true, .port = 22},
    {.address = "10.0.0.2",
     .ssh = true,
     .username = "ubuntu",
     .port = 2222,
     .key_file = "/home/u/.ssh/id_ed25519",
     .known_hosts = "/home/u/.ssh/known_hosts",
     .python_venv = "source /opt/env.sh",
     .n_envs = 2,
     .envs = envs},
};
static ad_plan_file files[] = {{"device0.bc", ""},
                               {"device1.bc", ""},
                               {"server0.bc", ""},
                               {"weights.bin", ""},
                               {"model.onnx", ""}};
#define N_FILES ((int)(sizeof files / sizeof *files))

static ad_plan sample_plan(void) {
  ad_plan p = {0};
  p.format = 1;
  p.autodist_version = AD_VERSION;
  p.model_sha256 = MODEL_SHA;
  p.strategy = "allreduce";
  p.training = true;
  p.global_batch = 16;
  p.replicas = 2;
  p.mem_bytes = 384;
  p.loss_kind = "cross_entropy";
  p.n_nodes = 2;
  p.nodes = nodes;
  p.n_devices = 3;
  p.devices = devices;
  p.n_tensors = (int)(sizeof tensors / sizeof *tensors);
  p.tensors = tensors;
  p.n_buckets = 1;
  p.buckets = buckets;
  p.n_servers = 1;
  p.sync = AD_SYNC_STALE;
  p.staleness = 2;
  p.n_shards = 2;
  p.shards = shards;
  p.n_files = N_FILES;
  p.files = files;
  return p;
}

static const char *golden =
    "# autodist plan (docs/plan-format.md), written by `autodist compile`.\n"
    "# Every file below is hash-checked by `autodist run`: recompile, do not edit.\n"
    "format: 1\n"
    "autodist_version: \"" AD_VERSION "\"\n"
    "model_sha256: \"" MODEL_SHA "\"\n"
    "strategy: \"allreduce\"\n"
    "training: true\n"
    "global_batch: 16\n"
    "replicas: 2\n"
    "mem_bytes: 384\n"
    "loss: \"cross_entropy\"\n"
    "nodes:\n"
    "  - {address: \"localhost\", chief: true}\n"
    "  - {address: \"10.0.0.2\", chief: false, ssh: {username: \"ubuntu\", port: 2222, key_file: "
    "\"/home/u/.ssh/id_ed25519\", known_hosts: \"/home/u/.ssh/known_hosts\", python_venv: "
    "\"source /opt/env.sh\", shared_envs: {\"OMP_NUM_THREADS\": \"1\", \"X_Y\": "
    "\"$(id); \\\"a b\\\" \\\\\"}}}\n"
    "devices:\n"
    "  - {rank: 0, role: worker, node: \"localhost\", type: \"cpu\", id: 0, module: "
    "\"device0.bc\", mem_bytes: 384}\n"
    "  - {rank: 1, role: worker, node: \"localhost\", type: \"cpu\", id: 1, module: "
    "\"device1.bc\", mem_bytes: 384}\n"
    "  - {rank: 2, role: server, node: \"localhost\", type: \"cpu\", id: -1, module: "
    "\"server0.bc\", mem_bytes: 128}\n"
    "tensors:\n"
    "  - {name: \"fc.weight\", role: param, dtype: \"float32\", dims: [2, 4], offset: 0, init: 0, "
    "bytes: 32}\n"
    "  - {name: \"fc.bias\", role: param, dtype: \"float32\", dims: [4], offset: 32, init: 32, "
    "bytes: 16}\n"
    "  - {name: \"x\", role: input, dtype: \"float32\", dims: [8, 2], offset: 48, init: -1, "
    "bytes: 64}\n"
    "  - {name: \"label\", role: label, dtype: \"int64\", dims: [8], offset: 112, init: -1, "
    "bytes: 64}\n"
    "  - {name: \"loss\", role: loss, dtype: \"float32\", dims: [], offset: 176, init: -1, "
    "bytes: 4}\n"
    "  - {name: \"fc.weight.grad\", role: grad, dtype: \"float32\", dims: [2, 4], offset: 192, "
    "init: -1, bytes: 32}\n"
    "  - {name: \"we\\\"ird\\\\1\", role: state, dtype: \"float32\", dims: [4], offset: 224, "
    "init: -1, bytes: 16}\n"
    "  - {name: \"yes\", role: output, dtype: \"float32\", dims: [8, 4], offset: 256, init: -1, "
    "bytes: 128}\n"
    "buckets:\n"
    "  - {offset: 192, bytes: 32}\n"
    "sync: \"stale\"\n"
    "staleness: 2\n"
    "shards:\n"
    "  - {var: \"fc.weight\", server: 0, row0: 0, rows: 2, row_bytes: 16, sparse: false, "
    "param_offset: 0, grad_offset: 32}\n"
    "  - {var: \"fc.bias\", server: 0, row0: 1, rows: 3, row_bytes: 4, sparse: true, "
    "param_offset: 64, grad_offset: 80}\n"
    "files:\n"
    "  - {path: \"device0.bc\", sha256: \"" SHA_DEV0 "\"}\n"
    "  - {path: \"device1.bc\", sha256: \"" SHA_DEV1 "\"}\n"
    "  - {path: \"server0.bc\", sha256: \"" SHA_SRV0 "\"}\n"
    "  - {path: \"weights.bin\", sha256: \"" SHA_WEIGHTS "\"}\n"
    "  - {path: \"model.onnx\", sha256: \"" SHA_ONNX "\"}\n";

static void write_sample_files(void) {
  put("device0.bc", "BC-device-0\n", 12);
  put("device1.bc", "BC-device-1\n", 12);
  put("server0.bc", "BC-server-0\n", 12);
  put("model.onnx", "onnx\n", 5);
  float w[12];
  for (int i = 0; i < 12; i++)
    w[i] = (float)i * 0.5f;
  put("weights.bin", w, sizeof w);
}

static void test_round_trip(void) {
  write_sample_files();
  ad_plan p = sample_plan();
  if (ad_plan_write(&p, dir) != AD_OK) {
    fprintf(stderr, "write: %s\n", ad_error_message());
    failures++;
    return;
  }
  CHECK_STR(slurp("plan.yaml"), golden);
  ad_plan *q = NULL;
  if (ad_plan_load(dir, &q) != AD_OK) {
    fprintf(stderr, "load: %s\n", ad_error_message());
    failures++;
    return;
  }
  CHECK(q->format == 1);
  CHECK_STR(q->autodist_version, AD_VERSION);
  CHECK_STR(q->model_sha256, MODEL_SHA);
  CHECK_STR(q->strategy, "allreduce");
  CHECK(q->training && q->global_batch == 16 && q->replicas == 2 && q->mem_bytes == 384);
  CHECK_STR(q->loss_kind, "cross_entropy");
  CHECK_STR(q->dir, dir);
  CHECK(q->n_nodes == 2);
  for (int i = 0; i < q->n_nodes && i < 2; i++) {
    const ad_plan_node *a = &q->nodes[i], *b = &nodes[i];
    CHECK_STR(a->address, b->address);
    CHECK(a->chief == b->chief && a->ssh == b->ssh && a->port == b->port);
    CHECK(a->n_envs == b->n_envs);
    const char *const got[] = {a->username, a->key_file, a->known_hosts, a->python_venv};
    const char *const sent[] = {b->username, b->key_file, b->known_hosts, b->python_venv};
    for (int k = 0; k < 4; k++)
      CHECK(sent[k] ? got[k] && !strcmp(got[k], sent[k]) : !got[k]);
    for (int k = 0; k < a->n_envs && k < b->n_envs; k++) {
      CHECK_STR(a->envs[k].key, b->envs[k].key);
      CHECK_STR(a->envs[k].value, b->envs[k].value);
    }
  }
  CHECK(q->n_devices == p.n_devices);
  for (int i = 0; i < q->n_devices && i < p.n_devices; i++) {
    CHECK(q->devices[i].rank == p.devices[i].rank && q->devices[i].id == p.devices[i].id);
    CHECK(q->devices[i].role == p.devices[i].role);
    CHECK(q->devices[i].mem_bytes == (i < 2 ? 384 : 128));
    CHECK_STR(q->devices[i].node, p.devices[i].node);
    CHECK_STR(q->devices[i].type, p.devices[i].type);
    CHECK_STR(q->devices[i].module, p.devices[i].module);
  }
  CHECK(q->n_tensors == p.n_tensors);
  for (int i = 0; i < q->n_tensors && i < p.n_tensors; i++) {
    const ad_plan_tensor *a = &q->tensors[i], *b = &p.tensors[i];
    CHECK_STR(a->name, b->name);
    CHECK_STR(a->dtype, b->dtype);
    CHECK(a->role == b->role && a->rank == b->rank && a->offset == b->offset &&
          a->init == b->init && a->bytes == b->bytes);
    for (int j = 0; j < a->rank; j++)
      CHECK(a->dims[j] == b->dims[j]);
  }
  CHECK(q->n_buckets == 1 && q->buckets[0].offset == 192 && q->buckets[0].bytes == 32);
  CHECK(q->n_servers == 1 && q->sync == AD_SYNC_STALE && q->staleness == 2);
  CHECK(q->n_shards == 2);
  for (int i = 0; i < q->n_shards && i < 2; i++) {
    const ad_plan_shard *a = &q->shards[i], *b = &shards[i];
    CHECK_STR(a->var, b->var);
    CHECK(a->server == b->server && a->row0 == b->row0 && a->rows == b->rows &&
          a->row_bytes == b->row_bytes && a->sparse == b->sparse &&
          a->param_offset == b->param_offset && a->grad_offset == b->grad_offset);
  }
  CHECK(q->n_files == N_FILES);
  static const char *const sha[] = {SHA_DEV0, SHA_DEV1, SHA_SRV0, SHA_WEIGHTS, SHA_ONNX};
  for (int i = 0; i < q->n_files && i < N_FILES; i++) {
    CHECK_STR(q->files[i].path, p.files[i].path);
    CHECK_STR(q->files[i].sha256, sha[i]);
  }
  CHECK(ad_plan_tensor_find(q, "fc.bias") == &q->tensors[1]);
  CHECK(ad_plan_tensor_find(q, "nope") == NULL);
  CHECK_STR(ad_role_name(AD_ROLE_GRAD), "grad");
  CHECK_STR(ad_device_role_name(AD_DEVICE_SERVER), "server");
  CHECK_STR(ad_sync_mode_name(AD_SYNC_BSP), "sync");
  CHECK_STR(ad_sync_mode_name(AD_SYNC_ASYNC), "async");

  /* A plan is relocatable: the same manifest loads from another folder. */
  char moved[300];
  snprintf(moved, sizeof moved, "%s.moved", dir);
  CHECK(rename(dir, moved) == 0);
  ad_plan *r = NULL;
  CHECK(ad_plan_load(moved, &r) == AD_OK);
  ad_plan_free(r);
  CHECK(rename(moved, dir) == 0);
  ad_plan_free(q);
}

/* Rewrites plan.yaml with one substring replaced, then expects `want`. */
static void expect_edit_error(const char *from, const char *to, const char *want) {
  char *text = slurp("plan.yaml");
  char *at = text ? strstr(golden, from) : NULL;
  if (!at) {
    fprintf(stderr, "test bug: '%s' not in the golden manifest\n", from);
    failures++;
    return;
  }
  char edited[1 << 15];
  snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - golden), golden, to, at + strlen(from));
  put("plan.yaml", edited, strlen(edited));
  ad_plan *q = NULL;
  if (ad_plan_load(dir, &q) != AD_ERR_INPUT) {
    fprintf(stderr, "loaded, want error '%s' (edit '%s' -> '%s')\n", want, from, to);
    failures++;
    ad_plan_free(q);
  } else {
    char full[1024];
    snprintf(full, sizeof full, want, dir);
    CHECK_STR(ad_error_message(), full);
  }
  put("plan.yaml", golden, strlen(golden));
}

static void test_refusals(void) {
  /* Tampered bitcode: the hash check names the file. */
  put("device1.bc", "BC-device-X\n", 12);
  ad_plan *q = NULL;
  CHECK(ad_plan_load(dir, &q) == AD_ERR_INPUT);
  char want[1024];
  snprintf(want, sizeof want,
           "%s/device1.bc: error: hash mismatch, the plan was modified after compile; "
           "recompile it",
           dir);
  CHECK_STR(ad_error_message(), want);
  put("device1.bc", "BC-device-1\n", 12);
  CHECK(ad_plan_load(dir, &q) == AD_OK);
  ad_plan_free(q);

  /* A missing file. */
  char p[512];
  snprintf(p, sizeof p, "%s/model.onnx", dir);
  unlink(p);
  CHECK(ad_plan_load(dir, &q) == AD_ERR_INPUT);
  snprintf(want, sizeof want, "%s/model.onnx: error: cannot open: No such file or directory", dir);
  CHECK_STR(ad_error_message(), want);
  put("model.onnx", "onnx\n", 5);

  /* Another autodist wrote it. */
  ad_plan old = sample_plan();
  old.autodist_version = "0.0.9";
  CHECK(ad_plan_write(&old, dir) == AD_OK);
  CHECK(ad_plan_load(dir, &q) == AD_ERR_INPUT);
  snprintf(want, sizeof want,
           "%s/plan.yaml:4:19: error: plan compiled by autodist 0.0.9, this is autodist " AD_VERSION
           "; recompile it",
           dir);
  CHECK_STR(ad_error_message(), want);
  put("plan.yaml", golden, strlen(golden));

  expect_edit_error("format: 1", "format: 2",
                    "%s/plan.yaml:3:9: error: plan format 2 is not supported (this autodist reads "
                    "format 1); recompile the plan");
  expect_edit_error("offset: 256, init: -1", "offset: 300, init: -1",
                    "%s/plan.yaml:27:5: error: tensor 'yes' (offset 300, 128 bytes) ends past "
                    "mem_bytes 384");
  expect_edit_error("mem_bytes: 384\nloss", "mem_bytes: 300\nloss",
                    "%s/plan.yaml:16:101: error: a worker's 'mem_bytes' must be the plan's "
                    "mem_bytes 300, got 384");
  expect_edit_error("role: state", "role: stat",
                    "%s/plan.yaml:26:32: error: unknown tensor role 'stat'");
  expect_edit_error("dtype: \"int64\"", "dtype: \"int65\"",
                    "%s/plan.yaml:23:41: error: unknown dtype 'int65'");
  expect_edit_error("dims: [8], offset: 112, init: -1, bytes: 64",
                    "dims: [8], offset: 112, init: -1, bytes: 60",
                    "%s/plan.yaml:23:91: error: tensor 'label' has 60 bytes, too few for its dims "
                    "and dtype");
  expect_edit_error("offset: 32, init: 32, bytes: 16", "offset: 32, init: -1, bytes: 16",
                    "%s/plan.yaml:21:83: error: 'init' must be between 0 and 1125899906842624, "
                    "got -1");
  expect_edit_error("offset: 32, init: 32, bytes: 16", "offset: 32, init: 40, bytes: 16",
                    "%s/plan.yaml: error: tensor 'fc.bias' (init 40, 16 bytes) ends past the end "
                    "of weights.bin (48 bytes)");
  expect_edit_error("module: \"device1.bc\"", "module: \"device2.bc\"",
                    "%s/plan.yaml:17:76: error: module 'device2.bc' is not listed under 'files'");
  expect_edit_error("rank: 1,", "rank: 0,",
                    "%s/plan.yaml:17:12: error: 'rank' must be between 1 and 1, got 0");
  expect_edit_error("path: \"model.onnx\"", "path: \"../model.onnx\"",
                    "%s/plan.yaml:40:12: error: '../model.onnx' is not a path inside the plan "
                    "folder");
  expect_edit_error("path: \"model.onnx\"", "path: \"/etc/passwd\"",
                    "%s/plan.yaml:40:12: error: '/etc/passwd' is not a path inside the plan "
                    "folder");
  expect_edit_error("replicas: 2", "replicas: 4",
                    "%s/plan.yaml:9:11: error: 'replicas' is 4 but the plan lists 3 devices");
  expect_edit_error("{offset: 192, bytes: 32}", "{offset: 380, bytes: 32}",
                    "%s/plan.yaml:29:5: error: bucket (offset 380, 32 bytes) ends past mem_bytes "
                    "384");
  expect_edit_error("training: true", "training: true\nepochs: 3",
                    "%s/plan.yaml:8:1: error: unknown key 'epochs' (expected one of: format, "
                    "autodist_version, model_sha256, strategy, training, global_batch, replicas, "
                    "mem_bytes, loss, nodes, devices, tensors, buckets, sync, staleness, shards, "
                    "files)");
  expect_edit_error("model_sha256: \"0011", "model_sha256: \"0X11",
                    "%s/plan.yaml:5:15: error: 'model_sha256' must be 64 lowercase hex digits");
  expect_edit_error("name: \"x\", role: input", "name: \"loss\", role: loss",
                    "%s/plan.yaml:24:5: error: tensor 'loss' is listed twice as loss");
  expect_edit_error("global_batch: 16\n", "",
                    "%s/plan.yaml:3:1: error: missing required key 'global_batch'");

  /* Devices: workers are ranks 0..replicas-1, every later rank a server. */
  expect_edit_error("rank: 2, role: server", "rank: 2, role: boss",
                    "%s/plan.yaml:18:21: error: unknown device role 'boss' (expected worker or "
                    "server)");
  expect_edit_error("rank: 1, role: worker", "rank: 1, role: server",
                    "%s/plan.yaml:17:21: error: device rank 1 must be a worker: ranks 0..1 are "
                    "the 2 replicas");
  expect_edit_error("replicas: 2", "replicas: 3",
                    "%s/plan.yaml:18:21: error: device rank 2 must be a worker: ranks 0..2 are "
                    "the 3 replicas");
  expect_edit_error("replicas: 2", "replicas: 1",
                    "%s/plan.yaml:17:21: error: device rank 1 must be a server: ranks from 1 on "
                    "are parameter servers (replicas: 1)");
  expect_edit_error("rank: 0, role: worker, ", "rank: 0, ",
                    "%s/plan.yaml:16:5: error: missing required key 'role'");
  expect_edit_error("id: -1", "id: -2",
                    "%s/plan.yaml:18:65: error: 'id' must be between -1 and 1000000, got -2");
  expect_edit_error("training: true", "training: false",
                    "%s/plan.yaml:18:21: error: an inference plan has no parameter servers");

  /* Nodes: unique, exactly one chief, ssh on every other node, and every
   * device on a listed node. */
  expect_edit_error("node: \"localhost\", type: \"cpu\", id: 1",
                    "node: \"10.0.0.3\", type: \"cpu\", id: 1",
                    "%s/plan.yaml:17:35: error: node '10.0.0.3' is not listed under 'nodes'");
  expect_edit_error("chief: false", "chief: true",
                    "%s/plan.yaml:14:34: error: two chief nodes: 'localhost' and '10.0.0.2'");
  expect_edit_error("\"localhost\", chief: true", "\"localhost\", chief: false",
                    "%s/plan.yaml:13:3: error: no node has 'chief: true'; exactly one node is the "
                    "chief");
  expect_edit_error("chief: true}\n  - {address: \"10.0.0.2\", chief: false",
                    "chief: false}\n  - {address: \"10.0.0.2\", chief: true",
                    "%s/plan.yaml:13:5: error: node 'localhost' is not the chief and has no "
                    "'ssh'; `run` reaches the other nodes over SSH");
  expect_edit_error("{address: \"10.0.0.2\"", "{address: \"localhost\"",
                    "%s/plan.yaml:14:5: error: node 'localhost' is listed twice");
  expect_edit_error("{address: \"10.0.0.2\"", "{address: \"10.0.0.2;id\"",
                    "%s/plan.yaml:14:15: error: 'address' must be a host name or IP address, got "
                    "'10.0.0.2;id'");
  expect_edit_error("port: 2222", "port: 0",
                    "%s/plan.yaml:14:73: error: 'port' must be between 1 and 65535, got 0");
  expect_edit_error(
      "{username: \"ubuntu\"", "{user: \"ubuntu\"",
      "%s/plan.yaml:14:47: error: unknown key 'user' (expected one of: username, port, "
      "key_file, known_hosts, python_venv, shared_envs)");
  expect_edit_error("\"X_Y\":", "\"X-Y\":",
                    "%s/plan.yaml:14:230: error: 'X-Y' is not a valid environment variable name");
  expect_edit_error("python_venv: \"source /opt/env.sh\"", "python_venv: []",
                    "%s/plan.yaml:14:170: error: 'python_venv' must be a string, got a list");

  /* Synchronisation. */
  expect_edit_error("sync: \"stale\"", "sync: \"bulk\"",
                    "%s/plan.yaml:30:7: error: unknown sync mode 'bulk' (expected sync, stale or "
                    "async)");
  expect_edit_error("sync: \"stale\"", "sync: \"async\"",
                    "%s/plan.yaml:31:12: error: 'staleness' must be 0 unless sync is \"stale\", "
                    "got 2");

  /* Shards: of a float32 param, inside its rows and inside the server's arena. */
  expect_edit_error("var: \"fc.weight\"", "var: \"x\"",
                    "%s/plan.yaml:33:11: error: shard variable 'x' is not a param tensor");
  expect_edit_error("server: 0, row0: 0", "server: 1, row0: 0",
                    "%s/plan.yaml:33:32: error: 'server' must be between 0 and 0, got 1");
  expect_edit_error("row0: 1, rows: 3", "row0: 2, rows: 3",
                    "%s/plan.yaml:34:5: error: shard of 'fc.bias' (rows 2..4) ends past its 4 "
                    "rows");
  expect_edit_error("row_bytes: 16", "row_bytes: 20",
                    "%s/plan.yaml:33:64: error: 'row_bytes' 20 does not fit: 'fc.weight' has 2 "
                    "rows of float32 in 32 bytes");
  expect_edit_error("param_offset: 64", "param_offset: 120",
                    "%s/plan.yaml:34:93: error: shard of 'fc.bias' (param_offset 120, 12 bytes) "
                    "ends past server 0's mem_bytes 128");
  expect_edit_error("param_offset: 64", "param_offset: 40",
                    "%s/plan.yaml:34:93: error: shard of 'fc.bias': its param range overlaps the "
                    "grad range of the shard of 'fc.weight' on server 0");
  expect_edit_error("grad_offset: 80", "grad_offset: 70",
                    "%s/plan.yaml:34:5: error: shard of 'fc.bias': its param and grad ranges "
                    "overlap");
  expect_edit_error("var: \"fc.bias\", server: 0, row0: 1, rows: 3, row_bytes: 4",
                    "var: \"fc.weight\", server: 0, row0: 1, rows: 1, row_bytes: 4",
                    "%s/plan.yaml:34:5: error: shard of 'fc.weight' (rows 1..1) overlaps an "
                    "earlier one");
  expect_edit_error("sparse: false", "sparse: 1",
                    "%s/plan.yaml:33:76: error: 'sparse' must be true or false, got an integer");

  /* The same name under two roles (a model output named "loss" is also the loss). */
  ad_plan same = sample_plan();
  ad_plan_tensor ts[sizeof tensors / sizeof *tensors];
  memcpy(ts, tensors, sizeof ts);
  ts[7].name = "loss";
  same.tensors = ts;
  CHECK(ad_plan_write(&same, dir) == AD_OK);
  q = NULL;
  CHECK(ad_plan_load(dir, &q) == AD_OK);
  if (q) {
    CHECK(ad_plan_tensor_find(q, "loss") == &q->tensors[4]);
    ad_plan_free(q);
  }

  /* An inference plan: no loss kind is written as "" and read back as "". */
  ad_plan inf = sample_plan();
  inf.training = false;
  inf.loss_kind = NULL;
  inf.n_devices = 2; /* no server, no shards */
  inf.n_servers = 0;
  inf.n_shards = 0;
  inf.sync = AD_SYNC_BSP;
  inf.staleness = 0;
  CHECK(ad_plan_write(&inf, dir) == AD_OK);
  CHECK(strstr(slurp("plan.yaml"), "\nbuckets:\n  - {offset: 192, bytes: 32}\nsync: \"sync\"\n"
                                   "staleness: 0\nshards: []\nfiles:\n") != NULL);
  q = NULL;
  CHECK(ad_plan_load(dir, &q) == AD_OK);
  if (q) {
    CHECK(!q->training);
    CHECK(q->n_devices == 2 && q->n_servers == 0 && q->n_shards == 0 && q->sync == AD_SYNC_BSP);
    CHECK_STR(q->loss_kind, "");
    ad_plan_free(q);
  }
  put("plan.yaml", golden, strlen(golden));

  /* No plan at all. */
  CHECK(ad_plan_load("/nonexistent-plan", &q) == AD_ERR_INPUT);
  CHECK_STR(ad_error_message(),
            "/nonexistent-plan/plan.yaml: error: cannot open: No such file or directory");

  /* The writer refuses a file path outside the plan and a missing file. */
  ad_plan bad = sample_plan();
  ad_plan_file outside[] = {{"../x.bc", ""}};
  bad.files = outside;
  bad.n_files = 1;
  CHECK(ad_plan_write(&bad, dir) == AD_ERR_INPUT);
  snprintf(want, sizeof want,
           "%s: error: plan file '../x.bc' must be a path inside the plan folder", dir);
  CHECK_STR(ad_error_message(), want);
  ad_plan_file missing[] = {{"device9.bc", ""}};
  bad.files = missing;
  CHECK(ad_plan_write(&bad, dir) == AD_ERR_INPUT);
  snprintf(want, sizeof want, "%s/device9.bc: error: cannot open: No such file or directory", dir);
  CHECK_STR(ad_error_message(), want);
  CHECK_STR(slurp("plan.yaml"), golden); /* a failed write leaves the old manifest */
}

static void cleanup(void) {
  static const char *const names[] = {"plan.yaml",  "device0.bc",  "device1.bc",
                                      "server0.bc", "weights.bin", "model.onnx"};
  char p[512];
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    unlink(p);
  }
  rmdir(dir);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ad_test_plan_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip();
  test_refusals();
  cleanup();
  if (failures)
    fprintf(stderr, "test_plan: %d failure(s)\n", failures);
  else
    printf("test_plan: ok\n");
  return failures != 0;
}
