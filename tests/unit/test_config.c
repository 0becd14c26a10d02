/* test_config.c -- named options: the target's query, the environment,
 * profiles, their precedence and their errors; the URI helpers and
 * redaction; the validation policy. */
#include "test.h"

static void take(const char *in, const char *name, const char *want_uri, int want_rc,
                 const char *want_val)
{
    char uri[256], val[64] = "unchanged";
    snprintf(uri, sizeof uri, "%s", in);
    int rc = cpool_uri_take(uri, name, val, sizeof val);
    if (rc != want_rc)
        FAIL("take(%s, %s): rc %d, want %d", in, name, rc, want_rc);
    ASSERT_STR_EQ(want_uri, uri);
    if (want_val != NULL)
        ASSERT_STR_EQ(want_val, val);
}

TEST(uri_take_cases)
{
    take("pg://h/db?a=1&b=2&c=3", "b", "pg://h/db?a=1&c=3", 1, "2");
    take("pg://h/db?a=1&b=2&c=3", "a", "pg://h/db?b=2&c=3", 1, "1");
    take("pg://h/db?a=1&b=2&c=3", "c", "pg://h/db?a=1&b=2", 1, "3");
    take("pg://h/db?a=1", "a", "pg://h/db", 1, "1");
    take("pg://h/db?a=1&a=2", "a", "pg://h/db", 1, "2"); /* last wins, all go */
    take("pg://h/db?ab=1&a=2", "a", "pg://h/db?ab=1", 1, "2"); /* exact names */
    take("pg://h/db?a=x%20y%3D", "a", "pg://h/db", 1, "x y=");
    take("pg://h/db?a=1#frag", "a", "pg://h/db#frag", 1, "1");
    take("pg://h/db?flag&b=2", "flag", "pg://h/db?b=2", 1, "");
    take("pg://h/db", "a", "pg://h/db", 0, "unchanged");
    take("pg://h/db?b=2", "a", "pg://h/db?b=2", 0, "unchanged");
    char uri[64] = "pg://h?a=%zz";
    char val[16];
    ASSERT_RC(CPOOL_EINVAL, cpool_uri_take(uri, "a", val, sizeof val));
    char longv[64] = "pg://h?a=0123456789abcdef";
    ASSERT_RC(CPOOL_EINVAL, cpool_uri_take(longv, "a", val, 8));
}

TEST(uri_next_cases)
{
    const char *uri = "redis://h:1/0?db=3&&name=a%2Fb&flag#x=y";
    size_t pos = 0;
    char n[32], v[32];
    ASSERT_EQ(1, cpool_uri_next(uri, &pos, n, sizeof n, v, sizeof v));
    ASSERT_STR_EQ("db", n);
    ASSERT_STR_EQ("3", v);
    ASSERT_EQ(1, cpool_uri_next(uri, &pos, n, sizeof n, v, sizeof v));
    ASSERT_STR_EQ("name", n);
    ASSERT_STR_EQ("a/b", v);
    ASSERT_EQ(1, cpool_uri_next(uri, &pos, n, sizeof n, v, sizeof v));
    ASSERT_STR_EQ("flag", n);
    ASSERT_STR_EQ("", v);
    ASSERT_EQ(0, cpool_uri_next(uri, &pos, n, sizeof n, v, sizeof v));
    pos = 0;
    ASSERT_EQ(0, cpool_uri_next("sqlite:/tmp/x.db", &pos, n, sizeof n, v, sizeof v));
    char out[8];
    ASSERT_RC(CPOOL_EINVAL, cpool_uri_decode("%4", 2, out, sizeof out));
    ASSERT_EQ(2, cpool_uri_decode("%41b", 4, out, sizeof out));
    ASSERT_STR_EQ("Ab", out);
}

static void redacts(const char *in, const char *want)
{
    char buf[256];
    size_t n = cpool_redact(in, buf, sizeof buf);
    ASSERT_STR_EQ(want, buf);
    ASSERT_EQ(strlen(want), n);
}

