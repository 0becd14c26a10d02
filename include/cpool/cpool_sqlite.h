/* cpool_sqlite.h -- the SQLite connector and two small helpers for leases.
 *
 * Targets: "sqlite:PATH" (also "sqlite://PATH"; a relative PATH is resolved
 * against the working directory when the pool is created) and
 * "sqlite::memory:", an in-memory database that all the pool's connections
 * share and that lives as long as the pool. Parameters in the query
 * (busy_timeout_ms, journal_mode, synchronous, mode, foreign_keys, name)
 * and their defaults are listed in docs/sqlite.md.
 *
 * A lease's native handle (cpool_conn_native) is the connection's sqlite3 *.
 * Like the lease, it is used by one thread at a time. Statements prepared
 * on it belong to the caller and must be finalized before check-in. A
 * statement left unfinished is reset at check-in, and one that still exists
 * when the pool closes the connection is finalized then.
 *
 * Since 0.2, like everything in this header.
 */
#ifndef CPOOL_SQLITE_H
#define CPOOL_SQLITE_H

#include "cpool_connector.h"

#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The connector table ("sqlite", scheme "sqlite:"). Static; never NULL. */
CPOOL_API const cpool_connector *cpool_sqlite_connector(void);

/* Runs one or more SQL statements on a lease of an SQLite pool and discards
 * their rows. On failure it returns CPOOL_EIO, or CPOOL_EINTERRUPTED when
 * the pool interrupted the connection. err->native then holds the extended
 * SQLite result code and err->message SQLite's message. CPOOL_EINVAL when
 * lease or sql is NULL. */
CPOOL_API int cpool_sqlite_exec(cpool_conn *lease, const char *sql, cpool_error *err);

/* The body of a transaction: 0 commits, anything else rolls back. It may
 * fill err (the helper's caller sees it). It must not COMMIT or ROLLBACK
 * itself; use SAVEPOINT for nested scopes. */
typedef int (*cpool_sqlite_txn_fn)(sqlite3 *db, void *arg, cpool_error *err);

/* Runs fn inside BEGIN IMMEDIATE ... COMMIT on a lease of an SQLite pool.
 * BEGIN IMMEDIATE takes the write lock first, so the busy timeout covers
 * the whole wait and a transaction never fails halfway to upgrade its
 * lock. On a read-only database it uses a plain BEGIN. When fn fails the
 * transaction is rolled back and the helper returns fn's error: the code fn
 * put in err, else fn's return value if it is a negative CPOOL_E* code,
 * else CPOOL_EIO with err->native set to that value. CPOOL_ESTATE when a
 * transaction is already open on the connection, or when fn ended the
 * transaction itself (an error that made SQLite roll back on its own
 * counts). A failing BEGIN or COMMIT gives CPOOL_EIO as cpool_sqlite_exec
 * does; after a failed COMMIT the transaction is rolled back. */
CPOOL_API int cpool_sqlite_transaction(cpool_conn *lease, cpool_sqlite_txn_fn fn, void *arg,
                                       cpool_error *err);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_SQLITE_H */
