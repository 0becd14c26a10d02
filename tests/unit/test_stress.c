/* test_stress.c -- many threads against one pool while another thread
 * clears (with and without interrupting), recycles, readies, maintains and
 * injects connect failures; workers mark some leases for recycling. Built to run under TSan as well. What must hold:
 *   - every cpool_get_counts snapshot satisfies the counter identities and
 *     the limits (total <= maxPoolSize, pending <= maxConnecting);
 *   - no connection is ever leased to two threads at once: each lease
 *     claims an owner slot for its connection id with a compare-exchange
 *     from 0 and releases it before the check-in;
 *   - every call returns a documented code, every thread ends;
 *   - the events balance (each checkout started ends once, each connection
 *     created is closed once) and the server has no connection open after
 *     cpool_destroy. */
#include "test.h"

#define WORKERS 16
#define MAX_POOL 6
#define MAX_CONNECTING 2
#define MAX_IDS (1u << 20)
#define RUN_MS 2000

/* Event counts, kept without a lock-protected list: millions of events
 * would not fit a recorder. */
typedef struct tally {
    atomic_ullong n[CPOOL_EV_COUNT_];
} tally;

static void on_event_tally(const cpool_event *ev, void *ctx)
{
    tally *t = ctx;
    if ((int)ev->type < 0 || ev->type >= CPOOL_EV_COUNT_)
        FAIL("event type %d out of range", (int)ev->type);
    atomic_fetch_add(&t->n[ev->type], 1);
}

typedef struct shared {
    cpool *pool;
    cpool_mem *mem;
    atomic_bool stop;
    atomic_bool closing; /* ECLOSED becomes a legitimate answer */
    atomic_int owner[MAX_IDS];
    atomic_ullong leases, failures;
    bool no_reset; /* the connector has no reset(): check-ins park in one step */
} shared;

typedef struct worker {
    shared *sh;
    int index;
    unsigned seed;
    uint64_t leases;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    int me = w->index + 1;
    while (!atomic_load(&sh->stop)) {
        cpool_conn *c = NULL;
        cpool_error e;
        int rc = cpool_checkout(sh->pool, 50, &c, &e);
        if (rc != CPOOL_OK) {
            if (rc == CPOOL_ECLOSED && atomic_load(&sh->closing))
                break;
            if (rc != CPOOL_ETIMEDOUT && rc != CPOOL_ECLEARED &&
                rc != CPOOL_ECONNECT)
                FAIL("worker %d: checkout: %s: \"%s\"", me, cpool_err_name(rc),
                     e.message);
            atomic_fetch_add(&sh->failures, 1);
            /* A paused pool fails at once; back off a little as a caller
             * would, instead of spinning on the lock. */
            test_sleep_us(50);
            continue;
        }
        uint64_t id = cpool_conn_id(c);
        if (id == 0 || id >= MAX_IDS)
            FAIL("connection id %llu out of range", (unsigned long long)id);
        int expected = 0;
        if (!atomic_compare_exchange_strong(&sh->owner[id], &expected, me))
            FAIL("connection %llu leased to worker %d while worker %d holds it",
                 (unsigned long long)id, me, expected);
        void *native = cpool_conn_native(c);
        if (cpool_mem_conn_id(native) != id)
            FAIL("lease %llu carries native connection %llu",
                 (unsigned long long)id,
                 (unsigned long long)cpool_mem_conn_id(native));
        unsigned r = (unsigned)rand_r(&w->seed);
        if (r % 4 == 0 && !sh->no_reset)
            cpool_mem_conn_begin(native); /* reset() must clear it */
        test_sleep_us(r % 500);
        unsigned flags = r % 32 == 0 ? CPOOL_CHECKIN_BROKEN : 0;
        if (r % 32 == 1 && cpool_conn_recycle(c) != CPOOL_OK) /* closed at check-in */
            FAIL("worker %d: conn_recycle refused its own lease", me);
        atomic_store(&sh->owner[id], 0); /* released before it can move */
        rc = cpool_checkin(sh->pool, c, flags, &e);
        if (rc != CPOOL_OK)
            FAIL("worker %d: checkin: %s: \"%s\"", me, cpool_err_name(rc),
                 e.message);
        w->leases++;
        atomic_fetch_add(&sh->leases, 1);
        /* Think time: the pool alternates between saturated (hand-offs to
         * queued waiters) and idle (checkouts served from the available
         * list), so both paths run concurrently. */
        test_sleep_us((r >> 9) % 3000);
    }
    return NULL;
}

