#!/usr/bin/env bash
# cluster_stop.sh SCRIPT DIR -- stops the Redis servers and Sentinels a
# cluster drill started under DIR (the cleanup of test_redis_cluster.c).
script=$1
dir=$2
for n in sentinel3 sentinel2 sentinel1 replica primary; do
    [[ -d "$dir/$n" ]] && "$script" stop "$dir/$n" >/dev/null 2>&1
done
exit 0
