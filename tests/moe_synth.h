/* moe_synth.h - a small generated multimodal problem for the model tests and benchmarks.
 *
 * Each row has three latent factors u_ehr, u_notes, u_img ~ N(0,1). Task t's label is
 * Bernoulli(sigmoid(s * (u_ehr + u_notes + u_img) + shift_t)), so every modality carries a third
 * of the signal and fusion can win. The EHR modality encodes u_ehr in a static feature and in
 * the trend of one hourly variable; notes draw "positive" token ids with probability
 * sigmoid(2 u_notes); images hold a blob whose brightness grows with u_img. Modalities are
 * missing at random (independently, with the given probabilities). Deterministic from a seed. */
#ifndef MOEH_TEST_MOE_SYNTH_H
#define MOEH_TEST_MOE_SYNTH_H

#include "moeh_moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef SYNTH_TOKENS
#define SYNTH_TOKENS 24 /* hashed uni/bi-gram ids per note */
#endif

typedef struct {
    size_t N, Fs, F, T, S, n_tasks, Dn, Di, tokens_per_note;
    float *static_x, *ts_value, *ts_mask, *ts_delta, *note_vec, *img_vec, *y, *u;
    uint64_t *note_off;
    uint32_t *note_ids;
    uint8_t *img, *avail, *y_mask;
} synth_t;

static inline void synth_free(synth_t *s)
{
    free(s->static_x), free(s->ts_value), free(s->ts_mask), free(s->ts_delta);
    free(s->note_vec), free(s->img_vec), free(s->y), free(s->u), free(s->note_off);
    free(s->note_ids), free(s->img), free(s->avail), free(s->y_mask);
    memset(s, 0, sizeof *s);
}

