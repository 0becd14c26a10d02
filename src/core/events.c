/* events.c -- event delivery, the CMAP log messages and the JSON sink.
 *
 * Each event is delivered to the subscriber and, as a structured record, to
 * the log sink, in one global order (see pool_int.h on ev_mu). The log
 * messages and their field names are the CMAP specification's, word for
 * word, because log consumers match on them. */
#include "pool_int.h"
#include "clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Wall-clock time for log lines: people read it, so it is the real time of
 * day, not the pool's (possibly fake) monotonic clock. */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *const event_names[CPOOL_EV_COUNT_] = {
    [CPOOL_EV_POOL_CREATED] = "ConnectionPoolCreated",
    [CPOOL_EV_POOL_READY] = "ConnectionPoolReady",
    [CPOOL_EV_POOL_CLEARED] = "ConnectionPoolCleared",
    [CPOOL_EV_POOL_CLOSED] = "ConnectionPoolClosed",
    [CPOOL_EV_CONN_CREATED] = "ConnectionCreated",
    [CPOOL_EV_CONN_READY] = "ConnectionReady",
    [CPOOL_EV_CONN_CLOSED] = "ConnectionClosed",
    [CPOOL_EV_CHECKOUT_STARTED] = "ConnectionCheckOutStarted",
    [CPOOL_EV_CHECKOUT_FAILED] = "ConnectionCheckOutFailed",
    [CPOOL_EV_CHECKED_OUT] = "ConnectionCheckedOut",
    [CPOOL_EV_CHECKED_IN] = "ConnectionCheckedIn",
    [CPOOL_EV_CONN_LEAK_SUSPECTED] = "ConnectionLeakSuspected",
    [CPOOL_EV_POOL_RECYCLED] = "ConnectionPoolRecycled",
    [CPOOL_EV_BACKOFF_STARTED] = "ConnectionPoolBackoffStarted",
    [CPOOL_EV_BREAKER_OPENED] = "ConnectionPoolBreakerOpened",
    [CPOOL_EV_BREAKER_CLOSED] = "ConnectionPoolBreakerClosed",
};

const char *cpool_event_name(cpool_event_type type)
{
    if ((unsigned)type >= CPOOL_EV_COUNT_)
        return "Unknown";
    return event_names[type];
}

const char *cpool_close_reason_name(int reason)
{
    switch (reason) {
    case CPOOL_CLOSE_STALE: return "stale";
    case CPOOL_CLOSE_IDLE: return "idle";
    case CPOOL_CLOSE_ERROR: return "error";
    case CPOOL_CLOSE_POOL_CLOSED: return "poolClosed";
    case CPOOL_CLOSE_LIFETIME: return "lifetime";
    case CPOOL_CLOSE_USES: return "uses";
    case CPOOL_CLOSE_RECLAIMED: return "reclaimed";
    case CPOOL_CLOSE_SESSION: return "session";
    case CPOOL_CLOSE_RECYCLED: return "recycled";
    case CPOOL_CLOSE_RESIZED: return "resized";
    case CPOOL_CLOSE_HOOK: return "hook";
    default: return "unknown";
    }
}

const char *cpool_checkout_failure_name(int reason)
{
    switch (reason) {
    case CPOOL_CHECKOUT_POOL_CLOSED: return "poolClosed";
    case CPOOL_CHECKOUT_TIMEOUT: return "timeout";
    case CPOOL_CHECKOUT_CONN_ERROR: return "connectionError";
    default: return "unknown";
    }
}

/* The "reason" strings of the CMAP log messages. */
static const char *close_reason_text(int reason)
{
    switch (reason) {
    case CPOOL_CLOSE_STALE: return "Connection became stale because the pool was cleared";
    case CPOOL_CLOSE_IDLE:
        return "Connection has been available but unused for longer than the "
               "configured max idle time";
    case CPOOL_CLOSE_ERROR: return "An error occurred while using the connection";
    case CPOOL_CLOSE_LIFETIME:
        return "Connection was open for longer than the configured max lifetime";
    case CPOOL_CLOSE_USES:
        return "Connection was leased the configured number of times and is recycled";
    case CPOOL_CLOSE_RECLAIMED:
        return "Connection was held longer than the leak reclaim time and was taken back";
    case CPOOL_CLOSE_SESSION:
        return "Connection was about to serve another tenant and its session cannot be reset";
    case CPOOL_CLOSE_RECYCLED: return "Connection was marked for recycling";
    case CPOOL_CLOSE_RESIZED:
        return "Connection was beyond the pool's maximum size after a resize";
    case CPOOL_CLOSE_HOOK: return "A hook of the application failed on the connection";
    default: return "Connection pool was closed";
    }
}

