/* options.c -- the options struct: its defaults (cpool_options_init), the
 * range and consistency checks cpool_create() applies to resolved options,
 * and the built-in log sink CPOOL_LOG asks for. No lock: nothing here
 * touches a live pool's state but the log file of one being created. */
#include "core.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The CMAP options that differ from the specification's defaults
 * (maxPoolSize 100, minPoolSize 0, maxIdleTimeMS 0, maxConnecting 2,
 * waitQueueTimeoutMS 0): what ConnectionPoolCreated lists, as a driver's
 * event lists what its user set. This pool's own defaults differ for two
 * of them, so a default pool lists those two. */
unsigned cpool__options_set(const cpool_options *o)
{
    unsigned m = 0;
    if (o->max_pool_size != 100) m |= CPOOL_OPT_MAX_POOL_SIZE;
    if (o->min_pool_size != 0) m |= CPOOL_OPT_MIN_POOL_SIZE;
    if (o->max_idle_time_ms != 0) m |= CPOOL_OPT_MAX_IDLE_TIME_MS;
    if (o->max_connecting != 2) m |= CPOOL_OPT_MAX_CONNECTING;
    if (o->wait_queue_timeout_ms != 0) m |= CPOOL_OPT_WAIT_QUEUE_TIMEOUT_MS;
    return m;
}

int cpool__options_validate(const cpool_options *o, cpool_error *err)
{
    if (o->connector == NULL)
        return cpool__err(err, CPOOL_EINVAL, "option connector: required");
    if (o->connector->abi_version < 1 || o->connector->connect == NULL ||
        o->connector->close == NULL)
        return cpool__err(err, CPOOL_EINVAL,
                          "option connector: abi_version %d without connect/close",
                          o->connector->abi_version);
    return cpool__options_check(o, err);
}

/* The checks that need no connector and no single option's row: options
 * that must agree, and limits of the process. Each value's own range was
 * checked against its row when the options were resolved (config.c). */
int cpool__options_check(const cpool_options *o, cpool_error *err)
{
    if (o->max_pool_size > 0 && o->min_pool_size > o->max_pool_size)
        return cpool__err(err, CPOOL_EINVAL,
                          "option minPoolSize = %u: must not exceed maxPoolSize (%u)",
                          o->min_pool_size, o->max_pool_size);
    /* Each connection holds at least one descriptor: a minimum the
     * process's limit cannot hold is never reached (with maxPoolSize 0
     * nothing else bounds it). */
    struct rlimit nofile;
    if (o->min_pool_size > 0 && getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
        nofile.rlim_cur != RLIM_INFINITY && o->min_pool_size >= nofile.rlim_cur)
        return cpool__err(err, CPOOL_EINVAL,
                          "option minPoolSize = %u: the process may open only %llu "
                          "descriptors (RLIMIT_NOFILE), and each connection needs one",
                          o->min_pool_size, (unsigned long long)nofile.rlim_cur);
    if (o->maintenance_interval_ms == 0)
        return cpool__err(err, CPOOL_EINVAL,
                          "option maintenance_interval_ms = 0: must be > 0, or < 0 "
                          "for no background thread");
    if (o->backoff_max_ms > 0 && o->backoff_base_ms > o->backoff_max_ms)
        return cpool__err(err, CPOOL_EINVAL,
                          "option backoff_base_ms = %lld: must not exceed backoff_max_ms "
                          "(%lld)",
                          (long long)o->backoff_base_ms, (long long)o->backoff_max_ms);
    if (o->leak_reclaim_ms > 0 &&
        (o->leak_threshold_ms == 0 || o->leak_reclaim_ms < o->leak_threshold_ms))
        return cpool__err(err, CPOOL_EINVAL,
                          "option leak_reclaim_ms = %lld: needs leak_threshold_ms (now %lld) "
                          "> 0 and not above it",
                          (long long)o->leak_reclaim_ms, (long long)o->leak_threshold_ms);
    if (o->clock != NULL && o->clock->now_ns == NULL)
        return cpool__err(err, CPOOL_EINVAL, "option clock: now_ns is required");
    return 0;
}

/* CPOOL_LOG's level into *lv (0..3; -1 when the variable is unset or
 * empty): 0, or a CPOOL_EINVAL naming it. */
static int env_log_level(int *lv, cpool_error *err)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *level = getenv("CPOOL_LOG");
    *lv = -1;
    if (level == NULL || level[0] == '\0')
        return 0;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(level, names[i]) == 0)
            return *lv = i, 0;
    return cpool__err(err, CPOOL_EINVAL,
                      "CPOOL_LOG = \"%.32s\" (from env): allowed error|warn|info|debug", level);
}

/* What cpool__env_log_sink() would refuse, without opening anything: for
 * cpool_options_explain(), which must refuse what cpool_create() refuses. */
int cpool__env_log_check(const cpool_options *o, cpool_error *err)
{
    if (o->on_log != NULL || o->ignore_env)
        return 0;
    int lv, rc = env_log_level(&lv, err);
    if (rc != 0 || lv < 0)
        return rc;
    const char *path = getenv("CPOOL_LOG_PATH");
    if (path == NULL || path[0] == '\0' || access(path, W_OK) == 0)
        return 0;
    int missing = errno == ENOENT;
    /* A file that does not exist yet is made in a writable directory. */
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash == NULL ? 1 : slash == path ? 1 : (int)(slash - path),
             slash == NULL ? "." : path);
    if (missing && access(dir, W_OK | X_OK) == 0)
        return 0;
    return cpool__err(err, CPOOL_EINVAL,
                      "CPOOL_LOG_PATH = \"%.120s\" (from env): cannot be opened for appending",
                      path);
}

/* CPOOL_LOG=error|warn|info|debug gives a pool without a log sink of its
 * own the built-in JSON-lines sink, on stderr or appended to
 * CPOOL_LOG_PATH: logs for a program that never asked for them, switched
 * on where it runs. */
int cpool__env_log_sink(cpool *p, cpool_options *o, cpool_error *err)
{
    int lv, rc = env_log_level(&lv, err);
    if (rc != 0 || lv < 0)
        return rc;
    FILE *f = stderr;
    const char *path = getenv("CPOOL_LOG_PATH");
    if (path != NULL && path[0] != '\0') {
        f = fopen(path, "ae");
        if (f == NULL)
            return cpool__err(err, CPOOL_EINVAL,
                              "CPOOL_LOG_PATH = \"%.120s\" (from env): cannot be opened for "
                              "appending: %s",
                              path, strerror(errno));
        p->log_file = f;
    }
    o->on_log = cpool_log_json;
    o->log_ctx = f;
    o->log_level = (cpool_log_level)lv;
    return 0;
}
