/* test_handoff.c -- how a connection returned while others wait reaches
 * them (cpool_options.handoff). FIFO hands every check-in to the oldest
 * waiter. Turns let the thread that checks in take the same connection
 * straight back for a turn bounded in re-takes and in time, then hand it to
 * the oldest waiter; a turn its thread does not come back for is handed
 * over by the background thread; newcomers queue behind the waiters in both
 * modes, except that with turns a thread that came back late may take a
 * connection left free ahead of a queue whose oldest waiter came back late
 * too and is younger than turn_wait_us. */
#include "test.h"

#include "../src/core/lease.h"

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* A pool of one connection on the lock-free path (no subscriber) with its
 * background thread, which watches the turns; on the fixture's fake clock
 * when `fake_clock`. A case that checks in and takes the connection back
 * within a turn needs the fake clock: on the real one, a preemption of the
 * test thread longer than 100 us between the two counts as a thread that
 * stayed away (note_return), and its next check-ins hand over instead of
 * parking. */
/* The same on a fixture already initialised (and perhaps given options,
 * the background thread's interval among them; else it runs every 1 s). */
static void handoff_fixture_opts(test_fixture *f, cpool_handoff mode, uint32_t turn_us,
                                 uint32_t turn_uses, bool fake_clock)
{
    if (fake_clock)
        f->opts.clock = &f->clk.clock;
    f->opts.on_event = NULL;
    f->opts.event_ctx = NULL;
    if (f->opts.maintenance_interval_ms < 0) /* turns need the thread */
        f->opts.maintenance_interval_ms = 1000;
    f->opts.max_pool_size = 1;
    f->opts.wait_queue_timeout_ms = 30000;
    f->opts.handoff = mode;
    f->opts.turn_us = turn_us;
    f->opts.turn_uses = turn_uses;
    test_fixture_start(f);
}

static void handoff_fixture(test_fixture *f, cpool_handoff mode, uint32_t turn_us,
                            uint32_t turn_uses, bool fake_clock)
{
    test_fixture_init(f);
    /* The order of service does not depend on it, but the cases that wake
     * a waiter early need the wake-up whatever else runs meanwhile. */
    f->opts.early_wake = CPOOL_EARLY_WAKE_ON;
    handoff_fixture_opts(f, mode, turn_us, turn_uses, fake_clock);
}

/* A checkout that must not wait: the thread's own connection, back from
 * its slot. */
static cpool_conn *retake(cpool *p, uint64_t want_id)
{
    cpool_conn *c = NULL;
    cpool_error e;
    ASSERT_OK_E(cpool_checkout(p, 0, &c, &e), &e);
    ASSERT_EQ(want_id, cpool_conn_id(c));
    return c;
}

/* Takes the pool's one connection and queues a checkout (b) behind it. */
static cpool_conn *hold_with_waiter_for(test_fixture *f, test_job *b, int64_t timeout_ms)
{
    cpool_conn *c = test_checkout(f->pool);
    test_job_start(b, f->pool, timeout_ms);
    WAIT_UNTIL(test_counts(f->pool).waiting == 1, 5000);
    return c;
}

static cpool_conn *hold_with_waiter(test_fixture *f, test_job *b)
{
    return hold_with_waiter_for(f, b, 10000);
}

/* The queued checkout b ends with connection `id`. */
static void waiter_served(test_job *b, uint64_t id)
{
    test_job_join(b, 5000);
    ASSERT_OK(b->rc);
    ASSERT_EQ(id, cpool_conn_id(b->conn));
}

/* Halves the turns (turn_wait_us below `wait_ns`): b queues behind this
 * thread's lease and waits `wait_ns` of the fake clock; this thread then
 * takes a turn of one re-take, which ends `turn_ns` later (or by its
 * uses), and b is served. Returns the connection's id; b holds it. */
static uint64_t halve_turns(test_fixture *f, test_job *b, int64_t wait_ns, int64_t turn_ns)
{
    cpool_conn *c = hold_with_waiter(f, b);
    uint64_t id = cpool_conn_id(c);
    atomic_fetch_add(&f->clk.now_ns, wait_ns);
    test_checkin(f->pool, c, 0); /* a turn begins */
    c = retake(f->pool, id);
    atomic_fetch_add(&f->clk.now_ns, turn_ns);
    test_checkin(f->pool, c, 0); /* over: to b, which waited long */
    waiter_served(b, id);
    return id;
}

static void assert_cannot_take(cpool *p)
{
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(p, 0, &c, NULL));
    ASSERT_NULL(c);
}

TEST(fifo_hands_each_checkin_to_the_oldest_waiter)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_FIFO, 100, 32, false);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    test_checkin(f.pool, c, 0);
    waiter_served(&b, id);
    assert_cannot_take(f.pool); /* no re-take past the waiter */
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A turn of turn_uses re-takes: the waiter gets the connection at the
 * check-in after the last one, and not before. */
TEST(turn_ends_after_its_uses)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000000 /* 1 s: uses end it */, 4, true);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    for (int i = 0; i < 4; i++) {
        test_checkin(f.pool, c, 0);
        c = retake(f.pool, id);
        ASSERT_FALSE(atomic_load(&b.done));
        ASSERT_EQ(1, test_counts(f.pool).waiting);
    }
    test_checkin(f.pool, c, 0); /* the turn is over: handed over, not parked */
    assert_cannot_take(f.pool);
    waiter_served(&b, id);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A turn lasts turn_us from its first check-in, on the pool's clock. */
