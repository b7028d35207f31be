/* report.c - metrics.jsonl, config.json and the tables of the coordinator (see
 * moeh_coord_report.h). Every JSON document is built with cJSON: a string from a site (a Bye
 * reason, a site id) is escaped, and a number JSON cannot hold (NaN, infinity) is null. */
#include "moeh_coord_report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct moeh_coord_report {
    FILE *metrics;
    FILE *table; /* NULL: no tables */
    uint32_t n_tasks;
    int table_header_done;
};

/* v rounded to `digits` decimals (what a reader of metrics needs); NaN and infinities stay. */
static double rnd(double v, int digits)
{
    if (!isfinite(v)) return v;
    double k = pow(10.0, digits);
    double r = round(v * k) / k;
    return isfinite(r) ? r : v;
}

/* A float option as it was given (7 significant digits), not its binary expansion. */
static double f7(float v)
{
    char b[32];
    snprintf(b, sizeof b, "%.7g", (double)v);
    return strtod(b, NULL);
}

/* Writes j as one line of metrics.jsonl and frees it. */
static void emit(moeh_coord_report_t *r, cJSON *j)
{
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) {
        MOEH_ERROR("out of memory for a metrics line; line dropped");
        return;
    }
    if (r->metrics) {
        fputs(s, r->metrics);
        fputc('\n', r->metrics);
        fflush(r->metrics);
    }
    free(s);
}

static cJSON *event(const char *name)
{
    cJSON *j = cJSON_CreateObject();
    if (j) cJSON_AddStringToObject(j, "event", name);
    return j;
}

/* j[key] = the site ids (nothing when there are none to give). */
static void add_ids(cJSON *j, const char *key, const char *const *ids, size_t n)
{
    if (!ids) return;
    cJSON *a = cJSON_AddArrayToObject(j, key);
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(ids[i]));
}

static void add_dp(cJSON *j, const moeh_report_dp_t *dp)
{
    if (!dp) return;
    cJSON_AddNumberToObject(j, "dp_epsilon", dp->eps);
    cJSON_AddNumberToObject(j, "dp_epsilon_coordinator", dp->eps_coord);
    cJSON_AddNumberToObject(j, "dp_delta", f7(dp->delta));
    cJSON_AddNumberToObject(j, "dp_noise", f7(dp->noise));
    cJSON_AddNumberToObject(j, "dp_clip", f7(dp->clip));
    cJSON_AddNumberToObject(j, "dp_sites", dp->sites);
    cJSON_AddNumberToObject(j, "dp_rounds", (double)dp->rounds);
}

/* A resumed run continues from the checkpoint of `round`: the lines that the interrupted run
 * wrote after it (rows of later rounds, and a line torn by the kill) are dropped, so that every
 * round's rows appear once. The file is rewritten atomically; *dropped counts the lines. */
static int drop_after_round(const char *path, uint32_t round, size_t *dropped, moeh_err_t *err)
{
    char *text = NULL;
    size_t len = 0;
    *dropped = 0;
    int rc = moeh_file_read_all(path, (size_t)1 << 30, &text, &len, err);
    if (rc == -ENOENT) return 0; /* nothing written yet */
    if (rc) return rc;
    size_t keep = 0;
    for (size_t at = 0; at < len;) {
        char *nl = memchr(text + at, '\n', len - at);
        if (!nl) break; /* a torn last line */
        *nl = '\0';
        cJSON *j = cJSON_Parse(text + at);
        *nl = '\n';
        const cJSON *r = j ? cJSON_GetObjectItemCaseSensitive(j, "round") : NULL;
        int later = !j || (cJSON_IsNumber(r) && r->valuedouble > round);
        cJSON_Delete(j);
        if (later) break;
        at = (size_t)(nl - text) + 1;
        keep = at;
    }
    for (size_t i = keep; i < len; i++)
        *dropped += text[i] == '\n' || i + 1 == len;
    if (keep < len) rc = moeh_file_write_atomic(path, text, keep, err);
    free(text);
    return rc;
}