TEST(redact_cases)
{
    redacts("postgresql://app:s3cret@db:5432/x?sslmode=disable",
            "postgresql://app:***@db:5432/x?sslmode=disable");
    redacts("redis://:pa@ss@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0");
    redacts("postgresql://app@db/x?password=s3cret&sslmode=disable",
            "postgresql://app@db/x?password=***&sslmode=disable");
    redacts("host=db password=s3cret dbname=x", "host=db password=*** dbname=x");
    redacts("host=db password = 'a b\\'c' dbname=x", "host=db password = '***' dbname=x");
    redacts("password=s3cret", "password=***");
    redacts("sqlite:/tmp/password.db", "sqlite:/tmp/password.db");
    redacts("postgresql://app@db/x", "postgresql://app@db/x");
    /* Each leaked before: a "://" inside a conninfo value made the whole
     * string a URL; sslpassword was never masked, in either form; a
     * misspelt scheme is still a URL. */
    redacts("host=db application_name=svc://api password=s3cret",
            "host=db application_name=svc://api password=***");
    redacts("host=db sslpassword=s3cret sslkey=/k", "host=db sslpassword=*** sslkey=/k");
    redacts("postgresql://db/x?sslpassword=s3cret&sslmode=require",
            "postgresql://db/x?sslpassword=***&sslmode=require");
    redacts("postgresq://root:s3cret@db/x", "postgresq://root:***@db/x");
    redacts("sqlite:/tmp/x.db?password=s3cret", "sqlite:/tmp/x.db?password=***");
    redacts("host=db\tPassword='s3 cret'", "host=db\tPassword='***'");
    /* Found by the fuzzer: libpq lets a keyword follow a closing quote at
     * once, so a quoted secret stays quoted when masked. */
    redacts("host=db password = 'a b\\'c'password = dbame=x",
            "host=db password = '***'password = ***");
    /* Found by tests/fuzz/fuzz_redact.c: libpq reads user info up to the
     * '@' before the first '/', '#' included, and "a\ b" as one value. */
    redacts("postgresql://app:s3#ret@db:5432/x?sslmode=disable",
            "postgresql://app:***@db:5432/x?sslmode=disable");
    redacts("host=db password=a\\ bcdef dbname=x", "host=db password=*** dbname=x");
    redacts("postgresql://db/x?password=a#b&c=d", "postgresql://db/x?password=***&c=d");
    /* Found by the fuzzer in a clean run: user info without a password
     * holding '?' (libpq reads it all as the user); nothing changes. */
    redacts("postgresql://u?sslpassword=s6*@h/x?sord=1", "postgresql://u?sslpassword=s6*@h/x?sord=1");
    /* cpool_open never echoes a target it cannot place. */
    cpool *p = NULL;
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_open("postgresq://root:s3cret@db/x", NULL, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "\"postgresq:\"");
    ASSERT_NULL(strstr(e.message, "s3cret"));
    ASSERT_RC(CPOOL_EINVAL, cpool_open("root:s3cret@db", NULL, &p, &e));
    ASSERT_NULL(strstr(e.message, "s3cret"));
    /* Truncation still terminates and reports the full length. */
    char small[8];
    ASSERT_EQ(strlen("host=db password=***"), cpool_redact("host=db password=x", small,
                                                           sizeof small));
    ASSERT_EQ(7, strlen(small));
}

/* Resolves options the way cpool_create() does, into eff and target. */
static void resolve(cpool_options *o, cpool_options *eff, char *target, size_t size)
{
    cpool_error e;
    ASSERT_OK_E(cpool_options_explain(o, NULL, 0, NULL, eff, target, size, &e), &e);
}

static const cpool_option_info *info_of(const cpool_option_info *info, size_t n,
                                        const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(info[i].name, name) == 0)
            return &info[i];
    FAIL("no option %s", name);
}

