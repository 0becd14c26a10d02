/* prometheus.c -- cpool_stats in the Prometheus text exposition format 0.0.4.
 *
 * Every metric family is written as "# HELP", "# TYPE", then its samples,
 * so that the text of one pool is a valid exposition on its own. Names
 * follow OpenTelemetry's db.client.connection.* semantic conventions where
 * one exists (count, idle.min, max, pending_requests, timeouts,
 * create_time, wait_time, use_time) with dots turned into underscores; the
 * pool's own figures use the same prefix so one query finds them all. The
 * list and the meaning of each are in docs/observability.md.
 *
 * Values are written from integers without going through a double where
 * that would lose precision: counters as %llu, durations in seconds as an
 * exact decimal of the nanosecond count ("0.000123456"). A scraper then
 * sees exactly what cpool_get_stats() returned.
 *
 * Histogram buckets: the pool's histograms have 48 buckets whose bounds
 * grow by sqrt(2) from 1 us. Only the bounds that are powers of two (1 us,
 * 2 us, 4 us, ... 8.39 s) and +Inf are exposed, 25 series per histogram
 * instead of 48: the cumulative count at each exposed bound is exact
 * (it sums every finer bucket below it), only the resolution halves.
 */
#include "cpool/cpool.h"
#include "pool_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An output that counts what it would have written, like snprintf: the
 * first size - 1 bytes land in buf, the rest is only counted. */
typedef struct out {
    char *buf;
    size_t size;
    size_t len; /* bytes the full text needs so far */
} out;

static void put_n(out *o, const char *s, size_t n)
{
    if (o->size > 0 && o->len < o->size - 1) {
        size_t room = o->size - 1 - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void put(out *o, const char *s)
{
    put_n(o, s, strlen(s));
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void putf(out *o, const char *fmt, ...)
{
    /* Every formatted piece here is a number or a short name: 64 bytes
     * always hold it, so no second pass is needed. */
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    put_n(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A label value with the three escapes the format defines. */
static void put_escaped(out *o, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '\\': put_n(o, "\\\\", 2); break;
        case '"': put_n(o, "\\\"", 2); break;
        case '\n': put_n(o, "\\n", 2); break;
        default: put_n(o, s, 1); break;
        }
    }
}

/* Nanoseconds as seconds, exactly: "0.000001", "8.388608", "12". */
static void put_seconds(out *o, uint64_t ns)
{
    char frac[16];
    snprintf(frac, sizeof frac, "%09" PRIu64, ns % 1000000000u);
    size_t n = strlen(frac);
    while (n > 0 && frac[n - 1] == '0')
        n--;
    frac[n] = '\0';
    putf(o, "%" PRIu64, ns / 1000000000u);
    if (n > 0) {
        put(o, ".");
        put(o, frac);
    }
}

/* extra_labels must be `name="value"` pairs separated by commas, with the
 * format's escapes inside the quotes; anything else would make the whole
 * exposition unparsable, so it is left out (and said so in a comment). */
static bool labels_valid(const char *s)
{
    if (*s == '\0')
        return true;
    for (;;) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
            return false;
        while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
               (*s >= '0' && *s <= '9'))
            s++;
        if (*s++ != '=' || *s++ != '"')
            return false;
        while (*s != '"') {
            if (*s == '\0' || *s == '\n')
                return false;
            if (*s == '\\') {
                s++;
                if (*s != '\\' && *s != '"' && *s != 'n')
                    return false;
            }
            s++;
        }
        s++;
        if (*s == '\0')
            return true;
        if (*s++ != ',')
            return false;
    }
}

typedef struct ctx {
    out *o;
    const char *pool;   /* NULL: no pool label */
    const char *extra;  /* validated; NULL or "" = none */
} ctx;

static void family(ctx *c, const char *name, const char *type, const char *help)
{
    put(c->o, "# HELP ");
    put(c->o, name);
    put(c->o, " ");
    put(c->o, help);
    put(c->o, "\n# TYPE ");
    put(c->o, name);
    put(c->o, " ");
    put(c->o, type);
    put(c->o, "\n");
}

/* Writes `name{pool="..",extra,key="val"} ` (no value); without any label
 * just `name `. key may be NULL. */
static void sample_head(ctx *c, const char *name, const char *suffix, const char *key,
                        const char *val)
{
    out *o = c->o;
    bool extra = c->extra != NULL && c->extra[0] != '\0';
    put(o, name);
    if (suffix != NULL)
        put(o, suffix);
    if (c->pool == NULL && !extra && key == NULL) {
        put(o, " ");
        return;
    }
    const char *sep = "{";
    if (c->pool != NULL) {
        put(o, sep);
        put(o, "pool=\"");
        put_escaped(o, c->pool);
        put(o, "\"");
        sep = ",";
    }
    if (extra) {
        put(o, sep);
        put(o, c->extra);
        sep = ",";
    }
    if (key != NULL) {
        put(o, sep);
        put(o, key);
        put(o, "=\"");
        put_escaped(o, val);
        put(o, "\"");
    }
    put(o, "} ");
}

static void sample_u64(ctx *c, const char *name, const char *key, const char *val,
                       uint64_t v)
{
    sample_head(c, name, NULL, key, val);
    putf(c->o, "%" PRIu64 "\n", v);
}

static void gauge(ctx *c, const char *name, const char *help, uint64_t v)
{
    family(c, name, "gauge", help);
    sample_u64(c, name, NULL, NULL, v);
}

static void counter(ctx *c, const char *name, const char *help, uint64_t v)
{
    family(c, name, "counter", help);
    sample_u64(c, name, NULL, NULL, v);
}

static void histogram_samples(ctx *c, const char *name, const cpool_histogram *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < CPOOL_HIST_BUCKETS - 1; i++) {
        cum += h->buckets[i];
        if (i % 2 != 0)
            continue; /* 1 us * 2^(i/2): the power-of-two bounds */
        char le[32];
        out lo = {le, sizeof le, 0};
        put_seconds(&lo, (uint64_t)cpool_histogram_bound_ns(i));
        le[lo.len < sizeof le ? lo.len : sizeof le - 1] = '\0';
        sample_head(c, name, "_bucket", "le", le);
        putf(c->o, "%" PRIu64 "\n", cum);
    }
    /* +Inf is the count, so that the buckets and _count agree even when a
     * snapshot caught a histogram between its count and bucket updates. */
    sample_head(c, name, "_bucket", "le", "+Inf");
    putf(c->o, "%" PRIu64 "\n", h->count);
    sample_head(c, name, "_sum", NULL, NULL);
    put_seconds(c->o, h->sum_ns);
    put(c->o, "\n");
    sample_head(c, name, "_count", NULL, NULL);
    putf(c->o, "%" PRIu64 "\n", h->count);
}

