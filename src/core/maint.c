/* maint.c -- the background thread: idle and lifetime retirement, the
 * minPoolSize refill, leak detection and reclaim, keepalive checks, server
 * probes during backoff; cpool_maintain() and cpool_wait_connected(). Its
 * functions need mu (the thread takes it), and release it for I/O and
 * events as their names say. */
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

/* Takes a lease back from a holder that kept it past leak_reclaim_ms: its
 * slot returns to the pool now, its current operation is interrupted, and
 * the connection is closed when (if) the holder returns it. Releases mu
 * on the way; false when the holder returned it first. */
static bool reclaim_relock(cpool *p, cpool_conn *c, int64_t held)
{
    CPOOL_ASSERT_HELD(p);
    unsigned held_flag = LEASE_HELD;
    if (!atomic_compare_exchange_strong(&c->leased, &held_flag, LEASE_ORPHAN))
        return false;
    list_remove(&p->in_use, c);
    c->state = CONN_ORPHANED;
    list_push_head(&p->orphans, c);
    cpool__unassign_locked(c);
    c->reclaimed = true;
    c->interrupted = true;
    c->pins++;
    p->leaks_reclaimed++;
    if (p->draining) {
        p->drain_reclaimed++;
        pthread_cond_broadcast(&p->drain_cv);
    }
    p->st_closed[CPOOL_CLOSE_RECLAIMED]++;
    cpool__svc_release_locked(p, c);
    void *native = c->native;
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_CLOSED);
    ev.connection_id = c->id;
    ev.reason = CPOOL_CLOSE_RECLAIMED;
    ev.duration_ns = held;
    cpool__emit_unlock(p, &ev);
    if (p->cx->interrupt != NULL && native != NULL)
        p->cx->interrupt(p->cx_ctx, native);
    cpool__lock(p);
    if (--c->pins == 0 && c->close_deferred) {
        c->close_deferred = false;
        cpool__unlock(p);
        if (native != NULL)
            cpool__close_native(p, native, c->id, CPOOL_CLOSE_RECLAIMED);
        cpool__lock(p);
        cpool__conn_free_locked(p, c);
    }
    cpool__grant_capacity_relock(p);
    return true;
}

/* Reports leases held past leak_threshold_ms, or past their tenant's
 * max_hold_ms (once per lease each), and takes back those held past
 * leak_reclaim_ms or, when the tenant's budget says so, past its
 * max_hold_ms. May release mu; the scan starts over after each report. */
static void report_hold_relock(cpool *p, cpool_conn *c, int64_t held, bool tenant_limit)
{
    CPOOL_ASSERT_HELD(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_LEAK_SUSPECTED);
    ev.connection_id = c->id;
    ev.duration_ns = held;
    char label[sizeof c->label], tname[sizeof c->tenant->name];
    memcpy(label, c->label, sizeof label);
    ev.holder_label = label;
    ev.holder_thread = c->holder_tid;
    if (c->tenant != NULL) {
        memcpy(tname, c->tenant->name, sizeof tname);
        ev.tenant = tname;
    }
    ev.over_tenant_limit = tenant_limit;
    cpool__emit_relock(p, &ev);
}

static void scan_leaks_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    bool pool_limits = p->opts.leak_threshold_ms > 0 || p->opts.leak_reclaim_ms > 0;
    int64_t threshold = ms_to_ns(p->opts.leak_threshold_ms);
    int64_t reclaim = ms_to_ns(p->opts.leak_reclaim_ms);
    for (bool again = true; again;) {
        again = false;
        int64_t now = cpool__now(p);
        for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next) {
            int64_t since = atomic_load_explicit(&c->leased_ns, memory_order_relaxed);
            if (since == 0 || atomic_load(&c->leased) != LEASE_HELD)
                continue;
            int64_t held = now - since;
            tenant *t = c->tenant;
            bool over_tenant = t != NULL && t->max_hold_ns > 0 && held >= t->max_hold_ns;
            bool tenant_reclaims = over_tenant && c->hold_lease == since && t->budget.reclaim;
            bool pool_reclaims = c->leak_lease == since && reclaim > 0 && held >= reclaim;
            if (tenant_reclaims || pool_reclaims) {
                if (reclaim_relock(p, c, held)) {
                    if (tenant_reclaims)
                        t->holds_reclaimed++;
                    again = true;
                    break;
                }
                continue;
            }
            if (over_tenant && c->hold_lease != since) {
                c->hold_lease = since;
                t->holds_exceeded++;
                report_hold_relock(p, c, held, true);
                again = true;
                break;
            }
            if (pool_limits && held >= threshold && c->leak_lease != since) {
                c->leak_lease = since;
                p->leaks_suspected++;
                report_hold_relock(p, c, held, false);
                again = true;
                break;
            }
        }
    }
}

