/* cmap_runner.c -- runs CMAP "cmap-format" JSON tests against cpool.
 *
 * Usage: cmap_runner [--verbose] [FILE.json|DIR]...
 *        (no FILE or DIR: the directory named by $CPOOL_CMAP_SPEC_DIR)
 *
 * Every file is one test. The pool under test uses the in-memory connector
 * (cpool_mem.h) with a fresh cpool_mem per file, so the "integration" files
 * run too: their failCommand fail point is emulated by the connector's fail
 * point, which blocks or fails the handshake just as a server would. A file
 * the runner cannot run is a failure, never a skip: a conformance suite that
 * quietly shrinks proves nothing.
 *
 * Output: "PASS name" or "FAIL name: reason" per file, then exactly one line
 * "N passed, N failed, N skipped". Exit status 0 only when nothing failed
 * and something passed; 2 when there is nothing to run.
 *
 * The format (operations, event matching, errors) and our extensions are
 * described in tests/cmap/README.md.
 */
#include "cpool/cpool.h"
#include "cpool/cpool_mem.h"

#include <jansson.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Limits; overridable with -D to try the give-up paths quickly. */
/* Default waitForEvent timeout; the format leaves it to the runner. */
#ifndef WAIT_FOR_EVENT_DEFAULT_MS
#define WAIT_FOR_EVENT_DEFAULT_MS 10000
#endif
/* How long waitForThread and the teardown join may take before the runner
 * gives up on a thread (a pool that never fails a blocked checkout). */
#ifndef THREAD_JOIN_LIMIT_MS
#define THREAD_JOIN_LIMIT_MS 60000
#endif
/* A file that runs longer than this is reported and the runner exits: some
 * thread is stuck inside the pool and nothing after it can be trusted. */
#ifndef FILE_WATCHDOG_MS
#define FILE_WATCHDOG_MS 120000
#endif

static bool g_verbose;
/* Files done so far. Atomic because the watchdog reads them to print the
 * summary line when it gives up while the main thread is stuck. */
static atomic_uint g_passed, g_failed;

/* ------------------------------------------------------------ utilities */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Absolute CLOCK_MONOTONIC time `ms` from now, for cond_timedwait on
 * condition variables made by cond_init(). */
static struct timespec deadline_after_ms(int64_t ms)
{
    int64_t t = mono_ns() + ms * 1000000;
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    return ts;
}

/* Condition variables on the monotonic clock, so that timed waits do not
 * stretch or shrink when the wall clock is adjusted. */
static int cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* json_dumps for diagnostics; never NULL. Caller frees. */
static char *dump(const json_t *j)
{
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY |
                                            JSON_PRESERVE_ORDER)
                        : NULL;
    return s != NULL ? s : dup_str("<absent>");
}

/* ------------------------------------------------------------- watchdog */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t deadline_ns; /* 0 = no file running */
    char name[256];
    bool quit;
} wd = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wd.mu);
    while (!wd.quit) {
        int64_t now = mono_ns();
        if (wd.deadline_ns != 0 && now >= wd.deadline_ns) {
            char buf[640];
            int n = snprintf(buf, sizeof buf,
                             "FAIL %s: watchdog: the test did not finish within "
                             "%d s (a thread is stuck in the pool); giving up\n"
                             "%u passed, %u failed, 0 skipped\n",
                             wd.name, FILE_WATCHDOG_MS / 1000,
                             atomic_load(&g_passed), atomic_load(&g_failed) + 1);
            fflush(stdout);
            /* write(2) rather than stdio: the stuck thread might own the
             * stdout lock. */
            if (n > 0) {
                size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
                if (write(STDOUT_FILENO, buf, len) < 0 ||
                    write(STDERR_FILENO, buf, len) < 0) {
                    /* nothing more we can do */
                }
            }
            _exit(1);
        }
        struct timespec ts = deadline_after_ms(1000);
        pthread_cond_timedwait(&wd.cv, &wd.mu, &ts);
    }
    pthread_mutex_unlock(&wd.mu);
    return NULL;
}

static void watchdog_arm(const char *name)
{
    pthread_mutex_lock(&wd.mu);
    snprintf(wd.name, sizeof wd.name, "%s", name);
    wd.deadline_ns = mono_ns() + (int64_t)FILE_WATCHDOG_MS * 1000000;
    pthread_mutex_unlock(&wd.mu);
}

static void watchdog_disarm(void)
{
    pthread_mutex_lock(&wd.mu);
    wd.deadline_ns = 0;
    pthread_mutex_unlock(&wd.mu);
}

/* ------------------------------------------------------- event recorder */

/* A copy of one event: the pool's pointers are borrowed for the callback
 * only, so everything the assertions need is copied out. */
typedef struct rec_event {
    cpool_event_type type;
    bool has_address;
    uint64_t connection_id;
    int64_t duration_ns;
    int reason;
    bool interrupt_in_use;
    char service_id[CPOOL_SERVICE_ID_MAX]; /* "" = none */
    bool has_options;
    unsigned options_set;
    uint32_t max_pool_size, min_pool_size, max_connecting;
    int64_t max_idle_time_ms, wait_queue_timeout_ms;
} rec_event;

typedef struct recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* broadcast on every event, for waitForEvent */
    rec_event *ev;
    size_t n, cap;
    size_t counts[CPOOL_EV_COUNT_];
    char address[256]; /* the first address seen */
    bool oom;
    bool bad_type;
} recorder;

