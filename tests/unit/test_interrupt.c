/* test_interrupt.c -- clear(interruptInUseConnections) on in-use and pending
 * connections. The official suite has no unit test for interrupting an
 * in-use connection (it was deleted upstream) and checks the pending case
 * only through events; here the connector itself says whether it was
 * interrupted, and the blocked checkout's latency is measured. */
#include "test.h"

/* A background thread exists but its regular run is 10 s away: whatever
 * the clear must do "as soon as possible" cannot wait for the schedule. */
static void interrupt_fixture_init(test_fixture *f)
{
    test_fixture_init(f);
    f->opts.maintenance_interval_ms = 10000;
    f->opts.connect_timeout_ms = 10000;
}

TEST(clear_interrupts_in_use)
{
    test_fixture f;
    interrupt_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    void *native = cpool_conn_native(c);
    uint64_t id = cpool_conn_id(c);
    ASSERT_FALSE(cpool_mem_conn_interrupted(native));

    ASSERT_OK(cpool_clear(f.pool, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    WAIT_UNTIL(cpool_mem_conn_interrupted(native), 2000);
    ASSERT_GE(test_mem_stats(f.mem).interrupts, 1);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_POOL_CLEARED, 0, &ev));
    ASSERT_TRUE(ev.interrupt_in_use);

    /* An interrupted connection is never reused: check-in closes it. */
    test_ready(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CHECKED_IN));
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.available);
    ASSERT_EQ(0, n.total);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(clear_without_flag_does_not_interrupt)
{
    test_fixture f;
    interrupt_fixture_init(&f);
    f.opts.maintenance_interval_ms = 10; /* give a wrong interrupt a chance */
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    void *native = cpool_conn_native(c);
    uint64_t id = cpool_conn_id(c);

    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    test_sleep_ms(200);
    ASSERT_FALSE(cpool_mem_conn_interrupted(native));
    ASSERT_EQ(0, test_mem_stats(f.mem).interrupts);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_POOL_CLEARED, 0, &ev));
    ASSERT_FALSE(ev.interrupt_in_use);
    ASSERT_FALSE(test_rec_find_closed(&f.rec, id, &ev));

    /* Still stale, so closed when it comes back. */
    test_checkin(f.pool, c, 0);
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    test_fixture_free(&f);
}

TEST(clear_interrupt_spares_newer_connections)
{
    test_fixture f;
    interrupt_fixture_init(&f);
    f.opts.maintenance_interval_ms = 10;
    test_fixture_start(&f);
    cpool_conn *old = test_checkout(f.pool);
    ASSERT_OK(cpool_clear(f.pool, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    WAIT_UNTIL(cpool_mem_conn_interrupted(cpool_conn_native(old)), 2000);

    /* Only connections of the generations the clear ended are interrupted;
     * one made afterwards must survive later background runs. */
    test_ready(f.pool);
    cpool_conn *fresh = test_checkout(f.pool);
    ASSERT_EQ(1, cpool_conn_generation(fresh));
    test_sleep_ms(200);
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(fresh)));
    uint64_t fresh_id = cpool_conn_id(fresh);
    test_checkin(f.pool, fresh, 0);
    test_checkin(f.pool, old, 0);
    test_event ev;
    ASSERT_FALSE(test_rec_find_closed(&f.rec, fresh_id, &ev));
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

/* Makes the next establishment hang until the pool cancels it (or the 10 s
 * connect timeout, which a passing test never reaches). */
static void block_next_handshake(cpool_mem *mem)
{
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.block_until_interrupted = true;
    cpool_mem_set_failpoint(mem, &fp);
}

/* Starts the pool and a checkout on another thread whose establishment
 * hangs, and returns once that establishment is pending. */
static void start_blocked_checkout(test_fixture *f, test_job *job)
{
    interrupt_fixture_init(f);
    test_fixture_start(f);
    block_next_handshake(f->mem);
    test_job_start(job, f->pool, -1);
    WAIT_UNTIL(test_counts(f->pool).pending == 1, 2000);
}

TEST(clear_interrupts_pending_establishment)
{
    test_fixture f;
    test_job job;
    start_blocked_checkout(&f, &job);
    test_sleep_ms(20);
    ASSERT_FALSE(atomic_load(&job.done)); /* really blocked */

    int64_t cleared_at = test_now_ns();
    ASSERT_OK(cpool_clear(f.pool, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    test_job_join(&job, 3000);
    ASSERT_LT(job.end_ns - cleared_at, 2000000000LL); /* not the 10 s timeout */
    if (job.rc != CPOOL_ECONNECT && job.rc != CPOOL_ECLEARED)
        FAIL("interrupted checkout: %s: \"%s\"", cpool_err_name(job.rc),
             job.err.message);
    ASSERT_NULL(job.conn);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.pending);
    ASSERT_EQ(0, n.total);
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST(clear_without_flag_leaves_pending)
{
    test_fixture f;
    test_job job;
    start_blocked_checkout(&f, &job);

    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    test_sleep_ms(200);
    ASSERT_FALSE(atomic_load(&job.done));
    ASSERT_EQ(1, test_counts(f.pool).pending);

    /* Closing abandons the attempt, so the test ends quickly. */
    cpool_close(f.pool);
    test_job_join(&job, 3000);
    ASSERT_NE(CPOOL_OK, job.rc);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(close_interrupts_pending_establishment)
{
    test_fixture f;
    test_job job;
    start_blocked_checkout(&f, &job);

    int64_t closed_at = test_now_ns();
    cpool_close(f.pool);
    test_job_join(&job, 3000);
    ASSERT_LT(job.end_ns - closed_at, 2000000000LL);
    if (job.rc != CPOOL_ECLOSED && job.rc != CPOOL_ECONNECT)
        FAIL("checkout during close: %s: \"%s\"", cpool_err_name(job.rc),
             job.err.message);
    ASSERT_EQ(0, test_counts(f.pool).total);
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST_MAIN()