/* Background health of idle connections: each connection left available
 * keepalive_ms since it was last used or checked gets the connector's cheap
 * check (a ping when it has none), oldest first, outside mu. Meanwhile it is
 * off the available list, held by the pool as a lease without a holder (no
 * leak report: leased_ns is 0). A dead one is closed, so the refill that
 * follows replaces it before a checkout meets it; a live one goes back with
 * its idle clock untouched, or to a waiter. Releases mu. */
static void keepalive_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->opts.keepalive_ms <= 0 || (p->cx->check == NULL && p->cx->ping == NULL))
        return;
    int64_t every = ms_to_ns(p->opts.keepalive_ms);
    while (p->state == CPOOL_STATE_READY) {
        int64_t now = cpool__now(p);
        cpool_conn *c = p->available.tail;
        for (; c != NULL; c = c->prev) {
            int64_t since = atomic_load_explicit(&c->available_since_ns, memory_order_relaxed);
            if (now - (c->kept_alive_ns > since ? c->kept_alive_ns : since) >= every)
                break;
        }
        if (c == NULL)
            return;
        int64_t since = atomic_load_explicit(&c->available_since_ns, memory_order_relaxed);
        c->kept_alive_ns = now;
        cpool__set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
        void *native = c->native;
        cpool__unlock(p);
        cpool_error ce;
        memset(&ce, 0, sizeof ce);
        /* A ping is bounded as an establishment is, and by 10 s when
         * connect_timeout_ms is 0: the background thread must not hang. */
        int64_t bound_ms = p->opts.connect_timeout_ms > 0 ? p->opts.connect_timeout_ms : 10000;
        int rc = p->cx->check != NULL
                     ? p->cx->check(p->cx_ctx, native, &ce)
                     : p->cx->ping(p->cx_ctx, native,
                                   real_deadline(p, deadline_after(cpool__now(p), bound_ms)),
                                   &ce);
        cpool__lock(p);
        p->st_keepalives++;
        atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
        int reason = cpool__unfit_reason_locked(p, c, rc != 0);
        if (reason >= 0) {
            if (rc != 0) {
                p->st_keepalive_failures++;
                if (ce.code == 0)
                    ce.code = CPOOL_EIO;
            }
            cpool__close_conn_relock(p, c, reason, rc != 0 ? &ce : NULL);
            continue;
        }
        if (cpool__next_waiter_locked(p) != NULL) {
            cpool__make_available_locked(p, c);
        } else {
            cpool__set_state_locked(p, c, CONN_AVAILABLE);
            atomic_store_explicit(&c->available_since_ns, since, memory_order_relaxed);
        }
    }
}

/* Opens one connection into the pool, not as a lease (the refill, and
 * startup): it becomes available, or goes to the oldest waiter. Each
 * establishment gets connect_timeout_ms, never past `until` (pool clock;
 * NO_DEADLINE = none) -- a caller's bound. 0, CPOOL_ENOMEM (nothing was
 * made), or the establishment's error in *e. Releases mu. */
int cpool__open_into_pool_relock(cpool *p, int64_t until, cpool_error *e)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c = cpool__conn_new_locked(p);
    if (c == NULL)
        return cpool__err(e, CPOOL_ENOMEM, "open %s: out of memory", p->address);
    cpool__emit_created_relock(p, c);
    int64_t d = p->opts.connect_timeout_ms > 0
                    ? deadline_after(cpool__now(p), p->opts.connect_timeout_ms)
                    : NO_DEADLINE;
    bool bound = until <= d;
    int rc = cpool__establish_relock(p, c, bound ? until : d, false, bound, e);
    if (rc == ESTABLISH_HOOK) /* the refill stops until the next run */
        return e != NULL && e->code != 0 ? e->code : CPOOL_EIO;
    return rc == ESTABLISH_RETRY ? 0 : rc;
}

/* One background run: close perished available connections (oldest first),
 * check the ones idle for keepalive_ms, then populate up to minPoolSize
 * while the pool is ready and a maxConnecting slot is free. It never waits
 * for a slot. May release mu. */
