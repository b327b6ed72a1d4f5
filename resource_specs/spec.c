/*
 * resource_specs/spec.c: resource_spec.yml -> ad_spec (docs/resource-spec.md).
 *
 * The schema is AutoDist's, so an AutoDist user's file works unchanged; what
 * AutoDist left to fail later (a typo in a key, two chiefs, a missing ssh group)
 * is an error here, at its line:column. Parsing goes through yaml_util's tree;
 * the spec itself is built with malloc'd fields so that ad_spec_free can free a
 * half-built spec on any error path and a hand-built one alike.
 */
#include "spec.h"

#include "yaml_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const top_keys[] = {"nodes", "ssh", NULL};
static const char *const node_keys[] = {"address",           "cpus", "gpus", "chief", "ssh_config",
                                        "network_bandwidth", NULL};
static const char *const ssh_keys[] = {"username",    "port",        "key_file", "python_venv",
                                       "shared_envs", "known_hosts", NULL};

/* cpus / gpus: a non-empty list of distinct non-negative ids. */
static ad_status parse_ids(const ad_yaml_doc *d, const ad_yaml_node *v, const char *key,
                           const char *noun, int **out, int *count) {
  int64_t *ids;
  int n;
  AD_TRY(ad_yaml_int_list(d, v, key, &ids, &n));
  ad_status st = AD_OK;
  if (n == 0)
    st = ad_yaml_error(d, v, "'%s' is empty; list at least one %s id or leave the key out", key,
                       noun);
  for (int i = 0; i < n && st == AD_OK; i++) {
    if (ids[i] < 0 || ids[i] > 1000000)
      st = ad_yaml_error(d, v->items[i], "%s id %lld in '%s' must be between 0 and 1000000", noun,
                         (long long)ids[i], key);
    for (int j = 0; j < i && st == AD_OK; j++)
      if (ids[j] == ids[i])
        st = ad_yaml_error(d, v->items[i], "%s id %lld is listed twice in '%s'", noun,
                           (long long)ids[i], key);
  }
  if (st == AD_OK) {
    *out = ad_xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++)
      (*out)[i] = (int)ids[i];
    *count = n;
  }
  free(ids);
  return st;
}

static ad_status parse_node(const ad_yaml_doc *d, const ad_yaml_node *m, ad_spec_node *nd) {
  nd->network_bandwidth = 1;
  nd->line = m->line;
  if (m->kind != AD_YAML_MAP)
    return ad_yaml_error(d, m, "each entry of 'nodes' must be a mapping, got %s",
                         ad_yaml_describe(m));
  AD_TRY(ad_yaml_check_keys(d, m, node_keys));
  const ad_yaml_node *v;
  const char *s;
  AD_TRY(ad_yaml_require(d, m, "address", &v));
  AD_TRY(ad_yaml_string(d, v, "address", &s));
  if (!*s || strpbrk(s, " \t\n'\"`$;&|<>\\"))
    return ad_yaml_error(d, v, "'address' must be a host name or IP address, got '%s'", s);
  nd->address = ad_xstrdup(s);
  if ((v = ad_yaml_get(m, "cpus")))
    AD_TRY(parse_ids(d, v, "cpus", "cpu", &nd->cpus, &nd->n_cpus));
  if ((v = ad_yaml_get(m, "gpus")))
    AD_TRY(parse_ids(d, v, "gpus", "gpu", &nd->gpus, &nd->n_gpus));
  if ((v = ad_yaml_get(m, "chief")))
    AD_TRY(ad_yaml_bool(d, v, "chief", &nd->chief));
  if ((v = ad_yaml_get(m, "ssh_config"))) {
    AD_TRY(ad_yaml_string(d, v, "ssh_config", &s));
    nd->ssh_config = ad_xstrdup(s);
  }
  if ((v = ad_yaml_get(m, "network_bandwidth"))) {
    AD_TRY(ad_yaml_number(d, v, "network_bandwidth", &nd->network_bandwidth));
    if (!(nd->network_bandwidth > 0) || nd->network_bandwidth > 1e9)
      return ad_yaml_error(d, v, "'network_bandwidth' must be a positive number of Gbit/s, got %s",
                           v->str);
  }
  return AD_OK;
}

static bool env_name_ok(const char *s) {
  if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
    return false;
  for (s++; *s; s++)
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
          *s == '_'))
      return false;
  return true;
}

