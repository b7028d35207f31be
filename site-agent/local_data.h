/* local_data.h - a site's tabular dataset as the agent uses it: static features, labels with
 * a per-task mask, and the train/val/test split. Read from a dataset directory of .npy files:
 *   static.npy (N,F) f32   labels.npy (N,T) f32   label_mask.npy (N,T) u8   split.npy (N) u8
 * (split: 0 train, 1 validation, 2 test). Every array is validated against the others and
 * errors name the file and what is wrong. */
#ifndef MOEH_LOCAL_DATA_H
#define MOEH_LOCAL_DATA_H

#include "moeh_common.h"

typedef struct {
    size_t n, n_features, n_tasks;
    float *x;      /* (n, n_features) */
    float *y;      /* (n, n_tasks) */
    uint8_t *mask; /* (n, n_tasks) */
    uint8_t *split;
    size_t n_train, n_val, n_test;
} moeh_local_data_t;

int moeh_local_data_load(const char *dir, moeh_local_data_t *out, moeh_err_t *err);
void moeh_local_data_free(moeh_local_data_t *d);

#endif
