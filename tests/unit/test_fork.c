/* test_fork.c -- a pool used again in a forked child. The child shares the
 * parent's sockets, so it must drop the inherited connections without any
 * I/O on them (abandon, never close: a close would send a terminate message
 * on the parent's session) and open its own. No official test exists. The
 * in-memory server's state is copied by fork(), so the child's stats count
 * what the child did, and the parent's what the parent did. */
#include "test.h"

#include "../src/core/lease.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

/* ThreadSanitizer does not support a multi-threaded process that forks and
 * starts threads in the child (it dies, or with die_after_fork=0 confuses
 * the child's new thread with the parent's), which is exactly what a pool
 * with a maintenance thread does. Those cases are not built under TSan, so
 * not listed there either; they run in the plain and ASan builds. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#endif

/* The parent's side at fork(): its connections, all available then, and
 * the server's stats, which both sides compare against afterwards. */
typedef struct parent_state {
    uint64_t ids[4];
    size_t nids;
    cpool_mem_stats at_fork;
} parent_state;

static bool is_parents(const parent_state *p, uint64_t id)
{
    for (size_t i = 0; i < p->nids; i++)
        if (p->ids[i] == id)
            return true;
    return false;
}

/* fork() with both streams flushed first, so that the child does not print
 * the parent's buffered output a second time. */
/* fork() copies a lock that another thread holds at that instant, and a
 * child that then needs it waits forever. glibc's malloc guards itself with
 * fork handlers; the sanitizers' allocators in this toolchain do not, so
 * an ASan child that starts a thread (which allocates) can hang when the
 * parent's background thread was just allocating. The tests that are not
 * about forking a busy pool therefore fork only once every other thread is
 * asleep (state S in /proc, twice in a row), which is where the background
 * thread spends its time between runs. */
static void wait_other_threads_asleep(void)
{
    pid_t self = gettid();
    int64_t deadline = test_now_ms() + 5000;
    for (int calm = 0; calm < 2;) {
        bool asleep = true;
        DIR *d = opendir("/proc/self/task");
        if (d == NULL)
            FAIL("opendir /proc/self/task: %s", strerror(errno));
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == self)
                continue;
            char path[320], stat[256] = "";
            snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
            FILE *f = fopen(path, "r");
            if (f == NULL)
                continue; /* the thread ended */
            size_t n = fread(stat, 1, sizeof stat - 1, f);
            fclose(f);
            stat[n] = '\0';
            const char *paren = strrchr(stat, ')');
            asleep = asleep && paren != NULL && paren[1] == ' ' && paren[2] == 'S';
        }
        closedir(d);
        calm = asleep ? calm + 1 : 0;
        if (test_now_ms() > deadline)
            FAIL("another thread still running after 5 s");
        test_sleep_ms(1);
    }
}

static pid_t fork_or_fail(void)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        FAIL("fork: %s", strerror(errno));
    return pid;
}

/* Waits for the child, polling every `poll_ms`, for at most `timeout_ms` of
 * real time; past that it is killed (and reaped) and false returned. The
 * bound keeps a hung child from outliving the test as an orphan. */
static bool wait_child(pid_t pid, int64_t timeout_ms, int64_t poll_ms,
                       int *status)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        pid_t w = waitpid(pid, status, WNOHANG);
        if (w == pid)
            return true;
        if (w < 0 && errno != EINTR)
            FAIL("waitpid: %s", strerror(errno));
        if (test_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, status, 0);
            return false;
        }
        test_sleep_ms(poll_ms);
    }
}

/* The child has its own alarm and the parent waits at most 25 s, so a hang
 * on either side ends as a failure. Passes only if the child exited 0. */
static void expect_child_ok(pid_t pid)
{
    int status = 0;
    if (!wait_child(pid, 25000, 5, &status))
        FAIL("child still running after 25 s");
    if (WIFSIGNALED(status))
        FAIL("child killed by signal %d", WTERMSIG(status));
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(0, WEXITSTATUS(status));
}

