#!/usr/bin/env bash
# redis-server.sh -- a throwaway Redis server for the tests.
#
#   redis-server.sh start   DIR PORT [PASSWORD]
#   redis-server.sh stop    DIR
#   redis-server.sh status  DIR
#   redis-server.sh kill9   DIR
#   redis-server.sh restart DIR [PORT [PASSWORD]]
#   redis-server.sh replica-start  DIR PORT PRIMARY_PORT
#   redis-server.sh sentinel-start DIR PORT PRIMARY_PORT [QUORUM]
#
# start    writes DIR/redis.conf and starts redis-server as a daemon bound to
#          127.0.0.1:PORT and to the unix socket DIR/redis.sock, with no
#          persistence (save "", appendonly no), its pid file and log in DIR.
#          A server left running from the same DIR is stopped first. With a
#          PASSWORD the default user needs it (requirepass), and an ACL user
#          "cpool_acl" is created with the password "PASSWORD@acl", for
#          two-argument AUTH. Returns once the server answers PING (at most
#          10 s), else prints the log's tail and fails.
# stop     SHUTDOWN NOSAVE (then SIGTERM, then SIGKILL), waiting until gone.
# status   exit 0 when the server runs and answers PING, 1 otherwise.
# kill9    SIGKILL, and waits until the process is gone (a zombie waiting for
#          its parent to reap it counts as gone: its sockets are closed).
# restart  starts again from DIR/redis.conf (written by an earlier start;
#          PORT and PASSWORD are only needed when there is none).
# replica-start  a server as start (no password) that replicates the one on
#          127.0.0.1:PRIMARY_PORT (replicaof).
# sentinel-start a Sentinel on 127.0.0.1:PORT (redis-server --sentinel)
#          watching the primary on 127.0.0.1:PRIMARY_PORT as master "cpool",
#          QUORUM (default 2) of them to agree; down after 1 s, failover
#          timeout 5 s. stop, status and kill9 work on it too.
#
# Several instances may run at once, each with its own DIR and PORT.
# Prints the pid and the port on success. Needs redis-server and redis-cli
# (Debian: redis-server, redis-tools).
set -euo pipefail

die() {
    echo "redis-server.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
port=${3:-}
password=${4:-}

command -v redis-server >/dev/null ||
    die "redis-server not found; install the Debian package redis-server"
command -v redis-cli >/dev/null ||
    die "redis-cli not found; install the Debian package redis-tools"

conf=$dir/redis.conf
pidfile=$dir/redis.pid
logfile=$dir/redis.log
sock=$dir/redis.sock

# The pid of a live (not zombie) server of this DIR, or nothing.
live_pid() {
    [[ -f $pidfile ]] || return 0
    local pid state
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ -r /proc/$pid/stat ]] || return 0
    # Field 3 of /proc/PID/stat is the state; the command name in field 2
    # may hold spaces, so cut after its closing parenthesis.
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [[ $state != Z ]] || return 0
    # Only a redis-server: a recycled pid must not be killed.
    grep -q redis "/proc/$pid/comm" 2>/dev/null || return 0
    echo "$pid"
}

conf_value() {
    sed -n "s/^$1 //p" "$conf" | head -n1
}

# redis-cli against this DIR's server (at most 3 s), authenticated when it
# has a password. The password goes through the environment, not argv.
cli() {
    local p pw
    p=$(conf_value port)
    pw=$(conf_value requirepass | sed 's/^"\(.*\)"$/\1/')
    if [[ -n $pw ]]; then
        REDISCLI_AUTH=$pw timeout 3 redis-cli -h 127.0.0.1 -p "$p" --no-auth-warning "$@"
    else
        timeout 3 redis-cli -h 127.0.0.1 -p "$p" "$@"
    fi
}

answers_ping() {
    [[ -f $conf ]] || return 1
    [[ $(cli ping 2>/dev/null) == PONG ]]
}

# Waits (bounded, in tenths of a second) until the process is gone.
wait_gone() {
    local pid=$1 tenths=$2 i
    for ((i = 0; i < tenths; i++)); do
        [[ -n $(live_pid) ]] || return 0
        sleep 0.1
    done
    return 1
}

