/* cpool_connector.h -- the table a connector fills to let the pool open,
 * check, reset, interrupt and close connections of one kind of database.
 *
 * The core calls only through this table and never includes a driver
 * header. The table is versioned: `abi_version` says which fields exist, and
 * fields are only appended. Every method receives the `connector_ctx` given
 * in the pool options. The core never calls two methods on the same native
 * handle at once, except interrupt(), which may run on another thread while
 * the handle is in use or being established.
 */
#ifndef CPOOL_CONNECTOR_H
#define CPOOL_CONNECTOR_H

#include "cpool.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CPOOL_CONNECTOR_ABI 5
#define CPOOL_PHASE_SLOTS 8 /* > every cpool_phase value */
#define CPOOL_SERVICE_ID_MAX 64

/* Arguments of one establishment. */
typedef struct cpool_connect_args {
    const char *target;   /* the pool's target string */
    uint64_t conn_id;     /* the connection's id in the pool */
    int64_t deadline_ns;  /* CLOCK_MONOTONIC (real) time; 0 = none. The
                             connector must give up by then with
                             CPOOL_FAIL_TIMEOUT. */
    int cancel_fd;        /* becomes readable when the pool abandons this
                             attempt (clear with interrupt, close). Poll it
                             beside the socket and fail with
                             CPOOL_FAIL_INTERRUPTED. -1 when not available. */
    char service_id[CPOOL_SERVICE_ID_MAX]; /* out: the service this connection
                             reached, for load-balanced mode ("" = none) */
    /* ABI 2. out: nanoseconds spent in each phase, indexed by cpool_phase
     * (DNS, CONNECT, TLS, HANDSHAKE, AUTH); 0 = not reached or not measured.
     * The core zeroes it; `cpool probe` prints it. */
    int64_t phase_ns[CPOOL_PHASE_SLOTS];
} cpool_connect_args;

/* What a server says of itself, for multi-endpoint pools (cpool_cluster.h).
 * ABI 5. */
typedef enum cpool_role {
    CPOOL_ROLE_UNKNOWN = 0, /* not known (yet), or the connector cannot tell */
    CPOOL_ROLE_PRIMARY,     /* takes writes */
    CPOOL_ROLE_REPLICA      /* read-only copy of a primary */
} cpool_role;

typedef struct cpool_server_info {
    cpool_role role;
    int64_t lag_ms;  /* replica: how far its data is behind the primary's
                        (0 = caught up); -1 = not known or not asked */
    uint64_t epoch;  /* primary: grows each time a server becomes primary
                        (PostgreSQL's timeline), so of two servers that both
                        say "primary" the higher epoch is the newer; 0 = not
                        known */
} cpool_server_info;

#define CPOOL_INFO_LAG 0x1u    /* measure lag_ms (may cost a query) */
#define CPOOL_INFO_CACHED 0x2u /* no I/O: what the session already knows
                                  (PostgreSQL 14+ reports in_hot_standby);
                                  role UNKNOWN when it cannot tell */

/* ------------------------------------------------------------ parameters
 * A connector declares the parameters its targets take in one table: the
 * shared parser (cpool_param_set) reads them with one wording for every
 * connector, `cpool options` lists them, and cpool_redact() masks the
 * values of the secret ones wherever they appear. */
typedef enum cpool_param_type {
    CPOOL_PARAM_INT = 0, /* decimal, min..max; stored as long long */
    CPOOL_PARAM_ENUM,    /* one of `choices` (case-insensitive); stored as
                            int, the choice's index */
    CPOOL_PARAM_BOOL,    /* on/off, true/false, yes/no, 1/0; stored as bool */
    CPOOL_PARAM_STRING   /* min..max bytes, each in `charset` when given;
                            stored in char[max + 1] */
} cpool_param_type;

typedef struct cpool_param {
    const char *name;
    const char *alias;          /* a second accepted name; NULL = none */
    cpool_param_type type;
    long long min, max;         /* INT: the range; STRING: the length */
    const char *const *choices; /* ENUM: NULL-terminated */
    const char *charset;        /* STRING: the bytes allowed; NULL = any */
    const char *allowed;        /* what an error says is allowed; NULL =
                                   made from the type, range and choices */
    bool secret;                /* its value is never shown */
    const char *dflt;           /* the default, as text ("" = none) */
    const char *doc;            /* one line */
    size_t offset;              /* where the value goes in the caller's struct */
} cpool_param;

struct cpool_connector {
    int abi_version;  /* CPOOL_CONNECTOR_ABI */
    const char *name; /* "pg", "redis", "sqlite", "mem" */

