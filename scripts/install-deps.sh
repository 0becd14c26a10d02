#!/usr/bin/env bash
# shellcheck disable=SC2034  # the DEPS_* arrays are read through ${!name}
# install-deps.sh -- make sure the Debian packages cpool needs are installed.
#
# Idempotent: asks dpkg-query which packages are missing and does nothing
# when none are. As root it installs the missing ones with apt-get (no
# prompts, no recommends); as any other user it prints the command to run
# and exits 1.
#
# Usage: scripts/install-deps.sh [GROUP...]   (default: every group in ALL_GROUPS)
#        scripts/install-deps.sh --list        (print the packages and exit)
#
# To add a dependency group: define a DEPS_<name> array below and append
# <name> to ALL_GROUPS.
set -euo pipefail

# A C toolchain and CMake: all `make demo` needs, with the sqlite group.
DEPS_toolchain=(cmake gcc make pkg-config libc6-dev)
# What the tests add: jansson (CMAP runner, command-line tests), apr-util
# (the benchmark's comparison) and both C++ compilers (the C++ consumers).
DEPS_build=(libjansson-dev libaprutil1-dev g++ clang libclang-rt-14-dev)
# gcc's sanitizer runtimes (gcc-12 pulls them in through libgcc-12-dev;
# listed so a missing one is reported by name).
DEPS_sanitizers=(libasan8 libubsan1 libtsan2)
# The connectors' client libraries, and the servers the tests start.
DEPS_sqlite=(libsqlite3-dev)
DEPS_pg=(postgresql libpq-dev pgbouncer)
DEPS_redis=(redis-server libhiredis-dev)
# The command line: /metrics endpoint, and gnuplot for --plot (the tool
# also draws SVG itself; with gnuplot installed both are tested).
DEPS_cli=(libmicrohttpd-dev gnuplot-nox)
# The event-loop adapters (cpool_uv.h, cpool_event.h), their tests and
# examples.
DEPS_loops=(libuv1-dev libevent-dev)

ALL_GROUPS=(toolchain build sanitizers sqlite pg redis cli loops)
# `make demo`: a C toolchain, CMake and SQLite (gnuplot is optional).
DEPS_demo=("${DEPS_toolchain[@]}" "${DEPS_sqlite[@]}")

if [[ "${1:-}" == "--list" ]]; then
    shift
    list_only=1
else
    list_only=0
fi
groups=("$@")
if [[ ${#groups[@]} -eq 0 ]]; then
    groups=("${ALL_GROUPS[@]}")
fi

wanted=()
for g in "${groups[@]}"; do
    arr="DEPS_${g}[@]"
    if ! declare -p "DEPS_${g}" >/dev/null 2>&1; then
        echo "install-deps: unknown group '$g' (known: ${ALL_GROUPS[*]} demo)" >&2
        exit 2
    fi
    wanted+=("${!arr}")
done

if [[ $list_only -eq 1 ]]; then
    printf '%s\n' "${wanted[@]}"
    exit 0
fi

is_installed() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [[ "$status" == "installed" ]]
}

missing=()
for p in "${wanted[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#wanted[@]} packages present (${groups[*]})"
    exit 0
fi

echo "install-deps: missing: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: not root; install them with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

# A mirror hiccup should not fail a CI run: retry a few times.
retry() {
    local n
    for n in 1 2 3; do
        "$@" && return 0
        echo "install-deps: '$*' failed (attempt $n of 3)" >&2
        sleep $((n * 5))
    done
    return 1
}

export DEBIAN_FRONTEND=noninteractive
retry apt-get update -q
retry apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

still=()
for p in "${missing[@]}"; do
    is_installed "$p" || still+=("$p")
done
if [[ ${#still[@]} -ne 0 ]]; then
    echo "install-deps: still missing after apt-get: ${still[*]}" >&2
    exit 1
fi
echo "install-deps: installed ${missing[*]}"
