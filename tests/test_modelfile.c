/* test_modelfile.c - the self-describing model file (train/moeh_modelfile.h):
 *  - a written file reads back with every parameter bit-equal, the normalisation, the names,
 *    the provenance and the config; without names it reads back with none;
 *  - every corrupt header, metadata or data case (table-driven) is refused with -EINVAL and a
 *    message naming the file and the field;
 *  - a dataset is accepted only when its shape, feature names and units equal the model's;
 *  - the names are read from a dataset's meta.json (the coordinator's --feature-names). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_modelfile.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

MOEH_TEST_FILE_FIXTURE("modelfile", "model.safetensors")

static const char *const k_static[3] = {"age", "sex_female", "bmi"};
static const char *const k_ts[2] = {"hr", "sbp"};
static const char *const k_units[2] = {"bpm", "mmHg"};
static const float k_mean[5] = {60, 0.5f, 25, 80, 120}, k_std[5] = {15, 0.5f, 4, 12, 20};

static moeh_moe_cfg_t tiny_cfg(void)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    c.n_steps = 4, c.img_size = 8, c.d_emb = 8, c.d_hidden = 8, c.note_buckets = 32;
    c.cnn_ch[0] = c.cnn_ch[1] = c.cnn_ch[2] = 4;
    c.max_batch = 4, c.seed = 5;
    return c;
}

static moeh_modelfile_info_t tiny_info(int names)
{
    moeh_modelfile_info_t in = {.mean = k_mean,
                                .std = k_std,
                                .static_names = names ? k_static : NULL,
                                .ts_names = names ? k_ts : NULL,
                                .ts_units = names ? k_units : NULL,
                                .prov = {.source = "federated",
                                         .rounds = 7,
                                         .selected_round = 5,
                                         .sites = 4,
                                         .strategy = "fedadam",
                                         .secagg = 1,
                                         .dp_epsilon = 3.25}};
    return in;
}

/* Writes the reference file to g_path. */
static void write_ref(int names)
{
    moeh_moe_cfg_t c = tiny_cfg();
    moeh_moe_t *m = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_moe_create(&c, &m, &err), 0);
    moeh_modelfile_info_t in = tiny_info(names);
    assert_int_equal(moeh_modelfile_write(g_path, m, &in, &err), 0);
    moeh_moe_destroy(&m);
}

static void test_round_trip(void **state)
{
    (void)state;
    moeh_moe_cfg_t c = tiny_cfg();
    moeh_moe_t *m = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_moe_create(&c, &m, &err), 0);
    moeh_modelfile_info_t in = tiny_info(1);
    assert_int_equal(moeh_modelfile_write(g_path, m, &in, &err), 0);
    moeh_modelfile_t *mf = NULL;
    assert_int_equal(moeh_modelfile_read(g_path, 0, &mf, &err), 0);
    char diff[512] = "";
    assert_int_equal(moeh_moe_cfg_diff(&mf->cfg, &c, "file", "model", diff, sizeof diff), 0);
    const moeh_params_t *a = moeh_moe_params(m), *b = moeh_moe_params(mf->model);
    assert_int_equal(a->n, b->n);
    assert_memory_equal(a->w, b->w, a->n * sizeof(float));
    assert_int_equal(mf->spec_hash, moeh_params_spec_hash(a));
    assert_int_equal(mf->n_norm, 5);
    assert_memory_equal(mf->mean, k_mean, sizeof k_mean);
    assert_memory_equal(mf->std, k_std, sizeof k_std);
    assert_int_equal(mf->n_static_names, 3);
    assert_int_equal(mf->n_ts_names, 2);
    assert_string_equal(mf->static_names[2], "bmi");
    assert_string_equal(mf->ts_names[1], "sbp");
    assert_string_equal(mf->ts_units[0], "bpm");
    assert_string_equal(mf->source, "federated");
    assert_string_equal(mf->strategy, "fedadam");
    assert_string_equal(mf->git_version, moeh_modelfile_git_version());
    assert_int_equal(mf->rounds, 7);
    assert_int_equal(mf->selected_round, 5);
    assert_int_equal(mf->sites, 4);
    assert_int_equal(mf->secagg, 1);
    assert_true(mf->dp_epsilon == 3.25);
    moeh_modelfile_destroy(&mf);
    assert_null(mf);
    /* max_batch is the reader's choice */
    assert_int_equal(moeh_modelfile_read(g_path, 17, &mf, &err), 0);
    assert_int_equal(mf->cfg.max_batch, 17);
    moeh_modelfile_destroy(&mf);
    /* without names and without DP */
    in = tiny_info(0);
    in.prov.dp_epsilon = NAN;
    assert_int_equal(moeh_modelfile_write(g_path, m, &in, &err), 0);
    assert_int_equal(moeh_modelfile_read(g_path, 0, &mf, &err), 0);
    assert_int_equal(mf->n_static_names, 0);
    assert_int_equal(mf->n_ts_names, 0);
    assert_true(isnan(mf->dp_epsilon));
    moeh_modelfile_destroy(&mf);
    /* the writer refuses what the reader would */
    float bad[5];
    memcpy(bad, k_std, sizeof bad);
    bad[3] = 0;
    in.std = bad;
    assert_int_equal(moeh_modelfile_write(g_path, m, &in, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "feature 3"));
    moeh_moe_destroy(&m);
    moeh_modelfile_destroy(NULL);
}

