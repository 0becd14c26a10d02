/* wake_cost.c -- what waking a sleeping thread costs on this machine: the
 * floor under every handover to a waiter that sleeps (docs/benchmarks.md).
 *
 * Two threads pass a token back and forth through two semaphores, N round
 * trips (each is two wake-ups and two sleeps), three ways: both threads
 * pinned to one CPU, pinned to two different CPUs, and left to the
 * scheduler. It prints the wall time and the process's CPU time per round
 * trip. The CPUs are the first two this process may run on; with only
 * one, the two-CPU line is skipped.
 *
 * Usage: wake_cost [N]   (default 100000) */
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct pair {
    sem_t ping, pong;
    int rounds;
    int peer_cpu; /* -1: not pinned */
} pair;

static double seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int pin(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *peer_main(void *arg)
{
    pair *p = arg;
    (void)pin(p->peer_cpu); /* checked by the caller: the CPU is allowed */
    for (int i = 0; i < p->rounds; i++) {
        while (sem_wait(&p->ping) != 0)
            ;
        sem_post(&p->pong);
    }
    return NULL;
}

/* Runs one way; returns 0, or -1 when the peer thread could not start. */
static int run(const char *name, int rounds, int self_cpu, int peer_cpu)
{
    pair p = {.rounds = rounds, .peer_cpu = peer_cpu};
    sem_init(&p.ping, 0, 0);
    sem_init(&p.pong, 0, 0);
    pthread_t th;
    if (pthread_create(&th, NULL, peer_main, &p) != 0)
        return -1;
    cpu_set_t saved;
    pthread_getaffinity_np(pthread_self(), sizeof saved, &saved);
    (void)pin(self_cpu);
    double w0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < rounds; i++) {
        sem_post(&p.ping);
        while (sem_wait(&p.pong) != 0)
            ;
    }
    double wall = seconds(CLOCK_MONOTONIC) - w0, cpu = seconds(CLOCK_PROCESS_CPUTIME_ID) - c0;
    pthread_join(th, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    sem_destroy(&p.ping);
    sem_destroy(&p.pong);
    printf("%-14s %10.2f %10.2f\n", name, wall / rounds * 1e6, cpu / rounds * 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 100000;
    if (rounds < 1) {
        fprintf(stderr, "usage: wake_cost [N]\n");
        return 2;
    }
    cpu_set_t allowed;
    if (pthread_getaffinity_np(pthread_self(), sizeof allowed, &allowed) != 0)
        CPU_ZERO(&allowed);
    int first = -1, second = -1;
    for (int c = 0; c < CPU_SETSIZE && second < 0; c++)
        if (CPU_ISSET(c, &allowed)) {
            if (first < 0)
                first = c;
            else
                second = c;
        }
    printf("# %d round trips each (two wake-ups, two sleeps); %d CPUs allowed\n", rounds,
           CPU_COUNT(&allowed));
    printf("%-14s %10s %10s\n", "threads", "wall_us", "cpu_us");
    int rc = 0;
    if (first >= 0)
        rc |= run("same CPU", rounds, first, first);
    if (second >= 0)
        rc |= run("two CPUs", rounds, first, second);
    rc |= run("scheduler", rounds, -1, -1);
    return rc == 0 ? 0 : 1;
}
