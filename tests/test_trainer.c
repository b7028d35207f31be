/* test_trainer.c - the site agent's local trainer (train/moeh_trainer.h) on a small synthetic
 * MIMIC-IV: sufficient statistics against a direct computation, and two sites' summed
 * statistics give the pooled normalisation; FedProx keeps the parameters nearer the anchor;
 * per-group sample counts (no image encoder training on an EHR-only site); evaluation sums
 * account for every labelled row. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "synth_fixture.h"

#include "test_util.h"

#include "moeh_trainer.h"

#include <math.h>
#include <string.h>

static char g_dir[256];
static moeh_dataset_t *g_ds; /* the whole cohort, kept open for the tests to subset */

static int group_setup(void **state)
{
    moeh_err_t err = {0};
    int rc = moeh_test_tmpdir(g_dir, sizeof g_dir, "trainer");
    if (!rc) rc = moeh_test_synth_cohort(g_dir, 300, 9, &g_ds, &err);
    if (rc) fprintf(stderr, "setup: %s\n", err.msg);
    return rc;
}

static int group_teardown(void **state)
{
    moeh_dataset_destroy(&g_ds);
    return moeh_test_rmtree(g_dir);
}

static moeh_moe_cfg_t small_cfg(void)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(g_ds->f_static, g_ds->f_ts);
    c.n_steps = g_ds->t, c.img_size = g_ds->img_size;
    c.d_emb = 16, c.d_hidden = 16, c.note_buckets = 512, c.max_batch = 32, c.seed = 3;
    return c;
}

/* A trainer over rows [lo, hi) of the cohort, keeping only the modalities in `mods`. */
static moeh_trainer_t *trainer_of(size_t lo, size_t hi, unsigned mods)
{
    moeh_err_t err = {0};
    size_t *idx = malloc((hi - lo) * sizeof(size_t));
    for (size_t i = lo; i < hi; i++)
        idx[i - lo] = i;
    moeh_dataset_t *ds = NULL;
    assert_int_equal(moeh_dataset_subset(g_ds, idx, hi - lo, mods, &ds, &err), 0);
    free(idx);
    moeh_moe_cfg_t c = small_cfg();
    moeh_trainer_t *t = NULL;
    assert_int_equal(moeh_trainer_create(&ds, &c, &t, &err), 0);
    assert_null(ds); /* taken */
    return t;
}

static void test_stats_and_pooled_norm(void **state)
{
    size_t n = g_ds->n, half = n / 2;
    moeh_trainer_t *a = trainer_of(0, half, 7), *b = trainer_of(half, n, 7),
                   *all = trainer_of(0, n, 7);
    size_t nn = moeh_trainer_n_norm(all);
    assert_int_equal(nn, g_ds->f_static + g_ds->f_ts);
    double *sa = calloc(3 * nn, sizeof(double)), *sb = calloc(3 * nn, sizeof(double)),
           *sall = calloc(3 * nn, sizeof(double));
    moeh_trainer_local_stats(a, sa);
    moeh_trainer_local_stats(b, sb);
    moeh_trainer_local_stats(all, sall);
    /* static feature 0 computed directly over the train rows */
    double cnt = 0, sum = 0;
    for (size_t i = 0; i < n; i++)
        if (g_ds->split[i] == MOEH_SPLIT_TRAIN && isfinite(g_ds->static_x[i * g_ds->f_static])) {
            cnt += 1;
            sum += g_ds->static_x[i * g_ds->f_static];
        }
    assert_true(sall[0] == cnt && fabs(sall[1] - sum) <= 1e-9 * fabs(sum) + 1e-9);
    assert_true(cnt > 0);
    /* two sites' sums give the pooled statistics, hence the same normalisation */
    float *m1 = malloc(nn * sizeof(float)), *s1 = malloc(nn * sizeof(float)),
          *m2 = malloc(nn * sizeof(float)), *s2 = malloc(nn * sizeof(float));
    for (size_t i = 0; i < 3 * nn; i++)
        sa[i] += sb[i];
    moeh_norm_from_stats(sa, nn, m1, s1);
    moeh_norm_from_stats(sall, nn, m2, s2);
    for (size_t i = 0; i < nn; i++) {
        assert_true(fabsf(m1[i] - m2[i]) <= 1e-5f * (1 + fabsf(m2[i])));
        assert_true(fabsf(s1[i] - s2[i]) <= 1e-5f * (1 + s2[i]) && s2[i] >= 1e-3f);
    }
    free(sa), free(sb), free(sall), free(m1), free(s1), free(m2), free(s2);
    moeh_trainer_destroy(&a);
    moeh_trainer_destroy(&b);
    moeh_trainer_destroy(&all);
}

