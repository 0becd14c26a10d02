/* lease_cost.c -- what one uncontended lease (checkout and check-in on one
 * thread) costs, with nothing else in the loop: no clock read, no
 * per-operation bookkeeping, unlike cpool_bench and the peer harness, whose
 * own clock reads are most of a figure at one thread (docs/benchmarks.md).
 *
 * Three pools, rounds interleaved:
 *   noreset  cpool over the in-memory connector without reset() and with
 *            validation off, the shape of the peer harness's c_cpool: its
 *            check-ins park in one step;
 *   mem      cpool over the in-memory connector as it is (check() at every
 *            reused checkout, reset() at every check-in);
 *   naive    a mutex around a stack of connections, as cpool_bench's.
 * Each cpool pool first waits for its maintenance thread's first run, so
 * the lock-free path reads lifetimes from its tick, as it does from then on.
 * It prints each pool's nanoseconds per lease, the median and the best
 * round.
 *
 * Instructions per lease, exactly (the pool's code only):
 *   valgrind --tool=callgrind --toggle-collect=cpool_checkout \
 *       --toggle-collect=cpool_checkin build/bench/lease_cost noreset 1 1000000
 * and divide the total by 1,000,000.
 *
 * Usage: lease_cost [noreset|mem|naive|all] [ROUNDS] [LEASES]
 *        (default all 7 5000000) */
#include <cpool/cpool.h>
#include <cpool/cpool_connector.h>
#include <cpool/cpool_mem.h>

#include "mem_noreset.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { P_NORESET, P_MEM, P_NAIVE, P_COUNT };
static const char *const names[P_COUNT] = {"noreset", "mem", "naive"};

#define CONNS 4
#define MAX_ROUNDS 31

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double run_cpool(bool noreset, long leases)
{
    cpool_mem *mem = NULL;
    cpool *p = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    if (cpool_mem_create(&mem) != 0) {
        fprintf(stderr, "lease_cost: cpool_mem_create failed\n");
        exit(1);
    }
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.connector = noreset ? bench_mem_noreset_connector() : cpool_mem_connector();
    o.connector_ctx = mem;
    o.target = "mem://lease_cost";
    o.max_pool_size = CONNS;
    o.ignore_env = true;
    if (noreset)
        o.validation = CPOOL_VALIDATE_NONE;
    if (cpool_create(&o, &p, &e) != 0 || cpool_ready(p, &e) != 0) {
        fprintf(stderr, "lease_cost: %s: %s\n", cpool_err_name(e.code), e.message);
        exit(1);
    }
    cpool_conn *c = NULL;
    if (cpool_checkout(p, -1, &c, &e) != 0 || cpool_checkin(p, c, 0, &e) != 0) {
        fprintf(stderr, "lease_cost: %s: %s\n", cpool_err_name(e.code), e.message);
        exit(1);
    }
    /* The first maintenance run (maintenance_interval_ms, 1 s by default). */
    struct timespec nap = {1, 200000000};
    nanosleep(&nap, NULL);
    double t0 = now_s();
    for (long i = 0; i < leases; i++) {
        if (cpool_checkout(p, -1, &c, &e) != 0 || cpool_checkin(p, c, 0, &e) != 0) {
            fprintf(stderr, "lease_cost: %s: %s\n", cpool_err_name(e.code), e.message);
            exit(1);
        }
    }
    double t = now_s() - t0;
    cpool_destroy(p);
    cpool_mem_destroy(mem);
    return t * 1e9 / (double)leases;
}

typedef struct naive_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned n;
    void *slots[CONNS];
} naive_pool;

static double run_naive(long leases)
{
    static char storage[CONNS][64];
    naive_pool p;
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    for (unsigned i = 0; i < CONNS; i++)
        p.slots[i] = storage[i];
    p.n = CONNS;
    double t0 = now_s();
    for (long i = 0; i < leases; i++) {
        pthread_mutex_lock(&p.mu);
        while (p.n == 0)
            pthread_cond_wait(&p.cv, &p.mu);
        void *lease = p.slots[--p.n];
        pthread_mutex_unlock(&p.mu);
        __asm__ volatile("" : : "r"(lease) : "memory"); /* the lease is used */
        pthread_mutex_lock(&p.mu);
        p.slots[p.n++] = lease;
        pthread_cond_signal(&p.cv);
        pthread_mutex_unlock(&p.mu);
    }
    double t = now_s() - t0;
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
    return t * 1e9 / (double)leases;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    long leases = argc > 3 ? atol(argv[3]) : 5000000;
    bool use[P_COUNT];
    bool any = false;
    for (int k = 0; k < P_COUNT; k++) {
        use[k] = !strcmp(which, "all") || !strcmp(which, names[k]);
        any |= use[k];
    }
    if (!any || rounds < 1 || rounds > MAX_ROUNDS || leases < 1) {
        fprintf(stderr, "usage: lease_cost [noreset|mem|naive|all] [ROUNDS 1-%d] [LEASES]\n",
                MAX_ROUNDS);
        return 2;
    }
    double ns[P_COUNT][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < P_COUNT; k++)
            if (use[k])
                ns[k][r] = k == P_NAIVE ? run_naive(leases) : run_cpool(k == P_NORESET, leases);
    printf("%-8s %12s %12s   (%d rounds of %ld leases, one thread, %d connections)\n", "pool",
           "median_ns", "best_ns", rounds, leases, CONNS);
    for (int k = 0; k < P_COUNT; k++) {
        if (!use[k])
            continue;
        qsort(ns[k], (size_t)rounds, sizeof ns[k][0], cmp_double);
        printf("%-8s %12.1f %12.1f\n", names[k], ns[k][rounds / 2], ns[k][0]);
    }
    return 0;
}
