# Unit tests of proto/ helpers: the envelope builders (and the send helpers built on them), and
# the translation of negotiated limits into fed/'s secure-sum dimensions.
moeh_add_test(test_envelope SOURCES test_envelope.c LIBS moeh_proto)
moeh_add_test(test_wire_secsum SOURCES test_wire_secsum.c LIBS moeh_proto)
