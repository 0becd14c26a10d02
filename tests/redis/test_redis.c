/* test_redis.c -- the Redis connector against a real server, through real
 * pools. The fixture server (scripts/redis-server.sh) listens on
 * 127.0.0.1:CPOOL_TEST_REDIS_PORT and on a unix socket, with a password and
 * an ACL user. Cases may run in parallel with each other, so each uses its
 * own keys and client names and touches only its own connections. */
#include "redis_fixture.c"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static int port(void) { return atoi(rt_env("CPOOL_TEST_REDIS_PORT")); }
static const char *password(void) { return rt_env("CPOOL_TEST_REDIS_PASSWORD"); }
static const char *base_uri(void) { return rt_env("CPOOL_TEST_REDIS_URI"); }
static redisContext *side(void) { return rt_side(port(), password()); }

/* The fixture's URI plus query parameters (`query` starts without '?'). */
static void uri_with(char *buf, size_t size, const char *query)
{
    int n = snprintf(buf, size, "%s%s%s", base_uri(), strchr(base_uri(), '?') ? "&" : "?",
                     query);
    if (n < 0 || (size_t)n >= size)
        FAIL("uri too long");
}

/* A pool on the fixture server; *rec (may be NULL) records its events. */
static cpool *pool_for(const char *target, test_recorder *rec)
{
    cpool_options o;
    rt_options(&o, target, rec);
    return rt_pool(&o);
}

static void expect_closed_with_error(test_recorder *rec, uint64_t id)
{
    test_event ev;
    if (!test_rec_find_closed(rec, id, &ev))
        FAIL("connection %llu was not closed", (unsigned long long)id);
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
}

/* ------------------------------------------------------------------ basics */

TEST(commands_reuse_connection)
{
    char key[64], val[64], name[64], target[512];
    rt_key(key, sizeof key, "reuse");
    rt_fmt(name, "reuse-%ld", (long)getpid());
    uri_with(target, sizeof target, "client_name=");
    strncat(target, name, sizeof target - strlen(target) - 1);
    cpool *p = pool_for(target, NULL);

    cpool_conn *a = test_checkout(p);
    redisContext *c = cpool_redis_context(a);
    ASSERT_TRUE(c == cpool_conn_native(a));
    rt_ok(c, "SET %s hello", key);
    rt_get(c, key, val);
    ASSERT_STR_EQ("hello", val);
    uint64_t id = cpool_conn_id(a);
    long long server_id = rt_client_id(c);
    test_checkin(p, a, 0);

    for (int i = 0; i < 5; i++) {
        cpool_conn *b = test_checkout(p);
        ASSERT_EQ(id, cpool_conn_id(b));
        ASSERT_EQ(server_id, rt_client_id(cpool_redis_context(b)));
        rt_get(cpool_redis_context(b), key, val);
        ASSERT_STR_EQ("hello", val);
        test_checkin(p, b, 0);
    }
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_EQ(1, s.connections_created);
    ASSERT_EQ(5, s.checkouts_reused);

    /* The pool's connection carries the client name, so it can be told
     * apart on the server; the address has no password. */
    redisContext *sc = side();
    ASSERT_EQ(1, rt_count_named(sc, name));
    char addr[64];
    rt_fmt(addr, "127.0.0.1:%d", port());
    ASSERT_STR_EQ(addr, cpool_address(p));
    rt_ok(sc, "DEL %s", key);
    cpool_destroy(p);
    WAIT_UNTIL(rt_count_named(sc, name) == 0, 2000);
    redisFree(sc);
}

/* Parses `target` and expects CPOOL_EINVAL with a message that contains
 * every string of `want` and none of `not`. */
static void expect_rejected(const char *target, const char *want1, const char *want2,
                            const char *not_there)
{
    void *ctx = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_redis_connector()->ctx_new(target, &ctx, &e);
    if (rc != CPOOL_EINVAL)
        FAIL("ctx_new(%s): expected CPOOL_EINVAL, got %s", target, cpool_err_name(rc));
    ASSERT_NULL(ctx);
    ASSERT_EQ(CPOOL_EINVAL, e.code);
    if (want1 != NULL)
        ASSERT_STR_CONTAINS(e.message, want1);
    if (want2 != NULL)
        ASSERT_STR_CONTAINS(e.message, want2);
    if (not_there != NULL && strstr(e.message, not_there) != NULL)
        FAIL("message for %s shows '%s': %s", target, not_there, e.message);
}

static void expect_address(const char *target, const char *want)
{
    void *ctx = rt_ctx(target);
    char buf[128];
    ASSERT_OK(cpool_redis_connector()->address(ctx, target, buf, sizeof buf));
    ASSERT_STR_EQ(want, buf);
    rt_ctx_free(ctx);
}

TEST(target_parsing)
{
    const cpool_connector *cx = cpool_redis_connector();
    ASSERT_STR_EQ("redis", cx->name);
    ASSERT_EQ(CPOOL_CONNECTOR_ABI, cx->abi_version);
    ASSERT_TRUE(cpool_connector_for("redis://h:1/0") == cx);
    ASSERT_TRUE(cpool_connector_for("REDIS://h") == cx);
    ASSERT_TRUE(cpool_connector_for("unix:///tmp/r.sock") == cx);
    ASSERT_TRUE(cpool_connector_for("redis+unix:///tmp/r.sock") == cx);
    ASSERT_NULL(cpool_connector_for("rediss://h:6379"));

    expect_address("redis://:p%40ss@127.0.0.1:6380/2?command_timeout_ms=0&reset=tracked",
                   "127.0.0.1:6380");
    expect_address("redis://u:p@[::1]:7000", "[::1]:7000");
    expect_address("redis://localhost", "localhost:6379");
    expect_address("redis://", "127.0.0.1:6379");
    expect_address("redis://h/3?db=3&client_name=x&reset_timeout_ms=5", "h:6379");
    expect_address("unix:///tmp/x.sock?db=3", "/tmp/x.sock");
    expect_address("redis+unix://:pw@/tmp/y%20z.sock?user=u", "/tmp/y z.sock");
    expect_address("unix:///tmp/z.sock?user=u&password=p", "/tmp/z.sock");

    /* Ambiguous user info is refused without echoing it. */
    expect_rejected("redis://hunter2@h:6379", "':'", NULL, "hunter2");
    expect_rejected("redis://h:0", "port", "1..65535", NULL);
    expect_rejected("redis://h:99999", "port", "99999", NULL);
    expect_rejected("redis://h:63a", "port", NULL, NULL);
    expect_rejected("redis://h/abc", "database number", NULL, NULL);
    expect_rejected("redis://h/2?db=3", "db=3", "disagrees", NULL);
    expect_rejected("redis://h?db=-1", "db = \"-1\"", "allowed 0..2147483647", NULL);
    expect_rejected("redis://h?command_timeout_ms=abc", "command_timeout_ms = \"abc\"",
                    "0..86400000", NULL);
    expect_rejected("redis://h?command_timeout_ms=%205", "command_timeout_ms", "0..86400000",
                    NULL);
    expect_rejected("redis://h?command_timeout_ms=0x10", "command_timeout_ms", "0..86400000",
                    NULL);
    expect_rejected("redis://h?reset_timeout_ms=0", "reset_timeout_ms = \"0\"", "1..86400000",
                    NULL);
    expect_rejected("redis://h?reset=sometimes", "reset = \"sometimes\"", "tracked, always",
                    NULL);
    expect_rejected("redis://h?client_name=a%20b", "client_name = \"a b\"", "printable", NULL);
    char long_pw[600] = "redis://h?password=";
    memset(long_pw + strlen(long_pw), 'q', 540);
    expect_rejected(long_pw, "password = \"***\"", "0..511 bytes", "qqqq");
    expect_rejected("redis://h?user=u", "without a password", NULL, NULL);
    expect_rejected("redis://u:secret1@h?user=v", "user", "once", "secret1");
    expect_rejected("redis://:secret2@h?password=x", "password", "once", "secret2");
    expect_rejected("redis://:secret3@h?foo=bar", "\"foo\"", "\"bar\"", "secret3");
    expect_rejected("redis://h?passwd=hunter3", "\"passwd\"", "allowed: db", "hunter3");
    expect_rejected("redis://h:1?db=%zz", "malformed", NULL, NULL);
    expect_rejected("redis://[::1:6379", "']'", NULL, NULL);
    expect_rejected("redis://::1:6379", "brackets", NULL, NULL);
    expect_rejected("unix://host/tmp/r.sock", "no host", NULL, NULL);
    expect_rejected("unix://", "absolute socket path", NULL, NULL);
    expect_rejected("rediss://h", "TLS", NULL, NULL);
    expect_rejected("http://h", "redis://", NULL, NULL);
}

