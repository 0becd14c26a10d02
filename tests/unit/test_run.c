/* test_run.c -- cpool_run: a lease around a function, and retries of
 * RetryableError within one deadline. */
#include "test.h"

/* The script of one attempt after another: fail `fails` times with
 * `kind`/`labels`, then succeed. Records the leases it was given. */
typedef struct script {
    int fails;
    cpool_fail_kind kind;
    unsigned labels;
    int calls;
    uint64_t ids[16];
    int64_t deadline_ms[16];
} script;

static int scripted(cpool_conn *c, void *arg, cpool_error *err)
{
    script *s = arg;
    if (s->calls < 16) {
        s->ids[s->calls] = cpool_conn_id(c);
        s->deadline_ms[s->calls] = cpool_run_deadline_ms();
    }
    if (s->calls++ < s->fails) {
        cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, s->kind, 0, "attempt %d failed",
                        s->calls);
        err->labels = s->labels;
        return CPOOL_EIO;
    }
    return 0;
}

static cpool_stats stats_of(cpool *p)
{
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

TEST(run_leases_runs_and_returns)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    script s = {0};
    cpool_error e;
    ASSERT_OK_E(cpool_run(f.pool, NULL, scripted, &s, &e), &e);
    ASSERT_EQ(1, s.calls);
    ASSERT_EQ(-1, s.deadline_ms[0]); /* no deadline given */
    ASSERT_EQ(-1, cpool_run_deadline_ms()); /* outside fn */
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(1, n.available);
    ASSERT_EQ(0, n.in_use);
    ASSERT_EQ(1, stats_of(f.pool).checkins);
    /* Again: the same connection, reused. */
    ASSERT_OK(cpool_run(f.pool, NULL, scripted, &s, NULL));
    ASSERT_EQ(s.ids[0], s.ids[1]);
    test_fixture_free(&f);
}

/* Without the label nothing is retried; a failure that leaves the
 * connection in doubt closes it, an answer from the server does not. */
TEST(run_failure_closes_only_a_connection_in_doubt)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = -1, .retries = 3};
    script s = {.fails = 1, .kind = CPOOL_FAIL_NETWORK};
    cpool_error e;
    ASSERT_RC(CPOOL_EIO, cpool_run(f.pool, &o, scripted, &s, &e));
    ASSERT_EQ(1, s.calls);
    ASSERT_STR_EQ("attempt 1 failed", e.message);
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));
    ASSERT_EQ(0, test_counts(f.pool).total);

    s = (script){.fails = 1, .kind = CPOOL_FAIL_SERVER};
    ASSERT_RC(CPOOL_EIO, cpool_run(f.pool, &o, scripted, &s, &e));
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));
    ASSERT_EQ(1, test_counts(f.pool).available);
    cpool_stats st = stats_of(f.pool);
    ASSERT_EQ(0, st.retries + st.retries_succeeded + st.retries_exhausted);
    test_fixture_free(&f);
}

/* A function that fails without filling err still gets an error. */
static int bare_failure(cpool_conn *c, void *arg, cpool_error *err)
{
    (void)c;
    (void)arg;
    (void)err;
    return CPOOL_ESTATE;
}

TEST(run_fills_an_error_the_function_left_empty)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_error e;
    ASSERT_RC(CPOOL_ESTATE, cpool_run(f.pool, NULL, bare_failure, NULL, &e));
    ASSERT_EQ(CPOOL_ESTATE, e.code);
    ASSERT_STR_CONTAINS(e.message, "CPOOL_ESTATE");
    test_fixture_free(&f);
}

TEST(run_retries_on_a_fresh_connection)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 5000, .retries = 3};
    script s = {.fails = 2, .kind = CPOOL_FAIL_NETWORK, .labels = CPOOL_LABEL_RETRYABLE};
    cpool_error e;
    ASSERT_OK_E(cpool_run(f.pool, &o, scripted, &s, &e), &e);
    ASSERT_EQ(3, s.calls);
    ASSERT_TRUE(s.ids[0] != s.ids[1] && s.ids[1] != s.ids[2] && s.ids[0] != s.ids[2]);
    for (int i = 0; i < 3; i++) {
        ASSERT_GT(s.deadline_ms[i], 0);
        ASSERT_LE(s.deadline_ms[i], 5000);
    }
    cpool_stats st = stats_of(f.pool);
    ASSERT_EQ(2, st.retries);
    ASSERT_EQ(1, st.retries_succeeded);
    ASSERT_EQ(0, st.retries_exhausted);
    ASSERT_EQ(2, st.closed[CPOOL_CLOSE_ERROR]);
    test_fixture_free(&f);
}

