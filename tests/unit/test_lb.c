/* test_lb.c -- load-balanced mode: per-service generations, the service map
 * and its entry removal, the split between cpool_clear and
 * cpool_clear_service. None of it has an official unit test (the LB tests
 * need a real load-balanced deployment). The in-memory server hands out
 * service ids round-robin, so connection k (from 0) gets ids[k % n]. */
#include "test.h"

static const char *const AB[] = {"A", "B"};
static const char *const ONLY_A[] = {"A"};

/* The shared fixture in load-balanced mode, on a server that hands out
 * `ids` (none: a server without LB support). */
static void lb_fixture_init(test_fixture *f, const char *const *ids, size_t nids)
{
    test_fixture_init(f);
    cpool_mem_set_service_ids(f->mem, ids, nids);
    f->opts.load_balanced = true;
}

static bool is_service(cpool_conn *c, const char *sid)
{
    const char *s = cpool_conn_service_id(c);
    return s != NULL && strcmp(s, sid) == 0;
}

/* Two leases on a server handing out {A, B}: one of each service, in
 * whichever order the server gave them. */
static void checkout_a_and_b(test_fixture *f, cpool_conn **a, cpool_conn **b)
{
    cpool_conn *x = test_checkout(f->pool), *y = test_checkout(f->pool);
    *a = is_service(x, "A") ? x : y;
    *b = *a == x ? y : x;
    ASSERT_TRUE(is_service(*a, "A"));
    ASSERT_TRUE(is_service(*b, "B"));
}

TEST(clear_service_bumps_only_that_service)
{
    test_fixture f;
    lb_fixture_init(&f, AB, 2);
    test_fixture_start(&f);
    cpool_conn *a[2] = {NULL, NULL}, *b[2] = {NULL, NULL};
    int na = 0, nb = 0;
    for (int i = 0; i < 4; i++) {
        cpool_conn *c = test_checkout(f.pool);
        ASSERT_EQ(0, cpool_conn_generation(c));
        if (is_service(c, "A") && na < 2)
            a[na++] = c;
        else if (is_service(c, "B") && nb < 2)
            b[nb++] = c;
        else
            FAIL("connection %d has service id \"%s\"", i,
                 cpool_conn_service_id(c) ? cpool_conn_service_id(c) : "(null)");
    }
    uint64_t a_avail_id = cpool_conn_id(a[1]), b_avail_id = cpool_conn_id(b[1]);
    uint64_t a_held_id = cpool_conn_id(a[0]);
    /* One of each service available, one of each in use; the in-use A keeps
     * A's map entry alive across the clear. */
    test_checkin(f.pool, a[1], 0);
    test_checkin(f.pool, b[1], 0);
    cpool_counts before = test_counts(f.pool);

    ASSERT_OK(cpool_clear_service(f.pool, "A", 0, NULL, NULL));
    cpool_counts after = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_READY, after.state); /* not paused */
    ASSERT_EQ(before.total, after.total);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_POOL_CLEARED, 0, &ev));
    ASSERT_TRUE(ev.has_service_id);
    ASSERT_STR_EQ("A", ev.service_id);
    ASSERT_FALSE(ev.interrupt_in_use);
    ASSERT_EQ(1, test_rec_count(&f.rec, CPOOL_EV_POOL_READY)); /* no re-ready */

    /* A's available connection is stale now, B's is not. */
    ASSERT_OK(cpool_maintain(f.pool, NULL));
    ASSERT_TRUE(test_rec_find_closed(&f.rec, a_avail_id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    ASSERT_FALSE(test_rec_find_closed(&f.rec, b_avail_id, &ev));
    ASSERT_EQ(1, test_counts(f.pool).available);

    cpool_conn *c = test_checkout(f.pool);
    ASSERT_EQ(b_avail_id, cpool_conn_id(c));
    ASSERT_EQ(0, cpool_conn_generation(c));

    /* New connections: A's get the bumped generation, B's the old one. */
    cpool_conn *fresh[4];
    int nfresh = 0;
    bool seen_a = false, seen_b = false;
    while (nfresh < 4 && !(seen_a && seen_b)) {
        cpool_conn *n = test_checkout(f.pool);
        fresh[nfresh++] = n;
        if (is_service(n, "A")) {
            seen_a = true;
            ASSERT_EQ(1, cpool_conn_generation(n));
        } else {
            ASSERT_TRUE(is_service(n, "B"));
            seen_b = true;
            ASSERT_EQ(0, cpool_conn_generation(n));
        }
    }
    ASSERT_TRUE(seen_a && seen_b);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));

    test_checkin(f.pool, a[0], 0); /* stale: closed */
    ASSERT_TRUE(test_rec_find_closed(&f.rec, a_held_id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    uint64_t b_held_id = cpool_conn_id(b[0]);
    test_checkin(f.pool, b[0], 0); /* current: kept */
    ASSERT_FALSE(test_rec_find_closed(&f.rec, b_held_id, &ev));
    test_checkin(f.pool, c, 0);
    for (int i = 0; i < nfresh; i++)
        test_checkin(f.pool, fresh[i], 0);
    ASSERT_EQ(2, test_rec_count_closed(&f.rec, CPOOL_CLOSE_STALE));
    test_fixture_free(&f);
}

TEST(clear_service_keeps_waiters)
{
    test_fixture f;
    lb_fixture_init(&f, AB, 2);
    f.opts.max_pool_size = 2;
    test_fixture_start(&f);
    cpool_conn *a, *b;
    checkout_a_and_b(&f, &a, &b);

    test_job job;
    test_job_start(&job, f.pool, 5000);
    WAIT_UNTIL(test_counts(f.pool).waiting == 1, 2000);
    ASSERT_OK(cpool_clear_service(f.pool, "A", 0, NULL, NULL));
    /* Unlike cpool_clear, the wait queue is left alone. */
    test_sleep_ms(50);
    ASSERT_FALSE(atomic_load(&job.done));
    ASSERT_EQ(1, test_counts(f.pool).waiting);
    ASSERT_EQ(CPOOL_STATE_READY, test_counts(f.pool).state);

    uint64_t b_id = cpool_conn_id(b);
    test_checkin(f.pool, b, 0);
    test_job_join(&job, 2000);
    ASSERT_OK_E(job.rc, &job.err);
    ASSERT_EQ(b_id, cpool_conn_id(job.conn));
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_FAILED));
    test_checkin(f.pool, job.conn, 0);
    test_checkin(f.pool, a, 0);
    test_fixture_free(&f);
}