/* ---- corrupt files ---- */

typedef struct {
    cJSON *hdr;
    uint8_t *data;
    size_t dlen;
} parts_t;

static void parts_load(parts_t *p)
{
    char *buf = NULL;
    size_t len = 0;
    moeh_err_t err = {0};
    assert_int_equal(moeh_file_read_all(g_path, 1 << 30, &buf, &len, &err), 0);
    uint64_t hl;
    memcpy(&hl, buf, 8);
    p->hdr = cJSON_ParseWithLength(buf + 8, (size_t)hl);
    assert_non_null(p->hdr);
    p->dlen = len - 8 - (size_t)hl;
    p->data = malloc(p->dlen + 64);
    memcpy(p->data, buf + 8 + hl, p->dlen);
    free(buf);
}

static void parts_save(parts_t *p)
{
    char *h = cJSON_PrintUnformatted(p->hdr);
    size_t hl = strlen(h), len = 8 + hl + p->dlen;
    uint8_t *buf = malloc(len);
    uint64_t h64 = hl;
    memcpy(buf, &h64, 8);
    memcpy(buf + 8, h, hl);
    memcpy(buf + 8 + hl, p->data, p->dlen);
    moeh_err_t err = {0};
    assert_int_equal(moeh_file_write_atomic(g_path, buf, len, &err), 0);
    free(buf);
    cJSON_free(h);
    cJSON_Delete(p->hdr);
    free(p->data);
}

static cJSON *meta(parts_t *p)
{
    return cJSON_GetObjectItemCaseSensitive(p->hdr, "__metadata__");
}

static void set_meta(parts_t *p, const char *key, const char *val)
{
    cJSON_ReplaceItemInObjectCaseSensitive(meta(p), key, cJSON_CreateString(val));
}

static cJSON *tensor(parts_t *p, const char *name)
{
    cJSON *t = cJSON_GetObjectItemCaseSensitive(p->hdr, name);
    assert_non_null(t);
    return t;
}

static size_t offset_of(parts_t *p, const char *name)
{
    cJSON *of = cJSON_GetObjectItemCaseSensitive(tensor(p, name), "data_offsets");
    return (size_t)cJSON_GetArrayItem(of, 0)->valuedouble;
}

static void set_offsets(parts_t *p, const char *name, double b, double e)
{
    cJSON *of = cJSON_CreateArray();
    cJSON_AddItemToArray(of, cJSON_CreateNumber(b));
    cJSON_AddItemToArray(of, cJSON_CreateNumber(e));
    cJSON_ReplaceItemInObjectCaseSensitive(tensor(p, name), "data_offsets", of);
}

static void put_f32(parts_t *p, const char *name, size_t i, float v)
{
    memcpy(p->data + offset_of(p, name) + 4 * i, &v, 4);
}

