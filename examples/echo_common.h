/* echo_common.h -- what the two echo services (uv_echo.c, event_echo.c)
 * share: the PostgreSQL query each request runs without blocking, the
 * measure of how long a loop callback kept the loop, and the clients that
 * load the service from other threads. The loop-specific parts are in the
 * two programs. */
#ifndef ECHO_COMMON_H
#define ECHO_COMMON_H

#include <cpool/cpool_pg.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The service's settings, from the command line:
 *   PROGRAM POSTGRES_URI [REQUESTS [IN_FLIGHT [POOL_SIZE [MAX_BLOCK_MS]]]]
 * MAX_BLOCK_MS (default 1) is the longest the loop may be kept. */
typedef struct echo_config {
    const char *uri;
    int requests, in_flight, pool_size;
    double max_block_ms;
} echo_config;

int echo_parse(int argc, char **argv, echo_config *c);
/* A pool of c->pool_size connections on c->uri (query options added). */
int echo_open_pool(const echo_config *c, cpool **out);

/* The statement of one request, sent without waiting: 0, or -1 with the
 * reason in why. *flush: the query is not all written yet (wait for the
 * socket to be writable, then call echo_query_flush). */
int echo_query_send(PGconn *pg, const char *line, bool *flush, char *why, size_t size);
int echo_query_flush(PGconn *pg, bool *flush); /* 0, or -1 */
/* After the socket turned readable: 1 when the answer is in `out`, 0 to
 * wait for more, -1 on an error (the lease must be checked in broken). */
int echo_query_read(PGconn *pg, char *out, size_t size);

/* How long loop callbacks ran: the longest in wall time, and the longest
 * during which the thread was not preempted (an involuntary context switch
 * would charge the machine's load to the loop). */
typedef struct echo_meter {
    int64_t t0;
    long ivcsw0;
    int64_t max_ns, max_clean_ns;
    uint64_t callbacks;
} echo_meter;

void echo_meter_enter(echo_meter *m);
void echo_meter_exit(echo_meter *m);
/* One measured stretch of `ns`; clean: the thread was not preempted in it. */
void echo_meter_add(echo_meter *m, int64_t ns, bool clean);
/* The thread's involuntary context switches so far. */
long echo_preemptions(void);

/* Runs `clients` threads against 127.0.0.1:port, each sending its share of
 * `requests` lines and checking every answer; returns the failures. */
int echo_clients_run(int port, int clients, int requests, double *elapsed_s);

/* The report both programs print, and their exit status: 0 when every
 * request was answered and no measured stretch (`measured` names it) kept
 * the loop 1 ms, preemptions aside. */
int echo_report(const char *loop_name, const char *measured, const echo_config *c,
                int served, int failures, double elapsed_s, const echo_meter *m);

int64_t echo_now_ns(void);

#endif /* ECHO_COMMON_H */
