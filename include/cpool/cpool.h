/* cpool.h -- a thread-safe pool of database connections for one endpoint.
 *
 * The pool follows the state machine of MongoDB's Connection Monitoring and
 * Pooling specification (CMAP): a pool is created *paused*, cpool_ready()
 * makes it serve, cpool_clear() bumps its generation and pauses it again,
 * cpool_close() ends it for good. Connections are pending, available, in use
 * or closed; stale, idle and errored connections are "perished" and closed
 * with a reason.
 *
 * Threads: a cpool may be shared by any number of threads. A cpool_conn is
 * used by one thread at a time. cpool_destroy() must not race other calls.
 * Fallible calls return 0 or a negative CPOOL_E* code; the optional `err`
 * argument (last, may be NULL) receives the details. Nothing in the library
 * calls abort() or keeps a process-wide "last error".
 */
#ifndef CPOOL_H
#define CPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CPOOL_BUILDING) && defined(__GNUC__)
#define CPOOL_API __attribute__((visibility("default")))
#else
#define CPOOL_API
#endif
#if defined(__GNUC__)
#define CPOOL_NODISCARD __attribute__((warn_unused_result))
#else
#define CPOOL_NODISCARD
#endif

/* The version of these headers. cpool_version() gives the library's: a
 * program built against one version and run with another sees both.
 * CMakeLists.txt reads these three lines; docs/abi.md says which changes
 * bump which number and the SONAME (libcpool.so.MAJOR). */
#define CPOOL_VERSION_MAJOR 0
#define CPOOL_VERSION_MINOR 2
#define CPOOL_VERSION_PATCH 0
#define CPOOL_STR2_(x) #x
#define CPOOL_STR_(x) CPOOL_STR2_(x)
#define CPOOL_VERSION_STRING                                                  \
    CPOOL_STR_(CPOOL_VERSION_MAJOR) "." CPOOL_STR_(CPOOL_VERSION_MINOR) "."   \
    CPOOL_STR_(CPOOL_VERSION_PATCH)
/* MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons. */
#define CPOOL_VERSION_NUMBER                                                  \
    (CPOOL_VERSION_MAJOR * 10000 + CPOOL_VERSION_MINOR * 100 + CPOOL_VERSION_PATCH)

typedef struct cpool cpool;
typedef struct cpool_conn cpool_conn;
typedef struct cpool_connector cpool_connector; /* cpool_connector.h */

/* The library's version, "0.2.0", and the same as CPOOL_VERSION_NUMBER
 * computes it (0.2.0 -> 200). Since 0.2. */
CPOOL_API const char *cpool_version(void);
CPOOL_API int cpool_version_number(void);

/* ------------------------------------------------------------------ errors */

/* X(NAME, value, description). Values are never renumbered; a retired code
 * keeps its slot. */
#define CPOOL_ERROR_MAP(X)                                                    \
    X(EINVAL, -1, "invalid argument or option")                               \
    X(ENOMEM, -2, "out of memory")                                            \
    X(ETIMEDOUT, -3, "timed out while checking out a connection")             \
    X(ECLEARED, -4, "connection pool was cleared")                            \
    X(ECLOSED, -5, "connection pool is closed")                               \
    X(ECONNECT, -6, "could not establish a connection")                       \
    X(EFOREIGN, -7, "connection does not belong to this pool")                \
    X(EDOUBLE, -8, "connection is not checked out (double check-in)")         \
    X(EINTERRUPTED, -9, "operation was interrupted")                          \
    X(ESTATE, -10, "operation not allowed in the pool's current state")       \
    X(EIO, -11, "I/O error on an established connection")                     \
    X(ESYS, -12, "system call failed")                                        \
    X(EUNAVAILABLE, -13, "backend unavailable: establishments keep failing")  \
    X(ESHUTDOWN, -14, "connection pool is shutting down")                     \
    X(ETENANT, -15, "tenant's connection limit reached")                      \
    X(ERATE, -16, "tenant's checkout rate exceeded")                          \
    X(EQUEUEFULL, -17, "too many checkouts are waiting already")              \
    X(ECANCELED, -18, "checkout was cancelled")                               \
    X(ENOENDPOINT, -19, "no endpoint of the cluster can serve the checkout")

enum {
    CPOOL_OK = 0,
#define CPOOL_X_ENUM(name, value, text) CPOOL_##name = (value),
    CPOOL_ERROR_MAP(CPOOL_X_ENUM)
#undef CPOOL_X_ENUM
};

/* Where an establishment failed. Connectors report it; the core uses it to
 * decide the backpressure labels. */
typedef enum cpool_phase {
    CPOOL_PHASE_NONE = 0,
    CPOOL_PHASE_DNS,       /* name resolution */
    CPOOL_PHASE_CONNECT,   /* TCP or unix-socket connect */
    CPOOL_PHASE_TLS,       /* TLS handshake */
    CPOOL_PHASE_HANDSHAKE, /* protocol startup / hello */
    CPOOL_PHASE_AUTH,      /* authentication after the handshake */
    CPOOL_PHASE_QUERY      /* use of an established connection */
} cpool_phase;

/* What kind of failure it was. */
typedef enum cpool_fail_kind {
    CPOOL_FAIL_OTHER = 0,
    CPOOL_FAIL_NETWORK,     /* refused, reset, EOF, unreachable */
    CPOOL_FAIL_TIMEOUT,     /* deadline passed during I/O */
    CPOOL_FAIL_DNS,         /* unknown host */
    CPOOL_FAIL_CERTIFICATE, /* TLS verification, hostname mismatch */
    CPOOL_FAIL_AUTH,        /* bad credentials, not permitted */
    CPOOL_FAIL_SERVER,      /* the server answered with an error */
    CPOOL_FAIL_INTERRUPTED, /* cancelled by the pool (clear, close) */
    CPOOL_FAIL_CAPACITY     /* 0.2: the server has no free connection slot
                               (PostgreSQL 53300 "too many clients", Redis
                               "max number of clients"): slots free up as
                               other clients leave, so the pool neither backs
                               off nor opens its circuit, and a checkout
                               keeps trying within its deadline */
} cpool_fail_kind;

/* Error labels (bitmask), as in CMAP section "backpressure". */
#define CPOOL_LABEL_SYSTEM_OVERLOADED 0x1u /* "SystemOverloadedError" */
#define CPOOL_LABEL_RETRYABLE 0x2u         /* "RetryableError" */

/* Caller-owned error details. Zero-initialise or leave it alone: every
 * fallible call that fails fills it completely. */
typedef struct cpool_error {
    int code;          /* CPOOL_E*, 0 when no error */
    int native;        /* driver code, errno or mapped SQLSTATE; 0 when none */
    unsigned labels;   /* CPOOL_LABEL_* */
    cpool_phase phase; /* where an establishment failed */
    cpool_fail_kind kind;
    char message[256]; /* always NUL-terminated; names the operation and peer */
} cpool_error;

/* Static description of a code ("timed out while ..."); never NULL. */
CPOOL_API const char *cpool_strerror(int code);
/* Static symbolic name of a code ("CPOOL_ETIMEDOUT"); never NULL. */
CPOOL_API const char *cpool_err_name(int code);
/* Static name of a label bit ("SystemOverloadedError"), NULL if unknown. */
CPOOL_API const char *cpool_label_name(unsigned label_bit);

/* ------------------------------------------------------------------ clock */

/* An injectable monotonic clock, for tests. now_ns() must never go back.
 * With it, waiting checkouts re-read the clock every few milliseconds, so a
 * fake clock that jumps ends their waits; call cpool_wake() after advancing
 * it so the maintenance thread looks again too. */
typedef struct cpool_clock {
    int64_t (*now_ns)(void *ctx);
    void *ctx;
} cpool_clock;

