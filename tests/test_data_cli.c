/* test_data_cli.c - the data subcommands through moeh in MOEH_BIN_DIR: --help and usage errors
 * (exit 0 / 2), synth -> extract (with notes and CXR) -> split, the demo's "vital signs are absent"
 * warning, and readable errors for a missing directory and a corrupted array. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "cli_util.h"
#include "test_util.h"

#include "moeh_common.h"

#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256], g_bin[1024];

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moeh_test_cli_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    cli_bin(g_bin, sizeof g_bin, "moeh");
    return 0;
}

static int teardown(void **state)
{
    return moeh_test_rmtree(g_dir);
}

/* runs "moeh args" in DIR (its output in DIR/out) and returns the exit status */
static int run(const char *args)
{
    return cli_run(g_dir, g_bin, args);
}

static bool out_has(const char *s)
{
    return cli_out_has(g_dir, s);
}

/* Command lines refused as usage errors (exit 2), and what the message says. */
static const struct {
    const char *args, *says;
} k_refused[] = {
    {"split --dataset x --out y --sites A:0", "share of 'A' must be a number > 0"},
    /* numbers are parsed whole and checked, not read with atof */
    {"split --dataset x --out y --sites A:1 --alpha 0.5x",
     "--alpha: '0.5x' is not a finite number"},
    {"split --dataset x --out y --sites A:1 --val 0.7 --test 0.5",
     "expected fractions >= 0 with a sum <= 1"},
    {"split --dataset x --out y --sites A:1 --skew-by age",
     "--skew-by age: expected mortality, los7, readmit30 or careunit"},
    {"synth --out y --admissions -3", "--admissions: '-3' is not a non-negative integer"},
    {"synth --out y --gzip-level 0", "--gzip-level 0: expected 1..9"},
    {"extract --mimic x --out y --image-size 4", "--image-size 4: expected 8..1024"},
    /* an explicit warm-up longer than the run is refused (the default adapts to --rounds) */
    {"run --rounds 2 --warmup-rounds 3 --out y", "--warmup-rounds 3 exceeds --rounds 2"},
};

static void test_help_and_usage(void **state)
{
    const char *cmds[] = {"extract", "synth", "split"};
    for (int i = 0; i < 3; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", cmds[i]);
        assert_int_equal(run(a), 0);
        assert_true(out_has("usage: moeh"));
        snprintf(a, sizeof a, "%s --bogus", cmds[i]);
        assert_int_equal(run(a), 2);
        assert_int_equal(run(cmds[i]), 2); /* required options missing */
    }
    for (size_t i = 0; i < sizeof k_refused / sizeof k_refused[0]; i++)
        if (run(k_refused[i].args) != 2 || !out_has(k_refused[i].says))
            fail_msg("moeh %s: expected exit 2 and '%s'", k_refused[i].args, k_refused[i].says);
    /* the schema's task names are accepted (the run then fails on the missing dataset: 1) */
    assert_int_equal(run("split --dataset /nonexistent --out y --sites A:1 --skew-by readmit30"),
                     1);
    assert_false(out_has("--skew-by"));
    assert_int_equal(run("split --dataset /nonexistent --out y --sites A:1 --skew-by los"), 2);
    assert_int_equal(run("extract --version"), 0);
}

static void test_pipeline(void **state)
{
    char a[2048];
    snprintf(a, sizeof a, "synth --admissions 150 --seed 3 --image-px 96 --out '%s/db'", g_dir);
    assert_int_equal(run(a), 0);
    assert_true(out_has("cohort 150"));
    assert_true(out_has("oracle AUROC"));
    snprintf(a, sizeof a,
             "extract --mimic '%s/db/mimic' --note '%s/db/note' --cxr '%s/db/cxr' --out '%s/ds'",
             g_dir, g_dir, g_dir, g_dir);
    assert_int_equal(run(a), 0);
    assert_true(out_has("cohort 150 admissions"));
    /* options from a --config INI file (flags override it) */
    char ini[512];
    snprintf(ini, sizeof ini, "%s/split.ini", g_dir);
    assert_int_equal(moeh_test_put(g_dir, "split.ini",
                                   "[split]\nsites = A:0.6:ehr+notes+img,B:0.4:ehr\nalpha = 1\n"
                                   "seed = 9\n"),
                     0);
    snprintf(a, sizeof a, "split --config '%s' --dataset '%s/ds' --seed 1 --out '%s/sites'", ini,
             g_dir, g_dir);
    assert_int_equal(run(a), 0);
    assert_true(out_has("site\tmodalities"));
    assert_true(out_has("\nB\tehr\t"));
    /* a missing directory is an error naming the file */
    snprintf(a, sizeof a, "extract --mimic '%s/nowhere' --out '%s/x'", g_dir, g_dir);
    assert_int_equal(run(a), 1);
    assert_true(out_has("nowhere/hosp/patients.csv.gz: No such file"));
    /* a corrupted array is refused by split with the array named */
    char p[600];
    snprintf(p, sizeof p, "%s/ds/labels.npy", g_dir);
    assert_int_equal(moeh_test_poke(p, 1, 0x3f), 0);
    snprintf(a, sizeof a, "split --dataset '%s/ds' --sites careunit --out '%s/s2'", g_dir, g_dir);
    assert_int_equal(run(a), 1);
    assert_true(out_has("array 'labels'"));
}

static void test_demo_warning(void **state)
{
    const char *demo = moeh_test_demo_dir();
    char a[2048];
    snprintf(a, sizeof a, "%s/hosp/patients.csv.gz", demo);
    if (access(a, R_OK)) skip();
    snprintf(a, sizeof a, "extract --mimic '%s' --out '%s/demo'", demo, g_dir);
    assert_int_equal(run(a), 0);
    assert_true(out_has("chartevents.csv.gz is missing: vital signs are absent"));
    assert_true(out_has("cohort 123 admissions (97 subjects)"));
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_help_and_usage),
               cmocka_unit_test(test_pipeline), cmocka_unit_test(test_demo_warning))
