/* cmd_predict.c - `moeh predict`: scores every admission of a dataset with a model file
 * (train/moeh_modelfile.h) and writes one CSV row per admission: its id, its modality
 * combination, the probability of each task, the gate's weight per expert and the expert with
 * the largest weight (docs/model-file.md).
 *
 * The dataset must fit the model: same static features, hourly variables (names and units where
 * the model file records them), hours, image size, and this build's schema (tasks, modalities);
 * otherwise the command refuses and names the difference. Inputs are normalised with the
 * statistics stored in the model file, exactly as in training (train/moeh_trainer.h). An
 * admission may lack any modality: the model's missing-modality embeddings stand in. */
#include "moeh_modelfile.h"
#include "moeh_opts.h"
#include "moeh_trainer.h"
#include "sim_commands.h"

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

/* Writes the CSV header: admission_id,combo,p_<task>...,gate_0..gate_{E-1},expert and, with
 * labels, split,label_<task>... */
static int write_header(FILE *f, size_t n_experts, int labels)
{
    fprintf(f, "admission_id,combo");
    for (size_t k = 0; k < MOEH_N_TASKS; k++)
        fprintf(f, ",p_%s", moeh_task_names[k]);
    for (size_t k = 0; k < n_experts; k++)
        fprintf(f, ",gate_%zu", k);
    fprintf(f, ",expert");
    if (labels) {
        fprintf(f, ",split");
        for (size_t k = 0; k < MOEH_N_TASKS; k++)
            fprintf(f, ",label_%s", moeh_task_names[k]);
    }
    return fprintf(f, "\n") < 0 ? -EIO : 0;
}

/* ---- issue 15: --split, --with-labels and --drop (test-time modality removal) ---------- */
#define MAX_DROPS 8
static const char *const split_names[3] = {"train", "val", "test"};

typedef struct {
    unsigned mods; /* bit m: modality m is removed */
    uint32_t pct;  /* from this percentage of the rows */
} drop_t;