/* ------------------------------------------------------------------ events */

typedef enum cpool_event_type {
    CPOOL_EV_POOL_CREATED = 0, /* ConnectionPoolCreated */
    CPOOL_EV_POOL_READY,       /* ConnectionPoolReady */
    CPOOL_EV_POOL_CLEARED,     /* ConnectionPoolCleared */
    CPOOL_EV_POOL_CLOSED,      /* ConnectionPoolClosed */
    CPOOL_EV_CONN_CREATED,     /* ConnectionCreated */
    CPOOL_EV_CONN_READY,       /* ConnectionReady */
    CPOOL_EV_CONN_CLOSED,      /* ConnectionClosed */
    CPOOL_EV_CHECKOUT_STARTED, /* ConnectionCheckOutStarted */
    CPOOL_EV_CHECKOUT_FAILED,  /* ConnectionCheckOutFailed */
    CPOOL_EV_CHECKED_OUT,      /* ConnectionCheckedOut */
    CPOOL_EV_CHECKED_IN,       /* ConnectionCheckedIn */
    /* The pool's own (not CMAP): */
    CPOOL_EV_CONN_LEAK_SUSPECTED, /* held longer than leak_threshold_ms */
    CPOOL_EV_POOL_RECYCLED,       /* 0.2: cpool_recycle() marked every
                                     connection for replacement */
    CPOOL_EV_BACKOFF_STARTED,     /* 0.2: an establishment failed; no new
                                     one for duration_ns (the step) */
    CPOOL_EV_BREAKER_OPENED,      /* 0.2: breaker_threshold failures in a
                                     row: the circuit is open */
    CPOOL_EV_BREAKER_CLOSED,      /* 0.2: an establishment succeeded again */
    CPOOL_EV_COUNT_
} cpool_event_type;

/* Why a connection was closed (ConnectionClosed.reason). */
typedef enum cpool_close_reason {
    CPOOL_CLOSE_STALE = 0,  /* "stale": generation behind the pool's */
    CPOOL_CLOSE_IDLE,       /* "idle": available longer than maxIdleTimeMS */
    CPOOL_CLOSE_ERROR,      /* "error": establishment or use failed */
    CPOOL_CLOSE_POOL_CLOSED, /* "poolClosed" */
    /* The pool's own reasons (not in CMAP); a CMAP driver would report
     * them as "stale" or "error". */
    CPOOL_CLOSE_LIFETIME,   /* "lifetime": older than max_lifetime_ms */
    CPOOL_CLOSE_USES,       /* "uses": leased recycle_after_uses times */
    CPOOL_CLOSE_RECLAIMED,  /* "reclaimed": held past leak_reclaim_ms; the
                               pool interrupted it and took its slot back */
    CPOOL_CLOSE_SESSION,    /* "session": another tenant's turn, and its
                               connector cannot reset a session (no
                               discard method, e.g. SQLite) */
    CPOOL_CLOSE_RECYCLED,   /* "recycled": marked by cpool_recycle() or
                               cpool_conn_recycle() (0.2) */
    CPOOL_CLOSE_RESIZED,    /* "resized": beyond a maxPoolSize lowered by
                               cpool_resize() (0.2) */
    CPOOL_CLOSE_HOOK,       /* "hook": an after_connect, before_lease or
                               after_return hook failed (0.2) */
    CPOOL_CLOSE_REASON_COUNT_
} cpool_close_reason;

/* Why a checkout failed (ConnectionCheckOutFailed.reason). */
typedef enum cpool_checkout_failure {
    CPOOL_CHECKOUT_POOL_CLOSED = 0, /* "poolClosed" */
    CPOOL_CHECKOUT_TIMEOUT,         /* "timeout" */
    CPOOL_CHECKOUT_CONN_ERROR       /* "connectionError" (also: pool paused) */
} cpool_checkout_failure;

/* Bits of cpool_event.options_set: options that differ from CMAP's defaults
 * (maxPoolSize 100, minPoolSize 0, maxIdleTimeMS 0, maxConnecting 2,
 * waitQueueTimeoutMS 0). */
#define CPOOL_OPT_MAX_POOL_SIZE 0x01u
#define CPOOL_OPT_MIN_POOL_SIZE 0x02u
#define CPOOL_OPT_MAX_IDLE_TIME_MS 0x04u
#define CPOOL_OPT_MAX_CONNECTING 0x08u
#define CPOOL_OPT_WAIT_QUEUE_TIMEOUT_MS 0x10u

typedef struct cpool_options cpool_options;

/* How connections returned while others wait reach the waiters
 * (docs/design.md, "Handoff"). In both modes waiters are served in the
 * order they arrived (with turns, a waiter may be passed once, by one woken
 * early on the CPU that hands over), and a newcomer never takes a
 * connection ahead of a waiter. */
typedef enum cpool_handoff {
    /* Every check-in hands the connection to the oldest waiter at once:
     * CMAP's wait queue, one wake-up and one thread switch per lease when
     * threads outnumber connections. */
    CPOOL_HANDOFF_FIFO = 0,
    /* A thread that checks in while others wait may take the same
     * connection straight back, without the lock, for a turn of at most
     * turn_us and turn_uses re-takes; then the oldest waiter gets it. A
     * queued checkout waits for at most ((its place in the queue + 1) / the
     * pool's size) turns instead of leases, each turn_us plus one lease at
     * the most; the turns shrink while checkouts wait longer than
     * turn_wait_us, and grow back when they wait less. Used only where the lock-free path is (no event subscriber,
     * log sink or tenants, not load-balanced) and the background thread
     * runs; elsewhere the pool hands off as in FIFO. */
    CPOOL_HANDOFF_TURNS = 1
} cpool_handoff;

/* 0.2: with turns, whether the waiter next in line is woken ahead of its
 * handoff, to spin (yielding the CPU) until it is served (docs/design.md,
 * "Early wake-ups"). Off by default: the pool posts its wake-ups after
 * releasing its lock, and since then the spinning costs more CPU than the
 * wake-up it saves. The bound on a wait is the same in all three. */
typedef enum cpool_early_wake {
    /* Only while other processes leave the machine's CPUs to this one: the
     * background thread measures, every 100 ms while checkouts wait, how
     * much CPU other processes use, and stops the early wake-ups while that
     * is over a quarter of the machine's CPUs; under an eighth they
     * resume. A pool starts without them until its first measurement. A
     * spinning waiter helps where a CPU would otherwise sit idle, and costs
     * a database server on the same machine the CPU it needs. */
    CPOOL_EARLY_WAKE_AUTO = 0,
    CPOOL_EARLY_WAKE_ON,  /* always */
    CPOOL_EARLY_WAKE_OFF  /* never: a waiter sleeps until it is served */
} cpool_early_wake;

/* What the pool does before it hands out a connection that was available. */
/* Named backoff schedules (option `backoff`). Each sets the backoff_*
 * options that are not set in code, the environment or the target. The
 * maximum number of attempts before the pool reports the backend
 * unavailable is breaker_threshold (see there). */
typedef enum cpool_backoff_profile {
    CPOOL_BACKOFF_QUICK = 0, /* "quick": 200 ms, x2, up to 10 s, +-20 % (the
                                backoff_* defaults) */
    CPOOL_BACKOFF_STEADY,    /* "steady": 1, 2, 4 ... 60 s, +-20 % */
    CPOOL_BACKOFF_OFF        /* "off": no wait between attempts */
} cpool_backoff_profile;

typedef enum cpool_validation {
    CPOOL_VALIDATE_NONE = 0,  /* nothing */
    CPOOL_VALIDATE_CHECK,     /* the connector's check(): no I/O (default) */
    CPOOL_VALIDATE_PING_IDLE, /* check(), and a round trip when the connection
                                 was idle longer than validation_idle_ms */
    CPOOL_VALIDATE_ALWAYS     /* check() and a round trip every time */
} cpool_validation;

