# One CTest entry per GoogleTest suite instead of one per test.
#
# Each test process pays LibTorch's start-up (about half a second of CPU here) before its first
# test; with one entry per test that was most of the time of the 700 fast unit tests, and a GPU
# test that skips on a CPU machine paid it for nothing. An entry here runs one suite (or one
# shard of at most MAX_TESTS of its tests) in one process. A failing entry's output names its
# failing tests, and `ctest -R` still selects by suite name; a single test runs as
# `build/tests/aim_tests --gtest_filter=Suite.Test`.
#
#   aim_gtest_suites(TARGET [PREFIX p] [FILTER gtest-filter] [MAX_TESTS n]
#                    [TIMEOUT s] [ENVIRONMENT "A=1;B=2"])
#
# Discovery runs after each link (`TARGET --gtest_list_tests`) and writes the entries to a file
# that ctest includes. An entry whose selected tests all skip (GTEST_SKIP: GPU tests without a
# GPU) is reported as skipped: tests/test_main.cpp prints a line for that case.
#
# The same file is the discovery script (cmake -P) the post-build step runs.

if(CMAKE_SCRIPT_MODE_FILE)
  # Script mode: EXE, OUT, PREFIX, FILTER, MAX_TESTS, WORKDIR.
  set(_args --gtest_list_tests)
  if(FILTER)
    list(APPEND _args "--gtest_filter=${FILTER}")
  endif()
  execute_process(COMMAND "${EXE}" ${_args}
                  WORKING_DIRECTORY "${WORKDIR}"
                  OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc TIMEOUT 120)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "test discovery: '${EXE} ${_args}' exited with ${_rc}:\n${_out}\n${_err}")
  endif()
  string(REPLACE ";" "\\;" _out "${_out}")
  string(REPLACE "\n" ";" _lines "${_out}")
  set(_suites "")
  set(_suite "")
  set(_id -1)  # the suite's index in _suites; its tests are _tests_<index>
  foreach(_line IN LISTS _lines)
    if(_line MATCHES "^([^ #][^ ]*)\\.( *#.*)?$")
      # gtest lists each suite once, its tests below it.
      set(_suite "${CMAKE_MATCH_1}")
      math(EXPR _id "${_id} + 1")
      list(APPEND _suites "${_suite}")
      set(_tests_${_id} "")
    elseif(_line MATCHES "^  ([^ ]+)( *#.*)?$")
      set(_test "${CMAKE_MATCH_1}")
      if(_suite STREQUAL "")
        message(FATAL_ERROR "test discovery: a test before any suite in '${EXE} --gtest_list_tests': ${_line}")
      endif()
      # ':' separates filter patterns and the first '-' starts the negative ones.
      if(_test MATCHES "[:-]" OR _suite MATCHES "[:-]")
        message(FATAL_ERROR "test discovery: ${_suite}.${_test} contains ':' or '-', which "
                            "--gtest_filter cannot name; rename it")
      endif()
      if(NOT _test MATCHES "^DISABLED_" AND NOT _suite MATCHES "^DISABLED_")
        list(APPEND _tests_${_id} "${_test}")
      endif()
    endif()
  endforeach()

  set(_script "# Generated from '${EXE} --gtest_list_tests' by tests/gtest_suites.cmake.\nset(aim_suite_entries \"\")\n")
  set(_entries 0)
  set(_total 0)
  set(_id -1)
  foreach(_suite IN LISTS _suites)
    math(EXPR _id "${_id} + 1")
    list(LENGTH _tests_${_id} _n)
    if(_n EQUAL 0)
      continue()
    endif()
    math(EXPR _total "${_total} + ${_n}")
    math(EXPR _shards "(${_n} + ${MAX_TESTS} - 1) / ${MAX_TESTS}")
    math(EXPR _last_shard "${_shards} - 1")
    foreach(_s RANGE ${_last_shard})
      math(EXPR _first "${_s} * ${MAX_TESTS}")
      math(EXPR _count "${_n} - ${_first}")
      if(_count GREATER MAX_TESTS)
        set(_count ${MAX_TESTS})
      endif()
      list(SUBLIST _tests_${_id} ${_first} ${_count} _shard)
      if(_shards EQUAL 1 AND NOT FILTER)
        set(_filter "${_suite}.*")
        set(_name "${PREFIX}${_suite}")
      else()
        list(TRANSFORM _shard PREPEND "${_suite}.")
        string(JOIN ":" _filter ${_shard})
        if(_shards EQUAL 1)
          set(_name "${PREFIX}${_suite}")
        else()
          math(EXPR _k "${_s} + 1")
          set(_name "${PREFIX}${_suite}.part${_k}of${_shards}")
        endif()
      endif()
      string(APPEND _script
        "add_test([==[${_name}]==] [==[${EXE}]==] [==[--gtest_filter=${_filter}]==])\n"
        "list(APPEND aim_suite_entries [==[${_name}]==])\n")
      math(EXPR _entries "${_entries} + 1")
    endforeach()
  endforeach()
  if(_total EQUAL 0)
    message(FATAL_ERROR "test discovery: '${EXE} ${_args}' listed no test")
  endif()
  file(WRITE "${OUT}" "${_script}")
  get_filename_component(_exe_name "${EXE}" NAME)
  message(STATUS "${_exe_name}: ${_total} tests in ${_entries} ctest entries (${OUT})")
  return()
endif()

set(_aim_gtest_suites_script ${CMAKE_CURRENT_LIST_FILE})

function(aim_gtest_suites target)
  cmake_parse_arguments(ARG "" "PREFIX;FILTER;MAX_TESTS;TIMEOUT;ENVIRONMENT" "" ${ARGN})
  if(NOT ARG_MAX_TESTS)
    set(ARG_MAX_TESTS 1000000)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 900)
  endif()
  string(MAKE_C_IDENTIFIER "${target}_${ARG_PREFIX}" _id)
  set(_tests_file ${CMAKE_CURRENT_BINARY_DIR}/${_id}_suites.cmake)
  set(_include_file ${CMAKE_CURRENT_BINARY_DIR}/${_id}_include.cmake)
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -D EXE=$<TARGET_FILE:${target}> -D OUT=${_tests_file}
            -D PREFIX=${ARG_PREFIX} -D "FILTER=${ARG_FILTER}" -D MAX_TESTS=${ARG_MAX_TESTS}
            -D WORKDIR=${CMAKE_SOURCE_DIR} -P ${_aim_gtest_suites_script}
    BYPRODUCTS ${_tests_file}
    VERBATIM)
  file(WRITE ${_include_file}
    "if(EXISTS [==[${_tests_file}]==])\n"
    "  include([==[${_tests_file}]==])\n"
    "  set_tests_properties(\${aim_suite_entries} PROPERTIES\n"
    "    WORKING_DIRECTORY [==[${CMAKE_SOURCE_DIR}]==] TIMEOUT ${ARG_TIMEOUT}\n"
    "    ENVIRONMENT [==[${ARG_ENVIRONMENT}]==]\n"
    "    SKIP_REGULAR_EXPRESSION [==[All [0-9]+ selected tests were skipped]==])\n"
    "else()\n"
    "  add_test([==[${target}_${ARG_PREFIX}NOT_BUILT]==] [==[${target}_${ARG_PREFIX}NOT_BUILT]==])\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_include_file})
endfunction()
