/* registry.c -- which built-in connector takes a target, and cpool_open()
 * on top of it. Only this file knows the list; each connector is compiled
 * in when its client library was found (CPOOL_HAVE_*), and the core never
 * sees a driver header nor calls up here: this file uses the core's public
 * API only. */
#include "cpool/cpool_connector.h"
#include "cpool/cpool_mem.h"
#ifdef CPOOL_HAVE_PG
#include "cpool/cpool_pg.h"
#endif
#ifdef CPOOL_HAVE_REDIS
#include "cpool/cpool_redis.h"
#endif
#ifdef CPOOL_HAVE_SQLITE
#include "cpool/cpool_sqlite.h"
#endif

#include "../core/params.h"
#include "registry.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

static bool has_scheme(const cpool_connector *cx, const char *target)
{
    if (cx == NULL || cx->abi_version < 2 || cx->schemes == NULL)
        return false;
    for (const char *const *s = cx->schemes; *s != NULL; s++)
        if (strncasecmp(target, *s, strlen(*s)) == 0)
            return true;
    return false;
}

/* A libpq conninfo string: "keyword=value ..." with no scheme. */
static bool looks_like_conninfo(const char *target)
{
    const char *eq = strchr(target, '=');
    return eq != NULL && strstr(target, "://") == NULL &&
           strcspn(target, ":") > (size_t)(eq - target);
}

/* The built-in connectors, in the order their schemes are tried. */
static size_t builtin(const cpool_connector **all)
{
    size_t n = 0;
    all[n++] = cpool_mem_connector();
#ifdef CPOOL_HAVE_PG
    all[n++] = cpool_pg_connector();
#endif
#ifdef CPOOL_HAVE_REDIS
    all[n++] = cpool_redis_connector();
#endif
#ifdef CPOOL_HAVE_SQLITE
    all[n++] = cpool_sqlite_connector();
#endif
    return n;
}

bool cpool__secret_key(const char *k, size_t n)
{
    /* libpq's secrets (PQconndefaults marks password and sslpassword with
     * dispchar '*'), whether or not the PostgreSQL connector is built, and
     * their usual short spellings. */
    static const char *const keys[] = {"password", "sslpassword", "pass", "pwd", NULL};
    for (int i = 0; keys[i] != NULL; i++)
        if (strlen(keys[i]) == n && strncasecmp(k, keys[i], n) == 0)
            return true;
    const cpool_connector *all[4];
    size_t count = builtin(all);
    for (size_t c = 0; c < count; c++) {
        if (all[c]->abi_version < 4 || all[c]->params == NULL)
            continue;
        for (size_t i = 0; i < all[c]->nparams; i++) {
            const cpool_param *p = &all[c]->params[i];
            if (p->secret && ((strlen(p->name) == n && strncasecmp(k, p->name, n) == 0) ||
                              (p->alias != NULL && strlen(p->alias) == n &&
                               strncasecmp(k, p->alias, n) == 0)))
                return true;
        }
    }
    return false;
}

const cpool_connector *cpool_connector_for(const char *target)
{
    if (target == NULL)
        return NULL;
    const cpool_connector *all[4];
    size_t count = builtin(all);
    for (size_t i = 0; i < count; i++)
        if (has_scheme(all[i], target))
            return all[i];
#ifdef CPOOL_HAVE_PG
    if (looks_like_conninfo(target))
        return cpool_pg_connector();
#else
    (void)looks_like_conninfo;
#endif
    return NULL;
}

int cpool__resolve_target(const char *target, int64_t timeout_ms, char **out, cpool_error *err)
{
    *out = NULL;
    if (strncasecmp(target, "redis-sentinel://", 17) != 0)
        return 0;
#ifdef CPOOL_HAVE_REDIS
    return cpool_redis_sentinel_resolve(target, timeout_ms, out, err);
#else
    (void)timeout_ms;
    return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                           "open: redis-sentinel:// needs the Redis connector, left out of "
                           "this build");
#endif
}

int cpool_open(const char *target, const cpool_options *opts, cpool **out, cpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (target == NULL || out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "open: a target and out are required");
    const cpool_connector *cx = cpool_connector_for(target);
    if (cx == NULL) {
        /* An unrecognised target is never echoed: a misspelt scheme is no
         * reason to print the password behind it. Its scheme is enough. */
        size_t n = strspn(target, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789+.-");
        bool scheme = n > 0 && n <= 32 && target[n] == ':';
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "open: no connector for %s%.*s%s: expected sqlite:, "
                               "postgresql://, postgres://, redis://, unix:// or mem:// (or a "
                               "connector left out of this build)",
                               scheme ? "the scheme \"" : "this target (not shown)",
                               scheme ? (int)n + 1 : 0, target, scheme ? "\"" : "");
    }
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    if (opts != NULL)
        memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
    o.struct_size = sizeof o;
    o.target = target;
    o.connector = cx;
    if (opts == NULL || opts->struct_size <= offsetof(cpool_options, connector_ctx))
        o.connector_ctx = NULL;
    /* startup_wait_ms as the pool will see it (code, environment, URL). */
    cpool_options eff;
    int rc = cpool_options_explain(&o, NULL, 0, NULL, &eff, NULL, 0, err);
    cpool *p = NULL;
    if (rc == 0)
        rc = cpool_create(&o, &p, err);
    if (rc != 0)
        return rc;
    rc = cpool_ready(p, err);
    if (rc == 0 && eff.startup_wait_ms > 0)
        rc = cpool_wait_connected(p, 0, eff.startup_wait_ms, err);
    if (rc != 0) {
        cpool_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}
