/* uv_echo.c -- an echo service on one libuv loop thread: every line a
 * client sends is answered by PostgreSQL (SELECT $1::text) through a pool,
 * checked out asynchronously (cpool_checkout_async with cpool_uv.h) and
 * queried without blocking (libpq's non-blocking calls on a uv_poll_t).
 * Clients on other threads keep IN_FLIGHT requests open. Every callback of
 * the service, the checkout callbacks included, is timed, and the longest
 * is printed with the longest iteration (its wall time less libuv's idle
 * time in the kernel: all the callbacks of one poll).
 *
 * Usage: uv_echo POSTGRES_URI [REQUESTS [IN_FLIGHT [POOL_SIZE]]] */
#include "echo_common.h"

#include <cpool/cpool_uv.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct app {
    uv_loop_t *loop;
    uv_pipe_t server;  /* a Unix socket (echo_common.h says why) */
    char path[108];
    uv_async_t done;         /* the clients are through: close up */
    uv_check_t after_poll;   /* measures each iteration's work */
    echo_meter iteration;
    int64_t last_check, last_cpu;
    uint64_t last_idle;
    long last_switches;
    cpool *pool;
    cpool_async *q;
    cpool_uv watcher;
    echo_meter meter;
    int served, failed, target, open_clients;
} app;

typedef struct client {
    uv_pipe_t tcp;
    uv_poll_t pg_poll;
    uv_write_t wr;
    app *a;
    char in[1024];
    size_t in_len;
    char line[256], out[300], wbuf[320];
    cpool_conn *lease;
    bool busy, broken, closing;
} client;

static void next_request(client *cl);
static void lease_arrived(client *cl, cpool_conn *conn, int rc);

static void on_closed(uv_handle_t *h)
{
    client *cl = h->data;
    cl->a->open_clients--;
    free(cl);
}

/* What each loop iteration cost: the wall time from one check phase to the
 * next, less the time libuv spent waiting in the kernel for events
 * (uv_metrics_idle_time), is the time its callbacks -- all of them, the
 * adapter's included -- kept the loop. */
static void on_after_poll(uv_check_t *h)
{
    app *a = h->data;
    int64_t now = echo_now_ns(), cpu = echo_thread_cpu_ns();
    uint64_t idle = uv_metrics_idle_time(a->loop);
    long sw = echo_switches();
    if (a->last_check != 0) {
        int64_t idle_ns = (int64_t)(idle - a->last_idle);
        /* A wait in the kernel for events is idle time, and a switch; the
         * iteration counts as quiet when no other switch happened. */
        echo_meter_add(&a->iteration, (now - a->last_check) - idle_ns, cpu - a->last_cpu,
                       sw - a->last_switches <= (idle_ns > 0 ? 1 : 0));
    }
    a->last_check = now;
    a->last_cpu = cpu;
    a->last_idle = idle;
    a->last_switches = sw;
}

static void on_done(uv_async_t *h)
{
    app *a = h->data;
    uv_close((uv_handle_t *)&a->server, NULL);
    cpool_uv_stop(&a->watcher, NULL);
    uv_close((uv_handle_t *)&a->after_poll, NULL);
    uv_close((uv_handle_t *)&a->done, NULL);
}

static void on_written(uv_write_t *w, int status)
{
    client *cl = w->data;
    echo_meter_enter(&cl->a->meter);
    cl->busy = false;
    if (status == 0)
        next_request(cl);
    echo_meter_exit(&cl->a->meter);
}

static void reply(client *cl, const char *text)
{
    snprintf(cl->wbuf, sizeof cl->wbuf, "%s\n", text); /* text may be cl->out */
    uv_buf_t b = uv_buf_init(cl->wbuf, (unsigned)strlen(cl->wbuf));
    cl->wr.data = cl;
    if (uv_write(&cl->wr, (uv_stream_t *)&cl->tcp, &b, 1, on_written) != 0)
        cl->busy = false;
}

/* The PostgreSQL socket's watcher is closed before the lease goes back, so
 * no handle watches a descriptor the pool may hand to someone else. */
static void on_pg_poll_closed(uv_handle_t *h)
{
    client *cl = h->data;
    echo_meter_enter(&cl->a->meter);
    cpool_checkin(cl->a->pool, cl->lease, cl->broken ? CPOOL_CHECKIN_BROKEN : 0, NULL);
    cl->lease = NULL;
    if (cl->broken) {
        cl->a->failed++;
        reply(cl, "ERROR");
    } else {
        cl->a->served++;
        reply(cl, cl->out);
    }
    echo_meter_exit(&cl->a->meter);
}

static void on_pg(uv_poll_t *p, int status, int events)
{
    client *cl = p->data;
    echo_meter_enter(&cl->a->meter);
    PGconn *pg = cpool_pg_conn(cl->lease);
    int rc = status < 0 ? -1 : 0;
    bool flush = false;
    if (rc == 0 && (events & UV_WRITABLE))
        rc = echo_query_flush(pg, &flush);
    if (rc == 0 && !flush)
        uv_poll_start(p, UV_READABLE, on_pg);
    if (rc == 0 && (events & UV_READABLE))
        rc = echo_query_read(pg, cl->out, sizeof cl->out);
    if (rc != 0) { /* answered (1) or failed (-1): done with the socket */
        cl->broken = rc < 0;
        uv_poll_stop(p);
        uv_close((uv_handle_t *)p, on_pg_poll_closed);
    }
    echo_meter_exit(&cl->a->meter);
}

static void on_lease(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    client *cl = arg;
    (void)err;
    echo_meter_enter(&cl->a->meter);
    lease_arrived(cl, conn, rc);
    echo_meter_exit(&cl->a->meter);
}

