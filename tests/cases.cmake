# Registering a test executable's cases from the executable itself, so a
# case is written once: TEST(name) in the C file (tests/check.h), nothing
# here. After the executable is linked, tests/discover.cmake runs
# `<exe> --list` and writes one CTest test per line, <suite>/<case>, into a
# file that CTest reads through the directory's TEST_INCLUDE_FILES (the way
# CMake's gtest_discover_tests works). A case that is compiled out by #if is
# not listed, so it is not registered, and never reported as skipped.
#
# cpool_test_cases(<target> SUITE <suite> PROPERTIES <prop> <value>...
#                  [TAG <tag> [<prop> <value>...] [CODE <ctest code>]]...)
#
# PROPERTIES apply to every case. A case declared TEST_TAGGED(name, "a b")
# also gets the properties of tags a and b, set after the suite's (so a tag's
# FIXTURES_REQUIRED replaces the suite's: list them all). CODE is CTest
# script text added once per case carrying the tag, with @CASE@ (the case),
# @TEST@ (<suite>/<case>), @EXE@ (the executable) and @N@ (0, 1, ... in the
# order of the file among the cases with that tag) replaced; a fixture's
# cleanup test per case, or a port per case, is written this way. A tag the
# C file uses but the suite does not define fails the build, so a case
# cannot lose its fixture without notice.

set(cpool_discover_script ${CMAKE_CURRENT_LIST_DIR}/discover.cmake)

# A value as a quoted argument of set_tests_properties in a CTest script.
function(cpool_ctest_quote out value)
  string(REPLACE "\\" "\\\\" value "${value}")
  string(REPLACE "\"" "\\\"" value "${value}")
  string(REPLACE "$" "\\$" value "${value}")
  set(${out} "\"${value}\"" PARENT_SCOPE)
endfunction()

function(cpool_test_cases target)
  set(suite "")
  set(section "")       # SUITE, PROPERTIES, TAG, CODE
  set(tag "")
  set(tags "")
  set(base "")
  set(pending "")       # a property name waiting for its value
  # By index: a value that is a list (ENVIRONMENT, FIXTURES_REQUIRED) would
  # be split apart by a loop over ARGN.
  math(EXPR last "${ARGC} - 1")
  foreach(i RANGE 1 ${last})
    set(arg "${ARGV${i}}")
    if(pending STREQUAL "" AND arg MATCHES "^(SUITE|PROPERTIES|TAG|CODE)$")
      set(section ${arg})
      if(arg STREQUAL "TAG")
        set(tag "")
      endif()
      continue()
    endif()
    if(section STREQUAL "SUITE")
      set(suite "${arg}")
    elseif(section STREQUAL "TAG" AND tag STREQUAL "")
      if(NOT arg MATCHES "^[a-z0-9_]+$")
        message(FATAL_ERROR "cpool_test_cases(${target}): bad tag name '${arg}'")
      endif()
      set(tag "${arg}")
      list(APPEND tags ${tag})
      set(props_${tag} "")
      set(code_${tag} "")
    elseif(section STREQUAL "CODE")
      string(APPEND code_${tag} "${arg}\n")
    elseif(pending STREQUAL "")
      set(pending "${arg}")
    else()
      cpool_ctest_quote(q "${arg}")
      if(section STREQUAL "TAG")
        string(APPEND props_${tag} " ${pending} ${q}")
      else()
        string(APPEND base " ${pending} ${q}")
      endif()
      set(pending "")
    endif()
  endforeach()
  if(suite STREQUAL "" OR NOT pending STREQUAL "")
    message(FATAL_ERROR "cpool_test_cases(${target}): needs SUITE, and a value per property")
  endif()

  # What the discovery needs, rewritten only when it changes, so that a
  # configure run alone does not make every suite rediscover its cases.
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/cases)
  # Long brackets, so that CODE may use [==[ ]==] itself.
  set(o "[=======[")
  set(c "]=======]")
  set(text "set(suite ${o}${suite}${c})\nset(base_props ${o}${base}${c})\nset(tags ${o}${tags}${c})\n")
  foreach(t IN LISTS tags)
    string(APPEND text "set(props_${t} ${o}${props_${t}}${c})\nset(code_${t} ${o}${code_${t}}${c})\n")
  endforeach()
  file(WRITE ${dir}/${target}.props.new "${text}")
  configure_file(${dir}/${target}.props.new ${dir}/${target}.props.cmake COPYONLY)

  # After every link of the executable (so `make <exe>` alone is enough),
  # and whenever the suite's properties or the discovery change.
  set(out ${dir}/${target}.tests.cmake)
  set(discover ${CMAKE_COMMAND} -D EXE=$<TARGET_FILE:${target}>
               -D PROPS=${dir}/${target}.props.cmake -D OUT=${out} -P ${cpool_discover_script})
  add_custom_command(TARGET ${target} POST_BUILD COMMAND ${discover} VERBATIM)
  add_custom_command(OUTPUT ${out} COMMAND ${discover}
    DEPENDS ${target} ${dir}/${target}.props.cmake ${cpool_discover_script}
    COMMENT "Listing the cases of ${target}"
    VERBATIM)
  add_custom_target(${target}_cases ALL DEPENDS ${out})

  # Until the executable is built there is nothing to list; a test that
  # cannot run says so instead of the suite vanishing from the results.
  file(WRITE ${dir}/${target}.include.cmake
    "if(EXISTS [==[${out}]==])\n"
    "  include([==[${out}]==])\n"
    "else()\n"
    "  add_test([==[${suite}/NOT_BUILT]==] [==[${target}_NOT_BUILT]==])\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${dir}/${target}.include.cmake)
endfunction()

# The discovery itself is tested: tags, placeholders, and the failures.
add_test(NAME cases/discovery COMMAND ${CMAKE_COMMAND}
  -D WORK=${CMAKE_CURRENT_BINARY_DIR}/cases-check -D DISCOVER=${cpool_discover_script}
  -D CTEST=${CMAKE_CTEST_COMMAND} -P ${CMAKE_CURRENT_LIST_DIR}/cases_check.cmake)
set_tests_properties(cases/discovery PROPERTIES TIMEOUT 30 LABELS unit)
