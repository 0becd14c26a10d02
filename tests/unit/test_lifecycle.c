/* test_lifecycle.c -- max lifetime with jitter, recycle_after_uses, and the
 * statistics snapshot that counts them. Time is the fake clock's. */
#include "test.h"

/* A fixture on the fake clock with a lifetime, no background thread. */
static void start_lifetime(test_fixture *f, int64_t lifetime_ms, double jitter)
{
    test_fixture_init(f);
    f->opts.clock = &f->clk.clock;
    f->opts.max_lifetime_ms = lifetime_ms;
    f->opts.lifetime_jitter = jitter;
    test_fixture_start(f);
}

/* Options for a pool nobody observes, so that its leases take the
 * lock-free path, on the fake clock `clk`. */
static void unobserved_on_clock(cpool_options *o, cpool_mem *mem, test_clock *clk)
{
    test_clock_init(clk);
    test_options(o, mem, NULL);
    o->clock = &clk->clock;
}

/* A connection is closed once it is *older* than its lifetime: at exactly
 * the lifetime it is still kept. */
TEST(lifetime_closes_returned_connection)
{
    test_fixture f;
    start_lifetime(&f, 1000, 0);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_clock_advance_ms(&f.clk, f.pool, 1000);
    test_checkin(f.pool, c, 0); /* exactly its lifetime: kept */
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CONN_CLOSED));
    c = test_checkout(f.pool);
    ASSERT_EQ(id, cpool_conn_id(c));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    test_checkin(f.pool, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_LIFETIME, ev.reason);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(lifetime_expired_never_handed_out)
{
    test_fixture f;
    start_lifetime(&f, 1000, 0);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_clock_advance_ms(&f.clk, f.pool, 1000);
    test_checkin(f.pool, c, 0); /* exactly its lifetime: kept */
    ASSERT_EQ(1, test_counts(f.pool).available);
    c = test_checkout(f.pool); /* ... and still handed out */
    ASSERT_EQ(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_clock_advance_ms(&f.clk, f.pool, 1);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_LIFETIME));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(lifetime_unobserved_fast_path)
{
    cpool_mem *mem = test_mem_create();
    test_clock clk;
    cpool_options o;
    unobserved_on_clock(&o, mem, &clk);
    o.max_lifetime_ms = 1000;
    o.lifetime_jitter = 0;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    uint64_t id = cpool_conn_id(c);
    test_checkin(p, c, 0); /* parked */
    test_clock_advance_ms(&clk, p, 1000);
    c = test_checkout(p); /* exactly its lifetime: still handed out */
    ASSERT_EQ(id, cpool_conn_id(c));
    test_checkin(p, c, 0);
    test_clock_advance_ms(&clk, p, 1);
    c = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(c));
    test_checkin(p, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_LIFETIME]);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* Connections opened together expire spread over [L(1-j), L]. */
TEST(lifetime_jitter_spreads_expiry)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_lifetime_ms = 1000;
    f.opts.lifetime_jitter = 0.5;
    f.opts.max_pool_size = 40;
    test_fixture_start(&f);
    cpool_conn *c[40];
    for (int i = 0; i < 40; i++)
        c[i] = test_checkout(f.pool);
    for (int i = 0; i < 40; i++)
        test_checkin(f.pool, c[i], 0);
    test_clock_advance_ms(&f.clk, f.pool, 499); /* before the earliest expiry */
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(0, test_rec_count_closed(&f.rec, CPOOL_CLOSE_LIFETIME));
    test_clock_advance_ms(&f.clk, f.pool, 251); /* 750 ms: about half */
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    size_t half = test_rec_count_closed(&f.rec, CPOOL_CLOSE_LIFETIME);
    ASSERT_GT(half, 5);  /* P(<= 5 of 40 at p = 0.5) is about 1e-7 */
    ASSERT_LT(half, 35);
    test_clock_advance_ms(&f.clk, f.pool, 250); /* 1000 ms: all */
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(40, test_rec_count_closed(&f.rec, CPOOL_CLOSE_LIFETIME));
    test_fixture_free(&f);
}

/* Expired connections below minPoolSize are replaced in the background, no
 * more than maxConnecting at a time. */