/* One event. Every pointer in it is borrowed for the callback's duration. */
typedef struct cpool_event {
    cpool_event_type type;
    const char *address;    /* the pool's address; never NULL */
    uint64_t connection_id; /* connection events; 0 otherwise */
    int64_t duration_ns;    /* CONN_READY, CHECKED_OUT, CHECKOUT_FAILED; else -1 */
    int reason;             /* cpool_close_reason or cpool_checkout_failure */
    const char *service_id; /* POOL_CLEARED in load-balanced mode; else NULL */
    bool interrupt_in_use;  /* POOL_CLEARED */
    const cpool_options *options; /* POOL_CREATED: effective options */
    unsigned options_set;         /* POOL_CREATED: CPOOL_OPT_* bits */
    const cpool_error *error;     /* CONN_CLOSED(error), CHECKOUT_FAILED; else NULL */
    int64_t time_ns;              /* pool clock when emitted */
    /* CONN_LEAK_SUSPECTED: who holds it (duration_ns: for how long). */
    const char *holder_label;     /* the checkout's label; "" when none */
    uint64_t holder_thread;       /* the holder's kernel thread id */
    /* 0.2. POOL_RECYCLED: the connections it marked. */
    uint32_t connections;
    /* 0.2. CONN_LEAK_SUSPECTED: the holder's tenant ("" for checkouts
     * without one), NULL in pools without tenants; over_tenant_limit: it is
     * reported for its tenant's max_hold_ms (cpool_tenant_budget). */
    const char *tenant;
    bool over_tenant_limit;
    /* 0.2. BACKOFF_STARTED, BREAKER_OPENED: establishment failures in a row
     * (error: the last one); BREAKER_CLOSED: the run it ended. */
    uint32_t failures;
} cpool_event;

/* Event subscriber. Called from whichever thread changed the state, never
 * with the pool's lock held, one event at a time and in one global order
 * consistent with the state changes. It should return quickly. It cannot
 * call back into the pool that emitted the event: the calls that could
 * emit (checkout, checkin, ready, clear, shutdown, maintain, wait_connected,
 * tenant_set) return CPOOL_ESTATE at once there, and close and destroy do
 * nothing. Reading calls (counts, stats) work. */
typedef void (*cpool_event_fn)(const cpool_event *ev, void *ctx);

/* "ConnectionCheckedOut" etc. (the CMAP test-format names); never NULL. */
CPOOL_API const char *cpool_event_name(cpool_event_type type);
/* "stale", "idle", "error", "poolClosed", and the pool's own "lifetime",
 * "uses", "reclaimed". */
CPOOL_API const char *cpool_close_reason_name(int reason);
/* "poolClosed", "timeout", "connectionError". */
CPOOL_API const char *cpool_checkout_failure_name(int reason);

/* ------------------------------------------------------------------ logs */

typedef enum cpool_log_level {
    CPOOL_LOG_ERROR = 0,
    CPOOL_LOG_WARN,
    CPOOL_LOG_INFO,
    CPOOL_LOG_DEBUG
} cpool_log_level;

typedef enum cpool_log_type {
    CPOOL_LOG_STR = 0,
    CPOOL_LOG_INT,
    CPOOL_LOG_DOUBLE
} cpool_log_type;

typedef struct cpool_log_field {
    const char *key;
    cpool_log_type type;
    const char *s; /* CPOOL_LOG_STR */
    int64_t i;     /* CPOOL_LOG_INT */
    double d;      /* CPOOL_LOG_DOUBLE */
} cpool_log_field;

/* A structured log record: the CMAP log message (`message`, exact string)
 * and its fields (serverHost, serverPort, driverConnectionId, ...). Absent
 * values are left out, never null. Borrowed for the sink call. */
typedef struct cpool_log_record {
    cpool_log_level level;
    const char *component; /* "connection" */
    const char *message;   /* "Connection checked out" */
    const cpool_log_field *fields;
    size_t nfields;
    const char *pool;      /* options.name, else the pool's address; NULL =
                              none (0.2) */
    int64_t time_ms;       /* wall clock, ms since the Unix epoch, when the
                              record was made; 0 = format time (0.2) */
} cpool_log_record;

/* Log sink. Same threading rules as cpool_event_fn. */
typedef void (*cpool_log_fn)(const cpool_log_record *rec, void *ctx);

/* A ready-made sink: writes one JSON object per line to the FILE * passed as
 * ctx and flushes it. Safe to use from several pools (one fputs per record).
 * Each line starts {"time":"2026-12-05T23:40:01.123Z","level":...,
 * "pool":...: the time in RFC 3339 (UTC, milliseconds), then the level, the
 * pool, the component, the message and the record's fields. */
CPOOL_API void cpool_log_json(const cpool_log_record *rec, void *file);
/* Formats rec as one JSON object (no newline) into buf; returns the length
 * it needed, like snprintf. */
CPOOL_API size_t cpool_log_format_json(const cpool_log_record *rec, char *buf,
                                       size_t size);

/* ------------------------------------------------------------------ options */

/* Hooks: the application's code around connections (options.hooks). Each
 * runs on the thread that does the step, never under the pool's lock, with
 * `ctx` = hooks.ctx. A hook returns 0, or non-zero with err filled: the
 * connection is then closed with reason "hook" and a checkout goes on as
 * after a failed validation (another connection, within its deadline).
 * Hooks must not check the connection in or out. */
typedef int (*cpool_hook_fn)(cpool_conn *conn, void *ctx, cpool_error *err);
typedef struct cpool_hooks {
    cpool_hook_fn after_connect; /* once, when a connection is established,
                                    before anyone leases it (prepare
                                    statements, SET a session variable) */
    cpool_hook_fn before_lease;  /* at every checkout, after validation */
    cpool_hook_fn after_return;  /* at every check-in, after the connector's
                                    reset; not when the lease is broken */
    void (*before_close)(void *native, uint64_t conn_id, int reason, void *ctx);
                                 /* before the connector closes it: reason
                                    is its cpool_close_reason */
    void *ctx;
} cpool_hooks;

/* Pool options. Fill with cpool_options_init(&o, sizeof o), then set fields.
 * cpool_create() copies the struct and the strings it points to, so the
 * caller may discard it at once. Fields are only ever appended. */
struct cpool_options {
    size_t struct_size;                /* set by cpool_options_init() */
    const cpool_connector *connector;  /* required; must outlive the pool */
    void *connector_ctx;               /* passed to every connector call */
    const char *target;                /* conninfo, URL or path; copied */
    const char *address;               /* "host:port" for events and logs;
                                          copied; NULL = the target */
    uint32_t max_pool_size;            /* maxPoolSize, default 10 (CMAP's is
                                          100); 0 = no limit */
    uint32_t min_pool_size;            /* minPoolSize, default 0 */
    int64_t max_idle_time_ms;          /* maxIdleTimeMS, default 0 = no limit */
    uint32_t max_connecting;           /* maxConnecting, default 2, > 0 */
    int64_t wait_queue_timeout_ms;     /* waitQueueTimeoutMS, default 30000
                                          (CMAP's is 0); 0 = no limit */
    int64_t connect_timeout_ms;        /* per establishment, default 10000; 0 = none */
    int64_t maintenance_interval_ms;   /* pause between background runs, default
                                          1000; < 0 = no background thread */
    bool load_balanced;                /* per-service generations (CMAP LB mode) */
    bool clear_on_connect_error;       /* an establishment error without the
                                          SystemOverloadedError label clears the
                                          pool, as a CMAP driver's SDAM does */
    cpool_event_fn on_event;           /* NULL = no events */
    void *event_ctx;
    cpool_log_fn on_log;               /* NULL = no log records */
    void *log_ctx;
    cpool_log_level log_level;         /* records above it are dropped; the
                                          CMAP messages are DEBUG. Default DEBUG */
    const cpool_clock *clock;          /* NULL = CLOCK_MONOTONIC; must outlive
                                          the pool */
    /* Append new fields here only, each with the version that added it. */