static void histogram(ctx *c, const char *name, const char *help, const cpool_histogram *h)
{
    family(c, name, "histogram", help);
    histogram_samples(c, name, h);
}

/* Gauges: the pool as it is now. */
static void gauges(ctx *c, const cpool_stats *s)
{
    family(c, "db_client_connection_count", "gauge",
           "Connections open now, by state: idle (available) or used (checked out).");
    sample_u64(c, "db_client_connection_count", "state", "idle", s->counts.available);
    sample_u64(c, "db_client_connection_count", "state", "used", s->counts.in_use);
    gauge(c, "db_client_connection_establishing",
          "Connections being established (CMAP pending); they count toward the maximum.",
          s->counts.pending);
    gauge(c, "db_client_connection_pending_requests",
          "Checkouts waiting in the queue for a connection.", s->counts.waiting);
    family(c, "db_client_connection_max", "gauge",
           "Most connections the pool may hold open (maxPoolSize); +Inf when unlimited.");
    sample_head(c, "db_client_connection_max", NULL, NULL, NULL);
    if (s->max_pool_size == 0)
        put(c->o, "+Inf\n");
    else
        putf(c->o, "%" PRIu32 "\n", s->max_pool_size);
    gauge(c, "db_client_connection_idle_min",
          "Connections the pool keeps open even when idle (minPoolSize).", s->min_pool_size);
    gauge(c, "db_client_connection_generation",
          "The pool's generation; it grows by one at every clear.", s->counts.generation);
    family(c, "db_client_connection_pool_state", "gauge",
           "1 for the state the pool is in (paused, ready, closed, shutting_down, "
           "suspended), 0 for the others.");
    static const char *const states[] = {"paused", "ready", "closed", "shutting_down",
                                         "suspended"};
    for (int i = 0; i < 5; i++)
        sample_u64(c, "db_client_connection_pool_state", "state", states[i],
                   (int)s->counts.state == i);
    gauge(c, "db_client_connection_breaker_open",
          "1 while the circuit breaker is open (establishments keep failing).",
          s->breaker_open ? 1 : 0);
    family(c, "db_client_connection_oldest_wait_seconds", "gauge",
           "How long the oldest queued checkout has waited (PgBouncer's maxwait); 0 when "
           "none waits.");
    sample_head(c, "db_client_connection_oldest_wait_seconds", NULL, NULL, NULL);
    put_seconds(c->o, s->oldest_wait_ns > 0 ? (uint64_t)s->oldest_wait_ns : 0);
    put(c->o, "\n");
    gauge(c, "db_client_connection_recycle_pending",
          "Connections marked by a recycle and not yet replaced.", s->recycle_pending);
}

