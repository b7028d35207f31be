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
#include "ckpt_craft.h"
#include "test_util.h"

#include "moeh_checkpoint.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

MOEH_TEST_FILE_FIXTURE("badckpt", "checkpoint.moeh")

/* Loads g_path, expects a refusal whose message names the file and contains want. */
static void refused(const char *want)
{
    moeh_ckpt_t c;
    moeh_err_t err = {0};
    int rc = moeh_ckpt_load(g_path, &c, &err);
    if (rc == 0) moeh_ckpt_free(&c);
    assert_int_equal(rc, -EBADMSG);
    if (!strstr(err.msg, g_path) || !strstr(err.msg, want))
        fail_msg("message '%s' should name %s and say '%s'", err.msg, g_path, want);
    assert_int_equal(c.n_arrays, 0); /* nothing left allocated */
}

static void test_honest_loads(void **state)
{
    (void)state;
    const float d[8] = {0.5f, -1, 0, 1, 3, 2, 4, 0};
    assert_int_equal(moeh_test_craft_ckpt(g_path, "7", d), 0);
    moeh_ckpt_t c;
    moeh_err_t err = {0};
    assert_int_equal(moeh_ckpt_load(g_path, &c, &err), 0);
    assert_int_equal(c.round, 7);
    assert_int_equal(c.n_arrays, 3);
    moeh_ckpt_free(&c);
}

/* Every case of ckpt_craft.h: data_shape 1e10 or fractional, round 1e300, 2.5 or 2^32, a NaN
 * or infinite parameter, a standard deviation of -2 or 0. */
static void test_crafted_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof moeh_test_bad_ckpts / sizeof moeh_test_bad_ckpts[0]; i++) {
        const moeh_test_bad_ckpt_t *k = &moeh_test_bad_ckpts[i];
        assert_int_equal(moeh_test_craft_ckpt(g_path, k->round, k->d), 0);
        refused(k->want);
    }
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
    char stale[600], mine[600], other[600];
    snprintf(stale, sizeof stale, "%s.tmp.%d", g_path, (int)dead);
    snprintf(mine, sizeof mine, "%s.tmp.%d", g_path, (int)getpid());
    snprintf(other, sizeof other, "%s.tmp.12x", g_path);
    touch(stale), touch(mine), touch(other);
    size_t n = 99;
    moeh_err_t err = {0};
    assert_int_equal(moeh_ckpt_remove_stale(g_path, &n, &err), 0);
    assert_int_equal(n, 1);
    struct stat st;
    assert_int_equal(stat(stale, &st), -1);
    assert_int_equal(stat(mine, &st), 0);
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(unlink(mine), 0);
    assert_int_equal(unlink(other), 0);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_stale_tmp),
               cmocka_unit_test(test_honest_loads), cmocka_unit_test(test_crafted_refused))
