/* checkout.c -- cpool_checkout*: the thread-affine fast path's slow half,
 * the checkout's clock and deadlines, and the checkout as its steps (see
 * checkout_impl). Public entry points take mu themselves. */
#include "lease.h"

#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

_Thread_local cpool__park_slot cpool__tl_park CPOOL_TLS_FAST;
_Thread_local uint64_t cpool__tl_tid CPOOL_TLS_FAST;
atomic_uint_fast64_t cpool__pool_serial;

static inline __attribute__((always_inline)) int
checkout_impl(cpool *p, int64_t timeout_ms, const char *label, const char *tenant_name,
              cpool_cancel *cancel, cpool_conn **out, cpool_error *err);

/* The start of a checkout and its deadlines, computed on first use. */
typedef struct checkout_clock {
    cpool *p;
    int64_t timeout_ms;
    int64_t start;         /* -1 until read */
    int64_t wait_deadline; /* for the wait queue */
    int64_t conn_deadline; /* for an establishment */
    bool caller_bound;     /* conn_deadline() returned the caller's deadline */
} checkout_clock;

static void clock_start_at(checkout_clock *t, int64_t start)
{
    const cpool *p = t->p;
    t->start = start;
    if (t->timeout_ms >= 0) {
        /* One deadline for everything the caller waits for. */
        t->wait_deadline = t->conn_deadline = deadline_after(t->start, t->timeout_ms);
    } else {
        t->wait_deadline = p->opts.wait_queue_timeout_ms > 0
                               ? deadline_after(t->start, p->opts.wait_queue_timeout_ms)
                               : NO_DEADLINE;
        t->conn_deadline = NO_DEADLINE; /* see conn_deadline() */
    }
}

static void clock_start(checkout_clock *t)
{
    if (t->start < 0)
        clock_start_at(t, cpool__now(t->p));
}

/* Each establishment gets connect_timeout_ms from the moment it starts,
 * however long the wait before it was, and never more than what is left of
 * the caller's own timeout (CMAP: min(connectTimeoutMS, remaining)). */
static int64_t conn_deadline(checkout_clock *t)
{
    clock_start(t);
    t->caller_bound = true;
    if (t->p->opts.connect_timeout_ms == 0)
        return t->conn_deadline;
    int64_t own = deadline_after(cpool__now(t->p), t->p->opts.connect_timeout_ms);
    t->caller_bound = t->conn_deadline <= own;
    return t->caller_bound ? t->conn_deadline : own;
}

static int fail_checkout(cpool *p, int rc, int reason, checkout_clock *t,
                         const cpool_error *cause, cpool_error *err)
{
    cpool_error e;
    if (rc < 0 && -rc < CPOOL_ERROR_SLOTS)
        p->st_failures[-rc]++;
    switch (rc) {
    case CPOOL_ECLOSED:
        cpool__err(&e, rc, "Attempted to check out a connection from closed "
                           "connection pool %s", p->address);
        break;
    case CPOOL_ECLEARED: cpool__cleared_error(p, &e); break;
    case CPOOL_EUNAVAILABLE: cpool__unavailable_error_locked(p, &e); break;
    case CPOOL_ESHUTDOWN:
        cpool__err(&e, rc, "connection pool %s is shutting down: no new checkouts", p->address);
        break;
    case CPOOL_ETIMEDOUT:
        if (cause != NULL && cause->code == CPOOL_ETIMEDOUT) {
            e = *cause; /* worded already (hooks that kept failing) */
            break;
        }
        if (cause != NULL) {
            /* The deadline passed while connecting: where and why, without
             * the backpressure labels (nothing is known against the
             * server). */
            e = *cause;
            e.code = rc;
            e.labels = 0;
            snprintf(e.message, sizeof e.message,
                     "Timed out: the checkout's deadline passed while connecting (%.190s)",
                     cause->message);
            break;
        }
        cpool__err(&e, rc,
                   "Timed out while checking out a connection from connection pool "
                   "%s (maxPoolSize: %u, in use: %u, available: %u, pending: %u, "
                   "waiting: %u)",
                   p->address, p->opts.max_pool_size, p->in_use.n, p->available.n,
                   p->pending.n, atomic_load(&p->nwaiting));
        break;
    default:
        if (cause != NULL)
            e = *cause;
        else
            cpool__err(&e, rc, "checkout from %s: %s", p->address, cpool_strerror(rc));
        break;
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CHECKOUT_FAILED);
        ev.reason = reason;
        clock_start(t);
        ev.duration_ns = ev.time_ns - t->start;
        ev.error = &e;
        cpool__emit_unlock(p, &ev);
    } else {
        cpool__unlock(p);
    }
    if (err != NULL)
        *err = e;
    return rc;
}

/* Takes one post of w's semaphore, waiting for it (EINTR: again). */
static void take_post(waiter *w)
{
    while (sem_wait(&w->sem) != 0)
        ;
    w->took++;
}

/* Waits, without mu, until w is served or failed (returns true) or its
 * deadline passes (false). Sleeps in slices so that a test clock that jumps
 * is noticed. */
static bool wait_served(const cpool *p, waiter *w, int64_t deadline)
{
    const int64_t slice = p->opts.clock != NULL ? 5000000 : 1000000000;
    for (;;) {
        if (deadline == NO_DEADLINE) {
            take_post(w);
            return true;
        }
        int64_t left = deadline - cpool__now(p);
        if (left <= 0)
            return false;
        struct timespec ts = abs_real(left < slice ? left : slice);
        if (sem_clockwait(&w->sem, CLOCK_MONOTONIC, &ts) == 0) {
            w->took++;
            return true;
        }
    }
}

