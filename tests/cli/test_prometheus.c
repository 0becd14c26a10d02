/* test_prometheus.c -- cpool_stats_prometheus(): the text it writes is read
 * back with a parser of the exposition format (0.0.4) written here, and the
 * values are compared with the statistics of a real pool on the in-memory
 * connector.
 *
 * The parser is strict where Prometheus is: every sample line is
 * `name{labels} value`, names match [a-zA-Z_:][a-zA-Z0-9_:]*, label values
 * use only the escapes \\, \" and \n, a family's HELP and TYPE come once
 * and before its samples, and a histogram's buckets are cumulative, with
 * increasing `le` bounds ending at +Inf equal to _count.
 */
#include "test.h"

#include <cpool/cpool_cluster.h>

#include <math.h>

/* ------------------------------------------------------------ the parser */

#define MAX_LABELS 8
#define MAX_SAMPLES 1024
#define MAX_FAMILIES 128

typedef struct label {
    char name[64];
    char value[256]; /* unescaped */
} label;

typedef struct psample {
    char name[128];
    char family[128];
    label labels[MAX_LABELS];
    int nlabels;
    char raw_value[64];
    double value;
} psample;

typedef struct family {
    char name[128];
    char type[16];
    bool help, typed, has_samples;
} family;

typedef struct expo {
    psample s[MAX_SAMPLES];
    int n;
    family f[MAX_FAMILIES];
    int nf;
    int comments; /* '#' lines that are neither HELP nor TYPE */
} expo;

static bool is_name_start(char c, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
    return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Reads a name at *p; returns its length, 0 when there is none. */
static size_t read_name(const char **p, char *out, size_t size, bool colon)
{
    const char *s = *p;
    if (!is_name_start(*s, colon))
        return 0;
    size_t n = 0;
    while (is_name_char(s[n], colon))
        n++;
    if (n >= size)
        FAIL("name too long: %.40s", s);
    memcpy(out, s, n);
    out[n] = '\0';
    *p = s + n;
    return n;
}

static family *find_family(expo *e, const char *name)
{
    for (int i = 0; i < e->nf; i++)
        if (strcmp(e->f[i].name, name) == 0)
            return &e->f[i];
    return NULL;
}

static const char *family_type(expo *e, const char *name)
{
    family *f = find_family(e, name);
    if (f == NULL)
        FAIL("no family %s", name);
    return f->type;
}

static family *add_family(expo *e, const char *name)
{
    family *f = find_family(e, name);
    if (f != NULL)
        return f;
    if (e->nf == MAX_FAMILIES)
        FAIL("too many families");
    f = &e->f[e->nf++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The family a sample belongs to: its own name, or for a histogram's
 * series the name without _bucket/_sum/_count. */
static family *family_of(expo *e, const char *name)
{
    family *f = find_family(e, name);
    if (f != NULL)
        return f;
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++) {
        if (!ends_with(name, suffixes[i]))
            continue;
        char base[128];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(name) - strlen(suffixes[i])), name);
        f = find_family(e, base);
        if (f != NULL && strcmp(f->type, "histogram") == 0)
            return f;
    }
    return NULL;
}

static void parse_comment(expo *e, const char *line, int lineno)
{
    const char *p = line + 1;
    while (*p == ' ')
        p++;
    bool help = strncmp(p, "HELP ", 5) == 0, type = strncmp(p, "TYPE ", 5) == 0;
    if (!help && !type) {
        e->comments++;
        return;
    }
    p += 5;
    char name[128];
    if (read_name(&p, name, sizeof name, true) == 0 || *p != ' ')
        FAIL("line %d: bad HELP/TYPE line: %s", lineno, line);
    p++;
    family *f = add_family(e, name);
    if (f->has_samples)
        FAIL("line %d: %s for %s after its samples", lineno, help ? "HELP" : "TYPE", name);
    if (help) {
        if (f->help)
            FAIL("line %d: second HELP for %s", lineno, name);
        if (*p == '\0')
            FAIL("line %d: empty HELP for %s", lineno, name);
        f->help = true;
    } else {
        if (f->typed)
            FAIL("line %d: second TYPE for %s", lineno, name);
        if (strcmp(p, "counter") != 0 && strcmp(p, "gauge") != 0 &&
            strcmp(p, "histogram") != 0 && strcmp(p, "summary") != 0 &&
            strcmp(p, "untyped") != 0)
            FAIL("line %d: unknown TYPE \"%s\"", lineno, p);
        snprintf(f->type, sizeof f->type, "%s", p);
        f->typed = true;
    }
}

