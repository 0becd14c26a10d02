/* probe.c -- `cpool probe TARGET`: one establishment through the connector
 * table, without a pool, timed phase by phase.
 *
 * The connector fills args.phase_ns with what it could measure (DNS,
 * connect, TLS, handshake, authentication). On failure its phase and kind
 * say where and how it failed, which the tool turns into a sentence and an
 * exit code per class (cli.h). SIGINT ends a hanging attempt through the
 * cancel descriptor, as the pool's interrupt would.
 */
#include "cli.h"

#include <cpool/cpool_cluster.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CMD "probe"

static const char probe_usage[] =
    "usage: cpool probe TARGET [--timeout-ms N] [--statement TEXT] [--json]\n"
    "\n"
    "A multi-host TARGET (postgresql://h1:p1,h2:p2/db, host=h1,h2 ...,\n"
    "redis://h1,h2) is probed as a cluster: each endpoint's state, role, round\n"
    "trip and replication lag as its monitor sees them (docs/cluster.md); the\n"
    "exit code is 0 when every endpoint is up, else that of the first failure.\n"
    "\n"
    "Opens one connection by calling the connector directly (no pool), prints how\n"
    "long each phase took (DNS, connect, TLS, handshake, authentication; \"-\" when\n"
    "the connector did not reach or measure it), the total, the server's\n"
    "description and a round trip, then closes it. On failure it says in plain\n"
    "words what went wrong and exits with the code of that class of failure.\n"
    "\n"
    "      --timeout-ms N       deadline for the establishment (default: the\n"
    "                           pool option connect_timeout_ms, 10000)\n"
    "  -s, --statement TEXT     also run this statement and time it\n"
    "  -o, --option NAME=VALUE  a pool option (only connect_timeout_ms matters;\n"
    "                           pool options in the target are taken out too)\n"
    "      --json               print one JSON object instead of text\n"
    "  -h, --help               this help\n"
    "\n";

static const char *const phase_names[] = {"none", "dns", "connect", "tls",
                                          "handshake", "auth", "query"};
static const char *const kind_names[] = {"other", "network", "timeout", "dns",
                                         "certificate", "auth", "server", "interrupted",
                                         "capacity"};

static const char *phase_name(cpool_phase p)
{
    return (unsigned)p < sizeof phase_names / sizeof phase_names[0] ? phase_names[p] : "?";
}

static const char *kind_name(cpool_fail_kind k)
{
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : "?";
}

static int g_cancel_w = -1;

static void on_sigint(int sig)
{
    (void)sig;
    if (g_cancel_w >= 0) {
        char c = 1;
        ssize_t w = write(g_cancel_w, &c, 1);
        (void)w;
    }
}

typedef struct probe {
    const cpool_connector *cx;
    char target_red[512];
    char address[256];
    cpool_connect_args args;
    int64_t total_ns;
    bool ok;
    cpool_error err;
    char why[400];
    char server[256];
    int64_t ping_ns;     /* -1 = not run */
    int ping_rc;
    const char *statement;
    int64_t stmt_ns;     /* -1 = not run */
    int stmt_rc;
    cpool_error stmt_err;
    int exit_code;
} probe;

static void print_text(const probe *p)
{
    char d[32];
    printf("probe      %s  (connector %s)\n", p->target_red, p->cx->name);
    printf("address    %s\n", p->address);
    for (int ph = CPOOL_PHASE_DNS; ph <= CPOOL_PHASE_AUTH; ph++) {
        int64_t ns = p->args.phase_ns[ph];
        if (ns > 0)
            cli_fmt_duration(ns, d, sizeof d);
        else
            snprintf(d, sizeof d, "-");
        printf("  %-10s %10s\n", phase_names[ph], d);
    }
    cli_fmt_duration(p->total_ns, d, sizeof d);
    printf("  %-10s %10s\n", "total", d);
    if (p->ok) {
        printf("server     %s\n", p->server[0] != '\0' ? p->server : "(not described)");
        if (p->ping_ns >= 0) {
            cli_fmt_duration(p->ping_ns, d, sizeof d);
            printf("ping       %s%s\n", p->ping_rc == 0 ? d : "failed after ", p->ping_rc == 0 ? "" : d);
        }
        if (p->stmt_ns >= 0) {
            cli_fmt_duration(p->stmt_ns, d, sizeof d);
            if (p->stmt_rc == 0)
                printf("statement  %s (%s)\n", d, p->statement);
            else
                printf("statement  failed after %s: %s: %s\n", d, cpool_err_name(p->stmt_rc),
                       p->stmt_err.message);
        }
        printf("result     ok\n");
    } else {
        printf("result     failed: %s in %s (%s)\n", cpool_err_name(p->err.code),
               phase_name(p->err.phase), kind_name(p->err.kind));
        printf("error      %s\n", p->err.message);
        printf("why        %s\n", p->why);
    }
}

