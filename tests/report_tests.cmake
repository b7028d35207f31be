# The HTML report (scripts/report.py, docs/report.md): structure, escaping and refusals on a run
# directory the test writes, then headless Chromium (no console message, screenshot not blank);
# and the report of a real `moeh run` (test_report_real). Chromium missing is a failure.
# Debian's python3-matplotlib is installed for /usr/bin/python3 (not for a python3 that may come
# first on PATH, e.g. pyenv's), so that interpreter is preferred.
find_program(MOEH_REPORT_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT MOEH_REPORT_PYTHON3)
    find_program(MOEH_REPORT_PYTHON3 python3 REQUIRED)
endif()
add_test(NAME test_report
         COMMAND ${MOEH_REPORT_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_report.py)
set_tests_properties(test_report PROPERTIES TIMEOUT 300
    ENVIRONMENT "MOEH_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
add_test(NAME test_report_real
         COMMAND ${MOEH_REPORT_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_report.py --real)
set_tests_properties(test_report_real PROPERTIES TIMEOUT 600 LABELS multiprocess
    ENVIRONMENT "OPENBLAS_NUM_THREADS=1;MOEH_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
