/* version.c -- the library's version, as built. */
#include "cpool/cpool.h"

const char *cpool_version(void)
{
    return CPOOL_VERSION_STRING;
}

int cpool_version_number(void)
{
    return CPOOL_VERSION_NUMBER;
}
