/* test_tenants.c -- per-tenant caps and guaranteed minimums in one pool,
 * and fair service of queued checkouts across tenants. */
#include "test.h"

static cpool *tenant_pool(cpool_mem **mem, uint32_t max)
{
    *mem = test_mem_create();
    cpool_options o;
    test_options(&o, *mem, NULL);
    o.max_pool_size = max;
    return test_pool_create(&o);
}

static int take(cpool *p, const char *tenant, int64_t timeout_ms, cpool_conn **c,
                cpool_error *e)
{
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = timeout_ms,
                             .tenant = tenant};
    return cpool_checkout_with(p, &o, c, e);
}

TEST(tenant_cap_enforced)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 4);
    ASSERT_OK(cpool_tenant_set(p, "a", 2, 0, NULL));
    ASSERT_OK(cpool_tenant_set(p, "b", 0, 0, NULL));
    test_ready(p);
    cpool_conn *a1, *a2, *a3 = NULL, *b1;
    cpool_error e;
    ASSERT_OK(take(p, "a", 0, &a1, NULL));
    ASSERT_OK(take(p, "a", 0, &a2, NULL));
    ASSERT_RC(CPOOL_ETENANT, take(p, "a", 50, &a3, &e));
    ASSERT_NULL(a3);
    ASSERT_STR_CONTAINS(e.message, "tenant \"a\" holds 2 of its 2 connections");
    ASSERT_OK(take(p, "b", 0, &b1, NULL)); /* another tenant is not held up */
    cpool_tenant_stats s;
    ASSERT_OK(cpool_get_tenant_stats(p, "a", &s));
    ASSERT_EQ(2, s.in_use);
    ASSERT_EQ(2, s.checkouts_ok);
    ASSERT_EQ(1, s.limit_timeouts);
    ASSERT_EQ(2, s.max_in_use);
    test_checkin(p, a1, 0);
    ASSERT_OK(cpool_get_tenant_stats(p, "a", &s));
    ASSERT_EQ(1, s.in_use);
    ASSERT_OK(take(p, "a", 0, &a3, NULL));
    test_checkin(p, a2, 0);
    test_checkin(p, a3, 0);
    test_checkin(p, b1, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

typedef struct waiter_arg {
    cpool *p;
    const char *tenant;
    cpool_conn *c;
    int rc;
    atomic_bool done;
} waiter_arg;

static void *tenant_waiter(void *x)
{
    waiter_arg *a = x;
    a->rc = take(a->p, a->tenant, 5000, &a->c, NULL);
    atomic_store(&a->done, true);
    return NULL;
}

/* A queued checkout of a tenant at its cap does not block a later one of
 * another tenant, and is itself served when its tenant's lease returns. */
TEST(capped_waiter_skipped_not_starved)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 2);
    ASSERT_OK(cpool_tenant_set(p, "a", 1, 0, NULL));
    ASSERT_OK(cpool_tenant_set(p, "b", 0, 0, NULL));
    test_ready(p);
    cpool_conn *a1;
    ASSERT_OK(take(p, "a", 0, &a1, NULL));
    cpool_conn *spare;
    ASSERT_OK(take(p, "b", 0, &spare, NULL));
    test_checkin(p, spare, 0); /* one available connection */
    /* a2 waits: its tenant is at its cap although a connection is free. */
    pthread_t th;
    waiter_arg arg = {p, "a", NULL, -100, false};
    TEST_THREAD_START(&th, tenant_waiter, &arg);
    WAIT_UNTIL(test_counts(p).waiting == 1, 2000);
    cpool_conn *b1;
    ASSERT_OK(take(p, "b", 0, &b1, NULL)); /* not behind a2 */
    ASSERT_FALSE(atomic_load(&arg.done));
    test_checkin(p, a1, 0); /* a's lease returns: a2 gets it */
    pthread_join(th, NULL);
    ASSERT_OK(arg.rc);
    test_checkin(p, arg.c, 0);
    test_checkin(p, b1, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

TEST(minimum_reserved_for_tenant)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 3);
    ASSERT_OK(cpool_tenant_set(p, "bulk", 0, 0, NULL));
    ASSERT_OK(cpool_tenant_set(p, "api", 0, 2, NULL));
    test_ready(p);
    cpool_conn *x, *y = NULL, *api1, *api2;
    cpool_error e;
    ASSERT_OK(take(p, "bulk", 0, &x, NULL));
    ASSERT_RC(CPOOL_ETIMEDOUT, take(p, "bulk", 20, &y, &e)); /* 2 are api's */
    ASSERT_RC(CPOOL_ETIMEDOUT, take(p, NULL, 20, &y, &e));   /* untenanted too */
    ASSERT_OK(take(p, "api", 0, &api1, NULL));
    ASSERT_OK(take(p, "api", 0, &api2, NULL));
    test_checkin(p, api1, 0);
    ASSERT_RC(CPOOL_ETIMEDOUT, take(p, "bulk", 20, &y, &e)); /* still reserved */
    test_checkin(p, api2, 0);
    test_checkin(p, x, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

typedef struct hog {
    cpool *p;
    const char *tenant;
    int64_t hold_ms, run_ms, timeout_ms;
    int ok, failed;
    int64_t worst_wait_ms;
    pthread_t th;
} hog;

static void *hog_main(void *arg)
{
    hog *h = arg;
    int64_t end = test_now_ms() + h->run_ms;
    while (test_now_ms() < end) {
        cpool_conn *c = NULL;
        int64_t t0 = test_now_ms();
        int rc = take(h->p, h->tenant, h->timeout_ms, &c, NULL);
        int64_t waited = test_now_ms() - t0;
        if (waited > h->worst_wait_ms)
            h->worst_wait_ms = waited;
        if (rc != 0) {
            h->failed++;
            continue;
        }
        h->ok++;
        test_sleep_ms(h->hold_ms);
        ASSERT_OK(cpool_checkin(h->p, c, 0, NULL));
    }
    return NULL;
}

/* Tenant A saturates the pool with long holds from many threads; tenant
 * B's checkouts still succeed within their deadline, with a cap on A, and
 * with a guaranteed minimum for B. */
static void saturate(bool cap_a)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 4);
    ASSERT_OK(cpool_tenant_set(p, "a", cap_a ? 3 : 0, 0, NULL));
    ASSERT_OK(cpool_tenant_set(p, "b", 0, cap_a ? 0 : 1, NULL));
    test_ready(p);
    hog hogs[9];
    for (int i = 0; i < 8; i++)
        hogs[i] = (hog){p, "a", 100, 1200, 5000, 0, 0, 0, 0};
    hogs[8] = (hog){p, "b", 5, 1000, 300, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++)
        TEST_THREAD_START(&hogs[i].th, hog_main, &hogs[i]);
    test_sleep_ms(50); /* A holds everything it may */
    TEST_THREAD_START(&hogs[8].th, hog_main, &hogs[8]);
    for (int i = 0; i < 9; i++)
        pthread_join(hogs[i].th, NULL);
    ASSERT_EQ(0, hogs[8].failed);
    ASSERT_GT(hogs[8].ok, 20);
    ASSERT_LT(hogs[8].worst_wait_ms, 300);
    int a_ok = 0;
    for (int i = 0; i < 8; i++)
        a_ok += hogs[i].ok;
    ASSERT_GT(a_ok, 20); /* A kept working too */
    cpool_tenant_stats s;
    ASSERT_OK(cpool_get_tenant_stats(p, "b", &s));
    ASSERT_EQ((uint64_t)hogs[8].ok, s.checkouts_ok);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