static void m_dtype(parts_t *p)
{
    cJSON_ReplaceItemInObjectCaseSensitive(tensor(p, "gate.fc1.weight"), "dtype",
                                           cJSON_CreateString("F16"));
}
static void m_shape(parts_t *p) /* same byte count, transposed */
{
    cJSON *sh = cJSON_GetObjectItemCaseSensitive(tensor(p, "gate.fc1.weight"), "shape");
    double a = cJSON_GetArrayItem(sh, 0)->valuedouble, b = cJSON_GetArrayItem(sh, 1)->valuedouble;
    cJSON_SetNumberValue(cJSON_GetArrayItem(sh, 0), b);
    cJSON_SetNumberValue(cJSON_GetArrayItem(sh, 1), a);
}
static void m_shape_bytes(parts_t *p)
{
    cJSON *sh = cJSON_GetObjectItemCaseSensitive(tensor(p, "heads.bias"), "shape");
    cJSON_SetNumberValue(cJSON_GetArrayItem(sh, 0), 4);
}
static void m_outside(parts_t *p)
{
    set_offsets(p, "norm.std", (double)p->dlen, (double)p->dlen + 20);
}
static void m_overlap(parts_t *p)
{
    size_t b = offset_of(p, "norm.mean");
    set_offsets(p, "norm.std", (double)b, (double)b + 20);
}
static void m_gap(parts_t *p)
{
    p->dlen += 8; /* 8 bytes after the last tensor */
}
static void m_fraction(parts_t *p)
{
    set_offsets(p, "heads.bias", 0.5, 12.5);
}
static void m_backwards(parts_t *p)
{
    size_t b = offset_of(p, "heads.bias");
    set_offsets(p, "heads.bias", (double)b + 12, (double)b);
}
static void m_missing_norm(parts_t *p)
{
    cJSON_DeleteItemFromObjectCaseSensitive(p->hdr, "norm.std");
    p->dlen -= 5 * 4;
}
static void m_unexpected(parts_t *p)
{
    cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(p->hdr, "heads.bias");
    cJSON_AddItemToObject(p->hdr, "heads.extra", t);
}
static void m_no_meta(parts_t *p)
{
    cJSON_DeleteItemFromObjectCaseSensitive(p->hdr, "__metadata__");
}
static void m_format(parts_t *p)
{
    set_meta(p, "moeh_format", "moeh-model/0");
}
static void m_cfg_json(parts_t *p)
{
    set_meta(p, "moeh_config", "{\"arch\":");
}
static void m_cfg_range(parts_t *p)
{
    cJSON *c = cJSON_Parse(cJSON_GetObjectItemCaseSensitive(meta(p), "moeh_config")->valuestring);
    cJSON_SetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "top_k"), 9);
    char *s = cJSON_PrintUnformatted(c);
    set_meta(p, "moeh_config", s);
    cJSON_free(s);
    cJSON_Delete(c);
}
static void m_hash(parts_t *p)
{
    set_meta(p, "moeh_spec_hash", "0123456789abcdef");
}
static void m_data_shape(parts_t *p)
{
    set_meta(p, "data_shape", "{\"n_static\":3,\"n_vars\":9,\"n_steps\":4,\"image_size\":8}");
}
static void m_tasks(parts_t *p)
{
    set_meta(p, "tasks", "[\"mortality\",\"los3\",\"readmit30\"]");
}
static void m_static_count(parts_t *p)
{
    set_meta(p, "static_features", "[\"age\"]");
}
static void m_ts_shape(parts_t *p)
{
    set_meta(p, "ts_features", "[{\"name\":\"hr\"},{\"name\":\"sbp\",\"unit\":\"mmHg\"}]");
}
static void m_prov(parts_t *p)
{
    cJSON_DeleteItemFromObjectCaseSensitive(meta(p), "provenance");
}
static void m_prov_round(parts_t *p)
{
    set_meta(p, "provenance",
             "{\"source\":\"central\",\"rounds\":2,\"selected_round\":3,\"sites\":1,"
             "\"strategy\":\"central\",\"secure_aggregation\":false,\"dp_epsilon\":null,"
             "\"git_version\":\"x\"}");
}
static void m_meta_number(parts_t *p)
{
    cJSON_AddNumberToObject(meta(p), "rounds", 3);
}
static void m_nan(parts_t *p)
{
    put_f32(p, "gate.fc2.bias", 1, NAN);
}
static void m_inf_mean(parts_t *p)
{
    put_f32(p, "norm.mean", 2, INFINITY);
}
static void m_std_zero(parts_t *p)
{
    put_f32(p, "norm.std", 4, 0.0f);
}
static void m_std_negative(parts_t *p)
{
    put_f32(p, "norm.std", 0, -1.0f);
}

