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
#include "moeh_npy.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

MOEH_TEST_DIR_FIXTURE("extract")

/* The default options for the database at mimic_dir. */
static moeh_extract_opts_t opts_for(const char *mimic_dir)
{
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    o.mimic_dir = mimic_dir;
    return o;
}

/* moeh_extract(o), which must succeed; the caller destroys the dataset. */
static moeh_dataset_t *extract_ok(const moeh_extract_opts_t *o, moeh_extract_stats_t *st)
{
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    int rc = moeh_extract(o, &ds, st, &err);
    if (rc) fail_msg("%s", err.msg);
    return ds;
}

static void test_demo(void **state)
{
    char p[512];
    snprintf(p, sizeof p, "%s/hosp/admissions.csv.gz", moeh_test_demo_dir());
    if (access(p, R_OK) != 0) skip(); /* the demo is a fixture outside the repository */
    moeh_extract_opts_t o = opts_for(moeh_test_demo_dir());
    moeh_extract_stats_t st;
    moeh_dataset_t *ds = extract_ok(&o, &st);
    moeh_err_t err = {0};
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
             moeh_test_demo_dir(), out);
    assert_int_equal(system(cmd), 0);
}

/* Writes text gzipped to ROOT/rel, making the folders of rel. */
static void write_gz(const char *root, const char *rel, const char *text)
{
    char p[1400];
    moeh_err_t err = {0};
    snprintf(p, sizeof p, "%s/%s", root, rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    assert_int_equal(moeh_mkdir_p(p, &err), 0);
    *slash = '/';
    gzFile g = gzopen(p, "wb");
    assert_non_null(g);
    gzputs(g, text);
    gzclose(g);
}

/* A tiny database: subject 1 (adult) with two admissions, the first in the cohort and
 * readmitted after 10 days; subject 2 (adult) who dies on day 5; one malformed row. */
static void make_tiny(const char *root, bool bad_row)
{
    write_gz(root, "hosp/patients.csv.gz",
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
    write_gz(root, "hosp/admissions.csv.gz", adm);
    write_gz(root, "hosp/labevents.csv.gz",
             "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,"
             "storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,"
             "comments\n"
             "1,1,100,1,50912,,2150-01-01 12:30:00,,1.0,1.0,mg/dL,,,,ROUTINE,\n"
             "2,1,,1,50912,,2150-01-01 12:50:00,,2.0,2.0,mg/dL,,,,ROUTINE,\"a, comment\"\n"
             "3,1,100,1,50912,,2150-01-01 14:10:00,,3.0,3.0,mg/dL,,,,ROUTINE,\n"
             "4,1,100,1,50912,,2150-01-01 09:59:00,,9.0,9.0,mg/dL,,,,ROUTINE,\n");
    write_gz(root, "icu/icustays.csv.gz",
             "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
             "1,100,1000,Coronary Care Unit (CCU),x,2150-01-01 10:00:00,2150-01-04 10:00:00,3\n"
             "2,200,2000,Medical Intensive Care Unit (MICU),x,2150-01-01 02:00:00,"
             "2150-01-05 00:00:00,4\n");
    write_gz(root, "icu/chartevents.csv.gz",
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
    moeh_extract_opts_t o = opts_for(root);
    moeh_extract_stats_t st;
    moeh_dataset_t *ds = extract_ok(&o, &st);
    moeh_err_t err = {0};
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

/* The tiny database's radiology notes: 100 has 1-RR-1 and 1-RR-2 (no hadm_id, matched by time)
 * in its window, 1-RR-3 too late; 2-RR-1 is before 200's t0. */
static void write_tiny_notes(const char *root)
{
    write_gz(root, "note/note/radiology.csv.gz",
             "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n"
             "1-RR-2,1,,RR,2,2150-01-02 09:00:00,,\"Second: effusion, \"\"small\"\".\"\n"
             "1-RR-1,1,100,RR,1,2150-01-01 11:00:00,,\"FINDINGS:\nLungs clear.\"\n"
             "1-RR-3,1,100,RR,3,2150-01-04 09:00:00,,Too late\n"
             "2-RR-1,2,200,RR,1,2150-01-01 01:00:00,,Before t0\n");
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
    write_tiny_notes(root);
    char png[600];
    snprintf(png, sizeof png, "%s/images_256/00000003_000.png", moeh_test_cxr_sample_dir());
    bool have_png = access(png, R_OK) == 0;
    write_gz(root, "cxr/mimic-cxr-2.0.0-metadata.csv.gz",
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
    moeh_extract_opts_t o = opts_for(root);
    snprintf(d, sizeof d, "%s/note", root);
    snprintf(p, sizeof p, "%s/cxr", root);
    o.note_dir = d, o.cxr_dir = p;
    moeh_extract_stats_t st;
    moeh_dataset_t *ds = extract_ok(&o, &st);
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

/* X.npy (K,D) f32 + X.ids.txt (ids_text as given) + X.json (desc, if not NULL). */
static void write_vec(const char *base, const char *ids_text, size_t K, size_t D, const float *v,
                      const char *desc)
{
    char p[900];
    moeh_err_t err = {0};
    size_t shape[2] = {K, D};
    snprintf(p, sizeof p, "%s.npy", base);
    assert_int_equal(moeh_npy_write(p, MOEH_DT_F32, 2, shape, v, &err), 0);
    snprintf(p, sizeof p, "%s.ids.txt", base);
    assert_int_equal(moeh_file_write_atomic(p, ids_text, strlen(ids_text), &err), 0);
    snprintf(p, sizeof p, "%s.json", base);
    unlink(p);
    if (desc) assert_int_equal(moeh_file_write_atomic(p, desc, strlen(desc), &err), 0);
}

static void expect_extract_error(const moeh_extract_opts_t *o, int want, const char *a,
                                 const char *b)
{
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_extract(o, &ds, NULL, &err), want);
    assert_null(ds);
    if (!strstr(err.msg, a) || (b && !strstr(err.msg, b)))
        fail_msg("error '%s' lacks '%s' / '%s'", err.msg, a, b ? b : "");
}

/* Precomputed vectors (docs/data.md 5.1) on the tiny database: an admission's vector is the mean
 * of its notes' (AP/PA images') vectors in its window, the modality present where one is, the JPEGs
 * not needed; vectors of items outside the cohort counted (refused with --strict at file:line);
 * and every malformed input named: a cohort note without a vector, a repeated id, NaN, id and
 * row counts that differ, an empty line, a description of another width, a non-float32 array,
 * and --note-embeddings without --note. */
static void test_tiny_embeddings(void **state)
{
    char root[512], nd[700], cd[700], nb[700], cb[700], d[800];
    moeh_err_t err = {0};
    snprintf(root, sizeof root, "%s/tiny3", g_dir);
    make_tiny(root, false);
    write_tiny_notes(root);
    snprintf(cd, sizeof cd, "%s/cxr", root);
    write_gz(root, "cxr/mimic-cxr-2.0.0-metadata.csv.gz",
             "dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime\n"
             "old,1,7,PA,21500101,90000.0\n"
             "aa,1,8,AP,21500102,80000.5\n"
             "bb,1,8,PA,21500102,90000\n"
             "lat,1,8,LATERAL,21500102,235959.0\n"
             "gone,2,9,AP,21500101,120000.0\n");
    snprintf(nd, sizeof nd, "%s/note", root);
    snprintf(nb, sizeof nb, "%s/notes", g_dir);
    snprintf(cb, sizeof cb, "%s/cxrv", g_dir);
    const float nv[8] = {1, 2, 3, 6, 100, 100, 50, 50}; /* 1-RR-1, 1-RR-2, 1-RR-3, 2-RR-1 */
    write_vec(nb, "1-RR-1\n1-RR-2\r\n 1-RR-3 \n2-RR-1", 4, 2, nv,
              "{\"model\": \"tiny-bert\", \"dim\": 2}");
    const float cv[12] = {1, 1, 1, 3, 5, 7, -1, 0, 1, 9, 9, 9}; /* aa, bb, gone, lat */
    write_vec(cb, "aa\nbb\ngone\nlat\n\n", 4, 3, cv, NULL);
    moeh_extract_opts_t o = opts_for(root);
    o.note_dir = nd, o.cxr_dir = cd;
    snprintf(d, sizeof d, "%s.npy", nb);
    char cpath[800];
    snprintf(cpath, sizeof cpath, "%s.npy", cb);
    o.note_emb = d, o.cxr_emb = cpath;
    moeh_extract_stats_t st;
    moeh_dataset_t *ds = extract_ok(&o, &st);
    assert_int_equal(ds->n, 2);
    assert_int_equal(ds->note_dim, 2);
    assert_int_equal(ds->img_dim, 3);
    const float want_n[4] = {2, 4, 0, 0}, want_i[6] = {2, 3, 4, -1, 0, 1};
    assert_memory_equal(ds->note_vec, want_n, sizeof want_n);
    assert_memory_equal(ds->img_vec, want_i, sizeof want_i);
    assert_int_equal(ds->avail[1], 1);
    assert_int_equal(ds->avail[3 + 1], 0);
    assert_int_equal(ds->avail[2], 1); /* from the vectors: no JPEG exists */
    assert_int_equal(ds->avail[3 + 2], 1);
    assert_int_equal(st.vec_unused[0], 2); /* 1-RR-3, 2-RR-1 */
    assert_int_equal(st.vec_unused[1], 1); /* lat (a lateral view); old has no vector */
    assert_int_equal(st.vec_rows[0], 1);
    assert_int_equal(st.vec_rows[1], 2);
    const cJSON *en = cJSON_GetObjectItem(cJSON_GetObjectItem(ds->extra, "embeddings"), "notes");
    assert_string_equal(cJSON_GetObjectItem(en, "model")->valuestring, "tiny-bert");
    assert_string_equal(cJSON_GetObjectItem(en, "key")->valuestring, "note_id");
    char out[800];
    snprintf(out, sizeof out, "%s/tiny3_ds", g_dir);
    assert_int_equal(moeh_dataset_write(ds, out, &err), 0);
    moeh_dataset_destroy(&ds);
    int rc = moeh_dataset_open(out, true, &ds, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_memory_equal(ds->img_vec, want_i, sizeof want_i);
    moeh_dataset_destroy(&ds);

    /* --strict refuses the first unused vector at file:line */
    o.strict = true;
    expect_extract_error(&o, -EBADMSG, "notes.ids.txt:3: note_id '1-RR-3'", "2 of 4");
    o.strict = false;
    /* a cohort note without a vector, named with its admission */
    write_vec(nb, "1-RR-1\n1-RR-3\n", 2, 2, nv, NULL);
    expect_extract_error(&o, -ENOENT, "note_id '1-RR-2' (hadm_id 100)", "no vector");
    write_vec(nb, "1-RR-1\n1-RR-2\n1-RR-1\n2-RR-1\n", 4, 2, nv, NULL);
    expect_extract_error(&o, -EBADMSG, "notes.ids.txt:3: id '1-RR-1' repeats line 1", NULL);
    const float bad[8] = {1, 2, NAN, 6, 100, 100, 50, 50};
    write_vec(nb, "1-RR-1\n1-RR-2\n1-RR-3\n2-RR-1\n", 4, 2, bad, NULL);
    expect_extract_error(&o, -EBADMSG, "row 1 (note_id '1-RR-2', ",
                         "notes.ids.txt:2) column 0 is nan");
    write_vec(nb, "1-RR-1\n1-RR-2\n1-RR-3\n", 4, 2, nv, NULL);
    expect_extract_error(&o, -EBADMSG, "notes.ids.txt has 3 ids (lines)", "has 4 rows");
    write_vec(nb, "1-RR-1\n\n1-RR-3\n2-RR-1\n", 4, 2, nv, NULL);
    expect_extract_error(&o, -EBADMSG, "notes.ids.txt:2: empty id", NULL);
    write_vec(nb, "1-RR-1\n1-RR-2\n1-RR-3\n2-RR-1\n", 4, 2, nv, "{\"dim\": 768}");
    expect_extract_error(&o, -EBADMSG, "notes.json says dim 768", "has 2 columns");
    write_vec(nb, "a\n", 1, 1, nv, NULL);
    size_t shape[2] = {1, 1};
    int32_t one = 1;
    assert_int_equal(moeh_npy_write(d, MOEH_DT_I32, 2, shape, &one, &err), 0);
    expect_extract_error(&o, -EBADMSG, "--note-embeddings", "float32");
    o.note_dir = NULL;
    expect_extract_error(&o, -EINVAL, "--note-embeddings needs --note DIR", NULL);
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
               cmocka_unit_test(test_tiny_notes_cxr), cmocka_unit_test(test_tiny_embeddings),
               cmocka_unit_test(test_varmap))
