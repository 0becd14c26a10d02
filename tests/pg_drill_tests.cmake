# Fault drills against a real PostgreSQL server (docs/drills.md): the pool
# under load while the server is killed, restarted, has its backends
# terminated or its slots exhausted, and against a listener that never
# accepts. One executable, one CTest test per drill, label `drill`.
#
# Each drill starts its own server through scripts/pg-server.sh on its own
# port (CPOOL_TEST_PG_DRILL_PORT, +1 per drill; see tests/CMakeLists.txt) with its own state directory
# under the build tree; a cleanup fixture stops it whatever the outcome.
# RESOURCE_LOCK pg_drill keeps drills from running at the same time: their
# timing bounds assume the machine is not also running another drill.

add_executable(test_pg_drill ${CMAKE_CURRENT_SOURCE_DIR}/pg/test_pg_drill.c)
target_include_directories(test_pg_drill PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_pg_drill PRIVATE cpool_static Threads::Threads)

set(drill_script ${PROJECT_SOURCE_DIR}/scripts/pg-server.sh)
set(drill_server_cases
  kill9_postmaster_and_restart
  restart_fast
  terminate_backends
  max_connections_exhausted
  breaker_restart_drill
  sigstop_interrupts_holders
  outages_recover_within_a_second)
set(drill_cases ${drill_server_cases} listener_never_accepts)

set(drill_port ${CPOOL_TEST_PG_DRILL_PORT})
foreach(case IN LISTS drill_server_cases)
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/pg-drill/${case})
  add_test(NAME drill/${case} COMMAND test_pg_drill ${case})
  # The outage drill waits out 77 s of outages.
  set(timeout 60)
  if(case STREQUAL "outages_recover_within_a_second")
    set(timeout 240)
  endif()
  set_tests_properties(drill/${case} PROPERTIES
    TIMEOUT ${timeout} LABELS drill RESOURCE_LOCK pg_drill
    FIXTURES_REQUIRED pg_drill_${case}
    ENVIRONMENT "CPOOL_DRILL_PG_SCRIPT=${drill_script};CPOOL_DRILL_PG_DIR=${dir};CPOOL_DRILL_PG_PORT=${drill_port}")
  add_test(NAME drill/${case}/server_stop COMMAND bash ${drill_script} stop ${dir})
  set_tests_properties(drill/${case}/server_stop PROPERTIES
    TIMEOUT 60 LABELS drill RESOURCE_LOCK pg_drill FIXTURES_CLEANUP pg_drill_${case})
  math(EXPR drill_port "${drill_port} + 1")
endforeach()

# No server: the drill opens its own listener on an ephemeral port.
add_test(NAME drill/listener_never_accepts COMMAND test_pg_drill listener_never_accepts)
set_tests_properties(drill/listener_never_accepts PROPERTIES
  TIMEOUT 60 LABELS drill RESOURCE_LOCK pg_drill)

add_test(NAME drill/cases_registered COMMAND test_pg_drill --registered ${drill_cases})
set_tests_properties(drill/cases_registered PROPERTIES TIMEOUT 10 LABELS drill)
