/* test_strategy.c - the server optimisers (FedAvg, FedAdam, FedYogi of Reddi et al. 2021)
 * and the coordinate-wise trimmed mean against hand-computed steps, and that groups no site
 * trained are left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_aggregate.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* Two groups of 2 parameters; only group 0 is trained: one site, weight 2, scale 1000,
 * deltas (0.5, -0.25) -> words (1000, -500). */
static void make_sum(moeh_fedavg_t *a)
{
    size_t off[2] = {0, 2}, len[2] = {2, 2};
    assert_int_equal(moeh_fedavg_init(a, 4, 2, off, len), 0);
    uint32_t words[6] = {1000u, (uint32_t)-500, 0, 0, 2, 0};
    moeh_fedavg_add(a, words);
}

static void test_mean_delta(void **state)
{
    moeh_fedavg_t a;
    make_sum(&a);
    float d[4];
    uint8_t up[2];
    assert_int_equal(moeh_fedavg_mean_delta(&a, 1000.0, d, up), 1);
    assert_true(d[0] == 0.5f && d[1] == -0.25f && d[2] == 0.0f && d[3] == 0.0f);
    assert_true(up[0] == 1 && up[1] == 0);
    moeh_fedavg_free(&a);
}

static void test_fedadam_and_yogi_steps(void **state)
{
    moeh_fedavg_t a;
    make_sum(&a);
    float d[4];
    uint8_t up[2];
    moeh_fedavg_mean_delta(&a, 1000.0, d, up);
    moeh_server_opt_t o = {
        .kind = MOEH_STRATEGY_FEDADAM, .lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .tau = 1e-3f};
    float th[4] = {1, 1, 1, 1}, m[4] = {0}, v[4] = {0};
    moeh_server_opt_step(&o, &a, th, m, v, d, up);
    /* m = 0.1 d, v = 0.01 d^2 -> step = 0.1 * 0.1 d / (0.1 |d| + 1e-3) */
    double s0 = 0.1 * 0.05 / (0.1 * 0.5 + 1e-3), s1 = 0.1 * -0.025 / (0.1 * 0.25 + 1e-3);
    assert_true(fabs(th[0] - (1 + s0)) < 1e-6 && fabs(th[1] - (1 + s1)) < 1e-6);
    assert_true(th[2] == 1.0f && th[3] == 1.0f && m[2] == 0.0f && v[2] == 0.0f); /* untrained */
    /* Yogi from v = 1 (> d^2 = 0.25): v = 1 - 0.01 * 0.25 = 0.9975 */
    o.kind = MOEH_STRATEGY_FEDYOGI;
    float th2[4] = {0}, m2[4] = {0}, v2[4] = {1, 1, 1, 1};
    moeh_server_opt_step(&o, &a, th2, m2, v2, d, up);
    assert_true(fabs(v2[0] - 0.9975) < 1e-6);
    assert_true(fabs(th2[0] - 0.1 * 0.05 / (sqrt(0.9975) + 1e-3)) < 1e-6);
    /* Yogi from v = 0 (< d^2): v grows by 0.01 d^2, as Adam's first step */
    float th3[4] = {0}, m3[4] = {0}, v3[4] = {0};
    moeh_server_opt_step(&o, &a, th3, m3, v3, d, up);
    assert_true(fabs(v3[0] - 0.01 * 0.25) < 1e-7);
    /* FedAvg adds the delta */
    o.kind = MOEH_STRATEGY_FEDAVG;
    float th4[4] = {1, 1, 1, 1};
    moeh_server_opt_step(&o, &a, th4, NULL, NULL, d, up);
    assert_true(th4[0] == 1.5f && th4[1] == 0.75f && th4[2] == 1.0f);
    moeh_fedavg_free(&a);
}

static void test_strategy_names(void **state)
{
    moeh_strategy_t k;
    assert_int_equal(moeh_strategy_parse("fedyogi", &k), 0);
    assert_int_equal(k, MOEH_STRATEGY_FEDYOGI);
    assert_string_equal(moeh_strategy_name(MOEH_STRATEGY_FEDADAM), "fedadam");
    assert_int_equal(moeh_strategy_parse("sgd", &k), -EINVAL);
}

static void test_trimmed_mean(void **state)
{
    /* 3 groups of 1 parameter; 5 sites. Group 0: all sites, deltas 1 2 3 4 100 (an outlier);
     * group 1: sites 0 and 1 only; group 2: nobody. */
    moeh_fedavg_t a;
    size_t off[3] = {0, 1, 2}, len[3] = {1, 1, 1};
    assert_int_equal(moeh_fedavg_init(&a, 3, 3, off, len), 0);
    const float d[5][3] = {{1, 10, 0}, {2, 20, 0}, {3, 0, 0}, {4, 0, 0}, {100, 0, 0}};
    const uint32_t w[5][3] = {{5, 1, 0}, {5, 1, 0}, {5, 0, 0}, {5, 0, 0}, {5, 0, 0}};
    float th[3] = {0, 0, 7}, scratch[5];
    /* trim 0.2 of 5 = 1 at each end: mean(2, 3, 4) = 3; group 1: 2 values, none dropped */
    assert_int_equal(moeh_trimmed_apply(&a, th, &d[0][0], &w[0][0], 5, 0.2, scratch), 2);
    assert_true(th[0] == 3.0f && th[1] == 15.0f && th[2] == 7.0f);
    /* trim 0.45: floor(2.25) = 2 at each end of 5 -> the median */
    float th2[3] = {0, 0, 0};
    moeh_trimmed_apply(&a, th2, &d[0][0], &w[0][0], 5, 0.45, scratch);
    assert_true(th2[0] == 3.0f);
    /* trim 0: the plain mean, outlier included */
    float th3[3] = {0, 0, 0};
    moeh_trimmed_apply(&a, th3, &d[0][0], &w[0][0], 5, 0.0, scratch);
    assert_true(th3[0] == 22.0f);
    moeh_strategy_t k;
    assert_int_equal(moeh_strategy_parse("trimmed", &k), 0);
    assert_int_equal(k, MOEH_STRATEGY_TRIMMED);
    moeh_fedavg_free(&a);
}

