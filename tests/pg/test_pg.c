/* test_pg.c -- the PostgreSQL connector in a real pool against the fixture's
 * server: targets and parameters, reuse, liveness check, ping, reset at
 * check-in, interruption, role changes (target_session_attrs), fork, and
 * PgBouncer in transaction mode. */
#include "pg_test.h"

#include <signal.h>
#include <sys/wait.h>

TEST(checkout_query_works)
{
    cpool *p = pg_pool(pg_uri(), NULL);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", pg_port());
    ASSERT_STR_EQ(addr, cpool_address(p));
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    ASSERT_TRUE((void *)conn == cpool_conn_native(c));
    ASSERT_EQ(CONNECTION_OK, PQstatus(conn));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(conn));
    ASSERT_EQ(42, pg_scalar(conn, "SELECT 40 + 2"));
    /* The connection is named for pg_stat_activity unless the target says
     * otherwise, and error messages are libpq's default ones again. */
    char *app = pg_text(conn, "SHOW application_name");
    ASSERT_STR_EQ("cpool", app);
    free(app);
    ASSERT_EQ(PQERRORS_DEFAULT, PQsetErrorVerbosity(conn, PQERRORS_DEFAULT));
    /* The connector's execute(): what tools use; SQLSTATE in native. */
    cpool_error e;
    ASSERT_OK_E(cpool_conn_execute(c, "SELECT 1", &e), &e);
    ASSERT_RC(CPOOL_EIO, cpool_conn_execute(c, "SELEC 1", &e));
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_EQ(cpool_pg_sqlstate_code("42601"), e.native);
    ASSERT_STR_CONTAINS(e.message, "syntax error");
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

TEST(connections_reused)
{
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *a = test_checkout(p);
    int pid = pg_lease_pid(a);
    test_checkin(p, a, 0);
    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(pid, pg_lease_pid(b));
    cpool_conn *c = test_checkout(p); /* b is out: a second connection */
    ASSERT_NE(pid, pg_lease_pid(c));
    test_checkin(p, b, 0);
    test_checkin(p, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(2, s.connections_created);
    ASSERT_EQ(3, s.checkouts_ok);
    cpool_destroy(p);
}

static int create_fails(const char *target, cpool_error *e)
{
    cpool_options o;
    pg_options(&o, target, NULL);
    cpool *p = NULL;
    memset(e, 0, sizeof *e);
    int rc = cpool_create(&o, &p, e);
    if (rc == CPOOL_OK) {
        cpool_destroy(p);
        FAIL("cpool_create(\"%s\") succeeded but was expected to fail", target);
    }
    ASSERT_NULL(p);
    return rc;
}

/* reset_query and reset_timeout_ms are the connector's: taken out before
 * libpq sees the target (which would reject them), in both target forms,
 * and checked. */
TEST(own_parameters_parsed_and_removed)
{
    char uri[512];
    pg_uri_with(uri, sizeof uri, "reset_query=SELECT%201&reset_timeout_ms=1500&maxPoolSize=3");
    cpool *p = pg_pool(uri, NULL);
    cpool_conn *c = test_checkout(p);
    ASSERT_EQ(1, pg_scalar(pg_lease_conn(c), "SELECT 1"));
    test_checkin(p, c, 0);
    cpool_destroy(p);

    char ci[512];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d reset_timeout_ms=1500 dbname=postgres user=postgres "
             "reset_query='SET search_path TO \\'public\\'' sslmode=disable gssencmode=disable",
             pg_port());
    p = pg_pool(ci, NULL);
    c = test_checkout(p);
    ASSERT_EQ(1, pg_scalar(pg_lease_conn(c), "SELECT 1"));
    test_checkin(p, c, 0);
    cpool_destroy(p);

    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, create_fails(pg_uri_with(uri, sizeof uri, "reset_timeout_ms=abc"),
                                         &e));
    ASSERT_STR_CONTAINS(e.message, "reset_timeout_ms");
    ASSERT_STR_CONTAINS(e.message, "\"abc\"");
    ASSERT_STR_CONTAINS(e.message, "1..86400000");
    ASSERT_RC(CPOOL_EINVAL, create_fails(pg_uri_with(uri, sizeof uri, "reset_timeout_ms=0"),
                                         &e));
    ASSERT_STR_CONTAINS(e.message, "reset_timeout_ms");
    ASSERT_RC(CPOOL_EINVAL, create_fails(pg_uri_with(uri, sizeof uri, "reset_query="), &e));
    ASSERT_STR_CONTAINS(e.message, "reset_query");
    /* libpq checks these only when connecting; here they fail at create. */
    ASSERT_RC(CPOOL_EINVAL, create_fails(pg_uri_with(uri, sizeof uri, "sslmode=bogus"), &e));
    ASSERT_STR_CONTAINS(e.message, "sslmode");
    ASSERT_STR_CONTAINS(e.message, "bogus");
    ASSERT_STR_CONTAINS(e.message, "verify-full");
    ASSERT_RC(CPOOL_EINVAL,
              create_fails(pg_uri_with(uri, sizeof uri, "target_session_attrs=writable"), &e));
    ASSERT_STR_CONTAINS(e.message, "target_session_attrs");
    ASSERT_STR_CONTAINS(e.message, "read-write");
}

