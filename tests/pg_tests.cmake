# PostgreSQL connector tests against a real server that the tests start
# themselves: pg/server_start (CTest fixture pg_server) runs
# scripts/pg-server.sh into ${PROJECT_BINARY_DIR}/pg-server on
# CPOOL_TEST_PG_PORT, pg/server_stop stops it; pg/bouncer_start and
# pg/bouncer_stop put PgBouncer (transaction mode) in front on port + 2
# (fixture pg_bouncer). A case never skips: without the server it fails,
# and when the fixture failed CTest reports its cases as not run.
#
# Each tests/pg/test_<suite>.c is one executable with a table of cases; each
# case is its own CTest test <suite>/<case>, and <suite>/cases_registered
# checks that the table and the list below agree.

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

# cpool_pg_suite(<suite> TIMEOUT <s> CASES <case>... [SERIAL <case>...]
#                [BOUNCER <case>...])
# SERIAL cases change server-wide settings and run alone (RUN_SERIAL);
# BOUNCER cases also need the PgBouncer fixture.
function(cpool_pg_suite suite)
  cmake_parse_arguments(S "" "TIMEOUT" "CASES;SERIAL;BOUNCER" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/pg/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}
                                            ${CMAKE_CURRENT_SOURCE_DIR}/pg)
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  foreach(case IN LISTS S_CASES)
    set(name ${suite}/${case})
    add_test(NAME ${name} COMMAND ${exe} ${case})
    set(fixtures pg_server)
    if(case IN_LIST S_BOUNCER)
      list(APPEND fixtures pg_bouncer)
    endif()
    set_tests_properties(${name} PROPERTIES
      TIMEOUT ${S_TIMEOUT} LABELS pg FIXTURES_REQUIRED "${fixtures}"
      ENVIRONMENT "${pg_env}")
    if(case IN_LIST S_SERIAL)
      set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
    endif()
  endforeach()
  add_test(NAME ${suite}/cases_registered COMMAND ${exe} --registered ${S_CASES})
  set_tests_properties(${suite}/cases_registered PROPERTIES TIMEOUT 10 LABELS pg)
endfunction()

cpool_pg_suite(pg TIMEOUT 30
  CASES
    checkout_query_works
    connections_reused
    own_parameters_parsed_and_removed
    unknown_parameter_rejected
    check_detects_terminated_backend
    ping_round_trip
    checkin_in_transaction_rolled_back
    checkin_in_failed_transaction_rolled_back
    reset_query_runs
    client_settings_restored
    unfinished_query_closes
    interrupt_in_use_cancels_query
    interrupted_idle_lease_fails_next_command
    unfinished_queries_all_stop
    execute_bounded_by_command_timeout
    session_attrs_follow_role_change
    fork_abandon_keeps_parent_connection
    pgbouncer_transaction_mode
  SERIAL session_attrs_follow_role_change
  BOUNCER pgbouncer_transaction_mode)

cpool_pg_suite(pg_connect TIMEOUT 30
  CASES
    connector_picked_for_both_target_forms
    refused_tcp_port
    refused_unix_socket
    silent_listener_deadline
    clear_interrupts_establishment
    close_interrupts_establishment
    bad_password_is_auth
    unknown_role_is_auth
    hba_reject_is_auth
    unknown_host_is_dns
    unknown_database_is_server_error
    connection_limit_waits_within_deadline
    phase_times_recorded
    sqlstate_code_round_trip)

cpool_pg_suite(pg_session TIMEOUT 30
  CASES
    tenant_switch_leaves_nothing
    reset_always_leaves_nothing
    default_reset_within_tenant
    tenant_switch_on_dead_backend_reconnects
    reset_mode_checked
    reset_query_setting_is_the_baseline)

cpool_pg_suite(pg_txn TIMEOUT 30
  CASES
    transaction_commits
    transaction_rolls_back_on_fn_error
    transaction_refused_inside_transaction
    transaction_commit_failure_reported
    savepoint_rollback_keeps_outer_work
    savepoint_name_quoted_and_checked)

# Allocation failures in the connector, injected with the GNU linker's
# --wrap, which reaches libcpool's calls only when it is a static library
# (as in the core's oom suite).
get_target_property(cpool_pg_lib_type cpool_static TYPE)
if(cpool_pg_lib_type STREQUAL "STATIC_LIBRARY" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  cpool_pg_suite(pg_oom TIMEOUT 60
    CASES
      ctx_new_allocations
      connect_allocations
      savepoint_allocations)
  target_link_options(test_pg_oom PRIVATE
    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=strdup)
else()
  message(STATUS "cpool: pg_oom suite left out (needs a static libcpool on Linux)")
endif()

# The example program, built here (examples/CMakeLists.txt is shared) and
# run against the fixture's server.
add_executable(pg_example ${PROJECT_SOURCE_DIR}/examples/pg_example.c)
target_link_libraries(pg_example PRIVATE cpool PkgConfig::CPOOL_DEP_PG)
add_test(NAME pg/example COMMAND pg_example "${pg_uri}")
set_tests_properties(pg/example PROPERTIES
  TIMEOUT 30 LABELS pg FIXTURES_REQUIRED pg_server)
