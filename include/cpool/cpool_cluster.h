/* cpool_cluster.h -- one pool over several endpoints: a primary and its
 * replicas (PostgreSQL streaming replication, Redis replication), each
 * endpoint with a CMAP pool of its own.
 *
 * A monitor thread per endpoint keeps a connection of its own and asks
 * the server its role (and a replica's lag) every heartbeat, and at once
 * when a checkout met an error there; it measures the round trip as it
 * goes. A checkout says what it needs (cpool_want). Among the endpoints
 * that can serve it -- up, the right role, within the lag asked for, the
 * pool's circuit not open -- it keeps those whose round trip is within
 * local_threshold_ms of the fastest, then takes the less busy of two
 * picked at random (in use + waiting). This is the selection of MongoDB's
 * Server Selection specification, on the topology its SDAM specification
 * keeps: an endpoint's pool is created paused and made ready when its
 * monitor first reaches the server, cleared when the monitor loses it, and
 * cleared with its in-use connections interrupted when a primary stops
 * being one, so that a demoted primary's sessions never serve a write.
 *
 * Thread-safe: every call may come from any thread. See docs/cluster.md.
 * Since 0.2.
 */
#ifndef CPOOL_CLUSTER_H
#define CPOOL_CLUSTER_H

#include "cpool_connector.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cpool_cluster cpool_cluster;

/* What a checkout needs. */
typedef enum cpool_want {
    CPOOL_WANT_PRIMARY = 0,        /* the primary only (writes) */
    CPOOL_WANT_PRIMARY_PREFERRED,  /* the primary, else a replica */
    CPOOL_WANT_REPLICA,            /* a replica only */
    CPOOL_WANT_REPLICA_PREFERRED,  /* a replica, else the primary */
    CPOOL_WANT_ANY                 /* whichever is nearest and least busy */
} cpool_want;

/* "primary", "primary_preferred", ...; NULL for a bad value. */
CPOOL_API const char *cpool_want_name(cpool_want want);
/* Parses those names (and "read-write" = primary, "read-only" = replica,
 * "prefer-standby" = replica_preferred, libpq's target_session_attrs).
 * 0 or CPOOL_EINVAL. */
CPOOL_API int cpool_want_parse(const char *name, cpool_want *out);
/* "unknown", "primary", "replica". */
CPOOL_API const char *cpool_role_name(cpool_role role);

/* One endpoint given explicitly, instead of a multi-host target. */
typedef struct cpool_cluster_endpoint {
    const char *target;               /* one server */
    const cpool_connector *connector; /* NULL = the one the target names */
    void *connector_ctx;              /* NULL = made from the target */
} cpool_cluster_endpoint;

/* What happened to the topology (cpool_topology_event.type). */
typedef enum cpool_topology_change {
    CPOOL_TOPO_UP = 0,      /* the monitor reached the server: its pool is ready */
    CPOOL_TOPO_DOWN,        /* the monitor lost it: its pool was cleared */
    CPOOL_TOPO_ROLE,        /* the role changed (from -> to) */
    CPOOL_TOPO_STALE,       /* a primary with an older epoch than another
                               primary: taken out of selection, its pool
                               cleared, in-use connections interrupted */
    CPOOL_TOPO_CHANGE_COUNT_
} cpool_topology_change;

/* "EndpointUp", "EndpointDown", "EndpointRoleChanged", "EndpointStale". */
CPOOL_API const char *cpool_topology_change_name(cpool_topology_change type);

typedef struct cpool_topology_event {
    cpool_topology_change type;
    size_t endpoint;          /* its index */
    const char *address;      /* its pool's address */
    cpool_role from, to;      /* ROLE (and UP: to = the role it has) */
    const cpool_error *error; /* DOWN: why; else NULL */
    int64_t time_ns;          /* CLOCK_MONOTONIC */
} cpool_topology_event;

/* Called from a monitor thread, never under the cluster's lock; it may
 * read the cluster (cpool_cluster_endpoint_info) but not close it. */
typedef void (*cpool_topology_fn)(const cpool_topology_event *ev, void *ctx);

