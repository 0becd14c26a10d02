/* lifecycle.c -- a pool's life: options and their checks, create, ready,
 * clear (with interrupts), close, shutdown, destroy, and the accessors.
 * Public entry points take mu themselves. */
#include "core.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* serverHost/serverPort for the log records: "host:port", "[v6]:port", a
 * unix socket path (no port) or anything else (host only). */
static int split_address(cpool *p)
{
    const char *a = p->address;
    const char *colon = strrchr(a, ':');
    p->port = -1;
    if (a[0] != '/' && colon != NULL && colon[1] != '\0' &&
        strspn(colon + 1, "0123456789") == strlen(colon + 1) && strlen(colon + 1) <= 5) {
        size_t hl = (size_t)(colon - a);
        if (hl >= 2 && a[0] == '[' && a[hl - 1] == ']') {
            a++;
            hl -= 2;
        }
        p->host = strndup(a, hl);
        p->port = atoi(colon + 1);
    } else {
        p->host = strdup(a);
    }
    return p->host == NULL ? CPOOL_ENOMEM : 0;
}

static void free_pool(cpool *p)
{
    while (p->free_list.head != NULL) {
        cpool_conn *c = p->free_list.head;
        list_remove(&p->free_list, c);
        c->magic = 0;
        free(c);
    }
    while (p->services != NULL) {
        service *s = p->services;
        p->services = s->next;
        free(s);
    }
    while (p->tenant_list != NULL) {
        tenant *t = p->tenant_list;
        p->tenant_list = t->next;
        free(t);
    }
    if (p->log_file != NULL)
        fclose(p->log_file);
    if (p->owns_cx_ctx && p->cx->ctx_free != NULL)
        p->cx->ctx_free(p->cx_ctx);
    free(p->target);
    free(p->address);
    free(p->name);
    free(p->host);
    pthread_cond_destroy(&p->maint_cv);
    pthread_cond_destroy(&p->drain_cv);
    pthread_cond_destroy(&p->async_cv);
    pthread_mutex_destroy(&p->ev_mu);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* A zeroed pool with its locks and condition variables; NULL when out of
 * memory. */
static cpool *pool_alloc(void)
{
    cpool *p = aligned_alloc(CPOOL_CACHE_LINE, sizeof *p);
    if (p == NULL)
        return NULL;
    memset(p, 0, sizeof *p);
    /* Critical sections are a few list operations: spinning briefly before
     * sleeping beats a futex round trip when the holder runs on another core. */
    pthread_mutexattr_t mattr;
    pthread_mutexattr_init(&mattr);
    pthread_mutexattr_settype(&mattr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&p->mu, &mattr);
    pthread_mutexattr_destroy(&mattr);
    pthread_mutex_init(&p->ev_mu, NULL);
    cpool__init_monotonic_cond(&p->maint_cv);
    cpool__init_monotonic_cond(&p->drain_cv);
    cpool__init_monotonic_cond(&p->async_cv);
    return p;
}

/* The connector parses its part of the target now, so a bad parameter
 * fails here rather than at the first connect. */
static int bind_connector(cpool *p, const cpool_options *o, cpool_error *err)
{
    p->cx = o->connector;
    p->cx_ctx = o->connector_ctx;
    if (p->target == NULL || p->cx_ctx != NULL || p->cx->abi_version < 2 ||
        p->cx->ctx_new == NULL)
        return 0;
    void *ctx = NULL;
    int rc = p->cx->ctx_new(p->target, &ctx, err);
    if (rc != 0)
        return rc;
    p->cx_ctx = ctx;
    p->owns_cx_ctx = true;
    return 0;
}

/* The address is in every event, log record and error message, so it is
 * made from the target without its password; the name defaults to it. */
static int name_pool(cpool *p, const cpool_options *o, cpool_error *err)
{
    char buf[256], redacted[512];
    if (p->target != NULL)
        cpool_redact(p->target, redacted, sizeof redacted);
    const char *address = o->address;
    if (address == NULL && p->target != NULL && p->cx->address != NULL &&
        p->cx->address(p->cx_ctx, redacted, buf, sizeof buf) == 0)
        address = buf;
    if (address == NULL || address[0] == '\0')
        address = p->target != NULL && p->target[0] != '\0' ? redacted : p->cx->name;
    p->address = address != NULL ? strdup(address) : NULL;
    p->name = o->name != NULL ? strdup(o->name) : p->address != NULL ? strdup(p->address) : NULL;
    if (p->target == NULL || p->address == NULL || p->name == NULL || split_address(p) != 0)
        return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
    return 0;
}

/* What the resolved options decide once: the paths a lease may take. */
static void settle_locked_paths(cpool *p)
{
    const cpool_options *o = &p->opts;
    /* Leak detection reads the holder's label under mu, so its leases take
     * the locked paths, as observed pools' do. */
    p->observed = o->on_event != NULL || o->on_log != NULL || o->leak_threshold_ms > 0;
    p->stamp_idle = o->max_idle_time_ms > 0 || o->validation == CPOOL_VALIDATE_PING_IDLE;
    p->tick_clock = o->clock == NULL && o->maintenance_interval_ms > 0;
    /* early_wake: auto is off until a measurement shows the CPUs are this
     * process's (maint.c, watch_cpu_relock). */
    p->wake_early = o->early_wake == CPOOL_EARLY_WAKE_ON;
    p->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    p->cpu_others = -1;
    /* Parking skips the events and the per-service generations. */
    cpool__set_parking(p, !p->observed && !o->load_balanced);
    p->serial = atomic_fetch_add(&cpool__pool_serial, 1) + 1;
    p->rng = 0x9e3779b97f4a7c15ULL ^ (p->serial * 0xbf58476d1ce4e5b9ULL) ^
             (uint64_t)cpool__mono_ns();
    p->options_set = cpool__options_set(o);
    atomic_store_explicit(&p->live_min, o->min_pool_size, memory_order_relaxed);
    p->state = CPOOL_STATE_PAUSED;
    atomic_store_explicit(&p->gate, gate_open(0) | GATE_SHUT, memory_order_relaxed);
    atomic_store_explicit(&p->fork_epoch,
                          atomic_load_explicit(&cpool__fork_epoch, memory_order_relaxed),
                          memory_order_relaxed);
}

int cpool_create(const cpool_options *opts, cpool **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (opts == NULL || out == NULL)
        return cpool__err(err, CPOOL_EINVAL, "create: options and out are required");
    if (opts->struct_size < offsetof(cpool_options, clock) + sizeof opts->clock)
        return cpool__err(err, CPOOL_EINVAL,
                          "create: options.struct_size %zu is too small; use "
                          "cpool_options_init(&o, sizeof o)",
                          opts->struct_size);
    cpool_options code, o;
    cpool_options_init(&code, sizeof code);
    memcpy(&code, opts, opts->struct_size < sizeof code ? opts->struct_size : sizeof code);
    code.struct_size = sizeof code;
    /* Profile, environment and the target's query over the code's values;
     * `target` comes back without the pool's own parameters. */
    char *target = NULL;
    int rc = cpool__options_resolve(&code, &o, &target, err);
    if (rc == 0)
        rc = cpool__options_validate(&o, err);
    if (rc != 0) {
        free(target);
        return rc;
    }
    pthread_once(&cpool__atfork_once, cpool__register_atfork);
    cpool *p = pool_alloc();
    if (p == NULL) {
        free(target);
        return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
    }
    p->target = target != NULL ? target : strdup("");
    if ((rc = bind_connector(p, &o, err)) != 0 || (rc = name_pool(p, &o, err)) != 0) {
        free_pool(p);
        return rc;
    }
    o.target = p->target;
    o.address = p->address;
    o.name = p->name;
    if (o.on_log == NULL && !o.ignore_env && (rc = cpool__env_log_sink(p, &o, err)) != 0) {
        free_pool(p);
        return rc;
    }
    p->opts = o;
    settle_locked_paths(p);
    cpool__registry_add(p); /* before mu: the registry lock comes first */
    cpool__lock(p);
    cpool__stats_start_locked(p);
    if (cpool__start_maintenance_locked(p) != 0) {
        cpool__unlock(p);
        cpool__registry_remove(p);
        free_pool(p);
        return cpool__err(err, CPOOL_ESYS, "create: cannot start the background thread");
    }
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CREATED);
    ev.options = &p->opts;
    ev.options_set = p->options_set;
    cpool__emit_unlock(p, &ev);
    if (!o.ignore_env)
        cpool__env_warn(p);
    *out = p;
    return 0;
}

