# Unit tests of fed/secagg.c: secure aggregation masks, Shamir shares, unmasking (fed/ alone).
moeh_add_test(test_secagg SOURCES test_secagg.c LIBS moeh_fed)
# Unit tests of fed/secsum.c: the fixed-point vectors each phase sums, through a real session.
# Linked against fed/ alone: secure sums know nothing of the wire.
moeh_add_test(test_secsum SOURCES test_secsum.c LIBS moeh_fed)
# The SecAgg+ planner (fed/moeh_secagg_plan.h): k and t from dropout/collusion fractions.
moeh_add_test(test_secagg_plan SOURCES test_secagg_plan.c LIBS moeh_fed)
# Share encryption and the sites' share keys kept across sessions (fed/secagg_keys.c).
moeh_add_test(test_secagg_keys SOURCES test_secagg_keys.c LIBS moeh_fed)
