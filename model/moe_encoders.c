/* moe_encoders.c - the per-modality encoders of MoE-Health (see moe.c for the data flow):
 *   EHR:   static features -> linear+ReLU; hourly (value, mask, delta) -> GRU; both fused by a
 *          linear+ReLU;
 *   notes: hashed-token embedding bag (or a given vector) -> linear+ReLU;
 *   image: three 3x3 conv+ReLU layers with 2x2 max pooling between them (im2col + sgemm or the
 *          direct AVX-512 kernels), global average pooling, linear+ReLU (or a given vector).
 * Forward and backward of each, on the rows that have the modality; the image encoder can run on
 * two disjoint ranges of images in two threads (slot 1 keeps private gradients). */
#include "moe_int.h"

#include "moeh_nn.h"

#include <cblas.h>
#include <string.h>

/* ---- encoders
 * ------------------------------------------------------------------------------------ */
void moeh_enc_ehr_forward(moeh_moe_t *m, const moeh_batch_t *b)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    const moeh_params_t *p = &m->p;
    size_t n = m->n_idx[0], d = c->d_emb, T = c->n_steps, F = c->n_vars, Fs = c->n_static;
    for (size_t j = 0; j < n; j++) {
        size_t r = m->idx[0][j];
        memcpy(m->xs + j * Fs, b->static_x + r * Fs, Fs * sizeof(float));
        for (size_t t = 0; t < T; t++) {
            float *dst = m->tsx + (j * T + t) * 3 * F;
            size_t src = (r * T + t) * F;
            memcpy(dst, b->ts_value + src, F * sizeof(float));
            memcpy(dst + F, b->ts_mask + src, F * sizeof(float));
            memcpy(dst + 2 * F, b->ts_delta + src, F * sizeof(float));
        }
    }
    /* s1 (n,d) = relu(xs @ Ws^T + bs) */
    moeh_linear_forward(m->s1, m->xs, moeh_params_w(p, m->ehr_sw), moeh_params_w(p, m->ehr_sb), n,
                        Fs, d);
    moeh_relu_forward(m->s1, m->s1, n * d);
    moeh_gru_forward(m->hs, m->xi, m->gates, m->hh, m->whhT, m->tsx, moeh_params_w(p, m->gru_wih),
                     moeh_params_w(p, m->gru_whh), moeh_params_w(p, m->gru_bih),
                     moeh_params_w(p, m->gru_bhh), n, T, 3 * F, d);
    const float *hT = m->hs + T * n * d;
    for (size_t j = 0; j < n; j++) {
        memcpy(m->cat + j * 2 * d, m->s1 + j * d, d * sizeof(float));
        memcpy(m->cat + j * 2 * d + d, hT + j * d, d * sizeof(float));
    }
    /* enc (n,d) = relu(cat (n,2d) @ Wf^T + bf) */
    moeh_linear_forward(m->enc[0], m->cat, moeh_params_w(p, m->ehr_fw), moeh_params_w(p, m->ehr_fb),
                        n, 2 * d, d);
    moeh_relu_forward(m->enc[0], m->enc[0], n * d);
}

/* denc (n,d): gradient of the encoder output; consumed (modified). */
void moeh_enc_ehr_backward(moeh_moe_t *m, float *denc)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    moeh_params_t *p = &m->p;
    size_t n = m->n_idx[0], d = c->d_emb, T = c->n_steps, F = c->n_vars, Fs = c->n_static;
    relu_mask(denc, m->enc[0], n * d);
    memset(m->dcat, 0, n * 2 * d * sizeof(float));
    moeh_linear_backward(m->dcat, moeh_params_g(p, m->ehr_fw), moeh_params_g(p, m->ehr_fb), denc,
                         m->cat, moeh_params_w(p, m->ehr_fw), n, 2 * d, d);
    for (size_t j = 0; j < n; j++) {
        memcpy(m->ds1 + j * d, m->dcat + j * 2 * d, d * sizeof(float));
        memcpy(m->dhT + j * d, m->dcat + j * 2 * d + d, d * sizeof(float));
    }
    relu_mask(m->ds1, m->s1, n * d);
    moeh_linear_backward(NULL, moeh_params_g(p, m->ehr_sw), moeh_params_g(p, m->ehr_sb), m->ds1,
                         m->xs, moeh_params_w(p, m->ehr_sw), n, Fs, d);
    moeh_gru_backward(NULL, moeh_params_g(p, m->gru_wih), moeh_params_g(p, m->gru_whh),
                      moeh_params_g(p, m->gru_bih), moeh_params_g(p, m->gru_bhh), m->dxi, m->dhh,
                      m->dh, m->dhT, m->tsx, moeh_params_w(p, m->gru_wih),
                      moeh_params_w(p, m->gru_whh), m->hs, m->gates, n, T, 3 * F, d);
}

