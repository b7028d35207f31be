/* moe_pass.c - one pass of MoE-Health over a batch: batch validation, the forward pass
 * (encoders, missingness embeddings, the fusion vector z, experts, routing, heads, loss) and the
 * backward pass in reverse, and the public loss, loss+backward and predict calls (see moe.c for
 * the data flow, moe_encoders.c for the encoders). */
#include "moe_int.h"

#include "moeh_nn.h"

#include <math.h>
#include <string.h>

/* ---- batch validation ---------------------------------------------------------------------------
 */
static int validate(moeh_moe_t *m, const moeh_batch_t *b, int need_labels)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    if (b->B == 0 || b->B > c->max_batch)
        return moeh_moe_set_err(m, -EINVAL, "batch: B = %zu, expected 1..%zu", b->B, c->max_batch);
    if (!b->avail) return moeh_moe_set_err(m, -EINVAL, "batch: avail is NULL");
    if (need_labels && (!b->y || !b->y_mask))
        return moeh_moe_set_err(m, -EINVAL, "batch: labels or label mask missing");
    size_t have[3] = {0, 0, 0};
    for (size_t i = 0; i < b->B; i++)
        for (int k = 0; k < 3; k++) {
            if (b->avail[i * 3 + k] > 1)
                return moeh_moe_set_err(m, -EINVAL, "batch: avail[%zu][%d] = %u, expected 0/1", i,
                                        k, b->avail[i * 3 + k]);
            have[k] += b->avail[i * 3 + k];
        }
    if ((m->used & 1) && have[0] && (!b->static_x || !b->ts_value || !b->ts_mask || !b->ts_delta))
        return moeh_moe_set_err(m, -EINVAL,
                                "batch: EHR rows present but static/ts arrays are NULL");
    if ((m->used & 2) && have[1]) {
        if (c->note_buckets) {
            if (!b->note_off || !b->note_ids)
                return moeh_moe_set_err(m, -EINVAL,
                                        "batch: note rows present but note_off/ids NULL");
            for (size_t i = 0; i < b->B; i++) {
                if (!b->avail[i * 3 + 1]) continue;
                if (b->note_off[i + 1] < b->note_off[i])
                    return moeh_moe_set_err(m, -EINVAL, "batch: note_off decreases at row %zu", i);
                for (uint64_t j = b->note_off[i]; j < b->note_off[i + 1]; j++)
                    if (b->note_ids[j] >= c->note_buckets)
                        return moeh_moe_set_err(m, -EINVAL,
                                                "batch: note id %u at row %zu >= %zu buckets",
                                                b->note_ids[j], i, c->note_buckets);
            }
        } else if (!b->note_vec) {
            return moeh_moe_set_err(m, -EINVAL, "batch: note rows present but note_vec is NULL");
        }
    }
    if ((m->used & 4) && have[2] &&
        !(c->img_size ? (const void *)b->img : (const void *)b->img_vec))
        return moeh_moe_set_err(m, -EINVAL,
                                "batch: image rows present but the image array is NULL");
    return 0;
}

/* Copies the columns of modality set `mods` out of z (B,Dz) into zk (B,in_dim):
 * [emb of each m in mods..., avail of each m in mods...]; dir < 0 adds zk back into z. */
static void gather_cols(moeh_moe_t *m, float *zk, float *z, uint8_t mods, size_t B, int dir)
{
    size_t d = m->cfg.d_emb, Dz = m->Dz, nk = mods_count(mods);
    size_t in = nk * (d + 1);
    for (size_t i = 0; i < B; i++) {
        size_t pz = 0, pk = 0, az = m->n_used * d, ak = nk * d;
        for (int k = 0; k < 3; k++) {
            if (!(m->used & (1 << k))) continue;
            if (mods & (1 << k)) {
                float *zr = z + i * Dz, *kr = zk + i * in;
                if (dir > 0) {
                    memcpy(kr + pk, zr + pz, d * sizeof(float));
                    kr[ak] = zr[az];
                } else {
                    for (size_t j = 0; j < d; j++)
                        zr[pz + j] += kr[pk + j];
                }
                pk += d;
                ak++;
            }
            pz += d;
            az++;
        }
    }
}

