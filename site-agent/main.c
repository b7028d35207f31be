/* main.c - moeh-site-agent: options, signals, then moeh_agent_run(). */
#include "moeh_agent.h"

#include "moeh_agent_testing.h" /* the --fault-kill-* options of the multi-process tests */
#include "moeh_opts.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        moeh_log_request_reopen(); /* logrotate moved --log-file away */
    else
        g_stop = 1;
}

int main(int argc, char **argv)
{
    moeh_agent_cfg_t cfg;
    moeh_agent_cfg_defaults(&cfg);
    moeh_agent_faults_t faults = {0};
    const char *log_level = "info", *kill_at = NULL, *log_file = NULL;
    const moeh_opt_t opts[] = {
        {"connect", MOEH_OPT_STR, &cfg.connect, "the coordinator's endpoint (tcp://HOST:PORT)"},
        {"site-id", MOEH_OPT_STR, &cfg.site_id, "this site's id, as in the coordinator registry"},
        {"dataset", MOEH_OPT_STR, &cfg.dataset_dir, "this site's dataset directory"},
        {"out", MOEH_OPT_STR, &cfg.out_dir,
         "where this site keeps the run's final model (model.safetensors) and its own "
         "per-round metrics (local_metrics.jsonl, never sent)"},
        {"key", MOEH_OPT_STR, &cfg.key_path, "this site's key file (moeh-keygen)"},
        {"server-key", MOEH_OPT_STR, &cfg.server_key, "the coordinator's public key file"},
        {"insecure", MOEH_OPT_BOOL, &cfg.insecure, "no encryption (tests only)"},
        {"silence-timeout-ms", MOEH_OPT_U32, &cfg.silence_timeout_ms,
         "reconnect when the coordinator is silent this long"},
        {"backoff-max-ms", MOEH_OPT_U32, &cfg.backoff_max_ms, "longest wait between reconnects"},
        {"give-up-ms", MOEH_OPT_U32, &cfg.give_up_ms,
         "fail if not admitted within this long (0: keep trying)"},
        {"fault-kill-round", MOEH_OPT_U32, &faults.kill_round,
         "TESTS ONLY: SIGKILL this process when round N starts (0: off)"},
        {"fault-kill-work-round", MOEH_OPT_U32, &faults.kill_work_round,
         "TESTS ONLY: SIGKILL this process when its training of round N starts (0: off)"},
        {"fault-kill-secagg-round", MOEH_OPT_U32, &faults.kill_secagg_round,
         "TESTS ONLY: SIGKILL this process in round N's secure aggregation, after its shares "
         "went out and before its masked update (0: off)"},
        {"fault-kill-upload-round", MOEH_OPT_U32, &faults.kill_upload_round,
         "TESTS ONLY: SIGKILL this process on receiving round N's upload grant, before its "
         "update (0: off)"},
        {"fault-kill-final", MOEH_OPT_BOOL, &faults.kill_final,
         "TESTS ONLY: SIGKILL this process on receiving the final model, before storing it"},
        {"fault-kill-secagg-at", MOEH_OPT_STR, &kill_at,
         "TESTS ONLY: the same in the secure aggregation of 'stats', 'eval:N' or 'train:N'"},
        {"log-level", MOEH_OPT_STR, &log_level, "debug, info, warn or error"},
        {"log-file", MOEH_OPT_STR, &log_file,
         "append the log to this file instead of stderr (reopened on SIGHUP, for logrotate)"},
    };
    static const void *required[4];
    required[0] = &cfg.site_id, required[1] = &cfg.dataset_dir, required[2] = &cfg.out_dir;
    moeh_opts_t o = {.prog = "moeh-site-agent",
                     .required = required,
                     .synopsis =
                         "usage: moeh-site-agent --site-id ID --dataset DIR --out DIR [OPTIONS]\n\n"
                         "Runs inside a hospital: trains the federation's model on this "
                         "site's data and sends\nonly encrypted model updates and "
                         "aggregate evaluation histograms.",
                     .opts = opts,
                     .n_opts = sizeof opts / sizeof opts[0]};
    /* the log prefix names the site; the options are parsed first */
    char prefix[80];
    int rc = moeh_opts_main(&o, argc, argv, &log_level, "agent");
    if (rc >= 0) return rc;
    moeh_err_t uerr = {0};
    if (moeh_opts_check_endpoint("connect", cfg.connect, "COORDINATOR-HOST", &uerr) != 0 ||
        (!cfg.insecure && (!cfg.key_path || !cfg.server_key) &&
         moeh_errf(&uerr, -EINVAL,
                   "--key FILE (this site's key) and --server-key FILE (the coordinator's public "
                   "key) are required (or --insecure, for tests)"))) {
        fprintf(stderr, "moeh-site-agent: %s\n", uerr.msg);
        moeh_opts_free(&o);
        return 2;
    }
    if (kill_at && moeh_agent_faults_parse_secagg_at(&faults, kill_at) != 0) {
        fprintf(stderr,
                "moeh-site-agent: --fault-kill-secagg-at '%s': expected stats, eval:N or "
                "train:N (N >= 1)\n",
                kill_at);
        moeh_opts_free(&o);
        return MOEH_EXIT_USAGE;
    }
    /* usage errors (exit 2) before anything runs: required options and the endpoint's form */
    const char *missing = !cfg.site_id       ? "--site-id"
                          : !cfg.dataset_dir ? "--dataset"
                          : !cfg.out_dir     ? "--out"
                          : cfg.insecure     ? NULL
                          : !cfg.key_path    ? "--key"
                          : !cfg.server_key  ? "--server-key"
                                             : NULL;
    if (missing || !strstr(cfg.connect, "://")) {
        if (missing)
            fprintf(stderr, "moeh-site-agent: %s is required (see moeh-site-agent --help)\n",
                    missing);
        else
            fprintf(stderr,
                    "moeh-site-agent: --connect '%s': expected a ZeroMQ endpoint such as "
                    "tcp://coordinator.example.org:7400\n",
                    cfg.connect);
        moeh_opts_free(&o);
        return 2;
    }
    snprintf(prefix, sizeof prefix, "agent[%s]", cfg.site_id ? cfg.site_id : "?");
    moeh_log_configure(moeh_log_level(), prefix, NULL, NULL);
    moeh_err_t err = {0};
    if (log_file && (rc = moeh_log_open_file(log_file, &err)) != 0) {
        fprintf(stderr, "moeh-site-agent: %s\n", err.msg);
        moeh_opts_free(&o);
        return MOEH_EXIT_USAGE;
    }
    moeh_install_signals(on_signal, 1); /* SIGHUP reopens --log-file */
    rc = moeh_agent_run_faulty(&cfg, &faults, &g_stop, &err);
    moeh_opts_free(&o);
    if (rc) {
        MOEH_ERROR("%s", err.msg);
        return rc == -EINTR       ? MOEH_EXIT_INTERRUPTED
               : rc == -EACCES    ? MOEH_EXIT_REFUSED
               : rc == -ETIMEDOUT ? MOEH_EXIT_GAVE_UP
               : rc == -ENOKEY    ? MOEH_EXIT_USAGE /* a key file that cannot serve */
                                  : MOEH_EXIT_ERROR;
    }
    return MOEH_EXIT_FINISHED; /* only after the coordinator said the run finished */
}