void moeh_enc_notes_forward(moeh_moe_t *m, const moeh_batch_t *b)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    const moeh_params_t *p = &m->p;
    size_t n = m->n_idx[1], d = c->d_emb;
    const float *in;
    size_t fin;
    if (c->note_buckets) {
        const float *E = moeh_params_w(p, m->nt_emb);
        for (size_t j = 0; j < n; j++)
            moeh_embbag_forward(m->bag + j * d, E, b->note_off + m->idx[1][j], b->note_ids, 1, d);
        in = m->bag, fin = d;
    } else {
        fin = c->note_dim;
        for (size_t j = 0; j < n; j++)
            memcpy(m->nv + j * fin, b->note_vec + m->idx[1][j] * fin, fin * sizeof(float));
        in = m->nv;
    }
    moeh_linear_forward(m->enc[1], in, moeh_params_w(p, m->nt_w), moeh_params_w(p, m->nt_b), n, fin,
                        d);
    moeh_relu_forward(m->enc[1], m->enc[1], n * d);
}

void moeh_enc_notes_backward(moeh_moe_t *m, const moeh_batch_t *b, float *denc)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    moeh_params_t *p = &m->p;
    size_t n = m->n_idx[1], d = c->d_emb;
    relu_mask(denc, m->enc[1], n * d);
    if (c->note_buckets) {
        memset(m->dbag, 0, n * d * sizeof(float));
        moeh_linear_backward(m->dbag, moeh_params_g(p, m->nt_w), moeh_params_g(p, m->nt_b), denc,
                             m->bag, moeh_params_w(p, m->nt_w), n, d, d);
        float *dE = moeh_params_g(p, m->nt_emb);
        for (size_t j = 0; j < n; j++)
            moeh_embbag_backward(dE, m->touched, m->rows, &m->n_rows, m->dbag + j * d,
                                 b->note_off + m->idx[1][j], b->note_ids, 1, d);
    } else {
        moeh_linear_backward(NULL, moeh_params_g(p, m->nt_w), moeh_params_g(p, m->nt_b), denc,
                             m->nv, moeh_params_w(p, m->nt_w), n, c->note_dim, d);
    }
}

/* Gradient of encoder_img view vi for worker slot: slot 0 writes into the store, slot 1 into a
 * private copy of the group (summed in by img_merge_grads), so two threads can run the image
 * encoder on disjoint images. */
static float *img_grad(moeh_moe_t *m, int slot, int vi)
{
    if (slot == 0) return moeh_params_g(&m->p, vi);
    return m->gimg + (m->p.views[vi].offset - m->p.group_off[m->grp_enc[2]]);
}

void moeh_enc_img_merge_grads(moeh_moe_t *m)
{
    moeh_params_t *p = &m->p;
    size_t off = p->group_off[m->grp_enc[2]], len = p->group_len[m->grp_enc[2]];
    for (size_t i = 0; i < len; i++) {
        p->g[off + i] += m->gimg[i];
        m->gimg[i] = 0.0f;
    }
}