int moeh_coord_report_resume_at(const char *out_dir, uint32_t round, size_t *dropped,
                                moeh_err_t *err)
{
    char path[4096];
    if (moeh_path_join(path, sizeof path, out_dir, "metrics.jsonl"))
        return moeh_errf(err, -ENAMETOOLONG, "--out is too long");
    return drop_after_round(path, round, dropped, err);
}

int moeh_coord_report_open(const char *out_dir, int append, uint32_t n_tasks, FILE *table,
                           moeh_coord_report_t **out, moeh_err_t *err)
{
    *out = NULL;
    char path[4096];
    if (n_tasks == 0 || n_tasks > MOEH_N_TASKS)
        return moeh_errf(err, -EINVAL, "%u tasks: expected 1..%d", n_tasks, MOEH_N_TASKS);
    if (moeh_path_join(path, sizeof path, out_dir, "metrics.jsonl"))
        return moeh_errf(err, -ENAMETOOLONG, "--out is too long");
    moeh_coord_report_t *r = calloc(1, sizeof *r);
    if (!r) return moeh_errf(err, -ENOMEM, "out of memory");
    if (!(r->metrics = fopen(path, append ? "a" : "w"))) {
        int rc = moeh_errf(err, -errno, "%s: cannot create: %s", path, strerror(errno));
        free(r);
        return rc;
    }
    r->table = table;
    r->n_tasks = n_tasks;
    *out = r;
    return 0;
}

void moeh_coord_report_destroy(moeh_coord_report_t **self_p)
{
    if (!self_p || !*self_p) return;
    if ((*self_p)->metrics) fclose((*self_p)->metrics);
    free(*self_p);
    *self_p = NULL;
}

void moeh_coord_report_site_gone(moeh_coord_report_t *r, uint32_t round, const char *site,
                                 const char *why)
{
    cJSON *j = event("site_gone");
    cJSON_AddNumberToObject(j, "round", round);
    cJSON_AddStringToObject(j, "site", site);
    cJSON_AddStringToObject(j, "why", why);
    emit(r, j);
}

void moeh_coord_report_site_update(moeh_coord_report_t *r, uint32_t round, const char *site,
                                   double train_loss, uint64_t n_samples, uint32_t steps)
{
    cJSON *j = event("site_update");
    cJSON_AddNumberToObject(j, "round", round);
    cJSON_AddStringToObject(j, "site", site);
    cJSON_AddNumberToObject(j, "train_loss", rnd(train_loss, 6));
    cJSON_AddNumberToObject(j, "n_samples", (double)n_samples);
    cJSON_AddNumberToObject(j, "steps", steps);
    emit(r, j);
}

void moeh_coord_report_site_eval(moeh_coord_report_t *r, uint32_t round, const char *site,
                                 double test_loss, const double *auroc)
{
    cJSON *j = event("site_eval");
    cJSON_AddNumberToObject(j, "round", round);
    cJSON_AddStringToObject(j, "site", site);
    cJSON_AddNumberToObject(j, "test_loss", rnd(test_loss, 6));
    for (uint32_t t = 0; t < r->n_tasks; t++) {
        char key[32];
        snprintf(key, sizeof key, "auroc_%s", moeh_task_names[t]);
        cJSON_AddNumberToObject(j, key, rnd(auroc[t], 6));
    }
    emit(r, j);
}

void moeh_coord_report_stats(moeh_coord_report_t *r, uint32_t sites, size_t features,
                             const char *const *contributors, size_t n_contributors)
{
    cJSON *j = event("stats");
    cJSON_AddNumberToObject(j, "sites", sites);
    cJSON_AddNumberToObject(j, "features", (double)features);
    add_ids(j, "contributors", contributors, n_contributors);
    emit(r, j);
}

