/* aggregate.c - per-group FedAvg running sum (see aggregate.h). */
#include "aggregate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int moeh_fedavg_init(moeh_fedavg_t *a, size_t n_params, size_t n_groups, const size_t *group_off,
                     const size_t *group_len)
{
    memset(a, 0, sizeof *a);
    if (n_groups == 0 || n_groups > 32)
        return -EINVAL;
    size_t next = 0;
    for (size_t g = 0; g < n_groups; g++) {
        if (group_off[g] != next)
            return -EINVAL;
        next += group_len[g];
        a->group_off[g] = group_off[g];
        a->group_len[g] = group_len[g];
    }
    if (next != n_params)
        return -EINVAL;
    a->n_params = n_params;
    a->n_groups = n_groups;
    a->sum = calloc(n_params ? n_params : 1, sizeof(double));
    return a->sum ? 0 : -ENOMEM;
}

void moeh_fedavg_free(moeh_fedavg_t *a)
{
    free(a->sum);
    memset(a, 0, sizeof *a);
}

void moeh_fedavg_reset(moeh_fedavg_t *a)
{
    memset(a->sum, 0, a->n_params * sizeof(double));
    memset(a->wsum, 0, sizeof a->wsum);
    a->n_updates = 0;
}

void moeh_fedavg_add(moeh_fedavg_t *a, const void *wdelta, const double *weights)
{
    const unsigned char *p = wdelta;
    double *restrict s = a->sum;
    for (size_t i = 0; i < a->n_params; i++) {
        float x;
        memcpy(&x, p + 4 * i, 4);
        s[i] += x;
    }
    for (size_t g = 0; g < a->n_groups; g++)
        a->wsum[g] += weights[g];
    a->n_updates++;
}

size_t moeh_fedavg_apply(const moeh_fedavg_t *a, float *theta)
{
    size_t updated = 0;
    for (size_t g = 0; g < a->n_groups; g++) {
        if (!(a->wsum[g] > 0))
            continue; /* no site trained this group: keep it */
        double inv = 1.0 / a->wsum[g];
        for (size_t i = a->group_off[g]; i < a->group_off[g] + a->group_len[g]; i++)
            theta[i] = (float)((double)theta[i] + a->sum[i] * inv);
        updated++;
    }
    return updated;
}
