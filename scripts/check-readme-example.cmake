# check-readme-example.cmake -- fails unless the first ```c code block of
# README.md is byte-identical to examples/readme_example.c.
#
# cmake -DREADME=README.md -DEXAMPLE=examples/readme_example.c
#       [-DOUT=extracted_block.c] -P scripts/check-readme-example.cmake
foreach(var README EXAMPLE)
  if(NOT DEFINED ${var} OR NOT EXISTS "${${var}}")
    message(FATAL_ERROR "check-readme-example: ${var} not given or missing: '${${var}}'")
  endif()
endforeach()

file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)

set(open "```c\n")
string(FIND "${readme}" "${open}" start)
if(start EQUAL -1)
  message(FATAL_ERROR "check-readme-example: ${README} has no ```c code block")
endif()
string(LENGTH "${open}" open_len)
math(EXPR start "${start} + ${open_len}")
string(SUBSTRING "${readme}" ${start} -1 rest)
# The block ends at a line that is exactly ```.
string(FIND "${rest}" "\n```" end)
if(end EQUAL -1)
  message(FATAL_ERROR "check-readme-example: the ```c block in ${README} is not closed")
endif()
math(EXPR end "${end} + 1")   # keep the last line's newline
string(SUBSTRING "${rest}" 0 ${end} block)

if(block STREQUAL example)
  message(STATUS "README.md code block matches ${EXAMPLE}")
  return()
endif()

if(DEFINED OUT)
  file(WRITE "${OUT}" "${block}")
  find_program(DIFF diff)
  if(DIFF)
    execute_process(COMMAND ${DIFF} -u "${EXAMPLE}" "${OUT}")
  endif()
endif()
message(FATAL_ERROR "check-readme-example: the first ```c block of ${README} differs "
                    "from ${EXAMPLE}; copy the file into the README verbatim")
