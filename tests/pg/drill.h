/* drill.h -- what the PostgreSQL fault drills share.
 *
 *   - control of the drill's own server through scripts/pg-server.sh (the
 *     case is told where through the environment, see drill_env_get);
 *   - plain libpq connections that bypass the pool: "does the server accept
 *     connections", "how many sessions does the pool hold on the server";
 *   - a load: several threads that check out, run a short query through
 *     the native PGconn and check in, recording the wait and the outcome of
 *     every checkout, while the case injects a fault;
 *   - the checks every drill ends with (max wait, recovery, no leak) and
 *     the summary line it prints.
 *
 * Everything is static inline, like test.h, so the drill is one file. */
#ifndef CPOOL_DRILL_H
#define CPOOL_DRILL_H

#include "test.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <dirent.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

/* ------------------------------------------------------------------ bounds */

/* The load's shape and the pool options every drill starts from. */
#define DRILL_THREADS 6
#define DRILL_MAX_POOL 4
#define DRILL_CHECKOUT_TIMEOUT_MS 1000
#define DRILL_CONNECT_TIMEOUT_MS 2000
#define DRILL_BACKOFF_BASE_MS 50
#define DRILL_BACKOFF_MAX_MS 500
#define DRILL_BACKOFF_JITTER 0.2
#define DRILL_BREAKER_THRESHOLD 5

/* Bound 1: a checkout returns by its deadline; the margin covers waking up
 * and scheduling on a loaded two-core host under a sanitizer. */
#define DRILL_WAIT_MARGIN_MS 250
/* Bound 2: once the server accepts connections again, the pool serves
 * within one establishment (an attempt that began just before may run up to
 * connect_timeout_ms) plus one backoff step (at most backoff_max_ms,
 * stretched by the jitter). */
#define DRILL_RECOVERY_BOUND_MS                                               \
    (DRILL_CONNECT_TIMEOUT_MS +                                               \
     (int64_t)(DRILL_BACKOFF_MAX_MS * (1.0 + DRILL_BACKOFF_JITTER)))
/* Bound 3: backends exit asynchronously; the session count must match the
 * pool's total within this long. */
#define DRILL_SETTLE_MS 5000
/* A checkout failed "fast" by the circuit breaker returns within this. */
#define DRILL_FAST_FAIL_MS 100

#define DRILL_APP "cpool_drill"
#define DRILL_MONITOR_APP "cpool_drill_monitor"

/* ------------------------------------------------------------------ env */

/* Where the case's server lives; CMake passes it in the environment. A
 * missing variable fails the case (a drill never skips). */
typedef struct drill_env {
    const char *script; /* scripts/pg-server.sh */
    const char *dir;    /* the instance's state directory */
    int port;           /* 127.0.0.1:port */
} drill_env;

static inline drill_env drill_env_get(void)
{
    drill_env e;
    const char *port = getenv("CPOOL_DRILL_PG_PORT");
    e.script = getenv("CPOOL_DRILL_PG_SCRIPT");
    e.dir = getenv("CPOOL_DRILL_PG_DIR");
    if (e.script == NULL || e.dir == NULL || port == NULL)
        FAIL("CPOOL_DRILL_PG_SCRIPT, CPOOL_DRILL_PG_DIR and CPOOL_DRILL_PG_PORT must "
             "be set (ctest sets them; see docs/drills.md)");
    e.port = atoi(port);
    if (e.port <= 0 || e.port > 65535)
        FAIL("CPOOL_DRILL_PG_PORT=%s is not a port", port);
    return e;
}

/* ------------------------------------------------------------------ script */

/* Starts `pg-server.sh VERB DIR [PORT]` without waiting. posix_spawn rather
 * than fork: the load threads keep running meanwhile, and a child that only
 * execs needs nothing of the parent's state. */
