/* cluster_int.h -- the cluster's insides, shared by its three files:
 *   cluster.c  open and close, targets, reading (info, Prometheus);
 *   monitor.c  a thread per endpoint: checks, and what a change does;
 *   select.c   checkout and check-in: which endpoint serves.
 *
 * The cluster sits above the core, as the registry does: it reaches its
 * pools only through the public API and the few calls of core/above.h.
 *
 * Locking: `mu` guards every field marked "mu". It is never held while a
 * pool's function runs (a pool's lock is never taken under it), nor while
 * a callback runs. A monitor's connection (`native`) belongs to its thread.
 */
#ifndef CPOOL_CLUSTER_INT_H
#define CPOOL_CLUSTER_INT_H

#include "cpool/cpool_cluster.h"
#include "../connectors/registry.h"
#include "../core/above.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct endpoint {
    struct cpool_cluster *c;
    size_t index;
    char *target;              /* owned; has the password: never shown */
    char *monitor_target;      /* owned; the monitor's own (application name) */
    const cpool_connector *cx;
    void *mctx;                /* the monitor's connector context */
    bool own_mctx;
    cpool *pool;
    const char *address;       /* cpool_address(pool) */
    pthread_t thread;
    bool started;
    void *native;              /* the monitor's connection; its thread only */

    /* mu */
    cpool_endpoint_state state;
    cpool_role role;
    int64_t rtt_ns;
    int64_t lag_ms;
    uint64_t epoch;
    uint64_t checks, check_failures, changes;
    int64_t since_ns;
    int64_t last_check_ns;     /* when the last check ended; 0 = never */
    bool asked;                /* a check was asked for */
    cpool_error last_error;

    _Atomic uint64_t selected;
} endpoint;

struct cpool_cluster {
    pthread_mutex_t mu;
    pthread_cond_t wake;       /* monitors: a check asked, or stop */
    pthread_cond_t changed;    /* checkouts: the topology changed */
    uint64_t version;          /* mu: bumped on every change */
    bool stopping;             /* mu */
    int stop_pipe[2];          /* readable once stopping: ends a monitor's
                                  connect or round trip at once */
    endpoint *ep;
    size_t n;
    cpool_cluster_options o;
    cpool_options popts;       /* the pools' options as given */
    cpool_want want;           /* the default */
    uint64_t rng;              /* mu */
    uint64_t max_epoch;        /* mu: the newest primary epoch seen */
    _Atomic uint64_t st_checkouts, st_checkouts_ok, st_no_endpoint, st_moved_on;
    _Atomic uint64_t st_retries, st_retries_ok, st_retries_exhausted, st_changes;
};



int64_t cpool__cluster_now(void);
void cpool__cluster_ask_locked(struct cpool_cluster *c, endpoint *e);
void *cpool__monitor_main(void *arg);

#endif /* CPOOL_CLUSTER_INT_H */
