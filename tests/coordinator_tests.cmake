# The coordinator's state machine driven in-process (fake sites, fake clock, fake transport).
moeh_add_test(test_coordinator SOURCES test_coordinator.c LIBS moeh_coordinator PkgConfig::CJSON)
target_include_directories(test_coordinator PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
