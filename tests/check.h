/* check.h -- the test framework every test executable shares, nothing
 * about pools in it.
 *
 * A test executable is one .c file holding its cases; CTest runs each
 * case in its own process (`test_pool foreign_checkin_rejected`), so a crash,
 * a hang or a leak is charged to one case only. This header gives:
 *   - assertions that print the expression, file:line and both values, then
 *     end the process with status 1 (from any thread; see test_fail);
 *   - the cases (TEST, TEST_TAGGED) and the dispatcher (TEST_MAIN);
 *   - real-time helpers (sleep, monotonic now) used only as upper bounds;
 *   - starting a thread that fails the test when it cannot start.
 * The fixtures live in test.h. Everything is static inline so each
 * executable is a single file. */
#ifndef CPOOL_CHECK_H
#define CPOOL_CHECK_H

#include <cpool/cpool.h> /* ASSERT_RC and ASSERT_OK name the error codes */

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ failing */

#if defined(__GNUC__)
#define TEST_PRINTF_(f, a) __attribute__((format(printf, f, a)))
#else
#define TEST_PRINTF_(f, a)
#endif

/* Prints the failure and ends the process at once. _Exit rather than exit:
 * a failing case may still have threads inside the pool, and running atexit
 * handlers (or LeakSanitizer) under them would bury the real message. */
static inline _Noreturn void test_fail(const char *file, int line,
                                       const char *fmt, ...) TEST_PRINTF_(3, 4);
static inline _Noreturn void test_fail(const char *file, int line,
                                       const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _Exit(1);
}

