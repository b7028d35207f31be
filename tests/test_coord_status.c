/* test_coord_status.c - OUT/status.json and `moeh status` with the real binaries: while a run
 * is under way the file names the run, phase, round, quorum, deadline and the three admitted
 * sites with their last-seen times; `moeh status OUT` prints it for people and with --json as
 * JSON; a coordinator stopped by SIGINT leaves "paused" with the reason, a finished run
 * "finished"; a directory without a status is an error that says so (exit 1).
 * Progress: before any round finished eta_s and selected_round are null; once a round is done
 * eta_s is a number and selected_round the validated round selected so far (with its score);
 * the log (a file: no terminal) has one line per closed phase with the sites that reported of
 * those asked, and the ETA, and no '\r'. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

static cJSON *read_status(const fixture_t *f)
{
    char path[400], *text = NULL;
    size_t len;
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/status.json", f->out);
    assert_int_equal(moeh_file_read_all(path, 1 << 20, &text, &len, &err), 0);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

/* Polls OUT/status.json (every 50 ms, up to 30 s) until it exists and round >= min_round. */
static cJSON *wait_status_round(const fixture_t *f, double min_round)
{
    char path[400];
    snprintf(path, sizeof path, "%s/status.json", f->out);
    for (int i = 0; i < 600; i++) {
        if (access(path, F_OK) == 0) {
            cJSON *j = read_status(f);
            if (jget(j, "round") >= min_round) return j;
            cJSON_Delete(j);
        }
        usleep(50 * 1000);
    }
    fail_msg("status.json did not reach round %.0f", min_round);
    return NULL;
}

static const char *jstr(const cJSON *j, const char *k)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(j, k));
    assert_non_null(s);
    return s;
}

