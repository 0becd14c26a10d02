/* pool.c -- the CMAP pool state machine for one endpoint.
 *
 * What must stay true (asserted by check_counts_locked in debug builds):
 *   total = pending + available + in use, total <= maxPoolSize (when > 0),
 *   pending <= maxConnecting, and a waiter is queued only while the pool is
 *   ready and nothing it could take is available.
 *
 * Locking: see pool_int.h. Connector calls and callbacks never run under mu.
 * Functions named *_locked are called with mu held; those that may release
 * it on the way (to emit an event or call the connector) say so.
 */
#include "pool_int.h"
#include "clock.h"

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

#define NO_DEADLINE INT64_MAX
/* lease_begin()'s `start` on the lock-free path: there is no checkout
 * clock there. */
#define FAST_LEASE INT64_MIN

/* ------------------------------------------------------------------ fork */

/* The library's only process-wide state, for fork(): a registry of live
 * pools, and an epoch counter bumped in every child. Before fork() the
 * prepare handler takes every pool's locks, so the child never inherits a
 * lock held by a thread that does not exist there; both sides release them
 * afterwards. A pool then compares the epoch with the one it saw last to
 * notice, at its next call, that it runs in a child. Lock order: the
 * registry mutex, then each pool's mu, then its ev_mu. */
static atomic_uint g_fork_epoch;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static cpool *g_registry;

static void on_fork_prepare(void)
{
    pthread_mutex_lock(&g_registry_mu);
    for (cpool *p = g_registry; p != NULL; p = p->reg_next) {
        cpool__lock(p);
        pthread_mutex_lock(&p->ev_mu);
    }
}

static void release_all_after_fork(void)
{
    for (cpool *p = g_registry; p != NULL; p = p->reg_next) {
        pthread_mutex_unlock(&p->ev_mu);
        cpool__unlock(p);
    }
    pthread_mutex_unlock(&g_registry_mu);
}

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&g_fork_epoch, 1, memory_order_relaxed);
    release_all_after_fork();
}

static void register_atfork(void)
{
    pthread_atfork(on_fork_prepare, release_all_after_fork, on_fork_child);
}

static void registry_add(cpool *p)
{
    pthread_mutex_lock(&g_registry_mu);
    p->reg_prev = NULL;
    p->reg_next = g_registry;
    if (g_registry != NULL)
        g_registry->reg_prev = p;
    g_registry = p;
    pthread_mutex_unlock(&g_registry_mu);
}

static void registry_remove(cpool *p)
{
    pthread_mutex_lock(&g_registry_mu);
    if (p->reg_prev != NULL)
        p->reg_prev->reg_next = p->reg_next;
    else
        g_registry = p->reg_next;
    if (p->reg_next != NULL)
        p->reg_next->reg_prev = p->reg_prev;
    pthread_mutex_unlock(&g_registry_mu);
}

static void after_fork_relock(cpool *p);

static inline bool fork_pending(const cpool *p)
{
    return atomic_load_explicit(&g_fork_epoch, memory_order_relaxed) !=
           atomic_load_explicit(&p->fork_epoch, memory_order_relaxed);
}

static inline void check_fork_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (fork_pending(p))
        after_fork_relock(p);
}

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

static void list_remove(conn_list *l, cpool_conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

static void list_push_head(conn_list *l, cpool_conn *c)
{
    c->prev = NULL;
    c->next = l->head;
    if (l->head != NULL)
        l->head->prev = c;
    else
        l->tail = c;
    l->head = c;
    l->n++;
}

static inline uint32_t total_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    return p->pending.n + p->available.n + p->in_use.n;
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
static void set_state_locked(cpool *p, cpool_conn *c, conn_state s)
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

/* ------------------------------------------------------------------ time */

static int64_t ms_to_ns(int64_t ms)
{
    if (ms > INT64_MAX / 2000000)
        return NO_DEADLINE / 2;
    return ms * 1000000;
}

static int64_t deadline_after(int64_t now, int64_t ms)
{
    return now + ms_to_ns(ms);
}

/* The connector works in real CLOCK_MONOTONIC time; the pool's clock may be
 * a test clock, so translate the remaining time. */
static int64_t real_deadline(const cpool *p, int64_t deadline)
{
    if (deadline == NO_DEADLINE)
        return 0;
    int64_t left = deadline - cpool__now(p);
    return cpool__mono_ns() + (left > 0 ? left : 1);
}

static struct timespec abs_real(int64_t left_ns)
{
    int64_t t = cpool__mono_ns() + left_ns;
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    return ts;
}

/* ------------------------------------------------------------------ services */

static service *svc_find_locked(cpool *p, const char *id)
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
    service *s = svc_find_locked(p, id);
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
static void svc_release_locked(cpool *p, cpool_conn *c)
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
static int perished_locked(const cpool *p, const cpool_conn *c, int64_t now)
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

/* The clock reading perished_locked() needs: 0 when no time limit applies,
 * so the hot path reads no clock for nothing. */
static int64_t perish_now(const cpool *p)
{
    return p->opts.max_idle_time_ms > 0 || p->opts.max_lifetime_ms > 0 ? cpool__now(p) : 0;
}

/* Why a connection coming back from a lease must be closed, or -1 when it
 * may be reused: the pool closed, a clear made it stale, or it is broken
 * (the caller said so, a reset or check failed, or it was interrupted). */
static int unfit_reason_locked(const cpool *p, const cpool_conn *c, bool broken)
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
static void unassign_locked(cpool_conn *c)
{
    CPOOL_ASSERT_HELD(c->pool);
    if (c->tenant != NULL) {
        c->tenant->in_use--;
        c->tenant = NULL;
    }
}

/* The circuit is open: establishments keep failing (see can_create_locked). */
static bool breaker_open(const cpool *p)
{
    return p->opts.breaker_threshold > 0 && p->fail_streak >= p->opts.breaker_threshold;
}

/* Creates a pending connection: no I/O (CMAP), counts toward total and
 * pending. The caller emits ConnectionCreated. */
static cpool_conn *conn_new_locked(cpool *p)
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

static void cancel_pending(cpool_conn *c)
{
    if (c->cancel_fd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(c->cancel_fd, &one, sizeof one);
        (void)n; /* EAGAIN means it was already signalled */
    }
}

static void conn_free_locked(cpool *p, cpool_conn *c)
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
static void abandon_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    list_remove(list_for(p, c->state), c);
    if (c->native != NULL && p->cx->abandon != NULL)
        p->cx->abandon(p->cx_ctx, c->native);
    c->svc = NULL;
    unassign_locked(c);
    cpool__cell_fold(&p->retired, &c->cell); /* closes fold theirs earlier */
    conn_free_locked(p, c);
}

static void emit_created_relock(cpool *p, const cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->observed)
        return;
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_CONN_CREATED);
    ev.connection_id = c->id;
    cpool__emit_relock(p, &ev);
}

static void grant_capacity_relock(cpool *p);

/* Closes c: it leaves its list at once (so it counts nowhere), then
 * ConnectionClosed is emitted and the connector closes it outside mu. If an
 * interrupt() is in flight on it, the last unpin does the teardown instead.
 * Releases mu on the way; returns with mu held. Frees capacity, so it hands
 * it to the wait queue. */
