/* pool.c -- connections, the wait queue, establishment, the thread-affine
 * fast path, checkout and check-in: the CMAP pool's hot paths.
 *
 * What must stay true (asserted by check_counts_locked in debug builds):
 *   total = pending + available + in use, total <= maxPoolSize (when > 0),
 *   pending <= maxConnecting, and a waiter is queued only while the pool is
 *   ready and nothing it could take is available.
 *
 * Locking: see pool_int.h and docs/design.md. Connector calls and
 * callbacks never run under mu.
 */
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

static int checkout_impl(cpool *p, int64_t timeout_ms, const char *label,
                         const char *tenant_name, cpool_conn **out, cpool_error *err);

/* ------------------------------------------------------------------ lists */

static conn_list *list_for(cpool *p, conn_state s)
{
    switch (s) {
    case CONN_PENDING: return &p->pending;
    case CONN_AVAILABLE: return &p->available;
    case CONN_IN_USE: return &p->in_use;
    case CONN_ORPHANED: return &p->orphans;
    default: return &p->free_list;
    }
}

static void check_counts_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
#ifndef NDEBUG
    if (p->opts.max_pool_size > 0)
        assert(total_locked(p) <= p->opts.max_pool_size);
    assert(p->pending.n <= p->opts.max_connecting);
#else
    (void)p;
#endif
}

/* The one place a connection changes state. Available connections are kept
 * newest first: reusing the most recently returned one lets the others reach
 * maxIdleTimeMS and close, instead of all of them staying half-warm. */
void cpool__set_state_locked(cpool *p, cpool_conn *c, conn_state s)
{
    CPOOL_ASSERT_HELD(p);
    conn_list *from = list_for(p, c->state), *to = list_for(p, s);
    if (from != to) {
        list_remove(from, c);
        list_push_head(to, c);
    }
    c->state = s;
    check_counts_locked(p);
}

/* ------------------------------------------------------------------ services */

service *cpool__svc_find_locked(cpool *p, const char *id)
{
    CPOOL_ASSERT_HELD(p);
    for (service *s = p->services; s != NULL; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

/* CMAP load-balanced mode: once the handshake names the service, the
 * connection takes that service's generation and counts toward it. */
static int svc_attach_locked(cpool *p, cpool_conn *c, const char *id)
{
    CPOOL_ASSERT_HELD(p);
    service *s = cpool__svc_find_locked(p, id);
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return CPOOL_ENOMEM;
        snprintf(s->id, sizeof s->id, "%s", id);
        s->next = p->services;
        p->services = s;
    }
    s->count++;
    c->svc = s;
    c->generation = s->generation;
    return 0;
}

/* The entry goes away with its last connection. */
void cpool__svc_release_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    service *s = c->svc;
    if (s == NULL)
        return;
    c->svc = NULL;
    if (--s->count > 0)
        return;
    for (service **pp = &p->services; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            free(s);
            return;
        }
    }
}

/* ------------------------------------------------------------------ conns */

static bool is_stale_locked(const cpool *p, const cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    if (c->svc != NULL)
        return c->generation != c->svc->generation;
    return c->generation != p->generation;
}

/* Leases of a connection so far (its statistics cell counts them). */
static inline uint64_t conn_uses(const cpool_conn *c)
{
    return atomic_load_explicit(&c->cell.checkouts_ok, memory_order_relaxed);
}

/* Returns the close reason of a perished available connection, or -1. */
int cpool__perished_locked(const cpool *p, const cpool_conn *c, int64_t now)
{
    CPOOL_ASSERT_HELD(p);
    if (is_stale_locked(p, c))
        return CPOOL_CLOSE_STALE;
    /* Idleness retires only what the pool has beyond minPoolSize: closing
     * one it must keep would only reopen it (an idle pool at its minimum
     * churned through 21 connections in 2 s with maxIdleTimeMS=300). */
    if (p->opts.max_idle_time_ms > 0 && total_locked(p) > p->opts.min_pool_size &&
        now - atomic_load_explicit(&c->available_since_ns, memory_order_relaxed) >
            ms_to_ns(p->opts.max_idle_time_ms))
        return CPOOL_CLOSE_IDLE;
    if (now >= c->expires_ns)
        return CPOOL_CLOSE_LIFETIME;
    return -1;
}

/* The clock reading cpool__perished_locked() needs: 0 when no time limit applies,
 * so the hot path reads no clock for nothing. */
static int64_t perish_now(const cpool *p)
{
    return p->opts.max_idle_time_ms > 0 || p->opts.max_lifetime_ms > 0 ? cpool__now(p) : 0;
}

/* Why a connection coming back from a lease must be closed, or -1 when it
 * may be reused: the pool closed, a clear made it stale, or it is broken
 * (the caller said so, a reset or check failed, or it was interrupted). */
int cpool__unfit_reason_locked(const cpool *p, const cpool_conn *c, bool broken)
{
    CPOOL_ASSERT_HELD(p);
    if (p->state == CPOOL_STATE_CLOSED || p->draining)
        return CPOOL_CLOSE_POOL_CLOSED;
    if (is_stale_locked(p, c))
        return CPOOL_CLOSE_STALE;
    if (broken || c->interrupt_requested)
        return CPOOL_CLOSE_ERROR;
    if (p->opts.recycle_after_uses > 0 && conn_uses(c) >= p->opts.recycle_after_uses)
        return CPOOL_CLOSE_USES;
    if (c->expires_ns != INT64_MAX && cpool__now(p) >= c->expires_ns)
        return CPOOL_CLOSE_LIFETIME;
    return -1;
}

/* A uniform number in [0, 1) for the jitters (xorshift64*: the pool needs
 * spread, not secrecy). */
