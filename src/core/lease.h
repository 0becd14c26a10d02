/* lease.h -- the lease's hot path, inline for checkout.c and checkin.c:
 * the thread-affine fast path (park at check-in, take back at checkout
 * without the lock), the start of a lease, and validation. */
#ifndef CPOOL_LEASE_H
#define CPOOL_LEASE_H

#include "core.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h> /* gettid */

/* The thread-affine fast path.
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
 * Handoff turns (CPOOL_HANDOFF_TURNS) relax "nobody waiting" for the thread
 * whose turn it is: a check-in that finds waiters still parks, with the
 * flag TURN in place of PARKED and the time in turn_parked_ns (written
 * before the flag: turn_mark), when the thread's turn on it began less than
 * a turn's length ago (turn_us at most, less while checkouts wait long:
 * cpool__adapt_turn_locked) and has had fewer than turn_uses re-takes;
 * that thread's next checkout takes it back without the lock, waiters or
 * not. A turn begins at the first check-in of a lease the thread did not
 * re-take from its slot. A newcomer to the queue leaves such a connection
 * alone, and the background thread gives the waiters any whose turn ran out
 * before its thread came back (maint.c).
 *
 * Only a thread that comes back at once gains from a turn; one that does
 * other work between its leases would leave the connection unused while
 * others wait. So a check-in that parks for a turn notes the time and the
 * thread's next checkout measures how long it stayed away: after a return
 * later than turn_prompt_ns (100 us at most) the thread hands its next 2, 4, ... up to 64
 * connections straight over (as FIFO does) before it may park again, and a
 * prompt return clears that. A thread with think time between leases thus
 * parks for at most one lease in 65.
 *
 * The slot names the pool by a process-unique serial, not by pointer, so a
 * slot left behind by a destroyed pool never matches a new one.
 *
 * Whether the pool lets a connection be parked or re-taken is one word,
 * p->gate (cpool__gate_locked): a park checks it before its store and
 * re-reads it after, as it does the waiter count. A check-in with nothing
 * to run before the park parks with one compare-exchange HELD -> PARKED
 * (cpool_checkin); docs/design.md, "Thread-affine fast path". */
typedef struct cpool__park_slot {
    uint64_t serial;
    cpool_conn *conn;
    int64_t turn_start; /* pool clock: the turn on conn began (turns only) */
    uint32_t turn_uses; /* re-takes in this turn while others waited */
    int64_t checkin_ns; /* parked for a turn at this time, for the next
                           checkout to measure the time away; 0 = none */
    uint32_t skip;      /* check-ins left that hand over without a turn */
    uint8_t away;       /* late returns in a row (skip = 2^away after one) */
} cpool__park_slot;
/* Defined in checkout.c: this thread's parked connection, and its kernel
 * thread id once read (lease_begin).
 *
 * In the initial-exec model: in libcpool.so the default (general dynamic)
 * model calls __tls_get_addr at each use, five or six times a lease, which
 * made a lease 16 % more instructions than in libcpool.a (264 against
 * 227). Initial-exec reads them at a fixed offset from the thread pointer,
 * as the static library does. The price: these 56 bytes come out of the
 * process's static TLS block. A libcpool.so loaded at startup has them
 * there; one loaded by dlopen() takes them from the reserve glibc keeps for
 * that (tests/package/package.sh, step dlopen). The other thread-local
 * variables are not on the lock-free path and keep the default. */
#define CPOOL_TLS_FAST __attribute__((visibility("hidden"), tls_model("initial-exec")))
extern _Thread_local cpool__park_slot cpool__tl_park CPOOL_TLS_FAST;
extern _Thread_local uint64_t cpool__tl_tid CPOOL_TLS_FAST;
/* "Now" for lifetimes on the lock-free path. A clock read costs as much as
 * the rest of a lock-free checkout, and lifetimes are minutes long, so with
 * a maintenance thread this is the time of its last run (it also closes
 * expired parked connections); without one, the kernel's coarse clock. */