static void record_event(const cpool_event *ev, void *ctx)
{
    recorder *r = ctx;
    rec_event e;
    memset(&e, 0, sizeof e);
    e.type = ev->type;
    e.has_address = ev->address != NULL && ev->address[0] != '\0';
    e.connection_id = ev->connection_id;
    e.duration_ns = ev->duration_ns;
    e.reason = ev->reason;
    e.interrupt_in_use = ev->interrupt_in_use;
    if (ev->service_id != NULL)
        snprintf(e.service_id, sizeof e.service_id, "%s", ev->service_id);
    if (ev->type == CPOOL_EV_POOL_CREATED && ev->options != NULL) {
        e.has_options = true;
        e.options_set = ev->options_set;
        e.max_pool_size = ev->options->max_pool_size;
        e.min_pool_size = ev->options->min_pool_size;
        e.max_connecting = ev->options->max_connecting;
        e.max_idle_time_ms = ev->options->max_idle_time_ms;
        e.wait_queue_timeout_ms = ev->options->wait_queue_timeout_ms;
    }

    pthread_mutex_lock(&r->mu);
    if (r->address[0] == '\0' && e.has_address)
        snprintf(r->address, sizeof r->address, "%s", ev->address);
    if ((unsigned)ev->type >= CPOOL_EV_COUNT_) {
        r->bad_type = true;
    } else if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        rec_event *grown = realloc(r->ev, cap * sizeof *grown);
        if (grown == NULL) {
            r->oom = true;
        } else {
            r->ev = grown;
            r->cap = cap;
        }
    }
    if (r->n < r->cap && (unsigned)ev->type < CPOOL_EV_COUNT_) {
        r->ev[r->n++] = e;
        r->counts[ev->type]++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* The event as the JSON object the expected events are matched against.
 * Keys are only present when the pool supplied the value, so that the
 * wildcard 42 ("must exist") catches a missing one. */
static json_t *event_json(const rec_event *e, const char *address)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    json_object_set_new(o, "type", json_string(cpool_event_name(e->type)));
    if (e->has_address)
        json_object_set_new(o, "address", json_string(address));
    switch (e->type) {
    case CPOOL_EV_CONN_CREATED:
    case CPOOL_EV_CONN_READY:
    case CPOOL_EV_CONN_CLOSED:
    case CPOOL_EV_CHECKED_OUT:
    case CPOOL_EV_CHECKED_IN:
        if (e->connection_id != 0)
            json_object_set_new(o, "connectionId",
                                json_integer((json_int_t)e->connection_id));
        break;
    default:
        break;
    }
    switch (e->type) {
    case CPOOL_EV_CONN_READY:
    case CPOOL_EV_CHECKED_OUT:
    case CPOOL_EV_CHECKOUT_FAILED:
        if (e->duration_ns >= 0)
            json_object_set_new(o, "duration", json_real((double)e->duration_ns / 1e6));
        break;
    default:
        break;
    }
    if (e->type == CPOOL_EV_CONN_CLOSED)
        json_object_set_new(o, "reason", json_string(cpool_close_reason_name(e->reason)));
    if (e->type == CPOOL_EV_CHECKOUT_FAILED)
        json_object_set_new(o, "reason",
                            json_string(cpool_checkout_failure_name(e->reason)));
    if (e->type == CPOOL_EV_POOL_CLEARED) {
        json_object_set_new(o, "interruptInUseConnections",
                            json_boolean(e->interrupt_in_use));
        if (e->service_id[0] != '\0')
            json_object_set_new(o, "serviceId", json_string(e->service_id));
    }
    if (e->type == CPOOL_EV_POOL_CREATED && e->has_options) {
        /* Only the options that differ from the defaults, like a driver's
         * event that lists what the user set. An empty object still
         * "exists" for the wildcard. */
        json_t *opts = json_object();
        if (e->options_set & CPOOL_OPT_MAX_POOL_SIZE)
            json_object_set_new(opts, "maxPoolSize", json_integer(e->max_pool_size));
        if (e->options_set & CPOOL_OPT_MIN_POOL_SIZE)
            json_object_set_new(opts, "minPoolSize", json_integer(e->min_pool_size));
        if (e->options_set & CPOOL_OPT_MAX_IDLE_TIME_MS)
            json_object_set_new(opts, "maxIdleTimeMS", json_integer(e->max_idle_time_ms));
        if (e->options_set & CPOOL_OPT_MAX_CONNECTING)
            json_object_set_new(opts, "maxConnecting", json_integer(e->max_connecting));
        if (e->options_set & CPOOL_OPT_WAIT_QUEUE_TIMEOUT_MS)
            json_object_set_new(opts, "waitQueueTimeoutMS",
                                json_integer(e->wait_queue_timeout_ms));
        json_object_set_new(o, "options", opts);
    }
    return o;
}

/* Type by its test-format name; -1 when unknown. */
static int event_type_by_name(const char *name)
{
    if (name == NULL)
        return -1;
    for (int t = 0; t < CPOOL_EV_COUNT_; t++)
        if (strcmp(cpool_event_name((cpool_event_type)t), name) == 0)
            return t;
    return -1;
}

/* ---------------------------------------------------------------- errors */

/* An operation's failure. `harness` marks a problem of the test itself (bad
 * file, unexpected outcome of an expectError) rather than an error the pool
 * raised: those fail the test whatever the file expects. */
typedef struct op_error {
    bool set;
    bool harness;
    int code;
    char type[40];
    char message[600];
} op_error;

/* The exception type a CMAP driver would raise for a cpool error code. */
static const char *error_type_name(int code)
{
    switch (code) {
    case CPOOL_ETIMEDOUT: return "WaitQueueTimeoutError";
    case CPOOL_ECLOSED: return "PoolClosedError";
    case CPOOL_ECLEARED: return "PoolClearedError";
    default: return "ConnectionError";
    }
}