    /* Opens and fully establishes a connection (connect, TLS, handshake,
     * authentication). On failure returns a negative code (normally
     * CPOOL_ECONNECT) and fills err: message, native, phase and kind, which
     * the core uses to set the backpressure labels. Required. */
    int (*connect)(void *ctx, cpool_connect_args *args, void **native,
                   cpool_error *err);

    /* Closes politely (may send a terminate message) and frees. Required. */
    void (*close)(void *ctx, void *native);

    /* Frees without any I/O on the connection's socket: used in a forked
     * child, where the parent still owns the server session. NULL = the core
     * leaks the handle rather than speak on a shared socket. */
    void (*abandon)(void *ctx, void *native);

    /* Cheap liveness check without a round trip (socket hung up, protocol
     * state broken). 0 = looks alive. NULL = always alive. */
    int (*check)(void *ctx, void *native, cpool_error *err);

    /* Round trip to the server, bounded by deadline_ns (CLOCK_MONOTONIC).
     * 0 = alive. NULL = not supported. */
    int (*ping)(void *ctx, void *native, int64_t deadline_ns, cpool_error *err);

    /* Drops session state at check-in (rolls back an open transaction ...).
     * Non-zero = the connection cannot be reused and is closed. NULL = none. */
    int (*reset)(void *ctx, void *native, cpool_error *err);

    /* Interrupts whatever the connection is doing, from any thread, without
     * blocking for long (cancel request, socket shutdown). The connection is
     * closed afterwards, never reused. NULL = not supported. */
    void (*interrupt)(void *ctx, void *native);

    /* Writes the "host:port" (or socket path) the target names into buf.
     * Returns 0 on success. NULL = the pool uses the target itself. */
    int (*address)(void *ctx, const char *target, char *buf, size_t size);

    /* ---- ABI 2 ---- */

    /* Parses and validates the connector's part of a target -- the pool has
     * already taken its own options out of the query -- and makes the
     * context every other method receives. cpool_create() calls it when the
     * options give no connector_ctx, and cpool_destroy() calls ctx_free().
     * An unknown or invalid parameter is CPOOL_EINVAL with a message naming
     * it, the value and what is allowed. NULL: the connector needs no
     * context, or the caller must give one. */
    int (*ctx_new)(const char *target, void **ctx, cpool_error *err);
    void (*ctx_free)(void *ctx);

    /* Writes one line about the server behind an established connection
     * ("PostgreSQL 15.18, primary, read-write"), for probes and logs.
     * Returns 0 on success. NULL = nothing to say. */
    int (*describe)(void *ctx, void *native, char *buf, size_t size);

    /* The target prefixes this connector accepts ("postgresql://", ...),
     * NULL-terminated, for cpool_connector_for(). NULL = none. */
    const char *const *schemes;

    /* Runs one statement or command ("SELECT 1", "PING") and discards its
     * result, for tools that drive any database the same way (cpool bench,
     * cpool probe). Non-zero with err filled when it fails; a failure that
     * leaves the connection unusable sets err->kind to CPOOL_FAIL_NETWORK
     * or CPOOL_FAIL_TIMEOUT. NULL = not supported. */
    int (*execute)(void *ctx, void *native, const char *command, cpool_error *err);

    /* ---- ABI 3 (0.2) ---- */

    /* Tells cheaply whether the server accepts connections now -- a
     * connect that sends nothing, so the server logs nothing -- without
     * establishing one. The background thread calls it every
     * probe_interval_ms while establishments fail, at most one at a time,
     * and ends the backoff step when it returns 0. A negative CPOOL_E* code
     * (err filled) when it does not accept; 1 when the connector cannot
     * tell for this target (the backoff then runs its course). deadline_ns
     * as in cpool_connect_args. NULL = no probe. */
    int (*probe)(void *ctx, int64_t deadline_ns, cpool_error *err);

    /* ---- ABI 4 (0.2) ---- */

    /* Makes the session as fresh as a new connection's -- identity, settings,
     * temporary objects, prepared statements, locks, subscriptions, the
     * selected database -- bounded by deadline_ns (PostgreSQL: DISCARD ALL;
     * Redis: RESET, then the target's AUTH, CLIENT SETNAME and SELECT). The
     * core calls it at checkout, outside its lock, before a connection that
     * one tenant used goes to another (cpool_tenant_set). Non-zero = the
     * connection is closed and the checkout goes on with another. NULL = the
     * connector cannot: such a connection is closed (reason "session") and
     * the other tenant gets a new one. */
    int (*discard)(void *ctx, void *native, int64_t deadline_ns, cpool_error *err);

    /* The parameters its targets take (see cpool_param); NULL = none
     * declared. Parameters of the client library the connector passes on
     * (libpq's) are not listed. */
    const cpool_param *params;
    size_t nparams;