/* Early fusion input (see moeh_moe_create): absent modalities are zeros, flagged by the
 * availability columns. */
static void early_build(moeh_moe_t *m, const moeh_batch_t *b)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    size_t B = b->B, Dz = m->Dz, Fs = c->n_static, F = c->n_vars, T = c->n_steps, d = c->d_emb;
    memset(m->z, 0, B * Dz * sizeof(float));
    for (size_t i = 0; i < B; i++) {
        float *row = m->z + i * Dz;
        if (b->avail[i * 3]) {
            memcpy(row, b->static_x + i * Fs, Fs * sizeof(float));
            float *mv = row + Fs, *mm = mv + F, *md = mm + F;
            for (size_t t = 0; t < T; t++)
                for (size_t f = 0; f < F; f++) {
                    size_t q = (i * T + t) * F + f;
                    mv[f] += b->ts_value[q] / (float)T;
                    mm[f] += b->ts_mask[q] / (float)T;
                    md[f] += b->ts_delta[q] / (float)T;
                }
        }
        if (b->avail[i * 3 + 1]) {
            if (c->note_buckets)
                moeh_embbag_forward(row + m->eo_note, moeh_params_w(&m->p, m->nt_emb),
                                    b->note_off + i, b->note_ids, 1, d);
            else
                memcpy(row + m->eo_note, b->note_vec + i * c->note_dim,
                       c->note_dim * sizeof(float));
        }
        if (b->avail[i * 3 + 2]) {
            float *px = row + m->eo_img;
            if (c->img_size) { /* 8x8 block means of the pixels / 255 */
                size_t S = c->img_size, k = S / 8;
                const uint8_t *im = b->img + i * S * S;
                for (size_t y = 0; y < S; y++)
                    for (size_t x = 0; x < S; x++)
                        px[(y / k) * 8 + x / k] += (float)im[y * S + x] / (255.0f * (float)(k * k));
            } else {
                memcpy(px, b->img_vec + i * c->img_dim, c->img_dim * sizeof(float));
            }
        }
        for (int k = 0; k < 3; k++)
            row[Dz - 3 + (size_t)k] = m->availf[i * 3 + (size_t)k];
    }
}

/* The gate's cross-entropy toward each row's combination expert, averaged over the rows that
 * have one: -mean_i log p_i[combo_i]. */
static double combo_xent(const moeh_moe_t *m, size_t B, size_t E)
{
    size_t ns = 0;
    double ce = 0;
    for (size_t i = 0; i < B; i++)
        if (m->combo[i] >= 0) {
            ce -= log(fmax((double)m->probs[i * E + (size_t)m->combo[i]], 1e-30));
            ns++;
        }
    return ns ? ce / (double)ns : 0.0;
}

/* Adds weight x d(combo_xent)/d(gate logits) into m->dglog: with p = softmax(l / temp),
 * d(-log p_c)/dl = (p - onehot(c)) / temp. */
static void combo_xent_backward(moeh_moe_t *m, size_t B, size_t E, float weight)
{
    size_t ns = 0;
    for (size_t i = 0; i < B; i++)
        ns += m->combo[i] >= 0;
    if (!ns) return;
    double s = (double)weight / (double)ns / (double)m->cfg.temperature;
    for (size_t i = 0; i < B; i++) {
        if (m->combo[i] < 0) continue;
        for (size_t k = 0; k < E; k++)
            m->dglog[i * E + k] +=
                (float)(s * (m->probs[i * E + k] - ((int)k == m->combo[i] ? 1.0f : 0.0f)));
    }
}

/* ---- forward ------------------------------------------------------------------------------------
 */
/* train: dropout on, counts group samples. Returns the loss through *loss when labels are
 * given (need_loss). */
