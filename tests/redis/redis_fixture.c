/* redis_fixture.c -- helpers the Redis suites share. Included by each test
 * file (one executable per file, as test.h wants), not compiled alone.
 *
 * The servers are real: CTest fixtures start them with
 * scripts/redis-server.sh and pass where they are through the environment.
 * A variable that is missing or a server that does not answer FAILS the
 * case; nothing here skips. */
#include "test.h"

#include <cpool/cpool_redis.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* A variable the CTest fixture sets; failing when it is missing. */
#define rt_env(name) rt_env_at_(name, __FILE__, __LINE__)
static inline const char *rt_env_at_(const char *name, const char *file, int line)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        test_fail(file, line, "%s is not set: run this test through ctest, whose fixture "
                              "starts the Redis server", name);
    return v;
}

/* snprintf into a static-duration buffer the caller provides, failing on
 * truncation. */
#define rt_fmt(buf, ...)                                                      \
    do {                                                                      \
        int t_n_ = snprintf(buf, sizeof buf, __VA_ARGS__);                    \
        if (t_n_ < 0 || (size_t)t_n_ >= sizeof buf)                           \
            FAIL("string too long for %s", #buf);                             \
    } while (0)

/* A key no other case (or concurrent run of this case) uses. */
static inline void rt_key(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "cpool-test:%ld:%s", (long)getpid(), name);
}

/* A direct connection to the fixture server on `port`, outside any pool,
 * for looking at the server's side (CLIENT LIST) and killing clients. */
static inline redisContext *rt_side(int port, const char *password)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL || c->err != 0)
        FAIL("side connection to 127.0.0.1:%d: %s", port, c != NULL ? c->errstr : "no memory");
    redisSetTimeout(c, tv);
    if (password != NULL && password[0] != '\0') {
        redisReply *r = redisCommand(c, "AUTH %s", password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            FAIL("side AUTH: %s", r != NULL ? r->str : c->errstr);
        freeReplyObject(r);
    }
    return c;
}

/* Runs a command that must succeed (no error reply); returns the reply. */
#define rt_cmd(c, ...) rt_cmd_at_(__FILE__, __LINE__, c, __VA_ARGS__)
static inline redisReply *rt_cmd_at_(const char *file, int line, redisContext *c, const char *fmt,
                              ...) TEST_PRINTF_(4, 5);
static inline redisReply *rt_cmd_at_(const char *file, int line, redisContext *c, const char *fmt,
                              ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (r == NULL)
        test_fail(file, line, "'%s': no reply: %s", fmt, c->errstr);
    if (r->type == REDIS_REPLY_ERROR)
        test_fail(file, line, "'%s': error reply: %s", fmt, r->str);
    return r;
}

/* Runs a command that must succeed and discards its reply. */
#define rt_ok(c, ...) freeReplyObject(rt_cmd(c, __VA_ARGS__))

/* GET key as a string ("(nil)" for none) into buf. */
#define rt_get(c, key, buf) rt_get_at_(__FILE__, __LINE__, c, key, buf, sizeof buf)
static inline void rt_get_at_(const char *file, int line, redisContext *c, const char *key, char *buf,
                       size_t size)
{
    redisReply *r = rt_cmd_at_(file, line, c, "GET %s", key);
    if (r->type == REDIS_REPLY_NIL)
        snprintf(buf, size, "(nil)");
    else if (r->type == REDIS_REPLY_STRING)
        snprintf(buf, size, "%s", r->str);
    else
        test_fail(file, line, "GET %s: reply type %d", key, r->type);
    freeReplyObject(r);
}

static inline long long rt_client_id(redisContext *c)
{
    redisReply *r = rt_cmd(c, "CLIENT ID");
    ASSERT_EQ(REDIS_REPLY_INTEGER, r->type);
    long long id = r->integer;
    freeReplyObject(r);
    return id;
}

