/*
 * resource_specs/yaml_util.c: libyaml events -> a positioned document tree,
 * plus the strict typed accessors every autodist YAML reader uses.
 *
 * The tree is built from the event API (not yaml_parser_load) because we need
 * to reject duplicate keys, which libyaml's loader silently accepts, and we want
 * every node's start mark. All memory comes from one arena per document, so an
 * error anywhere in parsing or validation is cleaned up by ad_yaml_free.
 */
#include "yaml_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH 64

typedef struct anchor {
  const char *name;
  ad_yaml_node *node;
} anchor;

typedef struct builder {
  yaml_parser_t parser;
  ad_yaml_doc *doc;
  anchor *anchors;
  int n_anchors, cap_anchors;
} builder;

static char *arena_strndup(ad_arena *a, const char *s, size_t n) {
  char *p = ad_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

/* Grows an arena array by doubling; the old block stays in the arena. */
static void *arena_grow(ad_arena *a, void *old, int len, int *cap, size_t elem) {
  if (len < *cap)
    return old;
  int ncap = *cap ? 2 * *cap : 8;
  void *p = ad_arena_alloc(a, (size_t)ncap * elem);
  if (old)
    memcpy(p, old, (size_t)len * elem);
  *cap = ncap;
  return p;
}

static ad_status fail_at(const ad_yaml_doc *d, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static ad_status fail_at(const ad_yaml_doc *d, int line, int col, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return ad_fail(AD_ERR_INPUT, "%s:%d:%d: error: %s", d->path, line, col, msg);
}

ad_status ad_yaml_error(const ad_yaml_doc *d, const ad_yaml_node *n, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return fail_at(d, n ? n->line : 1, n ? n->col : 1, "%s", msg);
}

/* libyaml's own diagnosis, at its (0-based) problem mark. */
static ad_status syntax_error(builder *b) {
  yaml_parser_t *p = &b->parser;
  const char *problem = p->problem ? p->problem : "malformed document";
  if (p->error == YAML_MEMORY_ERROR) {
    fprintf(stderr, "autodist: out of memory in libyaml\n");
    abort();
  }
  if (p->context)
    return fail_at(b->doc, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1,
                   "invalid YAML: %s (%s that started at %d:%d)", problem, p->context,
                   (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
  return fail_at(b->doc, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1,
                 "invalid YAML: %s", problem);
}

static ad_status next_event(builder *b, yaml_event_t *ev) {
  if (!yaml_parser_parse(&b->parser, ev))
    return syntax_error(b);
  return AD_OK;
}

static ad_yaml_node *new_node(builder *b, ad_yaml_kind kind, const yaml_event_t *ev) {
  ad_yaml_node *n = ad_arena_alloc(b->doc->arena, sizeof *n);
  n->kind = kind;
  n->line = (int)ev->start_mark.line + 1;
  n->col = (int)ev->start_mark.column + 1;
  return n;
}

static void add_anchor(builder *b, const yaml_char_t *name, ad_yaml_node *n) {
  if (!name)
    return;
  b->anchors = arena_grow(b->doc->arena, b->anchors, b->n_anchors, &b->cap_anchors, sizeof(anchor));
  b->anchors[b->n_anchors].name = ad_arena_strdup(b->doc->arena, (const char *)name);
  b->anchors[b->n_anchors++].node = n;
}

static ad_status parse_node(builder *b, yaml_event_t *ev, int depth, ad_yaml_node **out);

/* Reads the items of a sequence or the key/value pairs of a mapping, after its
 * start event, up to and including its end event. */
static ad_status parse_children(builder *b, ad_yaml_node *n, int depth) {
  ad_arena *a = b->doc->arena;
  int cap = 0, kcap = 0;
  for (;;) {
    yaml_event_t ev;
    AD_TRY(next_event(b, &ev));
    if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
      yaml_event_delete(&ev);
      return AD_OK;
    }
    ad_yaml_node *child;
    ad_status st = parse_node(b, &ev, depth + 1, &child);
    yaml_event_delete(&ev);
    AD_TRY(st);
    if (n->kind == AD_YAML_SEQ) {
      n->items = arena_grow(a, n->items, n->n, &cap, sizeof(ad_yaml_node *));
      n->items[n->n++] = child;
      continue;
    }
    /* A mapping key, then its value. */
    if (child->kind != AD_YAML_SCALAR)
      return ad_yaml_error(b->doc, child, "mapping keys must be plain names, got %s",
                           ad_yaml_describe(child));
    for (int i = 0; i < n->n; i++)
      if (strcmp(n->keys[i]->str, child->str) == 0)
        return ad_yaml_error(b->doc, child, "duplicate key '%s' (first given at line %d)",
                             child->str, n->keys[i]->line);
    yaml_event_t vev;
    AD_TRY(next_event(b, &vev));
    ad_yaml_node *value;
    st = parse_node(b, &vev, depth + 1, &value);
    yaml_event_delete(&vev);
    AD_TRY(st);
    n->keys = arena_grow(a, n->keys, n->n, &kcap, sizeof(ad_yaml_node *));
    n->items = arena_grow(a, n->items, n->n, &cap, sizeof(ad_yaml_node *));
    n->keys[n->n] = child;
    n->items[n->n++] = value;
  }
}

static ad_status parse_node(builder *b, yaml_event_t *ev, int depth, ad_yaml_node **out) {
  ad_yaml_doc *d = b->doc;
  if (depth > MAX_DEPTH)
    return fail_at(d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                   "nesting deeper than %d levels", MAX_DEPTH);
  switch (ev->type) {
  case YAML_SCALAR_EVENT: {
    ad_yaml_node *n = new_node(b, AD_YAML_SCALAR, ev);
    const char *v = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    if (memchr(v, 0, len))
      return ad_yaml_error(d, n, "NUL character in a string");
    n->str = arena_strndup(d->arena, v, len);
    const char *tag = (const char *)ev->data.scalar.tag;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
               !(tag && strcmp(tag, YAML_STR_TAG) == 0);
    add_anchor(b, ev->data.scalar.anchor, n);
    *out = n;
    return AD_OK;
  }
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT: {
    bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
    ad_yaml_node *n = new_node(b, seq ? AD_YAML_SEQ : AD_YAML_MAP, ev);
    AD_TRY(parse_children(b, n, depth));
    add_anchor(b, seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor, n);
    *out = n;
    return AD_OK;
  }
  case YAML_ALIAS_EVENT: {
    const char *name = (const char *)ev->data.alias.anchor;
    for (int i = b->n_anchors - 1; i >= 0; i--)
      if (strcmp(b->anchors[i].name, name) == 0) {
        *out = b->anchors[i].node;
        return AD_OK;
      }
    return fail_at(d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                   "undefined alias '*%s'", name);
  }
  default:
    return fail_at(d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                   "invalid YAML: unexpected event");
  }
}

static ad_status parse_stream(builder *b) {
  yaml_event_t ev;
  AD_TRY(next_event(b, &ev)); /* STREAM_START */
  yaml_event_delete(&ev);
  AD_TRY(next_event(b, &ev));
  if (ev.type == YAML_STREAM_END_EVENT) {
    yaml_event_delete(&ev);
    return AD_OK; /* no document at all */
  }
  yaml_event_delete(&ev); /* DOCUMENT_START */
  AD_TRY(next_event(b, &ev));
  ad_status st = parse_node(b, &ev, 0, &b->doc->root);
  yaml_event_delete(&ev);
  AD_TRY(st);
  AD_TRY(next_event(b, &ev)); /* DOCUMENT_END */
  yaml_event_delete(&ev);
  AD_TRY(next_event(b, &ev));
  if (ev.type != YAML_STREAM_END_EVENT) {
    int line = (int)ev.start_mark.line + 1, col = (int)ev.start_mark.column + 1;
    yaml_event_delete(&ev);
    /* libyaml may report a syntax error in the second document first. */
    return fail_at(b->doc, line, col, "only one YAML document is allowed");
  }
  yaml_event_delete(&ev);
  return AD_OK;
}

ad_status ad_yaml_load(const char *path, const char *data, size_t len, ad_yaml_doc **out) {
  ad_yaml_doc *d = ad_xcalloc(1, sizeof *d);
  d->arena = ad_arena_create();
  d->path = ad_arena_strdup(d->arena, path);
  builder b = {.doc = d};
  if (!yaml_parser_initialize(&b.parser)) {
    fprintf(stderr, "autodist: out of memory in libyaml\n");
    abort();
  }
  yaml_parser_set_input_string(&b.parser, (const unsigned char *)data, len);
  ad_status st = parse_stream(&b);
  yaml_parser_delete(&b.parser);
  if (st != AD_OK) {
    ad_yaml_free(d);
    return st;
  }
  *out = d;
  return AD_OK;
}

ad_status ad_yaml_load_file(const char *path, ad_yaml_doc **out) {
  char *data;
  size_t len;
  AD_TRY(ad_file_read(path, &data, &len));
  ad_status st = ad_yaml_load(path, data, len, out);
  free(data);
  return st;
}

void ad_yaml_free(ad_yaml_doc *doc) {
  if (!doc)
    return;
  ad_arena_destroy(doc->arena);
  free(doc);
}

/* ---- scalar typing ---- */

static bool is_null_text(const char *s) {
  return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

bool ad_yaml_is_null(const ad_yaml_node *n) {
  return n && n->kind == AD_YAML_SCALAR && n->plain && is_null_text(n->str);
}

bool ad_yaml_scalar_bool(const ad_yaml_node *n, bool *out) {
  static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const char *const no[] = {"false", "False", "FALSE", "no", "No",
                                   "NO",    "off",   "Off",   "OFF"};
  if (!n || n->kind != AD_YAML_SCALAR || !n->plain)
    return false;
  for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
    if (!strcmp(n->str, yes[i]))
      return *out = true, true;
    if (!strcmp(n->str, no[i]))
      return *out = false, true;
  }
  return false;
}

/* Decimal (with '_' separators, as PyYAML allows), 0x hex or 0o octal. */
bool ad_yaml_scalar_int(const ad_yaml_node *n, int64_t *out) {
  if (!n || n->kind != AD_YAML_SCALAR || !n->plain)
    return false;
  const char *s = n->str;
  char buf[80];
  size_t k = 0;
  if (*s == '+' || *s == '-')
    buf[k++] = *s++;
  int base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
    base = 16, s += 2;
  else if (s[0] == '0' && s[1] == 'o')
    base = 8, s += 2;
  int digits = 0;
  for (; *s; s++) {
    if (*s == '_' && base == 10 && digits)
      continue;
    bool ok = base == 16
                  ? (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')
              : base == 8 ? *s >= '0' && *s <= '7'
                          : *s >= '0' && *s <= '9';
    if (!ok || k + 1 >= sizeof buf)
      return false;
    buf[k++] = *s;
    digits++;
  }
  if (!digits)
    return false;
  buf[k] = 0;
  errno = 0;
  char *end;
  long long v = strtoll(buf, &end, base);
  if (errno == ERANGE || *end)
    return false;
  *out = v;
  return true;
}

bool ad_yaml_scalar_number(const ad_yaml_node *n, double *out) {
  int64_t i;
  if (ad_yaml_scalar_int(n, &i))
    return *out = (double)i, true;
  if (!n || n->kind != AD_YAML_SCALAR || !n->plain)
    return false;
  const char *s = n->str, *p = s;
  if (*p == '+' || *p == '-')
    p++;
  if (!strcmp(p, ".inf") || !strcmp(p, ".Inf") || !strcmp(p, ".INF"))
    return *out = *s == '-' ? -INFINITY : INFINITY, true;
  if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN"))
    return *out = NAN, true;
  /* [-+]? ( \.[0-9]+ | [0-9]+ (\.[0-9]*)? ) ([eE][-+]?[0-9]+)? */
  int mant = 0;
  while (*p >= '0' && *p <= '9')
    p++, mant++;
  if (*p == '.') {
    p++;
    while (*p >= '0' && *p <= '9')
      p++, mant++;
  }
  if (!mant)
    return false;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-')
      p++;
    if (!(*p >= '0' && *p <= '9'))
      return false;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  if (*p)
    return false;
  *out = strtod(s, NULL);
  return true;
}

const char *ad_yaml_describe(const ad_yaml_node *n) {
  if (!n)
    return "nothing";
  if (n->kind == AD_YAML_SEQ)
    return "a list";
  if (n->kind == AD_YAML_MAP)
    return "a mapping";
  if (!n->plain)
    return "a string";
  int64_t i;
  double x;
  bool b;
  if (is_null_text(n->str))
    return "null";
  if (ad_yaml_scalar_bool(n, &b))
    return "a boolean";
  if (ad_yaml_scalar_int(n, &i))
    return "an integer";
  if (ad_yaml_scalar_number(n, &x))
    return "a number";
  return "a string";
}

/* ---- lookups and strict keys ---- */

/* True when b is a with two neighbouring characters swapped ("adma" / "adam"):
 * one typo, though Levenshtein counts two. */
static bool one_swap(const char *a, const char *b) {
  size_t n = strlen(a);
  if (n != strlen(b))
    return false;
  size_t i = 0;
  while (i < n && a[i] == b[i])
    i++;
  return i + 1 < n && a[i] == b[i + 1] && a[i + 1] == b[i] && !strcmp(a + i + 2, b + i + 2);
}

const char *ad_yaml_suggest(const char *word, const char *const *candidates) {
  int limit = strlen(word) >= 6 ? 2 : 1, best = limit + 1;
  const char *pick = NULL;
  for (int i = 0; candidates[i]; i++) {
    int dist = one_swap(word, candidates[i]) ? 1 : ad_edit_distance(word, candidates[i]);
    if (dist < best)
      best = dist, pick = candidates[i];
  }
  return pick;
}

const ad_yaml_node *ad_yaml_get_key(const ad_yaml_node *map, const char *key) {
  if (!map || map->kind != AD_YAML_MAP)
    return NULL;
  for (int i = 0; i < map->n; i++)
    if (!strcmp(map->keys[i]->str, key))
      return map->keys[i];
  return NULL;
}

const ad_yaml_node *ad_yaml_get(const ad_yaml_node *map, const char *key) {
  if (!map || map->kind != AD_YAML_MAP)
    return NULL;
  for (int i = 0; i < map->n; i++)
    if (!strcmp(map->keys[i]->str, key))
      return map->items[i];
  return NULL;
}

ad_status ad_yaml_check_keys(const ad_yaml_doc *d, const ad_yaml_node *map,
                             const char *const *allowed) {
  for (int i = 0; i < map->n; i++) {
    const ad_yaml_node *k = map->keys[i];
    bool known = false;
    for (int j = 0; allowed[j] && !known; j++)
      known = !strcmp(k->str, allowed[j]);
    if (known)
      continue;
    const char *near = ad_yaml_suggest(k->str, allowed);
    if (near)
      return ad_yaml_error(d, k, "unknown key '%s' (did you mean '%s'?)", k->str, near);
    char list[1024] = "";
    size_t used = 0;
    for (int j = 0; allowed[j]; j++)
      used += (size_t)snprintf(list + used, used < sizeof list ? sizeof list - used : 0, "%s%s",
                               j ? ", " : "", allowed[j]);
    return ad_yaml_error(d, k, "unknown key '%s' (expected one of: %s)", k->str, list);
  }
  return AD_OK;
}

ad_status ad_yaml_require(const ad_yaml_doc *d, const ad_yaml_node *map, const char *key,
                          const ad_yaml_node **value) {
  *value = ad_yaml_get(map, key);
  if (!*value)
    return ad_yaml_error(d, map, "missing required key '%s'", key);
  return AD_OK;
}

/* ---- typed reads ---- */

ad_status ad_yaml_expect_map(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what) {
  if (n->kind != AD_YAML_MAP)
    return ad_yaml_error(d, n, "'%s' must be a mapping, got %s", what, ad_yaml_describe(n));
  return AD_OK;
}

ad_status ad_yaml_int(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what, int64_t *out) {
  if (!ad_yaml_scalar_int(n, out))
    return ad_yaml_error(d, n, "'%s' must be an integer, got %s", what, ad_yaml_describe(n));
  return AD_OK;
}

ad_status ad_yaml_number(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                         double *out) {
  if (!ad_yaml_scalar_number(n, out))
    return ad_yaml_error(d, n, "'%s' must be a number, got %s", what, ad_yaml_describe(n));
  if (isnan(*out))
    return ad_yaml_error(d, n, "'%s' must be a number, got NaN", what);
  return AD_OK;
}

ad_status ad_yaml_bool(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what, bool *out) {
  if (!ad_yaml_scalar_bool(n, out))
    return ad_yaml_error(d, n, "'%s' must be true or false, got %s", what, ad_yaml_describe(n));
  return AD_OK;
}

ad_status ad_yaml_string(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                         const char **out) {
  if (n->kind != AD_YAML_SCALAR || ad_yaml_is_null(n))
    return ad_yaml_error(d, n, "'%s' must be a string, got %s", what, ad_yaml_describe(n));
  *out = n->str;
  return AD_OK;
}

ad_status ad_yaml_int_list(const ad_yaml_doc *d, const ad_yaml_node *n, const char *what,
                           int64_t **out, int *count) {
  *out = NULL;
  *count = 0;
  if (n->kind != AD_YAML_SEQ)
    return ad_yaml_error(d, n, "'%s' must be a list of integers, got %s", what,
                         ad_yaml_describe(n));
  int64_t *v = n->n ? ad_xmalloc((size_t)n->n * sizeof *v) : NULL;
  for (int i = 0; i < n->n; i++)
    if (!ad_yaml_scalar_int(n->items[i], &v[i])) {
      free(v);
      return ad_yaml_error(d, n->items[i], "'%s' must be a list of integers, got %s in it", what,
                           ad_yaml_describe(n->items[i]));
    }
  *out = v;
  *count = n->n;
  return AD_OK;
}
