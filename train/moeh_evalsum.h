/* moeh_evalsum.h - metrics from summed evaluation histograms: the AUROC of one slice and task
 * of a (slices, tasks, 2, bins) score histogram (moeh_trainer_evaluate's layout, summed over
 * sites by the coordinator), and the mean over the tasks that have one. Shared by the site
 * agent (its own figures), the coordinator (the federation's) and `moeh train`, so every
 * AUROC in metrics.jsonl is measured the same way. Pure functions: nothing is allocated. */
#ifndef MOEH_EVALSUM_H
#define MOEH_EVALSUM_H

#include <stddef.h>
#include <stdint.h>

/* AUROC (moeh_hist_auroc: ties within a bin count 1/2) of task `task` in slice `slice` of
 * hist (n_slices, n_tasks, 2, bins) u64, where [..][..][0][b] counts negatives and [..][..][1][b]
 * positives in bin b. NAN if the slice has no positive or no negative for that task. */
double moeh_eval_slice_auroc(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                             size_t task);

/* The same from a site's u32 histogram (moeh_eval_sums_t.hist); scratch (2 * bins u64, owned
 * by the caller) receives the widened counts of that slice and task. */
double moeh_eval_slice_auroc_u32(const uint32_t *hist, size_t n_tasks, size_t bins, size_t slice,
                                 size_t task, uint64_t *scratch);

/* out[i] = in[i] for i < n: a site's u32 histogram as the coordinator's u64 sums. */
void moeh_eval_hist_widen(uint64_t *out, const uint32_t *in, size_t n);

/* Calibration of one slice and task from the same histogram: the Brier score, and a
 * reliability curve over MOEH_CALIB_BINS equal-width bins of predicted probability (each score
 * bin goes to the reliability bin of its centre). Every prediction in score bin b counts as the
 * bin's centre (b + 1/2) / bins, so the Brier score is within 1/bins of the exact one (the
 * derivative of (p - y)^2 is at most 2, the shift at most 1/(2 bins)): 0.001 at the default
 * 1,000 bins. ECE = sum over reliability bins of (n_k / n) |mean_p_k - observed_k|. The log
 * loss (mean binary cross-entropy, the loss of training) is estimated the same way, each row at
 * its bin's centre: an estimate without a uniform bound (a row in bin b >= 1 moves by at most
 * log((b + 1/2) / b), one in the end bins by more, and a confidently wrong row there counts at
 * most -log(1 / (2 bins)), 7.6 at 1,000 bins); the exact loss of all tasks together is the
 * phase's loss_sum / n_labels. */
#define MOEH_CALIB_BINS 10
typedef struct {
    uint64_t n;                       /* labelled rows; 0: nothing below is defined (NAN) */
    double brier;                     /* mean (p - y)^2 */
    double ece;                       /* expected calibration error */
    double logloss;                   /* mean -[y log p + (1 - y) log(1 - p)], p at bin centres */
    uint64_t count[MOEH_CALIB_BINS];  /* rows per reliability bin */
    double mean_p[MOEH_CALIB_BINS];   /* mean predicted probability (NAN if empty) */
    double observed[MOEH_CALIB_BINS]; /* fraction of positives (NAN if empty) */
} moeh_calib_t;
void moeh_eval_slice_calib(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                           size_t task, moeh_calib_t *out);

/* The ROC curve of one slice and task from the same histogram: the operating points of the
 * thresholds at the bin edges (a row is called positive when its score bin is >= k, for k from
 * bins down to 0), from (0, 0) to (1, 1), fpr and tpr non-decreasing. Points that add nothing
 * to the curve are left out: bins without rows, and the inner points of a run of bins that
 * hold only negatives (a horizontal segment) or only positives (a vertical one), so that the
 * trapezoid area under the points is exactly the histogram AUROC (ties within a bin are the
 * diagonal of their step). fpr and tpr (room for bins + 1 points each, owned by the caller)
 * receive the points; *area (NULL: not wanted) the trapezoid area, equal to
 * moeh_eval_slice_auroc up to rounding. Returns the number of points (>= 2), or 0 with *area
 * NAN when the slice has no positive or no negative for that task. Nothing leaves a site for
 * this: it is computed from the summed histogram. */
size_t moeh_eval_slice_roc(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                           size_t task, double *fpr, double *tpr, double *area);

/* Mean of the finite entries of v[0..n) (a task without an AUROC is NAN and left out); NAN if
 * none is finite. */
double moeh_eval_mean_finite(const double *v, size_t n);

#endif
