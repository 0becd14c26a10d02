/* test_resilience.c -- backoff between failing establishments and the
 * circuit breaker, on the fake clock. */
#include "test.h"

/* Every handshake fails (CONNECT/NETWORK: "refused") until cleared. */
static void refuse_all(cpool_mem *mem)
{
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = -1;
    fp.fail = true;
    fp.fail_phase = CPOOL_PHASE_CONNECT;
    fp.fail_kind = CPOOL_FAIL_NETWORK;
    fp.fail_native = 111;
    cpool_mem_set_failpoint(mem, &fp);
}

static void start(test_fixture *f, int64_t base_ms, int64_t max_ms, uint32_t threshold)
{
    test_fixture_init(f);
    f->opts.clock = &f->clk.clock;
    f->opts.backoff_base_ms = base_ms;
    f->opts.backoff_max_ms = max_ms;
    f->opts.backoff_jitter = 0;
    f->opts.breaker_threshold = threshold;
    test_fixture_start(f);
}

/* A checkout that must not wait; returns its code. */
static int try_checkout(cpool *p, cpool_error *e)
{
    cpool_conn *c = NULL;
    int rc = cpool_checkout(p, 0, &c, e);
    if (rc == 0)
        test_checkin(p, c, 0);
    return rc;
}

static uint64_t connects(test_fixture *f)
{
    return test_mem_stats(f->mem).connects;
}

TEST(backoff_delays_next_attempt)
{
    test_fixture f;
    start(&f, 100, 10000, 0);
    refuse_all(f.mem);
    cpool_error e;
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, &e));
    ASSERT_EQ(1, connects(&f));
    /* Within the first step (100 ms) nothing is attempted. */
    ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, &e));
    test_clock_advance_ms(&f.clk, f.pool, 99);
    ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, &e));
    ASSERT_EQ(1, connects(&f));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, &e));
    ASSERT_EQ(2, connects(&f));
    /* Second step: 200 ms. */
    test_clock_advance_ms(&f.clk, f.pool, 199);
    ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, &e));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, &e));
    ASSERT_EQ(3, connects(&f));
    test_fixture_free(&f);
}

/* 100, 200, 400, then capped at 400. */
TEST(backoff_capped)
{
    test_fixture f;
    start(&f, 100, 400, 0);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    int64_t steps[] = {100, 200, 400, 400, 400};
    for (int i = 0; i < 5; i++) {
        test_clock_advance_ms(&f.clk, f.pool, steps[i] - 1);
        ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, NULL));
        test_clock_advance_ms(&f.clk, f.pool, 1);
        ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
        ASSERT_EQ(i + 2, connects(&f));
    }
    test_fixture_free(&f);
}

/* With jitter, each step lands within +-20 % of its nominal length, and
 * different pools do not all pick the same one. */
TEST(backoff_jitter_bounds)
{
    int64_t seen_min = INT64_MAX, seen_max = 0;
    for (int run = 0; run < 8; run++) {
        test_fixture f;
        test_fixture_init(&f);
        f.opts.clock = &f.clk.clock;
        f.opts.backoff_base_ms = 1000;
        f.opts.backoff_jitter = 0.2;
        test_fixture_start(&f);
        refuse_all(f.mem);
        ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
        test_clock_advance_ms(&f.clk, f.pool, 799);
        ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, NULL));
        int64_t waited = 799;
        while (try_checkout(f.pool, NULL) == CPOOL_ETIMEDOUT) {
            test_clock_advance_ms(&f.clk, f.pool, 10);
            waited += 10;
            ASSERT_LE(waited, 1210);
        }
        seen_min = waited < seen_min ? waited : seen_min;
        seen_max = waited > seen_max ? waited : seen_max;
        test_fixture_free(&f);
    }
    ASSERT_LT(seen_min, seen_max);
}

/* backoff_multiplier 3: 100, 300, 900, then capped at 2000. */
TEST(backoff_multiplier_sets_the_growth)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.backoff_base_ms = 100;
    f.opts.backoff_max_ms = 2000;
    f.opts.backoff_multiplier = 3;
    f.opts.backoff_jitter = 0;
    f.opts.breaker_threshold = 0;
    test_fixture_start(&f);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    int64_t steps[] = {100, 300, 900, 2000, 2000};
    for (int i = 0; i < 5; i++) {
        test_clock_advance_ms(&f.clk, f.pool, steps[i] - 1);
        ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, NULL));
        test_clock_advance_ms(&f.clk, f.pool, 1);
        ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
        ASSERT_EQ(i + 2, connects(&f));
    }
    test_fixture_free(&f);
}

/* The "steady" schedule: 1, 2, 4 ... 60 s (+-20 %); after
 * breaker_threshold attempts the backend is reported unavailable until a
 * probe succeeds. */
TEST(backoff_steady_schedule_and_max_attempts)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.backoff = CPOOL_BACKOFF_STEADY;
    /* The fixture turns backoff off in code; back to the default value, a
     * field the schedule fills. Only the jitter is the test's own. */
    f.opts.backoff_base_ms = 200;
    f.opts.backoff_jitter = 0.0001;
    f.opts.breaker_threshold = 8;
    test_fixture_start(&f);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    int64_t nominal[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000};
    for (int i = 0; i < 7; i++) {
        int64_t lo = nominal[i] - nominal[i] / 1000 - 1;
        test_clock_advance_ms(&f.clk, f.pool, lo);
        ASSERT_RC(CPOOL_ETIMEDOUT, try_checkout(f.pool, NULL));
        test_clock_advance_ms(&f.clk, f.pool, nominal[i] / 500 + 2);
        ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
        ASSERT_EQ(i + 2, connects(&f));
    }
    /* Eight attempts: the circuit is open, checkouts fail at once. */
    cpool_error e;
    ASSERT_RC(CPOOL_EUNAVAILABLE, try_checkout(f.pool, &e));
    ASSERT_STR_CONTAINS(e.message, "8 establishment failures in a row");
    test_fixture_free(&f);
}

