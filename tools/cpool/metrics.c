/* metrics.c -- `cpool metrics TARGET --listen HOST:PORT`: a pool whose
 * statistics are served at GET /metrics in the Prometheus text format
 * (cpool_stats_prometheus), optionally with a light workload, until SIGINT
 * or SIGTERM.
 *
 * Signals: both are blocked in every thread (the mask is set before any
 * thread starts, and threads inherit it) and the main thread takes them
 * with sigwait(), so shutting down runs as ordinary code: stop the HTTP
 * daemon, stop the workload, close the pool.
 */
#include "cli.h"

#include <cpool/cpool_cluster.h>

#ifdef CPOOL_CLI_HAVE_MHD

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CMD "metrics"
#define MAX_LOAD 256

static const char metrics_usage[] =
    "usage: cpool metrics TARGET --listen HOST:PORT [--load THREADS] [options]\n"
    "\n"
    "Creates a pool for TARGET and serves its statistics at http://HOST:PORT/metrics\n"
    "(a multi-host TARGET: a cluster, with every endpoint's series and its own,\n"
    "docs/cluster.md)\n"
    "in the Prometheus text format (version 0.0.4); other paths answer 404. Runs\n"
    "until SIGINT or SIGTERM, then stops cleanly and exits 0. PORT 0 picks a free\n"
    "port; the address actually served is printed on stdout.\n"
    "\n"
    "  -l, --listen HOST:PORT   address to serve on (IPv6: [::1]:9187)\n"
    "      --load THREADS       also run a light workload: THREADS threads that\n"
    "                           check out, run the statement, hold, check in and\n"
    "                           pause (default 0 = no workload, up to 256)\n"
    "  -s, --statement TEXT     the workload's statement (default SELECT 1, or\n"
    "                           PING for Redis)\n"
    "      --hold-ms X          keep each lease X ms longer (default 0)\n"
    "      --pause-ms X         pause between a thread's operations (default 10)\n"
    "      --pool-name NAME     the pool=\"...\" label (default: the pool's address)\n"
    "      --labels TEXT        extra labels for every sample, e.g. 'env=\"test\"'\n"
    "  -o, --option NAME=VALUE  a pool option (repeatable); see cpool options\n"
    "  -h, --help               this help\n"
    "\n";

typedef struct server {
    cpool *pool;              /* one pool, or */
    cpool_cluster *cluster;   /* a cluster for a multi-host target */
    const char *statement;
    const char *pool_name;
    const char *labels;
    double hold_ms, pause_ms;
    atomic_bool stop;
    _Atomic uint64_t scrapes;
} server;

/* ------------------------------------------------------------ HTTP */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             size_t len, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    char *body = strdup(text);
    if (body == NULL)
        return MHD_NO;
    return reply(conn, status, body, strlen(body), "text/plain; charset=utf-8");
}

/* Readiness: 200 while the pool can serve a checkout now (ready, the
 * circuit closed), else 503 with the reason, for a load balancer or an
 * orchestrator's readiness probe. */
