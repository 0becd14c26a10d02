/* test_sqlite.c -- the SQLite connector through real pools on real database
 * files (each case in a fresh directory under /tmp, removed at the end) and
 * on shared in-memory databases. No server is involved, so nothing can be
 * missing: every case runs everywhere the connector is built. */
#include "test.h"

#include <cpool/cpool_sqlite.h>

#include <dirent.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ------------------------------------------------------------ helpers */

/* A scratch directory; paths inside it are built with tmp_path(). */
typedef struct scratch {
    char dir[64];
} scratch;

static void scratch_make(scratch *s)
{
    snprintf(s->dir, sizeof s->dir, "/tmp/cpool-sqlite-XXXXXX");
    if (mkdtemp(s->dir) == NULL)
        FAIL("mkdtemp: %s", strerror(errno));
}

/* Removes the directory and the files in it (databases, -wal, -shm,
 * -journal); the cases create no subdirectories. */
static void scratch_remove(scratch *s)
{
    DIR *d = opendir(s->dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", s->dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(s->dir);
}

/* "sqlite:<dir>/<file><query>" */
static const char *target_in(const scratch *s, const char *file, const char *query,
                             char *buf, size_t size)
{
    snprintf(buf, size, "sqlite:%s/%s%s", s->dir, file, query != NULL ? query : "");
    return buf;
}

static bool file_exists(const char *dir, const char *file)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return stat(p, &st) == 0;
}

/* Options for a pool on `target` with the connector its scheme names:
 * no maintenance thread (cases call cpool_maintain when they need it), no
 * environment, every establishment attempted (no backoff, no breaker). */
static void sq_options(cpool_options *o, const char *target, uint32_t max, test_recorder *rec)
{
    cpool_options_init(o, sizeof *o);
    o->target = target;
    o->connector = cpool_connector_for(target);
    if (o->connector != cpool_sqlite_connector())
        FAIL("cpool_connector_for(\"%s\") is not the SQLite connector", target);
    o->max_pool_size = max;
    o->maintenance_interval_ms = -1;
    o->ignore_env = true;
    o->backoff_base_ms = 0;
    o->breaker_threshold = 0;
    if (rec != NULL) {
        o->on_event = test_rec_on_event;
        o->event_ctx = rec;
    }
}

#define sq_pool(target, max, rec) sq_pool_at_(target, max, rec, __FILE__, __LINE__)
static cpool *sq_pool_at_(const char *target, uint32_t max, test_recorder *rec,
                          const char *file, int line)
{
    cpool_options o;
    sq_options(&o, target, max, rec);
    cpool *p = test_pool_create_at_(&o, file, line);
    test_ready_at_(p, file, line);
    return p;
}

static sqlite3 *db_of(cpool_conn *c)
{
    sqlite3 *db = cpool_conn_native(c);
    if (db == NULL)
        FAIL("lease without a native handle");
    return db;
}

#define q_exec(db, sql) q_exec_at_(db, sql, __FILE__, __LINE__)
static void q_exec_at_(sqlite3 *db, const char *sql, const char *file, int line)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        test_fail(file, line, "%s: %d %s", sql, rc, msg != NULL ? msg : "");
    sqlite3_free(msg);
}

/* The first column of the first row as an integer. */
#define q_int(db, sql) q_int_at_(db, sql, __FILE__, __LINE__)
static long long q_int_at_(sqlite3 *db, const char *sql, const char *file, int line)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        test_fail(file, line, "prepare %s: %s", sql, sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        test_fail(file, line, "step %s: %d %s", sql, rc, sqlite3_errmsg(db));
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* The first column of the first row as text, copied into buf. */
#define q_text(db, sql, buf) q_text_at_(db, sql, buf, sizeof buf, __FILE__, __LINE__)
static const char *q_text_at_(sqlite3 *db, const char *sql, char *buf, size_t size,
                              const char *file, int line)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        test_fail(file, line, "prepare %s: %s", sql, sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        test_fail(file, line, "step %s: %d %s", sql, rc, sqlite3_errmsg(db));
    const unsigned char *t = sqlite3_column_text(st, 0);
    snprintf(buf, size, "%s", t != NULL ? (const char *)t : "");
    sqlite3_finalize(st);
    return buf;
}

static cpool_stats stats_of(cpool *p)
{
    cpool_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    ASSERT_OK(cpool_get_stats(p, &s));
    return s;
}

/* ------------------------------------------------------------ basics */

TEST(basic_query)
{
    scratch s;
    scratch_make(&s);
    char t[256], want[256];
    cpool *p = sq_pool(target_in(&s, "basic.db", NULL, t, sizeof t), 2, NULL);
    snprintf(want, sizeof want, "sqlite:%s/basic.db", s.dir);
    ASSERT_STR_EQ(want, cpool_address(p));

    cpool_conn *c = test_checkout(p);
    sqlite3 *db = db_of(c);
    q_exec(db, "CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (42)");
    ASSERT_EQ(42, q_int(db, "SELECT x FROM t"));

    /* The connector's execute(), which tools use. */
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cpool_conn_execute(c, "SELECT 1", &e), &e);
    ASSERT_RC(CPOOL_EIO, cpool_conn_execute(c, "SELEC 1", &e));
    ASSERT_EQ(SQLITE_ERROR, e.native);
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_STR_CONTAINS(e.message, "syntax error");
    ASSERT_STR_CONTAINS(e.message, "basic.db");
    test_checkin(p, c, 0);
    cpool_destroy(p);
    ASSERT_TRUE(file_exists(s.dir, "basic.db"));
    scratch_remove(&s);
}