TEST(unknown_parameter_rejected)
{
    char uri[512];
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL,
              create_fails(pg_uri_with(uri, sizeof uri, "connect_timout=5"), &e));
    ASSERT_STR_CONTAINS(e.message, "connect_timout");
    ASSERT_STR_CONTAINS(e.message, "\"5\"");
    ASSERT_STR_CONTAINS(e.message, "libpq");
    ASSERT_STR_CONTAINS(e.message, "reset_query");

    ASSERT_RC(CPOOL_EINVAL, create_fails("host=127.0.0.1 bogus_opt=1 dbname=postgres", &e));
    ASSERT_STR_CONTAINS(e.message, "bogus_opt");
    ASSERT_STR_CONTAINS(e.message, "invalid connection option");

    /* A misspelt password parameter keeps its value out of the message. */
    ASSERT_RC(CPOOL_EINVAL,
              create_fails("postgresql://postgres:topsecret@127.0.0.1:1/postgres?pasword=hunter2",
                           &e));
    ASSERT_STR_CONTAINS(e.message, "pasword");
    ASSERT_NO_SUBSTR(e.message, "hunter2");
    ASSERT_NO_SUBSTR(e.message, "topsecret");
}

/* A backend killed while its connection sat in the pool is found by
 * check() without a round trip; the checkout gets a fresh connection and
 * sees no error. */
