/* test_pg_policy.c -- policies against the real server: a soft recycle
 * under load after a server-side change that only new sessions see,
 * cpool_run's retries on the errors the connector labels retryable, and
 * hooks that set up each connection. */
#include "pg_test.h"

#include <unistd.h>

/* A role of the test's own, so that ALTER ROLE reaches no other test. */
static void role_name(char *buf, size_t size)
{
    snprintf(buf, size, "cpool_recycle_%d", (int)getpid());
}

static void role_create(PGconn *admin, const char *role)
{
    char sql[256];
    snprintf(sql, sizeof sql, "DROP ROLE IF EXISTS %s", role);
    pg_exec_ok(admin, sql);
    snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", role);
    pg_exec_ok(admin, sql);
}

static void role_drop(PGconn *admin, const char *role)
{
    char sql[256];
    snprintf(sql, sizeof sql, "DROP ROLE IF EXISTS %s", role);
    pg_exec_ok(admin, sql);
}

static long long role_sessions(PGconn *admin, const char *role)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", role);
    return pg_scalar(admin, sql);
}

typedef struct worker {
    cpool *pool;
    atomic_bool *stop;
    _Atomic int64_t *rotated_at; /* real ms when recycle_pending reached 0 */
    int failures;
    int leases;
    int old_after_rotation; /* leases begun after the rotation that saw the old setting */
    int new_seen;
    cpool_error last;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    while (!atomic_load(w->stop)) {
        int64_t began = test_now_ms();
        cpool_conn *c = NULL;
        int rc = cpool_checkout(w->pool, 5000, &c, &w->last);
        if (rc != 0) {
            w->failures++;
            continue;
        }
        char *v = pg_text(pg_lease_conn(c), "SHOW work_mem");
        bool fresh = strcmp(v, "7MB") == 0;
        free(v);
        int64_t rotated = atomic_load(w->rotated_at);
        if (rotated != 0 && began > rotated && !fresh)
            w->old_after_rotation++;
        w->new_seen += fresh;
        w->leases++;
        test_sleep_us(500); /* the lease's own work */
        if (cpool_checkin(w->pool, c, 0, &w->last) != 0)
            w->failures++;
    }
    return NULL;
}

/* HikariCP's softEvictConnections: after ALTER ROLE ... SET, only new
 * sessions see the setting. A recycle under load replaces every
 * connection, with no failed checkout and no pause, within about a lease
 * time plus a connect; afterwards every lease sees the new setting and the
 * server holds exactly the pool's sessions. */
TEST(soft_recycle_under_load_rotates_every_session)
{
    char role[64], uri[256];
    role_name(role, sizeof role);
    PGconn *admin = pg_admin();
    role_create(admin, role);
    cpool_options o;
    pg_options(&o, pg_uri_for(uri, sizeof uri, role, "127.0.0.1", pg_port(), "postgres"),
               NULL);
    o.max_pool_size = 4;
    o.min_pool_size = 4;
    o.maintenance_interval_ms = 100;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    ASSERT_OK(cpool_wait_connected(p, 4, 10000, NULL));

    enum { N = 8 };
    atomic_bool stop = false;
    _Atomic int64_t rotated_at = 0;
    worker w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker){.pool = p, .stop = &stop, .rotated_at = &rotated_at};
        TEST_THREAD_START(&th[i], worker_main, &w[i]);
    }
    test_sleep_ms(200);

    char sql[256];
    snprintf(sql, sizeof sql, "ALTER ROLE %s SET work_mem = '7MB'", role);
    pg_exec_ok(admin, sql);
    int64_t t0 = test_now_ms();
    uint32_t marked = 0;
    ASSERT_OK(cpool_recycle(p, &marked, NULL));
    ASSERT_GE(marked, 4); /* minPoolSize is kept, so at least those */
    cpool_stats s = {.struct_size = sizeof s};
    for (;;) {
        ASSERT_OK(cpool_get_stats(p, &s));
        if (s.recycle_pending == 0)
            break;
        /* A bound for a loaded machine, far above a lease (0.5 ms) plus a
         * connect (~20 ms); the figure is printed below. */
        if (test_now_ms() - t0 > 5000)
            FAIL("%u connections still marked after 5 s", s.recycle_pending);
        test_sleep_us(200);
    }
    int64_t took = test_now_ms() - t0;
    atomic_store(&rotated_at, test_now_ms());
    ASSERT_EQ(CPOOL_STATE_READY, s.counts.state);
    test_sleep_ms(200);
    atomic_store(&stop, true);
    int leases = 0, new_seen = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (w[i].failures != 0)
            FAIL("worker %d: %d failed calls, last: %s", i, w[i].failures, w[i].last.message);
        ASSERT_EQ(0, w[i].old_after_rotation);
        leases += w[i].leases;
        new_seen += w[i].new_seen;
    }
    ASSERT_GT(new_seen, 0);
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(marked, s.closed[CPOOL_CLOSE_RECYCLED]);
    ASSERT_EQ(0, s.closed[CPOOL_CLOSE_STALE] + s.closed[CPOOL_CLOSE_ERROR]);
    for (int i = 0; i < CPOOL_ERROR_SLOTS; i++)
        ASSERT_EQ(0, s.checkout_failures[i]);
    printf("soft recycle: %u connections marked, all replaced %lld ms after the call; "
           "%d leases by %d threads, none failed\n",
           marked, (long long)took, leases, N);
    /* The server holds the pool's sessions and no old one. */
    uint32_t total = s.counts.total;
    WAIT_UNTIL(role_sessions(admin, role) == total, 5000);
    cpool_destroy(p);
    WAIT_UNTIL(role_sessions(admin, role) == 0, 5000);
    role_drop(admin, role);
    PQfinish(admin);
}