static const char *checkout_failure_text(int reason)
{
    switch (reason) {
    case CPOOL_CHECKOUT_TIMEOUT:
        return "Wait queue timeout elapsed without a connection becoming available";
    case CPOOL_CHECKOUT_CONN_ERROR:
        return "An error occurred while trying to establish a new connection";
    default: return "Connection pool was closed";
    }
}

static const char *const log_messages[CPOOL_EV_COUNT_] = {
    [CPOOL_EV_POOL_CREATED] = "Connection pool created",
    [CPOOL_EV_POOL_READY] = "Connection pool ready",
    [CPOOL_EV_POOL_CLEARED] = "Connection pool cleared",
    [CPOOL_EV_POOL_CLOSED] = "Connection pool closed",
    [CPOOL_EV_CONN_CREATED] = "Connection created",
    [CPOOL_EV_CONN_READY] = "Connection ready",
    [CPOOL_EV_CONN_CLOSED] = "Connection closed",
    [CPOOL_EV_CHECKOUT_STARTED] = "Connection checkout started",
    [CPOOL_EV_CHECKOUT_FAILED] = "Connection checkout failed",
    [CPOOL_EV_CHECKED_OUT] = "Connection checked out",
    [CPOOL_EV_CHECKED_IN] = "Connection checked in",
    [CPOOL_EV_CONN_LEAK_SUSPECTED] = "Connection held longer than the leak threshold",
    [CPOOL_EV_POOL_RECYCLED] = "Connection pool recycle requested",
    [CPOOL_EV_BACKOFF_STARTED] = "Connection pool backing off after an establishment failure",
    [CPOOL_EV_BREAKER_OPENED] = "Connection pool circuit breaker opened",
    [CPOOL_EV_BREAKER_CLOSED] = "Connection pool circuit breaker closed",
};

int64_t cpool__now(const cpool *p)
{
    if (p->opts.clock != NULL)
        return p->opts.clock->now_ns(p->opts.clock->ctx);
    return cpool__mono_ns();
}

/* A clock read costs ~25 ns here, as much as the rest of a lock-free
 * checkout; checks measured in minutes (max lifetime) use the kernel's
 * coarse clock (a few ns, a few ms resolution) on the lock-free path. */
