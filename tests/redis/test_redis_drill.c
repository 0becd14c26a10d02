/* test_redis_drill.c -- fault drills against a Redis server of their own
 * (CPOOL_TEST_REDIS_DRILL_PORT, its own CTest fixture and resource lock):
 * the server is killed with SIGKILL and restarted under load, or stopped
 * with SIGSTOP, and the pool must keep every wait within its bounds, serve
 * again promptly, and leak no connection. What was measured is printed on
 * stderr (ctest -V shows it). */
#include "redis_fixture.c"

#include <signal.h>
#include <sys/wait.h>

#define THREADS 4
#define CHECKOUT_TIMEOUT_MS 1000
#define CONNECT_TIMEOUT_MS 1000
#define COMMAND_TIMEOUT_MS 500
#define MARGIN_MS 500 /* scheduling slack on a shared 2-core machine */

static int drill_port(void) { return atoi(rt_env("CPOOL_TEST_REDIS_DRILL_PORT")); }
static const char *drill_dir(void) { return rt_env("CPOOL_TEST_REDIS_DRILL_DIR"); }
static const char *password(void) { return rt_env("CPOOL_TEST_REDIS_PASSWORD"); }

static void atomic_max(_Atomic int64_t *m, int64_t v)
{
    int64_t cur = atomic_load(m);
    while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
    }
}

typedef struct drill {
    cpool *pool;
    atomic_bool stop;
    atomic_llong ok, failed;
    _Atomic int64_t max_checkout_ns; /* longest checkout, ok or not */
    _Atomic int64_t max_command_ns;  /* longest command */
    _Atomic int64_t back_ns;         /* when the restarted server answered; 0 = not yet */
    _Atomic int64_t first_ok_back_ns; /* first success completed after that */
    atomic_llong codes[CPOOL_ERROR_SLOTS]; /* checkout failures by -code */
} drill;

typedef struct worker {
    drill *d;
    int n;
    pthread_t thread;
} worker;

/* One SET and GET; plain hiredis in half the workers and the wrappers in
 * the other half, as applications mix them. */
static bool one_op(worker *w, redisContext *c, long i)
{
    char key[64], val[32];
    rt_key(key, sizeof key, "drill");
    snprintf(key + strlen(key), sizeof key - strlen(key), ":%d", w->n);
    snprintf(val, sizeof val, "%ld", i);
    bool wrap = w->n % 2 == 0;
    int64_t t0 = test_now_ns();
    redisReply *r = wrap ? cpool_redis_command(c, "SET %s %s", key, val)
                         : redisCommand(c, "SET %s %s", key, val);
    bool ok = r != NULL && r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    int64_t t1 = test_now_ns();
    atomic_max(&w->d->max_command_ns, t1 - t0);
    if (!ok)
        return false;
    r = wrap ? cpool_redis_command(c, "GET %s", key) : redisCommand(c, "GET %s", key);
    ok = r != NULL && r->type == REDIS_REPLY_STRING && strcmp(r->str, val) == 0;
    freeReplyObject(r);
    atomic_max(&w->d->max_command_ns, test_now_ns() - t1);
    return ok;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    drill *d = w->d;
    for (long i = 0; !atomic_load(&d->stop); i++) {
        cpool_conn *c = NULL;
        cpool_error e;
        int64_t t0 = test_now_ns();
        int rc = cpool_checkout(d->pool, CHECKOUT_TIMEOUT_MS, &c, &e);
        atomic_max(&d->max_checkout_ns, test_now_ns() - t0);
        if (rc != 0) {
            atomic_fetch_add(&d->failed, 1);
            if (-rc > 0 && -rc < CPOOL_ERROR_SLOTS)
                atomic_fetch_add(&d->codes[-rc], 1);
            test_sleep_ms(5); /* a fast failure (open breaker) must not spin */
            continue;
        }
        bool ok = one_op(w, cpool_redis_context(c), i);
        int64_t done = test_now_ns();
        cpool_checkin(d->pool, c, ok ? 0 : CPOOL_CHECKIN_BROKEN, NULL);
        if (ok) {
            atomic_fetch_add(&d->ok, 1);
            int64_t back = atomic_load(&d->back_ns), zero = 0;
            if (back != 0 && done >= back)
                atomic_compare_exchange_strong(&d->first_ok_back_ns, &zero, done);
        } else {
            atomic_fetch_add(&d->failed, 1);
        }
    }
    return NULL;
}

