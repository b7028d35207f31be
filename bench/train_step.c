/* train_step.c - samples/s of one full MoE-Health training step (forward, backward, AdamW) of
 * the default model at batch 64 with every modality present, against the same architecture in
 * PyTorch run from bench/train_step.py in the same process tree (torch threads 1 with
 * OPENBLAS_NUM_THREADS=2, and torch's default threads); plus the step's achieved GFLOP/s
 * against a plain sgemm measured in the same run. Prints the ratios. Figures and the command:
 * docs/performance.md ("Training step").
 *
 * Usage: moeh-bench-train-step [steps] [--no-torch]
 *   MOEH_PYTHON (default /usr/bin/python3) must have torch for the PyTorch side. */
#define SYNTH_TOKENS 256
#include "moe_synth.h"
#include "moeh_moe.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { B = 64, F_STATIC = 8, F_VARS = 17 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Matmul FLOPs of one step (forward + backward) of the default MoE-Health, all present.
 * A linear layer costs 2*N*C*OC forward, as much for dW and again for dX when the input
 * needs a gradient (not for the raw inputs: static, series, pixels). */
static double step_flops(const moeh_moe_cfg_t *c)
{
    double b = B, d = (double)c->d_emb, dh = (double)c->d_hidden, T = (double)c->n_steps;
    double F3 = 3.0 * (double)c->n_vars, Fs = (double)c->n_static, S = (double)c->img_size;
    double c1 = (double)c->cnn_ch[0], c2 = (double)c->cnn_ch[1], c3 = (double)c->cnn_ch[2];
    double Dz = 3 * d + 3, E = 7, f = 0;
    f += 2 * (2 * b * Fs * d);                          /* static MLP: fwd + dW */
    f += 2 * (2 * b * T * F3 * 3 * d);                  /* GRU input projection */
    f += 3 * (2 * b * T * d * 3 * d);                   /* GRU recurrence */
    f += 3 * (2 * b * 2 * d * d);                       /* EHR fuse */
    f += 3 * (2 * b * d * d);                           /* notes projection */
    f += 2 * (2 * b * S * S * 9 * c1);                  /* conv1: fwd + dW */
    f += 3 * (2 * b * (S / 2) * (S / 2) * 9 * c1 * c2); /* conv2 */
    f += 3 * (2 * b * (S / 4) * (S / 4) * 9 * c2 * c3); /* conv3 */
    f += 3 * (2 * b * c3 * d);                          /* image projection */
    f += E * 3 * (2 * b * Dz * dh + 2 * b * dh * d);    /* experts */
    f += 3 * (2 * b * Dz * dh + 2 * b * dh * E);        /* gate */
    f += 3 * (2 * b * d * (double)c->n_tasks);          /* heads */
    return f;
}

/* GFLOP/s of a plain square sgemm (n = 1024) with the current OpenBLAS threads. */
static double sgemm_gflops(void)
{
    const int n = 1024;
    float *a = malloc((size_t)n * n * 4), *bb = malloc((size_t)n * n * 4),
          *c = malloc((size_t)n * n * 4);
    if (!a || !bb || !c) return 0;
    for (size_t i = 0; i < (size_t)n * n; i++)
        a[i] = (float)(i % 7) * 0.1f, bb[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, bb, n, 0.0f, c, n);
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, bb, n, 0.0f, c,
                    n);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    free(a), free(bb), free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

