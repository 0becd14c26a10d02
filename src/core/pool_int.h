/* pool_int.h -- the pool's internal structures, shared by the core's files.
 * Never installed.
 *
 * Locking: one mutex per pool, `mu`, guards everything marked "mu". A
 * second mutex, `ev_mu`, serialises event and log delivery; it is only ever
 * taken while holding `mu`, and `mu` is released right after, so events
 * reach subscribers in the order of the state changes they describe while
 * no callback ever runs under `mu`. Lock order: mu, then ev_mu.
 *
 * The lock contract, in function names: `foo_locked` needs `mu` held and
 * keeps it throughout, so its work is atomic; `foo_relock` needs `mu` and
 * returns with it, but releases it in between (an event, I/O, a wait), so
 * whatever the caller read before may be stale afterwards; `foo_unlock`
 * needs `mu` and returns without it. Take and drop `mu` only through
 * cpool__lock()/cpool__unlock() (and cpool__cond_timedwait()): builds with
 * CPOOL_LOCK_CHECKS record the owner, and every `_locked`/`_relock`
 * function asserts it holds the lock (CPOOL_ASSERT_HELD).
 */
#ifndef CPOOL_POOL_INT_H
#define CPOOL_POOL_INT_H

#include "cpool/cpool.h"
#include "cpool/cpool_connector.h"
#include "above.h"

#include <pthread.h>
#include <stdio.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define CONN_MAGIC 0x63706f6fu /* "cpoo": the struct belongs to some pool */
/* Waiter posts held back until mu is released; beyond this many, a post is
 * made at once, under mu (see cpool.post_q). */
#define CPOOL_POST_DEFER 8

/* Handoff turns shorter than this are not given at all: the pool hands off
 * as FIFO does, and the background thread stops watching for turns. */
#define TURN_FLOOR_NS 10000
#define TURN_PROMPT_NS 100000 /* see cpool.turn_prompt_ns */
/* The background thread's look for turns nobody came back for backs off
 * (maint.c, maintenance_sleep_relock): doubled at most this many times,
 * and never past turn_us. */
#define WATCH_SHIFT_MAX 4
/* A waiter woken early as the next to be served spins (yielding the CPU)
 * at most this long before it sleeps again (checkout.c, wait_unlock). */
#define NUDGE_SPIN_NS 200000
/* Which waiter is woken early (conn.c, nudge_next_locked): the head, or
 * one of the first NUDGE_WINDOW waiters that queued on the CPU of the
 * thread handing over, whose wake-up then stays on that CPU (one across
 * CPUs costs twenty times as much on a virtual machine: bench/wake_cost).
 * The one picked is served next, before those ahead of it; each waiter can
 * be passed so at most NUDGE_PASS_LIMIT times, and only while the queue is
 * at least NUDGE_PASS_MIN_TURNS turns deep (waiting checkouts /
 * maxPoolSize): a pass costs the passed waiter one turn, so it lengthens
 * that wait by at most an eighth. */
#define NUDGE_WINDOW 4
#define NUDGE_PASS_LIMIT 1
#define NUDGE_PASS_MIN_TURNS 8
/* early_wake = auto (cpuload.c): while checkouts wait, the background
 * thread measures every CPU_SAMPLE_NS how much CPU other processes used,
 * and stops the early wake-ups while that is over CPU_OTHERS_OFF of the
 * machine's CPUs; below CPU_OTHERS_ON they start again. */
#define CPU_SAMPLE_NS 100000000
#define CPU_OTHERS_OFF 0.25
#define CPU_OTHERS_ON 0.125

/* One measurement of CPU use (cpuload.c). */
typedef struct cpu_sample {
    int64_t at_ns;   /* monotonic; 0 = none yet */
    int64_t busy_ticks; /* the machine's busy time, all CPUs, in clock
                           ticks (_SC_CLK_TCK); -1 = unknown */
    int64_t own_ns;  /* this process's CPU time */
} cpu_sample;

/* A connection's state is the list it is on. An IN_USE connection whose
 * `leased` flag is already clear is being checked in (its reset runs outside
 * the lock); it still counts as in use. ORPHANED is a lease inherited across fork(): it no longer
 * counts anywhere and is abandoned when (if) it comes back. FREE structs wait
 * on the free list for reuse, so a stale handle never points at freed memory.
 */
