/* coord_internal.h - the coordinator core's own state, shared by the files of the core only
 * (coordinator.c: sites, admission, phases; core_model.c: the model and its buffers; replies.c:
 * the replies of each phase, granted uploads and the secure-aggregation glue; results.c:
 * closing a phase, checkpoints; replay.c: a recorded run's participation; config.c).
 * Nothing outside coordinator/ includes it: the core's interface is moeh_coord_core.h. */
#ifndef COORD_INTERNAL_H
#define COORD_INTERNAL_H

#include "moeh_coord_core.h"

#include "moeh_aggregate.h"
#include "moeh_coord_report.h"
#include "moeh_coordinator_testing.h"
#include "moeh_dp_ledger.h"
#include "moeh_moe.h"
#include "moeh_schema.h"
#include "moeh_secagg_server.h"
#include "moeh_stream.h"
#include "moeh_uploads.h"

#define MAX_SITES 4096

typedef struct {
    char id[MOEH_SITE_ID_MAX + 1];
    uint8_t rid[256];
    size_t rid_len;
    int admitted; /* welcomed and not gone */
    int participant, replied;
    int64_t last_seen;
    uint64_t n_train, n_eval, n_val; /* declared rows (Hello): train, test, validation */
    uint64_t w_phase; /* training samples counted into this TRAIN phase's weight bound */
    int sa_in;        /* in this attempt's secure-aggregation session, as id sa_id */
    uint32_t sa_id;
    uint64_t dp_seen; /* DP: plain (unmasked) updates received from this site by this process */
    uint64_t reg_train, reg_test, reg_val; /* registry [limits] (0: none), read when phases open */
    uint64_t hello_model_phase; /* phase_serial of the last RoundStart a Hello earned it */
    int final_state;            /* final.c: coord_final_state_t */
    uint32_t final_sends;       /* final.c: FinalModels sent to it */
    int val_in;                 /* its histograms are in this round's validation sums */
    /* the global model of held_version went to its connection in a VALIDATE or EVALUATE
     * RoundStart, which it does not train on: the next RoundStart of that version goes without
     * it (model_held). Cleared by a TRAIN or STATS RoundStart, a Hello and an Error{-ESTALE}. */
    int held;
    uint64_t held_version;
    moeh_stream_rx_t up_rx; /* its granted upload's chunks so far (only while granted) */
} site_t;

/* final.c: where a site stands with the run's final model. */
typedef enum {
    COORD_FINAL_NONE = 0, /* the run is not over (or the site is no longer registered) */
    COORD_FINAL_PENDING,  /* the coordinator waits for its FinalAck */
    COORD_FINAL_ACKED,    /* it holds the model */
    COORD_FINAL_FAILED    /* it could not store it (its agent exits with an error) */
} coord_final_state_t;

/* Per-key rate limits (replies.c): a token bucket for Hellos and one for Error replies of each
 * authenticated key (or, in --insecure runs, each connection). */
#define COORD_RATE_KEYS 256
typedef enum { COORD_RATE_HELLO, COORD_RATE_ERROR } coord_rate_kind_t;
typedef struct {
    char key[MOEH_SITE_ID_MAX + 8];
    double tokens[2];
    int64_t t;           /* when the tokens were last refilled (and the entry last used) */
    uint64_t refused[2]; /* refused since the last one let through (logged then) */
} coord_rate_t;

typedef moeh_coord_phase_t phase_t;
#define PH_WAIT MOEH_COORD_WAIT
#define PH_STATS MOEH_COORD_STATS
#define PH_TRAIN MOEH_COORD_TRAIN
#define PH_EVAL MOEH_COORD_EVAL
#define PH_VAL MOEH_COORD_VALIDATE
#define PH_DONE MOEH_COORD_DONE

