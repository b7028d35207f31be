/* test_split.c - site splits: spec parsing, whole subjects per site, admission shares with
 * and without Dirichlet case-mix skew, skew that shows in the label prevalence, modalities a
 * site does not have are dropped, subject-grouped splits inside a site, the summary table,
 * natural sites from first_careunit, determinism. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_split.h"

#include <math.h>
#include <string.h>

MOEH_TEST_DIR_FIXTURE("split")

#define NROWS 3000

/* subjects with 1-3 admissions each, random labels, 3 care units, all modalities */
static moeh_dataset_t *make(void)
{
    moeh_dataset_t *ds;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_create(NROWS, 4, 2, 8, &ds, &err), 0);
    const char *sn[] = {"age", "first_careunit=Medical Intensive Care Unit (MICU)",
                        "first_careunit=Coronary Care Unit (CCU)", "first_careunit=OTHER"};
    const char *tn[] = {"hr", "sbp"};
    assert_int_equal(moeh_dataset_set_names(ds, sn, tn, NULL, &err), 0);
    moeh_rng_t r;
    moeh_rng_seed(&r, 5);
    int64_t subj = 100;
    int32_t tok[NROWS];
    for (size_t i = 0; i < NROWS; i++) {
        if (i == 0 || moeh_rng_uniform(&r) < 0.55) subj++;
        ds->ids[2 * i] = subj, ds->ids[2 * i + 1] = 1000 + (int64_t)i;
        ds->static_x[4 * i + 1 + (size_t)(subj % 3)] = 1;
        for (int t = 0; t < 3; t++) {
            ds->labels[3 * i + (size_t)t] = moeh_rng_uniform(&r) < 0.2 ? 1.0f : 0.0f;
            ds->label_mask[3 * i + (size_t)t] = 1;
            ds->avail[3 * i + (size_t)t] = 1;
        }
        ds->note_offsets[i] = (int64_t)i;
        tok[i] = (int32_t)i;
        memset(ds->images + 64 * i, 7, 64);
    }
    ds->note_offsets[NROWS] = NROWS;
    assert_int_equal(moeh_dataset_set_tokens(ds, tok, NROWS, &err), 0);
    return ds;
}

static void test_parse(void **state)
{
    moeh_split_opts_t o;
    moeh_err_t err = {0};
    moeh_split_opts_default(&o);
    assert_int_equal(moeh_split_parse_sites("A:0.5:ehr+notes+img,B:0.3:ehr+img,C:0.2", &o, &err),
                     0);
    assert_int_equal(o.n_sites, 3);
    assert_int_equal(o.sites[1].mods, 1u | 4u);
    assert_int_equal(o.sites[2].mods, 7u);
    assert_int_equal(moeh_split_parse_sites("careunit", &o, &err), 0);
    assert_true(o.by_careunit);
    const char *bad[] = {"A", "A:0", "A:x", "A:1:ehr+xray", "A:1,A:2", "a/b:1", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(moeh_split_parse_sites(bad[i], &o, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "--sites"));
    }
}

static double prevalence_spread(const moeh_dataset_t *ds, const uint32_t *site, size_t K)
{
    double pos[8] = {0}, cnt[8] = {0}, lo = 1, hi = 0;
    for (size_t i = 0; i < ds->n; i++)
        cnt[site[i]]++, pos[site[i]] += ds->labels[3 * i];
    for (size_t k = 0; k < K; k++) {
        double p = pos[k] / cnt[k];
        lo = fmin(lo, p), hi = fmax(hi, p);
    }
    return hi - lo;
}

