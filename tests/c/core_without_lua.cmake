# core_without_lua.cmake -- checks that no file in runtime/core can include lua.h
#
# Run by ctest as c_core_without_lua (cmake -P, after the build). For every
# runtime/core/*.c it takes the file's real compile command from
# compile_commands.json, so whatever the build gives core (include
# directories, linked targets' usage requirements, options) is what is
# tested, and compiles it twice with -fsyntax-only: as is, which must
# succeed, and with lua.h included first (-include lua.h, as if the file
# began with #include "lua.h"), which must fail because lua.h is not found.
#
# Inputs: -DCOMMANDS=<build>/compile_commands.json -DCORE_DIR=<src>/runtime/core
cmake_minimum_required(VERSION 3.19) # string(JSON)

if(NOT EXISTS "${COMMANDS}")
  message(FATAL_ERROR "${COMMANDS} is missing: CMAKE_EXPORT_COMPILE_COMMANDS "
                      "needs a Makefile or Ninja generator")
endif()
file(READ "${COMMANDS}" json)
file(GLOB core_sources "${CORE_DIR}/*.c")
list(LENGTH core_sources want)
if(want EQUAL 0)
  message(FATAL_ERROR "no sources in ${CORE_DIR}")
endif()

string(JSON n LENGTH "${json}")
math(EXPR last "${n} - 1")
set(checked 0)
foreach(i RANGE ${last})
  string(JSON file GET "${json}" ${i} file)
  file(REAL_PATH "${file}" file)
  if(NOT file IN_LIST core_sources)
    continue()
  endif()
  string(JSON dir GET "${json}" ${i} directory)
  string(JSON command GET "${json}" ${i} command)

  execute_process(COMMAND sh -c "${command} -fsyntax-only"
                  WORKING_DIRECTORY "${dir}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${file} does not compile as it is "
                        "(so the check below proves nothing):\n${out}")
  endif()

  execute_process(COMMAND sh -c "${command} -fsyntax-only -include lua.h"
                  WORKING_DIRECTORY "${dir}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${file} builds with lua.h included: "
                        "runtime/core's include path reaches LuaJIT")
  endif()
  if(NOT out MATCHES "lua\\.h'?: No such file|'lua\\.h' file not found")
    message(FATAL_ERROR "${file} with lua.h included failed for another "
                        "reason than a missing lua.h:\n${out}")
  endif()
  math(EXPR checked "${checked} + 1")
endforeach()

if(NOT checked EQUAL want)
  message(FATAL_ERROR "checked ${checked} of the ${want} files in ${CORE_DIR}")
endif()
message(STATUS "${checked} core files: none can include lua.h")