static inline double synth_sig(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* Fills s for N rows shaped by cfg (precomputed note/image vectors when cfg says so).
 * p_avail: probability each modality is present. strength: s in the label model.
 * Returns 0 or -ENOMEM. */
static inline int synth_make(synth_t *s, const moeh_moe_cfg_t *cfg, size_t N,
                             const double p_avail[3], double strength, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->N = N, s->Fs = cfg->n_static, s->F = cfg->n_vars, s->T = cfg->n_steps;
    s->S = cfg->img_size, s->n_tasks = cfg->n_tasks, s->tokens_per_note = SYNTH_TOKENS;
    s->Dn = cfg->note_buckets ? 0 : cfg->note_dim;
    s->Di = cfg->img_size ? 0 : cfg->img_dim;
    size_t TF = s->T * s->F, K = s->tokens_per_note, SS = s->S * s->S;
    s->static_x = calloc(N * s->Fs + 1, 4);
    s->ts_value = calloc(N * TF + 1, 4);
    s->ts_mask = calloc(N * TF + 1, 4);
    s->ts_delta = calloc(N * TF + 1, 4);
    s->note_vec = calloc(N * s->Dn + 1, 4);
    s->img_vec = calloc(N * s->Di + 1, 4);
    s->y = calloc(N * s->n_tasks, 4);
    s->u = calloc(N * 3, 4);
    s->note_off = calloc(N + 1, 8);
    s->note_ids = calloc(N * K + 1, 4);
    s->img = calloc(N * SS + 1, 1);
    s->avail = calloc(N * 3, 1);
    s->y_mask = calloc(N * s->n_tasks, 1);
    if (!s->static_x || !s->ts_value || !s->ts_mask || !s->ts_delta || !s->note_vec ||
        !s->img_vec || !s->y || !s->u || !s->note_off || !s->note_ids || !s->img || !s->avail ||
        !s->y_mask) {
        synth_free(s);
        return -ENOMEM;
    }
    moeh_rng_t r;
    moeh_rng_seed(&r, seed);
    size_t H = cfg->note_buckets ? cfg->note_buckets : 1;
    for (size_t i = 0; i < N; i++) {
        double u[3];
        for (int k = 0; k < 3; k++) {
            u[k] = moeh_rng_normal(&r);
            s->u[i * 3 + k] = (float)u[k];
            s->avail[i * 3 + k] = moeh_rng_uniform(&r) < p_avail[k];
        }
        for (size_t t = 0; t < s->n_tasks; t++) {
            double z = strength * (u[0] + u[1] + u[2]) - 0.5 * (double)t;
            s->y[i * s->n_tasks + t] = moeh_rng_uniform(&r) < synth_sig(z);
            s->y_mask[i * s->n_tasks + t] = moeh_rng_uniform(&r) < 0.9;
        }
        /* EHR: static[0] ~ u0, hourly variable 0 drifts with u0, observed 60% of hours */
        for (size_t f = 0; f < s->Fs; f++)
            s->static_x[i * s->Fs + f] = (float)((f == 0 ? u[0] : 0.0) + 0.7 * moeh_rng_normal(&r));
        for (size_t f = 0; f < s->F; f++) {
            float last = 0, since = 0;
            for (size_t t = 0; t < s->T; t++) {
                size_t q = (i * s->T + t) * s->F + f;
                int seen = moeh_rng_uniform(&r) < 0.6;
                float v = (float)((f == 0 ? u[0] * (double)(t + 1) / (double)s->T : 0.0) +
                                  0.5 * moeh_rng_normal(&r));
                since = seen ? 0.0f : since + 1.0f;
                last = seen ? v : last;
                s->ts_value[q] = last; /* forward-filled */
                s->ts_mask[q] = (float)seen;
                s->ts_delta[q] = since / (float)s->T;
            }
        }
        /* notes: ids < H/2 are "positive" words; a note has K tokens */
        s->note_off[i + 1] = s->note_off[i] + K;
        double pp = synth_sig(2.0 * u[1]);
        for (size_t j = 0; j < K; j++) {
            uint64_t x = moeh_rng_u64(&r) % (H / 2 ? H / 2 : 1);
            s->note_ids[i * K + j] = (uint32_t)(moeh_rng_uniform(&r) < pp ? x : (H / 2 + x) % H);
        }
        for (size_t j = 0; j < s->Dn; j++)
            s->note_vec[i * s->Dn + j] = (float)((j == 0 ? u[1] : 0.0) + moeh_rng_normal(&r));
        /* image: noise + a centred blob, brightness 100 + 50 u2 */
        double amp = 100.0 + 50.0 * u[2];
        for (size_t y = 0; y < s->S; y++)
            for (size_t x = 0; x < s->S; x++) {
                double dy = ((double)y - s->S / 2.0) / (s->S / 6.0),
                       dx = ((double)x - s->S / 2.0) / (s->S / 6.0);
                double v = 40.0 + amp * exp(-(dx * dx + dy * dy)) + 20.0 * moeh_rng_normal(&r);
                s->img[i * SS + y * s->S + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        for (size_t j = 0; j < s->Di; j++)
            s->img_vec[i * s->Di + j] = (float)((j == 0 ? u[2] : 0.0) + moeh_rng_normal(&r));
    }
    return 0;
}

/* A batch view of rows [i0, i0 + B). */
static inline moeh_batch_t synth_batch(const synth_t *s, size_t i0, size_t B)
{
    size_t TF = s->T * s->F;
    moeh_batch_t b = {
        .B = B,
        .static_x = s->static_x + i0 * s->Fs,
        .ts_value = s->ts_value + i0 * TF,
        .ts_mask = s->ts_mask + i0 * TF,
        .ts_delta = s->ts_delta + i0 * TF,
        .note_off = s->note_off + i0,
        .note_ids = s->note_ids,
        .note_vec = s->note_vec + i0 * s->Dn,
        .img = s->img + i0 * s->S * s->S,
        .img_vec = s->img_vec + i0 * s->Di,
        .avail = s->avail + i0 * 3,
        .y = s->y + i0 * s->n_tasks,
        .y_mask = s->y_mask + i0 * s->n_tasks,
    };
    return b;
}

#endif
