/* mem_noreset.h -- the in-memory connector without reset(), for the
 * benchmarks: a connector whose sessions keep nothing between leases (and
 * the peer harness's fake one) has none, and its check-ins park in one
 * step (docs/design.md, "Thread-affine fast path"). */
#ifndef CPOOL_BENCH_MEM_NORESET_H
#define CPOOL_BENCH_MEM_NORESET_H

#include <cpool/cpool_connector.h>
#include <cpool/cpool_mem.h>

static inline const cpool_connector *bench_mem_noreset_connector(void)
{
    static cpool_connector table;
    table = *cpool_mem_connector();
    table.reset = NULL;
    return &table;
}

#endif