/* Clears (half of them interrupting), recycles, resizes, suspends and
 * resumes, readies, runs maintenance and arms a fail point now and then.
 * Ends with the pool ready at its first size. */
static void *chaos_main(void *arg)
{
    shared *sh = arg;
    unsigned seed = 12345;
    while (!atomic_load(&sh->stop)) {
        test_sleep_us(1000 + rand_r(&seed) % 9000);
        int rc = CPOOL_OK;
        switch (rand_r(&seed) % 10) {
        case 0:
            rc = cpool_clear(sh->pool, 0, NULL, NULL);
            break;
        case 1:
            rc = cpool_clear(sh->pool, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL);
            break;
        case 2:
            rc = cpool_maintain(sh->pool, NULL);
            if (rc == CPOOL_ECONNECT) /* a population attempt hit the fault */
                rc = CPOOL_OK;
            break;
        case 4:
            rc = cpool_recycle(sh->pool, NULL, NULL);
            break;
        case 5: /* shrink or grow, within the limits the poller checks */
            rc = cpool_resize(sh->pool, 2 + (uint32_t)(rand_r(&seed) % (MAX_POOL - 1)),
                              (uint32_t)(rand_r(&seed) % 3), NULL);
            break;
        case 6:
            rc = cpool_suspend(sh->pool, NULL);
            if (rc == CPOOL_ESTATE) /* paused by a clear */
                rc = CPOOL_OK;
            test_sleep_us(200 + rand_r(&seed) % 2000);
            if (rc == CPOOL_OK)
                rc = cpool_resume(sh->pool, NULL);
            break;
        case 3: {
            cpool_mem_failpoint fp;
            memset(&fp, 0, sizeof fp);
            fp.times = 2;
            fp.fail = true;
            fp.fail_phase = CPOOL_PHASE_CONNECT;
            fp.fail_kind = CPOOL_FAIL_NETWORK;
            cpool_mem_set_failpoint(sh->mem, &fp);
            break;
        }
        default:
            rc = cpool_ready(sh->pool, NULL);
            break;
        }
        if (rc != CPOOL_OK)
            FAIL("chaos: %s", cpool_err_name(rc));
    }
    if (cpool_ready(sh->pool, NULL) != CPOOL_OK ||
        cpool_resize(sh->pool, MAX_POOL, 2, NULL) != CPOOL_OK ||
        cpool_resume(sh->pool, NULL) != CPOOL_OK)
        FAIL("chaos: final ready, resize or resume failed");
    return NULL;
}

typedef struct poller {
    shared *sh;
    atomic_bool stop;
    uint64_t snapshots;
} poller;

static void *poller_main(void *arg)
{
    poller *p = arg;
    uint64_t last_generation = 0;
    while (!atomic_load(&p->stop)) {
        cpool_counts c = test_counts(p->sh->pool);
        ASSERT_COUNTS_CONSISTENT(c);
        ASSERT_LE(c.total, MAX_POOL);
        ASSERT_LE(c.pending, MAX_CONNECTING);
        ASSERT_GE(c.generation, last_generation); /* never goes back */
        last_generation = c.generation;
        p->snapshots++;
    }
    return NULL;
}

/* t == NULL: no event subscriber. A pool nobody observes may take faster
 * paths (no clock reads, no event ordering, handoff turns), which need the
 * same checks; `handoff` picks the mode those paths hand off in, and
 * `early_wake` whether turns wake waiters early (on: always, so that the
 * spinning waiters are in the mix; auto: as the background thread's
 * measurements decide, which it changes meanwhile). sh->no_reset: a
 * connector without reset(), no idle limit and no timed lock-free lease,
 * so that check-ins take the one-step park (cpool_checkin). */
static void setup(shared *sh, tally *t, cpool_options *o, cpool_handoff handoff,
                  cpool_early_wake early_wake)
{
    sh->mem = test_mem_create();
    test_options(o, sh->mem, NULL);
    o->handoff = handoff;
    o->early_wake = early_wake;
    o->max_pool_size = MAX_POOL;
    o->max_connecting = MAX_CONNECTING;
    o->min_pool_size = 2;
    o->maintenance_interval_ms = 5;
    o->max_idle_time_ms = 20;
    if (sh->no_reset) {
        o->connector = test_noreset_connector();
        o->max_idle_time_ms = 0;
        o->timing_sample = 0;
    }
    if (t != NULL) {
        o->on_event = on_event_tally;
        o->event_ctx = t;
    }
    sh->pool = test_pool_create(o);
    test_ready(sh->pool);
}

