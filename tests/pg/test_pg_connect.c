/* test_pg_connect.c -- establishing PostgreSQL connections: how each kind of
 * failure is classified (phase, kind, SQLSTATE, CMAP labels), deadlines,
 * interruption by the pool, and the per-phase timings. Every case runs
 * against the fixture's real server or a real socket made here. */
#include "pg_test.h"

#include <sys/un.h>

#define LABELS_BACKPRESSURE (CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE)

TEST(connector_picked_for_both_target_forms)
{
    ASSERT_TRUE(cpool_connector_for("postgresql://u@h/db") == cpool_pg_connector());
    ASSERT_TRUE(cpool_connector_for("postgres://h") == cpool_pg_connector());
    ASSERT_TRUE(cpool_connector_for("host=/tmp dbname=x") == cpool_pg_connector());
    const cpool_connector *cx = cpool_pg_connector();
    ASSERT_EQ(CPOOL_CONNECTOR_ABI, cx->abi_version);
    ASSERT_STR_EQ("pg", cx->name);
    /* The pool and the reference server agree it is up. */
    PGconn *admin = pg_admin();
    PQfinish(admin);
}

/* Nothing listens on the port: the TCP connect is refused later, in
 * PQconnectPoll. CONNECT/NETWORK carries both backpressure labels. */
TEST(refused_tcp_port)
{
    char uri[256];
    pg_uri_for(uri, sizeof uri, "postgres:s3cret-pw", "127.0.0.1", pg_free_port(), "postgres");
    cpool *p = pg_pool(uri, NULL);
    ASSERT_NO_SUBSTR(cpool_address(p), "s3cret-pw");
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, 5000, &e));
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    ASSERT_EQ(LABELS_BACKPRESSURE, e.labels);
    ASSERT_EQ(ECONNREFUSED, e.native);
    ASSERT_STR_CONTAINS(e.message, "127.0.0.1:");
    ASSERT_STR_CONTAINS(e.message, strerror(ECONNREFUSED));
    ASSERT_NO_SUBSTR(e.message, "s3cret-pw");
    cpool_destroy(p);
}

/* A unix socket that exists but does not listen: connect() fails at once,
 * inside PQconnectStartParams, before any polling. A conninfo target. */
TEST(refused_unix_socket)
{
    char dir[] = "/tmp/cpool-pgsock.XXXXXX";
    if (mkdtemp(dir) == NULL)
        FAIL("mkdtemp: %s", strerror(errno));
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "%s/.s.PGSQL.5432", dir);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0)
        FAIL("bind %s: %s", a.sun_path, strerror(errno));

    char target[256];
    snprintf(target, sizeof target, "host=%s port=5432 dbname=postgres user=postgres", dir);
    cpool *p = pg_pool(target, NULL);
    ASSERT_STR_EQ(a.sun_path, cpool_address(p));
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, 5000, &e));
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    ASSERT_EQ(LABELS_BACKPRESSURE, e.labels);
    ASSERT_EQ(ECONNREFUSED, e.native);
    ASSERT_STR_CONTAINS(e.message, ".s.PGSQL.5432");
    cpool_destroy(p);
    close(s);
    unlink(a.sun_path);
    rmdir(dir);
}

/* The server accepts TCP and never answers: only the connector's own
 * deadline ends the attempt, as HANDSHAKE/TIMEOUT (backpressure). */
TEST(silent_listener_deadline)
{
    int port;
    int ls = pg_silent_listener(&port);
    char uri[256];
    pg_uri_for(uri, sizeof uri, "postgres", "127.0.0.1", port, "postgres");
    cpool_options o;
    pg_options(&o, uri, NULL);
    o.connect_timeout_ms = 300;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, -1, &e));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 290);
    ASSERT_LE(took, 300 + 200);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_EQ(LABELS_BACKPRESSURE, e.labels);
    ASSERT_STR_CONTAINS(e.message, "timed out");
    cpool_destroy(p);
    close(ls);
}

/* An establishment stuck on a silent server, abandoned by the pool: by
 * clear with interruptInUseConnections (how == 0) or by close (how == 1). */
static void interrupted_establishment(int how)
{
    int port;
    int ls = pg_silent_listener(&port);
    char uri[256];
    pg_uri_for(uri, sizeof uri, "postgres", "127.0.0.1", port, "postgres");
    test_recorder rec;
    test_rec_init(&rec);
    cpool_options o;
    pg_options(&o, uri, &rec);
    o.connect_timeout_ms = 10000;
    cpool *p = test_pool_create(&o);
    test_ready(p);

    test_job job;
    test_job_start(&job, p, -1);
    WAIT_UNTIL(test_counts(p).pending == 1, 2000);
    test_sleep_ms(100); /* inside the connector's poll by now */
    ASSERT_FALSE(atomic_load(&job.done));
    int64_t t0 = test_now_ns();
    if (how == 0)
        ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    else
        cpool_close(p);
    test_job_join(&job, 3000);
    ASSERT_LT(job.end_ns - t0, 500000000LL); /* promptly, not after 10 s */
    if (job.rc != CPOOL_ECONNECT && job.rc != CPOOL_ECLEARED && job.rc != CPOOL_ECLOSED)
        FAIL("interrupted checkout: %s: \"%s\"", cpool_err_name(job.rc), job.err.message);
    ASSERT_NULL(job.conn);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_EQ(CPOOL_FAIL_INTERRUPTED, ev.error.kind);
    ASSERT_STR_CONTAINS(ev.error.message, "interrupted");
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    test_rec_free(&rec);
    close(ls);
}

