/* agent_int.h - private to site-agent/: the agent's state, shared by its three files.
 *
 *   agent.c         the connection loop (socket, CURVE, monitor, heartbeats, reconnects with
 *                   backoff) and message dispatch; the phases' local work (train, evaluate,
 *                   statistics) and the plain replies;
 *   agent_update.c  encoding of a training update (zeroed untrained groups, DP clip + noise,
 *                   quantisation, per-group weights, the TRAIN values of the secure sum) and its
 *                   upload: in clear, held for an UploadGrant, or through secure aggregation;
 *   agent_secagg.c  this site's side of secure aggregation for every phase (the sa_* state);
 *   agent_final.c   what the site keeps in --out: the run's final model and its own per-round
 *                   metrics (local_metrics.jsonl).
 *
 * One thread owns an agent_t and everything in it; nothing here is thread-safe. Not a public
 * interface: nothing outside site-agent/ includes it. */
#ifndef MOEH_AGENT_INT_H
#define MOEH_AGENT_INT_H

#include "moeh_agent.h"
#include "moeh_agent_testing.h"
#include "moeh_keys.h"
#include "moeh_monitor.h"
#include "moeh_secagg.h"
#include "moeh_stream.h"
#include "moeh_trainer.h"
#include "moeh_wire.h"

#include <stdio.h>
#include <time.h>

/* agent_final.c: this site's own figures of one round, for --out/local_metrics.jsonl */
typedef struct {
    uint32_t round;
    int open; /* something of this round was recorded and not yet written */
    time_t started;
    int trained, warmup;
    double train_loss, train_s;
    uint64_t train_rows;
    uint32_t steps;
    int validated, tested;
    double val_loss, test_loss, eval_s;
    uint64_t val_rows, test_rows;
    double val_auroc[MOEH_N_TASKS], test_auroc[MOEH_N_TASKS];
    int sent[3];        /* update, validation, test histograms: 0 not sent, 1 masked, 2 unmasked */
    double cpu0;        /* this process's CPU seconds (all threads) when the round's first
                         * RoundStart opened the line (at `started`; 0: not opened) */
    double train_cpu_s; /* the CPU seconds of its training (NAN: none) */
} agent_lm_t;