/* After wait_served() returned true: the fields are ready to read. */
static bool waiter_done(waiter *w)
{
    return atomic_load_explicit(&w->done, memory_order_acquire) == 1;
}

int cpool_checkout(cpool *p, int64_t timeout_ms, cpool_conn **out, cpool_error *err)
{
    return checkout_impl(p, timeout_ms, NULL, NULL, NULL, out, err);
}

int cpool_checkout_with(cpool *p, const cpool_checkout_opts *o, cpool_conn **out,
                        cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (o == NULL || o->struct_size < offsetof(cpool_checkout_opts, label) + sizeof o->label)
        return cpool__err(err, CPOOL_EINVAL,
                          "checkout: options required, with struct_size = sizeof them");
    const char *tenant_name = o->struct_size >= offsetof(cpool_checkout_opts, tenant) +
                                                    sizeof o->tenant
                                  ? o->tenant
                                  : NULL;
    cpool_cancel *cancel =
        o->struct_size >= offsetof(cpool_checkout_opts, cancel) + sizeof o->cancel ? o->cancel
                                                                                   : NULL;
    return checkout_impl(p, o->timeout_ms, o->label, tenant_name, cancel, out, err);
}

int cpool_checkout_at(cpool *p, int64_t timeout_ms, const char *label, cpool_conn **out,
                      cpool_error *err)
{
    return checkout_impl(p, timeout_ms, label, NULL, NULL, out, err);
}

/* One checkout in progress. Its steps below share it; each says whether it
 * has a connection (STEP_OK), found none (STEP_NONE), must look again
 * (STEP_AGAIN: it closed one, or the pool changed while it waited),
 * failed (STEP_FAIL: rc and cause say why) or is queued and waits
 * (STEP_WAIT). */
typedef struct checkout {
    cpool *p;
    checkout_clock t;
    tenant *tn;                   /* with tenants: whose checkout this is */
    waiter w;                     /* its place in the queue, once it waits */
    bool w_ready;                 /* w.sem is initialised */
    cpool_conn *c;                /* the connection it is about to lease */
    bool establish;               /* c is new: establish it */
    bool handed;                  /* c came from a check-in: no liveness check */
    bool fresh;                   /* c was established by this checkout */
    int rc;                       /* STEP_FAIL: the code */
    cpool_error ce;               /* a failure's details */
    const cpool_error *cause;     /* STEP_FAIL: what the error carries */
    cpool_error capacity_refused; /* the server's last "too many clients" */
    bool hook_failed;             /* a hook failed: look again within the deadline */
} checkout;

enum { STEP_OK = 0, STEP_NONE, STEP_AGAIN, STEP_FAIL, STEP_WAIT };

static int step_fail(checkout *co, int rc)
{
    co->rc = rc;
    return STEP_FAIL;
}

/* Takes mu and settles the checkout's tenant, then announces it. 0 with mu
 * held, or an error with mu released. */
static int checkout_start(checkout *co, const char *tenant_name, cpool_error *err)
{
    cpool *p = co->p;
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (p->tenants) {
        /* Checkouts without a tenant share the unnamed one (first in the
         * list), so that every lease is counted against the limits. */
        co->tn = tenant_name != NULL ? cpool__find_tenant_locked(p, tenant_name)
                                     : p->tenant_list;
        if (co->tn == NULL) {
            cpool__unlock(p);
            return cpool__err(err, CPOOL_EINVAL, "checkout from %s: unknown tenant \"%.64s\" "
                              "(declare it with cpool_tenant_set)", p->address, tenant_name);
        }
    } else if (tenant_name != NULL) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL, "checkout from %s: tenant \"%.64s\" given, but "
                          "the pool has no tenants (cpool_tenant_set)", p->address, tenant_name);
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CHECKOUT_STARTED);
        cpool__emit_relock(p, &ev);
    }
    return 0;
}

/* A tenant over its rate budget is refused at once: waiting would only
 * move its excess onto everyone's queue. */
static bool rate_step_locked(checkout *co)
{
    cpool *p = co->p;
    tenant *tn = co->tn;
    CPOOL_ASSERT_HELD(p);
    tn->checkouts++;
    if (cpool__tenant_take_token_locked(p, tn))
        return true;
    cpool__err(&co->ce, CPOOL_ERATE,
               "checkout from %s refused: tenant \"%s\" is over its rate of %g checkouts/s "
               "(burst %u)",
               p->address, tn->name, tn->budget.rate,
               tn->budget.burst > 0 ? tn->budget.burst
                                    : (unsigned)(tn->budget.rate >= 1 ? tn->budget.rate : 1));
    co->cause = &co->ce;
    co->rc = CPOOL_ERATE;
    return false;
}

/* A pool that is not ready serves nobody. */
static int ready_step_locked(checkout *co)
{
    const cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    if (p->state == CPOOL_STATE_READY)
        return STEP_OK;
    return step_fail(co, p->state == CPOOL_STATE_CLOSED ? CPOOL_ECLOSED
                         : p->draining                  ? CPOOL_ESHUTDOWN
                                                        : CPOOL_ECLEARED);
}

/* Whether this thread comes back from elsewhere: its last two returns to a
 * turn were late (note_return), as a thread with think time between leases
 * is; a single preemption does not make one. */
static bool came_from_away(void)
{
    return cpool__tl_park.away >= 2;
}

