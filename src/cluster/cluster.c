/* cluster.c -- a cluster's life: the endpoints a target names, their pools
 * and monitors, and what a reader sees (endpoint info, Prometheus text).
 * Selection is in select.c, the monitors in monitor.c; the locking rule
 * is in cluster_int.h. A redis-sentinel:// target is asked once, at open,
 * for the primary and replicas; their roles are then followed by the
 * monitors.
 */
#include "cluster_int.h"

#include "../core/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MONITOR_APP "cpool-monitor"

int64_t cpool__cluster_now(void)
{
    return cpool__mono_ns();
}

/* ------------------------------------------------------------ names */

static const char *const want_names[] = {"primary", "primary_preferred", "replica",
                                         "replica_preferred", "any"};

const char *cpool_want_name(cpool_want w)
{
    return (unsigned)w < sizeof want_names / sizeof *want_names ? want_names[w] : NULL;
}

int cpool_want_parse(const char *name, cpool_want *out)
{
    static const struct {
        const char *name;
        cpool_want want;
    } aliases[] = {
        {"read-write", CPOOL_WANT_PRIMARY},          {"primary", CPOOL_WANT_PRIMARY},
        {"read-only", CPOOL_WANT_REPLICA},           {"standby", CPOOL_WANT_REPLICA},
        {"prefer-standby", CPOOL_WANT_REPLICA_PREFERRED},
        {"secondary", CPOOL_WANT_REPLICA},           {"any", CPOOL_WANT_ANY},
    };
    if (name == NULL || out == NULL)
        return CPOOL_EINVAL;
    for (size_t i = 0; i < sizeof want_names / sizeof *want_names; i++)
        if (strcmp(name, want_names[i]) == 0) {
            *out = (cpool_want)i;
            return 0;
        }
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (strcmp(name, aliases[i].name) == 0) {
            *out = aliases[i].want;
            return 0;
        }
    return CPOOL_EINVAL;
}

const char *cpool_role_name(cpool_role r)
{
    return r == CPOOL_ROLE_PRIMARY ? "primary" : r == CPOOL_ROLE_REPLICA ? "replica" : "unknown";
}

const char *cpool_endpoint_state_name(cpool_endpoint_state s)
{
    static const char *const n[] = {"unknown", "up", "down", "stale"};
    return (unsigned)s < 4 ? n[s] : "unknown";
}

const char *cpool_topology_change_name(cpool_topology_change t)
{
    static const char *const n[] = {"EndpointUp", "EndpointDown", "EndpointRoleChanged",
                                    "EndpointStale"};
    return (unsigned)t < CPOOL_TOPO_CHANGE_COUNT_ ? n[t] : "unknown";
}

void cpool_cluster_options_init(cpool_cluster_options *o, size_t size)
{
    if (o == NULL || size == 0)
        return;
    cpool_cluster_options d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.heartbeat_ms = 1000;
    d.min_heartbeat_ms = 100;
    d.check_timeout_ms = 1000;
    d.local_threshold_ms = 15;
    d.want = (cpool_want)-1; /* not set: the target's, else PRIMARY */
    memset(o, 0, size);
    memcpy(o, &d, size < sizeof d ? size : sizeof d);
    o->struct_size = size < sizeof d ? size : sizeof d;
}

/* ------------------------------------------------------------ targets */

typedef struct hostlist {
    char **targets;
    size_t n;
    char tsa[32]; /* target_session_attrs taken out; "" = none */
} hostlist;

static void hostlist_free(hostlist *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->targets[i]);
    free(h->targets);
    h->targets = NULL;
    h->n = 0;
}

static int push(hostlist *h, char *t)
{
    if (t == NULL)
        return CPOOL_ENOMEM;
    char **g = realloc(h->targets, (h->n + 1) * sizeof *g);
    if (g == NULL) {
        free(t);
        return CPOOL_ENOMEM;
    }
    h->targets = g;
    h->targets[h->n++] = t;
    return 0;
}