typedef struct agent agent_t;
struct agent {
    const moeh_agent_cfg_t *cfg;
    moeh_agent_faults_t faults; /* tests only (moeh_agent_testing.h); zero: none */
    void *zctx, *sock;
    moeh_monitor_t *mon;       /* watches sock's handshakes (CURVE only) */
    int64_t probed_at;         /* the last moeh_monitor_probe() of --connect (ms; 0: never) */
    int hs_ok;                 /* this socket's CURVE handshake succeeded */
    int hs_ever_ok;            /* some socket's did: --connect is a ZeroMQ CURVE server */
    int silent_probes;         /* probes in a row that found a peer accepting and silent */
    int64_t first_silent_at;   /* when the first of those ended (ms) */
    int hs_dropped;            /* connections closed during the handshake, since the last success */
    int64_t hs_first_drop;     /* when the first of those was seen (ms) */
    int64_t auth_later_logged; /* when "connect later" (ZAP 300) was last logged (ms) */
    moeh_keypair_t *kp;
    char server_pub[MOEH_Z85_KEY_LEN + 1];
    /* what this site holds (read once at start to introduce itself) */
    size_t n_static, n_vars, n_steps, img_size, n_train, n_test, n_val; /* rows per split */
    size_t note_dim, img_dim;         /* the dataset's precomputed vector widths (0: none) */
    size_t combos[MOEH_N_COMBOS + 1]; /* rows per availability mask (1..7; combination + 1) */
    moeh_trainer_t *trainer;          /* built on Welcome, from the coordinator's model spec */
    uint64_t spec_hash, cfg_hash;     /* of the layout, of the model spec's JSON */
    float *global, *delta, *norm;
    /* the trainer's parameters and norm are the global model of held_version as the
     * coordinator sent it (since this Welcome, not trained on since): a RoundStart with
     * model_held of that version uses them (protocol 8) */
    int held;
    uint64_t held_version;
    uint32_t *upd;   /* update words: n_params + n_groups, then the TRAIN values (moeh_secsum.h) */
    uint32_t *hist;  /* the VALIDATE vector: test split's histograms and values, then the
                      * validation split's (moeh_secsum.h); EVALUATE uses the first half */
    uint32_t *svec;  /* the STATS vector (moeh_secsum.h) */
    float *gate_sum; /* the test split's gate sums, then the validation split's */
    moeh_wire_limits_t lim;
    int welcomed, ever_welcomed, done;
    int paused; /* a PAUSED bye arrived: reconnect for the resumed run */
    uint32_t hb_ms, eval_bins;
    int64_t last_rx, last_hb, hello_at, start;
    int64_t unadmitted_since; /* not admitted since (ms; 0: admitted): --give-up-ms */
    uint32_t backoff_ms;
    uint64_t hb_seq, seed_salt;
    moeh_err_t fatal;
    int fatal_rc;
    /* secure aggregation of the current phase (sa == NULL: none in progress) */
    moeh_secagg_client_t *sa;
    /* the share key every session's client advertises, made at the first session, kept until
     * exit (fed/moeh_secagg.h: its secret is never revealed; its pair keys are kept) */
    moeh_secagg_ident_t *sa_ident;
    uint64_t sa_session, sa_version;
    uint32_t sa_round, sa_n;
    Moeh__RoundTask sa_task;
    uint32_t *sa_vec; /* the phase's vector (upd, hist or svec), masked in place; NULL until
                       * the phase's work made it */
    size_t sa_len;
    moeh_msg_t sa_work; /* the session's RoundStart, its work waiting for the key list (env NULL:
                         * none waiting) */
    int sa_grant;       /* the session's RoundStart asked for granted uploads */
    /* granted uploads: the phase's reply held until its grant (up_wait) */
    int up_wait;
    uint32_t up_round;
    uint64_t up_version, up_session;
    /* the held and then granted reply, in chunks under the coordinator's credit
     * (moeh_stream.h), and what local_metrics.jsonl records once its last chunk is sent */
    moeh_stream_tx_t up_tx;
    Moeh__RoundTask up_tx_task;
    uint32_t up_tx_round;
    int up_tx_masked;
    /* what the site keeps (agent_final.c) */
    int have_final; /* the run's final model is in --out/model.safetensors */
    FILE *lm_fp;    /* --out/local_metrics.jsonl, appended */
    agent_lm_t lm;  /* the round being recorded */
};

/* ---- agent.c --------------------------------------------------------------------------- */
/* Tells the coordinator about a failure with an Error (code, message). Best effort: without a
 * socket nothing is sent, and a failed send is only logged (the coordinator's deadline covers
 * a lost Error). */