static void close_conn_relock(cpool *p, cpool_conn *c, int reason,
                              const cpool_error *cause)
{
    CPOOL_ASSERT_HELD(p);
    list_remove(list_for(p, c->state), c);
    c->state = CONN_FREE; /* in no list until conn_free_locked */
    /* Its counts leave the lists now: fold them before mu is released, so a
     * snapshot never sees them vanish (counters must not go backwards). */
    cpool__cell_fold(&p->retired, &c->cell);
    if ((unsigned)reason < CPOOL_CLOSE_REASON_SLOTS)
        p->st_closed[reason]++;
    unassign_locked(c);
    if (p->draining)
        pthread_cond_broadcast(&p->drain_cv);
    svc_release_locked(p, c);
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
        conn_free_locked(p, c);
    grant_capacity_relock(p);
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

/* ------------------------------------------------------------------ tenants */

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
static bool tenant_allows_locked(const cpool *p, const tenant *t)
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

/* The waiter to serve next: the oldest, or with tenants the oldest whose
 * tenant may take one more. */
static waiter *next_waiter_locked(const cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->tenants)
        return p->wq_head;
    for (waiter *w = p->wq_head; w != NULL; w = w->next)
        if (tenant_allows_locked(p, w->tenant))
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

static tenant *find_tenant_locked(const cpool *p, const char *name)
{
    CPOOL_ASSERT_HELD(p);
    for (tenant *t = p->tenant_list; t != NULL; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

/* A checked-in or freshly established connection: straight to the oldest
 * waiter if there is one (direct handoff: no newcomer can barge in between),
 * otherwise onto the available stack. */
static void make_available_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    waiter *w = next_waiter_locked(p);
    if (w != NULL && p->state == CPOOL_STATE_READY) {
        wq_remove_locked(p, w);
        assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = false;
        set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
        serve_waiter(w);
        return;
    }
    /* The idle clock matters only with maxIdleTimeMS or ping-when-idle;
     * skip the clock read on the hot path otherwise. */
    if (p->stamp_idle)
        atomic_store_explicit(&c->available_since_ns, cpool__now(p),
                              memory_order_relaxed);
    set_state_locked(p, c, CONN_AVAILABLE);
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

/* After a capacity refusal the next attempt waits a little: slots free up
 * as other clients leave, but a full server is not sent a handshake per
 * waiting thread per millisecond. */
#define CAPACITY_RETRY_MS 25

static bool can_create_locked(const cpool *p)
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
    for (cpool_conn *c = p->available.head; c != NULL && next_waiter_locked(p) != NULL;) {
        cpool_conn *next = c->next;
        make_available_locked(p, c);
        c = next;
    }
}

static void grant_capacity_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    offer_available_locked(p);
    waiter *w;
    while ((w = next_waiter_locked(p)) != NULL && p->state == CPOOL_STATE_READY &&
           can_create_locked(p)) {
        wq_remove_locked(p, w);
        cpool_conn *c = conn_new_locked(p);
        if (c == NULL) {
            w->fail = CPOOL_ENOMEM;
            serve_waiter(w);
            continue;
        }
        assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = true;
        serve_waiter(w);
        emit_created_relock(p, c);
    }
}

static void fail_waiters_locked(cpool *p, int code)
{
    CPOOL_ASSERT_HELD(p);
    while (p->wq_head != NULL) {
        waiter *w = p->wq_head;
        wq_remove_locked(p, w);
        w->fail = code;
        serve_waiter(w);
    }
}

static void kick_maintenance_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->maint_kick = true;
    pthread_cond_signal(&p->maint_cv);
}

/* ------------------------------------------------------------------ clear */

static void cleared_error(const cpool *p, cpool_error *e)
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
 * blocks); in-use ones are interrupted by interrupt_marked_relock(). */
static void mark_interrupts_locked(cpool *p, const service *svc, uint64_t upto_gen)
{
    CPOOL_ASSERT_HELD(p);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        if (svc == NULL && c->generation <= upto_gen)
            cancel_pending(c);
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        if (c->svc == svc || svc == NULL)
            if (c->generation <= upto_gen)
                c->interrupt_requested = true;
}

/* Calls the connector's interrupt on every marked in-use connection, one at
 * a time outside mu. The connection is pinned meanwhile so that a concurrent
 * check-in cannot free it under the connector. May release mu. */
static void interrupt_marked_relock(cpool *p)
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
                p->cx->close(p->cx_ctx, native);
            cpool__lock(p);
            conn_free_locked(p, c);
        }
    }
}

/* Bumps the generation and pauses. A paused pool emits nothing but still
 * bumps (CMAP: the generation must move on every clear). May release mu. */
static void clear_relock(cpool *p, unsigned flags, const cpool_error *cause)
{
    CPOOL_ASSERT_HELD(p);
    uint64_t old = p->generation++;
    bool was_paused = p->state == CPOOL_STATE_PAUSED;
    p->state = CPOOL_STATE_PAUSED;
    if (cause != NULL) {
        p->clear_cause = *cause;
        p->has_clear_cause = true;
    }
    fail_waiters_locked(p, CPOOL_ECLEARED);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        mark_interrupts_locked(p, NULL, old);
    /* Stale available connections should not wait for the next scheduled
     * run (CMAP: a clear schedules the background thread at once). */
    kick_maintenance_locked(p);
    if (!was_paused && p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
        ev.interrupt_in_use = (flags & CPOOL_CLEAR_INTERRUPT_IN_USE) != 0;
        cpool__emit_relock(p, &ev);
    }
}

/* ------------------------------------------------------------ establishment */

enum { ESTABLISH_RETRY = 1 }; /* internal: the new connection was stale */

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
        kick_maintenance_locked(p);
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
        kick_maintenance_locked(p);
}

static void note_connect_success_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->cap_retry_at = 0;
    if (p->fail_streak == 0)
        return;
    p->fail_streak = 0;
    p->retry_at = 0;
    kick_maintenance_locked(p); /* refill to minPoolSize now */
}

/* Establishes pending connection c outside mu. On success c is in use (for a
 * checkout) or made available (background population) and 0 is returned.
 * On failure c is closed with reason "error" and the error is returned with
 * its labels; with clear_on_connect_error an unlabelled failure first clears
 * the pool, so PoolCleared precedes ConnectionClosed as CMAP's tests expect.
 * ESTABLISH_RETRY: established, but a clear made it stale meanwhile; it was
 * closed. Called with mu held; releases it during the connect. */
static int establish_relock(cpool *p, cpool_conn *c, int64_t deadline,
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
            clear_relock(p, 0, &ce);
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
        close_conn_relock(p, c, CPOOL_CLOSE_ERROR, &ce);
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
        set_state_locked(p, c, CONN_IN_USE); /* owned by us until closed below */
    } else if (for_checkout) {
        set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
    } else {
        make_available_locked(p, c); /* possibly straight to a waiter */
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CONN_READY);
        ev.connection_id = c->id;
        ev.duration_ns = ev.time_ns - c->created_ns;
        cpool__emit_relock(p, &ev);
    }
    if (stale) {
        close_conn_relock(p, c,
                          p->state == CPOOL_STATE_CLOSED || p->draining
                              ? CPOOL_CLOSE_POOL_CLOSED
                              : CPOOL_CLOSE_STALE,
                          NULL);
        return ESTABLISH_RETRY;
    }
    grant_capacity_relock(p); /* a maxConnecting slot is free again */
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
static atomic_uint_fast64_t g_pool_serial;

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
     * pool's size is known (perished_locked). */
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
    check_fork_relock(p);
    if (c->state == CONN_IN_USE) {
        int reason = unfit_reason_locked(p, c, dead);
        close_conn_relock(p, c, reason >= 0 ? reason : CPOOL_CLOSE_IDLE,
                          dead ? &ce : NULL);
    }
    cpool__unlock(p);
    return NULL;
}

/* Takes a parked connection (any thread's) under mu; it is HELD by the
 * caller afterwards. `perished_only` takes only perished ones. */
