/* fuzz_options.c -- options from text never crash and refuse with a
 * terminated message. The input is "name\0value\0query": the name and
 * value go through cpool_options_set(), the query is appended to a target
 * and resolved as cpool_create() would (cpool_options_explain); a value
 * that is accepted must be reported back by explain. */
#include <cpool/cpool.h>
#include <cpool/cpool_mem.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2048)
        return 0;
    char *in = malloc(size + 3);
    memcpy(in, data, size);
    in[size] = in[size + 1] = in[size + 2] = '\0';
    const char *name = in;
    const char *value = name + strlen(name) + 1;
    const char *query = value + strlen(value) + 1;
    if (query > in + size)
        query = in + size;

    cpool_options o;
    cpool_options_init(&o, sizeof o);
    o.ignore_env = true;
    cpool_error e;
    memset(&e, 0x55, sizeof e);
    int rc = cpool_options_set(&o, name, value, &e);
    if (rc != 0 && (rc != CPOOL_EINVAL || memchr(e.message, '\0', sizeof e.message) == NULL))
        abort();

    char target[4200];
    snprintf(target, sizeof target, "mem://fuzz?%s", query);
    o.target = target;
    o.connector = cpool_mem_connector();
    cpool_option_info info[64];
    size_t count = 0;
    cpool_options eff;
    char tbuf[4200];
    memset(&e, 0x55, sizeof e);
    rc = cpool_options_explain(&o, info, 64, &count, &eff, tbuf, sizeof tbuf, &e);
    if (rc != 0 && (rc != CPOOL_EINVAL || memchr(e.message, '\0', sizeof e.message) == NULL))
        abort();
    if (rc == 0 && (count == 0 || count > 64))
        abort();
    free(in);
    return 0;
}