void moeh_coord_report_train(moeh_coord_report_t *r, const moeh_report_train_t *t)
{
    cJSON *j = event("train");
    cJSON_AddNumberToObject(j, "round", t->round);
    cJSON_AddNumberToObject(j, "sites", t->sites);
    cJSON_AddNumberToObject(j, "participants", t->participants);
    cJSON_AddNumberToObject(j, "train_loss", rnd(t->train_loss, 6));
    cJSON_AddNumberToObject(j, "samples", round(t->samples));
    cJSON_AddNumberToObject(j, "steps", round(t->steps));
    cJSON_AddNumberToObject(j, "groups_updated", (double)t->groups_updated);
    cJSON_AddNumberToObject(j, "model_version", (double)t->model_version);
    add_ids(j, "contributors", t->contributors, t->n_contributors);
    if (t->w_cap > 0) cJSON_AddNumberToObject(j, "w_cap", t->w_cap);
    if (t->contributors) {
        char h[17];
        snprintf(h, sizeof h, "%016llx", (unsigned long long)t->model_hash);
        cJSON_AddStringToObject(j, "model_hash", h);
    }
    add_dp(j, t->dp);
    emit(r, j);
    if (t->upload_slots) {
        j = event("uploads");
        cJSON_AddNumberToObject(j, "round", t->round);
        cJSON_AddNumberToObject(j, "slots", t->upload_slots);
        cJSON_AddNumberToObject(j, "max_in_flight", t->upload_max);
        cJSON_AddNumberToObject(j, "expired", t->upload_expired);
        emit(r, j);
    }
}

static void table_row(moeh_coord_report_t *r, const moeh_report_eval_t *e)
{
    FILE *f = r->table;
    const uint32_t T = e->n_tasks;
    if (!r->table_header_done) {
        r->table_header_done = 1;
        fprintf(f, "%5s %7s %10s %10s", "round", "sites", "train_loss", "test_loss");
        for (uint32_t t = 0; t < T && t < 4; t++)
            fprintf(f, " %11s", moeh_task_names[t]);
        fprintf(f, " %10s %7s", "auroc_mean", "time_s");
        if (e->dp) fprintf(f, " %9s", "epsilon");
        fprintf(f, "\n");
    }
    char sites[32];
    snprintf(sites, sizeof sites, "%u/%u", e->sites, e->participants);
    fprintf(f, "%5u %7s %10.4f %10.4f", e->round, sites, e->train_loss, e->test_loss);
    for (uint32_t t = 0; t < T && t < 4; t++)
        fprintf(f, " %11.4f", e->auroc[0][t]);
    fprintf(f, " %10.4f %7.2f", e->auroc_mean, e->seconds);
    if (e->dp) fprintf(f, " %9.3f", e->dp->eps);
    fprintf(f, "\n");
    fflush(f);
}

/* One "calibration" line per task: the reliability curve of a split. */
static void emit_calib(moeh_coord_report_t *r, uint32_t round, uint32_t T, const char *split,
                       const moeh_calib_t *calib)
{
    for (uint32_t t = 0; calib && t < T; t++) {
        const moeh_calib_t *c = &calib[t];
        cJSON *j = event("calibration");
        cJSON_AddNumberToObject(j, "round", round);
        cJSON_AddStringToObject(j, "task", moeh_task_names[t]);
        cJSON_AddStringToObject(j, "split", split);
        cJSON_AddNumberToObject(j, "n", (double)c->n);
        cJSON_AddNumberToObject(j, "brier", rnd(c->brier, 6));
        cJSON_AddNumberToObject(j, "ece", rnd(c->ece, 6));
        cJSON_AddNumberToObject(j, "loss", rnd(c->logloss, 6)); /* at the bins' centres */
        cJSON *bins = cJSON_AddArrayToObject(j, "bins");
        for (int k = 0; k < MOEH_CALIB_BINS; k++) {
            cJSON *b = cJSON_CreateObject();
            cJSON_AddNumberToObject(b, "lo", (double)k / MOEH_CALIB_BINS);
            cJSON_AddNumberToObject(b, "hi", (double)(k + 1) / MOEH_CALIB_BINS);
            cJSON_AddNumberToObject(b, "n", (double)c->count[k]);
            cJSON_AddNumberToObject(b, "mean_p", rnd(c->mean_p[k], 6));
            cJSON_AddNumberToObject(b, "observed", rnd(c->observed[k], 6));
            cJSON_AddItemToArray(bins, b);
        }
        emit(r, j);
    }
}

