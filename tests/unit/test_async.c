/* test_async.c -- asynchronous checkouts driven like an event loop: poll
 * the completion queue's descriptor, then cpool_async_process(). Checks
 * that nothing runs inline, that an establishment does not block the
 * caller, FIFO with blocking waiters, deadlines, cancellation, close, and
 * many requests in flight on a few connections. */
#include "test.h"

#include <poll.h>

typedef struct result {
    atomic_int calls;
    int rc;
    cpool_conn *conn;
    char message[256];
    int order; /* completion order, from the shared counter */
} result;

static atomic_int g_order;

static void record(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    result *r = arg;
    r->rc = rc;
    r->conn = conn;
    if (err != NULL)
        snprintf(r->message, sizeof r->message, "%s", err->message);
    r->order = atomic_fetch_add(&g_order, 1);
    atomic_fetch_add(&r->calls, 1);
}

/* The descriptor turns readable within ms. */
static bool readable(cpool_async *q, int ms)
{
    struct pollfd pf = {cpool_async_fd(q), POLLIN, 0};
    return poll(&pf, 1, ms) == 1;
}

/* A loop's turn: wait for the descriptor, then process; until `r` has its
 * callback or the time is up. */
static void loop_until(cpool_async *q, result *r, int64_t ms)
{
    int64_t end = test_now_ms() + ms;
    while (atomic_load(&r->calls) == 0) {
        if (test_now_ms() > end)
            FAIL("no completion within %lld ms", (long long)ms);
        if (readable(q, 50))
            cpool_async_process(q);
    }
}

static void async_fixture(test_fixture *f, cpool_async **q)
{
    test_fixture_init(f);
    f->opts.maintenance_interval_ms = 1000;
    ASSERT_OK(cpool_async_new(q));
}

TEST(a_free_connection_completes_from_process_not_inline)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    result r = {0};
    ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, record, &r, NULL));
    ASSERT_EQ(0, atomic_load(&r.calls)); /* never inline */
    ASSERT_EQ(1, cpool_async_pending(q));
    ASSERT_TRUE(readable(q, 1000));
    ASSERT_EQ(1, cpool_async_process(q));
    ASSERT_EQ(1, atomic_load(&r.calls));
    ASSERT_OK(r.rc);
    ASSERT_EQ(cpool_conn_id(c), cpool_conn_id(r.conn));
    ASSERT_EQ(0, cpool_async_pending(q));
    ASSERT_FALSE(readable(q, 0));
    ASSERT_EQ(0, cpool_async_process(q));
    test_checkin(f.pool, r.conn, 0);
    ASSERT_EQ(2, test_rec_count(&f.rec, CPOOL_EV_CHECKED_OUT)); /* events as for any checkout */
    cpool_async_free(q);
    test_fixture_free(&f);
}

/* A new connection is established on a helper thread: the call returns at
 * once although the handshake takes 200 ms. */
TEST(an_establishment_does_not_block_the_caller)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.block_ms = 200;
    cpool_mem_set_failpoint(f.mem, &fp);
    result r = {0};
    int64_t t0 = test_now_ms();
    ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, record, &r, NULL));
    ASSERT_LT(test_now_ms() - t0, 100);
    loop_until(q, &r, 5000);
    ASSERT_GE(test_now_ms() - t0, 150);
    ASSERT_OK(r.rc);
    ASSERT_NOT_NULL(r.conn);
    test_checkin(f.pool, r.conn, 0);
    cpool_async_free(q);
    test_fixture_free(&f);
}

/* One FIFO queue: a blocking checkout queued first is served first, then
 * the asynchronous one. */
TEST(fifo_with_blocking_waiters)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job j;
    test_job_start(&j, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    result r = {0};
    ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, record, &r, NULL));
    ASSERT_EQ(2, test_counts(f.pool).waiting);
    ASSERT_FALSE(readable(q, 20));
    test_checkin(f.pool, held, 0); /* to the blocking one */
    test_job_join(&j, 5000);
    ASSERT_OK(j.rc);
    ASSERT_FALSE(readable(q, 20));
    test_checkin(f.pool, j.conn, 0); /* now the async one */
    loop_until(q, &r, 5000);
    ASSERT_OK(r.rc);
    test_checkin(f.pool, r.conn, 0);
    cpool_async_free(q);
    test_fixture_free(&f);
}

