/* run.c - `moeh run`: a whole federation on this machine, as real processes over
 * loopback with CURVE: synthetic MIMIC-IV -> extract -> split into sites with different
 * modality mixes -> keys and registry -> coordinator + one agent per site -> round table ->
 * final table per task and modality combination -> every process stopped. */
#include "moeh_dp.h"
#include "moeh_localfed.h"
#include "moeh_moe.h"
#include "moeh_opts.h"
#include "moeh_split.h"
#include "sim_commands.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

#define DEFAULT_SITES                                                                              \
    "site-1:0.25:ehr,site-2:0.25:ehr+notes,site-3:0.25:ehr+img,site-4:0.25:ehr+notes+img"

/* The value of a numeric option as text that parses back to the same value. */
static void format_opt(const moeh_opt_t *opt, char *buf, size_t cap)
{
    switch (opt->type) {
    case MOEH_OPT_U32:
        snprintf(buf, cap, "%u", *(const uint32_t *)opt->ptr);
        break;
    case MOEH_OPT_U64:
        snprintf(buf, cap, "%llu", (unsigned long long)*(const uint64_t *)opt->ptr);
        break;
    case MOEH_OPT_F32:
        snprintf(buf, cap, "%.9g", (double)*(const float *)opt->ptr);
        break;
    default:
        MOEH_ASSERT(!"a model option is numeric");
    }
}

/* Runs a moeh subcommand in this process with the given arguments. */
static int sub(int (*fn)(int, char **), char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    return fn(argc, argv);
}