static inline pid_t drill_script_spawn(const drill_env *env, const char *verb, bool with_port)
{
    char port[16];
    snprintf(port, sizeof port, "%d", env->port);
    char *argv[] = {(char *)"bash", (char *)env->script, (char *)verb, (char *)env->dir,
                    with_port ? port : NULL, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/bash", NULL, NULL, argv, environ);
    if (rc != 0)
        FAIL("posix_spawn %s %s: %s", env->script, verb, strerror(rc));
    return pid;
}

/* Waits for a spawned script; fails the case when it does not finish in
 * time (it is killed first) or exits non-zero. */
static inline void drill_script_wait(pid_t pid, const char *verb, int64_t timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            FAIL("waitpid(pg-server.sh %s): %s", verb, strerror(errno));
        if (test_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            FAIL("pg-server.sh %s did not finish within %lld ms", verb,
                 (long long)timeout_ms);
        }
        test_sleep_ms(5);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("pg-server.sh %s failed (status %d); its output is above", verb, status);
}

static inline void drill_script(const drill_env *env, const char *verb, bool with_port)
{
    drill_script_wait(drill_script_spawn(env, verb, with_port), verb, 30000);
}

/* ------------------------------------------------------------------ libpq */

/* A plain connection that bypasses the pool, or NULL; `why` (may be NULL)
 * receives libpq's message. libpq's own connect_timeout (2 s, its minimum)
 * bounds it. */
static inline PGconn *drill_pg_connect(int port, char *why, size_t whysize)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    const char *const keys[] = {"host", "port", "dbname", "user", "application_name",
                                "connect_timeout", "sslmode", "gssencmode", NULL};
    const char *const vals[] = {"127.0.0.1", port_s, "postgres", "postgres",
                                DRILL_MONITOR_APP, "2", "disable", "disable", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    if (c != NULL && PQstatus(c) == CONNECTION_OK)
        return c;
    if (why != NULL)
        snprintf(why, whysize, "%s", c != NULL ? PQerrorMessage(c) : "out of memory");
    PQfinish(c);
    return NULL;
}

/* Runs `sql` (one row, one column expected) and copies the value; false
 * when the query fails. */
static inline bool drill_pg_value(PGconn *c, const char *sql, char *out, size_t size)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1;
    if (ok)
        snprintf(out, size, "%s", PQgetvalue(r, 0, 0));
    else
        snprintf(out, size, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* When the postmaster started (text), or false when the server cannot be
 * reached: tells a restarted server from the one before. */
static inline bool drill_pg_start_time(int port, char *out, size_t size)
{
    PGconn *c = drill_pg_connect(port, NULL, 0);
    if (c == NULL)
        return false;
    bool ok = drill_pg_value(c, "SELECT pg_postmaster_start_time()::text", out, size);
    PQfinish(c);
    return ok;
}

/* The number of server sessions the pool holds (application_name
 * DRILL_APP), or -1 when the server cannot be reached. */
static inline int drill_pg_sessions(int port)
{
    PGconn *c = drill_pg_connect(port, NULL, 0);
    if (c == NULL)
        return -1;
    char v[64];
    bool ok = drill_pg_value(c,
                             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"
                             DRILL_APP "'",
                             v, sizeof v);
    PQfinish(c);
    return ok ? atoi(v) : -1;
}

/* Polls until the server accepts connections and is not the postmaster
 * that started at `old_start` (NULL: any); returns the time (ns) of the
 * first successful probe. Fails the case after timeout_ms. */
static inline int64_t drill_wait_up(int port, const char *old_start, int64_t timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    char now_start[128], why[512] = "";
    for (;;) {
        PGconn *c = drill_pg_connect(port, why, sizeof why);
        if (c != NULL) {
            bool ok = drill_pg_value(c, "SELECT pg_postmaster_start_time()::text", now_start,
                                     sizeof now_start);
            int64_t t = test_now_ns();
            PQfinish(c);
            if (ok && (old_start == NULL || strcmp(old_start, now_start) != 0))
                return t;
            if (!ok)
                snprintf(why, sizeof why, "query failed: %s", now_start);
            else
                snprintf(why, sizeof why, "still the old postmaster (started %s)", now_start);
        }
        if (test_now_ms() > deadline)
            FAIL("server on port %d not accepting connections after %lld ms: %s", port,
                 (long long)timeout_ms, why);
        test_sleep_ms(5);
    }
}

/* Polls until nothing accepts connections on the port. */
static inline void drill_wait_down(int port, int64_t timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        PGconn *c = drill_pg_connect(port, NULL, 0);
        if (c == NULL)
            return;
        PQfinish(c);
        if (test_now_ms() > deadline)
            FAIL("server on port %d still accepts connections after %lld ms", port,
                 (long long)timeout_ms);
        test_sleep_ms(10);
    }
}

/* ------------------------------------------------------------------ pool */

/* The pool's target: the drill's pool options in the query (the pool takes
 * them out), `extra` appended ("&minPoolSize=2", may be ""). */
static inline void drill_target_with(char *buf, size_t size, int port,
                                     int connect_timeout_ms, int breaker_threshold,
                                     const char *extra)
{
    int n = snprintf(buf, size,
                     "postgresql://postgres@127.0.0.1:%d/postgres?application_name=" DRILL_APP
                     "&sslmode=disable&gssencmode=disable&maxPoolSize=%d"
                     "&connect_timeout_ms=%d&backoff_base_ms=%d&backoff_max_ms=%d"
                     "&backoff_jitter=%g&breaker_threshold=%d%s",
                     port, DRILL_MAX_POOL, connect_timeout_ms, DRILL_BACKOFF_BASE_MS,
                     DRILL_BACKOFF_MAX_MS, DRILL_BACKOFF_JITTER, breaker_threshold, extra);
    if (n < 0 || (size_t)n >= size)
        FAIL("target does not fit in %zu bytes", size);
}

static inline void drill_target(char *buf, size_t size, int port, const char *extra)
{
    drill_target_with(buf, size, port, DRILL_CONNECT_TIMEOUT_MS, DRILL_BREAKER_THRESHOLD,
                      extra);
}

static inline cpool *drill_pool_open(const char *target)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.ignore_env = true; /* CPOOL_* of the caller's shell must not change the drill */
    cpool *p = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_open(target, &o, &p, &e);
    if (rc != CPOOL_OK || p == NULL)
        FAIL("cpool_open(%s): %s: \"%s\"", target, cpool_err_name(rc), e.message);
    return p;
}