TEST(turn_ends_after_its_time)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 2000, 1000, true);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    test_checkin(f.pool, c, 0); /* the turn begins */
    c = retake(f.pool, id);
    test_clock_advance_ms(&f.clk, NULL, 1);
    test_checkin(f.pool, c, 0);
    c = retake(f.pool, id); /* 1 ms in: still its turn */
    test_clock_advance_ms(&f.clk, NULL, 1);
    test_checkin(f.pool, c, 0); /* 2 ms: over */
    assert_cannot_take(f.pool);
    waiter_served(&b, id);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A connection parked for a turn is marked as such before anyone else can
 * see it parked: the background thread, which looks every turn (20 us here)
 * for turns that ran out, must never take one just parked for a turn that
 * has not. The pool's clock stands still, so no turn ever runs out, and
 * every re-take must find the connection; unmarked for an instant, it went
 * to the waiter once in some thousands of check-ins. */
TEST(turn_is_not_ended_as_it_is_marked)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 20, 1000000, true);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    int64_t end = test_now_ns() + 1000 * 1000000LL;
    int n = 0;
    for (; n < 500000 && (n % 1024 != 0 || test_now_ns() < end); n++) {
        test_checkin(f.pool, c, 0); /* parked for this thread's turn */
        c = retake(f.pool, id);
    }
    ASSERT_GE(n, 1024);
    ASSERT_FALSE(atomic_load(&b.done));
    test_clock_advance_ms(&f.clk, NULL, 1); /* the turn runs out */
    test_checkin(f.pool, c, 0);
    waiter_served(&b, id);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A thread that checks in during a turn and never comes back does not keep
 * the waiter waiting past the turn: the background thread hands it over
 * once turn_us has passed since the check-in (and not before). */
TEST(turn_not_taken_back_goes_to_the_waiter)
{
    const int64_t turn_ms = 50;
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, (uint32_t)turn_ms * 1000, 32, false);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    int64_t parked_at = test_now_ns();
    test_checkin(f.pool, c, 0); /* parked for this thread's turn */
    waiter_served(&b, id);
    ASSERT_GE(b.end_ns - parked_at, turn_ms * 1000000);
    assert_cannot_take(f.pool); /* the slot's claim ended with the turn */
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A checkout that arrives during someone's turn queues behind the waiters:
 * it neither takes the parked connection nor overtakes the oldest. */
TEST(newcomer_queues_behind_the_waiters)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000000, 1, false);
    test_job b, n;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);

    test_checkin(f.pool, c, 0); /* parked for the turn */
    test_job_start(&n, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 5000);
    c = retake(f.pool, id); /* the newcomer left it alone */
    test_checkin(f.pool, c, 0); /* one re-take: the turn is over */
    assert_cannot_take(f.pool);
    waiter_served(&b, id);
    ASSERT_FALSE(atomic_load(&n.done));
    ASSERT_EQ(1, test_counts(f.pool).waiting);

    cpool_close(f.pool); /* fails the newcomer's wait */
    test_job_join(&n, 5000);
    ASSERT_RC(CPOOL_ECLOSED, n.rc);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A checkout B waits for, and this thread's check-in of c while it does:
 * returns whether B got c at once (true) or c stayed parked for this
 * thread's turn (false: then this thread takes it back). */
static bool checkin_hands_over(test_fixture *f, cpool_conn **c)
{
    uint64_t id = cpool_conn_id(*c);
    test_job b;
    test_job_start(&b, f->pool, -1);
    WAIT_UNTIL(test_counts(f->pool).waiting == 1, 5000);
    test_checkin(f->pool, *c, 0);
    cpool_conn *again = NULL;
    bool handed = cpool_checkout(f->pool, 0, &again, NULL) != CPOOL_OK;
    if (!handed) {
        ASSERT_EQ(id, cpool_conn_id(again));
        test_checkin(f->pool, again, 0); /* the turn is over (one use) */
    }
    waiter_served(&b, id);
    test_checkin(f->pool, b.conn, 0); /* nobody waits now: parked here */
    *c = retake(f->pool, id);
    return handed;
}

/* A thread that stays away from a connection parked for its turn (here:
 * longer than turn_us, so the background thread handed it over) makes the
 * waiters wait for nothing; its next two check-ins under contention hand
 * over at once, and the one after may park again. */
TEST(thread_away_from_its_turn_hands_over_next_time)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000, 1, true);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0); /* parked for this thread's turn */
    test_clock_advance_ms(&f.clk, NULL, 5); /* ... which it lets pass */
    test_job_join(&b, 5000); /* handed over by the background thread */
    ASSERT_EQ(id, cpool_conn_id(b.conn));
    assert_cannot_take(f.pool); /* the late return is measured here */
    test_checkin(f.pool, b.conn, 0);
    c = retake(f.pool, id);

    ASSERT_TRUE(checkin_hands_over(&f, &c));
    ASSERT_TRUE(checkin_hands_over(&f, &c));
    ASSERT_FALSE(checkin_hands_over(&f, &c)); /* came back at once: turns again */
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* The background thread looks for turns nobody came back for every turn's
 * length, doubling the interval after each look that found nothing, but
 * never past turn_us: a parked connection waits for its thread at most a
 * turn and turn_us. Turns of 100 ms (turn_us), shrunk to 50 ms by one
 * handoff to a checkout that waited 2 ms of the fake clock (> turn_wait_us);
 * a turn that lasts 1 s of real time (the fake clock stands still), so the
 * thread looks every 50, then 100 ms; then the turn runs out on the pool's
 * clock, and the waiter is served at the next look: within 100 ms, where an
 * interval doubled without the cap (up to 800 ms) would come some 500 ms
 * late. */
