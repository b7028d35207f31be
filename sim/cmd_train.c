/* cmd_train.c - `moeh train`: centralised training of MoE-Health (or a baseline) on one
 * dataset, the federation's reference and the local-only models of the results table.
 *
 * Uses the site agent's trainer library (train/moeh_trainer.h) unchanged: the same model,
 * normalisation (from the training data's train split, computed as the federation does from
 * summed statistics), AdamW with the moments reset every epoch (as every federated round
 * resets them), warm-up phase and histogram evaluation. --dataset and --eval-dataset take
 * one directory or several separated by commas; several are concatenated in memory with
 * their own train/val/test splits kept, so the union of the sites' datasets gives the pooled
 * training data and the pooled test set (the union of the sites' test splits) exactly.
 *
 * Writes OUT/metrics.jsonl in the coordinator's format: one "epoch" line per epoch
 * (validation AUROC), then the final "eval", "task" (one per task, with per-combination
 * AUROC) and "gate" lines on the test split. "auroc" keys are histogram AUROCs with the
 * coordinator's binning (--eval-bins), so centralised and federated numbers are measured the
 * same way; "task" lines add exact metrics (auroc_exact, auprc, f1 at 0.5, best f1). The
 * tested model goes to OUT/model.safetensors: with --select best (the default) the epoch with
 * the highest validation mean AUROC (early stopping on the training data's validation split),
 * with --select last the final epoch. */
#include "moeh_evalsum.h"
#include "moeh_metrics.h"
#include "moeh_modelfile.h"
#include "moeh_opts.h"
#include "sim_commands.h"
#include "moeh_trainer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIRS 64

/* Splits a comma-separated list in place into at most MAX_DIRS non-empty parts. */
static int split_list(char *s, char **parts, size_t *n, const char *flag, moeh_err_t *err)
{
    *n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == MAX_DIRS)
            return moeh_errf(err, -EINVAL, "%s: more than %d directories", flag, MAX_DIRS);
        parts[(*n)++] = tok;
    }
    if (*n == 0)
        return moeh_errf(err, -EINVAL, "%s: expected DIR[,DIR...], got an empty list", flag);
    return 0;
}

/* Opens one dataset directory or the concatenation of several (comma-separated), which must
 * have the same static features, hourly variables, hours and image size. Caller owns *out. */
