/* pg.c -- the PostgreSQL connector (cpool_pg.h), on libpq.
 *
 * The native handle is the PGconn itself, so cpool_conn_native() gives users
 * what they expect. What the connector keeps per connection (the cancel
 * object made at establishment, the "interrupted" mark, the
 * target_session_attrs in force) hangs off the PGconn as libpq event
 * instance data, and libpq frees it in PQfinish() (PGEVT_CONNDESTROY).
 *
 * Threads: the context is immutable after ctx_new. The core calls one
 * method at a time per connection, except interrupt(), which may run on
 * another thread while the connection is in use, checked or reset; it
 * touches only the atomics, the cancel object and a duplicate of the
 * connection's socket (both under a per-connection mutex), and reads the
 * PGconn only to find them (libpq's list of event procs, which nothing
 * changes after establishment), never its I/O state.
 *
 * Interrupts. The duplicate descriptor is ours, so it cannot be closed and
 * reused under us the way libpq's own can while the holder calls
 * PQfinish(). interrupt() shuts the socket down for writing at once, so
 * the holder's next call (raw libpq included) fails, and asks the server
 * to cancel the backend's query; INTERRUPT_GRACE_MS later it shuts it for
 * reading too, so a query the server did not cancel (a stopped server)
 * fails then instead of when the server wakes.
 *
 * Cancel requests run on a short-lived detached thread because PQcancel()
 * blocks (connect, send, wait for the server to close) and a hung server
 * would otherwise stall cpool_clear(). A cancel that reaches a backend
 * before it has started the query is lost, so a connection closed with a
 * query running keeps its socket (the duplicate) until the backend is seen
 * to go, sending the request again with growing pauses, up to
 * reset_timeout_ms.
 */
#include "cpool/cpool_pg.h"
#include "../core/clock.h"
#include "../core/params.h"
#include "sockwait.h"

#include <libpq-events.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RESET_TIMEOUT_DEFAULT_MS 5000
/* After an interrupt, how long a query in progress has to end with the
 * server's own "canceling statement" before its socket is shut for
 * reading too. */
#define INTERRUPT_GRACE_MS 200
#define RESET_TIMEOUT_MAX_MS 86400000
#define APP_NAME_FALLBACK "cpool"

/* target_session_attrs, as libpq 14+ defines them. */
typedef enum tsa_mode {
    TSA_ANY = 0,
    TSA_READ_WRITE,
    TSA_READ_ONLY,
    TSA_PRIMARY,
    TSA_STANDBY,
    TSA_PREFER_STANDBY
} tsa_mode;

static const char *const tsa_names[] = {"any",     "read-write", "read-only",
                                        "primary", "standby",    "prefer-standby", NULL};

typedef struct pg_ctx {
    char *conninfo;           /* the target without our parameters: libpq's */
    char *reset_query;        /* NULL = none */
    int64_t reset_timeout_ms; /* bound on ROLLBACK + reset_query at check-in,
                                 and on stopping a query left running */
    int64_t command_timeout_ms; /* bound on cpool_conn_execute; 0 = none */
    bool reset_always;        /* reset=always: DISCARD ALL at every check-in */
    /* Where probe() connects (make_probe). */
    enum { PROBE_NONE, PROBE_TCP, PROBE_UNIX } probe_kind;
    char probe_host[256];     /* TCP: name or address; unix: the socket path */
    char probe_port[16];
    char addr[200];           /* "host:port" or socket path, for messages */
} pg_ctx;

/* The cancel object outlives the connection while a cancel thread still
 * uses it: each holder has a reference. */
typedef struct cancel_ref {
    PGcancel *cancel;
    atomic_int refs;
} cancel_ref;

typedef struct pg_state {
    pthread_mutex_t mu;     /* guards `cancel` and `sock` (replaced at PQreset) */
    cancel_ref *cancel;     /* guarded by mu */
    int sock;               /* our duplicate of PQsocket(); -1 once given
                               away or closed; guarded by mu */
    atomic_bool interrupted;
    atomic_bool cancel_sent;
    tsa_mode tsa;           /* immutable after establishment */
    /* libpq's default notice hooks (their argument is NULL), put back at
     * check-in: a hook a lease installed may point at its stack. */
    PQnoticeReceiver notice_receiver;
    PQnoticeProcessor notice_processor;
    uint64_t reported;      /* reported_hash() of a fresh session */
    unsigned reported_mask; /* which of reported_names[] the server reports */
} pg_state;

/* ------------------------------------------------------------- SQLSTATE */

static bool sqlstate_char(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

int cpool_pg_sqlstate_code(const char *s)
{
    if (s == NULL)
        return 0;
    int code = 0;
    for (int i = 0; i < 5; i++) {
        if (!sqlstate_char((unsigned char)s[i]))
            return 0;
        code += ((s[i] - '0') & 0x3F) << (6 * i);
    }
    return s[5] == '\0' ? code : 0;
}

const char *cpool_pg_sqlstate_text(int code, char buf[6])
{
    if (buf == NULL)
        return "";
    buf[0] = '\0';
    if (code <= 0 || code >= (1 << 30))
        return buf;
    for (int i = 0; i < 5; i++) {
        int c = ((code >> (6 * i)) & 0x3F) + '0';
        if (!sqlstate_char(c)) {
            buf[0] = '\0';
            return buf;
        }
        buf[i] = (char)c;
    }
    buf[5] = '\0';
    return buf;
}

static int result_sqlstate(const PGresult *r)
{
    return r != NULL ? cpool_pg_sqlstate_code(PQresultErrorField(r, PG_DIAG_SQLSTATE)) : 0;
}

/* Copies a libpq message into out as one line: newlines and tabs become
 * spaces, runs of spaces shrink to one, trailing space goes. */
static void one_line(const char *in, char *out, size_t size)
{
    size_t o = 0;
    bool space = false;
    if (size == 0)
        return;
    for (const char *p = in != NULL ? in : ""; *p != '\0' && o + 1 < size; p++) {
        bool ws = isspace((unsigned char)*p);
        if (ws) {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < size)
            out[o++] = ' ';
        space = false;
        out[o++] = *p;
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------- conninfo */

/* One "keyword = value" item of a libpq conninfo string, as libpq parses
 * them: the value is either single-quoted (backslash escapes) or runs to the
 * next blank (backslash escapes too). [start, end) covers the item and the
 * blanks after it. Returns 1 for an item, 0 at the end, -1 when malformed
 * (libpq will then say why). Values that do not fit are cut, which only
 * matters for our own parameters, whose buffers are as long as the target. */
static int ci_next(const char *s, size_t *pos, size_t *start, size_t *end, char *key,
                   size_t ksize, char *val, size_t vsize)
{
    size_t i = *pos, k = 0, v = 0;
    while (isspace((unsigned char)s[i]))
        i++;
    if (s[i] == '\0')
        return 0;
    *start = i;
    while (s[i] != '\0' && s[i] != '=' && !isspace((unsigned char)s[i])) {
        if (k + 1 < ksize)
            key[k++] = s[i];
        i++;
    }
    key[k] = '\0';
    while (isspace((unsigned char)s[i]))
        i++;
    if (s[i] != '=' || k == 0)
        return -1;
    i++;
    while (isspace((unsigned char)s[i]))
        i++;
    if (s[i] == '\'') {
        for (i++;; i++) {
            if (s[i] == '\0')
                return -1;
            if (s[i] == '\'')
                break;
            if (s[i] == '\\' && s[i + 1] != '\0')
                i++;
            if (v + 1 < vsize)
                val[v++] = s[i];
        }
        i++;
    } else {
        while (s[i] != '\0' && !isspace((unsigned char)s[i])) {
            if (s[i] == '\\' && s[i + 1] != '\0')
                i++;
            if (v + 1 < vsize)
                val[v++] = s[i];
            i++;
        }
    }
    if (vsize > 0)
        val[v] = '\0';
    while (isspace((unsigned char)s[i]))
        i++;
    *end = i;
    *pos = i;
    return 1;
}

/* Removes every `name=value` item from a conninfo string (in place) and
 * keeps the last value. Returns 1 when found, 0 when absent. */
static int ci_take(char *s, const char *name, char *val, size_t vsize)
{
    size_t pos = 0, start, end;
    char key[64];
    int found = 0, r;
    char *tmp = malloc(vsize);
    if (tmp == NULL)
        return CPOOL_ENOMEM;
    while ((r = ci_next(s, &pos, &start, &end, key, sizeof key, tmp, vsize)) == 1) {
        if (strcmp(key, name) != 0)
            continue;
        snprintf(val, vsize, "%s", tmp);
        found = 1;
        memmove(s + start, s + end, strlen(s + end) + 1);
        pos = start;
    }
    free(tmp);
    return found;
}

static bool is_uri(const char *t)
{
    return strncasecmp(t, "postgresql://", 13) == 0 || strncasecmp(t, "postgres://", 11) == 0;
}

/* --------------------------------------------------------------- context */

static void ctx_destroy(pg_ctx *c)
{
    if (c == NULL)
        return;
    free(c->conninfo);
    free(c->reset_query);
    free(c);
}

/* Takes one of our parameters out of the target copy. */
static int take_param(char *t, bool uri, const char *name, char *val, size_t vsize)
{
    return uri ? cpool_uri_take(t, name, val, vsize) : ci_take(t, name, val, vsize);
}

/* After libpq rejected the target: finds the first parameter it does not
 * know, to name it with its value in the error. Returns 1 when found. */
static int find_unknown(const char *t, bool uri, char *name, size_t nsize, char *val,
                        size_t vsize)
{
    PQconninfoOption *defs = PQconndefaults();
    if (defs == NULL)
        return 0;
    size_t pos = 0, start, end;
    int found = 0, r;
    for (;;) {
        r = uri ? cpool_uri_next(t, &pos, name, nsize, val, vsize)
                : ci_next(t, &pos, &start, &end, name, nsize, val, vsize);
        if (r != 1)
            break;
        bool known = uri && strcmp(name, "ssl") == 0; /* libpq's JDBC alias */
        for (PQconninfoOption *d = defs; !known && d->keyword != NULL; d++)
            known = strcmp(d->keyword, name) == 0;
        if (!known) {
            found = 1;
            break;
        }
    }
    PQconninfoFree(defs);
    if (found && cpool__name_looks_secret(name))
        snprintf(val, vsize, "***");
    return found;
}

static int parse_tsa(const char *v)
{
    for (int i = 0; tsa_names[i] != NULL; i++)
        if (strcmp(v, tsa_names[i]) == 0)
            return i;
    return -1;
}

/* libpq checks these only when it connects; a typo should fail at create. */
static int check_values(const PQconninfoOption *opts, cpool_error *err)
{
    static const struct {
        const char *key;
        const char *allowed[8];
        const char *text;
    } enums[] = {
        {"sslmode",
         {"disable", "allow", "prefer", "require", "verify-ca", "verify-full", NULL},
         "disable, allow, prefer, require, verify-ca, verify-full"},
        {"gssencmode", {"disable", "prefer", "require", NULL}, "disable, prefer, require"},
        {"channel_binding", {"disable", "prefer", "require", NULL},
         "disable, prefer, require"},
        {"target_session_attrs",
         {"any", "read-write", "read-only", "primary", "standby", "prefer-standby", NULL},
         "any, read-write, read-only, primary, standby, prefer-standby"},
    };
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        for (size_t e = 0; e < sizeof enums / sizeof enums[0]; e++) {
            if (strcmp(o->keyword, enums[e].key) != 0)
                continue;
            bool ok = false;
            for (int i = 0; enums[e].allowed[i] != NULL; i++)
                ok = ok || strcmp(o->val, enums[e].allowed[i]) == 0;
            if (!ok)
                return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER,
                                       0, "postgresql target: %s = \"%.40s\": allowed %s",
                                       o->keyword, o->val, enums[e].text);
        }
        if (strcmp(o->keyword, "port") == 0) {
            /* A comma-separated list, one per host; empty = the default. */
            const char *p = o->val;
            for (;;) {
                size_t n = strcspn(p, ",");
                char *endp = NULL;
                long port = n > 0 ? strtol(p, &endp, 10) : 5432;
                if (n > 0 && (endp != p + n || port < 1 || port > 65535))
                    return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE,
                                           CPOOL_FAIL_OTHER, 0,
                                           "postgresql target: port = \"%.40s\": allowed "
                                           "1..65535 (a comma-separated list for several "
                                           "hosts)",
                                           o->val);
                if (p[n] == '\0')
                    break;
                p += n + 1;
            }
        }
    }
    return 0;
}

