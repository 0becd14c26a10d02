#!/usr/bin/env bash
# pg-server.sh -- throwaway PostgreSQL (and PgBouncer) instances for tests.
#
# Usage: scripts/pg-server.sh COMMAND DIR [PORT] [ARGS...]
#
#   start DIR PORT         initdb (the first time), then start postgres on
#                          127.0.0.1:PORT; waits until it accepts connections.
#                          A server left running from the same DIR is stopped
#                          first, and ALTER SYSTEM settings left by an earlier
#                          run are dropped, so every start is a clean server.
#   stop DIR               fast stop (bounded; kill -9 after that), stops the
#                          instance's PgBouncer, removes a temporary data dir.
#   status DIR             exit 0 and print the pid when it accepts connections.
#   kill9 DIR              kill -9 the postmaster and wait (bounded) until it
#                          and its backends are gone, so `start` works again.
#   restart-fast DIR       pg_ctl restart -m fast (same options, same port).
#   sigstop DIR            SIGSTOP the postmaster and every backend: the
#                          server accepts TCP connections (the kernel does)
#                          but answers nothing, as a hung host would.
#   sigcont DIR            SIGCONT them again (stop does this first too).
#   psql DIR PORT [ARGS]   psql as postgres through the unix socket
#                          (PORT may be "-": the port of the last start).
#   bouncer-start DIR [PORT [BPORT]]
#                          PgBouncer in transaction mode on 127.0.0.1:BPORT
#                          (default PORT+2) in front of the instance.
#   bouncer-stop DIR       stop that PgBouncer.
#   replica-start DIR PORT PRIMARY_DIR
#                          a streaming replica of the instance in PRIMARY_DIR
#                          on 127.0.0.1:PORT: a fresh pg_basebackup (-X
#                          stream) at every start, hot standby.
#   promote DIR            pg_ctl promote: the replica becomes a primary.
#   info DIR               print BASE=, PGDATA=, SOCKDIR=, PORT=, BOUNCER_PORT=.
#
# PORT may be left out (or "-") for every command but start: the port of the
# last start, kept in DIR/port, is used.
#
# Layout. DIR holds the state files (port, base). The instance lives in BASE:
# DIR itself when the postgres user can reach it, else a `mktemp -d
# /tmp/cpool-pg.XXXXXX` whose path is recorded in DIR/base (and which `stop`
# removes). BASE/data is the cluster, BASE/sock the unix socket directory,
# BASE/postgres.log the server log, BASE/bouncer the PgBouncer files. Several
# instances (different DIR and PORT) may run at once.
#
# The server: initdb -E UTF8 --locale=C.UTF-8 --no-sync -A trust; fsync,
# synchronous_commit and full_page_writes off, max_connections 200, listening
# on 127.0.0.1 only. pg_hba.conf trusts everyone except two roles the tests
# use for authentication failures: cpool_pw needs a password over TCP
# (scram-sha-256; the role is created with password cpool-pw-secret) and
# cpool_reject is always rejected.
#
# Run as root, the PostgreSQL and PgBouncer programs (which refuse root) run
# as the postgres user through runuser; otherwise they run as the caller.
# Binaries come from the newest /usr/lib/postgresql/*/bin (or PG_BIN).
set -euo pipefail

export LC_ALL=C.UTF-8
unset LANG LANGUAGE PGHOST PGPORT PGDATA PGUSER PGDATABASE PGOPTIONS PGSERVICE \
    PGTARGETSESSIONATTRS PGSSLMODE PGPASSWORD 2>/dev/null || true

PW_ROLE=cpool_pw
PW_SECRET=cpool-pw-secret
REJECT_ROLE=cpool_reject
START_WAIT=20   # seconds
STOP_WAIT=15