TEST(saturating_tenant_capped_does_not_starve_other)
{
    saturate(true);
}

TEST(saturating_tenant_does_not_take_reserved_minimum)
{
    saturate(false);
}

TEST(tenant_configuration_errors)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 4);
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_set(p, "a", 2, 3, &e));
    ASSERT_STR_CONTAINS(e.message, "min_reserved 3 exceeds max_in_use 2");
    ASSERT_OK(cpool_tenant_set(p, "a", 0, 3, NULL));
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_set(p, "b", 0, 2, &e));
    ASSERT_STR_CONTAINS(e.message, "exceed maxPoolSize 4");
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_set(p, "", 1, 0, &e));
    test_ready(p);
    ASSERT_OK(cpool_tenant_set(p, "late", 1, 0, NULL)); /* added later: fine */
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_EINVAL, take(p, "nobody", 0, &c, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown tenant \"nobody\"");
    ASSERT_STR_EQ("a", cpool_tenant_name(p, 0));
    ASSERT_STR_EQ("late", cpool_tenant_name(p, 1));
    ASSERT_NULL(cpool_tenant_name(p, 2));
    cpool_tenant_stats s;
    ASSERT_RC(CPOOL_EINVAL, cpool_get_tenant_stats(p, "nobody", &s));
    cpool_destroy(p);
    cpool_mem_destroy(mem);

    /* The first tenant must be declared while the pool is paused. */
    p = tenant_pool(&mem, 4);
    test_ready(p);
    ASSERT_RC(CPOOL_ESTATE, cpool_tenant_set(p, "a", 1, 0, &e));
    ASSERT_RC(CPOOL_EINVAL, take(p, "a", 0, &c, &e));
    ASSERT_STR_CONTAINS(e.message, "no tenants");
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* A tenant's lease closed (not returned) lets its queued checkout take a
 * connection that is already available, even when none may be created. */