int64_t cpool__now_coarse(const cpool *p)
{
    if (p->opts.clock != NULL)
        return p->opts.clock->now_ns(p->opts.clock->ctx);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cpool__event_init(const cpool *p, cpool_event *ev, cpool_event_type type)
{
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    ev->address = p->address;
    ev->duration_ns = -1;
    ev->time_ns = cpool__now(p);
}

typedef struct field_buf {
    cpool_log_field f[16];
    size_t n;
} field_buf;

static void add_str(field_buf *b, const char *key, const char *s)
{
    b->f[b->n++] = (cpool_log_field){.key = key, .type = CPOOL_LOG_STR, .s = s};
}

static void add_int(field_buf *b, const char *key, int64_t i)
{
    b->f[b->n++] = (cpool_log_field){.key = key, .type = CPOOL_LOG_INT, .i = i};
}

static void add_ms(field_buf *b, int64_t ns)
{
    b->f[b->n++] = (cpool_log_field){
        .key = "durationMS", .type = CPOOL_LOG_DOUBLE, .d = (double)ns / 1e6};
}

static const char *phase_name(cpool_phase phase)
{
    static const char *const names[] = {"none", "dns", "connect", "tls",
                                        "handshake", "auth", "query"};
    return (unsigned)phase < sizeof names / sizeof *names ? names[phase] : "unknown";
}

/* The log's "error" keeps everything the error carries (CMAP: no loss of
 * information): message, code, native code, phase and labels. */
static const char *describe_error(const cpool_error *err, char *buf, size_t size)
{
    char labels[64] = "";
    for (unsigned bit = 1; bit <= CPOOL_LABEL_RETRYABLE; bit <<= 1)
        if ((err->labels & bit) && cpool_label_name(bit) != NULL)
            snprintf(labels + strlen(labels), sizeof labels - strlen(labels), "%s%s",
                     labels[0] ? "," : "", cpool_label_name(bit));
    snprintf(buf, size, "%s (%s, native %d, phase %s%s%s)", err->message,
             cpool_err_name(err->code), err->native, phase_name(err->phase),
             labels[0] ? ", labels " : "", labels);
    return buf;
}

/* The CMAP messages are DEBUG. What an operator must see is a WARN: a
 * suspected leak, a backoff step, the circuit opening; the circuit closing
 * and a recycle are INFO. */
static cpool_log_level event_level(cpool_event_type type)
{
    switch (type) {
    case CPOOL_EV_CONN_LEAK_SUSPECTED:
    case CPOOL_EV_BACKOFF_STARTED:
    case CPOOL_EV_BREAKER_OPENED: return CPOOL_LOG_WARN;
    case CPOOL_EV_POOL_RECYCLED:
    case CPOOL_EV_BREAKER_CLOSED: return CPOOL_LOG_INFO;
    default: return CPOOL_LOG_DEBUG;
    }
}

static void log_event(cpool *p, const cpool_event *ev)
{
    field_buf b = {.n = 0};
    char errbuf[sizeof ev->error->message + 128];
    const cpool_options *o = &p->opts;
    add_str(&b, "serverHost", p->host);
    if (p->port >= 0)
        add_int(&b, "serverPort", p->port);
    if (ev->connection_id != 0)
        add_int(&b, "driverConnectionId", (int64_t)ev->connection_id);
    switch (ev->type) {
    case CPOOL_EV_POOL_CREATED:
        if (p->options_set & CPOOL_OPT_MAX_IDLE_TIME_MS)
            add_int(&b, "maxIdleTimeMS", o->max_idle_time_ms);
        if (p->options_set & CPOOL_OPT_MIN_POOL_SIZE)
            add_int(&b, "minPoolSize", o->min_pool_size);
        if (p->options_set & CPOOL_OPT_MAX_POOL_SIZE)
            add_int(&b, "maxPoolSize", o->max_pool_size);
        if (p->options_set & CPOOL_OPT_MAX_CONNECTING)
            add_int(&b, "maxConnecting", o->max_connecting);
        if (p->options_set & CPOOL_OPT_WAIT_QUEUE_TIMEOUT_MS)
            add_int(&b, "waitQueueTimeoutMS", o->wait_queue_timeout_ms);
        break;
    case CPOOL_EV_POOL_CLEARED:
        if (ev->service_id != NULL)
            add_str(&b, "serviceId", ev->service_id);
        break;
    case CPOOL_EV_CONN_READY:
    case CPOOL_EV_CHECKED_OUT:
        add_ms(&b, ev->duration_ns);
        break;
    case CPOOL_EV_CONN_CLOSED:
        add_str(&b, "reason", close_reason_text(ev->reason));
        if ((ev->reason == CPOOL_CLOSE_ERROR || ev->reason == CPOOL_CLOSE_HOOK) &&
            ev->error != NULL)
            add_str(&b, "error", describe_error(ev->error, errbuf, sizeof errbuf));
        break;
    case CPOOL_EV_CHECKOUT_FAILED:
        add_str(&b, "reason", checkout_failure_text(ev->reason));
        if (ev->reason == CPOOL_CHECKOUT_CONN_ERROR && ev->error != NULL)
            add_str(&b, "error", describe_error(ev->error, errbuf, sizeof errbuf));
        add_ms(&b, ev->duration_ns);
        break;
    case CPOOL_EV_CONN_LEAK_SUSPECTED:
        add_ms(&b, ev->duration_ns);
        add_int(&b, "holderThread", (int64_t)ev->holder_thread);
        if (ev->holder_label != NULL && ev->holder_label[0] != '\0')
            add_str(&b, "holderLabel", ev->holder_label);
        if (ev->tenant != NULL)
            add_str(&b, "tenant", ev->tenant);
        if (ev->over_tenant_limit)
            add_str(&b, "limit", "tenant max_hold_ms");
        break;
    case CPOOL_EV_POOL_RECYCLED:
        add_int(&b, "connections", ev->connections);
        break;
    case CPOOL_EV_BACKOFF_STARTED:
    case CPOOL_EV_BREAKER_OPENED:
        add_int(&b, "failures", ev->failures);
        if (ev->type == CPOOL_EV_BACKOFF_STARTED)
            add_ms(&b, ev->duration_ns);
        if (ev->error != NULL)
            add_str(&b, "error", describe_error(ev->error, errbuf, sizeof errbuf));
        break;
    case CPOOL_EV_BREAKER_CLOSED:
        add_int(&b, "failures", ev->failures);
        break;
    default:
        break;
    }
    cpool_log_record rec = {
        .level = event_level(ev->type),
        .component = "connection",
        .message = log_messages[ev->type],
        .fields = b.f,
        .nfields = b.n,
        .pool = p->name,
        .time_ms = wall_ms(),
    };
    p->opts.on_log(&rec, p->opts.log_ctx);
}

/* The pool whose callbacks this thread is running, if any. */
static _Thread_local const cpool *tl_delivering;

bool cpool__in_callback(const cpool *p)
{
    return tl_delivering == p;
}

int cpool__callback_err(const cpool *p, cpool_error *err, const char *what)
{
    return cpool__err(err, CPOOL_ESTATE,
                      "%s on %s: called from the pool's own event or log callback, where it "
                      "would deadlock; call it from another thread",
                      what, p->address);
}

void cpool__env_warn(cpool *p)
{
    char buf[2048];
    if (cpool_env_warnings(buf, sizeof buf) == 0)
        return;
    if (p->opts.on_log == NULL) {
        /* A misspelt variable is a setting that silently does nothing:
         * worth one line where nobody asked for logs. */
        static atomic_bool said;
        char *save = NULL;
        if (!atomic_exchange(&said, true))
            for (char *line = strtok_r(buf, "\n", &save); line != NULL;
                 line = strtok_r(NULL, "\n", &save))
                fprintf(stderr, "cpool: warning: %s\n", line);
        return;
    }
    if (p->opts.log_level < CPOOL_LOG_WARN)
        return;
    const cpool *outer = tl_delivering;
    tl_delivering = p;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        cpool_log_record rec = {
            .level = CPOOL_LOG_WARN,
            .component = "pool",
            .message = line,
            .pool = p->name,
            .time_ms = wall_ms(),
        };
        pthread_mutex_lock(&p->ev_mu);
        p->opts.on_log(&rec, p->opts.log_ctx);
        pthread_mutex_unlock(&p->ev_mu);
    }
    tl_delivering = outer;
}

