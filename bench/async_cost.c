/* async_cost.c -- what an asynchronous checkout costs next to a blocking
 * one, in one run on one machine: a free connection is checked out and in
 * N times each way on the in-memory connector (no I/O), interleaved over
 * three rounds; the async way includes cpool_checkout_async, a poll of the
 * queue's descriptor and cpool_async_process, as a loop would do.
 *
 * Usage: async_cost [N]   (default 200000) */
#include <cpool/cpool.h>
#include <cpool/cpool_mem.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct state {
    cpool *pool;
    int left;
    int failed;
} state;

static void on_lease(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    state *s = arg;
    (void)err;
    if (rc != 0 || cpool_checkin(s->pool, conn, 0, NULL) != 0)
        s->failed++;
    s->left--;
}

static double blocking_ns(cpool *pool, int n)
{
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        cpool_conn *c;
        if (cpool_checkout(pool, 1000, &c, NULL) != 0 || cpool_checkin(pool, c, 0, NULL) != 0)
            return -1;
    }
    return (double)(now_ns() - t0) / n;
}

static double async_ns(cpool *pool, cpool_async *q, int n)
{
    state s = {.pool = pool, .left = n};
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        if (cpool_checkout_async(pool, q, NULL, on_lease, &s, NULL) != 0)
            return -1;
        struct pollfd pf = {cpool_async_fd(q), POLLIN, 0};
        while (s.left > n - i - 1) {
            if (poll(&pf, 1, 1000) == 1)
                cpool_async_process(q);
        }
    }
    return s.failed != 0 ? -1 : (double)(now_ns() - t0) / n;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    cpool_mem *mem;
    cpool *pool;
    cpool_async *q;
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.connector = cpool_mem_connector();
    o.ignore_env = true;
    if (n < 1 || cpool_mem_create(&mem) != 0)
        return 2;
    o.connector_ctx = mem;
    if (cpool_create(&o, &pool, NULL) != 0 || cpool_ready(pool, NULL) != 0 ||
        cpool_async_new(&q) != 0)
        return 1;
    printf("%-6s %14s %14s %8s\n", "round", "blocking ns/op", "async ns/op", "ratio");
    double sb = 0, sa = 0;
    for (int round = 1; round <= 3; round++) {
        double b = blocking_ns(pool, n), a = async_ns(pool, q, n);
        if (b < 0 || a < 0) {
            fprintf(stderr, "async_cost: a checkout failed\n");
            return 1;
        }
        sb += b;
        sa += a;
        printf("%-6d %14.0f %14.0f %8.2f\n", round, b, a, a / b);
    }
    printf("%-6s %14.0f %14.0f %8.2f\n", "mean", sb / 3, sa / 3, sa / sb);
    cpool_async_free(q);
    cpool_destroy(pool);
    cpool_mem_destroy(mem);
    return 0;
}
