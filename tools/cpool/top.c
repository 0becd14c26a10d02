/* top.c -- `cpool top URL`: reads a running service's /metrics (the
 * Prometheus text cpool writes) every interval and shows its pools -- state,
 * connections used and idle, waiting checkouts, the oldest wait, checkouts
 * and failures per second, the mean wait -- refreshed in place on a
 * terminal, one block per refresh otherwise. A small HTTP/1.1 client
 * (plain TCP, Content-Length, chunked or close-delimited bodies) and a
 * reader of the sample lines it needs; no other dependency. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#define CMD "top"
#define MAX_POOLS 32

static const char top_usage[] =
    "usage: cpool top URL [--interval-ms N] [--iterations N]\n"
    "\n"
    "Shows the pools a running service exposes at URL (http://HOST:PORT/PATH, the\n"
    "/metrics endpoint cpool_stats_prometheus or cpool_prometheus_pools feeds, or\n"
    "`cpool metrics`), refreshed every interval like top: state, connections used,\n"
    "idle and the maximum, checkouts waiting and the oldest wait (maxwait), checkouts\n"
    "and failed checkouts per second and the mean wait over the last interval.\n"
    "\n"
    "  -i, --interval-ms N  time between refreshes (default 1000, 100..3600000)\n"
    "  -n, --iterations N   stop after N refreshes (default: until SIGINT or q)\n"
    "  -h, --help           this text\n"
    "\n"
    "On a terminal the screen is redrawn in place; otherwise each refresh is a\n"
    "block of lines. Exit 0 after --iterations, q or SIGINT; 3 when the endpoint\n"
    "cannot be read at the first refresh (later failures are reported and retried).\n"
    "\n";

/* ------------------------------------------------------------ HTTP */

typedef struct url {
    char host[256], port[8], path[512];
} url;

static bool parse_url(const char *s, url *u)
{
    if (strncmp(s, "http://", 7) != 0)
        return false;
    s += 7;
    const char *slash = strchr(s, '/');
    size_t hp = slash != NULL ? (size_t)(slash - s) : strlen(s);
    snprintf(u->path, sizeof u->path, "%s", slash != NULL ? slash : "/metrics");
    char hostport[300];
    if (hp == 0 || hp >= sizeof hostport)
        return false;
    memcpy(hostport, s, hp);
    hostport[hp] = '\0';
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || strchr(colon, ']') != NULL) {
        snprintf(u->port, sizeof u->port, "80");
        colon = hostport + hp;
    } else {
        snprintf(u->port, sizeof u->port, "%.7s", colon + 1);
    }
    size_t hl = (size_t)(colon - hostport);
    const char *h = hostport;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof u->host)
        return false;
    memcpy(u->host, h, hl);
    u->host[hl] = '\0';
    return true;
}

