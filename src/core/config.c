/* config.c -- named options: defaults, profiles, environment, target query.
 *
 * One table describes every option that has a name: its names, type,
 * default, range, and the text `cpool options` and docs/configuration.md
 * show. The same table sets the defaults (cpool_options_init), parses text
 * from the environment, the query string and cpool_options_set(), checks
 * every value's range, prints values and says where each came from. A new
 * option is one row here, its field in cpool_options, and its row in the
 * documentation's table (config/options_doc_table_matches_rows checks). */
#include "pool_int.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum opt_type { T_U32, T_U64, T_MS, T_BOOL, T_DOUBLE, T_ENUM } opt_type;

static const char *const validation_names[] = {"none", "check", "ping_idle", "always",
                                               NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const handoff_names[] = {"fifo", "turns", NULL};
static const char *const early_wake_names[] = {"auto", "on", "off", NULL};
static const char *const backoff_names[] = {"quick", "steady", "off", NULL};

typedef struct opt_def {
    const char *name; /* snake_case, also the query name */
    const char *cmap; /* CMAP / camelCase query name, or NULL */
    const char *env;
    opt_type type;
    size_t offset;
    double min, max; /* inclusive range of the number (T_ENUM: unused) */
    const char *const *names; /* T_ENUM */
    const char *allowed;
    const char *help;
    double dflt; /* the default: cpool_options_init() sets it */
} opt_def;

#define OFF(f) offsetof(cpool_options, f)
#define U32MAX 4294967295.0
#define MSMAX 9.2e15 /* ms; conversions to ns saturate (ms_to_ns) */

static const opt_def defs[] = {
    {"max_pool_size", "maxPoolSize", "CPOOL_MAX_POOL_SIZE", T_U32, OFF(max_pool_size),
     0, U32MAX, NULL, "0..4294967295 (0 = no limit)",
     "most connections open at once (pending + available + in use)", 10},
    {"min_pool_size", "minPoolSize", "CPOOL_MIN_POOL_SIZE", T_U32, OFF(min_pool_size),
     0, U32MAX, NULL, "0..max_pool_size",
     "connections the background thread keeps open", 0},
    {"max_idle_time_ms", "maxIdleTimeMS", "CPOOL_MAX_IDLE_TIME_MS", T_MS,
     OFF(max_idle_time_ms), 0, MSMAX, NULL, ">= 0 ms (0 = no limit)",
     "an available connection idle longer than this is closed", 0},
    {"max_connecting", "maxConnecting", "CPOOL_MAX_CONNECTING", T_U32,
     OFF(max_connecting), 1, U32MAX, NULL, ">= 1",
     "establishments in progress at once", 2},
    {"wait_queue_timeout_ms", "waitQueueTimeoutMS", "CPOOL_WAIT_QUEUE_TIMEOUT_MS", T_MS,
     OFF(wait_queue_timeout_ms), 0, MSMAX, NULL, ">= 0 ms (0 = no limit)",
     "how long a checkout may wait in the queue (CMAP meaning)", 30000},
    {"connect_timeout_ms", "connectTimeoutMS", "CPOOL_CONNECT_TIMEOUT_MS", T_MS,
     OFF(connect_timeout_ms), 0, MSMAX, NULL, ">= 0 ms (0 = no limit)",
     "bound on one establishment (connect, TLS, handshake, auth)", 10000},
    {"maintenance_interval_ms", NULL, "CPOOL_MAINTENANCE_INTERVAL_MS", T_MS,
     OFF(maintenance_interval_ms), -MSMAX, MSMAX, NULL,
     "> 0 ms, or < 0 = no background thread",
     "pause between background maintenance runs", 1000},
    {"load_balanced", "loadBalanced", "CPOOL_LOAD_BALANCED", T_BOOL, OFF(load_balanced),
     0, 1, NULL, "true|false", "one generation per service behind a load balancer", 0},
    {"clear_on_connect_error", NULL, "CPOOL_CLEAR_ON_CONNECT_ERROR", T_BOOL,
     OFF(clear_on_connect_error), 0, 1, NULL, "true|false",
     "an establishment error that is not backpressure clears the pool", 0},
    {"log_level", NULL, "CPOOL_LOG_LEVEL", T_ENUM, OFF(log_level), 0, 0, log_level_names,
     "error|warn|info|debug", "log records above this level are dropped", CPOOL_LOG_DEBUG},
    {"validation", NULL, "CPOOL_VALIDATION", T_ENUM, OFF(validation), 0, 0,
     validation_names, "none|check|ping_idle|always",
     "what is checked before a reused connection is handed out", CPOOL_VALIDATE_CHECK},
    {"validation_idle_ms", NULL, "CPOOL_VALIDATION_IDLE_MS", T_MS, OFF(validation_idle_ms),
     0, MSMAX, NULL, ">= 0 ms", "ping_idle: idle time after which a ping is needed", 1000},
    {"max_lifetime_ms", "maxLifetimeMS", "CPOOL_MAX_LIFETIME_MS", T_MS, OFF(max_lifetime_ms),
     0, MSMAX, NULL, ">= 0 ms (0 = no limit)",
     "a connection older than this is closed and replaced", 1800000},
    {"lifetime_jitter", NULL, "CPOOL_LIFETIME_JITTER", T_DOUBLE, OFF(lifetime_jitter), 0, 0.5,
     NULL, "0..0.5", "lifetimes are shortened by a random fraction up to this", 0.05},
    {"recycle_after_uses", NULL, "CPOOL_RECYCLE_AFTER_USES", T_U64, OFF(recycle_after_uses),
     0, 9.2e18, NULL, ">= 0 (0 = never)", "close a connection after this many leases", 0},
    {"backoff_base_ms", NULL, "CPOOL_BACKOFF_BASE_MS", T_MS, OFF(backoff_base_ms), 0, MSMAX,
     NULL, ">= 0 ms (0 = no backoff)", "first wait after an establishment failure; doubles", 200},
    {"backoff_max_ms", NULL, "CPOOL_BACKOFF_MAX_MS", T_MS, OFF(backoff_max_ms), 0, MSMAX, NULL,
     ">= 0 ms", "longest wait between establishment attempts", 10000},
    {"backoff_jitter", NULL, "CPOOL_BACKOFF_JITTER", T_DOUBLE, OFF(backoff_jitter), 0, 1, NULL,
     "0..1", "each wait is randomised by +- this fraction", 0.2},
    {"backoff_multiplier", NULL, "CPOOL_BACKOFF_MULTIPLIER", T_DOUBLE, OFF(backoff_multiplier),
     1, 16, NULL, "1..16", "each wait is the one before times this", 2},
    {"backoff", NULL, "CPOOL_BACKOFF", T_ENUM, OFF(backoff), 0, 0, backoff_names,
     "quick|steady|off",
     "named schedule for the backoff_* options not set otherwise: quick = 200 ms x2 to 10 s, "
     "steady = 1 s x2 to 60 s (both +-20 %), off = none",
     CPOOL_BACKOFF_QUICK},
    {"breaker_threshold", NULL, "CPOOL_BREAKER_THRESHOLD", T_U32, OFF(breaker_threshold), 0,
     U32MAX, NULL, ">= 0 (0 = never opens)",
     "attempts (failures in a row) after which checkouts needing a connection fail at once "
     "until a probe succeeds", 5},
    {"keepalive_ms", NULL, "CPOOL_KEEPALIVE_MS", T_MS, OFF(keepalive_ms), 0, MSMAX, NULL,
     ">= 0 ms (0 = off)", "check connections left available this long, in the background", 60000},
    {"probe_interval_ms", NULL, "CPOOL_PROBE_INTERVAL_MS", T_MS, OFF(probe_interval_ms), 0,
     MSMAX, NULL, ">= 0 ms (0 = off)",
     "while establishments fail, ask the server this often whether it is back", 250},
    {"leak_threshold_ms", NULL, "CPOOL_LEAK_THRESHOLD_MS", T_MS, OFF(leak_threshold_ms), 0,
     MSMAX, NULL, ">= 0 ms (0 = off)", "a lease held this long is reported as a suspected leak", 0},
    {"leak_reclaim_ms", NULL, "CPOOL_LEAK_RECLAIM_MS", T_MS, OFF(leak_reclaim_ms), 0, MSMAX,
     NULL, "0 (never) or >= leak_threshold_ms",
     "a lease held this long is interrupted and its slot taken back", 0},
    {"startup_wait_ms", NULL, "CPOOL_STARTUP_WAIT_MS", T_MS, OFF(startup_wait_ms), 0, MSMAX,
     NULL, ">= 0 ms (0 = do not wait)",
     "cpool_open waits this long for the first (or minPoolSize) connections", 0},
    {"timing_sample", NULL, "CPOOL_TIMING_SAMPLE", T_U32, OFF(timing_sample), 0, U32MAX, NULL,
     ">= 0 (1 = every lease, 0 = none)",
     "lock-free path: time one lease in this many at least, all when 10 us apart", 64},
    {"handoff", NULL, "CPOOL_HANDOFF", T_ENUM, OFF(handoff), 0, 0, handoff_names,
     "fifo|turns", "how a connection returned while others wait reaches them",
     CPOOL_HANDOFF_TURNS},
    {"turn_us", NULL, "CPOOL_TURN_US", T_U32, OFF(turn_us), 1, 1000000, NULL, "1..1000000 us",
     "turns: how long a thread may keep re-taking its connection while others wait", 1000},
    {"turn_uses", NULL, "CPOOL_TURN_USES", T_U32, OFF(turn_uses), 1, 1000000, NULL,
     "1..1000000", "turns: how many times it may re-take it in one turn", 32},
    {"turn_wait_us", NULL, "CPOOL_TURN_WAIT_US", T_U32, OFF(turn_wait_us), 1, 100000000, NULL,
     "1..100000000 us", "turns: shorter while checkouts wait longer than this", 3000},
    {"early_wake", NULL, "CPOOL_EARLY_WAKE", T_ENUM, OFF(early_wake), 0, 0, early_wake_names,
     "auto|on|off",
     "turns: wake the next waiter ahead of its handoff (auto: while other processes leave "
     "the CPUs to this one)",
     CPOOL_EARLY_WAKE_OFF},
    {"max_waiting", NULL, "CPOOL_MAX_WAITING", T_U32, OFF(max_waiting), 0, U32MAX, NULL,
     ">= 0 (0 = no limit)",
     "checkouts that may wait at once; one more fails at once (CPOOL_EQUEUEFULL)", 0},
    {"stats_interval_ms", NULL, "CPOOL_STATS_INTERVAL_MS", T_MS, OFF(stats_interval_ms), 0,
     MSMAX, NULL, ">= 0 ms (0 = since creation)",
     "derived statistics cover the last complete interval of this length", 10000},
};
#define NDEFS (sizeof defs / sizeof defs[0])

/* ------------------------------------------------------------ profiles */

typedef struct preset {
    const char *option;
    double value;
} preset;

typedef struct profile {
    const char *name;
    preset presets[8];
} profile;

/* Sizes and timeouts that fit together: a small pool (a CLI, a sidecar,
 * a worker with a handful of threads) gives up sooner and keeps nothing
 * idle for long; a large one (a busy service) keeps a warm floor and lets
 * more establishments run at once so it can grow quickly. */
static const profile profiles[] = {
    {"small",
     {{"max_pool_size", 10}, {"min_pool_size", 0}, {"max_connecting", 2},
      {"max_idle_time_ms", 60000}, {"wait_queue_timeout_ms", 5000},
      {"connect_timeout_ms", 5000}, {NULL, 0}}},
    {"default", {{NULL, 0}}},
    {"large",
     {{"max_pool_size", 200}, {"min_pool_size", 10}, {"max_connecting", 8},
      {"max_idle_time_ms", 600000}, {"wait_queue_timeout_ms", 30000},
      {"connect_timeout_ms", 10000}, {NULL, 0}}},
};

static const profile *find_profile(const char *name)
{
    for (size_t i = 0; i < sizeof profiles / sizeof profiles[0]; i++)
        if (strcmp(profiles[i].name, name) == 0)
            return &profiles[i];
    return NULL;
}

/* ------------------------------------------------------------ values */

static const opt_def *find_def(const char *name)
{
    for (size_t i = 0; i < NDEFS; i++)
        if (strcmp(defs[i].name, name) == 0 ||
            (defs[i].cmap != NULL && strcmp(defs[i].cmap, name) == 0))
            return &defs[i];
    return NULL;
}

/* Lower case without '_' or '-': "Max_Pool-Size" and "maxPoolSize" both
 * become "maxpoolsize", to catch near misses of a pool option's name. */
static void fold(const char *in, char *out, size_t size)
{
    size_t o = 0;
    for (; *in != '\0' && o + 1 < size; in++)
        if (*in != '_' && *in != '-')
            out[o++] = (char)tolower((unsigned char)*in);
    out[o] = '\0';
}

static const opt_def *near_miss(const char *name)
{
    char a[64], b[64];
    fold(name, a, sizeof a);
    for (size_t i = 0; i < NDEFS; i++) {
        fold(defs[i].name, b, sizeof b);
        if (strcmp(a, b) == 0)
            return &defs[i];
    }
    return NULL;
}

static double get_num(const cpool_options *o, const opt_def *d)
{
    const char *base = (const char *)o + d->offset;
    switch (d->type) {
    case T_U32: return (double)*(const uint32_t *)(const void *)base;
    case T_U64: return (double)*(const uint64_t *)(const void *)base;
    case T_MS: return (double)*(const int64_t *)(const void *)base;
    case T_BOOL: return *(const bool *)(const void *)base ? 1 : 0;
    case T_DOUBLE: return *(const double *)(const void *)base;
    case T_ENUM: return (double)*(const int *)(const void *)base;
    }
    return 0;
}

static void set_num(cpool_options *o, const opt_def *d, double v)
{
    char *base = (char *)o + d->offset;
    switch (d->type) {
    case T_U32: *(uint32_t *)(void *)base = (uint32_t)v; break;
    case T_U64: *(uint64_t *)(void *)base = (uint64_t)v; break;
    case T_MS: *(int64_t *)(void *)base = (int64_t)v; break;
    case T_BOOL: *(bool *)(void *)base = v != 0; break;
    case T_DOUBLE: *(double *)(void *)base = v; break;
    case T_ENUM: *(int *)(void *)base = (int)v; break;
    }
}

static void format_value(const opt_def *d, double v, char *buf, size_t size)
{
    switch (d->type) {
    case T_BOOL: snprintf(buf, size, "%s", v != 0 ? "true" : "false"); break;
    case T_ENUM: snprintf(buf, size, "%s", d->names[(int)v]); break;
    case T_DOUBLE: snprintf(buf, size, "%g", v); break;
    default: snprintf(buf, size, "%.0f", v); break;
    }
}

/* Parses text for d. On error writes why into err, naming `origin`. */
/* Plain decimal notation only: an optional '-', digits, and for
 * fractional options a '.' with digits and an exponent. strtod and strtoll
 * also take leading blanks, '+', hex ("0x1p-2"), "inf" and "nan", which a
 * configuration value never means. */
static bool plain_number(const char *t, bool fraction)
{
    if (*t == '-')
        t++;
    if (!isdigit((unsigned char)*t))
        return false;
    while (isdigit((unsigned char)*t))
        t++;
    if (fraction && *t == '.') {
        t++;
        if (!isdigit((unsigned char)*t))
            return false;
        while (isdigit((unsigned char)*t))
            t++;
    }
    if (fraction && (*t == 'e' || *t == 'E')) {
        t++;
        if (*t == '+' || *t == '-')
            t++;
        if (!isdigit((unsigned char)*t))
            return false;
        while (isdigit((unsigned char)*t))
            t++;
    }
    return *t == '\0';
}

static int parse_value(const opt_def *d, const char *origin, const char *text,
                       double *out, cpool_error *err)
{
    if (d->type == T_BOOL) {
        static const char *const yes[] = {"true", "1", "on", "yes"};
        static const char *const no[] = {"false", "0", "off", "no"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(text, yes[i]) == 0)
                return *out = 1, 0;
            if (strcasecmp(text, no[i]) == 0)
                return *out = 0, 0;
        }
    } else if (d->type == T_ENUM) {
        for (int i = 0; d->names[i] != NULL; i++)
            if (strcasecmp(text, d->names[i]) == 0)
                return *out = i, 0;
    } else if (plain_number(text, d->type == T_DOUBLE)) {
        char *end = NULL;
        errno = 0;
        double v = d->type == T_DOUBLE ? strtod(text, &end) : (double)strtoll(text, &end, 10);
        bool whole = end != NULL && end != text && *end == '\0' && errno == 0;
        if (whole && v >= d->min && v <= d->max) {
            *out = v;
            return 0;
        }
    }
    return cpool__err(err, CPOOL_EINVAL, "option %s = \"%.64s\" (from %s): allowed %s",
                      d->name, text, origin, d->allowed);
}

