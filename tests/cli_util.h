/* cli_util.h - for the tests that run the programs in MOEH_BIN_DIR as a user does, through the
 * shell, in a test directory DIR that receives their output as DIR/out (test_cli.c,
 * test_coordinator_defaults.c, test_data_cli.c, test_train.c, test_predict.c). Include after
 * cmocka.h. */
#ifndef MOEH_TEST_CLI_UTIL_H
#define MOEH_TEST_CLI_UTIL_H

#include "moeh_common.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* The path of program `prog` in MOEH_BIN_DIR (default: ./bin) into buf. */
static inline void cli_bin(char *buf, size_t cap, const char *prog)
{
    const char *b = getenv("MOEH_BIN_DIR");
    snprintf(buf, cap, "%s/%s", b ? b : "bin", prog);
}

/* Runs "cd DIR && 'BIN' ARGS > out 2>&1" through the shell (ARGS as the shell reads them) and
 * returns BIN's exit status, or -1 if it did not exit. */
static inline int cli_run(const char *dir, const char *bin, const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s > out 2>&1", dir, bin, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The file at path, whole and NUL-terminated (the caller frees it), or NULL (said on stderr). */
static inline char *cli_slurp(const char *path)
{
    char *txt = NULL;
    size_t len;
    moeh_err_t err = {0};
    if (moeh_file_read_all(path, 1 << 26, &txt, &len, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    return txt;
}

/* Whether DIR/out holds needle; if not, says so on stderr with what it holds. */
static inline bool cli_out_has(const char *dir, const char *needle)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/out", dir);
    char *txt = cli_slurp(path);
    bool r = txt && strstr(txt, needle) != NULL;
    if (!r) fprintf(stderr, "output lacks '%s':\n%s\n", needle, txt ? txt : "(none)");
    free(txt);
    return r;
}

/* Runs BIN with the arguments printf(fmt, ...) in DIR (cli_run) and asserts that it exits
 * with `code` and that its output holds needle. */
static inline void cli_expect(const char *dir, const char *bin, int code, const char *needle,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static inline void cli_expect(const char *dir, const char *bin, int code, const char *needle,
                              const char *fmt, ...)
{
    char args[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int rc = cli_run(dir, bin, args);
    if (rc != code) fprintf(stderr, "'%s %s' exited with %d, expected %d\n", bin, args, rc, code);
    assert_int_equal(rc, code);
    assert_true(cli_out_has(dir, needle));
}

#endif
