/* test_dataset.c - the dataset directory: write + mmap open round trip, subset, and that
 * corrupt, reshaped, retyped or missing arrays are refused with a message naming the array,
 * and so is a meta.json whose task or modality names are not the schema's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_dataset.h"
#include "moeh_npy.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

MOEH_TEST_DIR_FIXTURE("dataset")

static moeh_dataset_t *make(size_t n)
{
    moeh_dataset_t *ds;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_create(n, 2, 3, 8, &ds, &err), 0);
    const char *sn[] = {"age", "sex_female"}, *tn[] = {"hr", "sbp", "creat"},
               *tu[] = {"bpm", "mmHg", "mg/dL"};
    assert_int_equal(moeh_dataset_set_names(ds, sn, tn, tu, &err), 0);
    int32_t tok[64];
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        ds->ids[2 * i] = 100 + (int64_t)i / 2;
        ds->ids[2 * i + 1] = 2000 + (int64_t)i;
        ds->static_x[2 * i] = 40.0f + (float)i;
        for (size_t k = 0; k < 48 * 3; k++) {
            ds->ts_value[i * 144 + k] = k % 5 ? (float)k : NAN;
            ds->ts_mask[i * 144 + k] = (float)(k % 2);
            ds->ts_delta[i * 144 + k] = (float)(k % 7);
        }
        for (int t = 0; t < 3; t++) {
            ds->labels[3 * i + t] = (float)((i + (size_t)t) % 2);
            ds->label_mask[3 * i + t] = 1;
            ds->avail[3 * i + t] = (uint8_t)((i >> t) & 1);
        }
        ds->note_offsets[i] = (int64_t)nt;
        for (size_t k = 0; k < i % 4; k++)
            tok[nt++] = (int32_t)(i * 10 + k);
        ds->images[i * 64 + i % 64] = 200;
        ds->split[i] = (uint8_t)(i % 3);
    }
    ds->note_offsets[n] = (int64_t)nt;
    assert_int_equal(moeh_dataset_set_tokens(ds, tok, nt, &err), 0);
    ds->extra = cJSON_CreateObject();
    cJSON_AddStringToObject(ds->extra, "source", "unit test");
    return ds;
}

static void write_ok(const char *sub, moeh_dataset_t *ds, char *out)
{
    moeh_err_t err = {0};
    sprintf(out, "%s/%s", g_dir, sub);
    assert_int_equal(moeh_dataset_write(ds, out, &err), 0);
}

static void test_roundtrip(void **state)
{
    moeh_dataset_t *ds = make(10), *rd = NULL;
    char dir[512];
    moeh_err_t err = {0};
    write_ok("rt", ds, dir);
    int rc = moeh_dataset_open(dir, true, &rd, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_int_equal(rd->n, 10);
    assert_int_equal(rd->f_ts, 3);
    assert_int_equal(rd->n_tokens, ds->n_tokens);
    assert_string_equal(rd->ts_names[2], "creat");
    assert_string_equal(rd->ts_units[1], "mmHg");
    assert_string_equal(rd->static_names[1], "sex_female");
    assert_memory_equal(rd->ids, ds->ids, 20 * 8);
    assert_memory_equal(rd->ts_value, ds->ts_value, 10 * 144 * 4); /* NaN bits too */
    assert_memory_equal(rd->note_tokens, ds->note_tokens, ds->n_tokens * 4);
    assert_memory_equal(rd->images, ds->images, 640);
    assert_string_equal(cJSON_GetObjectItem(rd->extra, "source")->valuestring, "unit test");
    /* the arrays are mapped: 64-byte aligned as numpy writes them */
    assert_int_equal((uintptr_t)rd->ts_value % 64, 0);

    size_t idx[3] = {7, 2, 5}, combo[8];
    moeh_dataset_t *sub;
    assert_int_equal(moeh_dataset_subset(rd, idx, 3, 1u | 4u, &sub, &err), 0);
    assert_int_equal(sub->n, 3);
    assert_int_equal(sub->ids[1], 2007);
    assert_int_equal(sub->n_tokens, 0); /* notes dropped */
    for (int j = 0; j < 3; j++)
        assert_int_equal(sub->avail[3 * j + 1], 0);
    assert_int_equal(sub->avail[0 * 3 + 0], 1);
    assert_int_equal(sub->images[64 * 0 + 7], 200);
    moeh_dataset_combo_counts(sub, combo);
    assert_int_equal(combo[0] + combo[1] + combo[4] + combo[5], 3); /* never notes */
    write_ok("sub", sub, dir);
    moeh_dataset_destroy(&sub);
    assert_int_equal(moeh_dataset_open(dir, true, &sub, &err), 0);
    moeh_dataset_destroy(&sub);
    moeh_dataset_destroy(&rd);
    moeh_dataset_destroy(&ds);
    assert_null(ds);
    moeh_dataset_destroy(&ds); /* NULL-safe */
}

