/* mem.c -- the in-memory connector (cpool_mem.h).
 *
 * A cpool_mem plays the server: it counts what the pool asks of it and can
 * delay or fail handshakes through a fail point modelled on MongoDB's
 * failCommand, which is what the CMAP integration tests configure. A
 * "connection" is a small heap struct; no sockets are involved.
 *
 * Locking: one mutex per cpool_mem guards the fail point, the service ids
 * and the counters. The per-connection flags that another thread may touch
 * while the connection is in use (broken, interrupted) are atomics, because
 * interrupt() is documented to run concurrently with the other methods and
 * the test code flips `broken` from its own thread.
 */
#include "cpool/cpool_mem.h"
#include "../core/clock.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MEM_SCHEME "mem://"

struct cpool_mem {
    pthread_mutex_t mu;
    cpool_mem_failpoint fp; /* fp.app_name points at fp_app (or NULL) */
    char *fp_app;
    char **service_ids;
    size_t n_service_ids;
    size_t next_service;   /* round-robin cursor */
    cpool_mem_stats stats; /* checks and resets: only of closed connections */
    struct mem_conn *live; /* open connections, for their counters */
    cpool_mem_server server; /* the role it plays (cpool_mem_set_server) */
    atomic_bool down;        /* server.down, read without the lock by
                                every connection's check() */
};

/* check() and reset() run on every checkout and check-in. They count on the
 * connection itself, which only its user touches, so the connector adds no
 * shared lock or contended cache line to the pool's hot path; the counts
 * are summed when asked for and folded into the totals at close. Each
 * connection has cache lines of its own (mem_conn_alloc): two made one
 * after the other would otherwise share one, and threads counting on
 * their own connections would take it from each other at every lease. */
#define MEM_LINE 64
typedef struct mem_conn {
    _Alignas(MEM_LINE) cpool_mem *mem; /* back pointer for the counters */
    struct mem_conn *prev, *next; /* mem->live; guarded by mem->mu */
    atomic_ulong checks, resets, pings;
    atomic_bool hung;      /* check() passes, ping() fails */
    atomic_bool stalled;   /* ... and ping() first waits for its deadline */
    uint64_t id;
    atomic_bool broken;
    atomic_bool interrupted;
    atomic_bool in_txn;    /* atomic only so that a test thread may read it */
    _Atomic uint64_t session; /* see cpool_mem_conn_set_session */
    bool answered;         /* server_info() ran on it (cpool_mem_server) */
} mem_conn;

