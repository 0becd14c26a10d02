/* cpool_bench.c -- checkout/checkin throughput, checkout latency and
 * fairness of cpool, side by side with a naive mutex+condvar pool and APR's
 * apr_reslist, on the same workload in the same process.
 *
 * One operation is: checkout, hold the lease for W microseconds (busy-spin
 * on CLOCK_MONOTONIC, so the holder keeps its core as real work would),
 * checkin. T threads share a pool of P connections. Every pool is measured
 * for every configuration of the matrix T x P x W, one after the other, so
 * that the ratios between pools come from the same minute on the same
 * machine: on a small, shared machine the ratios are the meaningful figures,
 * the absolute numbers much less so.
 *
 * What is recorded, per thread and without allocating on the hot path:
 *  - the number of completed operations;
 *  - the latency of every checkout in a log-linear histogram (exact below
 *    128 ns, then 64 buckets per power of two: < 1.6 % relative error);
 *  - overtakes: for each checkout, how many checkouts that started after it
 *    returned before it (a lower bound, see record_fifo()); the mean and the
 *    largest over all checkouts; only measured when T > P, where checkouts
 *    can wait;
 *  - heap allocations made by the thread (glibc builds; see the allocation
 *    counter below).
 * Before the timed window, an untimed warm-up lets every thread complete
 * one operation (see PHASE_WARMUP). Run with --help for the flags; the
 * method and a run on the development machine are in docs/benchmarks.md.
 */
#include "cpool/cpool.h"
#include "cpool/cpool_mem.h"
#include "mem_noreset.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#ifdef CPOOL_BENCH_HAVE_APR
#include <apr_general.h>
#include <apr_pools.h>
#include <apr_reslist.h>
#include <apu_version.h>
#endif

/* ------------------------------------------------------------ allocations */

/* Heap allocations of the calling thread so far (alloc_count.c); counted
 * only where BENCH_COUNT_ALLOCS says so. */
#include "alloc_count.h"

/* ------------------------------------------------------------------ clock */

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Cost of one now_ns() call. Every operation reads the clock twice around
 * the checkout in every pool, so this much is part of each figure; it is
 * printed so that the reader can judge the uncontended numbers. */
static double clock_cost_ns(void)
{
    enum { N = 200000 };
    volatile int64_t sink = 0;
    int64_t t0 = now_ns();
    for (int i = 0; i < N; i++)
        sink += now_ns();
    (void)sink;
    return (double)(now_ns() - t0) / N;
}

/* -------------------------------------------------------------- histogram */

#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS) /* values below this are exact */
#define HIST_HALF (HIST_SUB / 2)       /* buckets per power of two above */
#define HIST_BUCKETS (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_HALF)

static inline unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned e = msb - (HIST_SUB_BITS - 1); /* v >> e lies in [64, 128) */
    return HIST_SUB + (e - 1) * HIST_HALF + (unsigned)((v >> e) - HIST_HALF);
}

/* Highest value that falls into bucket i: percentiles are reported
 * conservatively, as HDR histograms do. */
static uint64_t hist_upper(unsigned i)
{
    if (i < HIST_SUB)
        return i;
    unsigned k = i - HIST_SUB;
    unsigned e = k / HIST_HALF + 1;
    uint64_t mant = k % HIST_HALF + HIST_HALF;
    return ((mant + 1) << e) - 1;
}

/* Value at quantile q (0 < q <= 1) of a histogram holding n samples. */
static uint64_t hist_quantile(const uint64_t *h, uint64_t n, double q, uint64_t max)
{
    if (n == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)n);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h[i];
        if (seen >= rank) {
            uint64_t v = hist_upper(i);
            return v < max ? v : max;
        }
    }
    return max;
}

/* ------------------------------------------------------------------ pools */

/* The pools behind one small interface, so that the worker loop is
 * the same code for all of them (one indirect call each way, for all). */
typedef struct pool_impl {
    const char *name;
    int (*open)(unsigned conns, void **self, char *msg, size_t len);
    int (*checkout)(void *self, void **lease); /* 0 = success */
    int (*checkin)(void *self, void *lease);   /* 0 = success */
    void (*close)(void *self);
} pool_impl;

/* (a) cpool over the in-memory connector: no subscriber, default
 * maintenance, maxPoolSize = P, no wait-queue timeout. */
typedef struct bench_cpool {
    cpool_mem *mem;
    cpool *pool;
} bench_cpool;

static void cp_close(void *self)
{
    bench_cpool *b = self;
    cpool_destroy(b->pool);
    cpool_mem_destroy(b->mem);
    free(b);
}

static uint32_t g_turn_wait_us; /* --turn-wait-us; 0 = the pool's default */
static const char *g_early_wake; /* --early-wake; NULL = the pool's default */

static int cp_open_mode(unsigned conns, cpool_handoff handoff, bool noreset, void **self,
                        char *msg, size_t len)
{
    bench_cpool *b = calloc(1, sizeof *b);
    cpool_error err = {0};
    if (!b) {
        snprintf(msg, len, "out of memory");
        return -1;
    }
    if (cpool_mem_create(&b->mem) != 0) {
        snprintf(msg, len, "cpool_mem_create failed");
        free(b);
        return -1;
    }
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.connector = noreset ? bench_mem_noreset_connector() : cpool_mem_connector();
    o.connector_ctx = b->mem;
    o.target = "mem://bench";
    o.max_pool_size = conns;
    o.wait_queue_timeout_ms = 0;
    o.handoff = handoff;
    if (g_turn_wait_us > 0)
        o.turn_wait_us = g_turn_wait_us;
    int rc = g_early_wake != NULL ? cpool_options_set(&o, "early_wake", g_early_wake, &err) : 0;
    if (rc == 0)
        rc = cpool_create(&o, &b->pool, &err);
    if (rc == 0)
        rc = cpool_ready(b->pool, &err);
    if (rc != 0) {
        snprintf(msg, len, "%s: %s", cpool_err_name(rc), err.message);
        cp_close(b);
        return -1;
    }
    *self = b;
    return 0;
}