TEST(unknown_parameter_rejected_at_create)
{
    char target[512];
    uri_with(target, sizeof target, "socket_timeout=5");
    cpool_options o;
    rt_options(&o, target, NULL);
    cpool *p = (cpool *)&o; /* must be reset to NULL */
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_NULL(p);
    ASSERT_STR_CONTAINS(e.message, "socket_timeout");
    ASSERT_STR_CONTAINS(e.message, "\"5\"");
    ASSERT_STR_CONTAINS(e.message, "command_timeout_ms");
    if (strstr(e.message, password()) != NULL)
        FAIL("message shows the password: %s", e.message);

    /* The pool's own options are taken out before the connector sees the
     * query, so they are not "unknown". */
    uri_with(target, sizeof target, "maxPoolSize=3&connect_timeout_ms=2000&db=0");
    rt_options(&o, target, NULL);
    p = rt_pool(&o);
    cpool_conn *c = test_checkout(p);
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

/* ------------------------------------------------------------------ auth */

TEST(auth_acl_user)
{
    const char *acl = rt_env("CPOOL_TEST_REDIS_ACL_URI");
    cpool *p = pool_for(acl, NULL);
    cpool_conn *c = test_checkout(p);
    redisReply *r = rt_cmd(cpool_redis_context(c), "ACL WHOAMI");
    ASSERT_STR_EQ("cpool_acl", r->str);
    freeReplyObject(r);
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

/* A failed establishment through a pool: the checkout's error. */
static cpool_error failed_checkout(const char *target, int64_t connect_timeout_ms)
{
    cpool_options o;
    rt_options(&o, target, NULL);
    o.connect_timeout_ms = connect_timeout_ms;
    cpool *p = rt_pool(&o);
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(p, -1, &c, &e));
    ASSERT_NULL(c);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    return e;
}

TEST(auth_wrong_password_unlabelled)
{
    char target[256];
    rt_fmt(target, "redis://:Wrong-Secret-9@127.0.0.1:%d/0", port());
    cpool_error e = failed_checkout(target, 5000);
    ASSERT_EQ(CPOOL_PHASE_AUTH, e.phase);
    ASSERT_EQ(CPOOL_FAIL_AUTH, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "WRONGPASS");
    if (strstr(e.message, "Wrong-Secret-9") != NULL)
        FAIL("message shows the password: %s", e.message);

    rt_fmt(target, "redis://cpool_acl:Wrong-Secret-9@127.0.0.1:%d/0", port());
    e = failed_checkout(target, 5000);
    ASSERT_EQ(CPOOL_PHASE_AUTH, e.phase);
    ASSERT_EQ(CPOOL_FAIL_AUTH, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "cpool_acl");
    if (strstr(e.message, "Wrong-Secret-9") != NULL)
        FAIL("message shows the password: %s", e.message);
}

TEST(auth_missing_password_unlabelled)
{
    char target[256];
    rt_fmt(target, "redis://127.0.0.1:%d/0", port());
    cpool_error e = failed_checkout(target, 5000);
    ASSERT_EQ(CPOOL_PHASE_AUTH, e.phase);
    ASSERT_EQ(CPOOL_FAIL_AUTH, e.kind);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "NOAUTH");
}

/* ------------------------------------------------------------------ targets */

TEST(select_db_applied)
{
    char key[64], val[64], t3[512], t0[512], tq[512];
    rt_key(key, sizeof key, "db3");
    rt_fmt(t3, "redis://:%s@127.0.0.1:%d/3", password(), port());
    rt_fmt(tq, "redis://:%s@127.0.0.1:%d?db=3", password(), port());
    rt_fmt(t0, "redis://:%s@127.0.0.1:%d/0", password(), port());
    cpool *p3 = pool_for(t3, NULL), *pq = pool_for(tq, NULL), *p0 = pool_for(t0, NULL);

    cpool_conn *c3 = test_checkout(p3);
    rt_ok(cpool_redis_context(c3), "SET %s in-three", key);
    test_checkin(p3, c3, 0);

    cpool_conn *c0 = test_checkout(p0);
    rt_get(cpool_redis_context(c0), key, val);
    ASSERT_STR_EQ("(nil)", val);
    test_checkin(p0, c0, 0);

    cpool_conn *cq = test_checkout(pq);
    rt_get(cpool_redis_context(cq), key, val);
    ASSERT_STR_EQ("in-three", val);
    rt_ok(cpool_redis_context(cq), "DEL %s", key);
    test_checkin(pq, cq, 0);
    cpool_destroy(p3);
    cpool_destroy(pq);
    cpool_destroy(p0);
}