static void print_json(const probe *p)
{
    json_w j;
    json_begin(&j, stdout, true);
    json_obj(&j, NULL);
    json_str(&j, "target", p->target_red);
    json_str(&j, "connector", p->cx->name);
    json_str(&j, "address", p->address);
    json_bool(&j, "ok", p->ok);
    json_obj(&j, "phases_ms");
    for (int ph = CPOOL_PHASE_DNS; ph <= CPOOL_PHASE_AUTH; ph++) {
        if (p->args.phase_ns[ph] > 0)
            json_num(&j, phase_names[ph], (double)p->args.phase_ns[ph] / 1e6);
        else
            json_str(&j, phase_names[ph], NULL);
    }
    json_end_obj(&j);
    json_num(&j, "total_ms", (double)p->total_ns / 1e6);
    if (p->ok) {
        json_str(&j, "server", p->server[0] != '\0' ? p->server : NULL);
        if (p->ping_ns >= 0)
            json_num(&j, "ping_ms", (double)p->ping_ns / 1e6);
        if (p->stmt_ns >= 0) {
            json_num(&j, "statement_ms", (double)p->stmt_ns / 1e6);
            json_bool(&j, "statement_ok", p->stmt_rc == 0);
        }
    } else {
        json_obj(&j, "error");
        json_str(&j, "code", cpool_err_name(p->err.code));
        json_str(&j, "phase", phase_name(p->err.phase));
        json_str(&j, "kind", kind_name(p->err.kind));
        json_int(&j, "native", p->err.native);
        json_str(&j, "message", p->err.message);
        json_str(&j, "explanation", p->why);
        json_end_obj(&j);
    }
    json_int(&j, "exit_code", p->exit_code);
    json_end_obj(&j);
}

/* A multi-host target: one check of every endpoint by the cluster's
 * monitors, shown as a table. */
