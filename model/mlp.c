/* mlp.c - the multi-task MLP (see moeh_mlp.h). Workspace is allocated at create time;
 * forward and backward allocate nothing. */
#include "moeh_mlp.h"

#include "layers.h"

#include <math.h>
#include <string.h>

struct moeh_mlp {
    moeh_mlp_cfg_t cfg;
    moeh_params_t p;
    int w1, b1, w2, b2, w3, b3; /* view indices */
    float *h1, *h2, *logits;    /* activations (max_batch, ...) */
    float *dh1, *dh2, *dlogits; /* their gradients */
};

static void init_uniform(float *w, size_t n, size_t fan_in, moeh_rng_t *r)
{
    float bound = 1.0f / sqrtf((float)fan_in);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)((2.0 * moeh_rng_uniform(r) - 1.0) * bound);
}

int moeh_mlp_create(const moeh_mlp_cfg_t *cfg, moeh_mlp_t **out)
{
    if (!cfg->n_in || !cfg->n_hidden || !cfg->n_tasks || !cfg->max_batch) return -EINVAL;
    moeh_mlp_t *m = calloc(1, sizeof *m);
    if (!m) return -ENOMEM;
    m->cfg = *cfg;
    moeh_params_init(&m->p);
    size_t F = cfg->n_in, H = cfg->n_hidden, T = cfg->n_tasks, B = cfg->max_batch;
    int rc = 0;
    size_t s_w1[] = {H, F}, s_h[] = {H}, s_w2[] = {H, H}, s_w3[] = {T, H}, s_t[] = {T};
    if ((m->w1 = moeh_params_add(&m->p, "ehr.fc1.weight", "encoder_ehr", 2, s_w1)) < 0 ||
        (m->b1 = moeh_params_add(&m->p, "ehr.fc1.bias", "encoder_ehr", 1, s_h)) < 0 ||
        (m->w2 = moeh_params_add(&m->p, "ehr.fc2.weight", "encoder_ehr", 2, s_w2)) < 0 ||
        (m->b2 = moeh_params_add(&m->p, "ehr.fc2.bias", "encoder_ehr", 1, s_h)) < 0 ||
        (m->w3 = moeh_params_add(&m->p, "head.weight", "heads", 2, s_w3)) < 0 ||
        (m->b3 = moeh_params_add(&m->p, "head.bias", "heads", 1, s_t)) < 0) {
        rc = -EINVAL;
        goto fail;
    }
    if ((rc = moeh_params_finalize(&m->p)) != 0) goto fail;
    m->h1 = calloc(B * H, sizeof(float));
    m->h2 = calloc(B * H, sizeof(float));
    m->logits = calloc(B * T, sizeof(float));
    m->dh1 = calloc(B * H, sizeof(float));
    m->dh2 = calloc(B * H, sizeof(float));
    m->dlogits = calloc(B * T, sizeof(float));
    if (!m->h1 || !m->h2 || !m->logits || !m->dh1 || !m->dh2 || !m->dlogits) {
        rc = -ENOMEM;
        goto fail;
    }
    moeh_rng_t r;
    moeh_rng_seed(&r, cfg->seed);
    init_uniform(moeh_params_w(&m->p, m->w1), H * F, F, &r);
    init_uniform(moeh_params_w(&m->p, m->b1), H, F, &r);
    init_uniform(moeh_params_w(&m->p, m->w2), H * H, H, &r);
    init_uniform(moeh_params_w(&m->p, m->b2), H, H, &r);
    init_uniform(moeh_params_w(&m->p, m->w3), T * H, H, &r);
    init_uniform(moeh_params_w(&m->p, m->b3), T, H, &r);
    *out = m;
    return 0;
fail:
    moeh_mlp_destroy(&m);
    return rc;
}

void moeh_mlp_destroy(moeh_mlp_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_mlp_t *m = *self_p;
    moeh_params_free(&m->p);
    free(m->h1);
    free(m->h2);
    free(m->logits);
    free(m->dh1);
    free(m->dh2);
    free(m->dlogits);
    free(m);
    *self_p = NULL;
}

moeh_params_t *moeh_mlp_params(moeh_mlp_t *m)
{
    return &m->p;
}

const moeh_mlp_cfg_t *moeh_mlp_cfg(const moeh_mlp_t *m)
{
    return &m->cfg;
}

int moeh_mlp_forward(moeh_mlp_t *m, const float *x, size_t B, const float **logits)
{
    if (B == 0 || B > m->cfg.max_batch) return -EINVAL;
    size_t F = m->cfg.n_in, H = m->cfg.n_hidden, T = m->cfg.n_tasks;
    const moeh_params_t *p = &m->p;
    /* h1 (B,H) = relu(x (B,F) @ w1^T + b1) */
    moeh_linear_forward(m->h1, x, moeh_params_w(p, m->w1), moeh_params_w(p, m->b1), B, F, H);
    moeh_relu_forward(m->h1, m->h1, B * H);
    /* h2 (B,H) = relu(h1 @ w2^T + b2) */
    moeh_linear_forward(m->h2, m->h1, moeh_params_w(p, m->w2), moeh_params_w(p, m->b2), B, H, H);
    moeh_relu_forward(m->h2, m->h2, B * H);
    /* logits (B,T) = h2 @ w3^T + b3 */
    moeh_linear_forward(m->logits, m->h2, moeh_params_w(p, m->w3), moeh_params_w(p, m->b3), B, H,
                        T);
    *logits = m->logits;
    return 0;
}

int moeh_mlp_loss_backward(moeh_mlp_t *m, const float *x, const float *y, const uint8_t *mask,
                           size_t B, double *loss)
{
    const float *logits;
    int rc = moeh_mlp_forward(m, x, B, &logits);
    if (rc) return rc;
    size_t F = m->cfg.n_in, H = m->cfg.n_hidden, T = m->cfg.n_tasks;
    moeh_params_t *p = &m->p;
    *loss = moeh_bce_masked(m->dlogits, logits, y, mask, NULL, B, T);
    memset(m->dh2, 0, B * H * sizeof(float));
    memset(m->dh1, 0, B * H * sizeof(float));
    moeh_linear_backward(m->dh2, moeh_params_g(p, m->w3), moeh_params_g(p, m->b3), m->dlogits,
                         m->h2, moeh_params_w(p, m->w3), B, H, T);
    /* relu backward in place: dh2 *= (h2 > 0) */
    for (size_t i = 0; i < B * H; i++)
        if (m->h2[i] <= 0) m->dh2[i] = 0;
    moeh_linear_backward(m->dh1, moeh_params_g(p, m->w2), moeh_params_g(p, m->b2), m->dh2, m->h1,
                         moeh_params_w(p, m->w2), B, H, H);
    for (size_t i = 0; i < B * H; i++)
        if (m->h1[i] <= 0) m->dh1[i] = 0;
    moeh_linear_backward(NULL, moeh_params_g(p, m->w1), moeh_params_g(p, m->b1), m->dh1, x,
                         moeh_params_w(p, m->w1), B, F, H);
    return 0;
}
