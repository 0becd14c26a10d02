# SQLite connector tests: tests/sqlite/test_sqlite.c, run against database
# files in fresh directories under /tmp and against shared in-memory
# databases. SQLite is embedded, so there is no server to start and nothing
# that could be missing: every case always runs. One CTest test per case,
# each in its own process, registered from the file (tests/cases.cmake).

add_executable(test_sqlite ${CMAKE_CURRENT_SOURCE_DIR}/sqlite/test_sqlite.c)
target_include_directories(test_sqlite PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_sqlite PRIVATE cpool_static Threads::Threads)
cpool_test_cases(test_sqlite SUITE sqlite PROPERTIES TIMEOUT 60 LABELS sqlite)

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
