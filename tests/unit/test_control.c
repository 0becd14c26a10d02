/* test_control.c -- a live pool changed at runtime: resize (grow, shrink
 * without interrupting), suspend and resume without dropping anything, and
 * the wait-queue limit. */
#include "test.h"

static cpool_stats stats_of(cpool *p)
{
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

TEST(resize_grows_and_serves_a_waiter)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job j;
    test_job_start(&j, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    ASSERT_OK(cpool_resize(f.pool, 2, 0, NULL));
    test_job_join(&j, 5000);
    ASSERT_OK(j.rc);
    ASSERT_TRUE(cpool_conn_id(j.conn) != cpool_conn_id(held));
    ASSERT_EQ(2, stats_of(f.pool).max_pool_size);
    test_checkin(f.pool, j.conn, 0);
    test_checkin(f.pool, held, 0);
    ASSERT_EQ(2, test_counts(f.pool).available);
    test_fixture_free(&f);
}

/* Shrinking closes available connections at once and leased ones as they
 * come back, never interrupting a lease. */
TEST(resize_shrinks_without_interrupting)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 4;
    test_fixture_start(&f);
    cpool_conn *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = test_checkout(f.pool);
    test_checkin(f.pool, c[3], 0); /* one available */
    ASSERT_OK(cpool_resize(f.pool, 2, 0, NULL));
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RESIZED)); /* the available one */
    for (int i = 0; i < 3; i++)
        ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(c[i])));
    test_checkin(f.pool, c[0], 0); /* 3 > 2: closed */
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RESIZED));
    test_checkin(f.pool, c[1], 0); /* 2: kept */
    test_checkin(f.pool, c[2], 0);
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RESIZED));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(2, n.total);
    ASSERT_EQ(2, n.available);
    ASSERT_EQ(2, stats_of(f.pool).closed[CPOOL_CLOSE_RESIZED]);
    ASSERT_STR_EQ("resized", cpool_close_reason_name(CPOOL_CLOSE_RESIZED));
    /* The new maximum holds: a third lease waits. */
    cpool_conn *a = test_checkout(f.pool), *b = test_checkout(f.pool), *none = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 0, &none, NULL));
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, 0);
    test_fixture_free(&f);
}

/* The lock-free path: connections parked in threads' slots are taken back
 * and closed too, and a check-in while shrinking does not park. */
TEST(resize_shrinks_parked_connections)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.on_event = NULL;
    f.opts.max_pool_size = 3;
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool), *b = test_checkout(f.pool);
    test_checkin(f.pool, b, 0);
    test_checkin(f.pool, a, 0); /* parked in this thread's slot */
    ASSERT_EQ(2, test_counts(f.pool).available);
    ASSERT_OK(cpool_resize(f.pool, 1, 0, NULL));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(1, n.total);
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_RESIZED]);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(resize_minimum_is_filled_and_bad_sizes_refused)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 4;
    f.pool = test_pool_create(&f.opts);
    ASSERT_OK(cpool_tenant_set(f.pool, "a", 0, 2, NULL));
    test_ready(f.pool);
    ASSERT_OK(cpool_resize(f.pool, 4, 3, NULL));
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(3, test_counts(f.pool).total);
    ASSERT_EQ(3, stats_of(f.pool).min_pool_size);
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_resize(f.pool, 2, 3, &e));
    ASSERT_STR_CONTAINS(e.message, "minPoolSize 3 exceeds maxPoolSize 2");
    ASSERT_RC(CPOOL_EINVAL, cpool_resize(f.pool, 1, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "guaranteed minimums");
    ASSERT_EQ(4, stats_of(f.pool).max_pool_size); /* nothing changed */
    ASSERT_OK(cpool_resize(f.pool, 0, 0, NULL)); /* no limit */
    ASSERT_RC(CPOOL_EINVAL, cpool_resize(NULL, 1, 0, &e));
    cpool_close(f.pool);
    ASSERT_RC(CPOOL_ECLOSED, cpool_resize(f.pool, 4, 0, &e));
    ASSERT_RC(CPOOL_ECLOSED, cpool_suspend(f.pool, &e));
    test_fixture_free(&f);
}

/* Suspended: leases go on and come back, checkouts wait (and may time
 * out), nothing is closed; resume serves the queue in order. */
