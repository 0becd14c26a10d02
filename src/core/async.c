/* async.c -- completion queues for asynchronous checkouts: an eventfd the
 * loop polls, a list of requests to finish or deliver, and
 * cpool_async_process(), which runs on the loop's thread. The queue's
 * mutex is a leaf: it may be taken under a pool's lock (a check-in serving
 * an async waiter) and nothing is taken under it. */
#include "core.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct cpool_async {
    pthread_mutex_t mu;
    int efd;
    async_link *head, *tail; /* to process; mu */
    atomic_uint pending;     /* accepted and not yet delivered */
};

int cpool_async_new(cpool_async **out)
{
    if (out == NULL)
        return CPOOL_EINVAL;
    *out = NULL;
    cpool_async *q = calloc(1, sizeof *q);
    if (q == NULL)
        return CPOOL_ENOMEM;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0 || pthread_mutex_init(&q->mu, NULL) != 0) {
        if (q->efd >= 0)
            close(q->efd);
        free(q);
        return CPOOL_ESYS;
    }
    *out = q;
    return 0;
}

void cpool_async_free(cpool_async *q)
{
    if (q == NULL)
        return;
    close(q->efd);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int cpool_async_fd(const cpool_async *q)
{
    return q != NULL ? q->efd : -1;
}

unsigned cpool_async_pending(const cpool_async *q)
{
    return q != NULL ? atomic_load(&((cpool_async *)q)->pending) : 0;
}

/* Accepted: counted until its callback has run. */
void cpool__async_accepted(cpool_async *q)
{
    atomic_fetch_add(&q->pending, 1);
}

void cpool__async_push(async_link *l, async_phase phase)
{
    cpool_async *q = l->q;
    l->phase = phase;
    l->next = NULL;
    pthread_mutex_lock(&q->mu);
    bool was_empty = q->head == NULL;
    if (q->tail != NULL)
        q->tail->next = l;
    else
        q->head = l;
    q->tail = l;
    pthread_mutex_unlock(&q->mu);
    if (was_empty) {
        uint64_t one = 1;
        /* The counter only saturates after 2^64 - 2 writes; EAGAIN then
         * still leaves it readable. */
        while (write(q->efd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
}

void cpool__async_kick(async_link *l)
{
    if (!atomic_exchange(&l->claimed, true))
        cpool__async_push(l, ASYNC_SERVED);
}

int cpool_async_process(cpool_async *q)
{
    if (q == NULL)
        return 0;
    uint64_t n;
    while (read(q->efd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    /* Take what is there now; what arrives meanwhile is for the next call
     * (it writes the descriptor again, since the list was empty). */
    pthread_mutex_lock(&q->mu);
    async_link *l = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    int ran = 0;
    while (l != NULL) {
        async_link *next = l->next;
        /* A served request is finished here: delivered at once when that
         * needs no helper thread and no new wait. */
        if (l->phase == ASYNC_DONE || l->finish(l)) {
            atomic_fetch_sub(&q->pending, 1);
            l->deliver(l); /* runs the callback and frees the request */
            ran++;
        }
        l = next;
    }
    return ran;
}