static inline cpool_stats drill_stats(cpool *p)
{
    cpool_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (cpool_get_stats(p, &s) != CPOOL_OK)
        FAIL("cpool_get_stats failed");
    return s;
}

/* ------------------------------------------------------------------ load */

/* A distinct kind of failed checkout: code, classification, native code,
 * with how many and the first message. */
typedef struct drill_failure {
    int code;
    cpool_phase phase;
    cpool_fail_kind kind;
    unsigned labels;
    int native;
    uint64_t n;
    int64_t max_ns;     /* longest wait among them */
    char message[256];  /* the first one's */
} drill_failure;

#define DRILL_FAILURE_KINDS 16

/* What one load thread saw; merged after the threads are joined. */
typedef struct drill_tally {
    uint64_t checkouts, ok;
    uint64_t query_ok, query_failed, broken; /* broken: checked in BROKEN */
    int64_t max_wait_ns;                     /* every checkout, any outcome */
    drill_failure failures[DRILL_FAILURE_KINDS];
    size_t nfailures;
    uint64_t failures_unrecorded; /* kinds beyond DRILL_FAILURE_KINDS */
    char query_error[256];        /* the first failed query's message */
    /* Checkouts that began after drill_load.late_ns (the circuit was seen
     * open): how each ended. */
    uint64_t late_checkouts, late_ok, late_unavailable, late_connect, late_other;
    int64_t late_unavailable_max_ns;
    char late_other_message[256]; /* the first "other" one's */
} drill_tally;

typedef struct drill_load drill_load;

typedef struct drill_worker {
    drill_load *load;
    pthread_t thread;
    drill_tally tally; /* the thread's own until it is joined */
    atomic_bool done;
} drill_worker;