/* The balance every run must end with, after cpool_destroy. */
static void check_balance(shared *sh, tally *t)
{
    unsigned long long n[CPOOL_EV_COUNT_];
    for (int i = 0; i < CPOOL_EV_COUNT_; i++)
        n[i] = t != NULL ? atomic_load(&t->n[i]) : 0;
    cpool_mem_stats s = test_mem_stats(sh->mem);
    ASSERT_EQ(0, s.open);
    /* Every established connection was closed (or abandoned) once. */
    ASSERT_EQ(s.connects - s.failures, s.closes + s.abandons);
    fprintf(stderr,
            "leases %llu, failed checkouts %llu, connects %llu, "
            "interrupts %llu\n",
            (unsigned long long)atomic_load(&sh->leases),
            (unsigned long long)atomic_load(&sh->failures),
            (unsigned long long)s.connects, (unsigned long long)s.interrupts);
    if (t == NULL)
        return;
    ASSERT_EQ(n[CPOOL_EV_CHECKOUT_STARTED],
              n[CPOOL_EV_CHECKED_OUT] + n[CPOOL_EV_CHECKOUT_FAILED]);
    ASSERT_EQ(n[CPOOL_EV_CHECKED_OUT], n[CPOOL_EV_CHECKED_IN]);
    ASSERT_EQ(n[CPOOL_EV_CONN_CREATED], n[CPOOL_EV_CONN_CLOSED]);
    ASSERT_LE(n[CPOOL_EV_CONN_READY], n[CPOOL_EV_CONN_CREATED]);
    ASSERT_EQ(atomic_load(&sh->leases), n[CPOOL_EV_CHECKED_OUT]);
    ASSERT_EQ(1, n[CPOOL_EV_POOL_CLOSED]);
}

static void start_workers(shared *sh, worker *w, pthread_t *th)
{
    for (int i = 0; i < WORKERS; i++) {
        w[i].sh = sh;
        w[i].index = i;
        w[i].seed = 1000u + (unsigned)i;
        w[i].leases = 0;
        TEST_THREAD_START(&th[i], worker_main, &w[i]);
    }
}

/* Joins threads that were told to stop, bounded: a thread stuck inside the
 * pool is the failure this reports. */
static void join_bounded(pthread_t th, atomic_bool *done_flag, const char *what)
{
    int64_t deadline = test_now_ms() + 10000;
    while (!atomic_load(done_flag)) {
        if (test_now_ms() > deadline)
            FAIL("%s did not end within 10 s", what);
        test_sleep_ms(1);
    }
    pthread_join(th, NULL);
}

typedef struct tracked {
    void *(*fn)(void *);
    void *arg;
    atomic_bool done;
} tracked;

static void *tracked_main(void *arg)
{
    tracked *t = arg;
    t->fn(t->arg);
    atomic_store(&t->done, true);
    return NULL;
}

static void churn(bool observed, cpool_handoff handoff, bool no_reset, cpool_early_wake early)
{
    static shared sh; /* 4 MiB of owner slots: not on the stack */
    tally t;
    cpool_options o;
    memset(&t, 0, sizeof t);
    sh.no_reset = no_reset;
    setup(&sh, observed ? &t : NULL, &o, handoff, early);

    worker w[WORKERS];
    pthread_t th[WORKERS], chaos_th, poll_th;
    tracked tc;
    start_workers(&sh, w, th);
    poller p = {.sh = &sh};
    atomic_init(&p.stop, false);
    TEST_THREAD_START(&poll_th, poller_main, &p);
    tc.fn = chaos_main;
    tc.arg = &sh;
    atomic_init(&tc.done, false);
    TEST_THREAD_START(&chaos_th, tracked_main, &tc);

    test_sleep_ms(RUN_MS);
    atomic_store(&sh.stop, true);
    join_bounded(chaos_th, &tc.done, "the chaos thread");
    int64_t deadline = test_now_ms() + 10000;
    for (int i = 0; i < WORKERS; i++) {
        /* Workers use 50 ms checkouts, so each notices `stop` promptly. */
        while (pthread_tryjoin_np(th[i], NULL) != 0) {
            if (test_now_ms() > deadline)
                FAIL("worker %d did not end within 10 s", i + 1);
            test_sleep_ms(1);
        }
    }
    atomic_store(&p.stop, true);
    pthread_join(poll_th, NULL);

    uint64_t idle_workers = 0;
    for (int i = 0; i < WORKERS; i++)
        idle_workers += w[i].leases == 0;
    ASSERT_EQ(0, idle_workers); /* nobody starved for two seconds */
    ASSERT_GT(atomic_load(&sh.leases), 100);
    ASSERT_GT(p.snapshots, 100);

    cpool_close(sh.pool);
    /* close() cancels an establishment the maintenance thread may have in
     * flight (minPoolSize) but does not wait for it: that connection counts
     * until its thread sees the cancellation and closes it, promptly. */
    WAIT_UNTIL(test_counts(sh.pool).total == 0, 5000);
    cpool_counts n = test_counts(sh.pool);
    ASSERT_EQ(0, n.total);
    ASSERT_EQ(CPOOL_STATE_CLOSED, n.state);
    cpool_destroy(sh.pool);
    check_balance(&sh, observed ? &t : NULL);
    cpool_mem_destroy(sh.mem);
}

