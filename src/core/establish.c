/* establish.c -- opening a connection: the connector's connect() outside
 * the lock within a deadline, and what failures do to the pool (backoff,
 * the circuit breaker, capacity refusals, clear on error). Needs mu; the
 * establishment itself releases it, as its name says. */
#include "core.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>


/* The wait before the next establishment after the nth failure in a row:
 * base * multiplier^(n-1), capped (backoff_max_ms 0: it does not grow),
 * randomised by +- backoff_jitter. */
static int64_t backoff_delay_locked(cpool *p, uint32_t n)
{
    CPOOL_ASSERT_HELD(p);
    int64_t base = ms_to_ns(p->opts.backoff_base_ms), cap = ms_to_ns(p->opts.backoff_max_ms);
    if (base <= 0)
        return 0;
    double d = (double)base;
    for (uint32_t i = 1; i < n && d < (double)cap; i++)
        d *= p->opts.backoff_multiplier;
    if (cap > 0 && d > (double)cap)
        d = (double)cap;
    if (d > 4e18) /* a base or cap of centuries: jitter must not overflow */
        d = 4e18;
    double u = cpool__random_unit_locked(p);
    return (int64_t)(d + d * p->opts.backoff_jitter * (2 * u - 1));
}

/* "backend unavailable": what a checkout gets while the circuit is open. */
void cpool__unavailable_error_locked(const cpool *p, cpool_error *e)
{
    CPOOL_ASSERT_HELD(p);
    int64_t now = cpool__now(p);
    int64_t next = p->retry_at > now ? (p->retry_at - now) / 1000000 : 0;
    cpool__err(e, CPOOL_EUNAVAILABLE,
               "backend %s unavailable: %u establishment failures in a row (circuit "
               "open); last %lld ms ago: %.120s; next attempt in %lld ms",
               p->address, p->fail_streak, (long long)((now - p->last_fail_at) / 1000000),
               p->last_fail.message, (long long)next);
    e->native = p->last_fail.native;
    e->phase = p->last_fail.phase;
    e->kind = p->last_fail.kind;
    e->labels = p->last_fail.labels;
}

/* What a counted failure started, for the events emitted once mu may be
 * released: the backoff step's length, and whether the circuit opened. */
typedef struct failure_news {
    int64_t step_ns;
    bool opened;
} failure_news;

/* An establishment failed for a reason the server may have caused: count
 * it, schedule the next attempt, and open the circuit at the threshold,
 * failing the waiters that only a new connection could serve. */
static void note_connect_failure_locked(cpool *p, const cpool_error *ce, failure_news *news)
{
    CPOOL_ASSERT_HELD(p);
    p->fail_streak++;
    p->last_fail = *ce;
    p->last_fail_at = cpool__now(p);
    int64_t d = backoff_delay_locked(p, p->fail_streak);
    p->retry_at = d > 0 ? p->last_fail_at + d : 0;
    news->step_ns = d;
    /* The maintenance thread re-arms to wake at retry_at and serve the
     * queue (waiters that queued before this failure sleep on), and to
     * probe the server meanwhile. */
    if (p->wq_head != NULL || p->opts.probe_interval_ms > 0)
        cpool__kick_maintenance_locked(p);
    if (!cpool__breaker_open(p))
        return;
    if (p->fail_streak == p->opts.breaker_threshold) {
        p->breaker_opens++;
        news->opened = true;
    }
    /* The failed connection is still counted (it closes next). A full
     * pool's waiters wait for check-ins, not connects. Every failure while
     * the circuit is open flushes them: a checkout may have queued behind
     * others that were waiting when it opened. */
    if (p->opts.max_pool_size != 0 && total_locked(p) - 1 >= p->opts.max_pool_size)
        return;
    while (p->wq_head != NULL) {
        waiter *w = p->wq_head;
        cpool__wq_remove_locked(p, w);
        w->fail = CPOOL_EUNAVAILABLE;
        cpool__serve_waiter(p, w);
    }
}

/* The server refused for lack of slots: not a failure of the backend (no
 * backoff, no circuit), counted apart; the next attempt waits a moment. */
static void note_capacity_refusal_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->st_capacity_refusals++;
    int64_t d = ms_to_ns(CAPACITY_RETRY_MS);
    d += (int64_t)((double)d * 0.2 * (2 * cpool__random_unit_locked(p) - 1));
    p->cap_retry_at = cpool__now(p) + d;
    if (p->wq_head != NULL)
        cpool__kick_maintenance_locked(p);
}

/* A success ends a run of failures; returns the run's length when it had
 * opened the circuit (0 otherwise), for the event. */