static inline int64_t lifetime_now(const cpool *p)
{
    if (p->tick_clock) {
        int64_t t = atomic_load_explicit(&p->tick_ns, memory_order_relaxed);
        if (t != 0)
            return t;
    }
    return cpool__now_coarse(p);
}

/* Whether c may be used without the lock, as far as the pool goes: the
 * gate is open for its generation (ready, not suspended nor shrinking, not
 * cleared since c was made), no fork is pending, it is not marked for
 * recycling and its lifetime has not passed. Idleness is fast_idle's. */
static inline bool fast_fit(const cpool *p, const cpool_conn *c)
{
    if (atomic_load(&p->gate) != gate_open(c->generation) || fork_pending(p) ||
        atomic_load_explicit(&c->recycle, memory_order_relaxed))
        return false;
    if (p->opts.recycle_after_uses > 0 && cpool__conn_uses(c) >= p->opts.recycle_after_uses)
        return false;
    return c->expires_ns == INT64_MAX || lifetime_now(p) <= c->expires_ns;
}

/* Whether c has been idle past max_idle_time_ms. With a minimum to keep,
 * idleness is judged under the lock, where the pool's size is known
 * (cpool__perished_locked). */
static inline bool fast_idle(const cpool *p, const cpool_conn *c)
{
    return p->opts.max_idle_time_ms > 0 &&
           atomic_load_explicit(&p->live_min, memory_order_relaxed) == 0 &&
           cpool__now(p) - atomic_load_explicit(&c->available_since_ns,
                                                 memory_order_relaxed) >
               ms_to_ns(p->opts.max_idle_time_ms);
}

/* Whether the connection this thread just parked while others wait may
 * stay parked for its turn (which began at its first park, see try_park):
 * only if it was parked as TURN (`marked`, at `now`; see turn_mark). */
static inline bool turn_goes_on(const cpool *p, int64_t now, bool marked)
{
    cpool__park_slot *s = &cpool__tl_park;
    if (!p->turns)
        return false;
    if (s->skip > 0) {
        s->skip--;
        return false;
    }
    int64_t turn = atomic_load_explicit(&p->turn_eff_ns, memory_order_relaxed);
    if (!marked || turn < TURN_FLOOR_NS || now - s->turn_start >= turn ||
        s->turn_uses >= p->turn_uses)
        return false;
    s->turn_uses++;
    s->checkin_ns = now;
    return true;
}

/* At a checkout with turns: how long the thread stayed away since it last
 * parked for a turn (see the top of this file). */
static inline void note_return(const cpool *p)
{
    cpool__park_slot *s = &cpool__tl_park;
    if (s->checkin_ns == 0)
        return;
    if (cpool__now(p) - s->checkin_ns < p->turn_prompt_ns) {
        s->away = 0;
    } else {
        if (s->away < 6)
            s->away++;
        s->skip = 1u << s->away;
    }
    s->checkin_ns = 0;
}

/* Turns: the flag a park is to store. TURN when checkouts already wait and
 * this thread may have a turn (turn_goes_on decides after the store), with
 * c's time written first (and into *now), so that whoever sees the flag
 * sees the time; else PARKED. A waiter that sees PARKED takes the
 * connection, so checkouts that queue between this read and the store are
 * served by it: a turn is given only to a connection parked as TURN. */
static inline unsigned turn_mark(const cpool *p, cpool_conn *c, int64_t *now)
{
    if (atomic_load_explicit(&p->nwaiting, memory_order_relaxed) == 0 ||
        cpool__tl_park.skip != 0 || !cpool__turns_given(p))
        return LEASE_PARKED;
    *now = cpool__now(p);
    atomic_store_explicit(&c->turn_parked_ns, *now, memory_order_relaxed);
    return LEASE_TURN;
}

/* The rest of a park, once c's flag says `as` (PARKED, or TURN at `now`,
 * see turn_mark): whether it stays parked (true; also when someone took it
 * meanwhile), or was taken back because the pool changed or others wait
 * (false: leased NONE, the caller finishes the check-in under the lock). */
