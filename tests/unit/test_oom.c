/* test_oom.c -- allocation failures, injected SQLite-style.
 *
 * The executable is linked with -Wl,--wrap=malloc,--wrap=calloc,
 * --wrap=realloc,--wrap=aligned_alloc,--wrap=strdup,--wrap=strndup (see
 * unit_tests.cmake), so
 * every call to those functions from the objects linked into it -- this file
 * and the static libcpool.a, core and in-memory connector alike -- goes
 * through the __wrap_* functions below. glibc's own internal allocations
 * (stdio, pthread_create) are not affected, nor are a sanitizer runtime's.
 * Under ASan/TSan __real_malloc is the sanitizer's interceptor, so leaks and
 * misuse are still caught.
 *
 * A countdown makes the Nth counted allocation after arming fail once
 * (NULL, errno ENOMEM). Counting can be limited to threads that opted in
 * (tl_eligible), and the test's own event recorder runs with counting
 * suppressed (tl_suppress), so that the injected failure always lands in the
 * library.
 *
 * Every case also checks that an injection really happened: a build in
 * which the wrapping silently stopped working fails instead of passing
 * vacuously. */
#include "test.h"

/* ------------------------------------------------------------ the wrappers */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *ptr, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

enum { OOM_ALL_THREADS = 0, OOM_ELIGIBLE_THREADS = 1 };

static atomic_bool g_armed;
static atomic_int g_scope;        /* OOM_* */
static atomic_long g_target;      /* the counted allocation that fails (1-based) */
static atomic_long g_count;       /* counted allocations since arming */
static atomic_long g_injected;    /* failures injected since arming */
static atomic_long g_seen_total;  /* every wrapped allocation, armed or not */
static _Thread_local bool tl_eligible;
static _Thread_local int tl_suppress;

static bool oom_should_fail(void)
{
    atomic_fetch_add_explicit(&g_seen_total, 1, memory_order_relaxed);
    if (tl_suppress > 0 || !atomic_load(&g_armed))
        return false;
    if (atomic_load(&g_scope) == OOM_ELIGIBLE_THREADS && !tl_eligible)
        return false;
    long n = atomic_fetch_add(&g_count, 1) + 1;
    if (n != atomic_load(&g_target))
        return false;
    atomic_fetch_add(&g_injected, 1);
    errno = ENOMEM;
    return true;
}

void *__wrap_malloc(size_t n)
{
    return oom_should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return oom_should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *ptr, size_t n)
{
    return oom_should_fail() ? NULL : __real_realloc(ptr, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
    return oom_should_fail() ? NULL : __real_aligned_alloc(align, n);
}

char *__wrap_strdup(const char *s)
{
    return oom_should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return oom_should_fail() ? NULL : __real_strndup(s, n);
}

/* Arms the countdown: the nth counted allocation from now on fails. */
static void oom_arm(long nth, int scope)
{
    atomic_store(&g_armed, false);
    atomic_store(&g_scope, scope);
    atomic_store(&g_target, nth);
    atomic_store(&g_count, 0);
    atomic_store(&g_injected, 0);
    atomic_store(&g_armed, true);
}

static void oom_disarm(void) { atomic_store(&g_armed, false); }
static long oom_injected(void) { return atomic_load(&g_injected); }
static long oom_count(void) { return atomic_load(&g_count); }

/* The recorder allocates (it grows its array); its allocations are the
 * test's, never the library's, so they are neither counted nor failed. */
static void oom_rec_on_event(const cpool_event *ev, void *ctx)
{
    tl_suppress++;
    test_rec_on_event(ev, ctx);
    tl_suppress--;
}

static void oom_fixture_init(test_fixture *f, bool observed)
{
    test_fixture_init(f);
    /* A local out-of-memory says nothing about the server: even a pool that
     * clears itself on connect errors must not clear for it. */
    f->opts.clear_on_connect_error = true;
    if (observed)
        f->opts.on_event = oom_rec_on_event;
    else
        f->opts.on_event = NULL;
}

/* An error a call reported: code set, a message, both consistent. */
#define ASSERT_CLEAN_ERROR(expected, rc, e)                                   \
    do {                                                                      \
        ASSERT_RC(expected, rc);                                              \
        ASSERT_RC(expected, (e).code);                                        \
        ASSERT_TRUE((e).message[0] != '\0');                                  \
        ASSERT_TRUE(memchr((e).message, '\0', sizeof (e).message) != NULL);   \
    } while (0)

/* ------------------------------------------------------------------ create */

static void create_sweep(const char *target, const char *address,
                         int64_t maintenance_interval_ms)
{
    cpool_mem *mem = test_mem_create();
    long n;
    long successful_allocs = -1;
    for (n = 1; n < 64; n++) {
        cpool_options o;
        test_options(&o, mem, NULL);
        o.target = target;
        o.address = address;
        o.maintenance_interval_ms = maintenance_interval_ms;
        cpool *p = (cpool *)&o; /* not NULL: create must reset it */
        cpool_error e;
        memset(&e, 0, sizeof e);
        oom_arm(n, OOM_ALL_THREADS);
        int rc = cpool_create(&o, &p, &e);
        long injected = oom_injected();
        long count = oom_count();
        oom_disarm();
        if (injected == 0) {
            ASSERT_OK_E(rc, &e);
            ASSERT_NOT_NULL(p);
            successful_allocs = count;
            /* The pool works after all those failed attempts. */
            test_ready(p);
            cpool_conn *c = test_checkout(p);
            test_checkin(p, c, 0);
            cpool_destroy(p);
            break;
        }
        ASSERT_EQ(1, injected);
        if (rc == CPOOL_OK)
            FAIL("allocation %ld failed inside cpool_create, which still "
                 "returned CPOOL_OK", n);
        ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, rc, e);
        ASSERT_STR_CONTAINS(e.message, "out of memory");
        ASSERT_NULL(p);
    }
    /* The pool, its target, its address and its host: at least four, or the
     * allocation wrapping is not in effect and this case proved nothing. */
    ASSERT_GE(successful_allocs, 4);
    ASSERT_EQ(successful_allocs + 1, n);
    ASSERT_EQ(0, test_mem_stats(mem).open);
    cpool_mem_destroy(mem);
}