TEST(closed_lease_frees_tenant_for_available_connection)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.max_pool_size = 3;
    o.backoff_base_ms = 10000; /* no new connection for 10 s */
    o.backoff_jitter = 0;
    cpool *p = test_pool_create(&o);
    ASSERT_OK(cpool_tenant_set(p, "a", 1, 0, NULL));
    test_ready(p);
    cpool_conn *a1, *other, *x = NULL;
    ASSERT_OK(take(p, "a", 200, &a1, NULL));
    ASSERT_OK(take(p, NULL, 200, &other, NULL));
    test_fail_next_handshake(mem, CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK);
    ASSERT_RC(CPOOL_ECONNECT, take(p, NULL, 200, &x, NULL)); /* backoff now */
    test_checkin(p, other, 0); /* one available */
    pthread_t th;
    waiter_arg arg = {p, "a", NULL, -100, false};
    TEST_THREAD_START(&th, tenant_waiter, &arg);
    WAIT_UNTIL(test_counts(p).waiting == 1, 2000);
    test_checkin(p, a1, CPOOL_CHECKIN_BROKEN); /* closed: a may take one */
    pthread_join(th, NULL);
    ASSERT_OK(arg.rc);
    test_checkin(p, arg.c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* The first tenant cannot be declared on a pool that has served, even
 * while it is paused by a clear. */
TEST(first_tenant_refused_after_clear)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 4);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    test_checkin(p, c, 0);
    ASSERT_OK(cpool_clear(p, 0, NULL, NULL));
    cpool_error e;
    ASSERT_RC(CPOOL_ESTATE, cpool_tenant_set(p, "a", 1, 0, &e));
    test_ready(p);
    c = test_checkout(p);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* Declares tenants a and b, without limits, and readies the pool. */
static void ready_with_tenants_ab(cpool *p)
{
    ASSERT_OK(cpool_tenant_set(p, "a", 0, 0, NULL));
    ASSERT_OK(cpool_tenant_set(p, "b", 0, 0, NULL));
    test_ready(p);
}

static uint64_t session_of(cpool_conn *c)
{
    return cpool_mem_conn_session(cpool_conn_native(c));
}

static cpool_mem_stats mem_stats(cpool_mem *mem)
{
    cpool_mem_stats s;
    cpool_mem_get_stats(mem, &s);
    return s;
}

/* What one tenant leaves in a session, the next tenant never sees: the
 * connection's session is reset in full (discard) before it changes
 * hands; within a tenant it carries over, as documented. */
