/* select.c -- which endpoint serves a checkout (MongoDB's Server
 * Selection, on the roles and round trips the monitors keep):
 *   1. suitable: up (not stale), the role the checkout wants, a replica's
 *      lag within max_lag_ms when asked, the pool's circuit closed, and
 *      not already failed during this checkout;
 *   2. within local_threshold_ms of the fastest suitable one;
 *   3. of two different ones picked at random, the one with fewer leases
 *      and waiters.
 * When nothing suits, the checkout asks every monitor for a check and
 * waits for the topology to change, until its deadline.
 */
#include "cluster_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_EP 64

typedef struct pick {
    size_t idx[MAX_EP];
    size_t n;
} pick;

static void suitable_locked(cpool_cluster *c, cpool_want w, int64_t max_lag,
                            const bool *failed, const bool *open, struct pick *out);

static bool role_ok(cpool_role r, cpool_want w, bool primary_pass)
{
    switch (w) {
    case CPOOL_WANT_PRIMARY: return r == CPOOL_ROLE_PRIMARY;
    case CPOOL_WANT_REPLICA: return r == CPOOL_ROLE_REPLICA;
    case CPOOL_WANT_PRIMARY_PREFERRED:
        return primary_pass ? r == CPOOL_ROLE_PRIMARY : r == CPOOL_ROLE_REPLICA;
    case CPOOL_WANT_REPLICA_PREFERRED:
        return primary_pass ? r == CPOOL_ROLE_REPLICA : r == CPOOL_ROLE_PRIMARY;
    default: return true;
    }
}

/* The suitable endpoints (step 1) within the latency window (step 2). An
 * endpoint whose circuit is open is taken only when nothing else suits:
 * its pool closes the circuit only after an establishment succeeds, which
 * takes a checkout, so shunning it for good would keep it open for good. */
static void candidates_locked(cpool_cluster *c, cpool_want w, int64_t max_lag,
                              const bool *failed, const bool *open, pick *out)
{
    static const bool none[MAX_EP];
    suitable_locked(c, w, max_lag, failed, open, out);
    if (out->n == 0 && open != none)
        suitable_locked(c, w, max_lag, failed, none, out);
}

static void suitable_locked(cpool_cluster *c, cpool_want w, int64_t max_lag,
                            const bool *failed, const bool *open, pick *out)
{
    out->n = 0;
    for (int pass = 1; pass >= 0 && out->n == 0; pass--) {
        if (pass == 0 && w != CPOOL_WANT_PRIMARY_PREFERRED && w != CPOOL_WANT_REPLICA_PREFERRED)
            break;
        /* No falling back while an endpoint was never checked: it may be
         * the one preferred (a first checkout would otherwise take the
         * primary just because the replicas' first checks were slower). */
        for (size_t i = 0; pass == 0 && i < c->n; i++)
            if (c->ep[i].state == CPOOL_ENDPOINT_UNKNOWN)
                return;
        for (size_t i = 0; i < c->n && out->n < MAX_EP; i++) {
            const endpoint *e = &c->ep[i];
            if (e->state != CPOOL_ENDPOINT_UP || failed[i] || open[i] ||
                !role_ok(e->role, w, pass == 1))
                continue;
            if (max_lag > 0 && e->role == CPOOL_ROLE_REPLICA &&
                (e->lag_ms < 0 || e->lag_ms > max_lag))
                continue;
            out->idx[out->n++] = i;
        }
    }
    int64_t fastest = INT64_MAX;
    for (size_t k = 0; k < out->n; k++) {
        int64_t r = c->ep[out->idx[k]].rtt_ns;
        if (r >= 0 && r < fastest)
            fastest = r;
    }
    int64_t window = fastest == INT64_MAX ? INT64_MAX : fastest + c->o.local_threshold_ms * 1000000;
    size_t m = 0;
    for (size_t k = 0; k < out->n; k++)
        if (c->ep[out->idx[k]].rtt_ns <= window)
            out->idx[m++] = out->idx[k];
    out->n = m;
}