static cpool_conn *steal_parked_locked(cpool *p, bool perished_only, int *reason)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->can_park)
        return NULL;
    int64_t now = perish_now(p);
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next) {
        if (atomic_load(&c->leased) != LEASE_PARKED)
            continue;
        int why = perished_locked(p, c, now);
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
    case CPOOL_ECLEARED: cleared_error(p, &e); break;
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

static int checkout_impl(cpool *p, int64_t timeout_ms, const char *label,
                         const char *tenant_name, cpool_conn **out, cpool_error *err);

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

/* An available connection for tenant t: preferably one t used last, then
 * one nobody used since it was established, else the newest. Handing a
 * tenant its own connections keeps full session resets (see
 * tenant_switch_relock) to the times the pool must lend one across. */
static cpool_conn *affine_available_locked(const cpool *p, const tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *fresh = NULL;
    for (cpool_conn *c = p->available.head; c != NULL; c = c->next) {
        if (c->last_tenant == t)
            return c;
        if (fresh == NULL && c->last_tenant == NULL)
            fresh = c;
    }
    return fresh != NULL ? fresh : p->available.head;
}

/* A connection taken for a checkout goes back, unblamed and unused. */
static void put_back_locked(cpool *p, cpool_conn *c)
{
    CPOOL_ASSERT_HELD(p);
    unassign_locked(c);
    atomic_store_explicit(&c->leased, LEASE_NONE, memory_order_relaxed);
    set_state_locked(p, c, CONN_AVAILABLE);
}

#define SWITCH_CLOSED 1

/* Tenant t is about to lease c. When another tenant used c last, its session
 * is reset in full first (connector discard, outside mu, within the
 * checkout's deadline), so that nothing one tenant left in it reaches
 * another. Returns 0 to hand c out, SWITCH_CLOSED when c was closed (the
 * checkout goes on with another), CPOOL_ETIMEDOUT when no time is left
 * (c goes back). */
static int tenant_switch_relock(cpool *p, cpool_conn *c, tenant *t, int64_t deadline,
                                cpool_error *ce)
{
    CPOOL_ASSERT_HELD(p);
    if (c->last_tenant == NULL || c->last_tenant == t) {
        if (c->last_tenant == t)
            t->affine++;
        return 0;
    }
    if (p->cx->abi_version < 4 || p->cx->discard == NULL) {
        cpool__err(ce, CPOOL_EIO, "connection %llu to %s: another tenant used it last, and "
                   "the %s connector cannot reset a session", (unsigned long long)c->id,
                   p->address, p->cx->name != NULL ? p->cx->name : "?");
        close_conn_relock(p, c, CPOOL_CLOSE_SESSION, ce);
        return SWITCH_CLOSED;
    }
    if (deadline != NO_DEADLINE && cpool__now(p) >= deadline) {
        put_back_locked(p, c);
        return CPOOL_ETIMEDOUT;
    }
    cpool__unlock(p);
    ce->code = 0;
    ce->message[0] = '\0';
    int bad = p->cx->discard(p->cx_ctx, c->native, real_deadline(p, deadline), ce);
    cpool__lock(p);
    if (bad != 0) {
        if (ce->code == 0)
            cpool__err(ce, CPOOL_EIO, "discard on %s failed", p->address);
        close_conn_relock(p, c, CPOOL_CLOSE_ERROR, ce);
        return SWITCH_CLOSED;
    }
    c->last_tenant = NULL;
    t->switched++;
    return 0;
}

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
    checkout_clock t = {.p = p, .timeout_ms = timeout_ms, .start = -1};
    if (fast_start >= 0)
        clock_start_at(&t, fast_start);
    else if (p->observed)
        clock_start(&t);

    cpool__lock(p);
    check_fork_relock(p);
    tenant *tn = NULL;
    if (p->tenants) {
        /* Checkouts without a tenant share the unnamed one (first in the
         * list), so that every lease is counted against the limits. */
        tn = tenant_name != NULL ? find_tenant_locked(p, tenant_name) : p->tenant_list;
        if (tn == NULL) {
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

    waiter w;
    bool w_ready = false;
    cpool_conn *c;
    /* Failure exits set these and leave through `fail`. */
    int rc = 0, why = CPOOL_CHECKOUT_CONN_ERROR;
    cpool_error ce;
    const cpool_error *cause = NULL;
    cpool_error capacity_refused; /* the server's last "too many clients" */
    capacity_refused.code = 0;
    bool fresh = false;
    for (;;) {
        c = NULL;
        if (p->state != CPOOL_STATE_READY) {
            rc = p->state == CPOOL_STATE_CLOSED ? CPOOL_ECLOSED
                 : p->draining                  ? CPOOL_ESHUTDOWN
                                                : CPOOL_ECLEARED;
            goto fail;
        }

        bool establish = false, handed = false;
        /* Strict FIFO: nobody is ahead of us (with tenants: nobody who may
         * take one, and our own tenant may). */
        if (next_waiter_locked(p) == NULL && (tn == NULL || tenant_allows_locked(p, tn))) {
            c = tn != NULL ? affine_available_locked(p, tn) : p->available.head;
            int reason = -1;
            if (c != NULL) {
                int64_t now = perish_now(p);
                reason = perished_locked(p, c, now);
                if (reason < 0) {
                    set_state_locked(p, c, CONN_IN_USE);
                    atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
                    assign_locked(p, c, tn);
                }
            } else {
                c = steal_parked_locked(p, false, &reason);
            }
            if (c != NULL && reason >= 0) {
                close_conn_relock(p, c, reason, NULL);
                continue;
            }
            if (c == NULL && can_create_locked(p)) {
                c = conn_new_locked(p);
                if (c == NULL) {
                    rc = CPOOL_ENOMEM;
                    goto fail;
                }
                assign_locked(p, c, tn);
                emit_created_relock(p, c);
                establish = true;
            }
        }
        if (c == NULL && breaker_open(p) && !can_create_locked(p) &&
            p->available.head == NULL &&
            (p->opts.max_pool_size == 0 || total_locked(p) < p->opts.max_pool_size)) {
            /* Only a new connection could serve this checkout and the
             * backend keeps refusing them: say so now rather than at the
             * deadline, whoever is queued already. */
            rc = CPOOL_EUNAVAILABLE;
            goto fail;
        }
        if (c == NULL) {
            if (!w_ready) {
                if (sem_init(&w.sem, 0, 0) != 0) {
                    rc = CPOOL_ESYS;
                    goto fail;
                }
                w_ready = true;
            }
            w.conn = NULL;
            w.fail = 0;
            w.establish = false;
            w.queued = true;
            w.tenant = tn;
            if (tn != NULL)
                tn->waiting++;
            atomic_store_explicit(&w.done, 0, memory_order_relaxed);
            w.next = NULL;
            w.prev = p->wq_tail;
            if (p->wq_tail != NULL)
                p->wq_tail->next = &w;
            else
                p->wq_head = &w;
            p->wq_tail = &w;
            atomic_fetch_add(&p->nwaiting, 1);
            /* The waiter's half of the parking handshake (see above). */
            int reason = -1;
            cpool_conn *parked = steal_parked_locked(p, false, &reason);
            if (parked != NULL) {
                wq_remove_locked(p, &w);
                if (reason >= 0) {
                    close_conn_relock(p, parked, reason, NULL);
                    continue;
                }
                c = parked;
                break;
            }
            clock_start(&t);
            int64_t wake = backoff_wake_locked(p, t.wait_deadline);
            cpool__unlock(p);
            bool served = wait_served(p, &w, wake) && waiter_done(&w);
            while (!served && wake < t.wait_deadline) {
                /* The backoff step ended: the queue may create again (the
                 * maintenance thread does the same; this covers pools
                 * without one). */
                cpool__lock(p);
                if (w.queued)
                    grant_capacity_relock(p);
                wake = backoff_wake_locked(p, t.wait_deadline);
                cpool__unlock(p);
                served = wait_served(p, &w, wake) && waiter_done(&w);
            }
            if (served && !w.establish && w.fail == 0 && !p->observed && tn == NULL) {
                /* Handed a connection that was just checked in (and reset):
                 * return without touching the pool lock at all. */
                sem_destroy(&w.sem);
                lease_begin(p, w.conn, t.start, true, NULL);
                *out = w.conn;
                return 0;
            }
            cpool__lock(p);
            if (!served) {
                if (w.queued) { /* timed out */
                    wq_remove_locked(p, &w);
                    rc = CPOOL_ETIMEDOUT;
                    if (capacity_refused.code != 0)
                        cause = &capacity_refused; /* why it had to wait */
                    if (tn != NULL && tn->max > 0 && tn->in_use >= tn->max) {
                        /* Its own tenant's cap kept it waiting. */
                        tn->limit_timeouts++;
                        rc = CPOOL_ETENANT;
                        cpool__err(&ce, rc,
                                   "Timed out while checking out a connection from "
                                   "connection pool %s: tenant \"%s\" holds %u of its "
                                   "%u connections (pool: in use %u, available %u, "
                                   "waiting %u, maxPoolSize %u)",
                                   p->address, tn->name, tn->in_use, tn->max, p->in_use.n,
                                   p->available.n, atomic_load(&p->nwaiting),
                                   p->opts.max_pool_size);
                        cause = &ce;
                    }
                    goto fail;
                }
                /* Served while the deadline passed: the post was made under
                 * mu, so it is there to take. */
                while (sem_trywait(&w.sem) != 0)
                    ;
            }
            if (w.fail != 0) {
                rc = w.fail;
                goto fail;
            }
            c = w.conn;
            establish = w.establish;
            handed = !establish; /* at check-in: no liveness check needed */
        }
        if (establish) {
            int64_t deadline = conn_deadline(&t);
            rc = establish_relock(p, c, deadline, true, t.caller_bound, &ce);
            if (rc == ESTABLISH_RETRY)
                continue;
            fresh = rc == 0;
            if (rc != 0) {
                /* An attempt the pool abandoned fails as the pool's state
                 * says (cleared: retryable; closed); others carry the
                 * connector's error and labels. */
                if (ce.kind == CPOOL_FAIL_INTERRUPTED) /* by whom? */
                    rc = p->draining                    ? CPOOL_ESHUTDOWN
                         : p->state == CPOOL_STATE_CLOSED ? CPOOL_ECLOSED
                                                          : CPOOL_ECLEARED;
                else if (ce.kind == CPOOL_FAIL_CAPACITY &&
                         (t.wait_deadline == NO_DEADLINE || cpool__now(p) < t.wait_deadline)) {
                    /* The server is full: wait for a lease or a free slot
                     * within the deadline, as for a full pool. */
                    capacity_refused = ce;
                    continue;
                } else if (ce.kind == CPOOL_FAIL_CAPACITY ||
                           (t.caller_bound && ce.kind == CPOOL_FAIL_TIMEOUT &&
                            cpool__now(p) >= deadline)) {
                    rc = CPOOL_ETIMEDOUT; /* the caller's own deadline ran out */
                    if (capacity_refused.code != 0)
                        ce = capacity_refused; /* ... waiting for a free slot */
                }
                cause = &ce;
                goto fail;
            }
        } else if (!handed && p->opts.validation != CPOOL_VALIDATE_NONE) {
            /* The validation policy, outside the lock, within the same
             * deadline as the rest of the checkout. Without time left for a
             * ping the connection goes back, unblamed, and the caller gets
             * its timeout. */
            int64_t deadline = conn_deadline(&t);
            bool ping = wants_ping(p, c);
            if (no_time_to_ping(p, ping, deadline)) {
                put_back_locked(p, c);
                rc = CPOOL_ETIMEDOUT;
                goto fail;
            }
            cpool__unlock(p);
            int bad = validate_conn(p, c, ping, deadline, &ce);
            cpool__lock(p);
            if (bad != 0) {
                close_conn_relock(p, c, CPOOL_CLOSE_ERROR, &ce);
                continue;
            }
        }
        if (!establish && tn != NULL) {
            rc = tenant_switch_relock(p, c, tn, conn_deadline(&t), &ce);
            if (rc == SWITCH_CLOSED)
                continue;
            if (rc != 0)
                goto fail;
        }
        break;
    }
    if (w_ready)
        sem_destroy(&w.sem);
    lease_begin(p, c, t.start, !fresh, label);
    if (c->tenant != NULL) {
        c->tenant->checkouts_ok++;
        c->last_tenant = c->tenant;
    }
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_CHECKED_OUT);
        ev.connection_id = c->id;
        ev.duration_ns = ev.time_ns - t.start;
        cpool__emit_unlock(p, &ev);
    } else {
        cpool__unlock(p);
    }
    *out = c;
    return 0;

fail:
    if (w_ready)
        sem_destroy(&w.sem);
    if (rc == CPOOL_ECLOSED || rc == CPOOL_ESHUTDOWN)
        why = CPOOL_CHECKOUT_POOL_CLOSED;
    else if (rc == CPOOL_ETIMEDOUT || rc == CPOOL_ETENANT)
        why = CPOOL_CHECKOUT_TIMEOUT;
    return fail_checkout(p, rc, why, &t, cause, err);
}