static int forward(moeh_moe_t *m, const moeh_batch_t *b, int train, int need_loss, double *loss)
{
    int rc = validate(m, b, need_loss);
    if (rc) return rc;
    const moeh_moe_cfg_t *c = &m->cfg;
    const moeh_params_t *p = &m->p;
    size_t B = b->B, d = c->d_emb, dh = c->d_hidden, E = m->n_exp, Dz = m->Dz, Tk = c->n_tasks;
    for (int k = 0; k < 3; k++)
        m->n_idx[k] = 0;
    for (size_t i = 0; i < B; i++) {
        for (int k = 0; k < 3; k++) {
            m->availf[i * 3 + k] = b->avail[i * 3 + k];
            if (b->avail[i * 3 + k] && (m->used & (1 << k))) m->idx[k][m->n_idx[k]++] = i;
        }
        m->combo[i] = moeh_combo_index(b->avail + i * 3);
    }
    double t_mix = mono_s();
    if (m->early) {
        early_build(m, b);
        goto experts;
    }
    /* with cfg.threads >= 2 the image encoder runs beside the EHR and notes encoders (they
     * touch disjoint parameters, gradients and buffers); the serial path never enters libgomp
     * (whose team set-up may allocate) */
    size_t ni = m->n_idx[2];
    if (c->threads >= 2 && ni >= 2) {
        /* worker 0: EHR + notes + the first quarter of the images; worker 1: the rest (serial
         * profile at batch 64: EHR + notes ~6.5 ms, images ~12.5 ms; the split is static so
         * that results do not depend on timing) */
        size_t split = (m->n_idx[0] || m->n_idx[1]) ? ni / 4 : ni / 2;
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            {
                if (m->n_idx[0]) PROF(m, 0, moeh_enc_ehr_forward(m, b));
                if (m->n_idx[1]) PROF(m, 1, moeh_enc_notes_forward(m, b));
                moeh_enc_img_forward(m, b, 0, split, 0);
            }
#pragma omp section
            PROF(m, 2, moeh_enc_img_forward(m, b, split, ni, 1));
        }
    } else {
        if (m->n_idx[0]) PROF(m, 0, moeh_enc_ehr_forward(m, b));
        if (m->n_idx[1]) PROF(m, 1, moeh_enc_notes_forward(m, b));
        if (ni) PROF(m, 2, moeh_enc_img_forward(m, b, 0, ni, 0));
    }
    t_mix = mono_s();
    /* emb[k] (B,d): encoder output or the missingness embedding; z (B,Dz) */
    size_t pz = 0, az = m->n_used * d;
    for (int k = 0; k < 3; k++) {
        if (!(m->used & (1 << k))) continue;
        float *emb = m->emb + (size_t)k * B * d;
        const float *miss = c->missing_zero ? m->zero_d : moeh_params_w(p, m->miss[k]);
        size_t j = 0;
        for (size_t i = 0; i < B; i++) {
            const float *src = miss;
            if (j < m->n_idx[k] && m->idx[k][j] == i) src = m->enc[k] + (j++) * d;
            memcpy(emb + i * d, src, d * sizeof(float));
            memcpy(m->z + i * Dz + pz, src, d * sizeof(float));
            m->z[i * Dz + az] = m->availf[i * 3 + k];
        }
        pz += d;
        az++;
    }
