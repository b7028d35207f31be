/* test_dp.c - DP-FedAvg arithmetic (fed/moeh_dp.h): the L2 clip, the distributed Gaussian noise
 * (its standard deviation per site and summed over m sites, its bound, that it is fresh), the
 * fixed-point headroom under noise, and the accounting of rounds.
 *
 * Reference values of the accounting, for T = 10 rounds at noise multiplier Z = 1 without
 * sampling and delta = 1e-5, computed by hand from published formulas (not from this code):
 *  - RDP of the Gaussian mechanism: T alpha / (2 Z^2) (Mironov, "Rényi Differential Privacy",
 *    CSF 2017, Prop. 7 and Prop. 1 for composition); converted with Canonne, Kamath and Steinke
 *    (NeurIPS 2020, Prop. 12): eps = rdp + log(1 - 1/alpha) - log(delta alpha) / (alpha - 1).
 *    alpha = 2: 10 - 0.693147 + 10.819778 = 20.126631; alpha = 3: 15 - 0.405465 + 5.207157 =
 *    19.801691; alpha = 4: 23.087862; larger orders grow by ~5 each: the minimum is 19.801691
 *    at alpha = 3.
 *  - a bound from above: rho-zCDP with rho = T / (2 Z^2) = 5 gives (rho + 2 sqrt(rho
 *    log(1/delta)), delta)-DP (Bun and Steinke, TCC 2016, Prop. 1.3): 20.174271.
 *  - the exact value from below: T Gaussian mechanisms compose to one with mu = sqrt(T) / Z
 *    (Dong, Roth and Su, "Gaussian Differential Privacy", 2019), and its exact delta(eps) =
 *    Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Balle and Wang, ICML 2018, Thm. 8); the
 *    test solves it by bisection: 17.856587. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_common.h"
#include "moeh_dp.h"
#include "moeh_quant.h"

#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static double l2(const float *x, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    return sqrt(ss);
}

static void fill(float *x, size_t n, uint64_t seed, double scale)
{
    moeh_rng_t r;
    moeh_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * (moeh_rng_uniform(&r) - 0.5));
}

static void test_clip(void **state)
{
    enum { N = 10007 };
    float *x = malloc(N * sizeof(float)), *x0 = malloc(N * sizeof(float));
    assert_non_null(x);
    assert_non_null(x0);
    for (uint64_t seed = 1; seed <= 20; seed++) {
        fill(x0, N, seed, 0.01 * (double)seed);
        memcpy(x, x0, N * sizeof(float));
        double before = l2(x0, N), clip = 0.5;
        double got = moeh_dp_clip(x, N, clip);
        assert_true(fabs(got - before) <= 1e-12 * before);
        double after = l2(x, N);
        assert_true(after <= clip); /* the bound DP needs, exactly */
        if (before > clip) {
            assert_true(after >= clip * (1 - 2e-6)); /* scaled to the clip, not below */
            for (size_t i = 0; i < N; i += 97)       /* same direction */
                assert_true(fabs((double)x[i] - (double)x0[i] * clip / before) <=
                            1e-6 * fabs((double)x0[i]) + 1e-12);
        } else {
            assert_memory_equal(x, x0, N * sizeof(float)); /* inside: unchanged, bit for bit */
        }
    }
    /* exactly at the clip and the zero vector are left alone */
    float v[2] = {3.0f, 4.0f}, z[3] = {0, 0, 0};
    assert_true(moeh_dp_clip(v, 2, 5.0) == 5.0);
    assert_true(v[0] == 3.0f && v[1] == 4.0f);
    assert_true(moeh_dp_clip(z, 3, 1.0) == 0.0);
    assert_true(z[0] == 0 && z[1] == 0 && z[2] == 0);
    /* a huge vector (norm 1e6 times the clip) */
    float big[4] = {3e6f, -4e6f, 0, 1};
    moeh_dp_clip(big, 4, 1.0);
    assert_true(l2(big, 4) <= 1.0 && l2(big, 4) > 0.999);
    free(x);
    free(x0);
}

/* mean, standard deviation, fractions within 1 and 2 sd, largest |x| / sd */
static void moments(const float *x, size_t n, double sd, double *mean, double *std, double *in1,
                    double *in2, double *zmax)
{
    double s = 0, ss = 0;
    size_t c1 = 0, c2 = 0;
    *zmax = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        ss += (double)x[i] * (double)x[i];
        double z = fabs((double)x[i]) / sd;
        c1 += z < 1;
        c2 += z < 2;
        if (z > *zmax) *zmax = z;
    }
    *mean = s / (double)n;
    *std = sqrt(ss / (double)n - *mean * *mean);
    *in1 = (double)c1 / (double)n;
    *in2 = (double)c2 / (double)n;
}