/* ------------------------------------------------------------------ checkin */

/* A reclaimed lease came back (or the pool is destroyed): its slot was
 * already given back, so it is only closed and freed. While the reclaim's
 * interrupt() still runs, the last unpin does it. */
static void close_reclaimed_relock(cpool *p, cpool_conn *c)
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
    conn_free_locked(p, c);
}

/* A lease taken before fork() and returned in the child: the parent owns the
 * server session, so the handle is dropped without any I/O. */
static int checkin_orphan(cpool *p, cpool_conn *c)
{
    cpool__lock(p);
    if (c->reclaimed)
        close_reclaimed_relock(p, c);
    else
        abandon_locked(p, c);
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
        check_fork_relock(p);
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
        check_fork_relock(p);
        broken = broken || c->interrupt_requested;
        atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed); /* no longer a lease */
        unassign_locked(c);
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
    int reason = unfit_reason_locked(p, c, broken);
    if (reason >= 0)
        close_conn_relock(p, c, reason, ce.code != 0 ? &ce : NULL);
    else
        make_available_locked(p, c);
    cpool__unlock(p);
    return 0;
}

/* ------------------------------------------------------------------ maintenance */

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
    unassign_locked(c);
    c->reclaimed = true;
    c->interrupted = true;
    c->pins++;
    p->leaks_reclaimed++;
    if (p->draining) {
        p->drain_reclaimed++;
        pthread_cond_broadcast(&p->drain_cv);
    }
    p->st_closed[CPOOL_CLOSE_RECLAIMED]++;
    svc_release_locked(p, c);
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
            p->cx->close(p->cx_ctx, native);
        cpool__lock(p);
        conn_free_locked(p, c);
    }
    grant_capacity_relock(p);
    return true;
}

/* Reports leases held past leak_threshold_ms (once per lease) and takes
 * back those held past leak_reclaim_ms. May release mu; the scan starts
 * over after each report. */
static void scan_leaks_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
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
            if (c->leak_lease == since) {
                /* Reported already; reclaim when it is time. */
                if (reclaim > 0 && held >= reclaim && reclaim_relock(p, c, held)) {
                    again = true;
                    break;
                }
                continue;
            }
            if (held < threshold)
                continue;
            c->leak_lease = since;
            p->leaks_suspected++;
            cpool_event ev;
            cpool__event_init(p, &ev, CPOOL_EV_CONN_LEAK_SUSPECTED);
            ev.connection_id = c->id;
            ev.duration_ns = held;
            char label[sizeof c->label];
            memcpy(label, c->label, sizeof label);
            ev.holder_label = label;
            ev.holder_thread = c->holder_tid;
            cpool__emit_relock(p, &ev);
            again = true;
            break;
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
        set_state_locked(p, c, CONN_IN_USE);
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
        int reason = unfit_reason_locked(p, c, rc != 0);
        if (reason >= 0) {
            if (rc != 0) {
                p->st_keepalive_failures++;
                if (ce.code == 0)
                    ce.code = CPOOL_EIO;
            }
            close_conn_relock(p, c, reason, rc != 0 ? &ce : NULL);
            continue;
        }
        if (next_waiter_locked(p) != NULL) {
            make_available_locked(p, c);
        } else {
            set_state_locked(p, c, CONN_AVAILABLE);
            atomic_store_explicit(&c->available_since_ns, since, memory_order_relaxed);
        }
    }
}

/* Opens one connection into the pool, not as a lease (the refill, and
 * startup): it becomes available, or goes to the oldest waiter. Each
 * establishment gets connect_timeout_ms, never past `until` (pool clock;
 * NO_DEADLINE = none) -- a caller's bound. 0, CPOOL_ENOMEM (nothing was
 * made), or the establishment's error in *e. Releases mu. */
static int open_into_pool_relock(cpool *p, int64_t until, cpool_error *e)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c = conn_new_locked(p);
    if (c == NULL)
        return cpool__err(e, CPOOL_ENOMEM, "open %s: out of memory", p->address);
    emit_created_relock(p, c);
    int64_t d = p->opts.connect_timeout_ms > 0
                    ? deadline_after(cpool__now(p), p->opts.connect_timeout_ms)
                    : NO_DEADLINE;
    bool bound = until <= d;
    int rc = establish_relock(p, c, bound ? until : d, false, bound, e);
    return rc == ESTABLISH_RETRY ? 0 : rc;
}

/* One background run: close perished available connections (oldest first),
 * check the ones idle for keepalive_ms, then populate up to minPoolSize
 * while the pool is ready and a maxConnecting slot is free. It never waits
 * for a slot. May release mu. */
static void maintain_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    atomic_store_explicit(&p->tick_ns, cpool__now(p), memory_order_relaxed);
    for (;;) {
        int64_t now = cpool__now(p);
        cpool_conn *c = p->available.tail;
        int reason = -1;
        for (; c != NULL; c = c->prev)
            if ((reason = perished_locked(p, c, now)) >= 0)
                break;
        if (c == NULL)
            break;
        close_conn_relock(p, c, reason, NULL);
    }
    for (;;) {
        int reason = -1;
        cpool_conn *c = steal_parked_locked(p, /* perished_only= */ true, &reason);
        if (c == NULL)
            break;
        close_conn_relock(p, c, reason, NULL);
    }
    interrupt_marked_relock(p);
    if (p->opts.leak_threshold_ms > 0 || p->opts.leak_reclaim_ms > 0)
        scan_leaks_relock(p);
    keepalive_relock(p);
    grant_capacity_relock(p); /* a backoff step may have ended */
    cpool_error ce;
    while (p->state == CPOOL_STATE_READY && total_locked(p) < p->opts.min_pool_size &&
           can_create_locked(p)) {
        if (open_into_pool_relock(p, NO_DEADLINE, &ce) != 0)
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
}

static void *maintenance_main(void *arg)
{
    cpool *p = arg;
    cpool__lock(p);
    while (p->state != CPOOL_STATE_CLOSED && p->maint_running) {
        probe_server_relock(p);
        maintain_relock(p);
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
        struct timespec ts = abs_real(pause);
        while (!p->maint_kick && p->state != CPOOL_STATE_CLOSED && p->maint_running) {
            if (cpool__cond_timedwait(p, &p->maint_cv, &ts) == ETIMEDOUT)
                break;
        }
        p->maint_kick = false;
    }
    cpool__unlock(p);
    return NULL;
}

static int start_maintenance_locked(cpool *p)
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

int cpool_maintain(cpool *p, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "maintain");
    if (p == NULL)
        return cpool__err(err, CPOOL_EINVAL, "maintain: pool is required");
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "maintain %s: pool is closed", p->address);
    }
    maintain_relock(p);
    cpool__unlock(p);
    return 0;
}

/* ------------------------------------------------------------------ fork */

/* In a forked child: every connection belongs to the parent's server
 * sessions. Drop them without I/O (abandon), forget the parent's waiters and
 * in-flight establishments (their threads do not exist here), bump the
 * generation and restart the background thread. The pool keeps its state so
 * the child can go on using it. */
/* Every timed wait of the pool uses CLOCK_MONOTONIC deadlines. */
static void init_monotonic_cond(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
}