/* Aligned as its first member is, and so a whole number of lines long. */
static mem_conn *mem_conn_alloc(void)
{
    mem_conn *c = aligned_alloc(_Alignof(mem_conn), sizeof *c);
    if (c != NULL)
        memset(c, 0, sizeof *c);
    return c;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------ the server */

int cpool_mem_create(cpool_mem **out)
{
    if (out == NULL)
        return CPOOL_EINVAL;
    *out = NULL;
    cpool_mem *mem = calloc(1, sizeof *mem);
    if (mem == NULL)
        return CPOOL_ENOMEM;
    if (pthread_mutex_init(&mem->mu, NULL) != 0) {
        free(mem);
        return CPOOL_ESYS;
    }
    atomic_init(&mem->down, false);
    mem->server.lag_ms = -1;
    *out = mem;
    return 0;
}

void cpool_mem_set_server(cpool_mem *mem, const cpool_mem_server *server)
{
    if (mem == NULL)
        return;
    pthread_mutex_lock(&mem->mu);
    if (server != NULL)
        mem->server = *server;
    else
        memset(&mem->server, 0, sizeof mem->server);
    atomic_store(&mem->down, mem->server.down);
    pthread_mutex_unlock(&mem->mu);
}

static cpool_mem_server server_of(cpool_mem *mem)
{
    pthread_mutex_lock(&mem->mu);
    cpool_mem_server s = mem->server;
    pthread_mutex_unlock(&mem->mu);
    return s;
}

static void free_service_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

void cpool_mem_destroy(cpool_mem *mem)
{
    if (mem == NULL)
        return;
    pthread_mutex_destroy(&mem->mu);
    free(mem->fp_app);
    free_service_ids(mem->service_ids, mem->n_service_ids);
    free(mem);
}

void cpool_mem_set_failpoint(cpool_mem *mem, const cpool_mem_failpoint *fp)
{
    if (mem == NULL)
        return;
    /* Copy the name before taking the lock so that no allocation happens
     * under it. If the copy fails the fail point is turned off: one that
     * silently matched every target instead of one appName would inject
     * faults into handshakes the caller meant to leave alone. */
    char *app = NULL;
    bool ok = true;
    if (fp != NULL && fp->app_name != NULL) {
        app = dup_str(fp->app_name);
        ok = app != NULL;
    }
    pthread_mutex_lock(&mem->mu);
    char *old = mem->fp_app;
    if (fp == NULL || !ok) {
        memset(&mem->fp, 0, sizeof mem->fp);
        mem->fp_app = NULL;
    } else {
        mem->fp = *fp;
        mem->fp_app = app;
        mem->fp.app_name = app;
    }
    pthread_mutex_unlock(&mem->mu);
    free(old);
}

void cpool_mem_set_service_ids(cpool_mem *mem, const char *const *ids, size_t n)
{
    if (mem == NULL)
        return;
    char **copy = NULL;
    size_t ncopy = 0;
    if (ids != NULL && n > 0) {
        copy = calloc(n, sizeof *copy);
        if (copy != NULL) {
            for (ncopy = 0; ncopy < n; ncopy++) {
                copy[ncopy] = dup_str(ids[ncopy] != NULL ? ids[ncopy] : "");
                if (copy[ncopy] == NULL)
                    break;
            }
            /* Out of memory: hand out no service id rather than a partial
             * list, which would skew the round-robin the caller asked for. */
            if (ncopy < n) {
                free_service_ids(copy, ncopy);
                copy = NULL;
                ncopy = 0;
            }
        }
    }
    pthread_mutex_lock(&mem->mu);
    char **old = mem->service_ids;
    size_t nold = mem->n_service_ids;
    mem->service_ids = copy;
    mem->n_service_ids = ncopy;
    mem->next_service = 0;
    pthread_mutex_unlock(&mem->mu);
    free_service_ids(old, nold);
}

void cpool_mem_get_stats(cpool_mem *mem, cpool_mem_stats *out)
{
    if (out == NULL)
        return;
    if (mem == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&mem->mu);
    *out = mem->stats;
    for (const mem_conn *c = mem->live; c != NULL; c = c->next) {
        out->checks += atomic_load(&c->checks);
        out->pings += atomic_load(&c->pings);
        out->resets += atomic_load(&c->resets);
    }
    pthread_mutex_unlock(&mem->mu);
}

/* ------------------------------------------------------- fail point match */

/* True when the query part of `target` has the key appName with exactly the
 * value `app` (the value runs to the next '&' or the end). The key must
 * start the target or follow '?' or '&', so "xappName=a" does not count. */
static bool target_has_app(const char *target, const char *app)
{
    static const char key[] = "appName=";
    const size_t klen = sizeof key - 1;
    size_t alen = strlen(app);
    if (target == NULL)
        return false;
    for (const char *p = strstr(target, key); p != NULL; p = strstr(p + 1, key)) {
        if (p != target && p[-1] != '?' && p[-1] != '&')
            continue;
        const char *v = p + klen;
        size_t vlen = strcspn(v, "&");
        if (vlen == alen && memcmp(v, app, alen) == 0)
            return true;
    }
    return false;
}

/* Decides, under the lock, whether the fail point applies to this attempt
 * and consumes one of its `times` if so. The caller gets a copy, so the
 * blocking and failing happen without the lock held. */
static bool failpoint_take(cpool_mem *mem, const char *target,
                           cpool_mem_failpoint *out)
{
    bool hit = false;
    pthread_mutex_lock(&mem->mu);
    mem->stats.connects++;
    cpool_mem_failpoint *fp = &mem->fp;
    if (fp->times != 0 &&
        (fp->app_name == NULL || target_has_app(target, fp->app_name))) {
        if (fp->times > 0)
            fp->times--;
        *out = *fp;
        out->app_name = NULL; /* the copy must not outlive the lock */
        hit = true;
    }
    pthread_mutex_unlock(&mem->mu);
    return hit;
}

static void count_failure(cpool_mem *mem)
{
    pthread_mutex_lock(&mem->mu);
    mem->stats.failures++;
    pthread_mutex_unlock(&mem->mu);
}

/* Blocks as the fail point says. Returns 0 when the delay ran out, or an
 * error (filled into err) when the pool cancelled the attempt or the
 * deadline passed first. */
static int failpoint_block(const cpool_mem_failpoint *fp,
                           const cpool_connect_args *args, cpool_error *err)
{
    const char *target = args->target != NULL ? args->target : "";
    int64_t start = cpool__mono_ns();
    int64_t block_end = INT64_MAX; /* block_until_interrupted */
    if (!fp->block_until_interrupted) {
        int64_t ms = fp->block_ms;
        /* Clamp so that the addition cannot overflow. */
        if (ms > (INT64_MAX - start) / 1000000)
            ms = (INT64_MAX - start) / 1000000;
        block_end = start + ms * 1000000;
    }
    int64_t stop = block_end;
    bool deadline_first = false;
    if (args->deadline_ns > 0 && args->deadline_ns < block_end) {
        stop = args->deadline_ns;
        deadline_first = true;
    }

    for (;;) {
        int64_t now = cpool__mono_ns();
        if (now >= stop)
            break;
        int64_t left_ms = (stop - now + 999999) / 1000000;
        /* poll() takes an int; wake at least once a minute on very long
         * or unbounded blocks and re-evaluate. */
        int timeout = left_ms > 60000 ? 60000 : (int)left_ms;
        struct pollfd pfd = {.fd = args->cancel_fd, .events = POLLIN};
        int r;
        if (args->cancel_fd >= 0) {
            r = poll(&pfd, 1, timeout);
        } else {
            r = poll(NULL, 0, timeout);
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                                   CPOOL_FAIL_OTHER, errno,
                                   "connect %s: poll failed: %s", target,
                                   strerror(errno));
        }
        /* POLLNVAL/POLLERR/POLLHUP also end the wait: the pool closed or
         * broke the descriptor, so nobody is waiting for this attempt any
         * more, and polling again would spin. */
        if (r > 0 && pfd.revents != 0)
            return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                                   CPOOL_FAIL_INTERRUPTED, 0,
                                   "connect %s: interrupted", target);
    }
    if (deadline_first) {
        int64_t waited_ms = (cpool__mono_ns() - start) / 1000000;
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                               CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                               "connect %s: handshake timed out after %lld ms",
                               target, (long long)waited_ms);
    }
    return 0;
}