TEST(create_fails_cleanly)
{
    /* host:port -> strndup for the host. */
    create_sweep("mem://unit", "unit-host:4242", -1);
    /* No address: the connector names it ("mem:unit"), host by strdup. */
    create_sweep("mem://unit", NULL, -1);
    /* A unix socket path, and a background thread to start. */
    create_sweep("mem:///tmp/sock", "/tmp/sock", 1000);
    /* An IPv6 literal. */
    create_sweep("mem://v6", "[::1]:27017", -1);
}

/* ------------------------------------------------------------------ checkout */

static void checkout_oom_run(bool observed)
{
    test_fixture f;
    oom_fixture_init(&f, observed);
    test_fixture_start(&f);
    cpool_conn *c = NULL;
    cpool_error e;
    int rc;

    /* 1. The connection struct itself (the free list is empty in a fresh
     *    pool): the core fails the checkout with CPOOL_ENOMEM before the
     *    connector is ever called. */
    memset(&e, 0, sizeof e);
    oom_arm(1, OOM_ALL_THREADS);
    rc = cpool_checkout(f.pool, 2000, &c, &e);
    oom_disarm();
    ASSERT_EQ(1, oom_injected());
    ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, rc, e);
    ASSERT_STR_CONTAINS(e.message, "out of memory");
    ASSERT_NULL(c);
    cpool_counts k = test_counts(f.pool);
    ASSERT_COUNTS_CONSISTENT(k);
    ASSERT_EQ(0, k.total);
    ASSERT_EQ(0, k.pending);
    ASSERT_EQ(0, k.waiting);
    ASSERT_EQ(CPOOL_STATE_READY, k.state);
    ASSERT_EQ(0, test_mem_stats(f.mem).connects);
    if (observed) {
        ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CONN_CREATED));
        ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
        test_event ev;
        ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
        ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
        ASSERT_TRUE(ev.has_error);
        ASSERT_RC(CPOOL_ENOMEM, ev.error.code);
    }

    /* 2. The struct is allocated, the connector's own allocation fails: the
     *    connector reports CPOOL_ENOMEM (native ENOMEM, handshake phase, no
     *    labels) and the checkout passes it through unchanged. */
    for (int round = 0; round < 2; round++) {
        /* Round 0: a fresh struct (allocation 1), the connector's is 2.
         * Round 1: the struct comes from the free list, the connector's
         * allocation is the first. */
        long nth = round == 0 ? 2 : 1;
        cpool_mem_stats before = test_mem_stats(f.mem);
        memset(&e, 0, sizeof e);
        c = NULL;
        oom_arm(nth, OOM_ALL_THREADS);
        rc = cpool_checkout(f.pool, 2000, &c, &e);
        long count = oom_count();
        oom_disarm();
        ASSERT_EQ(1, oom_injected());
        ASSERT_EQ(nth, count);
        ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, rc, e);
        ASSERT_NULL(c);
        ASSERT_EQ(ENOMEM, e.native);
        ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
        ASSERT_EQ(CPOOL_FAIL_OTHER, e.kind);
        ASSERT_EQ(0, e.labels);
        cpool_mem_stats after = test_mem_stats(f.mem);
        ASSERT_EQ(before.connects + 1, after.connects);
        ASSERT_EQ(before.failures + 1, after.failures);
        ASSERT_EQ(0, after.open);
        ASSERT_EQ(before.closes, after.closes); /* nothing was opened */
        k = test_counts(f.pool);
        ASSERT_COUNTS_CONSISTENT(k);
        ASSERT_EQ(0, k.total);
        ASSERT_EQ(0, k.pending);
        ASSERT_EQ(0, k.waiting);
        ASSERT_EQ(CPOOL_STATE_READY, k.state);
        ASSERT_EQ(0, k.generation); /* an OOM does not clear the pool */
        if (observed) {
            test_event ev;
            ASSERT_EQ((size_t)round + 1,
                      test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));
            ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED,
                                      (size_t)round + 1, &ev));
            ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
            ASSERT_RC(CPOOL_ENOMEM, ev.error.code);
        }
    }

    /* 3. Nothing armed: the pool serves again. */
    c = test_checkout(f.pool);
    ASSERT_EQ(1, test_counts(f.pool).in_use);
    ASSERT_EQ(1, test_mem_stats(f.mem).open);
    test_checkin(f.pool, c, 0);
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST(checkout_establishment_oom)
{
    checkout_oom_run(false);
    checkout_oom_run(true);
}