static void after_fork_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    atomic_store_explicit(&p->fork_epoch,
                          atomic_load_explicit(&g_fork_epoch, memory_order_relaxed),
                          memory_order_relaxed);
    /* The parent's maintenance thread may have been waiting on this; it does
     * not exist here, so start from a fresh condition variable. */
    init_monotonic_cond(&p->maint_cv);
    init_monotonic_cond(&p->drain_cv);
    p->maint_running = false;
    p->wq_head = p->wq_tail = NULL;
    atomic_store(&p->nwaiting, 0);
    while (p->available.head != NULL)
        abandon_locked(p, p->available.head);
    while (p->pending.head != NULL) /* no handle yet: its connect runs in
                                       a parent thread that is not here */
        abandon_locked(p, p->pending.head);
    while (p->in_use.head != NULL) {
        cpool_conn *c = p->in_use.head;
        list_remove(&p->in_use, c);
        c->svc = NULL;
        c->state = CONN_ORPHANED;
        atomic_store_explicit(&c->leased, LEASE_ORPHAN, memory_order_relaxed);
        list_push_head(&p->orphans, c);
    }
    /* Leases reclaimed in the parent: here too the session is the
     * parent's, so they are abandoned, not closed, when they come back. */
    for (cpool_conn *c = p->orphans.head; c != NULL; c = c->next) {
        c->reclaimed = false;
        unassign_locked(c); /* no tenant holds it here */
    }
    for (tenant *t = p->tenant_list; t != NULL; t = t->next)
        t->waiting = 0; /* the parent's waiters are not here */
    /* A probe in flight belonged to a parent thread: without this, the
     * child would wait for its result forever. */
    p->probing = false;
    while (p->services != NULL) {
        service *s = p->services;
        p->services = s->next;
        free(s);
    }
    p->generation++;
    if (p->state != CPOOL_STATE_CLOSED)
        start_maintenance_locked(p);
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
        cpool__emit_relock(p, &ev);
    }
}

/* ------------------------------------------------------------------ lifecycle */

void cpool_options_init(cpool_options *o, size_t size)
{
    if (o == NULL)
        return;
    cpool_options d;
    memset(&d, 0, sizeof d);
    d.struct_size = size;
    /* Not CMAP's 100 and "wait forever" (docs/configuration.md, "Defaults
     * and why"): ten connections per pool leave a default PostgreSQL
     * (max_connections 100) room for several processes, and a checkout that
     * cannot be served ends within 30 s. */
    d.max_pool_size = 10;
    d.wait_queue_timeout_ms = 30000;
    d.max_connecting = 2;
    d.connect_timeout_ms = 10000;
    d.maintenance_interval_ms = 1000;
    d.log_level = CPOOL_LOG_DEBUG;
    d.validation = CPOOL_VALIDATE_CHECK;
    d.validation_idle_ms = 1000;
    d.max_lifetime_ms = 1800000;
    d.lifetime_jitter = 0.05;
    d.backoff_base_ms = 200;
    d.backoff_max_ms = 10000;
    d.backoff_jitter = 0.2;
    d.breaker_threshold = 5;
    d.probe_interval_ms = 250;
    d.keepalive_ms = 60000;
    d.timing_sample = 16;
    memset(o, 0, size);
    memcpy(o, &d, size < sizeof d ? size : sizeof d);
}

/* The CMAP options that differ from the specification's defaults
 * (maxPoolSize 100, minPoolSize 0, maxIdleTimeMS 0, maxConnecting 2,
 * waitQueueTimeoutMS 0): what ConnectionPoolCreated lists, as a driver's
 * event lists what its user set. This pool's own defaults differ for two
 * of them, so a default pool lists those two. */
static unsigned options_set(const cpool_options *o)
{
    unsigned m = 0;
    if (o->max_pool_size != 100) m |= CPOOL_OPT_MAX_POOL_SIZE;
    if (o->min_pool_size != 0) m |= CPOOL_OPT_MIN_POOL_SIZE;
    if (o->max_idle_time_ms != 0) m |= CPOOL_OPT_MAX_IDLE_TIME_MS;
    if (o->max_connecting != 2) m |= CPOOL_OPT_MAX_CONNECTING;
    if (o->wait_queue_timeout_ms != 0) m |= CPOOL_OPT_WAIT_QUEUE_TIMEOUT_MS;
    return m;
}

static int validate(const cpool_options *o, cpool_error *err)
{
    if (o->connector == NULL)
        return cpool__err(err, CPOOL_EINVAL, "option connector: required");
    if (o->connector->abi_version < 1 || o->connector->connect == NULL ||
        o->connector->close == NULL)
        return cpool__err(err, CPOOL_EINVAL,
                          "option connector: abi_version %d without connect/close",
                          o->connector->abi_version);
    return cpool__options_check(o, err);
}

/* The checks that need no connector: ranges and options that must agree. */
int cpool__options_check(const cpool_options *o, cpool_error *err)
{
    if (o->max_connecting == 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option maxConnecting = 0: must be greater than 0");
    if (o->max_pool_size > 0 && o->min_pool_size > o->max_pool_size)
        return cpool__err(err, CPOOL_EINVAL,
                          "option minPoolSize = %u: must not exceed maxPoolSize (%u)",
                          o->min_pool_size, o->max_pool_size);
    /* Each connection holds at least one descriptor: a minimum the
     * process's limit cannot hold is never reached (with maxPoolSize 0
     * nothing else bounds it). */
    struct rlimit nofile;
    if (o->min_pool_size > 0 && getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
        nofile.rlim_cur != RLIM_INFINITY && o->min_pool_size >= nofile.rlim_cur)
        return cpool__err(err, CPOOL_EINVAL,
                          "option minPoolSize = %u: the process may open only %llu "
                          "descriptors (RLIMIT_NOFILE), and each connection needs one",
                          o->min_pool_size, (unsigned long long)nofile.rlim_cur);
    if (o->max_idle_time_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option maxIdleTimeMS = %lld: must be >= 0 (0 = no limit)",
                          (long long)o->max_idle_time_ms);
    if (o->wait_queue_timeout_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option waitQueueTimeoutMS = %lld: must be >= 0 (0 = no limit)",
                          (long long)o->wait_queue_timeout_ms);
    if (o->connect_timeout_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option connect_timeout_ms = %lld: must be >= 0 (0 = no limit)",
                          (long long)o->connect_timeout_ms);
    if (o->maintenance_interval_ms == 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option maintenance_interval_ms = 0: must be > 0, or < 0 "
                          "for no background thread");
    if ((unsigned)o->log_level > CPOOL_LOG_DEBUG)
        return cpool__err(err, CPOOL_EINVAL, "option log_level = %d: out of range",
                          (int)o->log_level);
    if ((unsigned)o->validation > CPOOL_VALIDATE_ALWAYS)
        return cpool__err(err, CPOOL_EINVAL, "option validation = %d: out of range",
                          (int)o->validation);
    if (o->validation_idle_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option validation_idle_ms = %lld: must be >= 0",
                          (long long)o->validation_idle_ms);
    if (o->max_lifetime_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option max_lifetime_ms = %lld: must be >= 0 (0 = no limit)",
                          (long long)o->max_lifetime_ms);
    if (!(o->lifetime_jitter >= 0 && o->lifetime_jitter <= 0.5))
        return cpool__err(err, CPOOL_EINVAL, "option lifetime_jitter = %g: allowed 0..0.5",
                          o->lifetime_jitter);
    if (o->backoff_base_ms < 0 || o->backoff_max_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option backoff_base_ms = %lld, backoff_max_ms = %lld: must be >= 0",
                          (long long)o->backoff_base_ms, (long long)o->backoff_max_ms);
    if (o->backoff_max_ms > 0 && o->backoff_base_ms > o->backoff_max_ms)
        return cpool__err(err, CPOOL_EINVAL,
                          "option backoff_base_ms = %lld: must not exceed backoff_max_ms "
                          "(%lld)",
                          (long long)o->backoff_base_ms, (long long)o->backoff_max_ms);
    if (!(o->backoff_jitter >= 0 && o->backoff_jitter <= 1))
        return cpool__err(err, CPOOL_EINVAL, "option backoff_jitter = %g: allowed 0..1",
                          o->backoff_jitter);
    if (o->leak_threshold_ms < 0 || o->leak_reclaim_ms < 0 || o->startup_wait_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "options leak_threshold_ms, leak_reclaim_ms, startup_wait_ms: "
                          "must be >= 0");
    if (o->leak_reclaim_ms > 0 &&
        (o->leak_threshold_ms == 0 || o->leak_reclaim_ms < o->leak_threshold_ms))
        return cpool__err(err, CPOOL_EINVAL,
                          "option leak_reclaim_ms = %lld: needs leak_threshold_ms (now %lld) "
                          "> 0 and not above it",
                          (long long)o->leak_reclaim_ms, (long long)o->leak_threshold_ms);
    if (o->clock != NULL && o->clock->now_ns == NULL)
        return cpool__err(err, CPOOL_EINVAL, "option clock: now_ns is required");
    return 0;
}

/* serverHost/serverPort for the log records: "host:port", "[v6]:port", a
 * unix socket path (no port) or anything else (host only). */
static int split_address(cpool *p)
{
    const char *a = p->address;
    const char *colon = strrchr(a, ':');
    p->port = -1;
    if (a[0] != '/' && colon != NULL && colon[1] != '\0' &&
        strspn(colon + 1, "0123456789") == strlen(colon + 1) && strlen(colon + 1) <= 5) {
        size_t hl = (size_t)(colon - a);
        if (hl >= 2 && a[0] == '[' && a[hl - 1] == ']') {
            a++;
            hl -= 2;
        }
        p->host = strndup(a, hl);
        p->port = atoi(colon + 1);
    } else {
        p->host = strdup(a);
    }
    return p->host == NULL ? CPOOL_ENOMEM : 0;
}

static void free_pool(cpool *p)
{
    while (p->free_list.head != NULL) {
        cpool_conn *c = p->free_list.head;
        list_remove(&p->free_list, c);
        c->magic = 0;
        free(c);
    }
    while (p->services != NULL) {
        service *s = p->services;
        p->services = s->next;
        free(s);
    }
    while (p->tenant_list != NULL) {
        tenant *t = p->tenant_list;
        p->tenant_list = t->next;
        free(t);
    }
    if (p->log_file != NULL)
        fclose(p->log_file);
    if (p->owns_cx_ctx && p->cx->ctx_free != NULL)
        p->cx->ctx_free(p->cx_ctx);
    free(p->target);
    free(p->address);
    free(p->name);
    free(p->host);
    pthread_cond_destroy(&p->maint_cv);
    pthread_cond_destroy(&p->drain_cv);
    pthread_mutex_destroy(&p->ev_mu);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* CPOOL_LOG's level into *lv (0..3; -1 when the variable is unset or
 * empty): 0, or a CPOOL_EINVAL naming it. */
static int env_log_level(int *lv, cpool_error *err)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *level = getenv("CPOOL_LOG");
    *lv = -1;
    if (level == NULL || level[0] == '\0')
        return 0;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(level, names[i]) == 0)
            return *lv = i, 0;
    return cpool__err(err, CPOOL_EINVAL,
                      "CPOOL_LOG = \"%.32s\" (from env): allowed error|warn|info|debug", level);
}

