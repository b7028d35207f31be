/* toy.c - the toy tabular cohort (see toy.h) and `moeh-sim toy`. */
#include "toy.h"

#include "moeh_opts.h"
#include "npy.h"
#include "sim_commands.h"

#include <math.h>
#include <string.h>

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static int write_site(const char *dir, size_t n, size_t F, const float *x, const float *y,
                      const uint8_t *m, const uint8_t *split, moeh_err_t *err)
{
    char path[4096];
    int rc;
    size_t s2[2] = {n, F}, s3[2] = {n, 3}, s1[1] = {n};
    if ((rc = moeh_mkdir_p(dir, err)))
        return rc;
    moeh_path_join(path, sizeof path, dir, "static.npy");
    if ((rc = moeh_npy_write(path, MOEH_DT_F32, 2, s2, x, err)))
        return rc;
    moeh_path_join(path, sizeof path, dir, "labels.npy");
    if ((rc = moeh_npy_write(path, MOEH_DT_F32, 2, s3, y, err)))
        return rc;
    moeh_path_join(path, sizeof path, dir, "label_mask.npy");
    if ((rc = moeh_npy_write(path, MOEH_DT_U8, 2, s3, m, err)))
        return rc;
    moeh_path_join(path, sizeof path, dir, "split.npy");
    if ((rc = moeh_npy_write(path, MOEH_DT_U8, 1, s1, split, err)))
        return rc;
    char meta[512];
    int len = snprintf(meta, sizeof meta,
                       "{\n  \"kind\": \"moeh-toy\",\n  \"schema_version\": 1,\n"
                       "  \"n\": %zu,\n  \"n_features\": %zu,\n"
                       "  \"tasks\": [\"mortality\", \"los7\", \"readmit30\"]\n}\n",
                       n, F);
    moeh_path_join(path, sizeof path, dir, "meta.json");
    return moeh_file_write_atomic(path, meta, (size_t)len, err);
}

int moeh_toy_generate(const moeh_toy_cfg_t *cfg, const char *out_dir, moeh_err_t *err)
{
    size_t N = cfg->n_samples, F = cfg->n_features, K = cfg->n_sites;
    if (N < 10 * K || F < 2 || K == 0 || K > 1000)
        return moeh_errf(err, -EINVAL, "toy: need n_sites 1..1000, >= 10 samples per site and "
                                       ">= 2 features");
    int rc = 0;
    float *coef = malloc(3 * F * sizeof(float));
    float *x = malloc(N * F * sizeof(float)), *y = malloc(N * 3 * sizeof(float));
    uint8_t *m = malloc(N * 3), *split = malloc(N);
    if (!coef || !x || !y || !m || !split) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto out;
    }
    moeh_rng_t r;
    moeh_rng_seed(&r, cfg->seed);
    for (size_t i = 0; i < 3 * F; i++)
        coef[i] = (float)(moeh_rng_normal(&r) * (i >= 2 * F ? 0.3 : 0.8));
    /* site shares proportional to K - k */
    size_t total_w = K * (K + 1) / 2, start = 0;
    char dir[4096];
    for (size_t k = 0; k < K; k++) {
        size_t n = k + 1 == K ? N - start : N * (K - k) / total_w;
        double mu = K > 1 ? 0.5 * ((double)k - (double)(K - 1) / 2.0) / (double)K * 2.0 : 0.0;
        for (size_t i = 0; i < n; i++) {
            double z = mu + moeh_rng_normal(&r), u = moeh_rng_normal(&r);
            for (size_t f = 0; f < F; f++)
                x[i * F + f] = (float)(coef[f] * z + coef[F + f] * u + coef[2 * F + f] * z * u +
                                       0.7 * moeh_rng_normal(&r));
            int died = moeh_rng_uniform(&r) < sigmoid(-2.6 + 1.4 * z + 0.6 * u * u);
            int los = moeh_rng_uniform(&r) < sigmoid(-0.4 + 0.9 * z + 0.9 * u);
            int readm = moeh_rng_uniform(&r) < sigmoid(-1.4 + 0.8 * u - 0.4 * z);
            y[i * 3] = (float)died;
            y[i * 3 + 1] = (float)los;
            y[i * 3 + 2] = died ? 0.0f : (float)readm;
            m[i * 3] = m[i * 3 + 1] = 1;
            m[i * 3 + 2] = !died;
            double s = moeh_rng_uniform(&r);
            split[i] = s < 0.70 ? 0 : s < 0.85 ? 1 : 2;
        }
        snprintf(dir, sizeof dir, "%s/site-%zu", out_dir, k + 1);
        if ((rc = write_site(dir, n, F, x, y, m, split, err)))
            goto out;
        start += n;
    }
out:
    free(coef);
    free(x);
    free(y);
    free(m);
    free(split);
    return rc;
}

int moeh_sim_cmd_toy(int argc, char **argv)
{
    uint32_t n = 3000, f = 16, k = 3;
    uint64_t seed = 1;
    const char *out = NULL;
    const moeh_opt_t opts[] = {
        {"out", MOEH_OPT_STR, &out, "output directory (site-1 ... site-K are created in it)"},
        {"samples", MOEH_OPT_U32, &n, "samples in all"},
        {"features", MOEH_OPT_U32, &f, "features per sample"},
        {"sites", MOEH_OPT_U32, &k, "number of sites"},
        {"seed", MOEH_OPT_U64, &seed, "random seed"},
    };
    moeh_opts_t o = {.prog = "moeh-sim toy",
                     .synopsis = "usage: moeh-sim toy --out DIR [OPTIONS]\n\nWrites a small "
                                 "synthetic tabular cohort with three tasks, split into sites "
                                 "(see sim/toy.h).",
                     .opts = opts,
                     .n_opts = sizeof opts / sizeof opts[0]};
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&o, argc, argv, &err);
    if (rc == 1)
        return 0;
    if (rc == 0 && !out)
        rc = moeh_errf(&err, -EINVAL, "--out is required");
    if (rc) {
        fprintf(stderr, "moeh-sim toy: %s\n", err.msg);
        moeh_opts_free(&o);
        return 2;
    }
    moeh_toy_cfg_t cfg = {.n_samples = n, .n_features = f, .n_sites = k, .seed = seed};
    rc = moeh_toy_generate(&cfg, out, &err);
    moeh_opts_free(&o);
    if (rc) {
        fprintf(stderr, "moeh-sim toy: %s\n", err.msg);
        return 1;
    }
    printf("wrote %u samples in %u sites under %s\n", n, k, out);
    return 0;
}