/* ------------------------------------------------------------------ waiter */

/* A connector that is the in-memory one, except that connect() waits at a
 * gate the test opens, so an establishment can be held pending. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int entered;
} g_gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};

static int gated_connect(void *ctx, cpool_connect_args *a, void **native,
                         cpool_error *err)
{
    pthread_mutex_lock(&g_gate.mu);
    g_gate.entered++;
    pthread_cond_broadcast(&g_gate.cv);
    int64_t deadline = test_now_ms() + 10000;
    while (!g_gate.open) {
        if (test_now_ms() > deadline)
            FAIL("gated connect: the gate never opened");
        pthread_mutex_unlock(&g_gate.mu);
        test_sleep_ms(1);
        pthread_mutex_lock(&g_gate.mu);
    }
    pthread_mutex_unlock(&g_gate.mu);
    return cpool_mem_connector()->connect(ctx, a, native, err);
}

static cpool_connector g_gated;

static const cpool_connector *gated_connector(void)
{
    g_gated = *cpool_mem_connector();
    g_gated.connect = gated_connect;
    g_gate.open = false;
    g_gate.entered = 0;
    return &g_gated;
}

static void gate_open(void)
{
    pthread_mutex_lock(&g_gate.mu);
    g_gate.open = true;
    pthread_mutex_unlock(&g_gate.mu);
}

/* A checkout on its own thread whose allocations are eligible for failure. */
static void *eligible_job_main(void *arg)
{
    tl_eligible = true;
    test_job *j = arg;
    j->start_ns = test_now_ns();
    j->rc = cpool_checkout(j->pool, j->timeout_ms, &j->conn, &j->err);
    j->end_ns = test_now_ns();
    atomic_store(&j->done, true);
    return NULL;
}