/* Range checks of a value set in code (the struct may hold anything). */
static int check_code_value(const opt_def *d, double v, cpool_error *err)
{
    bool ok;
    if (d->type == T_ENUM) {
        int n = 0;
        while (d->names[n] != NULL)
            n++;
        ok = v >= 0 && v < n;
    } else {
        ok = v >= d->min && v <= d->max;
    }
    if (ok)
        return 0;
    return cpool__err(err, CPOOL_EINVAL, "option %s = %g (from code): allowed %s", d->name,
                      v, d->allowed);
}

/* Every option's default is its row's; the other fields are zero. The
 * defaults and why: docs/configuration.md, "Defaults and why". */
void cpool_options_init(cpool_options *o, size_t size)
{
    if (o == NULL)
        return;
    cpool_options d;
    memset(&d, 0, sizeof d);
    d.struct_size = size;
    for (size_t i = 0; i < NDEFS; i++)
        set_num(&d, &defs[i], defs[i].dflt);
    memset(o, 0, size);
    memcpy(o, &d, size < sizeof d ? size : sizeof d);
}

const char *cpool_option_source_name(cpool_option_source s)
{
    switch (s) {
    case CPOOL_SOURCE_DEFAULT: return "default";
    case CPOOL_SOURCE_PROFILE: return "profile";
    case CPOOL_SOURCE_CODE: return "code";
    case CPOOL_SOURCE_ENV: return "env";
    case CPOOL_SOURCE_URL: return "url";
    }
    return "unknown";
}