TEST(url_options_taken_out)
{
    cpool_options o, eff;
    cpool_options_init(&o, sizeof o);
    o.target = "mem://db?maxPoolSize=7&appName=a&max_connecting=3&maxIdleTimeMS=250"
               "&waitQueueTimeoutMS=40&minPoolSize=1&validation=ping_idle";
    char t[256];
    resolve(&o, &eff, t, sizeof t);
    ASSERT_STR_EQ("mem://db?appName=a", eff.target);
    ASSERT_EQ(7, eff.max_pool_size);
    ASSERT_EQ(3, eff.max_connecting);
    ASSERT_EQ(250, eff.max_idle_time_ms);
    ASSERT_EQ(40, eff.wait_queue_timeout_ms);
    ASSERT_EQ(1, eff.min_pool_size);
    ASSERT_EQ(CPOOL_VALIDATE_PING_IDLE, eff.validation);

    /* And a real pool runs with them: the connector never sees them. */
    cpool_mem *mem = test_mem_create();
    o.connector = cpool_mem_connector();
    o.connector_ctx = mem;
    o.maintenance_interval_ms = -1;
    o.target = "mem://db?maxPoolSize=1&appName=a";
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    cpool_conn *c2 = NULL;
    cpool_error e;
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(p, 0, &c2, &e));
    ASSERT_STR_CONTAINS(e.message, "maxPoolSize: 1");
    test_checkin(p, c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

TEST(env_overrides_code_url_overrides_env)
{
    cpool_options o, eff;
    cpool_options_init(&o, sizeof o);
    o.target = "mem://db";
    o.max_pool_size = 50;
    o.max_connecting = 4;
    setenv("CPOOL_MAX_POOL_SIZE", "20", 1);
    setenv("CPOOL_WAIT_QUEUE_TIMEOUT_MS", "900", 1);
    char t[256];
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(20, eff.max_pool_size);        /* env over code */
    ASSERT_EQ(4, eff.max_connecting);        /* code over default */
    ASSERT_EQ(900, eff.wait_queue_timeout_ms);
    o.target = "mem://db?maxPoolSize=30";
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(30, eff.max_pool_size);        /* url over env */
    ASSERT_EQ(900, eff.wait_queue_timeout_ms);

    cpool_option_info info[64];
    size_t n = 0;
    cpool_error e;
    ASSERT_OK_E(cpool_options_explain(&o, info, 64, &n, NULL, NULL, 0, &e), &e);
    ASSERT_GE(n, 12);
    ASSERT_EQ(CPOOL_SOURCE_URL, info_of(info, n, "max_pool_size")->source);
    ASSERT_STR_EQ("30", info_of(info, n, "max_pool_size")->value);
    ASSERT_STR_EQ("10", info_of(info, n, "max_pool_size")->default_value);
    ASSERT_EQ(CPOOL_SOURCE_ENV, info_of(info, n, "wait_queue_timeout_ms")->source);
    ASSERT_EQ(CPOOL_SOURCE_CODE, info_of(info, n, "max_connecting")->source);
    ASSERT_EQ(CPOOL_SOURCE_DEFAULT, info_of(info, n, "min_pool_size")->source);
    ASSERT_STR_EQ("CPOOL_MIN_POOL_SIZE", info_of(info, n, "min_pool_size")->env_name);
    ASSERT_STR_EQ("minPoolSize", info_of(info, n, "min_pool_size")->cmap_name);
    ASSERT_STR_EQ("url", cpool_option_source_name(CPOOL_SOURCE_URL));
}

/* A named backoff schedule fills the backoff_* options no layer set; any
 * layer's own value wins over it. */
TEST(backoff_schedule_fills_what_is_not_set)
{
    cpool_options o, eff;
    cpool_options_init(&o, sizeof o);
    o.ignore_env = true;
    o.target = "mem://db?backoff=steady";
    char t[256];
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(CPOOL_BACKOFF_STEADY, eff.backoff);
    ASSERT_EQ(1000, eff.backoff_base_ms);
    ASSERT_EQ(60000, eff.backoff_max_ms);
    ASSERT_TRUE(eff.backoff_multiplier == 2 && eff.backoff_jitter == 0.2);
    ASSERT_STR_EQ("mem://db", t);

    o.backoff_max_ms = 30000; /* code */
    o.target = "mem://db?backoff=steady&backoff_multiplier=3";
    cpool_option_info info[64];
    size_t n = 0;
    cpool_error e;
    ASSERT_OK_E(cpool_options_explain(&o, info, 64, &n, &eff, t, sizeof t, &e), &e);
    ASSERT_EQ(1000, eff.backoff_base_ms);
    ASSERT_EQ(30000, eff.backoff_max_ms);
    ASSERT_TRUE(eff.backoff_multiplier == 3);
    ASSERT_EQ(CPOOL_SOURCE_PROFILE, info_of(info, n, "backoff_base_ms")->source);
    ASSERT_EQ(CPOOL_SOURCE_CODE, info_of(info, n, "backoff_max_ms")->source);
    ASSERT_EQ(CPOOL_SOURCE_URL, info_of(info, n, "backoff_multiplier")->source);
    ASSERT_EQ(CPOOL_SOURCE_URL, info_of(info, n, "backoff")->source);
    ASSERT_STR_EQ("steady", info_of(info, n, "backoff")->value);

    o.backoff_max_ms = 10000;
    o.target = "mem://db";
    o.backoff = CPOOL_BACKOFF_OFF; /* code */
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(0, eff.backoff_base_ms);

    o.backoff = CPOOL_BACKOFF_QUICK;
    o.target = "mem://db?backoff_multiplier=0.5";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "backoff_multiplier");
    o.target = "mem://db?backoff=sometimes";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "quick|steady|off");
    o.target = NULL;
    o.backoff = (cpool_backoff_profile)7;
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
}

TEST(ignore_env_skips_environment)
{
    cpool_options o, eff;
    cpool_options_init(&o, sizeof o);
    setenv("CPOOL_MAX_POOL_SIZE", "20", 1);
    setenv("CPOOL_PROFILE", "large", 1);
    o.ignore_env = true;
    char t[64];
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(10, eff.max_pool_size);
    ASSERT_NULL(eff.profile);
}

TEST(invalid_values_name_option_value_and_range)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    cpool_error e;
    o.target = "mem://db?maxPoolSize=abc";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "max_pool_size");
    ASSERT_STR_CONTAINS(e.message, "\"abc\"");
    ASSERT_STR_CONTAINS(e.message, "from url");
    ASSERT_STR_CONTAINS(e.message, "0..4294967295");

    o.target = "mem://db?maxConnecting=0";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, ">= 1");

    o.target = "mem://db?validation=sometimes";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "none|check|ping_idle|always");

    o.target = "mem://db";
    setenv("CPOOL_CONNECT_TIMEOUT_MS", "-5", 1);
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "env CPOOL_CONNECT_TIMEOUT_MS");
    ASSERT_STR_CONTAINS(e.message, "\"-5\"");
    unsetenv("CPOOL_CONNECT_TIMEOUT_MS");

    /* cpool_create() refuses the same, and loses nothing. */
    cpool_mem *mem = test_mem_create();
    o.connector = cpool_mem_connector();
    o.connector_ctx = mem;
    o.target = "mem://db?loadBalanced=maybe";
    cpool *p = (cpool *)&o;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_NULL(p);
    ASSERT_STR_CONTAINS(e.message, "load_balanced");
    ASSERT_EQ(0, test_mem_stats(mem).connects);
    cpool_mem_destroy(mem);
}