TEST(expired_replaced_without_herd)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_lifetime_ms = 1000;
    f.opts.lifetime_jitter = 0;
    f.opts.min_pool_size = 6;
    f.opts.max_connecting = 2;
    f.opts.maintenance_interval_ms = 10;
    test_fixture_start(&f);
    WAIT_UNTIL(test_counts(f.pool).available == 6, 5000);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = -1;
    fp.block_ms = 20; /* establishments overlap if anything lets them */
    cpool_mem_set_failpoint(f.mem, &fp);
    test_clock_advance_ms(&f.clk, f.pool, 1001); /* older than their lifetime */
    uint32_t max_pending = 0;
    int64_t deadline = test_now_ms() + 5000;
    while (test_rec_count(&f.rec, CPOOL_EV_CONN_READY) < 12) {
        cpool_counts k = test_counts(f.pool);
        if (k.pending > max_pending)
            max_pending = k.pending;
        if (test_now_ms() > deadline)
            FAIL("replacements not made in 5 s");
        test_sleep_us(200);
    }
    ASSERT_EQ(6, test_rec_count_closed(&f.rec, CPOOL_CLOSE_LIFETIME));
    ASSERT_LE(max_pending, 2);
    ASSERT_GE(max_pending, 1);
    test_fixture_free(&f);
}

TEST(recycle_after_uses)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.recycle_after_uses = 3;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    for (int i = 0; i < 2; i++) {
        c = test_checkout(f.pool);
        ASSERT_EQ(id, cpool_conn_id(c));
        test_checkin(f.pool, c, 0);
    }
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_USES, ev.reason);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(recycle_after_uses_fast_path)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.recycle_after_uses = 5;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    for (int i = 0; i < 20; i++) {
        cpool_conn *c = test_checkout(p);
        test_checkin(p, c, 0);
    }
    ASSERT_EQ(4, test_mem_stats(mem).connects);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(4, s.closed[CPOOL_CLOSE_USES]);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

TEST(invalid_lifetime_options_rejected)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    cpool *p = NULL;
    cpool_error e;
    o.lifetime_jitter = 0.9;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "lifetime_jitter");
    ASSERT_STR_CONTAINS(e.message, "0..0.5");
    o.lifetime_jitter = 0.05;
    o.max_lifetime_ms = -1;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "max_lifetime_ms");
    ASSERT_NULL(p);
    cpool_mem_destroy(mem);
}

/* ------------------------------------------------------------ statistics */

TEST(stats_count_what_happened)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 2;
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool);
    cpool_conn *b = test_checkout(f.pool);
    test_clock_advance_ms(&f.clk, f.pool, 30);
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, CPOOL_CHECKIN_BROKEN);
    a = test_checkout(f.pool); /* reused */
    b = test_checkout(f.pool); /* new */
    cpool_conn *none = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 0, &none, NULL));
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, 0);

    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(3, s.connections_created);
    ASSERT_EQ(3, s.connections_ready);
    ASSERT_EQ(0, s.connect_failures);
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_ERROR]);
    ASSERT_EQ(4, s.checkouts_ok);
    ASSERT_EQ(1, s.checkouts_reused);
    ASSERT_EQ(1, s.checkout_failures[-CPOOL_ETIMEDOUT]);
    ASSERT_EQ(5, s.checkouts);
    ASSERT_EQ(4, s.checkins);
    ASSERT_EQ(1, s.validations);
    ASSERT_EQ(4, s.hold.count);
    ASSERT_EQ(4, s.wait.count);
    ASSERT_EQ(3, s.connect.count);
    ASSERT_EQ(30000000, s.hold.max_ns); /* two holds of exactly 30 ms */
    ASSERT_EQ(60000000, s.hold.sum_ns);
    ASSERT_EQ(2, s.counts.available);
    ASSERT_EQ(2, s.max_pool_size);
    int64_t p50 = cpool_histogram_quantile(&s.hold, 0.5);
    int64_t p99 = cpool_histogram_quantile(&s.hold, 0.99);
    ASSERT_LE(p50, p99);
    ASSERT_LE(p99, 30000000);
    ASSERT_EQ(30000000, cpool_histogram_quantile(&s.hold, 1.0));
    cpool_stats small = {.struct_size = 8};
    ASSERT_RC(CPOOL_EINVAL, cpool_get_stats(f.pool, &small));
    test_fixture_free(&f);
}

/* The lock-free path counts too, and a snapshot survives closes (folded). */
TEST(stats_fast_path_counted)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.timing_sample = 1; /* time every lease */
    cpool *p = test_pool_create(&o);
    test_ready(p);
    for (int i = 0; i < 1000; i++) {
        cpool_conn *c = test_checkout(p);
        test_checkin(p, c, i == 499 ? CPOOL_CHECKIN_BROKEN : 0);
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1000, s.checkouts_ok);
    ASSERT_EQ(998, s.checkouts_reused);
    ASSERT_EQ(1000, s.checkins);
    ASSERT_EQ(1000, s.hold.count);
    ASSERT_EQ(2, s.connections_created);
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_ERROR]);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* n leases on the lock-free path, the pool clock moving step_ns per lease:
 * how many were timed (hold.count). The counts stay exact. */