/* Runs `moeh status dir [--json]`; its stdout into out (cap), its exit code returned. */
static int moeh_status(const char *dir, int json, char *out, size_t cap)
{
    char exe[600];
    snprintf(exe, sizeof exe, "%s/moeh", getenv("MOEH_BIN_DIR"));
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 2);
        close(fds[0]);
        execl(exe, exe, "status", dir, json ? "--json" : NULL, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fds[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fds[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_status_while_running_then_paused(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = start_coordinator_ex(f, "50", "2", "3", NULL, "coordinator.log");
    /* no site yet: nothing timed, nothing selected */
    cJSON *j = wait_status_round(f, 0);
    assert_string_equal(jstr(j, "state"), "waiting");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "eta_s")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "selected_round")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "selected_value")));
    assert_string_equal(jstr(j, "selected_by"), "val_auroc_mean");
    cJSON_Delete(j);
    start_all_agents(f, a, NULL);
    wait_log_of(f, c, "coordinator.log", "round 1 done");
    j = wait_status_round(f, 2); /* round 1 finished in this process: an ETA */
    const char *st = jstr(j, "state");
    assert_true(!strcmp(st, "train") || !strcmp(st, "validate") || !strcmp(st, "eval"));
    assert_string_equal(jstr(j, "phase"), st);
    assert_true(jget(j, "rounds") == 50 && jget(j, "quorum") == 2);
    assert_true(jget(j, "sites_admitted") == 3);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "eta_s")));
    assert_true(jget(j, "eta_s") >= 0);
    /* validation is on: round 1 (or a later one validated since) is selected */
    const double sel = jget(j, "selected_round");
    assert_true(sel >= 1 && sel < jget(j, "round"));
    const double sv = jget(j, "selected_value");
    assert_true(sv >= 0 && sv <= 1);                              /* a mean AUROC */
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "epsilon"))); /* no DP */
    assert_int_equal(strlen(jstr(j, "deadline")), 24);            /* 2026-12-05T06:30:00.000Z */
    char run_id[64];
    snprintf(run_id, sizeof run_id, "%s", jstr(j, "run_id"));
    const cJSON *sites = cJSON_GetObjectItem(j, "sites");
    assert_int_equal(cJSON_GetArraySize(sites), 3);
    int seen = 0; /* in the order they joined */
    for (int k = 0; k < 3; k++) {
        const cJSON *s = cJSON_GetArrayItem(sites, k);
        int n = 0;
        assert_int_equal(sscanf(jstr(s, "id"), "site-%d", &n), 1);
        assert_true(n >= 1 && n <= 3);
        seen |= 1 << n;
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(s, "admitted")));
        assert_int_equal(strlen(jstr(s, "last_seen")), 24);
    }
    assert_int_equal(seen, 2 | 4 | 8);
    cJSON_Delete(j);

    static char out[16384];
    assert_int_equal(moeh_status(f->out, 0, out, sizeof out), 0);
    assert_non_null(strstr(out, run_id));
    assert_non_null(strstr(out, "quorum 2"));
    assert_non_null(strstr(out, "sites: 3 admitted"));
    assert_non_null(strstr(out, "site-2"));
    assert_non_null(strstr(out, "  ETA ")); /* a time, as eta_s is a number */
    assert_null(strstr(out, "ETA ?"));
    assert_non_null(strstr(out, "selected round "));
    assert_non_null(strstr(out, "so far (val_auroc_mean 0."));
    assert_int_equal(moeh_status(f->out, 1, out, sizeof out), 0);
    cJSON *pj = cJSON_Parse(out);
    assert_non_null(pj);
    assert_string_equal(jstr(pj, "run_id"), run_id);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(pj, "eta_s")));
    assert_true(jget(pj, "selected_round") >= 1);
    cJSON_Delete(pj);

    moeh_proc_signal(c, SIGINT);
    wait_exit(c, 10000, MOEH_EXIT_INTERRUPTED);
    j = read_status(f);
    assert_string_equal(jstr(j, "state"), "paused");
    assert_non_null(strstr(jstr(j, "reason"), "stopped by a signal during round"));
    assert_string_equal(jstr(j, "run_id"), run_id);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "deadline")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "eta_s"))); /* paused: no end in sight */
    assert_true(jget(j, "selected_round") >= 1);
    cJSON_Delete(j);
    /* the log is a file: one line per closed phase with its counts and the ETA, no '\r' */
    char lp[400], *log = NULL;
    size_t ll;
    moeh_err_t err = {0};
    snprintf(lp, sizeof lp, "%s/coordinator.log", f->logs);
    assert_int_equal(moeh_file_read_all(lp, 1 << 24, &log, &ll, &err), 0);
    assert_null(memchr(log, '\r', ll));
    assert_non_null(strstr(log, "STATS: 3/3 sites reported in "));
    int n_train1 = 0; /* exactly one line for round 1's TRAIN (no line per site) */
    for (const char *q = log; (q = strstr(q, "round 1/50 TRAIN: ")) != NULL; q++)
        n_train1++;
    assert_int_equal(n_train1, 1);
    assert_non_null(strstr(log, "round 1/50 TRAIN: 3/3 sites reported in "));
    /* the round's last phase: VALIDATE, the test split evaluated in it (protocol 9) */
    const char *e1 = strstr(log, "round 1/50 VALIDATE: 3/3 sites reported in ");
    assert_non_null(e1);
    assert_null(strstr(log, "round 1/50 EVAL: "));
    const char *nl = strchr(e1, '\n');
    assert_non_null(nl);
    const char *eta = strstr(e1, ", ETA ");
    assert_true(eta && eta < nl && eta[6] != '?'); /* round 1 finished: a time */
    const char *t1 = strstr(log, "round 1/50 TRAIN: "), *tn = strchr(t1, '\n');
    assert_non_null(strstr(t1, "ETA ?")); /* no round finished yet */
    assert_true(strstr(t1, "ETA ?") < tn);
    free(log);
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        stop_paused_agent(f, a[k], id);
    }
    assert_int_equal(moeh_status(f->dir, 0, out, sizeof out), 1); /* not a run directory */
}

static void test_status_finished(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = start_coordinator(f, "1", "3");
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    cJSON *j = read_status(f);
    assert_string_equal(jstr(j, "state"), "finished");
    assert_string_equal(jstr(j, "phase"), "done");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "reason")));
    assert_true(jget(j, "round") == 1);
    assert_true(jget(j, "eta_s") == 0);
    assert_true(jget(j, "selected_round") == 1);
    cJSON_Delete(j);
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_status_while_running_then_paused), FED_TEST(test_status_finished))