TEST(near_miss_of_pool_option_rejected)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    cpool_error e;
    o.target = "mem://db?MaxPoolSize=3";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "\"MaxPoolSize\"");
    ASSERT_STR_CONTAINS(e.message, "did you mean maxPoolSize");
    o.target = "mem://db?max-idle-time-ms=3";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "maxIdleTimeMS");
    /* A driver's own parameter is left alone. */
    o.target = "mem://db?sslmode=disable";
    ASSERT_OK_E(cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e), &e);
}

TEST(profiles_set_presets_below_code)
{
    cpool_options o, eff;
    cpool_options_init(&o, sizeof o);
    char t[128];
    o.target = "mem://db?profile=small";
    resolve(&o, &eff, t, sizeof t);
    ASSERT_STR_EQ("mem://db", eff.target);
    ASSERT_STR_EQ("small", eff.profile);
    ASSERT_EQ(10, eff.max_pool_size);
    ASSERT_EQ(5000, eff.connect_timeout_ms);

    o.max_pool_size = 12; /* code beats the profile */
    o.profile = "large";  /* the url's profile beats the code's */
    resolve(&o, &eff, t, sizeof t);
    ASSERT_EQ(12, eff.max_pool_size);
    ASSERT_EQ(2, eff.max_connecting);

    o.target = "mem://db";
    resolve(&o, &eff, t, sizeof t);
    ASSERT_STR_EQ("large", eff.profile);
    ASSERT_EQ(12, eff.max_pool_size);
    ASSERT_EQ(10, eff.min_pool_size);
    ASSERT_EQ(8, eff.max_connecting);

    cpool_option_info info[64];
    size_t n;
    cpool_error e;
    ASSERT_OK_E(cpool_options_explain(&o, info, 64, &n, NULL, NULL, 0, &e), &e);
    ASSERT_EQ(CPOOL_SOURCE_PROFILE, info_of(info, n, "max_connecting")->source);
    ASSERT_EQ(CPOOL_SOURCE_CODE, info_of(info, n, "max_pool_size")->source);

    o.profile = "huge";
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&o, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "small|default|large");
}

TEST(options_set_by_name)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    cpool_error e;
    ASSERT_OK_E(cpool_options_set(&o, "maxPoolSize", "9", &e), &e);
    ASSERT_OK_E(cpool_options_set(&o, "validation", "always", &e), &e);
    ASSERT_OK_E(cpool_options_set(&o, "load_balanced", "on", &e), &e);
    ASSERT_OK_E(cpool_options_set(&o, "profile", "small", &e), &e);
    ASSERT_EQ(9, o.max_pool_size);
    ASSERT_EQ(CPOOL_VALIDATE_ALWAYS, o.validation);
    ASSERT_TRUE(o.load_balanced);
    ASSERT_STR_EQ("small", o.profile);
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "max_pool_sise", "9", &e));
    ASSERT_STR_CONTAINS(e.message, "unknown option \"max_pool_sise\"");
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, "max_pool_size", "-1", &e));
    ASSERT_EQ(9, o.max_pool_size); /* a refused value changes nothing */
}

TEST(connector_ctx_made_from_target)
{
    /* No connector_ctx: the connector makes one from the target and the
     * pool frees it (a leak shows under ASan). */
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.target = "mem://own?maxPoolSize=2";
    o.connector = cpool_connector_for(o.target);
    ASSERT_TRUE(o.connector == cpool_mem_connector());
    o.maintenance_interval_ms = -1;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *a = test_checkout(p);
    cpool_conn *b = test_checkout(p);
    ASSERT_NOT_NULL(cpool_conn_native(a));
    ASSERT_EQ(2, test_counts(p).in_use);
    test_checkin(p, a, 0);
    test_checkin(p, b, 0);
    cpool_destroy(p);
    ASSERT_NULL(cpool_connector_for("nosuch://x"));
    ASSERT_NULL(cpool_connector_for(NULL));
}

/* ------------------------------------------------------------ validation */

/* A pool of one connection on the fake clock with the given policy. */
static void start_validating(test_fixture *f, cpool_validation v)
{
    test_fixture_init(f);
    f->opts.max_pool_size = 1;
    f->opts.validation = v;
    f->opts.validation_idle_ms = 100;
    f->opts.clock = &f->clk.clock;
    f->opts.maintenance_interval_ms = -1;
    test_fixture_start(f);
}