/* ------------------------------------------------------------ cpool_run */

typedef struct attempt_log {
    PGconn *admin;
    const char *first_sql; /* run by the first attempt instead of SELECT 1 */
    bool kill_first;       /* the first attempt's backend is terminated */
    int calls;
    int pids[8];
    cpool_error errs[8];
} attempt_log;

static int query_once(cpool_conn *c, void *arg, cpool_error *err)
{
    attempt_log *a = arg;
    PGconn *conn = pg_lease_conn(c);
    int n = a->calls++;
    if (n < 8)
        a->pids[n] = PQbackendPID(conn);
    if (n == 0 && a->kill_first)
        pg_terminate(a->admin, PQbackendPID(conn));
    PGresult *r = PQexec(conn, n == 0 && a->first_sql != NULL ? a->first_sql : "SELECT 1");
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = cpool_pg_error(conn, r, err);
    PQclear(r);
    if (n < 8 && rc != 0)
        a->errs[n] = *err;
    return rc;
}

static cpool *run_pool(void)
{
    cpool_options o;
    pg_options(&o, pg_uri(), NULL);
    o.max_pool_size = 2;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    return p;
}

/* The backend dies under the first attempt: the error is NETWORK and
 * retryable, the connection is closed, the retry runs on another backend. */
TEST(run_retries_when_the_backend_dies)
{
    cpool *p = run_pool();
    attempt_log a = {.admin = pg_admin(), .kill_first = true};
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 10000, .retries = 2,
                        .retry_delay_ms = 10};
    cpool_error e;
    ASSERT_OK_E(cpool_run(p, &o, query_once, &a, &e), &e);
    ASSERT_EQ(2, a.calls);
    ASSERT_NE(a.pids[0], a.pids[1]);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, a.errs[0].kind);
    ASSERT_TRUE(a.errs[0].labels & CPOOL_LABEL_RETRYABLE);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.retries);
    ASSERT_EQ(1, s.retries_succeeded);
    ASSERT_EQ(1, s.closed[CPOOL_CLOSE_ERROR]);
    cpool_destroy(p);
    PQfinish(a.admin);
}

/* serialization_failure is retryable and the server's answer leaves the
 * session usable: the retry may use the same backend. A syntax error is
 * not retried. */
TEST(run_retries_a_serialization_failure_not_a_syntax_error)
{
    cpool *p = run_pool();
    attempt_log a = {
        .first_sql = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"};
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 10000, .retries = 2};
    cpool_error e;
    ASSERT_OK_E(cpool_run(p, &o, query_once, &a, &e), &e);
    ASSERT_EQ(2, a.calls);
    ASSERT_EQ(a.pids[0], a.pids[1]);
    ASSERT_EQ(CPOOL_FAIL_SERVER, a.errs[0].kind);
    ASSERT_EQ(cpool_pg_sqlstate_code("40001"), a.errs[0].native);
    ASSERT_TRUE(a.errs[0].labels & CPOOL_LABEL_RETRYABLE);

    attempt_log b = {.first_sql = "SELEC 1"};
    ASSERT_RC(CPOOL_EIO, cpool_run(p, &o, query_once, &b, &e));
    ASSERT_EQ(1, b.calls);
    ASSERT_EQ(cpool_pg_sqlstate_code("42601"), e.native);
    ASSERT_EQ(0, e.labels & CPOOL_LABEL_RETRYABLE);
    ASSERT_STR_CONTAINS(e.message, "syntax error");
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.retries);
    ASSERT_EQ(0, s.closed[CPOOL_CLOSE_ERROR]);
    cpool_destroy(p);
}

/* ------------------------------------------------------------ hooks */

typedef struct pg_hooks {
    atomic_int prepared, closed, leased;
} pg_hooks;

