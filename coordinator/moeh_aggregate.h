/* moeh_aggregate.h - per-group FedAvg as a running fixed-point sum.
 *
 * Each update is n_params + n_groups 32-bit words (fed/moeh_quant.h): the
 * quantised w_g * delta of every parameter, then the weight w_g of every group. Updates are
 * added word by word mod 2^32 as they arrive, so memory is O(parameters) whatever the number
 * of sites, the result is exact and independent of arrival order, and secure-aggregation masks
 * (which cancel mod 2^32) change nothing. apply() sets theta_g += sum_s q_sg / (S sum_s w_sg)
 * and leaves a group that no site trained unchanged. */
#ifndef MOEH_AGGREGATE_H
#define MOEH_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_AGG_MAX_GROUPS 32

typedef struct {
    size_t n_params, n_groups;
    size_t group_off[MOEH_AGG_MAX_GROUPS], group_len[MOEH_AGG_MAX_GROUPS];
    uint32_t *sum; /* (n_params + n_groups) words */
    size_t n_updates;
} moeh_fedavg_t;

/* Groups are contiguous slices covering [0, n_params) in order. 0, -EINVAL or -ENOMEM. */
int moeh_fedavg_init(moeh_fedavg_t *a, size_t n_params, size_t n_groups, const size_t *group_off,
                     const size_t *group_len) __attribute__((warn_unused_result));
void moeh_fedavg_free(moeh_fedavg_t *a);
/* Clears the sum for a new round. */
void moeh_fedavg_reset(moeh_fedavg_t *a);
/* Adds one update of n_params + n_groups little-endian words (any alignment). */
void moeh_fedavg_add(moeh_fedavg_t *a, const void *words);
/* Total weight of group g so far. */
uint32_t moeh_fedavg_weight(const moeh_fedavg_t *a, size_t g);
/* theta += per-group weighted mean delta, for the scale the updates were encoded with.
 * Returns the number of groups updated. */
size_t moeh_fedavg_apply(const moeh_fedavg_t *a, float *theta, double scale);
/* The per-group weighted mean delta itself (the server's pseudo-gradient, negated): delta
 * (n_params) is set for groups some site trained (updated[g] = 1) and 0 elsewhere
 * (updated[g] = 0). Returns the number of groups updated. */
size_t moeh_fedavg_mean_delta(const moeh_fedavg_t *a, double scale, float *delta, uint8_t *updated);

/* Server optimisers of Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), applied
 * to the mean delta D of the groups some site trained (other groups and their moments are
 * left alone):  m = b1 m + (1 - b1) D;
 *   FedAdam: v = b2 v + (1 - b2) D^2;   FedYogi: v = v - (1 - b2) D^2 sign(v - D^2);
 *   theta += lr m / (sqrt(v) + tau).  FedAvg is theta += D. */
typedef enum {
    MOEH_STRATEGY_FEDAVG = 0,
    MOEH_STRATEGY_FEDADAM,
    MOEH_STRATEGY_FEDYOGI,
    MOEH_STRATEGY_TRIMMED, /* coordinate-wise trimmed mean of the sites' deltas (robust) */
    MOEH_STRATEGY_MEDIAN   /* coordinate-wise median of the sites' deltas (robust) */
} moeh_strategy_t;
/* 1 for the strategies that need each site's delta (trimmed, median): they keep O(sites x
 * parameters) and cannot run under secure aggregation or DP. */
static inline int moeh_strategy_per_site(moeh_strategy_t k)
{
    return k == MOEH_STRATEGY_TRIMMED || k == MOEH_STRATEGY_MEDIAN;
}
typedef struct {
    moeh_strategy_t kind;
    float lr, beta1, beta2, tau;
} moeh_server_opt_t;
/* Parses "fedavg", "fedadam", "fedyogi", "trimmed" or "median"; -EINVAL otherwise. */
int moeh_strategy_parse(const char *s, moeh_strategy_t *out) __attribute__((warn_unused_result));
const char *moeh_strategy_name(moeh_strategy_t k);
/* One server step over the groups of a; m and v (n_params each) are the server moments
 * (zero at the start; unused for FedAvg, may be NULL then). */
void moeh_server_opt_step(const moeh_server_opt_t *o, const moeh_fedavg_t *a, float *theta,
                          float *m, float *v, const float *delta, const uint8_t *updated);

