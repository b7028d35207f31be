/* test_evalsum.c - train/moeh_evalsum.h against hand-computed values: the slice/task indexing
 * of a (slices, tasks, 2, bins) histogram, the u32 variant and widening, and the mean over the
 * tasks that have an AUROC; calibration (Brier, reliability curve, ECE) against a hand-computed
 * case and the stated bound against exact Brier scores; the ROC points (by hand, and their
 * trapezoid area against the histogram AUROC on random histograms). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_evalsum.h"

#include <math.h>
#include <string.h>

enum { SL = 2, TK = 2, NB = 4 };

/* (slice, task): negatives then positives per bin. */
static const uint32_t k_counts[SL][TK][2][NB] = {
    {{{1, 1, 1, 1}, {1, 1, 1, 1}},   /* slice 0 task 0: same distribution, 0.5 */
     {{0, 0, 0, 5}, {5, 0, 0, 0}}},  /* slice 0 task 1: every positive below, 0 */
    {{{1, 0, 0, 0}, {0, 0, 0, 0}},   /* slice 1 task 0: no positive, NAN */
     {{2, 1, 0, 0}, {0, 1, 0, 3}}}}; /* slice 1 task 1: 11.5 of 12 pairs */

static void fill(uint64_t *h64, uint32_t *h32)
{
    const uint32_t *c = &k_counts[0][0][0][0];
    for (size_t i = 0; i < SL * TK * 2 * NB; i++) {
        if (h64) h64[i] = c[i];
        if (h32) h32[i] = c[i];
    }
}

static void test_slice_auroc_u64(void **state)
{
    (void)state;
    uint64_t h[SL * TK * 2 * NB];
    fill(h, NULL);
    assert_true(moeh_eval_slice_auroc(h, TK, NB, 0, 0) == 0.5);
    assert_true(moeh_eval_slice_auroc(h, TK, NB, 0, 1) == 0.0);
    assert_true(isnan(moeh_eval_slice_auroc(h, TK, NB, 1, 0)));
    /* positive in bin 1: beats 2 negatives in bin 0, ties 1 in bin 1 (2.5); 3 positives in
     * bin 3 beat all 3 negatives (9): 11.5 / (4 * 3) */
    assert_true(fabs(moeh_eval_slice_auroc(h, TK, NB, 1, 1) - 11.5 / 12.0) < 1e-15);
}

static void test_slice_auroc_u32(void **state)
{
    (void)state;
    uint32_t h[SL * TK * 2 * NB];
    uint64_t h64[SL * TK * 2 * NB], scratch[2 * NB];
    fill(h64, h);
    for (size_t s = 0; s < SL; s++)
        for (size_t t = 0; t < TK; t++) {
            double a = moeh_eval_slice_auroc(h64, TK, NB, s, t);
            double b = moeh_eval_slice_auroc_u32(h, TK, NB, s, t, scratch);
            assert_true(a == b || (isnan(a) && isnan(b)));
        }
    /* the scratch holds the last slice and task, widened */
    for (size_t b = 0; b < NB; b++) {
        assert_int_equal(scratch[b], k_counts[1][1][0][b]);
        assert_int_equal(scratch[NB + b], k_counts[1][1][1][b]);
    }
    /* counts past 2^31 stay positive when widened (3e9 negatives, 4e9 positives, all tied) */
    uint32_t big[2 * NB] = {0, 3000000000u, 0, 0, 0, 4000000000u, 0, 0};
    assert_true(moeh_eval_slice_auroc_u32(big, 1, NB, 0, 0, scratch) == 0.5);
    assert_int_equal(scratch[NB + 1], 4000000000ull);
}

static void test_widen(void **state)
{
    (void)state;
    uint32_t in[3] = {0, 1, UINT32_MAX};
    uint64_t out[4] = {9, 9, 9, 9};
    moeh_eval_hist_widen(out, in, 3);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 4294967295ull);
    assert_int_equal(out[3], 9); /* nothing past n */
}

static void test_mean_finite(void **state)
{
    (void)state;
    double v[4] = {0.5, NAN, 1.0, INFINITY};
    assert_true(moeh_eval_mean_finite(v, 4) == 0.75);
    assert_true(moeh_eval_mean_finite(v, 1) == 0.5);
    double none[2] = {NAN, NAN};
    assert_true(isnan(moeh_eval_mean_finite(none, 2)));
    assert_true(isnan(moeh_eval_mean_finite(v, 0)));
}