TEST(check_detects_terminated_backend)
{
    test_recorder rec;
    test_rec_init(&rec);
    PGconn *admin = pg_admin();
    cpool *p = pg_pool(pg_uri(), &rec);
    cpool_conn *c = test_checkout(p);
    int pid = pg_lease_pid(c);
    uint64_t id = cpool_conn_id(c);
    test_checkin(p, c, 0);
    pg_terminate(admin, pid);

    c = test_checkout(p);
    ASSERT_NE(pid, pg_lease_pid(c));
    ASSERT_EQ(1, pg_scalar(pg_lease_conn(c), "SELECT 1"));
    test_checkin(p, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_STR_CONTAINS(ev.error.message, "closed the connection");
    ASSERT_EQ(0, test_rec_count(&rec, CPOOL_EV_CHECKOUT_FAILED));
    cpool_destroy(p);
    test_rec_free(&rec);
    PQfinish(admin);
}

/* ping(): an empty query round trip, bounded by its deadline; fails on a
 * stopped or a dead backend. Through the table, then as a pool policy. */
TEST(ping_round_trip)
{
    const cpool_connector *cx = cpool_pg_connector();
    cpool_error e;
    void *ctx = NULL, *native = NULL;
    ASSERT_OK_E(cx->ctx_new(pg_uri(), &ctx, &e), &e);
    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.target = pg_uri();
    a.cancel_fd = -1;
    a.deadline_ns = test_now_ns() + 5000000000LL;
    ASSERT_OK_E(cx->connect(ctx, &a, &native, &e), &e);
    ASSERT_OK_E(cx->ping(ctx, native, test_now_ns() + 2000000000LL, &e), &e);
    ASSERT_OK_E(cx->ping(ctx, native, 0, &e), &e); /* no deadline */
    ASSERT_OK_E(cx->check(ctx, native, &e), &e);

    /* A stopped backend never answers: the deadline ends the ping. */
    int pid = PQbackendPID(native);
    ASSERT_EQ(0, kill(pid, SIGSTOP));
    int64_t t0 = test_now_ns();
    int rc = cx->ping(ctx, native, t0 + 200000000LL, &e);
    int64_t took_ms = (test_now_ns() - t0) / 1000000;
    kill(pid, SIGCONT);
    ASSERT_NE(0, rc);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_GE(took_ms, 190);
    ASSERT_LT(took_ms, 600);
    cx->close(ctx, native);

    /* A dead one fails at once. */
    memset(&a, 0, sizeof a);
    a.target = pg_uri();
    a.cancel_fd = -1;
    ASSERT_OK_E(cx->connect(ctx, &a, &native, &e), &e);
    PGconn *admin = pg_admin();
    pg_terminate(admin, PQbackendPID(native));
    ASSERT_NE(0, cx->ping(ctx, native, test_now_ns() + 2000000000LL, &e));
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    cx->close(ctx, native);
    cx->ctx_free(ctx);

    /* validation=always pings every reused connection. */
    cpool_options o;
    pg_options(&o, pg_uri(), NULL);
    o.validation = CPOOL_VALIDATE_ALWAYS;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    pid = pg_lease_pid(c);
    test_checkin(p, c, 0);
    c = test_checkout(p);
    ASSERT_EQ(pid, pg_lease_pid(c));
    test_checkin(p, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.validations);
    ASSERT_EQ(0, s.validation_failures);
    cpool_destroy(p);
    PQfinish(admin);
}

static void create_table(PGconn *admin, char *name, size_t size, const char *tag)
{
    snprintf(name, size, "cpool_t_%s_%d", tag, (int)getpid());
    char sql[256];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int)", name, name);
    pg_exec_ok(admin, sql);
}

static void drop_table(PGconn *admin, const char *name)
{
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE %s", name);
    pg_exec_ok(admin, sql);
}

TEST(checkin_in_transaction_rolled_back)
{
    PGconn *admin = pg_admin();
    char t[64], sql[256];
    create_table(admin, t, sizeof t, "rb");
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    int pid = PQbackendPID(conn);
    pg_exec_ok(conn, "BEGIN");
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (1)", t);
    pg_exec_ok(conn, sql);
    ASSERT_EQ(PQTRANS_INTRANS, PQtransactionStatus(conn));
    test_checkin(p, c, 0);

    c = test_checkout(p);
    conn = pg_lease_conn(c);
    ASSERT_EQ(pid, PQbackendPID(conn)); /* reused, not replaced */
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(conn));
    ASSERT_EQ(0, pg_scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = "
                                 "pg_backend_pid() AND backend_xid IS NOT NULL"));
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", t);
    ASSERT_EQ(0, pg_scalar(conn, sql));
    ASSERT_EQ(0, pg_scalar(admin, sql));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    drop_table(admin, t);
    PQfinish(admin);
}

TEST(checkin_in_failed_transaction_rolled_back)
{
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    int pid = PQbackendPID(conn);
    pg_exec_ok(conn, "BEGIN");
    PGresult *r = PQexec(conn, "SELECT 1 / 0");
    ASSERT_EQ(PGRES_FATAL_ERROR, PQresultStatus(r));
    PQclear(r);
    ASSERT_EQ(PQTRANS_INERROR, PQtransactionStatus(conn));
    test_checkin(p, c, 0);

    c = test_checkout(p);
    conn = pg_lease_conn(c);
    ASSERT_EQ(pid, PQbackendPID(conn));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(conn));
    ASSERT_EQ(7, pg_scalar(conn, "SELECT 7"));
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

static void count_notice(void *arg, const PGresult *res)
{
    (void)res;
    (*(int *)arg)++;
}

