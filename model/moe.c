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
 * All buffers are carved from one arena at create time. */
#include "moeh_moe.h"

#include "layers.h"
#include "moeh_nn.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

typedef struct {
    size_t in_dim;
    uint8_t mods; /* modalities (bitmask) whose columns the expert sees */
    int restricted;
    int w1, b1, w2, b2, group;
} expert_t;

struct moeh_moe {
    moeh_moe_cfg_t cfg;
    moeh_params_t p;
    uint8_t used; /* modalities with an encoder (bitmask) */
    size_t n_used, Dz, n_exp;
    expert_t ex[MOEH_MAX_EXPERTS];
    int has_gate;
    int early;              /* early fusion: z is built from the inputs, no encoders */
    size_t eo_note, eo_img; /* early fusion: column offsets of notes and image in z */
    moeh_phase_t phase;
    /* view indices */
    int ehr_sw, ehr_sb, gru_wih, gru_whh, gru_bih, gru_bhh, ehr_fw, ehr_fb;
    int nt_emb, nt_w, nt_b;
    int im_cw[3], im_cb[3], im_w, im_b;
    int miss[MOEH_N_MODALITIES];
    int g_w1, g_b1, g_w2, g_b2, h_w, h_b;
    int grp_enc[MOEH_N_MODALITIES], grp_missing, grp_gate, grp_heads;
    uint64_t group_samples[MOEH_MAX_GROUPS];
    moeh_rng_t rng;           /* dropout */
    double prof[MOEH_PROF_N]; /* seconds per phase, accumulated (moeh_moe_profile) */
    char err[MOEH_ERRMSG_MAX];