static const char *fail_kind_text(cpool_fail_kind kind)
{
    switch (kind) {
    case CPOOL_FAIL_NETWORK: return "connection closed by server";
    case CPOOL_FAIL_TIMEOUT: return "timed out";
    case CPOOL_FAIL_DNS: return "host not found";
    case CPOOL_FAIL_CERTIFICATE: return "certificate verification failed";
    case CPOOL_FAIL_AUTH: return "authentication failed";
    case CPOOL_FAIL_SERVER: return "server error";
    case CPOOL_FAIL_INTERRUPTED: return "interrupted";
    case CPOOL_FAIL_CAPACITY: return "too many connections";
    default: return "failed";
    }
}

/* ------------------------------------------------------------ connector */

static int mem_connect(void *ctx, cpool_connect_args *args, void **native,
                       cpool_error *err)
{
    cpool_mem *mem = ctx;
    *native = NULL;
    if (mem == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_CONNECT,
                               CPOOL_FAIL_OTHER, 0,
                               "mem connector used without a cpool_mem");
    const char *target = args->target != NULL ? args->target : "";
    args->service_id[0] = '\0';

    cpool_mem_server sv = server_of(mem);
    if (sv.stopped) {
        /* A stopped server: the handshake never completes. */
        cpool_mem_failpoint hang = {.block_until_interrupted = true};
        int rc = failpoint_block(&hang, args, err);
        count_failure(mem);
        return rc != 0 ? rc
                       : cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                                         CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                                         "connect %s: no answer", target);
    }
    if (sv.down) {
        count_failure(mem);
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK,
                               ECONNREFUSED, "connect %s: connection refused", target);
    }
    cpool_mem_failpoint fp;
    if (failpoint_take(mem, target, &fp)) {
        if (fp.block_ms > 0 || fp.block_until_interrupted) {
            int rc = failpoint_block(&fp, args, err);
            if (rc != 0) {
                count_failure(mem);
                return rc;
            }
        }
        if (fp.fail) {
            count_failure(mem);
            char shown[256]; /* messages never carry a password */
            cpool_redact(target, shown, sizeof shown);
            target = shown;
            if (fp.fail_kind == CPOOL_FAIL_SERVER)
                return cpool_error_set(err, CPOOL_ECONNECT, fp.fail_phase,
                                       fp.fail_kind, fp.fail_native,
                                       "hello to %s failed: server error %d",
                                       target, fp.fail_native);
            return cpool_error_set(err, CPOOL_ECONNECT, fp.fail_phase,
                                   fp.fail_kind, fp.fail_native,
                                   "hello to %s failed: %s", target,
                                   fail_kind_text(fp.fail_kind));
        }
    }

    mem_conn *c = mem_conn_alloc();
    if (c == NULL) {
        count_failure(mem);
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_HANDSHAKE,
                               CPOOL_FAIL_OTHER, ENOMEM,
                               "connect %s: out of memory", target);
    }
    c->mem = mem;
    c->id = args->conn_id;
    atomic_init(&c->broken, false);
    atomic_init(&c->interrupted, false);
    atomic_init(&c->in_txn, false);
    atomic_init(&c->checks, 0);
    atomic_init(&c->pings, 0);
    atomic_init(&c->hung, false);
    atomic_init(&c->stalled, false);
    atomic_init(&c->resets, 0);

    pthread_mutex_lock(&mem->mu);
    c->prev = NULL;
    c->next = mem->live;
    if (mem->live != NULL)
        mem->live->prev = c;
    mem->live = c;
    if (mem->n_service_ids > 0) {
        const char *sid = mem->service_ids[mem->next_service];
        mem->next_service = (mem->next_service + 1) % mem->n_service_ids;
        snprintf(args->service_id, sizeof args->service_id, "%s", sid);
    }
    mem->stats.open++;
    pthread_mutex_unlock(&mem->mu);

    *native = c;
    return 0;
}

