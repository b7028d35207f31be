/* moeh_coordinator_testing.h - fault injection and participation replay for the multi-process
 * tests and the chaos soak only; not part of the coordinator's interface (moeh_coordinator.h). */
#ifndef MOEH_COORDINATOR_TESTING_H
#define MOEH_COORDINATOR_TESTING_H

#include "moeh_coord_core.h"
#include "moeh_coordinator.h"

typedef struct {
    uint32_t kill_after_round; /* SIGKILL this process once round N is checkpointed (0: off) */
    /* an earlier run's metrics.jsonl whose participation this run replays (NULL: none) */
    const char *replay_metrics;
    uint32_t hslog_window_ms; /* failed handshakes: one summary per peer per window (0: 60 s) */
} moeh_coord_faults_t;

/* moeh_coord_run() with faults injected (faults may be NULL: none). */
int moeh_coord_run_faulty(const moeh_coord_cfg_t *cfg, const moeh_coord_faults_t *faults,
                          volatile sig_atomic_t *stop, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* Participation replay (replay.c). A run under faults (kills, partitions, frozen sites) records
 * in metrics.jsonl, per round, the sites whose statistics, update and validation histograms
 * entered each sum, the round's weight bound and the model's hash after the step. A clean run
 * of the same sites, seed and options that replays that participation (each phase invites
 * only those sites, the weight bound is the recorded one) computes the same sums, so its
 * models must be bit-identical round by round: the chaos soak's check that faults lose or
 * corrupt nothing. */
typedef struct moeh_coord_replay moeh_coord_replay_t;

/* Reads the participation rows of `metrics_path` (stats, train and eval lines); a line that is
 * not JSON, or a participation field of the wrong type, is refused with file:line. 0 or a
 * negative code with err->msg; caller owns *out: moeh_coord_replay_destroy(&r). */
int moeh_coord_replay_load(const char *metrics_path, moeh_coord_replay_t **out, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* NULL-safe; sets *self_p = NULL. */
void moeh_coord_replay_destroy(moeh_coord_replay_t **self_p);
/* 1: site takes part in this phase of this round, 0: it does not, -1: no record for the phase
 * (everyone admitted takes part). Only STATS, TRAIN and VALIDATE are recorded. */
int moeh_coord_replay_member(const moeh_coord_replay_t *r, uint32_t round, moeh_coord_phase_t phase,
                             const char *site);
/* The recorded weight bound of the round's TRAIN phase (0: none recorded). */
double moeh_coord_replay_w_cap(const moeh_coord_replay_t *r, uint32_t round);
/* The recorded model hash after the round's TRAIN phase; 0 with *have 0 when none. */
uint64_t moeh_coord_replay_model_hash(const moeh_coord_replay_t *r, uint32_t round, int *have);
/* The core replays r (not owned; it must outlive the core). Set before the first tick. */
void moeh_coord_core_set_replay(moeh_coord_core_t *c, const moeh_coord_replay_t *r);

#endif
