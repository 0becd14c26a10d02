/* conn.c -- the connection layer: the per-state lists (the list is the
 * state), counts and their invariants, services (load-balanced mode),
 * perish checks, creating, interrupting, closing and freeing connections,
 * and the wait queue with the capacity rules (tenant limits included) that
 * decide who gets the next one. Policies above call it; everything here
 * needs mu.
 *
 * What must stay true (asserted by check_counts_locked in debug builds):
 *   total = pending + available + in use, total <= maxPoolSize (when > 0),
 *   pending <= maxConnecting, and a waiter is queued only while the pool is
 *   ready and nothing it could take is available. */
#include "core.h"

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
    if (p->opts.max_pool_size > 0 && !atomic_load_explicit(&p->shrinking, memory_order_relaxed))
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
int cpool__svc_attach_locked(cpool *p, cpool_conn *c, const char *id)
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

bool cpool__is_stale_locked(const cpool *p, const cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    if (c->svc != NULL)
        return c->generation != c->svc->generation;
    return c->generation != p->generation;
}

/* Returns the close reason of a perished available connection, or -1. */
int cpool__perished_locked(const cpool *p, const cpool_conn *c, int64_t now)
{
    CPOOL_ASSERT_HELD(p);
    if (cpool__is_stale_locked(p, c))
        return CPOOL_CLOSE_STALE;
    if (atomic_load_explicit(&c->recycle, memory_order_relaxed))
        return CPOOL_CLOSE_RECYCLED;
    /* Idleness retires only what the pool has beyond minPoolSize: closing
     * one it must keep would only reopen it (an idle pool at its minimum
     * churned through 21 connections in 2 s with maxIdleTimeMS=300). */
    if (p->opts.max_idle_time_ms > 0 && total_locked(p) > p->opts.min_pool_size &&
        now - atomic_load_explicit(&c->available_since_ns, memory_order_relaxed) >
            ms_to_ns(p->opts.max_idle_time_ms))
        return CPOOL_CLOSE_IDLE;
    if (now > c->expires_ns) /* older than its lifetime, as idleness above */
        return CPOOL_CLOSE_LIFETIME;
    return -1;
}

/* The clock reading cpool__perished_locked() needs: 0 when no time limit applies,
 * so the hot path reads no clock for nothing. */
int64_t cpool__perish_now(const cpool *p)
{
    return p->opts.max_idle_time_ms > 0 || p->opts.max_lifetime_ms > 0 ? cpool__now(p) : 0;
}

/* After a resize lowered maxPoolSize: more connections than it allows. */
bool cpool__over_max_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    return atomic_load_explicit(&p->shrinking, memory_order_relaxed) &&
           p->opts.max_pool_size > 0 && total_locked(p) > p->opts.max_pool_size;
}

/* Why a connection coming back from a lease must be closed, or -1 when it
 * may be reused: the pool closed, a clear made it stale, or it is broken
 * (the caller said so, a reset or check failed, or it was interrupted). */
int cpool__unfit_reason_locked(const cpool *p, const cpool_conn *c, bool broken)
{
    CPOOL_ASSERT_HELD(p);
    if (p->state == CPOOL_STATE_CLOSED || p->draining)
        return CPOOL_CLOSE_POOL_CLOSED;
    if (cpool__is_stale_locked(p, c))
        return CPOOL_CLOSE_STALE;
    if (broken || c->interrupt_requested)
        return CPOOL_CLOSE_ERROR;
    if (atomic_load_explicit(&c->recycle, memory_order_relaxed))
        return CPOOL_CLOSE_RECYCLED;
    if (cpool__over_max_locked(p))
        return CPOOL_CLOSE_RESIZED;
    if (p->opts.recycle_after_uses > 0 && cpool__conn_uses(c) >= p->opts.recycle_after_uses)
        return CPOOL_CLOSE_USES;
    if (c->expires_ns != INT64_MAX && cpool__now(p) > c->expires_ns)
        return CPOOL_CLOSE_LIFETIME;
    return -1;
}

/* A uniform number in [0, 1) for the jitters (xorshift64*: the pool needs
 * spread, not secrecy). */