TEST(unix_socket_target)
{
    char key[64], val[64], target[512];
    rt_key(key, sizeof key, "unix");
    const char *sock = rt_env("CPOOL_TEST_REDIS_SOCKET");
    rt_fmt(target, "unix://%s?db=2&password=%s", sock, password());
    cpool *p = pool_for(target, NULL);
    ASSERT_STR_EQ(sock, cpool_address(p));
    cpool_conn *c = test_checkout(p);
    redisContext *rc = cpool_redis_context(c);
    rt_ok(rc, "SET %s via-socket", key);
    redisReply *r = rt_cmd(rc, "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, "db=2");
    ASSERT_STR_CONTAINS(r->str, sock); /* laddr is the socket path */
    freeReplyObject(r);
    test_checkin(p, c, 0);
    cpool_destroy(p);

    rt_fmt(target, "redis+unix://:%s@%s?db=2", password(), sock);
    p = pool_for(target, NULL);
    c = test_checkout(p);
    rt_get(cpool_redis_context(c), key, val);
    ASSERT_STR_EQ("via-socket", val);
    rt_ok(cpool_redis_context(c), "DEL %s", key);
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

/* ------------------------------------------------------------------ failures */

TEST(refused_port_labelled)
{
    char target[256];
    rt_fmt(target, "redis://:x@127.0.0.1:%d/0", rt_closed_port());
    int64_t t0 = test_now_ms();
    cpool_error e = failed_checkout(target, 5000);
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    ASSERT_EQ(ECONNREFUSED, e.native);
    ASSERT_EQ(CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE, e.labels);
    ASSERT_STR_CONTAINS(e.message, "refused");

    /* A unix socket that does not exist is the same: nobody listens. */
    rt_fmt(target, "unix:///tmp/cpool-no-such-%ld.sock", (long)getpid());
    e = failed_checkout(target, 5000);
    ASSERT_EQ(CPOOL_PHASE_CONNECT, e.phase);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    ASSERT_EQ(ENOENT, e.native);
}

TEST(dns_failure_unlabelled)
{
    cpool_error e = failed_checkout("redis://:x@no-such-host.invalid:6379/0", 3000);
    ASSERT_EQ(CPOOL_PHASE_DNS, e.phase);
    /* A resolver that cannot be reached times out instead of answering. */
    if (e.kind != CPOOL_FAIL_DNS && e.kind != CPOOL_FAIL_TIMEOUT)
        FAIL("kind %d: %s", e.kind, e.message);
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "no-such-host.invalid");
}

TEST(silent_listener_handshake_timeout)
{
    int lport;
    int lfd = rt_silent_listener(&lport);
    char target[256];
    rt_fmt(target, "redis://:x@127.0.0.1:%d/0", lport);
    int64_t t0 = test_now_ms();
    cpool_error e = failed_checkout(target, 300);
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 280);
    ASSERT_LT(took, 1500);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, e.phase);
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_EQ(CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE, e.labels);
    ASSERT_STR_CONTAINS(e.message, "no answer");
    close(lfd);
}

/* Starts a checkout that hangs in the handshake with a silent listener. */
static cpool *start_hanging_checkout(test_recorder *rec, test_job *job, int *lfd)
{
    int lport;
    *lfd = rt_silent_listener(&lport);
    static char target[256];
    rt_fmt(target, "redis://:x@127.0.0.1:%d/0", lport);
    cpool_options o;
    test_rec_init(rec);
    rt_options(&o, target, rec);
    o.connect_timeout_ms = 10000;
    cpool *p = rt_pool(&o);
    test_job_start(job, p, -1);
    WAIT_UNTIL(test_counts(p).pending == 1, 2000);
    test_sleep_ms(50); /* into the handshake's poll */
    ASSERT_FALSE(atomic_load(&job->done));
    return p;
}

static void expect_interrupted(test_recorder *rec, test_job *job, int64_t since_ns)
{
    test_job_join(job, 3000);
    ASSERT_LT(job->end_ns - since_ns, 1000000000LL);
    if (job->rc != CPOOL_ECONNECT && job->rc != CPOOL_ECLEARED && job->rc != CPOOL_ECLOSED)
        FAIL("interrupted checkout: %s: %s", cpool_err_name(job->rc), job->err.message);
    ASSERT_NULL(job->conn);
    WAIT_EVENTS(rec, CPOOL_EV_CONN_CLOSED, 1, 2000);
    test_event ev;
    ASSERT_TRUE(test_rec_find(rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_EQ(CPOOL_FAIL_INTERRUPTED, ev.error.kind);
    ASSERT_EQ(CPOOL_PHASE_HANDSHAKE, ev.error.phase);
}

TEST(establishment_interrupted_by_clear)
{
    test_recorder rec;
    test_job job;
    int lfd;
    cpool *p = start_hanging_checkout(&rec, &job, &lfd);
    int64_t t = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    expect_interrupted(&rec, &job, t);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    test_rec_free(&rec);
    close(lfd);
}

TEST(establishment_interrupted_by_close)
{
    test_recorder rec;
    test_job job;
    int lfd;
    cpool *p = start_hanging_checkout(&rec, &job, &lfd);
    int64_t t = test_now_ns();
    cpool_close(p);
    expect_interrupted(&rec, &job, t);
    cpool_destroy(p);
    test_rec_free(&rec);
    close(lfd);
}

/* ------------------------------------------------------------------ check, ping */

TEST(check_detects_client_kill)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64], val[64];
    rt_key(key, sizeof key, "killed");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    long long server_id = rt_client_id(cpool_redis_context(a));
    rt_ok(cpool_redis_context(a), "SET %s still-here", key);
    test_checkin(p, a, 0);
    ASSERT_EQ(1, test_counts(p).available);

    redisContext *sc = side();
    rt_kill_client(sc, server_id);
    test_sleep_ms(50); /* the FIN crosses loopback */

    /* check() sees the closed socket: the pool drops it and opens another
     * within the same checkout, transparently. */
    cpool_conn *b = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(b));
    rt_get(cpool_redis_context(b), key, val);
    ASSERT_STR_EQ("still-here", val);
    expect_closed_with_error(&rec, id);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_TRUE(ev.has_error);
    ASSERT_STR_CONTAINS(ev.error.message, "closed the connection");
    rt_ok(cpool_redis_context(b), "DEL %s", key);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
    redisFree(sc);
}

/* cpool_redis_error: a killed connection is NETWORK and retryable, and
 * cpool_run retries it on a new connection; an error reply is SERVER and
 * retryable only when the server says to try again. */
typedef struct redis_attempts {
    redisContext *side;
    int calls;
    uint64_t ids[4];
    cpool_error first;
} redis_attempts;

static int ping_after_kill(cpool_conn *c, void *arg, cpool_error *err)
{
    redis_attempts *a = arg;
    redisContext *rc = cpool_redis_context(c);
    int n = a->calls++;
    if (n < 4)
        a->ids[n] = cpool_conn_id(c);
    if (n == 0) {
        rt_kill_client(a->side, rt_client_id(rc));
        test_sleep_ms(50); /* the FIN crosses loopback */
    }
    redisReply *r = cpool_redis_command(rc, "PING");
    int rcode = cpool_redis_error(rc, r, err);
    if (r != NULL)
        freeReplyObject(r);
    if (n == 0)
        a->first = *err;
    return rcode;
}