TEST(a_wait_ends_at_its_deadline)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    result r = {0};
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 100};
    int64_t t0 = test_now_ms();
    ASSERT_OK(cpool_checkout_async(f.pool, q, &o, record, &r, NULL));
    loop_until(q, &r, 5000);
    int64_t took = test_now_ms() - t0;
    ASSERT_RC(CPOOL_ETIMEDOUT, r.rc);
    ASSERT_NULL(r.conn);
    ASSERT_GE(took, 95);
    ASSERT_LT(took, 100 + 400); /* the background thread wakes at the deadline */
    ASSERT_EQ(0, test_counts(f.pool).waiting);
    test_checkin(f.pool, held, 0);
    cpool_async_free(q);
    test_fixture_free(&f);
}

TEST(cancel_and_close_end_queued_requests)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    cpool_cancel *token;
    ASSERT_OK(cpool_cancel_new(&token));
    result a = {0}, b = {0};
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = -1, .cancel = token};
    ASSERT_OK(cpool_checkout_async(f.pool, q, &o, record, &a, NULL));
    ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, record, &b, NULL));
    ASSERT_EQ(2, test_counts(f.pool).waiting);
    int64_t t0 = test_now_ms();
    cpool_cancel_trigger(token);
    loop_until(q, &a, 5000);
    ASSERT_LT(test_now_ms() - t0, 500); /* at once, not at a background tick */
    ASSERT_RC(CPOOL_ECANCELED, a.rc);
    ASSERT_STR_CONTAINS(a.message, "cancelled");
    ASSERT_EQ(1, test_counts(f.pool).waiting); /* b keeps its place */
    cpool_close(f.pool);
    loop_until(q, &b, 5000);
    ASSERT_RC(CPOOL_ECLOSED, b.rc);
    ASSERT_EQ(0, cpool_async_pending(q));
    ASSERT_EQ(1, atomic_load(&a.calls));
    test_checkin(f.pool, held, 0);
    cpool_cancel_free(token);
    cpool_async_free(q);
    test_fixture_free(&f);
}

/* A callback may check in and start the next checkout (a loop's request
 * pipeline); a ping validation runs on a helper. */
typedef struct chain {
    cpool *pool;
    cpool_async *q;
    int left;
    int ok;
} chain;

static void next_link(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    chain *c = arg;
    (void)err;
    if (rc != 0)
        return;
    c->ok++;
    ASSERT_OK(cpool_checkin(c->pool, conn, 0, NULL));
    if (--c->left > 0)
        ASSERT_OK(cpool_checkout_async(c->pool, c->q, NULL, next_link, c, NULL));
}

TEST(callbacks_chain_and_ping_validation_runs_on_a_helper)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    f.opts.validation = CPOOL_VALIDATE_ALWAYS;
    test_fixture_start(&f);
    chain c = {.pool = f.pool, .q = q, .left = 20};
    ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, next_link, &c, NULL));
    int64_t end = test_now_ms() + 10000;
    while (cpool_async_pending(q) > 0 && test_now_ms() < end)
        if (readable(q, 50))
            cpool_async_process(q);
    ASSERT_EQ(20, c.ok);
    ASSERT_GE(test_mem_stats(f.mem).pings, 19); /* every reuse was pinged */
    cpool_async_free(q);
    test_fixture_free(&f);
}

/* 64 requests in flight on 4 connections, one loop thread: each callback
 * returns its lease and, until 2000 are done, starts another. Nothing is
 * lost, nothing waits past the end. */
typedef struct flood {
    cpool *pool;
    cpool_async *q;
    int started, done, failed;
} flood;

static void flood_cb(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    flood *fl = arg;
    (void)err;
    fl->done++;
    if (rc != 0) {
        fl->failed++;
        return;
    }
    ASSERT_OK(cpool_checkin(fl->pool, conn, 0, NULL));
    if (fl->started < 2000) {
        fl->started++;
        ASSERT_OK(cpool_checkout_async(fl->pool, fl->q, NULL, flood_cb, fl, NULL));
    }
}

