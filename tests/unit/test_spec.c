/*
 * tests/unit/test_spec.c: resource_spec.yml parsing and validation.
 *
 * Bad specs live in tests/data/specs/bad_*.yml; each must fail with exactly the
 * message below (whole string, position included). Positions of YAML syntax
 * errors were checked against PyYAML (the parser AutoDist used), which reports
 * the same problem and context marks. Good specs are checked field by field
 * against what PyYAML loads from the same file.
 */
#include "resource_specs/spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void expect_file_error(const char *file, const char *want) {
  char path[256];
  snprintf(path, sizeof path, "data/specs/%s", file);
  ad_spec *s = NULL;
  ad_status st = ad_spec_parse(path, &s);
  if (st != AD_ERR_INPUT) {
    fprintf(stderr, "%s: parsed, want error '%s'\n", path, want);
    failures++;
    ad_spec_free(s);
    return;
  }
  char full[1024];
  snprintf(full, sizeof full, "%s:%s", path, want);
  CHECK_STR(ad_error_message(), full);
}

static void expect_buffer_error(const char *text, const char *want) {
  ad_spec *s = NULL;
  ad_status st = ad_spec_parse_buffer("spec.yml", text, strlen(text), &s);
  if (st != AD_ERR_INPUT) {
    fprintf(stderr, "parsed, want error '%s' for:\n%s\n", want, text);
    failures++;
    ad_spec_free(s);
    return;
  }
  CHECK_STR(ad_error_message(), want);
}

