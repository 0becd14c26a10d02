/* test_loops.c -- the event-loop adapters on real loops: cpool_uv.h on a
 * libuv loop and cpool_event.h on a libevent base, each serving checkouts
 * that complete at once, after a handoff and at a deadline, with the
 * callbacks on the loop's thread. */
#include "test.h"

#include <cpool/cpool_event.h>
#include <cpool/cpool_uv.h>

typedef struct run {
    cpool *pool;
    cpool_async *q;
    pthread_t loop_thread;
    int done, ok, timeouts;
    bool wrong_thread;
    cpool_conn *held;
} run;

static void on_lease(cpool_conn *conn, int rc, const cpool_error *err, void *arg)
{
    run *r = arg;
    (void)err;
    if (!pthread_equal(pthread_self(), r->loop_thread))
        r->wrong_thread = true;
    r->done++;
    if (rc == 0) {
        r->ok++;
        ASSERT_OK(cpool_checkin(r->pool, conn, 0, NULL));
    } else if (rc == CPOOL_ETIMEDOUT) {
        r->timeouts++;
    }
}

/* The pool: one connection, the background thread (async needs it). */
static void start(test_fixture *f, run *r)
{
    test_fixture_init(f);
    f->opts.max_pool_size = 1;
    f->opts.maintenance_interval_ms = 1000;
    test_fixture_start(f);
    memset(r, 0, sizeof *r);
    r->pool = f->pool;
    r->loop_thread = pthread_self();
    ASSERT_OK(cpool_async_new(&r->q));
}

/* Three requests: one served at once, one after the held lease comes back
 * (from another thread), one that times out while the lease is held. */
typedef struct holder {
    cpool *pool;
    cpool_conn *c;
    int after_ms;
} holder;

static void *return_later(void *arg)
{
    holder *h = arg;
    test_sleep_ms(h->after_ms);
    test_checkin(h->pool, h->c, 0);
    return NULL;
}

TEST(libuv_loop_serves_checkouts)
{
    test_fixture f;
    run r;
    start(&f, &r);
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    cpool_uv w;
    ASSERT_OK(cpool_uv_start(&loop, &w, r.q));
    /* 1: at once. */
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, NULL, on_lease, &r, NULL));
    while (r.done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    /* 2: the only connection is held elsewhere and comes back in 100 ms;
     * 3: gives up after 50 ms. */
    holder h = {.pool = r.pool, .c = test_checkout(r.pool), .after_ms = 100};
    pthread_t th;
    cpool_checkout_opts quick = {.struct_size = sizeof quick, .timeout_ms = 50};
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, NULL, on_lease, &r, NULL));
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, &quick, on_lease, &r, NULL));
    TEST_THREAD_START(&th, return_later, &h);
    int64_t end = test_now_ms() + 10000;
    while (r.done < 3 && test_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    pthread_join(th, NULL);
    ASSERT_EQ(3, r.done);
    ASSERT_EQ(2, r.ok);
    ASSERT_EQ(1, r.timeouts);
    ASSERT_FALSE(r.wrong_thread);
    cpool_uv_stop(&w, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* the close callback */
    ASSERT_OK(uv_loop_close(&loop));
    cpool_async_free(r.q);
    test_fixture_free(&f);
}

TEST(libevent_base_serves_checkouts)
{
    test_fixture f;
    run r;
    start(&f, &r);
    struct event_base *base = event_base_new();
    ASSERT_NOT_NULL(base);
    struct event *ev = cpool_event_start(base, r.q);
    ASSERT_NOT_NULL(ev);
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, NULL, on_lease, &r, NULL));
    while (r.done < 1)
        event_base_loop(base, EVLOOP_ONCE);
    holder h = {.pool = r.pool, .c = test_checkout(r.pool), .after_ms = 100};
    pthread_t th;
    cpool_checkout_opts quick = {.struct_size = sizeof quick, .timeout_ms = 50};
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, NULL, on_lease, &r, NULL));
    ASSERT_OK(cpool_checkout_async(r.pool, r.q, &quick, on_lease, &r, NULL));
    TEST_THREAD_START(&th, return_later, &h);
    int64_t end = test_now_ms() + 10000;
    while (r.done < 3 && test_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    pthread_join(th, NULL);
    ASSERT_EQ(3, r.done);
    ASSERT_EQ(2, r.ok);
    ASSERT_EQ(1, r.timeouts);
    ASSERT_FALSE(r.wrong_thread);
    cpool_event_stop(ev);
    event_base_free(base);
    cpool_async_free(r.q);
    test_fixture_free(&f);
}

TEST_MAIN()
