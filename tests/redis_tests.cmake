# Redis connector tests against real redis-server instances that CTest
# starts and stops (scripts/redis-server.sh), one CTest test per case.
#   redis/server_start, redis/server_stop      the shared server, fixture redis_server,
#                                              on CPOOL_TEST_REDIS_PORT
#   redis_drill/server_start, .../server_stop  the fault drills' own server, fixture
#                                              redis_drill_server, on the port after it
# The cases find the servers through CPOOL_TEST_REDIS_* variables and FAIL
# (never skip) when they are missing or the server does not answer. The
# drills kill and stop their server, so they hold the resource lock
# redis_drill and never run at the same time as each other.

set(cpool_redis_password "cpool-test-pw")
set(cpool_redis_script ${PROJECT_SOURCE_DIR}/scripts/redis-server.sh)
set(cpool_redis_dir ${PROJECT_BINARY_DIR}/redis-server)
set(cpool_redis_drill_dir ${PROJECT_BINARY_DIR}/redis-drill-server)
math(EXPR cpool_redis_drill_port "${CPOOL_TEST_REDIS_PORT} + 1")

set(cpool_redis_env
  "CPOOL_TEST_REDIS_URI=redis://:${cpool_redis_password}@127.0.0.1:${CPOOL_TEST_REDIS_PORT}/0"
  # The ACL user's password is "<password>@acl"; '@' is %-escaped in a URI.
  "CPOOL_TEST_REDIS_ACL_URI=redis://cpool_acl:${cpool_redis_password}%40acl@127.0.0.1:${CPOOL_TEST_REDIS_PORT}/0"
  "CPOOL_TEST_REDIS_PASSWORD=${cpool_redis_password}"
  "CPOOL_TEST_REDIS_PORT=${CPOOL_TEST_REDIS_PORT}"
  "CPOOL_TEST_REDIS_SOCKET=${cpool_redis_dir}/redis.sock"
  "CPOOL_TEST_REDIS_DIR=${cpool_redis_dir}"
  "CPOOL_TEST_REDIS_SCRIPT=${cpool_redis_script}"
  "CPOOL_TEST_REDIS_DRILL_PORT=${cpool_redis_drill_port}"
  "CPOOL_TEST_REDIS_DRILL_DIR=${cpool_redis_drill_dir}")

# cpool_redis_server(<prefix> <fixture> <dir> <port>)
function(cpool_redis_server prefix fixture dir port)
  add_test(NAME ${prefix}/server_start
    COMMAND ${cpool_redis_script} start ${dir} ${port} ${cpool_redis_password})
  set_tests_properties(${prefix}/server_start PROPERTIES
    FIXTURES_SETUP ${fixture} LABELS redis TIMEOUT 30)
  add_test(NAME ${prefix}/server_stop COMMAND ${cpool_redis_script} stop ${dir})
  set_tests_properties(${prefix}/server_stop PROPERTIES
    FIXTURES_CLEANUP ${fixture} LABELS redis TIMEOUT 30)
endfunction()

cpool_redis_server(redis redis_server ${cpool_redis_dir} ${CPOOL_TEST_REDIS_PORT})
cpool_redis_server(redis_drill redis_drill_server ${cpool_redis_drill_dir}
                   ${cpool_redis_drill_port})

# cpool_redis_suite(<suite> FIXTURE <fixture> TIMEOUT <s> [LOCK <name>])
# builds tests/redis/test_<suite>.c and registers <suite>/<case> for each of
# its cases (tests/cases.cmake).
function(cpool_redis_suite suite)
  cmake_parse_arguments(S "" "FIXTURE;TIMEOUT;LOCK" "" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/redis/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  set(lock "")
  if(S_LOCK)
    set(lock RESOURCE_LOCK ${S_LOCK})
  endif()
  cpool_test_cases(${exe} SUITE ${suite} PROPERTIES
    FIXTURES_REQUIRED ${S_FIXTURE} ENVIRONMENT "${cpool_redis_env}"
    LABELS redis TIMEOUT ${S_TIMEOUT} ${lock})
endfunction()

cpool_redis_suite(redis FIXTURE redis_server TIMEOUT 60)

cpool_redis_suite(redis_drill FIXTURE redis_drill_server TIMEOUT 120 LOCK redis_drill)

# The Redis set the multi-endpoint drills stand on: a primary, a replica and
# three Sentinels (scripts/redis-server.sh replica-start, sentinel-start),
# started by the check on its own ports; the primary killed, the Sentinels
# must promote the replica.
add_test(NAME redis/sentinel_failover
  COMMAND ${PROJECT_SOURCE_DIR}/tests/redis/sentinel_check.sh
          ${PROJECT_SOURCE_DIR}/scripts/redis-server.sh ${PROJECT_BINARY_DIR}/redis-sentinel
          ${CPOOL_TEST_REDIS_SENTINEL_PORT})
set_tests_properties(redis/sentinel_failover PROPERTIES LABELS redis TIMEOUT 120
  RESOURCE_LOCK redis_sentinel)

# The cluster drill on the same ports (tests/redis/test_redis_cluster.c):
# a redis-sentinel:// target, the primary killed under load; the cleanup
# stops whatever the drill left running.
set(cpool_redis_cluster_dir ${PROJECT_BINARY_DIR}/redis-cdrill)
add_executable(test_redis_cluster ${CMAKE_CURRENT_SOURCE_DIR}/redis/test_redis_cluster.c)
target_include_directories(test_redis_cluster PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_redis_cluster PRIVATE cpool_static Threads::Threads)
cpool_test_cases(test_redis_cluster SUITE redis_cluster PROPERTIES
  ENVIRONMENT "CPOOL_TEST_REDIS_SCRIPT=${cpool_redis_script};CPOOL_CLUSTER_REDIS_DIR=${cpool_redis_cluster_dir};CPOOL_CLUSTER_REDIS_PORT=${CPOOL_TEST_REDIS_SENTINEL_PORT}"
  LABELS redis TIMEOUT 120 RESOURCE_LOCK redis_sentinel FIXTURES_REQUIRED redis_cluster_set)
add_test(NAME redis_cluster/servers_stop
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/redis/cluster_stop.sh ${cpool_redis_script}
          ${cpool_redis_cluster_dir})
set_tests_properties(redis_cluster/servers_stop PROPERTIES LABELS redis TIMEOUT 60
  RESOURCE_LOCK redis_sentinel FIXTURES_CLEANUP redis_cluster_set)

# The example of docs/redis.md, run against the shared server.
add_executable(redis_example ${PROJECT_SOURCE_DIR}/examples/redis_example.c)
target_link_libraries(redis_example PRIVATE cpool PkgConfig::CPOOL_DEP_REDIS)
add_test(NAME redis/example COMMAND redis_example
  "redis://:${cpool_redis_password}@127.0.0.1:${CPOOL_TEST_REDIS_PORT}/0?maxPoolSize=4")
set_tests_properties(redis/example PROPERTIES
  FIXTURES_REQUIRED redis_server LABELS redis TIMEOUT 30
  PASS_REGULAR_EXPRESSION "^hello from cpool")
