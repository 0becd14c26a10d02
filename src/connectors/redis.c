/* redis.c -- the Redis connector (cpool_redis.h), on hiredis 0.14.
 *
 * hiredis 0.14 has no connect call that honours both a deadline and a
 * cancellation descriptor, so establishment is done here: name resolution
 * on a helper thread (getaddrinfo cannot be cancelled), a non-blocking
 * connect polled beside args->cancel_fd, then the handshake (AUTH, CLIENT
 * SETNAME, SELECT, PING) pipelined in one round trip and read with hiredis's
 * reply parser, again polling both descriptors against the deadline. Only
 * then is the socket wrapped with redisConnectFd() and turned blocking, so a
 * lease holder gets an ordinary blocking redisContext.
 *
 * The PING matters: a stopped (SIGSTOP) server still completes TCP
 * handshakes from its listen backlog, so only an answer proves it alive.
 *
 * Every round trip the connector makes on an established connection (ping,
 * reset, describe, execute) writes with send(MSG_NOSIGNAL) and polls before
 * each read, bounded by its own deadline, instead of going through
 * redisCommand: that would block for the socket timeout the user chose and
 * raise SIGPIPE on a dead peer. A round trip that fails half way leaves the
 * reply stream out of step, so it marks the context failed (c->err), and
 * check() then refuses it.
 *
 * Per-connection state lives in a small record reached through the
 * reader's privdata, so the native handle stays a plain redisContext *.
 */
#include "cpool/cpool_redis.h"
#include "../core/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/sds.h>

#include "sockwait.h"
#include "tcp_written.h"

#define DEFAULT_PORT "6379"
#define DEFAULT_CLIENT_NAME "cpool"
#define DEFAULT_COMMAND_TIMEOUT_MS 10000
#define DEFAULT_RESET_TIMEOUT_MS 1000
#define MAX_TIMEOUT_MS 86400000LL /* one day */
/* TCP keepalive on idle pooled connections, so that a peer that vanished
 * without a FIN (host down, cable cut) turns into a socket error that
 * check() sees: first probe after 15 s idle (hiredis's own interval), then
 * every 5 s, given up after 3 unanswered. */
#define KEEPALIVE_IDLE_S 15
#define KEEPALIVE_INTVL_S 5
#define KEEPALIVE_CNT 3

enum reset_mode { RESET_TRACKED = 0, RESET_ALWAYS };

/* What each pipelined handshake command is, to classify its reply. */
enum hello_cmd { HELLO_AUTH = 1, HELLO_SETNAME, HELLO_SELECT, HELLO_PING };

/* Parsed target, made by ctx_new and read-only afterwards, so every method
 * may read it from any thread without a lock. */
typedef struct redis_ctx {
    bool is_unix;
    char host[256]; /* TCP: name or address, without IPv6 brackets */
    char port[8];   /* TCP: decimal */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* unix socket */
    char address[300]; /* "host:port", "[v6]:port" or the socket path */
    bool has_user, has_password;
    char user[256];
    char password[512];
    long long db;
    char client_name[64]; /* "" = no CLIENT SETNAME */
    int64_t command_timeout_ms; /* 0 = none */
    int64_t reset_timeout_ms;
    enum reset_mode reset_mode;
    /* The handshake, formatted once: it holds the password, so it is wiped
     * when the context is freed. */
    char *hello;
    size_t hello_len;
    int hello_n;
    enum hello_cmd hello_cmds[4];
    /* The middle of the legacy reset pipeline (servers without RESET):
     * UNWATCH ... SELECT db. */
    char *reset_mid;
    size_t reset_mid_len;
    /* The full reset: RESET, then the handshake again. Holds the password. */
    char *reset_full;
    size_t reset_full_len;
    /* Set once a server answered RESET with an error (Redis before 6.2):
     * the only field written after ctx_new. */
    atomic_bool no_reset;
} redis_ctx;

#define CONN_MAGIC 0x52454453u /* "REDS" */

/* One per established connection, in the reader's privdata. Touched only
 * by the lease holder or the pool thread that owns the connection at the
 * time; interrupt() never reads it. */
typedef struct redis_conn {
    unsigned magic;
    const redisContext *self; /* guards against a reader moved to another context */
    uint64_t id;
    uint32_t seq;   /* makes every reset's marker unique */
    unsigned state; /* CPOOL_REDIS_* bits the wrappers saw */
    bool own_io;    /* the connector or a wrapper is reading a reply */
    uint64_t untracked; /* replies read outside them since the last reset:
                           commands sent with plain hiredis calls */
    uint64_t written;   /* bytes written to the socket by the connector and
                           the wrappers (cpool__tcp_written's count) */
    bool written_known; /* false: the kernel cannot tell (a Unix socket) */
} redis_conn;

/* Outcome of one bounded I/O step. */
enum io_status { IO_OK = 0, IO_TIMEOUT, IO_EOF, IO_ERRNO, IO_CANCELLED, IO_PROTOCOL };

/* now + ms, or 0 (no deadline) when ms is 0. */
static int64_t deadline_after_ms(int64_t ms)
{
    return ms > 0 ? cpool__mono_ns() + ms * 1000000 : 0;
}

/* The earlier of two deadlines, where 0 means none. */
static int64_t earlier(int64_t a, int64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

static const char *errtext(int eno, char *buf, size_t size)
{
    return strerror_r(eno, buf, size); /* the GNU variant: returns the text */
}

/* Errors of a socket that say the peer or the path to it is gone or not
 * there, as opposed to a local problem (descriptor limit, permissions). */
static bool is_network_errno(int eno)
{
    switch (eno) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case ENOENT: /* unix socket file gone: no server */
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case ETIMEDOUT:
    case EAGAIN: /* unix socket: listen backlog full */
    case EADDRNOTAVAIL:
    case ENOTCONN:
        return true;
    default:
        return false;
    }
}

/* ------------------------------------------------------------ the target */

