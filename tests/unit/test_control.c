/* test_control.c -- a live pool changed at runtime: resize (grow, shrink
 * without interrupting), suspend and resume without dropping anything, the
 * wait-queue limit, and cancelling queued checkouts. */
#include "test.h"

#include "../src/core/lease.h"

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

/* ------------------------------------------------------------ cancel */

typedef struct cancel_job {
    cpool *pool;
    cpool_cancel *token;
    int64_t timeout_ms;
    int rc;
    cpool_conn *conn;
    cpool_error err;
    atomic_bool done;
} cancel_job;

static void *cancel_job_main(void *arg)
{
    cancel_job *j = arg;
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = j->timeout_ms,
                             .cancel = j->token};
    j->rc = cpool_checkout_with(j->pool, &o, &j->conn, &j->err);
    atomic_store(&j->done, true);
    return NULL;
}

/* A queued checkout, blocking without a deadline, leaves the queue at once
 * with CPOOL_ECANCELED; the other waiters keep their places. */
static void cancel_case(bool observed)
{
    test_fixture f;
    test_fixture_init(&f);
    if (!observed)
        f.opts.on_event = NULL;
    f.opts.max_pool_size = 1;
    f.opts.wait_queue_timeout_ms = 0; /* no deadline: only the token ends it */
    test_fixture_start(&f);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    cpool_conn *held = test_checkout(f.pool);
    cancel_job a = {.pool = f.pool, .token = token, .timeout_ms = -1};
    cancel_job b = {.pool = f.pool, .token = NULL, .timeout_ms = 10000};
    pthread_t ta, tb;
    TEST_THREAD_START(&ta, cancel_job_main, &a);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    TEST_THREAD_START(&tb, cancel_job_main, &b);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 5000);
    int64_t t0 = test_now_ms();
    cpool_cancel_trigger(token);
    WAIT_UNTIL(atomic_load(&a.done), 5000);
    ASSERT_LT(test_now_ms() - t0, 1000);
    pthread_join(ta, NULL);
    ASSERT_RC(CPOOL_ECANCELED, a.rc);
    ASSERT_NULL(a.conn);
    ASSERT_STR_CONTAINS(a.err.message, "cancelled");
    ASSERT_TRUE(cpool_cancel_triggered(token));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(1, n.waiting); /* b is still queued, nothing else left behind */
    ASSERT_EQ(1, n.total);
    test_checkin(f.pool, held, 0); /* b is next */
    pthread_join(tb, NULL);
    ASSERT_OK(b.rc);
    test_checkin(f.pool, b.conn, 0);
    /* A triggered token fails a new checkout at once, even with a free
     * connection. */
    cancel_job c = {.pool = f.pool, .token = token, .timeout_ms = 1000};
    cancel_job_main(&c);
    ASSERT_RC(CPOOL_ECANCELED, c.rc);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    ASSERT_EQ(2, s.checkout_failures[-CPOOL_ECANCELED]);
    ASSERT_EQ(0, s.counts.waiting);
    if (observed)
        ASSERT_EQ(2, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
    ASSERT_STR_EQ("CPOOL_ECANCELED", cpool_err_name(CPOOL_ECANCELED));
    cpool_cancel_free(token);
    test_fixture_free(&f);
}

TEST(cancel_ends_a_queued_checkout) { cancel_case(true); }
TEST(cancel_ends_a_queued_checkout_unobserved) { cancel_case(false); }

/* One token, many checkouts, two pools: one trigger ends them all. */
TEST(cancel_one_token_many_waiters)
{
    test_fixture f, g;
    test_fixture_init(&f);
    test_fixture_init(&g);
    f.opts.max_pool_size = g.opts.max_pool_size = 1;
    test_fixture_start(&f);
    test_fixture_start(&g);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    cpool_conn *hf = test_checkout(f.pool), *hg = test_checkout(g.pool);
    enum { N = 6 };
    cancel_job j[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        j[i] = (cancel_job){.pool = i % 2 ? g.pool : f.pool, .token = token,
                            .timeout_ms = 20000};
        TEST_THREAD_START(&th[i], cancel_job_main, &j[i]);
    }
    WAIT_UNTIL(test_counts(f.pool).waiting == 3 && test_counts(g.pool).waiting == 3, 5000);
    cpool_cancel_trigger(token);
    cpool_cancel_trigger(token); /* idempotent */
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ASSERT_RC(CPOOL_ECANCELED, j[i].rc);
    }
    ASSERT_EQ(0, test_counts(f.pool).waiting);
    ASSERT_EQ(0, test_counts(g.pool).waiting);
    test_checkin(f.pool, hf, 0);
    test_checkin(g.pool, hg, 0);
    cpool_cancel_free(token);
    cpool_cancel_free(NULL);
    ASSERT_RC(CPOOL_EINVAL, cpool_cancel_new(NULL));
    ASSERT_FALSE(cpool_cancel_triggered(NULL));
    test_fixture_free(&f);
    test_fixture_free(&g);
}

