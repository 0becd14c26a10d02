/* demo.c -- threads sharing one pool for a couple of seconds.
 *
 * Usage: demo [threads [seconds]]   (default: 8 threads, 2 seconds)
 *
 * The pool talks to the in-memory connector (cpool_mem), so the demo runs
 * anywhere. Each thread checks a connection out, holds it briefly (now and
 * then opening a "transaction" that the check-in reset rolls back, or
 * reporting it broken), and checks it in. Half way through, the main thread
 * clears the pool, as a driver does when it learns the server went away,
 * and readies it again. At the end the demo prints the counts, the
 * throughput and the CMAP events the pool emitted, by type.
 */
#include <cpool/cpool.h>
#include <cpool/cpool_mem.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_POOL_SIZE 4
#define MIN_POOL_SIZE 2
#define CHECKOUT_TIMEOUT_MS 500
#define HOLD_NS 20000         /* how long a lease is held */
#define TXN_EVERY 10          /* every 10th lease opens a transaction */
#define BROKEN_EVERY 5000     /* every 5000th lease is checked in broken */
#define MAX_FAILURE_CODES 16  /* -1 .. -15: CPOOL_E* codes */

/* Filled by the event subscriber; read after the pool is destroyed. */
typedef struct event_tally {
    atomic_ullong by_type[CPOOL_EV_COUNT_];
    atomic_ullong closed_by_reason[4];       /* cpool_close_reason */
    atomic_ullong failed_by_reason[3];       /* cpool_checkout_failure */
    atomic_ullong checkout_ns_sum;           /* ConnectionCheckedOut.duration */
    atomic_llong checkout_ns_max;
} event_tally;

typedef struct worker {
    pthread_t thread;
    cpool *pool;
    const atomic_bool *stop;
    unsigned long long ok;
    unsigned long long failed[MAX_FAILURE_CODES];
} worker;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Runs on whichever thread changed the pool's state, without the pool's
 * lock held: keep it short and never call back into the pool. */
static void on_event(const cpool_event *ev, void *ctx)
{
    event_tally *t = ctx;

    if ((int)ev->type >= 0 && ev->type < CPOOL_EV_COUNT_)
        atomic_fetch_add(&t->by_type[ev->type], 1);
    if (ev->type == CPOOL_EV_CONN_CLOSED && ev->reason >= 0 && ev->reason < 4)
        atomic_fetch_add(&t->closed_by_reason[ev->reason], 1);
    if (ev->type == CPOOL_EV_CHECKOUT_FAILED && ev->reason >= 0 && ev->reason < 3)
        atomic_fetch_add(&t->failed_by_reason[ev->reason], 1);
    if (ev->type == CPOOL_EV_CHECKED_OUT && ev->duration_ns >= 0) {
        long long d = ev->duration_ns;
        long long max = atomic_load(&t->checkout_ns_max);

        atomic_fetch_add(&t->checkout_ns_sum, (unsigned long long)d);
        while (d > max && !atomic_compare_exchange_weak(&t->checkout_ns_max, &max, d)) {
        }
    }
}

static void *work(void *arg)
{
    worker *w = arg;
    unsigned long long n = 0;

    while (!atomic_load(w->stop)) {
        cpool_conn *conn;
        cpool_error err = {0};
        int rc = cpool_checkout(w->pool, CHECKOUT_TIMEOUT_MS, &conn, &err);

        if (rc != 0) {
            w->failed[-rc < MAX_FAILURE_CODES ? -rc : 0]++;
            /* Cleared (paused) pools fail checkouts at once; back off a bit
             * until the pool is ready again. */
            sleep_ns(100000);
            continue;
        }
        n++;
        if (n % TXN_EVERY == 0)
            cpool_mem_conn_begin(cpool_conn_native(conn));
        sleep_ns(HOLD_NS);
        unsigned flags = (n % BROKEN_EVERY == 0) ? CPOOL_CHECKIN_BROKEN : 0;
        if (cpool_checkin(w->pool, conn, flags, &err) != 0)
            fprintf(stderr, "demo: checkin: %s\n", err.message);
        w->ok++;
    }
    return NULL;
}

/* Appends "  (name n, name n)" for the reasons that occurred, nothing when
 * none did. */
static void print_reasons(const atomic_ullong *by_reason, int n,
                          const char *(*name)(int))
{
    const char *sep = "  (";
    for (int r = 0; r < n; r++) {
        unsigned long long count = atomic_load(&by_reason[r]);
        if (count != 0) {
            printf("%s%s %llu", sep, name(r), count);
            sep = ", ";
        }
    }
    if (strcmp(sep, ", ") == 0)
        printf(")");
}