/* What a lease changes on the client side does not reach the next one: a
 * notice receiver pointing at the lease's own data, the error verbosity,
 * non-blocking mode. */
TEST(client_settings_restored)
{
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    int pid = PQbackendPID(conn);
    int notices = 0;
    PQsetNoticeReceiver(conn, count_notice, &notices);
    pg_exec_ok(conn, "DO $$BEGIN RAISE NOTICE 'first lease'; END$$");
    ASSERT_EQ(1, notices);
    PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
    ASSERT_EQ(0, PQsetnonblocking(conn, 1));
    test_checkin(p, c, 0);

    c = test_checkout(p);
    conn = pg_lease_conn(c);
    ASSERT_EQ(pid, PQbackendPID(conn));
    ASSERT_FALSE(PQisnonblocking(conn));
    ASSERT_EQ(PQERRORS_DEFAULT, PQsetErrorVerbosity(conn, PQERRORS_DEFAULT));
    ASSERT_TRUE(PQsetNoticeReceiver(conn, NULL, NULL) != count_notice);
    /* Delivered to libpq's default receiver (printed on stderr). */
    pg_exec_ok(conn, "DO $$BEGIN RAISE NOTICE 'second lease'; END$$");
    ASSERT_EQ(1, notices);
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

/* Sets work_mem (a setting the server does not report to the client) on
 * a lease, and reads it back from the next lease of the same connection. */
static char *work_mem_after_checkin(cpool *p)
{
    cpool_conn *c = test_checkout(p);
    int pid = pg_lease_pid(c);
    pg_exec_ok(pg_lease_conn(c), "SET work_mem = '7MB'");
    test_checkin(p, c, 0);
    c = test_checkout(p);
    ASSERT_EQ(pid, pg_lease_pid(c));
    char *v = pg_text(pg_lease_conn(c), "SHOW work_mem");
    test_checkin(p, c, 0);
    return v;
}

TEST(reset_query_runs)
{
    /* Without reset_query an unreported setting survives check-in... */
    cpool *p = pg_pool(pg_uri(), NULL);
    char *v = work_mem_after_checkin(p);
    ASSERT_STR_EQ("7MB", v);
    free(v);
    cpool_destroy(p);

    /* ...with it it is reset. */
    char uri[512];
    p = pg_pool(pg_uri_with(uri, sizeof uri, "reset_query=RESET%20ALL"), NULL);
    v = work_mem_after_checkin(p);
    ASSERT_TRUE(strcmp(v, "7MB") != 0);
    free(v);
    cpool_destroy(p);

    /* A failing reset_query closes the connection. */
    test_recorder rec;
    test_rec_init(&rec);
    p = pg_pool(pg_uri_with(uri, sizeof uri, "reset_query=SELECT%20cpool_no_such_fn()"), &rec);
    cpool_conn *c = test_checkout(p);
    int pid = pg_lease_pid(c);
    test_checkin(p, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_STR_CONTAINS(ev.error.message, "reset_query");
    ASSERT_STR_CONTAINS(ev.error.message, "cpool_no_such_fn");
    c = test_checkout(p);
    ASSERT_NE(pid, pg_lease_pid(c));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    test_rec_free(&rec);

    /* reset_timeout_ms bounds it: a slow reset gives up and closes. */
    p = pg_pool(pg_uri_with(uri, sizeof uri,
                            "reset_query=SELECT%20pg_sleep(3)&reset_timeout_ms=200"),
                NULL);
    c = test_checkout(p);
    int64_t t0 = test_now_ms();
    test_checkin(p, c, 0);
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
}

/* A lease returned while its query still runs is closed, never handed out
 * again, and its backend does not run on: a cancel request stops the query
 * and the backend exits. */
TEST(unfinished_query_closes)
{
    test_recorder rec;
    test_rec_init(&rec);
    PGconn *admin = pg_admin();
    cpool *p = pg_pool(pg_uri(), &rec);
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    int pid = PQbackendPID(conn);
    ASSERT_EQ(1, PQsendQuery(conn, "SELECT pg_sleep(5)"));
    int64_t t0 = test_now_ms();
    test_checkin(p, c, 0);
    ASSERT_EQ(0, test_counts(p).total);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_STR_CONTAINS(ev.error.message, "query in progress");
    PG_WAIT_BACKEND_GONE(admin, pid, 2000);
    ASSERT_LT(test_now_ms() - t0, 2500); /* well before pg_sleep(5) ends */
    c = test_checkout(p);
    ASSERT_NE(pid, pg_lease_pid(c));

    /* Returned as broken, the pool closes it without a reset: close()
     * stops the running query the same way. */
    conn = pg_lease_conn(c);
    pid = PQbackendPID(conn);
    ASSERT_EQ(1, PQsendQuery(conn, "SELECT pg_sleep(5)"));
    t0 = test_now_ms();
    test_checkin(p, c, CPOOL_CHECKIN_BROKEN);
    PG_WAIT_BACKEND_GONE(admin, pid, 2000);
    ASSERT_LT(test_now_ms() - t0, 2500);
    cpool_destroy(p);
    test_rec_free(&rec);
    PQfinish(admin);
}

/* A lease that is idle (between queries) when the pool is cleared with
 * interruptInUseConnections can do nothing more: its next command fails at
 * once, through cpool_conn_execute (CPOOL_EINTERRUPTED, saying so) and
 * through raw libpq on the native handle, and check-in closes it. */
TEST(interrupted_idle_lease_fails_next_command)
{
    PGconn *admin = pg_admin();
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    PGconn *conn = pg_lease_conn(c);
    int pid = PQbackendPID(conn);
    ASSERT_OK(cpool_conn_execute(c, "SELECT 1", NULL));
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));

    int64_t t0 = test_now_ns();
    cpool_error e;
    ASSERT_RC(CPOOL_EINTERRUPTED, cpool_conn_execute(c, "SELECT 1", &e));
    ASSERT_STR_CONTAINS(e.message, "interrupted by the pool");
    PGresult *r = PQexec(conn, "SELECT 1");
    ASSERT_TRUE(PQresultStatus(r) != PGRES_TUPLES_OK);
    PQclear(r);
    ASSERT_LT(test_now_ns() - t0, 500000000LL); /* at once, no server round trip */

    test_checkin(p, c, 0);
    ASSERT_EQ(0, test_counts(p).total);
    PG_WAIT_BACKEND_GONE(admin, pid, 3000);
    cpool_destroy(p);
    PQfinish(admin);
}