TEST(turn_watch_backs_off_no_further_than_turn_us)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.early_wake = CPOOL_EARLY_WAKE_ON;
    f.opts.turn_wait_us = 1000;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 100000, 1, true);
    test_job b;
    uint64_t id = halve_turns(&f, &b, 2000000, 0); /* b waited 2 ms */
    test_checkin(f.pool, b.conn, 0); /* nobody waits: parked in this slot */
    cpool_conn *c = retake(f.pool, id);

    test_job late;
    test_job_start(&late, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_checkin(f.pool, c, 0); /* parked for this thread's 50 ms turn */
    test_sleep_ms(1000);
    ASSERT_FALSE(atomic_load(&late.done)); /* the pool's clock stood still */
    test_clock_advance_ms(&f.clk, NULL, 60); /* the turn runs out */
    int64_t t0 = test_now_ns();
    waiter_served(&late, id);
    ASSERT_LT(late.end_ns - t0, 350 * 1000000LL);
    test_checkin(f.pool, late.conn, 0);
    test_fixture_free(&f);
}

/* Turns shrunk below TURN_FLOOR_NS (10 us) are not watched: none is given.
 * When they grow back while checkouts already wait, and nobody queues after
 * that, a turn begun then must still be watched, or the waiters wait for
 * the background thread's next maintenance run (20 s here) if its thread
 * never comes back -- as at the end of a burst, when the threads that just
 * took their turns go idle. Turns of 16 us halve to 8 us on a handoff to a
 * checkout that waited 5 ms (> turn_wait_us); c, d and e queue while they
 * are that short; two prompt handoffs grow them to 9.1 and then 10.3 us;
 * the third check-in parks for a turn that then runs out on the pool's
 * clock, and e must be served within the bound (a turn and turn_us), not
 * at the next maintenance run. */
TEST(turns_grown_back_while_checkouts_wait_are_watched)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.maintenance_interval_ms = 20000;
    f.opts.turn_wait_us = 1000;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 16, 32, true);
    test_job b;
    uint64_t id = halve_turns(&f, &b, 5000000, 20000); /* 8 us turns */

    test_job w[3]; /* c, d, e */
    for (int i = 0; i < 3; i++) {
        test_job_start(&w[i], f.pool, 60000);
        WAIT_UNTIL(test_counts(f.pool).waiting == (uint32_t)i + 1, 5000);
    }
    test_sleep_ms(100); /* time for the background thread to stop looking */
    test_checkin(f.pool, b.conn, 0); /* to c: 9.1 us, no turn yet */
    test_job_join(&w[0], 5000);
    test_checkin(f.pool, w[0].conn, 0); /* to d: 10.3 us, turns again */
    test_job_join(&w[1], 5000);
    test_checkin(f.pool, w[1].conn, 0); /* parked for this thread's turn */
    ASSERT_FALSE(atomic_load(&w[2].done));
    test_clock_advance_ms(&f.clk, NULL, 1); /* the turn runs out; never back */
    int64_t t0 = test_now_ns();
    test_job_join(&w[2], 10000);
    ASSERT_OK(w[2].rc);
    ASSERT_EQ(id, cpool_conn_id(w[2].conn));
    ASSERT_LT(w[2].end_ns - t0, 1000 * 1000000LL);
    test_checkin(f.pool, w[2].conn, 0);
    test_fixture_free(&f);
}

/* A connection whose turn ran out (its thread did not come back) goes to
 * the oldest waiter, also when a newcomer finds it first. The turn here is
 * 1 s of the fake clock, so the background thread, which looks every turn
 * of real time, leaves the handover to the newcomer's checkout. */
TEST(expired_turn_goes_to_the_oldest_not_a_newcomer)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000000, 32, true);
    test_job b, late;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0); /* parked for this thread's turn */
    test_clock_advance_ms(&f.clk, NULL, 2000); /* ... which runs out */
    test_job_start(&late, f.pool, 10000);
    waiter_served(&b, id);
    ASSERT_FALSE(atomic_load(&late.done));
    cpool_close(f.pool); /* fails the newcomer's wait */
    test_job_join(&late, 5000);
    ASSERT_RC(CPOOL_ECLOSED, late.rc);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* Handoffs to checkouts that waited longer than turn_wait_us halve the
 * turns' length, for every thread. */
TEST(turns_shrink_while_checkouts_wait_long)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.turn_wait_us = 1000;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 1000, 1000, true);
    test_job b, late;
    /* b waits 5 ms; a 1 ms turn is over 2 ms later: b gets it after 7 ms */
    uint64_t id = halve_turns(&f, &b, 5000000, 2000000);
    test_checkin(f.pool, b.conn, 0); /* nobody waits: parked here */
    cpool_conn *c = retake(f.pool, id);

    test_job_start(&late, f.pool, -1);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_checkin(f.pool, c, 0); /* a turn, now of 0.5 ms */
    c = retake(f.pool, id);
    atomic_fetch_add(&f.clk.now_ns, 600000); /* 0.6 ms: within 1 ms, past 0.5 */
    test_checkin(f.pool, c, 0);
    assert_cannot_take(f.pool);
    waiter_served(&late, id);
    test_checkin(f.pool, late.conn, 0);
    test_fixture_free(&f);
}

/* Where the lock-free path is off (an event subscriber), the pool hands
 * off in FIFO order whatever the option says. */