void moeh_coord_report_roc(moeh_coord_report_t *r, uint32_t round, const char *split,
                           const uint64_t *hist, uint32_t bins)
{
    double *fpr = malloc(((size_t)bins + 1) * sizeof *fpr);
    double *tpr = malloc(((size_t)bins + 1) * sizeof *tpr);
    if (!fpr || !tpr) {
        MOEH_ERROR("out of memory for the ROC points of round %u; \"roc\" lines dropped", round);
        goto out;
    }
    for (uint32_t t = 0; t < r->n_tasks; t++) {
        const uint64_t *neg = hist + (size_t)t * 2 * bins, *pos = neg + bins;
        uint64_t n_neg = 0, n_pos = 0;
        for (uint32_t b = 0; b < bins; b++)
            n_neg += neg[b], n_pos += pos[b];
        size_t n = moeh_eval_slice_roc(hist, r->n_tasks, bins, 0, t, fpr, tpr, NULL);
        cJSON *j = event("roc");
        cJSON_AddNumberToObject(j, "round", round);
        cJSON_AddStringToObject(j, "task", moeh_task_names[t]);
        cJSON_AddStringToObject(j, "split", split);
        cJSON_AddNumberToObject(j, "n_pos", (double)n_pos);
        cJSON_AddNumberToObject(j, "n_neg", (double)n_neg);
        /* the AUROC of the "eval" line, which these points integrate to (trapezoids) */
        cJSON_AddNumberToObject(j, "auroc",
                                rnd(moeh_eval_slice_auroc(hist, r->n_tasks, bins, 0, t), 6));
        cJSON *xs = cJSON_AddArrayToObject(j, "fpr"), *ys = cJSON_AddArrayToObject(j, "tpr");
        for (size_t i = 0; i < n; i++) { /* 7 decimals: the area moves by less than 1e-6 */
            cJSON_AddItemToArray(xs, cJSON_CreateNumber(rnd(fpr[i], 7)));
            cJSON_AddItemToArray(ys, cJSON_CreateNumber(rnd(tpr[i], 7)));
        }
        emit(r, j);
    }
out:
    free(fpr);
    free(tpr);
}

void moeh_coord_report_retry(moeh_coord_report_t *r, const moeh_report_retry_t *x)
{
    cJSON *j = event("retry");
    cJSON_AddNumberToObject(j, "round", x->round);
    cJSON_AddStringToObject(j, "phase", x->phase);
    cJSON_AddStringToObject(j, "outcome", x->outcome);
    cJSON_AddNumberToObject(j, "attempt", x->attempt);
    cJSON_AddNumberToObject(j, "max_retries", x->max_retries);
    cJSON_AddNumberToObject(j, "connected", x->connected);
    cJSON_AddNumberToObject(j, "needed", x->needed);
    cJSON_AddStringToObject(j, "why", x->why);
    emit(r, j);
}

void moeh_coord_report_selection(moeh_coord_report_t *r, uint32_t round, const char *key,
                                 double value, const char *why, double test_auroc_mean)
{
    cJSON *j = event("selection");
    cJSON_AddNumberToObject(j, "selected_round", round);
    cJSON_AddStringToObject(j, "selected_by", key);
    cJSON_AddNumberToObject(j, "value", rnd(value, 6));
    cJSON_AddStringToObject(j, "why", why);
    cJSON_AddNumberToObject(j, "test_auroc_mean", rnd(test_auroc_mean, 6));
    emit(r, j);
    if (r->table && r->table_header_done) {
        fprintf(r->table, "\nselected round %u: %s (%s = %.4f)\n", round, why, key, value);
        fflush(r->table);
    }
}

