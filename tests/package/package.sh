#!/usr/bin/env bash
# package.sh -- cpool as its users consume it: installed, then built into
# small outside projects. Each STEP is one CTest test (tests/package_tests.cmake).
#
# Usage: package.sh STEP SOURCE_DIR WORK_DIR
#
#   install           copy the source tree to WORK/src and run the README's
#                     "Install" block there, verbatim, with PREFIX=WORK/prefix
#   exports           libcpool.so: SONAME libcpool.so.<major>, only cpool_*
#                     symbols exported, and every CPOOL_API function of the
#                     installed headers among them
#   pkgconfig-shared  a C program through `pkg-config --cflags --libs cpool`
#   pkgconfig-static  the same through `pkg-config --static` and libcpool.a
#   dlopen            libcpool.so's checkout and check-in reach the lock-free
#                     path's thread-local slot without calling
#                     __tls_get_addr, and a program loading the library with
#                     dlopen() leases on two threads (tests/package/dlopen.c)
#   find-package      tests/package/find_package: find_package(cpool CONFIG
#                     REQUIRED), cpool::cpool and cpool::cpool_static
#   subproject        tests/package/subproject with add_subdirectory()
#   fetchcontent      the same with FetchContent
#   cxx-g++, cxx-clang++
#                     tests/package/consumer.cpp with -Wall -Wextra -Werror
#                     -pedantic, C++11 and C++17, with and without exceptions
#   without-redis     a build with -DCPOOL_WITH_REDIS=OFF installs no Redis
#                     header, symbol, pkg-config flag or CMake connector
#
# Every step but install and without-redis uses WORK/prefix, which the
# install step leaves behind (a CTest fixture orders them).
set -euo pipefail

step=${1:?step}
src=$(cd "${2:?source dir}" && pwd)
work=${3:?work dir}
mkdir -p "$work"
work=$(cd "$work" && pwd)
prefix=$work/prefix
here=$src/tests/package
jobs=${JOBS:-2}

say() { printf 'package %s: %s\n' "$step" "$*"; }

# Whether a command's output contains a string. Never `cmd | grep -q`: with
# pipefail, grep -q quitting at the first match can kill cmd with SIGPIPE
# and turn a match into a failure, depending on timing.
output_has() {
    local needle=$1 out
    shift
    out=$("$@") || return 2
    [[ $out == *"$needle"* ]]
}
fail() {
    printf 'package %s: FAIL: %s\n' "$step" "$*" >&2
    exit 1
}

# A copy of the source tree without build outputs, as a fresh checkout has.
copy_source() {
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -C "$src" --exclude='./build*' --exclude='./.git' -cf - . | tar -C "$dest" -xf -
}

# The README's block under "## Install" that builds and installs: the first
# ```sh block that runs `cmake --install`.
readme_install_block() {
    awk '
        /^## / { in_sec = ($0 == "## Install") }
        in_sec && /^```sh$/ { grab = 1; buf = ""; next }
        grab && /^```$/ { grab = 0; if (buf ~ /cmake --install/) { printf "%s", buf; exit } next }
        grab { buf = buf $0 "\n" }
    ' "$src/README.md"
}

use_prefix() {
    [[ -f $prefix/lib/pkgconfig/cpool.pc ]] || fail "no install in $prefix (run the install step)"
    export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
    export CMAKE_PREFIX_PATH=$prefix
}

# Runs a built consumer and checks what it says.
run_consumer() {
    local exe=$1 out
    out=$("$exe") || fail "$exe failed: $out"
    [[ $out == "consumer ok: cpool "* ]] || fail "$exe said: $out"
    say "$out"
}

case $step in
install)
    block=$(readme_install_block)
    [[ -n $block ]] || fail "README.md has no \"## Install\" block with cmake --install"
    copy_source "$work/src"
    rm -rf "$prefix"
    say "running the README's Install block in a copy of the tree:"
    printf '%s\n' "$block" | sed 's/^/    /'
    (cd "$work/src" && PREFIX=$prefix bash -euo pipefail -c "$block")
    for f in include/cpool/cpool.h include/cpool/cpool.hpp lib/libcpool.so.0 lib/libcpool.a \
             lib/pkgconfig/cpool.pc lib/cmake/cpool/cpoolConfig.cmake \
             lib/cmake/cpool/cpoolConfigVersion.cmake bin/cpool; do
        [[ -e $prefix/$f ]] || fail "the install has no $f"
    done
    say "installed:"
    (cd "$prefix" && find . -type f -o -type l | sort | sed 's/^/    /')
    ;;