/* Takes the available connection c for a lease of tenant tn, unless it
 * perished: then returns why (CPOOL_CLOSE_*) and leaves it for the caller
 * to close; -1 once taken. */
static int take_conn_locked(cpool *p, cpool_conn *c, tenant *tn)
{
    CPOOL_ASSERT_HELD(p);
    int reason = cpool__perished_locked(p, c, cpool__perish_now(p));
    if (reason < 0) {
        cpool__set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
        cpool__assign_locked(p, c, tn);
    }
    return reason;
}

/* Woken because a connection was left free beside the queue: takes one if
 * it is still there, staying queued otherwise (STEP_WAIT). The flag is
 * cleared first, so that leaving the queue with it does not pass the
 * wake-up on (cpool__wq_remove_locked). Suspended: nothing is taken. */
static int take_free_locked(checkout *co)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    CPOOL_ASSERT_HELD(p);
    atomic_store(&w->retry, 0);
    for (;;) {
        cpool_conn *c = p->available.head;
        if (!w->queued || c == NULL || cpool__next_waiter_locked(p) == NULL)
            return STEP_WAIT;
        int reason = take_conn_locked(p, c, co->tn);
        if (reason >= 0) {
            cpool__close_conn_relock(p, c, reason, NULL);
            continue;
        }
        cpool__wq_remove_locked(p, w);
        co->c = c;
        return STEP_OK;
    }
}

/* Without waiting: an available connection (or a parked one), else a new
 * one to establish when the limits allow. Strict FIFO: only when nobody is
 * ahead (with tenants: nobody who may take one, and its own tenant may). */
static int take_available_relock(checkout *co)
{
    cpool *p = co->p;
    tenant *tn = co->tn;
    CPOOL_ASSERT_HELD(p);
    waiter *head = cpool__next_waiter_locked(p);
    bool barge = head != NULL && p->available.head != NULL && tn == NULL &&
                 came_from_away() && cpool__barge_window_locked(p, head);
    if ((head != NULL && !barge) || (tn != NULL && !cpool__tenant_allows_locked(p, tn)) ||
        atomic_load_explicit(&p->suspended, memory_order_relaxed))
        return STEP_NONE;
    if (barge)
        p->st_barges++;
    cpool_conn *c = tn != NULL ? cpool__affine_available_locked(p, tn) : p->available.head;
    int reason = -1;
    if (c != NULL)
        reason = take_conn_locked(p, c, tn);
    else
        c = cpool__steal_parked_locked(p, STEAL_ANY, &reason);
    if (c != NULL && reason >= 0) {
        cpool__close_conn_relock(p, c, reason, NULL);
        return STEP_AGAIN;
    }
    if (c == NULL && cpool__can_create_locked(p)) {
        if ((c = cpool__conn_new_locked(p)) == NULL)
            return step_fail(co, CPOOL_ENOMEM);
        cpool__assign_locked(p, c, tn);
        cpool__emit_created_relock(p, c);
        co->establish = true;
    }
    co->c = c;
    return c != NULL ? STEP_OK : STEP_NONE;
}

/* Only a new connection could serve this checkout and the backend keeps
 * refusing them: say so now rather than at the deadline, whoever is queued
 * already. */
static int fail_fast_step_locked(checkout *co)
{
    const cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    if (cpool__breaker_open(p) && !cpool__can_create_locked(p) && p->available.head == NULL &&
        (p->opts.max_pool_size == 0 || total_locked(p) < p->opts.max_pool_size))
        return step_fail(co, CPOOL_EUNAVAILABLE);
    return STEP_NONE;
}

/* Joins the wait queue, then takes the waiter's half of the parking
 * handshake (see the fast path): a connection parked meanwhile is taken at
 * once (STEP_OK, or STEP_AGAIN when it had perished). STEP_NONE: queued. */
static int queue_relock(checkout *co)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    CPOOL_ASSERT_HELD(p);
    uint32_t waiting = atomic_load(&p->nwaiting);
    if (p->opts.max_waiting > 0 && waiting >= p->opts.max_waiting) {
        cpool__err(&co->ce, CPOOL_EQUEUEFULL,
                   "checkout from %s refused: %u checkouts are waiting already "
                   "(max_waiting %u; in use %u, maxPoolSize %u)",
                   p->address, waiting, p->opts.max_waiting, p->in_use.n,
                   p->opts.max_pool_size);
        co->cause = &co->ce;
        return step_fail(co, CPOOL_EQUEUEFULL);
    }
    if (!co->w_ready) {
        if (sem_init(&w->sem, 0, 0) != 0)
            return step_fail(co, CPOOL_ESYS);
        co->w_ready = true;
        w->posts = w->cposts = w->took = 0;
    }
    if (!cpool__cancel_register(w)) {
        cpool__err(&co->ce, CPOOL_ECANCELED, "checkout from %s cancelled before it waited",
                   p->address);
        co->cause = &co->ce;
        return step_fail(co, CPOOL_ECANCELED);
    }
    w->conn = NULL;
    w->fail = 0;
    w->establish = false;
    w->queued = true;
    w->tenant = co->tn;
    if (co->tn != NULL) {
        co->tn->waiting++;
        co->tn->waits++;
    }
    atomic_store_explicit(&w->done, 0, memory_order_relaxed);
    w->next = NULL;
    w->prev = p->wq_tail;
    if (p->wq_tail != NULL)
        p->wq_tail->next = w;
    else
        p->wq_head = w;
    p->wq_tail = w;
    atomic_fetch_add(&p->nwaiting, 1);
    w->cpu = p->turns ? sched_getcpu() : -1;
    w->passed = 0;
    w->from_away = p->turns && came_from_away();
    atomic_store(&w->retry, 0);
    /* Not woken early yet: a waiter queued again (after a connection that
     * failed its check) may still carry the flag from its last wait. */
    atomic_store(&w->nudged, 0);
    /* The queue's oldest wait is a statistic (maxwait); with turns, each
     * wait also adapts the turns' length. */
    w->since = cpool__now(p);
    cpool__watch_turns_locked(p);
    int reason = -1;
    /* With turns, a connection its thread may still take again stays: the
     * newcomer queues behind the waiters (and the background thread hands it
     * over should its thread not come back). Suspended: nothing is taken. */
    if (atomic_load_explicit(&p->suspended, memory_order_relaxed))
        return STEP_NONE;
    cpool_conn *parked = cpool__steal_parked_locked(p, STEAL_OUT_OF_TURN, &reason);
    if (parked == NULL)
        return STEP_NONE;
    if (reason < 0 && cpool__next_waiter_locked(p) != w) {
        /* Older checkouts wait (a turn ran out): the oldest gets it. */
        cpool__return_parked_locked(p, parked);
        return STEP_NONE;
    }
    cpool__wq_remove_locked(p, w);
    if (reason >= 0) {
        cpool__close_conn_relock(p, parked, reason, NULL);
        return STEP_AGAIN;
    }
    co->c = parked;
    co->handed = true; /* just checked in: as good as handed over */
    return STEP_OK;
}