void moeh_agent_send_error(agent_t *a, int code, const char *message);
/* Records the first fatal error (printf-style message); the loop stops at the next turn. */
void moeh_agent_set_fatal(agent_t *a, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- agent_final.c: what the site keeps in --out ------------------------------------------ */
/* Creates --out and opens local_metrics.jsonl for appending. 0 or a negative code with err. */
int moeh_agent_lm_open(agent_t *a, moeh_err_t *err) __attribute__((warn_unused_result));
/* A phase of `round` starts: the line of an earlier round is written first. */
void moeh_agent_lm_round(agent_t *a, uint32_t round);
/* This round's local training (seconds: its wall time; cpu_s: its CPU time) and evaluations
 * (the sums of one split, val 1: validation, 0: test, as computed here: loss, rows, AUROC per
 * task). */
void moeh_agent_lm_train(agent_t *a, const Moeh__RoundStart *rs, const moeh_train_result_t *res,
                         double seconds, double cpu_s);
void moeh_agent_lm_eval(agent_t *a, const Moeh__RoundStart *rs, const moeh_eval_sums_t *es, int val,
                        double seconds);
/* The phase's result left the site, masked (secure aggregation) or in clear. */
void moeh_agent_lm_sent(agent_t *a, Moeh__RoundTask task, uint32_t round, int masked);
/* CPU seconds (user + system) of this process so far, every thread; NAN if unknown. */
double moeh_agent_cpu_s(void);
/* Writes the pending line (if any); close also closes the file. */
void moeh_agent_lm_flush(agent_t *a);
void moeh_agent_lm_close(agent_t *a);
/* FinalModel: checks and stores the file, acknowledges it; a failure is fatal (reported to
 * the coordinator first). */
void moeh_agent_on_final(agent_t *a, const Moeh__FinalModel *fm, const moeh_msg_t *m);

/* ---- agent_secagg.c: this site's side of secure aggregation (docs/secagg.md) ---------- */
/* With RoundStart.secagg, at once: a session for the phase's vector (its length known from the
 * task), fresh round keys advertised to the coordinator. The phase's work (training, evaluation
 * or the statistics, *m) waits for the key list: it is kept here (*m is moved, left empty) and
 * run by moeh_agent_sa_on_keys once this site's shares are sent, so that the key and share
 * exchanges happen before the work instead of after it and the masked vector leaves as soon as
 * the work is done (docs/secagg.md, "Keys first"). On failure the session is ended, the
 * coordinator told why, and *m left to the caller. */
void moeh_agent_sa_begin(agent_t *a, const Moeh__RoundStart *rs, moeh_msg_t *m);
/* The phase's work made its vector (len words at vec, kept until the session ends): masked and
 * sent once the forwarded shares are here. Nothing if the session has ended. */
void moeh_agent_sa_input(agent_t *a, uint32_t *vec, size_t len);
/* agent.c: the work of the RoundStart in *m (train, evaluate or statistics). */
void moeh_agent_run_phase(agent_t *a, const moeh_msg_t *m);
/* Ends the secure-aggregation session (wipes its secrets, drops an upload held for it and a
 * RoundStart waiting for the key list); reports why to the log and the coordinator if `why` is set.
 * Safe without a session. */
void moeh_agent_sa_end(agent_t *a, const char *why, const char *detail);
/* SecaggKeys: encrypts this site's shares for its neighbours and sends them. */
void moeh_agent_sa_on_keys(agent_t *a, const Moeh__SecaggKeys *k);
/* The forwarded shares and U2: masks the session's vector, then sends it (or, for a TRAIN
 * update with granted uploads, announces it and waits for the grant). */
void moeh_agent_sa_on_shares(agent_t *a, const Moeh__SecaggShares *sh);
/* Sends the session's masked vector (held: held for its grant, moeh_agent_upload_hold). */
void moeh_agent_sa_send_masked(agent_t *a, int held);
/* SecaggUnmask: reveals this site's shares of the survivors' b and the dropped sites' keys. */
void moeh_agent_sa_on_unmask(agent_t *a, const Moeh__SecaggUnmask *um);

/* ---- agent_update.c: the training update, encoded and uploaded -------------------------- */
/* Encodes this round's delta (a->delta, after local training with result res) into a->upd
 * and sends it: in clear, held for its upload grant, or through secure aggregation. A failure
 * is logged and reported to the coordinator; no update is sent then. */
void moeh_agent_update_submit(agent_t *a, const Moeh__RoundStart *rs,
                              const moeh_train_result_t *res);
/* Sends a->upd in clear as this round's Update (no secure aggregation); held: held for its
 * grant (moeh_agent_upload_hold). */
void moeh_agent_update_send(agent_t *a, uint32_t round, uint64_t version, double loss,
                            uint64_t samples, uint32_t steps, int held);
/* Holds env with its frames as this site's reply of the phase (round, version; session: its
 * secure session, 0 if plain), packed in chunks of stream round + 1, and announces it with
 * UploadReady; the grant sends the first window, credits the rest (moeh_agent_upload_credit);
 * local_metrics.jsonl records (task, round, masked) once the last chunk is sent. */
void moeh_agent_upload_hold(agent_t *a, Moeh__Envelope *env, const moeh_frame_t *frames,
                            size_t n_frames, Moeh__RoundTask task, uint32_t round, uint64_t version,
                            uint64_t session, int masked);
/* UploadCredit: sends the chunks it allows; a credit for another stream is ignored. */
void moeh_agent_upload_credit(agent_t *a, const Moeh__UploadCredit *cr);
/* Drops a held update and an upload in flight (a new phase, connection or model). */
void moeh_agent_upload_drop(agent_t *a);
/* UploadGrant: sends the held update it names; a grant for anything else is ignored. */
void moeh_agent_on_grant(agent_t *a, const Moeh__UploadGrant *g);

#endif