/* To the subscriber, then the log sink. Called with ev_mu held. */
static void deliver(cpool *p, const cpool_event *ev)
{
    const cpool *outer = tl_delivering;
    tl_delivering = p;
    if (p->opts.on_event != NULL)
        p->opts.on_event(ev, p->opts.event_ctx);
    if (p->opts.on_log != NULL && p->opts.log_level >= event_level(ev->type))
        log_event(p, ev);
    tl_delivering = outer;
}

#if CPOOL_LOCK_CHECKS
void cpool__lock_violation(const char *func, const char *file, int line)
{
    fprintf(stderr, "cpool: %s:%d: %s() needs the pool's lock, and this thread does not "
                    "hold it\n", file, line, func);
    abort();
}
#endif

void cpool__emit_unlock(cpool *p, const cpool_event *ev)
{
    CPOOL_ASSERT_HELD(p);
    if (!p->observed) {
        cpool__unlock(p);
        return;
    }
    pthread_mutex_lock(&p->ev_mu);
    cpool__unlock(p);
    deliver(p, ev);
    pthread_mutex_unlock(&p->ev_mu);
}

void cpool__emit_relock(cpool *p, const cpool_event *ev)
{
    if (!p->observed)
        return;
    cpool__emit_unlock(p, ev);
    cpool__lock(p);
}

/* ------------------------------------------------------------ JSON sink */