int cpool_options_set(cpool_options *o, const char *name, const char *value,
                      cpool_error *err)
{
    if (o == NULL || name == NULL || value == NULL)
        return cpool__err(err, CPOOL_EINVAL, "options_set: options, name and value are required");
    if (strcmp(name, "profile") == 0) {
        if (find_profile(value) == NULL)
            return cpool__err(err, CPOOL_EINVAL,
                              "option profile = \"%.64s\": allowed small|default|large", value);
        o->profile = find_profile(value)->name; /* static storage */
        return 0;
    }
    const opt_def *d = find_def(name);
    if (d != NULL && d->offset >= o->struct_size)
        return cpool__err(err, CPOOL_EINVAL,
                          "option %s: not in these options (struct_size %zu, from an older "
                          "cpool.h); rebuild against this version's header",
                          d->name, o->struct_size);
    if (d == NULL) {
        const opt_def *m = near_miss(name);
        if (m != NULL)
            return cpool__err(err, CPOOL_EINVAL, "unknown option \"%.64s\"; did you mean %s?",
                              name, m->cmap != NULL ? m->cmap : m->name);
        return cpool__err(err, CPOOL_EINVAL, "unknown option \"%.64s\"", name);
    }
    double v;
    int rc = parse_value(d, "code", value, &v, err);
    if (rc == 0)
        set_num(o, d, v);
    return rc;
}