/* Parses a whole decimal string into [lo, hi]. */
static bool parse_ll(const char *s, long long lo, long long hi, long long *out)
{
    if (s[0] == '\0' || s[0] == '+' || s[0] == ' ')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* CPOOL_EINVAL for a target the connector cannot take. */
static int bad_target(cpool_error *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static int bad_target(cpool_error *err, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0, "%s",
                           msg);
}

/* Decodes a %-escaped part of the target into out; rejects an embedded NUL,
 * which Redis would see as the end of the string. */
static bool decode_part(const char *in, size_t len, char *out, size_t size)
{
    int n = cpool_uri_decode(in, len, out, size);
    return n >= 0 && strlen(out) == (size_t)n;
}

/* Splits "user:password" (already cut from "...@"). A user info without ':'
 * is refused: some clients read "redis://secret@host" as a user name and
 * others as a password, and guessing wrong would send the password as a
 * user name into server logs. */
static int parse_userinfo(redis_ctx *x, const char *ui, size_t len, cpool_error *err)
{
    const char *colon = memchr(ui, ':', len);
    if (colon == NULL)
        return bad_target(err,
                          "redis target: the user info before '@' has no ':'; write "
                          "redis://:PASSWORD@host for a password alone or "
                          "redis://USER:PASSWORD@host");
    size_t ulen = (size_t)(colon - ui);
    if (ulen > 0) {
        if (!decode_part(ui, ulen, x->user, sizeof x->user))
            return bad_target(err, "redis target: the user name is too long or has a bad "
                                   "%%-escape");
        x->has_user = true;
    }
    if (!decode_part(colon + 1, len - ulen - 1, x->password, sizeof x->password))
        return bad_target(err, "redis target: the password is too long or has a bad "
                               "%%-escape");
    x->has_password = true;
    return 0;
}

/* "host[:port]" or "[v6][:port]". */
static int parse_hostport(redis_ctx *x, const char *hp, size_t len, cpool_error *err)
{
    char tmp[300];
    if (len >= sizeof tmp)
        return bad_target(err, "redis target: host name too long");
    memcpy(tmp, hp, len);
    tmp[len] = '\0';
    char *host = tmp, *port = NULL;
    if (tmp[0] == '[') {
        char *rb = strchr(tmp, ']');
        if (rb == NULL)
            return bad_target(err, "redis target: '[' of an IPv6 address without ']' in "
                                   "'%s'", tmp);
        *rb = '\0';
        host = tmp + 1;
        if (rb[1] == ':')
            port = rb + 2;
        else if (rb[1] != '\0')
            return bad_target(err, "redis target: unexpected text after ']' in '%s'", rb + 1);
    } else {
        char *colon = strchr(tmp, ':');
        if (colon != NULL) {
            if (strchr(colon + 1, ':') != NULL)
                return bad_target(err, "redis target: write an IPv6 address in brackets "
                                       "(redis://[::1]:6379), not '%s'", tmp);
            *colon = '\0';
            port = colon + 1;
        }
    }
    if (host[0] == '\0')
        host = "127.0.0.1";
    if (!decode_part(host, strlen(host), x->host, sizeof x->host))
        return bad_target(err, "redis target: bad host name '%s'", host);
    long long p = 6379;
    if (port != NULL && !parse_ll(port, 1, 65535, &p))
        return bad_target(err, "redis target: port '%s' is not valid; allowed: 1..65535", port);
    snprintf(x->port, sizeof x->port, "%lld", p);
    bool v6 = strchr(x->host, ':') != NULL;
    snprintf(x->address, sizeof x->address, v6 ? "[%s]:%s" : "%s:%s", x->host, x->port);
    return 0;
}

/* The query parameters, read by the shared parser into a redis_query and
 * then reconciled with what the URL's user info and path said. */
typedef struct redis_query {
    long long db, command_timeout_ms, reset_timeout_ms;
    int reset;
    char user[256], password[512], client_name[64];
} redis_query;

enum { Q_DB, Q_USER, Q_PASSWORD, Q_CLIENT_NAME, Q_COMMAND_TIMEOUT, Q_RESET, Q_RESET_TIMEOUT };

static const char *const reset_modes[] = {"tracked", "always", NULL};
static const char printable[] = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

#define Q(field) offsetof(redis_query, field)
static const cpool_param redis_params[] = {
    [Q_DB] = {.name = "db", .type = CPOOL_PARAM_INT, .min = 0, .max = INT_MAX, .dflt = "0",
              .doc = "the database (SELECT); the URL's path may name it too",
              .offset = Q(db)},
    [Q_USER] = {.name = "user", .alias = "username", .type = CPOOL_PARAM_STRING, .min = 1,
                .max = 255, .dflt = "", .doc = "ACL user for AUTH (or before '@')",
                .offset = Q(user)},
    [Q_PASSWORD] = {.name = "password", .type = CPOOL_PARAM_STRING, .min = 0, .max = 511,
                    .secret = true, .dflt = "", .doc = "AUTH password (or in the user info)",
                    .offset = Q(password)},
    [Q_CLIENT_NAME] = {.name = "client_name", .type = CPOOL_PARAM_STRING, .min = 0, .max = 63,
                       .charset = printable,
                       .allowed = "up to 63 printable characters without spaces (empty = no "
                                  "CLIENT SETNAME)",
                       .dflt = DEFAULT_CLIENT_NAME, .doc = "CLIENT SETNAME at connect",
                       .offset = Q(client_name)},
    [Q_COMMAND_TIMEOUT] = {.name = "command_timeout_ms", .type = CPOOL_PARAM_INT, .min = 0,
                           .max = MAX_TIMEOUT_MS,
                           .allowed = "0..86400000 (milliseconds; 0 = no timeout)",
                           .dflt = "10000",
                           .doc = "bound on one command (socket timeout, ping, execute)",
                           .offset = Q(command_timeout_ms)},
    [Q_RESET] = {.name = "reset", .type = CPOOL_PARAM_ENUM, .choices = reset_modes,
                 .dflt = "tracked",
                 .doc = "check-in: full reset only when needed (tracked) or always",
                 .offset = Q(reset)},
    [Q_RESET_TIMEOUT] = {.name = "reset_timeout_ms", .type = CPOOL_PARAM_INT, .min = 1,
                         .max = MAX_TIMEOUT_MS, .dflt = "1000",
                         .doc = "bound on the check-in reset and describe()",
                         .offset = Q(reset_timeout_ms)},
};
#undef Q
#define NPARAMS (sizeof redis_params / sizeof redis_params[0])

/* Reads the connector's query parameters. `path_db` is the database the
 * path named (-1 = none); a db= parameter must agree with it, and a user
 * or password must not be given both in the user info and the query. */
static int parse_query(redis_ctx *x, const char *target, long long path_db,
                       cpool_error *err)
{
    redis_query q = {.db = path_db,
                     .command_timeout_ms = x->command_timeout_ms,
                     .reset_timeout_ms = x->reset_timeout_ms,
                     .reset = (int)x->reset_mode};
    snprintf(q.client_name, sizeof q.client_name, "%s", x->client_name);
    uint64_t seen = 0;
    size_t pos = 0;
    char name[64], val[1024]; /* room for a value too long for its row */
    int rc = 0;
    for (;;) {
        int r = cpool_uri_next(target, &pos, name, sizeof name, val, sizeof val);
        if (r == 0)
            break;
        if (r < 0) {
            rc = bad_target(err, "redis target: a query parameter is malformed, too long "
                                 "or has a bad %%-escape");
            break;
        }
        r = cpool_param_set("redis", redis_params, NPARAMS, name, val, &q, &seen, err);
        if (r == 0)
            r = cpool_param_unknown("redis", redis_params, NPARAMS, name, val, NULL, err);
        if (r < 0) {
            rc = r;
            break;
        }
        if ((seen & (1u << Q_DB)) && path_db >= 0 && q.db != path_db) {
            rc = bad_target(err, "redis target: db=%lld disagrees with the database in the "
                                 "path", q.db);
            break;
        }
    }
    if (rc == 0 && (seen & (1u << Q_USER))) {
        if (x->has_user)
            rc = bad_target(err, "redis target: the user is given both before '@' and as a "
                                 "parameter; give it once");
        memcpy(x->user, q.user, sizeof x->user);
        x->has_user = true;
    }
    if (rc == 0 && (seen & (1u << Q_PASSWORD))) {
        if (x->has_password)
            rc = bad_target(err, "redis target: the password is given both before '@' and "
                                 "as password=; give it once");
        memcpy(x->password, q.password, sizeof x->password);
        x->has_password = true;
    }
    if (rc == 0 && x->has_user && !x->has_password)
        rc = bad_target(err, "redis target: a user is given without a password; ACL AUTH "
                             "needs both (redis://USER:PASSWORD@host)");
    if (rc == 0) {
        x->db = q.db < 0 ? 0 : q.db;
        x->command_timeout_ms = q.command_timeout_ms;
        x->reset_timeout_ms = q.reset_timeout_ms;
        x->reset_mode = (enum reset_mode)q.reset;
        memcpy(x->client_name, q.client_name, sizeof x->client_name);
    }
    explicit_bzero(&q, sizeof q);
    explicit_bzero(val, sizeof val);
    return rc;
}

static int parse_target(redis_ctx *x, const char *target, cpool_error *err)
{
    static const struct {
        const char *prefix;
        bool is_unix;
    } schemes[] = {{"redis://", false}, {"unix://", true}, {"redis+unix://", true}};
    const char *rest = NULL;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i].prefix);
        if (strncasecmp(target, schemes[i].prefix, n) == 0) {
            rest = target + n;
            x->is_unix = schemes[i].is_unix;
            break;
        }
    }
    if (rest == NULL) {
        if (strncasecmp(target, "rediss://", 9) == 0)
            return bad_target(err, "redis target: rediss:// (TLS) is not supported: hiredis "
                                   "0.14 has no TLS");
        return bad_target(err, "redis target must start with redis://, unix:// or "
                               "redis+unix://");
    }
    /* The authority ends at the first '/', '?' or '#'; its last '@' ends
     * the user info (a password may contain '@' only %-escaped, but be
     * lenient with ':' and '@' before the last '@'). */
    size_t alen = strcspn(rest, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (rest[i] == '@')
            at = rest + i;
    if (at != NULL) {
        int rc = parse_userinfo(x, rest, (size_t)(at - rest), err);
        if (rc != 0)
            return rc;
    }
    const char *hp = at != NULL ? at + 1 : rest;
    size_t hplen = (size_t)(rest + alen - hp);
    const char *path = rest + alen;
    size_t plen = strcspn(path, "?#");
    long long path_db = -1;

    if (x->is_unix) {
        if (hplen != 0 && !(hplen == 9 && strncasecmp(hp, "localhost", 9) == 0))
            return bad_target(err, "redis target: a unix:// target names no host; write "
                                   "unix:///path/to/redis.sock");
        if (plen == 0 || path[0] != '/')
            return bad_target(err, "redis target: unix:// needs an absolute socket path "
                                   "(unix:///path/to/redis.sock)");
        if (!decode_part(path, plen, x->path, sizeof x->path))
            return bad_target(err, "redis target: the socket path is longer than %s bytes or "
                                   "has a bad %%-escape", "107");
        snprintf(x->address, sizeof x->address, "%s", x->path);
    } else {
        int rc = parse_hostport(x, hp, hplen, err);
        if (rc != 0)
            return rc;
        if (plen > 1) {
            char dbs[32];
            if (plen - 1 >= sizeof dbs || !decode_part(path + 1, plen - 1, dbs, sizeof dbs) ||
                !parse_ll(dbs, 0, INT_MAX, &path_db))
                return bad_target(err, "redis target: the path must be a database number "
                                       "(redis://host:6379/3)");
        }
    }
    return parse_query(x, target, path_db, err);
}

/* Appends one formatted command to *buf. */
static bool append_cmd(char **buf, size_t *len, int argc, const char **argv)
{
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (n < 0)
        return false;
    char *grown = realloc(*buf, *len + (size_t)n + 1);
    if (grown == NULL) {
        redisFreeCommand(cmd);
        return false;
    }
    memcpy(grown + *len, cmd, (size_t)n);
    *len += (size_t)n;
    grown[*len] = '\0';
    *buf = grown;
    redisFreeCommand(cmd);
    return true;
}

static void wipe_free(char *p, size_t len)
{
    if (p != NULL) {
        explicit_bzero(p, len);
        free(p);
    }
}

/* Formats the handshake and the reset pipeline once per pool. */
static bool build_pipelines(redis_ctx *x)
{
    char db[24];
    snprintf(db, sizeof db, "%lld", x->db);
    if (x->has_password) {
        const char *auth_user[] = {"AUTH", x->user, x->password};
        const char *auth_pass[] = {"AUTH", x->password};
        bool ok = x->has_user ? append_cmd(&x->hello, &x->hello_len, 3, auth_user)
                              : append_cmd(&x->hello, &x->hello_len, 2, auth_pass);
        if (!ok)
            return false;
        x->hello_cmds[x->hello_n++] = HELLO_AUTH;
    }
    if (x->client_name[0] != '\0') {
        const char *setname[] = {"CLIENT", "SETNAME", x->client_name};
        if (!append_cmd(&x->hello, &x->hello_len, 3, setname))
            return false;
        x->hello_cmds[x->hello_n++] = HELLO_SETNAME;
    }
    if (x->db != 0) {
        const char *select[] = {"SELECT", db};
        if (!append_cmd(&x->hello, &x->hello_len, 2, select))
            return false;
        x->hello_cmds[x->hello_n++] = HELLO_SELECT;
    }
    const char *ping[] = {"PING"};
    if (!append_cmd(&x->hello, &x->hello_len, 1, ping))
        return false;
    x->hello_cmds[x->hello_n++] = HELLO_PING;

    /* RESET ends MULTI, WATCH, pub/sub, MONITOR, tracking, CLIENT REPLY
     * OFF, READONLY, RESP3, the selected database, the client name and
     * the authenticated user; the handshake then puts the target's back. */
    const char *reset[] = {"RESET"};
    if (!append_cmd(&x->reset_full, &x->reset_full_len, 1, reset))
        return false;
    char *grown = realloc(x->reset_full, x->reset_full_len + x->hello_len);
    if (grown == NULL)
        return false;
    x->reset_full = grown;
    memcpy(x->reset_full + x->reset_full_len, x->hello, x->hello_len);
    x->reset_full_len += x->hello_len;

    /* UNSUBSCRIBE and PUNSUBSCRIBE without arguments leave every channel and
     * pattern (and answer even when there was none); SUNSUBSCRIBE does the
     * same for sharded channels on Redis 7 and is an ignored error before.
     * SELECT puts back the target's database whatever the user selected. */
    const char *unwatch[] = {"UNWATCH"}, *unsub[] = {"UNSUBSCRIBE"},
               *punsub[] = {"PUNSUBSCRIBE"}, *sunsub[] = {"SUNSUBSCRIBE"},
               *select[] = {"SELECT", db};
    return append_cmd(&x->reset_mid, &x->reset_mid_len, 1, unwatch) &&
           append_cmd(&x->reset_mid, &x->reset_mid_len, 1, unsub) &&
           append_cmd(&x->reset_mid, &x->reset_mid_len, 1, punsub) &&
           append_cmd(&x->reset_mid, &x->reset_mid_len, 1, sunsub) &&
           append_cmd(&x->reset_mid, &x->reset_mid_len, 2, select);
}

