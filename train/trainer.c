/* trainer.c - local MoE-Health training and evaluation on a dataset (see moeh_trainer.h). */
#include "moeh_trainer.h"

#include "moeh_hist.h"

#include <math.h>
#include <string.h>

/* model/ sits below data/ and keeps its own count of modalities (MOEH_N_MODALITIES) and its own
 * combination index (moeh_combo_index); here, where both are visible, they must agree with the
 * schema. */
_Static_assert(MOEH_N_MODALITIES == MOEH_N_MODS, "model/ and data/moeh_schema.h disagree");

struct moeh_trainer {
    moeh_dataset_t *ds;
    moeh_moe_t *model;
    moeh_moe_cfg_t cfg;
    size_t n_norm, B, T, F, Fs, S;
    float *mean, *std;
    size_t *rows;  /* scratch row order */
    float *anchor; /* FedProx anchor (n_params), allocated on first use */
    /* batch buffers */
    float *bx, *bv, *bm, *bd, *by, *probs;
    float *bnv, *biv; /* precomputed vectors (B,note_dim), (B,img_dim); NULL when unused */
    size_t Dn, Di;
    uint8_t *bimg, *bavail, *bymask;
    uint64_t *boff;
    uint32_t *bids;
    size_t ids_cap;
};

int moeh_trainer_create(moeh_dataset_t **dsp, const moeh_moe_cfg_t *cfg, moeh_trainer_t **out,
                        moeh_err_t *err)
{
    moeh_dataset_t *ds = *dsp;
    if (cfg->n_static != ds->f_static || cfg->n_vars != ds->f_ts || cfg->n_steps != ds->t ||
        (cfg->img_size && cfg->img_size != ds->img_size) || cfg->n_tasks != MOEH_N_TASKS)
        return moeh_errf(err, -EINVAL,
                         "the model expects %zu static features, %zu hourly variables over %zu "
                         "hours, %zu x %zu images and %zu tasks; the dataset has %zu, %zu, %zu, "
                         "%zu x %zu and %d",
                         cfg->n_static, cfg->n_vars, cfg->n_steps, cfg->img_size, cfg->img_size,
                         cfg->n_tasks, ds->f_static, ds->f_ts, ds->t, ds->img_size, ds->img_size,
                         MOEH_N_TASKS);
    /* precomputed vectors (note_buckets = 0 / img_size = 0) come from the dataset's
     * note_vec / img_vec, whose widths must be the model's */
    uint8_t used = moeh_moe_arch_modalities(cfg->arch);
    if ((used & 2) && !cfg->note_buckets && cfg->note_dim != ds->note_dim)
        return moeh_errf(err, -EINVAL,
                         "the model takes note vectors of width %zu (note_buckets = 0); the "
                         "dataset has %s%zu (note_vec.npy)",
                         cfg->note_dim, ds->note_dim ? "width " : "none: width ", ds->note_dim);
    if ((used & 4) && !cfg->img_size && cfg->img_dim != ds->img_dim)
        return moeh_errf(err, -EINVAL,
                         "the model takes X-ray vectors of width %zu (img_size = 0); the dataset "
                         "has %s%zu (img_vec.npy)",
                         cfg->img_dim, ds->img_dim ? "width " : "none: width ", ds->img_dim);
    moeh_trainer_t *t = calloc(1, sizeof *t);
    if (!t) return moeh_errf(err, -ENOMEM, "out of memory");
    int rc;
    t->cfg = *cfg;
    if ((rc = moeh_moe_create(cfg, &t->model, err))) goto fail;
    t->B = cfg->max_batch, t->T = ds->t, t->F = ds->f_ts, t->Fs = ds->f_static;
    t->S = cfg->img_size ? ds->img_size : 0; /* 0: the model takes X-ray vectors */
    t->n_norm = t->Fs + t->F;
    size_t max_tok = 0;
    for (size_t i = 0; i < ds->n; i++) {
        size_t k = (size_t)(ds->note_offsets[i + 1] - ds->note_offsets[i]);
        max_tok = k > max_tok ? k : max_tok;
    }
    t->ids_cap = max_tok * t->B + 1;
    size_t B = t->B, TF = t->T * t->F;
    t->mean = calloc(t->n_norm, sizeof(float));
    t->std = malloc(t->n_norm * sizeof(float));
    t->rows = malloc((ds->n ? ds->n : 1) * sizeof(size_t));
    t->bx = malloc(B * (t->Fs ? t->Fs : 1) * sizeof(float));
    t->bv = malloc(B * TF * sizeof(float));
    t->bm = malloc(B * TF * sizeof(float));
    t->bd = malloc(B * TF * sizeof(float));
    t->by = malloc(B * MOEH_N_TASKS * sizeof(float));
    t->probs = malloc(B * MOEH_N_TASKS * sizeof(float));
    t->bimg = malloc(B * (t->S ? t->S * t->S : 1));
    t->bavail = malloc(B * MOEH_N_MODS);
    t->bymask = malloc(B * MOEH_N_TASKS);
    t->boff = malloc((B + 1) * sizeof(uint64_t));
    t->bids = malloc(t->ids_cap * sizeof(uint32_t));
    t->Dn = (used & 2) && !cfg->note_buckets ? cfg->note_dim : 0;
    t->Di = (used & 4) && !cfg->img_size ? cfg->img_dim : 0;
    if ((t->Dn && !(t->bnv = malloc(B * t->Dn * sizeof(float)))) ||
        (t->Di && !(t->biv = malloc(B * t->Di * sizeof(float))))) {
        rc = moeh_errf(err, -ENOMEM, "out of memory for the batch's vectors");
        goto fail;
    }
    if (!t->mean || !t->std || !t->rows || !t->bx || !t->bv || !t->bm || !t->bd || !t->by ||
        !t->probs || !t->bimg || !t->bavail || !t->bymask || !t->boff || !t->bids) {
        rc = moeh_errf(err, -ENOMEM, "out of memory for the batch buffers");
        goto fail;
    }
    for (size_t i = 0; i < t->n_norm; i++)
        t->std[i] = 1.0f;
    t->ds = ds;
    *dsp = NULL;
    *out = t;
    return 0;
fail:
    moeh_trainer_destroy(&t);
    return rc;
}

