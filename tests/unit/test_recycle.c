/* test_recycle.c -- recycling on demand: one lease (cpool_conn_recycle) and
 * every connection the pool has (cpool_recycle), without a pause, a
 * generation or a failed checkout. */
#include "test.h"

/* Whether connection `id` was closed with `reason`. */
static bool closed_as(test_fixture *f, uint64_t id, int reason)
{
    test_event ev;
    return test_rec_find_closed(&f->rec, id, &ev) && ev.reason == reason;
}

static cpool_stats stats_of(cpool *p)
{
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

TEST(conn_recycle_closes_at_checkin_whatever_the_flags)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    ASSERT_OK(cpool_conn_recycle(c));
    ASSERT_OK(cpool_conn_recycle(c)); /* twice is once */
    test_checkin(f.pool, c, 0);      /* no BROKEN flag */
    ASSERT_TRUE(closed_as(&f, id, CPOOL_CLOSE_RECYCLED));
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RECYCLED));
    cpool_stats s = stats_of(f.pool);
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_RECYCLED]);
    ASSERT_EQ(0, s.recycle_pending);
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    ASSERT_STR_EQ("recycled", cpool_close_reason_name(CPOOL_CLOSE_RECYCLED));

    c = test_checkout(f.pool);
    ASSERT_TRUE(cpool_conn_id(c) != id);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_mem_stats(f.mem).open); /* the new one is kept */
    test_fixture_free(&f);
}

TEST(conn_recycle_needs_a_lease)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    ASSERT_RC(CPOOL_EINVAL, cpool_conn_recycle(NULL));
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    /* Returned: no longer the caller's to mark; the pool keeps it. */
    ASSERT_RC(CPOOL_EDOUBLE, cpool_conn_recycle(c));
    ASSERT_EQ(0, stats_of(f.pool).recycle_pending);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

/* The lock-free path: an unobserved pool parks the connection in the
 * returning thread's slot, and a mark must still close it there. */
TEST(conn_recycle_on_the_lock_free_path)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.on_event = NULL;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    c = test_checkout(f.pool);
    ASSERT_EQ(id, cpool_conn_id(c)); /* parked and re-taken */
    ASSERT_OK(cpool_conn_recycle(c));
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_RECYCLED]);
    c = test_checkout(f.pool);
    ASSERT_TRUE(cpool_conn_id(c) != id);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* Soft recycle: available, leased and parked connections are all marked;
 * nothing pauses, no checkout fails, and each is replaced as it comes back
 * or is found available. */
TEST(recycle_replaces_every_connection_without_interruption)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.min_pool_size = 3;
    f.opts.maintenance_interval_ms = -1;
    test_fixture_start(&f);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(3, test_counts(f.pool).available);
    cpool_conn *held = test_checkout(f.pool);
    uint64_t held_id = cpool_conn_id(held);
    uint64_t gen = cpool_conn_generation(held);
    uint64_t first_new = 4; /* ids 1..3 exist */

    uint32_t marked = 0;
    ASSERT_OK(cpool_recycle(f.pool, &marked, NULL));
    ASSERT_EQ(3, marked);
    cpool_stats s = stats_of(f.pool);
    ASSERT_EQ(3, s.recycle_pending);
    ASSERT_EQ(1, s.recycles);
    ASSERT_EQ(CPOOL_STATE_READY, s.counts.state);
    ASSERT_EQ(gen, s.counts.generation);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_RECYCLED));
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    /* Nothing is interrupted. */
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(held)));

    /* A checkout skips the marked available ones, closing them. */
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_TRUE(cpool_conn_id(c) >= first_new);
    ASSERT_EQ(gen, cpool_conn_generation(c));
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RECYCLED));
    ASSERT_EQ(1, stats_of(f.pool).recycle_pending); /* the lease */

    test_checkin(f.pool, held, 0);
    ASSERT_TRUE(closed_as(&f, held_id, CPOOL_CLOSE_RECYCLED));
    ASSERT_OK(cpool_maintain(f.pool, NULL)); /* back to minPoolSize */
    s = stats_of(f.pool);
    ASSERT_EQ(0, s.recycle_pending);
    ASSERT_EQ(3, s.closed[CPOOL_CLOSE_RECYCLED]);
    ASSERT_EQ(3, s.counts.total);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
    ASSERT_EQ(3, test_mem_stats(f.mem).open);
    /* Twice in a row marks only what is there. */
    ASSERT_OK(cpool_recycle(f.pool, &marked, NULL));
    ASSERT_EQ(3, marked);
    test_fixture_free(&f);
}