experts:
    for (size_t k = 0; k < E; k++) {
        const expert_t *e = &m->ex[k];
        const float *in = m->z;
        if (e->restricted) {
            gather_cols(m, m->zk[k], m->z, e->mods, B, 1);
            in = m->zk[k];
        }
        moeh_linear_forward(m->h[k], in, moeh_params_w(p, e->w1), moeh_params_w(p, e->b1), B,
                            e->in_dim, dh);
        moeh_relu_forward(m->h[k], m->h[k], B * dh);
        if (train && c->dropout > 0)
            moeh_dropout_forward(m->h[k], m->keep[k], m->h[k], c->dropout, B * dh, &m->rng);
        moeh_linear_forward(m->o[k], m->h[k], moeh_params_w(p, e->w2), moeh_params_w(p, e->b2), B,
                            dh, d);
    }
    /* routing weights w (B,E) */
    if (m->has_gate) {
        const float *gin = m->z;
        if (c->gate_no_avail) { /* the availability columns are the last n_used of z */
            memcpy(m->gin, m->z, B * Dz * sizeof(float));
            for (size_t i = 0; i < B; i++)
                memset(m->gin + i * Dz + m->n_used * d, 0, m->n_used * sizeof(float));
            gin = m->gin;
        }
        moeh_linear_forward(m->gh, gin, moeh_params_w(p, m->g_w1), moeh_params_w(p, m->g_b1), B, Dz,
                            dh);
        moeh_relu_forward(m->gh, m->gh, B * dh);
        moeh_linear_forward(m->glog, m->gh, moeh_params_w(p, m->g_w2), moeh_params_w(p, m->g_b2), B,
                            dh, E);
        moeh_gate_forward(m->gw, m->probs, m->sel, m->glog, B, E, c->top_k, c->temperature);
        memcpy(m->w, m->gw, B * E * sizeof(float));
        if (m->phase == MOEH_PHASE_WARMUP)
            for (size_t i = 0; i < B; i++)
                if (m->combo[i] >= 0)
                    for (size_t k = 0; k < E; k++)
                        m->w[i * E + k] = (int)k == m->combo[i] ? 1.0f : 0.0f;
    } else if (c->arch == MOEH_ARCH_LATE) {
        for (size_t i = 0; i < B; i++) {
            float s = m->availf[i * 3] + m->availf[i * 3 + 1] + m->availf[i * 3 + 2];
            for (size_t k = 0; k < 3; k++)
                m->w[i * 3 + k] = s > 0 ? m->availf[i * 3 + k] / s : 1.0f / 3.0f;
        }
    } else {
        for (size_t i = 0; i < B; i++)
            m->w[i] = 1.0f;
    }
    /* comb (B,d) = sum_k w[:,k] o[k]; logits (B,T) = comb @ Wh^T + bh */
    memset(m->comb, 0, B * d * sizeof(float));
    for (size_t k = 0; k < E; k++)
        for (size_t i = 0; i < B; i++) {
            float wk = m->w[i * E + k];
            if (wk == 0.0f) continue;
            const float *ok = m->o[k] + i * d;
            float *cb = m->comb + i * d;
            for (size_t j = 0; j < d; j++)
                cb[j] += wk * ok[j];
        }
    moeh_linear_forward(m->logits, m->comb, moeh_params_w(p, m->h_w), moeh_params_w(p, m->h_b), B,
                        d, Tk);
    m->prof[3] += mono_s() - t_mix;
    if (!need_loss) return 0;
    float pw[MOEH_MAX_TASKS];
    for (size_t t = 0; t < Tk; t++)
        pw[t] = c->pos_weight[t] > 0 ? c->pos_weight[t] : 1.0f;
    double L = moeh_bce_masked(m->dlogits, m->logits, b->y, b->y_mask, pw, B, Tk);
    if (m->has_gate) {
        if (m->phase == MOEH_PHASE_WARMUP) {
            L += c->gate_sup * combo_xent(m, B, E);
        } else {
            if (c->lambda_lb > 0)
                L += moeh_load_balance(NULL, m->probs, m->sel, B, E, c->lambda_lb);
            if (c->gate_sup_joint > 0) L += c->gate_sup_joint * combo_xent(m, B, E);
        }
    }
    if (train) {
        for (int k = 0; k < 3; k++)
            if ((m->used & (1 << k)) && m->grp_enc[k] >= 0)
                m->group_samples[m->grp_enc[k]] += m->n_idx[k];
        uint64_t nmiss = 0;
        for (size_t i = 0; i < B; i++)
            for (int k = 0; k < 3; k++)
                if ((m->used & (1 << k)) && !b->avail[i * 3 + k]) {
                    nmiss++;
                    break;
                }
        if (m->grp_missing >= 0) m->group_samples[m->grp_missing] += nmiss;
        for (size_t k = 0; k < E; k++)
            for (size_t i = 0; i < B; i++)
                m->group_samples[m->ex[k].group] += m->w[i * E + k] != 0.0f;
        if (m->has_gate) m->group_samples[m->grp_gate] += B;
        m->group_samples[m->grp_heads] += B;
    }
    *loss = L;
    return 0;
}

