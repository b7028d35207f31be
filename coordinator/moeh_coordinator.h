/* moeh_coordinator.h - moeh-coordinator as a library: admission, the round state machine (train
 * phase then evaluation phase per round, each with a deadline and a quorum), per-group FedAvg,
 * federated evaluation from summed score histograms, heartbeats, metrics.jsonl.
 *
 * One thread owns the ROUTER socket and all state; a second thread (keys.h) answers ZAP
 * requests. moeh_coord_run() returns when the run is over, fails, or *stop becomes non-zero.
 * The state machine itself, without socket or clock, is moeh_coord_core.h. */
#ifndef MOEH_COORDINATOR_H
#define MOEH_COORDINATOR_H

#include "moeh_common.h"
#include "moeh_moe.h"
#include "moeh_secagg_plan.h"

#include <signal.h>

typedef struct {
    const char *bind;          /* e.g. tcp://127.0.0.1:(star) for any port, or tcp://(star):7400 */
    const char *registry_path; /* site registry (required unless insecure) */
    const char *key_path;      /* the coordinator's .key file (required unless insecure) */
    int insecure;              /* plaintext, no admission control: unit tests only */

    uint32_t rounds;
    uint32_t min_sites;        /* quorum: a phase closes with >= this many replies */
    uint32_t wait_sites;       /* start as soon as this many sites joined (0: registry size) */
    uint32_t start_timeout_ms; /* ...or after this long with >= min_sites */
    uint32_t phase_deadline_ms;
    uint32_t max_retries; /* a phase without quorum is retried this many times */
    /* An attempt that fails while fewer than min_sites sites are connected is an outage, not a
     * failure: no retry is counted; the phase waits for min_sites connected sites and starts
     * again, unless the outage lasts longer than this (then the run fails). 0: no waiting. */
    uint32_t outage_budget_ms;
    uint32_t heartbeat_ms;
    uint32_t heartbeat_timeout_ms; /* a silent site is considered gone after this */
    /* Granted uploads (TRAIN): at most this many sites are told to send their update at a
     * time; the others announce it (UploadReady) and wait for an UploadGrant, so that the
     * coordinator never buffers more than upload_slots updates whatever the number of sites.
     * A grant not used within heartbeat_timeout_ms expires. 0: no limit, sites push. */
    uint32_t upload_slots;
    /* Connection guard (moeh_connguard.h, docs/security.md): at most max_connections accepted
     * TCP connections (0: the open-files limit less a reserve of 64), and a token bucket of
     * conn_budget_mb MiB of inbound bytes per connection (refilled over 8 s; raised to twice
     * the largest legitimate message once the model is known), a connection over it shut
     * down; and 4x that of bytes sent and not read by all connections together, the one
     * holding the most shut down beyond it. conn_budget_mb 0: no byte budget. */
    uint32_t max_connections, conn_budget_mb;

    /* model: MoE-Health or a baseline, its hyperparameters and seed (model/moeh_moe.h; the seed
     * also drives the sites' shuffling). The data shapes (static features, hourly variables,
     * hours, image size) come from the sites, which must agree; max_batch is batch_size. */
    moeh_moe_cfg_t model;
    uint32_t warmup_rounds; /* expert-specialisation rounds before joint training */
    float prox_mu;          /* FedProx proximal weight sent to sites (0: FedAvg) */
    const char *strategy;   /* server step: fedavg, fedadam, fedyogi, trimmed or median */
    float server_lr, server_beta1, server_beta2, server_tau;
    float trim; /* trimmed mean: fraction dropped at each end */
    /* Poisoning bounds (coordinator/moeh_bounds.h, docs/security.md). A site's declared
     * training and test rows are capped by its registry [limits], or without them by
     * count_cap x the median of the admitted sites' declared counts (0: no median cap); the
     * caps bound its update weight, statistics counts and evaluation rows. stats_max_abs is the
     * plausible |value| of a raw feature (0: no range check). norm_bound K (plain mode only)
     * scales each site's update delta down to K x the round's median update norm (0: off; keeps
     * each site's update, memory O(sites x parameters)). */
    float count_cap, stats_max_abs, norm_bound;
    int secagg; /* secure aggregation of every phase (docs/secagg.md): the coordinator
                 * learns only the sums of the sites' updates, statistics and evaluations */
    /* without secagg: record each site's own loss and AUROC in metrics.jsonl (opt-in; the
     * coordinator receives each site's histograms either way, but keeps no per-site record) */
    int per_site_metrics;
    int secagg_allow_2; /* secagg with min_sites < 3, or a round of 2 sites (then each can learn
                         * the other's update from the sum): refused unless this is set */
    uint32_t secagg_k;  /* SecAgg+ neighbours: MOEH_SECAGG_K_AUTO (the default) plans k from the
                         * number of sites and secagg_plan; 0: every pair masks; even, < 512 */
    moeh_secagg_plan_cfg_t secagg_plan; /* dropout/collusion fractions for the plan */
    int unweighted; /* FedAvg with weight 1 per site (per group it trained), not its samples */
    /* DP-FedAvg (fed/moeh_dp.h, docs/security.md): each site clips its update delta to L2 norm
     * dp_clip and adds N(0, (dp_noise dp_clip)^2 / min_sites); dp_clip 0: off. The (epsilon,
     * dp_delta) spent is reported after every round. Implies unweighted. */
    float dp_clip, dp_noise, dp_delta;

    /* local training, sent to sites every round */
    uint32_t local_epochs, batch_size;
    float lr, weight_decay, clip;
    float delta_clip; /* per-parameter clip of update deltas (fixed-point range) */
    uint32_t eval_bins;
    /* federated validation and model selection (coordinator/select.c) */
    int validate;       /* a VALIDATE phase each round; the best round is the result (default 1) */
    int select_by_loss; /* select by lowest validation loss, not highest mean AUROC */
    uint32_t patience;  /* stop after this many rounds without improvement (0: never) */

    const char *out_dir; /* metrics.jsonl, model.npy, config.json go here */
    /* the end of the run (final.c): how long to wait for every site of the run to hold the
     * final model (sites away get it if they rejoin meanwhile) */
    uint32_t final_wait_ms;
    int ready_fd;    /* if >= 0: the bound endpoint and '\n' are written here */
    int print_table; /* print one line per round on stdout */
    int resume;      /* continue from out_dir/checkpoint.moeh */
    int new_run;     /* out_dir holds an earlier run: move its files aside, start anew */
    /* "STATIC,VARS,HOURS,IMAGE": pins the sites' data shapes and builds the model at start
     * (NULL: the first admitted site's Hello decides) */
    const char *data_shape;
    /* a dataset's meta.json (or its directory): the static feature names and hourly variables
     * (names, units) recorded in OUT/model.safetensors (NULL: the file records counts only) */
    const char *feature_names;
    volatile sig_atomic_t *reload; /* set (e.g. by SIGHUP): re-read the registry; may be NULL */
} moeh_coord_cfg_t;

/* Defaults for every field (bind all interfaces on port 7400, 5 rounds, quorum 1, ...). */
void moeh_coord_cfg_defaults(moeh_coord_cfg_t *cfg);
/* --secagg-k's value: "auto" (MOEH_SECAGG_K_AUTO) or a number of neighbours (even, 0: all
 * pairs; checked with the whole configuration). 0, or -EINVAL with err naming the value. */
int moeh_coord_parse_secagg_k(const char *s, uint32_t *k, moeh_err_t *err) MOEH_WUR;

/* Runs a whole federation. 0 when every round completed; a negative code with err->msg
 * otherwise (-ETIMEDOUT: not enough sites; -EINTR: stopped by *stop). */
int moeh_coord_run(const moeh_coord_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