static void parse_sample(expo *e, const char *line, int lineno)
{
    if (e->n == MAX_SAMPLES)
        FAIL("too many samples");
    psample *s = &e->s[e->n];
    memset(s, 0, sizeof *s);
    const char *p = line;
    if (read_name(&p, s->name, sizeof s->name, true) == 0)
        FAIL("line %d: no metric name: %s", lineno, line);
    if (*p == '{') {
        p++;
        while (*p != '}') {
            if (s->nlabels == MAX_LABELS)
                FAIL("line %d: too many labels", lineno);
            label *l = &s->labels[s->nlabels++];
            if (read_name(&p, l->name, sizeof l->name, false) == 0)
                FAIL("line %d: bad label name at \"%s\"", lineno, p);
            for (int k = 0; k < s->nlabels - 1; k++)
                if (strcmp(s->labels[k].name, l->name) == 0)
                    FAIL("line %d: label %s twice", lineno, l->name);
            if (p[0] != '=' || p[1] != '"')
                FAIL("line %d: expected =\" after label %s", lineno, l->name);
            p += 2;
            size_t n = 0;
            while (*p != '"') {
                char c = *p;
                if (c == '\0' || c == '\n')
                    FAIL("line %d: unterminated label value", lineno);
                if (c == '\\') {
                    p++;
                    if (*p == 'n')
                        c = '\n';
                    else if (*p == '\\' || *p == '"')
                        c = *p;
                    else
                        FAIL("line %d: bad escape \\%c", lineno, *p);
                }
                if (n + 1 >= sizeof l->value)
                    FAIL("line %d: label value too long", lineno);
                l->value[n++] = c;
                p++;
            }
            l->value[n] = '\0';
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                FAIL("line %d: expected , or } after label %s", lineno, l->name);
        }
        p++;
    }
    if (*p != ' ')
        FAIL("line %d: expected one space before the value: %s", lineno, line);
    p++;
    snprintf(s->raw_value, sizeof s->raw_value, "%s", p);
    char *end = NULL;
    s->value = strtod(p, &end);
    if (end == p || *end != '\0')
        FAIL("line %d: value \"%s\" is not a number (a timestamp is not expected)", lineno, p);
    family *f = family_of(e, s->name);
    if (f == NULL || !f->help || !f->typed)
        FAIL("line %d: sample %s without HELP and TYPE before it", lineno, s->name);
    f->has_samples = true;
    snprintf(s->family, sizeof s->family, "%s", f->name);
    e->n++;
}

/* Parses the whole text; fails the case on anything malformed. */
static void parse(expo *e, const char *text)
{
    memset(e, 0, sizeof *e);
    ASSERT_TRUE(strlen(text) > 0);
    ASSERT_TRUE(text[strlen(text) - 1] == '\n');
    const char *p = text;
    int lineno = 0;
    char line[1024];
    while (*p != '\0') {
        size_t n = strcspn(p, "\n");
        if (n >= sizeof line)
            FAIL("line too long");
        memcpy(line, p, n);
        line[n] = '\0';
        p += n + (p[n] == '\n');
        lineno++;
        if (n == 0)
            FAIL("line %d: empty line", lineno);
        if (line[0] == '#')
            parse_comment(e, line, lineno);
        else
            parse_sample(e, line, lineno);
    }
    /* Every family has its samples in one block: checked by rejecting
     * HELP/TYPE after samples above, and here by "no family seen twice
     * apart". */
    for (int i = 1; i < e->n; i++)
        for (int k = 0; k < i - 1; k++)
            if (strcmp(e->s[k].family, e->s[i].family) == 0 &&
                strcmp(e->s[i - 1].family, e->s[i].family) != 0)
                FAIL("family %s is split", e->s[i].family);
}

static const char *label_of(const psample *s, const char *name)
{
    for (int i = 0; i < s->nlabels; i++)
        if (strcmp(s->labels[i].name, name) == 0)
            return s->labels[i].value;
    return NULL;
}

