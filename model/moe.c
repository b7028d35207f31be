/* moe.c - MoE-Health and its baselines (see moeh_moe.h, docs/model.md).
 *
 * Data flow of one batch (B rows):
 *   per used modality m: gather the rows that have m -> encoder -> enc[m] (n_m,d)
 *   emb[m] (B,d) = enc[m] for rows with m, the learnable missing[m] for the others
 *   z (B,Dz) = [emb[m] for used m..., avail[m] for used m...]
 *   expert k: o[k] (B,d) = W2 relu(W1 z_k + b1) + b2 (z_k = z, or the columns of its modalities)
 *   routing w (B,E): learned gate (MoE), one-hot by combination (MoE warm-up), 1 (unimodal,
 *   joint), availability-normalised (late fusion)
 *   comb (B,d) = sum_k w[:,k] o[k];  logits (B,T) = heads(comb)
 * Backward runs the same path in reverse; encoders only see the rows that have their modality.
 * All buffers are carved from one arena at create time.
 *
 * This file: creation (parameter declaration, the arena layout, initialisation), accessors, and
 * the optimiser step (AdamW over the flat parameter buffer, sparse on the note embedding table).
 * moe_pass.c runs the forward and backward passes, moe_encoders.c holds the per-modality
 * encoders; moe_int.h defines moeh_moe_t for the three. */
#include "moe_int.h"

#include "moeh_nn.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- small helpers --------------------------------------------------------------------------- */
int moeh_moe_set_err(moeh_moe_t *m, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->err, sizeof m->err, fmt, ap);
    va_end(ap);
    return rc;
}

typedef struct {
    char *base;
    size_t off;
} arena_t;

static void *take(arena_t *a, size_t bytes)
{
    size_t o = (a->off + 63) & ~(size_t)63;
    a->off = o + (bytes ? bytes : 1);
    return a->base ? a->base + o : NULL;
}
#define TAKEF(a, n) ((float *)take((a), (n) * sizeof(float)))

/* ---- construction -----------------------------------------------------------------------------
 */
static int add(moeh_moe_t *m, int *idx, const char *name, const char *group, size_t d0, size_t d1)
{
    size_t shape[2] = {d0, d1};
    int rc = moeh_params_add(&m->p, name, group, d1 ? 2 : 1, shape);
    if (rc < 0) return moeh_moe_set_err(m, rc, "cannot declare parameter %s", name);
    *idx = rc;
    return 0;
}

static int declare(moeh_moe_t *m)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    size_t d = c->d_emb, dh = c->d_hidden;
    int rc = 0;
#define ADD(idx, name, group, d0, d1)                                                              \
    do {                                                                                           \
        if ((rc = add(m, &(idx), name, group, d0, d1)) != 0) return rc;                            \
    } while (0)
    if (m->early) {
        if (c->note_buckets)
            ADD(m->nt_emb, "notes.embed.weight", "encoder_notes", c->note_buckets, d);
        goto experts;
    }
    if (m->used & 1) {
        ADD(m->ehr_sw, "ehr.static.weight", "encoder_ehr", d, c->n_static);
        ADD(m->ehr_sb, "ehr.static.bias", "encoder_ehr", d, 0);
        ADD(m->gru_wih, "ehr.gru.weight_ih", "encoder_ehr", 3 * d, 3 * c->n_vars);
        ADD(m->gru_whh, "ehr.gru.weight_hh", "encoder_ehr", 3 * d, d);
        ADD(m->gru_bih, "ehr.gru.bias_ih", "encoder_ehr", 3 * d, 0);
        ADD(m->gru_bhh, "ehr.gru.bias_hh", "encoder_ehr", 3 * d, 0);
        ADD(m->ehr_fw, "ehr.fuse.weight", "encoder_ehr", d, 2 * d);
        ADD(m->ehr_fb, "ehr.fuse.bias", "encoder_ehr", d, 0);
    }
    if (m->used & 2) {
        if (c->note_buckets)
            ADD(m->nt_emb, "notes.embed.weight", "encoder_notes", c->note_buckets, d);
        ADD(m->nt_w, "notes.proj.weight", "encoder_notes", d, c->note_buckets ? d : c->note_dim);
        ADD(m->nt_b, "notes.proj.bias", "encoder_notes", d, 0);
    }
    if (m->used & 4) {
        size_t fin = c->img_dim;
        if (c->img_size) {
            static const char *wn[3] = {"img.conv1.weight", "img.conv2.weight", "img.conv3.weight"};
            static const char *bn[3] = {"img.conv1.bias", "img.conv2.bias", "img.conv3.bias"};
            size_t cin = 1;
            for (int l = 0; l < 3; l++) {
                size_t shape[4] = {c->cnn_ch[l], 3, 3, cin};
                rc = moeh_params_add(&m->p, wn[l], "encoder_img", 4, shape);
                if (rc < 0) return moeh_moe_set_err(m, rc, "cannot declare %s", wn[l]);
                m->im_cw[l] = rc;
                ADD(m->im_cb[l], bn[l], "encoder_img", c->cnn_ch[l], 0);
                cin = c->cnn_ch[l];
            }
            fin = c->cnn_ch[2];
        }
        ADD(m->im_w, "img.proj.weight", "encoder_img", d, fin);
        ADD(m->im_b, "img.proj.bias", "encoder_img", d, 0);
    }
    static const char *mn[3] = {"missing.ehr", "missing.notes", "missing.img"};
    for (int k = 0; k < MOEH_N_MODALITIES; k++)
        if ((m->used & (1 << k)) && !c->missing_zero) ADD(m->miss[k], mn[k], "missing", d, 0);