/* Woken early as the next to be served (nudge_next_locked in conn.c):
 * spins, yielding the CPU to the threads that hold connections, until it is
 * served, NUDGE_SPIN_NS pass, its wake-up time (pool clock) comes or its
 * token is triggered. Returns true once served, its post taken. */
static bool spin_until_served(const cpool *p, waiter *w, int64_t wake)
{
    int64_t until = cpool__mono_ns() + NUDGE_SPIN_NS;
    while (!waiter_done(w) && cpool__mono_ns() < until &&
           (wake == NO_DEADLINE || cpool__now(p) < wake) &&
           (w->cancel == NULL || !cpool_cancel_triggered(w->cancel)))
        sched_yield();
    atomic_store(&w->nudged, 0);
    if (!waiter_done(w))
        return false;
    /* Served: the post follows `done`, once its server releases mu; take
     * it, as a sleeping waiter would have. */
    take_post(w);
    return true;
}

enum { WAIT_NOT = 0, WAIT_SERVED, WAIT_FREE };

/* Waits, without mu, until the queued checkout is served or its deadline
 * passes. Called with mu; returns without it. When a backoff step ends
 * first, the queue may create again: it asks for capacity itself (the
 * maintenance thread does the same; this covers pools without one).
 * Returns WAIT_SERVED (served or failed), WAIT_FREE (woken for a
 * connection left free: the caller takes mu and looks) or WAIT_NOT (the
 * deadline passed, or the token was triggered). */
static int wait_unlock(checkout *co)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    clock_start(&co->t);
    int64_t wake = cpool__backoff_wake_locked(p, co->t.wait_deadline);
    cpool__unlock(p);
    for (;;) {
        bool posted = wait_served(p, w, wake);
        if (posted && waiter_done(w))
            return WAIT_SERVED;
        /* A cancellation's post, or the token triggered meanwhile: the
         * caller leaves the queue (after_wait_locked). */
        if (w->cancel != NULL && cpool_cancel_triggered(w->cancel))
            return WAIT_NOT;
        if (posted && atomic_load(&w->retry))
            return WAIT_FREE;
        if (posted && atomic_load(&w->nudged)) {
            if (spin_until_served(p, w, wake))
                return WAIT_SERVED;
            continue;
        }
        if (posted)
            continue; /* a stale wake-up: wait on */
        if (wake >= co->t.wait_deadline)
            return WAIT_NOT;
        cpool__lock(p);
        if (w->queued)
            cpool__grant_capacity_relock(p);
        wake = cpool__backoff_wake_locked(p, co->t.wait_deadline);
        cpool__unlock(p);
    }
}

/* The wait ended (mu taken again): what it was served with, or why not;
 * STEP_WAIT: still queued, wait again. `got` is what wait_unlock returned
 * (an asynchronous checkout's wait ends served or failed: WAIT_SERVED). */
static int after_wait_locked(checkout *co, int got)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    tenant *tn = co->tn;
    CPOOL_ASSERT_HELD(p);
    if (got == WAIT_FREE)
        return take_free_locked(co);
    bool served = got == WAIT_SERVED;
    if (!served && w->queued && w->cancel != NULL && cpool_cancel_triggered(w->cancel)) {
        cpool__wq_remove_locked(p, w);
        cpool__err(&co->ce, CPOOL_ECANCELED,
                   "checkout from %s cancelled after waiting %.3f ms", p->address,
                   (double)(cpool__now(p) - w->since) / 1e6);
        co->cause = &co->ce;
        return step_fail(co, CPOOL_ECANCELED);
    }
    if (!served && w->queued) { /* timed out */
        cpool__wq_remove_locked(p, w);
        if (co->capacity_refused.code != 0)
            co->cause = &co->capacity_refused; /* why it had to wait */
        if (tn == NULL || tn->max == 0 || tn->in_use < tn->max)
            return step_fail(co, CPOOL_ETIMEDOUT);
        /* Its own tenant's cap kept it waiting. */
        tn->limit_timeouts++;
        cpool__err(&co->ce, CPOOL_ETENANT,
                   "Timed out while checking out a connection from connection pool %s: "
                   "tenant \"%s\" holds %u of its %u connections (pool: in use %u, "
                   "available %u, waiting %u, maxPoolSize %u)",
                   p->address, tn->name, tn->in_use, tn->max, p->in_use.n, p->available.n,
                   atomic_load(&p->nwaiting), p->opts.max_pool_size);
        co->cause = &co->ce;
        return step_fail(co, CPOOL_ETENANT);
    }
    /* Served while the deadline passed: its post is taken before the
     * semaphore goes (waiter_release). */
    if (w->fail != 0)
        return step_fail(co, w->fail);
    co->c = w->conn;
    co->establish = w->establish;
    co->handed = !w->establish;
    return STEP_OK;
}

