/* sqlite.c -- the SQLite connector (cpool_sqlite.h, docs/sqlite.md).
 *
 * A connection is an sqlite3 * opened with SQLITE_OPEN_NOMUTEX: the pool
 * hands a connection to one thread at a time, so SQLite's per-connection
 * mutex would only cost. The native handle the pool stores is the sqlite3 *
 * itself, because users get it from cpool_conn_native(). What the connector
 * keeps per connection (the interrupt flag, the busy handler's state) lives
 * in an sq_conn, which is the busy handler's argument and which the context
 * lists so that interrupt() and close() can find it from the sqlite3 *.
 *
 * Lock waits: the connector installs its own busy handler instead of
 * sqlite3_busy_timeout(). It sleeps in steps of at most 10 ms and gives up
 * when the wait has lasted busy_timeout_ms, when the establishment's
 * deadline passes or its cancel descriptor becomes readable, or when the
 * connection is interrupted. SQLite's own timeout handler cannot be
 * interrupted, so a statement waiting on a lock would ignore
 * sqlite3_interrupt() for up to the whole timeout.
 *
 * "sqlite::memory:" is a database of SQLite's "memdb" VFS whose name starts
 * with '/', which SQLite shares between all connections of the process
 * that open the same name. It locks like a file database, so a conflicting
 * writer waits in the busy handler; a shared-cache in-memory database would
 * instead fail at once with SQLITE_LOCKED. The database lives while one
 * connection to it is open: the context keeps an "anchor" connection for
 * the pool's life.
 *
 * Locking: one process-wide mutex (g_mu) guards the per-context lists of
 * sq_conn. It is held only to link, unlink or look up an entry, never
 * across an SQLite call, and it is taken around fork() (pthread_atfork) so
 * that a child can abandon its inherited connections. Lock order: g_mu is
 * never waited for under a pool's lock (abandon() only tries it), because
 * the fork handlers may take g_mu first and the pools' locks after. The
 * hot paths, check() and reset(), read one atomic counter and take the
 * mutex only while some connection of the context is interrupted.
 */
#include "cpool/cpool_sqlite.h"
#include "../core/clock.h"
#include "sockwait.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SQ_SCHEME "sqlite:"
#define SQ_MEMORY ":memory:"
#define SQ_DEFAULT_BUSY_TIMEOUT_MS 5000
#define SQ_NAME_MAX 64
#define SQ_VALUE_MAX 256

typedef enum sq_mode { SQ_MODE_RWC = 0, SQ_MODE_RW, SQ_MODE_RO } sq_mode;

typedef struct sq_conn sq_conn;

typedef struct sq_ctx {
    /* Immutable after ctx_new. */
    bool memory;              /* sqlite::memory: */
    char *open_name;          /* what sqlite3_open_v2 gets: an absolute path,
                                 or the memdb URI */
    char *display;            /* "sqlite:/abs/path" or "sqlite::memory:NAME":
                                 the pool's address and the messages' peer */
    char *mem_name;           /* memory: the shared database's name */
    int open_flags;
    sq_mode mode;
    const char *journal_mode; /* static string; NULL = leave as it is */
    const char *synchronous;  /* static string; NULL = leave as it is */
    int busy_timeout_ms;
    bool foreign_keys;
    sqlite3 *anchor;          /* memory: keeps the database alive */

    sq_conn *conns;           /* open connections; guarded by g_mu */
    atomic_uint n_interrupted; /* entries of conns with interrupted set;
                                  written under g_mu, read without it */
} sq_ctx;

struct sq_conn {
    sq_conn *prev, *next; /* ctx->conns; guarded by g_mu */
    sqlite3 *db;
    const sq_ctx *ctx;
    bool interrupted_listed; /* counted in ctx->n_interrupted; guarded by g_mu */
    atomic_bool interrupted; /* read by the busy handler on the user's thread */
    /* Used only by the thread that holds the connection. */
    int64_t wait_start_ns;   /* when the current lock wait began */
    int64_t deadline_ns;     /* establishment: give up then; 0 = none */
    int cancel_fd;           /* establishment: the pool's cancel eventfd */
    bool establishing;       /* the busy handler serves an establishment */
    bool cancelled;          /* the busy handler saw cancel_fd readable */
};

/* ------------------------------------------------------------ utilities */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_uint g_mem_seq; /* names of anonymous in-memory databases */

/* Held across fork() so that the child finds g_mu unlocked and the lists
 * consistent, whatever the parent's other threads were doing. */