/* close() and abandon() differ only in which counter they bump: there is no
 * socket whose peer could tell a polite close from a dropped one. */
static void mem_release(void *native, bool abandoned)
{
    mem_conn *c = native;
    if (c == NULL)
        return;
    cpool_mem *mem = c->mem;
    pthread_mutex_lock(&mem->mu);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        mem->live = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    mem->stats.checks += atomic_load(&c->checks);
    mem->stats.pings += atomic_load(&c->pings);
    mem->stats.resets += atomic_load(&c->resets);
    if (mem->stats.open > 0)
        mem->stats.open--;
    if (abandoned)
        mem->stats.abandons++;
    else
        mem->stats.closes++;
    pthread_mutex_unlock(&mem->mu);
    free(c);
}

static void mem_close(void *ctx, void *native)
{
    (void)ctx;
    mem_release(native, false);
}

static void mem_abandon(void *ctx, void *native)
{
    (void)ctx;
    mem_release(native, true);
}

/* One writer at a time (whoever holds the connection; the pool orders the
 * hand-overs), so a relaxed load and store suffice: no locked instruction,
 * yet get_stats() may read the counter concurrently without a data race. */
static void bump(atomic_ulong *counter)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* 0 when the connection is usable, else fills err. */
static int conn_alive(mem_conn *c, const char *what, cpool_error *err)
{
    if (atomic_load_explicit(&c->mem->down, memory_order_relaxed))
        atomic_store(&c->broken, true);
    if (atomic_load(&c->interrupted))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_NETWORK, 0,
                               "%s on mem connection %llu: interrupted", what,
                               (unsigned long long)c->id);
    if (atomic_load(&c->broken))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_NETWORK, 0,
                               "%s on mem connection %llu: connection broken",
                               what, (unsigned long long)c->id);
    return 0;
}

static int mem_check(void *ctx, void *native, cpool_error *err)
{
    (void)ctx;
    mem_conn *c = native;
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_OTHER, 0, "check: no connection");
    bump(&c->checks);
    return conn_alive(c, "check", err);
}

/* No round trip to make: a ping sees what check() sees, and fails on a
 * "hung" connection, which looks alive without I/O (a stopped server that
 * still holds the socket open). */
static int mem_ping(void *ctx, void *native, int64_t deadline_ns,
                    cpool_error *err)
{
    (void)ctx;
    (void)deadline_ns;
    mem_conn *c = native;
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_OTHER, 0, "ping: no connection");
    bump(&c->pings);
    if (atomic_load(&c->stalled) && deadline_ns > 0) {
        /* A stopped server: nothing comes back before the deadline. */
        int64_t left = deadline_ns - cpool__mono_ns();
        if (left > 0) {
            struct timespec ts = {left / 1000000000, left % 1000000000};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
    }
    if (atomic_load(&c->hung))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT, 0,
                               "ping on mem connection %llu: no answer",
                               (unsigned long long)c->id);
    return conn_alive(c, "ping", err);
}