static int open_datasets(const char *spec, bool verify, const char *flag, moeh_dataset_t **out,
                         moeh_err_t *err)
{
    moeh_dataset_t *parts[MAX_DIRS] = {0}, *cat = NULL;
    char *copy = strdup(spec), *dirs[MAX_DIRS];
    size_t n = 0, rows = 0, toks = 0;
    int rc =
        copy ? split_list(copy, dirs, &n, flag, err) : moeh_errf(err, -ENOMEM, "out of memory");
    for (size_t k = 0; !rc && k < n; k++) {
        if ((rc = moeh_dataset_open(dirs[k], verify, &parts[k], err))) break;
        const moeh_dataset_t *a = parts[0], *b = parts[k];
        if (b->f_static != a->f_static || b->f_ts != a->f_ts || b->t != a->t ||
            b->img_size != a->img_size)
            rc = moeh_errf(err, -EINVAL,
                           "%s: %s has %zu static features, %zu hourly variables, %zu hours, "
                           "%zu px images; %s has %zu, %zu, %zu, %zu",
                           flag, dirs[k], b->f_static, b->f_ts, b->t, b->img_size, dirs[0],
                           a->f_static, a->f_ts, a->t, a->img_size);
        if (!rc && (b->note_dim != a->note_dim || b->img_dim != a->img_dim))
            rc =
                moeh_errf(err, -EINVAL,
                          "%s: %s has note vectors of width %zu and X-ray vectors of width %zu, "
                          "%s has %zu and %zu (0: none): the datasets must agree",
                          flag, dirs[k], b->note_dim, b->img_dim, dirs[0], a->note_dim, a->img_dim);
        rows += b->n, toks += b->n_tokens;
    }
    if (rc) goto out;
    if (n == 1) {
        *out = parts[0];
        parts[0] = NULL;
        goto out;
    }
    const moeh_dataset_t *a = parts[0];
    if ((rc = moeh_dataset_create(rows, a->f_static, a->f_ts, a->img_size, &cat, err))) goto out;
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(a->extra, "embeddings");
    if ((a->note_vec &&
         (rc = moeh_dataset_add_vectors(cat, MOEH_MOD_NOTES, a->note_dim,
                                        cJSON_GetObjectItemCaseSensitive(emb, "notes"), err))) ||
        (a->img_vec &&
         (rc = moeh_dataset_add_vectors(cat, MOEH_MOD_IMG, a->img_dim,
                                        cJSON_GetObjectItemCaseSensitive(emb, "img"), err))))
        goto out;
    int32_t *tok = malloc(toks ? toks * sizeof *tok : 1);
    if (!tok) {
        rc = moeh_errf(err, -ENOMEM, "out of memory for %zu note tokens", toks);
        goto out;
    }
    size_t r = 0, tk = 0, TF = a->t * a->f_ts, S2 = a->img_size * a->img_size;
    cat->note_offsets[0] = 0;
    for (size_t k = 0; k < n; k++) {
        const moeh_dataset_t *d = parts[k];
#define CAT(field, width)                                                                          \
    memcpy(cat->field + r * (width), d->field, d->n * (width) * sizeof *d->field)
        CAT(ids, 2);
        CAT(static_x, a->f_static);
        CAT(ts_value, TF);
        CAT(ts_mask, TF);
        CAT(ts_delta, TF);
        CAT(labels, MOEH_N_TASKS);
        CAT(label_mask, MOEH_N_TASKS);
        CAT(avail, MOEH_N_MODS);
        CAT(images, S2);
        CAT(split, 1);
        if (a->note_vec) CAT(note_vec, a->note_dim);
        if (a->img_vec) CAT(img_vec, a->img_dim);
#undef CAT
        for (size_t i = 0; i < d->n; i++)
            cat->note_offsets[r + i + 1] = (int64_t)tk + d->note_offsets[i + 1];
        if (d->n_tokens) memcpy(tok + tk, d->note_tokens, d->n_tokens * sizeof *tok);
        r += d->n, tk += d->n_tokens;
    }
    rc = moeh_dataset_set_tokens(cat, tok, toks, err);
    free(tok);
    if (!rc && a->static_names && a->ts_names) /* the model file records the names */
        rc = moeh_dataset_set_names(cat, (const char *const *)a->static_names,
                                    (const char *const *)a->ts_names,
                                    (const char *const *)a->ts_units, err);
    if (!rc) {
        *out = cat;
        cat = NULL;
    }
out:
    for (size_t k = 0; k < MAX_DIRS; k++)
        moeh_dataset_destroy(&parts[k]);
    moeh_dataset_destroy(&cat);
    free(copy);
    return rc;
}

/* Adds key: v to o, or key: null where v is not finite (NaN and infinities are not JSON).
 * false when out of memory. */
static bool json_num(cJSON *o, const char *key, double v)
{
    return isfinite(v) ? cJSON_AddNumberToObject(o, key, v) != NULL
                       : cJSON_AddNullToObject(o, key) != NULL;
}

/* Adds key: x to o as the shortest decimal (1..9 significant digits) that reads back to the
 * float x (2e-3, not the 0.0020000000949949 its double would print as). false when out of
 * memory. */
static bool json_float(cJSON *o, const char *key, float x)
{
    char t[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)x);
        if ((float)strtod(t, NULL) == x) break;
    }
    return json_num(o, key, strtod(t, NULL));
}

/* Writes o as one line of f (cJSON_PrintUnformatted: keys and strings escaped) and deletes it;
 * ok false (a member could not be added) or a failed print is -ENOMEM. */
static int json_line(FILE *f, cJSON *o, bool ok, moeh_err_t *err)
{
    char *txt = ok && o ? cJSON_PrintUnformatted(o) : NULL;
    int rc = 0;
    if (!txt)
        rc = moeh_errf(err, -ENOMEM, "out of memory writing metrics.jsonl");
    else if (fprintf(f, "%s\n", txt) < 0 || fflush(f) != 0)
        rc = moeh_errf(err, -EIO, "metrics.jsonl: write failed");
    cJSON_free(txt);
    cJSON_Delete(o);
    return rc;
}

typedef struct {
    uint32_t bins;
    uint32_t *hist;
    float *gate_sum;
    uint64_t *scratch; /* 2 * bins: one slice and task widened to u64 */
} eval_bufs_t;

/* Histogram AUROC per slice and task of split `split`; also the mean loss. */
static int eval_split(moeh_trainer_t *t, int split, eval_bufs_t *eb,
                      double auroc[MOEH_N_SLICES][MOEH_N_TASKS], double *loss, moeh_eval_sums_t *es,
                      moeh_err_t *err)
{
    *es = (moeh_eval_sums_t){.hist = eb->hist, .gate_sum = eb->gate_sum};
    int rc = moeh_trainer_evaluate(t, split, eb->bins, es, NULL, NULL, err);
    if (rc) return rc;
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++)
        for (size_t k = 0; k < MOEH_N_TASKS; k++)
            auroc[sl][k] =
                moeh_eval_slice_auroc_u32(eb->hist, MOEH_N_TASKS, eb->bins, sl, k, eb->scratch);
    *loss = es->n_labels ? es->loss_sum / (double)es->n_labels : NAN;
    return 0;
}