/* The operator's signals: each backoff step and the circuit opening are
 * events with WARN log records, the circuit closing an INFO one. */
typedef struct signal_log {
    pthread_mutex_t mu;
    int warns, infos;
    char lines[8][600];
    int n;
} signal_log;

static void keep_signals(const cpool_log_record *rec, void *ctx)
{
    signal_log *l = ctx;
    if (rec->level > CPOOL_LOG_INFO)
        return;
    pthread_mutex_lock(&l->mu);
    l->warns += rec->level == CPOOL_LOG_WARN;
    l->infos += rec->level == CPOOL_LOG_INFO;
    if (l->n < 8)
        cpool_log_format_json(rec, l->lines[l->n++], sizeof l->lines[0]);
    pthread_mutex_unlock(&l->mu);
}

TEST(backoff_and_breaker_are_signalled)
{
    test_fixture f;
    test_fixture_init(&f);
    signal_log lg = {.mu = PTHREAD_MUTEX_INITIALIZER};
    f.opts.clock = &f.clk.clock;
    f.opts.backoff_base_ms = 100;
    f.opts.backoff_jitter = 0;
    f.opts.breaker_threshold = 2;
    f.opts.on_log = keep_signals;
    f.opts.log_ctx = &lg;
    f.opts.log_level = CPOOL_LOG_DEBUG;
    test_fixture_start(&f);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_BACKOFF_STARTED, 0, &ev));
    ASSERT_EQ(100000000, ev.duration_ns);
    ASSERT_EQ(1, ev.failures);
    ASSERT_TRUE(ev.has_error);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_BREAKER_OPENED));
    test_clock_advance_ms(&f.clk, f.pool, 100);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_BACKOFF_STARTED, 1, &ev));
    ASSERT_EQ(200000000, ev.duration_ns);
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_BREAKER_OPENED, 0, &ev));
    ASSERT_EQ(2, ev.failures);
    /* The server is back; after the step the probe checkout succeeds. */
    cpool_mem_set_failpoint(f.mem, NULL);
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(try_checkout(f.pool, NULL));
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_BREAKER_CLOSED, 0, &ev));
    ASSERT_EQ(2, ev.failures);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_BREAKER_OPENED));
    ASSERT_EQ(2, test_rec_count(&f.rec, CPOOL_EV_BACKOFF_STARTED));
    pthread_mutex_lock(&lg.mu);
    ASSERT_EQ(3, lg.warns); /* two steps, one opening */
    ASSERT_EQ(1, lg.infos); /* the closing */
    ASSERT_STR_CONTAINS(lg.lines[0], "\"message\":\"Connection pool backing off after an "
                                     "establishment failure\"");
    ASSERT_STR_CONTAINS(lg.lines[0], "\"durationMS\":100");
    ASSERT_STR_CONTAINS(lg.lines[0], "\"failures\":1");
    ASSERT_STR_CONTAINS(lg.lines[0], "\"error\":");
    ASSERT_STR_CONTAINS(lg.lines[2], "\"message\":\"Connection pool circuit breaker opened\"");
    ASSERT_STR_CONTAINS(lg.lines[3], "\"message\":\"Connection pool circuit breaker closed\"");
    pthread_mutex_unlock(&lg.mu);
    ASSERT_STR_EQ("ConnectionPoolBreakerOpened", cpool_event_name(CPOOL_EV_BREAKER_OPENED));
    test_fixture_free(&f);
}

TEST(backoff_reset_by_success)
{
    test_fixture f;
    start(&f, 100, 10000, 0);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    test_clock_advance_ms(&f.clk, f.pool, 100);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL)); /* next step: 200 */
    test_clock_advance_ms(&f.clk, f.pool, 200);
    cpool_mem_set_failpoint(f.mem, NULL);
    cpool_conn *c = test_checkout(f.pool);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(0, s.connect_fail_streak);
    /* Fails again: back to the first step, 100 ms. */
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    test_clock_advance_ms(&f.clk, f.pool, 100);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* Opens the breaker of a fresh fixture (base 100 ms, no jitter):
 * `threshold` failures, each after its backoff step. The step after the
 * last one, 100 * 2^(threshold-1) ms, has just begun. */
static void open_breaker(test_fixture *f, uint32_t threshold)
{
    refuse_all(f->mem);
    for (uint32_t i = 0; i < threshold; i++) {
        if (i > 0)
            test_clock_advance_ms(&f->clk, f->pool, 100LL << (i - 1));
        ASSERT_RC(CPOOL_ECONNECT, try_checkout(f->pool, NULL));
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f->pool, &s));
    ASSERT_TRUE(s.breaker_open);
    ASSERT_EQ(1, s.breaker_opens);
}

