# Unit and stress tests: one executable per file in tests/unit/, one CTest
# test per case, each in its own process (`<exe> <case>`). The cases are the
# TEST()s of the file, registered from `<exe> --list` (tests/cases.cmake).

# cpool_unit_suite(<suite> LABEL <label> TIMEOUT <seconds>) builds
# tests/unit/test_<suite>.c into test_<suite> and registers <suite>/<case>
# for each of its cases.
function(cpool_unit_suite suite)
  cmake_parse_arguments(S "" "LABEL;TIMEOUT" "" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  target_compile_definitions(${exe} PRIVATE CPOOL_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  cpool_test_cases(${exe} SUITE ${suite} PROPERTIES
    TIMEOUT ${S_TIMEOUT} LABELS ${S_LABEL} SKIP_RETURN_CODE 77)
endfunction()

foreach(suite pool interrupt lb backpressure maint config lifecycle resilience log handoff
    recycle run control hooks async cluster)
  cpool_unit_suite(${suite} LABEL unit TIMEOUT 30)
endforeach()
cpool_unit_suite(tenants LABEL unit TIMEOUT 60)

# Three of the fork cases are not compiled under TSan (see test_fork.c), so
# that build does not list them.
cpool_unit_suite(fork LABEL unit TIMEOUT 40)

# Stress: TSan makes these several times slower, hence the long timeout.
cpool_unit_suite(stress LABEL stress TIMEOUT 180)

# Allocation-failure injection: the executable wraps malloc, calloc, realloc,
# aligned_alloc, strdup and strndup with the GNU linker's --wrap, which reaches the calls in
# the objects it links -- including libcpool.a's. It needs the static
# library (a shared libcpool resolves its own calls at run time, past the
# wrappers), so a BUILD_SHARED_LIBS build leaves the suite out.
get_target_property(cpool_lib_type cpool_static TYPE)
if(cpool_lib_type STREQUAL "STATIC_LIBRARY" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  cpool_unit_suite(oom LABEL unit TIMEOUT 60)
  target_link_options(test_oom PRIVATE
    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc
    -Wl,--wrap=strdup,--wrap=strndup)
else()
  message(STATUS "cpool: oom suite left out (needs a static libcpool on Linux)")
endif()
