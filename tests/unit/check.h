/*
 * tests/unit/check.h: the assertion macros the C unit tests share. A failed
 * check prints where and what, counts, and lets the test go on; main returns
 * failures != 0.
 */
#ifndef AD_TEST_CHECK_H
#define AD_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                        \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

#define CHECK_STR(a, b)                                                                            \
  do {                                                                                             \
    const char *a_ = (a), *b_ = (b);                                                               \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                       \
      fprintf(stderr, "%s:%d: got '%s', want '%s'\n", __FILE__, __LINE__, a_ ? a_ : "(null)",      \
              b_ ? b_ : "(null)");                                                                 \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

#endif
