# The `cpool` command line (tools/cpool) and the Prometheus text writer
# (src/core/prometheus.c). One executable per file in tests/cli/, one CTest
# test per case (label `cli`), and a `<suite>/cases_registered` check as in
# unit_tests.cmake.
#
# Cases that need something optional -- a connector, gnuplot, a database
# server -- are compiled into test_cli only when the build has it
# (CLI_TEST_HAVE_*), and only those are registered: no case ever skips.
# The database cases use the connector suites' CTest fixtures (pg_server,
# redis_server), which start the servers.

# cpool_cli_suite(<suite> TIMEOUT <seconds> CASES <case>... [DEFINES <d>...]
#                 [LIBS <lib>...])
function(cpool_cli_suite suite)
  cmake_parse_arguments(S "" "TIMEOUT" "CASES;DEFINES;LIBS" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/cli/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads m ${S_LIBS})
  target_compile_definitions(${exe} PRIVATE ${S_DEFINES})
  foreach(case IN LISTS S_CASES)
    add_test(NAME ${suite}/${case} COMMAND ${exe} ${case})
    set_tests_properties(${suite}/${case} PROPERTIES TIMEOUT ${S_TIMEOUT} LABELS cli)
  endforeach()
  add_test(NAME ${suite}/cases_registered COMMAND ${exe} --registered ${S_CASES})
  set_tests_properties(${suite}/cases_registered PROPERTIES TIMEOUT 10 LABELS cli)
endfunction()

cpool_cli_suite(prometheus TIMEOUT 30 CASES
  exposition_parses_and_matches_stats
  label_values_escaped_and_round_trip
  extra_labels_added_or_left_out
  truncation_like_snprintf
  unlimited_max_and_bad_stats)

# The program itself; left out with -DCPOOL_BUILD_TOOLS=OFF.
if(NOT CPOOL_BUILD_TOOLS)
  message(STATUS "cpool: cli tests left out (CPOOL_BUILD_TOOLS=OFF)")
  return()
endif()

if(NOT TARGET PkgConfig::JANSSON)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
endif()
find_program(CPOOL_GNUPLOT gnuplot)

set(cli_cases
  help_on_every_command
  bad_usage_exits_2_with_one_line
  bench_mem_json_report
  bench_no_events_counts_from_statistics
  bench_ops_limit_is_exact
  bench_progress_lines_when_not_a_terminal
  bench_progress_rewritten_on_a_terminal
  bench_errors_by_kind_and_exit_code
  bench_tenants_share_threads_by_weight
  bench_plot_builtin
  passwords_never_shown
  probe_mem_reports_phases_and_server
  options_show_url_and_env_sources
  misspelt_env_variable_warned)
set(cli_defines "CPOOL_CLI_PATH=\"$<TARGET_FILE:cpool_cli>\"")
if(CPOOL_CLI_HAVE_MHD)
  list(APPEND cli_cases metrics_serves_prometheus_and_stops_on_sigterm metrics_stops_on_sigint)
  list(APPEND cli_defines CLI_TEST_HAVE_MHD)
else()
  list(APPEND cli_cases metrics_without_libmicrohttpd_says_so)
endif()
if(CPOOL_GNUPLOT)
  list(APPEND cli_cases bench_plot_gnuplot)
  list(APPEND cli_defines CLI_TEST_HAVE_GNUPLOT)
else()
  message(STATUS "cpool: gnuplot not found; cli/bench_plot_gnuplot left out "
                 "(install gnuplot-nox to test the gnuplot chart)")
endif()
if(CPOOL_HAVE_SQLITE)
  list(APPEND cli_cases bench_default_embedded_sqlite options_connector_parameter_rejected)
  list(APPEND cli_defines CLI_TEST_HAVE_SQLITE)
endif()
if(CPOOL_HAVE_PG OR CPOOL_HAVE_REDIS)
  list(APPEND cli_cases probe_refused_port_explained probe_silent_listener_times_out
                        bench_refused_port_exits_3)
endif()
if(CPOOL_HAVE_PG)
  list(APPEND cli_cases bench_postgresql)
  list(APPEND cli_defines CLI_TEST_HAVE_PG)
endif()
if(CPOOL_HAVE_REDIS)
  list(APPEND cli_cases bench_redis)
  list(APPEND cli_defines CLI_TEST_HAVE_REDIS)
endif()

cpool_cli_suite(cli TIMEOUT 120 CASES ${cli_cases} DEFINES ${cli_defines}
  LIBS PkgConfig::JANSSON)
add_dependencies(test_cli cpool_cli)

set_tests_properties(cli/options_show_url_and_env_sources PROPERTIES
  ENVIRONMENT "CPOOL_MIN_POOL_SIZE=2")

# The database servers: the connector suites' fixtures start them, and
# their environment lists (pg_env, cpool_redis_env in pg_tests.cmake and
# redis_tests.cmake) say where; the URIs below are the same, for a tree
# where those lists are named differently.
if(CPOOL_HAVE_PG)
  if(DEFINED pg_env)
    set(cli_pg_env "${pg_env}")
  else()
    set(cli_pg_env "CPOOL_TEST_PG_URI=postgresql://postgres@127.0.0.1:${CPOOL_TEST_PG_PORT}/postgres?sslmode=disable&gssencmode=disable")
  endif()
  set_tests_properties(cli/bench_postgresql PROPERTIES
    FIXTURES_REQUIRED pg_server LABELS "cli;pg" ENVIRONMENT "${cli_pg_env}")
endif()
if(CPOOL_HAVE_REDIS)
  if(DEFINED cpool_redis_env)
    set(cli_redis_env "${cpool_redis_env}")
  else()
    set(cli_redis_env "CPOOL_TEST_REDIS_URI=redis://:cpool-test-pw@127.0.0.1:${CPOOL_TEST_REDIS_PORT}/0")
  endif()
  set_tests_properties(cli/bench_redis PROPERTIES
    FIXTURES_REQUIRED redis_server LABELS "cli;redis" ENVIRONMENT "${cli_redis_env}")
endif()