/* Parses --drop MOD[+MOD]:P[,...] (MOD notes or img, P 0..100) into d[0..*nd). */
static int parse_drops(const char *spec, drop_t *d, size_t *nd, moeh_err_t *err)
{
    *nd = 0;
    const char *p = spec;
    while (*p) {
        if (*nd == MAX_DROPS)
            return moeh_errf(err, -EINVAL, "--drop %s: at most %d entries", spec, MAX_DROPS);
        const char *colon = strchr(p, ':'), *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        if (!colon || colon > end)
            return moeh_errf(err, -EINVAL, "--drop %s: expected MOD[+MOD]:PERCENT, got '%.*s'",
                             spec, (int)(end - p), p);
        unsigned mods = 0;
        for (const char *m = p; m < colon;) {
            const char *plus = memchr(m, '+', (size_t)(colon - m));
            size_t len = (size_t)((plus ? plus : colon) - m);
            if (len == 5 && !strncmp(m, "notes", 5))
                mods |= 1u << MOEH_MOD_NOTES;
            else if (len == 3 && !strncmp(m, "img", 3))
                mods |= 1u << MOEH_MOD_IMG;
            else
                return moeh_errf(err, -EINVAL,
                                 "--drop %s: modality '%.*s': expected notes, img or notes+img",
                                 spec, (int)len, m);
            m = plus ? plus + 1 : colon;
        }
        char *num_end;
        unsigned long pct = strtoul(colon + 1, &num_end, 10);
        if (num_end != end || num_end == colon + 1 || pct > 100)
            return moeh_errf(err, -EINVAL, "--drop %s: percentage '%.*s': expected 0..100", spec,
                             (int)(end - colon - 1), colon + 1);
        d[(*nd)++] = (drop_t){mods, (uint32_t)pct};
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* Whether row hadm of entry mods is among the removed pct%: a uniform draw seeded by (seed,
 * hadm_id, mods), so the rows do not depend on the file's order or split, and the rows removed
 * at p% are among those removed at any larger p (nested curves). */
static int drop_row(uint64_t seed, int64_t hadm, unsigned mods, uint32_t pct)
{
    moeh_rng_t r;
    moeh_rng_seed(&r, seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)hadm ^ ((uint64_t)mods << 56));
    return moeh_rng_uniform(&r) * 100.0 < (double)pct;
}

/* Replaces *ds by a writable copy holding the rows of the split (-1: every row) with the
 * drops applied: the modality marked absent, its note emptied, its image zeroed. */
static int select_and_drop(moeh_dataset_t **ds, int split, const drop_t *d, size_t nd,
                           uint64_t seed, moeh_err_t *err)
{
    moeh_dataset_t *src = *ds, *cp = NULL;
    size_t *idx = malloc((src->n ? src->n : 1) * sizeof *idx), k = 0;
    int32_t *tok = malloc((src->n_tokens ? src->n_tokens : 1) * sizeof *tok);
    int rc = 0;
    if (!idx || !tok) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < src->n; i++)
        if (split < 0 || src->split[i] == split) idx[k++] = i;
    if ((rc = moeh_dataset_subset(src, idx, k, (1u << MOEH_N_MODS) - 1, &cp, err))) goto out;
    size_t nt = 0, S2 = cp->img_size * cp->img_size;
    for (size_t i = 0; i < cp->n; i++) {
        unsigned gone = 0;
        for (size_t j = 0; j < nd; j++)
            if (drop_row(seed, cp->ids[2 * i + 1], d[j].mods, d[j].pct)) gone |= d[j].mods;
        if (gone & (1u << MOEH_MOD_IMG)) {
            cp->avail[i * MOEH_N_MODS + MOEH_MOD_IMG] = 0;
            if (S2) memset(cp->images + i * S2, 0, S2);
        }
        /* offsets rewritten in place: row i's old end is read before row i+1 is rewritten */
        int64_t a = cp->note_offsets[i], b = cp->note_offsets[i + 1];
        cp->note_offsets[i] = (int64_t)nt;
        if (gone & (1u << MOEH_MOD_NOTES))
            cp->avail[i * MOEH_N_MODS + MOEH_MOD_NOTES] = 0;
        else
            for (int64_t t = a; t < b; t++)
                tok[nt++] = cp->note_tokens[t];
    }
    cp->note_offsets[cp->n] = (int64_t)nt;
    rc = moeh_dataset_set_tokens(cp, tok, nt, err);
    if (!rc) {
        moeh_dataset_destroy(ds);
        *ds = cp;
        cp = NULL;
    }
out:
    moeh_dataset_destroy(&cp);
    free(idx);
    free(tok);
    return rc;
}
/* ---- end of issue 15's options ---------------------------------------------------------- */