static void oom_waiter_fails_on_grant(void)
{
    /* The core's own allocation for a waiter: maxConnecting 1, so a second
     * checkout queues while the first one's establishment is pending. When
     * that establishment succeeds, grant_capacity_locked() creates the
     * waiter's connection on the establishing thread -- with an empty free
     * list, a calloc. That calloc fails: the waiter must be failed with
     * CPOOL_ENOMEM at once, not left queued. */
    test_fixture f;
    oom_fixture_init(&f, false);
    f.opts.connector = gated_connector();
    f.opts.max_pool_size = 2;
    f.opts.max_connecting = 1;
    test_fixture_start(&f);

    test_job first, waiter;
    memset(&first, 0, sizeof first);
    first.pool = f.pool;
    first.timeout_ms = 5000;
    atomic_init(&first.done, false);
    TEST_THREAD_START(&first.thread, eligible_job_main, &first);
    WAIT_UNTIL(test_counts(f.pool).pending == 1, 5000);

    test_job_start(&waiter, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);

    /* The first thread's allocations from here on: the connector's
     * connection (1), then the waiter's connection struct (2). */
    oom_arm(2, OOM_ELIGIBLE_THREADS);
    gate_open();
    test_job_join(&first, 5000);
    test_job_join(&waiter, 2000);
    long injected = oom_injected();
    long count = oom_count();
    oom_disarm();

    ASSERT_OK_E(first.rc, &first.err);
    ASSERT_NOT_NULL(first.conn);
    ASSERT_EQ(1, injected);
    ASSERT_EQ(2, count);
    ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, waiter.rc, waiter.err);
    ASSERT_NULL(waiter.conn);
    ASSERT_EQ(1, g_gate.entered); /* the waiter never reached the connector */
    cpool_counts k = test_counts(f.pool);
    ASSERT_COUNTS_CONSISTENT(k);
    ASSERT_EQ(1, k.total);
    ASSERT_EQ(1, k.in_use);
    ASSERT_EQ(0, k.pending);
    ASSERT_EQ(0, k.waiting);
    ASSERT_EQ(CPOOL_STATE_READY, k.state);

    /* The capacity the failed grant did not use is still there. */
    cpool_conn *c = test_checkout(f.pool);
    k = test_counts(f.pool);
    ASSERT_EQ(2, k.total);
    ASSERT_EQ(0, k.pending);
    test_checkin(f.pool, c, 0);
    test_checkin(f.pool, first.conn, 0);
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

static void oom_waiter_after_broken_checkin(void)
{
    /* The scenario as first written: maxPoolSize 1, the lease comes back
     * broken, the waiter gets the freed capacity. The closed connection's
     * struct goes to the free list before the capacity is granted, so the
     * core reuses it and allocates nothing: the one allocation left is the
     * connector's, made by the waiter's own establishment. That is the one
     * that fails, and the waiter must get the connector's CPOOL_ENOMEM
     * promptly. */
    test_fixture f;
    oom_fixture_init(&f, true);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);

    cpool_conn *held = test_checkout(f.pool);
    test_job waiter;
    test_job_start(&waiter, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    cpool_mem_stats before = test_mem_stats(f.mem);

    oom_arm(1, OOM_ALL_THREADS);
    test_checkin(f.pool, held, CPOOL_CHECKIN_BROKEN);
    test_job_join(&waiter, 2000);
    long injected = oom_injected();
    long count = oom_count();
    oom_disarm();

    ASSERT_EQ(1, injected);
    ASSERT_EQ(1, count); /* the struct was reused: no other allocation */
    ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, waiter.rc, waiter.err);
    ASSERT_EQ(ENOMEM, waiter.err.native);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, waiter.err.phase);
    ASSERT_NULL(waiter.conn);
    cpool_mem_stats after = test_mem_stats(f.mem);
    ASSERT_EQ(before.closes + 1, after.closes); /* the broken lease */
    ASSERT_EQ(before.connects + 1, after.connects);
    ASSERT_EQ(before.failures + 1, after.failures);
    ASSERT_EQ(0, after.open);
    cpool_counts k = test_counts(f.pool);
    ASSERT_COUNTS_CONSISTENT(k);
    ASSERT_EQ(0, k.total);
    ASSERT_EQ(0, k.pending);
    ASSERT_EQ(0, k.waiting);
    ASSERT_EQ(CPOOL_STATE_READY, k.state);
    /* The lease closed with reason error, the waiter's connection too. */
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));

    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST(waiter_granted_oom)
{
    oom_waiter_fails_on_grant();
    oom_waiter_after_broken_checkin();
}

/* ------------------------------------------------------------------ lb */