struct drill_load {
    cpool *pool;
    const char *query;
    int nthreads;
    atomic_bool stop;
    /* Recovery: the first query that succeeded after `mark_ns` (0 = not
     * armed) stores its completion time in first_ok_ns. */
    _Atomic int64_t mark_ns;
    _Atomic int64_t first_ok_ns;
    /* Checkouts that begin after late_ns (0 = not armed) are tallied apart. */
    _Atomic int64_t late_ns;
    _Atomic uint64_t query_ok;     /* running totals, for progress checks */
    _Atomic uint64_t query_failed;
    _Atomic uint64_t failed;       /* failed checkouts */
    /* drill_load_pause(): the threads stop between checkouts and count
     * themselves in `parked`, holding no lease. */
    atomic_bool pause;
    atomic_int parked;
    drill_worker workers[DRILL_THREADS];
};

/* Counts `n` failed checkouts like `f` (code, classification, native code)
 * into t; `f->message` is kept for the first of its kind. */
static inline void drill_tally_note(drill_tally *t, const drill_failure *f)
{
    for (size_t i = 0; i < t->nfailures; i++) {
        drill_failure *g = &t->failures[i];
        if (g->code == f->code && g->phase == f->phase && g->kind == f->kind &&
            g->labels == f->labels && g->native == f->native) {
            g->n += f->n;
            if (f->max_ns > g->max_ns)
                g->max_ns = f->max_ns;
            return;
        }
    }
    if (t->nfailures == DRILL_FAILURE_KINDS) {
        t->failures_unrecorded += f->n;
        return;
    }
    t->failures[t->nfailures++] = *f;
}

static inline void drill_tally_fail(drill_tally *t, const cpool_error *e, int rc,
                                    int64_t wait_ns)
{
    drill_failure f;
    memset(&f, 0, sizeof f);
    f.code = rc;
    f.phase = e->phase;
    f.kind = e->kind;
    f.labels = e->labels;
    f.native = e->native;
    f.n = 1;
    f.max_ns = wait_ns;
    snprintf(f.message, sizeof f.message, "%s", e->message);
    drill_tally_note(t, &f);
}

static inline void *drill_worker_main(void *arg)
{
    drill_worker *w = arg;
    drill_load *l = w->load;
    drill_tally *t = &w->tally;
    while (!atomic_load(&l->stop)) {
        if (atomic_load(&l->pause)) {
            atomic_fetch_add(&l->parked, 1);
            while (atomic_load(&l->pause) && !atomic_load(&l->stop))
                test_sleep_ms(1);
            atomic_fetch_sub(&l->parked, 1);
            continue;
        }
        cpool_conn *c = NULL;
        cpool_error e;
        memset(&e, 0, sizeof e);
        int64_t t0 = test_now_ns();
        int rc = cpool_checkout(l->pool, DRILL_CHECKOUT_TIMEOUT_MS, &c, &e);
        int64_t waited = test_now_ns() - t0;
        t->checkouts++;
        if (waited > t->max_wait_ns)
            t->max_wait_ns = waited;
        int64_t late = atomic_load(&l->late_ns);
        if (late != 0 && t0 > late) {
            t->late_checkouts++;
            if (rc == CPOOL_OK) {
                t->late_ok++;
            } else if (rc == CPOOL_EUNAVAILABLE) {
                t->late_unavailable++;
                if (waited > t->late_unavailable_max_ns)
                    t->late_unavailable_max_ns = waited;
            } else if (rc == CPOOL_ECONNECT) {
                t->late_connect++;
            } else if (t->late_other++ == 0) {
                snprintf(t->late_other_message, sizeof t->late_other_message, "%s: %.200s",
                         cpool_err_name(rc), e.message);
            }
        }
        if (rc != CPOOL_OK) {
            drill_tally_fail(t, &e, rc, waited);
            atomic_fetch_add(&l->failed, 1);
            /* A client that was refused does not spin: the breaker answers
             * in microseconds, and two cores are shared. */
            test_sleep_ms(10);
            continue;
        }
        t->ok++;
        PGconn *pg = cpool_conn_native(c);
        if (pg == NULL)
            FAIL("cpool_conn_native returned NULL for a lease");
        PGresult *r = PQexec(pg, l->query);
        ExecStatusType st = PQresultStatus(r);
        bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
        if (!ok && t->query_error[0] == '\0')
            snprintf(t->query_error, sizeof t->query_error, "%s",
                     r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(pg));
        PQclear(r);
        /* A failed query on a live session (a statement error) keeps the
         * connection; a dead one is returned BROKEN so the pool closes it. */
        unsigned flags = !ok && PQstatus(pg) == CONNECTION_BAD ? CPOOL_CHECKIN_BROKEN : 0;
        cpool_error ce;
        int crc = cpool_checkin(l->pool, c, flags, &ce);
        if (crc != CPOOL_OK)
            FAIL("cpool_checkin: %s: \"%s\"", cpool_err_name(crc), ce.message);
        int64_t done = test_now_ns();
        if (flags != 0)
            t->broken++;
        if (!ok) {
            t->query_failed++;
            atomic_fetch_add(&l->query_failed, 1);
            continue;
        }
        t->query_ok++;
        atomic_fetch_add(&l->query_ok, 1);
        int64_t mark = atomic_load(&l->mark_ns);
        if (mark != 0 && done > mark) {
            int64_t none = 0;
            atomic_compare_exchange_strong(&l->first_ok_ns, &none, done);
        }
    }
    atomic_store(&w->done, true);
    return NULL;
}