TEST(connections_reused)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "reuse.db", NULL, t, sizeof t), 4, NULL);
    cpool_conn *c = test_checkout(p);
    uint64_t id = cpool_conn_id(c);
    sqlite3 *db = db_of(c);
    test_checkin(p, c, 0);
    for (int i = 0; i < 20; i++) {
        c = test_checkout(p);
        ASSERT_EQ(id, cpool_conn_id(c));
        ASSERT_TRUE(db_of(c) == db);
        test_checkin(p, c, 0);
    }
    cpool_stats st = stats_of(p);
    ASSERT_EQ(1, st.connections_created);
    ASSERT_EQ(20, st.checkouts_reused);
    cpool_destroy(p);
    scratch_remove(&s);
}

TEST(file_db_defaults_and_parameters)
{
    scratch s;
    scratch_make(&s);
    char t[256], buf[32];
    /* Defaults: WAL, synchronous=NORMAL, foreign keys enforced. */
    cpool *p = sq_pool(target_in(&s, "wal.db", NULL, t, sizeof t), 2, NULL);
    cpool_conn *c = test_checkout(p);
    sqlite3 *db = db_of(c);
    ASSERT_STR_EQ("wal", q_text(db, "PRAGMA journal_mode", buf));
    ASSERT_EQ(1, q_int(db, "PRAGMA synchronous"));
    ASSERT_EQ(1, q_int(db, "PRAGMA foreign_keys"));
    q_exec(db, "CREATE TABLE parent(id INTEGER PRIMARY KEY);"
               "CREATE TABLE child(pid INTEGER REFERENCES parent(id))");
    ASSERT_EQ(SQLITE_CONSTRAINT,
              sqlite3_exec(db, "INSERT INTO child VALUES (7)", NULL, NULL, NULL));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    ASSERT_FALSE(file_exists(s.dir, "wal.db-wal")); /* the last close checkpoints */

    /* Every parameter given. */
    p = sq_pool(target_in(&s, "rb.db",
                          "?journal_mode=DELETE&synchronous=extra&foreign_keys=off"
                          "&busy_timeout_ms=100&mode=rwc",
                          t, sizeof t),
                2, NULL);
    c = test_checkout(p);
    db = db_of(c);
    ASSERT_STR_EQ("delete", q_text(db, "PRAGMA journal_mode", buf));
    ASSERT_EQ(3, q_int(db, "PRAGMA synchronous"));
    ASSERT_EQ(0, q_int(db, "PRAGMA foreign_keys"));
    test_checkin(p, c, 0);
    cpool_destroy(p);

    /* Another journal mode keeps SQLite's synchronous=FULL. */
    p = sq_pool(target_in(&s, "tr.db", "?journal_mode=truncate", t, sizeof t), 1, NULL);
    c = test_checkout(p);
    db = db_of(c);
    ASSERT_STR_EQ("truncate", q_text(db, "PRAGMA journal_mode", buf));
    ASSERT_EQ(2, q_int(db, "PRAGMA synchronous"));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

TEST(open_modes)
{
    scratch s;
    scratch_make(&s);
    char t[256], buf[32];
    cpool_error e;
    memset(&e, 0, sizeof e);
    /* mode=rw does not create the file. */
    cpool *p = sq_pool(target_in(&s, "m.db", "?mode=rw", t, sizeof t), 1, NULL);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(p, 2000, &c, &e));
    ASSERT_EQ(SQLITE_CANTOPEN, e.native & 0xff);
    ASSERT_FALSE(file_exists(s.dir, "m.db"));
    cpool_destroy(p);

    /* The default (rwc) creates it. */
    p = sq_pool(target_in(&s, "m.db", NULL, t, sizeof t), 1, NULL);
    c = test_checkout(p);
    q_exec(db_of(c), "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
    test_checkin(p, c, 0);
    cpool_destroy(p);
    ASSERT_TRUE(file_exists(s.dir, "m.db"));

    /* mode=ro reads a WAL database and cannot write. */
    p = sq_pool(target_in(&s, "m.db", "?mode=ro", t, sizeof t), 1, NULL);
    c = test_checkout(p);
    sqlite3 *db = db_of(c);
    ASSERT_EQ(1, q_int(db, "SELECT count(*) FROM t"));
    ASSERT_STR_EQ("wal", q_text(db, "PRAGMA journal_mode", buf));
    ASSERT_EQ(SQLITE_READONLY, sqlite3_exec(db, "INSERT INTO t VALUES (2)", NULL, NULL, NULL));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ memory */

TEST(memory_shared_by_leases_and_anchored)
{
    test_recorder rec;
    test_rec_init(&rec);
    cpool *p = sq_pool("sqlite::memory:", 2, &rec);
    cpool_conn *a = test_checkout(p);
    cpool_conn *b = test_checkout(p);
    ASSERT_TRUE(db_of(a) != db_of(b));
    q_exec(db_of(a), "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
    ASSERT_EQ(1, q_int(db_of(b), "SELECT count(*) FROM t"));
    q_exec(db_of(b), "INSERT INTO t VALUES (2)");
    ASSERT_EQ(2, q_int(db_of(a), "SELECT count(*) FROM t"));
    uint64_t newest = cpool_conn_id(b);
    test_checkin(p, a, 0);
    test_checkin(p, b, 0);

    /* Every connection of the pool is closed; the context's anchor keeps
     * the database. */
    ASSERT_OK(cpool_clear(p, 0, NULL, NULL));
    ASSERT_OK(cpool_maintain(p, NULL));
    ASSERT_EQ(0, test_counts(p).total);
    ASSERT_EQ(2, test_rec_count(&rec, CPOOL_EV_CONN_CLOSED));
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    ASSERT_GT(cpool_conn_id(c), newest);
    ASSERT_EQ(2, q_int(db_of(c), "SELECT count(*) FROM t"));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
}

TEST(memory_pools_isolated_unless_named)
{
    cpool *p1 = sq_pool("sqlite::memory:", 1, NULL);
    cpool *p2 = sq_pool("sqlite://:memory:", 1, NULL);
    ASSERT_TRUE(strcmp(cpool_address(p1), cpool_address(p2)) != 0);
    cpool_conn *a = test_checkout(p1);
    cpool_conn *b = test_checkout(p2);
    q_exec(db_of(a), "CREATE TABLE only_in_p1(x)");
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(SQLITE_ERROR,
              sqlite3_prepare_v2(db_of(b), "SELECT * FROM only_in_p1", -1, &st, NULL));
    ASSERT_STR_CONTAINS(sqlite3_errmsg(db_of(b)), "no such table");
    test_checkin(p1, a, 0);
    test_checkin(p2, b, 0);
    cpool_destroy(p1);
    cpool_destroy(p2);

    /* The same name shares, even after the first pool is gone. */
    p1 = sq_pool("sqlite::memory:?name=shared-db", 1, NULL);
    p2 = sq_pool("sqlite::memory:?name=shared-db", 1, NULL);
    ASSERT_STR_EQ("sqlite::memory:shared-db", cpool_address(p1));
    a = test_checkout(p1);
    q_exec(db_of(a), "CREATE TABLE t(x); INSERT INTO t VALUES (5)");
    test_checkin(p1, a, 0);
    cpool_destroy(p1);
    b = test_checkout(p2);
    ASSERT_EQ(5, q_int(db_of(b), "SELECT x FROM t"));
    test_checkin(p2, b, 0);
    cpool_destroy(p2);
}

/* ------------------------------------------------------------ errors */

/* cpool_create must fail with CPOOL_EINVAL and a message holding each of
 * the NULL-terminated needles. */
static void expect_einval(const char *target, ...)
{
    cpool_options o;
    sq_options(&o, target, 1, NULL);
    static char sentinel;
    cpool *p = (cpool *)(void *)&sentinel; /* create must set it to NULL */
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_create(&o, &p, &e);
    if (rc != CPOOL_EINVAL)
        FAIL("create \"%s\": %s (%s), want CPOOL_EINVAL", target, cpool_err_name(rc),
             e.message);
    ASSERT_NULL(p);
    va_list ap;
    va_start(ap, target);
    for (const char *n = va_arg(ap, const char *); n != NULL; n = va_arg(ap, const char *))
        if (strstr(e.message, n) == NULL)
            FAIL("create \"%s\": message \"%s\" lacks \"%s\"", target, e.message, n);
    va_end(ap);
}

TEST(invalid_targets_rejected)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    expect_einval(target_in(&s, "x.db", "?bogus=1", t, sizeof t), "bogus", "\"1\"",
                  "busy_timeout_ms, journal_mode", NULL);
    expect_einval(target_in(&s, "x.db", "?journal_mode=fast", t, sizeof t), "journal_mode",
                  "\"fast\"", "wal, delete", NULL);
    expect_einval(target_in(&s, "x.db", "?busy_timeout_ms=-5", t, sizeof t),
                  "busy_timeout_ms", "\"-5\"", "0..2147483647", NULL);
    expect_einval(target_in(&s, "x.db", "?busy_timeout_ms=10s", t, sizeof t),
                  "busy_timeout_ms", "\"10s\"", NULL);
    expect_einval(target_in(&s, "x.db", "?mode=rwx", t, sizeof t), "mode", "\"rwx\"", "ro",
                  NULL);
    expect_einval(target_in(&s, "x.db", "?synchronous=sometimes", t, sizeof t), "synchronous",
                  "\"sometimes\"", "normal", NULL);
    expect_einval(target_in(&s, "x.db", "?foreign_keys=maybe", t, sizeof t), "foreign_keys",
                  "\"maybe\"", "on or off", NULL);
    expect_einval(target_in(&s, "x.db", "?name=a", t, sizeof t), "name", "memory", NULL);
    expect_einval("sqlite::memory:?journal_mode=wal", "journal_mode", "sqlite::memory:", NULL);
    expect_einval("sqlite::memory:?mode=ro", "mode", "sqlite::memory:", NULL);
    expect_einval("sqlite::memory:?name=bad/name", "name", "\"bad/name\"", "A-Z", NULL);
    expect_einval("sqlite:", "no database path", NULL);
    expect_einval("sqlite:?busy_timeout_ms=1", "no database path", NULL);
    expect_einval("sqlite:/tmp/50%zz.db", "%-escape", NULL);
    /* Nothing was opened or created on the way. */
    ASSERT_FALSE(file_exists(s.dir, "x.db"));
    scratch_remove(&s);
}

TEST(bad_path_unlabelled)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    test_recorder rec;
    test_rec_init(&rec);
    cpool *p = sq_pool(target_in(&s, "missing-dir/x.db", NULL, t, sizeof t), 1, &rec);
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(p, 2000, &c, &e));
    ASSERT_NULL(c);
    ASSERT_EQ(0, e.labels);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_EQ(CPOOL_FAIL_OTHER, e.kind);
    ASSERT_EQ(SQLITE_CANTOPEN, e.native & 0xff);
    ASSERT_STR_CONTAINS(e.message, "missing-dir/x.db");
    ASSERT_STR_CONTAINS(e.message, "unable to open database file");
    ASSERT_STR_CONTAINS(e.message, "No such file or directory");
    ASSERT_STR_CONTAINS(e.message, "SQLITE_CANTOPEN");
    test_event ev;
    ASSERT_TRUE(test_rec_find(&rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    cpool_destroy(p);
    test_rec_free(&rec);

    /* A file that is no database fails while setting up, unlabelled too. */
    char path[256];
    snprintf(path, sizeof path, "%s/text.db", s.dir);
    FILE *f = fopen(path, "w");
    ASSERT_NOT_NULL(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database file\n", f);
    fclose(f);
    p = sq_pool(target_in(&s, "text.db", NULL, t, sizeof t), 1, NULL);
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(p, 2000, &c, &e));
    ASSERT_EQ(0, e.labels);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_OTHER, e.kind);
    ASSERT_EQ(SQLITE_NOTADB, e.native & 0xff);
    ASSERT_STR_CONTAINS(e.message, "not a database");
    cpool_destroy(p);
    /* Also where no journal_mode is set, which would have read the file. */
    p = sq_pool(target_in(&s, "text.db", "?mode=ro", t, sizeof t), 1, NULL);
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(p, 2000, &c, &e));
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(SQLITE_NOTADB, e.native & 0xff);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ check-in */

TEST(checkin_rolls_back_open_transaction)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "tx.db", NULL, t, sizeof t), 1, NULL);
    cpool_conn *c = test_checkout(p);
    uint64_t id = cpool_conn_id(c);
    q_exec(db_of(c), "CREATE TABLE t(x)");
    q_exec(db_of(c), "BEGIN; INSERT INTO t VALUES (1)");
    ASSERT_FALSE(sqlite3_get_autocommit(db_of(c)));
    test_checkin(p, c, 0);

    /* Same connection (reset, not closed), transaction gone. */
    c = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(c));
    ASSERT_TRUE(sqlite3_get_autocommit(db_of(c)));
    ASSERT_EQ(0, q_int(db_of(c), "SELECT count(*) FROM t"));
    test_checkin(p, c, 0);
    ASSERT_EQ(0, stats_of(p).closed[CPOOL_CLOSE_ERROR]);
    cpool_destroy(p);
    scratch_remove(&s);
}

