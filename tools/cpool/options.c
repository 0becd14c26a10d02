/* options.c -- `cpool options`: the effective pool options and their sources.
 *
 * Everything comes from cpool_options_explain(), the function the library
 * itself resolves options with, so what is printed is what cpool_create()
 * would use: defaults, profile, -o (the "code" layer), CPOOL_* variables and
 * the target's query, in that order of precedence.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char options_usage[] =
    "usage: cpool options [TARGET] [-o NAME=VALUE]... [--json]\n"
    "\n"
    "Prints every named pool option: its effective value, where that value came\n"
    "from (default, profile, code = -o, env = CPOOL_* variable, url = the target's\n"
    "query), its default, the values allowed and its environment variable. With a\n"
    "TARGET, the connector also checks its own parameters in the target.\n"
    "\n"
    "  -o, --option NAME=VALUE  set an option as a program would (repeatable);\n"
    "                           NAME is snake_case or the CMAP name; profile=NAME\n"
    "                           picks a profile (small, default, large)\n"
    "      --json               print one JSON object instead of a table\n"
    "  -h, --help               this help\n"
    "\n";

int cli_apply_option(const char *cmd, cpool_options *opts, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return cli_usage_error(cmd, "invalid -o \"%s\": expected NAME=VALUE (see cpool options)",
                               arg);
    char name[64];
    size_t n = (size_t)(eq - arg);
    if (n >= sizeof name)
        return cli_usage_error(cmd, "invalid -o \"%.40s...\": the name is too long", arg);
    memcpy(name, arg, n);
    name[n] = '\0';
    cpool_error err = {0};
    if (cpool_options_set(opts, name, eq + 1, &err) != 0)
        return cli_usage_error(cmd, "-o %s: %s", arg, err.message);
    return 0;
}

static size_t maxw(size_t a, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    return n > a ? n : a;
}

int cmd_options(int argc, char **argv)
{
    static const struct option longs[] = {
        {"option", required_argument, NULL, 'o'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cpool_options opts;
    cpool_options_init(&opts, sizeof opts);
    bool json = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (cli_apply_option("options", &opts, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'j': json = true; break;
        case 'h': fputs(options_usage, stdout); fputs(cli_exit_codes_help, stdout); return 0;
        default: return cli_getopt_error("options", argv, optind, optopt, c);
        }
    }
    if (argc - optind > 1)
        return cli_usage_error("options", "expected at most one TARGET, got \"%s\" too",
                               argv[optind + 1]);
    const char *target = optind < argc ? argv[optind] : NULL;
    const cpool_connector *cx = NULL;
    if (target != NULL) {
        cx = cli_connector("options", target);
        if (cx == NULL)
            return CLI_EXIT_USAGE;
    }
    opts.target = target;
    opts.connector = cx;

    cpool_error err = {0};
    size_t count = 0;
    if (cpool_options_explain(&opts, NULL, 0, &count, NULL, NULL, 0, &err) != 0)
        return cli_usage_error("options", "%s", err.message);
    cpool_option_info *info = calloc(count > 0 ? count : 1, sizeof *info);
    size_t tsize = target != NULL ? strlen(target) + 1 : 1;
    char *stripped = malloc(tsize);
    if (info == NULL || stripped == NULL) {
        free(info);
        free(stripped);
        cli_error("options", "out of memory");
        return CLI_EXIT_ERRORS;
    }
    stripped[0] = '\0';
    cpool_options eff;
    int rc = cpool_options_explain(&opts, info, count, &count, &eff, stripped, tsize, &err);
    if (rc != 0) {
        free(info);
        free(stripped);
        return cli_usage_error("options", "%s", err.message);
    }

    /* Misspelt CPOOL_* variables: the table below shows them not applied,
     * this says why. */
    char warnings[2048];
    if (!opts.ignore_env && cpool_env_warnings(warnings, sizeof warnings) > 0) {
        char *save = NULL;
        for (char *line = strtok_r(warnings, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save))
            fprintf(stderr, "cpool: options: warning: %s\n", line);
    }

    /* The connector's own parameters are what is left of the query. */
    if (cx != NULL && cx->abi_version >= 2 && cx->ctx_new != NULL) {
        void *ctx = NULL;
        cpool_error cerr = {0};
        if (cx->ctx_new(stripped, &ctx, &cerr) != 0) {
            free(info);
            free(stripped);
            return cli_usage_error("options", "%s", cerr.message);
        }
        if (cx->ctx_free != NULL)
            cx->ctx_free(ctx);
    }

    const cpool_param *params = cx != NULL && cx->abi_version >= 4 ? cx->params : NULL;
    size_t nparams = params != NULL ? cx->nparams : 0;
    char red[512], red_stripped[512];
    cli_redact(target, red, sizeof red);
    cli_redact(stripped, red_stripped, sizeof red_stripped);
    if (json) {
        json_w j;
        json_begin(&j, stdout, true);
        json_obj(&j, NULL);
        json_str(&j, "target", target != NULL ? red : NULL);
        json_str(&j, "connector_target", target != NULL ? red_stripped : NULL);
        json_str(&j, "connector", cx != NULL ? cx->name : NULL);
        json_str(&j, "profile", eff.profile);
        json_arr(&j, "options");
        for (size_t i = 0; i < count; i++) {
            json_obj(&j, NULL);
            json_str(&j, "name", info[i].name);
            json_str(&j, "cmap_name", info[i].cmap_name);
            json_str(&j, "value", info[i].value);
            json_str(&j, "source", cpool_option_source_name(info[i].source));
            json_str(&j, "default", info[i].default_value);
            json_str(&j, "allowed", info[i].allowed);
            json_str(&j, "env", info[i].env_name);
            json_str(&j, "help", info[i].help);
            json_end_obj(&j);
        }
        json_end_arr(&j);
        json_arr(&j, "connector_params");
        for (size_t i = 0; i < nparams; i++) {
            char allowed[256];
            json_obj(&j, NULL);
            json_str(&j, "name", params[i].name);
            json_str(&j, "alias", params[i].alias);
            json_str(&j, "default", params[i].dflt);
            json_str(&j, "allowed", cpool_param_allowed(&params[i], allowed, sizeof allowed));
            json_bool(&j, "secret", params[i].secret);
            json_str(&j, "help", params[i].doc);
            json_end_obj(&j);
        }
        json_end_arr(&j);
        json_end_obj(&j);
    } else {
        if (target != NULL) {
            printf("target     %s\n", red);
            if (strcmp(red, red_stripped) != 0)
                printf("connector  %s, sees %s\n", cx->name, red_stripped);
            else
                printf("connector  %s\n", cx->name);
        }
        if (eff.profile != NULL)
            printf("profile    %s\n", eff.profile);
        if (target != NULL || eff.profile != NULL)
            printf("\n");
        size_t wn = 4, wv = 5, ws = 6, wd = 7, wa = 7;
        for (size_t i = 0; i < count; i++) {
            wn = maxw(wn, info[i].name);
            wv = maxw(wv, info[i].value);
            ws = maxw(ws, cpool_option_source_name(info[i].source));
            wd = maxw(wd, info[i].default_value);
            wa = maxw(wa, info[i].allowed);
        }
        printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)wn, "NAME", (int)wv, "VALUE",
               (int)ws, "SOURCE", (int)wd, "DEFAULT", (int)wa, "ALLOWED", "ENV");
        for (size_t i = 0; i < count; i++)
            printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)wn, info[i].name, (int)wv,
                   info[i].value, (int)ws, cpool_option_source_name(info[i].source), (int)wd,
                   info[i].default_value, (int)wa, info[i].allowed, info[i].env_name);
        if (nparams > 0) {
            printf("\n%s parameters (in the target)\n", cx->name);
            size_t pn = 4, pd = 7, pa = 7;
            char allowed[256];
            for (size_t i = 0; i < nparams; i++) {
                pn = maxw(pn, params[i].name);
                pd = maxw(pd, params[i].dflt != NULL ? params[i].dflt : "");
                pa = maxw(pa, cpool_param_allowed(&params[i], allowed, sizeof allowed));
            }
            printf("%-*s  %-*s  %-*s  %s\n", (int)pn, "NAME", (int)pd, "DEFAULT", (int)pa,
                   "ALLOWED", "MEANING");
            for (size_t i = 0; i < nparams; i++)
                printf("%-*s  %-*s  %-*s  %s%s\n", (int)pn, params[i].name, (int)pd,
                       params[i].dflt != NULL ? params[i].dflt : "", (int)pa,
                       cpool_param_allowed(&params[i], allowed, sizeof allowed),
                       params[i].doc != NULL ? params[i].doc : "",
                       params[i].secret ? " (secret: never shown)" : "");
        }
    }
    free(info);
    free(stripped);
    if (fflush(stdout) != 0) {
        cli_error("options", "cannot write the output");
        return CLI_EXIT_ERRORS;
    }
    return CLI_EXIT_OK;
}