/* The one sample with that name and (if key != NULL) label key=val. */
static const psample *find(const expo *e, const char *name, const char *key, const char *val)
{
    const psample *hit = NULL;
    for (int i = 0; i < e->n; i++) {
        if (strcmp(e->s[i].name, name) != 0)
            continue;
        if (key != NULL && (label_of(&e->s[i], key) == NULL ||
                            strcmp(label_of(&e->s[i], key), val) != 0))
            continue;
        if (hit != NULL)
            FAIL("two samples %s{%s=\"%s\"}", name, key ? key : "", val ? val : "");
        hit = &e->s[i];
    }
    if (hit == NULL)
        FAIL("no sample %s{%s=\"%s\"}", name, key ? key : "", val ? val : "");
    return hit;
}

static uint64_t value_u64(const psample *s)
{
    char *end = NULL;
    unsigned long long v = strtoull(s->raw_value, &end, 10);
    if (*end != '\0')
        FAIL("%s: \"%s\" is not an integer", s->name, s->raw_value);
    return v;
}

/* Checks a histogram family: cumulative, increasing bounds, +Inf = count,
 * and returns the number of finite buckets. */
static int check_histogram(const expo *e, const char *fam)
{
    char bucket[160], count[160];
    snprintf(bucket, sizeof bucket, "%s_bucket", fam);
    snprintf(count, sizeof count, "%s_count", fam);
    double prev_le = -1, prev_v = -1;
    int finite = 0;
    bool inf = false;
    for (int i = 0; i < e->n; i++) {
        const psample *s = &e->s[i];
        if (strcmp(s->name, bucket) != 0)
            continue;
        ASSERT_FALSE(inf); /* nothing after +Inf */
        const char *le = label_of(s, "le");
        ASSERT_NOT_NULL(le);
        double b = strtod(le, NULL);
        if (strcmp(le, "+Inf") == 0)
            inf = true;
        else
            finite++;
        if (!(b > prev_le))
            FAIL("%s: le=%s not above the previous bound %g", fam, le, prev_le);
        if (!(s->value >= prev_v))
            FAIL("%s: bucket le=%s = %g below the previous %g: not cumulative", fam, le,
                 s->value, prev_v);
        prev_le = b;
        prev_v = s->value;
    }
    ASSERT_TRUE(inf);
    ASSERT_EQ((long long)find(e, count, NULL, NULL)->value, (long long)prev_v);
    return finite;
}

/* ------------------------------------------------------------ helpers */

static char *render(const cpool_stats *st, const char *pool, const char *extra)
{
    size_t n = cpool_stats_prometheus(st, pool, extra, NULL, 0);
    ASSERT_GT(n, 0);
    char *buf = malloc(n + 1);
    ASSERT_NOT_NULL(buf);
    size_t m = cpool_stats_prometheus(st, pool, extra, buf, n + 1);
    ASSERT_EQ(n, m);
    ASSERT_EQ(n, strlen(buf));
    return buf;
}

/* Exact decimal seconds of ns, as the writer promises. */
static void seconds_text(uint64_t ns, char *buf, size_t size)
{
    char frac[16];
    snprintf(frac, sizeof frac, "%09llu", (unsigned long long)(ns % 1000000000u));
    size_t n = strlen(frac);
    while (n > 0 && frac[n - 1] == '0')
        frac[--n] = '\0';
    if (n > 0)
        snprintf(buf, size, "%llu.%s", (unsigned long long)(ns / 1000000000u), frac);
    else
        snprintf(buf, size, "%llu", (unsigned long long)(ns / 1000000000u));
}

/* A pool that has done a bit of everything: reused leases, a broken one
 * closed with reason "error", a checkout that timed out, one lease still
 * out. */
