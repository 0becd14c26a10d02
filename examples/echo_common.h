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

/* How long the loop was kept, three ways, each the longest over the
 * measured stretches (callbacks, or whole iterations):
 *   cpu: the thread's CPU time in it -- the loop's own work, whatever the
 *        machine's load; the pass criterion;
 *   quiet: wall time in a stretch during which the thread was never
 *        switched out (it neither blocked nor was preempted);
 *   wall: wall time, whatever happened (a loaded machine's preemptions, a
 *        lock held by a preempted thread, are in it). */
typedef struct echo_meter {
    int64_t t0, cpu0;
    long switches0;
    const char *where, *max_where; /* the callback measured, the longest's */
    int64_t max_cpu_ns, max_quiet_ns, max_wall_ns;
    int64_t limit_ns;                 /* MAX_BLOCK_MS: set before the run */
    uint64_t stretches, cpu_over_limit; /* ... of which took limit_ns of CPU or more */
} echo_meter;

/* enter names the callback (reported for the longest). */
void echo_meter_enter_at(echo_meter *m, const char *where);
#define echo_meter_enter(m) echo_meter_enter_at(m, __func__)
void echo_meter_exit(echo_meter *m);
/* One measured stretch. */
void echo_meter_add(echo_meter *m, int64_t wall_ns, int64_t cpu_ns, bool quiet);
/* The thread's CPU time, and its context switches (voluntary and not). */
int64_t echo_thread_cpu_ns(void);
long echo_switches(void);

/* The service listens on a Unix socket (a path of its own in /tmp): the
 * loop's measure then holds the service's work, not loopback TCP's
 * processing of 64 clients' packets, which the kernel charges to whichever
 * thread receives. Fills path; -1 when no name could be made. */
int echo_socket_path(char *path, size_t size);
/* A listening Unix socket at path, non-blocking; -1 on failure. */
int echo_listen(const char *path);
/* Runs `clients` threads against the socket at path, each sending its share
 * of `requests` lines and checking every answer; returns the failures. */
int echo_clients_run(const char *path, int clients, int requests, double *elapsed_s);

/* The report both programs print, and their exit status: 0 when every
 * request was answered and no measured stretch (`measured` names it) took
 * MAX_BLOCK_MS of the loop thread's CPU time -- one in the whole run may,
 * if under ten times that (see echo_report). */
int echo_report(const char *loop_name, const char *measured, const echo_config *c,
                int served, int failures, double elapsed_s, const echo_meter *m);

int64_t echo_now_ns(void);

#endif /* ECHO_COMMON_H */