/* Many leases returned right after PQsendQuery: each backend must stop
 * well before its pg_sleep(5) ends. A cancel request that reaches a
 * backend before it has begun the query is lost, so one request per
 * connection left some running the whole 5 s on a busy machine; the close
 * repeats the request until it sees the backend go. */
TEST(unfinished_queries_all_stop)
{
    enum { N = 24 };
    PGconn *admin = pg_admin();
    char uri[512];
    cpool_options o;
    pg_options(&o, pg_uri_with(uri, sizeof uri, "application_name=cpool_unfinished"), NULL);
    o.max_pool_size = N;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c[N];
    for (int i = 0; i < N; i++)
        c[i] = test_checkout(p);
    int64_t t0 = test_now_ms();
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(1, PQsendQuery(pg_lease_conn(c[i]), "SELECT pg_sleep(5)"));
        test_checkin(p, c[i], 0);
    }
    ASSERT_EQ(0, test_counts(p).total);
    long long left = -1;
    while (test_now_ms() - t0 < 4000) {
        left = pg_scalar(admin, "SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = 'cpool_unfinished'");
        if (left == 0)
            break;
        test_sleep_ms(20);
    }
    if (left != 0)
        FAIL("%lld of %d backends still there %lld ms after their check-in", left, N,
             (long long)(test_now_ms() - t0));
    cpool_destroy(p);
    PQfinish(admin);
}

/* command_timeout_ms bounds cpool_conn_execute; the lease is then
 * mid-query, check-in closes it and its backend stops. The bound is 1 s:
 * with 200 ms, a 10 ms query once ran out of it on a loaded machine. */
