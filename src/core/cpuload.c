/* cpuload.c -- how much of the machine's CPU other processes use, for the
 * early wake-ups of handoff turns (early_wake = auto, docs/design.md).
 *
 * A waiter woken ahead of its handoff spins, yielding the CPU, until it is
 * served. That pays where a CPU would otherwise sit idle while a sleeping
 * waiter is brought back; it costs where other processes want the CPU, most
 * of all a database server on the same machine, whose backends the spinner
 * keeps switching with. So the background thread samples the machine's busy
 * time (/proc/stat) and this process's CPU time, and early wake-ups are
 * given only while the difference -- the other processes' share -- stays
 * small. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The machine's busy CPU time in clock ticks, summed over its CPUs, from
 * the first line of /proc/stat (user, nice, system, irq and softirq; guest
 * time is inside user). Steal is left out: it is another machine's. -1
 * when it cannot be read. */
static int64_t machine_busy_ticks(void)
{
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[256];
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    uint64_t user, nice, system, idle, iowait, irq, softirq;
    if (sscanf(buf, "cpu %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                    " %" SCNu64 " %" SCNu64,
               &user, &nice, &system, &idle, &iowait, &irq, &softirq) != 7)
        return -1;
    return (int64_t)((user + nice + system + irq + softirq) & INT64_MAX);
}

int cpool__cpu_sample(cpu_sample *s)
{
    struct timespec own;
    s->busy_ticks = machine_busy_ticks();
    if (s->busy_ticks < 0 || clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &own) != 0)
        return -1;
    s->own_ns = (int64_t)own.tv_sec * 1000000000 + own.tv_nsec;
    s->at_ns = cpool__mono_ns();
    return 0;
}

double cpool__cpu_others(const cpu_sample *before, const cpu_sample *after)
{
    int64_t wall = after->at_ns - before->at_ns;
    long hz = sysconf(_SC_CLK_TCK);
    if (wall <= 0 || hz <= 0)
        return -1;
    double busy = (double)(after->busy_ticks - before->busy_ticks) * 1e9 / (double)hz;
    double others = busy - (double)(after->own_ns - before->own_ns);
    /* The machine's figure is counted in clock ticks, this process's
     * exactly: a difference below zero is that rounding. */
    return others > 0 ? others / (double)wall : 0;
}

bool cpool__early_wake_decide(bool on, double others, long ncpu)
{
    if (others < 0 || ncpu <= 0)
        return on; /* nothing measured: no change */
    if (on)
        return others <= CPU_OTHERS_OFF * (double)ncpu;
    return others < CPU_OTHERS_ON * (double)ncpu;
}
