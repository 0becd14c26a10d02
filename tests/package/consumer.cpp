// consumer.cpp -- cpool from C++, built against the installed package with
// -Wall -Wextra -Werror -pedantic by g++ and clang++, in C++11 and C++17,
// with and without exceptions. It includes every public header, and checks
// what cpool.hpp promises: a lease checks in on scope exit, is closed
// (checked in broken) when an exception unwinds through it or it was marked
// broken, moves without double check-ins, errors come back as codes (or as
// cpoolxx::error where exceptions exist), pool::run calls a lambda around a
// lease (an exception inside it reaches the caller) and recycle() marks;
// and a cluster of in-memory servers: a lease by role, its origin, back
// through the cluster.
#include <cpool/cpool.h>
#include <cpool/cpool.hpp>
#include <cpool/cpool_cluster.h>
#include <cpool/cpool_connector.h>
#include <cpool/cpool_event.h>
#include <cpool/cpool_mem.h>
#include <cpool/cpool_pg.h>
#include <cpool/cpool_redis.h>
#include <cpool/cpool_sqlite.h>
#include <cpool/cpool_uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

static int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::fprintf(stderr, "consumer.cpp:%d: check failed: %s\n", __LINE__, #cond); \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static cpool_counts counts(const cpoolxx::pool &p)
{
    cpool_counts c;
    cpool_get_counts(p.get(), &c);
    return c;
}

static std::uint64_t closed_total(const cpoolxx::pool &p)
{
    cpool_stats s;
    std::memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (cpool_get_stats(p.get(), &s) != 0)
        return ~0ull;
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < CPOOL_CLOSE_REASON_SLOTS; i++)
        n += s.closed[i];
    return n;
}

// A real database: an SQLite lease, a statement, the native handle.
static void sqlite_lease()
{
    cpoolxx::pool pool;
    cpool_error err;
    CHECK(cpoolxx::pool::open("sqlite::memory:?maxPoolSize=2", nullptr, pool, &err) == 0);
    CHECK(static_cast<bool>(pool));
    {
        cpoolxx::lease conn;
        CHECK(!conn);
        CHECK(pool.checkout(conn, 5000, &err) == 0);
        CHECK(static_cast<bool>(conn));
        CHECK(conn.native<sqlite3>() != nullptr);
        CHECK(conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)", &err) == 0);
        CHECK(counts(pool).in_use == 1);
    }
    CHECK(counts(pool).in_use == 0); // checked in at scope exit
}

// The in-memory connector, where the pool's counters show every step.
static cpoolxx::pool mem_pool(unsigned max)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.max_pool_size = max;
    o.maintenance_interval_ms = -1;
    o.ignore_env = true;
    o.target = "mem://cxx";
    o.connector = cpool_connector_for(o.target);
    cpoolxx::pool pool;
    cpool_error err;
    CHECK(cpoolxx::pool::create(o, pool, &err) == 0);
    return pool;
}

static void scope_exit_and_broken()
{
    cpoolxx::pool pool = mem_pool(1);
    std::uint64_t first;
    {
        cpoolxx::lease a;
        CHECK(pool.checkout(a, 1000) == 0);
        first = a.id();
    }
    {
        cpoolxx::lease a;
        CHECK(pool.checkout(a, 1000) == 0);
        CHECK(a.id() == first); // the same connection, reused
        a.mark_broken();
    }
    CHECK(closed_total(pool) == 1); // broken: closed, not reused
    cpoolxx::lease b;
    CHECK(pool.checkout(b, 1000) == 0);
    CHECK(b.id() != first);
    CHECK(b.checkin() == 0);
    CHECK(!b);
    CHECK(b.checkin() == 0); // an empty lease: nothing to return
}

static void moves_and_errors()
{
    cpoolxx::pool pool = mem_pool(1);
    cpoolxx::lease a;
    CHECK(pool.checkout(a, 1000) == 0);
    cpoolxx::lease b(std::move(a));
    CHECK(!a && b);
    cpoolxx::lease c;
    c = std::move(b);
    CHECK(!b && c);
    CHECK(counts(pool).in_use == 1);

    // Pool full: the error comes back as a code, the lease stays empty.
    cpoolxx::lease d;
    cpool_error err;
    CHECK(pool.checkout(d, 0, &err) == CPOOL_ETIMEDOUT);
    CHECK(err.code == CPOOL_ETIMEDOUT);
    CHECK(!d);

    // cpool_checkout_here works in C++ (no compound literal).
    cpool_conn *raw = nullptr;
    CHECK(cpool_checkout_here(pool.get(), 0, &raw, &err) == CPOOL_ETIMEDOUT);
    c = cpoolxx::lease(); // moving an empty lease in checks c's in
    CHECK(counts(pool).in_use == 0);
    CHECK(cpool_checkout_here(pool.get(), 1000, &raw, &err) == 0);
    CHECK(cpool_checkin(pool.get(), raw, 0, nullptr) == 0);

    // An empty pool handle refuses politely.
    cpoolxx::pool empty;
    CHECK(empty.checkout(d, 0, &err) == CPOOL_EINVAL);
    cpoolxx::pool moved(std::move(pool));
    CHECK(!pool && moved);
    CHECK(counts(moved).total == 1);
}

