/* moeh_opts.h - command-line and INI options from one table.
 *
 * Every option is a long flag (--name VALUE, or --name for booleans) and the same key in an
 * INI file given with --config FILE (any section; flags override the file). --help prints the
 * table; --version the version. Values are checked (numbers fully parsed and in range) and
 * errors say which flag or file:line and what was expected. A boolean --name is turned off by
 * --no-name (or --name=false); a key given twice in one INI file is refused with both lines;
 * an unknown option gets the nearest known one ("did you mean --rounds?"). */
#ifndef MOEH_OPTS_H
#define MOEH_OPTS_H

#include "moeh_common.h"

typedef enum {
    MOEH_OPT_STR,
    MOEH_OPT_U32,
    MOEH_OPT_U64,
    MOEH_OPT_F32,
    MOEH_OPT_BOOL,
    MOEH_OPT_F64,
    MOEH_OPT_DURATION /* uint32_t milliseconds, written 90s, 30m, 6h, 1.5h or 250ms */
} moeh_opt_type_t;

typedef struct {
    const char *name; /* without the leading "--"; also the INI key */
    moeh_opt_type_t type;
    void *ptr;        /* const char **, uint32_t *, uint64_t *, float *, int *, double * */
    const char *help; /* one line; the default is printed after it */
} moeh_opt_t;

#define MOEH_OPTS_MAX 128    /* options in one table */
#define MOEH_OPTS_MAX_ARGS 4 /* positional arguments one command may take */

typedef struct {
    const char *prog;     /* e.g. "moeh-coordinator" */
    const char *synopsis; /* printed first by --help */
    const moeh_opt_t *opts;
    size_t n_opts;
    char **owned; /* strings this parser allocated (INI values) */
    size_t n_owned, cap_owned;
    unsigned char seen[MOEH_OPTS_MAX]; /* seen[i]: opts[i] was given (flag or --config) */
    /* NULL-terminated list of the `ptr`s of options that must be given (may be NULL): a missing
     * one is a usage error naming it, and --help marks it "(required)" */
    const void *const *required;
    /* Positional arguments (words that are not options, and every word after "--"): with
     * max_args 0 (the default) any is a usage error; else up to max_args of them are collected
     * in args[0..n_args) (pointers into argv), more are refused, and args_name (e.g. "BASE")
     * names them in that message. A word that starts with "-" is never positional. */
    size_t max_args;
    const char *args_name;
    const char *args[MOEH_OPTS_MAX_ARGS];
    size_t n_args;
} moeh_opts_t;

/* Parses argv (argv[0] is skipped). Returns 0 when parsed, 1 when --help or --version was
 * printed (exit 0), or -EINVAL with err->msg. Positional arguments are refused unless
 * max_args allows them. A table that lists one name twice (or names config, help or version,
 * or both X and no-X of a boolean X) is a bug: it is named on stderr and the process aborts. */
int moeh_opts_parse(moeh_opts_t *o, int argc, char **argv, moeh_err_t *err) MOEH_WUR;
void moeh_opts_print_help(const moeh_opts_t *o, FILE *f);
/* 1 if the option whose value lives at `ptr` was given (as a flag or in --config), so that a
 * default can depend on other options; 0 otherwise. */
int moeh_opts_seen(const moeh_opts_t *o, const void *ptr);
/* The start of a program's main(): parses the options (`*log_level` is one of them), prints
 * usage errors as "PROG: message", and configures logging with `log_prefix` (log_level NULL:
 * a program without --log-level; logging is left as it is). Returns -1 to go on, or the exit
 * code to return at once (0 after --help/--version, 2 on a usage error; the options are freed
 * then). */
int moeh_opts_main(moeh_opts_t *o, int argc, char **argv, const char *const *log_level,
                   const char *log_prefix) MOEH_WUR;
/* Checks a ZeroMQ endpoint given as --`opt`: "7402" or "host:7402" get the hint
 * tcp://HOST:PORT (`example_host`, e.g. "*" or "127.0.0.1"), "tcp://host" a missing port. */
int moeh_opts_check_endpoint(const char *opt, const char *val, const char *example_host,
                             moeh_err_t *err) MOEH_WUR;
/* Parses a duration: a number with the unit ms, s, m or h ("6h", "1.5h", "90s"); 0 needs no
 * unit. Returns 0, or -EINVAL when malformed or above UINT32_MAX ms (about 49 days). */
int moeh_parse_duration_ms(const char *s, uint32_t *ms) MOEH_WUR;
/* Edit distance (insertions, deletions, substitutions) of two short strings, capped at 99. */
unsigned moeh_edit_distance(const char *a, const char *b);
/* The one of names[0..n) nearest to typed, as "did you mean" picks an option: within 2 edits
 * and fewer edits than typed has characters, ties to the longer common prefix; NULL if none. */
const char *moeh_nearest_name(const char *typed, const char *const *names, size_t n);

/* Installs handler for SIGINT and SIGTERM (and SIGHUP if with_hup); ignores SIGPIPE. */
void moeh_install_signals(void (*handler)(int), int with_hup);

/* Frees strings taken from a --config file (after this, option strings from it dangle). */
void moeh_opts_free(moeh_opts_t *o);

#endif
