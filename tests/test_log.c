/* test_log.c - the log sink (common/log.c): control characters from peers are escaped, so a
 * line cannot forge another; --log-file appends and is reopened after logrotate moved it
 * (SIGHUP -> moeh_log_request_reopen); under systemd (JOURNAL_STREAM naming stderr) lines carry
 * the syslog priority "<N>"; and the real binaries write their errors to --log-file and refuse
 * one they cannot open (exit 2, naming it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_common.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256];

static int setup(void **state)
{
    (void)state;
    return moeh_test_tmpdir(g_dir, sizeof g_dir, "log");
}

static int teardown(void **state)
{
    (void)state;
    moeh_log_close_file();
    return moeh_test_rmtree(g_dir);
}

static char *slurp(const char *path)
{
    char *buf = NULL;
    size_t len;
    moeh_err_t err = {{0}};
    if (moeh_file_read_all(path, 1 << 20, &buf, &len, &err) != 0) return NULL;
    return buf;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

static void test_sanitize(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(moeh_log_sanitize(out, sizeof out, "site\x1b[31m\nforged\t\x7f ok"), 33);
    assert_string_equal(out, "site\\x1b[31m\\x0aforged\\x09\\x7f ok");
    moeh_log_sanitize(out, sizeof out, "caf\xc3\xa9"); /* UTF-8 passes through */
    assert_string_equal(out, "caf\xc3\xa9");
    moeh_log_sanitize(out, 7, "abcd\n"); /* an escape is never cut in half */
    assert_string_equal(out, "abcd");
    moeh_log_sanitize(out, 8, "abcd\n");
    assert_string_equal(out, "abcd");
    moeh_log_sanitize(out, 9, "abcd\n");
    assert_string_equal(out, "abcd\\x0a");
}

/* --log-file: one line per message (a peer's newline stays on its line), dated; after the
 * file is renamed (logrotate) and a reopen is requested, the next line goes to a new file. */
static void test_file_and_reopen(void **state)
{
    (void)state;
    char path[400], rotated[400];
    snprintf(path, sizeof path, "%s/coord.log", g_dir);
    snprintf(rotated, sizeof rotated, "%s/coord.log.1", g_dir);
    moeh_err_t err = {{0}};
    moeh_log_configure(MOEH_LOG_INFO, "coordinator", NULL, NULL);
    assert_int_equal(moeh_log_open_file(path, &err), 0);
    MOEH_INFO("site %s joined", "evil\nfake: round 9 done");
    MOEH_DEBUG("below the level: %d", 1);
    char *a = slurp(path);
    assert_non_null(a);
    assert_int_equal(count_lines(a), 1);
    assert_non_null(strstr(a, "Z coordinator info: site evil\\x0afake: round 9 done joined\n"));
    assert_true(a[4] == '-' && a[10] == 'T'); /* 2026-12-05T06:30:00.000Z */
    free(a);
    assert_int_equal(rename(path, rotated), 0);
    MOEH_WARN("still the old file until a reopen is asked for");
    moeh_log_request_reopen();
    MOEH_ERROR("after the rotation");
    char *old = slurp(rotated), *fresh = slurp(path);
    assert_non_null(old);
    assert_non_null(fresh);
    assert_int_equal(count_lines(old), 2);
    assert_non_null(strstr(old, "warn: still the old file"));
    assert_int_equal(count_lines(fresh), 1);
    assert_non_null(strstr(fresh, "coordinator error: after the rotation"));
    free(old);
    free(fresh);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640 & ~(unsigned)umask(umask(0)));
    moeh_log_close_file();
    snprintf(path, sizeof path, "%s/no/such/dir/x.log", g_dir);
    assert_int_equal(moeh_log_open_file(path, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "--log-file "));
    assert_non_null(strstr(err.msg, "no/such/dir/x.log: cannot open for appending"));
}

/* Under systemd: "<N>" priorities (journald strips them and sets PRIORITY=), no time; only when
 * JOURNAL_STREAM names the stderr we have (a child with stderr redirected is not journald). */