/* Trains t for `epochs` in `phase` (batches of 32, AdamW defaults with learning rate lr, FedProx
 * weight mu, seed 1); the result in *res. */
static void train(moeh_trainer_t *t, uint32_t epochs, moeh_phase_t phase, float lr, float mu,
                  moeh_train_result_t *res)
{
    moeh_train_cfg_t tc = {.epochs = epochs,
                           .batch_size = 32,
                           .adamw = moeh_adamw_defaults(),
                           .phase = phase,
                           .prox_mu = mu,
                           .seed = 1};
    if (lr > 0) tc.adamw.lr = lr;
    moeh_err_t err = {0};
    int rc = moeh_trainer_train(t, &tc, res, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
}

static double dist_after_training(float mu)
{
    moeh_trainer_t *t = trainer_of(0, g_ds->n, 7);
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(t));
    float *w0 = malloc(p->n * sizeof(float));
    memcpy(w0, p->w, p->n * sizeof(float));
    moeh_train_result_t res;
    train(t, 2, MOEH_PHASE_JOINT, 1e-2f, mu, &res);
    assert_true(res.steps > 0 && isfinite(res.mean_loss));
    double d = 0;
    for (size_t i = 0; i < p->n; i++)
        d += ((double)p->w[i] - w0[i]) * ((double)p->w[i] - w0[i]);
    free(w0);
    moeh_trainer_destroy(&t);
    return sqrt(d);
}

static void test_fedprox_stays_nearer(void **state)
{
    double free_d = dist_after_training(0.0f), prox_d = dist_after_training(10.0f);
    print_message("distance from the anchor: mu 0 %.4f, mu 10 %.4f\n", free_d, prox_d);
    assert_true(prox_d < 0.8 * free_d);
}

static void test_group_samples_and_eval_sums(void **state)
{
    moeh_trainer_t *t = trainer_of(0, g_ds->n, 1); /* an EHR-only site */
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(t));
    moeh_train_result_t res;
    train(t, 1, MOEH_PHASE_JOINT, 0, 0, &res);
    int gi = moeh_params_group_index(p, "encoder_img"),
        gn = moeh_params_group_index(p, "encoder_notes"),
        ge = moeh_params_group_index(p, "encoder_ehr"), gh = moeh_params_group_index(p, "heads");
    assert_int_equal(res.group_samples[gi], 0);
    assert_int_equal(res.group_samples[gn], 0);
    assert_int_equal(res.group_samples[ge], res.samples);
    assert_int_equal(res.group_samples[gh], res.samples);
    assert_int_equal(res.samples, moeh_trainer_rows(t, MOEH_SPLIT_TRAIN));

    const uint32_t bins = 50;
    uint32_t *hist = calloc((size_t)MOEH_N_SLICES * 3 * 2 * bins, sizeof(uint32_t));
    float *gate =
        calloc((size_t)MOEH_N_COMBOS * moeh_moe_n_experts(moeh_trainer_model(t)), sizeof(float));
    moeh_eval_sums_t es = {.hist = hist, .gate_sum = gate};
    moeh_err_t err = {0};
    assert_int_equal(moeh_trainer_evaluate(t, MOEH_SPLIT_TEST, bins, &es, NULL, NULL, &err), 0);
    size_t test_rows = moeh_trainer_rows(t, MOEH_SPLIT_TEST), labels = 0, in_slice0 = 0;
    const moeh_dataset_t *ds = moeh_trainer_dataset(t);
    for (size_t i = 0; i < ds->n; i++)
        if (ds->split[i] == MOEH_SPLIT_TEST)
            for (int k = 0; k < 3; k++)
                labels += ds->label_mask[i * 3 + k];
    for (size_t i = 0; i < (size_t)3 * 2 * bins; i++)
        in_slice0 += hist[i];
    assert_int_equal(es.n_labels, labels);
    assert_int_equal(in_slice0, labels);
    assert_int_equal(es.combo_rows[0], test_rows); /* every row is EHR only (combination 1) */
    for (int c = 1; c < MOEH_N_COMBOS; c++)
        assert_int_equal(es.combo_rows[c], 0);
    /* the gate's weights of each row sum to 1 */
    double gsum = 0;
    for (size_t e = 0; e < moeh_moe_n_experts(moeh_trainer_model(t)); e++)
        gsum += gate[e];
    assert_true(fabs(gsum - (double)test_rows) < 1e-3 * (double)test_rows);
    free(hist);
    free(gate);
    moeh_trainer_destroy(&t);
}