static void fork_prepare(void) { pthread_mutex_lock(&g_mu); }
static void fork_release(void) { pthread_mutex_unlock(&g_mu); }
static void register_atfork(void) { pthread_atfork(fork_prepare, fork_release, fork_release); }

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* A heap string from a format; NULL when out of memory. */
static char *fmt_str(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static char *fmt_str(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s != NULL) {
        va_start(ap, fmt);
        vsnprintf(s, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return s;
}

/* The symbolic name of a result code's primary part, for messages. */
static const char *rc_name(int rc)
{
    static const char *const names[] = {
        "SQLITE_OK",       "SQLITE_ERROR",    "SQLITE_INTERNAL", "SQLITE_PERM",
        "SQLITE_ABORT",    "SQLITE_BUSY",     "SQLITE_LOCKED",   "SQLITE_NOMEM",
        "SQLITE_READONLY", "SQLITE_INTERRUPT", "SQLITE_IOERR",   "SQLITE_CORRUPT",
        "SQLITE_NOTFOUND", "SQLITE_FULL",     "SQLITE_CANTOPEN", "SQLITE_PROTOCOL",
        "SQLITE_EMPTY",    "SQLITE_SCHEMA",   "SQLITE_TOOBIG",   "SQLITE_CONSTRAINT",
        "SQLITE_MISMATCH", "SQLITE_MISUSE",   "SQLITE_NOLFS",    "SQLITE_AUTH",
        "SQLITE_FORMAT",   "SQLITE_RANGE",    "SQLITE_NOTADB",   "SQLITE_NOTICE",
        "SQLITE_WARNING"};
    int p = rc & 0xff;
    if (p >= 0 && (size_t)p < sizeof names / sizeof names[0])
        return names[p];
    if (p == SQLITE_ROW)
        return "SQLITE_ROW";
    if (p == SQLITE_DONE)
        return "SQLITE_DONE";
    return "SQLITE_?";
}

/* "unable to open database file: No such file or directory": SQLite's
 * message for the connection's last error, with the OS error behind it when
 * there is one. db may be NULL (open ran out of memory). */
static void db_message(sqlite3 *db, int rc, char *buf, size_t size)
{
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    int sys = db != NULL ? sqlite3_system_errno(db) : 0;
    if (sys != 0 && ((rc & 0xff) == SQLITE_CANTOPEN || (rc & 0xff) == SQLITE_IOERR))
        snprintf(buf, size, "%s: %s", msg, strerror(sys));
    else
        snprintf(buf, size, "%s", msg);
}

/* The extended result code of the connection's last error when it belongs
 * to rc (sqlite3_step() and friends return primary codes by default). */
static int ext_code(sqlite3 *db, int rc)
{
    if (db == NULL)
        return rc;
    int ext = sqlite3_extended_errcode(db);
    return (ext & 0xff) == (rc & 0xff) ? ext : rc;
}

/* Whether an error leaves the connection's database unusable, so that a
 * caller should close the connection rather than reuse it. */
static bool rc_unusable(int rc)
{
    int p = rc & 0xff;
    return p == SQLITE_IOERR || p == SQLITE_CORRUPT || p == SQLITE_NOTADB ||
           p == SQLITE_CANTOPEN;
}

/* Fills err for a failed statement on an established connection and
 * returns the cpool code: CPOOL_EINTERRUPTED for SQLITE_INTERRUPT,
 * CPOOL_ENOMEM for SQLITE_NOMEM, else CPOOL_EIO. `peer` names the
 * database in the message. */
static int query_error(cpool_error *err, sqlite3 *db, int rc, const char *what,
                       const char *peer)
{
    char msg[200];
    int ext = ext_code(db, rc);
    int p = rc & 0xff;
    int code = p == SQLITE_INTERRUPT ? CPOOL_EINTERRUPTED
               : p == SQLITE_NOMEM   ? CPOOL_ENOMEM
                                     : CPOOL_EIO;
    cpool_fail_kind kind = p == SQLITE_INTERRUPT ? CPOOL_FAIL_INTERRUPTED
                           : rc_unusable(rc)     ? CPOOL_FAIL_NETWORK
                                                 : CPOOL_FAIL_SERVER;
    db_message(db, rc, msg, sizeof msg);
    return cpool_error_set(err, code, CPOOL_PHASE_QUERY, kind, ext, "%s on %s: %s (%s, code %d)",
                           what, peer, msg, rc_name(rc), ext);
}

/* Runs one statement to completion. When `out` is given it receives the
 * first column of the first row as text ("" when there is none). Returns an
 * SQLite result code. */
static int run_sql(sqlite3 *db, const char *sql, char *out, size_t outsize)
{
    sqlite3_stmt *st = NULL;
    if (out != NULL && outsize > 0)
        out[0] = '\0';
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    bool first = true;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (first && out != NULL && outsize > 0) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(out, outsize, "%s", t != NULL ? (const char *)t : "");
        }
        first = false;
    }
    /* sqlite3_finalize() repeats the step's error; the step's code is the
     * one to report, and the connection keeps its message either way. */
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* ------------------------------------------------------ connection list */

static void conn_link(sq_ctx *cx, sq_conn *sq)
{
    pthread_mutex_lock(&g_mu);
    sq->prev = NULL;
    sq->next = cx->conns;
    if (cx->conns != NULL)
        cx->conns->prev = sq;
    cx->conns = sq;
    pthread_mutex_unlock(&g_mu);
}

/* Takes the entry of db out of the list and returns it (NULL when absent).
 * g_mu must be held. */
static sq_conn *conn_unlink_locked(sq_ctx *cx, sqlite3 *db)
{
    sq_conn *sq = cx->conns;
    while (sq != NULL && sq->db != db)
        sq = sq->next;
    if (sq != NULL) {
        if (sq->prev != NULL)
            sq->prev->next = sq->next;
        else
            cx->conns = sq->next;
        if (sq->next != NULL)
            sq->next->prev = sq->prev;
        if (sq->interrupted_listed)
            atomic_fetch_sub(&cx->n_interrupted, 1);
    }
    return sq;
}

static sq_conn *conn_unlink(sq_ctx *cx, sqlite3 *db)
{
    pthread_mutex_lock(&g_mu);
    sq_conn *sq = conn_unlink_locked(cx, db);
    pthread_mutex_unlock(&g_mu);
    return sq;
}

/* Whether interrupt() was called on db. Lock-free while no connection of
 * the context is interrupted, which is nearly always. */
static bool conn_interrupted(sq_ctx *cx, sqlite3 *db)
{
    if (cx == NULL || atomic_load_explicit(&cx->n_interrupted, memory_order_acquire) == 0)
        return false;
    bool hit = false;
    pthread_mutex_lock(&g_mu);
    for (sq_conn *sq = cx->conns; sq != NULL; sq = sq->next) {
        if (sq->db == db) {
            hit = sq->interrupted_listed;
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return hit;
}

/* ------------------------------------------------------------ busy wait */

/* The busy handler (see the top of the file). Returns 1 to retry, 0 to
 * give up, which makes the statement fail with SQLITE_BUSY. */
static int on_busy(void *arg, int count)
{
    sq_conn *sq = arg;
    int64_t now = cpool__mono_ns();
    if (count == 0)
        sq->wait_start_ns = now;
    if (atomic_load_explicit(&sq->interrupted, memory_order_relaxed))
        return 0;
    int64_t limit;
    if (sq->establishing && sq->deadline_ns > 0)
        limit = sq->deadline_ns;
    else
        limit = sq->wait_start_ns + (int64_t)sq->ctx->busy_timeout_ms * 1000000;
    if (now >= limit)
        return 0;
    /* Short steps first: most locks are held for a millisecond or two.
     * The 10 ms cap bounds how late an interrupt or a cancel is seen. */
    static const int64_t steps_ms[] = {1, 1, 2, 2, 5, 5, 10};
    size_t nsteps = sizeof steps_ms / sizeof steps_ms[0];
    int64_t step = steps_ms[(size_t)count < nsteps ? (size_t)count : nsteps - 1] * 1000000;
    if (step > limit - now)
        step = limit - now;
    if (sq->establishing && sq->cancel_fd >= 0) {
        /* Readable, or closed under us (POLLNVAL): nobody waits for this
         * establishment any more. */
        int eno;
        if (cpool__wait_fd(-1, 0, sq->cancel_fd, now + step, &eno) == CPOOL_WAIT_CANCELLED) {
            sq->cancelled = true;
            return 0;
        }
    } else {
        struct timespec ts = {(time_t)(step / 1000000000), (long)(step % 1000000000)};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* ------------------------------------------------------- target parsing */

/* The pool resolves a relative path once, at create: every connection then
 * opens the same file even if the process changes its directory later. */
static char *absolute_path(const char *path)
{
    if (path[0] == '/')
        return dup_str(path);
    size_t size = 256;
    for (;;) {
        char *cwd = malloc(size);
        if (cwd == NULL)
            return NULL;
        if (getcwd(cwd, size) != NULL) {
            const char *rel = path;
            while (rel[0] == '.' && rel[1] == '/')
                rel += 2;
            char *abs = fmt_str(strcmp(cwd, "/") == 0 ? "%s%s" : "%s/%s", cwd, rel);
            free(cwd);
            return abs;
        }
        free(cwd);
        if (errno != ERANGE || size > (1u << 20))
            return NULL;
        size *= 2;
    }
}

/* The query parameters, read by the shared parser. */
typedef struct sq_query {
    long long busy_timeout_ms;
    int journal, sync, mode;
    bool foreign_keys;
    char name[SQ_NAME_MAX];
} sq_query;

enum { P_BUSY, P_JOURNAL, P_SYNC, P_MODE, P_FOREIGN_KEYS, P_NAME };
#define SET(p) (1u << (p))

static const char *const journals[] = {"wal", "delete", "truncate", "persist",
                                       "memory", "off", NULL};
static const char *const syncs[] = {"off", "normal", "full", "extra", NULL};
static const char *const modes[] = {"rwc", "rw", "ro", NULL}; /* as sq_mode */

#define Q(field) offsetof(sq_query, field)
static const cpool_param sq_params[] = {
    [P_BUSY] = {.name = "busy_timeout_ms", .type = CPOOL_PARAM_INT, .min = 0, .max = INT_MAX,
                .allowed = "0..2147483647 (milliseconds; 0 = fail at once)", .dflt = "5000",
                .doc = "how long a statement waits for a lock another connection holds",
                .offset = Q(busy_timeout_ms)},
    [P_JOURNAL] = {.name = "journal_mode", .type = CPOOL_PARAM_ENUM, .choices = journals,
                   .dflt = "wal", .doc = "PRAGMA journal_mode (file databases)",
                   .offset = Q(journal)},
    [P_SYNC] = {.name = "synchronous", .type = CPOOL_PARAM_ENUM, .choices = syncs,
                .dflt = "normal with WAL, else full",
                .doc = "PRAGMA synchronous (file databases)", .offset = Q(sync)},
    [P_MODE] = {.name = "mode", .type = CPOOL_PARAM_ENUM, .choices = modes,
                .allowed = "rwc (read-write, create), rw (read-write), ro (read-only)",
                .dflt = "rwc", .doc = "how the file is opened", .offset = Q(mode)},
    [P_FOREIGN_KEYS] = {.name = "foreign_keys", .type = CPOOL_PARAM_BOOL, .dflt = "on",
                        .doc = "PRAGMA foreign_keys", .offset = Q(foreign_keys)},
    [P_NAME] = {.name = "name", .type = CPOOL_PARAM_STRING, .min = 1, .max = SQ_NAME_MAX - 1,
                .charset = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
                .allowed = "1 to 63 of the characters A-Z a-z 0-9 . _ -",
                .dflt = "a new name per pool",
                .doc = "the shared in-memory database's name (sqlite::memory:)",
                .offset = Q(name)},
};
#undef Q
#define NPARAMS (sizeof sq_params / sizeof sq_params[0])

/* Reads the query parameters into cx. `set` records which were given so
 * that the combinations can be checked once all are known. */
static int parse_params(const char *target, sq_ctx *cx, unsigned *set, char *mem_name,
                        cpool_error *err)
{
    sq_query q = {.busy_timeout_ms = cx->busy_timeout_ms,
                  .mode = (int)cx->mode,
                  .foreign_keys = cx->foreign_keys};
    uint64_t seen = 0;
    size_t pos = 0;
    char name[SQ_NAME_MAX], val[SQ_VALUE_MAX];
    for (;;) {
        int r = cpool_uri_next(target, &pos, name, sizeof name, val, sizeof val);
        if (r == 0)
            break;
        if (r < 0)
            return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "sqlite target: malformed query parameter (an empty "
                                   "name, a name longer than %d bytes, a value longer than "
                                   "%d bytes or a bad %%-escape)",
                                   SQ_NAME_MAX - 1, SQ_VALUE_MAX - 1);
        r = cpool_param_set("sqlite", sq_params, NPARAMS, name, val, &q, &seen, err);
        if (r == 0)
            r = cpool_param_unknown("sqlite", sq_params, NPARAMS, name, val, NULL, err);
        if (r < 0)
            return r;
    }
    cx->busy_timeout_ms = (int)q.busy_timeout_ms;
    cx->mode = (sq_mode)q.mode;
    cx->foreign_keys = q.foreign_keys;
    if (seen & SET(P_JOURNAL))
        cx->journal_mode = journals[q.journal];
    if (seen & SET(P_SYNC))
        cx->synchronous = syncs[q.sync];
    if (seen & SET(P_NAME))
        memcpy(mem_name, q.name, SQ_NAME_MAX);
    *set = (unsigned)seen;
    return 0;
}

/* Fills cx from the target (see docs/sqlite.md for the grammar). */
static int parse_target(const char *target, sq_ctx *cx, cpool_error *err)
{
    const size_t slen = sizeof SQ_SCHEME - 1;
    if (target == NULL || strncasecmp(target, SQ_SCHEME, slen) != 0)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite target: expected sqlite:PATH or sqlite::memory: "
                               "(the target is not shown: it may hold a secret)");
    const char *rest = target + slen;
    if (rest[0] == '/' && rest[1] == '/')
        rest += 2; /* sqlite://PATH is sqlite:PATH */
    size_t rawlen = strcspn(rest, "?");
    char *path = malloc(rawlen + 1);
    if (path == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite target: out of memory");
    path[0] = '\0';
    int n = rawlen > 0 ? cpool_uri_decode(rest, rawlen, path, rawlen + 1) : 0;
    if (n < 0 || (size_t)n != strlen(path)) {
        free(path);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite target: path \"%.*s\" has a bad %%-escape or a %%00 "
                               "(write %%25 for a '%%' and %%3F for a '?')",
                               (int)(rawlen > 128 ? 128 : rawlen), rest);
    }
    if (n == 0) {
        free(path);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite target \"%.64s\": no database path (expected "
                               "sqlite:PATH or sqlite::memory:)",
                               target);
    }
    cx->memory = strcmp(path, SQ_MEMORY) == 0;

    unsigned set = 0;
    char mem_name[SQ_NAME_MAX] = "";
    int rc = parse_params(target, cx, &set, mem_name, err);
    if (rc == 0 && cx->memory && (set & (SET(P_MODE) | SET(P_JOURNAL) | SET(P_SYNC))) != 0)
        rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                             "sqlite target: %s applies to file databases, not to "
                             "sqlite::memory:",
                             (set & SET(P_MODE)) ? "mode" : (set & SET(P_JOURNAL)) ? "journal_mode"
                                                                          : "synchronous");
    if (rc == 0 && !cx->memory && (set & SET(P_NAME)) != 0)
        rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                             "sqlite target: name applies to sqlite::memory: only, not to "
                             "the file database \"%.64s\"",
                             path);
    if (rc != 0) {
        free(path);
        return rc;
    }

    if (cx->memory) {
        free(path);
        if (!(set & SET(P_NAME))) /* '~' cannot appear in a user's name */
            snprintf(mem_name, sizeof mem_name, "cpool~%u",
                     atomic_fetch_add(&g_mem_seq, 1) + 1);
        cx->mem_name = dup_str(mem_name);
        cx->open_name = fmt_str("file:/%s?vfs=memdb", mem_name);
        cx->display = fmt_str("sqlite::memory:%s", mem_name);
        cx->open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI;
    } else {
        cx->open_name = absolute_path(path);
        int saved = errno;
        free(path);
        if (cx->open_name == NULL)
            return cpool_error_set(err, saved == ENOMEM ? CPOOL_ENOMEM : CPOOL_ESYS,
                                   CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, saved,
                                   "sqlite target: cannot resolve the relative path against "
                                   "the working directory: %s",
                                   strerror(saved));
        cx->display = fmt_str("%s%s", SQ_SCHEME, cx->open_name);
        cx->open_flags = cx->mode == SQ_MODE_RO   ? SQLITE_OPEN_READONLY
                         : cx->mode == SQ_MODE_RW ? SQLITE_OPEN_READWRITE
                                                  : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
        /* WAL by default where the connection may write; a read-only pool
         * reads the database in whatever mode it is. */
        if (!(set & SET(P_JOURNAL)) && cx->mode != SQ_MODE_RO)
            cx->journal_mode = "wal";
        /* NORMAL is safe with WAL (a power loss may drop the last commits
         * but never corrupts); other journal modes keep SQLite's FULL. */
        if (!(set & SET(P_SYNC)) && cx->journal_mode != NULL && strcmp(cx->journal_mode, "wal") == 0)
            cx->synchronous = "normal";
    }
    /* NOMUTEX: one thread per connection at a time (the pool's contract).
     * PRIVATECACHE: even if the application turned shared cache on, a
     * pool's connections must lock through the file (or memdb), where the
     * busy handler applies, not through table locks that fail at once. */
    cx->open_flags |= SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_PRIVATECACHE;
    if (cx->display == NULL || cx->open_name == NULL || (cx->memory && cx->mem_name == NULL))
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite target: out of memory");
    return 0;
}

