# CMAP conformance: the runner and its two CTest entries.
#
#   cmap/official  the specification's cmap-format files, from CPOOL_CMAP_SPEC_DIR
#   cmap/ours      our own files in the same format (tests/cmap/, see its README)
#
# The official files are not part of this repository. When their directory
# is missing the test is still added, so that it fails loudly instead of
# disappearing from the results.

find_package(PkgConfig REQUIRED)
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)

add_executable(cmap_runner ${CMAKE_CURRENT_SOURCE_DIR}/cmap_runner.c)
target_link_libraries(cmap_runner PRIVATE cpool_static PkgConfig::JANSSON Threads::Threads)

if(NOT IS_DIRECTORY "${CPOOL_CMAP_SPEC_DIR}")
  message(WARNING
    "CPOOL_CMAP_SPEC_DIR (${CPOOL_CMAP_SPEC_DIR}) is not a directory: "
    "the cmap/official test will FAIL until it points at the cmap-format JSON files.")
endif()

add_test(NAME cmap/official COMMAND cmap_runner "${CPOOL_CMAP_SPEC_DIR}")
add_test(NAME cmap/ours COMMAND cmap_runner "${CMAKE_CURRENT_SOURCE_DIR}/cmap")
set_tests_properties(cmap/official cmap/ours PROPERTIES
  TIMEOUT 300
  LABELS "unit;cmap")
