/* monitor.c -- one thread per endpoint, as MongoDB's SDAM monitors: it
 * keeps a connection of its own, asks the server its role every
 * heartbeat_ms (at once when asked, no sooner than min_heartbeat_ms after
 * the last check), measures the round trip, and turns what changed into
 * the endpoint pool's state:
 *   first reached, or back       -> the pool is made ready (EndpointUp)
 *   lost                         -> the pool is cleared; in-use connections
 *                                   interrupted when the check timed out, as
 *                                   a stopped server's would hang (EndpointDown)
 *   a primary no longer primary  -> cleared with in-use connections
 *                                   interrupted, then ready again: no session
 *                                   opened on it as a primary serves on
 *   a primary whose epoch is older than another primary's -> stale: out of
 *                                   selection, cleared and interrupted
 * A check that fails on a connection that worked is retried once on a new
 * connection before the endpoint is called down, unless it timed out: a
 * dropped idle connection is not a dead server.
 */
#include "cluster_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct change {
    cpool_topology_change type;
    cpool_role from, to;
} change;

typedef struct actions {
    change ch[3];
    int n;
    bool ready, clear, interrupt, ready_after;
    endpoint *stale_other[8]; /* other endpoints made stale by this check */
    int nstale;
} actions;

/* One timed question: the server's role, lag and epoch (a ping where the
 * connector cannot tell). */
static int ask(endpoint *e, int64_t deadline, cpool_server_info *info, int64_t *rtt,
               cpool_error *err)
{
    int64_t t0 = cpool__cluster_now();
    int rc;
    if (e->cx->abi_version >= 5 && e->cx->server_info != NULL) {
        rc = e->cx->server_info(e->mctx, e->native, CPOOL_INFO_LAG, deadline, info, err);
    } else {
        info->role = CPOOL_ROLE_UNKNOWN;
        info->lag_ms = -1;
        info->epoch = 0;
        rc = e->cx->ping != NULL ? e->cx->ping(e->mctx, e->native, deadline, err) : 0;
    }
    *rtt = cpool__cluster_now() - t0;
    return rc;
}

/* A check on the monitor's connection, made first when there is none. On a
 * new connection the question is asked twice and the shorter time counts:
 * the first answer of a new PostgreSQL backend includes its start-up work,
 * and a round trip that alone starts the moving average (after a reconnect
 * it starts again) would keep an endpoint out of the latency window for
 * several heartbeats if it happened to be slow. */
static int check(endpoint *e, cpool_server_info *info, int64_t *rtt, cpool_error *err)
{
    cpool_cluster *c = e->c;
    int64_t deadline = cpool__cluster_now() + c->o.check_timeout_ms * 1000000;
    int rc = 0;
    bool fresh = e->native == NULL;
    if (e->native == NULL) {
        cpool_connect_args a;
        memset(&a, 0, sizeof a);
        a.target = e->monitor_target != NULL ? e->monitor_target : e->target;
        a.deadline_ns = deadline;
        a.cancel_fd = c->stop_pipe[0];
        rc = e->cx->connect(e->mctx, &a, &e->native, err);
        if (rc != 0)
            e->native = NULL;
    }
    if (rc == 0)
        rc = ask(e, deadline, info, rtt, err);
    if (rc == 0 && fresh) {
        int64_t again;
        rc = ask(e, deadline, info, &again, err);
        if (again < *rtt)
            *rtt = again;
    }
    if (rc != 0 && e->native != NULL) {
        e->cx->close(e->mctx, e->native);
        e->native = NULL;
    }
    return rc;
}

static void add(actions *a, cpool_topology_change t, cpool_role from, cpool_role to)
{
    if (a->n < 3)
        a->ch[a->n++] = (change){t, from, to};
}

/* Of two primaries the one with the older epoch is stale, and so is any
 * primary older than the newest epoch seen, even once the newer one is
 * gone: a primary that was replaced never takes writes again through this
 * cluster (MongoDB's drivers keep the greatest electionId the same way).
 * Unknown epochs (0) cannot be told apart and stay (docs/cluster.md). */
