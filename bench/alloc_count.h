/* alloc_count.h -- per-thread heap allocation counts for the benchmark
 * (alloc_count.c). */
#ifndef CPOOL_BENCH_ALLOC_COUNT_H
#define CPOOL_BENCH_ALLOC_COUNT_H

#include <stdint.h>

/* 1 when this build counts (glibc, no sanitizer), else 0. */
extern const int BENCH_COUNT_ALLOCS;

/* malloc, calloc and realloc calls made by the calling thread so far; 0
 * when not counted. */
uint64_t bench_allocs_self(void);

#endif