static const char *opt_val(const PQconninfoOption *opts, const char *key)
{
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val != NULL && o->val[0] != '\0' ? o->val : NULL;
    return NULL;
}

/* "host:port" of the first host the target names, or its socket file:
 * what events and logs show. No password can be in it. */
/* The first value of a comma-separated libpq list into out ("" = none). */
static void first_of(const char *list, char *out, size_t size)
{
    size_t n = list != NULL ? strcspn(list, ",") : 0;
    if (n >= size)
        n = 0;
    memcpy(out, list != NULL ? list : "", n);
    out[n] = '\0';
}

/* The endpoint libpq tries first: the first host, hostaddr and port of
 * their lists ("" = not given), with libpq's environment fallbacks, and
 * 5432 for the port. */
typedef struct pg_endpoint {
    char host[256], hostaddr[256], port[16];
} pg_endpoint;

static void first_endpoint(const PQconninfoOption *opts, pg_endpoint *ep)
{
    const char *h = opts != NULL ? opt_val(opts, "host") : NULL;
    const char *a = opts != NULL ? opt_val(opts, "hostaddr") : NULL;
    const char *p = opts != NULL ? opt_val(opts, "port") : NULL;
    first_of(h != NULL ? h : getenv("PGHOST"), ep->host, sizeof ep->host);
    first_of(a != NULL ? a : getenv("PGHOSTADDR"), ep->hostaddr, sizeof ep->hostaddr);
    first_of(p != NULL ? p : getenv("PGPORT"), ep->port, sizeof ep->port);
    if (ep->port[0] == '\0')
        snprintf(ep->port, sizeof ep->port, "5432");
}

/* Where probe() connects: hostaddr when given (libpq connects there), else
 * the host or its unix socket. An abstract socket ('@') or a path too long
 * is left to the backoff. */
static void make_probe(const pg_endpoint *ep, pg_ctx *c)
{
    snprintf(c->probe_port, sizeof c->probe_port, "%s", ep->port);
    c->probe_kind = PROBE_NONE;
    if (ep->hostaddr[0] != '\0') {
        snprintf(c->probe_host, sizeof c->probe_host, "%s", ep->hostaddr);
        c->probe_kind = PROBE_TCP;
    } else if (ep->host[0] == '\0' || ep->host[0] == '/') {
        int w = snprintf(c->probe_host, sizeof c->probe_host, "%s/.s.PGSQL.%s",
                         ep->host[0] != '\0' ? ep->host : "/var/run/postgresql", ep->port);
        if (w > 0 && (size_t)w < sizeof(((struct sockaddr_un *)0)->sun_path))
            c->probe_kind = PROBE_UNIX;
    } else if (ep->host[0] != '@') {
        snprintf(c->probe_host, sizeof c->probe_host, "%s", ep->host);
        c->probe_kind = PROBE_TCP;
    }
}

/* "host:port", "[v6]:port", the socket path, or "default socket:port",
 * for messages (a host name past 170 bytes is cut). */
static void make_addr(const pg_endpoint *ep, char *buf, size_t size)
{
    const char *host = ep->host[0] != '\0' ? ep->host : ep->hostaddr;
    if (host[0] == '\0')
        snprintf(buf, size, "default socket:%s", ep->port);
    else if (host[0] == '/' || host[0] == '@')
        snprintf(buf, size, "%.170s/.s.PGSQL.%s", host, ep->port);
    else if (strchr(host, ':') != NULL)
        snprintf(buf, size, "[%.170s]:%s", host, ep->port);
    else
        snprintf(buf, size, "%.170s:%s", host, ep->port);
}

/* The connector's own parameters, taken out of the target before libpq
 * sees it, and read by the shared parser. */
typedef struct pg_query {
    char reset_query[4097];
    long long reset_timeout_ms, command_timeout_ms;
    int reset;
} pg_query;

enum { P_RESET, P_RESET_QUERY, P_RESET_TIMEOUT, P_COMMAND_TIMEOUT };

static const char *const reset_modes[] = {"tracked", "always", NULL};

#define Q(field) offsetof(pg_query, field)
static const cpool_param pg_params[] = {
    [P_RESET] = {.name = "reset", .type = CPOOL_PARAM_ENUM, .choices = reset_modes,
                 .allowed = "tracked (the default) or always", .dflt = "tracked",
                 .doc = "check-in: DISCARD ALL when a reported setting changed, or always",
                 .offset = Q(reset)},
    [P_RESET_QUERY] = {.name = "reset_query", .type = CPOOL_PARAM_STRING, .min = 1,
                       .max = 4096,
                       .allowed = "a non-empty SQL command of up to 4096 bytes (e.g. "
                                  "DISCARD%20ALL), or leave it out",
                       .dflt = "", .doc = "SQL run at every check-in",
                       .offset = Q(reset_query)},
    [P_RESET_TIMEOUT] = {.name = "reset_timeout_ms", .type = CPOOL_PARAM_INT, .min = 1,
                         .max = RESET_TIMEOUT_MAX_MS,
                         .allowed = "1..86400000 (milliseconds)", .dflt = "5000",
                         .doc = "bound on the check-in round trips and on stopping a query "
                                "left running",
                         .offset = Q(reset_timeout_ms)},
    [P_COMMAND_TIMEOUT] = {.name = "command_timeout_ms", .type = CPOOL_PARAM_INT, .min = 0,
                           .max = RESET_TIMEOUT_MAX_MS,
                           .allowed = "0..86400000 (milliseconds; 0 = none)", .dflt = "0",
                           .doc = "bound on cpool_conn_execute", .offset = Q(command_timeout_ms)},
};
#undef Q
#define NPARAMS (sizeof pg_params / sizeof pg_params[0])

/* "reset, reset_query, ..." for messages. */
static const char *own_names(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < NPARAMS && used < size; i++) {
        int w = snprintf(buf + used, size - used, "%s%s", i > 0 ? ", " : "", pg_params[i].name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    return buf;
}

/* Takes the connector's own parameters out of the target t into c. */
static int take_own(char *t, bool uri, char *val, size_t vsize, pg_ctx *c, cpool_error *err)
{
    pg_query *q = calloc(1, sizeof *q);
    if (q == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                               "postgresql target: out of memory");
    q->reset_timeout_ms = c->reset_timeout_ms;
    q->command_timeout_ms = c->command_timeout_ms;
    uint64_t seen = 0;
    int rc = 0;
    for (size_t i = 0; i < NPARAMS && rc == 0; i++) {
        int r = take_param(t, uri, pg_params[i].name, val, vsize);
        if (r == CPOOL_ENOMEM)
            rc = cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                                 "postgresql target: out of memory");
        else if (r < 0)
            rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                 "postgresql target: %s: bad %%-escape or quoting",
                                 pg_params[i].name);
        else if (r == 1 && (r = cpool_param_set("postgresql", pg_params, NPARAMS,
                                                pg_params[i].name, val, q, &seen, err)) < 0)
            rc = r;
    }
    if (rc == 0 && (seen & (1u << P_RESET_QUERY)) &&
        (c->reset_query = strdup(q->reset_query)) == NULL)
        rc = cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                             "postgresql target: out of memory");
    if (rc == 0) {
        c->reset_always = q->reset == 1;
        c->reset_timeout_ms = q->reset_timeout_ms;
        c->command_timeout_ms = q->command_timeout_ms;
    }
    free(q);
    return rc;
}

/* Parses `target` into a context: takes our parameters out, checks the rest
 * with libpq. */