static inline void drill_load_start(drill_load *l, cpool *pool, const char *query)
{
    memset(l, 0, sizeof *l);
    l->pool = pool;
    l->query = query;
    l->nthreads = DRILL_THREADS;
    atomic_init(&l->stop, false);
    atomic_init(&l->mark_ns, 0);
    atomic_init(&l->first_ok_ns, 0);
    atomic_init(&l->late_ns, 0);
    atomic_init(&l->query_ok, 0);
    atomic_init(&l->query_failed, 0);
    atomic_init(&l->failed, 0);
    atomic_init(&l->pause, false);
    atomic_init(&l->parked, 0);
    for (int i = 0; i < l->nthreads; i++) {
        l->workers[i].load = l;
        atomic_init(&l->workers[i].done, false);
        TEST_THREAD_START(&l->workers[i].thread, drill_worker_main, &l->workers[i]);
    }
}

/* Waits until the load has run `n` more successful queries. */
static inline void drill_load_progress(drill_load *l, uint64_t n, int64_t timeout_ms)
{
    uint64_t want = atomic_load(&l->query_ok) + n;
    WAIT_UNTIL(atomic_load(&l->query_ok) >= want, timeout_ms);
}

/* Parks every load thread between two checkouts (none holds a lease), and
 * lets them go again. */
static inline void drill_load_pause(drill_load *l)
{
    atomic_store(&l->pause, true);
    WAIT_UNTIL(atomic_load(&l->parked) == l->nthreads,
               DRILL_CHECKOUT_TIMEOUT_MS + DRILL_WAIT_MARGIN_MS + 2000);
}

static inline void drill_load_resume(drill_load *l)
{
    atomic_store(&l->pause, false);
}

/* Stops the load and merges what the threads saw into `out`. No thread may
 * hang: each must finish its current checkout (bounded by its timeout) and
 * query within a bound, or the case fails. */
