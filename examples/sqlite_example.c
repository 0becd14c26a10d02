/* sqlite_example.c -- a pool on an SQLite file (argv[1], or a temporary
 * file): create a table, insert in a transaction, query. */
#include <cpool/cpool.h>
#include <cpool/cpool_sqlite.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int add_notes(sqlite3 *db, void *arg, cpool_error *err)
{
    (void)arg;
    (void)err;
    return sqlite3_exec(db, "INSERT INTO notes(body) VALUES ('buy milk'), ('call home')",
                        NULL, NULL, NULL); /* non-zero rolls back */
}

int main(int argc, char **argv)
{
    char path[] = "/tmp/cpool-example-XXXXXX", target[64 + 4096];
    if (argc < 2 && close(mkstemp(path)) != 0)
        return 1;
    snprintf(target, sizeof target, "sqlite:%s?busy_timeout_ms=2000", argc > 1 ? argv[1] : path);

    cpool *pool = NULL;
    cpool_conn *conn = NULL;
    cpool_error err = {0};
    sqlite3_stmt *st = NULL;
    int rc = cpool_open(target, NULL, &pool, &err);
    if (rc == 0)
        rc = cpool_checkout(pool, 5000, &conn, &err);
    if (rc == 0)
        rc = cpool_sqlite_exec(conn, "CREATE TABLE IF NOT EXISTS notes(body TEXT)", &err);
    if (rc == 0)
        rc = cpool_sqlite_transaction(conn, add_notes, NULL, &err);
    if (rc == 0 && sqlite3_prepare_v2(cpool_conn_native(conn), "SELECT count(*) FROM notes",
                                      -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        printf("%d notes\n", sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    if (conn != NULL)
        cpool_checkin(pool, conn, 0, NULL);
    cpool_destroy(pool);
    if (argc < 2)
        unlink(path);
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    return rc == 0 ? 0 : 1;
}