static void flood_case(bool observed)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    if (!observed)
        f.opts.on_event = NULL;
    f.opts.max_pool_size = 4;
    test_fixture_start(&f);
    flood fl = {.pool = f.pool, .q = q};
    for (int i = 0; i < 64; i++) {
        fl.started++;
        ASSERT_OK(cpool_checkout_async(f.pool, q, NULL, flood_cb, &fl, NULL));
    }
    int64_t end = test_now_ms() + 30000;
    while (cpool_async_pending(q) > 0) {
        if (test_now_ms() > end)
            FAIL("%u requests still pending", cpool_async_pending(q));
        if (readable(q, 50))
            cpool_async_process(q);
    }
    ASSERT_EQ(2000, fl.done);
    ASSERT_EQ(0, fl.failed);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.waiting);
    ASSERT_EQ(0, n.in_use);
    ASSERT_LE(n.total, 4);
    cpool_async_free(q);
    test_fixture_free(&f);
}

TEST(many_in_flight_on_few_connections) { flood_case(true); }
TEST(many_in_flight_on_few_connections_unobserved) { flood_case(false); }

/* Async requests racing with everything else: blocking checkouts on other
 * threads, clears (some interrupting), suspends, resizes, cancellations and
 * short deadlines, with some establishments slowed. Every request gets
 * exactly one callback, no lease is handed out twice, and nothing stays
 * queued. Built to run under TSan too. */
typedef struct storm {
    cpool *pool;
    cpool_async *q;
    cpool_mem *mem;
    atomic_bool stop;
    atomic_int owner[1 << 20];
    int issued, completed, ok;
    cpool_cancel *tokens[8];
    unsigned seed;
} storm;

static void claim(storm *s, cpool_conn *c)
{
    uint64_t id = cpool_conn_id(c);
    int none = 0;
    if (id >= (1u << 20) || !atomic_compare_exchange_strong(&s->owner[id], &none, 1))
        FAIL("connection %llu leased twice", (unsigned long long)id);
}

static void unclaim(storm *s, cpool_conn *c)
{
    atomic_store(&s->owner[cpool_conn_id(c)], 0);
}

typedef struct storm_req {
    storm *s;
    atomic_int calls;
} storm_req;

static void storm_cb(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    storm_req *r = arg;
    storm *s = r->s;
    (void)err;
    if (atomic_fetch_add(&r->calls, 1) != 0)
        FAIL("a request got two callbacks");
    s->completed++;
    if (rc == 0) {
        s->ok++;
        claim(s, conn);
        unclaim(s, conn);
        ASSERT_OK(cpool_checkin(s->pool, conn, rand_r(&s->seed) % 16 == 0 ? CPOOL_CHECKIN_BROKEN
                                                                           : 0,
                                NULL));
    } else if (rc != CPOOL_ETIMEDOUT && rc != CPOOL_ECLEARED && rc != CPOOL_ECANCELED &&
               rc != CPOOL_ECONNECT) {
        FAIL("async checkout: %s", cpool_err_name(rc));
    }
    free(r);
}

static void *blocking_main(void *arg)
{
    storm *s = arg;
    unsigned seed = 99;
    while (!atomic_load(&s->stop)) {
        cpool_conn *c = NULL;
        int rc = cpool_checkout(s->pool, 20, &c, NULL);
        if (rc == 0) {
            claim(s, c);
            test_sleep_us(rand_r(&seed) % 300);
            unclaim(s, c);
            test_checkin(s->pool, c, 0);
        } else {
            test_sleep_us(100);
        }
    }
    return NULL;
}

static void *storm_chaos(void *arg)
{
    storm *s = arg;
    unsigned seed = 7;
    while (!atomic_load(&s->stop)) {
        test_sleep_us(500 + rand_r(&seed) % 3000);
        switch (rand_r(&seed) % 6) {
        case 0: cpool_clear(s->pool, rand_r(&seed) % 2 ? CPOOL_CLEAR_INTERRUPT_IN_USE : 0,
                            NULL, NULL);
                cpool_ready(s->pool, NULL);
                break;
        case 1:
            if (cpool_suspend(s->pool, NULL) == 0) {
                test_sleep_us(rand_r(&seed) % 2000);
                cpool_resume(s->pool, NULL);
            }
            break;
        case 2: cpool_resize(s->pool, 1 + (uint32_t)(rand_r(&seed) % 4), 0, NULL); break;
        case 3: cpool_cancel_trigger(s->tokens[rand_r(&seed) % 8]); break;
        case 4: {
            cpool_mem_failpoint fp;
            memset(&fp, 0, sizeof fp);
            fp.times = 2;
            fp.block_ms = 5;
            cpool_mem_set_failpoint(s->mem, &fp);
            break;
        }
        default: cpool_recycle(s->pool, NULL, NULL); break;
        }
    }
    cpool_ready(s->pool, NULL);
    cpool_resume(s->pool, NULL);
    return NULL;
}

