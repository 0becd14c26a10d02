/* fork.c -- the registry of live pools and what a forked child does with
 * them: the process's only global state. Takes the registry mutex, then
 * each pool's mu and ev_mu (fork handlers); a pool's own checks need mu. */
#include "core.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void after_fork_relock(cpool *p);

/* The library's only process-wide state, for fork(): a registry of live
 * pools, and an epoch counter bumped in every child. Before fork() the
 * prepare handler takes every pool's locks, so the child never inherits a
 * lock held by a thread that does not exist there; both sides release them
 * afterwards. A pool then compares the epoch with the one it saw last to
 * notice, at its next call, that it runs in a child. Lock order: the
 * registry mutex, then each pool's mu, then its ev_mu. */
atomic_uint cpool__fork_epoch;
pthread_once_t cpool__atfork_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static cpool *g_registry;

static void on_fork_prepare(void)
{
    pthread_mutex_lock(&g_registry_mu);
    for (cpool *p = g_registry; p != NULL; p = p->reg_next) {
        cpool__lock(p);
        pthread_mutex_lock(&p->ev_mu);
    }
}

static void release_all_after_fork(void)
{
    for (cpool *p = g_registry; p != NULL; p = p->reg_next) {
        pthread_mutex_unlock(&p->ev_mu);
        cpool__unlock(p);
    }
    pthread_mutex_unlock(&g_registry_mu);
}

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&cpool__fork_epoch, 1, memory_order_relaxed);
    release_all_after_fork();
}

void cpool__register_atfork(void)
{
    pthread_atfork(on_fork_prepare, release_all_after_fork, on_fork_child);
}

void cpool__registry_add(cpool *p)
{
    pthread_mutex_lock(&g_registry_mu);
    p->reg_prev = NULL;
    p->reg_next = g_registry;
    if (g_registry != NULL)
        g_registry->reg_prev = p;
    g_registry = p;
    pthread_mutex_unlock(&g_registry_mu);
}

void cpool__registry_remove(cpool *p)
{
    pthread_mutex_lock(&g_registry_mu);
    if (p->reg_prev != NULL)
        p->reg_prev->reg_next = p->reg_next;
    else
        g_registry = p->reg_next;
    if (p->reg_next != NULL)
        p->reg_next->reg_prev = p->reg_prev;
    pthread_mutex_unlock(&g_registry_mu);
}

void cpool__check_fork_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    if (fork_pending(p))
        after_fork_relock(p);
}

/* In a forked child: every connection belongs to the parent's server
 * sessions. Drop them without I/O (abandon), forget the parent's waiters and
 * in-flight establishments (their threads do not exist here), bump the
 * generation and restart the background thread. The pool keeps its state so
 * the child can go on using it. */
/* Every timed wait of the pool uses CLOCK_MONOTONIC deadlines. */
void cpool__init_monotonic_cond(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
}

static void after_fork_relock(cpool *p)
{
    CPOOL_ASSERT_HELD(p);
    atomic_store_explicit(&p->fork_epoch,
                          atomic_load_explicit(&cpool__fork_epoch, memory_order_relaxed),
                          memory_order_relaxed);
    /* The parent's maintenance thread may have been waiting on this; it does
     * not exist here, so start from a fresh condition variable. */
    cpool__init_monotonic_cond(&p->maint_cv);
    cpool__init_monotonic_cond(&p->drain_cv);
    p->maint_running = false;
    p->wq_head = p->wq_tail = NULL;
    p->wq_picked = NULL;
    atomic_store(&p->nwaiting, 0);
    /* The child's CPU time starts from zero: measure afresh. */
    p->cpu_prev.at_ns = 0;
    while (p->available.head != NULL)
        cpool__abandon_locked(p, p->available.head);
    while (p->pending.head != NULL) /* no handle yet: its connect runs in
                                       a parent thread that is not here */
        cpool__abandon_locked(p, p->pending.head);
    while (p->in_use.head != NULL) {
        cpool_conn *c = p->in_use.head;
        list_remove(&p->in_use, c);
        c->svc = NULL;
        c->state = CONN_ORPHANED;
        atomic_store_explicit(&c->leased, LEASE_ORPHAN, memory_order_relaxed);
        list_push_head(&p->orphans, c);
    }
    /* Leases reclaimed in the parent: here too the session is the
     * parent's, so they are abandoned, not closed, when they come back. */
    for (cpool_conn *c = p->orphans.head; c != NULL; c = c->next) {
        c->reclaimed = false;
        cpool__unassign_locked(c); /* no tenant holds it here */
    }
    for (tenant *t = p->tenant_list; t != NULL; t = t->next)
        t->waiting = 0; /* the parent's waiters are not here */
    /* A probe in flight belonged to a parent thread: without this, the
     * child would wait for its result forever. */
    p->probing = false;
    while (p->services != NULL) {
        service *s = p->services;
        p->services = s->next;
        free(s);
    }
    p->generation++;
    cpool__gate_locked(p);
    if (p->state != CPOOL_STATE_CLOSED)
        cpool__start_maintenance_locked(p);
    if (p->observed) {
        cpool_event ev;
        cpool__event_init(p, &ev, CPOOL_EV_POOL_CLEARED);
        cpool__emit_relock(p, &ev);
    }
}
