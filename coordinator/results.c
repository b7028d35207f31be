/* results.c - closing a phase of the coordinator core (coord_internal.h): the server step of a
 * TRAIN phase, the normalisation from the STATS sums, the federated evaluation, the
 * checkpoint written after every round and read by --resume, and the run's final outputs
 * (model.npy, model.safetensors, the selection line and the final table). */
#include "coord_internal.h"
#include "moeh_evalsum.h"

#include "moeh_checkpoint.h"
#include "moeh_secsum.h"
#include "moeh_modelfile.h"
#include "moeh_npy.h"
#include "moeh_trainer.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t coord_contributors(const coord_t *c, const char **ids)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        if (coord_contributed(c, &c->sites[i])) ids[n++] = c->sites[i].id;
    }
    qsort(ids, n, sizeof *ids, cmp_ids); /* by id, not by the order the sites joined */
    return n;
}

int coord_finish_train(coord_t *c, moeh_err_t *fatal)
{
    size_t updated;
    int rc;
    if (c->dp) { /* the noised sum is about to shape the model: one release */
        moeh_dp_ledger_release(&c->ledger, c->cfg->secagg);
        if ((rc = moeh_dp_ledger_write(&c->ledger, coord_dp_most_seen(c), fatal)) != 0) return rc;
    }
    coord_robust_close_train(c); /* robust.c: --norm-bound, the trimmed mean's warnings */
    if (c->sopt.kind == MOEH_STRATEGY_FEDAVG) {
        updated = moeh_fedavg_apply(&c->agg, c->p->w, c->quant_scale);
    } else if (moeh_strategy_per_site(c->sopt.kind)) {
        updated = moeh_trimmed_apply(
            &c->agg, c->p->w, c->site_delta, c->site_w, c->n_slots,
            c->sopt.kind == MOEH_STRATEGY_MEDIAN ? MOEH_MEDIAN_TRIM : c->cfg->trim, c->scratch);
    } else {
        updated = moeh_fedavg_mean_delta(&c->agg, c->quant_scale, c->delta, c->updated);
        moeh_server_opt_step(&c->sopt, &c->agg, c->p->w, c->sm, c->sv, c->delta, c->updated);
    }
    c->model_version++;
    /* the sample-weighted mean loss, from the sums only (secsum.h); under DP the sites keep
     * their loss (they send 0) */
    double lxs, ns, steps;
    moeh_secsum_train_get(c->vsum + c->p->n + c->p->n_groups, &lxs, &ns, &steps);
    double loss = ns > 0 && !c->dp ? lxs / ns : NAN;
    c->round_train_loss = loss;
    moeh_report_dp_t dp;
    const char **ids = calloc(c->n_sites + 1, sizeof *ids);
    moeh_report_train_t t = {.round = c->round,
                             .sites = c->n_replied,
                             .participants = c->n_participants,
                             .train_loss = loss,
                             .samples = ns,
                             .steps = steps,
                             .groups_updated = updated,
                             .model_version = c->model_version,
                             .dp = coord_dp_row(c, &dp),
                             .upload_slots = c->cfg->upload_slots,
                             .contributors = ids,
                             .n_contributors = ids ? coord_contributors(c, ids) : 0,
                             .w_cap = c->w_cap,
                             .model_hash = XXH64(c->p->w, c->p->n * sizeof(float), 0)};
    uint32_t in_use;
    moeh_uploads_counts(c->up, &in_use, &t.upload_max, &t.upload_expired);
    moeh_coord_report_train(c->report, &t);
    free(ids);
    return 0;
}

void coord_finish_stats(coord_t *c)
{
    size_t n = c->n_norm;
    moeh_secsum_stats_get(c->vsum, n, c->stats_sum);
    moeh_norm_from_stats(c->stats_sum, n, c->norm, c->norm + n);
    c->have_norm = 1;
    MOEH_INFO("normalisation statistics from %u sites over %zu features", c->n_replied, n);
    const char **ids = calloc(c->n_sites + 1, sizeof *ids);
    moeh_coord_report_stats(c->report, c->n_replied, n, ids, ids ? coord_contributors(c, ids) : 0);
    free(ids);
}

