#include <cpool/cpool.h>
#include <cpool/cpool_mem.h> /* in-memory connector: needs no server */
#include <stdio.h>

/* The work done with one lease: cpool_run checks out before, in after. */
static int work(cpool_conn *conn, void *arg, cpool_error *err)
{
    (void)arg;
    printf("leased connection %llu\n", (unsigned long long)cpool_conn_id(conn));
    return cpool_conn_execute(conn, "PING", err);
}

int main(void)
{
    cpool_mem *server = NULL;
    cpool *pool = NULL;
    cpool_error err = {0};
    cpool_options o;
    cpool_options_init(&o, sizeof o);     /* defaults; versioned by size */
    o.connector = cpool_mem_connector();  /* or a PostgreSQL, Redis... one */
    o.max_pool_size = 4;
    int rc = cpool_mem_create(&server);
    o.connector_ctx = server;
    if (rc == 0) rc = cpool_create(&o, &pool, &err);          /* paused */
    if (rc == 0) rc = cpool_ready(pool, &err);                /* serving */
    cpool_run_opts run = {.struct_size = sizeof run, .timeout_ms = 1000, .retries = 2};
    if (rc == 0) rc = cpool_run(pool, &run, work, NULL, &err); /* <= 1 s, all told */
    if (rc != 0) fprintf(stderr, "%s: %s\n", cpool_err_name(rc), err.message);
    cpool_destroy(pool);
    cpool_mem_destroy(server);
    return rc == 0 ? 0 : 1;
}