TEST(validation_none_skips_check)
{
    test_fixture f;
    start_validating(&f, CPOOL_VALIDATE_NONE);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    uint64_t checks = test_mem_stats(f.mem).checks;
    c = test_checkout(f.pool);
    ASSERT_EQ(checks, test_mem_stats(f.mem).checks);
    ASSERT_EQ(0, test_mem_stats(f.mem).pings);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(validation_check_never_pings)
{
    test_fixture f;
    start_validating(&f, CPOOL_VALIDATE_CHECK);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    uint64_t checks = test_mem_stats(f.mem).checks;
    test_clock_advance_ms(&f.clk, f.pool, 10000);
    c = test_checkout(f.pool);
    ASSERT_EQ(checks + 1, test_mem_stats(f.mem).checks);
    ASSERT_EQ(0, test_mem_stats(f.mem).pings);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(validation_ping_idle_after_threshold)
{
    test_fixture f;
    start_validating(&f, CPOOL_VALIDATE_PING_IDLE);
    cpool_conn *c = test_checkout(f.pool);
    test_checkin(f.pool, c, 0);
    test_clock_advance_ms(&f.clk, f.pool, 100); /* idle exactly 100 ms: no ping */
    c = test_checkout(f.pool);
    ASSERT_EQ(0, test_mem_stats(f.mem).pings);
    test_checkin(f.pool, c, 0);
    test_clock_advance_ms(&f.clk, f.pool, 101); /* idle longer than 100 ms */
    c = test_checkout(f.pool);
    ASSERT_EQ(1, test_mem_stats(f.mem).pings);
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

TEST(validation_always_pings)
{
    test_fixture f;
    start_validating(&f, CPOOL_VALIDATE_ALWAYS);
    for (int i = 0; i < 3; i++) {
        cpool_conn *c = test_checkout(f.pool);
        test_checkin(f.pool, c, 0);
    }
    /* The first lease was a new connection: no ping. */
    ASSERT_EQ(2, test_mem_stats(f.mem).pings);
    test_fixture_free(&f);
}

TEST(validation_failure_replaced_within_checkout)
{
    test_fixture f;
    start_validating(&f, CPOOL_VALIDATE_ALWAYS);
    cpool_conn *c = test_checkout(f.pool);
    uint64_t first = cpool_conn_id(c);
    cpool_mem_conn_hang(cpool_conn_native(c)); /* alive to check(), not to ping() */
    test_checkin(f.pool, c, 0);
    cpool_error e;
    c = NULL;
    ASSERT_OK_E(cpool_checkout(f.pool, 1000, &c, &e), &e);
    ASSERT_NE(first, cpool_conn_id(c));
    ASSERT_EQ(1, test_rec_count_closed(&f.rec, CPOOL_CLOSE_ERROR));
    test_event ev;
    ASSERT_TRUE(test_rec_find(&f.rec, CPOOL_EV_CONN_CLOSED, 0, &ev));
    ASSERT_TRUE(ev.has_error);
    ASSERT_STR_CONTAINS(ev.error.message, "no answer");
    test_checkin(f.pool, c, 0);
    test_fixture_free(&f);
}

/* The unobserved fast path validates too. */
TEST(validation_on_fast_path)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.validation = CPOOL_VALIDATE_ALWAYS;
    o.max_pool_size = 1;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    uint64_t first = cpool_conn_id(c);
    cpool_mem_conn_hang(cpool_conn_native(c));
    test_checkin(p, c, 0);
    c = test_checkout(p);
    ASSERT_NE(first, cpool_conn_id(c));
    ASSERT_GE(test_mem_stats(mem).pings, 1);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* One deadline for the whole checkout: when the lock-free path's ping runs
 * out of time against a stopped server, the slow path does not start the
 * clock again (a checkout of 300 ms took 600 and more: the ping's, then a
 * new establishment's). It ends by its deadline, as a timeout. */
TEST(validation_and_establishment_share_one_deadline)
{
    cpool_mem *mem = test_mem_create();
    cpool_options o;
    test_options(&o, mem, NULL);
    o.validation = CPOOL_VALIDATE_ALWAYS;
    o.max_pool_size = 2;
    cpool *p = test_pool_create(&o);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    cpool_mem_conn_stall(cpool_conn_native(c));
    test_checkin(p, c, 0); /* parked in this thread: the lock-free path pings it */
    cpool_mem_failpoint fp = {.times = -1, .block_until_interrupted = true};
    cpool_mem_set_failpoint(mem, &fp); /* and a new connection never answers */
    cpool_error e;
    int64_t t0 = test_now_ms();
    ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(p, 300, &c, &e));
    int64_t took = test_now_ms() - t0;
    ASSERT_GE(took, 290);
    ASSERT_LT(took, 300 + 250);
    cpool_mem_set_failpoint(mem, NULL);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
}

/* A checkout with no time to ping (timeout 0, validation=always) does not
 * ping, does not close the healthy connection and does not blame the
 * server: it times out, and the connection is there for the next one. On
 * the lock-free path and on the locked one. */
TEST(no_time_to_validate_condemns_nothing)
{
    for (int observed = 0; observed < 2; observed++) {
        cpool_mem *mem = test_mem_create();
        test_recorder rec;
        test_rec_init(&rec);
        cpool_options o;
        test_options(&o, mem, observed ? &rec : NULL);
        o.validation = CPOOL_VALIDATE_ALWAYS;
        o.max_pool_size = 1;
        cpool *p = test_pool_create(&o);
        test_ready(p);
        cpool_conn *c = test_checkout(p);
        uint64_t id = cpool_conn_id(c);
        test_checkin(p, c, 0);
        uint64_t pings = test_mem_stats(mem).pings;
        cpool_error e;
        ASSERT_RC(CPOOL_ETIMEDOUT, cpool_checkout(p, 0, &c, &e));
        ASSERT_EQ(pings, test_mem_stats(mem).pings);
        ASSERT_EQ(1, test_counts(p).total);
        cpool_stats s = {.struct_size = sizeof s};
        ASSERT_OK(cpool_get_stats(p, &s));
        ASSERT_EQ(0, s.connect_fail_streak);
        ASSERT_EQ(0, s.validation_failures);
        c = test_checkout(p);
        ASSERT_EQ(id, cpool_conn_id(c));
        ASSERT_EQ(pings + 1, test_mem_stats(mem).pings);
        test_checkin(p, c, 0);
        if (observed)
            ASSERT_EQ(0, test_rec_count(&rec, CPOOL_EV_CONN_CLOSED));
        cpool_destroy(p);
        cpool_mem_destroy(mem);
        test_rec_free(&rec);
    }
}

/* Every bad input gets an error that names the option, the value and where
 * it came from, and loses nothing (issue: each was accepted silently). */
static void expect_set_refused(const char *name, const char *value, const char *needle)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&o, name, value, &e));
    ASSERT_STR_CONTAINS(e.message, needle);
}

