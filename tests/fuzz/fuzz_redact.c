/* fuzz_redact.c -- cpool_redact() against libpq's own reading of a target.
 *
 * For any input: the output is terminated, the returned length is what
 * snprintf would return, a small buffer gets a prefix of the large one.
 * For an input libpq parses (conninfo or URL): every password and
 * sslpassword value libpq sees (4 bytes or more) occurs fewer times in the
 * redacted text than in the target -- the secret occurrence is gone, even
 * if the same bytes appear elsewhere in the target. Values holding the
 * mask's '*' are not judged: the mask can spell them. */
#include <cpool/cpool_connector.h>

#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0, len = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    (void)len;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 4096)
        return 0;
    char *in = malloc(size + 1);
    memcpy(in, data, size);
    in[size] = '\0';
    if (strlen(in) != size) { /* an embedded NUL: a shorter C string */
        free(in);
        return 0;
    }
    size_t need = cpool_redact(in, NULL, 0);
    char *out = malloc(need + 1);
    size_t got = cpool_redact(in, out, need + 1);
    if (got != need || strlen(out) != need)
        abort();
    char small[7];
    cpool_redact(in, small, sizeof small);
    if (strlen(small) != (need < 6 ? need : 6) || strncmp(small, out, strlen(small)) != 0)
        abort();

    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(in, &perr);
    PQfreemem(perr);
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        /* A value holding '*' can be spelt again by the mask itself
         * ("a***:***" contains "*:**"): such values prove nothing. */
        if (o->val == NULL || strlen(o->val) < 4 || strchr(o->val, '*') != NULL)
            continue;
        if (strcmp(o->keyword, "password") != 0 && strcmp(o->keyword, "sslpassword") != 0)
            continue;
        size_t before = count(in, o->val);
        if (before > 0 && count(out, o->val) >= before) {
            fprintf(stderr, "secret %s=\"%s\" survives redaction:\n  in:  %s\n  out: %s\n",
                    o->keyword, o->val, in, out);
            abort();
        }
    }
    PQconninfoFree(opts);
    free(out);
    free(in);
    return 0;
}
