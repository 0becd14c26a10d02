/* test_cluster.c -- a cluster over in-memory servers that play a primary
 * and replicas (cpool_mem_set_server): selection by role, lag and round
 * trip, the spread over equal replicas, failover, a demoted and a stale
 * primary, a stopped replica, the error that names every endpoint, and
 * multi-host targets. Real servers: tests/pg/test_pg_cluster.c. */
#include "test.h"

#include <cpool/cpool_cluster.h>

#include <pthread.h>

#define MAXN 4

typedef struct topo_rec {
    pthread_mutex_t mu;
    cpool_topology_event ev[64];
    int n;
} topo_rec;

typedef struct tcluster {
    cpool_mem *mem[MAXN];
    cpool_mem_server sv[MAXN];
    cpool_cluster_endpoint ep[MAXN];
    char target[MAXN][32];
    cpool_cluster_options o;
    cpool_options po;
    topo_rec rec;
    cpool_cluster *c;
    int n;
} tcluster;

static void on_topo(const cpool_topology_event *ev, void *ctx)
{
    topo_rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->n < 64)
        r->ev[r->n++] = *ev;
    pthread_mutex_unlock(&r->mu);
}

static int topo_count(tcluster *t, cpool_topology_change type, size_t endpoint)
{
    pthread_mutex_lock(&t->rec.mu);
    int k = 0;
    for (int i = 0; i < t->rec.n; i++)
        k += t->rec.ev[i].type == type && t->rec.ev[i].endpoint == endpoint;
    pthread_mutex_unlock(&t->rec.mu);
    return k;
}

/* n servers: the first primary (epoch 1), the others replicas (lag 0). */
/* Exactly one such event: announced after the change is published, so
 * waited for. */
#define expect_one(t, type, ep)                                                \
    do {                                                                       \
        WAIT_UNTIL(topo_count(t, type, ep) >= 1, 5000);                        \
        ASSERT_EQ(1, topo_count(t, type, ep));                                 \
    } while (0)

static void tc_init(tcluster *t, int n)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->rec.mu, NULL);
    t->n = n;
    for (int i = 0; i < n; i++) {
        t->mem[i] = test_mem_create();
        t->sv[i] = (cpool_mem_server){.role = i == 0 ? CPOOL_ROLE_PRIMARY : CPOOL_ROLE_REPLICA,
                                      .epoch = i == 0 ? 1 : 0,
                                      .lag_ms = 0};
        cpool_mem_set_server(t->mem[i], &t->sv[i]);
        snprintf(t->target[i], sizeof t->target[i], "mem://server%d", i);
        t->ep[i] = (cpool_cluster_endpoint){.target = t->target[i],
                                            .connector = cpool_mem_connector(),
                                            .connector_ctx = t->mem[i]};
    }
    cpool_options_init(&t->po, sizeof t->po);
    t->po.ignore_env = true;
    t->po.max_pool_size = 4;
    t->po.backoff_base_ms = 0;
    cpool_cluster_options_init(&t->o, sizeof t->o);
    t->o.pool = &t->po;
    t->o.endpoints = t->ep;
    t->o.nendpoints = (size_t)n;
    t->o.heartbeat_ms = 100;
    t->o.min_heartbeat_ms = 10;
    t->o.check_timeout_ms = 200;
    t->o.on_topology = on_topo;
    t->o.topology_ctx = &t->rec;
    t->o.seed = 42;
}

static void tc_set(tcluster *t, int i)
{
    cpool_mem_set_server(t->mem[i], &t->sv[i]);
}

static void tc_open(tcluster *t)
{
    cpool_error e;
    ASSERT_OK_E(cpool_cluster_open(NULL, &t->o, &t->c, &e), &e);
}

static void tc_free(tcluster *t)
{
    cpool_cluster_close(t->c);
    for (int i = 0; i < t->n; i++)
        cpool_mem_destroy(t->mem[i]);
    pthread_mutex_destroy(&t->rec.mu);
}

static cpool_endpoint_info info_of(tcluster *t, size_t i)
{
    cpool_endpoint_info in;
    ASSERT_OK(cpool_cluster_endpoint_info(t->c, i, &in));
    return in;
}

/* Checks out with `want` and returns the endpoint it came from, checking
 * the lease straight back in; -1 with *rc set on failure. */
