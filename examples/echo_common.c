/* echo_common.c -- see echo_common.h. */
#include "echo_common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int64_t echo_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int echo_parse(int argc, char **argv, echo_config *c)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: %s POSTGRES_URI [REQUESTS [IN_FLIGHT [POOL_SIZE [MAX_BLOCK_MS]]]]\n",
                argv[0]);
        return -1;
    }
    c->uri = argv[1];
    c->requests = argc > 2 ? atoi(argv[2]) : 10000;
    c->in_flight = argc > 3 ? atoi(argv[3]) : 64;
    c->pool_size = argc > 4 ? atoi(argv[4]) : 4;
    c->max_block_ms = argc > 5 ? atof(argv[5]) : 1.0;
    if (c->requests < 1 || c->in_flight < 1 || c->in_flight > 1024 || c->pool_size < 1 ||
        !(c->max_block_ms > 0)) {
        fprintf(stderr, "%s: REQUESTS >= 1, IN_FLIGHT 1..1024, POOL_SIZE >= 1, "
                        "MAX_BLOCK_MS > 0\n",
                argv[0]);
        return -1;
    }
    return 0;
}

int echo_open_pool(const echo_config *c, cpool **out)
{
    char target[1024];
    snprintf(target, sizeof target, "%s%cmaxPoolSize=%d&waitQueueTimeoutMS=10000", c->uri,
             strchr(c->uri, '?') != NULL ? '&' : '?', c->pool_size);
    cpool_error err;
    if (cpool_open(target, NULL, out, &err) != 0) {
        fprintf(stderr, "pool: %s\n", err.message);
        return -1;
    }
    return 0;
}

int echo_query_send(PGconn *pg, const char *line, bool *flush, char *why, size_t size)
{
    const char *params[] = {line};
    if (PQsetnonblocking(pg, 1) != 0 ||
        !PQsendQueryParams(pg, "SELECT $1::text", 1, NULL, params, NULL, NULL, 0)) {
        snprintf(why, size, "%s", PQerrorMessage(pg));
        return -1;
    }
    return echo_query_flush(pg, flush);
}

int echo_query_flush(PGconn *pg, bool *flush)
{
    int f = PQflush(pg);
    *flush = f == 1;
    return f < 0 ? -1 : 0;
}

int echo_query_read(PGconn *pg, char *out, size_t size)
{
    if (!PQconsumeInput(pg))
        return -1;
    if (PQisBusy(pg))
        return 0;
    int rc = -1;
    PGresult *r;
    while ((r = PQgetResult(pg)) != NULL) { /* to the end: the session is idle again */
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            snprintf(out, size, "%s", PQgetvalue(r, 0, 0));
            rc = 1;
        }
        PQclear(r);
    }
    return rc;
}

int64_t echo_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

long echo_switches(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nvcsw + ru.ru_nivcsw : 0;
}

void echo_meter_add(echo_meter *m, int64_t wall_ns, int64_t cpu_ns, bool quiet)
{
    m->stretches++;
    if (wall_ns > m->max_wall_ns)
        m->max_wall_ns = wall_ns;
    if (cpu_ns > m->max_cpu_ns) {
        m->max_cpu_ns = cpu_ns;
        m->max_where = m->where;
    }
    if (m->limit_ns > 0 && cpu_ns >= m->limit_ns)
        m->cpu_over_limit++;
    if (quiet && wall_ns > m->max_quiet_ns)
        m->max_quiet_ns = wall_ns;
}

void echo_meter_enter_at(echo_meter *m, const char *where)
{
    m->where = where;
    m->t0 = echo_now_ns();
    m->cpu0 = echo_thread_cpu_ns();
    m->switches0 = echo_switches();
}

void echo_meter_exit(echo_meter *m)
{
    echo_meter_add(m, echo_now_ns() - m->t0, echo_thread_cpu_ns() - m->cpu0,
                   echo_switches() == m->switches0);
}

int echo_socket_path(char *path, size_t size)
{
    int n = snprintf(path, size, "/tmp/cpool-echo-%d.sock", (int)getpid());
    return n > 0 && (size_t)n < size && (size_t)n < sizeof(((struct sockaddr_un *)0)->sun_path)
               ? 0
               : -1;
}

