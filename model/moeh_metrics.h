/* moeh_metrics.h - evaluation metrics on (score, label) pairs with a presence mask. */
#ifndef MOEH_METRICS_H
#define MOEH_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Exact AUROC (Mann-Whitney U with ties counted as 1/2) over the n pairs whose mask is set
 * (mask may be NULL; stride lets score/label/mask be a column of a (n,stride) array).
 * Returns NAN when either class is absent. Allocates O(n) scratch. */
double moeh_auroc(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride);

#endif