static void busy_pool(test_fixture *f, cpool_stats *st, cpool_conn **held)
{
    test_fixture_init(f);
    f->opts.max_pool_size = 2;
    f->opts.timing_sample = 1;
    test_fixture_start(f);
    for (int i = 0; i < 20; i++) {
        cpool_conn *c = test_checkout(f->pool);
        test_sleep_us(100 + 50 * i);
        test_checkin(f->pool, c, i == 5 ? CPOOL_CHECKIN_BROKEN : 0);
    }
    cpool_conn *a = test_checkout(f->pool);
    cpool_conn *b = test_checkout(f->pool);
    cpool_conn *c = NULL;
    cpool_error e = {0};
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f->pool, 0, &c, &e));
    test_checkin(f->pool, b, 0);
    *held = a;
    memset(st, 0, sizeof *st);
    st->struct_size = sizeof *st;
    ASSERT_OK(cpool_get_stats(f->pool, st));
    ASSERT_GT(st->checkout_failures[-CPOOL_ETIMEDOUT], 0);
    ASSERT_GT(st->closed[CPOOL_CLOSE_ERROR], 0);
    ASSERT_GT(st->hold.count, 0);
}

/* ------------------------------------------------------------ cases */

TEST(exposition_parses_and_matches_stats)
{
    test_fixture f;
    cpool_stats st;
    cpool_conn *held = NULL;
    busy_pool(&f, &st, &held);
    char *text = render(&st, "main", NULL);
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);

    /* Every sample carries the pool label; every family has samples. */
    for (int i = 0; i < e->n; i++)
        ASSERT_STR_EQ("main", label_of(&e->s[i], "pool"));
    for (int i = 0; i < e->nf; i++)
        if (!e->f[i].has_samples)
            FAIL("family %s has no samples", e->f[i].name);
    ASSERT_EQ(0, e->comments);

    /* Types. */
    ASSERT_STR_EQ("gauge", family_type(e, "db_client_connection_count"));
    ASSERT_STR_EQ("counter", family_type(e, "db_client_connection_created_total"));
    ASSERT_STR_EQ("histogram", family_type(e, "db_client_connection_wait_time_seconds"));

    /* Gauges. */
    ASSERT_EQ(st.counts.available,
              value_u64(find(e, "db_client_connection_count", "state", "idle")));
    ASSERT_EQ(st.counts.in_use, value_u64(find(e, "db_client_connection_count", "state", "used")));
    ASSERT_EQ(1, st.counts.in_use);
    ASSERT_EQ(st.counts.pending, value_u64(find(e, "db_client_connection_establishing", NULL, NULL)));
    ASSERT_EQ(st.counts.waiting,
              value_u64(find(e, "db_client_connection_pending_requests", NULL, NULL)));
    ASSERT_EQ(2, value_u64(find(e, "db_client_connection_max", NULL, NULL)));
    ASSERT_EQ(st.min_pool_size, value_u64(find(e, "db_client_connection_idle_min", NULL, NULL)));
    ASSERT_EQ(1, value_u64(find(e, "db_client_connection_pool_state", "state", "ready")));
    ASSERT_EQ(0, value_u64(find(e, "db_client_connection_pool_state", "state", "paused")));

    /* Counters. */
    ASSERT_EQ(st.connections_created,
              value_u64(find(e, "db_client_connection_created_total", NULL, NULL)));
    ASSERT_EQ(st.checkouts, value_u64(find(e, "db_client_connection_checkouts_total", NULL, NULL)));
    ASSERT_EQ(st.checkouts_reused,
              value_u64(find(e, "db_client_connection_checkouts_reused_total", NULL, NULL)));
    for (int r = 0; r < CPOOL_CLOSE_REASON_COUNT_; r++)
        ASSERT_EQ(st.closed[r], value_u64(find(e, "db_client_connection_closed_total", "reason",
                                               cpool_close_reason_name(r))));
    ASSERT_EQ(st.checkout_failures[-CPOOL_ETIMEDOUT],
              value_u64(find(e, "db_client_connection_checkout_failures_total", "error",
                             "CPOOL_ETIMEDOUT")));
    ASSERT_EQ(0, value_u64(find(e, "db_client_connection_checkout_failures_total", "error",
                                "CPOOL_ECLOSED")));
    ASSERT_EQ(st.checkout_failures[-CPOOL_ETIMEDOUT] + st.checkout_failures[-CPOOL_ETENANT],
              value_u64(find(e, "db_client_connection_timeouts_total", NULL, NULL)));
    ASSERT_EQ(st.validations,
              value_u64(find(e, "db_client_connection_validations_total", NULL, NULL)));

    /* Histograms: structure, then each exposed bucket against the stats.
     * The exposed bounds are the pool's even-numbered ones (powers of two
     * of 1 us); the cumulative count there sums every bucket at or below. */
    static const struct {
        const char *name;
        size_t off;
    } hists[] = {
        {"db_client_connection_wait_time_seconds", offsetof(cpool_stats, wait)},
        {"db_client_connection_use_time_seconds", offsetof(cpool_stats, hold)},
        {"db_client_connection_create_time_seconds", offsetof(cpool_stats, connect)},
    };
    for (size_t h = 0; h < 3; h++) {
        const cpool_histogram *hg = (const cpool_histogram *)((const char *)&st + hists[h].off);
        ASSERT_EQ(CPOOL_HIST_BUCKETS / 2, check_histogram(e, hists[h].name));
        char name[160], want[40];
        snprintf(name, sizeof name, "%s_count", hists[h].name);
        ASSERT_EQ(hg->count, value_u64(find(e, name, NULL, NULL)));
        snprintf(name, sizeof name, "%s_sum", hists[h].name);
        seconds_text(hg->sum_ns, want, sizeof want);
        ASSERT_STR_EQ(want, find(e, name, NULL, NULL)->raw_value);
        snprintf(name, sizeof name, "%s_bucket", hists[h].name);
        uint64_t cum = 0;
        for (int i = 0; i < CPOOL_HIST_BUCKETS - 1; i++) {
            cum += hg->buckets[i];
            if (i % 2 != 0)
                continue;
            char le[40];
            seconds_text((uint64_t)cpool_histogram_bound_ns(i), le, sizeof le);
            ASSERT_EQ(cum, value_u64(find(e, name, "le", le)));
        }
    }
    ASSERT_GT(value_u64(find(e, "db_client_connection_use_time_seconds_count", NULL, NULL)), 0);
    /* 1 us, and 2^23 us = 8.388608 s: the first and last finite bounds. */
    (void)find(e, "db_client_connection_wait_time_seconds_bucket", "le", "0.000001");
    (void)find(e, "db_client_connection_wait_time_seconds_bucket", "le", "8.388608");

    free(e);
    free(text);
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

