/* moeh_coord_core.h - the coordinator's state machine, without a socket or a clock: admission,
 * the phases (STATS once, then TRAIN and EVAL each round, each with a deadline, a quorum and
 * retries), the session checks on every reply, granted uploads, secure aggregation, DP
 * accounting, checkpoints and metrics.
 *
 * The caller (coordinator/run.c, or a test) feeds it decoded messages and the time, and it
 * answers through the send callback; nothing here calls ZeroMQ or reads the clock, so a test
 * can drive a whole federation in-process with a fake clock. Every function takes the current
 * time in milliseconds (any monotonic origin). One thread; not thread-safe. */
#ifndef MOEH_COORD_CORE_H
#define MOEH_COORD_CORE_H

#include "moeh_coordinator.h"

#include "moeh_params.h"
#include "moeh_wire.h"

#include <stdio.h>

#define MOEH_COORD_WUR __attribute__((warn_unused_result))

typedef struct moeh_coord_core moeh_coord_core_t;

typedef enum {
    MOEH_COORD_WAIT,  /* sites join */
    MOEH_COORD_STATS, /* sums for the normalisation statistics (once) */
    MOEH_COORD_TRAIN,
    MOEH_COORD_EVAL,
    MOEH_COORD_DONE,
    MOEH_COORD_VALIDATE /* score histograms on the test and the validation splits (model
                         * selection), one phase since protocol 9; EVAL without validation */
} moeh_coord_phase_t;

/* What the core needs from its surroundings. */
typedef struct {
    /* Sends env and its frames to the peer with this routing id (env's protocol version and
     * frame list may be filled in by the callee). 0; -EHOSTUNREACH if the peer is gone (the
     * site is then dropped); any other negative code is logged. Required. */
    int (*send)(void *ctx, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env,
                const moeh_frame_t *frames, size_t n_frames);
    /* 1 if the site with this id is in the registry now. Required unless cfg->insecure. */
    int (*registered)(void *ctx, const char *site_id);
    /* The registered row limits of a site (registry [limits]; 0 where none). May be NULL: no
     * registered limits. */
    void (*site_limits)(void *ctx, const char *site_id, uint64_t *max_train, uint64_t *max_test);
    /* The registered limit of its validation rows ([limits] MAX_VAL; 0: none). May be NULL. */
    void (*site_val_limit)(void *ctx, const char *site_id, uint64_t *max_val);
    /* Called once a round's checkpoint is written (may be NULL). */
    void (*round_saved)(void *ctx, uint32_t round);
    void *ctx;
    FILE *table; /* the per-round and final tables when cfg->print_table (NULL: stdout) */
} moeh_coord_io_t;

/* Checks cfg, prepares out_dir (config.json, metrics.jsonl; with cfg->resume the checkpoint and
 * DP ledger are loaded) and builds the model if the data shape is known (cfg->data_shape or the
 * checkpoint). cfg and io must outlive the core. 0 or a negative code with err->msg; caller
 * owns *out: moeh_coord_core_destroy(&c). */
int moeh_coord_core_create(const moeh_coord_cfg_t *cfg, const moeh_coord_io_t *io,
                           moeh_coord_core_t **out, moeh_err_t *err) MOEH_COORD_WUR;
/* NULL-safe; sets *self_p = NULL. Sends nothing (see moeh_coord_core_bye_all). */
void moeh_coord_core_destroy(moeh_coord_core_t **self_p);
/* Starts waiting for sites at now: the first phase opens once n_registered sites joined
 * (cfg->wait_sites if set; min_sites when nothing is registered), or after start_timeout_ms
 * with a quorum. */
void moeh_coord_core_start(moeh_coord_core_t *c, uint32_t n_registered, int64_t now);
/* The number of joined sites the first phase waits for (set by moeh_coord_core_start). */
uint32_t moeh_coord_core_wait_target(const moeh_coord_core_t *c);
/* What the decoder may accept now (zero fields until the model exists). Borrowed. */
const moeh_wire_limits_t *moeh_coord_core_limits(const moeh_coord_core_t *c);