/* Exact metrics of the test split: per task and per (combination a0+2a1+4a2, task). */
/* --predictions: one CSV row per test admission, subject_id, hadm_id, then label_<task> (empty
 * when masked) and score_<task> per task (scripts/paired_bootstrap.py reads it). */
static int write_predictions(const char *path, const moeh_dataset_t *ds, const size_t *idx,
                             const float *probs, size_t n, moeh_err_t *err)
{
    FILE *f = fopen(path, "w");
    if (!f) return moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
    fprintf(f, "subject_id,hadm_id");
    for (int k = 0; k < MOEH_N_TASKS; k++)
        fprintf(f, ",label_%s,score_%s", moeh_task_names[k], moeh_task_names[k]);
    fprintf(f, "\n");
    for (size_t r = 0; r < n; r++) {
        size_t i = idx[r];
        fprintf(f, "%lld,%lld", (long long)ds->ids[2 * i], (long long)ds->ids[2 * i + 1]);
        for (size_t k = 0; k < MOEH_N_TASKS; k++) {
            if (ds->label_mask[i * MOEH_N_TASKS + k])
                fprintf(f, ",%d", ds->labels[i * MOEH_N_TASKS + k] > 0.5f);
            else
                fprintf(f, ",");
            fprintf(f, ",%.9g", (double)probs[r * MOEH_N_TASKS + k]);
        }
        fprintf(f, "\n");
    }
    if (ferror(f) | (fclose(f) != 0)) return moeh_errf(err, -EIO, "%s: write failed", path);
    return 0;
}

static int exact_metrics(moeh_trainer_t *t, moeh_bin_metrics_t *per_task,
                         moeh_bin_metrics_t *overall, moeh_bin_metrics_t *per_combo,
                         const char *pred_path, moeh_err_t *err)
{
    const size_t T = MOEH_N_TASKS, n = moeh_trainer_rows(t, MOEH_SPLIT_TEST);
    const moeh_dataset_t *ds = moeh_trainer_dataset(t);
    float *probs = malloc((n ? n : 1) * T * sizeof(float));
    float *y = malloc((n ? n : 1) * T * sizeof(float));
    uint8_t *ym = malloc((n ? n : 1) * T), *av = malloc((n ? n : 1) * MOEH_N_MODS);
    size_t *idx = malloc((n ? n : 1) * sizeof(size_t));
    int rc = -ENOMEM;
    if (!probs || !y || !ym || !av || !idx) {
        moeh_errf(err, rc, "out of memory for %zu test predictions", n);
        goto out;
    }
    if ((rc = moeh_trainer_predict(t, MOEH_SPLIT_TEST, probs, idx, err))) goto out;
    if (pred_path && (rc = write_predictions(pred_path, ds, idx, probs, n, err))) goto out;
    for (size_t r = 0; r < n; r++) {
        memcpy(y + r * T, ds->labels + idx[r] * T, T * sizeof(float));
        memcpy(ym + r * T, ds->label_mask + idx[r] * T, T);
        memcpy(av + r * MOEH_N_MODS, ds->avail + idx[r] * MOEH_N_MODS, MOEH_N_MODS);
    }
    if ((rc = moeh_metrics_report(per_task, overall, per_combo, probs, y, ym, av, n, T)))
        moeh_errf(err, rc, "metrics report failed");
out:
    free(probs);
    free(y);
    free(ym);
    free(av);
    free(idx);
    return rc;
}

/* The final lines of metrics.jsonl, on the test split: "eval" (histogram AUROC per task and
 * their mean), one "task" line per task (per-combination histogram AUROC and the exact
 * metrics) and "gate" (mean mixture weights per combination). 0 or a negative code. */