/* The start of an entry point that needs an open pool: refuses a call
 * from the pool's own callback, no pool, and a closed one. 0 with mu held;
 * otherwise the error, mu released. */
static int enter_open(cpool *p, const char *what, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, what);
    if (p == NULL)
        return cpool__err(err, CPOOL_EINVAL, "%s: pool is required", what);
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "%s %s: pool is closed", what, p->address);
    }
    return 0;
}

int cpool_ready(cpool *p, cpool_error *err)
{
    int rc = enter_open(p, "ready", err);
    if (rc != 0)
        return rc;
    if (p->draining) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ESHUTDOWN, "ready %s: pool is shutting down", p->address);
    }
    if (p->state == CPOOL_STATE_READY) {
        cpool__unlock(p);
        return 0;
    }
    cpool__pool_state_locked(p, CPOOL_STATE_READY);
    p->ever_ready = true;
    /* The background thread takes mu before it creates anything, and its
     * ConnectionCreated needs ev_mu, which we take before releasing mu: so
     * no observer sees a creation before ConnectionPoolReady. */
    cpool__kick_maintenance_locked(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_READY);
    cpool__emit_unlock(p, &ev);
    return 0;
}

/* Flag bits cpool_clear() and cpool_clear_service() do not know are
 * refused, not ignored. */