TEST(execute_bounded_by_command_timeout)
{
    PGconn *admin = pg_admin();
    char uri[512];
    cpool *p = pg_pool(pg_uri_with(uri, sizeof uri, "command_timeout_ms=1000"), NULL);
    cpool_conn *c = test_checkout(p);
    int pid = pg_lease_pid(c);
    cpool_error e;
    ASSERT_OK_E(cpool_conn_execute(c, "SELECT pg_sleep(0.01)", &e), &e);
    int64_t t0 = test_now_ns();
    ASSERT_RC(CPOOL_EIO, cpool_conn_execute(c, "SELECT pg_sleep(10)", &e));
    int64_t took = test_now_ns() - t0;
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_GE(took, 990000000LL);
    ASSERT_LT(took, 3000000000LL);
    test_checkin(p, c, 0);
    ASSERT_EQ(0, test_counts(p).total);
    PG_WAIT_BACKEND_GONE(admin, pid, 3000);
    cpool_destroy(p);

    cpool_options o;
    pg_options(&o, pg_uri_with(uri, sizeof uri, "command_timeout_ms=-1"), NULL);
    cpool *bad = NULL;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &bad, &e));
    ASSERT_STR_CONTAINS(e.message, "command_timeout_ms");
    PQfinish(admin);
}

typedef struct sleeper {
    PGconn *conn;
    char sqlstate[6];
    ExecStatusType status;
    int64_t end_ns;
    atomic_bool done;
} sleeper;

static void *sleeper_main(void *arg)
{
    sleeper *s = arg;
    PGresult *r = PQexec(s->conn, "SELECT pg_sleep(30)");
    s->status = PQresultStatus(r);
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(s->sqlstate, sizeof s->sqlstate, "%s", st != NULL ? st : "");
    PQclear(r);
    s->end_ns = test_now_ns();
    atomic_store(&s->done, true);
    return NULL;
}

/* cpool_clear(interruptInUseConnections) cancels a query running on a
 * lease held by another thread, and the pool closes that connection. */
TEST(interrupt_in_use_cancels_query)
{
    test_recorder rec;
    test_rec_init(&rec);
    PGconn *admin = pg_admin();
    cpool *p = pg_pool(pg_uri(), &rec);
    cpool_conn *c = test_checkout(p);
    uint64_t id = cpool_conn_id(c);
    sleeper s = {.conn = pg_lease_conn(c)};
    atomic_init(&s.done, false);
    int pid = PQbackendPID(s.conn);
    pthread_t th;
    TEST_THREAD_START(&th, sleeper_main, &s);
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active' "
             "AND query LIKE 'SELECT pg_sleep(30)%%'",
             pid);
    WAIT_UNTIL(pg_scalar(admin, sql) == 1, 3000);

    int64_t t0 = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    ASSERT_LT(test_now_ns() - t0, 100000000LL); /* clear itself does not wait */
    WAIT_UNTIL(atomic_load(&s.done), 3000);
    pthread_join(th, NULL);
    ASSERT_LT(s.end_ns - t0, 1000000000LL);
    ASSERT_EQ(PGRES_FATAL_ERROR, s.status);
    ASSERT_STR_EQ("57014", s.sqlstate); /* query_canceled */

    test_checkin(p, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_EQ(0, test_counts(p).total);
    PG_WAIT_BACKEND_GONE(admin, pid, 2000);
    ASSERT_OK(cpool_ready(p, NULL));
    c = test_checkout(p);
    ASSERT_NE(pid, pg_lease_pid(c));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
    PQfinish(admin);
}

static void set_read_only(PGconn *admin, bool on)
{
    pg_exec_ok(admin, on ? "ALTER SYSTEM SET default_transaction_read_only = on"
                         : "ALTER SYSTEM RESET default_transaction_read_only");
    pg_exec_ok(admin, "SELECT pg_reload_conf()");
    test_sleep_ms(300); /* every backend gets its SIGHUP */
}

/* target_session_attrs=read-write and a server turned read-only while
 * connections sit in the pool. An idle backend applies the reload (and
 * reports default_transaction_read_only) only when its next command
 * arrives, so: the first checkout with the default validation still gets
 * the old connection; whatever the lease runs brings the new value, and
 * the check-in closes it; a new connection is refused by libpq. With
 * validation=always the ping brings it at checkout. Observations are made
 * first and asserted after the setting is restored, so a failure does not
 * leave the shared server read-only. Runs alone (RUN_SERIAL). */
