/* test_badfiles_proc.c - hostile files against the real moeh-site-agent binary (issue 13,
 * finding 9): a dataset whose ts_delta is all NaN with valid checksums, a FIFO given as an
 * array file, and the coordinator's key pair file given as --server-key. Each must make the
 * agent exit non-zero at once with a message naming the file, before any network traffic (the
 * endpoint is a closed port); a hang is killed by the timeout below and fails the test. And
 * checkpoints crafted with a valid xxhash (data_shape 1e10, round 1e300, NaN parameters, a
 * negative standard deviation: every case of ckpt_craft.h) given to the real moeh-coordinator
 * --resume: it exits at start naming the file and the field, without a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "ckpt_craft.h"
#include "test_util.h"

#include "moeh_dataset.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static char g_dir[256], g_bin[512];

static int setup(void **state)
{
    (void)state;
    const char *b = getenv("MOEH_BIN_DIR");
    snprintf(g_bin, sizeof g_bin, "%s", b ? b : "bin");
    return moeh_test_tmpdir(g_dir, sizeof g_dir, "badfiles_proc");
}

static int teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(g_dir);
}

/* Runs bin/argv[0] with stdout+stderr into a file, kills it after 30 s; returns its exit
 * status (128+signal if killed) and the output in out. */
static int run(char *const argv[], char *out, size_t cap)
{
    char prog[600], log[400];
    snprintf(prog, sizeof prog, "%s/%s", g_bin, argv[0]);
    snprintf(log, sizeof log, "%s/out.log", g_dir);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, prog, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int st = 0, killed = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > 30 && !killed) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        struct timespec d = {0, 20 * 1000 * 1000};
        nanosleep(&d, NULL); /* polling the child's exit, not synchronising with it */
    }
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void write_dataset(const char *dir, int nan_delta)
{
    moeh_dataset_t *ds;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_create(4, 2, 2, 8, &ds, &err), 0);
    const char *sn[] = {"age", "sex"}, *tn[] = {"hr", "sbp"}, *tu[] = {"bpm", "mmHg"};
    assert_int_equal(moeh_dataset_set_names(ds, sn, tn, tu, &err), 0);
    for (size_t i = 0; i < 4; i++) {
        ds->ids[2 * i] = 1 + (int64_t)i, ds->ids[2 * i + 1] = 10 + (int64_t)i;
        for (size_t k = 0; k < 48 * 2; k++)
            ds->ts_delta[i * 96 + k] = nan_delta ? NAN : 0.0f;
        for (size_t t = 0; t < 3; t++)
            ds->label_mask[3 * i + t] = 1, ds->avail[3 * i + t] = t == 0;
        ds->note_offsets[i + 1] = 0;
        ds->split[i] = 0;
    }
    assert_int_equal(moeh_dataset_write(ds, dir, &err), 0);
    moeh_dataset_destroy(&ds);
}

static void expect_refused(char *const argv[], const char *want)
{
    char out[8192];
    int rc = run(argv, out, sizeof out);
    if (rc == 0 || rc >= 128 || !strstr(out, want))
        fail_msg("exit %d (want 1 or 2, not killed), output should contain '%s':\n%s", rc, want,
                 out);
}

/* moeh-site-agent --insecure on dataset ds, towards a closed port: refused at start. */
static void expect_agent_refused(char *ds, const char *want)
{
    char *argv[] = {
        "moeh-site-agent",   "--site-id",    "s1",   "--dataset", ds,    "--insecure", "--connect",
        "tcp://127.0.0.1:1", "--give-up-ms", "3000", "--out",     g_dir, NULL};
    expect_refused(argv, want);
}

static void test_nan_delta_agent(void **state)
{
    (void)state;
    char ds[400];
    snprintf(ds, sizeof ds, "%s/nan", g_dir);
    write_dataset(ds, 1);
    expect_agent_refused(ds, "ts_delta.npy: row 0 hour 0 column 0 (hr) is nan");
}

static void test_fifo_agent(void **state)
{
    (void)state;
    char ds[400], p[500];
    snprintf(ds, sizeof ds, "%s/fifo", g_dir);
    write_dataset(ds, 0);
    snprintf(p, sizeof p, "%s/images.npy", ds);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(mkfifo(p, 0600), 0);
    expect_agent_refused(ds, "not a regular file (a FIFO)");
}

static void test_key_mixup_agent(void **state)
{
    (void)state;
    char ds[400], coord[400], site[400], ck[420], sk[420], out[4096];
    snprintf(ds, sizeof ds, "%s/ok", g_dir);
    write_dataset(ds, 0);
    snprintf(coord, sizeof coord, "%s/coordinator", g_dir);
    snprintf(site, sizeof site, "%s/s1", g_dir);
    char *kg1[] = {"moeh-keygen", coord, NULL}, *kg2[] = {"moeh-keygen", site, NULL};
    assert_int_equal(run(kg1, out, sizeof out), 0);
    assert_int_equal(run(kg2, out, sizeof out), 0);
    snprintf(ck, sizeof ck, "%s.key", coord);
    snprintf(sk, sizeof sk, "%s.key", site);
    char *argv[] = {"moeh-site-agent",
                    "--site-id",
                    "s1",
                    "--dataset",
                    ds,
                    "--key",
                    sk,
                    "--server-key",
                    ck,
                    "--connect",
                    "tcp://127.0.0.1:1",
                    "--give-up-ms",
                    "3000",
                    "--out",
                    g_dir,
                    NULL};
    expect_refused(argv, "holds a secret-key");
    expect_refused(argv, ck);
}

/* moeh-coordinator --resume on each crafted checkpoint: a non-zero exit at start (not a
 * signal, not a hang), with the checkpoint's path and the field in its output. */
static void test_crafted_checkpoint_coordinator(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof moeh_test_bad_ckpts / sizeof moeh_test_bad_ckpts[0]; i++) {
        const moeh_test_bad_ckpt_t *k = &moeh_test_bad_ckpts[i];
        char out_dir[400], ckpt[500];
        snprintf(out_dir, sizeof out_dir, "%s/ckpt-%s", g_dir, k->name);
        assert_int_equal(mkdir(out_dir, 0700), 0);
        snprintf(ckpt, sizeof ckpt, "%s/checkpoint.moeh", out_dir);
        assert_int_equal(moeh_test_craft_ckpt(ckpt, k->round, k->d), 0);
        char *argv[] = {"moeh-coordinator",
                        "--insecure",
                        "--bind",
                        "tcp://127.0.0.1:*",
                        "--out",
                        out_dir,
                        "--resume",
                        "--rounds",
                        "3",
                        NULL};
        expect_refused(argv, k->want);
        expect_refused(argv, ckpt);
    }
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_crafted_checkpoint_coordinator),
               cmocka_unit_test(test_nan_delta_agent), cmocka_unit_test(test_fifo_agent),
               cmocka_unit_test(test_key_mixup_agent))
