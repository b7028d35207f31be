/* moeh_evalsum.h - metrics from summed evaluation histograms: the AUROC of one slice and task
 * of a (slices, tasks, 2, bins) score histogram (moeh_trainer_evaluate's layout, summed over
 * sites by the coordinator), and the mean over the tasks that have one. Shared by the site
 * agent (its own figures), the coordinator (the federation's) and `moeh-sim train`, so every
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

/* Mean of the finite entries of v[0..n) (a task without an AUROC is NAN and left out); NAN if
 * none is finite. */
double moeh_eval_mean_finite(const double *v, size_t n);

#endif
