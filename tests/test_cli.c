/* test_cli.c - the binaries in MOEH_BIN_DIR as a user meets them: usage errors exit 2 and name
 * the option and its value (missing required options too, a bad --data-shape, moeh-keygen's),
 * unknown options get "did you mean", --bind 7402 gets the tcp://HOST:PORT hint, duplicate INI
 * keys are refused with file:line, no --help shows a sentinel value such as 4294967295, and
 * moeh-keygen writes a key pair and the registry line of the same public key; an agent given
 * the wrong key files names the option and exits 2 (or 3 for one key on both sides). */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --data-shape 35,33",
         "--data-shape '35,33': expected STATIC,VARS,HOURS,IMAGE, four non-negative integers"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --data-shape 35,33,0,64",
         "--data-shape '35,33,0,64': HOURS 0: expected 1..1000"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --data-shape 35,33,48,2048",
         "--data-shape '35,33,48,2048': IMAGE 2048: expected 0..1024"},
        {"moeh-coordinator", "--out run --registry r.ini --key c.key --data-shape=-1,33,48,64",
         "--data-shape '-1,33,48,64': expected STATIC,VARS,HOURS,IMAGE"},
        {"moeh-keygen", "", "moeh-keygen: missing BASE"},
        {"moeh-keygen", "k1 k2", "unexpected argument 'k2': moeh-keygen takes 1 BASE"},
        {"moeh-keygen", "--sit s1 s1", "unknown option '--sit' (did you mean --site?"},
        {"moeh-keygen", "--site 'st marys' k1", "--site 'st marys': expected 1-64 of"},
        {"moeh-keygen", "--site", "--site needs a value"},
        {"moeh-keygen", "-f k1", "unknown option '-f' (options are --NAME"},
        {"moeh-keygen", "--force=maybe k1", "--force: 'maybe' is not a boolean"},
        {"moeh-keygen", "--no-site k1", "--site is not a boolean"},
        {"moeh-keygen", "''", "BASE '': expected a file name"},
        {"moeh-keygen", "keys/", "BASE 'keys/': expected a file name"},
        {"moeh-site-agent",
         "--site-id a --dataset d --out o --key k --server-key s --connect tcp://127.0.0.1:7402x",
         "'7402x' is not a port: tcp://HOST:PORT with a port 1..65535 (or * to bind any), e.g. "
         "tcp://127.0.0.1:7400"},
        {"moeh", "train", "--dataset is required"},
        {"moeh", "train --dataset d --epochz 3", "did you mean --epochs?"},
        {"moeh", "run --rond 3", "unknown option '--rond' (did you mean --rounds?"},
        {"moeh", "stats run", "unknown command 'stats' (did you mean status?)"},
        {"moeh", "status run --jsno", "unknown option '--jsno' (did you mean --json?"},
        {"moeh", "report run --otu r.html", "unknown option '--otu' (did you mean --out?"},
        {"moeh", "status run --verbose", "unknown option '--verbose' (see moeh status --help)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run(cases[i].prog, cases[i].args);
        if (rc != 2) fprintf(stderr, "%s %s: exit %d\n", cases[i].prog, cases[i].args, rc);
        assert_int_equal(rc, 2);
        assert_true(out_has(cases[i].needle));
    }
    /* no usage error of moeh-keygen wrote a key file */
    char path[400];
    snprintf(path, sizeof path, "%s/k1.key", g_dir);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof path, "%s/s1.key", g_dir);
    assert_int_equal(access(path, F_OK), -1);
}

/* The value of "public-key = " in DIR/name (a .pub or .key file) into key (41 bytes). */
static void public_key_of(const char *name, char *key)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    char *txt = cli_slurp(p);
    assert_non_null(txt);
    const char *k = strstr(txt, "public-key = ");
    assert_non_null(k);
    assert_int_equal(sscanf(k, "public-key = %40s", key), 1);
    assert_int_equal(strlen(key), 40);
    free(txt);
}

/* moeh-keygen as the docs use it: the key pair, the registry line naming the same public key,
 * the secret file 0600, an existing key kept unless --force. */
