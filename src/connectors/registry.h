/* registry.h -- what the registry offers the rest of the library. */
#ifndef CPOOL_REGISTRY_H
#define CPOOL_REGISTRY_H

#include "cpool/cpool_connector.h"

/* A target that names where to find the servers rather than the servers
 * (redis-sentinel://): the multi-host target it stands for, in *out (free()
 * it); *out NULL when the target names its servers itself. */
int cpool__resolve_target(const char *target, int64_t timeout_ms, char **out,
                          cpool_error *err);

#endif /* CPOOL_REGISTRY_H */
