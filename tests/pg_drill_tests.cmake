# Fault drills against a real PostgreSQL server (docs/drills.md): the pool
# under load while the server is killed, restarted, has its backends
# terminated or its slots exhausted, and against a listener that never
# accepts. One executable, one CTest test per drill, label `drill`.
#
# Each drill starts its own server through scripts/pg-server.sh on its own
# port (from CPOOL_TEST_PG_DRILL_PORT, see tests/CMakeLists.txt) with its own
# state directory under the build tree; a cleanup fixture stops it whatever
# the outcome.
# RESOURCE_LOCK pg_drill keeps drills from running at the same time: their
# timing bounds assume the machine is not also running another drill.

add_executable(test_pg_drill ${CMAKE_CURRENT_SOURCE_DIR}/pg/test_pg_drill.c)
target_include_directories(test_pg_drill PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_pg_drill PRIVATE cpool_static Threads::Threads)

# A drill tagged "server" gets its own server: the port
# CPOOL_TEST_PG_DRILL_PORT + N (N numbers the server drills in the file's
# order), a state directory named after it, a fixture and a cleanup test
# drill/<case>/server_stop. One tagged "long" may run for four minutes (the
# outage drill waits out 77 s of outages). A drill with neither opens its own
# listener on an ephemeral port.
set(drill_script ${PROJECT_SOURCE_DIR}/scripts/pg-server.sh)
set(drill_dir ${CMAKE_CURRENT_BINARY_DIR}/pg-drill)
cpool_test_cases(test_pg_drill SUITE drill
  PROPERTIES TIMEOUT 60 LABELS drill RESOURCE_LOCK pg_drill
  TAG long TIMEOUT 240
  TAG server FIXTURES_REQUIRED pg_drill_@CASE@
    CODE "math(EXPR cpool_drill_port \"${CPOOL_TEST_PG_DRILL_PORT} + @N@\")
set_tests_properties(drill/@CASE@ PROPERTIES ENVIRONMENT
  \"CPOOL_DRILL_PG_SCRIPT=${drill_script};CPOOL_DRILL_PG_DIR=${drill_dir}/@CASE@;CPOOL_DRILL_PG_PORT=\${cpool_drill_port}\")
add_test(drill/@CASE@/server_stop bash [==[${drill_script}]==] stop [==[${drill_dir}/@CASE@]==])
set_tests_properties(drill/@CASE@/server_stop PROPERTIES TIMEOUT 60 LABELS drill
  RESOURCE_LOCK pg_drill FIXTURES_CLEANUP pg_drill_@CASE@)")

# Multi-endpoint drills (tests/pg/test_pg_cluster.c, docs/cluster.md): each
# starts a primary and two streaming replicas of its own on
# CPOOL_TEST_PG_CLUSTER_PORT + 10 .. + 12, one drill at a time, and a
# cleanup test stops them whatever the outcome.
add_executable(test_pg_cluster ${CMAKE_CURRENT_SOURCE_DIR}/pg/test_pg_cluster.c)
target_include_directories(test_pg_cluster PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_pg_cluster PRIVATE cpool_static Threads::Threads)
math(EXPR cpool_cluster_drill_port "${CPOOL_TEST_PG_CLUSTER_PORT} + 10")
set(cluster_drill_dir ${CMAKE_CURRENT_BINARY_DIR}/pg-cdrill) # short: socket paths
cpool_test_cases(test_pg_cluster SUITE cluster_drill
  PROPERTIES TIMEOUT 180 LABELS drill RESOURCE_LOCK pg_drill
  TAG set FIXTURES_REQUIRED pg_cluster_@CASE@
    CODE "set_tests_properties(cluster_drill/@CASE@ PROPERTIES ENVIRONMENT
  \"CPOOL_CLUSTER_PG_SCRIPT=${drill_script};CPOOL_CLUSTER_PG_DIR=${cluster_drill_dir}/@N@;CPOOL_CLUSTER_PG_PORT=${cpool_cluster_drill_port}\")
add_test(cluster_drill/@CASE@/servers_stop bash [==[${PROJECT_SOURCE_DIR}/tests/pg/cluster_stop.sh]==] [==[${drill_script}]==] [==[${cluster_drill_dir}/@N@]==])
set_tests_properties(cluster_drill/@CASE@/servers_stop PROPERTIES TIMEOUT 90 LABELS drill
  RESOURCE_LOCK pg_drill FIXTURES_CLEANUP pg_cluster_@CASE@)")
