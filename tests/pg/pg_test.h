/* pg_test.h -- what the PostgreSQL suites share, on top of test.h.
 *
 * The server is the one the pg_server CTest fixture starts
 * (scripts/pg-server.sh); its URI comes from CPOOL_TEST_PG_URI. A case run
 * without it, or against a server that does not answer, FAILS: a skipped
 * connector test would hide a missing server. Admin checks (pg_stat_activity,
 * pg_terminate_backend, ALTER SYSTEM) go through a libpq connection of the
 * test's own, never through the pool under test. */
#ifndef CPOOL_PG_TEST_H
#define CPOOL_PG_TEST_H

#include "test.h"

#include <cpool/cpool_pg.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

/* The role scripts/pg-server.sh creates, which pg_hba.conf makes log in
 * with a password over TCP, and the role it always rejects. */
#define PG_AUTH_USER "cpool_pw"
#define PG_AUTH_PASSWORD "cpool-pw-secret"
#define PG_REJECTED_USER "cpool_reject"

static inline const char *pg_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        FAIL("%s is not set: run the PostgreSQL tests through ctest, whose pg_server "
             "fixture starts the server (scripts/pg-server.sh) and sets it",
             name);
    return v;
}

static inline const char *pg_uri(void) { return pg_env("CPOOL_TEST_PG_URI"); }

static inline int pg_port(void) { return atoi(pg_env("CPOOL_TEST_PG_PORT")); }

/* The test URI with more query parameters ("reset_query=..."). */
static inline const char *pg_uri_with(char *buf, size_t size, const char *extra)
{
    const char *base = pg_uri();
    int w = snprintf(buf, size, "%s%s%s", base, strchr(base, '?') != NULL ? "&" : "?",
                     extra);
    if (w < 0 || (size_t)w >= size)
        FAIL("URI too long");
    return buf;
}

/* "postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DB?sslmode=disable&...". */
static inline const char *pg_uri_for(char *buf, size_t size, const char *userinfo,
                                     const char *host, int port, const char *db)
{
    int w = snprintf(buf, size,
                     "postgresql://%s@%s:%d/%s?sslmode=disable&gssencmode=disable", userinfo,
                     host, port, db);
    if (w < 0 || (size_t)w >= size)
        FAIL("URI too long");
    return buf;
}

/* A connection of the test's own. */
static inline PGconn *pg_admin(void)
{
    PGconn *c = PQconnectdb(pg_uri());
    if (c == NULL || PQstatus(c) != CONNECTION_OK)
        FAIL("cannot reach the test server at %s: %s", pg_uri(),
             c != NULL ? PQerrorMessage(c) : "out of memory");
    return c;
}

static inline void pg_exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        FAIL("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* The single value of a one-row, one-column query, as text (caller frees). */
static inline char *pg_text(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 1)
        FAIL("%s: %s (%d rows)", sql, PQresultErrorMessage(r), PQntuples(r));
    char *v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (v == NULL)
        FAIL("out of memory");
    return v;
}

static inline long long pg_scalar(PGconn *c, const char *sql)
{
    char *v = pg_text(c, sql);
    long long n = atoll(v);
    free(v);
    return n;
}

static inline bool pg_backend_alive(PGconn *admin, int pid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
    return pg_scalar(admin, sql) > 0;
}

#define PG_WAIT_BACKEND_GONE(admin, pid, timeout_ms)                          \
    WAIT_UNTIL(!pg_backend_alive(admin, pid), timeout_ms)

/* True while the process exists (the server runs on this host). A backend
 * leaves pg_stat_activity before it exits and its socket closes, so tests
 * that need the hang-up on the client's socket wait for the process. */
static inline bool pg_process_alive(int pid)
{
    return kill(pid, 0) == 0 || errno != ESRCH;
}

/* Terminates a backend and waits until its process is gone, which closes
 * its end of the connection. */
static inline void pg_terminate(PGconn *admin, int pid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", pid);
    pg_exec_ok(admin, sql);
    WAIT_UNTIL(!pg_process_alive(pid), 3000);
}

/* Options for a pool on `target` through the connector cpool_connector_for
 * picks (which must be this one), without a background thread, backoff or
 * breaker, so every checkout that needs a connection makes one at once. */
static inline void pg_options(cpool_options *o, const char *target, test_recorder *rec)
{
    cpool_options_init(o, sizeof *o);
    o->connector = cpool_connector_for(target);
    if (o->connector != cpool_pg_connector())
        FAIL("cpool_connector_for(\"%s\") did not pick the PostgreSQL connector", target);
    o->target = target;
    o->maintenance_interval_ms = -1;
    o->backoff_base_ms = 0;
    o->breaker_threshold = 0;
    o->ignore_env = true;
    if (rec != NULL) {
        o->on_event = test_rec_on_event;
        o->event_ctx = rec;
    }
}

static inline cpool *pg_pool(const char *target, test_recorder *rec)
{
    cpool_options o;
    pg_options(&o, target, rec);
    cpool *p = test_pool_create(&o);
    test_ready(p);
    return p;
}

static inline PGconn *pg_lease_conn(cpool_conn *c)
{
    PGconn *conn = cpool_pg_conn(c);
    if (conn == NULL)
        FAIL("lease without a PGconn");
    return conn;
}

static inline int pg_lease_pid(cpool_conn *c) { return PQbackendPID(pg_lease_conn(c)); }

/* A loopback TCP port on which nothing listens (the kernel picked it, and
 * it was closed again). */
static inline int pg_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        FAIL("cannot bind a loopback socket: %s", strerror(errno));
    close(s);
    return ntohs(a.sin_port);
}

/* A loopback listener that never accepts: the kernel completes the TCP
 * handshake from its backlog, so a client connects and then waits forever
 * for the server's first byte. Returns the socket; *port gets its port. */
static inline int pg_silent_listener(int *port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        FAIL("cannot make a loopback listener: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    return s;
}

/* A checkout expected to fail; returns its code and fills *e. */
static inline int pg_checkout_fails(cpool *p, int64_t timeout_ms, cpool_error *e)
{
    cpool_conn *c = NULL;
    memset(e, 0, sizeof *e);
    int rc = cpool_checkout(p, timeout_ms, &c, e);
    if (rc == CPOOL_OK)
        FAIL("checkout succeeded but was expected to fail");
    return rc;
}

#define ASSERT_NO_SUBSTR(haystack, needle)                                    \
    do {                                                                      \
        const char *t_h2_ = (haystack);                                       \
        if (strstr(t_h2_, (needle)) != NULL)                                  \
            FAIL("\"%s\" must not appear in \"%s\"", (needle), t_h2_);        \
    } while (0)

#endif /* CPOOL_PG_TEST_H */
