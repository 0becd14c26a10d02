/* test_pool.c -- checkout, checkin, options, states and waits: the parts of
 * the pool contract the official CMAP tests leave unchecked (foreign and
 * double check-in, option validation, ready after close, the generation bump
 * of a paused pool, maxPoolSize 0, the wait-queue timeouts). */
#include "test.h"

static bool counts_equal(cpool_counts a, cpool_counts b)
{
    return a.total == b.total && a.available == b.available &&
           a.pending == b.pending && a.in_use == b.in_use &&
           a.waiting == b.waiting && a.generation == b.generation &&
           a.state == b.state;
}

#define ASSERT_COUNTS_EQ(a, b)                                                \
    do {                                                                      \
        cpool_counts t_ca_ = (a), t_cb_ = (b);                                \
        if (!counts_equal(t_ca_, t_cb_))                                      \
            FAIL("counts changed: total %u/%u available %u/%u pending %u/%u " \
                 "in_use %u/%u generation %llu/%llu state %d/%d",             \
                 t_ca_.total, t_cb_.total, t_ca_.available, t_cb_.available,  \
                 t_ca_.pending, t_cb_.pending, t_ca_.in_use, t_cb_.in_use,    \
                 (unsigned long long)t_ca_.generation,                        \
                 (unsigned long long)t_cb_.generation, (int)t_ca_.state,      \
                 (int)t_cb_.state);                                           \
    } while (0)

/* ------------------------------------------------------------------ checkin */

TEST(foreign_checkin_rejected)
{
    test_fixture a, b;
    test_fixture_init(&a);
    test_fixture_start(&a);
    /* Pool B shares the server: only pool ownership tells the two apart. */
    test_rec_init(&b.rec);
    b.mem = NULL;
    test_options(&b.opts, a.mem, &b.rec);
    b.pool = test_pool_create(&b.opts);
    test_ready(b.pool);

    cpool_conn *held_a = test_checkout(a.pool);
    cpool_conn *cb = test_checkout(b.pool);
    cpool_counts before_a = test_counts(a.pool);
    cpool_counts before_b = test_counts(b.pool);
    size_t checked_in_a = test_rec_count(&a.rec, CPOOL_EV_CHECKED_IN);
    size_t checked_in_b = test_rec_count(&b.rec, CPOOL_EV_CHECKED_IN);

    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_EFOREIGN, cpool_checkin(a.pool, cb, 0, &e));
    ASSERT_RC(CPOOL_EFOREIGN, e.code);
    ASSERT_COUNTS_EQ(before_a, test_counts(a.pool));
    ASSERT_COUNTS_EQ(before_b, test_counts(b.pool));
    ASSERT_EQ(checked_in_a, test_rec_count(&a.rec, CPOOL_EV_CHECKED_IN));
    ASSERT_EQ(checked_in_b, test_rec_count(&b.rec, CPOOL_EV_CHECKED_IN));
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(cb)));

    /* The rejected lease is still B's and goes back normally. */
    uint64_t id_b = cpool_conn_id(cb);
    test_checkin(b.pool, cb, 0);
    cpool_counts after_b = test_counts(b.pool);
    ASSERT_EQ(1, after_b.available);
    ASSERT_EQ(0, after_b.in_use);
    cpool_conn *again = test_checkout(b.pool);
    ASSERT_EQ(id_b, cpool_conn_id(again));
    test_checkin(b.pool, again, 0);
    test_checkin(a.pool, held_a, 0);

    cpool_destroy(b.pool);
    test_rec_free(&b.rec);
    test_fixture_free(&a);
}

TEST(double_checkin_rejected)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    cpool_counts before = test_counts(f.pool);
    ASSERT_EQ(1, before.available);

    /* The connection is available, so its handle is still alive: a second
     * check-in must be recognised instead of putting it in the list twice
     * (which would later hand one connection to two threads). */
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_EDOUBLE, cpool_checkin(f.pool, c, 0, &e));
    ASSERT_RC(CPOOL_EDOUBLE, e.code);
    ASSERT_COUNTS_EQ(before, test_counts(f.pool));
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CHECKED_IN));
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CONN_CLOSED));

    /* Still usable, and handed out once only. */
    cpool_conn *c1 = test_checkout(f.pool);
    ASSERT_EQ(id, cpool_conn_id(c1));
    ASSERT_EQ(id, cpool_mem_conn_id(cpool_conn_native(c1)));
    cpool_conn *c2 = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c2));
    test_checkin(f.pool, c1, 0);
    test_checkin(f.pool, c2, 0);
    ASSERT_EQ(2, test_counts(f.pool).available);
    test_fixture_free(&f);
}

