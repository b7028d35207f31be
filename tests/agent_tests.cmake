# Unit tests of site-agent/ in-process (the multi-process runs are in test_federation and test_fed_*).
moeh_add_test(test_agent SOURCES test_agent.c LIBS moeh_agent)
