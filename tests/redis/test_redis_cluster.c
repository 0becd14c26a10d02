/* test_redis_cluster.c -- a cluster on a real Redis primary, replica and
 * three Sentinels (scripts/redis-server.sh), opened from a
 * redis-sentinel:// target: the primary killed under a read/write load,
 * the Sentinels promote the replica, and the drill prints the write
 * downtime after the promotion and the reads that failed (docs/cluster.md).
 * It ends with the new primary's client count for the pool equal to the
 * pool's. */
#include "test.h"

#include <cpool/cpool_cluster.h>
#include <cpool/cpool_redis.h>

#include <hiredis/hiredis.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

#define READERS 4
#define WRITERS 2

typedef struct rset {
    const char *script;
    char dir[5][512];
    int port[5]; /* primary, replica, three Sentinels */
    cpool_cluster *c;
} rset;

static const char *const names[5] = {"primary", "replica", "sentinel1", "sentinel2",
                                     "sentinel3"};

static void script(rset *s, const char *verb, int node, const char *extra)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port[node]);
    char *argv[] = {(char *)"bash", (char *)s->script, (char *)verb, s->dir[node],
                    strcmp(verb, "stop") == 0 || strcmp(verb, "kill9") == 0 ? NULL : port,
                    (char *)extra, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/bash", NULL, NULL, argv, environ);
    if (rc != 0)
        FAIL("posix_spawn redis-server.sh %s: %s", verb, strerror(rc));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("redis-server.sh %s %s failed (status %d)", verb, names[node], status);
}

/* One reply as text ("" on failure), from a direct connection. */
static void ask(int port, char *out, size_t size, const char *fmt, const char *arg)
{
    out[0] = '\0';
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return;
    }
    redisSetTimeout(c, tv);
    redisReply *r = redisCommand(c, fmt, arg);
    if (r != NULL) {
        if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
            snprintf(out, size, "%s", r->str);
        else if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                 r->element[0]->type == REDIS_REPLY_STRING)
            snprintf(out, size, "%s", r->element[0]->str);
        freeReplyObject(r);
    }
    redisFree(c);
}

static bool role_is(int port, const char *want)
{
    char v[64];
    ask(port, v, sizeof v, "ROLE", NULL);
    return strcmp(v, want) == 0;
}

/* Clients named `name` on the server at port. */
static int clients_named(int port, const char *name)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return -1;
    }
    redisReply *r = redisCommand(c, "CLIENT LIST");
    int n = -1;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        char want[80];
        snprintf(want, sizeof want, " name=%s ", name);
        n = 0;
        for (const char *p = r->str; (p = strstr(p, want)) != NULL; p++)
            n++;
    }
    if (r != NULL)
        freeReplyObject(r);
    redisFree(c);
    return n;
}

typedef struct load {
    rset *s;
    _Atomic bool stop;
    pthread_t th[READERS + WRITERS];
    _Atomic uint64_t reads_ok, reads_failed, writes_ok, writes_failed;
    _Atomic int64_t mark_ns, first_write_after_ns, max_wait_ns;
    char first_error[256];
    pthread_mutex_t mu;
} load;

typedef struct worker {
    load *l;
    bool writer;
} worker;

static worker workers[READERS + WRITERS];

/* A read: GET, its failure classified by the connector (a dropped
 * connection is RetryableError). */
static int read_fn(cpool_conn *lease, void *arg, cpool_error *err)
{
    (void)arg;
    redisContext *c = cpool_redis_context(lease);
    redisReply *r = cpool_redis_command(c, "GET k1");
    int rc = r == NULL || r->type == REDIS_REPLY_ERROR ? cpool_redis_error(c, r, err) : 0;
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    load *l = wk->l;
    uint64_t seq = 0;
    while (!atomic_load(&l->stop)) {
        cpool_error e;
        int64_t t0 = test_now_ns();
        bool ok;
        if (wk->writer) {
            cpool_cluster_checkout_opts o = {.struct_size = sizeof o,
                                             .want = CPOOL_WANT_PRIMARY,
                                             .timeout_ms = 1000};
            cpool_conn *conn = NULL;
            ok = cpool_cluster_checkout(l->s->c, &o, &conn, NULL, &e) == 0;
            if (ok) {
                redisContext *c = cpool_redis_context(conn);
                redisReply *r = cpool_redis_command(c, "SET k1 %llu", (unsigned long long)++seq);
                ok = r != NULL && r->type != REDIS_REPLY_ERROR;
                if (!ok)
                    snprintf(e.message, sizeof e.message, "%s", r != NULL ? r->str : c->errstr);
                if (r != NULL)
                    freeReplyObject(r);
                cpool_cluster_checkin(l->s->c, conn, ok ? 0 : CPOOL_CHECKIN_BROKEN, NULL);
            }
        } else {
            /* reads retried once on RetryableError: the Sentinels close the
             * promoted replica's client connections, reads in flight too */
            cpool_cluster_run_opts o = {.struct_size = sizeof o,
                                        .want = CPOOL_WANT_REPLICA_PREFERRED,
                                        .timeout_ms = 1000,
                                        .retries = 2};
            ok = cpool_cluster_run(l->s->c, &o, read_fn, NULL, &e) == 0;
        }
        int64_t w = test_now_ns() - t0, m = atomic_load(&l->max_wait_ns);
        while (w > m && !atomic_compare_exchange_weak(&l->max_wait_ns, &m, w))
            ;
        int64_t now = test_now_ns(), mark = atomic_load(&l->mark_ns), zero = 0;
        if (wk->writer) {
            atomic_fetch_add(ok ? &l->writes_ok : &l->writes_failed, 1);
            if (ok && mark != 0 && now > mark)
                atomic_compare_exchange_strong(&l->first_write_after_ns, &zero, now);
            test_sleep_ms(2);
        } else {
            atomic_fetch_add(ok ? &l->reads_ok : &l->reads_failed, 1);
        }
        if (!ok) {
            pthread_mutex_lock(&l->mu);
            if (l->first_error[0] == '\0')
                snprintf(l->first_error, sizeof l->first_error, "%s", e.message);
            pthread_mutex_unlock(&l->mu);
        }
    }
    return NULL;
}