TEST(double_checkin_after_close_rejected)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, CPOOL_CHECKIN_BROKEN); /* closed at once */
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    cpool_counts before = test_counts(f.pool);

    /* The pool keeps the handle's memory while it lives (ASan would see a
     * use after free otherwise), so the mistake is reported, not acted on:
     * no second ConnectionCheckedIn, no second close. */
    ASSERT_RC(CPOOL_EDOUBLE, cpool_checkin(f.pool, c, 0, NULL));
    ASSERT_COUNTS_EQ(before, test_counts(f.pool));
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CHECKED_IN));
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_CONN_CLOSED));
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    test_fixture_free(&f);
}

TEST(null_arguments_rejected)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_error e;
    cpool_conn *c = NULL;
    cpool *p = NULL;

    ASSERT_RC(CPOOL_EINVAL, cpool_create(NULL, &p, &e));
    ASSERT_NULL(p);
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&f.opts, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout(NULL, 0, &c, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_checkout(f.pool, 0, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_checkin(f.pool, NULL, 0, &e));
    ASSERT_RC(CPOOL_EINVAL, e.code);
    ASSERT_RC(CPOOL_EINVAL, cpool_ready(NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_clear(NULL, 0, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_maintain(NULL, &e));

    c = test_checkout(f.pool);
    ASSERT_RC(CPOOL_EINVAL, cpool_checkin(NULL, c, 0, &e));
    ASSERT_EQ(1, test_counts(f.pool).in_use);
    /* err may be NULL on every call. */
    ASSERT_RC(CPOOL_EINVAL, cpool_checkin(f.pool, NULL, 0, NULL));
    ASSERT_OK(cpool_checkin(f.pool, c, 0, NULL));
    cpool_destroy(NULL); /* documented no-op */
    test_fixture_free(&f);
}

TEST(checkin_broken_flag_closes)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, CPOOL_CHECKIN_BROKEN);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(0, n.total);
    ASSERT_EQ(0, n.available);
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    test_fixture_free(&f);
}

TEST(checkin_resets_session)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    cpool_mem_conn_begin(cpool_conn_native(c));
    test_checkin(f.pool, c, 0);
    ASSERT_GE(test_mem_stats(f.mem).resets, 1);
    c = test_checkout(f.pool);
    ASSERT_EQ(id, cpool_conn_id(c)); /* reset, not replaced */
    ASSERT_FALSE(cpool_mem_conn_in_txn(cpool_conn_native(c)));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* The in-memory connector counts checks and resets on each connection at
 * every lease, so two connections must not share a cache line: threads on
 * their own connections would take the line from each other. */
TEST(mem_connections_have_cache_lines_of_their_own)
{
    enum { N = 8 };
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = N;
    test_fixture_start(&f);
    cpool_conn *c[N];
    uintptr_t at[N];
    for (int i = 0; i < N; i++) {
        c[i] = test_checkout(f.pool);
        at[i] = (uintptr_t)cpool_conn_native(c[i]);
        ASSERT_EQ(0, at[i] % 64);
        for (int j = 0; j < i; j++)
            ASSERT_GE(at[i] > at[j] ? at[i] - at[j] : at[j] - at[i], 64);
    }
    for (int i = 0; i < N; i++)
        test_checkin(f.pool, c[i], 0);
    test_fixture_free(&f);
}

TEST(checkin_failed_reset_closes)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    cpool_mem_conn_break(cpool_conn_native(c));
    test_checkin(f.pool, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_EQ(0, test_counts(f.pool).total);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(available_reused_newest_first)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool);
    cpool_conn *b = test_checkout(f.pool);
    uint64_t id_a = cpool_conn_id(a), id_b = cpool_conn_id(b);
    /* b is returned last, so it is the warmest and must be reused first;
     * a then ages towards maxIdleTimeMS. */
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, 0);
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_EQ(id_b, cpool_conn_id(c));
    cpool_conn *d = test_checkout(f.pool);
    ASSERT_EQ(id_a, cpool_conn_id(d));
    test_checkin(f.pool, c, 0);
    test_checkin(f.pool, d, 0);
    test_fixture_free(&f);
}