typedef enum conn_state {
    CONN_PENDING = 0,
    CONN_AVAILABLE,
    CONN_IN_USE,
    CONN_ORPHANED,
    CONN_FREE
} conn_state;

/* The lease flag of a connection. PARKED: checked in on the fast path and
 * kept in the returning thread's slot (see "thread-affine fast path" in
 * lease.h); the connection stays on the in-use list but is available to
 * anyone who wins a compare-exchange PARKED -> HELD. TURN: parked the same
 * way while others wait, for its thread's handoff turn, which began at
 * turn_parked_ns; a waiter leaves it alone until that turn runs out. One
 * flag says both whether and how it is parked, so whoever reads it and
 * then wins the exchange from the value read took it as it judged it. */
enum {
    LEASE_NONE = 0,   /* the pool owns it */
    LEASE_HELD = 1,   /* a caller holds it */
    LEASE_ORPHAN = 2, /* held across fork() */
    LEASE_PARKED = 3, /* available, parked in a thread's slot */
    LEASE_TURN = 4    /* parked for its thread's handoff turn */
};

static inline bool lease_parked(unsigned flag)
{
    return flag == LEASE_PARKED || flag == LEASE_TURN;
}

typedef struct service service;
typedef struct cpool_conn cpool_conn;

/* A tenant of the pool; mu. Never freed before the pool. */
typedef struct tenant {
    struct tenant *next;
    char name[64];
    uint32_t max, min;
    uint32_t in_use;   /* connections assigned to its checkouts */
    uint32_t waiting;
    uint64_t checkouts_ok, limit_timeouts;
    uint64_t switched, affine; /* see cpool_tenant_stats */
    uint64_t checkouts, waits, rate_refusals, holds_exceeded, holds_reclaimed;
    cpool_histogram wait;
    cpool_tenant_budget budget;
    double tokens;      /* the rate's bucket */
    int64_t refill_at;  /* pool clock of the last refill */
    int64_t max_hold_ns; /* budget.max_hold_ms in ns; 0 = none */
} tenant;

/* Statistics cells. A connection's cell is written only by whoever owns the
 * connection at the time (the lease holder, or the pool under mu), with
 * relaxed load+store rather than read-modify-write, so counting adds no
 * shared cache line and no locked instruction to the hot path. A snapshot
 * sums the cells of live connections with relaxed loads; a closing
 * connection's cell is folded into the pool's under mu. */
typedef struct hist_cell {
    _Atomic uint64_t count, sum_ns, max_ns;
    _Atomic uint64_t b[CPOOL_HIST_BUCKETS];
} hist_cell;

typedef struct conn_cell {
    _Atomic uint64_t checkouts_ok; /* leases (a live connection's use count) */
    _Atomic uint64_t fresh;        /* ... of which on a connection established
                                      for that checkout (0 or 1 per connection) */
    _Atomic uint64_t validations, validation_failures;
    hist_cell wait, hold;
} conn_cell;

#define CPOOL_CACHE_LINE 64

struct cpool_conn {
    /* Fields the lock-free path touches come first, so that a checkout and
     * check-in stay within the first cache lines. Each connection starts a
     * cache line of its own (and the size rounds up to whole lines), so two
     * threads leasing neighbouring connections never write one line. */
    _Alignas(CPOOL_CACHE_LINE) uint32_t magic; /* CONN_MAGIC; immutable */
    atomic_uint leased;       /* LEASE_HELD while a caller holds the lease. Set under
                                 mu at checkout; checkin clears it with a
                                 compare-exchange before taking mu, so a
                                 double check-in is refused without the lock */
    cpool *pool;              /* owner; immutable */
    void *native;             /* connector handle; owned by the lease holder
                                 while in use, by the pool otherwise */
    uint64_t generation;      /* mu */
    int64_t expires_ns;       /* created + jittered max lifetime; INT64_MAX = never */
    uint32_t sample_left;     /* lock-free leases until the next timed one */
    uint32_t sample_skip;     /* ... counted from the latest timed one (lease.h) */
    bool interrupt_requested; /* clear(interrupt) reached it; mu */
    bool interrupted;         /* interrupt() was called; mu */
    bool close_deferred;      /* closed while pinned: last unpin frees; mu */
    bool probe;               /* the circuit breaker's probe; mu */
    atomic_bool recycle;      /* close at the next check-in or when found
                                 available ("recycled"); set under mu or by
                                 the lease holder, read without mu */
    _Atomic int64_t turn_parked_ns; /* handoff turns: pool clock when it was
                                 parked although others waited, so that its
                                 thread may take it again. Written before
                                 leased says LEASE_TURN, read only while it
                                 does */
    _Atomic int64_t leased_ns; /* pool clock at checkout (0: untimed lock-free
                                 lease); written by the holder, read by the
                                 leak scan */
    _Atomic int64_t available_since_ns; /* pool clock; written by whoever
                                 makes it available, read with relaxed loads */
    conn_cell cell;           /* counters first: next to the hot fields */

