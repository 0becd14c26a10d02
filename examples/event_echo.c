/* event_echo.c -- uv_echo.c's service on one libevent loop thread: every
 * line a client sends is answered by PostgreSQL (SELECT $1::text) through a
 * pool, checked out asynchronously (cpool_checkout_async with
 * cpool_event.h) and queried without blocking (libpq's non-blocking calls on
 * a one-shot event). Every callback of the service is timed (libevent 2.1
 * has no hook around a whole iteration), and the longest is printed.
 *
 * Usage: event_echo POSTGRES_URI [REQUESTS [IN_FLIGHT [POOL_SIZE]]] */
#include "echo_common.h"

#include <cpool/cpool_event.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct app {
    struct event_base *base;
    struct event *listener, *watcher, *done;
    int listen_fd, done_fd;
    cpool *pool;
    cpool_async *q;
    echo_meter meter;
    int served, failed;
    char path[108];
} app;

typedef struct client {
    app *a;
    int fd;
    struct event *readable, *pg_ev;
    char in[1024];
    size_t in_len;
    char line[256], out[300];
    cpool_conn *lease;
    bool busy;
} client;

static void next_request(client *cl);

static void close_client(client *cl)
{
    event_free(cl->readable);
    close(cl->fd);
    free(cl);
}

static void reply(client *cl, const char *text)
{
    char buf[320];
    int n = snprintf(buf, sizeof buf, "%s\n", text);
    /* A short answer on a socket the client reads: it fits the buffer. */
    if (send(cl->fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
        cl->a->failed++;
    cl->busy = false;
    next_request(cl);
}

static void done_with_pg(client *cl, bool broken)
{
    event_free(cl->pg_ev);
    cl->pg_ev = NULL;
    cpool_checkin(cl->a->pool, cl->lease, broken ? CPOOL_CHECKIN_BROKEN : 0, NULL);
    cl->lease = NULL;
    if (broken) {
        cl->a->failed++;
        reply(cl, "ERROR");
    } else {
        cl->a->served++;
        reply(cl, cl->out);
    }
}

static void on_pg(evutil_socket_t fd, short what, void *arg)
{
    client *cl = arg;
    (void)fd;
    echo_meter_enter(&cl->a->meter);
    PGconn *pg = cpool_pg_conn(cl->lease);
    bool flush = false;
    int rc = 0;
    if (what & EV_WRITE)
        rc = echo_query_flush(pg, &flush);
    if (rc == 0 && (what & EV_READ))
        rc = echo_query_read(pg, cl->out, sizeof cl->out);
    if (rc != 0) {
        done_with_pg(cl, rc < 0);
    } else { /* more to read (or write): wait again */
        event_del(cl->pg_ev);
        event_assign(cl->pg_ev, cl->a->base, PQsocket(pg), EV_READ | (flush ? EV_WRITE : 0),
                     on_pg, cl);
        event_add(cl->pg_ev, NULL);
    }
    echo_meter_exit(&cl->a->meter);
}

static void on_lease(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    client *cl = arg;
    (void)err;
    echo_meter_enter(&cl->a->meter);
    if (rc != 0) {
        cl->a->failed++;
        reply(cl, "ERROR");
        echo_meter_exit(&cl->a->meter);
        return;
    }
    cl->lease = conn;
    PGconn *pg = cpool_pg_conn(conn);
    char why[256];
    bool flush = false;
    if (echo_query_send(pg, cl->line, &flush, why, sizeof why) != 0 ||
        (cl->pg_ev = event_new(cl->a->base, PQsocket(pg), EV_READ | (flush ? EV_WRITE : 0),
                               on_pg, cl)) == NULL ||
        event_add(cl->pg_ev, NULL) != 0) {
        if (cl->pg_ev != NULL)
            done_with_pg(cl, true);
        else {
            cpool_checkin(cl->a->pool, conn, CPOOL_CHECKIN_BROKEN, NULL);
            cl->lease = NULL;
            cl->a->failed++;
            reply(cl, "ERROR");
        }
    }
    echo_meter_exit(&cl->a->meter);
}

static void next_request(client *cl)
{
    if (cl->busy)
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

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    client *cl = arg;
    (void)what;
    echo_meter_enter(&cl->a->meter);
    app *a = cl->a;
    ssize_t n = recv(fd, cl->in + cl->in_len, sizeof cl->in - cl->in_len, 0);
    if (n > 0) {
        cl->in_len += (size_t)n;
        next_request(cl);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        if (cl->lease == NULL && !cl->busy)
            close_client(cl); /* else the client waits for its answer first */
        else
            event_del(cl->readable);
    }
    echo_meter_exit(&a->meter);
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    app *a = arg;
    (void)what;
    echo_meter_enter(&a->meter);
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    client *cl = c >= 0 ? calloc(1, sizeof *cl) : NULL;
    if (cl != NULL) {
        cl->a = a;
        cl->fd = c;
        cl->readable = event_new(a->base, c, EV_READ | EV_PERSIST, on_readable, cl);
        event_add(cl->readable, NULL);
    } else if (c >= 0) {
        close(c);
    }
    echo_meter_exit(&a->meter);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    app *a = arg;
    (void)fd;
    (void)what;
    event_base_loopexit(a->base, NULL);
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
    uint64_t one = 1;
    if (write(l->a->done_fd, &one, sizeof one) != sizeof one)
        perror("event_echo: done");
    return NULL;
}

int main(int argc, char **argv)
{
    echo_config c;
    if (echo_parse(argc, argv, &c) != 0)
        return 2;
    app a;
    memset(&a, 0, sizeof a);
    a.base = event_base_new();
    if (a.base == NULL || echo_open_pool(&c, &a.pool) != 0 || cpool_async_new(&a.q) != 0 ||
        (a.watcher = cpool_event_start(a.base, a.q)) == NULL)
        return 1;
    a.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (echo_socket_path(a.path, sizeof a.path) != 0 || a.done_fd < 0 ||
        (a.listen_fd = echo_listen(a.path)) < 0) {
        fprintf(stderr, "event_echo: cannot listen\n");
        return 1;
    }
    a.listener = event_new(a.base, a.listen_fd, EV_READ | EV_PERSIST, on_accept, &a);
    a.done = event_new(a.base, a.done_fd, EV_READ, on_done, &a);
    event_add(a.listener, NULL);
    event_add(a.done, NULL);
    a.meter.limit_ns = (int64_t)(c.max_block_ms * 1e6);
    load l = {.a = &a, .c = &c};
    pthread_t th;
    if (pthread_create(&th, NULL, load_main, &l) != 0)
        return 1;
    event_base_dispatch(a.base); /* until the clients are through */
    pthread_join(th, NULL);
    int rc = echo_report("libevent", "loop callback", &c, a.served, a.failed + l.failures,
                         l.elapsed, &a.meter);
    event_free(a.listener);
    event_free(a.done);
    cpool_event_stop(a.watcher);
    close(a.listen_fd);
    unlink(a.path);
    close(a.done_fd);
    event_base_free(a.base);
    cpool_destroy(a.pool);
    cpool_async_free(a.q);
    return rc;
}
