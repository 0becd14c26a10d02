/* run.c -- cpool_run: check out, run the caller's function with the lease,
 * check in; and retry an idempotent operation on RetryableError within one
 * deadline. Built on the public calls only; takes no lock of its own. */
#include "core.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* The deadline of the cpool_run this thread is inside (pool clock, ns);
 * 0 = none running, NO_DEADLINE = one without a deadline. */
static _Thread_local int64_t tl_run_deadline;
static _Thread_local const cpool *tl_run_pool;

int64_t cpool_run_deadline_ms(void)
{
    if (tl_run_pool == NULL || tl_run_deadline == NO_DEADLINE)
        return -1;
    int64_t left = tl_run_deadline - cpool__now(tl_run_pool);
    return left <= 0 ? 0 : (left + 999999) / 1000000;
}

static bool retryable(const cpool_error *e)
{
    return (e->labels & CPOOL_LABEL_RETRYABLE) != 0;
}

/* The pause before retry n (1-based): retry_delay_ms * multiplier^(n-1),
 * +- the pool's backoff jitter, bounded by what is left of the deadline.
 * Returns false when no time is left for another attempt. */
int64_t cpool__retry_pause_ns(int64_t first_ms, uint32_t n, double multiplier, double jitter,
                              uint64_t *rng)
{
    double d = (double)ms_to_ns(first_ms);
    for (uint32_t i = 1; i < n && d < 6e16; i++)
        d *= multiplier;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    double u = (double)(*rng >> 11) / 9007199254740992.0;
    d += d * jitter * (2 * u - 1);
    return (int64_t)d;
}

void cpool__sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

void cpool__run_enter(const cpool *p, int64_t deadline, cpool__run_scope *saved)
{
    saved->pool = tl_run_pool;
    saved->deadline = tl_run_deadline;
    tl_run_pool = p;
    tl_run_deadline = deadline;
}

void cpool__run_leave(const cpool__run_scope *saved)
{
    tl_run_pool = saved->pool;
    tl_run_deadline = saved->deadline;
}

static bool pause_before_retry(cpool *p, const cpool_run_opts *o, uint32_t n, int64_t deadline,
                               uint64_t *rng)
{
    int64_t d = cpool__retry_pause_ns(o->retry_delay_ms, n, p->opts.backoff_multiplier,
                                      p->opts.backoff_jitter, rng);
    int64_t now = cpool__now(p);
    if (deadline != NO_DEADLINE && now + d >= deadline)
        return false;
    if (p->opts.clock != NULL) {
        /* A fake clock: the pause is the tests' to advance; only check. */
        return true;
    }
    cpool__sleep_ns(d);
    return true;
}

int cpool_run(cpool *p, const cpool_run_opts *o, cpool_run_fn fn, void *arg,
              cpool_error *err)
{
    cpool_error local;
    if (err == NULL)
        err = &local;
    if (p == NULL || fn == NULL)
        return cpool__err(err, CPOOL_EINVAL, "run: pool and function are required");
    cpool_run_opts ro = {.struct_size = sizeof ro, .timeout_ms = -1};
    if (o != NULL) {
        if (o->struct_size < offsetof(cpool_run_opts, tenant) + sizeof o->tenant)
            return cpool__err(err, CPOOL_EINVAL, "run %s: cpool_run_opts.struct_size %zu is "
                              "too small; set it to sizeof the struct", cpool_address(p),
                              o->struct_size);
        ro = *o;
        if (ro.retry_delay_ms < 0)
            return cpool__err(err, CPOOL_EINVAL, "run %s: retry_delay_ms %lld is negative",
                              cpool_address(p), (long long)ro.retry_delay_ms);
    }
    int64_t start = cpool__now(p);
    int64_t deadline = ro.timeout_ms >= 0 ? deadline_after(start, ro.timeout_ms) : NO_DEADLINE;
    uint64_t rng = (uint64_t)start | 1;
    int rc;
    for (uint32_t attempt = 0;; attempt++) {
        cpool_checkout_opts co = {.struct_size = sizeof co,
                                  .timeout_ms = -1,
                                  .label = ro.label,
                                  .tenant = ro.tenant};
        if (deadline != NO_DEADLINE) {
            int64_t left = deadline - cpool__now(p);
            co.timeout_ms = left <= 0 ? 0 : (left + 999999) / 1000000;
        }
        cpool_conn *c = NULL;
        memset(err, 0, sizeof *err);
        rc = cpool_checkout_with(p, &co, &c, err);
        if (rc == 0) {
            cpool__run_scope scope;
            cpool__run_enter(p, deadline, &scope);
            memset(err, 0, sizeof *err);
            rc = fn(c, arg, err);
            cpool__run_leave(&scope);
            if (rc != 0 && err->code == 0) {
                err->code = rc;
                snprintf(err->message, sizeof err->message,
                         "run %s: the function failed with %s", cpool_address(p),
                         cpool_err_name(rc));
            }
            /* In doubt unless the server answered: the next lease must not
             * be this connection. */
            unsigned flags = rc != 0 && err->kind != CPOOL_FAIL_SERVER ? CPOOL_CHECKIN_BROKEN : 0;
            cpool_error ce;
            int crc = cpool_checkin(p, c, flags, &ce);
            if (rc == 0 && crc != 0) {
                *err = ce;
                rc = crc;
            }
        }
        if (rc == 0) {
            if (attempt > 0)
                atomic_fetch_add_explicit(&p->st_retries_ok, 1, memory_order_relaxed);
            return 0;
        }
        if (!retryable(err))
            return rc;
        if (attempt >= ro.retries || !pause_before_retry(p, &ro, attempt + 1, deadline, &rng)) {
            atomic_fetch_add_explicit(&p->st_retries_exhausted, 1, memory_order_relaxed);
            return rc;
        }
        atomic_fetch_add_explicit(&p->st_retries, 1, memory_order_relaxed);
    }
}