static void test_bad_files(void) {
  static const char *const cases[][2] = {
      {"bad_unknown_key.yml", "3:5: error: unknown key 'gpu' (did you mean 'gpus'?)"},
      {"bad_cpus_string.yml", "3:11: error: 'cpus' must be a list of integers, got a string"},
      {"bad_cpus_item.yml", "3:15: error: 'cpus' must be a list of integers, got a string in it"},
      {"bad_two_chiefs.yml",
       "5:5: error: two chief nodes: the node at line 2 is already the chief"},
      {"bad_no_chief.yml",
       "2:3: error: 2 nodes and none has 'chief: true'; mark exactly one node as the chief"},
      {"bad_missing_ssh_config.yml",
       "4:5: error: node '10.0.0.2' is not the chief and has no 'ssh_config'; the chief reaches "
       "the other nodes over SSH"},
      {"bad_unknown_ssh_group.yml",
       "5:17: error: ssh_config 'clustr' names no group under 'ssh' (did you mean 'cluster'?)"},
      {"bad_no_ssh_section.yml",
       "5:17: error: ssh_config 'cluster' names no group under 'ssh' (the file has no 'ssh' "
       "section)"},
      {"bad_duplicate_key.yml", "4:5: error: duplicate key 'address' (first given at line 2)"},
      {"bad_negative_cpu.yml", "3:15: error: cpu id -1 in 'cpus' must be between 0 and 1000000"},
      {"bad_duplicate_cpu.yml", "3:18: error: cpu id 1 is listed twice in 'cpus'"},
      {"bad_empty_nodes.yml", "1:8: error: 'nodes' is empty; list at least one node"},
      {"bad_port.yml", "8:11: error: 'port' must be between 1 and 65535, got 70000"},
      {"bad_bandwidth.yml",
       "3:24: error: 'network_bandwidth' must be a positive number of Gbit/s, got 0"},
      {"bad_syntax.yml", "4:1: error: invalid YAML: did not find expected ',' or ']' (while "
                         "parsing a flow sequence that started at 3:11)"},
      {"bad_empty.yml", "1:1: error: the file is empty; a resource spec needs a 'nodes' list"},
      {"bad_only_comments.yml",
       "1:1: error: the file is empty; a resource spec needs a 'nodes' list"},
      {"bad_top_list.yml", "1:1: error: the top level must be a mapping with 'nodes', got a list"},
      {"bad_missing_nodes.yml", "1:1: error: missing required key 'nodes'"},
      {"bad_chief_type.yml", "3:12: error: 'chief' must be true or false, got a string"},
      {"bad_env_value.yml", "9:24: error: the value of 'OMP_NUM_THREADS' in 'shared_envs' must "
                            "be a string, got a list"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    expect_file_error(cases[i][0], cases[i][1]);
}

static void test_bad_buffers(void) {
  expect_buffer_error("nodes:\n  - address: localhost\n    gpus: [0, -2]\n",
                      "spec.yml:3:15: error: gpu id -2 in 'gpus' must be between 0 and 1000000");
  expect_buffer_error("nodes:\n  - address: localhost\n    gpus: []\n",
                      "spec.yml:3:11: error: 'gpus' is empty; list at least one gpu id or leave "
                      "the key out");
  expect_buffer_error("nodes:\n  - address: localhost\n    network_bandwidth: -3\n",
                      "spec.yml:3:24: error: 'network_bandwidth' must be a positive number of "
                      "Gbit/s, got -3");
  expect_buffer_error("nodes:\n  - address: localhost\n    network_bandwidth: fast\n",
                      "spec.yml:3:24: error: 'network_bandwidth' must be a number, got a string");
  expect_buffer_error("nodes: {address: localhost}\n",
                      "spec.yml:1:8: error: 'nodes' must be a list of nodes, got a mapping");
  expect_buffer_error("nodes:\n  - localhost\n",
                      "spec.yml:2:5: error: each entry of 'nodes' must be a mapping, got a string");
  expect_buffer_error("nodes:\n  - cpus: [0]\n",
                      "spec.yml:2:5: error: missing required key 'address'");
  expect_buffer_error("nodes:\n  - address:\n",
                      "spec.yml:2:13: error: 'address' must be a string, got null");
  expect_buffer_error("nodes:\n  - address: 'a b'\n",
                      "spec.yml:2:14: error: 'address' must be a host name or IP address, got "
                      "'a b'");
  expect_buffer_error("nodes:\n  - address: h\nssh:\n  c:\n    port: '22'\n",
                      "spec.yml:5:11: error: 'port' must be an integer, got a string");
  expect_buffer_error("nodes:\n  - address: h\nssh:\n  c:\n    port: 0\n",
                      "spec.yml:5:11: error: 'port' must be between 1 and 65535, got 0");
  expect_buffer_error("nodes:\n  - address: h\nssh:\n  c:\n    user: me\n",
                      "spec.yml:5:5: error: unknown key 'user' (expected one of: username, port, "
                      "key_file, python_venv, shared_envs, known_hosts)");
  expect_buffer_error("nodes:\n  - address: h\nssh:\n  c:\n    shared_envs: {'A-B': 1}\n",
                      "spec.yml:5:19: error: 'A-B' is not a valid environment variable name");
  expect_buffer_error("nodes:\n  - address: h\nssh: [c]\n",
                      "spec.yml:3:6: error: 'ssh' must be a mapping, got a list");
  expect_buffer_error("nodes:\n  - address: h\nssh:\n  c: 1\n",
                      "spec.yml:4:6: error: ssh group 'c' must be a mapping, got an integer");
  expect_buffer_error("nodes:\n  - address: h\nnode: []\n",
                      "spec.yml:3:1: error: unknown key 'node' (did you mean 'nodes'?)");
  expect_buffer_error("nodes:\n  - address: h\n    chief: true\n    chief: false\n",
                      "spec.yml:4:5: error: duplicate key 'chief' (first given at line 3)");
  expect_buffer_error("nodes:\n  - address: h\n---\nnodes: []\n",
                      "spec.yml:3:1: error: only one YAML document is allowed");
  expect_buffer_error("nodes:\n  - *x\n", "spec.yml:2:5: error: undefined alias '*x'");
  expect_buffer_error("nodes:\n  - address: \"a\\0b\"\n",
                      "spec.yml:2:14: error: NUL character in a string");
  expect_buffer_error("nodes:\n  - {address: h, [1]: 2}\n",
                      "spec.yml:2:18: error: mapping keys must be plain names, got a list");
  expect_buffer_error("nodes: [address: h\n",
                      "spec.yml:2:1: error: invalid YAML: did not find expected ',' or ']' "
                      "(while parsing a flow sequence that started at 1:8)");
  expect_buffer_error("nodes:\n\t- address: h\n",
                      "spec.yml:2:1: error: invalid YAML: found character that cannot start any "
                      "token (while scanning for the next token that started at 2:1)");
  /* Deep nesting is refused, not a stack overflow. */
  char deep[400];
  memset(deep, '[', 300);
  strcpy(deep + 300, "\n");
  ad_spec *s = NULL;
  CHECK(ad_spec_parse_buffer("spec.yml", deep, strlen(deep), &s) == AD_ERR_INPUT);
  CHECK_STR(ad_error_message(), "spec.yml:1:66: error: nesting deeper than 64 levels");
  CHECK(ad_spec_parse("data/specs/no_such_file.yml", &s) == AD_ERR_INPUT);
  CHECK_STR(ad_error_message(),
            "data/specs/no_such_file.yml: error: cannot open: No such file or directory");
}

static void test_good_two_node(void) {
  setenv("HOME", "/home/tester", 1);
  ad_spec *s = NULL;
  if (ad_spec_parse("data/specs/good_autodist_two_node.yml", &s) != AD_OK) {
    fprintf(stderr, "good_autodist_two_node.yml: %s\n", ad_error_message());
    failures++;
    return;
  }
  CHECK_STR(s->path, "data/specs/good_autodist_two_node.yml");
  CHECK(s->n_nodes == 2);
  CHECK(s->chief == 0);
  const ad_spec_node *a = &s->nodes[0], *b = &s->nodes[1];
  CHECK_STR(a->address, "172.31.30.187");
  CHECK(a->n_cpus == 1 && a->cpus[0] == 0);
  CHECK(a->n_gpus == 4 && a->gpus[0] == 0 && a->gpus[1] == 1 && a->gpus[2] == 2 && a->gpus[3] == 3);
  CHECK(a->chief);
  CHECK(a->ssh_config == NULL);
  CHECK(a->network_bandwidth == 25);
  CHECK(a->line == 3);
  CHECK_STR(b->address, "172.31.18.140");
  CHECK(b->n_cpus == 0 && b->cpus == NULL);
  CHECK(b->n_gpus == 4 && b->gpus[3] == 3);
  CHECK(!b->chief);
  CHECK_STR(b->ssh_config, "conf");
  CHECK(b->network_bandwidth == 12.5);
  CHECK(b->line == 8);
  CHECK(s->n_ssh == 2);
  const ad_ssh_group *g = &s->ssh[0];
  CHECK_STR(g->name, "conf");
  CHECK_STR(g->username, "root");
  CHECK(g->port == 12345);
  CHECK_STR(g->key_file, "/home/tester/.ssh/id_rsa");
  CHECK_STR(g->python_venv, "source /root/venvs/autodist/bin/activate");
  CHECK(g->known_hosts == NULL);
  CHECK(g->n_envs == 2);
  if (g->n_envs == 2) {
    CHECK_STR(g->shared_envs[0].key, "LD_LIBRARY_PATH");
    CHECK_STR(g->shared_envs[0].value, "$LD_LIBRARY_PATH:/usr/local/cuda/lib64");
    CHECK_STR(g->shared_envs[1].key, "OMP_NUM_THREADS");
    CHECK_STR(g->shared_envs[1].value, "1");
  }
  const ad_ssh_group *h = &s->ssh[1];
  CHECK_STR(h->name, "spare");
  CHECK(h->username == NULL && h->key_file == NULL && h->python_venv == NULL);
  CHECK(h->port == 22);
  CHECK_STR(h->known_hosts, "/home/tester/kh");
  CHECK(h->n_envs == 0);
  /* GPU workers where gpus are listed: 4 + 4. */
  CHECK(ad_spec_worker_count(s) == 8);
  ad_spec_free(s);
}

static void test_good_single(void) {
  ad_spec *s = NULL;
  if (ad_spec_parse("data/specs/good_single.yml", &s) != AD_OK) {
    fprintf(stderr, "good_single.yml: %s\n", ad_error_message());
    failures++;
    return;
  }
  CHECK(s->n_nodes == 1 && s->chief == 0 && s->n_ssh == 0);
  CHECK_STR(s->nodes[0].address, "localhost");
  CHECK(s->nodes[0].n_cpus == 4 && s->nodes[0].cpus[3] == 3);
  CHECK(s->nodes[0].n_gpus == 0 && s->nodes[0].gpus == NULL);
  CHECK(!s->nodes[0].chief); /* not flagged, but the chief by being alone */
  CHECK(s->nodes[0].network_bandwidth == 1);
  CHECK(ad_spec_worker_count(s) == 4);
  ad_spec_free(s);
}

static void test_good_buffers(void) {
  /* The chief need not come first; yes/no booleans and 0x ports as PyYAML reads them. */
  const char *text = "nodes:\n"
                     "  - {address: 127.0.0.2, ssh_config: g}\n"
                     "  - {address: 127.0.0.1, chief: yes}\n"
                     "ssh:\n"
                     "  g: {port: 0x16, key_file: '~', username: \"1000\"}\n";
  setenv("HOME", "/root2", 1);
  ad_spec *s = NULL;
  if (ad_spec_parse_buffer("s.yml", text, strlen(text), &s) != AD_OK) {
    fprintf(stderr, "good buffer: %s\n", ad_error_message());
    failures++;
    return;
  }
  CHECK(s->chief == 1);
  CHECK(s->ssh[0].port == 22);
  CHECK_STR(s->ssh[0].key_file, "/root2");
  CHECK_STR(s->ssh[0].username, "1000");
  CHECK(ad_spec_worker_count(s) == 2); /* no cpus/gpus: one CPU worker per node */
  ad_spec_free(s);

  ad_spec *d = ad_spec_default();
  CHECK_STR(d->path, "(default)");
  CHECK(d->n_nodes == 1 && d->chief == 0 && d->n_ssh == 0);
  CHECK_STR(d->nodes[0].address, "localhost");
  CHECK(d->nodes[0].n_cpus == 1 && d->nodes[0].cpus[0] == 0);
  CHECK(d->nodes[0].chief && d->nodes[0].network_bandwidth == 1);
  CHECK(ad_spec_worker_count(d) == 1);
  ad_spec_free(d);
}

/* Every example shipped in resource_specs/examples must parse. */
static void test_examples(void) {
  static const char *const files[] = {"../resource_specs/examples/single_node_cpu.yml",
                                      "../resource_specs/examples/single_node_gpu.yml",
                                      "../resource_specs/examples/two_nodes.yml",
                                      "../resource_specs/examples/loopback_nodes.yml"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    ad_spec *s = NULL;
    if (ad_spec_parse(files[i], &s) != AD_OK) {
      fprintf(stderr, "%s\n", ad_error_message());
      failures++;
      continue;
    }
    ad_spec_free(s);
  }
}

int main(void) {
  test_bad_files();
  test_bad_buffers();
  test_good_two_node();
  test_good_single();
  test_good_buffers();
  test_examples();
  if (failures)
    fprintf(stderr, "test_spec: %d failure(s)\n", failures);
  else
    printf("test_spec: ok\n");
  return failures != 0;
}