/* cpool as configured by default (handoff turns), and in CMAP's strict
 * FIFO handoff. */
static int cp_open(unsigned conns, void **self, char *msg, size_t len)
{
    return cp_open_mode(conns, CPOOL_HANDOFF_TURNS, false, self, msg, len);
}

static int cp_open_fifo(unsigned conns, void **self, char *msg, size_t len)
{
    return cp_open_mode(conns, CPOOL_HANDOFF_FIFO, false, self, msg, len);
}

static int cp_open_noreset(unsigned conns, void **self, char *msg, size_t len)
{
    return cp_open_mode(conns, CPOOL_HANDOFF_TURNS, true, self, msg, len);
}

static int cp_checkout(void *self, void **lease)
{
    bench_cpool *b = self;
    cpool_error err; /* only written on failure */
    cpool_conn *conn;
    int rc = cpool_checkout(b->pool, -1, &conn, &err);
    *lease = conn;
    return rc;
}

static int cp_checkin(void *self, void *lease)
{
    bench_cpool *b = self;
    cpool_error err;
    return cpool_checkin(b->pool, lease, 0, &err);
}

/* (b) The pool most people would write first: one mutex, one condition
 * variable, a stack of P slots. Checkout waits while the stack is empty;
 * checkin pushes and signals one waiter. Not fair: a thread that checks in
 * and immediately checks out again can take the slot before the waiter it
 * just woke gets the mutex. */
typedef struct naive_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned n;
    void **slots;
    char *storage; /* the dummy resources */
} naive_pool;

static void naive_close(void *self)
{
    naive_pool *p = self;
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->slots);
    free(p->storage);
    free(p);
}

static int naive_open(unsigned conns, void **self, char *msg, size_t len)
{
    naive_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->slots = calloc(conns, sizeof *p->slots)) ||
        !(p->storage = calloc(conns, 64))) {
        if (p) {
            free(p->slots);
            free(p);
        }
        snprintf(msg, len, "out of memory");
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (unsigned i = 0; i < conns; i++)
        p->slots[i] = p->storage + (size_t)i * 64;
    p->n = conns;
    *self = p;
    return 0;
}

