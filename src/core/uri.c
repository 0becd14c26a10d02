/* uri.c -- query-string helpers for targets, and password redaction.
 *
 * Targets are "scheme://userinfo@host/path?name=value&..." URIs, "sqlite:PATH?..."
 * or libpq conninfo strings. The pool takes its own options out of the
 * query and hands the rest to the connector, so these helpers edit a query
 * in place and keep everything else byte for byte. */
#include "cpool/cpool_connector.h"
#include "params.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int cpool_uri_decode(const char *in, size_t len, char *out, size_t outsize)
{
    size_t o = 0;
    if (in == NULL || out == NULL || outsize == 0)
        return CPOOL_EINVAL;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= len)
                return CPOOL_EINVAL;
            int h = hexval((unsigned char)in[i + 1]), l = hexval((unsigned char)in[i + 2]);
            if (h < 0 || l < 0)
                return CPOOL_EINVAL;
            c = h * 16 + l;
            i += 2;
        }
        if (o + 1 >= outsize)
            return CPOOL_EINVAL;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

/* Where the query starts (just past '?') and ends ('#' or the end). */
static const char *query_of(const char *uri, const char **end)
{
    const char *q = strchr(uri, '?');
    if (q == NULL)
        return NULL;
    q++;
    const char *h = strchr(q, '#');
    *end = h != NULL ? h : q + strlen(q);
    return q;
}

int cpool_uri_next(const char *uri, size_t *pos, char *name, size_t namesize,
                   char *val, size_t valsize)
{
    const char *end;
    if (uri == NULL || pos == NULL)
        return CPOOL_EINVAL;
    const char *q = query_of(uri, &end);
    if (q == NULL)
        return 0;
    const char *p = q + *pos;
    while (p < end && *p == '&')
        p++;
    if (p >= end)
        return 0;
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp != NULL ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(stop - p));
    const char *nend = eq != NULL ? eq : stop;
    size_t nlen = (size_t)(nend - p);
    *pos = (size_t)(stop - q);
    if (nlen == 0 || nlen >= namesize)
        return CPOOL_EINVAL;
    memcpy(name, p, nlen);
    name[nlen] = '\0';
    if (eq == NULL) {
        if (valsize == 0)
            return CPOOL_EINVAL;
        val[0] = '\0';
        return 1;
    }
    return cpool_uri_decode(eq + 1, (size_t)(stop - eq - 1), val, valsize) < 0
               ? CPOOL_EINVAL
               : 1;
}

int cpool_uri_take(char *uri, const char *name, char *val, size_t valsize)
{
    const char *end;
    if (uri == NULL || name == NULL)
        return CPOOL_EINVAL;
    const char *qc = query_of(uri, &end);
    if (qc == NULL)
        return 0;
    char *q = (char *)qc;
    size_t nlen = strlen(name);
    int found = 0;
    char *p = q;
    while (p < end) {
        char *amp = memchr(p, '&', (size_t)(end - p));
        char *stop = amp != NULL ? amp : (char *)end;
        char *eq = memchr(p, '=', (size_t)(stop - p));
        char *nend = eq != NULL ? eq : stop;
        if ((size_t)(nend - p) == nlen && memcmp(p, name, nlen) == 0) {
            if (val != NULL) {
                if (eq == NULL) {
                    if (valsize == 0)
                        return CPOOL_EINVAL;
                    val[0] = '\0';
                } else if (cpool_uri_decode(eq + 1, (size_t)(stop - eq - 1), val,
                                            valsize) < 0) {
                    return CPOOL_EINVAL;
                }
            }
            found = 1;
            /* Cut [p, stop] including the '&' after it, if any. */
            char *from = amp != NULL ? amp + 1 : stop;
            size_t cut = (size_t)(from - p);
            memmove(p, from, strlen(from) + 1);
            end -= cut;
            continue;
        }
        p = amp != NULL ? amp + 1 : stop;
        if (amp == NULL)
            break;
    }
    if (found) {
        /* A trailing '&' (the last parameter was cut) or an empty query. */
        size_t len = strlen(q);
        const char *h = strchr(q, '#');
        size_t qlen = h != NULL ? (size_t)(h - q) : len;
        if (qlen > 0 && q[qlen - 1] == '&') {
            memmove(q + qlen - 1, q + qlen, len - qlen + 1);
            qlen--;
        }
        if (qlen == 0)
            memmove(q - 1, q, strlen(q) + 1);
    }
    return found;
}

/* Appends [s, s+n) to the output, counting what did not fit. */
typedef struct outbuf {
    char *buf;
    size_t size, len;
} outbuf;

static void put(outbuf *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++, o->len++)
        if (o->len + 1 < o->size)
            o->buf[o->len] = s[i];
}

