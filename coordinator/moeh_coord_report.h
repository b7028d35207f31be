/* moeh_coord_report.h - what the coordinator tells people: metrics.jsonl (one JSON object per
 * line, written with cJSON so that any string a site sends stays inside its line), config.json,
 * the per-round table and the final table on stdout. The report owns the metrics file; its
 * lines are flushed as they are written. Not thread-safe. */
#ifndef MOEH_COORD_REPORT_H
#define MOEH_COORD_REPORT_H

#include "moeh_coordinator.h"
#include "moeh_evalsum.h"

#include "moeh_schema.h"

#include <stdio.h>

#define MOEH_REPORT_WUR __attribute__((warn_unused_result))

typedef struct moeh_coord_report moeh_coord_report_t;

/* DP fields of a metrics line (docs/security.md). */
typedef struct {
    double eps, eps_coord; /* epsilon against the models, and against the coordinator's view */
    float delta, noise, clip;
    uint32_t sites;
    uint64_t rounds; /* released rounds */
} moeh_report_dp_t;

/* One closed TRAIN phase. */
typedef struct {
    uint32_t round, sites, participants;
    double train_loss, samples, steps; /* train_loss NaN: unknown (DP, or no samples) */
    size_t groups_updated;
    uint64_t model_version;
    const moeh_report_dp_t *dp; /* NULL without DP */
    /* granted uploads (slots 0: not granted, no line) */
    uint32_t upload_slots, upload_max, upload_expired;
    /* the sites whose update is in the sum, the round's weight bound (it sets the fixed-point
     * scale) and the XXH64 of the parameters after the step: what a replay of the run's
     * participation (moeh_coordinator_testing.h) needs and checks */
    const char *const *contributors;
    size_t n_contributors;
    double w_cap;
    uint64_t model_hash;
} moeh_report_train_t;

/* One closed EVAL phase. auroc[slice][task]: slice 0 every row, 1 + c combination c. */
typedef struct {
    uint32_t round, sites, participants, n_tasks;
    double train_loss, test_loss, auroc_mean, seconds;
    const double (*auroc)[MOEH_N_TASKS];
    const uint64_t *combo_rows; /* (MOEH_N_COMBOS) */
    const double *gate_sum;     /* (MOEH_N_COMBOS, n_experts) summed gate weights */
    uint32_t n_experts;
    int secagg;   /* the per-site rows cannot exist: say so */
    int per_site; /* plain mode: the per-site rows were written (--per-site-metrics) */
    const moeh_report_dp_t *dp;
    const moeh_calib_t *calib; /* (n_tasks) Brier and reliability over every row; NULL: none */
    /* the round's VALIDATE phase (have_val 0: none): loss, AUROC and calibration per task */
    int have_val;
    double val_loss, val_auroc_mean;
    const double *val_auroc;             /* (n_tasks) */
    const moeh_calib_t *val_calib;       /* (n_tasks) */
    const char *const *val_contributors; /* the sites whose validation histograms were summed */
    size_t n_val_contributors;
    const char *const *test_contributors; /* the sites whose test histograms were summed */
    size_t n_test_contributors;
} moeh_report_eval_t;

/* A phase attempt that failed (deadline or quorum missed, a secure-aggregation session that
 * could not finish) and what the coordinator did about it. */
typedef struct {
    uint32_t round;
    const char *phase;   /* "statistics", "train", "validation", "eval" */
    const char *outcome; /* "retry": opened again now; "wait": fewer than `needed` sites
                          * connected, an outage (no retry counted); "failed": out of retries,
                          * the run ends */
    uint32_t attempt;    /* retries counted in this phase so far, this one included */
    uint32_t max_retries, connected, needed;
    const char *why; /* what failed, as logged */
} moeh_report_retry_t;

/* Opens out_dir/metrics.jsonl (appending when resuming) for a run of n_tasks tasks; the tables
 * go to `table` (NULL: no tables). 0 or a negative code with err->msg; caller owns *out:
 * moeh_coord_report_destroy(&r). */
/* Before a resumed run appends: drops the lines of out_dir/metrics.jsonl that the interrupted
 * run wrote after the checkpoint of `round` (every line from the first with a later round, or
 * the first that does not parse: a line torn by the kill), rewriting the file atomically, so
 * that each round's rows appear once. *dropped: the lines removed. 0 or a negative code. */
int moeh_coord_report_resume_at(const char *out_dir, uint32_t round, size_t *dropped,
                                moeh_err_t *err) MOEH_REPORT_WUR;
int moeh_coord_report_open(const char *out_dir, int append, uint32_t n_tasks, FILE *table,
                           moeh_coord_report_t **out, moeh_err_t *err) MOEH_REPORT_WUR;
/* NULL-safe; closes the file; sets *self_p = NULL. */
void moeh_coord_report_destroy(moeh_coord_report_t **self_p);
/* out_dir/config.json: the run's configuration, written atomically. 0 or a negative code. */
int moeh_coord_report_config(const moeh_coord_cfg_t *cfg, moeh_err_t *err) MOEH_REPORT_WUR;

void moeh_coord_report_site_gone(moeh_coord_report_t *r, uint32_t round, const char *site,
                                 const char *why);
/* train_loss NaN: not reported (null). */
void moeh_coord_report_site_update(moeh_coord_report_t *r, uint32_t round, const char *site,
                                   double train_loss, uint64_t n_samples, uint32_t steps);
/* auroc: this site's own AUROC of each task over all its rows. */
void moeh_coord_report_site_eval(moeh_coord_report_t *r, uint32_t round, const char *site,
                                 double test_loss, const double *auroc);
/* contributors: the sites whose statistics were summed. */
void moeh_coord_report_stats(moeh_coord_report_t *r, uint32_t sites, size_t features,
                             const char *const *contributors, size_t n_contributors);
void moeh_coord_report_train(moeh_coord_report_t *r, const moeh_report_train_t *t);
/* The "retry" line: one per failed phase attempt (docs/architecture.md, "Failure handling"). */
void moeh_coord_report_retry(moeh_coord_report_t *r, const moeh_report_retry_t *x);
/* The eval, task and gate lines, and a row of the table. */
void moeh_coord_report_eval(moeh_coord_report_t *r, const moeh_report_eval_t *e);
/* One "roc" line per task: the ROC curve of split ("test", "val") on every row (slice 0 of
 * hist, the (slices, n_tasks, 2, bins) sums of the phase), from moeh_eval_slice_roc: "fpr" and
 * "tpr" arrays from (0, 0) to (1, 1) (empty when a class is absent), "n_pos", "n_neg", and the
 * "auroc" the points integrate to. Computed from the summed histogram only. */
void moeh_coord_report_roc(moeh_coord_report_t *r, uint32_t round, const char *split,
                           const uint64_t *hist, uint32_t bins);
/* The "selection" line of metrics.jsonl (selected_round, selected_by, value, why) and, on
 * the table, which round was selected and why. */
void moeh_coord_report_selection(moeh_coord_report_t *r, uint32_t round, const char *key,
                                 double value, const char *why, double test_auroc_mean);
/* The final table: test AUROC per task, over all rows and per modality combination, then the
 * Brier score and ECE per task of the test split (calib) and of the validation split
 * (val_calib; n_tasks entries each, or NULL: no rows), of the selected round or else the last
 * evaluation (nothing if no round was evaluated by this process). */
void moeh_coord_report_final(moeh_coord_report_t *r, const double (*auroc)[MOEH_N_TASKS],
                             const uint64_t *combo_rows, const moeh_calib_t *calib,
                             const moeh_calib_t *val_calib);

#endif