static int naive_checkout(void *self, void **lease)
{
    naive_pool *p = self;
    pthread_mutex_lock(&p->mu);
    while (p->n == 0)
        pthread_cond_wait(&p->cv, &p->mu);
    *lease = p->slots[--p->n];
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static int naive_checkin(void *self, void *lease)
{
    naive_pool *p = self;
    pthread_mutex_lock(&p->mu);
    p->slots[p->n++] = lease;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

#ifdef CPOOL_BENCH_HAVE_APR
/* (c) apr_reslist with min = smax = hmax = P, no ttl, no acquire timeout.
 * A resource is a small block from the reslist's pool; the destructor has
 * nothing to free because the pool owns the memory. */
typedef struct bench_apr {
    apr_pool_t *pool;
    apr_reslist_t *rl;
} bench_apr;

static apr_status_t apr_res_make(void **res, void *params, apr_pool_t *pool)
{
    (void)params;
    *res = apr_palloc(pool, 64);
    return *res ? APR_SUCCESS : APR_ENOMEM;
}

static apr_status_t apr_res_drop(void *res, void *params, apr_pool_t *pool)
{
    (void)res;
    (void)params;
    (void)pool;
    return APR_SUCCESS;
}

static void ar_close(void *self)
{
    bench_apr *b = self;
    if (b->rl)
        apr_reslist_destroy(b->rl);
    if (b->pool)
        apr_pool_destroy(b->pool);
    free(b);
}

static int ar_open(unsigned conns, void **self, char *msg, size_t len)
{
    bench_apr *b = calloc(1, sizeof *b);
    char buf[120];
    if (!b) {
        snprintf(msg, len, "out of memory");
        return -1;
    }
    apr_status_t st = apr_pool_create(&b->pool, NULL);
    if (st == APR_SUCCESS)
        st = apr_reslist_create(&b->rl, (int)conns, (int)conns, (int)conns, 0,
                                apr_res_make, apr_res_drop, NULL, b->pool);
    if (st != APR_SUCCESS) {
        snprintf(msg, len, "apr_reslist_create: %s", apr_strerror(st, buf, sizeof buf));
        ar_close(b);
        return -1;
    }
    apr_reslist_timeout_set(b->rl, 0); /* 0 = wait forever */
    *self = b;
    return 0;
}

static int ar_checkout(void *self, void **lease)
{
    bench_apr *b = self;
    return apr_reslist_acquire(b->rl, lease) == APR_SUCCESS ? 0 : -1;
}

static int ar_checkin(void *self, void *lease)
{
    bench_apr *b = self;
    return apr_reslist_release(b->rl, lease) == APR_SUCCESS ? 0 : -1;
}
#endif

enum { POOL_CPOOL, POOL_FIFO, POOL_NAIVE, POOL_APR, POOL_NORESET, POOL_COUNT };

static const pool_impl pool_impls[POOL_COUNT] = {
    {"cpool", cp_open, cp_checkout, cp_checkin, cp_close},
    {"cpool-fifo", cp_open_fifo, cp_checkout, cp_checkin, cp_close},
    {"naive", naive_open, naive_checkout, naive_checkin, naive_close},
#ifdef CPOOL_BENCH_HAVE_APR
    {"apr", ar_open, ar_checkout, ar_checkin, ar_close},
#else
    {"apr", NULL, NULL, NULL, NULL},
#endif
    {"cpool-noreset", cp_open_noreset, cp_checkout, cp_checkin, cp_close},
};

/* ------------------------------------------------------------------ runs */

/* A run's phases. After the start barrier the threads work but record
 * nothing (WARMUP) until every one of them has completed an operation:
 * with many more threads than cores, the threads released together do not
 * all get a CPU at once, and the first ones to run would otherwise collect
 * uncontended operations for milliseconds while the others have not begun,
 * which skews the per-thread counts (fairness) of even a perfectly fair
 * pool. Then MEASURE for the timed window, then STOP. */
enum { PHASE_WARMUP, PHASE_MEASURE, PHASE_STOP };

/* Shared by the threads of one measurement. The fields written during the
 * run each get their own cache line so that they do not slow one another. */
typedef struct run {
    const pool_impl *impl;
    void *pool;
    int64_t hold_ns;
    bool hold_sleep;    /* sleep through the hold instead of spinning */
    int64_t think_ns;   /* sleep after each check-in, outside the lease */
    uint64_t fixed_ops; /* > 0: every thread does exactly this many ops */
    int64_t measure_t0; /* when the timed window began (written before the
                           phase switch, read after it) */
    bool fifo;          /* measure overtakes */
    alignas(64) atomic_uint ready;  /* threads at the start barrier */
    alignas(64) atomic_bool go;     /* the barrier opens */
    alignas(64) atomic_uint warm;   /* threads that completed an operation */
    alignas(64) atomic_int phase;   /* PHASE_* */
    alignas(64) atomic_uint_fast64_t start_seq;
    alignas(64) atomic_uint_fast64_t done_seq;
} run;

/* Per-second fairness looks at the first MAX_SECONDS seconds of a window. */
#define MAX_SECONDS 60

typedef struct worker {
    alignas(64) run *r;
    uint64_t *hist;
    uint64_t ops;
    uint64_t per_sec[MAX_SECONDS]; /* ops in each whole second of the window */
    uint64_t overtakers; /* sum over the thread's checkouts */
    uint64_t max_overtakers;
    uint64_t allocs;
    uint64_t max_ns;
    int error;
    pthread_t tid;
} worker;

/* Overtakes. Before it begins, a checkout takes ticket s from the start
 * sequence (1, 2, ...); when it returns it takes rank c from the completion
 * sequence. At most s - 1 checkouts started before it, so at least c - s of
 * the c - 1 that returned before it started after it: c - s is a lower
 * bound of the number of checkouts that overtook it, exact when every
 * earlier starter has returned (in a FIFO pool it is then 0).
 * This is cheap (two atomics per op, outside the timed checkout) but
 * approximate: a thread can be preempted between taking its ticket and
 * reaching the pool, and between being served and returning, so even a
 * strictly FIFO wait queue shows small counts here. Counts in the hundreds
 * or thousands are barging. Returns max(c - s, 0). */
static inline uint64_t record_fifo(run *r, uint64_t ticket)
{
    uint64_t rank = atomic_fetch_add_explicit(&r->done_seq, 1, memory_order_relaxed) + 1;
    return rank > ticket ? rank - ticket : 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    run *r = w->r;
    const pool_impl *impl = r->impl;
    void *pool = r->pool;
    const int64_t hold_ns = r->hold_ns;
    const uint64_t fixed = r->fixed_ops;
    const bool fifo = r->fifo;
    uint64_t *hist = w->hist;
    uint64_t ops = 0, overtakers = 0, max_overtakers = 0, max_ns = 0;
    /* A sleeping hold as exact as the kernel allows: the default timer
     * slack (50 us) would add half of a 100 us hold to every sleep. */
    if (r->hold_sleep || r->think_ns > 0)
        prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

    /* Start barrier: the main thread lets the threads go once every one is
     * here, so thread creation stays out of the run. Yielding, not
     * sleeping, keeps the start tight while leaving the CPU to threads
     * still being created. */
    atomic_fetch_add_explicit(&r->ready, 1, memory_order_acq_rel);
    while (!atomic_load_explicit(&r->go, memory_order_acquire))
        sched_yield();

    uint64_t allocs0 = 0;
    bool warm = false, measuring = false;
    for (;;) {
        /* An operation belongs to the phase it starts in. */
        int phase = atomic_load_explicit(&r->phase, memory_order_relaxed);
        if (phase == PHASE_STOP)
            break;
        bool rec = phase == PHASE_MEASURE;
        if (rec && !measuring) {
            measuring = true;
            allocs0 = bench_allocs_self();
        }
        if (fixed && ops >= fixed)
            break;
        uint64_t ticket = 0;
        if (fifo)
            ticket = atomic_fetch_add_explicit(&r->start_seq, 1, memory_order_relaxed) + 1;
        void *lease;
        int64_t t0 = now_ns();
        int rc = impl->checkout(pool, &lease);
        int64_t t1 = now_ns();
        if (rc != 0) {
            w->error = rc;
            atomic_store(&r->phase, PHASE_STOP);
            break;
        }
        if (fifo) {
            /* Both sequences run through every phase, so that tickets and
             * ranks stay comparable; only measured checkouts count. */
            uint64_t n = record_fifo(r, ticket);
            if (rec) {
                overtakers += n;
                if (n > max_overtakers)
                    max_overtakers = n;
            }
        }
        if (rec) {
            uint64_t lat = (uint64_t)(t1 - t0);
            hist[hist_index(lat)]++;
            if (lat > max_ns)
                max_ns = lat;
        }
        if (hold_ns > 0 && r->hold_sleep) {
            struct timespec nap = {hold_ns / 1000000000, hold_ns % 1000000000};
            while (nanosleep(&nap, &nap) == EINTR)
                ;
        } else if (hold_ns > 0) {
            int64_t end = t1 + hold_ns;
            while (now_ns() < end)
                ;
        }
        rc = impl->checkin(pool, lease);
        if (rc != 0) {
            w->error = rc;
            atomic_store(&r->phase, PHASE_STOP);
            break;
        }
        if (rec) {
            ops++;
            uint64_t sec = (uint64_t)(t1 - r->measure_t0) / 1000000000u;
            if (sec < MAX_SECONDS)
                w->per_sec[sec]++;
        }
        if (!warm) {
            warm = true;
            atomic_fetch_add_explicit(&r->warm, 1, memory_order_relaxed);
        }
        if (r->think_ns > 0) {
            /* What a request thread does between leases: waits for its
             * next request, away from the pool. */
            struct timespec nap = {r->think_ns / 1000000000, r->think_ns % 1000000000};
            while (nanosleep(&nap, &nap) == EINTR)
                ;
        }
    }
    w->allocs = measuring ? bench_allocs_self() - allocs0 : 0;
    w->ops = ops;
    w->overtakers = overtakers;
    w->max_overtakers = max_overtakers;
    w->max_ns = max_ns;
    return NULL;
}

/* Results of one pool in one configuration. */
typedef struct result {
    bool ran;
    bool skipped;
    double ops_s;
    uint64_t p50, p99, p999, max;
    double jain;
    double minmax;
    double minmax_sec; /* the worst second's min/max; < 0 = under a second */
    uint64_t min_ops, max_ops;
    double overtakers; /* mean per checkout; < 0 = not measured */
    uint64_t max_overtakers;
    double allocs_op; /* < 0 = not counted */
    double warmup_ms; /* how long the warm-up took */
    unsigned cold_threads; /* threads without an operation when it ended */
    int error;
} result;

typedef struct config {
    unsigned threads, conns, hold_us;
} config;

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "cpool_bench: out of memory\n");
        exit(2);
    }
    return p;
}

