/* test_synth.c - the synthetic MIMIC-IV: extracting it gives back exactly the cohort, labels,
 * label masks and modality availability that the generator intended (truth.csv); the
 * generator is deterministic per seed; the lab binning agrees with tests/check_cohort.py;
 * the oracle AUROC is reported; each modality carries its latent signal (vitals h, labs k,
 * image m, notes n); truth.json is JSON holding the generator's counts and oracle AUROCs (for
 * both profiles). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_csv.h"
#include "moeh_extract.h"
#include "moeh_synth.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

MOEH_TEST_DIR_FIXTURE("synth")

typedef struct {
    int64_t subj, hadm;
    int lab[3], notes, cxr;
    double lung, onc, hemo, renal;
} truth_t;

static size_t read_truth(const char *dir, truth_t *out, size_t cap)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/truth.csv", dir);
    moeh_csv_t *r;
    moeh_err_t err = {0};
    assert_int_equal(moeh_csv_open(p, &r, &err), 0);
    int c_in = moeh_csv_col(r, "in_cohort"), c_l0 = moeh_csv_col(r, "label_mortality"),
        c_n = moeh_csv_col(r, "has_notes"), c_x = moeh_csv_col(r, "has_cxr"),
        c_m = moeh_csv_col(r, "lung"), c_o = moeh_csv_col(r, "notes_only"),
        c_h = moeh_csv_col(r, "hemodynamic"), c_k = moeh_csv_col(r, "renal");
    size_t n = 0;
    while (moeh_csv_next(r, &err) == 1) {
        if (!moeh_csv_eq(moeh_csv_field(r, (size_t)c_in), "1")) continue;
        assert_true(n < cap);
        truth_t *t = &out[n++];
        int64_t v;
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, 0), &t->subj), 0);
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, 1), &t->hadm), 0);
        for (int k = 0; k < 3; k++) {
            assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, (size_t)(c_l0 + k)), &v), 0);
            t->lab[k] = (int)v;
        }
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, (size_t)c_n), &v), 0);
        t->notes = (int)v;
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, (size_t)c_x), &v), 0);
        t->cxr = (int)v;
        assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, (size_t)c_m), &t->lung), 0);
        assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, (size_t)c_o), &t->onc), 0);
        assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, (size_t)c_h), &t->hemo), 0);
        assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, (size_t)c_k), &t->renal), 0);
    }
    moeh_csv_destroy(&r);
    return n;
}

static int cmp_truth(const void *a, const void *b)
{
    const truth_t *x = a, *y = b;
    if (x->subj != y->subj) return x->subj < y->subj ? -1 : 1;
    return x->hadm < y->hadm ? -1 : x->hadm > y->hadm;
}

static uint64_t file_hash(const char *dir, const char *rel)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    char *buf;
    size_t len;
    moeh_err_t err = {0};
    assert_int_equal(moeh_file_read_all(p, (size_t)1 << 30, &buf, &len, &err), 0);
    uint64_t h = XXH64(buf, len, 0);
    free(buf);
    return h;
}

/* dir/truth.json parses and holds st's counts and (to 4 decimals) oracle AUROCs. */
static void check_truth_json(const char *dir, const moeh_synth_stats_t *st, uint64_t seed, bool het)
{
    char p[400], *txt = NULL;
    size_t len = 0;
    moeh_err_t err = {0};
    snprintf(p, sizeof p, "%s/truth.json", dir);
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &txt, &len, &err), 0);
    assert_true(len > 0 && txt[len - 1] == '\n');
    cJSON *j = cJSON_Parse(txt);
    assert_non_null(j);
#define NUM(o, k) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, k))
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "generator")), "moeh synth");
    assert_true(NUM(j, "seed") == (double)seed);
    assert_true(NUM(j, "cohort") == (double)st->cohort);
    assert_true(NUM(j, "subjects") == (double)st->subjects);
    assert_true(NUM(j, "admissions") == (double)st->admissions);
    const cJSON *pos = cJSON_GetObjectItem(j, "positives"),
                *lab = cJSON_GetObjectItem(j, "labelled"),
                *orc = cJSON_GetObjectItem(j, "oracle_auroc"),
                *lim = cJSON_GetObjectItem(j, "limited_oracle_auroc"),
                *mods = cJSON_GetObjectItem(j, "modalities");
    for (int k = 0; k < MOEH_N_TASKS; k++) {
        const char *t = moeh_task_names[k];
        assert_true(NUM(pos, t) == (double)st->positives[k]);
        assert_true(NUM(lab, t) == (double)st->labelled[k]);
        if (isnan(st->oracle_auroc[k])) /* one class: no AUROC, and NaN is not JSON */
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(orc, t)));
        else
            assert_true(fabs(NUM(orc, t) - st->oracle_auroc[k]) <= 5e-5 + 1e-12);
        if (het) assert_true(fabs(NUM(lim, t) - st->limited_auroc[k]) <= 5e-5 + 1e-12);
    }
    for (int k = 0; k < MOEH_N_MODS; k++)
        assert_true(NUM(mods, moeh_mod_names[k]) == (double)st->avail[k]);
    if (het) {
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "profile")),
                            "heterogeneous");
        const cJSON *h = cJSON_GetObjectItem(j, "hospitals");
        assert_int_equal(cJSON_GetArraySize(h), 4);
        for (int k = 0; k < 4; k++)
            assert_true(cJSON_GetNumberValue(cJSON_GetArrayItem(h, k)) == (double)st->hosp_n[k]);
        assert_true(NUM(cJSON_GetObjectItem(j, "kinds"), "R") == (double)st->kind_n[0]);
    } else {
        assert_null(lim);
        assert_null(cJSON_GetObjectItem(j, "profile"));
    }
