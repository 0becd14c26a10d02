# libFuzzer harnesses (tests/fuzz/, run by tests/fuzz/fuzz.sh): redaction
# against libpq's own parser, the JSON log formatter, options from text,
# and the connectors' target parsers. fuzz/build compiles them with clang
# (ASan+UBSan); each fuzz/<harness> replays its seed corpus, then fuzzes for
# CPOOL_FUZZ_SECONDS (30 by default). Label `fuzz`. The plain stage runs
# them (the harnesses carry their own sanitizers); `make fuzz` runs longer.

if(NOT CPOOL_SANITIZE STREQUAL "")
  return()
endif()
if(NOT (CPOOL_HAVE_SQLITE AND CPOOL_HAVE_PG AND CPOOL_HAVE_REDIS))
  message(STATUS "cpool: fuzz tests left out (they need all three connectors)")
  return()
endif()
find_program(CPOOL_CLANG clang)
if(NOT CPOOL_CLANG)
  message(FATAL_ERROR "cpool: clang is needed for the fuzz tests; install the Debian packages "
                      "clang and libclang-rt-14-dev (scripts/install-deps.sh build does)")
endif()
set(CPOOL_FUZZ_SECONDS 30 CACHE STRING "How long each fuzz test fuzzes after its seeds")

set(fuzz_script ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz.sh)
set(fuzz_work ${CMAKE_CURRENT_BINARY_DIR}/fuzz)
add_test(NAME fuzz/build COMMAND bash ${fuzz_script} build ${PROJECT_SOURCE_DIR} ${fuzz_work})
set_tests_properties(fuzz/build PROPERTIES LABELS fuzz TIMEOUT 300 FIXTURES_SETUP fuzz_built)
math(EXPR fuzz_timeout "${CPOOL_FUZZ_SECONDS} + 180")
foreach(h redact json options targets)
  add_test(NAME fuzz/${h}
    COMMAND bash ${fuzz_script} run ${PROJECT_SOURCE_DIR} ${fuzz_work} ${h} ${CPOOL_FUZZ_SECONDS})
  set_tests_properties(fuzz/${h} PROPERTIES
    LABELS fuzz TIMEOUT ${fuzz_timeout} FIXTURES_REQUIRED fuzz_built)
endforeach()