/* In the child: one checkout, which must be a fresh connection, after
 * which every inherited connection was abandoned and none closed. */
static void child_checks(test_fixture *f, const parent_state *p)
{
    /* With a background thread the child may (or may not) restart one and
     * populate minPoolSize, so exact counts are only checked without. */
    bool exact = f->opts.maintenance_interval_ms < 0;
    cpool_conn *c = test_checkout(f->pool);
    uint64_t id = cpool_conn_id(c);
    if (is_parents(p, id))
        FAIL("child reused the parent's connection %llu",
             (unsigned long long)id);
    ASSERT_EQ(id, cpool_mem_conn_id(cpool_conn_native(c)));
    cpool_mem_stats s = test_mem_stats(f->mem);
    ASSERT_GE(s.abandons, p->at_fork.abandons + p->nids);
    ASSERT_EQ(p->at_fork.closes, s.closes);
    ASSERT_GT(s.connects, p->at_fork.connects);
    cpool_counts n = test_counts(f->pool);
    ASSERT_EQ(1, n.in_use);
    ASSERT_EQ(CPOOL_STATE_READY, n.state);
    if (exact) {
        ASSERT_EQ(p->at_fork.connects + 1, s.connects);
        ASSERT_EQ(0, n.available); /* the inherited ones are gone */
        ASSERT_EQ(1, n.total);
    }
    test_checkin(f->pool, c, 0);

    /* Tearing the child's pool down closes exactly what the child opened,
     * and none of the inherited connections. */
    cpool_destroy(f->pool);
    f->pool = NULL;
    s = test_mem_stats(f->mem);
    ASSERT_EQ(s.connects - p->at_fork.connects - (s.failures - p->at_fork.failures),
              s.closes - p->at_fork.closes);
    if (exact)
        ASSERT_EQ(p->at_fork.closes + 1, s.closes);
}

/* Runs child_checks in a fork and returns once the child exited 0. */
static void run_child(test_fixture *f, const parent_state *p)
{
    wait_other_threads_asleep();
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        alarm(20);
        child_checks(f, p);
        test_fixture_free(f);
        exit(0); /* a normal exit, so LeakSanitizer checks the child too */
    }
    expect_child_ok(pid);
}

/* After the child: the parent's pool is untouched and still serves its own
 * connections. */
static void parent_checks(test_fixture *f, const parent_state *p)
{
    cpool_mem_stats s = test_mem_stats(f->mem);
    ASSERT_EQ(0, s.abandons);
    ASSERT_EQ(p->at_fork.closes, s.closes);
    cpool_counts n = test_counts(f->pool);
    ASSERT_EQ(p->nids, n.available);
    cpool_conn *c = test_checkout(f->pool);
    ASSERT_TRUE(is_parents(p, cpool_conn_id(c)));
    ASSERT_EQ(0, cpool_conn_generation(c));
    test_checkin(f->pool, c, 0);
    ASSERT_EQ(p->nids, test_counts(f->pool).available);
}

TEST(child_discards_inherited_connections)
{
    test_fixture f;
    parent_state p = {.nids = 0};
    test_fixture_init(&f); /* no background thread */
    test_fixture_start(&f);
    cpool_conn *c[3];
    for (size_t i = 0; i < 3; i++) {
        c[i] = test_checkout(f.pool);
        p.ids[p.nids++] = cpool_conn_id(c[i]);
    }
    for (size_t i = 0; i < 3; i++)
        test_checkin(f.pool, c[i], 0);
    p.at_fork = test_mem_stats(f.mem);

    run_child(&f, &p);
    parent_checks(&f, &p);
    cpool_destroy(f.pool);
    f.pool = NULL;
    ASSERT_EQ(0, test_mem_stats(f.mem).open);
    ASSERT_EQ(3, test_mem_stats(f.mem).closes);
    test_fixture_free(&f);
}

/* The child moves the generation on, and with it the lock-free path's
 * gate: its own connections park again, the inherited one does not. */