TEST(run_retries_run_out)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = -1, .retries = 2};
    script s = {.fails = 100, .kind = CPOOL_FAIL_SERVER, .labels = CPOOL_LABEL_RETRYABLE};
    cpool_error e;
    ASSERT_RC(CPOOL_EIO, cpool_run(f.pool, &o, scripted, &s, &e));
    ASSERT_EQ(3, s.calls);
    ASSERT_STR_EQ("attempt 3 failed", e.message);
    ASSERT_TRUE(e.labels & CPOOL_LABEL_RETRYABLE);
    cpool_stats st = stats_of(f.pool);
    ASSERT_EQ(2, st.retries);
    ASSERT_EQ(0, st.retries_succeeded);
    ASSERT_EQ(1, st.retries_exhausted);
    /* A server's answer left the connection usable: one, kept throughout. */
    ASSERT_EQ(1, st.connections_created);
    test_fixture_free(&f);
}

/* The pauses grow by backoff_multiplier and never reach past the
 * deadline: on the fake clock (no real sleep) 60 ms fits in 100, the
 * next 120 ms does not, so two attempts are all there is. */
TEST(run_pauses_stay_inside_the_deadline)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.backoff_jitter = 0;
    test_fixture_start(&f);
    cpool_run_opts o = {.struct_size = sizeof o,
                        .timeout_ms = 100,
                        .retries = 10,
                        .retry_delay_ms = 60};
    script s = {.fails = 100, .kind = CPOOL_FAIL_NETWORK, .labels = CPOOL_LABEL_RETRYABLE};
    ASSERT_RC(CPOOL_EIO, cpool_run(f.pool, &o, scripted, &s, NULL));
    ASSERT_EQ(2, s.calls);
    ASSERT_EQ(1, stats_of(f.pool).retries_exhausted);
    test_fixture_free(&f);
}

/* Real time: a deadline ends an endless run of retryable failures on time. */
TEST(run_deadline_is_kept)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_run_opts o = {.struct_size = sizeof o,
                        .timeout_ms = 300,
                        .retries = 1000000,
                        .retry_delay_ms = 5};
    script s = {.fails = 1 << 30, .kind = CPOOL_FAIL_NETWORK, .labels = CPOOL_LABEL_RETRYABLE};
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_EIO, cpool_run(f.pool, &o, scripted, &s, NULL));
    int64_t took = test_now_ms() - t0;
    ASSERT_LE(took, 300 + 250); /* scheduling noise on a loaded machine */
    ASSERT_GE(s.calls, 2);
    ASSERT_EQ(1, stats_of(f.pool).retries_exhausted);
    test_fixture_free(&f);
}

/* A checkout failure labelled RetryableError is retried too: a paused pool
 * (CPOOL_ECLEARED) becomes ready during the pauses. */
static void *ready_later(void *arg)
{
    test_sleep_ms(100);
    cpool_ready(arg, NULL);
    return NULL;
}

TEST(run_retries_a_retryable_checkout_failure)
{
    test_fixture f;
    test_fixture_init(&f);
    f.pool = test_pool_create(&f.opts); /* created, not ready: paused */
    pthread_t th;
    TEST_THREAD_START(&th, ready_later, f.pool);
    cpool_run_opts o = {.struct_size = sizeof o,
                        .timeout_ms = 10000,
                        .retries = 1000,
                        .retry_delay_ms = 10};
    script s = {0};
    cpool_error e;
    ASSERT_OK_E(cpool_run(f.pool, &o, scripted, &s, &e), &e);
    pthread_join(th, NULL);
    ASSERT_EQ(1, s.calls);
    cpool_stats st = stats_of(f.pool);
    ASSERT_GE(st.retries, 1);
    ASSERT_EQ(1, st.retries_succeeded);
    ASSERT_GE(st.checkout_failures[-CPOOL_ECLEARED], 1);
    test_fixture_free(&f);
}

TEST(run_refuses_bad_arguments)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    script s = {0};
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_run(NULL, NULL, scripted, &s, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_run(f.pool, NULL, NULL, &s, &e));
    cpool_run_opts o = {.struct_size = 8};
    ASSERT_RC(CPOOL_EINVAL, cpool_run(f.pool, &o, scripted, &s, &e));
    ASSERT_STR_CONTAINS(e.message, "struct_size");
    o = (cpool_run_opts){.struct_size = sizeof o, .timeout_ms = -1, .retry_delay_ms = -1};
    ASSERT_RC(CPOOL_EINVAL, cpool_run(f.pool, &o, scripted, &s, &e));
    ASSERT_EQ(0, s.calls);
    test_fixture_free(&f);
}

TEST_MAIN()
