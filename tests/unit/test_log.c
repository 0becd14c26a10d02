/* test_log.c -- the CMAP log records: exact message strings, the reason
 * strings the official logging tests never reach (stale, idle, timeout,
 * pool closed), the common fields, the level filter and the JSON sink's
 * formatter. */
#include "test.h"

#include <math.h>

/* A copy of one log record. */
#define MAX_FIELDS 16
typedef struct log_field_copy {
    char key[32];
    cpool_log_type type;
    char s[256];
    int64_t i;
    double d;
} log_field_copy;

typedef struct log_copy {
    cpool_log_level level;
    char component[32];
    char message[64];
    size_t nfields;
    log_field_copy fields[MAX_FIELDS];
} log_copy;

typedef struct log_recorder {
    pthread_mutex_t mu;
    log_copy *recs; /* guarded by mu */
    size_t n, cap;  /* guarded by mu */
} log_recorder;

static void on_log(const cpool_log_record *rec, void *ctx)
{
    log_recorder *r = ctx;
    log_copy c;
    memset(&c, 0, sizeof c);
    c.level = rec->level;
    snprintf(c.component, sizeof c.component, "%s",
             rec->component ? rec->component : "(null)");
    snprintf(c.message, sizeof c.message, "%s",
             rec->message ? rec->message : "(null)");
    if (rec->nfields > MAX_FIELDS)
        FAIL("record \"%s\" has %zu fields", c.message, rec->nfields);
    c.nfields = rec->nfields;
    for (size_t i = 0; i < rec->nfields; i++) {
        const cpool_log_field *f = &rec->fields[i];
        snprintf(c.fields[i].key, sizeof c.fields[i].key, "%s", f->key);
        c.fields[i].type = f->type;
        if (f->type == CPOOL_LOG_STR) {
            if (f->s == NULL) /* absent values are left out, never null */
                FAIL("record \"%s\": field %s is a NULL string", c.message,
                     f->key);
            snprintf(c.fields[i].s, sizeof c.fields[i].s, "%s", f->s);
        }
        c.fields[i].i = f->i;
        c.fields[i].d = f->d;
    }
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 32;
        log_copy *grown = realloc(r->recs, cap * sizeof *grown);
        if (grown == NULL)
            FAIL("out of memory recording logs");
        r->recs = grown;
        r->cap = cap;
    }
    r->recs[r->n++] = c;
    pthread_mutex_unlock(&r->mu);
}

/* The shared fixture with the log sink instead of the event recorder:
 * without an on_event the pool must still log, so none is given. The
 * records go to `logs`, kept beside the fixture. */
static void log_fixture_init(test_fixture *f, log_recorder *logs)
{
    test_fixture_init(f);
    memset(logs, 0, sizeof *logs);
    pthread_mutex_init(&logs->mu, NULL);
    f->opts.on_event = NULL;
    f->opts.event_ctx = NULL;
    f->opts.address = "db.example:4242";
    f->opts.on_log = on_log;
    f->opts.log_ctx = logs;
}

static void log_fixture_free(test_fixture *f, log_recorder *logs)
{
    test_fixture_free(f);
    free(logs->recs);
    pthread_mutex_destroy(&logs->mu);
}

/* Every call below runs on the test's only pool-using thread after the
 * pool calls returned, and this test starts no background thread, so the
 * records are read without racing the sink. */
static const log_copy *nth_message(log_recorder *logs, const char *message,
                                   size_t nth)
{
    for (size_t i = 0; i < logs->n; i++)
        if (strcmp(logs->recs[i].message, message) == 0 && nth-- == 0)
            return &logs->recs[i];
    return NULL;
}

#define find_message(logs, message, nth)                                      \
    find_message_at(logs, message, nth, __LINE__)
static const log_copy *find_message_at(log_recorder *logs,
                                       const char *message, size_t nth,
                                       int line)
{
    const log_copy *c = nth_message(logs, message, nth);
    if (c == NULL)
        test_fail(__FILE__, line, "no log record #%zu \"%s\" among %zu", nth,
                  message, logs->n);
    return c;
}

