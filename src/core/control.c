/* control.c -- changing a live pool: its size (cpool_resize) and suspending
 * it without dropping anything (cpool_suspend, cpool_resume). Each call
 * takes mu; the lock-free paths read the two flags it sets (suspended,
 * shrinking) and leave the decision to the locked paths while either is
 * set. */
#include "core.h"

#include <stdatomic.h>
#include <stdio.h>

/* Takes the pool's lock for a control call: 0 with mu held, or an error
 * with it released. */
static int enter(cpool *p, const char *what, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, what);
    if (p == NULL)
        return cpool__err(err, CPOOL_EINVAL, "%s: pool is required", what);
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED || p->draining) {
        cpool__unlock(p);
        return cpool__err(err, p->draining ? CPOOL_ESHUTDOWN : CPOOL_ECLOSED,
                          "%s %s: pool is %s", what, p->address,
                          p->draining ? "shutting down" : "closed");
    }
    return 0;
}

/* Every connection parked in a thread's slot goes back to the pool's lists
 * (suspend: none may be taken without the lock; shrink: they may close). */
static void unpark_all_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *c;
    while ((c = cpool__steal_parked_locked(p, STEAL_ANY, NULL)) != NULL)
        cpool__return_parked_locked(p, c);
}

int cpool_resize(cpool *p, uint32_t max, uint32_t min, cpool_error *err)
{
    if (max > 0 && min > max)
        return cpool__err(err, CPOOL_EINVAL, "resize: minPoolSize %u exceeds maxPoolSize %u",
                          min, max);
    int rc = enter(p, "resize", err);
    if (rc != 0)
        return rc;
    uint32_t reserved = 0;
    for (const tenant *t = p->tenant_list; t != NULL; t = t->next)
        reserved += t->min;
    if (max > 0 && reserved > max) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL,
                          "resize %s: the tenants' guaranteed minimums (%u in all) exceed "
                          "maxPoolSize %u",
                          p->address, reserved, max);
    }
    p->opts.max_pool_size = max;
    p->opts.min_pool_size = min;
    atomic_store(&p->live_min, min);
    if (max > 0 && total_locked(p) > max) {
        /* Available connections beyond the maximum close now, oldest
         * first; leased ones as they come back (cpool__unfit_reason_locked). */
        atomic_store(&p->shrinking, true);
        cpool__gate_locked(p);
        unpark_all_locked(p);
        cpool_conn *c;
        while (cpool__over_max_locked(p) && (c = p->available.tail) != NULL)
            cpool__close_conn_relock(p, c, CPOOL_CLOSE_RESIZED, NULL);
    }
    cpool__grant_capacity_relock(p); /* a larger maximum serves waiters now */
    cpool__kick_maintenance_locked(p); /* ... and a larger minimum is filled */
    cpool__unlock(p);
    return 0;
}

int cpool_suspend(cpool *p, cpool_error *err)
{
    int rc = enter(p, "suspend", err);
    if (rc != 0)
        return rc;
    if (p->state != CPOOL_STATE_READY) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ESTATE,
                          "suspend %s: the pool is paused (cleared or not ready yet)",
                          p->address);
    }
    /* The flag first, then the parked connections: a thread parking at the
     * same time re-reads the flag after its store (lease.h, try_park). */
    atomic_store(&p->suspended, true);
    cpool__gate_locked(p);
    unpark_all_locked(p);
    cpool__unlock(p);
    return 0;
}

int cpool_resume(cpool *p, cpool_error *err)
{
    int rc = enter(p, "resume", err);
    if (rc != 0)
        return rc;
    if (atomic_exchange(&p->suspended, false)) {
        cpool__gate_locked(p);
        cpool__grant_capacity_relock(p); /* the queue, in its order */
    }
    cpool__unlock(p);
    return 0;
}
