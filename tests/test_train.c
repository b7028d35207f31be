/* test_train.c - `moeh train` (sim/cmd_train.c) through the moeh binary in
 * MOEH_BIN_DIR, on a small synthetic MIMIC-IV (made once with the library: synth -> extract
 * -> two sites) and a tiny model:
 *  - centralised training on both sites reduces the training loss and beats 0.6 mean test
 *    AUROC; metrics.jsonl has the coordinator's eval/task/gate lines; the model is written;
 *  - a model trained on one site is evaluated on the pooled test set of both sites;
 *  - bad arguments exit 2 with a message, a missing dataset exits 1 naming the file;
 *  - the config line of metrics.jsonl is JSON for a dataset named with a quote and a
 *    backslash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "cli_util.h"
#include "synth_fixture.h"
#include "test_util.h"

#include "moeh_split.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256], g_bin[1024], g_s1[320], g_s2[320];

static int group_setup(void **state)
{
    (void)state;
    moeh_err_t err = {0};
    char sites[300];
    moeh_dataset_t *ds = NULL;
    moeh_split_opts_t sp;
    moeh_split_opts_default(&sp);
    sp.seed = 7;
    int rc = moeh_test_tmpdir(g_dir, sizeof g_dir, "train");
    cli_bin(g_bin, sizeof g_bin, "moeh");
    snprintf(sites, sizeof sites, "%s/sites", g_dir);
    snprintf(g_s1, sizeof g_s1, "%s/site-1", sites);
    snprintf(g_s2, sizeof g_s2, "%s/site-2", sites);
    if (!rc) rc = moeh_test_synth_cohort(g_dir, 400, 7, &ds, &err);
    if (!rc)
        rc = moeh_split_parse_sites("site-1:0.5:ehr+notes+img,site-2:0.5:ehr+notes", &sp, &err);
    if (!rc) rc = moeh_split_write(ds, &sp, sites, NULL, &err);
    moeh_dataset_destroy(&ds);
    if (rc) fprintf(stderr, "group setup: %s\n", err.msg);
    return rc;
}

static int group_teardown(void **state)
{
    (void)state;
    return moeh_test_rmtree(g_dir);
}

/* Runs "moeh train ARGS" in DIR (its output in DIR/out) and returns the exit status. */
static int run(const char *args)
{
    char a[4096];
    snprintf(a, sizeof a, "train %s", args);
    return cli_run(g_dir, g_bin, a);
}

static char *slurp(const char *path)
{
    return cli_slurp(path);
}

static bool out_has(const char *s)
{
    return cli_out_has(g_dir, s);
}

/* What a metrics.jsonl says: second and last epoch train loss, the final eval line's mean
 * AUROC, the number of task lines (with finite AUROC) and of gate lines, the rows the gate
 * line counts over all combinations, and the config's test rows. */
typedef struct {
    double first_loss, last_loss, auroc_mean;
    int n_epochs, n_tasks_ok, n_task_lines, n_gate;
    size_t gate_rows, combo_rows[MOEH_N_COMBOS];
    int combo_null[MOEH_N_COMBOS]; /* task lines whose auroc_<combo> is null */
    double test_rows;
} metrics_t;

