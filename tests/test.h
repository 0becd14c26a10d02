/* test.h -- the fixtures the suites share, on top of the framework in
 * check.h:
 *   - a fake clock for the pool (cpool_clock);
 *   - an event recorder that copies every event so a test can count, find
 *     and wait for them after the pool has moved on;
 *   - helpers to build a pool on the in-memory connector, the fixture the
 *     suites share (server, recorder, fake clock, options, pool), and a
 *     checkout run on another thread. */
#ifndef CPOOL_TEST_H
#define CPOOL_TEST_H

#include "check.h"

#include <cpool/cpool.h>
#include <cpool/cpool_cluster.h>
#include <cpool/cpool_connector.h>
#include <cpool/cpool_mem.h>

/* ------------------------------------------------------------------ clock */

/* A pool clock that only moves when the test says so. It starts at 1 s, not
 * 0, so that a core using 0 as "never" cannot be fooled by it. */
typedef struct test_clock {
    _Atomic int64_t now_ns;
    cpool_clock clock; /* give &clk.clock to cpool_options.clock */
} test_clock;

static inline int64_t test_clock_read_(void *ctx)
{
    return atomic_load(&((test_clock *)ctx)->now_ns);
}

static inline void test_clock_init(test_clock *c)
{
    atomic_init(&c->now_ns, (int64_t)1000000000);
    c->clock.now_ns = test_clock_read_;
    c->clock.ctx = c;
}

/* Moves the clock forward and wakes the pool's timed waits, which re-read
 * the clock only when woken. `pool` may be NULL before the pool exists. */
static inline void test_clock_advance_ms(test_clock *c, cpool *pool, int64_t ms)
{
    atomic_fetch_add(&c->now_ns, ms * 1000000);
    if (pool != NULL)
        cpool_wake(pool);
}

/* ------------------------------------------------------------------ events */

/* A copy of one event: the pool's event only lives for the callback. */
typedef struct test_event {
    cpool_event_type type;
    uint64_t connection_id;
    int reason;
    bool has_service_id;
    char service_id[CPOOL_SERVICE_ID_MAX];
    bool interrupt_in_use;
    bool has_error;
    cpool_error error; /* valid when has_error */
    int64_t duration_ns;
    int64_t time_ns;
    char tenant[64];        /* LEAK_SUSPECTED: the holder's tenant */
    bool over_tenant_limit;
    uint32_t connections;   /* POOL_RECYCLED */
    uint32_t failures;      /* BACKOFF_STARTED, BREAKER_* */
} test_event;

/* Records every event of a pool. Waits use CLOCK_MONOTONIC real time: the
 * recorder is independent of whatever clock the pool was given. */
typedef struct test_recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    test_event *events; /* guarded by mu */
    size_t n, cap;      /* guarded by mu */
    /* Optional, called after each event is recorded and outside mu: lets a
     * test stall the emitting thread to widen a window (never to call the
     * pool, which the event contract forbids). */
    void (*hook)(const cpool_event *ev, void *ctx);
    void *hook_ctx;
} test_recorder;

static inline void test_rec_init(test_recorder *r)
{
    pthread_condattr_t ca;
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static inline void test_rec_free(test_recorder *r)
{
    free(r->events);
    r->events = NULL;
    r->n = r->cap = 0;
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

/* The cpool_event_fn; pass the recorder as event_ctx. */
static inline void test_rec_on_event(const cpool_event *ev, void *ctx)
{
    test_recorder *r = ctx;
    test_event e;
    memset(&e, 0, sizeof e);
    e.type = ev->type;
    e.connection_id = ev->connection_id;
    e.reason = ev->reason;
    if (ev->service_id != NULL) {
        e.has_service_id = true;
        snprintf(e.service_id, sizeof e.service_id, "%s", ev->service_id);
    }
    e.interrupt_in_use = ev->interrupt_in_use;
    if (ev->error != NULL) {
        e.has_error = true;
        e.error = *ev->error;
    }
    e.duration_ns = ev->duration_ns;
    e.time_ns = ev->time_ns;
    if (ev->tenant != NULL)
        snprintf(e.tenant, sizeof e.tenant, "%s", ev->tenant);
    e.over_tenant_limit = ev->over_tenant_limit;
    e.connections = ev->connections;
    e.failures = ev->failures;

    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        test_event *grown = realloc(r->events, cap * sizeof *grown);
        if (grown == NULL)
            FAIL("out of memory recording events");
        r->events = grown;
        r->cap = cap;
    }
    r->events[r->n++] = e;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->hook != NULL)
        r->hook(ev, r->hook_ctx);
}