static void redis_ctx_free(void *vctx)
{
    redis_ctx *x = vctx;
    if (x == NULL)
        return;
    wipe_free(x->hello, x->hello_len);
    wipe_free(x->reset_full, x->reset_full_len);
    free(x->reset_mid);
    explicit_bzero(x, sizeof *x);
    free(x);
}

static int redis_ctx_new(const char *target, void **out, cpool_error *err)
{
    if (out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "redis ctx_new: no output pointer");
    *out = NULL;
    if (target == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "redis target: none given");
    redis_ctx *x = calloc(1, sizeof *x);
    if (x == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                               "redis target: out of memory");
    snprintf(x->client_name, sizeof x->client_name, "%s", DEFAULT_CLIENT_NAME);
    x->command_timeout_ms = DEFAULT_COMMAND_TIMEOUT_MS;
    x->reset_timeout_ms = DEFAULT_RESET_TIMEOUT_MS;
    x->reset_mode = RESET_TRACKED;
    atomic_init(&x->no_reset, false);
    int rc = parse_target(x, target, err);
    if (rc == 0 && !build_pipelines(x))
        rc = cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                             "redis target: out of memory");
    if (rc != 0) {
        redis_ctx_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* ------------------------------------------------------------ bounded I/O */

/* A CPOOL_WAIT_* outcome as an io_status. */
static enum io_status io_of(int wait)
{
    switch (wait) {
    case CPOOL_WAIT_READY: return IO_OK; /* errors and hang-ups show in the next send/recv */
    case CPOOL_WAIT_TIMEOUT: return IO_TIMEOUT;
    case CPOOL_WAIT_CANCELLED: return IO_CANCELLED;
    default: return IO_ERRNO;
    }
}

/* Waits until fd has `events`, the deadline passes or cancel_fd (-1 = none)
 * fires (cpool__wait_fd). */
static enum io_status wait_fd(int fd, short events, int64_t deadline, int cancel_fd,
                              int *eno)
{
    return io_of(cpool__wait_fd(fd, events, cancel_fd, deadline, eno));
}

static enum io_status send_all(int fd, const char *buf, size_t len, int64_t deadline,
                               int cancel_fd, int *eno)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            enum io_status st = wait_fd(fd, POLLOUT, deadline, cancel_fd, eno);
            if (st != IO_OK)
                return st;
            continue;
        }
        *eno = n < 0 ? errno : EPIPE;
        return IO_ERRNO;
    }
    return IO_OK;
}

/* Reads until hiredis's parser has one whole reply (the caller frees it). */
static enum io_status read_reply_raw(redisContext *c, int64_t deadline, int cancel_fd,
                                     redisReply **reply, int *eno);

static redis_conn *conn_state(const redisContext *c);
static void snapshot_written(redisContext *c, redis_conn *st);

/* Reads one reply of the connector's own. */
static enum io_status read_reply(redisContext *c, int64_t deadline, int cancel_fd,
                                 redisReply **reply, int *eno)
{
    redis_conn *st = conn_state(c);
    if (st != NULL)
        st->own_io = true;
    enum io_status s = read_reply_raw(c, deadline, cancel_fd, reply, eno);
    if (st != NULL)
        st->own_io = false;
    return s;
}

static enum io_status read_reply_raw(redisContext *c, int64_t deadline, int cancel_fd,
                                     redisReply **reply, int *eno)
{
    *reply = NULL;
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(c->reader, &r) != REDIS_OK)
            return IO_PROTOCOL;
        if (r != NULL) {
            *reply = r;
            return IO_OK;
        }
        enum io_status st = wait_fd(c->fd, POLLIN, deadline, cancel_fd, eno);
        if (st != IO_OK)
            return st;
        char buf[16384];
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK)
                return IO_PROTOCOL;
            continue;
        }
        if (n == 0)
            return IO_EOF;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            continue;
        *eno = errno;
        return IO_ERRNO;
    }
}

/* Marks the context failed after a round trip of ours broke off: its reply
 * stream is out of step, so hiredis calls must fail from now on and check()
 * refuses it. */
static void poison(redisContext *c, enum io_status st, int eno)
{
    char eb[128];
    if (c->err != 0)
        return;
    switch (st) {
    case IO_EOF:
        c->err = REDIS_ERR_EOF;
        snprintf(c->errstr, sizeof c->errstr, "Server closed the connection");
        break;
    case IO_PROTOCOL:
        c->err = REDIS_ERR_PROTOCOL;
        snprintf(c->errstr, sizeof c->errstr, "%s", c->reader->errstr);
        break;
    case IO_TIMEOUT:
        c->err = REDIS_ERR_IO;
        snprintf(c->errstr, sizeof c->errstr, "timed out waiting for a reply");
        break;
    case IO_CANCELLED:
        c->err = REDIS_ERR_IO;
        snprintf(c->errstr, sizeof c->errstr, "interrupted");
        break;
    default:
        c->err = REDIS_ERR_IO;
        snprintf(c->errstr, sizeof c->errstr, "%s", errtext(eno, eb, sizeof eb));
        break;
    }
}

static cpool_fail_kind io_kind(enum io_status st, int eno)
{
    switch (st) {
    case IO_TIMEOUT: return CPOOL_FAIL_TIMEOUT;
    case IO_EOF: return CPOOL_FAIL_NETWORK;
    case IO_CANCELLED: return CPOOL_FAIL_INTERRUPTED;
    case IO_ERRNO: return is_network_errno(eno) ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER;
    default: return CPOOL_FAIL_OTHER;
    }
}

/* Fills err for a round trip on an established connection that broke off,
 * after poisoning the context. */
static int io_failed(redisContext *c, const redis_ctx *x, const char *what,
                     enum io_status st, int eno, int64_t started, cpool_error *err)
{
    poison(c, st, eno);
    long long ms = (long long)((cpool__mono_ns() - started) / 1000000);
    if (st == IO_TIMEOUT)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                               "%s on redis %s: no reply within %lld ms", what, x->address,
                               ms);
    return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, io_kind(st, eno),
                           st == IO_ERRNO ? eno : 0, "%s on redis %s: %s", what, x->address,
                           c->errstr);
}

/* ------------------------------------------------------------ resolution */

/* A lookup on its own thread, so that the caller can give up at its
 * deadline or on cancel_fd. Whoever drops the last reference frees it: the
 * caller when the lookup finished first, else the thread when it finally
 * returns. A lookup that finished in time is joined, so that no thread of
 * it outlives the call: one still exiting (freeing the resolver's state
 * for its thread) when the program ends is reported as a leak by a leak
 * checker. One given up on is detached. */
typedef struct dns_job {
    atomic_int refs;
    atomic_bool done;
    int done_fd; /* eventfd, written when the lookup returned */
    char host[256];
    char port[8];
    int rc;                /* getaddrinfo's result; valid once done */
    int eno;               /* errno for EAI_SYSTEM; idem */
    struct addrinfo *res;  /* idem */
} dns_job;

static void dns_job_unref(dns_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        if (j->res != NULL)
            freeaddrinfo(j->res);
        close(j->done_fd);
        free(j);
    }
}

static void *dns_thread(void *arg)
{
    dns_job *j = arg;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    j->rc = getaddrinfo(j->host, j->port, &hints, &j->res);
    j->eno = errno;
    atomic_store_explicit(&j->done, true, memory_order_release);
    uint64_t one = 1;
    ssize_t w = write(j->done_fd, &one, sizeof one);
    (void)w; /* an eventfd write of 1 cannot fail short of overflow */
    dns_job_unref(j);
    return NULL;
}

static int dns_fail(const redis_ctx *x, int gai, int eno, cpool_error *err)
{
    char eb[128];
    if (gai == EAI_MEMORY)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_DNS, CPOOL_FAIL_OTHER, ENOMEM,
                               "resolve redis %s: out of memory", x->address);
    if (gai == EAI_SYSTEM)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_DNS, CPOOL_FAIL_DNS, eno,
                               "resolve redis %s: %s", x->address,
                               errtext(eno, eb, sizeof eb));
    return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_DNS, CPOOL_FAIL_DNS, gai,
                           "resolve redis %s: %s", x->address, gai_strerror(gai));
}

/* Resolves the target's host. A numeric address is converted at once; a
 * name is looked up on a helper thread. */
static int resolve(const redis_ctx *x, const cpool_connect_args *a, struct addrinfo **out,
                   cpool_error *err)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(x->host, x->port, &hints, out);
    if (gai == 0)
        return 0;
    if (gai != EAI_NONAME)
        return dns_fail(x, gai, errno, err);

    dns_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_DNS, CPOOL_FAIL_OTHER, ENOMEM,
                               "resolve redis %s: out of memory", x->address);
    j->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (j->done_fd < 0) {
        int eno = errno;
        free(j);
        return dns_fail(x, EAI_SYSTEM, eno, err);
    }
    snprintf(j->host, sizeof j->host, "%s", x->host);
    snprintf(j->port, sizeof j->port, "%s", x->port);
    atomic_init(&j->refs, 2);
    atomic_init(&j->done, false);

    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    int prc = pthread_attr_init(&attr);
    if (prc == 0) {
        /* The helper must not take the application's signals. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        prc = pthread_create(&th, &attr, dns_thread, j);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    if (prc != 0) {
        /* No thread to spare: resolve here, unbounded, rather than fail
         * a target that would resolve. */
        close(j->done_fd);
        free(j);
        hints.ai_flags = AI_ADDRCONFIG;
        gai = getaddrinfo(x->host, x->port, &hints, out);
        return gai == 0 ? 0 : dns_fail(x, gai, errno, err);
    }

    int eno = 0;
    enum io_status st = wait_fd(j->done_fd, POLLIN, a->deadline_ns, a->cancel_fd, &eno);
    if (st == IO_OK && atomic_load_explicit(&j->done, memory_order_acquire)) {
        pthread_join(th, NULL); /* it only has to return */
        gai = j->rc;
        *out = j->res;
        j->res = NULL;
        eno = j->eno;
        dns_job_unref(j);
        return gai == 0 ? 0 : dns_fail(x, gai, eno, err);
    }
    pthread_detach(th);
    dns_job_unref(j); /* the thread frees it when the lookup returns */
    if (st == IO_CANCELLED)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_DNS, CPOOL_FAIL_INTERRUPTED, 0,
                               "resolve redis %s: interrupted", x->address);
    if (st == IO_TIMEOUT)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_DNS, CPOOL_FAIL_TIMEOUT,
                               ETIMEDOUT, "resolve redis %s: timed out", x->address);
    return dns_fail(x, EAI_SYSTEM, eno, err);
}

/* ------------------------------------------------------------ establishment */

/* One non-blocking connect (cpool__connect_fd). Returns IO_OK with *out
 * set, or the status (and errno in *eno) that ended it. */