static void suspend_case(bool observed)
{
    test_fixture f;
    test_fixture_init(&f);
    if (!observed)
        f.opts.on_event = NULL;
    f.opts.max_pool_size = 2;
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool);
    cpool_conn *b = test_checkout(f.pool);
    test_checkin(f.pool, b, 0); /* parked (unobserved) or available */
    ASSERT_OK(cpool_suspend(f.pool, NULL));
    ASSERT_OK(cpool_suspend(f.pool, NULL)); /* idempotent */
    ASSERT_EQ(CPOOL_STATE_SUSPENDED, test_counts(f.pool).state);
    cpool_conn *none = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 20, &none, NULL));
    test_job j1, j2;
    test_job_start(&j1, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_job_start(&j2, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 5000);
    test_checkin(f.pool, a, 0); /* a lease still comes back */
    test_sleep_ms(20);
    ASSERT_FALSE(atomic_load(&j1.done));
    ASSERT_FALSE(atomic_load(&j2.done));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(2, n.available);
    ASSERT_EQ(2, n.total);
    ASSERT_EQ(2, test_mem_stats(f.mem).open);
    cpool_stats s = stats_of(f.pool);
    char text[16384];
    ASSERT_LT(cpool_stats_prometheus(&s, "p", NULL, text, sizeof text), sizeof text);
    ASSERT_STR_CONTAINS(text, "db_client_connection_pool_state{pool=\"p\",state=\"suspended\"} 1");
    ASSERT_OK(cpool_resume(f.pool, NULL));
    test_job_join(&j1, 5000);
    test_job_join(&j2, 5000);
    ASSERT_OK(j1.rc);
    ASSERT_OK(j2.rc);
    ASSERT_EQ(CPOOL_STATE_READY, test_counts(f.pool).state);
    ASSERT_EQ(2, stats_of(f.pool).connections_created); /* nothing was dropped */
    test_checkin(f.pool, j1.conn, 0);
    test_checkin(f.pool, j2.conn, 0);
    ASSERT_OK(cpool_resume(f.pool, NULL)); /* idempotent */
    test_fixture_free(&f);
}

TEST(suspend_keeps_connections_and_resume_serves_the_queue) { suspend_case(true); }
TEST(suspend_on_the_lock_free_path) { suspend_case(false); }

TEST(suspend_needs_a_ready_pool)
{
    test_fixture f;
    test_fixture_init(&f);
    f.pool = test_pool_create(&f.opts); /* paused: not ready yet */
    cpool_error e;
    ASSERT_RC(CPOOL_ESTATE, cpool_suspend(f.pool, &e));
    ASSERT_STR_CONTAINS(e.message, "paused");
    test_fixture_free(&f);
}

TEST(wait_queue_limit_fails_at_once)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1;
    f.opts.max_waiting = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job j;
    test_job_start(&j, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    cpool_conn *none = NULL;
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_EQUEUEFULL, cpool_checkout(f.pool, 5000, &none, &e));
    ASSERT_LT(test_now_ms() - t0, 1000); /* at once, not at its deadline */
    ASSERT_STR_CONTAINS(e.message, "1 checkouts are waiting already (max_waiting 1");
    ASSERT_EQ(1, stats_of(f.pool).checkout_failures[-CPOOL_EQUEUEFULL]);
    ASSERT_STR_EQ("CPOOL_EQUEUEFULL", cpool_err_name(CPOOL_EQUEUEFULL));
    test_checkin(f.pool, held, 0);
    test_job_join(&j, 5000);
    ASSERT_OK(j.rc);
    test_checkin(f.pool, j.conn, 0);
    test_fixture_free(&f);
}

/* The oldest queued checkout's wait (maxwait), in the statistics and the
 * Prometheus text. */
TEST(oldest_wait_is_reported)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    ASSERT_EQ(0, stats_of(f.pool).oldest_wait_ns);
    cpool_conn *held = test_checkout(f.pool);
    test_job j;
    test_job_start(&j, f.pool, 100000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_clock_advance_ms(&f.clk, f.pool, 250);
    cpool_stats s = stats_of(f.pool);
    ASSERT_EQ(250000000, s.oldest_wait_ns);
    char text[16384];
    ASSERT_LT(cpool_stats_prometheus(&s, "p", NULL, text, sizeof text), sizeof text);
    ASSERT_STR_CONTAINS(text, "db_client_connection_oldest_wait_seconds{pool=\"p\"} 0.25\n");
    test_checkin(f.pool, held, 0);
    test_job_join(&j, 5000);
    ASSERT_OK(j.rc);
    ASSERT_EQ(0, stats_of(f.pool).oldest_wait_ns);
    test_checkin(f.pool, j.conn, 0);
    test_fixture_free(&f);
}

TEST_MAIN()
