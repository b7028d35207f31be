/* cmd_report.c - `moeh report RUN_DIR [--out FILE]`: the HTML report of a run directory
 * (docs/report.md). The figures are drawn by scripts/report.py with Debian's matplotlib; this
 * command finds the script (installed beside the binaries as ../share/moeh/report.py, or in
 * the source tree the binary was built from; $MOEH_REPORT_SCRIPT overrides both) and runs it
 * with the system's python3. moeh run calls moeh_sim_report() at its end. */
#include "sim_commands.h"

#include "moeh_common.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PYTHON "/usr/bin/python3" /* Debian's, where python3-matplotlib installs */

/* The report script's path into buf; 0, or -ENOENT when no script is found. */
static int find_script(char *buf, size_t cap)
{
    const char *env = getenv("MOEH_REPORT_SCRIPT");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return access(buf, R_OK) == 0 ? 0 : -ENOENT;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(buf, cap, "%s/../share/moeh/report.py", exe);
            if (access(buf, R_OK) == 0) return 0;
        }
    }
    snprintf(buf, cap, "%s/scripts/report.py", MOEH_SOURCE_DIR);
    return access(buf, R_OK) == 0 ? 0 : -ENOENT;
}

int moeh_sim_report(const char *run_dir, const char *out_file)
{
    char script[PATH_MAX + 64];
    if (find_script(script, sizeof script) != 0) {
        fprintf(stderr,
                "moeh report: cannot find report.py (looked at $MOEH_REPORT_SCRIPT, "
                "../share/moeh/ beside this binary and %s/scripts/)\n",
                MOEH_SOURCE_DIR);
        return 1;
    }
    char *argv[] = {PYTHON,           script, (char *)run_dir, out_file ? "--out" : NULL,
                    (char *)out_file, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, PYTHON, NULL, NULL, argv, environ);
    if (rc != 0) {
        fprintf(stderr, "moeh report: cannot run %s: %s (apt-get install python3)\n", PYTHON,
                strerror(rc));
        return 1;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int moeh_sim_cmd_report(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: moeh report RUN_DIR [--out FILE]\n\n"
                   "Writes one self-contained HTML page about a finished run (learning curves,\n"
                   "AUROC per modality combination, ROC and calibration, the gate per\n"
                   "combination, participation and retries, DP epsilon, the configuration) from\n"
                   "RUN_DIR/metrics.jsonl and config.json; by default RUN_DIR/report.html\n"
                   "(docs/report.md). Needs python3-matplotlib.\n"
                   "Exit status: 0 report written; 1 report.py not found, not runnable or\n"
                   "failed unexpectedly; 2 usage error or bad input (no such run directory, a\n"
                   "malformed metrics line: the message names file:line); 3 matplotlib missing\n"
                   "or older than 3.5 (Debian: apt-get install python3-matplotlib).\n");
            return 0;
        }
        if (!strcmp(argv[i], "--out")) {
            if (++i >= argc) {
                fprintf(stderr, "moeh report: --out needs a file name\n");
                return 2;
            }
            out = argv[i];
        } else if (argv[i][0] == '-') {
            static const char *const opts[] = {"out", "help"};
            moeh_sim_unknown_option("report", argv[i], opts, 2);
            return 2;
        } else if (dir) {
            fprintf(stderr, "moeh report: unexpected argument '%s' (see --help)\n", argv[i]);
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: moeh report RUN_DIR [--out FILE]\n");
        return 2;
    }
    return moeh_sim_report(dir, out);
}