void coord_finish_eval(coord_t *c)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    const uint32_t T = (uint32_t)cfg->model.n_tasks, nb = cfg->eval_bins;
    double mean = 0;
    int n_ok = 0;
    moeh_secsum_eval_get(c->vsum, moeh_wire_secsum_dims(&c->lim), c->hist, c->gate_sum,
                         c->combo_rows, &c->eval_loss_sum, &c->eval_n_labels);
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++)
        for (uint32_t t = 0; t < T; t++)
            c->last_auroc[sl][t] = moeh_eval_slice_auroc(c->hist, T, nb, sl, t);
    for (uint32_t t = 0; t < T; t++)
        moeh_eval_slice_calib(c->hist, T, nb, 0, t, &c->last_calib[t]);
    for (uint32_t t = 0; t < T; t++)
        if (!isnan(c->last_auroc[0][t])) {
            mean += c->last_auroc[0][t];
            n_ok++;
        }
    mean = n_ok ? mean / n_ok : NAN;
    double eval_loss = c->eval_n_labels ? c->eval_loss_sum / (double)c->eval_n_labels : NAN;
    double secs = (double)(c->now - c->round_t0) / 1000.0;
    moeh_report_dp_t dp;
    const char **val_ids = calloc(c->n_sites + 1, sizeof *val_ids);
    size_t n_val_ids = 0;
    for (size_t i = 0; val_ids && i < c->n_sites; i++)
        if (c->sites[i].val_in) val_ids[n_val_ids++] = c->sites[i].id;
    if (val_ids) qsort(val_ids, n_val_ids, sizeof *val_ids, cmp_ids);
    const char **test_ids = calloc(c->n_sites + 1, sizeof *test_ids);
    const moeh_report_eval_t e = {.round = c->round,
                                  .sites = c->n_replied,
                                  .participants = c->n_participants,
                                  .n_tasks = T,
                                  .train_loss = c->round_train_loss,
                                  .test_loss = eval_loss,
                                  .auroc_mean = mean,
                                  .seconds = secs,
                                  .auroc = (const double(*)[MOEH_N_TASKS])c->last_auroc,
                                  .combo_rows = c->combo_rows,
                                  .gate_sum = c->gate_sum,
                                  .n_experts = c->n_experts,
                                  .secagg = cfg->secagg,
                                  .per_site = cfg->per_site_metrics,
                                  .dp = coord_dp_row(c, &dp),
                                  .calib = c->last_calib,
                                  .have_val = c->cfg->validate && c->have_val,
                                  .val_loss = c->val_loss,
                                  .val_auroc_mean = c->val_mean,
                                  .val_auroc = c->val_auroc,
                                  .val_calib = c->val_calib,
                                  .val_contributors = val_ids,
                                  .n_val_contributors = n_val_ids,
                                  .test_contributors = test_ids,
                                  .n_test_contributors =
                                      test_ids ? coord_contributors(c, test_ids) : 0};
    moeh_coord_report_eval(c->report, &e);
    free(val_ids);
    free(test_ids);
    moeh_coord_report_roc(c->report, c->round, "test", c->hist, nb);  /* "roc" lines */
    if (c->cfg->validate) coord_select_keep_test(c, eval_loss, mean); /* select.c */
    c->have_val = 0;
    MOEH_INFO("round %u done: %u sites, train loss %.4f, test loss %.4f, mean AUROC %.4f", c->round,
              c->n_replied, c->round_train_loss, eval_loss, mean);
    if (c->dp)
        MOEH_INFO("round %u: DP spent so far: epsilon %.4f at delta %g over %llu released rounds "
                  "(noise multiplier %g, clip %g); against this coordinator's view: %.4f",
                  c->round, dp.eps, (double)c->cfg->dp_delta, (unsigned long long)dp.rounds,
                  (double)c->cfg->dp_noise, (double)c->cfg->dp_clip, dp.eps_coord);
}

/* Writes the state that --resume needs, atomically. Failing to is fatal: the run promised it. */
int coord_save_checkpoint(coord_t *c, moeh_err_t *fatal)
{
    float shape[4] = {(float)c->mcfg.n_static, (float)c->mcfg.n_vars, (float)c->mcfg.n_steps,
                      (float)c->mcfg.img_size};
    moeh_ckpt_t k = {.round = c->round,
                     .model_version = c->model_version,
                     .spec_hash = c->spec_hash,
                     .n_params = c->p->n,
                     .n_groups = c->p->n_groups,
                     .n_arrays = 3,
                     .counts = {c->p->n, 2 * (size_t)c->n_norm, 4},
                     .arrays = {c->p->w, c->norm, shape}};
    snprintf(k.names[0], sizeof k.names[0], "params");
    snprintf(k.names[1], sizeof k.names[1], "norm");
    snprintf(k.names[2], sizeof k.names[2], "data_shape");
    float vec_dim[2] = {(float)c->vec_dim[0], (float)c->vec_dim[1]};
    if (c->vec_dim[0] || c->vec_dim[1]) { /* the sites' precomputed vector widths */
        snprintf(k.names[k.n_arrays], sizeof k.names[0], "data_vec");
        k.counts[k.n_arrays] = 2;
        k.arrays[k.n_arrays++] = vec_dim;
    }
    if (c->sm) { /* the server moments, for exact resume */
        snprintf(k.names[k.n_arrays], sizeof k.names[0], "server_m");
        k.counts[k.n_arrays] = c->p->n;
        k.arrays[k.n_arrays++] = c->sm;
        snprintf(k.names[k.n_arrays], sizeof k.names[0], "server_v");
        k.counts[k.n_arrays] = c->p->n;
        k.arrays[k.n_arrays++] = c->sv;
    }
    /* coord_select_state_len(1) floats */
    float sel_state[6 + MOEH_N_SLICES * MOEH_N_TASKS + MOEH_N_COMBOS + 4 * MOEH_N_TASKS];
    if (c->cfg->validate) { /* the model selection (select.c), for exact resume */
        assert(coord_select_state_len(1) == sizeof sel_state / sizeof sel_state[0]);
        coord_select_state_put(c, sel_state);
        snprintf(k.names[k.n_arrays], sizeof k.names[0], "select_params");
        k.counts[k.n_arrays] = c->p->n;
        k.arrays[k.n_arrays++] = c->sel_w;
        snprintf(k.names[k.n_arrays], sizeof k.names[0], "select_state");
        k.counts[k.n_arrays] = coord_select_state_len(1);
        k.arrays[k.n_arrays++] = sel_state;
    }
    moeh_err_t err = {0};
    int rc = moeh_ckpt_save(c->ckpt_path, &k, &err);
    if (rc) moeh_errf(fatal, rc, "cannot write the checkpoint: %s", err.msg);
    return rc;
}