static int clear_flags_check(const cpool *p, unsigned flags, cpool_error *err)
{
    if (p == NULL || (flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE) == 0)
        return 0;
    return cpool__err(err, CPOOL_EINVAL,
                      "clear %s: unknown flags 0x%x (allowed CPOOL_CLEAR_INTERRUPT_IN_USE)",
                      p->address, flags & ~CPOOL_CLEAR_INTERRUPT_IN_USE);
}

int cpool_clear(cpool *p, unsigned flags, const cpool_error *cause, cpool_error *err)
{
    int rc = clear_flags_check(p, flags, err);
    if (rc == 0)
        rc = enter_open(p, "clear", err);
    if (rc != 0)
        return rc;
    if (p->opts.load_balanced) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: load-balanced pools are cleared per service "
                          "(cpool_clear_service)", p->address);
    }
    cpool__clear_relock(p, flags, cause);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        cpool__interrupt_marked_relock(p);
    cpool__unlock(p);
    return 0;
}

/* Marks every connection for recycling: the check-in, the checkout that
 * finds it available, the background thread and the end of an establishment
 * close it ("recycled"), as they would a stale one. Nothing else changes:
 * no pause, no generation, no waiter fails. */
static uint32_t mark_list_locked(cpool *p, const conn_list *l)
{
    CPOOL_ASSERT_HELD(p);
    uint32_t n = 0;
    for (cpool_conn *c = l->head; c != NULL; c = c->next)
        if (!atomic_exchange_explicit(&c->recycle, true, memory_order_relaxed))
            n++;
    return n;
}

int cpool_recycle(cpool *p, uint32_t *marked, cpool_error *err)
{
    if (marked != NULL)
        *marked = 0;
    int rc = enter_open(p, "recycle", err);
    if (rc != 0)
        return rc;
    uint32_t n = mark_list_locked(p, &p->pending) + mark_list_locked(p, &p->available) +
                 mark_list_locked(p, &p->in_use);
    p->st_recycles++;
    if (marked != NULL)
        *marked = n;
    cpool__kick_maintenance_locked(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_RECYCLED);
    ev.connections = n;
    cpool__emit_unlock(p, &ev);
    return 0;
}

int cpool_clear_service(cpool *p, const char *service_id, unsigned flags,
                        const cpool_error *cause, cpool_error *err)
{
    if (p != NULL && service_id == NULL)
        return cpool__err(err, CPOOL_EINVAL, "clear_service %s: a service id is required",
                          p->address);
    int rc = clear_flags_check(p, flags, err);
    if (rc == 0)
        rc = enter_open(p, "clear", err);
    if (rc != 0)
        return rc;
    if (!p->opts.load_balanced) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL,
                          "clear %s: clearing by service id needs load-balanced mode",
                          p->address);
    }
    (void)cause; /* waiters are not failed in load-balanced mode */
    /* CMAP load-balanced clear: only this service's generation moves; the
     * pool is not paused and the wait queue is left alone. */
    service *s = cpool__svc_find_locked(p, service_id);
    if (s != NULL) {
        uint64_t old = s->generation++;
        if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
            cpool__mark_interrupts_locked(p, s, old);
    }
    cpool__kick_maintenance_locked(p);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
    ev.service_id = service_id;
    ev.interrupt_in_use = (flags & CPOOL_CLEAR_INTERRUPT_IN_USE) != 0;
    cpool__emit_relock(p, &ev);
    if (flags & CPOOL_CLEAR_INTERRUPT_IN_USE)
        cpool__interrupt_marked_relock(p);
    cpool__unlock(p);
    return 0;
}

