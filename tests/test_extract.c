/* test_extract.c - cohort extraction: on the real MIMIC-IV demo (labs only: chartevents is
 * absent from our copy), checked against tests/check_cohort.py, an independent standard-
 * library computation; on small hand-made tables for malformed rows (skipped with
 * file:line:column, or fatal with --strict) and missing tables; the variable map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_extract.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char g_dir[256];

static int setup(void **state)
{
    return moeh_test_tmpdir(g_dir, sizeof g_dir, "extract");
}

static int teardown(void **state)
{
    return moeh_test_rmtree(g_dir);
}

static const char *demo_dir(void)
{
    const char *d = getenv("MOEH_DEMO_DIR");
    return d ? d : "/work/shared/data/mimic-iv-demo";
}

static void test_demo(void **state)
{
    char p[512];
    snprintf(p, sizeof p, "%s/hosp/admissions.csv.gz", demo_dir());
    if (access(p, R_OK) != 0) skip(); /* the demo is a fixture outside the repository */
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    o.mimic_dir = demo_dir();
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    moeh_err_t err = {0};
    int rc = moeh_extract(&o, &ds, &st, &err);
    if (rc) fail_msg("%s", err.msg);
    /* the published demo: 275 admissions, 128 with an ICU stay; counts cross-checked by
     * check_cohort.py below */
    assert_int_equal(st.admissions, 275);
    assert_int_equal(st.with_icu, 128);
    assert_int_equal(st.cohort, 123);
    assert_false(st.have_vitals);
    assert_true(st.have_labs);
    assert_int_equal(st.avail[MOEH_MOD_EHR], 123);
    assert_int_equal(st.avail[MOEH_MOD_NOTES], 0);
    assert_int_equal(st.avail[MOEH_MOD_IMG], 0);
    assert_true(st.used_rows > 1000);
    char out[512];
    snprintf(out, sizeof out, "%s/demo", g_dir);
    assert_int_equal(moeh_dataset_write(ds, out, &err), 0);
    moeh_dataset_destroy(&ds);
    assert_int_equal(moeh_dataset_open(out, true, &ds, &err), 0);
    assert_int_equal(ds->n, 123);
    moeh_dataset_destroy(&ds);
    const char *src = getenv("MOEH_SOURCE_DIR");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/check_cohort.py' '%s' '%s'", src ? src : "..",
             demo_dir(), out);
    assert_int_equal(system(cmd), 0);
}