TEST(label_values_escaped_and_round_trip)
{
    test_fixture f;
    cpool_stats st;
    cpool_conn *held = NULL;
    busy_pool(&f, &st, &held);
    const char *name = "we\"ird\\pool\nname {x=\"1\"}";
    char *text = render(&st, name, NULL);
    /* Escaped in the text: no raw newline inside a line, quotes escaped. */
    ASSERT_STR_CONTAINS(text, "pool=\"we\\\"ird\\\\pool\\nname {x=\\\"1\\\"}\"");
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);
    for (int i = 0; i < e->n; i++)
        ASSERT_STR_EQ(name, label_of(&e->s[i], "pool"));
    free(e);
    free(text);
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

TEST(extra_labels_added_or_left_out)
{
    test_fixture f;
    cpool_stats st;
    cpool_conn *held = NULL;
    busy_pool(&f, &st, &held);
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);

    char *text = render(&st, "p", "service=\"api\",zone=\"a\\\"b\"");
    parse(e, text);
    for (int i = 0; i < e->n; i++) {
        ASSERT_STR_EQ("p", label_of(&e->s[i], "pool"));
        ASSERT_STR_EQ("api", label_of(&e->s[i], "service"));
        ASSERT_STR_EQ("a\"b", label_of(&e->s[i], "zone"));
    }
    ASSERT_STR_EQ("idle", label_of(find(e, "db_client_connection_count", "state", "idle"),
                                   "state"));
    free(text);

    /* Malformed extra labels would break every line: they are dropped and
     * a comment says so; the rest still parses. */
    static const char *const bad[] = {"service=api", "service=\"x", "1x=\"a\"",
                                      "a=\"b\"c=\"d\"", "a=\"b\\q\"", "a=\"b\"\n", "a=\"b\","};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        text = render(&st, "p", bad[k]);
        ASSERT_TRUE(strncmp(text, "# cpool: extra_labels left out", 30) == 0);
        parse(e, text);
        ASSERT_EQ(1, e->comments);
        for (int i = 0; i < e->n; i++) {
            ASSERT_NULL(label_of(&e->s[i], "service"));
            ASSERT_NULL(label_of(&e->s[i], "a"));
        }
        free(text);
    }

    /* No pool name: no pool label, still valid. */
    text = render(&st, NULL, NULL);
    parse(e, text);
    for (int i = 0; i < e->n; i++)
        ASSERT_NULL(label_of(&e->s[i], "pool"));
    ASSERT_STR_CONTAINS(text, "\ndb_client_connection_establishing 0\n");
    free(text);

    free(e);
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