static void expect_open_error(const char *dir, const char *a, const char *b)
{
    moeh_dataset_t *rd = NULL;
    moeh_err_t err = {0};
    assert_int_not_equal(moeh_dataset_open(dir, true, &rd, &err), 0);
    assert_null(rd);
    if (!strstr(err.msg, a) || (b && !strstr(err.msg, b)))
        fail_msg("error '%s' lacks '%s' / '%s'", err.msg, a, b ? b : "");
}

static void test_rejects(void **state)
{
    moeh_dataset_t *ds = make(6);
    char dir[512], p[600];
    moeh_err_t err = {0};

    /* one flipped byte in the data of ts_delta */
    write_ok("flip", ds, dir);
    snprintf(p, sizeof p, "%s/ts_delta.npy", dir);
    assert_int_equal(moeh_test_poke(p, 5, 0x7f), 0);
    expect_open_error(dir, "'ts_delta'", "checksum mismatch");

    /* labels rewritten with one task too few */
    write_ok("shape", ds, dir);
    snprintf(p, sizeof p, "%s/labels.npy", dir);
    size_t s2[2] = {6, 2};
    assert_int_equal(moeh_npy_write(p, MOEH_DT_F32, 2, s2, ds->labels, &err), 0);
    expect_open_error(dir, "'labels'", "shape (6,2)");

    /* avail as int32 */
    write_ok("dtype", ds, dir);
    snprintf(p, sizeof p, "%s/avail.npy", dir);
    int32_t av[18] = {0};
    size_t s3[2] = {6, 3};
    assert_int_equal(moeh_npy_write(p, MOEH_DT_I32, 2, s3, av, &err), 0);
    expect_open_error(dir, "'avail'", "dtype <i4, expected |u1");

    /* a missing array */
    write_ok("missing", ds, dir);
    snprintf(p, sizeof p, "%s/images.npy", dir);
    assert_int_equal(unlink(p), 0);
    expect_open_error(dir, "'images'", "images.npy");

    /* a value out of its domain with a consistent checksum */
    ds->split[4] = 7;
    write_ok("domain", ds, dir);
    expect_open_error(dir, "split.npy", "element 4 is 7");
    ds->split[4] = 0;

    /* no meta.json */
    snprintf(dir, sizeof dir, "%s/nothing", g_dir);
    expect_open_error(dir, "meta.json", NULL);
    moeh_dataset_destroy(&ds);
}

/* Hostile files with valid checksums (issue 13, finding 9): non-finite values where the format
 * forbids them are named by array, row and column; a FIFO in place of an array (or of
 * meta.json) is refused at once instead of hanging the reader (alarm: a hang fails the test). */
