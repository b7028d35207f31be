/* test_hist.c - federated AUROC from summed score histograms against the exact AUROC.
 * Binning turns scores that share a bin into ties (counted 1/2), so
 *   |AUROC_hist - AUROC_exact| <= (pairs sharing a bin) / (2 P N)
 * and with continuous scores over 1,000 bins the bound is a few 1e-4. Summing histograms of
 * several sites gives exactly the histogram of the pooled scores. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_common.h"
#include "moeh_hist.h"
#include "moeh_metrics.h"

#include <math.h>
#include <string.h>

#define N 20000

static void make_scores(moeh_rng_t *r, float *s, float *y, double sep)
{
    for (size_t i = 0; i < N; i++) {
        y[i] = moeh_rng_uniform(r) < 0.2 ? 1.0f : 0.0f;
        double z = moeh_rng_normal(r) + (y[i] > 0 ? sep : 0.0);
        s[i] = (float)(1.0 / (1.0 + exp(-z)));
    }
}

/* Returns the histogram AUROC and the tie bound for `bins` bins. */
static double hist_auroc(const float *s, const float *y, size_t n, size_t bins, double *bound)
{
    uint64_t *neg = calloc(bins, sizeof(uint64_t)), *pos = calloc(bins, sizeof(uint64_t));
    double P = 0, Nn = 0, shared = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b = moeh_hist_bin(s[i], bins);
        if (y[i] > 0)
            pos[b]++, P++;
        else
            neg[b]++, Nn++;
    }
    for (size_t b = 0; b < bins; b++)
        shared += (double)pos[b] * (double)neg[b];
    *bound = shared / (2 * P * Nn);
    double a = moeh_hist_auroc(neg, pos, bins);
    free(neg);
    free(pos);
    return a;
}

static void test_hist_auroc_within_bound(void **state)
{
    static float s[N], y[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 3);
    const double seps[] = {0.0, 0.5, 1.0, 2.0};
    const size_t bins[] = {10, 100, 1000, 10000};
    for (size_t k = 0; k < 4; k++) {
        make_scores(&r, s, y, seps[k]);
        double exact = moeh_auroc(s, y, NULL, N, 1);
        for (size_t b = 0; b < 4; b++) {
            double bound, h = hist_auroc(s, y, N, bins[b], &bound);
            print_message("sep %.1f bins %5zu: exact %.5f hist %.5f diff %.2e bound %.2e\n",
                          seps[k], bins[b], exact, h, fabs(h - exact), bound);
            assert_true(fabs(h - exact) <= bound + 1e-12);
            if (bins[b] >= 1000) assert_true(fabs(h - exact) < 1e-3); /* the default resolution */
        }
    }
}

static void test_summed_site_histograms_equal_pooled(void **state)
{
    static float s[N], y[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 4);
    make_scores(&r, s, y, 1.0);
    const size_t B = 1000;
    uint64_t pooled[2][1000] = {{0}}, summed[2][1000] = {{0}};
    for (size_t i = 0; i < N; i++)
        pooled[y[i] > 0][moeh_hist_bin(s[i], B)]++;
    for (size_t site = 0; site < 3; site++) { /* three sites, uneven shares */
        size_t lo = site == 0   ? 0
                    : site == 1 ? N / 2
                                : 3 * N / 4,
               hi = site == 2   ? N
                    : site == 0 ? N / 2
                                : 3 * N / 4;
        uint32_t h[2][1000] = {{0}};
        for (size_t i = lo; i < hi; i++)
            h[y[i] > 0][moeh_hist_bin(s[i], B)]++;
        for (size_t c = 0; c < 2; c++)
            for (size_t b = 0; b < B; b++)
                summed[c][b] += h[c][b];
    }
    assert_memory_equal(pooled, summed, sizeof pooled);
    assert_true(moeh_hist_auroc(summed[0], summed[1], B) ==
                moeh_hist_auroc(pooled[0], pooled[1], B));
}

static void test_bin_edges(void **state)
{
    assert_int_equal(moeh_hist_bin(0.0f, 1000), 0);
    assert_int_equal(moeh_hist_bin(-1.0f, 1000), 0);
    assert_int_equal(moeh_hist_bin(NAN, 1000), 0);
    assert_int_equal(moeh_hist_bin(1.0f, 1000), 999);
    assert_int_equal(moeh_hist_bin(0.9995f, 1000), 999);
    assert_int_equal(moeh_hist_bin(0.5f, 1000), 500);
    uint64_t neg[4] = {0}, pos[4] = {0};
    assert_true(isnan(moeh_hist_auroc(neg, pos, 4)));
    neg[0] = 3, pos[3] = 2; /* perfect separation */
    assert_true(moeh_hist_auroc(neg, pos, 4) == 1.0);
    pos[0] = 2, pos[3] = 0; /* all tied */
    assert_true(moeh_hist_auroc(neg, pos, 4) == 0.5);
}

/* The exact AUROC of common/ (the synthetic generator's oracle) on hand-computed cases, and
 * against model/'s exact AUROC on random scores with ties. */
static void test_auroc_exact(void **state)
{
    (void)state;
    double a = 0;
    /* 4 pairs: 0.35 beats 0.1, loses to 0.4; 0.8 beats both -> 3 / 4 */
    const double sc[4] = {0.1, 0.4, 0.35, 0.8};
    const uint8_t lb[4] = {0, 0, 1, 1};
    assert_int_equal(moeh_hist_auroc_exact(sc, lb, 4, &a), 0);
    assert_true(a == 0.75);
    /* a tie counts one half: positive 0.5 vs negatives 0.5 (tie) and 0.2 (win) -> 1.5 / 2 */
    const double st[3] = {0.5, 0.5, 0.2};
    const uint8_t lt[3] = {1, 0, 0};
    assert_int_equal(moeh_hist_auroc_exact(st, lt, 3, &a), 0);
    assert_true(a == 0.75);
    const uint8_t none[3] = {0, 0, 0};
    assert_int_equal(moeh_hist_auroc_exact(st, none, 3, &a), 0);
    assert_true(isnan(a));
    assert_int_equal(moeh_hist_auroc_exact(st, lt, 0, &a), 0);
    assert_true(isnan(a));

    enum { M = 2000 };
    static float s[M], y[M];
    static double d[M];
    static uint8_t l[M];
    moeh_rng_t r;
    moeh_rng_seed(&r, 11);
    for (size_t i = 0; i < M; i++) {
        l[i] = moeh_rng_uniform(&r) < 0.3;
        d[i] = floor((moeh_rng_normal(&r) + l[i]) * 8) / 8; /* coarse: many ties */
        s[i] = (float)d[i], y[i] = l[i];
    }
    assert_int_equal(moeh_hist_auroc_exact(d, l, M, &a), 0);
    assert_true(fabs(a - moeh_auroc(s, y, NULL, M, 1)) < 1e-9);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_hist_auroc_within_bound),
               cmocka_unit_test(test_summed_site_histograms_equal_pooled),
               cmocka_unit_test(test_bin_edges), cmocka_unit_test(test_auroc_exact))