TEST_TAGGED(session_attrs_follow_role_change, "serial")
{
    PGconn *admin = pg_admin();
    char uri[512];
    pg_uri_with(uri, sizeof uri, "target_session_attrs=read-write");
    test_recorder rec;
    test_rec_init(&rec);
    cpool *lazy = pg_pool(uri, &rec);
    cpool_options o;
    pg_options(&o, uri, NULL);
    o.validation = CPOOL_VALIDATE_ALWAYS;
    cpool *eager = test_pool_create(&o);
    test_ready(eager);

    cpool_conn *c = test_checkout(lazy);
    int lazy_pid = pg_lease_pid(c);
    uint64_t lazy_id = cpool_conn_id(c);
    test_checkin(lazy, c, 0);
    c = test_checkout(eager);
    int eager_pid = pg_lease_pid(c);
    test_checkin(eager, c, 0);

    set_read_only(admin, true);

    /* lazy: handed out unchanged; the lease's query brings the news. */
    cpool_error e1, e2, e3;
    memset(&e1, 0, sizeof e1);
    int rc1 = cpool_checkout(lazy, 5000, &c, &e1);
    int pid1 = rc1 == 0 ? pg_lease_pid(c) : -1;
    char *ro_seen = rc1 == 0 ? pg_text(pg_lease_conn(c), "SHOW default_transaction_read_only")
                             : strdup("?");
    const char *ps_seen = rc1 == 0 ? PQparameterStatus(pg_lease_conn(c),
                                                       "default_transaction_read_only")
                                   : NULL;
    bool ps_on = ps_seen != NULL && strcmp(ps_seen, "on") == 0;
    if (rc1 == 0)
        test_checkin(lazy, c, 0);
    test_event closed;
    bool lazy_closed = test_rec_find_closed(&rec, lazy_id, &closed);
    /* A new connection: libpq itself refuses a read-only server. */
    int rc2 = cpool_checkout(lazy, 5000, &c, &e2);
    if (rc2 == 0)
        test_checkin(lazy, c, 0);
    /* eager: the ping at checkout sees it, then the same refusal. */
    int rc3 = cpool_checkout(eager, 5000, &c, &e3);
    int pid3 = rc3 == 0 ? pg_lease_pid(c) : -1;
    if (rc3 == 0)
        test_checkin(eager, c, 0);

    set_read_only(admin, false);
    cpool_error e4;
    int rc4 = cpool_checkout(lazy, 5000, &c, &e4);
    if (rc4 == 0)
        test_checkin(lazy, c, 0);

    ASSERT_OK_E(rc1, &e1);
    ASSERT_EQ(lazy_pid, pid1);
    ASSERT_STR_EQ("on", ro_seen);
    free(ro_seen);
    ASSERT_TRUE(ps_on);
    ASSERT_TRUE(lazy_closed);
    ASSERT_EQ(CPOOL_CLOSE_ERROR, closed.reason);
    ASSERT_STR_CONTAINS(closed.error.message, "read-only");
    ASSERT_RC(CPOOL_ECONNECT, rc2);
    ASSERT_STR_CONTAINS(e2.message, "read-only");
    ASSERT_EQ(CPOOL_FAIL_SERVER, e2.kind);
    ASSERT_EQ(0, e2.labels);
    ASSERT_RC(CPOOL_ECONNECT, rc3);
    ASSERT_NE(eager_pid, pid3);
    ASSERT_OK_E(rc4, &e4);
    cpool_destroy(lazy);
    cpool_destroy(eager);
    test_rec_free(&rec);
    PQfinish(admin);
}

/* Forks with a pool holding a connection; the child lets go of it and
 * exits. mode 0: through the pool (cpool_destroy abandons inherited
 * connections); mode 1, the control: PQfinish on the inherited PGconn,
 * which sends Terminate on the shared socket. Returns the child's status. */
