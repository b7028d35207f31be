/* aggregate.h - per-group FedAvg as a running sum.
 *
 * Each update carries, for every parameter group g, u_g = w_g * delta_g over the group's slice
 * and the weight w_g (samples that trained g; 0 if the site did not train it). Updates are
 * folded into one double-precision sum as they arrive, so memory is O(parameters) whatever the
 * number of sites. apply() sets theta_g += sum_s u_sg / sum_s w_sg and leaves a group that no
 * site trained unchanged. */
#ifndef MOEH_AGGREGATE_H
#define MOEH_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t n_params, n_groups;
    size_t group_off[32], group_len[32];
    double *sum;       /* (n_params) */
    double wsum[32];   /* per group */
    size_t n_updates;
} moeh_fedavg_t;

/* Groups are given as contiguous slices covering [0, n_params). 0, -EINVAL or -ENOMEM. */
int moeh_fedavg_init(moeh_fedavg_t *a, size_t n_params, size_t n_groups, const size_t *group_off,
                     const size_t *group_len);
void moeh_fedavg_free(moeh_fedavg_t *a);
/* Clears the sum for a new round. */
void moeh_fedavg_reset(moeh_fedavg_t *a);
/* Folds one update: wdelta (n_params float32, little-endian, possibly unaligned bytes) and
 * weights (n_groups, each >= 0). */
void moeh_fedavg_add(moeh_fedavg_t *a, const void *wdelta, const double *weights);
/* theta += per-group weighted mean delta. Returns the number of groups updated. */
size_t moeh_fedavg_apply(const moeh_fedavg_t *a, float *theta);

#endif
