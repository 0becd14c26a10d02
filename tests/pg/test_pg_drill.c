/* test_pg_drill.c -- fault drills: the pool under load from several threads
 * while a real PostgreSQL server is killed, restarted, has its backends
 * terminated or its connection slots exhausted, and against a listener that
 * never answers. Each drill starts its own server (scripts/pg-server.sh, on
 * the port and in the directory CMake gives it) and ends with the same
 * three checks:
 *   1. no checkout waited past its deadline (timeout + DRILL_WAIT_MARGIN_MS);
 *   2. the pool serves again within DRILL_RECOVERY_BOUND_MS of the server
 *      accepting connections (seen by a plain libpq connection);
 *   3. nothing leaked: the pool's sessions in pg_stat_activity equal its own
 *      total, and none remain after cpool_destroy().
 * docs/drills.md describes them and the numbers measured. */
#include "pg/drill.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* Long enough that leases overlap and checkouts wait for each other (six
 * threads, four connections), short enough to run thousands. */
#define DRILL_QUERY "SELECT pg_sleep(0.002)"

/* One drill's server, pool and load. */
typedef struct drill_run {
    drill_env env;
    char start_time[128]; /* of the postmaster before the fault */
    char target[512];
    cpool *pool;
    drill_load load;
} drill_run;

/* Starts the drill's server (a clean one: the script stops a leftover and
 * drops ALTER SYSTEM settings) and notes when its postmaster started. A
 * server that cannot start fails the drill. */
static void server_start(drill_run *r)
{
    r->env = drill_env_get();
    drill_script(&r->env, "start", /* with_port= */ true);
    if (!drill_pg_start_time(r->env.port, r->start_time, sizeof r->start_time))
        FAIL("the drill's server on port %d does not answer after start", r->env.port);
}

/* Opens the pool and runs the load until it has served a few hundred
 * queries, by then on all four connections. */
static void load_begin(drill_run *r, const char *extra)
{
    drill_target(r->target, sizeof r->target, r->env.port, extra);
    r->pool = drill_pool_open(r->target);
    drill_load_start(&r->load, r->pool, DRILL_QUERY);
    drill_load_progress(&r->load, 300, 10000);
    ASSERT_EQ(DRILL_MAX_POOL, test_counts(r->pool).total);
}

/* Stops the load, prints what it met and applies bound 1. */
static void load_end(drill_run *r, const char *name, drill_tally *t)
{
    drill_load_stop(&r->load, t);
    drill_print_failures(name, t);
    drill_assert_max_wait(t);
}

/* Bound 3, then destroys the pool and checks its sessions are gone.
 * Returns the number of sessions the pool held. */
static int pool_end(drill_run *r, cpool_stats *s)
{
    int sessions = drill_assert_no_leak(r->pool, r->env.port);
    *s = drill_stats(r->pool);
    cpool_destroy(r->pool);
    r->pool = NULL;
    drill_assert_all_closed(r->env.port);
    return sessions;
}

/* A server restart drill's common part: the failures the load may see are
 * the pool's answers to a backend that is down, never anything else. */
static const int down_outcomes[] = {CPOOL_ECONNECT, CPOOL_ETIMEDOUT, CPOOL_EUNAVAILABLE};
#define NDOWN (sizeof down_outcomes / sizeof down_outcomes[0])

/* Spawns `verb` (start, restart-fast), waits for a new postmaster to accept
 * connections, arms the load's recovery mark then, and waits for the script
 * to finish; returns when the server was first seen accepting (ns). */
static int64_t bring_back(drill_run *r, const char *verb)
{
    pid_t pid = drill_script_spawn(&r->env, verb, strcmp(verb, "start") == 0);
    int64_t up = drill_wait_up(r->env.port, r->start_time, 30000);
    drill_arm_recovery(&r->load, up);
    drill_script_wait(pid, verb, 30000);
    return up;
}

/* ---------------------------------------------------------------- drills */

/* kill -9 of the postmaster: its backends exit, every connection of the
 * pool dies at once, and new ones are refused until the restart. */
