/* tcp_written.h -- see tcp_written.c. */
#ifndef CPOOL_TCP_WRITTEN_H
#define CPOOL_TCP_WRITTEN_H

#include <stdint.h>

/* Bytes written to TCP socket fd since it was opened. 0 on success; -1
 * when the kernel cannot tell (not TCP, a kernel before 4.19). */
int cpool__tcp_written(int fd, uint64_t *out);

#endif
