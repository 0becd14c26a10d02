/* clock.h -- the one monotonic clock of the library (the kernel's
 * CLOCK_MONOTONIC, in nanoseconds). A pool may run on a clock of its
 * options' instead (cpool__now, for tests); deadlines handed to connectors
 * and the connectors' own waits are on this one. */
#ifndef CPOOL_CLOCK_H
#define CPOOL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t cpool__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
