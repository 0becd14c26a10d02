/* tcp_written.c -- how many bytes the application has written to a TCP
 * socket so far, from the kernel's own counters. Kept apart from the
 * connectors because <linux/tcp.h>, which has the counters, clashes with
 * <netinet/tcp.h>. */
#include "tcp_written.h"

#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

int cpool__tcp_written(int fd, uint64_t *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return -1; /* not TCP (a Unix socket), or closed */
    if (len < offsetof(struct tcp_info, tcpi_bytes_retrans) + sizeof ti.tcpi_bytes_retrans)
        return -1; /* a kernel before 4.19 */
    /* Every byte written is either sent once for the first time (sent
     * minus retransmitted) or still waiting to be sent. */
    *out = ti.tcpi_bytes_sent - ti.tcpi_bytes_retrans + ti.tcpi_notsent_bytes;
    return 0;
}