static void read_metrics(const char *dir, metrics_t *m)
{
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    char *txt = slurp(p);
    assert_non_null(txt);
    memset(m, 0, sizeof *m);
    m->auroc_mean = NAN;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        assert_non_null(ev);
        if (!strcmp(ev, "epoch")) {
            assert_true(cJSON_IsBool(cJSON_GetObjectItem(j, "warmup")));
            double l = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "train_loss"));
            if (m->n_epochs++ == 1) /* epoch 2: the first joint one (warm-up adds a gate term) */
                m->first_loss = l;
            m->last_loss = l;
        } else if (!strcmp(ev, "eval")) {
            m->auroc_mean = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "auroc_mean"));
        } else if (!strcmp(ev, "task")) {
            double a = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "auroc"));
            assert_non_null(cJSON_GetObjectItem(j, "auroc_EN"));
            assert_non_null(cJSON_GetObjectItem(j, "auprc"));
            /* one line per task, in the schema's order and with its names */
            assert_true(m->n_task_lines < MOEH_N_TASKS);
            assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "task")),
                                moeh_task_names[m->n_task_lines++]);
            for (int c = 0; c < MOEH_N_COMBOS; c++) { /* an AUROC in [0, 1], or null */
                char key[32];
                snprintf(key, sizeof key, "auroc_%s", moeh_combo_names[c]);
                const cJSON *x = cJSON_GetObjectItem(j, key);
                m->combo_null[c] += cJSON_IsNull(x);
                assert_true(cJSON_IsNull(x) ||
                            (cJSON_IsNumber(x) && x->valuedouble >= 0 && x->valuedouble <= 1));
            }
            assert_non_null(cJSON_GetObjectItem(j, "f1"));
            m->n_tasks_ok += isfinite(a) && a > 0 && a < 1;
        } else if (!strcmp(ev, "gate")) {
            m->n_gate++;
            /* {"E": {"rows": r, "weights": [...]}, ...}: every combination, one weight per
             * expert, each a mean mixture weight in [0, 1] */
            for (int c = 0; c < MOEH_N_COMBOS; c++) {
                const cJSON *g = cJSON_GetObjectItem(j, moeh_combo_names[c]);
                const cJSON *w = cJSON_GetObjectItem(g, "weights");
                assert_true(cJSON_IsNumber(cJSON_GetObjectItem(g, "rows")));
                assert_true(cJSON_IsArray(w) && cJSON_GetArraySize(w) > 0);
                for (const cJSON *x = w->child; x; x = x->next)
                    assert_true(cJSON_IsNumber(x) && x->valuedouble >= 0 && x->valuedouble <= 1);
                m->combo_rows[c] = (size_t)cJSON_GetNumberValue(cJSON_GetObjectItem(g, "rows"));
                m->gate_rows += m->combo_rows[c];
            }
        } else if (!strcmp(ev, "config")) {
            m->test_rows = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "test_rows"));
        }
        cJSON_Delete(j);
    }
    free(txt);
}

static size_t test_rows_of(const char *ds_dir)
{
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dataset_open(ds_dir, false, &ds, &err), 0);
    size_t n = 0;
    for (size_t i = 0; i < ds->n; i++)
        n += ds->split[i] == MOEH_SPLIT_TEST;
    moeh_dataset_destroy(&ds);
    return n;
}

static void test_centralised_learns(void **state)
{
    (void)state;
    char args[2048], out[300], model[400];
    snprintf(out, sizeof out, "%s/central", g_dir);
    snprintf(args, sizeof args,
             "--dataset %s,%s --epochs 8 --warmup-epochs 1 --d-emb 16 --d-hidden 16 "
             "--note-buckets 1024 --lr 3e-3 --batch-size 32 --out %s",
             g_s1, g_s2, out);
    assert_int_equal(run(args), 0);
    assert_true(out_has("val_mean"));
    assert_true(out_has("selected epoch"));
    assert_true(out_has("AUROC per modality combination"));
    metrics_t m;
    read_metrics(out, &m);
    assert_int_equal(m.n_epochs, 8);
    fprintf(stderr, "train loss %.4f -> %.4f, test mean AUROC %.4f\n", m.first_loss, m.last_loss,
            m.auroc_mean);
    assert_true(m.last_loss < m.first_loss);
    assert_true(m.auroc_mean > 0.6);
    assert_int_equal(m.n_tasks_ok, 3);
    assert_int_equal(m.n_task_lines, MOEH_N_TASKS);
    assert_int_equal(m.n_gate, 1);
    assert_int_equal((size_t)m.test_rows, test_rows_of(g_s1) + test_rows_of(g_s2));
    assert_true(m.gate_rows > 0 && m.gate_rows <= (size_t)m.test_rows);
    /* a combination without test rows has no AUROC: NaN is written as null (the synthetic
     * cohort always has the EHR, so N, I and NI are empty) */
    int empty = 0;
    for (int c = 0; c < MOEH_N_COMBOS; c++)
        if (m.combo_rows[c] == 0) {
            assert_int_equal(m.combo_null[c], MOEH_N_TASKS);
            empty++;
        }
    assert_true(empty > 0);
    struct stat st;
    snprintf(model, sizeof model, "%s/model.safetensors", out);
    assert_int_equal(stat(model, &st), 0);
    assert_true(st.st_size > 1000);
}