TEST(turns_need_the_lock_free_path)
{
    test_fixture f;
    test_fixture_init(&f); /* with its recorder: observed */
    f.opts.maintenance_interval_ms = 1000;
    f.opts.max_pool_size = 1;
    f.opts.handoff = CPOOL_HANDOFF_TURNS;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_job b;
    test_job_start(&b, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    test_checkin(f.pool, c, 0);
    test_job_join(&b, 5000);
    ASSERT_OK(b.rc);
    assert_cannot_take(f.pool);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

typedef struct token_job {
    cpool *pool;
    cpool_cancel *token;
    int rc;
    cpool_conn *conn;
    atomic_bool done;
    int64_t end_ns;
} token_job;

static void *token_job_main(void *arg)
{
    token_job *j = arg;
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 10000, .cancel = j->token};
    j->rc = cpool_checkout_with(j->pool, &o, &j->conn, NULL);
    j->end_ns = test_now_ns();
    atomic_store(&j->done, true);
    return NULL;
}

/* Each handoff in turns wakes the waiter next in line early, to spin until
 * the following one. It keeps its place: it is served only when its turn
 * comes, and what B holds stays B's. Run both with the next waiter left to
 * its turn and with its token triggered while it may still spin: it leaves
 * at once with CPOOL_ECANCELED, and a later checkout queues as usual. */
static void next_waiter_case(bool cancel_it)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000000, 1, true);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    token_job cj = {.pool = f.pool, .token = token};
    pthread_t tc;
    TEST_THREAD_START(&tc, token_job_main, &cj);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 5000);

    test_checkin(f.pool, c, 0); /* the turn begins */
    c = retake(f.pool, id);
    test_checkin(f.pool, c, 0); /* one re-take: to B, and C is woken early */
    waiter_served(&b, id);
    int64_t t_trigger = 0;
    if (cancel_it) {
        t_trigger = test_now_ns();
        cpool_cancel_trigger(token);
        WAIT_UNTIL(atomic_load(&cj.done), 5000);
        ASSERT_RC(CPOOL_ECANCELED, cj.rc);
        ASSERT_LT(cj.end_ns - t_trigger, 1000000000LL);
        ASSERT_EQ(0, test_counts(f.pool).waiting);
    } else {
        test_sleep_ms(5); /* well past any spin */
        ASSERT_FALSE(atomic_load(&cj.done));
        ASSERT_EQ(1, test_counts(f.pool).waiting);
    }
    /* B's lease, then its turn of one re-take, then the handover. */
    test_checkin(f.pool, b.conn, 0);
    c = retake(f.pool, id);
    test_checkin(f.pool, c, 0);
    if (!cancel_it) {
        WAIT_UNTIL(atomic_load(&cj.done), 5000);
        ASSERT_OK(cj.rc);
        ASSERT_EQ(id, cpool_conn_id(cj.conn));
        test_checkin(f.pool, cj.conn, 0);
    } else {
        cpool_conn *d = test_checkout(f.pool);
        ASSERT_EQ(id, cpool_conn_id(d));
        test_checkin(f.pool, d, 0);
    }
    pthread_join(tc, NULL);
    cpool_cancel_free(token);
    test_fixture_free(&f);
}

TEST(next_waiter_woken_early_keeps_its_place)
{
    next_waiter_case(false);
}

TEST(next_waiter_woken_early_leaves_on_its_token)
{
    next_waiter_case(true);
}

/* The first two CPUs this thread may run on (-1 when there is no second). */
static void two_cpus(int *x, int *y)
{
    cpu_set_t set;
    *x = *y = -1;
    if (pthread_getaffinity_np(pthread_self(), sizeof set, &set) != 0)
        return;
    for (int c = 0; c < CPU_SETSIZE && *y < 0; c++)
        if (CPU_ISSET(c, &set)) {
            if (*x < 0)
                *x = c;
            else
                *y = c;
        }
}

static void pin_to(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ASSERT_EQ(0, pthread_setaffinity_np(pthread_self(), sizeof set, &set));
}

/* A queued checkout (test_job) from a thread pinned to one CPU. */
typedef struct pinned_job {
    test_job job;
    int cpu;
} pinned_job;

static void *pinned_job_main(void *arg)
{
    pinned_job *j = arg;
    pin_to(j->cpu);
    return test_job_main_(&j->job);
}

/* The index of a job that is done but has no place in `order` yet, or -1. */
static int newly_done(pinned_job *jobs, const int *order, int n)
{
    for (int i = 0; i < n; i++)
        if (order[i] == 0 && atomic_load(&jobs[i].job.done))
            return i;
    return -1;
}

/* With the queue at least NUDGE_PASS_MIN_TURNS (8) turns deep, a handover
 * serves one of the first four waiters that queued on the CPU of a thread
 * handing over, before those ahead of it; each waiter is passed at most
 * once. Eleven waiters on a pool of one: 1 and 2 on CPU x, 3 and 4 on CPU
 * y (the main thread's, which hands over), 5 on x, 6 on y, the rest on x.
 * `want` is when each is served; from the fifth handover, with fewer than
 * 8 waiting, the rest go in order: 6 does not pass 5. On a machine with a
 * single CPU all share it and the order is the queue's. */
static void pick_on_this_cpu_case(cpool_early_wake mode, const int *want)
{
    int x, y;
    two_cpus(&x, &y);
    bool two = y >= 0;
    if (!two)
        y = x;
    cpu_set_t saved;
    ASSERT_EQ(0, pthread_getaffinity_np(pthread_self(), sizeof saved, &saved));
    pin_to(y);
    test_fixture f;
    test_fixture_init(&f);
    f.opts.early_wake = mode;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 1000000, 1, true);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    enum { N = 11 };
    static const bool on_y[N] = {false, false, true, true, false, true};
    pinned_job jobs[N];
    int order[N] = {0}; /* when each was served, from 1 */
    for (int i = 0; i < N; i++) {
        test_job_init(&jobs[i].job, f.pool, 10000);
        jobs[i].cpu = on_y[i] ? y : x;
        TEST_THREAD_START(&jobs[i].job.thread, pinned_job_main, &jobs[i]);
        WAIT_UNTIL(test_counts(f.pool).waiting == (uint32_t)i + 1, 5000);
    }
    /* Each handover: the main thread (on y) checks the connection in, its
     * turn of one re-take, and the check-in that hands it over; then waits
     * for the one job it served (one connection: one at a time). */
    for (int h = 0; h < N; h++) {
        test_checkin(f.pool, c, 0);
        c = retake(f.pool, id);
        test_checkin(f.pool, c, 0);
        int got = -1;
        WAIT_UNTIL((got = newly_done(jobs, order, N)) >= 0, 5000);
        order[got] = h + 1;
        c = jobs[got].job.conn;
        ASSERT_NOT_NULL(c);
        ASSERT_EQ(id, cpool_conn_id(c));
    }
    test_checkin(f.pool, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(f.pool, &s));
    if (mode == CPOOL_EARLY_WAKE_OFF)
        ASSERT_EQ(0, s.early_wakeups);
    else
        ASSERT_GT(s.early_wakeups, 0);
    for (int i = 0; i < N; i++) {
        test_job_join(&jobs[i].job, 5000);
        ASSERT_OK(jobs[i].job.rc);
        ASSERT_EQ(two ? want[i] : i + 1, order[i]);
    }
    test_fixture_free(&f);
    ASSERT_EQ(0, pthread_setaffinity_np(pthread_self(), sizeof saved, &saved));
}

