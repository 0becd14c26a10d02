# smoke.cmake -- run by `cmake -DBENCH=<path to cpool_bench> -P smoke.cmake`.
# Runs one 50 ms configuration with each kind of hold (and with the cpool
# pool's turn_wait_us and early_wake set, and with think time) and checks the exit
# code and that the output has a result line for each pool (apr may say
# "skipped" when the build has no apr-util) and the ratio table.
function(smoke)
  execute_process(
    COMMAND ${BENCH} --threads 3 --conns 2 --hold-us 5 --duration-ms 50 ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
  message("${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cpool_bench ${ARGN} exited with ${rc}")
  endif()
  foreach(re "  cpool +[0-9]" "  cpool-fifo +[0-9]" "  naive +[0-9]"
             "  apr +([0-9]|skipped)" "# ratios")
    if(NOT out MATCHES "${re}")
      message(FATAL_ERROR "cpool_bench ${ARGN}: no line matching '${re}'")
    endif()
  endforeach()
  set(last_out "${out}" PARENT_SCOPE)
endfunction()
smoke()
smoke(--hold sleep)
# The pool over a connector without reset(), which only --pools names.
execute_process(
  COMMAND ${BENCH} --threads 2 --conns 2 --hold-us 0 --duration-ms 50 --pools cpool-noreset,naive
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
message("${out}${err}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "  cpool-noreset +[0-9]" OR NOT out MATCHES
   "cpool-noreset \\(the same as cpool, connector without reset\\(\\)\\)")
  message(FATAL_ERROR "cpool_bench --pools cpool-noreset: exit ${rc}, or no row or header for it")
endif()
smoke(--turn-wait-us 500)
if(NOT last_out MATCHES "handoff turns, turn_wait_us=500\\)")
  message(FATAL_ERROR "cpool_bench --turn-wait-us 500: the header does not name it")
endif()
smoke(--early-wake off)
if(NOT last_out MATCHES "handoff turns, early_wake=off\\)")
  message(FATAL_ERROR "cpool_bench --early-wake off: the header does not name it")
endif()
# Think time: 3 threads that sleep 20 ms after each check-in ask for at most
# 150 leases a second, so no pool can report much more (without the sleep
# they make some 100,000).
smoke(--think-us 20000 --duration-ms 200)
if(NOT last_out MATCHES "# think: each thread sleeps 20000 us")
  message(FATAL_ERROR "cpool_bench --think-us 20000: the header does not name it")
endif()
foreach(pool "cpool" "cpool-fifo" "naive")
  if(NOT last_out MATCHES "  ${pool} +([0-9]+)")
    message(FATAL_ERROR "cpool_bench --think-us: no ops/s for ${pool}")
  endif()
  if(CMAKE_MATCH_1 GREATER 200 OR CMAKE_MATCH_1 LESS 1)
    message(FATAL_ERROR "cpool_bench --think-us 20000: ${pool} made ${CMAKE_MATCH_1} ops/s, "
                        "not at most the 150 the threads ask for")
  endif()
endforeach()
