/* sockwait.h -- waiting on a socket with a deadline and a cancellation
 * descriptor, shared by the connectors (sockwait.c). */
#ifndef CPOOL_SOCKWAIT_H
#define CPOOL_SOCKWAIT_H

#include <stdint.h>
#include <sys/socket.h>

enum {
    CPOOL_WAIT_READY = 0, /* fd has an event (errors and hang-ups included) */
    CPOOL_WAIT_TIMEOUT,   /* the deadline passed */
    CPOOL_WAIT_CANCELLED, /* cancel_fd has an event: nobody waits any more */
    CPOOL_WAIT_ERROR      /* poll, socket or connect failed; errno in *eno */
};

/* Milliseconds for poll() from now_ns until deadline_ns (CLOCK_MONOTONIC;
 * 0 = none: -1, for ever), rounded up so a wait never ends just short. */
int cpool__poll_ms(int64_t deadline_ns, int64_t now_ns);

/* Waits until fd (-1 = none) has `events`, cancel_fd (-1 = none) has any
 * event -- readable, or POLLHUP/POLLNVAL when the pool closed it -- or
 * deadline_ns (0 = none) passes. EINTR is retried. */
int cpool__wait_fd(int fd, short events, int cancel_fd, int64_t deadline_ns, int *eno);

/* One non-blocking TCP or Unix connect, given up at deadline_ns or when
 * cancel_fd fires. CPOOL_WAIT_READY with *out the connected socket
 * (non-blocking, close-on-exec); otherwise no socket is left open, and
 * *eno holds the errno of CPOOL_WAIT_ERROR (the connect's own, such as
 * ECONNREFUSED). */
int cpool__connect_fd(int family, const struct sockaddr *sa, socklen_t len, int64_t deadline_ns,
                      int cancel_fd, int *out, int *eno);

#endif