/* Establishes the new connection within the checkout's deadline. */
static int establish_step_relock(checkout *co)
{
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    int64_t deadline = conn_deadline(&co->t);
    int rc = cpool__establish_relock(p, co->c, deadline, true, co->t.caller_bound, &co->ce);
    if (rc == ESTABLISH_HOOK)
        co->hook_failed = true; /* co->ce has the hook's error */
    if (rc == ESTABLISH_RETRY || rc == ESTABLISH_HOOK)
        return STEP_AGAIN;
    if (rc == 0) {
        co->fresh = true;
        return STEP_OK;
    }
    cpool_fail_kind kind = co->ce.kind;
    if (kind == CPOOL_FAIL_INTERRUPTED) {
        /* An attempt the pool abandoned fails as the pool's state says
         * (cleared: retryable; closed). */
        rc = p->draining                      ? CPOOL_ESHUTDOWN
             : p->state == CPOOL_STATE_CLOSED ? CPOOL_ECLOSED
                                              : CPOOL_ECLEARED;
    } else if (kind == CPOOL_FAIL_CAPACITY &&
               (co->t.wait_deadline == NO_DEADLINE || cpool__now(p) < co->t.wait_deadline)) {
        /* The server is full: wait for a lease or a free slot within the
         * deadline, as for a full pool. */
        co->capacity_refused = co->ce;
        return STEP_AGAIN;
    } else if (kind == CPOOL_FAIL_CAPACITY ||
               (co->t.caller_bound && kind == CPOOL_FAIL_TIMEOUT && cpool__now(p) >= deadline)) {
        rc = CPOOL_ETIMEDOUT; /* the caller's own deadline ran out */
        if (co->capacity_refused.code != 0)
            co->ce = co->capacity_refused; /* ... waiting for a free slot */
    }
    /* Others carry the connector's error and labels. */
    co->cause = &co->ce;
    return step_fail(co, rc);
}

/* The validation policy, outside the lock, within the same deadline as the
 * rest of the checkout. Without time left for a ping the connection goes
 * back, unblamed, and the caller gets its timeout. */
static int validate_step_relock(checkout *co)
{
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    int64_t deadline = conn_deadline(&co->t);
    bool ping = wants_ping(p, co->c);
    if (no_time_to_ping(p, ping, deadline)) {
        cpool__put_back_locked(p, co->c);
        return step_fail(co, CPOOL_ETIMEDOUT);
    }
    cpool__unlock(p);
    int bad = validate_conn(p, co->c, ping, deadline, &co->ce);
    cpool__lock(p);
    if (bad != 0) {
        cpool__close_conn_relock(p, co->c, CPOOL_CLOSE_ERROR, &co->ce);
        return STEP_AGAIN;
    }
    return STEP_OK;
}

/* Makes the connection ready to lease: establish a new one; else validate
 * it (unless a check-in just handed it over) and, with tenants, reset its
 * session when another tenant used it last. */
/* After a hook failed: whether the checkout's deadline has passed, and then
 * the failure it ends with. */
static bool hook_deadline_passed(checkout *co)
{
    clock_start(&co->t);
    if (co->t.wait_deadline == NO_DEADLINE || cpool__now(co->p) < co->t.wait_deadline)
        return false;
    char last[sizeof co->ce.message];
    snprintf(last, sizeof last, "%s", co->ce.message);
    co->ce.code = CPOOL_ETIMEDOUT;
    co->ce.labels = 0;
    snprintf(co->ce.message, sizeof co->ce.message,
             "Timed out while checking out a connection from %s: a hook failed on every "
             "connection tried; the last: %.120s",
             co->p->address, last);
    co->cause = &co->ce;
    co->rc = CPOOL_ETIMEDOUT;
    return true;
}

/* The application's before_lease hook, outside the lock; a failure closes
 * the connection ("hook") and the checkout looks again. */
static int before_lease_step_relock(checkout *co)
{
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    if (p->opts.hooks.before_lease == NULL)
        return STEP_OK;
    cpool__unlock(p);
    cpool_error he;
    memset(&he, 0, sizeof he);
    int bad = p->opts.hooks.before_lease(co->c, p->opts.hooks.ctx, &he);
    cpool__lock(p);
    if (bad == 0)
        return STEP_OK;
    if (he.code == 0)
        cpool__err(&he, CPOOL_EIO, "before_lease hook failed on %s", p->address);
    co->ce = he;
    co->hook_failed = true;
    cpool__close_conn_relock(p, co->c, CPOOL_CLOSE_HOOK, &he);
    return STEP_AGAIN;
}

