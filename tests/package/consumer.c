/* consumer.c -- a program outside cpool's build, as a user writes one: it
 * includes the installed headers, checks a connection out of an SQLite
 * pool, runs a statement and checks it in. The package tests build it
 * through pkg-config (shared and static), find_package() and
 * add_subdirectory()/FetchContent, then run it. */
#include <cpool/cpool.h>
#include <cpool/cpool_sqlite.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    /* The headers and the library agree on the version. */
    if (strcmp(cpool_version(), CPOOL_VERSION_STRING) != 0 ||
        cpool_version_number() != CPOOL_VERSION_NUMBER) {
        fprintf(stderr, "consumer: headers say %s, library %s\n", CPOOL_VERSION_STRING,
                cpool_version());
        return 1;
    }
    cpool *pool = NULL;
    cpool_conn *conn = NULL;
    cpool_error err;
    int rc = cpool_open("sqlite::memory:?maxPoolSize=2", NULL, &pool, &err);
    if (rc == 0)
        rc = cpool_checkout_here(pool, 5000, &conn, &err);
    if (rc == 0)
        rc = cpool_sqlite_exec(conn, "CREATE TABLE t(x); INSERT INTO t VALUES (42)", &err);
    if (rc == 0)
        rc = cpool_conn_execute(conn, "SELECT x FROM t", &err);
    if (conn != NULL && cpool_checkin(pool, conn, rc != 0 ? CPOOL_CHECKIN_BROKEN : 0, NULL) != 0)
        rc = -1;
    if (rc != 0) {
        fprintf(stderr, "consumer: %s: %s\n", cpool_err_name(rc), err.message);
        cpool_destroy(pool);
        return 1;
    }
    cpool_counts c;
    cpool_get_counts(pool, &c);
    cpool_destroy(pool);
    if (c.in_use != 0 || c.available != 1) {
        fprintf(stderr, "consumer: in use %u, available %u after check-in\n", c.in_use,
                c.available);
        return 1;
    }
    printf("consumer ok: cpool %s, connector %s\n", cpool_version(),
           cpool_sqlite_connector()->name);
    return 0;
}