static inline void drill_load_stop(drill_load *l, drill_tally *out)
{
    atomic_store(&l->stop, true);
    int64_t bound = DRILL_CHECKOUT_TIMEOUT_MS + DRILL_WAIT_MARGIN_MS + 2000;
    for (int i = 0; i < l->nthreads; i++) {
        int64_t deadline = test_now_ms() + bound;
        while (!atomic_load(&l->workers[i].done)) {
            if (test_now_ms() > deadline)
                FAIL("load thread %d still running %lld ms after stop: it hangs", i,
                     (long long)bound);
            test_sleep_ms(2);
        }
        pthread_join(l->workers[i].thread, NULL);
    }
    memset(out, 0, sizeof *out);
    for (int i = 0; i < l->nthreads; i++) {
        const drill_tally *t = &l->workers[i].tally;
        out->checkouts += t->checkouts;
        out->ok += t->ok;
        out->query_ok += t->query_ok;
        out->query_failed += t->query_failed;
        out->broken += t->broken;
        if (t->max_wait_ns > out->max_wait_ns)
            out->max_wait_ns = t->max_wait_ns;
        if (out->query_error[0] == '\0')
            snprintf(out->query_error, sizeof out->query_error, "%s", t->query_error);
        out->failures_unrecorded += t->failures_unrecorded;
        out->late_checkouts += t->late_checkouts;
        out->late_ok += t->late_ok;
        out->late_unavailable += t->late_unavailable;
        out->late_connect += t->late_connect;
        if (out->late_other == 0 && t->late_other != 0)
            snprintf(out->late_other_message, sizeof out->late_other_message, "%s",
                     t->late_other_message);
        out->late_other += t->late_other;
        if (t->late_unavailable_max_ns > out->late_unavailable_max_ns)
            out->late_unavailable_max_ns = t->late_unavailable_max_ns;
        for (size_t k = 0; k < t->nfailures; k++)
            drill_tally_note(out, &t->failures[k]);
    }
}

/* Failed checkouts with this code. */
static inline uint64_t drill_failed(const drill_tally *t, int code)
{
    uint64_t n = 0;
    for (size_t i = 0; i < t->nfailures; i++)
        if (t->failures[i].code == code)
            n += t->failures[i].n;
    return n;
}

static inline uint64_t drill_failed_total(const drill_tally *t)
{
    uint64_t n = t->failures_unrecorded;
    for (size_t i = 0; i < t->nfailures; i++)
        n += t->failures[i].n;
    return n;
}