double cpool__random_unit_locked(cpool *p)
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
    double u = cpool__random_unit_locked(p);
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

/* Creates a pending connection: no I/O (CMAP), counts toward total and
 * pending. The caller emits ConnectionCreated. */
cpool_conn *cpool__conn_new_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c = p->free_list.head;
    if (c != NULL) {
        list_remove(&p->free_list, c);
    } else {
        c = aligned_alloc(CPOOL_CACHE_LINE, sizeof *c);
        if (c == NULL)
            return NULL;
        memset(c, 0, sizeof *c);
        c->magic = CONN_MAGIC;
        c->pool = p;
    }
    c->id = ++p->next_id;
    c->generation = p->generation;
    c->svc = NULL;
    c->native = NULL;
    c->pins = 0;
    c->interrupt_requested = c->interrupted = c->close_deferred = false;
    atomic_store_explicit(&c->recycle, false, memory_order_relaxed);
    c->created_ns = cpool__now(p);
    c->kept_alive_ns = c->created_ns;
    c->expires_ns = expiry_locked(p, c->created_ns);
    /* A reused struct must not carry its last lease's times into the
     * window before this one's lease_begin (a leak scan would see them). */
    atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed);
    c->leak_lease = 0;
    c->hold_lease = 0;
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
    if (atomic_load_explicit(&p->shrinking, memory_order_relaxed) &&
        (p->opts.max_pool_size == 0 || total_locked(p) <= p->opts.max_pool_size)) {
        atomic_store(&p->shrinking, false); /* down to the new maximum */
        cpool__gate_locked(p);
    }
    if (p->draining)
        pthread_cond_broadcast(&p->drain_cv);
    cpool__svc_release_locked(p, c);
    void *native = c->native;
    bool pinned = c->pins > 0;
    c->closed_reason = reason;
    if (pinned)
        c->close_deferred = true;

    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_CLOSED);
    ev.connection_id = c->id;
    ev.reason = reason;
    ev.error = reason == CPOOL_CLOSE_ERROR || reason == CPOOL_CLOSE_HOOK ? cause : NULL;
    uint64_t id = c->id;
    cpool__emit_unlock(p, &ev);
    if (!pinned && native != NULL)
        cpool__close_native(p, native, id, reason);
    cpool__lock(p);
    if (!pinned)
        cpool__conn_free_locked(p, c);
    cpool__grant_capacity_relock(p);
}

void cpool__close_native(cpool *p, void *native, uint64_t id, int reason)
{
    if (p->opts.hooks.before_close != NULL)
        p->opts.hooks.before_close(native, id, reason, p->opts.hooks.ctx);
    p->cx->close(p->cx_ctx, native);
}

static void wake_for_free_locked(cpool *p);
static void offer_available_locked(cpool *p);

void cpool__wq_remove_locked(cpool *p, waiter *w)
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
    if (p->wq_picked == w)
        p->wq_picked = NULL;
    /* It was woken for a connection left free and leaves without it: the
     * next waiter comes for it instead. */
    if (atomic_load_explicit(&w->retry, memory_order_relaxed) && p->available.head != NULL)
        wake_for_free_locked(p);
    if (w->tenant != NULL)
        w->tenant->waiting--;
    atomic_fetch_sub(&p->nwaiting, 1);
}

/* Queues a post counted already, to be made once mu is released
 * (cpool__unlock); with the queue full, makes it now. */
static void post_counted_locked(cpool *p, waiter *w)
{
    if (p->npost < CPOOL_POST_DEFER)
        p->post_q[p->npost++] = w;
    else
        sem_post(&w->sem);
}

/* Posts w's semaphore once mu is released. Counted first, under mu, so
 * that w takes it before its semaphore goes (waiter.posts). */
static void post_locked(cpool *p, waiter *w)
{
    CPOOL_ASSERT_HELD(p);
    w->posts++;
    post_counted_locked(p, w);
}

/* Tests only (test_handoff): called before each post held back. */
_Atomic(cpool__hook_fn) cpool__post_pause;

static void post_all(waiter *const *q, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        cpool__hook_fn pause = atomic_load_explicit(&cpool__post_pause, memory_order_relaxed);
        if (pause != NULL)
            pause();
        sem_post(&q[i]->sem);
    }
}