TEST(destroy_closes_outstanding_lease)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    cpool_conn *d = test_checkout(f.pool);
    test_checkin(f.pool, d, 0);
    (void)c; /* deliberately never checked in */
    cpool_destroy(f.pool);
    f.pool = NULL;
    cpool_mem_stats s = test_mem_stats(f.mem);
    ASSERT_EQ(0, s.open);
    ASSERT_EQ(2, s.closes);
    test_fixture_free(&f);
}

/* ------------------------------------------------------------------ options */

/* Expects cpool_create to refuse `o` with CPOOL_EINVAL, leave *out NULL,
 * name the option (`word`, compared without case and '_') and emit nothing. */
#define expect_rejected(o, rec, word) expect_rejected_at(o, rec, word, __LINE__)
static void expect_rejected_at(const cpool_options *o, test_recorder *rec,
                               const char *word, int line)
{
    cpool *p = (cpool *)&p; /* not NULL, so the test sees it being reset */
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_create(o, &p, &e);
    if (rc != CPOOL_EINVAL) {
        cpool_destroy(rc == CPOOL_OK ? p : NULL);
        test_fail(__FILE__, line, "cpool_create: expected CPOOL_EINVAL, got %s",
                  cpool_err_name(rc));
    }
    if (p != NULL)
        test_fail(__FILE__, line, "*out not NULL after a failed create");
    if (e.code != CPOOL_EINVAL)
        test_fail(__FILE__, line, "err.code %s", cpool_err_name(e.code));
    if (!test_mentions(e.message, word))
        test_fail(__FILE__, line, "message does not name %s: \"%s\"", word,
                  e.message);
    if (rec != NULL && test_rec_count(rec, CPOOL_EV_POOL_CREATED) != 0)
        test_fail(__FILE__, line, "ConnectionPoolCreated for a rejected pool");
}

/* A pool whose options are the defaults but for `field` = `value`, which
 * cpool_create must refuse as expect_rejected describes. */
#define expect_option_rejected(field, value, word)                            \
    do {                                                                      \
        test_fixture t_f_;                                                    \
        test_fixture_init(&t_f_);                                             \
        t_f_.opts.field = (value);                                            \
        expect_rejected(&t_f_.opts, &t_f_.rec, word);                         \
        test_fixture_free(&t_f_);                                             \
    } while (0)

TEST(create_rejects_min_above_max)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 2;
    f.opts.min_pool_size = 5;
    expect_rejected(&f.opts, &f.rec, "minpoolsize");
    /* Equal is fine. */
    f.opts.min_pool_size = 2;
    f.pool = test_pool_create(&f.opts);
    test_fixture_free(&f);
}

TEST(create_accepts_min_with_unlimited_max)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 0; /* no limit, so no minimum can exceed it */
    f.opts.min_pool_size = 5;
    f.pool = test_pool_create(&f.opts);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_CREATED));
    /* And the minimum is honoured without a limit. */
    test_ready(f.pool);
    /* A pass may stop at maxConnecting establishments; a few passes must
     * reach the minimum. */
    for (int i = 0; i < 10 && test_counts(f.pool).total < 5; i++)
        (void)cpool_maintain(f.pool, NULL);
    ASSERT_EQ(5, test_counts(f.pool).total);
    ASSERT_EQ(5, test_counts(f.pool).available);
    test_fixture_free(&f);
}

TEST(create_rejects_zero_max_connecting)
{
    expect_option_rejected(max_connecting, 0, "maxconnecting");
}

TEST(create_rejects_negative_wait_queue_timeout)
{
    expect_option_rejected(wait_queue_timeout_ms, -1, "waitqueuetimeout");
}

TEST(create_rejects_negative_max_idle_time)
{
    expect_option_rejected(max_idle_time_ms, -2, "maxidletime");
}

/* 0 would make the background thread spin; negative (no thread) and
 * positive values are the only meaningful ones. */
TEST(create_rejects_zero_maintenance_interval)
{
    expect_option_rejected(maintenance_interval_ms, 0, "maintenanceinterval");
}

TEST(create_rejects_null_connector)
{
    expect_option_rejected(connector, NULL, "connector");
}

TEST(create_rejects_incomplete_connector)
{
    test_fixture f;
    test_fixture_init(&f);
    cpool_connector broken = *cpool_mem_connector();
    broken.connect = NULL; /* required method missing */
    f.opts.connector = &broken;
    expect_rejected(&f.opts, &f.rec, "connector");
    broken = *cpool_mem_connector();
    broken.abi_version = 0; /* no table was ever versioned 0 */
    expect_rejected(&f.opts, &f.rec, "connector");
    test_fixture_free(&f);
}