TEST(breaker_fails_fast_with_last_error)
{
    test_fixture f;
    start(&f, 100, 100000, 3);
    open_breaker(&f, 3);
    /* The step after the third failure is 400 ms; 100 of it have passed. */
    test_clock_advance_ms(&f.clk, f.pool, 100);
    uint64_t before = connects(&f);
    cpool_conn *c = NULL;
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_EUNAVAILABLE, cpool_checkout(f.pool, 5000, &c, &e));
    ASSERT_LT(test_now_ms() - t0, 1000); /* at once, not at the deadline */
    ASSERT_EQ(before, connects(&f));
    ASSERT_STR_CONTAINS(e.message, "3 establishment failures in a row");
    ASSERT_STR_CONTAINS(e.message, "circuit open");
    ASSERT_STR_CONTAINS(e.message, "last 100 ms ago");
    ASSERT_STR_CONTAINS(e.message, "next attempt in 300 ms");
    ASSERT_EQ(111, e.native);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_TRUE(e.labels & CPOOL_LABEL_RETRYABLE);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 3, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
    ASSERT_EQ(CPOOL_EUNAVAILABLE, ev.error.code);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(1, s.checkout_failures[-CPOOL_EUNAVAILABLE]);
    ASSERT_EQ(100000000, s.last_connect_error_age_ns);
    ASSERT_EQ(111, s.last_connect_error.native);
    test_fixture_free(&f);
}

TEST(breaker_still_serves_available)
{
    test_fixture f;
    start(&f, 100, 100000, 2);
    cpool_conn *held = test_checkout(f.pool);
    open_breaker(&f, 2);
    test_checkin(f.pool, held, 0);
    cpool_conn *c = test_checkout(f.pool); /* the available one */
    ASSERT_EQ(cpool_conn_id(held), cpool_conn_id(c));
    ASSERT_RC(CPOOL_EUNAVAILABLE, try_checkout(f.pool, NULL));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* Half-open: one probe per backoff step; the others fail fast meanwhile. */
TEST(breaker_single_probe_per_step)
{
    test_fixture f;
    start(&f, 100, 100000, 2);
    open_breaker(&f, 2); /* the next step is 200 ms */
    test_clock_advance_ms(&f.clk, f.pool, 200);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = -1;
    fp.block_ms = 300;
    fp.fail = true;
    fp.fail_phase = CPOOL_PHASE_CONNECT;
    fp.fail_kind = CPOOL_FAIL_NETWORK;
    cpool_mem_set_failpoint(f.mem, &fp);
    uint64_t before = connects(&f);
    test_job probe;
    test_job_start(&probe, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).pending == 1, 2000);
    cpool_error e;
    ASSERT_RC(CPOOL_EUNAVAILABLE, try_checkout(f.pool, &e));
    ASSERT_RC(CPOOL_EUNAVAILABLE, try_checkout(f.pool, &e));
    test_job_join(&probe, 5000);
    ASSERT_RC(CPOOL_ECONNECT, probe.rc);
    ASSERT_EQ(before + 1, connects(&f));
    /* The failed probe starts the next, longer step. */
    ASSERT_RC(CPOOL_EUNAVAILABLE, try_checkout(f.pool, &e));
    ASSERT_STR_CONTAINS(e.message, "3 establishment failures");
    test_fixture_free(&f);
}

TEST(breaker_closes_on_success_and_refills)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.backoff_base_ms = 100;
    f.opts.backoff_jitter = 0;
    f.opts.breaker_threshold = 2;
    test_fixture_start(&f);
    open_breaker(&f, 2);
    cpool_mem_set_failpoint(f.mem, NULL);
    test_clock_advance_ms(&f.clk, f.pool, 200); /* the 200 ms step is over */
    cpool_conn *c = test_checkout(f.pool);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_FALSE(s.breaker_open);
    ASSERT_EQ(0, s.connect_fail_streak);
    cpool_conn *d = test_checkout(f.pool); /* new connections again */
    test_checkin(f.pool, c, 0);
    test_checkin(f.pool, d, 0);
    test_fixture_free(&f);
}

/* The background refill obeys the same backoff and probes when open. */
TEST(refill_obeys_backoff)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.backoff_base_ms = 100;
    f.opts.backoff_jitter = 0;
    f.opts.breaker_threshold = 0;
    f.opts.min_pool_size = 2;
    refuse_all(f.mem);
    test_fixture_start(&f);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(1, connects(&f));
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(1, connects(&f)); /* still inside the step */
    test_clock_advance_ms(&f.clk, f.pool, 100);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(2, connects(&f));
    cpool_mem_set_failpoint(f.mem, NULL);
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(2, test_counts(f.pool).available);
    test_fixture_free(&f);
}

/* Checkouts queued in a backoff step are failed when the circuit opens:
 * only a new connection could serve them. */
TEST(breaker_opening_fails_waiters)
{
    test_fixture f;
    start(&f, 100, 100000, 2);
    refuse_all(f.mem);
    ASSERT_RC(CPOOL_ECONNECT, try_checkout(f.pool, NULL));
    test_job a, b;
    test_job_start(&a, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000);
    test_job_start(&b, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 2000);
    test_clock_advance_ms(&f.clk, f.pool, 100); /* a's step ends: it tries */
    test_job_join(&a, 5000);
    test_job_join(&b, 5000);
    ASSERT_RC(CPOOL_ECONNECT, a.rc);
    ASSERT_RC(CPOOL_EUNAVAILABLE, b.rc);
    ASSERT_LT((b.end_ns - b.start_ns) / 1000000, 5000);
    test_fixture_free(&f);
}


