/* cpool_redis.h -- the Redis connector, on hiredis (0.14 or later).
 *
 * Targets (docs/redis.md has every parameter and its default):
 *   redis://[user:password@]host[:port][/db][?param=value&...]
 *   redis://:password@host[:port][/db]            (password only)
 *   unix:///path/to/redis.sock[?db=N&password=...]  (also redis+unix://)
 * The connector's own parameters are db, user, password, client_name,
 * command_timeout_ms, reset and reset_timeout_ms; any other one left after
 * the pool took its own options out is rejected at cpool_create().
 *
 * A lease's native handle (cpool_conn_native) is a redisContext * in
 * blocking mode, authenticated, with the target's database selected and its
 * socket timeouts set to command_timeout_ms. Use it with the plain hiredis
 * API (redisCommand, redisAppendCommand + redisGetReply ...). Do not call
 * redisFree, redisReconnect or replace its reader: the pool owns the
 * context, and the connector keeps a small per-connection record in the
 * reader's privdata (redisReaderSetPrivdata), so that field is taken.
 *
 * At check-in the connector undoes what it can see -- an open MULTI, WATCHed
 * keys, pub/sub subscriptions, a SELECTed database -- in one pipelined round
 * trip, and closes the connection instead when replies were left unread or
 * commands unsent. The wrappers below also track what the session did, which
 * lets `reset=tracked` skip that round trip when nothing changed.
 *
 * hiredis writes with write(2), so a command on a connection the server
 * closed raises SIGPIPE: ignore SIGPIPE in a program that uses the native
 * handle, as with any hiredis program. The wrappers below never raise it.
 *
 * Threads: a redisContext is used by one thread at a time (the lease's
 * holder); the pool may interrupt it from another thread (socket shutdown).
 *
 * Since 0.2, like everything in this header.
 */
#ifndef CPOOL_REDIS_H
#define CPOOL_REDIS_H

#include "cpool_connector.h"

#include <stdarg.h>

#include <hiredis/hiredis.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The connector table. cpool_create() parses the target into the
 * connector's context when the options give none (leave connector_ctx
 * NULL); cpool_open() and cpool_connector_for() pick it for redis://,
 * unix:// and redis+unix:// targets. */
CPOOL_API const cpool_connector *cpool_redis_connector(void);

/* The lease's context: cpool_conn_native() with its type. Borrowed; valid
 * until cpool_checkin(). */
CPOOL_API redisContext *cpool_redis_context(const cpool_conn *lease);

/* Like redisCommand(), redisvCommand() and redisCommandArgv(), with two
 * differences: the command is written with MSG_NOSIGNAL (a closed
 * connection gives a NULL reply and c->err, never SIGPIPE), and on a pool
 * connection the command and its reply update the session state below.
 * The reply is the caller's (freeReplyObject); NULL on error, with c->err
 * and c->errstr set as hiredis does. */
CPOOL_API redisReply *cpool_redis_command(redisContext *c, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
CPOOL_API redisReply *cpool_redis_vcommand(redisContext *c, const char *format,
                                           va_list ap);
CPOOL_API redisReply *cpool_redis_command_argv(redisContext *c, int argc,
                                               const char **argv,
                                               const size_t *argvlen);

/* Session state the wrappers saw since the last check-in (bits). */
#define CPOOL_REDIS_IN_MULTI 0x01u    /* MULTI without EXEC or DISCARD yet */
#define CPOOL_REDIS_WATCHING 0x02u    /* WATCH without UNWATCH/EXEC/DISCARD */
#define CPOOL_REDIS_SUBSCRIBED 0x04u  /* (P|S)SUBSCRIBE was sent */
#define CPOOL_REDIS_DB_CHANGED 0x08u  /* SELECT was sent */
#define CPOOL_REDIS_UNKNOWN 0x10u     /* a reply could not be matched to its
                                         command (earlier commands pending),
                                         or cpool_redis_mark_dirty() */
#define CPOOL_REDIS_UNRESTORABLE 0x20u /* AUTH, HELLO, RESET, MONITOR, CLIENT
                                          REPLY/TRACKING/SETNAME ...: closed
                                          at check-in */

/* The bits above for a pool connection; 0 for any other context or NULL. */
CPOOL_API unsigned cpool_redis_state(const redisContext *c);

/* Reads the outcome of a command: 0 when `reply` is a reply that is not an
 * error. Otherwise fills err and returns CPOOL_EIO: with reply NULL from
 * the context's error (kind NETWORK or TIMEOUT), for an error reply kind
 * SERVER with its text. Errors that an idempotent command may simply try
 * again carry CPOOL_LABEL_RETRYABLE (what cpool_run retries): a broken
 * connection, and the replies LOADING, BUSY, MASTERDOWN and TRYAGAIN. The
 * reply is not freed. Since 0.2. */
CPOOL_API int cpool_redis_error(const redisContext *c, const redisReply *reply,
                                cpool_error *err);

/* One command, leased and returned for you: checks out (with o's deadline,
 * label and tenant; o NULL = the pool's limits), sends the command through
 * cpool_redis_command(), checks in, and returns the reply for the caller to
 * freeReplyObject(). NULL on failure -- no connection, a broken one, or an
 * error reply -- with err filled as cpool_redis_error() does; a failure
 * labelled RetryableError is sent again on another connection while
 * o->retries allow (cpool_run). The command must be idempotent when o asks
 * for retries. Since 0.2. */
CPOOL_API redisReply *cpool_redis_call(cpool *pool, const cpool_run_opts *o, cpool_error *err,
                                       const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
/* The same with an argument vector (argvlen NULL: C strings). */
CPOOL_API redisReply *cpool_redis_call_argv(cpool *pool, const cpool_run_opts *o, int argc,
                                            const char **argv, const size_t *argvlen,
                                            cpool_error *err);

/* Says the session changed outside the wrappers (plain redisCommand of a
 * MULTI or SELECT ...): with reset=tracked the next check-in then makes the
 * full reset round trip. No-op on a context that is not a pool's. */
CPOOL_API void cpool_redis_mark_dirty(redisContext *c);

/* Asks the Sentinels of a "redis-sentinel://[user:pw@]s1[:p1],s2[:p2]/NAME[/DB]
 * [?params]" target (port 26379 by default) for the primary named NAME and
 * its replicas that are up, and writes "redis://[user:pw@]primary,replica,
 * ...[/DB][?params]" to *out (free() it): the target cpool_cluster_open()
 * opens. The Sentinels are asked in turn until one answers, within
 * timeout_ms (<= 0: 2000); they are reached without a password. CPOOL_EINVAL
 * for a malformed target; otherwise the last Sentinel's error. 0.2 */
CPOOL_API int cpool_redis_sentinel_resolve(const char *target, int64_t timeout_ms, char **out,
                                           cpool_error *err);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_REDIS_H */