void moeh_coord_report_eval(moeh_coord_report_t *r, const moeh_report_eval_t *e)
{
    const uint32_t T = e->n_tasks;
    char key[32];
    cJSON *j = event("eval");
    cJSON_AddNumberToObject(j, "round", e->round);
    cJSON_AddNumberToObject(j, "sites", e->sites);
    cJSON_AddNumberToObject(j, "train_loss", rnd(e->train_loss, 6));
    cJSON_AddNumberToObject(j, "test_loss", rnd(e->test_loss, 6));
    cJSON_AddNumberToObject(j, "auroc_mean", rnd(e->auroc_mean, 6));
    cJSON_AddNumberToObject(j, "seconds", rnd(e->seconds, 6));
    for (uint32_t t = 0; t < T; t++) {
        snprintf(key, sizeof key, "auroc_%s", moeh_task_names[t]);
        cJSON_AddNumberToObject(j, key, rnd(e->auroc[0][t], 6));
    }
    for (uint32_t t = 0; e->calib && t < T; t++) {
        snprintf(key, sizeof key, "brier_%s", moeh_task_names[t]);
        cJSON_AddNumberToObject(j, key, rnd(e->calib[t].brier, 6));
        snprintf(key, sizeof key, "test_loss_%s", moeh_task_names[t]); /* histogram estimate */
        cJSON_AddNumberToObject(j, key, rnd(e->calib[t].logloss, 6));
    }
    add_ids(j, "test_contributors", e->test_contributors, e->n_test_contributors);
    if (e->have_val) { /* the VALIDATE phase of the round (model selection) */
        cJSON_AddNumberToObject(j, "val_loss", rnd(e->val_loss, 6));
        cJSON_AddNumberToObject(j, "val_auroc_mean", rnd(e->val_auroc_mean, 6));
        for (uint32_t t = 0; t < T; t++) {
            snprintf(key, sizeof key, "val_auroc_%s", moeh_task_names[t]);
            cJSON_AddNumberToObject(j, key, rnd(e->val_auroc[t], 6));
            snprintf(key, sizeof key, "val_brier_%s", moeh_task_names[t]);
            cJSON_AddNumberToObject(j, key, rnd(e->val_calib[t].brier, 6));
            snprintf(key, sizeof key, "val_loss_%s", moeh_task_names[t]);
            cJSON_AddNumberToObject(j, key, rnd(e->val_calib[t].logloss, 6));
        }
        add_ids(j, "val_contributors", e->val_contributors, e->n_val_contributors);
    }
    add_dp(j, e->dp);
    emit(r, j);
    emit_calib(r, e->round, T, "test", e->calib); /* reliability curve per task */
    if (e->have_val) emit_calib(r, e->round, T, "val", e->val_calib);
    for (uint32_t t = 0; t < T; t++) {
        j = event("task");
        cJSON_AddNumberToObject(j, "round", e->round);
        cJSON_AddStringToObject(j, "task", moeh_task_names[t]);
        cJSON_AddNumberToObject(j, "auroc", rnd(e->auroc[0][t], 6));
        for (size_t k = 0; k < MOEH_N_COMBOS; k++) {
            snprintf(key, sizeof key, "auroc_%s", moeh_combo_names[k]);
            cJSON_AddNumberToObject(j, key, rnd(e->auroc[k + 1][t], 6));
        }
        emit(r, j);
    }
    /* mean gate weight per expert for each modality combination */
    j = event("gate");
    cJSON_AddNumberToObject(j, "round", e->round);
    for (size_t k = 0; k < MOEH_N_COMBOS; k++) {
        cJSON *c = cJSON_AddObjectToObject(j, moeh_combo_names[k]);
        cJSON_AddNumberToObject(c, "rows", (double)e->combo_rows[k]);
        cJSON *w = cJSON_AddArrayToObject(c, "weights");
        for (uint32_t x = 0; x < e->n_experts; x++) {
            double v = e->combo_rows[k]
                           ? e->gate_sum[k * e->n_experts + x] / (double)e->combo_rows[k]
                           : 0.0;
            cJSON_AddItemToArray(w, cJSON_CreateNumber(rnd(v, 4)));
        }
    }
    emit(r, j);
    if (e->secagg || !e->per_site) { /* no per-site rows: say why */
        j = event("site_metrics");
        cJSON_AddNumberToObject(j, "round", e->round);
        cJSON_AddBoolToObject(j, "available", 0);
        cJSON_AddStringToObject(j, "why",
                                e->secagg ? "secure aggregation: the coordinator learns only "
                                            "sums; each site logs its own metrics"
                                          : "not recorded: per-site metrics are kept out of "
                                            "metrics.jsonl unless --per-site-metrics");
        emit(r, j);
    } else if (!e->per_site) { /* plain mode: not recorded unless the operator opted in */
        j = event("site_metrics");
        cJSON_AddNumberToObject(j, "round", e->round);
        cJSON_AddBoolToObject(j, "available", 0);
        cJSON_AddStringToObject(j, "why",
                                "per-site metrics are recorded only with --per-site-metrics; "
                                "each site logs its own metrics");
        emit(r, j);
    }
    if (r->table) table_row(r, e);
}