static void write_gz(const char *dir, const char *name, const char *text)
{
    char p[1400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    gzFile g = gzopen(p, "wb");
    assert_non_null(g);
    gzputs(g, text);
    gzclose(g);
}

/* A tiny database: subject 1 (adult) with two admissions, the first in the cohort and
 * readmitted after 10 days; subject 2 (adult) who dies on day 5; one malformed row. */
static void make_tiny(const char *root, bool bad_row)
{
    char d[600];
    snprintf(d, sizeof d, "%s/hosp", root);
    moeh_err_t err = {0};
    assert_int_equal(moeh_mkdir_p(d, &err), 0);
    write_gz(d, "patients.csv.gz",
             "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n"
             "1,F,50,2150,2011 - 2013,\n2,M,70,2150,2011 - 2013,2150-01-06\n");
    char adm[2048];
    snprintf(adm, sizeof adm,
             "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
             "admission_location,discharge_location,insurance,language,marital_status,race,"
             "edregtime,edouttime,hospital_expire_flag\n"
             "1,100,2150-01-01 08:00:00,2150-01-05 10:00:00,,URGENT,P1,\"TRANSFER, HOSPITAL\","
             "HOME,Medicare,ENGLISH,MARRIED,WHITE,,,0\n"
             "%s"
             "1,101,2150-01-15 08:00:00,2150-01-16 10:00:00,,ELECTIVE,P1,x,HOME,Other,ENGLISH,"
             "MARRIED,WHITE,,,0\n"
             "2,200,2150-01-01 00:00:00,2150-01-06 00:00:00,2150-01-06 00:00:00,EW EMER.,P2,x,"
             "DIED,Medicaid,ENGLISH,SINGLE,BLACK/AFRICAN,,,1\n",
             bad_row ? "9,900,2150-13-01 08:00:00,2150-01-05 10:00:00,,URGENT,P9,x,HOME,Other,"
                       "E,M,WHITE,,,0\n"
                     : "");
    write_gz(d, "admissions.csv.gz", adm);
    write_gz(d, "labevents.csv.gz",
             "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,"
             "storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,"
             "comments\n"
             "1,1,100,1,50912,,2150-01-01 12:30:00,,1.0,1.0,mg/dL,,,,ROUTINE,\n"
             "2,1,,1,50912,,2150-01-01 12:50:00,,2.0,2.0,mg/dL,,,,ROUTINE,\"a, comment\"\n"
             "3,1,100,1,50912,,2150-01-01 14:10:00,,3.0,3.0,mg/dL,,,,ROUTINE,\n"
             "4,1,100,1,50912,,2150-01-01 09:59:00,,9.0,9.0,mg/dL,,,,ROUTINE,\n");
    snprintf(d, sizeof d, "%s/icu", root);
    assert_int_equal(moeh_mkdir_p(d, &err), 0);
    write_gz(d, "icustays.csv.gz",
             "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
             "1,100,1000,Coronary Care Unit (CCU),x,2150-01-01 10:00:00,2150-01-04 10:00:00,3\n"
             "2,200,2000,Medical Intensive Care Unit (MICU),x,2150-01-01 02:00:00,"
             "2150-01-05 00:00:00,4\n");
    write_gz(d, "chartevents.csv.gz",
             "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,"
             "valuenum,valueuom,warning\n"
             "1,100,1000,,2150-01-01 10:00:00,,223761,98.6,98.6,?F,0\n"
             "1,100,1000,,2150-01-01 10:30:00,,223762,37.4,37.4,?C,0\n"
             "1,100,1000,,2150-01-01 11:00:00,,220045,500,500,bpm,0\n"
             "2,200,2000,,2150-01-01 03:00:00,,220045,90,90,bpm,0\n");
}

static void test_tiny(void **state)
{
    char root[512];
    snprintf(root, sizeof root, "%s/tiny", g_dir);
    make_tiny(root, true);
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    o.mimic_dir = root;
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    moeh_err_t err = {0};
    int rc = moeh_extract(&o, &ds, &st, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_int_equal(st.malformed, 1);
    assert_int_equal(st.admissions, 3);
    assert_int_equal(ds->n, 2);
    assert_int_equal(ds->ids[1], 100);
    assert_int_equal(ds->ids[3], 200);
    /* 100: 4 days (not > 7), readmitted after 10 days; 200: died */
    float want_l[6] = {0, 0, 1, 1, 0, 0};
    uint8_t want_m[6] = {1, 1, 1, 1, 1, 0};
    assert_memory_equal(ds->labels, want_l, sizeof want_l);
    assert_memory_equal(ds->label_mask, want_m, sizeof want_m);
    size_t F = ds->f_ts, vc = 0, vt = 0, vh = 0;
    for (size_t v = 0; v < F; v++) {
        vc = strcmp(ds->ts_names[v], "creatinine") ? vc : v;
        vt = strcmp(ds->ts_names[v], "temp") ? vt : v;
        vh = strcmp(ds->ts_names[v], "hr") ? vh : v;
    }
    /* creatinine of 100: hour 2 = mean(1, 2) (one row without hadm_id, matched by time),
     * hour 4 = 3, the 09:59 value is before t0 */
    assert_true(ds->ts_mask[(0 * 48 + 2) * F + vc] == 1);
    assert_float_equal(ds->ts_value[(0 * 48 + 2) * F + vc], 1.5, 1e-6);
    assert_true(ds->ts_mask[(0 * 48 + 3) * F + vc] == 0);
    assert_float_equal(ds->ts_value[(0 * 48 + 3) * F + vc], 1.5, 1e-6); /* forward fill */
    assert_float_equal(ds->ts_delta[(0 * 48 + 3) * F + vc], 1, 0);
    assert_float_equal(ds->ts_value[(0 * 48 + 4) * F + vc], 3.0, 1e-6);
    assert_true(isnan(ds->ts_value[(0 * 48 + 1) * F + vc]));
    assert_float_equal(ds->ts_delta[(0 * 48 + 1) * F + vc], 2, 0);
    /* temperature: 98.6 F and 37.4 C in hour 0 -> mean of 37 and 37.4 */
    assert_float_equal(ds->ts_value[(0 * 48 + 0) * F + vt], 37.2, 1e-4);
    /* heart rate 500 is outside its plausible range */
    assert_true(ds->ts_mask[(0 * 48 + 1) * F + vh] == 0);
    assert_int_equal(st.out_of_range, 1);
    assert_float_equal(ds->ts_value[(1 * 48 + 1) * F + vh], 90, 0);
    moeh_dataset_destroy(&ds);

    /* --strict: the malformed row is fatal, reported as file:line:column (name) */
    o.strict = true;
    assert_int_equal(moeh_extract(&o, &ds, &st, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "admissions.csv.gz:3:3 (admittime)"));
    o.strict = false;

    /* a missing core table is an error naming it */
    char p[600];
    snprintf(p, sizeof p, "%s/icu/icustays.csv.gz", root);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(moeh_extract(&o, &ds, &st, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "icustays.csv.gz"));
}

/* Notes and chest X-rays on the tiny database: window selection, hadm-less notes, the latest
 * AP/PA image, a lateral view and an out-of-window study ignored, a real NIH PNG accepted
 * where the .jpg is missing, and a missing image file leaving the modality absent. */
static void test_tiny_notes_cxr(void **state)
{
    char root[512], d[700], p[900];
    moeh_err_t err = {0};
    snprintf(root, sizeof root, "%s/tiny2", g_dir);
    make_tiny(root, false);
    snprintf(d, sizeof d, "%s/note/note", root);
    assert_int_equal(moeh_mkdir_p(d, &err), 0);
    write_gz(d, "radiology.csv.gz",
             "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n"
             "1-RR-2,1,,RR,2,2150-01-02 09:00:00,,\"Second: effusion, \"\"small\"\".\"\n"
             "1-RR-1,1,100,RR,1,2150-01-01 11:00:00,,\"FINDINGS:\nLungs clear.\"\n"
             "1-RR-3,1,100,RR,3,2150-01-04 09:00:00,,Too late\n"
             "2-RR-1,2,200,RR,1,2150-01-01 01:00:00,,Before t0\n");
    const char *png = "/work/shared/data/cxr-sample/images_256/00000003_000.png";
    const char *e = getenv("MOEH_CXR_SAMPLE_DIR");
    char pngb[600];
    if (e) {
        snprintf(pngb, sizeof pngb, "%s/images_256/00000003_000.png", e);
        png = pngb;
    }
    bool have_png = access(png, R_OK) == 0;
    snprintf(d, sizeof d, "%s/cxr", root);
    assert_int_equal(moeh_mkdir_p(d, &err), 0);
    write_gz(d, "mimic-cxr-2.0.0-metadata.csv.gz",
             "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
             "Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,"
             "ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning\n"
             "old,1,7,CHEST,PA,256,256,21500101,90000.0,x,postero-anterior,Erect\n"
             "aa,1,8,CHEST,AP,256,256,21500102,80000.5,x,antero-posterior,Erect\n"
             "lat,1,8,CHEST,LATERAL,256,256,21500102,235959.0,x,lateral,Erect\n"
             "gone,2,9,CHEST,AP,256,256,21500101,120000.0,x,antero-posterior,Erect\n");
    snprintf(d, sizeof d, "%s/cxr/files/p00/p1/s8", root);
    assert_int_equal(moeh_mkdir_p(d, &err), 0);
    if (have_png) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s/aa.png'", png, d);
        assert_int_equal(system(cmd), 0);
    }
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    o.mimic_dir = root;
    snprintf(d, sizeof d, "%s/note", root);
    snprintf(p, sizeof p, "%s/cxr", root);
    o.note_dir = d, o.cxr_dir = p;
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    int rc = moeh_extract(&o, &ds, &st, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_true(st.have_notes && st.have_cxr);
    /* 100: notes 1 then 2 (charttime order), not 3; 200: none */
    int32_t *tok = NULL;
    size_t n = 0, cap = 0;
    const char *t1 = "FINDINGS:\nLungs clear.", *t2 = "Second: effusion, \"small\".";
    assert_int_equal(moeh_tokenize(t1, strlen(t1), &tok, &n, &cap), 0);
    assert_int_equal(moeh_tokenize(t2, strlen(t2), &tok, &n, &cap), 0);
    assert_int_equal(n, 6);
    assert_int_equal(ds->note_offsets[1] - ds->note_offsets[0], 6);
    assert_memory_equal(ds->note_tokens, tok, 6 * sizeof *tok);
    assert_int_equal(tok[0], moeh_token_id("findings", 8));
    free(tok);
    assert_int_equal(ds->avail[1], 1);
    assert_int_equal(ds->avail[3 + 1], 0);
    /* images: 100 gets study 8 (the PNG) when the sample is there; 200's file is missing */
    assert_int_equal(ds->avail[2], have_png);
    assert_int_equal(ds->avail[3 + 2], 0);
    if (have_png) {
        uint8_t want[64 * 64];
        assert_int_equal(moeh_image_load_gray(png, 64, want, &err), 0);
        assert_memory_equal(ds->images, want, sizeof want);
    }
    moeh_dataset_destroy(&ds);
}

static void test_varmap(void **state)
{
    moeh_varmap_t m;
    moeh_err_t err = {0};
    assert_int_equal(moeh_varmap_load(NULL, &m, &err), 0);
    assert_true(m.n_vars >= 30);
    bool temp_f = false;
    for (size_t i = 0; i < m.n_rows; i++)
        if (m.rows[i].itemid == 223761) {
            temp_f = true;
            assert_float_equal(98.6 * m.rows[i].mul + m.rows[i].add, 37.0, 1e-9);
        }
    assert_true(temp_f);
    moeh_varmap_free(&m);
    char p[512];
    snprintf(p, sizeof p, "%s/bad_map.csv", g_dir);
    FILE *f = fopen(p, "w");
    fputs("# comment\nname,table,itemid,unit,mul,add,lo,hi,label\nhr,chartevents,x1,bpm,1,0,"
          "1,2,HR\n",
          f);
    fclose(f);
    assert_int_equal(moeh_varmap_load(p, &m, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "bad_map.csv:3:3 (itemid)"));
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_demo), cmocka_unit_test(test_tiny),
               cmocka_unit_test(test_tiny_notes_cxr), cmocka_unit_test(test_varmap))
