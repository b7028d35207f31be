/* test_coordinator_defaults.c - moeh-coordinator's defaults as an operator meets them, through
 * the binary in MOEH_BIN_DIR: an output directory holding a run is refused (exit 2, naming
 * --resume and --new-run) and left untouched; --new-run moves the old files aside intact;
 * --resume keeps them; secure aggregation is on by default, refused with a quorum below 3 unless
 * --secagg-allow-2, and the default quorum is 3 with it and 2 without (--no-secagg); per-site
 * metrics are off unless --per-site-metrics (the effective configuration, config.json).
 *
 * A run with no agent ends after --join-window 1s with "only 0 of the N sites needed joined"
 * (exit 1): that line shows that the configuration was accepted and which quorum it has. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "cli_util.h"
#include "test_util.h"

#include "moeh_common.h"

#include <dirent.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char g_dir[256], g_bin[1024];

static int setup(void **state)
{
    (void)state;
    if (moeh_test_tmpdir(g_dir, sizeof g_dir, "coorddef") != 0) return -1;
    cli_bin(g_bin, sizeof g_bin, "moeh-coordinator");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(g_dir);
}

/* runs the coordinator (no sites: plaintext on a free loopback port, 1 s join window) with
 * args and returns its exit status; its output goes to DIR/out */
static int coord(const char *args)
{
    char a[4096];
    snprintf(a, sizeof a, "--insecure --bind 'tcp://127.0.0.1:*' --join-window 1s --no-table %s",
             args);
    return cli_run(g_dir, g_bin, a);
}

/* DIR/rel, or NULL */
static char *slurp(const char *rel)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, rel);
    return cli_slurp(p);
}

static bool out_has(const char *s)
{
    return cli_out_has(g_dir, s);
}

static void put(const char *rel, const char *text)
{
    assert_int_equal(moeh_test_put(g_dir, rel, text), 0);
}

static const char *k_metrics =
    "{\"event\":\"eval\",\"round\":1}\n{\"event\":\"eval\",\"round\":2}\n";
static const char *k_ckpt = "not a real checkpoint, but an earlier run's file all the same\n";

/* DIR/name, made, holding an earlier run's metrics.jsonl (k_metrics) */
static void earlier_run(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/metrics.jsonl", name);
    put(p, k_metrics);
}

/* DIR/rel holds exactly text */
static void assert_file(const char *rel, const char *text)
{
    char *m = slurp(rel);
    assert_non_null(m);
    assert_string_equal(m, text);
    free(m);
}

/* the one previous-run-* directory in DIR/run, or "" */
static void previous_run(char *name, size_t cap)
{
    char p[512];
    snprintf(p, sizeof p, "%s/run", g_dir);
    name[0] = '\0';
    DIR *d = opendir(p);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "previous-run-", 13)) snprintf(name, cap, "%s", e->d_name), n++;
    closedir(d);
    assert_int_equal(n, 1);
}

static void test_existing_run_refused_then_moved(void **state)
{
    (void)state;
    earlier_run("run");
    put("run/checkpoint.moeh", k_ckpt);

    /* refused, untouched, and told what to do */
    assert_int_equal(coord("--out run"), 2);
    assert_true(out_has("holds an earlier run"));
    assert_true(out_has("--resume to continue it"));
    assert_true(out_has("--new-run"));
    assert_file("run/metrics.jsonl", k_metrics);

    /* --new-run: the old files move, byte for byte, into run/previous-run-<time>/ */
    assert_int_equal(coord("--out run --new-run"), 1); /* no site joins within 1 s */
    assert_true(out_has("only 0 of the 3 sites needed joined"));
    char prev[256], rel[400];
    previous_run(prev, sizeof prev);
    snprintf(rel, sizeof rel, "run/%s/metrics.jsonl", prev);
    assert_file(rel, k_metrics);
    snprintf(rel, sizeof rel, "run/%s/checkpoint.moeh", prev);
    assert_file(rel, k_ckpt);
    snprintf(rel, sizeof rel, "%s/run/checkpoint.moeh", g_dir);
    struct stat st;
    assert_int_not_equal(stat(rel, &st), 0); /* moved, not copied */
}

static void test_resume_keeps_metrics(void **state)
{
    (void)state;
    earlier_run("resume");
    /* without a checkpoint --resume fails, and whatever it says, the metrics stay */
    int rc = coord("--out resume --resume");
    assert_int_not_equal(rc, 0);
    char *m = slurp("resume/metrics.jsonl");
    assert_non_null(m);
    assert_non_null(strstr(m, k_metrics)); /* the old lines are all there, first */
    assert_int_equal(strncmp(m, k_metrics, strlen(k_metrics)), 0);
    free(m);
    /* and --resume with --new-run is refused as a usage error */
    assert_int_equal(coord("--out resume --resume --new-run"), 2);
    assert_true(out_has("exclude each other"));
}

