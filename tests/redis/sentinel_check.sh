#!/usr/bin/env bash
# sentinel_check.sh -- the Redis set the multi-endpoint drills stand on: a
# primary, a replica and three Sentinels from scripts/redis-server.sh,
# checked for what the drills rely on -- the replica streams, the Sentinels
# agree on the primary, and when the primary is killed they promote the
# replica, which then takes writes.
#
# Usage: sentinel_check.sh SCRIPT STATE_DIR BASE_PORT   (uses BASE_PORT..+4)
set -euo pipefail

script=$1
state=$2
base=$3
pp=$base rp=$((base + 1))

fail() {
    echo "sentinel_check: FAIL: $*" >&2
    exit 1
}

cleanup() {
    for n in sentinel3 sentinel2 sentinel1 replica primary; do
        "$script" stop "$state/$n" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

r() { # r PORT ARGS...
    local p=$1
    shift
    timeout 3 redis-cli -h 127.0.0.1 -p "$p" "$@"
}

# Waits up to $1 s until the command prints WANT.
wait_for() {
    local limit=$1 want=$2 end got=""
    shift 2
    end=$((SECONDS + limit))
    while :; do
        got=$("$@" 2>/dev/null | tr '\n' ' ' | sed 's/ $//' || true)
        [[ "$got" == "$want" ]] && return 0
        [[ $SECONDS -lt $end ]] || fail "'$*' gave '$got', not '$want', after $limit s"
        sleep 0.1
    done
}

rm -rf "$state"
mkdir -p "$state"
"$script" start "$state/primary" "$pp" >/dev/null
"$script" replica-start "$state/replica" "$rp" "$pp" >/dev/null
for i in 1 2 3; do
    "$script" sentinel-start "$state/sentinel$i" $((base + 1 + i)) "$pp" >/dev/null
done

wait_for 10 "master_link_status:up" sh -c "timeout 3 redis-cli -h 127.0.0.1 -p $rp info replication | tr -d '\r' | grep master_link_status"
r "$pp" set probe 42 >/dev/null
wait_for 10 42 r "$rp" get probe
for i in 1 2 3; do
    wait_for 10 "127.0.0.1 $pp" r $((base + 1 + i)) sentinel get-master-addr-by-name cpool
done
# The Sentinels found each other (through the primary's hello channel):
# a failover needs the quorum and a majority to authorize it.
wait_for 15 OK sh -c "timeout 3 redis-cli -h 127.0.0.1 -p $((base + 2)) sentinel ckquorum cpool | cut -d' ' -f1-2 | grep -x 'OK 3' | cut -d' ' -f1"
"$script" kill9 "$state/primary" >/dev/null
t0=$SECONDS
for i in 1 2 3; do
    wait_for 30 "127.0.0.1 $rp" r $((base + 1 + i)) sentinel get-master-addr-by-name cpool
done
wait_for 10 master sh -c "timeout 3 redis-cli -h 127.0.0.1 -p $rp role | head -n 1"
r "$rp" set probe 43 >/dev/null || fail "the promoted replica refuses a write"
[[ $(r "$rp" get probe) == 43 ]] || fail "the write is lost"
echo "sentinel_check: primary :$pp, replica :$rp, Sentinels :$((base + 2))..:$((base + 4)); the primary killed, the replica promoted within $((SECONDS - t0)) s and took a write"
