# Issue 11 item 4 (the sites get the result): the final model at every site, local metrics,
# agents that exit 0 only with the model. Real binaries, as the other fed tests (fed_util.c).
moeh_add_test(test_fed_final SOURCES test_fed_final.c fed_util.c
              LIBS moeh_sim moeh_agent moeh_coordinator moeh_cohort moeh_model PkgConfig::CJSON
              TIMEOUT 300 LABELS multiprocess)
add_dependencies(test_fed_final moeh-coordinator moeh-site-agent moeh)
moeh_add_test(test_wire_final SOURCES test_wire_final.c LIBS moeh_proto moeh_common)
