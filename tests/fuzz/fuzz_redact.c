/* fuzz_redact.c -- cpool_redact() against libpq's own reading of a target.
 *
 * For any input: the output is terminated, the returned length is what
 * snprintf would return, a small buffer gets a prefix of the large one.
 * For an input libpq parses (conninfo or URL), libpq must parse the
 * redacted text too, and no password or sslpassword it reads there may
 * equal the one it read in the target: no secret libpq sees survives.
 * (Comparing libpq's values, not substrings: libpq decodes escapes and
 * %XX, so a value's bytes need not appear in the target as such, and the
 * "***" mask can spell a value made of '*'.) */
#include <cpool/cpool_connector.h>

#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    PQconninfoOption *before = PQconninfoParse(in, &perr);
    PQfreemem(perr);
    if (before != NULL) {
        perr = NULL;
        PQconninfoOption *after = PQconninfoParse(out, &perr);
        if (after == NULL) {
            fprintf(stderr, "redaction broke a target libpq reads (%s):\n  in:  %s\n  out: %s\n",
                    perr != NULL ? perr : "?", in, out);
            abort();
        }
        for (PQconninfoOption *b = before, *a = after; b->keyword != NULL; b++, a++) {
            if (strcmp(b->keyword, "password") != 0 && strcmp(b->keyword, "sslpassword") != 0)
                continue;
            if (b->val == NULL || b->val[0] == '\0' || strcmp(b->val, "***") == 0)
                continue;
            if (a->val != NULL && strcmp(a->val, b->val) == 0) {
                fprintf(stderr, "secret %s=\"%s\" survives redaction:\n  in:  %s\n  out: %s\n",
                        b->keyword, b->val, in, out);
                abort();
            }
        }
        PQconninfoFree(after);
    }
    PQconninfoFree(before);
    free(out);
    free(in);
    return 0;
}
