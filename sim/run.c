/* run.c - `moeh-sim run`: a whole federation on this machine, as real processes over
 * loopback with CURVE: data -> keys -> coordinator -> agents -> round table -> clean exit. */
#include "localfed.h"
#include "moeh_opts.h"
#include "sim_commands.h"
#include "toy.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

int moeh_sim_cmd_run(int argc, char **argv)
{
    const char *out = "moeh-run", *bin_dir_opt = NULL;
    uint32_t sites = 3, rounds = 10, samples = 3000, features = 16, min_sites = 2, epochs = 2;
    uint32_t hidden = 32, batch = 64, timeout_s = 600;
    float lr = 3e-3f;
    uint64_t seed = 1;
    int insecure = 0;
    const moeh_opt_t opts[] = {
        {"out", MOEH_OPT_STR, &out, "working directory (data, keys, logs, metrics.jsonl)"},
        {"sites", MOEH_OPT_U32, &sites, "number of simulated hospitals"},
        {"rounds", MOEH_OPT_U32, &rounds, "federated rounds"},
        {"samples", MOEH_OPT_U32, &samples, "synthetic samples in all"},
        {"features", MOEH_OPT_U32, &features, "features per sample"},
        {"min-sites", MOEH_OPT_U32, &min_sites, "quorum per round"},
        {"local-epochs", MOEH_OPT_U32, &epochs, "local epochs per round"},
        {"hidden", MOEH_OPT_U32, &hidden, "hidden width of the model"},
        {"batch-size", MOEH_OPT_U32, &batch, "local minibatch size"},
        {"lr", MOEH_OPT_F32, &lr, "local learning rate"},
        {"seed", MOEH_OPT_U64, &seed, "seed of data, model and shuffling"},
        {"insecure", MOEH_OPT_BOOL, &insecure, "run without CURVE (debugging only)"},
        {"timeout-s", MOEH_OPT_U32, &timeout_s, "stop everything after this long"},
        {"bin-dir", MOEH_OPT_STR, &bin_dir_opt,
         "where moeh-coordinator and moeh-site-agent are (default: next to moeh-sim)"},
    };
    moeh_opts_t o = {.prog = "moeh-sim run",
                     .synopsis = "usage: moeh-sim run [OPTIONS]\n\nRuns a whole federation on "
                                 "this machine: writes a synthetic cohort split into sites,\n"
                                 "makes CURVE keys and a site registry, starts moeh-coordinator "
                                 "and one moeh-site-agent\nper site as separate processes on "
                                 "127.0.0.1, prints one line per round and stops them all.",
                     .opts = opts,
                     .n_opts = sizeof opts / sizeof opts[0]};
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&o, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc == 0 && (sites == 0 || sites > 64 || min_sites == 0 || min_sites > sites))
        rc = moeh_errf(&err, -EINVAL, "need 1 <= --min-sites <= --sites <= 64");
    if (rc) {
        fprintf(stderr, "moeh-sim run: %s\n", err.msg);
        moeh_opts_free(&o);
        return 2;
    }
    moeh_log_configure(MOEH_LOG_INFO, "moeh-sim", NULL, NULL);
    char bin_dir[2048], data_dir[1100], key_dir[1100], log_dir[1100], path[4096];
    if (strlen(out) > 1024) {
        fprintf(stderr, "moeh-sim run: --out path is too long\n");
        moeh_opts_free(&o);
        return 2;
    }
    if (bin_dir_opt)
        snprintf(bin_dir, sizeof bin_dir, "%s", bin_dir_opt);
    else if (moeh_self_dir(bin_dir, sizeof bin_dir) != 0) {
        fprintf(stderr, "moeh-sim run: cannot find my own directory; use --bin-dir\n");
        moeh_opts_free(&o);
        return 1;
    }
    snprintf(data_dir, sizeof data_dir, "%s/data", out);
    snprintf(key_dir, sizeof key_dir, "%s/keys", out);
    snprintf(log_dir, sizeof log_dir, "%s/logs", out);

    moeh_proc_t coord = {0}, agents[64];
    memset(agents, 0, sizeof agents);
    int exit_code = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    printf("moeh-sim run: %u sites, %u rounds, %u synthetic samples; working in %s/\n", sites,
           rounds, samples, out);
    moeh_toy_cfg_t tc = {.n_samples = samples, .n_features = features, .n_sites = sites,
                         .seed = seed};
    if ((rc = moeh_mkdir_p(log_dir, &err)) || (rc = moeh_toy_generate(&tc, data_dir, &err)) ||
        (rc = (insecure ? 0 : moeh_localfed_keys(key_dir, sites, &err))))
        goto out;
    char a_rounds[16], a_min[16], a_wait[16], a_ep[16], a_hidden[16], a_batch[16], a_lr[32],
        a_seed[32], a_reg[4096], a_key[4096], endpoint[256];
    snprintf(a_rounds, sizeof a_rounds, "%u", rounds);
    snprintf(a_min, sizeof a_min, "%u", min_sites);
    snprintf(a_wait, sizeof a_wait, "%u", sites);
    snprintf(a_ep, sizeof a_ep, "%u", epochs);
    snprintf(a_hidden, sizeof a_hidden, "%u", hidden);
    snprintf(a_batch, sizeof a_batch, "%u", batch);
    snprintf(a_lr, sizeof a_lr, "%g", (double)lr);
    snprintf(a_seed, sizeof a_seed, "%llu", (unsigned long long)seed);
    snprintf(a_reg, sizeof a_reg, "%s/registry.ini", key_dir);
    snprintf(a_key, sizeof a_key, "%s/coordinator.key", key_dir);
    char *cargs[40] = {"--rounds", a_rounds, "--min-sites", a_min, "--wait-sites", a_wait,
                       "--local-epochs", a_ep, "--hidden", a_hidden, "--batch-size", a_batch,
                       "--lr", a_lr, "--seed", a_seed, "--out", (char *)out,
                       "--start-timeout-ms", "30000", "--deadline-ms", "60000",
                       "--heartbeat-ms", "500", "--heartbeat-timeout-ms", "5000"};
    int nc = 26;
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
    for (uint32_t k = 0; k < sites; k++) {
        char id[32], ds[4096], key[4096], pub[4096], log[4096];
        snprintf(id, sizeof id, "site-%u", k + 1);
        snprintf(ds, sizeof ds, "%s/%s", data_dir, id);
        snprintf(key, sizeof key, "%s/%s.key", key_dir, id);
        snprintf(pub, sizeof pub, "%s/coordinator.pub", key_dir);
        snprintf(log, sizeof log, "%s/%s.log", log_dir, id);
        if ((rc = moeh_localfed_start_agent(&agents[k], bin_dir, endpoint, id, ds,
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
    /* The coordinator said bye to every site; give them a moment to leave on their own. */
    int bad_agents = 0;
    for (uint32_t k = 0; k < sites; k++) {
        if (moeh_proc_wait(&agents[k], 10000) == -ETIMEDOUT) {
            moeh_proc_stop(&agents[k], 2000);
            bad_agents++;
        } else if (moeh_proc_exit_code(&agents[k]) != 0) {
            bad_agents++;
        }
    }
    if (bad_agents)
        fprintf(stderr, "moeh-sim run: %d agents did not end cleanly; see %s/site-*.log\n",
                bad_agents, log_dir);
    printf("done: metrics in %s/metrics.jsonl, model in %s/model.npy\n", out, out);
    exit_code = bad_agents ? 1 : 0;
out:
    moeh_proc_stop(&coord, 5000);
    for (uint32_t k = 0; k < sites; k++)
        moeh_proc_stop(&agents[k], 5000);
    if (rc)
        fprintf(stderr, "moeh-sim run: %s\n", err.msg);
    moeh_opts_free(&o);
    return rc ? (rc == -EINTR ? 130 : 1) : exit_code;
}