// pool::run: a callable around a lease; recycling a lease and the pool.
static void run_and_recycle()
{
    cpoolxx::pool pool = mem_pool(2);
    std::uint64_t seen = 0;
    CHECK(pool.run([&](cpool_conn *c, cpool_error *) -> int {
        seen = cpool_conn_id(c);
        return 0;
    }) == 0);
    CHECK(seen != 0);
    CHECK(counts(pool).in_use == 0);
    cpool_run_opts o;
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.timeout_ms = 1000;
    o.retries = 2;
    int calls = 0;
    CHECK(pool.run(
              [&](cpool_conn *, cpool_error *err) -> int {
                  if (++calls < 3) {
                      err->code = CPOOL_EIO;
                      err->kind = CPOOL_FAIL_NETWORK;
                      err->labels = CPOOL_LABEL_RETRYABLE;
                      return CPOOL_EIO;
                  }
                  return 0;
              },
              &o) == 0);
    CHECK(calls == 3);
    std::uint64_t before = closed_total(pool);
    {
        cpoolxx::lease l;
        CHECK(pool.checkout(l, 1000) == 0);
        CHECK(l.recycle() == 0);
    }
    CHECK(closed_total(pool) == before + 1); // recycled at check-in
    {
        cpoolxx::lease l;
        CHECK(pool.checkout(l, 1000) == 0); // a new one, kept
    }
    std::uint32_t marked = 99;
    CHECK(pool.recycle(&marked) == 0);
    CHECK(marked == 1);
    cpoolxx::pool empty;
    CHECK(empty.recycle() == CPOOL_EINVAL);
}

#if CPOOLXX_EXCEPTIONS
static void exceptions()
{
    cpoolxx::pool pool = mem_pool(1);
    std::uint64_t id = 0;
    try {
        cpoolxx::lease l = pool.checkout(1000);
        id = l.id();
        throw std::runtime_error("query failed halfway");
    } catch (const std::runtime_error &) {
    }
    CHECK(counts(pool).in_use == 0);
    CHECK(closed_total(pool) == 1); // unwound: checked in broken
    cpoolxx::lease held = pool.checkout(1000);
    CHECK(held.id() != id);
    bool thrown = false;
    try {
        cpoolxx::lease again = pool.checkout(0);
    } catch (const cpoolxx::error &e) {
        thrown = e.code() == CPOOL_ETIMEDOUT && std::strstr(e.what(), "CPOOL_ETIMEDOUT");
    }
    CHECK(thrown);
    thrown = false;
    try {
        cpoolxx::pool bad = cpoolxx::pool::open("nosuchscheme://x");
    } catch (const cpoolxx::error &e) {
        thrown = e.code() == CPOOL_EINVAL;
    }
    CHECK(thrown);
    // An exception thrown inside run: the connection is closed and the
    // exception reaches the caller, past the C frames.
    std::uint64_t before = closed_total(pool);
    held.checkin();
    thrown = false;
    try {
        pool.run([](cpool_conn *, cpool_error *) -> int {
            throw std::runtime_error("inside run");
        });
    } catch (const std::runtime_error &e) {
        thrown = std::strcmp(e.what(), "inside run") == 0;
    }
    CHECK(thrown);
    CHECK(closed_total(pool) == before + 1);
    CHECK(counts(pool).in_use == 0);
}
#endif

static void cluster_leases()
{
    cpool_mem *m[2];
    cpool_cluster_endpoint ep[2];
    const char *targets[2] = {"mem://cxx-primary", "mem://cxx-replica"};
    for (int i = 0; i < 2; i++) {
        CHECK(cpool_mem_create(&m[i]) == 0);
        cpool_mem_server sv;
        std::memset(&sv, 0, sizeof sv);
        sv.role = i == 0 ? CPOOL_ROLE_PRIMARY : CPOOL_ROLE_REPLICA;
        sv.epoch = i == 0 ? 1 : 0;
        cpool_mem_set_server(m[i], &sv);
        ep[i].target = targets[i];
        ep[i].connector = cpool_mem_connector();
        ep[i].connector_ctx = m[i];
    }
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    o.endpoints = ep;
    o.nendpoints = 2;
    {
        cpoolxx::cluster c;
        cpool_error err;
        CHECK(cpoolxx::cluster::open(nullptr, &o, c, &err) == 0);
        CHECK(cpool_cluster_wait(c.get(), CPOOL_WANT_REPLICA, 5000, &err) == 0);
        {
            cpoolxx::lease r;
            CHECK(c.checkout(r, CPOOL_WANT_REPLICA, 5000, &err) == 0);
            CHECK(r.origin().endpoint == 1);
            CHECK(r.origin().role == CPOOL_ROLE_REPLICA);
            CHECK(r.execute("PING", &err) == 0);
        } // back through the cluster
        cpool_endpoint_info in;
        CHECK(cpool_cluster_endpoint_info(c.get(), 1, &in) == 0);
        cpool_counts k;
        cpool_get_counts(in.pool, &k);
        CHECK(k.in_use == 0 && k.available == 1);
        int calls = 0;
        CHECK(cpool_cluster_wait(c.get(), CPOOL_WANT_PRIMARY, 5000, &err) == 0);
        CHECK(c.run([&calls](cpool_conn *, cpool_error *) { return ++calls, 0; }) == 0);
        CHECK(calls == 1);
    }
    for (int i = 0; i < 2; i++)
        cpool_mem_destroy(m[i]);
}

int main()
{
    CHECK(std::strcmp(cpool_version(), CPOOL_VERSION_STRING) == 0);
    sqlite_lease();
    scope_exit_and_broken();
    moves_and_errors();
    run_and_recycle();
    cluster_leases();
#if CPOOLXX_EXCEPTIONS
    exceptions();
#endif
    if (failures != 0)
        return 1;
    std::printf("consumer.cpp ok: cpool %s, C++ %ld, exceptions %s\n", cpool_version(),
                static_cast<long>(__cplusplus), CPOOLXX_EXCEPTIONS ? "on" : "off");
    return 0;
}