static enum io_status connect_one(int family, const struct sockaddr *sa, socklen_t len,
                                  const cpool_connect_args *a, int *out, int *eno)
{
    return io_of(cpool__connect_fd(family, sa, len, a->deadline_ns, a->cancel_fd, out, eno));
}

static void tune_tcp(int fd)
{
    /* Failures only cost latency or slower dead-peer detection. */
    int one = 1, idle = KEEPALIVE_IDLE_S, intvl = KEEPALIVE_INTVL_S, cnt = KEEPALIVE_CNT;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static int connect_fail(const redis_ctx *x, enum io_status st, int eno, int64_t t0,
                        cpool_error *err)
{
    char eb[128];
    if (st == IO_CANCELLED)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT,
                               CPOOL_FAIL_INTERRUPTED, 0, "connect redis %s: interrupted",
                               x->address);
    if (st == IO_TIMEOUT)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_TIMEOUT,
                               ETIMEDOUT, "connect redis %s: timed out after %lld ms",
                               x->address, (long long)((cpool__mono_ns() - t0) / 1000000));
    if (eno == EMFILE || eno == ENFILE || eno == ENOBUFS || eno == ENOMEM)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, eno,
                               "connect redis %s: %s", x->address,
                               errtext(eno, eb, sizeof eb));
    return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT,
                           is_network_errno(eno) ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER, eno,
                           "connect redis %s: %s", x->address, errtext(eno, eb, sizeof eb));
}

/* DNS and connect; *fd is a connected non-blocking socket on success. */
static int open_socket(const redis_ctx *x, cpool_connect_args *a, int *fd,
                       cpool_error *err)
{
    int64_t t0 = cpool__mono_ns();
    int eno = 0;
    enum io_status st;
    if (x->is_unix) {
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        memcpy(sa.sun_path, x->path, strlen(x->path) + 1); /* fits: checked at parse */
        st = connect_one(AF_UNIX, (const struct sockaddr *)&sa, sizeof sa, a, fd, &eno);
        a->phase_ns[CPOOL_PHASE_CONNECT] = cpool__mono_ns() - t0;
        return st == IO_OK ? 0 : connect_fail(x, st, eno, t0, err);
    }

    struct addrinfo *res = NULL;
    int rc = resolve(x, a, &res, err);
    int64_t t1 = cpool__mono_ns();
    a->phase_ns[CPOOL_PHASE_DNS] = t1 - t0;
    if (rc != 0)
        return rc;
    /* Every address in turn ("localhost" is ::1 and 127.0.0.1; a server may
     * listen on one only), until one connects or time runs out. */
    st = IO_ERRNO;
    eno = EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        st = connect_one(ai->ai_family, ai->ai_addr, ai->ai_addrlen, a, fd, &eno);
        if (st != IO_ERRNO)
            break;
    }
    freeaddrinfo(res);
    a->phase_ns[CPOOL_PHASE_CONNECT] = cpool__mono_ns() - t1;
    if (st != IO_OK)
        return connect_fail(x, st, eno, t1, err);
    tune_tcp(*fd);
    return 0;
}

/* The server accepts connections: a connect (after the DNS lookup), closed
 * at once; nothing is sent, so the server logs nothing. */
static int redis_probe(void *vctx, int64_t deadline_ns, cpool_error *err)
{
    const redis_ctx *x = vctx;
    if (x == NULL)
        return 1;
    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.deadline_ns = deadline_ns;
    a.cancel_fd = -1;
    int fd = -1;
    int rc = open_socket(x, &a, &fd, err);
    if (fd >= 0)
        close(fd);
    return rc;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Errors any command may get while the server cannot serve yet: the
 * dataset is loading, a script or module is busy, a replica lost its
 * primary. They pass, so they are server-side and transient. */
static bool is_transient_error(const char *m)
{
    return starts_with(m, "LOADING") || starts_with(m, "BUSY") ||
           starts_with(m, "MASTERDOWN") || starts_with(m, "TRYAGAIN") ||
           starts_with(m, "ERR max number of clients reached");
}

static bool is_auth_error(const char *m)
{
    return starts_with(m, "WRONGPASS") || starts_with(m, "NOAUTH") ||
           starts_with(m, "NOPERM") || starts_with(m, "ERR invalid password") ||
           starts_with(m, "ERR invalid username-password pair") ||
           starts_with(m, "ERR AUTH") || starts_with(m, "ERR Client sent AUTH");
}

static const char *hello_name(enum hello_cmd cmd)
{
    switch (cmd) {
    case HELLO_AUTH: return "AUTH";
    case HELLO_SETNAME: return "CLIENT SETNAME";
    case HELLO_SELECT: return "SELECT";
    default: return "PING";
    }
}

/* Checks one handshake reply. */
static int hello_reply(const redis_ctx *x, enum hello_cmd cmd, const redisReply *r,
                       cpool_error *err)
{
    const char *name = hello_name(cmd);
    if (r->type == REDIS_REPLY_ERROR) {
        const char *m = r->str != NULL ? r->str : "";
        if (is_transient_error(m))
            return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                                   starts_with(m, "ERR max number of clients reached")
                                       ? CPOOL_FAIL_CAPACITY
                                       : CPOOL_FAIL_SERVER,
                                   0, "redis %s not ready: %s: %.150s", x->address, name, m);
        if (cmd == HELLO_AUTH || is_auth_error(m))
            return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_AUTH, CPOOL_FAIL_AUTH, 0,
                                   "redis %s: %s failed%s%s%s: %.150s", x->address, name,
                                   x->has_user ? " for user '" : "",
                                   x->has_user ? x->user : "", x->has_user ? "'" : "", m);
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_SERVER,
                               0, "redis %s: %s failed: %.150s", x->address, name, m);
    }
    const char *want = cmd == HELLO_PING ? "PONG" : "OK";
    if (r->type != REDIS_REPLY_STATUS || r->str == NULL || strcmp(r->str, want) != 0)
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER,
                               0, "redis %s: unexpected reply to %s (type %d)", x->address,
                               name, r->type);
    return 0;
}

static int hello_io_failed(const redis_ctx *x, redisContext *c, enum io_status st, int eno,
                           int replies, int64_t t0, cpool_error *err)
{
    char eb[128];
    long long ms = (long long)((cpool__mono_ns() - t0) / 1000000);
    switch (st) {
    case IO_CANCELLED:
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                               CPOOL_FAIL_INTERRUPTED, 0,
                               "connect redis %s: interrupted during the handshake",
                               x->address);
    case IO_TIMEOUT:
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_TIMEOUT,
                               ETIMEDOUT,
                               replies == 0
                                   ? "connect redis %s: no answer to the handshake within "
                                     "%lld ms (server stopped or overloaded?)"
                                   : "connect redis %s: handshake timed out after %lld ms",
                               x->address, ms);
    case IO_EOF:
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_NETWORK,
                               0, "connect redis %s: server closed the connection during "
                                  "the handshake", x->address);
    case IO_PROTOCOL:
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER, 0,
                               "connect redis %s: protocol error (is it a Redis server?): "
                               "%s", x->address, c->reader->errstr);
    default:
        return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE,
                               is_network_errno(eno) ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER,
                               eno, "connect redis %s: %s", x->address,
                               errtext(eno, eb, sizeof eb));
    }
}

/* Sends the pipelined handshake and checks each reply in order. The first
 * reply is AUTH's when a password is set: the time to it is the AUTH
 * phase, the rest the HANDSHAKE phase. A server that never answers, or
 * hangs up before answering, fails the HANDSHAKE phase whatever was sent. */
static int handshake(const redis_ctx *x, redisContext *c, cpool_connect_args *a,
                     cpool_error *err)
{
    int64_t t0 = cpool__mono_ns(), t_auth = 0;
    int eno = 0;
    enum io_status st = send_all(c->fd, x->hello, x->hello_len, a->deadline_ns,
                                 a->cancel_fd, &eno);
    if (st != IO_OK) {
        a->phase_ns[CPOOL_PHASE_HANDSHAKE] = cpool__mono_ns() - t0;
        return hello_io_failed(x, c, st, eno, 0, t0, err);
    }
    int rc = 0;
    for (int i = 0; i < x->hello_n && rc == 0; i++) {
        redisReply *r = NULL;
        st = read_reply(c, a->deadline_ns, a->cancel_fd, &r, &eno);
        if (st != IO_OK) {
            rc = hello_io_failed(x, c, st, eno, i, t0, err);
            break;
        }
        if (x->hello_cmds[i] == HELLO_AUTH) {
            t_auth = cpool__mono_ns();
            a->phase_ns[CPOOL_PHASE_AUTH] = t_auth - t0;
        }
        rc = hello_reply(x, x->hello_cmds[i], r, err);
        freeReplyObject(r);
    }
    a->phase_ns[CPOOL_PHASE_HANDSHAKE] = cpool__mono_ns() - (t_auth != 0 ? t_auth : t0);
    return rc;
}

/* Replies read with plain hiredis calls (redisCommand, redisGetReply) are
 * counted through the reader's object constructors -- hiredis's own,
 * wrapped -- so that a check-in knows commands went by the wrappers'
 * tracking, and resets the session in full. */
static redisReplyObjectFunctions hiredis_fns, counting_fns;
static pthread_once_t counting_once = PTHREAD_ONCE_INIT;

static void count_reply(const redisReadTask *t)
{
    redis_conn *st = t->privdata;
    if (t->parent == NULL && st != NULL && !st->own_io)
        st->untracked++;
}

static void *count_string(const redisReadTask *t, char *str, size_t len)
{
    count_reply(t);
    return hiredis_fns.createString(t, str, len);
}

static void *count_array(const redisReadTask *t, int elements)
{
    count_reply(t);
    return hiredis_fns.createArray(t, elements);
}

static void *count_integer(const redisReadTask *t, long long value)
{
    count_reply(t);
    return hiredis_fns.createInteger(t, value);
}

static void *count_nil(const redisReadTask *t)
{
    count_reply(t);
    return hiredis_fns.createNil(t);
}

static bool counting_ok;

static void counting_init(void)
{
    redisReader *r = redisReaderCreate();
    if (r == NULL)
        return; /* nothing counted: every check-in resets in full */
    if (r->fn != NULL && r->fn->createString != NULL && r->fn->createArray != NULL &&
        r->fn->createInteger != NULL && r->fn->createNil != NULL) {
        hiredis_fns = *r->fn;
        counting_fns = hiredis_fns;
        counting_fns.createString = count_string;
        counting_fns.createArray = count_array;
        counting_fns.createInteger = count_integer;
        counting_fns.createNil = count_nil;
        counting_ok = true;
    }
    redisReaderFree(r);
}

/* Frees a context without any I/O: hiredis's redisFree would only close()
 * the descriptor too, but skips descriptor 0, which a process with stdin
 * closed can get for a socket. */
