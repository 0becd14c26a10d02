/* cpool.hpp -- RAII handles for C++ (C++11 or later), over cpool.h.
 *
 * Header only: it adds no symbols to the library and no dependency to a
 * program. Two handles:
 *
 *   cpoolxx::pool   owns a cpool (cpool_destroy() when it goes);
 *   cpoolxx::lease  owns a checked-out connection and checks it in when it
 *                   goes out of scope -- flagged CPOOL_CHECKIN_BROKEN (so
 *                   the pool closes it) when an exception is unwinding
 *                   through the scope or mark_broken() was called, because
 *                   the session state is then unknown.
 *
 * Errors: every operation has a noexcept form that returns 0 or a CPOOL_E*
 * code and fills an optional cpool_error, exactly as the C API does. When
 * exceptions are enabled, a second form returns the handle and throws
 * cpoolxx::error (a std::runtime_error carrying the cpool_error) instead;
 * with -fno-exceptions only the first form exists.
 *
 *     cpoolxx::pool pool;
 *     cpool_error err;
 *     if (cpoolxx::pool::open("sqlite:app.db", nullptr, pool, &err) != 0) ...
 *     {
 *         cpoolxx::lease conn;
 *         if (pool.checkout(conn, 1000, &err) != 0) ...
 *         sqlite3 *db = conn.native<sqlite3>();
 *         ...
 *     } // checked in here
 *
 * The namespace is cpoolxx because `cpool` is already the C type's name.
 * Threads: as in cpool.h -- a pool may be shared, a lease is used by one
 * thread at a time, and a lease must not outlive its pool. Since 0.2.
 */
#ifndef CPOOL_HPP
#define CPOOL_HPP

#include "cpool.h"
#include "cpool_cluster.h"

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define CPOOLXX_EXCEPTIONS 1
#include <exception>
#include <stdexcept>
#include <string>
#else
#define CPOOLXX_EXCEPTIONS 0
#endif

namespace cpoolxx {

#if CPOOLXX_EXCEPTIONS
/* Thrown by the throwing forms; detail() is the C API's whole report. */
class error : public std::runtime_error {
public:
    explicit error(const cpool_error &e)
        : std::runtime_error(std::string(cpool_err_name(e.code)) + ": " + e.message),
          detail_(e)
    {
    }
    int code() const noexcept { return detail_.code; }
    const cpool_error &detail() const noexcept { return detail_; }

private:
    cpool_error detail_;
};

namespace detail {
/* Exceptions in flight now; the lease compares its creation's count with
 * its destruction's to tell an unwinding scope from a normal exit. */
inline int uncaught() noexcept
{
#if defined(__cpp_lib_uncaught_exceptions) || __cplusplus >= 201703L
    return std::uncaught_exceptions();
#else
    return std::uncaught_exception() ? 1 : 0;
#endif
}
} // namespace detail
#endif

class pool;
class cluster;

/* A checked-out connection. Move-only; empty when default-constructed,
 * moved from, or checked in. */
class lease {
public:
    lease() noexcept = default;
    lease(const lease &) = delete;
    lease &operator=(const lease &) = delete;
    lease(lease &&o) noexcept { take(o); }
    lease &operator=(lease &&o) noexcept
    {
        if (this != &o) {
            checkin(0, nullptr);
            take(o);
        }
        return *this;
    }
    ~lease()
    {
        unsigned flags = 0;
#if CPOOLXX_EXCEPTIONS
        if (detail::uncaught() > uncaught_)
            flags |= CPOOL_CHECKIN_BROKEN;
#endif
        checkin(flags, nullptr);
    }

    /* Returns the connection now (cpool_checkin). Flags add to
     * mark_broken()'s. The lease is empty afterwards, whatever the result;
     * 0 on an empty lease. */
    int checkin(unsigned flags = 0, cpool_error *err = nullptr) noexcept
    {
        if (conn_ == nullptr)
            return 0;
        if (broken_)
            flags |= CPOOL_CHECKIN_BROKEN;
        cpool_conn *c = conn_;
        ::cpool *p = pool_;
        ::cpool_cluster *cl = cluster_;
        conn_ = nullptr;
        pool_ = nullptr;
        cluster_ = nullptr;
        broken_ = false;
        /* a cluster's lease goes back through the cluster, which asks for
         * a check of its endpoint when it broke */
        return cl != nullptr ? cpool_cluster_checkin(cl, c, flags, err)
                             : cpool_checkin(p, c, flags, err);
    }

