/* redis_example.c -- a pool of Redis connections: create, SET/GET, return.
 * Usage: redis_example [redis://[user:password@]host:port/db] */
#include <cpool/cpool_redis.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    const char *uri = argc > 1 ? argv[1] : "redis://127.0.0.1:6379/0?maxPoolSize=4";
    cpool *pool;
    cpool_conn *conn;
    cpool_error err;
    if (cpool_open(uri, NULL, &pool, &err) != 0) {
        fprintf(stderr, "pool: %s\n", err.message);
        return 1;
    }
    if (cpool_checkout(pool, 2000, &conn, &err) != 0) {
        fprintf(stderr, "checkout: %s\n", err.message);
        cpool_destroy(pool);
        return 1;
    }
    redisContext *c = cpool_redis_context(conn);
    freeReplyObject(redisCommand(c, "SET greeting %s", "hello from cpool"));
    redisReply *r = redisCommand(c, "GET greeting");
    int ok = r != NULL && r->type == REDIS_REPLY_STRING;
    printf("%s\n", ok ? r->str : c->errstr);
    freeReplyObject(r);
    /* A failed context must not go back to other users. */
    cpool_checkin(pool, conn, ok ? 0 : CPOOL_CHECKIN_BROKEN, NULL);
    cpool_destroy(pool);
    return ok ? 0 : 1;
}
