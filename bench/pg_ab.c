/* pg_ab.c -- what the pool costs on a real PostgreSQL, measured with both
 * sides running at once so that the machine's drift cancels out.
 *
 * Each round starts 2N threads together for D seconds: N "raw" threads
 * each own a PGconn and loop PQexec("SELECT 1"); N "pool" threads share a
 * pool of N connections (max = min = N) and loop checkout, the same query
 * on cpool_pg_conn(), check-in. All 2N sessions and their backends compete
 * for the same CPUs at the same moment, so a load that comes and goes
 * (another process, the hypervisor) slows both sides alike, where runs one
 * after the other would charge it to whichever ran then. On a machine whose
 * CPUs are the bottleneck the scheduler gives each thread and backend an
 * even share, so the side that spends more CPU per request does fewer.
 *
 * Which side's threads are created first alternates from round to round.
 *
 * Per round it prints each side's requests per second, their ratio
 * (pool / raw) and each side's client CPU per request (the threads' own
 * CPU time, CLOCK_THREAD_CPUTIME_ID); then the median ratio over the
 * rounds with the lowest and highest, and the median difference in client
 * CPU per request.
 *
 * Usage: pg_ab TARGET [-t N] [-d SECONDS] [-r ROUNDS] [-v check|none] [-b pool|raw]
 *   TARGET  a postgresql:// URI or conninfo string that libpq and
 *           cpool_open() both accept
 *   -t N    threads per side (default 4)
 *   -d S    seconds per round (default 2)
 *   -r R    rounds (default 9)
 *   -v      the pool's validation (default check, the pool's default)
 *   -b raw  the second side runs raw too: an A/A run, which shows what the
 *           method itself reads between two identical sides
 * Exits 0 when every request of every round succeeded. */
#include <cpool/cpool.h>
#include <cpool/cpool_pg.h>
#include <libpq-fe.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_THREADS = 256, MAX_ROUNDS = 99 };

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct round_ctl {
    pthread_barrier_t start;
    atomic_bool stop;
} round_ctl;

typedef struct worker worker;
struct worker {
    round_ctl *ctl;
    bool (*request)(worker *); /* one request: raw_request or pool_request */
    PGconn *own; /* raw side: this thread's connection */
    cpool *pool; /* pool side */
    long ops;
    long failed;
    int64_t cpu_ns;
};

static bool select_one(PGconn *conn)
{
    PGresult *r = PQexec(conn, "SELECT 1");
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok;
}

static bool raw_request(worker *w)
{
    return select_one(w->own);
}

