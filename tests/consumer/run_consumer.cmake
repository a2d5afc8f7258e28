# Driven by CTest: builds tests/consumer against maskpos and runs it.
# MODE=installed: configure maskpos alone, install it into a temporary prefix, then find_package.
# MODE=subdirectory: the consumer pulls the maskpos source tree in with add_subdirectory.
file(REMOVE_RECURSE "${MASKPOS_WORK_DIR}")
file(MAKE_DIRECTORY "${MASKPOS_WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGN}\n${output}")
  endif()
  message(STATUS "${output}")
endfunction()
set(consumer_args)
if(MODE STREQUAL "installed")
  set(prefix "${MASKPOS_WORK_DIR}/prefix")
  run(${CMAKE_COMMAND} -S "${MASKPOS_SOURCE_DIR}" -B "${MASKPOS_WORK_DIR}/maskpos-build" -G "${CMAKE_GENERATOR}"
      -DMASKPOS_BUILD_TESTS=OFF -DMASKPOS_BUILD_EXAMPLES=OFF -DMASKPOS_BUILD_BENCH=OFF
      -DCMAKE_INSTALL_PREFIX=${prefix})
  run(${CMAKE_COMMAND} --install "${MASKPOS_WORK_DIR}/maskpos-build")
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${prefix} -DMODE=installed)
else()
  list(APPEND consumer_args -DMASKPOS_SOURCE_DIR=${MASKPOS_SOURCE_DIR} -DMODE=subdirectory)
endif()
run(${CMAKE_COMMAND} -S "${CMAKE_CURRENT_LIST_DIR}" -B "${MASKPOS_WORK_DIR}/consumer-build" -G "${CMAKE_GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release ${consumer_args})
run(${CMAKE_COMMAND} --build "${MASKPOS_WORK_DIR}/consumer-build")
run("${MASKPOS_WORK_DIR}/consumer-build/consumer")
if(EXISTS "${MASKPOS_WORK_DIR}/consumer-build/consumer_figure")
  execute_process(COMMAND "${MASKPOS_WORK_DIR}/consumer-build/consumer_figure"
                  WORKING_DIRECTORY "${MASKPOS_WORK_DIR}/consumer-build" RESULT_VARIABLE result)
  if(NOT result EQUAL 0 OR NOT EXISTS "${MASKPOS_WORK_DIR}/consumer-build/consumer_figure.svg")
    message(FATAL_ERROR "consumer_figure failed (${result})")
  endif()
endif()