/* ------------------------------------------------------------- context */

static void sq_ctx_free(void *ctxp)
{
    sq_ctx *cx = ctxp;
    if (cx == NULL)
        return;
    if (cx->anchor != NULL)
        sqlite3_close_v2(cx->anchor);
    /* The pool closes every connection before it frees the context. What
     * is left are records abandon() could not take out (g_mu was busy) and
     * connections a direct user of the table never closed: only the
     * records are freed. */
    pthread_mutex_lock(&g_mu);
    sq_conn *sq = cx->conns;
    cx->conns = NULL;
    pthread_mutex_unlock(&g_mu);
    while (sq != NULL) {
        sq_conn *next = sq->next;
        free(sq);
        sq = next;
    }
    free(cx->open_name);
    free(cx->display);
    free(cx->mem_name);
    free(cx);
}

static int sq_ctx_new(const char *target, void **ctxp, cpool_error *err)
{
    *ctxp = NULL;
    pthread_once(&g_once, register_atfork);
    sq_ctx *cx = calloc(1, sizeof *cx);
    if (cx == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sqlite connector: out of memory");
    cx->busy_timeout_ms = SQ_DEFAULT_BUSY_TIMEOUT_MS;
    cx->foreign_keys = true;
    atomic_init(&cx->n_interrupted, 0);
    int rc = parse_target(target, cx, err);
    if (rc != 0) {
        sq_ctx_free(cx);
        return rc;
    }
    if (cx->memory) {
        int src = sqlite3_initialize();
        if (src == SQLITE_OK && sqlite3_vfs_find("memdb") == NULL) {
            sq_ctx_free(cx);
            return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "sqlite::memory: needs SQLite's memdb VFS (SQLite 3.36 or "
                                   "later, built without SQLITE_OMIT_DESERIALIZE); this is "
                                   "SQLite %s",
                                   sqlite3_libversion());
        }
        if (src == SQLITE_OK)
            src = sqlite3_open_v2(cx->open_name, &cx->anchor, cx->open_flags, NULL);
        if (src != SQLITE_OK) {
            char msg[160];
            db_message(cx->anchor, src, msg, sizeof msg);
            int code = (src & 0xff) == SQLITE_NOMEM ? CPOOL_ENOMEM : CPOOL_ECONNECT;
            cpool_error_set(err, code, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER,
                            ext_code(cx->anchor, src), "open %s: %s (%s)", cx->display, msg,
                            rc_name(src));
            sq_ctx_free(cx);
            return code;
        }
    }
    *ctxp = cx;
    return 0;
}