/* conninfo: "... password=secret ..." or "password = 'a b\'c'". */
static size_t conninfo_value_end(const char *v)
{
    size_t i = 0;
    if (v[0] == '\'') {
        for (i = 1; v[i] != '\0' && v[i] != '\''; i++)
            if (v[i] == '\\' && v[i + 1] != '\0')
                i++;
        return v[i] == '\'' ? i + 1 : i;
    }
    /* Unquoted: up to a blank, a backslash escaping the next byte (libpq
     * reads "a\ b" as "a b"). */
    while (v[i] != '\0' && !isspace((unsigned char)v[i])) {
        if (v[i] == '\\' && v[i + 1] != '\0')
            i++;
        i++;
    }
    return i;
}

/* Length of a URL scheme followed by "://" at the start of t, 0 when t is
 * not a URL (a conninfo string, a path, "sqlite:FILE"). Only the start
 * counts: "application_name=svc://api" is a conninfo value. */
static size_t url_scheme(const char *t)
{
    if (!isalpha((unsigned char)t[0]))
        return 0;
    size_t n = 1;
    while (isalnum((unsigned char)t[n]) || t[n] == '+' || t[n] == '.' || t[n] == '-')
        n++;
    return strncmp(t + n, "://", 3) == 0 ? n : 0;
}

/* A query ("k=v&k2=v2"): secret values masked. Parameters split on '&'
 * only: libpq knows no fragment, so a '#' belongs to a value. */
static void redact_query(outbuf *o, const char *q)
{
    while (*q != '\0') {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (eq != NULL && cpool__secret_key(q, (size_t)(eq - q))) {
            put(o, q, (size_t)(eq + 1 - q));
            put(o, "***", 3);
        } else {
            put(o, q, len);
        }
        q += len;
        if (*q == '&')
            put(o, q++, 1);
    }
}

/* A libpq conninfo string ("host=db password='a b' sslpassword=x"), read
 * as libpq reads it: keywords, '=', values bare or single-quoted with
 * backslash escapes. Secret values are masked; the rest is copied. */
static void redact_conninfo(outbuf *o, const char *p)
{
    static const char blanks[] = " \t\n\r\f\v";
    while (*p != '\0') {
        size_t n = strspn(p, blanks);
        put(o, p, n);
        p += n;
        const char *key = p;
        size_t klen = strcspn(p, "= \t\n\r\f\v");
        put(o, p, klen);
        p += klen;
        n = strspn(p, blanks);
        put(o, p, n);
        p += n;
        if (*p != '=')
            continue; /* a bare word (a database name): nothing to mask */
        put(o, p++, 1);
        n = strspn(p, blanks);
        put(o, p, n);
        p += n;
        size_t vlen = conninfo_value_end(p);
        if (!cpool__secret_key(key, klen))
            put(o, p, vlen);
        else if (*p == '\'')
            put(o, "'***'", 5); /* quoted, as libpq lets the next keyword
                                   follow a closing quote at once */
        else
            put(o, "***", 3);
        p += vlen;
    }
}

size_t cpool_redact(const char *target, char *buf, size_t size)
{
    outbuf o = {buf, size, 0};
    const char *t = target != NULL ? target : "";
    size_t sl = url_scheme(t);
    if (sl > 0) {
        /* scheme://[user[:password]@]host...[?query]. The user info is read
         * as libpq reads it: up to an '@' before the first '/' (a '?' or
         * '#' may be part of the password); the last such '@' counts, so
         * that a password holding '@' is masked whole. */
        const char *auth = t + sl + 3;
        size_t alen = strcspn(auth, "/");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (auth[i] == '@')
                at = auth + i; /* the last '@' ends the user info */
        const char *colon = at != NULL ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        /* libpq ends the user info at the first '@' (a later one may sit in
         * a query value); so does any URL whose user info holds no
         * password. Other schemes' passwords may hold a bare '@'. */
        if (at != NULL && (colon == NULL || strncmp(t, "postgres", 8) == 0)) {
            at = memchr(auth, '@', alen);
            colon = memchr(auth, ':', (size_t)(at - auth));
        }
        const char *p = t;
        if (colon != NULL) {
            put(&o, p, (size_t)(colon + 1 - p));
            put(&o, "***", 3);
            p = at;
        } else if (at != NULL) {
            /* User info without a password: kept, and the query is looked
             * for after it (a '?' inside it is not one). */
            put(&o, p, (size_t)(at - p));
            p = at;
        }
        size_t before = strcspn(p, "?");
        put(&o, p, before);
        p += before;
        if (*p == '?') {
            put(&o, p++, 1);
            redact_query(&o, p);
        }
    } else if (strchr(t, '=') != NULL && strncmp(t, "sqlite:", 7) != 0) {
        redact_conninfo(&o, t);
    } else {
        /* A path or "sqlite:PATH?query": only a query can hold a secret. */
        size_t before = strcspn(t, "?");
        put(&o, t, before);
        if (t[before] == '?') {
            put(&o, t + before, 1);
            redact_query(&o, t + before + 1);
        }
    }
    if (size > 0)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len;
}