static uint32_t note_connect_success_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->cap_retry_at = 0;
    if (p->fail_streak == 0)
        return 0;
    uint32_t run = cpool__breaker_open(p) ? p->fail_streak : 0;
    p->fail_streak = 0;
    p->retry_at = 0;
    cpool__kick_maintenance_locked(p); /* refill to minPoolSize now */
    return run;
}

/* The operator's signals of a failure's consequences (WARN log records). */
static void emit_failure_news_relock(cpool *p, const failure_news *news, const cpool_error *ce)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->observed)
        return;
    uint32_t failures = p->fail_streak;
    if (news->step_ns > 0) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_BACKOFF_STARTED);
        ev.duration_ns = news->step_ns;
        ev.failures = failures;
        ev.error = ce;
        cpool__emit_relock(p, &ev);
    }
    if (news->opened) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_BREAKER_OPENED);
        ev.failures = failures;
        ev.error = ce;
        cpool__emit_relock(p, &ev);
    }
}

/* A failed establishment: labels the error, lets it clear the pool when
 * the options say so, counts it against the backend unless it says nothing
 * about it, and closes c. Returns the error's code. */
static int establish_failed_relock(cpool *p, cpool_conn *c, int rc, bool caller_bound,
                                   cpool_error *ce)
{
    CPOOL_ASSERT_HELD(p);
    if (ce->code == 0)
        ce->code = rc;
    if (ce->message[0] == '\0')
        snprintf(ce->message, sizeof ce->message, "connect %s: %s", p->address,
                 cpool_strerror(rc));
    if (ce->kind == CPOOL_FAIL_INTERRUPTED) {
        /* The pool abandoned this attempt (clear or close): retryable. */
        ce->labels |= CPOOL_LABEL_RETRYABLE;
    } else if (cpool_is_backpressure(ce->phase, ce->kind)) {
        ce->labels |= CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE;
    } else if (p->opts.clear_on_connect_error && !p->opts.load_balanced &&
               ce->code != CPOOL_ENOMEM && p->state == CPOOL_STATE_READY &&
               !cpool__is_stale_locked(p, c)) {
        /* Not in load-balanced mode: there an establishment error must never
         * pause the whole pool (CMAP load-balancer rules). Nor for a local
         * out-of-memory, which says nothing about the server. */
        cpool__clear_relock(p, 0, ce);
    }
    p->st_connect_failures++;
    /* A caller's own short deadline ending the attempt says nothing about
     * the backend (a checkout with timeout 0 would otherwise trip the
     * breaker against a healthy server); the background thread makes one
     * establishment that no caller's deadline cuts instead. */
    failure_news news = {0, false};
    if (ce->kind == CPOOL_FAIL_CAPACITY)
        note_capacity_refusal_locked(p);
    else if (caller_bound && ce->kind == CPOOL_FAIL_TIMEOUT)
        cpool__want_pool_establishment_locked(p);
    else if (ce->kind != CPOOL_FAIL_INTERRUPTED && ce->code != CPOOL_ENOMEM)
        note_connect_failure_locked(p, ce, &news);
    cpool__close_conn_relock(p, c, CPOOL_CLOSE_ERROR, ce);
    emit_failure_news_relock(p, &news, ce);
    return ce->code;
}

/* An established connection joins the pool. CMAP requirement 41: it
 * becomes available (or leased) in the same critical section that takes it
 * off the pending count, before anything is emitted, so no thread ever sees
 * a free maxConnecting slot without the connection that freed it. */
static int establish_succeeded_relock(cpool *p, cpool_conn *c, bool for_checkout)
{
    CPOOL_ASSERT_HELD(p);
    p->st_ready++;
    cpool__hist_add(&p->connect_hist, cpool__now(p) - c->created_ns);
    uint32_t closed_run = note_connect_success_locked(p);
    bool recycle = atomic_load_explicit(&c->recycle, memory_order_relaxed);
    bool stale = cpool__is_stale_locked(p, c) || recycle || p->state == CPOOL_STATE_CLOSED ||
                 p->draining;
    if (stale) {
        cpool__set_state_locked(p, c, CONN_IN_USE); /* owned by us until closed below */
    } else if (for_checkout) {
        cpool__set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
    } else {
        cpool__make_available_locked(p, c); /* possibly straight to a waiter */
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CONN_READY);
        ev.connection_id = c->id;
        ev.duration_ns = ev.time_ns - c->created_ns;
        cpool__emit_relock(p, &ev);
        if (closed_run > 0) {
            cpool__event_init(p, &ev, CPOOL_EV_BREAKER_CLOSED);
            ev.failures = closed_run;
            cpool__emit_relock(p, &ev);
        }
    }
    if (stale) {
        cpool__close_conn_relock(p, c,
                                 p->state == CPOOL_STATE_CLOSED || p->draining
                                     ? CPOOL_CLOSE_POOL_CLOSED
                                 : cpool__is_stale_locked(p, c) ? CPOOL_CLOSE_STALE
                                                                : CPOOL_CLOSE_RECYCLED,
                                 NULL);
        return ESTABLISH_RETRY;
    }
    cpool__grant_capacity_relock(p); /* a maxConnecting slot is free again */
    return 0;
}