/* What env_log_sink() would refuse, without opening anything: for
 * cpool_options_explain(), which must refuse what cpool_create() refuses. */
int cpool__env_log_check(const cpool_options *o, cpool_error *err)
{
    if (o->on_log != NULL || o->ignore_env)
        return 0;
    int lv, rc = env_log_level(&lv, err);
    if (rc != 0 || lv < 0)
        return rc;
    const char *path = getenv("CPOOL_LOG_PATH");
    if (path == NULL || path[0] == '\0' || access(path, W_OK) == 0)
        return 0;
    int missing = errno == ENOENT;
    /* A file that does not exist yet is made in a writable directory. */
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash == NULL ? 1 : slash == path ? 1 : (int)(slash - path),
             slash == NULL ? "." : path);
    if (missing && access(dir, W_OK | X_OK) == 0)
        return 0;
    return cpool__err(err, CPOOL_EINVAL,
                      "CPOOL_LOG_PATH = \"%.120s\" (from env): cannot be opened for appending",
                      path);
}

/* CPOOL_LOG=error|warn|info|debug gives a pool without a log sink of its
 * own the built-in JSON-lines sink, on stderr or appended to
 * CPOOL_LOG_PATH: logs for a program that never asked for them, switched
 * on where it runs. */
static int env_log_sink(cpool *p, cpool_options *o, cpool_error *err)
{
    int lv, rc = env_log_level(&lv, err);
    if (rc != 0 || lv < 0)
        return rc;
    FILE *f = stderr;
    const char *path = getenv("CPOOL_LOG_PATH");
    if (path != NULL && path[0] != '\0') {
        f = fopen(path, "ae");
        if (f == NULL)
            return cpool__err(err, CPOOL_EINVAL,
                              "CPOOL_LOG_PATH = \"%.120s\" (from env): cannot be opened for "
                              "appending: %s",
                              path, strerror(errno));
        p->log_file = f;
    }
    o->on_log = cpool_log_json;
    o->log_ctx = f;
    o->log_level = (cpool_log_level)lv;
    return 0;
}

int cpool_create(const cpool_options *opts, cpool **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (opts == NULL || out == NULL)
        return cpool__err(err, CPOOL_EINVAL, "create: options and out are required");
    if (opts->struct_size < offsetof(cpool_options, clock) + sizeof opts->clock)
        return cpool__err(err, CPOOL_EINVAL,
                          "create: options.struct_size %zu is too small; use "
                          "cpool_options_init(&o, sizeof o)",
                          opts->struct_size);
    cpool_options code, o;
    cpool_options_init(&code, sizeof code);
    memcpy(&code, opts, opts->struct_size < sizeof code ? opts->struct_size : sizeof code);
    code.struct_size = sizeof code;
    /* Profile, environment and the target's query over the code's values;
     * `target` comes back without the pool's own parameters. */
    char *target = NULL;
    int rc = cpool__options_resolve(&code, &o, &target, err);
    if (rc == 0)
        rc = validate(&o, err);
    if (rc != 0) {
        free(target);
        return rc;
    }

    pthread_once(&g_atfork_once, register_atfork);
    cpool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        free(target);
        return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
    }
    /* Critical sections are a few list operations: spinning briefly before
     * sleeping beats a futex round trip when the holder runs on another core. */
    pthread_mutexattr_t mattr;
    pthread_mutexattr_init(&mattr);
    pthread_mutexattr_settype(&mattr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&p->mu, &mattr);
    pthread_mutexattr_destroy(&mattr);
    pthread_mutex_init(&p->ev_mu, NULL);
    init_monotonic_cond(&p->maint_cv);
    init_monotonic_cond(&p->drain_cv);

    p->cx = o.connector;
    p->cx_ctx = o.connector_ctx;
    p->target = target != NULL ? target : strdup("");
    if (p->target != NULL && p->cx_ctx == NULL && p->cx->abi_version >= 2 &&
        p->cx->ctx_new != NULL) {
        /* The connector parses its part of the target now, so a bad
         * parameter fails here rather than at the first connect. */
        void *ctx = NULL;
        rc = p->cx->ctx_new(p->target, &ctx, err);
        if (rc != 0) {
            free_pool(p);
            return rc;
        }
        p->cx_ctx = ctx;
        p->owns_cx_ctx = true;
    }
    /* The address is in every event, log record and error message, so it
     * is made from the target without its password. */
    char buf[256], redacted[512];
    if (p->target != NULL)
        cpool_redact(p->target, redacted, sizeof redacted);
    const char *address = o.address;
    if (address == NULL && p->target != NULL && p->cx->address != NULL &&
        p->cx->address(p->cx_ctx, redacted, buf, sizeof buf) == 0)
        address = buf;
    if (address == NULL || address[0] == '\0') {
        if (p->target != NULL && p->target[0] != '\0') {
            address = redacted;
        } else {
            address = p->cx->name;
        }
    }
    p->address = address != NULL ? strdup(address) : NULL;
    p->name = o.name != NULL ? strdup(o.name) : p->address != NULL ? strdup(p->address) : NULL;
    if (p->target == NULL || p->address == NULL || p->name == NULL || split_address(p) != 0) {
        free_pool(p);
        return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
    }
    o.target = p->target;
    o.address = p->address;
    o.name = p->name;
    if (o.on_log == NULL && !o.ignore_env && (rc = env_log_sink(p, &o, err)) != 0) {
        free_pool(p);
        return rc;
    }
    p->opts = o;
    /* Leak detection reads the holder's label under mu, so its leases take
     * the locked paths, as observed pools' do. */
    p->observed = o.on_event != NULL || o.on_log != NULL || o.leak_threshold_ms > 0;
    p->stamp_idle = o.max_idle_time_ms > 0 || o.validation == CPOOL_VALIDATE_PING_IDLE;
    /* Parking skips the events and the per-service generations. */
    p->can_park = !p->observed && !o.load_balanced;
    p->serial = atomic_fetch_add(&g_pool_serial, 1) + 1;
    p->rng = 0x9e3779b97f4a7c15ULL ^ (p->serial * 0xbf58476d1ce4e5b9ULL) ^
             (uint64_t)cpool__mono_ns();
    p->options_set = options_set(&o);
    p->state = CPOOL_STATE_PAUSED;
    atomic_store_explicit(&p->fork_epoch,
                          atomic_load_explicit(&g_fork_epoch, memory_order_relaxed),
                          memory_order_relaxed);

    registry_add(p); /* before mu: the registry lock comes first */
    cpool__lock(p);
    if (start_maintenance_locked(p) != 0) {
        cpool__unlock(p);
        registry_remove(p);
        free_pool(p);
        return cpool__err(err, CPOOL_ESYS, "create: cannot start the background thread");
    }
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CREATED);
    ev.options = &p->opts;
    ev.options_set = p->options_set;
    cpool__emit_unlock(p, &ev);
    if (!o.ignore_env)
        cpool__env_warn(p);
    *out = p;
    return 0;
}