void cpool_close(cpool *p)
{
    if (p == NULL || cpool__in_callback(p))
        return;
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED) {
        cpool__unlock(p);
        return;
    }
    cpool__pool_state_locked(p, CPOOL_STATE_CLOSED);
    cpool__fail_waiters_locked(p, CPOOL_ECLOSED);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        cpool__cancel_pending(c);
    pthread_cond_broadcast(&p->maint_cv);
    /* CMAP: available connections are closed first, then PoolClosed. In-use
     * ones are closed when they come back. */
    while (p->available.head != NULL)
        cpool__close_conn_relock(p, p->available.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    for (cpool_conn *c; (c = cpool__steal_parked_locked(p, STEAL_ANY, NULL)) != NULL;)
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_POOL_CLOSED, NULL);
    cpool_event ev;
    cpool__event_init(p, &ev, CPOOL_EV_POOL_CLOSED);
    cpool__emit_unlock(p, &ev);
}

/* Stops new work at once: paused, so the fast path and the maintenance
 * thread stand still, and draining, so checkouts say why. Waiters fail,
 * establishments are cancelled, idle connections close. */
static void drain_begin_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    p->draining = true;
    p->drain_t0 = cpool__mono_ns();
    cpool__pool_state_locked(p, CPOOL_STATE_PAUSED);
    cpool__fail_waiters_locked(p, CPOOL_ESHUTDOWN);
    for (cpool_conn *c = p->pending.head; c != NULL; c = c->next)
        cpool__cancel_pending(c);
    while (p->available.head != NULL)
        cpool__close_conn_relock(p, p->available.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    for (cpool_conn *c; (c = cpool__steal_parked_locked(p, STEAL_ANY, NULL)) != NULL;)
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_POOL_CLOSED, NULL);
    p->drain_at_start = p->in_use.n;
}

/* Where a drain stands: the leases out when it began, those returned,
 * reclaimed, still out. */
static void drain_report_locked(const cpool *p, cpool_shutdown_report *r, uint32_t still_out)
{
    CPOOL_ASSERT_HELD(p);
    r->in_use_at_start = p->drain_at_start;
    r->reclaimed = p->drain_reclaimed;
    r->returned = p->drain_at_start >= still_out + p->drain_reclaimed
                      ? p->drain_at_start - still_out - p->drain_reclaimed
                      : 0;
    r->elapsed_ms = (cpool__mono_ns() - p->drain_t0) / 1000000;
}

int cpool_drain(cpool *p, cpool_error *err)
{
    int rc = enter_open(p, "drain", err);
    if (rc != 0)
        return rc;
    if (!p->draining)
        drain_begin_relock(p);
    cpool__unlock(p);
    if (err != NULL)
        memset(err, 0, sizeof *err);
    return 0;
}

int cpool_drain_status(cpool *p, cpool_shutdown_report *out)
{
    if (p == NULL || out == NULL)
        return CPOOL_EINVAL;
    memset(out, 0, sizeof *out);
    cpool__lock(p);
    int rc = p->draining ? 0 : CPOOL_ESTATE;
    if (rc == 0) {
        drain_report_locked(p, out, p->in_use.n);
        out->interrupted = 0; /* none yet: cpool_shutdown() interrupts at its end */
    }
    cpool__unlock(p);
    return rc;
}

int cpool_shutdown(cpool *p, int64_t grace_ms, cpool_shutdown_report *report,
                   cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "shutdown");
    if (report != NULL)
        memset(report, 0, sizeof *report);
    if (p == NULL || grace_ms < 0)
        return cpool__err(err, CPOOL_EINVAL, "shutdown: a pool and grace_ms >= 0 are required");
    cpool__lock(p);
    cpool__check_fork_relock(p);
    if (p->state == CPOOL_STATE_CLOSED || p->shutting_down) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_ECLOSED, "shutdown %s: pool is already %s", p->address,
                          p->shutting_down ? "shutting down" : "closed");
    }
    p->shutting_down = true;
    if (!p->draining) /* else cpool_drain() began it: go on from there */
        drain_begin_relock(p);
    struct timespec until = abs_real(ms_to_ns(grace_ms));
    while (p->in_use.n > 0 &&
           cpool__cond_timedwait(p, &p->drain_cv, &until) != ETIMEDOUT) {
    }
    uint32_t held = p->in_use.n;
    cpool_shutdown_report r;
    memset(&r, 0, sizeof r);
    drain_report_locked(p, &r, held);
    r.interrupted = held;
    for (cpool_conn *c = p->in_use.head; c != NULL; c = c->next)
        c->interrupt_requested = true;
    cpool__interrupt_marked_relock(p);
    cpool__unlock(p);
    cpool_close(p);
    if (report != NULL) {
        *report = r;
        report->elapsed_ms = (cpool__mono_ns() - p->drain_t0) / 1000000;
    }
    if (err != NULL)
        memset(err, 0, sizeof *err);
    return 0;
}

