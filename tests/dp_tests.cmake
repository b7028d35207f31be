# Tests of DP-FedAvg (fed/dp.c): clipping, distributed noise, fixed-point headroom, accounting.
moeh_add_test(test_dp SOURCES test_dp.c LIBS moeh_fed)
