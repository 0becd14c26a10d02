/* bench.h -- the state of one `cpool bench` run, shared by the run
 * (bench.c), its report (report.c) and its chart (plot.c). */
#ifndef CPOOL_CLI_BENCH_H
#define CPOOL_CLI_BENCH_H

#include "cli.h"

#include <cpool/cpool_cluster.h>

#include <pthread.h>
#include <stdatomic.h>

/* ------------------------------------------------------------ latencies
 * A log-linear histogram: exact below 16 ns, then 16 buckets per power of
 * two up to 2^41 ns (36 minutes), so a quantile is within 1/32 of the true
 * value. The tool keeps its own instead of reading the pool's: it times
 * every operation (the pool samples leases, timing_sample, on its
 * lock-free path) and at a finer resolution. */
#define LAT_BUCKETS 608

/* Written by one worker, read by the sampler while it runs: relaxed atomics
 * make that a defined race-free read without a locked instruction. */
typedef struct lat_hist {
    _Atomic uint64_t b[LAT_BUCKETS];
    _Atomic uint64_t count, sum_ns, max_ns;
} lat_hist;

/* A plain snapshot, merged from several lat_hist. */
typedef struct lat_sum {
    uint64_t b[LAT_BUCKETS];
    uint64_t count, sum_ns, max_ns;
} lat_sum;

void lat_add(lat_hist *h, int64_t ns);
void lat_collect(lat_sum *into, const lat_hist *h); /* adds h to into */
/* into = a - b, bucket by bucket (a later snapshot minus an earlier one);
 * max_ns is a's. */
void lat_diff(lat_sum *into, const lat_sum *a, const lat_sum *b);
/* q in [0, 1]: the midpoint of the bucket holding that rank, never above
 * the maximum; 0 when empty. */
int64_t lat_quantile(const lat_sum *s, double q);

/* ------------------------------------------------------------ the run */

#define BENCH_MAX_TENANTS 32
#define BENCH_MAX_ENDPOINTS 64 /* a cluster's, as cpool_cluster_open allows */
#define BENCH_MAX_TOPO 64      /* topology changes the report lists */

/* A topology change seen during the run. */
typedef struct topo_note {
    int64_t time_ns;           /* CLOCK_MONOTONIC */
    size_t endpoint;
    cpool_topology_change type;
    cpool_role from, to;
} topo_note;

typedef struct tenant_cfg {
    char name[64];
    unsigned weight;
    uint32_t max_in_use;   /* 0 = no cap */
    uint32_t min_reserved;
    double rate;           /* checkouts/s budget; 0 = none */
    int threads;           /* given out by weight */
    bool have_stats;       /* stats read from the pool */
    cpool_tenant_stats stats;
} tenant_cfg;

typedef struct worker {
    struct bench *b;
    pthread_t th;
    bool started;
    int index;
    int tenant;           /* index into b->tenants, -1 = none */
    uint32_t rng;         /* xorshift state for the SQLite mix */
    _Atomic uint64_t ops; /* finished operations, ok or not */
    _Atomic uint64_t ok;
    _Atomic uint64_t failed; /* ops = ok + failed once an operation ends */
    _Atomic uint64_t fail_checkout[CPOOL_ERROR_SLOTS]; /* by -code */
    _Atomic uint64_t fail_execute[CPOOL_ERROR_SLOTS];
    lat_hist wait; /* successful checkouts */
    lat_hist op;   /* statements, ok or not */
    /* A cluster's operations by endpoint: reads and writes that went there. */
    _Atomic uint64_t ep_reads[BENCH_MAX_ENDPOINTS], ep_writes[BENCH_MAX_ENDPOINTS];
} worker;

/* One point of the timeline, taken every interval. */
typedef struct sample {
    double t_s;          /* end of the interval, since the start */
    double ops_s;        /* operations per second over the interval */
    uint32_t in_use, available, pending, waiting;
    int64_t wait_p99_ns; /* over the interval's successful checkouts */
    uint64_t errors;     /* failed operations in the interval */
} sample;

