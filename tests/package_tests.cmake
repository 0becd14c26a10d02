# cpool as its users consume it (tests/package/package.sh): the README's
# install commands into a temporary prefix, then outside projects that build
# against it through pkg-config (shared and static), find_package(), and
# add_subdirectory()/FetchContent, a C++ consumer for g++ and clang++, the
# library's exported symbols, and a build with a connector left out.
# Label `package`. The sanitizer stages leave these out: the packages are
# the plain build's, and a sanitized library needs sanitized consumers.

if(NOT CPOOL_SANITIZE STREQUAL "")
  message(STATUS "cpool: package tests left out of the sanitizer build")
  return()
endif()
if(NOT CPOOL_HAVE_SQLITE)
  message(STATUS "cpool: package tests left out (their consumers use SQLite)")
  return()
endif()

set(pkg_script ${CMAKE_CURRENT_SOURCE_DIR}/package/package.sh)
set(pkg_work ${CMAKE_CURRENT_BINARY_DIR}/package)

add_test(NAME package/install COMMAND bash ${pkg_script} install ${PROJECT_SOURCE_DIR} ${pkg_work})
set_tests_properties(package/install PROPERTIES
  LABELS package TIMEOUT 600 FIXTURES_SETUP cpool_installed)

set(pkg_steps exports pkgconfig-shared pkgconfig-static dlopen find-package cxx-g++ cxx-clang++)
foreach(step IN LISTS pkg_steps)
  add_test(NAME package/${step} COMMAND bash ${pkg_script} ${step} ${PROJECT_SOURCE_DIR} ${pkg_work})
  set_tests_properties(package/${step} PROPERTIES
    LABELS package TIMEOUT 300 FIXTURES_REQUIRED cpool_installed)
endforeach()

# These build the library again from a copy of the tree.
set(pkg_builds subproject fetchcontent)
if(CPOOL_HAVE_PG AND CPOOL_HAVE_REDIS)
  list(APPEND pkg_builds without-redis)
endif()
foreach(step IN LISTS pkg_builds)
  add_test(NAME package/${step} COMMAND bash ${pkg_script} ${step} ${PROJECT_SOURCE_DIR} ${pkg_work})
  set_tests_properties(package/${step} PROPERTIES LABELS package TIMEOUT 600)
endforeach()