static double random_unit_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->rng ^= p->rng >> 12;
    p->rng ^= p->rng << 25;
    p->rng ^= p->rng >> 27;
    return (double)((p->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* A connection's lifetime, shortened by a random fraction up to
 * lifetime_jitter. */
static int64_t expiry_locked(cpool *p, int64_t created)
{
    CPOOL_ASSERT_HELD(p);
    if (p->opts.max_lifetime_ms <= 0)
        return INT64_MAX;
    double u = random_unit_locked(p);
    int64_t life = ms_to_ns(p->opts.max_lifetime_ms);
    return created + life - (int64_t)((double)life * p->opts.lifetime_jitter * u);
}

/* A tenant's lease count drops when its connection comes back or closes. */
void cpool__unassign_locked(cpool_conn *c)
{
    CPOOL_ASSERT_HELD(c->pool);
    if (c->tenant != NULL) {
        c->tenant->in_use--;
        c->tenant = NULL;
    }
}

/* The circuit is open: establishments keep failing (see cpool__can_create_locked). */
static bool breaker_open(const cpool *p)
{
    return p->opts.breaker_threshold > 0 && p->fail_streak >= p->opts.breaker_threshold;
}

/* Creates a pending connection: no I/O (CMAP), counts toward total and
 * pending. The caller emits ConnectionCreated. */
cpool_conn *cpool__conn_new_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c = p->free_list.head;
    if (c != NULL) {
        list_remove(&p->free_list, c);
    } else {
        c = calloc(1, sizeof *c);
        if (c == NULL)
            return NULL;
        c->magic = CONN_MAGIC;
        c->pool = p;
    }
    c->id = ++p->next_id;
    c->generation = p->generation;
    c->svc = NULL;
    c->native = NULL;
    c->pins = 0;
    c->interrupt_requested = c->interrupted = c->close_deferred = false;
    c->created_ns = cpool__now(p);
    c->kept_alive_ns = c->created_ns;
    c->expires_ns = expiry_locked(p, c->created_ns);
    /* A reused struct must not carry its last lease's times into the
     * window before this one's lease_begin (a leak scan would see them). */
    atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed);
    c->leak_lease = 0;
    c->probe = p->fail_streak > 0;
    if (c->probe)
        p->probing = true;
    p->st_created++;
    atomic_store_explicit(&c->available_since_ns, c->created_ns, memory_order_relaxed);
    /* The eventfd lets clear() and close() abandon an establishment that is
     * blocked in the connector; without it, interruption is just slower. */
    c->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->state = CONN_PENDING;
    list_push_head(&p->pending, c);
    check_counts_locked(p);
    return c;
}

void cpool__cancel_pending(cpool_conn *c)
{
    if (c->cancel_fd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(c->cancel_fd, &one, sizeof one);
        (void)n; /* EAGAIN means it was already signalled */
    }
}

void cpool__conn_free_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    if (c->cancel_fd >= 0)
        close(c->cancel_fd);
    c->cancel_fd = -1;
    c->native = NULL;
    c->state = CONN_FREE;
    atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
    list_push_head(&p->free_list, c);
}

/* Drops c without any I/O on its socket: after fork() the parent owns the
 * server session. abandon() only frees, so it runs under mu. */
void cpool__abandon_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    list_remove(list_for(p, c->state), c);
    if (c->native != NULL && p->cx->abandon != NULL)
        p->cx->abandon(p->cx_ctx, c->native);
    c->svc = NULL;
    cpool__unassign_locked(c);
    cpool__cell_fold(&p->retired, &c->cell); /* closes fold theirs earlier */
    cpool__conn_free_locked(p, c);
}

void cpool__emit_created_relock(cpool *p, const cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->observed)
        return;
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_CREATED);
    ev.connection_id = c->id;
    cpool__emit_relock(p, &ev);
}

/* Closes c: it leaves its list at once (so it counts nowhere), then
 * ConnectionClosed is emitted and the connector closes it outside mu. If an
 * interrupt() is in flight on it, the last unpin does the teardown instead.
 * Releases mu on the way; returns with mu held. Frees capacity, so it hands
 * it to the wait queue. */
void cpool__close_conn_relock(cpool *p, cpool_conn *c, int reason,
                              const cpool_error *cause)
{
    CPOOL_ASSERT_HELD(p);
    list_remove(list_for(p, c->state), c);
    c->state = CONN_FREE; /* in no list until cpool__conn_free_locked */
    /* Its counts leave the lists now: fold them before mu is released, so a
     * snapshot never sees them vanish (counters must not go backwards). */
    cpool__cell_fold(&p->retired, &c->cell);
    if ((unsigned)reason < CPOOL_CLOSE_REASON_SLOTS)
        p->st_closed[reason]++;
    cpool__unassign_locked(c);
    if (p->draining)
        pthread_cond_broadcast(&p->drain_cv);
    cpool__svc_release_locked(p, c);
    void *native = c->native;
    bool pinned = c->pins > 0;
    if (pinned)
        c->close_deferred = true;

    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_CLOSED);
    ev.connection_id = c->id;
    ev.reason = reason;
    ev.error = reason == CPOOL_CLOSE_ERROR ? cause : NULL;
    cpool__emit_unlock(p, &ev);
    if (!pinned && native != NULL)
        p->cx->close(p->cx_ctx, native);
    cpool__lock(p);
    if (!pinned)
        cpool__conn_free_locked(p, c);
    cpool__grant_capacity_relock(p);
}

static void wq_remove_locked(cpool *p, waiter *w)
{
    CPOOL_ASSERT_HELD(p);
    if (!w->queued)
        return;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        p->wq_head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        p->wq_tail = w->prev;
    w->prev = w->next = NULL;
    w->queued = false;
    if (w->tenant != NULL)
        w->tenant->waiting--;
    atomic_fetch_sub(&p->nwaiting, 1);
}

/* Wakes w once its conn or fail field is set (under mu). The flag carries
 * the fields to the waiter, which may read them without mu; the semaphore
 * only wakes it. */
static void serve_waiter(waiter *w)
{
    atomic_store_explicit(&w->done, 1, memory_order_release);
    sem_post(&w->sem);
}

/* ------------------------------------------------- wait queue and capacity */

/* The waiter to serve next: the oldest, or with tenants the oldest whose
 * tenant may take one more. */
waiter *cpool__next_waiter_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants)
        return p->wq_head;
    for (waiter *w = p->wq_head; w != NULL; w = w->next)
        if (cpool__tenant_allows_locked(p, w->tenant))
            return w;
    return NULL;
}

