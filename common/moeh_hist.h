/* moeh_hist.h - score histograms for federated evaluation.
 *
 * Each site bins its predicted probabilities per task and per label into B equal-width bins
 * on [0, 1]; histograms add across sites, and AUROC is computed from the summed counts, so no
 * site reveals a single prediction. Scores that share a bin count as ties (1/2), so the
 * histogram AUROC differs from the exact one by at most the probability mass of
 * positive/negative pairs falling in the same bin (docs/architecture.md). */
#ifndef MOEH_HIST_H
#define MOEH_HIST_H

#include <stddef.h>
#include <stdint.h>

/* Bin of probability p in [0, 1] among n_bins (NaN and out-of-range are clamped). */
static inline size_t moeh_hist_bin(float p, size_t n_bins)
{
    if (!(p > 0.0f)) return 0;
    size_t b = (size_t)(p * (float)n_bins);
    return b >= n_bins ? n_bins - 1 : b;
}

/* AUROC from negative and positive counts per bin; NAN if a class is empty. */
double moeh_hist_auroc(const uint64_t *neg, const uint64_t *pos, size_t n_bins);

/* The exact AUROC of score[0..n) against label[0..n) (0/1), by the Mann-Whitney U with tied
 * scores sharing their average rank (a tie counts one half); *out = NAN if a class is empty.
 * No model/ dependency, so the data side (the synthetic generator's oracle) can use it.
 * 0 or -ENOMEM (a temporary index of n entries). */
int moeh_hist_auroc_exact(const double *score, const uint8_t *label, size_t n, double *out)
    __attribute__((warn_unused_result));

#endif