static int write_test_lines(FILE *mf, uint32_t round, uint32_t epoch, double train_loss,
                            double test_loss, double mean_auroc, double secs,
                            double auroc[MOEH_N_SLICES][MOEH_N_TASKS],
                            const moeh_bin_metrics_t *per_task, const moeh_eval_sums_t *es,
                            const float *gate_sum, size_t n_experts, moeh_err_t *err)
{
    char key[48];
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "event", "eval") &&
              cJSON_AddNumberToObject(o, "round", round) &&
              cJSON_AddNumberToObject(o, "sites", 1) &&
              cJSON_AddNumberToObject(o, "epoch", epoch) && json_num(o, "train_loss", train_loss) &&
              json_num(o, "test_loss", test_loss) && json_num(o, "auroc_mean", mean_auroc) &&
              json_num(o, "seconds", secs);
    for (size_t k = 0; ok && k < MOEH_N_TASKS; k++) {
        snprintf(key, sizeof key, "auroc_%s", moeh_task_names[k]);
        ok = json_num(o, key, auroc[0][k]);
    }
    int rc = json_line(mf, o, ok, err);
    for (size_t k = 0; !rc && k < MOEH_N_TASKS; k++) {
        const moeh_bin_metrics_t *pt = &per_task[k];
        o = cJSON_CreateObject();
        ok = o && cJSON_AddStringToObject(o, "event", "task") &&
             cJSON_AddNumberToObject(o, "round", round) &&
             cJSON_AddStringToObject(o, "task", moeh_task_names[k]) &&
             json_num(o, "auroc", auroc[0][k]);
        for (size_t c = 0; ok && c < MOEH_N_COMBOS; c++) {
            snprintf(key, sizeof key, "auroc_%s", moeh_combo_names[c]);
            ok = json_num(o, key, auroc[c + 1][k]);
        }
        ok = ok && json_num(o, "auroc_exact", pt->auroc) && json_num(o, "auprc", pt->auprc) &&
             json_num(o, "f1", pt->f1_05) && json_num(o, "f1_best", pt->f1_best) &&
             cJSON_AddNumberToObject(o, "n", (double)pt->n) &&
             cJSON_AddNumberToObject(o, "n_pos", (double)pt->n_pos);
        rc = json_line(mf, o, ok, err);
    }
    if (rc) return rc;
    o = cJSON_CreateObject();
    ok = o && cJSON_AddStringToObject(o, "event", "gate") &&
         cJSON_AddNumberToObject(o, "round", round);
    for (size_t c = 0; ok && c < MOEH_N_COMBOS; c++) {
        uint32_t rows = es->combo_rows[c];
        cJSON *g = cJSON_AddObjectToObject(o, moeh_combo_names[c]);
        cJSON *w = g && cJSON_AddNumberToObject(g, "rows", rows)
                       ? cJSON_AddArrayToObject(g, "weights")
                       : NULL;
        ok = w != NULL;
        for (size_t k = 0; ok && k < n_experts; k++) {
            cJSON *v = cJSON_CreateNumber(rows ? gate_sum[c * n_experts + k] / (double)rows : 0.0);
            ok = v && cJSON_AddItemToArray(w, v);
        }
    }
    return json_line(mf, o, ok, err);
}

