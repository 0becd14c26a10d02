/* waitq.c -- who gets the next connection: the fair wait queue (FIFO,
 * with tenants the oldest whose tenant may take one more), direct handoff
 * of a returned connection to the oldest waiter, and granting capacity for
 * new connections within maxPoolSize, maxConnecting and the backoff.
 * Everything here needs mu. */
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

void cpool__assign_locked(cpool *p, cpool_conn *c, tenant *t)
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
        cpool__wq_remove_locked(p, w);
        cpool__assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = false;
        cpool__set_state_locked(p, c, CONN_IN_USE);
        atomic_store_explicit(&c->leased, LEASE_HELD, memory_order_relaxed);
        cpool__serve_waiter(w);
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
        cpool__wq_remove_locked(p, w);
        cpool_conn *c = cpool__conn_new_locked(p);
        if (c == NULL) {
            w->fail = CPOOL_ENOMEM;
            cpool__serve_waiter(w);
            continue;
        }
        cpool__assign_locked(p, c, w->tenant);
        w->conn = c;
        w->establish = true;
        cpool__serve_waiter(w);
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
        cpool__serve_waiter(w);
    }
}

void cpool__kick_maintenance_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->maint_kick = true;
    pthread_cond_signal(&p->maint_cv);
}
