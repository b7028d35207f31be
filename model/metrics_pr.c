/* metrics_pr.c - AUPRC, F1 and the per-task / per-combination evaluation report
 * (see moeh_metrics.h). */
#include "moeh_metrics.h"
#include "metrics_int.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_desc(const void *a, const void *b)
{
    float x = ((const scored_t *)a)->s, y = ((const scored_t *)b)->s;
    return (x < y) - (x > y);
}

/* Walks the distinct thresholds from the top; fills AP and the best F1. */
static void sweep(const scored_t *v, size_t m, size_t npos, double *ap, double *f1b, double *thr)
{
    double tp = 0, fp = 0, prev_r = 0, a = 0, best = 0, bthr = NAN;
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && v[j].s == v[i].s) {
            tp += v[j].y;
            fp += !v[j].y;
            j++;
        }
        double prec = tp / (tp + fp), rec = tp / (double)npos;
        a += (rec - prev_r) * prec;
        prev_r = rec;
        double f1 = tp > 0 ? 2 * prec * rec / (prec + rec) : 0;
        if (f1 > best) {
            best = f1;
            bthr = v[i].s;
        }
        i = j;
    }
    *ap = a;
    *f1b = best;
    *thr = bthr;
}

double moeh_auprc(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride)
{
    size_t m, npos;
    scored_t *v = scored_collect(score, label, mask, n, stride, cmp_desc, &m, &npos);
    if (!v) return NAN;
    double ap = NAN, f1, thr;
    if (npos > 0) sweep(v, m, npos, &ap, &f1, &thr);
    free(v);
    return ap;
}

double moeh_f1_at(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride, float thr)
{
    double tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask && !mask[i * stride]) continue;
        int y = label[i * stride] > 0.5f, p = score[i * stride] >= thr;
        tp += y && p;
        fp += !y && p;
        fn += y && !p;
    }
    if (tp + fn == 0) return NAN;
    return tp > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;
}

int moeh_bin_metrics(moeh_bin_metrics_t *out, const float *score, const float *label,
                     const uint8_t *mask, size_t n, size_t stride)
{
    size_t m, npos;
    scored_t *v = scored_collect(score, label, mask, n, stride, cmp_desc, &m, &npos);
    if (!v) return -ENOMEM;
    out->n = m;
    out->n_pos = npos;
    out->auprc = out->f1_best = out->thr_best = NAN;
    if (npos > 0) sweep(v, m, npos, &out->auprc, &out->f1_best, &out->thr_best);
    free(v);
    out->auroc = moeh_auroc(score, label, mask, n, stride);
    out->f1_05 = moeh_f1_at(score, label, mask, n, stride, 0.5f);
    return 0;
}

int moeh_metrics_report(moeh_bin_metrics_t *per_task, moeh_bin_metrics_t *overall,
                        moeh_bin_metrics_t *per_combo, const float *probs, const float *y,
                        const uint8_t *y_mask, const uint8_t *avail, size_t N, size_t T)
{
    if (!T || !probs || !y) return -EINVAL;
    uint8_t *mk = malloc((N ? N : 1) * T);
    if (!mk) return -ENOMEM;
    int rc = 0;
    memset(overall, 0, sizeof *overall);
    double sum[4] = {0}, cnt[4] = {0};
    for (size_t t = 0; t < T && !rc; t++) {
        rc = moeh_bin_metrics(&per_task[t], probs + t, y + t, y_mask ? y_mask + t : NULL, N, T);
        const double f[4] = {per_task[t].auroc, per_task[t].auprc, per_task[t].f1_05,
                             per_task[t].f1_best};
        for (int k = 0; k < 4; k++)
            if (!isnan(f[k])) sum[k] += f[k], cnt[k]++;
        overall->n += per_task[t].n;
        overall->n_pos += per_task[t].n_pos;
    }
    overall->auroc = cnt[0] > 0 ? sum[0] / cnt[0] : NAN;
    overall->auprc = cnt[1] > 0 ? sum[1] / cnt[1] : NAN;
    overall->f1_05 = cnt[2] > 0 ? sum[2] / cnt[2] : NAN;
    overall->f1_best = cnt[3] > 0 ? sum[3] / cnt[3] : NAN;
    overall->thr_best = NAN; /* a threshold per task; no meaningful mean */
    for (size_t c = 0; c < 8 && avail && per_combo && !rc; c++) {
        for (size_t i = 0; i < N; i++) {
            size_t ci =
                (avail[i * 3] != 0) + 2u * (avail[i * 3 + 1] != 0) + 4u * (avail[i * 3 + 2] != 0);
            for (size_t t = 0; t < T; t++)
                mk[i * T + t] = ci == c && (!y_mask || y_mask[i * T + t]);
        }
        for (size_t t = 0; t < T && !rc; t++)
            rc = moeh_bin_metrics(&per_combo[c * T + t], probs + t, y + t, mk + t, N, T);
    }
    free(mk);
    return rc;
}
