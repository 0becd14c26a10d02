/* tenants.c -- per-tenant caps and reserved minimums, and sessions between
 * tenants: declaring tenants, the limits a checkout must respect, affinity
 * and the full session reset when a connection changes tenant. Everything
 * here needs mu. */
#include "core.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

tenant *cpool__find_tenant_locked(const cpool *p, const char *name)
{
    CPOOL_ASSERT_HELD(p);
    for (tenant *t = p->tenant_list; t != NULL; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

/* An available connection for tenant t: preferably one t used last, then
 * one nobody used since it was established, else the newest. Handing a
 * tenant its own connections keeps full session resets (see
 * cpool__tenant_switch_relock) to the times the pool must lend one across. */
cpool_conn *cpool__affine_available_locked(const cpool *p, const tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    cpool_conn *fresh = NULL;
    for (cpool_conn *c = p->available.head; c != NULL; c = c->next) {
        if (c->last_tenant == t)
            return c;
        if (fresh == NULL && c->last_tenant == NULL)
            fresh = c;
    }
    return fresh != NULL ? fresh : p->available.head;
}

/* Tenant t is about to lease c. When another tenant used c last, its session
 * is reset in full first (connector discard, outside mu, within the
 * checkout's deadline), so that nothing one tenant left in it reaches
 * another. Returns 0 to hand c out, SWITCH_CLOSED when c was closed (the
 * checkout goes on with another), CPOOL_ETIMEDOUT when no time is left
 * (c goes back). */
int cpool__tenant_switch_relock(cpool *p, cpool_conn *c, tenant *t, int64_t deadline,
                                cpool_error *ce)
{
    CPOOL_ASSERT_HELD(p);
    if (c->last_tenant == NULL || c->last_tenant == t) {
        if (c->last_tenant == t)
            t->affine++;
        return 0;
    }
    if (p->cx->abi_version < 4 || p->cx->discard == NULL) {
        cpool__err(ce, CPOOL_EIO, "connection %llu to %s: another tenant used it last, and "
                   "the %s connector cannot reset a session", (unsigned long long)c->id,
                   p->address, p->cx->name != NULL ? p->cx->name : "?");
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_SESSION, ce);
        return SWITCH_CLOSED;
    }
    if (deadline != NO_DEADLINE && cpool__now(p) >= deadline) {
        cpool__put_back_locked(p, c);
        return CPOOL_ETIMEDOUT;
    }
    cpool__unlock(p);
    ce->code = 0;
    ce->message[0] = '\0';
    int bad = p->cx->discard(p->cx_ctx, c->native, real_deadline(p, deadline), ce);
    cpool__lock(p);
    if (bad != 0) {
        if (ce->code == 0)
            cpool__err(ce, CPOOL_EIO, "discard on %s failed", p->address);
        cpool__close_conn_relock(p, c, CPOOL_CLOSE_ERROR, ce);
        return SWITCH_CLOSED;
    }
    c->last_tenant = NULL;
    t->switched++;
    return 0;
}

bool cpool__tenant_take_token_locked(cpool *p, tenant *t)
{
    CPOOL_ASSERT_HELD(p);
    if (t->budget.rate <= 0)
        return true;
    int64_t now = cpool__now(p);
    double cap = t->budget.burst > 0 ? t->budget.burst
                 : t->budget.rate >= 1 ? t->budget.rate
                                       : 1;
    t->tokens += (double)(now - t->refill_at) * t->budget.rate / 1e9;
    if (t->tokens > cap)
        t->tokens = cap;
    t->refill_at = now;
    if (t->tokens >= 1) {
        t->tokens -= 1;
        return true;
    }
    t->rate_refusals++;
    return false;
}

int cpool_tenant_budget_set(cpool *p, const char *name, const cpool_tenant_budget *b,
                            cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "tenant_budget_set");
    if (p == NULL || name == NULL || b == NULL)
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_budget_set: a pool, a tenant name and a budget are required");
    if (b->struct_size < offsetof(cpool_tenant_budget, reclaim) + sizeof b->reclaim)
        return cpool__err(err, CPOOL_EINVAL, "tenant_budget_set \"%.64s\": struct_size %zu "
                          "is too small; set it to sizeof the struct", name, b->struct_size);
    if (!(b->rate >= 0 && b->rate <= 1e9) || b->max_hold_ms < 0 ||
        b->max_hold_ms > 9000000000000000 || (b->reclaim && b->max_hold_ms == 0))
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_budget_set \"%.64s\": allowed rate 0..1e9 per second, "
                          "max_hold_ms >= 0, and reclaim only with a max_hold_ms",
                          name);
    cpool__lock(p);
    tenant *t = p->tenants ? cpool__find_tenant_locked(p, name) : NULL;
    if (t == NULL) {
        cpool__unlock(p);
        return cpool__err(err, CPOOL_EINVAL, "tenant_budget_set %s: unknown tenant \"%.64s\" "
                          "(declare it with cpool_tenant_set)", p->address, name);
    }
    t->budget = *b;
    t->budget.struct_size = sizeof t->budget;
    t->max_hold_ns = ms_to_ns(b->max_hold_ms);
    /* A new budget starts with a full bucket. */
    t->tokens = b->burst > 0 ? b->burst : b->rate >= 1 ? b->rate : 1;
    t->refill_at = cpool__now(p);
    p->tenant_holds = false;
    for (const tenant *u = p->tenant_list; u != NULL; u = u->next)
        p->tenant_holds = p->tenant_holds || u->max_hold_ns > 0;
    if (p->tenant_holds)
        cpool__kick_maintenance_locked(p);
    cpool__unlock(p);
    return 0;
}

