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

/* Average precision, the step-wise area under the precision-recall curve as scikit-learn's
 * average_precision_score: sum over distinct thresholds (descending, ties grouped) of
 * (R_k - R_{k-1}) P_k. NAN when there is no positive. Allocates O(n) scratch. */
double moeh_auprc(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride);

/* F1 with "score >= thr" predicted positive; 0 when there are no true positives (and NAN when
 * there is no positive label at all). */
double moeh_f1_at(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride, float thr);

/* Binary-classification summary of one (score, label) column. */
typedef struct {
    double auroc, auprc, f1_05, f1_best, thr_best; /* NAN where undefined */
    size_t n, n_pos;
} moeh_bin_metrics_t;

/* AUROC, AUPRC, F1 at 0.5 and the best F1 over every threshold (with that threshold).
 * 0 or -ENOMEM. */
int moeh_bin_metrics(moeh_bin_metrics_t *out, const float *score, const float *label,
                     const uint8_t *mask, size_t n, size_t stride);

/* The evaluation report: per task, overall (the mean over tasks of each metric, NAN tasks
 * skipped) and per modality combination (index a0 + 2 a1 + 4 a2, 0 = nothing available) and
 * task. probs, y (N,T); y_mask (N,T) or NULL; avail (N,3) or NULL (then per_combo is left
 * alone). per_task (T), per_combo (8*T, [combo*T + t]). 0, -EINVAL or -ENOMEM. */
int moeh_metrics_report(moeh_bin_metrics_t *per_task, moeh_bin_metrics_t *overall,
                        moeh_bin_metrics_t *per_combo, const float *probs, const float *y,
                        const uint8_t *y_mask, const uint8_t *avail, size_t N, size_t T);

#endif
