#include <cpool/cpool.h>
#include <cpool/cpool_mem.h> /* in-memory connector: runs without a server */
#include <stdio.h>

int main(void)
{
    cpool_mem *server = NULL;
    cpool *pool = NULL;
    cpool_conn *conn;
    cpool_error err = {0};
    cpool_options o;
    int rc = cpool_mem_create(&server);

    cpool_options_init(&o, sizeof o);
    o.connector = cpool_mem_connector(); /* PostgreSQL, Redis, SQLite: coming */
    o.connector_ctx = server;
    o.target = "localhost:5432";
    o.max_pool_size = 4;
    if (rc == 0) rc = cpool_create(&o, &pool, &err); /* created paused */
    if (rc == 0) rc = cpool_ready(pool, &err);
    if (rc == 0) rc = cpool_checkout(pool, 1000, &conn, &err); /* wait <= 1 s */
    if (rc == 0) {
        void *native = cpool_conn_native(conn); /* the driver's handle */
        printf("leased connection %llu, handle %p\n",
               (unsigned long long)cpool_conn_id(conn), native);
        rc = cpool_checkin(pool, conn, 0, &err);
    }
    if (rc != 0)
        fprintf(stderr, "cpool: %s: %s\n", cpool_err_name(rc), err.message);
    cpool_destroy(pool);
    cpool_mem_destroy(server);
    return rc == 0 ? 0 : 1;
}
