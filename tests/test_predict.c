/* test_predict.c - `moeh predict` (sim/cmd_predict.c) through the moeh binary in
 * MOEH_BIN_DIR, on a small synthetic MIMIC-IV (synth -> extract, made once with the library)
 * and a model file written by `moeh train` (one epoch, a tiny model):
 *  - one CSV row per admission in dataset order with the admission's hadm_id and modality
 *    combination, probabilities in [0,1], gate weights summing to 1 and the argmax expert;
 *  - the same admissions with modalities removed (EHR gone, everything gone) are scored;
 *  - a dataset whose variable units, variable count or schema differ is refused naming the
 *    difference (exit 1); usage errors exit 2; a corrupt model file exits 1 naming the file;
 *  - `moeh run` (a federation of real processes) writes a model file with the sites' feature
 *    names and federated provenance, which predict reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_modelfile.h"
#include "cli_util.h"
#include "synth_fixture.h"
#include "test_util.h"

#include <math.h>
#include <string.h>
#include <sys/wait.h>

static char g_dir[256], g_bin[1024], g_ds[320], g_model[512];

/* Runs "moeh ARGS" in DIR (its output in DIR/out) and returns the exit status. */
static int run(const char *args)
{
    return cli_run(g_dir, g_bin, args);
}

static char *slurp(const char *path)
{
    return cli_slurp(path);
}

static bool out_has(const char *s)
{
    return cli_out_has(g_dir, s);
}

static int group_setup(void **state)
{
    (void)state;
    moeh_err_t err = {0};
    moeh_dataset_t *ds = NULL;
    int rc = moeh_test_tmpdir(g_dir, sizeof g_dir, "predict");
    cli_bin(g_bin, sizeof g_bin, "moeh");
    snprintf(g_ds, sizeof g_ds, "%s/cohort", g_dir);
    snprintf(g_model, sizeof g_model, "%s/train/model.safetensors", g_dir);
    if (!rc) rc = moeh_test_synth_cohort(g_dir, 300, 11, &ds, &err);
    if (!rc) rc = moeh_dataset_write(ds, g_ds, &err);
    moeh_dataset_destroy(&ds);
    if (rc) {
        fprintf(stderr, "group setup: %s\n", err.msg);
        return rc;
    }
    char args[1200];
    snprintf(args, sizeof args,
             "train --dataset %s --epochs 2 --d-emb 16 --d-hidden 16 --note-buckets 1024 "
             "--out %s/train",
             g_ds, g_dir);
    return run(args) == 0 ? 0 : (fprintf(stderr, "moeh train failed\n"), -1);
}

static int group_teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(g_dir);
}

/* Writes a copy of the cohort into DIR/name keeping modalities keep_mods, with unit 0 of the
 * hourly variables replaced by unit0 (NULL: kept). */
static void write_variant(const char *name, unsigned keep_mods, const char *unit0, char *out,
                          size_t cap)
{
    moeh_dataset_t *ds = NULL, *sub = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_open(g_ds, true, &ds, &err), 0);
    size_t *idx = malloc(ds->n * sizeof *idx);
    for (size_t i = 0; i < ds->n; i++)
        idx[i] = i;
    assert_int_equal(moeh_dataset_subset(ds, idx, ds->n, keep_mods, &sub, &err), 0);
    if (unit0) {
        free(sub->ts_units[0]);
        sub->ts_units[0] = strdup(unit0);
    }
    snprintf(out, cap, "%s/%s", g_dir, name);
    assert_int_equal(moeh_dataset_write(sub, out, &err), 0);
    free(idx);
    moeh_dataset_destroy(&sub);
    moeh_dataset_destroy(&ds);
}

/* Predicts dataset dir into DIR/tag.csv and checks every row against the dataset. Returns the
 * number of rows per combination index + 1 (0: none) in counts. */