/* raw byte edits of the whole file */
static void r_short(uint8_t *buf, size_t *len)
{
    (void)buf;
    *len = 5;
}
static void r_hlen(uint8_t *buf, size_t *len)
{
    uint64_t h = *len;
    memcpy(buf, &h, 8);
}
static void r_not_json(uint8_t *buf, size_t *len)
{
    (void)len;
    buf[8] = '[';
}
static void r_trailing(uint8_t *buf, size_t *len)
{
    (void)len;
    uint64_t h;
    memcpy(&h, buf, 8);
    buf[8 + h - 1] = 'x'; /* the last byte of the header is the closing brace or padding */
}

typedef struct {
    const char *what;
    void (*mut)(parts_t *p);
    void (*raw)(uint8_t *buf, size_t *len);
    const char *expect; /* in the error message */
} corrupt_case_t;

static const corrupt_case_t k_cases[] = {
    {"dtype", m_dtype, NULL, "tensor gate.fc1.weight: dtype F16, expected F32"},
    {"transposed shape", m_shape, NULL,
     "gate.fc1.weight: shape [27,8], the config's layout gives [8,27]"},
    {"shape vs bytes", m_shape_bytes, NULL, "heads.bias: data_offsets"},
    {"offsets outside", m_outside, NULL, "norm.std: data_offsets"},
    {"overlap", m_overlap, NULL, "overlap"},
    {"unused data", m_gap, NULL, "cover"},
    {"fractional offsets", m_fraction, NULL, "heads.bias: data_offsets: expected [begin, end]"},
    {"end before begin", m_backwards, NULL, "end before begin"},
    {"missing tensor", m_missing_norm, NULL, "missing"},
    {"unexpected tensor", m_unexpected, NULL, "tensor heads.extra: not a parameter"},
    {"no metadata", m_no_meta, NULL, "no __metadata__"},
    {"format", m_format, NULL, "moeh_format 'moeh-model/0'"},
    {"config not JSON", m_cfg_json, NULL, "__metadata__.moeh_config"},
    {"config out of range", m_cfg_range, NULL, "top_k"},
    {"spec hash", m_hash, NULL, "moeh_spec_hash 0123456789abcdef"},
    {"data shape", m_data_shape, NULL, "data_shape.n_vars"},
    {"tasks", m_tasks, NULL, "__metadata__.tasks"},
    {"static names", m_static_count, NULL, "__metadata__.static_features"},
    {"ts features", m_ts_shape, NULL, "__metadata__.ts_features[0]"},
    {"no provenance", m_prov, NULL, "__metadata__.provenance"},
    {"selected round", m_prov_round, NULL, "selected_round <= rounds"},
    {"metadata number", m_meta_number, NULL, "__metadata__.rounds: not a string"},
    {"NaN parameter", m_nan, NULL, "gate.fc2.bias[1] is not finite"},
    {"infinite mean", m_inf_mean, NULL, "norm.mean[2] is not finite"},
    {"zero std", m_std_zero, NULL, "norm.std[4] = 0"},
    {"negative std", m_std_negative, NULL, "norm.std[0] = -1"},
    {"short file", NULL, r_short, "too short"},
    {"header length", NULL, r_hlen, "exceeds the file"},
    {"header not an object", NULL, r_not_json, "not a JSON object"},
    {"text after header", NULL, r_trailing, "text after the header"},
};

static void test_corrupt(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        const corrupt_case_t *k = &k_cases[i];
        write_ref(1);
        if (k->mut) {
            parts_t p;
            parts_load(&p);
            k->mut(&p);
            parts_save(&p);
        } else {
            char *buf = NULL;
            size_t len = 0;
            moeh_err_t e0 = {0};
            assert_int_equal(moeh_file_read_all(g_path, 1 << 30, &buf, &len, &e0), 0);
            k->raw((uint8_t *)buf, &len);
            assert_int_equal(moeh_file_write_atomic(g_path, buf, len, &e0), 0);
            free(buf);
        }
        moeh_modelfile_t *mf = NULL;
        moeh_err_t err = {0};
        int rc = moeh_modelfile_read(g_path, 0, &mf, &err);
        if (rc != -EINVAL || !strstr(err.msg, k->expect) || !strstr(err.msg, g_path)) {
            fprintf(stderr, "case '%s': rc %d, message '%s', expected '%s'\n", k->what, rc, err.msg,
                    k->expect);
            fail();
        }
        assert_null(mf);
    }
    /* the unmodified file still reads (the cases start from a good file) */
    write_ref(1);
    moeh_modelfile_t *mf = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_modelfile_read(g_path, 0, &mf, &err), 0);
    moeh_modelfile_destroy(&mf);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none.safetensors", g_dir);
    assert_int_equal(moeh_modelfile_read(missing, 0, &mf, &err), -ENOENT);
}