TEST(run_retries_a_killed_connection)
{
    cpool *p = pool_for(base_uri(), NULL);
    redis_attempts a = {.side = side()};
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 10000, .retries = 1};
    cpool_error e;
    ASSERT_OK_E(cpool_run(p, &o, ping_after_kill, &a, &e), &e);
    ASSERT_EQ(2, a.calls);
    ASSERT_NE(a.ids[0], a.ids[1]);
    ASSERT_EQ(CPOOL_FAIL_NETWORK, a.first.kind);
    ASSERT_TRUE(a.first.labels & CPOOL_LABEL_RETRYABLE);

    /* Error replies, as the server words them. */
    redisReply loading = {.type = REDIS_REPLY_ERROR,
                          .str = "LOADING Redis is loading the dataset in memory"};
    redisReply wrong = {.type = REDIS_REPLY_ERROR,
                        .str = "WRONGTYPE Operation against a key holding the wrong kind"};
    redisReply ok = {.type = REDIS_REPLY_STATUS, .str = "OK"};
    ASSERT_RC(CPOOL_EIO, cpool_redis_error(NULL, &loading, &e));
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_TRUE(e.labels & CPOOL_LABEL_RETRYABLE);
    ASSERT_RC(CPOOL_EIO, cpool_redis_error(NULL, &wrong, &e));
    ASSERT_EQ(0, e.labels);
    ASSERT_STR_CONTAINS(e.message, "WRONGTYPE");
    ASSERT_OK(cpool_redis_error(NULL, &ok, &e));
    /* A real error reply from the server. */
    cpool_conn *c = test_checkout(p);
    redisReply *r = cpool_redis_command(cpool_redis_context(c), "NOSUCHCOMMAND");
    ASSERT_RC(CPOOL_EIO, cpool_redis_error(cpool_redis_context(c), r, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown command");
    freeReplyObject(r);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    redisFree(a.side);
}

/* cpool_redis_call: one command, leased and returned; an error reply is
 * NULL with the error, and the argv form sends binary-safe arguments. */
TEST(call_leases_sends_and_returns)
{
    cpool *p = pool_for(base_uri(), NULL);
    char key[64];
    rt_key(key, sizeof key, "call");
    cpool_error e;
    redisReply *r = cpool_redis_call(p, NULL, &e, "SET %s %s", key, "v1");
    ASSERT_NOT_NULL(r);
    freeReplyObject(r);
    const char *argv[] = {"APPEND", key, "\0x"};
    size_t len[] = {6, strlen(key), 2};
    r = cpool_redis_call_argv(p, NULL, 3, argv, len, &e);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ(REDIS_REPLY_INTEGER, r->type);
    ASSERT_EQ(4, r->integer);
    freeReplyObject(r);
    ASSERT_EQ(0, test_counts(p).in_use);
    ASSERT_NULL(cpool_redis_call(p, NULL, &e, "INCR %s", key)); /* not an integer */
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_EQ(0, e.labels & CPOOL_LABEL_RETRYABLE);
    ASSERT_STR_CONTAINS(e.message, "not an integer");
    ASSERT_EQ(1, test_counts(p).available); /* an error reply keeps the connection */
    r = cpool_redis_call(p, NULL, &e, "DEL %s", key);
    ASSERT_NOT_NULL(r);
    freeReplyObject(r);
    ASSERT_NULL(cpool_redis_call(NULL, NULL, &e, "PING"));
    ASSERT_EQ(CPOOL_EINVAL, e.code);
    cpool_destroy(p);
}

TEST(ping_round_trip)
{
    char target[512], name[64];
    rt_fmt(name, "ping-%ld", (long)getpid());
    uri_with(target, sizeof target, "validation=always&client_name=");
    strncat(target, name, sizeof target - strlen(target) - 1);
    cpool *p = pool_for(target, NULL);
    cpool_conn *c = test_checkout(p);
    long long server_id = rt_client_id(cpool_redis_context(c));
    test_checkin(p, c, 0);
    redisContext *sc = side();
    char line[1024];

    /* validation=always pings before handing a connection out again: the
     * server saw a PING as its last command. */
    c = test_checkout(p);
    rt_client_line(sc, server_id, line, sizeof line);
    ASSERT_STR_CONTAINS(line, "cmd=ping");
    test_checkin(p, c, 0);
    cpool_stats s = {.struct_size = sizeof s};
    ASSERT_OK(cpool_get_stats(p, &s));
    ASSERT_GE(s.validations, 1);
    ASSERT_EQ(0, s.validation_failures);

    /* The connector's ping itself: succeeds on a live connection, fails at
     * once without I/O when no time is left, and fails on a connection the
     * server dropped. */
    void *ctx = rt_ctx(base_uri());
    const cpool_connector *cx = cpool_redis_connector();
    c = test_checkout(p);
    void *native = cpool_conn_native(c);
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cx->ping(ctx, native, test_now_ns() + 1000000000LL, &e), &e);
    ASSERT_RC(CPOOL_EIO, cx->ping(ctx, native, test_now_ns() - 1, &e));
    ASSERT_EQ(CPOOL_FAIL_TIMEOUT, e.kind);
    ASSERT_OK_E(cx->ping(ctx, native, 0, &e), &e); /* untouched by the refusal */
    rt_kill_client(sc, server_id);
    test_sleep_ms(50);
    ASSERT_RC(CPOOL_EIO, cx->ping(ctx, native, test_now_ns() + 1000000000LL, &e));
    ASSERT_EQ(CPOOL_FAIL_NETWORK, e.kind);
    test_checkin(p, c, CPOOL_CHECKIN_BROKEN);
    rt_ctx_free(ctx);
    cpool_destroy(p);
    redisFree(sc);
}

/* ------------------------------------------------------------------ reset */

TEST(checkin_discards_open_multi)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64], val[64];
    rt_key(key, sizeof key, "multi");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    rt_ok(c, "MULTI");
    redisReply *r = rt_cmd(c, "SET %s queued", key);
    ASSERT_STR_EQ("QUEUED", r->str);
    freeReplyObject(r);
    test_checkin(p, a, 0);

    /* Same connection, out of the transaction, and the queued SET never ran. */
    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    c = cpool_redis_context(b);
    r = redisCommand(c, "EXEC");
    ASSERT_NOT_NULL(r);
    ASSERT_EQ(REDIS_REPLY_ERROR, r->type);
    ASSERT_STR_CONTAINS(r->str, "without MULTI");
    freeReplyObject(r);
    rt_get(c, key, val);
    ASSERT_STR_EQ("(nil)", val);
    test_checkin(p, b, 0);
    ASSERT_EQ(0, test_rec_count(&rec, CPOOL_EV_CONN_CLOSED));
    cpool_destroy(p);
    test_rec_free(&rec);
}