/* Reads what is left of fd, bounded by the deadline (monotonic ns). */
static bool read_all(int fd, char **buf, size_t *len, int64_t deadline)
{
    size_t cap = 65536;
    *len = 0;
    *buf = malloc(cap + 1);
    if (*buf == NULL)
        return false;
    for (;;) {
        int64_t left = (deadline - cli_now_ns()) / 1000000;
        struct pollfd pf = {fd, POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
            return false;
        if (*len == cap) {
            char *g = realloc(*buf, cap * 2 + 1);
            if (g == NULL)
                return false;
            *buf = g;
            cap *= 2;
        }
        ssize_t got = read(fd, *buf + *len, cap - *len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return false;
        if (got == 0)
            break;
        *len += (size_t)got;
    }
    (*buf)[*len] = '\0';
    return true;
}

/* A chunked body, decoded in place. */
static bool dechunk(char *body, size_t *len)
{
    char *in = body, *out = body, *end = body + *len;
    for (;;) {
        char *nl = strstr(in, "\r\n");
        if (nl == NULL)
            return false;
        unsigned long n = strtoul(in, NULL, 16);
        in = nl + 2;
        if (n == 0)
            break;
        if ((size_t)(end - in) < n + 2)
            return false;
        memmove(out, in, n);
        out += n;
        in += n + 2;
    }
    *out = '\0';
    *len = (size_t)(out - body);
    return true;
}

/* GET url: 0 with the body (malloc'd), or -1 with why in err. */
static int http_get(const url *u, char **body, char *err, size_t errsize)
{
    *body = NULL;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(u->host, u->port, &hints, &ai);
    if (g != 0) {
        snprintf(err, errsize, "%s: %s", u->host, gai_strerror(g));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            snprintf(err, errsize, "connect %s:%s: %s", u->host, u->port, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return -1;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
                     "Accept: text/plain\r\nUser-Agent: cpool-top\r\n\r\n",
                     u->path, u->host, u->port);
    char *raw = NULL;
    size_t len = 0;
    bool ok = n > 0 && (size_t)n < sizeof req && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n &&
              read_all(fd, &raw, &len, cli_now_ns() + 5000000000LL);
    close(fd);
    if (!ok) {
        free(raw);
        snprintf(err, errsize, "GET %.100s from %.100s:%s: no complete answer within 5 s", u->path,
                 u->host, u->port);
        return -1;
    }
    int status = 0;
    if (sscanf(raw, "HTTP/1.%*d %d", &status) != 1 || status != 200) {
        snprintf(err, errsize, "GET %.100s from %.100s:%s: HTTP status %d", u->path, u->host, u->port,
                 status);
        free(raw);
        return -1;
    }
    char *hdr_end = strstr(raw, "\r\n\r\n");
    if (hdr_end == NULL) {
        free(raw);
        snprintf(err, errsize, "GET %.100s: malformed answer", u->path);
        return -1;
    }
    *hdr_end = '\0';
    bool chunked = strcasestr(raw, "\r\ntransfer-encoding: chunked") != NULL;
    char *start = hdr_end + 4;
    size_t blen = len - (size_t)(start - raw);
    memmove(raw, start, blen + 1);
    if (chunked && !dechunk(raw, &blen)) {
        free(raw);
        snprintf(err, errsize, "GET %.100s: malformed chunked body", u->path);
        return -1;
    }
    *body = raw;
    return 0;
}

/* ------------------------------------------------------------ the figures */

typedef struct pool_row {
    char name[128];
    char state[16];
    double used, idle, max, waiting, oldest_wait_s;
    double checkouts, failures, wait_sum_s, wait_count; /* counters */
    bool seen;
} pool_row;

typedef struct snapshot {
    pool_row rows[MAX_POOLS];
    int n;
    int64_t at;
} snapshot;

/* The value of label `key` in a sample line's label set, into buf. */
static bool label(const char *labels, const char *key, char *buf, size_t size)
{
    size_t kl = strlen(key);
    for (const char *p = labels; p != NULL && *p != '\0' && *p != '}';) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=' && p[kl + 1] == '"') {
            const char *v = p + kl + 2;
            size_t o = 0;
            for (; *v != '\0' && *v != '"'; v++) {
                if (*v == '\\' && v[1] != '\0')
                    v++;
                if (o + 1 < size)
                    buf[o++] = *v;
            }
            buf[o] = '\0';
            return true;
        }
        /* next label: past the closing quote of this value */
        const char *q = strchr(p, '"');
        if (q == NULL)
            return false;
        for (q++; *q != '\0' && *q != '"'; q++)
            if (*q == '\\' && q[1] != '\0')
                q++;
        p = *q == '"' ? q + 1 : q;
        if (*p == ',')
            p++;
    }
    return false;
}

static pool_row *row_for(snapshot *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->rows[i].name, name) == 0)
            return &s->rows[i];
    if (s->n == MAX_POOLS)
        return NULL;
    pool_row *r = &s->rows[s->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->state, sizeof r->state, "?");
    return r;
}

/* Reads the samples top shows; the rest of the text is ignored. Tenant
 * series (they carry a tenant label) are left out of the pool rows. */