void cpool__unlock_posting(cpool *p)
{
    waiter *q[CPOOL_POST_DEFER];
    unsigned n = p->npost;
    memcpy(q, p->post_q, n * sizeof q[0]);
    p->npost = 0;
    pthread_mutex_unlock(&p->mu);
    post_all(q, n);
}

void cpool__post_now_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    post_all(p->post_q, p->npost);
    p->npost = 0;
}

/* Wakes w once its conn or fail field is set (under mu). The flag carries
 * the fields to the waiter, which may read them without mu; the semaphore
 * only wakes it, once mu is released. */
void cpool__serve_waiter(cpool *p, waiter *w)
{
    CPOOL_ASSERT_HELD(p);
    if (w->async) {
        atomic_store_explicit(&w->done, 1, memory_order_release);
        if (!atomic_exchange(&w->alink->claimed, true)) /* a cancel may have been first */
            cpool__async_push(w->alink, ASYNC_SERVED); /* the loop finishes it */
        return;
    }
    w->posts++; /* before `done`: a served waiter reads it without mu */
    atomic_store_explicit(&w->done, 1, memory_order_release);
    post_counted_locked(p, w);
}

void cpool__cleared_error(const cpool *p, cpool_error *e)
{
    if (p->has_clear_cause)
        cpool__err(e, CPOOL_ECLEARED,
                   "Connection pool for %s was cleared because another operation "
                   "failed with: %s",
                   p->address, p->clear_cause.message);
    else if (p->generation > 0)
        cpool__err(e, CPOOL_ECLEARED,
                   "Connection pool for %s was cleared because another operation "
                   "failed with: (no cause given to cpool_clear)",
                   p->address);
    else
        cpool__err(e, CPOOL_ECLEARED,
                   "Connection pool for %s is paused: cpool_ready() was not called",
                   p->address);
    if (e != NULL)
        e->labels = CPOOL_LABEL_RETRYABLE;
}

/* Marks the connections a clear with interruptInUseConnections must reach.
 * Pending ones are cancelled at once through their eventfd (a write, never
 * blocks); in-use ones are interrupted by cpool__interrupt_marked_relock(). */
void cpool__mark_interrupts_locked(cpool *p, const service *svc, uint64_t upto_gen)
{
    CPOOL_ASSERT_HELD(p);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        if (svc == NULL && c->generation <= upto_gen)
            cpool__cancel_pending(c);
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        if (c->svc == svc || svc == NULL)
            if (c->generation <= upto_gen)
                c->interrupt_requested = true;
}

/* Calls the connector's interrupt on every marked in-use connection, one at
 * a time outside mu. The connection is pinned meanwhile so that a concurrent
 * check-in cannot free it under the connector. May release mu. */
void cpool__interrupt_marked_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    for (;;) {
        cpool_conn *c = p->in_use.head;
        while (c != NULL && !(c->interrupt_requested && !c->interrupted))
            c = c->next;
        if (c == NULL)
            return;
        c->interrupted = true;
        c->pins++;
        void *native = c->native;
        cpool__unlock(p);
        if (p->cx->interrupt != NULL && native != NULL)
            p->cx->interrupt(p->cx_ctx, native);
        cpool__lock(p);
        if (--c->pins == 0 && c->close_deferred) {
            cpool__unlock(p);
            if (native != NULL)
                cpool__close_native(p, native, c->id, c->closed_reason);
            cpool__lock(p);
            cpool__conn_free_locked(p, c);
        }
    }
}

void cpool__pool_state_locked(cpool *p, cpool_state s)
{
    CPOOL_ASSERT_HELD(p);
    p->state = s;
    cpool__gate_locked(p);
}

void cpool__gate_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    uint64_t g = gate_open(p->generation);
    if (p->state != CPOOL_STATE_READY || atomic_load(&p->suspended) ||
        atomic_load(&p->shrinking))
        g |= GATE_SHUT;
    atomic_store(&p->gate, g);
}