/* ------------------------------------------------------------ shutdown */

typedef struct returner {
    cpool *pool;
    cpool_conn *conn;
    int64_t after_ms;
    pthread_t thread;
} returner;

static void *return_later(void *arg)
{
    returner *r = arg;
    test_sleep_ms(r->after_ms);
    ASSERT_OK(cpool_checkin(r->pool, r->conn, 0, NULL));
    return NULL;
}

TEST(shutdown_waits_for_returns)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    returner r[2] = {{f.pool, test_checkout(f.pool), 30, 0},
                     {f.pool, test_checkout(f.pool), 80, 0}};
    cpool_conn *idle = test_checkout(f.pool);
    test_checkin(f.pool, idle, 0);
    /* Timed from before the returners start: the later one checks in no
     * sooner than 80 ms after this, however late this thread runs next. */
    int64_t t0 = test_now_ms();
    for (int i = 0; i < 2; i++)
        TEST_THREAD_START(&r[i].thread, return_later, &r[i]);
    cpool_shutdown_report rep;
    ASSERT_OK(cpool_shutdown(f.pool, 5000, &rep, NULL));
    int64_t took = test_now_ms() - t0;
    for (int i = 0; i < 2; i++)
        pthread_join(r[i].thread, NULL);
    ASSERT_GE(took, 70);
    ASSERT_LT(took, 2000);
    ASSERT_EQ(2, rep.in_use_at_start);
    ASSERT_EQ(2, rep.returned);
    ASSERT_EQ(0, rep.interrupted);
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    ASSERT_EQ(3, test_rec_count_closed(&f.rec, CPOOL_CLOSE_POOL_CLOSED));
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    ASSERT_EQ(0, test_mem_stats(f.mem).interrupts);
    ASSERT_RC(CPOOL_ECLOSED, cpool_shutdown(f.pool, 0, NULL, NULL));
    test_fixture_free(&f);
}

TEST(shutdown_interrupts_after_grace)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *kept = test_checkout(f.pool);
    cpool_shutdown_report rep;
    int64_t t0 = test_now_ms();
    ASSERT_OK(cpool_shutdown(f.pool, 100, &rep, NULL));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 95);
    ASSERT_LT(took, 600); /* grace plus a small bound */
    ASSERT_EQ(1, rep.in_use_at_start);
    ASSERT_EQ(0, rep.returned);
    ASSERT_EQ(1, rep.interrupted);
    ASSERT_TRUE(cpool_mem_conn_interrupted(cpool_conn_native(kept)));
    ASSERT_EQ(1, test_mem_stats(f.mem).open);
    test_checkin(f.pool, kept, 0); /* closed as it comes back */
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

typedef struct shutdown_arg {
    cpool *p;
    cpool_shutdown_report *rep;
} shutdown_arg;

static void *shutdown_main(void *arg)
{
    shutdown_arg *a = arg;
    ASSERT_OK(cpool_shutdown(a->p, 5000, a->rep, NULL));
    return NULL;
}

/* cpool_drain begins a shutdown and returns at once; its progress is
 * readable while leases come back; cpool_shutdown then finishes it. */
TEST(drain_returns_at_once_and_reports_progress)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool), *b = test_checkout(f.pool);
    cpool_conn *c = test_checkout(f.pool), *spare = test_checkout(f.pool);
    test_checkin(f.pool, spare, 0); /* one idle: closed by the drain */
    cpool_shutdown_report st;
    ASSERT_RC(CPOOL_ESTATE, cpool_drain_status(f.pool, &st));
    int64_t t0 = test_now_ms();
    ASSERT_OK(cpool_drain(f.pool, NULL));
    ASSERT_OK(cpool_drain(f.pool, NULL)); /* idempotent */
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(CPOOL_STATE_SHUTTING_DOWN, test_counts(f.pool).state);
    cpool_conn *none = NULL;
    cpool_error e;
    ASSERT_RC(CPOOL_ESHUTDOWN, cpool_checkout(f.pool, 1000, &none, &e));
    ASSERT_OK(cpool_drain_status(f.pool, &st));
    ASSERT_EQ(3, st.in_use_at_start);
    ASSERT_EQ(0, st.returned);
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_POOL_CLOSED)); /* the idle one */
    test_checkin(f.pool, a, 0);
    ASSERT_OK(cpool_drain_status(f.pool, &st));
    ASSERT_EQ(1, st.returned);
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_POOL_CLOSED)); /* closed, not kept */
    /* The shutdown goes on from the drain: it waits for the other two. */
    pthread_t sd;
    cpool_shutdown_report rep;
    shutdown_arg arg = {f.pool, &rep};
    TEST_THREAD_START(&sd, shutdown_main, &arg);
    test_sleep_ms(20);
    test_checkin(f.pool, b, 0);
    test_checkin(f.pool, c, 0);
    pthread_join(sd, NULL);
    ASSERT_EQ(3, rep.in_use_at_start);
    ASSERT_EQ(3, rep.returned);
    ASSERT_EQ(0, rep.interrupted);
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    ASSERT_RC(CPOOL_ECLOSED, cpool_shutdown(f.pool, 0, NULL, &e));
    ASSERT_RC(CPOOL_ECLOSED, cpool_drain(f.pool, &e));
    test_fixture_free(&f);
}