    /* 0.2 */
    const char *profile;               /* "small", "default" or "large": size
                                          and timeout presets; NULL = none */
    bool ignore_env;                   /* do not read CPOOL_* variables */
    cpool_validation validation;       /* before a reused connection is handed
                                          out; default CPOOL_VALIDATE_CHECK */
    int64_t validation_idle_ms;        /* CPOOL_VALIDATE_PING_IDLE: ping when
                                          idle longer than this; default 1000 */
    int64_t max_lifetime_ms;           /* a connection older than this is closed
                                          when next returned or found available
                                          ("lifetime"); default 1800000 (30 min);
                                          0 = no limit */
    double lifetime_jitter;            /* each connection's lifetime is shortened
                                          by a random fraction up to this, so
                                          connections opened together do not
                                          expire together; default 0.05, 0..0.5 */
    uint64_t recycle_after_uses;       /* close a connection after this many
                                          leases ("uses"); default 0 = never */
    int64_t leak_threshold_ms;         /* a lease held this long is reported
                                          (event, WARN log record, stats);
                                          default 0 = off */
    int64_t leak_reclaim_ms;           /* a lease held this long is interrupted
                                          and its slot taken back; the
                                          connection is closed when (if) it
                                          is returned; default 0 = never */
    int64_t startup_wait_ms;           /* cpool_open(): wait up to this long
                                          for the first (or minPoolSize)
                                          connections; default 0 = do not wait */
    uint32_t timing_sample;            /* on the lock-free path, time one lease
                                          in this many at least for the wait
                                          and hold histograms, and every one
                                          when a connection's leases come
                                          10 us apart or more (counts stay
                                          exact; the locked path times every
                                          lease); default 64; 1 = every
                                          lease; 0 = none */
    int64_t backoff_base_ms;           /* after an establishment failure, the
                                          next attempt waits base * 2^(n-1) for
                                          the nth failure in a row, up to
                                          backoff_max_ms; default 200; 0 = no
                                          backoff */
    int64_t backoff_max_ms;            /* default 10000 */
    double backoff_jitter;             /* +- this fraction; default 0.2 */
    uint32_t breaker_threshold;        /* after this many establishment
                                          failures in a row the circuit opens:
                                          a checkout that needs a new
                                          connection fails at once with
                                          CPOOL_EUNAVAILABLE and one probe per
                                          backoff step tries again; default 5;
                                          0 = never opens */
    const char *name;                  /* the pool's name in log records (the
                                          JSON sink's "pool" field); copied;
                                          NULL = its address. Code only. */
    int64_t probe_interval_ms;         /* while establishments fail, the
                                          background thread asks the
                                          connector this often whether the
                                          server accepts connections again
                                          (a connect, nothing sent), and
                                          ends the backoff step when it
                                          does; default 250; 0 = off */
    int64_t keepalive_ms;              /* the background thread gives each
                                          connection left available this long
                                          the connector's cheap check (a ping
                                          when it has none) and replaces the
                                          dead before a checkout meets them;
                                          default 60000; 0 = off */
    cpool_handoff handoff;             /* default CPOOL_HANDOFF_TURNS */
    uint32_t turn_us;                  /* CPOOL_HANDOFF_TURNS: a turn lasts
                                          at most this long (microseconds,
                                          from its first check-in); default
                                          1000, 1..1000000 */
    uint32_t turn_uses;                /* ... and at most this many re-takes;
                                          default 32, 1..1000000 */
    uint32_t turn_wait_us;             /* turns get shorter while checkouts
                                          wait longer than this, and longer
                                          (up to turn_us) while they wait less
                                          than half of it; default 3000,
                                          1..100000000 */
    double backoff_multiplier;         /* each backoff step is the one before
                                          times this: base * m^(n-1) for the
                                          nth failure in a row, up to
                                          backoff_max_ms; default 2, 1..16 */
    cpool_backoff_profile backoff;     /* a named schedule for the backoff_*
                                          fields not set otherwise; default
                                          CPOOL_BACKOFF_QUICK */
    cpool_hooks hooks;                 /* code around connections; all NULL =
                                          none (see cpool_hooks). Code only */
    uint32_t max_waiting;              /* checkouts that may wait in the queue
                                          at once; one more fails at once with
                                          CPOOL_EQUEUEFULL; default 0 = no
                                          limit */
    int64_t stats_interval_ms;         /* the derived figures of cpool_stats
                                          cover the last complete interval of
                                          this length; default 10000; 0 =
                                          since the pool was created */
    /* 0.2 */
    cpool_early_wake early_wake;       /* CPOOL_HANDOFF_TURNS: default
                                          CPOOL_EARLY_WAKE_OFF */
};

/* Fills opts with the defaults; `size` is sizeof the caller's struct. */
CPOOL_API void cpool_options_init(cpool_options *opts, size_t size);

/* ------------------------------------------------------------ configuration
 * Every option with a name (max_pool_size, wait_queue_timeout_ms, ...) can
 * also come from the environment and from the target's query string. The
 * layers, lowest first -- a higher one wins:
 *   1. the built-in default;
 *   2. a profile (options.profile, CPOOL_PROFILE or ?profile=, the highest
 *      of those three that is set picks it);
 *   3. code: each field the program changed from its default;
 *   4. the environment: CPOOL_<NAME> (CPOOL_MAX_POOL_SIZE=20), unless
 *      options.ignore_env;
 *   5. the target's query: the CMAP name (maxPoolSize=20) or the snake_case
 *      one (max_pool_size=20). The pool takes these out of the target
 *      before the connector sees it.
 * cpool_create() applies them; cpool_options_explain() shows the result. */

typedef enum cpool_option_source {
    CPOOL_SOURCE_DEFAULT = 0,
    CPOOL_SOURCE_PROFILE,
    CPOOL_SOURCE_CODE,
    CPOOL_SOURCE_ENV,
    CPOOL_SOURCE_URL
} cpool_option_source;

/* One named option, as resolved. Strings are static or in the struct. */
typedef struct cpool_option_info {
    const char *name;      /* snake_case: "max_pool_size" */
    const char *cmap_name; /* "maxPoolSize"; NULL when it has none */
    const char *env_name;  /* "CPOOL_MAX_POOL_SIZE" */
    const char *allowed;   /* "0..4294967295 (0 = no limit)" */
    const char *help;      /* one line */
    char value[64];        /* effective value */
    char default_value[64];
    cpool_option_source source;
} cpool_option_info;

/* "default", "profile", "code", "env", "url". */
/* 0.2 */
CPOOL_API const char *cpool_option_source_name(cpool_option_source source);

/* Resolves opts as cpool_create() would (the layers above) without creating
 * a pool. Writes up to `ninfo` entries into info (may be NULL) and the
 * number of named options into *count (may be NULL); `effective` (may be
 * NULL) receives the options, with `target` pointing into target_buf (the
 * target without the pool's parameters; target_size may be 0 when
 * effective is NULL). CPOOL_EINVAL names the option, where it came from,
 * the value and what is allowed. */
/* 0.2 */
CPOOL_API int cpool_options_explain(const cpool_options *opts, cpool_option_info *info,
                                    size_t ninfo, size_t *count,
                                    cpool_options *effective, char *target_buf,
                                    size_t target_size, cpool_error *err);