static uint64_t next_rand_locked(cpool_cluster *c)
{
    uint64_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return x;
}

static uint32_t load_of(cpool *p)
{
    cpool_counts k;
    memset(&k, 0, sizeof k);
    cpool_get_counts(p, &k);
    return k.in_use + k.waiting;
}

/* Why no endpoint could serve, endpoint by endpoint, into msg. */
static void explain_locked(cpool_cluster *c, cpool_want w, int64_t max_lag, const bool *failed,
                           const bool *open, char *msg, size_t size)
{
    size_t o = (size_t)snprintf(msg, size, "no endpoint for %s:", cpool_want_name(w));
    for (size_t i = 0; i < c->n && o < size; i++) {
        const endpoint *e = &c->ep[i];
        char why[128];
        if (e->state == CPOOL_ENDPOINT_UNKNOWN)
            snprintf(why, sizeof why, "not checked yet");
        else if (e->state == CPOOL_ENDPOINT_DOWN)
            snprintf(why, sizeof why, "down (%.80s)", e->last_error.message);
        else if (e->state == CPOOL_ENDPOINT_STALE)
            snprintf(why, sizeof why, "stale primary (epoch %llu)", (unsigned long long)e->epoch);
        else if (failed[i])
            snprintf(why, sizeof why, "failed this checkout");
        else if (open[i])
            snprintf(why, sizeof why, "circuit open");
        else if (max_lag > 0 && e->role == CPOOL_ROLE_REPLICA)
            snprintf(why, sizeof why, "lag %lld ms > %lld", (long long)e->lag_ms,
                     (long long)max_lag);
        else
            snprintf(why, sizeof why, "%s", cpool_role_name(e->role));
        o += (size_t)snprintf(msg + o, size - o, "%s %s %s", i > 0 ? ";" : "", e->address, why);
    }
}

static int endpoint_of(const cpool_cluster *c, const cpool_conn *conn)
{
    cpool *p = cpool_conn_pool(conn);
    for (size_t i = 0; p != NULL && i < c->n; i++)
        if (c->ep[i].pool == p)
            return (int)i;
    return -1;
}

/* Errors after which another endpoint may serve: this one's pool was
 * cleared or paused, its server refused or dropped the connection. */
static bool try_elsewhere(int rc)
{
    return rc == CPOOL_ECLEARED || rc == CPOOL_ECONNECT || rc == CPOOL_EUNAVAILABLE ||
           rc == CPOOL_EINTERRUPTED || rc == CPOOL_EIO;
}

/* What the session itself says, without a round trip where the server
 * reports it (PostgreSQL 14+ in_hot_standby): a primary demoted since its
 * monitor's last check is caught here. A session reports a change only
 * after its next command, so one that still says "standby" while the
 * monitor says "primary" (it was idle across a promotion) is pinged once
 * and asked again. */
static bool session_is_primary(endpoint *e, cpool_conn *conn, int64_t checkout_deadline)
{
    const cpool_connector *cx = e->cx;
    if (cx->abi_version < 5 || cx->server_info == NULL)
        return true;
    void *native = cpool_conn_native(conn);
    cpool_server_info si;
    if (cx->server_info(e->mctx, native, CPOOL_INFO_CACHED, 0, &si, NULL) != 0 ||
        si.role != CPOOL_ROLE_REPLICA)
        return true;
    int64_t deadline = cpool__cluster_now() + e->c->o.check_timeout_ms * 1000000;
    if (checkout_deadline < deadline)
        deadline = checkout_deadline;
    if (cx->ping == NULL || cx->ping(e->mctx, native, deadline, NULL) != 0)
        return false;
    return cx->server_info(e->mctx, native, CPOOL_INFO_CACHED, 0, &si, NULL) != 0 ||
           si.role != CPOOL_ROLE_REPLICA;
}

static struct timespec abs_time(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    return ts;
}