static int ctx_parse(const char *target, pg_ctx **out, cpool_error *err)
{
    *out = NULL;
    if (target == NULL)
        target = "";
    if (!PQisthreadsafe())
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "postgresql connector: this libpq was built without "
                               "thread safety");
    pg_ctx *c = calloc(1, sizeof *c);
    size_t vsize = strlen(target) + 1;
    char *val = malloc(vsize);
    char *t = strdup(target);
    int rc = 0;
    if (c == NULL || val == NULL || t == NULL) {
        rc = cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, ENOMEM,
                             "postgresql target: out of memory");
        goto out;
    }
    c->reset_timeout_ms = RESET_TIMEOUT_DEFAULT_MS;
    bool uri = is_uri(t);

    if ((rc = take_own(t, uri, val, vsize, c, err)) != 0)
        goto out;

    /* A bare word is a database name to libpq (expand_dbname only expands
     * strings with '=' or a URI prefix); everything else must parse. */
    PQconninfoOption *opts = NULL;
    if (uri || strchr(t, '=') != NULL) {
        char *perr = NULL;
        opts = PQconninfoParse(t, &perr);
        if (opts == NULL) {
            char msg[160], name[64], v[48], names[128];
            one_line(perr != NULL ? perr : "out of memory", msg, sizeof msg);
            PQfreemem(perr);
            if (find_unknown(t, uri, name, sizeof name, v, sizeof v))
                rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                     "postgresql target: unknown parameter \"%s\" = \"%s\" "
                                     "(libpq: %s); allowed: libpq's connection parameters "
                                     "and %s",
                                     name, v, msg, own_names(names, sizeof names));
            else
                rc = cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                                     "postgresql target rejected by libpq: %s", msg);
            goto out;
        }
        rc = check_values(opts, err);
    }
    pg_endpoint ep;
    first_endpoint(opts, &ep);
    make_addr(&ep, c->addr, sizeof c->addr);
    make_probe(&ep, c);
    PQconninfoFree(opts);
    if (rc != 0)
        goto out;
    c->conninfo = t;
    t = NULL;
    *out = c;
    c = NULL;
out:
    free(t);
    free(val);
    ctx_destroy(c);
    return rc;
}

static int pg_ctx_new(const char *target, void **ctx, cpool_error *err)
{
    pg_ctx *c = NULL;
    int rc = ctx_parse(target, &c, err);
    *ctx = c;
    return rc;
}

static void pg_ctx_free(void *ctx)
{
    ctx_destroy(ctx);
}

static const char *addr_of(const pg_ctx *ctx)
{
    return ctx != NULL ? ctx->addr : "postgresql";
}

/* ----------------------------------------------------- per-connection state */

static void cancel_release(cancel_ref *ref)
{
    if (ref != NULL && atomic_fetch_sub(&ref->refs, 1) == 1) {
        PQfreeCancel(ref->cancel);
        free(ref);
    }
}

static cancel_ref *cancel_make(PGconn *conn)
{
    cancel_ref *ref = malloc(sizeof *ref);
    if (ref == NULL)
        return NULL;
    ref->cancel = PQgetCancel(conn);
    if (ref->cancel == NULL) {
        free(ref);
        return NULL;
    }
    atomic_init(&ref->refs, 1);
    return ref;
}

/* The session parameters the server reports to the client whenever they
 * change (GUC_REPORT), hashed. A lease that changed one changed the
 * session: SET SESSION AUTHORIZATION, SET ROLE by a superuser (which flips
 * is_superuser), SET TimeZone, application_name ... (search_path too from
 * PostgreSQL 18). Comparing at check-in costs no round trip. */
static const char *const reported_names[] = {
    "session_authorization", "is_superuser",  "application_name",
    "client_encoding",       "DateStyle",     "IntervalStyle",
    "TimeZone",              "standard_conforming_strings",
    "default_transaction_read_only", "search_path", NULL};

/* Which of reported_names[] the server reports (a bit each). The set is
 * fixed by the server's version, so it is read once per session: libpq
 * finds a parameter by walking its list, and a name the server does not
 * report (search_path before PostgreSQL 18) walks all of it for nothing at
 * every check-in. */
static unsigned reported_mask_of(const PGconn *conn)
{
    unsigned mask = 0;
    for (int i = 0; reported_names[i] != NULL; i++)
        if (PQparameterStatus(conn, reported_names[i]) != NULL)
            mask |= 1u << i;
    return mask;
}

static uint64_t reported_hash(const PGconn *conn, unsigned mask)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */
    for (int i = 0; reported_names[i] != NULL; i++) {
        if (!(mask & (1u << i)))
            continue;
        const char *v = PQparameterStatus(conn, reported_names[i]);
        for (const char *q = v != NULL ? v : "\x01"; ; q++) {
            h = (h ^ (unsigned char)*q) * 1099511628211ULL;
            if (*q == '\0')
                break;
        }
    }
    return h;
}

static int pg_event(PGEventId id, void *info, void *pass);

static pg_state *state_of(const PGconn *conn)
{
    return conn != NULL ? PQinstanceData(conn, pg_event) : NULL;
}

/* libpq calls this; the state lives exactly as long as the PGconn. */
static int pg_event(PGEventId id, void *info, void *pass)
{
    (void)pass;
    if (id == PGEVT_CONNDESTROY) {
        PGconn *conn = ((PGEventConnDestroy *)info)->conn;
        pg_state *st = PQinstanceData(conn, pg_event);
        if (st != NULL) {
            cancel_release(st->cancel);
            if (st->sock >= 0)
                close(st->sock);
            pthread_mutex_destroy(&st->mu);
            free(st);
        }
    } else if (id == PGEVT_CONNRESET) {
        /* Someone called PQreset(): a new backend, a new cancel key, a new
         * socket. When the new cancel object cannot be made the old one
         * stays (a cancel then reaches nobody, which is harmless); without a
         * new duplicate an interrupt cannot shut the socket down, and the
         * connection counts as interrupted from the start. */
        PGconn *conn = ((PGEventConnReset *)info)->conn;
        pg_state *st = PQinstanceData(conn, pg_event);
        if (st == NULL)
            return 1;
        cancel_ref *fresh = cancel_make(conn);
        int sock = fcntl(PQsocket(conn), F_DUPFD_CLOEXEC, 0);
        pthread_mutex_lock(&st->mu);
        cancel_ref *old = NULL;
        if (fresh != NULL) {
            old = st->cancel;
            st->cancel = fresh;
        }
        int old_sock = st->sock;
        st->sock = sock;
        pthread_mutex_unlock(&st->mu);
        /* A fresh session: what it reports now is the baseline. */
        st->reported_mask = reported_mask_of(conn);
        st->reported = reported_hash(conn, st->reported_mask);
        cancel_release(old);
        if (old_sock >= 0)
            close(old_sock);
        if (sock < 0)
            atomic_store(&st->interrupted, true);
    }
    return 1;
}

/* One cancel job: the request, sent once or until the backend is gone. */
typedef struct cancel_job {
    cancel_ref *ref;  /* a reference of the job's own */
    int watch;        /* our socket of the connection, to see the backend
                         go (the job closes it); -1: send `tries` requests */
    int tries;        /* without `watch`: how many requests */
    int64_t until_ns; /* no request is sent after this */
} cancel_job;

/* PQcancel() with SIGPIPE held back: it sends without MSG_NOSIGNAL, and a
 * server that closed first must not kill the process. A SIGPIPE raised
 * meanwhile is thread-directed and consumed. */