static int serve(tcluster *t, cpool_want want, int64_t timeout_ms, int64_t max_lag, int *rc,
                 cpool_error *e)
{
    cpool_cluster_checkout_opts o = {.struct_size = sizeof o,
                                     .want = want,
                                     .timeout_ms = timeout_ms,
                                     .max_lag_ms = max_lag};
    cpool_conn *conn = NULL;
    cpool_lease_origin from;
    *rc = cpool_cluster_checkout(t->c, &o, &conn, &from, e);
    if (*rc != 0)
        return -1;
    ASSERT_NOT_NULL(conn);
    ASSERT_TRUE(cpool_conn_pool(conn) == info_of(t, from.endpoint).pool);
    ASSERT_OK(cpool_cluster_checkin(t->c, conn, 0, NULL));
    return (int)from.endpoint;
}

static int serve_ok(tcluster *t, cpool_want want)
{
    int rc;
    cpool_error e;
    int i = serve(t, want, 5000, 0, &rc, &e);
    if (rc != 0)
        FAIL("checkout for %s failed: %s: %s", cpool_want_name(want), cpool_err_name(rc),
             e.message);
    return i;
}

/* Waits for the primary and leases it (5 s at most); *from when not NULL. */
static cpool_conn *lease_primary(tcluster *t, cpool_lease_origin *from)
{
    ASSERT_OK(cpool_cluster_wait(t->c, CPOOL_WANT_PRIMARY, 5000, NULL));
    cpool_cluster_checkout_opts o = {.struct_size = sizeof o, .want = CPOOL_WANT_PRIMARY,
                                     .timeout_ms = 5000};
    cpool_conn *lease = NULL;
    ASSERT_OK(cpool_cluster_checkout(t->c, &o, &lease, from, NULL));
    return lease;
}

/* Endpoint i's server turns into a replica (no epoch). */
static void make_replica(tcluster *t, int i)
{
    t->sv[i].role = CPOOL_ROLE_REPLICA;
    t->sv[i].epoch = 0;
    tc_set(t, i);
}

/* Endpoint i serves a read within 200 replica checkouts. */
static bool serves_a_read(tcluster *t, int i)
{
    for (int k = 0; k < 200; k++)
        if (serve_ok(t, CPOOL_WANT_REPLICA) == i)
            return true;
    return false;
}

TEST(selects_by_role)
{
    tcluster t;
    tc_init(&t, 3);
    tc_open(&t);
    ASSERT_OK(cpool_cluster_wait(t.c, CPOOL_WANT_PRIMARY, 5000, NULL));
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    for (int k = 0; k < 20; k++) {
        ASSERT_EQ(0, serve_ok(&t, CPOOL_WANT_PRIMARY));
        ASSERT_EQ(0, serve_ok(&t, CPOOL_WANT_PRIMARY_PREFERRED));
        int r = serve_ok(&t, CPOOL_WANT_REPLICA);
        ASSERT_TRUE(r == 1 || r == 2);
        r = serve_ok(&t, CPOOL_WANT_REPLICA_PREFERRED);
        ASSERT_TRUE(r == 1 || r == 2);
    }
    cpool_endpoint_info p = info_of(&t, 0);
    ASSERT_EQ(CPOOL_ROLE_PRIMARY, p.role);
    ASSERT_EQ(1, p.epoch);
    ASSERT_GE(p.rtt_ns, 0);
    ASSERT_EQ(40, p.selected);
    ASSERT_STR_EQ("mem:server0", p.address);
    expect_one(&t, CPOOL_TOPO_UP, 0);

    /* The replicas gone: replica_preferred falls back to the primary, and
     * replica fails, naming each endpoint and why. */
    for (int i = 1; i < 3; i++) {
        t.sv[i].down = true;
        tc_set(&t, i);
    }
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_DOWN &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_DOWN,
               5000);
    ASSERT_EQ(0, serve_ok(&t, CPOOL_WANT_REPLICA_PREFERRED));
    int rc;
    cpool_error e;
    ASSERT_EQ(-1, serve(&t, CPOOL_WANT_REPLICA, 100, 0, &rc, &e));
    ASSERT_RC(CPOOL_ENOENDPOINT, rc);
    ASSERT_STR_CONTAINS(e.message, "no endpoint for replica");
    ASSERT_STR_CONTAINS(e.message, "mem:server0 primary");
    ASSERT_STR_CONTAINS(e.message, "mem:server1 down (");
    ASSERT_STR_CONTAINS(e.message, "refused");
    ASSERT_STR_CONTAINS(e.message, "mem:server2 down");
    expect_one(&t, CPOOL_TOPO_DOWN, 1);
    /* and the primary gone too, primary_preferred has nothing left */
    t.sv[0].down = true;
    tc_set(&t, 0);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_DOWN, 5000);
    ASSERT_EQ(-1, serve(&t, CPOOL_WANT_PRIMARY_PREFERRED, 50, 0, &rc, &e));
    ASSERT_RC(CPOOL_ENOENDPOINT, rc);
    ASSERT_STR_EQ("CPOOL_ENOENDPOINT", cpool_err_name(CPOOL_ENOENDPOINT));
    tc_free(&t);
}

