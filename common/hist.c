/* hist.c - AUROC from binned scores, and the exact AUROC it approximates (see moeh_hist.h). */
#include "moeh_hist.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

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

int moeh_hist_auroc_exact(const double *score, const uint8_t *label, size_t n, double *out)
{
    /* Mann-Whitney U: sort by score, average ranks over ties */
    size_t *idx = malloc((n + 1) * sizeof *idx), npos = 0, nneg = 0;
    *out = NAN;
    if (!idx) return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    for (size_t gap = n / 2; gap > 0; gap /= 2) /* shell sort: no qsort context needed */
        for (size_t i = gap; i < n; i++)
            for (size_t j = i; j >= gap && score[idx[j - gap]] > score[idx[j]]; j -= gap) {
                size_t tmp = idx[j];
                idx[j] = idx[j - gap], idx[j - gap] = tmp;
            }
    double rank_sum = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && score[idx[j + 1]] == score[idx[i]])
            j++;
        double avg = (double)(i + j) / 2.0 + 1.0;
        for (size_t k = i; k <= j; k++)
            if (label[idx[k]]) rank_sum += avg;
        i = j + 1;
    }
    for (size_t i = 0; i < n; i++)
        label[i] ? npos++ : nneg++;
    free(idx);
    if (npos && nneg)
        *out = (rank_sum - (double)npos * ((double)npos + 1) / 2) / ((double)npos * (double)nneg);
    return 0;
}