static void print_counts(const char *when, cpool *pool)
{
    cpool_counts c;

    cpool_get_counts(pool, &c);
    printf("  %-22s total %u (available %u, in use %u, pending %u), waiting %u, "
           "generation %" PRIu64 "\n",
           when, c.total, c.available, c.in_use, c.pending, c.waiting, c.generation);
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 8;
    double seconds = argc > 2 ? atof(argv[2]) : 2.0;
    static event_tally tally; /* static: zero-initialised atomics */
    atomic_bool stop = false;
    cpool_mem *server = NULL;
    cpool *pool = NULL;
    cpool_error err = {0};
    cpool_options o;
    worker *workers;
    int rc;

    if (nthreads < 1 || nthreads > 1024 || !(seconds > 0 && seconds <= 3600)) {
        fprintf(stderr, "usage: %s [threads (1..1024) [seconds]]\n", argv[0]);
        return 2;
    }
    workers = calloc((size_t)nthreads, sizeof *workers);
    if (workers == NULL || cpool_mem_create(&server) != 0) {
        fprintf(stderr, "demo: out of memory\n");
        free(workers);
        return 1;
    }

    cpool_options_init(&o, sizeof o);
    o.connector = cpool_mem_connector();
    o.connector_ctx = server;
    o.target = "localhost:5432";
    o.max_pool_size = MAX_POOL_SIZE;
    o.min_pool_size = MIN_POOL_SIZE;
    o.on_event = on_event;
    o.event_ctx = &tally;
    rc = cpool_create(&o, &pool, &err);
    if (rc == 0)
        rc = cpool_ready(pool, &err);
    if (rc != 0) {
        fprintf(stderr, "demo: %s: %s\n", cpool_err_name(rc), err.message);
        cpool_destroy(pool);
        cpool_mem_destroy(server);
        free(workers);
        return 1;
    }

    printf("cpool demo: %d threads share a pool of at most %d connections for %.1f s\n",
           nthreads, MAX_POOL_SIZE, seconds);
    printf("(in-memory connector at %s; each lease held ~%d us; the pool is\n"
           " cleared and readied again half way through)\n\n",
           cpool_address(pool), HOLD_NS / 1000);

    int64_t start = now_ns();
    int started = 0;
    for (int i = 0; i < nthreads; i++) {
        workers[i].pool = pool;
        workers[i].stop = &stop;
        if (pthread_create(&workers[i].thread, NULL, work, &workers[i]) != 0) {
            fprintf(stderr, "demo: could not start thread %d\n", i);
            break;
        }
        started++;
    }

    int64_t total_ns = (int64_t)(seconds * 1e9);
    sleep_ns(total_ns / 2);
    printf("pool:\n");
    print_counts("before cpool_clear():", pool);
    if (cpool_clear(pool, 0, NULL, &err) != 0)
        fprintf(stderr, "demo: clear: %s\n", err.message);
    sleep_ns(10000000); /* 10 ms paused: checkouts fail fast meanwhile */
    if (cpool_ready(pool, &err) != 0)
        fprintf(stderr, "demo: ready: %s\n", err.message);
    sleep_ns(total_ns - total_ns / 2 - 10000000);
    atomic_store(&stop, true);

    unsigned long long ok = 0, failed[MAX_FAILURE_CODES] = {0}, nfailed = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(workers[i].thread, NULL);
        ok += workers[i].ok;
        for (int c = 0; c < MAX_FAILURE_CODES; c++) {
            failed[c] += workers[i].failed[c];
            nfailed += workers[i].failed[c];
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    print_counts("at the end:", pool);

    cpool_close(pool); /* emits ConnectionPoolClosed, closes what is left */
    cpool_destroy(pool);

    printf("\ncheckouts:\n");
    printf("  %-22s %llu  (%.0f per second, %.0f per thread per second)\n", "succeeded", ok,
           (double)ok / elapsed, (double)ok / elapsed / started);
    printf("  %-22s %llu", "failed", nfailed);
    const char *sep = "  (";
    for (int c = 0; c < MAX_FAILURE_CODES; c++) {
        if (failed[c] != 0) {
            printf("%s%s %llu", sep, c == 0 ? "other" : cpool_err_name(-c), failed[c]);
            sep = ", ";
        }
    }
    printf("%s\n", nfailed != 0 ? ")" : "");
    unsigned long long nout = atomic_load(&tally.by_type[CPOOL_EV_CHECKED_OUT]);
    if (nout != 0)
        printf("  %-22s average %.1f us, longest %.2f ms\n", "time to check out",
               (double)atomic_load(&tally.checkout_ns_sum) / (double)nout / 1e3,
               (double)atomic_load(&tally.checkout_ns_max) / 1e6);

    printf("\nCMAP events, by type:\n");
    for (int t = 0; t < CPOOL_EV_COUNT_; t++) {
        printf("  %-28s %10llu", cpool_event_name((cpool_event_type)t),
               atomic_load(&tally.by_type[t]));
        if (t == CPOOL_EV_CONN_CLOSED)
            print_reasons(tally.closed_by_reason, 4, cpool_close_reason_name);
        if (t == CPOOL_EV_CHECKOUT_FAILED)
            print_reasons(tally.failed_by_reason, 3,
                          cpool_checkout_failure_name);
        printf("\n");
    }

    cpool_mem_stats s;
    cpool_mem_get_stats(server, &s);
    printf("\nthe in-memory server saw:\n");
    printf("  connects %" PRIu64 ", closes %" PRIu64 ", open now %" PRIu64 ", resets %" PRIu64
           ", checks %" PRIu64 "\n",
           s.connects, s.closes, s.open, s.resets, s.checks);

    cpool_mem_destroy(server);
    free(workers);
    return s.open == 0 ? 0 : 1;
}