static void free_context(redisContext *c)
{
    int fd = redisFreeKeepFd(c);
    if (fd >= 0)
        close(fd);
}

static int redis_connect(void *vctx, cpool_connect_args *a, void **native, cpool_error *err)
{
    const redis_ctx *x = vctx;
    *native = NULL;
    if (x == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "redis connector used without its context (leave "
                               "connector_ctx NULL: cpool_create makes it from the target)");
    a->service_id[0] = '\0';
    redis_conn *st = calloc(1, sizeof *st);
    if (st == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER,
                               ENOMEM, "connect redis %s: out of memory", x->address);
    int fd = -1;
    int rc = open_socket(x, a, &fd, err);
    if (rc != 0) {
        free(st);
        return rc;
    }
    /* hiredis marks this context blocking and connected; until the
     * handshake is done the descriptor stays non-blocking and only the
     * bounded helpers above touch it. */
    redisContext *c = redisConnectFd(fd);
    if (c == NULL) {
        close(fd);
        free(st);
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER,
                               ENOMEM, "connect redis %s: out of memory", x->address);
    }
    rc = handshake(x, c, a, err);
    if (rc == 0) {
        int fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
            char eb[128];
            int eno = errno;
            rc = cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER,
                                 eno, "connect redis %s: fcntl: %s", x->address,
                                 errtext(eno, eb, sizeof eb));
        }
    }
    if (rc == 0 && x->command_timeout_ms > 0) {
        struct timeval tv = {.tv_sec = (time_t)(x->command_timeout_ms / 1000),
                             .tv_usec = (suseconds_t)(x->command_timeout_ms % 1000) * 1000};
        if (redisSetTimeout(c, tv) != REDIS_OK)
            rc = cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER,
                                 errno, "connect redis %s: setting the command timeout: %s",
                                 x->address, c->errstr);
    }
    if (rc != 0) {
        free_context(c);
        free(st);
        return rc;
    }
    st->magic = CONN_MAGIC;
    st->self = c;
    st->id = a->conn_id;
    redisReaderSetPrivdata(c->reader, st);
    pthread_once(&counting_once, counting_init);
    if (counting_ok)
        c->reader->fn = &counting_fns;
    else
        st->untracked = 1; /* cannot tell: reset in full at check-in */
    snapshot_written(c, st);
    *native = c;
    return 0;
}

/* ------------------------------------------------------------ established */

static redis_conn *conn_state(const redisContext *c)
{
    if (c == NULL || c->reader == NULL)
        return NULL;
    redis_conn *st = c->reader->privdata;
    return st != NULL && st->magic == CONN_MAGIC && st->self == c ? st : NULL;
}

/* Takes the socket's written-bytes count as the connector's own. */
static void snapshot_written(redisContext *c, redis_conn *st)
{
    st->written_known = cpool__tcp_written(c->fd, &st->written) == 0;
}

/* Counts bytes the connector or a wrapper wrote. */
static void own_sent(redisContext *c, size_t n)
{
    redis_conn *st = conn_state(c);
    if (st != NULL)
        st->written += n;
}

/* Whether bytes went out on the socket around the connector and the
 * wrappers since the last reset: a command sent with plain hiredis calls
 * (redisAppendCommand, redisBufferWrite), whose reply may still be on its
 * way. True when the kernel cannot tell. */
static bool sent_around(const redisContext *c, const redis_conn *st)
{
    uint64_t now;
    return !st->written_known || cpool__tcp_written(c->fd, &now) != 0 || now != st->written;
}

static void release(void *native)
{
    redisContext *c = native;
    if (c == NULL)
        return;
    redis_conn *st = conn_state(c);
    if (c->reader != NULL)
        redisReaderSetPrivdata(c->reader, NULL);
    free_context(c);
    if (st != NULL) {
        st->magic = 0;
        free(st);
    }
}

/* No QUIT: closing the socket is how Redis clients end a session (Redis
 * 7.2 deprecates QUIT for this reason), and it keeps close() free of
 * blocking I/O. */
static void redis_close(void *vctx, void *native)
{
    (void)vctx;
    release(native);
}

/* In a forked child: closing our copy of the descriptor sends nothing while
 * the parent still holds the socket (the kernel sends a FIN only when the
 * last descriptor goes), so the parent's session is untouched. Never
 * shutdown() here: that would end the parent's session too. */
static void redis_abandon(void *vctx, void *native)
{
    (void)vctx;
    release(native);
}

static bool reader_has_data(const redisReader *r)
{
    return r != NULL && (r->pos < r->len || r->ridx >= 0);
}

/* The checks that need no round trip: the context has not failed, no
 * command waits unsent, no reply waits unread, the server has not closed
 * its end or sent anything unasked. */
static int local_check(const redis_ctx *x, redisContext *c, const char *what,
                       redis_conn **out, cpool_error *err)
{
    const char *addr = x != NULL ? x->address : "?";
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s: no redis connection", what);
    if (c->err != 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY,
                               c->err == REDIS_ERR_EOF || c->err == REDIS_ERR_IO
                                   ? CPOOL_FAIL_NETWORK
                                   : CPOOL_FAIL_OTHER,
                               0, "%s on redis %s: connection failed earlier: %s", what, addr,
                               c->errstr);
    redis_conn *st = conn_state(c);
    if (st == NULL)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on redis %s: the connection's reader was replaced", what,
                               addr);
    if (c->obuf != NULL && sdslen(c->obuf) > 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on redis %s: %zu bytes of appended commands were never "
                               "sent (closed without sending them)", what, addr,
                               sdslen(c->obuf));
    if (reader_has_data(c->reader))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on redis %s: replies were left unread", what, addr);
    char b;
    ssize_t n;
    do
        n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_NETWORK, 0,
                               "%s on redis %s: the server closed the connection", what, addr);
    if (n > 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on redis %s: unread data from the server (replies left "
                               "unread, or pub/sub messages)", what, addr);
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
        char eb[128];
        int eno = errno;
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY,
                               is_network_errno(eno) ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER,
                               eno, "%s on redis %s: %s", what, addr,
                               errtext(eno, eb, sizeof eb));
    }
    *out = st;
    return 0;
}

static int redis_check(void *vctx, void *native, cpool_error *err)
{
    redis_conn *st;
    return local_check(vctx, native, "check", &st, err);
}

static const char *reply_str(const redisReply *r)
{
    return r->str != NULL ? r->str : "";
}

static int redis_ping(void *vctx, void *native, int64_t deadline_ns, cpool_error *err)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    int rc = local_check(x, c, "ping", &st, err);
    if (rc != 0)
        return rc;
    int64_t t0 = cpool__mono_ns();
    /* A ping is a command: it waits no longer than one would. */
    int64_t deadline = earlier(deadline_ns, deadline_after_ms(x->command_timeout_ms));
    if (deadline != 0 && t0 >= deadline)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                               "ping on redis %s: no time left", x->address);
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    int eno = 0;
    enum io_status s = send_all(c->fd, ping, sizeof ping - 1, deadline, -1, &eno);
    redisReply *r = NULL;
    if (s == IO_OK) {
        own_sent(c, sizeof ping - 1);
        s = read_reply(c, deadline, -1, &r, &eno);
    }
    if (s != IO_OK)
        return io_failed(c, x, "ping", s, eno, t0, err);
    int type = r->type;
    char text[160];
    snprintf(text, sizeof text, "%s", reply_str(r));
    freeReplyObject(r);
    if (type == REDIS_REPLY_STATUS && strcmp(text, "PONG") == 0)
        return 0;
    if (type == REDIS_REPLY_ERROR)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                               "ping on redis %s: %s", x->address, text);
    poison(c, IO_PROTOCOL, 0);
    return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                           "ping on redis %s: unexpected reply (type %d; in pub/sub mode?)",
                           x->address, type);
}

/* Appends "PING <marker>" to buf. */
static size_t put_ping(char *buf, size_t size, const char *marker)
{
    int n = snprintf(buf, size, "*2\r\n$4\r\nPING\r\n$%zu\r\n%s\r\n", strlen(marker), marker);
    return n < 0 || (size_t)n >= size ? 0 : (size_t)n;
}

/* The reply to "PING marker": the marker as a bulk string, or in pub/sub
 * mode the array ["pong", marker]. *subscribed tells which. */
static bool is_marker(const redisReply *r, const char *marker, bool *subscribed)
{
    size_t n = strlen(marker);
    if (r->type == REDIS_REPLY_STRING && r->len == n && memcmp(r->str, marker, n) == 0) {
        *subscribed = false;
        return true;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "pong") == 0 &&
        r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len == n &&
        memcmp(r->element[1]->str, marker, n) == 0) {
        *subscribed = true;
        return true;
    }
    return false;
}

/* A pub/sub message pushed by the server, as opposed to a reply. */
static bool is_message(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return false;
    const char *k = r->element[0]->str;
    return strcmp(k, "message") == 0 || strcmp(k, "pmessage") == 0 ||
           strcmp(k, "smessage") == 0;
}

/* The legacy reset, for servers without RESET (Redis before 6.2), which
 * can undo only what the wrappers tracked. One pipelined round trip:
 *     DISCARD (only inside MULTI), PING <a>, UNWATCH, UNSUBSCRIBE,
 *     PUNSUBSCRIBE, SUNSUBSCRIBE, SELECT <db>, PING <b>
 * DISCARD ends a MULTI left open and must come first: inside MULTI the
 * PING would only be queued. No reply but DISCARD's may precede marker
 * <a>; more means replies of the user's own commands were still on their
 * way, and the connection is closed. Marker <a> comes back as an array in
 * pub/sub mode. The unsubscribe commands leave that mode (their
 * confirmations and any message still in flight are skipped); marker <b>
 * must then come back as a plain string, and SELECT's +OK right before
 * it. */