#undef NUM
    cJSON_Delete(j);
    free(txt);
}

#define N_ADM 400

static void test_roundtrip(void **state)
{
    char db[300], out[300];
    snprintf(db, sizeof db, "%s/db", g_dir);
    moeh_synth_opts_t so;
    moeh_synth_opts_default(&so);
    so.admissions = N_ADM;
    so.seed = 11;
    so.img_px = 128;
    moeh_synth_stats_t ss;
    moeh_err_t err = {0};
    int rc = moeh_synth(&so, db, &ss, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_int_equal(ss.cohort, N_ADM);
    assert_true(ss.admissions > N_ADM); /* excluded admissions exist */
    for (int k = 0; k < 3; k++)
        assert_true(ss.oracle_auroc[k] > 0.65 && ss.oracle_auroc[k] < 0.95);
    check_truth_json(db, &ss, so.seed, false);

    moeh_extract_opts_t eo;
    moeh_extract_opts_default(&eo);
    char m[600], n[600], c[600];
    snprintf(m, sizeof m, "%s/mimic", db);
    snprintf(n, sizeof n, "%s/note", db);
    snprintf(c, sizeof c, "%s/cxr", db);
    eo.mimic_dir = m, eo.note_dir = n, eo.cxr_dir = c;
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t es;
    if ((rc = moeh_extract(&eo, &ds, &es, &err))) fail_msg("%s", err.msg);
    assert_int_equal(es.malformed, 0);
    assert_true(es.have_vitals && es.have_labs && es.have_notes && es.have_cxr);

    static truth_t tr[N_ADM + 1];
    size_t nt = read_truth(db, tr, N_ADM + 1);
    qsort(tr, nt, sizeof *tr, cmp_truth);
    assert_int_equal(nt, ds->n);
    size_t img_hi = 0, img_lo = 0;
    double bright_hi = 0, bright_lo = 0;
    for (size_t i = 0; i < nt; i++) {
        assert_int_equal(ds->ids[2 * i], tr[i].subj);
        assert_int_equal(ds->ids[2 * i + 1], tr[i].hadm);
        for (int k = 0; k < 3; k++) {
            if (tr[i].lab[k] < 0) {
                assert_int_equal(ds->label_mask[3 * i + (size_t)k], 0);
            } else {
                assert_int_equal(ds->label_mask[3 * i + (size_t)k], 1);
                assert_int_equal((int)ds->labels[3 * i + (size_t)k], tr[i].lab[k]);
            }
        }
        assert_int_equal(ds->avail[3 * i + 1], tr[i].notes);
        assert_int_equal(ds->avail[3 * i + 2], tr[i].cxr);
        assert_int_equal(ds->note_offsets[i + 1] > ds->note_offsets[i], tr[i].notes);
        if (tr[i].cxr) { /* mean brightness of the lung fields follows the latent m */
            const uint8_t *im = ds->images + i * 64 * 64;
            double s = 0;
            for (size_t y = 20; y < 44; y++)
                for (size_t x = 10; x < 22; x++)
                    s += im[y * 64 + x];
            if (tr[i].lung > 0.5)
                bright_hi += s, img_hi++;
            else if (tr[i].lung < -0.5)
                bright_lo += s, img_lo++;
        }
    }
    assert_true(img_hi > 10 && img_lo > 10);
    assert_true(bright_hi / (double)img_hi > 1.15 * bright_lo / (double)img_lo);
    /* the notes carry the notes-only latent: its phrase appears where it is high */
    int32_t meta = moeh_token_id("metastatic", 10);
    size_t hits_hi = 0, hits_lo = 0, hi = 0, lo = 0;
    for (size_t i = 0; i < nt; i++) {
        if (!tr[i].notes) continue;
        bool hit = false;
        for (int64_t q = ds->note_offsets[i]; q < ds->note_offsets[i + 1]; q++)
            hit |= ds->note_tokens[q] == meta;
        if (tr[i].onc > 1.0)
            hi++, hits_hi += hit;
        else if (tr[i].onc < 0.5)
            lo++, hits_lo += hit;
    }
    assert_true(hi > 5 && hits_hi * 2 > hi && hits_lo == 0);

    /* vitals carry h (heart rate), labs carry k (creatinine): mean over observed hours */
    size_t F = ds->f_ts, v_hr = F, v_cr = F;
    for (size_t v = 0; v < F; v++) {
        v_hr = strcmp(ds->ts_names[v], "hr") ? v_hr : v;
        v_cr = strcmp(ds->ts_names[v], "creatinine") ? v_cr : v;
    }
    assert_true(v_hr < F && v_cr < F);
    double acc[2][2] = {{0, 0}, {0, 0}}, cnt[2][2] = {{0, 0}, {0, 0}};
    for (size_t i = 0; i < nt; i++)
        for (size_t t = 0; t < 48; t++) {
            size_t k = (i * 48 + t) * F;
            int gh = tr[i].hemo > 1 ? 1 : tr[i].hemo < -1 ? 0 : -1;
            int gk = tr[i].renal > 1 ? 1 : tr[i].renal < -1 ? 0 : -1;
            if (gh >= 0 && ds->ts_mask[k + v_hr] == 1)
                acc[0][gh] += ds->ts_value[k + v_hr], cnt[0][gh]++;
            if (gk >= 0 && ds->ts_mask[k + v_cr] == 1)
                acc[1][gk] += ds->ts_value[k + v_cr], cnt[1][gk]++;
        }
    assert_true(acc[0][1] / cnt[0][1] > acc[0][0] / cnt[0][0] + 20); /* about 13 bpm per sd */
    assert_true(acc[1][1] / cnt[1][1] > 2 * acc[1][0] / cnt[1][0]);  /* exp(0.5 k) */

    snprintf(out, sizeof out, "%s/ds", g_dir);
    assert_int_equal(moeh_dataset_write(ds, out, &err), 0);
    moeh_dataset_destroy(&ds);
    const char *src = getenv("MOEH_SOURCE_DIR");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/check_cohort.py' '%s' '%s' > /dev/null",
             src ? src : "..", m, out);
    assert_int_equal(system(cmd), 0);

    /* determinism: the same seed gives the same bytes; --no-images changes nothing else */
    char db2[300];
    snprintf(db2, sizeof db2, "%s/db2", g_dir);
    so.images = false;
    assert_int_equal(moeh_synth(&so, db2, &ss, &err), 0);
    const char *files[] = {"truth.csv",
                           "mimic/hosp/admissions.csv.gz",
                           "mimic/icu/chartevents.csv.gz",
                           "mimic/hosp/labevents.csv.gz",
                           "note/note/radiology.csv.gz",
                           "cxr/mimic-cxr-2.0.0-metadata.csv.gz"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        assert_true(file_hash(db, files[i]) == file_hash(db2, files[i]));
    so.seed = 12;
    assert_int_equal(moeh_synth(&so, db2, &ss, &err), 0);
    assert_true(file_hash(db, "truth.csv") != file_hash(db2, "truth.csv"));
}

/* truth.json of the heterogeneous profile (the limited oracle, the kinds and the hospitals),
 * and of a one-admission cohort, whose oracle AUROCs are undefined (null; it said nan). */
static void test_truth_json(void **state)
{
    (void)state;
    char db[300];
    snprintf(db, sizeof db, "%s/het", g_dir);
    moeh_synth_opts_t so;
    moeh_synth_opts_default(&so);
    so.profile = MOEH_SYNTH_HETEROGENEOUS;
    so.admissions = 200;
    so.seed = 18446744073709551557ull; /* above 2^53: written exactly */
    so.images = false;
    moeh_synth_stats_t ss;
    moeh_err_t err = {0};
    if (moeh_synth(&so, db, &ss, &err)) fail_msg("%s", err.msg);
    check_truth_json(db, &ss, so.seed, true);
    char p[400], *txt = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/truth.json", db);
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &txt, &len, &err), 0);
    assert_non_null(strstr(txt, "18446744073709551557"));
    free(txt);
    snprintf(db, sizeof db, "%s/one", g_dir);
    moeh_synth_opts_default(&so);
    so.admissions = 1;
    so.images = false;
    if (moeh_synth(&so, db, &ss, &err)) fail_msg("%s", err.msg);
    assert_true(isnan(ss.oracle_auroc[0]));
    check_truth_json(db, &ss, so.seed, false);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_roundtrip), cmocka_unit_test(test_truth_json))