TEST(checkin_resets_running_statement)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "st.db", "?busy_timeout_ms=200", t, sizeof t), 2, NULL);
    cpool_conn *x = test_checkout(p);
    cpool_conn *y = test_checkout(p);
    sqlite3 *xdb = db_of(x);
    q_exec(xdb, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)");
    /* A SELECT left after its first row holds a read transaction. */
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(xdb, "SELECT x FROM t", -1, &st, NULL));
    ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
    test_checkin(p, x, 0);

    /* With the reader gone, another connection writes and a TRUNCATE
     * checkpoint completes (busy = 0) instead of waiting for it. */
    sqlite3 *ydb = db_of(y);
    q_exec(ydb, "INSERT INTO t VALUES (4)");
    sqlite3_stmt *ck = NULL;
    ASSERT_EQ(SQLITE_OK,
              sqlite3_prepare_v2(ydb, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &ck, NULL));
    ASSERT_EQ(SQLITE_ROW, sqlite3_step(ck));
    ASSERT_EQ(0, sqlite3_column_int(ck, 0));
    sqlite3_finalize(ck);

    /* The connection went back to the pool and the statement, reset but
     * not finalized, is still the user's. */
    cpool_conn *z = test_checkout(p);
    ASSERT_TRUE(db_of(z) == xdb);
    ASSERT_FALSE(sqlite3_stmt_busy(st));
    ASSERT_EQ(SQLITE_OK, sqlite3_finalize(st));
    test_checkin(p, z, 0);
    test_checkin(p, y, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ locks */

TEST(busy_timeout_bounds_lock_wait)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "busy.db", "?busy_timeout_ms=200", t, sizeof t), 2, NULL);
    cpool_conn *a = test_checkout(p);
    cpool_conn *b = test_checkout(p);
    q_exec(db_of(a), "CREATE TABLE t(x)");
    q_exec(db_of(a), "BEGIN IMMEDIATE; INSERT INTO t VALUES (1)");

    int64_t t0 = test_now_ms();
    int rc = sqlite3_exec(db_of(b), "INSERT INTO t VALUES (2)", NULL, NULL, NULL);
    int64_t waited = test_now_ms() - t0;
    ASSERT_EQ(SQLITE_BUSY, rc);
    ASSERT_GE(waited, 190);
    ASSERT_LT(waited, 1500);

    /* Through the helper: the same wait, reported as a usable connection's
     * error. */
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_EIO, cpool_sqlite_exec(b, "INSERT INTO t VALUES (2)", &e));
    ASSERT_EQ(SQLITE_BUSY, e.native & 0xff);
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_STR_CONTAINS(e.message, "locked");

    q_exec(db_of(a), "COMMIT");
    ASSERT_OK_E(cpool_sqlite_exec(b, "INSERT INTO t VALUES (2)", &e), &e);
    ASSERT_EQ(2, q_int(db_of(a), "SELECT count(*) FROM t"));
    test_checkin(p, a, 0);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* A statement run on its own thread. */
