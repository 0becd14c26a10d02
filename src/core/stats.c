/* stats.c -- counters and latency histograms, and their snapshot.
 *
 * Histogram buckets are spaced by a factor of sqrt(2) from 1 us, so a
 * quantile read from them is within about 20 % of the true value anywhere
 * from microseconds to seconds, with 48 fixed cells and no allocation. */
#include "core.h"

#include <string.h>

int64_t cpool_histogram_bound_ns(int i)
{
    if (i < 0)
        return 0;
    if (i >= CPOOL_HIST_BUCKETS - 1)
        return INT64_MAX;
    /* 1000 * 2^(i/2): exact powers of two for even i, times sqrt(2) for odd. */
    int64_t base = (int64_t)1000 << (i / 2);
    return (i & 1) ? base + base * 29289 / 70711 : base; /* sqrt(2) = 1 + 0.41421 */
}

static int bucket_of(int64_t ns)
{
    if (ns <= 1000)
        return 0;
    /* floor(log2(ns / 1000)) gives the even bucket at or below; step up. */
    int lg = 63 - __builtin_clzll((unsigned long long)(ns / 1000));
    int i = 2 * lg;
    if (i > 0)
        i--;
    while (i < CPOOL_HIST_BUCKETS - 1 && cpool_histogram_bound_ns(i) < ns)
        i++;
    return i;
}

