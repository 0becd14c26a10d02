/* test_pg_txn.c -- cpool_pg_transaction() and cpool_pg_savepoint() on a
 * real server: what is committed, what is rolled back, and what is
 * refused. Each case uses its own table. */
#include "pg_test.h"

typedef struct txn_fixture {
    PGconn *admin;
    cpool *pool;
    cpool_conn *lease;
    char table[64];
} txn_fixture;

static void txn_init(txn_fixture *f, const char *tag)
{
    f->admin = pg_admin();
    snprintf(f->table, sizeof f->table, "cpool_t_%s_%d", tag, (int)getpid());
    char sql[256];
    snprintf(sql, sizeof sql,
             "DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int PRIMARY KEY)", f->table,
             f->table);
    pg_exec_ok(f->admin, sql);
    f->pool = pg_pool(pg_uri(), NULL);
    f->lease = test_checkout(f->pool);
}

static void txn_free(txn_fixture *f)
{
    if (f->lease != NULL)
        test_checkin(f->pool, f->lease, 0);
    cpool_destroy(f->pool);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE %s", f->table);
    pg_exec_ok(f->admin, sql);
    PQfinish(f->admin);
}

/* Rows in the table, seen from the admin connection (so only committed
 * ones count). */
static long long committed_rows(txn_fixture *f)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", f->table);
    return pg_scalar(f->admin, sql);
}

static bool committed_has(txn_fixture *f, int v)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE v = %d", f->table, v);
    return pg_scalar(f->admin, sql) == 1;
}

typedef struct work {
    txn_fixture *f;
    int values[4];
    int nvalues;
    int fail_with;   /* returned after the inserts; 0 = succeed */
    bool bad_statement; /* run a failing statement but return 0 */
    bool commit_inside; /* end the transaction itself */
} work;

/* Inserts w->values; each insert's failure is returned with its message. */
static int insert_values(PGconn *conn, void *arg, cpool_error *err)
{
    work *w = arg;
    for (int i = 0; i < w->nvalues; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (%d)", w->f->table, w->values[i]);
        PGresult *r = PQexec(conn, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER,
                            cpool_pg_sqlstate_code(PQresultErrorField(r, PG_DIAG_SQLSTATE)),
                            "insert %d: %s", w->values[i], PQresultErrorMessage(r));
            PQclear(r);
            return CPOOL_EIO;
        }
        PQclear(r);
    }
    if (w->bad_statement) {
        PQclear(PQexec(conn, "SELECT 1 / 0"));
        return 0;
    }
    if (w->commit_inside)
        pg_exec_ok(conn, "COMMIT");
    if (w->fail_with != 0)
        return cpool_error_set(err, w->fail_with, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "boom from fn");
    return 0;
}

TEST(transaction_commits)
{
    txn_fixture f;
    txn_init(&f, "commit");
    work w = {.f = &f, .values = {1, 2}, .nvalues = 2};
    cpool_error e;
    ASSERT_OK_E(cpool_pg_transaction(f.lease, insert_values, &w, &e), &e);
    ASSERT_EQ(2, committed_rows(&f));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(pg_lease_conn(f.lease)));
    txn_free(&f);
}

TEST(transaction_rolls_back_on_fn_error)
{
    txn_fixture f;
    txn_init(&f, "fnerr");
    work w = {.f = &f, .values = {1, 2}, .nvalues = 2, .fail_with = CPOOL_EINVAL};
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_transaction(f.lease, insert_values, &w, &e));
    ASSERT_EQ(CPOOL_EINVAL, e.code);
    ASSERT_STR_EQ("boom from fn", e.message); /* fn's own error, untouched */
    ASSERT_EQ(0, committed_rows(&f));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(pg_lease_conn(f.lease)));

    /* A statement fn ran failed but fn said 0: nothing is committed. */
    work bad = {.f = &f, .values = {3}, .nvalues = 1, .bad_statement = true};
    ASSERT_RC(CPOOL_ESTATE, cpool_pg_transaction(f.lease, insert_values, &bad, &e));
    ASSERT_STR_CONTAINS(e.message, "rolled back");
    ASSERT_EQ(0, committed_rows(&f));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(pg_lease_conn(f.lease)));
    txn_free(&f);
}