/* ------------------------------------------------------------ environment */

extern char **environ;

/* The CPOOL_* variables the library reads besides the options' own. */
static const char *const other_env[] = {"CPOOL_PROFILE", "CPOOL_LOG", "CPOOL_LOG_PATH"};

/* Edit distance (insertions, deletions, substitutions, swaps of neighbours),
 * case-insensitive, capped: any distance above `cap` is cap + 1. */
static size_t distance(const char *a, size_t na, const char *b, size_t nb, size_t cap)
{
    enum { MAXLEN = 48 };
    if (na > MAXLEN || nb > MAXLEN)
        return cap + 1;
    size_t d[MAXLEN + 1][MAXLEN + 1];
    for (size_t i = 0; i <= na; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= nb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= na; i++) {
        for (size_t j = 1; j <= nb; j++) {
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && tolower((unsigned char)a[i - 1]) ==
                                      tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == tolower((unsigned char)b[j - 1]) &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[na][nb] > cap ? cap + 1 : d[na][nb];
}

/* The variable the library reads that `name` (na bytes) is closest to
 * within two edits, NULL when none, or when it is one of them. */
static const char *env_near_miss(const char *name, size_t na, bool *known)
{
    const char *best = NULL;
    size_t best_d = 3;
    *known = false;
    for (size_t i = 0; i < NDEFS + sizeof other_env / sizeof other_env[0]; i++) {
        const char *v = i < NDEFS ? defs[i].env : other_env[i - NDEFS];
        size_t nv = strlen(v);
        if (nv == na && strncmp(v, name, na) == 0) {
            *known = true;
            return NULL;
        }
        size_t dd = distance(name, na, v, nv, 2);
        if (dd < best_d) {
            best_d = dd;
            best = v;
        }
    }
    return best;
}

size_t cpool_env_warnings(char *buf, size_t size)
{
    size_t n = 0, used = 0;
    if (buf != NULL && size > 0)
        buf[0] = '\0';
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        if (strncmp(*e, "CPOOL_", 6) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        size_t na = eq != NULL ? (size_t)(eq - *e) : strlen(*e);
        bool known;
        const char *m = env_near_miss(*e, na, &known);
        if (known || m == NULL)
            continue; /* ours, or another program's CPOOL_ variable */
        n++;
        if (buf != NULL && used < size) {
            int w = snprintf(buf + used, size - used,
                             "%s%.*s is not a cpool variable and is ignored; did you mean %s?",
                             used > 0 ? "\n" : "", (int)(na > 64 ? 64 : na), *e, m);
            if (w > 0)
                used += (size_t)w < size - used ? (size_t)w : size - used - 1;
        }
    }
    return n;
}

/* ------------------------------------------------------------ resolution */

/* The layers of the top of cpool.h. `target` (malloc'd, may be NULL) is the
 * target with the pool's parameters taken out. */
typedef struct resolved {
    cpool_options eff;
    cpool_option_source src[NDEFS];
    char *target;
} resolved;

static int apply_profile(resolved *r, const char *name, const char *origin,
                         cpool_error *err)
{
    const profile *pr = find_profile(name);
    if (pr == NULL)
        return cpool__err(err, CPOOL_EINVAL,
                          "option profile = \"%.64s\" (from %s): allowed small|default|large",
                          name, origin);
    for (const preset *ps = pr->presets; ps->option != NULL; ps++) {
        const opt_def *d = find_def(ps->option);
        set_num(&r->eff, d, ps->value);
        r->src[d - defs] = CPOOL_SOURCE_PROFILE;
    }
    return 0;
}

/* Reads the profile's name from the highest layer that names one. */
static int pick_profile(const cpool_options *code, const char *target, char *buf,
                        size_t size, const char **origin, cpool_error *err)
{
    buf[0] = '\0';
    *origin = NULL;
    if (target != NULL) {
        char *copy = strdup(target);
        if (copy == NULL)
            return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
        int rc = cpool_uri_take(copy, "profile", buf, size);
        free(copy);
        if (rc < 0)
            return cpool__err(err, CPOOL_EINVAL, "option profile: malformed value in the target");
        if (rc == 1)
            return *origin = "url", 0;
    }
    const char *env = code->ignore_env ? NULL : getenv("CPOOL_PROFILE");
    if (env != NULL && env[0] != '\0') {
        snprintf(buf, size, "%s", env);
        return *origin = "env CPOOL_PROFILE", 0;
    }
    if (code->profile != NULL) {
        snprintf(buf, size, "%s", code->profile);
        *origin = "code";
    }
    return 0;
}

/* The named backoff schedules: the values of the backoff_* options each
 * sets where no layer set them. */
typedef struct backoff_schedule {
    double base_ms, max_ms, multiplier, jitter;
} backoff_schedule;
static const backoff_schedule schedules[] = {
    [CPOOL_BACKOFF_QUICK] = {200, 10000, 2, 0.2},
    [CPOOL_BACKOFF_STEADY] = {1000, 60000, 2, 0.2},
    [CPOOL_BACKOFF_OFF] = {0, 10000, 2, 0.2},
};

static void apply_backoff_schedule(resolved *r)
{
    const backoff_schedule *b = &schedules[r->eff.backoff];
    const struct {
        const char *name;
        double v;
    } set[] = {{"backoff_base_ms", b->base_ms},
               {"backoff_max_ms", b->max_ms},
               {"backoff_multiplier", b->multiplier},
               {"backoff_jitter", b->jitter}};
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
        const opt_def *d = find_def(set[i].name);
        if (r->src[d - defs] != CPOOL_SOURCE_DEFAULT || get_num(&r->eff, d) == set[i].v)
            continue;
        set_num(&r->eff, d, set[i].v);
        r->src[d - defs] = CPOOL_SOURCE_PROFILE;
    }
}

static int resolve_layers(const cpool_options *code, resolved *r, cpool_error *err);

static int resolve(const cpool_options *code, resolved *r, cpool_error *err)
{
    int rc = resolve_layers(code, r, err);
    if (rc == 0)
        apply_backoff_schedule(r);
    return rc;
}

static int resolve_layers(const cpool_options *code, resolved *r, cpool_error *err)
{
    cpool_options def;
    cpool_options_init(&def, sizeof def);
    memset(r, 0, sizeof *r);
    r->eff = *code;
    for (size_t i = 0; i < NDEFS; i++)
        set_num(&r->eff, &defs[i], get_num(&def, &defs[i]));

    char pname[32];
    const char *porigin;
    int rc = pick_profile(code, code->target, pname, sizeof pname, &porigin, err);
    if (rc == 0 && porigin != NULL)
        rc = apply_profile(r, pname, porigin, err);
    if (rc != 0)
        return rc;
    if (porigin != NULL)
        r->eff.profile = find_profile(pname)->name;

    for (size_t i = 0; i < NDEFS; i++) {
        double v = get_num(code, &defs[i]);
        if (v == get_num(&def, &defs[i]))
            continue;
        if ((rc = check_code_value(&defs[i], v, err)) != 0)
            return rc;
        set_num(&r->eff, &defs[i], v);
        r->src[i] = CPOOL_SOURCE_CODE;
    }

    if (!code->ignore_env) {
        for (size_t i = 0; i < NDEFS; i++) {
            const char *text = getenv(defs[i].env);
            if (text == NULL || text[0] == '\0')
                continue;
            char origin[64];
            snprintf(origin, sizeof origin, "env %s", defs[i].env);
            double v;
            if ((rc = parse_value(&defs[i], origin, text, &v, err)) != 0)
                return rc;
            set_num(&r->eff, &defs[i], v);
            r->src[i] = CPOOL_SOURCE_ENV;
        }
    }

    if (code->target == NULL)
        return 0;
    r->target = strdup(code->target);
    if (r->target == NULL)
        return cpool__err(err, CPOOL_ENOMEM, "create: out of memory");
    char val[256];
    (void)cpool_uri_take(r->target, "profile", NULL, 0);
    for (size_t i = 0; i < NDEFS; i++) {
        for (int k = 0; k < 2; k++) {
            const char *name = k == 0 ? defs[i].name : defs[i].cmap;
            if (name == NULL)
                continue;
            rc = cpool_uri_take(r->target, name, val, sizeof val);
            if (rc < 0)
                return cpool__err(err, CPOOL_EINVAL,
                                  "option %s (from url): value too long or badly escaped",
                                  name);
            if (rc == 0)
                continue;
            double v;
            if ((rc = parse_value(&defs[i], "url", val, &v, err)) != 0)
                return rc;
            set_num(&r->eff, &defs[i], v);
            r->src[i] = CPOOL_SOURCE_URL;
        }
    }
    /* A leftover parameter that is a pool option's name spelt differently
     * (MaxPoolSize, max-pool-size) is a mistake, not a driver parameter. */
    size_t pos = 0;
    char name[64];
    while ((rc = cpool_uri_next(r->target, &pos, name, sizeof name, val, sizeof val)) == 1) {
        const opt_def *m = near_miss(name);
        if (m != NULL)
            return cpool__err(err, CPOOL_EINVAL,
                              "unknown option \"%s\" in the target; did you mean %s?", name,
                              m->cmap != NULL ? m->cmap : m->name);
    }
    return 0;
}

static void free_resolved(resolved *r)
{
    free(r->target);
    r->target = NULL;
}

int cpool__options_resolve(const cpool_options *code, cpool_options *eff, char **target,
                           cpool_error *err)
{
    resolved r;
    int rc = resolve(code, &r, err);
    if (rc != 0) {
        free_resolved(&r);
        return rc;
    }
    *eff = r.eff;
    *target = r.target;
    return 0;
}

int cpool_options_explain(const cpool_options *opts, cpool_option_info *info, size_t ninfo,
                          size_t *count, cpool_options *effective, char *target_buf,
                          size_t target_size, cpool_error *err)
{
    if (opts == NULL)
        return cpool__err(err, CPOOL_EINVAL, "options_explain: options are required");
    cpool_options code;
    cpool_options_init(&code, sizeof code);
    memcpy(&code, opts, opts->struct_size < sizeof code ? opts->struct_size : sizeof code);
    code.struct_size = sizeof code;
    resolved r;
    int rc = resolve(&code, &r, err);
    if (rc == 0)
        rc = cpool__options_check(&r.eff, err); /* what cpool_create would refuse */
    if (rc == 0)
        rc = cpool__env_log_check(&r.eff, err);
    if (rc != 0) {
        free_resolved(&r);
        return rc;
    }
    cpool_options def;
    cpool_options_init(&def, sizeof def);
    for (size_t i = 0; info != NULL && i < NDEFS && i < ninfo; i++) {
        cpool_option_info *in = &info[i];
        in->name = defs[i].name;
        in->cmap_name = defs[i].cmap;
        in->env_name = defs[i].env;
        in->allowed = defs[i].allowed;
        in->help = defs[i].help;
        in->source = r.src[i];
        format_value(&defs[i], get_num(&r.eff, &defs[i]), in->value, sizeof in->value);
        format_value(&defs[i], get_num(&def, &defs[i]), in->default_value,
                     sizeof in->default_value);
    }
    if (count != NULL)
        *count = NDEFS;
    if (effective != NULL) {
        *effective = r.eff;
        effective->target = NULL;
        if (r.target != NULL && target_buf != NULL && target_size > 0) {
            snprintf(target_buf, target_size, "%s", r.target);
            effective->target = target_buf;
        }
    }
    free_resolved(&r);
    return 0;
}