/* Coordinate-wise trimmed mean (Yin et al., ICML 2018), the robust option where secure
 * aggregation is off (it needs each site's update, so memory is O(sites x parameters)):
 * for each parameter of group g, the deltas of the S_g sites that trained g (weights[s][g] > 0)
 * are sorted, floor(trim * S_g) are dropped at each end (at least one value is kept), and the
 * unweighted mean of the rest is added to theta. deltas is (S, n_params), weights (S, n_groups),
 * scratch holds S floats. Returns the number of groups updated. */
size_t moeh_trimmed_apply(const moeh_fedavg_t *layout, float *theta, const float *deltas,
                          const uint32_t *weights, size_t S, double trim, float *scratch);
/* The coordinate-wise median (--strategy median) is the trimmed mean with trim 0.5: the middle
 * value of an odd number of sites, the mean of the two middle ones of an even number (so a
 * group trained by two sites gets their mean: no robust statistic exists for two values). */
#define MOEH_MEDIAN_TRIM 0.5
/* The groups that some site trained but that a trimmed mean with this trim does not trim:
 * floor(trim x S_g) = 0, i.e. fewer than 1 / trim trainers (with trim > 0). */
size_t moeh_trimmed_untrimmed_groups(const moeh_fedavg_t *layout, const uint32_t *weights, size_t S,
                                     double trim);

/* ---- norm bounding (--norm-bound K, without secure aggregation) ----------------------------
 * Each site's delta is scaled down to L2 norm K x the median of the round's update norms if it
 * is longer (Sun et al., "Can You Really Backdoor Federated Learning?", 2019, with the bound
 * taken relative to the round's median so that it needs no tuning to the model). It works
 * whatever the number of sites that trained a group, unlike trimming. */

/* L2 norm of the delta of one plain update given as its parameter words (n_params words) and
 * group weights (n_groups): sum over groups of weight > 0 of (word / (scale x weight))^2. */
double moeh_update_norm(const moeh_fedavg_t *a, const void *param_words, const uint32_t *weights,
                        double scale);
/* The L2 norm of n floats. */
double moeh_delta_norm(const float *d, size_t n);
/* factors[s] = min(1, k x median / norms[s]) (1 for a zero norm), the median taken over the
 * positive norms (the mean of the two middle ones for an even number). scratch holds S
 * doubles. Returns the number of sites scaled down (factor < 1); *median the median. */
size_t moeh_norm_bound_factors(const double *norms, size_t S, double k, double *factors,
                               double *median, double *scratch);
/* Adds one update (parameter words and group weights apart) whose parameter words are scaled
 * by factor in (0, 1]: rint(signed word x factor); with factor 1 exactly moeh_fedavg_add. */
void moeh_fedavg_add_scaled(moeh_fedavg_t *a, const void *param_words, const uint32_t *weights,
                            double factor);

/* ---- one site's update (fed/moeh_quant.h) --------------------------
 * words are the n_params + n_groups little-endian words of one plain update, in the layout of
 * a. Bounds of a round: scale is the round's fixed-point scale, range the per-coordinate range
 * of the encoding (--delta-clip, or the DP range). */
typedef struct {
    double scale;        /* the round's fixed-point scale */
    float range;         /* per-word range of the encoding */
    int unit_weight;     /* weight 1 per site: a group weight is 0 or 1 */
    int dp;              /* under DP every word carries noise with weight 1, trained or not */
    uint64_t max_weight; /* the training samples the site declared when the phase opened */
} moeh_update_bounds_t;

/* Checks every word of one update against the bounds, so that a broken or hostile site cannot
 * push the sum out of range: each group weight within max_weight (and 0 or 1 when unit_weight),
 * each word within scale x weight x range. 0, or -ERANGE with what (what_len bytes) saying
 * which word and why. */
int moeh_update_check(const moeh_fedavg_t *a, const void *words, const moeh_update_bounds_t *b,
                      char *what, size_t what_len) __attribute__((warn_unused_result));
/* Decodes one update into its per-parameter delta (n_params) and group weights (n_groups):
 * delta = word / (scale x weight) for groups of weight > 0, 0 elsewhere. */
void moeh_update_decode(const moeh_fedavg_t *a, const void *words, double scale, float *delta,
                        uint32_t *weights);

#endif
