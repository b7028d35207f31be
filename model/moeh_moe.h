/* moeh_moe.h - MoE-Health: modality encoders, learnable missingness embeddings, one expert
 * per modality combination, a softmax gate over [embeddings, availability], multi-task heads;
 * and the baselines of the results table in the same code (unimodal, joint fusion, late
 * fusion), chosen by moeh_moe_cfg_t.arch. Architecture and defaults: docs/model.md.
 *
 * Modalities are indexed 0 = EHR (static + hourly series), 1 = notes, 2 = image. A sample's
 * modality combination is c = a0 + 2 a1 + 4 a2 (1..7); MoE expert k = c - 1 is the expert of
 * combination c (expert_0 = EHR only, ..., expert_6 = all three).
 *
 * Memory: parameters, gradients and AdamW moments live in one moeh_params_t (groups
 * encoder_ehr, encoder_notes, encoder_img, missing, expert_<k>, gate, heads); the batch
 * workspace is allocated once at create time for cfg.max_batch rows; forward, backward and the
 * optimiser step allocate nothing. A model is not thread-safe; use one per thread. */
#ifndef MOEH_MOE_H
#define MOEH_MOE_H

#include "moeh_opts.h"
#include "moeh_params.h"

#define MOEH_N_MODALITIES 3
#define MOEH_MAX_EXPERTS 7
#define MOEH_MAX_TASKS 8

typedef enum {
    MOEH_ARCH_MOE = 0, /* MoE-Health: 7 experts + learned gate */
    MOEH_ARCH_UNI_EHR, /* unimodal baselines: one encoder, one expert */
    MOEH_ARCH_UNI_NOTES,
    MOEH_ARCH_UNI_IMG,
    MOEH_ARCH_JOINT, /* joint fusion: concatenated embeddings, one expert, end to end */
    MOEH_ARCH_LATE,  /* late fusion: one expert per modality, mean of the available logits */
    MOEH_ARCH_EARLY, /* early fusion: one MLP over concatenated raw-input summaries */
} moeh_arch_t;

typedef struct {
    moeh_arch_t arch;
    size_t d_emb;         /* embedding width d (128) */
    size_t d_hidden;      /* expert and gate hidden width (128) */
    size_t n_static;      /* static features F_s */
    size_t n_vars;        /* hourly variables F; the GRU input is [value, mask, delta] = 3F */
    size_t n_steps;       /* hourly steps T (48) */
    size_t note_buckets;  /* hashed n-gram buckets H (65536); 0 = precomputed note vectors */
    size_t note_dim;      /* width of precomputed note vectors (when note_buckets == 0) */
    size_t img_size;      /* 64 or 128 (u8 grayscale S x S); 0 = precomputed image vectors */
    size_t img_dim;       /* width of precomputed image vectors (when img_size == 0) */
    size_t cnn_ch[3];     /* CNN channels (16, 32, 64) */
    size_t n_tasks;       /* 3: mortality, LOS > 7 d, 30-day readmission */
    size_t top_k;         /* gate top-k (0 = dense softmax) */
    float temperature;    /* gate softmax temperature (1) */
    float lambda_lb;      /* load-balancing weight (0.01) */
    float gate_sup;       /* weight of the gate supervision loss during warm-up (1) */
    float gate_sup_joint; /* the same supervision kept in joint rounds (0: none) */
    float dropout;        /* dropout on the expert hidden layers while training (0) */
    float missing_init;   /* std of the missing-modality embeddings at initialisation (0.02) */
    /* Ablations (issue 15); 0 = off, and then absent from the canonical JSON, so the default
     * spec and its hash are unchanged. missing_zero: an absent modality's encoding is a zero
     * vector (no missing.* parameters). gate_no_avail: the gate's input has the availability
     * columns zeroed (the gate sees only the embeddings). */
    size_t missing_zero, gate_no_avail;
    float pos_weight[MOEH_MAX_TASKS]; /* BCE positive-class weight per task (0 = 1) */
    size_t max_batch;                 /* workspace rows (64) */
    int threads;   /* >= 2: two OpenMP workers split the encoders' images and the AdamW
                    * step (results equal serial up to float summation order, and are
                    * deterministic); use OPENBLAS_NUM_THREADS=1 then. 0/1: serial. */
    uint64_t seed; /* initialisation and dropout */
} moeh_moe_cfg_t;

