/* core.h -- what the core's files share beyond pool_int.h: deadlines and
 * small inline helpers, and the functions one file defines for another
 * (all named cpool__*). See docs/design.md for the map of the files. */
#ifndef CPOOL_CORE_H
#define CPOOL_CORE_H

#include "pool_int.h"
#include "clock.h"

#include <stdatomic.h>
#include <time.h>

#define NO_DEADLINE INT64_MAX
/* lease_begin()'s `start` on the lock-free path: there is no checkout
 * clock there. */
#define FAST_LEASE INT64_MIN
/* After a capacity refusal the next attempt waits a little. */
#define CAPACITY_RETRY_MS 25
/* establishment: the new connection was stale (RETRY), or the after_connect
 * hook failed and closed it (HOOK, with the hook's error) */
enum { ESTABLISH_RETRY = 1, ESTABLISH_HOOK = 2 };
#define SWITCH_CLOSED 1        /* tenant switch: the connection was closed */

void cpool__check_fork_relock(cpool *p);
extern atomic_uint cpool__fork_epoch;
extern pthread_once_t cpool__atfork_once;
void cpool__init_monotonic_cond(pthread_cond_t *cv);
void cpool__register_atfork(void);
void cpool__registry_add(cpool *p);
void cpool__registry_remove(cpool *p);
void cpool__clear_relock(cpool *p, unsigned flags, const cpool_error *cause);
void cpool__cleared_error(const cpool *p, cpool_error *e);
void cpool__interrupt_marked_relock(cpool *p);
int cpool__start_maintenance_locked(cpool *p);
void cpool__abandon_locked(cpool *p, cpool_conn *c);
bool cpool__can_create_locked(const cpool *p);
void cpool__cancel_pending(cpool_conn *c);
void cpool__close_conn_relock(cpool *p, cpool_conn *c, int reason,
                              const cpool_error *cause);
void cpool__close_reclaimed_relock(cpool *p, cpool_conn *c);
void cpool__conn_free_locked(cpool *p, cpool_conn *c);
cpool_conn *cpool__conn_new_locked(cpool *p);
void cpool__emit_created_relock(cpool *p, const cpool_conn *c);
int cpool__establish_relock(cpool *p, cpool_conn *c, int64_t deadline,
                            bool for_checkout, bool caller_bound, cpool_error *e);
void cpool__fail_waiters_locked(cpool *p, int code);
extern atomic_uint_fast64_t cpool__pool_serial;
void cpool__grant_capacity_relock(cpool *p);
void cpool__kick_maintenance_locked(cpool *p);
void cpool__want_pool_establishment_locked(cpool *p);
void cpool__make_available_locked(cpool *p, cpool_conn *c);
typedef void (*cpool__hook_fn)(void);
extern _Atomic(cpool__hook_fn) cpool__post_pause;
bool cpool__barge_window_locked(const cpool *p, const waiter *head);
waiter *cpool__next_waiter_locked(const cpool *p);
int cpool__perished_locked(const cpool *p, const cpool_conn *c, int64_t now);
void cpool__put_back_locked(cpool *p, cpool_conn *c);
void cpool__return_parked_locked(cpool *p, cpool_conn *c);
/* This thread's parked connection, re-taken (leased HELD) but not to be
 * handed out: closed with its reason (or `idle`'s, or the hook's when
 * hook_failed, with `cause`), or given back as a check-in would when only
 * the gate was shut. Takes and releases mu. */
void cpool__parked_unfit(cpool *p, cpool_conn *c, bool idle, bool hook_failed,
                         const cpool_error *cause);
void cpool__set_state_locked(cpool *p, cpool_conn *c, conn_state s);
/* Which parked connections cpool__steal_parked_locked may take. */
typedef enum steal_which {
    STEAL_ANY,
    STEAL_PERISHED,   /* only perished ones (the maintenance thread) */
    STEAL_OUT_OF_TURN /* not one whose thread's handoff turn is still on */
} steal_which;
cpool_conn *cpool__steal_parked_locked(cpool *p, steal_which which, int *reason);
/* Whether the lock-free path (and with it handoff turns) may be used; call
 * when what decides it changes. */
void cpool__set_parking(cpool *p, bool can_park);
/* Sets the gate from state, generation, suspended and shrinking: after
 * every change of one of them, under mu, and before anything that relies on
 * the lock-free path seeing it (taking the parked connections). */