/* Counters: what happened since the pool was created. */
static void counters(ctx *c, const cpool_stats *s)
{
    counter(c, "db_client_connection_created_total",
            "Connections the pool started to establish (ConnectionCreated).",
            s->connections_created);
    counter(c, "db_client_connection_connect_failures_total",
            "Establishments that failed.", s->connect_failures);
    counter(c, "db_client_connection_capacity_refusals_total",
            "Establishments the server refused for lack of connection slots (too many "
            "clients); they neither back off nor open the circuit.",
            s->capacity_refusals);
    family(c, "db_client_connection_closed_total", "counter",
           "Connections closed, by reason (ConnectionClosed.reason).");
    for (int r = 0; r < CPOOL_CLOSE_REASON_COUNT_ && r < CPOOL_CLOSE_REASON_SLOTS; r++)
        sample_u64(c, "db_client_connection_closed_total", "reason",
                   cpool_close_reason_name(r), s->closed[r]);
    counter(c, "db_client_connection_checkouts_total",
            "Checkouts started (ConnectionCheckOutStarted).", s->checkouts);
    counter(c, "db_client_connection_checkouts_reused_total",
            "Checkouts served by a connection that was already open.", s->checkouts_reused);
    family(c, "db_client_connection_checkout_failures_total", "counter",
           "Checkouts that failed, by error code.");
    for (int i = 1; i < CPOOL_ERROR_SLOTS; i++) {
        const char *name = cpool_err_name(-i);
        char other[24];
        if (strcmp(name, "CPOOL_E?") == 0) {
            /* A code this build has no name for: shown only if it
             * happened, under its number. */
            if (s->checkout_failures[i] == 0)
                continue;
            snprintf(other, sizeof other, "%d", -i);
            name = other;
        }
        sample_u64(c, "db_client_connection_checkout_failures_total", "error", name,
                   s->checkout_failures[i]);
    }
    counter(c, "db_client_connection_timeouts_total",
            "Checkouts that timed out waiting for a connection (CPOOL_ETIMEDOUT, and "
            "CPOOL_ETENANT when the tenant's cap kept it waiting).",
            s->checkout_failures[-CPOOL_ETIMEDOUT] + s->checkout_failures[-CPOOL_ETENANT]);
    counter(c, "db_client_connection_validations_total",
            "Validations run on reused connections before handing them out.",
            s->validations);
    counter(c, "db_client_connection_validation_failures_total",
            "Validations that failed (the connection was closed and replaced).",
            s->validation_failures);
    counter(c, "db_client_connection_breaker_opens_total",
            "Times the circuit breaker opened.", s->breaker_opens);
    counter(c, "db_client_connection_leaks_suspected_total",
            "Leases held longer than leak_threshold_ms.", s->leaks_suspected);
    counter(c, "db_client_connection_leaks_reclaimed_total",
            "Leases held longer than leak_reclaim_ms, interrupted and taken back.",
            s->leaks_reclaimed);
    counter(c, "db_client_connection_retries_total",
            "cpool_run attempts after the first (on a retryable error).", s->retries);
    counter(c, "db_client_connection_retries_succeeded_total",
            "cpool_run calls that succeeded after a retry.", s->retries_succeeded);
    counter(c, "db_client_connection_retries_exhausted_total",
            "cpool_run calls that failed on a retryable error with no retry or time left.",
            s->retries_exhausted);
    counter(c, "db_client_connection_recycles_total",
            "Pool-wide recycles requested (cpool_recycle).", s->recycles);
    counter(c, "db_client_connection_early_wakeups_total",
            "Handoff turns: waiters woken ahead of their handoff (early_wake).",
            s->early_wakeups);
    counter(c, "db_client_connection_barges_total",
            "Handoff turns: checkouts that took a connection left free ahead of queued ones.",
            s->barges);
}

