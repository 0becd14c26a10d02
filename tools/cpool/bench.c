/* bench.c -- `cpool bench`: threads that check out, run a statement, hold,
 * and check in, against any target, with a live progress line and a report.
 *
 * Each worker owns its counters and histograms and is the only one to
 * write them; the sampler (the main thread) reads them every interval with
 * relaxed atomic loads. Nothing on a worker's path is shared with another
 * worker except the pool itself, so the tool does not add contention of
 * its own to what it measures -- with one exception: `-n` hands out
 * operations from one shared counter.
 */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CMD "bench"
#define MAX_THREADS 4096
#define SQLITE_ROWS 1000

static const char bench_usage[] =
    "usage: cpool bench [TARGET] [options]\n"
    "\n"
    "Runs THREADS threads that each repeat: check a connection out, run the\n"
    "statement, hold the lease --hold-ms longer, check it in. Prints a live\n"
    "progress line, then a report: throughput, checkout wait and operation\n"
    "latency percentiles, errors by kind, connections created and closed by\n"
    "reason, pool events by type, and the pool options in effect.\n"
    "\n"
    "TARGET defaults to an embedded SQLite database in a new temporary\n"
    "directory (removed at the end), with a read/write mix on a 1000-row table.\n"
    "Other targets: postgresql://..., redis://..., sqlite:PATH, mem://NAME.\n"
    "\n"
    "  -t, --threads N          worker threads, 1..4096 (default 8)\n"
    "  -d, --duration SECONDS   run this long (default 10; may have a fraction)\n"
    "  -n, --ops N              stop after N operations in all (with no\n"
    "                           --duration, the run has no time limit)\n"
    "  -s, --statement TEXT     what each operation runs (default: SELECT 1 for\n"
    "                           SQL, PING for Redis, the mix for the embedded db)\n"
    "      --hold-ms X          keep each lease X ms longer (default 0)\n"
    "      --timeout-ms N       checkout timeout (wait + establish); -1 = the\n"
    "                           pool's own limits (default -1)\n"
    "      --want PREF          a multi-host target (postgresql://h1:p1,h2:p2/db,\n"
    "                           host=h1,h2 ..., redis://h1,h2) runs on a cluster,\n"
    "                           one pool per endpoint (docs/cluster.md); what the\n"
    "                           reads want: primary, primary_preferred, replica,\n"
    "                           replica_preferred or any (default: the target's\n"
    "                           target_session_attrs, else primary)\n"
    "      --write-ratio F      this fraction of the operations are writes, sent\n"
    "                           to the primary (default 0; \"10%\" works)\n"
    "      --write-statement T  what a write runs (default: the statement)\n"
    "      --max-lag-ms N       reads avoid replicas lagging more (default: any)\n"
    "      --tenants SPEC       tenant mix, NAME:WEIGHT[:MAX[:MIN[:RATE]]],... e.g.\n"
    "                           \"a:3,b:1\": threads are shared out by weight,\n"
    "                           each checks out as its tenant; MAX caps the\n"
    "                           tenant's leases, MIN reserves some for it\n"
    "  -o, --option NAME=VALUE  a pool option (repeatable); see cpool options\n"
    "      --no-events          no event subscriber: the pool keeps its\n"
    "                           lock-free path; event counts come from its\n"
    "                           statistics instead\n"
    "      --interval-ms N      progress and sampling period (default 1000)\n"
    "      --json FILE          also write the report as JSON (\"-\": stdout,\n"
    "                           instead of the text report)\n"
    "      --plot FILE.svg      chart of throughput, in use and waiting\n"
    "      --plot-engine E      auto (gnuplot when on PATH), builtin or gnuplot\n"
    "      --max-error-rate R   exit 1 when more than this fraction of the\n"
    "                           operations failed (default 0.01; \"5%\" works)\n"
    "  -q, --quiet              no progress output\n"
    "  -h, --help               this help\n"
    "\n";

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

/* ------------------------------------------------------------ histogram */

static int lat_bucket(uint64_t v)
{
    if (v < 16)
        return (int)v;
    int e = 63 - __builtin_clzll(v);
    if (e > 40)
        return LAT_BUCKETS - 1;
    return 16 + (e - 4) * 16 + (int)((v >> (e - 4)) & 15);
}

/* [lo, hi) of bucket i. */
static void lat_bounds(int i, uint64_t *lo, uint64_t *hi)
{
    if (i < 16) {
        *lo = (uint64_t)i;
        *hi = (uint64_t)i + 1;
        return;
    }
    int e = 4 + (i - 16) / 16;
    uint64_t sub = (uint64_t)((i - 16) % 16);
    *lo = (16 + sub) << (e - 4);
    *hi = (17 + sub) << (e - 4);
}

static void relaxed_add(_Atomic uint64_t *x, uint64_t v)
{
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static uint64_t ld(const _Atomic uint64_t *x)
{
    return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

void lat_add(lat_hist *h, int64_t ns)
{
    uint64_t v = ns < 0 ? 0 : (uint64_t)ns;
    relaxed_add(&h->b[lat_bucket(v)], 1);
    relaxed_add(&h->sum_ns, v);
    if (v > ld(&h->max_ns))
        atomic_store_explicit(&h->max_ns, v, memory_order_relaxed);
    /* The sampler may read the buckets and the count a few operations
     * apart; its quantiles sum the buckets and never divide by count, and
     * the final report reads after the join. */
    relaxed_add(&h->count, 1);
}

void lat_collect(lat_sum *into, const lat_hist *h)
{
    for (int i = 0; i < LAT_BUCKETS; i++)
        into->b[i] += ld(&h->b[i]);
    into->count += ld(&h->count);
    into->sum_ns += ld(&h->sum_ns);
    if (ld(&h->max_ns) > into->max_ns)
        into->max_ns = ld(&h->max_ns);
}

void lat_diff(lat_sum *into, const lat_sum *a, const lat_sum *b)
{
    into->count = 0;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        into->b[i] = a->b[i] >= b->b[i] ? a->b[i] - b->b[i] : 0;
        into->count += into->b[i];
    }
    into->sum_ns = a->sum_ns >= b->sum_ns ? a->sum_ns - b->sum_ns : 0;
    into->max_ns = a->max_ns;
}

int64_t lat_quantile(const lat_sum *s, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < LAT_BUCKETS; i++)
        total += s->b[i];
    if (total == 0)
        return 0;
    if (q >= 1)
        return (int64_t)s->max_ns;
    double r = ceil(q * (double)total);
    uint64_t rank = r < 1 ? 1 : (uint64_t)r;
    uint64_t seen = 0;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        seen += s->b[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            lat_bounds(i, &lo, &hi);
            uint64_t mid = i < 16 ? lo : lo + (hi - lo) / 2;
            if (s->max_ns > 0 && mid > s->max_ns)
                mid = s->max_ns;
            return (int64_t)mid;
        }
    }
    return (int64_t)s->max_ns;
}