    cpool_conn *prev, *next;  /* links of the list of its state; mu */
    conn_state state;         /* mu */
    uint64_t id;              /* mu (set at creation) */
    service *svc;             /* load-balanced mode; mu */
    int64_t created_ns;       /* pool clock */
    int64_t sample_at_ns;     /* pool clock: the latest timed lock-free lease
                                 began; 0 = none yet (holder only) */
    int64_t kept_alive_ns;    /* last background check (pool clock); mu */
    int cancel_fd;            /* pending: eventfd the connector polls; mu */
    int pins;                 /* interrupt() calls in flight; mu */
    uint64_t holder_tid;      /* kernel thread id of the holder */
    char label[64];           /* the checkout's label */
    int64_t leak_lease;       /* leased_ns of the lease last reported; mu */
    int64_t hold_lease;       /* ... reported for its tenant's max_hold_ms; mu */
    tenant *tenant;           /* whose checkout holds it (or establishes it); mu */
    tenant *last_tenant;      /* whose lease used it last; NULL = none since it
                                 was established or discarded; mu */
    bool reclaimed;           /* taken back from its holder: closed, not
                                 abandoned, when it returns; mu */
    int closed_reason;        /* why it was closed, for a deferred close; mu */
};

typedef struct conn_list {
    cpool_conn *head, *tail;
    uint32_t n;
} conn_list;

/* Load-balanced mode: one entry per service id with live connections. */
struct service {
    service *next;
    char id[CPOOL_SERVICE_ID_MAX];
    uint64_t generation;
    uint32_t count; /* connections whose handshake reached this service */
};

/* The totals the derived figures are computed from, at one moment. */
typedef struct stats_mark {
    int64_t at; /* pool clock */
    uint64_t checkouts, checkouts_ok, reused, validations, validation_failures;
    cpool_histogram wait, hold;
} stats_mark;

/* A checkout waiting in the FIFO queue. Lives on the waiting thread's stack.
 * Whoever serves or fails it does so under mu, dequeues it and posts its
 * semaphore exactly once: the wake-up goes to that one thread, and a waiter
 * handed a connection returns without taking mu again. */
typedef struct waiter {
    struct waiter *prev, *next;
    sem_t sem;
    cpool_conn *conn;  /* handed over: in use (establish = false) or pending */
    bool establish;    /* conn is pending and this waiter establishes it */
    int fail;          /* CPOOL_ECLEARED / CPOOL_ECLOSED set by clear/close */
    tenant *tenant;    /* the checkout's tenant, or NULL */
    int64_t since;     /* pool clock when it joined the queue */
    bool queued;
    atomic_int nudged; /* woken early to spin, as the next to be served
                          (turns only, see cpool__make_available_locked) */
    int cpu;           /* turns: the CPU it queued on (sched_getcpu), or -1 */
    int passed;        /* waiters served before it though queued after it
                          (at most NUDGE_PASS_LIMIT) */
    atomic_int done;   /* 1 once served or failed: published with release
                          before the post, read with acquire after the wait */
    /* The checkout's cancellation token (cancel.c): registered while it may
     * wait, so that a trigger can wake it. The links are the token's. */
    cpool_cancel *cancel;
    struct waiter *cnext, *cprev;
    bool registered;
    bool async;        /* an asynchronous checkout's: served by a completion,
                          not a post; cancelled through the background thread */
    struct async_link *alink; /* async: its request's link */
    int64_t deadline;  /* async: when the background thread ends its wait */
    bool from_away;    /* turns: its thread came back late from elsewhere
                          (twice in a row, lease.h note_return): while it is
                          the head and young, others like it may take a
                          connection left free ahead of it */
    atomic_int retry;  /* woken to take a connection left free (conn.c,
                          wake_for_free_locked); mu clears it */
    /* Posts to sem, counted from sem_init on and never reset. Every post
     * is counted before it is made, and its waiter takes every post counted
     * before it destroys sem (waiter_release in checkout.c): so no post can
     * still be on its way to a semaphore that is gone, wherever it was made
     * from (after mu was released, see post_locked in conn.c). */
    unsigned posts;    /* its server's, an early wake-up's, a free
                          connection's; mu */
    unsigned cposts;   /* its cancellation token's; the token's mutex */
    unsigned took;     /* taken by its own thread; that thread only */
} waiter;