static int prepare_step_relock(checkout *co)
{
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    if (co->establish) {
        int step = establish_step_relock(co);
        return step == STEP_OK ? before_lease_step_relock(co) : step;
    }
    if (!co->handed && p->opts.validation != CPOOL_VALIDATE_NONE) {
        int step = validate_step_relock(co);
        if (step != STEP_OK)
            return step;
    }
    if (co->tn != NULL) {
        int rc = cpool__tenant_switch_relock(p, co->c, co->tn, conn_deadline(&co->t), &co->ce);
        if (rc == SWITCH_CLOSED)
            return STEP_AGAIN;
        if (rc != 0)
            return step_fail(co, rc);
    }
    return before_lease_step_relock(co);
}

/* The checkout is over, mu released: its waiter leaves its token and
 * takes every post counted for it, so that none is still on its way when
 * the semaphore goes (the posts are made after mu is released, see
 * post_locked in conn.c). */
static void waiter_release(checkout *co)
{
    waiter *w = &co->w;
    cpool__cancel_unregister(w); /* cposts is final from here */
    if (!co->w_ready)
        return;
    while (w->took != w->posts + w->cposts)
        take_post(w);
    sem_destroy(&w->sem);
    co->w_ready = false;
}

/* The lease begins: counted, announced, mu released. */
static int checkout_done_unlock(checkout *co, const char *label, cpool_conn **out)
{
    cpool *p = co->p;
    cpool_conn *c = co->c;
    lease_begin(p, c, co->t.start, !co->fresh, label);
    if (c->tenant != NULL) {
        c->tenant->checkouts_ok++;
        c->last_tenant = c->tenant;
        cpool__histogram_add(&c->tenant->wait, cpool__now(p) - co->t.start);
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CHECKED_OUT);
        ev.connection_id = c->id;
        ev.duration_ns = ev.time_ns - co->t.start;
        cpool__emit_unlock(p, &ev);
    } else {
        cpool__unlock(p);
    }
    waiter_release(co);
    *out = c;
    return 0;
}

/* The checkout failed: counted, announced, mu released. */
static int checkout_fail_unlock(checkout *co, cpool_error *err)
{
    int rc = co->rc;
    int why = rc == CPOOL_ECLOSED || rc == CPOOL_ESHUTDOWN   ? CPOOL_CHECKOUT_POOL_CLOSED
              : rc == CPOOL_ETIMEDOUT || rc == CPOOL_ETENANT ? CPOOL_CHECKOUT_TIMEOUT
                                                             : CPOOL_CHECKOUT_CONN_ERROR;
    rc = fail_checkout(co->p, rc, why, &co->t, co->cause, err);
    waiter_release(co);
    return rc;
}

/* The checkout's locked part, when the lock-free one did not serve it
 * (checkout_impl). Apart, so that the lock-free checkout is a small
 * function of its own: this one's frame and saved registers cost as much
 * as the rest of a lock-free checkout. fast_start: see take_parked_fast. */
static __attribute__((noinline)) int checkout_locked(cpool *p, int64_t timeout_ms,
                                                     const char *label,
                                                     const char *tenant_name,
                                                     cpool_cancel *cancel, cpool_conn **out,
                                                     cpool_error *err, int64_t fast_start)
{
    /* The clock is read only when something needs it: an event, a deadline.
     * The uncontended path (an available connection, no subscriber) does
     * without. One deadline for the whole checkout: when the lock-free path
     * already spent time on a ping, its start is the checkout's. */
    checkout co; /* field by field: its two cpool_error are only written when used */
    co.p = p;
    co.t = (checkout_clock){.p = p, .timeout_ms = timeout_ms, .start = -1};
    co.tn = NULL;
    co.w_ready = co.fresh = false;
    co.rc = 0;
    co.cause = NULL;
    co.capacity_refused.code = 0;
    co.hook_failed = false;
    co.w.cancel = cancel;
    co.w.registered = false;
    co.w.async = false;
    atomic_init(&co.w.nudged, 0);
    co.w.alink = NULL;
    if (fast_start >= 0)
        clock_start_at(&co.t, fast_start);
    else if (p->observed)
        clock_start(&co.t);
    int rc = checkout_start(&co, tenant_name, err);
    if (rc != 0)
        return rc;
    if (co.tn != NULL && !rate_step_locked(&co))
        return checkout_fail_unlock(&co, err);
    if (cancel != NULL && cpool_cancel_triggered(cancel)) {
        co.rc = CPOOL_ECANCELED;
        return checkout_fail_unlock(&co, err);
    }
    for (;;) {
        co.c = NULL;
        co.establish = co.handed = false;
        int step = ready_step_locked(&co);
        if (step == STEP_OK)
            step = take_available_relock(&co);
        if (step == STEP_NONE)
            step = fail_fast_step_locked(&co);
        if (step == STEP_NONE && (step = queue_relock(&co)) == STEP_NONE)
            step = STEP_WAIT;
        while (step == STEP_WAIT) {
            int got = wait_unlock(&co);
            const waiter *w = &co.w;
            if (got == WAIT_SERVED && !w->establish && w->fail == 0 && !p->observed &&
                co.tn == NULL && p->opts.hooks.before_lease == NULL) {
                /* Handed a connection that was just checked in (and
                 * reset): return without touching the pool lock at all.
                 * The post this thread took may have been another's (an
                 * early wake-up's, a free connection's, a token's): then
                 * it waits for its server's, counted before `done`. */
                waiter_release(&co);
                lease_begin(p, w->conn, co.t.start, true, NULL);
                *out = w->conn;
                return 0;
            }
            cpool__lock(p);
            step = after_wait_locked(&co, got);
        }
        if (step == STEP_OK)
            step = prepare_step_relock(&co);
        if (step == STEP_OK)
            return checkout_done_unlock(&co, label, out);
        if (step == STEP_FAIL)
            return checkout_fail_unlock(&co, err);
        /* STEP_AGAIN: the pool changed; look again -- but a hook that keeps
         * failing on every new connection must not outlive the deadline. */
        if (co.hook_failed && hook_deadline_passed(&co))
            return checkout_fail_unlock(&co, err);
    }
}

