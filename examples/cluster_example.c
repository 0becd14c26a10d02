/* cluster_example.c -- pg_example.c on a primary with replicas: the same
 * two steps, a read sent to a replica and a transaction sent to the
 * primary, over a multi-host target (docs/cluster.md shows the diff). */
#include <cpool/cpool_cluster.h>
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

/* A read on whatever lease the cluster chose. */
static int hello(cpool_conn *lease, void *arg, cpool_error *err)
{
    PGconn *conn = cpool_pg_conn(lease);
    PGresult *r = PQexec(conn, "SELECT 'hello from ' || inet_server_port(), "
                               "pg_is_in_recovery()");
    int rc = PQresultStatus(r) == PGRES_TUPLES_OK ? 0 : cpool_pg_error(conn, r, err);
    if (rc == 0)
        printf("%s (%s)\n", PQgetvalue(r, 0, 0),
               *PQgetvalue(r, 0, 1) == 't' ? "replica" : "primary");
    PQclear(r);
    (void)arg;
    return rc;
}

static int write_txn(cpool_conn *lease, void *arg, cpool_error *err)
{
    return cpool_pg_transaction(lease, bump, arg, err); /* BEGIN ... COMMIT */
}

int main(int argc, char **argv)
{
    const char *uri = argc > 1 ? argv[1] : getenv("CPOOL_PG_URI");
    if (uri == NULL)
        uri = "postgresql://postgres@127.0.0.1:25485,127.0.0.1:25486/postgres?maxPoolSize=4";
    cpool_cluster *cluster = NULL;
    cpool_error err = {0};
    int rc = cpool_cluster_open(uri, NULL, &cluster, &err); /* a pool per host */

    /* One statement on a replica (the primary if none is up); retried once
     * on another connection if one broke (the query is idempotent). */
    cpool_cluster_run_opts o = {.struct_size = sizeof o, .want = CPOOL_WANT_REPLICA_PREFERRED,
                                .timeout_ms = 5000, .retries = 1};
    if (rc == 0) rc = cpool_cluster_run(cluster, &o, hello, NULL, &err);

    /* A transaction goes to the primary. */
    o.want = CPOOL_WANT_PRIMARY;
    o.retries = 0; /* not idempotent */
    if (rc == 0) rc = cpool_cluster_run(cluster, &o, write_txn, NULL, &err);
    if (rc == 0) rc = cpool_cluster_run(cluster, &o, hello, NULL, &err);
    if (rc != 0) fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    cpool_cluster_close(cluster);
    return rc == 0 ? 0 : 1;
}