/* A token that is never triggered changes nothing: checkouts are served. */
TEST(cancel_token_untriggered_is_harmless)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    for (int i = 0; i < 50; i++) {
        cpool_conn *held = test_checkout(f.pool);
        cancel_job j = {.pool = f.pool, .token = token, .timeout_ms = 5000};
        pthread_t th;
        TEST_THREAD_START(&th, cancel_job_main, &j);
        WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
        test_checkin(f.pool, held, 0);
        pthread_join(th, NULL);
        ASSERT_OK(j.rc);
        test_checkin(f.pool, j.conn, 0);
    }
    cpool_cancel_free(token);
    test_fixture_free(&f);
}

/* Triggers racing with handoffs, time-outs and check-ins: every checkout
 * ends with a lease, ECANCELED or ETIMEDOUT, no lease is given twice, and
 * nothing stays queued. Built to run under TSan too. */
typedef struct racer {
    cpool *pool;
    pthread_mutex_t mu; /* guards token against the trigger thread */
    cpool_cancel *token;
    atomic_bool *stop;
    atomic_int *owner;
    uint64_t leases, cancels;
} racer;

static void *racer_main(void *arg)
{
    racer *r = arg;
    unsigned seed = (unsigned)(uintptr_t)r;
    while (!atomic_load(r->stop)) {
        pthread_mutex_lock(&r->mu);
        cpool_cancel *t = r->token;
        pthread_mutex_unlock(&r->mu);
        cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 30, .cancel = t};
        cpool_conn *c = NULL;
        cpool_error e;
        int rc = cpool_checkout_with(r->pool, &o, &c, &e);
        if (rc == CPOOL_ECANCELED) {
            r->cancels++;
            cpool_cancel *fresh = NULL;
            ASSERT_OK(cpool_cancel_new(&fresh));
            pthread_mutex_lock(&r->mu);
            r->token = fresh;
            pthread_mutex_unlock(&r->mu);
            cpool_cancel_free(t); /* nobody else uses it now */
            continue;
        }
        if (rc == CPOOL_ETIMEDOUT)
            continue;
        if (rc != 0)
            FAIL("checkout: %s: %s", cpool_err_name(rc), e.message);
        uint64_t id = cpool_conn_id(c);
        int none = 0;
        if (id >= 1024 || !atomic_compare_exchange_strong(&r->owner[id], &none, 1))
            FAIL("connection %llu leased twice", (unsigned long long)id);
        test_sleep_us(rand_r(&seed) % 300);
        atomic_store(&r->owner[id], 0);
        test_checkin(r->pool, c, 0);
        r->leases++;
    }
    return NULL;
}

static void cancel_race(bool observed)
{
    test_fixture f;
    test_fixture_init(&f);
    if (!observed)
        f.opts.on_event = NULL;
    f.opts.max_pool_size = 2;
    f.opts.maintenance_interval_ms = 5;
    test_fixture_start(&f);
    enum { N = 8 };
    static atomic_int owner[1024];
    atomic_bool stop = false;
    racer r[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        r[i] = (racer){.pool = f.pool, .stop = &stop, .owner = owner};
        pthread_mutex_init(&r[i].mu, NULL);
        ASSERT_OK(cpool_cancel_new(&r[i].token));
        TEST_THREAD_START(&th[i], racer_main, &r[i]);
    }
    unsigned seed = 7;
    int64_t end = test_now_ms() + 1500;
    while (test_now_ms() < end) {
        racer *x = &r[rand_r(&seed) % N];
        pthread_mutex_lock(&x->mu);
        cpool_cancel_trigger(x->token);
        pthread_mutex_unlock(&x->mu);
        test_sleep_us(200 + rand_r(&seed) % 800);
    }
    atomic_store(&stop, true);
    uint64_t leases = 0, cancels = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        leases += r[i].leases;
        cancels += r[i].cancels;
        cpool_cancel_free(r[i].token);
        pthread_mutex_destroy(&r[i].mu);
    }
    ASSERT_GT(leases, 50);
    ASSERT_GT(cancels, 10);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.waiting);
    ASSERT_EQ(0, n.in_use);
    ASSERT_COUNTS_CONSISTENT(n);
    test_fixture_free(&f);
}

/* ---- The lock-free path's gate
 *
 * Every change the lock-free path must see (suspend, a shrinking resize,
 * clear, close) shuts the gate before the pool takes back its parked
 * connections, and resume, ready and the end of a shrink open it again. A
 * check-in while it is shut does not park. With a connector that has no
 * reset(), an untimed lock-free lease is ended and parked with one
 * compare-exchange (cpool_checkin), which relies on the gate alone; these
 * cases check in that way. */