/* --strategy median: the trimmed mean with trim 0.5; and the groups a trim leaves untrimmed. */
static void test_median_and_untrimmed_groups(void **state)
{
    (void)state;
    moeh_fedavg_t a;
    size_t off[3] = {0, 1, 2}, len[3] = {1, 1, 1};
    assert_int_equal(moeh_fedavg_init(&a, 3, 3, off, len), 0);
    /* group 0: 4 sites (1, 2, 3, 1000): median (2 + 3) / 2; group 1: 3 sites (10, -5, 1e6): -> 10;
     * group 2: 2 sites: their mean (no robust statistic of two values) */
    const float d[4][3] = {{1, 10, 4}, {2, -5, 0}, {3, 1e6f, 0}, {1000, 0, 8}};
    const uint32_t w[4][3] = {{1, 1, 1}, {1, 1, 0}, {1, 1, 0}, {1, 0, 1}};
    float th[3] = {0, 0, 0}, scratch[4];
    assert_int_equal(moeh_trimmed_apply(&a, th, &d[0][0], &w[0][0], 4, MOEH_MEDIAN_TRIM, scratch),
                     3);
    assert_true(th[0] == 2.5f && th[1] == 10.0f && th[2] == 6.0f);
    /* trim 0.25: group 0 (4 sites) drops one at each end; groups 1 and 2 (3 and 2 sites) none */
    assert_int_equal(moeh_trimmed_untrimmed_groups(&a, &w[0][0], 4, 0.25), 2);
    assert_int_equal(moeh_trimmed_untrimmed_groups(&a, &w[0][0], 4, 0.0), 0);
    assert_int_equal(moeh_trimmed_untrimmed_groups(&a, &w[0][0], 4, MOEH_MEDIAN_TRIM), 0);
    moeh_strategy_t k;
    assert_int_equal(moeh_strategy_parse("median", &k), 0);
    assert_int_equal(k, MOEH_STRATEGY_MEDIAN);
    assert_string_equal(moeh_strategy_name(k), "median");
    assert_true(moeh_strategy_per_site(k) && moeh_strategy_per_site(MOEH_STRATEGY_TRIMMED));
    assert_false(moeh_strategy_per_site(MOEH_STRATEGY_FEDAVG));
    moeh_fedavg_free(&a);
}

/* --norm-bound: norms of plain updates, the factors against the median, the scaled sum. */
static void test_norm_bound(void **state)
{
    (void)state;
    moeh_fedavg_t a;
    size_t off[2] = {0, 2}, len[2] = {2, 2};
    assert_int_equal(moeh_fedavg_init(&a, 4, 2, off, len), 0);
    /* scale 100, weight 2 on group 0 only: words 600, 800 -> delta (3, 4), norm 5; group 1's
     * words are ignored (weight 0) */
    uint32_t pw[4] = {600, 800, 12345, 7}, wt[2] = {2, 0};
    assert_true(fabs(moeh_update_norm(&a, pw, wt, 100.0) - 5.0) < 1e-12);
    const float f[3] = {3, 0, -4};
    assert_true(fabs(moeh_delta_norm(f, 3) - 5.0) < 1e-12);
    /* norms 1, 2, 3, 0 (untrained) and 1000 (the attacker): median of the positive ones
     * (2 + 3) / 2 = 2.5; bound 2 x 2.5 = 5: only the attacker is scaled, to 5 / 1000 */
    double norms[5] = {1, 2, 3, 0, 1000}, fac[5], scratch[5], med = 0;
    assert_int_equal(moeh_norm_bound_factors(norms, 5, 2.0, fac, &med, scratch), 1);
    assert_true(med == 2.5);
    assert_true(fac[0] == 1 && fac[1] == 1 && fac[2] == 1 && fac[3] == 1);
    assert_true(fabs(fac[4] - 0.005) < 1e-15);
    /* factor 1 is moeh_fedavg_add word for word; 0.5 halves the words (rounded), weights kept */
    moeh_fedavg_t b;
    assert_int_equal(moeh_fedavg_init(&b, 4, 2, off, len), 0);
    uint32_t whole[6] = {600, (uint32_t)-801, 3, 0, 2, 0};
    moeh_fedavg_add(&b, whole);
    moeh_fedavg_add_scaled(&a, whole, whole + 4, 1.0);
    assert_memory_equal(a.sum, b.sum, 6 * sizeof(uint32_t));
    moeh_fedavg_reset(&a);
    moeh_fedavg_add_scaled(&a, whole, whole + 4, 0.5);
    assert_int_equal((int32_t)a.sum[0], 300);
    assert_int_equal((int32_t)a.sum[1], -400); /* rint(-400.5): to even */
    assert_int_equal(a.sum[2], 2);             /* rint(1.5) */
    assert_int_equal(a.sum[4], 2);
    assert_int_equal(a.n_updates, 1);
    moeh_fedavg_free(&a);
    moeh_fedavg_free(&b);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_mean_delta),
               cmocka_unit_test(test_fedadam_and_yogi_steps), cmocka_unit_test(test_strategy_names),
               cmocka_unit_test(test_trimmed_mean),
               cmocka_unit_test(test_median_and_untrimmed_groups),
               cmocka_unit_test(test_norm_bound))