static void backward(moeh_moe_t *m, const moeh_batch_t *b, int train)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    moeh_params_t *p = &m->p;
    size_t B = b->B, d = c->d_emb, dh = c->d_hidden, E = m->n_exp, Dz = m->Dz, Tk = c->n_tasks;
    double t_mix = mono_s();
    /* heads: dcomb (B,d) = dlogits @ Wh */
    memset(m->dcomb, 0, B * d * sizeof(float));
    moeh_linear_backward(m->dcomb, moeh_params_g(p, m->h_w), moeh_params_g(p, m->h_b), m->dlogits,
                         m->comb, moeh_params_w(p, m->h_w), B, d, Tk);
    memset(m->dz, 0, B * Dz * sizeof(float));
    /* experts; dw[b,k] = <dcomb[b], o_k[b]> */
    for (size_t k = 0; k < E; k++) {
        const expert_t *e = &m->ex[k];
        int any = 0;
        for (size_t i = 0; i < B; i++) {
            float wk = m->w[i * E + k];
            const float *ok = m->o[k] + i * d, *dc = m->dcomb + i * d;
            float *dk = m->dok + i * d;
            double s = 0;
            for (size_t j = 0; j < d; j++) {
                s += (double)dc[j] * ok[j];
                dk[j] = wk * dc[j];
            }
            m->dw[i * E + k] = (float)s;
            any |= wk != 0.0f;
        }
        if (!any) continue; /* no row routed here: the expert's gradient is exactly zero */
        memset(m->dhk, 0, B * dh * sizeof(float));
        moeh_linear_backward(m->dhk, moeh_params_g(p, e->w2), moeh_params_g(p, e->b2), m->dok,
                             m->h[k], moeh_params_w(p, e->w2), B, dh, d);
        if (train && c->dropout > 0) {
            /* h[k] holds the dropped-out activation; scale the gradient by keep/(1-p) */
            float s = 1.0f / (1.0f - c->dropout);
            for (size_t i = 0; i < B * dh; i++)
                m->dhk[i] = m->keep[k][i] ? m->dhk[i] * s : 0.0f;
        }
        relu_mask(m->dhk, m->h[k], B * dh);
        if (e->restricted) {
            memset(m->dzk, 0, B * e->in_dim * sizeof(float));
            moeh_linear_backward(m->dzk, moeh_params_g(p, e->w1), moeh_params_g(p, e->b1), m->dhk,
                                 m->zk[k], moeh_params_w(p, e->w1), B, e->in_dim, dh);
            gather_cols(m, m->dzk, m->dz, e->mods, B, -1);
        } else {
            moeh_linear_backward(m->dz, moeh_params_g(p, e->w1), moeh_params_g(p, e->b1), m->dhk,
                                 m->z, moeh_params_w(p, e->w1), B, e->in_dim, dh);
        }
    }
    /* gate */
    if (m->has_gate) {
        memset(m->dglog, 0, B * E * sizeof(float));
        if (m->phase == MOEH_PHASE_WARMUP) {
            combo_xent_backward(m, B, E, c->gate_sup);
            for (size_t i = 0; i < B; i++)
                if (m->combo[i] >= 0)
                    for (size_t k = 0; k < E; k++) /* routing did not come from the gate here */
                        m->dw[i * E + k] = 0.0f;
            moeh_gate_backward(m->dglog, m->dw, NULL, m->gw, m->probs, m->sel, B, E,
                               c->temperature);
        } else {
            memset(m->dprobs, 0, B * E * sizeof(float));
            if (c->lambda_lb > 0)
                moeh_load_balance(m->dprobs, m->probs, m->sel, B, E, c->lambda_lb);
            if (c->gate_sup_joint > 0) combo_xent_backward(m, B, E, c->gate_sup_joint);
            moeh_gate_backward(m->dglog, m->dw, m->dprobs, m->gw, m->probs, m->sel, B, E,
                               c->temperature);
        }
        memset(m->dgh, 0, B * dh * sizeof(float));
        moeh_linear_backward(m->dgh, moeh_params_g(p, m->g_w2), moeh_params_g(p, m->g_b2), m->dglog,
                             m->gh, moeh_params_w(p, m->g_w2), B, dh, E);
        relu_mask(m->dgh, m->gh, B * dh);
        moeh_linear_backward(m->dz, moeh_params_g(p, m->g_w1), moeh_params_g(p, m->g_b1), m->dgh,
                             c->gate_no_avail ? m->gin : m->z, moeh_params_w(p, m->g_w1), B, Dz,
                             dh);
    }
    m->prof[4] += mono_s() - t_mix;
    if (m->early) {
        if ((m->used & 2) && m->cfg.note_buckets)
            for (size_t i = 0; i < B; i++)
                if (b->avail[i * 3 + 1])
                    moeh_embbag_backward(moeh_params_g(p, m->nt_emb), m->touched, m->rows,
                                         &m->n_rows, m->dz + i * Dz + m->eo_note, b->note_off + i,
                                         b->note_ids, 1, d);
        return;
    }
    /* dz -> missingness embeddings and encoders */
    size_t pz = 0;
    for (int k = 0; k < 3; k++) {
        if (!(m->used & (1 << k))) continue;
        float *dmiss = c->missing_zero ? NULL : moeh_params_g(p, m->miss[k]);
        size_t j = 0;
        for (size_t i = 0; i < B; i++) {
            const float *src = m->dz + i * Dz + pz;
            if (j < m->n_idx[k] && m->idx[k][j] == i) {
                memcpy(m->denc[k] + (j++) * d, src, d * sizeof(float));
            } else if (dmiss) {
                for (size_t q = 0; q < d; q++)
                    dmiss[q] += src[q];
            }
        }
        pz += d;
    }
    size_t ni = m->n_idx[2];
    if (c->threads >= 2 && ni >= 2) {
        /* worker 0: EHR + notes + the first 2/7 of the images (serial profile: EHR + notes
         * ~11.5 ms, images ~26 ms); worker 1: the rest, into a private copy of the image
         * gradients that is summed in afterwards */
        size_t split = (m->n_idx[0] || m->n_idx[1]) ? 2 * ni / 7 : ni / 2;
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            {
                if (m->n_idx[0]) PROF(m, 5, moeh_enc_ehr_backward(m, m->denc[0]));
                if (m->n_idx[1]) PROF(m, 6, moeh_enc_notes_backward(m, b, m->denc[1]));
                moeh_enc_img_backward(m, m->denc[2], 0, split, 0);
            }
#pragma omp section
            PROF(m, 7, moeh_enc_img_backward(m, m->denc[2], split, ni, 1));
        }
        moeh_enc_img_merge_grads(m);
    } else {
        if (m->n_idx[0]) PROF(m, 5, moeh_enc_ehr_backward(m, m->denc[0]));
        if (m->n_idx[1]) PROF(m, 6, moeh_enc_notes_backward(m, b, m->denc[1]));
        if (ni) PROF(m, 7, moeh_enc_img_backward(m, m->denc[2], 0, ni, 0));
    }
}

int moeh_moe_loss_backward(moeh_moe_t *m, const moeh_batch_t *b, double *loss)
{
    int rc = forward(m, b, 1, 1, loss);
    if (rc) return rc;
    backward(m, b, 1);
    return 0;
}

int moeh_moe_loss(moeh_moe_t *m, const moeh_batch_t *b, double *loss)
{
    return forward(m, b, 0, 1, loss);
}

int moeh_moe_predict(moeh_moe_t *m, const moeh_batch_t *b, float *probs)
{
    int rc = forward(m, b, 0, 0, NULL);
    if (rc) return rc;
    for (size_t i = 0; i < b->B * m->cfg.n_tasks; i++)
        probs[i] = moeh_sigmoid(m->logits[i]);
    return 0;
}