static int probe_cluster(const char *target, const char *target_red, int64_t timeout_ms,
                         bool json)
{
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    o.check_timeout_ms = timeout_ms;
    if (o.heartbeat_ms < timeout_ms)
        o.heartbeat_ms = timeout_ms;
    cpool_cluster *c = NULL;
    cpool_error e = {0};
    if (cpool_cluster_open(target, &o, &c, &e) != 0) {
        cli_scrub(e.message, sizeof e.message);
        return cli_usage_error(CMD, "%s", e.message);
    }
    size_t n = cpool_cluster_size(c);
    int64_t deadline = cli_now_ns() + (timeout_ms + 1000) * 1000000;
    for (;;) { /* until every monitor checked once */
        size_t checked = 0;
        for (size_t i = 0; i < n; i++) {
            cpool_endpoint_info in;
            if (cpool_cluster_endpoint_info(c, i, &in) == 0 && in.checks > 0)
                checked++;
        }
        if (checked == n || cli_now_ns() > deadline)
            break;
        cli_sleep_ns(5000000);
    }
    int code = CLI_EXIT_OK;
    size_t up = 0;
    json_w j;
    if (json) {
        json_begin(&j, stdout, true);
        json_obj(&j, NULL);
        json_str(&j, "target", target_red);
        json_arr(&j, "endpoints");
    } else {
        printf("cluster    %s  (%zu endpoints)\n", target_red, n);
        printf("  %-28s %-8s %-8s %10s %9s %6s  %s\n", "endpoint", "state", "role", "rtt",
               "lag", "epoch", "error");
    }
    for (size_t i = 0; i < n; i++) {
        cpool_endpoint_info in;
        if (cpool_cluster_endpoint_info(c, i, &in) != 0)
            continue;
        char addr[256], msg[256], rtt[32], lag[32], epoch[24];
        snprintf(addr, sizeof addr, "%s", in.address);
        cli_scrub(addr, sizeof addr);
        snprintf(msg, sizeof msg, "%s", in.state == CPOOL_ENDPOINT_DOWN ? in.last_error.message
                                                                         : "");
        cli_scrub(msg, sizeof msg);
        if (in.state == CPOOL_ENDPOINT_UP)
            up++;
        else if (code == CLI_EXIT_OK)
            code = in.state == CPOOL_ENDPOINT_DOWN ? cli_exit_for_failure(&in.last_error)
                                                   : CLI_EXIT_ERRORS;
        if (in.rtt_ns >= 0)
            cli_fmt_duration(in.rtt_ns, rtt, sizeof rtt);
        else
            snprintf(rtt, sizeof rtt, "-");
        if (in.lag_ms >= 0)
            snprintf(lag, sizeof lag, "%lld ms", (long long)in.lag_ms);
        else
            snprintf(lag, sizeof lag, "-");
        if (in.epoch > 0)
            snprintf(epoch, sizeof epoch, "%llu", (unsigned long long)in.epoch);
        else
            snprintf(epoch, sizeof epoch, "-");
        if (json) {
            json_obj(&j, NULL);
            json_str(&j, "address", addr);
            json_str(&j, "state", cpool_endpoint_state_name(in.state));
            json_str(&j, "role", cpool_role_name(in.role));
            if (in.rtt_ns >= 0)
                json_num(&j, "rtt_ms", (double)in.rtt_ns / 1e6);
            if (in.lag_ms >= 0)
                json_int(&j, "lag_ms", in.lag_ms);
            if (in.epoch > 0)
                json_uint(&j, "epoch", in.epoch);
            if (msg[0] != '\0')
                json_str(&j, "error", msg);
            json_end_obj(&j);
        } else {
            printf("  %-28s %-8s %-8s %10s %9s %6s  %s\n", addr,
                   cpool_endpoint_state_name(in.state), cpool_role_name(in.role), rtt, lag,
                   epoch, msg);
        }
    }
    if (json) {
        json_end_arr(&j);
        json_uint(&j, "up", up);
        json_int(&j, "exit_code", code);
        json_end_obj(&j);
    } else {
        printf("result     %zu of %zu up\n", up, n);
    }
    fflush(stdout);
    cpool_cluster_close(c);
    return code;
}