static inline void relaxed_add(_Atomic uint64_t *x, uint64_t v)
{
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

void cpool__hist_add(hist_cell *h, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    cpool__bump(&h->count);
    relaxed_add(&h->sum_ns, (uint64_t)ns);
    if ((uint64_t)ns > atomic_load_explicit(&h->max_ns, memory_order_relaxed))
        atomic_store_explicit(&h->max_ns, (uint64_t)ns, memory_order_relaxed);
    cpool__bump(&h->b[bucket_of(ns)]);
}

void cpool__histogram_add(cpool_histogram *h, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    h->count++;
    h->sum_ns += (uint64_t)ns;
    if ((uint64_t)ns > h->max_ns)
        h->max_ns = (uint64_t)ns;
    h->buckets[bucket_of(ns)]++;
}

static uint64_t take(_Atomic uint64_t *x)
{
    uint64_t v = atomic_load_explicit(x, memory_order_relaxed);
    atomic_store_explicit(x, 0, memory_order_relaxed);
    return v;
}

static void hist_fold(hist_cell *into, hist_cell *from)
{
    relaxed_add(&into->count, take(&from->count));
    relaxed_add(&into->sum_ns, take(&from->sum_ns));
    uint64_t m = take(&from->max_ns);
    if (m > atomic_load_explicit(&into->max_ns, memory_order_relaxed))
        atomic_store_explicit(&into->max_ns, m, memory_order_relaxed);
    for (int i = 0; i < CPOOL_HIST_BUCKETS; i++)
        relaxed_add(&into->b[i], take(&from->b[i]));
}

void cpool__cell_fold(conn_cell *into, conn_cell *from)
{
    relaxed_add(&into->checkouts_ok, take(&from->checkouts_ok));
    relaxed_add(&into->fresh, take(&from->fresh));
    relaxed_add(&into->validations, take(&from->validations));
    relaxed_add(&into->validation_failures, take(&from->validation_failures));
    hist_fold(&into->wait, &from->wait);
    hist_fold(&into->hold, &from->hold);
}

static uint64_t ld(const _Atomic uint64_t *x)
{
    return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

static void hist_sum(cpool_histogram *out, const hist_cell *h)
{
    out->count += ld(&h->count);
    out->sum_ns += ld(&h->sum_ns);
    if (ld(&h->max_ns) > out->max_ns)
        out->max_ns = ld(&h->max_ns);
    for (int i = 0; i < CPOOL_HIST_BUCKETS; i++)
        out->buckets[i] += ld(&h->b[i]);
}

static void cell_sum(cpool_stats *s, const conn_cell *c)
{
    s->checkouts_ok += ld(&c->checkouts_ok);
    s->checkouts_reused += ld(&c->checkouts_ok) - ld(&c->fresh);
    s->validations += ld(&c->validations);
    s->validation_failures += ld(&c->validation_failures);
    hist_sum(&s->wait, &c->wait);
    hist_sum(&s->hold, &c->hold);
}

static void list_sum(cpool_stats *s, const conn_list *l)
{
    for (const cpool_conn *c = l->head; c != NULL; c = c->next)
        cell_sum(s, &c->cell);
}

static uint32_t marked_for_recycling(const conn_list *l)
{
    uint32_t n = 0;
    for (const cpool_conn *c = l->head; c != NULL; c = c->next)
        n += atomic_load_explicit(&c->recycle, memory_order_relaxed);
    return n;
}

/* ------------------------------------------------------------ derived */

static void mark_from(stats_mark *m, const cpool_stats *s, int64_t at)
{
    m->at = at;
    m->checkouts = s->checkouts;
    m->checkouts_ok = s->checkouts_ok;
    m->reused = s->checkouts_reused;
    m->validations = s->validations;
    m->validation_failures = s->validation_failures;
    m->wait = s->wait;
    m->hold = s->hold;
}

void cpool__stats_start_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    memset(&p->mark_prev, 0, sizeof p->mark_prev);
    memset(&p->mark_cur, 0, sizeof p->mark_cur);
    p->mark_prev.at = p->mark_cur.at = cpool__now(p);
}

static double ratio(uint64_t part, uint64_t whole)
{
    return whole == 0 ? -1.0 : (double)part / (double)whole;
}

/* `to` minus `from`, bucket by bucket. The maximum cannot be taken apart;
 * the later one bounds the interpolation of the last bucket. */
static cpool_histogram hist_since(const cpool_histogram *to, const cpool_histogram *from)
{
    cpool_histogram d = *to;
    d.count -= from->count;
    d.sum_ns -= from->sum_ns;
    for (int i = 0; i < CPOOL_HIST_BUCKETS; i++)
        d.buckets[i] -= from->buckets[i];
    return d;
}

static void times_of(const cpool_histogram *h, int64_t *mean, int64_t *p99)
{
    *mean = h->count == 0 ? -1 : (int64_t)(h->sum_ns / h->count);
    *p99 = h->count == 0 ? -1 : cpool_histogram_quantile(h, 0.99);
}

static void derive(cpool_stats *s, const stats_mark *from, const stats_mark *to)
{
    s->interval_ns = to->at - from->at;
    s->reuse_ratio = ratio(to->reused - from->reused, to->checkouts_ok - from->checkouts_ok);
    s->validation_failure_ratio = ratio(to->validation_failures - from->validation_failures,
                                        to->validations - from->validations);
    s->checkout_success_ratio =
        ratio(to->checkouts_ok - from->checkouts_ok, to->checkouts - from->checkouts);
    cpool_histogram w = hist_since(&to->wait, &from->wait);
    cpool_histogram h = hist_since(&to->hold, &from->hold);
    times_of(&w, &s->wait_mean_ns, &s->wait_p99_ns);
    times_of(&h, &s->hold_mean_ns, &s->hold_p99_ns);
}

/* Closes the current interval when stats_interval_ms has passed: its end
 * becomes the start of the next. Returns whether one is complete. */
static bool rotate_locked(cpool *p, const cpool_stats *s, int64_t now)
{
    CPOOL_ASSERT_HELD(p);
    int64_t every = ms_to_ns(p->opts.stats_interval_ms);
    if (every <= 0)
        return false;
    if (now - p->mark_cur.at >= every) {
        p->mark_prev = p->mark_cur;
        mark_from(&p->mark_cur, s, now);
    }
    return p->mark_cur.at != p->mark_prev.at;
}

static void totals_locked(cpool *p, cpool_stats *out);

void cpool__stats_tick_locked(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    int64_t every = ms_to_ns(p->opts.stats_interval_ms);
    int64_t now = cpool__now(p);
    if (every <= 0 || now - p->mark_cur.at < every)
        return;
    cpool_stats s;
    totals_locked(p, &s);
    rotate_locked(p, &s, now);
}

/* The snapshot cpool_get_stats() returns, taken under mu. */
void cpool__stats_locked(cpool *p, cpool_stats *out)
{
    CPOOL_ASSERT_HELD(p);
    cpool_stats s;
    totals_locked(p, &s);
    int64_t now = cpool__now(p);
    if (rotate_locked(p, &s, now)) {
        derive(&s, &p->mark_prev, &p->mark_cur);
    } else {
        stats_mark m;
        mark_from(&m, &s, now);
        derive(&s, &p->mark_prev, &m); /* since creation */
    }
    *out = s;
}

/* The totals: everything but the derived figures. */
static void totals_locked(cpool *p, cpool_stats *out)
{
    CPOOL_ASSERT_HELD(p);
    cpool_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    cpool__counts_locked(p, &s.counts);
    s.max_pool_size = p->opts.max_pool_size;
    s.min_pool_size = p->opts.min_pool_size;
    s.connections_created = p->st_created;
    s.connections_ready = p->st_ready;
    s.connect_failures = p->st_connect_failures;
    s.capacity_refusals = p->st_capacity_refusals;
    s.keepalive_checks = p->st_keepalives;
    s.keepalive_failures = p->st_keepalive_failures;
    s.probes = p->st_probes;
    s.probes_ok = p->st_probes_ok;
    s.early_wakeups = p->st_early_wakeups;
    s.early_wake = p->turns && p->wake_early;
    s.cpu_others = p->cpu_others;
    s.barges = p->st_barges;
    memcpy(s.closed, p->st_closed, sizeof s.closed);
    memcpy(s.checkout_failures, p->st_failures, sizeof s.checkout_failures);
    cell_sum(&s, &p->retired);
    list_sum(&s, &p->pending);
    list_sum(&s, &p->available);
    list_sum(&s, &p->in_use);
    list_sum(&s, &p->orphans);
    s.recycle_pending = marked_for_recycling(&p->pending) +
                        marked_for_recycling(&p->available) + marked_for_recycling(&p->in_use);
    /* Check-ins are not counted on the hot path: every lease but those
     * still out has come back. */
    uint64_t out_now = p->orphans.n;
    for (const cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        out_now += atomic_load_explicit(&c->leased, memory_order_relaxed) == LEASE_HELD;
    s.checkins = s.checkouts_ok - out_now;
    hist_sum(&s.connect, &p->connect_hist);
    s.connect_fail_streak = p->fail_streak;
    s.breaker_open = cpool__breaker_open(p);
    s.breaker_opens = p->breaker_opens;
    s.leaks_suspected = p->leaks_suspected;
    s.leaks_reclaimed = p->leaks_reclaimed;
    s.recycles = p->st_recycles;
    s.oldest_wait_ns = p->wq_head != NULL ? cpool__now(p) - p->wq_head->since : 0;
    s.retries = atomic_load_explicit(&p->st_retries, memory_order_relaxed);
    s.retries_succeeded = atomic_load_explicit(&p->st_retries_ok, memory_order_relaxed);
    s.retries_exhausted = atomic_load_explicit(&p->st_retries_exhausted, memory_order_relaxed);
    s.last_connect_error_age_ns = -1;
    if (p->last_fail.code != 0) {
        s.last_connect_error = p->last_fail;
        s.last_connect_error_age_ns = cpool__now(p) - p->last_fail_at;
    }
    s.checkouts = s.checkouts_ok;
    for (int i = 0; i < CPOOL_ERROR_SLOTS; i++)
        s.checkouts += s.checkout_failures[i];
    *out = s;
}

int64_t cpool_histogram_quantile(const cpool_histogram *h, double q)
{
    if (h == NULL || h->count == 0)
        return 0;
    if (q <= 0)
        q = 0;
    if (q >= 1)
        return (int64_t)h->max_ns;
    double rank = q * (double)h->count;
    uint64_t seen = 0;
    for (int i = 0; i < CPOOL_HIST_BUCKETS; i++) {
        if (h->buckets[i] == 0)
            continue;
        if ((double)(seen + h->buckets[i]) >= rank) {
            int64_t lo = cpool_histogram_bound_ns(i - 1);
            int64_t hi = i == CPOOL_HIST_BUCKETS - 1 ? (int64_t)h->max_ns
                                                     : cpool_histogram_bound_ns(i);
            double frac = (rank - (double)seen) / (double)h->buckets[i];
            int64_t v = lo + (int64_t)(frac * (double)(hi - lo) + 0.5);
            return v > (int64_t)h->max_ns ? (int64_t)h->max_ns : v;
        }
        seen += h->buckets[i];
    }
    return (int64_t)h->max_ns;
}

/* The counts as cpool_get_counts() reports them: a parked connection is
 * available to anyone, so it counts as available. */
void cpool__counts_locked(const cpool *p, cpool_counts *out)
{
    CPOOL_ASSERT_HELD(p);
    uint32_t parked = 0;
    if (p->can_park)
        for (const cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
            parked += lease_parked(atomic_load(&c->leased));
    out->pending = p->pending.n;
    out->available = p->available.n + parked;
    out->in_use = p->in_use.n - parked;
    out->total = total_locked(p);
    out->waiting = atomic_load(&p->nwaiting);
    out->generation = p->generation;
    /* A draining pool is paused underneath, but what it is doing is shutting
     * down (until close() makes it CLOSED). */
    out->state = p->draining && p->state != CPOOL_STATE_CLOSED ? CPOOL_STATE_SHUTTING_DOWN
                 : p->state == CPOOL_STATE_READY && atomic_load(&p->suspended)
                     ? CPOOL_STATE_SUSPENDED
                     : p->state;
}