static void test_assign(void **state)
{
    moeh_dataset_t *ds = make();
    moeh_split_opts_t o;
    moeh_err_t err = {0};
    static uint32_t site[NROWS], site2[NROWS];
    double spread[2];
    for (int pass = 0; pass < 2; pass++) {
        moeh_split_opts_default(&o);
        assert_int_equal(moeh_split_parse_sites("A:0.5,B:0.3,C:0.2", &o, &err), 0);
        o.alpha = pass ? 0.2 : 0;
        assert_int_equal(moeh_split_assign(ds, &o, site, &err), 0);
        size_t cnt[3] = {0};
        for (size_t i = 0; i < NROWS; i++) {
            assert_true(site[i] < 3);
            cnt[site[i]]++;
            if (i && ds->ids[2 * i] == ds->ids[2 * i - 2])
                assert_int_equal(site[i], site[i - 1]); /* whole subjects */
        }
        assert_true(fabs((double)cnt[0] - 1500) < 60);
        assert_true(fabs((double)cnt[1] - 900) < 60);
        assert_true(fabs((double)cnt[2] - 600) < 60);
        spread[pass] = prevalence_spread(ds, site, 3);
        assert_int_equal(moeh_split_assign(ds, &o, site2, &err), 0);
        assert_memory_equal(site, site2, sizeof site); /* deterministic */
    }
    assert_true(spread[0] < 0.05);
    assert_true(spread[1] > spread[0] + 0.05);
    moeh_dataset_destroy(&ds);
}

static void test_write(void **state)
{
    moeh_dataset_t *ds = make(), *site = NULL;
    moeh_split_opts_t o;
    moeh_err_t err = {0};
    moeh_split_opts_default(&o);
    assert_int_equal(
        moeh_split_parse_sites("A:0.5:ehr+notes+img,B:0.3:ehr+img,C:0.2:ehr", &o, &err), 0);
    char out[512], p[700];
    snprintf(out, sizeof out, "%s/sites", g_dir);
    assert_int_equal(moeh_split_write(ds, &o, out, NULL, &err), 0);
    size_t total = 0;
    const char *names[] = {"A", "B", "C"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/%s", out, names[k]);
        int rc = moeh_dataset_open(p, true, &site, &err);
        if (rc) fail_msg("%s", err.msg);
        total += site->n;
        for (size_t i = 0; i < site->n; i++) {
            assert_int_equal(site->avail[3 * i + 1], k == 0);
            assert_int_equal(site->avail[3 * i + 2], k <= 1);
            assert_int_equal(site->images[64 * i], k <= 1 ? 7 : 0);
            if (i && site->ids[2 * i] == site->ids[2 * i - 2])
                assert_int_equal(site->split[i], site->split[i - 1]);
        }
        assert_int_equal(site->n_tokens, k == 0 ? site->n : 0);
        cJSON *js = cJSON_GetObjectItem(site->extra, "site");
        assert_string_equal(cJSON_GetObjectItem(js, "name")->valuestring, names[k]);
        moeh_dataset_destroy(&site);
    }
    assert_int_equal(total, NROWS);
    char *txt;
    size_t len;
    snprintf(p, sizeof p, "%s/summary.tsv", out);
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &txt, &len, &err), 0);
    assert_non_null(strstr(txt, "site\tmodalities\tsubjects\tadmissions"));
    assert_non_null(strstr(txt, "\nB\tehr+img\t"));
    free(txt);

    /* natural sites: one per first care unit */
    moeh_split_opts_default(&o);
    assert_int_equal(moeh_split_parse_sites("careunit", &o, &err), 0);
    snprintf(out, sizeof out, "%s/units", g_dir);
    assert_int_equal(moeh_split_write(ds, &o, out, NULL, &err), 0);
    assert_int_equal(o.n_sites, 3);
    assert_string_equal(o.sites[0].name, "MICU");
    assert_string_equal(o.sites[1].name, "CCU");
    snprintf(p, sizeof p, "%s/CCU", out);
    assert_int_equal(moeh_dataset_open(p, true, &site, &err), 0);
    for (size_t i = 0; i < site->n; i++)
        assert_true(site->static_x[4 * i + 2] == 1.0f);
    moeh_dataset_destroy(&site);
    moeh_dataset_destroy(&ds);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_parse), cmocka_unit_test(test_assign),
               cmocka_unit_test(test_write))