typedef struct moeh_coord_core {
    const moeh_coord_cfg_t *cfg;
    const moeh_coord_io_t *io;
    int64_t now;   /* the time of the current call */
    int in_stream; /* the message being handled came in chunks (coord_handle_upload_chunk) */
    site_t *sites;
    size_t n_sites;
    moeh_moe_t *model;
    moeh_moe_cfg_t mcfg;
    moeh_params_t *p;
    uint32_t n_norm, n_experts;
    /* widths of the sites' precomputed note and X-ray vectors (0: tokens, pixels): the first
     * site's hello (or the checkpoint) fixes them; create_model takes the vector inputs then */
    uint32_t vec_dim[2];
    float *norm; /* (2, n_norm): means then standard deviations */
    int have_norm;
    double *stats_sum; /* (n_norm, 3) summed over sites */
    double *gate_sum;  /* (7, n_experts) summed over sites */
    /* this phase's vector sum (proto/moeh_secsum.h): the whole vector with --secagg; in plain
     * mode everything but what has its own sum (the update words, in agg) */
    uint32_t *vsum, *vtmp; /* (largest vector), and room for one site's values */
    size_t vsum_cap;
    uint64_t combo_rows[MOEH_N_COMBOS];
    double last_auroc[MOEH_N_SLICES][MOEH_N_TASKS]; /* of the last evaluation */
    moeh_calib_t last_calib[MOEH_N_TASKS];          /* of the last evaluation, every row */
    uint64_t spec_hash, model_version, hb_seq;
    moeh_wire_limits_t lim;
    moeh_fedavg_t agg;
    moeh_server_opt_t sopt;
    /* this phase's parameters, copied once and shared by every site's RoundStart */
    moeh_shared_frame_t *params_frame;
    float *delta, *sm, *sv;      /* mean delta and server moments (adaptive strategies) */
    float *site_delta, *scratch; /* trimmed mean: each site's decoded delta, (slots, n) */
    uint32_t *site_w;            /* trimmed mean: each site's group weights, (slots, G) */
    size_t n_slots, cap_slots;
    uint8_t updated[MOEH_AGG_MAX_GROUPS];
    uint64_t *hist; /* (8 slices, n_tasks, 2, bins) summed over sites */
    double eval_loss_sum;
    uint64_t eval_n_labels;
    phase_t phase;
    uint32_t round, retries, n_participants, n_replied;
    int64_t outage_since; /* -1, or when a phase started waiting for min_sites connections */
    uint32_t wait_target; /* start as soon as this many sites joined */
    int64_t phase_deadline, wait_start, round_t0, last_hb;
    double round_train_loss; /* sample-weighted mean over the sites that replied */
    double w_cap, w_used;    /* bound on this round's total weight, and weight admitted */
    double quant_scale;      /* fixed-point scale of this round's updates */
    float quant_range;       /* per-word range of the encoding: --delta-clip, or the DP range */
    int unit_weight;         /* weight 1 per site (--unweighted or DP), not its samples */
    int dp;
    moeh_dp_ledger_t ledger;
    moeh_uploads_t *up;
    moeh_sa_server_t *sa;
    size_t sa_site[MOEH_WIRE_SECAGG_MAX]; /* session id -> site index */
    int k_fallback_logged;
    uint32_t sa_logged_n; /* sites of the last session whose SecAgg+ plan was logged */
    moeh_coord_report_t *report;
    char ckpt_path[4096];
    uint64_t med_train, med_eval, med_val; /* medians of the admitted sites' declared rows
                                            * (robust.c) */
    uint64_t phase_serial;                 /* +1 each time a phase opens */
    coord_rate_t rate[COORD_RATE_KEYS];
    /* federated validation and model selection (select.c) */
    int have_val, val_improved; /* this round validated; it is the new selected round */
    double val_loss, val_mean, val_auroc[MOEH_N_TASKS];
    moeh_calib_t val_calib[MOEH_N_TASKS];
    float *sel_w;                /* (n_params) the selected round's parameters */
    uint32_t sel_round, sel_bad; /* selected round (0: none yet), rounds without improvement */
    float sel_value;             /* its validation AUROC mean or loss, as compared */
    int sel_have_test;           /* the selected round's test metrics below are known */
    double sel_test_loss, sel_test_mean, sel_auroc[MOEH_N_SLICES][MOEH_N_TASKS];
    uint64_t sel_combo_rows[MOEH_N_COMBOS];
    moeh_calib_t sel_calib[MOEH_N_TASKS];
    moeh_calib_t sel_val_calib[MOEH_N_TASKS]; /* its validation calibration (Brier, ECE) */
    /* the end of the run (final.c): OUT/model.safetensors as sent to the sites */
    char *final_buf; /* NULL: not (yet) sending */
    size_t final_len;
    moeh_shared_frame_t *final_frame;
    uint8_t final_sha[32];
    uint32_t final_round;
    int64_t final_t0;
    int final_over;
    const moeh_coord_replay_t *replay; /* tests: an earlier run's participation (NULL: none) */
} coord_t;