do_stop() {
    local pid
    pid=$(live_pid)
    [[ -n $pid ]] || { rm -f "$pidfile"; return 0; }
    cli shutdown nosave >/dev/null 2>&1 || true
    wait_gone "$pid" 50 && { rm -f "$pidfile"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 50 && { rm -f "$pidfile"; return 0; }
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 50 || die "server $pid of $dir does not stop"
    rm -f "$pidfile"
}

write_conf() {
    [[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] ||
        die "PORT must be 1..65535, got '${port}'"
    [[ ${#sock} -lt 100 ]] || die "unix socket path too long (max 99 bytes): $sock"
    [[ $password != *[[:space:]\"\\]* ]] ||
        die "the password may not contain spaces, quotes or backslashes"
    {
        echo "port $port"
        echo "bind 127.0.0.1"
        echo "unixsocket $sock"
        echo "unixsocketperm 700"
        echo "daemonize yes"
        echo "pidfile $pidfile"
        echo "logfile $logfile"
        echo "dir $dir"
        echo 'save ""'
        echo "appendonly no"
        echo "databases 16"
        echo "maxclients 1000"
        if [[ -n $password ]]; then
            echo "requirepass \"$password\""
            echo "user cpool_acl on >$password@acl ~* &* +@all"
        fi
    } >"$conf"
}

write_sentinel_conf() {
    local primary=$1 quorum=$2
    {
        echo "port $port"
        echo "bind 127.0.0.1"
        echo "daemonize yes"
        echo "pidfile $pidfile"
        echo "logfile $logfile"
        echo "dir $dir"
        echo "sentinel monitor cpool 127.0.0.1 $primary $quorum"
        echo "sentinel down-after-milliseconds cpool 1000"
        echo "sentinel failover-timeout cpool 5000"
        echo "sentinel parallel-syncs cpool 1"
    } >"$conf"
}

do_start() {
    mkdir -p "$dir" || die "cannot create $dir"
    dir=$(cd "$dir" && pwd)
    conf=$dir/redis.conf pidfile=$dir/redis.pid logfile=$dir/redis.log sock=$dir/redis.sock
    rm -f "$logfile"
    redis-server "$conf" "$@" >/dev/null 2>&1 || {
        tail -n 20 "$logfile" >&2 2>/dev/null || true
        die "redis-server failed to start with $conf"
    }
    local i
    for ((i = 0; i < 100; i++)); do
        if answers_ping; then
            echo "redis-server.sh: started pid $(live_pid) on 127.0.0.1:$(conf_value port) and $sock"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 2>/dev/null || true
    die "server of $dir does not answer PING after 10 s"
}

dir=$(mkdir -p "$dir" && cd "$dir" && pwd) || die "cannot use directory $2"
conf=$dir/redis.conf pidfile=$dir/redis.pid logfile=$dir/redis.log sock=$dir/redis.sock

case $cmd in
start)
    [[ -n $port ]] || usage
    do_stop
    write_conf
    do_start
    ;;
stop)
    do_stop
    echo "redis-server.sh: stopped the server of $dir"
    ;;
status)
    pid=$(live_pid)
    if [[ -n $pid ]] && answers_ping; then
        echo "redis-server.sh: running, pid $pid, port $(conf_value port)"
        exit 0
    fi
    echo "redis-server.sh: not running (${dir})"
    exit 1
    ;;
kill9)
    pid=$(live_pid)
    [[ -n $pid ]] || die "no server running for $dir"
    kill -KILL "$pid"
    wait_gone "$pid" 100 || die "server $pid still there 10 s after SIGKILL"
    echo "redis-server.sh: killed pid $pid"
    ;;
replica-start)
    [[ -n $port && $password =~ ^[0-9]+$ ]] || usage
    primary=$password
    password=""
    do_stop
    write_conf
    echo "replicaof 127.0.0.1 $primary" >>"$conf"
    do_start
    ;;
sentinel-start)
    [[ -n $port && $password =~ ^[0-9]+$ ]] || usage
    primary=$password
    password=""
    quorum=${5:-2}
    do_stop
    write_sentinel_conf "$primary" "$quorum"
    do_start --sentinel
    ;;
restart)
    do_stop
    if [[ ! -f $conf ]]; then
        [[ -n $port ]] || die "no $conf to restart from; give PORT [PASSWORD]"
        write_conf
    fi
    do_start
    ;;
*)
    usage
    ;;
esac