typedef struct sql_job {
    cpool *pool;
    cpool_conn *conn;
    const char *sql;
    pthread_t thread;
    atomic_bool started;
    atomic_bool done;
    int rc;
    int64_t end_ns;
} sql_job;

static void *sql_job_main(void *arg)
{
    sql_job *j = arg;
    atomic_store(&j->started, true);
    j->rc = sqlite3_exec(db_of(j->conn), j->sql, NULL, NULL, NULL);
    j->end_ns = test_now_ns();
    atomic_store(&j->done, true);
    return NULL;
}

static void sql_job_start(sql_job *j, cpool *p, cpool_conn *c, const char *sql)
{
    memset(j, 0, sizeof *j);
    j->pool = p;
    j->conn = c;
    j->sql = sql;
    atomic_init(&j->started, false);
    atomic_init(&j->done, false);
    TEST_THREAD_START(&j->thread, sql_job_main, j);
    WAIT_UNTIL(atomic_load(&j->started), 2000);
}

static void sql_job_join(sql_job *j, int64_t timeout_ms)
{
    WAIT_UNTIL(atomic_load(&j->done), timeout_ms);
    pthread_join(j->thread, NULL);
}

#define COUNT_TO_A_BILLION                                                    \
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "          \
    "WHERE x < 1000000000) SELECT count(*) FROM c"

