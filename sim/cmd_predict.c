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

/* Writes the CSV header: admission_id,combo,p_<task>...,gate_0..gate_{E-1},expert. */
static int write_header(FILE *f, size_t n_experts)
{
    fprintf(f, "admission_id,combo");
    for (size_t k = 0; k < MOEH_N_TASKS; k++)
        fprintf(f, ",p_%s", moeh_task_names[k]);
    for (size_t k = 0; k < n_experts; k++)
        fprintf(f, ",gate_%zu", k);
    return fprintf(f, ",expert\n") < 0 ? -EIO : 0;
}

/* Scores the dataset in batches of B rows into f. progress: redraw a percentage on stderr. */
static int predict_all(moeh_trainer_t *t, size_t n, size_t B, size_t E, FILE *f, int progress,
                       moeh_err_t *err)
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
                fprintf(f, ",%zu\n", best);
            else
                fprintf(f, ",\n");
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

int moeh_sim_cmd_predict(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL;
    uint32_t batch = 64;
    int no_verify = 0;
    const moeh_opt_t opts[] = {
        {"model", MOEH_OPT_STR, &model,
         "the model file (model.safetensors of moeh run, moeh train or the coordinator) "
         "[required]"},
        {"dataset", MOEH_OPT_STR, &data, "the dataset to score (every split) [required]"},
        {"out", MOEH_OPT_STR, &out, "the CSV to write ('-': standard output) [required]"},
        {"batch-size", MOEH_OPT_U32, &batch, "rows per forward pass"},
        {"no-verify", MOEH_OPT_BOOL, &no_verify, "do not check the arrays' checksums"},
    };
    moeh_opts_t po = {
        .prog = "moeh predict",
        .synopsis =
            "usage: moeh predict --model FILE --dataset DIR --out preds.csv [OPTIONS]\n\n"
            "Scores every admission of DIR with the model file and writes one CSV row per\n"
            "admission: admission_id (hadm_id), combo (E, N, EN, I, EI, NI, ENI or none),\n"
            "p_mortality, p_los7, p_readmit30, gate_0..gate_{E-1} (the gate's weight per expert)\n"
            "and expert (the largest weight). Refuses a dataset whose variables, image size or\n"
            "schema differ from the model's. Progress on stderr when it is a terminal.\n"
            "Exit status: 0 ok, 1 failure (including a dataset that does not fit), 2 usage "
            "error.",
        .opts = opts,
        .n_opts = sizeof opts / sizeof opts[0]};
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&po, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && (!model || !data || !out))
        rc = moeh_errf(&err, -EINVAL,
                       "--model, --dataset and --out are required (moeh predict --help)");
    if (!rc && (batch == 0 || batch > 65536))
        rc = moeh_errf(&err, -EINVAL, "--batch-size %u: expected 1..65536", batch);
    if (rc) {
        fprintf(stderr, "moeh predict: %s\n", err.msg);
        moeh_opts_free(&po);
        return 2;
    }
    moeh_log_configure(MOEH_LOG_WARN, "moeh", NULL, NULL);
    moeh_modelfile_t *mf = NULL;
    moeh_dataset_t *ds = NULL;
    moeh_trainer_t *t = NULL;
    FILE *f = NULL;
    int64_t t0 = moeh_now_ms();
    if ((rc = moeh_modelfile_read(model, batch, &mf, &err))) goto out;
    if ((rc = moeh_dataset_open(data, !no_verify, &ds, &err))) goto out;
    if ((rc = moeh_modelfile_check_dataset(mf, ds, data, &err))) goto out;
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
    if (write_header(f, E)) {
        rc = moeh_errf(&err, -EIO, "%s: write failed", out);
        goto out;
    }
    int64_t tf = moeh_now_ms();
    if ((rc = predict_all(t, n, batch, E, f, isatty(STDERR_FILENO), &err))) goto out;
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
    if (rc) fprintf(stderr, "moeh predict: %s\n", err.msg[0] ? err.msg : moeh_strerror(rc));
    moeh_trainer_destroy(&t);
    moeh_dataset_destroy(&ds);
    moeh_modelfile_destroy(&mf);
    moeh_opts_free(&po);
    return rc ? 1 : 0;
}
