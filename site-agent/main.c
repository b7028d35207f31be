/* main.c - moeh-site-agent: options, signals, then moeh_agent_run(). */
#include "agent.h"

#include "moeh_opts.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

int main(int argc, char **argv)
{
    moeh_agent_cfg_t cfg;
    moeh_agent_cfg_defaults(&cfg);
    const char *log_level = "info";
    const moeh_opt_t opts[] = {
        {"connect", MOEH_OPT_STR, &cfg.connect, "the coordinator's endpoint"},
        {"site-id", MOEH_OPT_STR, &cfg.site_id, "this site's id, as in the coordinator registry"},
        {"dataset", MOEH_OPT_STR, &cfg.dataset_dir, "this site's dataset directory"},
        {"key", MOEH_OPT_STR, &cfg.key_path, "this site's key file (moeh-keygen)"},
        {"server-key", MOEH_OPT_STR, &cfg.server_key, "the coordinator's public key file"},
        {"insecure", MOEH_OPT_BOOL, &cfg.insecure, "no encryption (tests only)"},
        {"silence-timeout-ms", MOEH_OPT_U32, &cfg.silence_timeout_ms,
         "reconnect when the coordinator is silent this long"},
        {"backoff-max-ms", MOEH_OPT_U32, &cfg.backoff_max_ms, "longest wait between reconnects"},
        {"give-up-ms", MOEH_OPT_U32, &cfg.give_up_ms,
         "fail if not admitted within this long (0: keep trying)"},
        {"fault-kill-round", MOEH_OPT_U32, &cfg.fault_kill_round,
         "TESTS ONLY: SIGKILL this process when round N starts (0: off)"},
        {"log-level", MOEH_OPT_STR, &log_level, "debug, info, warn or error"},
    };
    moeh_opts_t o = {.prog = "moeh-site-agent",
                     .synopsis = "usage: moeh-site-agent --site-id ID --dataset DIR [OPTIONS]\n\n"
                                 "Runs inside a hospital: trains the federation's model on this "
                                 "site's data and sends\nonly encrypted model updates and "
                                 "aggregate evaluation histograms.",
                     .opts = opts,
                     .n_opts = sizeof opts / sizeof opts[0]};
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&o, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "moeh-site-agent: %s\n", err.msg);
        moeh_opts_free(&o);
        return 2;
    }
    moeh_log_level_t lvl;
    if (moeh_log_parse_level(log_level, &lvl)) {
        fprintf(stderr, "moeh-site-agent: --log-level: '%s' is not debug, info, warn or error\n",
                log_level);
        moeh_opts_free(&o);
        return 2;
    }
    char prefix[80];
    snprintf(prefix, sizeof prefix, "agent[%s]", cfg.site_id ? cfg.site_id : "?");
    moeh_log_configure(lvl, prefix, NULL, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = moeh_agent_run(&cfg, &g_stop, &err);
    moeh_opts_free(&o);
    if (rc) {
        MOEH_ERROR("%s", err.msg);
        return rc == -EINTR ? 130 : rc == -EACCES ? 3 : 1;
    }
    return 0;
}