int cpool_ready(cpool *p, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "ready");
    if (p == NULL)
        return cpool__err(err, CPOOL_EINVAL, "ready: pool is required");
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "ready %s: pool is closed", p->address);
    }
    if (p->draining) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ESHUTDOWN, "ready %s: pool is shutting down", p->address);
    }
    if (p->state == CPOOL_STATE_READY) {
        cpool__unlock(p);
        return 0;
    }
    p->state = CPOOL_STATE_READY;
    p->ever_ready = true;
    /* The background thread takes mu before it creates anything, and its
     * ConnectionCreated needs ev_mu, which we take before releasing mu: so
     * no observer sees a creation before ConnectionPoolReady. */
    kick_maintenance_locked(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_READY);
    cpool__emit_unlock(p, &ev);
    return 0;
}

int cpool_clear(cpool *p, unsigned flags, const cpool_error *cause, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "clear");
    if (p == NULL)
        return cpool__err(err, CPOOL_EINVAL, "clear: pool is required");
    if ((flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE) != 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: unknown flags 0x%x (allowed CPOOL_CLEAR_INTERRUPT_IN_USE)",
                          p->address, flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE);
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "clear %s: pool is closed", p->address);
    }
    if (p->opts.load_balanced) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: load-balanced pools are cleared per service "
                          "(cpool_clear_service)", p->address);
    }
    clear_relock(p, flags, cause);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        interrupt_marked_relock(p);
    cpool__unlock(p);
    return 0;
}

int cpool_clear_service(cpool *p, const char *service_id, unsigned flags,
                        const cpool_error *cause, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "clear_service");
    if (p == NULL || service_id == NULL)
        return cpool__err(err, CPOOL_EINVAL, "clear_service: pool and service id are required");
    if ((flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE) != 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: unknown flags 0x%x (allowed CPOOL_CLEAR_INTERRUPT_IN_USE)",
                          p->address, flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE);
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "clear %s: pool is closed", p->address);
    }
    if (!p->opts.load_balanced) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: clearing by service id needs load-balanced mode",
                          p->address);
    }
    (void)cause; /* waiters are not failed in load-balanced mode */
    /* CMAP load-balanced clear: only this service's generation moves; the
     * pool is not paused and the wait queue is left alone. */
    service *s = svc_find_locked(p, service_id);
    if (s != NULL) {
        uint64_t old = s->generation++;
        if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
            mark_interrupts_locked(p, s, old);
    }
    kick_maintenance_locked(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
    ev.service_id = service_id;
    ev.interrupt_in_use = (flags & CPOOL_CLEAR_INTERRUPT_IN_USE) != 0;
    cpool__emit_relock(p, &ev);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        interrupt_marked_relock(p);
    cpool__unlock(p);
    return 0;
}

void cpool_close(cpool *p)
{
    if (p != NULL && cpool__in_callback(p))
        return;
    if (p == NULL)
        return;
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return;
    }
    p->state = CPOOL_STATE_CLOSED;
    fail_waiters_locked(p, CPOOL_ECLOSED);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        cancel_pending(c);
    pthread_cond_broadcast(&p->maint_cv);
    /* CMAP: available connections are closed first, then PoolClosed. In-use
     * ones are closed when they come back. */
    while (p->available.head != NULL)
        close_conn_relock(p, p->available.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    for (cpool_conn *c; (c = steal_parked_locked(p, false, NULL)) != NULL;)
        close_conn_relock(p, c, CPOOL_CLOSE_POOL_CLOSED, NULL);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CLOSED);
    cpool__emit_unlock(p, &ev);
}

int cpool_shutdown(cpool *p, int64_t grace_ms, cpool_shutdown_report *report,
                   cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "shutdown");
    if (report != NULL)
        memset(report, 0, sizeof *report);
    if (p == NULL || grace_ms < 0)
        return cpool__err(err, CPOOL_EINVAL, "shutdown: a pool and grace_ms >= 0 are required");
    int64_t t0 = cpool__mono_ns();
    cpool__lock(p);
    check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED || p->draining) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "shutdown %s: pool is already %s", p->address,
                          p->draining ? "shutting down" : "closed");
    }
    /* Stop new work at once: paused, so the fast path and the maintenance
     * thread stand still, and draining, so checkouts say why. */
    p->draining = true;
    p->state = CPOOL_STATE_PAUSED;
    fail_waiters_locked(p, CPOOL_ESHUTDOWN);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        cancel_pending(c);
    while (p->available.head != NULL)
        close_conn_relock(p, p->available.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    for (cpool_conn *c; (c = steal_parked_locked(p, false, NULL)) != NULL;)
        close_conn_relock(p, c, CPOOL_CLOSE_POOL_CLOSED, NULL);
    uint32_t at_start = p->in_use.n;
    struct timespec until = abs_real(ms_to_ns(grace_ms));
    while (p->in_use.n > 0 &&
           cpool__cond_timedwait(p, &p->drain_cv, &until) != ETIMEDOUT) {
    }
    uint32_t held = p->in_use.n;
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        c->interrupt_requested = true;
    interrupt_marked_relock(p);
    cpool__unlock(p);
    cpool_close(p);
    if (report != NULL) {
        report->in_use_at_start = at_start;
        report->reclaimed = p->drain_reclaimed;
        report->returned = at_start >= held + p->drain_reclaimed
                               ? at_start - held - p->drain_reclaimed
                               : 0;
        report->interrupted = held;
        report->elapsed_ms = (cpool__mono_ns() - t0) / 1000000;
    }
    if (err != NULL)
        memset(err, 0, sizeof *err);
    return 0;
}

int cpool_wait_connected(cpool *p, uint32_t n, int64_t timeout_ms, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "wait_connected");
    if (p == NULL || timeout_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "wait_connected: a pool and timeout_ms >= 0 are required");
    if (n == 0)
        n = p->opts.min_pool_size > 1 ? p->opts.min_pool_size : 1;
    if (p->opts.max_pool_size != 0 && n > p->opts.max_pool_size)
        return cpool__err(err, CPOOL_EINVAL,
                          "wait_connected %s: %u connections exceed maxPoolSize %u",
                          p->address, n, p->opts.max_pool_size);
    /* Connections are opened into the pool as the background refill opens
     * them, not leased: a checkout would be a tenant's lease, and the slots
     * other tenants reserve would stay out of reach (n = maxPoolSize never
     * came). Failures follow the backoff, and an open circuit is waited
     * out. */
    int64_t deadline = deadline_after(cpool__now(p), timeout_ms);
    uint32_t got = 0;
    int rc = 0;
    cpool_error e;
    memset(&e, 0, sizeof e);
    cpool__lock(p);
    check_fork_relock(p);
    for (;;) {
        got = p->available.n + p->in_use.n;
        if (got >= n)
            break;
        if (p->state == CPOOL_STATE_CLOSED || p->draining) {
            rc = p->draining ? CPOOL_ESHUTDOWN : CPOOL_ECLOSED;
            cpool__err(&e, rc, "wait_connected %s: the pool is closed", p->address);
            break;
        }
        int64_t now = cpool__now(p);
        if (now >= deadline) {
            rc = CPOOL_ETIMEDOUT;
            break;
        }
        if (p->state == CPOOL_STATE_READY && total_locked(p) < n && can_create_locked(p)) {
            if ((rc = open_into_pool_relock(p, deadline, &e)) == CPOOL_ENOMEM)
                break;
            rc = 0; /* an establishment failure follows the backoff */
            continue;
        }
        /* A backoff step, the maxConnecting limit or a paused pool: look
         * again at the end of the step, or soon. */
        int64_t wake = p->fail_streak > 0 && p->retry_at > now ? p->retry_at
                                                                : now + 10000000;
        if (wake > deadline)
            wake = deadline;
        cpool__unlock(p);
        nanosleep(&(struct timespec){.tv_sec = (wake - now) / 1000000000,
                                     .tv_nsec = (wake - now) % 1000000000},
                  NULL);
        cpool__lock(p);
    }
    cpool__unlock(p);
    if (got >= n) {
        if (err != NULL)
            memset(err, 0, sizeof *err);
        return 0;
    }
    cpool__lock(p);
    bool have_last = p->fail_streak > 0; /* failing now, not long ago */
    cpool_error last = p->last_fail;
    cpool__unlock(p);
    if (have_last && (rc == CPOOL_ECONNECT || rc == CPOOL_EUNAVAILABLE ||
                      rc == CPOOL_ETIMEDOUT)) {
        /* The last establishment error says why, with its labels. */
        if (err != NULL) {
            *err = last;
            size_t len = strlen(err->message);
            snprintf(err->message + len, sizeof err->message - len,
                     " (startup: %u of %u connections after %lld ms)", got, n,
                     (long long)timeout_ms);
        }
        return last.code;
    }
    if (err != NULL && rc == CPOOL_ETIMEDOUT)
        cpool__err(err, rc, "wait_connected %s: %u of %u connections after %lld ms",
                   p->address, got, n, (long long)timeout_ms);
    else if (err != NULL)
        *err = e;
    return rc;
}