TEST(shutdown_rejects_new_checkouts_at_once)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job waiter;
    test_job_start(&waiter, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000);
    returner r = {f.pool, held, 300, 0};
    TEST_THREAD_START(&r.thread, return_later, &r);
    test_job late;
    pthread_t sd;
    cpool_shutdown_report rep;
    shutdown_arg arg = {f.pool, &rep};
    TEST_THREAD_START(&sd, shutdown_main, &arg);
    test_job_join(&waiter, 2000); /* failed at once, not at its deadline */
    ASSERT_RC(CPOOL_ESHUTDOWN, waiter.rc);
    ASSERT_STR_CONTAINS(waiter.err.message, "shutting down");
    test_job_start(&late, f.pool, 10000);
    test_job_join(&late, 2000);
    ASSERT_TRUE(late.rc == CPOOL_ESHUTDOWN || late.rc == CPOOL_ECLOSED);
    pthread_join(sd, NULL);
    pthread_join(r.thread, NULL);
    ASSERT_EQ(1, rep.returned);
    cpool_error e;
    ASSERT_RC(CPOOL_ECLOSED, cpool_ready(f.pool, &e));
    test_fixture_free(&f);
}

/* While cpool_shutdown() drains, the pool reads shutting_down in its
 * counts, its statistics and the Prometheus text, not paused; closed once
 * the shutdown returns. The lease goes back only when the test says so. */
TEST(shutdown_reads_shutting_down_while_it_drains)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    pthread_t sd;
    cpool_shutdown_report rep;
    shutdown_arg arg = {f.pool, &rep};
    TEST_THREAD_START(&sd, shutdown_main, &arg);
    WAIT_UNTIL(test_counts(f.pool).state == CPOOL_STATE_SHUTTING_DOWN, 5000);

    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(CPOOL_STATE_SHUTTING_DOWN, s.counts.state);
    char text[16384];
    size_t n = cpool_stats_prometheus(&s, "p", NULL, text, sizeof text);
    ASSERT_LT(n, sizeof text);
    ASSERT_STR_CONTAINS(text, "db_client_connection_pool_state{pool=\"p\",state=\"shutting_down\"} 1");
    ASSERT_STR_CONTAINS(text, "db_client_connection_pool_state{pool=\"p\",state=\"paused\"} 0");

    test_checkin(f.pool, held, 0);
    pthread_join(sd, NULL);
    ASSERT_EQ(1, rep.returned);
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    test_fixture_free(&f);
}

/* ------------------------------------------------------------ leaks */

typedef struct log_capture {
    pthread_mutex_t mu;
    int warns;
    char last[512];
} log_capture;

static void capture_log(const cpool_log_record *rec, void *ctx)
{
    log_capture *lc = ctx;
    pthread_mutex_lock(&lc->mu);
    if (rec->level == CPOOL_LOG_WARN) {
        lc->warns++;
        cpool_log_format_json(rec, lc->last, sizeof lc->last);
    }
    pthread_mutex_unlock(&lc->mu);
}

TEST(leak_reported_with_holder)
{
    test_fixture f;
    test_fixture_init(&f);
    log_capture lc = {.warns = 0};
    pthread_mutex_init(&lc.mu, NULL);
    f.opts.clock = &f.clk.clock;
    f.opts.leak_threshold_ms = 1000;
    f.opts.on_log = capture_log;
    f.opts.log_ctx = &lc;
    f.opts.log_level = CPOOL_LOG_WARN;
    test_fixture_start(&f);
    cpool_checkout_opts co = {.struct_size = sizeof co, .timeout_ms = -1,
                              .label = "handler_orders"};
    cpool_conn *c = NULL;
    ASSERT_OK(cpool_checkout_with(f.pool, &co, &c, NULL));
    test_clock_advance_ms(&f.clk, f.pool, 999);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    test_clock_advance_ms(&f.clk, f.pool, 1);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_OK(cpool_maintain(f.pool, NULL)); /* reported once per lease */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED, 0, &ev));
    ASSERT_EQ(cpool_conn_id(c), ev.connection_id);
    ASSERT_EQ(1000000000, ev.duration_ns);
    ASSERT_EQ(1, lc.warns);
    ASSERT_STR_CONTAINS(lc.last, "\"holderLabel\":\"handler_orders\"");
    char tid[64];
    snprintf(tid, sizeof tid, "\"holderThread\":%d", (int)gettid());
    ASSERT_STR_CONTAINS(lc.last, tid);
    ASSERT_STR_CONTAINS(lc.last, "leak threshold");
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(1, s.leaks_suspected);
    test_checkin(f.pool, c, 0);
    /* A new lease of the same connection starts a new count. */
    c = test_checkout(f.pool);
    test_clock_advance_ms(&f.clk, f.pool, 1000);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(2, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
    pthread_mutex_destroy(&lc.mu);
}

