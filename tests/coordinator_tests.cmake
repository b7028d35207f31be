# The coordinator's state machine driven in-process (fake sites, fake clock, fake transport).
# Split by subject into two programs sharing the fixture coord_util.c.
foreach(coord_test test_coordinator test_coordinator_secagg test_coordinator_select)
    moeh_add_test(${coord_test} SOURCES ${coord_test}.c coord_util.c LIBS moeh_coordinator PkgConfig::CJSON)
    target_include_directories(${coord_test} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
endforeach()
# The poisoning bounds (coordinator/moeh_bounds.h) and the registry's [limits] section.
moeh_add_test(test_bounds SOURCES test_bounds.c LIBS moeh_coordinator)
# The connection guard's common bound on loopback connections with a fake clock.
moeh_add_test(test_connguard SOURCES test_connguard.c LIBS moeh_coordinator)