static const log_field_copy *field(const log_copy *c, const char *key)
{
    for (size_t i = 0; i < c->nfields; i++)
        if (strcmp(c->fields[i].key, key) == 0)
            return &c->fields[i];
    return NULL;
}

#define field_str(c, key) field_str_at(c, key, __LINE__)
static const char *field_str_at(const log_copy *c, const char *key, int line)
{
    const log_field_copy *f = field(c, key);
    if (f == NULL || f->type != CPOOL_LOG_STR)
        test_fail(__FILE__, line, "\"%s\": no string field %s", c->message, key);
    return f->s;
}

#define field_int(c, key) field_int_at(c, key, __LINE__)
static int64_t field_int_at(const log_copy *c, const char *key, int line)
{
    const log_field_copy *f = field(c, key);
    if (f == NULL || f->type != CPOOL_LOG_INT)
        test_fail(__FILE__, line, "\"%s\": no integer field %s", c->message,
                  key);
    return f->i;
}

/* durationMS may be an integer or a double (CMAP allows both). */
#define field_duration(c) field_duration_at(c, __LINE__)
static double field_duration_at(const log_copy *c, int line)
{
    const log_field_copy *f = field(c, "durationMS");
    if (f == NULL || f->type == CPOOL_LOG_STR)
        test_fail(__FILE__, line, "\"%s\": no numeric durationMS", c->message);
    return f->type == CPOOL_LOG_INT ? (double)f->i : f->d;
}

/* The fields every CMAP record carries, and the level/component. */
static void check_common(log_recorder *logs)
{
    ASSERT_GT(logs->n, 0);
    for (size_t i = 0; i < logs->n; i++) {
        const log_copy *c = &logs->recs[i];
        ASSERT_EQ(CPOOL_LOG_DEBUG, c->level);
        ASSERT_STR_EQ("connection", c->component);
        ASSERT_STR_EQ("db.example", field_str(c, "serverHost"));
        ASSERT_EQ(4242, field_int(c, "serverPort"));
    }
}

TEST(lifecycle_messages)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    f.opts.max_pool_size = 2; /* the only option set */
    test_fixture_start(&f);
    ASSERT_STR_EQ("db.example:4242", cpool_address(f.pool));
    cpool_conn *c = test_checkout(f.pool);
    uint64_t id = cpool_conn_id(c);
    test_checkin(f.pool, c, 0);
    cpool_close(f.pool);

    static const char *const expected[] = {
        "Connection pool created", "Connection pool ready",
        "Connection checkout started", "Connection created",
        "Connection ready", "Connection checked out",
        "Connection checked in", "Connection closed",
        "Connection pool closed",
    };
    size_t nexp = sizeof expected / sizeof expected[0];
    for (size_t i = 0; i < logs.n && i < nexp; i++)
        ASSERT_STR_EQ(expected[i], logs.recs[i].message);
    ASSERT_EQ(nexp, logs.n);
    check_common(&logs);

    const log_copy *r = find_message(&logs, "Connection pool created", 0);
    ASSERT_EQ(2, field_int(r, "maxPoolSize"));
    /* Options at CMAP's defaults are not reported; this pool's default
     * wait (30 s, where CMAP's is 0) is. */
    ASSERT_NULL(field(r, "minPoolSize"));
    ASSERT_NULL(field(r, "maxIdleTimeMS"));
    ASSERT_EQ(30000, field_int(r, "waitQueueTimeoutMS"));

    static const char *const with_id[] = {
        "Connection created", "Connection ready", "Connection checked out",
        "Connection checked in", "Connection closed",
    };
    for (size_t i = 0; i < sizeof with_id / sizeof with_id[0]; i++) {
        r = find_message(&logs, with_id[i], 0);
        ASSERT_EQ(id, field_int(r, "driverConnectionId"));
    }
    ASSERT_GE(field_duration(find_message(&logs, "Connection ready", 0)), 0);
    ASSERT_GE(field_duration(find_message(&logs, "Connection checked out", 0)), 0);
    ASSERT_NULL(field(find_message(&logs, "Connection pool ready", 0),
                      "driverConnectionId"));

    r = find_message(&logs, "Connection closed", 0);
    ASSERT_STR_EQ("Connection pool was closed", field_str(r, "reason"));
    ASSERT_NULL(field(r, "error")); /* only for the error reason */
    log_fixture_free(&f, &logs);
}