static inline __attribute__((always_inline)) bool park_settle(cpool *p, cpool_conn *c,
                                                              unsigned as, int64_t now)
{
    bool mine = cpool__tl_park.serial == p->serial && cpool__tl_park.conn == c;
    if (p->turns && !mine) { /* a turn begins (if c stays parked) */
        if (as != LEASE_TURN)
            now = cpool__now(p);
        cpool__tl_park.turn_start = now;
        cpool__tl_park.turn_uses = 0;
    }
    /* The same handshake with cpool_close(), which shuts the gate and then
     * takes every parked connection: re-reading the gate after the store
     * means a connection is never left parked in a closed pool (nor in a
     * suspended one: cpool_suspend() shuts it too, then takes them). */
    if ((atomic_load(&p->gate) & GATE_SHUT) == 0) {
        bool park = atomic_load(&p->nwaiting) == 0;
        if (!park) {
            park = turn_goes_on(p, now, as == LEASE_TURN);
        } else if (as == LEASE_TURN) {
            /* Nobody waits any more: parked, not for a turn (a failed
             * exchange: someone took it already). A checkout that queued
             * meanwhile and left it for the turn is served by this
             * thread's next check-in or by the background thread, which
             * watches while anyone waits: within the turns' bound. */
            unsigned turn = LEASE_TURN;
            atomic_compare_exchange_strong(&c->leased, &turn, LEASE_PARKED);
            as = LEASE_PARKED;
        }
        if (park) {
            if (!mine) {
                cpool__tl_park.serial = p->serial;
                cpool__tl_park.conn = c;
            }
            return true;
        }
    }
    cpool__tl_park.conn = NULL; /* the turn, if any, ends here */
    if (atomic_compare_exchange_strong(&c->leased, &as, LEASE_NONE))
        return false; /* took it back: the locked path hands it over or closes it */
    return true;      /* someone took it already */
}

/* Stores c's park flag `as`, plainly (c leased NONE) or, for the one-step
 * park, by compare-exchange from HELD (false: c was not HELD). */
static inline __attribute__((always_inline)) bool park_flag(cpool_conn *c, bool one_step,
                                                            unsigned as)
{
    if (!one_step) {
        atomic_store(&c->leased, as);
        return true;
    }
    unsigned held = LEASE_HELD;
    return atomic_compare_exchange_strong(&c->leased, &held, as);
}

/* Parks c: PARK_KEPT (parked, or someone took it already), PARK_BACK (taken
 * back: the caller finishes the check-in under the lock) or, one-step only,
 * PARK_NOT_HELD. Each flag has its own copy of park_settle, so that a park
 * with nobody waiting does not test for a turn. */
enum { PARK_BACK = 0, PARK_KEPT = 1, PARK_NOT_HELD = 2 };
static inline __attribute__((always_inline)) int park(cpool *p, cpool_conn *c, bool one_step)
{
    int64_t now = 0;
    if (turn_mark(p, c, &now) == LEASE_TURN) {
        if (!park_flag(c, one_step, LEASE_TURN))
            return PARK_NOT_HELD;
        return park_settle(p, c, LEASE_TURN, now) ? PARK_KEPT : PARK_BACK;
    }
    if (!park_flag(c, one_step, LEASE_PARKED))
        return PARK_NOT_HELD;
    return park_settle(p, c, LEASE_PARKED, 0) ? PARK_KEPT : PARK_BACK;
}

/* Parks c (leased NONE, reset done) in this thread's slot. Returns false
 * when the caller must finish the check-in under the lock instead. */
static inline bool try_park(cpool *p, cpool_conn *c)
{
    if (p->stamp_idle)
        atomic_store_explicit(&c->available_since_ns, cpool__now(p),
                              memory_order_relaxed);
    /* Suspended or shrinking (the gate is shut): the locked path decides
     * (keep it available, or close it). */
    if (!fast_fit(p, c) || fast_idle(p, c)) {
        cpool__tl_park.conn = NULL;
        return false;
    }
    return park(p, c, false) == PARK_KEPT;
}

