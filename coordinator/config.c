/* config.c - the coordinator's configuration: defaults and the checks of a whole
 * configuration (coord_internal.h). */
#include "coord_internal.h"

#include "moeh_wire.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void moeh_coord_cfg_defaults(moeh_coord_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->bind = "tcp://*:7400";
    c->rounds = 5;
    c->min_sites = 3; /* secure aggregation needs 3 (moeh-coordinator: 2 with --no-secagg) */
    c->wait_sites = 0;
    c->start_timeout_ms = 6 * 3600 * 1000; /* --join-window 6h: hospitals join over hours */
    c->phase_deadline_ms = 60000;
    c->max_retries = 2;
    c->outage_budget_ms = 3600000; /* an hour: a hospital network's planned outage */
    c->heartbeat_ms = 1000;
    c->heartbeat_timeout_ms = 5000;
    c->upload_slots = 2;
    c->conn_budget_mb = 64; /* 12x the default model's update (5 MB) */
    c->secagg = 1;          /* secure by default: the coordinator learns only sums */
    c->secagg_k = MOEH_SECAGG_K_AUTO;
    c->secagg_plan = (moeh_secagg_plan_cfg_t)MOEH_SECAGG_PLAN_DEFAULT;
    c->model = moeh_moe_defaults(0, 0); /* data shapes: from the sites (create_model) */
    c->warmup_rounds = 3;
    c->prox_mu = 0.0f;
    c->strategy = "fedavg";
    c->server_lr = 0.01f;
    c->server_beta1 = 0.9f;
    c->server_beta2 = 0.99f;
    c->server_tau = 1e-3f;
    c->trim = 0.2f;
    c->count_cap = 10.0f;    /* honest hospitals rarely differ by more than 10x from the median */
    c->stats_max_abs = 1e6f; /* raw clinical values: docs/data.md plausible ranges */
    c->dp_delta = 1e-5f; /* far below 1 / (number of sites) for any consortium: docs/security.md */
    c->local_epochs = 1;
    c->batch_size = 32;
    c->lr = 1e-3f;
    c->weight_decay = 1e-4f;
    c->clip = 5.0f;
    c->delta_clip = 1.0f;
    c->eval_bins = 1000;
    c->validate = 1;          /* select the best round by validation (select.c) */
    c->out_dir = NULL;        /* required: a run never writes into wherever it was started */
    c->final_wait_ms = 60000; /* sites away at the end: one agent backoff (30 s) and more */
    c->ready_fd = -1;
}

/* --data-shape STATIC,VARS,HOURS,IMAGE: four decimal integers within the limits a site may
 * declare (the same as coordinator.c's when it builds the pinned model, and checkpoint.c's):
 * 0 or -EINVAL naming the option, its value, the field and what was expected. */
static int check_data_shape(const char *s, moeh_err_t *err)
{
    static const char *const name[4] = {"STATIC", "VARS", "HOURS", "IMAGE"};
    static const unsigned long lo[4] = {0, 0, 1, 0}, hi[4] = {1ul << 20, 4096, 1000, 1024};
    const char *p = s;
    for (int k = 0; k < 4; k++) {
        size_t digits = strspn(p, "0123456789");
        char sep = p[digits];
        if (digits == 0 || digits > 9 || sep != (k < 3 ? ',' : '\0'))
            return moeh_errf(err, -EINVAL,
                             "--data-shape '%s': expected STATIC,VARS,HOURS,IMAGE, four "
                             "non-negative integers separated by commas (e.g. 35,33,48,64)",
                             s);
        unsigned long v = strtoul(p, NULL, 10);
        if (v < lo[k] || v > hi[k])
            return moeh_errf(err, -EINVAL,
                             "--data-shape '%s': %s %lu: expected %lu..%lu (STATIC,VARS,HOURS,"
                             "IMAGE, e.g. 35,33,48,64)",
                             s, name[k], v, lo[k], hi[k]);
        p += digits + 1;
    }
    return 0;
}