/* A large calloc() is a fresh mapping whose pages are faulted in on first
 * touch; touching them here keeps those faults out of the timed window. The
 * volatile store is one the compiler cannot drop as redundant. */
static void prefault(void *mem, size_t size)
{
    volatile unsigned char *b = mem;
    for (size_t i = 0; i < size; i += 4096)
        b[i] = 0;
}

static bool g_hold_sleep; /* --hold sleep */
static uint32_t g_think_us; /* --think-us */

/* min/max of the per-thread counts in each whole second of the window, the
 * worst of them: how even the service is over a second, not only over the
 * run. */
static double worst_second_minmax(const worker *ws, unsigned threads, int64_t window_ns)
{
    int64_t secs = window_ns / 1000000000;
    if (secs > MAX_SECONDS)
        secs = MAX_SECONDS;
    double worst = secs > 0 ? 1.0 : -1.0;
    for (int64_t s = 0; s < secs; s++) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (unsigned i = 0; i < threads; i++) {
            uint64_t n = ws[i].per_sec[s];
            lo = n < lo ? n : lo;
            hi = n > hi ? n : hi;
        }
        double mm = hi ? (double)lo / (double)hi : 0;
        worst = mm < worst ? mm : worst;
    }
    return worst;
}

static int measure(const pool_impl *impl, const config *c, int64_t duration_ns,
                   int64_t warmup_ns, uint64_t fixed_ops, bool want_fifo, result *out)
{
    char msg[300] = "";
    void *pool;
    memset(out, 0, sizeof *out);
    if (impl->open(c->conns, &pool, msg, sizeof msg) != 0) {
        fprintf(stderr, "cpool_bench: %s: cannot create the pool: %s\n", impl->name, msg);
        return -1;
    }
    /* Pre-warm: create all P connections now, so that the measurement sees
     * only reuse and never an establishment. */
    void **leases = xcalloc(c->conns, sizeof *leases);
    for (unsigned i = 0; i < c->conns; i++) {
        if (impl->checkout(pool, &leases[i]) != 0) {
            fprintf(stderr, "cpool_bench: %s: pre-warm checkout %u failed\n", impl->name, i);
            exit(2);
        }
    }
    for (unsigned i = 0; i < c->conns; i++) {
        if (impl->checkin(pool, leases[i]) != 0) {
            fprintf(stderr, "cpool_bench: %s: pre-warm checkin %u failed\n", impl->name, i);
            exit(2);
        }
    }
    free(leases);

    run *r = aligned_alloc(64, sizeof *r);
    worker *ws = aligned_alloc(64, sizeof *ws * c->threads);
    uint64_t *hists = xcalloc((size_t)c->threads * HIST_BUCKETS, sizeof *hists);
    prefault(hists, (size_t)c->threads * HIST_BUCKETS * sizeof *hists);
    if (!r || !ws) {
        fprintf(stderr, "cpool_bench: out of memory\n");
        exit(2);
    }
    memset(r, 0, sizeof *r);
    memset(ws, 0, sizeof *ws * c->threads);
    r->impl = impl;
    r->pool = pool;
    r->hold_ns = (int64_t)c->hold_us * 1000;
    r->hold_sleep = g_hold_sleep;
    r->think_ns = (int64_t)g_think_us * 1000;
    r->measure_t0 = now_ns();
    r->fixed_ops = fixed_ops;
    r->fifo = want_fifo && c->threads > c->conns;
    atomic_init(&r->ready, 0);
    atomic_init(&r->go, false);
    atomic_init(&r->warm, 0);
    /* A fixed number of operations is for counting (allocations under
     * valgrind, say): every operation is recorded, there is no warm-up. */
    atomic_init(&r->phase, fixed_ops ? PHASE_MEASURE : PHASE_WARMUP);
    atomic_init(&r->start_seq, 0);
    atomic_init(&r->done_seq, 0);

    for (unsigned i = 0; i < c->threads; i++) {
        ws[i].r = r;
        ws[i].hist = hists + (size_t)i * HIST_BUCKETS;
        int e = pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]);
        if (e != 0) {
            fprintf(stderr, "cpool_bench: pthread_create: %s\n", strerror(e));
            exit(2);
        }
    }
    while (atomic_load_explicit(&r->ready, memory_order_acquire) < c->threads)
        sched_yield();
    int64_t t0 = now_ns(), t1 = t0;
    atomic_store_explicit(&r->go, true, memory_order_release);
    if (fixed_ops == 0) {
        /* Warm-up: until every thread has completed one operation, but no
         * longer than warmup_ns, since an unfair pool may starve a thread
         * for good. Polled every 100 us: the main thread must not take a
         * core from the workers. */
        int64_t warm_end = t0 + warmup_ns;
        while (atomic_load_explicit(&r->warm, memory_order_relaxed) < c->threads &&
               now_ns() < warm_end) {
            struct timespec nap = {0, 100000};
            nanosleep(&nap, NULL);
        }
        out->warmup_ms = (double)(now_ns() - t0) / 1e6;
        out->cold_threads = c->threads - atomic_load(&r->warm);
        t0 = now_ns();
        r->measure_t0 = t0;
        atomic_store(&r->phase, PHASE_MEASURE);
        struct timespec until;
        int64_t end = t0 + duration_ns;
        until.tv_sec = end / 1000000000;
        until.tv_nsec = end % 1000000000;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
            ;
        t1 = now_ns();
        atomic_store(&r->phase, PHASE_STOP);
    }
    for (unsigned i = 0; i < c->threads; i++)
        pthread_join(ws[i].tid, NULL);
    if (fixed_ops != 0)
        t1 = now_ns();

    /* Merge the threads' figures. */
    uint64_t *h = xcalloc(HIST_BUCKETS, sizeof *h);
    uint64_t total = 0, overtakers = 0, allocs = 0, max_ns = 0;
    uint64_t min_ops = UINT64_MAX, max_ops = 0;
    double sum = 0, sumsq = 0;
    for (unsigned i = 0; i < c->threads; i++) {
        const worker *w = &ws[i];
        for (unsigned b = 0; b < HIST_BUCKETS; b++)
            h[b] += w->hist[b];
        total += w->ops;
        overtakers += w->overtakers;
        if (w->max_overtakers > out->max_overtakers)
            out->max_overtakers = w->max_overtakers;
        allocs += w->allocs;
        if (w->max_ns > max_ns)
            max_ns = w->max_ns;
        if (w->ops < min_ops)
            min_ops = w->ops;
        if (w->ops > max_ops)
            max_ops = w->ops;
        sum += (double)w->ops;
        sumsq += (double)w->ops * (double)w->ops;
        if (w->error && !out->error)
            out->error = w->error;
    }
    uint64_t samples = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++)
        samples += h[b];

    out->ran = true;
    out->ops_s = (double)total * 1e9 / (double)(t1 - t0);
    out->p50 = hist_quantile(h, samples, 0.50, max_ns);
    out->p99 = hist_quantile(h, samples, 0.99, max_ns);
    out->p999 = hist_quantile(h, samples, 0.999, max_ns);
    out->max = max_ns;
    /* Jain's index: 1 when every thread did the same number of operations,
     * 1/T when one thread did them all. */
    out->jain = sumsq > 0 ? sum * sum / ((double)c->threads * sumsq) : 0;
    out->min_ops = min_ops;
    out->max_ops = max_ops;
    out->minmax = max_ops ? (double)min_ops / (double)max_ops : 0;
    out->minmax_sec = worst_second_minmax(ws, c->threads, fixed_ops ? 0 : t1 - t0);
    out->overtakers = r->fifo && samples ? (double)overtakers / (double)samples : -1;
    out->allocs_op = BENCH_COUNT_ALLOCS && total ? (double)allocs / (double)total : -1;

    free(h);
    free(hists);
    free(ws);
    free(r);
    impl->close(pool);
    return out->error ? -1 : 0;
}

