/* params.c -- the shared parser of connector parameter tables
 * (cpool_param in cpool_connector.h): one reading of each type, one
 * wording for every error, secrets never shown. */
#include "params.h"

#include "cpool/cpool_connector.h"

#include <stddef.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool cpool__name_looks_secret(const char *name)
{
    static const char *const words[] = {"pas", "pw", "secret", "token", "auth", "key", NULL};
    for (int i = 0; words[i] != NULL; i++)
        if (strcasestr(name, words[i]) != NULL)
            return true;
    return false;
}

static void allowed_text(const cpool_param *p, char *buf, size_t size);

/* A decimal integer and nothing else: no sign but '-', no spaces, no hex. */
static bool parse_int(const char *s, long long *out)
{
    if (s[0] == '\0' || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

const char *cpool_param_allowed(const cpool_param *p, char *buf, size_t size)
{
    if (buf == NULL || size == 0)
        return buf;
    allowed_text(p, buf, size);
    return buf;
}

/* What the row allows, for an error. */
static void allowed_text(const cpool_param *p, char *buf, size_t size)
{
    if (p == NULL) {
        buf[0] = '\0';
        return;
    }
    if (p->allowed != NULL) {
        snprintf(buf, size, "%s", p->allowed);
        return;
    }
    switch (p->type) {
    case CPOOL_PARAM_INT: snprintf(buf, size, "%lld..%lld", p->min, p->max); return;
    case CPOOL_PARAM_BOOL: snprintf(buf, size, "on or off"); return;
    case CPOOL_PARAM_STRING:
        snprintf(buf, size, "%lld..%lld bytes", p->min, p->max);
        return;
    case CPOOL_PARAM_ENUM: {
        size_t used = 0;
        buf[0] = '\0';
        for (int i = 0; p->choices != NULL && p->choices[i] != NULL && used < size; i++) {
            int w = snprintf(buf + used, size - used, "%s%s", i > 0 ? ", " : "",
                             p->choices[i]);
            if (w < 0)
                break;
            used += (size_t)w;
        }
        return;
    }
    }
    buf[0] = '\0';
}

static int bad_value(const char *connector, const cpool_param *p, const char *value,
                     cpool_error *err)
{
    char allowed[256];
    allowed_text(p, allowed, sizeof allowed);
    return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                           "%s target: %s = \"%.64s\": allowed %s", connector, p->name,
                           p->secret ? "***" : value, allowed);
}

int cpool_param_set(const char *connector, const cpool_param *table, size_t n,
                    const char *name, const char *value, void *out, uint64_t *seen,
                    cpool_error *err)
{
    if (connector == NULL || table == NULL || name == NULL || value == NULL || out == NULL)
        return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                               "param_set: connector, table, name, value and out are "
                               "required");
    size_t i;
    for (i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0 ||
            (table[i].alias != NULL && strcmp(table[i].alias, name) == 0))
            break;
    if (i == n)
        return 0;
    const cpool_param *p = &table[i];
    char *at = (char *)out + p->offset;
    switch (p->type) {
    case CPOOL_PARAM_INT: {
        long long v;
        if (!parse_int(value, &v) || v < p->min || v > p->max)
            return bad_value(connector, p, value, err);
        memcpy(at, &v, sizeof v);
        break;
    }
    case CPOOL_PARAM_ENUM: {
        int k;
        for (k = 0; p->choices != NULL && p->choices[k] != NULL; k++)
            if (strcasecmp(p->choices[k], value) == 0)
                break;
        if (p->choices == NULL || p->choices[k] == NULL)
            return bad_value(connector, p, value, err);
        memcpy(at, &k, sizeof k);
        break;
    }
    case CPOOL_PARAM_BOOL: {
        static const char *const on[] = {"on", "true", "yes", "1", NULL};
        static const char *const off[] = {"off", "false", "no", "0", NULL};
        bool v = false, ok = false;
        for (int k = 0; on[k] != NULL && !ok; k++) {
            if (strcasecmp(value, on[k]) == 0)
                ok = v = true;
            else if (strcasecmp(value, off[k]) == 0)
                ok = true;
        }
        if (!ok)
            return bad_value(connector, p, value, err);
        memcpy(at, &v, sizeof v);
        break;
    }
    case CPOOL_PARAM_STRING: {
        size_t len = strlen(value);
        if ((long long)len < p->min || (long long)len > p->max ||
            (p->charset != NULL && strspn(value, p->charset) != len))
            return bad_value(connector, p, value, err);
        memcpy(at, value, len + 1);
        break;
    }
    default:
        return bad_value(connector, p, value, err);
    }
    if (seen != NULL && i < 64)
        *seen |= 1ULL << i;
    return 1;
}

int cpool_param_unknown(const char *connector, const cpool_param *table, size_t n,
                        const char *name, const char *value, const char *extra,
                        cpool_error *err)
{
    char names[400];
    size_t used = 0;
    names[0] = '\0';
    for (size_t i = 0; table != NULL && i < n && used < sizeof names; i++) {
        int w = snprintf(names + used, sizeof names - used, "%s%s", i > 0 ? ", " : "",
                         table[i].name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    bool secret = name == NULL || cpool__name_looks_secret(name);
    return cpool_error_set(err, CPOOL_EINVAL, CPOOL_PHASE_NONE, CPOOL_FAIL_OTHER, 0,
                           "%s target: unknown parameter \"%.40s\" = \"%.40s\"; allowed: %s%s",
                           connector != NULL ? connector : "?", name != NULL ? name : "",
                           secret || value == NULL ? "***" : value, names,
                           extra != NULL ? extra : "");
}