TEST(create_rejects_small_struct_size)
{
    test_fixture f;
    test_fixture_init(&f);
    /* A size that does not even cover the connector: the library would
     * read fields the caller never had. */
    f.opts.struct_size = sizeof(size_t);
    expect_rejected(&f.opts, &f.rec, "structsize");
    f.opts.struct_size = 0;
    expect_rejected(&f.opts, &f.rec, "structsize");
    test_fixture_free(&f);
}

/* ------------------------------------------------------------------ states */

TEST(ready_after_close_fails)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_close(f.pool);
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECLOSED, cpool_ready(f.pool, &e));
    ASSERT_RC(CPOOL_ECLOSED, e.code);
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_READY));
    ASSERT_RC(CPOOL_ECLOSED, cpool_clear(f.pool, 0, NULL, &e));
    ASSERT_EQ(CPOOL_STATE_CLOSED, test_counts(f.pool).state);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    cpool_close(f.pool); /* idempotent */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_CLOSED));
    test_fixture_free(&f);
}

TEST(checkout_after_close_fails)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    cpool_close(f.pool);
    cpool_error e;
    memset(&e, 0, sizeof e);
    c = NULL;
    ASSERT_RC(CPOOL_ECLOSED, cpool_checkout(f.pool, 1000, &c, &e));
    ASSERT_RC(CPOOL_ECLOSED, e.code);
    ASSERT_NULL(c);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_POOL_CLOSED, ev.reason);
    ASSERT_EQ(0, test_counts(f.pool).total);
    test_fixture_free(&f);
}

TEST(clear_paused_pool_bumps_generation)
{
    test_fixture f;
    test_fixture_init(&f);
    f.pool = test_pool_create(&f.opts); /* created paused */
    ASSERT_EQ(0, test_counts(f.pool).generation);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(1, n.generation);
    ASSERT_EQ(CPOOL_STATE_PAUSED, n.state);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));

    /* A connection made now carries the bumped generation. */
    test_ready(f.pool);
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_EQ(1, cpool_conn_generation(c));
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL)); /* ready: event */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL)); /* paused again: none */
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    ASSERT_EQ(3, test_counts(f.pool).generation);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0); /* generation 1 < 3: stale */
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    test_fixture_free(&f);
}

/* ------------------------------------------------------------------ limits */

#define UNLIMITED_THREADS 50

typedef struct lease_crowd {
    cpool *pool;
    pthread_barrier_t all_out; /* every thread has its result */
    pthread_barrier_t release; /* main has looked at the counts */
    int rc[UNLIMITED_THREADS];
    uint64_t id[UNLIMITED_THREADS];
    atomic_int next;
} lease_crowd;

static void *crowd_main(void *arg)
{
    lease_crowd *k = arg;
    int me = atomic_fetch_add(&k->next, 1);
    cpool_conn *c = NULL;
    k->rc[me] = cpool_checkout(k->pool, 10000, &c, NULL);
    if (k->rc[me] == CPOOL_OK)
        k->id[me] = cpool_conn_id(c);
    /* Every thread meets the barriers even after a failure, so a failure
     * is reported by main instead of deadlocking the others. */
    pthread_barrier_wait(&k->all_out);
    pthread_barrier_wait(&k->release);
    if (k->rc[me] == CPOOL_OK)
        ASSERT_OK(cpool_checkin(k->pool, c, 0, NULL));
    return NULL;
}