static void predict_and_check(const char *dir, const char *tag, size_t counts[MOEH_N_COMBOS + 1])
{
    char args[1400], csv[400];
    snprintf(csv, sizeof csv, "%s/%s.csv", g_dir, tag);
    snprintf(args, sizeof args, "predict --model %s --dataset %s --out %s --batch-size 7", g_model,
             dir, csv);
    assert_int_equal(run(args), 0);
    assert_true(out_has("admissions scored"));
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_open(dir, false, &ds, &err), 0);
    char *txt = slurp(csv);
    assert_non_null(txt);
    char *save = NULL, *line = strtok_r(txt, "\n", &save);
    assert_string_equal(line, "admission_id,combo,p_mortality,p_los7,p_readmit30,gate_0,gate_1,"
                              "gate_2,gate_3,gate_4,gate_5,gate_6,expert");
    memset(counts, 0, (MOEH_N_COMBOS + 1) * sizeof *counts);
    size_t rows = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        assert_true(rows < ds->n);
        long long id;
        char combo[8];
        double p[MOEH_N_TASKS], g[MOEH_N_COMBOS];
        int expert, used = 0;
        assert_int_equal(sscanf(line, "%lld,%7[^,],%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%d%n",
                                &id, combo, &p[0], &p[1], &p[2], &g[0], &g[1], &g[2], &g[3], &g[4],
                                &g[5], &g[6], &expert, &used),
                         13);
        assert_int_equal((size_t)used, strlen(line));
        assert_int_equal(id, ds->ids[rows * 2 + 1]);
        int c = moeh_combo_of(ds->avail + rows * MOEH_N_MODS);
        assert_string_equal(combo, c >= 0 ? moeh_combo_names[c] : "none");
        counts[c + 1]++;
        for (int k = 0; k < MOEH_N_TASKS; k++)
            assert_true(p[k] >= 0 && p[k] <= 1);
        double sum = 0;
        int best = 0;
        for (int k = 0; k < MOEH_N_COMBOS; k++) {
            assert_true(g[k] >= 0 && g[k] <= 1);
            sum += g[k];
            if (g[k] > g[best]) best = k;
        }
        assert_true(fabs(sum - 1) < 1e-5);
        assert_int_equal(expert, best);
        rows++;
    }
    assert_int_equal(rows, ds->n);
    free(txt);
    moeh_dataset_destroy(&ds);
}

static void test_predict_rows(void **state)
{
    (void)state;
    size_t counts[MOEH_N_COMBOS + 1];
    predict_and_check(g_ds, "all", counts);
    assert_int_equal(counts[0], 0); /* the synthetic cohort always has the EHR */
    assert_true(counts[1 + 0] > 0 && counts[1 + 6] > 0); /* E and ENI both present */
    /* the same model file is read the same way twice: identical output */
    char a[400], b[400], args[1400];
    snprintf(a, sizeof a, "%s/all.csv", g_dir);
    snprintf(b, sizeof b, "%s/again.csv", g_dir);
    snprintf(args, sizeof args, "predict --model %s --dataset %s --out %s --batch-size 64", g_model,
             g_ds, b);
    assert_int_equal(run(args), 0);
    /* the batch size changes BLAS blocking, hence the last bits, not a row's prediction */
    char *ta = slurp(a), *tb = slurp(b), *sa = NULL, *sb = NULL;
    char *la = strtok_r(ta, "\n", &sa), *lb = strtok_r(tb, "\n", &sb);
    size_t n = 0;
    for (; la && lb; la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb), n++) {
        if (n == 0) {
            assert_string_equal(la, lb);
            continue;
        }
        char *fa = NULL, *fb = NULL, *xa = strtok_r(la, ",", &fa), *xb = strtok_r(lb, ",", &fb);
        for (int f = 0; xa && xb; f++) {
            if (f < 2 || f == 12)
                assert_string_equal(xa, xb); /* id, combo, expert */
            else
                assert_true(fabs(strtod(xa, NULL) - strtod(xb, NULL)) < 1e-5);
            xa = strtok_r(NULL, ",", &fa), xb = strtok_r(NULL, ",", &fb);
        }
        assert_true(!xa && !xb);
    }
    assert_true(!la && !lb && n > 1);
    free(ta);
    free(tb);
}

static void test_missing_modalities(void **state)
{
    (void)state;
    char dir[400];
    size_t counts[MOEH_N_COMBOS + 1];
    write_variant("no-ehr", 2 | 4, NULL, dir, sizeof dir); /* notes and images only */
    predict_and_check(dir, "no-ehr", counts);
    assert_int_equal(counts[1 + 0] + counts[1 + 2] + counts[1 + 4] + counts[1 + 6], 0);
    assert_true(counts[0] > 0); /* admissions that had only the EHR now have nothing */
    write_variant("nothing", 0, NULL, dir, sizeof dir);
    predict_and_check(dir, "nothing", counts);
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_open(dir, false, &ds, &err), 0);
    assert_int_equal(counts[0], ds->n);
    moeh_dataset_destroy(&ds);
}