TEST(clear_interrupts_establishment) { interrupted_establishment(0); }

TEST(close_interrupts_establishment) { interrupted_establishment(1); }

/* A checkout that fails authentication: AUTH/AUTH, no labels, the SQLSTATE
 * packed into native, no password in the message or the address. */
static void expect_auth_failure(const char *userinfo, const char *sqlstate,
                                const char *secret)
{
    char uri[256];
    pg_uri_for(uri, sizeof uri, userinfo, "127.0.0.1", pg_port(), "postgres");
    cpool *p = pg_pool(uri, NULL);
    cpool_error e;
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, 5000, &e));
    ASSERT_EQ(CPOOL_PHASE_AUTH, e.phase);
    ASSERT_EQ(CPOOL_FAIL_AUTH, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_EQ(cpool_pg_sqlstate_code(sqlstate), e.native);
    ASSERT_NO_SUBSTR(e.message, "LOCATION");
    if (secret != NULL) {
        ASSERT_NO_SUBSTR(e.message, secret);
        ASSERT_NO_SUBSTR(cpool_address(p), secret);
    }
    cpool_destroy(p);
}

TEST(bad_password_is_auth)
{
    /* The right password works, so the failure below is the password's. */
    char uri[256];
    pg_uri_for(uri, sizeof uri, PG_AUTH_USER ":" PG_AUTH_PASSWORD, "127.0.0.1", pg_port(),
               "postgres");
    cpool *p = pg_pool(uri, NULL);
    cpool_conn *c = test_checkout(p);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    expect_auth_failure(PG_AUTH_USER ":wr0ng-secret", "28P01", "wr0ng-secret");
}

TEST(unknown_role_is_auth) { expect_auth_failure("cpool_no_such_role", "28000", NULL); }

TEST(hba_reject_is_auth) { expect_auth_failure(PG_REJECTED_USER, "28000", NULL); }

TEST(unknown_host_is_dns)
{
    char uri[256];
    pg_uri_for(uri, sizeof uri, "postgres", "cpool-no-such-host.invalid", 5432, "postgres");
    cpool *p = pg_pool(uri, NULL);
    cpool_error e;
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, 5000, &e));
    ASSERT_EQ(CPOOL_PHASE_DNS, e.phase);
    ASSERT_EQ(CPOOL_FAIL_DNS, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "cpool-no-such-host.invalid");
    cpool_destroy(p);
}

/* The server answered with an error that is neither overload nor
 * authentication: SERVER, unlabelled, SQLSTATE kept. */
TEST(unknown_database_is_server_error)
{
    char uri[256];
    pg_uri_for(uri, sizeof uri, "postgres", "127.0.0.1", pg_port(), "cpool_no_such_db");
    cpool *p = pg_pool(uri, NULL);
    cpool_error e;
    ASSERT_RC(CPOOL_ECONNECT, pg_checkout_fails(p, 5000, &e));
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_EQ(cpool_pg_sqlstate_code("3D000"), e.native);
    ASSERT_STR_CONTAINS(e.message, "cpool_no_such_db");
    cpool_destroy(p);
}

/* "too many connections" (53300), here from a role's connection limit:
 * HANDSHAKE/SERVER, called transient in the message, unlabelled. */
/* "too many clients" (53300; here the role's CONNECTION LIMIT) is a full
 * server, not a failing one: the checkout waits for a slot within its
 * deadline and ends as a timeout that says why; the circuit stays closed
 * and the refusals are counted apart. When a slot frees up, a waiting
 * checkout gets it. */
TEST(connection_limit_waits_within_deadline)
{
    PGconn *admin = pg_admin();
    pg_exec_ok(admin, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                      "'cpool_limited') THEN CREATE ROLE cpool_limited LOGIN CONNECTION "
                      "LIMIT 1; END IF; END$$");
    char uri[256];
    pg_uri_for(uri, sizeof uri, "cpool_limited", "127.0.0.1", pg_port(), "postgres");
    PGconn *holder = PQconnectdb(uri);
    if (PQstatus(holder) != CONNECTION_OK)
        FAIL("first connection as cpool_limited: %s", PQerrorMessage(holder));
    cpool_options o;
    pg_options(&o, uri, NULL);
    o.breaker_threshold = 2; /* would open at once if refusals counted */
    o.backoff_base_ms = 200;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ETIMEDOUT, pg_checkout_fails(p, 300, &e));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 290);
    ASSERT_LT(took, 1000);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_CAPACITY, e.kind);
    ASSERT_EQ(cpool_pg_sqlstate_code("53300"), e.native);
    ASSERT_STR_CONTAINS(e.message, "too many connections");
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_GE(s.capacity_refusals, 2); /* it kept trying */
    ASSERT_LE(s.capacity_refusals, 40); /* but not in a tight loop */
    ASSERT_FALSE(s.breaker_open);
    ASSERT_EQ(0, s.connect_fail_streak);

    /* The holder leaves while a checkout waits: it gets the slot. */
    test_job j;
    test_job_start(&j, p, 5000);
    test_sleep_ms(150);
    ASSERT_FALSE(atomic_load(&j.done));
    int64_t freed = test_now_ms();
    PQfinish(holder);
    test_job_join(&j, 5000);
    ASSERT_OK_E(j.rc, &j.err);
    ASSERT_LT(test_now_ms() - freed, 1000);
    test_checkin(p, j.conn, 0);
    cpool_destroy(p);
    PQfinish(admin);
}

