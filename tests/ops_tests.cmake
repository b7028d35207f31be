# Operations (issue 12: exit codes, logs, status, key diagnosis): docs/operations.md.
moeh_add_test(test_log SOURCES test_log.c LIBS moeh_common)
add_dependencies(test_log moeh-coordinator moeh-site-agent)
# Progress (issue 11 item 7): the meter and status line of common/progress.c, and the commands
# with stderr on a pipe and on a pseudo-terminal (tests/test_progress_cli.py).
moeh_add_test(test_progress SOURCES test_progress.c LIBS moeh_common)
if(TARGET moeh)
    find_program(MOEH_PYTHON3 python3 REQUIRED)
    add_test(NAME test_progress_cli
             COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_progress_cli.py
                     $<TARGET_FILE:moeh>)
    set_tests_properties(test_progress_cli PROPERTIES TIMEOUT 300)
endif()