static void test_badfiles(void **state)
{
    moeh_dataset_t *ds = make(6);
    char dir[512], p[600];
    alarm(30);

    for (size_t k = 0; k < 6 * 144; k++) /* all of ts_delta NaN, checksums rewritten */
        ds->ts_delta[k] = NAN;
    write_ok("nan_delta", ds, dir);
    expect_open_error(dir, "ts_delta.npy: row 0 hour 0 column 0 (hr) is nan", NULL);
    for (size_t k = 0; k < 6 * 144; k++)
        ds->ts_delta[k] = (float)(k % 7);
    ds->ts_delta[(2 * 48 + 5) * 3 + 1] = -1.0f;
    write_ok("neg_delta", ds, dir);
    expect_open_error(dir, "ts_delta.npy: row 2 hour 5 column 1 (sbp) is -1", NULL);
    ds->ts_delta[(2 * 48 + 5) * 3 + 1] = 0.0f;
    ds->static_x[3 * 2 + 1] = INFINITY;
    write_ok("inf_static", ds, dir);
    expect_open_error(dir, "static.npy: row 3 column 1 (sex_female) is inf", NULL);
    ds->static_x[3 * 2 + 1] = 0.0f;

    write_ok("fifo", ds, dir);
    snprintf(p, sizeof p, "%s/ts_mask.npy", dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(mkfifo(p, 0600), 0);
    expect_open_error(dir, "'ts_mask'", "not a regular file (a FIFO)");
    write_ok("fifo_meta", ds, dir);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(mkfifo(p, 0600), 0);
    expect_open_error(dir, "meta.json: not a regular file (a FIFO)", NULL);
    alarm(0);
    moeh_dataset_destroy(&ds);
}

/* Corrupted .npy headers and truncated files are errors, never crashes (run under ASan). */
static void test_corrupt_headers(void **state)
{
    moeh_dataset_t *ds = make(4), *rd = NULL;
    char dir[512], p[600];
    moeh_err_t err = {0};
    write_ok("hdr", ds, dir);
    snprintf(p, sizeof p, "%s/labels.npy", dir);
    char *orig;
    size_t len;
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &orig, &len, &err), 0);
    moeh_rng_t r;
    moeh_rng_seed(&r, 3);
    for (int it = 0; it < 200; it++) {
        char *b = malloc(len);
        memcpy(b, orig, len);
        size_t n = len;
        if (it % 4 == 0)
            n = (size_t)(moeh_rng_u64(&r) % len); /* truncated */
        else
            for (int k = 0; k < 3; k++)
                b[moeh_rng_u64(&r) % 128] = (char)moeh_rng_u64(&r);
        FILE *f = fopen(p, "wb");
        fwrite(b, 1, n, f);
        fclose(f);
        free(b);
        if (moeh_dataset_open(dir, true, &rd, &err) == 0)
            moeh_dataset_destroy(&rd); /* a flip in padding can be harmless */
        else
            assert_non_null(strstr(err.msg, "labels"));
    }
    free(orig);
    moeh_dataset_destroy(&ds);
}

/* meta.json carries the schema's task and modality names; a dataset written with other names
 * (e.g. the "los_gt_7d"/"readmit_30d" of earlier builds) or another order is refused, and the
 * error names what the file says and what this build expects. */
static void rewrite_meta(const char *dir, const char *key, const char *json_array)
{
    char p[600], *txt;
    size_t len;
    moeh_err_t err = {0};
    snprintf(p, sizeof p, "%s/meta.json", dir);
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &txt, &len, &err), 0);
    cJSON *meta = cJSON_Parse(txt);
    assert_non_null(meta);
    free(txt);
    cJSON_DeleteItemFromObject(meta, key);
    if (json_array) cJSON_AddItemToObject(meta, key, cJSON_Parse(json_array));
    char *out = cJSON_Print(meta);
    assert_int_equal(moeh_file_write_atomic(p, out, strlen(out), &err), 0);
    free(out);
    cJSON_Delete(meta);
}