void cpool_mem_conn_hang(void *native)
{
    if (native != NULL)
        atomic_store(&((mem_conn *)native)->hung, true);
}

void cpool_mem_conn_stall(void *native)
{
    if (native != NULL) {
        atomic_store(&((mem_conn *)native)->stalled, true);
        atomic_store(&((mem_conn *)native)->hung, true);
    }
}

static int mem_reset(void *ctx, void *native, cpool_error *err)
{
    (void)ctx;
    mem_conn *c = native;
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_OTHER, 0, "reset: no connection");
    bump(&c->resets);
    int rc = conn_alive(c, "reset", err);
    if (rc != 0)
        return rc;
    atomic_store(&c->in_txn, false);
    return 0;
}

/* A full session reset: what a lease left (the session value, an open
 * transaction) is gone, as on a new connection. */
static int mem_discard(void *ctx, void *native, int64_t deadline_ns, cpool_error *err)
{
    (void)ctx;
    (void)deadline_ns;
    mem_conn *c = native;
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_OTHER, 0, "discard: no connection");
    pthread_mutex_lock(&c->mem->mu);
    c->mem->stats.discards++;
    pthread_mutex_unlock(&c->mem->mu);
    if (atomic_load(&c->hung))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT, 0,
                               "discard on mem connection %llu: no answer",
                               (unsigned long long)c->id);
    int rc = conn_alive(c, "discard", err);
    if (rc != 0)
        return rc;
    atomic_store(&c->in_txn, false);
    atomic_store(&c->session, 0);
    return 0;
}

void cpool_mem_conn_set_session(void *native, uint64_t value)
{
    if (native != NULL)
        atomic_store(&((mem_conn *)native)->session, value);
}

uint64_t cpool_mem_conn_session(void *native)
{
    return native != NULL ? atomic_load(&((mem_conn *)native)->session) : 0;
}

static void mem_interrupt(void *ctx, void *native)
{
    (void)ctx;
    mem_conn *c = native;
    if (c == NULL)
        return;
    atomic_store(&c->interrupted, true);
    pthread_mutex_lock(&c->mem->mu);
    c->mem->stats.interrupts++;
    pthread_mutex_unlock(&c->mem->mu);
}

/* "mem:<name>" where name is the target without the "mem://" scheme and
 * without the query, so that pools told apart only by appName share one
 * address, as pools to one server do. */
static int mem_address(void *ctx, const char *target, char *buf, size_t size)
{
    (void)ctx;
    if (buf == NULL || size == 0)
        return CPOOL_EINVAL;
    if (target == NULL)
        target = "";
    if (strncmp(target, MEM_SCHEME, sizeof MEM_SCHEME - 1) == 0)
        target += sizeof MEM_SCHEME - 1;
    size_t n = strcspn(target, "?");
    if (n > INT_MAX)
        return CPOOL_EINVAL;
    int w = snprintf(buf, size, "mem:%.*s", (int)n, target);
    if (w < 0 || (size_t)w >= size)
        return CPOOL_EINVAL;
    return 0;
}

/* A pool created from a "mem://" target without a connector_ctx gets a
 * server of its own, freed with the pool: `cpool bench mem://` and tests of
 * target parsing need nothing else. */
static int mem_ctx_new(const char *target, void **ctx, cpool_error *err)
{
    (void)target;
    cpool_mem *m = NULL;
    if (cpool_mem_create(&m) != 0)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "mem connector: out of memory");
    *ctx = m;
    return 0;
}

static void mem_ctx_free(void *ctx)
{
    cpool_mem_destroy(ctx);
}

static int mem_describe(void *ctx, void *native, char *buf, size_t size)
{
    (void)ctx;
    mem_conn *c = native;
    int w = snprintf(buf, size, "in-memory test server, connection %llu",
                     c != NULL ? (unsigned long long)c->id : 0ULL);
    return w < 0 || (size_t)w >= size ? CPOOL_EINVAL : 0;
}

/* Any command succeeds on a live connection, so tools can drive the
 * in-memory server like a database; "SLEEP <ms>" takes that long. */