    /* The session's state is unknown (a failed statement, a protocol
     * error): the connection is closed at check-in instead of reused. */
    void mark_broken() noexcept { broken_ = true; }
    bool broken() const noexcept { return broken_; }

    cpool_conn *get() const noexcept { return conn_; }
    /* The driver's handle: conn.native<PGconn>(), native<sqlite3>(), ... */
    template <class T> T *native() const noexcept
    {
        return conn_ != nullptr ? static_cast<T *>(cpool_conn_native(conn_)) : nullptr;
    }
    std::uint64_t id() const noexcept { return conn_ != nullptr ? cpool_conn_id(conn_) : 0; }
    explicit operator bool() const noexcept { return conn_ != nullptr; }

    /* cpool_conn_recycle: closed ("recycled") when it is checked in. */
    int recycle() noexcept
    {
        return conn_ != nullptr ? cpool_conn_recycle(conn_) : CPOOL_EINVAL;
    }

    /* cpool_conn_execute: one command through the connector. */
    int execute(const char *command, cpool_error *err = nullptr) noexcept
    {
        if (conn_ == nullptr)
            return set(err, CPOOL_EINVAL, "execute: the lease is empty");
        return cpool_conn_execute(conn_, command, err);
    }

    /* A cluster's lease: the endpoint it came from (cpool_lease_origin). */
    const cpool_lease_origin &origin() const noexcept { return origin_; }

private:
    friend class pool;
    friend class cluster;
    static int set(cpool_error *err, int code, const char *msg) noexcept
    {
        if (err != nullptr) {
            *err = cpool_error();
            err->code = code;
            std::size_t i = 0;
            for (; msg[i] != '\0' && i + 1 < sizeof err->message; i++)
                err->message[i] = msg[i];
            err->message[i] = '\0';
        }
        return code;
    }
    void take(lease &o) noexcept
    {
        pool_ = o.pool_;
        conn_ = o.conn_;
        cluster_ = o.cluster_;
        origin_ = o.origin_;
        broken_ = o.broken_;
#if CPOOLXX_EXCEPTIONS
        uncaught_ = o.uncaught_;
#endif
        o.pool_ = nullptr;
        o.conn_ = nullptr;
        o.cluster_ = nullptr;
        o.broken_ = false;
    }
    void adopt(::cpool *p, cpool_conn *c) noexcept
    {
        pool_ = p;
        conn_ = c;
        broken_ = false;
#if CPOOLXX_EXCEPTIONS
        uncaught_ = detail::uncaught();
#endif
    }

    ::cpool *pool_ = nullptr;
    cpool_conn *conn_ = nullptr;
    ::cpool_cluster *cluster_ = nullptr;
    cpool_lease_origin origin_ = cpool_lease_origin();
    bool broken_ = false;
#if CPOOLXX_EXCEPTIONS
    int uncaught_ = 0;
#endif
};

/* Owns a pool. Move-only; empty when default-constructed or moved from. */
class pool {
public:
    pool() noexcept = default;
    /* Takes ownership of a pool from cpool_create()/cpool_open(). */
    explicit pool(::cpool *p) noexcept : p_(p) {}
    pool(const pool &) = delete;
    pool &operator=(const pool &) = delete;
    pool(pool &&o) noexcept : p_(o.p_) { o.p_ = nullptr; }
    pool &operator=(pool &&o) noexcept
    {
        if (this != &o) {
            reset();
            p_ = o.p_;
            o.p_ = nullptr;
        }
        return *this;
    }
    ~pool() { reset(); }

