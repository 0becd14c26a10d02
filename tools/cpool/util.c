/* util.c -- messages, parsing, time and JSON for the cpool commands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

const char cli_exit_codes_help[] =
    "Exit codes:\n"
    "  0    success\n"
    "  1    ran, but failed: bench errors above --max-error-rate, metrics could\n"
    "       not listen, a report file could not be written\n"
    "  2    usage error: bad command line, option value or target\n"
    "  3    could not connect (refused, unreachable, reset)\n"
    "  4    connecting timed out\n"
    "  5    the host name did not resolve\n"
    "  6    TLS or certificate failure\n"
    "  7    authentication failed\n"
    "  8    the server answered with an error (too many clients, no such database)\n"
    "  130  interrupted (SIGINT) while connecting\n";

/* ------------------------------------------------------------ messages */

/* Library and driver messages sometimes end in a newline or hold one
 * (libpq's do); an error must stay on one line so scripts can read it. */
static void one_line(char *s)
{
    for (char *p = s; *p != '\0'; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == ' ')
        s[--n] = '\0';
}

/* ------------------------------------------------------------ secrets
 * Connectors redact targets in their messages; the tool also scrubs every
 * line it prints of the passwords of the target it was given, so that a
 * message quoting a driver's text verbatim cannot leak one either. */

#define MAX_SECRETS 4
static char g_secrets[MAX_SECRETS][256];
static int g_nsecrets;

static void add_secret(const char *s, size_t n)
{
    /* Shorter strings would blank out ordinary text. */
    if (n < 3 || n >= sizeof g_secrets[0] || g_nsecrets == MAX_SECRETS)
        return;
    memcpy(g_secrets[g_nsecrets], s, n);
    g_secrets[g_nsecrets][n] = '\0';
    g_nsecrets++;
    char dec[256];
    int d = cpool_uri_decode(s, n, dec, sizeof dec);
    if (d > 0 && (size_t)d != n && g_nsecrets < MAX_SECRETS)
        add_secret(dec, (size_t)d);
}

void cli_secrets_from(const char *target)
{
    if (target == NULL)
        return;
    const char *scheme = strstr(target, "://");
    if (scheme != NULL) {
        const char *auth = scheme + 3;
        size_t alen = strcspn(auth, "/?#");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (auth[i] == '@')
                at = auth + i;
        const char *colon = at != NULL ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon != NULL)
            add_secret(colon + 1, (size_t)(at - colon - 1));
    }
    for (const char *p = strstr(target, "password"); p != NULL; p = strstr(p + 8, "password")) {
        const char *v = p + 8;
        while (*v == ' ')
            v++;
        if (*v != '=')
            continue;
        v++;
        while (*v == ' ')
            v++;
        if (*v == '\'') {
            const char *e = strchr(v + 1, '\'');
            if (e != NULL)
                add_secret(v + 1, (size_t)(e - v - 1));
        } else {
            add_secret(v, strcspn(v, scheme != NULL ? "&#" : " \t&#"));
        }
    }
}

void cli_scrub(char *s, size_t size)
{
    for (int i = 0; i < g_nsecrets; i++) {
        size_t n = strlen(g_secrets[i]);
        char *p, *from = s;
        /* n >= 3, so the text never grows; the search resumes after each
         * replacement, so a password containing "***" cannot loop. */
        (void)size;
        while ((p = strstr(from, g_secrets[i])) != NULL) {
            memmove(p + 3, p + n, strlen(p + n) + 1);
            memcpy(p, "***", 3);
            from = p + 3;
        }
    }
}