TEST(leak_reclaimed_frees_slot)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 1;
    f.opts.leak_threshold_ms = 100;
    f.opts.leak_reclaim_ms = 200;
    test_fixture_start(&f);
    cpool_conn *leaked = NULL;
    ASSERT_OK(cpool_checkout_here(f.pool, -1, &leaked, NULL));
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_TRUE(cpool_mem_conn_interrupted(cpool_conn_native(leaked)));
    ASSERT_EQ(0, test_counts(f.pool).total);
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_RECLAIMED));
    cpool_conn *next = test_checkout(f.pool); /* the slot is free again */
    ASSERT_NE(cpool_conn_id(leaked), cpool_conn_id(next));
    ASSERT_EQ(2, test_mem_stats(f.mem).open);
    ASSERT_OK(cpool_checkin(f.pool, leaked, 0, NULL)); /* closed, not reused */
    ASSERT_EQ(1, test_mem_stats(f.mem).open);
    ASSERT_EQ(1, test_counts(f.pool).in_use);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(1, s.leaks_reclaimed);
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_RECLAIMED]);
    test_checkin(f.pool, next, 0);
    test_fixture_free(&f);
}

TEST(leak_reclaimed_never_returned_closed_at_destroy)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.leak_threshold_ms = 10;
    f.opts.leak_reclaim_ms = 10;
    test_fixture_start(&f);
    cpool_conn *lost = test_checkout(f.pool);
    (void)lost;
    test_clock_advance_ms(&f.clk, f.pool, 10);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(0, test_counts(f.pool).total);
    /* Reported before it was taken back, even in one run. */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CONN_LEAK_SUSPECTED));
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST(leak_options_validated)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    cpool *p = NULL;
    cpool_error e;
    o.leak_reclaim_ms = 100;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "leak_threshold_ms");
    o.leak_threshold_ms = 200;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    cpool_checkout_opts bad = {.struct_size = 4};
    cpool_conn *c = NULL;
    o.leak_threshold_ms = 0;
    o.leak_reclaim_ms = 0;
    p = test_pool_create(&o);
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout_with(p, &bad, &c, &e));
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* While establishments fail, the background thread probes the server every
 * probe_interval_ms (a connect, nothing sent) and ends the backoff step as
 * soon as it answers: service comes back within a probe interval of the
 * server, not when a long step runs out. Without probes it waits the step
 * out. */
TEST(probe_ends_backoff_when_server_returns)
{
    for (int probe = 1; probe >= 0; probe--) {
        test_fixture f;
        test_fixture_init(&f);
        f.opts.backoff_base_ms = 3000;
        f.opts.backoff_max_ms = 3000;
        f.opts.backoff_jitter = 0;
        f.opts.breaker_threshold = 1;
        f.opts.maintenance_interval_ms = 1000;
        f.opts.probe_interval_ms = probe ? 50 : 0;
        test_fixture_start(&f);
        refuse_all(f.mem);
        cpool_conn *c = NULL;
        ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 1000, &c, NULL));
        ASSERT_RC(CPOOL_EUNAVAILABLE, cpool_checkout(f.pool, 1000, &c, NULL));
        test_sleep_ms(200); /* the server is still down: probes fail */
        cpool_mem_set_failpoint(f.mem, NULL); /* back */
        int64_t back = test_now_ms();
        while (cpool_checkout(f.pool, 200, &c, NULL) != CPOOL_OK) {
            if (test_now_ms() - back > 5000)
                FAIL("no service 5 s after the server came back (probe %d)", probe);
            test_sleep_ms(5);
        }
        int64_t took = test_now_ms() - back;
        test_checkin(f.pool, c, 0);
        uint64_t probes = test_mem_stats(f.mem).probes;
        test_fixture_free(&f);
        /* The server came back 200 ms into a 3 s step: with probes, service
         * returns within a few probe intervals (a margin for a loaded
         * machine under TSan); without, at the step's end. */
        if (probe) {
            ASSERT_LT(took, 1500);
            ASSERT_GE(probes, 3); /* it probed while the server was down */
        } else {
            ASSERT_GE(took, 2500); /* the step ran its course */
            ASSERT_EQ(0, probes);
        }
    }
}

/* A server that takes longer to start a session than callers wait: every
 * checkout's own establishment is cut by its deadline (and rightly not
 * counted against the server). The pool must still reach the server: the
 * background thread then makes one establishment bound by
 * connect_timeout_ms alone, and the connection serves the next checkout. */
TEST(slow_server_reached_though_callers_give_up_first)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.on_event = NULL;
    f.opts.maintenance_interval_ms = 1000; /* a background thread */
    f.opts.connect_timeout_ms = 5000;
    test_fixture_start(&f);
    cpool_mem_failpoint fp = {.times = -1, .block_ms = 300}; /* every session: 300 ms */
    cpool_mem_set_failpoint(f.mem, &fp);
    int64_t t0 = test_now_ms();
    int cut = 0;
    cpool_conn *c = NULL;
    cpool_error e;
    int rc;
    while ((rc = cpool_checkout(f.pool, 100, &c, &e)) != CPOOL_OK) {
        ASSERT_RC(CPOOL_ETIMEDOUT, rc);
        cut++;
        if (test_now_ms() - t0 > 5000)
            FAIL("no connection 5 s into a server that starts a session in 300 ms (%d "
                 "checkouts timed out): %s",
                 cut, e.message);
    }
    ASSERT_GE(cut, 1);
    test_checkin(f.pool, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(0, s.breaker_opens);
    test_fixture_free(&f);
}

/* When a probe finds the server back, the first establishment for the
 * queue is the background thread's, bound by connect_timeout_ms alone, not
 * a waiter's, which only has what is left of its deadline. With one
 * establishment at a time, the waiter (200 ms) never gets to establish: it
 * times out in the queue while the background thread's establishment
 * (400 ms) goes on, and that connection serves the next checkout. Were the
 * waiter granted the establishment, its deadline would cut it ("while
 * connecting") and the session would have to start again. */
