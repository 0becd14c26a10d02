/* error.c -- error codes, names and the helpers connectors use to fill a
 * cpool_error. The tables come from CPOOL_ERROR_MAP so that the enum, the
 * names and the descriptions cannot drift apart. */
#include "pool_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *cpool_strerror(int code)
{
    switch (code) {
    case CPOOL_OK: return "success";
#define X(name, value, text) case CPOOL_##name: return text;
    CPOOL_ERROR_MAP(X)
#undef X
    default: return "unknown error";
    }
}

const char *cpool_err_name(int code)
{
    switch (code) {
    case CPOOL_OK: return "CPOOL_OK";
#define X(name, value, text) case CPOOL_##name: return "CPOOL_" #name;
    CPOOL_ERROR_MAP(X)
#undef X
    default: return "CPOOL_E?";
    }
}

const char *cpool_label_name(unsigned label_bit)
{
    switch (label_bit) {
    case CPOOL_LABEL_SYSTEM_OVERLOADED: return "SystemOverloadedError";
    case CPOOL_LABEL_RETRYABLE: return "RetryableError";
    default: return NULL;
    }
}

static void verr(cpool_error *err, int code, const char *fmt, va_list ap)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof *err);
    err->code = code;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
}

int cpool__err(cpool_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int cpool_error_set(cpool_error *err, int code, cpool_phase phase,
                    cpool_fail_kind kind, int native, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(err, code, fmt, ap);
    va_end(ap);
    if (err != NULL) {
        err->phase = phase;
        err->kind = kind;
        err->native = native;
    }
    return code;
}

/* CMAP "backpressure": a network error or timeout while connecting, in TLS
 * I/O or during the handshake may mean the server is overloaded, so the
 * caller should back off and retry rather than treat the server as down.
 * Authentication comes after the handshake and is not covered; DNS and
 * certificate failures cannot come from overload. */
bool cpool_is_backpressure(cpool_phase phase, cpool_fail_kind kind)
{
    if (kind == CPOOL_FAIL_CAPACITY)
        return true; /* the server said it is full: overload by definition */
    if (kind != CPOOL_FAIL_NETWORK && kind != CPOOL_FAIL_TIMEOUT)
        return false;
    return phase == CPOOL_PHASE_CONNECT || phase == CPOOL_PHASE_TLS ||
           phase == CPOOL_PHASE_HANDSHAKE;
}