/* ------------------------------------------------------------ events */

static void on_event(const cpool_event *ev, void *ctx)
{
    bench *b = ctx;
    if ((int)ev->type >= 0 && ev->type < CPOOL_EV_COUNT_)
        atomic_fetch_add_explicit(&b->ev[ev->type], 1, memory_order_relaxed);
}

/* ------------------------------------------------------------ workers */

static void note_error(bench *b, int code, const cpool_error *e)
{
    int slot = -code;
    if (slot <= 0 || slot >= CPOOL_ERROR_SLOTS || atomic_load(&b->have_msg[slot]))
        return;
    pthread_mutex_lock(&b->msg_mu);
    if (!atomic_load(&b->have_msg[slot])) {
        snprintf(b->msg[slot], sizeof b->msg[slot], "%s",
                 e->message[0] != '\0' ? e->message : cpool_strerror(code));
        cli_scrub(b->msg[slot], sizeof b->msg[slot]);
        atomic_store(&b->have_msg[slot], true);
    }
    pthread_mutex_unlock(&b->msg_mu);
}

static int slot_of(int rc)
{
    return rc < 0 && -rc < CPOOL_ERROR_SLOTS ? -rc : CPOOL_ERROR_SLOTS - 1;
}

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* A lease from the pool, or from the cluster for a read or a write. */
static int lease(bench *b, bool write, const char *tenant, cpool_conn **c, size_t *endpoint,
                 cpool_error *e)
{
    if (!b->cluster_mode) {
        cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = b->timeout_ms,
                                 .tenant = tenant};
        return cpool_checkout_with(b->pool, &o, c, e);
    }
    cpool_cluster_checkout_opts o = {.struct_size = sizeof o,
                                     .want = write ? CPOOL_WANT_PRIMARY : b->want,
                                     .timeout_ms = b->timeout_ms,
                                     .max_lag_ms = write ? 0 : b->max_lag_ms};
    cpool_lease_origin from;
    int rc = cpool_cluster_checkout(b->cluster, &o, c, &from, e);
    if (rc == 0)
        *endpoint = from.endpoint;
    return rc;
}

static void release(bench *b, cpool_conn *c, unsigned flags)
{
    if (b->cluster_mode)
        (void)cpool_cluster_checkin(b->cluster, c, flags, NULL);
    else
        (void)cpool_checkin(b->pool, c, flags, NULL);
}

static void one_op(bench *b, worker *w)
{
    bool write = b->write_ratio > 0 && (double)(xorshift(&w->rng) >> 8) / (double)(1u << 24) <
                                           b->write_ratio;
    cpool_conn *c = NULL;
    cpool_error e = {0};
    size_t endpoint = 0;
    int64_t t0 = cli_now_ns();
    int rc = lease(b, write, w->tenant >= 0 ? b->tenants[w->tenant].name : NULL, &c,
                   &endpoint, &e);
    int64_t t1 = cli_now_ns();
    if (rc != 0) {
        relaxed_add(&w->fail_checkout[slot_of(rc)], 1);
        relaxed_add(&w->failed, 1);
        relaxed_add(&w->ops, 1);
        note_error(b, rc, &e);
        /* A pool that fails at once (circuit breaker open, closed) would
         * otherwise turn the run into a busy loop of failures. */
        if (t1 - t0 < 1000000)
            cli_sleep_ns(1000000 - (t1 - t0));
        return;
    }
    lat_add(&w->wait, t1 - t0);

    int64_t hold_ns = (int64_t)(b->hold_ms * 1e6);
    if (!b->no_execute) {
        char sql[96];
        const char *stmt = write ? b->write_statement : b->statement;
        if (b->stmt_kind == STMT_SQLITE_MIX) {
            uint32_t r = xorshift(&w->rng);
            unsigned k = 1 + (r >> 8) % SQLITE_ROWS;
            if (r % 10 == 0)
                snprintf(sql, sizeof sql, "UPDATE bench SET v = v + 1 WHERE k = %u", k);
            else
                snprintf(sql, sizeof sql, "SELECT v FROM bench WHERE k = %u", k);
            stmt = sql;
        }
        rc = cpool_conn_execute(c, stmt, &e);
        lat_add(&w->op, cli_now_ns() - t1);
        cli_sleep_ns(hold_ns);
    } else {
        cli_sleep_ns(hold_ns);
        lat_add(&w->op, cli_now_ns() - t1);
    }
    unsigned flags = 0;
    if (rc != 0) {
        relaxed_add(&w->fail_execute[slot_of(rc)], 1);
        relaxed_add(&w->failed, 1);
        note_error(b, rc, &e);
        /* The connector says when a failure leaves the connection unusable. */
        if (e.kind == CPOOL_FAIL_NETWORK || e.kind == CPOOL_FAIL_TIMEOUT ||
            rc == CPOOL_EINTERRUPTED)
            flags = CPOOL_CHECKIN_BROKEN;
    } else {
        relaxed_add(&w->ok, 1);
        if (b->cluster_mode && endpoint < BENCH_MAX_ENDPOINTS)
            relaxed_add(write ? &w->ep_writes[endpoint] : &w->ep_reads[endpoint], 1);
    }
    release(b, c, flags);
    relaxed_add(&w->ops, 1);
}