void cpool__maintain_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    atomic_store_explicit(&p->tick_ns, cpool__now(p), memory_order_relaxed);
    cpool__stats_tick_locked(p);
    for (;;) {
        int64_t now = cpool__now(p);
        cpool_conn *c = p->available.tail;
        int reason = -1;
        for (; c != NULL; c = c->prev)
            if ((reason = cpool__perished_locked(p, c, now)) >= 0)
                break;
        if (c == NULL)
            break;
        cpool__close_conn_relock(p, c, reason, NULL);
    }
    for (;;) {
        int reason = -1;
        cpool_conn *c = cpool__steal_parked_locked(p, STEAL_PERISHED, &reason);
        if (c == NULL)
            break;
        cpool__close_conn_relock(p, c, reason, NULL);
    }
    cpool__interrupt_marked_relock(p);
    if (p->opts.leak_threshold_ms > 0 || p->opts.leak_reclaim_ms > 0 || p->tenant_holds)
        scan_leaks_relock(p);
    keepalive_relock(p);
    cpool_error ce;
    /* Before the queue is granted its establishments, which its deadlines
     * bound: see cpool__want_pool_establishment_locked. */
    if (p->pool_establish && (p->available.head != NULL || p->state != CPOOL_STATE_READY ||
                              (p->opts.max_pool_size > 0 &&
                               total_locked(p) >= p->opts.max_pool_size)))
        p->pool_establish = false; /* a connection to take, or none to make */
    if (p->pool_establish && cpool__can_create_locked(p)) {
        p->pool_establish = false;
        (void)cpool__open_into_pool_relock(p, NO_DEADLINE, &ce);
    }
    cpool__grant_capacity_relock(p); /* a backoff step may have ended */
    while (p->state == CPOOL_STATE_READY && total_locked(p) < p->opts.min_pool_size &&
           cpool__can_create_locked(p)) {
        if (cpool__open_into_pool_relock(p, NO_DEADLINE, &ce) != 0)
            break; /* try again at the next run */
    }
}

/* Whether the background thread probes the server now: establishments are
 * failing, the backoff step has a while to run, and no establishment is in
 * flight (the probe would tell nothing it will not). */
static bool probe_due_locked(const cpool *p, int64_t now)
{
    CPOOL_ASSERT_HELD(p);
    return p->opts.probe_interval_ms > 0 && p->cx->abi_version >= 3 &&
           p->cx->probe != NULL && p->fail_streak > 0 && p->retry_at > now &&
           !p->probing && now >= p->next_probe_at;
}

/* While establishments fail, the backoff keeps them from storming a server
 * that is down; the probe, a connect that sends nothing, finds out cheaply
 * when it is back, and ends the backoff step then rather than when it runs
 * out (up to backoff_max_ms later): service comes back within a probe
 * interval of the server. Runs on the background thread, one at a time.
 * Releases mu during the probe. */
static void probe_server_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    int64_t now = cpool__now(p);
    if (!probe_due_locked(p, now))
        return;
    int64_t interval = ms_to_ns(p->opts.probe_interval_ms);
    p->next_probe_at = now + interval;
    int64_t bound = ms_to_ns(p->opts.connect_timeout_ms);
    if (bound <= 0 || bound > 4 * interval)
        bound = 4 * interval;
    int64_t deadline = real_deadline(p, now + bound);
    cpool_error e;
    memset(&e, 0, sizeof e);
    cpool__unlock(p);
    int rc = p->cx->probe(p->cx_ctx, deadline, &e);
    cpool__lock(p);
    p->st_probes++;
    if (rc != 0 || p->fail_streak == 0)
        return;
    p->st_probes_ok++;
    p->retry_at = cpool__now(p); /* the step ends: the next attempt may run */
    /* The first establishment after it is the background thread's, whatever
     * the waiters' deadlines (or with the circuit open, none waiting). */
    cpool__want_pool_establishment_locked(p);
}

/* Handoff turns: a connection parked for its thread's turn, whose turn ran
 * out before the thread came back for it, goes to the oldest waiter, as a
 * check-in would have sent it. Returns whether there was one. May release
 * mu. */
static bool end_turns_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c;
    int reason = -1;
    bool any = false;
    while (p->state == CPOOL_STATE_READY && cpool__next_waiter_locked(p) != NULL &&
           (c = cpool__steal_parked_locked(p, STEAL_OUT_OF_TURN, &reason)) != NULL) {
        any = true;
        if (reason >= 0) {
            cpool__close_conn_relock(p, c, reason, NULL);
            continue;
        }
        cpool__return_parked_locked(p, c);
    }
    return any;
}

