/* fuzz_targets.c -- the connectors' target parsers (ctx_new) take any
 * text: each returns a context or CPOOL_EINVAL/CPOOL_ENOMEM with a
 * terminated message, and frees what it made. The first byte picks the
 * connector and a scheme to put in front (or none, for conninfo strings and
 * SQLite paths); the rest is the target. */
#include <cpool/cpool_connector.h>
#include <cpool/cpool_mem.h>
#include <cpool/cpool_pg.h>
#include <cpool/cpool_redis.h>
#include <cpool/cpool_sqlite.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 2048)
        return 0;
    static const char *const prefixes[] = {"postgresql://", "", "redis://", "unix://",
                                           "sqlite:", "mem://", "postgres://", "sqlite:/tmp/"};
    const char *prefix = prefixes[data[0] % 8];
    const cpool_connector *cx = data[0] % 8 == 1 ? cpool_pg_connector()
                                : (data[0] >> 3) % 2 == 0
                                    ? cpool_connector_for(prefix[0] != '\0' ? prefix : "sqlite:")
                                    : cpool_pg_connector();
    if (cx == NULL || cx->ctx_new == NULL)
        return 0;
    size_t pl = strlen(prefix);
    char *t = malloc(pl + size);
    memcpy(t, prefix, pl);
    memcpy(t + pl, data + 1, size - 1);
    t[pl + size - 1] = '\0';
    void *ctx = NULL;
    cpool_error e;
    memset(&e, 0x55, sizeof e);
    int rc = cx->ctx_new(t, &ctx, &e);
    if (rc == 0) {
        char addr[256];
        if (cx->address != NULL)
            (void)cx->address(ctx, t, addr, sizeof addr);
        cx->ctx_free(ctx);
    } else if ((rc != CPOOL_EINVAL && rc != CPOOL_ENOMEM && rc != CPOOL_ECONNECT) ||
               memchr(e.message, '\0', sizeof e.message) == NULL) {
        abort();
    }
    free(t);
    return 0;
}