/* An observed pool takes the locked paths, which hand off in FIFO order
 * whatever the option says; unobserved, both modes run. */
#define ON CPOOL_EARLY_WAKE_ON
#define OFF CPOOL_EARLY_WAKE_OFF
TEST(clear_interrupt_churn) { churn(/* observed= */ true, CPOOL_HANDOFF_FIFO, false, ON); }
/* Turns with nobody woken early (the default), and with early wake-ups. */
TEST(clear_interrupt_churn_unobserved) { churn(false, CPOOL_HANDOFF_TURNS, false, OFF); }
TEST(clear_interrupt_churn_unobserved_early_wake) { churn(false, CPOOL_HANDOFF_TURNS, false, ON); }
TEST(clear_interrupt_churn_unobserved_fifo) { churn(false, CPOOL_HANDOFF_FIFO, false, ON); }
TEST(clear_interrupt_churn_one_step_park) { churn(false, CPOOL_HANDOFF_TURNS, true, ON); }
TEST(clear_interrupt_churn_one_step_park_fifo) { churn(false, CPOOL_HANDOFF_FIFO, true, ON); }

/* t == NULL: no subscriber, so check-ins park connections in their threads
 * and close() races with that parking. */
static void close_run(bool observed, cpool_handoff handoff, bool no_reset)
{
    static shared sh;
    tally t;
    cpool_options o;
    memset(&t, 0, sizeof t);
    sh.no_reset = no_reset;
    setup(&sh, observed ? &t : NULL, &o, handoff, CPOOL_EARLY_WAKE_AUTO);
    atomic_store(&sh.closing, true);

    worker w[WORKERS];
    pthread_t th[WORKERS], poll_th;
    start_workers(&sh, w, th);
    poller p = {.sh = &sh};
    atomic_init(&p.stop, false);
    TEST_THREAD_START(&poll_th, poller_main, &p);

    test_sleep_ms(RUN_MS / 4);
    /* Close while leases are out and checkouts wait: the waiters fail with
     * ECLOSED, the leases are closed at check-in, every worker ends on its
     * own (they only stop on ECLOSED). */
    cpool_close(sh.pool);
    int64_t deadline = test_now_ms() + 10000;
    for (int i = 0; i < WORKERS; i++) {
        while (pthread_tryjoin_np(th[i], NULL) != 0) {
            if (test_now_ms() > deadline)
                FAIL("worker %d still running 10 s after close", i + 1);
            test_sleep_ms(1);
        }
    }
    atomic_store(&p.stop, true);
    pthread_join(poll_th, NULL);
    /* An establishment the maintenance thread had in flight is cancelled by
     * close() but ends on its own thread; nothing else may remain. */
    WAIT_UNTIL(test_counts(sh.pool).total == 0, 5000);
    cpool_counts n = test_counts(sh.pool);
    ASSERT_EQ(0, n.total);
    ASSERT_EQ(0, n.waiting);
    ASSERT_EQ(CPOOL_STATE_CLOSED, n.state);
    ASSERT_GT(atomic_load(&sh.leases), 0);
    cpool_destroy(sh.pool);
    check_balance(&sh, observed ? &t : NULL);
    cpool_mem_destroy(sh.mem);
}

TEST(close_under_load) { close_run(/* observed= */ true, CPOOL_HANDOFF_FIFO, false); }
TEST(close_under_load_unobserved) { close_run(false, CPOOL_HANDOFF_TURNS, false); }
TEST(close_under_load_unobserved_fifo) { close_run(false, CPOOL_HANDOFF_FIFO, false); }
TEST(close_under_load_one_step_park) { close_run(false, CPOOL_HANDOFF_TURNS, true); }

TEST_MAIN()