TEST(session_never_crosses_tenants)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 1);
    ready_with_tenants_ab(p);
    cpool_conn *c;
    ASSERT_OK(take(p, "a", 1000, &c, NULL));
    cpool_mem_conn_set_session(cpool_conn_native(c), 0xA);
    test_checkin(p, c, 0);
    ASSERT_OK(take(p, "a", 1000, &c, NULL));
    ASSERT_EQ(0xA, session_of(c)); /* same tenant: kept, no reset */
    ASSERT_EQ(0, mem_stats(mem).discards);
    test_checkin(p, c, 0);

    ASSERT_OK(take(p, "b", 1000, &c, NULL));
    ASSERT_EQ(0, session_of(c));
    ASSERT_EQ(1, mem_stats(mem).discards);
    cpool_mem_conn_set_session(cpool_conn_native(c), 0xB);
    test_checkin(p, c, 0);

    ASSERT_OK(take(p, NULL, 1000, &c, NULL)); /* the unnamed tenant is one too */
    ASSERT_EQ(0, session_of(c));
    test_checkin(p, c, 0);
    ASSERT_EQ(2, mem_stats(mem).discards);
    ASSERT_EQ(1, mem_stats(mem).connects); /* reset, not reconnected */

    cpool_tenant_stats s;
    ASSERT_OK(cpool_get_tenant_stats(p, "a", &s));
    ASSERT_EQ(0, s.switched);
    ASSERT_EQ(1, s.affine);
    ASSERT_OK(cpool_get_tenant_stats(p, "b", &s));
    ASSERT_EQ(1, s.switched);
    ASSERT_EQ(0, s.affine);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* A tenant is handed a connection it used last when there is one, even
 * when another tenant's was returned more recently: no reset is needed. */
