/*
 * runtime/plan.h: the plan directory, the one contract between `autodist
 * compile` (writer) and `autodist run` (reader). See docs/plan-format.md.
 *
 *   PLAN/plan.yaml        this manifest (YAML, written and read with libyaml)
 *   PLAN/<module>.bc      LLVM bitcode of a device's step (or forward) function;
 *                         devices running the same program share one file (step.bc)
 *   PLAN/weights.bin      initial values of parameters, raw little-endian, at
 *                         the offsets listed under tensors (file offset = `init`)
 *   PLAN/model.onnx       the input model with trainable initializers removed,
 *                         for --save (the runtime appends trained ones)
 *
 * Every file is listed with its SHA-256; ad_plan_load verifies them before any
 * process starts. The plan names files relative to its folder (relocatable).
 */
#ifndef AD_PLAN_H
#define AD_PLAN_H

#include "../common/ad.h"

#include <stdbool.h>

typedef enum ad_tensor_role {
  AD_ROLE_PARAM,   /* trained initializer: initial value in weights.bin */
  AD_ROLE_FROZEN,  /* initializer that is not trained: in weights.bin */
  AD_ROLE_STATE,   /* optimizer state: zero at start */
  AD_ROLE_INPUT,   /* data input: the replica's slice of the global batch */
  AD_ROLE_LABEL,   /* label input the loss adds */
  AD_ROLE_OUTPUT,  /* graph output (inference) */
  AD_ROLE_LOSS,    /* scalar float32: this replica's share of the mean loss */
  AD_ROLE_GRAD,    /* gradient of a parameter */
  AD_ROLE_COUNT
} ad_tensor_role;

const char *ad_role_name(ad_tensor_role r);

typedef struct ad_plan_tensor {
  char *name;
  ad_tensor_role role;
  char dtype[16];       /* "float32", "int64" */
  int rank;
  int64_t dims[8];      /* per replica (inputs: the local batch slice) */
  int64_t offset;       /* byte offset in the device arena */
  int64_t init;         /* PARAM/FROZEN: byte offset in weights.bin; else -1 */
  int64_t bytes;
} ad_plan_tensor;

typedef enum ad_device_role {
  AD_DEVICE_WORKER,     /* a replica: runs ad_step on its slice of the batch */
  AD_DEVICE_SERVER,     /* a parameter server: holds shards, applies their updates */
  AD_DEVICE_ROLE_COUNT
} ad_device_role;

const char *ad_device_role_name(ad_device_role r);

typedef struct ad_plan_device {
  int rank;             /* workers are ranks 0..replicas-1, server s is rank replicas+s */
  ad_device_role role;
  char *node;           /* address from the resource spec */
  char *type;           /* "cpu" */
  int id;               /* CPU core (or GPU index); -1: not pinned (servers) */
  char *module;         /* file name of its bitcode */
  int64_t mem_bytes;    /* its arena (workers: the plan's mem_bytes) */
} ad_plan_device;

/* How servers synchronise the workers' pushes (docs/strategies.md). */
typedef enum ad_sync_mode {
  AD_SYNC_BSP,          /* sum every worker's push of step k, apply once, then reply */
  AD_SYNC_STALE,        /* apply each push; reply when the slowest is at most K behind */
  AD_SYNC_ASYNC,        /* apply each push and reply at once */
  AD_SYNC_MODE_COUNT
} ad_sync_mode;

const char *ad_sync_mode_name(ad_sync_mode m);

/* One shard of a server-held parameter: rows [row0, row0 + rows) along axis 0. */
typedef struct ad_plan_shard {
  char *var;            /* the PARAM tensor it belongs to */
  int server;           /* server index s (MPI rank replicas + s) */
  int64_t row0, rows, row_bytes;
  bool sparse;          /* pushed and pulled by row index (parallax), not whole */
  int64_t param_offset; /* in the server's arena */
  int64_t grad_offset;  /* in the server's arena: its gradient accumulator */
} ad_plan_shard;

/* A node of the job and how to reach it (the resource spec's node and its
 * ssh_config group), so that `run` needs nothing but the plan. */
typedef struct ad_plan_env {
  char *key, *value;
} ad_plan_env;

typedef struct ad_plan_node {
  char *address;        /* as in the resource spec; devices name it */
  bool chief;           /* the node `run` is started on (rank 0 lives here) */
  bool ssh;             /* has an ssh group (every non-chief node) */
  char *username;       /* NULL: the current user */
  int port;             /* 22 */
  char *key_file;       /* NULL: the ssh-agent */
  char *known_hosts;    /* NULL: ~/.ssh/known_hosts */
  char *python_venv;    /* shell prefix run before the worker; NULL: none */
  int n_envs;
  ad_plan_env *envs;    /* shared_envs, exported for the worker */
} ad_plan_node;

typedef struct ad_plan_bucket {
  int64_t offset, bytes; /* contiguous gradient range in the arena */
} ad_plan_bucket;

typedef struct ad_plan_file {
  char *path;
  char sha256[65];
} ad_plan_file;

typedef struct ad_plan {
  int format;           /* 1 */
  char *autodist_version;
  char *model_sha256;   /* of the ONNX file given to compile */
  char *strategy;       /* "allreduce", "ps", "ps-lb", "partitioned-ps", "parallax" */
  bool training;        /* false: inference plan (ad_forward) */
  int64_t global_batch; /* B: samples per step over all replicas */
  int replicas;
  int64_t mem_bytes;    /* arena size per device */
  char *loss_kind;      /* train.yml loss, "" for inference */
  int n_nodes;          /* in the spec's order */
  ad_plan_node *nodes;
  int n_devices;
  ad_plan_device *devices;
  int n_tensors;
  ad_plan_tensor *tensors;
  int n_buckets;
  ad_plan_bucket *buckets;
  int n_servers;        /* devices with role server (ranks replicas..) */
  ad_sync_mode sync;
  int staleness;        /* AD_SYNC_STALE: K */
  int n_shards;         /* any order: generated code names a shard by its index */
  ad_plan_shard *shards;
  int n_files;
  ad_plan_file *files;
  char *dir;            /* folder the plan was loaded from (not written) */
} ad_plan;

/* Writes PLAN_DIR/plan.yaml (atomically). The files listed in plan->files must
 * already exist in dir; their hashes are computed here. */
ad_status ad_plan_write(const ad_plan *plan, const char *dir);
/* Reads and validates dir/plan.yaml and verifies every file hash. Errors name
 * the file (and line:column in plan.yaml). */
ad_status ad_plan_load(const char *dir, ad_plan **out);
/* Reads and validates a manifest from memory without touching any file (no
 * hash checks; fuzzing, tests); `path` is used in messages. */
ad_status ad_plan_parse_buffer(const char *path, const char *data, size_t len, ad_plan **out);
void ad_plan_free(ad_plan *plan);
const ad_plan_tensor *ad_plan_tensor_find(const ad_plan *plan, const char *name);

#endif