void cpool__set_parking(cpool *p, bool can_park)
{
    p->can_park = can_park;
    /* Nothing to run between the lease and its park: no reset, no hook, no
     * idle stamp (see cpool_checkin). */
    p->park_direct = can_park && p->cx->reset == NULL && p->opts.hooks.after_return == NULL &&
                     !p->stamp_idle;
    p->take_direct = p->opts.validation == CPOOL_VALIDATE_NONE &&
                     p->opts.hooks.before_lease == NULL;
    /* Turns need the fast path (a turn is a lock-free re-take) and the
     * background thread, which hands a connection whose thread did not come
     * back for it to the waiters (maint.c). */
    p->turns = can_park && p->opts.handoff == CPOOL_HANDOFF_TURNS &&
               p->opts.maintenance_interval_ms > 0;
    p->turn_ns = (int64_t)p->opts.turn_us * 1000;
    p->turn_prompt_ns = p->turn_ns < TURN_PROMPT_NS ? p->turn_ns : TURN_PROMPT_NS;
    p->turn_uses = p->opts.turn_uses;
    p->turn_wait_ns = (int64_t)p->opts.turn_wait_us * 1000;
    atomic_store_explicit(&p->turn_eff_ns, p->turn_ns, memory_order_relaxed);
}

/* Turns: every handoff to a waiter tells how long it waited. While waits
 * exceed turn_wait_us, each such handoff halves the turns' length; while
 * they stay under half of it, each lengthens them by a sixty-fourth and a
 * microsecond, up to turn_us. Every thread's turn has the same length at any
 * moment (fairness), and waits stay near turn_wait_us. With long leases the
 * turns shrink to nothing: FIFO, which is what long leases want anyway.
 *
 * The growth is slow on purpose: a handoff reports a wait that began about
 * a rotation of the queue ago, so turns lengthened quickly overshoot before
 * the longer waits they cause are reported (with 64 threads on 4
 * connections and a 20 us spin, growing by an eighth cost about a tenth of
 * the throughput and doubled p99.9 once turn_us allowed 1 ms). */
void cpool__adapt_turn_locked(cpool *p, int64_t waited)
{
    CPOOL_ASSERT_HELD(p);
    int64_t was = atomic_load_explicit(&p->turn_eff_ns, memory_order_relaxed);
    int64_t t = was;
    if (waited > p->turn_wait_ns)
        t /= 2;
    else if (waited < p->turn_wait_ns / 2)
        t += t / 64 + 1000;
    if (t > p->turn_ns)
        t = p->turn_ns;
    atomic_store_explicit(&p->turn_eff_ns, t, memory_order_relaxed);
    if (was < TURN_FLOOR_NS && t >= TURN_FLOOR_NS)
        cpool__watch_turns_locked(p); /* turns again, for waiters already queued */
}

/* Whether the turn c is parked for (leased TURN, read) is still on: its
 * thread may come back for it for as long as a turn lasts now. */
static bool in_turn(const cpool *p, const cpool_conn *c, int64_t now)
{
    int64_t since = atomic_load_explicit(&c->turn_parked_ns, memory_order_relaxed);
    return now - since < atomic_load_explicit(&p->turn_eff_ns, memory_order_relaxed);
}

/* Takes a parked connection (any thread's) under mu; it is HELD by the
 * caller afterwards. */
cpool_conn *cpool__steal_parked_locked(cpool *p, steal_which which, int *reason)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->can_park)
        return NULL;
    int64_t now = cpool__perish_now(p);
    int64_t turn_now = which == STEAL_OUT_OF_TURN && p->turns ? cpool__now(p) : 0;
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next) {
        unsigned parked = atomic_load(&c->leased);
        if (!lease_parked(parked))
            continue;
        int why = cpool__perished_locked(p, c, now);
        if (which == STEAL_PERISHED && why < 0)
            continue;
        if (turn_now != 0 && why < 0 && parked == LEASE_TURN && in_turn(p, c, turn_now))
            continue;
        /* From the flag as read: a connection parked again since, for a
         * turn where it was not, or the other way round, stays. */
        if (!atomic_compare_exchange_strong(&c->leased, &parked, LEASE_HELD))
            continue;
        if (reason != NULL)
            *reason = why;
        return c;
    }
    return NULL;
}