static int pool_error(op_error *e, int code, const cpool_error *err, const char *what)
{
    memset(e, 0, sizeof *e);
    e->set = true;
    e->code = code;
    snprintf(e->type, sizeof e->type, "%s", error_type_name(code));
    snprintf(e->message, sizeof e->message, "%s",
             err != NULL && err->message[0] != '\0' ? err->message : what);
    return -1;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int harness_error(op_error *e, const char *fmt, ...)
{
    memset(e, 0, sizeof *e);
    e->set = true;
    e->harness = true;
    snprintf(e->type, sizeof e->type, "HarnessError");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Matches an actual error against an expected {type, message, code}
 * object. The type must be equal; the message is found case-insensitively
 * inside the actual one (the official files and the specification disagree
 * on the case of "connection"); `code` is our extension: a CPOOL_E* name.
 * Returns true on a match, else writes why into `why`. */
static bool error_matches(const json_t *exp, const op_error *act, char *why, size_t whylen)
{
    const char *type = json_string_value(json_object_get(exp, "type"));
    const char *msg = json_string_value(json_object_get(exp, "message"));
    const char *code = json_string_value(json_object_get(exp, "code"));
    if (type != NULL && strcmp(type, act->type) != 0) {
        snprintf(why, whylen, "expected error %s, got %s: %s", type, act->type,
                 act->message);
        return false;
    }
    if (msg != NULL && strcasestr(act->message, msg) == NULL) {
        snprintf(why, whylen, "expected error message containing \"%s\", got \"%s\"",
                 msg, act->message);
        return false;
    }
    if (code != NULL && strcmp(code, cpool_err_name(act->code)) != 0) {
        snprintf(why, whylen, "expected error code %s, got %s (%s)", code,
                 cpool_err_name(act->code), act->message);
        return false;
    }
    return true;
}

/* Checks the keys of an expected-error object so that a typo does not turn
 * into an assertion that always holds. */
static bool error_spec_valid(const json_t *exp, char *why, size_t whylen)
{
    const char *key;
    json_t *v;
    if (!json_is_object(exp)) {
        snprintf(why, whylen, "an expected error must be an object");
        return false;
    }
    json_object_foreach((json_t *)exp, key, v) {
        if (strcmp(key, "address") == 0)
            continue; /* in the format, never used; we do not compare it */
        if ((strcmp(key, "type") == 0 || strcmp(key, "message") == 0 ||
             strcmp(key, "code") == 0) && json_is_string(v))
            continue;
        snprintf(why, whylen, "unsupported key or value in expected error: \"%s\"", key);
        return false;
    }
    return true;
}

/* ----------------------------------------------------------- the test */

typedef struct held {
    char *label; /* NULL: an unlabelled checkout, kept to the end */
    cpool_conn *conn;
    struct held *next;
} held;

typedef struct job {
    const json_t *op; /* borrowed from the file's tree, alive until teardown */
    struct job *next;
} job;

struct test;

typedef struct worker {
    struct test *t;
    char *name;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    bool busy;
    bool stop;
    bool exited;
    op_error first; /* the thread's first error; later operations are skipped */
    struct worker *next;
} worker;

typedef struct test {
    const char *name;
    json_t *root;
    cpool *pool;
    cpool_mem *mem;
    recorder rec;
    pthread_mutex_t conn_mu; /* guards `held` */
    held *held;
    worker *workers; /* only the main thread adds to or walks this list */
    char reason[2048];
} test;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void test_fail(test *t, const char *fmt, ...)
{
    if (t->reason[0] != '\0')
        return; /* keep the first reason: later ones are usually its echo */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->reason, sizeof t->reason, fmt, ap);
    va_end(ap);
}

/* Stores a checked-out connection. Labels are global across threads. A
 * label reused while its first connection is still out shadows it; the
 * shadowed one stays held and is returned at teardown. */
static bool hold(test *t, const char *label, cpool_conn *conn)
{
    held *h = calloc(1, sizeof *h);
    if (h == NULL)
        return false;
    if (label != NULL && (h->label = dup_str(label)) == NULL) {
        free(h);
        return false;
    }
    h->conn = conn;
    pthread_mutex_lock(&t->conn_mu);
    h->next = t->held;
    t->held = h;
    pthread_mutex_unlock(&t->conn_mu);
    return true;
}

/* Removes and returns the connection stored under `label`, or NULL. */
static cpool_conn *take(test *t, const char *label)
{
    cpool_conn *conn = NULL;
    pthread_mutex_lock(&t->conn_mu);
    for (held **pp = &t->held; *pp != NULL; pp = &(*pp)->next) {
        held *h = *pp;
        if (h->label != NULL && strcmp(h->label, label) == 0) {
            *pp = h->next;
            conn = h->conn;
            free(h->label);
            free(h);
            break;
        }
    }
    pthread_mutex_unlock(&t->conn_mu);
    return conn;
}

static void *labelled_native(test *t, const char *label)
{
    void *native = NULL;
    pthread_mutex_lock(&t->conn_mu);
    for (held *h = t->held; h != NULL; h = h->next) {
        if (h->label != NULL && strcmp(h->label, label) == 0) {
            native = cpool_conn_native(h->conn);
            break;
        }
    }
    pthread_mutex_unlock(&t->conn_mu);
    return native;
}

static worker *find_worker(test *t, const char *name)
{
    for (worker *w = t->workers; w != NULL; w = w->next)
        if (strcmp(w->name, name) == 0)
            return w;
    return NULL;
}

/* --------------------------------------------------------- operations */

/* Allowed argument keys per operation, so that a misspelt argument fails
 * the file instead of being ignored. "thread" and "expectError" are
 * accepted everywhere. */
static const struct op_spec {
    const char *name;
    const char *keys[4];
} op_specs[] = {
    {"start", {"target"}},
    {"wait", {"ms"}},
    {"waitForThread", {"target"}},
    {"waitForEvent", {"event", "count", "timeout"}},
    {"checkOut", {"label"}},
    {"checkIn", {"connection", "broken"}},
    {"clear", {"interruptInUseConnections"}},
    {"close", {NULL}},
    {"ready", {NULL}},
    /* Extensions (tests/cmap/README.md). */
    {"breakConnection", {"connection"}},
    {"assertConnectorStats", {"stats"}},
};

static bool op_keys_valid(const json_t *op, const char *name, char *why, size_t whylen)
{
    const struct op_spec *spec = NULL;
    for (size_t i = 0; i < sizeof op_specs / sizeof op_specs[0]; i++)
        if (strcmp(op_specs[i].name, name) == 0)
            spec = &op_specs[i];
    if (spec == NULL) {
        snprintf(why, whylen, "unsupported operation \"%s\"", name);
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)op, key, v) {
        if (strcmp(key, "name") == 0 || strcmp(key, "thread") == 0 ||
            strcmp(key, "expectError") == 0)
            continue;
        bool ok = false;
        for (size_t i = 0; i < 4 && spec->keys[i] != NULL; i++)
            if (strcmp(spec->keys[i], key) == 0)
                ok = true;
        if (!ok) {
            snprintf(why, whylen, "operation \"%s\": unsupported argument \"%s\"",
                     name, key);
            return false;
        }
    }
    return true;
}

static int worker_start(test *t, const char *name, op_error *e);

static int op_wait_for_thread(test *t, const char *name, op_error *e)
{
    worker *w = find_worker(t, name);
    if (w == NULL)
        return harness_error(e, "waitForThread: no thread \"%s\"", name);
    struct timespec ts = deadline_after_ms(THREAD_JOIN_LIMIT_MS);
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    while ((w->head != NULL || w->busy) && rc == 0)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    bool done = w->head == NULL && !w->busy;
    op_error first = w->first;
    pthread_mutex_unlock(&w->mu);
    if (!done)
        return harness_error(e, "waitForThread: thread \"%s\" still busy after %d s",
                             name, THREAD_JOIN_LIMIT_MS / 1000);
    if (first.set) {
        *e = first;
        if (first.harness) {
            /* The return value is checked only to tell the compiler that a
             * cut message is acceptable here. */
            if (snprintf(e->message, sizeof e->message, "thread \"%s\": %s", name,
                         first.message) < 0)
                e->message[0] = '\0';
        }
        return -1;
    }
    return 0;
}

static int op_wait_for_event(test *t, const json_t *op, op_error *e)
{
    const char *name = json_string_value(json_object_get(op, "event"));
    const json_t *jcount = json_object_get(op, "count");
    const json_t *jtimeout = json_object_get(op, "timeout");
    int type = event_type_by_name(name);
    if (type < 0)
        return harness_error(e, "waitForEvent: unknown event \"%s\"", name ? name : "");
    if (!json_is_integer(jcount) || json_integer_value(jcount) < 0)
        return harness_error(e, "waitForEvent: count must be a non-negative integer");
    if (jtimeout != NULL && (!json_is_integer(jtimeout) || json_integer_value(jtimeout) < 0))
        return harness_error(e, "waitForEvent: timeout must be a non-negative integer");
    size_t want = (size_t)json_integer_value(jcount);
    int64_t timeout = jtimeout != NULL ? json_integer_value(jtimeout)
                                       : WAIT_FOR_EVENT_DEFAULT_MS;
    struct timespec ts = deadline_after_ms(timeout);
    int rc = 0;
    recorder *r = &t->rec;
    pthread_mutex_lock(&r->mu);
    while (r->counts[type] < want && rc == 0)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    size_t have = r->counts[type];
    pthread_mutex_unlock(&r->mu);
    if (have < want)
        return harness_error(e, "waitForEvent: %zu %s event(s) after %" PRId64
                                " ms, wanted %zu",
                             have, name, timeout, want);
    return 0;
}

