/* test_hooks.c -- the application's hooks around connections: when each
 * runs, that none runs under the pool's lock, and that a failing one closes
 * the connection ("hook") while the checkout carries on. */
#include "test.h"

typedef struct hook_log {
    cpool *pool; /* set once created: hooks read its counts (the lock) */
    atomic_int connects, leases, returns, closes;
    atomic_int fail_connects;  /* the next N after_connect calls fail */
    atomic_int fail_leases, fail_returns;
    atomic_int last_close_reason;
    atomic_ullong last_close_id;
} hook_log;

/* Reading the counts takes the pool's lock: a hook called under it would
 * deadlock here (and the case time out). */
static void touch_pool(hook_log *h)
{
    if (h->pool != NULL)
        (void)test_counts(h->pool);
}

static int take_one(atomic_int *n)
{
    int v = atomic_load(n);
    while (v > 0 && !atomic_compare_exchange_weak(n, &v, v - 1))
        ;
    return v > 0;
}

static int on_connect(cpool_conn *c, void *ctx, cpool_error *err)
{
    hook_log *h = ctx;
    touch_pool(h);
    atomic_fetch_add(&h->connects, 1);
    if (take_one(&h->fail_connects)) {
        cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                        "prepare failed");
        return CPOOL_EIO;
    }
    /* What a real hook does: set up the session (SET, PREPARE). */
    cpool_mem_conn_set_session(cpool_conn_native(c), 42);
    return 0;
}

static int on_lease(cpool_conn *c, void *ctx, cpool_error *err)
{
    hook_log *h = ctx;
    (void)c;
    touch_pool(h);
    atomic_fetch_add(&h->leases, 1);
    if (take_one(&h->fail_leases)) {
        cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0, "SET ROLE failed");
        return CPOOL_EIO;
    }
    return 0;
}

static int on_return(cpool_conn *c, void *ctx, cpool_error *err)
{
    hook_log *h = ctx;
    (void)c;
    touch_pool(h);
    atomic_fetch_add(&h->returns, 1);
    if (take_one(&h->fail_returns)) {
        cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0, "RESET failed");
        return CPOOL_EIO;
    }
    return 0;
}

static void on_close(void *native, uint64_t id, int reason, void *ctx)
{
    hook_log *h = ctx;
    (void)native;
    touch_pool(h);
    atomic_fetch_add(&h->closes, 1);
    atomic_store(&h->last_close_reason, reason);
    atomic_store(&h->last_close_id, id);
}

static void hooked(test_fixture *f, hook_log *h, bool observed)
{
    test_fixture_init(f);
    if (!observed)
        f->opts.on_event = NULL;
    f->opts.hooks = (cpool_hooks){.after_connect = on_connect,
                                  .before_lease = on_lease,
                                  .after_return = on_return,
                                  .before_close = on_close,
                                  .ctx = h};
    f->pool = test_pool_create(&f->opts);
    h->pool = f->pool;
    test_ready(f->pool);
}

static void each_hook_at_its_step(bool observed)
{
    test_fixture f;
    hook_log h = {0};
    hooked(&f, &h, observed);
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_EQ(1, atomic_load(&h.connects));
    ASSERT_EQ(1, atomic_load(&h.leases));
    ASSERT_EQ(42, cpool_mem_conn_session(cpool_conn_native(c)));
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, atomic_load(&h.returns));
    for (int i = 0; i < 5; i++) { /* reused: after_connect does not run again */
        c = test_checkout(f.pool);
        test_checkin(f.pool, c, 0);
    }
    ASSERT_EQ(1, atomic_load(&h.connects));
    ASSERT_EQ(6, atomic_load(&h.leases));
    ASSERT_EQ(6, atomic_load(&h.returns));
    /* A broken lease is not handed to after_return. */
    c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, CPOOL_CHECKIN_BROKEN);
    ASSERT_EQ(6, atomic_load(&h.returns));
    ASSERT_EQ(1, atomic_load(&h.closes));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, atomic_load(&h.last_close_reason));
    ASSERT_EQ(id, atomic_load(&h.last_close_id));
    c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    cpool_close(f.pool);
    ASSERT_EQ(2, atomic_load(&h.closes));
    ASSERT_EQ(CPOOL_CLOSE_POOL_CLOSED, atomic_load(&h.last_close_reason));
    test_fixture_free(&f);
}