static void verror(const char *cmd, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    one_line(msg);
    cli_scrub(msg, sizeof msg);
    fflush(stdout);
    if (cmd != NULL)
        fprintf(stderr, "cpool: %s: %s\n", cmd, msg);
    else
        fprintf(stderr, "cpool: %s\n", msg);
    fflush(stderr);
}

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(cmd, fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(cmd, fmt, ap);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_getopt_error(const char *cmd, char **argv, int optind_now, int optopt_now, int ret)
{
    const char *arg = optind_now > 0 ? argv[optind_now - 1] : "";
    if (ret == ':') {
        /* argv[optind - 1] is the option itself (getopt stepped past it). */
        if (arg[0] == '-' && arg[1] != '-' && optopt_now > 0 && optopt_now < 128)
            return cli_usage_error(cmd, "option -%c needs a value (see cpool %s --help)",
                                   optopt_now, cmd);
        return cli_usage_error(cmd, "option %s needs a value (see cpool %s --help)", arg, cmd);
    }
    if (optopt_now > 0 && optopt_now < 128)
        return cli_usage_error(cmd, "unknown option -%c (see cpool %s --help)", optopt_now, cmd);
    return cli_usage_error(cmd, "unknown option %s (see cpool %s --help)", arg, cmd);
}

void cli_redact(const char *target, char *buf, size_t size)
{
    if (size == 0)
        return;
    if (target == NULL) {
        snprintf(buf, size, "(none)");
        return;
    }
    /* cpool_redact cuts a long target; "..." says so. */
    size_t need = cpool_redact(target, buf, size);
    if (need >= size && size > 4)
        memcpy(buf + size - 4, "...", 4);
}

/* ------------------------------------------------------------ connectors */

void cli_connector_list(char *buf, size_t size)
{
    static const char *const samples[] = {"mem://x", "sqlite:x", "postgresql://x",
                                          "redis://x"};
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        const cpool_connector *cx = cpool_connector_for(samples[i]);
        if (cx == NULL)
            continue;
        int w = snprintf(buf + used, size - used, "%s%s", used > 0 ? ", " : "", cx->name);
        if (w < 0 || (size_t)w >= size - used)
            break;
        used += (size_t)w;
    }
}

const cpool_connector *cli_connector(const char *cmd, const char *target)
{
    const cpool_connector *cx = cpool_connector_for(target);
    if (cx == NULL) {
        /* Never the target itself: a misspelt scheme must not print the
         * password behind it. */
        char list[96];
        cli_connector_list(list, sizeof list);
        size_t n = strspn(target, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789+.-");
        if (n > 0 && n <= 32 && target[n] == ':')
            cli_error(cmd,
                      "no connector for the scheme \"%.*s\": expected sqlite:PATH, "
                      "postgresql://..., redis://... or mem://NAME (this build has: %s)",
                      (int)n + 1, target, list);
        else
            cli_error(cmd,
                      "no connector for this target (not shown): expected sqlite:PATH, "
                      "postgresql://..., redis://... or mem://NAME (this build has: %s)",
                      list);
    }
    return cx;
}

int cli_exit_for_failure(const cpool_error *e)
{
    if (e->code == CPOOL_EINVAL)
        return CLI_EXIT_USAGE;
    switch (e->kind) {
    case CPOOL_FAIL_TIMEOUT: return CLI_EXIT_TIMEOUT;
    case CPOOL_FAIL_DNS: return CLI_EXIT_DNS;
    case CPOOL_FAIL_CERTIFICATE: return CLI_EXIT_TLS;
    case CPOOL_FAIL_AUTH: return CLI_EXIT_AUTH;
    case CPOOL_FAIL_SERVER:
    case CPOOL_FAIL_CAPACITY: return CLI_EXIT_SERVER;
    case CPOOL_FAIL_INTERRUPTED: return CLI_EXIT_INTERRUPTED;
    case CPOOL_FAIL_NETWORK:
    case CPOOL_FAIL_OTHER:
    default:
        break;
    }
    if (e->phase == CPOOL_PHASE_DNS)
        return CLI_EXIT_DNS;
    if (e->phase == CPOOL_PHASE_TLS)
        return CLI_EXIT_TLS;
    return CLI_EXIT_CONNECT;
}

static bool mentions(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = text; *p != '\0'; p++)
        if (strncasecmp(p, word, n) == 0)
            return true;
    return false;
}

