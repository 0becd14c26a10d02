#include <cpool/cpool.h>
#include <cpool/cpool_mem.h> /* in-memory connector: needs no server */
#include <stdio.h>

int main(void)
{
    cpool_mem *server = NULL;
    cpool *pool = NULL;
    cpool_conn *conn = NULL;
    cpool_error err = {0};
    cpool_options o;
    cpool_options_init(&o, sizeof o);     /* defaults; versioned by size */
    o.connector = cpool_mem_connector();  /* or a PostgreSQL, Redis... one */
    o.max_pool_size = 4;
    int rc = cpool_mem_create(&server);
    o.connector_ctx = server;
    if (rc == 0) rc = cpool_create(&o, &pool, &err);          /* paused */
    if (rc == 0) rc = cpool_ready(pool, &err);                /* serving */
    if (rc == 0) rc = cpool_checkout(pool, 1000, &conn, &err); /* <= 1 s */
    if (rc == 0) printf("leased connection %llu\n", (unsigned long long)cpool_conn_id(conn));
    if (rc == 0) rc = cpool_checkin(pool, conn, 0, &err);     /* reset, reuse */
    if (rc != 0) fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    cpool_destroy(pool);
    cpool_mem_destroy(server);
    return rc == 0 ? 0 : 1;
}