/* Image encoder forward on the gathered images [j0, j1) using scratch slot `slot`. */
void moeh_enc_img_forward(moeh_moe_t *m, const moeh_batch_t *b, size_t j0, size_t j1, int slot)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    const moeh_params_t *p = &m->p;
    size_t n = j1 - j0, d = c->d_emb;
    if (n == 0) return;
    float *enc = m->enc[2] + j0 * d;
    if (!c->img_size) {
        size_t fin = c->img_dim;
        for (size_t j = j0; j < j1; j++)
            memcpy(m->iv + j * fin, b->img_vec + m->idx[2][j] * fin, fin * sizeof(float));
        moeh_linear_forward(enc, m->iv + j0 * fin, moeh_params_w(p, m->im_w),
                            moeh_params_w(p, m->im_b), n, fin, d);
        moeh_relu_forward(enc, enc, n * d);
        return;
    }
    size_t S = c->img_size, SS = S * S;
    for (size_t j = j0; j < j1; j++) {
        const uint8_t *src = b->img + m->idx[2][j] * SS;
        float *dst = m->x0 + j * SS;
        for (size_t i = 0; i < SS; i++)
            dst[i] = (float)src[i] * (1.0f / 255.0f);
    }
    const float *in = m->x0 + j0 * SS;
    size_t cin = 1;
    for (int l = 0; l < 3; l++) {
        size_t s = m->side[l], oc = c->cnn_ch[l], hw = s * s;
        float *al = m->a[l] + j0 * hw * oc;
        if (m->dir_fwd[l]) {
            const float *bl = moeh_params_w(p, m->im_cb[l]);
            moeh_conv3x3_wt_fwd(m->wt[slot], moeh_params_w(p, m->im_cw[l]), cin, oc);
            if (l < 2) { /* conv, pool and ReLU two rows at a time: a[l] is not written */
                size_t per = hw / 4 * oc;
                float *pl = m->pl[l] + j0 * per;
                moeh_conv3x3_pool_relu_direct(pl, m->arg[l] + j0 * per, m->prow[slot], m->pad[slot],
                                              in, m->wt[slot], bl, n, s, s, cin, oc);
                in = pl;
                cin = oc;
                continue;
            }
            moeh_conv3x3_direct(al, m->pad[slot], in, m->wt[slot], bl, n, s, s, cin, oc, 0);
        }
        for (size_t q = 0; q < (m->dir_fwd[l] ? 0 : n); q += m->chunk[l]) {
            size_t nc = n - q < m->chunk[l] ? n - q : m->chunk[l];
            moeh_conv3x3_forward(al + q * hw * oc, m->col[slot], in + q * hw * cin,
                                 moeh_params_w(p, m->im_cw[l]), moeh_params_w(p, m->im_cb[l]), nc,
                                 s, s, cin, oc);
        }
        if (l < 2) {
            /* relu(maxpool(x)) == maxpool(relu(x)) with the same gradient (the max is
             * monotone); pooling first runs the ReLU on a quarter of the data */
            size_t per = hw / 4 * oc;
            float *pl = m->pl[l] + j0 * per;
            moeh_maxpool2_forward(pl, m->arg[l] + j0 * per, al, n, s, s, oc);
            moeh_relu_forward(pl, pl, n * per);
            in = pl;
        } else {
            moeh_relu_forward(al, al, n * hw * oc);
        }
        cin = oc;
    }
    size_t s3 = m->side[2], c3 = c->cnn_ch[2];
    float *gp = m->gp + j0 * c3;
    moeh_gap_forward(gp, m->a[2] + j0 * s3 * s3 * c3, n, s3 * s3, c3);
    moeh_linear_forward(enc, gp, moeh_params_w(p, m->im_w), moeh_params_w(p, m->im_b), n, c3, d);
    moeh_relu_forward(enc, enc, n * d);
}

/* Image encoder backward on images [j0, j1); denc (n_img,d) is the gradient of the encoder
 * output for all gathered images (rows j0..j1 are consumed). */
