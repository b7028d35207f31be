/* metrics_int.h - private to model/metrics*.c: the (score, label) pairs that AUROC (metrics.c)
 * and AUPRC / F1 (metrics_pr.c) sort. */
#ifndef MOEH_METRICS_INT_H
#define MOEH_METRICS_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    float s;
    uint8_t y;
} scored_t;

/* The rows that mask keeps (mask NULL: all; row i's values at i * stride) as (score,
 * label > 0.5) pairs sorted with cmp; *m receives the count, *npos the positives. NULL when out
 * of memory; the caller frees the result. */
static inline scored_t *scored_collect(const float *score, const float *label, const uint8_t *mask,
                                       size_t n, size_t stride,
                                       int (*cmp)(const void *, const void *), size_t *m,
                                       size_t *npos)
{
    scored_t *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return NULL;
    size_t k = 0, p = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask && !mask[i * stride]) continue;
        v[k].s = score[i * stride];
        v[k].y = label[i * stride] > 0.5f;
        p += v[k].y;
        k++;
    }
    qsort(v, k, sizeof *v, cmp);
    *m = k;
    *npos = p;
    return v;
}

#endif