exports)
    use_prefix
    so=$(readlink -f "$prefix/lib/libcpool.so")
    soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
    major=$(sed -n 's/^#define CPOOL_VERSION_MAJOR \([0-9]*\)$/\1/p' "$prefix/include/cpool/cpool.h")
    [[ $soname == "libcpool.so.$major" ]] || fail "SONAME is '$soname', not libcpool.so.$major"
    # Defined dynamic symbols (not *UND*), of any kind.
    exported=$(objdump -T "$so" | awk '$0 !~ /\*UND\*/ && NF >= 6 { print $NF }' | sort -u)
    bad=$(grep -Ev '^cpool_[a-z0-9]' <<<"$exported" || true)
    bad+=$(grep -E '^cpool__' <<<"$exported" || true)
    [[ -z $bad ]] || fail "exported besides the API: $(tr '\n' ' ' <<<"$bad")"
    # A function declared in a header without CPOOL_API would be hidden
    # (the header-only adapters' static inline ones are compiled into the
    # caller, so they need no export).
    unmarked=$(grep -hE '^[A-Za-z_].*\bcpool_[a-z0-9_]+ *\(' "$prefix"/include/cpool/*.h |
               grep -vE '^(CPOOL_API|typedef|#|static inline )' || true)
    [[ -z $unmarked ]] || fail "declared without CPOOL_API: $unmarked"
    declared=$(cat "$prefix"/include/cpool/*.h | tr '\n' ' ' | grep -o 'CPOOL_API[^;(]*(' |
               grep -o 'cpool_[a-z0-9_]*[[:space:]]*($' | tr -d ' (' | sort -u)
    [[ $(wc -l <<<"$declared") -ge 60 ]] || fail "found only $(wc -l <<<"$declared") declarations"
    missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
    [[ -z $missing ]] || fail "declared but not exported: $(tr '\n' ' ' <<<"$missing")"
    extra=$(comm -13 <(echo "$declared") <(echo "$exported"))
    [[ -z $extra ]] || fail "exported but declared in no header: $(tr '\n' ' ' <<<"$extra")"
    # The version tags in the headers (/* 0.2 */, "Since 0.2") name real
    # versions: none later than this one.
    minor=$(sed -n 's/^#define CPOOL_VERSION_MINOR \([0-9]*\)$/\1/p' "$prefix/include/cpool/cpool.h")
    tags=$(grep -ohE '/\* [0-9]+\.[0-9]+ \*/|Since [0-9]+\.[0-9]+' "$prefix"/include/cpool/*.h* |
           grep -oE '[0-9]+\.[0-9]+' | sort -u)
    [[ -n $tags ]] || fail "no version tags found in the headers"
    for t in $tags; do
        (( ${t%.*} < major || (${t%.*} == major && ${t#*.} <= minor) )) ||
            fail "a header is tagged $t, after this version $major.$minor"
    done
    say "SONAME $soname; $(wc -l <<<"$exported") symbols exported, all declared CPOOL_API;" \
        "version tags $(tr '\n' ' ' <<<"$tags")<= $major.$minor"
    ;;

pkgconfig-shared)
    use_prefix
    libdir=$(pkg-config --variable=libdir cpool)
    # shellcheck disable=SC2046  # pkg-config's output is meant to split
    cc -Wall -Wextra -Werror -o "$work/consumer-pc" "$here/consumer.c" \
        $(pkg-config --cflags --libs cpool) -Wl,-rpath,"$libdir"
    linked=$(ldd "$work/consumer-pc" | awk '$1 == "libcpool.so.0" { print $3 }')
    [[ -n $linked && $(readlink -f "$linked") == $(readlink -f "$prefix/lib/libcpool.so.0") ]] ||
        fail "consumer does not load the installed libcpool.so.0 (ldd: ${linked:-none})"
    run_consumer "$work/consumer-pc"
    # pkg-config, the CMake package, the headers and the library agree.
    version=$(pkg-config --modversion cpool)
    output_has "cpool $version," "$work/consumer-pc" || fail "pkg-config says $version"
    grep -q "PACKAGE_VERSION \"$version\"" "$prefix/lib/cmake/cpool/cpoolConfigVersion.cmake" ||
        fail "cpoolConfigVersion.cmake is not $version"
    ;;

pkgconfig-static)
    use_prefix
    libs=$(pkg-config --static --libs cpool)
    say "pkg-config --static --libs cpool: $libs"
    # -lcpool would pick the shared library; the archive, by name, instead.
    libs=${libs/-lcpool/-l:libcpool.a}
    # shellcheck disable=SC2046,SC2086
    cc -Wall -Wextra -Werror -o "$work/consumer-pc-static" "$here/consumer.c" \
        $(pkg-config --cflags cpool) $libs
    if output_has libcpool ldd "$work/consumer-pc-static"; then
        fail "the static consumer still loads libcpool.so"
    fi
    run_consumer "$work/consumer-pc-static"
    ;;

dlopen)
    use_prefix
    so=$(readlink -f "$prefix/lib/libcpool.so.0")
    # The slot is in the initial-exec model (src/core/lease.h): read at an
    # offset from the thread pointer, not through a call per use.
    for f in cpool_checkout cpool_checkin; do
        dis=$(objdump -d --disassemble="$f" "$so")
        [[ $dis == *"<$f>:"* ]] || fail "objdump found no $f in $so"
        n=$(grep -c '__tls_get_addr' <<<"$dis" || true)
        [[ $n == 0 ]] || fail "$f calls __tls_get_addr ($n calls)"
    done
    # shellcheck disable=SC2046  # pkg-config's output is meant to split
    cc -Wall -Wextra -Werror -o "$work/dlopen" "$here/dlopen.c" $(pkg-config --cflags cpool) \
        -ldl -lpthread
    if output_has libcpool ldd "$work/dlopen"; then
        fail "the dlopen program links libcpool itself"
    fi
    out=$("$work/dlopen" "$so") || fail "$work/dlopen failed: $out"
    [[ $out == "dlopen ok: "* ]] || fail "$work/dlopen said: $out"
    say "cpool_checkout and cpool_checkin call no __tls_get_addr; $out"
    ;;

find-package)
    use_prefix
    b=$work/find-package
    rm -rf "$b"
    cmake -S "$here/find_package" -B "$b" -DCMAKE_PREFIX_PATH="$prefix" >"$work/find-package.log"
    grep -q "found cpool " "$work/find-package.log" || fail "$(cat "$work/find-package.log")"
    cmake --build "$b" -j"$jobs" >>"$work/find-package.log" || fail "$(cat "$work/find-package.log")"
    run_consumer "$b/consumer_shared"
    run_consumer "$b/consumer_static"
    output_has "libcpool.so.0 => $prefix" ldd "$b/consumer_shared" ||
        fail "consumer_shared does not load $prefix/lib/libcpool.so.0"
    if output_has libcpool ldd "$b/consumer_static"; then
        fail "consumer_static loads libcpool.so"
    fi
    ;;

subproject | fetchcontent)
    b=$work/$step
    rm -rf "$b"
    copy_source "$work/$step-src"
    flag=OFF
    [[ $step == fetchcontent ]] && flag=ON
    {
        cmake -S "$here/subproject" -B "$b" -DCPOOL_SOURCE="$work/$step-src" \
            -DCONSUMER_FETCHCONTENT=$flag &&
            cmake --build "$b" -j"$jobs"
    } >"$work/$step.log" 2>&1 || fail "$(tail -n 40 "$work/$step.log")"
    run_consumer "$b/consumer"
    ;;

cxx-*)
    use_prefix
    cxx=${step#cxx-}
    command -v "$cxx" >/dev/null || fail "$cxx is not installed (scripts/install-deps.sh build)"
    libdir=$(pkg-config --variable=libdir cpool)
    for std in c++11 c++17; do
        for exc in -fexceptions -fno-exceptions; do
            exe=$work/consumer-$cxx-$std$exc
            # shellcheck disable=SC2046
            "$cxx" -std=$std $exc -Wall -Wextra -Werror -pedantic -o "$exe" \
                "$here/consumer.cpp" $(pkg-config --cflags --libs cpool) -Wl,-rpath,"$libdir"
            out=$("$exe") || fail "$exe: $out"
            say "$std $exc: $out"
        done
    done
    ;;

without-redis)
    copy_source "$work/noredis-src"
    b=$work/noredis-build
    p=$work/noredis-prefix
    rm -rf "$b" "$p"
    {
        cmake -S "$work/noredis-src" -B "$b" -DCPOOL_WITH_REDIS=OFF -DCPOOL_BUILD_TESTS=OFF \
            -DCPOOL_BUILD_BENCH=OFF -DCPOOL_BUILD_EXAMPLES=OFF -DCPOOL_BUILD_TOOLS=OFF &&
            cmake --build "$b" -j"$jobs" && cmake --install "$b" --prefix "$p"
    } >"$work/noredis.log" 2>&1 || fail "$(tail -n 40 "$work/noredis.log")"
    [[ ! -e $p/include/cpool/cpool_redis.h ]] || fail "cpool_redis.h installed"
    [[ -e $p/include/cpool/cpool_pg.h ]] || fail "cpool_pg.h missing"
    ! grep -q hiredis "$p/lib/pkgconfig/cpool.pc" || fail "cpool.pc names hiredis"
    grep -q '^connectors=sqlite pg$' "$p/lib/pkgconfig/cpool.pc" || fail "cpool.pc connectors"
    ! grep -q hiredis "$p/lib/cmake/cpool/cpoolTargets.cmake" || fail "CMake package names hiredis"
    grep -q 'set(cpool_CONNECTORS "sqlite;pg")' "$p/lib/cmake/cpool/cpoolConfig.cmake" ||
        fail "cpoolConfig.cmake connectors"
    ! output_has cpool_redis objdump -T "$p/lib/libcpool.so" || fail "libcpool.so exports cpool_redis_*"
    ! output_has hiredis ldd "$p/lib/libcpool.so" || fail "libcpool.so needs hiredis"
    say "no Redis header, symbol, pkg-config flag or CMake connector"
    ;;

*)
    fail "unknown step (see the comment at the top of $0)"
    ;;
esac
