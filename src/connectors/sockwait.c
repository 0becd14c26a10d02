/* sockwait.c -- one poll loop with a deadline and a cancellation
 * descriptor for every connector, and the non-blocking connect built on
 * it (see sockwait.h). */
#include "sockwait.h"

#include "../core/clock.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <unistd.h>

int cpool__poll_ms(int64_t deadline_ns, int64_t now_ns)
{
    if (deadline_ns == 0)
        return -1;
    if (now_ns >= deadline_ns)
        return 0;
    int64_t ms = (deadline_ns - now_ns + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

int cpool__wait_fd(int fd, short events, int cancel_fd, int64_t deadline_ns, int *eno)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = cancel_fd, .events = POLLIN}};
        int64_t now = cpool__mono_ns();
        if (deadline_ns != 0 && now >= deadline_ns)
            return CPOOL_WAIT_TIMEOUT;
        int n = poll(p, 2, cpool__poll_ms(deadline_ns, now)); /* fd -1 is skipped */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *eno = errno;
            return CPOOL_WAIT_ERROR;
        }
        if (cancel_fd >= 0 && p[1].revents != 0)
            return CPOOL_WAIT_CANCELLED;
        if (fd >= 0 && p[0].revents != 0)
            return CPOOL_WAIT_READY;
    }
}

int cpool__connect_fd(int family, const struct sockaddr *sa, socklen_t len, int64_t deadline_ns,
                      int cancel_fd, int *out, int *eno)
{
    *out = -1;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *eno = errno;
        return CPOOL_WAIT_ERROR;
    }
    if (connect(fd, sa, len) < 0) {
        /* EINTR: the connect goes on in the background, as EINPROGRESS. */
        if (errno != EINPROGRESS && errno != EINTR && errno != EAGAIN) {
            *eno = errno;
            close(fd);
            return CPOOL_WAIT_ERROR;
        }
        int st = cpool__wait_fd(fd, POLLOUT, cancel_fd, deadline_ns, eno);
        if (st != CPOOL_WAIT_READY) {
            close(fd);
            return st;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        if (soerr != 0) {
            *eno = soerr;
            close(fd);
            return CPOOL_WAIT_ERROR;
        }
    }
    *out = fd;
    return CPOOL_WAIT_READY;
}