TEST(lb_service_entry_oom)
{
    static const char *const ids[] = {"svc-a"};

    /* Count the allocations of a first checkout in a load-balanced pool:
     * the struct, the connector's connection, the service entry -- the
     * entry is made after the handshake, so it is the last one. */
    long per_checkout;
    {
        test_fixture s;
        oom_fixture_init(&s, false);
        s.opts.load_balanced = true;
        cpool_mem_set_service_ids(s.mem, ids, 1);
        test_fixture_start(&s);
        oom_arm(1000000, OOM_ALL_THREADS); /* counts, never reached */
        cpool_conn *c = test_checkout(s.pool);
        per_checkout = oom_count();
        oom_disarm();
        ASSERT_STR_EQ("svc-a", cpool_conn_service_id(c));
        test_checkin(s.pool, c, 0);
        test_fixture_free(&s);
    }
    ASSERT_GE(per_checkout, 3);

    test_fixture f;
    oom_fixture_init(&f, true);
    f.opts.load_balanced = true;
    f.opts.clear_on_connect_error = true; /* must still not pause a LB pool */
    cpool_mem_set_service_ids(f.mem, ids, 1);
    test_fixture_start(&f);
    cpool_mem_stats before = test_mem_stats(f.mem);

    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    oom_arm(per_checkout, OOM_ALL_THREADS);
    int rc = cpool_checkout(f.pool, 2000, &c, &e);
    long count = oom_count();
    oom_disarm();
    ASSERT_EQ(1, oom_injected());
    ASSERT_EQ(per_checkout, count);
    ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, rc, e);
    ASSERT_STR_CONTAINS(e.message, "out of memory");
    ASSERT_NULL(c);

    /* The established connection was closed through the connector. */
    cpool_mem_stats after = test_mem_stats(f.mem);
    ASSERT_EQ(before.connects + 1, after.connects);
    ASSERT_EQ(before.closes + 1, after.closes);
    ASSERT_EQ(0, after.open);
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_TRUE(ev.has_error);
    ASSERT_RC(CPOOL_ENOMEM, ev.error.code);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));

    cpool_counts k = test_counts(f.pool);
    ASSERT_COUNTS_CONSISTENT(k);
    ASSERT_EQ(0, k.total);
    ASSERT_EQ(0, k.pending);
    ASSERT_EQ(CPOOL_STATE_READY, k.state);

    /* The pool stays ready and the next checkout gets the service. */
    c = test_checkout(f.pool);
    ASSERT_STR_EQ("svc-a", cpool_conn_service_id(c));
    ASSERT_EQ(1, test_mem_stats(f.mem).open);
    /* The new entry is a real one: clearing the service makes c stale. */
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cpool_clear_service(f.pool, "svc-a", 0, NULL, &e), &e);
    size_t stale = test_rec_count_closed(&f.rec, CPOOL_CLOSE_STALE);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(stale + 1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_STALE));
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

/* ------------------------------------------------------------------ sweep */

typedef enum sweep_mode {
    SWEEP_PLAIN = 0,  /* unobserved: the parking fast path */
    SWEEP_OBSERVED,   /* events on */
    SWEEP_LB,         /* load-balanced, two services */
    SWEEP_BACKGROUND, /* a maintenance thread populating minPoolSize */
    SWEEP_MODES_
} sweep_mode;

static const char *const sweep_names[] = {"plain", "observed", "lb", "background"};

/* A call that may allocate: success or a clean CPOOL_ENOMEM. */
#define SWEEP_ALLOWED(rc, e, what)                                            \
    do {                                                                      \
        if ((rc) != CPOOL_OK) {                                               \
            if ((rc) != CPOOL_ENOMEM)                                         \
                FAIL("%s (%s, N=%ld): %s: expected OK or CPOOL_ENOMEM, got "  \
                     "%s: \"%s\"", what, sweep_names[mode], nth, #rc,         \
                     cpool_err_name(rc), (e).message);                        \
            ASSERT_CLEAN_ERROR(CPOOL_ENOMEM, rc, e);                          \
        }                                                                     \
    } while (0)

static void sweep_check_counts(cpool *p, sweep_mode mode, uint32_t held)
{
    cpool_counts k = test_counts(p);
    ASSERT_COUNTS_CONSISTENT(k);
    ASSERT_EQ(0, k.waiting);
    if (mode == SWEEP_BACKGROUND)
        return; /* population runs concurrently */
    ASSERT_EQ(0, k.pending);
    ASSERT_EQ(held, k.in_use);
}

static int sweep_checkout(cpool *p, cpool_conn **c, sweep_mode mode, long nth)
{
    cpool_error e;
    memset(&e, 0, sizeof e);
    *c = NULL;
    int rc = cpool_checkout(p, 2000, c, &e);
    SWEEP_ALLOWED(rc, e, "checkout");
    if (rc == CPOOL_OK)
        ASSERT_NOT_NULL(*c);
    else
        ASSERT_NULL(*c);
    return rc;
}

static void sweep_checkin(cpool *p, cpool_conn *c, unsigned flags)
{
    if (c == NULL)
        return;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cpool_checkin(p, c, flags, &e), &e);
}