TEST(bad_inputs_refused_with_clear_errors)
{
    /* Numbers: plain decimal only. */
    expect_set_refused("max_pool_size", " 5", "max_pool_size = \" 5\" (from code)");
    expect_set_refused("max_pool_size", "+5", "max_pool_size = \"+5\"");
    expect_set_refused("max_pool_size", "5 ", "max_pool_size = \"5 \"");
    expect_set_refused("max_pool_size", "1e3", "max_pool_size = \"1e3\"");
    expect_set_refused("lifetime_jitter", "0x1p-2", "lifetime_jitter = \"0x1p-2\"");
    expect_set_refused("lifetime_jitter", "nan", "lifetime_jitter = \"nan\"");
    expect_set_refused("backoff_jitter", "inf", "backoff_jitter = \"inf\"");
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    ASSERT_OK(cpool_options_set(&o, "lifetime_jitter", "0.25", NULL));
    ASSERT_OK(cpool_options_set(&o, "backoff_jitter", "2.5e-1", NULL));
    ASSERT_OK(cpool_options_set(&o, "max_pool_size", "5", NULL));
    ASSERT_EQ(5, o.max_pool_size);
    /* The same from the target. */
    cpool_mem *mem = test_mem_create();
    cpool_options t;
    test_options(&t, mem, NULL);
    t.target = "mem://x?maxPoolSize=%2B5";
    cpool *p = NULL;
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&t, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "max_pool_size = \"+5\" (from url)");

    /* Options that must agree. */
    test_options(&t, mem, NULL);
    t.backoff_base_ms = 60000;
    t.backoff_max_ms = 10;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&t, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "backoff_base_ms = 60000: must not exceed backoff_max_ms (10)");
    test_options(&t, mem, NULL);
    t.max_pool_size = 0;
    t.min_pool_size = 4294967295u;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&t, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "minPoolSize = 4294967295");
    ASSERT_STR_CONTAINS(e.message, "RLIMIT_NOFILE");
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&t, NULL, 0, NULL, NULL, NULL, 0, &e));

    /* An option the caller's (older, smaller) struct does not have. */
    struct {
        cpool_options o;
    } small;
    cpool_options_init(&small.o, offsetof(cpool_options, profile));
    ASSERT_RC(CPOOL_EINVAL, cpool_options_set(&small.o, "max_lifetime_ms", "1000", &e));
    ASSERT_STR_CONTAINS(e.message, "not in these options");
    ASSERT_NULL(strstr(e.message, "did you mean"));

    /* Unknown flag bits: refused, nothing changed. */
    test_options(&t, mem, NULL);
    p = test_pool_create(&t);
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    ASSERT_RC(CPOOL_EINVAL, cpool_checkin(p, c, 0x80, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown flags 0x80");
    ASSERT_EQ(1, test_counts(p).in_use); /* still the caller's lease */
    ASSERT_RC(CPOOL_EINVAL, cpool_clear(p, 0x6, NULL, &e));
    ASSERT_STR_CONTAINS(e.message, "unknown flags 0x6");
    ASSERT_EQ(CPOOL_STATE_READY, test_counts(p).state);
    test_checkin(p, c, 0);
    cpool_destroy(p);

    /* A log file that cannot be opened is named as such, by create and by
     * explain alike. */
    setenv("CPOOL_LOG", "debug", 1);
    setenv("CPOOL_LOG_PATH", "/nonexistent-dir/cpool.log", 1);
    test_options(&t, mem, NULL);
    t.ignore_env = false;
    t.on_log = NULL;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&t, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "CPOOL_LOG_PATH = \"/nonexistent-dir/cpool.log\"");
    ASSERT_RC(CPOOL_EINVAL, cpool_options_explain(&t, NULL, 0, NULL, NULL, NULL, 0, &e));
    ASSERT_STR_CONTAINS(e.message, "CPOOL_LOG_PATH");
    unsetenv("CPOOL_LOG");
    unsetenv("CPOOL_LOG_PATH");
    cpool_mem_destroy(mem);
}

