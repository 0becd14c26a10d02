/* checkin.c -- cpool_checkin: the lock-free park for the returning thread,
 * else reset and hand over or make available under mu; reclaimed and
 * orphaned leases. */
#include "lease.h"

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
        cpool__close_native(p, native, c->id, CPOOL_CLOSE_RECLAIMED);
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

int cpool_conn_recycle(cpool_conn *c)
{
    if (c == NULL || c->magic != CONN_MAGIC)
        return CPOOL_EINVAL;
    if (atomic_load_explicit(&c->leased, memory_order_acquire) != LEASE_HELD)
        return CPOOL_EDOUBLE;
    /* Only the holder writes it during the lease; the pool reads it once
     * the lease flag is cleared (acq_rel in cpool_checkin). */
    atomic_store_explicit(&c->recycle, true, memory_order_relaxed);
    return 0;
}

/* The end of a check-in under the lock (c leased NONE): close it, or make
 * it available (to the oldest waiter first). */
static int checkin_locked(cpool *p, cpool_conn *c, bool broken, bool hook_failed,
                          const cpool_error *ce)
{
    cpool__lock(p);
    int reason = cpool__unfit_reason_locked(p, c, broken);
    if (hook_failed && reason == CPOOL_CLOSE_ERROR)
        reason = CPOOL_CLOSE_HOOK;
    if (reason >= 0)
        cpool__close_conn_relock(p, c, reason, ce);
    else
        cpool__make_available_locked(p, c);
    cpool__unlock(p);
    return 0;
}

/* The check-in after the lock-free one (cpool_checkin): the lease flag,
 * the reset and the hook, then a park or the locked path. Apart, so that
 * the one-step park is a small function of its own. since: the lease's
 * leased_ns, read already. */
static __attribute__((noinline)) int checkin_lease(cpool *p, cpool_conn *c, unsigned flags,
                                                   int64_t since, cpool_error *err)
{
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
    bool hook_failed = false;
    if (!broken && p->opts.hooks.after_return != NULL) {
        memset(&ce, 0, sizeof ce);
        hook_failed = p->opts.hooks.after_return(c, p->opts.hooks.ctx, &ce) != 0;
        if (hook_failed && ce.code == 0)
            cpool__err(&ce, CPOOL_EIO, "after_return hook failed on %s", p->address);
        broken = hook_failed;
    }
    if (p->can_park && !broken && try_park(p, c))
        return 0;
    return checkin_locked(p, c, broken, hook_failed, ce.code != 0 ? &ce : NULL);
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
    int64_t since = atomic_load_explicit(&c->leased_ns, memory_order_relaxed);
    /* With nothing to run between the lease and the park (no reset, hook,
     * event or timing sample), one compare-exchange HELD -> PARKED both
     * ends the lease and parks: the check that c may stay parked comes
     * before it, and the handshakes of park_settle() after it, as in
     * try_park(). Read before the lease is known to be ours, c's fields
     * are only compared: a check-in that is not the lease's fails the
     * exchange and goes on below, which says why. (Its turn time, which
     * must come before the exchange, is written: read only while c is
     * parked for a turn, by then its own park's, unless c was parked for
     * one when this wrong check-in came, whose turn then lasts longer, by
     * the time between the two at most.) */
    if (p->park_direct && flags == 0 && since == 0 && fast_fit(p, c)) {
        int parked = park(p, c, true);
        if (parked == PARK_KEPT)
            return 0;
        if (parked == PARK_BACK)
            return checkin_locked(p, c, false, false, NULL);
    }
    return checkin_lease(p, c, flags, since, err);
}
