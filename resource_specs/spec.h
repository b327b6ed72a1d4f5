/*
 * resource_specs/spec.h: resource_spec.yml, AutoDist's schema unchanged
 * (docs/resource-spec.md). Parsed with libyaml and validated strictly: unknown
 * keys, wrong types, duplicate keys, two chiefs, a non-chief node without an
 * ssh_config or an ssh_config naming a missing group are errors that carry
 * file:line:column, with "did you mean" for near-miss keys.
 */
#ifndef AD_SPEC_H
#define AD_SPEC_H

#include "../common/ad.h"

#include <stdbool.h>

typedef struct ad_spec_kv {
  char *key, *value;
} ad_spec_kv;

typedef struct ad_ssh_group {
  char *name;
  char *username;     /* NULL: the current user */
  int port;           /* 22 */
  char *key_file;     /* NULL: ssh-agent */
  char *python_venv;  /* shell prefix run before the worker; NULL when absent */
  char *known_hosts;  /* NULL: ~/.ssh/known_hosts */
  int n_envs;
  ad_spec_kv *shared_envs;
} ad_ssh_group;

typedef struct ad_spec_node {
  char *address;
  int n_cpus;
  int *cpus;          /* NULL when absent */
  int n_gpus;
  int *gpus;          /* NULL when absent */
  bool chief;
  char *ssh_config;   /* NULL when absent */
  double network_bandwidth; /* Gbit/s, default 1 */
  int line;           /* where the node starts, for messages */
} ad_spec_node;

typedef struct ad_spec {
  char *path;         /* for messages; "(default)" when synthesized */
  int n_nodes;
  ad_spec_node *nodes;
  int n_ssh;
  ad_ssh_group *ssh;
  int chief;          /* index of the chief node */
} ad_spec;

/* Parses and validates a spec file. */
ad_status ad_spec_parse(const char *path, ad_spec **out);
/* Parses from memory (fuzzing, tests); `path` is used in messages. */
ad_status ad_spec_parse_buffer(const char *path, const char *data, size_t len, ad_spec **out);
/* The default when no spec is given: one node, localhost, one CPU worker (core 0). */
ad_spec *ad_spec_default(void);
void ad_spec_free(ad_spec *s);
/* Number of workers: per node, the GPUs when listed, else the CPUs (at least 1). */
int ad_spec_worker_count(const ad_spec *s);

#endif
