/* moe_int.h - private to model/moe*.c (not installed, not included elsewhere): the definition
 * of moeh_moe_t (parameter view indices and the workspace carved from one arena at create time),
 * the small helpers the MoE files share (static inline, so hot loops keep them inlined) and the
 * per-modality encoders of moe_encoders.c that moe_pass.c drives. */
#ifndef MOEH_MOE_INT_H
#define MOEH_MOE_INT_H

#include "moeh_moe.h"

#include "layers.h"

#include <stddef.h>
#include <stdint.h>
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
    float *gin;    /* gate input: z with the availability columns zeroed (gate_no_avail) */
    float *zero_d; /* d zeros: an absent modality's encoding under missing_zero */
    float *gh, *glog, *gw, *probs, *w, *dw, *dprobs, *dglog, *dgh;
    uint8_t *sel;
    float *comb, *dcomb, *logits, *dlogits;
};

static inline double mono_s(void)
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

/* Formats an error message into m->err (moeh_moe_last_error) and returns rc (moe.c). */
int moeh_moe_set_err(moeh_moe_t *m, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* d (n) = 0 where the forward ReLU output out is <= 0 (the ReLU backward, in place). */
MOEH_CLONES static inline void relu_mask(float *restrict d, const float *restrict out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (out[i] <= 0) d[i] = 0;
}

static inline size_t mods_count(uint8_t mods)
{
    return (size_t)((mods & 1) + ((mods >> 1) & 1) + ((mods >> 2) & 1));
}

/* ---- encoders (moe_encoders.c) ----------------------------------------------------------------
 * Each runs on the rows gathered into m->idx[k] (m->n_idx[k] of them) and writes or reads
 * m->enc[k]; backward adds into the parameter gradients. */
void moeh_enc_ehr_forward(moeh_moe_t *m, const moeh_batch_t *b);
/* denc (n,d): gradient of the encoder output; consumed (modified). */
void moeh_enc_ehr_backward(moeh_moe_t *m, float *denc);
void moeh_enc_notes_forward(moeh_moe_t *m, const moeh_batch_t *b);
void moeh_enc_notes_backward(moeh_moe_t *m, const moeh_batch_t *b, float *denc);
/* Image encoder on the gathered images [j0, j1) with scratch slot `slot` (0 or 1): two threads
 * may run disjoint ranges in different slots. */
void moeh_enc_img_forward(moeh_moe_t *m, const moeh_batch_t *b, size_t j0, size_t j1, int slot);
void moeh_enc_img_backward(moeh_moe_t *m, float *denc_all, size_t j0, size_t j1, int slot);
/* Adds slot 1's private image-encoder gradients into the store and zeroes them. */
void moeh_enc_img_merge_grads(moeh_moe_t *m);

#endif