typedef struct cpool_cluster_options {
    size_t struct_size;              /* sizeof, set by cpool_cluster_options_init() */
    const cpool_options *pool;       /* every endpoint's pool options (its
                                        target, connector and context are
                                        the endpoint's); NULL = defaults.
                                        Its on_log sink also receives the
                                        topology log records */
    const cpool_cluster_endpoint *endpoints; /* instead of a target */
    size_t nendpoints;
    int64_t heartbeat_ms;            /* between two checks of one endpoint;
                                        default 1000, 10..600000 */
    int64_t min_heartbeat_ms;        /* a check asked for (a checkout that
                                        found nothing, an error) comes no
                                        sooner than this after the last;
                                        default 100, 1..heartbeat_ms */
    int64_t check_timeout_ms;        /* a check (connect and round trip)
                                        gives up after this; default 1000
                                        (at most heartbeat_ms is wise: a
                                        stopped server is then seen within
                                        one heartbeat) */
    int64_t local_threshold_ms;      /* the latency window; default 15 */
    cpool_want want;                 /* checkouts that give no opts;
                                        default: the target's
                                        target_session_attrs, else PRIMARY */
    cpool_topology_fn on_topology;   /* NULL = none */
    void *topology_ctx;
    uint64_t seed;                   /* the random choices' seed; 0 = from
                                        the clock */
} cpool_cluster_options;

CPOOL_API void cpool_cluster_options_init(cpool_cluster_options *o, size_t size);

/* Opens a cluster on a multi-host target -- "postgresql://h1:p1,h2:p2/db?...",
 * a conninfo "host=h1,h2 port=p1,p2 ...", "redis://h1:p1,h2:p2/0" -- or on
 * o->endpoints (target NULL). One endpoint per host; the target's other
 * parameters go to every endpoint. libpq's target_session_attrs and
 * load_balance_hosts are taken out (the cluster selects) and the first
 * sets the default want. Returns at once: the monitors start, and the
 * first checkouts wait (within their deadline) for the first checks. */
CPOOL_API CPOOL_NODISCARD int cpool_cluster_open(const char *target,
                                                 const cpool_cluster_options *o,
                                                 cpool_cluster **out, cpool_error *err);
/* Stops the monitors and destroys every endpoint's pool. Leases must be
 * back. NULL: no-op. */
CPOOL_API void cpool_cluster_close(cpool_cluster *c);

typedef struct cpool_cluster_checkout_opts {
    size_t struct_size;
    cpool_want want;
    int64_t timeout_ms;    /* the whole checkout, selection and waits
                              included; < 0 = the pool options'
                              wait_queue_timeout_ms */
    int64_t max_lag_ms;    /* replicas lagging more (or by an unknown
                              amount) are not used; 0 = any lag */
    const char *label;     /* as cpool_checkout_opts */
    const char *tenant;
    cpool_cancel *cancel;
} cpool_cluster_checkout_opts;

/* Where a lease came from. */
typedef struct cpool_lease_origin {
    size_t endpoint;      /* index */
    const char *address;  /* borrowed from the cluster */
    cpool_role role;      /* the endpoint's role when selected */
} cpool_lease_origin;

/* Selects an endpoint and checks out from its pool, within the deadline.
 * A pool cleared under the checkout, or an establishment that fails, makes
 * the checkout ask for a check and try another endpoint. When no endpoint
 * can serve by the deadline: CPOOL_ENOENDPOINT, the message naming each
 * endpoint and why it could not (down and why, its role, its lag, its
 * circuit). o NULL = want from the options, pool timeout. origin may be
 * NULL. Check in with cpool_cluster_checkin(). */
CPOOL_API CPOOL_NODISCARD int cpool_cluster_checkout(cpool_cluster *c,
                                                     const cpool_cluster_checkout_opts *o,
                                                     cpool_conn **out,
                                                     cpool_lease_origin *origin,
                                                     cpool_error *err);
/* Returns a lease to the pool it came from (cpool_checkin's flags). A
 * lease that broke (CPOOL_CHECKIN_BROKEN) also asks for a check of its
 * endpoint. */
CPOOL_API int cpool_cluster_checkin(cpool_cluster *c, cpool_conn *conn, unsigned flags,
                                    cpool_error *err);

/* cpool_run() on a cluster: checks out what `want` asks for, runs fn,
 * checks in (broken when fn failed other than with a server's answer), and
 * tries again -- a new selection, so possibly another endpoint -- after a
 * failure labelled RetryableError while retries and time remain, as the
 * MongoDB drivers' retryable reads and writes do. Inside fn,
 * cpool_run_deadline_ms() tells what is left. Fill with
 * `cpool_cluster_run_opts o = {.struct_size = sizeof o, .timeout_ms = -1}`. */
