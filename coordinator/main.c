/* main.c - moeh-coordinator: options, signals, then moeh_coord_run(). */
#include "moeh_coordinator.h"
#include "coord_internal.h" /* moeh_coord_cfg_check: a bad combination exits 2 */
#include "moeh_coordinator_testing.h"

#include "moeh_opts.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop, g_reload;

static void on_signal(int sig)
{
    if (sig == SIGHUP) {
        g_reload = 1;
        moeh_log_request_reopen(); /* logrotate moved --log-file away */
    } else
        g_stop = 1;
}

int main(int argc, char **argv)
{
    moeh_coord_cfg_t cfg;
    moeh_coord_cfg_defaults(&cfg);
    moeh_coord_faults_t faults = {0};
    uint32_t ready_fd = UINT32_MAX;
    int table = 1;
    const char *log_level = "info";
    const char *log_file = NULL; /* --log-file (docs/operations.md) */
    const char *secagg_k = "auto";
    const char *select_by = "auroc";
    const moeh_opt_t own[] = {
        {"bind", MOEH_OPT_STR, &cfg.bind, "ZeroMQ endpoint to listen on (tcp://HOST:PORT)"},
        {"registry", MOEH_OPT_STR, &cfg.registry_path,
         "site registry: [sites] ID = PUBLIC_KEY (and optionally [limits] ID = "
         "MAX_TRAIN,MAX_TEST[,MAX_VAL] rows)"},
        {"key", MOEH_OPT_STR, &cfg.key_path, "this coordinator's key file (moeh-keygen)"},
        {"insecure", MOEH_OPT_BOOL, &cfg.insecure,
         "no encryption and no admission control (tests only)"},
        {"rounds", MOEH_OPT_U32, &cfg.rounds, "federated rounds to run"},
        {"min-sites", MOEH_OPT_U32, &cfg.min_sites,
         "quorum: replies a phase needs to close (2 with --no-secagg)"},
        {"wait-sites", MOEH_OPT_U32, &cfg.wait_sites,
         "start once this many sites joined (0: every registered site)"},
        {"join-window", MOEH_OPT_DURATION, &cfg.start_timeout_ms,
         "how long sites may take to join: the run starts when --wait-sites have joined, or at "
         "the end of this window with a quorum (hospitals join over hours)"},
        {"deadline-ms", MOEH_OPT_U32, &cfg.phase_deadline_ms, "deadline of each phase"},
        {"max-retries", MOEH_OPT_U32, &cfg.max_retries, "retries of a phase without quorum"},
        {"outage-budget", MOEH_OPT_DURATION, &cfg.outage_budget_ms,
         "a phase that lacks quorum while fewer than --min-sites sites are connected waits this "
         "long for them (no retry counted) before the run fails (0: no waiting)"},
        {"final-wait", MOEH_OPT_DURATION, &cfg.final_wait_ms,
         "at the end, how long to wait for every site of the run to hold the final model (a "
         "site away gets it if it rejoins within this time)"},
        {"heartbeat-ms", MOEH_OPT_U32, &cfg.heartbeat_ms, "heartbeat interval"},
        {"heartbeat-timeout-ms", MOEH_OPT_U32, &cfg.heartbeat_timeout_ms,
         "a silent site is gone after this; a connection without a message for twice this is "
         "closed"},
        {"upload-slots", MOEH_OPT_U32, &cfg.upload_slots,
         "training updates the sites may send at a time (the others wait for a grant), so "
         "that memory does not grow with the sites; 0: no limit"},
        {"max-connections", MOEH_OPT_U32, &cfg.max_connections,
         "TCP connections kept at once; beyond it the quietest are shut down (0: the open-files "
         "limit less 64, kept for the checkpoint and log files)"},
        {"conn-budget-mb", MOEH_OPT_U32, &cfg.conn_budget_mb,
         "inbound MiB one connection may send at once (refilled over 8 s; at least twice the "
         "largest legitimate message); over it the connection is shut down, which bounds what "
         "ZeroMQ buffers for a peer. When all connections together hold 4x that sent and not "
         "read, the one holding the most is shut down. A connection is also shut down once "
         "it has more than twice its largest message in transit, sent and not read (with "
         "granted uploads, which travel in 32 KiB chunks, about 2 MiB for the default model) "
         "(0: neither bound)"},
        {"warmup-rounds", MOEH_OPT_U32, &cfg.warmup_rounds,
         "expert-specialisation rounds before joint training (by default at most rounds - 1)"},
        {"prox-mu", MOEH_OPT_F32, &cfg.prox_mu, "FedProx proximal weight (0: FedAvg)"},
        {"strategy", MOEH_OPT_STR, &cfg.strategy,
         "server step: fedavg, fedadam, fedyogi, trimmed or median (the last two robust; "
         "per-site memory)"},
        {"secagg", MOEH_OPT_BOOL, &cfg.secagg,
         "secure aggregation: learn only sums of the sites' updates, statistics and "
         "evaluations (not with trimmed or median)"},
        {"per-site-metrics", MOEH_OPT_BOOL, &cfg.per_site_metrics,
         "with --no-secagg: record each site's own loss and AUROC in metrics.jsonl (opt-in: "
         "tell the sites)"},
        {"secagg-allow-2", MOEH_OPT_BOOL, &cfg.secagg_allow_2,
         "allow secure aggregation with --min-sites below 3 (with 2 sites each can subtract "
         "its own update from the sum and learn the other's)"},
        {"secagg-k", MOEH_OPT_STR, &secagg_k,
         "SecAgg+ neighbours per site: auto (from the number of sites, --secagg-dropout and "
         "--secagg-collude; docs/secagg.md), 0 (every pair masks) or an even k (threshold "
         "k/2 + 1)"},
        {"secagg-dropout", MOEH_OPT_F64, &cfg.secagg_plan.dropout,
         "--secagg-k auto: largest fraction of a round's sites that may drop out"},
        {"secagg-collude", MOEH_OPT_F64, &cfg.secagg_plan.corrupt,
         "--secagg-k auto: largest fraction of sites that may collude with the coordinator"},
        {"trim", MOEH_OPT_F32, &cfg.trim, "trimmed mean: fraction dropped at each end"},
        {"count-cap", MOEH_OPT_F32, &cfg.count_cap,
         "cap of a site's declared training/test/validation rows without registry [limits]: "
         "this x the median of the sites' declared rows (0: off)"},
        {"stats-max-abs", MOEH_OPT_F32, &cfg.stats_max_abs,
         "plausible |raw feature value|: statistics needing larger values are refused (0: off)"},
        {"norm-bound", MOEH_OPT_F32, &cfg.norm_bound,
         "without --secagg: scale each site's update down to this x the round's median update "
         "norm (0: off; keeps every site's update in memory)"},
        {"unweighted", MOEH_OPT_BOOL, &cfg.unweighted,
         "FedAvg with weight 1 per site (per group it trained), not its sample count"},
        {"dp-clip", MOEH_OPT_F32, &cfg.dp_clip,
         "DP-FedAvg: L2 bound of each site's whole update delta (0: no DP; implies "
         "--unweighted; sites log their pre-clip norms)"},
        {"dp-noise", MOEH_OPT_F32, &cfg.dp_noise,
         "DP-FedAvg: noise multiplier Z of the aggregate; each site adds N(0, (Z clip)^2 / "
         "min-sites)"},
        {"dp-delta", MOEH_OPT_F32, &cfg.dp_delta,
         "DP-FedAvg: the delta of the (epsilon, delta) reported after every round"},
        {"server-lr", MOEH_OPT_F32, &cfg.server_lr, "server learning rate (FedAdam/FedYogi)"},
        {"server-beta1", MOEH_OPT_F32, &cfg.server_beta1, "server first-moment decay"},
        {"server-beta2", MOEH_OPT_F32, &cfg.server_beta2, "server second-moment decay"},
        {"server-tau", MOEH_OPT_F32, &cfg.server_tau, "server adaptivity (epsilon)"},
        {"seed", MOEH_OPT_U64, &cfg.model.seed, "seed of the initial model and local shuffling"},
        {"local-epochs", MOEH_OPT_U32, &cfg.local_epochs, "local epochs per round"},
        {"batch-size", MOEH_OPT_U32, &cfg.batch_size, "local minibatch size"},
        {"lr", MOEH_OPT_F32, &cfg.lr, "local AdamW learning rate"},
        {"weight-decay", MOEH_OPT_F32, &cfg.weight_decay, "local AdamW weight decay"},
        {"clip", MOEH_OPT_F32, &cfg.clip, "local gradient-norm clip (0: off)"},
        {"delta-clip", MOEH_OPT_F32, &cfg.delta_clip,
         "clip of each parameter's update delta (sets the fixed-point range)"},
        {"eval-bins", MOEH_OPT_U32, &cfg.eval_bins, "score histogram bins for federated AUROC"},
        {"validate", MOEH_OPT_BOOL, &cfg.validate,
         "each round, evaluate on the sites' validation splits and keep the best round as the "
         "result (--no-validate: the last round's model)"},
        {"select-by", MOEH_OPT_STR, &select_by,
         "auroc (highest mean validation AUROC) or loss (lowest validation loss)"},
        {"patience", MOEH_OPT_U32, &cfg.patience,
         "stop after this many rounds without validation improvement (0: never)"},
        {"out", MOEH_OPT_STR, &cfg.out_dir,
         "the run's directory (required): metrics.jsonl, config.json, checkpoint, model.npy"},
        {"table", MOEH_OPT_BOOL, &table, "print one line per round on stdout (default on)"},
        {"ready-fd", MOEH_OPT_U32, &ready_fd,
         "write the bound endpoint to this file descriptor once listening"},
        {"data-shape", MOEH_OPT_STR, &cfg.data_shape,
         "pin the sites' data as STATIC,VARS,HOURS,IMAGE (default: the first site's)"},
        {"feature-names", MOEH_OPT_STR, &cfg.feature_names,
         "a dataset's meta.json (or its directory) whose feature names and units the model file "
         "records (default: none, counts only)"},
        {"resume", MOEH_OPT_BOOL, &cfg.resume,
         "continue from the checkpoint in --out (written after every round)"},
        {"new-run", MOEH_OPT_BOOL, &cfg.new_run,
         "--out holds an earlier run: move its files into --out/previous-run-<time>/ and start "
         "a new run (without this or --resume such a directory is refused)"},
        {"fault-kill-after-round", MOEH_OPT_U32, &faults.kill_after_round,
         "TESTS ONLY: SIGKILL this process after checkpointing round N (0: off)"},
        {"fault-replay", MOEH_OPT_STR, &faults.replay_metrics,
         "TESTS ONLY: replay the participation recorded in this metrics.jsonl (each phase "
         "invites only the sites whose replies entered that round's sums)"},
        {"fault-hslog-window", MOEH_OPT_DURATION, &faults.hslog_window_ms,
         "TESTS ONLY: log failed CURVE handshakes per peer at most once per this window (0: "
         "60s)"},
        {"log-level", MOEH_OPT_STR, &log_level, "debug, info, warn or error"},
        {"log-file", MOEH_OPT_STR, &log_file,
         "append the log to this file instead of stderr (reopened on SIGHUP, for logrotate)"},
    };
    /* this binary's options, then the model's hyperparameters (the shared fragment) */
    moeh_opt_t opts[MOEH_OPTS_MAX];
    _Static_assert(sizeof own / sizeof own[0] < MOEH_OPTS_MAX, "room for the model options");
    size_t n_opts = sizeof own / sizeof own[0];
    memcpy(opts, own, sizeof own);
    if (moeh_moe_cfg_options(&cfg.model, opts, &n_opts, MOEH_OPTS_MAX) != 0) return 2;
    /* the daemon's defaults are the safe ones (the library's suit in-process tests) */
    cfg.secagg = 1;
    cfg.min_sites = 3; /* secure aggregation needs 3 (2 without it: below) */
    cfg.out_dir = NULL;
    static const void *required[2];
    required[0] = &cfg.out_dir;
    moeh_opts_t o = {.prog = "moeh-coordinator",
                     .required = required,
                     .synopsis = "usage: moeh-coordinator [OPTIONS]\n\n"
                                 "Runs federated training: admits the sites listed in the "
                                 "registry (CURVE keys),\nruns the rounds, aggregates, evaluates "
                                 "and writes metrics.jsonl. SIGHUP re-reads the registry\n"
                                 "(added sites are admitted, removed ones dropped at once); "
                                 "SIGINT/SIGTERM stop cleanly.",
                     .opts = opts,
                     .n_opts = n_opts};
    int rc = moeh_opts_main(&o, argc, argv, &log_level, "coordinator");
    if (rc >= 0) return rc;
    if (!moeh_opts_seen(&o, &cfg.min_sites) && !cfg.secagg) cfg.min_sites = 2;
    moeh_err_t uerr = {0};
    if (moeh_opts_check_endpoint("bind", cfg.bind, "*", &uerr) != 0 ||
        (!cfg.insecure && (!cfg.registry_path || !cfg.key_path) &&
         moeh_errf(&uerr, -EINVAL,
                   "--registry FILE and --key FILE are required (or --insecure, for tests)"))) {
        fprintf(stderr, "moeh-coordinator: %s\n", uerr.msg);
        moeh_opts_free(&o);
        return 2;
    }
    if (!moeh_opts_seen(&o, &cfg.warmup_rounds) && cfg.warmup_rounds >= cfg.rounds)
        cfg.warmup_rounds = cfg.rounds > 1 ? cfg.rounds - 1 : 0; /* leave a joint round */
    cfg.ready_fd = ready_fd == UINT32_MAX ? -1 : (int)ready_fd;
    moeh_err_t kerr = {0};
    if (moeh_coord_parse_secagg_k(secagg_k, &cfg.secagg_k, &kerr) != 0) {
        fprintf(stderr, "moeh-coordinator: %s\n", kerr.msg);
        moeh_opts_free(&o);
        return 2;
    }
    if (strcmp(select_by, "auroc") != 0 && strcmp(select_by, "loss") != 0) {
        fprintf(stderr, "moeh-coordinator: --select-by %s: expected auroc or loss\n", select_by);
        moeh_opts_free(&o);
        return 2;
    }
    cfg.select_by_loss = strcmp(select_by, "loss") == 0;
    if ((cfg.patience || cfg.select_by_loss) && !cfg.validate) {
        fprintf(stderr, "moeh-coordinator: --%s needs the validation phase (drop --no-validate)\n",
                cfg.patience ? "patience" : "select-by loss");
        moeh_opts_free(&o);
        return 2;
    }
    cfg.print_table = table;
    if (log_file && moeh_log_open_file(log_file, &kerr) != 0) { /* --log-file */
        fprintf(stderr, "moeh-coordinator: %s\n", kerr.msg);
        moeh_opts_free(&o);
        return MOEH_EXIT_USAGE;
    }
    moeh_server_opt_t sopt;
    if (cfg.resume && cfg.new_run)
        moeh_errf(&kerr, -EINVAL,
                  "--resume and --new-run exclude each other: continue the run in %s, or move "
                  "it aside and start anew",
                  cfg.out_dir);
    if (kerr.msg[0] || moeh_coord_cfg_check(&cfg, &sopt, &kerr) != 0) { /* usage errors */
        fprintf(stderr, "moeh-coordinator: %s\n", kerr.msg);
        moeh_opts_free(&o);
        return MOEH_EXIT_USAGE;
    }
    moeh_install_signals(on_signal, 1); /* SIGHUP re-reads the site registry */
    cfg.reload = &g_reload;
    moeh_err_t err = {0};
    rc = moeh_coord_run_faulty(&cfg, &faults, &g_stop, &err);
    moeh_opts_free(&o);
    if (rc) {
        MOEH_ERROR("%s", err.msg);
        return rc == -EINTR                     ? MOEH_EXIT_INTERRUPTED
               : rc == -EEXIST || rc == -ENOKEY ? MOEH_EXIT_USAGE
                                                : MOEH_EXIT_ERROR;
    }
    return MOEH_EXIT_FINISHED;
}
