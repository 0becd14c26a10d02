/* params.h -- what the shared parameter parser (params.c) offers the
 * library's own connectors beyond cpool_connector.h. */
#ifndef CPOOL_PARAMS_H
#define CPOOL_PARAMS_H

#include <stdbool.h>
#include <stddef.h>

/* True when a parameter's name looks like a secret's (password, passwd,
 * pw, secret, token, auth, key): a misspelt one's value is never shown. */
bool cpool__name_looks_secret(const char *name);

/* True when the value of the parameter or conninfo keyword k (n bytes) is a
 * secret: libpq's password and sslpassword, pass and pwd, and every
 * parameter a built-in connector's table marks secret. */
bool cpool__secret_key(const char *k, size_t n);

#endif
