/* moe_small.h - the small model of the model tests (test_moe.c, test_moe_ablate.c): its
 * configuration (3 static features, 2 hourly variables over 4 hours, 8x8 images, hashed or
 * precomputed notes and images), its 10-row batch holding every combination of modalities
 * (including none), and the finite-difference check of every tensor of a model (gradcheck.h).
 * Include after cmocka.h. */
#ifndef MOEH_TEST_MOE_SMALL_H
#define MOEH_TEST_MOE_SMALL_H

#include "gradcheck.h"
#include "moe_synth.h"
#include "moeh_moe.h"

#include <math.h>
#include <string.h>

/* The small model of `arch`: hashed notes and CNN images, or (precomputed) note and image
 * vectors of 7 and 5 values. */
static inline moeh_moe_cfg_t moe_small_cfg(moeh_arch_t arch, int precomputed)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    c.arch = arch;
    c.d_emb = 6;
    c.d_hidden = 5;
    c.n_steps = 4;
    c.note_buckets = precomputed ? 0 : 40;
    c.note_dim = precomputed ? 7 : 0;
    c.img_size = precomputed ? 0 : 8;
    c.img_dim = precomputed ? 5 : 0;
    c.cnn_ch[0] = 2, c.cnn_ch[1] = 3, c.cnn_ch[2] = 4;
    c.max_batch = 10;
    c.lambda_lb = 0.1f;
    c.temperature = 0.8f;
    c.seed = 5;
    return c;
}

/* 10 rows of synthetic data for cfg whose availability takes every combination of the three
 * modalities, including "nothing" (free with synth_free). */
static inline void moe_small_data(synth_t *s, const moeh_moe_cfg_t *cfg)
{
    static const uint8_t av[10][3] = {{1, 0, 0}, {0, 1, 0}, {1, 1, 0}, {0, 0, 1}, {1, 0, 1},
                                      {0, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}, {1, 0, 1}};
    const double pa[3] = {0.7, 0.6, 0.6};
    assert_int_equal(synth_make(s, cfg, 10, pa, 1.0, 17), 0);
    memcpy(s->avail, av, sizeof av);
}

typedef struct {
    moeh_moe_t *m;
    moeh_batch_t b;
} moe_gc_ctx_t;

static inline double moe_gc_loss(void *c_)
{
    moe_gc_ctx_t *c = c_;
    double l;
    assert_int_equal(moeh_moe_loss(c->m, &c->b, &l), 0);
    return l;
}

/* Central differences over every parameter of cfg's model in `phase` (up to max_checks per
 * tensor, spread evenly), loss in double from a float32 forward: eps = 1e-3, |num - g| <=
 * 2e-2 (|num| + |g|) + 2e-4; ReLU and max-pool kinks fall back to a one-sided difference (at
 * most 10% of entries per tensor). The weights of every tensor whose name starts with `prefix`
 * (NULL: none) are first multiplied by `scale`: at the default initialisation the gradients of
 * the deeper encoder layers can sit below what central differences of a float32 loss
 * resolve. Failures are printed with label:tensor. */
static inline void moe_gradcheck(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label,
                                 size_t max_checks, const char *prefix, float scale)
{
    moeh_moe_t *m = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_moe_create(&cfg, &m, &err), 0);
    moeh_moe_set_phase(m, phase);
    moeh_params_t *p = moeh_moe_params(m);
    if (prefix) {
        for (size_t v = 0; v < p->n_views; v++)
            if (!strncmp(p->views[v].name, prefix, strlen(prefix)))
                for (size_t i = 0; i < p->views[v].numel; i++)
                    p->w[p->views[v].offset + i] *= scale;
    }
    synth_t s;
    moe_small_data(&s, &cfg);
    moe_gc_ctx_t c = {m, synth_batch(&s, 0, 10)};
    double l1, l2;
    moeh_moe_zero_grad(m);
    assert_int_equal(moeh_moe_loss_backward(m, &c.b, &l1), 0);
    assert_int_equal(moeh_moe_loss(m, &c.b, &l2), 0);
    assert_true(fabs(l1 - l2) < 1e-9 && isfinite(l1));
    gc_opts_t o = {
        .eps = 1e-3, .rtol = 2e-2, .atol = 2e-4, .max_kink_frac = 0.1, .max_checks = max_checks};
    int fails = 0;
    for (size_t v = 0; v < p->n_views; v++) {
        char name[160];
        snprintf(name, sizeof name, "%s:%s", label, p->views[v].name);
        fails += gc_check(name, p->w + p->views[v].offset, p->g + p->views[v].offset,
                          p->views[v].numel, moe_gc_loss, &c, o);
    }
    assert_int_equal(fails, 0);
    synth_free(&s);
    moeh_moe_destroy(&m);
}

#endif