static void test_schema_names(void **state)
{
    moeh_dataset_t *ds = make(4), *rd = NULL;
    char dir[512], p[600], *txt;
    size_t len;
    moeh_err_t err = {0};
    write_ok("names", ds, dir);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    assert_int_equal(moeh_file_read_all(p, 1 << 20, &txt, &len, &err), 0);
    cJSON *meta = cJSON_Parse(txt);
    free(txt);
    const cJSON *tasks = cJSON_GetObjectItem(meta, "tasks"),
                *mods = cJSON_GetObjectItem(meta, "modalities");
    assert_int_equal(cJSON_GetArraySize(tasks), MOEH_N_TASKS);
    assert_int_equal(cJSON_GetArraySize(mods), MOEH_N_MODS);
    assert_string_equal(cJSON_GetArrayItem(tasks, 0)->valuestring, "mortality");
    assert_string_equal(cJSON_GetArrayItem(tasks, 1)->valuestring, "los7");
    assert_string_equal(cJSON_GetArrayItem(tasks, 2)->valuestring, "readmit30");
    assert_string_equal(cJSON_GetArrayItem(mods, 2)->valuestring, "img");
    cJSON_Delete(meta);
    assert_int_equal(moeh_dataset_open(dir, true, &rd, &err), 0);
    moeh_dataset_destroy(&rd);

    rewrite_meta(dir, "tasks", "[\"mortality\",\"los_gt_7d\",\"readmit_30d\"]");
    expect_open_error(dir, "\"tasks\" is [\"mortality\",\"los_gt_7d\",\"readmit_30d\"]",
                      "expects [\"mortality\",\"los7\",\"readmit30\"]");
    rewrite_meta(dir, "tasks", "[\"mortality\",\"los7\"]"); /* one too few */
    expect_open_error(dir, "\"tasks\" is [\"mortality\",\"los7\"]", "readmit30");
    rewrite_meta(dir, "tasks", NULL);
    expect_open_error(dir, "\"tasks\" is missing", "los7");
    rewrite_meta(dir, "tasks", "[\"mortality\",\"los7\",\"readmit30\"]");
    assert_int_equal(moeh_dataset_open(dir, true, &rd, &err), 0);
    moeh_dataset_destroy(&rd);
    rewrite_meta(dir, "modalities", "[\"ehr\",\"img\",\"notes\"]"); /* another order */
    expect_open_error(dir, "\"modalities\" is [\"ehr\",\"img\",\"notes\"]",
                      "expects [\"ehr\",\"notes\",\"img\"]");
    moeh_dataset_destroy(&ds);
}

/* Precomputed vectors (docs/data.md 5.1): note_vec / img_vec round trip with their description
 * and checksums, subset keeps or zeroes them, and the reader refuses a width that disagrees with
 * meta.json, a description without its array, a non-finite value, a vector where the modality is
 * absent and a modified byte, each named. */
static void fill_vectors(moeh_dataset_t *ds)
{
    moeh_err_t err = {0};
    cJSON *info = cJSON_CreateObject();
    cJSON_AddStringToObject(info, "model", "test-bert");
    assert_int_equal(moeh_dataset_add_vectors(ds, MOEH_MOD_NOTES, 4, info, &err), 0);
    assert_int_equal(moeh_dataset_add_vectors(ds, MOEH_MOD_IMG, 3, NULL, &err), 0);
    cJSON_Delete(info);
    assert_int_equal(moeh_dataset_add_vectors(ds, MOEH_MOD_EHR, 3, NULL, &err), -EINVAL);
    for (size_t i = 0; i < ds->n; i++) {
        for (size_t k = 0; k < 4 && ds->avail[3 * i + 1]; k++)
            ds->note_vec[4 * i + k] = (float)i + 0.25f * (float)k;
        for (size_t k = 0; k < 3 && ds->avail[3 * i + 2]; k++)
            ds->img_vec[3 * i + k] = -(float)i - 0.5f * (float)k;
    }
}

