/* cpool_pg.h -- the PostgreSQL connector (libpq) and a few helpers for
 * using a leased PGconn. docs/pg.md describes targets, parameters, failure
 * classification, reset and interruption in full.
 *
 * Targets: a libpq URI ("postgresql://user@host:5432/db?sslmode=disable")
 * or a conninfo string ("host=/tmp dbname=app"). The connector reads its own
 * parameters from it (reset_query, reset_timeout_ms) and passes the rest to
 * libpq untouched; an unknown parameter fails cpool_create() with
 * CPOOL_EINVAL. cpool_connector_for() picks this connector for both forms.
 *
 * The native handle of a lease (cpool_conn_native(), cpool_pg_conn()) is the
 * PGconn itself, in blocking mode, idle (PQTRANS_IDLE) when handed out. Give
 * it back idle or inside a transaction (rolled back at check-in); one still
 * running a query, with results unread, in COPY or in pipeline mode is
 * closed instead of reused. Client-side settings (blocking mode, notice
 * hooks, error verbosity) are put back at check-in; undo a PQtrace()
 * yourself. Never call PQfinish() or PQreset() on it.
 *
 * err->native: a packed SQLSTATE (cpool_pg_sqlstate_code) when the server
 * reported one (kinds AUTH and SERVER, and query failures), otherwise an
 * errno value when one is known, otherwise 0.
 *
 * Threads: the connector and the helpers may be used from any thread; a
 * PGconn is used by one thread at a time, as libpq requires.
 *
 * Since 0.2, like everything in this header.
 */
#ifndef CPOOL_PG_H
#define CPOOL_PG_H

#include "cpool_connector.h"

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The connector table. Its ctx_new parses the target, so cpool_create()
 * needs no connector_ctx. */
CPOOL_API const cpool_connector *cpool_pg_connector(void);

/* The leased connection; borrowed, valid until cpool_checkin(). The same
 * pointer as cpool_conn_native(), typed. NULL for a NULL lease. The lease
 * must come from a pool on cpool_pg_connector(). */
CPOOL_API PGconn *cpool_pg_conn(const cpool_conn *lease);

/* The work of a transaction or savepoint: returns 0 to commit (release), or
 * non-zero -- preferably a negative CPOOL_E* code -- with err filled, to
 * roll back. `err` is never NULL. */
typedef int (*cpool_pg_fn)(PGconn *conn, void *arg, cpool_error *err);

/* Runs fn inside BEGIN ... COMMIT on the lease's connection. When fn fails,
 * or a statement inside failed and left the transaction aborted, or COMMIT
 * fails (a deferred constraint, a serialization failure), the transaction
 * is rolled back. Returns 0 when committed; fn's own non-zero value with its
 * error when fn failed; CPOOL_ESTATE when the connection is already in a
 * transaction (or busy), when fn ended the transaction itself, or when the
 * transaction was aborted although fn returned 0; CPOOL_EIO when BEGIN or
 * COMMIT fails (err->kind SERVER with the SQLSTATE in err->native, or
 * NETWORK when the connection broke); CPOOL_EINVAL on NULL arguments. */
CPOOL_API int cpool_pg_transaction(cpool_conn *lease, cpool_pg_fn fn, void *arg,
                                   cpool_error *err);

/* Runs fn under SAVEPOINT name inside the open transaction of conn: RELEASE
 * when fn succeeds; ROLLBACK TO and RELEASE when it fails or leaves the
 * transaction aborted, so the outer transaction goes on with its earlier
 * work intact. The name (1..63 bytes) is always quoted as an identifier, so
 * any text is safe. Returns 0, fn's non-zero value with its error,
 * CPOOL_ESTATE when conn is not inside a healthy transaction (or fn's
 * statement failed although fn returned 0), CPOOL_EIO when a savepoint
 * command fails, CPOOL_EINVAL on bad arguments. */
CPOOL_API int cpool_pg_savepoint(PGconn *conn, const char *name, cpool_pg_fn fn,
                                 void *arg, cpool_error *err);

/* Fills err from a failed result (or, with res NULL, from the connection's
 * last error) the way the connector's own calls do, and returns CPOOL_EIO:
 * kind SERVER with the SQLSTATE packed in err->native when the server
 * answered, NETWORK when the connection broke. Errors that an idempotent
 * operation may simply try again carry CPOOL_LABEL_RETRYABLE (what
 * cpool_run retries): a broken connection, serialization_failure (40001),
 * deadlock_detected (40P01), the server shutting down or starting
 * (57P01, 57P02, 57P03) and the connection-exception class 08. For use in
 * a cpool_run function:
 *
 *     PGresult *r = PQexec(conn, "SELECT ...");
 *     if (PQresultStatus(r) != PGRES_TUPLES_OK) {
 *         int rc = cpool_pg_error(conn, r, err);
 *         PQclear(r);
 *         return rc;
 *     }
 *
 * Since 0.2. */
CPOOL_API int cpool_pg_error(PGconn *conn, const PGresult *res, cpool_error *err);

/* One statement, leased and returned for you: checks out (with o's
 * deadline, label and tenant; o NULL = the pool's limits), runs `sql` with
 * its text parameters ($1 ... $nparams; NULL = SQL NULL) as
 * PQexecParams does, checks in, and returns the result (PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK) for the caller to PQclear(). NULL on failure, with err
 * filled as cpool_pg_error() does; a failure labelled RetryableError is run
 * again on another connection while o->retries allow (cpool_run). The
 * statement must be idempotent when o asks for retries. Since 0.2. */
CPOOL_API PGresult *cpool_pg_query(cpool *pool, const cpool_run_opts *o, const char *sql,
                                   int nparams, const char *const *params, cpool_error *err);

/* A SQLSTATE ("28P01") packed into an int the way PostgreSQL's server packs
 * its error codes (six bits per character, first character lowest), e.g.
 * as found in cpool_error.native. 0 when `sqlstate` is not five characters
 * of [0-9A-Z]. */
CPOOL_API int cpool_pg_sqlstate_code(const char *sqlstate);

/* The inverse: writes the five characters and a NUL into buf and returns
 * it; "" for a value that is not a packed SQLSTATE. */
CPOOL_API const char *cpool_pg_sqlstate_text(int code, char buf[6]);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_PG_H */