/* Restores the model, the normalisation and the round counter (--resume). The model is
 * rebuilt from this run's configuration and the stored data shapes; the layout hash must
 * match the stored one, so a checkpoint never loads into a different architecture. */
int coord_load_checkpoint(coord_t *c, moeh_err_t *err)
{
    moeh_ckpt_t k;
    int rc = moeh_ckpt_load(c->ckpt_path, &k, err);
    if (rc) return rc;
    float *shape = moeh_ckpt_array(&k, "data_shape", 4);
    if (!shape) {
        rc = moeh_errf(err, -EBADMSG, "%s: no data_shape array", c->ckpt_path);
        goto out;
    }
    float *vec_dim = moeh_ckpt_array(&k, "data_vec", 2); /* absent: no vectors */
    for (int i = 0; vec_dim && i < 2; i++) {
        if (!(vec_dim[i] >= 0 && vec_dim[i] <= 65536 && vec_dim[i] == floorf(vec_dim[i]))) {
            rc = moeh_errf(err, -EBADMSG, "%s: data_vec[%d] is %g, expected an integer 0..65536",
                           c->ckpt_path, i, (double)vec_dim[i]);
            goto out;
        }
        c->vec_dim[i] = (uint32_t)vec_dim[i];
    }
    if ((rc = coord_build_model(c, (uint32_t)shape[0], (uint32_t)shape[1], (uint32_t)shape[2],
                                (uint32_t)shape[3], err)))
        goto out;
    float *params = moeh_ckpt_array(&k, "params", c->p->n),
          *norm = moeh_ckpt_array(&k, "norm", 2 * (size_t)c->n_norm);
    if (c->spec_hash != k.spec_hash || !params || !norm) {
        rc = moeh_errf(err, -EINVAL,
                       "%s: the model layout differs from this run's "
                       "configuration (architecture, widths or buckets changed?)",
                       c->ckpt_path);
        goto out;
    }
    if (c->sm) {
        float *sm = moeh_ckpt_array(&k, "server_m", c->p->n),
              *sv = moeh_ckpt_array(&k, "server_v", c->p->n);
        if (!sm || !sv) {
            rc = moeh_errf(err, -EINVAL,
                           "%s has no server moments: it was written by a %s run, "
                           "this one is %s",
                           c->ckpt_path, "fedavg", moeh_strategy_name(c->sopt.kind));
            goto out;
        }
        memcpy(c->sm, sm, c->p->n * sizeof(float));
        memcpy(c->sv, sv, c->p->n * sizeof(float));
    }
    if (c->cfg->validate) { /* select.c; a checkpoint without it: selection starts afresh */
        size_t len = coord_select_state_len(1);
        float *sw = moeh_ckpt_array(&k, "select_params", c->p->n),
              *ss = moeh_ckpt_array(&k, "select_state", len);
        if (!ss) /* written before the validation calibration was kept */
            ss = moeh_ckpt_array(&k, "select_state", len = coord_select_state_len(0));
        if (sw && ss)
            coord_select_state_get(c, ss, len, sw);
        else
            MOEH_WARN("%s holds no model-selection state (written without validation): the "
                      "selection starts with the next round",
                      c->ckpt_path);
    }
    memcpy(c->p->w, params, c->p->n * sizeof(float));
    memcpy(c->norm, norm, 2 * (size_t)c->n_norm * sizeof(float));
    c->have_norm = 1;
    c->round = k.round;
    c->model_version = k.model_version;
    MOEH_INFO("resuming after round %u (model version %llu) from %s", k.round,
              (unsigned long long)k.model_version, c->ckpt_path);
out:
    moeh_ckpt_free(&k);
    return rc;
}