static _Atomic int g_running;

static void *worker_main(void *arg)
{
    worker *w = arg;
    bench *b = w->b;
    while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        if (b->ops_limit > 0 &&
            atomic_fetch_add_explicit(&b->claimed, 1, memory_order_relaxed) >= b->ops_limit)
            break;
        one_op(b, w);
    }
    atomic_fetch_sub(&g_running, 1);
    return NULL;
}

/* ------------------------------------------------------------ parsing */

static bool valid_tenant_name(const char *s, size_t n)
{
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* "a:3,b:1:4:1" into b->tenants. */
static int parse_tenants(bench *b, const char *spec)
{
    const char *p = spec;
    b->ntenants = 0;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        char item[160];
        if (n >= sizeof item)
            return cli_usage_error(CMD, "invalid --tenants \"%.60s\": an entry is too long",
                                   spec);
        memcpy(item, p, n);
        item[n] = '\0';
        char orig[160];
        memcpy(orig, item, n + 1);
        p += n;
        if (*p == ',')
            p++;
        if (b->ntenants == BENCH_MAX_TENANTS)
            return cli_usage_error(CMD, "invalid --tenants: more than %d tenants",
                                   BENCH_MAX_TENANTS);
        tenant_cfg *t = &b->tenants[b->ntenants];
        memset(t, 0, sizeof *t);
        char *fields[5] = {item, NULL, NULL, NULL, NULL};
        int nf = 1;
        for (char *q = item; *q != '\0'; q++) {
            if (*q == ':') {
                if (nf == 5)
                    return cli_usage_error(CMD, "invalid --tenants entry \"%s\": expected "
                                                "NAME:WEIGHT[:MAX[:MIN[:RATE]]]",
                                           orig);
                *q = '\0';
                fields[nf++] = q + 1;
            }
        }
        if (!valid_tenant_name(fields[0], strlen(fields[0])))
            return cli_usage_error(CMD, "invalid tenant name \"%s\" in --tenants: expected 1 "
                                        "to 63 of A-Z a-z 0-9 _ - .",
                                   fields[0]);
        for (int i = 0; i < b->ntenants; i++)
            if (strcmp(b->tenants[i].name, fields[0]) == 0)
                return cli_usage_error(CMD, "tenant \"%s\" appears twice in --tenants",
                                       fields[0]);
        snprintf(t->name, sizeof t->name, "%.63s", fields[0]);
        int64_t v = 1;
        if (nf >= 2 && !cli_parse_i64(fields[1], 1, 1000, &v))
            return cli_usage_error(CMD, "invalid weight \"%s\" for tenant %s in --tenants: "
                                        "expected a number 1..1000",
                                   fields[1], t->name);
        t->weight = (unsigned)v;
        v = 0;
        if (nf >= 3 && !cli_parse_i64(fields[2], 0, UINT32_MAX, &v))
            return cli_usage_error(CMD, "invalid cap \"%s\" for tenant %s in --tenants: "
                                        "expected a number 0..4294967295 (0 = no cap)",
                                   fields[2], t->name);
        t->max_in_use = (uint32_t)v;
        v = 0;
        if (nf >= 4 && !cli_parse_i64(fields[3], 0, UINT32_MAX, &v))
            return cli_usage_error(CMD, "invalid reserve \"%s\" for tenant %s in --tenants: "
                                        "expected a number 0..4294967295",
                                   fields[3], t->name);
        t->min_reserved = (uint32_t)v;
        if (nf >= 5) {
            char *end = NULL;
            t->rate = strtod(fields[4], &end);
            if (end == fields[4] || *end != '\0' || !(t->rate >= 0 && t->rate <= 1e9))
                return cli_usage_error(CMD, "invalid rate \"%s\" for tenant %s in --tenants: "
                                            "expected checkouts per second, 0..1e9 (0 = no "
                                            "limit)",
                                       fields[4], t->name);
        }
        b->ntenants++;
    }
    if (b->ntenants == 0)
        return cli_usage_error(CMD, "invalid --tenants \"%s\": expected NAME:WEIGHT,... "
                                    "e.g. \"a:3,b:1\"",
                               spec);
    return 0;
}

/* Shares the threads out by weight (largest remainder), at least one each. */
static int assign_tenant_threads(bench *b)
{
    if (b->threads < b->ntenants)
        return cli_usage_error(CMD, "--tenants names %d tenants but --threads is %d: every "
                                    "tenant needs a thread",
                               b->ntenants, b->threads);
    unsigned total = 0;
    for (int i = 0; i < b->ntenants; i++)
        total += b->tenants[i].weight;
    int given = 0;
    double rem[BENCH_MAX_TENANTS];
    for (int i = 0; i < b->ntenants; i++) {
        double share = (double)b->threads * b->tenants[i].weight / total;
        b->tenants[i].threads = (int)share;
        rem[i] = share - b->tenants[i].threads;
        given += b->tenants[i].threads;
    }
    while (given < b->threads) {
        int best = 0;
        for (int i = 1; i < b->ntenants; i++)
            if (rem[i] > rem[best])
                best = i;
        b->tenants[best].threads++;
        rem[best] = -1;
        given++;
    }
    for (int i = 0; i < b->ntenants; i++) {
        if (b->tenants[i].threads > 0)
            continue;
        int most = 0;
        for (int k = 1; k < b->ntenants; k++)
            if (b->tenants[k].threads > b->tenants[most].threads)
                most = k;
        b->tenants[most].threads--;
        b->tenants[i].threads = 1;
    }
    return 0;
}