/* ------------------------------------------------------------------ output */

static unsigned g_cores;

static double ceiling_ops(const config *c)
{
    if (c->hold_us == 0)
        return 0;
    unsigned k = c->threads;
    if (c->conns < k)
        k = c->conns;
    if (!g_hold_sleep && g_cores < k) /* a spinning holder needs a core */
        k = g_cores;
    double ceiling = (double)k * 1e6 / (double)c->hold_us;
    /* With think time each thread asks for at most one lease per W + Z. */
    double asked = (double)c->threads * 1e6 / (double)(c->hold_us + g_think_us);
    return g_think_us > 0 && asked < ceiling ? asked : ceiling;
}

static void print_header(void)
{
    printf("%4s %4s %5s  %-13s %11s %9s %9s %9s %10s %6s %7s %7s %7s %8s %9s %8s\n", "T",
           "P", "W_us", "pool", "ops/s", "p50_ns", "p99_ns", "p99.9_ns", "max_ns", "jain",
           "min/max", "mm/1s", "ovt_avg", "ovt_max", "allocs/op", "%ceil");
}

static void print_row(const config *c, const char *name, const result *res)
{
    printf("%4u %4u %5u  %-13s ", c->threads, c->conns, c->hold_us, name);
    if (res->skipped) {
        printf("skipped (built without apr-util)\n");
        return;
    }
    if (!res->ran) {
        printf("failed\n");
        return;
    }
    char ot[16], om[24], al[16], ce[16], ms[16];
    if (res->minmax_sec < 0)
        snprintf(ms, sizeof ms, "-");
    else
        snprintf(ms, sizeof ms, "%.3f", res->minmax_sec);
    if (res->overtakers < 0) {
        snprintf(ot, sizeof ot, "-");
        snprintf(om, sizeof om, "-");
    } else {
        snprintf(ot, sizeof ot, "%.1f", res->overtakers);
        snprintf(om, sizeof om, "%llu", (unsigned long long)res->max_overtakers);
    }
    if (res->allocs_op < 0)
        snprintf(al, sizeof al, "-");
    else
        snprintf(al, sizeof al, "%.3f", res->allocs_op);
    double ceil_ops = ceiling_ops(c);
    if (ceil_ops > 0)
        snprintf(ce, sizeof ce, "%.1f", res->ops_s * 100 / ceil_ops);
    else
        snprintf(ce, sizeof ce, "-");
    printf("%11.0f %9llu %9llu %9llu %10llu %6.3f %7.3f %7s %7s %8s %9s %8s", res->ops_s,
           (unsigned long long)res->p50, (unsigned long long)res->p99,
           (unsigned long long)res->p999, (unsigned long long)res->max, res->jain,
           res->minmax, ms, ot, om, al, ce);
    if (res->cold_threads)
        printf("  (%u threads had no op after %.0f ms of warm-up)", res->cold_threads,
               res->warmup_ms);
    if (res->error)
        printf("  ERROR %d", res->error);
    printf("\n");
}