/* ---- datasets ---- */

static moeh_dataset_t *tiny_dataset(size_t f_static, size_t f_ts, size_t img)
{
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_create(2, f_static, f_ts, img, &ds, &err), 0);
    ds->t = 4;
    const char *st[4] = {"age", "sex_female", "bmi", "x"};
    const char *ts[3] = {"hr", "sbp", "y"}, *un[3] = {"bpm", "mmHg", "u"};
    assert_int_equal(moeh_dataset_set_names(ds, st, ts, un, &err), 0);
    return ds;
}

static void test_check_dataset(void **state)
{
    (void)state;
    write_ref(1);
    moeh_modelfile_t *mf = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_modelfile_read(g_path, 0, &mf, &err), 0);
    moeh_dataset_t *ds = tiny_dataset(3, 2, 8);
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), 0);
    free(ds->ts_units[1]);
    ds->ts_units[1] = strdup("kPa");
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "hourly variable 1 is 'sbp' (mmHg) in the model, 'sbp' (kPa)"));
    free(ds->static_names[0]);
    ds->static_names[0] = strdup("age_years");
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "static feature 0 is 'age' in the model, 'age_years'"));
    moeh_dataset_destroy(&ds);
    ds = tiny_dataset(3, 3, 8);
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), -EINVAL);
    assert_non_null(strstr(
        err.msg,
        "2 hourly variables over 4 hours and 8 x 8 images; the dataset has 3, 3, 4 and 8 x 8"));
    moeh_dataset_destroy(&ds);
    ds = tiny_dataset(3, 2, 16);
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "the dataset has 3, 2, 4 and 16 x 16"));
    moeh_dataset_destroy(&ds);
    moeh_modelfile_destroy(&mf);
    /* a file without names compares counts only */
    write_ref(0);
    assert_int_equal(moeh_modelfile_read(g_path, 0, &mf, &err), 0);
    ds = tiny_dataset(3, 2, 8);
    free(ds->ts_names[0]);
    ds->ts_names[0] = strdup("anything");
    assert_int_equal(moeh_modelfile_check_dataset(mf, ds, "ds", &err), 0);
    moeh_dataset_destroy(&ds);
    moeh_modelfile_destroy(&mf);
}

static void test_names_from_meta(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/meta.json", g_dir);
    const char *good = "{\"static_features\":[\"age\",\"sex_female\"],"
                       "\"ts_features\":[{\"name\":\"hr\",\"unit\":\"bpm\"}]}";
    moeh_err_t err = {0};
    assert_int_equal(moeh_file_write_atomic(path, good, strlen(good), &err), 0);
    moeh_modelfile_names_t nm;
    assert_int_equal(moeh_modelfile_names_load(g_dir, &nm, &err), 0); /* the directory */
    assert_int_equal(nm.n_static, 2);
    assert_int_equal(nm.n_vars, 1);
    assert_string_equal(nm.static_names[1], "sex_female");
    assert_string_equal(nm.ts_units[0], "bpm");
    moeh_modelfile_names_free(&nm);
    assert_int_equal(moeh_modelfile_names_load(path, &nm, &err), 0); /* the file */
    moeh_modelfile_names_free(&nm);
    const char *bad = "{\"static_features\":[\"age\",3],\"ts_features\":[]}";
    assert_int_equal(moeh_file_write_atomic(path, bad, strlen(bad), &err), 0);
    assert_int_equal(moeh_modelfile_names_load(path, &nm, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "static_features[1]"));
    assert_null(nm.static_names);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_round_trip), cmocka_unit_test(test_corrupt),
               cmocka_unit_test(test_check_dataset), cmocka_unit_test(test_names_from_meta))