static ad_status parse_ssh_group(const ad_yaml_doc *d, const ad_yaml_node *k, const ad_yaml_node *m,
                                 ad_ssh_group *g) {
  g->name = ad_xstrdup(k->str);
  g->port = 22;
  if (m->kind != AD_YAML_MAP)
    return ad_yaml_error(d, m, "ssh group '%s' must be a mapping, got %s", k->str,
                         ad_yaml_describe(m));
  AD_TRY(ad_yaml_check_keys(d, m, ssh_keys));
  const ad_yaml_node *v;
  const char *s;
  if ((v = ad_yaml_get(m, "username"))) {
    AD_TRY(ad_yaml_string(d, v, "username", &s));
    g->username = ad_xstrdup(s);
  }
  if ((v = ad_yaml_get(m, "port"))) {
    int64_t port;
    AD_TRY(ad_yaml_int(d, v, "port", &port));
    if (port < 1 || port > 65535)
      return ad_yaml_error(d, v, "'port' must be between 1 and 65535, got %lld", (long long)port);
    g->port = (int)port;
  }
  if ((v = ad_yaml_get(m, "key_file"))) {
    AD_TRY(ad_yaml_string(d, v, "key_file", &s));
    g->key_file = ad_expand_home(s);
  }
  if ((v = ad_yaml_get(m, "known_hosts"))) {
    AD_TRY(ad_yaml_string(d, v, "known_hosts", &s));
    g->known_hosts = ad_expand_home(s);
  }
  if ((v = ad_yaml_get(m, "python_venv"))) {
    AD_TRY(ad_yaml_string(d, v, "python_venv", &s));
    g->python_venv = ad_xstrdup(s);
  }
  if ((v = ad_yaml_get(m, "shared_envs"))) {
    AD_TRY(ad_yaml_expect_map(d, v, "shared_envs"));
    g->shared_envs = ad_xcalloc((size_t)v->n, sizeof(ad_spec_kv));
    for (int i = 0; i < v->n; i++) {
      const ad_yaml_node *ek = v->keys[i], *ev = v->items[i];
      if (!env_name_ok(ek->str))
        return ad_yaml_error(d, ek, "'%s' is not a valid environment variable name", ek->str);
      if (ev->kind != AD_YAML_SCALAR || ad_yaml_is_null(ev))
        return ad_yaml_error(d, ev, "the value of '%s' in 'shared_envs' must be a string, got %s",
                             ek->str, ad_yaml_describe(ev));
      g->shared_envs[i].key = ad_xstrdup(ek->str);
      g->shared_envs[i].value = ad_xstrdup(ev->str);
      g->n_envs = i + 1;
    }
  }
  return AD_OK;
}

/* Cross-node rules: one chief, ssh groups that exist, a way to reach every
 * node that is not the chief. */
static ad_status check_nodes(const ad_yaml_doc *d, const ad_yaml_node *nodes, ad_spec *s) {
  s->chief = -1;
  for (int i = 0; i < s->n_nodes; i++) {
    if (!s->nodes[i].chief)
      continue;
    if (s->chief >= 0)
      return ad_yaml_error(d, ad_yaml_get_key(nodes->items[i], "chief"),
                           "two chief nodes: the node at line %d is already the chief",
                           s->nodes[s->chief].line);
    s->chief = i;
  }
  if (s->n_nodes == 1)
    s->chief = 0; /* a single node is the chief, flagged or not */
  if (s->chief < 0)
    return ad_yaml_error(d, nodes,
                         "%d nodes and none has 'chief: true'; mark exactly one node as the chief",
                         s->n_nodes);
  for (int i = 0; i < s->n_nodes; i++) {
    const ad_spec_node *nd = &s->nodes[i];
    const ad_yaml_node *m = nodes->items[i];
    if (nd->ssh_config) {
      const char *names[s->n_ssh + 1];
      bool found = false;
      for (int j = 0; j < s->n_ssh; j++) {
        names[j] = s->ssh[j].name;
        found |= !strcmp(names[j], nd->ssh_config);
      }
      names[s->n_ssh] = NULL;
      if (found)
        continue;
      const ad_yaml_node *v = ad_yaml_get(m, "ssh_config");
      if (s->n_ssh == 0)
        return ad_yaml_error(d, v,
                             "ssh_config '%s' names no group under 'ssh' (the file has no "
                             "'ssh' section)",
                             nd->ssh_config);
      const char *near = ad_yaml_suggest(nd->ssh_config, names);
      if (near)
        return ad_yaml_error(d, v,
                             "ssh_config '%s' names no group under 'ssh' (did you mean '%s'?)",
                             nd->ssh_config, near);
      return ad_yaml_error(d, v, "ssh_config '%s' names no group under 'ssh'", nd->ssh_config);
    }
    if (i != s->chief && s->n_nodes > 1)
      return ad_yaml_error(d, m,
                           "node '%s' is not the chief and has no 'ssh_config'; the chief "
                           "reaches the other nodes over SSH",
                           nd->address);
  }
  return AD_OK;
}

