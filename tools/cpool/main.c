/* main.c -- `cpool COMMAND ...`: dispatch, `cpool --help`, `--version`. */
#include "cli.h"

#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"bench", cmd_bench, "load a pool with threads and report throughput and latencies"},
    {"probe", cmd_probe, "open one connection and time each phase of the establishment"},
    {"options", cmd_options, "show the effective pool options and where each came from"},
    {"metrics", cmd_metrics, "serve a pool's statistics at /metrics for Prometheus"},
    {"top", cmd_top, "watch a running service's pools through its /metrics endpoint"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void print_version(void)
{
    char list[96];
    cli_connector_list(list, sizeof list);
    printf("cpool %d.%d.%d (connectors: %s)\n", CPOOL_VERSION_MAJOR, CPOOL_VERSION_MINOR,
           CPOOL_VERSION_PATCH, list);
}

static void print_help(void)
{
    printf("usage: cpool COMMAND [ARGS...]\n"
           "       cpool help [COMMAND] | cpool --help | cpool --version\n"
           "\n"
           "A command line for the cpool connection pool.\n"
           "\n"
           "Commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        printf("  %-8s %s\n", commands[i].name, commands[i].summary);
    printf("\n"
           "Targets: sqlite:PATH, sqlite::memory:, postgresql://USER:PASS@HOST:PORT/DB,\n"
           "redis://[:PASS@]HOST:PORT[/DB], mem://NAME (in-memory test server). Pool options\n"
           "may ride in the target's query (?maxPoolSize=10) or in CPOOL_* variables; run\n"
           "`cpool options --help`. Passwords are never printed.\n"
           "\n"
           "Run `cpool COMMAND --help` for a command's options.\n"
           "\n%s",
           cli_exit_codes_help);
}

static const command *find(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(NULL, "a COMMAND is required: bench, probe, options, metrics or top "
                                     "(see cpool --help)");
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_help();
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        print_version();
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "help") == 0) {
        if (argc < 3) {
            print_help();
            return CLI_EXIT_OK;
        }
        const command *c = find(argv[2]);
        if (c == NULL)
            return cli_usage_error(NULL, "help: no command named \"%s\" (commands: bench, "
                                         "probe, options, metrics, top)",
                                   argv[2]);
        char *help_argv[] = {argv[2], "--help", NULL};
        return c->run(2, help_argv);
    }
    const command *c = find(name);
    if (c == NULL)
        return cli_usage_error(NULL, "unknown command \"%s\" (commands: bench, probe, "
                                     "options, metrics, top; see cpool --help)",
                               name);
    /* The command sees itself as argv[0], as getopt expects. */
    return c->run(argc - 1, argv + 1);
}