/* The CPOOL_* environment variables that the library does not read but that
 * are within two edits of one it does ("CPOOL_MAX_POOL_SIZ"): one line per
 * variable, "NAME is not a cpool variable and is ignored; did you mean
 * CPOOL_MAX_POOL_SIZE?", joined by newlines into buf (truncated to size;
 * buf may be NULL). Returns how many there are. cpool_create() reports
 * them too, unless ignore_env: as WARN records to the pool's log sink, or
 * when it has none, once per process on stderr. */
/* 0.2 */
CPOOL_API size_t cpool_env_warnings(char *buf, size_t size);

/* Sets one named option from text, as the environment or the query would
 * ("max_pool_size", "20"; CMAP names too), in the code layer. For command
 * lines. CPOOL_EINVAL names the option, the value and what is allowed. */
/* 0.2 */
CPOOL_API int cpool_options_set(cpool_options *opts, const char *name,
                                const char *value, cpool_error *err);

/* ------------------------------------------------------------------ pool */

typedef enum cpool_state {
    CPOOL_STATE_PAUSED = 0,
    CPOOL_STATE_READY,
    CPOOL_STATE_CLOSED,
    /* 0.2: cpool_shutdown() is draining: no new checkouts, leases still
     * coming back; CLOSED when it returns. Only ever reported (counts,
     * statistics, Prometheus): CMAP's state machine is paused meanwhile. */
    CPOOL_STATE_SHUTTING_DOWN,
    /* 0.2: cpool_suspend(): ready underneath, connections kept, checkouts
     * wait until cpool_resume() (reported, not a CMAP state). */
    CPOOL_STATE_SUSPENDED
} cpool_state;

/* A consistent snapshot of the pool's counters. */
typedef struct cpool_counts {
    uint32_t total;     /* pending + available + in use */
    uint32_t available;
    uint32_t pending;
    uint32_t in_use;
    uint32_t waiting;   /* checkouts in the wait queue */
    uint64_t generation;
    cpool_state state;
} cpool_counts;

/* Creates a paused pool and emits ConnectionPoolCreated. Validates every
 * option; on failure *out is NULL and err names the option and value. */
CPOOL_API CPOOL_NODISCARD int cpool_create(const cpool_options *opts,
                                           cpool **out, cpool_error *err);

/* Paused -> ready; emits ConnectionPoolReady and lets the background thread
 * populate. No-op on a ready pool. CPOOL_ECLOSED on a closed pool. */
CPOOL_API int cpool_ready(cpool *pool, cpool_error *err);

#define CPOOL_CLEAR_INTERRUPT_IN_USE 0x1u /* interruptInUseConnections */

/* Bumps the generation (every existing connection becomes stale), pauses the
 * pool, fails every waiter at once with CPOOL_ECLEARED, and with
 * CPOOL_CLEAR_INTERRUPT_IN_USE interrupts pending and in-use connections
 * through the connector without blocking. `cause` (may be NULL) is quoted in
 * the waiters' errors. Emits ConnectionPoolCleared unless already paused.
 * CPOOL_EINVAL in load-balanced mode, CPOOL_ECLOSED on a closed pool. */
CPOOL_API int cpool_clear(cpool *pool, unsigned flags, const cpool_error *cause,
                          cpool_error *err);

/* Load-balanced mode only: bumps one service's generation, without pausing
 * the pool or failing waiters; its older connections become stale. */
CPOOL_API int cpool_clear_service(cpool *pool, const char *service_id,
                                  unsigned flags, const cpool_error *cause,
                                  cpool_error *err);

/* What cpool_shutdown() saw. */
typedef struct cpool_shutdown_report {
    uint32_t in_use_at_start; /* leases out when it began */
    uint32_t returned;        /* of those, checked in within the grace period */
    uint32_t interrupted;     /* still held at the end: interrupted; each is
                                 closed when it comes back */
    uint32_t reclaimed;       /* taken back by leak reclaim meanwhile (not
                                 counted as returned) */
    int64_t elapsed_ms;
} cpool_shutdown_report;

/* Graceful shutdown: new checkouts and waiters fail at once with
 * CPOOL_ESHUTDOWN, available connections are closed, and the call waits up
 * to grace_ms (real time) for the leases out to come back (each is closed
 * as it does). Then it interrupts those still held and closes the pool.
 * Returns within grace_ms plus the time to close connections and interrupt
 * (a cancel request each). report may be NULL. After cpool_drain() it goes
 * on with that drain. CPOOL_ECLOSED when the pool is closed or a shutdown is
 * already under way. */
/* 0.2 */
CPOOL_API int cpool_shutdown(cpool *pool, int64_t grace_ms, cpool_shutdown_report *report,
                             cpool_error *err);

/* Begins a graceful shutdown and returns at once: new checkouts and
 * waiters fail with CPOOL_ESHUTDOWN, available connections close, the
 * state reads shutting_down, and each lease still out is closed as it comes
 * back. cpool_drain_status() tells the progress; cpool_shutdown() (with its
 * grace period) or cpool_close() ends it. Idempotent; CPOOL_ECLOSED on a
 * closed pool. Since 0.2. */
CPOOL_API int cpool_drain(cpool *pool, cpool_error *err);
/* The progress of a drain: leases out when it began, returned since,
 * reclaimed, and elapsed_ms (interrupted stays 0 until cpool_shutdown()).
 * The leases still out are in_use_at_start - returned - reclaimed.
 * CPOOL_ESTATE when no drain began. Since 0.2. */
CPOOL_API int cpool_drain_status(cpool *pool, cpool_shutdown_report *out);

/* Waits until the pool holds `n` established connections (n = 0: the
 * larger of 1 and minPoolSize), making them through checkouts that follow
 * the backoff and the circuit breaker, for at most timeout_ms. On failure
 * returns the last establishment error (CPOOL_ECONNECT with its labels),
 * or CPOOL_ETIMEDOUT. The pool must be ready. */
/* 0.2 */
CPOOL_API int cpool_wait_connected(cpool *pool, uint32_t n, int64_t timeout_ms,
                                   cpool_error *err);

/* Creates a pool for `target` with the built-in connector its scheme names
 * (cpool_connector_for), makes it ready and, when startup_wait_ms > 0,
 * waits for its first connections (cpool_wait_connected). `opts` may be
 * NULL (defaults); its target and connector are ignored. */
/* 0.2 */
CPOOL_API CPOOL_NODISCARD int cpool_open(const char *target, const cpool_options *opts,
                                         cpool **out, cpool_error *err);

/* Closes the pool for good: closes available connections, fails waiters,
 * emits ConnectionPoolClosed. Leases still out are closed at check-in.
 * Idempotent. */
CPOOL_API void cpool_close(cpool *pool);

/* Closes (if needed), stops the background thread and frees the pool. Call
 * it once every lease is back; a lease still out is closed and its handle
 * becomes invalid. NULL is a no-op. */
CPOOL_API void cpool_destroy(cpool *pool);

/* Extended checkout: a label naming the holder for leak reports, and the
 * tenant whose limits apply (see cpool_tenant_set). Fill with
 * `cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = -1}`. */
typedef struct cpool_cancel cpool_cancel;

typedef struct cpool_checkout_opts {
    size_t struct_size;
    int64_t timeout_ms;   /* as cpool_checkout() */
    const char *label;    /* copied (up to 63 bytes); NULL = none */
    const char *tenant;   /* NULL = no tenant */
    cpool_cancel *cancel; /* 0.2: cpool_cancel_trigger() on it ends the
                             checkout's wait with CPOOL_ECANCELED; NULL =
                             none */
} cpool_checkout_opts;

