# Tests of the Python scripts behind docs/results.md (standard library only).
find_program(MOEH_PYTHON3 python3 REQUIRED)
add_test(NAME test_results_table
         COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_results_table.py)
set_tests_properties(test_results_table PROPERTIES TIMEOUT 60)

# The include graph between folders runs one way (scripts/check_layers.py, DESIGN section 2):
# the real tree, and the checker itself on made-up trees.
add_test(NAME check_layers
         COMMAND ${MOEH_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/check_layers.py
                 --root ${PROJECT_SOURCE_DIR})
set_tests_properties(check_layers PROPERTIES TIMEOUT 60)
add_test(NAME test_check_layers
         COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_check_layers.py)
set_tests_properties(test_check_layers PROPERTIES TIMEOUT 60)

# scripts/paired_bootstrap.py: the paired bootstrap CI of an AUROC difference against
# hand-computed cases (issue 15).
# With the moeh binary it also runs moeh train --predictions end to end.
if(TARGET moeh)
    add_test(NAME test_paired_bootstrap
             COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_paired_bootstrap.py
                     $<TARGET_FILE:moeh>)
else()
    add_test(NAME test_paired_bootstrap
             COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_paired_bootstrap.py)
endif()
set_tests_properties(test_paired_bootstrap PROPERTIES TIMEOUT 120)