/* Scores the dataset in batches of B rows into f. progress: redraw a percentage on stderr. */
static int predict_all(moeh_trainer_t *t, size_t n, size_t B, size_t E, FILE *f, int progress,
                       int labels, moeh_err_t *err)
{
    const moeh_dataset_t *ds = moeh_trainer_dataset(t);
    float *probs = malloc(B * MOEH_N_TASKS * sizeof(float));
    float *gate = malloc(B * (E ? E : 1) * sizeof(float));
    int rc = 0;
    if (!probs || !gate) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto out;
    }
    int64_t t0 = moeh_now_ms(), last = t0;
    for (size_t s = 0; s < n; s += B) {
        size_t bs = n - s < B ? n - s : B;
        if ((rc = moeh_trainer_predict_rows(t, s, bs, probs, E ? gate : NULL, err))) goto out;
        for (size_t r = 0; r < bs; r++) {
            size_t i = s + r;
            int c = moeh_combo_of(ds->avail + i * MOEH_N_MODS);
            fprintf(f, "%" PRId64 ",%s", ds->ids[i * 2 + 1], c >= 0 ? moeh_combo_names[c] : "none");
            for (size_t k = 0; k < MOEH_N_TASKS; k++)
                fprintf(f, ",%.7g", (double)probs[r * MOEH_N_TASKS + k]);
            size_t best = 0;
            for (size_t k = 0; k < E; k++) {
                float g = gate[r * E + k];
                fprintf(f, ",%.7g", (double)g);
                if (g > gate[r * E + best]) best = k;
            }
            if (E)
                fprintf(f, ",%zu", best);
            else
                fprintf(f, ",");
            if (labels) { /* --with-labels: split and labels, empty where a label is masked */
                fprintf(f, ",%s", split_names[ds->split[i] < 3 ? ds->split[i] : 0]);
                for (size_t k = 0; k < MOEH_N_TASKS; k++)
                    if (ds->label_mask[i * MOEH_N_TASKS + k])
                        fprintf(f, ",%d", ds->labels[i * MOEH_N_TASKS + k] > 0.5f);
                    else
                        fprintf(f, ",");
            }
            fputc('\n', f);
        }
        int64_t now = moeh_now_ms();
        if (progress && (now - last >= 500 || s + bs == n)) {
            double done = (double)(s + bs) / (double)n, secs = (double)(now - t0) / 1e3;
            fprintf(stderr, "\rmoeh predict: %5.1f%% (%zu/%zu rows), ETA %.0f s   ", 100 * done,
                    s + bs, n, done > 0 ? secs / done - secs : 0.0);
            last = now;
        }
    }
    if (progress && n) fputc('\n', stderr);
    if (ferror(f)) rc = moeh_errf(err, -EIO, "write failed");
out:
    free(probs);
    free(gate);
    return rc;
}

static const char k_usage[] =
    "usage: moeh predict --model FILE --dataset DIR --out preds.csv [OPTIONS]\n\n"
    "Scores every admission of DIR with the model file and writes one CSV row per\n"
    "admission: admission_id (hadm_id), combo (E, N, EN, I, EI, NI, ENI or none),\n"
    "p_mortality, p_los7, p_readmit30, gate_0..gate_{E-1} (the gate's weight per expert)\n"
    "and expert (the largest weight). Refuses a dataset whose variables, image size or\n"
    "schema differ from the model's. Progress on stderr when it is a terminal.\n"
    "--with-labels adds split and label_<task>; --split keeps one split's rows; --drop\n"
    "marks a modality absent (note emptied, image zeroed) for a fixed random P% of the\n"
    "rows, chosen from (--drop-seed, hadm_id): the same rows for every model, and the\n"
    "rows of a smaller P among those of a larger one.\n"
    "Exit status: 0 ok, 1 failure (including a dataset that does not fit), 2 usage "
    "error.";