/* The background thread closes marked available connections at once and
 * refills, so an idle pool turns over without any checkout. */
TEST(recycle_idle_pool_turns_over_in_the_background)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.min_pool_size = 2;
    f.opts.maintenance_interval_ms = 60000; /* only the recycle's kick runs it */
    test_fixture_start(&f);
    ASSERT_OK(cpool_wait_connected(f.pool, 2, 5000, NULL));
    ASSERT_OK(cpool_recycle(f.pool, NULL, NULL));
    WAIT_UNTIL(stats_of(f.pool).recycle_pending == 0 && test_counts(f.pool).available == 2,
               5000);
    ASSERT_EQ(2, stats_of(f.pool).closed[CPOOL_CLOSE_RECYCLED]);
    ASSERT_EQ(4, test_mem_stats(f.mem).connects);
    test_fixture_free(&f);
}

/* A connection whose establishment was under way when the recycle came
 * (e.g. with the old credentials) is not handed out: it is closed when it
 * is ready, and the checkout carries on with a new one. */
TEST(recycle_reaches_an_establishment_in_flight)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.block_ms = 300;
    cpool_mem_set_failpoint(f.mem, &fp);
    test_job j;
    test_job_start(&j, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).pending == 1, 5000);
    uint32_t marked = 0;
    ASSERT_OK(cpool_recycle(f.pool, &marked, NULL));
    ASSERT_EQ(1, marked);
    test_job_join(&j, 10000);
    ASSERT_OK(j.rc);
    ASSERT_EQ(2, cpool_conn_id(j.conn));
    ASSERT_TRUE(closed_as(&f, 1, CPOOL_CLOSE_RECYCLED));
    test_checkin(f.pool, j.conn, 0);
    ASSERT_EQ(0, stats_of(f.pool).recycle_pending);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

typedef struct info_capture {
    pthread_mutex_t mu;
    int infos;
    char last[512];
} info_capture;

static void capture_info(const cpool_log_record *rec, void *ctx)
{
    info_capture *lc = ctx;
    pthread_mutex_lock(&lc->mu);
    if (rec->level == CPOOL_LOG_INFO) {
        lc->infos++;
        cpool_log_format_json(rec, lc->last, sizeof lc->last);
    }
    pthread_mutex_unlock(&lc->mu);
}

TEST(recycle_is_logged_and_refused_on_a_closed_pool)
{
    test_fixture f;
    test_fixture_init(&f);
    info_capture lc = {.mu = PTHREAD_MUTEX_INITIALIZER};
    f.opts.on_log = capture_info;
    f.opts.log_ctx = &lc;
    f.opts.log_level = CPOOL_LOG_INFO; /* not the DEBUG CMAP messages */
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_OK(cpool_recycle(f.pool, NULL, NULL));
    pthread_mutex_lock(&lc.mu);
    ASSERT_EQ(1, lc.infos);
    ASSERT_STR_CONTAINS(lc.last, "\"message\":\"Connection pool recycle requested\"");
    ASSERT_STR_CONTAINS(lc.last, "\"connections\":1");
    pthread_mutex_unlock(&lc.mu);
    ASSERT_EQ(CPOOL_EV_POOL_RECYCLED, CPOOL_EV_CONN_LEAK_SUSPECTED + 1);
    ASSERT_STR_EQ("ConnectionPoolRecycled", cpool_event_name(CPOOL_EV_POOL_RECYCLED));

    cpool_close(f.pool);
    cpool_error e;
    ASSERT_RC(CPOOL_ECLOSED, cpool_recycle(f.pool, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_recycle(NULL, NULL, &e));
    test_fixture_free(&f);
}

TEST_MAIN()