/* ------------------------------------------------------------ embedded db */

static int make_tmpdir(bench *b)
{
    snprintf(b->tmpdir, sizeof b->tmpdir, "/tmp/cpool-bench-XXXXXX");
    if (mkdtemp(b->tmpdir) == NULL) {
        cli_error(CMD, "cannot create a temporary directory in /tmp: %s", strerror(errno));
        b->tmpdir[0] = '\0';
        return -1;
    }
    return 0;
}

/* Removes the directory and what SQLite left in it (db, -wal, -shm). */
static void remove_tmpdir(bench *b)
{
    if (b->tmpdir[0] == '\0')
        return;
    DIR *d = opendir(b->tmpdir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", b->tmpdir, de->d_name);
            unlink(path);
        }
        closedir(d);
    }
    if (rmdir(b->tmpdir) != 0)
        cli_error(CMD, "cannot remove %s: %s", b->tmpdir, strerror(errno));
    b->tmpdir[0] = '\0';
}

/* ------------------------------------------------------------ the run */

static void progress(bench *b, const sample *s, bool final_clear)
{
    if (b->quiet)
        return;
    if (final_clear) {
        if (b->tty)
            fputs("\r\033[K", stderr);
        fflush(stderr);
        return;
    }
    char p99[32];
    cli_fmt_duration(s->wait_p99_ns, p99, sizeof p99);
    char line[256];
    snprintf(line, sizeof line,
             "[%6.1f s] %9.0f ops/s  p99 wait %-9s  in use %u  available %u  waiting %u  "
             "errors %llu",
             s->t_s, s->ops_s, p99, s->in_use, s->available, s->waiting,
             (unsigned long long)s->errors);
    if (b->tty)
        fprintf(stderr, "\r%s\033[K", line);
    else
        fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

static int add_sample(bench *b, const sample *s)
{
    if (b->nsamples == b->cap_samples) {
        size_t cap = b->cap_samples ? b->cap_samples * 2 : 64;
        sample *n = realloc(b->samples, cap * sizeof *n);
        if (n == NULL)
            return -1; /* the timeline stops growing; the run goes on */
        b->samples = n;
        b->cap_samples = cap;
    }
    b->samples[b->nsamples++] = *s;
    return 0;
}

/* Totals over all workers, as they are now. */
static void snapshot(bench *b, uint64_t *ops, uint64_t *errors, lat_sum *wait)
{
    *ops = 0;
    *errors = 0;
    memset(wait, 0, sizeof *wait);
    for (int i = 0; i < b->threads; i++) {
        worker *w = &b->workers[i];
        *ops += ld(&w->ops);
        *errors += ld(&w->failed);
        lat_collect(wait, &w->wait);
    }
}

/* The pool's counts, or the sum over a cluster's endpoints. */
static void total_counts(bench *b, cpool_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!b->cluster_mode) {
        cpool_get_counts(b->pool, out);
        return;
    }
    for (size_t i = 0; i < b->nendpoints; i++) {
        cpool_endpoint_info in;
        cpool_counts k;
        if (cpool_cluster_endpoint_info(b->cluster, i, &in) != 0)
            continue;
        cpool_get_counts(in.pool, &k);
        out->total += k.total;
        out->available += k.available;
        out->pending += k.pending;
        out->in_use += k.in_use;
        out->waiting += k.waiting;
    }
}

/* The main thread: samples every interval until the run ends. */
static void sample_loop(bench *b)
{
    const int64_t interval = b->interval_ms * 1000000;
    const int64_t deadline = b->duration_s > 0 ? b->t0_ns + (int64_t)(b->duration_s * 1e9)
                                               : INT64_MAX;
    lat_sum *prev_wait = calloc(1, sizeof *prev_wait);
    lat_sum *cur_wait = calloc(1, sizeof *cur_wait);
    lat_sum *delta = calloc(1, sizeof *delta);
    uint64_t prev_ops = 0, prev_err = 0;
    int64_t prev_t = b->t0_ns;
    int64_t next = b->t0_ns + interval;
    for (;;) {
        int64_t now = cli_now_ns();
        bool end = g_interrupted || now >= deadline || atomic_load(&g_running) == 0;
        if (now < next && !end) {
            int64_t until = next < deadline ? next : deadline;
            int64_t step = until - now;
            cli_sleep_ns(step < 20000000 ? step : 20000000);
            continue;
        }
        /* A last partial interval shorter than a tenth of the period would
         * give a noisy rate; it still counts in the totals. */
        if (!end || now - prev_t >= interval / 10 || b->nsamples == 0) {
            sample s;
            memset(&s, 0, sizeof s);
            uint64_t ops, err;
            if (cur_wait != NULL && prev_wait != NULL && delta != NULL) {
                snapshot(b, &ops, &err, cur_wait);
                lat_diff(delta, cur_wait, prev_wait);
                s.wait_p99_ns = lat_quantile(delta, 0.99);
                lat_sum *t = prev_wait;
                prev_wait = cur_wait;
                cur_wait = t;
            } else {
                lat_sum dummy;
                snapshot(b, &ops, &err, &dummy);
            }
            cpool_counts cnt;
            total_counts(b, &cnt);
            s.t_s = (double)(now - b->t0_ns) / 1e9;
            s.ops_s = now > prev_t ? (double)(ops - prev_ops) * 1e9 / (double)(now - prev_t) : 0;
            s.in_use = cnt.in_use;
            s.available = cnt.available;
            s.pending = cnt.pending;
            s.waiting = cnt.waiting;
            s.errors = err - prev_err;
            prev_ops = ops;
            prev_err = err;
            prev_t = now;
            (void)add_sample(b, &s);
            progress(b, &s, false);
        }
        while (next <= now)
            next += interval;
        if (end)
            break;
    }
    atomic_store(&b->stop, true);
    free(prev_wait);
    free(cur_wait);
    free(delta);
}