/* ------------------------------------------------------------ connect */

/* Between the steps of an establishment: has the pool given up on it, or
 * has its deadline passed? */
static int establish_gate(const sq_ctx *cx, const cpool_connect_args *a, cpool_phase phase,
                          int64_t start_ns, cpool_error *err)
{
    if (a->cancel_fd >= 0) {
        struct pollfd pfd = {.fd = a->cancel_fd, .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0 && pfd.revents != 0)
            return cpool_error_set(err, CPOOL_ECONNECT, phase, CPOOL_FAIL_INTERRUPTED, 0,
                                   "connect %s: interrupted by the pool", cx->display);
    }
    int64_t now = cpool__mono_ns();
    if (a->deadline_ns > 0 && now >= a->deadline_ns)
        return cpool_error_set(err, CPOOL_ECONNECT, phase, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                               "connect %s: timed out after %lld ms", cx->display,
                               (long long)((now - start_ns) / 1000000));
    return 0;
}

/* One setup statement of an establishment; fills err on failure. A lock
 * that outlasts the deadline is HANDSHAKE/TIMEOUT (labelled as possible
 * overload, as a server that does not answer in time); a cancel during the
 * wait is INTERRUPTED; anything else is HANDSHAKE/OTHER. */
static int setup_sql(const sq_ctx *cx, sq_conn *sq, const char *sql, char *out, size_t outsize,
                     int64_t start_ns, cpool_error *err)
{
    int rc = run_sql(sq->db, sql, out, outsize);
    if (rc == SQLITE_OK)
        return 0;
    int ext = ext_code(sq->db, rc);
    char msg[160];
    db_message(sq->db, rc, msg, sizeof msg);
    int p = rc & 0xff;
    if (sq->cancelled)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                               CPOOL_FAIL_INTERRUPTED, ext,
                               "connect %s: interrupted by the pool while waiting for a lock "
                               "(%s)",
                               cx->display, sql);
    if (p == SQLITE_BUSY || p == SQLITE_LOCKED)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_TIMEOUT,
                               ext, "connect %s: %s: gave up after %lld ms (%s, %s)",
                               cx->display, msg, (long long)((cpool__mono_ns() - start_ns) / 1000000),
                               sql, rc_name(rc));
    if (p == SQLITE_NOMEM)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER, ext,
                               "connect %s: out of memory (%s)", cx->display, sql);
    return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER, ext,
                           "connect %s: %s (%s, %s, code %d)", cx->display, msg, sql,
                           rc_name(rc), ext);
}