static int fork_child(cpool *p, PGconn *inherited, int mode)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        alarm(20);
        if (mode == 0)
            cpool_destroy(p);
        else
            PQfinish(inherited);
        _exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid)
        FAIL("waitpid: %s", strerror(errno));
    return st;
}

TEST(fork_abandon_keeps_parent_connection)
{
    PGconn *admin = pg_admin();
    cpool *p = pg_pool(pg_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    int pid = pg_lease_pid(c);
    test_checkin(p, c, 0); /* available, inherited by the child */

    int st = fork_child(p, NULL, 0);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    test_sleep_ms(100); /* a Terminate, had one been sent, would have landed */
    ASSERT_TRUE(pg_backend_alive(admin, pid));
    c = test_checkout(p);
    ASSERT_EQ(pid, pg_lease_pid(c));
    ASSERT_EQ(5, pg_scalar(pg_lease_conn(c), "SELECT 5"));

    /* The control: a plain PQfinish in the child ends the parent's session,
     * so the first part really shows that abandon sends nothing. */
    st = fork_child(p, pg_lease_conn(c), 1);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    PG_WAIT_BACKEND_GONE(admin, pid, 2000);
    PGresult *r = PQexec(pg_lease_conn(c), "SELECT 1");
    ASSERT_NE(PGRES_TUPLES_OK, PQresultStatus(r));
    PQclear(r);
    test_checkin(p, c, 0); /* broken: closed, not reused */
    c = test_checkout(p);
    ASSERT_NE(pid, pg_lease_pid(c));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    PQfinish(admin);
}

typedef struct bouncer_worker {
    cpool *pool;
    int index;
    int done;
} bouncer_worker;

static int txn_add(PGconn *conn, void *arg, cpool_error *err)
{
    (void)err;
    const char *params[1] = {arg};
    PGresult *r = PQexecParams(conn, "SELECT $1::int * 2", 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || atoi(PQgetvalue(r, 0, 0)) != 2 * atoi(arg))
        FAIL("in transaction: %s", PQresultErrorMessage(r));
    PQclear(r);
    return 0;
}

static void *bouncer_main(void *arg)
{
    bouncer_worker *w = arg;
    for (int i = 0; i < 40; i++) {
        cpool_conn *c = test_checkout(w->pool);
        PGconn *conn = pg_lease_conn(c);
        char num[16];
        snprintf(num, sizeof num, "%d", w->index * 1000 + i);
        const char *params[1] = {num};
        /* Unnamed statements only: named ones break in transaction mode. */
        PGresult *r = PQexecParams(conn, "SELECT $1::int + 1", 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || atoi(PQgetvalue(r, 0, 0)) != atoi(num) + 1)
            FAIL("through PgBouncer: %s", PQresultErrorMessage(r));
        PQclear(r);
        if (i % 5 == 0) {
            cpool_error e;
            ASSERT_OK_E(cpool_pg_transaction(c, txn_add, num, &e), &e);
        }
        if (i % 7 == 0)
            pg_exec_ok(conn, "BEGIN"); /* returned inside a transaction */
        test_checkin(w->pool, c, 0);
        w->done++;
    }
    return NULL;
}

/* PgBouncer in transaction mode in front: several threads through a
 * small pool; checks, pings, the rollback at check-in and the transaction
 * helper all work without prepared statements. */
TEST_TAGGED(pgbouncer_transaction_mode, "bouncer")
{
    const char *uri = pg_env("CPOOL_TEST_PGBOUNCER_URI");
    cpool_options o;
    pg_options(&o, uri, NULL);
    o.max_pool_size = 3;
    o.validation = CPOOL_VALIDATE_ALWAYS;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    enum { N = 4 };
    bouncer_worker w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        w[i] = (bouncer_worker){.pool = p, .index = i};
        TEST_THREAD_START(&th[i], bouncer_main, &w[i]);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(40, w[i].done);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(N * 40, s.checkouts_ok);
    ASSERT_LE(s.connections_created, 3);
    ASSERT_EQ(0, s.validation_failures);
    cpool_destroy(p);
}

TEST_MAIN()