static void read_text(char *text, snapshot *s)
{
    s->n = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        char *brace = strchr(line, '{');
        char *space = strrchr(line, ' ');
        if (brace == NULL || space == NULL || space < brace)
            continue;
        char name[128];
        size_t nl = (size_t)(brace - line);
        if (nl >= sizeof name)
            continue;
        memcpy(name, line, nl);
        name[nl] = '\0';
        char pool[128], state[32], tenant[8];
        if (!label(brace + 1, "pool", pool, sizeof pool) ||
            label(brace + 1, "tenant", tenant, sizeof tenant))
            continue;
        double v = strtod(space + 1, NULL);
        if (strcmp(space + 1, "+Inf") == 0)
            v = INFINITY;
        pool_row *r = row_for(s, pool);
        if (r == NULL)
            continue;
        r->seen = true;
        if (strcmp(name, "db_client_connection_count") == 0 &&
            label(brace + 1, "state", state, sizeof state)) {
            if (strcmp(state, "used") == 0)
                r->used = v;
            else if (strcmp(state, "idle") == 0)
                r->idle = v;
        } else if (strcmp(name, "db_client_connection_max") == 0) {
            r->max = v;
        } else if (strcmp(name, "db_client_connection_pending_requests") == 0) {
            r->waiting = v;
        } else if (strcmp(name, "db_client_connection_oldest_wait_seconds") == 0) {
            r->oldest_wait_s = v;
        } else if (strcmp(name, "db_client_connection_checkouts_total") == 0) {
            r->checkouts = v;
        } else if (strcmp(name, "db_client_connection_checkout_failures_total") == 0) {
            r->failures += v;
        } else if (strcmp(name, "db_client_connection_wait_time_seconds_sum") == 0) {
            r->wait_sum_s = v;
        } else if (strcmp(name, "db_client_connection_wait_time_seconds_count") == 0) {
            r->wait_count = v;
        } else if (strcmp(name, "db_client_connection_pool_state") == 0 && v == 1 &&
                   label(brace + 1, "state", state, sizeof state)) {
            snprintf(r->state, sizeof r->state, "%.15s", state);
        }
    }
}

static const pool_row *find_row(const snapshot *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->rows[i].name, name) == 0)
            return &s->rows[i];
    return NULL;
}

/* A duration in one word: 0, 850us, 12.5ms, 3.2s. */
static void fmt_time(double seconds, char *buf, size_t size)
{
    if (seconds <= 0)
        snprintf(buf, size, "0");
    else if (seconds < 1e-3)
        snprintf(buf, size, "%.0fus", seconds * 1e6);
    else if (seconds < 1)
        snprintf(buf, size, "%.1fms", seconds * 1e3);
    else
        snprintf(buf, size, "%.1fs", seconds);
}

static void fmt_rate(double v, bool have, char *buf, size_t size)
{
    if (!have)
        snprintf(buf, size, "-");
    else if (v >= 10000)
        snprintf(buf, size, "%.0fk", v / 1000);
    else
        snprintf(buf, size, "%.0f", v);
}

static void draw(FILE *f, const char *where, const snapshot *now, const snapshot *before,
                 bool tty, int refresh)
{
    if (tty)
        fputs("\033[H\033[2J", f); /* home, clear */
    char stamp[40];
    cli_utc_now(stamp, sizeof stamp);
    double secs = before != NULL ? (double)(now->at - before->at) / 1e9 : 0;
    fprintf(f, "cpool top  %s  %s  refresh %d%s\n\n", where, stamp, refresh,
            tty ? "  (q or Ctrl-C quits)" : "");
    fprintf(f, "%-28s %-13s %6s %6s %6s %7s %9s %11s %9s %10s\n", "POOL", "STATE", "USED",
            "IDLE", "MAX", "WAITING", "MAXWAIT", "CHECKOUTS/s", "FAILED/s", "WAIT avg");
    for (int i = 0; i < now->n; i++) {
        const pool_row *r = &now->rows[i];
        const pool_row *b = before != NULL ? find_row(before, r->name) : NULL;
        bool rates = b != NULL && secs > 0;
        char max[16], maxwait[16], co[16], fail[16], wait[16];
        if (isinf(r->max))
            snprintf(max, sizeof max, "-");
        else
            snprintf(max, sizeof max, "%.0f", r->max);
        fmt_time(r->oldest_wait_s, maxwait, sizeof maxwait);
        fmt_rate(rates ? (r->checkouts - b->checkouts) / secs : 0, rates, co, sizeof co);
        fmt_rate(rates ? (r->failures - b->failures) / secs : 0, rates, fail, sizeof fail);
        double dn = rates ? r->wait_count - b->wait_count : 0;
        if (dn > 0)
            fmt_time((r->wait_sum_s - b->wait_sum_s) / dn, wait, sizeof wait);
        else
            snprintf(wait, sizeof wait, "-");
        fprintf(f, "%-28.28s %-13s %6.0f %6.0f %6s %7.0f %9s %11s %9s %10s\n", r->name,
                r->state, r->used, r->idle, max, r->waiting, maxwait, co, fail, wait);
    }
    if (now->n == 0)
        fprintf(f, "(no cpool series at this endpoint)\n");
    if (!tty)
        fputc('\n', f);
    fflush(f);
}