/* A checkout, step by step: this thread's parked connection without the
 * lock; else under the lock an available one or a new one; else a place in
 * the queue until a check-in or new capacity serves it; then establish or
 * validate it (and reset it between tenants) outside the lock. */
static inline __attribute__((always_inline)) int
checkout_impl(cpool *p, int64_t timeout_ms, const char *label, const char *tenant_name,
              cpool_cancel *cancel, cpool_conn **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (p == NULL || out == NULL)
        return cpool__err(err, CPOOL_EINVAL, "checkout: pool and out are required");
    if (p->observed && cpool__in_callback(p))
        return cpool__callback_err(p, err, "checkout");
    int64_t fast_start = -1;
    if (p->turns)
        note_return(p);
    /* A checkout with a token takes the locked path: a triggered token
     * must fail it even when a connection is parked right here. */
    if (p->can_park && cancel == NULL) {
        cpool_conn *fast = take_parked_fast(p, timeout_ms, &fast_start);
        if (fast != NULL) {
            lease_begin(p, fast, FAST_LEASE, true, NULL);
            *out = fast;
            return 0;
        }
    }
    return checkout_locked(p, timeout_ms, label, tenant_name, cancel, out, err, fast_start);
}

/* ------------------------------------------------------------ async checkout
 *
 * An asynchronous checkout is this file's checkout without its blocking
 * parts: its steps run on the loop's thread under mu; when it must wait it
 * stays in the one FIFO queue as an async waiter, and the pool serves it as
 * any other (cpool__serve_waiter pushes it to its completion queue instead
 * of posting); what may block (an establishment, a ping, a session reset,
 * a before_lease hook) runs on a short-lived helper thread. The background
 * thread ends waits at their deadline and starts the helpers (maint.c); a
 * cancellation pushes the request to its loop directly. Every request ends
 * with exactly one callback, from cpool_async_process(). */

typedef struct async_req {
    async_link link; /* first: the queue's handle on the request */
    checkout co;
    char label[64];
    bool has_label;
} async_req;

static async_req *req_of(async_link *l)
{
    return (async_req *)(void *)l;
}

/* Whether taking co->c further may block the calling thread. */
static bool needs_helper(const checkout *co)
{
    const cpool *p = co->p;
    const cpool_conn *c = co->c;
    if (co->establish || p->opts.hooks.before_lease != NULL)
        return true;
    if (co->tn != NULL && c->last_tenant != NULL && c->last_tenant != co->tn)
        return true; /* a full session reset first */
    return !co->handed && p->opts.validation != CPOOL_VALIDATE_NONE && wants_ping(p, c);
}

static void *async_helper_main(void *pool);

/* Hands co->c's remaining steps to a helper thread: the job joins the
 * pool's list and an idle helper, or the background thread (which starts
 * one), is signalled -- the caller, a loop's thread, never creates a thread
 * or waits. Called with mu; returns without it; false (not finished). */
static bool start_helper_unlock(async_req *r)
{
    cpool *p = r->co.p;
    async_link *l = &r->link;
    l->next_job = NULL;
    if (p->job_tail != NULL)
        p->job_tail->next_job = l;
    else
        p->job_head = l;
    p->job_tail = l;
    p->async_helper = async_helper_main; /* what the background thread starts */
    if (p->async_idle > 0)
        pthread_cond_signal(&p->async_cv);
    else
        pthread_cond_signal(&p->maint_cv);
    cpool__unlock(p);
    return false;
}

/* The request's result, from checkout_done_unlock / checkout_fail_unlock. */
static void finish_ok_unlock(async_req *r)
{
    r->link.rc = checkout_done_unlock(&r->co, r->has_label ? r->label : NULL, &r->link.conn);
}

static void finish_fail_unlock(async_req *r)
{
    memset(&r->link.err, 0, sizeof r->link.err);
    r->link.rc = checkout_fail_unlock(&r->co, &r->link.err);
    r->link.conn = NULL;
}

static bool async_step_unlock(async_req *r, int step, bool may_block)
{
    checkout *co = &r->co;
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    for (;;) {
        if (step < 0) { /* look from the start */
            co->c = NULL;
            co->establish = co->handed = false;
            step = ready_step_locked(co);
            if (step == STEP_OK)
                step = take_available_relock(co);
            if (step == STEP_NONE)
                step = fail_fast_step_locked(co);
            if (step == STEP_NONE) {
                atomic_store(&r->link.claimed, false); /* one push per stay */
                step = queue_relock(co);
                if (step == STEP_NONE) {
                    co->w.deadline = co->t.wait_deadline; /* for the background thread */
                    if (p->async_waiting++ == 0)
                        p->async_next = NO_DEADLINE;
                    if (co->t.wait_deadline < p->async_next) {
                        /* The background thread ends the wait: wake it only
                         * when this one ends before any it knows. */
                        p->async_next = co->t.wait_deadline;
                        pthread_cond_signal(&p->maint_cv);
                    }
                    cpool__unlock(p);
                    return false;
                }
            }
        }
        if (step == STEP_OK && !may_block && needs_helper(co))
            return start_helper_unlock(r);
        if (step == STEP_OK)
            step = prepare_step_relock(co);
        if (step == STEP_OK) {
            finish_ok_unlock(r);
            return true;
        }
        if (step == STEP_FAIL) {
            finish_fail_unlock(r);
            return true;
        }
        /* STEP_AGAIN */
        if (co->hook_failed && hook_deadline_passed(co)) {
            finish_fail_unlock(r);
            return true;
        }
        step = -1;
    }
}