/* The PRAGMAs that make a new connection what the target asks for. */
static int setup_conn(const sq_ctx *cx, sq_conn *sq, const cpool_connect_args *a,
                      int64_t start_ns, cpool_error *err)
{
    char sql[64], got[32];
    int rc = establish_gate(cx, a, CPOOL_PHASE_HANDSHAKE, start_ns, err);
    if (rc == 0)
        rc = setup_sql(cx, sq,
                       cx->foreign_keys ? "PRAGMA foreign_keys=ON" : "PRAGMA foreign_keys=OFF",
                       NULL, 0, start_ns, err);
    if (rc == 0 && cx->journal_mode != NULL) {
        snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s", cx->journal_mode);
        rc = setup_sql(cx, sq, sql, got, sizeof got, start_ns, err);
        /* SQLite answers with the mode in force; one that differs means
         * the change was refused (WAL on a file system without shared
         * memory, for one). Running in another mode than asked would only
         * show later, as unexpected lock errors. */
        if (rc == 0 && strcasecmp(got, cx->journal_mode) != 0)
            rc = cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER, 0,
                                 "connect %s: journal_mode=%s did not take effect; the "
                                 "database stays in \"%s\"",
                                 cx->display, cx->journal_mode, got);
        if (rc == 0)
            rc = establish_gate(cx, a, CPOOL_PHASE_HANDSHAKE, start_ns, err);
    }
    if (rc == 0 && cx->synchronous != NULL) {
        snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", cx->synchronous);
        rc = setup_sql(cx, sq, sql, NULL, 0, start_ns, err);
    }
    /* Reads the file's header: a file that is no database (or that a
     * read-only connection cannot read) fails here, at establishment,
     * rather than in the first statement of a lease. */
    if (rc == 0 && !cx->memory)
        rc = setup_sql(cx, sq, "PRAGMA schema_version", NULL, 0, start_ns, err);
    if (rc == 0)
        rc = establish_gate(cx, a, CPOOL_PHASE_HANDSHAKE, start_ns, err);
    return rc;
}