TEST(checkin_unwatches_and_restores_db)
{
    char key[64], other[64], val[64];
    rt_key(key, sizeof key, "watched");
    rt_key(other, sizeof other, "watch-other");
    cpool *p = pool_for(base_uri(), NULL);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    rt_ok(c, "WATCH %s", key);
    rt_ok(c, "SELECT 5");
    test_checkin(p, a, 0);

    /* Someone changes the watched key: a WATCH left behind would make the
     * next holder's transaction fail for no reason of its own. */
    redisContext *sc = side();
    rt_ok(sc, "SET %s changed", key);

    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    c = cpool_redis_context(b);
    redisReply *r = rt_cmd(c, "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, " db=0 ");
    freeReplyObject(r);
    rt_ok(c, "MULTI");
    rt_ok(c, "SET %s ran", other);
    r = rt_cmd(c, "EXEC");
    ASSERT_EQ(REDIS_REPLY_ARRAY, r->type); /* nil when aborted by a WATCH */
    freeReplyObject(r);
    rt_get(c, other, val);
    ASSERT_STR_EQ("ran", val);
    rt_ok(c, "DEL %s %s", key, other);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    redisFree(sc);
}

TEST(checkin_unsubscribes_pubsub)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64], val[64], ch[64];
    rt_key(key, sizeof key, "after-pubsub");
    rt_key(ch, sizeof ch, "channel");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    redisReply *r = rt_cmd(c, "SUBSCRIBE %s", ch);
    ASSERT_EQ(REDIS_REPLY_ARRAY, r->type);
    freeReplyObject(r);
    r = rt_cmd(c, "PSUBSCRIBE %s:*", ch);
    freeReplyObject(r);
    test_checkin(p, a, 0);

    /* Unsubscribed and kept: a message published now reaches nobody, and
     * the next holder gets plain replies. */
    redisContext *sc = side();
    r = rt_cmd(sc, "PUBLISH %s hello", ch);
    ASSERT_EQ(0, r->integer);
    freeReplyObject(r);
    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    c = cpool_redis_context(b);
    rt_ok(c, "SET %s plain", key);
    rt_get(c, key, val);
    ASSERT_STR_EQ("plain", val);
    r = rt_cmd(c, "PING");
    ASSERT_EQ(REDIS_REPLY_STATUS, r->type);
    freeReplyObject(r);
    rt_ok(c, "DEL %s", key);
    test_checkin(p, b, 0);
    ASSERT_EQ(0, test_rec_count(&rec, CPOOL_EV_CONN_CLOSED));
    cpool_destroy(p);
    test_rec_free(&rec);
    redisFree(sc);
}

TEST(checkin_pubsub_with_pending_message_closed)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64], val[64], ch[64];
    rt_key(key, sizeof key, "after-message");
    rt_key(ch, sizeof ch, "busy-channel");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    freeReplyObject(rt_cmd(cpool_redis_context(a), "SUBSCRIBE %s", ch));
    redisContext *sc = side();
    redisReply *r = rt_cmd(sc, "PUBLISH %s unread", ch);
    ASSERT_EQ(1, r->integer);
    freeReplyObject(r);
    struct pollfd pfd = {.fd = cpool_redis_context(a)->fd, .events = POLLIN};
    ASSERT_EQ(1, poll(&pfd, 1, 2000)); /* the message has arrived */
    test_checkin(p, a, 0);              /* and waits unread: closed */
    expect_closed_with_error(&rec, id);

    cpool_conn *b = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(b));
    rt_ok(cpool_redis_context(b), "SET %s fine", key);
    rt_get(cpool_redis_context(b), key, val);
    ASSERT_STR_EQ("fine", val);
    rt_ok(cpool_redis_context(b), "DEL %s", key);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
    redisFree(sc);
}

TEST(checkin_unread_replies_closed)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64];
    rt_key(key, sizeof key, "pipelined");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    ASSERT_EQ(REDIS_OK, redisAppendCommand(c, "SET %s one", key));
    ASSERT_EQ(REDIS_OK, redisAppendCommand(c, "GET %s", key));
    ASSERT_EQ(REDIS_OK, redisAppendCommand(c, "PING"));
    void *reply = NULL;
    ASSERT_EQ(REDIS_OK, redisGetReply(c, &reply)); /* writes all, reads one */
    freeReplyObject(reply);
    test_checkin(p, a, 0);
    expect_closed_with_error(&rec, id);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_STR_CONTAINS(ev.error.message, "unread");

    cpool_conn *b = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(b));
    rt_ok(cpool_redis_context(b), "DEL %s", key);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
}

/* Replies still on their way at check-in (a slow command was sent and
 * not waited for): nothing is buffered yet, so only the reset's round
 * trip, which finds an extra reply before its marker, can tell. */
TEST(checkin_in_flight_replies_closed)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64];
    rt_key(key, sizeof key, "in-flight");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    ASSERT_EQ(REDIS_OK, redisAppendCommand(c, "BLPOP %s 0.2", key));
    int done = 0;
    while (!done)
        ASSERT_EQ(REDIS_OK, redisBufferWrite(c, &done));
    test_checkin(p, a, 0);
    expect_closed_with_error(&rec, id);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&rec, id, &ev));
    ASSERT_STR_CONTAINS(ev.error.message, "left unread");
    cpool_destroy(p);
    test_rec_free(&rec);
}

TEST(checkin_unsent_commands_closed_not_sent)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64], val[64];
    rt_key(key, sizeof key, "unsent");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    ASSERT_EQ(REDIS_OK, redisAppendCommand(cpool_redis_context(a), "SET %s sent", key));
    test_checkin(p, a, 0);
    expect_closed_with_error(&rec, id);

    /* Closed without flushing: the appended SET never reached the server. */
    cpool_conn *b = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(b));
    rt_get(cpool_redis_context(b), key, val);
    ASSERT_STR_EQ("(nil)", val);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
}

/* ------------------------------------------------------------------ interrupts */

typedef struct blpop_job {
    redisContext *c;
    const char *key;
    pthread_t thread;
    redisReply *reply;
    int err;
    int64_t end_ns;
    atomic_bool done;
} blpop_job;

static void *blpop_main(void *arg)
{
    blpop_job *j = arg;
    j->reply = redisCommand(j->c, "BLPOP %s 30", j->key);
    j->err = j->c->err;
    j->end_ns = test_now_ns();
    atomic_store(&j->done, true);
    return NULL;
}

TEST(in_use_interrupt_blpop)
{
    char key[64], target[512];
    rt_key(key, sizeof key, "blpop");
    uri_with(target, sizeof target, "command_timeout_ms=60000");
    cpool *p = pool_for(target, NULL);
    cpool_conn *a = test_checkout(p);
    long long server_id = rt_client_id(cpool_redis_context(a));
    blpop_job j = {.c = cpool_redis_context(a), .key = key};
    atomic_init(&j.done, false);
    TEST_THREAD_START(&j.thread, blpop_main, &j);

    /* Blocked on the server. */
    redisContext *sc = side();
    char line[1024];
    int64_t until = test_now_ms() + 3000;
    do {
        test_sleep_ms(10);
        rt_client_line(sc, server_id, line, sizeof line);
    } while (strstr(line, "cmd=blpop") == NULL && test_now_ms() < until);
    ASSERT_STR_CONTAINS(line, "cmd=blpop");
    ASSERT_FALSE(atomic_load(&j.done));

    int64_t t = test_now_ns();
    ASSERT_OK(cpool_clear(p, CPOOL_CLEAR_INTERRUPT_IN_USE, NULL, NULL));
    int64_t deadline = test_now_ms() + 2000;
    while (!atomic_load(&j.done) && test_now_ms() < deadline)
        test_sleep_ms(1);
    ASSERT_TRUE(atomic_load(&j.done));
    pthread_join(j.thread, NULL);
    ASSERT_LT(j.end_ns - t, 1000000000LL);
    ASSERT_NULL(j.reply);
    ASSERT_NE(0, j.err);
    test_checkin(p, a, 0);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    redisFree(sc);
}