/* An asynchronous checkout's place in its completion queue (async.c); the
 * rest of the request is checkout.c's. */
typedef enum async_phase {
    ASYNC_SERVED = 1, /* the pool served or failed its wait: finish it */
    ASYNC_DONE        /* finished: run the callback */
} async_phase;

typedef struct async_link {
    struct async_link *next;
    struct async_link *next_job; /* the pool's helper jobs; mu */
    async_phase phase;
    atomic_bool claimed; /* set by the first to push it SERVED (a serve or a
                            cancel) for one stay in the queue; mu clears it */
    cpool_async *q;
    cpool_async_fn cb;
    void *arg;
    cpool_conn *conn; /* ASYNC_DONE: the lease, or NULL */
    int rc;
    cpool_error err;
    /* The request's owner (checkout.c): finish a served request on the
     * loop's thread -- true when it is done now, false when a helper took
     * it or it waits again -- and run its callback, freeing it. Pointers,
     * so that this queue calls no file above it. */
    bool (*finish)(struct async_link *l);
    void (*deliver)(struct async_link *l);
} async_link;

/* async.c: queue a request for cpool_async_process (any thread, any lock:
 * the queue's mutex is taken last); count an accepted one. */
void cpool__async_push(async_link *l, async_phase phase);
void cpool__async_accepted(cpool_async *q);
/* async.c: a cancellation reached an async waiter (called under the
 * token's mutex): it goes to its loop, unless a serve pushed it first. */
void cpool__async_kick(async_link *l);



/* cancel.c: a waiter joins its token's list before it waits and leaves it
 * before its memory goes; register returns false when the token was
 * triggered already (the checkout fails at once). */
bool cpool__cancel_register(waiter *w);
void cpool__cancel_unregister(waiter *w);

struct cpool {
    /* Cache-line aligned (and sized), so that no other object shares a line
     * with the fields the lock-free path reads. */
    _Alignas(CPOOL_CACHE_LINE) cpool *reg_prev;
    cpool *reg_next; /* registry of live pools; g_registry_mu */
    pthread_mutex_t mu;
    _Atomic uintptr_t mu_owner; /* CPOOL_LOCK_CHECKS: the thread holding mu */
    pthread_mutex_t ev_mu; /* see the top of this file */