int moeh_coord_cfg_check(const moeh_coord_cfg_t *cfg, moeh_server_opt_t *sopt, moeh_err_t *err)
{
    if (!cfg->out_dir || !cfg->out_dir[0])
        return moeh_errf(err, -EINVAL, "--out DIR is required (the run's directory)");
    /* one message per option, naming it and its value */
    if (cfg->rounds == 0) return moeh_errf(err, -EINVAL, "--rounds 0: expected at least 1");
    if (cfg->min_sites == 0)
        return moeh_errf(err, -EINVAL, "--min-sites 0: expected at least 1 (the quorum)");
    if (cfg->batch_size == 0) return moeh_errf(err, -EINVAL, "--batch-size 0: expected at least 1");
    if (cfg->model.n_tasks != 3)
        return moeh_errf(err, -EINVAL, "model: %u tasks, expected 3", (unsigned)cfg->model.n_tasks);
    if (cfg->model.arch > 6)
        return moeh_errf(err, -EINVAL, "--arch %u: expected 0..6", (unsigned)cfg->model.arch);
    if (!(cfg->prox_mu >= 0))
        return moeh_errf(err, -EINVAL, "--prox-mu %g: expected >= 0", (double)cfg->prox_mu);
    if (cfg->eval_bins < 2 || cfg->eval_bins > 100000)
        return moeh_errf(err, -EINVAL, "--eval-bins %u: expected 2..100000", cfg->eval_bins);
    if (cfg->heartbeat_ms < 10)
        return moeh_errf(err, -EINVAL, "--heartbeat-ms %u: expected at least 10",
                         cfg->heartbeat_ms);
    if (!(cfg->delta_clip > 0))
        return moeh_errf(err, -EINVAL, "--delta-clip %g: expected > 0", (double)cfg->delta_clip);
    if (cfg->data_shape && check_data_shape(cfg->data_shape, err) != 0) return -EINVAL;
    *sopt = (moeh_server_opt_t){.lr = cfg->server_lr,
                                .beta1 = cfg->server_beta1,
                                .beta2 = cfg->server_beta2,
                                .tau = cfg->server_tau};
    if (moeh_strategy_parse(cfg->strategy, &sopt->kind) != 0)
        return moeh_errf(err, -EINVAL,
                         "--strategy '%s': expected fedavg, fedadam, fedyogi, trimmed or median",
                         cfg->strategy);
    if (cfg->secagg && moeh_strategy_per_site(sopt->kind))
        return moeh_errf(err, -EINVAL,
                         "--secagg and --strategy %s exclude each other: the "
                         "%s needs every site's update, secure "
                         "aggregation reveals only their sum (--no-secagg turns it off)",
                         cfg->strategy,
                         sopt->kind == MOEH_STRATEGY_MEDIAN ? "median" : "trimmed mean");
    if (!(cfg->count_cap >= 0 && isfinite(cfg->count_cap)) ||
        !(cfg->stats_max_abs >= 0 && isfinite(cfg->stats_max_abs)) ||
        !(cfg->norm_bound >= 0 && isfinite(cfg->norm_bound)))
        return moeh_errf(err, -EINVAL,
                         "--count-cap, --stats-max-abs and --norm-bound: expected finite numbers "
                         ">= 0 (0: off)");
    if (cfg->norm_bound > 0 && cfg->secagg)
        return moeh_errf(err, -EINVAL,
                         "--norm-bound needs each site's update: not with --secagg, which "
                         "reveals only their sum");
    if (cfg->secagg_k != MOEH_SECAGG_K_AUTO && cfg->secagg_k && !cfg->secagg)
        return moeh_errf(err, -EINVAL, "--secagg-k %u needs --secagg", cfg->secagg_k);
    const moeh_secagg_plan_cfg_t *pl = &cfg->secagg_plan;
    if (!(pl->dropout >= 0 && pl->dropout < 0.5) || !(pl->corrupt >= 0 && pl->corrupt < 0.5) ||
        !(pl->sigma > 0 && isfinite(pl->sigma)) || !(pl->eta > 0 && isfinite(pl->eta)))
        return moeh_errf(err, -EINVAL,
                         "--secagg-dropout %g / --secagg-collude %g: expected fractions in "
                         "[0, 0.5) (the plan of --secagg-k auto; docs/secagg.md)",
                         pl->dropout, pl->corrupt);
    if (cfg->secagg_k != MOEH_SECAGG_K_AUTO &&
        (cfg->secagg_k % 2 != 0 || cfg->secagg_k >= MOEH_WIRE_SECAGG_MAX))
        return moeh_errf(err, -EINVAL,
                         "--secagg-k %u: expected 0 (every pair masks) or an even number of "
                         "neighbours in 2..%u (SecAgg+: the threshold is then k/2 + 1 of each "
                         "site's k + 1)",
                         cfg->secagg_k, MOEH_WIRE_SECAGG_MAX - 2);
    if (sopt->kind == MOEH_STRATEGY_TRIMMED && !(cfg->trim >= 0 && cfg->trim < 0.5))
        return moeh_errf(err, -EINVAL, "--trim %g: expected a fraction in [0, 0.5)",
                         (double)cfg->trim);
    if ((sopt->kind == MOEH_STRATEGY_FEDADAM || sopt->kind == MOEH_STRATEGY_FEDYOGI) &&
        !(cfg->server_lr > 0 && cfg->server_beta1 >= 0 && cfg->server_beta1 < 1 &&
          cfg->server_beta2 >= 0 && cfg->server_beta2 < 1 && cfg->server_tau > 0))
        return moeh_errf(err, -EINVAL,
                         "server optimiser: lr > 0, betas in [0, 1) and tau > 0 "
                         "expected");
    if (!(isfinite(cfg->dp_clip) && cfg->dp_clip >= 0) ||
        !(isfinite(cfg->dp_noise) && cfg->dp_noise >= 0 &&
          cfg->dp_noise <= MOEH_WIRE_DP_MAX_NOISE) ||
        !(cfg->dp_delta > 0 && cfg->dp_delta < 1))
        return moeh_errf(err, -EINVAL,
                         "--dp-clip >= 0, --dp-noise in [0, %g] and --dp-delta in (0, 1) "
                         "expected",
                         MOEH_WIRE_DP_MAX_NOISE);
    if (!(cfg->dp_clip > 0) && cfg->dp_noise > 0)
        return moeh_errf(err, -EINVAL,
                         "--dp-noise needs --dp-clip: the noise is calibrated to the clip");
    if (cfg->dp_clip > 0) {
        if (moeh_strategy_per_site(sopt->kind) || cfg->norm_bound > 0)
            return moeh_errf(err, -EINVAL,
                             "--dp-clip and --strategy %s%s exclude each other: the "
                             "noise is calibrated for the sum of the sites' updates (each "
                             "clipped by the site), which these do not use",
                             cfg->strategy, cfg->norm_bound > 0 ? " / --norm-bound" : "");
        if (cfg->min_sites > MOEH_WIRE_DP_MAX_SITES)
            return moeh_errf(err, -EINVAL, "--min-sites %u: at most %u with DP", cfg->min_sites,
                             MOEH_WIRE_DP_MAX_SITES);
    }
    if (cfg->secagg && cfg->min_sites < 3 && !cfg->secagg_allow_2)
        return moeh_errf(err, -EINVAL,
                         "secure aggregation with --min-sites %u: a round could close with %u "
                         "site%s, and with 2 sites each one can subtract its own update from "
                         "the sum and so learn the other's exactly; use --min-sites 3 (with at "
                         "least 3 sites), or accept this with --secagg-allow-2, or run without "
                         "it (--no-secagg)",
                         cfg->min_sites, cfg->min_sites, cfg->min_sites == 1 ? "" : "s");
    return 0;
}

int moeh_coord_parse_secagg_k(const char *s, uint32_t *k, moeh_err_t *err)
{
    if (!strcmp(s, "auto")) {
        *k = MOEH_SECAGG_K_AUTO;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v >= MOEH_WIRE_SECAGG_MAX || s[0] == '-')
        return moeh_errf(err, -EINVAL,
                         "--secagg-k '%s': expected auto, 0 (every pair masks) or an even "
                         "number of neighbours in 2..%u",
                         s, MOEH_WIRE_SECAGG_MAX - 2);
    *k = (uint32_t)v;
    return 0;
}