TEST(probe_success_establishes_for_the_queue)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.on_event = NULL;
    f.opts.maintenance_interval_ms = 1000;
    f.opts.probe_interval_ms = 20;
    f.opts.backoff_base_ms = 5000;
    f.opts.backoff_max_ms = 5000;
    f.opts.backoff_jitter = 0;
    f.opts.max_connecting = 1;
    f.opts.connect_timeout_ms = 5000;
    test_fixture_start(&f);
    refuse_all(f.mem);
    cpool_conn *c = NULL;
    cpool_error e;
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 1000, &c, &e)); /* a 5 s step */
    /* Back, but a session takes 400 ms to start. */
    cpool_mem_failpoint slow = {.times = -1, .block_ms = 400};
    cpool_mem_set_failpoint(f.mem, &slow);
    uint64_t connects = test_mem_stats(f.mem).connects;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 200, &c, &e));
    if (strstr(e.message, "while connecting") != NULL)
        FAIL("the waiter was given the establishment after the probe: %s", e.message);
    ASSERT_OK_E(cpool_checkout(f.pool, 2000, &c, &e), &e);
    ASSERT_EQ(connects + 1, test_mem_stats(f.mem).connects); /* one session started */
    ASSERT_GE(test_mem_stats(f.mem).probes, 1);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* ------------------------------------------------------------ startup */

TEST(wait_connected_fills_min_pool_size)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.min_pool_size = 3;
    test_fixture_start(&f);
    cpool_error e;
    ASSERT_OK_E(cpool_wait_connected(f.pool, 0, 2000, &e), &e);
    cpool_counts k = test_counts(f.pool);
    ASSERT_EQ(3, k.available);
    ASSERT_EQ(0, k.in_use);
    test_fixture_free(&f);
}

TEST(wait_connected_retries_then_fails_with_last_error)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.backoff_base_ms = 20;
    f.opts.backoff_max_ms = 40;
    f.opts.breaker_threshold = 3;
    test_fixture_start(&f);
    refuse_all(f.mem);
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, cpool_wait_connected(f.pool, 1, 300, &e));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 290);
    ASSERT_LT(took, 2000);
    ASSERT_STR_CONTAINS(e.message, "startup: 0 of 1 connections after 300 ms");
    ASSERT_EQ(111, e.native);
    ASSERT_TRUE(e.labels & CPOOL_LABEL_SYSTEM_OVERLOADED);
    uint64_t n = connects(&f);
    ASSERT_GE(n, 4);  /* it kept trying, through the open circuit */
    ASSERT_LE(n, 20); /* but no faster than the backoff allows */
    test_fixture_free(&f);
}

/* The server comes up while cpool_open waits. */
static void *heal_later(void *arg)
{
    test_sleep_ms(150);
    cpool_mem_set_failpoint(arg, NULL);
    return NULL;
}

/* Startup can fill the whole pool even when tenants reserve part of it:
 * the connections are the pool's, not a tenant's leases. */
TEST(wait_connected_reaches_max_with_tenant_reserve)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 4;
    f.pool = test_pool_create(&f.opts);
    cpool_error e;
    ASSERT_OK_E(cpool_tenant_set(f.pool, "b", 0, 2, &e), &e);
    test_ready(f.pool);
    ASSERT_OK_E(cpool_wait_connected(f.pool, 4, 2000, &e), &e);
    cpool_counts k = test_counts(f.pool);
    ASSERT_EQ(4, k.total);
    ASSERT_EQ(4, k.available);
    test_fixture_free(&f);
}

TEST(wait_connected_succeeds_when_backend_comes_up)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.backoff_base_ms = 20;
    f.opts.backoff_max_ms = 50;
    f.opts.breaker_threshold = 2;
    test_fixture_start(&f);
    refuse_all(f.mem);
    pthread_t t;
    TEST_THREAD_START(&t, heal_later, f.mem);
    cpool_error e;
    ASSERT_OK_E(cpool_wait_connected(f.pool, 1, 3000, &e), &e);
    pthread_join(t, NULL);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

TEST(open_waits_for_startup_connections)
{
    cpool *p = NULL;
    cpool_error e;
    ASSERT_OK_E(cpool_open("mem://open?startup_wait_ms=1000&minPoolSize=2&"
                           "maintenance_interval_ms=-1",
                           NULL, &p, &e),
                &e);
    ASSERT_EQ(2, test_counts(p).available);
    ASSERT_EQ(CPOOL_STATE_READY, test_counts(p).state);
    cpool_destroy(p);
    ASSERT_RC(CPOOL_EINVAL, cpool_open("nosuch://x", NULL, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "no connector");
    ASSERT_NULL(p);
}

/* ------------------------------------------------------------ regressions */

/* A caller's own deadline ending establishments says nothing about the
 * backend: it must not open the circuit. */
TEST(caller_deadline_does_not_trip_breaker)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.backoff_base_ms = 100;
    f.opts.breaker_threshold = 2;
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = -1;
    fp.block_ms = 30; /* a slow but healthy handshake */
    cpool_mem_set_failpoint(f.mem, &fp);
    for (int i = 0; i < 5; i++) {
        cpool_conn *c = NULL;
        int rc = cpool_checkout(f.pool, 0, &c, NULL);
        ASSERT_TRUE(rc != 0);
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(0, s.connect_fail_streak);
    ASSERT_FALSE(s.breaker_open);
    cpool_conn *c = NULL;
    cpool_error e;
    ASSERT_OK_E(cpool_checkout(f.pool, 2000, &c, &e), &e);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* An establishment cancelled by cpool_shutdown() says "shutting down". */
TEST(shutdown_cancels_establishment_with_eshutdown)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.block_until_interrupted = true;
    cpool_mem_set_failpoint(f.mem, &fp);
    test_job j;
    test_job_start(&j, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).pending == 1, 2000);
    ASSERT_OK(cpool_shutdown(f.pool, 1000, NULL, NULL));
    test_job_join(&j, 2000);
    ASSERT_RC(CPOOL_ESHUTDOWN, j.rc);
    test_fixture_free(&f);
}

