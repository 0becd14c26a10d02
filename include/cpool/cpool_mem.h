/* cpool_mem.h -- an in-memory connector with scriptable behaviour, for the
 * conformance runner, fault injection and benchmarks. It opens no sockets:
 * a "connection" is a small struct, and a cpool_mem object plays the server.
 *
 * Threads: every function may be called from any thread at any time,
 * including while pools use the connector.
 */
#ifndef CPOOL_MEM_H
#define CPOOL_MEM_H

#include "cpool_connector.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cpool_mem cpool_mem;

/* The connector table; pass the cpool_mem as the options' connector_ctx. */
CPOOL_API const cpool_connector *cpool_mem_connector(void);

CPOOL_API CPOOL_NODISCARD int cpool_mem_create(cpool_mem **out);
/* Frees the server. Every pool using it must be destroyed first. NULL: no-op. */
CPOOL_API void cpool_mem_destroy(cpool_mem *mem);

/* A fault injected into handshakes, like MongoDB's failCommand fail point.
 * It applies to an establishment whose target contains "appName=<app_name>"
 * (any establishment when app_name is NULL). */
typedef struct cpool_mem_failpoint {
    int times;            /* how many handshakes it still applies to; -1 = always */
    const char *app_name; /* copied; NULL = every target */
    int64_t block_ms;     /* delay the handshake this long (cancellable) */
    bool block_until_interrupted; /* hang until cancel_fd or the deadline */
    bool fail;            /* then fail with the fields below */
    cpool_phase fail_phase;
    cpool_fail_kind fail_kind;
    int fail_native;      /* e.g. a server error code such as 91 */
} cpool_mem_failpoint;

/* Installs (copies) the fail point, replacing any earlier one; NULL turns it
 * off. */
CPOOL_API void cpool_mem_set_failpoint(cpool_mem *mem, const cpool_mem_failpoint *fp);

/* Service ids handed to new connections, round-robin (load-balanced mode).
 * Copied. n = 0: no service id. */
CPOOL_API void cpool_mem_set_service_ids(cpool_mem *mem, const char *const *ids,
                                         size_t n);

/* The server this cpool_mem plays, for multi-endpoint tests
 * (cpool_cluster.h): the role and lag server_info() reports, and faults.
 * Zeroed at creation: role unknown, up. */
/* 0.2 */
typedef struct cpool_mem_server {
    cpool_role role;
    uint64_t epoch;   /* reported while primary */
    int64_t lag_ms;   /* reported while replica (-1 = unknown) */
    int64_t rtt_us;   /* server_info() takes this long */
    int64_t first_rtt_us; /* ... but the first on a connection this long,
                             when > 0 (a new backend's start-up work) */
    bool down;        /* connects are refused and server_info() breaks the
                         connection it runs on: a killed server */
    bool stopped;     /* connects and server_info() hang until their
                         deadline (or the cancel descriptor): SIGSTOP */
} cpool_mem_server;

/* Copies `server` (NULL: back to the zeroed one). */
/* 0.2 */
CPOOL_API void cpool_mem_set_server(cpool_mem *mem, const cpool_mem_server *server);

/* What the "server" saw. */
typedef struct cpool_mem_stats {
    uint64_t connects;   /* establishment attempts */
    uint64_t failures;   /* attempts that failed */
    uint64_t open;       /* connections open now (established, not closed) */
    uint64_t closes;     /* close() calls */
    uint64_t abandons;   /* abandon() calls */
    uint64_t interrupts; /* interrupt() calls on established connections */
    uint64_t resets;     /* reset() calls */
    uint64_t checks;     /* check() calls */
    uint64_t pings;      /* ping() calls */
    uint64_t probes;     /* 0.2: probe() calls */
    uint64_t discards;   /* 0.2: discard() calls */
} cpool_mem_stats;

CPOOL_API void cpool_mem_get_stats(cpool_mem *mem, cpool_mem_stats *out);

/* Per-connection scripting, on a native handle (cpool_conn_native()). */
/* Makes check() and reset() fail from now on (a dead socket). */
CPOOL_API void cpool_mem_conn_break(void *native);
/* Makes ping() fail from now on while check() still passes: a server that
 * stopped answering but keeps the socket open. */
/* 0.2 */
CPOOL_API void cpool_mem_conn_hang(void *native);
/* Like cpool_mem_conn_hang(), but ping() first waits until its deadline,
 * as against a stopped server. */
/* 0.2 */
CPOOL_API void cpool_mem_conn_stall(void *native);
/* True once interrupt() was called on it. */
CPOOL_API bool cpool_mem_conn_interrupted(void *native);
/* The id the pool gave it at establishment. */
CPOOL_API uint64_t cpool_mem_conn_id(void *native);
/* Marks it "inside a transaction": reset() clears the mark and counts. */
CPOOL_API void cpool_mem_conn_begin(void *native);
CPOOL_API bool cpool_mem_conn_in_txn(void *native);
/* Session state a lease may leave behind (a role, a temp table ...): a
 * value that reset() keeps and discard() clears to 0, as a server's
 * session keeps what a check-in's light reset does not undo. A "hung"
 * connection fails discard() as it fails ping(). */
/* 0.2 */
CPOOL_API void cpool_mem_conn_set_session(void *native, uint64_t value);
/* 0.2 */
CPOOL_API uint64_t cpool_mem_conn_session(void *native);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_MEM_H */
