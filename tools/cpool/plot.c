/* plot.c -- `cpool bench --plot FILE.svg`: throughput, connections in use and
 * waiting checkouts over the run, one point per sampling interval.
 *
 * Two engines draw the same two panels: gnuplot (svg terminal) when it is
 * on PATH, and a small SVG writer of our own otherwise, so that a chart is
 * produced on every machine. Everything that came from the user (target,
 * path) is escaped for the language it lands in: XML here, a gnuplot
 * string there.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

bool plot_have_gnuplot(void)
{
    const char *path = getenv("PATH");
    if (path == NULL || path[0] == '\0')
        path = "/usr/bin:/bin";
    while (*path != '\0') {
        size_t n = strcspn(path, ":");
        char file[1024];
        if (n > 0 && n < sizeof file - 10) {
            snprintf(file, sizeof file, "%.*s/gnuplot", (int)n, path);
            if (access(file, X_OK) == 0)
                return true;
        }
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

/* ------------------------------------------------------------ built in */

#define W 900
#define H 620
#define ML 80  /* left margin: tick labels */
#define MR 30
#define PANEL_H 210
#define TOP1 70
#define TOP2 (TOP1 + PANEL_H + 80)

typedef struct series {
    const char *name;
    const char *color;
    int panel; /* 0: top, 1: bottom */
} series;

static const series all_series[] = {
    {"throughput (ops/s)", "#1f77b4", 0},
    {"in use", "#2ca02c", 1},
    {"waiting", "#d62728", 1},
};

static double value_of(const sample *s, int k)
{
    switch (k) {
    case 0: return s->ops_s;
    case 1: return s->in_use;
    default: return s->waiting;
    }
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            /* Control characters are not allowed in XML 1.0 at all. */
            if ((unsigned char)*s >= 0x20 || *s == '\t')
                fputc(*s, f);
            break;
        }
    }
}

/* A "nice" step (1, 2 or 5 times a power of ten) giving about n ticks. */
static double nice_step(double range, int n)
{
    if (range <= 0)
        return 1;
    double raw = range / n;
    double p = pow(10, floor(log10(raw)));
    double m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

static void fmt_tick(double v, char *buf, size_t size)
{
    if (fabs(v) >= 1e6)
        snprintf(buf, size, "%gM", v / 1e6);
    else if (fabs(v) >= 1e4)
        snprintf(buf, size, "%gk", v / 1e3);
    else
        snprintf(buf, size, "%g", v);
}

static void panel(FILE *f, const bench *b, int which, double xmax, const char *ylabel)
{
    const int top = which == 0 ? TOP1 : TOP2;
    const int pw = W - ML - MR;
    double ymax = 0;
    for (size_t i = 0; i < b->nsamples; i++)
        for (int k = 0; k < 3; k++)
            if (all_series[k].panel == which && value_of(&b->samples[i], k) > ymax)
                ymax = value_of(&b->samples[i], k);
    double ystep = nice_step(ymax > 0 ? ymax : 1, 4);
    double ytop = ystep * ceil((ymax > 0 ? ymax : 1) / ystep);
    double xstep = nice_step(xmax, 8);

    /* Frame, grid and ticks. */
    fprintf(f, "<g class=\"panel\">\n");
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
               "stroke=\"#444\"/>\n",
            ML, top, pw, PANEL_H);
    for (double y = 0; y <= ytop + ystep / 2; y += ystep) {
        double py = top + PANEL_H - y / ytop * PANEL_H;
        char t[32];
        fmt_tick(y, t, sizeof t);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", ML,
                py, ML + pw, py);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n",
                ML - 6, py + 4, t);
    }
    for (double x = 0; x <= xmax + xstep / 2; x += xstep) {
        double px = ML + x / xmax * pw;
        char t[32];
        fmt_tick(x, t, sizeof t);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#444\"/>\n", px,
                top + PANEL_H, px, top + PANEL_H + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" "
                   "font-size=\"11\">%s</text>\n",
                px, top + PANEL_H + 18, t);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\" "
               "transform=\"rotate(-90 %d %d)\">%s</text>\n",
            22, top + PANEL_H / 2, 22, top + PANEL_H / 2, ylabel);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\">time "
               "(s)</text>\n",
            ML + pw / 2, top + PANEL_H + 36);

    /* Series and legend. */
    int legend = 0;
    for (int k = 0; k < 3; k++) {
        if (all_series[k].panel != which)
            continue;
        fprintf(f, "<polyline class=\"series\" data-series=\"%s\" fill=\"none\" stroke=\"%s\" "
                   "stroke-width=\"2\" points=\"",
                all_series[k].name, all_series[k].color);
        for (size_t i = 0; i < b->nsamples; i++) {
            double px = ML + b->samples[i].t_s / xmax * pw;
            double py = top + PANEL_H - value_of(&b->samples[i], k) / ytop * PANEL_H;
            fprintf(f, "%s%.1f,%.1f", i > 0 ? " " : "", px, py);
        }
        fprintf(f, "\"/>\n");
        /* Few points: mark them, so that a one-sample run still shows. */
        if (b->nsamples <= 60)
            for (size_t i = 0; i < b->nsamples; i++)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                        ML + b->samples[i].t_s / xmax * pw,
                        top + PANEL_H - value_of(&b->samples[i], k) / ytop * PANEL_H,
                        all_series[k].color);
        int lx = ML + pw - 170, ly = top + 16 + legend * 18;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" "
                   "stroke-width=\"2\"/>\n",
                lx, ly - 4, lx + 24, ly - 4, all_series[k].color);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\">%s</text>\n", lx + 30, ly,
                all_series[k].name);
        legend++;
    }
    fprintf(f, "</g>\n");
}

