/* above.h -- the few core internals the layers above it (the cluster in
 * src/cluster/) use beside the public API. */
#ifndef CPOOL_ABOVE_H
#define CPOOL_ABOVE_H

#include "cpool/cpool.h"

#include <stdbool.h>
#include <stdint.h>

/* The circuit is open (takes mu); for the cluster's selection. */
bool cpool__pool_breaker_open(cpool *p);

/* run.c, shared with the cluster's run: the pause before retry n (first_ms
 * grown by the multiplier, +- jitter); a sleep; and the scope in which
 * cpool_run_deadline_ms() answers for `p` and `deadline` (pool clock). */
int64_t cpool__retry_pause_ns(int64_t first_ms, uint32_t n, double multiplier, double jitter,
                              uint64_t *rng);
void cpool__sleep_ns(int64_t ns);
typedef struct cpool__run_scope {
    const cpool *pool;
    int64_t deadline;
} cpool__run_scope;
void cpool__run_enter(const cpool *p, int64_t deadline, cpool__run_scope *saved);
void cpool__run_leave(const cpool__run_scope *saved);

#endif /* CPOOL_ABOVE_H */