static void unix_address(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
}

int echo_listen(const char *path)
{
    struct sockaddr_un sa;
    unix_address(path, &sa);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

typedef struct client_arg {
    const char *path;
    int count, id;
    int failures;
} client_arg;

static void *client_main(void *arg)
{
    client_arg *a = arg;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    unix_address(a->path, &sa);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        a->failures = a->count;
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char line[64], got[128];
    for (int i = 0; i < a->count; i++) {
        int n = snprintf(line, sizeof line, "client %d request %d\n", a->id, i);
        if (write(fd, line, (size_t)n) != n) {
            a->failures += a->count - i;
            break;
        }
        size_t len = 0;
        while (len < sizeof got - 1 && (len == 0 || got[len - 1] != '\n')) {
            ssize_t r = read(fd, got + len, sizeof got - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
        }
        got[len] = '\0';
        if (strcmp(got, line) != 0) /* the service answers with the same line */
            a->failures++;
    }
    close(fd);
    return NULL;
}

int echo_clients_run(const char *path, int clients, int requests, double *elapsed_s)
{
    pthread_t *th = calloc((size_t)clients, sizeof *th);
    client_arg *args = calloc((size_t)clients, sizeof *args);
    if (th == NULL || args == NULL) {
        free(th);
        free(args);
        return requests;
    }
    int64_t t0 = echo_now_ns();
    for (int i = 0; i < clients; i++) {
        args[i] = (client_arg){.path = path,
                               .count = requests / clients + (i < requests % clients),
                               .id = i};
        if (pthread_create(&th[i], NULL, client_main, &args[i]) != 0)
            args[i].failures = args[i].count, args[i].count = -1;
    }
    int failures = 0;
    for (int i = 0; i < clients; i++) {
        if (args[i].count >= 0)
            pthread_join(th[i], NULL);
        failures += args[i].failures;
    }
    *elapsed_s = (double)(echo_now_ns() - t0) / 1e9;
    free(th);
    free(args);
    return failures;
}

int echo_report(const char *loop_name, const char *measured, const echo_config *c,
                int served, int failures, double elapsed_s, const echo_meter *m)
{
    /* A loaded machine now and then charges a thread with kernel work done
     * for others (network softirqs on its CPU, which this kernel does not
     * account apart): a few stretches over the limit in tens of thousands
     * are the machine. A blocking path on the loop repeats, or lasts: more
     * than one stretch in OUTLIERS_PER, or one of ten times the limit,
     * fails the run. */
    enum { OUTLIERS_PER = 2000 };
    unsigned long long allowed = m->stretches / OUTLIERS_PER;
    if (allowed < 1)
        allowed = 1;
    bool over = m->cpu_over_limit > allowed ||
                (double)m->max_cpu_ns >= 10 * c->max_block_ms * 1e6;
    printf("%s echo: %d requests served from one loop thread through a pool of %d "
           "PostgreSQL connections, %d in flight, in %.2f s (%.0f/s); %d failed\n",
           loop_name, served, c->pool_size, c->in_flight, elapsed_s,
           elapsed_s > 0 ? served / elapsed_s : 0, failures);
    printf("longest %s: %.3f ms of the loop thread's CPU (%s); %.3f ms wall when it was "
           "never switched out; %.3f ms wall in all (the machine's load included); over %llu, "
           "%llu of them MAX_BLOCK_MS (%.3g ms) of CPU or more (%llu allowed)\n",
           measured, (double)m->max_cpu_ns / 1e6, m->max_where != NULL ? m->max_where : "-",
           (double)m->max_quiet_ns / 1e6,
           (double)m->max_wall_ns / 1e6, (unsigned long long)m->stretches,
           (unsigned long long)m->cpu_over_limit, c->max_block_ms, allowed);
    bool ok = failures == 0 && served == c->requests && !over;
    if (!ok)
        printf("FAILED: %s\n", failures != 0 || served != c->requests
                                   ? "requests failed"
                                   : "the loop's work took MAX_BLOCK_MS or more");
    return ok ? 0 : 1;
}