int moeh_sim_cmd_run(int argc, char **argv)
{
    const char *out = "moeh-run", *bin_dir_opt = NULL, *sites_spec = DEFAULT_SITES;
    const char *data_opt = NULL;
    uint32_t admissions = 3000, rounds = 8, min_sites = 0, epochs = 1, batch = 32;
    uint32_t warmup = 3, timeout_s = 1200;
    float lr = 2e-3f, prox_mu = 0.0f, dp_clip = 0.0f, dp_noise = 0.0f, dp_delta = 1e-5f;
    /* the model's hyperparameters, passed on to moeh-coordinator (data shapes: the sites') */
    moeh_moe_cfg_t model = moeh_sim_model_defaults();
    uint64_t seed = 1;
    int insecure = 0, secagg = 1, unweighted = 0;
    uint32_t upload_slots = 2; /* moeh-coordinator's default */
    const char *secagg_k = "auto";
    const char *profile = "homogeneous"; /* moeh synth --profile (docs/synthetic.md) */
    const char *select_by = "auroc";
    uint32_t patience = 0;
    int validate = 1;
    const moeh_opt_t own[] = {
        {"out", MOEH_OPT_STR, &out, "working directory (data, keys, logs, metrics.jsonl)"},
        {"admissions", MOEH_OPT_U32, &admissions, "admissions of the synthetic MIMIC-IV"},
        {"profile", MOEH_OPT_STR, &profile,
         "generator profile: homogeneous or heterogeneous (moeh synth --help)"},
        {"sites", MOEH_OPT_STR, &sites_spec,
         "sites as NAME:SHARE:MODALITIES,... (moeh split --help)"},
        {"data", MOEH_OPT_STR, &data_opt,
         "use this directory of site datasets (from moeh split) instead of making one"},
        {"rounds", MOEH_OPT_U32, &rounds, "federated rounds"},
        {"warmup-rounds", MOEH_OPT_U32, &warmup,
         "expert-specialisation rounds first (by default at most rounds - 1)"},
        {"min-sites", MOEH_OPT_U32, &min_sites, "quorum per round (0: all but one)"},
        {"local-epochs", MOEH_OPT_U32, &epochs, "local epochs per round"},
        {"batch-size", MOEH_OPT_U32, &batch, "local minibatch size"},
        {"lr", MOEH_OPT_F32, &lr, "local learning rate"},
        {"prox-mu", MOEH_OPT_F32, &prox_mu, "FedProx proximal weight (0: FedAvg)"},
        {"seed", MOEH_OPT_U64, &seed, "seed of data, split, model and shuffling"},
        {"secagg", MOEH_OPT_BOOL, &secagg,
         "secure aggregation: the coordinator learns only sums (default on)"},
        {"secagg-k", MOEH_OPT_STR, &secagg_k,
         "SecAgg+ neighbours per site: auto (from the number of sites), 0 (all pairs) or an "
         "even k (moeh-coordinator --secagg-k)"},
        {"upload-slots", MOEH_OPT_U32, &upload_slots,
         "training updates the sites send at a time, the others wait for a grant "
         "(moeh-coordinator --upload-slots; 0: no limit)"},
        {"unweighted", MOEH_OPT_BOOL, &unweighted,
         "FedAvg with weight 1 per site, not its sample count"},
        {"dp-clip", MOEH_OPT_F32, &dp_clip,
         "DP-FedAvg: L2 bound of each site's update (0: off; the sites log their norms)"},
        {"dp-noise", MOEH_OPT_F32, &dp_noise,
         "DP-FedAvg: noise multiplier of the aggregate (calibrated to --min-sites sites)"},
        {"dp-delta", MOEH_OPT_F32, &dp_delta, "DP-FedAvg: delta of the reported epsilon"},
        {"validate", MOEH_OPT_BOOL, &validate,
         "validate every round and keep the best round's model (--no-validate: "
         "the last round's, as before)"},
        {"select-by", MOEH_OPT_STR, &select_by,
         "model selection: auroc (best mean validation AUROC) or loss (moeh-coordinator "
         "--select-by)"},
        {"patience", MOEH_OPT_U32, &patience,
         "stop after this many rounds without validation improvement (0: never)"},
        {"insecure", MOEH_OPT_BOOL, &insecure, "run without CURVE (debugging only)"},
        {"timeout-s", MOEH_OPT_U32, &timeout_s, "stop everything after this long"},
        {"bin-dir", MOEH_OPT_STR, &bin_dir_opt,
         "where moeh-coordinator and moeh-site-agent are (default: next to moeh)"},
    };
    /* this command's options, then the model's hyperparameters (the shared fragment) */
    moeh_opt_t opts[MOEH_OPTS_MAX];
    _Static_assert(sizeof own / sizeof own[0] < MOEH_OPTS_MAX, "room for the model options");
    size_t n_opts = sizeof own / sizeof own[0];
    const size_t n_own = n_opts;
    memcpy(opts, own, sizeof own);
    if (moeh_moe_cfg_options(&model, opts, &n_opts, MOEH_OPTS_MAX) != 0) return 2;
    moeh_opts_t o = {.prog = "moeh run",
                     .synopsis = "usage: moeh run [OPTIONS]\n\nRuns a whole federation on "
                                 "this machine: writes a synthetic MIMIC-IV, extracts the cohort,\n"
                                 "splits it into hospitals with different modality mixes, makes "
                                 "CURVE keys and a site\nregistry, starts moeh-coordinator and one "
                                 "moeh-site-agent per site as separate processes\non 127.0.0.1, "
                                 "prints one line per round and a final table per task and "
                                 "modality\ncombination, and stops them all.",
                     .opts = opts,
                     .n_opts = n_opts};
    moeh_err_t err = {0};
    moeh_split_opts_t so;
    moeh_split_opts_default(&so);
    int rc = moeh_opts_parse(&o, argc, argv, &err);
    if (rc == 1) return 0;
    if (rc == 0 && strlen(out) > 1024) rc = moeh_errf(&err, -EINVAL, "--out path is too long");
    if (rc == 0) rc = moeh_split_parse_sites(sites_spec, &so, &err);
    if (rc == 0 && so.by_careunit)
        rc = moeh_errf(&err, -EINVAL, "--sites careunit is not supported by run; name the sites");
    if (rc == 0 && min_sites == 0) min_sites = so.n_sites > 1 ? (uint32_t)so.n_sites - 1 : 1;
    if (rc == 0 && rounds == 0) rc = moeh_errf(&err, -EINVAL, "--rounds must be >= 1");
    if (rc == 0) { /* the model's hyperparameters, before any data is made (the sites' shapes
                    * and the coordinator's batch size come later) */
        moeh_moe_cfg_t chk = model;
        chk.max_batch = batch;
        rc = moeh_moe_cfg_validate_hyper(&chk, &err);
    }
    if (rc == 0 && !moeh_opts_seen(&o, &warmup) &&
        warmup >= rounds) /* the default leaves a joint round */
        warmup = rounds - 1;
    if (rc == 0 && warmup > rounds)
        rc = moeh_errf(&err, -EINVAL, "--warmup-rounds %u exceeds --rounds %u", warmup, rounds);
    if (rc == 0 && min_sites > so.n_sites)
        rc =
            moeh_errf(&err, -EINVAL, "--min-sites %u exceeds the %zu sites", min_sites, so.n_sites);
    if (rc) {
        fprintf(stderr, "moeh run: %s\n", err.msg);
        moeh_opts_free(&o);
        return 2;
    }
    moeh_log_configure(MOEH_LOG_INFO, "moeh", NULL, NULL);
    char bin_dir[2048], raw_dir[1100], ds_dir[1100], sites_dir[1100], key_dir[1100], log_dir[1100],
        path[4096];
    if (bin_dir_opt)
        snprintf(bin_dir, sizeof bin_dir, "%s", bin_dir_opt);
    else if (moeh_self_dir(bin_dir, sizeof bin_dir) != 0) {
        fprintf(stderr, "moeh run: cannot find my own directory; use --bin-dir\n");
        moeh_opts_free(&o);
        return 1;
    }
    snprintf(raw_dir, sizeof raw_dir, "%s/mimic-synth", out);
    snprintf(ds_dir, sizeof ds_dir, "%s/cohort", out);
    snprintf(sites_dir, sizeof sites_dir, "%s", data_opt ? data_opt : "");
    if (!data_opt) snprintf(sites_dir, sizeof sites_dir, "%s/sites", out);
    snprintf(key_dir, sizeof key_dir, "%s/keys", out);
    snprintf(log_dir, sizeof log_dir, "%s/logs", out);

    size_t n_sites = so.n_sites;
    moeh_proc_t coord = {0}, agents[MOEH_MAX_SITES];
    memset(agents, 0, sizeof agents);
    const char *names[MOEH_MAX_SITES];
    for (size_t k = 0; k < n_sites; k++)
        names[k] = so.sites[k].name;
    int exit_code = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int64_t t0 = moeh_now_ms();
    if ((rc = moeh_mkdir_p(log_dir, &err))) goto out;

    char a_adm[16], a_seed[32], mimic[1200], note[1200], cxr[1200];
    snprintf(a_adm, sizeof a_adm, "%u", admissions);
    snprintf(a_seed, sizeof a_seed, "%llu", (unsigned long long)seed);
    if (!data_opt) {
        printf("== 1/4 synthetic MIMIC-IV: %u admissions -> %s\n", admissions, raw_dir);
        fflush(stdout);
        char *s_args[] = {"synth", "--admissions", a_adm,       "--seed",        a_seed,
                          "--out", raw_dir,        "--profile", (char *)profile, NULL};
        if (sub(moeh_sim_cmd_synth, s_args) != 0) {
            rc = moeh_errf(&err, -EIO, "synth failed");
            goto out;
        }
        printf("== 2/4 extract the cohort -> %s\n", ds_dir);
        fflush(stdout);
        snprintf(mimic, sizeof mimic, "%s/mimic", raw_dir);
        snprintf(note, sizeof note, "%s/note", raw_dir);
        snprintf(cxr, sizeof cxr, "%s/cxr", raw_dir);
        char *e_args[] = {"extract", "--mimic", mimic,   "--note", note,
                          "--cxr",   cxr,       "--out", ds_dir,   NULL};
        if (sub(moeh_sim_cmd_extract, e_args) != 0) {
            rc = moeh_errf(&err, -EIO, "extract failed");
            goto out;
        }
        printf("== 3/4 split into %zu sites -> %s\n", n_sites, sites_dir);
        fflush(stdout);
        char *p_args[] = {"split",  "--dataset", ds_dir,  "--sites", (char *)sites_spec,
                          "--seed", a_seed,      "--out", sites_dir, NULL};
        if (sub(moeh_sim_cmd_split, p_args) != 0) {
            rc = moeh_errf(&err, -EIO, "split failed");
            goto out;
        }
    }
    printf("== 4/4 federation: %zu sites, %u rounds (%u warm-up), quorum %u, %s%s", n_sites, rounds,
           warmup, min_sites, insecure ? "INSECURE" : "CURVE",
           secagg ? ", secure aggregation" : "");
    if (dp_clip > 0)
        printf(", DP-FedAvg (clip %g, noise multiplier %g over %u sites, delta %g)",
               (double)dp_clip, (double)dp_noise, min_sites, (double)dp_delta);
    printf("\n");
    if (dp_clip > 0 && min_sites > 0 &&
        moeh_dp_avg_std(dp_clip, dp_noise, min_sites) > MOEH_DP_SWAMPING_STD)
        printf("note: DP noise of standard deviation %.3g per parameter and round (Z C / m) "
               "swamps the model: it is\nnot expected to learn with %u sites (docs/security.md, "
               "\"Measured: what site-level DP costs\")\n",
               moeh_dp_avg_std(dp_clip, dp_noise, min_sites), min_sites);
    fflush(stdout);
    if (!insecure && (rc = moeh_localfed_keys(key_dir, names, n_sites, &err))) goto out;
    char a_rounds[16], a_min[16], a_wait[16], a_ep[16], a_batch[16], a_lr[32], a_reg[1200],
        a_key[1200], a_warm[16], a_mu[32], a_dpc[32], a_dpn[32], a_dpd[32], endpoint[256];
    snprintf(a_rounds, sizeof a_rounds, "%u", rounds);
    snprintf(a_min, sizeof a_min, "%u", min_sites);
    snprintf(a_wait, sizeof a_wait, "%zu", n_sites);
    snprintf(a_ep, sizeof a_ep, "%u", epochs);
    snprintf(a_batch, sizeof a_batch, "%u", batch);
    snprintf(a_lr, sizeof a_lr, "%g", (double)lr);
    snprintf(a_mu, sizeof a_mu, "%g", (double)prox_mu);
    snprintf(a_warm, sizeof a_warm, "%u", warmup);
    snprintf(a_reg, sizeof a_reg, "%s/registry.ini", key_dir);
    snprintf(a_key, sizeof a_key, "%s/coordinator.key", key_dir);
    char *cargs[104] = {"--rounds",
                        a_rounds,
                        "--min-sites",
                        a_min,
                        "--wait-sites",
                        a_wait,
                        "--local-epochs",
                        a_ep,
                        "--batch-size",
                        a_batch,
                        "--lr",
                        a_lr,
                        "--prox-mu",
                        a_mu,
                        "--warmup-rounds",
                        a_warm,
                        "--seed",
                        a_seed,
                        "--out",
                        (char *)out,
                        "--new-run", /* an earlier run in --out is moved aside, never lost */
                        "--join-window",
                        "60s",
                        "--secagg-allow-2", /* every simulated site is this machine's */
                        "--deadline-ms",
                        "600000",
                        "--heartbeat-ms",
                        "1000",
                        "--heartbeat-timeout-ms",
                        "15000"};
    int nc = 0;
    while (cargs[nc])
        nc++;
    /* every model hyperparameter, as the coordinator's option of the same name */
    char a_model[MOEH_OPTS_MAX][2][40];
    for (size_t i = n_own; i < n_opts; i++) {
        MOEH_ASSERT(nc + 2 + 26 < 104); /* room for the options below */
        snprintf(a_model[i][0], sizeof a_model[i][0], "--%s", opts[i].name);
        format_opt(&opts[i], a_model[i][1], sizeof a_model[i][1]);
        cargs[nc++] = a_model[i][0], cargs[nc++] = a_model[i][1];
    }
    cargs[nc++] = secagg ? "--secagg" : "--no-secagg";
    if (!secagg) cargs[nc++] = "--per-site-metrics"; /* in clear anyway: record them */
    if (strcmp(secagg_k, "auto")) { /* without --secagg the coordinator says why it refuses */
        cargs[nc++] = "--secagg-k";
        cargs[nc++] = (char *)secagg_k;
    }
    char a_slots[16];
    snprintf(a_slots, sizeof a_slots, "%u", upload_slots);
    cargs[nc++] = "--upload-slots";
    cargs[nc++] = a_slots;
    if (unweighted) cargs[nc++] = "--unweighted";
    if (dp_clip != 0 || dp_noise != 0) { /* the coordinator checks them */
        snprintf(a_dpc, sizeof a_dpc, "%.9g", (double)dp_clip);
        snprintf(a_dpn, sizeof a_dpn, "%.9g", (double)dp_noise);
        snprintf(a_dpd, sizeof a_dpd, "%.9g", (double)dp_delta);
        cargs[nc++] = "--dp-clip";
        cargs[nc++] = a_dpc;
        cargs[nc++] = "--dp-noise";
        cargs[nc++] = a_dpn;
        cargs[nc++] = "--dp-delta";
        cargs[nc++] = a_dpd;
    }
    char a_names[2200]; /* the model file records the sites' feature names */
    snprintf(a_names, sizeof a_names, "%s/%s", sites_dir, names[0]);
    cargs[nc++] = "--feature-names";
    cargs[nc++] = a_names;
    char a_pat[16];
    snprintf(a_pat, sizeof a_pat, "%u", patience);
    if (!validate) cargs[nc++] = "--no-validate";
    if (validate || moeh_opts_seen(&o, &select_by)) { /* the coordinator checks them */
        cargs[nc++] = "--select-by";
        cargs[nc++] = (char *)select_by;
    }
    if (validate || patience) {
        cargs[nc++] = "--patience";
        cargs[nc++] = a_pat;
    }
    if (insecure) {
        cargs[nc++] = "--insecure";
    } else {
        cargs[nc++] = "--registry";
        cargs[nc++] = a_reg;
        cargs[nc++] = "--key";
        cargs[nc++] = a_key;
    }
    cargs[nc] = NULL;
    snprintf(path, sizeof path, "%s/coordinator.log", log_dir);
    if ((rc = moeh_localfed_start_coordinator(&coord, bin_dir, cargs, NULL, path, endpoint,
                                              sizeof endpoint, &err)))
        goto out;
    printf("coordinator listening on %s (logs in %s/)\n", endpoint, log_dir);
    fflush(stdout);
    for (size_t k = 0; k < n_sites; k++) {
        char ds[2200], key[1300], pub[1300], log[1300], site_out[1300];
        snprintf(ds, sizeof ds, "%s/%s", sites_dir, names[k]);
        /* what the site keeps: the final model and its own metrics, as at a hospital */
        snprintf(site_out, sizeof site_out, "%s/site-out/%s", out, names[k]);
        snprintf(key, sizeof key, "%s/%s.key", key_dir, names[k]);
        snprintf(pub, sizeof pub, "%s/coordinator.pub", key_dir);
        snprintf(log, sizeof log, "%s/%s.log", log_dir, names[k]);
        if ((rc = moeh_localfed_start_agent(&agents[k], bin_dir, endpoint, names[k], ds, site_out,
                                            insecure ? NULL : key, pub, NULL, log, &err)))
            goto out;
    }
    int64_t deadline = moeh_now_ms() + (int64_t)timeout_s * 1000;
    while (!g_stop && moeh_proc_wait(&coord, 200) == -ETIMEDOUT) {
        if (moeh_now_ms() > deadline) {
            rc = moeh_errf(&err, -ETIMEDOUT, "the run took longer than %u s", timeout_s);
            goto out;
        }
    }
    if (g_stop) {
        rc = moeh_errf(&err, -EINTR, "interrupted");
        goto out;
    }
    int cc = moeh_proc_exit_code(&coord);
    if (cc != 0) {
        rc = moeh_errf(&err, -EIO, "the coordinator failed (exit code %d); see %s/coordinator.log",
                       cc, log_dir);
        goto out;
    }
    /* The coordinator said bye to every site; they leave on their own. */
    int bad_agents = 0;
    for (size_t k = 0; k < n_sites; k++) {
        if (moeh_proc_wait(&agents[k], 10000) == -ETIMEDOUT) {
            moeh_proc_stop(&agents[k], 2000);
            bad_agents++;
        } else if (moeh_proc_exit_code(&agents[k]) != 0) {
            bad_agents++;
        }
    }
    if (bad_agents)
        fprintf(stderr, "moeh run: %d agents did not end cleanly; see %s/*.log\n", bad_agents,
                log_dir);
    int report_rc = moeh_sim_report(out, NULL);
    if (report_rc != 0)
        fprintf(stderr, "moeh run: the report was not written (the run itself is complete)\n");
    printf("done in %.0f s: metrics in %s/metrics.jsonl, model in %s/model.npy%s%s%s\n",
           (double)(moeh_now_ms() - t0) / 1000.0, out, out, report_rc ? "" : ", report in ",
           report_rc ? "" : out, report_rc ? "" : "/report.html");
    printf("model file (names, shapes, normalisation; `moeh predict --model`): "
           "%s/model.safetensors\n",
           out);
    if (!bad_agents) /* each agent exits 0 only holding it (docs/architecture.md) */
        printf("every site holds that model and its own metrics: %s/site-out/SITE/"
               "{model.safetensors,local_metrics.jsonl}\n",
               out);
    exit_code = bad_agents ? 1 : 0;
out:
    moeh_proc_stop(&coord, 5000);
    for (size_t k = 0; k < n_sites; k++)
        moeh_proc_stop(&agents[k], 5000);
    if (rc) fprintf(stderr, "moeh run: %s\n", err.msg);
    moeh_opts_free(&o);
    return rc ? (rc == -EINTR ? 130 : 1) : exit_code;
}
