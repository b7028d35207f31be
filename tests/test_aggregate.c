/* test_aggregate.c - the coordinator's per-group FedAvg running sum (coordinator/aggregate.c).
 * Updates are the fixed-point words of fed/moeh_quant.h: n_params words q_i = S * w_g * delta_i
 * (two's complement) followed by n_groups weights w_g, summed mod 2^32; apply() must give
 * theta_g + sum(q) / (S * sum(w)) per group. Checked against sums worked out by hand for three
 * sites over three groups (one group that nobody trained must stay bit for bit unchanged),
 * against intermediate sums that wrap past 2^32 (result exact and independent of arrival
 * order), with the update buffer at an odd address, after reset(), and init() must refuse
 * group layouts that are not contiguous slices exactly covering [0, n_params). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_aggregate.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Three groups: g0 = params [0,3), g1 = [3,5), g2 = [5,7). */
#define NP 7
#define NG 3
#define NW (NP + NG)
static const size_t k_off[NG] = {0, 3, 5};
static const size_t k_len[NG] = {3, 2, 2};
#define SCALE 1000.0

static uint32_t q(int32_t v)
{
    return (uint32_t)v; /* two's complement, as moeh_quant_encode writes it */
}

/* Site A: w = (2, 0, 0), g0 delta (0.5, -0.25, 0.1) -> q = 1000*2*d = (1000, -500, 200).
 * Site B: w = (1, 3, 0), g0 delta (-1, 0.5, 0.4)    -> q = 1000*1*d = (-1000, 500, 400);
 *                        g1 delta (0.2, -0.1)        -> q = 1000*3*d = (600, -300).
 * Site C: w = (1, 1, 0), g0 delta (0.25, 0, -0.2)   -> q = (250, 0, -200);
 *                        g1 delta (-0.4, 0.3)        -> q = (-400, 300). */
static const int32_t k_upd[3][NW] = {
    {1000, -500, 200, 0, 0, 0, 0, 2, 0, 0},
    {-1000, 500, 400, 600, -300, 0, 0, 1, 3, 0},
    {250, 0, -200, -400, 300, 0, 0, 1, 1, 0},
};

static void words_of(const int32_t *v, uint32_t *w)
{
    for (size_t i = 0; i < NW; i++)
        w[i] = q(v[i]);
}

static void init_theta(float *theta)
{
    theta[0] = 1.0f;
    theta[1] = 2.0f;
    theta[2] = 3.0f;
    theta[3] = 4.0f;
    theta[4] = 5.0f;
    theta[5] = -0.0f;  /* g2: nobody trains it; adding 0.0 would turn this into +0.0 */
    theta[6] = 1e-40f; /* denormal */
}

static void check_hand_result(const float *theta)
{
    /* g0: sum q = (1000-1000+250, -500+500+0, 200+400-200) = (250, 0, 400), sum w = 2+1+1 = 4
     *     theta += q / (1000 * 4) = (0.0625, 0, 0.1) -> (1.0625, 2, 3.1) */
    assert_true(theta[0] == 1.0625f);
    assert_true(theta[1] == 2.0f);
    assert_true(fabsf(theta[2] - 3.1f) <= 2e-7f);
    /* g1: sum q = (600-400, -300+300) = (200, 0), sum w = 0+3+1 = 4
     *     theta += (200/4000, 0) = (0.05, 0) -> (4.05, 5) */
    assert_true(fabsf(theta[3] - 4.05f) <= 4e-7f);
    assert_true(theta[4] == 5.0f);
    /* g2: sum w = 0 -> unchanged, bit for bit */
    float orig[NP];
    init_theta(orig);
    assert_memory_equal(&theta[5], &orig[5], 2 * sizeof(float));
}

static void test_fedavg_by_hand(void **state)
{
    moeh_fedavg_t a;
    assert_int_equal(moeh_fedavg_init(&a, NP, NG, k_off, k_len), 0);
    assert_int_equal(a.n_params, NP);
    assert_int_equal(a.n_groups, NG);
    uint32_t w[NW];
    for (int s = 0; s < 3; s++) {
        words_of(k_upd[s], w);
        moeh_fedavg_add(&a, w);
    }
    assert_int_equal(a.n_updates, 3);
    assert_int_equal(moeh_fedavg_weight(&a, 0), 4);
    assert_int_equal(moeh_fedavg_weight(&a, 1), 4);
    assert_int_equal(moeh_fedavg_weight(&a, 2), 0);

    float theta[NP];
    init_theta(theta);
    assert_int_equal(moeh_fedavg_apply(&a, theta, SCALE), 2);
    check_hand_result(theta);

    /* apply() does not consume the sum: applying again adds the same step */
    assert_int_equal(moeh_fedavg_apply(&a, theta, SCALE), 2);
    assert_true(theta[0] == 1.125f);
    assert_true(fabsf(theta[2] - 3.2f) <= 4e-7f);
    moeh_fedavg_free(&a);
    assert_null(a.sum);
}