void moeh_trainer_destroy(moeh_trainer_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_trainer_t *t = *self_p;
    moeh_moe_destroy(&t->model);
    moeh_dataset_destroy(&t->ds);
    free(t->mean);
    free(t->std);
    free(t->rows);
    free(t->anchor);
    free(t->bx);
    free(t->bv);
    free(t->bm);
    free(t->bd);
    free(t->by);
    free(t->probs);
    free(t->bimg);
    free(t->bavail);
    free(t->bymask);
    free(t->boff);
    free(t->bids);
    free(t->bnv);
    free(t->biv);
    free(t);
    *self_p = NULL;
}

moeh_moe_t *moeh_trainer_model(moeh_trainer_t *t)
{
    return t->model;
}

const moeh_dataset_t *moeh_trainer_dataset(const moeh_trainer_t *t)
{
    return t->ds;
}

size_t moeh_trainer_rows(const moeh_trainer_t *t, int split)
{
    size_t n = 0;
    for (size_t i = 0; i < t->ds->n; i++)
        n += t->ds->split[i] == split;
    return n;
}

size_t moeh_trainer_n_norm(const moeh_trainer_t *t)
{
    return t->n_norm;
}

void moeh_trainer_local_stats(const moeh_trainer_t *t, double *out)
{
    const moeh_dataset_t *ds = t->ds;
    memset(out, 0, 3 * t->n_norm * sizeof(double));
    for (size_t i = 0; i < ds->n; i++) {
        if (ds->split[i] != MOEH_SPLIT_TRAIN) continue;
        for (size_t f = 0; f < t->Fs; f++) {
            double x = ds->static_x[i * t->Fs + f];
            if (!isfinite(x)) continue;
            out[3 * f] += 1, out[3 * f + 1] += x, out[3 * f + 2] += x * x;
        }
        if (!ds->avail[i * MOEH_N_MODS + MOEH_MOD_EHR]) continue;
        for (size_t h = 0; h < t->T; h++)
            for (size_t f = 0; f < t->F; f++) {
                size_t k = (i * t->T + h) * t->F + f;
                double x = ds->ts_value[k];
                if (ds->ts_mask[k] == 0 || !isfinite(x)) continue;
                double *o = out + 3 * (t->Fs + f);
                o[0] += 1, o[1] += x, o[2] += x * x;
            }
    }
}