/* Equal replicas share the reads within 10 % of even; the slow one (a
 * round trip beyond the latency window) gets none. */
TEST(spread_even_and_latency_window)
{
    tcluster t;
    tc_init(&t, 4);
    t.sv[3].rtt_us = 60000; /* 60 ms: out of a 15 ms window */
    tc_set(&t, 3);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 3).state == CPOOL_ENDPOINT_UP,
               5000);
    int hits[MAXN] = {0};
    for (int k = 0; k < 2000; k++)
        hits[serve_ok(&t, CPOOL_WANT_REPLICA)]++;
    ASSERT_EQ(0, hits[0]);
    ASSERT_EQ(0, hits[3]);
    ASSERT_GE(hits[1], 900);
    ASSERT_GE(hits[2], 900);
    ASSERT_GE(info_of(&t, 3).rtt_ns, 50000000);
    /* Any role: the primary joins the replicas in the window. */
    int any[MAXN] = {0};
    for (int k = 0; k < 600; k++)
        any[serve_ok(&t, CPOOL_WANT_ANY)]++;
    for (int i = 0; i < 3; i++)
        ASSERT_GE(any[i], 120);
    ASSERT_EQ(0, any[3]);
    tc_free(&t);
}

/* A slow first answer on a new monitor connection (a new backend's
 * start-up) does not start the round-trip average alone: the endpoint stays
 * in the latency window and serves its share. */
TEST(slow_first_answer_does_not_set_the_round_trip)
{
    tcluster t;
    tc_init(&t, 3);
    t.o.heartbeat_ms = 60000; /* no later check to average it away */
    t.sv[2].first_rtt_us = 80000; /* 80 ms, against a 15 ms window */
    tc_set(&t, 2);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    ASSERT_LT(info_of(&t, 2).rtt_ns, 15000000);
    int hits[MAXN] = {0};
    for (int k = 0; k < 400; k++)
        hits[serve_ok(&t, CPOOL_WANT_REPLICA)]++;
    ASSERT_GE(hits[2], 120);
    ASSERT_GE(hits[1], 120);
    tc_free(&t);
}

/* Of two candidates the less busy is taken: with one replica's
 * connections all leased, the other serves. */
TEST(less_busy_of_two)
{
    tcluster t;
    tc_init(&t, 3);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    cpool *busy = info_of(&t, 1).pool;
    cpool_conn *held[3];
    for (int i = 0; i < 3; i++)
        held[i] = test_checkout(busy);
    for (int k = 0; k < 50; k++)
        ASSERT_EQ(2, serve_ok(&t, CPOOL_WANT_REPLICA));
    for (int i = 0; i < 3; i++)
        test_checkin(busy, held[i], 0);
    tc_free(&t);
}

TEST(max_lag_avoids_a_lagging_replica)
{
    tcluster t;
    tc_init(&t, 3);
    t.sv[2].lag_ms = 5000;
    tc_set(&t, 2);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    ASSERT_EQ(5000, info_of(&t, 2).lag_ms);
    int rc;
    cpool_error e;
    for (int k = 0; k < 100; k++)
        ASSERT_EQ(1, serve(&t, CPOOL_WANT_REPLICA, 1000, 1000, &rc, &e));
    t.sv[1].lag_ms = -1; /* unknown lag does not pass a limit either */
    tc_set(&t, 1);
    WAIT_UNTIL(info_of(&t, 1).lag_ms == -1, 5000);
    ASSERT_EQ(-1, serve(&t, CPOOL_WANT_REPLICA, 50, 1000, &rc, &e));
    ASSERT_RC(CPOOL_ENOENDPOINT, rc);
    ASSERT_STR_CONTAINS(e.message, "mem:server2 lag 5000 ms > 1000");
    /* without a limit both serve */
    int r = serve(&t, CPOOL_WANT_REPLICA, 1000, 0, &rc, &e);
    ASSERT_TRUE(r == 1 || r == 2);
    tc_free(&t);
}

typedef struct writer {
    tcluster *t;
    int64_t timeout_ms;
    int rc;
    int endpoint;
    cpool_error e;
    pthread_t th;
} writer;