static void test_refusals(void **state)
{
    (void)state;
    char dir[400], out[400];
    const char *d = g_dir, *b = g_bin, *predict = "predict --model %s --dataset %s --out %s";
    snprintf(out, sizeof out, "%s/refused.csv", g_dir);
    write_variant("kpa", 7, "kPa", dir, sizeof dir);
    cli_expect(d, b, 1,
               "does not fit the model: hourly variable 0 is 'hr' (bpm) in the model, "
               "'hr' (kPa) in the dataset",
               predict, g_model, dir, out);
    /* a dataset of another schema (tasks) */
    write_variant("schema", 7, NULL, dir, sizeof dir);
    char meta[600];
    snprintf(meta, sizeof meta, "%s/meta.json", dir);
    char *txt = slurp(meta), *at = strstr(txt, "\"los7\"");
    assert_non_null(at);
    memcpy(at, "\"los3\"", 6);
    moeh_err_t err = {0};
    assert_int_equal(moeh_file_write_atomic(meta, txt, strlen(txt), &err), 0);
    free(txt);
    cli_expect(d, b, 1, "los3", predict, g_model, dir, out);
    /* another number of static features: a dataset of 3 columns */
    moeh_dataset_t *ds = NULL;
    assert_int_equal(moeh_dataset_create(4, 3, 33, 64, &ds, &err), 0);
    const char *st[3] = {"a", "b", "c"};
    const char *ts[33], *un[33];
    for (int i = 0; i < 33; i++)
        ts[i] = "v", un[i] = "u";
    assert_int_equal(moeh_dataset_set_names(ds, st, ts, un, &err), 0);
    for (size_t i = 0; i < 4; i++)
        ds->avail[i * MOEH_N_MODS] = 1;
    snprintf(dir, sizeof dir, "%s/narrow", g_dir);
    assert_int_equal(moeh_dataset_write(ds, dir, &err), 0);
    moeh_dataset_destroy(&ds);
    cli_expect(d, b, 1, "does not fit the model: the model expects 35 static features", predict,
               g_model, dir, out);
    /* usage errors and a broken model file */
    cli_expect(d, b, 2, "--model, --dataset and --out are required", "predict --dataset x --out y");
    cli_expect(d, b, 0, "usage: moeh predict", "predict --help");
    cli_expect(d, b, 1, "meta.json: header length",
               "predict --model %s/meta.json --dataset %s --out %s", g_ds, g_ds, out);
}

static void test_federated_model_file(void **state)
{
    (void)state;
    char args[1400], model[400], site[400];
    snprintf(args, sizeof args,
             "run --out %s/fed --admissions 400 --rounds 1 --d-emb 16 --d-hidden 16 "
             "--note-buckets 1024 --timeout-s 240",
             g_dir);
    assert_int_equal(run(args), 0);
    snprintf(model, sizeof model, "%s/fed/model.safetensors", g_dir);
    assert_true(out_has(model)); /* moeh run prints where the model file is */
    moeh_modelfile_t *mf = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_modelfile_read(model, 0, &mf, &err), 0);
    assert_string_equal(mf->source, "federated");
    assert_string_equal(mf->strategy, "fedavg");
    assert_int_equal(mf->rounds, 1);
    assert_int_equal(mf->selected_round, 1);
    assert_int_equal(mf->sites, 4);
    assert_int_equal(mf->secagg, 1);
    assert_true(isnan(mf->dp_epsilon));
    assert_int_equal(mf->n_ts_names, mf->cfg.n_vars); /* from --feature-names */
    assert_string_equal(mf->ts_names[0], "hr");
    assert_int_equal(mf->n_static_names, mf->cfg.n_static);
    moeh_modelfile_destroy(&mf);
    snprintf(site, sizeof site, "%s/fed/sites/site-4", g_dir);
    size_t counts[MOEH_N_COMBOS + 1];
    snprintf(g_model, sizeof g_model, "%s", model);
    predict_and_check(site, "fed", counts);
}

MOEH_TEST_MAIN(group_setup, group_teardown, cmocka_unit_test(test_predict_rows),
               cmocka_unit_test(test_missing_modalities), cmocka_unit_test(test_refusals),
               cmocka_unit_test(test_federated_model_file))