TEST(unlimited_pool_serves_concurrent_leases)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 0;
    test_fixture_start(&f);
    lease_crowd k;
    memset(&k, 0, sizeof k);
    k.pool = f.pool;
    atomic_init(&k.next, 0);
    pthread_barrier_init(&k.all_out, NULL, UNLIMITED_THREADS + 1);
    pthread_barrier_init(&k.release, NULL, UNLIMITED_THREADS + 1);
    pthread_t th[UNLIMITED_THREADS];
    for (int i = 0; i < UNLIMITED_THREADS; i++)
        TEST_THREAD_START(&th[i], crowd_main, &k);
    pthread_barrier_wait(&k.all_out);
    cpool_counts n = test_counts(f.pool);
    for (int i = 0; i < UNLIMITED_THREADS; i++) {
        if (k.rc[i] != CPOOL_OK)
            FAIL("lease %d of %d failed: %s", i, UNLIMITED_THREADS,
                 cpool_err_name(k.rc[i]));
        for (int j = 0; j < i; j++)
            ASSERT_NE(k.id[j], k.id[i]);
    }
    ASSERT_EQ(UNLIMITED_THREADS, n.in_use);
    ASSERT_EQ(UNLIMITED_THREADS, n.total);
    pthread_barrier_wait(&k.release);
    for (int i = 0; i < UNLIMITED_THREADS; i++)
        pthread_join(th[i], NULL);
    ASSERT_EQ(UNLIMITED_THREADS, test_counts(f.pool).available);
    pthread_barrier_destroy(&k.all_out);
    pthread_barrier_destroy(&k.release);
    test_fixture_free(&f);
}

TEST(clear_fails_waiters_at_once)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1;
    f.opts.wait_queue_timeout_ms = 30000;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job jobs[3];
    for (int i = 0; i < 3; i++)
        test_job_start(&jobs[i], f.pool, -1); /* the pool's 30 s apply */
    WAIT_UNTIL(test_counts(f.pool).waiting == 3, 2000);

    cpool_error cause;
    memset(&cause, 0, sizeof cause);
    cause.code = CPOOL_EIO;
    snprintf(cause.message, sizeof cause.message, "cause-marker-42x");
    int64_t cleared_at = test_now_ns();
    ASSERT_OK(cpool_clear(f.pool, 0, &cause, NULL));
    for (int i = 0; i < 3; i++) {
        test_job_join(&jobs[i], 5000);
        ASSERT_RC(CPOOL_ECLEARED, jobs[i].rc);
        ASSERT_RC(CPOOL_ECLEARED, jobs[i].err.code);
        ASSERT_LT(jobs[i].end_ns - cleared_at, 1000000000LL);
        /* The waiter learns why the pool was cleared. */
        ASSERT_STR_CONTAINS(jobs[i].err.message, "cause-marker-42x");
    }
    ASSERT_EQ(0, test_counts(f.pool).waiting);
    ASSERT_EQ(3, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
    for (size_t i = 0; i < 3; i++) {
        test_event ev;
        ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, i, &ev));
        ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
    }
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

TEST(wait_queue_timeout_reports_counts)
{
    enum { MAX = 13 };
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = MAX;
    test_fixture_start(&f);
    cpool_conn *held[MAX];
    for (int i = 0; i < MAX; i++)
        held[i] = test_checkout(f.pool);

    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int64_t t0 = test_now_ns();
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 50, &c, &e));
    int64_t waited = test_now_ns() - t0;
    ASSERT_GE(waited, 50000000LL);
    ASSERT_RC(CPOOL_ETIMEDOUT, e.code);
    ASSERT_NULL(c);
    /* The message must let a user tell "pool too small" from "leak": it
     * carries the counts. 13 appears in nothing else of this message (the
     * address is unit-host:4242, the timeout 50 ms). */
    ASSERT_STR_CONTAINS(e.message, "13");
    ASSERT_TRUE(test_mentions(e.message, "timed out") ||
                test_mentions(e.message, "timeout"));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_TIMEOUT, ev.reason);
    ASSERT_GE(ev.duration_ns, 50000000LL);
    ASSERT_EQ(MAX, test_counts(f.pool).total);
    for (int i = 0; i < MAX; i++)
        test_checkin(f.pool, held[i], 0);
    test_fixture_free(&f);
}

TEST(wait_queue_timeout_follows_fake_clock)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_pool_size = 1;
    f.opts.wait_queue_timeout_ms = 5000;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    test_job job;
    test_job_start(&job, f.pool, -1);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000);

    /* Real time passes, the pool's clock does not: no timeout. */
    test_sleep_ms(100);
    ASSERT_FALSE(atomic_load(&job.done));
    test_clock_advance_ms(&f.clk, f.pool, 4999);
    test_sleep_ms(100);
    ASSERT_FALSE(atomic_load(&job.done));

    /* Past the deadline: cpool_wake() makes the waiter look at once. A pool
     * timing the wait by the real clock would still sleep ~4.8 s here, and
     * one that ignored cpool_wake() would notice only when some timed wait
     * of its own happened to run out. */
    int64_t advanced_at = test_now_ns();
    test_clock_advance_ms(&f.clk, f.pool, 2);
    test_job_join(&job, 2000);
    ASSERT_RC(CPOOL_ETIMEDOUT, job.rc);
    ASSERT_LT(job.end_ns - advanced_at, 300000000LL);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_TIMEOUT, ev.reason);
    ASSERT_GE(ev.duration_ns, 5000000000LL); /* measured on the fake clock */
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