static void assign_locked(cpool *p, cpool_conn *c, tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants || t == NULL)
        return;
    c->tenant = t;
    t->in_use++;
}

/* A checked-in or freshly established connection: straight to the oldest
 * waiter if there is one (direct handoff: no newcomer can barge in between),
 * otherwise onto the available stack. */
void cpool__make_available_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    waiter *w = cpool__next_waiter_locked(p);
    if (w != NULL && p->state == CPOOL_STATE_READY) {
        wq_remove_locked(p, w);
        assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = false;
        cpool__set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
        serve_waiter(w);
        return;
    }
    /* The idle clock matters only with maxIdleTimeMS or ping-when-idle;
     * skip the clock read on the hot path otherwise. */
    if (p->stamp_idle)
        atomic_store_explicit(&c->available_since_ns, cpool__now(p),
                              memory_order_relaxed);
    cpool__set_state_locked(p, c, CONN_AVAILABLE);
}

/* After a failure, establishments wait for the end of the backoff step,
 * and then one runs at a time (the probe) until one succeeds: a backend
 * that just failed is not sent maxConnecting handshakes at once. */
static bool backoff_allows_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->fail_streak == 0)
        return true;
    if (p->probing)
        return false;
    return p->retry_at == 0 || cpool__now(p) >= p->retry_at;
}

bool cpool__can_create_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->pending.n >= p->opts.max_connecting)
        return false;
    if (!backoff_allows_locked(p))
        return false;
    if (p->cap_retry_at != 0 && cpool__now(p) < p->cap_retry_at)
        return false;
    return p->opts.max_pool_size == 0 || total_locked(p) < p->opts.max_pool_size;
}

/* Capacity freed (a close, or an establishment ended): the oldest waiter may
 * now create a connection. The pending connection is created here, in queue
 * order, and handed to the waiter to establish. May release mu. */
/* With tenants, a tenant's count dropping (a lease closed rather than
 * returned) can make a queued checkout eligible for a connection that is
 * already available: offer it, so no waiter stays queued beside one. */
static void offer_available_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants)
        return;
    for (cpool_conn *c = p->available.head; c != NULL && cpool__next_waiter_locked(p) != NULL;) {
        cpool_conn *next = c->next;
        cpool__make_available_locked(p, c);
        c = next;
    }
}

void cpool__grant_capacity_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    offer_available_locked(p);
    waiter *w;
    while ((w = cpool__next_waiter_locked(p)) != NULL && p->state == CPOOL_STATE_READY &&
           cpool__can_create_locked(p)) {
        wq_remove_locked(p, w);
        cpool_conn *c = cpool__conn_new_locked(p);
        if (c == NULL) {
            w->fail = CPOOL_ENOMEM;
            serve_waiter(w);
            continue;
        }
        assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = true;
        serve_waiter(w);
        cpool__emit_created_relock(p, c);
    }
}

void cpool__fail_waiters_locked(cpool *p, int code)
{
    CPOOL_ASSERT_HELD(p);
    while (p->wq_head != NULL) {
        waiter *w = p->wq_head;
        wq_remove_locked(p, w);
        w->fail = code;
        serve_waiter(w);
    }
}

void cpool__kick_maintenance_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->maint_kick = true;
    pthread_cond_signal(&p->maint_cv);
}

/* ------------------------------------------------------------ establishment */

/* The wait before the next establishment after the nth failure in a row:
 * base * 2^(n-1), capped, randomised by +- backoff_jitter. */
static int64_t backoff_delay_locked(cpool *p, uint32_t n)
{
    CPOOL_ASSERT_HELD(p);
    int64_t base = ms_to_ns(p->opts.backoff_base_ms), cap = ms_to_ns(p->opts.backoff_max_ms);
    if (base <= 0)
        return 0;
    int64_t d = base;
    for (uint32_t i = 1; i < n && d < cap; i++)
        d *= 2;
    if (cap > 0 && d > cap)
        d = cap;
    double u = random_unit_locked(p);
    return d + (int64_t)((double)d * p->opts.backoff_jitter * (2 * u - 1));
}

/* "backend unavailable": what a checkout gets while the circuit is open. */
static void unavailable_error_locked(const cpool *p, cpool_error *e)
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

/* An establishment failed for a reason the server may have caused: count
 * it, schedule the next attempt, and open the circuit at the threshold,
 * failing the waiters that only a new connection could serve. */
static void note_connect_failure_locked(cpool *p, const cpool_error *ce)
{
    CPOOL_ASSERT_HELD(p);
    p->fail_streak++;
    p->last_fail = *ce;
    p->last_fail_at = cpool__now(p);
    int64_t d = backoff_delay_locked(p, p->fail_streak);
    p->retry_at = d > 0 ? p->last_fail_at + d : 0;
    /* The maintenance thread re-arms to wake at retry_at and serve the
     * queue (waiters that queued before this failure sleep on), and to
     * probe the server meanwhile. */
    if (p->wq_head != NULL || p->opts.probe_interval_ms > 0)
        cpool__kick_maintenance_locked(p);
    if (!breaker_open(p))
        return;
    if (p->fail_streak == p->opts.breaker_threshold)
        p->breaker_opens++;
    /* The failed connection is still counted (it closes next). A full
     * pool's waiters wait for check-ins, not connects. Every failure while
     * the circuit is open flushes them: a checkout may have queued behind
     * others that were waiting when it opened. */
    if (p->opts.max_pool_size != 0 && total_locked(p) - 1 >= p->opts.max_pool_size)
        return;
    while (p->wq_head != NULL) {
        waiter *w = p->wq_head;
        wq_remove_locked(p, w);
        w->fail = CPOOL_EUNAVAILABLE;
        serve_waiter(w);
    }
}

/* The server refused for lack of slots: not a failure of the backend (no
 * backoff, no circuit), counted apart; the next attempt waits a moment. */