static void test_fedavg_order_and_alignment(void **state)
{
    moeh_fedavg_t a, b;
    assert_int_equal(moeh_fedavg_init(&a, NP, NG, k_off, k_len), 0);
    assert_int_equal(moeh_fedavg_init(&b, NP, NG, k_off, k_len), 0);
    /* a: in order from aligned words; b: reversed, from an odd address */
    uint32_t w[NW];
    uint8_t raw[4 * NW + 1];
    uint8_t *odd = ((uintptr_t)raw & 1) ? raw : raw + 1;
    for (int s = 0; s < 3; s++) {
        words_of(k_upd[s], w);
        moeh_fedavg_add(&a, w);
        words_of(k_upd[2 - s], w);
        memcpy(odd, w, sizeof w);
        moeh_fedavg_add(&b, odd);
    }
    assert_memory_equal(a.sum, b.sum, NW * sizeof(uint32_t));
    float ta[NP], tb[NP];
    init_theta(ta);
    init_theta(tb);
    assert_int_equal(moeh_fedavg_apply(&a, ta, SCALE), 2);
    assert_int_equal(moeh_fedavg_apply(&b, tb, SCALE), 2);
    assert_memory_equal(ta, tb, sizeof ta);
    check_hand_result(tb);
    moeh_fedavg_free(&a);
    moeh_fedavg_free(&b);
}

static void test_fedavg_wraps_mod_2_32(void **state)
{
    /* One group of one parameter, S = 1e9. Sites send q = 2e9, 2e9, -2e9, -1.5e9 (each a
     * valid int32) with w = 1 each. The running sum passes 4e9 > 2^32 and wraps, but the
     * final sum 5e8 is in range: theta += 5e8 / (1e9 * 4) = 0.125, whatever the order. */
    const size_t off = 0, len = 1;
    const int32_t v[4] = {2000000000, 2000000000, -2000000000, -1500000000};
    const int order[2][4] = {{0, 1, 2, 3}, {2, 3, 1, 0}};
    for (int o = 0; o < 2; o++) {
        moeh_fedavg_t a;
        assert_int_equal(moeh_fedavg_init(&a, 1, 1, &off, &len), 0);
        for (int s = 0; s < 4; s++) {
            uint32_t w[2] = {q(v[order[o][s]]), 1};
            moeh_fedavg_add(&a, w);
        }
        assert_int_equal(a.sum[0], 500000000u);
        assert_int_equal(moeh_fedavg_weight(&a, 0), 4);
        float theta = 1.0f;
        assert_int_equal(moeh_fedavg_apply(&a, &theta, 1e9), 1);
        assert_true(theta == 1.125f);
        moeh_fedavg_free(&a);
    }

    /* a negative total: q = -3 + -1 = -4 with w = 2, S = 8 -> theta += -4 / 16 = -0.25 */
    moeh_fedavg_t a;
    assert_int_equal(moeh_fedavg_init(&a, 1, 1, &off, &len), 0);
    uint32_t w1[2] = {q(-3), 1}, w2[2] = {q(-1), 1};
    moeh_fedavg_add(&a, w1);
    moeh_fedavg_add(&a, w2);
    float theta = 0.5f;
    assert_int_equal(moeh_fedavg_apply(&a, &theta, 8.0), 1);
    assert_true(theta == 0.25f);
    moeh_fedavg_free(&a);
}

static void test_fedavg_reset(void **state)
{
    moeh_fedavg_t a;
    assert_int_equal(moeh_fedavg_init(&a, NP, NG, k_off, k_len), 0);
    uint32_t w[NW];
    words_of(k_upd[1], w);
    moeh_fedavg_add(&a, w);
    assert_int_equal(moeh_fedavg_weight(&a, 1), 3);
    moeh_fedavg_reset(&a);
    assert_int_equal(a.n_updates, 0);
    for (size_t g = 0; g < NG; g++)
        assert_int_equal(moeh_fedavg_weight(&a, g), 0);
    for (size_t i = 0; i < NW; i++)
        assert_int_equal(a.sum[i], 0);
    float theta[NP], orig[NP];
    init_theta(theta);
    init_theta(orig);
    assert_int_equal(moeh_fedavg_apply(&a, theta, SCALE), 0);
    assert_memory_equal(theta, orig, sizeof theta);

    /* a fresh round after reset gives exactly the by-hand result */
    for (int s = 0; s < 3; s++) {
        words_of(k_upd[s], w);
        moeh_fedavg_add(&a, w);
    }
    assert_int_equal(moeh_fedavg_apply(&a, theta, SCALE), 2);
    check_hand_result(theta);
    moeh_fedavg_free(&a);
}

static void expect_init_fails(size_t n_params, size_t n_groups, const size_t *off,
                              const size_t *len)
{
    moeh_fedavg_t a;
    memset(&a, 0xab, sizeof a);
    int rc = moeh_fedavg_init(&a, n_params, n_groups, off, len);
    if (rc == 0) {
        print_error("init accepted a bad layout (n_params %zu, n_groups %zu)\n", n_params,
                    n_groups);
        moeh_fedavg_free(&a);
    }
    assert_int_equal(rc, -EINVAL);
    assert_null(a.sum);
    moeh_fedavg_free(&a); /* safe after a failed init */
}

