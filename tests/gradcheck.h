/* gradcheck.h - central-difference gradient checking shared by the model tests.
 *
 * gc_check() perturbs x[i] by +-eps, evaluates loss() in double and compares
 * (L+ - L-) / 2eps with the analytic gradient g[i]:
 *   |num - g| <= rtol * (|num| + |g|) + atol + 1e-3 * max_j |g[j]|.
 * The last term scales the absolute tolerance with the tensor: with a float32 forward, an
 * entry whose gradient is a thousandth of the tensor's largest is dominated by rounding and
 * truncation noise (both kernel paths, AVX-512 and portable, agree to float rounding there),
 * while a wrong kernel errs at the scale of the gradients themselves.
 * Where a kink (ReLU, max pool, top-k switch) lies within eps the central difference straddles
 * it; then one of the one-sided differences must match within 5 * rtol, and at most
 * max_kink_frac of the checked entries may need that fallback. At most max_checks entries are
 * checked (spread evenly) so big tensors stay fast. Returns the number of failures (printed). */
#ifndef MOEH_TEST_GRADCHECK_H
#define MOEH_TEST_GRADCHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>

typedef double (*gc_loss_fn)(void *ctx);

typedef struct {
    double eps, rtol, atol, max_kink_frac;
    size_t max_checks;
} gc_opts_t;

static inline int gc_check(const char *name, float *x, const float *g, size_t n, gc_loss_fn loss,
                           void *ctx, gc_opts_t o)
{
    size_t step = (o.max_checks && n > o.max_checks) ? n / o.max_checks : 1;
    size_t checked = 0, kinked = 0;
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(g[i]));
    o.atol += 1e-3 * gmax;
    int fails = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i += step) {
        float x0 = x[i];
        x[i] = (float)(x0 + o.eps);
        double lp = loss(ctx);
        x[i] = (float)(x0 - o.eps);
        double lm = loss(ctx);
        x[i] = x0;
        double num = (lp - lm) / (2 * o.eps), an = g[i];
        double err = fabs(num - an) / (fabs(num) + fabs(an) + o.atol / o.rtol);
        checked++;
        if (fabs(num - an) <= o.rtol * (fabs(num) + fabs(an)) + o.atol) {
            if (err > worst) worst = err;
            continue;
        }
        double l0 = loss(ctx);
        double right = (lp - l0) / o.eps, left = (l0 - lm) / o.eps;
        double t = 5 * o.rtol;
        if (o.max_kink_frac > 0 && (fabs(right - an) <= t * (fabs(right) + fabs(an)) + o.atol ||
                                    fabs(left - an) <= t * (fabs(left) + fabs(an)) + o.atol)) {
            kinked++;
            continue;
        }
        if (fails < 5)
            fprintf(stderr,
                    "gradcheck %s[%zu]: numeric %.7g analytic %.7g (left %.7g right %.7g)\n", name,
                    i, num, an, left, right);
        fails++;
    }
    if ((double)kinked > o.max_kink_frac * (double)checked + 1) {
        fprintf(stderr, "gradcheck %s: %zu of %zu entries needed the kink fallback\n", name, kinked,
                checked);
        fails++;
    }
    if (getenv("MOEH_GC_VERBOSE"))
        fprintf(stderr, "gradcheck %s: %zu checked, %zu kinked, worst rel err %.2e\n", name,
                checked, kinked, worst);
    return fails;
}

#endif