static void note_capacity_refusal_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->st_capacity_refusals++;
    int64_t d = ms_to_ns(CAPACITY_RETRY_MS);
    d += (int64_t)((double)d * 0.2 * (2 * random_unit_locked(p) - 1));
    p->cap_retry_at = cpool__now(p) + d;
    if (p->wq_head != NULL)
        cpool__kick_maintenance_locked(p);
}

static void note_connect_success_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->cap_retry_at = 0;
    if (p->fail_streak == 0)
        return;
    p->fail_streak = 0;
    p->retry_at = 0;
    cpool__kick_maintenance_locked(p); /* refill to minPoolSize now */
}

/* Establishes pending connection c outside mu. On success c is in use (for a
 * checkout) or made available (background population) and 0 is returned.
 * On failure c is closed with reason "error" and the error is returned with
 * its labels; with clear_on_connect_error an unlabelled failure first clears
 * the pool, so PoolCleared precedes ConnectionClosed as CMAP's tests expect.
 * ESTABLISH_RETRY: established, but a clear made it stale meanwhile; it was
 * closed. Called with mu held; releases it during the connect. */
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
            else if (svc_attach_locked(p, c, a.service_id) != 0)
                rc = cpool_error_set(&ce, CPOOL_ENOMEM, CPOOL_PHASE_HANDSHAKE,
                                     CPOOL_FAIL_OTHER, 0, "out of memory");
        }
    }
    if (rc != 0) {
        if (ce.code == 0)
            ce.code = rc;
        if (ce.message[0] == '\0')
            snprintf(ce.message, sizeof ce.message, "connect %s: %s", p->address,
                     cpool_strerror(rc));
        if (ce.kind == CPOOL_FAIL_INTERRUPTED) {
            /* The pool abandoned this attempt (clear or close): retryable. */
            ce.labels |= CPOOL_LABEL_RETRYABLE;
        } else if (cpool_is_backpressure(ce.phase, ce.kind)) {
            ce.labels |= CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE;
        } else if (p->opts.clear_on_connect_error && !p->opts.load_balanced &&
                   ce.code != CPOOL_ENOMEM && p->state == CPOOL_STATE_READY &&
                   !is_stale_locked(p, c)) {
            /* Not in load-balanced mode: there an establishment error must
             * never pause the whole pool (CMAP load-balancer rules). Nor for
             * a local out-of-memory, which says nothing about the server. */
            cpool__clear_relock(p, 0, &ce);
        }
        p->st_connect_failures++;
        /* A caller's own short deadline ending the attempt says nothing
         * about the backend (a checkout with timeout 0 would otherwise
         * trip the breaker against a healthy server). */
        if (ce.kind == CPOOL_FAIL_CAPACITY)
            note_capacity_refusal_locked(p);
        else if (ce.kind != CPOOL_FAIL_INTERRUPTED && ce.code != CPOOL_ENOMEM &&
                 !(caller_bound && ce.kind == CPOOL_FAIL_TIMEOUT))
            note_connect_failure_locked(p, &ce);
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_ERROR, &ce);
        if (e != NULL)
            *e = ce;
        return ce.code;
    }

    /* CMAP requirement 41: the connection becomes available (or leased) in
     * the same critical section that takes it off the pending count, before
     * anything is emitted, so no thread ever sees a free maxConnecting slot
     * without the connection that freed it. */
    p->st_ready++;
    cpool__hist_add(&p->connect_hist, cpool__now(p) - c->created_ns);
    note_connect_success_locked(p);
    bool stale = is_stale_locked(p, c) || p->state == CPOOL_STATE_CLOSED || p->draining;
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
    }
    if (stale) {
        cpool__close_conn_relock(p, c,
                          p->state == CPOOL_STATE_CLOSED || p->draining
                              ? CPOOL_CLOSE_POOL_CLOSED
                              : CPOOL_CLOSE_STALE,
                          NULL);
        return ESTABLISH_RETRY;
    }
    cpool__grant_capacity_relock(p); /* a maxConnecting slot is free again */
    return 0;
}

/* ------------------------------------------------------ thread-affine fast path
 *
 * With no subscriber and nobody waiting, a check-in *parks* the connection:
 * it stays on the in-use list, its lease flag goes HELD -> PARKED, and the
 * returning thread remembers it in a thread-local slot. That thread's next
 * checkout takes it back with one compare-exchange PARKED -> HELD. Neither
 * step takes the pool lock or writes a cache line another thread uses, so
 * threads that each reuse their own connection do not contend at all.
 *
 * Anyone else may take a parked connection the same way under mu (a slow
 * checkout that finds nothing available, close, the maintenance thread), so
 * a parked connection is always available to the pool, and the winner of the
 * compare-exchange owns it. Parking must not hide a connection from a waiter,
 * which is a Dekker-style handshake on sequentially consistent operations: a
 * check-in stores PARKED and then reads nwaiting; a waiter increments
 * nwaiting and then scans for PARKED connections. At least one of them sees
 * the other: either the check-in takes its connection back and hands it to
 * the waiter, or the waiter takes the parked connection itself.
 *
 * The slot names the pool by a process-unique serial, not by pointer, so a
 * slot left behind by a destroyed pool never matches a new one. */
static _Thread_local struct {
    uint64_t serial;
    cpool_conn *conn;
} tl_park;
atomic_uint_fast64_t cpool__pool_serial;

/* "Now" for lifetimes on the lock-free path. A clock read costs as much as
 * the rest of a lock-free checkout, and lifetimes are minutes long, so with
 * a maintenance thread this is the time of its last run (it also closes
 * expired parked connections); without one, the kernel's coarse clock. */
static inline int64_t lifetime_now(const cpool *p)
{
    if (p->opts.clock == NULL && p->opts.maintenance_interval_ms > 0) {
        int64_t t = atomic_load_explicit(&p->tick_ns, memory_order_relaxed);
        if (t != 0)
            return t;
    }
    return cpool__now_coarse(p);
}

