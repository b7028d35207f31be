# Unit tests of proto/secagg.c: secure aggregation masks, Shamir shares, unmasking.
moeh_add_test(test_secagg SOURCES test_secagg.c LIBS moeh_proto)