/* One row of the final table per calibration figure of a split (calib NULL: none). */
static void final_calib_rows(FILE *f, uint32_t T, const char *split, const moeh_calib_t *calib)
{
    const char *what[2] = {"brier", "ece"};
    for (int w = 0; calib && w < 2; w++) {
        char label[32];
        snprintf(label, sizeof label, "%s (%s)", what[w], split);
        fprintf(f, "%-14s", label);
        for (uint32_t t = 0; t < T && t < 4; t++) {
            double v = w ? calib[t].ece : calib[t].brier;
            if (isnan(v))
                fprintf(f, " %11s", "-");
            else
                fprintf(f, " %11.4f", v);
        }
        fprintf(f, "\n");
    }
}

void moeh_coord_report_final(moeh_coord_report_t *r, const double (*auroc)[MOEH_N_TASKS],
                             const uint64_t *combo_rows, const moeh_calib_t *calib,
                             const moeh_calib_t *val_calib)
{
    FILE *f = r->table;
    const uint32_t T = r->n_tasks;
    if (!f || !r->table_header_done) return;
    fprintf(f, "\ntest AUROC of the final (selected) model, per modality combination "
               "(E = EHR, N = notes, I = image; n = test rows):\n");
    fprintf(f, "%-6s %7s", "combo", "n");
    for (uint32_t t = 0; t < T && t < 4; t++)
        fprintf(f, " %11s", moeh_task_names[t]);
    fprintf(f, "\n");
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++) {
        uint64_t rows = 0;
        if (sl == 0)
            for (size_t k = 0; k < MOEH_N_COMBOS; k++)
                rows += combo_rows[k];
        else
            rows = combo_rows[sl - 1];
        if (sl > 0 && rows == 0) continue;
        fprintf(f, "%-6s %7llu", sl == 0 ? "all" : moeh_combo_names[sl - 1],
                (unsigned long long)rows);
        for (uint32_t t = 0; t < T && t < 4; t++) {
            if (isnan(auroc[sl][t]))
                fprintf(f, " %11s", "-");
            else
                fprintf(f, " %11.4f", auroc[sl][t]);
        }
        fprintf(f, "\n");
    }
    /* calibration over every row of each split (docs/architecture.md, "Calibration") */
    final_calib_rows(f, T, "test", calib);
    final_calib_rows(f, T, "val", val_calib);
    fflush(f);
}

