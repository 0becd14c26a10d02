/* cli.h -- what the commands of the `cpool` program share.
 *
 * The program uses the library's public API only (<cpool/...> headers), so
 * it drives SQLite, PostgreSQL, Redis and the in-memory server the same
 * way, through cpool_conn_execute() and the connector table.
 */
#ifndef CPOOL_CLI_H
#define CPOOL_CLI_H

#include <cpool/cpool.h>
#include <cpool/cpool_connector.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define CLI_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CLI_PRINTF(f, a)
#endif

/* Exit codes; docs/cli.md and `cpool --help` list them. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_ERRORS = 1,      /* ran, but failed: errors above the threshold,
                             cannot listen, cannot write a file */
    CLI_EXIT_USAGE = 2,       /* bad command line, option or target */
    CLI_EXIT_CONNECT = 3,     /* could not connect: refused, unreachable, reset */
    CLI_EXIT_TIMEOUT = 4,     /* the establishment timed out */
    CLI_EXIT_DNS = 5,         /* the host name did not resolve */
    CLI_EXIT_TLS = 6,         /* TLS or certificate failure */
    CLI_EXIT_AUTH = 7,        /* authentication failed */
    CLI_EXIT_SERVER = 8,      /* the server answered with an error */
    CLI_EXIT_INTERRUPTED = 130 /* SIGINT during establishment */
};

/* The text that `--help` prints after the usage of every command. */
extern const char cli_exit_codes_help[];

/* ------------------------------------------------------------ commands */

int cmd_bench(int argc, char **argv);
int cmd_probe(int argc, char **argv);
int cmd_options(int argc, char **argv);
int cmd_metrics(int argc, char **argv);
int cmd_top(int argc, char **argv);

/* ------------------------------------------------------------ messages */

/* "cpool: <cmd>: <message>" on stderr, one line. */
void cli_error(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* cli_error and CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* The one-line message for an unknown option or a missing value that
 * getopt_long reported (ret: its return value, '?' or ':'); returns
 * CLI_EXIT_USAGE. */
int cli_getopt_error(const char *cmd, char **argv, int optind_now, int optopt_now, int ret);

/* Remembers the passwords in target (URI user info, password=) so that
 * cli_scrub() -- and so every cli_error() line -- replaces them by "***". */
void cli_secrets_from(const char *target);
/* Replaces every remembered password in s (a NUL-terminated string in a
 * buffer of `size` bytes) by "***". */
void cli_scrub(char *s, size_t size);

/* Copies a target with its password hidden; never fails (a target that
 * does not fit is cut). */
void cli_redact(const char *target, char *buf, size_t size);

/* The connector for target, or a usage error naming the schemes this build
 * knows. */
const cpool_connector *cli_connector(const char *cmd, const char *target);
/* "mem, sqlite, pg, redis": the connectors in this build. */
void cli_connector_list(char *buf, size_t size);

/* Exit code for an establishment failure, from its phase and kind. */
int cli_exit_for_failure(const cpool_error *e);
/* One plain sentence about why an establishment failed and what to check;
 * `address` is "host:port" or a path (may be NULL). */
void cli_explain_failure(const cpool_error *e, const char *address, char *buf,
                         size_t size);

/* ------------------------------------------------------------ parsing */

/* Applies one "-o NAME=VALUE" to opts with cpool_options_set(); prints the
 * error itself and returns CLI_EXIT_USAGE, or 0. */
int cli_apply_option(const char *cmd, cpool_options *opts, const char *arg);

/* Whole decimal number in [min, max]; false otherwise. */
bool cli_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/* Decimal number, possibly with a fraction, in [min, max]. */
bool cli_parse_double(const char *s, double min, double max, double *out);
/* "0.1" or "10%": a fraction 0..1 into *out; 0, or -1 when invalid. */
int cli_parse_fraction(const char *s, double *out);
/* The target names several hosts (a libpq or Redis host list): it opens a
 * cluster rather than one pool. */
bool cli_is_multi_host(const char *target);

/* ------------------------------------------------------------ time */

int64_t cli_now_ns(void);  /* CLOCK_MONOTONIC */
void cli_sleep_ns(int64_t ns);
/* The wall clock as "2024-05-01T12:34:56Z". */
void cli_utc_now(char *buf, size_t size);

/* Formats a duration in ns with a unit that keeps 3 significant digits:
 * "850 ns", "12.3 us", "4.56 ms", "1.23 s". */
void cli_fmt_duration(int64_t ns, char *buf, size_t size);

/* ------------------------------------------------------------ JSON */

/* A JSON writer onto a FILE. Containers nest up to 32 deep; commas and
 * string escaping are its job. Invalid UTF-8 bytes become U+FFFD so the
 * output is always valid JSON. */
typedef struct json_w {
    FILE *f;
    int depth;
    bool first[32]; /* no member written yet at that depth */
    bool pretty;
} json_w;

void json_begin(json_w *j, FILE *f, bool pretty);
void json_obj(json_w *j, const char *key);  /* key NULL inside arrays / at top */
void json_arr(json_w *j, const char *key);
void json_end_obj(json_w *j);
void json_end_arr(json_w *j);
void json_str(json_w *j, const char *key, const char *v); /* v NULL: null */
void json_int(json_w *j, const char *key, int64_t v);
void json_uint(json_w *j, const char *key, uint64_t v);
void json_num(json_w *j, const char *key, double v); /* NaN/Inf: null */
void json_bool(json_w *j, const char *key, bool v);
/* The escaped form of s, quotes included, into f. */
void json_write_string(FILE *f, const char *s);

#endif /* CPOOL_CLI_H */
