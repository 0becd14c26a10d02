/* registry.c -- which built-in connector takes a target. Only this file
 * knows the list; each connector is compiled in when its client library
 * was found (CPOOL_HAVE_*), and the core never sees a driver header. */
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

const cpool_connector *cpool_connector_for(const char *target)
{
    if (target == NULL)
        return NULL;
    const cpool_connector *all[] = {
        cpool_mem_connector(),
#ifdef CPOOL_HAVE_PG
        cpool_pg_connector(),
#endif
#ifdef CPOOL_HAVE_REDIS
        cpool_redis_connector(),
#endif
#ifdef CPOOL_HAVE_SQLITE
        cpool_sqlite_connector(),
#endif
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
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
