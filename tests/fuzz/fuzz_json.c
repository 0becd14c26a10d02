/* fuzz_json.c -- cpool_log_format_json() writes valid JSON for any record.
 *
 * The input is cut into fields: a type byte, then a string (up to a NUL)
 * or the raw 8 bytes of an integer or a double (any bit pattern: NaN,
 * infinities, denormals). The line must parse with a strict validator
 * (an object of string keys; values strings, numbers, null; strings of
 * well-formed UTF-8 with JSON escapes only), the length must equal what
 * the formatter returned, and a buffer of any size gets a terminated
 * prefix of it. */
#include <cpool/cpool.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *p;

static int ws(void)
{
    return 0;
}

static int string_(void)
{
    if (*p != '"')
        return -1;
    p++;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p;
        if (c == '\0' || c < 0x20)
            return -1;
        if (c == '\\') {
            p++;
            if (strchr("\"\\/bfnrt", *p) != NULL && *p != '\0') {
                p++;
            } else if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (strchr("0123456789abcdefABCDEF", p[i]) == NULL || p[i] == '\0')
                        return -1;
                p += 5;
            } else {
                return -1;
            }
        } else if (c < 0x80) {
            p++;
        } else {
            int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
            if (n == 0 || c > 0xF4)
                return -1;
            for (int i = 1; i < n; i++)
                if (((unsigned char)p[i] & 0xC0) != 0x80)
                    return -1;
            p += n;
        }
    }
    p++;
    return 0;
}

static int number_(void)
{
    if (*p == '-')
        p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (*p >= '0' && *p <= '9')
            p++;
    else
        return -1;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9'))
            return -1;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return -1;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return 0;
}

static int value_(void)
{
    if (*p == '"')
        return string_();
    if (strncmp(p, "null", 4) == 0)
        return p += 4, 0;
    return number_();
}

static int object_(void)
{
    (void)ws;
    if (*p++ != '{')
        return -1;
    for (int first = 1; *p != '}'; first = 0) {
        if (!first && *p++ != ',')
            return -1;
        if (string_() != 0 || *p++ != ':' || value_() != 0)
            return -1;
    }
    p++;
    return *p == '\0' ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cpool_log_field f[32];
    char strs[32][128];
    size_t n = 0, i = 0;
    while (i < size && n < 32) {
        cpool_log_field *x = &f[n];
        memset(x, 0, sizeof *x);
        x->key = (n % 3 == 0) ? "k" : (n % 3 == 1) ? "\xff\"key" : NULL;
        unsigned char t = data[i++];
        if (t % 3 == 0) {
            size_t len = 0;
            while (i < size && data[i] != 0 && len < sizeof strs[n] - 1)
                strs[n][len++] = (char)data[i++];
            strs[n][len] = '\0';
            i++;
            x->type = CPOOL_LOG_STR;
            x->s = (t & 8) ? NULL : strs[n];
        } else {
            uint64_t raw = 0;
            for (int b = 0; b < 8 && i < size; b++)
                raw |= (uint64_t)data[i++] << (8 * b);
            if (t % 3 == 1) {
                x->type = CPOOL_LOG_INT;
                memcpy(&x->i, &raw, sizeof x->i);
            } else {
                x->type = CPOOL_LOG_DOUBLE;
                memcpy(&x->d, &raw, sizeof x->d);
            }
        }
        n++;
    }
    cpool_log_record rec;
    memset(&rec, 0, sizeof rec);
    rec.level = (cpool_log_level)(size % 5);
    rec.component = n > 0 && f[0].type == CPOOL_LOG_STR ? f[0].s : "connection";
    rec.message = n > 1 && f[1].type == CPOOL_LOG_STR ? f[1].s : NULL;
    rec.pool = size % 2 ? "pool\n\x80" : NULL;
    rec.time_ms = (int64_t)size * 7919;
    rec.fields = f;
    rec.nfields = n;
    size_t need = cpool_log_format_json(&rec, NULL, 0);
    char *big = malloc(need + 1);
    if (cpool_log_format_json(&rec, big, need + 1) != need || strlen(big) != need)
        abort();
    p = big;
    if (object_() != 0) {
        fprintf(stderr, "invalid JSON: %s\n", big);
        abort();
    }
    size_t cut = size % (need + 1);
    char *small = malloc(cut + 1);
    cpool_log_format_json(&rec, small, cut + 1);
    if (strlen(small) != cut || strncmp(small, big, cut) != 0)
        abort();
    free(small);
    free(big);
    return 0;
}