die() {
    echo "pg-server: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
shift 2
port_arg=""
if [[ $# -gt 0 ]]; then
    port_arg=$1
    shift
fi

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local best="" v
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/postgres" ]] || continue
        v=$(basename "$(dirname "$d")")
        if [[ -z "$best" ]] || [[ "$v" =~ ^[0-9]+$ && $v -gt $(basename "$(dirname "$best")") ]]; then
            best=$d
        fi
    done
    [[ -n "$best" ]] || die "no PostgreSQL binaries in /usr/lib/postgresql/*/bin (install postgresql, or set PG_BIN)"
    echo "$best"
}
BIN=$(find_bin)

is_root() { [[ $(id -u) -eq 0 ]]; }

# Runs a PostgreSQL/PgBouncer program as the user that owns the cluster.
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# True when the postgres user can reach directory $1 (search permission on it
# and every parent). It need not write there: the directories it writes into
# are made by this script and handed to it.
pg_can_use() {
    if is_root; then
        runuser -u postgres -- test -x "$1" 2>/dev/null
    else
        test -x "$1" -a -w "$1"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

valid_port() {
    [[ "$1" =~ ^[0-9]+$ ]] && [[ $1 -ge 1 && $1 -le 65535 ]]
}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# BASE: where the instance lives (see the header). Decided once per DIR.
base_of() {
    if [[ -f "$dir/base" ]]; then
        local b
        b=$(cat "$dir/base")
        if [[ -d "$b" ]]; then
            echo "$b"
            return
        fi
    fi
    echo ""
}

port_of() {
    if [[ -n "$port_arg" && "$port_arg" != "-" ]]; then
        valid_port "$port_arg" || die "PORT must be 1..65535, got '$port_arg'"
        echo "$port_arg"
    elif [[ -f "$dir/port" ]]; then
        cat "$dir/port"
    else
        die "no PORT given and $dir/port does not exist (was the instance started?)"
    fi
}

BASE=$(base_of)
DATA=${BASE:+$BASE/data}
SOCK=${BASE:+$BASE/sock}
LOG=${BASE:+$BASE/postgres.log}

postmaster_pid() {
    [[ -n "$DATA" && -f "$DATA/postmaster.pid" ]] || return 1
    local pid
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Waits until none of the given pids exists; $1 = seconds.
wait_gone() {
    local limit=$1
    shift
    local end=$((SECONDS + limit)) p alive
    while :; do
        alive=0
        for p in "$@"; do
            if kill -0 "$p" 2>/dev/null; then
                alive=1
                break
            fi
        done
        [[ $alive -eq 0 ]] && return 0
        [[ $SECONDS -lt $end ]] || return 1
        sleep 0.05
    done
}

children_of() {
    ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

# Kills the postmaster with SIGKILL and waits for it and its backends: a
# backend still attached to the old shared memory makes the next start fail.
kill9_server() {
    local pid kids
    pid=$(postmaster_pid) || return 0
    # shellcheck disable=SC2207
    kids=($(children_of "$pid"))
    kill -9 "$pid" 2>/dev/null || true
    # PID 1 reaps the postmaster only after a while (~1.7 s on these hosts).
    wait_gone 15 "$pid" "${kids[@]}" || die "postmaster $pid (or a backend) still alive 15 s after kill -9"
}

# Sends signal $1 to the postmaster and all its children.
signal_server() {
    local pid kids
    pid=$(postmaster_pid) || return 1
    # shellcheck disable=SC2207
    kids=($(children_of "$pid"))
    kill -"$1" "$pid" "${kids[@]}" 2>/dev/null || true
}

stop_server() {
    local pid
    pid=$(postmaster_pid) || return 0
    # A server a drill left stopped could not answer pg_ctl.
    signal_server CONT || true
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t "$STOP_WAIT" stop >/dev/null 2>&1; then
        echo "pg-server: fast stop of $pid did not finish in ${STOP_WAIT}s; kill -9" >&2
        kill9_server
    fi
    wait_gone 10 "$pid" || die "postmaster $pid still alive after stop"
}

write_conf() {
    local port=$1 primary_port=${2:-}
    # Rewritten at every start, so the port and paths follow the arguments.
    as_pg tee "$DATA/cpool.conf" >/dev/null <<EOF
# Written by scripts/pg-server.sh at every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCK'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
logging_collector = off
log_min_messages = warning
EOF
    # A replica follows its primary (replica-start); standby.signal, which
    # pg_basebackup -R leaves, keeps it in recovery.
    if [[ -n "$primary_port" ]]; then
        echo "primary_conninfo = 'host=127.0.0.1 port=$primary_port user=postgres application_name=replica$port'" |
            as_pg tee -a "$DATA/cpool.conf" >/dev/null
    fi
    # A clean server at every start: ALTER SYSTEM settings of an earlier run
    # (one that died before restoring them) must not leak into this one.
    as_pg tee "$DATA/postgresql.auto.conf" >/dev/null <<EOF
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
EOF
}

init_cluster() {
    as_pg "$BIN/initdb" -D "$DATA" -E UTF8 --locale=C.UTF-8 --no-sync -A trust -U postgres \
        >"$BASE/initdb.log" 2>&1 || {
        cat "$BASE/initdb.log" >&2
        die "initdb into $DATA failed (log above)"
    }
    echo "include_if_exists = 'cpool.conf'" | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
    as_pg tee "$DATA/pg_hba.conf" >/dev/null <<EOF
# Written by scripts/pg-server.sh. The first matching line wins.
local all all trust
local replication all trust
host replication all 127.0.0.1/32 trust
host all $PW_ROLE 127.0.0.1/32 scram-sha-256
host all $REJECT_ROLE 127.0.0.1/32 reject
host all all 127.0.0.1/32 trust
EOF
}

make_base() {
    if [[ -n "$BASE" ]]; then
        return
    fi
    if pg_can_use "$dir"; then
        BASE=$dir
    else
        BASE=$(mktemp -d /tmp/cpool-pg.XXXXXX)
        chmod 755 "$BASE"
    fi
    echo "$BASE" >"$dir/base"
    DATA=$BASE/data
    SOCK=$BASE/sock
    LOG=$BASE/postgres.log
}

cmd_start() {
    local port
    [[ -n "$port_arg" && "$port_arg" != "-" ]] || die "start needs a PORT"
    port=$(port_of)
    make_base
    # A leftover server of this DIR (an earlier run that was not stopped).
    stop_server
    if port_open "$port"; then
        die "port $port on 127.0.0.1 is busy (another server listens there); pick another PORT"
    fi
    mkdir -p "$SOCK"
    if is_root; then
        chown postgres: "$SOCK"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        rm -rf "$DATA"
        mkdir -p "$DATA"
        if is_root; then chown postgres: "$DATA"; fi
        chmod 700 "$DATA"
        init_cluster
    fi
    write_conf "$port"
    echo "$port" >"$dir/port"
    : >"$LOG"
    if is_root; then chown postgres: "$LOG"; fi
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$START_WAIT" start >/dev/null 2>&1; then
        tail -n 20 "$LOG" >&2 || true
        if grep -q "Address already in use" "$LOG"; then
            die "port $port on 127.0.0.1 is busy (taken while starting); pick another PORT"
        fi
        die "postgres did not start on port $port within ${START_WAIT}s (log above: $LOG)"
    fi
    wait_ready "$port"
    run_psql "$port" -q -c "DO \$\$BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PW_ROLE') THEN
            CREATE ROLE $PW_ROLE LOGIN PASSWORD '$PW_SECRET';
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REJECT_ROLE') THEN
            CREATE ROLE $REJECT_ROLE LOGIN;
        END IF;
    END\$\$;" >/dev/null || die "could not create the test roles"
    echo "pg-server: postgres $(postmaster_pid) on 127.0.0.1:$port, data $DATA"
}

# Waits until the server on 127.0.0.1:$1 accepts connections.
wait_ready() {
    local end=$((SECONDS + START_WAIT))
    until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -d postgres -U postgres; do
        [[ $SECONDS -lt $end ]] || die "postgres started but does not accept connections on 127.0.0.1:$1"
        sleep 0.05
    done
}

cmd_replica_start() {
    local port primary_dir=${1:-} primary_port
    [[ -n "$port_arg" && "$port_arg" != "-" && -n "$primary_dir" ]] ||
        die "replica-start needs a PORT and the PRIMARY_DIR"
    port=$(port_of)
    primary_port=$(cat "$primary_dir/port" 2>/dev/null) || die "no primary started in $primary_dir"
    make_base
    stop_server
    if port_open "$port"; then
        die "port $port on 127.0.0.1 is busy (another server listens there); pick another PORT"
    fi
    mkdir -p "$SOCK"
    rm -rf "$DATA"
    mkdir -p "$DATA"
    if is_root; then chown postgres: "$SOCK" "$DATA"; fi
    chmod 700 "$DATA"
    as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$DATA" -R \
        -X stream -c fast >"$BASE/basebackup.log" 2>&1 || {
        cat "$BASE/basebackup.log" >&2
        die "pg_basebackup from 127.0.0.1:$primary_port failed (log above)"
    }
    write_conf "$port" "$primary_port"
    echo "$port" >"$dir/port"
    echo "$primary_dir" >"$dir/primary"
    : >"$LOG"
    if is_root; then chown postgres: "$LOG"; fi
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$START_WAIT" start >/dev/null 2>&1; then
        tail -n 20 "$LOG" >&2 || true
        die "the replica did not start on port $port within ${START_WAIT}s (log above: $LOG)"
    fi
    wait_ready "$port"
    echo "pg-server: replica $(postmaster_pid) on 127.0.0.1:$port of 127.0.0.1:$primary_port"
}

run_psql() {
    local port=$1
    shift
    "$BIN/psql" -X -h "$SOCK" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

bouncer_pid() {
    [[ -n "$BASE" && -f "$BASE/bouncer/pgbouncer.pid" ]] || return 1
    local pid
    pid=$(cat "$BASE/bouncer/pgbouncer.pid" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

cmd_bouncer_stop() {
    local pid
    pid=$(bouncer_pid) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone 5 "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
        wait_gone 5 "$pid" || die "pgbouncer $pid still alive after kill -9"
    fi
}

cmd_bouncer_start() {
    [[ -n "$BASE" ]] || die "start the server of $dir first"
    local port bport
    port=$(port_of)
    bport=${1:-$((port + 2))}
    valid_port "$bport" || die "PgBouncer port must be 1..65535, got '$bport'"
    command -v pgbouncer >/dev/null || die "pgbouncer is not installed (Debian package pgbouncer)"
    cmd_bouncer_stop
    port_open "$bport" && die "port $bport on 127.0.0.1 is busy; cannot start PgBouncer there"
    local b=$BASE/bouncer
    mkdir -p "$b"
    if is_root; then chown postgres: "$b"; fi
    echo '"postgres" ""' >"$b/userlist.txt"
    echo "\"$PW_ROLE\" \"$PW_SECRET\"" >>"$b/userlist.txt"
    # server_login_retry, query_wait_timeout and server_connect_timeout turn
    # the default stalls of 15-120 s while PostgreSQL restarts into ~2 s.
    cat >"$b/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $b/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
server_login_retry = 1
query_wait_timeout = 10
server_connect_timeout = 3
ignore_startup_parameters = extra_float_digits
logfile = $b/pgbouncer.log
pidfile = $b/pgbouncer.pid
EOF
    if is_root; then chown postgres: "$b"/*; fi
    as_pg pgbouncer -d -q "$b/pgbouncer.ini" || die "pgbouncer did not start (see $b/pgbouncer.log)"
    local end=$((SECONDS + 10))
    until port_open "$bport"; do
        [[ $SECONDS -lt $end ]] || die "pgbouncer does not listen on 127.0.0.1:$bport (see $b/pgbouncer.log)"
        sleep 0.05
    done
    echo "$bport" >"$dir/bouncer_port"
    echo "pg-server: pgbouncer $(bouncer_pid || echo '?') on 127.0.0.1:$bport -> $port (transaction mode)"
}

case "$cmd" in
start)
    cmd_start
    ;;
stop)
    cmd_bouncer_stop
    stop_server
    if [[ -n "$BASE" && "$BASE" != "$dir" && "$BASE" == /tmp/cpool-pg.* ]]; then
        rm -rf "$BASE"
        rm -f "$dir/base"
    fi
    echo "pg-server: stopped $dir"
    ;;
status)
    if pid=$(postmaster_pid) && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$(port_of)" -d postgres -U postgres; then
        echo "pg-server: running, postmaster $pid, port $(port_of)"
    else
        echo "pg-server: not running ($dir)"
        exit 1
    fi
    ;;
kill9)
    kill9_server
    echo "pg-server: killed"
    ;;
sigstop | sigcont)
    sig=STOP
    [[ $cmd == sigcont ]] && sig=CONT
    signal_server "$sig" || die "no server running for $dir"
    echo "pg-server: SIG$sig sent to postmaster $(postmaster_pid) and its children"
    ;;
restart-fast)
    postmaster_pid >/dev/null || die "no server running for $dir"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -m fast -w -t "$START_WAIT" restart >/dev/null 2>&1 || {
        tail -n 20 "$LOG" >&2 || true
        die "restart failed (log above)"
    }
    echo "pg-server: restarted, postmaster $(postmaster_pid)"
    ;;
psql)
    [[ -n "$BASE" ]] || die "no instance in $dir"
    run_psql "$(port_of)" "$@"
    ;;
bouncer-start)
    cmd_bouncer_start "$@"
    ;;
replica-start)
    cmd_replica_start "$@"
    ;;
promote)
    postmaster_pid >/dev/null || die "no server running for $dir"
    as_pg "$BIN/pg_ctl" -D "$DATA" -w -t "$START_WAIT" promote >/dev/null 2>&1 ||
        die "promote failed (see $LOG)"
    echo "pg-server: promoted $dir"
    ;;
bouncer-stop)
    cmd_bouncer_stop
    ;;
info)
    echo "BASE=$BASE"
    echo "PGDATA=$DATA"
    echo "SOCKDIR=$SOCK"
    echo "PORT=$(cat "$dir/port" 2>/dev/null || true)"
    echo "BOUNCER_PORT=$(cat "$dir/bouncer_port" 2>/dev/null || true)"
    ;;
*)
    usage
    ;;
esac
