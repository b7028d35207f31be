/* secagg_plan.c - SecAgg+ k and t from failure and privacy bounds (moeh_secagg_plan.h). */
#include "moeh_secagg_plan.h"

#include <errno.h>
#include <math.h>

/* log2 of C(a, b); b <= a. */
static double log2_choose(uint32_t a, uint32_t b)
{
    return (lgamma((double)a + 1.0) - lgamma((double)b + 1.0) - lgamma((double)(a - b) + 1.0)) /
           log(2.0);
}

/* log2(2^a + 2^b) without overflow. */
static double log2_add(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    double hi = a > b ? a : b, lo = a > b ? b : a;
    return hi + log2(1.0 + exp2(lo - hi));
}

double moeh_hypergeom_log2_tail(uint32_t pop, uint32_t marked, uint32_t draws, uint32_t x)
{
    if (marked > pop || draws > pop) return NAN;
    uint32_t hi = marked < draws ? marked : draws;
    double acc = -INFINITY, denom = log2_choose(pop, draws);
    for (uint32_t i = x; i <= hi; i++) {
        if (draws - i > pop - marked) continue; /* not enough unmarked items */
        acc = log2_add(acc, log2_choose(marked, i) + log2_choose(pop - marked, draws - i) - denom);
    }
    return acc > 0.0 ? 0.0 : acc;
}

void moeh_secagg_plan_bounds(uint32_t n, uint32_t k, uint32_t t, const moeh_secagg_plan_cfg_t *cfg,
                             moeh_secagg_plan_t *out)
{
    uint32_t drop = (uint32_t)ceil(cfg->dropout * n), bad = (uint32_t)ceil(cfg->corrupt * n);
    uint32_t nb = k ? k : n - 1; /* neighbours of each client */
    double log2n = log2((double)n);
    out->k = k;
    out->t = t;
    /* more than nb - t dropped neighbours; with k == 0 a client's group is everyone, so the
     * dropped count is not random: the plan fails iff drop > n - t */
    if (k)
        out->log2_fail = log2n + moeh_hypergeom_log2_tail(n - 1, drop, nb, nb - t + 1);
    else
        out->log2_fail = drop > n - t ? 0.0 : -INFINITY;
    double leak =
        k ? log2n + moeh_hypergeom_log2_tail(n - 1, bad, nb, t) : (bad >= t ? 0.0 : -INFINITY);
    if (k) { /* two runs of k/2 bad positions: C(n, 2) pairs of starts, (bad_all / n)^k */
        uint32_t all = drop + bad;
        double rho = all >= n ? 1.0 : (double)all / n;
        double split =
            rho > 0.0 ? log2((double)n * (n - 1) / 2.0) + (double)k * log2(rho) : -INFINITY;
        leak = log2_add(leak, split);
    }
    out->log2_fail = out->log2_fail > 0.0 ? 0.0 : out->log2_fail;
    out->log2_leak = leak > 0.0 ? 0.0 : leak;
}

int moeh_secagg_plan(uint32_t n, const moeh_secagg_plan_cfg_t *cfg, moeh_secagg_plan_t *out)
{
    if (n < 2 || !(cfg->dropout >= 0.0 && cfg->dropout < 1.0) ||
        !(cfg->corrupt >= 0.0 && cfg->corrupt < 1.0) || !(cfg->sigma > 0.0) || !(cfg->eta > 0.0))
        return -EINVAL;
    for (uint32_t k = 2; k < n - 1; k += 2) {
        for (uint32_t t = k; t >= (k + 1) / 2 + 1; t--) {
            moeh_secagg_plan_bounds(n, k, t, cfg, out);
            if (out->log2_fail <= -cfg->eta && out->log2_leak <= -cfg->sigma) return 0;
            if (out->log2_fail <= -cfg->eta) break; /* a lower t only leaks more */
        }
    }
    moeh_secagg_plan_bounds(n, 0, n / 2 + 1, cfg, out);
    return 0;
}