static void fmt_ratio(char *buf, size_t len, double a, double b, bool ok)
{
    if (!ok || b <= 0)
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%.2f", a / b);
}

/* The round whose ops/s is the median for pool j (the upper one of the two
 * middle rounds when their number is even). Its whole row is reported, so
 * that every figure in a row comes from one measurement. */
#define MAX_ROUNDS 9

static unsigned median_round(result (*rr)[POOL_COUNT], unsigned rounds, int j)
{
    unsigned idx[MAX_ROUNDS];
    for (unsigned k = 0; k < rounds; k++)
        idx[k] = k;
    for (unsigned a = 1; a < rounds; a++) /* insertion sort by ops/s */
        for (unsigned b = a; b > 0 && rr[idx[b - 1]][j].ops_s > rr[idx[b]][j].ops_s; b--) {
            unsigned t = idx[b];
            idx[b] = idx[b - 1];
            idx[b - 1] = t;
        }
    return idx[rounds / 2];
}

/* ------------------------------------------------------------------ flags */

#define MAX_LIST 16

typedef struct ulist {
    unsigned v[MAX_LIST];
    unsigned n;
} ulist;

static int parse_list(const char *s, ulist *out, unsigned min, unsigned max)
{
    out->n = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v < min || v > max || out->n == MAX_LIST)
            return -1;
        out->v[out->n++] = (unsigned)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return out->n ? 0 : -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cpool_bench [flags]\n"
            "  --threads LIST      thread counts T (default 1,2,8,64)\n"
            "  --conns LIST        pool sizes P (default 4,16)\n"
            "  --hold-us LIST      hold times W in microseconds (default 0,20)\n"
            "  --duration-ms N     timed window per configuration and pool (default 1000)\n"
            "  --warmup-ms N       before it, untimed: until every thread has done one op,\n"
            "                      at most N ms (default 200; 0 = none)\n"
            "  --rounds N          measure each configuration N times (1-9, default 1),\n"
            "                      pools interleaved; report the median round by ops/s\n"
            "  --ops N             instead of a duration: each thread does exactly N ops\n"
            "  --pools LIST        any of cpool,cpool-fifo,naive,apr,cpool-noreset\n"
            "                      (default all but cpool-noreset);\n"
            "                      cpool is the default handoff (turns), cpool-fifo\n"
            "                      CMAP's strict FIFO handoff\n"
            "  --hold MODE         spin (default): busy-spin through the hold, as CPU\n"
            "                      work does; sleep: sleep through it, as a thread\n"
            "                      waiting on the network does\n"
            "  --think-us N        after each check-in, each thread sleeps N us before\n"
            "                      its next checkout, as a request thread waits for\n"
            "                      its next request (default 0)\n"
            "  --turn-wait-us N    the cpool pool's turn_wait_us (default: the pool's\n"
            "                      default): longer turns, longer waits\n"
            "  --early-wake MODE   the cpool pool's early_wake: off (the default), on\n"
            "                      or auto\n"
            "  --no-overtakes      do not measure overtakes (saves two atomics per op)\n"
            "  --help              this text\n"
            "LIST is comma-separated, e.g. --threads 1,64. Each operation is checkout,\n"
            "hold W us, checkin; latency is that of the checkout alone.\n");
}

