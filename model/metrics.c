/* metrics.c - AUROC by sorting (see moeh_metrics.h). */
#include "moeh_metrics.h"
#include "metrics_int.h"

#include <math.h>
#include <stdlib.h>

static int cmp_asc(const void *a, const void *b)
{
    float x = ((const scored_t *)a)->s, y = ((const scored_t *)b)->s;
    return (x > y) - (x < y);
}

double moeh_auroc(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride)
{
    size_t m, npos;
    scored_t *v = scored_collect(score, label, mask, n, stride, cmp_asc, &m, &npos);
    if (!v) return NAN;
    /* Sum of (average) ranks of the positives. */
    double rank_sum = 0;
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && v[j].s == v[i].s)
            j++;
        double avg_rank = (double)(i + 1 + j) / 2.0; /* ranks i+1 .. j */
        for (size_t k = i; k < j; k++)
            if (v[k].y) rank_sum += avg_rank;
        i = j;
    }
    free(v);
    size_t nneg = m - npos;
    if (npos == 0 || nneg == 0) return NAN;
    return (rank_sum - (double)npos * (npos + 1) / 2.0) / ((double)npos * (double)nneg);
}