int moeh_coord_report_config(const moeh_coord_cfg_t *k, moeh_err_t *err)
{
    cJSON *j = cJSON_CreateObject();
    if (!j) return moeh_errf(err, -ENOMEM, "out of memory");
    cJSON_AddStringToObject(j, "bind", k->bind);
    cJSON_AddBoolToObject(j, "insecure", k->insecure);
    cJSON_AddStringToObject(j, "registry", k->registry_path ? k->registry_path : "");
    cJSON_AddNumberToObject(j, "rounds", k->rounds);
    cJSON_AddNumberToObject(j, "min_sites", k->min_sites);
    cJSON_AddNumberToObject(j, "wait_sites", k->wait_sites);
    cJSON_AddNumberToObject(j, "phase_deadline_ms", k->phase_deadline_ms);
    cJSON_AddNumberToObject(j, "max_retries", k->max_retries);
    cJSON_AddNumberToObject(j, "outage_budget_ms", k->outage_budget_ms);
    cJSON_AddNumberToObject(j, "heartbeat_ms", k->heartbeat_ms);
    cJSON_AddNumberToObject(j, "heartbeat_timeout_ms", k->heartbeat_timeout_ms);
    cJSON_AddNumberToObject(j, "upload_slots", k->upload_slots);
    char *model = NULL; /* the configured model spec (data shapes 0: the sites give them) */
    int mrc = moeh_moe_cfg_to_json(&k->model, &model, err);
    cJSON *mj = mrc ? NULL : cJSON_Parse(model);
    free(model);
    if (!mj) {
        cJSON_Delete(j);
        return mrc ? mrc : moeh_errf(err, -ENOMEM, "out of memory");
    }
    cJSON_AddItemToObject(j, "model", mj);
    cJSON_AddNumberToObject(j, "seed", (double)k->model.seed);
    cJSON_AddNumberToObject(j, "warmup_rounds", k->warmup_rounds);
    cJSON_AddNumberToObject(j, "prox_mu", k->prox_mu);
    cJSON_AddStringToObject(j, "strategy", k->strategy);
    cJSON_AddNumberToObject(j, "server_lr", k->server_lr);
    cJSON_AddNumberToObject(j, "server_beta1", k->server_beta1);
    cJSON_AddNumberToObject(j, "server_beta2", k->server_beta2);
    cJSON_AddNumberToObject(j, "server_tau", k->server_tau);
    cJSON_AddNumberToObject(j, "trim", k->trim);
    cJSON_AddStringToObject(j, "data_shape", k->data_shape ? k->data_shape : "");
    cJSON_AddBoolToObject(j, "secagg", k->secagg);
    cJSON_AddBoolToObject(j, "per_site_metrics", k->per_site_metrics);
    if (k->secagg_k == MOEH_SECAGG_K_AUTO)
        cJSON_AddStringToObject(j, "secagg_k", "auto");
    else
        cJSON_AddNumberToObject(j, "secagg_k", k->secagg_k);
    cJSON_AddBoolToObject(j, "secagg_allow_2", k->secagg_allow_2);
    cJSON_AddBoolToObject(j, "per_site_metrics", k->per_site_metrics);
    cJSON_AddNumberToObject(j, "join_window_ms", k->start_timeout_ms);
    cJSON_AddNumberToObject(j, "secagg_dropout", k->secagg_plan.dropout);
    cJSON_AddNumberToObject(j, "secagg_collude", k->secagg_plan.corrupt);
    cJSON_AddNumberToObject(j, "count_cap", k->count_cap);
    cJSON_AddNumberToObject(j, "stats_max_abs", k->stats_max_abs);
    cJSON_AddNumberToObject(j, "norm_bound", k->norm_bound);
    cJSON_AddBoolToObject(j, "unweighted", k->unweighted || k->dp_clip > 0);
    cJSON_AddNumberToObject(j, "dp_clip", k->dp_clip);
    cJSON_AddNumberToObject(j, "dp_noise", k->dp_noise);
    cJSON_AddNumberToObject(j, "dp_delta", k->dp_delta);
    cJSON_AddNumberToObject(j, "local_epochs", k->local_epochs);
    cJSON_AddNumberToObject(j, "batch_size", k->batch_size);
    cJSON_AddNumberToObject(j, "lr", k->lr);
    cJSON_AddNumberToObject(j, "weight_decay", k->weight_decay);
    cJSON_AddNumberToObject(j, "clip", k->clip);
    cJSON_AddNumberToObject(j, "delta_clip", k->delta_clip);
    cJSON_AddNumberToObject(j, "eval_bins", k->eval_bins);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) return moeh_errf(err, -ENOMEM, "out of memory");
    char path[4096];
    int rc = moeh_path_join(path, sizeof path, k->out_dir, "config.json");
    if (rc)
        rc = moeh_errf(err, rc, "%s/config.json: path too long", k->out_dir);
    else
        rc = moeh_file_write_atomic(path, s, strlen(s), err);
    free(s);
    return rc;
}