TEST(tenant_gets_its_own_connection_back)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 2);
    ready_with_tenants_ab(p);
    cpool_conn *a1, *b1;
    ASSERT_OK(take(p, "a", 1000, &a1, NULL));
    ASSERT_OK(take(p, "b", 1000, &b1, NULL));
    uint64_t a_id = cpool_mem_conn_id(cpool_conn_native(a1));
    uint64_t b_id = cpool_mem_conn_id(cpool_conn_native(b1));
    test_checkin(p, a1, 0);
    test_checkin(p, b1, 0); /* the newest available: b's */
    ASSERT_OK(take(p, "a", 1000, &a1, NULL));
    ASSERT_EQ(a_id, cpool_mem_conn_id(cpool_conn_native(a1)));
    ASSERT_OK(take(p, "b", 1000, &b1, NULL));
    ASSERT_EQ(b_id, cpool_mem_conn_id(cpool_conn_native(b1)));
    ASSERT_EQ(0, mem_stats(mem).discards);
    test_checkin(p, a1, 0);
    test_checkin(p, b1, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* A connection handed straight from a check-in to another tenant's queued
 * checkout is reset on the way too. */
TEST(handoff_to_other_tenant_resets_session)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 1);
    ready_with_tenants_ab(p);
    cpool_conn *a1;
    ASSERT_OK(take(p, "a", 1000, &a1, NULL));
    cpool_mem_conn_set_session(cpool_conn_native(a1), 0xA);
    pthread_t th;
    waiter_arg arg = {p, "b", NULL, -100, false};
    TEST_THREAD_START(&th, tenant_waiter, &arg);
    WAIT_UNTIL(test_counts(p).waiting == 1, 2000);
    test_checkin(p, a1, 0);
    pthread_join(th, NULL);
    ASSERT_OK(arg.rc);
    ASSERT_EQ(0, session_of(arg.c));
    ASSERT_EQ(1, mem_stats(mem).discards);
    test_checkin(p, arg.c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* A reset that fails closes the connection, and the checkout goes on with
 * a new one; a connector that cannot reset a session has its connection
 * closed (reason "session") instead of lent across. */
TEST(session_reset_failure_or_absence_closes)
{
    cpool_mem *mem;
    cpool *p = tenant_pool(&mem, 2);
    ready_with_tenants_ab(p);
    cpool_conn *c;
    ASSERT_OK(take(p, "a", 1000, &c, NULL));
    cpool_mem_conn_set_session(cpool_conn_native(c), 0xA);
    cpool_mem_conn_hang(cpool_conn_native(c)); /* its discard will fail */
    test_checkin(p, c, 0);
    ASSERT_OK(take(p, "b", 1000, &c, NULL));
    ASSERT_EQ(0, session_of(c));
    ASSERT_EQ(2, mem_stats(mem).connects);
    cpool_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    ASSERT_OK(cpool_get_stats(p, &st));
    ASSERT_EQ(1, st.closed[CPOOL_CLOSE_ERROR]);
    test_checkin(p, c, 0);
    cpool_destroy(p);

    cpool_connector cx = *cpool_mem_connector();
    cx.discard = NULL;
    cpool_options o;
    test_options(&o, mem, NULL);
    o.connector = &cx;
    o.max_pool_size = 1;
    p = test_pool_create(&o);
    ready_with_tenants_ab(p);
    ASSERT_OK(take(p, "a", 1000, &c, NULL));
    uint64_t first = cpool_mem_conn_id(cpool_conn_native(c));
    cpool_mem_conn_set_session(cpool_conn_native(c), 0xA);
    test_checkin(p, c, 0);
    ASSERT_OK(take(p, "b", 1000, &c, NULL));
    ASSERT_TRUE(cpool_mem_conn_id(cpool_conn_native(c)) != first);
    ASSERT_EQ(0, session_of(c));
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    ASSERT_OK(cpool_get_stats(p, &st));
    ASSERT_EQ(1, st.closed[CPOOL_CLOSE_SESSION]);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* ------------------------------------------------------------ budgets */

/* A pool with tenants "a" and "b" on the fake clock, without a background
 * thread (cases run cpool_maintain themselves). */
static void budget_fixture(test_fixture *f, uint32_t max)
{
    test_fixture_init(f);
    f->opts.clock = &f->clk.clock;
    f->opts.max_pool_size = max;
    f->pool = test_pool_create(&f->opts);
    ASSERT_OK(cpool_tenant_set(f->pool, "a", 0, 0, NULL));
    ASSERT_OK(cpool_tenant_set(f->pool, "b", 0, 0, NULL));
    test_ready(f->pool);
}

static cpool_tenant_stats tstats(cpool *p, const char *t)
{
    cpool_tenant_stats s;
    ASSERT_OK(cpool_get_tenant_stats(p, t, &s));
    return s;
}

static int lease_and_return(cpool *p, const char *tenant, cpool_error *e)
{
    cpool_conn *c = NULL;
    /* Not 0: a connection another tenant used last is reset first, within
     * the deadline (the fake clock does not move meanwhile). */
    int rc = take(p, tenant, 1000, &c, e);
    if (rc == 0)
        test_checkin(p, c, 0);
    return rc;
}

/* 10 checkouts/s with a burst of 2: two at once, then one per 100 ms; an
 * empty bucket refuses at once, and only its own tenant. */
TEST(rate_budget_refuses_at_once_and_refills)
{
    test_fixture f;
    budget_fixture(&f, 4);
    cpool_tenant_budget b = {.struct_size = sizeof b, .rate = 10, .burst = 2};
    ASSERT_OK(cpool_tenant_budget_set(f.pool, "a", &b, NULL));
    cpool_error e;
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_RC(CPOOL_ERATE, lease_and_return(f.pool, "a", &e));
    ASSERT_STR_CONTAINS(e.message, "tenant \"a\" is over its rate of 10 checkouts/s (burst 2)");
    ASSERT_OK(lease_and_return(f.pool, "b", NULL)); /* others are not limited */
    test_clock_advance_ms(&f.clk, f.pool, 99);
    ASSERT_RC(CPOOL_ERATE, lease_and_return(f.pool, "a", NULL));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_RC(CPOOL_ERATE, lease_and_return(f.pool, "a", NULL));
    test_clock_advance_ms(&f.clk, f.pool, 10000); /* a quiet spell refills to the burst */
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_RC(CPOOL_ERATE, lease_and_return(f.pool, "a", NULL));

    cpool_tenant_stats t = tstats(f.pool, "a");
    ASSERT_EQ(9, t.checkouts);
    ASSERT_EQ(5, t.checkouts_ok);
    ASSERT_EQ(4, t.rate_refusals);
    ASSERT_TRUE(t.budget.rate == 10 && t.budget.burst == 2);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(4, s.checkout_failures[-CPOOL_ERATE]);
    ASSERT_EQ(4, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
    ASSERT_STR_EQ("CPOOL_ERATE", cpool_err_name(CPOOL_ERATE));
    /* Lifting the budget lifts the limit. */
    b.rate = 0;
    ASSERT_OK(cpool_tenant_budget_set(f.pool, "a", &b, NULL));
    for (int i = 0; i < 5; i++)
        ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    test_fixture_free(&f);
}

/* A lease held past its tenant's max_hold_ms is reported once, with the
 * tenant, and (with reclaim) taken back. */
TEST(hold_budget_reports_then_reclaims)
{
    test_fixture f;
    budget_fixture(&f, 2);
    cpool_tenant_budget b = {.struct_size = sizeof b, .max_hold_ms = 100};
    ASSERT_OK(cpool_tenant_budget_set(f.pool, "a", &b, NULL));
    cpool_conn *a = NULL, *other = NULL;
    ASSERT_OK(take(f.pool, "a", 0, &a, NULL));
    ASSERT_OK(take(f.pool, "b", 0, &other, NULL));
    uint64_t id = cpool_conn_id(a);
    test_clock_advance_ms(&f.clk, f.pool, 99);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_OK(cpool_maintain(f.pool, NULL)); /* once per lease */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED, 0, &ev));
    ASSERT_EQ(id, ev.connection_id);
    ASSERT_TRUE(ev.over_tenant_limit);
    ASSERT_STR_EQ("a", ev.tenant);
    ASSERT_EQ(1, tstats(f.pool, "a").holds_exceeded);
    ASSERT_EQ(0, tstats(f.pool, "b").holds_exceeded); /* b has no hold limit */
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(0, s.leaks_suspected); /* the pool's own threshold is off */
    ASSERT_EQ(1, tstats(f.pool, "a").in_use); /* reported, not reclaimed */
    test_checkin(f.pool, a, 0);

    b.reclaim = true;
    ASSERT_OK(cpool_tenant_budget_set(f.pool, "a", &b, NULL));
    ASSERT_OK(take(f.pool, "a", 0, &a, NULL));
    id = cpool_conn_id(a);
    test_clock_advance_ms(&f.clk, f.pool, 150);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    cpool_tenant_stats t = tstats(f.pool, "a");
    ASSERT_EQ(2, t.holds_exceeded);
    ASSERT_EQ(1, t.holds_reclaimed);
    ASSERT_EQ(0, t.in_use); /* its slot came back */
    ASSERT_TRUE(cpool_mem_conn_interrupted(cpool_conn_native(a)));
    test_event closed;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &closed));
    ASSERT_EQ(CPOOL_CLOSE_RECLAIMED, closed.reason);
    /* The holder's late check-in is accepted and closes it. */
    ASSERT_OK(cpool_checkin(f.pool, a, 0, NULL));
    /* b's lease, held as long, is untouched. */
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(other)));
    test_checkin(f.pool, other, 0);
    test_fixture_free(&f);
}