int moeh_sim_cmd_train(int argc, char **argv)
{
    const char *data = NULL, *eval_data = NULL, *out = "moeh-train", *select = "best";
    const char *predictions = NULL; /* --predictions (issue 15: paired bootstrap) */
    uint32_t epochs = 8, batch = 32;
    uint32_t warmup = 3, bins = 1000;
    float lr = 2e-3f, wd = 1e-4f, clip = 5.0f;
    /* the model's hyperparameters; the data shapes come from the dataset */
    moeh_moe_cfg_t mc = moeh_sim_model_defaults();
    int no_verify = 0, no_vectors = 0;
    const moeh_opt_t own[] = {
        {"no-vectors", MOEH_OPT_BOOL, &no_vectors,
         "train on note tokens and pixels even where the dataset holds precomputed vectors "
         "(note_vec.npy, img_vec.npy; used by default)"},
        {"dataset", MOEH_OPT_STR, &data,
         "training data: DIR[,DIR...] (several are concatenated, splits kept) [required]"},
        {"eval-dataset", MOEH_OPT_STR, &eval_data,
         "test on the test split of DIR[,DIR...] instead of the training data's"},
        {"epochs", MOEH_OPT_U32, &epochs, "training epochs (warm-up included)"},
        {"warmup-epochs", MOEH_OPT_U32, &warmup,
         "expert-specialisation epochs first (MoE; by default at most epochs - 1)"},
        {"batch-size", MOEH_OPT_U32, &batch, "minibatch size"},
        {"lr", MOEH_OPT_F32, &lr, "AdamW learning rate"},
        {"weight-decay", MOEH_OPT_F32, &wd, "AdamW weight decay"},
        {"clip", MOEH_OPT_F32, &clip, "global gradient-norm clip (0: none)"},
        {"eval-bins", MOEH_OPT_U32, &bins,
         "score histogram bins of the AUROC (as the "
         "coordinator)"},
        {"select", MOEH_OPT_STR, &select,
         "which epoch's model is tested and saved: best (highest validation mean AUROC, i.e. "
         "early stopping) or last"},
        {"seed", MOEH_OPT_U64, &mc.seed, "model initialisation and shuffling"},
        {"no-verify", MOEH_OPT_BOOL, &no_verify, "do not check the arrays' checksums"},
        {"out", MOEH_OPT_STR, &out, "output directory (metrics.jsonl, model.safetensors)"},
        {"predictions", MOEH_OPT_STR, &predictions,
         "also write each test admission's labels and scores to this CSV "
         "(scripts/paired_bootstrap.py)"},
    };
    /* this command's options, then the model's hyperparameters (the shared fragment) */
    moeh_opt_t opts[MOEH_OPTS_MAX];
    _Static_assert(sizeof own / sizeof own[0] < MOEH_OPTS_MAX, "room for the model options");
    size_t n_opts = sizeof own / sizeof own[0];
    memcpy(opts, own, sizeof own);
    if (moeh_moe_cfg_options(&mc, opts, &n_opts, MOEH_OPTS_MAX) != 0) return 2;
    moeh_opts_t o = {
        .prog = "moeh train",
        .synopsis = "usage: moeh train --dataset DIR[,DIR...] [--eval-dataset DIR[,DIR...]] "
                    "[OPTIONS]\n\nCentralised training with the site agent's trainer: "
                    "normalisation from the training data's\ntrain split, one progress line per "
                    "epoch (validation AUROC), then test AUROC, AUPRC and F1\nper task and per "
                    "modality combination; writes OUT/metrics.jsonl (coordinator format) and\n"
                    "OUT/model.safetensors. Exit 0 ok, 1 failure, 2 usage error.",
        .opts = opts,
        .n_opts = n_opts};
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&o, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && !data) rc = moeh_errf(&err, -EINVAL, "--dataset is required (moeh train --help)");
    if (!rc && strspn(data, ",") == strlen(data))
        rc = moeh_errf(&err, -EINVAL, "--dataset: expected DIR[,DIR...], got '%s'", data);
    if (!rc && eval_data && strspn(eval_data, ",") == strlen(eval_data))
        rc = moeh_errf(&err, -EINVAL, "--eval-dataset: expected DIR[,DIR...], got '%s'", eval_data);
    if (!rc && strcmp(select, "best") != 0 && strcmp(select, "last") != 0)
        rc = moeh_errf(&err, -EINVAL, "--select %s: expected best or last", select);
    if (!rc && mc.arch > MOEH_ARCH_EARLY)
        rc = moeh_errf(&err, -EINVAL, "--arch %u: expected 0..6", (unsigned)mc.arch);
    if (!rc && !moeh_opts_seen(&o, &warmup) &&
        warmup >= epochs) /* the default leaves a joint epoch */
        warmup = epochs > 1 ? epochs - 1 : 0;
    if (!rc && (epochs == 0 || warmup > epochs))
        rc = moeh_errf(&err, -EINVAL,
                       "--epochs %u, --warmup-epochs %u: expected epochs >= 1 "
                       "and warm-up <= epochs",
                       epochs, warmup);
    if (!rc && (batch == 0 || batch > 65536))
        rc = moeh_errf(&err, -EINVAL, "--batch-size %u: expected 1..65536", batch);
    if (!rc && !(lr > 0 && isfinite(lr)))
        rc = moeh_errf(&err, -EINVAL, "--lr %g: expected a positive number", (double)lr);
    if (!rc && (!(wd >= 0 && isfinite(wd)) || !(clip >= 0 && isfinite(clip))))
        rc = moeh_errf(&err, -EINVAL, "--weight-decay and --clip must be >= 0");
    if (!rc && mc.note_buckets == 0) rc = moeh_errf(&err, -EINVAL, "--note-buckets must be > 0");
    if (!rc) { /* the hyperparameters (the dataset's shapes come later) */
        moeh_moe_cfg_t chk = mc;
        chk.max_batch = batch;
        rc = moeh_moe_cfg_validate_hyper(&chk, &err);
    }
    if (!rc && (bins < 2 || bins > 100000))
        rc = moeh_errf(&err, -EINVAL, "--eval-bins %u: expected 2..100000", bins);
    if (!rc && strlen(out) > 3000) rc = moeh_errf(&err, -EINVAL, "--out path is too long");
    if (rc) {
        fprintf(stderr, "moeh train: %s\n", err.msg);
        moeh_opts_free(&o);
        return 2;
    }
    moeh_log_configure(MOEH_LOG_WARN, "moeh", NULL, NULL);

    moeh_dataset_t *ds = NULL, *eds = NULL;
    moeh_trainer_t *tr = NULL, *etr = NULL;
    FILE *mf = NULL;
    double *stats = NULL;
    float *mean = NULL, *sd = NULL, *best = NULL;
    eval_bufs_t eb = {.bins = bins};
    char path[4096];
    int64_t t0 = moeh_now_ms();
    if ((rc = open_datasets(data, !no_verify, "--dataset", &ds, &err))) goto out;
    if (eval_data && (rc = open_datasets(eval_data, !no_verify, "--eval-dataset", &eds, &err)))
        goto out;
    mc.n_static = ds->f_static, mc.n_vars = ds->f_ts;
    mc.n_steps = ds->t, mc.img_size = ds->img_size, mc.n_tasks = MOEH_N_TASKS;
    if (!no_vectors && ds->note_dim) /* the dataset's note vectors feed the model */
        mc.note_buckets = 0, mc.note_dim = ds->note_dim;
    if (!no_vectors && ds->img_dim) /* and its X-ray vectors */
        mc.img_size = 0, mc.img_dim = ds->img_dim;
    mc.max_batch = batch;
    const uint32_t arch = (uint32_t)mc.arch, d_emb = (uint32_t)mc.d_emb;
    const uint32_t d_hidden = (uint32_t)mc.d_hidden, buckets = (uint32_t)mc.note_buckets;
    const uint64_t seed = mc.seed;
    size_t n_all = ds->n;
    if ((rc = moeh_trainer_create(&ds, &mc, &tr, &err))) goto out;
    size_t n_train = moeh_trainer_rows(tr, MOEH_SPLIT_TRAIN);
    if (n_train == 0) {
        rc = moeh_errf(&err, -EINVAL, "--dataset %s: the train split is empty", data);
        goto out;
    }
    if (eds && (rc = moeh_trainer_create(&eds, &mc, &etr, &err))) goto out;
    moeh_trainer_t *test_tr = etr ? etr : tr;
    size_t nn = moeh_trainer_n_norm(tr), E = moeh_moe_n_experts(moeh_trainer_model(tr));
    stats = malloc(3 * nn * sizeof(double));
    mean = malloc(nn * sizeof(float));
    sd = malloc(nn * sizeof(float));
    eb.hist = malloc((size_t)MOEH_N_SLICES * MOEH_N_TASKS * 2 * bins * sizeof(uint32_t));
    eb.gate_sum = malloc((size_t)MOEH_N_COMBOS * E * sizeof(float));
    eb.scratch = malloc(2 * (size_t)bins * sizeof(uint64_t));
    if (!stats || !mean || !sd || !eb.hist || !eb.gate_sum || !eb.scratch) {
        rc = moeh_errf(&err, -ENOMEM, "out of memory");
        goto out;
    }
    moeh_trainer_local_stats(tr, stats);
    moeh_norm_from_stats(stats, nn, mean, sd);
    moeh_trainer_set_norm(tr, mean, sd);
    if (etr) moeh_trainer_set_norm(etr, mean, sd);
    if ((rc = moeh_mkdir_p(out, &err))) goto out;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    if (!(mf = fopen(path, "w"))) {
        rc = moeh_errf(&err, -errno, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(tr));
    cJSON *cf = cJSON_CreateObject();
    char seed_txt[24];
    snprintf(seed_txt, sizeof seed_txt, "%llu", (unsigned long long)seed); /* exact, not 2^53 */
    bool cf_ok =
        cf && cJSON_AddStringToObject(cf, "event", "config") &&
        cJSON_AddStringToObject(cf, "command", "train") &&
        cJSON_AddStringToObject(cf, "dataset", data) &&
        cJSON_AddStringToObject(cf, "eval_dataset", eval_data ? eval_data : "") &&
        cJSON_AddNumberToObject(cf, "arch", arch) &&
        cJSON_AddNumberToObject(cf, "epochs", epochs) &&
        cJSON_AddNumberToObject(cf, "warmup_epochs", warmup) &&
        cJSON_AddNumberToObject(cf, "batch_size", batch) && json_float(cf, "lr", lr) &&
        json_float(cf, "weight_decay", wd) && json_float(cf, "clip", clip) &&
        cJSON_AddNumberToObject(cf, "d_emb", d_emb) &&
        cJSON_AddNumberToObject(cf, "d_hidden", d_hidden) &&
        cJSON_AddNumberToObject(cf, "note_buckets", buckets) &&
        cJSON_AddNumberToObject(cf, "note_dim", mc.note_buckets ? 0.0 : (double)mc.note_dim) &&
        cJSON_AddNumberToObject(cf, "img_dim", mc.img_size ? 0.0 : (double)mc.img_dim) &&
        cJSON_AddNumberToObject(cf, "eval_bins", bins) &&
        cJSON_AddRawToObject(cf, "seed", seed_txt) &&
        cJSON_AddNumberToObject(cf, "rows", (double)n_all) &&
        cJSON_AddNumberToObject(cf, "train_rows", (double)n_train) &&
        cJSON_AddNumberToObject(cf, "test_rows",
                                (double)moeh_trainer_rows(test_tr, MOEH_SPLIT_TEST)) &&
        cJSON_AddNumberToObject(cf, "params", (double)p->n);
    if ((rc = json_line(mf, cf, cf_ok, &err))) goto out;
    printf("moeh train: arch %u, %zu parameters, %zu rows (%zu train, %zu val), test on %s "
           "(%zu rows)\n",
           arch, p->n, n_all, n_train, moeh_trainer_rows(tr, MOEH_SPLIT_VAL),
           eval_data ? eval_data : "the same data", moeh_trainer_rows(test_tr, MOEH_SPLIT_TEST));
    printf("%5s %7s %10s %10s", "epoch", "phase", "train_loss", "val_loss");
    for (size_t k = 0; k < MOEH_N_TASKS; k++)
        printf(" %11s", moeh_task_names[k]);
    printf(" %10s %7s\n", "val_mean", "time_s");
    fflush(stdout);

    double auroc[MOEH_N_SLICES][MOEH_N_TASKS], loss, train_loss = NAN;
    double best_val = -INFINITY, best_loss = NAN;
    uint32_t best_epoch = 0;
    int pick_best = !strcmp(select, "best");
    moeh_eval_sums_t es;
    if (pick_best && !(best = malloc(p->n * sizeof(float)))) {
        rc = moeh_errf(&err, -ENOMEM, "out of memory for the best parameters");
        goto out;
    }
    for (uint32_t e = 1; e <= epochs; e++) {
        int64_t te = moeh_now_ms();
        moeh_adamw_reset(p); /* as every federated round does */
        moeh_train_cfg_t tc = {.epochs = 1,
                               .batch_size = batch,
                               .adamw = moeh_adamw_defaults(),
                               .phase = e <= warmup ? MOEH_PHASE_WARMUP : MOEH_PHASE_JOINT,
                               .seed = seed * 1000003u + e};
        tc.adamw.lr = lr, tc.adamw.weight_decay = wd, tc.adamw.clip = clip;
        moeh_train_result_t res;
        if ((rc = moeh_trainer_train(tr, &tc, &res, &err))) goto out;
        train_loss = res.mean_loss;
        if ((rc = eval_split(tr, MOEH_SPLIT_VAL, &eb, auroc, &loss, &es, &err))) goto out;
        double m = moeh_eval_mean_finite(auroc[0], MOEH_N_TASKS),
               secs = (double)(moeh_now_ms() - te) / 1e3;
        printf("%5u %7s %10.4f %10.4f", e, e <= warmup ? "warm-up" : "joint", train_loss, loss);
        for (size_t k = 0; k < MOEH_N_TASKS; k++)
            printf(" %11.4f", auroc[0][k]);
        printf(" %10.4f %7.1f\n", m, secs);
        fflush(stdout);
        cJSON *jl = cJSON_CreateObject();
        bool ok = jl && cJSON_AddStringToObject(jl, "event", "epoch") &&
                  cJSON_AddNumberToObject(jl, "epoch", e) &&
                  cJSON_AddBoolToObject(jl, "warmup", e <= warmup);
        ok = ok && json_num(jl, "train_loss", train_loss) && json_num(jl, "val_loss", loss) &&
             json_num(jl, "val_auroc_mean", m);
        for (size_t k = 0; ok && k < MOEH_N_TASKS; k++) {
            char key[48];
            snprintf(key, sizeof key, "val_auroc_%s", moeh_task_names[k]);
            ok = json_num(jl, key, auroc[0][k]);
        }
        ok = ok && json_num(jl, "seconds", secs);
        if ((rc = json_line(mf, jl, ok, &err))) goto out;
        if (pick_best && isfinite(m) && m > best_val) {
            best_val = m, best_epoch = e, best_loss = train_loss;
            memcpy(best, p->w, p->n * sizeof(float));
        }
    }
    if (pick_best && best_epoch == 0)
        printf("no validation AUROC (empty or one-class validation split): testing the last "
               "epoch\n");
    if (pick_best && best_epoch > 0) {
        memcpy(p->w, best, p->n * sizeof(float));
        train_loss = best_loss;
        printf("selected epoch %u (best validation mean AUROC %.4f)\n", best_epoch, best_val);
    }
    if (best_epoch == 0) best_epoch = epochs;

    /* final evaluation on the test split (of --eval-dataset if given) */
    if (etr) {
        moeh_params_t *ep = moeh_moe_params(moeh_trainer_model(etr));
        MOEH_ASSERT(ep->n == p->n);
        memcpy(ep->w, p->w, p->n * sizeof(float));
    }
    if ((rc = eval_split(test_tr, MOEH_SPLIT_TEST, &eb, auroc, &loss, &es, &err))) goto out;
    moeh_bin_metrics_t per_task[MOEH_N_TASKS], overall,
        per_combo[(MOEH_N_COMBOS + 1) * MOEH_N_TASKS];
    memset(per_combo, 0, sizeof per_combo);
    if ((rc = exact_metrics(test_tr, per_task, &overall, per_combo, predictions, &err))) goto out;
    double m = moeh_eval_mean_finite(auroc[0], MOEH_N_TASKS);
    if ((rc = write_test_lines(mf, epochs, best_epoch, train_loss, loss, m,
                               (double)(moeh_now_ms() - t0) / 1e3, auroc, per_task, &es,
                               eb.gate_sum, E, &err)))
        goto out;

    printf("\ntest (%zu rows): AUROC from %u-bin histograms as the coordinator; exact "
           "AUROC, AUPRC, F1\n%-10s %8s %8s %8s %8s %8s %7s %6s\n",
           moeh_trainer_rows(test_tr, MOEH_SPLIT_TEST), bins, "task", "auroc", "exact", "auprc",
           "f1@0.5", "f1_best", "n", "pos");
    for (size_t k = 0; k < MOEH_N_TASKS; k++)
        printf("%-10s %8.4f %8.4f %8.4f %8.4f %8.4f %7zu %6zu\n", moeh_task_names[k], auroc[0][k],
               per_task[k].auroc, per_task[k].auprc, per_task[k].f1_05, per_task[k].f1_best,
               per_task[k].n, per_task[k].n_pos);
    printf("%-10s %8.4f %8.4f %8.4f %8.4f %8.4f\n", "mean", m, overall.auroc, overall.auprc,
           overall.f1_05, overall.f1_best);
    printf("\nAUROC per modality combination (E = EHR, N = notes, I = image)\n%-6s %6s", "combo",
           "rows");
    for (size_t k = 0; k < MOEH_N_TASKS; k++)
        printf(" %10s", moeh_task_names[k]);
    printf("\n");
    for (size_t c = 0; c < MOEH_N_COMBOS; c++) {
        if (!es.combo_rows[c]) continue;
        printf("%-6s %6u", moeh_combo_names[c], es.combo_rows[c]);
        for (size_t k = 0; k < MOEH_N_TASKS; k++)
            printf(" %10.4f", auroc[c + 1][k]);
        printf("\n");
    }
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    { /* the self-describing model file (train/moeh_modelfile.h) */
        const moeh_dataset_t *tds = moeh_trainer_dataset(tr);
        moeh_modelfile_info_t info = {.mean = mean,
                                      .std = sd,
                                      .static_names = (const char *const *)tds->static_names,
                                      .ts_names = (const char *const *)tds->ts_names,
                                      .ts_units = (const char *const *)tds->ts_units,
                                      .prov = {.source = "central",
                                               .rounds = epochs,
                                               .selected_round = best_epoch,
                                               .sites = 1,
                                               .strategy = "central",
                                               .dp_epsilon = NAN}};
        if ((rc = moeh_modelfile_write(path, moeh_trainer_model(tr), &info, &err))) goto out;
    }
    printf("\ndone in %.0f s: metrics in %s/metrics.jsonl, model in %s\n",
           (double)(moeh_now_ms() - t0) / 1e3, out, path);
out:
    if (mf) fclose(mf);
    if (rc) fprintf(stderr, "moeh train: %s\n", err.msg);
    moeh_dataset_destroy(&ds);
    moeh_dataset_destroy(&eds);
    moeh_trainer_destroy(&tr);
    moeh_trainer_destroy(&etr);
    free(stats);
    free(mean);
    free(sd);
    free(eb.hist);
    free(eb.gate_sum);
    free(eb.scratch);
    free(best);
    moeh_opts_free(&o);
    return rc ? 1 : 0;
}