static void test_keygen(void **state)
{
    (void)state;
    assert_int_equal(run("moeh-keygen", "--site st-marys st-marys"), 0);
    assert_true(out_has("wrote st-marys.key and st-marys.pub\nregistry line ([sites]):\n"
                        "st-marys = "));
    char pub[41], in_key[41], line[80];
    public_key_of("st-marys.pub", pub);
    public_key_of("st-marys.key", in_key);
    assert_string_equal(pub, in_key);
    snprintf(line, sizeof line, "st-marys = %s\n", pub);
    assert_true(out_has(line));
    char path[400];
    snprintf(path, sizeof path, "%s/st-marys.key", g_dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* an existing key is kept (exit 1: not a usage error), --force replaces it */
    assert_int_equal(run("moeh-keygen", "st-marys"), 1);
    assert_true(out_has("st-marys.key exists (use --force to overwrite)"));
    public_key_of("st-marys.pub", in_key);
    assert_string_equal(pub, in_key);
    assert_int_equal(run("moeh-keygen", "st-marys --force"), 0); /* options after BASE too */
    assert_true(out_has("wrote st-marys.key and st-marys.pub"));
    char *txt = output(); /* no --site: no registry line */
    assert_null(strstr(txt, "registry line"));
    free(txt);
    public_key_of("st-marys.pub", in_key);
    assert_string_not_equal(pub, in_key);

    /* the options from an INI file, like every other binary */
    snprintf(path, sizeof path, "%s/keygen.ini", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("site = kings\n", f);
    fclose(f);
    assert_int_equal(run("moeh-keygen", "--config keygen.ini kings"), 0);
    assert_true(out_has("registry line ([sites]):\nkings = "));

    assert_int_equal(run("moeh-keygen", "--help"), 0);
    assert_true(out_has("usage: moeh-keygen [--site ID] [--force] BASE"));
    assert_true(out_has("--site STR"));
    assert_int_equal(run("moeh-keygen", "--version"), 0);
    assert_true(out_has("moeh-keygen "));
}

/* Key files mixed up at a site, refused before the dataset is read or anything connects, each
 * naming the option: the coordinator's key pair as --server-key (a public key was expected), a
 * .pub as --key, a missing file: exit 2 (a configuration error); the coordinator's key pair as
 * --key, so both sides hold the same public key: exit 3, blaming neither option alone (it
 * blamed --server-key, which was right). */
static void test_agent_key_mixups(void **state)
{
    (void)state;
    assert_int_equal(run("moeh-keygen", "coordinator"), 0);
    assert_int_equal(run("moeh-keygen", "--site s1 s1"), 0);
    static const char agent[] = "--site-id s1 --dataset nowhere --out o ";
    static const struct {
        const char *keys, *needle;
        int code;
    } cases[] = {
        {"--key s1.key --server-key coordinator.key",
         "--server-key coordinator.key: holds a secret-key, so it is a key pair file", 2},
        {"--key s1.pub --server-key coordinator.pub", "--key s1.pub: missing secret-key", 2},
        {"--key s1.key --server-key nowhere.pub", "--server-key nowhere.pub: cannot open", 2},
        {"--key coordinator.key --server-key coordinator.pub",
         "--key coordinator.key and --server-key coordinator.pub hold the same public key", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[300];
        snprintf(args, sizeof args, "%s%s", agent, cases[i].keys);
        int rc = run("moeh-site-agent", args);
        if (rc != cases[i].code) fprintf(stderr, "moeh-site-agent %s: exit %d\n", args, rc);
        assert_int_equal(rc, cases[i].code);
        assert_true(out_has(cases[i].needle));
        assert_false(out_has("nowhere/meta.json")); /* the keys come before the dataset */
    }
}

/* moeh --help says what the binary is: the whole tool, every command listed (its first line
 * said "Simulates a federation", one command of eight). */
static void test_moeh_help(void **state)
{
    (void)state;
    assert_int_equal(run("moeh", "--help"), 0);
    assert_true(out_has("The moeh tool for researchers and sites"));
    assert_false(out_has("Simulates"));
    static const char *const cmds[] = {"run",   "synth",  "extract", "split",
                                       "train", "report", "predict", "status"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char line[32];
        snprintf(line, sizeof line, "\n  %-8s ", cmds[i]);
        assert_true(out_has(line));
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
                {"moeh", "synth --help"},       {"moeh-keygen", "--help"}};
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
               cmocka_unit_test(test_keygen), cmocka_unit_test(test_agent_key_mixups),
               cmocka_unit_test(test_moeh_help), cmocka_unit_test(test_duplicate_ini_key),
               cmocka_unit_test(test_help_has_no_sentinel))
