/* report.c -- the end-of-run report of `cpool bench`, as text and as JSON.
 * Both show the same figures; docs/cli.md describes each field. */
#include "bench.h"

#include <stdlib.h>
#include <string.h>

/* The options always shown in the text report, whatever their source; the
 * others appear only when something set them. */
static const char *const key_options[] = {"max_pool_size", "min_pool_size", "max_connecting",
                                          "wait_queue_timeout_ms", "connect_timeout_ms",
                                          "validation", NULL};

static bool is_key_option(const char *name)
{
    for (const char *const *k = key_options; *k != NULL; k++)
        if (strcmp(*k, name) == 0)
            return true;
    return false;
}

/* A ratio as a percentage, "-" when there was nothing to divide. */
static const char *pct(double r, char *buf, size_t size)
{
    if (r < 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.1f %%", 100 * r);
    return buf;
}

static const char *us(int64_t ns, char *buf, size_t size)
{
    if (ns < 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.0f us", (double)ns / 1000);
    return buf;
}

/* The library's derived figures: over its last closed interval. */
static void print_derived(FILE *f, const cpool_stats *s)
{
    char a[32], b[32], c[32], d[32], e[32], g[32], h[32];
    fprintf(f, "derived      over %.1f s: reuse %s, validation failures %s, checkouts ok %s; "
               "wait mean %s p99 %s; hold mean %s p99 %s\n",
            (double)s->interval_ns / 1e9, pct(s->reuse_ratio, a, sizeof a),
            pct(s->validation_failure_ratio, b, sizeof b),
            pct(s->checkout_success_ratio, c, sizeof c), us(s->wait_mean_ns, d, sizeof d),
            us(s->wait_p99_ns, e, sizeof e), us(s->hold_mean_ns, g, sizeof g),
            us(s->hold_p99_ns, h, sizeof h));
}

/* Handoff turns: the waiters woken ahead of their handoff, and whether
 * that is on now (with early_wake=auto, as the last measurement of the
 * other processes' CPU decided). */
static void print_early_wake(FILE *f, const cpool_stats *s)
{
    fprintf(f, "early wake   %llu waiters woken ahead of their handoff; now %s",
            (unsigned long long)s->early_wakeups, s->early_wake ? "on" : "off");
    if (s->cpu_others >= 0)
        fprintf(f, " (other processes used %.2f CPUs)", s->cpu_others);
    fputc('\n', f);
    if (s->barges > 0)
        fprintf(f, "barged       %llu checkouts took a connection left free ahead of the queue\n",
                (unsigned long long)s->barges);
}

void report_event_counts(const bench *b, uint64_t out[CPOOL_EV_COUNT_])
{
    memset(out, 0, sizeof(uint64_t) * CPOOL_EV_COUNT_);
    if (b->events) {
        for (int i = 0; i < CPOOL_EV_COUNT_; i++)
            out[i] = atomic_load(&((bench *)b)->ev[i]);
        return;
    }
    /* Without a subscriber, the statistics count the same things. */
    const cpool_stats *s = &b->stats;
    out[CPOOL_EV_POOL_CREATED] = 1;
    out[CPOOL_EV_POOL_READY] = 1;
    out[CPOOL_EV_POOL_CLEARED] = s->counts.generation;
    out[CPOOL_EV_POOL_CLOSED] = s->counts.state == CPOOL_STATE_CLOSED;
    out[CPOOL_EV_CONN_CREATED] = s->connections_created;
    out[CPOOL_EV_CONN_READY] = s->connections_ready;
    for (int r = 0; r < CPOOL_CLOSE_REASON_SLOTS; r++)
        out[CPOOL_EV_CONN_CLOSED] += s->closed[r];
    out[CPOOL_EV_CHECKOUT_STARTED] = s->checkouts;
    for (int i = 0; i < CPOOL_ERROR_SLOTS; i++)
        out[CPOOL_EV_CHECKOUT_FAILED] += s->checkout_failures[i];
    out[CPOOL_EV_CHECKED_OUT] = s->checkouts_ok;
    out[CPOOL_EV_CHECKED_IN] = s->checkins;
    out[CPOOL_EV_CONN_LEAK_SUSPECTED] = s->leaks_suspected;
}

static double elapsed_s(const bench *b)
{
    return (double)(b->t_end_ns - b->t0_ns) / 1e9;
}

static double throughput(const bench *b)
{
    double s = elapsed_s(b);
    return s > 0 ? (double)b->ops / s : 0;
}

/* Per-tenant totals, summed from the workers of that tenant. */
typedef struct tenant_sum {
    uint64_t ops, ok;
    lat_sum wait;
} tenant_sum;

static void tenant_totals(const bench *b, int t, tenant_sum *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < b->threads; i++) {
        const worker *w = &b->workers[i];
        if (w->tenant != t)
            continue;
        out->ops += atomic_load(&((worker *)w)->ops);
        out->ok += atomic_load(&((worker *)w)->ok);
        lat_collect(&out->wait, &w->wait);
    }
}

static void peaks(const bench *b, uint32_t *in_use, uint32_t *waiting)
{
    *in_use = *waiting = 0;
    for (size_t i = 0; i < b->nsamples; i++) {
        if (b->samples[i].in_use > *in_use)
            *in_use = b->samples[i].in_use;
        if (b->samples[i].waiting > *waiting)
            *waiting = b->samples[i].waiting;
    }
}

/* ------------------------------------------------------------ text */

static const double quantiles[] = {0.5, 0.9, 0.99, 0.999};

static void latency_row(FILE *f, const char *label, const lat_sum *s)
{
    char v[32];
    fprintf(f, "  %-15s", label);
    if (s->count == 0) {
        fprintf(f, " (none)\n");
        return;
    }
    for (size_t i = 0; i < sizeof quantiles / sizeof quantiles[0]; i++) {
        cli_fmt_duration(lat_quantile(s, quantiles[i]), v, sizeof v);
        fprintf(f, " %10s", v);
    }
    cli_fmt_duration((int64_t)s->max_ns, v, sizeof v);
    fprintf(f, " %10s", v);
    cli_fmt_duration((int64_t)(s->sum_ns / s->count), v, sizeof v);
    fprintf(f, " %10s\n", v);
}

static void error_rows(FILE *f, const bench *b, const uint64_t *counts, const char *where)
{
    for (int i = 1; i < CPOOL_ERROR_SLOTS; i++) {
        if (counts[i] == 0)
            continue;
        fprintf(f, "  %-20s %10llu  %-9s", cpool_err_name(-i), (unsigned long long)counts[i],
                where);
        if (atomic_load(&((bench *)b)->have_msg[i]))
            fprintf(f, "  e.g. \"%s\"", b->msg[i]);
        fputc('\n', f);
    }
}

/* A cluster's endpoint: reads and writes it served, summed over workers. */
static void endpoint_ops(const bench *b, size_t i, uint64_t *reads, uint64_t *writes)
{
    *reads = *writes = 0;
    for (int k = 0; k < b->threads; k++) {
        *reads += atomic_load(&((worker *)&b->workers[k])->ep_reads[i]);
        *writes += atomic_load(&((worker *)&b->workers[k])->ep_writes[i]);
    }
}

static void endpoints_text(const bench *b, FILE *f)
{
    double secs = elapsed_s(b);
    fputc('\n', f);
    fprintf(f, "endpoints    %zu; reads want %s, %.0f %% writes (to the primary)\n",
            b->nendpoints, cpool_want_name(b->want), b->write_ratio * 100);
    fprintf(f, "  %-24s %-6s %-8s %9s %9s %10s %10s %8s %8s %8s\n", "endpoint", "state", "role",
            "rtt", "lag", "reads/s", "writes/s", "created", "failed", "changes");
    for (size_t i = 0; i < b->nendpoints && i < BENCH_MAX_ENDPOINTS; i++) {
        const cpool_endpoint_info *in = &b->endpoints[i];
        uint64_t r, w;
        endpoint_ops(b, i, &r, &w);
        char rtt[32], lag[32];
        if (in->rtt_ns >= 0)
            cli_fmt_duration(in->rtt_ns, rtt, sizeof rtt);
        else
            snprintf(rtt, sizeof rtt, "-");
        if (in->lag_ms >= 0)
            snprintf(lag, sizeof lag, "%lld ms", (long long)in->lag_ms);
        else
            snprintf(lag, sizeof lag, "-");
        fprintf(f, "  %-24s %-6s %-8s %9s %9s %10.0f %10.0f %8llu %8llu %8llu\n", in->address,
                cpool_endpoint_state_name(in->state), cpool_role_name(in->role), rtt, lag,
                secs > 0 ? (double)r / secs : 0, secs > 0 ? (double)w / secs : 0,
                (unsigned long long)b->ep_stats[i].connections_created,
                (unsigned long long)b->ep_stats[i].connect_failures,
                (unsigned long long)in->changes);
    }
    if (b->ntopo == 0)
        return;
    fprintf(f, "topology     (changes seen, from the start of the timed run)\n");
    for (int i = 0; i < b->ntopo; i++) {
        const topo_note *t = &b->topo[i];
        fprintf(f, "  %+8.3f s  %-24s %-20s", (double)(t->time_ns - b->t0_ns) / 1e9,
                t->endpoint < b->nendpoints ? b->endpoints[t->endpoint].address : "?",
                cpool_topology_change_name(t->type));
        if (t->type == CPOOL_TOPO_ROLE)
            fprintf(f, " %s -> %s", cpool_role_name(t->from), cpool_role_name(t->to));
        else if (t->type == CPOOL_TOPO_UP)
            fprintf(f, " as %s", cpool_role_name(t->to));
        fputc('\n', f);
    }
}

static void endpoints_json(const bench *b, json_w *j)
{
    double secs = elapsed_s(b);
    json_str(j, "want", cpool_want_name(b->want));
    json_num(j, "write_ratio", b->write_ratio);
    json_arr(j, "endpoints");
    for (size_t i = 0; i < b->nendpoints && i < BENCH_MAX_ENDPOINTS; i++) {
        const cpool_endpoint_info *in = &b->endpoints[i];
        uint64_t r, w;
        endpoint_ops(b, i, &r, &w);
        json_obj(j, NULL);
        json_str(j, "address", in->address);
        json_str(j, "state", cpool_endpoint_state_name(in->state));
        json_str(j, "role", cpool_role_name(in->role));
        if (in->rtt_ns >= 0)
            json_num(j, "rtt_us", (double)in->rtt_ns / 1e3);
        if (in->lag_ms >= 0)
            json_int(j, "lag_ms", in->lag_ms);
        json_uint(j, "reads", r);
        json_uint(j, "writes", w);
        json_num(j, "reads_s", secs > 0 ? (double)r / secs : 0);
        json_num(j, "writes_s", secs > 0 ? (double)w / secs : 0);
        json_uint(j, "connections_created", b->ep_stats[i].connections_created);
        json_uint(j, "connect_failures", b->ep_stats[i].connect_failures);
        json_uint(j, "changes", in->changes);
        json_end_obj(j);
    }
    json_end_arr(j);
    json_arr(j, "topology");
    for (int i = 0; i < b->ntopo; i++) {
        const topo_note *t = &b->topo[i];
        json_obj(j, NULL);
        json_num(j, "t_s", (double)(t->time_ns - b->t0_ns) / 1e9);
        json_uint(j, "endpoint", t->endpoint);
        json_str(j, "change", cpool_topology_change_name(t->type));
        json_str(j, "from", cpool_role_name(t->from));
        json_str(j, "to", cpool_role_name(t->to));
        json_end_obj(j);
    }
    json_end_arr(j);
}

void report_text(const bench *b, FILE *f)
{
    const cpool_stats *s = &b->stats;
    fprintf(f, "cpool bench  %s  (connector %s)\n", b->target_red, b->cx->name);
    fprintf(f, "statement    %s%s\n", b->statement,
            b->no_execute ? "  (not run: the connector cannot run statements)" : "");
    if (b->write_ratio > 0)
        fprintf(f, "writes       %s  (%.0f %% of the operations)\n", b->write_statement,
                b->write_ratio * 100);
    fprintf(f, "threads      %d, hold %g ms, checkout timeout ", b->threads, b->hold_ms);
    if (b->timeout_ms < 0)
        fprintf(f, "from the pool's options\n");
    else
        fprintf(f, "%lld ms\n", (long long)b->timeout_ms);
    fprintf(f, "run          %.2f s from %s, sampled every %lld ms, events %s\n", elapsed_s(b),
            b->started_at, (long long)b->interval_ms,
            b->events ? "counted by a subscriber" : "from the statistics (--no-events)");
    fputc('\n', f);

    uint64_t failed = b->ops - b->ok;
    fprintf(f, "throughput   %.0f ops/s  (%llu operations: %llu ok, %llu failed, %.2f %%)\n",
            throughput(b), (unsigned long long)b->ops, (unsigned long long)b->ok,
            (unsigned long long)failed, b->ops > 0 ? 100.0 * (double)failed / (double)b->ops : 0);
    fputc('\n', f);
    fprintf(f, "  %-15s %10s %10s %10s %10s %10s %10s\n", "latency", "p50", "p90", "p99",
            "p99.9", "max", "mean");
    latency_row(f, "checkout wait", &b->wait);
    latency_row(f, "operation", &b->op);
    fputc('\n', f);

    if (failed == 0) {
        fprintf(f, "errors       none\n");
    } else {
        fprintf(f, "errors       %llu\n", (unsigned long long)failed);
        error_rows(f, b, b->fail_checkout, "checkout");
        error_rows(f, b, b->fail_execute, "statement");
    }

    uint64_t closed = 0;
    for (int r = 0; r < CPOOL_CLOSE_REASON_SLOTS; r++)
        closed += s->closed[r];
    fprintf(f, "connections  created %llu, ready %llu, failed %llu; closed %llu",
            (unsigned long long)s->connections_created, (unsigned long long)s->connections_ready,
            (unsigned long long)s->connect_failures, (unsigned long long)closed);
    const char *sep = ": ";
    for (int r = 0; r < CPOOL_CLOSE_REASON_COUNT_ && r < CPOOL_CLOSE_REASON_SLOTS; r++) {
        if (s->closed[r] == 0)
            continue;
        fprintf(f, "%s%s %llu", sep, cpool_close_reason_name(r),
                (unsigned long long)s->closed[r]);
        sep = ", ";
    }
    fputc('\n', f);
    uint32_t peak_use, peak_wait;
    peaks(b, &peak_use, &peak_wait);
    fprintf(f, "pool         checkouts %llu (reused %llu), validations %llu (%llu failed), "
               "peak in use %u, peak waiting %u\n",
            (unsigned long long)s->checkouts, (unsigned long long)s->checkouts_reused,
            (unsigned long long)s->validations, (unsigned long long)s->validation_failures,
            peak_use, peak_wait);
    if (!b->cluster_mode) {
        print_derived(f, s); /* a cluster's are per endpoint, in its statistics */
        print_early_wake(f, s);
    }
    if (b->warmup_checkouts > 0)
        fprintf(f, "             (the pool's counts include %llu checkout%s before the timed "
                   "run)\n",
                (unsigned long long)b->warmup_checkouts, b->warmup_checkouts == 1 ? "" : "s");

    uint64_t ev[CPOOL_EV_COUNT_];
    report_event_counts(b, ev);
    fprintf(f, "events       %s\n", b->events ? "(subscriber)" : "(from the statistics)");
    for (int i = 0; i < CPOOL_EV_COUNT_; i++)
        fprintf(f, "  %-28s %12llu\n", cpool_event_name((cpool_event_type)i),
                (unsigned long long)ev[i]);

    if (b->ntenants > 0) {
        fputc('\n', f);
        fprintf(f, "  %-16s %7s %12s %10s %8s %10s %6s %8s %14s %10s %8s %13s\n", "tenant",
                "threads", "ops/s", "ok", "failed", "p99 wait", "cap", "reserve",
                "timeouts@cap", "switched", "rate", "refused@rate");
        for (int t = 0; t < b->ntenants; t++) {
            tenant_sum *ts = calloc(1, sizeof *ts);
            if (ts == NULL)
                break;
            tenant_totals(b, t, ts);
            const tenant_cfg *tc = &b->tenants[t];
            char p99[32];
            cli_fmt_duration(lat_quantile(&ts->wait, 0.99), p99, sizeof p99);
            double secs = elapsed_s(b);
            char rate[24];
            if (tc->rate > 0)
                snprintf(rate, sizeof rate, "%g/s", tc->rate);
            else
                snprintf(rate, sizeof rate, "-");
            fprintf(f, "  %-16s %7d %12.0f %10llu %8llu %10s %6u %8u %14llu %10llu %8s %13llu\n",
                    tc->name, tc->threads, secs > 0 ? (double)ts->ops / secs : 0,
                    (unsigned long long)ts->ok, (unsigned long long)(ts->ops - ts->ok), p99,
                    tc->max_in_use, tc->min_reserved,
                    (unsigned long long)(tc->have_stats ? tc->stats.limit_timeouts : 0),
                    (unsigned long long)(tc->have_stats ? tc->stats.switched : 0), rate,
                    (unsigned long long)(tc->have_stats ? tc->stats.rate_refusals : 0));
            free(ts);
        }
    }

    if (b->cluster_mode)
        endpoints_text(b, f);

    fputc('\n', f);
    fprintf(f, "options      (set ones and the main ones; `cpool options` lists all)\n");
    for (size_t i = 0; i < b->ninfo; i++) {
        const cpool_option_info *in = &b->info[i];
        if (in->source == CPOOL_SOURCE_DEFAULT && !is_key_option(in->name))
            continue;
        fprintf(f, "  %-24s %-12s %s\n", in->name, in->value,
                cpool_option_source_name(in->source));
    }
}

/* ------------------------------------------------------------ JSON */

static void json_latency(json_w *j, const char *key, const lat_sum *s)
{
    json_obj(j, key);
    json_uint(j, "count", s->count);
    json_num(j, "p50", (double)lat_quantile(s, 0.5) / 1e3);
    json_num(j, "p90", (double)lat_quantile(s, 0.9) / 1e3);
    json_num(j, "p99", (double)lat_quantile(s, 0.99) / 1e3);
    json_num(j, "p999", (double)lat_quantile(s, 0.999) / 1e3);
    json_num(j, "max", (double)s->max_ns / 1e3);
    json_num(j, "mean", s->count > 0 ? (double)s->sum_ns / (double)s->count / 1e3 : 0);
    json_end_obj(j);
}

/* The pool's own histogram (sqrt(2) buckets; on the lock-free path it
 * samples its leases, see timing_sample). */
static void json_pool_hist(json_w *j, const char *key, const cpool_histogram *h)
{
    json_obj(j, key);
    json_uint(j, "count", h->count);
    json_num(j, "p50", (double)cpool_histogram_quantile(h, 0.5) / 1e3);
    json_num(j, "p99", (double)cpool_histogram_quantile(h, 0.99) / 1e3);
    json_num(j, "max", (double)h->max_ns / 1e3);
    json_end_obj(j);
}

static void json_errors(json_w *j, const char *key, const uint64_t *counts)
{
    json_obj(j, key);
    for (int i = 1; i < CPOOL_ERROR_SLOTS; i++)
        if (counts[i] > 0)
            json_uint(j, cpool_err_name(-i), counts[i]);
    json_end_obj(j);
}

void report_json(const bench *b, FILE *f)
{
    const cpool_stats *s = &b->stats;
    json_w j;
    json_begin(&j, f, true);
    json_obj(&j, NULL);
    json_str(&j, "tool", "cpool bench");
    char ver[32];
    snprintf(ver, sizeof ver, "%d.%d.%d", CPOOL_VERSION_MAJOR, CPOOL_VERSION_MINOR,
             CPOOL_VERSION_PATCH);
    json_str(&j, "version", ver);
    json_str(&j, "target", b->target_red);
    json_str(&j, "connector", b->cx->name);
    json_str(&j, "address", b->address);
    json_str(&j, "statement", b->statement);
    json_bool(&j, "statement_run", !b->no_execute);
    json_int(&j, "threads", b->threads);
    json_num(&j, "hold_ms", b->hold_ms);
    json_int(&j, "timeout_ms", b->timeout_ms);
    json_int(&j, "interval_ms", b->interval_ms);
    json_num(&j, "duration_limit_s", b->duration_s);
    json_uint(&j, "ops_limit", b->ops_limit);
    json_str(&j, "events_source", b->events ? "subscriber" : "statistics");
    json_str(&j, "started_at", b->started_at);
    json_num(&j, "elapsed_s", elapsed_s(b));
    json_uint(&j, "ops", b->ops);
    json_uint(&j, "ok", b->ok);
    json_uint(&j, "failed", b->ops - b->ok);
    json_num(&j, "throughput_ops_s", throughput(b));
    json_num(&j, "max_error_rate", b->max_error_rate);

    /* Every operation has exactly one outcome: "ok" or its error's name;
     * the same code at checkout and in the statement adds up. */
    json_obj(&j, "outcomes");
    json_uint(&j, "ok", b->ok);
    for (int i = 1; i < CPOOL_ERROR_SLOTS; i++)
        if (b->fail_checkout[i] + b->fail_execute[i] > 0)
            json_uint(&j, cpool_err_name(-i), b->fail_checkout[i] + b->fail_execute[i]);
    json_end_obj(&j);
    json_obj(&j, "errors");
    json_errors(&j, "checkout", b->fail_checkout);
    json_errors(&j, "statement", b->fail_execute);
    json_obj(&j, "examples");
    for (int i = 1; i < CPOOL_ERROR_SLOTS; i++)
        if (atomic_load(&((bench *)b)->have_msg[i]))
            json_str(&j, cpool_err_name(-i), b->msg[i]);
    json_end_obj(&j);
    json_end_obj(&j);

    json_latency(&j, "checkout_wait_us", &b->wait);
    json_latency(&j, "operation_us", &b->op);

    json_obj(&j, "connections");
    json_uint(&j, "created", s->connections_created);
    json_uint(&j, "ready", s->connections_ready);
    json_uint(&j, "connect_failures", s->connect_failures);
    json_obj(&j, "closed");
    for (int r = 0; r < CPOOL_CLOSE_REASON_COUNT_ && r < CPOOL_CLOSE_REASON_SLOTS; r++)
        json_uint(&j, cpool_close_reason_name(r), s->closed[r]);
    json_end_obj(&j);
    json_end_obj(&j);

    uint32_t peak_use, peak_wait;
    peaks(b, &peak_use, &peak_wait);
    json_obj(&j, "pool_stats");
    json_uint(&j, "checkouts", s->checkouts);
    json_uint(&j, "checkouts_ok", s->checkouts_ok);
    json_uint(&j, "checkouts_reused", s->checkouts_reused);
    json_uint(&j, "checkins", s->checkins);
    json_uint(&j, "validations", s->validations);
    json_uint(&j, "validation_failures", s->validation_failures);
    json_uint(&j, "breaker_opens", s->breaker_opens);
    json_uint(&j, "leaks_suspected", s->leaks_suspected);
    json_uint(&j, "early_wakeups", s->early_wakeups);
    json_uint(&j, "barges", s->barges);
    json_bool(&j, "early_wake", s->early_wake);
    json_num(&j, "cpu_others", s->cpu_others);
    json_uint(&j, "warmup_checkouts", b->warmup_checkouts);
    json_uint(&j, "peak_in_use", peak_use);
    json_uint(&j, "peak_waiting", peak_wait);
    json_uint(&j, "max_pool_size", s->max_pool_size);
    json_pool_hist(&j, "wait_us", &s->wait);
    json_pool_hist(&j, "hold_us", &s->hold);
    json_pool_hist(&j, "connect_us", &s->connect);
    json_obj(&j, "derived"); /* the library's, over its last closed interval; -1: none */
    json_num(&j, "interval_s", (double)s->interval_ns / 1e9);
    json_num(&j, "reuse_ratio", s->reuse_ratio);
    json_num(&j, "validation_failure_ratio", s->validation_failure_ratio);
    json_num(&j, "checkout_success_ratio", s->checkout_success_ratio);
    json_int(&j, "wait_mean_ns", s->wait_mean_ns);
    json_int(&j, "wait_p99_ns", s->wait_p99_ns);
    json_int(&j, "hold_mean_ns", s->hold_mean_ns);
    json_int(&j, "hold_p99_ns", s->hold_p99_ns);
    json_end_obj(&j);
    json_end_obj(&j);

    uint64_t ev[CPOOL_EV_COUNT_];
    report_event_counts(b, ev);
    json_obj(&j, "events");
    for (int i = 0; i < CPOOL_EV_COUNT_; i++)
        json_uint(&j, cpool_event_name((cpool_event_type)i), ev[i]);
    json_end_obj(&j);

    json_arr(&j, "tenants");
    for (int t = 0; t < b->ntenants; t++) {
        tenant_sum *ts = calloc(1, sizeof *ts);
        if (ts == NULL)
            break;
        tenant_totals(b, t, ts);
        const tenant_cfg *tc = &b->tenants[t];
        json_obj(&j, NULL);
        json_str(&j, "name", tc->name);
        json_uint(&j, "weight", tc->weight);
        json_int(&j, "threads", tc->threads);
        json_uint(&j, "max_in_use", tc->max_in_use);
        json_uint(&j, "min_reserved", tc->min_reserved);
        json_num(&j, "rate", tc->rate);
        json_uint(&j, "ops", ts->ops);
        json_uint(&j, "ok", ts->ok);
        json_latency(&j, "checkout_wait_us", &ts->wait);
        if (tc->have_stats) {
            json_uint(&j, "pool_checkouts_ok", tc->stats.checkouts_ok);
            json_uint(&j, "pool_limit_timeouts", tc->stats.limit_timeouts);
            json_uint(&j, "pool_switched", tc->stats.switched);
            json_uint(&j, "pool_affine", tc->stats.affine);
            json_uint(&j, "pool_rate_refusals", tc->stats.rate_refusals);
            json_uint(&j, "pool_waits", tc->stats.waits);
        }
        json_end_obj(&j);
        free(ts);
    }
    json_end_arr(&j);

    json_arr(&j, "options");
    for (size_t i = 0; i < b->ninfo; i++) {
        const cpool_option_info *in = &b->info[i];
        json_obj(&j, NULL);
        json_str(&j, "name", in->name);
        json_str(&j, "value", in->value);
        json_str(&j, "source", cpool_option_source_name(in->source));
        json_str(&j, "default", in->default_value);
        json_end_obj(&j);
    }
    json_end_arr(&j);

    json_arr(&j, "timeline");
    for (size_t i = 0; i < b->nsamples; i++) {
        const sample *sm = &b->samples[i];
        json_obj(&j, NULL);
        json_num(&j, "t_s", sm->t_s);
        json_num(&j, "ops_s", sm->ops_s);
        json_uint(&j, "in_use", sm->in_use);
        json_uint(&j, "available", sm->available);
        json_uint(&j, "pending", sm->pending);
        json_uint(&j, "waiting", sm->waiting);
        json_num(&j, "wait_p99_us", (double)sm->wait_p99_ns / 1e3);
        json_uint(&j, "errors", sm->errors);
        json_end_obj(&j);
    }
    json_end_arr(&j);
    if (b->cluster_mode)
        endpoints_json(b, &j);
    json_int(&j, "exit_code", b->exit_code);
    json_end_obj(&j);
}