static bool fast_usable(const cpool *p, const cpool_conn *c)
{
    if (atomic_load(&p->state) != CPOOL_STATE_READY ||
        c->generation != atomic_load(&p->generation) || fork_pending(p))
        return false;
    if (p->opts.recycle_after_uses > 0 && conn_uses(c) >= p->opts.recycle_after_uses)
        return false;
    if (c->expires_ns != INT64_MAX && lifetime_now(p) >= c->expires_ns)
        return false;
    /* With a minimum to keep, idleness is judged under the lock, where the
     * pool's size is known (cpool__perished_locked). */
    return p->opts.max_idle_time_ms == 0 || p->opts.min_pool_size > 0 ||
           cpool__now(p) - atomic_load_explicit(&c->available_since_ns,
                                                 memory_order_relaxed) <=
               ms_to_ns(p->opts.max_idle_time_ms);
}

/* Parks c (leased NONE, reset done) in this thread's slot. Returns false
 * when the caller must finish the check-in under the lock instead. */
static bool try_park(cpool *p, cpool_conn *c)
{
    if (p->stamp_idle)
        atomic_store_explicit(&c->available_since_ns, cpool__now(p),
                              memory_order_relaxed);
    if (!fast_usable(p, c))
        return false;
    atomic_store(&c->leased, LEASE_PARKED);
    /* The same handshake with cpool_close(), which stores CLOSED and then
     * takes every parked connection: re-reading the state after the store
     * means a connection is never left parked in a closed pool. */
    if (atomic_load(&p->nwaiting) == 0 &&
        atomic_load(&p->state) == CPOOL_STATE_READY) {
        tl_park.serial = p->serial;
        tl_park.conn = c;
        return true;
    }
    unsigned parked = LEASE_PARKED;
    if (atomic_compare_exchange_strong(&c->leased, &parked, LEASE_NONE))
        return false; /* took it back: the locked path hands it over or closes it */
    return true;      /* someone took it already */
}

/* Counts a lease that starts now. `start` is the checkout's start on the
 * pool clock, -1 when it never waited (the fast path). Only the new holder
 * writes these fields. */
static _Thread_local uint64_t tl_tid;

static inline void lease_begin(cpool *p, cpool_conn *c, int64_t start, bool reused,
                               const char *label)
{
    if (start == FAST_LEASE) {
        /* Lock-free: it never waited. Time the hold of one lease in
         * timing_sample only (leased_ns 0: not timed). */
        bool timed = false;
        if (p->opts.timing_sample != 0 && c->sample_left-- == 0) {
            c->sample_left = p->opts.timing_sample - 1;
            timed = true;
        }
        atomic_store_explicit(&c->leased_ns, timed ? cpool__now(p) : 0,
                              memory_order_relaxed);
        cpool__bump(&c->cell.checkouts_ok); /* its use count */
        if (timed)
            cpool__hist_add(&c->cell.wait, 0);
        return;
    }
    int64_t now = cpool__now(p);
    if (p->opts.leak_threshold_ms > 0) {
        /* Under mu (leak detection makes the pool take the locked paths):
         * the leak scan reads these under mu too. */
        if (tl_tid == 0)
            tl_tid = (uint64_t)gettid();
        c->holder_tid = tl_tid;
        snprintf(c->label, sizeof c->label, "%s", label != NULL ? label : "");
    }
    atomic_store_explicit(&c->leased_ns, now, memory_order_relaxed);
    cpool__bump(&c->cell.checkouts_ok);
    if (!reused)
        cpool__bump(&c->cell.fresh);
    cpool__hist_add(&c->cell.wait, start >= 0 ? now - start : 0);
}

/* Whether the validation policy pings c now: always, or when it has been
 * idle at least validation_idle_ms. */
static bool wants_ping(const cpool *p, const cpool_conn *c)
{
    cpool_validation v = p->opts.validation;
    if (p->cx->ping == NULL || v == CPOOL_VALIDATE_NONE || v == CPOOL_VALIDATE_CHECK)
        return false;
    return v == CPOOL_VALIDATE_ALWAYS ||
           cpool__now(p) - atomic_load_explicit(&c->available_since_ns,
                                                memory_order_relaxed) >=
               ms_to_ns(p->opts.validation_idle_ms);
}

/* True when a ping is due and the checkout's deadline (pool clock) has
 * already passed: the step does not run, and nothing is held against the
 * connection or the server -- the caller simply ran out of time. */
static bool no_time_to_ping(const cpool *p, bool ping, int64_t deadline)
{
    return ping && deadline != NO_DEADLINE && cpool__now(p) >= deadline;
}

/* The validation policy, outside mu, on a connection that was available:
 * the connector's cheap check, then the ping when `ping` (see wants_ping),
 * bounded by `deadline` (pool clock; NO_DEADLINE = none). 0 = hand it out;
 * otherwise ce says why it must be closed. */
static inline int validate_conn(cpool *p, cpool_conn *c, bool ping, int64_t deadline,
                                cpool_error *ce)
{
    /* Only the code: zeroing all of *ce costs more than the rest of a
     * lock-free checkout; a failing check or ping fills the rest. */
    ce->code = 0;
    ce->message[0] = '\0';
    if (p->opts.validation == CPOOL_VALIDATE_NONE)
        return 0;
    cpool__bump(&c->cell.validations);
    if (p->cx->check != NULL && p->cx->check(p->cx_ctx, c->native, ce) != 0) {
        cpool__bump(&c->cell.validation_failures);
        return -1;
    }
    if (!ping)
        return 0;
    if (p->cx->ping(p->cx_ctx, c->native, real_deadline(p, deadline), ce) == 0)
        return 0;
    cpool__bump(&c->cell.validation_failures);
    if (ce->code == 0)
        ce->code = CPOOL_EIO;
    if (ce->message[0] == '\0')
        snprintf(ce->message, sizeof ce->message, "ping %s: no answer", p->address);
    return -1;
}

/* A ping's deadline on the lock-free path, which has no checkout clock:
 * connect_timeout_ms from `start` bounds a ping as it bounds an
 * establishment, and the caller's timeout bounds both. */
static int64_t fast_deadline(const cpool *p, int64_t start, int64_t timeout_ms)
{
    int64_t d = NO_DEADLINE;
    if (p->opts.connect_timeout_ms > 0)
        d = deadline_after(start, p->opts.connect_timeout_ms);
    if (timeout_ms >= 0) {
        int64_t own = deadline_after(start, timeout_ms);
        if (own < d)
            d = own;
    }
    return d;
}

