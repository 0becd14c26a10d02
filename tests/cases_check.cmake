# The test cases/discovery: tests/discover.cmake against a stand-in
# executable, end to end through CTest. Run with -D WORK=<dir>
# -D DISCOVER=<discover.cmake> -D CTEST=<ctest>.
cmake_minimum_required(VERSION 3.16)

function(fail)
  message(FATAL_ERROR "cases/discovery: ${ARGN}")
endfunction()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(o "[=======[")
set(c "]=======]")
file(WRITE ${WORK}/props.cmake
  "set(suite s)\nset(base_props ${o} TIMEOUT \"60\" LABELS \"x\"${c})\n"
  "set(tags ${o}serial;server;long${c})\n"
  "set(props_serial ${o} RUN_SERIAL \"TRUE\"${c})\nset(code_serial \"\")\n"
  "set(props_long ${o} TIMEOUT \"240\"${c})\nset(code_long \"\")\n"
  "set(props_server ${o} FIXTURES_REQUIRED \"fx_@CASE@\"${c})\n"
  "set(code_server ${o}add_test(@TEST@/stop_@N@ @EXE@ stop)\n${c})\n")

# A stand-in for a test executable: prints the listing it is given.
function(discover listing out rc_var err_var)
  file(WRITE ${WORK}/listing.txt "${listing}")
  file(WRITE ${WORK}/exe.sh "#!/bin/sh\ncat '${WORK}/listing.txt'\n")
  execute_process(COMMAND chmod +x ${WORK}/exe.sh)
  execute_process(COMMAND ${CMAKE_COMMAND} -D EXE=${WORK}/exe.sh
                          -D PROPS=${WORK}/props.cmake -D OUT=${out} -P ${DISCOVER}
                  RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
  # CMake wraps a long message at any space (the paths make it long).
  string(REGEX REPLACE "[ \n\t]+" " " err "${err}")
  set(${rc_var} ${rc} PARENT_SCOPE)
  set(${err_var} "${err}" PARENT_SCOPE)
endfunction()

# 1. Cases, tags, placeholders, numbering per tag.
discover("a\nb serial\nc server\nd server long\n" ${WORK}/tests.cmake rc err)
if(NOT rc EQUAL 0)
  fail("discovery failed: ${err}")
endif()
file(WRITE ${WORK}/CTestTestfile.cmake "include(${WORK}/tests.cmake)\n")
execute_process(COMMAND ${CTEST} --show-only=json-v1 WORKING_DIRECTORY ${WORK}
                OUTPUT_VARIABLE json RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  fail("ctest could not read the generated file")
endif()
string(REGEX REPLACE "[ \n\t]" "" json "${json}")
foreach(want
    "\"name\":\"s/a\""
    "\"name\":\"s/b\""
    "\"name\":\"RUN_SERIAL\",\"value\":true"
    "\"name\":\"s/c/stop_0\""
    "\"name\":\"s/d/stop_1\""
    "\"value\":[\"fx_d\"]"
    "\"name\":\"TIMEOUT\",\"value\":240")
  string(FIND "${json}" "${want}" at)
  if(at EQUAL -1)
    fail("expected ${want} in ctest's view: ${json}")
  endif()
endforeach()
string(REGEX MATCHALL "\"name\":\"s/[a-z_/0-9]+\"" names "${json}")
list(LENGTH names n)
if(NOT n EQUAL 6)
  fail("expected 6 tests (4 cases, 2 stop tests), found ${n}: ${names}")
endif()

# 2. A tag the suite does not define fails, naming it.
discover("a\nb bogus\n" ${WORK}/bad.cmake rc err)
if(rc EQUAL 0 OR NOT err MATCHES "tagged 'bogus'")
  fail("an unknown tag was accepted (${rc}): ${err}")
endif()

# 3. An executable that lists nothing fails.
discover("" ${WORK}/empty.cmake rc err)
if(rc EQUAL 0 OR NOT err MATCHES "names no case")
  fail("an empty listing was accepted (${rc}): ${err}")
endif()
message(STATUS "cases/discovery: ok")