/* After the backend recovered, a later failure of another kind is
 * reported as itself, not as the old establishment error. */
TEST(wait_connected_reports_current_failure)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 2;
    test_fixture_start(&f);
    test_fail_next_handshake(f.mem, CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 1000, &c, NULL));
    c = test_checkout(f.pool); /* recovered */
    /* The second connection's handshake is slow, not failing. */
    cpool_mem_failpoint fp = {.times = -1, .block_ms = 5000};
    cpool_mem_set_failpoint(f.mem, &fp);
    cpool_error e;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_wait_connected(f.pool, 2, 50, &e));
    ASSERT_EQ(CPOOL_ETIMEDOUT, e.code);
    ASSERT_STR_CONTAINS(e.message, "1 of 2 connections");
    cpool_mem_set_failpoint(f.mem, NULL);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(code_values_checked_without_overflow)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    cpool_error e;
    o.validation = (cpool_validation)9;
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "validation = 9 (from code)");
    o.validation = CPOOL_VALIDATE_CHECK;
    o.lifetime_jitter = 0.9;
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "lifetime_jitter = 0.9");
    o.lifetime_jitter = 0.05;
    o.min_pool_size = 5;
    o.max_pool_size = 2; /* explain refuses what cpool_create would */
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "minPoolSize");
    o.min_pool_size = 0;
    o.maintenance_interval_ms = -5; /* any negative value: no thread */
    ASSERT_OK_E(cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e), &e);
}

/* A checkout queued before an establishment failed is served when that
 * failure's backoff step ends, with or without a maintenance thread. */
static void lost_wakeup_case(int64_t maintenance_ms)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_connecting = 1;
    f.opts.backoff_base_ms = 50;
    f.opts.backoff_jitter = 0;
    f.opts.maintenance_interval_ms = maintenance_ms;
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.block_ms = 100;
    fp.fail = true;
    fp.fail_phase = CPOOL_PHASE_CONNECT;
    fp.fail_kind = CPOOL_FAIL_NETWORK;
    cpool_mem_set_failpoint(f.mem, &fp);
    test_job first, second;
    test_job_start(&first, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).pending == 1, 2000); /* the only slot */
    test_job_start(&second, f.pool, 3000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000); /* queued before the failure */
    test_job_join(&first, 3000);
    test_job_join(&second, 3000);
    ASSERT_RC(CPOOL_ECONNECT, first.rc);
    ASSERT_OK_E(second.rc, &second.err);
    ASSERT_LT((second.end_ns - second.start_ns) / 1000000, 1000);
    test_checkin(f.pool, second.conn, 0);
    test_fixture_free(&f);
}

TEST(queued_checkout_served_after_backoff_step)
{
    lost_wakeup_case(-1);
    lost_wakeup_case(2000);
}

/* A lease reclaimed while shutting down ends the wait for it. */
TEST(shutdown_counts_reclaimed_leases)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.maintenance_interval_ms = 10;
    f.opts.leak_threshold_ms = 50;
    f.opts.leak_reclaim_ms = 100;
    test_fixture_start(&f);
    cpool_conn *kept = test_checkout(f.pool);
    cpool_shutdown_report rep;
    int64_t t0 = test_now_ms();
    ASSERT_OK(cpool_shutdown(f.pool, 3000, &rep, NULL));
    ASSERT_LT(test_now_ms() - t0, 2000);
    ASSERT_EQ(1, rep.in_use_at_start);
    ASSERT_EQ(1, rep.reclaimed);
    ASSERT_EQ(0, rep.returned);
    ASSERT_EQ(0, rep.interrupted);
    test_checkin(f.pool, kept, 0);
    test_fixture_free(&f);
}

/* A struct reused after a reclaim must not carry the old lease's time
 * into the new lease (a leak scan would reclaim it at once). */
TEST(reused_struct_starts_a_fresh_lease)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 1;
    f.opts.leak_threshold_ms = 100;
    f.opts.leak_reclaim_ms = 200;
    test_fixture_start(&f);
    cpool_conn *old = test_checkout(f.pool);
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(cpool_maintain(f.pool, NULL)); /* reclaimed */
    ASSERT_OK(cpool_checkin(f.pool, old, 0, NULL));  /* struct to the free list */
    cpool_conn *fresh = test_checkout(f.pool);   /* may reuse the struct */
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(1, test_counts(f.pool).in_use);
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(fresh)));
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(1, s.leaks_reclaimed);
    test_checkin(f.pool, fresh, 0);
    test_fixture_free(&f);
}

TEST_MAIN()