/* Whether any connection is parked for a turn. */
static bool turn_parked_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    for (const cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        if (atomic_load(&c->leased) == LEASE_TURN)
            return true;
    return false;
}

/* Whether turns need watching: checkouts wait, and turns are given (not
 * shrunk below TURN_FLOOR_NS by long waits) or some connection is still
 * parked for one. */
static bool turns_to_watch_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->turns || atomic_load(&p->nwaiting) == 0)
        return false;
    return cpool__turns_given(p) || turn_parked_locked(p);
}

/* Wakes the background thread when the turns need watching and it is not
 * watching them. It decides that itself whenever it wakes, but asleep until
 * its next maintenance run it must be told, wherever the answer can change
 * under it: a checkout queues, or the turns grow back to TURN_FLOOR_NS
 * while checkouts wait. Else a turn begun then, whose thread never came
 * back, would hold the waiters until that run. */
void cpool__watch_turns_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->turn_watch && turns_to_watch_locked(p))
        pthread_cond_signal(&p->maint_cv);
}

/* Sleeps until `until_ns` (monotonic) or a kick. While turns need watching,
 * it wakes every turn's length meanwhile to end the turns nobody came back for
 * (cpool__watch_turns_locked wakes it when that may have become needed). */
/* Asynchronous checkouts wait in the queue without a thread: this thread
 * ends their waits at their deadlines, the earliest of which it returns
 * (pool clock; NO_DEADLINE when none). It scans only once one is due. */
static int64_t expire_async_waits_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->async_waiting == 0)
        return NO_DEADLINE;
    int64_t now = cpool__now(p), next = NO_DEADLINE;
    if (now < p->async_next)
        return p->async_next; /* nothing ends yet: no scan (the thread may
                                 wake every turn while checkouts wait) */
    for (waiter *w = p->wq_head; w != NULL;) {
        waiter *after = w->next;
        if (w->async) {
            int64_t d = w->deadline;
            if (d != NO_DEADLINE && now >= d) {
                tenant *tn = w->tenant;
                bool capped = tn != NULL && tn->max > 0 && tn->in_use >= tn->max;
                if (capped)
                    tn->limit_timeouts++;
                cpool__wq_remove_locked(p, w);
                w->fail = capped ? CPOOL_ETENANT : CPOOL_ETIMEDOUT;
                cpool__serve_waiter(p, w);
            } else if (d != NO_DEADLINE && d < next) {
                next = d;
            }
        }
        w = after;
    }
    p->async_next = next;
    return next;
}

/* What may block in an asynchronous checkout runs on helper threads, which
 * this thread starts -- never the loop that queued the job. */
static void start_async_helper_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    uint32_t cap = p->opts.max_connecting > 2 ? p->opts.max_connecting : 2;
    if (p->job_head == NULL || p->async_idle > 0 || p->async_helpers >= cap)
        return;
    void *(*body)(void *) = p->async_helper; /* read under mu */
    p->async_helpers++;
    cpool__unlock(p);
    pthread_attr_t attr;
    pthread_t th;
    bool started = pthread_attr_init(&attr) == 0 &&
                   pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
                   pthread_create(&th, &attr, body, p) == 0;
    pthread_attr_destroy(&attr);
    cpool__lock(p);
    if (!started)
        p->async_helpers--; /* the next wake tries again */
}

/* early_wake = auto: while turns are watched (checkouts wait), measures
 * every CPU_SAMPLE_NS how much CPU other processes used since the last
 * measurement, and turns the early wake-ups off or on (cpuload.c). A
 * measurement older than two periods (nobody waited meanwhile) only starts
 * a new one. The reading runs without mu; returns whether it did. */