int cpool_cluster_checkout(cpool_cluster *c, const cpool_cluster_checkout_opts *o,
                           cpool_conn **out, cpool_lease_origin *origin, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (c == NULL || out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster checkout: a cluster and out are required");
    cpool_cluster_checkout_opts d = {.struct_size = sizeof d, .want = c->want, .timeout_ms = -1};
    if (o != NULL)
        memcpy(&d, o, o->struct_size < sizeof d ? o->struct_size : sizeof d);
    if (cpool_want_name(d.want) == NULL || d.max_lag_ms < 0)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster checkout: want %d or max_lag_ms %lld out of range",
                               (int)d.want, (long long)d.max_lag_ms);
    atomic_fetch_add_explicit(&c->st_checkouts, 1, memory_order_relaxed);
    int64_t timeout = d.timeout_ms >= 0 ? d.timeout_ms : c->popts.wait_queue_timeout_ms;
    int64_t start = cpool__cluster_now();
    int64_t deadline = timeout > 0 ? start + timeout * 1000000 : INT64_MAX;
    bool failed[MAX_EP] = {false}, open[MAX_EP] = {false};
    uint64_t seen = 0;
    cpool_error last;
    memset(&last, 0, sizeof last);
    for (;;) {
        for (size_t i = 0; i < c->n && i < MAX_EP; i++)
            open[i] = cpool__pool_breaker_open(c->ep[i].pool);
        pick pk;
        pthread_mutex_lock(&c->mu);
        if (c->version != seen) { /* the topology moved: try them all again */
            seen = c->version;
            memset(failed, 0, sizeof failed);
        }
        if (c->stopping) {
            pthread_mutex_unlock(&c->mu);
            return cpool_error_set(err, CPOOL_ECLOSED, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "cluster checkout: the cluster is closing");
        }
        candidates_locked(c, d.want, d.max_lag_ms, failed, open, &pk);
        if (pk.n == 0) {
            int64_t now = cpool__cluster_now();
            if (now >= deadline) {
                char msg[sizeof err->message];
                explain_locked(c, d.want, d.max_lag_ms, failed, open, msg, sizeof msg);
                pthread_mutex_unlock(&c->mu);
                atomic_fetch_add_explicit(&c->st_no_endpoint, 1, memory_order_relaxed);
                cpool_error_set(err, CPOOL_ENOENDPOINT, last.phase, last.kind, last.native,
                                "%s", msg);
                if (err != NULL) /* what the last endpoint tried said, e.g. retryable */
                    err->labels = last.labels;
                return CPOOL_ENOENDPOINT;
            }
            if (d.cancel != NULL && cpool_cancel_triggered(d.cancel)) {
                pthread_mutex_unlock(&c->mu);
                return cpool_error_set(err, CPOOL_ECANCELED, CPOOL_PHASE_NONE,
                                       CPOOL_FAIL_OTHER, 0,
                                       "cluster checkout: cancelled while no endpoint could "
                                       "serve it");
            }
            for (size_t i = 0; i < c->n; i++)
                cpool__cluster_ask_locked(c, &c->ep[i]);
            /* a cancellation token is looked at every 10 ms at the most */
            int64_t slice = d.cancel != NULL && c->o.min_heartbeat_ms > 10 ? 10
                                                                            : c->o.min_heartbeat_ms;
            int64_t until = now + slice * 1000000;
            struct timespec ts = abs_time(until < deadline ? until : deadline);
            pthread_cond_timedwait(&c->changed, &c->mu, &ts);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        /* two different ones, when there are two */
        size_t ia = next_rand_locked(c) % pk.n;
        size_t ib = pk.n > 1 ? (ia + 1 + next_rand_locked(c) % (pk.n - 1)) % pk.n : ia;
        size_t a = pk.idx[ia], b = pk.idx[ib];
        pthread_mutex_unlock(&c->mu);
        endpoint *e = &c->ep[a];
        if (b != a && load_of(c->ep[b].pool) < load_of(e->pool))
            e = &c->ep[b];
        pthread_mutex_lock(&c->mu);
        cpool_role role = e->role;
        pthread_mutex_unlock(&c->mu);

        int64_t left = -1; /* no deadline: the pool's own limits */
        if (deadline != INT64_MAX) {
            left = (deadline - cpool__cluster_now() + 999999) / 1000000;
            if (left < 1)
                left = 1;
        }
        cpool_checkout_opts po = {.struct_size = sizeof po,
                                  .timeout_ms = left,
                                  .label = d.label,
                                  .tenant = d.tenant,
                                  .cancel = d.cancel};
        cpool_conn *conn = NULL;
        int rc = cpool_checkout_with(e->pool, &po, &conn, &last);
        if (rc == 0 && role == CPOOL_ROLE_PRIMARY && !session_is_primary(e, conn, deadline)) {
            cpool_checkin(e->pool, conn, CPOOL_CHECKIN_BROKEN, NULL);
            conn = NULL;
            rc = cpool_error_set(&last, CPOOL_ECLEARED, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                 "%s: the session reports a standby", e->address);
        }
        if (rc == 0) {
            atomic_fetch_add_explicit(&c->st_checkouts_ok, 1, memory_order_relaxed);
            atomic_fetch_add(&e->selected, 1);
            *out = conn;
            if (origin != NULL) {
                origin->endpoint = e->index;
                origin->address = e->address;
                origin->role = role;
            }
            return 0;
        }
        if (!try_elsewhere(rc)) {
            if (err != NULL) {
                *err = last;
                if (rc == CPOOL_ETIMEDOUT) /* say where the time went */
                    snprintf(err->message, sizeof err->message, "%.60s: %.190s", e->address,
                             last.message);
            }
            return rc;
        }
        pthread_mutex_lock(&c->mu);
        failed[e->index] = true;
        cpool__cluster_ask_locked(c, e);
        pthread_mutex_unlock(&c->mu);
        atomic_fetch_add_explicit(&c->st_moved_on, 1, memory_order_relaxed);
    }
}

int cpool_cluster_checkin(cpool_cluster *c, cpool_conn *conn, unsigned flags,
                          cpool_error *err)
{
    if (c == NULL || conn == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster checkin: a cluster and a lease are required");
    int i = endpoint_of(c, conn);
    if (i < 0)
        return cpool_error_set(err, CPOOL_EFOREIGN, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster checkin: the lease is not from this cluster");
    endpoint *e = &c->ep[i];
    int rc = cpool_checkin(e->pool, conn, flags, err);
    if (rc == 0 && (flags & CPOOL_CHECKIN_BROKEN)) {
        pthread_mutex_lock(&c->mu);
        cpool__cluster_ask_locked(c, e);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

int cpool_cluster_wait(cpool_cluster *c, cpool_want want, int64_t timeout_ms, cpool_error *err)
{
    if (c == NULL || cpool_want_name(want) == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster wait: a cluster and a valid want are required");
    int64_t deadline = cpool__cluster_now() + (timeout_ms > 0 ? timeout_ms : 0) * 1000000;
    bool none[MAX_EP] = {false};
    pthread_mutex_lock(&c->mu);
    for (;;) {
        pick pk;
        candidates_locked(c, want, 0, none, none, &pk);
        if (pk.n > 0 || c->stopping)
            break;
        if (cpool__cluster_now() >= deadline) {
            char msg[sizeof err->message];
            explain_locked(c, want, 0, none, none, msg, sizeof msg);
            pthread_mutex_unlock(&c->mu);
            return cpool_error_set(err, CPOOL_ENOENDPOINT, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER,
                                   0, "%s", msg);
        }
        struct timespec ts = abs_time(deadline);
        pthread_cond_timedwait(&c->changed, &c->mu, &ts);
    }
    bool closing = c->stopping;
    pthread_mutex_unlock(&c->mu);
    return closing ? cpool_error_set(err, CPOOL_ECLOSED, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                     "cluster wait: the cluster is closing")
                   : 0;
}

int cpool_cluster_get_stats(cpool_cluster *c, cpool_cluster_stats *out)
{
    if (c == NULL || out == NULL || out->struct_size < sizeof *out)
        return CPOOL_EINVAL;
    /* the outcomes before the total, so that the total is never the smaller */
    out->checkouts_ok = atomic_load(&c->st_checkouts_ok);
    out->no_endpoint = atomic_load(&c->st_no_endpoint);
    out->checkouts = atomic_load(&c->st_checkouts);
    out->moved_on = atomic_load(&c->st_moved_on);
    out->retries = atomic_load(&c->st_retries);
    out->retries_succeeded = atomic_load(&c->st_retries_ok);
    out->retries_exhausted = atomic_load(&c->st_retries_exhausted);
    out->changes = atomic_load(&c->st_changes);
    return 0;
}

/* ------------------------------------------------------------ run */

int cpool_cluster_run(cpool_cluster *c, const cpool_cluster_run_opts *o, cpool_run_fn fn,
                      void *arg, cpool_error *err)
{
    cpool_error local;
    if (err == NULL)
        err = &local;
    if (c == NULL || fn == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster run: a cluster and a function are required");
    cpool_cluster_run_opts ro = {.struct_size = sizeof ro, .want = c->want, .timeout_ms = -1};
    if (o != NULL)
        memcpy(&ro, o, o->struct_size < sizeof ro ? o->struct_size : sizeof ro);
    if (ro.retry_delay_ms < 0)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster run: retry_delay_ms %lld is negative",
                               (long long)ro.retry_delay_ms);
    int64_t start = cpool__cluster_now();
    int64_t deadline = ro.timeout_ms >= 0 ? start + ro.timeout_ms * 1000000 : INT64_MAX;
    uint64_t rng = (uint64_t)start | 1;
    for (uint32_t attempt = 0;; attempt++) {
        cpool_cluster_checkout_opts co = {.struct_size = sizeof co,
                                          .want = ro.want,
                                          .timeout_ms = -1,
                                          .max_lag_ms = ro.max_lag_ms,
                                          .label = ro.label,
                                          .tenant = ro.tenant};
        if (deadline != INT64_MAX) {
            int64_t left = deadline - cpool__cluster_now();
            co.timeout_ms = left <= 0 ? 0 : (left + 999999) / 1000000;
        }
        cpool_conn *conn = NULL;
        memset(err, 0, sizeof *err);
        int rc = cpool_cluster_checkout(c, &co, &conn, NULL, err);
        if (rc == 0) {
            cpool__run_scope scope;
            cpool__run_enter(cpool_conn_pool(conn), deadline, &scope);
            memset(err, 0, sizeof *err);
            rc = fn(conn, arg, err);
            cpool__run_leave(&scope);
            if (rc != 0 && err->code == 0) {
                err->code = rc;
                snprintf(err->message, sizeof err->message,
                         "cluster run: the function failed with %s", cpool_err_name(rc));
            }
            unsigned flags = rc != 0 && err->kind != CPOOL_FAIL_SERVER ? CPOOL_CHECKIN_BROKEN : 0;
            cpool_error ce;
            int crc = cpool_cluster_checkin(c, conn, flags, &ce);
            if (rc == 0 && crc != 0) {
                *err = ce;
                rc = crc;
            }
        }
        if (rc == 0) {
            if (attempt > 0)
                atomic_fetch_add(&c->st_retries_ok, 1);
            return 0;
        }
        if ((err->labels & CPOOL_LABEL_RETRYABLE) == 0)
            return rc;
        int64_t pause = cpool__retry_pause_ns(ro.retry_delay_ms, attempt + 1,
                                              c->popts.backoff_multiplier,
                                              c->popts.backoff_jitter, &rng);
        if (attempt >= ro.retries ||
            (deadline != INT64_MAX && cpool__cluster_now() + pause >= deadline)) {
            atomic_fetch_add(&c->st_retries_exhausted, 1);
            return rc;
        }
        cpool__sleep_ns(pause);
        atomic_fetch_add(&c->st_retries, 1);
    }
}