/* Woken early, the waiter is picked a handover ahead: the first handover
 * serves the head (nobody was woken early yet) and wakes 3 (picked from y,
 * passing 2); then 3, 2 (passed once already, so 4 may not pass it), 4. */
TEST(waiter_woken_early_on_this_cpu_passes_each_at_most_once)
{
    static const int want[] = {1, 3, 2, 4, 5, 6, 7, 8, 9, 10, 11};
    pick_on_this_cpu_case(CPOOL_EARLY_WAKE_ON, want);
}

/* Without early wake-ups the pick is made at the handover itself, on the
 * handing-over thread's CPU, so that its wake-up stays there: 3 first
 * (passing 1 and 2), then 1 and 2 (each passed once, so 4 may not pass
 * them), then 4. */
TEST(waiter_on_this_cpu_is_served_first_without_early_wakeups)
{
    static const int want[] = {2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 11};
    pick_on_this_cpu_case(CPOOL_EARLY_WAKE_OFF, want);
}

/* Threads that each loop: checkout, spin 30 us, check-in; on a pool of
 * one, so that every handover has waiters. */
enum { LOOPERS = 4 };
typedef struct looper {
    cpool *pool;
    atomic_bool *stop;
    long ops;
    int rc; /* the first failure */
    pthread_t thread;
} looper;

static void *looper_main(void *arg)
{
    looper *l = arg;
    while (!atomic_load(l->stop)) {
        cpool_conn *c = NULL;
        int rc = cpool_checkout(l->pool, 5000, &c, NULL);
        if (rc != 0) {
            l->rc = rc;
            break;
        }
        int64_t until = test_now_ns() + 30000;
        while (test_now_ns() < until)
            ;
        rc = cpool_checkin(l->pool, c, 0, NULL);
        if (rc != 0) {
            l->rc = rc;
            break;
        }
        l->ops++;
    }
    return NULL;
}

static void loopers_start(looper *l, cpool *p, atomic_bool *stop)
{
    for (int i = 0; i < LOOPERS; i++) {
        l[i] = (looper){.pool = p, .stop = stop};
        TEST_THREAD_START(&l[i].thread, looper_main, &l[i]);
    }
}

/* Stops them; each must have made progress, so connections were handed
 * over between them. */
static void loopers_stop(looper *l, atomic_bool *stop)
{
    atomic_store(stop, true);
    for (int i = 0; i < LOOPERS; i++) {
        pthread_join(l[i].thread, NULL);
        ASSERT_OK(l[i].rc);
        ASSERT_GT(l[i].ops, 0);
    }
}

static cpool_stats stats_of(cpool *p)
{
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

/* early_wake on or off, forced: waiters are woken ahead of their handoff,
 * or never. */
static void forced_early_wake_case(cpool_early_wake mode)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.early_wake = mode;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 200, 32, false);
    atomic_bool stop = false;
    looper l[LOOPERS];
    loopers_start(l, f.pool, &stop);
    test_sleep_ms(300);
    loopers_stop(l, &stop);
    cpool_stats s = stats_of(f.pool);
    if (mode == CPOOL_EARLY_WAKE_ON) {
        ASSERT_GT(s.early_wakeups, 0);
        ASSERT_TRUE(s.early_wake);
    } else {
        ASSERT_EQ(0, s.early_wakeups);
        ASSERT_FALSE(s.early_wake);
    }
    ASSERT_EQ(-1, s.cpu_others); /* only auto measures */
    test_fixture_free(&f);
}

TEST(early_wake_on_wakes_the_next_waiter)
{
    forced_early_wake_case(CPOOL_EARLY_WAKE_ON);
}

TEST(early_wake_off_lets_waiters_sleep)
{
    forced_early_wake_case(CPOOL_EARLY_WAKE_OFF);
}

/* Processes that only burn CPU, two per CPU, until killed (or their
 * parent dies, or 20 s pass). */
static int start_hogs(pid_t *pids, int max)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = ncpu > 0 && 2 * ncpu < max ? (int)(2 * ncpu) : max;
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        ASSERT_GE(pids[i], 0);
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            alarm(20);
            volatile unsigned long x = 0;
            for (;;)
                x++;
        }
    }
    return n;
}

static void stop_hogs(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
}

/* early_wake auto: while other processes take the CPUs, the background
 * thread measures it and nobody is woken early any more. */