static int prepare_add1(cpool_conn *c, void *ctx, cpool_error *err)
{
    pg_hooks *h = ctx;
    PGconn *conn = pg_lease_conn(c);
    PGresult *r = PQexec(conn, "PREPARE add1(int) AS SELECT $1 + 1");
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : cpool_pg_error(conn, r, err);
    PQclear(r);
    if (rc == 0)
        atomic_fetch_add(&h->prepared, 1);
    return rc;
}

static int count_lease(cpool_conn *c, void *ctx, cpool_error *err)
{
    (void)c;
    (void)err;
    atomic_fetch_add(&((pg_hooks *)ctx)->leased, 1);
    return 0;
}

static void count_close(void *native, uint64_t id, int reason, void *ctx)
{
    (void)id;
    (void)reason;
    if (PQstatus(native) == CONNECTION_OK) /* still open: the hook runs first */
        atomic_fetch_add(&((pg_hooks *)ctx)->closed, 1);
}

/* after_connect prepares a statement once per connection on the real
 * server; every lease can execute it; before_close sees each connection
 * still open. */
TEST(hooks_prepare_once_per_connection)
{
    pg_hooks h = {0};
    cpool_options o;
    pg_options(&o, pg_uri(), NULL);
    o.max_pool_size = 2;
    o.hooks = (cpool_hooks){.after_connect = prepare_add1, .before_lease = count_lease,
                            .before_close = count_close, .ctx = &h};
    cpool *p = test_pool_create(&o);
    test_ready(p);
    for (int i = 0; i < 10; i++) {
        cpool_conn *a = test_checkout(p), *b = test_checkout(p);
        ASSERT_EQ(42, pg_scalar(pg_lease_conn(a), "EXECUTE add1(41)"));
        ASSERT_EQ(8, pg_scalar(pg_lease_conn(b), "EXECUTE add1(7)"));
        test_checkin(p, a, 0);
        test_checkin(p, b, 0);
    }
    ASSERT_EQ(2, atomic_load(&h.prepared));
    ASSERT_EQ(20, atomic_load(&h.leased));
    cpool_destroy(p);
    ASSERT_EQ(2, atomic_load(&h.closed));
}

/* ------------------------------------------------------------ one-call query */

TEST(pg_query_leases_runs_and_returns)
{
    cpool *p = run_pool();
    const char *params[] = {"20", NULL};
    cpool_error e;
    PGresult *r = cpool_pg_query(p, NULL, "SELECT $1::int + 22, $2::text IS NULL", 2, params,
                                 &e);
    ASSERT_NOT_NULL(r);
    ASSERT_STR_EQ("42", PQgetvalue(r, 0, 0));
    ASSERT_STR_EQ("t", PQgetvalue(r, 0, 1));
    PQclear(r);
    ASSERT_EQ(0, test_counts(p).in_use); /* returned */
    /* A server error: NULL, the error classified, the connection kept. */
    ASSERT_NULL(cpool_pg_query(p, NULL, "SELECT 1/0", 0, NULL, &e));
    ASSERT_EQ(CPOOL_EIO, e.code);
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_EQ(cpool_pg_sqlstate_code("22012"), e.native);
    ASSERT_STR_CONTAINS(e.message, "division by zero");
    ASSERT_EQ(1, test_counts(p).available);
    r = cpool_pg_query(p, NULL, "CREATE TEMP TABLE IF NOT EXISTS t1 (x int)", 0, NULL, &e);
    ASSERT_NOT_NULL(r); /* PGRES_COMMAND_OK */
    PQclear(r);
    ASSERT_NULL(cpool_pg_query(NULL, NULL, "SELECT 1", 0, NULL, &e));
    ASSERT_EQ(CPOOL_EINVAL, e.code);
    ASSERT_NULL(cpool_pg_query(p, NULL, "SELECT $1", 1, NULL, &e));
    ASSERT_EQ(CPOOL_EINVAL, e.code);
    cpool_destroy(p);
}

/* A backend terminated while idle in the pool: with validation off the
 * query meets the dead socket, and the retry runs on a new connection. */
TEST(pg_query_retries_a_dead_connection)
{
    cpool_options o;
    pg_options(&o, pg_uri(), NULL);
    o.validation = CPOOL_VALIDATE_NONE;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    PGresult *r = cpool_pg_query(p, NULL, "SELECT pg_backend_pid()", 0, NULL, NULL);
    ASSERT_NOT_NULL(r);
    int pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    PGconn *admin = pg_admin();
    pg_terminate(admin, pid);
    cpool_run_opts ro = {.struct_size = sizeof ro, .timeout_ms = 10000, .retries = 1};
    cpool_error e;
    r = cpool_pg_query(p, &ro, "SELECT pg_backend_pid()", 0, NULL, &e);
    ASSERT_NOT_NULL(r);
    ASSERT_NE(pid, atoi(PQgetvalue(r, 0, 0)));
    PQclear(r);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.retries_succeeded);
    PQfinish(admin);
    cpool_destroy(p);
}

TEST_MAIN()