static int write_builtin(const bench *b, const char *path, char *errbuf, size_t errsize)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        snprintf(errbuf, errsize, "cannot create the file: %s", strerror(errno));
        return -1;
    }
    double xmax = 0;
    for (size_t i = 0; i < b->nsamples; i++)
        if (b->samples[i].t_s > xmax)
            xmax = b->samples[i].t_s;
    if (xmax <= 0)
        xmax = 1;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" "
               "data-engine=\"cpool-builtin\">\n",
            W, H, W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<title>cpool bench ");
    xml_text(f, b->target_red);
    fprintf(f, "</title>\n");
    fprintf(f, "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"15\" "
               "font-weight=\"bold\">cpool bench — ",
            W / 2);
    xml_text(f, b->target_red);
    fprintf(f, "</text>\n");
    fprintf(f, "<text x=\"%d\" y=\"48\" text-anchor=\"middle\" font-size=\"12\" "
               "fill=\"#555\">%s, %d threads, ",
            W / 2, b->started_at, b->threads);
    xml_text(f, b->statement);
    fprintf(f, "</text>\n");
    panel(f, b, 0, xmax, "ops/s");
    panel(f, b, 1, xmax, "connections");
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        snprintf(errbuf, errsize, "cannot write the file: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ gnuplot */

/* A gnuplot double-quoted string: backslash and quote escaped, control
 * characters dropped. */
static void gp_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
    fputc('"', f);
}

static void remove_dir(const char *dir, const char *const *files)
{
    char p[512];
    for (const char *const *n = files; *n != NULL; n++) {
        snprintf(p, sizeof p, "%s/%s", dir, *n);
        unlink(p);
    }
    rmdir(dir);
}