    /* ---- ABI 5 (0.2) ---- */

    /* Asks the server behind an established connection for its role (and,
     * with CPOOL_INFO_LAG, its replication lag, and its epoch), bounded by
     * deadline_ns: one round trip at most, none with CPOOL_INFO_CACHED. The
     * monitors of a cpool_cluster call it every heartbeat on a connection
     * of their own. 0 and *out filled; otherwise err filled (a failure that
     * leaves the connection unusable sets err->kind to CPOOL_FAIL_NETWORK
     * or CPOOL_FAIL_TIMEOUT). NULL = roles unknown: every endpoint serves
     * only checkouts that accept any role. */
    int (*server_info)(void *ctx, void *native, unsigned flags, int64_t deadline_ns,
                       cpool_server_info *out, cpool_error *err);
};

/* Sets err to an establishment failure; the helper connectors use. Returns
 * `code`. */
CPOOL_API int cpool_error_set(cpool_error *err, int code, cpool_phase phase,
                              cpool_fail_kind kind, int native,
                              const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;

/* True when a failure of this phase and kind may come from an overloaded
 * server: network errors and timeouts while connecting, in TLS or in the
 * handshake. DNS, certificate and authentication failures are not. */
CPOOL_API bool cpool_is_backpressure(cpool_phase phase, cpool_fail_kind kind);

/* ------------------------------------------------------------ target URIs
 * Helpers for connectors that read parameters from a target's query string
 * ("scheme://...?name=value&name2=value2"). Names are compared exactly;
 * values are percent-decoded ('+' stays '+'). */

/* Removes every `name=...` parameter from the query of `uri` (edited in
 * place; a query left empty loses its '?') and writes the last one's
 * decoded value into val. Returns 1 when found, 0 when absent, CPOOL_EINVAL
 * when the value does not fit or has a bad %-escape. */
/* 0.2 */
CPOOL_API int cpool_uri_take(char *uri, const char *name, char *val,
                             size_t valsize);

/* Iterates the query parameters of `uri`. Start with *pos = 0; each call
 * writes the next raw name and decoded value and returns 1, then 0 at the
 * end, CPOOL_EINVAL when one does not fit or is malformed. */
/* 0.2 */
CPOOL_API int cpool_uri_next(const char *uri, size_t *pos, char *name,
                             size_t namesize, char *val, size_t valsize);

/* Percent-decodes in[0..len) into out. CPOOL_EINVAL on a bad escape or when
 * it does not fit; otherwise the decoded length. */
/* 0.2 */
CPOOL_API int cpool_uri_decode(const char *in, size_t len, char *out,
                               size_t outsize);

/* Copies a target with any password replaced by "***": the password of a
 * URI's user info, a `password=` query parameter, a conninfo `password=`
 * keyword. Returns the length it needed, like snprintf. */
/* 0.2 */
CPOOL_API size_t cpool_redact(const char *target, char *buf, size_t size);

/* Reads one parameter (name, decoded value) of a target with `table`: when
 * the name (or an alias) is in the table, checks the value and stores it at
 * the row's offset in `out`, sets bit i of *seen (may be NULL) for row i,
 * and returns 1; a name not in the table returns 0. A bad value is
 * CPOOL_EINVAL with `<connector> target: <name> = "<value>": allowed ...`,
 * the value shown as *** when the row is secret. */
/* 0.2 */
CPOOL_API int cpool_param_set(const char *connector, const cpool_param *table, size_t n,
                              const char *name, const char *value, void *out,
                              uint64_t *seen, cpool_error *err);

/* What a row allows, as text ("1..86400000", "tracked, always"): its
 * `allowed`, else made from its type. Returns buf. */
/* 0.2 */
CPOOL_API const char *cpool_param_allowed(const cpool_param *param, char *buf, size_t size);

/* The error for a parameter the table does not have: CPOOL_EINVAL with
 * `<connector> target: unknown parameter "<name>" = "<value>"; allowed:
 * <the table's names><extra>`. The value is shown as *** when the name looks
 * like a secret's (password, passwd, token, key, ...). */
/* 0.2 */
CPOOL_API int cpool_param_unknown(const char *connector, const cpool_param *table, size_t n,
                                  const char *name, const char *value, const char *extra,
                                  cpool_error *err);

/* The built-in connector whose schemes prefix `target`, NULL when none (or
 * when it was left out of this build). A libpq conninfo ("host=... dbname=")
 * is PostgreSQL. */
/* 0.2 */
CPOOL_API const cpool_connector *cpool_connector_for(const char *target);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_CONNECTOR_H */