static inline size_t test_rec_count(test_recorder *r, cpool_event_type type)
{
    size_t c = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++)
        c += r->events[i].type == type;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* Counts ConnectionClosed events with this reason. */
static inline size_t test_rec_count_closed(test_recorder *r, int reason)
{
    size_t c = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++)
        c += r->events[i].type == CPOOL_EV_CONN_CLOSED &&
             r->events[i].reason == reason;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* Index in the global order of the nth (0-based) event of `type`, or -1. */
static inline long test_rec_index(test_recorder *r, cpool_event_type type,
                                  size_t nth)
{
    long found = -1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        if (r->events[i].type == type && nth-- == 0) {
            found = (long)i;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* Copies the nth (0-based) event of `type`; false when there is none. */
static inline bool test_rec_find(test_recorder *r, cpool_event_type type,
                                 size_t nth, test_event *out)
{
    bool found = false;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        if (r->events[i].type == type && nth-- == 0) {
            *out = r->events[i];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* Copies the ConnectionClosed event of connection `id`; false when none. */
static inline bool test_rec_find_closed(test_recorder *r, uint64_t id,
                                        test_event *out)
{
    bool found = false;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        if (r->events[i].type == CPOOL_EV_CONN_CLOSED &&
            r->events[i].connection_id == id) {
            *out = r->events[i];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* Waits (real time, bounded) until at least `n` events of `type` arrived. */
static inline bool test_rec_wait(test_recorder *r, cpool_event_type type,
                                 size_t n, int64_t timeout_ms)
{
    int64_t deadline = test_now_ns() + timeout_ms * 1000000;
    struct timespec ts = {(time_t)(deadline / 1000000000),
                          (long)(deadline % 1000000000)};
    bool ok;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        size_t c = 0;
        for (size_t i = 0; i < r->n; i++)
            c += r->events[i].type == type;
        ok = c >= n;
        if (ok || pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
            break;
    }
    if (!ok) {
        size_t c = 0;
        for (size_t i = 0; i < r->n; i++)
            c += r->events[i].type == type;
        ok = c >= n;
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

#define WAIT_EVENTS(rec, type, n, timeout_ms)                                 \
    do {                                                                      \
        if (!test_rec_wait(rec, type, n, timeout_ms))                         \
            FAIL("waited %lld ms for %zu %s events, have %zu",                \
                 (long long)(timeout_ms), (size_t)(n), cpool_event_name(type),\
                 test_rec_count(rec, type));                                  \
    } while (0)

/* ------------------------------------------------------------------ pools */

static inline cpool_mem *test_mem_create(void)
{
    cpool_mem *mem = NULL;
    int rc = cpool_mem_create(&mem);
    if (rc != CPOOL_OK || mem == NULL)
        FAIL("cpool_mem_create: %s", cpool_err_name(rc));
    return mem;
}

/* The in-memory connector without reset(), as a connector whose sessions
 * keep nothing between leases has: unobserved, its check-ins may park in
 * one step (cpool_checkin). */
static inline const cpool_connector *test_noreset_connector(void)
{
    static cpool_connector table;
    table = *cpool_mem_connector();
    table.reset = NULL;
    return &table;
}

static inline cpool_mem_stats test_mem_stats(cpool_mem *mem)
{
    cpool_mem_stats s;
    memset(&s, 0, sizeof s);
    cpool_mem_get_stats(mem, &s);
    return s;
}

/* Options for a pool on `mem`, recording into `rec` (may be NULL). Without
 * a background thread: a test that needs one asks for it, the others stay
 * deterministic and call cpool_maintain() themselves. */
static inline void test_options(cpool_options *o, cpool_mem *mem,
                                test_recorder *rec)
{
    cpool_options_init(o, sizeof *o);
    /* Suites that script establishment failures expect every attempt to be
     * made; the backoff and breaker tests turn these on themselves. */
    o->backoff_base_ms = 0;
    o->breaker_threshold = 0;
    o->connector = cpool_mem_connector();
    o->connector_ctx = mem;
    o->target = "mem://unit";
    o->address = "unit-host:4242";
    o->maintenance_interval_ms = -1;
    if (rec != NULL) {
        o->on_event = test_rec_on_event;
        o->event_ctx = rec;
    }
}

#define test_pool_create(opts) test_pool_create_at_(opts, __FILE__, __LINE__)
static inline cpool *test_pool_create_at_(const cpool_options *o,
                                          const char *file, int line)
{
    cpool *p = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_create(o, &p, &e);
    if (rc != CPOOL_OK || p == NULL)
        test_fail(file, line, "cpool_create: %s: \"%s\"", cpool_err_name(rc),
                  e.message);
    return p;
}

#define test_ready(pool) test_ready_at_(pool, __FILE__, __LINE__)
static inline void test_ready_at_(cpool *p, const char *file, int line)
{
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_ready(p, &e);
    if (rc != CPOOL_OK)
        test_fail(file, line, "cpool_ready: %s: \"%s\"", cpool_err_name(rc),
                  e.message);
}

/* A checkout expected to succeed; 5 s bounds it so a hang reports here. */
#define test_checkout(pool) test_checkout_at_(pool, __FILE__, __LINE__)
static inline cpool_conn *test_checkout_at_(cpool *p, const char *file, int line)
{
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_checkout(p, 5000, &c, &e);
    if (rc != CPOOL_OK || c == NULL)
        test_fail(file, line, "cpool_checkout: %s: \"%s\"", cpool_err_name(rc),
                  e.message);
    return c;
}

#define test_checkin(pool, conn, flags)                                       \
    test_checkin_at_(pool, conn, flags, __FILE__, __LINE__)
static inline void test_checkin_at_(cpool *p, cpool_conn *c, unsigned flags,
                                    const char *file, int line)
{
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_checkin(p, c, flags, &e);
    if (rc != CPOOL_OK)
        test_fail(file, line, "cpool_checkin: %s: \"%s\"", cpool_err_name(rc),
                  e.message);
}

static inline cpool_counts test_counts(cpool *p)
{
    cpool_counts c;
    memset(&c, 0, sizeof c);
    cpool_get_counts(p, &c);
    return c;
}

/* Makes the next establishment on `mem` fail once in `phase` with `kind`.
 * The native code is 91 (a server error code) so a test can see it was
 * carried through. */
static inline void test_fail_next_handshake(cpool_mem *mem, cpool_phase phase,
                                            cpool_fail_kind kind)
{
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    fp.times = 1;
    fp.fail = true;
    fp.fail_phase = phase;
    fp.fail_kind = kind;
    fp.fail_native = 91;
    cpool_mem_set_failpoint(mem, &fp);
}

/* ------------------------------------------------------------------ fixture */

/* A pool on a fresh in-memory server, with its event recorder and a fake
 * clock, shared by the suites so each case starts from the same defaults
 * (test_options). A suite's or case's tweaks go into `opts` between
 * test_fixture_init and test_fixture_start; the pool only uses the fake
 * clock when given it (opts.clock = &f->clk.clock). The fixture holds
 * pointers to itself (the clock's ctx, the options' event_ctx), so it is
 * used in place and never copied. */
typedef struct test_fixture {
    cpool_mem *mem;
    test_recorder rec;
    test_clock clk;
    cpool_options opts;
    cpool *pool; /* NULL until started; set to NULL when destroyed early */
} test_fixture;

static inline void test_fixture_init(test_fixture *f)
{
    memset(f, 0, sizeof *f);
    f->mem = test_mem_create();
    test_rec_init(&f->rec);
    test_clock_init(&f->clk);
    test_options(&f->opts, f->mem, &f->rec);
    f->pool = NULL;
}

/* Creates the pool from f->opts and makes it ready. A macro so that a
 * failure names the case's line, not this header's. */
#define test_fixture_start(f) test_fixture_start_at_(f, __FILE__, __LINE__)
static inline void test_fixture_start_at_(test_fixture *f, const char *file,
                                          int line)
{
    f->pool = test_pool_create_at_(&f->opts, file, line);
    test_ready_at_(f->pool, file, line);
}

static inline void test_fixture_free(test_fixture *f)
{
    cpool_destroy(f->pool);
    f->pool = NULL;
    cpool_mem_destroy(f->mem);
    f->mem = NULL;
    test_rec_free(&f->rec);
}

/* The counter identity every snapshot must satisfy. */
#define ASSERT_COUNTS_CONSISTENT(c)                                           \
    do {                                                                      \
        cpool_counts t_c_ = (c);                                              \
        if (t_c_.total != t_c_.pending + t_c_.available + t_c_.in_use)        \
            FAIL("counts: total %u != pending %u + available %u + in_use %u", \
                 t_c_.total, t_c_.pending, t_c_.available, t_c_.in_use);      \
    } while (0)

/* ------------------------------------------------------------------ jobs */

/* A checkout running on its own thread, for waits the main thread observes
 * or ends (clear, close, a fake-clock advance). */
typedef struct test_job {
    cpool *pool;
    int64_t timeout_ms;
    pthread_t thread;
    int rc;
    cpool_conn *conn;
    cpool_error err;
    int64_t start_ns, end_ns; /* real time */
    atomic_bool done;
} test_job;

static inline void *test_job_main_(void *arg)
{
    test_job *j = arg;
    j->start_ns = test_now_ns();
    j->rc = cpool_checkout(j->pool, j->timeout_ms, &j->conn, &j->err);
    j->end_ns = test_now_ns();
    atomic_store(&j->done, true);
    return NULL;
}

/* A job not started yet; a thread of the test's own may run
 * test_job_main_() on it (after pinning itself, say). */
static inline void test_job_init(test_job *j, cpool *p, int64_t timeout_ms)
{
    memset(j, 0, sizeof *j);
    j->pool = p;
    j->timeout_ms = timeout_ms;
    atomic_init(&j->done, false);
}

static inline void test_job_start(test_job *j, cpool *p, int64_t timeout_ms)
{
    test_job_init(j, p, timeout_ms);
    TEST_THREAD_START(&j->thread, test_job_main_, j);
}

/* Joins the job, failing if it has not finished within `timeout_ms`. */
#define test_job_join(job, timeout_ms)                                        \
    test_job_join_at_(job, timeout_ms, __FILE__, __LINE__)
static inline void test_job_join_at_(test_job *j, int64_t timeout_ms,
                                     const char *file, int line)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    while (!atomic_load(&j->done)) {
        if (test_now_ms() > deadline)
            test_fail(file, line, "checkout thread still blocked after %lld ms",
                      (long long)timeout_ms);
        test_sleep_ms(1);
    }
    pthread_join(j->thread, NULL);
}

/* Case-insensitive search that also ignores '_', so "minpoolsize" matches
 * both "minPoolSize" and "min_pool_size". */
static inline bool test_mentions(const char *text, const char *word)
{
    char norm[512];
    size_t n = 0;
    for (const char *s = text; *s != '\0' && n + 1 < sizeof norm; s++) {
        if (*s != '_')
            norm[n++] = (char)tolower((unsigned char)*s);
    }
    norm[n] = '\0';
    return strstr(norm, word) != NULL;
}

/* The options the real-server cluster drills share: small pools that give
 * up on a dead server within a second, a 500 ms heartbeat, checks on
 * demand 50 ms apart, and a server that does not answer in 400 ms counted
 * as down. */
#define TEST_DRILL_HEARTBEAT_MS 500
#define TEST_DRILL_CHECK_TIMEOUT_MS 400
static inline void test_drill_cluster_options(cpool_options *po, cpool_cluster_options *o)
{
    cpool_options_init(po, sizeof *po);
    po->ignore_env = true;
    po->max_pool_size = 4;
    po->connect_timeout_ms = 1000;
    po->backoff_base_ms = 50;
    po->backoff_max_ms = 500;
    cpool_cluster_options_init(o, sizeof *o);
    o->pool = po;
    o->heartbeat_ms = TEST_DRILL_HEARTBEAT_MS;
    o->min_heartbeat_ms = 50;
    o->check_timeout_ms = TEST_DRILL_CHECK_TIMEOUT_MS;
}

#endif /* CPOOL_TEST_H */