typedef struct restart_job {
    char args[600];
    pthread_t thread;
} restart_job;

static void *restart_main(void *arg)
{
    rt_script(((restart_job *)arg)->args);
    return NULL;
}

/* True when the drill server answers an authenticated PING now. */
static bool answers_ping(void)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", drill_port(), tv);
    bool ok = false;
    if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK) {
        redisReply *r = redisCommand(c, "AUTH %s", password());
        ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        r = ok ? redisCommand(c, "PING") : NULL;
        ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

static void drill_name(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "drill-%s-%ld", what, (long)getpid());
}

TEST(kill9_restart_under_load)
{
    char name[64], target[512];
    drill_name(name, sizeof name, "kill");
    rt_fmt(target, "redis://:%s@127.0.0.1:%d/0?client_name=%s&command_timeout_ms=%d",
           password(), drill_port(), name, COMMAND_TIMEOUT_MS);
    cpool_options o;
    rt_options(&o, target, NULL);
    o.max_pool_size = THREADS;
    o.connect_timeout_ms = CONNECT_TIMEOUT_MS;
    /* Realistic resilience settings, with a backoff cap well under one
     * connect time so that recovery is bounded by it. */
    o.backoff_base_ms = 20;
    o.backoff_max_ms = 200;
    o.breaker_threshold = 5;
    o.maintenance_interval_ms = 100;

    /* As every program using hiredis's own writes must: a command written
     * to a socket the dying server reset raises SIGPIPE otherwise. */
    signal(SIGPIPE, SIG_IGN);
    drill d;
    memset(&d, 0, sizeof d);
    d.pool = rt_pool(&o);
    atomic_init(&d.stop, false);
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i].d = &d;
        w[i].n = i;
        TEST_THREAD_START(&w[i].thread, worker_main, &w[i]);
    }

    test_sleep_ms(500);
    long long ok_healthy = atomic_load(&d.ok);
    ASSERT_GT(ok_healthy, 0);
    ASSERT_EQ(0, atomic_load(&d.failed));

    char args[600];
    rt_fmt(args, "kill9 %s", drill_dir());
    int64_t t_kill = test_now_ns();
    rt_script(args);
    test_sleep_ms(100); /* operations in flight at the kill have ended */
    long long ok_down = atomic_load(&d.ok);
    test_sleep_ms(1400);
    ASSERT_EQ(ok_down, atomic_load(&d.ok)); /* nothing succeeds while it is down */
    ASSERT_GT(atomic_load(&d.failed), 0);

    /* The script returns a while after the server answers (it polls), so
     * the moment it is back is found here, by asking every few ms. */
    restart_job rj;
    rt_fmt(rj.args, "restart %s", drill_dir());
    int64_t t_restart = test_now_ns();
    TEST_THREAD_START(&rj.thread, restart_main, &rj);
    while (!answers_ping()) {
        if (test_now_ns() - t_restart > 10000000000LL)
            FAIL("the restarted server does not answer after 10 s");
        test_sleep_ms(2);
    }
    int64_t back = test_now_ns();
    atomic_store(&d.back_ns, back);
    pthread_join(rj.thread, NULL);
    WAIT_UNTIL(atomic_load(&d.first_ok_back_ns) != 0, 5000);
    int64_t recovery_ns = atomic_load(&d.first_ok_back_ns) - back;
    test_sleep_ms(500);
    atomic_store(&d.stop, true);
    for (int i = 0; i < THREADS; i++)
        pthread_join(w[i].thread, NULL);

    int64_t max_co = atomic_load(&d.max_checkout_ns) / 1000000;
    int64_t max_cmd = atomic_load(&d.max_command_ns) / 1000000;
    fprintf(stderr,
            "drill-summary redis kill9_restart_under_load: ok %lld, failed %lld "
            "(timeouts %lld, connect errors %lld, unavailable "
            "%lld); max checkout %lld ms, max command %lld ms; server answered %lld ms "
            "after the restart began; served again %lld ms after that (outage %lld ms)\n",
            (long long)atomic_load(&d.ok), (long long)atomic_load(&d.failed),
            (long long)atomic_load(&d.codes[-CPOOL_ETIMEDOUT]),
            (long long)atomic_load(&d.codes[-CPOOL_ECONNECT]),
            (long long)atomic_load(&d.codes[-CPOOL_EUNAVAILABLE]), (long long)max_co,
            (long long)max_cmd, (long long)((back - t_restart) / 1000000),
            (long long)(recovery_ns / 1000000), (long long)((back - t_kill) / 1000000));
    ASSERT_LE(max_co, CHECKOUT_TIMEOUT_MS + MARGIN_MS);
    ASSERT_LE(max_cmd, COMMAND_TIMEOUT_MS + MARGIN_MS);
    ASSERT_LE(recovery_ns / 1000000, CONNECT_TIMEOUT_MS);
    ASSERT_GT(atomic_load(&d.ok), ok_down);

    /* Nothing leaked: the server lists exactly the connections the pool
     * counts. A close reaches the server a moment after the pool counts it
     * gone, hence the short wait. */
    redisContext *sc = rt_side(drill_port(), password());
    cpool_counts n = test_counts(d.pool);
    ASSERT_EQ(0, n.in_use);
    ASSERT_GT(n.total, 0);
    int64_t until = test_now_ms() + 2000;
    int listed;
    while ((listed = rt_count_named(sc, name)) != (int)n.total && test_now_ms() < until)
        test_sleep_ms(10);
    ASSERT_EQ(n.total, listed);
    cpool_destroy(d.pool);
    WAIT_UNTIL(rt_count_named(sc, name) == 0, 2000);
    redisFree(sc);
}

