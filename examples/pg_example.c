/* pg_example.c -- a pool of PostgreSQL connections: query, then a transaction. */
#include <cpool/cpool_pg.h>
#include <stdio.h>
#include <stdlib.h>

/* The work of one transaction: committed when it returns 0. */
static int bump(PGconn *conn, void *arg, cpool_error *err)
{
    PGresult *r = PQexec(conn, "CREATE TEMP TABLE IF NOT EXISTS hits (n int);"
                               "INSERT INTO hits VALUES (1)");
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : CPOOL_EIO;
    if (rc != 0)
        cpool_error_set(err, rc, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0, "insert: %s",
                        PQresultErrorMessage(r));
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
    if (rc == 0) rc = cpool_checkout(pool, 5000, &lease, &err);
    if (rc == 0) {
        PGresult *r = PQexec(cpool_pg_conn(lease), "SELECT version()");
        if (PQresultStatus(r) == PGRES_TUPLES_OK) printf("%s\n", PQgetvalue(r, 0, 0));
        PQclear(r);
        rc = cpool_pg_transaction(lease, bump, NULL, &err); /* BEGIN ... COMMIT */
        int rc2 = cpool_checkin(pool, lease, 0, &err);       /* rolled back if left open */
        if (rc == 0) rc = rc2;
    }
    if (rc != 0) fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    cpool_destroy(pool);
    return rc == 0 ? 0 : 1;
}