TEST(clear_modes_are_exclusive)
{
    test_fixture f;
    lb_fixture_init(&f, AB, 2);
    test_fixture_start(&f);
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_EINVAL, cpool_clear(f.pool, 0, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, e.code);
    ASSERT_RC(CPOOL_EINVAL, cpool_clear_service(f.pool, NULL, 0, NULL, &e));
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_READY, n.state);
    ASSERT_EQ(0, n.generation);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    test_fixture_free(&f);

    /* The same server outside LB mode: no per-service clear, and no
     * service id on the leases even though the server sends one. */
    lb_fixture_init(&f, AB, 2);
    f.opts.load_balanced = false;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_NULL(cpool_conn_service_id(c));
    ASSERT_RC(CPOOL_EINVAL, cpool_clear_service(f.pool, "A", 0, NULL, &e));
    ASSERT_RC(CPOOL_EINVAL, e.code);
    n = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_READY, n.state);
    ASSERT_EQ(0, n.generation);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

TEST(service_generation_dropped_when_unused)
{
    test_fixture f;
    lb_fixture_init(&f, ONLY_A, 1);
    test_fixture_start(&f);
    cpool_conn *a1 = test_checkout(f.pool);
    ASSERT_EQ(0, cpool_conn_generation(a1));
    ASSERT_OK(cpool_clear_service(f.pool, "A", 0, NULL, NULL));

    /* The entry lives while A has a connection: the bump sticks. */
    cpool_conn *a2 = test_checkout(f.pool);
    ASSERT_EQ(1, cpool_conn_generation(a2));
    uint64_t a1_id = cpool_conn_id(a1);
    test_checkin(f.pool, a1, 0);
    test_event ev;
    ASSERT_TRUE(test_rec_find_closed(&f.rec, a1_id, &ev));
    ASSERT_EQ(CPOOL_CLOSE_STALE, ev.reason);
    cpool_conn *a3 = test_checkout(f.pool);
    ASSERT_EQ(1, cpool_conn_generation(a3));

    /* Close A's last connections: its count reaches 0 and the entry goes,
     * so the next connection to A starts again from generation 0. */
    test_checkin(f.pool, a2, CPOOL_CHECKIN_BROKEN);
    test_checkin(f.pool, a3, CPOOL_CHECKIN_BROKEN);
    ASSERT_EQ(0, test_counts(f.pool).total);
    cpool_conn *a4 = test_checkout(f.pool);
    ASSERT_TRUE(is_service(a4, "A"));
    ASSERT_EQ(0, cpool_conn_generation(a4));
    test_checkin(f.pool, a4, 0);
    ASSERT_EQ(1, test_counts(f.pool).available); /* generation 0 is current */
    test_fixture_free(&f);
}