static void test_journald_priorities(void **state)
{
    (void)state;
    char path[400], js[64];
    snprintf(path, sizeof path, "%s/stderr.txt", g_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fd, 2), 2);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    moeh_log_configure(MOEH_LOG_DEBUG, "agent[site-1]", NULL, NULL);
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    int journal = moeh_log_to_journal();
    MOEH_DEBUG("d");
    MOEH_INFO("i");
    MOEH_WARN("w");
    MOEH_ERROR("e");
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", js, 1); /* another stream: plain lines */
    int other = moeh_log_to_journal();
    MOEH_WARN("plain");
    unsetenv("JOURNAL_STREAM");
    fflush(stderr);
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);
    close(fd);
    moeh_log_configure(MOEH_LOG_INFO, "test", NULL, NULL);
    assert_int_equal(journal, 1);
    assert_int_equal(other, 0);
    char *s = slurp(path);
    assert_non_null(s);
    assert_non_null(strstr(s, "<7>agent[site-1] debug: d\n<6>agent[site-1] info: i\n"
                              "<4>agent[site-1] warn: w\n<3>agent[site-1] error: e\n"));
    const char *plain = strstr(s, "agent[site-1] warn: plain\n");
    assert_non_null(plain);
    assert_true(plain - s >= 13 && plain[-1] == ' ' && plain[-5] != '>'); /* "06:30:00.000 " */
    free(s);
}

/* Runs bin_dir/prog with args (NULL-terminated) and returns its exit code. */
static int run(const char *prog, char *const args[])
{
    const char *bin = getenv("MOEH_BIN_DIR");
    assert_non_null(bin);
    char exe[600], *argv[16];
    snprintf(exe, sizeof exe, "%s/%s", bin, prog);
    argv[0] = exe;
    size_t n = 1;
    for (; args[n - 1] && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 2);
        execv(exe, argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_binaries_write_log_file(void **state)
{
    (void)state;
    char log[400], bad[400], ds[400];
    snprintf(log, sizeof log, "%s/agent.log", g_dir);
    snprintf(bad, sizeof bad, "%s/missing/agent.log", g_dir);
    snprintf(ds, sizeof ds, "%s/no-dataset", g_dir);
    char *agent[] = {"--site-id", "site-1",     "--dataset",  ds,  "--out",
                     g_dir,       "--insecure", "--log-file", log, NULL};
    assert_int_equal(run("moeh-site-agent", agent), MOEH_EXIT_ERROR);
    char *s = slurp(log);
    assert_non_null(s);
    assert_non_null(strstr(s, "agent[site-1] error: "));
    assert_non_null(strstr(s, "no-dataset"));
    free(s);
    char *agent_bad[] = {"--site-id", "site-1",     "--dataset", ds,  "--out",
                         g_dir,       "--log-file", bad,         NULL};
    assert_int_equal(run("moeh-site-agent", agent_bad), MOEH_EXIT_USAGE);
    snprintf(log, sizeof log, "%s/coord.log", g_dir);
    char *coord[] = {"--insecure", "--bind", "tcp://256.0.0.1:1", "--out", g_dir, "--log-file",
                     log,          NULL};
    assert_int_equal(run("moeh-coordinator", coord), MOEH_EXIT_ERROR);
    s = slurp(log);
    assert_non_null(s);
    assert_non_null(strstr(s, "coordinator error: cannot bind tcp://256.0.0.1:1"));
    free(s);
    char *coord_bad[] = {"--insecure", "--log-file", bad, NULL};
    assert_int_equal(run("moeh-coordinator", coord_bad), MOEH_EXIT_USAGE);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test_setup_teardown(test_sanitize, setup, teardown),
               cmocka_unit_test_setup_teardown(test_file_and_reopen, setup, teardown),
               cmocka_unit_test_setup_teardown(test_journald_priorities, setup, teardown),
               cmocka_unit_test_setup_teardown(test_binaries_write_log_file, setup, teardown))