void cli_explain_failure(const cpool_error *e, const char *address, char *buf, size_t size)
{
    const char *at = address != NULL && address[0] != '\0' ? address : "the address in the target";
    if (e->code == CPOOL_EINVAL) {
        snprintf(buf, size, "the target or an option is invalid");
        return;
    }
    switch (e->kind) {
    case CPOOL_FAIL_DNS:
        snprintf(buf, size,
                 "the host name could not be resolved — check its spelling and the DNS "
                 "configuration (/etc/resolv.conf, /etc/hosts)");
        return;
    case CPOOL_FAIL_CERTIFICATE:
        snprintf(buf, size,
                 "the server's TLS certificate was rejected — check the CA file, and that the "
                 "certificate was issued for the host name in the target");
        return;
    case CPOOL_FAIL_AUTH:
        snprintf(buf, size, "authentication failed — check the user and password (and that "
                            "the server allows this user from this host)");
        return;
    case CPOOL_FAIL_SERVER:
        snprintf(buf, size,
                 "the server answered with an error — it is running, but refused this "
                 "connection (too many clients, unknown database, starting up...)");
        return;
    case CPOOL_FAIL_INTERRUPTED:
        snprintf(buf, size, "interrupted before the connection was established");
        return;
    case CPOOL_FAIL_CAPACITY:
        snprintf(buf, size,
                 "the server has no free connection slot (too many clients) — other "
                 "clients hold them all; raise the server's limit (PostgreSQL "
                 "max_connections, Redis maxclients) or use fewer connections");
        return;
    case CPOOL_FAIL_TIMEOUT:
        switch (e->phase) {
        case CPOOL_PHASE_DNS:
            snprintf(buf, size, "timed out resolving the host name — the DNS server did not "
                                "answer");
            return;
        case CPOOL_PHASE_CONNECT:
            snprintf(buf, size,
                     "timed out connecting to %s — the host is down, or a firewall drops "
                     "the packets",
                     at);
            return;
        case CPOOL_PHASE_TLS:
            snprintf(buf, size, "timed out in the TLS handshake with %s", at);
            return;
        case CPOOL_PHASE_AUTH:
            snprintf(buf, size, "timed out during authentication with %s", at);
            return;
        default:
            snprintf(buf, size,
                     "timed out in the handshake — the server at %s accepted the TCP "
                     "connection but did not answer (stopped, overloaded, or not this kind "
                     "of server)",
                     at);
            return;
        }
    case CPOOL_FAIL_NETWORK:
        if (e->phase == CPOOL_PHASE_DNS) {
            snprintf(buf, size, "the host name could not be resolved — check the network "
                                "and the DNS configuration");
            return;
        }
        if (e->native == ECONNREFUSED || mentions(e->message, "refused")) {
            snprintf(buf, size,
                     "the server refused the connection — is it running and listening on "
                     "%s?",
                     at);
            return;
        }
        if (e->phase == CPOOL_PHASE_CONNECT) {
            snprintf(buf, size,
                     "could not reach %s — check the host, the port and the network (route, "
                     "firewall)",
                     at);
            return;
        }
        snprintf(buf, size,
                 "the server at %s closed the connection during the %s — is it the right "
                 "port for this kind of server, and is it accepting connections?",
                 at, e->phase == CPOOL_PHASE_TLS ? "TLS handshake" : "handshake");
        return;
    case CPOOL_FAIL_OTHER:
    default:
        snprintf(buf, size, "the connection to %s could not be established", at);
        return;
    }
}

/* ------------------------------------------------------------ parsing */

bool cli_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (s == NULL || *s == '\0')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int cli_parse_fraction(const char *s, double *out)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    size_t n = strlen(buf);
    double scale = 1;
    if (n > 0 && buf[n - 1] == '%') {
        buf[n - 1] = '\0';
        scale = 100;
    }
    if (!cli_parse_double(buf, 0, scale, out))
        return -1;
    *out /= scale;
    return 0;
}

bool cli_is_multi_host(const char *target)
{
    const char *sep = strstr(target, "://");
    if (sep != NULL) {
        const char *auth = sep + 3;
        size_t n = strcspn(auth, "/?");
        const char *at = NULL;
        for (size_t i = 0; i < n; i++)
            if (auth[i] == '@')
                at = auth + i;
        const char *hosts = at != NULL ? at + 1 : auth;
        return memchr(hosts, ',', (size_t)(auth + n - hosts)) != NULL;
    }
    /* a conninfo: host= or hostaddr= with a comma in its value */
    for (const char *p = target; (p = strstr(p, "host")) != NULL; p++) {
        if (p != target && p[-1] != ' ' && p[-1] != '\t')
            continue;
        const char *q = p + 4;
        if (strncmp(q, "addr", 4) == 0)
            q += 4;
        while (*q == ' ')
            q++;
        if (*q != '=')
            continue;
        q++;
        while (*q == ' ')
            q++;
        size_t len = *q == '\'' ? strcspn(q + 1, "'") + 1 : strcspn(q, " \t");
        if (memchr(q, ',', len) != NULL)
            return true;
    }
    return false;
}