TEST(transaction_refused_inside_transaction)
{
    txn_fixture f;
    txn_init(&f, "nested");
    PGconn *conn = pg_lease_conn(f.lease);
    pg_exec_ok(conn, "BEGIN");
    work w = {.f = &f, .values = {1}, .nvalues = 1};
    cpool_error e;
    ASSERT_RC(CPOOL_ESTATE, cpool_pg_transaction(f.lease, insert_values, &w, &e));
    ASSERT_STR_CONTAINS(e.message, "already in a transaction");
    ASSERT_EQ(PQTRANS_INTRANS, PQtransactionStatus(conn)); /* left alone */
    pg_exec_ok(conn, "ROLLBACK");
    ASSERT_EQ(0, committed_rows(&f));

    /* fn that commits by itself is reported, not committed twice. */
    work own = {.f = &f, .values = {5}, .nvalues = 1, .commit_inside = true};
    ASSERT_RC(CPOOL_ESTATE, cpool_pg_transaction(f.lease, insert_values, &own, &e));
    ASSERT_STR_CONTAINS(e.message, "left the transaction");
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_transaction(NULL, insert_values, &w, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_transaction(f.lease, NULL, &w, &e));
    txn_free(&f);
}

/* COMMIT itself fails (a deferred constraint): CPOOL_EIO with the
 * SQLSTATE, nothing committed, the connection idle again. */
TEST(transaction_commit_failure_reported)
{
    txn_fixture f;
    txn_init(&f, "defer");
    char sql[512];
    snprintf(sql, sizeof sql,
             "ALTER TABLE %s DROP CONSTRAINT %s_pkey, ADD CONSTRAINT %s_u UNIQUE (v) "
             "DEFERRABLE INITIALLY DEFERRED",
             f.table, f.table, f.table);
    pg_exec_ok(f.admin, sql);
    work w = {.f = &f, .values = {7, 7}, .nvalues = 2};
    cpool_error e;
    ASSERT_RC(CPOOL_EIO, cpool_pg_transaction(f.lease, insert_values, &w, &e));
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_EQ(cpool_pg_sqlstate_code("23505"), e.native);
    ASSERT_STR_CONTAINS(e.message, "COMMIT");
    ASSERT_EQ(0, committed_rows(&f));
    ASSERT_EQ(PQTRANS_IDLE, PQtransactionStatus(pg_lease_conn(f.lease)));
    txn_free(&f);
}

typedef struct outer_work {
    txn_fixture *f;
    int inner_rc;
    cpool_error inner_err;
    const char *savepoint;
} outer_work;

/* Inside the transaction: insert 1; a savepoint that inserts 2 and then a
 * duplicate 1 (fails); insert 3. */
static int outer(PGconn *conn, void *arg, cpool_error *err)
{
    outer_work *o = arg;
    work first = {.f = o->f, .values = {1}, .nvalues = 1};
    work inner = {.f = o->f, .values = {2, 1}, .nvalues = 2};
    work last = {.f = o->f, .values = {3}, .nvalues = 1};
    int rc = insert_values(conn, &first, err);
    if (rc != 0)
        return rc;
    o->inner_rc = cpool_pg_savepoint(conn, o->savepoint, insert_values, &inner, &o->inner_err);
    return insert_values(conn, &last, err);
}

TEST(savepoint_rollback_keeps_outer_work)
{
    txn_fixture f;
    txn_init(&f, "sp");
    outer_work o = {.f = &f, .savepoint = "sp1"};
    cpool_error e;
    ASSERT_OK_E(cpool_pg_transaction(f.lease, outer, &o, &e), &e);
    ASSERT_RC(CPOOL_EIO, o.inner_rc);
    ASSERT_EQ(cpool_pg_sqlstate_code("23505"), o.inner_err.native);
    ASSERT_STR_CONTAINS(o.inner_err.message, "insert 1");
    ASSERT_EQ(2, committed_rows(&f));
    ASSERT_TRUE(committed_has(&f, 1));
    ASSERT_FALSE(committed_has(&f, 2));
    ASSERT_TRUE(committed_has(&f, 3));
    txn_free(&f);
}

/* Any name is quoted as an identifier: one that would be SQL injection or
 * a syntax error unquoted works as a plain savepoint name. */
TEST(savepoint_name_quoted_and_checked)
{
    txn_fixture f;
    txn_init(&f, "spname");
    outer_work o = {.f = &f, .savepoint = "x\"; DROP TABLE pg_class; --"};
    cpool_error e;
    ASSERT_OK_E(cpool_pg_transaction(f.lease, outer, &o, &e), &e);
    ASSERT_RC(CPOOL_EIO, o.inner_rc);
    ASSERT_EQ(2, committed_rows(&f));

    PGconn *conn = pg_lease_conn(f.lease);
    work w = {.f = &f, .values = {9}, .nvalues = 1};
    /* Outside a transaction: refused, nothing run. */
    ASSERT_RC(CPOOL_ESTATE, cpool_pg_savepoint(conn, "sp", insert_values, &w, &e));
    ASSERT_STR_CONTAINS(e.message, "transaction");
    ASSERT_FALSE(committed_has(&f, 9));
    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_savepoint(conn, longname, insert_values, &w, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_savepoint(conn, "", insert_values, &w, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_pg_savepoint(conn, "sp", NULL, &w, &e));
    txn_free(&f);
}

TEST_MAIN()
