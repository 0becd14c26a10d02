/* cancel.c -- cancellation tokens for queued checkouts. A token keeps the
 * waiters registered with it; a trigger marks it and posts each waiter's
 * semaphore, and the woken checkout takes itself out of its pool's queue
 * under that pool's lock (checkout.c). The token's mutex is never held
 * while taking a pool's: registration happens under a pool's mu (pool mu,
 * then token mu), a trigger takes only the token's. A waiter leaves the
 * list before its stack frame goes, so a trigger never posts to a dead
 * waiter. */
#include "core.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>

struct cpool_cancel {
    pthread_mutex_t mu;
    atomic_bool triggered;
    waiter *head; /* registered waiters; mu */
};

int cpool_cancel_new(cpool_cancel **out)
{
    if (out == NULL)
        return CPOOL_EINVAL;
    *out = NULL;
    cpool_cancel *t = calloc(1, sizeof *t);
    if (t == NULL)
        return CPOOL_ENOMEM;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return CPOOL_ESYS;
    }
    atomic_init(&t->triggered, false);
    *out = t;
    return 0;
}

void cpool_cancel_free(cpool_cancel *t)
{
    if (t == NULL)
        return;
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void cpool_cancel_trigger(cpool_cancel *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->triggered, true);
    for (waiter *w = t->head; w != NULL; w = w->cnext) {
        if (w->async)
            cpool__async_kick(w->alink); /* its loop finishes it, under its pool's lock */
        else {
            w->cposts++; /* counted first: it takes every post (waiter.posts) */
            sem_post(&w->sem); /* a wake-up: the waiter sees the token and leaves */
        }
    }
    pthread_mutex_unlock(&t->mu);
}

bool cpool_cancel_triggered(const cpool_cancel *t)
{
    return t != NULL && atomic_load(&((cpool_cancel *)t)->triggered);
}

bool cpool__cancel_register(waiter *w)
{
    cpool_cancel *t = w->cancel;
    if (t == NULL || w->registered)
        return t == NULL || !atomic_load(&t->triggered);
    pthread_mutex_lock(&t->mu);
    bool ok = !atomic_load(&t->triggered);
    if (ok) {
        w->cprev = NULL;
        w->cnext = t->head;
        if (t->head != NULL)
            t->head->cprev = w;
        t->head = w;
        w->registered = true;
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

void cpool__cancel_unregister(waiter *w)
{
    cpool_cancel *t = w->cancel;
    if (t == NULL || !w->registered)
        return;
    pthread_mutex_lock(&t->mu);
    if (w->cprev != NULL)
        w->cprev->cnext = w->cnext;
    else
        t->head = w->cnext;
    if (w->cnext != NULL)
        w->cnext->cprev = w->cprev;
    w->registered = false;
    pthread_mutex_unlock(&t->mu);
}