int cmd_probe(int argc, char **argv)
{
    enum { O_TIMEOUT = 256, O_JSON };
    static const struct option longs[] = {
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"statement", required_argument, NULL, 's'},
        {"option", required_argument, NULL, 'o'},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    probe p;
    memset(&p, 0, sizeof p);
    p.ping_ns = p.stmt_ns = -1;
    int64_t timeout_ms = -1;
    bool json = false;
    cpool_options opts;
    cpool_options_init(&opts, sizeof opts);
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":s:o:h", longs, NULL)) != -1) {
        switch (c) {
        case O_TIMEOUT:
            if (!cli_parse_i64(optarg, 1, INT64_MAX / 1000000, &timeout_ms))
                return cli_usage_error(CMD, "invalid --timeout-ms \"%s\": expected "
                                            "milliseconds >= 1",
                                       optarg);
            break;
        case 's':
            p.statement = optarg;
            break;
        case 'o':
            if (cli_apply_option(CMD, &opts, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case O_JSON:
            json = true;
            break;
        case 'h':
            fputs(probe_usage, stdout);
            fputs(cli_exit_codes_help, stdout);
            return CLI_EXIT_OK;
        default:
            return cli_getopt_error(CMD, argv, optind, optopt, c);
        }
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "a TARGET is required (see cpool probe --help)");
    if (argc - optind > 1)
        return cli_usage_error(CMD, "expected one TARGET, got \"%s\" too", argv[optind + 1]);
    const char *target = argv[optind];
    cli_secrets_from(target);
    cli_redact(target, p.target_red, sizeof p.target_red);
    if (cli_is_multi_host(target)) {
        if (p.statement != NULL)
            return cli_usage_error(CMD, "--statement is for one server; a multi-host target "
                                        "is probed endpoint by endpoint");
        return probe_cluster(target, p.target_red, timeout_ms > 0 ? timeout_ms : 2000, json);
    }
    p.cx = cli_connector(CMD, target);
    if (p.cx == NULL)
        return CLI_EXIT_USAGE;

    /* The pool's own parameters come out of the target first, as
     * cpool_create() would take them. */
    size_t tsize = strlen(target) + 1;
    char *stripped = malloc(tsize);
    if (stripped == NULL) {
        cli_error(CMD, "out of memory");
        return CLI_EXIT_ERRORS;
    }
    opts.target = target;
    opts.connector = p.cx;
    cpool_options eff;
    if (cpool_options_explain(&opts, NULL, 0, NULL, &eff, stripped, tsize, &p.err) != 0) {
        free(stripped);
        return cli_usage_error(CMD, "%s", p.err.message);
    }
    if (eff.target == NULL)
        snprintf(stripped, tsize, "%s", target);
    if (timeout_ms < 0)
        timeout_ms = eff.connect_timeout_ms;

    void *ctx = NULL;
    if (p.cx->abi_version >= 2 && p.cx->ctx_new != NULL) {
        cpool_error e = {0};
        int rc = p.cx->ctx_new(stripped, &ctx, &e);
        if (rc != 0) {
            free(stripped);
            if (rc == CPOOL_EINVAL)
                return cli_usage_error(CMD, "%s", e.message);
            cli_error(CMD, "%s: %s", cpool_err_name(rc), e.message);
            return CLI_EXIT_ERRORS;
        }
    }
    if (p.cx->address == NULL ||
        p.cx->address(ctx, stripped, p.address, sizeof p.address) != 0)
        cli_redact(stripped, p.address, sizeof p.address);
    cli_scrub(p.address, sizeof p.address);

    int pipefd[2] = {-1, -1};
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) == 0)
        g_cancel_w = pipefd[1];
    struct sigaction sa, old_int;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);

    p.args.target = stripped;
    p.args.conn_id = 1;
    p.args.cancel_fd = pipefd[0];
    int64_t t0 = cli_now_ns();
    p.args.deadline_ns = timeout_ms > 0 ? t0 + timeout_ms * 1000000 : 0;
    void *native = NULL;
    int rc = p.cx->connect(ctx, &p.args, &native, &p.err);
    p.total_ns = cli_now_ns() - t0;
    p.ok = rc == 0;

    if (p.ok) {
        if (p.cx->abi_version >= 2 && p.cx->describe != NULL &&
            p.cx->describe(ctx, native, p.server, sizeof p.server) != 0)
            p.server[0] = '\0';
        cli_scrub(p.server, sizeof p.server);
        if (p.cx->ping != NULL) {
            cpool_error e = {0};
            int64_t s = cli_now_ns();
            p.ping_rc = p.cx->ping(ctx, native, s + 5000000000LL, &e);
            p.ping_ns = cli_now_ns() - s;
        }
        if (p.statement != NULL) {
            if (p.cx->abi_version < 2 || p.cx->execute == NULL) {
                p.stmt_rc = CPOOL_EINVAL;
                snprintf(p.stmt_err.message, sizeof p.stmt_err.message,
                         "the %s connector cannot run statements", p.cx->name);
                p.stmt_ns = 0;
            } else {
                int64_t s = cli_now_ns();
                p.stmt_rc = p.cx->execute(ctx, native, p.statement, &p.stmt_err);
                p.stmt_ns = cli_now_ns() - s;
                if (p.stmt_rc != 0 && p.stmt_err.code != 0)
                    p.stmt_rc = p.stmt_err.code;
                else if (p.stmt_rc > 0)
                    p.stmt_rc = CPOOL_EIO;
                cli_scrub(p.stmt_err.message, sizeof p.stmt_err.message);
            }
        }
        p.cx->close(ctx, native);
        p.exit_code = p.stmt_ns >= 0 && p.stmt_rc != 0 ? CLI_EXIT_ERRORS : CLI_EXIT_OK;
    } else {
        if (p.err.code == 0)
            p.err.code = rc;
        cli_scrub(p.err.message, sizeof p.err.message);
        cli_explain_failure(&p.err, p.address, p.why, sizeof p.why);
        p.exit_code = cli_exit_for_failure(&p.err);
    }
    sigaction(SIGINT, &old_int, NULL);
    g_cancel_w = -1;
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    if (p.cx->abi_version >= 2 && p.cx->ctx_free != NULL && ctx != NULL)
        p.cx->ctx_free(ctx);
    free(stripped);

    if (json)
        print_json(&p);
    else
        print_text(&p);
    fflush(stdout);
    if (!p.ok)
        cli_error(CMD, "%s — %s", p.err.message, p.why);
    else if (p.exit_code != 0)
        cli_error(CMD, "the statement failed: %s", p.stmt_err.message);
    return p.exit_code;
}