static char *concat3(const char *a, size_t na, const char *b, size_t nb, const char *c)
{
    size_t nc = strlen(c);
    char *s = malloc(na + nb + nc + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb);
    memcpy(s + na + nb, c, nc + 1);
    return s;
}

/* "scheme://[user@]h1[:p1],h2[:p2][/path][?query]": one target per host,
 * with libpq's host-list parameters taken out of the query. */
static int split_uri(const char *t, const char *sep, hostlist *h, cpool_error *err)
{
    const char *auth = sep + 3;
    const char *end = auth + strcspn(auth, "/?");
    const char *hosts = auth;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            hosts = p + 1;
    if (hosts == end)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: the target names no host");
    for (const char *p = hosts; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma != NULL ? comma : end;
        if (stop == p)
            return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "cluster: an empty host in the target's host list");
        int rc = push(h, concat3(t, (size_t)(hosts - t), p, (size_t)(stop - p), end));
        if (rc != 0)
            return cpool_error_set(err, rc, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "cluster: out of memory");
        p = comma != NULL ? comma + 1 : end;
    }
    for (size_t i = 0; i < h->n; i++) {
        char v[32];
        int rc = cpool_uri_take(h->targets[i], "target_session_attrs", v, sizeof v);
        if (rc == 1 && i == 0)
            snprintf(h->tsa, sizeof h->tsa, "%s", v);
        if (rc >= 0)
            rc = cpool_uri_take(h->targets[i], "load_balance_hosts", v, sizeof v);
        if (rc < 0)
            return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                   "cluster: a malformed target_session_attrs or "
                                   "load_balance_hosts");
    }
    return 0;
}

/* One "key = value" of a libpq conninfo string: the key [ks, ke), the
 * value's text [vs, ve) with its quotes, the next position. 1, 0 at the
 * end, -1 when malformed. */
typedef struct ci_tok {
    size_t ks, ke, vs, ve;
} ci_tok;