    /* Immutable after create. */
    cpool_options opts;    /* copy; strings point at the copies below */
    char *target;
    char *address;
    char *name;            /* options.name, else a copy of the address */
    char *host;            /* serverHost for log records */
    int port;              /* serverPort; -1 when none (unix socket) */
    const cpool_connector *cx;
    void *cx_ctx;
    FILE *log_file;        /* CPOOL_LOG_PATH, opened for this pool */
    bool owns_cx_ctx;      /* made by connector->ctx_new(); freed at destroy */
    bool stamp_idle;       /* available_since_ns is needed (idle limits) */
    bool tick_clock;       /* lifetimes on the lock-free path use tick_ns
                              (lease.h, lifetime_now) */
    bool observed;         /* a subscriber or a log sink is set */
    bool can_park;         /* the lock-free fast path may be used */
    bool park_direct;      /* a check-in may park in one step (cpool_checkin) */
    bool take_direct;      /* a re-take has nothing to run: no validation,
                              no before_lease hook (take_parked_fast) */
    bool turns;            /* CPOOL_HANDOFF_TURNS in effect (cpool__set_parking) */
    /* Runtime control (control.c): written under mu, read by the lock-free
     * paths too. */
    atomic_bool suspended; /* cpool_suspend(): checkouts wait, nothing is handed */
    atomic_bool shrinking; /* a resize left more connections than the maximum:
                              check-ins take the locked path, which closes */
    _Atomic uint32_t live_min; /* opts.min_pool_size, for the lock-free path */
    /* The lock-free path's gate, one word for what it must know of the pool
     * (cpool__gate_locked): gate_open(generation) while the pool is ready,
     * neither suspended nor shrinking; GATE_SHUT is set otherwise. A
     * connection of the current generation may be parked or re-taken
     * without the lock when the gate equals gate_open(its generation). On
     * this read-mostly line, not beside state and generation, which share
     * theirs with what mu guards. */
    _Atomic uint64_t gate;
    int64_t turn_ns;       /* options.turn_us in ns */
    int64_t turn_prompt_ns; /* min(turn_ns, TURN_PROMPT_NS): a thread back for
                              its parked connection within this long came
                              back at once; and how often, at most, the
                              background thread watches turns */
    int64_t turn_wait_ns;  /* options.turn_wait_us in ns */
    _Atomic int64_t turn_eff_ns; /* a turn's length now, <= turn_ns
                                    (cpool__adapt_turn_locked); below
                                    TURN_FLOOR_NS no turn is given */
    uint32_t turn_uses;    /* options.turn_uses */
    uint64_t serial;       /* unique per pool in this process */
    unsigned options_set;  /* CPOOL_OPT_* bits for POOL_CREATED */

    /* Guarded by mu; state, generation and nwaiting are also read without
     * it by the fast path, hence atomic. */
    _Atomic(cpool_state) state;
    _Atomic(uint64_t) generation;
    uint64_t next_id;
    conn_list pending, available, in_use, orphans, free_list;
    waiter *wq_head, *wq_tail;
    waiter *wq_picked; /* turns: the waiter picked to be served next, woken
                          early when wake_early (conn.c, nudge_next_locked);
                          NULL once it left the queue */
    bool wake_early;     /* turns: the picked waiter is woken early (option
                            early_wake; with auto, the background thread's
                            latest decision, maint.c) */
    long ncpu;           /* online CPUs, at creation */
    cpu_sample cpu_prev; /* early_wake auto: the background thread's latest
                            measurement */
    double cpu_others;   /* ... CPUs other processes used, -1 = unknown */
    uint64_t st_early_wakeups; /* waiters woken early, for the statistics */
    uint64_t st_barges;  /* checkouts that took a connection left free
                            ahead of queued ones (turns, conn.c) */
    atomic_uint nwaiting;
    service *services;
    cpool_error clear_cause;
    bool has_clear_cause;
    atomic_uint fork_epoch; /* written under mu; read without it too */

    /* Statistics kept under mu; connection cells are folded into `retired`
     * when a connection closes. */
    uint64_t st_created, st_ready, st_connect_failures;
    uint64_t st_capacity_refusals; /* CPOOL_FAIL_CAPACITY establishments */
    int64_t cap_retry_at;  /* no establishment before this after a capacity
                              refusal (pool clock); 0 = none */
    uint64_t st_closed[CPOOL_CLOSE_REASON_SLOTS];
    uint64_t st_failures[CPOOL_ERROR_SLOTS];
    conn_cell retired;
    hist_cell connect_hist;
    uint64_t rng; /* xorshift state for lifetime jitter; mu */