typedef struct out {
    char *buf;
    size_t size, len;
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->len < o->size) {
        size_t room = o->size - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

/* The length of the well-formed UTF-8 sequence at s (1..4), or 0 when the
 * bytes there are not one: a stray continuation byte, a truncated
 * sequence, an overlong form, a surrogate or a code point past U+10FFFF. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0; /* also stops at the terminating NUL */
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* A JSON string: quotes and backslashes escaped, control characters as
 * \u00XX, bytes that are not well-formed UTF-8 replaced by U+FFFD, so the
 * line is valid JSON whatever the record holds. NULL is written as "". */
static void put_str(out *o, const char *str)
{
    const unsigned char *s = (const unsigned char *)(str != NULL ? str : "");
    put(o, "\"", 1);
    while (*s != '\0') {
        unsigned char c = *s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(o, esc, 2);
            s++;
        } else if (c < 0x20 || c == 0x7F) {
            int n = snprintf(esc, sizeof esc, "\\u%04x", c);
            put(o, esc, (size_t)n);
            s++;
        } else if (c < 0x80) {
            put(o, (const char *)s, 1);
            s++;
        } else {
            size_t n = utf8_len(s);
            if (n == 0) {
                put(o, "\\ufffd", 6);
                s++;
            } else {
                put(o, (const char *)s, n);
                s += n;
            }
        }
    }
    put(o, "\"", 1);
}

/* A JSON number for d: fixed with milliseconds' precision in the usual
 * range, exponent form beyond it, null for NaN and the infinities (JSON
 * has no such numbers). Returns the length written into num. */
static size_t format_double(double d, char num[64])
{
    int n;
    if (!isfinite(d))
        n = snprintf(num, 64, "null");
    else if (d < 1e15 && d > -1e15)
        n = snprintf(num, 64, "%.3f", d);
    else
        n = snprintf(num, 64, "%.17g", d);
    return n < 0 ? 0 : (size_t)n < 64 ? (size_t)n : 63;
}

/* "2026-12-05T23:40:01.123Z": RFC 3339, UTC, milliseconds; 24 bytes (the
 * buffer has room for any int the compiler imagines). */
static void format_time(int64_t ms, char out_buf[80])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (ms < 0 || gmtime_r(&secs, &tm) == NULL || tm.tm_year + 1900 > 9999) {
        snprintf(out_buf, 80, "1970-01-01T00:00:00.000Z");
        return;
    }
    snprintf(out_buf, 80, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

size_t cpool_log_format_json(const cpool_log_record *rec, char *buf, size_t size)
{
    out o = {.buf = buf, .size = size, .len = 0};
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    char num[64];
    char when[80];
    format_time(rec->time_ms != 0 ? rec->time_ms : wall_ms(), when);
    put(&o, "{\"time\":", 8);
    put_str(&o, when);
    put(&o, ",\"level\":", 9);
    put_str(&o, levels[(unsigned)rec->level <= CPOOL_LOG_DEBUG ? rec->level : 3]);
    if (rec->pool != NULL) {
        put(&o, ",\"pool\":", 8);
        put_str(&o, rec->pool);
    }
    put(&o, ",\"component\":", 13);
    put_str(&o, rec->component);
    put(&o, ",\"message\":", 11);
    put_str(&o, rec->message);
    for (size_t i = 0; i < rec->nfields; i++) {
        const cpool_log_field *f = &rec->fields[i];
        put(&o, ",", 1);
        put_str(&o, f->key);
        put(&o, ":", 1);
        switch (f->type) {
        case CPOOL_LOG_STR: put_str(&o, f->s); break;
        case CPOOL_LOG_INT:
            put(&o, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)f->i));
            break;
        case CPOOL_LOG_DOUBLE: put(&o, num, format_double(f->d, num)); break;
        default: put(&o, "null", 4); break;
        }
    }
    put(&o, "}", 1);
    if (size > 0)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len;
}

void cpool_log_json(const cpool_log_record *rec, void *file)
{
    char small[1024];
    size_t n = cpool_log_format_json(rec, small, sizeof small);
    FILE *f = file != NULL ? (FILE *)file : stderr;
    if (n < sizeof small) {
        small[n] = '\n';
        fwrite(small, 1, n + 1, f);
    } else {
        char *big = malloc(n + 2);
        if (big == NULL)
            return; /* a log line is not worth failing the caller for */
        cpool_log_format_json(rec, big, n + 1);
        big[n] = '\n';
        fwrite(big, 1, n + 1, f);
        free(big);
    }
    fflush(f);
}