static tenant *tenant_new_locked(cpool *p, const char *name)
{
    CPOOL_ASSERT_HELD(p);
    tenant *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->budget.struct_size = sizeof t->budget;
    if (p->tenant_tail != NULL)
        p->tenant_tail->next = t;
    else
        p->tenant_list = t;
    p->tenant_tail = t;
    return t;
}

int cpool_tenant_set(cpool *p, const char *name, uint32_t max_in_use, uint32_t min_reserved,
                     cpool_error *err)
{
    if (p != NULL && cpool__in_callback(p))
        return cpool__callback_err(p, err, "tenant_set");
    if (p == NULL || name == NULL || name[0] == '\0' || strlen(name) >= 64)
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_set: a pool and a tenant name of 1..63 bytes are required");
    if (max_in_use > 0 && min_reserved > max_in_use)
        return cpool__err(err, CPOOL_EINVAL,
                          "tenant_set \"%s\": min_reserved %u exceeds max_in_use %u", name,
                          min_reserved, max_in_use);
    cpool__lock(p);
    int rc = 0;
    if (!p->tenants && p->ever_ready) {
        rc = cpool__err(err, CPOOL_ESTATE,
                        "tenant_set %s: declare the first tenant before cpool_ready()",
                        p->address);
        goto out;
    }
    uint32_t reserved = min_reserved;
    for (tenant *u = p->tenant_list; u != NULL; u = u->next)
        if (strcmp(u->name, name) != 0)
            reserved += u->min;
    if (p->opts.max_pool_size > 0 && reserved > p->opts.max_pool_size) {
        rc = cpool__err(err, CPOOL_EINVAL,
                        "tenant_set \"%s\": guaranteed minimums (%u in all) exceed "
                        "maxPoolSize %u",
                        name, reserved, p->opts.max_pool_size);
        goto out;
    }
    if (!p->tenants) {
        /* Every lease is counted from now on: the unnamed tenant takes
         * checkouts that give none, and leases take the locked paths. */
        if (tenant_new_locked(p, "") == NULL) {
            rc = cpool__err(err, CPOOL_ENOMEM, "tenant_set: out of memory");
            goto out;
        }
        p->tenants = true;
        p->observed = true;
        cpool__set_parking(p, false);
    }
    tenant *t = cpool__find_tenant_locked(p, name);
    if (t == NULL && (t = tenant_new_locked(p, name)) == NULL) {
        rc = cpool__err(err, CPOOL_ENOMEM, "tenant_set: out of memory");
        goto out;
    }
    t->max = max_in_use;
    t->min = min_reserved;
    cpool__grant_capacity_relock(p); /* a raised cap may let a waiter in */
out:
    cpool__unlock(p);
    return rc;
}

static void tenant_stats_locked(const tenant *t, cpool_tenant_stats *out)
{
    out->max_in_use = t->max;
    out->min_reserved = t->min;
    out->in_use = t->in_use;
    out->waiting = t->waiting;
    out->checkouts_ok = t->checkouts_ok;
    out->limit_timeouts = t->limit_timeouts;
    out->switched = t->switched;
    out->affine = t->affine;
    out->checkouts = t->checkouts;
    out->waits = t->waits;
    out->wait = t->wait;
    out->rate_refusals = t->rate_refusals;
    out->holds_exceeded = t->holds_exceeded;
    out->holds_reclaimed = t->holds_reclaimed;
    out->budget = t->budget;
    out->budget.struct_size = sizeof out->budget;
}

int cpool_get_tenant_stats(cpool *p, const char *name, cpool_tenant_stats *out)
{
    if (p == NULL || name == NULL || out == NULL)
        return CPOOL_EINVAL;
    cpool__lock(p);
    tenant *t = p->tenants ? cpool__find_tenant_locked(p, name) : NULL;
    if (t != NULL)
        tenant_stats_locked(t, out);
    cpool__unlock(p);
    return t != NULL ? 0 : CPOOL_EINVAL;
}

size_t cpool__tenant_rows(cpool *p, tenant_row **out)
{
    *out = NULL;
    cpool__lock(p);
    size_t n = 0;
    for (const tenant *t = p->tenant_list; t != NULL; t = t->next)
        n++;
    tenant_row *rows = n > 0 ? calloc(n, sizeof *rows) : NULL;
    if (rows == NULL)
        n = 0;
    size_t i = 0;
    for (const tenant *t = p->tenant_list; t != NULL && i < n; t = t->next, i++) {
        memcpy(rows[i].name, t->name, sizeof rows[i].name);
        tenant_stats_locked(t, &rows[i].st);
    }
    cpool__unlock(p);
    *out = rows;
    return n;
}

const char *cpool_tenant_name(cpool *p, size_t i)
{
    if (p == NULL)
        return NULL;
    cpool__lock(p);
    const tenant *t = p->tenant_list;
    if (t != NULL)
        t = t->next; /* the unnamed tenant is not listed */
    for (; t != NULL && i > 0; i--)
        t = t->next;
    cpool__unlock(p);
    return t != NULL ? t->name : NULL;
}
