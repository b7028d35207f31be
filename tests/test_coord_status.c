/* test_coord_status.c - OUT/status.json and `moeh status` with the real binaries: while a run
 * is under way the file names the run, phase, round, quorum, deadline and the three admitted
 * sites with their last-seen times; `moeh status OUT` prints it for people and with --json as
 * JSON; a coordinator stopped by SIGINT leaves "paused" with the reason, a finished run
 * "finished"; a directory without a status is an error that says so (exit 1). */
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
    start_all_agents(f, a, NULL);
    wait_log_of(f, c, "coordinator.log", "round 1 done");
    cJSON *j = read_status(f);
    const char *st = jstr(j, "state");
    assert_true(!strcmp(st, "train") || !strcmp(st, "eval"));
    assert_string_equal(jstr(j, "phase"), st);
    assert_true(jget(j, "round") >= 1);
    assert_true(jget(j, "rounds") == 50 && jget(j, "quorum") == 2);
    assert_true(jget(j, "sites_admitted") == 3);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "selected_round")));
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
    assert_int_equal(moeh_status(f->out, 1, out, sizeof out), 0);
    cJSON *pj = cJSON_Parse(out);
    assert_non_null(pj);
    assert_string_equal(jstr(pj, "run_id"), run_id);
    cJSON_Delete(pj);

    moeh_proc_signal(c, SIGINT);
    wait_exit(c, 10000, MOEH_EXIT_INTERRUPTED);
    j = read_status(f);
    assert_string_equal(jstr(j, "state"), "paused");
    assert_non_null(strstr(jstr(j, "reason"), "stopped by a signal during round"));
    assert_string_equal(jstr(j, "run_id"), run_id);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "deadline")));
    cJSON_Delete(j);
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
    cJSON_Delete(j);
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_status_while_running_then_paused), FED_TEST(test_status_finished))