static void collect(bench *b)
{
    b->ops = b->ok = 0;
    memset(b->fail_checkout, 0, sizeof b->fail_checkout);
    memset(b->fail_execute, 0, sizeof b->fail_execute);
    memset(&b->wait, 0, sizeof b->wait);
    memset(&b->op, 0, sizeof b->op);
    for (int i = 0; i < b->threads; i++) {
        worker *w = &b->workers[i];
        b->ops += ld(&w->ops);
        b->ok += ld(&w->ok);
        for (int k = 0; k < CPOOL_ERROR_SLOTS; k++) {
            b->fail_checkout[k] += ld(&w->fail_checkout[k]);
            b->fail_execute[k] += ld(&w->fail_execute[k]);
        }
        lat_collect(&b->wait, &w->wait);
        lat_collect(&b->op, &w->op);
    }
}

/* One lease before the timed run: proves the target answers (a refused
 * port fails here with a clear message instead of a run full of errors),
 * prepares the embedded database and checks the statement. */
static int warm_up(bench *b)
{
    cpool_conn *c = NULL;
    cpool_error e = {0};
    size_t endpoint;
    int64_t saved = b->timeout_ms;
    if (b->cluster_mode && b->timeout_ms < 0)
        b->timeout_ms = 10000; /* the first checks of every endpoint */
    int rc = lease(b, b->write_ratio > 0, NULL, &c, &endpoint, &e);
    b->timeout_ms = saved;
    b->warmup_checkouts++;
    if (rc != 0) {
        char why[320];
        cli_explain_failure(&e, b->address, why, sizeof why);
        cli_error(CMD, "cannot get a connection to %s: %s: %s — %s", b->target_red,
                  cpool_err_name(rc), e.message[0] ? e.message : cpool_strerror(rc), why);
        if (rc == CPOOL_ECONNECT)
            return cli_exit_for_failure(&e);
        return rc == CPOOL_ETIMEDOUT ? CLI_EXIT_TIMEOUT : CLI_EXIT_CONNECT;
    }
    const char *what = b->statement;
    if (b->stmt_kind == STMT_SQLITE_MIX) {
        what = "CREATE TABLE IF NOT EXISTS bench(k INTEGER PRIMARY KEY, v INTEGER NOT NULL);"
               "INSERT OR IGNORE INTO bench(k, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
               "SELECT i + 1 FROM n WHERE i < 1000) SELECT i, 0 FROM n";
    }
    rc = cpool_conn_execute(c, what, &e);
    if (rc == CPOOL_EINVAL && b->stmt_kind == STMT_FIXED && strstr(e.message, "cannot run"))
        b->no_execute = true; /* a connector without execute(): time the hold */
    else if (rc == 0 && b->stmt_kind == STMT_SQLITE_MIX)
        rc = cpool_conn_execute(c, "SELECT v FROM bench WHERE k = 1", &e);
    if (rc == 0 && b->write_ratio > 0 && b->write_statement != b->statement)
        rc = cpool_conn_execute(c, b->write_statement, &e);
    release(b, c, rc != 0 ? CPOOL_CHECKIN_BROKEN : 0);
    if (b->no_execute) {
        if (!b->quiet)
            cli_error(CMD, "note: the %s connector cannot run statements; each operation is "
                           "the --hold-ms wait",
                      b->cx->name);
        return 0;
    }
    if (rc != 0) {
        cli_error(CMD, "the statement failed on the first connection: %s: %s",
                  cpool_err_name(rc), e.message);
        return CLI_EXIT_ERRORS;
    }
    return 0;
}

static void on_topology(const cpool_topology_event *ev, void *ctx)
{
    bench *b = ctx;
    pthread_mutex_lock(&b->topo_mu);
    if (b->ntopo < BENCH_MAX_TOPO)
        b->topo[b->ntopo++] = (topo_note){
            .time_ns = ev->time_ns,
            .endpoint = ev->endpoint,
            .type = ev->type,
            .from = ev->from,
            .to = ev->to};
    pthread_mutex_unlock(&b->topo_mu);
}

static int create_cluster(bench *b)
{
    cpool_error err = {0};
    if (b->ntenants > 0)
        return cli_usage_error(CMD, "--tenants is for one pool; a multi-endpoint target "
                                    "opens one pool per endpoint");
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    o.pool = &b->opts;
    o.on_topology = on_topology;
    o.topology_ctx = b;
    if (b->want_set)
        o.want = b->want;
    int rc = cpool_cluster_open(b->target, &o, &b->cluster, &err);
    if (rc != 0) {
        cli_scrub(err.message, sizeof err.message);
        cli_error(CMD, "cannot open a cluster for %s: %s", b->target_red, err.message);
        return rc == CPOOL_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_CONNECT;
    }
    b->want = cpool_cluster_want(b->cluster); /* --want, else the target's */
    b->nendpoints = cpool_cluster_size(b->cluster);
    snprintf(b->address, sizeof b->address, "%zu endpoints", b->nendpoints);
    return 0;
}