static ad_status parse_spec(const ad_yaml_doc *d, ad_spec *s) {
  const ad_yaml_node *root = d->root;
  if (!root)
    return ad_yaml_error(d, NULL, "the file is empty; a resource spec needs a 'nodes' list");
  if (root->kind != AD_YAML_MAP)
    return ad_yaml_error(d, root, "the top level must be a mapping with 'nodes', got %s",
                         ad_yaml_describe(root));
  AD_TRY(ad_yaml_check_keys(d, root, top_keys));
  const ad_yaml_node *nodes, *ssh;
  AD_TRY(ad_yaml_require(d, root, "nodes", &nodes));
  if (nodes->kind != AD_YAML_SEQ)
    return ad_yaml_error(d, nodes, "'nodes' must be a list of nodes, got %s",
                         ad_yaml_describe(nodes));
  if (nodes->n == 0)
    return ad_yaml_error(d, nodes, "'nodes' is empty; list at least one node");
  /* ssh first: nodes refer to its groups. */
  if ((ssh = ad_yaml_get(root, "ssh"))) {
    AD_TRY(ad_yaml_expect_map(d, ssh, "ssh"));
    s->ssh = ad_xcalloc((size_t)ssh->n, sizeof(ad_ssh_group));
    for (int i = 0; i < ssh->n; i++) {
      s->n_ssh = i + 1;
      AD_TRY(parse_ssh_group(d, ssh->keys[i], ssh->items[i], &s->ssh[i]));
    }
  }
  s->nodes = ad_xcalloc((size_t)nodes->n, sizeof(ad_spec_node));
  for (int i = 0; i < nodes->n; i++) {
    s->n_nodes = i + 1;
    AD_TRY(parse_node(d, nodes->items[i], &s->nodes[i]));
  }
  return check_nodes(d, nodes, s);
}

ad_status ad_spec_parse_buffer(const char *path, const char *data, size_t len, ad_spec **out) {
  ad_yaml_doc *d;
  AD_TRY(ad_yaml_load(path, data, len, &d));
  ad_spec *s = ad_xcalloc(1, sizeof *s);
  s->path = ad_xstrdup(path);
  ad_status st = parse_spec(d, s);
  ad_yaml_free(d);
  if (st != AD_OK) {
    ad_spec_free(s);
    return st;
  }
  *out = s;
  return AD_OK;
}

ad_status ad_spec_parse(const char *path, ad_spec **out) {
  char *data;
  size_t len;
  AD_TRY(ad_file_read(path, &data, &len));
  ad_status st = ad_spec_parse_buffer(path, data, len, out);
  free(data);
  return st;
}

ad_spec *ad_spec_default(void) {
  ad_spec *s = ad_xcalloc(1, sizeof *s);
  s->path = ad_xstrdup("(default)");
  s->n_nodes = 1;
  s->nodes = ad_xcalloc(1, sizeof(ad_spec_node));
  s->nodes[0].address = ad_xstrdup("localhost");
  s->nodes[0].n_cpus = 1;
  s->nodes[0].cpus = ad_xcalloc(1, sizeof(int));
  s->nodes[0].chief = true;
  s->nodes[0].network_bandwidth = 1;
  s->chief = 0;
  return s;
}

void ad_spec_free(ad_spec *s) {
  if (!s)
    return;
  for (int i = 0; i < s->n_nodes; i++) {
    free(s->nodes[i].address);
    free(s->nodes[i].cpus);
    free(s->nodes[i].gpus);
    free(s->nodes[i].ssh_config);
  }
  free(s->nodes);
  for (int i = 0; i < s->n_ssh; i++) {
    ad_ssh_group *g = &s->ssh[i];
    free(g->name);
    free(g->username);
    free(g->key_file);
    free(g->python_venv);
    free(g->known_hosts);
    for (int j = 0; j < g->n_envs; j++) {
      free(g->shared_envs[j].key);
      free(g->shared_envs[j].value);
    }
    free(g->shared_envs);
  }
  free(s->ssh);
  free(s->path);
  free(s);
}

int ad_spec_worker_count(const ad_spec *s) {
  int n = 0;
  for (int i = 0; i < s->n_nodes; i++) {
    const ad_spec_node *nd = &s->nodes[i];
    n += nd->n_gpus > 0 ? nd->n_gpus : nd->n_cpus > 0 ? nd->n_cpus : 1;
  }
  return n;
}