TEST(sentinel_failover_through_the_cluster)
{
    rset s;
    memset(&s, 0, sizeof s);
    s.script = getenv("CPOOL_TEST_REDIS_SCRIPT");
    const char *dir = getenv("CPOOL_CLUSTER_REDIS_DIR");
    const char *port = getenv("CPOOL_CLUSTER_REDIS_PORT");
    if (s.script == NULL || dir == NULL || port == NULL)
        FAIL("CPOOL_TEST_REDIS_SCRIPT, CPOOL_CLUSTER_REDIS_DIR and _PORT must be set");
    for (int i = 0; i < 5; i++) {
        snprintf(s.dir[i], sizeof s.dir[i], "%s/%s", dir, names[i]);
        s.port[i] = atoi(port) + i;
    }
    char primary_port[16];
    snprintf(primary_port, sizeof primary_port, "%d", s.port[0]);
    script(&s, "start", 0, NULL);
    script(&s, "replica-start", 1, primary_port);
    for (int i = 2; i < 5; i++)
        script(&s, "sentinel-start", i, primary_port);
    char v[128];
    WAIT_UNTIL((ask(s.port[2], v, sizeof v, "SENTINEL CKQUORUM %s", "cpool"),
                strncmp(v, "OK 3", 4) == 0),
               20000);

    char target[256];
    snprintf(target, sizeof target,
             "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/cpool", s.port[2],
             s.port[3], s.port[4]);
    cpool_options po;
    cpool_cluster_options o;
    test_drill_cluster_options(&po, &o);
    cpool_error e;
    ASSERT_OK_E(cpool_cluster_open(target, &o, &s.c, &e), &e);
    ASSERT_EQ(2, cpool_cluster_size(s.c)); /* the Sentinels named both */
    ASSERT_OK_E(cpool_cluster_wait(s.c, CPOOL_WANT_PRIMARY, 10000, &e), &e);
    ASSERT_OK_E(cpool_cluster_wait(s.c, CPOOL_WANT_REPLICA, 10000, &e), &e);
    cpool_endpoint_info in;
    ASSERT_OK(cpool_cluster_endpoint_info(s.c, 0, &in));
    ASSERT_EQ(CPOOL_ROLE_PRIMARY, in.role);

    load l;
    memset(&l, 0, sizeof l);
    l.s = &s;
    pthread_mutex_init(&l.mu, NULL);
    for (int i = 0; i < READERS + WRITERS; i++) {
        workers[i] = (worker){.l = &l, .writer = i >= READERS};
        ASSERT_EQ(0, pthread_create(&l.th[i], NULL, worker_main, &workers[i]));
    }
    test_sleep_ms(1000);
    ASSERT_GT(atomic_load(&l.writes_ok), 10);
    int64_t t_kill = test_now_ns();
    script(&s, "kill9", 0, NULL);
    while (!role_is(s.port[1], "master")) {
        if (test_now_ns() - t_kill > 30000000000LL)
            FAIL("the Sentinels did not promote the replica within 30 s");
        test_sleep_ms(5);
    }
    int64_t t_promoted = test_now_ns();
    atomic_store(&l.mark_ns, t_promoted);
    WAIT_UNTIL(atomic_load(&l.first_write_after_ns) != 0, 10000);
    test_sleep_ms(500);
    atomic_store(&l.stop, true);
    for (int i = 0; i < READERS + WRITERS; i++)
        pthread_join(l.th[i], NULL);
    double downtime_ms = (double)(atomic_load(&l.first_write_after_ns) - t_promoted) / 1e6;
    cpool_cluster_stats cs = {.struct_size = sizeof cs};
    ASSERT_OK(cpool_cluster_get_stats(s.c, &cs));
    printf("redis sentinel failover: primary killed; the Sentinels promoted the replica "
           "%.0f ms later (t0); first write through the cluster at t0 + %.0f ms; reads ok "
           "%llu (%llu retried), failed %llu; writes ok %llu, failed %llu (during the outage); "
           "max checkout or read %.0f ms; first error: %s\n",
           (double)(t_promoted - t_kill) / 1e6, downtime_ms,
           (unsigned long long)atomic_load(&l.reads_ok), (unsigned long long)cs.retries,
           (unsigned long long)atomic_load(&l.reads_failed),
           (unsigned long long)atomic_load(&l.writes_ok),
           (unsigned long long)atomic_load(&l.writes_failed),
           (double)atomic_load(&l.max_wait_ns) / 1e6, l.first_error);
    ASSERT_LE(downtime_ms, 1000.0);
    ASSERT_EQ(0, atomic_load(&l.reads_failed));
    ASSERT_LE(atomic_load(&l.max_wait_ns), 1250000000LL);
    ASSERT_OK(cpool_cluster_endpoint_info(s.c, 1, &in));
    ASSERT_EQ(CPOOL_ROLE_PRIMARY, in.role);
    WAIT_UNTIL(clients_named(s.port[1], "cpool") == (int)test_counts(in.pool).total, 5000);
    ASSERT_EQ(1, clients_named(s.port[1], "cpool-monitor"));
    cpool_cluster_close(s.c);
    pthread_mutex_destroy(&l.mu);
    for (int i = 4; i >= 0; i--)
        if (i != 0)
            script(&s, "stop", i, NULL);
}

TEST_MAIN()
