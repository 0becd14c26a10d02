/* redis_example.c -- a pool of Redis connections: SET and GET, each in one
 * call that leases a connection and returns it.
 * Usage: redis_example [redis://[user:password@]host:port/db] */
#include <cpool/cpool_redis.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    const char *uri = argc > 1 ? argv[1] : "redis://127.0.0.1:6379/0?maxPoolSize=4";
    cpool *pool;
    cpool_error err;
    if (cpool_open(uri, NULL, &pool, &err) != 0) {
        fprintf(stderr, "pool: %s\n", err.message);
        return 1;
    }
    /* One deadline per call; a connection broken meanwhile is retried on
     * another (SET and GET are idempotent). */
    cpool_run_opts o = {.struct_size = sizeof o, .timeout_ms = 2000, .retries = 1};
    redisReply *r = cpool_redis_call(pool, &o, &err, "SET greeting %s", "hello from cpool");
    if (r != NULL) {
        freeReplyObject(r);
        r = cpool_redis_call(pool, &o, &err, "GET greeting");
    }
    int ok = r != NULL && r->type == REDIS_REPLY_STRING;
    if (ok)
        printf("%s\n", r->str);
    else
        fprintf(stderr, "redis: %s\n", r != NULL ? "not a string" : err.message);
    if (r != NULL)
        freeReplyObject(r);
    cpool_destroy(pool);
    return ok ? 0 : 1;
}