/* Sends SIGCONT to the server after a while from a separate process, so
 * that a failing case (which ends at once) cannot leave it stopped. */
static void continue_later(pid_t server, int seconds)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        /* Let go of ctest's pipes, or ctest would wait for this child. */
        for (int fd = 0; fd < 3; fd++)
            close(fd);
        if (fork() == 0) { /* orphaned, so that nobody has to reap it */
            sleep((unsigned)seconds);
            kill(server, SIGCONT);
        }
        _exit(0);
    }
    waitpid(pid, NULL, 0);
}

TEST(stopped_server_bounded)
{
    char name[64], target[512];
    drill_name(name, sizeof name, "stop");
    rt_fmt(target,
           "redis://:%s@127.0.0.1:%d/0?client_name=%s&command_timeout_ms=150&"
           "reset_timeout_ms=300&validation=always",
           password(), drill_port(), name);
    cpool_options o;
    rt_options(&o, target, NULL);
    o.connect_timeout_ms = 700;
    cpool *p = rt_pool(&o);
    cpool_conn *a = test_checkout(p), *b = test_checkout(p);
    test_checkin(p, a, 0);

    pid_t server = rt_server_pid(drill_dir());
    continue_later(server, 5);
    ASSERT_EQ(0, kill(server, SIGSTOP));

    /* A command in use: bounded by command_timeout_ms. */
    int64_t t0 = test_now_ms();
    redisReply *r = redisCommand(cpool_redis_context(b), "PING");
    int64_t cmd_ms = test_now_ms() - t0;
    ASSERT_NULL(r);
    ASSERT_GE(cmd_ms, 120);
    ASSERT_LE(cmd_ms, 150 + MARGIN_MS);
    t0 = test_now_ms();
    test_checkin(p, b, 0); /* failed context: closed without I/O */
    int64_t checkin_ms = test_now_ms() - t0;
    ASSERT_LE(checkin_ms, 100);

    /* A checkout: check() passes (the socket is fine), the ping times out,
     * and a new connection's handshake gets no answer -- the server still
     * accepts TCP. Bounded by the checkout's own timeout. */
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    t0 = test_now_ms();
    int rc = cpool_checkout(p, 1500, &c, &e);
    int64_t co_ms = test_now_ms() - t0;
    ASSERT_NE(0, rc);
    /* The ping waits no longer than a command (150 ms; the pool alone
     * would let it take connect_timeout_ms), the new connection's handshake
     * no longer than connect_timeout_ms (700 ms). */
    ASSERT_LE(co_ms, 150 + 700 + 300);
    if (rc == CPOOL_ECONNECT) {
        ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
        ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
        ASSERT_TRUE(e.labels & CPOOL_LABEL_SYSTEM_OVERLOADED);
    } else {
        ASSERT_RC(CPOOL_ETIMEDOUT, rc);
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.validation_failures);

    ASSERT_EQ(0, kill(server, SIGCONT));
    t0 = test_now_ms();
    c = test_checkout(p);
    int64_t back_ms = test_now_ms() - t0;
    rt_ok(cpool_redis_context(c), "PING");
    test_checkin(p, c, 0);
    fprintf(stderr,
            "drill-summary redis stopped_server_bounded: command failed after %lld ms, "
            "check-in took %lld ms, checkout "
            "failed after %lld ms (%s), served %lld ms after SIGCONT\n",
            (long long)cmd_ms, (long long)checkin_ms, (long long)co_ms, cpool_err_name(rc),
            (long long)back_ms);
    ASSERT_LE(back_ms, 700 + MARGIN_MS);
    cpool_destroy(p);
}