/* No default wait is infinite: with every option left at its default, a
 * checkout that cannot be served ends with CPOOL_ETIMEDOUT after 30 s of
 * the pool's clock, and the default size is 10. (CMAP's 0 = no limit is
 * still there when asked for; the conformance runner asks.) */
TEST(default_checkout_wait_is_bounded)
{
    cpool_options d;
    cpool_options_init(&d, sizeof d);
    ASSERT_EQ(10, d.max_pool_size);
    ASSERT_EQ(30000, d.wait_queue_timeout_ms);

    test_fixture f;
    test_fixture_init(&f);
    f.opts.clock = &f.clk.clock;
    test_fixture_start(&f);
    cpool_conn *held[10];
    for (int i = 0; i < 10; i++)
        held[i] = test_checkout(f.pool);
    test_job job;
    test_job_start(&job, f.pool, -1);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000);
    test_clock_advance_ms(&f.clk, f.pool, 29999);
    test_sleep_ms(100);
    ASSERT_FALSE(atomic_load(&job.done));
    test_clock_advance_ms(&f.clk, f.pool, 2);
    test_job_join(&job, 5000);
    ASSERT_RC(CPOOL_ETIMEDOUT, job.rc);
    ASSERT_EQ(10, test_counts(f.pool).total);
    for (int i = 0; i < 10; i++)
        test_checkin(f.pool, held[i], 0);
    test_fixture_free(&f);
}

/* CMAP: an establishment inside a checkout gets min(connectTimeoutMS, what
 * is left of the checkout's timeout). A server that never answers the
 * handshake must fail the checkout at connect_timeout_ms, well before the
 * caller's much longer timeout. */
TEST(connect_timeout_bounds_establishment)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.connect_timeout_ms = 100;
    test_fixture_start(&f);
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = -1;
    fp.block_until_interrupted = true; /* hangs until the deadline */
    cpool_mem_set_failpoint(f.mem, &fp);
    cpool_conn *c = NULL;
    cpool_error err;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 10000, &c, &err));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 90);
    ASSERT_LT(took, 5000);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, err.kind);
    ASSERT_EQ(CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE, err.labels);
    test_fixture_free(&f);
}