TEST(command_timeout_applied)
{
    char key[64], target[512];
    rt_key(key, sizeof key, "slow");
    uri_with(target, sizeof target, "command_timeout_ms=300");
    test_recorder rec;
    test_rec_init(&rec);
    cpool *p = pool_for(target, &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    int64_t t0 = test_now_ms();
    redisReply *r = redisCommand(c, "BLPOP %s 5", key);
    int64_t took = test_now_ms() - t0;
    ASSERT_NULL(r);
    ASSERT_EQ(REDIS_ERR_IO, c->err);
    ASSERT_GE(took, 250);
    ASSERT_LT(took, 2000);
    /* The reply stream is out of step now: the pool must not reuse it. */
    test_checkin(p, a, 0);
    expect_closed_with_error(&rec, id);
    cpool_conn *b = test_checkout(p);
    ASSERT_NE(id, cpool_conn_id(b));
    rt_ok(cpool_redis_context(b), "PING");
    test_checkin(p, b, 0);
    cpool_destroy(p);
    test_rec_free(&rec);
}

/* ------------------------------------------------------------------ fork */

TEST(fork_abandon_keeps_parent_connection)
{
    char key[64], val[64], name[64], target[512];
    rt_key(key, sizeof key, "fork");
    rt_fmt(name, "fork-%ld", (long)getpid());
    uri_with(target, sizeof target, "client_name=");
    strncat(target, name, sizeof target - strlen(target) - 1);
    cpool *p = pool_for(target, NULL);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    long long server_id = rt_client_id(cpool_redis_context(a));
    test_checkin(p, a, 0);

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        /* The child's checkout abandons the inherited connection and opens
         * its own; destroying the pool then closes only the child's. */
        alarm(20);
        cpool_conn *c = NULL;
        int rc = cpool_checkout(p, 5000, &c, NULL);
        int ok = rc == 0 && cpool_conn_id(c) != id;
        if (ok) {
            redisReply *r = redisCommand(cpool_redis_context(c), "SET %s from-child", key);
            ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            ok = ok && rt_client_id(cpool_redis_context(c)) != server_id;
            cpool_checkin(p, c, 0, NULL);
        }
        cpool_destroy(p);
        _exit(ok ? 0 : 3);
    }
    int status = 0;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(0, WEXITSTATUS(status));

    /* The parent's session survived the child's abandon and exit. */
    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    ASSERT_EQ(server_id, rt_client_id(cpool_redis_context(b)));
    rt_get(cpool_redis_context(b), key, val);
    ASSERT_STR_EQ("from-child", val);
    rt_ok(cpool_redis_context(b), "DEL %s", key);
    test_checkin(p, b, 0);
    redisContext *sc = side();
    WAIT_UNTIL(rt_count_named(sc, name) == 1, 2000); /* the child's is gone */
    cpool_destroy(p);
    redisFree(sc);
}

/* ------------------------------------------------------------------ the rest */

TEST(describe_reports_version_and_role)
{
    cpool *p = pool_for(base_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    void *ctx = rt_ctx(base_uri());
    char buf[160];
    ASSERT_OK(cpool_redis_connector()->describe(ctx, cpool_conn_native(c), buf, sizeof buf));
    redisReply *r = rt_cmd(cpool_redis_context(c), "INFO server");
    char want[64];
    const char *v = strstr(r->str, "redis_version:");
    ASSERT_NOT_NULL(v);
    rt_fmt(want, "Redis %.*s (standalone), role master", (int)strcspn(v + 14, "\r\n"), v + 14);
    freeReplyObject(r);
    ASSERT_STR_EQ(want, buf);
    /* Too small a buffer is refused, and the connection stays in step. */
    ASSERT_NE(0, cpool_redis_connector()->describe(ctx, cpool_conn_native(c), buf, 8));
    rt_ok(cpool_redis_context(c), "PING");
    test_checkin(p, c, 0);
    rt_ctx_free(ctx);
    cpool_destroy(p);
}

TEST(execute_runs_commands)
{
    char key[64], val[64], cmd[160];
    rt_key(key, sizeof key, "execute");
    cpool *p = pool_for(base_uri(), NULL);
    cpool_conn *c = test_checkout(p);
    cpool_error e;
    memset(&e, 0, sizeof e);
    rt_fmt(cmd, "SET %s \"two words\"", key);
    ASSERT_OK_E(cpool_conn_execute(c, cmd, &e), &e);
    rt_get(cpool_redis_context(c), key, val);
    ASSERT_STR_EQ("two words", val);
    ASSERT_RC(CPOOL_EIO, cpool_conn_execute(c, "NOSUCHCOMMAND x", &e));
    ASSERT_EQ(CPOOL_FAIL_SERVER, e.kind);
    ASSERT_STR_CONTAINS(e.message, "unknown command");
    ASSERT_RC(CPOOL_EINVAL, cpool_conn_execute(c, "  ", &e));
    ASSERT_OK_E(cpool_conn_execute(c, "PING", &e), &e); /* still usable */
    rt_ok(cpool_redis_context(c), "DEL %s", key);
    test_checkin(p, c, 0);
    cpool_destroy(p);
}

TEST(wrappers_track_state)
{
    test_recorder rec;
    test_rec_init(&rec);
    char key[64];
    rt_key(key, sizeof key, "tracked");
    cpool *p = pool_for(base_uri(), &rec);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    ASSERT_EQ(0, cpool_redis_state(c));
    redisReply *r = cpool_redis_command(c, "MULTI");
    freeReplyObject(r);
    ASSERT_EQ(CPOOL_REDIS_IN_MULTI, cpool_redis_state(c));
    const char *argv[] = {"SET", key, "v"};
    r = cpool_redis_command_argv(c, 3, argv, NULL);
    ASSERT_STR_EQ("QUEUED", r->str);
    freeReplyObject(r);
    freeReplyObject(cpool_redis_command(c, "EXEC"));
    ASSERT_EQ(0, cpool_redis_state(c));
    freeReplyObject(cpool_redis_command(c, "WATCH %s", key));
    ASSERT_EQ(CPOOL_REDIS_WATCHING, cpool_redis_state(c));
    freeReplyObject(cpool_redis_command(c, "unwatch"));
    ASSERT_EQ(0, cpool_redis_state(c));
    freeReplyObject(cpool_redis_command(c, "SELECT 4"));
    ASSERT_EQ(CPOOL_REDIS_DB_CHANGED, cpool_redis_state(c));
    freeReplyObject(cpool_redis_command(c, "SUBSCRIBE %s", key));
    ASSERT_EQ(CPOOL_REDIS_DB_CHANGED | CPOOL_REDIS_SUBSCRIBED, cpool_redis_state(c));
    test_checkin(p, a, 0);

    /* The reset cleared all of it and kept the connection. */
    cpool_conn *b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    c = cpool_redis_context(b);
    ASSERT_EQ(0, cpool_redis_state(c));
    ASSERT_EQ(REDIS_OK, redisAppendCommand(c, "PING"));
    r = cpool_redis_command(c, "DEL %s", key); /* returns PING's reply */
    ASSERT_STR_EQ("PONG", r->str);
    freeReplyObject(r);
    ASSERT_EQ(CPOOL_REDIS_UNKNOWN, cpool_redis_state(c));
    void *rest = NULL;
    ASSERT_EQ(REDIS_OK, redisGetReply(c, &rest)); /* DEL's: nothing left pending */
    freeReplyObject(rest);
    test_checkin(p, b, 0);

    /* A change only RESET undoes: the full reset puts the target's
     * client name back, on the same connection. */
    b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    c = cpool_redis_context(b);
    freeReplyObject(cpool_redis_command(c, "CLIENT SETNAME renamed"));
    ASSERT_EQ(CPOOL_REDIS_UNRESTORABLE, cpool_redis_state(c));
    test_checkin(p, b, 0);
    b = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(b));
    r = cpool_redis_command(cpool_redis_context(b), "CLIENT GETNAME");
    ASSERT_STR_EQ("cpool", r->str);
    freeReplyObject(r);
    test_checkin(p, b, 0);

    /* Not a pool connection: no state, no crash. */
    redisContext *sc = side();
    ASSERT_EQ(0, cpool_redis_state(sc));
    cpool_redis_mark_dirty(sc);
    ASSERT_EQ(0, cpool_redis_state(sc));
    ASSERT_EQ(0, cpool_redis_state(NULL));
    r = cpool_redis_command(sc, "PING");
    ASSERT_STR_EQ("PONG", r->str);
    freeReplyObject(r);
    redisFree(sc);
    cpool_destroy(p);
    test_rec_free(&rec);
}