static int legacy_reset(const redis_ctx *x, redisContext *c, redis_conn *st, int64_t deadline,
                        cpool_error *err)
{
    if ((st->state & (CPOOL_REDIS_UNRESTORABLE | CPOOL_REDIS_UNKNOWN)) || st->untracked != 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "reset on redis %s: the server has no RESET (Redis before "
                               "6.2), and the session changed in a way only RESET undoes "
                               "(AUTH, HELLO, CLIENT ..., or commands sent without the "
                               "cpool_redis_command wrappers)", x->address);
    char ma[48], mb[48], buf[512];
    st->seq++;
    snprintf(ma, sizeof ma, "cpool-reset-%llx-%x-a", (unsigned long long)st->id, st->seq);
    snprintf(mb, sizeof mb, "cpool-reset-%llx-%x-b", (unsigned long long)st->id, st->seq);
    static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
    bool in_multi = (st->state & CPOOL_REDIS_IN_MULTI) != 0;
    size_t n = 0;
    if (in_multi) {
        memcpy(buf, discard, sizeof discard - 1);
        n = sizeof discard - 1;
    }
    size_t w = put_ping(buf + n, sizeof buf - n, ma);
    n += w;
    if (w == 0 || n + x->reset_mid_len >= sizeof buf)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "reset on redis %s: pipeline too long", x->address);
    memcpy(buf + n, x->reset_mid, x->reset_mid_len);
    n += x->reset_mid_len;
    w = put_ping(buf + n, sizeof buf - n, mb);
    if (w == 0)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "reset on redis %s: pipeline too long", x->address);
    n += w;

    int64_t t0 = cpool__mono_ns();
    int eno = 0;
    enum io_status s = send_all(c->fd, buf, n, deadline, -1, &eno);
    if (s != IO_OK)
        return io_failed(c, x, "reset", s, eno, t0, err);

    int before = 0;
    for (;;) {
        redisReply *r = NULL;
        s = read_reply(c, deadline, -1, &r, &eno);
        if (s != IO_OK)
            return io_failed(c, x, "reset", s, eno, t0, err);
        bool subscribed; /* the unsubscribe commands run either way */
        bool mark = is_marker(r, ma, &subscribed);
        bool msg = !mark && is_message(r);
        freeReplyObject(r);
        if (mark)
            break;
        if (!msg && ++before > (in_multi ? 1 : 0)) {
            poison(c, IO_PROTOCOL, 0);
            snprintf(c->errstr, sizeof c->errstr, "replies left unread at check-in");
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                                   "reset on redis %s: replies of earlier commands were "
                                   "left unread", x->address);
        }
    }
    bool select_ok = false, still_subscribed = false;
    for (;;) {
        redisReply *r = NULL;
        s = read_reply(c, deadline, -1, &r, &eno);
        if (s != IO_OK)
            return io_failed(c, x, "reset", s, eno, t0, err);
        bool mark = is_marker(r, mb, &still_subscribed);
        if (!mark && !is_message(r))
            select_ok = r->type == REDIS_REPLY_STATUS && strcmp(reply_str(r), "OK") == 0;
        freeReplyObject(r);
        if (mark)
            break;
    }
    if (still_subscribed || !select_ok) {
        poison(c, IO_PROTOCOL, 0);
        snprintf(c->errstr, sizeof c->errstr, "reset failed");
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                               still_subscribed
                                   ? "reset on redis %s: still subscribed after UNSUBSCRIBE"
                                   : "reset on redis %s: SELECT of the target's database "
                                     "failed",
                               x->address);
    }
    return 0;
}

/* The full reset: one pipelined round trip of RESET and the handshake
 * (AUTH, CLIENT SETNAME, SELECT, PING). Pub/sub messages already on their
 * way may precede +RESET and are skipped; any other reply before it is the
 * answer to a command of the lease's that was still in flight, and the
 * connection is closed. After +RESET the handshake's replies are checked
 * as at establishment. */
static int full_reset(const redis_ctx *x, redisContext *c, redis_conn *st, const char *what,
                      int64_t deadline, cpool_error *err)
{
    if (atomic_load(&x->no_reset))
        return legacy_reset(x, c, st, deadline, err);
    int64_t t0 = cpool__mono_ns();
    int eno = 0;
    enum io_status s = send_all(c->fd, x->reset_full, x->reset_full_len, deadline, -1, &eno);
    if (s != IO_OK)
        return io_failed(c, x, what, s, eno, t0, err);
    for (;;) {
        redisReply *r = NULL;
        s = read_reply(c, deadline, -1, &r, &eno);
        if (s != IO_OK)
            return io_failed(c, x, what, s, eno, t0, err);
        if (is_message(r)) {
            freeReplyObject(r);
            continue;
        }
        bool ok = r->type == REDIS_REPLY_STATUS && strcmp(reply_str(r), "RESET") == 0;
        bool unknown = r->type == REDIS_REPLY_ERROR &&
                       strncmp(reply_str(r), "ERR unknown command", 19) == 0;
        freeReplyObject(r);
        if (ok)
            break;
        poison(c, IO_PROTOCOL, 0);
        snprintf(c->errstr, sizeof c->errstr, "%s failed", what);
        if (unknown) {
            /* Written once per server, read with atomic loads: the one
             * field of the context that changes after ctx_new. */
            atomic_store(&((redis_ctx *)x)->no_reset, true);
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                                   "%s on redis %s: the server has no RESET (Redis before "
                                   "6.2); from now on only what the cpool_redis_command "
                                   "wrappers tracked is undone", what, x->address);
        }
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on redis %s: replies of earlier commands were left "
                               "unread", what, x->address);
    }
    for (int i = 0; i < x->hello_n; i++) {
        redisReply *r = NULL;
        s = read_reply(c, deadline, -1, &r, &eno);
        if (s != IO_OK)
            return io_failed(c, x, what, s, eno, t0, err);
        cpool_error e;
        int rc = hello_reply(x, x->hello_cmds[i], r, &e);
        freeReplyObject(r);
        if (rc != 0) {
            poison(c, IO_PROTOCOL, 0);
            snprintf(c->errstr, sizeof c->errstr, "%s failed", what);
            return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, e.kind, e.native,
                                   "%s: %s", what, e.message);
        }
    }
    return 0;
}

/* After a reset: nothing to undo, nothing sent around the wrappers. */
static void fresh_again(redisContext *c, redis_conn *st)
{
    st->state = 0;
    st->untracked = counting_ok ? 0 : 1;
    snapshot_written(c, st);
}

/* Check-in. The local checks close a connection with unsent commands or
 * unread replies. reset=tracked (the default) then costs no round trip
 * when the wrappers saw nothing to undo and no command went around them;
 * otherwise, and always with reset=always, the session is reset in full. */
static int redis_reset(void *vctx, void *native, cpool_error *err)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    int rc = local_check(x, c, "reset", &st, err);
    if (rc != 0)
        return rc;
    if (x->reset_mode == RESET_TRACKED && st->state == 0 && st->untracked == 0 &&
        !sent_around(c, st))
        return 0;
    rc = full_reset(x, c, st, "reset", deadline_after_ms(x->reset_timeout_ms), err);
    if (rc == 0)
        fresh_again(c, st);
    return rc;
}

/* Another tenant's turn: the full reset, whatever was tracked. */
static int redis_discard(void *vctx, void *native, int64_t deadline_ns, cpool_error *err)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    int rc = local_check(x, c, "discard", &st, err);
    if (rc != 0)
        return rc;
    if (atomic_load(&x->no_reset))
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "discard on redis %s: the server has no RESET (Redis before "
                               "6.2), so a session cannot be made fresh", x->address);
    rc = full_reset(x, c, st, "discard", earlier(deadline_ns,
                                                 deadline_after_ms(x->reset_timeout_ms)),
                    err);
    if (rc == 0)
        fresh_again(c, st);
    return rc;
}

/* Makes a blocked read or write on the connection return at once (EOF),
 * from any thread. The pool never frees the context while this runs, and
 * nothing writes c->fd after establishment, so reading it here is safe. */
static void redis_interrupt(void *vctx, void *native)
{
    (void)vctx;
    redisContext *c = native;
    if (c != NULL && c->fd >= 0)
        (void)shutdown(c->fd, SHUT_RDWR);
}

static int redis_address(void *vctx, const char *target, char *buf, size_t size)
{
    (void)target;
    const redis_ctx *x = vctx;
    if (x == NULL || buf == NULL || size == 0)
        return CPOOL_EINVAL;
    int n = snprintf(buf, size, "%s", x->address);
    return n < 0 || (size_t)n >= size ? CPOOL_EINVAL : 0;
}

/* The value of "key:" in an INFO section, copied into out ("" if absent). */
static void info_field(const char *info, const char *key, char *out, size_t size)
{
    size_t klen = strlen(key);
    out[0] = '\0';
    for (const char *p = info; p != NULL && *p != '\0';) {
        if (strncmp(p, key, klen) == 0 && p[klen] == ':') {
            const char *v = p + klen + 1;
            size_t vlen = strcspn(v, "\r\n");
            snprintf(out, size, "%.*s", (int)(vlen < size ? vlen : size - 1), v);
            return;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
}

/* Sends one pipeline and collects `n` replies, bounded by the deadline. */
static int round_trip(const redis_ctx *x, redisContext *c, const char *what, const char *out,
                      size_t len, redisReply **replies, int n, int64_t deadline,
                      cpool_error *err)
{
    int64_t t0 = cpool__mono_ns();
    int eno = 0;
    enum io_status s = send_all(c->fd, out, len, deadline, -1, &eno);
    if (s == IO_OK)
        own_sent(c, len);
    for (int i = 0; i < n; i++)
        replies[i] = NULL;
    for (int i = 0; i < n && s == IO_OK; i++)
        s = read_reply(c, deadline, -1, &replies[i], &eno);
    if (s == IO_OK)
        return 0;
    for (int i = 0; i < n; i++)
        if (replies[i] != NULL)
            freeReplyObject(replies[i]);
    return io_failed(c, x, what, s, eno, t0, err);
}

/* "Redis 7.0.15 (standalone), role master" from INFO server and INFO
 * replication; a replica adds its primary and the link's state. */
static int redis_describe(void *vctx, void *native, char *buf, size_t size)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    cpool_error e;
    if (buf == NULL || size == 0 || local_check(x, c, "describe", &st, &e) != 0)
        return CPOOL_EINVAL;
    static const char req[] = "*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
                              "*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n";
    redisReply *r[2];
    int rc = round_trip(x, c, "describe", req, sizeof req - 1, r, 2,
                        deadline_after_ms(x->reset_timeout_ms), &e);
    if (rc != 0)
        return rc;
    char version[32] = "", mode[32] = "", role[32] = "", mhost[64] = "", mport[8] = "",
         link[16] = "";
    if (r[0]->type == REDIS_REPLY_STRING) {
        info_field(r[0]->str, "redis_version", version, sizeof version);
        info_field(r[0]->str, "redis_mode", mode, sizeof mode);
    }
    if (r[1]->type == REDIS_REPLY_STRING) {
        info_field(r[1]->str, "role", role, sizeof role);
        info_field(r[1]->str, "master_host", mhost, sizeof mhost);
        info_field(r[1]->str, "master_port", mport, sizeof mport);
        info_field(r[1]->str, "master_link_status", link, sizeof link);
    }
    freeReplyObject(r[0]);
    freeReplyObject(r[1]);
    if (version[0] == '\0')
        return CPOOL_EINVAL;
    const char *shown_role = strcmp(role, "slave") == 0 ? "replica" : role;
    int n;
    if (strcmp(shown_role, "replica") == 0)
        n = snprintf(buf, size, "Redis %s (%s), role replica of %s:%s, link %s", version,
                     mode[0] != '\0' ? mode : "standalone", mhost, mport,
                     link[0] != '\0' ? link : "unknown");
    else
        n = snprintf(buf, size, "Redis %s (%s), role %s", version,
                     mode[0] != '\0' ? mode : "standalone",
                     shown_role[0] != '\0' ? shown_role : "unknown");
    return n < 0 || (size_t)n >= size ? CPOOL_EINVAL : 0;
}

/* INFO replication: the role; a replica's lag is 0 while its link to the
 * primary is up and the primary spoke within the last second, else the
 * seconds since it last did, and unknown while the link is down. Redis
 * has no ordered epoch: two primaries stay ambiguous (epoch 0). */
static int redis_server_info(void *vctx, void *native, unsigned flags, int64_t deadline_ns,
                             cpool_server_info *out, cpool_error *err)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    if (out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "server info: no output");
    out->role = CPOOL_ROLE_UNKNOWN;
    out->lag_ms = -1;
    out->epoch = 0;
    if (flags & CPOOL_INFO_CACHED)
        return 0;
    int rc = local_check(x, c, "server info", &st, err);
    if (rc != 0)
        return rc;
    static const char req[] = "*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n";
    redisReply *r[1];
    rc = round_trip(x, c, "server info", req, sizeof req - 1, r, 1,
                    earlier(deadline_ns, deadline_after_ms(x->command_timeout_ms)), err);
    if (rc != 0)
        return rc;
    char role[32] = "", link[16] = "", io[24] = "";
    if (r[0]->type == REDIS_REPLY_STRING) {
        info_field(r[0]->str, "role", role, sizeof role);
        info_field(r[0]->str, "master_link_status", link, sizeof link);
        info_field(r[0]->str, "master_last_io_seconds_ago", io, sizeof io);
    }
    freeReplyObject(r[0]);
    if (strcmp(role, "master") == 0) {
        out->role = CPOOL_ROLE_PRIMARY;
    } else if (strcmp(role, "slave") == 0) {
        out->role = CPOOL_ROLE_REPLICA;
        if ((flags & CPOOL_INFO_LAG) && strcmp(link, "up") == 0 && io[0] != '\0') {
            long long sec = strtoll(io, NULL, 10);
            out->lag_ms = sec <= 1 ? 0 : sec * 1000;
        }
    } else {
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "server info on redis %s: no role in INFO replication",
                               x->address);
    }
    return 0;
}