static void test_fedavg_init_rejects(void **state)
{
    /* a gap between the groups */
    const size_t gap_off[2] = {0, 4}, gap_len[2] = {3, 2};
    expect_init_fails(6, 2, gap_off, gap_len);
    /* overlapping groups */
    const size_t ov_off[2] = {0, 2}, ov_len[2] = {3, 3};
    expect_init_fails(5, 2, ov_off, ov_len);
    /* out of order */
    const size_t ord_off[2] = {3, 0}, ord_len[2] = {2, 3};
    expect_init_fails(5, 2, ord_off, ord_len);
    /* not starting at 0 */
    const size_t s1_off[2] = {1, 4}, s1_len[2] = {3, 2};
    expect_init_fails(6, 2, s1_off, s1_len);
    /* covering less or more than n_params */
    const size_t ok_off[2] = {0, 3}, ok_len[2] = {3, 2};
    expect_init_fails(6, 2, ok_off, ok_len);
    expect_init_fails(4, 2, ok_off, ok_len);
    /* no groups, too many groups */
    expect_init_fails(5, 0, ok_off, ok_len);
    size_t many_off[MOEH_AGG_MAX_GROUPS + 1], many_len[MOEH_AGG_MAX_GROUPS + 1];
    for (size_t g = 0; g <= MOEH_AGG_MAX_GROUPS; g++) {
        many_off[g] = g;
        many_len[g] = 1;
    }
    expect_init_fails(MOEH_AGG_MAX_GROUPS + 1, MOEH_AGG_MAX_GROUPS + 1, many_off, many_len);
    /* ...while exactly the maximum is fine */
    moeh_fedavg_t a;
    assert_int_equal(
        moeh_fedavg_init(&a, MOEH_AGG_MAX_GROUPS, MOEH_AGG_MAX_GROUPS, many_off, many_len), 0);
    moeh_fedavg_free(&a);
    /* and the good layout itself */
    assert_int_equal(moeh_fedavg_init(&a, 5, 2, ok_off, ok_len), 0);
    moeh_fedavg_free(&a);
}

static void test_fedavg_init_wrapping_lengths(void **state)
{
    /* lengths whose running total wraps around SIZE_MAX back to n_params: group 0 would claim
     * [0, SIZE_MAX) and apply() would write far past theta */
    const size_t wrap_off[2] = {0, SIZE_MAX}, wrap_len[2] = {SIZE_MAX, 4};
    expect_init_fails(3, 2, wrap_off, wrap_len);
}

/* Site B's update (weights 1, 3, 0; |delta| <= 1) against the bounds of a round with scale
 * 1000 and range 1: accepted within its declared weight, refused above it, with a word out of
 * range, or with a weight > 1 under unweighted aggregation; decoded back to its deltas. */
static void test_update_check_and_decode(void **state)
{
    (void)state;
    moeh_fedavg_t a;
    assert_int_equal(moeh_fedavg_init(&a, NP, NG, k_off, k_len), 0);
    uint32_t w[NW];
    char what[160];
    words_of(k_upd[1], w);
    moeh_update_bounds_t b = {.scale = SCALE, .range = 1.0f, .max_weight = 3};
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), 0);
    b.max_weight = 2; /* group 1 claims 3 samples */
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "group 1 weight 3 exceeds the 2 training samples"));
    b.max_weight = 3;
    b.unit_weight = 1;
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "allows 0 or 1"));
    b.unit_weight = 0;
    w[4] = q(-3002); /* |q| > scale * w * range + 1 = 3001 */
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "word 4 is outside the range"));
    w[4] = q(-3001);
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), 0);
    w[5] = q(1); /* group 2 has weight 0: its words may round to +-1 at most... */
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), 0);
    w[5] = q(2);
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), -ERANGE);
    b.dp = 1; /* ...but under DP every word carries noise of weight 1, trained or not */
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), -ERANGE); /* w[4] */
    w[4] = q(-300);
    assert_int_equal(moeh_update_check(&a, w, &b, what, sizeof what), 0);
    words_of(k_upd[1], w);
    float d[NP];
    uint32_t wg[NG];
    moeh_update_decode(&a, w, SCALE, d, wg);
    const float want[NP] = {-1.0f, 0.5f, 0.4f, 0.2f, -0.1f, 0.0f, 0.0f};
    for (size_t i = 0; i < NP; i++)
        assert_true(fabsf(d[i] - want[i]) <= 1e-6f);
    assert_int_equal(wg[0], 1);
    assert_int_equal(wg[1], 3);
    assert_int_equal(wg[2], 0);
    moeh_fedavg_free(&a);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_fedavg_by_hand),
               cmocka_unit_test(test_fedavg_order_and_alignment),
               cmocka_unit_test(test_fedavg_wraps_mod_2_32), cmocka_unit_test(test_fedavg_reset),
               cmocka_unit_test(test_fedavg_init_rejects),
               cmocka_unit_test(test_fedavg_init_wrapping_lengths),
               cmocka_unit_test(test_update_check_and_decode))