static uint64_t timed_leases(uint32_t timing_sample, int64_t step_ns, int n)
{
    cpool_mem *mem = test_mem_create();
    test_clock clk;
    cpool_options o;
    unobserved_on_clock(&o, mem, &clk);
    o.timing_sample = timing_sample;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    for (int i = 0; i < n; i++) {
        cpool_conn *c = test_checkout(p);
        atomic_fetch_add(&clk.now_ns, step_ns);
        test_checkin(p, c, 0);
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ((uint64_t)n, s.checkouts_ok);
    ASSERT_EQ((uint64_t)n, s.checkins);
    ASSERT_EQ(s.hold.count, s.wait.count);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
    return s.hold.count;
}

/* Leases that come fast are sampled, one in timing_sample at the most; leases
 * 10 us apart or more are all timed, and in between about one per 10 us. */
TEST(stats_fast_path_sampled_by_time)
{
    /* The first lease (locked path) and the first lock-free one are timed,
     * then the spacing is known. */
    uint64_t n = timed_leases(16, 0, 1600);
    ASSERT_GE(n, 1600 / 16);
    ASSERT_LE(n, 1600 / 16 + 3);
    n = timed_leases(64, 0, 6400); /* the default */
    ASSERT_GE(n, 6400 / 64);
    ASSERT_LE(n, 6400 / 64 + 3);
    ASSERT_EQ(1600, timed_leases(64, 20000, 1600));
    ASSERT_EQ(1600, timed_leases(64, 10000, 1600));
    n = timed_leases(64, 2000, 1600); /* one in five */
    ASSERT_GE(n, 1600 / 5);
    ASSERT_LE(n, 1600 / 5 + 6);
    ASSERT_EQ(1600, timed_leases(1, 0, 1600));
    ASSERT_EQ(1, timed_leases(0, 0, 1600)); /* the locked first lease only */
}

/* Derived figures: ratios and times over the last complete interval, the
 * window moving only when an interval has passed. */
static cpool_stats snapshot(cpool *p)
{
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

/* One lease held for hold_ms on the fake clock; flags at check-in. */
static void lease_for(test_fixture *f, int64_t hold_ms, unsigned flags)
{
    cpool_conn *c = test_checkout(f->pool);
    test_clock_advance_ms(&f->clk, f->pool, hold_ms);
    test_checkin(f->pool, c, flags);
}

TEST(derived_figures_cover_the_last_interval)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 1;
    f.opts.maintenance_interval_ms = -1;
    f.opts.stats_interval_ms = 1000;
    test_fixture_start(&f);

    cpool_stats s = snapshot(f.pool);
    ASSERT_EQ(0, s.interval_ns); /* nothing yet, and no time passed */
    ASSERT_TRUE(s.reuse_ratio == -1 && s.checkout_success_ratio == -1 &&
                s.validation_failure_ratio == -1);
    ASSERT_EQ(-1, s.wait_mean_ns);
    ASSERT_EQ(-1, s.hold_p99_ns);

    /* First interval: one fresh and three reused leases of 10, 10, 10 and
     * 50 ms, and one checkout that fails. */
    lease_for(&f, 10, 0);
    lease_for(&f, 10, 0);
    lease_for(&f, 10, 0);
    cpool_conn *c = test_checkout(f.pool);
    cpool_conn *none = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 0, &none, NULL));
    test_clock_advance_ms(&f.clk, f.pool, 50);
    test_checkin(f.pool, c, 0);
    s = snapshot(f.pool); /* not complete: since creation */
    ASSERT_EQ(80000000, s.interval_ns);
    ASSERT_TRUE(s.reuse_ratio == 0.75);
    ASSERT_TRUE(s.checkout_success_ratio == 0.8);
    ASSERT_TRUE(s.validation_failure_ratio == 0.0); /* 3 validations, none failed */
    ASSERT_EQ(20000000, s.hold_mean_ns);
    ASSERT_LE(s.hold_p99_ns, 50000000);
    ASSERT_GT(s.hold_p99_ns, 35000000); /* the 50 ms lease's bucket */
    ASSERT_EQ(0, s.wait_mean_ns);

    test_clock_advance_ms(&f.clk, f.pool, 920); /* the interval ends at 1 s */
    s = snapshot(f.pool);
    ASSERT_EQ(1000000000, s.interval_ns);
    ASSERT_TRUE(s.reuse_ratio == 0.75);
    ASSERT_EQ(20000000, s.hold_mean_ns);

    /* Second interval: the connection dies while available, so validation
     * fails once and the checkout is served by a new one; then two reused
     * leases of 4 ms. Until it completes, the first one is reported. */
    cpool_conn *d = test_checkout(f.pool);
    void *native = cpool_conn_native(d);
    test_checkin(f.pool, d, 0);
    cpool_mem_conn_break(native);
    lease_for(&f, 4, 0);
    lease_for(&f, 4, 0);
    s = snapshot(f.pool);
    ASSERT_TRUE(s.reuse_ratio == 0.75);
    test_clock_advance_ms(&f.clk, f.pool, 1000);
    s = snapshot(f.pool); /* closed by this reader: [1000, 2008 ms] */
    ASSERT_EQ(1008000000, s.interval_ns);
    /* d (reused), a fresh one after the failed validation, one reused. */
    ASSERT_TRUE(s.reuse_ratio == 2.0 / 3.0);
    ASSERT_TRUE(s.checkout_success_ratio == 1.0);
    /* d's and the last one's passed; the one between failed. */
    ASSERT_TRUE(s.validation_failure_ratio == 1.0 / 3.0);
    ASSERT_EQ(8000000 / 3, s.hold_mean_ns);
    /* Totals are untouched by the windows. */
    ASSERT_EQ(7, s.checkouts_ok);
    test_fixture_free(&f);
}