TEST(child_parks_its_own_connections)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.on_event = NULL; /* unobserved: check-ins park */
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_EQ(LEASE_PARKED, atomic_load(&c->leased));
    wait_other_threads_asleep();
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        alarm(20);
        cpool_conn *d = test_checkout(f.pool);
        ASSERT_TRUE(d != c);
        ASSERT_EQ(1, cpool_conn_generation(d));
        test_checkin(f.pool, d, 0);
        ASSERT_EQ(LEASE_PARKED, atomic_load(&d->leased));
        cpool_conn *e = test_checkout(f.pool); /* taken back without the lock */
        ASSERT_TRUE(e == d);
        test_checkin(f.pool, e, 0);
        test_fixture_free(&f);
        exit(0);
    }
    expect_child_ok(pid);
    ASSERT_EQ(LEASE_PARKED, atomic_load(&c->leased)); /* the parent's is untouched */
    test_fixture_free(&f);
}

#ifndef TEST_TSAN
TEST(child_of_pool_with_maintenance_thread)
{
    test_fixture f;
    parent_state p = {.nids = 0};
    test_fixture_init(&f);
    /* The parent's background thread runs every 10 ms. The child has no
     * such thread: its pool must still serve, and destroying it must not
     * wait for a thread that does not exist there. */
    f.opts.maintenance_interval_ms = 10;
    f.opts.min_pool_size = 2;
    test_fixture_start(&f);
    WAIT_UNTIL(test_counts(f.pool).available == 2, 2000);
    cpool_conn *a = test_checkout(f.pool), *b = test_checkout(f.pool);
    p.ids[p.nids++] = cpool_conn_id(a);
    p.ids[p.nids++] = cpool_conn_id(b);
    test_checkin(f.pool, a, 0);
    test_checkin(f.pool, b, 0);
    p.at_fork = test_mem_stats(f.mem);
    ASSERT_EQ(2, p.at_fork.connects);

    run_child(&f, &p);
    parent_checks(&f, &p);
    test_fixture_free(&f);
}

/* The child's maintenance thread waits on condition variables re-created
 * after fork(); they must keep CLOCK_MONOTONIC, or every timed wait returns
 * at once and the thread spins. */
