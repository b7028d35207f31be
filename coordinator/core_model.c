/* core_model.c - the coordinator core's model (coord_internal.h): built once the sites' data
 * shapes are known, with every buffer sized from it (the wire limits, the sums of each phase,
 * the evaluation histograms, the server optimiser's moments), and the read-only views of it
 * that moeh_coord_core.h gives the tests. */
#include "coord_internal.h"

#include "moeh_dp.h"
#include "moeh_quant.h"
#include "moeh_secsum.h"

#include <math.h>
#include <stdlib.h>

/* Builds the model from the configuration and the sites' data shapes. */
int coord_build_model(coord_t *c, uint32_t n_static, uint32_t n_vars, uint32_t n_steps,
                      uint32_t img_size, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    moeh_moe_cfg_t mc = cfg->model;
    mc.n_static = n_static, mc.n_vars = n_vars, mc.n_steps = n_steps, mc.img_size = img_size;
    if (c->vec_dim[0]) mc.note_buckets = 0, mc.note_dim = c->vec_dim[0]; /* note vectors */
    if (c->vec_dim[1]) mc.img_size = 0, mc.img_dim = c->vec_dim[1];      /* X-ray vectors */
    mc.max_batch = cfg->batch_size;
    moeh_err_t e2 = {0};
    int rc = moeh_moe_create(&mc, &c->model, &e2);
    if (rc) return moeh_errf(err, rc, "cannot create the model: %s", e2.msg);
    c->mcfg = mc;
    c->p = moeh_moe_params(c->model);
    c->spec_hash = moeh_params_spec_hash(c->p);
    double dp_std = cfg->dp_clip > 0 && cfg->min_sites
                        ? moeh_dp_avg_std(cfg->dp_clip, cfg->dp_noise, cfg->min_sites)
                        : 0;
    if (dp_std > MOEH_DP_SWAMPING_STD)
        MOEH_WARN("DP: each round's averaged update carries noise of standard deviation about %.3g "
                  "on every parameter (Z C / m: %g x %g / %u sites), more than the scale of a "
                  "trained weight (~0.1): the model is not expected to learn. DP-FedAvg needs "
                  "of the order of Z sqrt(d) = %.0f sites per round for these %zu parameters; "
                  "docs/security.md, \"Measured: what site-level DP costs\"",
                  dp_std, (double)cfg->dp_noise, (double)cfg->dp_clip, cfg->min_sites,
                  cfg->dp_noise * sqrt((double)c->p->n), c->p->n);
    c->n_norm = n_static + n_vars;
    /* replaced when a training phase opens; any value the decoder accepts before */
    c->quant_scale = moeh_quant_scale(c->quant_range, 2.0);
    c->n_experts = (uint32_t)moeh_moe_n_experts(c->model);
    c->lim = (moeh_wire_limits_t){.n_params = c->p->n,
                                  .n_groups = (uint32_t)c->p->n_groups,
                                  .n_tasks = (uint32_t)mc.n_tasks,
                                  .eval_bins = cfg->eval_bins,
                                  .n_norm = c->n_norm,
                                  .n_experts = c->n_experts};
    if ((rc = moeh_fedavg_init(&c->agg, c->p->n, c->p->n_groups, c->p->group_off, c->p->group_len)))
        return moeh_errf(err, rc, "cannot allocate the aggregation buffer");
    c->hist = calloc((size_t)MOEH_N_SLICES * mc.n_tasks * 2 * cfg->eval_bins, sizeof(uint64_t));
    c->norm = calloc(2 * (size_t)c->n_norm + 1, sizeof(float));
    c->stats_sum = calloc(3 * (size_t)c->n_norm + 1, sizeof(double));
    c->gate_sum = calloc((size_t)MOEH_N_COMBOS * c->n_experts, sizeof(double));
    size_t lt = moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__TRAIN),
           ls = moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__STATS),
           le = moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__VALIDATE); /* >= EVALUATE */
    c->vsum_cap = lt > ls ? (lt > le ? lt : le) : (ls > le ? ls : le);
    c->vsum = calloc(c->vsum_cap, sizeof(uint32_t));
    c->vtmp = calloc(ls + moeh_secsum_eval_values_len(moeh_wire_secsum_dims(&c->lim)) +
                         MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS,
                     sizeof(uint32_t));
    if (!c->hist || !c->norm || !c->stats_sum || !c->gate_sum || !c->vsum || !c->vtmp ||
        coord_select_init(c) != 0)
        return moeh_errf(err, -ENOMEM, "out of memory");
    if (c->sopt.kind == MOEH_STRATEGY_FEDADAM || c->sopt.kind == MOEH_STRATEGY_FEDYOGI) {
        c->delta = calloc(c->p->n, sizeof(float));
        c->sm = calloc(c->p->n, sizeof(float));
        c->sv = calloc(c->p->n, sizeof(float));
        if (!c->delta || !c->sm || !c->sv)
            return moeh_errf(err, -ENOMEM, "out of memory for the server optimiser");
    }
    for (uint32_t i = 0; i < c->n_norm; i++)
        c->norm[c->n_norm + i] = 1.0f;
    MOEH_INFO("model: %s, %zu parameters in %zu groups (%u static features, %u hourly "
              "variables x %u h, %u x %u images)",
              mc.arch == MOEH_ARCH_MOE ? "MoE-Health" : "baseline", c->p->n, c->p->n_groups,
              n_static, n_vars, n_steps, img_size, img_size);
    return 0;
}

uint64_t moeh_coord_core_model_version(const moeh_coord_core_t *c)
{
    return c->model_version;
}

const moeh_params_t *moeh_coord_core_params(const moeh_coord_core_t *c)
{
    return c->p;
}

const float *moeh_coord_core_norm(const moeh_coord_core_t *c, size_t *n_norm)
{
    *n_norm = c->n_norm;
    return c->norm;
}

double moeh_coord_core_auroc(const moeh_coord_core_t *c, uint32_t task)
{
    return task < MOEH_N_TASKS ? c->last_auroc[0][task] : NAN;
}