static void *write_main(void *arg)
{
    writer *w = arg;
    w->endpoint = serve(w->t, CPOOL_WANT_PRIMARY, w->timeout_ms, 0, &w->rc, &w->e);
    return NULL;
}

/* The primary dies: a write waits; a replica is promoted (a higher
 * epoch) and the waiting write goes there. Reads go on meanwhile. */
TEST(failover_to_a_promoted_replica)
{
    tcluster t;
    tc_init(&t, 3);
    tc_open(&t);
    ASSERT_OK(cpool_cluster_wait(t.c, CPOOL_WANT_PRIMARY, 5000, NULL));
    ASSERT_EQ(0, serve_ok(&t, CPOOL_WANT_PRIMARY));
    t.sv[0].down = true;
    tc_set(&t, 0);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_DOWN, 5000);
    writer w = {.t = &t, .timeout_ms = 10000};
    ASSERT_EQ(0, pthread_create(&w.th, NULL, write_main, &w));
    for (int k = 0; k < 50; k++) {
        int r = serve_ok(&t, CPOOL_WANT_REPLICA);
        ASSERT_TRUE(r == 1 || r == 2);
    }
    t.sv[1].role = CPOOL_ROLE_PRIMARY;
    t.sv[1].epoch = 2;
    tc_set(&t, 1);
    pthread_join(w.th, NULL);
    ASSERT_OK_E(w.rc, &w.e);
    ASSERT_EQ(1, w.endpoint);
    expect_one(&t, CPOOL_TOPO_ROLE, 1);
    /* The old primary comes back as it was (epoch 1): stale, never written. */
    t.sv[0].down = false;
    tc_set(&t, 0);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_STALE, 5000);
    for (int k = 0; k < 50; k++)
        ASSERT_EQ(1, serve_ok(&t, CPOOL_WANT_PRIMARY));
    ASSERT_EQ(CPOOL_ROLE_PRIMARY, info_of(&t, 0).role);
    /* ... until it rejoins as a replica, and then serves reads. */
    make_replica(&t, 0);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_UP, 5000);
    ASSERT_TRUE(serves_a_read(&t, 0));
    tc_free(&t);
}

/* Two primaries at once: the older epoch is stale at once -- out of
 * selection, its pool cleared and its leases interrupted. */
TEST(older_of_two_primaries_is_stale_and_interrupted)
{
    tcluster t;
    tc_init(&t, 2);
    tc_open(&t);
    cpool_lease_origin from;
    cpool_conn *lease = lease_primary(&t, &from);
    ASSERT_EQ(0, from.endpoint);
    ASSERT_EQ(CPOOL_ROLE_PRIMARY, from.role);
    t.sv[1].role = CPOOL_ROLE_PRIMARY;
    t.sv[1].epoch = 7;
    tc_set(&t, 1);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_STALE, 5000);
    WAIT_UNTIL(cpool_mem_conn_interrupted(cpool_conn_native(lease)), 5000);
    expect_one(&t, CPOOL_TOPO_STALE, 0);
    ASSERT_OK(cpool_cluster_checkin(t.c, lease, CPOOL_CHECKIN_BROKEN, NULL));
    for (int k = 0; k < 50; k++)
        ASSERT_EQ(1, serve_ok(&t, CPOOL_WANT_PRIMARY));
    tc_free(&t);
}

/* A primary demoted in place: its pool is cleared with the leases
 * interrupted, and no write goes there again. */
TEST(demoted_primary_serves_no_write)
{
    tcluster t;
    tc_init(&t, 2);
    tc_open(&t);
    cpool_conn *lease = lease_primary(&t, NULL);
    uint64_t gen = info_of(&t, 0).pool != NULL ? test_counts(info_of(&t, 0).pool).generation : 0;
    make_replica(&t, 0);
    WAIT_UNTIL(cpool_mem_conn_interrupted(cpool_conn_native(lease)), 5000);
    ASSERT_EQ(CPOOL_ROLE_REPLICA, info_of(&t, 0).role);
    ASSERT_GT(test_counts(info_of(&t, 0).pool).generation, gen);
    expect_one(&t, CPOOL_TOPO_ROLE, 0);
    ASSERT_OK(cpool_cluster_checkin(t.c, lease, 0, NULL));
    int rc;
    cpool_error e;
    ASSERT_EQ(-1, serve(&t, CPOOL_WANT_PRIMARY, 100, 0, &rc, &e));
    ASSERT_RC(CPOOL_ENOENDPOINT, rc);
    /* it still serves reads: the pool was made ready again */
    ASSERT_TRUE(serves_a_read(&t, 0));
    tc_free(&t);
}