void moeh_enc_img_backward(moeh_moe_t *m, float *denc_all, size_t j0, size_t j1, int slot)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    const moeh_params_t *p = &m->p;
    size_t n = j1 - j0, d = c->d_emb;
    if (n == 0) return;
    float *denc = denc_all + j0 * d;
    relu_mask(denc, m->enc[2] + j0 * d, n * d);
    if (!c->img_size) {
        moeh_linear_backward(NULL, img_grad(m, slot, m->im_w), img_grad(m, slot, m->im_b), denc,
                             m->iv + j0 * c->img_dim, moeh_params_w(p, m->im_w), n, c->img_dim, d);
        return;
    }
    size_t c3 = c->cnn_ch[2], s3 = m->side[2];
    float *dgp = m->dgp + j0 * c3, *da2 = m->da[2] + j0 * s3 * s3 * c3;
    memset(dgp, 0, n * c3 * sizeof(float));
    moeh_linear_backward(dgp, img_grad(m, slot, m->im_w), img_grad(m, slot, m->im_b), denc,
                         m->gp + j0 * c3, moeh_params_w(p, m->im_w), n, c3, d);
    memset(da2, 0, n * s3 * s3 * c3 * sizeof(float));
    moeh_gap_backward(da2, dgp, n, s3 * s3, c3);
    relu_mask(da2, m->a[2] + j0 * s3 * s3 * c3, n * s3 * s3 * c3);
    size_t S = c->img_size;
    for (int l = 2; l >= 0; l--) {
        size_t s = m->side[l], hw = s * s, oc = c->cnn_ch[l], cin = l ? c->cnn_ch[l - 1] : 1;
        const float *in = l ? m->pl[l - 1] + j0 * hw * cin : m->x0 + j0 * S * S;
        float *dpl = l ? m->dpl[l - 1] + j0 * hw * cin : NULL, *dal = m->da[l] + j0 * hw * oc;
        float *dw = img_grad(m, slot, m->im_cw[l]), *db = img_grad(m, slot, m->im_cb[l]);
        const float *w = moeh_params_w(p, m->im_cw[l]);
        if (l == 0 && m->dw_pooled0) { /* da[0] was never written: built from dpl[0], arg[0] */
            size_t per = hw / 4 * oc;
            moeh_conv3x3_direct_dw_pooled(dw, db, m->pad[slot], m->wt[slot], m->dpl[0] + j0 * per,
                                          m->arg[0] + j0 * per, in, n, s, s, cin, oc);
        } else if (m->dir_dw[l]) { /* weight gradient without columns */
            moeh_conv3x3_direct_dw(dw, db, m->pad[slot], m->wt[slot], dal, in, n, s, s, cin, oc);
        }
        if (m->dir_bwd[l]) { /* data gradient: dout convolved with the flipped weights */
            moeh_conv3x3_wt_bwd(m->wt[slot], w, cin, oc);
            moeh_conv3x3_direct(dpl, m->pad[slot], dal, m->wt[slot], NULL, n, s, s, oc, cin, 0);
        }
        /* what is left goes through columns, chunk by chunk: the weight gradient (columns
         * recomputed) unless done directly, the data gradient (dcol, col2im) unless done
         * directly */
        int want_dw = !m->dir_dw[l], want_dx = l > 0 && !m->dir_bwd[l];
        for (size_t q = 0; (want_dw || want_dx) && q < n; q += m->chunk[l]) {
            size_t nc = n - q < m->chunk[l] ? n - q : m->chunk[l];
            float *dinp = NULL;
            if (want_dx) {
                dinp = dpl + q * hw * cin;
                memset(dinp, 0, nc * hw * cin * sizeof(float));
            }
            if (want_dw) {
                moeh_im2col3x3(m->col[slot], in + q * hw * cin, nc, s, s, cin);
                moeh_conv3x3_backward(dinp, m->dcol[slot], dw, db, dal + q * hw * oc, m->col[slot],
                                      w, nc, s, s, cin, oc);
                continue;
            }
            /* dcol (nc*hw,9cin) = dout (nc*hw,OC) @ w (OC,9cin), folded into dinp */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(nc * hw), (int)(9 * cin),
                        (int)oc, 1.0f, dal + q * hw * oc, (int)oc, w, (int)(9 * cin), 0.0f,
                        m->dcol[slot], (int)(9 * cin));
            moeh_col2im3x3_add(dinp, m->dcol[slot], nc, s, s, cin);
        }
        if (l > 0) {
            size_t sp = m->side[l - 1];
            relu_mask(dpl, m->pl[l - 1] + j0 * hw * cin, n * hw * cin);
            if (l == 1 && m->dw_pooled0) continue; /* the first layer's dW reads dpl directly */
            moeh_maxpool2_backward_set(m->da[l - 1] + j0 * sp * sp * cin, dpl,
                                       m->arg[l - 1] + j0 * hw * cin, n, sp, sp, cin);
        }
    }
}