static void lease_arrived(client *cl, cpool_conn *conn, int rc)
{
    if (rc != 0) {
        cl->a->failed++;
        reply(cl, "ERROR");
        return;
    }
    cl->lease = conn;
    cl->broken = false;
    PGconn *pg = cpool_pg_conn(conn);
    char why[256];
    bool flush = false;
    if (echo_query_send(pg, cl->line, &flush, why, sizeof why) != 0 ||
        uv_poll_init(cl->a->loop, &cl->pg_poll, PQsocket(pg)) != 0) {
        cpool_checkin(cl->a->pool, conn, CPOOL_CHECKIN_BROKEN, NULL);
        cl->lease = NULL;
        cl->a->failed++;
        reply(cl, "ERROR");
        return;
    }
    cl->pg_poll.data = cl;
    uv_poll_start(&cl->pg_poll, UV_READABLE | (flush ? UV_WRITABLE : 0), on_pg);
}

/* Takes the next complete line, if any, and starts its request. */
static void next_request(client *cl)
{
    if (cl->busy || cl->closing)
        return;
    char *nl = memchr(cl->in, '\n', cl->in_len);
    if (nl == NULL)
        return;
    size_t n = (size_t)(nl - cl->in);
    snprintf(cl->line, sizeof cl->line, "%.*s", (int)n, cl->in);
    memmove(cl->in, nl + 1, cl->in_len - n - 1);
    cl->in_len -= n + 1;
    cl->busy = true;
    cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 5000};
    if (cpool_checkout_async(cl->a->pool, cl->a->q, &o, on_lease, cl, NULL) != 0) {
        cl->a->failed++;
        reply(cl, "ERROR");
    }
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    client *cl = h->data;
    (void)hint;
    *b = uv_buf_init(cl->in + cl->in_len, (unsigned)(sizeof cl->in - cl->in_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client *cl = s->data;
    (void)b;
    echo_meter_enter(&cl->a->meter);
    if (n < 0 || cl->in_len + (size_t)n >= sizeof cl->in) {
        cl->closing = true;
        if (cl->lease == NULL && !cl->busy)
            uv_close((uv_handle_t *)&cl->tcp, on_closed);
        /* else the request in flight ends first; the client waits for it */
    } else {
        cl->in_len += (size_t)n;
        next_request(cl);
    }
    echo_meter_exit(&cl->a->meter);
}

static void on_connection(uv_stream_t *server, int status)
{
    app *a = server->data;
    echo_meter_enter(&a->meter);
    client *cl = calloc(1, sizeof *cl);
    if (status == 0 && cl != NULL && uv_pipe_init(a->loop, &cl->tcp, 0) == 0) {
        cl->a = a;
        cl->tcp.data = cl;
        a->open_clients++;
        if (uv_accept(server, (uv_stream_t *)&cl->tcp) == 0)
            uv_read_start((uv_stream_t *)&cl->tcp, alloc_cb, on_read);
        else
            uv_close((uv_handle_t *)&cl->tcp, on_closed);
    } else {
        free(cl);
    }
    echo_meter_exit(&a->meter);
}

typedef struct load {
    app *a;
    const echo_config *c;
    int failures;
    double elapsed;
} load;

static void *load_main(void *arg)
{
    load *l = arg;
    l->failures = echo_clients_run(l->a->path, l->c->in_flight, l->c->requests, &l->elapsed);
    uv_async_send(&l->a->done); /* the one libuv call that is thread-safe */
    return NULL;
}

int main(int argc, char **argv)
{
    echo_config c;
    if (echo_parse(argc, argv, &c) != 0)
        return 2;
    app a;
    memset(&a, 0, sizeof a);
    a.loop = uv_default_loop();
    uv_loop_configure(a.loop, UV_METRICS_IDLE_TIME); /* the iteration measure needs it */
    a.target = c.requests;
    if (echo_open_pool(&c, &a.pool) != 0 || cpool_async_new(&a.q) != 0 ||
        cpool_uv_start(a.loop, &a.watcher, a.q) != 0)
        return 1;
    uv_pipe_init(a.loop, &a.server, 0);
    a.server.data = &a;
    if (echo_socket_path(a.path, sizeof a.path) == 0)
        unlink(a.path); /* a leftover of an earlier run with this pid */
    if (a.path[0] == '\0' || uv_pipe_bind(&a.server, a.path) != 0 ||
        uv_listen((uv_stream_t *)&a.server, 128, on_connection) != 0) {
        fprintf(stderr, "uv_echo: cannot listen\n");
        return 1;
    }
    uv_async_init(a.loop, &a.done, on_done);
    a.done.data = &a;
    uv_check_init(a.loop, &a.after_poll);
    a.after_poll.data = &a;
    uv_check_start(&a.after_poll, on_after_poll);
    a.meter.limit_ns = (int64_t)(c.max_block_ms * 1e6);
    a.iteration.limit_ns = (int64_t)(c.max_block_ms * 1e6);
    load l = {.a = &a, .c = &c};
    pthread_t th;
    if (pthread_create(&th, NULL, load_main, &l) != 0)
        return 1;
    uv_run(a.loop, UV_RUN_DEFAULT); /* ends when the last client has gone */
    pthread_join(th, NULL);
    printf("longest loop iteration (all the callbacks of one poll): %.3f ms of the loop "
           "thread's CPU, %.3f ms wall less the kernel's idle wait\n",
           (double)a.iteration.max_cpu_ns / 1e6, (double)a.iteration.max_wall_ns / 1e6);
    int rc = echo_report("libuv", "loop callback", &c, a.served, a.failed + l.failures,
                         l.elapsed, &a.meter);
    uv_loop_close(a.loop);
    unlink(a.path);
    cpool_destroy(a.pool);
    cpool_async_free(a.q);
    return rc;
}