static void test_vectors(void **state)
{
    moeh_dataset_t *ds = make(8), *rd = NULL, *sub = NULL;
    char dir[512], p[700];
    moeh_err_t err = {0};
    fill_vectors(ds);
    write_ok("vec", ds, dir);
    int rc = moeh_dataset_open(dir, true, &rd, &err);
    if (rc) fail_msg("%s", err.msg);
    assert_int_equal(rd->note_dim, 4);
    assert_int_equal(rd->img_dim, 3);
    assert_memory_equal(rd->note_vec, ds->note_vec, 8 * 4 * sizeof(float));
    assert_memory_equal(rd->img_vec, ds->img_vec, 8 * 3 * sizeof(float));
    const cJSON *emb = cJSON_GetObjectItem(rd->extra, "embeddings");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(emb, "notes"), "model")->valuestring, "test-bert");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(emb, "img"), "dim")->valueint, 3);
    /* subset: rows 6 (notes, img) and 3 (notes); images dropped */
    size_t idx[2] = {6, 3};
    assert_int_equal(moeh_dataset_subset(rd, idx, 2, 1u | 2u, &sub, &err), 0);
    assert_memory_equal(sub->note_vec, rd->note_vec + 4 * 6, 4 * sizeof(float));
    assert_memory_equal(sub->note_vec + 4, rd->note_vec + 4 * 3, 4 * sizeof(float));
    for (size_t k = 0; k < 6; k++)
        assert_true(sub->img_vec[k] == 0.0f);
    write_ok("vecsub", sub, p);
    moeh_dataset_destroy(&sub);
    assert_int_equal(moeh_dataset_open(p, true, &sub, &err), 0);
    moeh_dataset_destroy(&sub);
    moeh_dataset_destroy(&rd);
    /* a dataset without vectors has none (and no "embeddings") */
    moeh_dataset_t *plain = make(3);
    write_ok("novec", plain, p);
    moeh_dataset_destroy(&plain);
    assert_int_equal(moeh_dataset_open(p, true, &plain, &err), 0);
    assert_null(plain->note_vec);
    assert_int_equal(plain->img_dim, 0);
    moeh_dataset_destroy(&plain);

    /* meta.json's width disagrees, or describes vectors that are not there */
    rewrite_meta(dir, "embeddings", "{\"notes\": {\"dim\": 5}, \"img\": {\"dim\": 3}}");
    expect_open_error(dir, "embeddings.notes.dim is 5", "'note_vec' has 4 columns");
    rewrite_meta(dir, "embeddings", "{\"notes\": {\"dim\": 4}}");
    expect_open_error(dir, "arrays.img_vec is present but embeddings.img", NULL);
    write_ok("vec", ds, dir);
    rewrite_meta(dir, "arrays", NULL);
    expect_open_error(dir, "\"arrays\" missing", NULL);
    /* non-finite, and a vector where the modality is absent (row 0 has neither) */
    ds->note_vec[4 * 2 + 1] = NAN; /* row 2 has notes */
    write_ok("vec", ds, dir);
    expect_open_error(dir, "note_vec.npy: row 2 (hadm_id 2002) column 1 is nan", NULL);
    ds->note_vec[4 * 2 + 1] = 1.0f;
    ds->img_vec[3 * 1 + 2] = 0.5f; /* row 1: no image */
    write_ok("vec", ds, dir);
    expect_open_error(dir, "img_vec.npy: row 1 (hadm_id 2001) has no img", "non-zero vector");
    ds->img_vec[3 * 1 + 2] = 0.0f;
    /* the checksum covers the vectors */
    write_ok("vec", ds, dir);
    snprintf(p, sizeof p, "%s/note_vec.npy", dir);
    FILE *f = fopen(p, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    fputc(0x3f, f);
    fclose(f);
    expect_open_error(dir, "array 'note_vec'", "checksum mismatch");
    moeh_dataset_destroy(&ds);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_roundtrip), cmocka_unit_test(test_rejects),
               cmocka_unit_test(test_badfiles), cmocka_unit_test(test_corrupt_headers),
               cmocka_unit_test(test_schema_names), cmocka_unit_test(test_vectors))
