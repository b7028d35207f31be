# Operations (issue 12: exit codes, logs, status, key diagnosis): docs/operations.md.
moeh_add_test(test_log SOURCES test_log.c LIBS moeh_common)
add_dependencies(test_log moeh-coordinator moeh-site-agent)