static enum MHD_Result reply_ready(struct MHD_Connection *conn, cpool *pool)
{
    cpool_stats st = {.struct_size = sizeof st};
    if (cpool_get_stats(pool, &st) != 0)
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready: no statistics\n");
    static const char *const states[] = {"paused", "ready", "closed", "shutting down",
                                         "suspended"};
    const char *state = (unsigned)st.counts.state < 5 ? states[st.counts.state] : "unknown";
    char text[512];
    if (st.counts.state != CPOOL_STATE_READY) {
        snprintf(text, sizeof text, "not ready: the pool is %s\n", state);
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    if (st.breaker_open) {
        snprintf(text, sizeof text,
                 "not ready: the backend is unavailable (%u establishment failures in a row): "
                 "%.300s\n",
                 st.connect_fail_streak, st.last_connect_error.message);
        cli_scrub(text, sizeof text);
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    snprintf(text, sizeof text, "ready: %u in use, %u available, %u waiting\n",
             st.counts.in_use, st.counts.available, st.counts.waiting);
    return reply_text(conn, MHD_HTTP_OK, text);
}

/* A cluster is ready when a checkout of its default kind could be served
 * now; else 503 with why, endpoint by endpoint. */
static enum MHD_Result reply_ready_cluster(struct MHD_Connection *conn, cpool_cluster *c)
{
    cpool_error e = {0};
    char text[512];
    if (cpool_cluster_wait(c, cpool_cluster_want(c), 0, &e) != 0) {
        snprintf(text, sizeof text, "not ready: %.400s\n", e.message);
        cli_scrub(text, sizeof text);
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    size_t up = 0, n = cpool_cluster_size(c);
    for (size_t i = 0; i < n; i++) {
        cpool_endpoint_info in;
        if (cpool_cluster_endpoint_info(c, i, &in) == 0 && in.state == CPOOL_ENDPOINT_UP)
            up++;
    }
    snprintf(text, sizeof text, "ready: %zu of %zu endpoints up, %s served\n", up, n,
             cpool_want_name(cpool_cluster_want(c)));
    return reply_text(conn, MHD_HTTP_OK, text);
}

static enum MHD_Result reply_cluster(struct MHD_Connection *conn, server *s)
{
    size_t need = cpool_cluster_prometheus(s->cluster, s->pool_name, NULL, 0);
    char *body = NULL;
    size_t got = 0;
    for (int attempt = 0; attempt < 3; attempt++) { /* the figures move meanwhile */
        free(body);
        size_t room = need + need / 8 + 256;
        body = malloc(room);
        if (body == NULL)
            return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
        got = cpool_cluster_prometheus(s->cluster, s->pool_name, body, room);
        if (got < room)
            break;
        need = got;
    }
    atomic_fetch_add(&s->scrapes, 1);
    return reply(conn, MHD_HTTP_OK, body, got, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **req_cls)
{
    (void)version;
    (void)upload;
    server *s = cls;
    /* A request body (there should be none) is read and dropped. */
    if (*upload_size != 0) {
        *upload_size = 0;
        return MHD_YES;
    }
    (void)req_cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/health") == 0)
        return reply_text(conn, MHD_HTTP_OK, "ok\n"); /* liveness: the process answers */
    if (strcmp(url, "/ready") == 0)
        return s->cluster != NULL ? reply_ready_cluster(conn, s->cluster)
                                  : reply_ready(conn, s->pool);
    if (s->cluster != NULL && strcmp(url, "/metrics") == 0)
        return reply_cluster(conn, s);
    if (strcmp(url, "/metrics") != 0)
        return reply_text(conn, MHD_HTTP_NOT_FOUND,
                          "not found; served: /metrics, /health, /ready\n");

    cpool_stats st = {.struct_size = sizeof st};
    if (cpool_get_stats(s->pool, &st) != 0)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot read the statistics\n");
    /* The pool's series and its tenants' (none without tenants), as one
     * exposition; the figures move between the sizing call and the real
     * one, so there is room to spare and a retry when it was not enough. */
    cpool *const pools[] = {s->pool};
    const char *const names[] = {s->pool_name};
    size_t need = cpool_prometheus_pools(pools, names, 1, s->labels, NULL, 0);
    char *body = NULL;
    size_t got = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        free(body);
        size_t room = need + need / 8 + 256;
        body = malloc(room);
        if (body == NULL)
            return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
        got = cpool_prometheus_pools(pools, names, 1, s->labels, body, room);
        if (got < room)
            break;
        need = got;
    }
    need = got;
    atomic_fetch_add(&s->scrapes, 1);
    return reply(conn, MHD_HTTP_OK, body, got < need ? got : need,
                 "text/plain; version=0.0.4; charset=utf-8");
}

/* ------------------------------------------------------------ workload */

static void *load_main(void *arg)
{
    server *s = arg;
    while (!atomic_load(&s->stop)) {
        cpool_conn *c = NULL;
        cpool_error e = {0};
        int64_t t0 = cli_now_ns();
        cpool_cluster_checkout_opts co = {.struct_size = sizeof co,
                                          .want = s->cluster != NULL
                                                      ? cpool_cluster_want(s->cluster)
                                                      : CPOOL_WANT_ANY,
                                          .timeout_ms = 1000};
        if (s->cluster != NULL ? cpool_cluster_checkout(s->cluster, &co, &c, NULL, &e) == 0
                               : cpool_checkout(s->pool, 1000, &c, &e) == 0) {
            int rc = cpool_conn_execute(c, s->statement, &e);
            cli_sleep_ns((int64_t)(s->hold_ms * 1e6));
            unsigned flags = rc != 0 && (e.kind == CPOOL_FAIL_NETWORK ||
                                         e.kind == CPOOL_FAIL_TIMEOUT)
                                 ? CPOOL_CHECKIN_BROKEN
                                 : 0;
            if (s->cluster != NULL)
                (void)cpool_cluster_checkin(s->cluster, c, flags, NULL);
            else
                (void)cpool_checkin(s->pool, c, flags, NULL);
        } else if (cli_now_ns() - t0 < 1000000) {
            /* Failing at once (breaker open): do not spin. */
            cli_sleep_ns(100000000);
        }
        cli_sleep_ns((int64_t)(s->pause_ms * 1e6));
    }
    return NULL;
}

/* ------------------------------------------------------------ command */

/* "127.0.0.1:9187", "[::1]:0", "localhost:9187" into an address. */
static int parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256], port[16];
    const char *colon;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        snprintf(host, sizeof host, "%.*s", (int)(close - spec - 1), spec + 1);
        colon = close + 1;
    } else {
        colon = strrchr(spec, ':');
        if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof host)
            return -1;
        snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
    }
    int64_t p;
    if (!cli_parse_i64(colon + 1, 0, 65535, &p))
        return -1;
    snprintf(port, sizeof port, "%d", (int)p);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return -2;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int cmd_metrics(int argc, char **argv)
{
    enum { O_LOAD = 256, O_HOLD, O_PAUSE, O_NAME, O_LABELS };
    static const struct option longs[] = {
        {"listen", required_argument, NULL, 'l'},
        {"load", required_argument, NULL, O_LOAD},
        {"statement", required_argument, NULL, 's'},
        {"hold-ms", required_argument, NULL, O_HOLD},
        {"pause-ms", required_argument, NULL, O_PAUSE},
        {"pool-name", required_argument, NULL, O_NAME},
        {"labels", required_argument, NULL, O_LABELS},
        {"option", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    server s;
    memset(&s, 0, sizeof s);
    s.pause_ms = 10;
    const char *listen_spec = NULL;
    int64_t load = 0;
    cpool_options opts;
    cpool_options_init(&opts, sizeof opts);
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":l:s:o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'l': listen_spec = optarg; break;
        case O_LOAD:
            if (!cli_parse_i64(optarg, 0, MAX_LOAD, &load))
                return cli_usage_error(CMD, "invalid --load \"%s\": expected a number 0..%d",
                                       optarg, MAX_LOAD);
            break;
        case 's': s.statement = optarg; break;
        case O_HOLD:
            if (!cli_parse_double(optarg, 0, 3600000, &s.hold_ms))
                return cli_usage_error(CMD, "invalid --hold-ms \"%s\": expected milliseconds, "
                                            "0..3600000",
                                       optarg);
            break;
        case O_PAUSE:
            if (!cli_parse_double(optarg, 0, 3600000, &s.pause_ms))
                return cli_usage_error(CMD, "invalid --pause-ms \"%s\": expected "
                                            "milliseconds, 0..3600000",
                                       optarg);
            break;
        case O_NAME: s.pool_name = optarg; break;
        case O_LABELS: s.labels = optarg; break;
        case 'o':
            if (cli_apply_option(CMD, &opts, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h':
            fputs(metrics_usage, stdout);
            fputs(cli_exit_codes_help, stdout);
            return CLI_EXIT_OK;
        default: return cli_getopt_error(CMD, argv, optind, optopt, c);
        }
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "a TARGET is required (see cpool metrics --help)");
    if (argc - optind > 1)
        return cli_usage_error(CMD, "expected one TARGET, got \"%s\" too", argv[optind + 1]);
    if (listen_spec == NULL)
        return cli_usage_error(CMD, "--listen HOST:PORT is required, e.g. --listen "
                                    "127.0.0.1:9187");
    struct sockaddr_storage addr;
    socklen_t addrlen = 0;
    int pr = parse_listen(listen_spec, &addr, &addrlen);
    if (pr == -1)
        return cli_usage_error(CMD, "invalid --listen \"%s\": expected HOST:PORT with PORT "
                                    "0..65535, e.g. 127.0.0.1:9187 or [::1]:9187",
                               listen_spec);
    if (pr == -2)
        return cli_usage_error(CMD, "invalid --listen \"%s\": the host does not resolve",
                               listen_spec);
    const char *target = argv[optind];
    cli_secrets_from(target);
    const cpool_connector *cx = cli_connector(CMD, target);
    if (cx == NULL)
        return CLI_EXIT_USAGE;
    if (s.statement == NULL)
        s.statement = strcmp(cx->name, "redis") == 0 ? "PING" : "SELECT 1";

    /* Before any thread exists, so that every thread inherits the mask. */
    sigset_t stop_sigs;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL);

    int code = CLI_EXIT_OK;
    pthread_t threads[MAX_LOAD];
    int nthreads = 0;
    struct MHD_Daemon *d = NULL;
    char red[512];
    cli_redact(target, red, sizeof red);
    opts.target = target;
    opts.connector = cx;
    cpool_error err = {0};
    int rc;
    if (cli_is_multi_host(target)) {
        cpool_cluster_options co;
        cpool_cluster_options_init(&co, sizeof co);
        co.pool = &opts;
        rc = cpool_cluster_open(target, &co, &s.cluster, &err);
    } else {
        rc = cpool_create(&opts, &s.pool, &err);
        if (rc == 0)
            rc = cpool_ready(s.pool, &err);
    }
    if (rc != 0) {
        cli_scrub(err.message, sizeof err.message);
        cli_error(CMD, "cannot create a pool for %s: %s", red, err.message);
        code = rc == CPOOL_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_CONNECT;
        goto out;
    }
    char address[256];
    if (s.pool_name == NULL) {
        snprintf(address, sizeof address, "%s",
                 s.cluster != NULL ? "cluster" : cpool_address(s.pool));
        cli_scrub(address, sizeof address);
        s.pool_name = address;
    }

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    uint16_t port_arg = ntohs(addr.ss_family == AF_INET6
                                  ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                  : ((struct sockaddr_in *)&addr)->sin_port);
    d = MHD_start_daemon(flags, port_arg, NULL, NULL, handle, &s, MHD_OPTION_SOCK_ADDR,
                         (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_TIMEOUT,
                         (unsigned)30, MHD_OPTION_END);
    if (d == NULL) {
        cli_error(CMD, "cannot listen on %s (address in use, or not an address of this "
                       "host?)",
                  listen_spec);
        code = CLI_EXIT_ERRORS;
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info != NULL ? info->port : port_arg;
    char host[INET6_ADDRSTRLEN] = "?";
    if (addr.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&addr)->sin6_addr, host, sizeof host);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&addr)->sin_addr, host, sizeof host);

    for (int i = 0; i < load; i++) {
        if (pthread_create(&threads[i], NULL, load_main, &s) != 0) {
            cli_error(CMD, "cannot start workload thread %d", i + 1);
            break;
        }
        nthreads++;
    }

    printf("cpool metrics: serving http://%s%s%s:%u/metrics for %s (pool \"%s\", %d load "
           "thread%s); SIGINT or SIGTERM stops\n",
           addr.ss_family == AF_INET6 ? "[" : "", host, addr.ss_family == AF_INET6 ? "]" : "",
           port, red, s.pool_name, nthreads, nthreads == 1 ? "" : "s");
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop_sigs, &sig) != 0) {
    }
    fprintf(stderr, "cpool: metrics: %s received after %llu scrape%s; stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)atomic_load(&s.scrapes),
            atomic_load(&s.scrapes) == 1 ? "" : "s");

out:
    if (d != NULL)
        MHD_stop_daemon(d);
    atomic_store(&s.stop, true);
    for (int i = 0; i < nthreads; i++)
        pthread_join(threads[i], NULL);
    cpool_destroy(s.pool);
    cpool_cluster_close(s.cluster);
    /* The signals stay blocked: a second one arriving now must not turn a
     * clean stop into a kill. */
    return code;
}

#else /* !CPOOL_CLI_HAVE_MHD */

#include <string.h>

/* Built without libmicrohttpd: the command exists, says why it cannot run
 * and how to get it, and fails like any other unusable command line. */
int cmd_metrics(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs("usage: cpool metrics TARGET --listen HOST:PORT [options]\n\n"
                  "This cpool was built without libmicrohttpd, so it cannot serve\n"
                  "/metrics. Install libmicrohttpd-dev and build again.\n",
                  stdout);
            return 0;
        }
    return cli_usage_error("metrics", "this cpool was built without libmicrohttpd; install "
                                      "libmicrohttpd-dev and build again");
}

#endif