static bool stat_field(const cpool_mem_stats *s, const char *key, uint64_t *out)
{
    static const struct {
        const char *name;
        size_t off;
    } fields[] = {
        {"connects", offsetof(cpool_mem_stats, connects)},
        {"failures", offsetof(cpool_mem_stats, failures)},
        {"open", offsetof(cpool_mem_stats, open)},
        {"closes", offsetof(cpool_mem_stats, closes)},
        {"abandons", offsetof(cpool_mem_stats, abandons)},
        {"interrupts", offsetof(cpool_mem_stats, interrupts)},
        {"resets", offsetof(cpool_mem_stats, resets)},
        {"checks", offsetof(cpool_mem_stats, checks)},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (strcmp(fields[i].name, key) == 0) {
            memcpy(out, (const char *)s + fields[i].off, sizeof *out);
            return true;
        }
    }
    return false;
}

/* The connector's counters may lag the events by a moment: CMAP lets the
 * socket teardown follow ConnectionClosed. So a mismatch is retried for up
 * to a second before it fails. */
static int op_assert_stats(test *t, const json_t *op, op_error *e)
{
    const json_t *want = json_object_get(op, "stats");
    if (!json_is_object(want))
        return harness_error(e, "assertConnectorStats: \"stats\" must be an object");
    for (int attempt = 0;; attempt++) {
        cpool_mem_stats s;
        cpool_mem_get_stats(t->mem, &s);
        const char *key;
        json_t *v;
        const char *bad = NULL;
        uint64_t bad_have = 0;
        json_int_t bad_want = 0;
        json_object_foreach((json_t *)want, key, v) {
            uint64_t have;
            if (!stat_field(&s, key, &have))
                return harness_error(e, "assertConnectorStats: unknown counter \"%s\"", key);
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return harness_error(e, "assertConnectorStats: \"%s\" must be a "
                                        "non-negative integer", key);
            if (bad == NULL && (uint64_t)json_integer_value(v) != have) {
                bad = key;
                bad_have = have;
                bad_want = json_integer_value(v);
            }
        }
        if (bad == NULL)
            return 0;
        if (attempt >= 100)
            return harness_error(e, "assertConnectorStats: %s is %" PRIu64
                                    ", expected %" JSON_INTEGER_FORMAT,
                                 bad, bad_have, bad_want);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Runs one operation on the calling thread (`self` is NULL on the main
 * thread). Returns 0 or -1 with `e` filled. */
static int run_op_raw(test *t, const json_t *op, worker *self, op_error *e)
{
    const char *name = json_string_value(json_object_get(op, "name"));
    cpool_error err;
    memset(&err, 0, sizeof err);

    if (strcmp(name, "start") == 0 || strcmp(name, "waitForThread") == 0) {
        const char *target = json_string_value(json_object_get(op, "target"));
        if (self != NULL)
            return harness_error(e, "%s: only the main thread manages threads", name);
        if (target == NULL)
            return harness_error(e, "%s: \"target\" must be a string", name);
        return name[0] == 's' ? worker_start(t, target, e)
                              : op_wait_for_thread(t, target, e);
    }
    if (strcmp(name, "wait") == 0) {
        const json_t *ms = json_object_get(op, "ms");
        if (!json_is_integer(ms) || json_integer_value(ms) < 0)
            return harness_error(e, "wait: \"ms\" must be a non-negative integer");
        sleep_ms(json_integer_value(ms));
        return 0;
    }
    if (strcmp(name, "waitForEvent") == 0)
        return op_wait_for_event(t, op, e);
    if (strcmp(name, "checkOut") == 0) {
        const json_t *jl = json_object_get(op, "label");
        if (jl != NULL && !json_is_string(jl))
            return harness_error(e, "checkOut: \"label\" must be a string");
        cpool_conn *conn = NULL;
        /* timeout_ms < 0: the pool's own waitQueueTimeoutMS applies, as in
         * a driver's checkOut(). */
        int rc = cpool_checkout(t->pool, -1, &conn, &err);
        if (rc != 0)
            return pool_error(e, rc, &err, "checkout failed");
        if (conn == NULL)
            return harness_error(e, "checkOut: cpool_checkout returned 0 without a connection");
        if (!hold(t, json_string_value(jl), conn)) {
            cpool_checkin(t->pool, conn, 0, NULL);
            return harness_error(e, "checkOut: out of memory");
        }
        return 0;
    }
    if (strcmp(name, "checkIn") == 0) {
        const char *label = json_string_value(json_object_get(op, "connection"));
        const json_t *broken = json_object_get(op, "broken");
        if (label == NULL)
            return harness_error(e, "checkIn: \"connection\" must be a string");
        if (broken != NULL && !json_is_boolean(broken))
            return harness_error(e, "checkIn: \"broken\" must be a boolean");
        cpool_conn *conn = take(t, label);
        if (conn == NULL)
            return harness_error(e, "checkIn: no connection labelled \"%s\" is checked out",
                                 label);
        unsigned flags = json_is_true(broken) ? CPOOL_CHECKIN_BROKEN : 0;
        int rc = cpool_checkin(t->pool, conn, flags, &err);
        if (rc != 0) {
            /* The pool refused it and so did not take it back: keep it so
             * that the teardown returns it. */
            if (!hold(t, label, conn))
                return harness_error(e, "checkIn: out of memory");
            return pool_error(e, rc, &err, "checkin failed");
        }
        return 0;
    }
    if (strcmp(name, "clear") == 0) {
        const json_t *flag = json_object_get(op, "interruptInUseConnections");
        if (flag != NULL && !json_is_boolean(flag))
            return harness_error(e, "clear: \"interruptInUseConnections\" must be a boolean");
        unsigned flags = json_is_true(flag) ? CPOOL_CLEAR_INTERRUPT_IN_USE : 0;
        int rc = cpool_clear(t->pool, flags, NULL, &err);
        return rc != 0 ? pool_error(e, rc, &err, "clear failed") : 0;
    }
    if (strcmp(name, "close") == 0) {
        cpool_close(t->pool);
        return 0;
    }
    if (strcmp(name, "ready") == 0) {
        int rc = cpool_ready(t->pool, &err);
        return rc != 0 ? pool_error(e, rc, &err, "ready failed") : 0;
    }
    if (strcmp(name, "breakConnection") == 0) {
        const char *label = json_string_value(json_object_get(op, "connection"));
        if (label == NULL)
            return harness_error(e, "breakConnection: \"connection\" must be a string");
        void *native = labelled_native(t, label);
        if (native == NULL)
            return harness_error(e, "breakConnection: no connection labelled \"%s\"", label);
        cpool_mem_conn_break(native);
        return 0;
    }
    if (strcmp(name, "assertConnectorStats") == 0)
        return op_assert_stats(t, op, e);
    return harness_error(e, "unsupported operation \"%s\"", name);
}

/* run_op_raw plus our `expectError` extension: with it, the operation must
 * fail with a matching error, which is then swallowed. */
static int run_op(test *t, const json_t *op, worker *self, op_error *e)
{
    memset(e, 0, sizeof *e);
    const json_t *expect = json_object_get(op, "expectError");
    const char *name = json_string_value(json_object_get(op, "name"));
    int rc = run_op_raw(t, op, self, e);
    if (expect == NULL || (rc != 0 && e->harness))
        return rc;
    char why[700];
    if (rc == 0)
        return harness_error(e, "%s: expected an error, but it succeeded", name);
    if (!error_matches(expect, e, why, sizeof why))
        return harness_error(e, "%s: %s", name, why);
    memset(e, 0, sizeof *e);
    return 0;
}

/* ------------------------------------------------------------ workers */

static void *worker_main(void *arg)
{
    worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        job *j = w->head;
        if (j == NULL)
            break; /* stopping and nothing left */
        w->head = j->next;
        if (w->head == NULL)
            w->tail = NULL;
        w->busy = true;
        bool skip = w->first.set;
        pthread_mutex_unlock(&w->mu);

        op_error e;
        memset(&e, 0, sizeof e);
        if (!skip)
            run_op(w->t, j->op, w, &e);
        free(j);

        pthread_mutex_lock(&w->mu);
        if (e.set && !w->first.set)
            w->first = e;
        w->busy = false;
        pthread_cond_broadcast(&w->cv);
    }
    w->exited = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int worker_start(test *t, const char *name, op_error *e)
{
    if (find_worker(t, name) != NULL)
        return harness_error(e, "start: thread \"%s\" already exists", name);
    worker *w = calloc(1, sizeof *w);
    if (w == NULL || (w->name = dup_str(name)) == NULL) {
        free(w);
        return harness_error(e, "start: out of memory");
    }
    w->t = t;
    pthread_mutex_init(&w->mu, NULL);
    cond_init(&w->cv);
    if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w->name);
        free(w);
        return harness_error(e, "start: cannot create thread \"%s\"", name);
    }
    w->next = t->workers;
    t->workers = w;
    return 0;
}