TEST(clear_interrupts_long_query)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    test_recorder rec;
    test_rec_init(&rec);
    cpool *p = sq_pool(target_in(&s, "int.db", NULL, t, sizeof t), 2, &rec);
    cpool_conn *c = test_checkout(p);
    uint64_t id = cpool_conn_id(c);
    sql_job j;
    sql_job_start(&j, p, c, COUNT_TO_A_BILLION);
    test_sleep_ms(100); /* well inside the count, which takes minutes */
    ASSERT_FALSE(atomic_load(&j.done));

    int64_t t0 = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    sql_job_join(&j, 5000);
    ASSERT_EQ(SQLITE_INTERRUPT, j.rc);
    ASSERT_LT((j.end_ns - t0) / 1000000, 1000);
    fprintf(stderr, "query interrupted %.2f ms after the clear\n", (double)(j.end_ns - t0) / 1e6);

    /* Returned normally, closed all the same. */
    test_checkin(p, c, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_TRUE(ev.reason == CPOOL_CLOSE_STALE || ev.reason == CPOOL_CLOSE_ERROR);
    ASSERT_EQ(0, test_counts(p).total);
    test_ready(p);
    cpool_conn *d = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(d));
    ASSERT_EQ(1, q_int(db_of(d), "SELECT 1"));
    test_checkin(p, d, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
    scratch_remove(&s);
}

TEST(clear_interrupts_lock_wait)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    /* A lock wait that would last 20 s ends at the interrupt. */
    cpool *p = sq_pool(target_in(&s, "lw.db", "?busy_timeout_ms=20000", t, sizeof t), 2, NULL);
    cpool_conn *a = test_checkout(p);
    cpool_conn *b = test_checkout(p);
    q_exec(db_of(a), "CREATE TABLE t(x)");
    q_exec(db_of(a), "BEGIN IMMEDIATE; INSERT INTO t VALUES (1)");
    sql_job j;
    sql_job_start(&j, p, b, "INSERT INTO t VALUES (2)");
    test_sleep_ms(150);
    ASSERT_FALSE(atomic_load(&j.done));

    int64_t t0 = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    sql_job_join(&j, 5000);
    ASSERT_TRUE(j.rc == SQLITE_BUSY || j.rc == SQLITE_INTERRUPT);
    ASSERT_LT((j.end_ns - t0) / 1000000, 1000);
    fprintf(stderr, "lock wait ended %.2f ms after the clear\n", (double)(j.end_ns - t0) / 1e6);
    test_checkin(p, b, 0);
    test_checkin(p, a, 0);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ helpers */

typedef struct txn_arg {
    cpool_conn *self;  /* the lease the transaction runs on */
    cpool_conn *other; /* another lease of the pool */
    const char *sql;
    int ret;           /* what the function returns after its SQL */
    int other_begin_rc;
    int nested_rc;
} txn_arg;

static int txn_body(sqlite3 *db, void *argp, cpool_error *err)
{
    txn_arg *a = argp;
    if (a->other != NULL) {
        /* Before the body writes anything, BEGIN IMMEDIATE already holds
         * the write lock: another writer cannot start. */
        a->other_begin_rc = sqlite3_exec(db_of(a->other), "BEGIN IMMEDIATE", NULL, NULL, NULL);
    }
    int rc = sqlite3_exec(db, a->sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return rc; /* a positive SQLite code, err left alone */
    if (a->ret == CPOOL_EINVAL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "the body refused");
    return a->ret;
}

static int nested_body(sqlite3 *db, void *argp, cpool_error *err)
{
    txn_arg *a = argp;
    q_exec(db, "INSERT INTO t VALUES ('outer')");
    txn_arg inner = {.sql = "INSERT INTO t VALUES ('inner')"};
    a->nested_rc = cpool_sqlite_transaction(a->self, txn_body, &inner, err);
    return a->nested_rc;
}

static int count_rows(sqlite3 *db, const char *v)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM t WHERE v = '%s'", v);
    return (int)q_int(db, sql);
}