/* A helper: runs jobs in arrival order; leaves after 5 s without one, or
 * when the pool closes with none left. */
static void *async_helper_main(void *pool)
{
    cpool *p = pool;
    cpool__lock(p);
    for (;;) {
        while (p->job_head == NULL && p->state != CPOOL_STATE_CLOSED) {
            struct timespec until = abs_real(5000000000LL);
            p->async_idle++;
            int rc = cpool__cond_timedwait(p, &p->async_cv, &until);
            p->async_idle--;
            if (rc == ETIMEDOUT && p->job_head == NULL)
                break;
        }
        async_link *l = p->job_head;
        if (l == NULL)
            break;
        p->job_head = l->next_job;
        if (p->job_head == NULL)
            p->job_tail = NULL;
        async_req *r = req_of(l);
        if (async_step_unlock(r, STEP_OK, true))
            cpool__async_push(&r->link, ASYNC_DONE); /* r is the loop's from here */
        cpool__lock(p);
    }
    p->async_helpers--;
    cpool__unlock(p);
    return NULL;
}

static bool async_finish(async_link *l)
{
    async_req *r = req_of(l);
    checkout *co = &r->co;
    cpool *p = co->p;
    cpool__lock(p);
    p->async_waiting--;
    waiter *w = &co->w;
    /* Out of the token's reach while it is finished: a trigger from now on
     * is seen when (if) it queues again. */
    cpool__cancel_unregister(w);
    int step;
    if (w->queued) {
        /* Pushed by a cancellation while still queued: it leaves now. */
        cpool__wq_remove_locked(p, w);
        cpool__err(&co->ce, CPOOL_ECANCELED, "checkout from %s cancelled after waiting %.3f ms",
                   p->address, (double)(cpool__now(p) - w->since) / 1e6);
        co->cause = &co->ce;
        step = step_fail(co, CPOOL_ECANCELED);
    } else {
        step = after_wait_locked(co, WAIT_SERVED); /* served, or failed by the pool */
    }
    return async_step_unlock(r, step, false);
}

static void async_deliver(async_link *l)
{
    async_req *r = req_of(l);
    l->cb(l->conn, l->rc, l->rc != 0 ? &l->err : NULL, l->arg);
    free(r);
}

int cpool_checkout_async(cpool *p, cpool_async *q, const cpool_checkout_opts *o,
                         cpool_async_fn cb, void *arg, cpool_error *err)
{
    if (p == NULL || q == NULL || cb == NULL)
        return cpool__err(err, CPOOL_EINVAL,
                          "checkout_async: a pool, a completion queue and a callback are "
                          "required");
    if (o != NULL && o->struct_size < offsetof(cpool_checkout_opts, label) + sizeof o->label)
        return cpool__err(err, CPOOL_EINVAL,
                          "checkout_async: options with struct_size = sizeof them");
    if (p->opts.maintenance_interval_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "checkout_async from %s: needs the background thread, which ends "
                          "waits at their deadline (maintenance_interval_ms >= 0)",
                          p->address);
    if (p->observed && cpool__in_callback(p))
        return cpool__callback_err(p, err, "checkout_async");
    async_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return cpool__err(err, CPOOL_ENOMEM, "checkout_async: out of memory");
    r->link.q = q;
    r->link.cb = cb;
    r->link.arg = arg;
    r->link.finish = async_finish;
    r->link.deliver = async_deliver;
    const char *tenant_name = NULL;
    cpool_cancel *cancel = NULL;
    int64_t timeout_ms = -1;
    if (o != NULL) {
        timeout_ms = o->timeout_ms;
        if (o->label != NULL) {
            snprintf(r->label, sizeof r->label, "%s", o->label);
            r->has_label = true;
        }
        if (o->struct_size >= offsetof(cpool_checkout_opts, tenant) + sizeof o->tenant)
            tenant_name = o->tenant;
        if (o->struct_size >= offsetof(cpool_checkout_opts, cancel) + sizeof o->cancel)
            cancel = o->cancel;
    }
    checkout *co = &r->co;
    co->p = p;
    co->t = (checkout_clock){.p = p, .timeout_ms = timeout_ms, .start = -1};
    co->w.cancel = cancel;
    co->w.async = true;
    co->w.alink = &r->link;
    clock_start(&co->t); /* the background thread needs the deadline */
    int rc = checkout_start(co, tenant_name, err);
    if (rc != 0) { /* refused before it began: no callback */
        free(r);
        return rc;
    }
    cpool__async_accepted(q);
    bool done;
    if (co->tn != NULL && !rate_step_locked(co)) {
        finish_fail_unlock(r);
        done = true;
    } else if (cancel != NULL && cpool_cancel_triggered(cancel)) {
        co->rc = CPOOL_ECANCELED;
        finish_fail_unlock(r);
        done = true;
    } else {
        done = async_step_unlock(r, -1, false);
    }
    if (done) /* the callback still runs from cpool_async_process() */
        cpool__async_push(&r->link, ASYNC_DONE);
    return 0;
}