static int sq_connect(void *ctxp, cpool_connect_args *args, void **native, cpool_error *err)
{
    sq_ctx *cx = ctxp;
    *native = NULL;
    if (cx == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, 0,
                               "sqlite connector used without its context: leave "
                               "connector_ctx NULL and the pool makes it from the target");
    int64_t start = cpool__mono_ns();
    int rc = establish_gate(cx, args, CPOOL_PHASE_CONNECT, start, err);
    if (rc != 0)
        return rc;
    sq_conn *sq = calloc(1, sizeof *sq);
    if (sq == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, ENOMEM,
                               "connect %s: out of memory", cx->display);
    atomic_init(&sq->interrupted, false);
    sq->ctx = cx;
    sq->deadline_ns = args->deadline_ns;
    sq->cancel_fd = args->cancel_fd;
    sq->establishing = true;

    sqlite3 *db = NULL;
    int src = sqlite3_open_v2(cx->open_name, &db, cx->open_flags, NULL);
    int64_t opened = cpool__mono_ns();
    args->phase_ns[CPOOL_PHASE_CONNECT] = opened - start;
    if (src != SQLITE_OK) {
        /* Missing directory, no permission, a mode=rw file that does not
         * exist: not a sign of overload, so no backpressure label. */
        char msg[160];
        db_message(db, src, msg, sizeof msg);
        int ext = ext_code(db, src);
        sqlite3_close_v2(db);
        free(sq);
        if ((src & 0xff) == SQLITE_NOMEM)
            return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER,
                                   ext, "connect %s: out of memory", cx->display);
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, ext,
                               "connect %s: %s (%s, code %d)", cx->display, msg, rc_name(src),
                               ext);
    }
    sq->db = db;
    sqlite3_busy_handler(db, on_busy, sq);
    rc = setup_conn(cx, sq, args, start, err);
    args->phase_ns[CPOOL_PHASE_HANDSHAKE] = cpool__mono_ns() - opened;
    if (rc != 0) {
        sqlite3_close_v2(db);
        free(sq);
        return rc;
    }
    /* From now on lock waits last up to busy_timeout_ms each. */
    sq->establishing = false;
    sq->deadline_ns = 0;
    sq->cancel_fd = -1;
    conn_link(cx, sq);
    *native = db;
    return 0;
}

/* ---------------------------------------------------------- the rest */

