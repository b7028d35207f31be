# Issue 13, findings 4-6 (poisoned statistics, update, evaluation) against a real coordinator
# process with the three real agents and a hostile fake agent (test_poison.c, on fed_util.c).
moeh_add_test(test_poison SOURCES test_poison.c fed_util.c
              LIBS moeh_sim moeh_agent moeh_coordinator moeh_cohort moeh_model PkgConfig::CJSON
              TIMEOUT 400 LABELS multiprocess)
add_dependencies(test_poison moeh-coordinator moeh-site-agent)