experts:
    for (size_t k = 0; k < m->n_exp; k++) {
        char g[32], n1[64], n2[64], n3[64], n4[64];
        snprintf(g, sizeof g, "expert_%zu", k);
        snprintf(n1, sizeof n1, "expert_%zu.fc1.weight", k);
        snprintf(n2, sizeof n2, "expert_%zu.fc1.bias", k);
        snprintf(n3, sizeof n3, "expert_%zu.fc2.weight", k);
        snprintf(n4, sizeof n4, "expert_%zu.fc2.bias", k);
        expert_t *e = &m->ex[k];
        ADD(e->w1, n1, g, dh, e->in_dim);
        ADD(e->b1, n2, g, dh, 0);
        ADD(e->w2, n3, g, d, dh);
        ADD(e->b2, n4, g, d, 0);
    }
    if (m->has_gate) {
        ADD(m->g_w1, "gate.fc1.weight", "gate", dh, m->Dz);
        ADD(m->g_b1, "gate.fc1.bias", "gate", dh, 0);
        ADD(m->g_w2, "gate.fc2.weight", "gate", m->n_exp, dh);
        ADD(m->g_b2, "gate.fc2.bias", "gate", m->n_exp, 0);
    }
    ADD(m->h_w, "heads.weight", "heads", c->n_tasks, d);
    ADD(m->h_b, "heads.bias", "heads", c->n_tasks, 0);
#undef ADD
    return 0;
}

