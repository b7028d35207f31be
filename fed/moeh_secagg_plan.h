/* moeh_secagg_plan.h - choosing the SecAgg+ neighbourhood size k and threshold t for n clients
 * from stated failure and privacy parameters (docs/secagg.md, "Choosing k").
 *
 * The graph of fed/moeh_secagg.h is a ring on a uniformly random permutation where each client
 * masks with the k clients within ring distance k/2, and t of its group of k + 1 must reveal.
 * Because the permutation is uniform, a client's k neighbours are a uniform k-subset of the other
 * n - 1, so the number of dropped (or corrupt) neighbours is hypergeometric, and the plan bounds,
 * with a union bound over the n clients:
 * The counts are ceil(fraction * n): at least one client drops and one colludes.
 *   failure: some client has more than k - t dropped neighbours (its secrets cannot be
 *            reconstructed from surviving neighbours alone), probability <= 2^-eta;
 *   leak:    some honest client has t or more corrupt neighbours (they and the server could
 *            rebuild both of its secrets), or the honest survivors' graph falls apart (two runs of
 *            k/2 consecutive dropped-or-corrupt positions on the ring, which would reveal the sums
 *            of its parts), probability <= 2^-sigma.
 * This is the analysis of Bell et al. (CCS 2020) specialised to this graph; it uses only
 * exact hypergeometric tails and the bound P(m given positions all bad) <= (bad / n)^m. */
#ifndef MOEH_SECAGG_PLAN_H
#define MOEH_SECAGG_PLAN_H

#include <stdint.h>

typedef struct {
    double dropout; /* gamma: largest fraction of a round's clients that may drop, [0, 1) */
    double corrupt; /* delta: largest fraction that may collude with the server, [0, 1) */
    double sigma;   /* privacy: leak probability <= 2^-sigma (e.g. 40) */
    double eta;     /* correctness: failure probability <= 2^-eta (e.g. 20) */
} moeh_secagg_plan_cfg_t;

typedef struct {
    uint32_t k;       /* neighbours; 0 = everyone (classic SecAgg: k + 1 >= n is no saving) */
    uint32_t t;       /* Shamir threshold within the group of k + 1 (or n when k == 0) */
    double log2_fail; /* log2 of the bound on the failure probability */
    double log2_leak; /* log2 of the bound on the leak probability */
} moeh_secagg_plan_t;

/* A requested k that asks for the plan (moeh-coordinator --secagg-k auto, the default). */
#define MOEH_SECAGG_K_AUTO UINT32_MAX

/* The defaults the coordinator uses: 10% dropouts, 10% colluding sites, 2^-40, 2^-20. */
#define MOEH_SECAGG_PLAN_DEFAULT                                                                   \
    {                                                                                              \
        0.1, 0.1, 40.0, 20.0                                                                       \
    }

/* log2 P[X >= x] for X hypergeometric: `draws` drawn without replacement from `pop` items of
 * which `marked` are marked. -INFINITY when the event is impossible. */
double moeh_hypergeom_log2_tail(uint32_t pop, uint32_t marked, uint32_t draws, uint32_t x);

/* Bounds for a given (n, k, t); k == 0 means everyone (the group is all n). */
void moeh_secagg_plan_bounds(uint32_t n, uint32_t k, uint32_t t, const moeh_secagg_plan_cfg_t *cfg,
                             moeh_secagg_plan_t *out);

/* The smallest even k (2 <= k < n - 1) with a threshold t in (k + 1)/2 + 1 .. k that meets both
 * bounds (the largest such t: more privacy for the same k); k = 0 and t = n/2 + 1 when none is
 * smaller than everyone (then the bounds are those of classic SecAgg). 0, or -EINVAL for
 * parameters out of range (n < 2, fractions outside [0, 1), non-positive sigma or eta). */
int moeh_secagg_plan(uint32_t n, const moeh_secagg_plan_cfg_t *cfg, moeh_secagg_plan_t *out)
    __attribute__((warn_unused_result));

#endif