static void settle_primaries_locked(cpool_cluster *c, endpoint *e, actions *a)
{
    if (e->role != CPOOL_ROLE_PRIMARY || e->epoch == 0)
        return;
    if (e->epoch > c->max_epoch)
        c->max_epoch = e->epoch;
    if (e->epoch < c->max_epoch) {
        e->state = CPOOL_ENDPOINT_STALE;
        return;
    }
    for (size_t i = 0; i < c->n && a->nstale < 8; i++) {
        endpoint *f = &c->ep[i];
        if (f != e && f->state == CPOOL_ENDPOINT_UP && f->role == CPOOL_ROLE_PRIMARY &&
            f->epoch != 0 && f->epoch < c->max_epoch) {
            f->state = CPOOL_ENDPOINT_STALE;
            f->changes++;
            f->since_ns = cpool__cluster_now();
            a->stale_other[a->nstale++] = f;
        }
    }
}

static void apply_locked(endpoint *e, int rc, const cpool_server_info *info, int64_t rtt,
                         const cpool_error *err, actions *a)
{
    cpool_cluster *c = e->c;
    cpool_endpoint_state was = e->state;
    cpool_role role_was = e->role;
    e->checks++;
    e->last_check_ns = cpool__cluster_now();
    if (rc != 0) {
        e->check_failures++;
        e->last_error = *err;
        e->state = CPOOL_ENDPOINT_DOWN;
        e->rtt_ns = -1;
        e->lag_ms = -1;
        if (was != CPOOL_ENDPOINT_DOWN) {
            a->clear = true;
            a->interrupt = err->kind == CPOOL_FAIL_TIMEOUT;
            add(a, CPOOL_TOPO_DOWN, role_was, e->role);
        }
    } else {
        e->state = CPOOL_ENDPOINT_UP;
        e->role = info->role;
        e->epoch = info->epoch;
        e->lag_ms = info->lag_ms;
        e->rtt_ns = e->rtt_ns < 0 ? rtt : (e->rtt_ns * 4 + rtt) / 5;
        settle_primaries_locked(c, e, a);
        if (was != CPOOL_ENDPOINT_UP && e->state == CPOOL_ENDPOINT_UP) {
            a->ready = true;
            add(a, CPOOL_TOPO_UP, role_was, e->role);
        }
        if (role_was != e->role && was != CPOOL_ENDPOINT_UNKNOWN)
            add(a, CPOOL_TOPO_ROLE, role_was, e->role);
        if (role_was == CPOOL_ROLE_PRIMARY && e->role != CPOOL_ROLE_PRIMARY &&
            was == CPOOL_ENDPOINT_UP) {
            a->clear = a->interrupt = true;
            a->ready_after = e->state == CPOOL_ENDPOINT_UP;
        }
        if (e->state == CPOOL_ENDPOINT_STALE && was != CPOOL_ENDPOINT_STALE) {
            a->clear = a->interrupt = true;
            a->ready = false;
            add(a, CPOOL_TOPO_STALE, role_was, e->role);
        }
    }
    if (a->n > 0 || a->nstale > 0) {
        e->changes += (uint64_t)a->n;
        atomic_fetch_add(&c->st_changes, (uint64_t)(a->n + a->nstale));
        e->since_ns = e->last_check_ns;
        c->version++;
        pthread_cond_broadcast(&c->changed);
    }
}

static void log_change(cpool_cluster *c, endpoint *e, const change *ch, const cpool_error *err)
{
    const cpool_options *po = &c->popts;
    if (po->on_log == NULL)
        return;
    static const char *const msg[] = {"Endpoint up", "Endpoint down", "Endpoint role changed",
                                      "Endpoint stale"};
    cpool_log_level level = ch->type == CPOOL_TOPO_UP ? CPOOL_LOG_INFO : CPOOL_LOG_WARN;
    if (level > po->log_level)
        return;
    cpool_log_field f[5];
    size_t n = 0;
    f[n++] = (cpool_log_field){.key = "endpoint", .type = CPOOL_LOG_STR, .s = e->address};
    f[n++] = (cpool_log_field){.key = "event", .type = CPOOL_LOG_STR,
                               .s = cpool_topology_change_name(ch->type)};
    f[n++] = (cpool_log_field){.key = "role", .type = CPOOL_LOG_STR, .s = cpool_role_name(ch->to)};
    if (ch->type == CPOOL_TOPO_ROLE)
        f[n++] = (cpool_log_field){.key = "previousRole", .type = CPOOL_LOG_STR,
                                   .s = cpool_role_name(ch->from)};
    if (err != NULL)
        f[n++] = (cpool_log_field){.key = "error", .type = CPOOL_LOG_STR, .s = err->message};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cpool_log_record r = {.level = level,
                          .component = "topology",
                          .message = msg[ch->type],
                          .fields = f,
                          .nfields = n,
                          .pool = po->name != NULL ? po->name : e->address,
                          .time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000};
    po->on_log(&r, po->log_ctx);
}

