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
# docs/deployment.md's command blocks are the ones scripts/test-install.sh runs (no root needed
# for this check; CI runs the whole script)
add_test(NAME test_deployment_doc
         COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/test-install.sh --check-doc)