    /* cpool_open(): a ready pool for the target, into `out`. */
    static int open(const char *target, const cpool_options *opts, pool &out,
                    cpool_error *err = nullptr) noexcept
    {
        ::cpool *p = nullptr;
        int rc = cpool_open(target, opts, &p, err);
        if (rc == 0)
            out = pool(p);
        return rc;
    }
    /* cpool_create() then cpool_ready(): a serving pool, into `out`. */
    static int create(const cpool_options &opts, pool &out, cpool_error *err = nullptr) noexcept
    {
        ::cpool *p = nullptr;
        int rc = cpool_create(&opts, &p, err);
        if (rc == 0 && (rc = cpool_ready(p, err)) != 0) {
            cpool_destroy(p);
            return rc;
        }
        if (rc == 0)
            out = pool(p);
        return rc;
    }

    /* Leases a connection into `out` (any connection it held is checked in
     * first). timeout_ms as cpool_checkout(). */
    int checkout(lease &out, std::int64_t timeout_ms = -1, cpool_error *err = nullptr) noexcept
    {
        out.checkin(0, nullptr);
        if (p_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "checkout: the pool handle is empty");
        cpool_conn *c = nullptr;
        int rc = cpool_checkout(p_, timeout_ms, &c, err);
        if (rc == 0)
            out.adopt(p_, c);
        return rc;
    }
    /* The same with a label and a tenant (cpool_checkout_with). */
    int checkout(lease &out, const cpool_checkout_opts &o, cpool_error *err = nullptr) noexcept
    {
        out.checkin(0, nullptr);
        if (p_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "checkout: the pool handle is empty");
        cpool_conn *c = nullptr;
        int rc = cpool_checkout_with(p_, &o, &c, err);
        if (rc == 0)
            out.adopt(p_, c);
        return rc;
    }

    /* cpool_recycle: every connection is replaced, without a pause. */
    int recycle(std::uint32_t *marked = nullptr, cpool_error *err = nullptr) noexcept
    {
        if (p_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "recycle: the pool is empty");
        return cpool_recycle(p_, marked, err);
    }

    /* cpool_run with a callable `int fn(cpool_conn *conn, cpool_error *err)`:
     * checkout, fn, checkin, and the retries `o` asks for. An exception
     * thrown by fn closes the connection (checked in broken), ends the
     * retries and is rethrown once cpool_run has returned. */
    template <class F>
    int run(F &&fn, const cpool_run_opts *o = nullptr, cpool_error *err = nullptr)
    {
        if (p_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "run: the pool is empty");
        typedef run_call<typename std::remove_reference<F>::type> call_t;
        call_t call;
        call.fn = &fn;
        int rc = cpool_run(p_, o, &call_t::trampoline, &call, err);
#if CPOOLXX_EXCEPTIONS
        if (call.thrown)
            std::rethrow_exception(call.thrown);
#endif
        return rc;
    }

#if CPOOLXX_EXCEPTIONS
    static pool open(const char *target, const cpool_options *opts = nullptr)
    {
        pool out;
        cpool_error e;
        if (open(target, opts, out, &e) != 0)
            throw error(e);
        return out;
    }
    static pool create(const cpool_options &opts)
    {
        pool out;
        cpool_error e;
        if (create(opts, out, &e) != 0)
            throw error(e);
        return out;
    }
    lease checkout(std::int64_t timeout_ms = -1)
    {
        lease l;
        cpool_error e;
        if (checkout(l, timeout_ms, &e) != 0)
            throw error(e);
        return l;
    }
#endif

    ::cpool *get() const noexcept { return p_; }
    /* Gives up ownership; the caller destroys the pool. */
    ::cpool *release() noexcept
    {
        ::cpool *p = p_;
        p_ = nullptr;
        return p;
    }
    void reset() noexcept
    {
        if (p_ != nullptr)
            cpool_destroy(p_);
        p_ = nullptr;
    }
    explicit operator bool() const noexcept { return p_ != nullptr; }

private:
    friend class cluster;
    template <class F> struct run_call {
        F *fn = nullptr;
#if CPOOLXX_EXCEPTIONS
        std::exception_ptr thrown;
#endif
        static int trampoline(cpool_conn *conn, void *arg, cpool_error *err) noexcept
        {
            run_call *self = static_cast<run_call *>(arg);
#if CPOOLXX_EXCEPTIONS
            try {
                return (*self->fn)(conn, err);
            } catch (...) {
                self->thrown = std::current_exception();
                return lease::set(err, CPOOL_EIO, "run: the function threw an exception");
            }
#else
            return (*self->fn)(conn, err);
#endif
        }
    };