TEST(transaction_helper)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "h.db", "?busy_timeout_ms=50", t, sizeof t), 2, NULL);
    cpool_conn *c = test_checkout(p);
    cpool_conn *o = test_checkout(p);
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cpool_sqlite_exec(c, "CREATE TABLE t(v TEXT UNIQUE)", &e), &e);

    /* Commit, under the write lock from the start. */
    txn_arg a = {.self = c, .other = o, .sql = "INSERT INTO t VALUES ('a')", .ret = 0};
    ASSERT_OK_E(cpool_sqlite_transaction(c, txn_body, &a, &e), &e);
    ASSERT_EQ(SQLITE_BUSY, a.other_begin_rc);
    ASSERT_EQ(1, count_rows(db_of(o), "a"));

    /* The body's error: rolled back, passed on. */
    a = (txn_arg){.self = c, .sql = "INSERT INTO t VALUES ('b')", .ret = CPOOL_EINVAL};
    ASSERT_RC(CPOOL_EINVAL, cpool_sqlite_transaction(c, txn_body, &a, &e));
    ASSERT_STR_EQ("the body refused", e.message);
    ASSERT_EQ(0, count_rows(db_of(o), "b"));
    ASSERT_TRUE(sqlite3_get_autocommit(db_of(c)));

    /* A positive return (an SQLite code) without err: CPOOL_EIO. */
    a = (txn_arg){.self = c, .sql = "INSERT INTO t VALUES ('a')"}; /* UNIQUE */
    ASSERT_RC(CPOOL_EIO, cpool_sqlite_transaction(c, txn_body, &a, &e));
    ASSERT_EQ(SQLITE_CONSTRAINT, e.native);
    ASSERT_STR_CONTAINS(e.message, "rolled back");
    ASSERT_TRUE(sqlite3_get_autocommit(db_of(c)));

    /* Nested: refused inside, so the outer one rolls back too. */
    a = (txn_arg){.self = c};
    ASSERT_RC(CPOOL_ESTATE, cpool_sqlite_transaction(c, nested_body, &a, &e));
    ASSERT_RC(CPOOL_ESTATE, a.nested_rc);
    ASSERT_STR_CONTAINS(e.message, "already open");
    ASSERT_EQ(0, count_rows(db_of(o), "outer"));
    ASSERT_EQ(0, count_rows(db_of(o), "inner"));

    /* A transaction the caller opened. */
    q_exec(db_of(c), "BEGIN");
    a = (txn_arg){.self = c, .sql = "SELECT 1"};
    ASSERT_RC(CPOOL_ESTATE, cpool_sqlite_transaction(c, txn_body, &a, &e));
    q_exec(db_of(c), "ROLLBACK");

    /* A body that commits by itself. */
    a = (txn_arg){.self = c, .sql = "INSERT INTO t VALUES ('c'); COMMIT"};
    ASSERT_RC(CPOOL_ESTATE, cpool_sqlite_transaction(c, txn_body, &a, &e));
    ASSERT_STR_CONTAINS(e.message, "ended inside the function");

    /* exec: SQLite's message and code; bad arguments. */
    ASSERT_RC(CPOOL_EIO, cpool_sqlite_exec(c, "INSERT INTO nowhere VALUES (1)", &e));
    ASSERT_EQ(SQLITE_ERROR, e.native);
    ASSERT_STR_CONTAINS(e.message, "no such table: nowhere");
    ASSERT_RC(CPOOL_EINVAL, cpool_sqlite_exec(NULL, "SELECT 1", &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_sqlite_exec(c, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_sqlite_transaction(c, NULL, NULL, &e));
    test_checkin(p, c, 0);
    test_checkin(p, o, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ threads */

typedef struct inserter {
    cpool *pool;
    int id;
    int per_thread;
    pthread_t thread;
    int errors;
    char first_error[320];
} inserter;

static void *inserter_main(void *arg)
{
    inserter *w = arg;
    for (int i = 0; i < w->per_thread; i++) {
        cpool_conn *c = NULL;
        cpool_error e;
        memset(&e, 0, sizeof e);
        int rc = cpool_checkout(w->pool, 10000, &c, &e);
        if (rc != CPOOL_OK) {
            if (w->errors++ == 0)
                snprintf(w->first_error, sizeof w->first_error, "checkout: %s", e.message);
            continue;
        }
        sqlite3 *db = cpool_conn_native(c);
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db, "INSERT INTO t(worker, n) VALUES (?, ?)", -1, &st, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_int(st, 1, w->id);
            sqlite3_bind_int(st, 2, i);
            rc = sqlite3_step(st);
            if (rc == SQLITE_DONE)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK && w->errors++ == 0)
            snprintf(w->first_error, sizeof w->first_error, "insert: %d %s", rc,
                     sqlite3_errmsg(db));
        sqlite3_finalize(st);
        cpool_checkin(w->pool, c, 0, NULL);
    }
    return NULL;
}

TEST(concurrent_inserts_wal)
{
    enum { THREADS = 4, PER_THREAD = 500 };
    scratch s;
    scratch_make(&s);
    char t[256];
    cpool *p = sq_pool(target_in(&s, "conc.db", NULL, t, sizeof t), 4, NULL);
    cpool_conn *c = test_checkout(p);
    q_exec(db_of(c), "CREATE TABLE t(worker INTEGER, n INTEGER, UNIQUE(worker, n))");
    test_checkin(p, c, 0);

    inserter w[THREADS];
    int64_t t0 = test_now_ns();
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].pool = p;
        w[i].id = i;
        w[i].per_thread = PER_THREAD;
        TEST_THREAD_START(&w[i].thread, inserter_main, &w[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(w[i].thread, NULL);
    int64_t ms = (test_now_ns() - t0) / 1000000;
    for (int i = 0; i < THREADS; i++)
        if (w[i].errors != 0)
            FAIL("thread %d: %d errors, first: %s", i, w[i].errors, w[i].first_error);

    c = test_checkout(p);
    sqlite3 *db = db_of(c);
    ASSERT_EQ(THREADS * PER_THREAD, q_int(db, "SELECT count(*) FROM t"));
    for (int i = 0; i < THREADS; i++) {
        char sql[96];
        snprintf(sql, sizeof sql, "SELECT count(DISTINCT n) FROM t WHERE worker = %d", i);
        ASSERT_EQ(PER_THREAD, q_int(db, sql));
    }
    char ok[16];
    ASSERT_STR_EQ("ok", q_text(db, "PRAGMA integrity_check", ok));
    test_checkin(p, c, 0);
    cpool_stats st = stats_of(p);
    ASSERT_LE(st.connections_created, 4);
    fprintf(stderr, "%d inserts by %d threads through %llu connections in %lld ms\n",
            THREADS * PER_THREAD, THREADS, (unsigned long long)st.connections_created,
            (long long)ms);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ fork */

TEST(fork_abandon_keeps_parent_database)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    /* A rollback journal shows the harm a close in the child would do: it
     * rolls back the parent's open transaction by deleting its journal. */
    cpool *p = sq_pool(target_in(&s, "fork.db", "?journal_mode=delete", t, sizeof t), 2, NULL);
    cpool_conn *a = test_checkout(p);
    cpool_conn *b = test_checkout(p);
    q_exec(db_of(a), "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
    test_checkin(p, b, 0); /* one available connection, one lease */
    q_exec(db_of(a), "BEGIN IMMEDIATE; INSERT INTO t VALUES (2)");
    ASSERT_TRUE(file_exists(s.dir, "fork.db-journal"));

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        alarm(20);
        /* The inherited lease and the available connection are abandoned. */
        int rc = cpool_checkin(p, a, 0, NULL);
        cpool_destroy(p);
        _exit(rc == CPOOL_OK ? 0 : 3);
    }
    int status = 0;
    int64_t deadline = test_now_ms() + 20000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (test_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            FAIL("child did not finish");
        }
        test_sleep_ms(2);
    }
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(0, WEXITSTATUS(status));

    ASSERT_TRUE(file_exists(s.dir, "fork.db-journal"));
    q_exec(db_of(a), "INSERT INTO t VALUES (3); COMMIT");
    char ok[16];
    ASSERT_STR_EQ("ok", q_text(db_of(a), "PRAGMA integrity_check", ok));
    test_checkin(p, a, 0);
    cpool_conn *c = test_checkout(p);
    ASSERT_EQ(3, q_int(db_of(c), "SELECT count(*) FROM t"));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ table */

/* The table called directly: what the pool and `cpool probe` rely on. */
TEST(connector_table_contract)
{
    scratch s;
    scratch_make(&s);
    char t[256], buf[256], want[256];
    const cpool_connector *cx = cpool_sqlite_connector();
    ASSERT_STR_EQ("sqlite", cx->name);
    ASSERT_EQ(CPOOL_CONNECTOR_ABI, cx->abi_version);
    ASSERT_TRUE(cpool_connector_for("SQLITE:/x.db") == cx);
    void *ctx = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cx->ctx_new(target_in(&s, "c.db", NULL, t, sizeof t), &ctx, &e), &e);
    ASSERT_OK(cx->address(ctx, t, buf, sizeof buf));
    snprintf(want, sizeof want, "sqlite:%s/c.db", s.dir);
    ASSERT_STR_EQ(want, buf);

    cpool_connect_args args;
    memset(&args, 0, sizeof args);
    args.target = t;
    args.conn_id = 1;
    args.deadline_ns = test_now_ns() + 5000000000LL;
    args.cancel_fd = -1;
    void *native = NULL;
    ASSERT_OK_E(cx->connect(ctx, &args, &native, &e), &e);
    sqlite3 *db = native;
    ASSERT_GT(args.phase_ns[CPOOL_PHASE_CONNECT], 0);
    ASSERT_GT(args.phase_ns[CPOOL_PHASE_HANDSHAKE], 0);
    ASSERT_OK(cx->describe(ctx, db, buf, sizeof buf));
    ASSERT_STR_CONTAINS(buf, "SQLite 3.");
    ASSERT_STR_CONTAINS(buf, want + strlen("sqlite:"));
    ASSERT_STR_CONTAINS(buf, "journal_mode=wal");

    ASSERT_EQ(0, cx->check(ctx, db, &e));
    ASSERT_EQ(0, cx->ping(ctx, db, test_now_ns() + 1000000000LL, &e));
    q_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)");
    q_exec(db, "BEGIN");
    ASSERT_NE(0, cx->check(ctx, db, &e));
    ASSERT_STR_CONTAINS(e.message, "transaction");
    ASSERT_EQ(0, cx->reset(ctx, db, &e));
    ASSERT_EQ(0, cx->check(ctx, db, &e));
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(db, "SELECT x FROM t", -1, &st, NULL));
    ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
    ASSERT_NE(0, cx->check(ctx, db, &e));
    ASSERT_STR_CONTAINS(e.message, "statement");
    ASSERT_EQ(0, cx->reset(ctx, db, &e));
    ASSERT_FALSE(sqlite3_stmt_busy(st));
    ASSERT_EQ(0, cx->check(ctx, db, &e));

    /* Interrupted: refused from now on. */
    cx->interrupt(ctx, db);
    ASSERT_NE(0, cx->check(ctx, db, &e));
    ASSERT_EQ(CPOOL_FAIL_INTERRUPTED, e.kind);
    ASSERT_NE(0, cx->ping(ctx, db, 0, &e));
    ASSERT_NE(0, cx->reset(ctx, db, &e));
    /* close() finalizes the statement left behind (LeakSanitizer would
     * report the connection otherwise: sqlite3_close_v2 keeps it). */
    cx->close(ctx, db);
    cx->ctx_free(ctx);

    /* Relative paths are resolved once, against the directory at create. */
    char cwd[512];
    ASSERT_NOT_NULL(getcwd(cwd, sizeof cwd));
    ASSERT_EQ(0, chdir(s.dir));
    const char *rel[][2] = {{"sqlite:rel.db", "rel.db"},
                            {"sqlite:./rel.db", "rel.db"},
                            {"sqlite://rel2.db?busy_timeout_ms=1", "rel2.db"}};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        ASSERT_OK_E(cx->ctx_new(rel[i][0], &ctx, &e), &e);
        ASSERT_OK(cx->address(ctx, rel[i][0], buf, sizeof buf));
        snprintf(want, sizeof want, "sqlite:%s/%s", s.dir, rel[i][1]);
        ASSERT_STR_EQ(want, buf);
        cx->ctx_free(ctx);
    }
    ASSERT_EQ(0, chdir(cwd));
    ASSERT_OK_E(cx->ctx_new("sqlite:///var/x%20y.db", &ctx, &e), &e);
    ASSERT_OK(cx->address(ctx, "", buf, sizeof buf));
    ASSERT_STR_EQ("sqlite:/var/x y.db", buf);
    cx->ctx_free(ctx);

    /* In memory: the describe line names the shared database. */
    ASSERT_OK_E(cx->ctx_new("sqlite::memory:?name=desc", &ctx, &e), &e);
    memset(&args, 0, sizeof args);
    args.cancel_fd = -1;
    ASSERT_OK_E(cx->connect(ctx, &args, &native, &e), &e);
    ASSERT_OK(cx->describe(ctx, native, buf, sizeof buf));
    ASSERT_STR_CONTAINS(buf, ":memory: \"desc\"");
    cx->close(ctx, native);
    cx->ctx_free(ctx);
    scratch_remove(&s);
}