/* 20 score bins, task 1 of 2: negatives 3 in bin 1 (centre 0.075) and 1 in bin 12 (0.625),
 * positives 2 in bin 12 and 4 in bin 19 (0.975). By hand: Brier (3 * 0.075^2 + 0.625^2 +
 * 2 * 0.375^2 + 4 * 0.025^2) / 10 = 0.069125; reliability bins 0 (3 rows, p 0.075, 0
 * positive), 6 (3 rows, p 0.625, 2/3) and 9 (4 rows, p 0.975, 1); ECE 0.3 * 0.075 +
 * 0.3 * (2/3 - 0.625) + 0.4 * 0.025 = 0.045. */
static void test_calib_by_hand(void **state)
{
    (void)state;
    enum { B = 20 };
    uint64_t h[2 * 2 * B] = {0};
    uint64_t *neg = h + 2 * B, *pos = neg + B;
    neg[1] = 3, neg[12] = 1, pos[12] = 2, pos[19] = 4;
    moeh_calib_t c;
    moeh_eval_slice_calib(h, 2, B, 0, 1, &c);
    assert_int_equal(c.n, 10);
    assert_true(fabs(c.brier - 0.069125) < 1e-12);
    assert_true(fabs(c.ece - 0.045) < 1e-12);
    /* log loss at the bin centres: -(3 log 0.925 + log 0.375 + 2 log 0.625 + 4 log 0.975) / 10 */
    double ll = -(3 * log(0.925) + log(0.375) + 2 * log(0.625) + 4 * log(0.975)) / 10;
    assert_true(fabs(c.logloss - ll) < 1e-12);
    const uint64_t count[MOEH_CALIB_BINS] = {3, 0, 0, 0, 0, 0, 3, 0, 0, 4};
    for (int k = 0; k < MOEH_CALIB_BINS; k++) {
        assert_int_equal(c.count[k], count[k]);
        assert_int_equal(isnan(c.mean_p[k]), count[k] == 0);
    }
    assert_true(fabs(c.mean_p[6] - 0.625) < 1e-12 && fabs(c.observed[6] - 2.0 / 3) < 1e-12);
    assert_true(fabs(c.observed[9] - 1.0) < 1e-12 && c.observed[0] == 0.0);
    moeh_eval_slice_calib(h, 2, B, 0, 0, &c); /* task 0: no rows */
    assert_int_equal(c.n, 0);
    assert_true(isnan(c.brier) && isnan(c.ece) && isnan(c.logloss));
}

/* The bound of moeh_evalsum.h: the histogram Brier score is within 1/bins of the exact one,
 * over random scores and labels (a fixed LCG, so the case is the same every run); the log loss
 * estimate, which has no such bound, is within 0.002 of the exact one on these scores. */
static void test_calib_brier_bound(void **state)
{
    (void)state;
    enum { B = 1000, N = 5000 };
    static uint64_t h[2 * B];
    uint64_t x = 12345;
    for (int trial = 0; trial < 20; trial++) {
        memset(h, 0, sizeof h);
        double exact = 0, exact_ll = 0;
        for (int i = 0; i < N; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            float p = (float)((x >> 11) * 0x1.0p-53);
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int y = (double)((x >> 11) * 0x1.0p-53) < (trial % 2 ? p : 0.3);
            exact += (p - y) * (double)(p - y);
            exact_ll -= y ? log(p) : log1p(-(double)p);
            size_t b = (size_t)(p * B);
            h[(size_t)y * B + (b >= B ? B - 1 : b)]++;
        }
        moeh_calib_t c;
        moeh_eval_slice_calib(h, 1, B, 0, 0, &c);
        assert_true(fabs(c.brier - exact / N) <= 1.0 / B);
        assert_true(fabs(c.logloss - exact_ll / N) < 0.002);
    }
}

/* Trapezoid area under n points, computed here (not the function's *area). */
static double trapezoid(const double *x, const double *y, size_t n)
{
    double a = 0;
    for (size_t i = 1; i < n; i++)
        a += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2;
    return a;
}

/* Slice 1 task 1 of k_counts: negatives {2, 1, 0, 0}, positives {0, 1, 0, 3}. From the top
 * bin down: bin 3 (3 positives) (0, 3/4); bin 2 empty, no point; bin 1 (one of each)
 * (1/3, 1); bin 0 (2 negatives) (1, 1). Area 11.5 / 12, the AUROC. */
