/* test_strategy.c - the server optimisers (FedAvg, FedAdam, FedYogi of Reddi et al. 2021)
 * and the coordinate-wise trimmed mean against hand-computed steps, and that groups no site
 * trained are left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mean_delta),
        cmocka_unit_test(test_fedadam_and_yogi_steps),
        cmocka_unit_test(test_strategy_names),
        cmocka_unit_test(test_trimmed_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