/* Prints argv so that it can be pasted back into a shell. */
static void print_command(int argc, char **argv)
{
    printf("# command:");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool plain = *a != '\0';
        for (const char *p = a; *p; p++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        "0123456789-_=,./:+", *p))
                plain = false;
        if (plain) {
            printf(" %s", a);
        } else {
            printf(" '");
            for (const char *p = a; *p; p++) {
                if (*p == '\'')
                    printf("'\\''");
                else
                    putchar(*p);
            }
            printf("'");
        }
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    ulist threads = {{1, 2, 8, 64}, 4};
    ulist conns = {{4, 16}, 2};
    ulist holds = {{0, 20}, 2};
    bool use[POOL_COUNT] = {true, true, true, true, false};
    int64_t duration_ms = 1000;
    int64_t warmup_ms = 200;
    unsigned rounds = 1;
    uint64_t fixed_ops = 0;
    bool want_fifo = true;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-overtakes")) {
            want_fifo = false;
            continue;
        } else if (!v) {
            bad = 1;
        } else if (!strcmp(a, "--threads")) {
            bad = parse_list(v, &threads, 1, 4096);
        } else if (!strcmp(a, "--conns")) {
            bad = parse_list(v, &conns, 1, 100000);
        } else if (!strcmp(a, "--hold-us")) {
            bad = parse_list(v, &holds, 0, 10000000);
        } else if (!strcmp(a, "--duration-ms")) {
            char *end;
            long long d = strtoll(v, &end, 10);
            bad = *end || d <= 0 || d > 3600000;
            duration_ms = d;
        } else if (!strcmp(a, "--warmup-ms")) {
            char *end;
            long long d = strtoll(v, &end, 10);
            bad = *end || d < 0 || d > 3600000;
            warmup_ms = d;
        } else if (!strcmp(a, "--rounds")) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            bad = *end || n < 1 || n > MAX_ROUNDS;
            rounds = (unsigned)n;
        } else if (!strcmp(a, "--ops")) {
            char *end;
            unsigned long long n = strtoull(v, &end, 10);
            bad = *end || n == 0;
            fixed_ops = n;
        } else if (!strcmp(a, "--turn-wait-us")) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            bad = *end || n < 1 || n > 100000000;
            g_turn_wait_us = (uint32_t)n;
        } else if (!strcmp(a, "--early-wake")) {
            cpool_options probe; /* the pool's own check of the name */
            cpool_error err;
            cpool_options_init(&probe, sizeof probe);
            bad = cpool_options_set(&probe, "early_wake", v, &err) != 0;
            g_early_wake = v;
        } else if (!strcmp(a, "--think-us")) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            bad = *end || n > 10000000;
            g_think_us = (uint32_t)n;
        } else if (!strcmp(a, "--hold")) {
            bad = strcmp(v, "spin") != 0 && strcmp(v, "sleep") != 0;
            g_hold_sleep = strcmp(v, "sleep") == 0;
        } else if (!strcmp(a, "--pools")) {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            memset(use, 0, sizeof use);
            for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int k = -1;
                for (int j = 0; j < POOL_COUNT; j++)
                    if (!strcmp(t, pool_impls[j].name))
                        k = j;
                if (k < 0)
                    bad = 1;
                else
                    use[k] = true;
            }
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "cpool_bench: bad or unknown flag: %s %s\n", a, v ? v : "");
            usage(stderr);
            return 2;
        }
        i++;
    }

    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    g_cores = nc > 0 ? (unsigned)nc : 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    print_command(argc, argv);
    printf("# cpool %d.%d.%d; %u online cores; clock_gettime(CLOCK_MONOTONIC) ~%.0f ns/call "
           "(2 calls per op, in every pool)\n",
           CPOOL_VERSION_MAJOR, CPOOL_VERSION_MINOR, CPOOL_VERSION_PATCH, g_cores,
           clock_cost_ns());
    if (fixed_ops)
        printf("# each thread does %llu ops per configuration and pool\n",
               (unsigned long long)fixed_ops);
    else
        printf("# timed window: %lld ms per configuration and pool, after an untimed warm-up "
               "until every thread has done one op (at most %lld ms)\n",
               (long long)duration_ms, (long long)warmup_ms);
    if (rounds > 1)
        printf("# %u rounds per configuration, pools interleaved; each row is the pool's "
               "median round by ops/s\n",
               rounds);
    printf("# pools: cpool (mem connector, maxPoolSize=P, no subscriber; handoff turns");
    if (g_turn_wait_us > 0)
        printf(", turn_wait_us=%u", (unsigned)g_turn_wait_us);
    if (g_early_wake != NULL)
        printf(", early_wake=%s", g_early_wake);
    printf(")");
    if (use[POOL_FIFO])
        printf(", cpool-fifo (the same, handoff fifo)");
    if (use[POOL_NORESET])
        printf(", cpool-noreset (the same as cpool, connector without reset())");
    if (use[POOL_NAIVE])
        printf(", naive (mutex+condvar+stack)");