void cpool_destroy(cpool *p)
{
    if (p == NULL || cpool__in_callback(p))
        return;
    cpool_close(p);
    cpool__lock(p);
    bool join = p->maint_running;
    p->maint_running = false;
    pthread_cond_broadcast(&p->maint_cv);
    cpool__unlock(p);
    if (join)
        pthread_join(p->maint, NULL);
    /* Helper threads of asynchronous checkouts finish their step first. */
    cpool__lock(p);
    pthread_cond_broadcast(&p->async_cv); /* the idle ones leave */
    while (p->async_helpers > 0) {
        cpool__unlock(p);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        cpool__lock(p);
    }
    cpool__unlock(p);
    /* Leases that never came back: close them so the server sessions end. */
    cpool__lock(p);
    while (p->in_use.head != NULL)
        cpool__close_conn_relock(p, p->in_use.head, CPOOL_CLOSE_POOL_CLOSED, NULL);
    while (p->orphans.head != NULL) {
        if (p->orphans.head->reclaimed)
            cpool__close_reclaimed_relock(p, p->orphans.head);
        else
            cpool__abandon_locked(p, p->orphans.head);
    }
    cpool__unlock(p);
    cpool__registry_remove(p);
    free_pool(p);
}

void cpool_wake(cpool *p)
{
    if (p == NULL)
        return;
    cpool__lock(p);
    /* Waiters under a test clock re-read it every few milliseconds on their
     * own; the maintenance thread sleeps longer, so it is woken here. */
    cpool__kick_maintenance_locked(p);
    cpool__unlock(p);
}

const char *cpool_address(const cpool *p)
{
    return p != NULL ? p->address : NULL;
}

uint64_t cpool_conn_id(const cpool_conn *c)
{
    return c != NULL ? c->id : 0;
}

uint64_t cpool_conn_generation(const cpool_conn *c)
{
    return c != NULL ? c->generation : 0;
}

const char *cpool_conn_service_id(const cpool_conn *c)
{
    return c != NULL && c->svc != NULL ? c->svc->id : NULL;
}

cpool *cpool_conn_pool(const cpool_conn *c)
{
    return c != NULL && c->magic == CONN_MAGIC ? c->pool : NULL;
}

/* For the cluster's selection (src/cluster/): the circuit is open. */
bool cpool__pool_breaker_open(cpool *p)
{
    cpool__lock(p);
    bool open = cpool__breaker_open(p);
    cpool__unlock(p);
    return open;
}

void *cpool_conn_native(const cpool_conn *c)
{
    return c != NULL ? c->native : NULL;
}

int cpool_conn_execute(cpool_conn *c, const char *command, cpool_error *err)
{
    if (c == NULL || c->magic != CONN_MAGIC || command == NULL)
        return cpool__err(err, CPOOL_EINVAL, "execute: a lease and a command are required");
    const cpool_connector *cx = c->pool->cx;
    if (cx->abi_version < 2 || cx->execute == NULL)
        return cpool__err(err, CPOOL_EINVAL, "execute: the %s connector cannot run commands",
                          cx->name);
    if (err != NULL)
        memset(err, 0, sizeof *err);
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cx->execute(c->pool->cx_ctx, c->native, command, &e);
    if (rc != 0 && e.code == 0)
        e.code = CPOOL_EIO;
    if (rc != 0 && err != NULL)
        *err = e;
    return rc != 0 ? e.code : 0;
}

int cpool_maintain(cpool *p, cpool_error *err)
{
    int rc = enter_open(p, "maintain", err);
    if (rc != 0)
        return rc;
    cpool__maintain_relock(p);
    cpool__unlock(p);
    return 0;
}

/* Why cpool_wait_connected() ended short of n connections: while
 * establishments fail, the last one's error with its labels; else a
 * timeout's count, or what stopped it. */