typedef struct cpool_cluster_run_opts {
    size_t struct_size;
    cpool_want want;
    int64_t timeout_ms;     /* one deadline for all attempts and pauses;
                               < 0 = each checkout the pool's own */
    int64_t max_lag_ms;     /* as cpool_cluster_checkout_opts */
    uint32_t retries;       /* further attempts after a RetryableError */
    int64_t retry_delay_ms; /* first pause, then times backoff_multiplier */
    const char *label;
    const char *tenant;
} cpool_cluster_run_opts;

CPOOL_API int cpool_cluster_run(cpool_cluster *c, const cpool_cluster_run_opts *o,
                                cpool_run_fn fn, void *arg, cpool_error *err);

/* The cluster's own counters (each endpoint's pool has its statistics). */
typedef struct cpool_cluster_stats {
    size_t struct_size;      /* set by the caller: sizeof */
    uint64_t checkouts;      /* cpool_cluster_checkout calls */
    uint64_t checkouts_ok;
    uint64_t no_endpoint;    /* failed with CPOOL_ENOENDPOINT */
    uint64_t moved_on;       /* times a checkout left an endpoint that failed
                                it for another */
    uint64_t retries;        /* cpool_cluster_run attempts after the first */
    uint64_t retries_succeeded;
    uint64_t retries_exhausted;
    uint64_t changes;        /* topology changes */
} cpool_cluster_stats;

CPOOL_API int cpool_cluster_get_stats(cpool_cluster *c, cpool_cluster_stats *out);

typedef enum cpool_endpoint_state {
    CPOOL_ENDPOINT_UNKNOWN = 0, /* not checked yet */
    CPOOL_ENDPOINT_UP,
    CPOOL_ENDPOINT_DOWN,
    CPOOL_ENDPOINT_STALE        /* a primary that another, newer, replaced */
} cpool_endpoint_state;

/* "unknown", "up", "down", "stale". */
CPOOL_API const char *cpool_endpoint_state_name(cpool_endpoint_state s);

typedef struct cpool_endpoint_info {
    const char *address;        /* borrowed from the cluster */
    cpool *pool;                /* borrowed: its pool (stats, events ...) */
    cpool_endpoint_state state;
    cpool_role role;
    int64_t rtt_ns;             /* moving average (weight 0.2 per check);
                                   -1 = not measured yet */
    int64_t lag_ms;             /* -1 = unknown */
    uint64_t epoch;
    uint64_t checks, check_failures;
    uint64_t selected;          /* checkouts it served */
    uint64_t changes;           /* topology changes it went through */
    int64_t since_ns;           /* CLOCK_MONOTONIC time of its last change */
    bool breaker_open;
    cpool_error last_error;     /* the last failed check; code 0 = none */
} cpool_endpoint_info;

CPOOL_API size_t cpool_cluster_size(const cpool_cluster *c);
/* What checkouts without opts want (options.want, else the target's). */
CPOOL_API cpool_want cpool_cluster_want(const cpool_cluster *c);
/* Fills out for endpoint i: 0, or CPOOL_EINVAL. */
CPOOL_API int cpool_cluster_endpoint_info(cpool_cluster *c, size_t i, cpool_endpoint_info *out);
/* Asks every monitor for a check now (no sooner than min_heartbeat_ms). */
CPOOL_API void cpool_cluster_check_now(cpool_cluster *c);
/* Waits until a checkout with `want` could be served (some endpoint is up
 * with a suitable role), at most timeout_ms: 0 or CPOOL_ENOENDPOINT. */
CPOOL_API int cpool_cluster_wait(cpool_cluster *c, cpool_want want, int64_t timeout_ms,
                                 cpool_error *err);

/* The Prometheus text for the cluster: every endpoint's pool statistics
 * (pool="<address>", cluster="<name>") with each family's HELP/TYPE once,
 * then per endpoint db_client_cluster_endpoint_up, _role, _rtt_seconds,
 * _lag_seconds, _selected_total, _changes_total. Returns the length it
 * needed, like snprintf. */
CPOOL_API size_t cpool_cluster_prometheus(cpool_cluster *c, const char *name, char *buf,
                                          size_t size);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_CLUSTER_H */