/* A stopped replica: its checks time out, it is taken out within a
 * heartbeat and a check timeout, and no read fails meanwhile. */
TEST(stopped_replica_is_left_out)
{
    tcluster t;
    tc_init(&t, 3);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    /* warm both replicas' pools */
    for (int k = 0; k < 20; k++)
        serve_ok(&t, CPOOL_WANT_REPLICA);
    t.sv[2].stopped = true;
    tc_set(&t, 2);
    WAIT_UNTIL(info_of(&t, 2).state == CPOOL_ENDPOINT_DOWN, 5000);
    cpool_endpoint_info in = info_of(&t, 2);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, in.last_error.kind);
    for (int k = 0; k < 100; k++)
        ASSERT_EQ(1, serve_ok(&t, CPOOL_WANT_REPLICA));
    tc_free(&t);
}

/* A checkout that meets a pool cleared under it (its server just died,
 * before the monitor saw it) goes on to another endpoint. */
TEST(a_failed_endpoint_is_skipped_within_the_checkout)
{
    tcluster t;
    tc_init(&t, 3);
    t.o.heartbeat_ms = 600000; /* the monitors look only when asked */
    t.o.min_heartbeat_ms = 600000;
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    t.sv[2].down = true; /* refused: unseen by the monitor for now */
    tc_set(&t, 2);
    for (int k = 0; k < 100; k++)
        ASSERT_EQ(1, serve_ok(&t, CPOOL_WANT_REPLICA));
    ASSERT_EQ(CPOOL_ENDPOINT_UP, info_of(&t, 2).state);
    tc_free(&t);
}

typedef struct canceller {
    cpool_cancel *token;
    int delay_ms;
} canceller;

static void *cancel_main(void *arg)
{
    canceller *k = arg;
    test_sleep_ms(k->delay_ms);
    cpool_cancel_trigger(k->token);
    return NULL;
}

/* A checkout waiting for the topology (no endpoint can serve) ends at once
 * when its token is triggered, and a deadline of its own ends it too. */
TEST(waiting_for_the_topology_is_cancellable_and_bounded)
{
    tcluster t;
    tc_init(&t, 2);
    t.sv[0].down = true;
    tc_set(&t, 0);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_DOWN, 5000);
    cpool_cancel *token = NULL;
    ASSERT_OK(cpool_cancel_new(&token));
    canceller k = {.token = token, .delay_ms = 100};
    pthread_t th;
    ASSERT_EQ(0, pthread_create(&th, NULL, cancel_main, &k));
    cpool_cluster_checkout_opts o = {.struct_size = sizeof o, .want = CPOOL_WANT_PRIMARY,
                                     .timeout_ms = 10000, .cancel = token};
    cpool_conn *conn = NULL;
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECANCELED, cpool_cluster_checkout(t.c, &o, &conn, NULL, &e));
    int64_t took = test_now_ms() - t0;
    pthread_join(th, NULL);
    ASSERT_GE(took, 90);
    ASSERT_LT(took, 2000); /* 10 ms slices; scheduling under load */
    ASSERT_NULL(conn);
    cpool_cancel_free(token);
    /* the deadline: 150 ms, give or take a slice and scheduling */
    int rc;
    t0 = test_now_ms();
    ASSERT_EQ(-1, serve(&t, CPOOL_WANT_PRIMARY, 150, 0, &rc, &e));
    ASSERT_RC(CPOOL_ENOENDPOINT, rc);
    took = test_now_ms() - t0;
    ASSERT_GE(took, 145);
    ASSERT_LT(took, 1500);
    tc_free(&t);
}

typedef struct flaky {
    _Atomic int calls;
    int fail_first;        /* calls that fail */
    bool final;            /* ... without RetryableError */
    size_t endpoints[8];
    tcluster *t;
} flaky;

static int flaky_fn(cpool_conn *lease, void *arg, cpool_error *err)
{
    flaky *f = arg;
    int n = atomic_fetch_add(&f->calls, 1);
    cpool *p = cpool_conn_pool(lease);
    for (size_t i = 0; i < (size_t)f->t->n; i++)
        if (info_of(f->t, i).pool == p && n < 8)
            f->endpoints[n] = i;
    ASSERT_TRUE(cpool_run_deadline_ms() > 0); /* the run's deadline is known inside */
    if (n < f->fail_first) {
        cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_NETWORK, 0,
                        "dropped (attempt %d)", n);
        if (!f->final)
            err->labels |= CPOOL_LABEL_RETRYABLE;
        return CPOOL_EIO;
    }
    return 0;
}