/* the value of "key": in DIR/rel (config.json is cJSON-printed: "key":<TAB>value) */
static bool json_has(const char *rel, const char *key, const char *value)
{
    char *txt = slurp(rel), want[200];
    snprintf(want, sizeof want, "\"%s\":\t%s,", key, value);
    bool r = txt && strstr(txt, want) != NULL;
    if (!r) fprintf(stderr, "%s lacks %s\n%s\n", rel, want, txt ? txt : "(none)");
    free(txt);
    return r;
}

static void test_secagg_default_and_quorum(void **state)
{
    (void)state;
    /* on by default: a quorum of 2 is refused, saying why and what to do */
    assert_int_equal(coord("--out q1 --min-sites 2"), 2);
    assert_true(out_has("secure aggregation with --min-sites 2"));
    assert_true(out_has("each one can subtract its own update from the sum"));
    assert_true(out_has("--secagg-allow-2"));
    assert_true(out_has("--no-secagg"));
    assert_int_equal(coord("--out q1b --min-sites 1"), 2);
    /* forced, it is accepted (and then waits for its 2 sites) */
    assert_int_equal(coord("--out q2 --min-sites 2 --secagg-allow-2"), 1);
    assert_true(out_has("only 0 of the 2 sites needed joined within 1 s (--join-window"));
    assert_true(out_has("secure aggregation: the coordinator learns only sums"));
    /* the default quorum: 3 with secure aggregation, 2 without */
    assert_int_equal(coord("--out q3"), 1);
    assert_true(out_has("only 0 of the 3 sites needed joined"));
    assert_true(json_has("q3/config.json", "secagg", "true"));
    assert_true(json_has("q3/config.json", "min_sites", "3"));
    assert_true(json_has("q3/config.json", "per_site_metrics", "false"));
    assert_true(json_has("q3/config.json", "join_window_ms", "1000")); /* --join-window 1s */
    assert_int_equal(coord("--out q4 --no-secagg"), 1);
    assert_true(out_has("only 0 of the 2 sites needed joined"));
    assert_true(json_has("q4/config.json", "secagg", "false"));
    assert_true(json_has("q4/config.json", "per_site_metrics", "false"));
    assert_int_equal(coord("--out q7 --no-secagg --per-site-metrics"), 1);
    assert_true(json_has("q7/config.json", "per_site_metrics", "true"));
    /* --no-secagg is what a robust strategy needs, and the refusal says so */
    assert_int_equal(coord("--out q5 --strategy median"), 2);
    assert_true(out_has("--no-secagg turns it off"));
    assert_int_equal(coord("--out q6 --strategy median --no-secagg"), 1);
}

/* a site's key pair given to the coordinator as its own: refused (exit 2), naming the site */
static void test_site_key_as_coordinator_key(void **state)
{
    (void)state;
    char kg[1024], reg[200], a[1024];
    cli_bin(kg, sizeof kg, "moeh-keygen");
    assert_int_equal(cli_run(g_dir, kg, "--site s1 s1"), 0);
    assert_int_equal(cli_run(g_dir, kg, "--site s2 s2"), 0);
    assert_int_equal(cli_run(g_dir, kg, "coordinator"), 0);
    char *p1 = slurp("s1.pub"), *p2 = slurp("s2.pub");
    assert_non_null(p1);
    assert_non_null(p2);
    const char *k1 = strstr(p1, "public-key = "), *k2 = strstr(p2, "public-key = ");
    assert_non_null(k1);
    assert_non_null(k2);
    snprintf(reg, sizeof reg, "[sites]\ns1 = %.40s\ns2 = %.40s\n", k1 + 13, k2 + 13);
    free(p1);
    free(p2);
    put("reg.ini", reg);
    const char *base = "--bind 'tcp://127.0.0.1:*' --join-window 1s --no-table --no-secagg "
                       "--registry reg.ini";
    snprintf(a, sizeof a, "%s --key s2.key --out k1", base);
    assert_int_equal(cli_run(g_dir, g_bin, a), 2);
    assert_true(out_has("--key s2.key holds the public key reg.ini registers for site 's2'"));
    assert_true(out_has("moeh-keygen coordinator"));
    snprintf(a, sizeof a, "%s --key coordinator.key --out k2", base); /* its own: it runs */
    assert_int_equal(cli_run(g_dir, g_bin, a), 1);
    assert_true(out_has("only 0 of the 2 sites needed joined within 1 s"));
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_existing_run_refused_then_moved),
               cmocka_unit_test(test_resume_keeps_metrics),
               cmocka_unit_test(test_secagg_default_and_quorum),
               cmocka_unit_test(test_site_key_as_coordinator_key))