TEST(early_wake_auto_stops_while_other_processes_take_the_cpus)
{
    pid_t hogs[16];
    int n = start_hogs(hogs, 16);
    test_fixture f;
    test_fixture_init(&f);
    f.opts.early_wake = CPOOL_EARLY_WAKE_AUTO;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 200, 32, false);
    atomic_bool stop = false;
    looper l[LOOPERS];
    loopers_start(l, f.pool, &stop);
    cpool_stats s;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t until = test_now_ms() + 10000;
    do {
        test_sleep_ms(20);
        s = stats_of(f.pool);
    } while ((s.cpu_others < 0 || s.early_wake) && test_now_ms() < until);
    ASSERT_GT(s.cpu_others, 0.25 * (double)ncpu);
    ASSERT_FALSE(s.early_wake);
    uint64_t woken = s.early_wakeups;
    test_sleep_ms(300); /* three more measurements */
    s = stats_of(f.pool);
    ASSERT_FALSE(s.early_wake);
    ASSERT_EQ(woken, s.early_wakeups);
    /* Without them, the wake-ups come back once a measurement finds the
     * others under an eighth of the machine -- which other tests running
     * beside this one may not allow, so what is checked is that the
     * snapshot agrees with its measurement: on, the latest found at most a
     * quarter (it would have turned them off); off, at least an eighth. */
    stop_hogs(hogs, n);
    until = test_now_ms() + 2000;
    do {
        test_sleep_ms(20);
        s = stats_of(f.pool);
    } while (!s.early_wake && test_now_ms() < until);
    printf("after the hogs: early_wake %d, cpu_others %.2f of %ld CPUs\n", s.early_wake,
           s.cpu_others, ncpu);
    if (s.early_wake)
        ASSERT_TRUE(s.cpu_others >= 0 && s.cpu_others <= 0.25 * (double)ncpu);
    else
        ASSERT_TRUE(s.cpu_others >= 0.125 * (double)ncpu);
    loopers_stop(l, &stop);
    test_fixture_free(&f);
}

/* The rule auto follows (cpuload.c): off above a quarter of the machine's
 * CPUs used by others, on again below an eighth, unchanged between and
 * when nothing could be measured. */
bool cpool__early_wake_decide(bool on, double others, long ncpu);

TEST(early_wake_auto_rule)
{
    ASSERT_TRUE(cpool__early_wake_decide(true, 0.0, 2));
    ASSERT_TRUE(cpool__early_wake_decide(true, 0.5, 2));
    ASSERT_FALSE(cpool__early_wake_decide(true, 0.51, 2));
    ASSERT_FALSE(cpool__early_wake_decide(false, 0.3, 2)); /* between: stays off */
    ASSERT_FALSE(cpool__early_wake_decide(false, 0.25, 2));
    ASSERT_TRUE(cpool__early_wake_decide(false, 0.24, 2));
    ASSERT_TRUE(cpool__early_wake_decide(true, 0.3, 2)); /* between: stays on */
    ASSERT_TRUE(cpool__early_wake_decide(true, 3.9, 16));
    ASSERT_FALSE(cpool__early_wake_decide(true, 4.1, 16));
    ASSERT_TRUE(cpool__early_wake_decide(true, -1, 2)); /* unknown: unchanged */
    ASSERT_FALSE(cpool__early_wake_decide(false, -1, 2));
}

/* ------------------------------------- a free connection while the head is young
 *
 * Whether a thread comes back from elsewhere is what the pool learnt from
 * its returns to a turn (note_return; thread_away_from_its_turn_hands_over_
 * next_time above shows one late return counted). These cases set that
 * count directly: `away` late returns in a row, and the check-ins a late
 * returner hands straight over. */
static void set_late_returns(uint8_t away)
{
    cpool__tl_park.away = away;
    cpool__tl_park.skip = away > 0 ? 1u << away : 0;
    cpool__tl_park.checkin_ns = 0;
}

/* A queued checkout on a thread with `away` late returns, with a
 * cancellation token when `token` is set. */
typedef struct away_job {
    test_job j;
    uint8_t away;
    cpool_cancel *token;
} away_job;

static void *away_job_main(void *arg)
{
    away_job *a = arg;
    set_late_returns(a->away);
    if (a->token == NULL)
        return test_job_main_(&a->j);
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 10000, .cancel = a->token};
    a->j.rc = cpool_checkout_with(a->j.pool, &o, &a->j.conn, &a->j.err);
    atomic_store(&a->j.done, true);
    return NULL;
}

/* Holds a thread still inside a signal handler until thawed, so that the
 * pool's wake-up cannot reach it meanwhile. */
static int g_thaw[2] = {-1, -1};
static atomic_bool g_frozen;

static void freeze_handler(int sig)
{
    (void)sig;
    atomic_store(&g_frozen, true);
    char ch;
    while (read(g_thaw[0], &ch, 1) < 0 && errno == EINTR)
        ;
    atomic_store(&g_frozen, false);
}

/* Queues a checkout on a thread with `away` late returns (and `token`)
 * and freezes it once it waits without the pool lock (counts are read under
 * it). */
static void queue_frozen_with(test_fixture *f, away_job *a, uint8_t away, cpool_cancel *token)
{
    if (g_thaw[0] < 0) {
        ASSERT_EQ(0, pipe(g_thaw));
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = freeze_handler;
        sigemptyset(&sa.sa_mask);
        ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
    }
    test_job_init(&a->j, f->pool, 10000);
    a->away = away;
    a->token = token;
    uint32_t before = test_counts(f->pool).waiting;
    TEST_THREAD_START(&a->j.thread, away_job_main, a);
    WAIT_UNTIL(test_counts(f->pool).waiting == before + 1, 5000);
    ASSERT_EQ(0, pthread_kill(a->j.thread, SIGUSR1));
    WAIT_UNTIL(atomic_load(&g_frozen), 5000);
}

static void queue_frozen(test_fixture *f, away_job *a, uint8_t away)
{
    queue_frozen_with(f, a, away, NULL);
}

static void thaw(void)
{
    ASSERT_EQ(1, write(g_thaw[1], "x", 1));
    WAIT_UNTIL(!atomic_load(&g_frozen), 5000);
}