void cpool__parked_unfit(cpool *p, cpool_conn *c, bool idle, bool hook_failed,
                         const cpool_error *cause)
{
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (c->state == CONN_IN_USE) {
        int reason = hook_failed ? CPOOL_CLOSE_HOOK
                                 : cpool__unfit_reason_locked(p, c, cause != NULL);
        if (reason < 0 && idle)
            reason = CPOOL_CLOSE_IDLE;
        if (reason >= 0)
            cpool__close_conn_relock(p, c, reason, cause);
        else
            cpool__return_parked_locked(p, c);
    }
    cpool__unlock(p);
}

/* A parked connection taken under mu (not by its thread) is checked in as
 * its thread's check-in would have done: to the oldest waiter, or onto the
 * available stack. */
void cpool__return_parked_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
    cpool__make_available_locked(p, c);
}

/* A connection taken for a checkout goes back, unblamed and unused. */
void cpool__put_back_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    cpool__unassign_locked(c);
    atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
    cpool__set_state_locked(p, c, CONN_AVAILABLE);
}

/* ------------------------------------------------- wait queue and capacity
 *
 * Who gets the next connection: the fair wait queue (FIFO, with tenants
 * the oldest whose tenant may take one more), direct handoff of a returned
 * connection to the oldest waiter, and granting capacity for new
 * connections within maxPoolSize, maxConnecting and the backoff. */

/* The waiter to serve next: the oldest, or with tenants the oldest whose
 * tenant may take one more. */
waiter *cpool__next_waiter_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (atomic_load_explicit(&p->suspended, memory_order_relaxed))
        return NULL; /* suspended: waiters wait for cpool_resume() */
    if (!p->tenants)
        return p->wq_head;
    for (waiter *w = p->wq_head; w != NULL; w = w->next)
        if (cpool__tenant_allows_locked(p, w->tenant))
            return w;
    return NULL;
}

void cpool__assign_locked(cpool *p, cpool_conn *c, tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants || t == NULL)
        return;
    c->tenant = t;
    t->in_use++;
}

/* Turns: the waiter to serve instead of the head `n` at a handoff made on
 * this thread's CPU. The kernel wakes a thread where it last ran, and on a
 * virtual machine a wake-up that crosses CPUs costs some 20 times one that
 * does not (docs/benchmarks.md, "What a wake-up costs here"). So while the
 * queue is deep (NUDGE_PASS_MIN_TURNS), one of the first NUDGE_WINDOW
 * waiters that queued on this CPU may pass those ahead of it, each of whom
 * is passed so at most NUDGE_PASS_LIMIT times. Otherwise the head. */
static waiter *pick_near_locked(const cpool *p, waiter *n)
{
    CPOOL_ASSERT_HELD(p);
    if (n == NULL || n->async ||
        atomic_load_explicit(&p->nwaiting, memory_order_relaxed) <
            (uint32_t)NUDGE_PASS_MIN_TURNS * p->opts.max_pool_size)
        return n;
    int me = sched_getcpu();
    int k = 0;
    for (waiter *x = n; me >= 0 && x != NULL && k < NUDGE_WINDOW && !x->async;
         x = x->next, k++) {
        if (x->cpu == me)
            return x;
        if (x->passed >= NUDGE_PASS_LIMIT)
            break; /* nobody may pass it again */
    }
    return n;
}

/* Turns with wake_early (option early_wake: on, or auto while other
 * processes leave the CPUs to this one, maint.c): after a handoff, wakes
 * the waiter the next handoff will serve, picked as above on this CPU, so
 * that it spins on a CPU instead of sleeping (wait_unlock in checkout.c).
 * When the next handoff comes, it is running and the check-in does not pay
 * for a wake-up. It is served then (picked_locked), whether it still spins
 * or has gone back to sleep. Only while turns are given: with leases long
 * enough to shrink them to nothing, the next handoff is far off and
 * spinning for it would waste a CPU. The post is a stale wake-up for a
 * waiter that is not spinning. */
