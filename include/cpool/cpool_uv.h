/* cpool_uv.h -- drives a cpool_async completion queue from a libuv loop:
 * a uv_poll_t on the queue's descriptor runs cpool_async_process() when it
 * turns readable, on the loop's thread. Header only; link libuv yourself.
 *
 *     cpool_async *q;   cpool_async_new(&q);
 *     cpool_uv w;       cpool_uv_start(loop, &w, q);
 *     ... cpool_checkout_async(pool, q, &opts, on_lease, req, &err) ...
 *     cpool_uv_stop(&w, on_closed);   // then, in on_closed: cpool_async_free(q)
 *
 * Since 0.2. */
#ifndef CPOOL_UV_H
#define CPOOL_UV_H

#include "cpool.h"

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cpool_uv {
    uv_poll_t poll; /* first: the handle's address is the adapter's */
    cpool_async *q;
} cpool_uv;

static inline void cpool_uv__readable(uv_poll_t *handle, int status, int events)
{
    (void)events;
    if (status == 0)
        cpool_async_process(((cpool_uv *)handle->data)->q);
}

/* Starts watching q on loop; w must stay valid until cpool_uv_stop()'s
 * close callback ran. Returns 0 or a libuv error code. */
static inline int cpool_uv_start(uv_loop_t *loop, cpool_uv *w, cpool_async *q)
{
    w->q = q;
    int rc = uv_poll_init(loop, &w->poll, cpool_async_fd(q));
    if (rc != 0)
        return rc;
    w->poll.data = w;
    return uv_poll_start(&w->poll, UV_READABLE, cpool_uv__readable);
}

/* Stops and closes the handle; on_closed (may be NULL) runs when libuv is
 * done with it. */
static inline void cpool_uv_stop(cpool_uv *w, uv_close_cb on_closed)
{
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, on_closed);
}

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_UV_H */
