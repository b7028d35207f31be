/* moeh_coord_status.h - OUT/status.json: where a running coordinator is (docs/operations.md).
 * Written atomically (tmp + fsync + rename) by run.c whenever the phase, the round or the set
 * of admitted sites changes (and at most once a second for replies), and when the process
 * ends ("finished" or "paused"). `moeh status OUT` prints it. */
#ifndef MOEH_COORD_STATUS_H
#define MOEH_COORD_STATUS_H

#include "moeh_coord_core.h"

#define MOEH_STATUS_FILE "status.json"
#define MOEH_STATUS_VERSION 1

/* What changes the status: compared by run.c to decide when to write. */
typedef struct {
    int phase;
    uint32_t round, admitted, replied;
    int64_t written_at; /* monotonic ms of the last write */
} moeh_coord_status_mark_t;

/* The marks of the core now (written_at left 0). */
moeh_coord_status_mark_t moeh_coord_status_mark(const moeh_coord_core_t *c);

/* Where the run is, for its progress line (run.c). */
typedef struct {
    int phase;                      /* moeh_coord_phase_t */
    uint32_t round, rounds;         /* the current round (0 before the first), --rounds */
    uint32_t participants, replied; /* of the open phase */
    uint32_t admitted, wait_target; /* sites admitted now; the start waits for this many */
    uint32_t selected_round;        /* 0: none yet (no validated round, or no validation) */
    double selected_value;          /* its validation score (NaN: none) */
} moeh_coord_progress_t;
void moeh_coord_status_progress(const moeh_coord_core_t *c, moeh_coord_progress_t *out);
/* "STATS", "TRAIN", "VALIDATE", "EVAL" (the task of the phase), "WAIT", "DONE". */
const char *moeh_coord_phase_label(int phase);

/* The ETA of the run: the mean duration of the rounds finished in this process times the
 * rounds left, less the time the current round has run. Fed by run.c with every (round,
 * phase) it sees; it does not foresee an early stop (--patience). Zero-initialise. */
typedef struct {
    uint32_t cur_round; /* the round under way since t_start (0: none) */
    int64_t t_start, sum_ms;
    uint32_t n_done; /* rounds finished (and timed) in this process */
} moeh_coord_eta_t;
void moeh_coord_eta_observe(moeh_coord_eta_t *e, uint32_t round, int phase, int64_t now_ms);
/* Seconds left, or -1 while no round has finished in this process; 0 once the run is done. */
double moeh_coord_eta_s(const moeh_coord_eta_t *e, uint32_t round, uint32_t rounds, int phase,
                        int64_t now_ms);

/* run_id: this run's id (moeh_coord_status_run_id). state: NULL (from the phase: "waiting",
 * "statistics", "train", "validate", "eval", "done") or an end state ("finished", "paused"),
 * with reason. eta_s: the run's ETA in seconds (negative: unknown, written as null). 0 or a
 * negative code with err->msg naming the file. */
int moeh_coord_status_write(const moeh_coord_core_t *c, const char *run_id, const char *state,
                            const char *reason, double eta_s, moeh_err_t *err) MOEH_COORD_WUR;

/* The run's id into out: with --resume the one in OUT/status.json (when there is one), so a
 * resumed run keeps its id; otherwise a new one from the UTC time and the process id. */
void moeh_coord_status_run_id(const char *out_dir, int resume, char *out, size_t cap);

#endif
