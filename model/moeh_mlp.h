/* moeh_mlp.h - a small multi-task MLP (static features -> hidden -> hidden -> one logit per
 * task) with a real backward pass. It is the federation's model until MoE-Health lands, and
 * stays as the "early fusion" building block. Parameters live in a moeh_params_t with groups
 * "encoder_ehr" (the two hidden layers) and "heads" (the output layer). */
#ifndef MOEH_MLP_H
#define MOEH_MLP_H

#include "moeh_params.h"

typedef struct {
    size_t n_in, n_hidden, n_tasks;
    size_t max_batch; /* workspace is sized once for this many rows */
    uint64_t seed;    /* initialisation (PyTorch-style uniform +-1/sqrt(fan_in)) */
} moeh_mlp_cfg_t;

typedef struct moeh_mlp moeh_mlp_t;

/* 0, -EINVAL (a zero size) or -ENOMEM. Caller owns *out: moeh_mlp_destroy(&m). */
int moeh_mlp_create(const moeh_mlp_cfg_t *cfg, moeh_mlp_t **out);
void moeh_mlp_destroy(moeh_mlp_t **self_p);
moeh_params_t *moeh_mlp_params(moeh_mlp_t *m);
const moeh_mlp_cfg_t *moeh_mlp_cfg(const moeh_mlp_t *m);

/* Forward pass on x (B,n_in), B <= max_batch. *logits points into the model's workspace
 * (B,n_tasks) and stays valid until the next call. */
int moeh_mlp_forward(moeh_mlp_t *m, const float *x, size_t B, const float **logits);

/* Forward + masked BCE (layers.h) + backward; gradients are *added* into params->g.
 * y (B,n_tasks) in {0,1}, mask (B,n_tasks). *loss receives the batch loss. */
int moeh_mlp_loss_backward(moeh_mlp_t *m, const float *x, const float *y, const uint8_t *mask,
                           size_t B, double *loss);

#endif