static int wait_connected_error(cpool *p, int rc, const cpool_error *e, uint32_t got,
                                uint32_t n, int64_t timeout_ms, cpool_error *err)
{
    cpool__lock(p);
    bool have_last = p->fail_streak > 0; /* failing now, not long ago */
    cpool_error last = p->last_fail;
    cpool__unlock(p);
    if (have_last && (rc == CPOOL_ECONNECT || rc == CPOOL_EUNAVAILABLE ||
                      rc == CPOOL_ETIMEDOUT)) {
        if (err != NULL) {
            *err = last;
            size_t len = strlen(err->message);
            snprintf(err->message + len, sizeof err->message - len,
                     " (startup: %u of %u connections after %lld ms)", got, n,
                     (long long)timeout_ms);
        }
        return last.code;
    }
    if (err != NULL && rc == CPOOL_ETIMEDOUT)
        cpool__err(err, rc, "wait_connected %s: %u of %u connections after %lld ms",
                   p->address, got, n, (long long)timeout_ms);
    else if (err != NULL)
        *err = *e;
    return rc;
}

int cpool_wait_connected(cpool *p, uint32_t n, int64_t timeout_ms, cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "wait_connected");
    if (p == NULL || timeout_ms < 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "wait_connected: a pool and timeout_ms >= 0 are required");
    if (n == 0)
        n = p->opts.min_pool_size > 1 ? p->opts.min_pool_size : 1;
    if (p->opts.max_pool_size != 0 && n > p->opts.max_pool_size)
        return cpool__err(err, CPOOL_EINVAL,
                          "wait_connected %s: %u connections exceed maxPoolSize %u",
                          p->address, n, p->opts.max_pool_size);
    /* Connections are opened into the pool as the background refill opens
     * them, not leased: a checkout would be a tenant's lease, and the slots
     * other tenants reserve would stay out of reach (n = maxPoolSize never
     * came). Failures follow the backoff, and an open circuit is waited
     * out. */
    int64_t deadline = deadline_after(cpool__now(p), timeout_ms);
    uint32_t got = 0;
    int rc = 0;
    cpool_error e;
    memset(&e, 0, sizeof e);
    cpool__lock(p);
    cpool__check_fork_relock(p);
    for (;;) {
        got = p->available.n + p->in_use.n;
        if (got >= n)
            break;
        if (p->state == CPOOL_STATE_CLOSED || p->draining) {
            rc = p->draining ? CPOOL_ESHUTDOWN : CPOOL_ECLOSED;
            cpool__err(&e, rc, "wait_connected %s: the pool is closed", p->address);
            break;
        }
        int64_t now = cpool__now(p);
        if (now >= deadline) {
            rc = CPOOL_ETIMEDOUT;
            break;
        }
        if (p->state == CPOOL_STATE_READY && total_locked(p) < n && cpool__can_create_locked(p)) {
            if ((rc = cpool__open_into_pool_relock(p, deadline, &e)) == CPOOL_ENOMEM)
                break;
            rc = 0; /* an establishment failure follows the backoff */
            continue;
        }
        /* A backoff step, the maxConnecting limit or a paused pool: look
         * again at the end of the step, or soon. */
        int64_t wake = p->fail_streak > 0 && p->retry_at > now ? p->retry_at
                                                                : now + 10000000;
        if (wake > deadline)
            wake = deadline;
        cpool__unlock(p);
        nanosleep(&(struct timespec){.tv_sec = (wake - now) / 1000000000,
                                     .tv_nsec = (wake - now) % 1000000000},
                  NULL);
        cpool__lock(p);
    }
    cpool__unlock(p);
    if (got >= n) {
        if (err != NULL)
            memset(err, 0, sizeof *err);
        return 0;
    }
    return wait_connected_error(p, rc, &e, got, n, timeout_ms, err);
}

void cpool_get_counts(cpool *p, cpool_counts *out)
{
    if (p == NULL || out == NULL)
        return;
    cpool__lock(p);
    cpool__check_fork_relock(p);
    cpool__counts_locked(p, out);
    cpool__unlock(p);
}

int cpool_get_stats(cpool *p, cpool_stats *out)
{
    if (p == NULL || out == NULL || out->struct_size < sizeof(cpool_stats))
        return CPOOL_EINVAL;
    cpool__lock(p);
    cpool__check_fork_relock(p);
    cpool__stats_locked(p, out);
    cpool__unlock(p);
    return 0;
}