static void nudge_next_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->wake_early || p->wq_picked != NULL || !cpool__turns_given(p))
        return;
    waiter *n = pick_near_locked(p, cpool__next_waiter_locked(p));
    if (n == NULL || n->async)
        return;
    p->wq_picked = n;
    p->st_early_wakeups++;
    atomic_store(&n->nudged, 1);
    post_locked(p, n);
}

/* Turns: the waiter to serve instead of the head `w`, NULL to serve the
 * head. With early wake-ups, the one woken early; without, the one picked
 * now, on the CPU of the thread that hands over, so that the wake-up stays
 * on it. Each waiter ahead of it is counted as passed. */
static waiter *picked_locked(cpool *p, waiter *w)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->turns) /* turns ended since: FIFO */
        return NULL;
    waiter *n = p->wq_picked;
    if (n == NULL && !p->wake_early && cpool__turns_given(p))
        n = pick_near_locked(p, w);
    if (n == NULL || n == w)
        return NULL;
    for (waiter *y = w; y != n; y = y->next)
        y->passed++;
    return n;
}

/* Direct handoff of c to w, the next waiter (or the one picked ahead of it). */
static void hand_over_locked(cpool *p, cpool_conn *c, waiter *w)
{
    CPOOL_ASSERT_HELD(p);
    /* The turns adapt to the oldest wait, the head's, even when a waiter
     * behind it is served first. */
    if (p->turns)
        cpool__adapt_turn_locked(p, cpool__now(p) - w->since);
    waiter *ahead = picked_locked(p, w);
    if (ahead != NULL)
        w = ahead;
    cpool__wq_remove_locked(p, w);
    cpool__assign_locked(p, c, w->tenant);
    w->conn = c;
    w->establish = false;
    cpool__set_state_locked(p, c, CONN_IN_USE);
    atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
    cpool__serve_waiter(p, w);
    nudge_next_locked(p);
}

/* Whether a connection may be left free beside the queue whose oldest
 * waiter is `head` (see cpool__make_available_locked). */
bool cpool__barge_window_locked(const cpool *p, const waiter *head)
{
    CPOOL_ASSERT_HELD(p);
    return p->turns && head->from_away && !head->async &&
           cpool__now(p) - head->since < p->turn_wait_ns;
}

/* A connection left free beside queued checkouts: wakes the oldest waiter
 * not woken for one yet, to come and take it (it may find it gone). */
static void wake_for_free_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    for (waiter *x = p->wq_head; x != NULL; x = x->next) {
        if (x->async || atomic_load_explicit(&x->retry, memory_order_relaxed))
            continue;
        atomic_store(&x->retry, 1);
        post_locked(p, x);
        return;
    }
}

/* A checked-in or freshly established connection: straight to the oldest
 * waiter if there is one (direct handoff: no newcomer can barge in between),
 * otherwise onto the available stack.
 *
 * One exception, with turns: while the oldest waiter is a thread that came
 * back late to its turns (from_away) and has waited less than turn_wait_us,
 * the connection stays available and a waiter is woken to come for it;
 * threads that came back late may take it first (take_available_relock in
 * checkout.c). Such threads, handed every connection in FIFO order, keep
 * the pool in a convoy: each handoff idles the connection until its waiter
 * gets a CPU. Only a young head is passed, and everyone behind it is
 * younger, so a checkout that has waited turn_wait_us is passed no more. */
void cpool__make_available_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    waiter *w = cpool__next_waiter_locked(p);
    bool keep = false;
    if (w != NULL && p->state == CPOOL_STATE_READY) {
        if (!cpool__barge_window_locked(p, w)) {
            hand_over_locked(p, c, w);
            /* Any left free while the head was young goes to the queue
             * too: its waiter woken for it may be slow to come. */
            offer_available_locked(p);
            return;
        }
        keep = true;
    }
    /* The idle clock matters only with maxIdleTimeMS or ping-when-idle;
     * skip the clock read on the hot path otherwise. */
    if (p->stamp_idle)
        atomic_store_explicit(&c->available_since_ns, cpool__now(p),
                              memory_order_relaxed);
    cpool__set_state_locked(p, c, CONN_AVAILABLE);
    if (keep)
        wake_for_free_locked(p);
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
 * already available, and a resume finds checkouts queued beside available
 * connections: offer them, so no waiter stays queued beside one. */