void moeh_norm_from_stats(const double *stats, size_t n_norm, float *mean, float *std)
{
    for (size_t i = 0; i < n_norm; i++) {
        double n = stats[3 * i], m = 0, v = 1;
        if (n > 0) {
            m = stats[3 * i + 1] / n;
            v = stats[3 * i + 2] / n - m * m;
        }
        mean[i] = (float)m;
        std[i] = (float)fmax(sqrt(fmax(v, 0.0)), 1e-3);
    }
}

void moeh_trainer_set_norm(moeh_trainer_t *t, const float *mean, const float *std)
{
    memcpy(t->mean, mean, t->n_norm * sizeof(float));
    memcpy(t->std, std, t->n_norm * sizeof(float));
}

/* Gathers rows[0..B) into the batch buffers, normalised, and describes them in *b. */
static void gather(moeh_trainer_t *t, const size_t *rows, size_t B, moeh_batch_t *b)
{
    const moeh_dataset_t *ds = t->ds;
    size_t TF = t->T * t->F, H = t->cfg.note_buckets, ntok = 0;
    const float *ms = t->mean, *ss = t->std, *mv = t->mean + t->Fs, *sv = t->std + t->Fs;
    float inv_t = 1.0f / (float)t->T;
    t->boff[0] = 0;
    for (size_t r = 0; r < B; r++) {
        size_t i = rows[r];
        for (size_t f = 0; f < t->Fs; f++) {
            float x = ds->static_x[i * t->Fs + f];
            t->bx[r * t->Fs + f] = isfinite(x) ? (x - ms[f]) / ss[f] : 0.0f;
        }
        const float *v = ds->ts_value + i * TF, *m = ds->ts_mask + i * TF,
                    *d = ds->ts_delta + i * TF;
        float *ov = t->bv + r * TF, *om = t->bm + r * TF, *od = t->bd + r * TF;
        for (size_t h = 0; h < t->T; h++)
            for (size_t f = 0; f < t->F; f++) {
                size_t k = h * t->F + f;
                ov[k] = isfinite(v[k]) ? (v[k] - mv[f]) / sv[f] : 0.0f;
                om[k] = m[k];
                od[k] = d[k] * inv_t;
            }
        for (int64_t k = ds->note_offsets[i]; k < ds->note_offsets[i + 1]; k++)
            t->bids[ntok++] = H ? (uint32_t)((uint64_t)ds->note_tokens[k] % H) : 0u;
        t->boff[r + 1] = ntok;
        if (t->S) memcpy(t->bimg + r * t->S * t->S, ds->images + i * t->S * t->S, t->S * t->S);
        if (t->Dn) memcpy(t->bnv + r * t->Dn, ds->note_vec + i * t->Dn, t->Dn * sizeof(float));
        if (t->Di) memcpy(t->biv + r * t->Di, ds->img_vec + i * t->Di, t->Di * sizeof(float));
        memcpy(t->bavail + r * MOEH_N_MODS, ds->avail + i * MOEH_N_MODS, MOEH_N_MODS);
        memcpy(t->by + r * MOEH_N_TASKS, ds->labels + i * MOEH_N_TASKS,
               MOEH_N_TASKS * sizeof(float));
        memcpy(t->bymask + r * MOEH_N_TASKS, ds->label_mask + i * MOEH_N_TASKS, MOEH_N_TASKS);
    }
    *b = (moeh_batch_t){.B = B,
                        .static_x = t->bx,
                        .ts_value = t->bv,
                        .ts_mask = t->bm,
                        .ts_delta = t->bd,
                        .note_off = t->boff,
                        .note_ids = t->bids,
                        .img = t->S ? t->bimg : NULL,
                        .note_vec = t->bnv,
                        .img_vec = t->biv,
                        .avail = t->bavail,
                        .y = t->by,
                        .y_mask = t->bymask};
}