/* This thread and the checkout w it leases the one connection ahead of
 * both came back late twice in a row; w has waited 0 us. The check-in
 * leaves the connection free and wakes w for it (frozen: it cannot come),
 * and this thread takes it first. Returns it. */
static cpool_conn *take_ahead_of_frozen_head(test_fixture *f, away_job *w)
{
    handoff_fixture(f, CPOOL_HANDOFF_TURNS, 1000, 32, true);
    set_late_returns(6);
    cpool_conn *c = test_checkout(f->pool);
    uint64_t id = cpool_conn_id(c);
    queue_frozen(f, w, 6);
    test_checkin(f->pool, c, 0);
    return retake(f->pool, id);
}

/* A thread that came back late takes a connection left free ahead of an
 * oldest waiter that came back late too and is young. The waiter, woken
 * for a connection already gone, keeps its place; once it has waited
 * turn_wait_us, this thread's check-in hands the connection to it. */
TEST(late_returner_takes_a_free_connection_while_the_head_is_young)
{
    test_fixture f;
    away_job w;
    cpool_conn *c = take_ahead_of_frozen_head(&f, &w);
    uint64_t id = cpool_conn_id(c);
    ASSERT_EQ(1, stats_of(f.pool).barges);
    thaw();                     /* finds it gone: waits on */
    test_sleep_ms(20);
    ASSERT_FALSE(atomic_load(&w.j.done));
    ASSERT_EQ(1, test_counts(f.pool).waiting);

    atomic_fetch_add(&f.clk.now_ns, 3000 * 1000); /* turn_wait_us */
    test_checkin(f.pool, c, 0); /* the head is not young now: handed over */
    assert_cannot_take(f.pool);
    waiter_served(&w.j, id);
    ASSERT_EQ(1, stats_of(f.pool).barges);
    test_checkin(f.pool, w.j.conn, 0);
    test_fixture_free(&f);
}

/* Neither a single late return of this thread nor a head that did not come
 * back late lets this thread pass the head: in the first case the
 * connection waits for the woken head, in the second it is handed to it. */
static void no_barge_case(uint8_t my_away, uint8_t head_away)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_TURNS, 1000, 32, true);
    set_late_returns(my_away);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    if (my_away < 2)
        cpool__tl_park.skip = 64; /* hands over, not parked for a turn */
    away_job w;
    queue_frozen(&f, &w, head_away);

    test_checkin(f.pool, c, 0);
    assert_cannot_take(f.pool);
    thaw();
    waiter_served(&w.j, id);
    ASSERT_EQ(0, stats_of(f.pool).barges);
    test_checkin(f.pool, w.j.conn, 0);
    test_fixture_free(&f);
}

TEST(one_late_return_does_not_pass_the_head)
{
    no_barge_case(1, 6);
}

TEST(head_not_back_late_is_not_passed)
{
    no_barge_case(6, 1);
}

/* The head, woken for a connection left free, leaves on its token instead
 * of taking it: the next waiter is woken for it. (The background thread,
 * which would offer it at its next run, runs every 20 s here.) */
TEST(waiter_woken_for_a_free_connection_that_leaves_passes_it_on)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.early_wake = CPOOL_EARLY_WAKE_ON;
    f.opts.maintenance_interval_ms = 20000;
    handoff_fixture_opts(&f, CPOOL_HANDOFF_TURNS, 1000, 32, true);
    set_late_returns(6);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    away_job head;
    queue_frozen_with(&f, &head, 6, token);
    test_job next;
    test_job_start(&next, f.pool, 10000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 2, 5000);

    test_checkin(f.pool, c, 0); /* left free for the head (frozen) */
    cpool_cancel_trigger(token);
    thaw();
    test_job_join(&head.j, 5000);
    ASSERT_RC(CPOOL_ECANCELED, head.j.rc);
    waiter_served(&next, id);
    test_checkin(f.pool, next.conn, 0);
    cpool_cancel_free(token);
    test_fixture_free(&f);
}

/* A server paused after it served a waiter and released the pool lock,
 * before its post (the hook runs there), until released. */
static atomic_bool g_server_paused, g_server_release;

static void pause_server(void)
{
    atomic_store(&g_server_paused, true);
    while (!atomic_load(&g_server_release))
        test_sleep_ms(1);
}

typedef struct checkin_job {
    cpool *pool;
    cpool_conn *conn;
    pthread_t thread;
    atomic_bool done;
} checkin_job;

static void *checkin_job_main(void *arg)
{
    checkin_job *j = arg;
    set_late_returns(6); /* hands over rather than parking for a turn */
    test_checkin(j->pool, j->conn, 0);
    atomic_store(&j->done, true);
    return NULL;
}

/* A checkin_job whose server is paused after releasing the lock and before
 * its post (set up by the caller; the pause is disarmed once it is there). */
static void checkin_paused(checkin_job *h, test_fixture *f, cpool_conn *c)
{
    atomic_store(&g_server_paused, false);
    atomic_store(&g_server_release, false);
    atomic_store(&cpool__post_pause, pause_server);
    *h = (checkin_job){.pool = f->pool, .conn = c};
    atomic_init(&h->done, false);
    TEST_THREAD_START(&h->thread, checkin_job_main, h);
    WAIT_UNTIL(atomic_load(&g_server_paused), 5000); /* served, not posted */
    atomic_store(&cpool__post_pause, NULL);
}

/* With the server paused by checkin_paused, the waiter j, which may see
 * itself served by now, is still there after `ms`; released, the server
 * posts and j ends with connection `id`. */
static void waits_for_its_post(checkin_job *h, test_job *j, uint64_t id, int ms)
{
    test_sleep_ms(ms);
    ASSERT_FALSE(atomic_load(&j->done));
    atomic_store(&g_server_release, true);
    pthread_join(h->thread, NULL);
    waiter_served(j, id);
}