static int worker_enqueue(worker *w, const json_t *op, op_error *e)
{
    job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return harness_error(e, "out of memory queueing an operation");
    j->op = op;
    pthread_mutex_lock(&w->mu);
    if (w->tail != NULL)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* Stops and joins every worker; reports harness failures of threads that
 * were never joined (their pool errors do not count, as in the format).
 * Returns false if a thread is stuck, in which case nothing may be freed. */
static bool workers_join(test *t)
{
    for (worker *w = t->workers; w != NULL; w = w->next) {
        struct timespec ts = deadline_after_ms(THREAD_JOIN_LIMIT_MS);
        int rc = 0;
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_broadcast(&w->cv);
        while (!w->exited && rc == 0)
            rc = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        bool exited = w->exited;
        op_error first = w->first;
        pthread_mutex_unlock(&w->mu);
        if (!exited) {
            test_fail(t, "teardown: thread \"%s\" did not finish within %d s "
                         "after the pool was closed", w->name,
                      THREAD_JOIN_LIMIT_MS / 1000);
            return false;
        }
        pthread_join(w->tid, NULL);
        if (first.set && first.harness)
            test_fail(t, "thread \"%s\": %s", w->name, first.message);
    }
    while (t->workers != NULL) {
        worker *w = t->workers;
        t->workers = w->next;
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w->name);
        free(w);
    }
    return true;
}

/* -------------------------------------------------------------- matching */

static bool is_wildcard(const json_t *v)
{
    return (json_is_integer(v) && json_integer_value(v) == 42) ||
           (json_is_string(v) && strcmp(json_string_value(v), "42") == 0);
}

/* MATCH from the format: 42 / "42" = exists; objects by the expected keys;
 * arrays by the expected length; scalars equal (numbers by value). */
static bool match(const json_t *exp, const json_t *act, const char *path,
                  char *why, size_t whylen)
{
    if (is_wildcard(exp)) {
        if (act == NULL || json_is_null(act)) {
            snprintf(why, whylen, "%s: expected to exist, but it is absent", path);
            return false;
        }
        return true;
    }
    if (act == NULL) {
        char *es = dump(exp);
        snprintf(why, whylen, "%s: expected %s, but it is absent", path, es);
        free(es);
        return false;
    }
    bool ok;
    if (json_is_object(exp)) {
        if (!json_is_object(act))
            goto mismatch;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)exp, key, v) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.%s", path, key);
            if (!match(v, json_object_get(act, key), sub, why, whylen))
                return false;
        }
        return true;
    }
    if (json_is_array(exp)) {
        if (!json_is_array(act))
            goto mismatch;
        for (size_t i = 0; i < json_array_size(exp); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            if (!match(json_array_get(exp, i), json_array_get(act, i), sub, why, whylen))
                return false;
        }
        return true;
    }
    if (json_is_number(exp))
        ok = json_is_number(act) && json_number_value(exp) == json_number_value(act);
    else
        ok = json_equal((json_t *)exp, (json_t *)act) != 0;
    if (ok)
        return true;
mismatch : {
    char *es = dump(exp), *as = dump(act);
    snprintf(why, whylen, "%s: expected %s, got %s", path, es, as);
    free(es);
    free(as);
    return false;
}
}

static bool ignored(const json_t *ignore, cpool_event_type type)
{
    const char *name = cpool_event_name(type);
    size_t i;
    json_t *v;
    json_array_foreach(ignore, i, v) {
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0)
            return true;
    }
    return false;
}

/* Snapshot of the recorded events as JSON, all of them (`all`) and the ones
 * whose types are not ignored (`kept`). */
static void snapshot_events(test *t, const json_t *ignore, json_t **all, json_t **kept)
{
    *all = json_array();
    *kept = json_array();
    recorder *r = &t->rec;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        json_t *ev = event_json(&r->ev[i], r->address);
        if (ev == NULL)
            continue;
        json_array_append(*all, ev);
        if (ignore == NULL || !ignored(ignore, r->ev[i].type))
            json_array_append(*kept, ev);
        json_decref(ev);
    }
    pthread_mutex_unlock(&r->mu);
}

static void print_events(const char *title, const json_t *events, const json_t *ignore)
{
    printf("    %s (%zu):\n", title, json_array_size(events));
    size_t i;
    json_t *v;
    json_array_foreach(events, i, v) {
        char *s = dump(v);
        const char *type = json_string_value(json_object_get(v, "type"));
        int ty = event_type_by_name(type);
        bool ign = ignore != NULL && ty >= 0 && ignored(ignore, (cpool_event_type)ty);
        printf("      [%zu] %s%s\n", i, s, ign ? "   (ignored)" : "");
        free(s);
    }
}

/* ----------------------------------------------------------- set-up */

static bool get_uint32(const json_t *v, uint32_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > (json_int_t)UINT32_MAX)
        return false;
    *out = (uint32_t)json_integer_value(v);
    return true;
}

