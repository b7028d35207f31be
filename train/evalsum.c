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

void moeh_eval_slice_calib(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                           size_t task, moeh_calib_t *out)
{
    const uint64_t *neg = hist + (slice * n_tasks + task) * 2 * bins, *pos = neg + bins;
    double sq = 0, ll = 0, psum[MOEH_CALIB_BINS] = {0};
    uint64_t npos[MOEH_CALIB_BINS] = {0};
    *out = (moeh_calib_t){0};
    for (size_t b = 0; b < bins; b++) {
        double p = ((double)b + 0.5) / (double)bins;
        size_t k = (size_t)(p * MOEH_CALIB_BINS);
        if (k >= MOEH_CALIB_BINS) k = MOEH_CALIB_BINS - 1;
        uint64_t m = neg[b] + pos[b];
        sq += (double)neg[b] * p * p + (double)pos[b] * (1 - p) * (1 - p);
        if (m) ll -= (double)neg[b] * log1p(-p) + (double)pos[b] * log(p);
        out->n += m;
        out->count[k] += m;
        npos[k] += pos[b];
        psum[k] += (double)m * p;
    }
    out->brier = out->n ? sq / (double)out->n : NAN;
    out->logloss = out->n ? ll / (double)out->n : NAN;
    out->ece = out->n ? 0 : NAN;
    for (size_t k = 0; k < MOEH_CALIB_BINS; k++) {
        if (!out->count[k]) {
            out->mean_p[k] = out->observed[k] = NAN;
            continue;
        }
        out->mean_p[k] = psum[k] / (double)out->count[k];
        out->observed[k] = (double)npos[k] / (double)out->count[k];
        out->ece +=
            (double)out->count[k] / (double)out->n * fabs(out->mean_p[k] - out->observed[k]);
    }
}

size_t moeh_eval_slice_roc(const uint64_t *hist, size_t n_tasks, size_t bins, size_t slice,
                           size_t task, double *fpr, double *tpr, double *area)
{
    const uint64_t *neg = hist + (slice * n_tasks + task) * 2 * bins, *pos = neg + bins;
    uint64_t n_neg = 0, n_pos = 0;
    for (size_t b = 0; b < bins; b++)
        n_neg += neg[b], n_pos += pos[b];
    if (area) *area = NAN;
    if (n_neg == 0 || n_pos == 0) return 0;
    /* from the top bin down, cumulative counts; the kind of the last segment: 1 only
     * negatives (horizontal), 2 only positives (vertical), 3 both (a diagonal: ties) */
    uint64_t fp = 0, tp = 0;
    size_t n = 1;
    int last = 0;
    fpr[0] = tpr[0] = 0;
    for (size_t b = bins; b-- > 0;) {
        if (!neg[b] && !pos[b]) continue;
        int kind = (neg[b] ? 1 : 0) | (pos[b] ? 2 : 0);
        fp += neg[b], tp += pos[b];
        if (kind != 3 && kind == last) n--; /* the straight run goes on: move its end */
        fpr[n] = (double)fp / (double)n_neg;
        tpr[n] = (double)tp / (double)n_pos;
        n++;
        last = kind;
    }
    if (area) {
        double a = 0;
        for (size_t i = 1; i < n; i++)
            a += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2;
        *area = a;
    }
    return n;
}

double moeh_eval_mean_finite(const double *v, size_t n)
{
    double s = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], k++;
    return k ? s / (double)k : NAN;
}
