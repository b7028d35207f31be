/* test_rdp.c - the Rényi-DP accountant against published values. Reference values are those
 * asserted by the tests of Google's dp_accounting library (python/dp_accounting/rdp/
 * rdp_privacy_accountant_test.py, google/differential-privacy): facts, not code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_rdp.h"

#include <math.h>

static void test_gaussian_closed_form(void **state)
{
    /* q = 1: alpha / (2 sigma^2) per step (Mironov 2017), additive over steps */
    assert_true(fabs(moeh_rdp_gaussian(1, 2.71828, 3.14159, 1) -
                     3.14159 / (2 * 2.71828 * 2.71828)) < 1e-12);
    assert_true(fabs(moeh_rdp_gaussian(1, 2.0, 4, 10) - 10 * 4 / 8.0) < 1e-12);
    /* integer orders with q < 1 reduce to the same at q -> 1 */
    assert_true(fabs(moeh_rdp_gaussian(1 - 1e-12, 2.0, 4, 1) - 0.5) < 1e-6);
    assert_true(moeh_rdp_gaussian(0, 1.0, 8, 100) == 0.0);
    assert_true(isinf(moeh_rdp_gaussian(0.5, 0.0, 8, 1)));
    assert_true(isnan(moeh_rdp_gaussian(0.5, 1.0, 2.5, 1))); /* fractional order, q < 1 */
    assert_true(isnan(moeh_rdp_gaussian(1.5, 1.0, 2, 1)));
}

static void test_subsampled_gaussian_published(void **state)
{
    /* q = 0.01, sigma = 2.5, 50 steps; dp_accounting asserts these at rtol 1e-4 */
    const double orders[3] = {5, 50, 100},
                 want[3] = {2.18075656e-03, 2.38460375e-02, 1.67416308e02};
    for (int i = 0; i < 3; i++) {
        double r = moeh_rdp_gaussian(0.01, 2.5, orders[i], 50);
        print_message("order %g: %.8e (published %.8e)\n", orders[i], r, want[i]);
        assert_true(fabs(r - want[i]) <= 1e-4 * want[i]);
    }
}

static void test_conversion_published(void **state)
{
    /* constant RDP 1.1 at orders 2..32 (pure DP), delta 1e-5: epsilon 1.32783806176 at 32 */
    double orders[31], rdp[31], best;
    for (int i = 0; i < 31; i++)
        orders[i] = 2 + i, rdp[i] = 1.1;
    double eps = moeh_rdp_epsilon(orders, rdp, 31, 1e-5, &best);
    assert_true(fabs(eps - 1.32783806176) < 1e-9);
    assert_true(best == 32);
    /* sigma = 4.530877117 (no sampling) gives exactly (1, 1e-6)-DP over orders 1.000..99.999 */
    static double o2[99000], r2[99000];
    for (int i = 0; i < 99000; i++) {
        o2[i] = 0.001 * (1000 + i);
        r2[i] = o2[i] > 1 ? moeh_rdp_gaussian(1, 4.530877117, o2[i], 1) : NAN;
    }
    eps = moeh_rdp_epsilon(o2, r2, 99000, 1e-6, NULL);
    assert_true(fabs(eps - 1.0) < 1e-6);
    /* no privacy loss -> epsilon 0; an infinite loss -> infinity */
    double z[2] = {0, 0}, o3[2] = {2, 3}, inf[2] = {INFINITY, INFINITY};
    assert_true(moeh_rdp_epsilon(o3, z, 2, 1e-5, NULL) == 0.0);
    assert_true(isinf(moeh_rdp_epsilon(o3, inf, 2, 1e-5, NULL)));
}

static void test_default_orders_accountant(void **state)
{
    /* a federation of 100 rounds at noise multiplier 1.0 with every site each round: the
     * epsilon grows with the rounds and shrinks with more noise */
    double orders[MOEH_RDP_N_ORDERS], rdp[MOEH_RDP_N_ORDERS];
    moeh_rdp_default_orders(orders);
    double prev = 0;
    for (uint64_t T = 1; T <= 100; T *= 10) {
        for (int i = 0; i < MOEH_RDP_N_ORDERS; i++)
            rdp[i] = moeh_rdp_gaussian(1, 1.0, orders[i], T);
        double eps = moeh_rdp_epsilon(orders, rdp, MOEH_RDP_N_ORDERS, 1e-5, NULL);
        assert_true(eps > prev);
        prev = eps;
    }
    for (int i = 0; i < MOEH_RDP_N_ORDERS; i++)
        rdp[i] = moeh_rdp_gaussian(1, 4.0, orders[i], 100);
    assert_true(moeh_rdp_epsilon(orders, rdp, MOEH_RDP_N_ORDERS, 1e-5, NULL) < prev);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_gaussian_closed_form),
               cmocka_unit_test(test_subsampled_gaussian_published),
               cmocka_unit_test(test_conversion_published),
               cmocka_unit_test(test_default_orders_accountant))