/* Applies poolOptions to `o`; the target gets "?appName=" when given. */
static bool pool_options(test *t, const json_t *po, cpool_options *o, char *target,
                         size_t target_size)
{
    snprintf(target, target_size, "mem://cmap-test");
    if (po == NULL)
        return true;
    if (!json_is_object(po)) {
        test_fail(t, "poolOptions must be an object");
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)po, key, v) {
        bool ok = true;
        if (strcmp(key, "maxPoolSize") == 0) {
            ok = get_uint32(v, &o->max_pool_size);
        } else if (strcmp(key, "minPoolSize") == 0) {
            ok = get_uint32(v, &o->min_pool_size);
        } else if (strcmp(key, "maxConnecting") == 0) {
            ok = get_uint32(v, &o->max_connecting);
        } else if (strcmp(key, "maxIdleTimeMS") == 0) {
            ok = json_is_integer(v);
            o->max_idle_time_ms = json_integer_value(v);
        } else if (strcmp(key, "waitQueueTimeoutMS") == 0) {
            ok = json_is_integer(v);
            o->wait_queue_timeout_ms = json_integer_value(v);
        } else if (strcmp(key, "backgroundThreadIntervalMS") == 0) {
            /* Negative = no background runs, which is also what a negative
             * maintenance_interval_ms means. */
            ok = json_is_integer(v);
            o->maintenance_interval_ms = json_integer_value(v);
        } else if (strcmp(key, "appName") == 0) {
            ok = json_is_string(v);
            if (ok)
                snprintf(target, target_size, "mem://cmap-test?appName=%s",
                         json_string_value(v));
        } else {
            test_fail(t, "unsupported pool option \"%s\"", key);
            return false;
        }
        if (!ok) {
            char *s = dump(v);
            test_fail(t, "bad value for pool option \"%s\": %s", key, s);
            free(s);
            return false;
        }
    }
    return true;
}

/* Emulates the failCommand fail point on hello/isMaster with the mem
 * connector's handshake fail point, as a driver-side mock would. */
static bool install_failpoint(test *t, const json_t *fpj)
{
    if (fpj == NULL)
        return true;
    const char *cmd = json_string_value(json_object_get(fpj, "configureFailPoint"));
    if (cmd == NULL || strcmp(cmd, "failCommand") != 0) {
        test_fail(t, "failPoint: only failCommand can be emulated");
        return false;
    }
    cpool_mem_failpoint fp;
    memset(&fp, 0, sizeof fp);
    const json_t *mode = json_object_get(fpj, "mode");
    if (json_is_string(mode) && strcmp(json_string_value(mode), "alwaysOn") == 0) {
        fp.times = -1;
    } else if (json_is_string(mode) && strcmp(json_string_value(mode), "off") == 0) {
        return true;
    } else if (json_is_object(mode) && json_is_integer(json_object_get(mode, "times")) &&
               json_object_size(mode) == 1) {
        json_int_t n = json_integer_value(json_object_get(mode, "times"));
        if (n < 0 || n > 1000000) {
            test_fail(t, "failPoint: bad times");
            return false;
        }
        fp.times = (int)n;
    } else {
        char *s = dump(mode);
        test_fail(t, "failPoint: unsupported mode %s", s);
        free(s);
        return false;
    }

    const json_t *data = json_object_get(fpj, "data");
    if (!json_is_object(data)) {
        test_fail(t, "failPoint: data must be an object");
        return false;
    }
    bool hits_handshake = false;
    bool close_conn = false;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)data, key, v) {
        if (strcmp(key, "failCommands") == 0 && json_is_array(v)) {
            size_t i;
            json_t *c;
            json_array_foreach(v, i, c) {
                const char *s = json_string_value(c);
                if (s != NULL && (strcmp(s, "hello") == 0 || strcmp(s, "isMaster") == 0))
                    hits_handshake = true;
            }
        } else if (strcmp(key, "blockConnection") == 0 && json_is_boolean(v)) {
            if (json_is_true(v)) {
                const json_t *ms = json_object_get(data, "blockTimeMS");
                if (!json_is_integer(ms) || json_integer_value(ms) < 0) {
                    test_fail(t, "failPoint: blockConnection needs blockTimeMS");
                    return false;
                }
                fp.block_ms = json_integer_value(ms);
            }
        } else if (strcmp(key, "blockTimeMS") == 0 && json_is_integer(v)) {
            /* used with blockConnection */
        } else if (strcmp(key, "errorCode") == 0 && json_is_integer(v)) {
            fp.fail = true;
            fp.fail_phase = CPOOL_PHASE_HANDSHAKE;
            fp.fail_kind = CPOOL_FAIL_SERVER;
            fp.fail_native = (int)json_integer_value(v);
        } else if (strcmp(key, "closeConnection") == 0 && json_is_boolean(v)) {
            close_conn = json_is_true(v);
        } else if (strcmp(key, "appName") == 0 && json_is_string(v)) {
            fp.app_name = json_string_value(v);
        } else {
            test_fail(t, "failPoint: cannot emulate data.%s", key);
            return false;
        }
    }
    /* The server closes the socket instead of answering when both are
     * given, so the network failure wins. */
    if (close_conn) {
        fp.fail = true;
        fp.fail_phase = CPOOL_PHASE_HANDSHAKE;
        fp.fail_kind = CPOOL_FAIL_NETWORK;
        fp.fail_native = 0;
    }
    if (!hits_handshake) {
        test_fail(t, "failPoint: only fail points on hello/isMaster can be emulated");
        return false;
    }
    cpool_mem_set_failpoint(t->mem, &fp);
    return true;
}

static const char *const top_keys[] = {
    "version", "style", "description", "poolOptions", "operations", "error",
    "events", "ignore", "runOn", "failPoint",
    "poolCreateError", /* extension */
};

static bool top_level_valid(test *t)
{
    const char *key;
    json_t *v;
    json_object_foreach(t->root, key, v) {
        bool ok = false;
        for (size_t i = 0; i < sizeof top_keys / sizeof top_keys[0]; i++)
            if (strcmp(top_keys[i], key) == 0)
                ok = true;
        if (!ok) {
            test_fail(t, "unsupported top-level key \"%s\"", key);
            return false;
        }
    }
    const json_t *version = json_object_get(t->root, "version");
    if (!json_is_integer(version) || json_integer_value(version) != 1) {
        test_fail(t, "unsupported version (want 1)");
        return false;
    }
    if (!json_is_array(json_object_get(t->root, "operations")) ||
        !json_is_array(json_object_get(t->root, "events"))) {
        test_fail(t, "\"operations\" and \"events\" must be arrays");
        return false;
    }
    const json_t *ignore = json_object_get(t->root, "ignore");
    if (ignore != NULL) {
        size_t i;
        json_t *n;
        if (!json_is_array(ignore)) {
            test_fail(t, "\"ignore\" must be an array");
            return false;
        }
        json_array_foreach(ignore, i, n) {
            if (event_type_by_name(json_string_value(n)) < 0) {
                char *s = dump(n);
                test_fail(t, "\"ignore\" names an unknown event: %s", s);
                free(s);
                return false;
            }
        }
    }
    char why[256];
    const json_t *err = json_object_get(t->root, "error");
    if (err != NULL && !error_spec_valid(err, why, sizeof why)) {
        test_fail(t, "error: %s", why);
        return false;
    }
    err = json_object_get(t->root, "poolCreateError");
    if (err != NULL && !error_spec_valid(err, why, sizeof why)) {
        test_fail(t, "poolCreateError: %s", why);
        return false;
    }
    /* Operations are checked up front, so that a bad one late in the list
     * cannot let the earlier ones run against a pool for nothing. */
    size_t i;
    json_t *op;
    json_array_foreach(json_object_get(t->root, "operations"), i, op) {
        const char *name = json_string_value(json_object_get(op, "name"));
        if (!json_is_object(op) || name == NULL) {
            test_fail(t, "operations[%zu]: needs a string \"name\"", i);
            return false;
        }
        if (!op_keys_valid(op, name, why, sizeof why)) {
            test_fail(t, "operations[%zu]: %s", i, why);
            return false;
        }
        const json_t *th = json_object_get(op, "thread");
        if (th != NULL && !json_is_string(th)) {
            test_fail(t, "operations[%zu]: \"thread\" must be a string", i);
            return false;
        }
        const json_t *ee = json_object_get(op, "expectError");
        if (ee != NULL && !error_spec_valid(ee, why, sizeof why)) {
            test_fail(t, "operations[%zu]: expectError: %s", i, why);
            return false;
        }
    }
    return true;
}