/* Timed lock-free leases: the histograms' samples are spaced in time, not
 * in count. Timing a lease costs two clock reads, as much as the rest of a
 * lock-free lease, so on a connection whose leases come less than
 * SAMPLE_SPACING_NS apart only one in about SAMPLE_SPACING_NS / (time per
 * lease) is timed, and never fewer than one in timing_sample; leases
 * further apart are all timed, where two clock reads cost under 1 %. The
 * time per lease is measured between the connection's timed leases
 * (sample_at_ns, set with sample_skip, which is then at least 1). */
#define SAMPLE_SPACING_NS 10000
static inline uint32_t sample_skip_next(const cpool *p, cpool_conn *c, int64_t now)
{
    uint32_t most = p->opts.timing_sample; /* >= 1 here */
    uint32_t next = 1; /* the first timed lease: the spacing is measured from it */
    if (c->sample_at_ns != 0) {
        int64_t per_lease = (now - c->sample_at_ns) / c->sample_skip;
        if (per_lease < SAMPLE_SPACING_NS)
            next = per_lease > 0 ? (uint32_t)(SAMPLE_SPACING_NS / per_lease) : most;
    }
    if (next > most)
        next = most;
    c->sample_at_ns = now;
    c->sample_skip = next;
    return next;
}

/* The lock-free lease timed for the histograms (sample_skip_next): out of
 * line, so that the other leases do not make room for its calls. */
static __attribute__((noinline, unused)) void lease_begin_timed(cpool *p, cpool_conn *c)
{
    int64_t now = cpool__now(p);
    c->sample_left = sample_skip_next(p, c, now) - 1;
    atomic_store_explicit(&c->leased_ns, now, memory_order_relaxed);
    cpool__bump(&c->cell.checkouts_ok); /* its use count */
    cpool__hist_add(&c->cell.wait, 0);
}

static inline void lease_begin(cpool *p, cpool_conn *c, int64_t start, bool reused,
                               const char *label)
{
    if (start == FAST_LEASE) {
        /* Lock-free: it never waited. Time the hold of the sampled ones
         * only (sample_skip_next; leased_ns 0: not timed). */
        if (p->opts.timing_sample != 0 && c->sample_left-- == 0) {
            lease_begin_timed(p, c);
            return;
        }
        atomic_store_explicit(&c->leased_ns, 0, memory_order_relaxed);
        cpool__bump(&c->cell.checkouts_ok); /* its use count */
        return;
    }
    /* A lease the thread did not re-take from its slot: its next check-in
     * starts a new turn (see try_park). */
    cpool__tl_park.conn = NULL;
    int64_t now = cpool__now(p);
    if (p->opts.leak_threshold_ms > 0) {
        /* Under mu (leak detection makes the pool take the locked paths):
         * the leak scan reads these under mu too. */
        if (cpool__tl_tid == 0)
            cpool__tl_tid = (uint64_t)gettid();
        c->holder_tid = cpool__tl_tid;
        snprintf(c->label, sizeof c->label, "%s", label != NULL ? label : "");
    }
    atomic_store_explicit(&c->leased_ns, now, memory_order_relaxed);
    cpool__bump(&c->cell.checkouts_ok);
    if (!reused)
        cpool__bump(&c->cell.fresh);
    cpool__hist_add(&c->cell.wait, start >= 0 ? now - start : 0);
}

/* Whether the validation policy pings c now: always, or when it has been
 * idle longer than validation_idle_ms (idleness and lifetime count the same
 * way: a limit is passed when it is exceeded, not reached). */
static inline bool wants_ping(const cpool *p, const cpool_conn *c)
{
    cpool_validation v = p->opts.validation;
    if (p->cx->ping == NULL || v == CPOOL_VALIDATE_NONE || v == CPOOL_VALIDATE_CHECK)
        return false;
    return v == CPOOL_VALIDATE_ALWAYS ||
           cpool__now(p) - atomic_load_explicit(&c->available_since_ns,
                                                memory_order_relaxed) >
               ms_to_ns(p->opts.validation_idle_ms);
}

