# The event-loop adapters (include/cpool/cpool_uv.h, cpool_event.h): a unit
# suite on the in-memory connector for each loop, and the two echo services
# of examples/ against the PostgreSQL fixture, each printing the longest
# time the loop was kept. CPOOL_WITH_LOOPS=ON (make test) requires libuv and
# libevent; AUTO builds what it finds.

string(TOUPPER "${CPOOL_WITH_LOOPS}" cpool_loops_mode)
if(NOT cpool_loops_mode MATCHES "^(ON|OFF|AUTO|TRUE|FALSE|YES|NO|1|0)$")
  message(FATAL_ERROR "cpool: CPOOL_WITH_LOOPS must be ON, AUTO or OFF, not '${CPOOL_WITH_LOOPS}'")
endif()
if(cpool_loops_mode AND NOT cpool_loops_mode STREQUAL "OFF")
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(CPOOL_UV QUIET IMPORTED_TARGET libuv)
    pkg_check_modules(CPOOL_EVENT QUIET IMPORTED_TARGET libevent)
  endif()
  foreach(lib UV EVENT)
    if(NOT CPOOL_${lib}_FOUND AND NOT cpool_loops_mode STREQUAL "AUTO")
      message(FATAL_ERROR "cpool: libuv and libevent are needed by the event-loop tests "
                          "(CPOOL_WITH_LOOPS=ON); install libuv1-dev and libevent-dev "
                          "(scripts/install-deps.sh loops does), or configure with "
                          "-DCPOOL_WITH_LOOPS=AUTO or OFF")
    endif()
  endforeach()

  if(CPOOL_UV_FOUND AND CPOOL_EVENT_FOUND)
    add_executable(test_loops ${CMAKE_CURRENT_SOURCE_DIR}/loops/test_loops.c)
    target_include_directories(test_loops PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(test_loops PRIVATE cpool_static Threads::Threads PkgConfig::CPOOL_UV
                                             PkgConfig::CPOOL_EVENT)
    cpool_test_cases(test_loops SUITE loops PROPERTIES TIMEOUT 60 LABELS unit)
  endif()

  if(CPOOL_HAVE_PG)
    # examples/uv_echo.c and event_echo.c: 10,000 requests from one loop
    # thread, a pool of 4, 64 in flight; each exits 1 if a loop callback
    # took 1 ms of the loop thread's CPU. Under a sanitizer every
    # instruction costs several times more: that build checks the answers,
    # not the timing.
    set(echo_max_block_ms 1)
    if(NOT CPOOL_SANITIZE STREQUAL "")
      set(echo_max_block_ms 1000)
    endif()
    set(echo_args "${pg_uri}" 10000 64 4 ${echo_max_block_ms})
    foreach(loop uv event)
      string(TOUPPER ${loop} upper)
      if(NOT CPOOL_${upper}_FOUND)
        continue()
      endif()
      add_executable(${loop}_echo ${PROJECT_SOURCE_DIR}/examples/${loop}_echo.c
                                  ${PROJECT_SOURCE_DIR}/examples/echo_common.c)
      target_link_libraries(${loop}_echo PRIVATE cpool Threads::Threads
                                                 PkgConfig::CPOOL_DEP_PG PkgConfig::CPOOL_${upper})
      add_test(NAME loops/${loop}_echo COMMAND ${loop}_echo ${echo_args})
      # Alone: its 64 client threads are load enough, and the measure is of
      # the loop's own work.
      set_tests_properties(loops/${loop}_echo PROPERTIES
        TIMEOUT 120 LABELS pg FIXTURES_REQUIRED pg_server RUN_SERIAL TRUE)
      # The timing criterion can fail: with a limit of 1 us nearly every
      # callback is over it, and the run must say so (and nothing else).
      add_test(NAME loops/${loop}_echo_limit_trips
               COMMAND ${loop}_echo "${pg_uri}" 2000 16 4 0.001)
      set_tests_properties(loops/${loop}_echo_limit_trips PROPERTIES
        TIMEOUT 120 LABELS pg FIXTURES_REQUIRED pg_server
        PASS_REGULAR_EXPRESSION "FAILED: the loop's work took MAX_BLOCK_MS or more"
        FAIL_REGULAR_EXPRESSION "requests failed")
    endforeach()
  endif()
endif()