/* Starts an unobserved pool whose check-ins may park in one step, and
 * returns a lease taken without the lock (the first checkout of a
 * connection takes the locked path and is timed). */
static cpool_conn *direct_lease(test_fixture *f, uint32_t max)
{
    f->opts.on_event = NULL;
    f->opts.connector = test_noreset_connector();
    f->opts.timing_sample = 0; /* no lock-free lease is timed */
    f->opts.max_pool_size = max;
    test_fixture_start(f);
    cpool_conn *c = test_checkout(f->pool);
    test_checkin(f->pool, c, 0);
    ASSERT_EQ(LEASE_PARKED, atomic_load(&c->leased));
    cpool_conn *again = test_checkout(f->pool);
    ASSERT_TRUE(again == c);
    ASSERT_EQ(0, atomic_load(&c->leased_ns)); /* untimed: the one-step park applies */
    return c;
}

static bool parked(const cpool_conn *c)
{
    return atomic_load(&c->leased) == LEASE_PARKED;
}

TEST(one_step_park_refuses_a_second_checkin)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    test_checkin(f.pool, c, 0);
    ASSERT_TRUE(parked(c));
    cpool_error e;
    ASSERT_RC(CPOOL_EDOUBLE, cpool_checkin(f.pool, c, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "is not checked out");
    ASSERT_TRUE(parked(c)); /* the refused check-in changed nothing */
    cpool_conn *d = test_checkout(f.pool);
    ASSERT_TRUE(d == c);
    test_checkin(f.pool, d, CPOOL_CHECKIN_BROKEN); /* the locked path closes it */
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(one_step_park_serves_a_waiter)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 1);
    test_job j;
    test_job_start(&j, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_checkin(f.pool, c, 0); /* parked, seen the waiter, taken back, handed */
    test_job_join(&j, 10000);
    ASSERT_OK(j.rc);
    ASSERT_TRUE(j.conn == c);
    ASSERT_FALSE(parked(c));
    test_checkin(f.pool, j.conn, 0);
    test_fixture_free(&f);
}

TEST(gate_shut_by_suspend_opened_by_resume)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    ASSERT_OK(cpool_suspend(f.pool, NULL));
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(LEASE_NONE, atomic_load(&c->leased)); /* on the available list */
    ASSERT_EQ(1, test_counts(f.pool).available);
    ASSERT_OK(cpool_resume(f.pool, NULL));
    cpool_conn *d = test_checkout(f.pool);
    ASSERT_TRUE(d == c);
    test_checkin(f.pool, d, 0);
    ASSERT_TRUE(parked(d));
    test_fixture_free(&f);
}

TEST(gate_shut_while_shrinking)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    cpool_conn *b = test_checkout(f.pool); /* a second connection */
    ASSERT_OK(cpool_resize(f.pool, 1, 0, NULL));
    test_checkin(f.pool, c, 0); /* one too many: closed */
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_RESIZED]);
    ASSERT_EQ(1, test_counts(f.pool).total);
    test_checkin(f.pool, b, 0); /* down to the maximum: parks again */
    ASSERT_TRUE(parked(b));
    test_fixture_free(&f);
}

TEST(gate_shut_by_clear_opened_by_ready)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    test_checkin(f.pool, c, 0); /* stale: closed at once */
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_STALE]);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_ready(f.pool);
    cpool_conn *d = test_checkout(f.pool);
    test_checkin(f.pool, d, 0);
    ASSERT_TRUE(parked(d));
    test_fixture_free(&f);
}

/* An open gate is not enough: the connection must be of its generation,
 * not marked for recycling. */
TEST(one_step_park_refuses_an_unfit_connection)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    test_ready(f.pool); /* the gate is open again, for the next generation */
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_STALE]);
    ASSERT_EQ(0, test_counts(f.pool).total);
    cpool_conn *d = test_checkout(f.pool);
    test_checkin(f.pool, d, 0);
    cpool_conn *e = test_checkout(f.pool); /* lock-free, untimed */
    ASSERT_TRUE(e == d);
    ASSERT_OK(cpool_conn_recycle(e));
    test_checkin(f.pool, e, 0);
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_RECYCLED]);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(gate_shut_by_drain)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    ASSERT_OK(cpool_drain(f.pool, NULL));
    test_checkin(f.pool, c, 0); /* closed as it comes back, not kept */
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_POOL_CLOSED]);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(gate_shut_by_close)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_conn *c = direct_lease(&f, 2);
    cpool_close(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, stats_of(f.pool).closed[CPOOL_CLOSE_POOL_CLOSED]);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(cancel_races_with_handoffs) { cancel_race(true); }
TEST(cancel_races_with_handoffs_unobserved) { cancel_race(false); }

TEST_MAIN()