/* Takes this thread's parked connection, if it is still parked and fit.
 * When it had to be pinged and was not handed out, *start is when the
 * checkout began (pool clock), so that the slow path goes on with the same
 * deadline instead of a new one; else it is left alone. */
static cpool_conn *take_parked_fast(cpool *p, int64_t timeout_ms, int64_t *start)
{
    cpool_conn *c = tl_park.conn;
    if (tl_park.serial != p->serial || c == NULL || atomic_load(&p->nwaiting) != 0)
        return NULL;
    unsigned parked = LEASE_PARKED;
    if (!atomic_compare_exchange_strong(&c->leased, &parked, LEASE_HELD))
        return NULL;
    /* The same validation as the slow path: a parked connection may have
     * died while it waited. */
    cpool_error ce;
    ce.code = 0;
    bool usable = fast_usable(p, c);
    bool dead = false;
    if (usable) {
        bool ping = wants_ping(p, c);
        int64_t deadline = NO_DEADLINE;
        if (ping) {
            *start = cpool__now(p);
            deadline = fast_deadline(p, *start, timeout_ms);
            if (no_time_to_ping(p, ping, deadline)) {
                /* Left parked; the slow path fails the checkout. */
                atomic_store(&c->leased, LEASE_PARKED);
                return NULL;
            }
        }
        dead = validate_conn(p, c, ping, deadline, &ce) != 0;
    }
    if (usable && !dead)
        return c;
    /* Ours now, but perished, dead or the pool changed: close it properly. */
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (c->state == CONN_IN_USE) {
        int reason = cpool__unfit_reason_locked(p, c, dead);
        cpool__close_conn_relock(p, c, reason >= 0 ? reason : CPOOL_CLOSE_IDLE,
                          dead ? &ce : NULL);
    }
    cpool__unlock(p);
    return NULL;
}

/* Takes a parked connection (any thread's) under mu; it is HELD by the
 * caller afterwards. `perished_only` takes only perished ones. */
cpool_conn *cpool__steal_parked_locked(cpool *p, bool perished_only, int *reason)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->can_park)
        return NULL;
    int64_t now = perish_now(p);
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next) {
        if (atomic_load(&c->leased) != LEASE_PARKED)
            continue;
        int why = cpool__perished_locked(p, c, now);
        if (perished_only && why < 0)
            continue;
        unsigned parked = LEASE_PARKED;
        if (!atomic_compare_exchange_strong(&c->leased, &parked, LEASE_HELD))
            continue;
        if (reason != NULL)
            *reason = why;
        return c;
    }
    return NULL;
}

/* ------------------------------------------------------------------ checkout */

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

/* When a queued checkout should look again: the end of the current backoff
 * step if that comes before its deadline. */
static int64_t backoff_wake_locked(const cpool *p, int64_t deadline)
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
    case CPOOL_EUNAVAILABLE: unavailable_error_locked(p, &e); break;
    case CPOOL_ESHUTDOWN:
        cpool__err(&e, rc, "connection pool %s is shutting down: no new checkouts", p->address);
        break;
    case CPOOL_ETIMEDOUT:
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

/* Waits, without mu, until w is served or failed (returns true) or its
 * deadline passes (false). Sleeps in slices so that a test clock that jumps
 * is noticed. */
static bool wait_served(const cpool *p, waiter *w, int64_t deadline)
{
    const int64_t slice = p->opts.clock != NULL ? 5000000 : 1000000000;
    for (;;) {
        if (deadline == NO_DEADLINE) {
            if (sem_wait(&w->sem) == 0)
                return true;
            continue; /* EINTR */
        }
        int64_t left = deadline - cpool__now(p);
        if (left <= 0)
            return false;
        struct timespec ts = abs_real(left < slice ? left : slice);
        if (sem_clockwait(&w->sem, CLOCK_MONOTONIC, &ts) == 0)
            return true;
    }
}

/* After wait_served() returned true: the fields are ready to read. */
static bool waiter_done(waiter *w)
{
    return atomic_load_explicit(&w->done, memory_order_acquire) == 1;
}

int cpool_checkout(cpool *p, int64_t timeout_ms, cpool_conn **out, cpool_error *err)
{
    return checkout_impl(p, timeout_ms, NULL, NULL, out, err);
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
    return checkout_impl(p, o->timeout_ms, o->label, tenant_name, out, err);
}

int cpool_checkout_at(cpool *p, int64_t timeout_ms, const char *label, cpool_conn **out,
                      cpool_error *err)
{
    return checkout_impl(p, timeout_ms, label, NULL, out, err);
}

/* A connection taken for a checkout goes back, unblamed and unused. */
void cpool__put_back_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    cpool__unassign_locked(c);
    atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
    cpool__set_state_locked(p, c, CONN_AVAILABLE);
}

/* One checkout in progress. Its steps below share it; each says whether it
 * has a connection (STEP_OK), found none (STEP_NONE), must look again
 * (STEP_AGAIN: it closed one, or the pool changed while it waited) or
 * failed (STEP_FAIL: rc and cause say why). */
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
} checkout;

enum { STEP_OK = 0, STEP_NONE, STEP_AGAIN, STEP_FAIL };

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

/* Without waiting: an available connection (or a parked one), else a new
 * one to establish when the limits allow. Strict FIFO: only when nobody is
 * ahead (with tenants: nobody who may take one, and its own tenant may). */
