/* select.c - federated validation and model selection of the coordinator core
 * (coord_internal.h). Each round's VALIDATE phase sums the sites' score histograms on their
 * validation splits (with their test splits' in the same reply, protocol 9); the round with the
 * best mean validation AUROC (or lowest validation loss,
 * --select-by loss) is the selected round: its parameters and its test metrics are kept, and
 * they are what the run reports and writes at the end. --patience N ends the run after N
 * rounds without improvement. The values compared are rounded to float, so that a run
 * resumed from the checkpoint (which stores floats) selects exactly as an uninterrupted one. */
#include "coord_internal.h"
#include "moeh_evalsum.h"

#include "moeh_secsum.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void coord_finish_val(coord_t *c)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    const uint32_t T = (uint32_t)cfg->model.n_tasks, nb = cfg->eval_bins;
    double loss_sum;
    uint64_t n_labels;
    /* the validation split's half of the VALIDATE vector (moeh_secsum.h: test, then validation) */
    moeh_secsum_eval_get(c->vsum + moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__EVALUATE),
                         moeh_wire_secsum_dims(&c->lim), c->hist, c->gate_sum, c->combo_rows,
                         &loss_sum, &n_labels);
    for (uint32_t t = 0; t < T; t++) {
        c->val_auroc[t] = moeh_eval_slice_auroc(c->hist, T, nb, 0, t);
        moeh_eval_slice_calib(c->hist, T, nb, 0, t, &c->val_calib[t]);
    }
    moeh_coord_report_roc(c->report, c->round, "val", c->hist, nb); /* "roc" lines */
    c->val_mean = moeh_eval_mean_finite(c->val_auroc, T);
    c->val_loss = n_labels ? loss_sum / (double)n_labels : NAN;
    c->have_val = 1;
    for (size_t i = 0; i < c->n_sites; i++) /* who is in these sums (the metrics' eval line) */
        c->sites[i].val_in = coord_contributed(c, &c->sites[i]);
    const float v = (float)(cfg->select_by_loss ? c->val_loss : c->val_mean);
    int better = 0;
    if (!isnan(v))
        better = c->sel_round == 0 || isnan(c->sel_value) ||
                 (cfg->select_by_loss ? v < c->sel_value : v > c->sel_value);
    c->val_improved = better;
    if (better) {
        c->sel_round = c->round;
        c->sel_value = v;
        c->sel_bad = 0;
        memcpy(c->sel_w, c->p->w, c->p->n * sizeof(float));
        memcpy(c->sel_val_calib, c->val_calib, sizeof c->sel_val_calib);
    } else {
        c->sel_bad++;
    }
    MOEH_INFO("round %u validation: loss %.4f, mean AUROC %.4f (%s; selected round %u, %u "
              "round(s) without improvement)",
              c->round, c->val_loss, c->val_mean, better ? "best so far" : "no improvement",
              c->sel_round, c->sel_bad);
}

void coord_select_keep_test(coord_t *c, double test_loss, double auroc_mean)
{
    if (!c->val_improved) return;
    memcpy(c->sel_auroc, c->last_auroc, sizeof c->sel_auroc);
    memcpy(c->sel_combo_rows, c->combo_rows, sizeof c->sel_combo_rows);
    memcpy(c->sel_calib, c->last_calib, sizeof c->sel_calib);
    c->sel_test_loss = test_loss;
    c->sel_test_mean = auroc_mean;
    c->sel_have_test = 1;
}

int coord_select_stop(const coord_t *c)
{
    return c->cfg->validate && c->cfg->patience > 0 && c->sel_bad >= c->cfg->patience;
}

int coord_select_init(coord_t *c)
{
    if (!c->cfg->validate || c->sel_w) return 0;
    c->sel_w = calloc(c->p->n, sizeof(float));
    c->sel_value = NAN;
    return c->sel_w ? 0 : -ENOMEM;
}

const char *coord_select_key(const coord_t *c)
{
    return c->cfg->select_by_loss ? "val_loss" : "val_auroc_mean";
}

/* Checkpoint: [round, value, rounds without improvement, have test, test loss, test mean,
 * auroc (slices x tasks), combo rows, test brier and ece per task, validation brier and ece
 * per task]. A checkpoint from before the validation calibration lacks the last part. */
size_t coord_select_state_len(int with_val_calib)
{
    return 6 + (size_t)MOEH_N_SLICES * MOEH_N_TASKS + MOEH_N_COMBOS + 2 * MOEH_N_TASKS +
           (with_val_calib ? 2 * MOEH_N_TASKS : 0);
}

void coord_select_state_put(const coord_t *c, float *s)
{
    size_t k = 0;
    s[k++] = (float)c->sel_round;
    s[k++] = c->sel_value;
    s[k++] = (float)c->sel_bad;
    s[k++] = (float)c->sel_have_test;
    s[k++] = (float)c->sel_test_loss;
    s[k++] = (float)c->sel_test_mean;
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++)
        for (size_t t = 0; t < MOEH_N_TASKS; t++)
            s[k++] = (float)c->sel_auroc[sl][t];
    for (size_t j = 0; j < MOEH_N_COMBOS; j++)
        s[k++] = (float)c->sel_combo_rows[j];
    for (size_t t = 0; t < MOEH_N_TASKS; t++) {
        s[k++] = (float)c->sel_calib[t].brier;
        s[k++] = (float)c->sel_calib[t].ece;
    }
    for (size_t t = 0; t < MOEH_N_TASKS; t++) {
        s[k++] = (float)c->sel_val_calib[t].brier;
        s[k++] = (float)c->sel_val_calib[t].ece;
    }
}

void coord_select_state_get(coord_t *c, const float *s, size_t len, const float *w)
{
    size_t k = 0;
    c->sel_round = (uint32_t)s[k++];
    c->sel_value = s[k++];
    c->sel_bad = (uint32_t)s[k++];
    c->sel_have_test = s[k++] != 0;
    c->sel_test_loss = s[k++];
    c->sel_test_mean = s[k++];
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++)
        for (size_t t = 0; t < MOEH_N_TASKS; t++)
            c->sel_auroc[sl][t] = s[k++];
    for (size_t j = 0; j < MOEH_N_COMBOS; j++)
        c->sel_combo_rows[j] = (uint64_t)s[k++];
    for (size_t t = 0; t < MOEH_N_TASKS; t++) {
        memset(&c->sel_calib[t], 0, sizeof c->sel_calib[t]);
        c->sel_calib[t].brier = s[k++];
        c->sel_calib[t].ece = s[k++];
        c->sel_calib[t].n = isnan(c->sel_calib[t].brier) ? 0 : 1;
    }
    const int have_val = len >= coord_select_state_len(1);
    for (size_t t = 0; t < MOEH_N_TASKS; t++) { /* NAN: unknown (an older checkpoint) */
        memset(&c->sel_val_calib[t], 0, sizeof c->sel_val_calib[t]);
        c->sel_val_calib[t].brier = have_val ? s[k++] : NAN;
        c->sel_val_calib[t].ece = have_val ? s[k++] : NAN;
        c->sel_val_calib[t].n = isnan(c->sel_val_calib[t].brier) ? 0 : 1;
    }
    memcpy(c->sel_w, w, c->p->n * sizeof(float));
}