static size_t split_rows(moeh_trainer_t *t, int split)
{
    size_t n = 0;
    for (size_t i = 0; i < t->ds->n; i++)
        if (t->ds->split[i] == split) t->rows[n++] = i;
    return n;
}

int moeh_trainer_train(moeh_trainer_t *t, const moeh_train_cfg_t *cfg, moeh_train_result_t *res,
                       moeh_err_t *err)
{
    moeh_params_t *p = moeh_moe_params(t->model);
    memset(res, 0, sizeof *res);
    size_t n = split_rows(t, MOEH_SPLIT_TRAIN), B = cfg->batch_size;
    if (B == 0 || B > t->B)
        return moeh_errf(err, -EINVAL, "batch size %zu: expected 1..%zu", B, t->B);
    if (cfg->prox_mu > 0) {
        if (!t->anchor && !(t->anchor = malloc(p->n * sizeof(float))))
            return moeh_errf(err, -ENOMEM, "out of memory");
        memcpy(t->anchor, p->w, p->n * sizeof(float));
    }
    moeh_moe_set_phase(t->model, cfg->phase);
    moeh_moe_reset_group_samples(t->model);
    moeh_moe_zero_grad(t->model);
    moeh_rng_t rng;
    moeh_rng_seed(&rng, cfg->seed);
    double loss_sum = 0;
    uint64_t step = 0;
    for (uint32_t e = 0; e < cfg->epochs && n > 0; e++) {
        for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
            size_t j = (size_t)(moeh_rng_u64(&rng) % (i + 1)), tmp = t->rows[i];
            t->rows[i] = t->rows[j];
            t->rows[j] = tmp;
        }
        for (size_t s = 0; s < n; s += B) {
            moeh_batch_t b;
            double loss;
            gather(t, t->rows + s, n - s < B ? n - s : B, &b);
            int rc = moeh_moe_loss_backward(t->model, &b, &loss);
            if (rc)
                return moeh_errf(err, rc, "training step failed: %s",
                                 moeh_moe_last_error(t->model));
            if (!isfinite(loss))
                return moeh_errf(err, -ERANGE, "the training loss is not finite (step %llu)",
                                 (unsigned long long)step + 1);
            if (cfg->prox_mu > 0) /* FedProx: d/dw mu/2 |w - w0|^2 */
                for (size_t k = 0; k < p->n; k++)
                    p->g[k] += cfg->prox_mu * (p->w[k] - t->anchor[k]);
            moeh_moe_adamw_step(t->model, &cfg->adamw, ++step);
            loss_sum += loss;
            if (cfg->service) cfg->service(cfg->service_ctx);
        }
    }
    const uint64_t *gs = moeh_moe_group_samples(t->model);
    for (size_t g = 0; g < p->n_groups; g++)
        res->group_samples[g] = gs[g];
    res->steps = (uint32_t)step;
    res->samples = n;
    res->mean_loss = step ? loss_sum / (double)step : 0.0;
    return 0;
}