static int write_gnuplot(const bench *b, const char *path, char *errbuf, size_t errsize)
{
    static const char *const files[] = {"data.tsv", "plot.gp", "gnuplot.log", NULL};
    char dir[] = "/tmp/cpool-plot-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        snprintf(errbuf, errsize, "cannot create a temporary directory: %s", strerror(errno));
        return -1;
    }
    char data[512], script[512], log[512];
    snprintf(data, sizeof data, "%s/data.tsv", dir);
    snprintf(script, sizeof script, "%s/plot.gp", dir);
    snprintf(log, sizeof log, "%s/gnuplot.log", dir);

    int rc = -1;
    FILE *d = fopen(data, "w");
    FILE *s = d != NULL ? fopen(script, "w") : NULL;
    if (d == NULL || s == NULL) {
        snprintf(errbuf, errsize, "cannot write gnuplot's input: %s", strerror(errno));
        if (d != NULL)
            fclose(d);
        goto out;
    }
    fprintf(d, "# t_s\tops_s\tin_use\twaiting\n");
    for (size_t i = 0; i < b->nsamples; i++)
        fprintf(d, "%.3f\t%.1f\t%u\t%u\n", b->samples[i].t_s, b->samples[i].ops_s,
                b->samples[i].in_use, b->samples[i].waiting);
    fprintf(s, "set terminal svg size %d,%d dynamic noenhanced font \"sans,11\" background "
               "rgb \"white\"\n",
            W, H);
    fprintf(s, "set output ");
    gp_string(s, path);
    fprintf(s, "\nset multiplot layout 2,1 title ");
    char title[700];
    snprintf(title, sizeof title, "cpool bench — %s — %s, %d threads", b->target_red,
             b->started_at, b->threads);
    gp_string(s, title);
    fprintf(s, "\nset grid\nset key top right\nset xlabel \"time (s)\"\nset yrange [0:*]\n"
               "set xrange [0:*]\nset offsets 0, 0, graph 0.1, 0\nset ylabel \"ops/s\"\n");
    fprintf(s, "plot ");
    gp_string(s, data);
    fprintf(s, " using 1:2 with linespoints lw 2 pt 7 ps 0.5 lc rgb \"#1f77b4\" title "
               "\"throughput (ops/s)\"\n");
    fprintf(s, "set ylabel \"connections\"\nplot ");
    gp_string(s, data);
    fprintf(s, " using 1:3 with linespoints lw 2 pt 7 ps 0.5 lc rgb \"#2ca02c\" title "
               "\"in use\", ");
    gp_string(s, data);
    fprintf(s, " using 1:4 with linespoints lw 2 pt 7 ps 0.5 lc rgb \"#d62728\" title "
               "\"waiting\"\nunset multiplot\nset output\n");
    bool ok = fclose(d) == 0;
    ok = fclose(s) == 0 && ok;
    if (!ok) {
        snprintf(errbuf, errsize, "cannot write gnuplot's input: %s", strerror(errno));
        goto out;
    }

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log, O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    char *argv[] = {"gnuplot", script, NULL};
    pid_t pid;
    int e = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) {
        snprintf(errbuf, errsize, "cannot run gnuplot: %s", strerror(e));
        goto out;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    struct stat st;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || stat(path, &st) != 0 ||
        st.st_size == 0) {
        char first[200] = "";
        FILE *l = fopen(log, "r");
        if (l != NULL) {
            while (fgets(first, sizeof first, l) != NULL && first[0] == '\n') {
            }
            fclose(l);
        }
        first[strcspn(first, "\n")] = '\0';
        snprintf(errbuf, errsize, "gnuplot failed (status %d): %s",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1, first);
        goto out;
    }
    rc = 0;
out:
    remove_dir(dir, files);
    return rc;
}

int plot_write(const bench *b, const char *path, const char *engine, char *errbuf,
               size_t errsize)
{
    if (strcmp(engine, "builtin") == 0)
        return write_builtin(b, path, errbuf, errsize);
    if (strcmp(engine, "gnuplot") == 0)
        return write_gnuplot(b, path, errbuf, errsize);
    if (plot_have_gnuplot()) {
        if (write_gnuplot(b, path, errbuf, errsize) == 0)
            return 0;
        if (!b->quiet)
            cli_error("bench", "note: %s; drawing the chart without gnuplot", errbuf);
    }
    return write_builtin(b, path, errbuf, errsize);
}