/* The configuration checks of moeh_coord_core_create(); sets the server optimiser. 0 or
 * -EINVAL with err->msg. */
int moeh_coord_cfg_check(const moeh_coord_cfg_t *cfg, moeh_server_opt_t *sopt, moeh_err_t *err)
    __attribute__((warn_unused_result));

static inline Moeh__RoundTask coord_phase_task(phase_t ph)
{
    return ph == PH_TRAIN  ? MOEH__ROUND_TASK__TRAIN
           : ph == PH_EVAL ? MOEH__ROUND_TASK__EVALUATE
           : ph == PH_VAL  ? MOEH__ROUND_TASK__VALIDATE
                           : MOEH__ROUND_TASK__STATS;
}

/* 1 for the phases whose RoundStart the sites answer (and so whose replies are granted). */
static inline int coord_phase_has_replies(phase_t ph)
{
    return ph == PH_TRAIN || ph == PH_EVAL || ph == PH_VAL || ph == PH_STATS;
}

static inline const char *coord_phase_name(phase_t ph)
{
    return ph == PH_TRAIN  ? "train"
           : ph == PH_EVAL ? "eval"
           : ph == PH_VAL  ? "validation"
                           : "statistics";
}

/* The site's reply is in this phase's sum: it replied, and under secure aggregation it is a
 * survivor of the session (its masked vector was summed). */
static inline int coord_contributed(const coord_t *c, const site_t *s)
{
    return s->replied && (!c->cfg->secagg || s->sa_in);
}

/* results.c: the ids of the sites whose reply is in this phase's sum (their update, statistics
 * or histograms); ids has room for n_sites. Returns how many. */
size_t coord_contributors(const coord_t *c, const char **ids);

/* core_model.c: builds the model for these data shapes and sizes every buffer from it. */
int coord_build_model(coord_t *c, uint32_t n_static, uint32_t n_vars, uint32_t n_steps,
                      uint32_t img_size, moeh_err_t *err);

/* coordinator.c: sites, sending, DP rows of the metrics, retries. */
site_t *coord_site_by_id(const coord_t *c, const char *id);
size_t coord_site_index(const coord_t *c, const site_t *s);
uint64_t coord_dp_most_seen(const coord_t *c);
/* Sites admitted now (connected and heard from within the heartbeat timeout). */
uint32_t coord_n_admitted(const coord_t *c);
const moeh_report_dp_t *coord_dp_row(const coord_t *c, moeh_report_dp_t *row);
int coord_send_to(coord_t *c, site_t *s, Moeh__Envelope *env, const moeh_frame_t *frames,
                  size_t n_frames);
void coord_reply_error(coord_t *c, const moeh_msg_t *m, int code, const char *what,
                       const char *who);
int coord_retry_phase(coord_t *c, moeh_err_t *fatal, const char *name, const char *what);

/* replies.c: 1 if the peer of m may have one more Hello (or Error reply) now, 0 if it is over
 * its rate (refusals are counted and logged once, when the peer is let through again). */
int coord_rate_allow(coord_t *c, const moeh_msg_t *m, coord_rate_kind_t kind);

/* replies.c: the replies of each phase, granted uploads, the secure-aggregation glue (each
 * handler answers a refused message with an Error itself). */