/* Establishes pending connection c outside mu. On success c is in use (for a
 * checkout) or made available (background population) and 0 is returned.
 * On failure c is closed with reason "error" and the error is returned with
 * its labels; with clear_on_connect_error an unlabelled failure first clears
 * the pool, so PoolCleared precedes ConnectionClosed as CMAP's tests expect.
 * ESTABLISH_RETRY: established, but a clear made it stale (or a recycle
 * marked it) meanwhile; it was closed. Called with mu held; releases it during the connect. */
int cpool__establish_relock(cpool *p, cpool_conn *c, int64_t deadline,
                            bool for_checkout, bool caller_bound, cpool_error *e)
{
    CPOOL_ASSERT_HELD(p);
    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.target = p->target;
    a.conn_id = c->id;
    a.deadline_ns = real_deadline(p, deadline);
    a.cancel_fd = c->cancel_fd;
    void *native = NULL;
    cpool_error ce;
    memset(&ce, 0, sizeof ce);

    cpool__unlock(p);
    int rc = p->cx->connect(p->cx_ctx, &a, &native, &ce);
    if (rc == 0 && native == NULL)
        rc = cpool_error_set(&ce, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                             CPOOL_FAIL_OTHER, 0,
                             "connect %s: connector returned no connection",
                             p->address);
    /* The application's after_connect runs before anyone can lease it; the
     * connection is this thread's until it joins the pool below. */
    cpool_error he;
    bool hook_failed = false;
    if (rc == 0 && p->opts.hooks.after_connect != NULL) {
        c->native = native;
        memset(&he, 0, sizeof he);
        hook_failed = p->opts.hooks.after_connect(c, p->opts.hooks.ctx, &he) != 0;
    }
    cpool__lock(p);
    if (c->probe) {
        c->probe = false;
        p->probing = false;
    }
    if (rc == 0) {
        c->native = native;
        if (p->opts.load_balanced) {
            if (a.service_id[0] == '\0')
                rc = cpool_error_set(
                    &ce, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_SERVER, 0,
                    "Driver attempted to initialize in load balancing mode, but "
                    "the server does not support this mode.");
            else if (cpool__svc_attach_locked(p, c, a.service_id) != 0)
                rc = cpool_error_set(&ce, CPOOL_ENOMEM, CPOOL_PHASE_HANDSHAKE,
                                     CPOOL_FAIL_OTHER, 0, "out of memory");
        }
    }
    if (rc == 0 && hook_failed) {
        /* Not the backend's failure: no backoff. A checkout goes on with
         * another connection, as after a failed validation. */
        c->native = native;
        if (he.code == 0)
            cpool__err(&he, CPOOL_EIO, "after_connect hook failed on %s", p->address);
        (void)note_connect_success_locked(p); /* the server itself answered */
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_HOOK, &he);
        if (e != NULL)
            *e = he;
        return ESTABLISH_HOOK;
    }
    if (rc == 0)
        return establish_succeeded_relock(p, c, for_checkout);
    rc = establish_failed_relock(p, c, rc, caller_bound, &ce);
    if (e != NULL)
        *e = ce;
    return rc;
}

/* When a queued checkout should look again: the end of the current backoff
 * step if that comes before its deadline. */
int64_t cpool__backoff_wake_locked(const cpool *p, int64_t deadline)
{
    CPOOL_ASSERT_HELD(p);
    if (p->opts.maintenance_interval_ms < 0) {
        /* No maintenance thread to serve the queue when a backoff step
         * that began after this checkout queued ends: look every 250 ms. */
        int64_t look = cpool__now(p) + 250000000;
        if (look < deadline)
            deadline = look;
    }
    int64_t now = cpool__now(p);
    /* After a capacity refusal, look again when the next attempt may run. */
    if (p->cap_retry_at > now && p->cap_retry_at < deadline)
        deadline = p->cap_retry_at;
    if (p->fail_streak == 0 || p->retry_at == 0 || p->retry_at >= deadline || p->probing)
        return deadline;
    return p->retry_at > now ? p->retry_at : deadline;
}