static void storm_case(bool observed)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    if (!observed)
        f.opts.on_event = NULL;
    f.opts.max_pool_size = 3;
    f.opts.maintenance_interval_ms = 5;
    test_fixture_start(&f);
    storm *s = calloc(1, sizeof *s);
    ASSERT_NOT_NULL(s);
    s->pool = f.pool;
    s->q = q;
    s->mem = f.mem;
    s->seed = 3;
    for (int i = 0; i < 8; i++)
        ASSERT_OK(cpool_cancel_new(&s->tokens[i]));
    pthread_t blk[4], chaos;
    for (int i = 0; i < 4; i++)
        TEST_THREAD_START(&blk[i], blocking_main, s);
    TEST_THREAD_START(&chaos, storm_chaos, s);
    int64_t end = test_now_ms() + 1500;
    while (test_now_ms() < end) {
        while (s->issued - s->completed < 32) {
            storm_req *r = calloc(1, sizeof *r);
            ASSERT_NOT_NULL(r);
            r->s = s;
            int pick = rand_r(&s->seed) % 10;
            cpool_checkout_opts o = {.struct_size = sizeof o,
                                     .timeout_ms = pick < 3 ? 5 : 2000,
                                     .cancel = pick == 9 ? s->tokens[rand_r(&s->seed) % 8]
                                                         : NULL};
            ASSERT_OK(cpool_checkout_async(s->pool, q, &o, storm_cb, r, NULL));
            s->issued++;
        }
        if (readable(q, 10))
            cpool_async_process(q);
    }
    atomic_store(&s->stop, true);
    pthread_join(chaos, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(blk[i], NULL);
    int64_t drain = test_now_ms() + 10000;
    while (cpool_async_pending(q) > 0) {
        if (test_now_ms() > drain)
            FAIL("%u async requests never completed", cpool_async_pending(q));
        if (readable(q, 50))
            cpool_async_process(q);
    }
    ASSERT_EQ(s->issued, s->completed);
    ASSERT_GT(s->ok, 50);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.waiting);
    ASSERT_COUNTS_CONSISTENT(n);
    fprintf(stderr, "async storm: %d requests, %d served\n", s->issued, s->ok);
    cpool_async_free(q);
    test_fixture_free(&f);
    for (int i = 0; i < 8; i++)
        cpool_cancel_free(s->tokens[i]);
    free(s);
}

TEST(storm_with_chaos) { storm_case(true); }
TEST(storm_with_chaos_unobserved) { storm_case(false); }

TEST(bad_requests_are_refused_without_a_callback)
{
    test_fixture f;
    cpool_async *q;
    async_fixture(&f, &q);
    test_fixture_start(&f);
    result r = {0};
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_async(NULL, q, NULL, record, &r, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_async(f.pool, NULL, NULL, record, &r, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_async(f.pool, q, NULL, NULL, &r, &e));
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = -1, .tenant = "nobody"};
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_async(f.pool, q, &o, record, &r, &e));
    ASSERT_EQ(0, cpool_async_pending(q));
    ASSERT_EQ(0, cpool_async_process(q));
    ASSERT_EQ(0, atomic_load(&r.calls));
    test_fixture_free(&f);
    /* Without a background thread nothing would end a wait at its deadline. */
    test_fixture_init(&f);
    test_fixture_start(&f); /* the fixture's pools have none */
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_async(f.pool, q, NULL, record, &r, &e));
    ASSERT_STR_CONTAINS(e.message, "background thread");
    cpool_async_free(q);
    cpool_async_free(NULL);
    ASSERT_EQ(-1, cpool_async_fd(NULL));
    ASSERT_RC(CPOOL_EINVAL, cpool_async_new(NULL));
    test_fixture_free(&f);
}

TEST_MAIN()
