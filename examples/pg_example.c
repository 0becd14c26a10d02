/* pg_example.c -- a pool of PostgreSQL connections: a query with
 * parameters in one call, then a transaction on a lease of its own. */
#include <cpool/cpool_pg.h>
#include <stdio.h>
#include <stdlib.h>

/* The work of one transaction: committed when it returns 0. */
static int bump(PGconn *conn, void *arg, cpool_error *err)
{
    PGresult *r = PQexec(conn, "CREATE TEMP TABLE IF NOT EXISTS hits (n int);"
                               "INSERT INTO hits VALUES (1)");
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : cpool_pg_error(conn, r, err);
    PQclear(r);
    (void)arg;
    return rc;
}

int main(int argc, char **argv)
{
    const char *uri = argc > 1 ? argv[1] : getenv("CPOOL_PG_URI");
    if (uri == NULL)
        uri = "postgresql://postgres@127.0.0.1:25432/postgres?maxPoolSize=4";
    cpool *pool = NULL;
    cpool_conn *lease = NULL;
    cpool_error err = {0};
    int rc = cpool_open(uri, NULL, &pool, &err); /* picks the PostgreSQL connector */

    /* One statement: leased, run, returned; retried once if the connection
     * broke (the query is idempotent). */
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 5000, .retries = 1};
    const char *params[] = {"cpool"};
    PGresult *r = rc == 0 ? cpool_pg_query(pool, &o, "SELECT 'hello from ' || $1, version()",
                                           1, params, &err)
                          : NULL;
    if (r != NULL) {
        printf("%s\n%s\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
        PQclear(r);
    } else if (rc == 0) {
        rc = err.code;
    }

    /* A transaction keeps its connection for several statements. */
    if (rc == 0) rc = cpool_checkout(pool, 5000, &lease, &err);
    if (rc == 0) {
        rc = cpool_pg_transaction(lease, bump, NULL, &err); /* BEGIN ... COMMIT */
        int rc2 = cpool_checkin(pool, lease, 0, &err);       /* rolled back if left open */
        if (rc == 0) rc = rc2;
    }
    if (rc != 0) fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    cpool_destroy(pool);
    return rc == 0 ? 0 : 1;
}