    ::cpool *p_ = nullptr;
};

/* Owns a cluster (cpool_cluster.h): a pool per endpoint of a primary and
 * its replicas. Move-only; empty when default-constructed or moved from.
 * Its leases are ordinary leases. */
class cluster {
public:
    cluster() noexcept = default;
    explicit cluster(::cpool_cluster *c) noexcept : c_(c) {}
    cluster(const cluster &) = delete;
    cluster &operator=(const cluster &) = delete;
    cluster(cluster &&o) noexcept : c_(o.c_) { o.c_ = nullptr; }
    cluster &operator=(cluster &&o) noexcept
    {
        if (this != &o) {
            reset();
            c_ = o.c_;
            o.c_ = nullptr;
        }
        return *this;
    }
    ~cluster() { reset(); }

    /* cpool_cluster_open(): a host list, or o->endpoints with target NULL. */
    static int open(const char *target, const cpool_cluster_options *o, cluster &out,
                    cpool_error *err = nullptr) noexcept
    {
        ::cpool_cluster *c = nullptr;
        int rc = cpool_cluster_open(target, o, &c, err);
        if (rc == 0)
            out = cluster(c);
        return rc;
    }

    /* Leases what `want` asks for into `out` (cpool_cluster_checkout). */
    int checkout(lease &out, cpool_want want, std::int64_t timeout_ms = -1,
                 cpool_error *err = nullptr) noexcept
    {
        cpool_cluster_checkout_opts o = cpool_cluster_checkout_opts();
        o.struct_size = sizeof o;
        o.want = want;
        o.timeout_ms = timeout_ms;
        return checkout(out, o, err);
    }
    int checkout(lease &out, const cpool_cluster_checkout_opts &o,
                 cpool_error *err = nullptr) noexcept
    {
        out.checkin(0, nullptr);
        if (c_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "checkout: the cluster handle is empty");
        cpool_conn *conn = nullptr;
        cpool_lease_origin from = cpool_lease_origin();
        int rc = cpool_cluster_checkout(c_, &o, &conn, &from, err);
        if (rc == 0) {
            out.adopt(cpool_conn_pool(conn), conn);
            out.cluster_ = c_;
            out.origin_ = from;
        }
        return rc;
    }

    /* cpool_cluster_run with a callable `int fn(cpool_conn *, cpool_error *)`;
     * an exception thrown by fn is rethrown once the run has returned. */
    template <class F>
    int run(F &&fn, const cpool_cluster_run_opts *o = nullptr, cpool_error *err = nullptr)
    {
        if (c_ == nullptr)
            return lease::set(err, CPOOL_EINVAL, "run: the cluster is empty");
        typedef pool::run_call<typename std::remove_reference<F>::type> call_t;
        call_t call;
        call.fn = &fn;
        int rc = cpool_cluster_run(c_, o, &call_t::trampoline, &call, err);
#if CPOOLXX_EXCEPTIONS
        if (call.thrown)
            std::rethrow_exception(call.thrown);
#endif
        return rc;
    }

#if CPOOLXX_EXCEPTIONS
    static cluster open(const char *target, const cpool_cluster_options *o = nullptr)
    {
        cluster out;
        cpool_error e;
        if (open(target, o, out, &e) != 0)
            throw error(e);
        return out;
    }
    lease checkout(cpool_want want, std::int64_t timeout_ms = -1)
    {
        lease l;
        cpool_error e;
        if (checkout(l, want, timeout_ms, &e) != 0)
            throw error(e);
        return l;
    }
#endif

    ::cpool_cluster *get() const noexcept { return c_; }
    ::cpool_cluster *release() noexcept
    {
        ::cpool_cluster *c = c_;
        c_ = nullptr;
        return c;
    }
    void reset() noexcept
    {
        if (c_ != nullptr)
            cpool_cluster_close(c_);
        c_ = nullptr;
    }
    explicit operator bool() const noexcept { return c_ != nullptr; }

private:
    ::cpool_cluster *c_ = nullptr;
};

} // namespace cpoolxx

#endif /* CPOOL_HPP */
