# Tests of the Python scripts behind docs/results.md (standard library only).
find_program(MOEH_PYTHON3 python3 REQUIRED)
add_test(NAME test_results_table
         COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_results_table.py)
set_tests_properties(test_results_table PROPERTIES TIMEOUT 60)
