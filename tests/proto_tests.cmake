# Unit tests of proto/ (codec, keys, registry, ZAP) and of the coordinator's FedAvg.
moeh_add_test(test_wire SOURCES test_wire.c LIBS moeh_proto)
moeh_add_test(test_keys SOURCES test_keys.c LIBS moeh_proto)
moeh_add_test(test_aggregate SOURCES test_aggregate.c LIBS moeh_coordinator)
moeh_add_test(test_corpus SOURCES test_corpus.c LIBS moeh_proto)
target_include_directories(test_corpus PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