/* Carves every buffer out of the arena (a->base NULL: only measures). */
static void layout(moeh_moe_t *m, arena_t *a)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    size_t B = c->max_batch, d = c->d_emb, dh = c->d_hidden, T = c->n_steps, F = c->n_vars;
    size_t E = m->n_exp, Tk = c->n_tasks;
    for (int k = 0; k < MOEH_N_MODALITIES; k++) {
        m->idx[k] = take(a, B * sizeof(size_t));
        m->enc[k] = TAKEF(a, B * d);
    }
    m->combo = take(a, B * sizeof(int));
    m->availf = TAKEF(a, B * 3);
    m->emb = TAKEF(a, 3 * B * d);
    m->demb = TAKEF(a, 3 * B * d);
    for (int k = 0; k < MOEH_N_MODALITIES; k++)
        m->denc[k] = TAKEF(a, B * d);
    if ((m->used & 1) && !m->early) {
        m->xs = TAKEF(a, B * c->n_static);
        m->s1 = TAKEF(a, B * d);
        m->tsx = TAKEF(a, B * T * 3 * F);
        m->hs = TAKEF(a, (T + 1) * B * d);
        m->xi = TAKEF(a, B * T * 3 * d);
        m->gates = TAKEF(a, T * B * 4 * d);
        m->hh = TAKEF(a, B * 3 * d);
        m->whhT = TAKEF(a, 3 * d * d);
        m->cat = TAKEF(a, B * 2 * d);
        m->dxi = TAKEF(a, B * T * 3 * d);
        m->dhh = TAKEF(a, T * B * 3 * d);
        m->dh = TAKEF(a, B * d);
        m->dcat = TAKEF(a, B * 2 * d);
        m->ds1 = TAKEF(a, B * d);
        m->dhT = TAKEF(a, B * d);
    }
    if (m->used & 2) {
        if (c->note_buckets) {
            m->bag = TAKEF(a, B * d);
            m->dbag = TAKEF(a, B * d);
            m->touched = take(a, c->note_buckets);
            m->rows = take(a, c->note_buckets * sizeof(uint32_t));
        } else {
            m->nv = TAKEF(a, B * c->note_dim);
        }
    }
    if ((m->used & 4) && !m->early) {
        if (c->img_size) {
            size_t S = c->img_size, cin = 1, maxcol = 0;
            m->x0 = TAKEF(a, B * S * S);
            for (int l = 0; l < 3; l++) {
                size_t s = S >> l, hw = s * s;
                m->side[l] = s;
                /* ~256 KiB of columns per chunk (at least one image): im2col, the sgemms and col2im
                 * run in cache, and backward recomputes the columns instead of keeping them */
                size_t per = hw * 9 * cin, ch = (1u << 16) / per;
                ch = ch < 1 ? 1 : (ch > B ? B : ch);
                m->chunk[l] = ch;
                if (ch * per > maxcol) maxcol = ch * per;
                m->a[l] = TAKEF(a, B * hw * c->cnn_ch[l]);
                m->da[l] = TAKEF(a, B * hw * c->cnn_ch[l]);
                if (l < 2) {
                    m->pl[l] = TAKEF(a, B * hw / 4 * c->cnn_ch[l]);
                    m->dpl[l] = TAKEF(a, B * hw / 4 * c->cnn_ch[l]);
                    m->arg[l] = take(a, B * hw / 4 * c->cnn_ch[l]);
                }
                cin = c->cnn_ch[l];
            }
            size_t maxpad = 0, maxwt = 0, maxrows = 0;
            cin = 1;
            for (int l = 0; l < 3; l++) {
                size_t s = S >> l, oc = c->cnn_ch[l];
                m->dir_fwd[l] = (uint8_t)moeh_conv3x3_direct_ok(oc);
                m->dir_bwd[l] = (uint8_t)(l > 0 && moeh_conv3x3_direct_ok(cin));
                m->dir_dw[l] = (uint8_t)moeh_conv3x3_direct_dw_ok(cin, oc);
                size_t pf = moeh_conv3x3_pad_len(s, s, cin), pb = moeh_conv3x3_pad_len(s, s, oc);
                maxpad = pf > maxpad ? pf : maxpad;
                maxpad = pb > maxpad ? pb : maxpad;
                maxwt = 9 * cin * oc > maxwt ? 9 * cin * oc : maxwt;
                maxrows = 2 * s * oc > maxrows ? 2 * s * oc : maxrows;
                cin = oc;
            }
            m->dw_pooled0 =
                (uint8_t)(m->dir_dw[0] && moeh_conv3x3_direct_dw_pooled_ok(1, c->cnn_ch[0]));
            for (int w = 0; w < 2; w++) { /* one scratch set per image worker */
                m->col[w] = TAKEF(a, maxcol);
                m->dcol[w] = TAKEF(a, maxcol);
                m->pad[w] = TAKEF(a, maxpad);
                m->wt[w] = TAKEF(a, maxwt);
                m->prow[w] = TAKEF(a, maxrows);
            }
            m->gp = TAKEF(a, B * c->cnn_ch[2]);
            m->dgp = TAKEF(a, B * c->cnn_ch[2]);
        } else {
            m->iv = TAKEF(a, B * c->img_dim);
        }
        int gi = moeh_params_group_index(&m->p, "encoder_img");
        m->gimg = TAKEF(a, gi >= 0 ? m->p.group_len[gi] : 0);
    }
    m->z = TAKEF(a, B * m->Dz);
    m->dz = TAKEF(a, B * m->Dz);
    size_t maxin = m->Dz;
    for (size_t k = 0; k < E; k++) {
        if (m->ex[k].restricted) m->zk[k] = TAKEF(a, B * m->ex[k].in_dim);
        m->h[k] = TAKEF(a, B * dh);
        m->o[k] = TAKEF(a, B * d);
        m->keep[k] = take(a, B * dh);
    }
    m->dzk = TAKEF(a, B * maxin);
    m->dhk = TAKEF(a, B * dh);
    m->dok = TAKEF(a, B * d);
    m->gh = TAKEF(a, B * dh);
    if (c->gate_no_avail) m->gin = TAKEF(a, B * m->Dz);
    if (c->missing_zero) m->zero_d = TAKEF(a, d); /* the arena starts zeroed */
    m->dgh = TAKEF(a, B * dh);
    m->glog = TAKEF(a, B * E);
    m->gw = TAKEF(a, B * E);
    m->probs = TAKEF(a, B * E);
    m->w = TAKEF(a, B * E);
    m->dw = TAKEF(a, B * E);
    m->dprobs = TAKEF(a, B * E);
    m->dglog = TAKEF(a, B * E);
    m->sel = take(a, B * E);
    m->comb = TAKEF(a, B * d);
    m->dcomb = TAKEF(a, B * d);
    m->logits = TAKEF(a, B * Tk);
    m->dlogits = TAKEF(a, B * Tk);
}