static void test_noise_std(void **state)
{
    enum { N = 400000 };
    float *x = calloc(N, sizeof(float));
    assert_non_null(x);
    const double Z = 1.1, C = 0.5;
    const uint32_t m = 4;
    double sd = moeh_dp_site_std(C, Z, m);
    assert_true(fabs(sd - Z * C / 2) < 1e-15);
    uint8_t key[MOEH_DP_KEY_BYTES];
    for (int i = 0; i < MOEH_DP_KEY_BYTES; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    moeh_dp_add_noise_keyed(x, N, sd, key);
    double mean, std, in1, in2, zmax;
    moments(x, N, sd, &mean, &std, &in1, &in2, &zmax);
    print_message("keyed: mean %.2e std %.6f (want %.6f) within 1 sd %.4f, 2 sd %.4f, max %.2f\n",
                  mean, std, sd, in1, in2, zmax);
    /* standard errors at N = 4e5: std 0.11 %, mean 0.0016 sd, fractions ~7e-4 */
    assert_true(fabs(std / sd - 1) < 0.01);
    assert_true(fabs(mean) < 0.01 * sd);
    assert_true(fabs(in1 - 0.682689) < 0.005);
    assert_true(fabs(in2 - 0.954500) < 0.003);
    assert_true(zmax <= MOEH_DP_MAX_Z);
    /* the same key gives the same noise (the test hook); an odd length ends cleanly */
    float a[7] = {0}, b[7] = {0};
    moeh_dp_add_noise_keyed(a, 7, 1.0, key);
    moeh_dp_add_noise_keyed(b, 7, 1.0, key);
    assert_memory_equal(a, b, sizeof a);
    for (int i = 0; i < 7; i++)
        assert_true(fabsf(a[i] - x[i] / (float)sd) < 1e-5f); /* a prefix of the same stream */
    /* std 0 adds nothing */
    float c[5] = {1, -2, 3, 0, 5};
    moeh_dp_add_noise_keyed(c, 5, 0.0, key);
    assert_true(c[0] == 1 && c[1] == -2 && c[2] == 3 && c[3] == 0 && c[4] == 5);
    free(x);
}

/* m sites, each with a fresh random key: the sum's noise has std Z C (the target), and two
 * draws never agree (the noise cannot be reproduced from anything public). */
static void test_distributed_noise_sums_to_target(void **state)
{
    enum { N = 100000 };
    assert_true(sodium_init() >= 0);
    const double Z = 0.8, C = 2.0;
    const uint32_t m = 5;
    float *sum = calloc(N, sizeof(float)), *one = calloc(N, sizeof(float));
    assert_non_null(sum);
    assert_non_null(one);
    for (uint32_t s = 0; s < m; s++) {
        memset(one, 0, N * sizeof(float));
        moeh_dp_add_noise(one, N, moeh_dp_site_std(C, Z, m));
        for (size_t i = 0; i < N; i++)
            sum[i] += one[i];
    }
    double mean, std, in1, in2, zmax;
    moments(sum, N, Z * C, &mean, &std, &in1, &in2, &zmax);
    print_message("sum of %u sites: std %.5f, target Z C = %.5f\n", m, std, Z * C);
    assert_true(fabs(std / (Z * C) - 1) < 0.02);
    assert_true(fabs(in1 - 0.682689) < 0.01);
    /* fresh keys: two draws differ everywhere (equal floats would be a 2^-50 event) */
    float a[64] = {0}, b[64] = {0};
    moeh_dp_add_noise(a, 64, 1.0);
    moeh_dp_add_noise(b, 64, 1.0);
    int same = 0;
    for (int i = 0; i < 64; i++)
        same += a[i] == b[i];
    assert_int_equal(same, 0);
    free(sum);
    free(one);
}

/* The encoding range holds a clipped and noised coordinate without clamping it, and the sum of
 * W/2 sites at the extreme cannot overflow the 32-bit words (fed/moeh_quant.h). */
static void test_range_headroom(void **state)
{
    const float C = 0.25f, Z = 2.0f;
    const uint32_t m = 3;
    float B = moeh_dp_range(C, Z, m);
    assert_true(fabs((double)B - (0.25 + 9 * 2.0 * 0.25 / sqrt(3.0))) < 1e-6);
    double sd = moeh_dp_site_std(C, Z, m);
    assert_true((double)B >= (double)C + MOEH_DP_MAX_Z * sd); /* never clamped */
    /* worst case: 2 m sites (W = 2 m) whose every coordinate is at +B */
    double W = 2.0 * m, S = moeh_quant_scale(B, W);
    float xs[4] = {B, B, B, B};
    uint32_t q[4], sum = 0;
    moeh_quant_encode(q, xs, 4, B, 1.0, S);
    for (uint32_t s = 0; s < 2 * m; s++)
        sum += q[0];
    assert_true(moeh_quant_signed(sum) > 0); /* no wrap */
    /* a real draw: clipped delta plus noise, encoded; decodes to the float within 1 LSB */
    enum { N = 20000 };
    float *x = malloc(N * sizeof(float));
    uint32_t *w = malloc(N * sizeof(uint32_t));
    assert_non_null(x);
    assert_non_null(w);
    fill(x, N, 3, 1.0);
    moeh_dp_clip(x, N, C);
    uint8_t key[MOEH_DP_KEY_BYTES] = {9};
    moeh_dp_add_noise_keyed(x, N, sd, key);
    moeh_quant_encode(w, x, N, B, 1.0, S);
    for (size_t i = 0; i < N; i++) {
        assert_true(fabsf(x[i]) < B);
        assert_true(fabs((double)moeh_quant_signed(w[i]) / S - (double)x[i]) <= 0.5 / S + 1e-12);
    }
    free(x);
    free(w);
}

static double phi(double x)
{
    return 0.5 * erfc(-x / sqrt(2.0));
}

static void test_accounting_reference(void **state)
{
    const double delta = 1e-5;
    double order = 0;
    moeh_dp_release_t r = {1.0, 10};
    double eps = moeh_dp_epsilon(&r, 1, delta, &order);
    print_message("Z = 1, T = 10, delta 1e-5: epsilon %.6f at order %g\n", eps, order);
    assert_true(fabs(eps - 19.801691) < 1e-6); /* the hand computation in the file header */
    assert_true(order == 3);
    /* the same minimisation done here, independently of moeh_rdp_epsilon */
    double best = INFINITY;
    for (int a = 2; a <= 256; a++) {
        double e = 10.0 * a / 2.0 + log1p(-1.0 / a) - log(delta * a) / (a - 1);
        best = fmin(best, e);
    }
    assert_true(fabs(eps - best) < 1e-9);
    /* bracketed by the exact Gaussian value and the zCDP bound */
    double mu = sqrt(10.0), lo = 0, hi = 100;
    for (int i = 0; i < 200; i++) {
        double e = (lo + hi) / 2;
        if (phi(-e / mu + mu / 2) - exp(e) * phi(-e / mu - mu / 2) > delta)
            lo = e;
        else
            hi = e;
    }
    print_message("exact %.6f <= RDP %.6f <= zCDP %.6f\n", lo, eps,
                  5 + 2 * sqrt(5 * log(1 / delta)));
    assert_true(fabs(lo - 17.856587) < 1e-5);
    assert_true(lo <= eps && eps <= 5 + 2 * sqrt(5 * log(1 / delta)));
    assert_true(fabs(5 + 2 * sqrt(5 * log(1 / delta)) - 20.174271) < 1e-5);

    /* epsilon grows with the rounds, shrinks with more noise */
    double prev = 0;
    for (uint64_t T = 1; T <= 50; T++) {
        moeh_dp_release_t rt = {1.0, T};
        double e = moeh_dp_epsilon(&rt, 1, delta, NULL);
        assert_true(e > prev);
        prev = e;
    }
    moeh_dp_release_t more = {2.0, 50};
    assert_true(moeh_dp_epsilon(&more, 1, delta, NULL) < prev);
    /* composition: two entries of one noise equal one entry of their total count; an entry at
     * Z / sqrt(m) is m entries at Z (the coordinator's view of one plain update) */
    moeh_dp_release_t two[2] = {{1.5, 3}, {1.5, 4}}, seven = {1.5, 7};
    assert_true(fabs(moeh_dp_epsilon(two, 2, delta, NULL) -
                     moeh_dp_epsilon(&seven, 1, delta, NULL)) < 1e-12);
    moeh_dp_release_t plain = {1.5 / sqrt(3.0), 2}, six = {1.5, 6};
    assert_true(fabs(moeh_dp_epsilon(&plain, 1, delta, NULL) -
                     moeh_dp_epsilon(&six, 1, delta, NULL)) < 1e-9);
    /* nothing released spends nothing; a release without noise is unbounded */
    moeh_dp_release_t none[2] = {{1.0, 0}, {0.0, 0}}, bare = {0.0, 1};
    assert_true(moeh_dp_epsilon(none, 2, delta, NULL) == 0.0);
    assert_true(isinf(moeh_dp_epsilon(&bare, 1, delta, NULL)));
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_clip), cmocka_unit_test(test_noise_std),
               cmocka_unit_test(test_distributed_noise_sums_to_target),
               cmocka_unit_test(test_range_headroom), cmocka_unit_test(test_accounting_reference))