/* Runs bench/train_step.py with the given environment prefix; returns samples/s or 0. */
static double run_torch(const char *env, const char *threads, int steps)
{
    const char *py = getenv("MOEH_PYTHON") ? getenv("MOEH_PYTHON") : "/usr/bin/python3";
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s %s/bench/train_step.py --batch %d --steps %d --threads %s",
             env, py, MOEH_SOURCE_DIR, B, steps, threads);
    FILE *f = popen(cmd, "r");
    if (!f) return 0;
    char line[512];
    double sps = 0;
    while (fgets(line, sizeof line, f)) {
        fputs("  torch| ", stdout);
        fputs(line, stdout);
        sscanf(line, "samples_per_s %lf", &sps);
    }
    pclose(f);
    return sps;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 && argv[1][0] != '-' ? atoi(argv[1]) : 20, no_torch = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: moeh-bench-train-step [STEPS] [--no-torch]\n"
                   "  samples/s of one MoE-Health training step (batch 64, default model) "
                   "against PyTorch\n  (MOEH_PYTHON, default /usr/bin/python3) in the same run; "
                   "STEPS default 20\n");
            return 0;
        }
        if (strcmp(argv[i], "--no-torch") && (i > 1 || argv[i][0] == '-' || steps <= 0)) {
            fprintf(stderr, "moeh-bench-train-step: unexpected argument '%s' (see --help)\n",
                    argv[i]);
            return 2;
        }
        no_torch |= strcmp(argv[i], "--no-torch") == 0;
    }
    moeh_moe_cfg_t cfg = moeh_moe_defaults(F_STATIC, F_VARS);
    cfg.max_batch = B;
    cfg.threads = getenv("MOEH_THREADS") ? atoi(getenv("MOEH_THREADS")) : 1;
    moeh_moe_t *m = NULL;
    moeh_err_t err = {{0}};
    if (moeh_moe_create(&cfg, &m, &err)) {
        fprintf(stderr, "create: %s\n", err.msg);
        return 1;
    }
    synth_t s;
    const double pa[3] = {1, 1, 1};
    if (synth_make(&s, &cfg, B, pa, 1.0, 1)) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    moeh_batch_t b = synth_batch(&s, 0, B);
    moeh_adamw_cfg_t ac = moeh_adamw_defaults();
    ac.clip = 1.0f;
    const char *obt = getenv("OPENBLAS_NUM_THREADS");
    printf("MoE-Health train step: batch %d, d=%zu, T=%zu, F=%d, H=%zu, image %zux%zu, "
           "%zu params, OPENBLAS_NUM_THREADS=%s, MOEH_THREADS=%d\n",
           B, cfg.d_emb, cfg.n_steps, F_VARS, cfg.note_buckets, cfg.img_size, cfg.img_size,
           moeh_moe_params(m)->n, obt ? obt : "(unset)", cfg.threads);
    double loss;
    uint64_t step = 0;
    for (int i = 0; i < 3; i++) { /* warm-up */
        if (moeh_moe_loss_backward(m, &b, &loss)) {
            fprintf(stderr, "step: %s\n", moeh_moe_last_error(m));
            return 1;
        }
        moeh_moe_adamw_step(m, &ac, ++step);
    }
    moeh_moe_profile_reset(m);
    /* best of 3 repetitions of `steps` steps; the sgemm reference is measured right after each
     * repetition (best of those too), so that on a shared machine both see similar load */
    int blas_thr = openblas_get_num_threads();
    /* the step's cores: OpenBLAS threads, or the model's two workers with MOEH_THREADS=2 */
    int cores = cfg.threads > blas_thr ? cfg.threads : blas_thr;
    double best = 1e9, worst = 0, sg1 = 0, sg = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        for (int i = 0; i < steps; i++) {
            moeh_moe_loss_backward(m, &b, &loss);
            moeh_moe_adamw_step(m, &ac, ++step);
        }
        double t = (now_s() - t0) / steps;
        best = t < best ? t : best;
        worst = t > worst ? t : worst;
        openblas_set_num_threads(1);
        double g1 = sgemm_gflops();
        openblas_set_num_threads(cores);
        double gc = cores > 1 ? sgemm_gflops() : g1;
        openblas_set_num_threads(blas_thr);
        sg1 = g1 > sg1 ? g1 : sg1;
        sg = gc > sg ? gc : sg;
    }
    double c_sps = B / best, flops = step_flops(&cfg), gf = flops / best / 1e9;
    printf("C      : %.2f ms/step (best of 3; worst %.2f), %.0f samples/s, loss %.4f\n", best * 1e3,
           worst * 1e3, c_sps, loss);
    const char *const *pn;
    const double *pt = moeh_moe_profile(m, &pn);
    printf("phases :");
    for (int i = 0; i < MOEH_PROF_N; i++)
        printf(" %s %.1f", pn[i], pt[i] * 1e3 / (3.0 * steps));
    printf(" (ms/step)\n");
    printf("FLOPs  : %.2f GFLOP/step (matmul/conv), achieved %.1f GFLOP/s\n", flops / 1e9, gf);
    printf("sgemm  : %.1f GFLOP/s on 1 core, %.1f GFLOP/s on %d (1024^3, best after each "
           "repetition) -> step at %.0f%% of sgemm on the %d core(s) it used\n",
           sg1, sg, cores, 100.0 * gf / sg, cores);
    if (!no_torch) {
        double t1 = run_torch("OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=1", "1", steps);
        double td = run_torch("", "default", steps);
        if (t1 <= 0 || td <= 0) {
            printf("torch: no result (is torch installed for %s? set MOEH_PYTHON)\n",
                   getenv("MOEH_PYTHON") ? getenv("MOEH_PYTHON") : "/usr/bin/python3");
        } else {
            printf("torch (threads 1, OPENBLAS_NUM_THREADS=2): %.0f samples/s -> C is %.2fx\n", t1,
                   c_sps / t1);
            printf("torch (default threads)                   : %.0f samples/s -> C is %.2fx\n", td,
                   c_sps / td);
        }
    }
    synth_free(&s);
    moeh_moe_destroy(&m);
    return 0;
}