static int mem_execute(void *ctx, void *native, const char *command, cpool_error *err)
{
    (void)ctx;
    mem_conn *c = native;
    if (c == NULL || command == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "execute: no connection or command");
    int rc = conn_alive(c, "execute", err);
    if (rc != 0)
        return rc;
    long ms = 0;
    if (sscanf(command, "SLEEP %ld", &ms) == 1 && ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    return 0;
}

/* The server "accepts connections" unless the fail point would fail every
 * handshake now (a failing one without a blocking delay, whatever its
 * app_name); nothing is consumed. */
static int mem_probe(void *ctx, int64_t deadline_ns, cpool_error *err)
{
    (void)deadline_ns;
    cpool_mem *mem = ctx;
    if (mem == NULL)
        return 1;
    pthread_mutex_lock(&mem->mu);
    mem->stats.probes++;
    bool refused = mem->fp.times != 0 && mem->fp.fail;
    pthread_mutex_unlock(&mem->mu);
    if (refused)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK,
                               111, "probe mem: refused");
    return 0;
}

/* Sleeps until `until` (CLOCK_MONOTONIC), or not at all when it passed. */
static void sleep_until(int64_t until)
{
    int64_t left = until - cpool__mono_ns();
    if (left <= 0)
        return;
    struct timespec ts = {left / 1000000000, left % 1000000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The role cpool_mem_set_server() gives, after its round-trip time; a
 * down server breaks the connection, a stopped one answers nothing before
 * the deadline. */
static int mem_server_info(void *ctx, void *native, unsigned flags, int64_t deadline_ns,
                           cpool_server_info *out, cpool_error *err)
{
    cpool_mem *mem = ctx;
    mem_conn *c = native;
    if (mem == NULL || c == NULL || out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "server info: no connection");
    cpool_mem_server sv = server_of(mem);
    out->role = CPOOL_ROLE_UNKNOWN;
    out->lag_ms = -1;
    out->epoch = 0;
    if (flags & CPOOL_INFO_CACHED) {
        out->role = sv.role;
        return 0;
    }
    if (sv.stopped) {
        sleep_until(deadline_ns);
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT,
                               ETIMEDOUT, "server info on mem connection %llu: no answer",
                               (unsigned long long)c->id);
    }
    int rc = conn_alive(c, "server info", err);
    if (rc != 0)
        return rc;
    int64_t rtt_us = !c->answered && sv.first_rtt_us > 0 ? sv.first_rtt_us : sv.rtt_us;
    c->answered = true;
    if (rtt_us > 0) {
        int64_t until = cpool__mono_ns() + rtt_us * 1000;
        sleep_until(deadline_ns > 0 && deadline_ns < until ? deadline_ns : until);
        if (deadline_ns > 0 && deadline_ns < until)
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT,
                                   ETIMEDOUT, "server info on mem connection %llu: timed out",
                                   (unsigned long long)c->id);
    }
    out->role = sv.role;
    out->epoch = sv.role == CPOOL_ROLE_PRIMARY ? sv.epoch : 0;
    out->lag_ms = sv.role == CPOOL_ROLE_REPLICA && (flags & CPOOL_INFO_LAG) ? sv.lag_ms : -1;
    return 0;
}

static const char *const mem_schemes[] = {MEM_SCHEME, NULL};

static const cpool_connector mem_connector = {
    .abi_version = CPOOL_CONNECTOR_ABI,
    .name = "mem",
    .connect = mem_connect,
    .close = mem_close,
    .abandon = mem_abandon,
    .check = mem_check,
    .ping = mem_ping,
    .reset = mem_reset,
    .discard = mem_discard,
    .interrupt = mem_interrupt,
    .address = mem_address,
    .ctx_new = mem_ctx_new,
    .ctx_free = mem_ctx_free,
    .describe = mem_describe,
    .schemes = mem_schemes,
    .execute = mem_execute,
    .probe = mem_probe,
    .server_info = mem_server_info,
};

const cpool_connector *cpool_mem_connector(void)
{
    return &mem_connector;
}

/* ------------------------------------------------- per-connection scripting */

void cpool_mem_conn_break(void *native)
{
    mem_conn *c = native;
    if (c != NULL)
        atomic_store(&c->broken, true);
}

bool cpool_mem_conn_interrupted(void *native)
{
    mem_conn *c = native;
    return c != NULL && atomic_load(&c->interrupted);
}

uint64_t cpool_mem_conn_id(void *native)
{
    mem_conn *c = native;
    return c != NULL ? c->id : 0;
}

void cpool_mem_conn_begin(void *native)
{
    mem_conn *c = native;
    if (c != NULL)
        atomic_store(&c->in_txn, true);
}

bool cpool_mem_conn_in_txn(void *native)
{
    mem_conn *c = native;
    return c != NULL && atomic_load(&c->in_txn);
}
