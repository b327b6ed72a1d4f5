/*
 * resource_specs/yaml_util.h: the small YAML layer shared by every strict YAML
 * reader in autodist (resource_spec.yml, train.yml, plan.yaml).
 *
 * libyaml's event stream is turned into a tree of mappings, sequences and
 * scalars; every node keeps the 1-based line:column where it starts so that
 * each error can name its place (`PATH:LINE:COL: error: MESSAGE`). The loader
 * already rejects what no reader wants: duplicate keys, non-scalar keys,
 * undefined aliases, nesting deeper than 64 and NUL bytes in scalars.
 *
 * Typing follows what an AutoDist user (PyYAML, YAML 1.1) would expect for plain
 * scalars: `~`/`null`/empty are null, true/false/yes/no/on/off are booleans,
 * decimal/0x/0o integers, and floats (1e-3 included, as in YAML 1.2). Quoted
 * scalars are always strings.
 *
 * Ownership: every node and string belongs to the document's arena; one
 * ad_yaml_free releases all of it, so parse-error paths never leak.
 */
#ifndef AD_YAML_UTIL_H
#define AD_YAML_UTIL_H

#include "../common/ad.h"

#include <stdbool.h>

typedef enum ad_yaml_kind { AD_YAML_SCALAR, AD_YAML_SEQ, AD_YAML_MAP } ad_yaml_kind;

typedef struct ad_yaml_node ad_yaml_node;
struct ad_yaml_node {
  ad_yaml_kind kind;
  int line, col;        /* 1-based position of the node's first character */
  const char *str;      /* SCALAR: the text (NUL-terminated) */
  bool plain;           /* SCALAR: unquoted and untagged, so it may be a number/bool/null */
  int n;                /* SEQ: items; MAP: pairs */
  ad_yaml_node **items; /* SEQ: the items; MAP: the values */
  ad_yaml_node **keys;  /* MAP: the keys (scalars), in file order */
};

typedef struct ad_yaml_doc {
  char *path;         /* as given, for messages */
  ad_yaml_node *root; /* NULL when the file holds no document (empty or only comments) */
  ad_arena *arena;
} ad_yaml_doc;

/* Parses one YAML document from memory. On a syntax error the message is
 * "PATH:LINE:COL: error: invalid YAML: <libyaml's problem> (<context>)". */
ad_status ad_yaml_load(const char *path, const char *data, size_t len, ad_yaml_doc **out);
/* Reads the file and parses it (the file name is used in messages). */
ad_status ad_yaml_load_file(const char *path, ad_yaml_doc **out);
void ad_yaml_free(ad_yaml_doc *doc);

/* Fails with "PATH:LINE:COL: error: MESSAGE" at node n (1:1 when n is NULL). */
ad_status ad_yaml_error(const ad_yaml_doc *d, const ad_yaml_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What a node is, for "got ..." messages: "a string", "an integer", "a number",
 * "a boolean", "null", "a list", "a mapping". */
const char *ad_yaml_describe(const ad_yaml_node *n);
bool ad_yaml_is_null(const ad_yaml_node *n);

/* The closest candidate to `word` (edit distance at most 2, or at most a third
 * of its length), or NULL. `candidates` ends with NULL. */
const char *ad_yaml_suggest(const char *word, const char *const *candidates);

/* Map lookups: the value (or the key node) for `key`, NULL when absent. */
const ad_yaml_node *ad_yaml_get(const ad_yaml_node *map, const char *key);
const ad_yaml_node *ad_yaml_get_key(const ad_yaml_node *map, const char *key);

/* Strict keys: every key of `map` must be in `allowed` (NULL-terminated), else
 * "unknown key 'gpu' (did you mean 'gpus'?)" or, with no near miss,
 * "unknown key 'x' (expected one of: a, b, c)". */
ad_status ad_yaml_check_keys(const ad_yaml_doc *d, const ad_yaml_node *map,
                             const char *const *allowed);
/* Requires `key` in `map`: "missing required key 'address'" at the map. */
ad_status ad_yaml_require(const ad_yaml_doc *d, const ad_yaml_node *map, const char *key,
                          const ad_yaml_node **value);

/* Typed reads. `what` names the value in messages, e.g. "'port' must be an
 * integer, got a string". */
ad_status ad_yaml_expect_map(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what);
ad_status ad_yaml_int(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what, int64_t *out);
ad_status ad_yaml_number(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                         double *out);
ad_status ad_yaml_bool(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what, bool *out);
/* Any non-null scalar, as text (`1` reads as "1"). */
ad_status ad_yaml_string(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                         const char **out);
/* A sequence of integers: "'cpus' must be a list of integers, got a string".
 * *out is malloc'd (NULL when the list is empty); the caller frees it. */
ad_status ad_yaml_int_list(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                           int64_t **out, int *count);

/* Scalar typing without a document (no message): true when the scalar is a
 * plain integer / number / boolean. */
bool ad_yaml_scalar_int(const ad_yaml_node *n, int64_t *out);
bool ad_yaml_scalar_number(const ad_yaml_node *n, double *out);
bool ad_yaml_scalar_bool(const ad_yaml_node *n, bool *out);

#endif