static inline const char *drill_phase_name(cpool_phase p)
{
    static const char *const names[] = {"NONE", "DNS", "CONNECT", "TLS",
                                        "HANDSHAKE", "AUTH", "QUERY"};
    return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

static inline const char *drill_kind_name(cpool_fail_kind k)
{
    static const char *const names[] = {"OTHER", "NETWORK", "TIMEOUT", "DNS",
                                        "CERTIFICATE", "AUTH", "SERVER", "INTERRUPTED",
                                        "CAPACITY"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

/* Prints every kind of failure the load met, so the log shows what the
 * pool answered during the fault. */
static inline void drill_print_failures(const char *drill, const drill_tally *t)
{
    for (size_t i = 0; i < t->nfailures; i++) {
        const drill_failure *f = &t->failures[i];
        printf("drill %s: %llu x %s %s/%s labels=0x%x native=%d max %.1f ms: %s\n", drill,
               (unsigned long long)f->n, cpool_err_name(f->code), drill_phase_name(f->phase),
               drill_kind_name(f->kind), f->labels, f->native, (double)f->max_ns / 1e6,
               f->message);
    }
    if (t->query_error[0] != '\0')
        printf("drill %s: first failed query: %s", drill, t->query_error);
    fflush(stdout);
}

/* Only the answers a pool may give while its backend fails. */
static inline void drill_assert_outcomes(const drill_tally *t, const int *allowed, size_t n)
{
    for (size_t i = 0; i < t->nfailures; i++) {
        bool ok = false;
        for (size_t k = 0; k < n; k++)
            ok = ok || t->failures[i].code == allowed[k];
        if (!ok)
            FAIL("unexpected checkout failure %s (%llu times): \"%s\"",
                 cpool_err_name(t->failures[i].code), (unsigned long long)t->failures[i].n,
                 t->failures[i].message);
    }
    ASSERT_EQ(0, t->failures_unrecorded);
}

/* Bound 1. */
static inline void drill_assert_max_wait(const drill_tally *t)
{
    int64_t max_ms = t->max_wait_ns / 1000000;
    if (max_ms > DRILL_CHECKOUT_TIMEOUT_MS + DRILL_WAIT_MARGIN_MS)
        FAIL("a checkout waited %lld ms, past its %d ms timeout + %d ms margin",
             (long long)max_ms, DRILL_CHECKOUT_TIMEOUT_MS, DRILL_WAIT_MARGIN_MS);
}

/* Arms the recovery mark at `up_ns` (when the server was seen to accept
 * connections again): the load's first query that succeeds after the
 * arming is the recovery. Arm as soon as `up_ns` is known: a query served
 * before the arming is not seen, so a drill that first waits for something
 * else (a script to finish) would measure that wait instead. */
static inline void drill_arm_recovery(drill_load *l, int64_t up_ns)
{
    atomic_store(&l->first_ok_ns, 0);
    atomic_store(&l->mark_ns, up_ns);
}

/* Bound 2: waits for the load's first successful query after `up_ns`,
 * arming the mark there unless drill_arm_recovery() did. Returns the
 * recovery time in ms. */
static inline int64_t drill_measure_recovery(drill_load *l, int64_t up_ns)
{
    if (atomic_load(&l->mark_ns) != up_ns)
        drill_arm_recovery(l, up_ns);
    int64_t deadline = test_now_ms() + DRILL_RECOVERY_BOUND_MS + 5000;
    int64_t first;
    while ((first = atomic_load(&l->first_ok_ns)) < up_ns) {
        /* A thread that read an earlier mark may store a time before this
         * one: drop it and wait for the next. */
        if (first != 0)
            atomic_compare_exchange_strong(&l->first_ok_ns, &first, 0);
        if (test_now_ms() > deadline)
            FAIL("the pool has not served a query %lld ms after the server came back",
                 (long long)(DRILL_RECOVERY_BOUND_MS + 5000));
        test_sleep_ms(1);
    }
    int64_t ms = (first - up_ns) / 1000000;
    if (ms > DRILL_RECOVERY_BOUND_MS)
        FAIL("the pool served again %lld ms after the server accepted connections; bound "
             "connect_timeout_ms + backoff_max_ms * (1 + jitter) = %lld ms",
             (long long)ms, (long long)DRILL_RECOVERY_BOUND_MS);
    return ms;
}

/* Borrows every connection the pool counts, at once, and returns them: the
 * pool's check() looks at each one and replaces the dead, as the load would
 * have done sooner or later (idle connections are reused newest first, so
 * the oldest may sit unused for a while). */
static inline void drill_settle(cpool *pool)
{
    cpool_conn *held[DRILL_MAX_POOL];
    size_t n = 0;
    cpool_counts c = test_counts(pool);
    for (uint32_t i = 0; i < c.total && n < DRILL_MAX_POOL; i++) {
        cpool_error e;
        int rc = cpool_checkout(pool, 3000, &held[n], &e);
        if (rc != CPOOL_OK)
            FAIL("settle: checkout %u of %u: %s: \"%s\"", i + 1, c.total, cpool_err_name(rc),
                 e.message);
        n++;
    }
    for (size_t i = 0; i < n; i++)
        test_checkin(pool, held[i], 0);
}

/* The sockets of this process connected to 127.0.0.1:port, counted once
 * each however many descriptors share one (the PostgreSQL connector keeps
 * a duplicate of each connection's). Cancel requests in flight and the
 * drill's own monitor connections count too. Read from /proc (the links in
 * /proc/self/fd and the table in /proc/net/tcp) without touching the
 * descriptors, which other threads may be closing meanwhile. */
static inline int drill_own_sockets(int port)
{
    unsigned long mine[512];
    int nmine = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        FAIL("opendir /proc/self/fd: %s", strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL && nmine < 512) {
        char path[300], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        unsigned long ino;
        if (sscanf(link, "socket:[%lu]", &ino) == 1)
            mine[nmine++] = ino;
    }
    closedir(d);
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL)
        FAIL("fopen /proc/net/tcp: %s", strerror(errno));
    char line[512];
    int count = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned rport, state;
        unsigned long ino;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &rport,
                   &state, &ino) != 3 ||
            (int)rport != port || state == 0x0A /* LISTEN */)
            continue;
        for (int i = 0; i < nmine; i++)
            if (mine[i] == ino) {
                count++;
                break;
            }
    }
    fclose(f);
    return count;
}

/* The pool's sockets equal its count of connections (no socket outlives
 * its connection, none is opened twice), within DRILL_SETTLE_MS. Returns
 * the count. */