TEST(checkout_timeout_zero_does_not_wait)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 1; /* waitQueueTimeoutMS stays 0 = no limit */
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(held);
    test_job job;
    test_job_start(&job, f.pool, 0);
    /* 0 means "do not wait", not "no limit": the pool is full, so it must
     * fail promptly instead of joining the queue forever. */
    test_job_join(&job, 1000);
    ASSERT_RC(CPOOL_ETIMEDOUT, job.rc);
    ASSERT_EQ(0, test_counts(f.pool).waiting);

    /* With a connection available, 0 still succeeds. */
    test_checkin(f.pool, held, 0);
    cpool_conn *c = NULL;
    ASSERT_OK(cpool_checkout(f.pool, 0, &c, NULL));
    ASSERT_EQ(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* ---- pools without an event subscriber
 *
 * A pool nobody observes may return and hand out connections on faster
 * paths (no events to order, no clock to read). The same contract must
 * hold there, checked through the counts and the server's statistics. */

static void fx_init_unobserved(test_fixture *f)
{
    test_fixture_init(f);
    f->opts.on_event = NULL;
    f->opts.event_ctx = NULL;
}

TEST(unobserved_checkin_counts_available)
{
    test_fixture f;
    fx_init_unobserved(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(1, n.available);
    ASSERT_EQ(0, n.in_use);
    ASSERT_EQ(1, n.total);
    ASSERT_RC(CPOOL_EDOUBLE, cpool_checkin(f.pool, c, 0, NULL));
    /* Another thread must be able to take it: a connection returned by
     * one thread is available to all. */
    test_job job;
    test_job_start(&job, f.pool, 1000);
    test_job_join(&job, 2000);
    ASSERT_OK_E(job.rc, &job.err);
    ASSERT_EQ(id, cpool_conn_id(job.conn));
    ASSERT_EQ(1, test_mem_stats(f.mem).connects);
    test_checkin(f.pool, job.conn, 0);
    test_fixture_free(&f);
}

TEST(unobserved_stale_not_reused)
{
    test_fixture f;
    fx_init_unobserved(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    test_ready(f.pool);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    ASSERT_EQ(1, cpool_conn_generation(c));
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_counts(f.pool).total);
    test_fixture_free(&f);
}

/* A connection parked by the unobserved fast path may die while it waits;
 * the fast checkout runs the same liveness check as the slow path, so the
 * dead one is closed (reason error) and a new one is handed out. */
TEST(unobserved_dead_parked_not_reused)
{
    test_fixture f;
    fx_init_unobserved(&f);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    void *native = cpool_conn_native(c);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_counts(f.pool).available); /* parked counts as available */
    cpool_mem_conn_break(native);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    ASSERT_EQ(1, test_counts(f.pool).total);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(unobserved_idle_reaped)
{
    test_fixture f;
    fx_init_unobserved(&f);
    f.opts.clock = &f.clk.clock;
    f.opts.max_idle_time_ms = 100;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_EQ(0, test_counts(f.pool).total);
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    c = test_checkout(f.pool);
    ASSERT_NE(id, cpool_conn_id(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(unobserved_close_closes_returned)
{
    test_fixture f;
    fx_init_unobserved(&f);
    test_fixture_start(&f);
    cpool_conn *a = test_checkout(f.pool);
    cpool_conn *b = test_checkout(f.pool);
    test_checkin(f.pool, a, 0);
    cpool_close(f.pool);
    /* The returned one is closed by close(), the lease at its check-in. */
    ASSERT_EQ(1, test_mem_stats(f.mem).closes);
    test_checkin(f.pool, b, 0);
    ASSERT_EQ(2, test_mem_stats(f.mem).closes);
    ASSERT_EQ(0, test_counts(f.pool).total);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECLOSED, cpool_checkout(f.pool, 0, &c, NULL));
    test_fixture_free(&f);
}

/* A call into the pool from its own event or log callback would wait for
 * the lock the delivery holds (it hung). Every entry point that may emit
 * refuses it at once with CPOOL_ESTATE; the call that emitted goes on. */
typedef struct reentry {
    cpool *pool;
    int checkout_rc, checkin_rc, clear_rc, log_rc;
    char message[256];
    int calls;
} reentry;

static void reenter_on_event(const cpool_event *ev, void *ctx)
{
    reentry *r = ctx;
    if (ev->type != CPOOL_EV_CHECKED_OUT || r->calls++ > 0)
        return;
    cpool_conn *c = NULL;
    cpool_error e;
    r->checkout_rc = cpool_checkout(r->pool, 0, &c, &e);
    snprintf(r->message, sizeof r->message, "%s", e.message);
    r->clear_rc = cpool_clear(r->pool, 0, NULL, NULL);
    cpool_close(r->pool);   /* void: ignored */
    cpool_destroy(r->pool); /* likewise */
}

static void reenter_on_log(const cpool_log_record *rec, void *ctx)
{
    reentry *r = ctx;
    if (strcmp(rec->message, "Connection checked in") == 0 && r->log_rc == 1)
        r->log_rc = cpool_ready(r->pool, NULL);
}

TEST(callback_reentry_refused_not_hung)
{
    cpool_mem *mem = test_mem_create();
    reentry r;
    memset(&r, 0, sizeof r);
    r.log_rc = 1;
    cpool_options o;
    test_options(&o, mem, NULL);
    o.on_event = reenter_on_event;
    o.event_ctx = &r;
    o.on_log = reenter_on_log;
    o.log_ctx = &r;
    r.pool = test_pool_create(&o);
    test_ready(r.pool);
    cpool_conn *c = test_checkout(r.pool);
    ASSERT_RC(CPOOL_ESTATE, r.checkout_rc);
    ASSERT_STR_CONTAINS(r.message, "callback");
    ASSERT_RC(CPOOL_ESTATE, r.clear_rc);
    ASSERT_EQ(CPOOL_STATE_READY, test_counts(r.pool).state); /* close was ignored */
    test_checkin(r.pool, c, 0);
    ASSERT_RC(CPOOL_ESTATE, r.log_rc);
    /* From outside a callback the same calls work. */
    ASSERT_OK(cpool_clear(r.pool, 0, NULL, NULL));
    cpool_destroy(r.pool);
    cpool_mem_destroy(mem);
}

TEST_MAIN()
