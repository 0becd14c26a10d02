# PostgreSQL connector tests against a real server that the tests start
# themselves: pg/server_start (CTest fixture pg_server) runs
# scripts/pg-server.sh into ${PROJECT_BINARY_DIR}/pg-server on
# CPOOL_TEST_PG_PORT, pg/server_stop stops it; pg/bouncer_start and
# pg/bouncer_stop put PgBouncer (transaction mode) in front on port + 2
# (fixture pg_bouncer). A case never skips: without the server it fails,
# and when the fixture failed CTest reports its cases as not run.
#
# Each tests/pg/test_<suite>.c is one executable; each of its cases is its
# own CTest test <suite>/<case>, registered from `<exe> --list`
# (tests/cases.cmake).

set(pg_dir ${PROJECT_BINARY_DIR}/pg-server)
set(pg_script ${PROJECT_SOURCE_DIR}/scripts/pg-server.sh)
math(EXPR pg_bouncer_port "${CPOOL_TEST_PG_PORT} + 2")
set(pg_query "sslmode=disable&gssencmode=disable")
set(pg_uri "postgresql://postgres@127.0.0.1:${CPOOL_TEST_PG_PORT}/postgres?${pg_query}")
set(pg_bouncer_uri "postgresql://postgres@127.0.0.1:${pg_bouncer_port}/postgres?${pg_query}")
set(pg_env
  "CPOOL_TEST_PG_URI=${pg_uri}"
  "CPOOL_TEST_PGBOUNCER_URI=${pg_bouncer_uri}"
  "CPOOL_TEST_PG_PORT=${CPOOL_TEST_PG_PORT}"
  "CPOOL_TEST_PG_DIR=${pg_dir}"
  "CPOOL_TEST_PG_SCRIPT=${pg_script}")

add_test(NAME pg/server_start COMMAND ${pg_script} start ${pg_dir} ${CPOOL_TEST_PG_PORT})
set_tests_properties(pg/server_start PROPERTIES
  FIXTURES_SETUP pg_server LABELS pg TIMEOUT 90)
add_test(NAME pg/server_stop COMMAND ${pg_script} stop ${pg_dir})
set_tests_properties(pg/server_stop PROPERTIES
  FIXTURES_CLEANUP pg_server LABELS pg TIMEOUT 60)
add_test(NAME pg/bouncer_start
  COMMAND ${pg_script} bouncer-start ${pg_dir} ${CPOOL_TEST_PG_PORT} ${pg_bouncer_port})
set_tests_properties(pg/bouncer_start PROPERTIES
  FIXTURES_SETUP pg_bouncer FIXTURES_REQUIRED pg_server LABELS pg TIMEOUT 30)
add_test(NAME pg/bouncer_stop COMMAND ${pg_script} bouncer-stop ${pg_dir})
set_tests_properties(pg/bouncer_stop PROPERTIES
  FIXTURES_CLEANUP pg_bouncer FIXTURES_REQUIRED pg_server LABELS pg TIMEOUT 30)

# cpool_pg_suite(<suite> TIMEOUT <s>)
# A case tagged "serial" changes server-wide settings and runs alone
# (RUN_SERIAL); one tagged "bouncer" also needs the PgBouncer fixture.
function(cpool_pg_suite suite)
  cmake_parse_arguments(S "" "TIMEOUT" "" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/pg/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}
                                            ${CMAKE_CURRENT_SOURCE_DIR}/pg)
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  cpool_test_cases(${exe} SUITE ${suite}
    PROPERTIES TIMEOUT ${S_TIMEOUT} LABELS pg FIXTURES_REQUIRED pg_server
               ENVIRONMENT "${pg_env}"
    TAG serial RUN_SERIAL TRUE
    TAG bouncer FIXTURES_REQUIRED "pg_server;pg_bouncer")
endfunction()

cpool_pg_suite(pg TIMEOUT 30)

cpool_pg_suite(pg_connect TIMEOUT 30)

cpool_pg_suite(pg_session TIMEOUT 30)

cpool_pg_suite(pg_txn TIMEOUT 30)

cpool_pg_suite(pg_policy TIMEOUT 60)

# Allocation failures in the connector, injected with the GNU linker's
# --wrap, which reaches libcpool's calls only when it is a static library
# (as in the core's oom suite).
get_target_property(cpool_pg_lib_type cpool_static TYPE)
if(cpool_pg_lib_type STREQUAL "STATIC_LIBRARY" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  cpool_pg_suite(pg_oom TIMEOUT 60)
  target_link_options(test_pg_oom PRIVATE
    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=strdup)
else()
  message(STATUS "cpool: pg_oom suite left out (needs a static libcpool on Linux)")
endif()

# The replica set the multi-endpoint drills stand on: a primary and two
# streaming replicas from scripts/pg-server.sh (replica-start, promote),
# each started and stopped by the check itself on its own ports (+ 0..2,
# PgBouncers + 3..4); and the command line on it (cpool probe and bench on
# the host list).
# The cluster example (examples/cluster_example.c) runs there too, through
# a PgBouncer in front of the primary and one in front of a replica.
add_executable(cluster_example ${PROJECT_SOURCE_DIR}/examples/cluster_example.c)
target_link_libraries(cluster_example PRIVATE cpool PkgConfig::CPOOL_DEP_PG)
add_test(NAME pg/cluster_replicas
  COMMAND ${PROJECT_SOURCE_DIR}/tests/pg/cluster_check.sh ${pg_script}
          ${PROJECT_BINARY_DIR}/pg-cluster ${CPOOL_TEST_PG_CLUSTER_PORT}
          $<TARGET_FILE:cpool_cli> $<TARGET_FILE:cluster_example>)
set_tests_properties(pg/cluster_replicas PROPERTIES LABELS pg TIMEOUT 120)

# The example program, built here (examples/CMakeLists.txt is shared) and
# run against the fixture's server.
add_executable(pg_example ${PROJECT_SOURCE_DIR}/examples/pg_example.c)
target_link_libraries(pg_example PRIVATE cpool PkgConfig::CPOOL_DEP_PG)
add_test(NAME pg/example COMMAND pg_example "${pg_uri}")
set_tests_properties(pg/example PROPERTIES
  TIMEOUT 30 LABELS pg FIXTURES_REQUIRED pg_server
  PASS_REGULAR_EXPRESSION "^hello from cpool\nPostgreSQL ")

# bench/pg_ab (built with the benchmarks): one short round each way, so
# that the program keeps building and running; its figures are for
# docs/benchmarks.md, not for a pass/fail test. The A/A run must report
# its ratio too, and neither may fail a request.
if(TARGET pg_ab)
  add_test(NAME pg/bench_ab COMMAND pg_ab "${pg_uri}" -t 2 -d 0.2 -r 2)
  add_test(NAME pg/bench_ab_aa COMMAND pg_ab "${pg_uri}" -t 2 -d 0.2 -r 1 -b raw -v none)
  set_tests_properties(pg/bench_ab PROPERTIES
    TIMEOUT 60 LABELS pg FIXTURES_REQUIRED pg_server
    PASS_REGULAR_EXPRESSION "pool/raw: median [0-9.]+ .*over 2 rounds"
    FAIL_REGULAR_EXPRESSION "FAILED")
  set_tests_properties(pg/bench_ab_aa PROPERTIES
    TIMEOUT 60 LABELS pg FIXTURES_REQUIRED pg_server
    PASS_REGULAR_EXPRESSION "raw2/raw: median [0-9.]+ .*over 1 rounds"
    FAIL_REGULAR_EXPRESSION "FAILED")
endif()