static bool pool_request(worker *w)
{
    cpool_conn *lease;
    if (cpool_checkout(w->pool, 5000, &lease, NULL) != 0)
        return false;
    bool ok = select_one(cpool_pg_conn(lease));
    return cpool_checkin(w->pool, lease, 0, NULL) == 0 && ok;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pthread_barrier_wait(&w->ctl->start);
    int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    while (!atomic_load_explicit(&w->ctl->stop, memory_order_relaxed)) {
        if (w->request(w))
            w->ops++;
        else
            w->failed++;
    }
    w->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int usage(void)
{
    fprintf(stderr, "usage: pg_ab TARGET [-t N] [-d SECONDS] [-r ROUNDS] [-v check|none] "
                    "[-b pool|raw]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-')
        return usage();
    const char *target = argv[1];
    int n = 4, rounds = 9;
    double seconds = 2;
    cpool_validation validation = CPOOL_VALIDATE_CHECK;
    bool aa = false; /* -b raw */
    for (int i = 2; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            return usage();
        if (!strcmp(argv[i], "-t"))
            n = atoi(v);
        else if (!strcmp(argv[i], "-d"))
            seconds = atof(v);
        else if (!strcmp(argv[i], "-r"))
            rounds = atoi(v);
        else if (!strcmp(argv[i], "-b") && (!strcmp(v, "pool") || !strcmp(v, "raw")))
            aa = !strcmp(v, "raw");
        else if (!strcmp(argv[i], "-v") && (!strcmp(v, "check") || !strcmp(v, "none")))
            validation = !strcmp(v, "check") ? CPOOL_VALIDATE_CHECK : CPOOL_VALIDATE_NONE;
        else
            return usage();
        i++;
    }
    if (n < 1 || n > MAX_THREADS || rounds < 1 || rounds > MAX_ROUNDS || !(seconds > 0))
        return usage();

    static worker raw[MAX_THREADS], pooled[MAX_THREADS];
    for (int i = 0; i < n; i++) {
        for (int side = 0; side < (aa ? 2 : 1); side++) {
            PGconn *c = PQconnectdb(target);
            if (PQstatus(c) != CONNECTION_OK) {
                fprintf(stderr, "pg_ab: connect: %s", PQerrorMessage(c));
                return 1;
            }
            (side == 0 ? raw : pooled)[i].own = c;
        }
    }
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.max_pool_size = o.min_pool_size = (uint32_t)n;
    o.validation = validation;
    o.ignore_env = true;
    cpool *pool;
    cpool_error err;
    if (cpool_open(target, &o, &pool, &err) != 0 ||
        cpool_wait_connected(pool, (uint32_t)n, 10000, &err) != 0) {
        fprintf(stderr, "pg_ab: pool: %s\n", err.message);
        return 1;
    }

    if (aa)
        printf("# pg_ab: A/A, %d raw threads on each side at once, %.1f s x %d rounds\n", n,
               seconds, rounds);
    else
        printf("# pg_ab: %d raw threads and %d pool threads at once, %.1f s x %d rounds; "
               "pool of %d, validation %s\n",
               n, n, seconds, rounds, n, validation == CPOOL_VALIDATE_CHECK ? "check" : "none");
    printf("round  raw_req/s  %s_req/s  %s/raw  raw_cpu_us/req  %s_cpu_us/req\n",
           aa ? "raw2" : "pool", aa ? "raw2" : "pool", aa ? "raw2" : "pool");
    double ratio[MAX_ROUNDS], extra_ns[MAX_ROUNDS];
    long failed = 0;
    for (int r = 0; r < rounds; r++) {
        round_ctl ctl;
        pthread_barrier_init(&ctl.start, NULL, (unsigned)(2 * n + 1));
        atomic_init(&ctl.stop, false);
        pthread_t th[2 * MAX_THREADS];
        for (int i = 0; i < n; i++) {
            raw[i] = (worker){.ctl = &ctl, .request = raw_request, .own = raw[i].own};
            pooled[i] = (worker){.ctl = &ctl,
                                 .request = aa ? raw_request : pool_request,
                                 .own = pooled[i].own,
                                 .pool = pool};
            /* Which side's threads start first alternates by round. */
            worker *first = r % 2 ? &pooled[i] : &raw[i];
            worker *second = r % 2 ? &raw[i] : &pooled[i];
            if (pthread_create(&th[2 * i], NULL, worker_main, first) != 0 ||
                pthread_create(&th[2 * i + 1], NULL, worker_main, second) != 0) {
                fprintf(stderr, "pg_ab: pthread_create failed\n");
                return 1;
            }
        }
        pthread_barrier_wait(&ctl.start);
        int64_t t0 = clock_ns(CLOCK_MONOTONIC);
        struct timespec nap = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
        while (nanosleep(&nap, &nap) != 0)
            ;
        atomic_store(&ctl.stop, true);
        for (int i = 0; i < 2 * n; i++)
            pthread_join(th[i], NULL);
        double el = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
        pthread_barrier_destroy(&ctl.start);
        long ops[2] = {0, 0};
        int64_t cpu[2] = {0, 0};
        for (int i = 0; i < n; i++) {
            ops[0] += raw[i].ops;
            ops[1] += pooled[i].ops;
            cpu[0] += raw[i].cpu_ns;
            cpu[1] += pooled[i].cpu_ns;
            failed += raw[i].failed + pooled[i].failed;
        }
        if (ops[0] == 0 || ops[1] == 0) {
            fprintf(stderr, "pg_ab: a side did no request in round %d\n", r + 1);
            return 1;
        }
        double cpu_req[2] = {(double)cpu[0] / (double)ops[0], (double)cpu[1] / (double)ops[1]};
        ratio[r] = (double)ops[1] / (double)ops[0];
        extra_ns[r] = cpu_req[1] - cpu_req[0];
        printf("%5d  %9.0f  %10.0f  %8.3f  %14.2f  %15.2f\n", r + 1, ops[0] / el, ops[1] / el,
               ratio[r], cpu_req[0] / 1e3, cpu_req[1] / 1e3);
        fflush(stdout);
    }
    double lo = ratio[0], hi = ratio[0];
    for (int r = 1; r < rounds; r++) {
        lo = ratio[r] < lo ? ratio[r] : lo;
        hi = ratio[r] > hi ? ratio[r] : hi;
    }
    printf("%s/raw: median %.3f (lowest %.3f, highest %.3f) over %d rounds; "
           "client CPU per request: %s %+.0f ns (median)\n",
           aa ? "raw2" : "pool", median(ratio, rounds), lo, hi, rounds, aa ? "raw2" : "pool",
           median(extra_ns, rounds));
    if (failed != 0)
        printf("FAILED: %ld requests failed\n", failed);
    cpool_destroy(pool);
    for (int i = 0; i < n; i++) {
        PQfinish(raw[i].own);
        if (pooled[i].own != NULL)
            PQfinish(pooled[i].own);
    }
    return failed == 0 ? 0 : 1;
}