TEST(missing_service_id_fails_establishment)
{
    test_fixture f;
    lb_fixture_init(&f, NULL, 0); /* the server does not support LB mode */
    test_fixture_start(&f);
    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 5000, &c, &e));
    ASSERT_NULL(c);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CHECKED_OUT));
    ASSERT_EQ(0, test_counts(f.pool).total);
    ASSERT_EQ(0, test_mem_stats(f.mem).open); /* the handle was not kept */

    cpool_mem_set_service_ids(f.mem, ONLY_A, 1);
    c = test_checkout(f.pool);
    ASSERT_TRUE(is_service(c, "A"));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(clear_service_interrupts_only_that_service)
{
    test_fixture f;
    lb_fixture_init(&f, AB, 2);
    f.opts.maintenance_interval_ms = 10000;
    test_fixture_start(&f);
    cpool_conn *a, *b;
    checkout_a_and_b(&f, &a, &b);

    ASSERT_OK(cpool_clear_service(f.pool, "A", CPOOL_CLEAR_INTERRUPT_IN_USE,
                                  NULL, NULL));
    WAIT_UNTIL(cpool_mem_conn_interrupted(cpool_conn_native(a)), 2000);
    test_sleep_ms(100);
    ASSERT_FALSE(cpool_mem_conn_interrupted(cpool_conn_native(b)));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_POOL_CLEARED, 0, &ev));
    ASSERT_TRUE(ev.interrupt_in_use);
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, 0);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}


/* With clear_on_connect_error, an unlabelled establishment error clears the
 * pool "as SDAM does". In load-balanced mode SDAM never uses the pool-wide
 * clear (CMAP: the non-LB clear is never used in LB mode): errors before or
 * during the hello get no SDAM handling at all, errors after it (auth) clear
 * only that service. Either way the pool must stay ready. */
static void expect_lb_pool_kept(cpool_phase phase, cpool_fail_kind kind)
{
    test_fixture f;
    lb_fixture_init(&f, AB, 2);
    f.opts.clear_on_connect_error = true;
    test_fixture_start(&f);
    test_fail_next_handshake(f.mem, phase, kind);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 5000, &c, NULL));
    cpool_counts n = test_counts(f.pool);
    if (n.state != CPOOL_STATE_READY)
        FAIL("a %d/%d establishment error paused the load-balanced pool "
             "(state %d, generation %llu)",
             (int)phase, (int)kind, (int)n.state,
             (unsigned long long)n.generation);
    test_event ev;
    for (size_t i = 0; test_rec_find(&f.rec, CPOOL_EV_POOL_CLEARED, i, &ev); i++)
        ASSERT_TRUE(ev.has_service_id); /* only a per-service clear */
    c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(connect_error_never_pauses_lb_pool)
{
    expect_lb_pool_kept(CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_SERVER);
    expect_lb_pool_kept(CPOOL_PHASE_AUTH, CPOOL_FAIL_AUTH);
}

TEST_MAIN()