/* cpool_cluster_run retries a RetryableError on a new selection, within its
 * deadline and retries, and counts what it did. */
TEST(run_retries_on_a_new_selection)
{
    tcluster t;
    tc_init(&t, 3);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 1).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 2).state == CPOOL_ENDPOINT_UP,
               5000);
    flaky f = {.fail_first = 2, .t = &t};
    cpool_cluster_run_opts o = {.struct_size = sizeof o, .want = CPOOL_WANT_REPLICA,
                                .timeout_ms = 5000, .retries = 2, .retry_delay_ms = 1};
    cpool_error e;
    ASSERT_OK_E(cpool_cluster_run(t.c, &o, flaky_fn, &f, &e), &e);
    ASSERT_EQ(3, atomic_load(&f.calls));
    for (int i = 0; i < 3; i++)
        ASSERT_TRUE(f.endpoints[i] == 1 || f.endpoints[i] == 2);
    cpool_cluster_stats cs = {.struct_size = sizeof cs};
    ASSERT_OK(cpool_cluster_get_stats(t.c, &cs));
    ASSERT_EQ(2, cs.retries);
    ASSERT_EQ(1, cs.retries_succeeded);
    ASSERT_EQ(3, cs.checkouts_ok);
    /* the connections the failures left in doubt were closed */
    cpool_stats s1 = {.struct_size = sizeof s1}, s2 = {.struct_size = sizeof s2};
    ASSERT_OK(cpool_get_stats(info_of(&t, 1).pool, &s1));
    ASSERT_OK(cpool_get_stats(info_of(&t, 2).pool, &s2));
    ASSERT_EQ(2, s1.closed[CPOOL_CLOSE_ERROR] + s2.closed[CPOOL_CLOSE_ERROR]);
    /* retries run out */
    flaky g = {.fail_first = 10, .t = &t};
    o.retries = 1;
    ASSERT_RC(CPOOL_EIO, cpool_cluster_run(t.c, &o, flaky_fn, &g, &e));
    ASSERT_STR_CONTAINS(e.message, "dropped (attempt 1)");
    ASSERT_OK(cpool_cluster_get_stats(t.c, &cs));
    ASSERT_EQ(1, cs.retries_exhausted);
    /* a failure that is not retryable is not retried */
    flaky h = {.fail_first = 10, .final = true, .t = &t};
    o.retries = 5;
    ASSERT_RC(CPOOL_EIO, cpool_cluster_run(t.c, &o, flaky_fn, &h, &e));
    ASSERT_EQ(1, atomic_load(&h.calls));
    tc_free(&t);
}

typedef struct chaos {
    tcluster *t;
    _Atomic bool stop;
    _Atomic uint64_t ok, no_endpoint, timeouts;
    _Atomic int64_t worst_over_ns; /* the most a checkout overran its timeout */
    _Atomic int bad_rc;
    _Atomic uint32_t seed; /* handed to the next worker started */
} chaos;

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void *chaos_worker(void *arg)
{
    chaos *ch = arg;
    uint32_t seed = atomic_exchange(&ch->seed, 0);
    if (seed == 0)
        seed = 7;
    while (!atomic_load(&ch->stop)) {
        cpool_cluster_checkout_opts o = {.struct_size = sizeof o,
                                         .want = (cpool_want)(rnd(&seed) % 5),
                                         .timeout_ms = 20 + rnd(&seed) % 100,
                                         .max_lag_ms = rnd(&seed) % 3 == 0 ? 500 : 0};
        cpool_conn *conn = NULL;
        cpool_lease_origin from;
        int64_t t0 = test_now_ns();
        int rc = cpool_cluster_checkout(ch->t->c, &o, &conn, &from, NULL);
        int64_t over = test_now_ns() - t0 - o.timeout_ms * 1000000, w = atomic_load(&ch->worst_over_ns);
        while (over > w && !atomic_compare_exchange_weak(&ch->worst_over_ns, &w, over))
            ;
        if (rc == 0) {
            atomic_fetch_add(&ch->ok, 1);
            if (cpool_conn_pool(conn) != info_of(ch->t, from.endpoint).pool)
                atomic_store(&ch->bad_rc, 1000);
            if (rnd(&seed) % 4 == 0)
                test_sleep_ms(1);
            cpool_cluster_checkin(ch->t->c, conn, rnd(&seed) % 10 == 0 ? CPOOL_CHECKIN_BROKEN : 0,
                                  NULL);
        } else if (rc == CPOOL_ENOENDPOINT) {
            atomic_fetch_add(&ch->no_endpoint, 1);
        } else if (rc == CPOOL_ETIMEDOUT) {
            atomic_fetch_add(&ch->timeouts, 1);
        } else {
            atomic_store(&ch->bad_rc, rc);
        }
    }
    return NULL;
}