/* OUT/model.safetensors (train/moeh_modelfile.h): the final parameters with the federated
 * normalisation, the feature names of --feature-names and the run's provenance. */
static int coord_write_modelfile(coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    char path[4096];
    if (!c->have_norm) {
        MOEH_WARN("no normalisation statistics (no statistics phase ran): model.safetensors not "
                  "written");
        return 0;
    }
    if (moeh_path_join(path, sizeof path, cfg->out_dir, "model.safetensors"))
        return moeh_errf(err, -ENAMETOOLONG, "%s/model.safetensors: path too long", cfg->out_dir);
    moeh_modelfile_names_t nm = {0};
    if (cfg->feature_names) {
        moeh_err_t e2 = {0};
        if (moeh_modelfile_names_load(cfg->feature_names, &nm, &e2) == 0 &&
            (nm.n_static != c->mcfg.n_static || nm.n_vars != c->mcfg.n_vars)) {
            MOEH_WARN("--feature-names %s: %zu static features and %zu hourly variables, the "
                      "model has %zu and %zu: names not recorded",
                      cfg->feature_names, nm.n_static, nm.n_vars, c->mcfg.n_static, c->mcfg.n_vars);
            moeh_modelfile_names_free(&nm);
        } else if (e2.msg[0]) {
            MOEH_WARN("--feature-names: %s: names not recorded", e2.msg);
        }
    }
    const uint32_t sites = coord_n_admitted(c);
    double eps = NAN, eps_coord;
    if (c->dp) moeh_dp_ledger_epsilons(&c->ledger, coord_dp_most_seen(c), &eps, &eps_coord);
    moeh_modelfile_info_t info = {
        .mean = c->norm,
        .std = c->norm + c->n_norm,
        .static_names = nm.n_static ? (const char *const *)nm.static_names : NULL,
        .ts_names = nm.n_vars ? (const char *const *)nm.ts_names : NULL,
        .ts_units = nm.n_vars ? (const char *const *)nm.ts_units : NULL,
        .prov = {.source = "federated",
                 .rounds = c->round, /* run (fewer than --rounds after --patience) */
                 .selected_round = cfg->validate && c->sel_round ? c->sel_round : c->round,
                 .sites = sites,
                 .strategy = cfg->strategy,
                 .secagg = cfg->secagg,
                 .dp_epsilon = eps}};
    int rc = moeh_modelfile_write(path, c->model, &info, err);
    moeh_modelfile_names_free(&nm);
    return rc;
}

int moeh_coord_core_finish(moeh_coord_core_t *c, moeh_err_t *err)
{
    char path[4096];
    int rc;
    if (!c->p) return moeh_errf(err, -EINVAL, "no model: no site ever joined");
    size_t shape[1] = {c->p->n};
    if (moeh_path_join(path, sizeof path, c->cfg->out_dir, "model.npy"))
        return moeh_errf(err, -ENAMETOOLONG, "%s/model.npy: path too long", c->cfg->out_dir);
    /* the selected round's model and test metrics (select.c), else the last round's */
    const int sel = c->cfg->validate && c->sel_round > 0;
    if (sel) memcpy(c->p->w, c->sel_w, c->p->n * sizeof(float));
    if ((rc = moeh_npy_write(path, MOEH_DT_F32, 1, shape, c->p->w, err))) return rc;
    if ((rc = coord_write_modelfile(c, err))) return rc;
    if (sel) {
        char why[160];
        snprintf(why, sizeof why, "%s validation %s over rounds 1..%u",
                 c->cfg->select_by_loss ? "lowest" : "best mean",
                 c->cfg->select_by_loss ? "loss" : "AUROC", c->round);
        moeh_coord_report_selection(c->report, c->sel_round, coord_select_key(c), c->sel_value, why,
                                    c->sel_have_test ? c->sel_test_mean : NAN);
    }
    if (sel && c->sel_have_test)
        moeh_coord_report_final(c->report, (const double(*)[MOEH_N_TASKS])c->sel_auroc,
                                c->sel_combo_rows, c->sel_calib, c->sel_val_calib);
    else
        moeh_coord_report_final(c->report, (const double(*)[MOEH_N_TASKS])c->last_auroc,
                                c->combo_rows, c->last_calib,
                                c->cfg->validate ? c->val_calib : NULL);
    MOEH_INFO("%u rounds done; model written to %s", c->round, path);
    if (sel)
        MOEH_INFO("the model is round %u's, selected by %s = %.4f", c->sel_round,
                  coord_select_key(c), (double)c->sel_value);
    return 0;
}
