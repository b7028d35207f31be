/* evalsum.c - metrics from summed evaluation histograms (see moeh_evalsum.h). */
#include "moeh_evalsum.h"
#include "moeh_hist.h"

#include <math.h>

double moeh_eval_slice_auroc(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                             size_t task)
{
    const uint64_t *neg = hist + (slice * n_tasks + task) * 2 * bins;
    return moeh_hist_auroc(neg, neg + bins, bins);
}

double moeh_eval_slice_auroc_u32(const uint32_t *hist, size_t n_tasks, size_t bins, size_t slice,
                                 size_t task, uint64_t *scratch)
{
    moeh_eval_hist_widen(scratch, hist + (slice * n_tasks + task) * 2 * bins, 2 * bins);
    return moeh_eval_slice_auroc(scratch, 1, bins, 0, 0);
}

void moeh_eval_hist_widen(uint64_t *out, const uint32_t *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = in[i];
}

double moeh_eval_mean_finite(const double *v, size_t n)
{
    double s = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], k++;
    return k ? s / (double)k : NAN;
}