static void cancel_once(cancel_ref *ref)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    bool was_pending = false;
    sigset_t pend;
    if (sigpending(&pend) == 0)
        was_pending = sigismember(&pend, SIGPIPE);
    char buf[256];
    (void)PQcancel(ref->cancel, buf, (int)sizeof buf);
    if (!was_pending && sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE)) {
        struct timespec zero = {0, 0};
        (void)sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Waits up to `ms` for the backend to close its end of `fd`: true when it
 * has (or the socket failed), false when the time ran out. Data the backend
 * sends meanwhile (the cancelled query's error) is not waited for. */
static bool backend_gone(int fd, int ms)
{
    int eno;
    return cpool__wait_fd(fd, POLLRDHUP, -1, cpool__mono_ns() + (int64_t)ms * 1000000, &eno) !=
           CPOOL_WAIT_TIMEOUT;
}

/* The job's loop. A request reaches the backend only once it is running
 * the query, so one sent too early is lost: with a socket to watch, the
 * request is repeated (20, 80, 320 ms, then every second) until the
 * backend closes it -- it does once the query stops and it reads our
 * Terminate -- or until_ns passes. */
static void *cancel_main(void *arg)
{
    cancel_job *j = arg;
    int pause_ms = 20;
    for (int sent = 0;;) {
        cancel_once(j->ref);
        sent++;
        int64_t left_ms = (j->until_ns - cpool__mono_ns()) / 1000000;
        if (left_ms <= 0)
            break;
        int ms = pause_ms < left_ms ? pause_ms : (int)left_ms;
        if (j->watch >= 0) {
            if (backend_gone(j->watch, ms))
                break;
        } else {
            if (sent >= j->tries)
                break;
            struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
        pause_ms = pause_ms * 4 > 1000 ? 1000 : pause_ms * 4;
    }
    if (j->watch >= 0)
        close(j->watch);
    cancel_release(j->ref);
    free(j);
    return NULL;
}

/* Runs fn(arg) on a detached thread with a small stack and every signal
 * blocked (its SIGPIPE included). 0, or pthread_create's error. */
static int spawn_detached(void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    int rc = pthread_attr_init(&attr);
    if (rc != 0)
        return rc;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, stack);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&th, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

/* Starts a cancel job for the connection's backend without waiting for
 * it: on a detached thread with every signal blocked, or, when no thread
 * can be made, one request here. At most one job per connection. `watch`
 * (taken over; -1 = none) and `tries` as in cancel_job. */
static void send_cancel(pg_state *st, int watch, int tries, int64_t timeout_ms)
{
    if (st == NULL || atomic_exchange(&st->cancel_sent, true)) {
        if (watch >= 0)
            close(watch);
        return;
    }
    pthread_mutex_lock(&st->mu);
    cancel_ref *ref = st->cancel;
    if (ref != NULL)
        atomic_fetch_add(&ref->refs, 1);
    pthread_mutex_unlock(&st->mu);
    cancel_job *j = ref != NULL ? malloc(sizeof *j) : NULL;
    if (j == NULL) {
        if (ref != NULL) {
            cancel_once(ref);
            cancel_release(ref);
        }
        if (watch >= 0)
            close(watch);
        return;
    }
    *j = (cancel_job){ref, watch, tries, cpool__mono_ns() + timeout_ms * 1000000};
    /* PQcancel needs little stack; keep the footprint of a stuck one small. */
    if (spawn_detached(cancel_main, j, 256 * 1024) != 0) {
        j->tries = 1;
        if (j->watch >= 0)
            close(j->watch);
        j->watch = -1;
        cancel_main(j);
    }
}

/* The target_session_attrs the connection was made with, wherever it came
 * from (the target, PGTARGETSESSIONATTRS, a service file): libpq's own
 * record of its options. -1 when out of memory. */
static int conn_tsa(PGconn *conn)
{
    PQconninfoOption *opts = PQconninfo(conn);
    if (opts == NULL)
        return -1;
    const char *v = opt_val(opts, "target_session_attrs");
    int i = v != NULL ? parse_tsa(v) : -1;
    PQconninfoFree(opts);
    return i > 0 ? i : TSA_ANY;
}

/* Attaches the state to a fresh connection. */
static int state_attach(PGconn *conn)
{
    pg_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return -1;
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        free(st);
        return -1;
    }
    atomic_init(&st->interrupted, false);
    atomic_init(&st->cancel_sent, false);
    st->cancel = cancel_make(conn);
    st->sock = fcntl(PQsocket(conn), F_DUPFD_CLOEXEC, 0);
    int tsa = conn_tsa(conn);
    st->tsa = tsa >= 0 ? (tsa_mode)tsa : TSA_ANY;
    /* A NULL hook changes nothing and returns the current one. */
    st->notice_receiver = PQsetNoticeReceiver(conn, NULL, NULL);
    st->notice_processor = PQsetNoticeProcessor(conn, NULL, NULL);
    st->reported_mask = reported_mask_of(conn);
    st->reported = reported_hash(conn, st->reported_mask);
    if (st->cancel == NULL || st->sock < 0 || tsa < 0 ||
        !PQregisterEventProc(conn, pg_event, "cpool", NULL) ||
        !PQsetInstanceData(conn, pg_event, st)) {
        /* Not attached, so PQfinish will not free it. */
        cancel_release(st->cancel);
        if (st->sock >= 0)
            close(st->sock);
        pthread_mutex_destroy(&st->mu);
        free(st);
        return -1;
    }
    return 0;
}

/* NULL when the server's role satisfies target_session_attrs as far as its
 * last reported parameters tell; else why not. Without the parameters
 * (servers before 14 do not report them) nothing is rejected. */
static const char *tsa_violation(PGconn *conn, const pg_state *st)
{
    if (st == NULL || st->tsa == TSA_ANY || st->tsa == TSA_PREFER_STANDBY)
        return NULL;
    const char *hs = PQparameterStatus(conn, "in_hot_standby");
    const char *ro = PQparameterStatus(conn, "default_transaction_read_only");
    bool standby = hs != NULL && strcmp(hs, "on") == 0;
    bool primary = hs != NULL && strcmp(hs, "off") == 0;
    bool read_only = standby || (ro != NULL && strcmp(ro, "on") == 0);
    bool read_write = primary && ro != NULL && strcmp(ro, "off") == 0;
    switch (st->tsa) {
    case TSA_READ_WRITE:
        return read_only ? "the server is now read-only (target_session_attrs=read-write)"
                         : NULL;
    case TSA_READ_ONLY:
        return read_write ? "the server is now read-write (target_session_attrs=read-only)"
                          : NULL;
    case TSA_PRIMARY:
        return standby ? "the server is now a standby (target_session_attrs=primary)" : NULL;
    case TSA_STANDBY:
        return primary ? "the server is now a primary (target_session_attrs=standby)" : NULL;
    default:
        return NULL;
    }
}

/* ------------------------------------------------------------ establishing */

/* The phase a connection in this libpq state is in. `answered`: the server
 * has answered the startup packet, so what follows is authentication. */
static cpool_phase phase_of(ConnStatusType s, bool answered)
{
    switch (s) {
    case CONNECTION_NEEDED:
    case CONNECTION_STARTED:
        return CPOOL_PHASE_CONNECT;
    case CONNECTION_SSL_STARTUP:
    case CONNECTION_GSS_STARTUP:
        return CPOOL_PHASE_TLS;
    case CONNECTION_AWAITING_RESPONSE:
        return answered ? CPOOL_PHASE_AUTH : CPOOL_PHASE_HANDSHAKE;
    default:
        /* MADE (sending the startup packet) and everything after
         * AuthenticationOk: the backend starting the session. */
        return CPOOL_PHASE_HANDSHAKE;
    }
}

static const char *phase_doing(cpool_phase p)
{
    switch (p) {
    case CPOOL_PHASE_CONNECT: return "connecting";
    case CPOOL_PHASE_TLS: return "in the TLS/GSS handshake";
    case CPOOL_PHASE_HANDSHAKE: return "waiting for the server to start the session";
    case CPOOL_PHASE_AUTH: return "authenticating";
    default: return "establishing";
    }
}

/* The SQLSTATE in a verbose libpq message ("FATAL:  28P01: ..."), and the
 * message cleaned: without the code, the LOCATION line and line breaks. */
static int parse_verbose(const char *msg, char *out, size_t size)
{
    static const char *const sev[] = {"FATAL:  ", "ERROR:  ", "PANIC:  ", NULL};
    int code = 0;
    char tmp[1024];
    size_t o = 0;
    const char *p = msg != NULL ? msg : "";
    while (*p != '\0' && o + 1 < sizeof tmp) {
        if (strncmp(p, "LOCATION:  ", 11) == 0 && (p == msg || p[-1] == '\n')) {
            p += strcspn(p, "\n");
            continue;
        }
        bool took = false;
        for (int i = 0; sev[i] != NULL && !took; i++) {
            size_t n = strlen(sev[i]);
            if (strncmp(p, sev[i], n) == 0 && strlen(p) >= n + 7 && p[n + 5] == ':' &&
                p[n + 6] == ' ') {
                char st[6];
                memcpy(st, p + n, 5);
                st[5] = '\0';
                int c = cpool_pg_sqlstate_code(st);
                if (c != 0) {
                    if (code == 0)
                        code = c;
                    for (size_t k = 0; k < n && o + 1 < sizeof tmp; k++)
                        tmp[o++] = sev[i][k];
                    p += n + 7;
                    took = true;
                }
            }
        }
        if (!took)
            tmp[o++] = *p++;
    }
    tmp[o] = '\0';
    one_line(tmp, out, size);
    return code;
}

/* errno behind a libpq socket message, recognised by its strerror text
 * (libpq formats it with strerror in the same locale); 0 when none. */
static int guess_errno(const char *msg)
{
    static const int codes[] = {ECONNREFUSED, ENOENT,    ETIMEDOUT, EHOSTUNREACH,
                                ENETUNREACH,  ECONNRESET, EPIPE,    EACCES};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strstr(msg, strerror(codes[i])) != NULL)
            return codes[i];
    return 0;
}

static bool has(const char *msg, const char *what)
{
    return strstr(msg, what) != NULL;
}

/* Fills err for an establishment that libpq gave up on. `phase` is where
 * the connection was when it failed. */
static int classify_failure(const pg_ctx *ctx, PGconn *conn, cpool_phase phase,
                            cpool_error *err)
{
    char msg[240];
    const char *raw = conn != NULL ? PQerrorMessage(conn) : "out of memory";
    int state = parse_verbose(raw, msg, sizeof msg);
    const char *addr = addr_of(ctx);
    char st[6];
    cpool_pg_sqlstate_text(state, st);

    if (state != 0) {
        const char *transient = NULL;
        cpool_fail_kind kind = CPOOL_FAIL_SERVER;
        if (strncmp(st, "28", 2) == 0 || strcmp(st, "42501") == 0) {
            /* Invalid password, no pg_hba.conf entry, unknown role, no
             * CONNECT privilege. */
            phase = CPOOL_PHASE_AUTH;
            kind = CPOOL_FAIL_AUTH;
        } else if (strcmp(st, "57P03") == 0) {
            transient = "the server is starting up, shutting down or in recovery";
        } else if (strcmp(st, "53300") == 0) {
            transient = "too many connections";
            kind = CPOOL_FAIL_CAPACITY;
        } else if (strncmp(st, "53", 2) == 0 || strcmp(st, "57P01") == 0 ||
                   strcmp(st, "57P02") == 0) {
            transient = "the server is short of resources or shutting down";
        }
        if (phase == CPOOL_PHASE_CONNECT || phase == CPOOL_PHASE_NONE)
            phase = CPOOL_PHASE_HANDSHAKE; /* the server answered */
        if (transient != NULL)
            return cpool_error_set(err, CPOOL_ECONNECT, phase, kind, state,
                                   "connect %s: %s [transient: %s; retry later]", addr, msg,
                                   transient);
        return cpool_error_set(err, CPOOL_ECONNECT, phase, kind, state, "connect %s: %s",
                               addr, msg);
    }

    int eno = guess_errno(msg);
    cpool_fail_kind kind = CPOOL_FAIL_NETWORK;
    if (has(msg, "could not translate host name") || has(msg, "could not parse network address")) {
        phase = CPOOL_PHASE_DNS;
        kind = CPOOL_FAIL_DNS;
    } else if (phase == CPOOL_PHASE_TLS || has(msg, "SSL") || has(msg, "certificate")) {
        phase = CPOOL_PHASE_TLS;
        if (has(msg, "certificate") || has(msg, "does not match host name"))
            kind = CPOOL_FAIL_CERTIFICATE;
        else if (has(msg, "does not support SSL") || has(msg, "GSSAPI"))
            kind = CPOOL_FAIL_OTHER; /* sslmode/gssencmode vs. the server's setup */
    } else if (has(msg, "fe_sendauth") || has(msg, "SCRAM") || has(msg, "authentication") ||
               has(msg, "password")) {
        /* Refused by libpq itself: no password supplied, a method that
         * require_auth or channel_binding forbids, a bad server proof. */
        phase = CPOOL_PHASE_AUTH;
        kind = CPOOL_FAIL_AUTH;
    } else if (has(msg, "read-only") || has(msg, "hot standby")) {
        /* libpq's own target_session_attrs check refused the server: it
         * answered, and it is the wrong kind, not an overloaded one. */
        phase = CPOOL_PHASE_HANDSHAKE;
        kind = CPOOL_FAIL_SERVER;
    } else if (phase == CPOOL_PHASE_NONE || phase == CPOOL_PHASE_DNS) {
        phase = CPOOL_PHASE_CONNECT;
    } else if (phase == CPOOL_PHASE_HANDSHAKE && has(msg, "invalid connection option")) {
        kind = CPOOL_FAIL_OTHER;
    }
    if (conn == NULL)
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_CONNECT, CPOOL_FAIL_OTHER, ENOMEM,
                               "connect %s: out of memory", addr);
    return cpool_error_set(err, CPOOL_ECONNECT, phase, kind, eno, "connect %s: %s", addr, msg);
}