TEST_TAGGED(kill9_postmaster_and_restart, "server")
{
    drill_run r;
    server_start(&r);
    load_begin(&r, "");

    int64_t t_kill = test_now_ns();
    drill_script(&r.env, "kill9", /* with_port= */ false); /* ~1.7 s: PID 1 reaps late */
    drill_wait_down(r.env.port, 2000);
    uint64_t failed_at_kill = atomic_load(&r.load.failed);
    test_sleep_ms(1000); /* the load keeps asking a dead server */
    ASSERT_GT(atomic_load(&r.load.failed), failed_at_kill);
    cpool_stats down = drill_stats(r.pool);
    ASSERT_GT(down.connect_failures, 0);

    int64_t up = bring_back(&r, "start");
    int64_t recovery = drill_measure_recovery(&r.load, up);
    drill_load_progress(&r.load, 300, 5000);

    drill_tally t;
    load_end(&r, "kill9_postmaster_and_restart", &t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    /* Every connection of the killed server was found dead and closed. */
    ASSERT_GE(s.closed[CPOOL_CLOSE_ERROR], DRILL_MAX_POOL);
    char extra[128];
    snprintf(extra, sizeof extra, "down %.1f s, connect failures %llu",
             (double)(up - t_kill) / 1e9, (unsigned long long)s.connect_failures);
    drill_summary("kill9_postmaster_and_restart", &t, recovery, sessions, &s, extra);
}

/* pg_ctl restart -m fast: backends are terminated (in-flight queries fail),
 * the server is down for a few hundred milliseconds. */
TEST_TAGGED(restart_fast, "server")
{
    drill_run r;
    server_start(&r);
    load_begin(&r, "");
    cpool_stats before = drill_stats(r.pool);

    int64_t t_restart = test_now_ns();
    int64_t up = bring_back(&r, "restart-fast");
    int64_t recovery = drill_measure_recovery(&r.load, up);
    drill_load_progress(&r.load, 300, 5000);

    drill_tally t;
    load_end(&r, "restart_fast", &t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    /* The four connections to the old server were all replaced. */
    ASSERT_GE(s.closed[CPOOL_CLOSE_ERROR] - before.closed[CPOOL_CLOSE_ERROR], DRILL_MAX_POOL);
    ASSERT_GE(s.connections_ready - before.connections_ready, DRILL_MAX_POOL);
    char extra[160];
    snprintf(extra, sizeof extra, "restart took %.0f ms, queries broken %llu, connect "
             "failures %llu",
             (double)(up - t_restart) / 1e6, (unsigned long long)t.broken,
             (unsigned long long)s.connect_failures);
    drill_summary("restart_fast", &t, recovery, sessions, &s, extra);
}

/* pg_terminate_backend() on every session of the pool; writes the pids of
 * the backends signalled into pids (up to max) and returns how many. */
static int terminate_pool_sessions(int port, int *pids, int max)
{
    char why[512];
    PGconn *admin = drill_pg_connect(port, why, sizeof why);
    if (admin == NULL)
        FAIL("admin connection: %s", why);
    /* MATERIALIZED: the filter must run before pg_terminate_backend(), which
     * the planner would otherwise be free to call on every backend. */
    PGresult *res = PQexec(admin, "WITH s AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
                                  "WHERE application_name = '" DRILL_APP "') "
                                  "SELECT pid FROM s WHERE pg_terminate_backend(pid)");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        FAIL("pg_terminate_backend: %s", PQresultErrorMessage(res));
    int n = PQntuples(res);
    for (int i = 0; i < n && i < max; i++)
        pids[i] = atoi(PQgetvalue(res, i, 0));
    PQclear(res);
    PQfinish(admin);
    return n;
}

/* True once none of the processes exists: a backend's socket is closed when
 * its process exits, which comes after it left pg_stat_activity (and after
 * it sent its FATAL message). The drill runs on the server's host, so the
 * pids are ours to probe. */
static bool processes_gone(const int *pids, int n)
{
    for (int i = 0; i < n; i++)
        if (kill(pids[i], 0) == 0 || errno != ESRCH)
            return false;
    return true;
}

/* pg_terminate_backend() on every session of the pool while the server
 * stays up, twice: the pool replaces the dead connections without a single
 * failed checkout.
 *   1. The load is parked, every connection idle: the backends exit, and
 *      check() finds each dead at its next checkout (no query fails).
 *   2. Under load, the sessions are busy: the query each was running fails
 *      (at most once per session: the loop checks it in BROKEN and the pool
 *      closes it), the others are caught by check(). */
TEST_TAGGED(terminate_backends, "server")
{
    drill_run r;
    server_start(&r);
    load_begin(&r, "");

    drill_load_pause(&r.load);
    WAIT_UNTIL(test_counts(r.pool).available == DRILL_MAX_POOL, 2000);
    cpool_stats before = drill_stats(r.pool);
    int pids[DRILL_MAX_POOL];
    int killed_idle = terminate_pool_sessions(r.env.port, pids, DRILL_MAX_POOL);
    ASSERT_EQ(DRILL_MAX_POOL, killed_idle);
    /* check() is a test without I/O for a hung-up socket: wait until the
     * backends have exited and their sockets are closed. (Between the
     * FATAL message and the exit there is a short window in which the
     * connection still looks alive; the busy round below covers what
     * happens then.) */
    WAIT_UNTIL(processes_gone(pids, killed_idle), DRILL_SETTLE_MS);
    uint64_t query_failed = atomic_load(&r.load.query_failed);
    int64_t t_idle = test_now_ns();
    drill_load_resume(&r.load);
    int64_t recovery_idle = drill_measure_recovery(&r.load, t_idle);
    drill_load_progress(&r.load, 300, 5000);
    cpool_stats mid = drill_stats(r.pool);
    if (atomic_load(&r.load.query_failed) != query_failed)
        FAIL("%llu queries failed on connections terminated while idle (check() found "
             "%llu dead, %llu closed for an error): check() must find them all",
             (unsigned long long)(atomic_load(&r.load.query_failed) - query_failed),
             (unsigned long long)(mid.validation_failures - before.validation_failures),
             (unsigned long long)(mid.closed[CPOOL_CLOSE_ERROR] -
                                  before.closed[CPOOL_CLOSE_ERROR]));
    ASSERT_EQ((uint64_t)killed_idle, mid.validation_failures - before.validation_failures);
    ASSERT_EQ((uint64_t)killed_idle,
              mid.closed[CPOOL_CLOSE_ERROR] - before.closed[CPOOL_CLOSE_ERROR]);

    int killed_busy = terminate_pool_sessions(r.env.port, pids, DRILL_MAX_POOL);
    int64_t t_busy = test_now_ns();
    ASSERT_EQ(DRILL_MAX_POOL, killed_busy);
    int64_t recovery = drill_measure_recovery(&r.load, t_busy);
    drill_load_progress(&r.load, 300, 5000);

    drill_tally t;
    load_end(&r, "terminate_backends", &t);
    /* Transparent: no checkout failed at all. */
    ASSERT_EQ(0, drill_failed_total(&t));
    /* Each terminated session failed at most the one query it was running. */
    ASSERT_LE(t.query_failed, (uint64_t)killed_busy);
    ASSERT_EQ(t.query_failed, t.broken);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    /* Exactly the terminated connections were closed for an error, and
     * replaced by new ones. */
    uint64_t closed = s.closed[CPOOL_CLOSE_ERROR] - mid.closed[CPOOL_CLOSE_ERROR];
    ASSERT_EQ((uint64_t)killed_busy, closed);
    ASSERT_GE(s.connections_ready - before.connections_ready,
              (uint64_t)(killed_idle + killed_busy));
    char extra[200];
    snprintf(extra, sizeof extra,
             "idle: %d terminated, found by check() %llu, recovery %lld ms; busy: %d "
             "terminated, found by a failed query %llu, by check() %llu",
             killed_idle, (unsigned long long)(mid.validation_failures -
                                               before.validation_failures),
             (long long)recovery_idle, killed_busy, (unsigned long long)t.broken,
             (unsigned long long)(s.validation_failures - mid.validation_failures));
    drill_summary("terminate_backends", &t, recovery, sessions, &s, extra);
}

/* The slots of a server with max_connections 12 are all held by plain
 * connections: the pool's establishments are refused with "sorry, too many
 * clients already" (53300). That is a full server, not a failing one: the
 * circuit stays closed (no flood of instant CPOOL_EUNAVAILABLE), checkouts
 * keep trying within their deadline and time out saying why, and when the
 * slots are released the pool serves at once. */
TEST_TAGGED(max_connections_exhausted, "server")
{
    drill_run r;
    server_start(&r);
    char why[512], v[256];
    PGconn *admin = drill_pg_connect(r.env.port, why, sizeof why);
    if (admin == NULL)
        FAIL("admin connection: %s", why);
    PGresult *res = PQexec(admin, "ALTER SYSTEM SET max_connections = 12");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        FAIL("ALTER SYSTEM: %s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(admin);
    (void)bring_back(&r, "restart-fast");
    drill_pg_start_time(r.env.port, r.start_time, sizeof r.start_time);
    admin = drill_pg_connect(r.env.port, why, sizeof why);
    if (admin == NULL || !drill_pg_value(admin, "SHOW max_connections", v, sizeof v))
        FAIL("SHOW max_connections: %s", admin == NULL ? why : v);
    PQfinish(admin);
    ASSERT_STR_EQ("12", v);

    /* Take every slot (the reserved ones too: the drill connects as a
     * superuser, like the pool). A backend of the probes above may still be
     * exiting when the first refusal comes, so look again after a pause. */
    PGconn *held[64];
    int nheld = 0;
    for (int round = 0; round < 2; round++) {
        if (round > 0)
            test_sleep_ms(300);
        for (;;) {
            if (nheld == 64)
                FAIL("64 connections held and the server still takes more");
            held[nheld] = drill_pg_connect(r.env.port, why, sizeof why);
            if (held[nheld] == NULL)
                break;
            nheld++;
        }
    }
    ASSERT_STR_CONTAINS(why, "too many clients");
    ASSERT_EQ(12, nheld);

    drill_target(r.target, sizeof r.target, r.env.port, "");
    r.pool = drill_pool_open(r.target);
    drill_load_start(&r.load, r.pool, DRILL_QUERY);
    /* Establishments keep being refused; the pool stays ready, its circuit
     * closed. */
    WAIT_UNTIL(drill_stats(r.pool).capacity_refusals >= 3, 5000);
    test_sleep_ms(1000);
    cpool_stats full = drill_stats(r.pool);
    ASSERT_EQ(0, atomic_load(&r.load.query_ok));
    ASSERT_EQ(CPOOL_STATE_READY, full.counts.state);
    ASSERT_EQ(0, full.counts.generation);
    ASSERT_FALSE(full.breaker_open);
    ASSERT_EQ(0, full.breaker_opens);
    ASSERT_EQ(0, full.connect_fail_streak);

    for (int i = 0; i < nheld; i++)
        PQfinish(held[i]);
    int64_t up = drill_wait_up(r.env.port, NULL, 10000);
    int64_t recovery = drill_measure_recovery(&r.load, up);
    drill_load_progress(&r.load, 300, 5000);

    drill_tally t;
    load_end(&r, "max_connections_exhausted", &t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    /* The callers waited out their deadlines and were told why: a timeout
     * whose details name the refusal (phase HANDSHAKE, kind CAPACITY); none
     * was failed fast as if the server were down. */
    ASSERT_EQ(0, drill_failed(&t, CPOOL_EUNAVAILABLE));
    bool seen = false;
    for (size_t i = 0; i < t.nfailures; i++) {
        const drill_failure *f = &t.failures[i];
        if (f->code != CPOOL_ETIMEDOUT || f->kind != CPOOL_FAIL_CAPACITY)
            continue;
        ASSERT_STR_CONTAINS(f->message, "too many clients");
        ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, f->phase);
        seen = true;
    }
    ASSERT_TRUE(seen);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    char extra[160];
    snprintf(extra, sizeof extra, "%d slots held, capacity refusals %llu (\"too many "
             "clients\"), none opened the circuit",
             nheld, (unsigned long long)full.capacity_refusals);
    drill_summary("max_connections_exhausted", &t, recovery, sessions, &s, extra);
}

/* The circuit breaker against a stopped server: after breaker_threshold
 * establishment failures in a row, a checkout that needs a new connection
 * fails at once with CPOOL_EUNAVAILABLE naming the last error, and one
 * probe per backoff step is all the server sees; once it is back the first
 * successful probe closes the circuit and the pool refills to minPoolSize. */
TEST_TAGGED(breaker_restart_drill, "server")
{
    drill_run r;
    server_start(&r);
    load_begin(&r, "&minPoolSize=2");

    /* The script returns only once PID 1 has reaped the postmaster (~2 s
     * here); the pool sees the server gone long before, so watch it
     * meanwhile. */
    int64_t t_stop = test_now_ns();
    pid_t stopping = drill_script_spawn(&r.env, "stop", /* with_port= */ false);
    WAIT_UNTIL(drill_stats(r.pool).breaker_open, 5000);
    int64_t t_open = test_now_ns();
    atomic_store(&r.load.late_ns, t_open);
    cpool_stats open = drill_stats(r.pool);
    ASSERT_GE(open.connect_fail_streak, DRILL_BREAKER_THRESHOLD);
    ASSERT_GE(open.breaker_opens, 1);

    /* A checkout of our own: fast, and its message quotes the last
     * establishment error (sampled while that error did not change). */
    bool sampled = false;
    int64_t sample_until = test_now_ms() + 3000;
    int rc = CPOOL_OK;
    cpool_error e;
    memset(&e, 0, sizeof e);
    while (!sampled && test_now_ms() < sample_until) {
        cpool_stats s1 = drill_stats(r.pool);
        cpool_conn *c = NULL;
        int64_t t0 = test_now_ns();
        rc = cpool_checkout(r.pool, DRILL_CHECKOUT_TIMEOUT_MS, &c, &e);
        int64_t dt = test_now_ns() - t0;
        cpool_stats s2 = drill_stats(r.pool);
        if (rc == CPOOL_OK)
            FAIL("checkout succeeded while the server is stopped");
        if (rc != CPOOL_EUNAVAILABLE || s1.connect_failures != s2.connect_failures) {
            test_sleep_ms(10); /* this one ran the probe; sample again */
            continue;
        }
        ASSERT_LT(dt / 1000000, DRILL_FAST_FAIL_MS);
        char last[121];
        snprintf(last, sizeof last, "%.120s", s2.last_connect_error.message);
        ASSERT_TRUE(last[0] != '\0');
        ASSERT_STR_CONTAINS(e.message, "circuit open");
        ASSERT_STR_CONTAINS(e.message, last);
        printf("drill breaker_restart_drill: open circuit answers in %.2f ms: %s\n",
               (double)dt / 1e6, e.message);
        sampled = true;
    }
    if (!sampled)
        FAIL("no CPOOL_EUNAVAILABLE for 3 s with the circuit open; last checkout: %s: "
             "\"%s\"",
             cpool_err_name(rc), e.message);

    /* Open for 1.5 s: the circuit stays open, and the server sees about
     * one attempt per backoff step (each at least backoff_max_ms * (1 -
     * jitter) apart once the steps reach the cap), not one per checkout. */
    while (test_now_ns() - t_open < 1500 * (int64_t)1000000) {
        ASSERT_TRUE(drill_stats(r.pool).breaker_open);
        test_sleep_ms(20);
    }
    cpool_stats down = drill_stats(r.pool);
    ASSERT_TRUE(down.breaker_open);
    int64_t window_ms = (test_now_ns() - t_open) / 1000000;
    uint64_t attempts = down.connect_failures - open.connect_failures;
    uint64_t allowed =
        (uint64_t)(window_ms / (int64_t)(DRILL_BACKOFF_MAX_MS * (1.0 - DRILL_BACKOFF_JITTER))) +
        2;
    if (attempts > allowed)
        FAIL("%llu establishment attempts in %lld ms with the circuit open; at most %llu "
             "expected",
             (unsigned long long)attempts, (long long)window_ms, (unsigned long long)allowed);

    drill_script_wait(stopping, "stop", 30000);

    int64_t up = bring_back(&r, "start");
    /* Closed and refilled to minPoolSize within the bound. */
    int64_t refill_ms;
    for (;;) {
        cpool_stats s = drill_stats(r.pool);
        refill_ms = (test_now_ns() - up) / 1000000;
        if (!s.breaker_open && s.counts.available + s.counts.in_use >= 2)
            break;
        if (refill_ms > DRILL_RECOVERY_BOUND_MS)
            FAIL("%lld ms after the server came back: circuit %s, available %u, in use %u",
                 (long long)refill_ms, s.breaker_open ? "open" : "closed", s.counts.available,
                 s.counts.in_use);
        test_sleep_ms(1);
    }
    int64_t recovery = drill_measure_recovery(&r.load, up);
    drill_load_progress(&r.load, 300, 5000);

    drill_tally t;
    load_end(&r, "breaker_restart_drill", &t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    /* With the circuit open the load's checkouts failed fast too. */
    ASSERT_GT(t.late_unavailable, 0);
    ASSERT_LT(t.late_unavailable_max_ns / 1000000, DRILL_FAST_FAIL_MS);
    if (t.late_other != 0)
        FAIL("%llu checkouts after the circuit opened failed otherwise: %s",
             (unsigned long long)t.late_other, t.late_other_message);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    ASSERT_FALSE(s.breaker_open);
    char extra[200];
    snprintf(extra, sizeof extra,
             "open after %.0f ms; %llu attempts in %lld ms open; fast failures %llu (max "
             "%.2f ms); refilled in %lld ms",
             (double)(t_open - t_stop) / 1e6, (unsigned long long)attempts,
             (long long)window_ms, (unsigned long long)t.late_unavailable,
             (double)t.late_unavailable_max_ns / 1e6, (long long)refill_ms);
    drill_summary("breaker_restart_drill", &t, recovery, sessions, &s, extra);
}

/* A TCP listener that never calls accept(): the kernel completes the first
 * handshakes (they sit in the accept queue, and libpq waits for an answer
 * to its startup packet), then drops further SYNs once the queue is full
 * (connect() itself hangs). Every establishment must end at its deadline as
 * a timeout carrying the backpressure labels, no thread may hang, and with
 * the circuit open checkouts fail fast. */
TEST(listener_never_accepts)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        FAIL("socket: %s", strerror(errno));
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
        FAIL("listener: %s", strerror(errno));
    int port = ntohs(a.sin_port);

    /* connect_timeout_ms below the checkout timeout, so that each attempt
     * ends on its own deadline; a threshold of 3 opens the circuit within
     * a second. */
    enum { CONNECT_MS = 300, THRESHOLD = 3 };
    char target[512];
    drill_target_with(target, sizeof target, port, CONNECT_MS, THRESHOLD, "");
    cpool *pool = drill_pool_open(target);
    drill_load load;
    drill_load_start(&load, pool, DRILL_QUERY);
    WAIT_UNTIL(drill_stats(pool).breaker_open, 5000);
    int64_t t_open = test_now_ns();
    atomic_store(&load.late_ns, t_open);
    test_sleep_ms(1500);
    cpool_stats s = drill_stats(pool);

    drill_tally t;
    drill_load_stop(&load, &t);
    drill_print_failures("listener_never_accepts", &t);
    drill_assert_max_wait(&t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    ASSERT_EQ(0, t.ok);
    ASSERT_TRUE(s.breaker_open);
    ASSERT_GE(s.breaker_opens, 1);
    uint64_t handshake = 0, connect = 0;
    for (size_t i = 0; i < t.nfailures; i++) {
        const drill_failure *f = &t.failures[i];
        if (f->code == CPOOL_ETIMEDOUT)
            continue; /* waited in the queue behind an attempt */
        /* ECONNECT, and EUNAVAILABLE which repeats the last error's
         * classification: a timeout in CONNECT or HANDSHAKE, labelled. */
        if (f->phase != CPOOL_PHASE_CONNECT && f->phase != CPOOL_PHASE_HANDSHAKE)
            FAIL("%s classified %s/%s: \"%s\"", cpool_err_name(f->code),
                 drill_phase_name(f->phase), drill_kind_name(f->kind), f->message);
        ASSERT_EQ(CPOOL_FAIL_TIMEOUT, f->kind);
        ASSERT_EQ(CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE, f->labels);
        if (f->code == CPOOL_ECONNECT) {
            if (f->phase == CPOOL_PHASE_HANDSHAKE)
                handshake += f->n;
            else
                connect += f->n;
        }
    }
    ASSERT_GE(handshake + connect, THRESHOLD);
    ASSERT_GT(t.late_unavailable, 0);
    ASSERT_LT(t.late_unavailable_max_ns / 1000000, DRILL_FAST_FAIL_MS);
    if (t.late_other != 0)
        FAIL("%llu checkouts after the circuit opened failed otherwise: %s",
             (unsigned long long)t.late_other, t.late_other_message);
    int64_t t0 = test_now_ns();
    cpool_destroy(pool);
    int64_t destroy_ms = (test_now_ns() - t0) / 1000000;
    ASSERT_LT(destroy_ms, CONNECT_MS + DRILL_WAIT_MARGIN_MS);
    close(fd);

    printf("drill-summary listener_never_accepts: checkouts %llu ok 0 failed %llu (ECONNECT "
           "%llu: HANDSHAKE/TIMEOUT %llu, CONNECT/TIMEOUT %llu; ETIMEDOUT %llu; "
           "EUNAVAILABLE %llu) max wait %.1f ms (bound %d); after the circuit opened %llu "
           "fast failures (max %.2f ms), %llu probes; breaker opens %llu; destroy %lld ms\n",
           (unsigned long long)t.checkouts, (unsigned long long)drill_failed_total(&t),
           (unsigned long long)drill_failed(&t, CPOOL_ECONNECT),
           (unsigned long long)handshake, (unsigned long long)connect,
           (unsigned long long)drill_failed(&t, CPOOL_ETIMEDOUT),
           (unsigned long long)drill_failed(&t, CPOOL_EUNAVAILABLE),
           (double)t.max_wait_ns / 1e6, DRILL_CHECKOUT_TIMEOUT_MS + DRILL_WAIT_MARGIN_MS,
           (unsigned long long)t.late_unavailable, (double)t.late_unavailable_max_ns / 1e6,
           (unsigned long long)t.late_connect, (unsigned long long)s.breaker_opens,
           (long long)destroy_ms);
    fflush(stdout);
}

/* kill -9 of the postmaster under load, for outages of 2 s, 15 s and 60 s
 * in a row, with a backoff of 1 s doubling to 60 s (+-20 %): the steps
 * keep establishments from storming a server that is down, and the probe
 * (every 250 ms, a connect that sends nothing) finds its return, so the
 * pool serves again within 1 s of the server accepting connections,
 * whatever the outage's length. Without the probe the last step alone
 * could be 60 s. */
#define OUTAGE_RECOVERY_BOUND_MS 1000
TEST_TAGGED(outages_recover_within_a_second, "server long")
{
    static const int outages_ms[] = {2000, 15000, 60000};
    drill_run r;
    server_start(&r);
    load_begin(&r, "&backoff_base_ms=1000&backoff_max_ms=60000&probe_interval_ms=250");
    int64_t recovery[3];
    uint64_t opens[3];
    /* What the pool did between the server's return and its first query
     * served: probes (and those that found it), establishments that
     * failed, by the statistics read just after each. */
    uint64_t probes[3], probes_ok[3], failures[3];
    for (int i = 0; i < 3; i++) {
        drill_script(&r.env, "kill9", /* with_port= */ false);
        drill_wait_down(r.env.port, 2000);
        test_sleep_ms(outages_ms[i]);
        pid_t pid = drill_script_spawn(&r.env, "start", true);
        int64_t up = drill_wait_up(r.env.port, r.start_time, 30000);
        drill_arm_recovery(&r.load, up);
        cpool_stats at_up = drill_stats(r.pool);
        drill_script_wait(pid, "start", 30000);
        recovery[i] = drill_measure_recovery(&r.load, up);
        cpool_stats served = drill_stats(r.pool);
        probes[i] = served.probes - at_up.probes;
        probes_ok[i] = served.probes_ok - at_up.probes_ok;
        failures[i] = served.connect_failures - at_up.connect_failures;
        opens[i] = served.breaker_opens;
        if (!drill_pg_start_time(r.env.port, r.start_time, sizeof r.start_time))
            FAIL("the restarted server does not answer");
        drill_load_progress(&r.load, 100, 5000);
    }
    drill_tally t;
    load_end(&r, "outages_recover_within_a_second", &t);
    drill_assert_outcomes(&t, down_outcomes, NDOWN);
    cpool_stats s;
    int sessions = pool_end(&r, &s);
    char extra[400];
    snprintf(extra, sizeof extra,
             "recovery after outages of 2 s, 15 s, 60 s: %lld, %lld, %lld ms (bound %d); "
             "breaker opens %llu, %llu, %llu; connect failures %llu; from the return to "
             "the first query: probes ok/made %llu/%llu, %llu/%llu, %llu/%llu, "
             "establishments failed %llu, %llu, %llu",
             (long long)recovery[0], (long long)recovery[1], (long long)recovery[2],
             OUTAGE_RECOVERY_BOUND_MS, (unsigned long long)opens[0],
             (unsigned long long)opens[1], (unsigned long long)opens[2],
             (unsigned long long)s.connect_failures, (unsigned long long)probes_ok[0],
             (unsigned long long)probes[0], (unsigned long long)probes_ok[1],
             (unsigned long long)probes[1], (unsigned long long)probes_ok[2],
             (unsigned long long)probes[2], (unsigned long long)failures[0],
             (unsigned long long)failures[1], (unsigned long long)failures[2]);
    drill_summary("outages_recover_within_a_second", &t, recovery[2], sessions, &s, extra);
    for (int i = 0; i < 3; i++)
        if (recovery[i] > OUTAGE_RECOVERY_BOUND_MS)
            FAIL("served again %lld ms after a %d ms outage ended; bound %d ms; meanwhile "
                 "%llu probes (%llu found the server), %llu establishments failed",
                 (long long)recovery[i], outages_ms[i], OUTAGE_RECOVERY_BOUND_MS,
                 (unsigned long long)probes[i], (unsigned long long)probes_ok[i],
                 (unsigned long long)failures[i]);
}

/* ------------------------------------------------------------- SIGSTOP */

typedef struct holder {
    cpool_conn *conn;
    int rc;
    cpool_error err;
    int64_t end_ns;
    atomic_bool done;
} holder;

static void *holder_main(void *arg)
{
    holder *h = arg;
    h->rc = cpool_conn_execute(h->conn, "SELECT pg_sleep(30)", &h->err);
    h->end_ns = test_now_ns();
    atomic_store(&h->done, true);
    return NULL;
}

#define STOP_CHECKOUT_MS 500
#define STOP_SHUTDOWN_GRACE_MS 1000
#define STOP_MARGIN_MS 300

/* The server stops answering (SIGSTOP of the postmaster and its backends:
 * the kernel still accepts connections, nobody answers) with one lease
 * running a query and one idle. A checkout that must connect ends by its
 * deadline; clear(interruptInUseConnections) ends the running query's call
 * within the interrupt grace and makes the idle lease's next command fail
 * at once, through the pool and through raw libpq; shutdown and destroy do
 * not wait for the server. After SIGCONT no socket or session is left. */
TEST_TAGGED(sigstop_interrupts_holders, "server")
{
    drill_run r;
    server_start(&r);
    drill_target(r.target, sizeof r.target, r.env.port, "");
    cpool *p = drill_pool_open(r.target);
    PGconn *mon = drill_pg_connect(r.env.port, NULL, 0);
    ASSERT_NOT_NULL(mon);
    cpool_conn *busy = test_checkout(p), *idle = test_checkout(p);
    holder h = {.conn = busy};
    atomic_init(&h.done, false);
    pthread_t th;
    TEST_THREAD_START(&th, holder_main, &h);
    char sql[200], v[64];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active'",
             PQbackendPID(cpool_conn_native(busy)));
    int64_t until = test_now_ms() + 5000;
    while (!(drill_pg_value(mon, sql, v, sizeof v) && atoi(v) == 1)) {
        if (test_now_ms() > until)
            FAIL("the lease's query never showed as active");
        test_sleep_ms(5);
    }
    int socks_before = drill_own_sockets(r.env.port);
    drill_script(&r.env, "sigstop", /* with_port= */ false);

    /* 1. A checkout that needs a new connection. */
    cpool_conn *extra = NULL;
    cpool_error e;
    int64_t t0 = test_now_ns();
    int co_rc = cpool_checkout(p, STOP_CHECKOUT_MS, &extra, &e);
    int64_t co_ms = (test_now_ns() - t0) / 1000000;
    ASSERT_TRUE(co_rc != CPOOL_OK);

    /* 2. The interrupt. */
    t0 = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    int64_t clear_ms = (test_now_ns() - t0) / 1000000;
    until = test_now_ms() + 5000;
    while (!atomic_load(&h.done)) {
        if (test_now_ms() > until)
            FAIL("the running query's call is still blocked 5 s after the interrupt");
        test_sleep_ms(1);
    }
    pthread_join(th, NULL);
    int64_t busy_ms = (h.end_ns - t0) / 1000000;
    ASSERT_RC(CPOOL_EINTERRUPTED, h.rc);
    int64_t t1 = test_now_ns();
    ASSERT_RC(CPOOL_EINTERRUPTED, cpool_conn_execute(idle, "SELECT 1", &e));
    PGresult *res = PQexec(cpool_conn_native(idle), "SELECT 1");
    ASSERT_TRUE(PQresultStatus(res) != PGRES_TUPLES_OK);
    PQclear(res);
    int64_t idle_ms = (test_now_ns() - t1) / 1000000;
    test_checkin(p, busy, 0);
    test_checkin(p, idle, 0);
    ASSERT_EQ(0, test_counts(p).total);

    /* 3. Shutdown and destroy while the server is still stopped. */
    ASSERT_OK(cpool_ready(p, NULL));
    cpool_shutdown_report rep;
    t0 = test_now_ns();
    ASSERT_OK(cpool_shutdown(p, STOP_SHUTDOWN_GRACE_MS, &rep, NULL));
    cpool_destroy(p);
    int64_t down_ms = (test_now_ns() - t0) / 1000000;
    int socks_stopped = drill_own_sockets(r.env.port);

    /* 4. The server wakes: the cancel requests it owed are answered, the
     * backends see their closed sockets, nothing of ours is left. */
    drill_script(&r.env, "sigcont", /* with_port= */ false);
    int64_t cont = test_now_ms();
    int socks;
    while ((socks = drill_own_sockets(r.env.port)) > 1) { /* the monitor's */
        if (test_now_ms() - cont > DRILL_SETTLE_MS)
            FAIL("%d sockets to the server remain %d ms after SIGCONT (1 expected: the "
                 "monitor's)",
                 socks, DRILL_SETTLE_MS);
        test_sleep_ms(20);
    }
    int64_t socks_ms = test_now_ms() - cont;
    PQfinish(mon);
    drill_assert_all_closed(r.env.port);

    printf("drill-summary sigstop_interrupts_holders: checkout %lld ms (deadline %d, %s), "
           "clear %lld ms, running query's call ended %lld ms after the interrupt (%s), "
           "idle lease's next two calls %lld ms, shutdown+destroy %lld ms (grace %d); "
           "sockets before %d, while stopped %d, all closed %lld ms after SIGCONT; "
           "sessions left 0\n",
           (long long)co_ms, STOP_CHECKOUT_MS, cpool_err_name(co_rc), (long long)clear_ms,
           (long long)busy_ms, cpool_err_name(h.rc), (long long)idle_ms, (long long)down_ms,
           STOP_SHUTDOWN_GRACE_MS, socks_before, socks_stopped, (long long)socks_ms);
    fflush(stdout);
    ASSERT_LE(co_ms, STOP_CHECKOUT_MS + STOP_MARGIN_MS);
    ASSERT_LE(clear_ms, 100);
    ASSERT_LE(busy_ms, 200 + STOP_MARGIN_MS); /* the interrupt grace */
    ASSERT_LE(idle_ms, STOP_MARGIN_MS);
    ASSERT_LE(down_ms, STOP_SHUTDOWN_GRACE_MS + STOP_MARGIN_MS);
}

TEST_MAIN()