/* The last command the server saw on one client. */
static void expect_last_cmd(redisContext *sc, long long server_id, const char *cmd)
{
    char line[1024], want[64];
    rt_fmt(want, " cmd=%s ", cmd);
    rt_client_line(sc, server_id, line, sizeof line);
    ASSERT_STR_CONTAINS(line, want);
}

TEST(tracked_reset_skips_round_trip)
{
    char key[64], target[512];
    rt_key(key, sizeof key, "tracked-reset");
    redisContext *sc = side();

    /* reset=always: a round trip (RESET and the handshake) at every
     * check-in. */
    uri_with(target, sizeof target, "reset=always");
    cpool *p = pool_for(target, NULL);
    cpool_conn *a = test_checkout(p);
    redisContext *c = cpool_redis_context(a);
    long long sid = rt_client_id(c);
    test_checkin(p, a, 0);
    a = test_checkout(p);
    c = cpool_redis_context(a);
    freeReplyObject(cpool_redis_command(c, "GET %s", key));
    test_checkin(p, a, 0);
    expect_last_cmd(sc, sid, "ping");
    cpool_destroy(p);

    /* The default (reset=tracked): nothing seen, nothing sent. The first
     * lease asked for its id with a plain hiredis call, so its check-in
     * reset in full; the second used only the wrappers. */
    p = pool_for(base_uri(), NULL);
    a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    c = cpool_redis_context(a);
    sid = rt_client_id(c);
    test_checkin(p, a, 0);
    a = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(a));
    freeReplyObject(cpool_redis_command(cpool_redis_context(a), "GET %s", key));
    test_checkin(p, a, 0);
    expect_last_cmd(sc, sid, "get");

    /* ... but a MULTI seen by the wrappers is undone. */
    a = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(a));
    c = cpool_redis_context(a);
    freeReplyObject(cpool_redis_command(c, "MULTI"));
    test_checkin(p, a, 0);
    expect_last_cmd(sc, sid, "ping");
    a = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(a));
    redisReply *r = redisCommand(cpool_redis_context(a), "EXEC");
    ASSERT_EQ(REDIS_REPLY_ERROR, r->type);
    freeReplyObject(r);

    /* ... and so is a change made outside the wrappers once marked. */
    freeReplyObject(redisCommand(cpool_redis_context(a), "SELECT 6"));
    cpool_redis_mark_dirty(cpool_redis_context(a));
    test_checkin(p, a, 0);
    a = test_checkout(p);
    r = rt_cmd(cpool_redis_context(a), "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, " db=0 ");
    freeReplyObject(r);
    test_checkin(p, a, 0);
    cpool_destroy(p);
    redisFree(sc);
}

/* A pool of one connection on `target`, with tenants a and b when asked. */
static cpool *one_conn_pool(const char *target, bool tenants)
{
    cpool_options o;
    rt_options(&o, target, NULL);
    o.max_pool_size = 1;
    cpool *p = NULL;
    cpool_error e;
    if (cpool_create(&o, &p, &e) != 0)
        FAIL("cpool_create: %s", e.message);
    if (tenants) {
        ASSERT_OK(cpool_tenant_set(p, "a", 0, 0, NULL));
        ASSERT_OK(cpool_tenant_set(p, "b", 0, 0, NULL));
    }
    test_ready(p);
    return p;
}

/* Plain hiredis calls, as examples/redis_example.c makes them, leave an
 * authenticated ACL user, a database, a client name and an open MULTI;
 * the next lease of the same connection sees none of it. */