static int do_connect(const pg_ctx *ctx, cpool_connect_args *args, PGconn **out,
                      cpool_error *err)
{
    const char *kw[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {ctx->conninfo, APP_NAME_FALLBACK, NULL};
    int64_t mark = cpool__mono_ns(), start = mark;
    /* Name resolution happens inside this call (getaddrinfo blocks; use
     * hostaddr to avoid it), and so does a unix-socket connect. */
    PGconn *conn = PQconnectStartParams(kw, vals, /* expand_dbname= */ 1);
    int64_t t = cpool__mono_ns();
    args->phase_ns[CPOOL_PHASE_DNS] += t - mark;
    mark = t;
    if (conn == NULL)
        return classify_failure(ctx, NULL, CPOOL_PHASE_CONNECT, err);
    /* Verbose messages carry the SQLSTATE of a server's refusal, which is
     * how failures are classified; the default comes back once connected. */
    PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);

    PostgresPollingStatusType ps =
        PQstatus(conn) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    bool answered = false;
    /* Failing at once (a refused unix socket, an unknown host) is a
     * connect failure; the message tells DNS apart. */
    cpool_phase phase = PQstatus(conn) == CONNECTION_BAD ? CPOOL_PHASE_CONNECT
                                                         : phase_of(PQstatus(conn), answered);
    int rc = 0;
    for (;;) {
        if (ps == PGRES_POLLING_OK)
            break;
        if (ps == PGRES_POLLING_FAILED) {
            rc = classify_failure(ctx, conn, phase, err);
            goto fail;
        }
        int64_t now = cpool__mono_ns();
        if (args->deadline_ns > 0 && now >= args->deadline_ns) {
            args->phase_ns[phase] += now - mark;
            rc = cpool_error_set(err, CPOOL_ECONNECT, phase, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                                 "connect %s: timed out after %lld ms %s", addr_of(ctx),
                                 (long long)((now - start) / 1000000), phase_doing(phase));
            goto fail;
        }
        int e = 0;
        int w = cpool__wait_fd(PQsocket(conn),
                               ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, args->cancel_fd,
                               args->deadline_ns, &e);
        if (w == CPOOL_WAIT_ERROR) {
            rc = cpool_error_set(err, CPOOL_ECONNECT, phase, CPOOL_FAIL_OTHER, e,
                                 "connect %s: poll failed: %s", addr_of(ctx), strerror(e));
            goto fail;
        }
        t = cpool__mono_ns();
        args->phase_ns[phase] += t - mark;
        mark = t;
        /* Any event on cancel_fd, POLLNVAL included, means the pool no
         * longer waits for this attempt. */
        if (w == CPOOL_WAIT_CANCELLED) {
            rc = cpool_error_set(err, CPOOL_ECONNECT, phase, CPOOL_FAIL_INTERRUPTED, 0,
                                 "connect %s: interrupted by the pool %s", addr_of(ctx),
                                 phase_doing(phase));
            goto fail;
        }
        if (w == CPOOL_WAIT_TIMEOUT)
            continue; /* the deadline check above ends it */
        ConnStatusType before = PQstatus(conn);
        ps = PQconnectPoll(conn);
        if (before == CONNECTION_AWAITING_RESPONSE)
            answered = true;
        t = cpool__mono_ns();
        args->phase_ns[phase] += t - mark; /* the call's own work (SCRAM) */
        mark = t;
        if (ps != PGRES_POLLING_FAILED)
            phase = phase_of(PQstatus(conn), answered);
    }
    PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
    if (state_attach(conn) != 0) {
        rc = cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_OTHER, ENOMEM,
                             "connect %s: out of memory", addr_of(ctx));
        goto fail;
    }
    *out = conn;
    return 0;
fail:
    PQfinish(conn);
    return rc;
}

static int pg_connect(void *vctx, cpool_connect_args *args, void **native, cpool_error *err)
{
    pg_ctx *ctx = vctx, *tmp = NULL;
    *native = NULL;
    if (ctx == NULL) {
        /* A caller-made pool without our context: parse the target now. */
        int rc = ctx_parse(args->target, &tmp, err);
        if (rc != 0) {
            if (err != NULL && rc == CPOOL_EINVAL) {
                err->code = CPOOL_ECONNECT;
                err->phase = CPOOL_PHASE_CONNECT;
            }
            return rc == CPOOL_EINVAL ? CPOOL_ECONNECT : rc;
        }
        ctx = tmp;
    }
    PGconn *conn = NULL;
    int rc = do_connect(ctx, args, &conn, err);
    ctx_destroy(tmp);
    if (rc == 0)
        *native = conn;
    return rc;
}

/* ------------------------------------------------------------------- I/O */

/* Waits until conn's socket is ready for `events` or the deadline (0 =
 * none) passes. 0 = ready, 1 = timed out, -1 = poll failed (errno). */
static int wait_socket(PGconn *conn, short events, int64_t deadline)
{
    int eno = 0;
    int w = cpool__wait_fd(PQsocket(conn), events, -1, deadline, &eno);
    if (w == CPOOL_WAIT_ERROR)
        errno = eno;
    return w == CPOOL_WAIT_READY ? 0 : w == CPOOL_WAIT_TIMEOUT ? 1 : -1;
}

/* Whether an idempotent operation that failed this way may just be tried
 * again (on another connection when this one broke). */
static bool retryable_failure(cpool_fail_kind kind, int sqlstate)
{
    if (kind == CPOOL_FAIL_NETWORK)
        return true;
    if (kind != CPOOL_FAIL_SERVER || sqlstate == 0)
        return false;
    char s[6];
    cpool_pg_sqlstate_text(sqlstate, s);
    return strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 || strcmp(s, "57P01") == 0 ||
           strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 || strncmp(s, "08", 2) == 0;
}

static int label(int rc, cpool_error *err)
{
    if (err != NULL && retryable_failure(err->kind, err->native))
        err->labels |= CPOOL_LABEL_RETRYABLE;
    return rc;
}

static int io_error(const pg_ctx *ctx, PGconn *conn, const char *what, cpool_fail_kind kind,
                    int native, const char *detail, cpool_error *err)
{
    char msg[200];
    one_line(detail != NULL ? detail : PQerrorMessage(conn), msg, sizeof msg);
    return label(cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, kind, native,
                                 "%s on %s (backend pid %d): %s", what, addr_of(ctx),
                                 PQbackendPID(conn), msg),
                 err);
}

/* Runs `sql` (possibly several statements) with the whole round trip
 * bounded by `deadline`, and reads every result; any error fails it, and
 * with want_empty so does any answer but an empty-query response. With
 * `rows`, the first result with tuples is kept there for the caller to
 * PQclear (NULL when none). 0 on success; otherwise err is filled and the
 * connection may be left mid-query: the caller must close it. */
static int run_rows(const pg_ctx *ctx, PGconn *conn, const char *sql, bool want_empty,
                    int64_t deadline, const char *what, PGresult **rows, cpool_error *err)
{
    if (rows != NULL)
        *rows = NULL;
    bool was_nonblocking = PQisnonblocking(conn);
    if (!was_nonblocking && PQsetnonblocking(conn, 1) != 0)
        return io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, 0, NULL, err);
    if (!PQsendQuery(conn, sql))
        return io_error(ctx, conn, what,
                        PQstatus(conn) == CONNECTION_BAD ? CPOOL_FAIL_NETWORK
                                                         : CPOOL_FAIL_OTHER,
                        0, NULL, err);
    int f;
    while ((f = PQflush(conn)) == 1) {
        int w = wait_socket(conn, POLLOUT | POLLIN, deadline);
        if (w == 1)
            return io_error(ctx, conn, what, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                            "timed out sending the query", err);
        if (w < 0 || !PQconsumeInput(conn))
            return io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, w < 0 ? errno : 0, NULL,
                            err);
    }
    if (f < 0)
        return io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, 0, NULL, err);

    int rc = 0;
    bool all_empty = true, any = false;
    for (;;) {
        while (PQisBusy(conn)) {
            int w = wait_socket(conn, POLLIN, deadline);
            if (w == 1)
                rc = io_error(ctx, conn, what, CPOOL_FAIL_TIMEOUT, ETIMEDOUT,
                              "timed out waiting for the server", err);
            else if (w < 0 || !PQconsumeInput(conn))
                rc = io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, w < 0 ? errno : 0, NULL,
                              err);
            if (w != 0 || rc != 0)
                goto out;
        }
        PGresult *r = PQgetResult(conn);
        if (r == NULL)
            break;
        ExecStatusType s = PQresultStatus(r);
        any = true;
        all_empty = all_empty && s == PGRES_EMPTY_QUERY;
        if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH) {
            PQclear(r);
            rc = io_error(ctx, conn, what, CPOOL_FAIL_OTHER, 0, "unexpected COPY", err);
            goto out;
        }
        if ((s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE) && rc == 0)
            rc = io_error(ctx, conn, what,
                          PQstatus(conn) == CONNECTION_BAD ? CPOOL_FAIL_NETWORK
                                                           : CPOOL_FAIL_SERVER,
                          result_sqlstate(r), PQresultErrorMessage(r), err);
        if (rows != NULL && *rows == NULL && s == PGRES_TUPLES_OK)
            *rows = r;
        else
            PQclear(r);
    }
    if (rc == 0 && want_empty && !(any && all_empty))
        rc = io_error(ctx, conn, what, CPOOL_FAIL_OTHER, 0, "no empty-query response", err);
    if (rc == 0 && !was_nonblocking && PQsetnonblocking(conn, 0) != 0)
        rc = io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, 0, NULL, err);