static int64_t phase_sum(const cpool_connect_args *a)
{
    int64_t s = 0;
    for (int i = 0; i < CPOOL_PHASE_SLOTS; i++)
        s += a->phase_ns[i];
    return s;
}

/* Through the table itself: phase_ns is filled, success and failure, and
 * the password exchange shows up as AUTH time. */
TEST(phase_times_recorded)
{
    const cpool_connector *cx = cpool_pg_connector();
    cpool_error e;
    void *ctx = NULL, *native = NULL;
    ASSERT_OK_E(cx->ctx_new(pg_uri(), &ctx, &e), &e);

    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.target = pg_uri();
    a.cancel_fd = -1;
    int64_t t0 = test_now_ns();
    a.deadline_ns = t0 + 5000000000LL;
    ASSERT_OK_E(cx->connect(ctx, &a, &native, &e), &e);
    int64_t took = test_now_ns() - t0;
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_HANDSHAKE], 0);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_DNS], 0);
    ASSERT_EQ(0, a.phase_ns[CPOOL_PHASE_TLS]); /* sslmode=disable */
    ASSERT_LE(phase_sum(&a), took);
    char desc[128];
    ASSERT_EQ(0, cx->describe(ctx, native, desc, sizeof desc));
    ASSERT_STR_CONTAINS(desc, "PostgreSQL ");
    ASSERT_STR_CONTAINS(desc, ", primary, read-write");
    cx->close(ctx, native);
    cx->ctx_free(ctx);

    /* SCRAM: the server's challenge and the proof are AUTH time. */
    char uri[256];
    pg_uri_for(uri, sizeof uri, PG_AUTH_USER ":" PG_AUTH_PASSWORD, "127.0.0.1", pg_port(),
               "postgres");
    ASSERT_OK_E(cx->ctx_new(uri, &ctx, &e), &e);
    memset(&a, 0, sizeof a);
    a.target = uri;
    a.cancel_fd = -1;
    a.deadline_ns = test_now_ns() + 5000000000LL;
    ASSERT_OK_E(cx->connect(ctx, &a, &native, &e), &e);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_AUTH], 0);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_HANDSHAKE], 0);
    cx->close(ctx, native);
    cx->ctx_free(ctx);

    /* A silent server: the wait until the deadline is HANDSHAKE time. */
    int port;
    int ls = pg_silent_listener(&port);
    pg_uri_for(uri, sizeof uri, "postgres", "127.0.0.1", port, "postgres");
    ASSERT_OK_E(cx->ctx_new(uri, &ctx, &e), &e);
    memset(&a, 0, sizeof a);
    a.target = uri;
    a.cancel_fd = -1;
    a.deadline_ns = test_now_ns() + 200000000LL;
    native = NULL;
    ASSERT_RC(CPOOL_ECONNECT, cx->connect(ctx, &a, &native, &e));
    ASSERT_NULL(native);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_GE(a.phase_ns[CPOOL_PHASE_HANDSHAKE], 150000000LL);
    cx->ctx_free(ctx);
    close(ls);
}

TEST(sqlstate_code_round_trip)
{
    const char *states[] = {"00000", "28P01", "53300", "57014", "3D000", "ZZZZZ", "08006"};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        char buf[6];
        int code = cpool_pg_sqlstate_code(states[i]);
        if (strcmp(states[i], "00000") != 0)
            ASSERT_GT(code, 0);
        if (code != 0)
            ASSERT_STR_EQ(states[i], cpool_pg_sqlstate_text(code, buf));
    }
    /* PostgreSQL's own packing: ERRCODE_QUERY_CANCELED is 57014. */
    ASSERT_EQ(('5' - '0') + (('7' - '0') << 6) + (('0' - '0') << 12) + (('1' - '0') << 18) +
                  (('4' - '0') << 24),
              cpool_pg_sqlstate_code("57014"));
    ASSERT_EQ(0, cpool_pg_sqlstate_code("2800"));
    ASSERT_EQ(0, cpool_pg_sqlstate_code("28p01"));
    ASSERT_EQ(0, cpool_pg_sqlstate_code("28P011"));
    ASSERT_EQ(0, cpool_pg_sqlstate_code(NULL));
    char buf[6];
    ASSERT_STR_EQ("", cpool_pg_sqlstate_text(-5, buf));
}

TEST_MAIN()