/* One decoded message from the peer m->routing_id (m->peer: its authenticated site id, "" if
 * none). Anything refused is answered with an Error. 0, or a negative code with err->msg when
 * the run cannot go on (the DP ledger cannot be written, the model cannot be built). */
int moeh_coord_core_on_message(moeh_coord_core_t *c, const moeh_msg_t *m, int64_t now,
                               moeh_err_t *err) MOEH_COORD_WUR;
/* A message that failed to decode (code and why from the decoder): answered with an Error. */
void moeh_coord_core_on_bad_message(moeh_coord_core_t *c, const moeh_msg_t *m, int code,
                                    const char *why, int64_t now);
/* Heartbeats, liveness, upload grants, phase deadlines and transitions, at time now. Call
 * often (every few tens of ms). 0, or a negative code with err->msg when the run failed
 * (-ETIMEDOUT: not enough sites joined, or a phase failed after its retries). */
int moeh_coord_core_tick(moeh_coord_core_t *c, int64_t now, moeh_err_t *err) MOEH_COORD_WUR;
/* The registry changed: sites no longer registered are told and dropped at once. */
void moeh_coord_core_registry_changed(moeh_coord_core_t *c, int64_t now);
/* Tells every live site why the coordinator leaves (Bye): FINISHED (the run is over), or PAUSED
 * (a signal or a failure stopped it; a resumed coordinator continues, so agents wait). */
void moeh_coord_core_bye_all(moeh_coord_core_t *c, Moeh__ByeStatus status, const char *reason);
/* After the last round: writes out_dir/model.npy and prints the final table. 0 or a negative
 * code with err->msg. */
int moeh_coord_core_finish(moeh_coord_core_t *c, moeh_err_t *err) MOEH_COORD_WUR;

/* final.c, after moeh_coord_core_finish: sends out_dir/model.safetensors to every admitted site
 * (and later to each site that rejoins) and says Bye FINISHED to each site that acknowledged
 * it. A file that cannot be read is logged; the sites then get no model. */
void moeh_coord_core_final_begin(moeh_coord_core_t *c, int64_t now);
/* 1 once every site of the run acknowledged the final model (or said it could not store it),
 * or cfg->final_wait_ms after final_begin (the sites still waited for are logged); keep
 * calling moeh_coord_core_on_message and moeh_coord_core_tick until then. */
int moeh_coord_core_final_done(moeh_coord_core_t *c, int64_t now);

/* ---- state, for the caller and for tests (all borrowed, valid until the next call) ---- */
moeh_coord_phase_t moeh_coord_core_phase(const moeh_coord_core_t *c);
uint32_t moeh_coord_core_round(const moeh_coord_core_t *c);
uint64_t moeh_coord_core_model_version(const moeh_coord_core_t *c);
/* Replies and participants of the open phase. */
uint32_t moeh_coord_core_replied(const moeh_coord_core_t *c);
uint32_t moeh_coord_core_participants(const moeh_coord_core_t *c);
/* 1 if a site with this id is admitted (welcomed and not gone). */
int moeh_coord_core_admitted(const moeh_coord_core_t *c, const char *site_id);
/* The model's parameters (NULL before the model exists). */
const moeh_params_t *moeh_coord_core_params(const moeh_coord_core_t *c);
/* The normalisation sent to the sites: mean then std, n_norm each (NULL before the model). */
const float *moeh_coord_core_norm(const moeh_coord_core_t *c, size_t *n_norm);
/* AUROC of task t over all rows at the last evaluation (NaN if undefined). */
double moeh_coord_core_auroc(const moeh_coord_core_t *c, uint32_t task);

/* rundir.c: before a run writes into dir. A new run (neither flag) refuses a directory that
 * holds an earlier run's checkpoint, metrics, model or DP ledger (-EEXIST, naming --resume and
 * --new-run); new_run moves those files and the rest of that run's outputs into
 * dir/previous-run-<UTC time>/ (never deletes); resume leaves them for the checkpoint. */
int moeh_coord_rundir_prepare(const char *dir, int resume, int new_run, moeh_err_t *err) MOEH_WUR;

#endif