static int ci_scan(const char *s, size_t *pos, ci_tok *t)
{
    size_t i = *pos;
    while (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')
        i++;
    if (s[i] == '\0')
        return 0;
    t->ks = i;
    while (s[i] != '\0' && s[i] != '=' && s[i] != ' ' && s[i] != '\t')
        i++;
    t->ke = i;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    if (s[i] != '=' || t->ke == t->ks)
        return -1;
    i++;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    t->vs = i;
    if (s[i] == '\'') {
        for (i++; s[i] != '\'' && s[i] != '\0'; i++)
            if (s[i] == '\\' && s[i + 1] != '\0')
                i++;
        if (s[i] != '\'')
            return -1;
        i++;
    } else {
        while (s[i] != '\0' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            i++;
    }
    t->ve = i;
    *pos = i;
    return 1;
}

static bool key_is(const char *s, const ci_tok *t, const char *k)
{
    return t->ke - t->ks == strlen(k) && strncmp(s + t->ks, k, t->ke - t->ks) == 0;
}

/* The value without quotes and escapes. */
static void ci_value(const char *s, const ci_tok *t, char *out, size_t size)
{
    size_t o = 0, i = t->vs, e = t->ve;
    bool q = s[i] == '\'';
    if (q) {
        i++;
        e--;
    }
    for (; i < e && o + 1 < size; i++) {
        if (q && s[i] == '\\' && i + 1 < e)
            i++;
        out[o++] = s[i];
    }
    out[o] = '\0';
}

/* Element k of a comma-separated list (the only one when the list has one). */
static bool list_item(const char *list, size_t k, char *out, size_t size)
{
    size_t count = 1;
    for (const char *p = list; *p != '\0'; p++)
        count += *p == ',';
    if (count == 1)
        k = 0;
    const char *p = list;
    for (size_t i = 0; i < k && p != NULL; i++) {
        p = strchr(p, ',');
        if (p != NULL)
            p++;
    }
    if (p == NULL)
        return false;
    size_t n = strcspn(p, ",");
    snprintf(out, size, "%.*s", (int)n, p);
    return true;
}

static size_t list_len(const char *list)
{
    if (list[0] == '\0')
        return 0;
    size_t n = 1;
    for (const char *p = list; *p != '\0'; p++)
        n += *p == ',';
    return n;
}

/* Appends " key='value'" (quoted for conninfo) to buf. */
static void ci_append(char *buf, size_t size, const char *key, const char *val)
{
    size_t o = strlen(buf);
    o += (size_t)snprintf(buf + o, o < size ? size - o : 0, " %s='", key);
    for (const char *p = val; *p != '\0' && o + 3 < size; p++) {
        if (*p == '\'' || *p == '\\')
            buf[o++] = '\\';
        buf[o++] = *p;
    }
    if (o + 2 < size) {
        buf[o++] = '\'';
        buf[o] = '\0';
    }
}

/* "host=h1,h2 port=p1,p2 ...": one conninfo per host. */
static int split_conninfo(const char *t, hostlist *h, cpool_error *err)
{
    size_t n = strlen(t);
    char *base = calloc(1, n + 1);
    char hosts[1024] = "", addrs[1024] = "", ports[256] = "";
    if (base == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    size_t pos = 0, bo = 0;
    ci_tok tok;
    int r;
    while ((r = ci_scan(t, &pos, &tok)) == 1) {
        if (key_is(t, &tok, "host"))
            ci_value(t, &tok, hosts, sizeof hosts);
        else if (key_is(t, &tok, "hostaddr"))
            ci_value(t, &tok, addrs, sizeof addrs);
        else if (key_is(t, &tok, "port"))
            ci_value(t, &tok, ports, sizeof ports);
        else if (key_is(t, &tok, "target_session_attrs"))
            ci_value(t, &tok, h->tsa, sizeof h->tsa);
        else if (!key_is(t, &tok, "load_balance_hosts")) {
            bo += (size_t)snprintf(base + bo, n + 1 - bo, "%s%.*s", bo > 0 ? " " : "",
                                   (int)(tok.ve - tok.ks), t + tok.ks);
        }
    }
    size_t nh = list_len(hosts) > list_len(addrs) ? list_len(hosts) : list_len(addrs);
    if (r < 0 || nh == 0) {
        free(base);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               r < 0 ? "cluster: a malformed conninfo target"
                                     : "cluster: the conninfo target names no host");
    }
    int rc = 0;
    for (size_t i = 0; i < nh && rc == 0; i++) {
        size_t size = n + 1024;
        char *one = malloc(size), v[512];
        if (one == NULL) {
            rc = CPOOL_ENOMEM;
            break;
        }
        snprintf(one, size, "%s", base);
        if (hosts[0] != '\0' && list_item(hosts, i, v, sizeof v))
            ci_append(one, size, "host", v);
        if (addrs[0] != '\0' && list_item(addrs, i, v, sizeof v))
            ci_append(one, size, "hostaddr", v);
        if (ports[0] != '\0' && list_item(ports, i, v, sizeof v))
            ci_append(one, size, "port", v);
        rc = push(h, one[0] == ' ' ? memmove(one, one + 1, strlen(one)) : one);
    }
    free(base);
    if (rc != 0)
        return cpool_error_set(err, rc, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    return 0;
}

static int split_target(const char *target, hostlist *h, cpool_error *err)
{
    const char *sep = strstr(target, "://");
    if (sep != NULL)
        return split_uri(target, sep, h, err);
    if (strchr(target, '=') != NULL)
        return split_conninfo(target, h, err);
    return push(h, strdup(target)) == 0
               ? 0
               : cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                 "cluster: out of memory");
}

/* ------------------------------------------------------------ open, close */

/* The monitor's own target: the endpoint's, named so that a server's
 * session list tells the monitor from the pool (PostgreSQL), without the
 * pool's own parameters, which the connector does not take. */
static int monitor_target(endpoint *e, cpool_error *err)
{
    const char *t = e->target;
    size_t n = strlen(t) + sizeof MONITOR_APP + 40;
    char *m = malloc(n);
    if (m == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    /* PostgreSQL's application_name, Redis's client_name: the last one
     * given wins in both. */
    const char *key = strcmp(e->cx->name, "pg") == 0      ? "application_name"
                      : strcmp(e->cx->name, "redis") == 0 ? "client_name"
                                                          : NULL;
    if (key == NULL)
        snprintf(m, n, "%s", t);
    else if (strstr(t, "://") != NULL)
        snprintf(m, n, "%s%s%s=" MONITOR_APP, t, strchr(t, '?') != NULL ? "&" : "?", key);
    else
        snprintf(m, n, "%s %s=" MONITOR_APP, t, key);
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.target = m;
    o.connector = e->cx;
    o.ignore_env = true;
    size_t bsize = strlen(m) + 1; /* taking parameters out only shortens it */
    cpool_options eff;
    e->monitor_target = malloc(bsize);
    int rc = e->monitor_target == NULL
                 ? CPOOL_ENOMEM
                 : cpool_options_explain(&o, NULL, 0, NULL, &eff, e->monitor_target, bsize,
                                         err);
    free(m);
    if (rc == CPOOL_ENOMEM)
        return cpool_error_set(err, rc, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    return rc;
}

static int endpoint_init(cpool_cluster *c, endpoint *e, const char *target,
                         const cpool_connector *cx, void *ctx, cpool_error *err)
{
    e->target = strdup(target);
    if (e->target == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    e->cx = cx != NULL ? cx : cpool_connector_for(target);
    if (e->cx == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: no connector for endpoint %zu's target", e->index);
    cpool_options o = c->popts;
    o.target = e->target;
    o.connector = e->cx;
    o.connector_ctx = ctx;
    o.address = NULL;
    int rc = cpool_create(&o, &e->pool, err); /* paused until its monitor sees it */
    if (rc != 0)
        return rc;
    e->address = cpool_address(e->pool);
    if (ctx != NULL) {
        e->mctx = ctx;
    } else if ((rc = monitor_target(e, err)) != 0) {
        return rc;
    } else if (e->cx->abi_version >= 2 && e->cx->ctx_new != NULL) {
        rc = e->cx->ctx_new(e->monitor_target, &e->mctx, err);
        if (rc != 0)
            return rc;
        e->own_mctx = true;
    }
    e->state = CPOOL_ENDPOINT_UNKNOWN;
    e->role = CPOOL_ROLE_UNKNOWN;
    e->rtt_ns = -1;
    e->lag_ms = -1;
    e->since_ns = cpool__cluster_now();
    atomic_init(&e->selected, 0);
    return 0;
}

static int check_options(const cpool_cluster_options *o, cpool_error *err)
{
    const char *bad = o->heartbeat_ms < 10 || o->heartbeat_ms > 600000 ? "heartbeat_ms"
                      : o->min_heartbeat_ms < 1 || o->min_heartbeat_ms > o->heartbeat_ms
                          ? "min_heartbeat_ms"
                      : o->check_timeout_ms < 1 ? "check_timeout_ms"
                      : o->local_threshold_ms < 0 ? "local_threshold_ms"
                      : o->want != (cpool_want)-1 && cpool_want_name(o->want) == NULL ? "want"
                                                                                      : NULL;
    if (bad != NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: option %s out of range (heartbeat_ms 10..600000, "
                               "min_heartbeat_ms 1..heartbeat_ms, check_timeout_ms >= 1, "
                               "local_threshold_ms >= 0)",
                               bad);
    return 0;
}

static void cluster_free(cpool_cluster *c)
{
    for (size_t i = 0; i < c->n; i++) {
        endpoint *e = &c->ep[i];
        cpool_destroy(e->pool);
        if (e->own_mctx && e->cx->ctx_free != NULL)
            e->cx->ctx_free(e->mctx);
        free(e->target);
        free(e->monitor_target);
    }
    free(c->ep);
    if (c->stop_pipe[0] >= 0) {
        close(c->stop_pipe[0]);
        close(c->stop_pipe[1]);
    }
    pthread_cond_destroy(&c->wake);
    pthread_cond_destroy(&c->changed);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

static cpool_cluster *cluster_alloc(void)
{
    cpool_cluster *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->stop_pipe[0] = c->stop_pipe[1] = -1;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    if (cond_init(&c->wake) != 0 || cond_init(&c->changed) != 0 ||
        pipe2(c->stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        c->stop_pipe[0] = c->stop_pipe[1] = -1;
        cluster_free(c); /* destroying an unused condition variable is harmless */
        return NULL;
    }
    return c;
}

static void stop_monitors(cpool_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_cond_broadcast(&c->wake);
    pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&c->mu);
    ssize_t w;
    do
        w = write(c->stop_pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
    for (size_t i = 0; i < c->n; i++)
        if (c->ep[i].started)
            pthread_join(c->ep[i].thread, NULL);
}

int cpool_cluster_open(const char *target, const cpool_cluster_options *opts,
                       cpool_cluster **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (out == NULL || (target == NULL) == (opts == NULL || opts->nendpoints == 0))
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: give a target or options.endpoints (one of them), "
                               "and out");
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    if (opts != NULL)
        memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
    o.struct_size = sizeof o;
    int rc = check_options(&o, err);
    if (rc != 0)
        return rc;
    hostlist h = {0};
    char *resolved = NULL; /* what a redis-sentinel:// target stands for */
    if (target != NULL && (rc = cpool__resolve_target(target, o.check_timeout_ms * 2,
                                                      &resolved, err)) != 0)
        return rc;
    if (target != NULL && (rc = split_target(resolved != NULL ? resolved : target, &h, err)) != 0) {
        free(resolved);
        hostlist_free(&h);
        return rc;
    }
    free(resolved);
    cpool_want want = CPOOL_WANT_PRIMARY;
    if (h.tsa[0] != '\0' && cpool_want_parse(h.tsa, &want) != 0) {
        hostlist_free(&h);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: target_session_attrs = \"%s\": allowed read-write, "
                               "read-only, primary, standby, prefer-standby, any",
                               h.tsa);
    }
    if (o.want != (cpool_want)-1)
        want = o.want;
    size_t n = target != NULL ? h.n : o.nendpoints;
    if (n > 64) {
        hostlist_free(&h);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: %zu endpoints; at most 64", n);
    }
    cpool_cluster *c = cluster_alloc();
    if (c == NULL || (c->ep = calloc(n, sizeof *c->ep)) == NULL) {
        if (c != NULL)
            cluster_free(c);
        hostlist_free(&h);
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "cluster: out of memory");
    }
    c->o = o;
    c->o.endpoints = NULL;
    c->want = want;
    cpool_options_init(&c->popts, sizeof c->popts);
    if (o.pool != NULL)
        memcpy(&c->popts, o.pool,
               o.pool->struct_size < sizeof c->popts ? o.pool->struct_size : sizeof c->popts);
    c->popts.struct_size = sizeof c->popts;
    c->o.pool = &c->popts;
    c->rng = o.seed != 0 ? o.seed : (uint64_t)cpool__mono_ns() | 1;
    for (size_t i = 0; i < n && rc == 0; i++) {
        endpoint *e = &c->ep[i];
        e->c = c;
        e->index = i;
        c->n = i + 1;
        if (target != NULL)
            rc = endpoint_init(c, e, h.targets[i], NULL, NULL, err);
        else if (o.endpoints[i].target == NULL)
            rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                 "cluster: endpoint %zu has no target", i);
        else
            rc = endpoint_init(c, e, o.endpoints[i].target, o.endpoints[i].connector,
                               o.endpoints[i].connector_ctx, err);
    }
    hostlist_free(&h);
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        endpoint *e = &c->ep[i];
        if (pthread_create(&e->thread, NULL, cpool__monitor_main, e) != 0)
            rc = cpool_error_set(err, CPOOL_ESYS, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, errno,
                                 "cluster: cannot start a monitor thread");
        else
            e->started = true;
    }
    if (rc != 0) {
        stop_monitors(c);
        cluster_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void cpool_cluster_close(cpool_cluster *c)
{
    if (c == NULL)
        return;
    stop_monitors(c);
    cluster_free(c);
}

/* ------------------------------------------------------------ reading */

size_t cpool_cluster_size(const cpool_cluster *c)
{
    return c != NULL ? c->n : 0;
}

cpool_want cpool_cluster_want(const cpool_cluster *c)
{
    return c != NULL ? c->want : CPOOL_WANT_PRIMARY;
}

void cpool__cluster_ask_locked(cpool_cluster *c, endpoint *e)
{
    e->asked = true;
    pthread_cond_broadcast(&c->wake);
}

void cpool_cluster_check_now(cpool_cluster *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        cpool__cluster_ask_locked(c, &c->ep[i]);
    pthread_mutex_unlock(&c->mu);
}

int cpool_cluster_endpoint_info(cpool_cluster *c, size_t i, cpool_endpoint_info *out)
{
    if (c == NULL || out == NULL || i >= c->n)
        return CPOOL_EINVAL;
    endpoint *e = &c->ep[i];
    bool open = cpool__pool_breaker_open(e->pool); /* its lock, not under ours */
    pthread_mutex_lock(&c->mu);
    out->address = e->address;
    out->pool = e->pool;
    out->state = e->state;
    out->role = e->role;
    out->rtt_ns = e->rtt_ns;
    out->lag_ms = e->lag_ms;
    out->epoch = e->epoch;
    out->checks = e->checks;
    out->check_failures = e->check_failures;
    out->changes = e->changes;
    out->since_ns = e->since_ns;
    out->last_error = e->last_error;
    pthread_mutex_unlock(&c->mu);
    out->selected = atomic_load(&e->selected);
    out->breaker_open = open;
    return 0;
}

/* ------------------------------------------------------------ Prometheus */

typedef struct sbuf {
    char *buf;
    size_t size, len;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b->len < b->size ? b->buf + b->len : NULL,
                      b->len < b->size ? b->size - b->len : 0, fmt, ap);
    va_end(ap);
    if (w > 0)
        b->len += (size_t)w;
}

/* A label value: backslash, quote and newline escaped. */
static void label_value(const char *in, char *out, size_t size)
{
    size_t o = 0;
    for (; *in != '\0' && o + 3 < size; in++) {
        if (*in == '\\' || *in == '"' || *in == '\n') {
            out[o++] = '\\';
            out[o++] = *in == '\n' ? 'n' : *in;
        } else {
            out[o++] = *in;
        }
    }
    out[o] = '\0';
}

size_t cpool_cluster_prometheus(cpool_cluster *c, const char *name, char *buf, size_t size)
{
    if (buf != NULL && size > 0)
        buf[0] = '\0';
    if (c == NULL)
        return 0;
    char cname[128], extra[160];
    label_value(name != NULL ? name : "cluster", cname, sizeof cname);
    snprintf(extra, sizeof extra, "cluster=\"%s\"", cname);
    cpool *pools[64];
    const char *names[64];
    size_t np = c->n < 64 ? c->n : 64;
    for (size_t i = 0; i < np; i++) {
        pools[i] = c->ep[i].pool;
        names[i] = c->ep[i].address; /* the pools may share options.name */
    }
    sbuf b = {buf, buf != NULL ? size : 0, 0};
    b.len = cpool_prometheus_pools(pools, names, np, extra, buf, b.size);
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"db_client_cluster_endpoint_up", "gauge",
         "1 when the endpoint's monitor reaches it and it is not a stale primary"},
        {"db_client_cluster_endpoint_role", "gauge",
         "1 for the role the endpoint's monitor saw last"},
        {"db_client_cluster_endpoint_rtt_seconds", "gauge",
         "Moving average of the monitor's round trip"},
        {"db_client_cluster_endpoint_lag_seconds", "gauge",
         "A replica's replication lag, as its server reports it"},
        {"db_client_cluster_endpoint_selected_total", "counter",
         "Checkouts the endpoint served"},
        {"db_client_cluster_endpoint_changes_total", "counter",
         "Topology changes the endpoint went through"},
    };
    cpool_endpoint_info in[64];
    char addr[64][160];
    for (size_t i = 0; i < np; i++) {
        cpool_cluster_endpoint_info(c, i, &in[i]);
        label_value(in[i].address != NULL ? in[i].address : "", addr[i], sizeof addr[i]);
    }
    cpool_cluster_stats cs = {.struct_size = sizeof cs};
    cpool_cluster_get_stats(c, &cs);
    put(&b, "# HELP db_client_cluster_checkouts_total Cluster checkouts by result\n"
            "# TYPE db_client_cluster_checkouts_total counter\n");
    put(&b, "db_client_cluster_checkouts_total{%s,result=\"ok\"} %llu\n", extra,
        (unsigned long long)cs.checkouts_ok);
    put(&b, "db_client_cluster_checkouts_total{%s,result=\"no_endpoint\"} %llu\n", extra,
        (unsigned long long)cs.no_endpoint);
    put(&b, "db_client_cluster_checkouts_total{%s,result=\"other\"} %llu\n", extra,
        (unsigned long long)(cs.checkouts - cs.checkouts_ok - cs.no_endpoint));
    put(&b, "# HELP db_client_cluster_retries_total cpool_cluster_run attempts after the "
            "first\n# TYPE db_client_cluster_retries_total counter\n"
            "db_client_cluster_retries_total{%s} %llu\n",
        extra, (unsigned long long)cs.retries);
    for (size_t f = 0; f < sizeof fam / sizeof *fam; f++) {
        put(&b, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name,
            fam[f].type);
        for (size_t i = 0; i < np; i++) {
            const cpool_endpoint_info *e = &in[i];
            const char *l = addr[i];
            switch (f) {
            case 0:
                put(&b, "%s{%s,endpoint=\"%s\"} %d\n", fam[f].name, extra, l,
                    e->state == CPOOL_ENDPOINT_UP);
                break;
            case 1:
                for (int r = 0; r < 3; r++)
                    put(&b, "%s{%s,endpoint=\"%s\",role=\"%s\"} %d\n", fam[f].name, extra, l,
                        cpool_role_name((cpool_role)r), e->role == (cpool_role)r);
                break;
            case 2:
                if (e->rtt_ns >= 0)
                    put(&b, "%s{%s,endpoint=\"%s\"} %.6f\n", fam[f].name, extra, l,
                        (double)e->rtt_ns / 1e9);
                break;
            case 3:
                if (e->lag_ms >= 0)
                    put(&b, "%s{%s,endpoint=\"%s\"} %.3f\n", fam[f].name, extra, l,
                        (double)e->lag_ms / 1e3);
                break;
            case 4:
                put(&b, "%s{%s,endpoint=\"%s\"} %llu\n", fam[f].name, extra, l,
                    (unsigned long long)e->selected);
                break;
            default:
                put(&b, "%s{%s,endpoint=\"%s\"} %llu\n", fam[f].name, extra, l,
                    (unsigned long long)e->changes);
                break;
            }
        }
    }
    return b.len;
}