/* A waiter holding another post (here: the wake-up for a connection left
 * free) when it is served may see itself served before its server has
 * posted. It takes its connection without the pool lock, so it must not
 * leave -- and its semaphore, on its stack, with it -- until that post is
 * made. */
TEST(waiter_served_with_another_post_waits_for_its_own)
{
    test_fixture f;
    away_job w; /* posted for the connection left free, frozen */
    cpool_conn *c = take_ahead_of_frozen_head(&f, &w);
    uint64_t id = cpool_conn_id(c);
    atomic_fetch_add(&f.clk.now_ns, 3000 * 1000); /* the head is not young now */

    checkin_job h;
    checkin_paused(&h, &f, c);
    thaw(); /* takes the earlier post and sees itself served */
    waits_for_its_post(&h, &w.j, id, 50);
    test_checkin(f.pool, w.j.conn, 0);
    test_fixture_free(&f);
}

/* The hook, when it only looks: how many posts it saw, and at how many of
 * them the posting thread held the pool's lock. The background thread may
 * hold it a moment too, so the lock counts as the poster's only when it
 * stays taken for 2 s. */
static cpool *g_look_pool;
static atomic_int g_posts_seen, g_posts_locked;

static void look_at_lock(void)
{
    atomic_fetch_add(&g_posts_seen, 1);
    for (int i = 0; i < 2000; i++) {
        if (pthread_mutex_trylock(&g_look_pool->mu) == 0) {
            pthread_mutex_unlock(&g_look_pool->mu);
            return;
        }
        test_sleep_ms(1);
    }
    atomic_fetch_add(&g_posts_locked, 1);
}

/* A waiter woken under the pool lock would preempt the thread holding it,
 * and every thread needing the lock would wait until that one ran again:
 * the post comes once the lock is released. */
TEST(waiter_posted_after_the_pool_lock_is_released)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_FIFO, 1000, 32, false);
    test_job b;
    cpool_conn *c = hold_with_waiter(&f, &b);
    uint64_t id = cpool_conn_id(c);
    g_look_pool = f.pool;
    atomic_store(&g_posts_seen, 0);
    atomic_store(&g_posts_locked, 0);
    atomic_store(&cpool__post_pause, look_at_lock);
    test_checkin(f.pool, c, 0);
    atomic_store(&cpool__post_pause, NULL);
    waiter_served(&b, id);
    ASSERT_TRUE(atomic_load(&g_posts_seen) >= 1);
    ASSERT_EQ(0, atomic_load(&g_posts_locked));
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

static uint64_t checkouts_ok(cpool *p)
{
    cpool_stats st = {.struct_size = sizeof st};
    ASSERT_OK(cpool_get_stats(p, &st));
    return st.checkouts_ok;
}

/* Served as its deadline passed, a waiter finds itself served under the
 * lock, with its server's post still to come: its lease begins, but it
 * does not leave -- and its semaphore, on its stack, with it -- before the
 * post. */
TEST(waiter_served_as_its_deadline_passes_waits_for_its_post)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_FIFO, 1000, 32, false);
    test_job b;
    cpool_conn *c = hold_with_waiter_for(&f, &b, 300);
    uint64_t id = cpool_conn_id(c);
    uint64_t before = checkouts_ok(f.pool);
    checkin_job h;
    checkin_paused(&h, &f, c);
    /* The deadline passes; it takes the lock and begins its lease. */
    WAIT_UNTIL(checkouts_ok(f.pool) == before + 1, 5000);
    waits_for_its_post(&h, &b, id, 50);
    test_checkin(f.pool, b.conn, 0);
    test_fixture_free(&f);
}

/* A waiter with a token returns without the lock too. Woken by its
 * token's post after it was served, it waits for its server's. */
TEST(waiter_woken_by_its_token_once_served_waits_for_its_post)
{
    test_fixture f;
    handoff_fixture(&f, CPOOL_HANDOFF_FIFO, 1000, 32, false);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    away_job w;
    test_job_init(&w.j, f.pool, 10000);
    w.away = 0;
    w.token = token;
    TEST_THREAD_START(&w.j.thread, away_job_main, &w);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 5000);
    checkin_job h;
    checkin_paused(&h, &f, c);
    cpool_cancel_trigger(token); /* its post arrives first */
    waits_for_its_post(&h, &w.j, id, 100); /* served before the trigger: it keeps it */
    test_checkin(f.pool, w.j.conn, 0);
    cpool_cancel_free(token);
    test_fixture_free(&f);
}

TEST(handoff_options_checked)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    ASSERT_EQ(CPOOL_HANDOFF_TURNS, o.handoff);
    ASSERT_EQ(1000, o.turn_us);
    ASSERT_EQ(32, o.turn_uses);
    ASSERT_EQ(3000, o.turn_wait_us);
    cpool_error e;
    ASSERT_OK(cpool_options_set(&o, "handoff", "fifo", &e));
    ASSERT_EQ(CPOOL_HANDOFF_FIFO, o.handoff);
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "handoff", "lifo", &e));
    ASSERT_STR_CONTAINS(e.message, "fifo|turns");
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "turn_us", "0", &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "turn_uses", "0", &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "turn_wait_us", "0", &e));
    ASSERT_OK(cpool_options_set(&o, "turn_uses", "5", &e));
    ASSERT_EQ(5, o.turn_uses);
    ASSERT_EQ(CPOOL_EARLY_WAKE_OFF, o.early_wake);
    ASSERT_OK(cpool_options_set(&o, "early_wake", "auto", &e));
    ASSERT_EQ(CPOOL_EARLY_WAKE_AUTO, o.early_wake);
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "early_wake", "sometimes", &e));
    ASSERT_STR_CONTAINS(e.message, "auto|on|off");
}

TEST_MAIN()
