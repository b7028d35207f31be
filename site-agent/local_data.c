/* local_data.c - loading and validating a site's dataset directory (see local_data.h). */
#include "local_data.h"

#include "npy.h"

#include <math.h>
#include <string.h>

int moeh_local_data_load(const char *dir, moeh_local_data_t *out, moeh_err_t *err)
{
    moeh_npy_t x = {0}, y = {0}, m = {0}, s = {0};
    char path[4096];
    int rc;
    memset(out, 0, sizeof *out);
    moeh_path_join(path, sizeof path, dir, "static.npy");
    if ((rc = moeh_npy_read(path, MOEH_DT_F32, 2, &x, err)))
        goto fail;
    moeh_path_join(path, sizeof path, dir, "labels.npy");
    if ((rc = moeh_npy_read(path, MOEH_DT_F32, 2, &y, err)))
        goto fail;
    moeh_path_join(path, sizeof path, dir, "label_mask.npy");
    if ((rc = moeh_npy_read(path, MOEH_DT_U8, 2, &m, err)))
        goto fail;
    moeh_path_join(path, sizeof path, dir, "split.npy");
    if ((rc = moeh_npy_read(path, MOEH_DT_U8, 1, &s, err)))
        goto fail;
    size_t n = x.shape[0];
    rc = -EBADMSG;
    if (n == 0 || x.shape[1] == 0) {
        moeh_errf(err, rc, "%s/static.npy: empty", dir);
        goto fail;
    }
    if (y.shape[0] != n || m.shape[0] != n || s.shape[0] != n) {
        moeh_errf(err, rc, "%s: row counts differ (static %zu, labels %zu, label_mask %zu, "
                           "split %zu)", dir, n, y.shape[0], m.shape[0], s.shape[0]);
        goto fail;
    }
    if (m.shape[1] != y.shape[1]) {
        moeh_errf(err, rc, "%s: labels has %zu tasks, label_mask %zu", dir, y.shape[1],
                  m.shape[1]);
        goto fail;
    }
    const float *xf = x.data, *yf = y.data;
    const uint8_t *mf = m.data, *sf = s.data;
    for (size_t i = 0; i < n * x.shape[1]; i++)
        if (!isfinite(xf[i])) {
            moeh_errf(err, rc, "%s/static.npy: row %zu column %zu is not finite", dir,
                      i / x.shape[1], i % x.shape[1]);
            goto fail;
        }
    for (size_t i = 0; i < n * y.shape[1]; i++)
        if (mf[i] > 1 || (mf[i] && yf[i] != 0.0f && yf[i] != 1.0f)) {
            moeh_errf(err, rc, "%s: row %zu task %zu: label %g with mask %u (expected 0/1)", dir,
                      i / y.shape[1], i % y.shape[1], (double)yf[i], mf[i]);
            goto fail;
        }
    for (size_t i = 0; i < n; i++) {
        if (sf[i] > 2) {
            moeh_errf(err, rc, "%s/split.npy: row %zu is %u (expected 0 train, 1 val, 2 test)",
                      dir, i, sf[i]);
            goto fail;
        }
        out->n_train += sf[i] == 0;
        out->n_val += sf[i] == 1;
        out->n_test += sf[i] == 2;
    }
    out->n = n;
    out->n_features = x.shape[1];
    out->n_tasks = y.shape[1];
    out->x = x.data;
    out->y = y.data;
    out->mask = m.data;
    out->split = s.data;
    return 0;
fail:
    moeh_npy_free(&x);
    moeh_npy_free(&y);
    moeh_npy_free(&m);
    moeh_npy_free(&s);
    return rc;
}

void moeh_local_data_free(moeh_local_data_t *d)
{
    free(d->x);
    free(d->y);
    free(d->mask);
    free(d->split);
    memset(d, 0, sizeof *d);
}
