# SQLite connector tests: tests/sqlite/test_sqlite.c, run against database
# files in fresh directories under /tmp and against shared in-memory
# databases. SQLite is embedded, so there is no server to start and nothing
# that could be missing: every case always runs. One CTest test per case,
# each in its own process, plus sqlite/cases_registered, which fails when
# the list below and the table in the file differ.

# cpool_sqlite_suite(<file stem> TIMEOUT <seconds> CASES <case>...)
function(cpool_sqlite_suite stem)
  cmake_parse_arguments(S "" "TIMEOUT" "CASES" ${ARGN})
  set(exe ${stem})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/sqlite/${stem}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  foreach(case IN LISTS S_CASES)
    add_test(NAME sqlite/${case} COMMAND ${exe} ${case})
    set_tests_properties(sqlite/${case} PROPERTIES
      TIMEOUT ${S_TIMEOUT} LABELS sqlite)
  endforeach()
  add_test(NAME sqlite/cases_registered COMMAND ${exe} --registered ${S_CASES})
  set_tests_properties(sqlite/cases_registered PROPERTIES TIMEOUT 10 LABELS sqlite)
endfunction()

cpool_sqlite_suite(test_sqlite TIMEOUT 60 CASES
  basic_query
  connections_reused
  file_db_defaults_and_parameters
  open_modes
  memory_shared_by_leases_and_anchored
  memory_pools_isolated_unless_named
  invalid_targets_rejected
  bad_path_unlabelled
  checkin_rolls_back_open_transaction
  checkin_resets_running_statement
  busy_timeout_bounds_lock_wait
  clear_interrupts_long_query
  clear_interrupts_lock_wait
  transaction_helper
  concurrent_inserts_wal
  fork_abandon_keeps_parent_database
  connector_table_contract
  establishment_lock_wait_bounded_by_deadline
  establishment_cancelled_by_clear)

# The example in examples/sqlite_example.c, built here so that it is
# compiled and run wherever the connector is; without arguments it works
# on a temporary file of its own and removes it.
add_executable(test_sqlite_example ${PROJECT_SOURCE_DIR}/examples/sqlite_example.c)
# A program that calls SQLite itself links it itself: the shared libcpool
# keeps its own dependencies private.
target_link_libraries(test_sqlite_example PRIVATE cpool PkgConfig::CPOOL_DEP_SQLITE)
add_test(NAME sqlite/example COMMAND test_sqlite_example)
set_tests_properties(sqlite/example PROPERTIES TIMEOUT 30 LABELS sqlite
  PASS_REGULAR_EXPRESSION "2 notes")