/* How many clients the server lists with this name. */
static inline int rt_count_named(redisContext *side, const char *name)
{
    redisReply *r = rt_cmd(side, "CLIENT LIST");
    char pat[96];
    snprintf(pat, sizeof pat, " name=%s ", name);
    int n = 0;
    for (const char *p = r->str; p != NULL && (p = strstr(p, pat)) != NULL; p++)
        n++;
    freeReplyObject(r);
    return n;
}

/* The CLIENT LIST line of one client id, into buf ("" if gone). */
static inline void rt_client_line(redisContext *side, long long id, char *buf, size_t size)
{
    redisReply *r = redisCommand(side, "CLIENT LIST ID %lld", id);
    if (r == NULL)
        FAIL("CLIENT LIST ID: %s", side->errstr);
    snprintf(buf, size, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static inline void rt_kill_client(redisContext *side, long long id)
{
    redisReply *r = rt_cmd(side, "CLIENT KILL ID %lld", id);
    ASSERT_EQ(1, r->integer);
    freeReplyObject(r);
}

/* Pool options the suites start from: the connector the target's scheme
 * names, no background thread (the cases call what they need), no backoff
 * or circuit breaker unless a case wants them, the environment ignored so
 * that CPOOL_* variables of the caller cannot change a case. */
static inline void rt_options(cpool_options *o, const char *target, test_recorder *rec)
{
    cpool_options_init(o, sizeof *o);
    o->connector = cpool_connector_for(target);
    if (o->connector == NULL || o->connector != cpool_redis_connector())
        FAIL("cpool_connector_for(%s) is not the Redis connector", target);
    o->target = target;
    o->ignore_env = true;
    o->maintenance_interval_ms = -1;
    o->backoff_base_ms = 0;
    o->breaker_threshold = 0;
    o->connect_timeout_ms = 5000;
    if (rec != NULL) {
        o->on_event = test_rec_on_event;
        o->event_ctx = rec;
    }
}

static inline cpool *rt_pool(const cpool_options *o)
{
    cpool *p = test_pool_create(o);
    test_ready(p);
    return p;
}

/* A listening socket on 127.0.0.1 that never accepts: the kernel completes
 * TCP handshakes from its backlog, and nobody ever answers -- a stopped or
 * wedged server, as a client sees it. Returns the fd; *port gets the port. */
static inline int rt_silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_TRUE(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ASSERT_EQ(0, bind(fd, (struct sockaddr *)&a, sizeof a));
    ASSERT_EQ(0, listen(fd, 16));
    socklen_t len = sizeof a;
    ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&a, &len));
    *port = ntohs(a.sin_port);
    return fd;
}

/* A port on 127.0.0.1 where nothing listens (bound, then released). */
static inline int rt_closed_port(void)
{
    int port;
    int fd = rt_silent_listener(&port);
    close(fd);
    return port;
}

/* The context the pool's connector would make from `target`, for calling
 * the connector's methods directly. Free with rt_ctx_free. */
static inline void *rt_ctx(const char *target)
{
    void *ctx = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    int rc = cpool_redis_connector()->ctx_new(target, &ctx, &e);
    if (rc != 0)
        FAIL("ctx_new(%s): %s: %s", target, cpool_err_name(rc), e.message);
    return ctx;
}

static inline void rt_ctx_free(void *ctx)
{
    cpool_redis_connector()->ctx_free(ctx);
}

/* The pid of the server of a fixture directory (its pid file). */
static inline pid_t rt_server_pid(const char *dir)
{
    char path[512];
    rt_fmt(path, "%s/redis.pid", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        FAIL("cannot open %s: %s", path, strerror(errno));
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 1)
        FAIL("no pid in %s", path);
    fclose(f);
    return (pid_t)pid;
}

/* Runs scripts/redis-server.sh with the given arguments; fails unless it
 * exits 0. */
static inline void rt_script(const char *args)
{
    char cmd[1024];
    rt_fmt(cmd, "%s %s >/dev/null", rt_env("CPOOL_TEST_REDIS_SCRIPT"), args);
    fflush(stdout);
    fflush(stderr);
    int rc = system(cmd);
    if (rc != 0)
        FAIL("'%s' exited with %d", cmd, rc);
}