/* Checkouts of every kind race a topology that keeps changing: roles
 * swapped (epochs growing), servers refusing, stopped, slow, lagging.
 * Every checkout ends by its deadline with a lease from the pool it names,
 * CPOOL_ENOENDPOINT or CPOOL_ETIMEDOUT; nothing else, and no race (TSan). */
TEST(chaos_checkouts_against_a_changing_topology)
{
    tcluster t;
    tc_init(&t, 4);
    t.o.heartbeat_ms = 20;
    t.o.min_heartbeat_ms = 5;
    t.o.check_timeout_ms = 30;
    tc_open(&t);
    chaos ch = {.t = &t};
    pthread_t th[6];
    for (int i = 0; i < 6; i++) {
        atomic_store(&ch.seed, 2463534242u + (uint32_t)i * 977u);
        ASSERT_EQ(0, pthread_create(&th[i], NULL, chaos_worker, &ch));
        WAIT_UNTIL(atomic_load(&ch.seed) == 0, 5000);
    }
    uint32_t seed = 99;
    uint64_t epoch = 1;
    int64_t end = test_now_ns() + 3000000000LL;
    while (test_now_ns() < end) {
        int i = (int)(rnd(&seed) % 4);
        cpool_mem_server *sv = &t.sv[i];
        switch (rnd(&seed) % 6) {
        case 0: /* promote i, demote the others */
            for (int k = 0; k < 4; k++) {
                t.sv[k].role = k == i ? CPOOL_ROLE_PRIMARY : CPOOL_ROLE_REPLICA;
                tc_set(&t, k);
            }
            sv->epoch = ++epoch;
            break;
        case 1: sv->down = !sv->down; break;
        case 2: sv->stopped = rnd(&seed) % 4 == 0; break;
        case 3: sv->rtt_us = rnd(&seed) % 3 == 0 ? 20000 : 0; break;
        case 4: sv->lag_ms = (int64_t)(rnd(&seed) % 1000); break;
        default: sv->role = CPOOL_ROLE_UNKNOWN; break;
        }
        tc_set(&t, i);
        test_sleep_ms(5 + (int)(rnd(&seed) % 20));
    }
    atomic_store(&ch.stop, true);
    for (int i = 0; i < 6; i++)
        pthread_join(th[i], NULL);
    printf("chaos: %llu leases, %llu no endpoint, %llu timeouts; worst overrun %.1f ms\n",
           (unsigned long long)ch.ok, (unsigned long long)ch.no_endpoint,
           (unsigned long long)ch.timeouts, (double)ch.worst_over_ns / 1e6);
    ASSERT_EQ(0, atomic_load(&ch.bad_rc));
    ASSERT_GT(atomic_load(&ch.ok), 100);
    ASSERT_LT(atomic_load(&ch.worst_over_ns), 1000000000LL); /* scheduling noise, TSan */
    /* all well again: each endpoint's pool serves, and the counts hold */
    for (int k = 0; k < 4; k++) {
        t.sv[k] = (cpool_mem_server){.role = k == 0 ? CPOOL_ROLE_PRIMARY : CPOOL_ROLE_REPLICA,
                                     .epoch = k == 0 ? epoch + 1 : 0};
        tc_set(&t, k);
    }
    WAIT_UNTIL(info_of(&t, 0).role == CPOOL_ROLE_PRIMARY &&
                   info_of(&t, 0).state == CPOOL_ENDPOINT_UP,
               5000);
    ASSERT_EQ(0, serve_ok(&t, CPOOL_WANT_PRIMARY));
    for (int k = 0; k < 4; k++) {
        cpool_counts n = test_counts(info_of(&t, (size_t)k).pool);
        ASSERT_COUNTS_CONSISTENT(n);
        ASSERT_EQ(0, n.in_use);
    }
    tc_free(&t);
}