int cpool_open(const char *target, const cpool_options *opts, cpool **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (target == NULL || out == NULL)
        return cpool__err(err, CPOOL_EINVAL, "open: a target and out are required");
    const cpool_connector *cx = cpool_connector_for(target);
    if (cx == NULL) {
        /* An unrecognised target is never echoed: a misspelt scheme is no
         * reason to print the password behind it. Its scheme is enough. */
        size_t n = strspn(target, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789+.-");
        bool scheme = n > 0 && n <= 32 && target[n] == ':';
        return cpool__err(err, CPOOL_EINVAL,
                          "open: no connector for %s%.*s%s: expected sqlite:, postgresql://, "
                          "postgres://, redis://, unix:// or mem:// (or a connector left out "
                          "of this build)",
                          scheme ? "the scheme \"" : "this target (not shown)",
                          scheme ? (int)n + 1 : 0, target, scheme ? "\"" : "");
    }
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    if (opts != NULL)
        memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
    o.struct_size = sizeof o;
    o.target = target;
    o.connector = cx;
    if (opts == NULL || opts->struct_size <= offsetof(cpool_options, connector_ctx))
        o.connector_ctx = NULL;
    cpool *p = NULL;
    int rc = cpool_create(&o, &p, err);
    if (rc != 0)
        return rc;
    rc = cpool_ready(p, err);
    if (rc == 0 && p->opts.startup_wait_ms > 0)
        rc = cpool_wait_connected(p, 0, p->opts.startup_wait_ms, err);
    if (rc != 0) {
        cpool_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}

static tenant *tenant_new_locked(cpool *p, const char *name)
{
    CPOOL_ASSERT_HELD(p);
    tenant *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    snprintf(t->name, sizeof t->name, "%s", name);
    if (p->tenant_tail != NULL)
        p->tenant_tail->next = t;
    else
        p->tenant_list = t;
    p->tenant_tail = t;
    return t;
}

int cpool_tenant_set(cpool *p, const char *name, uint32_t max_in_use, uint32_t min_reserved,
                     cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "tenant_set");
    if (p == NULL || name == NULL || name[0] == '\0' || strlen(name) >= 64)
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_set: a pool and a tenant name of 1..63 bytes are required");
    if (max_in_use > 0 && min_reserved > max_in_use)
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_set \"%s\": min_reserved %u exceeds max_in_use %u", name,
                          min_reserved, max_in_use);
    cpool__lock(p);
    int rc = 0;
    if (!p->tenants && p->ever_ready) {
        rc = cpool__err(err, CPOOL_ESTATE,
                        "tenant_set %s: declare the first tenant before cpool_ready()",
                        p->address);
        goto out;
    }
    uint32_t reserved = min_reserved;
    for (tenant *u = p->tenant_list; u != NULL; u = u->next)
        if (strcmp(u->name, name) != 0)
            reserved += u->min;
    if (p->opts.max_pool_size > 0 && reserved > p->opts.max_pool_size) {
        rc = cpool__err(err, CPOOL_EINVAL,
                        "tenant_set \"%s\": guaranteed minimums (%u in all) exceed "
                        "maxPoolSize %u",
                        name, reserved, p->opts.max_pool_size);
        goto out;
    }
    if (!p->tenants) {
        /* Every lease is counted from now on: the unnamed tenant takes
         * checkouts that give none, and leases take the locked paths. */
        if (tenant_new_locked(p, "") == NULL) {
            rc = cpool__err(err, CPOOL_ENOMEM, "tenant_set: out of memory");
            goto out;
        }
        p->tenants = true;
        p->observed = true;
        p->can_park = false;
    }
    tenant *t = find_tenant_locked(p, name);
    if (t == NULL && (t = tenant_new_locked(p, name)) == NULL) {
        rc = cpool__err(err, CPOOL_ENOMEM, "tenant_set: out of memory");
        goto out;
    }
    t->max = max_in_use;
    t->min = min_reserved;
    grant_capacity_relock(p); /* a raised cap may let a waiter in */
out:
    cpool__unlock(p);
    return rc;
}

int cpool_get_tenant_stats(cpool *p, const char *name, cpool_tenant_stats *out)
{
    if (p == NULL || name == NULL || out == NULL)
        return CPOOL_EINVAL;
    cpool__lock(p);
    tenant *t = p->tenants ? find_tenant_locked(p, name) : NULL;
    if (t != NULL) {
        out->max_in_use = t->max;
        out->min_reserved = t->min;
        out->in_use = t->in_use;
        out->waiting = t->waiting;
        out->checkouts_ok = t->checkouts_ok;
        out->limit_timeouts = t->limit_timeouts;
        out->switched = t->switched;
        out->affine = t->affine;
    }
    cpool__unlock(p);
    return t != NULL ? 0 : CPOOL_EINVAL;
}

const char *cpool_tenant_name(cpool *p, size_t i)
{
    if (p == NULL)
        return NULL;
    cpool__lock(p);
    const tenant *t = p->tenant_list;
    if (t != NULL)
        t = t->next; /* the unnamed tenant is not listed */
    for (; t != NULL && i > 0; i--)
        t = t->next;
    cpool__unlock(p);
    return t != NULL ? t->name : NULL;
}

void cpool_destroy(cpool *p)
{
    if (p != NULL && cpool__in_callback(p))
        return;
    if (p == NULL)
        return;
    cpool_close(p);
    cpool__lock(p);
    bool join = p->maint_running;
    p->maint_running = false;
    pthread_cond_broadcast(&p->maint_cv);
    cpool__unlock(p);
    if (join)
        pthread_join(p->maint, NULL);
    /* Leases that never came back: close them so the server sessions end. */
    cpool__lock(p);
    while (p->in_use.head != NULL)
        close_conn_relock(p, p->in_use.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    while (p->orphans.head != NULL) {
        if (p->orphans.head->reclaimed)
            close_reclaimed_relock(p, p->orphans.head);
        else
            abandon_locked(p, p->orphans.head);
    }
    cpool__unlock(p);
    registry_remove(p);
    free_pool(p);
}

void cpool_wake(cpool *p)
{
    if (p == NULL)
        return;
    cpool__lock(p);
    /* Waiters under a test clock re-read it every few milliseconds on their
     * own; the maintenance thread sleeps longer, so it is woken here. */
    kick_maintenance_locked(p);
    cpool__unlock(p);
}

void cpool_get_counts(cpool *p, cpool_counts *out)
{
    if (p == NULL || out == NULL)
        return;
    cpool__lock(p);
    check_fork_relock(p);
    uint32_t parked = 0;
    if (p->can_park)
        for (const cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
            parked += atomic_load(&c->leased) == LEASE_PARKED;
    out->pending = p->pending.n;
    out->available = p->available.n + parked;
    out->in_use = p->in_use.n - parked;
    out->total = total_locked(p);
    out->waiting = atomic_load(&p->nwaiting);
    out->generation = p->generation;
    out->state = p->state;
    cpool__unlock(p);
}

const char *cpool_address(const cpool *p)
{
    return p != NULL ? p->address : NULL;
}

uint64_t cpool_conn_id(const cpool_conn *c)
{
    return c != NULL ? c->id : 0;
}

uint64_t cpool_conn_generation(const cpool_conn *c)
{
    return c != NULL ? c->generation : 0;
}

const char *cpool_conn_service_id(const cpool_conn *c)
{
    return c != NULL && c->svc != NULL ? c->svc->id : NULL;
}

void *cpool_conn_native(const cpool_conn *c)
{
    return c != NULL ? c->native : NULL;
}

int cpool_conn_execute(cpool_conn *c, const char *command, cpool_error *err)
{
    if (c == NULL || c->magic != CONN_MAGIC || command == NULL)
        return cpool__err(err, CPOOL_EINVAL, "execute: a lease and a command are required");
    const cpool_connector *cx = c->pool->cx;
    if (cx->abi_version < 2 || cx->execute == NULL)
        return cpool__err(err, CPOOL_EINVAL, "execute: the %s connector cannot run commands",
                          cx->name);
    if (err != NULL)
        memset(err, 0, sizeof *err);
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cx->execute(c->pool->cx_ctx, c->native, command, &e);
    if (rc != 0 && e.code == 0)
        e.code = CPOOL_EIO;
    if (rc != 0 && err != NULL)
        *err = e;
    return rc != 0 ? e.code : 0;
}
