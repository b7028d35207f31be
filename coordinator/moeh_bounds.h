/* moeh_bounds.h - what a site may contribute, checked against what the coordinator can see
 * (docs/security.md, "Poisoned statistics, updates and evaluations").
 *
 * A site declares its training, test and validation rows in its Hello. Those figures bound its
 * weight in the training sum, its rows in the test and validation histograms and its counts in
 * the normalisation statistics, but a hostile site can declare anything, so each declared count is
 * first capped: by the limit the consortium registered for the site (registry [limits]), or without
 * one by k times the median of the counts the admitted sites declared (a majority of honest sites
 * keeps the median honest). Plain mode checks every site's message against its own caps;
 * under secure aggregation the same checks run on the unmasked sum against the sum of the
 * survivors' caps.
 *
 * Pure functions: no allocation, no state; errors say what was wrong in `what`. */
#ifndef MOEH_BOUNDS_H
#define MOEH_BOUNDS_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_BOUNDS_WUR __attribute__((warn_unused_result))

/* The median of the positive entries of v[0..n) (the mean of the two middle ones, rounded
 * up, for an even number); 0 if none is positive. scratch holds n entries; v is not changed. */
uint64_t moeh_bounds_median(const uint64_t *v, size_t n, uint64_t *scratch);

/* A declared count capped: min(declared, registered) when the site has a registered limit
 * (registered > 0); else min(declared, ceil(k x median)) when k > 0 and median > 0; else the
 * declared count. */
uint64_t moeh_bounds_count_cap(uint64_t declared, uint64_t registered, uint64_t median, double k);

/* The normalisation statistics of one site, or their sum over sites: stats (n_norm, 3) =
 * count, sum, sum of squares of each feature; features [0, n_static) are static (at most one
 * value per training row), the others hourly (at most n_steps values per row). */
typedef struct {
    size_t n_norm, n_static;
    uint32_t n_steps;
    uint64_t max_rows; /* the training rows the contribution may hold (capped) */
    double max_abs;    /* plausible |value| of a raw feature (0: no range check) */
} moeh_stats_bounds_t;

/* Each feature: count an integer in [0, max_rows (x n_steps for hourly features)]; a zero
 * count has zero sums; sum of squares >= sum^2 / count (up to rounding); |sum| <= count x
 * max_abs and sum of squares <= count x max_abs^2. 0 or -ERANGE with what. */
int moeh_bounds_stats_check(const double *stats, const moeh_stats_bounds_t *b, char *what,
                            size_t what_len) MOEH_BOUNDS_WUR;

/* An evaluation, of one site or summed: hist_words are MOEH_N_SLICES x n_tasks x 2 x bins
 * little-endian 32-bit counts (any alignment), combo_rows the rows of each combination 1..7,
 * n_labels the labelled (row, task) pairs. */
typedef struct {
    size_t n_tasks, bins;
    uint64_t max_rows; /* the rows of its split the contribution may hold (capped) */
    const char *split; /* that split, for messages: "test" (NULL) or "validation" */
} moeh_eval_bounds_t;

/* Every slice's count of each task, and the rows of all combinations together, at most
 * max_rows; n_labels at most n_tasks x max_rows. 0 or -ERANGE with what. */
int moeh_bounds_eval_check(const void *hist_words, const uint64_t *combo_rows, uint64_t n_labels,
                           const moeh_eval_bounds_t *b, char *what,
                           size_t what_len) MOEH_BOUNDS_WUR;

/* The header of a plain Update: n_samples (the site's training rows) at most max_rows, and a
 * train loss (a mean binary cross-entropy) that is not negative. 0 or -ERANGE with what. */
int moeh_bounds_train_header_check(double train_loss, uint64_t n_samples, uint64_t max_rows,
                                   char *what, size_t what_len) MOEH_BOUNDS_WUR;

/* The per-group weights of a summed update (n_groups words, any alignment) against the
 * largest total they may reach (max_total: the survivors' capped samples, or their number
 * when unweighted). 0 or -ERANGE with what. */
int moeh_bounds_weight_sum_check(const void *weight_words, size_t n_groups, uint64_t max_total,
                                 char *what, size_t what_len) MOEH_BOUNDS_WUR;

#endif
