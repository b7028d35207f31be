# Issue 13, findings 1, 2 and 8 (stall by not reading, file descriptors, amplification).
# test_hostile_core: the core's rate limits, per-phase model, full queue and checkpoint retry,
# in-process on the fake clock of coord_util.c.
moeh_add_test(test_hostile_core SOURCES test_hostile_core.c coord_util.c
              LIBS moeh_coordinator PkgConfig::CJSON LABELS hostile)
target_include_directories(test_hostile_core PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
# test_hostile: the same attacks from a hostile client speaking the protocol against a real
# coordinator process with the three real agents (fed_util.c).
moeh_add_test(test_hostile SOURCES test_hostile.c fed_util.c
              LIBS moeh_sim moeh_agent moeh_coordinator moeh_cohort moeh_model PkgConfig::CJSON
              TIMEOUT 400 LABELS hostile multiprocess)
add_dependencies(test_hostile moeh-coordinator moeh-site-agent)
# test_hostile_res: findings 2 and 3 (descriptors, memory) against a real coordinator process:
# idle TCP and authenticated connections at nofile 256, one 1 GiB multipart message; the
# connection guard (coordinator/moeh_connguard.h) bounds both.
moeh_add_test(test_hostile_res SOURCES test_hostile_res.c fed_util.c
              LIBS moeh_sim moeh_agent moeh_coordinator moeh_cohort moeh_model PkgConfig::CJSON
              TIMEOUT 400 LABELS hostile multiprocess)
add_dependencies(test_hostile_res moeh-coordinator moeh-site-agent)