TEST(stale_reason)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    const log_copy *r = find_message(&logs, "Connection pool cleared", 0);
    ASSERT_NULL(field(r, "serviceId")); /* LB mode only */
    test_ready(f.pool);
    c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);

    r = find_message(&logs, "Connection closed", 0);
    ASSERT_EQ(1, field_int(r, "driverConnectionId"));
    ASSERT_STR_EQ("Connection became stale because the pool was cleared",
                  field_str(r, "reason"));
    ASSERT_NULL(field(r, "error"));
    check_common(&logs);
    log_fixture_free(&f, &logs);
}

TEST(idle_reason)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    f.opts.clock = &f.clk.clock;
    f.opts.max_idle_time_ms = 100;
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    test_clock_advance_ms(&f.clk, f.pool, 200);
    ASSERT_OK(cpool_maintain(f.pool, NULL));

    const log_copy *r = find_message(&logs, "Connection closed", 0);
    ASSERT_STR_EQ("Connection has been available but unused for longer than "
                  "the configured max idle time",
                  field_str(r, "reason"));
    ASSERT_NULL(field(r, "error"));
    ASSERT_EQ(100, field_int(find_message(&logs, "Connection pool created", 0),
                             "maxIdleTimeMS"));
    check_common(&logs);
    log_fixture_free(&f, &logs);
}

TEST(connection_error_reasons)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    test_fixture_start(&f);
    test_fail_next_handshake(f.mem, CPOOL_PHASE_HANDSHAKE, CPOOL_FAIL_NETWORK);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECONNECT, cpool_checkout(f.pool, 5000, &c, NULL));

    const log_copy *r = find_message(&logs, "Connection closed", 0);
    ASSERT_STR_EQ("An error occurred while using the connection",
                  field_str(r, "reason"));
    ASSERT_TRUE(field_str(r, "error")[0] != '\0');
    r = find_message(&logs, "Connection checkout failed", 0);
    ASSERT_STR_EQ("An error occurred while trying to establish a new connection",
                  field_str(r, "reason"));
    /* CMAP: the logged error keeps all the error's information, not just its
     * message: the code, the phase and the backpressure labels too. */
    const char *error = field_str(r, "error");
    ASSERT_TRUE(strstr(error, "CPOOL_ECONNECT") != NULL);
    ASSERT_TRUE(strstr(error, "phase handshake") != NULL);
    ASSERT_TRUE(strstr(error, "SystemOverloadedError,RetryableError") != NULL);
    ASSERT_GE(field_duration(r), 0);
    ASSERT_NULL(field(r, "driverConnectionId"));
    check_common(&logs);
    log_fixture_free(&f, &logs);
}

TEST(timeout_reason)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    f.opts.max_pool_size = 1;
    test_fixture_start(&f);
    cpool_conn *held = test_checkout(f.pool);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(f.pool, 20, &c, NULL));
    const log_copy *r = find_message(&logs, "Connection checkout failed", 0);
    ASSERT_STR_EQ("Wait queue timeout elapsed without a connection becoming "
                  "available",
                  field_str(r, "reason"));
    ASSERT_NULL(field(r, "error")); /* only for connection errors */
    ASSERT_GE(field_duration(r), 19.0);
    test_checkin(f.pool, held, 0);
    check_common(&logs);
    log_fixture_free(&f, &logs);
}

TEST(pool_closed_checkout_reason)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    test_fixture_start(&f);
    cpool_close(f.pool);
    cpool_conn *c = NULL;
    ASSERT_RC(CPOOL_ECLOSED, cpool_checkout(f.pool, 20, &c, NULL));
    const log_copy *r = find_message(&logs, "Connection checkout failed", 0);
    ASSERT_STR_EQ("Connection pool was closed", field_str(r, "reason"));
    ASSERT_NULL(field(r, "error"));
    ASSERT_GE(field_duration(r), 0);
    check_common(&logs);
    log_fixture_free(&f, &logs);
}

