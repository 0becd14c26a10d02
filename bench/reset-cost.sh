#!/usr/bin/env bash
# reset-cost.sh -- what each session-reset mode costs, in operations per
# second, side by side in one run, on throwaway PostgreSQL and Redis servers.
#
# Usage: bench/reset-cost.sh [CPOOL_BINARY]
#
# For each connector it runs `cpool bench` (the statement: SELECT 1 / PING)
# in these modes, interleaved, REPS times each, and prints the median:
#   tracked      the default: a check-in costs a round trip only when the
#                connector sees something to undo
#   always       reset=always: a full reset (DISCARD ALL / RESET and the
#                handshake) at every check-in
#   tenants      two tenants a:1,b:1 share the pool: a full reset only when
#                a connection goes to the other tenant (affinity keeps that
#                rare)
#   tenants-1    the same on a pool of one connection: nearly every lease
#                changes tenant, the worst case
# Environment: THREADS (4), SECONDS per run (3), REPS (3), POOL (4),
# PORT_BASE (33400; PostgreSQL on +32, Redis on +79).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cpool=${1:-$root/build/tools/cpool}
[[ -x $cpool ]] || { echo "reset-cost.sh: no cpool binary at $cpool (make test builds it)" >&2; exit 2; }
threads=${THREADS:-4}
seconds=${SECONDS_PER_RUN:-3}
reps=${REPS:-3}
pool=${POOL:-4}
base=${PORT_BASE:-33400}
pg_port=$((base + 32))
redis_port=$((base + 79))
work=$(mktemp -d /tmp/cpool-reset-cost.XXXXXX)

cleanup() {
    "$root/scripts/pg-server.sh" stop "$work/pg" >/dev/null 2>&1 || true
    "$root/scripts/redis-server.sh" stop "$work/redis" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/pg-server.sh" start "$work/pg" "$pg_port" >/dev/null
"$root/scripts/redis-server.sh" start "$work/redis" "$redis_port" >/dev/null

pg="postgresql://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable&gssencmode=disable"
redis="redis://127.0.0.1:$redis_port/0"

# run TARGET MODE -> ops/s
run() {
    local target=$1 mode=$2 args=() size=$pool
    case $mode in
    always) target="$target&reset=always" ;;
    tenants) args=(--tenants a:1,b:1) ;;
    tenants-1) args=(--tenants a:1,b:1); size=1 ;;
    esac
    [[ $target == redis://*'&'* ]] && target=${target/&/?}
    "$cpool" bench "$target" -q -t "$threads" -d "$seconds" -o "max_pool_size=$size" \
        "${args[@]}" --json - |
        sed -n 's/.*"throughput_ops_s": *\([0-9.]*\).*/\1/p' | xargs printf '%.0f\n'
}

errors() {
    redis-cli -p "$redis_port" INFO stats | tr -d '\r' | sed -n 's/^total_error_replies://p'
}

modes=(tracked always tenants tenants-1)
declare -A got
errors_before=$(errors)
for rep in $(seq "$reps"); do
    for conn in pg redis; do
        for mode in "${modes[@]}"; do
            target=${!conn}
            got[$conn/$mode]+="$(run "$target" "$mode") "
        done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s' "ops/s"
for mode in "${modes[@]}"; do printf '%12s' "$mode"; done
printf '\n'
for conn in pg redis; do
    printf '%-8s' "$conn"
    for mode in "${modes[@]}"; do printf '%12s' "$(echo "${got[$conn/$mode]}" | median)"; done
    printf '\n'
done
echo "Redis error replies during the runs: $(($(errors) - errors_before))"
echo "($threads threads, pool of $pool (tenants-1: 1), ${seconds} s per run, median of $reps," \
     "modes interleaved)"