    /* ---- workspace (arena) ---- */
    void *arena;
    size_t *idx[MOEH_N_MODALITIES], n_idx[MOEH_N_MODALITIES];
    int *combo;
    float *availf;
    float *enc[MOEH_N_MODALITIES], *emb, *demb, *denc[MOEH_N_MODALITIES];
    /* EHR */
    float *xs, *s1, *tsx, *hs, *xi, *gates, *hh, *whhT, *cat, *dxi, *dhh, *dh, *dcat, *ds1, *dhT;
    /* notes */
    float *bag, *nv, *dbag;
    uint8_t *touched;
    uint32_t *rows;
    size_t n_rows;
    /* image */
    float *x0, *col[2], *a[3], *pl[2], *gp, *iv, *da[3], *dpl[2], *dcol[2], *dgp;
    float *gimg;     /* private encoder_img gradients of the second image worker (threads >= 2) */
    size_t chunk[3]; /* images per im2col chunk of conv layer l (col stays in cache) */
    /* direct (AVX-512) kernels per layer: forward, data gradient, weight gradient; with
     * per-worker scratch for a padded image and the transposed weights */
    uint8_t dir_fwd[3], dir_bwd[3], dir_dw[3];
    uint8_t dw_pooled0; /* first layer's weight gradient straight from the pooled gradient */
    float *pad[2], *wt[2], *prow[2];
    uint8_t *arg[2];
    size_t side[3]; /* spatial side of conv layer l */
    /* fusion, experts, gate, heads */
    float *z, *dz, *zk[MOEH_MAX_EXPERTS], *h[MOEH_MAX_EXPERTS], *o[MOEH_MAX_EXPERTS];
    uint8_t *keep[MOEH_MAX_EXPERTS];
    float *dzk, *dhk, *dok;
    float *gh, *glog, *gw, *probs, *w, *dw, *dprobs, *dglog, *dgh;
    uint8_t *sel;
    float *comb, *dcomb, *logits, *dlogits;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#define PROF(m, i, stmt)                                                                           \
    do {                                                                                           \
        double t0_ = mono_s();                                                                     \
        stmt;                                                                                      \
        (m)->prof[i] += mono_s() - t0_;                                                            \
    } while (0)

/* ---- small helpers --------------------------------------------------------------------------- */
static int set_err(moeh_moe_t *m, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(moeh_moe_t *m, int rc, const char *fmt, ...)
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

MOEH_CLONES static void relu_mask(float *restrict d, const float *restrict out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (out[i] <= 0) d[i] = 0;
}

static size_t mods_count(uint8_t mods)
{
    return (size_t)((mods & 1) + ((mods >> 1) & 1) + ((mods >> 2) & 1));
}

/* ---- construction -----------------------------------------------------------------------------
 */
static int add(moeh_moe_t *m, int *idx, const char *name, const char *group, size_t d0, size_t d1)
{
    size_t shape[2] = {d0, d1};
    int rc = moeh_params_add(&m->p, name, group, d1 ? 2 : 1, shape);
    if (rc < 0) return set_err(m, rc, "cannot declare parameter %s", name);
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
                if (rc < 0) return set_err(m, rc, "cannot declare %s", wn[l]);
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
        if (m->used & (1 << k)) ADD(m->miss[k], mn[k], "missing", d, 0);
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

/* ---- batch validation ---------------------------------------------------------------------------
 */
static int validate(moeh_moe_t *m, const moeh_batch_t *b, int need_labels)
{
    const moeh_moe_cfg_t *c = &m->cfg;
    if (b->B == 0 || b->B > c->max_batch)
        return set_err(m, -EINVAL, "batch: B = %zu, expected 1..%zu", b->B, c->max_batch);
    if (!b->avail) return set_err(m, -EINVAL, "batch: avail is NULL");
    if (need_labels && (!b->y || !b->y_mask))
        return set_err(m, -EINVAL, "batch: labels or label mask missing");
    size_t have[3] = {0, 0, 0};
    for (size_t i = 0; i < b->B; i++)
        for (int k = 0; k < 3; k++) {
            if (b->avail[i * 3 + k] > 1)
                return set_err(m, -EINVAL, "batch: avail[%zu][%d] = %u, expected 0/1", i, k,
                               b->avail[i * 3 + k]);
            have[k] += b->avail[i * 3 + k];
        }
    if ((m->used & 1) && have[0] && (!b->static_x || !b->ts_value || !b->ts_mask || !b->ts_delta))
        return set_err(m, -EINVAL, "batch: EHR rows present but static/ts arrays are NULL");
    if ((m->used & 2) && have[1]) {
        if (c->note_buckets) {
            if (!b->note_off || !b->note_ids)
                return set_err(m, -EINVAL, "batch: note rows present but note_off/ids NULL");
            for (size_t i = 0; i < b->B; i++) {
                if (!b->avail[i * 3 + 1]) continue;
                if (b->note_off[i + 1] < b->note_off[i])
                    return set_err(m, -EINVAL, "batch: note_off decreases at row %zu", i);
                for (uint64_t j = b->note_off[i]; j < b->note_off[i + 1]; j++)
                    if (b->note_ids[j] >= c->note_buckets)
                        return set_err(m, -EINVAL, "batch: note id %u at row %zu >= %zu buckets",
                                       b->note_ids[j], i, c->note_buckets);
            }
        } else if (!b->note_vec) {
            return set_err(m, -EINVAL, "batch: note rows present but note_vec is NULL");
        }
    }
    if ((m->used & 4) && have[2] &&
        !(c->img_size ? (const void *)b->img : (const void *)b->img_vec))
        return set_err(m, -EINVAL, "batch: image rows present but the image array is NULL");
    return 0;
}

/* ---- encoders
 * ------------------------------------------------------------------------------------ */
static void ehr_forward(moeh_moe_t *m, const moeh_batch_t *b)
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
static void ehr_backward(moeh_moe_t *m, float *denc)
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

static void notes_forward(moeh_moe_t *m, const moeh_batch_t *b)
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

static void notes_backward(moeh_moe_t *m, const moeh_batch_t *b, float *denc)
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

static void img_merge_grads(moeh_moe_t *m)
{
    moeh_params_t *p = &m->p;
    size_t off = p->group_off[m->grp_enc[2]], len = p->group_len[m->grp_enc[2]];
    for (size_t i = 0; i < len; i++) {
        p->g[off + i] += m->gimg[i];
        m->gimg[i] = 0.0f;
    }
}

/* Image encoder forward on the gathered images [j0, j1) using scratch slot `slot`. */
static void img_forward(moeh_moe_t *m, const moeh_batch_t *b, size_t j0, size_t j1, int slot)
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
static void img_backward(moeh_moe_t *m, float *denc_all, size_t j0, size_t j1, int slot)
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
                if (m->n_idx[0]) PROF(m, 0, ehr_forward(m, b));
                if (m->n_idx[1]) PROF(m, 1, notes_forward(m, b));
                img_forward(m, b, 0, split, 0);
            }
#pragma omp section
            PROF(m, 2, img_forward(m, b, split, ni, 1));
        }
    } else {
        if (m->n_idx[0]) PROF(m, 0, ehr_forward(m, b));
        if (m->n_idx[1]) PROF(m, 1, notes_forward(m, b));
        if (ni) PROF(m, 2, img_forward(m, b, 0, ni, 0));
    }
    t_mix = mono_s();
    /* emb[k] (B,d): encoder output or the missingness embedding; z (B,Dz) */
    size_t pz = 0, az = m->n_used * d;
    for (int k = 0; k < 3; k++) {
        if (!(m->used & (1 << k))) continue;
        float *emb = m->emb + (size_t)k * B * d;
        const float *miss = moeh_params_w(p, m->miss[k]);
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
        moeh_linear_forward(m->gh, m->z, moeh_params_w(p, m->g_w1), moeh_params_w(p, m->g_b1), B,
                            Dz, dh);
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
                             m->z, moeh_params_w(p, m->g_w1), B, Dz, dh);
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
        float *dmiss = moeh_params_g(p, m->miss[k]);
        size_t j = 0;
        for (size_t i = 0; i < B; i++) {
            const float *src = m->dz + i * Dz + pz;
            if (j < m->n_idx[k] && m->idx[k][j] == i) {
                memcpy(m->denc[k] + (j++) * d, src, d * sizeof(float));
            } else {
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
                if (m->n_idx[0]) PROF(m, 5, ehr_backward(m, m->denc[0]));
                if (m->n_idx[1]) PROF(m, 6, notes_backward(m, b, m->denc[1]));
                img_backward(m, m->denc[2], 0, split, 0);
            }
#pragma omp section
            PROF(m, 7, img_backward(m, m->denc[2], split, ni, 1));
        }
        img_merge_grads(m);
    } else {
        if (m->n_idx[0]) PROF(m, 5, ehr_backward(m, m->denc[0]));
        if (m->n_idx[1]) PROF(m, 6, notes_backward(m, b, m->denc[1]));
        if (ni) PROF(m, 7, img_backward(m, m->denc[2], 0, ni, 0));
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