static void init_uniform(float *w, size_t n, size_t fan_in, moeh_rng_t *r)
{
    float bound = 1.0f / sqrtf((float)fan_in);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)((2.0 * moeh_rng_uniform(r) - 1.0) * bound);
}

/* PyTorch-like initialisation: linear/conv weight and bias uniform +-1/sqrt(fan_in) of the
 * layer, GRU +-1/sqrt(hidden), embeddings N(0,1), missingness embeddings
 * N(0, cfg.missing_init^2). */
static void init_params(moeh_moe_t *m)
{
    moeh_params_t *p = &m->p;
    moeh_rng_t r;
    moeh_rng_seed(&r, m->cfg.seed);
    for (size_t i = 0; i < p->n_views; i++) {
        const moeh_param_view_t *v = &p->views[i];
        float *w = p->w + v->offset;
        const char *nm = v->name;
        if (strncmp(nm, "missing.", 8) == 0) {
            for (size_t j = 0; j < v->numel; j++)
                w[j] = m->cfg.missing_init * (float)moeh_rng_normal(&r);
        } else if (strcmp(nm, "notes.embed.weight") == 0) {
            for (size_t j = 0; j < v->numel; j++)
                w[j] = (float)moeh_rng_normal(&r);
        } else if (strncmp(nm, "ehr.gru.", 8) == 0) {
            init_uniform(w, v->numel, m->cfg.d_emb, &r);
        } else {
            /* a bias takes the fan-in of the weight declared just before it */
            const moeh_param_view_t *wv = v->ndim == 1 && i > 0 ? &p->views[i - 1] : v;
            size_t fan_in = wv->numel / wv->shape[0];
            init_uniform(w, v->numel, fan_in ? fan_in : 1, &r);
        }
    }
}

