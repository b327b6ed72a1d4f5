/*
 * common/ad.h: the few things every autodist module shares.
 *
 * - ad_status: every function that can fail on bad input or a failed job returns
 *   one; the message (carrying the input's location) is kept per thread and read
 *   with ad_error_message(). Only main() turns a status into an exit code.
 * - AD_ASSERT: a broken invariant (a bug, never bad input) aborts with file:line.
 * - ad_arena: compile-time data (IR, names, shapes) is allocated in arenas that
 *   are freed at once.
 * - small growable arrays (AD_VEC) and checked allocation.
 */
#ifndef AD_COMMON_H
#define AD_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define AD_VERSION "0.1.0"

typedef enum ad_status {
  AD_OK = 0,
  AD_ERR_INPUT = -1,   /* bad input or usage: exit code 2 */
  AD_ERR_JOB = -2,     /* the job failed while running: exit code 1 */
} ad_status;

/* Records a formatted message for the calling thread and returns `st`. */
ad_status ad_fail(ad_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ad_status ad_failv(ad_status st, const char *fmt, va_list ap);
/* The message of the last failure on this thread ("" when none). */
const char *ad_error_message(void);
/* Prefixes the current message with "prefix: " (e.g. a file name). */
void ad_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *ad_status_str(ad_status st);
/* Exit code for a status: 0, 2 (input) or 1 (job). */
int ad_status_exit_code(ad_status st);

#define AD_TRY(expr)                \
  do {                              \
    ad_status ad_try_st_ = (expr);  \
    if (ad_try_st_ != AD_OK)        \
      return ad_try_st_;            \
  } while (0)

_Noreturn void ad_assert_fail(const char *file, int line, const char *expr);
#define AD_ASSERT(c) ((c) ? (void)0 : ad_assert_fail(__FILE__, __LINE__, #c))

/* Checked allocation: aborts on out-of-memory (not an input error). */
void *ad_xmalloc(size_t n);
void *ad_xcalloc(size_t n, size_t sz);
void *ad_xrealloc(void *p, size_t n);
char *ad_xstrdup(const char *s);
/* "~" and "~/x" become $HOME and $HOME/x, as a shell would (AutoDist's paths
 * went through os.path.expanduser); "~user" and other paths are copied
 * unchanged. Returns a malloc'd string. */
char *ad_expand_home(const char *p);

/* Arena: bump allocator, zeroed memory, freed all at once. */
typedef struct ad_arena ad_arena;
ad_arena *ad_arena_create(void);
void *ad_arena_alloc(ad_arena *a, size_t n);
char *ad_arena_strdup(ad_arena *a, const char *s);
char *ad_arena_printf(ad_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ad_arena_destroy(ad_arena *a);

/* Growable array of T: AD_VEC(int) v = {0}; AD_VEC_PUSH(v, 3); free(v.data). */
#define AD_VEC(T) struct { T *data; int len, cap; }
#define AD_VEC_PUSH(v, x)                                                          \
  do {                                                                             \
    if ((v).len == (v).cap) {                                                      \
      (v).cap = (v).cap ? 2 * (v).cap : 8;                                         \
      (v).data = ad_xrealloc((v).data, (size_t)(v).cap * sizeof(*(v).data));       \
    }                                                                              \
    (v).data[(v).len++] = (x);                                                     \
  } while (0)

/* Whole-file helpers. ad_file_read returns AD_ERR_INPUT naming the path. */
ad_status ad_file_read(const char *path, char **data, size_t *len);
/* Writes atomically: to path.tmp, then rename; never leaves a half file. */
ad_status ad_file_write(const char *path, const void *data, size_t len);

/* SHA-256 of a buffer, as 64 lowercase hex digits plus NUL. */
void ad_sha256_hex(const void *data, size_t len, char out[65]);

/* Levenshtein distance, for "did you mean" suggestions. */
int ad_edit_distance(const char *a, const char *b);

#endif