TEST(level_filters_debug_records)
{
    test_fixture f;
    log_recorder logs;
    log_fixture_init(&f, &logs);
    f.opts.log_level = CPOOL_LOG_INFO; /* the CMAP records are DEBUG */
    test_fixture_start(&f);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_OK(cpool_clear(f.pool, 0, NULL, NULL));
    cpool_close(f.pool);
    for (size_t i = 0; i < logs.n; i++)
        if (logs.recs[i].level > CPOOL_LOG_INFO)
            FAIL("record \"%s\" at level %d passed an INFO filter",
                 logs.recs[i].message, (int)logs.recs[i].level);
    ASSERT_NULL(nth_message(&logs, "Connection checked out", 0));
    log_fixture_free(&f, &logs);

    /* Control: the default level lets them through. */
    log_fixture_init(&f, &logs);
    test_fixture_start(&f);
    c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    ASSERT_NOT_NULL(nth_message(&logs, "Connection checked out", 0));
    log_fixture_free(&f, &logs);
}

TEST(json_format)
{
    cpool_log_field fields[3];
    memset(fields, 0, sizeof fields);
    fields[0].key = "serverHost";
    fields[0].type = CPOOL_LOG_STR;
    fields[0].s = "db\"x";
    fields[1].key = "serverPort";
    fields[1].type = CPOOL_LOG_INT;
    fields[1].i = 4242;
    fields[2].key = "durationMS";
    fields[2].type = CPOOL_LOG_DOUBLE;
    fields[2].d = 1.5;
    cpool_log_record rec;
    memset(&rec, 0, sizeof rec);
    rec.level = CPOOL_LOG_DEBUG;
    rec.component = "connection";
    rec.message = "Connection checked out";
    rec.fields = fields;
    rec.nfields = 3;

    char buf[512];
    size_t need = cpool_log_format_json(&rec, buf, sizeof buf);
    ASSERT_EQ(strlen(buf), need);
    ASSERT_TRUE(buf[0] == '{' && buf[need - 1] == '}');
    ASSERT_STR_CONTAINS(buf, "\"message\"");
    ASSERT_STR_CONTAINS(buf, "\"Connection checked out\"");
    ASSERT_STR_CONTAINS(buf, "\"serverPort\"");
    ASSERT_STR_CONTAINS(buf, "4242");
    ASSERT_STR_CONTAINS(buf, "1.5");
    ASSERT_STR_CONTAINS(buf, "db\\\"x"); /* the quote is escaped */
    ASSERT_TRUE(strchr(buf, '\n') == NULL);

    /* Like snprintf: truncated, terminated, and the full length returned. */
    char small[8];
    ASSERT_EQ(need, cpool_log_format_json(&rec, small, sizeof small));
    ASSERT_EQ(sizeof small - 1, strlen(small));
}

/* True when s starts with an RFC 3339 UTC time with milliseconds,
 * "YYYY-MM-DDTHH:MM:SS.mmmZ", within a day of now. */
static bool is_recent_rfc3339_ms(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    time_t now = time(NULL);
    return t > now - 86400 && t < now + 86400;
}

/* Every JSON line starts with the time (RFC 3339, UTC, ms) and names the
 * pool: options.name when set, else its address. A record without a time
 * of its own is stamped when formatted. */