/* One run with the nth allocation failing; returns whether it was hit. */
static bool sweep_run(sweep_mode mode, long nth)
{
    static const char *const ids[] = {"svc-a", "svc-b"};
    test_fixture f;
    oom_fixture_init(&f, mode != SWEEP_PLAIN);
    if (mode == SWEEP_LB) {
        f.opts.load_balanced = true;
        cpool_mem_set_service_ids(f.mem, ids, 2);
    }
    f.opts.min_pool_size = 1;
    if (mode == SWEEP_BACKGROUND) {
        f.opts.min_pool_size = 2;
        f.opts.maintenance_interval_ms = 5;
    }
    cpool_error e;
    int rc;

    oom_arm(nth, OOM_ALL_THREADS);
    cpool *p = NULL;
    memset(&e, 0, sizeof e);
    rc = cpool_create(&f.opts, &p, &e);
    SWEEP_ALLOWED(rc, e, "create");
    if (rc != CPOOL_OK) {
        ASSERT_NULL(p);
    } else {
        ASSERT_NOT_NULL(p);
        f.pool = p;
        memset(&e, 0, sizeof e);
        ASSERT_OK_E(cpool_ready(p, &e), &e);
        sweep_check_counts(p, mode, 0);

        cpool_conn *c[3];
        uint32_t held = 0;
        for (int i = 0; i < 3; i++) {
            if (sweep_checkout(p, &c[i], mode, nth) == CPOOL_OK)
                held++;
            sweep_check_counts(p, mode, held);
        }
        sweep_checkin(p, c[0], 0);
        sweep_checkin(p, c[1], CPOOL_CHECKIN_BROKEN);
        sweep_checkin(p, c[2], 0);
        sweep_check_counts(p, mode, 0);

        memset(&e, 0, sizeof e);
        if (mode == SWEEP_LB) {
            ASSERT_OK_E(cpool_clear_service(p, "svc-a", 0, NULL, &e), &e);
        } else {
            ASSERT_OK_E(cpool_clear(p, 0, NULL, &e), &e);
            memset(&e, 0, sizeof e);
            ASSERT_OK_E(cpool_ready(p, &e), &e);
        }
        sweep_check_counts(p, mode, 0);

        cpool_conn *d;
        sweep_checkout(p, &d, mode, nth);
        sweep_checkin(p, d, 0);
        sweep_check_counts(p, mode, 0);

        /* Population to minPoolSize: an allocation failure there is
         * silent (retried at the next run) but must leave nothing pending. */
        memset(&e, 0, sizeof e);
        ASSERT_OK_E(cpool_maintain(p, &e), &e);
        sweep_check_counts(p, mode, 0);

        sweep_checkout(p, &d, mode, nth);
        cpool_close(p);
        sweep_checkin(p, d, 0); /* closed at check-in */
        cpool_counts k = test_counts(p);
        ASSERT_COUNTS_CONSISTENT(k);
        ASSERT_EQ(CPOOL_STATE_CLOSED, k.state);
        if (mode != SWEEP_BACKGROUND) {
            ASSERT_EQ(0, k.total);
            ASSERT_EQ(0, test_mem_stats(f.mem).open);
        }
        c[0] = NULL;
        memset(&e, 0, sizeof e);
        rc = cpool_checkout(p, 0, &c[0], &e);
        ASSERT_CLEAN_ERROR(CPOOL_ECLOSED, rc, e);
    }
    cpool_destroy(f.pool);
    f.pool = NULL;
    bool hit = oom_injected() > 0;
    oom_disarm();
    cpool_mem_stats s = test_mem_stats(f.mem);
    if (s.open != 0)
        FAIL("%s, N=%ld: %llu connections still open after destroy",
             sweep_names[mode], nth, (unsigned long long)s.open);
    ASSERT_EQ(s.connects - s.failures, s.closes + s.abandons);
    test_fixture_free(&f);
    return hit;
}

TEST(sweep)
{
    for (int m = 0; m < SWEEP_MODES_; m++) {
        long nth = 1;
        while (sweep_run((sweep_mode)m, nth)) {
            nth++;
            if (nth > 2000)
                FAIL("%s: still injecting at N=%ld", sweep_names[m], nth);
        }
        /* create alone allocates 4 times, and the scenario establishes
         * several connections: fewer means the wrapping is not in effect. */
        if (nth < 8)
            FAIL("%s: only %ld allocations seen", sweep_names[m], nth - 1);
        fprintf(stderr, "sweep %s: %ld allocation sites failed in turn\n",
                sweep_names[m], nth - 1);
    }
}

TEST_MAIN()