void coord_grant_uploads(coord_t *c);
void coord_expire_grants(coord_t *c);
moeh_upload_state_t coord_upload_state(const coord_t *c, const site_t *s);
int coord_waits_for(const coord_t *c, const site_t *s);
void coord_handle_upload_ready(coord_t *c, const moeh_msg_t *m, site_t *s);
/* UploadChunk: a piece of s's granted upload; the last one completes it and the upload is
 * handled as the message it carries. 0 or the core's fatal code (fatal says why). */
int coord_handle_upload_chunk(coord_t *c, const moeh_msg_t *m, site_t *s, moeh_err_t *fatal);
void coord_handle_update(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_eval(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_stats(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_sa_advertise(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_sa_shares(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_sa_masked(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_handle_sa_reveal(coord_t *c, const moeh_msg_t *m, site_t *s);
void coord_sa_open(coord_t *c);
int coord_sa_step(coord_t *c, moeh_err_t *fatal);
/* robust.c: the poisoning bounds (moeh_bounds.h) applied to the sites. refresh re-reads the
 * registry limits and the medians of the declared rows (when a phase opens, when a site
 * joins); the caps are a site's declared rows after those bounds. The checks return 0 or
 * -ERANGE with what. */
void coord_bounds_refresh(coord_t *c);
uint64_t coord_cap_train(const coord_t *c, const site_t *s);
/* the rows one split's figures may hold (val 1: the capped n_val, 0: the capped n_eval, the test
 * rows) */
uint64_t coord_cap_eval(const coord_t *c, const site_t *s, int val);
int coord_check_stats(const coord_t *c, const site_t *s, const double *stats, char *what,
                      size_t what_len) __attribute__((warn_unused_result));
int coord_check_eval(const coord_t *c, const site_t *s, int val, const void *hist_words,
                     const uint32_t *combo_rows, uint64_t n_labels, char *what, size_t what_len)
    __attribute__((warn_unused_result));
int coord_check_update_header(const coord_t *c, const site_t *s, double train_loss,
                              uint64_t n_samples, char *what, size_t what_len)
    __attribute__((warn_unused_result));
/* Under secure aggregation, once the sum is unmasked: the same checks on the sum, against the
 * survivors' summed caps. */
int coord_check_sa_sum(coord_t *c, char *what, size_t what_len) __attribute__((warn_unused_result));
/* 1 if TRAIN keeps each site's update (per-site strategies, --norm-bound). */
int coord_keeps_updates(const coord_t *c);
/* Takes a plain update that passed its checks into this round's aggregate. */
void coord_take_update(coord_t *c, const void *words);
/* Before the server step: --norm-bound scales the kept updates and sums them. */
void coord_robust_close_train(coord_t *c);
/* results.c: closing a phase; the checkpoint of --resume. Negative with fatal set when the
 * run cannot go on. */
void coord_finish_stats(coord_t *c);
int coord_finish_train(coord_t *c, moeh_err_t *fatal);
void coord_finish_eval(coord_t *c);
int coord_save_checkpoint(coord_t *c, moeh_err_t *fatal);
/* select.c: the VALIDATE phase closed (updates the selection); the test metrics of a round
 * that became the selected one; 1 if --patience ends the run; the checkpointed state. */
int coord_select_init(coord_t *c);
void coord_finish_val(coord_t *c);
void coord_select_keep_test(coord_t *c, double test_loss, double auroc_mean);
int coord_select_stop(const coord_t *c);
const char *coord_select_key(const coord_t *c);
size_t coord_select_state_len(int with_val_calib);
void coord_select_state_put(const coord_t *c, float *s); /* coord_select_state_len(1) floats */
void coord_select_state_get(coord_t *c, const float *s, size_t len, const float *w);
int coord_load_checkpoint(coord_t *c, moeh_err_t *err);
/* final.c: sends the final model to site s (once the run is over and s has not acknowledged
 * it); a FinalAck from s. */
void coord_final_send(coord_t *c, site_t *s);
void coord_handle_final_ack(coord_t *c, const moeh_msg_t *m, site_t *s);
/* 1 if m comes from the connection of a site that holds the final model and was told Bye
 * (a heartbeat it sent before reading the Bye): ignored, not refused. */
int coord_final_left(const coord_t *c, const moeh_msg_t *m);

#endif