static volatile sig_atomic_t g_stop;

/* Waits up to ms for the interval to pass; true when the user typed q (a
 * terminal only) or a signal asked to stop. */
static bool wait_or_quit(int64_t ms, bool tty)
{
    int64_t until = cli_now_ns() + ms * 1000000;
    bool stdin_open = tty;
    while (!g_stop) {
        int64_t left = (until - cli_now_ns()) / 1000000;
        if (left <= 0)
            return false;
        struct pollfd pf = {STDIN_FILENO, POLLIN, 0};
        if (poll(&pf, stdin_open ? 1 : 0, (int)left) <= 0)
            continue; /* the time passed, or a signal */
        char c = 0;
        if (read(STDIN_FILENO, &c, 1) != 1)
            stdin_open = false; /* closed: only time and signals from now on */
        else if (c == 'q' || c == 'Q')
            return true;
    }
    return true;
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

int cmd_top(int argc, char **argv)
{
    static const struct option longs[] = {
        {"interval-ms", required_argument, NULL, 'i'},
        {"iterations", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int64_t interval = 1000, iterations = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":i:n:h", longs, NULL)) != -1) {
        switch (c) {
        case 'i':
            if (!cli_parse_i64(optarg, 100, 3600000, &interval))
                return cli_usage_error(CMD, "invalid --interval-ms \"%s\": expected a number "
                                            "100..3600000",
                                       optarg);
            break;
        case 'n':
            if (!cli_parse_i64(optarg, 1, 1000000000, &iterations))
                return cli_usage_error(CMD, "invalid --iterations \"%s\": expected a number "
                                            ">= 1",
                                       optarg);
            break;
        case 'h':
            fputs(top_usage, stdout);
            fputs(cli_exit_codes_help, stdout);
            return CLI_EXIT_OK;
        default: return cli_getopt_error(CMD, argv, optind, optopt, c);
        }
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "a URL is required, e.g. http://127.0.0.1:9187/metrics");
    if (argc - optind > 1)
        return cli_usage_error(CMD, "expected one URL, got \"%s\" too", argv[optind + 1]);
    url u;
    if (!parse_url(argv[optind], &u))
        return cli_usage_error(CMD, "invalid URL \"%s\": expected http://HOST:PORT[/PATH]",
                               argv[optind]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bool tty = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    /* Keys without Enter, not echoed, on a terminal; restored at the end. */
    struct termios saved;
    bool raw = tty && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (raw) {
        struct termios t = saved;
        t.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        raw = tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
    }
    char where[300];
    snprintf(where, sizeof where, "%.120s:%s%.120s", u.host, u.port, u.path);
    snapshot *snaps = calloc(2, sizeof *snaps);
    if (snaps == NULL) {
        cli_error(CMD, "out of memory");
        return CLI_EXIT_ERRORS;
    }
    int cur = 0, shown = 0, rc = CLI_EXIT_OK;
    bool have_before = false;
    while (!g_stop && (iterations == 0 || shown < iterations)) {
        char *body = NULL, err[400];
        if (http_get(&u, &body, err, sizeof err) != 0) {
            if (shown == 0) {
                cli_error(CMD, "%s", err);
                rc = CLI_EXIT_CONNECT;
                break;
            }
            fprintf(stderr, "cpool top: %s (retrying)\n", err);
        } else {
            snapshot *now = &snaps[cur];
            now->at = cli_now_ns();
            read_text(body, now);
            draw(stdout, where, now, have_before ? &snaps[1 - cur] : NULL, tty, shown + 1);
            have_before = true;
            cur = 1 - cur;
            shown++;
        }
        free(body);
        if (iterations != 0 && shown >= iterations)
            break;
        if (wait_or_quit(interval, tty))
            break;
    }
    free(snaps);
    if (raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    return rc;
}