static void test_roc_by_hand(void **state)
{
    (void)state;
    uint64_t h[SL * TK * 2 * NB];
    double fpr[NB + 1], tpr[NB + 1], area;
    fill(h, NULL);
    size_t n = moeh_eval_slice_roc(h, TK, NB, 1, 1, fpr, tpr, &area);
    const double ex[4] = {0, 0, 1.0 / 3, 1}, ey[4] = {0, 0.75, 1, 1};
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        assert_true(fabs(fpr[i] - ex[i]) < 1e-15);
        assert_true(fabs(tpr[i] - ey[i]) < 1e-15);
    }
    assert_true(fabs(area - 11.5 / 12) < 1e-15);
    assert_true(fabs(trapezoid(fpr, tpr, n) - 11.5 / 12) < 1e-15);
    /* slice 0 task 1: every positive below every negative: (0,0) (1,0) (1,1), area 0 */
    n = moeh_eval_slice_roc(h, TK, NB, 0, 1, fpr, tpr, &area);
    assert_int_equal(n, 3);
    assert_true(fpr[1] == 1 && tpr[1] == 0 && area == 0);
    /* slice 0 task 0: same distribution in every bin: the diagonal, one point per bin */
    n = moeh_eval_slice_roc(h, TK, NB, 0, 0, fpr, tpr, &area);
    assert_int_equal(n, NB + 1);
    for (size_t i = 0; i < n; i++)
        assert_true(fpr[i] == tpr[i]);
    assert_true(area == 0.5);
    /* slice 1 task 0: no positive: no curve */
    fpr[0] = 7;
    assert_int_equal(moeh_eval_slice_roc(h, TK, NB, 1, 0, fpr, tpr, &area), 0);
    assert_true(isnan(area) && fpr[0] == 7);
}

/* On random histograms (sparse and dense, small and huge counts): the points run from (0, 0)
 * to (1, 1) without going back, no two consecutive segments are both horizontal or both
 * vertical (those points were redundant), and their trapezoid area equals the histogram
 * AUROC within 1e-6. A fixed LCG: the same cases every run. */
static void test_roc_area_is_auroc(void **state)
{
    (void)state;
    enum { B = 1000, TASKS = 3 };
    static uint64_t h[2 * TASKS * 2 * B];
    static double fpr[B + 1], tpr[B + 1];
    uint64_t x = 987654321;
    for (int trial = 0; trial < 200; trial++) {
        memset(h, 0, sizeof h);
        unsigned fill_pct = 1 + (unsigned)trial % 100; /* share of non-empty cells */
        uint64_t big = trial % 3 == 0 ? 1000000000ull : 20;
        for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            if ((x >> 33) % 100 < fill_pct) h[i] = (x >> 11) % big;
        }
        size_t slice = (size_t)trial % 2, task = (size_t)trial % TASKS;
        double auroc = moeh_eval_slice_auroc(h, TASKS, B, slice, task), area;
        size_t n = moeh_eval_slice_roc(h, TASKS, B, slice, task, fpr, tpr, &area);
        if (isnan(auroc)) {
            assert_int_equal(n, 0);
            continue;
        }
        assert_true(n >= 2 && n <= B + 1);
        assert_true(fpr[0] == 0 && tpr[0] == 0 && fpr[n - 1] == 1 && tpr[n - 1] == 1);
        for (size_t i = 1; i < n; i++) {
            assert_true(fpr[i] >= fpr[i - 1] && tpr[i] >= tpr[i - 1]);
            assert_true(fpr[i] > fpr[i - 1] || tpr[i] > tpr[i - 1]); /* no repeated point */
            if (i >= 2) {
                int h1 = tpr[i - 1] == tpr[i - 2], h2 = tpr[i] == tpr[i - 1];
                int v1 = fpr[i - 1] == fpr[i - 2], v2 = fpr[i] == fpr[i - 1];
                assert_false((h1 && h2) || (v1 && v2));
            }
        }
        assert_true(fabs(trapezoid(fpr, tpr, n) - auroc) < 1e-6);
        assert_true(fabs(area - auroc) < 1e-6);
    }
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_roc_by_hand),
               cmocka_unit_test(test_roc_area_is_auroc), cmocka_unit_test(test_slice_auroc_u64),
               cmocka_unit_test(test_slice_auroc_u32), cmocka_unit_test(test_widen),
               cmocka_unit_test(test_mean_finite), cmocka_unit_test(test_calib_by_hand),
               cmocka_unit_test(test_calib_brier_bound))