TEST(multi_host_targets_and_options)
{
    cpool_cluster *c = NULL;
    cpool_error e;
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    o.heartbeat_ms = 5; /* out of range */
    ASSERT_RC(CPOOL_EINVAL, cpool_cluster_open("mem://a,b", &o, &c, &e));
    ASSERT_STR_CONTAINS(e.message, "heartbeat_ms");
    ASSERT_NULL(c);
    ASSERT_RC(CPOOL_EINVAL, cpool_cluster_open(NULL, NULL, &c, &e));
    ASSERT_RC(CPOOL_EINVAL, cpool_cluster_open("mem://a,,b", NULL, &c, &e));
    ASSERT_STR_CONTAINS(e.message, "empty host");
    ASSERT_RC(CPOOL_EINVAL,
              cpool_cluster_open("mem://a,b?target_session_attrs=bogus", NULL, &c, &e));
    ASSERT_STR_CONTAINS(e.message, "target_session_attrs");

    ASSERT_OK_E(cpool_cluster_open("mem://u:secret@a,b,c/x?target_session_attrs=prefer-standby&"
                                   "max_pool_size=3",
                                   NULL, &c, &e),
                &e);
    ASSERT_EQ(3, cpool_cluster_size(c));
    const char *want[] = {"mem:u:***@a/x", "mem:u:***@b/x", "mem:u:***@c/x"};
    for (size_t i = 0; i < 3; i++) {
        cpool_endpoint_info in;
        ASSERT_OK(cpool_cluster_endpoint_info(c, i, &in));
        ASSERT_STR_EQ(want[i], in.address);
        cpool_stats s = {.struct_size = sizeof s};
        ASSERT_OK(cpool_get_stats(in.pool, &s));
        ASSERT_EQ(3, s.max_pool_size);
    }
    /* mem servers have no role: only "any" is served, and the default
     * want came from target_session_attrs (replica_preferred). */
    cpool_conn *conn = NULL;
    cpool_cluster_checkout_opts any = {.struct_size = sizeof any, .want = CPOOL_WANT_ANY,
                                       .timeout_ms = 5000};
    ASSERT_OK_E(cpool_cluster_checkout(c, &any, &conn, NULL, &e), &e);
    ASSERT_OK(cpool_cluster_checkin(c, conn, 0, NULL));
    ASSERT_RC(CPOOL_ENOENDPOINT, cpool_cluster_checkout(c, &(cpool_cluster_checkout_opts){
                                                                 .struct_size = sizeof any,
                                                                 .want = CPOOL_WANT_PRIMARY,
                                                                 .timeout_ms = 50},
                                                        &conn, NULL, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown");
    ASSERT_TRUE(strstr(e.message, "secret") == NULL);
    /* a lease of another pool is refused */
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *other = test_checkout(f.pool);
    ASSERT_RC(CPOOL_EFOREIGN, cpool_cluster_checkin(c, other, 0, NULL));
    test_checkin(f.pool, other, 0);
    test_fixture_free(&f);
    cpool_cluster_close(c);

    cpool_want w;
    ASSERT_OK(cpool_want_parse("read-write", &w));
    ASSERT_EQ(CPOOL_WANT_PRIMARY, w);
    ASSERT_OK(cpool_want_parse("replica_preferred", &w));
    ASSERT_EQ(CPOOL_WANT_REPLICA_PREFERRED, w);
    ASSERT_RC(CPOOL_EINVAL, cpool_want_parse("master", &w));
}

TEST(prometheus_has_every_endpoint)
{
    tcluster t;
    tc_init(&t, 2);
    tc_open(&t);
    WAIT_UNTIL(info_of(&t, 0).state == CPOOL_ENDPOINT_UP &&
                   info_of(&t, 1).state == CPOOL_ENDPOINT_UP,
               5000);
    serve_ok(&t, CPOOL_WANT_REPLICA);
    char buf[65536];
    size_t n = cpool_cluster_prometheus(t.c, "db", buf, sizeof buf);
    ASSERT_LT(n, sizeof buf);
    ASSERT_STR_CONTAINS(buf, "db_client_cluster_endpoint_up{cluster=\"db\",endpoint=\"mem:server1\"} 1");
    ASSERT_STR_CONTAINS(
        buf, "db_client_cluster_endpoint_role{cluster=\"db\",endpoint=\"mem:server0\",role=\"primary\"} 1");
    ASSERT_STR_CONTAINS(buf,
                        "db_client_cluster_endpoint_selected_total{cluster=\"db\",endpoint=\"mem:server1\"} 1");
    ASSERT_STR_CONTAINS(buf, "pool=\"mem:server1\"");
    /* each family's HELP once */
    const char *h = "# HELP db_client_connection_count ";
    const char *first = strstr(buf, h);
    ASSERT_NOT_NULL(first);
    ASSERT_NULL(strstr(first + 1, h));
    ASSERT_EQ(n, cpool_cluster_prometheus(t.c, "db", NULL, 0));
    tc_free(&t);
}

TEST_MAIN()