int moeh_moe_create(const moeh_moe_cfg_t *cfg, moeh_moe_t **out, moeh_err_t *err)
{
    *out = NULL;
    const moeh_moe_cfg_t *c = cfg;
    int rc = moeh_moe_cfg_validate(c, err);
    if (rc) return rc;
    uint8_t used = moeh_moe_arch_modalities(c->arch);
    moeh_moe_t *m = calloc(1, sizeof *m);
    if (!m) return -ENOMEM;
    m->cfg = *c;
    m->used = used;
    m->n_used = mods_count(used);
    m->Dz = m->n_used * (c->d_emb + 1);
    if (c->arch == MOEH_ARCH_EARLY) {
        /* [static | mean value, mean mask, mean delta over the hours | note bag or vector |
         *  image pooled to 8x8 or vector | availability] */
        m->early = 1;
        m->eo_note = c->n_static + 3 * c->n_vars;
        m->eo_img = m->eo_note + (c->note_buckets ? c->d_emb : c->note_dim);
        m->Dz = m->eo_img + (c->img_size ? 64 : c->img_dim) + 3;
    }
    switch (c->arch) {
    case MOEH_ARCH_MOE:
        m->n_exp = 7;
        m->has_gate = 1;
        break;
    case MOEH_ARCH_LATE:
        m->n_exp = 3;
        break;
    default:
        m->n_exp = 1;
        break;
    }
    for (size_t k = 0; k < m->n_exp; k++) {
        expert_t *e = &m->ex[k];
        e->mods = c->arch == MOEH_ARCH_LATE ? (uint8_t)(1u << k) : used;
        e->restricted = e->mods != used;
        e->in_dim = m->early ? m->Dz : mods_count(e->mods) * (c->d_emb + 1);
    }
    moeh_params_init(&m->p);
    rc = declare(m);
    if (rc) {
        moeh_errf(err, rc, "%s", m->err);
        goto fail;
    }
    if ((rc = moeh_params_finalize(&m->p)) != 0) goto fail;
    arena_t a = {NULL, 0};
    layout(m, &a);
    rc = -ENOMEM;
    if (!(m->arena = aligned_alloc(64, (a.off + 63) & ~(size_t)63))) goto fail;
    memset(m->arena, 0, a.off);
    a = (arena_t){m->arena, 0};
    layout(m, &a);
    init_params(m);
    for (int k = 0; k < MOEH_N_MODALITIES; k++) {
        static const char *gn[3] = {"encoder_ehr", "encoder_notes", "encoder_img"};
        m->grp_enc[k] = moeh_params_group_index(&m->p, gn[k]);
    }
    m->grp_missing = moeh_params_group_index(&m->p, "missing");
    m->grp_gate = moeh_params_group_index(&m->p, "gate");
    m->grp_heads = moeh_params_group_index(&m->p, "heads");
    for (size_t k = 0; k < m->n_exp; k++) {
        char g[32];
        snprintf(g, sizeof g, "expert_%zu", k);
        m->ex[k].group = moeh_params_group_index(&m->p, g);
    }
    moeh_rng_seed(&m->rng, c->seed ^ 0x9e3779b97f4a7c15ull);
    *out = m;
    return 0;
fail:
    moeh_moe_destroy(&m);
    return rc;
}

void moeh_moe_destroy(moeh_moe_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_moe_t *m = *self_p;
    moeh_params_free(&m->p);
    free(m->arena);
    free(m);
    *self_p = NULL;
}

moeh_params_t *moeh_moe_params(moeh_moe_t *m)
{
    return &m->p;
}
const moeh_moe_cfg_t *moeh_moe_cfg(const moeh_moe_t *m)
{
    return &m->cfg;
}
size_t moeh_moe_n_experts(const moeh_moe_t *m)
{
    return m->n_exp;
}
void moeh_moe_set_phase(moeh_moe_t *m, moeh_phase_t phase)
{
    m->phase = phase;
}
const float *moeh_moe_last_gate(const moeh_moe_t *m)
{
    return m->w;
}
const float *moeh_moe_last_logits(const moeh_moe_t *m)
{
    return m->logits;
}
const char *moeh_moe_last_error(const moeh_moe_t *m)
{
    return m->err;
}
const uint64_t *moeh_moe_group_samples(const moeh_moe_t *m)
{
    return m->group_samples;
}
void moeh_moe_reset_group_samples(moeh_moe_t *m)
{
    memset(m->group_samples, 0, sizeof m->group_samples);
}

/* ---- optimiser ---------------------------------------------------------------------------------
 */
/* AdamW on [off, off+len), gradients scaled by `scale`, then the gradient is zeroed (fused so
 * the optimiser reads g once). */
MOEH_CLONES static void adamw_range(moeh_params_t *p, const moeh_adamw_cfg_t *c, float bc1,
                                    float bc2, float scale, size_t off, size_t len)
{
    float *restrict w = p->w + off, *restrict mm = p->m + off, *restrict v = p->v + off;
    float *restrict g = p->g + off;
    float b1 = c->beta1, b2 = c->beta2, lr = c->lr, wd = c->weight_decay, eps = c->eps;
    float ib1 = 1.0f / bc1, ib2 = 1.0f / bc2;
    for (size_t i = 0; i < len; i++) {
        float gi = g[i] * scale;
        mm[i] = b1 * mm[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] -= lr * ((mm[i] * ib1) / (sqrtf(v[i] * ib2) + eps) + wd * w[i]);
        g[i] = 0.0f;
    }
}

/* Sum of squares with 8 independent float lanes (vectorisable without reassociation flags),
 * folded into double per 4096-element block. */
