/* conn.c -- the connection layer: the per-state lists (the list is the
 * state), counts and their invariants, services (load-balanced mode),
 * perish checks, creating, closing and freeing connections, and the wait
 * queue's links. Policies above call it; everything here needs mu.
 *
 * What must stay true (asserted by check_counts_locked in debug builds):
 *   total = pending + available + in use, total <= maxPoolSize (when > 0),
 *   pending <= maxConnecting, and a waiter is queued only while the pool is
 *   ready and nothing it could take is available. */
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
int64_t cpool__perish_now(const cpool *p)
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
    if (cpool__is_stale_locked(p, c))
        return CPOOL_CLOSE_STALE;
    if (broken || c->interrupt_requested)
        return CPOOL_CLOSE_ERROR;
    if (p->opts.recycle_after_uses > 0 && cpool__conn_uses(c) >= p->opts.recycle_after_uses)
        return CPOOL_CLOSE_USES;
    if (c->expires_ns != INT64_MAX && cpool__now(p) >= c->expires_ns)
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
    if (w->tenant != NULL)
        w->tenant->waiting--;
    atomic_fetch_sub(&p->nwaiting, 1);
}

/* Wakes w once its conn or fail field is set (under mu). The flag carries
 * the fields to the waiter, which may read them without mu; the semaphore
 * only wakes it. */
void cpool__serve_waiter(waiter *w)
{
    atomic_store_explicit(&w->done, 1, memory_order_release);
    sem_post(&w->sem);
}