TEST(json_lines_carry_time_and_pool)
{
    char buf[1024];
    cpool_log_record rec;
    memset(&rec, 0, sizeof rec);
    rec.level = CPOOL_LOG_WARN;
    rec.component = "connection";
    rec.message = "m";
    rec.pool = "orders";
    rec.time_ms = 1764978001123LL; /* 2025-12-05T23:40:01.123Z */
    cpool_log_format_json(&rec, buf, sizeof buf);
    ASSERT_STR_EQ("{\"time\":\"2025-12-05T23:40:01.123Z\",\"level\":\"warn\","
                  "\"pool\":\"orders\",\"component\":\"connection\",\"message\":\"m\"}",
                  buf);
    rec.time_ms = 0;
    rec.pool = NULL;
    cpool_log_format_json(&rec, buf, sizeof buf);
    ASSERT_TRUE(strncmp(buf, "{\"time\":\"", 9) == 0);
    ASSERT_TRUE(is_recent_rfc3339_ms(buf + 9));
    ASSERT_NULL(strstr(buf, "\"pool\""));

    /* Through a pool and the ready-made sink: named, then unnamed. */
    for (int named = 1; named >= 0; named--) {
        cpool_mem *mem = test_mem_create();
        cpool_options o;
        test_options(&o, mem, NULL);
        if (named)
            o.name = "orders-primary";
        FILE *f = tmpfile();
        ASSERT_NOT_NULL(f);
        o.on_log = cpool_log_json;
        o.log_ctx = f;
        cpool *p = test_pool_create(&o);
        test_ready(p);
        test_checkin(p, test_checkout(p), 0);
        cpool_destroy(p);
        rewind(f);
        char line[2048];
        int lines = 0;
        while (fgets(line, sizeof line, f) != NULL) {
            lines++;
            ASSERT_TRUE(strncmp(line, "{\"time\":\"", 9) == 0);
            ASSERT_TRUE(is_recent_rfc3339_ms(line + 9));
            ASSERT_STR_CONTAINS(line, named ? "\"pool\":\"orders-primary\""
                                            : "\"pool\":\"unit-host:4242\"");
        }
        ASSERT_GE(lines, 5);
        fclose(f);
        cpool_mem_destroy(mem);
    }
}

/* Every record formats as valid JSON, within the buffer: a huge double
 * (1e300 printed with %.3f is 305 bytes; the formatter used to copy that
 * many from a 64-byte stack buffer), NaN and the infinities (null: JSON has
 * no such numbers), invalid UTF-8 (replaced by U+FFFD, valid sequences
 * kept), control characters and NULL strings. */
TEST(json_valid_for_every_input)
{
    cpool_log_field fields[8];
    memset(fields, 0, sizeof fields);
    const double vals[] = {1e300, -1e300, NAN, INFINITY, -INFINITY, 2.5};
    for (int i = 0; i < 6; i++) {
        fields[i].type = CPOOL_LOG_DOUBLE;
        fields[i].d = vals[i];
    }
    fields[0].key = "big";
    fields[1].key = "small";
    fields[2].key = "nan";
    fields[3].key = "inf";
    fields[4].key = "minf";
    fields[5].key = "ok";
    fields[6].key = "text";
    fields[6].type = CPOOL_LOG_STR;
    /* é (valid), a stray continuation byte, a truncated sequence, an
     * overlong '/', a surrogate, DEL and a tab. */
    fields[6].s = "caf\xc3\xa9 \x80 \xe2\x82 \xc0\xaf \xed\xa0\x80 \x7f\t";
    fields[7].key = NULL;
    fields[7].type = CPOOL_LOG_STR;
    fields[7].s = NULL;
    cpool_log_record rec;
    memset(&rec, 0, sizeof rec);
    rec.level = CPOOL_LOG_INFO;
    rec.time_ms = 1764978001123LL;
    rec.fields = fields;
    rec.nfields = 8;

    char buf[2048];
    size_t need = cpool_log_format_json(&rec, buf, sizeof buf);
    ASSERT_EQ(strlen(buf), need);
    ASSERT_STR_CONTAINS(buf, "\"big\":1.0000000000000001e+300,");
    ASSERT_STR_CONTAINS(buf, "\"small\":-1.0000000000000001e+300,");
    ASSERT_STR_CONTAINS(buf, "\"nan\":null,\"inf\":null,\"minf\":null,\"ok\":2.500,");
    ASSERT_STR_CONTAINS(buf, "\"text\":\"caf\xc3\xa9 \\ufffd \\ufffd\\ufffd \\ufffd\\ufffd "
                             "\\ufffd\\ufffd\\ufffd \\u007f\\u0009\"");
    ASSERT_STR_CONTAINS(buf, "\"component\":\"\",\"message\":\"\"");
    ASSERT_TRUE(strstr(buf, ",\"\":\"\"}") != NULL); /* NULL key and value */
    /* Nothing but printable ASCII and well-formed UTF-8 in the line. */
    for (const unsigned char *c = (const unsigned char *)buf; *c != '\0'; c++)
        ASSERT_TRUE(*c >= 0x20 && *c != 0x7f);
}

TEST_MAIN()