static int create_pool(bench *b)
{
    cpool_error err = {0};
    size_t count = 0;
    if (cpool_options_explain(&b->opts, NULL, 0, &count, NULL, NULL, 0, &err) != 0)
        return cli_usage_error(CMD, "%s", err.message);
    b->info = calloc(count > 0 ? count : 1, sizeof *b->info);
    if (b->info == NULL) {
        cli_error(CMD, "out of memory");
        return CLI_EXIT_ERRORS;
    }
    if (cpool_options_explain(&b->opts, b->info, count, &b->ninfo, NULL, NULL, 0, &err) != 0)
        return cli_usage_error(CMD, "%s", err.message);

    if (b->cluster_mode)
        return create_cluster(b);
    int rc = cpool_create(&b->opts, &b->pool, &err);
    if (rc != 0) {
        cli_error(CMD, "cannot create a pool for %s: %s", b->target_red, err.message);
        return rc == CPOOL_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_CONNECT;
    }
    for (int i = 0; i < b->ntenants; i++) {
        tenant_cfg *t = &b->tenants[i];
        if (cpool_tenant_set(b->pool, t->name, t->max_in_use, t->min_reserved, &err) != 0)
            return cli_usage_error(CMD, "tenant %s: %s", t->name, err.message);
        cpool_tenant_budget budget = {.struct_size = sizeof budget, .rate = t->rate};
        if (t->rate > 0 && cpool_tenant_budget_set(b->pool, t->name, &budget, &err) != 0)
            return cli_usage_error(CMD, "tenant %s: %s", t->name, err.message);
    }
    snprintf(b->address, sizeof b->address, "%s", cpool_address(b->pool));
    cli_scrub(b->address, sizeof b->address);
    if (cpool_ready(b->pool, &err) != 0) {
        cli_error(CMD, "cannot start the pool: %s", err.message);
        return CLI_EXIT_CONNECT;
    }
    return 0;
}

static void add_hist(cpool_histogram *into, const cpool_histogram *h)
{
    into->count += h->count;
    into->sum_ns += h->sum_ns;
    if (h->max_ns > into->max_ns)
        into->max_ns = h->max_ns;
    for (int i = 0; i < CPOOL_HIST_BUCKETS; i++)
        into->buckets[i] += h->buckets[i];
}

/* A cluster's report: each endpoint's statistics, and their sum where the
 * report shows one pool's (counters and histograms; the first endpoint's
 * options and sizes). */
static void close_cluster_pools(bench *b)
{
    for (size_t i = 0; i < b->nendpoints && i < BENCH_MAX_ENDPOINTS; i++)
        (void)cpool_cluster_endpoint_info(b->cluster, i, &b->endpoints[i]);
    for (size_t i = 0; i < b->nendpoints && i < BENCH_MAX_ENDPOINTS; i++) {
        cpool *p = b->endpoints[i].pool;
        cpool_close(p);
        cpool_stats *e = &b->ep_stats[i];
        e->struct_size = sizeof *e;
        (void)cpool_get_stats(p, e);
        cpool_stats *s = &b->stats;
        if (i == 0) {
            *s = *e;
            /* the derived figures are each pool's own: none for the sum */
            s->interval_ns = 0;
            s->reuse_ratio = s->validation_failure_ratio = s->checkout_success_ratio = -1;
            s->wait_mean_ns = s->wait_p99_ns = s->hold_mean_ns = s->hold_p99_ns = -1;
            continue;
        }
        s->connections_created += e->connections_created;
        s->connections_ready += e->connections_ready;
        s->connect_failures += e->connect_failures;
        for (int r = 0; r < CPOOL_CLOSE_REASON_SLOTS; r++)
            s->closed[r] += e->closed[r];
        for (int k = 0; k < CPOOL_ERROR_SLOTS; k++)
            s->checkout_failures[k] += e->checkout_failures[k];
        s->checkouts += e->checkouts;
        s->checkouts_ok += e->checkouts_ok;
        s->checkouts_reused += e->checkouts_reused;
        s->checkins += e->checkins;
        s->validations += e->validations;
        s->validation_failures += e->validation_failures;
        s->leaks_suspected += e->leaks_suspected;
        s->breaker_opens += e->breaker_opens;
        s->counts.generation += e->counts.generation;
        add_hist(&s->wait, &e->wait);
        add_hist(&s->hold, &e->hold);
        add_hist(&s->connect, &e->connect);
    }
}

static int run(bench *b)
{
    int rc = create_pool(b);
    if (rc != 0)
        return rc;
    if ((rc = warm_up(b)) != 0)
        return rc;

    b->workers = calloc((size_t)b->threads, sizeof *b->workers);
    if (b->workers == NULL) {
        cli_error(CMD, "out of memory for %d workers", b->threads);
        return CLI_EXIT_ERRORS;
    }
    int tenant = 0, left = b->ntenants > 0 ? b->tenants[0].threads : 0;
    for (int i = 0; i < b->threads; i++) {
        worker *w = &b->workers[i];
        w->b = b;
        w->index = i;
        w->rng = 2463534242u ^ (uint32_t)(i * 2654435761u);
        if (w->rng == 0)
            w->rng = 1;
        w->tenant = -1;
        if (b->ntenants > 0) {
            while (left == 0 && tenant + 1 < b->ntenants)
                left = b->tenants[++tenant].threads;
            w->tenant = tenant;
            left--;
        }
    }

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND; /* a second ^C ends the program at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    cli_utc_now(b->started_at, sizeof b->started_at);
    b->t0_ns = cli_now_ns();
    atomic_store(&g_running, b->threads);
    int started = 0;
    for (int i = 0; i < b->threads; i++) {
        int e = pthread_create(&b->workers[i].th, NULL, worker_main, &b->workers[i]);
        if (e != 0) {
            cli_error(CMD, "cannot start worker %d: %s", i + 1, strerror(e));
            atomic_fetch_sub(&g_running, b->threads - i);
            atomic_store(&b->stop, true);
            break;
        }
        b->workers[i].started = true;
        started++;
    }
    if (started == b->threads)
        sample_loop(b);
    for (int i = 0; i < b->threads; i++)
        if (b->workers[i].started)
            pthread_join(b->workers[i].th, NULL);
    b->t_end_ns = cli_now_ns();
    progress(b, NULL, true);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (started < b->threads)
        return CLI_EXIT_ERRORS;
    if (g_interrupted && !b->quiet)
        cli_error(CMD, "interrupted; reporting what ran");

    collect(b);
    for (int i = 0; i < b->ntenants; i++)
        b->tenants[i].have_stats =
            cpool_get_tenant_stats(b->pool, b->tenants[i].name, &b->tenants[i].stats) == 0;
    /* Closed first, so that the report's closes and events include the
     * pool's own shutdown (reason poolClosed) and created = closed. */
    if (b->cluster_mode) {
        close_cluster_pools(b);
    } else {
        cpool_close(b->pool);
        b->stats.struct_size = sizeof b->stats;
        (void)cpool_get_stats(b->pool, &b->stats);
    }

    double rate = b->ops > 0 ? (double)(b->ops - b->ok) / (double)b->ops : 0;
    b->exit_code = rate > b->max_error_rate ? CLI_EXIT_ERRORS : CLI_EXIT_OK;
    return 0;
}