TEST(child_maintenance_thread_sleeps)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.maintenance_interval_ms = 1000;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    wait_other_threads_asleep();
    pid_t pid = fork_or_fail();
    if (pid == 0) {
        alarm(20);
        c = test_checkout(f.pool); /* notices the fork, restarts the thread */
        test_checkin(f.pool, c, 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
        test_sleep_ms(300);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        int64_t cpu_ms = ((int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 +
                          (t1.tv_nsec - t0.tv_nsec)) / 1000000;
        if (cpu_ms > 100)
            FAIL("child used %lld ms of CPU in a 300 ms sleep: a thread spins",
                 (long long)cpu_ms);
        cpool_destroy(f.pool);
        _exit(0);
    }
    int status = 0;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(0, WEXITSTATUS(status));
    test_fixture_free(&f);
}
#endif


/* ---- a lease held across fork()
 *
 * A connection checked out in the parent and still out at fork() belongs to
 * the parent's session in the child too: checking it in there must abandon
 * it (no I/O), never close it or make it available to the child. */
TEST(child_checkin_of_inherited_lease_abandons)
{
    test_fixture f;
    test_fixture_init(&f);
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    uint64_t held_id = cpool_conn_id(held);
    cpool_mem_stats at_fork = test_mem_stats(f.mem);

    pid_t pid = fork_or_fail();
    if (pid == 0) {
        alarm(20);
        ASSERT_OK(cpool_checkin(f.pool, held, 0, NULL));
        cpool_mem_stats s = test_mem_stats(f.mem);
        ASSERT_EQ(at_fork.abandons + 1, s.abandons);
        ASSERT_EQ(at_fork.closes, s.closes);
        cpool_counts n = test_counts(f.pool);
        ASSERT_EQ(0, n.total);
        cpool_conn *c = test_checkout(f.pool);
        ASSERT_NE(held_id, cpool_conn_id(c));
        test_checkin(f.pool, c, 0);
        test_fixture_free(&f);
        exit(0);
    }
    expect_child_ok(pid);
    /* In the parent the lease is as it was. */
    ASSERT_EQ(1, test_counts(f.pool).in_use);
    test_checkin(f.pool, held, 0);
    ASSERT_EQ(1, test_counts(f.pool).available);
    ASSERT_EQ(0, test_mem_stats(f.mem).abandons);
    test_fixture_free(&f);
}

/* ---- fork while other threads use the pool
 *
 * fork() copies the pool's mutex in whatever state it has at that instant.
 * If another thread holds it then, the child inherits a lock nobody will
 * ever release, and its first pool call hangs -- unless the library takes
 * its locks around fork() (pthread_atfork prepare/parent/child). Two
 * threads keep taking and returning leases and the maintenance thread runs
 * every millisecond, so across 50 forks the lock is often held at the
 * moment of a fork. The connector is the in-memory one minus check() and
 * reset(), so the busy threads never take the connector's own lock: a hang
 * can only come from the pool. */

#ifndef TEST_TSAN
static const cpool_connector *core_only_connector(void)
{
    static cpool_connector table;
    table = *cpool_mem_connector();
    table.check = NULL;
    table.reset = NULL;
    return &table;
}

typedef struct busy {
    cpool *pool;
    atomic_bool stop;
    atomic_ullong leases;
} busy;

static void *busy_main(void *arg)
{
    busy *b = arg;
    while (!atomic_load(&b->stop)) {
        cpool_conn *c = NULL;
        if (cpool_checkout(b->pool, 0, &c, NULL) == CPOOL_OK) {
            atomic_fetch_add(&b->leases, 1);
            ASSERT_OK(cpool_checkin(b->pool, c, 0, NULL));
        }
    }
    return NULL;
}

TEST(fork_while_pool_busy)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.connector = core_only_connector();
    o.max_pool_size = 2;
    o.maintenance_interval_ms = 1;
    cpool *pool = test_pool_create(&o);
    test_ready(pool);
    /* Establish both connections first: afterwards the busy threads only
     * move them between available and in use. */
    cpool_conn *a = test_checkout(pool), *b2 = test_checkout(pool);
    test_checkin(pool, a, 0);
    test_checkin(pool, b2, 0);

    busy b = {.pool = pool};
    atomic_init(&b.stop, false);
    atomic_init(&b.leases, 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        TEST_THREAD_START(&th[i], busy_main, &b);
    WAIT_UNTIL(atomic_load(&b.leases) > 1000, 5000);

    int hung = 0, failed = 0, forks = 0;
    /* Stops at the first bad child: one is proof enough, and each hang
     * costs the child's 2 s alarm. */
    for (; forks < 50 && hung + failed == 0; forks++) {
        pid_t pid = fork_or_fail();
        if (pid == 0) {
            /* Only async-signal-safe exits here: the child's copy of the
             * parent's threads' state is not to be trusted for cleanup. */
            alarm(2);
            cpool_conn *c = NULL;
            if (cpool_checkout(pool, 2000, &c, NULL) != CPOOL_OK)
                _exit(3);
            if (cpool_checkin(pool, c, 0, NULL) != CPOOL_OK)
                _exit(4);
            _exit(0);
        }
        int status = 0;
        (void)wait_child(pid, 5000, 1, &status); /* killed: signalled */
        if (WIFSIGNALED(status))
            hung++; /* SIGALRM: the child's checkout never returned */
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }
    atomic_store(&b.stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    cpool_destroy(pool);
    cpool_mem_destroy(mem);
    if (hung != 0 || failed != 0)
        FAIL("forked child %d of 50 %s", forks,
             hung ? "hung in its first pool call (a lock held at fork?)"
                  : "could not check out");
}
#endif

TEST_MAIN()