TEST(truncation_like_snprintf)
{
    test_fixture f;
    cpool_stats st;
    cpool_conn *held = NULL;
    busy_pool(&f, &st, &held);
    char *full = render(&st, "pool-a", "k=\"v\"");
    size_t n = strlen(full);
    ASSERT_GT(n, 1000);
    char *buf = malloc(n + 64);
    ASSERT_NOT_NULL(buf);
    const size_t sizes[] = {0, 1, 2, 17, 100, n / 2, n - 1, n, n + 1, n + 10};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        memset(buf, 'Z', n + 64);
        size_t got = cpool_stats_prometheus(&st, "pool-a", "k=\"v\"", buf, size);
        ASSERT_EQ(n, got); /* the length it needs, whatever the size */
        if (size == 0) {
            ASSERT_EQ('Z', buf[0]); /* nothing written at all */
            continue;
        }
        size_t written = size - 1 < n ? size - 1 : n;
        ASSERT_EQ('\0', buf[written]);
        ASSERT_TRUE(memcmp(buf, full, written) == 0);
        for (size_t i = written + 1; i < n + 64; i++)
            if (buf[i] != 'Z')
                FAIL("size %zu: byte %zu written past the end", size, i);
    }
    /* NULL buffer: only the length. */
    ASSERT_EQ(n, cpool_stats_prometheus(&st, "pool-a", "k=\"v\"", NULL, 100));
    free(buf);
    free(full);
    test_checkin(f.pool, held, 0);
    test_fixture_free(&f);
}

/* The tenants' series parse with the pool's in one exposition: every
 * family once, one series per tenant, the values the statistics give. */
TEST(tenant_series_parse_with_the_pool)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 3;
    f.pool = test_pool_create(&f.opts);
    ASSERT_OK(cpool_tenant_set(f.pool, "api", 0, 1, NULL));
    ASSERT_OK(cpool_tenant_set(f.pool, "batch", 2, 0, NULL));
    test_ready(f.pool);
    const char *names[] = {"api", "batch", NULL};
    for (int i = 0; i < 7; i++) {
        cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 1000,
                                 .tenant = names[i % 3]};
        cpool_conn *c = NULL;
        ASSERT_OK(cpool_checkout_with(f.pool, &o, &c, NULL));
        test_checkin(f.pool, c, 0);
    }
    cpool_stats st = {.struct_size = sizeof st};
    ASSERT_OK(cpool_get_stats(f.pool, &st));
    size_t np = cpool_stats_prometheus(&st, "db", "svc=\"x\"", NULL, 0);
    size_t nt = cpool_tenants_prometheus(f.pool, "db", "svc=\"x\"", NULL, 0);
    char *text = malloc(np + nt + 1);
    ASSERT_NOT_NULL(text);
    ASSERT_EQ(np, cpool_stats_prometheus(&st, "db", "svc=\"x\"", text, np + 1));
    ASSERT_EQ(nt, cpool_tenants_prometheus(f.pool, "db", "svc=\"x\"", text + np, nt + 1));
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);
    const uint64_t want[] = {3, 2, 2}; /* api, batch, the unnamed tenant */
    for (int i = 0; i < 3; i++) {
        const char *t = names[i] != NULL ? names[i] : "";
        cpool_tenant_stats ts;
        ASSERT_OK(cpool_get_tenant_stats(f.pool, t, &ts));
        ASSERT_EQ(want[i], ts.checkouts_ok);
        const psample *lease = NULL;
        for (int k = 0; k < e->n; k++)
            if (strcmp(e->s[k].name, "db_client_connection_tenant_leases_total") == 0 &&
                strcmp(label_of(&e->s[k], "tenant"), t) == 0)
                lease = &e->s[k];
        ASSERT_NOT_NULL(lease);
        ASSERT_EQ(ts.checkouts_ok, value_u64(lease));
        ASSERT_STR_EQ("db", label_of(lease, "pool"));
        ASSERT_STR_EQ("x", label_of(lease, "svc"));
    }
    ASSERT_STR_EQ("counter", family_type(e, "db_client_connection_tenant_leases_total"));
    ASSERT_STR_EQ("histogram", family_type(e, "db_client_connection_tenant_wait_time_seconds"));
    ASSERT_STR_EQ("gauge", family_type(e, "db_client_connection_tenant_max"));
    free(e);
    free(text);
    test_fixture_free(&f);
}