/* Finalizes what the user left: a statement must not outlive its lease,
 * and sqlite3_close_v2() would otherwise keep the connection alive (and
 * its file open) as a zombie until someone finalized them -- nobody will. */
static void sq_close(void *ctxp, void *native)
{
    sqlite3 *db = native;
    if (db == NULL)
        return;
    sqlite3_stmt *st;
    while ((st = sqlite3_next_stmt(db, NULL)) != NULL)
        sqlite3_finalize(st);
    /* No handler while closing: the record it points to goes next. */
    sqlite3_busy_handler(db, NULL, NULL);
    sqlite3_close_v2(db);
    free(ctxp != NULL ? conn_unlink(ctxp, db) : NULL);
}

/* In a forked child. SQLite connections must not cross fork(): the child
 * inherits the parent's file descriptors and SQLite's in-process lock
 * bookkeeping, but not the POSIX locks themselves. Closing would roll back
 * and clean up as if the child held those locks -- with a rollback journal
 * it deletes the journal of the parent's open transaction. So the handle
 * is leaked on purpose (its descriptors are close-on-exec) and only the
 * connector's record is freed. */
static void sq_abandon(void *ctxp, void *native)
{
    sq_ctx *cx = ctxp;
    if (cx == NULL || native == NULL)
        return;
    /* The pool calls this under its own lock, and the fork handler takes
     * g_mu before the pools' locks, so waiting for g_mu here could
     * deadlock. When it is busy the record stays listed; ctx_free() frees
     * it, and the leaked handle's address is never reused meanwhile. */
    if (pthread_mutex_trylock(&g_mu) != 0)
        return;
    sq_conn *sq = conn_unlink_locked(cx, native);
    pthread_mutex_unlock(&g_mu);
    free(sq);
}

static int sq_check(void *ctxp, void *native, cpool_error *err)
{
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    const char *peer = cx != NULL ? cx->display : "sqlite";
    if (db == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "check: no connection");
    if (conn_interrupted(cx, db))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_INTERRUPTED, 0,
                               "check %s: the connection was interrupted", peer);
    if (!sqlite3_get_autocommit(db))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "check %s: a transaction is still open", peer);
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st != NULL;
         st = sqlite3_next_stmt(db, st))
        if (sqlite3_stmt_busy(st))
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                                   "check %s: a statement is still running", peer);
    return 0;
}

/* No lock is taken, so the deadline cannot be reached: the statement only
 * proves that the handle executes. */
static int sq_ping(void *ctxp, void *native, int64_t deadline_ns, cpool_error *err)
{
    (void)deadline_ns;
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    const char *peer = cx != NULL ? cx->display : "sqlite";
    if (db == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "ping: no connection");
    if (conn_interrupted(cx, db))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_INTERRUPTED, 0,
                               "ping %s: the connection was interrupted", peer);
    char one[8];
    int rc = run_sql(db, "SELECT 1", one, sizeof one);
    if (rc != SQLITE_OK)
        return query_error(err, db, rc, "ping", peer);
    if (strcmp(one, "1") != 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "ping %s: SELECT 1 returned \"%s\"", peer, one);
    return 0;
}

/* At check-in: statements the user left mid-step are reset (not
 * finalized: the user owns them and may still finalize them), so that none
 * keeps a read transaction open -- an open read blocks writers in rollback
 * mode and stops WAL checkpoints. Then an open transaction is rolled back.
 * Session settings (PRAGMAs, ATTACH, temporary tables) are left alone. */
static int sq_reset(void *ctxp, void *native, cpool_error *err)
{
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    const char *peer = cx != NULL ? cx->display : "sqlite";
    if (db == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "reset: no connection");
    if (conn_interrupted(cx, db))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_INTERRUPTED, 0,
                               "reset %s: the connection was interrupted", peer);
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st != NULL;
         st = sqlite3_next_stmt(db, st))
        if (sqlite3_stmt_busy(st))
            sqlite3_reset(st);
    if (!sqlite3_get_autocommit(db)) {
        int rc = run_sql(db, "ROLLBACK", NULL, 0);
        if (rc != SQLITE_OK)
            return query_error(err, db, rc, "reset (ROLLBACK)", peer);
        if (!sqlite3_get_autocommit(db))
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                                   "reset %s: a transaction is still open after ROLLBACK",
                                   peer);
    }
    return 0;
}

/* From any thread. sqlite3_interrupt() is safe on a connection another
 * thread is using; the flag also ends a lock wait in the busy handler,
 * which sqlite3_interrupt() alone would not, and makes check() and reset()
 * refuse the connection. */
static void sq_interrupt(void *ctxp, void *native)
{
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    if (db == NULL)
        return;
    if (cx != NULL) {
        pthread_mutex_lock(&g_mu);
        for (sq_conn *sq = cx->conns; sq != NULL; sq = sq->next) {
            if (sq->db == db) {
                atomic_store(&sq->interrupted, true);
                if (!sq->interrupted_listed) {
                    sq->interrupted_listed = true;
                    atomic_fetch_add(&cx->n_interrupted, 1);
                }
                break;
            }
        }
        pthread_mutex_unlock(&g_mu);
    }
    sqlite3_interrupt(db);
}

static int sq_address(void *ctxp, const char *target, char *buf, size_t size)
{
    (void)target; /* the context has the resolved path */
    sq_ctx *cx = ctxp;
    if (cx == NULL || buf == NULL || size == 0)
        return CPOOL_EINVAL;
    int w = snprintf(buf, size, "%s", cx->display);
    return w < 0 || (size_t)w >= size ? CPOOL_EINVAL : 0;
}