TEST(plain_commands_do_not_cross_leases)
{
    cpool *p = one_conn_pool(base_uri(), false);
    cpool_conn *a = test_checkout(p);
    uint64_t id = cpool_conn_id(a);
    redisContext *c = cpool_redis_context(a);
    char auth[160];
    rt_fmt(auth, "AUTH cpool_acl %s@acl", password());
    redisReply *r = rt_cmd(c, auth);
    ASSERT_STR_EQ("OK", r->str);
    freeReplyObject(r);
    r = rt_cmd(c, "ACL WHOAMI");
    ASSERT_STR_EQ("cpool_acl", r->str);
    freeReplyObject(r);
    freeReplyObject(rt_cmd(c, "SELECT 5"));
    freeReplyObject(rt_cmd(c, "CLIENT SETNAME leased"));
    freeReplyObject(rt_cmd(c, "MULTI"));
    test_checkin(p, a, 0);

    a = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(a)); /* reset, not reconnected */
    c = cpool_redis_context(a);
    r = rt_cmd(c, "ACL WHOAMI");
    ASSERT_STR_EQ("default", r->str);
    freeReplyObject(r);
    r = rt_cmd(c, "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, " db=0 ");
    ASSERT_STR_CONTAINS(r->str, " name=cpool ");
    ASSERT_STR_CONTAINS(r->str, " multi=-1 ");
    freeReplyObject(r);
    test_checkin(p, a, 0);

    /* A subscription made with a plain call ends too. */
    a = test_checkout(p);
    c = cpool_redis_context(a);
    freeReplyObject(rt_cmd(c, "SUBSCRIBE leased-channel"));
    test_checkin(p, a, 0);
    a = test_checkout(p);
    ASSERT_EQ(id, cpool_conn_id(a));
    r = rt_cmd(cpool_redis_context(a), "PING");
    ASSERT_EQ(REDIS_REPLY_STATUS, r->type); /* not pub/sub's array */
    freeReplyObject(r);
    r = rt_cmd(cpool_redis_context(a), "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, " sub=0 ");
    freeReplyObject(r);
    test_checkin(p, a, 0);
    cpool_destroy(p);
}

/* Between tenants the session is reset in full even when the wrappers saw
 * nothing: b's lease starts after a RESET and the handshake (its PING). */
TEST(tenant_switch_resets_session)
{
    char key[64];
    rt_key(key, sizeof key, "tenant-switch");
    cpool *p = one_conn_pool(base_uri(), true);
    redisContext *sc = side();
    cpool_conn *a;
    cpool_checkout_opts oa = {.struct_size = sizeof oa, .timeout_ms = 5000, .tenant = "a"};
    cpool_checkout_opts ob = {.struct_size = sizeof ob, .timeout_ms = 5000, .tenant = "b"};
    ASSERT_OK(cpool_checkout_with(p, &oa, &a, NULL));
    long long sid = rt_client_id(cpool_redis_context(a));
    test_checkin(p, a, 0); /* plain call above: reset in full here */
    ASSERT_OK(cpool_checkout_with(p, &oa, &a, NULL));
    freeReplyObject(cpool_redis_command(cpool_redis_context(a), "GET %s", key));
    test_checkin(p, a, 0);
    expect_last_cmd(sc, sid, "get"); /* same tenant, nothing to undo */
    ASSERT_OK(cpool_checkout_with(p, &ob, &a, NULL));
    expect_last_cmd(sc, sid, "ping");
    ASSERT_EQ(sid, rt_client_id(cpool_redis_context(a)));
    test_checkin(p, a, 0);
    cpool_tenant_stats ts;
    ASSERT_OK(cpool_get_tenant_stats(p, "b", &ts));
    ASSERT_EQ(1, ts.switched);
    cpool_destroy(p);
    redisFree(sc);
}

/* The server's error count: a reset must never add to it. */
static long long error_replies(redisContext *sc)
{
    redisReply *r = rt_cmd(sc, "INFO stats");
    const char *f = strstr(r->str, "total_error_replies:");
    if (f == NULL)
        FAIL("INFO stats has no total_error_replies");
    long long n = atoll(f + strlen("total_error_replies:"));
    freeReplyObject(r);
    return n;
}

/* Resets in every mode -- the tracked default with and without state to
 * undo, reset=always, between tenants -- add no error reply on the server
 * (the old check-in's DISCARD outside MULTI added one each time). */
TEST(resets_add_no_server_errors)
{
    char target[512];
    redisContext *sc = side();
    long long before = error_replies(sc);
    uri_with(target, sizeof target, "reset=always");
    const char *targets[] = {base_uri(), target};
    for (int t = 0; t < 2; t++) {
        cpool *p = one_conn_pool(targets[t], true);
        for (int i = 0; i < 50; i++) {
            cpool_conn *a;
            cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 5000,
                                     .tenant = i % 3 == 0 ? "b" : "a"};
            ASSERT_OK(cpool_checkout_with(p, &o, &a, NULL));
            redisContext *c = cpool_redis_context(a);
            if (i % 2 == 0)
                freeReplyObject(cpool_redis_command(c, "MULTI"));
            else
                freeReplyObject(rt_cmd(c, "PING"));
            test_checkin(p, a, 0);
        }
        cpool_destroy(p);
    }
    ASSERT_EQ(before, error_replies(sc));
    redisFree(sc);
}

TEST(wrapper_no_sigpipe_on_dead_connection)
{
    cpool *p = pool_for(base_uri(), NULL);
    cpool_conn *a = test_checkout(p);
    redisContext *c = cpool_redis_context(a);
    long long sid = rt_client_id(c);
    redisContext *sc = side();
    rt_kill_client(sc, sid);
    test_sleep_ms(50);
    /* Provoke the peer's RST and consume its error, so that the next write
     * fails with EPIPE -- the one that raises SIGPIPE. */
    ASSERT_EQ(6, send(c->fd, "PING\r\n", 6, MSG_NOSIGNAL));
    test_sleep_ms(50);
    (void)send(c->fd, "PING\r\n", 6, MSG_NOSIGNAL);

    /* hiredis itself would die of it (the check that this case means
     * something), in a child that shares the socket ... */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        redisReply *r = redisCommand(c, "PING");
        _exit(r == NULL ? 4 : 5);
    }
    int status = 0;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_EQ(SIGPIPE, WTERMSIG(status));

    /* ... while the wrapper reports an error. */
    redisReply *r = cpool_redis_command(c, "PING");
    ASSERT_NULL(r);
    ASSERT_EQ(REDIS_ERR_IO, c->err);
    test_checkin(p, a, 0);
    ASSERT_EQ(0, test_counts(p).total);
    cpool_destroy(p);
    redisFree(sc);
}

TEST(connect_fills_phase_times)
{
    char target[512], name[64];
    rt_fmt(name, "phase-%ld", (long)getpid());
    /* "localhost" goes through the resolver thread; the server listens on
     * 127.0.0.1 only, so an IPv6 address first in the list is refused and
     * the next one tried. */
    rt_fmt(target, "redis://:%s@localhost:%d/1?client_name=%s", password(), port(), name);
    const cpool_connector *cx = cpool_redis_connector();
    void *ctx = rt_ctx(target);
    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.target = target;
    a.conn_id = 42;
    a.deadline_ns = test_now_ns() + 3000000000LL;
    a.cancel_fd = -1;
    void *native = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_OK_E(cx->connect(ctx, &a, &native, &e), &e);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_DNS], 0);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_CONNECT], 0);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_AUTH], 0);
    ASSERT_GT(a.phase_ns[CPOOL_PHASE_HANDSHAKE], 0);
    ASSERT_EQ(0, a.phase_ns[CPOOL_PHASE_TLS]);
    ASSERT_STR_EQ("", a.service_id);
    redisReply *r = rt_cmd(native, "CLIENT INFO");
    ASSERT_STR_CONTAINS(r->str, name);
    ASSERT_STR_CONTAINS(r->str, " db=1 ");
    freeReplyObject(r);
    ASSERT_OK(cx->check(ctx, native, &e));
    cx->close(ctx, native);

    /* A cancel descriptor that is already readable ends the attempt. */
    int lport;
    int lfd = rt_silent_listener(&lport);
    rt_fmt(target, "redis://:x@127.0.0.1:%d/0", lport);
    void *ctx2 = rt_ctx(target);
    memset(&a, 0, sizeof a);
    a.target = target;
    a.deadline_ns = test_now_ns() + 5000000000LL;
    a.cancel_fd = eventfd(1, EFD_CLOEXEC);
    ASSERT_TRUE(a.cancel_fd >= 0);
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ECONNECT, cx->connect(ctx2, &a, &native, &e));
    ASSERT_NULL(native);
    ASSERT_LT(test_now_ms() - t0, 1000);
    ASSERT_EQ(CPOOL_FAIL_INTERRUPTED, e.kind);
    close(a.cancel_fd);
    close(lfd);
    rt_ctx_free(ctx2);
    rt_ctx_free(ctx);
}

TEST_MAIN()