/* Per-tenant waits and their wait times. */
TEST(tenant_statistics_count_waits_and_wait_time)
{
    test_fixture f;
    budget_fixture(&f, 1);
    cpool_conn *held = NULL;
    ASSERT_OK(take(f.pool, "a", 0, &held, NULL));
    pthread_t th;
    waiter_arg arg = {f.pool, "a", NULL, -100, false};
    TEST_THREAD_START(&th, tenant_waiter, &arg);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_clock_advance_ms(&f.clk, f.pool, 40); /* it waits 40 ms on the pool clock */
    test_checkin(f.pool, held, 0);
    pthread_join(th, NULL);
    ASSERT_OK(arg.rc);
    test_checkin(f.pool, arg.c, 0);
    cpool_tenant_stats t = tstats(f.pool, "a");
    ASSERT_EQ(2, t.checkouts);
    ASSERT_EQ(2, t.checkouts_ok);
    ASSERT_EQ(1, t.waits);
    ASSERT_EQ(2, t.wait.count);
    ASSERT_EQ(40000000, t.wait.max_ns);
    ASSERT_EQ(40000000, cpool_histogram_quantile(&t.wait, 1.0));
    ASSERT_EQ(0, tstats(f.pool, "b").checkouts);
    test_fixture_free(&f);
}

