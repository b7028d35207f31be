# Unit tests of proto/ (codec, keys, registry, ZAP) and of the coordinator's FedAvg.
# The wire codec, one suite per subject (shared makers and the reject-table runner: wire_util.h).
foreach(t codec frames fields secagg transport)
    moeh_add_test(test_wire_${t} SOURCES test_wire_${t}.c LIBS moeh_proto)
endforeach()
# proto/stream.c: a granted upload in chunks under the receiver's credit (protocol 7).
moeh_add_test(test_stream SOURCES test_stream.c LIBS moeh_proto)
# The model spec on the wire, and the agent refusing a spec the model library refuses.
moeh_add_test(test_wire_spec SOURCES test_wire_spec.c LIBS moeh_agent)
moeh_add_test(test_keys SOURCES test_keys.c LIBS moeh_proto)
moeh_add_test(test_aggregate SOURCES test_aggregate.c LIBS moeh_coordinator)
moeh_add_test(test_corpus SOURCES test_corpus.c LIBS moeh_proto)
target_include_directories(test_corpus PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