/* ------------------------------------------------------------ command */

static int write_reports(bench *b)
{
    int code = b->exit_code;
    bool json_stdout = b->json_path != NULL && strcmp(b->json_path, "-") == 0;
    if (!json_stdout)
        report_text(b, stdout);
    if (b->json_path != NULL) {
        FILE *f = json_stdout ? stdout : fopen(b->json_path, "w");
        if (f == NULL) {
            cli_error(CMD, "cannot write %s: %s", b->json_path, strerror(errno));
            code = CLI_EXIT_ERRORS;
        } else {
            report_json(b, f);
            if ((json_stdout ? fflush(f) : fclose(f)) != 0) {
                cli_error(CMD, "cannot write %s: %s", b->json_path, strerror(errno));
                code = CLI_EXIT_ERRORS;
            }
        }
    }
    if (b->plot_path != NULL) {
        char msg[300];
        if (plot_write(b, b->plot_path, b->plot_engine, msg, sizeof msg) != 0) {
            cli_error(CMD, "--plot %s: %s", b->plot_path, msg);
            code = CLI_EXIT_ERRORS;
        }
    }
    if (fflush(stdout) != 0) {
        cli_error(CMD, "cannot write the report: %s", strerror(errno));
        code = CLI_EXIT_ERRORS;
    }
    return code;
}

static void cleanup(bench *b)
{
    cpool_destroy(b->pool);
    b->pool = NULL;
    cpool_cluster_close(b->cluster);
    b->cluster = NULL;
    pthread_mutex_destroy(&b->topo_mu);
    remove_tmpdir(b);
    free(b->workers);
    free(b->info);
    free(b->samples);
    pthread_mutex_destroy(&b->msg_mu);
}