/* ------------------------------------------------------------ async checkout
 * For event loops, where a blocking checkout would stall every request on
 * the loop. A completion queue (one per loop thread) has a descriptor that
 * becomes readable when checkouts completed; the loop then calls
 * cpool_async_process(), which runs their callbacks on its thread. The
 * semantics are cpool_checkout_with()'s: one FIFO queue with the blocking
 * checkouts, the same deadlines, tenants, cancellation tokens, and clear,
 * close and shutdown fail it. Nothing on the loop's thread blocks: an
 * establishment, a validation ping, a session reset between tenants or a
 * before_lease hook runs on a short-lived helper thread. The pool needs its
 * background thread (maintenance_interval_ms >= 0), which ends waits at
 * their deadlines. Check the lease in with cpool_checkin() as usual.
 * Adapters: cpool_uv.h (libuv), cpool_event.h (libevent). Since 0.2. */
typedef struct cpool_async cpool_async;

/* conn is the lease (rc 0) or NULL (rc < 0, err says why); err is
 * borrowed for the call. Runs inside cpool_async_process(), never under a
 * pool lock; it may check out (async or not) and check in. */
typedef void (*cpool_async_fn)(cpool_conn *conn, int rc, const cpool_error *err, void *arg);

CPOOL_API CPOOL_NODISCARD int cpool_async_new(cpool_async **out);
/* Frees a queue whose checkouts have all completed and been processed
 * (cpool_async_pending() is 0). NULL is a no-op. */
CPOOL_API void cpool_async_free(cpool_async *q);
/* Readable (POLLIN) while completions wait for cpool_async_process(). */
CPOOL_API int cpool_async_fd(const cpool_async *q);
/* Runs the callbacks of the completed checkouts, in completion order, on
 * the calling thread; returns how many ran. Completions arriving while it
 * runs wait for the next call (the descriptor stays readable). */
CPOOL_API int cpool_async_process(cpool_async *q);
/* Checkouts accepted and not yet delivered to their callback. */
CPOOL_API unsigned cpool_async_pending(const cpool_async *q);

/* Starts a checkout; returns 0 once accepted, and the callback runs later
 * from cpool_async_process() -- never from inside this call, even when a
 * connection was free. An error return (CPOOL_EINVAL, CPOOL_ENOMEM) means
 * no callback will run. o may be NULL (the pool's limits). Every
 * completion must be processed before the pool is destroyed. */
CPOOL_API int cpool_checkout_async(cpool *pool, cpool_async *q, const cpool_checkout_opts *o,
                                   cpool_async_fn cb, void *arg, cpool_error *err);

/* ------------------------------------------------------------ cancellation
 * A token cancels the checkouts that wait with it, from any thread: each
 * leaves the queue at once with CPOOL_ECANCELED, leaving nothing behind.
 * Triggering is final (a checkout started with a triggered token fails at
 * once). One token may serve any number of checkouts, of any pools; it
 * must outlive them. A checkout that is already establishing or
 * validating its connection, or was just handed one, completes. */
/* 0.2 */
CPOOL_API CPOOL_NODISCARD int cpool_cancel_new(cpool_cancel **out);
/* 0.2: NULL is a no-op; no checkout may still be using it. */
CPOOL_API void cpool_cancel_free(cpool_cancel *token);
/* 0.2: async-signal-unsafe; idempotent. */
CPOOL_API void cpool_cancel_trigger(cpool_cancel *token);
/* 0.2 */
CPOOL_API bool cpool_cancel_triggered(const cpool_cancel *token);

/* 0.2 */
CPOOL_API CPOOL_NODISCARD int cpool_checkout_with(cpool *pool, const cpool_checkout_opts *o,
                                                  cpool_conn **out, cpool_error *err);

/* A latency histogram with log-spaced buckets: bucket i counts values up to
 * cpool_histogram_bound_ns(i) (1 us * 2^(i/2), rounded), the last one
 * everything above. Exact count, sum and max. */
#define CPOOL_HIST_BUCKETS 48
typedef struct cpool_histogram {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t max_ns;
    uint64_t buckets[CPOOL_HIST_BUCKETS];
} cpool_histogram;

/* ------------------------------------------------------------------ tenants
 * Several tenants may share one pool. Each has a cap on the connections it
 * holds at once (0 = none) and may have a guaranteed minimum that the
 * others cannot take. A checkout names its tenant (cpool_checkout_with);
 * queued checkouts are served in arrival order among those whose tenant
 * may take one more, so a tenant at its cap never holds up another. A
 * checkout that times out while its tenant is at its cap gets
 * CPOOL_ETENANT. Declare tenants between cpool_create() and cpool_ready()
 * (that switches the pool to tenant accounting, which takes the pool lock
 * on every checkout); limits may change and tenants be added later. */
/* 0.2 */
CPOOL_API int cpool_tenant_set(cpool *pool, const char *tenant, uint32_t max_in_use,
                               uint32_t min_reserved, cpool_error *err);

/* Budgets beyond the connection cap, per tenant. Fill with
 * `cpool_tenant_budget b = {.struct_size = sizeof b}` (all off). */
typedef struct cpool_tenant_budget {
    size_t struct_size;
    double rate;          /* checkouts per second, a token bucket: a checkout
                             finding it empty fails at once with CPOOL_ERATE;
                             0 = no limit */
    uint32_t burst;       /* the bucket's size (checkouts at once after a
                             quiet spell); 0 = one second's worth, at least 1 */
    int64_t max_hold_ms;  /* a lease held longer is reported
                             (ConnectionLeakSuspected with the tenant, WARN
                             log record, holds_exceeded); 0 = none */
    bool reclaim;         /* ... and taken back: interrupted, its slot
                             returned, closed when it comes back
                             ("reclaimed") */
} cpool_tenant_budget;

typedef struct cpool_tenant_stats {
    uint32_t max_in_use, min_reserved;
    uint32_t in_use;        /* leases held now */
    uint32_t waiting;       /* its checkouts in the queue */
    uint64_t checkouts_ok;
    uint64_t limit_timeouts; /* CPOOL_ETENANT */
    /* 0.2: checkouts served with a connection another tenant used last,
     * whose session was therefore reset in full first (connector discard),
     * and those served with one this tenant used last (no reset needed). */
    uint64_t switched, affine;
    /* 0.2: checkouts started (leases are checkouts_ok), those that had to
     * queue, the wait of its leases, refusals of its rate budget
     * (CPOOL_ERATE; the cap's are limit_timeouts), leases held past its
     * max_hold_ms and those reclaimed, and the budget in force. */
    uint64_t checkouts, waits;
    cpool_histogram wait;
    uint64_t rate_refusals;
    uint64_t holds_exceeded, holds_reclaimed;
    cpool_tenant_budget budget;
} cpool_tenant_stats;

/* Sets (replaces) tenant's budgets; the tenant must be declared
 * (cpool_tenant_set). Hold limits are checked by the background thread,
 * within a maintenance interval. CPOOL_EINVAL for an unknown tenant or a
 * bad value. */
/* 0.2 */
CPOOL_API int cpool_tenant_budget_set(cpool *pool, const char *tenant,
                                      const cpool_tenant_budget *budget, cpool_error *err);

/* CPOOL_EINVAL for an unknown tenant. */
/* 0.2 */
CPOOL_API int cpool_get_tenant_stats(cpool *pool, const char *tenant,
                                     cpool_tenant_stats *out);

/* The tenants' statistics in the Prometheus text format, as
 * cpool_stats_prometheus() writes the pool's: every db_client_connection_
 * tenant_* family once, one series per tenant (label tenant="name"; the
 * unnamed tenant of checkouts without one is tenant=""). Nothing for a pool
 * without tenants. Returns the length it needed, like snprintf. */
/* 0.2 */
CPOOL_API size_t cpool_tenants_prometheus(cpool *pool, const char *pool_name,
                                          const char *extra_labels, char *buf, size_t size);
/* The name of the i-th tenant (0-based) in declaration order, NULL past the
 * end; borrowed until cpool_destroy(). */
/* 0.2 */
CPOOL_API const char *cpool_tenant_name(cpool *pool, size_t i);

