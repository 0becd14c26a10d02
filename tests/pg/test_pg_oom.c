/* test_pg_oom.c -- every allocation the PostgreSQL connector makes, failed
 * in turn: the call reports CPOOL_ENOMEM ("out of memory") and leaks
 * nothing (the ASan build checks the leaks).
 *
 * The executable is linked with -Wl,--wrap=malloc,--wrap=calloc,
 * --wrap=realloc,--wrap=aligned_alloc,--wrap=strdup (pg_tests.cmake), which
 * reaches the calls in
 * the static libcpool.a -- the connector's own allocations. libpq's happen
 * inside libpq.so and are not affected. A countdown fails the Nth
 * allocation after arming; a sweep raises N until a run sees no failure,
 * and each case checks that failures really were injected. */
#include "pg_test.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *ptr, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);

static atomic_bool g_armed;
static atomic_long g_target, g_count, g_injected;

static bool should_fail(void)
{
    if (!atomic_load(&g_armed))
        return false;
    if (atomic_fetch_add(&g_count, 1) + 1 != atomic_load(&g_target))
        return false;
    atomic_fetch_add(&g_injected, 1);
    errno = ENOMEM;
    return true;
}

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t s) { return should_fail() ? NULL : __real_calloc(n, s); }
void *__wrap_realloc(void *p, size_t n) { return should_fail() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t a, size_t n)
{
    return should_fail() ? NULL : __real_aligned_alloc(a, n);
}
char *__wrap_strdup(const char *s) { return should_fail() ? NULL : __real_strdup(s); }

static void arm(long nth)
{
    atomic_store(&g_count, 0);
    atomic_store(&g_injected, 0);
    atomic_store(&g_target, nth);
    atomic_store(&g_armed, true);
}

/* Disarms; true when a failure was injected since arm(). */
static bool disarm(void)
{
    atomic_store(&g_armed, false);
    return atomic_load(&g_injected) > 0;
}

/* ctx_new for `target` with its nth allocation failing, for every n. */
static long sweep_ctx_new(const char *target)
{
    const cpool_connector *cx = cpool_pg_connector();
    long injected = 0;
    for (long n = 1;; n++) {
        void *ctx = (void *)&ctx;
        cpool_error e;
        memset(&e, 0, sizeof e);
        arm(n);
        int rc = cx->ctx_new(target, &ctx, &e);
        if (!disarm()) {
            ASSERT_OK_E(rc, &e);
            cx->ctx_free(ctx);
            return injected;
        }
        injected++;
        ASSERT_RC(CPOOL_ENOMEM, rc);
        ASSERT_STR_CONTAINS(e.message, "out of memory");
        ASSERT_NULL(ctx);
    }
}

TEST(ctx_new_allocations)
{
    char uri[512], ci[512];
    pg_uri_with(uri, sizeof uri, "reset_query=DISCARD%20ALL&reset_timeout_ms=100");
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d dbname=postgres reset_query='RESET ALL' "
             "reset_timeout_ms=100",
             pg_port());
    ASSERT_GE(sweep_ctx_new(uri), 4);
    ASSERT_GE(sweep_ctx_new(ci), 5);

    /* Through the pool: cpool_create fails cleanly whichever allocation
     * (the core's or the connector's) fails. */
    for (long n = 1;; n++) {
        cpool_options o;
        pg_options(&o, uri, NULL);
        cpool *p = NULL;
        cpool_error e;
        arm(n);
        int rc = cpool_create(&o, &p, &e);
        if (!disarm()) {
            ASSERT_OK(rc);
            cpool_destroy(p);
            break;
        }
        ASSERT_RC(CPOOL_ENOMEM, rc);
        ASSERT_NULL(p);
    }
}

TEST(connect_allocations)
{
    const cpool_connector *cx = cpool_pg_connector();
    void *ctx = NULL;
    cpool_error e;
    ASSERT_OK_E(cx->ctx_new(pg_uri(), &ctx, &e), &e);
    long injected = 0;
    for (long n = 1;; n++) {
        cpool_connect_args a;
        memset(&a, 0, sizeof a);
        a.target = pg_uri();
        a.cancel_fd = -1;
        a.deadline_ns = test_now_ns() + 5000000000LL;
        void *native = (void *)&native;
        arm(n);
        int rc = cx->connect(ctx, &a, &native, &e);
        if (!disarm()) {
            ASSERT_OK_E(rc, &e);
            /* The connection works, and closing it frees the state. */
            ASSERT_OK_E(cx->ping(ctx, native, test_now_ns() + 2000000000LL, &e), &e);
            cx->close(ctx, native);
            break;
        }
        injected++;
        ASSERT_RC(CPOOL_ENOMEM, rc);
        ASSERT_STR_CONTAINS(e.message, "out of memory");
        ASSERT_NULL(native);
    }
    ASSERT_GE(injected, 2); /* the state and the cancel object */
    cx->ctx_free(ctx);
}

static int noop(PGconn *conn, void *arg, cpool_error *err)
{
    (void)conn;
    (void)arg;
    (void)err;
    return 0;
}

TEST(savepoint_allocations)
{
    PGconn *conn = pg_admin();
    pg_exec_ok(conn, "BEGIN");
    long injected = 0;
    for (long n = 1;; n++) {
        cpool_error e;
        arm(n);
        int rc = cpool_pg_savepoint(conn, "sp", noop, NULL, &e);
        if (!disarm()) {
            ASSERT_OK_E(rc, &e);
            break;
        }
        injected++;
        ASSERT_RC(CPOOL_ENOMEM, rc);
        ASSERT_EQ(PQTRANS_INTRANS, PQtransactionStatus(conn)); /* nothing run */
    }
    ASSERT_GE(injected, 1);
    pg_exec_ok(conn, "ROLLBACK");
    PQfinish(conn);
}

TEST_MAIN()