/* ------------------------------------------------------------ Sentinel */

#define SENTINEL_SCHEME "redis-sentinel://"
#define SENTINEL_PORT "26379"

/* One Sentinel's answer: the primary's address ("host:port") and the
 * replicas it sees up, appended to `hosts` (comma-separated). */
static int ask_sentinel(const char *host, const char *name, int64_t deadline, char *hosts,
                        size_t size, cpool_error *err)
{
    char t[340];
    snprintf(t, sizeof t, "redis://%.300s?client_name=", host);
    void *vx = NULL;
    int rc = redis_ctx_new(t, &vx, err);
    if (rc != 0)
        return rc;
    redis_ctx *x = vx;
    cpool_connect_args a;
    memset(&a, 0, sizeof a);
    a.target = t;
    a.deadline_ns = deadline;
    a.cancel_fd = -1;
    void *native = NULL;
    rc = redis_connect(x, &a, &native, err);
    if (rc != 0) {
        redis_ctx_free(x);
        return rc;
    }
    size_t nl = strlen(name);
    char req[600];
    int len = snprintf(req, sizeof req,
                       "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$%zu\r\n%s\r\n"
                       "*3\r\n$8\r\nSENTINEL\r\n$8\r\nreplicas\r\n$%zu\r\n%s\r\n",
                       nl, name, nl, name);
    redisReply *r[2] = {NULL, NULL};
    rc = len > 0 && (size_t)len < sizeof req
             ? round_trip(x, native, "sentinel", req, (size_t)len, r, 2, deadline, err)
             : cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "sentinel: the name is too long");
    if (rc == 0) {
        const redisReply *m = r[0];
        if (m->type != REDIS_REPLY_ARRAY || m->elements != 2 ||
            m->element[0]->type != REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_STRING)
            rc = cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                                 "sentinel %s does not know a primary named \"%s\"", host,
                                 name);
        else
            snprintf(hosts, size, "%s:%s", m->element[0]->str, m->element[1]->str);
    }
    for (size_t i = 0; rc == 0 && r[1]->type == REDIS_REPLY_ARRAY && i < r[1]->elements; i++) {
        const redisReply *e = r[1]->element[i];
        const char *ip = NULL, *port = NULL, *flags = "";
        for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2) {
            const char *key = e->element[k]->str, *v = e->element[k + 1]->str;
            if (key == NULL || v == NULL)
                continue;
            if (strcmp(key, "ip") == 0)
                ip = v;
            else if (strcmp(key, "port") == 0)
                port = v;
            else if (strcmp(key, "flags") == 0)
                flags = v;
        }
        if (ip != NULL && port != NULL && strstr(flags, "s_down") == NULL &&
            strstr(flags, "o_down") == NULL && strstr(flags, "disconnected") == NULL) {
            size_t o = strlen(hosts);
            snprintf(hosts + o, size - o, ",%s:%s", ip, port);
        }
    }
    for (int i = 0; i < 2; i++)
        if (r[i] != NULL)
            freeReplyObject(r[i]);
    redis_close(x, native);
    redis_ctx_free(x);
    return rc;
}

int cpool_redis_sentinel_resolve(const char *target, int64_t timeout_ms, char **out,
                                 cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    size_t sl = sizeof SENTINEL_SCHEME - 1;
    if (target == NULL || out == NULL || strncasecmp(target, SENTINEL_SCHEME, sl) != 0)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sentinel: expected redis-sentinel://HOST[:PORT],.../NAME");
    const char *auth = target + sl;
    const char *end = auth + strcspn(auth, "/?");
    const char *hosts = auth;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            hosts = p + 1;
    if (*end != '/' || end[1] == '\0' || end[1] == '?' || end[1] == '/')
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sentinel: the target names no primary "
                               "(redis-sentinel://HOST[:PORT],.../NAME[/DB])");
    char name[256], db[32] = "";
    const char *np = end + 1;
    size_t nn = strcspn(np, "/?");
    if (nn >= sizeof name)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sentinel: the primary's name is too long");
    memcpy(name, np, nn);
    name[nn] = '\0';
    const char *rest = np + nn;
    if (*rest == '/') {
        size_t dn = strcspn(rest + 1, "?");
        snprintf(db, sizeof db, "/%.*s", (int)(dn < 20 ? dn : 20), rest + 1);
        rest += 1 + dn;
    }
    int64_t deadline = cpool__mono_ns() + (timeout_ms > 0 ? timeout_ms : 2000) * 1000000;
    char found[2048] = "";
    int rc = CPOOL_ECONNECT;
    cpool_error last;
    memset(&last, 0, sizeof last);
    for (const char *p = hosts; p < end && rc != 0;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma != NULL ? comma : end;
        char host[300];
        size_t hn = (size_t)(stop - p);
        bool has_port = memchr(p, ':', hn) != NULL && p[0] != '[';
        snprintf(host, sizeof host, "%.*s%s", (int)hn, p, has_port ? "" : ":" SENTINEL_PORT);
        rc = ask_sentinel(host, name, deadline, found, sizeof found, &last);
        p = comma != NULL ? comma + 1 : end;
    }
    if (rc != 0) {
        if (err != NULL) {
            *err = last;
            if (last.code == 0)
                cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, 0,
                                "sentinel: no Sentinel answered");
        }
        return last.code != 0 ? last.code : CPOOL_ECONNECT;
    }
    size_t n = strlen(target) + strlen(found) + 64;
    char *t = malloc(n);
    if (t == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "sentinel: out of memory");
    snprintf(t, n, "redis://%.*s%s%s%s", (int)(hosts - auth), auth, found, db, rest);
    *out = t;
    return 0;
}

/* ------------------------------------------------------------ state tracking */

static bool name_is(const char *name, size_t len, const char *want)
{
    return len == strlen(want) && strncasecmp(name, want, len) == 0;
}

/* Updates the tracked session state from one command (name and first
 * argument, which may be NULL) and its reply. Conservative: a command that
 * may have changed state marks it even when it failed, because a queued
 * SELECT inside MULTI only takes effect at EXEC. */
static void track(redis_conn *st, const char *name, size_t nlen, const char *arg,
                  size_t alen, const redisReply *reply)
{
    if (name == NULL)
        return;
    bool ok = reply != NULL && reply->type != REDIS_REPLY_ERROR;
    if (name_is(name, nlen, "MULTI")) {
        if (ok)
            st->state |= CPOOL_REDIS_IN_MULTI;
    } else if (name_is(name, nlen, "EXEC") || name_is(name, nlen, "DISCARD")) {
        st->state &= ~(CPOOL_REDIS_IN_MULTI | CPOOL_REDIS_WATCHING);
    } else if (name_is(name, nlen, "WATCH")) {
        st->state |= CPOOL_REDIS_WATCHING;
    } else if (name_is(name, nlen, "UNWATCH")) {
        if (!(st->state & CPOOL_REDIS_IN_MULTI))
            st->state &= ~CPOOL_REDIS_WATCHING;
    } else if (name_is(name, nlen, "SUBSCRIBE") || name_is(name, nlen, "PSUBSCRIBE") ||
               name_is(name, nlen, "SSUBSCRIBE")) {
        st->state |= CPOOL_REDIS_SUBSCRIBED;
    } else if (name_is(name, nlen, "SELECT") || name_is(name, nlen, "SWAPDB")) {
        st->state |= CPOOL_REDIS_DB_CHANGED;
    } else if (name_is(name, nlen, "AUTH") || name_is(name, nlen, "HELLO") ||
               name_is(name, nlen, "RESET") || name_is(name, nlen, "MONITOR") ||
               name_is(name, nlen, "READONLY") || name_is(name, nlen, "READWRITE") ||
               name_is(name, nlen, "QUIT") || name_is(name, nlen, "SYNC") ||
               name_is(name, nlen, "PSYNC") || name_is(name, nlen, "REPLCONF")) {
        st->state |= CPOOL_REDIS_UNRESTORABLE;
    } else if (name_is(name, nlen, "CLIENT") && arg != NULL &&
               (name_is(arg, alen, "REPLY") || name_is(arg, alen, "TRACKING") ||
                name_is(arg, alen, "SETNAME") || name_is(arg, alen, "NO-EVICT") ||
                name_is(arg, alen, "NO-TOUCH") || name_is(arg, alen, "CACHING"))) {
        st->state |= CPOOL_REDIS_UNRESTORABLE;
    }
}