static inline int drill_assert_sockets(cpool *pool, int port)
{
    int64_t deadline = test_now_ms() + DRILL_SETTLE_MS;
    int socks;
    cpool_counts c;
    for (;;) {
        c = test_counts(pool);
        socks = drill_own_sockets(port);
        if (c.pending == 0 && (uint32_t)socks == c.total)
            return socks;
        if (test_now_ms() > deadline)
            break;
        test_sleep_ms(20);
    }
    FAIL("%d sockets to port %d, pool total %u, %d ms after the drill", socks, port, c.total,
         DRILL_SETTLE_MS);
}

/* Bound 3: the pool's server sessions equal its own total once backends
 * that were closed have exited. Returns that number. */
static inline int drill_assert_no_leak(cpool *pool, int port)
{
    drill_settle(pool);
    int64_t deadline = test_now_ms() + DRILL_SETTLE_MS;
    int sessions;
    cpool_counts c;
    for (;;) {
        c = test_counts(pool);
        sessions = drill_pg_sessions(port);
        if (sessions >= 0 && c.pending == 0 && (uint32_t)sessions == c.total) {
            drill_assert_sockets(pool, port);
            return sessions;
        }
        if (test_now_ms() > deadline)
            break;
        test_sleep_ms(50);
    }
    FAIL("leak: %d server sessions with application_name '" DRILL_APP "', pool total %u "
         "(available %u, in use %u, pending %u) after %d ms",
         sessions, c.total, c.available, c.in_use, c.pending, DRILL_SETTLE_MS);
}

/* After cpool_destroy(): every session of the pool is gone from the server. */
static inline void drill_assert_all_closed(int port)
{
    int64_t deadline = test_now_ms() + DRILL_SETTLE_MS;
    int sessions;
    while ((sessions = drill_pg_sessions(port)) != 0) {
        if (test_now_ms() > deadline)
            FAIL("%d server sessions of the pool remain %d ms after cpool_destroy",
                 sessions, DRILL_SETTLE_MS);
        test_sleep_ms(50);
    }
}

/* The one line per drill that the CI log keeps. recovery_ms < 0: not
 * measured in this drill. */
static inline void drill_summary(const char *drill, const drill_tally *t, int64_t recovery_ms,
                                 int sessions, const cpool_stats *s, const char *extra)
{
    char rec[64];
    if (recovery_ms >= 0)
        snprintf(rec, sizeof rec, "%lld ms (bound %lld)", (long long)recovery_ms,
                 (long long)DRILL_RECOVERY_BOUND_MS);
    else
        snprintf(rec, sizeof rec, "n/a");
    double overrun = (double)t->max_wait_ns / 1e6 - DRILL_CHECKOUT_TIMEOUT_MS;
    printf("drill-summary %s: checkouts %llu ok %llu failed %llu (ECONNECT %llu, "
           "ETIMEDOUT %llu, EUNAVAILABLE %llu) queries failed %llu; max wait %.1f ms "
           "(deadline %d, overrun %.1f ms, bound %d); recovery %s; sessions %d = sockets = "
           "pool total %u, leaked 0; breaker opens %llu%s%s\n",
           drill, (unsigned long long)t->checkouts, (unsigned long long)t->ok,
           (unsigned long long)drill_failed_total(t),
           (unsigned long long)drill_failed(t, CPOOL_ECONNECT),
           (unsigned long long)drill_failed(t, CPOOL_ETIMEDOUT),
           (unsigned long long)drill_failed(t, CPOOL_EUNAVAILABLE),
           (unsigned long long)t->query_failed, (double)t->max_wait_ns / 1e6,
           DRILL_CHECKOUT_TIMEOUT_MS, overrun > 0 ? overrun : 0.0,
           DRILL_CHECKOUT_TIMEOUT_MS + DRILL_WAIT_MARGIN_MS, rec, sessions,
           s->counts.total, (unsigned long long)s->breaker_opens, extra[0] ? "; " : "",
           extra);
    fflush(stdout);
}

#endif /* CPOOL_DRILL_H */