/* --------------------------------------------------------------- one file */

/* Runs the operations on the main thread, handing "thread" ones over.
 * Stops at the first error, which it stores in main_err. */
static void run_operations(test *t, op_error *main_err)
{
    size_t i;
    json_t *op;
    json_array_foreach(json_object_get(t->root, "operations"), i, op) {
        const char *thread = json_string_value(json_object_get(op, "thread"));
        op_error e;
        memset(&e, 0, sizeof e);
        if (g_verbose) {
            char *s = dump(op);
            printf("    op[%zu] %s\n", i, s);
            free(s);
        }
        if (thread != NULL) {
            worker *w = find_worker(t, thread);
            if (w == NULL)
                harness_error(&e, "no thread \"%s\" (start it first)", thread);
            else
                worker_enqueue(w, op, &e);
        } else {
            run_op(t, op, NULL, &e);
        }
        if (e.set) {
            if (g_verbose)
                printf("    op[%zu] raised %s: %s\n", i, e.type, e.message);
            if (e.harness) {
                test_fail(t, "operations[%zu] (%s): %s", i,
                          json_string_value(json_object_get(op, "name")), e.message);
            }
            *main_err = e;
            return;
        }
    }
}

static void check_outcome(test *t, const op_error *main_err)
{
    const json_t *exp_err = json_object_get(t->root, "error");
    char why[1024];
    if (main_err->harness)
        return; /* already reported */
    if (exp_err != NULL) {
        if (!main_err->set) {
            test_fail(t, "expected error %s, but the operations raised none",
                      json_string_value(json_object_get(exp_err, "type")));
        } else if (!error_matches(exp_err, main_err, why, sizeof why)) {
            test_fail(t, "%s", why);
        }
    } else if (main_err->set) {
        test_fail(t, "unexpected error %s: %s", main_err->type, main_err->message);
    }
}

static void check_events(test *t, json_t **all_out)
{
    const json_t *ignore = json_object_get(t->root, "ignore");
    const json_t *expected = json_object_get(t->root, "events");
    json_t *all, *kept;
    snapshot_events(t, ignore, &all, &kept);
    pthread_mutex_lock(&t->rec.mu);
    bool oom = t->rec.oom, bad = t->rec.bad_type;
    pthread_mutex_unlock(&t->rec.mu);
    if (oom)
        test_fail(t, "the event recorder ran out of memory");
    if (bad)
        test_fail(t, "the pool emitted an event of an unknown type");
    size_t i;
    json_t *exp;
    json_array_foreach(expected, i, exp) {
        char path[32], why[1024];
        snprintf(path, sizeof path, "events[%zu]", i);
        const json_t *act = json_array_get(kept, i);
        if (act == NULL) {
            char *s = dump(exp);
            test_fail(t, "%s: expected %s, but only %zu event(s) were emitted "
                         "(after ignore)", path, s, json_array_size(kept));
            free(s);
            break;
        }
        if (!match(exp, act, path, why, sizeof why)) {
            test_fail(t, "%s", why);
            break;
        }
    }
    json_decref(kept);
    *all_out = all;
}