/* A full Redis ("ERR max number of clients reached", here maxclients 1 with
 * the test's own connection holding the slot) is not a failing one: the
 * checkout waits for a slot within its deadline and times out saying why
 * (kind CAPACITY), the circuit stays closed, the refusals are counted; when
 * a slot frees up a waiting checkout gets it. Observations are made first
 * and asserted after maxclients is restored, so a failure does not leave
 * the drill server refusing everyone. */
TEST(max_clients_waits_within_deadline)
{
    char name[64], target[512];
    drill_name(name, sizeof name, "cap");
    rt_fmt(target, "redis://:%s@127.0.0.1:%d/0?client_name=%s", password(), drill_port(), name);
    cpool_options o;
    rt_options(&o, target, NULL);
    o.breaker_threshold = 2;
    o.backoff_base_ms = 200;
    redisContext *side = rt_side(drill_port(), password());
    rt_ok(side, "CONFIG SET maxclients 1");
    cpool *p = rt_pool(&o);
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int64_t t0 = test_now_ms();
    int rc = cpool_checkout(p, 300, &c, &e);
    int64_t took = test_now_ms() - t0;
    cpool_stats s = {.struct_size = sizeof s};
    int src = cpool_get_stats(p, &s);
    test_job j;
    test_job_start(&j, p, 5000);
    test_sleep_ms(150);
    bool waited = !atomic_load(&j.done);
    int64_t freed = test_now_ms();
    rt_ok(side, "CONFIG SET maxclients 10000");
    test_job_join(&j, 5000);
    int64_t served_ms = test_now_ms() - freed;
    redisFree(side);

    ASSERT_RC(CPOOL_ETIMEDOUT, rc);
    ASSERT_GE(took, 290);
    ASSERT_LT(took, 1000);
    ASSERT_EQ(CPOOL_FAIL_CAPACITY, e.kind);
    ASSERT_STR_CONTAINS(e.message, "max number of clients");
    ASSERT_OK(src);
    ASSERT_GE(s.capacity_refusals, 2);
    ASSERT_FALSE(s.breaker_open);
    ASSERT_EQ(0, s.connect_fail_streak);
    ASSERT_TRUE(waited);
    ASSERT_OK_E(j.rc, &j.err);
    ASSERT_LT(served_ms, 1000);
    test_checkin(p, j.conn, 0);
    cpool_destroy(p);
}

TEST_MAIN()