int moeh_sim_cmd_predict(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL;
    uint32_t batch = 64;
    int no_verify = 0;
    const char *split_opt = NULL, *drop_opt = NULL; /* issue 15 */
    int with_labels = 0;
    uint64_t drop_seed = 1;
    drop_t drops[MAX_DROPS];
    size_t n_drops = 0;
    int split = -1;
    const moeh_opt_t opts[] = {
        {"model", MOEH_OPT_STR, &model,
         "the model file (model.safetensors of moeh run, moeh train or the coordinator) "
         "[required]"},
        {"dataset", MOEH_OPT_STR, &data, "the dataset to score (every split) [required]"},
        {"out", MOEH_OPT_STR, &out, "the CSV to write ('-': standard output) [required]"},
        {"batch-size", MOEH_OPT_U32, &batch, "rows per forward pass"},
        {"no-verify", MOEH_OPT_BOOL, &no_verify, "do not check the arrays' checksums"},
        {"split", MOEH_OPT_STR, &split_opt,
         "score only the rows of this split: train, val or test"},
        {"with-labels", MOEH_OPT_BOOL, &with_labels,
         "also write split and label_<task> (empty where masked)"},
        {"drop", MOEH_OPT_STR, &drop_opt,
         "MOD[+MOD]:P[,...]: remove notes, img or both from P% of the rows before scoring "
         "(robustness; e.g. notes:50 or notes+img:25)"},
        {"drop-seed", MOEH_OPT_U64, &drop_seed, "seed of the rows --drop removes"},
    };
    moeh_opts_t po = MOEH_SIM_OPTS("moeh predict", k_usage, opts);
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&po, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && (!model || !data || !out))
        rc = moeh_errf(&err, -EINVAL,
                       "--model, --dataset and --out are required (moeh predict --help)");
    if (!rc && (batch == 0 || batch > 65536))
        rc = moeh_errf(&err, -EINVAL, "--batch-size %u: expected 1..65536", batch);
    for (int k = 0; !rc && split_opt && k < 3; k++)
        if (!strcmp(split_opt, split_names[k])) split = k;
    if (!rc && split_opt && split < 0)
        rc = moeh_errf(&err, -EINVAL, "--split %s: expected train, val or test", split_opt);
    if (!rc && drop_opt) rc = parse_drops(drop_opt, drops, &n_drops, &err);
    if (rc) return moeh_sim_usage_error(&po, &err);
    moeh_log_configure(MOEH_LOG_WARN, "moeh", NULL, NULL);
    moeh_modelfile_t *mf = NULL;
    moeh_dataset_t *ds = NULL;
    moeh_trainer_t *t = NULL;
    FILE *f = NULL;
    int64_t t0 = moeh_now_ms();
    if ((rc = moeh_modelfile_read(model, batch, &mf, &err))) goto out;
    if ((rc = moeh_dataset_open(data, !no_verify, &ds, &err))) goto out;
    if ((rc = moeh_modelfile_check_dataset(mf, ds, data, &err))) goto out;
    if ((split >= 0 || n_drops) &&
        (rc = select_and_drop(&ds, split, drops, n_drops, drop_seed, &err)))
        goto out;
    size_t n = ds->n;
    moeh_moe_cfg_t cfg = mf->cfg;
    if ((rc = moeh_trainer_create(&ds, &cfg, &t, &err))) goto out;
    moeh_params_t *dst = moeh_moe_params(moeh_trainer_model(t));
    const moeh_params_t *src = moeh_moe_params(mf->model);
    MOEH_ASSERT(dst->n == src->n);
    memcpy(dst->w, src->w, src->n * sizeof(float));
    moeh_trainer_set_norm(t, mf->mean, mf->std);
    /* only MoE has a gate; the baselines get no gate columns and an empty expert column */
    size_t E = cfg.arch == MOEH_ARCH_MOE ? moeh_moe_n_experts(moeh_trainer_model(t)) : 0;
    if (!strcmp(out, "-"))
        f = stdout;
    else if (!(f = fopen(out, "w"))) {
        rc = moeh_errf(&err, -errno, "%s: cannot create: %s", out, strerror(errno));
        goto out;
    }
    if (write_header(f, E, with_labels)) {
        rc = moeh_errf(&err, -EIO, "%s: write failed", out);
        goto out;
    }
    int64_t tf = moeh_now_ms();
    if ((rc = predict_all(t, n, batch, E, f, isatty(STDERR_FILENO), with_labels, &err))) goto out;
    double fsecs = (double)(moeh_now_ms() - tf) / 1e3;
    if (f != stdout && fclose(f) != 0) {
        f = NULL;
        rc = moeh_errf(&err, -EIO, "%s: write failed", out);
        goto out;
    }
    if (f == stdout) fflush(stdout);
    f = NULL;
    double secs = (double)(moeh_now_ms() - t0) / 1e3;
    fprintf(stderr,
            "moeh predict: %zu admissions scored in %.2f s (forward and CSV %.2f s, %.0f rows/s "
            "forward) -> %s\n",
            n, secs, fsecs, fsecs > 0 ? (double)n / fsecs : 0.0, out);
out:
    if (f && f != stdout) fclose(f);
    moeh_trainer_destroy(&t);
    moeh_dataset_destroy(&ds);
    moeh_modelfile_destroy(&mf);
    if (rc) return moeh_sim_failed(&po, rc, &err);
    moeh_opts_free(&po);
    return 0;
}
