/* test_checkpoint.c - safetensors checkpoints: round trip (bit-exact weights, config and spec
 * hash in the metadata), and loading that refuses a file whose tensors differ (shape, missing,
 * unexpected, dtype, non-finite, truncated) with a message naming the difference, leaving the
 * model untouched. Temporary files live in a per-test directory that is removed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_safetensors.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <math.h>

static char dir[256];

static moeh_moe_cfg_t cfg_small(moeh_arch_t arch, size_t d)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    c.arch = arch;
    c.d_emb = d;
    c.d_hidden = 5;
    c.n_steps = 4;
    c.note_buckets = 32;
    c.img_size = 8;
    c.cnn_ch[0] = 2, c.cnn_ch[1] = 3, c.cnn_ch[2] = 4;
    c.max_batch = 4;
    return c;
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/moeh_test_ckpt.%d", (int)getpid());
    return moeh_mkdir_p(dir, NULL);
}

static int teardown(void **state)
{
    return moeh_test_rmtree(dir);
}

static void path_of(char *out, const char *name)
{
    snprintf(out, 320, "%s/%s", dir, name);
}

static void test_roundtrip(void **state)
{
    moeh_moe_cfg_t c = cfg_small(MOEH_ARCH_MOE, 6);
    c.seed = 1;
    moeh_moe_t *a = NULL, *b = NULL;
    assert_int_equal(moeh_moe_create(&c, &a, NULL), 0);
    c.seed = 2;
    c.max_batch = 9; /* a workspace size may differ */
    assert_int_equal(moeh_moe_create(&c, &b, NULL), 0);
    char path[320];
    path_of(path, "a.safetensors");
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_moe_save(a, path, &err), 0);
    moeh_params_t *pa = moeh_moe_params(a), *pb = moeh_moe_params(b);
    assert_true(memcmp(pa->w, pb->w, pa->n * 4) != 0);
    assert_int_equal(moeh_moe_load(b, path, &err), 0);
    assert_memory_equal(pa->w, pb->w, pa->n * 4);
    /* metadata: config and spec hash */
    char *meta = NULL;
    assert_int_equal(moeh_safetensors_load(pb, path, &meta, &err), 0);
    assert_non_null(meta);
    assert_non_null(strstr(meta, "moeh_spec_hash"));
    assert_non_null(strstr(meta, "\\\"d_emb\\\":6"));
    free(meta);
    /* config JSON round trip */
    char *js = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js, &err), 0);
    moeh_moe_cfg_t back;
    assert_int_equal(moeh_moe_cfg_from_json(js, &back, &err), 0);
    assert_int_equal(back.d_emb, 6);
    assert_int_equal(back.cnn_ch[2], 4);
    assert_true(back.seed == 2 && back.max_batch == 9 && back.temperature == c.temperature);
    free(js);
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&b);
}

static void expect_refused(moeh_moe_t *m, const char *path, const char *needle)
{
    moeh_params_t *p = moeh_moe_params(m);
    float *before = malloc(p->n * 4);
    memcpy(before, p->w, p->n * 4);
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_moe_load(m, path, &err), -EINVAL);
    if (!strstr(err.msg, needle)) print_message("message '%s' lacks '%s'\n", err.msg, needle);
    assert_non_null(strstr(err.msg, needle));
    assert_memory_equal(before, p->w, p->n * 4);
    free(before);
}

static void test_refuses_differences(void **state)
{
    moeh_moe_cfg_t c = cfg_small(MOEH_ARCH_MOE, 6);
    moeh_moe_t *a = NULL, *wide = NULL, *uni = NULL;
    assert_int_equal(moeh_moe_create(&c, &a, NULL), 0);
    char path[320], bad[320];
    path_of(path, "a.safetensors");
    assert_int_equal(moeh_moe_save(a, path, NULL), 0);
    /* another width: every shape differs */
    c = cfg_small(MOEH_ARCH_MOE, 7);
    assert_int_equal(moeh_moe_create(&c, &wide, NULL), 0);
    expect_refused(wide, path, "ehr.static.weight: shape [6,3] in file, [7,3] in model");
    /* unimodal model: the file has tensors it lacks */
    c = cfg_small(MOEH_ARCH_UNI_EHR, 6);
    assert_int_equal(moeh_moe_create(&c, &uni, NULL), 0);
    expect_refused(uni, path, "unexpected tensor");
    /* a MoE file without one tensor: write a store lacking heads.bias */
    moeh_params_t *pa = moeh_moe_params(a);
    moeh_params_t q;
    moeh_params_init(&q);
    for (size_t i = 0; i < pa->n_views; i++)
        if (strcmp(pa->views[i].name, "heads.bias") != 0)
            assert_true(moeh_params_add(&q, pa->views[i].name, "g", pa->views[i].ndim,
                                        pa->views[i].shape) >= 0);
    assert_int_equal(moeh_params_finalize(&q), 0);
    path_of(bad, "missing.safetensors");
    assert_int_equal(moeh_safetensors_save(&q, bad, NULL, NULL, 0, NULL), 0);
    expect_refused(a, bad, "missing tensor heads.bias");
    /* non-finite value */
    moeh_params_t *pw = moeh_moe_params(a);
    float keep = pw->w[0];
    pw->w[0] = NAN;
    path_of(bad, "nan.safetensors");
    assert_int_equal(moeh_moe_save(a, bad, NULL), 0);
    pw->w[0] = keep;
    expect_refused(a, bad, "not finite");
    /* F16 dtype and truncation, by editing the bytes of a good file */
    char *buf = NULL;
    size_t len;
    assert_int_equal(moeh_file_read_all(path, 1 << 26, &buf, &len, NULL), 0);
    char *f32 = strstr(buf + 8, "\"F32\"");
    assert_non_null(f32);
    memcpy(f32, "\"F16\"", 5);
    path_of(bad, "f16.safetensors");
    assert_int_equal(moeh_file_write_atomic(bad, buf, len, NULL), 0);
    expect_refused(a, bad, "dtype F16, expected F32");
    memcpy(f32, "\"F32\"", 5);
    path_of(bad, "short.safetensors");
    assert_int_equal(moeh_file_write_atomic(bad, buf, len - 10, NULL), 0);
    expect_refused(a, bad, "invalid");
    assert_int_equal(moeh_file_write_atomic(bad, buf, 5, NULL), 0);
    expect_refused(a, bad, "not a safetensors file");
    free(buf);
    moeh_params_free(&q);
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&wide);
    moeh_moe_destroy(&uni);
}

static void test_config_mismatch(void **state)
{
    /* same tensors, different temperature: the stored config says so */
    moeh_moe_cfg_t c = cfg_small(MOEH_ARCH_MOE, 6);
    moeh_moe_t *a = NULL, *b = NULL;
    assert_int_equal(moeh_moe_create(&c, &a, NULL), 0);
    c.temperature = 2.0f;
    assert_int_equal(moeh_moe_create(&c, &b, NULL), 0);
    char path[320];
    path_of(path, "t.safetensors");
    assert_int_equal(moeh_moe_save(a, path, NULL), 0);
    expect_refused(b, path, "temperature (file 1, model 2)");
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&b);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_roundtrip),
               cmocka_unit_test(test_refuses_differences), cmocka_unit_test(test_config_mismatch))