    /* Backoff and circuit breaker; mu. */
    uint32_t fail_streak;   /* establishment failures in a row */
    int64_t retry_at;       /* pool clock: no new establishment before; 0 = none */
    int64_t last_fail_at;
    cpool_error last_fail;
    bool probing;           /* circuit open: the one probe is in flight */
    int64_t next_probe_at;  /* the background thread's next server probe
                               (pool clock), while establishments fail */
    uint64_t st_probes, st_probes_ok; /* server probes run, and answered */
    uint64_t st_keepalives, st_keepalive_failures;
    uint64_t breaker_opens;
    uint64_t leaks_suspected, leaks_reclaimed;
    uint64_t st_recycles;   /* cpool_recycle() calls */
    /* cpool_run(): rare, so shared atomics. */
    _Atomic uint64_t st_retries, st_retries_ok, st_retries_exhausted;
    /* Derived figures (stats.c): the totals at the start and the end of the
     * last complete interval; mu. */
    stats_mark mark_prev, mark_cur;

    /* Tenants; mu. `tenants` is set before ready (see cpool_tenant_set). */
    tenant *tenant_list, *tenant_tail;
    bool tenants;
    bool tenant_holds;      /* some tenant has a max_hold_ms */

    /* Asynchronous checkouts (checkout.c); mu. What may block runs on
     * helper threads the background thread starts (never the loop's), which
     * take jobs from this list and leave after a while without any. */
    uint32_t async_waiting;  /* async waiters in the queue */
    int64_t async_next;      /* no async wait ends before this (pool clock;
                                NO_DEADLINE: none known): the background
                                thread scans the queue only from then */
    uint32_t async_helpers;  /* helper threads running: destroy waits */
    uint32_t async_idle;     /* ... of which waiting for a job */
    struct async_link *job_head, *job_tail;
    pthread_cond_t async_cv; /* a job, or the pool closing */
    void *(*async_helper)(void *pool); /* checkout.c's helper body */

    /* Graceful shutdown; mu. */
    bool draining;          /* cpool_drain() or cpool_shutdown() began */
    bool shutting_down;     /* cpool_shutdown() is under way (or done) */
    uint32_t drain_reclaimed; /* leases reclaimed while draining */
    uint32_t drain_at_start;  /* leases out when the drain began */
    int64_t drain_t0;         /* when it began (monotonic) */
    bool ever_ready;        /* cpool_ready() succeeded once; mu */
    pthread_cond_t drain_cv; /* a lease came back while draining */

    /* Maintenance thread; guarded by mu. */
    pthread_t maint;
    pthread_cond_t maint_cv;
    bool maint_running;
    bool maint_kick; /* run again at once */
    bool pool_establish; /* the next run makes one establishment bound by
                            connect_timeout_ms alone (maint.c) */
    bool turn_watch; /* the thread wakes every turn_ns to hand waiters the
                        connections whose turn ended (maint.c) */
    uint8_t watch_shift; /* ... its interval doubled this many times: looks
                            in a row that found nothing (at most
                            WATCH_SHIFT_MAX) */
    _Atomic int64_t tick_ns; /* pool clock at the last maintenance run: the
                                lock-free path's clock for lifetimes */

    /* Posts to waiters' semaphores decided under mu and made once mu is
     * released (post_locked in conn.c, cpool__unlock): a thread woken under
     * the lock would preempt the one holding it, and everybody needing the
     * lock would wait for that thread to run again. A line of their own:
     * written under mu at every handover, away from what the lock-free
     * path reads. */
    _Alignas(CPOOL_CACHE_LINE) waiter *post_q[CPOOL_POST_DEFER];
    unsigned npost; /* mu */
};

