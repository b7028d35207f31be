# Network tests: moeh-faultproxy (a userspace TCP fault proxy: delay, jitter, rate cap, resets,
# black holes; the kernel here has no netem) and federations whose coordinator and sites run in
# network namespaces of their own (tests/netns/netns_fed.py; needs root). Label: netns.
# docs/network-testing.md says what each test shows and how long it takes.
add_executable(moeh-faultproxy netns/faultproxy.c)
set_target_properties(moeh-faultproxy PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)

moeh_add_test(test_faultproxy SOURCES netns/test_faultproxy.c LIBS TIMEOUT 120 LABELS netns)
add_dependencies(test_faultproxy moeh-faultproxy)