MOEH_CLONES static double sumsq(const float *restrict g, size_t n)
{
    double s = 0;
    for (size_t i0 = 0; i0 < n; i0 += 4096) {
        size_t i1 = i0 + 4096 < n ? i0 + 4096 : n, i = i0;
        float acc[8] = {0};
        for (; i + 8 <= i1; i += 8)
            for (int k = 0; k < 8; k++)
                acc[k] += g[i + k] * g[i + k];
        for (; i < i1; i++)
            acc[0] += g[i] * g[i];
        for (int k = 0; k < 8; k++)
            s += acc[k];
    }
    return s;
}

/* Calls fn(m, row) for every embedding-bag row touched since the last reset: from the list
 * when few, by scanning the flags in row order when many (sequential memory access). */
#define FOR_TOUCHED_ROWS(m, row, body)                                                             \
    do {                                                                                           \
        if ((m)->n_rows * 16 < (m)->cfg.note_buckets) {                                            \
            for (size_t i_ = 0; i_ < (m)->n_rows; i_++) {                                          \
                size_t row = (m)->rows[i_];                                                        \
                body;                                                                              \
            }                                                                                      \
        } else {                                                                                   \
            for (size_t row = 0; row < (m)->cfg.note_buckets; row++)                               \
                if ((m)->touched[row]) {                                                           \
                    body;                                                                          \
                }                                                                                  \
        }                                                                                          \
    } while (0)

static void clear_touched(moeh_moe_t *m)
{
    if (m->n_rows * 16 < m->cfg.note_buckets)
        for (size_t r = 0; r < m->n_rows; r++)
            m->touched[m->rows[r]] = 0;
    else
        memset(m->touched, 0, m->cfg.note_buckets);
    m->n_rows = 0;
}

void moeh_moe_zero_grad(moeh_moe_t *m)
{
    moeh_params_t *p = &m->p;
    if (!(m->used & 2) || !m->cfg.note_buckets) {
        moeh_params_zero_grad(p);
        return;
    }
    const moeh_param_view_t *ev = &p->views[m->nt_emb];
    size_t eo = ev->offset, en = ev->numel, d = m->cfg.d_emb;
    memset(p->g, 0, eo * sizeof(float));
    memset(p->g + eo + en, 0, (p->n - eo - en) * sizeof(float));
    FOR_TOUCHED_ROWS(m, row, memset(p->g + eo + row * d, 0, d * sizeof(float)));
    clear_touched(m);
}

/* Rewrites m->rows as the touched rows in increasing order (a scan of the flags: 64 KiB for
 * the default table), so that the optimiser walks the table forwards and can prefetch. */
static void sort_touched(moeh_moe_t *m)
{
    size_t n = 0;
    for (size_t row = 0; row < m->cfg.note_buckets; row++)
        if (m->touched[row]) m->rows[n++] = (uint32_t)row;
    MOEH_ASSERT(n == m->n_rows);
}

/* Rows are 512 B apart at best and scattered: request ROW_AHEAD rows ahead. */
enum { ROW_AHEAD = 4 };
static inline void prefetch_rows(const float *base, size_t row, size_t d, int write)
{
    for (size_t q = 0; q < d; q += 16) {
        if (write)
            __builtin_prefetch(base + row * d + q, 1, 3);
        else
            __builtin_prefetch(base + row * d + q, 0, 3);
    }
}

/* Touched embedding rows with index in [lo, hi) (m->rows sorted): sum of squares of their
 * gradients. */
MOEH_CLONES static double rows_sumsq(moeh_moe_t *m, size_t eo, size_t lo, size_t hi)
{
    const float *g = m->p.g + eo;
    size_t d = m->cfg.d_emb;
    double ss = 0;
    for (size_t i = 0; i < m->n_rows; i++) {
        size_t row = m->rows[i];
        if (row < lo || row >= hi) continue;
        if (i + ROW_AHEAD < m->n_rows) prefetch_rows(g, m->rows[i + ROW_AHEAD], d, 0);
        ss += sumsq(g + row * d, d);
    }
    return ss;
}