out:
    if (rc != 0 && rows != NULL && *rows != NULL) {
        PQclear(*rows);
        *rows = NULL;
    }
    return rc;
}

static int run_bounded(const pg_ctx *ctx, PGconn *conn, const char *sql, bool want_empty,
                       int64_t deadline, const char *what, cpool_error *err)
{
    return run_rows(ctx, conn, sql, want_empty, deadline, what, NULL, err);
}

/* Common refusals of check, ping and reset: interrupted or broken. */
static int unusable(const pg_ctx *ctx, PGconn *conn, const pg_state *st, const char *what,
                    cpool_error *err)
{
    if (conn == NULL)
        return cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "%s on %s: no connection", what, addr_of(ctx));
    if (st != NULL && atomic_load(&st->interrupted))
        return io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, 0, "interrupted by the pool", err);
    if (PQstatus(conn) != CONNECTION_OK)
        return io_error(ctx, conn, what, CPOOL_FAIL_NETWORK, 0, NULL, err);
    return 0;
}

/* ------------------------------------------------------------ the methods */

/* check()'s notice receiver: notes a FATAL or PANIC (the server ending the
 * session), passes anything else to libpq's default. */
typedef struct fatal_watch {
    bool fatal;
    PQnoticeReceiver dflt; /* libpq's default receiver (argument NULL) */
} fatal_watch;

static void fatal_notice(void *arg, const PGresult *res)
{
    fatal_watch *w = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev != NULL && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        w->fatal = true;
    else if (w->dflt != NULL)
        w->dflt(NULL, res);
}

static int pg_check(void *vctx, void *native, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "check", err);
    if (rc != 0)
        return rc;
    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN | POLLRDHUP};
    int n;
    do {
        n = poll(&pfd, 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        /* A server never half-closes: hang-up means the backend is gone
         * (terminated, crashed, idle timeout). Its farewell message is not
         * read, so libpq does not print it as a notice. */
        if (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
            return io_error(ctx, conn, "check", CPOOL_FAIL_NETWORK, 0,
                            "the server closed the connection", err);
        /* Notifications, a ParameterStatus (a changed role), a notice:
         * read and parse them; a notification waits for the next user. A
         * terminated backend sends its FATAL 40-100 ms before the socket
         * closes, and libpq hands it over as a notice: catch it here (the
         * pool's default hooks are in place, see pg_reset). */
        fatal_watch watch = {false, st->notice_receiver};
        PQsetNoticeReceiver(conn, fatal_notice, &watch);
        bool read_ok = PQconsumeInput(conn) != 0;
        if (read_ok)
            (void)PQisBusy(conn);
        PQsetNoticeReceiver(conn, st->notice_receiver, NULL);
        if (!read_ok || PQstatus(conn) != CONNECTION_OK)
            return io_error(ctx, conn, "check", CPOOL_FAIL_NETWORK, 0, NULL, err);
        if (watch.fatal)
            return io_error(ctx, conn, "check", CPOOL_FAIL_NETWORK, 0,
                            "the server is ending the session (FATAL)", err);
    }
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return io_error(ctx, conn, "check", CPOOL_FAIL_OTHER, 0,
                        "not idle (a transaction or a query is open)", err);
    const char *why = tsa_violation(conn, st);
    if (why != NULL)
        return io_error(ctx, conn, "check", CPOOL_FAIL_OTHER, 0, why, err);
    return 0;
}

static int pg_ping(void *vctx, void *native, int64_t deadline_ns, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "ping", err);
    if (rc != 0)
        return rc;
    if (PQtransactionStatus(conn) == PQTRANS_ACTIVE)
        return io_error(ctx, conn, "ping", CPOOL_FAIL_OTHER, 0, "a query is in progress", err);
    /* An empty query: the cheapest round trip the protocol has, and no
     * statement for a pooler in front to mind. */
    rc = run_bounded(ctx, conn, "", /* want_empty= */ true, deadline_ns, "ping", err);
    if (rc != 0)
        return rc;
    /* The backend applies a configuration reload only when a command
     * arrives, and reports the new role with the answer: check it now. */
    const char *why = tsa_violation(conn, st);
    if (why != NULL)
        return io_error(ctx, conn, "ping", CPOOL_FAIL_OTHER, 0, why, err);
    return 0;
}

/* reset_timeout_ms from now, or `cap` (CLOCK_MONOTONIC; 0 = none) when
 * that comes first. */
static int64_t reset_deadline(const pg_ctx *ctx, int64_t cap)
{
    int64_t timeout = ctx != NULL ? ctx->reset_timeout_ms : RESET_TIMEOUT_DEFAULT_MS;
    int64_t deadline = cpool__mono_ns() + timeout * 1000000;
    return cap > 0 && cap < deadline ? cap : deadline;
}

/* Rolls back an open transaction, and with `discard` ends the rest of what
 * the session holds (DISCARD ALL, which cannot run inside a transaction),
 * within deadline. 0, or CPOOL_EIO with err filled. */
static int end_session_state(const pg_ctx *ctx, PGconn *conn, bool rollback, bool discard,
                             int64_t deadline, const char *what, cpool_error *err)
{
    char label[48];
    snprintf(label, sizeof label, "%s (ROLLBACK)", what);
    if (rollback && run_bounded(ctx, conn, "ROLLBACK", /* want_empty= */ false, deadline,
                                label, err) != 0)
        return CPOOL_EIO;
    snprintf(label, sizeof label, "%s (DISCARD ALL)", what);
    if (discard && run_bounded(ctx, conn, "DISCARD ALL", /* want_empty= */ false, deadline,
                               label, err) != 0)
        return CPOOL_EIO;
    return 0;
}

static int pg_reset(void *vctx, void *native, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "reset", err);
    if (rc != 0)
        return rc;
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return io_error(ctx, conn, "reset", CPOOL_FAIL_OTHER, 0,
                        "returned in pipeline mode", err);
    /* Client-side settings a lease may have changed go back to what every
     * lease starts with. (A PQtrace() must be undone by the lease itself:
     * PQuntrace flushes a FILE the lease may already have closed.) */
    if (st != NULL) {
        PQsetNoticeReceiver(conn, st->notice_receiver, NULL);
        PQsetNoticeProcessor(conn, st->notice_processor, NULL);
    }
    PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
    PQsetErrorContextVisibility(conn, PQSHOW_CONTEXT_ERRORS);
    bool rollback = false;
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_IDLE:
        break;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        rollback = true;
        break;
    case PQTRANS_ACTIVE:
        /* A query still running, results unread or COPY: the session's
         * state is unknown. The connection is closed, and close() makes
         * sure the backend stops. */
        return io_error(ctx, conn, "reset", CPOOL_FAIL_OTHER, 0,
                        "returned with a query in progress (unread results or COPY)", err);
    default:
        return io_error(ctx, conn, "reset", CPOOL_FAIL_NETWORK, 0, NULL, err);
    }
    /* DISCARD ALL when asked to always, or when a reported parameter shows
     * the lease changed the session (see reported_hash). */
    bool discard = (ctx != NULL && ctx->reset_always) ||
                   (st != NULL && reported_hash(conn, st->reported_mask) != st->reported);
    if (!rollback && !discard && (ctx == NULL || ctx->reset_query == NULL)) {
        /* Nothing to send: no round trip on the common path. A user who
         * switched to non-blocking mode hands the next one the default. */
        if (PQisnonblocking(conn) && PQsetnonblocking(conn, 0) != 0)
            return io_error(ctx, conn, "reset", CPOOL_FAIL_NETWORK, 0, NULL, err);
    } else {
        int64_t deadline = reset_deadline(ctx, 0);
        if (end_session_state(ctx, conn, rollback, discard, deadline, "reset", err) != 0)
            return CPOOL_EIO;
        if (ctx != NULL && ctx->reset_query != NULL &&
            run_bounded(ctx, conn, ctx->reset_query, /* want_empty= */ false, deadline,
                        "reset (reset_query)", err) != 0)
            return CPOOL_EIO;
        if (PQisnonblocking(conn) && PQsetnonblocking(conn, 0) != 0)
            return io_error(ctx, conn, "reset", CPOOL_FAIL_NETWORK, 0, NULL, err);
        if (PQtransactionStatus(conn) != PQTRANS_IDLE)
            return io_error(ctx, conn, "reset", CPOOL_FAIL_OTHER, 0,
                            "reset_query left a transaction open", err);
        /* What the session reports now is what a reset one does: a reload
         * may have changed the server's defaults since it began, and
         * reset_query may set a reported setting itself. */
        if (st != NULL)
            st->reported = reported_hash(conn, st->reported_mask);
    }
    const char *why = tsa_violation(conn, st);
    if (why != NULL)
        return io_error(ctx, conn, "reset", CPOOL_FAIL_OTHER, 0, why, err);
    return 0;
}

/* Another tenant's turn: the session becomes as fresh as a new one's.
 * DISCARD ALL ends what a session holds -- role and settings (SET SESSION
 * AUTHORIZATION DEFAULT, RESET ALL), temporary tables, prepared statements,
 * cursors, advisory locks, LISTEN, cached plans, sequences' state -- but
 * cannot run inside a transaction, so an open one is rolled back first. */
static int pg_discard(void *vctx, void *native, int64_t deadline_ns, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "discard", err);
    if (rc != 0)
        return rc;
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_ACTIVE || PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return io_error(ctx, conn, "discard", CPOOL_FAIL_OTHER, 0, "a query is in progress",
                        err);
    if (end_session_state(ctx, conn, ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR, true,
                          reset_deadline(ctx, deadline_ns), "discard", err) != 0)
        return CPOOL_EIO;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return io_error(ctx, conn, "discard", CPOOL_FAIL_OTHER, 0,
                        "a transaction is still open", err);
    if (st != NULL)
        st->reported = reported_hash(conn, st->reported_mask);
    const char *why = tsa_violation(conn, st);
    if (why != NULL)
        return io_error(ctx, conn, "discard", CPOOL_FAIL_OTHER, 0, why, err);
    return 0;
}

