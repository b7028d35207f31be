/* toy.h - a small synthetic tabular cohort, split into sites, for the federation's smoke runs
 * and tests (the MIMIC-IV-shaped synthetic database is `moeh-sim synth`).
 *
 * Generative model (per sample): latent severity z ~ N(mu_site, 1) and organ burden
 * u ~ N(0, 1); F features x_f = a_f z + b_f u + c_f z u + 0.7 e_f with fixed random a, b, c
 * (drawn from the seed) and e_f ~ N(0, 1). Labels are Bernoulli with logits
 *   mortality  -2.0 + 1.4 z + 0.6 u^2 - 0.6
 *   los > 7 d  -0.4 + 0.9 z + 0.9 u
 *   readmit30  -1.4 + 0.8 u - 0.4 z   (masked out when the patient died)
 * so every task is learnable from x but not perfectly. Site k shifts mu_site (case mix) by
 * 0.5 (k - (K-1)/2) / K and gets a share of samples proportional to K - k. Each site's rows
 * are split 70/15/15 into train/val/test. */
#ifndef MOEH_TOY_H
#define MOEH_TOY_H

#include "moeh_common.h"

typedef struct {
    size_t n_samples, n_features, n_sites;
    uint64_t seed;
} moeh_toy_cfg_t;

/* Writes OUT/site-1 ... OUT/site-K, each a dataset directory (static.npy, labels.npy,
 * label_mask.npy, split.npy, meta.json). 0 or a negative code with err. */
int moeh_toy_generate(const moeh_toy_cfg_t *cfg, const char *out_dir, moeh_err_t *err);

#endif