static bool watch_cpu_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    int64_t now = cpool__mono_ns();
    if (p->opts.early_wake != CPOOL_EARLY_WAKE_AUTO ||
        (p->cpu_prev.at_ns != 0 && now - p->cpu_prev.at_ns < CPU_SAMPLE_NS))
        return false;
    cpool__unlock(p);
    cpu_sample s;
    bool ok = cpool__cpu_sample(&s) == 0;
    cpool__lock(p);
    if (!ok) {
        /* No /proc: nothing to decide by; the wake-ups stay as they are. */
        p->cpu_prev = (cpu_sample){.at_ns = now, .busy_ticks = -1};
        p->cpu_others = -1;
        return true;
    }
    if (p->cpu_prev.busy_ticks >= 0 && p->cpu_prev.at_ns != 0 &&
        s.at_ns - p->cpu_prev.at_ns <= 2 * CPU_SAMPLE_NS) {
        p->cpu_others = cpool__cpu_others(&p->cpu_prev, &s);
        p->wake_early = cpool__early_wake_decide(p->wake_early, p->cpu_others, p->ncpu);
    }
    p->cpu_prev = s;
    return true;
}

static void maintenance_sleep_relock(cpool *p, int64_t until_ns)
{
    CPOOL_ASSERT_HELD(p);
    while (!p->maint_kick && p->state != CPOOL_STATE_CLOSED && p->maint_running) {
        p->turn_watch = turns_to_watch_locked(p);
        if (p->turn_watch && watch_cpu_relock(p))
            continue; /* mu was released: look again */
        int64_t now = cpool__mono_ns();
        int64_t wake = until_ns;
        if (p->turn_watch) {
            /* A turn nobody came back for ends a turn's length after its
             * park: wake at that granularity (the current length, which
             * the waits keep adapting), but no more often than turn_us or
             * 100 us. Each look that found nothing to hand over doubles
             * the interval, up to turn_us (or the turn, if longer): where
             * threads come back at once, as a saturated service's do,
             * every look is wasted, and its wake-up takes CPU from the
             * leases. A look that hands one over starts again short. */
            int64_t t = atomic_load_explicit(&p->turn_eff_ns, memory_order_relaxed);
            if (t < p->turn_prompt_ns)
                t = p->turn_prompt_ns;
            int64_t cap = p->turn_ns > t ? p->turn_ns : t;
            t <<= p->watch_shift;
            if (t > cap)
                t = cap;
            if (now + t < wake)
                wake = now + t;
        } else {
            p->watch_shift = 0;
        }
        /* Helper jobs of asynchronous checkouts get a thread; those that
         * reached their deadline end now, and the thread wakes again at the
         * next one (a new one signals it). */
        start_async_helper_relock(p);
        int64_t next_async = expire_async_waits_locked(p);
        if (next_async != NO_DEADLINE) {
            int64_t in = next_async - cpool__now(p);
            if (now + in < wake)
                wake = now + (in > 0 ? in : 0);
        }
        struct timespec ts = {.tv_sec = wake / 1000000000, .tv_nsec = wake % 1000000000};
        int rc = cpool__cond_timedwait(p, &p->maint_cv, &ts);
        if (p->turn_watch) {
            if (end_turns_relock(p))
                p->watch_shift = 0;
            else if (p->watch_shift < WATCH_SHIFT_MAX)
                p->watch_shift++;
        }
        if (rc == ETIMEDOUT && wake == until_ns)
            break;
    }
    p->turn_watch = false;
}

static void *maintenance_main(void *arg)
{
    cpool *p = arg;
    cpool__lock(p);
    while (p->state != CPOOL_STATE_CLOSED && p->maint_running) {
        probe_server_relock(p);
        cpool__maintain_relock(p);
        if (p->state == CPOOL_STATE_CLOSED || !p->maint_running)
            break;
        int64_t pause = ms_to_ns(p->opts.maintenance_interval_ms);
        if (p->fail_streak > 0 && p->retry_at > 0) {
            /* Wake at the end of the backoff step to refill (or probe). */
            int64_t left = p->retry_at - cpool__now(p);
            if (left < pause)
                pause = left > 1000000 ? left : 1000000;
        }
        if (p->fail_streak > 0 && p->opts.probe_interval_ms > 0 &&
            pause > ms_to_ns(p->opts.probe_interval_ms))
            pause = ms_to_ns(p->opts.probe_interval_ms); /* and probe meanwhile */
        maintenance_sleep_relock(p, cpool__mono_ns() + pause);
        p->maint_kick = false;
    }
    cpool__unlock(p);
    return NULL;
}

int cpool__start_maintenance_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->opts.maintenance_interval_ms < 0 || p->maint_running)
        return 0;
    p->maint_running = true;
    if (pthread_create(&p->maint, NULL, maintenance_main, p) != 0) {
        p->maint_running = false;
        return CPOOL_ESYS;
    }
    return 0;
}