/* CPOOL_LOG turns on the JSON-lines sink; the password never shows. */
TEST(env_log_sink_writes_redacted_json_lines)
{
    char path[] = "/tmp/cpool-log-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    setenv("CPOOL_LOG", "debug", 1);
    setenv("CPOOL_LOG_PATH", path, 1);
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.target = "mem://app:s3cret@db:1/x?maxPoolSize=2";
    o.connector = cpool_connector_for(o.target);
    o.maintenance_interval_ms = -1;
    cpool *p = test_pool_create(&o);
    ASSERT_STR_EQ("mem:app:***@db:1/x", cpool_address(p));
    test_ready(p);
    cpool_conn *c = test_checkout(p);
    test_checkin(p, c, 0);
    cpool_destroy(p);
    FILE *f = fopen(path, "r");
    ASSERT_NOT_NULL(f);
    char line[2048];
    int lines = 0, checked_out = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lines++;
        ASSERT_TRUE(line[0] == '{');
        ASSERT_TRUE(strstr(line, "s3cret") == NULL);
        checked_out += strstr(line, "\"Connection checked out\"") != NULL;
    }
    fclose(f);
    unlink(path);
    ASSERT_GE(lines, 6); /* created, ready, conn created/ready, checkout x2 ... */
    ASSERT_EQ(1, checked_out);

    setenv("CPOOL_LOG", "loud", 1);
    cpool_error e;
    ASSERT_RC(CPOOL_EINVAL, cpool_create(&o, &p, &e));
    ASSERT_STR_CONTAINS(e.message, "CPOOL_LOG");
}

typedef struct warn_log {
    int warns;
    char last[256];
} warn_log;

static void record_warn(const cpool_log_record *rec, void *ctx)
{
    warn_log *w = ctx;
    if (rec->level == CPOOL_LOG_WARN) {
        w->warns++;
        snprintf(w->last, sizeof w->last, "%s", rec->message);
    }
}

/* A CPOOL_* variable within two edits of one the library reads is named,
 * with the one it meant; the library's own and unrelated ones are not. A
 * new pool reports it to its log sink, unless it ignores the environment. */
TEST(misspelt_env_variable_warned)
{
    setenv("CPOOL_MAX_POOL_SIZ", "2", 1);
    setenv("CPOOL_MAX_POOL_SIZE", "3", 1);
    setenv("CPOOL_TEST_UNRELATED_SETTING", "1", 1);
    char buf[512];
    ASSERT_EQ(1, cpool_env_warnings(buf, sizeof buf));
    ASSERT_STR_EQ("CPOOL_MAX_POOL_SIZ is not a cpool variable and is ignored; did you mean "
                  "CPOOL_MAX_POOL_SIZE?",
                  buf);
    setenv("CPOOL_LGO", "debug", 1); /* a swap of neighbours is one edit */
    ASSERT_EQ(2, cpool_env_warnings(buf, sizeof buf));
    ASSERT_STR_CONTAINS(buf, "did you mean CPOOL_LOG?");
    ASSERT_EQ(2, cpool_env_warnings(NULL, 0));
    char tiny[8];
    ASSERT_EQ(2, cpool_env_warnings(tiny, sizeof tiny));
    ASSERT_EQ(7, strlen(tiny));
    unsetenv("CPOOL_LGO");

    cpool_mem *mem = test_mem_create();
    warn_log w = {0, ""};
    cpool_options o;
    test_options(&o, mem, NULL);
    o.on_log = record_warn;
    o.log_ctx = &w;
    o.log_level = CPOOL_LOG_WARN;
    cpool *p = test_pool_create(&o);
    ASSERT_EQ(1, w.warns);
    ASSERT_STR_CONTAINS(w.last, "CPOOL_MAX_POOL_SIZ ");
    ASSERT_STR_CONTAINS(w.last, "did you mean CPOOL_MAX_POOL_SIZE?");
    cpool_destroy(p);
    o.ignore_env = true;
    p = test_pool_create(&o);
    ASSERT_EQ(1, w.warns);
    cpool_destroy(p);
    cpool_mem_destroy(mem);
    unsetenv("CPOOL_MAX_POOL_SIZ");
    unsetenv("CPOOL_MAX_POOL_SIZE");
    unsetenv("CPOOL_TEST_UNRELATED_SETTING");
    ASSERT_EQ(0, cpool_env_warnings(buf, sizeof buf));
    ASSERT_STR_EQ("", buf);
}

typedef struct param_out {
    long long n;
    int choice;
    bool flag;
    char word[9];
    char secret[9];
} param_out;

static const char *const colours[] = {"red", "green", NULL};
static const cpool_param test_params[] = {
    {.name = "n", .type = CPOOL_PARAM_INT, .min = -2, .max = 100,
     .offset = offsetof(param_out, n)},
    {.name = "colour", .alias = "color", .type = CPOOL_PARAM_ENUM, .choices = colours,
     .offset = offsetof(param_out, choice)},
    {.name = "flag", .type = CPOOL_PARAM_BOOL, .offset = offsetof(param_out, flag)},
    {.name = "word", .type = CPOOL_PARAM_STRING, .min = 1, .max = 8, .charset = "abc",
     .allowed = "1 to 8 of a, b, c", .offset = offsetof(param_out, word)},
    {.name = "token", .type = CPOOL_PARAM_STRING, .min = 0, .max = 8, .secret = true,
     .offset = offsetof(param_out, secret)},
};
#define NTP (sizeof test_params / sizeof test_params[0])

static int set_param(param_out *o, uint64_t *seen, const char *name, const char *value,
                     cpool_error *e)
{
    return cpool_param_set("demo", test_params, NTP, name, value, o, seen, e);
}

/* The shared parser of connector parameter tables: each type read one way,
 * one wording for every error, a secret's value never shown. */