/* ------------------------------------------------------------ establishment */

/* A connection of its own (not the pool's) holding an exclusive lock, so
 * that nobody can even read the file. */
static sqlite3 *hold_exclusive(const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        FAIL("open %s", path);
    q_exec(db, "PRAGMA journal_mode=delete; CREATE TABLE t(x);"
               "BEGIN EXCLUSIVE; INSERT INTO t VALUES (1)");
    return db;
}

TEST(establishment_lock_wait_bounded_by_deadline)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    sqlite3 *holder = hold_exclusive(s.dir, "locked.db");
    /* The default journal_mode=wal has to read the file, which the holder
     * forbids: the establishment waits until the checkout's deadline. */
    cpool *p = sq_pool(target_in(&s, "locked.db", NULL, t, sizeof t), 1, NULL);
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int64_t t0 = test_now_ms();
    int rc = cpool_checkout(p, 300, &c, &e);
    int64_t waited = test_now_ms() - t0;
    /* The caller's own deadline ended it: a timeout, not a server failure,
     * with where it was and why in the details. */
    ASSERT_RC(CPOOL_ETIMEDOUT, rc);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_EQ(SQLITE_BUSY, e.native & 0xff);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "the checkout's deadline passed while connecting");
    ASSERT_STR_CONTAINS(e.message, "journal_mode=wal");
    ASSERT_GE(waited, 250);
    ASSERT_LT(waited, 2000);

    /* Once the lock is gone, the next establishment succeeds. */
    q_exec(holder, "COMMIT");
    sqlite3_close(holder);
    c = test_checkout(p);
    char jm[16];
    ASSERT_STR_EQ("wal", q_text(db_of(c), "PRAGMA journal_mode", jm));
    test_checkin(p, c, 0);
    cpool_destroy(p);
    scratch_remove(&s);
}

