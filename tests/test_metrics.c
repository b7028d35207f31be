/* test_metrics.c - AUPRC, F1 and the evaluation report against values computed by hand
 * (worked out in the comments) and against an independent brute-force definition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_common.h"
#include "moeh_metrics.h"

#include <math.h>
#include <string.h>

static void test_auprc_f1_hand(void **state)
{
    /* scores desc 0.9(+) 0.8(-) 0.7(+) 0.6(-) 0.5(+):
     * AP = 1/3*1 + 1/3*(2/3) + 1/3*(3/5) = 0.755555...
     * F1@0.5: all predicted positive, TP 3 FP 2 FN 0 -> 6/8 = 0.75 (also the best F1;
     * thresholds 0.9 -> 0.5, 0.7 -> 2/3) */
    float s[5] = {0.7f, 0.5f, 0.9f, 0.6f, 0.8f}, y[5] = {1, 1, 1, 0, 0};
    assert_true(fabs(moeh_auprc(s, y, NULL, 5, 1) - (1.0 + 2.0 / 3 + 0.6) / 3) < 1e-12);
    assert_true(fabs(moeh_f1_at(s, y, NULL, 5, 1, 0.5f) - 0.75) < 1e-12);
    /* F1@0.75: predicted {0.9, 0.8}: TP 1 FP 1 FN 2 -> 2/(2+1+2) = 0.4 */
    assert_true(fabs(moeh_f1_at(s, y, NULL, 5, 1, 0.75f) - 0.4) < 1e-12);
    moeh_bin_metrics_t m;
    assert_int_equal(moeh_bin_metrics(&m, s, y, NULL, 5, 1), 0);
    assert_true(fabs(m.f1_best - 0.75) < 1e-12 && m.thr_best == 0.5f);
    /* AUROC: pairs (+,-): 0.9>0.8,0.9>0.6,0.7<0.8,0.7>0.6,0.5<0.8,0.5<0.6 -> 3/6 */
    assert_true(fabs(m.auroc - 0.5) < 1e-12);
    assert_int_equal(m.n, 5);
    assert_int_equal(m.n_pos, 3);
    /* ties are one threshold: 0.8(+) 0.8(-) 0.3(+): AP = 0.5*0.5 + 0.5*(2/3) = 0.583333 */
    float s2[3] = {0.8f, 0.8f, 0.3f}, y2[3] = {1, 0, 1};
    assert_true(fabs(moeh_auprc(s2, y2, NULL, 3, 1) - (0.25 + 1.0 / 3)) < 1e-12);
    /* no positives: undefined */
    float y0[3] = {0, 0, 0};
    assert_true(isnan(moeh_auprc(s2, y0, NULL, 3, 1)) &&
                isnan(moeh_f1_at(s2, y0, NULL, 3, 1, .5f)));
}

/* Brute force AP: mean over positives of the precision at that positive's score threshold
 * (equal to the step-wise sum when scores are distinct). */
static void test_auprc_brute_force(void **state)
{
    enum { N = 300 };
    float s[N], y[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 4);
    for (int i = 0; i < N; i++) {
        y[i] = moeh_rng_uniform(&r) < 0.3;
        s[i] = (float)(moeh_rng_uniform(&r) + 0.5 * y[i]) + (float)i * 1e-6f; /* distinct */
    }
    double ap = 0;
    int npos = 0;
    for (int i = 0; i < N; i++) {
        if (!y[i]) continue;
        npos++;
        int tp = 0, pp = 0;
        for (int j = 0; j < N; j++)
            if (s[j] >= s[i]) pp++, tp += y[j] > 0.5f;
        ap += (double)tp / pp;
    }
    ap /= npos;
    assert_true(fabs(moeh_auprc(s, y, NULL, N, 1) - ap) < 1e-9);
    /* best F1 >= F1 at every score threshold, and equals one of them */
    moeh_bin_metrics_t m;
    assert_int_equal(moeh_bin_metrics(&m, s, y, NULL, N, 1), 0);
    double best = 0;
    for (int i = 0; i < N; i++)
        best = fmax(best, moeh_f1_at(s, y, NULL, N, 1, s[i]));
    assert_true(fabs(m.f1_best - best) < 1e-12);
}

static void test_report(void **state)
{
    /* 4 rows, 2 tasks; task 1 of row 3 unlabelled. Rows 0,1 have only EHR (combination 1),
     * rows 2,3 have everything (combination 7). */
    float p[8] = {0.9f, 0.2f, 0.1f, 0.8f, 0.6f, 0.7f, 0.4f, 0.3f};
    float y[8] = {1, 0, 0, 1, 1, 1, 0, 0};
    uint8_t ym[8] = {1, 1, 1, 1, 1, 1, 1, 0};
    uint8_t av[12] = {1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1};
    moeh_bin_metrics_t pt[2], ov, pc[16];
    memset(pc, 0, sizeof pc);
    assert_int_equal(moeh_metrics_report(pt, &ov, pc, p, y, ym, av, 4, 2), 0);
    /* task 0: scores 0.9(+) 0.1(-) 0.6(+) 0.4(-): AUROC 1; task 1: 0.2(-) 0.8(+) 0.7(+): 1 */
    assert_true(pt[0].auroc == 1.0 && pt[1].auroc == 1.0 && ov.auroc == 1.0);
    assert_int_equal(pt[1].n, 3);
    assert_int_equal(ov.n, 7);
    /* combination 1, task 0: rows 0 (0.9,+) and 1 (0.1,-) -> AUROC 1, F1@0.5 = 1 */
    assert_int_equal(pc[1 * 2 + 0].n, 2);
    assert_true(pc[1 * 2 + 0].auroc == 1.0 && pc[1 * 2 + 0].f1_05 == 1.0);
    /* combination 7, task 1: only row 2 (0.7,+) labelled -> AUROC undefined, F1@0.5 = 1 */
    assert_int_equal(pc[7 * 2 + 1].n, 1);
    assert_true(isnan(pc[7 * 2 + 1].auroc) && pc[7 * 2 + 1].f1_05 == 1.0);
    assert_int_equal(pc[0].n, 0);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_auprc_f1_hand),
               cmocka_unit_test(test_auprc_brute_force), cmocka_unit_test(test_report))