/* stats_interval_ms = 0: always since creation; the background thread
 * closes intervals without anyone reading. */
TEST(derived_figures_since_creation_and_in_the_background)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.maintenance_interval_ms = -1;
    f.opts.stats_interval_ms = 0;
    test_fixture_start(&f);
    lease_for(&f, 10, 0);
    test_clock_advance_ms(&f.clk, f.pool, 5000);
    lease_for(&f, 30, 0);
    cpool_stats s = snapshot(f.pool);
    ASSERT_EQ(5040000000, s.interval_ns);
    ASSERT_EQ(20000000, s.hold_mean_ns);
    ASSERT_TRUE(s.reuse_ratio == 0.5);
    test_fixture_free(&f);

    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.maintenance_interval_ms = -1;
    f.opts.stats_interval_ms = 100;
    test_fixture_start(&f);
    lease_for(&f, 10, 0);
    test_clock_advance_ms(&f.clk, f.pool, 90);
    ASSERT_OK(cpool_maintain(f.pool, NULL)); /* closes [0, 100 ms] */
    lease_for(&f, 30, 0);
    s = snapshot(f.pool); /* at 130 ms: the closed interval, not [0, 130] */
    ASSERT_EQ(100000000, s.interval_ns);
    ASSERT_EQ(10000000, s.hold_mean_ns);
    test_clock_advance_ms(&f.clk, f.pool, 80); /* 210 ms: the reader closes [100, 210] */
    s = snapshot(f.pool);
    ASSERT_EQ(110000000, s.interval_ns);
    ASSERT_EQ(30000000, s.hold_mean_ns);
    test_fixture_free(&f);
}

TEST(histogram_buckets_and_quantiles)
{
    for (int i = 1; i < CPOOL_HIST_BUCKETS; i++)
        ASSERT_GT(cpool_histogram_bound_ns(i), cpool_histogram_bound_ns(i - 1));
    ASSERT_EQ(1000, cpool_histogram_bound_ns(0));
    ASSERT_EQ(2000, cpool_histogram_bound_ns(2));
    ASSERT_EQ(INT64_MAX, cpool_histogram_bound_ns(CPOOL_HIST_BUCKETS - 1));
    cpool_histogram h;
    memset(&h, 0, sizeof h);
    ASSERT_EQ(0, cpool_histogram_quantile(&h, 0.5));
    /* 90 values in the 1..2 us bucket range and 10 at 1 ms. */
    h.count = 100;
    h.buckets[2] = 90; /* (1.414 us, 2 us] */
    h.buckets[20] = 10; /* (724 us, 1.024 ms] */
    h.max_ns = 1000000;
    int64_t p50 = cpool_histogram_quantile(&h, 0.5);
    ASSERT_GT(p50, cpool_histogram_bound_ns(1));
    ASSERT_LE(p50, 2000);
    int64_t p95 = cpool_histogram_quantile(&h, 0.95);
    ASSERT_GT(p95, cpool_histogram_bound_ns(19));
    ASSERT_LE(p95, 1000000);
    ASSERT_EQ(1000000, cpool_histogram_quantile(&h, 1.0));
}

TEST_MAIN()
