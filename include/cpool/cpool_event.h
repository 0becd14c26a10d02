/* cpool_event.h -- drives a cpool_async completion queue from a libevent
 * event_base: a persistent read event on the queue's descriptor runs
 * cpool_async_process() on the loop's thread. Header only; link libevent
 * yourself.
 *
 *     cpool_async *q;      cpool_async_new(&q);
 *     struct event *ev = cpool_event_start(base, q);
 *     ... cpool_checkout_async(pool, q, &opts, on_lease, req, &err) ...
 *     cpool_event_stop(ev);   cpool_async_free(q);
 *
 * Since 0.2. */
#ifndef CPOOL_EVENT_H
#define CPOOL_EVENT_H

#include "cpool.h"

#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline void cpool_event__readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cpool_async_process((cpool_async *)arg);
}

/* Watches q on base; NULL when libevent could not make or add the event. */
static inline struct event *cpool_event_start(struct event_base *base, cpool_async *q)
{
    struct event *ev =
        event_new(base, cpool_async_fd(q), EV_READ | EV_PERSIST, cpool_event__readable, q);
    if (ev != NULL && event_add(ev, NULL) != 0) {
        event_free(ev);
        ev = NULL;
    }
    return ev;
}

/* Stops watching and frees the event (NULL: no-op). */
static inline void cpool_event_stop(struct event *ev)
{
    if (ev != NULL)
        event_free(ev);
}

#ifdef __cplusplus
}
#endif
#endif /* CPOOL_EVENT_H */
