/* test_secagg_plan.c - the SecAgg+ planner (fed/moeh_secagg_plan.h): hypergeometric tails
 * against direct sums, the bounds a plan reports, that its k is the smallest that meets them, and
 * the fall-back to classic SecAgg for small n. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_secagg_plan.h"

#include <errno.h>
#include <math.h>

/* C(a, b) as a double by the product formula (exact for these small numbers). */
static double choose(unsigned a, unsigned b)
{
    if (b > a) return 0.0;
    double c = 1.0;
    for (unsigned i = 1; i <= b; i++)
        c = c * (a - b + i) / i;
    return c;
}

static void test_tail_matches_direct_sum(void **state)
{
    (void)state;
    const unsigned pop = 20, marked = 5, draws = 6;
    for (unsigned x = 0; x <= draws + 1; x++) {
        double p = 0.0;
        for (unsigned i = x; i <= draws; i++)
            p += choose(marked, i) * choose(pop - marked, draws - i) / choose(pop, draws);
        double got = moeh_hypergeom_log2_tail(pop, marked, draws, x);
        if (p == 0.0)
            assert_true(got == -INFINITY);
        else
            assert_true(fabs(exp2(got) - p) < 1e-12 * (1.0 + p));
    }
    /* a hand case: 2 marked of 4, draw 2, both marked: 1/6 */
    assert_true(fabs(exp2(moeh_hypergeom_log2_tail(4, 2, 2, 2)) - 1.0 / 6.0) < 1e-12);
    /* more unmarked draws than unmarked items: at least draws - (pop - marked) marked */
    assert_true(fabs(moeh_hypergeom_log2_tail(10, 8, 5, 3)) < 1e-12);
}

static void test_plan_meets_bounds_and_is_smallest(void **state)
{
    (void)state;
    const moeh_secagg_plan_cfg_t cfg = MOEH_SECAGG_PLAN_DEFAULT;
    const unsigned ns[] = {40, 100, 400, 1000};
    uint32_t prev_frac_k = 1000;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        moeh_secagg_plan_t p;
        assert_int_equal(moeh_secagg_plan(ns[i], &cfg, &p), 0);
        assert_true(p.k > 0 && p.k % 2 == 0 && p.k < ns[i] - 1);
        assert_true(p.t >= p.k / 2 + 1 && p.t <= p.k);
        assert_true(p.log2_fail <= -cfg.eta && p.log2_leak <= -cfg.sigma);
        /* the reported bounds are the ones moeh_secagg_plan_bounds gives */
        moeh_secagg_plan_t q;
        moeh_secagg_plan_bounds(ns[i], p.k, p.t, &cfg, &q);
        assert_true(q.log2_fail == p.log2_fail && q.log2_leak == p.log2_leak);
        /* no smaller k works with any threshold */
        for (uint32_t k = 2; k < p.k; k += 2)
            for (uint32_t t = k / 2 + 1; t <= k; t++) {
                moeh_secagg_plan_bounds(ns[i], k, t, &cfg, &q);
                assert_false(q.log2_fail <= -cfg.eta && q.log2_leak <= -cfg.sigma);
            }
        /* the neighbourhood is a shrinking fraction of the clients */
        uint32_t frac = (uint32_t)(1000.0 * p.k / ns[i]);
        assert_true(frac < prev_frac_k);
        prev_frac_k = frac;
    }
}

static void test_small_federations_use_everyone(void **state)
{
    (void)state;
    const moeh_secagg_plan_cfg_t cfg = MOEH_SECAGG_PLAN_DEFAULT;
    for (uint32_t n = 2; n <= 20; n++) {
        moeh_secagg_plan_t p;
        assert_int_equal(moeh_secagg_plan(n, &cfg, &p), 0);
        assert_int_equal(p.k, 0);
        assert_int_equal(p.t, n / 2 + 1);
    }
    /* stricter privacy needs more neighbours; more dropouts too */
    moeh_secagg_plan_t a, b, c;
    moeh_secagg_plan_cfg_t strict = cfg, drops = cfg;
    strict.sigma = 80.0;
    drops.dropout = 0.3;
    assert_int_equal(moeh_secagg_plan(1000, &cfg, &a), 0);
    assert_int_equal(moeh_secagg_plan(1000, &strict, &b), 0);
    assert_int_equal(moeh_secagg_plan(1000, &drops, &c), 0);
    assert_true(b.k > a.k);
    assert_true(c.k > a.k);
}

static void test_bad_parameters(void **state)
{
    (void)state;
    moeh_secagg_plan_t p;
    moeh_secagg_plan_cfg_t cfg = MOEH_SECAGG_PLAN_DEFAULT;
    assert_int_equal(moeh_secagg_plan(1, &cfg, &p), -EINVAL);
    cfg.dropout = 1.0;
    assert_int_equal(moeh_secagg_plan(10, &cfg, &p), -EINVAL);
    cfg.dropout = NAN;
    assert_int_equal(moeh_secagg_plan(10, &cfg, &p), -EINVAL);
    cfg.dropout = 0.1;
    cfg.sigma = 0.0;
    assert_int_equal(moeh_secagg_plan(10, &cfg, &p), -EINVAL);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_tail_matches_direct_sum),
               cmocka_unit_test(test_plan_meets_bounds_and_is_smallest),
               cmocka_unit_test(test_small_federations_use_everyone),
               cmocka_unit_test(test_bad_parameters))