/* Returns true when the file passed. */
static bool run_file(const char *path, const char *name)
{
    test t;
    memset(&t, 0, sizeof t);
    t.name = name;
    pthread_mutex_init(&t.conn_mu, NULL);
    pthread_mutex_init(&t.rec.mu, NULL);
    cond_init(&t.rec.cv);

    json_error_t jerr;
    t.root = json_load_file(path, 0, &jerr);
    json_t *all_events = NULL;
    bool stuck = false;
    if (t.root == NULL) {
        test_fail(&t, "cannot parse: %s (line %d)", jerr.text, jerr.line);
        goto report;
    }
    if (!json_is_object(t.root)) {
        test_fail(&t, "the file is not a JSON object");
        goto report;
    }
    if (g_verbose)
        printf("RUN  %s: %s\n", name,
               json_string_value(json_object_get(t.root, "description")));
    if (!top_level_valid(&t))
        goto report;
    if (cpool_mem_create(&t.mem) != 0) {
        test_fail(&t, "cpool_mem_create failed");
        goto report;
    }
    if (!install_failpoint(&t, json_object_get(t.root, "failPoint")))
        goto teardown;

    cpool_options o;
    cpool_options_init(&o, sizeof o);
    /* CMAP describes a pool that attempts every establishment it is asked
     * for: no backoff, no circuit breaker (both are this pool's own
     * additions, on by default). */
    o.backoff_base_ms = 0;
    o.breaker_threshold = 0;
    /* CMAP's wait queue: every check-in goes to the oldest waiter. */
    o.handoff = CPOOL_HANDOFF_FIFO;
    /* CMAP's own defaults where the test names none: this pool's defaults
     * are smaller and finite (docs/configuration.md). */
    o.max_pool_size = 100;
    o.wait_queue_timeout_ms = 0;
    char target[512];
    if (!pool_options(&t, json_object_get(t.root, "poolOptions"), &o, target,
                      sizeof target))
        goto teardown;
    o.connector = cpool_mem_connector();
    o.connector_ctx = t.mem;
    o.target = target;
    o.on_event = record_event;
    o.event_ctx = &t.rec;
    /* The SDAM reaction the min-pool-size-error file expects: a failed
     * establishment that is not backpressure clears the pool. */
    o.clear_on_connect_error = true;

    cpool_error cerr;
    memset(&cerr, 0, sizeof cerr);
    int rc = cpool_create(&o, &t.pool, &cerr);
    const json_t *create_err = json_object_get(t.root, "poolCreateError");
    if (create_err != NULL) {
        op_error e;
        char why[1024];
        if (rc == 0) {
            test_fail(&t, "poolCreateError: cpool_create succeeded");
        } else {
            pool_error(&e, rc, &cerr, "cpool_create failed");
            if (!error_matches(create_err, &e, why, sizeof why))
                test_fail(&t, "poolCreateError: %s", why);
        }
        /* Without a pool there is nothing to run; with one (already a
         * failure) the operations still run, for the event listing. */
        if (t.pool == NULL)
            goto check;
    } else if (rc != 0) {
        test_fail(&t, "cpool_create failed: %s: %s", cpool_err_name(rc), cerr.message);
        goto teardown;
    }
    if (t.pool == NULL) {
        test_fail(&t, "cpool_create returned 0 without a pool");
        goto teardown;
    }

    op_error main_err;
    memset(&main_err, 0, sizeof main_err);
    if (t.reason[0] == '\0')
        run_operations(&t, &main_err);
    check_outcome(&t, &main_err);
check:
    check_events(&t, &all_events);

teardown:
    /* Close first: it fails every thread still blocked in a checkout, so
     * that they can be joined. Then return what is still checked out (the
     * closed pool closes each at check-in) and free everything, so that
     * the sanitizers see a clean exit. */
    if (t.pool != NULL)
        cpool_close(t.pool);
    if (!workers_join(&t)) {
        stuck = true;
        goto report;
    }
    while (t.held != NULL) {
        held *h = t.held;
        t.held = h->next;
        cpool_checkin(t.pool, h->conn, 0, NULL);
        free(h->label);
        free(h);
    }
    cpool_destroy(t.pool);
    t.pool = NULL;
    if (t.mem != NULL) {
        cpool_mem_stats s;
        cpool_mem_get_stats(t.mem, &s);
        if (s.open != 0)
            test_fail(&t, "teardown: the connector still has %" PRIu64
                          " open connection(s) after cpool_destroy", s.open);
        cpool_mem_destroy(t.mem);
        t.mem = NULL;
    }

report:;
    bool passed = t.reason[0] == '\0';
    if (passed) {
        printf("PASS %s\n", name);
        if (g_verbose && all_events != NULL)
            print_events("actual events", all_events,
                         json_object_get(t.root, "ignore"));
    } else {
        printf("FAIL %s: %s\n", name, t.reason);
        if (t.root != NULL && json_is_object(t.root)) {
            const json_t *exp = json_object_get(t.root, "events");
            if (json_is_array(exp))
                print_events("expected events", exp, NULL);
        }
        if (all_events != NULL)
            print_events("actual events", all_events,
                         t.root != NULL ? json_object_get(t.root, "ignore") : NULL);
    }
    fflush(stdout);
    if (stuck) {
        /* A thread is still inside the pool: freeing anything now would
         * pull memory from under it. Nothing after this can be trusted. */
        printf("%u passed, %u failed, 0 skipped\n", atomic_load(&g_passed),
               atomic_load(&g_failed) + 1);
        fflush(stdout);
        _exit(1);
    }
    json_decref(all_events);
    json_decref(t.root);
    free(t.rec.ev);
    pthread_cond_destroy(&t.rec.cv);
    pthread_mutex_destroy(&t.rec.mu);
    pthread_mutex_destroy(&t.conn_mu);
    return passed;
}

/* ------------------------------------------------------------- main */

typedef struct file_list {
    char **paths;
    size_t n, cap;
} file_list;

static bool list_add(file_list *l, const char *path)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **grown = realloc(l->paths, cap * sizeof *grown);
        if (grown == NULL)
            return false;
        l->paths = grown;
        l->cap = cap;
    }
    char *copy = dup_str(path);
    if (copy == NULL)
        return false;
    l->paths[l->n++] = copy;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Adds the .json files of `dir`, sorted by name. Returns how many. */
static long add_dir(file_list *l, const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    file_list local = {0};
    struct dirent *de;
    long n = 0;
    while ((de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".json"))
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (!list_add(&local, path)) {
            n = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (local.n > 0)
        qsort(local.paths, local.n, sizeof *local.paths, cmp_str);
    for (size_t i = 0; i < local.n; i++) {
        if (n >= 0 && !list_add(l, local.paths[i]))
            n = -1;
        free(local.paths[i]);
    }
    free(local.paths);
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cmap_runner [--verbose] [FILE.json|DIR]...\n"
               "  With no FILE or DIR, runs the directory named by the\n"
               "  CPOOL_CMAP_SPEC_DIR environment variable.\n");
}

static void loud(const char *fmt, const char *arg)
{
    fprintf(stderr, "\n"
                    "************************************************************\n"
                    "cmap_runner: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n"
                    "NO CMAP CONFORMANCE TESTS WERE RUN.\n"
                    "************************************************************\n");
}

int main(int argc, char **argv)
{
    file_list files = {0};
    const char *sources[256];
    int nsources = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0) {
            g_verbose = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return 2;
        } else if (nsources < (int)(sizeof sources / sizeof sources[0])) {
            sources[nsources++] = argv[i];
        }
    }
    if (nsources == 0) {
        const char *env = getenv("CPOOL_CMAP_SPEC_DIR");
        if (env == NULL || env[0] == '\0') {
            loud("no test files given and CPOOL_CMAP_SPEC_DIR is not set%s", "");
            usage(stderr);
            return 2;
        }
        sources[nsources++] = env;
    }
    for (int i = 0; i < nsources; i++) {
        struct stat st;
        if (stat(sources[i], &st) != 0) {
            loud("%s does not exist", sources[i]);
            return 2;
        }
        if (S_ISDIR(st.st_mode)) {
            long n = add_dir(&files, sources[i]);
            if (n < 0) {
                loud("cannot read directory %s", sources[i]);
                return 2;
            }
            if (n == 0) {
                loud("directory %s holds no .json test files", sources[i]);
                return 2;
            }
        } else if (!list_add(&files, sources[i])) {
            fprintf(stderr, "cmap_runner: out of memory\n");
            return 2;
        }
    }

    pthread_t wd_thread;
    cond_init(&wd.cv);
    if (pthread_create(&wd_thread, NULL, watchdog_main, NULL) != 0) {
        fprintf(stderr, "cmap_runner: cannot start the watchdog thread\n");
        return 2;
    }

    for (size_t i = 0; i < files.n; i++) {
        const char *base = strrchr(files.paths[i], '/');
        base = base != NULL ? base + 1 : files.paths[i];
        char name[256];
        snprintf(name, sizeof name, "%s", base);
        if (ends_with(name, ".json"))
            name[strlen(name) - 5] = '\0';
        watchdog_arm(name);
        if (run_file(files.paths[i], name))
            atomic_fetch_add(&g_passed, 1);
        else
            atomic_fetch_add(&g_failed, 1);
        watchdog_disarm();
        free(files.paths[i]);
    }
    free(files.paths);

    pthread_mutex_lock(&wd.mu);
    wd.quit = true;
    pthread_cond_broadcast(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
    pthread_join(wd_thread, NULL);
    pthread_cond_destroy(&wd.cv);

    unsigned passed = atomic_load(&g_passed), failed = atomic_load(&g_failed);
    printf("%u passed, %u failed, 0 skipped\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