TEST(param_table_parsing)
{
    param_out o;
    memset(&o, 0, sizeof o);
    uint64_t seen = 0;
    cpool_error e;
    ASSERT_EQ(1, set_param(&o, &seen, "n", "-2", &e));
    ASSERT_EQ(-2, o.n);
    ASSERT_EQ(1, set_param(&o, &seen, "color", "GREEN", &e));
    ASSERT_EQ(1, o.choice);
    ASSERT_EQ(1, set_param(&o, &seen, "flag", "yes", &e));
    ASSERT_TRUE(o.flag);
    ASSERT_EQ(1, set_param(&o, &seen, "word", "abca", &e));
    ASSERT_STR_EQ("abca", o.word);
    ASSERT_EQ(0x0f, seen);
    ASSERT_EQ(0, set_param(&o, &seen, "other", "1", &e));

    static const struct {
        const char *name, *value, *msg;
    } bad[] = {
        {"n", " 5", "demo target: n = \" 5\": allowed -2..100"},
        {"n", "+5", "demo target: n = \"+5\": allowed -2..100"},
        {"n", "0x10", "demo target: n = \"0x10\": allowed -2..100"},
        {"n", "101", "demo target: n = \"101\": allowed -2..100"},
        {"n", "", "demo target: n = \"\": allowed -2..100"},
        {"n", "99999999999999999999", "allowed -2..100"},
        {"colour", "blue", "demo target: colour = \"blue\": allowed red, green"},
        {"flag", "maybe", "demo target: flag = \"maybe\": allowed on or off"},
        {"word", "abd", "demo target: word = \"abd\": allowed 1 to 8 of a, b, c"},
        {"word", "", "allowed 1 to 8 of a, b, c"},
        {"token", "much-too-long", "demo target: token = \"***\": allowed 0..8 bytes"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        ASSERT_RC(CPOOL_EINVAL, set_param(&o, &seen, bad[i].name, bad[i].value, &e));
        ASSERT_STR_CONTAINS(e.message, bad[i].msg);
    }
    ASSERT_EQ(-2, o.n); /* a refused value changes nothing */

    ASSERT_RC(CPOOL_EINVAL, cpool_param_unknown("demo", test_params, NTP, "size", "3",
                                                " and more", &e));
    ASSERT_STR_EQ("demo target: unknown parameter \"size\" = \"3\"; allowed: n, colour, "
                  "flag, word, token and more",
                  e.message);
    ASSERT_RC(CPOOL_EINVAL,
              cpool_param_unknown("demo", test_params, NTP, "passwrd", "hunter2", NULL, &e));
    ASSERT_STR_CONTAINS(e.message, "\"passwrd\" = \"***\"");
    char buf[64];
    ASSERT_STR_EQ("red, green", cpool_param_allowed(&test_params[1], buf, sizeof buf));
    ASSERT_STR_EQ("0..8 bytes", cpool_param_allowed(&test_params[4], buf, sizeof buf));

}

/* docs/configuration.md's table of options is the rows' own text: name,
 * CMAP name, environment variable, default, what is allowed and what it
 * means, in the rows' order. On a mismatch the expected row is printed,
 * ready to paste. */
/* A table cell's text: '|' escaped so it does not end the cell. */
static const char *cell(const char *text, char *buf, size_t size)
{
    size_t o = 0;
    for (; *text != '\0' && o + 2 < size; text++) {
        if (*text == '|')
            buf[o++] = '\\';
        buf[o++] = *text;
    }
    buf[o] = '\0';
    return buf;
}

TEST(options_doc_table_matches_rows)
{
    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.connector = cpool_mem_connector();
    o.ignore_env = true;
    cpool_option_info info[64];
    size_t n = 0;
    cpool_error e;
    ASSERT_OK_E(cpool_options_explain(&o, info, 64, &n, NULL, NULL, 0, &e), &e);
    ASSERT_TRUE(n > 20);
    FILE *f = fopen(CPOOL_SOURCE_DIR "/docs/configuration.md", "r");
    ASSERT_NOT_NULL(f);
    char line[1024];
    size_t row = 0;
    bool in_table = false;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "| option | CMAP name | environment | default |", 45) == 0) {
            in_table = true;
            continue;
        }
        if (!in_table || strncmp(line, "| ---", 5) == 0)
            continue;
        if (line[0] != '|')
            break;
        char want[1024], allowed[256], help[512];
        if (row < n)
            snprintf(want, sizeof want, "| `%s` | %s%s%s | `%s` | %s | %s | %s |",
                     info[row].name, info[row].cmap_name != NULL ? "`" : "",
                     info[row].cmap_name != NULL ? info[row].cmap_name : "—",
                     info[row].cmap_name != NULL ? "`" : "", info[row].env_name,
                     info[row].default_value, cell(info[row].allowed, allowed, sizeof allowed),
                     cell(info[row].help, help, sizeof help));
        if (row >= n || strcmp(line, want) != 0)
            FAIL("docs/configuration.md, options table row %zu:\n  is   %s\n  want %s", row + 1,
                 line, row < n ? want : "(no such option)");
        row++;
    }
    fclose(f);
    ASSERT_EQ(n, row);
}

TEST_MAIN()
