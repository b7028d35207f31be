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

/* run_id: this run's id (moeh_coord_status_run_id). state: NULL (from the phase: "waiting",
 * "statistics", "train", "eval", "done") or an end state ("finished", "paused"), with reason.
 * 0 or a negative code with err->msg naming the file. */
int moeh_coord_status_write(const moeh_coord_core_t *c, const char *run_id, const char *state,
                            const char *reason, moeh_err_t *err) MOEH_COORD_WUR;

/* The run's id into out: with --resume the one in OUT/status.json (when there is one), so a
 * resumed run keeps its id; otherwise a new one from the UTC time and the process id. */
void moeh_coord_status_run_id(const char *out_dir, int resume, char *out, size_t cap);

#endif