TEST(establishment_cancelled_by_clear)
{
    scratch s;
    scratch_make(&s);
    char t[256];
    sqlite3 *holder = hold_exclusive(s.dir, "locked.db");
    cpool *p = sq_pool(target_in(&s, "locked.db", NULL, t, sizeof t), 1, NULL);
    test_job j;
    test_job_start(&j, p, 10000);
    WAIT_UNTIL(test_counts(p).pending == 1, 2000);
    test_sleep_ms(100); /* inside the lock wait */
    int64_t t0 = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    test_job_join(&j, 5000);
    ASSERT_LT((j.end_ns - t0) / 1000000, 1000);
    fprintf(stderr, "establishment cancelled %.2f ms after the clear\n",
            (double)(j.end_ns - t0) / 1e6);
    ASSERT_NE(CPOOL_OK, j.rc);
    ASSERT_NULL(j.conn);
    cpool_destroy(p);

    /* The table called directly: a cancel seen during the lock wait, a
     * cancel already signalled, a deadline already passed. */
    const cpool_connector *cx = cpool_sqlite_connector();
    void *ctx = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cx->ctx_new(t, &ctx, &e), &e);
    cpool_connect_args args;
    memset(&args, 0, sizeof args);
    args.deadline_ns = test_now_ns() + 10000000000LL;
    args.cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ASSERT_GE(args.cancel_fd, 0);
    void *native = NULL;
    uint64_t one = 1;
    ASSERT_EQ(sizeof one, (size_t)write(args.cancel_fd, &one, sizeof one));
    ASSERT_RC(CPOOL_ECONNECT, cx->connect(ctx, &args, &native, &e));
    ASSERT_EQ(CPOOL_FAIL_INTERRUPTED, e.kind);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_NULL(native);
    close(args.cancel_fd);

    memset(&args, 0, sizeof args);
    args.deadline_ns = test_now_ns() - 1;
    args.cancel_fd = -1;
    ASSERT_RC(CPOOL_ECONNECT, cx->connect(ctx, &args, &native, &e));
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_NULL(native);
    cx->ctx_free(ctx);
    q_exec(holder, "COMMIT");
    sqlite3_close(holder);
    scratch_remove(&s);
}

TEST_MAIN()
