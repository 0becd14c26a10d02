# The `cpool` command line (tools/cpool) and the Prometheus text writer
# (src/core/prometheus.c). One executable per file in tests/cli/, one CTest
# test per case (label `cli`), registered from the file (tests/cases.cmake).
#
# Cases that need something optional -- a connector, gnuplot, a database
# server -- are compiled into test_cli only when the build has it
# (CLI_TEST_HAVE_*), and only those are listed and registered: no case ever
# skips. The database cases (tagged "pg" and "redis") use the connector
# suites' CTest fixtures (pg_server, redis_server), which start the servers.

# cpool_cli_exe(<suite> [DEFINES <d>...] [LIBS <lib>...]) builds
# tests/cli/test_<suite>.c; cpool_test_cases then registers its cases.
function(cpool_cli_exe suite)
  cmake_parse_arguments(S "" "" "DEFINES;LIBS" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/cli/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads m ${S_LIBS})
  target_compile_definitions(${exe} PRIVATE ${S_DEFINES})
endfunction()

cpool_cli_exe(prometheus)
cpool_test_cases(test_prometheus SUITE prometheus PROPERTIES TIMEOUT 30 LABELS cli)

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

set(cli_defines "CPOOL_CLI_PATH=\"$<TARGET_FILE:cpool_cli>\"")
if(CPOOL_CLI_HAVE_MHD)
  list(APPEND cli_defines CLI_TEST_HAVE_MHD)
endif()
if(CPOOL_GNUPLOT)
  list(APPEND cli_defines CLI_TEST_HAVE_GNUPLOT)
else()
  message(STATUS "cpool: gnuplot not found; cli/bench_plot_gnuplot left out "
                 "(install gnuplot-nox to test the gnuplot chart)")
endif()
foreach(part SQLITE PG REDIS)
  if(CPOOL_HAVE_${part})
    list(APPEND cli_defines CLI_TEST_HAVE_${part})
  endif()
endforeach()
cpool_cli_exe(cli DEFINES ${cli_defines} LIBS PkgConfig::JANSSON)
add_dependencies(test_cli cpool_cli)

# The database servers: the connector suites' fixtures start them, and
# their environment lists (pg_env, cpool_redis_env in pg_tests.cmake and
# redis_tests.cmake) say where. A tag whose connector is not built has no
# case in the listing, so defining it anyway is harmless.
cpool_test_cases(test_cli SUITE cli PROPERTIES TIMEOUT 120 LABELS cli
  TAG pg FIXTURES_REQUIRED pg_server LABELS "cli;pg" ENVIRONMENT "${pg_env}"
  TAG redis FIXTURES_REQUIRED redis_server LABELS "cli;redis"
            ENVIRONMENT "${cpool_redis_env}")
