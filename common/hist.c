/* hist.c - AUROC from binned scores (see moeh_hist.h). */
#include "moeh_hist.h"

#include <math.h>

double moeh_hist_auroc(const uint64_t *neg, const uint64_t *pos, size_t n_bins)
{
    double n_neg = 0, n_pos = 0, below = 0, num = 0;
    for (size_t b = 0; b < n_bins; b++) {
        n_neg += (double)neg[b];
        n_pos += (double)pos[b];
    }
    if (n_neg == 0 || n_pos == 0) return NAN;
    for (size_t b = 0; b < n_bins; b++) {
        /* positives in bin b beat every negative in lower bins and tie with those in b */
        num += (double)pos[b] * (below + 0.5 * (double)neg[b]);
        below += (double)neg[b];
    }
    return num / (n_pos * n_neg);
}