static int take_available_relock(checkout *co)
{
    cpool *p = co->p;
    tenant *tn = co->tn;
    CPOOL_ASSERT_HELD(p);
    if (cpool__next_waiter_locked(p) != NULL ||
        (tn != NULL && !cpool__tenant_allows_locked(p, tn)))
        return STEP_NONE;
    cpool_conn *c = tn != NULL ? cpool__affine_available_locked(p, tn) : p->available.head;
    int reason = -1;
    if (c != NULL) {
        reason = cpool__perished_locked(p, c, perish_now(p));
        if (reason < 0) {
            cpool__set_state_locked(p, c, CONN_IN_USE);
            atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
            assign_locked(p, c, tn);
        }
    } else {
        c = cpool__steal_parked_locked(p, false, &reason);
    }
    if (c != NULL && reason >= 0) {
        cpool__close_conn_relock(p, c, reason, NULL);
        return STEP_AGAIN;
    }
    if (c == NULL && cpool__can_create_locked(p)) {
        if ((c = cpool__conn_new_locked(p)) == NULL)
            return step_fail(co, CPOOL_ENOMEM);
        assign_locked(p, c, tn);
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
    if (breaker_open(p) && !cpool__can_create_locked(p) && p->available.head == NULL &&
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
    if (!co->w_ready) {
        if (sem_init(&w->sem, 0, 0) != 0)
            return step_fail(co, CPOOL_ESYS);
        co->w_ready = true;
    }
    w->conn = NULL;
    w->fail = 0;
    w->establish = false;
    w->queued = true;
    w->tenant = co->tn;
    if (co->tn != NULL)
        co->tn->waiting++;
    atomic_store_explicit(&w->done, 0, memory_order_relaxed);
    w->next = NULL;
    w->prev = p->wq_tail;
    if (p->wq_tail != NULL)
        p->wq_tail->next = w;
    else
        p->wq_head = w;
    p->wq_tail = w;
    atomic_fetch_add(&p->nwaiting, 1);
    int reason = -1;
    cpool_conn *parked = cpool__steal_parked_locked(p, false, &reason);
    if (parked == NULL)
        return STEP_NONE;
    wq_remove_locked(p, w);
    if (reason >= 0) {
        cpool__close_conn_relock(p, parked, reason, NULL);
        return STEP_AGAIN;
    }
    co->c = parked;
    co->handed = true; /* just checked in: as good as handed over */
    return STEP_OK;
}

/* Waits, without mu, until the queued checkout is served or its deadline
 * passes. Called with mu; returns without it. When a backoff step ends
 * first, the queue may create again: it asks for capacity itself (the
 * maintenance thread does the same; this covers pools without one). */
static bool wait_unlock(checkout *co)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    clock_start(&co->t);
    int64_t wake = backoff_wake_locked(p, co->t.wait_deadline);
    cpool__unlock(p);
    bool served = wait_served(p, w, wake) && waiter_done(w);
    while (!served && wake < co->t.wait_deadline) {
        cpool__lock(p);
        if (w->queued)
            cpool__grant_capacity_relock(p);
        wake = backoff_wake_locked(p, co->t.wait_deadline);
        cpool__unlock(p);
        served = wait_served(p, w, wake) && waiter_done(w);
    }
    return served;
}

/* The wait ended (mu taken again): what it was served with, or why not. */
static int after_wait_locked(checkout *co, bool served)
{
    cpool *p = co->p;
    waiter *w = &co->w;
    tenant *tn = co->tn;
    CPOOL_ASSERT_HELD(p);
    if (!served && w->queued) { /* timed out */
        wq_remove_locked(p, w);
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
    if (!served) {
        /* Served while the deadline passed: the post was made under mu, so
         * it is there to take. */
        while (sem_trywait(&w->sem) != 0)
            ;
    }
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
    if (rc == ESTABLISH_RETRY)
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
static int prepare_step_relock(checkout *co)
{
    cpool *p = co->p;
    CPOOL_ASSERT_HELD(p);
    if (co->establish)
        return establish_step_relock(co);
    if (!co->handed && p->opts.validation != CPOOL_VALIDATE_NONE) {
        int step = validate_step_relock(co);
        if (step != STEP_OK)
            return step;
    }
    if (co->tn == NULL)
        return STEP_OK;
    int rc = cpool__tenant_switch_relock(p, co->c, co->tn, conn_deadline(&co->t), &co->ce);
    if (rc == SWITCH_CLOSED)
        return STEP_AGAIN;
    return rc != 0 ? step_fail(co, rc) : STEP_OK;
}

/* The lease begins: counted, announced, mu released. */
static int checkout_done_unlock(checkout *co, const char *label, cpool_conn **out)
{
    cpool *p = co->p;
    cpool_conn *c = co->c;
    if (co->w_ready)
        sem_destroy(&co->w.sem);
    lease_begin(p, c, co->t.start, !co->fresh, label);
    if (c->tenant != NULL) {
        c->tenant->checkouts_ok++;
        c->last_tenant = c->tenant;
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
    *out = c;
    return 0;
}

/* The checkout failed: counted, announced, mu released. */
static int checkout_fail_unlock(checkout *co, cpool_error *err)
{
    if (co->w_ready)
        sem_destroy(&co->w.sem);
    int rc = co->rc;
    int why = rc == CPOOL_ECLOSED || rc == CPOOL_ESHUTDOWN   ? CPOOL_CHECKOUT_POOL_CLOSED
              : rc == CPOOL_ETIMEDOUT || rc == CPOOL_ETENANT ? CPOOL_CHECKOUT_TIMEOUT
                                                             : CPOOL_CHECKOUT_CONN_ERROR;
    return fail_checkout(co->p, rc, why, &co->t, co->cause, err);
}

/* A checkout, step by step: this thread's parked connection without the
 * lock; else under the lock an available one or a new one; else a place in
 * the queue until a check-in or new capacity serves it; then establish or
 * validate it (and reset it between tenants) outside the lock. */
static int checkout_impl(cpool *p, int64_t timeout_ms, const char *label,
                         const char *tenant_name, cpool_conn **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (p == NULL || out == NULL)
        return cpool__err(err, CPOOL_EINVAL, "checkout: pool and out are required");
    if (p->observed && cpool__in_callback(p))
        return cpool__callback_err(p, err, "checkout");
    int64_t fast_start = -1;
    if (p->can_park) {
        cpool_conn *fast = take_parked_fast(p, timeout_ms, &fast_start);
        if (fast != NULL) {
            lease_begin(p, fast, FAST_LEASE, true, NULL);
            *out = fast;
            return 0;
        }
    }
    /* The clock is read only when something needs it: an event, a deadline.
     * The uncontended path (an available connection, no subscriber) does
     * without. One deadline for the whole checkout: when the lock-free path
     * already spent time on a ping, its start is the checkout's. */
    checkout co = {.p = p, .t = {.p = p, .timeout_ms = timeout_ms, .start = -1}};
    co.capacity_refused.code = 0;
    if (fast_start >= 0)
        clock_start_at(&co.t, fast_start);
    else if (p->observed)
        clock_start(&co.t);
    int rc = checkout_start(&co, tenant_name, err);
    if (rc != 0)
        return rc;
    for (;;) {
        co.c = NULL;
        co.establish = co.handed = false;
        int step = ready_step_locked(&co);
        if (step == STEP_OK)
            step = take_available_relock(&co);
        if (step == STEP_NONE)
            step = fail_fast_step_locked(&co);
        if (step == STEP_NONE && (step = queue_relock(&co)) == STEP_NONE) {
            bool served = wait_unlock(&co);
            const waiter *w = &co.w;
            if (served && !w->establish && w->fail == 0 && !p->observed && co.tn == NULL) {
                /* Handed a connection that was just checked in (and
                 * reset): return without touching the pool lock at all. */
                sem_destroy(&co.w.sem);
                lease_begin(p, w->conn, co.t.start, true, NULL);
                *out = w->conn;
                return 0;
            }
            cpool__lock(p);
            step = after_wait_locked(&co, served);
        }
        if (step == STEP_OK)
            step = prepare_step_relock(&co);
        if (step == STEP_OK)
            return checkout_done_unlock(&co, label, out);
        if (step == STEP_FAIL)
            return checkout_fail_unlock(&co, err);
        /* STEP_AGAIN: the pool changed; look again. */
    }
}

/* ------------------------------------------------------------------ checkin */

/* A reclaimed lease came back (or the pool is destroyed): its slot was
 * already given back, so it is only closed and freed. While the reclaim's
 * interrupt() still runs, the last unpin does it. */
void cpool__close_reclaimed_relock(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    list_remove(&p->orphans, c);
    c->state = CONN_FREE;
    c->reclaimed = false;
    cpool__cell_fold(&p->retired, &c->cell);
    if (c->pins > 0) {
        c->close_deferred = true;
        return;
    }
    void *native = c->native;
    cpool__unlock(p);
    if (native != NULL)
        p->cx->close(p->cx_ctx, native);
    cpool__lock(p);
    cpool__conn_free_locked(p, c);
}

/* A lease taken before fork() and returned in the child: the parent owns the
 * server session, so the handle is dropped without any I/O. */
static int checkin_orphan(cpool *p, cpool_conn *c)
{
    cpool__lock(p);
    if (c->reclaimed)
        cpool__close_reclaimed_relock(p, c);
    else
        cpool__abandon_locked(p, c);
    cpool__unlock(p);
    return 0;
}

int cpool_checkin(cpool *p, cpool_conn *c, unsigned flags, cpool_error *err)
{
    if (p == NULL || c == NULL)
        return cpool__err(err, CPOOL_EINVAL, "checkin: pool and connection are required");
    if (c->magic != CONN_MAGIC || c->pool != p)
        return cpool__err(err, CPOOL_EFOREIGN,
                          "checkin to %s: the connection belongs to another pool",
                          p->address);
    if (p->observed && cpool__in_callback(p))
        return cpool__callback_err(p, err, "checkin");
    if ((flags & ~CPOOL_CHECKIN_BROKEN) != 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "checkin to %s: unknown flags 0x%x (allowed CPOOL_CHECKIN_BROKEN); "
                          "the lease is still yours",
                          p->address, flags & ~CPOOL_CHECKIN_BROKEN);

    if (fork_pending(p)) {
        cpool__lock(p);
        cpool__check_fork_relock(p);
        cpool__unlock(p);
    }
    /* The lease flag refuses a second check-in of the same lease without the
     * lock. The memory stays valid: closed connections go to the free list,
     * not back to malloc, while the pool lives. */
    unsigned seen = LEASE_HELD;
    if (!atomic_compare_exchange_strong_explicit(&c->leased, &seen, LEASE_NONE,
                                                 memory_order_acq_rel,
                                                 memory_order_relaxed)) {
        if (seen == LEASE_ORPHAN &&
            atomic_compare_exchange_strong_explicit(&c->leased, &seen, LEASE_NONE,
                                                    memory_order_acq_rel,
                                                    memory_order_relaxed))
            return checkin_orphan(p, c);
        return cpool__err(err, CPOOL_EDOUBLE,
                          "checkin to %s: connection %llu is not checked out",
                          p->address, (unsigned long long)c->id);
    }
    /* Still ours until it is made available or parked below. */
    int64_t since = atomic_load_explicit(&c->leased_ns, memory_order_relaxed);
    if (since != 0) /* 0: an untimed lock-free lease */
        cpool__hist_add(&c->cell.hold, cpool__now(p) - since);

    bool broken = (flags & CPOOL_CHECKIN_BROKEN) != 0;
    if (p->observed) {
        cpool__lock(p);
        cpool__check_fork_relock(p);
        broken = broken || c->interrupt_requested;
        atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed); /* no longer a lease */
        cpool__unassign_locked(c);
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CHECKED_IN);
        ev.connection_id = c->id;
        cpool__emit_unlock(p, &ev);
    }
    cpool_error ce;
    ce.code = 0; /* a failing reset fills the rest; zeroing all of it costs
                    more than the rest of an unobserved check-in */
    if (!broken && p->cx->reset != NULL && p->cx->reset(p->cx_ctx, c->native, &ce) != 0)
        broken = true;
    if (p->can_park && !broken && try_park(p, c))
        return 0;

    cpool__lock(p);
    int reason = cpool__unfit_reason_locked(p, c, broken);
    if (reason >= 0)
        cpool__close_conn_relock(p, c, reason, ce.code != 0 ? &ce : NULL);
    else
        cpool__make_available_locked(p, c);
    cpool__unlock(p);
    return 0;
}

