/* moeh_progress.h - progress of a long step on stderr: a meter (percent, amount, rate, ETA) and
 * a free-form status line (the coordinator's round and sites).
 *
 * Two modes, chosen once per process (moeh_progress_on_terminal()):
 *  - terminal: stderr is a terminal, the log goes to it (no --log-file, not journald) and TERM is
 *    not "dumb". One line is redrawn in place with '\r' at most 10 times a second; a log line
 *    first clears it (log.c calls the hooks below), and the owner draws it again on its next
 *    update. End clears it and logs one summary line.
 *  - otherwise (a pipe, a file, journald): nothing but one summary line (an info log line) when
 *    a step ends. No '\r' is ever written.
 *
 * A meter belongs to the thread that drives it; the drawn line is shared by the process and
 * guarded inside (log lines may come from any thread). One meter or status line at a time. */
#ifndef MOEH_PROGRESS_H
#define MOEH_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_PROGRESS_BYTES "B" /* the unit of a meter over bytes: shown in MiB */

/* A meter; the caller owns it (usually on its stack). Fields are private to progress.c. */
typedef struct {
    char label[96];
    char unit[24];
    uint64_t total, done;
    int64_t t0, t_draw, t_sample; /* ms: begin, last redraw, last rate sample */
    uint64_t done_sample;
    double rate; /* smoothed units per second; 0: no estimate yet */
    int active;
} moeh_progress_t;

/* Starts a meter over total units (0: unknown) of unit: MOEH_PROGRESS_BYTES, or the noun of a
 * count ("admissions", "images"). label names the step ("hosp/labevents.csv.gz"). */
void moeh_progress_begin(moeh_progress_t *p, const char *label, uint64_t total, const char *unit);
/* done units so far (monotone; more than total is taken as total). Cheap enough to call every
 * few thousand rows: it draws at most every 100 ms, and only on a terminal. */
void moeh_progress_update(moeh_progress_t *p, uint64_t done);
/* Ends the step: clears the line and logs "label: AMOUNT in TIME (RATE)[; note]" (info), where
 * AMOUNT is the last done (total if done was never set). note may be NULL. Ending a meter that
 * is not active does nothing. */
void moeh_progress_end(moeh_progress_t *p, const char *note);
/* Ends the step without a summary (it failed): clears the line. Does nothing to a meter that
 * is not active (one that ended, or a zeroed one). */
void moeh_progress_cancel(moeh_progress_t *p);

/* ETA in seconds of an active meter from its smoothed rate, or -1 while there is not enough
 * data (less than a second, nothing done, or no total). */
double moeh_progress_eta(const moeh_progress_t *p);

/* A status line (printf format): on a terminal it replaces the line drawn (at most 10 times a
 * second, at once when it was cleared by a log line); otherwise nothing is written. */
void moeh_progress_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Clears the status line (or meter) drawn, if any; the next moeh_progress_line draws it again. */
void moeh_progress_line_clear(void);

/* 1 in terminal mode (see above), 0 otherwise. Decided at the first call. */
int moeh_progress_on_terminal(void);

/* ---- formatting (returned: out) -------------------------------------------------------------
 * eta: "ETA 42s", "ETA 1m05s", "ETA 2h03m", "ETA >99h"; "ETA ?" for a negative or NaN seconds.
 * amount: bytes as "12.3 MiB" (under 1 MiB "345 KiB"), counts as "1234 rows" or "12.3 k rows",
 * "4.56 M rows". rate: the same per second ("5.9 MiB/s", "1234 rows/s").
 * elapsed: "0.42 s", "12.3 s", "4m05s", "1h02m". */
char *moeh_progress_fmt_eta(char *out, size_t cap, double seconds);
char *moeh_progress_fmt_amount(char *out, size_t cap, double amount, const char *unit);
char *moeh_progress_fmt_rate(char *out, size_t cap, double per_s, const char *unit);
char *moeh_progress_fmt_elapsed(char *out, size_t cap, double seconds);

/* ---- log.c's side: around a line written to stderr, log.c calls begin (which clears a drawn
 * line and holds the line's lock) and end (which releases it). log.c tells whether its lines
 * go to a --log-file (1) rather than stderr: then nothing is redrawn on stderr. */
void moeh_progress_log_begin(void);
void moeh_progress_log_end(void);
int moeh_log_writes_file(void);

/* ---- tests: terminal = 1 forces terminal mode, 0 forces the other, -1 decides again from the
 * process; clock_ms replaces the monotonic clock (NULL: moeh_now_ms). */
void moeh_progress_testing(int terminal, int64_t (*clock_ms)(void));

#endif