static int sq_describe(void *ctxp, void *native, char *buf, size_t size)
{
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    if (cx == NULL || db == NULL || buf == NULL || size == 0)
        return CPOOL_EINVAL;
    char jm[32];
    if (run_sql(db, "PRAGMA journal_mode", jm, sizeof jm) != SQLITE_OK)
        snprintf(jm, sizeof jm, "?");
    int w;
    if (cx->memory)
        w = snprintf(buf, size, "SQLite %s, :memory: \"%s\" (shared by the pool), journal_mode=%s",
                     sqlite3_libversion(), cx->mem_name, jm);
    else
        w = snprintf(buf, size, "SQLite %s, %s, journal_mode=%s%s", sqlite3_libversion(),
                     cx->open_name, jm, sqlite3_db_readonly(db, "main") == 1 ? ", read-only" : "");
    return w < 0 || (size_t)w >= size ? CPOOL_EINVAL : 0;
}

static int sq_execute(void *ctxp, void *native, const char *command, cpool_error *err)
{
    sq_ctx *cx = ctxp;
    sqlite3 *db = native;
    if (db == NULL || command == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "execute: a connection and a command are required");
    int rc = sqlite3_exec(db, command, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return query_error(err, db, rc, "execute", cx != NULL ? cx->display : "sqlite");
    return 0;
}

static const char *const sq_schemes[] = {SQ_SCHEME, NULL};

static const cpool_connector sq_connector = {
    .abi_version = CPOOL_CONNECTOR_ABI,
    .name = "sqlite",
    .connect = sq_connect,
    .close = sq_close,
    .abandon = sq_abandon,
    .check = sq_check,
    .ping = sq_ping,
    .reset = sq_reset,
    .params = sq_params,
    .nparams = NPARAMS,
    .interrupt = sq_interrupt,
    .address = sq_address,
    .ctx_new = sq_ctx_new,
    .ctx_free = sq_ctx_free,
    .describe = sq_describe,
    .schemes = sq_schemes,
    .execute = sq_execute,
};

const cpool_connector *cpool_sqlite_connector(void)
{
    return &sq_connector;
}

/* ------------------------------------------------------------- helpers */

/* The database a lease's messages name. */
static const char *lease_peer(sqlite3 *db)
{
    const char *f = sqlite3_db_filename(db, "main");
    return f != NULL && f[0] != '\0' ? f : "sqlite";
}

static sqlite3 *lease_db(cpool_conn *lease)
{
    return lease != NULL ? cpool_conn_native(lease) : NULL;
}

int cpool_sqlite_exec(cpool_conn *lease, const char *sql, cpool_error *err)
{
    sqlite3 *db = lease_db(lease);
    if (db == NULL || sql == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_sqlite_exec: a lease and SQL are required");
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return query_error(err, db, rc, "exec", lease_peer(db));
    if (err != NULL)
        memset(err, 0, sizeof *err);
    return 0;
}

int cpool_sqlite_transaction(cpool_conn *lease, cpool_sqlite_txn_fn fn, void *arg,
                             cpool_error *err)
{
    sqlite3 *db = lease_db(lease);
    if (db == NULL || fn == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_sqlite_transaction: a lease and a function are required");
    const char *peer = lease_peer(db);
    if (!sqlite3_get_autocommit(db))
        return cpool_error_set(err, CPOOL_ESTATE, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "transaction on %s: a transaction is already open on this "
                               "connection (use SAVEPOINT for a nested scope)",
                               peer);
    /* A read-only connection cannot take the write lock IMMEDIATE asks
     * for; its transactions only read. */
    const char *begin = sqlite3_db_readonly(db, "main") == 1 ? "BEGIN" : "BEGIN IMMEDIATE";
    int rc = run_sql(db, begin, NULL, 0);
    if (rc != SQLITE_OK)
        return query_error(err, db, rc, begin, peer);

    cpool_error fe;
    memset(&fe, 0, sizeof fe);
    int frc = fn(db, arg, &fe);
    if (frc != 0) {
        if (!sqlite3_get_autocommit(db))
            run_sql(db, "ROLLBACK", NULL, 0); /* reset() retries at check-in */
        if (fe.code == 0) {
            fe.code = frc < 0 ? frc : CPOOL_EIO;
            fe.native = frc < 0 ? 0 : frc;
            fe.phase = CPOOL_PHASE_QUERY;
            snprintf(fe.message, sizeof fe.message,
                     "transaction on %s: the function failed (%d); rolled back", peer, frc);
        }
        if (err != NULL)
            *err = fe;
        return fe.code;
    }
    if (sqlite3_get_autocommit(db))
        return cpool_error_set(err, CPOOL_ESTATE, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "transaction on %s: the transaction ended inside the function "
                               "(a COMMIT or ROLLBACK, or an error that rolled it back); "
                               "nothing was committed by the helper",
                               peer);
    rc = run_sql(db, "COMMIT", NULL, 0);
    if (rc != SQLITE_OK) {
        int code = query_error(err, db, rc, "COMMIT", peer);
        if (!sqlite3_get_autocommit(db))
            run_sql(db, "ROLLBACK", NULL, 0);
        return code;
    }
    if (err != NULL)
        memset(err, 0, sizeof *err);
    return 0;
}