/* True when a ping is due and the checkout's deadline (pool clock) has
 * already passed: the step does not run, and nothing is held against the
 * connection or the server -- the caller simply ran out of time. */
static inline bool no_time_to_ping(const cpool *p, bool ping, int64_t deadline)
{
    return ping && deadline != NO_DEADLINE && cpool__now(p) >= deadline;
}

/* The validation policy, outside mu, on a connection that was available:
 * the connector's cheap check, then the ping when `ping` (see wants_ping),
 * bounded by `deadline` (pool clock; NO_DEADLINE = none). 0 = hand it out;
 * otherwise ce says why it must be closed. */
static inline __attribute__((always_inline)) int
validate_conn(cpool *p, cpool_conn *c, bool ping, int64_t deadline, cpool_error *ce)
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
static inline int64_t fast_deadline(const cpool *p, int64_t start, int64_t timeout_ms)
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

/* The rest of take_parked_fast once c is HELD, when the re-take has
 * something to run (validation, the before_lease hook) or c is unfit: c,
 * or NULL. */
static inline __attribute__((always_inline)) cpool_conn *
take_parked_check(cpool *p, cpool_conn *c, int64_t timeout_ms, int64_t *start)
{
    /* The same validation as the slow path: a parked connection may have
     * died while it waited. */
    cpool_error ce;
    ce.code = 0;
    bool idle = false;
    bool usable = fast_fit(p, c) && !(idle = fast_idle(p, c));
    bool dead = false;
    if (usable) {
        bool ping = wants_ping(p, c);
        int64_t deadline = NO_DEADLINE;
        if (ping) {
            *start = cpool__now(p);
            deadline = fast_deadline(p, *start, timeout_ms);
            if (no_time_to_ping(p, ping, deadline)) {
                /* Left parked (its turn, if any, ends); the slow path
                 * fails the checkout. */
                atomic_store(&c->leased, LEASE_PARKED);
                return NULL;
            }
        }
        dead = validate_conn(p, c, ping, deadline, &ce) != 0;
    }
    bool hook_failed = false;
    if (usable && !dead && p->opts.hooks.before_lease != NULL) {
        memset(&ce, 0, sizeof ce);
        hook_failed = p->opts.hooks.before_lease(c, p->opts.hooks.ctx, &ce) != 0;
        if (hook_failed && ce.code == 0)
            ce.code = CPOOL_EIO;
    }
    if (usable && !dead && !hook_failed)
        return c;
    cpool__parked_unfit(p, c, idle, hook_failed, dead || hook_failed ? &ce : NULL);
    return NULL;
}

/* Takes this thread's parked connection, if it is still parked and fit.
 * When it had to be pinged and was not handed out, *start is when the
 * checkout began (pool clock), so that the slow path goes on with the same
 * deadline instead of a new one; else it is left alone. */
static inline __attribute__((always_inline)) cpool_conn *
take_parked_fast(cpool *p, int64_t timeout_ms, int64_t *start)
{
    cpool_conn *c = cpool__tl_park.conn;
    if (cpool__tl_park.serial != p->serial || c == NULL ||
        (!p->turns && atomic_load(&p->nwaiting) != 0))
        return NULL;
    /* Parked, or parked for a turn: the exchange from the flag read. (A
     * suspended pool shuts the gate, which fast_fit reads.) */
    unsigned parked = atomic_load_explicit(&c->leased, memory_order_relaxed);
    if (!lease_parked(parked) ||
        !atomic_compare_exchange_strong(&c->leased, &parked, LEASE_HELD)) {
        cpool__tl_park.conn = NULL; /* taken by someone else */
        return NULL;
    }
    /* Nothing to run: the fit checks alone. */
    if (p->take_direct && fast_fit(p, c) && !fast_idle(p, c))
        return c;
    return take_parked_check(p, c, timeout_ms, start);
}

#endif /* CPOOL_LEASE_H */
