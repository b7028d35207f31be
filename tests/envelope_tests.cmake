# Unit tests of proto/moeh_wire.h's envelope builders and the send helpers built on them.
moeh_add_test(test_envelope SOURCES test_envelope.c LIBS moeh_proto)