/* A checkout labelled for leak reports: cpool_checkout_with() with only a
 * timeout and a label (copied). Since 0.2. */
CPOOL_API CPOOL_NODISCARD int cpool_checkout_at(cpool *pool, int64_t timeout_ms,
                                                const char *label, cpool_conn **out,
                                                cpool_error *err);

/* A checkout labelled with the calling file and line ("app.c:42"). A plain
 * call, so it works in C and C++ alike. */
#define cpool_checkout_here(pool, timeout, out, err)                          \
    cpool_checkout_at((pool), (timeout), __FILE__ ":" CPOOL_STR_(__LINE__), (out), (err))

/* Leases a connection. timeout_ms < 0: the pool's own limits apply
 * (waitQueueTimeoutMS for the wait, connect_timeout_ms for establishing);
 * timeout_ms >= 0: one deadline covers waiting, establishing and
 * validating (0 = do not wait). Returns 0, CPOOL_ETIMEDOUT, CPOOL_ECLEARED
 * (paused), CPOOL_ECLOSED, CPOOL_ESHUTDOWN, CPOOL_ECONNECT (with labels),
 * CPOOL_EUNAVAILABLE (circuit open), CPOOL_ETENANT (cpool_checkout_with),
 * CPOOL_ENOMEM, CPOOL_ESYS, CPOOL_EINVAL (bad arguments). */
CPOOL_API CPOOL_NODISCARD int cpool_checkout(cpool *pool, int64_t timeout_ms,
                                             cpool_conn **out, cpool_error *err);

#define CPOOL_CHECKIN_BROKEN 0x1u /* close it: session state unknown or errored */

/* Returns a lease. The connection is reset through the connector, or closed
 * when perished, broken or the pool is closed. A connection of another pool
 * gives CPOOL_EFOREIGN and one that is not checked out CPOOL_EDOUBLE; both
 * leave the pool untouched. */
CPOOL_API int cpool_checkin(cpool *pool, cpool_conn *conn, unsigned flags,
                            cpool_error *err);

/* ---------------------------------------------------------------- run
 * One call that checks out, runs a function with the lease and checks in,
 * optionally retrying an idempotent operation on errors that carry
 * CPOOL_LABEL_RETRYABLE (as MongoDB drivers retry reads). */

/* The work: returns 0, or non-zero (preferably a negative CPOOL_E* code)
 * with err filled; `err` is never NULL. Keep the lease to this call. */
typedef int (*cpool_run_fn)(cpool_conn *conn, void *arg, cpool_error *err);

/* Fill with `cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = -1}`. */
typedef struct cpool_run_opts {
    size_t struct_size;
    int64_t timeout_ms;     /* one deadline for everything: checkouts, the
                               function's attempts (as far as it honours
                               it, see cpool_run_deadline_ms) and the pauses;
                               < 0 = each checkout as cpool_checkout(-1) */
    uint32_t retries;       /* further attempts after a failure labelled
                               RetryableError; 0 = none */
    int64_t retry_delay_ms; /* pause before the first retry, then times
                               backoff_multiplier, +- backoff_jitter, never
                               past the deadline; 0 = none */
    const char *label;      /* as cpool_checkout_opts */
    const char *tenant;
} cpool_run_opts;

/* Runs fn with a lease (o NULL: one attempt, the pool's limits). After
 * fn returns, the lease is checked in; it is closed instead (checked in
 * broken) when fn failed in a way that leaves the connection in doubt:
 * any failure whose err->kind is not CPOOL_FAIL_SERVER (an answer from the
 * server leaves the session usable; the connector's reset cleans it). A
 * failure labelled RetryableError -- in fn or in the checkout -- is tried
 * again while retries and time remain, so the next attempt never runs on a
 * connection in doubt. Returns 0, or the last attempt's code with its error
 * (CPOOL_EINVAL for a NULL pool or fn). Retries are counted in cpool_stats
 * (retries, retries_succeeded, retries_exhausted). Since 0.2. */
CPOOL_API int cpool_run(cpool *pool, const cpool_run_opts *o, cpool_run_fn fn, void *arg,
                        cpool_error *err);

/* Inside fn: the milliseconds left before cpool_run's deadline (for a
 * statement timeout), -1 when it has none, 0 when it has passed. Only on
 * the thread running fn; -1 elsewhere. Since 0.2. */
CPOOL_API int64_t cpool_run_deadline_ms(void);

/* ---------------------------------------------------------------- recycling
 * Replacing connections without interrupting anyone, e.g. after rotating
 * credentials (a new password in the passfile the connector reads) or a
 * server-side setting that only new sessions pick up. Unlike cpool_clear()
 * nothing pauses, no waiter fails and no lease is interrupted: a marked
 * connection is closed with reason "recycled" when it comes back from its
 * lease, when a checkout or the background thread finds it available, or
 * as soon as its establishment ends; new connections replace it as the
 * pool needs them (minPoolSize, checkouts). Generations do not move. */

/* Marks every connection the pool has now (available, leased, being
 * established) for recycling; *marked (may be NULL) gets their number.
 * The statistics' recycle_pending counts those still open. CPOOL_ECLOSED
 * on a closed pool. Since 0.2. */
CPOOL_API int cpool_recycle(cpool *pool, uint32_t *marked, cpool_error *err);

/* Marks one lease for recycling: it is closed with reason "recycled" at its
 * check-in, whatever flags that passes (e.g. the lease changed session state
 * that the connector's reset cannot undo). May be called any time during the
 * lease. CPOOL_EINVAL for NULL, CPOOL_EDOUBLE when it is not checked out.
 * Since 0.2. */
CPOOL_API int cpool_conn_recycle(cpool_conn *conn);

/* Lease accessors; valid until cpool_checkin(). */
CPOOL_API uint64_t cpool_conn_id(const cpool_conn *conn);
CPOOL_API uint64_t cpool_conn_generation(const cpool_conn *conn);
/* Borrowed; NULL outside load-balanced mode. */
CPOOL_API const char *cpool_conn_service_id(const cpool_conn *conn);
/* Borrowed PGconn *, redisContext *, sqlite3 * ...; valid until checkin. */
CPOOL_API void *cpool_conn_native(const cpool_conn *conn);
/* The pool a lease belongs to (a cluster's endpoint pool, for one). 0.2 */
CPOOL_API cpool *cpool_conn_pool(const cpool_conn *conn);

/* Runs one statement or command on a lease through its connector and
 * discards the result ("SELECT 1", "PING"): what tools use to drive any
 * database the same way. CPOOL_EINVAL when the connector cannot. */
/* 0.2 */
CPOOL_API int cpool_conn_execute(cpool_conn *conn, const char *command, cpool_error *err);

/* ------------------------------------------------------------ runtime control */

/* Changes maxPoolSize (0 = no limit) and minPoolSize of a live pool. A
 * larger maximum serves waiters at once; a larger minimum is filled by the
 * background thread. A smaller maximum closes available connections beyond
 * it at once and leased ones as they come back (reason "resized"); no lease
 * is interrupted. CPOOL_EINVAL when min > max or the tenants' guaranteed
 * minimums would exceed max (nothing changes), CPOOL_ECLOSED on a closed
 * pool. Since 0.2. */
CPOOL_API int cpool_resize(cpool *pool, uint32_t max_pool_size, uint32_t min_pool_size,
                           cpool_error *err);

/* Suspends the pool without dropping anything (HikariCP's suspendPool,
 * PgBouncer's PAUSE): connections stay open, leases go on and come back,
 * but new and queued checkouts wait -- within their deadlines -- until
 * cpool_resume(). The state reads CPOOL_STATE_SUSPENDED. Unlike
 * cpool_clear() no generation moves and nobody fails at once. Idempotent;
 * CPOOL_ECLOSED on a closed pool, CPOOL_ESTATE on a paused (cleared) one.
 * Since 0.2. */
