#!/usr/bin/env bash
# ctest-run.sh BUILD_DIR [ctest args...] -- run ctest in BUILD_DIR and treat
# every test that did not run (skipped, disabled, not run) as a failure.
#
# ctest reports "100% tests passed" when tests exit with their skip code, so
# a missing server or data directory would otherwise pass silently. This
# script prints the skipped tests and exits 1 if there are any.
#
# Environment:
#   CPOOL_CTEST_TIMEOUT  seconds the whole ctest run may take (default 1800)
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 BUILD_DIR [ctest args...]" >&2
    exit 2
fi
build=$1
shift
if [[ ! -f "$build/CTestTestfile.cmake" ]]; then
    echo "ctest-run: $build is not a configured build directory with tests" >&2
    exit 1
fi

# The CMAP conformance tests read the official JSON files from this
# directory. Say loudly when it is absent: those tests then fail (they are
# never skipped).
spec=$(sed -n 's/^CPOOL_CMAP_SPEC_DIR:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [[ -z "$spec" || ! -d "$spec" ]]; then
    {
        echo "########################################################################"
        echo "# ctest-run: CMAP spec directory NOT FOUND: '${spec:-<unset>}'"
        echo "# The CMAP conformance tests will FAIL. Set CPOOL_CMAP_SPEC_DIR to the"
        echo "# cmap-format folder of the CMAP specification tests and rebuild."
        echo "########################################################################"
    } >&2
else
    echo "ctest-run: CMAP spec directory: $spec"
fi

log="$build/ctest-last.log"
limit=${CPOOL_CTEST_TIMEOUT:-1800}
start=$(date +%s)
set +e
(cd "$build" && exec timeout --kill-after=30 "$limit" ctest "$@") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "ctest-run: ctest in $build did not finish within ${limit}s" >&2
fi

# Status lines look like
#   "3/5 Test #4: name ......***Not Run   0.00 sec"
#   "2/5 Test #3: name ......***Not Run (Disabled)   0.00 sec"
#   "4/5 Test #2: name ......***Skipped   0.02 sec"
# and the summary repeats them under "The following tests did not run:".
skipped=$(
    {
        grep -E '^ *[0-9]+/[0-9]+ +Test +#[0-9]+: ' "$log" |
            grep -E '\*\*\*(Skipped|Not Run)' |
            sed -E 's/^ *[0-9]+\/[0-9]+ +Test +#[0-9]+: ([^ ]+) .*\*\*\*(.*[a-zA-Z)]) +[0-9.]+ sec.*$/\1 (\2)/'
        awk '/^The following tests did not run:/ {on=1; next}
             on && /^[ \t]+[0-9]+ - / {sub(/^[ \t]+[0-9]+ - /, ""); print; next}
             on {on=0}' "$log"
    } | sed -E 's/ \(Not Run \((Disabled)\)\)$/ (\1)/; s/ \(Skipped\)$/ (Skipped)/' |
        awk '{name=$1} !seen[name]++' || true
)

echo "ctest-run: $build: ctest exit code $rc, $((end - start)) s"
if [[ -n "$skipped" ]]; then
    echo "ctest-run: FAIL: these tests did not run (a skipped test counts as a failure):" >&2
    # shellcheck disable=SC2001
    sed 's/^/    /' <<<"$skipped" >&2
    # ctest hides what a skipped test printed; run the first few again,
    # verbosely, so the reason shows in the log.
    n=0
    while read -r name _; do
        n=$((n + 1))
        [[ $n -le 5 ]] || break
        re=$(printf '%s' "$name" | sed 's/[][\.^$*+?(){}|]/\\&/g')
        echo "ctest-run: output of $name:" >&2
        (cd "$build" && timeout 120 ctest -V -R "^${re}\$" 2>&1 |
            grep -E '^[0-9]+: ' | sed 's/^/    /' | tail -n 20) >&2 || true
    done <<<"$skipped"
    exit 1
fi
if [[ $rc -ne 0 ]]; then
    echo "ctest-run: FAIL: ctest failed in $build" >&2
    exit "$rc"
fi
# ctest shows only failing tests' output; the conformance runner's own
# closing lines ("33 passed, 0 failed, 0 skipped") are worth seeing in every
# log, so they are repeated from ctest's full record.
if [[ -f "$build/Testing/Temporary/LastTest.log" ]]; then
    grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' \
        "$build/Testing/Temporary/LastTest.log" |
        sed "s|^|ctest-run: CMAP conformance runner: |" || true
    # The fault drills' figures (max wait, recovery time, leaks), likewise.
    grep -E '^drill-summary ' "$build/Testing/Temporary/LastTest.log" |
        sed "s|^|ctest-run: |" || true
fi
echo "ctest-run: OK: every test in $build ran and passed"