static void histograms(ctx *c, const cpool_stats *s)
{
    histogram(c, "db_client_connection_wait_time_seconds",
              "Time a checkout took, from its start to the lease.", &s->wait);
    histogram(c, "db_client_connection_use_time_seconds",
              "Time a lease was held, from checkout to checkin.", &s->hold);
    histogram(c, "db_client_connection_create_time_seconds",
              "Time a successful establishment took.", &s->connect);
}

size_t cpool_stats_prometheus(const cpool_stats *s, const char *pool_name,
                              const char *extra_labels, char *buf, size_t size)
{
    out o = {buf, buf != NULL ? size : 0, 0};
    if (s == NULL || s->struct_size < sizeof *s) {
        if (o.size > 0)
            buf[0] = '\0';
        return 0;
    }
    ctx c = {&o, pool_name, extra_labels};
    if (extra_labels != NULL && !labels_valid(extra_labels)) {
        put(&o, "# cpool: extra_labels left out: expected name=\"value\" pairs separated "
                "by commas\n");
        c.extra = NULL;
    }

    gauges(&c, s);
    counters(&c, s);
    histograms(&c, s);
    if (o.size > 0)
        buf[o.len < o.size ? o.len : o.size - 1] = '\0';
    return o.len;
}

/* ------------------------------------------------------------ tenants */

/* One family, one series per tenant: the tenant label goes first among the
 * extra labels of each series. */
typedef uint64_t (*tenant_value)(const cpool_tenant_stats *t);

typedef struct tenant_ctx {
    ctx base;
    const tenant_row *rows;
    size_t n;
    char *labels; /* per row: tenant="..."[,extra]; room for the longest */
    size_t label_size;
} tenant_ctx;

static ctx row_ctx(const tenant_ctx *tc, size_t i)
{
    ctx c = tc->base;
    c.extra = tc->labels + i * tc->label_size;
    return c;
}

static void tenant_family(tenant_ctx *tc, const char *name, const char *type, const char *help,
                          tenant_value value, const char *key, const char *val)
{
    family(&tc->base, name, type, help);
    for (size_t i = 0; i < tc->n; i++) {
        ctx c = row_ctx(tc, i);
        sample_u64(&c, name, key, val, value(&tc->rows[i].st));
    }
}

static uint64_t t_in_use(const cpool_tenant_stats *t) { return t->in_use; }
static uint64_t t_waiting(const cpool_tenant_stats *t) { return t->waiting; }
static uint64_t t_max(const cpool_tenant_stats *t) { return t->max_in_use; }
static uint64_t t_checkouts(const cpool_tenant_stats *t) { return t->checkouts; }
static uint64_t t_leases(const cpool_tenant_stats *t) { return t->checkouts_ok; }
static uint64_t t_waits(const cpool_tenant_stats *t) { return t->waits; }
static uint64_t t_cap(const cpool_tenant_stats *t) { return t->limit_timeouts; }
static uint64_t t_rate(const cpool_tenant_stats *t) { return t->rate_refusals; }
static uint64_t t_exceeded(const cpool_tenant_stats *t) { return t->holds_exceeded; }
static uint64_t t_reclaimed(const cpool_tenant_stats *t) { return t->holds_reclaimed; }
static uint64_t t_switched(const cpool_tenant_stats *t) { return t->switched; }