#define FAIL(...) test_fail(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT_TRUE(expr)                                                     \
    do {                                                                      \
        if (!(expr))                                                          \
            FAIL("ASSERT_TRUE(%s): false", #expr);                            \
    } while (0)

#define ASSERT_FALSE(expr)                                                    \
    do {                                                                      \
        if (expr)                                                             \
            FAIL("ASSERT_FALSE(%s): true", #expr);                            \
    } while (0)

/* Integer comparisons. Both sides are evaluated once and printed; ids and
 * generations are uint64_t but small in every test, so long long shows them
 * faithfully. */
#define TEST_CMP_(op, a, b)                                                   \
    do {                                                                      \
        long long t_lhs_ = (long long)(a);                                    \
        long long t_rhs_ = (long long)(b);                                    \
        if (!(t_lhs_ op t_rhs_))                                              \
            FAIL("expected %s %s %s: %lld vs %lld", #a, #op, #b, t_lhs_,      \
                 t_rhs_);                                                     \
    } while (0)

#define ASSERT_EQ(expected, actual) TEST_CMP_(==, expected, actual)
#define ASSERT_NE(a, b) TEST_CMP_(!=, a, b)
#define ASSERT_LT(a, b) TEST_CMP_(<, a, b)
#define ASSERT_LE(a, b) TEST_CMP_(<=, a, b)
#define ASSERT_GT(a, b) TEST_CMP_(>, a, b)
#define ASSERT_GE(a, b) TEST_CMP_(>=, a, b)

/* Return codes, printed by name. */
#define ASSERT_RC(expected, expr)                                             \
    do {                                                                      \
        int t_exp_ = (expected);                                              \
        int t_got_ = (expr);                                                  \
        if (t_exp_ != t_got_)                                                 \
            FAIL("%s: expected %s, got %s (%d)", #expr,                       \
                 cpool_err_name(t_exp_), cpool_err_name(t_got_), t_got_);     \
    } while (0)

#define ASSERT_OK(expr) ASSERT_RC(CPOOL_OK, expr)

/* Like ASSERT_OK, and also prints the message of the call's cpool_error. */
#define ASSERT_OK_E(expr, errp)                                               \
    do {                                                                      \
        int t_got_ = (expr);                                                  \
        if (t_got_ != CPOOL_OK)                                               \
            FAIL("%s: expected CPOOL_OK, got %s (%d): \"%s\"", #expr,         \
                 cpool_err_name(t_got_), t_got_, (errp)->message);            \
    } while (0)

#define ASSERT_NULL(ptr)                                                      \
    do {                                                                      \
        const void *t_p_ = (const void *)(ptr);                               \
        if (t_p_ != NULL)                                                     \
            FAIL("expected %s == NULL, got %p", #ptr, t_p_);                  \
    } while (0)

#define ASSERT_NOT_NULL(ptr)                                                  \
    do {                                                                      \
        if ((const void *)(ptr) == NULL)                                      \
            FAIL("expected %s != NULL", #ptr);                                \
    } while (0)

#define ASSERT_STR_EQ(expected, actual)                                       \
    do {                                                                      \
        const char *t_se_ = (expected);                                       \
        const char *t_sa_ = (actual);                                         \
        if (t_se_ == NULL || t_sa_ == NULL || strcmp(t_se_, t_sa_) != 0)      \
            FAIL("expected %s == %s: \"%s\" vs \"%s\"", #expected, #actual,   \
                 t_se_ ? t_se_ : "(null)", t_sa_ ? t_sa_ : "(null)");         \
    } while (0)

#define ASSERT_STR_CONTAINS(haystack, needle)                                 \
    do {                                                                      \
        const char *t_h_ = (haystack);                                        \
        const char *t_n_ = (needle);                                          \
        if (t_h_ == NULL || strstr(t_h_, t_n_) == NULL)                       \
            FAIL("expected %s to contain \"%s\": \"%s\"", #haystack, t_n_,    \
                 t_h_ ? t_h_ : "(null)");                                     \
    } while (0)

/* ------------------------------------------------------------------ time */

static inline int64_t test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t test_now_ms(void) { return test_now_ns() / 1000000; }

static inline void test_sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline void test_sleep_ms(int64_t ms) { test_sleep_us(ms * 1000); }

/* Polls `cond` every millisecond for at most `timeout_ms` of real time. The
 * timeout is only an upper bound for something expected to happen soon;
 * reaching it is the failure. */
#define WAIT_UNTIL(cond, timeout_ms)                                          \
    do {                                                                      \
        int64_t t_deadline_ = test_now_ms() + (timeout_ms);                   \
        while (!(cond)) {                                                     \
            if (test_now_ms() > t_deadline_)                                  \
                FAIL("WAIT_UNTIL(%s): still false after %lld ms", #cond,      \
                     (long long)(timeout_ms));                                \
            test_sleep_ms(1);                                                 \
        }                                                                     \
    } while (0)

/* ------------------------------------------------------------------ cases */

/* Exit status of a case that cannot run in this build (CTest's
 * SKIP_RETURN_CODE). */
#define TEST_SKIP 77

/* A case is written once, with TEST(name) or TEST_TAGGED(name, "tags")
 * before its body; a constructor adds it to the executable's list, and CMake
 * registers one CTest test per line of `prog --list` (tests/cases.cmake).
 * Tags are words the suite's CMake maps to test properties (a fixture, a
 * serial run, a longer timeout); the C file only says what the case needs.
 * A case compiled out by #if is neither listed nor registered. */
typedef struct test_case {
    const char *name;
    const char *tags;
    void (*fn)(void);
    int line;
    struct test_case *next;
} test_case;

static test_case *test_cases_;

/* Kept in source order whatever order the constructors run in, so the
 * listing (and a tag's case numbering) follows the file. */
static inline void test_register_(test_case *c)
{
    test_case **p = &test_cases_;
    while (*p != NULL && (*p)->line < c->line)
        p = &(*p)->next;
    c->next = *p;
    *p = c;
}

#define TEST_TAGGED(name, tag_words)                                          \
    static void name(void);                                                   \
    __attribute__((constructor)) static void name##_register_(void)           \
    {                                                                         \
        static test_case c = {#name, tag_words, name, __LINE__, NULL};        \
        test_register_(&c);                                                   \
    }                                                                         \
    static void name(void)

#define TEST(name) TEST_TAGGED(name, "")

/* `prog CASE` runs one case; `prog --list` prints one line per case, its
 * name then its tags. */
static inline int test_main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (const test_case *c = test_cases_; c != NULL; c = c->next)
            printf("%s%s%s\n", c->name, c->tags[0] ? " " : "", c->tags);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE | --list\n", argv[0]);
        return 2;
    }
    for (const test_case *c = test_cases_; c != NULL; c = c->next) {
        if (strcmp(argv[1], c->name) == 0) {
            c->fn();
            fprintf(stderr, "ok %s\n", c->name);
            return 0;
        }
    }
    fprintf(stderr, "no case named %s\n", argv[1]);
    return 2;
}

#define TEST_MAIN()                                                           \
    int main(int argc, char **argv) { return test_main(argc, argv); }

/* ------------------------------------------------------------------ threads */

#define TEST_THREAD_START(th, fn, arg)                                        \
    do {                                                                      \
        int t_trc_ = pthread_create(th, NULL, fn, arg);                       \
        if (t_trc_ != 0)                                                      \
            FAIL("pthread_create(%s): %s", #fn, strerror(t_trc_));            \
    } while (0)

#endif /* CPOOL_CHECK_H */