typedef enum statement_kind {
    STMT_FIXED = 0,  /* --statement or the scheme's default */
    STMT_SQLITE_MIX  /* the embedded database's read/write mix */
} statement_kind;

typedef struct bench {
    /* Configuration, fixed before the workers start. */
    const char *target;       /* as given, or the embedded default */
    char target_red[512];     /* redacted, for every output */
    char address[256];        /* the pool's address, scrubbed of passwords */
    char tmpdir[64];          /* the embedded database's directory, "" = none */
    const cpool_connector *cx;
    const char *statement;
    statement_kind stmt_kind;
    bool no_execute;          /* the connector cannot run statements: the hold
                                 time is the operation */
    int threads;
    double duration_s;        /* 0 = no limit (ops mode) */
    uint64_t ops_limit;       /* 0 = no limit */
    double hold_ms;
    int64_t timeout_ms;       /* checkout timeout, -1 = the pool's own */
    int64_t interval_ms;
    bool events;              /* count through an on_event subscriber */
    bool quiet;
    bool tty;                 /* progress rewritten in place */
    double max_error_rate;
    const char *json_path;
    const char *plot_path;
    const char *plot_engine;  /* "auto", "builtin", "gnuplot" */
    tenant_cfg tenants[BENCH_MAX_TENANTS];
    int ntenants;

    cpool_options opts;       /* what cpool_create gets */
    cpool_option_info *info;  /* options in effect, from cpool_options_explain */
    size_t ninfo;

    /* A multi-endpoint target (or --want): a cluster instead of one pool. */
    bool cluster_mode;
    cpool_want want;
    bool want_set;
    double write_ratio;       /* fraction of operations that are writes */
    const char *write_statement;
    int64_t max_lag_ms;

    /* The run. */
    cpool *pool;              /* NULL in cluster mode */
    cpool_cluster *cluster;
    size_t nendpoints;
    cpool_endpoint_info endpoints[BENCH_MAX_ENDPOINTS]; /* at the end */
    cpool_stats ep_stats[BENCH_MAX_ENDPOINTS];
    pthread_mutex_t topo_mu;
    topo_note topo[BENCH_MAX_TOPO];
    int ntopo;
    worker *workers;
    atomic_bool stop;
    _Atomic uint64_t claimed; /* ops handed out in ops mode */
    char started_at[32];      /* UTC */
    int64_t t0_ns, t_end_ns;

    /* Counted by the event subscriber. */
    _Atomic uint64_t ev[CPOOL_EV_COUNT_];

    /* The first message seen for each error code, for the report. */
    pthread_mutex_t msg_mu;
    atomic_bool have_msg[CPOOL_ERROR_SLOTS];
    char msg[CPOOL_ERROR_SLOTS][256];

    sample *samples;
    size_t nsamples, cap_samples;

    /* Results, filled after the workers stopped. */
    uint64_t ops, ok;
    uint64_t fail_checkout[CPOOL_ERROR_SLOTS], fail_execute[CPOOL_ERROR_SLOTS];
    lat_sum wait, op;
    uint64_t warmup_checkouts; /* the tool's own, before the timed run */
    cpool_stats stats;         /* after the pool was closed */
    int exit_code;
} bench;

/* The report on stdout (text) and in JSON; report.c. */
void report_text(const bench *b, FILE *f);
void report_json(const bench *b, FILE *f);
/* The event counts the report shows: from the subscriber, or derived from
 * the statistics with --no-events. */
void report_event_counts(const bench *b, uint64_t out[CPOOL_EV_COUNT_]);

/* Writes the chart of b's timeline to path. engine: "auto" (gnuplot when
 * on PATH, else built in), "builtin" or "gnuplot". Returns 0, or -1 with a
 * message in errbuf. plot.c. */
int plot_write(const bench *b, const char *path, const char *engine, char *errbuf,
               size_t errsize);
/* True when gnuplot is on PATH. */
bool plot_have_gnuplot(void);

#endif /* CPOOL_CLI_BENCH_H */