static void *shut_read_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct timespec ts = {0, INTERRUPT_GRACE_MS * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    (void)shutdown(fd, SHUT_RD);
    close(fd);
    return NULL;
}

/* Shuts `fd` (ours; closed here) for reading after INTERRUPT_GRACE_MS, on
 * a detached thread; now when no thread can be made. */
static void shut_read_later(int fd)
{
    if (spawn_detached(shut_read_main, (void *)(intptr_t)fd, 64 * 1024) != 0) {
        (void)shutdown(fd, SHUT_RD);
        close(fd);
    }
}

/* The lease's socket is shut for writing at once: the holder's next call
 * fails, whatever the server does. The backend is asked to cancel its
 * query, three times over half a second since a request that arrives
 * before the query starts is lost, and a query in progress gets the
 * server's answer (57014) within INTERRUPT_GRACE_MS; after that the socket
 * is shut for reading too, so a stopped server cannot keep the holder
 * waiting. The backend ends its session when it next reads the socket. */
static void pg_interrupt(void *ctx, void *native)
{
    const pg_ctx *c = ctx;
    pg_state *st = state_of(native);
    if (st == NULL)
        return;
    atomic_store(&st->interrupted, true);
    pthread_mutex_lock(&st->mu);
    int later = -1;
    if (st->sock >= 0) {
        (void)shutdown(st->sock, SHUT_WR);
        later = fcntl(st->sock, F_DUPFD_CLOEXEC, 0);
        if (later < 0)
            (void)shutdown(st->sock, SHUT_RD);
    }
    pthread_mutex_unlock(&st->mu);
    send_cancel(st, -1, 3, c != NULL ? c->reset_timeout_ms : RESET_TIMEOUT_DEFAULT_MS);
    if (later >= 0)
        shut_read_later(later);
}

static void pg_close(void *ctx, void *native)
{
    const pg_ctx *c = ctx;
    PGconn *conn = native;
    if (conn == NULL)
        return;
    /* A backend busy with a query would notice the Terminate only when the
     * query ends: ask it to stop, and keep asking until it has (the job
     * keeps our duplicate of the socket to see it go). */
    pg_state *st = state_of(conn);
    if (st != NULL && PQstatus(conn) == CONNECTION_OK &&
        PQtransactionStatus(conn) == PQTRANS_ACTIVE && !atomic_load(&st->interrupted)) {
        pthread_mutex_lock(&st->mu);
        int watch = st->sock;
        st->sock = -1;
        pthread_mutex_unlock(&st->mu);
        send_cancel(st, watch, 0, c != NULL ? c->reset_timeout_ms : RESET_TIMEOUT_DEFAULT_MS);
    }
    PQfinish(conn);
}

/* In a forked child the socket belongs to the parent's session: PQfinish()
 * would send Terminate (and, with TLS, close_notify) on it. /dev/null is
 * put in the socket's place first, so those writes fail (ENOTSOCK) and the
 * parent's session never sees a byte; then PQfinish only frees and closes
 * our descriptor. */
static void pg_abandon(void *ctx, void *native)
{
    (void)ctx;
    PGconn *conn = native;
    if (conn == NULL)
        return;
    int sock = PQsocket(conn);
    if (sock >= 0) {
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul < 0 || dup2(nul, sock) < 0) {
            /* No safe stand-in: close our descriptor and leak the PGconn
             * rather than let PQfinish write on the parent's socket. */
            if (nul >= 0)
                close(nul);
            close(sock);
            return;
        }
        close(nul);
    }
    PQfinish(conn);
}

static int pg_address(void *vctx, const char *target, char *buf, size_t size)
{
    const pg_ctx *ctx = vctx;
    (void)target;
    if (ctx == NULL || size == 0)
        return -1;
    int w = snprintf(buf, size, "%s", ctx->addr);
    return w < 0 || (size_t)w >= size ? -1 : 0;
}

static int pg_describe(void *ctx, void *native, char *buf, size_t size)
{
    (void)ctx;
    PGconn *conn = native;
    if (conn == NULL || size == 0)
        return -1;
    int v = PQserverVersion(conn);
    char ver[32];
    if (v >= 100000)
        snprintf(ver, sizeof ver, "%d.%d", v / 10000, v % 10000);
    else
        snprintf(ver, sizeof ver, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    const char *hs = PQparameterStatus(conn, "in_hot_standby");
    const char *ro = PQparameterStatus(conn, "default_transaction_read_only");
    bool standby = hs != NULL && strcmp(hs, "on") == 0;
    const char *role = hs == NULL ? "role unknown" : standby ? "standby" : "primary";
    const char *mode = standby || (ro != NULL && strcmp(ro, "on") == 0) ? "read-only"
                       : ro != NULL                                     ? "read-write"
                                                                        : "mode unknown";
    int w = snprintf(buf, size, "PostgreSQL %s, %s, %s", ver, role, mode);
    return w < 0 || (size_t)w >= size ? -1 : 0;
}

/* One round trip: in recovery or not; a primary's timeline (the first
 * eight hex digits of its current WAL file's name), which promotion
 * raises; a replica's lag: 0 while it has replayed all it received, else
 * the age of the last transaction it replayed. A replica cut off from its
 * primary therefore reads as caught up: lag measures the replay, not the
 * link (the monitor sees the link through the primary's state). */
static const char info_sql[] =
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN 0"
    " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,"
    " CASE WHEN NOT pg_is_in_recovery() THEN NULL"
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " ELSE greatest(0, (extract(epoch FROM clock_timestamp() -"
    " pg_last_xact_replay_timestamp()) * 1000))::bigint END";

static int pg_server_info(void *vctx, void *native, unsigned flags, int64_t deadline_ns,
                          cpool_server_info *out, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    if (out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "server info on %s: no output", addr_of(ctx));
    out->role = CPOOL_ROLE_UNKNOWN;
    out->lag_ms = -1;
    out->epoch = 0;
    if (flags & CPOOL_INFO_CACHED) {
        /* PostgreSQL 14+ reports in_hot_standby at connect and whenever it
         * changes; older servers leave the role unknown here. */
        const char *hs = conn != NULL ? PQparameterStatus(conn, "in_hot_standby") : NULL;
        if (hs != NULL)
            out->role = strcmp(hs, "on") == 0 ? CPOOL_ROLE_REPLICA : CPOOL_ROLE_PRIMARY;
        return 0;
    }
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "server info", err);
    if (rc != 0)
        return rc;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return io_error(ctx, conn, "server info", CPOOL_FAIL_OTHER, 0,
                        "the session is not idle", err);
    PGresult *r = NULL;
    rc = run_rows(ctx, conn, info_sql, false, deadline_ns, "server info", &r, err);
    if (rc != 0)
        return rc;
    if (r == NULL || PQntuples(r) != 1 || PQnfields(r) != 3) {
        PQclear(r);
        return io_error(ctx, conn, "server info", CPOOL_FAIL_OTHER, 0,
                        "unexpected answer to the role query", err);
    }
    bool standby = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    out->role = standby ? CPOOL_ROLE_REPLICA : CPOOL_ROLE_PRIMARY;
    if (!standby)
        out->epoch = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    if (standby && (flags & CPOOL_INFO_LAG) && !PQgetisnull(r, 0, 2))
        out->lag_ms = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    return 0;
}

/* Runs the command non-blocking, bounded by command_timeout_ms (0 = no
 * bound): an interrupt shuts the socket down, which ends the wait at once.
 * A timeout or an interrupt leaves the connection mid-query; check-in
 * closes it. */
static int pg_execute(void *vctx, void *native, const char *command, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    PGconn *conn = native;
    if (conn == NULL || command == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "execute on %s: no connection or command", addr_of(ctx));
    pg_state *st = state_of(conn);
    int rc = unusable(ctx, conn, st, "execute", err);
    if (rc == 0) {
        if (PQtransactionStatus(conn) == PQTRANS_ACTIVE)
            return io_error(ctx, conn, "execute", CPOOL_FAIL_OTHER, 0,
                            "a query is in progress (unread results or COPY)", err);
        int64_t deadline = ctx != NULL && ctx->command_timeout_ms > 0
                               ? cpool__mono_ns() + ctx->command_timeout_ms * 1000000
                               : 0;
        rc = run_bounded(ctx, conn, command, /* want_empty= */ false, deadline, "execute", err);
    }
    if (rc != 0 && st != NULL && atomic_load(&st->interrupted))
        return cpool_error_set(err, CPOOL_EINTERRUPTED, CPOOL_PHASE_QUERY,
                               CPOOL_FAIL_INTERRUPTED, 0,
                               "execute on %s (backend pid %d): interrupted by the pool "
                               "(cleared or shut down); return the lease",
                               addr_of(ctx), PQbackendPID(conn));
    return rc;
}

/* One non-blocking connect by the deadline: 0, or the errno that ended it
 * (ETIMEDOUT when the deadline passed). */
static int connect_by(int family, const struct sockaddr *sa, socklen_t len, int64_t deadline)
{
    int fd, eno = 0;
    int w = cpool__connect_fd(family, sa, len, deadline, -1, &fd, &eno);
    if (w == CPOOL_WAIT_READY)
        close(fd);
    return w == CPOOL_WAIT_READY ? 0 : w == CPOOL_WAIT_TIMEOUT ? ETIMEDOUT : eno;
}

/* The server accepts connections: a connect to the target's first host
 * (or socket), closed without a byte. PostgreSQL logs nothing for a
 * connection that sends nothing. 1 when it cannot tell (an abstract
 * socket). Host names resolve with a blocking getaddrinfo(), as libpq's. */
