/* alloc_count.c -- counts heap allocations per thread, for the benchmark's
 * allocs/op column. Linked into cpool_bench only: with glibc, a definition
 * of malloc, calloc and realloc in the executable interposes on every
 * caller in the process (the cpool library included) and forwards to
 * glibc's own entry points. The counter is thread-local, so counting adds
 * no shared cache line to the hot path of an allocating pool. Aligned
 * allocations (posix_memalign, aligned_alloc) are not counted. Sanitizers
 * bring their own malloc, so the counter is left out under them. */
#include "alloc_count.h"

#include <stddef.h>
#include <stdlib.h> /* the prototypes of what it defines */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BENCH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define BENCH_SANITIZED 1
#endif
#endif

#if defined(__GLIBC__) && !defined(BENCH_SANITIZED) && !defined(CPOOL_BENCH_NO_ALLOC_COUNT)
const int BENCH_COUNT_ALLOCS = 1;

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);

static _Thread_local uint64_t tl_allocs;

void *malloc(size_t size)
{
    tl_allocs++;
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    tl_allocs++;
    return __libc_calloc(n, size);
}

void *realloc(void *ptr, size_t size)
{
    tl_allocs++;
    return __libc_realloc(ptr, size);
}

uint64_t bench_allocs_self(void) { return tl_allocs; }
#else
const int BENCH_COUNT_ALLOCS = 0;

uint64_t bench_allocs_self(void) { return 0; }
#endif
