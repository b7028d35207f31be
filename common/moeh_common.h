/* moeh_common.h - errors, logging and small helpers shared by every moeh library.
 *
 * Conventions (see docs/architecture.md):
 *  - fallible functions return 0 or a negative errno-style code; moeh_strerror() names it;
 *  - functions that can say *why* something failed also take a moeh_err_t *, filled with a
 *    message a user can act on (file, line, field, what was expected);
 *  - bugs abort through MOEH_ASSERT with file:line; library code never calls exit(). */
#ifndef MOEH_COMMON_H
#define MOEH_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MOEH_ERRMSG_MAX 512

/* On a fallible function (0 or a negative code, or a lookup that can miss): the compiler
 * warns, and -Werror fails the build, where a caller drops the result. */
#define MOEH_WUR __attribute__((warn_unused_result))

/* A human-readable reason attached to a failing call. Zero-initialise before use. */
typedef struct {
    char msg[MOEH_ERRMSG_MAX];
} moeh_err_t;

/* Formats into err->msg (if err is non-NULL) and returns rc, so callers can write
 * `return moeh_errf(err, -EINVAL, "...")`. */
int moeh_errf(moeh_err_t *err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- exit codes of every moeh binary (docs/operations.md) --------------------------------
 * A supervisor (systemd, a script) tells these apart: only FINISHED means the work is done. */
enum {
    MOEH_EXIT_FINISHED = 0,     /* done: the run finished, the command did its work */
    MOEH_EXIT_ERROR = 1,        /* failed (the log says why) */
    MOEH_EXIT_USAGE = 2,        /* bad options or configuration: nothing was started */
    MOEH_EXIT_REFUSED = 3,      /* the peer refused us: key not registered, wrong key, ... */
    MOEH_EXIT_GAVE_UP = 4,      /* an agent was not (re-)admitted within --give-up-ms */
    MOEH_EXIT_INTERRUPTED = 130 /* SIGINT/SIGTERM; a coordinator's run is paused (--resume) */
};

/* Static description of a negative errno-style code. */
const char *moeh_strerror(int rc);

/* ---- logging ----------------------------------------------------------------------------
 * One process-wide sink, configured in main() before any thread starts and never after;
 * libraries only call moeh_log(). Never log keys, raw updates or patient-level values. */
typedef enum { MOEH_LOG_DEBUG = 0, MOEH_LOG_INFO, MOEH_LOG_WARN, MOEH_LOG_ERROR } moeh_log_level_t;
typedef void (*moeh_log_fn)(void *ud, moeh_log_level_t lvl, const char *msg);

void moeh_log_configure(moeh_log_level_t min_level, const char *prefix, moeh_log_fn fn, void *ud);
moeh_log_level_t moeh_log_level(void);
void moeh_log_emit(moeh_log_level_t lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Parses "debug", "info", "warn", "error"; -EINVAL otherwise. */
int moeh_log_parse_level(const char *s, moeh_log_level_t *out) MOEH_WUR;
/* --log-file: lines go to path (appended, created 0640) instead of stderr. 0 or a negative code
 * (message in err names the path). moeh_log_close_file() goes back to stderr. */
int moeh_log_open_file(const char *path, moeh_err_t *err) MOEH_WUR;
void moeh_log_close_file(void);
/* Async-signal-safe (call it from a SIGHUP handler): the log file is reopened by path before
 * the next line, after logrotate moved it away. */
void moeh_log_request_reopen(void);
/* 1 when stderr is the journald stream systemd gave us (JOURNAL_STREAM): lines then start with
 * a syslog priority "<N>" instead of a time. */
int moeh_log_to_journal(void);
/* Copies in to out (cap bytes, NUL-terminated, cut at a whole character) with every control
 * character written as \xNN: text from a peer cannot forge log lines or send terminal
 * escapes. Returns the length written. Every logged message goes through it. */
size_t moeh_log_sanitize(char *out, size_t cap, const char *in);

#define moeh_log(lvl, ...)                                                                         \
    do {                                                                                           \
        if ((lvl) >= moeh_log_level()) moeh_log_emit((lvl), __VA_ARGS__);                          \
    } while (0)
#define MOEH_DEBUG(...) moeh_log(MOEH_LOG_DEBUG, __VA_ARGS__)
#define MOEH_INFO(...) moeh_log(MOEH_LOG_INFO, __VA_ARGS__)
#define MOEH_WARN(...) moeh_log(MOEH_LOG_WARN, __VA_ARGS__)
#define MOEH_ERROR(...) moeh_log(MOEH_LOG_ERROR, __VA_ARGS__)

/* Always-on assertion for programming errors: prints file:line and aborts. */
#define MOEH_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) moeh_assert_fail(#cond, __FILE__, __LINE__);                                  \
    } while (0)
_Noreturn void moeh_assert_fail(const char *expr, const char *file, int line);

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t moeh_now_ms(void);

/* Allocation that aborts on failure is *not* offered: callers check and return -ENOMEM. */

/* ---- files ------------------------------------------------------------------------------ */
/* Writes len bytes to path atomically: path.tmp.<pid>, fsync, rename, fsync of the directory.
 * 0 or a negative errno code (message in err). */
int moeh_file_write_atomic(const char *path, const void *data, size_t len,
                           moeh_err_t *err) MOEH_WUR;
/* Reads a whole file (at most max_len bytes) into a malloc'd buffer the caller frees.
 * A trailing NUL is added (not counted in *len_out). */
int moeh_file_read_all(const char *path, size_t max_len, char **out, size_t *len_out,
                       moeh_err_t *err) MOEH_WUR;
/* A reserve of file descriptors for the files a daemon must be able to write whatever its peers
 * hold (checkpoint, status, model): n (at most MOEH_FD_RESERVE_MAX) descriptors of /dev/null,
 * held until moeh_file_write_atomic or moeh_file_read_all finds the table full (EMFILE or
 * ENFILE); then they are given back one at a time until the open succeeds, and taken again
 * when the file is closed. Returns how many are held. Call once at start; not thread-safe (the
 * caller's thread is the only one that writes files). 0 releases them all. */
#define MOEH_FD_RESERVE_MAX 16
int moeh_fd_reserve(unsigned n);
/* mkdir -p; 0 if it exists already as a directory. */
int moeh_mkdir_p(const char *path, moeh_err_t *err) MOEH_WUR;
/* Joins dir and name into out (cap bytes); -ENAMETOOLONG if it does not fit. */
int moeh_path_join(char *out, size_t cap, const char *dir, const char *name) MOEH_WUR;

/* ---- deterministic random numbers (splitmix64 seeding xoshiro256**) --------------------- */
typedef struct {
    uint64_t s[4];
} moeh_rng_t;
void moeh_rng_seed(moeh_rng_t *r, uint64_t seed);
uint64_t moeh_rng_u64(moeh_rng_t *r);
double moeh_rng_uniform(moeh_rng_t *r); /* [0, 1) */
double moeh_rng_normal(moeh_rng_t *r);  /* N(0, 1) */

#endif