/* Two pools in one exposition: one HELP and TYPE per family, the samples
 * of both beneath, each with its pool label; the strict parser refuses a
 * repeated HELP or a family split in two. */
TEST(several_pools_in_one_exposition)
{
    test_fixture a, b;
    test_fixture_init(&a);
    test_fixture_init(&b);
    a.opts.max_pool_size = 2;
    b.opts.max_pool_size = 5;
    a.pool = test_pool_create(&a.opts);
    ASSERT_OK(cpool_tenant_set(a.pool, "api", 0, 0, NULL));
    test_ready(a.pool);
    test_fixture_start(&b);
    for (int i = 0; i < 3; i++) {
        cpool_checkout_opts o = {.struct_size = sizeof o, .timeout_ms = 1000, .tenant = "api"};
        cpool_conn *c = NULL;
        ASSERT_OK(cpool_checkout_with(a.pool, &o, &c, NULL));
        test_checkin(a.pool, c, 0);
    }
    cpool_conn *held = test_checkout(b.pool);
    cpool *pools[] = {a.pool, b.pool};
    const char *names[] = {"orders", NULL}; /* b: its name, the address */
    size_t need = cpool_prometheus_pools(pools, names, 2, "svc=\"x\"", NULL, 0);
    char *text = malloc(need + 4096); /* the figures may move between calls */
    ASSERT_NOT_NULL(text);
    size_t got = cpool_prometheus_pools(pools, names, 2, "svc=\"x\"", text, need + 4096);
    ASSERT_LT(got, need + 4096);
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);
    int max_samples = 0;
    for (int k = 0; k < e->n; k++) {
        if (strcmp(e->s[k].name, "db_client_connection_max") != 0)
            continue;
        max_samples++;
        const char *pool = label_of(&e->s[k], "pool");
        ASSERT_NOT_NULL(pool);
        if (strcmp(pool, "orders") == 0)
            ASSERT_EQ(2, (long long)e->s[k].value);
        else if (strcmp(pool, cpool_address(b.pool)) == 0)
            ASSERT_EQ(5, (long long)e->s[k].value);
        else
            FAIL("unexpected pool label \"%s\"", pool);
        ASSERT_STR_EQ("x", label_of(&e->s[k], "svc"));
    }
    ASSERT_EQ(2, max_samples);
    /* The tenant families come from the one pool that has tenants. */
    ASSERT_EQ(3, (long long)find(e, "db_client_connection_tenant_leases_total", "tenant",
                                 "api")->value);
    ASSERT_STR_EQ("histogram", family_type(e, "db_client_connection_wait_time_seconds"));
    free(e);
    free(text);
    ASSERT_EQ(0, cpool_prometheus_pools(NULL, NULL, 0, NULL, NULL, 0));
    test_checkin(b.pool, held, 0);
    test_fixture_free(&a);
    test_fixture_free(&b);
}

/* A cluster's exposition: its endpoints' pools and its own families parse
 * strictly together (HELP and TYPE once each), and the figures agree. */