/* error.c */
int cpool__err(cpool_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* config.c: the layers of cpool.h ("configuration") over `code`; *target
 * (malloc'd, NULL when code has none) is the target without the pool's
 * parameters. */
int cpool__options_resolve(const cpool_options *code, cpool_options *eff, char **target,
                           cpool_error *err);

/* stats.c */
void cpool__hist_add(hist_cell *h, int64_t ns);
void cpool__histogram_add(cpool_histogram *h, int64_t ns); /* not atomic: under mu */
/* Starts the first interval of the derived figures (at creation). */
void cpool__stats_start_locked(cpool *p);
/* Closes the current interval when it is due (the background thread). */
void cpool__stats_tick_locked(cpool *p);
void cpool__cell_fold(conn_cell *into, conn_cell *from); /* and zeroes `from` */
static inline void cpool__bump(_Atomic uint64_t *x)
{
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Whether handoff turns are given now: in turns mode, and not shrunk below
 * TURN_FLOOR_NS by long waits (then the pool hands off as FIFO does). */
static inline bool cpool__turns_given(const cpool *p)
{
    return p->turns &&
           atomic_load_explicit(&p->turn_eff_ns, memory_order_relaxed) >= TURN_FLOOR_NS;
}

/* tenants.c: a copy of every tenant's statistics, in declaration order
 * (the unnamed one first); *out is malloc'd (NULL with 0 tenants). */
typedef struct tenant_row {
    char name[64];
    cpool_tenant_stats st;
} tenant_row;
size_t cpool__tenant_rows(cpool *p, tenant_row **out);

/* lifecycle.c: range and consistency checks of resolved options (not the
 * connector). */
int cpool__options_check(const cpool_options *o, cpool_error *err);

/* events.c */
int64_t cpool__now(const cpool *p);
int64_t cpool__now_coarse(const cpool *p);
/* Emits ev, releasing mu: takes ev_mu first so delivery order follows the
 * order of state changes. Called with mu held; returns with mu released. */
void cpool__emit_unlock(cpool *p, const cpool_event *ev);
/* Same, but returns with mu held again. */
void cpool__emit_relock(cpool *p, const cpool_event *ev);
void cpool__event_init(const cpool *p, cpool_event *ev, cpool_event_type type);

/* Re-entry from a callback: a call into the pool from its own event or log
 * callback would wait for the lock the delivery holds. The entry points
 * that may emit refuse it with CPOOL_ESTATE (cpool__callback_err). */
bool cpool__in_callback(const cpool *p);
/* Reports cpool_env_warnings() for a new pool: WARN records to its log
 * sink, or once per process on stderr when it has none. */
void cpool__env_warn(cpool *p);
int cpool__callback_err(const cpool *p, cpool_error *err, const char *what);

/* CPOOL_LOG / CPOOL_LOG_PATH as cpool_create() would take them. */
int cpool__env_log_check(const cpool_options *o, cpool_error *err);

/* ------------------------------------------------------------ the lock */

#ifndef CPOOL_LOCK_CHECKS
#define CPOOL_LOCK_CHECKS 0
#endif

static inline void cpool__note_owner(cpool *p, bool held)
{
#if CPOOL_LOCK_CHECKS
    atomic_store_explicit(&p->mu_owner, held ? (uintptr_t)pthread_self() : 0,
                          memory_order_relaxed);
#else
    (void)p;
    (void)held;
#endif
}

static inline void cpool__lock(cpool *p)
{
    pthread_mutex_lock(&p->mu);
    cpool__note_owner(p, true);
}

/* Releases mu, then makes the posts held back while it was held. */
void cpool__unlock_posting(cpool *p);
/* Makes the posts held back, mu held. */
void cpool__post_now_locked(cpool *p);

static inline void cpool__unlock(cpool *p)
{
    cpool__note_owner(p, false);
    if (p->npost != 0) {
        cpool__unlock_posting(p);
        return;
    }
    pthread_mutex_unlock(&p->mu);
}

/* pthread_cond_timedwait on mu, keeping the owner record true. */
static inline int cpool__cond_timedwait(cpool *p, pthread_cond_t *cv,
                                        const struct timespec *until)
{
    if (p->npost != 0)
        cpool__post_now_locked(p);
    cpool__note_owner(p, false);
    int rc = pthread_cond_timedwait(cv, &p->mu, until);
    cpool__note_owner(p, true);
    return rc;
}

/* What the layers above the core may use: above.h. */

#if CPOOL_LOCK_CHECKS
/* A broken lock contract is a bug in the core: checked builds stop there. */
void cpool__lock_violation(const char *func, const char *file, int line);
#define CPOOL_ASSERT_HELD(p)                                                   \
    ((atomic_load_explicit(&(p)->mu_owner, memory_order_relaxed) ==            \
      (uintptr_t)pthread_self())                                               \
         ? (void)0                                                             \
         : cpool__lock_violation(__func__, __FILE__, __LINE__))
#else
#define CPOOL_ASSERT_HELD(p) ((void)0)
#endif

#endif /* CPOOL_POOL_INT_H */