/* AdamW on the touched embedding rows with index in [lo, hi) (m->rows sorted). */
MOEH_CLONES static void rows_adamw(moeh_moe_t *m, const moeh_adamw_cfg_t *c, float bc1, float bc2,
                                   float scale, size_t eo, size_t lo, size_t hi)
{
    size_t d = m->cfg.d_emb;
    moeh_params_t *p = &m->p;
    for (size_t i = 0; i < m->n_rows; i++) {
        size_t row = m->rows[i];
        if (row < lo || row >= hi) continue;
        if (i + ROW_AHEAD < m->n_rows) {
            size_t nx = m->rows[i + ROW_AHEAD];
            prefetch_rows(p->w + eo, nx, d, 1), prefetch_rows(p->m + eo, nx, d, 1);
            prefetch_rows(p->v + eo, nx, d, 1), prefetch_rows(p->g + eo, nx, d, 1);
        }
        adamw_range(p, c, bc1, bc2, scale, eo + row * d, d);
    }
}

void moeh_moe_adamw_step(moeh_moe_t *m, const moeh_adamw_cfg_t *c, uint64_t step)
{
    MOEH_ASSERT(step >= 1);
    double t_opt = mono_s();
    moeh_params_t *p = &m->p;
    float bc1 = 1.0f - powf(c->beta1, (float)step), bc2 = 1.0f - powf(c->beta2, (float)step);
    int sparse = (m->used & 2) && m->cfg.note_buckets;
    size_t eo = p->n, en = 0, V = sparse ? m->cfg.note_buckets : 0;
    if (sparse) eo = p->views[m->nt_emb].offset, en = p->views[m->nt_emb].numel;
    size_t tail = p->n - eo - en; /* dense floats after the embedding table */
    /* with threads >= 2: worker 0 takes the dense tensors and the first third of the rows,
     * worker 1 the other two thirds (partial sums added in a fixed order: deterministic) */
    int par = m->cfg.threads >= 2 && sparse;
    size_t cut = V / 3;
    if (sparse) sort_touched(m);
    float scale = 1.0f;
    if (c->clip > 0) {
        double s0 = 0, s1 = 0;
        if (par) {
#pragma omp parallel sections num_threads(2)
            {
#pragma omp section
                s0 = sumsq(p->g, eo) + sumsq(p->g + eo + en, tail) + rows_sumsq(m, eo, 0, cut);
#pragma omp section
                s1 = rows_sumsq(m, eo, cut, V);
            }
        } else {
            s0 = sumsq(p->g, eo) + (sparse ? sumsq(p->g + eo + en, tail) : 0) +
                 (sparse ? rows_sumsq(m, eo, 0, V) : 0);
        }
        double norm = sqrt(s0 + s1);
        if (norm > c->clip) scale = (float)(c->clip / norm);
    }
    if (par) {
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            {
                adamw_range(p, c, bc1, bc2, scale, 0, eo);
                adamw_range(p, c, bc1, bc2, scale, eo + en, tail);
                rows_adamw(m, c, bc1, bc2, scale, eo, 0, cut);
            }
#pragma omp section
            rows_adamw(m, c, bc1, bc2, scale, eo, cut, V);
        }
    } else {
        adamw_range(p, c, bc1, bc2, scale, 0, eo);
        if (sparse) {
            adamw_range(p, c, bc1, bc2, scale, eo + en, tail);
            rows_adamw(m, c, bc1, bc2, scale, eo, 0, V);
        }
    }
    if (sparse) clear_touched(m);
    m->prof[8] += mono_s() - t_opt;
}

static const char *const PROF_NAMES[MOEH_PROF_N] = {"ehr_fwd",   "notes_fwd", "img_fwd",
                                                    "mix_fwd",   "mix_bwd",   "ehr_bwd",
                                                    "notes_bwd", "img_bwd",   "adamw"};

const double *moeh_moe_profile(const moeh_moe_t *m, const char *const **names)
{
    if (names) *names = PROF_NAMES;
    return m->prof;
}

void moeh_moe_profile_reset(moeh_moe_t *m)
{
    memset(m->prof, 0, sizeof m->prof);
}

float moeh_lr_schedule(float base, uint64_t step, uint64_t warmup, uint64_t total, float min_ratio)
{
    if (warmup && step <= warmup) return base * (float)step / (float)warmup;
    if (step >= total || total <= warmup) return base * min_ratio;
    double t = (double)(step - warmup) / (double)(total - warmup);
    return (float)(base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + cos(M_PI * t))));
}
