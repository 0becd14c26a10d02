#!/usr/bin/env bash
# fuzz.sh -- builds the libFuzzer harnesses of tests/fuzz/ with clang
# (ASan+UBSan) and runs them.
#
# Usage: fuzz.sh build SOURCE_DIR WORK_DIR
#        fuzz.sh run   SOURCE_DIR WORK_DIR HARNESS SECONDS
#
# build compiles the library's sources and each harness once into WORK_DIR.
# run replays the harness's seed corpus (tests/fuzz/corpus/HARNESS), then
# fuzzes for SECONDS more, keeping what it finds in WORK_DIR (never in the
# repository); a crash, a leak, undefined behaviour or a failed check stops
# it with the input that caused it saved in WORK_DIR. The mutations follow
# CPOOL_FUZZ_SEED (1 by default, so that make test explores the same inputs
# on every run; 0 = a new random seed each time, as `make fuzz` uses).
# `make fuzz` runs every harness for longer.
set -euo pipefail

cmd=${1:?build or run}
src=$(cd "${2:?source dir}" && pwd)
work=${3:?work dir}
mkdir -p "$work"
work=$(cd "$work" && pwd)
harnesses=(redact json options targets)

case $cmd in
build)
    command -v clang >/dev/null || { echo "fuzz: clang is not installed" >&2; exit 1; }
    flags=(-g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
           -fno-omit-frame-pointer -Wno-void-pointer-to-int-cast -D_GNU_SOURCE -DCPOOL_BUILDING
           -DCPOOL_HAVE_SQLITE -DCPOOL_HAVE_PG -DCPOOL_HAVE_REDIS -I"$src/include")
    # shellcheck disable=SC2207
    deps_c=($(pkg-config --cflags sqlite3 libpq hiredis))
    # shellcheck disable=SC2207
    deps_l=($(pkg-config --libs sqlite3 libpq hiredis))
    objs=()
    for f in "$src"/src/core/*.c "$src"/src/connectors/*.c; do
        o=$work/$(basename "$f" .c).o
        clang -std=c11 "${flags[@]}" -fsanitize=fuzzer-no-link "${deps_c[@]}" -c "$f" -o "$o"
        objs+=("$o")
    done
    for h in "${harnesses[@]}"; do
        clang -std=c11 "${flags[@]}" -fsanitize=fuzzer "${deps_c[@]}" \
            "$src/tests/fuzz/fuzz_$h.c" "${objs[@]}" "${deps_l[@]}" -lpthread -lm \
            -o "$work/fuzz_$h"
    done
    echo "fuzz: built ${harnesses[*]} in $work"
    ;;
run)
    h=${4:?harness}
    secs=${5:?seconds}
    exe=$work/fuzz_$h
    [[ -x $exe ]] || { echo "fuzz: $exe not built (run the build step)" >&2; exit 1; }
    found=$work/found-$h
    mkdir -p "$found"
    cd "$work"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    # The seeds, each once (a regression test of its own).
    "$exe" -runs=0 "$src/tests/fuzz/corpus/$h" 2>"$work/replay-$h.log" ||
        { tail -n 40 "$work/replay-$h.log" >&2; exit 1; }
    # Then new inputs for a while, from the seeds and what earlier runs found.
    "$exe" -seed="${CPOOL_FUZZ_SEED:-1}" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -max_len=4096 \
        -artifact_prefix="$work/crash-$h-" -print_final_stats=1 \
        "$found" "$src/tests/fuzz/corpus/$h" 2>"$work/fuzz-$h.log" ||
        { tail -n 60 "$work/fuzz-$h.log" >&2; exit 1; }
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz-$h.log")
    echo "fuzz $h: seeds replayed, then $execs executions in $secs s, no failure"
    ;;
*)
    echo "fuzz.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