/* ---- the model spec (moe_cfg.c) ----
 * A configuration travels and is stored as its canonical JSON: one object with every field of
 * moeh_moe_cfg_t in a fixed order, integers as integers, floats in the shortest text that reads
 * back to the same float, arrays for cnn_ch and pos_weight (all MOEH_MAX_TASKS), the seed as a
 * decimal string (64 bits). Equal configurations give byte-equal JSON. */

/* The defaults of DESIGN section 4 for the given data shapes. */
moeh_moe_cfg_t moeh_moe_defaults(size_t n_static, size_t n_vars);

/* Every limit of every layer (widths, counts, top_k, CNN channels, image and note sizes,
 * finite and in-range weights) and the rules between fields (what each arch's encoders need).
 * 0 or -EINVAL with err->msg naming the field ("model config: top_k = 9, expected 0..7").
 * moeh_moe_create calls it; a received spec is checked with it before anything is built. */
int moeh_moe_cfg_validate(const moeh_moe_cfg_t *cfg, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* moeh_moe_cfg_validate before the data is known (a binary checking its options): the data
 * shapes (n_static, n_vars, n_steps, img_size) are replaced by stand-ins that pass, every other
 * field is checked as given. */
int moeh_moe_cfg_validate_hyper(const moeh_moe_cfg_t *cfg, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* The canonical JSON of cfg. 0, -EINVAL (a non-finite float: err names it) or -ENOMEM. On
 * success the caller owns *json (free()). */
int moeh_moe_cfg_to_json(const moeh_moe_cfg_t *cfg, char **json, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* Parses a configuration written by moeh_moe_cfg_to_json (any key order and spacing). Strict:
 * an unknown, repeated or missing key, a value of the wrong type (a fraction or a negative
 * number for an integer field, an array of the wrong length, a seed that is not a decimal
 * string) or trailing text is -EINVAL with err->msg naming the key; *cfg is written only on
 * success. Ranges are not checked here: call moeh_moe_cfg_validate. */
int moeh_moe_cfg_from_json(const char *json, moeh_moe_cfg_t *cfg, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* Fields that define a trained model (all but max_batch, threads and seed) in which a and b
 * differ: appends " name (A_NAME x, B_NAME y)" per difference to the string out (cap bytes,
 * truncated) and returns their number. */
int moeh_moe_cfg_diff(const moeh_moe_cfg_t *a, const moeh_moe_cfg_t *b, const char *a_name,
                      const char *b_name, char *out, size_t cap);

/* Hash of a canonical JSON text (equal configurations, equal hashes). */
uint64_t moeh_moe_cfg_json_hash(const char *json);

/* The option fragment of the model hyperparameters (--arch, --d-emb, --d-hidden,
 * --note-buckets, --top-k, --temperature, --lambda-lb, --gate-sup, --gate-sup-joint, --dropout,
 * --missing-init):
 * appends their entries, pointing into *cfg, to opts[*n..cap) and advances *n, so that every
 * binary's option table offers the same hyperparameters. Data shapes, the workspace size and the
 * seed are left to each binary. 0 or -ENOSPC. */
int moeh_moe_cfg_options(moeh_moe_cfg_t *cfg, moeh_opt_t *opts, size_t *n, size_t cap)
    __attribute__((warn_unused_result));

/* Modalities (bitmask: 1 EHR, 2 notes, 4 image) whose encoders an arch uses. */
uint8_t moeh_moe_arch_modalities(moeh_arch_t arch);

/* One batch of B rows, borrowed (the model never keeps the pointers). Pointers of a modality
 * that no row of the batch has may be NULL. */
typedef struct {
    size_t B;
    const float *static_x;                      /* (B,F_s) */
    const float *ts_value, *ts_mask, *ts_delta; /* (B,T,F) each */
    const uint64_t *note_off;                   /* (B+1) CSR offsets into note_ids */
    const uint32_t *note_ids;                   /* hashed uni/bi-gram ids, each < H */
    const float *note_vec;                      /* (B,note_dim) precomputed */
    const uint8_t *img;                         /* (B,S,S) u8 grayscale */
    const float *img_vec;                       /* (B,img_dim) precomputed */
    const uint8_t *avail;                       /* (B,3) 0/1: EHR, notes, image */
    const float *y;                             /* (B,n_tasks) labels 0/1 */
    const uint8_t *y_mask;                      /* (B,n_tasks) 1 = label present */
} moeh_batch_t;

typedef enum { MOEH_PHASE_JOINT = 0, MOEH_PHASE_WARMUP } moeh_phase_t;

typedef struct moeh_moe moeh_moe_t;

/* 0, -EINVAL (inconsistent config, message in err) or -ENOMEM. Parameters are initialised
 * from cfg->seed (PyTorch-style uniform +-1/sqrt(fan_in)). Caller owns *out. */
int moeh_moe_create(const moeh_moe_cfg_t *cfg, moeh_moe_t **out, moeh_err_t *err);
/* NULL-safe; sets *self_p = NULL. */
void moeh_moe_destroy(moeh_moe_t **self_p);
moeh_params_t *moeh_moe_params(moeh_moe_t *m);
const moeh_moe_cfg_t *moeh_moe_cfg(const moeh_moe_t *m);
size_t moeh_moe_n_experts(const moeh_moe_t *m);

/* Warm-up: each sample is routed to the expert of its modality combination and the gate is
 * trained toward that expert (cross-entropy, weight cfg.gate_sup); joint: the learned gate
 * routes, plus lambda_lb x load balance and gate_sup_joint x the same cross-entropy (a prior
 * toward the combination's expert that keeps the gate from collapsing onto one expert). Only MoE
 * has phases; others ignore it. */
void moeh_moe_set_phase(moeh_moe_t *m, moeh_phase_t phase);

/* Forward + loss + backward; gradients are *added* into params->g (see moeh_moe_zero_grad).
 * Loss = masked BCE summed over tasks + the phase's gate term. 0 or -EINVAL (bad batch:
 * moeh_moe_last_error says why). Training mode (dropout on). */
int moeh_moe_loss_backward(moeh_moe_t *m, const moeh_batch_t *b, double *loss);
/* The same loss without backward and without dropout (for gradient checks and validation). */
int moeh_moe_loss(moeh_moe_t *m, const moeh_batch_t *b, double *loss);
/* probs (B,n_tasks) = sigmoid(logits), evaluation mode. Labels are not read. */
int moeh_moe_predict(moeh_moe_t *m, const moeh_batch_t *b, float *probs);
/* Mixture weights (B,n_experts) of the last forward pass (valid until the next call). */
const float *moeh_moe_last_gate(const moeh_moe_t *m);
/* Logits (B,n_tasks) of the last forward pass (valid until the next call). */
const float *moeh_moe_last_logits(const moeh_moe_t *m);
const char *moeh_moe_last_error(const moeh_moe_t *m);

/* Zeroes the gradients: dense tensors plus only the embedding-bag rows touched since the
 * last reset (cheaper than moeh_params_zero_grad, same result). */
void moeh_moe_zero_grad(moeh_moe_t *m);
/* AdamW step (1-based step) with lr taken from cfg: dense over every tensor except the note
 * embedding table, lazy over its touched rows (untouched rows and their moments are left
 * alone, as LazyAdam); global-norm clipping over all gradients. Then zeroes the gradients. */
void moeh_moe_adamw_step(moeh_moe_t *m, const moeh_adamw_cfg_t *cfg, uint64_t step);

/* Linear warm-up over `warmup` steps to base, then cosine decay to min_ratio x base at
 * `total` (step is 1-based; constant min after total). */
float moeh_lr_schedule(float base, uint64_t step, uint64_t warmup, uint64_t total, float min_ratio);

/* Samples that trained each parameter group since the last reset, indexed like
 * params->group_names (n = params->n_groups): encoders count rows that have the modality,
 * "missing" rows lacking at least one, experts rows with a non-zero mixture weight, gate and
 * heads every row. The federation weights each group's update by these counts. */
const uint64_t *moeh_moe_group_samples(const moeh_moe_t *m);
void moeh_moe_reset_group_samples(moeh_moe_t *m);

/* Wall-clock seconds spent per phase since the last reset (MOEH_PROF_N entries, named by
 * *names): encoders forward, experts+gate+heads forward, their backward, encoders backward,
 * optimiser. For benchmarks and docs/performance.md. */
#define MOEH_PROF_N 9
const double *moeh_moe_profile(const moeh_moe_t *m, const char *const **names);
void moeh_moe_profile_reset(moeh_moe_t *m);

/* Combination index c - 1 (0..6) of a row's availability, -1 when nothing is available. */
static inline int moeh_combo_index(const uint8_t *avail3)
{
    return (int)((avail3[0] != 0) + 2 * (avail3[1] != 0) + 4 * (avail3[2] != 0)) - 1;
}

#endif