void cpool__gate_locked(cpool *p);
/* The pool's state changes (under mu) only here, which rewrites the gate. */
void cpool__pool_state_locked(cpool *p, cpool_state s);
/* cpuload.c: the early wake-ups' measure of other processes' CPU use. */
int cpool__cpu_sample(cpu_sample *s);
double cpool__cpu_others(const cpu_sample *before, const cpu_sample *after);
bool cpool__early_wake_decide(bool on, double others, long ncpu);
void cpool__adapt_turn_locked(cpool *p, int64_t waited);
/* maint.c: tells the background thread the turns need watching now. */
void cpool__watch_turns_locked(cpool *p);
service *cpool__svc_find_locked(cpool *p, const char *id);
void cpool__svc_release_locked(cpool *p, cpool_conn *c);
void cpool__unassign_locked(cpool_conn *c);
int cpool__unfit_reason_locked(const cpool *p, const cpool_conn *c, bool broken);
cpool_conn *cpool__affine_available_locked(const cpool *p, const tenant *t);
tenant *cpool__find_tenant_locked(const cpool *p, const char *name);
bool cpool__over_max_locked(const cpool *p);
/* Closes a connector handle: the before_close hook, then the connector.
 * Without mu. */
void cpool__close_native(cpool *p, void *native, uint64_t id, int reason);
/* A checkout of t may start: takes a token of its rate budget, or returns
 * false (CPOOL_ERATE, counted). */
bool cpool__tenant_take_token_locked(cpool *p, tenant *t);
bool cpool__tenant_allows_locked(const cpool *p, const tenant *t);
int cpool__tenant_switch_relock(cpool *p, cpool_conn *c, tenant *t, int64_t deadline,
                                cpool_error *ce);

static inline bool fork_pending(const cpool *p)
{
    return atomic_load_explicit(&cpool__fork_epoch, memory_order_relaxed) !=
           atomic_load_explicit(&p->fork_epoch, memory_order_relaxed);
}

/* The gate (struct cpool): bit 0 shut, the generation above it. */
#define GATE_SHUT 1u
static inline uint64_t gate_open(uint64_t generation)
{
    return generation << 1;
}

static inline void list_remove(conn_list *l, cpool_conn *c)
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

static inline void list_push_head(conn_list *l, cpool_conn *c)
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

static inline int64_t ms_to_ns(int64_t ms)
{
    if (ms > INT64_MAX / 2000000)
        return NO_DEADLINE / 2;
    return ms * 1000000;
}

static inline int64_t deadline_after(int64_t now, int64_t ms)
{
    return now + ms_to_ns(ms);
}

/* The connector works in real CLOCK_MONOTONIC time; the pool's clock may be
 * a test clock, so translate the remaining time. */
static inline int64_t real_deadline(const cpool *p, int64_t deadline)
{
    if (deadline == NO_DEADLINE)
        return 0;
    int64_t left = deadline - cpool__now(p);
    return cpool__mono_ns() + (left > 0 ? left : 1);
}

static inline struct timespec abs_real(int64_t left_ns)
{
    int64_t t = cpool__mono_ns() + left_ns;
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    return ts;
}


bool cpool__is_stale_locked(const cpool *p, const cpool_conn *c);
int64_t cpool__perish_now(const cpool *p);
double cpool__random_unit_locked(cpool *p);
void cpool__serve_waiter(cpool *p, waiter *w);
int cpool__svc_attach_locked(cpool *p, cpool_conn *c, const char *id);
void cpool__wq_remove_locked(cpool *p, waiter *w);
int64_t cpool__backoff_wake_locked(const cpool *p, int64_t deadline);
void cpool__unavailable_error_locked(const cpool *p, cpool_error *e);
void cpool__assign_locked(cpool *p, cpool_conn *c, tenant *t);

/* Leases of a connection so far (its statistics cell counts them). */
static inline uint64_t cpool__conn_uses(const cpool_conn *c)
{
    return atomic_load_explicit(&c->cell.checkouts_ok, memory_order_relaxed);
}

/* options.c */
unsigned cpool__options_set(const cpool_options *o);
int cpool__options_validate(const cpool_options *o, cpool_error *err);
int cpool__env_log_sink(cpool *p, cpool_options *o, cpool_error *err);

void cpool__counts_locked(const cpool *p, cpool_counts *out);
void cpool__stats_locked(cpool *p, cpool_stats *out);
void cpool__maintain_relock(cpool *p);
int cpool__open_into_pool_relock(cpool *p, int64_t until, cpool_error *e);
void cpool__mark_interrupts_locked(cpool *p, const service *svc, uint64_t upto_gen);

/* The circuit is open: establishments keep failing (see cpool__can_create_locked). */
static inline bool cpool__breaker_open(const cpool *p)
{
    return p->opts.breaker_threshold > 0 && p->fail_streak >= p->opts.breaker_threshold;
}

#endif /* CPOOL_CORE_H */
