/* test_cli.c - the binaries in MOEH_BIN_DIR as a user meets them: usage errors exit 2 and name
 * the option and its value (missing required options too), unknown options get "did you mean",
 * --bind 7402 gets the tcp://HOST:PORT hint, duplicate INI keys are refused with file:line, and
 * no --help shows a sentinel value such as 4294967295. */
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

static char g_dir[256];

static int setup(void **state)
{
    (void)state;
    if (moeh_test_tmpdir(g_dir, sizeof g_dir, "cli") != 0) return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(g_dir);
}

/* runs "BIN_DIR/prog args" in DIR (its output in DIR/out) and returns the exit status */
static int run(const char *prog, const char *args)
{
    char bin[1024];
    cli_bin(bin, sizeof bin, prog);
    return cli_run(g_dir, bin, args);
}

/* DIR/out (the test fails if it cannot be read) */
static char *output(void)
{
    char p[512];
    snprintf(p, sizeof p, "%s/out", g_dir);
    char *txt = cli_slurp(p);
    assert_non_null(txt);
    return txt;
}

static bool out_has(const char *s)
{
    return cli_out_has(g_dir, s);
}

static void test_usage_errors_exit_2(void **state)
{
    (void)state;
    static const struct {
        const char *prog, *args, *needle;
    } cases[] = {
        {"moeh-coordinator", "--registry r.ini --key c.key", "missing required option --out"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --rounds 0",
         "--rounds 0: expected at least 1"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --rounds x",
         "--rounds: 'x' is not a non-negative integer"},
        {"moeh-coordinator", "--out run --rouns 3", "did you mean --rounds?"},
        {"moeh-coordinator", "--out run --no-secag", "did you mean --no-secagg?"},
        {"moeh-coordinator", "--out run --bind 7402",
         "--bind '7402': not a ZeroMQ endpoint; expected tcp://HOST:PORT, e.g. tcp://*:7402"},
        {"moeh-coordinator", "--out run --bind tcp://127.0.0.1", "needs a port"},
        {"moeh-coordinator", "--out run", "--registry FILE and --key FILE are required"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --join-window 6",
         "--join-window: '6' is not a duration"},
        {"moeh-site-agent", "--dataset d --key k --server-key s",
         "missing required option --site-id"},
        {"moeh-site-agent", "--site-id a --key k --server-key s",
         "missing required option --dataset"},
        {"moeh-site-agent", "--site-id a --dataset d --key k --server-key s",
         "missing required option --out"},
        {"moeh-site-agent", "--site-id a --dataset d --out o", "--server-key FILE"},
        {"moeh-site-agent", "--site-id a --dataset d --out o --key k --server-key s --connect 7402",
         "e.g. tcp://COORDINATOR-HOST:7402"},
        {"moeh-site-agent", "--site-id a --dataset d --out o --give-up-ms -1",
         "--give-up-ms: '-1' is not a non-negative integer"},
        {"moeh", "train", "--dataset is required"},
        {"moeh", "train --dataset d --epochz 3", "did you mean --epochs?"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run(cases[i].prog, cases[i].args);
        if (rc != 2) fprintf(stderr, "%s %s: exit %d\n", cases[i].prog, cases[i].args, rc);
        assert_int_equal(rc, 2);
        assert_true(out_has(cases[i].needle));
    }
}

static void test_duplicate_ini_key(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.ini", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[federation]\nrounds = 20\nmin-sites = 3\n\n[training]\nrounds = 5\n", f);
    fclose(f);
    assert_int_equal(run("moeh-coordinator", "--config coordinator.ini --out run"), 2);
    assert_true(out_has("coordinator.ini:6: 'rounds' is set twice (first on line 2)"));
}

static void test_help_has_no_sentinel(void **state)
{
    (void)state;
    static const struct {
        const char *prog, *args;
    } cmds[] = {{"moeh-coordinator", "--help"}, {"moeh-site-agent", "--help"},
                {"moeh", "train --help"},       {"moeh", "run --help"},
                {"moeh", "extract --help"},     {"moeh", "split --help"},
                {"moeh", "synth --help"}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        assert_int_equal(run(cmds[i].prog, cmds[i].args), 0);
        char *txt = output();
        if (strstr(txt, "4294967295") || strstr(txt, "18446744073709551615"))
            fprintf(stderr, "%s %s shows a sentinel:\n%s\n", cmds[i].prog, cmds[i].args, txt);
        assert_null(strstr(txt, "4294967295"));
        assert_null(strstr(txt, "18446744073709551615"));
        free(txt);
    }
    assert_int_equal(run("moeh-coordinator", "--help"), 0);
    assert_true(out_has("--ready-fd N"));
    assert_true(out_has("once listening (default: none)"));
    assert_true(out_has("(default: 6h)"));
    assert_true(out_has("(default: on; --no-secagg)"));
    assert_true(out_has("model.npy (required)"));
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_usage_errors_exit_2),
               cmocka_unit_test(test_duplicate_ini_key),
               cmocka_unit_test(test_help_has_no_sentinel))