int moeh_trainer_evaluate(moeh_trainer_t *t, int split, uint32_t bins, moeh_eval_sums_t *out,
                          void (*service)(void *), void *service_ctx, moeh_err_t *err)
{
    const size_t T = MOEH_N_TASKS, E = moeh_moe_n_experts(t->model);
    memset(out->hist, 0, (size_t)MOEH_N_SLICES * T * 2 * bins * sizeof(uint32_t));
    memset(out->gate_sum, 0, MOEH_N_COMBOS * E * sizeof(float));
    memset(out->combo_rows, 0, sizeof out->combo_rows);
    out->loss_sum = 0;
    out->n_labels = 0;
    moeh_moe_set_phase(t->model, MOEH_PHASE_JOINT); /* route with the learned gate */
    size_t n = split_rows(t, split);
    for (size_t s = 0; s < n; s += t->B) {
        size_t bs = n - s < t->B ? n - s : t->B;
        moeh_batch_t b;
        gather(t, t->rows + s, bs, &b);
        int rc = moeh_moe_predict(t->model, &b, t->probs);
        if (rc) return moeh_errf(err, rc, "evaluation failed: %s", moeh_moe_last_error(t->model));
        const float *logits = moeh_moe_last_logits(t->model), *gate = moeh_moe_last_gate(t->model);
        for (size_t r = 0; r < bs; r++) {
            int c = moeh_combo_of(b.avail + r * MOEH_N_MODS); /* 0..6 */
            if (c >= 0) {
                out->combo_rows[c]++;
                for (size_t k = 0; gate && k < E; k++)
                    out->gate_sum[(size_t)c * E + k] += gate[r * E + k];
            }
            for (size_t k = 0; k < T; k++) {
                if (!b.y_mask[r * T + k]) continue;
                int y = b.y[r * T + k] > 0.5f;
                size_t bin = moeh_hist_bin(t->probs[r * T + k], bins);
                out->hist[((0 * T + k) * 2 + (size_t)y) * bins + bin]++;
                if (c >= 0) out->hist[(((size_t)(c + 1) * T + k) * 2 + (size_t)y) * bins + bin]++;
                double z = logits[r * T + k];
                out->loss_sum += fmax(z, 0.0) - z * y + log1p(exp(-fabs(z)));
                out->n_labels++;
            }
        }
        if (service) service(service_ctx);
    }
    return 0;
}

int moeh_trainer_predict(moeh_trainer_t *t, int split, float *probs, size_t *row_idx,
                         moeh_err_t *err)
{
    const size_t T = MOEH_N_TASKS;
    size_t n = split_rows(t, split);
    moeh_moe_set_phase(t->model, MOEH_PHASE_JOINT); /* route with the learned gate */
    for (size_t s = 0; s < n; s += t->B) {
        size_t bs = n - s < t->B ? n - s : t->B;
        moeh_batch_t b;
        gather(t, t->rows + s, bs, &b);
        int rc = moeh_moe_predict(t->model, &b, probs + s * T);
        if (rc) return moeh_errf(err, rc, "prediction failed: %s", moeh_moe_last_error(t->model));
    }
    if (row_idx) memcpy(row_idx, t->rows, n * sizeof(size_t));
    return 0;
}

int moeh_trainer_predict_rows(moeh_trainer_t *t, size_t first, size_t n, float *probs, float *gate,
                              moeh_err_t *err)
{
    if (n > t->B || first > t->ds->n || n > t->ds->n - first)
        return moeh_errf(err, -EINVAL, "rows %zu..+%zu: expected at most %zu rows within %zu",
                         first, n, t->B, t->ds->n);
    for (size_t r = 0; r < n; r++)
        t->rows[r] = first + r;
    moeh_moe_set_phase(t->model, MOEH_PHASE_JOINT); /* route with the learned gate */
    moeh_batch_t b;
    gather(t, t->rows, n, &b);
    int rc = moeh_moe_predict(t->model, &b, probs);
    if (rc) return moeh_errf(err, rc, "prediction failed: %s", moeh_moe_last_error(t->model));
    const float *g = moeh_moe_last_gate(t->model);
    if (gate && g) memcpy(gate, g, n * moeh_moe_n_experts(t->model) * sizeof(float));
    return 0;
}