TEST(each_hook_runs_at_its_step) { each_hook_at_its_step(true); }
TEST(each_hook_runs_at_its_step_lock_free) { each_hook_at_its_step(false); }

/* A failing after_connect closes the new connection ("hook") without
 * counting against the backend, and the checkout gets the next one. */
TEST(after_connect_failure_closes_and_the_checkout_goes_on)
{
    test_fixture f;
    hook_log h = {0};
    atomic_store(&h.fail_connects, 1);
    test_fixture_init(&f);
    f.opts.backoff_base_ms = 1000; /* a counted failure would stall 1 s */
    f.opts.hooks = (cpool_hooks){.after_connect = on_connect, .before_close = on_close,
                                 .ctx = &h};
    f.pool = test_pool_create(&f.opts);
    h.pool = f.pool;
    test_ready(f.pool);
    int64_t t0 = test_now_ms();
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_LT(test_now_ms() - t0, 900);
    ASSERT_EQ(2, cpool_conn_id(c));
    ASSERT_EQ(2, atomic_load(&h.connects));
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, 1, &ev));
    ASSERT_EQ(CPOOL_CLOSE_HOOK, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_STR_EQ("prepare failed", ev.error.message);
    ASSERT_EQ(CPOOL_CLOSE_HOOK, atomic_load(&h.last_close_reason));
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_HOOK]);
    ASSERT_EQ(0, s.connect_fail_streak);
    ASSERT_STR_EQ("hook", cpool_close_reason_name(CPOOL_CLOSE_HOOK));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* One that always fails: a checkout ends at its deadline, and the refill
 * stops until the next run instead of looping. */
TEST(after_connect_always_failing_is_bounded)
{
    test_fixture f;
    hook_log h = {0};
    atomic_store(&h.fail_connects, 1 << 30);
    test_fixture_init(&f);
    f.opts.min_pool_size = 2;
    f.opts.hooks = (cpool_hooks){.after_connect = on_connect, .ctx = &h};
    f.pool = test_pool_create(&f.opts);
    test_ready(f.pool);
    cpool_conn *c = NULL;
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 100, &c, &e));
    ASSERT_LT(test_now_ms() - t0, 100 + 400);
    ASSERT_STR_CONTAINS(e.message, "a hook failed on every connection tried; the last: "
                                   "prepare failed");
    int before = atomic_load(&h.connects);
    ASSERT_OK(cpool_maintain(f.pool, &e));
    ASSERT_EQ(before + 1, atomic_load(&h.connects)); /* one attempt per run */
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

static void lease_and_return_failures(bool observed)
{
    test_fixture f;
    hook_log h = {0};
    hooked(&f, &h, observed);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0); /* one available (or parked) */
    atomic_store(&h.fail_leases, 1);
    c = test_checkout(f.pool); /* the first fails before_lease: a new one */
    ASSERT_EQ(2, cpool_conn_id(c));
    ASSERT_EQ(CPOOL_CLOSE_HOOK, atomic_load(&h.last_close_reason));
    ASSERT_EQ(1, atomic_load(&h.last_close_id));
    atomic_store(&h.fail_returns, 1);
    test_checkin(f.pool, c, 0); /* fails after_return: closed */
    ASSERT_EQ(2, atomic_load(&h.closes));
    ASSERT_EQ(2, atomic_load(&h.last_close_id));
    ASSERT_EQ(CPOOL_CLOSE_HOOK, atomic_load(&h.last_close_reason));
    ASSERT_EQ(0, test_counts(f.pool).total);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(2, s.closed[CPOOL_CLOSE_HOOK]);
    test_fixture_free(&f);
}

TEST(before_lease_and_after_return_failures_close) { lease_and_return_failures(true); }
TEST(before_lease_and_after_return_failures_close_lock_free)
{
    lease_and_return_failures(false);
}

/* The handoff to a queued checkout runs before_lease too. */
TEST(before_lease_runs_on_a_handoff)
{
    test_fixture f;
    hook_log h = {0};
    hooked(&f, &h, false);
    cpool_conn *held = test_checkout(f.pool);
    ASSERT_OK(cpool_resize(f.pool, 1, 0, NULL));
    test_job j;
    test_job_start(&j, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_checkin(f.pool, held, 0);
    test_job_join(&j, 5000);
    ASSERT_OK(j.rc);
    ASSERT_EQ(2, atomic_load(&h.leases));
    test_checkin(f.pool, j.conn, 0);
    test_fixture_free(&f);
}

TEST_MAIN()