static int pg_probe(void *vctx, int64_t deadline_ns, cpool_error *err)
{
    const pg_ctx *ctx = vctx;
    if (ctx == NULL || ctx->probe_kind == PROBE_NONE)
        return 1;
    int eno;
    if (ctx->probe_kind == PROBE_UNIX) {
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        size_t n = strlen(ctx->probe_host);
        if (n >= sizeof sa.sun_path)
            return 1;
        memcpy(sa.sun_path, ctx->probe_host, n + 1);
        eno = connect_by(AF_UNIX, (const struct sockaddr *)&sa, sizeof sa, deadline_ns);
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_ADDRCONFIG;
        int gai = getaddrinfo(ctx->probe_host, ctx->probe_port, &hints, &res);
        if (gai != 0)
            return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_DNS, CPOOL_FAIL_DNS, 0,
                                   "probe %s: %s", addr_of(ctx), gai_strerror(gai));
        eno = EADDRNOTAVAIL;
        for (struct addrinfo *ai = res; ai != NULL && eno != 0; ai = ai->ai_next)
            eno = connect_by(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline_ns);
        freeaddrinfo(res);
    }
    if (eno == 0)
        return 0;
    char eb[128];
    return cpool_error_set(err, CPOOL_ECONNECT, CPOOL_PHASE_CONNECT,
                           eno == ETIMEDOUT ? CPOOL_FAIL_TIMEOUT : CPOOL_FAIL_NETWORK, eno,
                           "probe %s: %s", addr_of(ctx), strerror_r(eno, eb, sizeof eb));
}

static const char *const pg_schemes[] = {"postgresql://", "postgres://", NULL};

static const cpool_connector pg_connector = {
    .abi_version = CPOOL_CONNECTOR_ABI,
    .name = "pg",
    .connect = pg_connect,
    .close = pg_close,
    .abandon = pg_abandon,
    .check = pg_check,
    .ping = pg_ping,
    .reset = pg_reset,
    .discard = pg_discard,
    .params = pg_params,
    .nparams = NPARAMS,
    .interrupt = pg_interrupt,
    .address = pg_address,
    .ctx_new = pg_ctx_new,
    .ctx_free = pg_ctx_free,
    .describe = pg_describe,
    .schemes = pg_schemes,
    .execute = pg_execute,
    .probe = pg_probe,
    .server_info = pg_server_info,
};

const cpool_connector *cpool_pg_connector(void)
{
    return &pg_connector;
}

PGconn *cpool_pg_conn(const cpool_conn *lease)
{
    return lease != NULL ? cpool_conn_native(lease) : NULL;
}

/* ------------------------------------------------------ transaction helpers */

static int cmd_error(PGconn *conn, const char *what, const PGresult *r, cpool_error *err)
{
    char msg[200];
    one_line(r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(conn), msg, sizeof msg);
    cpool_fail_kind kind =
        PQstatus(conn) == CONNECTION_BAD ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_SERVER;
    return label(cpool_error_set(err, CPOOL_EIO, CPOOL_PHASE_QUERY, kind, result_sqlstate(r),
                                 "%s failed (backend pid %d): %s", what, PQbackendPID(conn),
                                 msg),
                 err);
}

typedef struct one_query {
    const char *sql;
    int nparams;
    const char *const *params;
    PGresult *result;
} one_query;

static int run_query(cpool_conn *lease, void *arg, cpool_error *err)
{
    one_query *q = arg;
    PGconn *conn = cpool_conn_native(lease);
    PGresult *r = PQexecParams(conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        q->result = r;
        return 0;
    }
    int rc = cpool_pg_error(conn, r, err);
    PQclear(r);
    return rc;
}

PGresult *cpool_pg_query(cpool *pool, const cpool_run_opts *o, const char *sql, int nparams,
                         const char *const *params, cpool_error *err)
{
    if (pool == NULL || sql == NULL || nparams < 0 || (nparams > 0 && params == NULL)) {
        cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                        "pg_query: a pool, a statement and its parameters are required");
        return NULL;
    }
    one_query q = {sql, nparams, params, NULL};
    if (cpool_run(pool, o, run_query, &q, err) != 0 && q.result != NULL) {
        PQclear(q.result); /* the check-in failed after the statement ran */
        q.result = NULL;
    }
    return q.result;
}

int cpool_pg_error(PGconn *conn, const PGresult *res, cpool_error *err)
{
    if (conn == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "pg_error: no connection");
    return cmd_error(conn, "query", res, err);
}

/* Runs a utility command; 0 or CPOOL_EIO with err filled. */
static int simple(PGconn *conn, const char *sql, const char *what, cpool_error *err)
{
    PGresult *r = PQexec(conn, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : cmd_error(conn, what, r, err);
    PQclear(r);
    return rc;
}

static const char *txn_status_text(PGTransactionStatusType s)
{
    switch (s) {
    case PQTRANS_IDLE: return "idle";
    case PQTRANS_ACTIVE: return "a query is in progress";
    case PQTRANS_INTRANS: return "already in a transaction";
    case PQTRANS_INERROR: return "already in a failed transaction";
    default: return "the connection is broken";
    }
}

/* fn's failure, reported with its own error when it gave one. */
static int fn_failed(int rc, const cpool_error *fe, const char *where, cpool_error *err)
{
    if (err == NULL)
        return rc;
    if (fe->code != 0 || fe->message[0] != '\0') {
        *err = *fe;
        if (err->code == 0)
            err->code = rc < 0 ? rc : CPOOL_EINVAL;
    } else {
        cpool_error_set(err, rc < 0 ? rc : CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER,
                        0, "%s: the function failed with %d; rolled back", where, rc);
    }
    return rc;
}

int cpool_pg_transaction(cpool_conn *lease, cpool_pg_fn fn, void *arg, cpool_error *err)
{
    PGconn *conn = cpool_pg_conn(lease);
    if (conn == NULL || fn == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_transaction: lease and fn are required");
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts != PQTRANS_IDLE)
        return cpool_error_set(err, ts == PQTRANS_UNKNOWN ? CPOOL_EIO : CPOOL_ESTATE,
                               CPOOL_PHASE_QUERY,
                               ts == PQTRANS_UNKNOWN ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_transaction: cannot BEGIN: %s", txn_status_text(ts));
    int rc = simple(conn, "BEGIN", "BEGIN", err);
    if (rc != 0)
        return rc;
    cpool_error fe;
    memset(&fe, 0, sizeof fe);
    rc = fn(conn, arg, &fe);
    ts = PQtransactionStatus(conn);
    if (rc != 0) {
        if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
            (void)simple(conn, "ROLLBACK", "ROLLBACK", &(cpool_error){0});
        return fn_failed(rc, &fe, "cpool_pg_transaction", err);
    }
    if (ts == PQTRANS_INERROR) {
        (void)simple(conn, "ROLLBACK", "ROLLBACK", &(cpool_error){0});
        return cpool_error_set(err, CPOOL_ESTATE, CPOOL_PHASE_QUERY, CPOOL_FAIL_SERVER, 0,
                               "cpool_pg_transaction: a statement failed inside the "
                               "transaction although the function returned 0; rolled back");
    }
    if (ts != PQTRANS_INTRANS)
        return cpool_error_set(err, ts == PQTRANS_UNKNOWN ? CPOOL_EIO : CPOOL_ESTATE,
                               CPOOL_PHASE_QUERY,
                               ts == PQTRANS_UNKNOWN ? CPOOL_FAIL_NETWORK : CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_transaction: the function left the transaction "
                               "(%s); nothing committed here",
                               txn_status_text(ts));
    PGresult *r = PQexec(conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = cmd_error(conn, "COMMIT", r, err);
        PQclear(r);
        ts = PQtransactionStatus(conn);
        if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
            (void)simple(conn, "ROLLBACK", "ROLLBACK", &(cpool_error){0});
        return rc;
    }
    PQclear(r);
    return 0;
}

int cpool_pg_savepoint(PGconn *conn, const char *name, cpool_pg_fn fn, void *arg,
                       cpool_error *err)
{
    if (conn == NULL || fn == NULL || name == NULL || name[0] == '\0' || strlen(name) > 63)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_savepoint: conn, fn and a name of 1..63 bytes are "
                               "required");
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts != PQTRANS_INTRANS)
        return cpool_error_set(err, CPOOL_ESTATE, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_savepoint \"%s\": needs an open, healthy transaction "
                               "(%s)",
                               name, ts == PQTRANS_IDLE ? "none is open" : txn_status_text(ts));
    char *q = PQescapeIdentifier(conn, name, strlen(name));
    if (q == NULL) {
        char msg[160];
        one_line(PQerrorMessage(conn), msg, sizeof msg);
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, 0,
                               "cpool_pg_savepoint: cannot quote the name: %s", msg);
    }
    size_t qlen = strlen(q);
    char *sql = malloc(qlen + 32);
    if (sql == NULL) {
        PQfreemem(q);
        return cpool_error_set(err, CPOOL_ENOMEM, CPOOL_PHASE_QUERY, CPOOL_FAIL_OTHER, ENOMEM,
                               "cpool_pg_savepoint: out of memory");
    }
    int rc;
    snprintf(sql, qlen + 32, "SAVEPOINT %s", q);
    if ((rc = simple(conn, sql, "SAVEPOINT", err)) != 0)
        goto out;
    cpool_error fe;
    memset(&fe, 0, sizeof fe);
    rc = fn(conn, arg, &fe);
    ts = PQtransactionStatus(conn);
    if (rc == 0 && ts == PQTRANS_INTRANS) {
        snprintf(sql, qlen + 32, "RELEASE SAVEPOINT %s", q);
        rc = simple(conn, sql, "RELEASE SAVEPOINT", err);
        goto out;
    }
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        snprintf(sql, qlen + 32, "ROLLBACK TO SAVEPOINT %s", q);
        cpool_error ignored;
        if (simple(conn, sql, "ROLLBACK TO SAVEPOINT", &ignored) == 0) {
            snprintf(sql, qlen + 32, "RELEASE SAVEPOINT %s", q);
            (void)simple(conn, sql, "RELEASE SAVEPOINT", &ignored);
        }
    }
    if (rc != 0)
        rc = fn_failed(rc, &fe, "cpool_pg_savepoint", err);
    else
        rc = cpool_error_set(err, ts == PQTRANS_INERROR ? CPOOL_ESTATE : CPOOL_EIO,
                             CPOOL_PHASE_QUERY,
                             ts == PQTRANS_INERROR ? CPOOL_FAIL_SERVER : CPOOL_FAIL_NETWORK, 0,
                             "cpool_pg_savepoint \"%s\": %s", name,
                             ts == PQTRANS_INERROR
                                 ? "a statement failed although the function returned 0; "
                                   "rolled back to the savepoint"
                                 : "the function left the transaction");
out:
    free(sql);
    PQfreemem(q);
    return rc;
}
