/*
 * common/ad.c: status messages, assertions, checked allocation, arenas and
 * whole-file I/O shared by the compiler, the runtime and the CLI.
 */
#include "ad.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char err_msg[4096];

ad_status ad_failv(ad_status st, const char *fmt, va_list ap) {
  vsnprintf(err_msg, sizeof err_msg, fmt, ap);
  return st;
}

ad_status ad_fail(ad_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ad_failv(st, fmt, ap);
  va_end(ap);
  return st;
}

const char *ad_error_message(void) { return err_msg; }

void ad_error_prefix(const char *fmt, ...) {
  char pre[1024], old[sizeof err_msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  memcpy(old, err_msg, sizeof old);
  size_t n = strlen(pre);
  if (n > sizeof err_msg - 3)
    n = sizeof err_msg - 3;
  memcpy(err_msg, pre, n);
  memcpy(err_msg + n, ": ", 2);
  size_t m = strlen(old);
  if (m > sizeof err_msg - n - 3)
    m = sizeof err_msg - n - 3;
  memcpy(err_msg + n + 2, old, m);
  err_msg[n + 2 + m] = 0;
}

const char *ad_status_str(ad_status st) {
  switch (st) {
  case AD_OK: return "ok";
  case AD_ERR_INPUT: return "bad input";
  case AD_ERR_JOB: return "job failed";
  }
  return "unknown status";
}

int ad_status_exit_code(ad_status st) {
  return st == AD_OK ? 0 : st == AD_ERR_INPUT ? 2 : 1;
}

void ad_assert_fail(const char *file, int line, const char *expr) {
  fprintf(stderr, "autodist: internal error at %s:%d: assertion '%s' failed\n", file, line, expr);
  abort();
}

void *ad_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "autodist: out of memory (%zu bytes)\n", n);
    abort();
  }
  return p;
}

void *ad_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (!p) {
    fprintf(stderr, "autodist: out of memory (%zu bytes)\n", n * sz);
    abort();
  }
  return p;
}

void *ad_xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) {
    fprintf(stderr, "autodist: out of memory (%zu bytes)\n", n);
    abort();
  }
  return p;
}

char *ad_xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(ad_xmalloc(n), s, n);
}

/* Arena: a chain of blocks; big requests get a block of their own. */
typedef struct arena_block {
  struct arena_block *next;
  size_t used, size;
  _Alignas(16) unsigned char data[];
} arena_block;

struct ad_arena {
  arena_block *head;
};

ad_arena *ad_arena_create(void) { return ad_xcalloc(1, sizeof(ad_arena)); }

void *ad_arena_alloc(ad_arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  arena_block *b = a->head;
  if (!b || b->size - b->used < n) {
    size_t size = n > 65536 ? n : 65536;
    b = ad_xmalloc(sizeof(arena_block) + size);
    b->used = 0;
    b->size = size;
    b->next = a->head;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

char *ad_arena_strdup(ad_arena *a, const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(ad_arena_alloc(a, n), s, n);
}

char *ad_arena_printf(ad_arena *a, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = ad_arena_alloc(a, (size_t)n + 1);
  vsnprintf(s, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return s;
}

void ad_arena_destroy(ad_arena *a) {
  if (!a)
    return;
  for (arena_block *b = a->head, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  free(a);
}

ad_status ad_file_read(const char *path, char **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = ad_xmalloc(cap);
  for (;;) {
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (n + 1 < cap)
      break;
    cap *= 2;
    buf = ad_xrealloc(buf, cap);
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return ad_fail(AD_ERR_INPUT, "%s: error: read failed", path);
  }
  buf[n] = 0;
  *data = buf;
  *len = n;
  return AD_OK;
}

ad_status ad_file_write(const char *path, const void *data, size_t len) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot write: %s", path, strerror(errno));
  int ok = fwrite(data, 1, len, f) == len;
  ok &= fflush(f) == 0;
  ok &= fclose(f) == 0;
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return ad_fail(AD_ERR_INPUT, "%s: error: cannot write: %s", path, strerror(e));
  }
  return AD_OK;
}

int ad_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64)
    return 99;
  int d[65][65];
  for (size_t i = 0; i <= la; i++)
    d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++)
    d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < c)
        c = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < c)
        c = d[i][j - 1] + 1;
      d[i][j] = c;
    }
  return d[la][lb];
}

static const char *home_dir(void) {
  const char *h = getenv("HOME");
  if (h && *h)
    return h;
  struct passwd *pw = getpwuid(getuid());
  return pw && pw->pw_dir ? pw->pw_dir : "";
}

char *ad_expand_home(const char *p) {
  if (p[0] != '~' || (p[1] && p[1] != '/'))
    return ad_xstrdup(p);
  const char *h = home_dir();
  size_t n = strlen(h) + strlen(p);
  char *s = ad_xmalloc(n);
  snprintf(s, n, "%s%s", h, p + 1);
  return s;
}