static void test_eval_on_other_dataset(void **state)
{
    (void)state;
    char args[2048], out[300];
    snprintf(out, sizeof out, "%s/local", g_dir);
    snprintf(args, sizeof args,
             "--dataset %s --eval-dataset %s,%s --arch 4 --epochs 2 --d-emb 16 "
             "--d-hidden 16 --note-buckets 1024 --select last --out %s",
             g_s2, g_s1, g_s2, out);
    assert_int_equal(run(args), 0);
    metrics_t m;
    read_metrics(out, &m);
    assert_int_equal(m.n_epochs, 2);
    assert_int_equal((size_t)m.test_rows, test_rows_of(g_s1) + test_rows_of(g_s2));
    assert_true(isfinite(m.auroc_mean));
    assert_int_equal(m.n_tasks_ok, 3);
}

/* The config line is JSON whatever the dataset's name: a quote and a backslash in it are
 * escaped (it was printed with %s, and such a name made the line unreadable). */
static void test_config_line_escaped(void **state)
{
    (void)state;
    char link[400], out[300], p[512];
    snprintf(link, sizeof link, "%s/c\"q\\", g_dir);
    assert_int_equal(symlink(g_s2, link), 0);
    snprintf(out, sizeof out, "%s/quoted", g_dir);
    char args[1024];
    snprintf(args, sizeof args,
             "--dataset 'c\"q\\' --epochs 1 --warmup-epochs 0 --d-emb 8 --d-hidden 8 "
             "--note-buckets 256 --seed 18446744073709551615 --out %s",
             out);
    assert_int_equal(run(args), 0);
    metrics_t m;
    read_metrics(out, &m); /* every line parses */
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    char *txt = slurp(p);
    assert_non_null(txt);
    *strchr(txt, '\n') = '\0';
    cJSON *j = cJSON_Parse(txt);
    assert_non_null(j);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "event")), "config");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "dataset")), "c\"q\\");
    /* a float option as typed, not its double's 17 digits; a 64-bit seed exact */
    assert_non_null(strstr(txt, "\"lr\":0.002,"));
    assert_non_null(strstr(txt, "\"seed\":18446744073709551615,"));
    cJSON_Delete(j);
    free(txt);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    const char *d = g_dir, *b = g_bin;
    cli_expect(d, b, 2, "--dataset is required", "train --epochs 3");
    cli_expect(d, b, 2, "--arch 7: expected 0..6", "train --dataset %s --arch 7", g_s1);
    cli_expect(d, b, 2, "warm-up <= epochs", "train --dataset %s --epochs 2 --warmup-epochs 3",
               g_s1);
    cli_expect(d, b, 2, "--lr", "train --dataset %s --lr -1", g_s1);
    cli_expect(d, b, 2, "--select first: expected best or last",
               "train --dataset %s --select first", g_s1);
    cli_expect(d, b, 2, "bogus", "train --dataset x --bogus 1");
    cli_expect(d, b, 2, "--dataset: expected DIR[,DIR...]", "train --dataset , --epochs 1");
    cli_expect(d, b, 1, "nowhere/meta.json", "train --dataset %s/nowhere --out %s/x", g_dir, g_dir);
    cli_expect(d, b, 0, "--eval-dataset", "train --help");
}

MOEH_TEST_MAIN(group_setup, group_teardown, cmocka_unit_test(test_bad_arguments),
               cmocka_unit_test(test_centralised_learns),
               cmocka_unit_test(test_eval_on_other_dataset),
               cmocka_unit_test(test_config_line_escaped))