static void announce(cpool_cluster *c, endpoint *e, const change *ch, const cpool_error *err)
{
    log_change(c, e, ch, err);
    if (c->o.on_topology == NULL)
        return;
    cpool_topology_event ev = {.type = ch->type,
                               .endpoint = e->index,
                               .address = e->address,
                               .from = ch->from,
                               .to = ch->to,
                               .error = err,
                               .time_ns = cpool__cluster_now()};
    c->o.on_topology(&ev, c->o.topology_ctx);
}

static void run_check(endpoint *e)
{
    cpool_cluster *c = e->c;
    cpool_server_info info;
    cpool_error err;
    memset(&err, 0, sizeof err);
    int64_t rtt = 0;
    bool had = e->native != NULL;
    int rc = check(e, &info, &rtt, &err);
    if (rc != 0 && had && err.kind != CPOOL_FAIL_TIMEOUT && err.kind != CPOOL_FAIL_INTERRUPTED) {
        memset(&err, 0, sizeof err);
        rc = check(e, &info, &rtt, &err);
    }
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    bool up_before = e->state == CPOOL_ENDPOINT_UP;
    pthread_mutex_unlock(&c->mu);
    /* Ready before it is published as up, so that no checkout meets a
     * paused pool it was sent to. */
    if (rc == 0 && !up_before)
        cpool_ready(e->pool, NULL);
    actions a;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&c->mu);
    apply_locked(e, rc, &info, rtt, &err, &a);
    pthread_mutex_unlock(&c->mu);

    cpool_error cause = err;
    if (a.clear) {
        if (rc == 0)
            cpool_error_set(&cause, CPOOL_ECLEARED, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                            "%s is no longer %s", e->address,
                            a.ready_after ? "the primary" : "a current primary");
        cpool_clear(e->pool, a.interrupt ? CPOOL_CLEAR_INTERRUPT_IN_USE : 0, &cause, NULL);
        if (a.ready_after)
            cpool_ready(e->pool, NULL);
    }
    for (int i = 0; i < a.nstale; i++) {
        endpoint *f = a.stale_other[i];
        cpool_error why;
        cpool_error_set(&why, CPOOL_ECLEARED, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                        "%s: %s became primary after it", f->address, e->address);
        cpool_clear(f->pool, CPOOL_CLEAR_INTERRUPT_IN_USE, &why, NULL);
        change ch = {CPOOL_TOPO_STALE, CPOOL_ROLE_PRIMARY, CPOOL_ROLE_PRIMARY};
        announce(c, f, &ch, NULL);
    }
    for (int i = 0; i < a.n; i++)
        announce(c, e, &a.ch[i], a.ch[i].type == CPOOL_TOPO_DOWN ? &err : NULL);
}

static struct timespec abs_time(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    return ts;
}

void *cpool__monitor_main(void *arg)
{
    endpoint *e = arg;
    cpool_cluster *c = e->c;
    for (;;) {
        run_check(e);
        pthread_mutex_lock(&c->mu);
        for (;;) {
            if (c->stopping)
                break;
            int64_t now = cpool__cluster_now();
            int64_t next = e->last_check_ns +
                           (e->asked ? c->o.min_heartbeat_ms : c->o.heartbeat_ms) * 1000000;
            if (now >= next)
                break;
            struct timespec ts = abs_time(next);
            pthread_cond_timedwait(&c->wake, &c->mu, &ts);
        }
        bool stop = c->stopping;
        e->asked = false;
        pthread_mutex_unlock(&c->mu);
        if (stop)
            break;
    }
    if (e->native != NULL) {
        e->cx->close(e->mctx, e->native);
        e->native = NULL;
    }
    return NULL;
}