/* The idx-th argument of a formatted command ("*N\r\n$L\r\narg\r\n..."). */
static bool resp_arg(const char *cmd, size_t len, int idx, const char **arg, size_t *alen)
{
    const char *p = cmd, *end = cmd + len;
    if (p >= end || *p != '*')
        return false;
    long argc = strtol(p + 1, NULL, 10);
    if (idx >= argc)
        return false;
    p = memchr(p, '\n', (size_t)(end - p));
    for (int i = 0; p != NULL && i <= idx; i++) {
        p++;
        if (p >= end || *p != '$')
            return false;
        long l = strtol(p + 1, NULL, 10);
        p = memchr(p, '\n', (size_t)(end - p));
        if (p == NULL || l < 0 || (size_t)(end - p - 1) < (size_t)l)
            return false;
        if (i == idx) {
            *arg = p + 1;
            *alen = (size_t)l;
            return true;
        }
        p += 1 + l; /* onto the '\r' of the argument's "\r\n" */
        p = memchr(p, '\n', (size_t)(end - p));
    }
    return false;
}

/* Writes the context's output buffer with MSG_NOSIGNAL, blocking as the
 * socket's send timeout allows. */
static bool flush_obuf(redisContext *c)
{
    while (sdslen(c->obuf) > 0) {
        ssize_t n = send(c->fd, c->obuf, sdslen(c->obuf), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            char eb[128];
            c->err = REDIS_ERR_IO;
            snprintf(c->errstr, sizeof c->errstr, "%s",
                     errtext(n < 0 ? errno : EPIPE, eb, sizeof eb));
            return false;
        }
        own_sent(c, (size_t)n);
        sdsrange(c->obuf, (int)n, -1);
    }
    return true;
}

/* Runs one formatted command: appends, flushes without SIGPIPE, reads the
 * reply, tracks. The reply belongs to this command only when nothing was
 * pending before it; otherwise the state becomes unknown. */
static redisReply *run_formatted(redisContext *c, const char *cmd, size_t len)
{
    redis_conn *st = conn_state(c);
    bool clean = sdslen(c->obuf) == 0 && !reader_has_data(c->reader);
    if (redisAppendFormattedCommand(c, cmd, len) != REDIS_OK)
        return NULL;
    if (!flush_obuf(c))
        return NULL;
    void *reply = NULL;
    if (st != NULL)
        st->own_io = true;
    int rc = redisGetReply(c, &reply);
    if (st != NULL)
        st->own_io = false;
    if (st != NULL) {
        const char *name = NULL, *arg = NULL;
        size_t nlen = 0, alen = 0;
        if (!clean) {
            st->state |= CPOOL_REDIS_UNKNOWN;
        } else if (resp_arg(cmd, len, 0, &name, &nlen)) {
            if (!resp_arg(cmd, len, 1, &arg, &alen))
                arg = NULL;
            track(st, name, nlen, arg, alen, rc == REDIS_OK ? reply : NULL);
        }
    }
    return rc == REDIS_OK ? reply : NULL;
}

redisReply *cpool_redis_vcommand(redisContext *c, const char *format, va_list ap)
{
    if (c == NULL || format == NULL)
        return NULL;
    if (c->err != 0)
        return NULL;
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, format, ap);
    if (len < 0) {
        c->err = len == -1 ? REDIS_ERR_OOM : REDIS_ERR_OTHER;
        snprintf(c->errstr, sizeof c->errstr, "%s",
                 len == -1 ? "Out of memory" : "Invalid format string");
        return NULL;
    }
    redisReply *r = run_formatted(c, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return r;
}

redisReply *cpool_redis_command(redisContext *c, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    redisReply *r = cpool_redis_vcommand(c, format, ap);
    va_end(ap);
    return r;
}

redisReply *cpool_redis_command_argv(redisContext *c, int argc, const char **argv,
                                     const size_t *argvlen)
{
    if (c == NULL || argc <= 0 || argv == NULL || c->err != 0)
        return NULL;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0) {
        c->err = REDIS_ERR_OOM;
        snprintf(c->errstr, sizeof c->errstr, "Out of memory");
        return NULL;
    }
    redisReply *r = run_formatted(c, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return r;
}

unsigned cpool_redis_state(const redisContext *c)
{
    const redis_conn *st = conn_state(c);
    return st != NULL ? st->state : 0;
}

int cpool_redis_error(const redisContext *c, const redisReply *reply, cpool_error *err)
{
    if (reply != NULL && reply->type != REDIS_REPLY_ERROR)
        return 0;
    if (reply != NULL) {
        const char *m = reply->str != NULL ? reply->str : "";
        int rc = cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                                 "redis: %.200s", m);
        if (err != NULL && is_transient_error(m) &&
            !starts_with(m, "ERR max number of clients reached"))
            err->labels |= CPOOL_LABEL_RETRYABLE;
        return rc;
    }
    if (c == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "redis_error: no context and no reply");
    cpool_fail_kind kind = CPOOL_FAIL_OTHER;
    if (c->err == REDIS_ERR_EOF || c->err == REDIS_ERR_IO) {
        if (strncmp(c->errstr, "timed out", 9) == 0)
            kind = CPOOL_FAIL_TIMEOUT;
        else if (strcmp(c->errstr, "interrupted") == 0)
            kind = CPOOL_FAIL_INTERRUPTED;
        else
            kind = CPOOL_FAIL_NETWORK;
    }
    int rc = cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, kind, 0, "redis: %s",
                             c->err != 0 ? c->errstr : "no reply");
    if (err != NULL && kind == CPOOL_FAIL_NETWORK)
        err->labels |= CPOOL_LABEL_RETRYABLE;
    return rc;
}

typedef struct redis_call {
    const char *format; /* or argv */
    va_list *ap;
    int argc;
    const char **argv;
    const size_t *argvlen;
    redisReply *reply;
} redis_call;

static int run_call(cpool_conn *lease, void *arg, cpool_error *err)
{
    redis_call *k = arg;
    redisContext *c = cpool_conn_native(lease);
    redisReply *r;
    if (k->format != NULL) {
        va_list ap;
        va_copy(ap, *k->ap); /* each attempt reads the arguments afresh */
        r = cpool_redis_vcommand(c, k->format, ap);
        va_end(ap);
    } else {
        r = cpool_redis_command_argv(c, k->argc, k->argv, k->argvlen);
    }
    int rc = cpool_redis_error(c, r, err);
    if (rc == 0) {
        k->reply = r;
        return 0;
    }
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}

static redisReply *call_in_pool(cpool *pool, const cpool_run_opts *o, redis_call *k,
                                cpool_error *err)
{
    if (cpool_run(pool, o, run_call, k, err) != 0 && k->reply != NULL) {
        freeReplyObject(k->reply); /* the check-in failed after the command ran */
        k->reply = NULL;
    }
    return k->reply;
}

redisReply *cpool_redis_call(cpool *pool, const cpool_run_opts *o, cpool_error *err,
                             const char *format, ...)
{
    if (pool == NULL || format == NULL) {
        cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                        "redis_call: a pool and a command are required");
        return NULL;
    }
    va_list ap;
    va_start(ap, format);
    redis_call k = {.format = format, .ap = &ap};
    redisReply *r = call_in_pool(pool, o, &k, err);
    va_end(ap);
    return r;
}

redisReply *cpool_redis_call_argv(cpool *pool, const cpool_run_opts *o, int argc,
                                  const char **argv, const size_t *argvlen, cpool_error *err)
{
    if (pool == NULL || argc <= 0 || argv == NULL) {
        cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                        "redis_call: a pool and a command are required");
        return NULL;
    }
    redis_call k = {.argc = argc, .argv = argv, .argvlen = argvlen};
    return call_in_pool(pool, o, &k, err);
}

void cpool_redis_mark_dirty(redisContext *c)
{
    redis_conn *st = conn_state(c);
    if (st != NULL)
        st->state |= CPOOL_REDIS_UNKNOWN;
}

redisContext *cpool_redis_context(const cpool_conn *lease)
{
    return lease != NULL ? cpool_conn_native(lease) : NULL;
}

/* Runs one command line, split as redis-cli does ("SET k \"a b\""),
 * bounded by command_timeout_ms. An error reply fails it but leaves the
 * connection usable. */
static int redis_execute(void *vctx, void *native, const char *command, cpool_error *err)
{
    const redis_ctx *x = vctx;
    redisContext *c = native;
    redis_conn *st;
    int rc = local_check(x, c, "execute", &st, err);
    if (rc != 0)
        return rc;
    int argc = 0;
    sds *argv = sdssplitargs(command != NULL ? command : "", &argc);
    if (argv == NULL || argc == 0) {
        if (argv != NULL)
            sdsfreesplitres(argv, argc);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "execute on redis %s: empty command or unbalanced quotes",
                               x->address);
    }
    size_t *lens = malloc((size_t)argc * sizeof *lens);
    char *cmd = NULL;
    int len = -1;
    if (lens != NULL) {
        for (int i = 0; i < argc; i++)
            lens[i] = sdslen(argv[i]);
        len = redisFormatCommandArgv(&cmd, argc, (const char **)argv, lens);
    }
    free(lens);
    if (len < 0) {
        sdsfreesplitres(argv, argc);
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, ENOMEM,
                               "execute on redis %s: out of memory", x->address);
    }
    redisReply *r;
    rc = round_trip(x, c, "execute", cmd, (size_t)len, &r, 1,
                    deadline_after_ms(x->command_timeout_ms), err);
    if (rc == 0) {
        track(st, argv[0], sdslen(argv[0]), argc > 1 ? argv[1] : NULL,
              argc > 1 ? sdslen(argv[1]) : 0, r);
        if (r->type == REDIS_REPLY_ERROR)
            rc = cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                                 "%.40s on redis %s: %.150s", argv[0], x->address,
                                 reply_str(r));
        freeReplyObject(r);
    }
    redisFreeCommand(cmd);
    sdsfreesplitres(argv, argc);
    return rc;
}

static const char *const redis_schemes[] = {"redis://", "unix://", "redis+unix://", NULL};

static const cpool_connector redis_connector = {
    .abi_version = CPOOL_CONNECTOR_ABI,
    .name = "redis",
    .connect = redis_connect,
    .close = redis_close,
    .abandon = redis_abandon,
    .check = redis_check,
    .ping = redis_ping,
    .reset = redis_reset,
    .discard = redis_discard,
    .params = redis_params,
    .nparams = NPARAMS,
    .interrupt = redis_interrupt,
    .address = redis_address,
    .ctx_new = redis_ctx_new,
    .ctx_free = redis_ctx_free,
    .describe = redis_describe,
    .schemes = redis_schemes,
    .execute = redis_execute,
    .probe = redis_probe,
    .server_info = redis_server_info,
};

const cpool_connector *cpool_redis_connector(void)
{
    return &redis_connector;
}
