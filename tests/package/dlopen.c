/* dlopen.c -- libcpool.so loaded at run time with dlopen(), as a plugin
 * host loads it. The lock-free path keeps its thread-local slot in the
 * initial-exec TLS model (src/core/lease.h), so a libcpool.so loaded this
 * way takes it from the reserve glibc keeps in the static TLS block.
 *
 * The program links nothing of cpool: it opens the library named by its
 * argument, then leases a connection of an in-memory SQLite pool twice on
 * this thread and twice on a thread started after the dlopen(). Each
 * second lease is the first's connection, re-taken from the thread's slot;
 * every lease runs a statement. */
#include <cpool/cpool.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static __typeof__(cpool_open) *p_open;
static __typeof__(cpool_checkout) *p_checkout;
static __typeof__(cpool_checkin) *p_checkin;
static __typeof__(cpool_conn_execute) *p_execute;
static __typeof__(cpool_conn_id) *p_conn_id;
static __typeof__(cpool_destroy) *p_destroy;

static cpool *pool;

/* Two leases on the calling thread; 0 when both ran their statement on the
 * same connection. */
static int two_leases(const char *who)
{
    uint64_t ids[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        cpool_conn *c = NULL;
        cpool_error e;
        int rc = p_checkout(pool, 5000, &c, &e);
        if (rc == 0) {
            rc = p_execute(c, "SELECT 1", &e);
            ids[i] = p_conn_id(c);
            if (p_checkin(pool, c, rc != 0 ? CPOOL_CHECKIN_BROKEN : 0, NULL) != 0 && rc == 0)
                rc = -1;
        }
        if (rc != 0) {
            fprintf(stderr, "dlopen: %s lease %d: rc %d: %s\n", who, i + 1, rc, e.message);
            return 1;
        }
    }
    if (ids[0] != ids[1]) {
        fprintf(stderr, "dlopen: %s leased connections %llu, then %llu: not re-taken\n", who,
                (unsigned long long)ids[0], (unsigned long long)ids[1]);
        return 1;
    }
    return 0;
}

static void *thread_main(void *arg)
{
    (void)arg;
    return (void *)(long)two_leases("the new thread");
}

#define RESOLVE(var, name)                                                   \
    do {                                                                     \
        *(void **)&(var) = dlsym(lib, name);                                 \
        if ((var) == NULL) {                                                 \
            fprintf(stderr, "dlopen: no %s in %s: %s\n", name, argv[1], dlerror()); \
            return 1;                                                        \
        }                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: dlopen PATH-TO-libcpool.so\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    RESOLVE(p_open, "cpool_open");
    RESOLVE(p_checkout, "cpool_checkout");
    RESOLVE(p_checkin, "cpool_checkin");
    RESOLVE(p_execute, "cpool_conn_execute");
    RESOLVE(p_conn_id, "cpool_conn_id");
    RESOLVE(p_destroy, "cpool_destroy");

    cpool_error e;
    if (p_open("sqlite::memory:?maxPoolSize=2", NULL, &pool, &e) != 0) {
        fprintf(stderr, "dlopen: cpool_open: %s\n", e.message);
        return 1;
    }
    int rc = two_leases("the main thread");
    pthread_t th;
    void *trc = (void *)1L;
    if (rc == 0 && pthread_create(&th, NULL, thread_main, NULL) == 0)
        pthread_join(th, &trc);
    rc = rc != 0 || trc != NULL;
    p_destroy(pool);
    if (dlclose(lib) != 0)
        rc = 1;
    if (rc == 0)
        printf("dlopen ok: 4 leases on 2 threads, each second lease re-taken\n");
    return rc;
}