static void tenants_text(tenant_ctx *tc)
{
    tenant_family(tc, "db_client_connection_tenant_used", "gauge",
                  "Connections a tenant holds now.", t_in_use, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_pending_requests", "gauge",
                  "A tenant's checkouts waiting in the queue.", t_waiting, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_max", "gauge",
                  "A tenant's connection cap; 0 = none.", t_max, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_checkouts_total", "counter",
                  "A tenant's checkouts started.", t_checkouts, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_leases_total", "counter",
                  "A tenant's checkouts that got a connection.", t_leases, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_waits_total", "counter",
                  "A tenant's checkouts that had to queue.", t_waits, NULL, NULL);
    family(&tc->base, "db_client_connection_tenant_refusals_total", "counter",
           "A tenant's checkouts refused by its budgets: reason=\"cap\" timed out at its "
           "connection cap (CPOOL_ETENANT), \"rate\" over its rate (CPOOL_ERATE).");
    for (size_t i = 0; i < tc->n; i++) {
        ctx c = row_ctx(tc, i);
        sample_u64(&c, "db_client_connection_tenant_refusals_total", "reason", "cap",
                   t_cap(&tc->rows[i].st));
        sample_u64(&c, "db_client_connection_tenant_refusals_total", "reason", "rate",
                   t_rate(&tc->rows[i].st));
    }
    tenant_family(tc, "db_client_connection_tenant_holds_exceeded_total", "counter",
                  "A tenant's leases held past its max_hold_ms.", t_exceeded, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_holds_reclaimed_total", "counter",
                  "... and taken back.", t_reclaimed, NULL, NULL);
    tenant_family(tc, "db_client_connection_tenant_switched_total", "counter",
                  "Leases served with a connection another tenant used last (session reset "
                  "in full first).",
                  t_switched, NULL, NULL);
    family(&tc->base, "db_client_connection_tenant_wait_time_seconds", "histogram",
           "Time a tenant's checkout took, from its start to the lease.");
    for (size_t i = 0; i < tc->n; i++) {
        ctx c = row_ctx(tc, i);
        histogram_samples(&c, "db_client_connection_tenant_wait_time_seconds",
                          &tc->rows[i].st.wait);
    }
}

size_t cpool_tenants_prometheus(cpool *pool, const char *pool_name, const char *extra_labels,
                                char *buf, size_t size)
{
    out o = {buf, buf != NULL ? size : 0, 0};
    if (o.size > 0)
        buf[0] = '\0';
    if (pool == NULL)
        return 0;
    tenant_ctx tc = {.base = {&o, pool_name, extra_labels}};
    if (extra_labels != NULL && !labels_valid(extra_labels)) {
        put(&o, "# cpool: extra_labels left out: expected name=\"value\" pairs separated "
                "by commas\n");
        tc.base.extra = NULL;
    }
    tenant_row *rows = NULL;
    tc.n = cpool__tenant_rows(pool, &rows);
    tc.rows = rows;
    /* tenant="<name escaped: at most 2 bytes per byte>"[,extra] */
    size_t extra_len = tc.base.extra != NULL ? strlen(tc.base.extra) : 0;
    tc.label_size = sizeof "tenant=\"\"," + 2 * sizeof rows->name + extra_len + 1;
    tc.labels = tc.n > 0 ? malloc(tc.n * tc.label_size) : NULL;
    if (tc.labels != NULL) {
        for (size_t i = 0; i < tc.n; i++) {
            char *l = tc.labels + i * tc.label_size;
            out lo = {l, tc.label_size, 0};
            put(&lo, "tenant=\"");
            put_escaped(&lo, rows[i].name);
            put(&lo, "\"");
            if (extra_len > 0) {
                put(&lo, ",");
                put(&lo, tc.base.extra);
            }
            l[lo.len < tc.label_size ? lo.len : tc.label_size - 1] = '\0';
        }
        tenants_text(&tc);
    } else if (tc.n > 0) {
        put(&o, "# cpool: tenant series left out: out of memory\n");
    }
    free(tc.labels);
    free(rows);
    if (o.size > 0)
        buf[o.len < o.size ? o.len : o.size - 1] = '\0';
    return o.len;
}

/* ------------------------------------------------------------ several pools */

/* One family's lines in one pool's text: the HELP and TYPE lines, then its
 * samples. */
typedef struct block {
    const char *name; /* points into the text; name_len bytes */
    size_t name_len;
    const char *head, *samples; /* HELP+TYPE lines; sample lines */
    size_t head_len, samples_len;
} block;

typedef struct blocks {
    block *b;
    size_t n, cap;
    const char *comments; /* leading '#' lines that are neither HELP nor TYPE */
    size_t comments_len;
} blocks;

static bool push_block(blocks *bs, const char *name, size_t len, const char *at)
{
    if (bs->n == bs->cap) {
        size_t cap = bs->cap ? bs->cap * 2 : 64;
        block *g = realloc(bs->b, cap * sizeof *g);
        if (g == NULL)
            return false;
        bs->b = g;
        bs->cap = cap;
    }
    bs->b[bs->n++] = (block){.name = name, .name_len = len, .head = at};
    return true;
}