static void offer_available_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (p->available.head == NULL || p->wq_head == NULL)
        return;
    waiter *w;
    while (p->available.head != NULL && p->state == CPOOL_STATE_READY &&
           (w = cpool__next_waiter_locked(p)) != NULL)
        hand_over_locked(p, p->available.head, w);
}

void cpool__grant_capacity_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    offer_available_locked(p);
    waiter *w;
    while ((w = cpool__next_waiter_locked(p)) != NULL && p->state == CPOOL_STATE_READY &&
           cpool__can_create_locked(p)) {
        cpool__wq_remove_locked(p, w);
        cpool_conn *c = cpool__conn_new_locked(p);
        if (c == NULL) {
            w->fail = CPOOL_ENOMEM;
            cpool__serve_waiter(p, w);
            continue;
        }
        cpool__assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = true;
        cpool__serve_waiter(p, w);
        cpool__emit_created_relock(p, c);
    }
}

void cpool__fail_waiters_locked(cpool *p, int code)
{
    CPOOL_ASSERT_HELD(p);
    while (p->wq_head != NULL) {
        waiter *w = p->wq_head;
        cpool__wq_remove_locked(p, w);
        w->fail = code;
        cpool__serve_waiter(p, w);
    }
}

void cpool__kick_maintenance_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->maint_kick = true;
    pthread_cond_signal(&p->maint_cv);
}

/* A checkout establishes the connection it waits for itself, within its
 * own deadline. Against a server slower to start a session than callers
 * wait, every such attempt is cut short, and the pool would never reach
 * it; after a probe found the server back, the waiters' attempts would run
 * on what is left of their deadlines. So the background thread then makes one
 * establishment of its own, bound by connect_timeout_ms alone, whose
 * connection goes to the oldest waiter or the next checkout (HikariCP and
 * pgxpool likewise finish an establishment whose caller gave up). Without
 * a background thread, cpool_maintain() makes it. */
void cpool__want_pool_establishment_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->pool_establish = true;
    cpool__kick_maintenance_locked(p);
}

/* Untaken guaranteed minimums of the tenants other than t. */
static uint32_t reserved_for_others_locked(const cpool *p, const tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    uint32_t r = 0;
    for (const tenant *u = p->tenant_list; u != NULL; u = u->next)
        if (u != t && u->in_use < u->min)
            r += u->min - u->in_use;
    return r;
}

/* May a checkout of tenant t take one more connection? Its own cap, and
 * the others' untaken minimums, which nobody else may use. */
bool cpool__tenant_allows_locked(const cpool *p, const tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants)
        return true;
    if (t->max > 0 && t->in_use >= t->max)
        return false;
    if (t->in_use < t->min || p->opts.max_pool_size == 0)
        return true;
    uint32_t assigned = 0;
    for (const tenant *u = p->tenant_list; u != NULL; u = u->next)
        assigned += u->in_use;
    return assigned + reserved_for_others_locked(p, t) < p->opts.max_pool_size;
}

/* Bumps the generation and pauses. A paused pool emits nothing but still
 * bumps (CMAP: the generation must move on every clear). May release mu. */
void cpool__clear_relock(cpool *p, unsigned flags, const cpool_error *cause)
{
    CPOOL_ASSERT_HELD(p);
    uint64_t old = p->generation++;
    bool was_paused = p->state == CPOOL_STATE_PAUSED;
    cpool__pool_state_locked(p, CPOOL_STATE_PAUSED);
    if (cause != NULL) {
        p->clear_cause = *cause;
        p->has_clear_cause = true;
    }
    cpool__fail_waiters_locked(p, CPOOL_ECLEARED);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        cpool__mark_interrupts_locked(p, NULL, old);
    /* Stale available connections should not wait for the next scheduled
     * run (CMAP: a clear schedules the background thread at once). */
    cpool__kick_maintenance_locked(p);
    if (!was_paused && p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
        ev.interrupt_in_use = (flags & CPOOL_CLEAR_INTERRUPT_IN_USE) != 0;
        cpool__emit_relock(p, &ev);
    }
}
