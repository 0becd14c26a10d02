#!/usr/bin/env bash
# cluster_stop.sh SCRIPT DIR -- stops the primary and replicas a cluster
# drill started under DIR (the cleanup of tests/pg/test_pg_cluster.c).
script=$1
dir=$2
for n in replica2 replica1 primary; do
    [[ -d "$dir/$n" ]] && "$script" stop "$dir/$n" >/dev/null 2>&1
done
exit 0
