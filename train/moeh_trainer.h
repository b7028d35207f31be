/* moeh_trainer.h - local training and evaluation of MoE-Health on one dataset directory: the part
 * of a site agent that never touches the network, shared with `moeh train` (centralised
 * training, the federation's reference).
 *
 * Inputs are normalised with statistics given from outside (the federation computes them as
 * sums over sites, so no site normalises with its own): static features and hourly values
 * become (x - mean) / std with unobserved or non-finite entries 0 (= the mean); hours since
 * the last observation are divided by the window length. Note token hashes are folded into
 * the model's buckets (id mod H). Batches are gathered into buffers sized at create time;
 * training and evaluation allocate nothing. */
#ifndef MOEH_TRAINER_H
#define MOEH_TRAINER_H

#include "moeh_dataset.h"
#include "moeh_moe.h"

typedef struct moeh_trainer moeh_trainer_t;

/* Takes ownership of *ds (set to NULL) and builds the model from cfg, whose data shapes
 * (n_static, n_vars, n_steps, img_size) must match the dataset. A model on precomputed vectors
 * (note_buckets = 0, img_size = 0) is fed the dataset's note_vec / img_vec, whose widths must be
 * note_dim / img_dim (-EINVAL naming both widths otherwise). Caller owns *out. */
int moeh_trainer_create(moeh_dataset_t **ds, const moeh_moe_cfg_t *cfg, moeh_trainer_t **out,
                        moeh_err_t *err) MOEH_WUR;
void moeh_trainer_destroy(moeh_trainer_t **self_p);

moeh_moe_t *moeh_trainer_model(moeh_trainer_t *t);
const moeh_dataset_t *moeh_trainer_dataset(const moeh_trainer_t *t);
/* Rows of a split (MOEH_SPLIT_TRAIN, _VAL, _TEST). */
size_t moeh_trainer_rows(const moeh_trainer_t *t, int split);

/* Number of normalisation features: n_static + n_vars. */
size_t moeh_trainer_n_norm(const moeh_trainer_t *t);
/* Sufficient statistics of the train split: out[3 i + 0..2] = count, sum, sum of squares of
 * feature i (static features, then hourly variables over observed hours; non-finite values
 * are skipped). out has 3 * moeh_trainer_n_norm() entries. */
void moeh_trainer_local_stats(const moeh_trainer_t *t, double *out);
/* mean and std (n_norm each) from summed statistics; a feature never seen gets mean 0, std 1;
 * std is at least 1e-3. */
void moeh_norm_from_stats(const double *stats, size_t n_norm, float *mean, float *std);
/* Sets the normalisation used by training and evaluation (copied). */
void moeh_trainer_set_norm(moeh_trainer_t *t, const float *mean, const float *std);

typedef struct {
    uint32_t epochs, batch_size;
    moeh_adamw_cfg_t adamw;
    moeh_phase_t phase;
    float prox_mu;              /* FedProx proximal weight (0: plain local training) */
    uint64_t seed;              /* shuffling */
    void (*service)(void *ctx); /* called between minibatches (heartbeats), may be NULL */
    void *service_ctx;
} moeh_train_cfg_t;

typedef struct {
    double mean_loss; /* mean per-step training loss (BCE summed over tasks + gate terms) */
    uint32_t steps;
    uint64_t samples;                        /* rows of the train split */
    uint64_t group_samples[MOEH_MAX_GROUPS]; /* rows that trained each parameter group */
} moeh_train_result_t;

/* Trains the model's current parameters in place. With prox_mu > 0 the parameters at entry
 * are the proximal anchor. 0 or a negative code (err says why, e.g. a non-finite loss). */
int moeh_trainer_train(moeh_trainer_t *t, const moeh_train_cfg_t *cfg, moeh_train_result_t *res,
                       moeh_err_t *err) MOEH_WUR;

/* Evaluation of the current parameters on a split, as sums only (nothing per patient):
 *   hist (MOEH_N_SLICES, n_tasks, 2, bins) u32: predicted probabilities binned per slice,
 *        task and label (index ((s * n_tasks + t) * 2 + y) * bins + bin);
 *   gate_sum (MOEH_N_COMBOS, n_experts): summed mixture weights per combination (MoE only);
 *   combo_rows (MOEH_N_COMBOS): rows per combination; *loss_sum and *n_labels: BCE over the
 *   labelled (row, task) pairs. Buffers are zeroed here. */
typedef struct {
    uint32_t *hist;
    float *gate_sum;
    uint32_t combo_rows[MOEH_N_COMBOS];
    double loss_sum;
    uint64_t n_labels;
} moeh_eval_sums_t;
/* Evaluation and prediction route with the learned gate (MOEH_PHASE_JOINT), as at inference,
 * whatever phase the last training used (a warm-up round's routing by combination is a
 * training device only). */
int moeh_trainer_evaluate(moeh_trainer_t *t, int split, uint32_t bins, moeh_eval_sums_t *out,
                          void (*service)(void *), void *service_ctx, moeh_err_t *err) MOEH_WUR;

/* Predicted probabilities of the current parameters for every row of a split, in dataset
 * order: probs (moeh_trainer_rows(t, split), n_tasks); row_idx (same count, may be NULL)
 * receives each prediction's dataset row. For centralised evaluation (`moeh train`),
 * where exact metrics per patient are allowed; a site agent never sends these. 0 or a
 * negative code (err says why). */
int moeh_trainer_predict(moeh_trainer_t *t, int split, float *probs, size_t *row_idx,
                         moeh_err_t *err) MOEH_WUR;

/* Scoring (`moeh predict`): rows first..first+n-1 of the dataset, whatever their split, in
 * dataset order: probs (n, n_tasks) and, if gate is non-NULL and the model has a gate (MoE),
 * the mixture weights gate (n, n_experts). n <= the model's max_batch. 0 or a negative code. */
int moeh_trainer_predict_rows(moeh_trainer_t *t, size_t first, size_t n, float *probs, float *gate,
                              moeh_err_t *err) MOEH_WUR;

#endif
