# Options and usage errors (common/opts.c): the parser in-process, then every binary as a
# process (exit 2, hints, --help), and the coordinator's safe defaults.
moeh_add_test(test_opts SOURCES test_opts.c LIBS moeh_common)
moeh_add_test(test_cli SOURCES test_cli.c LIBS moeh_common)
moeh_add_test(test_coordinator_defaults SOURCES test_coordinator_defaults.c LIBS moeh_common)
foreach(cli_test test_cli test_coordinator_defaults)
    foreach(bin moeh moeh-coordinator moeh-site-agent moeh-keygen)
        if(TARGET ${bin})
            add_dependencies(${cli_test} ${bin})
        endif()
    endforeach()
endforeach()
