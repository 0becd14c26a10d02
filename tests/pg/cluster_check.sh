#!/usr/bin/env bash
# cluster_check.sh -- the replica set the multi-endpoint drills stand on:
# a primary and two streaming replicas from scripts/pg-server.sh, checked
# for what the drills rely on -- the replicas are in recovery and read-only,
# a write on the primary reaches both, a promoted replica takes writes.
#
# Usage: cluster_check.sh SCRIPT STATE_DIR BASE_PORT   (uses BASE_PORT..+2)
set -euo pipefail

script=$1
state=$2
base=$3
p0=$base p1=$((base + 1)) p2=$((base + 2))

fail() {
    echo "cluster_check: FAIL: $*" >&2
    exit 1
}

cleanup() {
    for n in replica2 replica1 primary; do
        "$script" stop "$state/$n" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

q() { # q DIR SQL: one value
    "$script" psql "$1" - -tAq -c "$2"
}

# Waits up to 10 s for SQL on DIR to print WANT.
wait_for() {
    local d=$1 sql=$2 want=$3 end=$((SECONDS + 10)) got=""
    while :; do
        got=$(q "$d" "$sql" 2>/dev/null || true)
        [[ "$got" == "$want" ]] && return 0
        [[ $SECONDS -lt $end ]] || fail "$d: '$sql' gave '$got', not '$want', after 10 s"
        sleep 0.05
    done
}

rm -rf "$state"
mkdir -p "$state"
"$script" start "$state/primary" "$p0" >/dev/null
"$script" replica-start "$state/replica1" "$p1" "$state/primary" >/dev/null
"$script" replica-start "$state/replica2" "$p2" "$state/primary" >/dev/null

[[ $(q "$state/primary" "SELECT pg_is_in_recovery()") == f ]] || fail "the primary is in recovery"
for r in replica1 replica2; do
    [[ $(q "$state/$r" "SELECT pg_is_in_recovery()") == t ]] || fail "$r is not in recovery"
    [[ $(q "$state/$r" "SHOW transaction_read_only") == on ]] || fail "$r takes writes"
done
wait_for "$state/primary" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2

t0=$(date +%s%N)
q "$state/primary" "CREATE TABLE probe (v int); INSERT INTO probe VALUES (42)" >/dev/null
for r in replica1 replica2; do
    wait_for "$state/$r" "SELECT coalesce(sum(v), 0) FROM probe" 42
done
lag_ms=$((($(date +%s%N) - t0) / 1000000))

"$script" promote "$state/replica1" >/dev/null
wait_for "$state/replica1" "SELECT pg_is_in_recovery()" f
q "$state/replica1" "INSERT INTO probe VALUES (1)" >/dev/null ||
    fail "the promoted replica refuses a write"
[[ $(q "$state/replica1" "SELECT sum(v) FROM probe") == 43 ]] || fail "the write is lost"
echo "cluster_check: primary :$p0, replicas :$p1 :$p2 streaming; a write reached both in ${lag_ms} ms; replica1 promoted and took a write"
