# smoke.cmake -- run by `cmake -DBENCH=<path to cpool_bench> -P smoke.cmake`.
# Runs one 50 ms configuration and checks the exit code and that the output
# has a result line for each of the three pools (apr may say "skipped" when
# the build has no apr-util) and the ratio table.
execute_process(
  COMMAND ${BENCH} --threads 3 --conns 2 --hold-us 5 --duration-ms 50
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cpool_bench exited with ${rc}")
endif()
foreach(re "  cpool +[0-9]" "  naive +[0-9]" "  apr +([0-9]|skipped)" "# ratios")
  if(NOT out MATCHES "${re}")
    message(FATAL_ERROR "cpool_bench output lacks a line matching '${re}'")
  endif()
endforeach()
