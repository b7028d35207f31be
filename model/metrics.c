/* metrics.c - AUROC by sorting (see moeh_metrics.h). */
#include "moeh_metrics.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float s;
    uint8_t y;
} pair_t;

static int cmp_pair(const void *a, const void *b)
{
    float x = ((const pair_t *)a)->s, y = ((const pair_t *)b)->s;
    return (x > y) - (x < y);
}

double moeh_auroc(const float *score, const float *label, const uint8_t *mask, size_t n,
                  size_t stride)
{
    pair_t *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return NAN;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask && !mask[i * stride]) continue;
        v[m].s = score[i * stride];
        v[m].y = label[i * stride] > 0.5f;
        m++;
    }
    qsort(v, m, sizeof *v, cmp_pair);
    /* Sum of (average) ranks of the positives. */
    double rank_sum = 0;
    size_t npos = 0;
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && v[j].s == v[i].s)
            j++;
        double avg_rank = (double)(i + 1 + j) / 2.0; /* ranks i+1 .. j */
        for (size_t k = i; k < j; k++)
            if (v[k].y) {
                rank_sum += avg_rank;
                npos++;
            }
        i = j;
    }
    free(v);
    size_t nneg = m - npos;
    if (npos == 0 || nneg == 0) return NAN;
    return (rank_sum - (double)npos * (npos + 1) / 2.0) / ((double)npos * (double)nneg);
}