#ifdef CPOOL_BENCH_HAVE_APR
    if (use[POOL_APR])
        printf(", apr (apr_reslist, apr-util %s)", apu_version_string());
#else
    if (use[POOL_APR])
        printf(", apr: skipped (built without apr-util)");
#endif
    printf("\n");
    printf("# latency: of the checkout alone; jain, min/max: over per-thread op counts\n"
           "# ovt_avg, ovt_max: %s\n"
           "# allocs/op: %s\n"
           "# mm/1s: the worst whole second's min/max\n"
           "# hold: %s\n"
           "# %%ceil (W>0): ops/s as %% of %s * 1e6 / W\n",
           want_fifo ? "checkouts started later that returned earlier, per checkout: "
                       "mean and largest (a lower bound; T>P only)"
                     : "not measured (--no-overtakes)",
           BENCH_COUNT_ALLOCS ? "heap allocations per op in the worker threads"
                              : "not counted in this build",
           g_hold_sleep ? "sleep (nanosleep W us)" : "spin (busy-spin W us)",
           g_hold_sleep ? "min(T,P)" : "min(T,P,cores)");
    if (g_think_us > 0)
        printf("# think: each thread sleeps %u us after each check-in; %%ceil is also capped "
               "at T * 1e6 / (W + %u), what the threads ask for\n",
               (unsigned)g_think_us, (unsigned)g_think_us);

#ifdef CPOOL_BENCH_HAVE_APR
    if (use[POOL_APR])
        apr_initialize();
#endif

    size_t nconf = (size_t)threads.n * conns.n * holds.n;
    config *cfgs = xcalloc(nconf, sizeof *cfgs);
    result(*res)[POOL_COUNT] = xcalloc(nconf, sizeof *res);
    size_t filled = 0;
    for (unsigned h = 0; h < holds.n; h++)
        for (unsigned p = 0; p < conns.n; p++)
            for (unsigned t = 0; t < threads.n; t++)
                cfgs[filled++] = (config){threads.v[t], conns.v[p], holds.v[h]};

    int failures = 0;
    printf("\n");
    print_header();
    for (size_t i = 0; i < nconf; i++) {
        const config *c = &cfgs[i];
        /* Rounds interleave the pools (cpool, naive, apr, cpool, ...) so
         * that a burst of load from elsewhere on a shared machine is less
         * likely to hit one pool only. */
        result rr[MAX_ROUNDS][POOL_COUNT];
        memset(rr, 0, sizeof rr);
        for (unsigned k = 0; k < rounds; k++) {
            for (int j = 0; j < POOL_COUNT; j++) {
                if (!use[j])
                    continue;
                if (!pool_impls[j].open)
                    rr[k][j].skipped = true;
                else if (measure(&pool_impls[j], c, duration_ms * 1000000,
                                 warmup_ms * 1000000, fixed_ops, want_fifo, &rr[k][j]) != 0)
                    failures++;
            }
        }
        for (int j = 0; j < POOL_COUNT; j++) {
            if (!use[j])
                continue;
            res[i][j] = rr[median_round(rr, rounds, j)][j];
            print_row(c, pool_impls[j].name, &res[i][j]);
        }
        if (rounds > 1) {
            printf("%4u %4u %5u  rounds, ops/s:", c->threads, c->conns, c->hold_us);
            for (int j = 0; j < POOL_COUNT; j++) {
                if (!use[j] || !pool_impls[j].open)
                    continue;
                printf("  %s", pool_impls[j].name);
                for (unsigned k = 0; k < rounds; k++)
                    printf(" %.0f", rr[k][j].ops_s);
            }
            printf("\n");
        }
        if (c->hold_us > 0)
            printf("%4u %4u %5u  ceiling %.0f ops/s\n", c->threads, c->conns, c->hold_us,
                   ceiling_ops(c));
    }

    /* The ratios are the figures to compare across runs and machines. */
    if (use[POOL_CPOOL] && (use[POOL_NAIVE] || use[POOL_APR])) {
        printf("\n# ratios: ops/s cpool/peer (> 1: cpool faster); "
               "p99 cpool/peer (< 1: cpool waits less)\n");
        printf("%4s %4s %5s  %13s %11s %11s %9s\n", "T", "P", "W_us", "ops/s c/naive",
               "ops/s c/apr", "p99 c/naive", "p99 c/apr");
        for (size_t i = 0; i < nconf; i++) {
            const config *c = &cfgs[i];
            const result *a = &res[i][POOL_CPOOL], *n = &res[i][POOL_NAIVE],
                         *p = &res[i][POOL_APR];
            char r1[16], r2[16], r3[16], r4[16];
            fmt_ratio(r1, sizeof r1, a->ops_s, n->ops_s, a->ran && n->ran);
            fmt_ratio(r2, sizeof r2, a->ops_s, p->ops_s, a->ran && p->ran);
            fmt_ratio(r3, sizeof r3, (double)a->p99, (double)n->p99, a->ran && n->ran);
            fmt_ratio(r4, sizeof r4, (double)a->p99, (double)p->p99, a->ran && p->ran);
            printf("%4u %4u %5u  %13s %11s %11s %9s\n", c->threads, c->conns, c->hold_us,
                   r1, r2, r3, r4);
        }
    }

#ifdef CPOOL_BENCH_HAVE_APR
    if (use[POOL_APR])
        apr_terminate();
#endif
    free(res);
    free(cfgs);
    if (failures) {
        fprintf(stderr, "cpool_bench: %d measurement(s) failed\n", failures);
        return 1;
    }
    return 0;
}