/* Evaluation and prediction route with the learned gate whatever phase the last training
 * used: after a warm-up round they score exactly as with the joint phase set by hand. */
static void test_eval_uses_learned_gate(void **state)
{
    moeh_trainer_t *t = trainer_of(0, g_ds->n, 7);
    moeh_moe_t *m = moeh_trainer_model(t);
    moeh_train_result_t res;
    train(t, 1, MOEH_PHASE_WARMUP, 0, 0, &res);
    size_t n = moeh_trainer_rows(t, MOEH_SPLIT_TEST);
    float *after_warmup = malloc(n * 3 * sizeof(float)), *joint = malloc(n * 3 * sizeof(float));
    moeh_err_t err = {0};
    assert_int_equal(moeh_trainer_predict(t, MOEH_SPLIT_TEST, after_warmup, NULL, &err), 0);
    moeh_moe_set_phase(m, MOEH_PHASE_JOINT);
    assert_int_equal(moeh_trainer_predict(t, MOEH_SPLIT_TEST, joint, NULL, &err), 0);
    assert_memory_equal(after_warmup, joint, n * 3 * sizeof(float));
    const uint32_t bins = 50;
    uint32_t *hist = calloc((size_t)MOEH_N_SLICES * 3 * 2 * bins, sizeof(uint32_t));
    float *gate = calloc((size_t)MOEH_N_COMBOS * moeh_moe_n_experts(m), sizeof(float));
    moeh_eval_sums_t es = {.hist = hist, .gate_sum = gate};
    moeh_moe_set_phase(m, MOEH_PHASE_WARMUP);
    assert_int_equal(moeh_trainer_evaluate(t, MOEH_SPLIT_TEST, bins, &es, NULL, NULL, &err), 0);
    double loss_a = es.loss_sum;
    moeh_moe_set_phase(m, MOEH_PHASE_JOINT);
    assert_int_equal(moeh_trainer_evaluate(t, MOEH_SPLIT_TEST, bins, &es, NULL, NULL, &err), 0);
    assert_true(loss_a == es.loss_sum && es.n_labels > 0);
    free(hist);
    free(gate);
    free(after_warmup);
    free(joint);
    moeh_trainer_destroy(&t);
}

MOEH_TEST_MAIN(group_setup, group_teardown, cmocka_unit_test(test_stats_and_pooled_norm),
               cmocka_unit_test(test_fedprox_stays_nearer),
               cmocka_unit_test(test_group_samples_and_eval_sums),
               cmocka_unit_test(test_eval_uses_learned_gate))
