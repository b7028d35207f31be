/* test_badfiles_ckpt.c - coordinator checkpoints crafted with a valid xxhash but hostile
 * contents (issue 13, finding 9): data_shape 1e10, round 1e300, a fractional round, NaN
 * parameters, a negative or zero standard deviation. Each load must fail before anything is
 * allocated from the values, with a message naming the file and the field; an honest file
 * written by moeh_ckpt_save still loads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "test_util.h"

#include "moeh_checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

static char dir[256], path[300];

static int setup(void **state)
{
    (void)state;
    if (moeh_test_tmpdir(dir, sizeof dir, "badckpt")) return -1;
    snprintf(path, sizeof path, "%s/checkpoint.moeh", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(dir);
}

/* Writes a checkpoint with header JSON hdr and the float arrays given back to back, with the
 * hash recomputed, exactly as moeh_ckpt_save lays it out. */
static void craft(const char *hdr, const float *data, size_t n)
{
    uint32_t version = 1, hlen = (uint32_t)strlen(hdr);
    size_t body = 16 + hlen + n * sizeof(float);
    unsigned char *buf = malloc(body + 8);
    assert_non_null(buf);
    memcpy(buf, "MOEHCKPT", 8);
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &hlen, 4);
    memcpy(buf + 16, hdr, hlen);
    if (n) memcpy(buf + 16 + hlen, data, n * sizeof(float));
    uint64_t h = XXH64(buf, body, 0);
    memcpy(buf + body, &h, 8);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, body + 8, f), body + 8);
    assert_int_equal(fclose(f), 0);
    free(buf);
}

#define ARRAYS                                                                                     \
    "\"arrays\":[{\"name\":\"params\",\"count\":2},{\"name\":\"norm\",\"count\":2},"               \
    "{\"name\":\"data_shape\",\"count\":4}]}"
#define HDR(round)                                                                                 \
    "{\"round\":" round ",\"model_version\":3,\"spec_hash\":\"1\",\"n_params\":2,"                 \
    "\"n_groups\":1," ARRAYS

/* Loads path, expects a refusal whose message names the file and contains want. */
static void refused(const char *want)
{
    moeh_ckpt_t c;
    moeh_err_t err = {0};
    int rc = moeh_ckpt_load(path, &c, &err);
    if (rc == 0) moeh_ckpt_free(&c);
    assert_int_equal(rc, -EBADMSG);
    if (!strstr(err.msg, path) || !strstr(err.msg, want))
        fail_msg("message '%s' should name %s and say '%s'", err.msg, path, want);
    assert_int_equal(c.n_arrays, 0); /* nothing left allocated */
}

static void test_honest_loads(void **state)
{
    (void)state;
    float d[8] = {0.5f, -1, 0, 1, 3, 2, 4, 0};
    craft(HDR("7"), d, 8);
    moeh_ckpt_t c;
    moeh_err_t err = {0};
    assert_int_equal(moeh_ckpt_load(path, &c, &err), 0);
    assert_int_equal(c.round, 7);
    assert_int_equal(c.n_arrays, 3);
    moeh_ckpt_free(&c);
}

static void test_data_shape_1e10(void **state)
{
    (void)state;
    float d[8] = {0.5f, -1, 0, 1, 1e10f, 2, 4, 0};
    craft(HDR("7"), d, 8);
    refused("data_shape n_static is 1e+10");
}

static void test_round_1e300(void **state)
{
    (void)state;
    float d[8] = {0.5f, -1, 0, 1, 3, 2, 4, 0};
    craft(HDR("1e300"), d, 8);
    refused("'round' is 1e+300");
    craft(HDR("2.5"), d, 8);
    refused("'round' is 2.5");
    craft(HDR("4294967296"), d, 8);
    refused("'round'");
}

static void test_nan_params(void **state)
{
    (void)state;
    float d[8] = {NAN, -1, 0, 1, 3, 2, 4, 0};
    craft(HDR("7"), d, 8);
    refused("array 'params' element 0 is nan");
    d[0] = 0, d[1] = INFINITY;
    craft(HDR("7"), d, 8);
    refused("array 'params' element 1 is inf");
}

static void test_bad_std(void **state)
{
    (void)state;
    float d[8] = {0.5f, -1, 0, -2, 3, 2, 4, 0};
    craft(HDR("7"), d, 8);
    refused("'norm' standard deviation 0 is -2");
    d[3] = 0;
    craft(HDR("7"), d, 8);
    refused("'norm' standard deviation 0 is 0");
}

static void test_fractional_shape(void **state)
{
    (void)state;
    float d[8] = {0.5f, -1, 0, 1, 3, 2.5f, 4, 0};
    craft(HDR("7"), d, 8);
    refused("data_shape n_vars is 2.5");
}

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
}

/* A write killed before its rename leaves checkpoint.moeh.tmp.<pid>: removed at start; the
 * temp file of a live process (this one) and names that are not ours stay. */
static void test_stale_tmp(void **state)
{
    (void)state;
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0) _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    char stale[400], mine[400], other[400];
    snprintf(stale, sizeof stale, "%s.tmp.%d", path, (int)dead);
    snprintf(mine, sizeof mine, "%s.tmp.%d", path, (int)getpid());
    snprintf(other, sizeof other, "%s.tmp.12x", path);
    touch(stale), touch(mine), touch(other);
    size_t n = 99;
    moeh_err_t err = {0};
    assert_int_equal(moeh_ckpt_remove_stale(path, &n, &err), 0);
    assert_int_equal(n, 1);
    struct stat st;
    assert_int_equal(stat(stale, &st), -1);
    assert_int_equal(stat(mine, &st), 0);
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(unlink(mine), 0);
    assert_int_equal(unlink(other), 0);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_stale_tmp),
               cmocka_unit_test(test_honest_loads), cmocka_unit_test(test_data_shape_1e10),
               cmocka_unit_test(test_round_1e300), cmocka_unit_test(test_nan_params),
               cmocka_unit_test(test_bad_std), cmocka_unit_test(test_fractional_shape))
