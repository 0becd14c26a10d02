/* test_backpressure.c -- the CMAP backpressure labels per failure phase and
 * kind. The official tests check them only against a real server, and the
 * "no label" cases (DNS, certificate, authentication) not at all. Each case
 * injects one handshake failure through the in-memory fail point and checks
 * the labels on the checkout's error and on the events that carry it. */
#include "test.h"

#define BOTH_LABELS (CPOOL_LABEL_SYSTEM_OVERLOADED | CPOOL_LABEL_RETRYABLE)

/* Starts the shared fixture's pool, fails its next establishment in `phase`
 * with `kind` and returns the error of the checkout that ran into it. With
 * clear_on_connect_error off the pool stays ready and only the labels are
 * seen; the cases about the option turn it on. */
static cpool_error failed_checkout(test_fixture *f, bool clear_on_error,
                                   cpool_phase phase, cpool_fail_kind kind)
{
    test_fixture_init(f);
    f->opts.clear_on_connect_error = clear_on_error;
    test_fixture_start(f);
    test_fail_next_handshake(f->mem, phase, kind);

    cpool_conn *c = NULL;
    cpool_error e;
    memset(&e, 0, sizeof e);
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f->pool, 5000, &c, &e));
    ASSERT_NULL(c);
    return e;
}

/* One failed checkout: its error, the ConnectionClosed(error) and the
 * ConnectionCheckOutFailed(connectionError) all carry the same labels. */
static void check_labels(cpool_phase phase, cpool_fail_kind kind,
                         unsigned expected)
{
    test_fixture f;
    cpool_error e = failed_checkout(&f, false, phase, kind);
    ASSERT_RC(CPOOL_ECONNECT, e.code);
    ASSERT_EQ(expected, e.labels);
    ASSERT_EQ(phase, e.phase);
    ASSERT_EQ(kind, e.kind);
    ASSERT_EQ(91, e.native);
    ASSERT_TRUE(e.message[0] != '\0');
    ASSERT_EQ(expected != 0, cpool_is_backpressure(phase, kind));

    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0, &ev));
    ASSERT_EQ(CPOOL_CHECKOUT_CONN_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_RC(CPOOL_ECONNECT, ev.error.code);
    ASSERT_EQ(expected, ev.error.labels);
    ASSERT_EQ(phase, ev.error.phase);
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_EQ(expected, ev.error.labels);
    ASSERT_EQ(kind, ev.error.kind);

    /* The option is off: nothing cleared, and the fail point is spent. */
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_READY, n.state);
    ASSERT_EQ(0, n.generation);
    ASSERT_EQ(0, n.total);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(connect_network) { check_labels(CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK, BOTH_LABELS); }
TEST(connect_timeout) { check_labels(CPOOL_PHASE_CONNECT, CPOOL_FAIL_TIMEOUT, BOTH_LABELS); }
TEST(tls_network) { check_labels(CPOOL_PHASE_TLS, CPOOL_FAIL_NETWORK, BOTH_LABELS); }
TEST(tls_timeout) { check_labels(CPOOL_PHASE_TLS, CPOOL_FAIL_TIMEOUT, BOTH_LABELS); }
TEST(handshake_network) { check_labels(CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_NETWORK, BOTH_LABELS); }
TEST(handshake_timeout) { check_labels(CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_TIMEOUT, BOTH_LABELS); }
TEST(dns_unlabelled) { check_labels(CPOOL_PHASE_DNS, CPOOL_FAIL_DNS, 0); }
TEST(tls_certificate_unlabelled) { check_labels(CPOOL_PHASE_TLS, CPOOL_FAIL_CERTIFICATE, 0); }
TEST(auth_failure_unlabelled) { check_labels(CPOOL_PHASE_AUTH, CPOOL_FAIL_AUTH, 0); }
/* Authentication comes after the hello: even a network error there is not
 * taken as overload, so SDAM still clears the pool. */
TEST(auth_network_unlabelled) { check_labels(CPOOL_PHASE_AUTH, CPOOL_FAIL_NETWORK, 0); }
TEST(handshake_server_error_unlabelled) { check_labels(CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_SERVER, 0); }

TEST(population_error_labelled)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.clear_on_connect_error = false;
    f.opts.min_pool_size = 1;
    test_fixture_start(&f);
    test_fail_next_handshake(f.mem, CPOOL_PHASE_CONNECT, CPOOL_FAIL_NETWORK);
    /* A background establishment has no caller: the labels travel on the
     * ConnectionClosed event only. */
    (void)cpool_maintain(f.pool, NULL);
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_EQ(CPOOL_CLOSE_ERROR, ev.reason);
    ASSERT_TRUE(ev.has_error);
    ASSERT_EQ(BOTH_LABELS, ev.error.labels);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_CHECKOUT_STARTED));
    for (int i = 0; i < 5 && test_counts(f.pool).available < 1; i++)
        (void)cpool_maintain(f.pool, NULL);
    ASSERT_EQ(1, test_counts(f.pool).available);
    test_fixture_free(&f);
}

TEST(clear_on_connect_error_clears_unlabelled)
{
    test_fixture f;
    cpool_error e = failed_checkout(&f, true, CPOOL_PHASE_AUTH, CPOOL_FAIL_AUTH);
    ASSERT_EQ(0, e.labels);
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_PAUSED, n.state);
    ASSERT_EQ(1, n.generation);
    /* CMAP order when the pool is cleared by the establishment error:
     * PoolCleared, then ConnectionClosed(error), then CheckOutFailed. */
    long cleared = test_rec_index(&f.rec, CPOOL_EV_POOL_CLEARED, 0);
    long closed = test_rec_index(&f.rec, CPOOL_EV_CONN_CLOSED, 0);
    long failed = test_rec_index(&f.rec, CPOOL_EV_CHECKOUT_FAILED, 0);
    ASSERT_GE(cleared, 0);
    ASSERT_LT(cleared, closed);
    ASSERT_LT(closed, failed);
    test_ready(f.pool);
    cpool_conn *c = test_checkout(f.pool);
    ASSERT_EQ(1, cpool_conn_generation(c));
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(clear_on_connect_error_spares_backpressure)
{
    test_fixture f;
    cpool_error e =
        failed_checkout(&f, true, CPOOL_PHASE_CONNECT, CPOOL_FAIL_TIMEOUT);
    ASSERT_EQ(BOTH_LABELS, e.labels);
    /* An overloaded server is not a dead one: the pool stays ready. */
    cpool_counts n = test_counts(f.pool);
    ASSERT_EQ(CPOOL_STATE_READY, n.state);
    ASSERT_EQ(0, n.generation);
    ASSERT_EQ(0, test_rec_count(&f.rec, CPOOL_EV_POOL_CLEARED));
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST_MAIN()