/* Splits text (as this file writes it: each family's HELP and TYPE, then
 * its samples) into families. */
static bool split_families(const char *text, blocks *bs)
{
    memset(bs, 0, sizeof *bs);
    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) + 1 : strlen(line);
        if (strncmp(line, "# HELP ", 7) == 0) {
            const char *name = line + 7;
            size_t nl = strcspn(name, " \n");
            if (!push_block(bs, name, nl, line))
                return false;
            bs->b[bs->n - 1].head_len = len;
        } else if (strncmp(line, "# TYPE ", 7) == 0 && bs->n > 0) {
            bs->b[bs->n - 1].head_len += len;
        } else if (line[0] == '#' && bs->n == 0) {
            if (bs->comments == NULL)
                bs->comments = line;
            bs->comments_len += len;
        } else if (bs->n > 0) {
            block *b = &bs->b[bs->n - 1];
            if (b->samples == NULL)
                b->samples = line;
            b->samples_len += len;
        }
        line += len;
    }
    return true;
}

static const block *find_block(const blocks *bs, const block *like)
{
    for (size_t i = 0; i < bs->n; i++)
        if (bs->b[i].name_len == like->name_len &&
            memcmp(bs->b[i].name, like->name, like->name_len) == 0)
            return &bs->b[i];
    return NULL;
}

/* One pool's whole text: its statistics and its tenants'. malloc'd. */
static char *pool_text(cpool *pool, const char *name, const char *extra)
{
    cpool_stats st = {.struct_size = sizeof st};
    if (cpool_get_stats(pool, &st) != 0)
        return NULL;
    size_t a = cpool_stats_prometheus(&st, name, extra, NULL, 0);
    size_t b = cpool_tenants_prometheus(pool, name, extra, NULL, 0);
    char *t = malloc(a + b + 1);
    if (t == NULL)
        return NULL;
    size_t got = cpool_stats_prometheus(&st, name, extra, t, a + 1);
    if (got > a)
        got = a;
    size_t got_t = cpool_tenants_prometheus(pool, name, extra, t + got, b + 1);
    t[got + (got_t < b ? got_t : b)] = '\0';
    return t;
}

size_t cpool_prometheus_pools(cpool *const *pools, const char *const *names, size_t n,
                              const char *extra_labels, char *buf, size_t size)
{
    out o = {buf, buf != NULL ? size : 0, 0};
    if (o.size > 0)
        buf[0] = '\0';
    if (pools == NULL || n == 0)
        return 0;
    char **texts = calloc(n, sizeof *texts);
    blocks *parts = calloc(n, sizeof *parts);
    bool ok = texts != NULL && parts != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        if (pools[i] == NULL) {
            ok = false;
            break;
        }
        const char *name = names != NULL && names[i] != NULL ? names[i] : pools[i]->name;
        ok = (texts[i] = pool_text(pools[i], name, extra_labels)) != NULL &&
             split_families(texts[i], &parts[i]);
    }
    if (!ok) {
        put(&o, "# cpool: no exposition: a NULL pool or out of memory\n");
    } else {
        if (parts[0].comments != NULL)
            put_n(&o, parts[0].comments, parts[0].comments_len);
        /* Families in the order they first appear; each pool's samples under
         * the one HELP and TYPE. */
        for (size_t i = 0; i < n; i++) {
            for (size_t f = 0; f < parts[i].n; f++) {
                const block *fam = &parts[i].b[f];
                bool seen = false;
                for (size_t k = 0; k < i && !seen; k++)
                    seen = find_block(&parts[k], fam) != NULL;
                if (seen)
                    continue;
                put_n(&o, fam->head, fam->head_len);
                for (size_t k = i; k < n; k++) {
                    const block *mine = k == i ? fam : find_block(&parts[k], fam);
                    if (mine != NULL && mine->samples != NULL)
                        put_n(&o, mine->samples, mine->samples_len);
                }
            }
        }
    }
    for (size_t i = 0; texts != NULL && i < n; i++)
        free(texts[i]);
    for (size_t i = 0; parts != NULL && i < n; i++)
        free(parts[i].b);
    free(texts);
    free(parts);
    if (o.size > 0)
        buf[o.len < o.size ? o.len : o.size - 1] = '\0';
    return o.len;
}