TEST(cluster_exposition_parses)
{
    cpool_mem *m[2];
    cpool_cluster_endpoint ep[2];
    cpool_mem_server sv[2] = {{.role = CPOOL_ROLE_PRIMARY, .epoch = 3},
                              {.role = CPOOL_ROLE_REPLICA, .lag_ms = 250}};
    const char *targets[2] = {"mem://p", "mem://r"};
    for (int i = 0; i < 2; i++) {
        m[i] = test_mem_create();
        cpool_mem_set_server(m[i], &sv[i]);
        ep[i] = (cpool_cluster_endpoint){.target = targets[i],
                                         .connector = cpool_mem_connector(),
                                         .connector_ctx = m[i]};
    }
    cpool_cluster_options o;
    cpool_cluster_options_init(&o, sizeof o);
    o.endpoints = ep;
    o.nendpoints = 2;
    cpool_cluster *c = NULL;
    ASSERT_OK(cpool_cluster_open(NULL, &o, &c, NULL));
    ASSERT_OK(cpool_cluster_wait(c, CPOOL_WANT_REPLICA, 5000, NULL));
    cpool_cluster_checkout_opts co = {.struct_size = sizeof co, .want = CPOOL_WANT_REPLICA,
                                      .timeout_ms = 5000};
    cpool_conn *conn = NULL;
    ASSERT_OK(cpool_cluster_checkout(c, &co, &conn, NULL, NULL));
    size_t need = cpool_cluster_prometheus(c, "db \"main\"", NULL, 0);
    char *text = malloc(need + 4096);
    ASSERT_NOT_NULL(text);
    ASSERT_LT(cpool_cluster_prometheus(c, "db \"main\"", text, need + 4096), need + 4096);
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);
    ASSERT_EQ(1, (long long)find(e, "db_client_cluster_endpoint_up", "endpoint", "mem:r")->value);
    ASSERT_STR_EQ("db \"main\"",
                  label_of(find(e, "db_client_cluster_endpoint_up", "endpoint", "mem:r"),
                           "cluster"));
    ASSERT_EQ(1, (long long)find(e, "db_client_cluster_endpoint_selected_total", "endpoint",
                                 "mem:r")->value);
    ASSERT_TRUE(find(e, "db_client_cluster_endpoint_lag_seconds", "endpoint", "mem:r")->value ==
                0.25);
    ASSERT_STR_EQ("counter", family_type(e, "db_client_cluster_checkouts_total"));
    ASSERT_EQ(1, (long long)find(e, "db_client_cluster_checkouts_total", "result", "ok")->value);
    ASSERT_EQ(10, (long long)find(e, "db_client_connection_max", "pool", "mem:r")->value);
    free(e);
    free(text);
    ASSERT_OK(cpool_cluster_checkin(c, conn, 0, NULL));
    cpool_cluster_close(c);
    for (int i = 0; i < 2; i++)
        cpool_mem_destroy(m[i]);
}

TEST(unlimited_max_and_bad_stats)
{
    test_fixture f;
    test_fixture_init(&f);
    f.opts.max_pool_size = 0; /* no limit */
    test_fixture_start(&f);
    cpool_stats st = {.struct_size = sizeof st};
    ASSERT_OK(cpool_get_stats(f.pool, &st));
    char *text = render(&st, "u", NULL);
    expo *e = calloc(1, sizeof *e);
    ASSERT_NOT_NULL(e);
    parse(e, text);
    const psample *m = find(e, "db_client_connection_max", NULL, NULL);
    ASSERT_STR_EQ("+Inf", m->raw_value);
    ASSERT_TRUE(isinf(m->value) && m->value > 0);
    /* An empty histogram is still complete: zero buckets, +Inf, sum, count. */
    ASSERT_EQ(0, value_u64(find(e, "db_client_connection_wait_time_seconds_count", NULL, NULL)));
    ASSERT_STR_EQ("0", find(e, "db_client_connection_wait_time_seconds_sum", NULL, NULL)->raw_value);
    free(e);
    free(text);

    /* NULL or too small a struct: nothing to write, an empty string. */
    char buf[16];
    memset(buf, 'Z', sizeof buf);
    ASSERT_EQ(0, cpool_stats_prometheus(NULL, "u", NULL, buf, sizeof buf));
    ASSERT_EQ('\0', buf[0]);
    cpool_stats small = st;
    small.struct_size = 8;
    memset(buf, 'Z', sizeof buf);
    ASSERT_EQ(0, cpool_stats_prometheus(&small, "u", NULL, buf, sizeof buf));
    ASSERT_EQ('\0', buf[0]);
    test_fixture_free(&f);
}

TEST_MAIN()