CPOOL_API int cpool_suspend(cpool *pool, cpool_error *err);
/* Serves the waiting checkouts in their order. Idempotent. Since 0.2. */
CPOOL_API int cpool_resume(cpool *pool, cpool_error *err);

/* Runs one maintenance pass now on the calling thread: closes perished
 * available connections, populates to minPoolSize. For pools without a
 * background thread and for tests. */
CPOOL_API int cpool_maintain(cpool *pool, cpool_error *err);

/* Wakes the maintenance thread so it re-reads the clock at once (after a
 * fake clock moved). */
CPOOL_API void cpool_wake(cpool *pool);

CPOOL_API void cpool_get_counts(cpool *pool, cpool_counts *out);

/* ------------------------------------------------------------------ stats */


/* Upper bound of bucket i in ns; INT64_MAX for the last bucket. */
/* 0.2 */
CPOOL_API int64_t cpool_histogram_bound_ns(int i);
/* The q-quantile (0 <= q <= 1) in ns, interpolated inside its bucket and
 * never above max_ns; 0 for an empty histogram. */
/* 0.2 */
CPOOL_API int64_t cpool_histogram_quantile(const cpool_histogram *h, double q);

/* Close reasons counted in cpool_stats.closed[]: the CMAP ones and the
 * pool's own. */
#define CPOOL_CLOSE_REASON_SLOTS 16 /* > every cpool_close_reason (0.2: was 10) */

/* Checkout failures counted in cpool_stats.checkout_failures[], by code:
 * index = -code (CPOOL_ETIMEDOUT -> 3). */
#define CPOOL_ERROR_SLOTS 24

/* A snapshot of what the pool has done since it was created. The counts
 * are read under the pool's lock (consistent with each other); the
 * counters and histograms are summed from per-connection cells without
 * stopping the pool, so a snapshot taken while leases come and go may be a
 * few operations behind, never torn. */
typedef struct cpool_stats {
    size_t struct_size;          /* set by the caller: sizeof(cpool_stats) */
    cpool_counts counts;
    uint32_t max_pool_size;      /* effective options, for ratios */
    uint32_t min_pool_size;
    uint64_t connections_created;   /* ConnectionCreated */
    uint64_t connections_ready;     /* established (ConnectionReady) */
    uint64_t connect_failures;      /* establishments that failed */
    uint64_t closed[CPOOL_CLOSE_REASON_SLOTS]; /* by cpool_close_reason */
    uint64_t checkouts;             /* ConnectionCheckOutStarted */
    uint64_t checkouts_ok;          /* ConnectionCheckedOut */
    uint64_t checkouts_reused;      /* ... served by an existing connection */
    uint64_t checkout_failures[CPOOL_ERROR_SLOTS]; /* by -code */
    uint64_t checkins;
    uint64_t validations;           /* validation runs on reused connections */
    uint64_t validation_failures;
    cpool_histogram wait;           /* checkout: start to lease */
    cpool_histogram hold;           /* lease: checkout to checkin */
    cpool_histogram connect;        /* successful establishments */
    /* Establishment failures in a row and the circuit breaker. */
    uint32_t connect_fail_streak;
    bool breaker_open;
    uint64_t breaker_opens;         /* times it opened */
    uint64_t leaks_suspected;       /* leases held past leak_threshold_ms */
    uint64_t leaks_reclaimed;       /* ... and past leak_reclaim_ms */
    int64_t last_connect_error_age_ns; /* -1 when none */
    cpool_error last_connect_error;
    /* 0.2 */
    uint64_t capacity_refusals;     /* establishments the server refused for
                                       lack of slots (CPOOL_FAIL_CAPACITY);
                                       also in connect_failures, never in the
                                       circuit's streak */
    uint64_t keepalive_checks;      /* idle connections checked in the
                                       background (keepalive_ms) */
    uint64_t keepalive_failures;    /* ... found dead and closed ("error") */
    uint64_t probes, probes_ok;     /* server probes while establishments
                                       failed (probe_interval_ms), and those
                                       that found it accepting again */
    uint64_t recycles;              /* cpool_recycle() calls */
    uint32_t recycle_pending;       /* connections marked for recycling and
                                       not closed yet; 0 once a recycle
                                       has replaced everything */
    /* cpool_run(): attempts after the first, calls that succeeded after a
     * retry, and calls that failed on a retryable error with no retry or
     * time left. */
    uint64_t retries, retries_succeeded, retries_exhausted;
    /* How long the oldest queued checkout has waited (PgBouncer's maxwait);
     * 0 when none waits. */
    int64_t oldest_wait_ns;
    /* Derived figures, computed here rather than by every caller, over the
     * last complete stats_interval_ms (until one has passed, and with
     * stats_interval_ms 0: since the pool was created until now). A ratio
     * is -1 and a time -1 when the interval had nothing to divide. The
     * background thread closes intervals; without it cpool_get_stats()
     * does, so an interval may then be longer (interval_ns says). */
    int64_t interval_ns;             /* the length of that interval */
    double reuse_ratio;              /* checkouts served by an open
                                        connection / checkouts that got one */
    double validation_failure_ratio; /* validation_failures / validations */
    double checkout_success_ratio;   /* checkouts_ok / checkouts */
    int64_t wait_mean_ns, wait_p99_ns; /* checkout wait (timed leases) */
    int64_t hold_mean_ns, hold_p99_ns; /* lease hold time (timed leases) */
    /* Turns: waiters woken ahead of their handoff (early_wake), and whether
     * early wake-ups are given now (with CPOOL_EARLY_WAKE_AUTO, the latest
     * decision), with the CPU other processes used at the latest
     * measurement (in CPUs; -1 before the first or when it cannot be
     * measured). */
    uint64_t early_wakeups;
    bool early_wake;
    double cpu_others;
    /* Turns: checkouts by threads back from elsewhere that took a
     * connection left free ahead of queued checkouts, while the oldest of
     * those had waited less than turn_wait_us. */
    uint64_t barges;
} cpool_stats;

/* Fills `out` (out->struct_size must be set, e.g. with
 * `cpool_stats s = {.struct_size = sizeof s}`). CPOOL_EINVAL on NULL or a
 * too small struct. */
/* 0.2 */
CPOOL_API int cpool_get_stats(cpool *pool, cpool_stats *out);

/* Writes the statistics in the Prometheus text exposition format (0.0.4)
 * into buf: gauges for the counts, counters for the totals, histograms in
 * seconds. Metric names follow OpenTelemetry's db.client.connection.*
 * conventions where they fit (db_client_connection_count{state="idle"|
 * "used"}, db_client_connection_wait_time_seconds, ...) and carry
 * pool="<name>" (and `extra_labels`, e.g. "service=\"api\"", may be NULL).
 * Returns the length it needed, like snprintf. */
/* 0.2 */
CPOOL_API size_t cpool_stats_prometheus(const cpool_stats *stats, const char *pool_name,
                                        const char *extra_labels, char *buf,
                                        size_t size);
/* Several pools in one exposition, as one /metrics endpoint serves them:
 * each pool's statistics and its tenants' series (cpool_stats_prometheus,
 * cpool_tenants_prometheus) with every family's HELP and TYPE written once
 * and all the pools' samples under it. names[i] (or NULL, or names NULL)
 * labels pool i; NULL = its name (options.name, else its address). Returns
 * the length it needed, like snprintf. Since 0.2. */
CPOOL_API size_t cpool_prometheus_pools(cpool *const *pools, const char *const *names,
                                        size_t n, const char *extra_labels, char *buf,
                                        size_t size);

/* The pool's address; borrowed, valid until cpool_destroy(). */
CPOOL_API const char *cpool_address(const cpool *pool);

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_H */