static size_t count_of(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *q = text; (q = strstr(q, needle)) != NULL; q++)
        n++;
    return n;
}

TEST(tenant_series_in_the_prometheus_text)
{
    test_fixture f;
    budget_fixture(&f, 4);
    ASSERT_OK(cpool_tenant_set(f.pool, "quo\"te", 0, 0, NULL));
    cpool_tenant_budget b = {.struct_size = sizeof b, .rate = 1, .burst = 1};
    ASSERT_OK(cpool_tenant_budget_set(f.pool, "b", &b, NULL));
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_OK(lease_and_return(f.pool, "a", NULL));
    ASSERT_OK(lease_and_return(f.pool, NULL, NULL)); /* the unnamed tenant */
    ASSERT_OK(lease_and_return(f.pool, "b", NULL));
    ASSERT_RC(CPOOL_ERATE, lease_and_return(f.pool, "b", NULL));
    size_t need = cpool_tenants_prometheus(f.pool, "p", "svc=\"api\"", NULL, 0);
    ASSERT_GT(need, 0);
    char *text = malloc(need + 1);
    ASSERT_NOT_NULL(text);
    ASSERT_EQ(need, cpool_tenants_prometheus(f.pool, "p", "svc=\"api\"", text, need + 1));
    ASSERT_EQ(strlen(text), need);
    ASSERT_STR_CONTAINS(text,
        "db_client_connection_tenant_leases_total{pool=\"p\",tenant=\"a\",svc=\"api\"} 2\n");
    ASSERT_STR_CONTAINS(text,
        "db_client_connection_tenant_leases_total{pool=\"p\",tenant=\"\",svc=\"api\"} 1\n");
    ASSERT_STR_CONTAINS(text, "db_client_connection_tenant_refusals_total{pool=\"p\","
                              "tenant=\"b\",svc=\"api\",reason=\"rate\"} 1\n");
    ASSERT_STR_CONTAINS(text, "tenant=\"quo\\\"te\"");
    ASSERT_STR_CONTAINS(text, "db_client_connection_tenant_wait_time_seconds_count{pool=\"p\","
                              "tenant=\"a\",svc=\"api\"} 2\n");
    /* Each family once, whatever the number of tenants. */
    ASSERT_EQ(1, count_of(text, "# TYPE db_client_connection_tenant_leases_total counter"));
    ASSERT_EQ(1, count_of(text, "# HELP db_client_connection_tenant_wait_time_seconds "));
    ASSERT_EQ(4, count_of(text, "db_client_connection_tenant_used{"));
    free(text);
    test_fixture_free(&f);

    /* A pool without tenants writes nothing. */
    test_fixture_init(&f);
    test_fixture_start(&f);
    char small[64];
    ASSERT_EQ(0, cpool_tenants_prometheus(f.pool, "p", NULL, small, sizeof small));
    ASSERT_STR_EQ("", small);
    test_fixture_free(&f);
}

TEST(budget_errors)
{
    test_fixture f;
    budget_fixture(&f, 4);
    cpool_error e;
    cpool_tenant_budget b = {.struct_size = sizeof b, .rate = 5};
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "zz", &b, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown tenant");
    b = (cpool_tenant_budget){.struct_size = sizeof b, .reclaim = true};
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "a", &b, &e));
    b = (cpool_tenant_budget){.struct_size = sizeof b, .rate = -1};
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "a", &b, &e));
    b = (cpool_tenant_budget){.struct_size = sizeof b, .max_hold_ms = -5};
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "a", &b, &e));
    b = (cpool_tenant_budget){.struct_size = 4, .rate = 1};
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "a", &b, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_tenant_budget_set(f.pool, "a", NULL, &e));
    /* Nothing was applied. */
    ASSERT_TRUE(tstats(f.pool, "a").budget.rate == 0);
    test_fixture_free(&f);
}

TEST_MAIN()
