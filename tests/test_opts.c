/* test_opts.c - common/opts.c: "did you mean" for unknown options, --no-NAME for booleans,
 * duplicate INI keys refused with file:line, required options, positional arguments, a table
 * listing a name twice refused (abort), durations, endpoint hints, the help text without
 * sentinel values, and the exit codes of moeh_opts_main. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_opts.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    uint32_t rounds, fd;
    uint32_t window_ms;
    int secagg, table;
    const char *out, *level;
    moeh_opt_t opts[6];
    moeh_opts_t o;
    const void *required[2];
} fixture_t;

static void fx_init(fixture_t *f, int with_required)
{
    memset(f, 0, sizeof *f);
    f->rounds = 5, f->fd = UINT32_MAX, f->window_ms = 6u * 3600000u, f->table = 1;
    f->level = "info";
    const moeh_opt_t opts[] = {
        {"rounds", MOEH_OPT_U32, &f->rounds, "rounds"},
        {"ready-fd", MOEH_OPT_U32, &f->fd, "descriptor"},
        {"join-window", MOEH_OPT_DURATION, &f->window_ms, "window"},
        {"secagg", MOEH_OPT_BOOL, &f->secagg, "secure aggregation"},
        {"table", MOEH_OPT_BOOL, &f->table, "table"},
        {"out", MOEH_OPT_STR, &f->out, "output directory"},
    };
    memcpy(f->opts, opts, sizeof opts);
    f->required[0] = with_required ? (const void *)&f->out : NULL;
    f->o = (moeh_opts_t){.prog = "prog",
                         .synopsis = "usage: prog",
                         .opts = f->opts,
                         .n_opts = 6,
                         .required = f->required};
}

/* parses a NULL-terminated argument list (argv[0] added) */
static int parse(fixture_t *f, moeh_err_t *err, ...)
{
    char *argv[32] = {"prog"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    memset(err, 0, sizeof *err);
    return moeh_opts_parse(&f->o, argc, argv, err);
}

static void test_edit_distance(void **state)
{
    (void)state;
    assert_int_equal(moeh_edit_distance("rounds", "rounds"), 0);
    assert_int_equal(moeh_edit_distance("rouns", "rounds"), 1);
    assert_int_equal(moeh_edit_distance("sceagg", "secagg"), 2);
    assert_int_equal(moeh_edit_distance("", "abc"), 3);
    assert_int_equal(moeh_edit_distance("kitten", "sitting"), 3);
}

/* The nearest name: within 2 edits and fewer than the typed length; of equal distances the
 * longer common prefix, whichever comes first (rond is 2 edits from bind and from rounds). */
static void test_nearest_name(void **state)
{
    (void)state;
    static const char *const a[] = {"bind", "rounds", "connect"}, *const b[] = {"rounds", "bind"};
    assert_string_equal(moeh_nearest_name("rond", a, 3), "rounds");
    assert_string_equal(moeh_nearest_name("rond", b, 2), "rounds");
    assert_string_equal(moeh_nearest_name("bnid", a, 3), "bind");
    assert_null(moeh_nearest_name("xyzzy", a, 3));
    assert_null(moeh_nearest_name("ab", a, 3)); /* 2 edits from nothing useful: none */
    static const char *const cmds[] = {"run",   "synth",  "extract", "split",
                                       "train", "report", "predict", "status"};
    assert_string_equal(moeh_nearest_name("stats", cmds, 8), "status");
    assert_string_equal(moeh_nearest_name("rnu", cmds, 8), "run");
}

static void test_did_you_mean(void **state)
{
    (void)state;
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    assert_int_equal(parse(&f, &err, "--rouns", "3", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown option '--rouns' (did you mean --rounds?"));
    assert_int_equal(parse(&f, &err, "--no-secag", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "did you mean --no-secagg?"));
    /* nothing near: no suggestion */
    assert_int_equal(parse(&f, &err, "--zzzzzzzz", NULL), -EINVAL);
    assert_null(strstr(err.msg, "did you mean"));
    assert_non_null(strstr(err.msg, "unknown option '--zzzzzzzz'"));
}

static void test_no_prefix(void **state)
{
    (void)state;
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    f.secagg = 1;
    assert_int_equal(parse(&f, &err, "--no-table", "--no-secagg", NULL), 0);
    assert_int_equal(f.table, 0);
    assert_int_equal(f.secagg, 0);
    assert_int_equal(moeh_opts_seen(&f.o, &f.table), 1);
    /* the last word wins */
    assert_int_equal(parse(&f, &err, "--no-secagg", "--secagg", NULL), 0);
    assert_int_equal(f.secagg, 1);
    /* only booleans, and without a value */
    assert_int_equal(parse(&f, &err, "--no-rounds", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "--rounds is not a boolean"));
    assert_int_equal(parse(&f, &err, "--no-table=1", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "--no-table takes no value (got '1')"));
}

static void test_bad_value_names_option_and_value(void **state)
{
    (void)state;
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    assert_int_equal(parse(&f, &err, "--rounds", "three", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "--rounds: 'three' is not a non-negative integer"));
    assert_int_equal(parse(&f, &err, "--join-window", "6", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "--join-window: '6' is not a duration"));
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_ini_duplicate_and_unknown(void **state)
{
    (void)state;
    char dir[256], path[300];
    assert_int_equal(moeh_test_tmpdir(dir, sizeof dir, "opts"), 0);
    snprintf(path, sizeof path, "%s/c.ini", dir);
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    write_file(path, "[a]\nrounds = 3\n; comment\n[b]\n  rounds = 4\n");
    assert_int_equal(parse(&f, &err, "--config", path, NULL), -EINVAL);
    char want[400];
    snprintf(want, sizeof want, "%s:5: 'rounds' is set twice (first on line 2)", path);
    if (!strstr(err.msg, want)) fprintf(stderr, "got: %s\n", err.msg);
    assert_non_null(strstr(err.msg, want));

    write_file(path, "rounds = 3\nrouns = 4\n");
    assert_int_equal(parse(&f, &err, "--config", path, NULL), -EINVAL);
    snprintf(want, sizeof want, "%s:2: unknown option 'rouns' (did you mean 'rounds'?", path);
    assert_non_null(strstr(err.msg, want));

    /* a clean file works, and flags override it */
    fx_init(&f, 0);
    write_file(path, "rounds = 3\njoin-window = 90s\nsecagg = true\n");
    assert_int_equal(parse(&f, &err, "--config", path, "--rounds", "7", NULL), 0);
    assert_int_equal(f.rounds, 7);
    assert_int_equal(f.window_ms, 90000);
    assert_int_equal(f.secagg, 1);
    moeh_opts_free(&f.o);
    assert_int_equal(moeh_test_rmtree(dir), 0);
}

static void test_required(void **state)
{
    (void)state;
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 1);
    assert_int_equal(parse(&f, &err, "--rounds", "2", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "missing required option --out (output directory"));
    assert_int_equal(parse(&f, &err, "--out", "x", NULL), 0);
    assert_string_equal(f.out, "x");
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint32_t ms;
    } ok[] = {{"6h", 21600000}, {"1.5h", 5400000}, {"30m", 1800000}, {"90s", 90000},
              {"250ms", 250},   {"0", 0},          {"0s", 0}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint32_t ms = 7;
        assert_int_equal(moeh_parse_duration_ms(ok[i].s, &ms), 0);
        assert_int_equal(ms, ok[i].ms);
    }
    const char *bad[] = {"6", "h", "-1s", "6d", "", "1e9h", " 5s", "5 s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t ms = 7;
        assert_int_equal(moeh_parse_duration_ms(bad[i], &ms), -EINVAL);
        assert_int_equal(ms, 7);
    }
}

static void test_endpoint_hints(void **state)
{
    (void)state;
    moeh_err_t err = {0};
    assert_int_equal(moeh_opts_check_endpoint("bind", "tcp://*:7400", "*", &err), 0);
    assert_int_equal(moeh_opts_check_endpoint("bind", "tcp://127.0.0.1:*", "*", &err), 0);
    assert_int_equal(moeh_opts_check_endpoint("bind", "ipc:///tmp/x", "*", &err), 0);
    assert_int_equal(moeh_opts_check_endpoint("bind", "7402", "*", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--bind '7402': not a ZeroMQ endpoint"));
    assert_non_null(strstr(err.msg, "e.g. tcp://*:7402"));
    assert_int_equal(moeh_opts_check_endpoint("connect", "coord.example:7402", "H", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "e.g. tcp://coord.example:7402"));
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://coord.example", "H", &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "needs a port"));
    /* a bad port is named, and the example keeps the host without it (it suggested
     * tcp://127.0.0.1:7402x:7400) */
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://127.0.0.1:7402x", "H", &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "'7402x' is not a port"));
    assert_non_null(strstr(err.msg, "e.g. tcp://127.0.0.1:7400"));
    assert_null(strstr(err.msg, "7402x:"));
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://h:", "H", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "no port after the ':'"));
    assert_non_null(strstr(err.msg, "e.g. tcp://h:7400"));
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://h:70000", "H", &err), -EINVAL);
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://h:0", "H", &err), -EINVAL);
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://[::1]", "H", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "e.g. tcp://[::1]:7400"));
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://[::1]:7400", "H", &err), 0);
    assert_int_equal(moeh_opts_check_endpoint("connect", "tcp://h:65535", "H", &err), 0);
}

static void test_help_has_no_sentinel(void **state)
{
    (void)state;
    fixture_t f;
    fx_init(&f, 1);
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    assert_non_null(mem);
    moeh_opts_print_help(&f.o, mem);
    fclose(mem);
    assert_null(strstr(buf, "4294967295"));
    assert_non_null(strstr(buf, "descriptor (default: none)"));
    assert_non_null(strstr(buf, "window (default: 6h)"));
    assert_non_null(strstr(buf, "output directory (required)"));
    assert_non_null(strstr(buf, "table (default: on; --no-table)"));
    free(buf);
}

static void test_main_exit_codes(void **state)
{
    (void)state;
    fixture_t f;
    char *help[] = {"prog", "--version"}, *bad[] = {"prog", "--rouns", "3"}, *missing[] = {"prog"},
         *level[] = {"prog", "--out", "x"}, *ok[] = {"prog", "--out", "x"};
    fx_init(&f, 1);
    assert_int_equal(moeh_opts_main(&f.o, 2, help, &f.level, "t"), 0);
    fx_init(&f, 1);
    assert_int_equal(moeh_opts_main(&f.o, 3, bad, &f.level, "t"), 2);
    fx_init(&f, 1);
    assert_int_equal(moeh_opts_main(&f.o, 1, missing, &f.level, "t"), 2);
    fx_init(&f, 1);
    f.level = "loud";
    assert_int_equal(moeh_opts_main(&f.o, 3, level, &f.level, "t"), 2);
    fx_init(&f, 1);
    assert_int_equal(moeh_opts_main(&f.o, 3, ok, &f.level, "t"), -1);
    moeh_opts_free(&f.o);
}

static void test_positional(void **state)
{
    (void)state;
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    /* none allowed by default */
    assert_int_equal(parse(&f, &err, "x", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "unexpected argument 'x' (see prog --help)"));
    f.o.max_args = 1;
    f.o.args_name = "BASE";
    assert_int_equal(parse(&f, &err, "--rounds", "3", "x", "--no-table", NULL), 0);
    assert_int_equal(f.o.n_args, 1);
    assert_string_equal(f.o.args[0], "x");
    assert_int_equal(f.rounds, 3);
    assert_int_equal(f.table, 0);
    assert_int_equal(parse(&f, &err, "x", "y", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "unexpected argument 'y': prog takes 1 BASE"));
    /* a single dash starts no option here: named, not taken for a file */
    assert_int_equal(parse(&f, &err, "-f", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown option '-f' (options are --NAME"));
    /* after "--" every word is positional, even --help; an option still needs its value before */
    assert_int_equal(parse(&f, &err, "--", "--help", NULL), 0);
    assert_int_equal(f.o.n_args, 1);
    assert_string_equal(f.o.args[0], "--help");
    assert_int_equal(parse(&f, &err, "--rounds", "--", "7", NULL), -EINVAL);
    assert_non_null(strstr(err.msg, "--rounds needs a value"));
    /* n_args starts from 0 at every parse */
    assert_int_equal(parse(&f, &err, NULL), 0);
    assert_int_equal(f.o.n_args, 0);
}

/* Parses with a table whose entry `at` is renamed `name` in a child process, which must abort
 * with a message holding `needle` on stderr. */
static void expect_table_abort(size_t at, const char *name, const char *needle)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fixture_t f;
        moeh_err_t err;
        fx_init(&f, 0);
        f.opts[at].name = name;
        int rc = parse(&f, &err, "--rounds", "3", NULL);
        _exit(rc == 0 ? 0 : 1); /* not reached if the table is refused */
    }
    close(fds[1]);
    char buf[1024];
    size_t n = 0;
    for (ssize_t r; n + 1 < sizeof buf && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0;)
        n += (size_t)r;
    buf[n] = '\0';
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT))
        fprintf(stderr, "%s at entry %zu: status 0x%x, stderr: %s\n", name, at, st, buf);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    if (!strstr(buf, needle)) fprintf(stderr, "stderr lacks '%s': %s\n", needle, buf);
    assert_non_null(strstr(buf, needle));
}

/* A table that lists one name twice is a programming error (coordinator/main.c had two
 * --secagg-allow-2): the parser names it and aborts, whatever the arguments. */
static void test_table_with_duplicate_aborts(void **state)
{
    (void)state;
    /* the fixture: rounds, ready-fd, join-window, secagg (bool), table (bool), out */
    expect_table_abort(5, "rounds",
                       "prog: bug: the option table lists --rounds twice (entry 6 of 6)");
    expect_table_abort(1, "secagg", "lists --secagg twice (entry 4 of 6)");
    expect_table_abort(5, "no-table", "lists --no-table and the boolean it negates");
    expect_table_abort(2, "help", "lists --help although the parser itself takes it");
    expect_table_abort(0, "config", "lists --config although the parser itself takes it");
    /* --no-NAME of an option that is not a boolean is no clash ("no-" is not special then) */
    fixture_t f;
    moeh_err_t err;
    fx_init(&f, 0);
    f.opts[1].name = "no-rounds";
    assert_int_equal(parse(&f, &err, "--no-rounds", "4", NULL), 0);
    assert_int_equal(f.fd, 4);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_edit_distance),
               cmocka_unit_test(test_nearest_name), cmocka_unit_test(test_positional),
               cmocka_unit_test(test_table_with_duplicate_aborts),
               cmocka_unit_test(test_did_you_mean), cmocka_unit_test(test_no_prefix),
               cmocka_unit_test(test_bad_value_names_option_and_value),
               cmocka_unit_test(test_ini_duplicate_and_unknown), cmocka_unit_test(test_required),
               cmocka_unit_test(test_durations), cmocka_unit_test(test_endpoint_hints),
               cmocka_unit_test(test_help_has_no_sentinel), cmocka_unit_test(test_main_exit_codes))