static int parse_args(bench *b, int argc, char **argv, bool *help)
{
    enum {
        O_HOLD = 256, O_TIMEOUT, O_TENANTS, O_JSON, O_PLOT, O_ENGINE, O_INTERVAL,
        O_NO_EVENTS, O_MAX_ERR, O_WANT, O_WRITE_RATIO, O_WRITE_STMT, O_MAX_LAG
    };
    static const struct option longs[] = {
        {"threads", required_argument, NULL, 't'},
        {"duration", required_argument, NULL, 'd'},
        {"ops", required_argument, NULL, 'n'},
        {"statement", required_argument, NULL, 's'},
        {"hold-ms", required_argument, NULL, O_HOLD},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"tenants", required_argument, NULL, O_TENANTS},
        {"option", required_argument, NULL, 'o'},
        {"json", required_argument, NULL, O_JSON},
        {"plot", required_argument, NULL, O_PLOT},
        {"plot-engine", required_argument, NULL, O_ENGINE},
        {"interval-ms", required_argument, NULL, O_INTERVAL},
        {"no-events", no_argument, NULL, O_NO_EVENTS},
        {"max-error-rate", required_argument, NULL, O_MAX_ERR},
        {"want", required_argument, NULL, O_WANT},
        {"write-ratio", required_argument, NULL, O_WRITE_RATIO},
        {"write-statement", required_argument, NULL, O_WRITE_STMT},
        {"max-lag-ms", required_argument, NULL, O_MAX_LAG},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool duration_set = false;
    int c;
    int64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":t:d:n:s:o:qh", longs, NULL)) != -1) {
        switch (c) {
        case 't':
            if (!cli_parse_i64(optarg, 1, MAX_THREADS, &v))
                return cli_usage_error(CMD, "invalid --threads \"%s\": expected a number 1..%d",
                                       optarg, MAX_THREADS);
            b->threads = (int)v;
            break;
        case 'd':
            if (!cli_parse_double(optarg, 0.001, 31536000, &b->duration_s))
                return cli_usage_error(CMD, "invalid --duration \"%s\": expected seconds, "
                                            "0.001..31536000",
                                       optarg);
            duration_set = true;
            break;
        case 'n':
            if (!cli_parse_i64(optarg, 1, INT64_MAX / 2, &v))
                return cli_usage_error(CMD, "invalid --ops \"%s\": expected a number >= 1",
                                       optarg);
            b->ops_limit = (uint64_t)v;
            break;
        case 's':
            if (optarg[0] == '\0')
                return cli_usage_error(CMD, "invalid --statement \"\": expected a statement");
            b->statement = optarg;
            break;
        case O_HOLD:
            if (!cli_parse_double(optarg, 0, 3600000, &b->hold_ms))
                return cli_usage_error(CMD, "invalid --hold-ms \"%s\": expected milliseconds, "
                                            "0..3600000",
                                       optarg);
            break;
        case O_TIMEOUT:
            if (!cli_parse_i64(optarg, -1, INT64_MAX / 1000000, &b->timeout_ms))
                return cli_usage_error(CMD, "invalid --timeout-ms \"%s\": expected "
                                            "milliseconds >= 0, or -1 for the pool's limits",
                                       optarg);
            break;
        case O_TENANTS:
            if (parse_tenants(b, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'o':
            if (cli_apply_option(CMD, &b->opts, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case O_JSON:
            b->json_path = optarg;
            break;
        case O_PLOT:
            b->plot_path = optarg;
            break;
        case O_ENGINE:
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "builtin") != 0 &&
                strcmp(optarg, "gnuplot") != 0)
                return cli_usage_error(CMD, "invalid --plot-engine \"%s\": expected auto, "
                                            "builtin or gnuplot",
                                       optarg);
            b->plot_engine = optarg;
            break;
        case O_INTERVAL:
            if (!cli_parse_i64(optarg, 10, 3600000, &b->interval_ms))
                return cli_usage_error(CMD, "invalid --interval-ms \"%s\": expected "
                                            "milliseconds, 10..3600000",
                                       optarg);
            break;
        case O_NO_EVENTS:
            b->events = false;
            break;
        case O_MAX_ERR:
            if (cli_parse_fraction(optarg, &b->max_error_rate) != 0)
                return cli_usage_error(CMD, "invalid --max-error-rate \"%s\": expected a "
                                            "fraction 0..1 or a percentage 0%%..100%%",
                                       optarg);
            break;
        case O_WANT:
            if (cpool_want_parse(optarg, &b->want) != 0)
                return cli_usage_error(CMD, "invalid --want \"%s\": expected primary, "
                                            "primary_preferred, replica, replica_preferred "
                                            "or any",
                                       optarg);
            b->want_set = true;
            break;
        case O_WRITE_RATIO:
            if (cli_parse_fraction(optarg, &b->write_ratio) != 0)
                return cli_usage_error(CMD, "invalid --write-ratio \"%s\": expected a "
                                            "fraction 0..1 or a percentage 0%%..100%%",
                                       optarg);
            break;
        case O_WRITE_STMT:
            if (optarg[0] == '\0')
                return cli_usage_error(CMD, "invalid --write-statement \"\": expected a "
                                            "statement");
            b->write_statement = optarg;
            break;
        case O_MAX_LAG:
            if (!cli_parse_i64(optarg, 0, INT64_MAX / 1000000, &b->max_lag_ms))
                return cli_usage_error(CMD, "invalid --max-lag-ms \"%s\": expected "
                                            "milliseconds >= 0",
                                       optarg);
            break;
        case 'q':
            b->quiet = true;
            break;
        case 'h':
            *help = true;
            return 0;
        default:
            return cli_getopt_error(CMD, argv, optind, optopt, c);
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(CMD, "expected at most one TARGET, got \"%s\" too",
                               argv[optind + 1]);
    if (optind < argc)
        b->target = argv[optind];
    if (b->ops_limit > 0 && !duration_set)
        b->duration_s = 0;
    if (b->plot_path != NULL && strcmp(b->plot_engine, "gnuplot") == 0 && !plot_have_gnuplot())
        return cli_usage_error(CMD, "--plot-engine gnuplot: gnuplot is not on PATH (install "
                                    "gnuplot-nox, or use --plot-engine builtin)");
    if (b->ntenants > 0 && assign_tenant_threads(b) != 0)
        return CLI_EXIT_USAGE;
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench *b = calloc(1, sizeof *b);
    if (b == NULL) {
        cli_error(CMD, "out of memory");
        return CLI_EXIT_ERRORS;
    }
    pthread_mutex_init(&b->msg_mu, NULL);
    pthread_mutex_init(&b->topo_mu, NULL);
    b->threads = 8;
    b->duration_s = 10;
    b->timeout_ms = -1;
    b->interval_ms = 1000;
    b->events = true;
    b->max_error_rate = 0.01;
    b->plot_engine = "auto";
    cpool_options_init(&b->opts, sizeof b->opts);

    bool help = false;
    int code = parse_args(b, argc, argv, &help);
    if (help) {
        fputs(bench_usage, stdout);
        fputs(cli_exit_codes_help, stdout);
        code = CLI_EXIT_OK;
        goto out;
    }
    if (code != 0)
        goto out;

    char default_target[128];
    if (b->target == NULL) {
        if (cpool_connector_for("sqlite:x") == NULL) {
            code = cli_usage_error(CMD, "no TARGET given, and this build has no SQLite "
                                        "connector for the embedded default");
            goto out;
        }
        if (make_tmpdir(b) != 0) {
            code = CLI_EXIT_ERRORS;
            goto out;
        }
        snprintf(default_target, sizeof default_target, "sqlite:%s/bench.db", b->tmpdir);
        b->target = default_target;
        if (b->statement == NULL)
            b->stmt_kind = STMT_SQLITE_MIX;
    }
    cli_secrets_from(b->target);
    cli_redact(b->target, b->target_red, sizeof b->target_red);
    b->cx = cli_connector(CMD, b->target);
    if (b->cx == NULL) {
        code = CLI_EXIT_USAGE;
        goto out;
    }
    if (b->statement == NULL)
        b->statement = b->stmt_kind == STMT_SQLITE_MIX ? "90% SELECT v FROM bench WHERE k = ?, "
                                                         "10% UPDATE bench SET v = v + 1 WHERE "
                                                         "k = ?"
                       : strcmp(b->cx->name, "redis") == 0 ? "PING"
                                                           : "SELECT 1";
    if (b->write_statement == NULL)
        b->write_statement = b->statement;
    b->cluster_mode = b->want_set || b->write_ratio > 0 || b->max_lag_ms > 0 ||
                      cli_is_multi_host(b->target);
    if (b->cluster_mode && b->stmt_kind == STMT_SQLITE_MIX) {
        code = cli_usage_error(CMD, "--want, --write-ratio and --max-lag-ms are for "
                                    "multi-endpoint targets, not the embedded database");
        goto out;
    }
    b->opts.target = b->target;
    b->opts.connector = b->cx;
    if (b->events) {
        b->opts.on_event = on_event;
        b->opts.event_ctx = b;
    }
    b->tty = isatty(STDERR_FILENO) == 1;

    code = run(b);
    if (code == 0)
        code = write_reports(b);
out:
    cleanup(b);
    free(b);
    return code;
}