bool cli_parse_double(const char *s, double min, double max, double *out)
{
    if (s == NULL || *s == '\0')
        return false;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* ------------------------------------------------------------ time */

int64_t cli_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cli_sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void cli_utc_now(char *buf, size_t size)
{
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, size, "unknown");
}

void cli_fmt_duration(int64_t ns, char *buf, size_t size)
{
    static const struct {
        double div;
        const char *unit;
    } units[] = {{1e3, "us"}, {1e6, "ms"}, {1e9, "s"}};
    if (ns < 1000) {
        snprintf(buf, size, "%lld ns", (long long)(ns < 0 ? 0 : ns));
        return;
    }
    int u = ns < 1000000 ? 0 : ns < 1000000000 ? 1 : 2;
    double v = (double)ns / units[u].div;
    int prec = v < 10 ? 2 : v < 100 ? 1 : 0;
    snprintf(buf, size, "%.*f %s", prec, v, units[u].unit);
}

/* ------------------------------------------------------------ JSON */

/* Length of the valid UTF-8 sequence at s, 0 when it is not one. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x3F >> (n - 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

void json_write_string(FILE *f, const char *s)
{
    fputc('"', f);
    const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
    while (*p != '\0') {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc((int)c, f);
            p++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': fputs("\\n", f); break;
            case '\r': fputs("\\r", f); break;
            case '\t': fputs("\\t", f); break;
            case '\b': fputs("\\b", f); break;
            case '\f': fputs("\\f", f); break;
            default: fprintf(f, "\\u%04x", c); break;
            }
            p++;
        } else if (c < 0x80) {
            fputc((int)c, f);
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n == 0) {
                fputs("\\ufffd", f);
                p++;
            } else {
                fwrite(p, 1, n, f);
                p += n;
            }
        }
    }
    fputc('"', f);
}

static void indent(json_w *j)
{
    if (!j->pretty)
        return;
    fputc('\n', j->f);
    for (int i = 0; i < j->depth; i++)
        fputs("  ", j->f);
}

static void member(json_w *j, const char *key)
{
    if (j->depth > 0) {
        if (!j->first[j->depth])
            fputc(',', j->f);
        indent(j);
    }
    j->first[j->depth] = false;
    if (key != NULL) {
        json_write_string(j->f, key);
        fputs(j->pretty ? ": " : ":", j->f);
    }
}

void json_begin(json_w *j, FILE *f, bool pretty)
{
    memset(j, 0, sizeof *j);
    j->f = f;
    j->pretty = pretty;
    j->first[0] = true;
}

static void open_c(json_w *j, const char *key, char c)
{
    member(j, key);
    fputc(c, j->f);
    if (j->depth < (int)(sizeof j->first / sizeof j->first[0]) - 1)
        j->depth++;
    j->first[j->depth] = true;
}

static void close_c(json_w *j, char c)
{
    bool empty = j->first[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (!empty)
        indent(j);
    fputc(c, j->f);
    if (j->depth == 0)
        fputc('\n', j->f);
}

void json_obj(json_w *j, const char *key) { open_c(j, key, '{'); }
void json_arr(json_w *j, const char *key) { open_c(j, key, '['); }
void json_end_obj(json_w *j) { close_c(j, '}'); }
void json_end_arr(json_w *j) { close_c(j, ']'); }

void json_str(json_w *j, const char *key, const char *v)
{
    member(j, key);
    if (v == NULL)
        fputs("null", j->f);
    else
        json_write_string(j->f, v);
}

void json_int(json_w *j, const char *key, int64_t v)
{
    member(j, key);
    fprintf(j->f, "%lld", (long long)v);
}

void json_uint(json_w *j, const char *key, uint64_t v)
{
    member(j, key);
    fprintf(j->f, "%llu", (unsigned long long)v);
}

void json_num(json_w *j, const char *key, double v)
{
    member(j, key);
    if (!isfinite(v))
        fputs("null", j->f);
    else if (v == floor(v) && fabs(v) < 1e15)
        fprintf(j->f, "%.0f", v);
    else
        fprintf(j->f, "%.10g", v);
}

void json_bool(json_w *j, const char *key, bool v)
{
    member(j, key);
    fputs(v ? "true" : "false", j->f);
}
