/* test_coordinator_select.c - federated validation and model selection (coordinator/select.c)
 * driven in-process with the fixture of coord_util.h: each round is TRAIN -> VALIDATE, whose
 * one reply carries the test and the validation splits' figures (protocol 9); the fake sites
 * answer with crafted score histograms whose AUROC and loss are known, so the round the
 * coordinator must select is known. Covers: the best round by mean validation AUROC is kept
 * (model.npy holds its parameters, the final test metrics are its own), --select-by loss,
 * --patience ending the run early, a run resumed from its checkpoint selecting exactly as an
 * uninterrupted one, each split's figures bounded by that split's declared rows, and an answer
 * missing the validation figures refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "coord_util.h"
#include "moeh_checkpoint.h"
#include "moeh_npy.h"

#define ROWS 20 /* per site and phase: within the 40 test rows each site declares */

/* Histograms over ROWS rows, every task alike: the negatives in score bin 2, a fraction q of
 * the positives in bin 7 (above them) and the rest in bin 1 (below): AUROC q (the caller frees
 * them). */
static uint32_t *scores(const fx_t *f, double q)
{
    const uint32_t T = MOEH_N_TASKS, nb = f->cfg.eval_bins;
    size_t per_slice = (size_t)T * 2 * nb;
    uint32_t *hist = calloc(MOEH_N_SLICES * per_slice, sizeof(uint32_t));
    assert_non_null(hist);
    const uint32_t pos = ROWS / 2, hi = (uint32_t)(q * pos + 0.5);
    for (size_t sl = 0; sl < 2; sl++) /* all rows, and combination E */
        for (uint32_t t = 0; t < T; t++) {
            uint32_t *neg = hist + sl * per_slice + (size_t)t * 2 * nb;
            neg[2] = ROWS - pos;
            neg[nb + 7] = hi;
            neg[nb + 1] = pos - hi;
        }
    return hist;
}

/* Site k's answer to VALIDATE: test AUROC test_q (loss 0.5 per label), validation AUROC val_q
 * and loss val_loss. */
static void send_scores(fx_t *f, int k, uint32_t round, uint64_t version, double val_q,
                        double val_loss, double test_q)
{
    uint32_t *th = scores(f, test_q), *vh = scores(f, val_q);
    const fx_split_t test = {th, ROWS, 0.5}, val = {vh, ROWS, val_loss};
    deliver_eval_splits(f, k, round, version, &test, &val);
    free(th);
    free(vh);
}

/* One round r: every site's update, then VALIDATE with (val_q, val_loss) on the validation
 * split and test_q on the test split. *params (if not NULL) receives the model the round
 * produced (the one validated). */
static void play_round(fx_t *f, uint32_t r, double val_q, double val_loss, double test_q,
                       float *params)
{
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(moeh_coord_core_round(f->core), r);
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(send_update(f, k, r, v, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_VALIDATE);
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    if (params) memcpy(params, p->w, p->n * sizeof(float));
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, r, MOEH__ROUND_TASK__VALIDATE);
        send_scores(f, k, r, v + 1, val_q, val_loss, test_q);
    }
    tick(f, 10);
    assert_int_equal(f->saved_round, r);
}

/* The "selection" line of metrics.jsonl and the number of "calibration" lines of split val
 * and of "eval" lines with a val_auroc_mean. */
static int g_site_eval; /* "site_eval" lines read by the last read_selection() */

static cJSON *read_selection(const fx_t *f, int *n_val_calib, int *n_val_eval)
{
    cJSON *lines = fx_metrics(f), *j, *sel = NULL;
    *n_val_calib = *n_val_eval = g_site_eval = 0;
    cJSON_ArrayForEach(j, lines)
    {
        const char *ev = jstr(j, "event"), *split = jstr(j, "split");
        if (!strcmp(ev, "calibration") && split && !strcmp(split, "val")) ++*n_val_calib;
        if (!strcmp(ev, "eval") && cJSON_GetObjectItem(j, "val_auroc_mean")) ++*n_val_eval;
        if (!strcmp(ev, "site_eval")) g_site_eval++;
        if (!strcmp(ev, "selection")) {
            assert_null(sel); /* one selection line */
            sel = cJSON_Duplicate(j, 1);
        }
    }
    cJSON_Delete(lines);
    assert_non_null(sel);
    return sel;
}

/* model.npy equals want (the selected round's parameters), bit for bit. */
static void assert_model_file(const fx_t *f, const float *want)
{
    char path[400];
    snprintf(path, sizeof path, "%s/model.npy", f->dir);
    moeh_npy_t a;
    moeh_err_t err = {0};
    assert_int_equal(moeh_npy_read(path, MOEH_DT_F32, 1, &a, &err), 0);
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    assert_int_equal(moeh_npy_numel(&a), p->n);
    assert_memory_equal(a.data, want, p->n * sizeof(float));
    moeh_npy_free(&a);
}

/* The values of the final table's row `label` (e.g. "brier (val)"), one per task, from the
 * table the core printed to f->table (which this closes). */
static void final_row(fx_t *f, const char *label, double *v)
{
    char line[512];
    int found = 0;
    rewind(f->table);
    while (fgets(line, sizeof line, f->table)) {
        size_t n = strlen(label);
        if (strncmp(line, label, n) || line[n] != ' ') continue;
        assert_int_equal(sscanf(line + n, "%lf %lf %lf", &v[0], &v[1], &v[2]), MOEH_N_TASKS);
        found++;
    }
    assert_int_equal(found, 1);
}

/* The final table's calibration rows: test and validation Brier and ECE of the selected round,
 * each from its own split (every task alike in these histograms). */
static void assert_final_calib(fx_t *f, double test_brier, double test_ece, double val_brier,
                               double val_ece)
{
    const char *label[4] = {"brier (test)", "ece (test)", "brier (val)", "ece (val)"};
    const double want[4] = {test_brier, test_ece, val_brier, val_ece};
    for (int i = 0; i < 4; i++) {
        double v[MOEH_N_TASKS];
        final_row(f, label[i], v);
        for (int t = 0; t < MOEH_N_TASKS; t++)
            assert_float_equal(v[t], want[i], 1e-4);
    }
    fclose(f->table);
    f->table = NULL;
}

static void finish(fx_t *f)
{
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_DONE);
    assert_int_equal(moeh_coord_core_finish(f->core, &err), 0);
}

static void four_rounds(moeh_coord_cfg_t *c)
{
    c->validate = 1;
    c->rounds = 4;
}

/* Mean validation AUROC 0.6, 0.9, 0.7, 0.8: round 2 is selected; model.npy is round 2's
 * model, not the last, and the final test metrics are round 2's (test AUROC 0.5 there), its
 * calibration too: test (AUROC 0.5: negatives at 0.25, half the positives at 0.75 and half at
 * 0.15) Brier (10 * 0.0625 + 5 * 0.0625 + 5 * 0.7225) / 20 = 0.2275, ECE 0.5 * 0.25 + 0.25 *
 * 0.25 + 0.25 * 0.85 = 0.4; validation (0.9: 9 positives of 10 at 0.75) Brier 0.0955, ECE
 * 0.28. */
static void test_best_round_kept(void **state)
{
    fx_t *f = *state;
    f->table = tmpfile();
    assert_non_null(f->table);
    fx_start(f, four_rounds);
    size_t n = moeh_coord_core_params(f->core)->n;
    float *w2 = fx_model_copy(f), *w4 = fx_model_copy(f); /* filled by rounds 2 and 4 */
    const double val[4] = {0.6, 0.9, 0.7, 0.8}, test[4] = {0.7, 0.5, 0.8, 0.9};
    for (uint32_t r = 1; r <= 4; r++)
        play_round(f, r, val[r - 1], 0.5, test[r - 1], r == 2 ? w2 : r == 4 ? w4 : NULL);
    assert_memory_not_equal(w2, w4, n * sizeof(float)); /* the selection must matter */
    finish(f);
    assert_model_file(f, w2);
    assert_memory_equal(moeh_coord_core_params(f->core)->w, w2, n * sizeof(float));
    assert_final_calib(f, 0.2275, 0.4, 0.0955, 0.28);
    int n_cal, n_ev;
    cJSON *sel = read_selection(f, &n_cal, &n_ev);
    assert_int_equal(jnum(sel, "selected_round"), 2);
    assert_string_equal(jstr(sel, "selected_by"), "val_auroc_mean");
    assert_float_equal(jnum(sel, "value"), 0.9, 1e-6);
    assert_non_null(strstr(jstr(sel, "why"), "best mean validation AUROC over rounds 1..4"));
    assert_float_equal(jnum(sel, "test_auroc_mean"), 0.5, 1e-6);
    assert_int_equal(n_ev, 4);
    assert_int_equal(n_cal, 4 * MOEH_N_TASKS);
    assert_int_equal(g_site_eval, 4 * N_SITES); /* per-site rows: the test evaluation only */
    cJSON_Delete(sel);
    free(w2);
    free(w4);
}

static void by_loss(moeh_coord_cfg_t *c)
{
    four_rounds(c);
    c->select_by_loss = 1;
}

/* --select-by loss: validation loss 0.5, 0.4, 0.45, 0.3 (AUROC best at round 1): round 4. */
static void test_select_by_loss(void **state)
{
    fx_t *f = *state;
    fx_start(f, by_loss);
    float *w4 = fx_model_copy(f);
    const double loss[4] = {0.5, 0.4, 0.45, 0.3}, q[4] = {0.9, 0.8, 0.7, 0.6};
    for (uint32_t r = 1; r <= 4; r++)
        play_round(f, r, q[r - 1], loss[r - 1], 0.6, r == 4 ? w4 : NULL);
    finish(f);
    assert_model_file(f, w4);
    int n_cal, n_ev;
    cJSON *sel = read_selection(f, &n_cal, &n_ev);
    assert_int_equal(jnum(sel, "selected_round"), 4);
    assert_string_equal(jstr(sel, "selected_by"), "val_loss");
    assert_float_equal(jnum(sel, "value"), 0.3, 1e-6);
    cJSON_Delete(sel);
    free(w4);
}

static void patience2(moeh_coord_cfg_t *c)
{
    c->validate = 1;
    c->rounds = 6;
    c->patience = 2;
}

/* The start of a run of 6 rounds with --patience 2: rounds 1 to 3 with validation AUROC 0.7,
 * 0.9, 0.8 (test AUROC 0.6), the run going on after each. Round 2's model (the caller frees it). */
static float *patience_rounds_1_to_3(fx_t *f)
{
    fx_start(f, patience2);
    float *w2 = fx_model_copy(f);
    const double val[3] = {0.7, 0.9, 0.8};
    for (uint32_t r = 1; r <= 3; r++) {
        play_round(f, r, val[r - 1], 0.5, 0.6, r == 2 ? w2 : NULL);
        assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    }
    return w2;
}

/* patience_rounds_1_to_3, then the coordinator stops (f->core destroyed; its checkpoint of
 * round 3 stays). Round 2's model (the caller frees it). */
static float *interrupted_after_round_3(fx_t *f)
{
    float *w2 = patience_rounds_1_to_3(f);
    moeh_coord_core_destroy(&f->core);
    return w2;
}

/* After interrupted_after_round_3: a new process resumes from the checkpoint of round 3, its
 * final table into f->table, and plays round 4 (validation AUROC 0.75): one more round without
 * improvement, so --patience 2 ends the run. */
static void resume_round_4(fx_t *f)
{
    f->cfg.resume = 1;
    f->cfg.print_table = 1;
    f->io.table = f->table = tmpfile();
    assert_non_null(f->table);
    moeh_err_t err = {0};
    int rc = moeh_coord_core_create(&f->cfg, &f->io, &f->core, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    moeh_coord_core_start(f->core, 3, f->now);
    join_all(f);
    play_round(f, 4, 0.75, 0.5, 0.6, NULL);
    finish(f);
}

/* --patience 2: validation AUROC 0.7, 0.9, 0.8, 0.75: rounds 3 and 4 do not improve, so the
 * run ends after round 4 of 6, normally, with round 2 selected. */
static void test_patience_stops_early(void **state)
{
    fx_t *f = *state;
    float *w2 = patience_rounds_1_to_3(f);
    play_round(f, 4, 0.75, 0.5, 0.6, NULL);
    finish(f); /* DONE after round 4 */
    assert_int_equal(moeh_coord_core_round(f->core), 4);
    assert_model_file(f, w2);
    int n_cal, n_ev;
    cJSON *sel = read_selection(f, &n_cal, &n_ev);
    assert_int_equal(jnum(sel, "selected_round"), 2);
    assert_int_equal(n_ev, 4);
    cJSON_Delete(sel);
    free(w2);
}

/* Resume: the same run as test_patience_stops_early interrupted after round 3 (the core
 * destroyed, a new one created with --resume on the same directory): the restored selection
 * (round 2, its parameters, one round without improvement) makes round 4 end the run with
 * round 2's model, exactly as without the interruption. */
static void test_resume_keeps_selection(void **state)
{
    fx_t *f = *state;
    float *w2 = interrupted_after_round_3(f);
    resume_round_4(f);
    assert_model_file(f, w2);
    int n_cal, n_ev;
    cJSON *sel = read_selection(f, &n_cal, &n_ev);
    assert_int_equal(jnum(sel, "selected_round"), 2);
    assert_float_equal(jnum(sel, "value"), 0.9, 1e-6);
    assert_float_equal(jnum(sel, "test_auroc_mean"), 0.6, 1e-6);
    /* round 2's calibration, restored from the checkpoint: test (AUROC 0.6) Brier 0.1945, ECE
     * 0.37; validation (0.9) Brier 0.0955, ECE 0.28 */
    assert_final_calib(f, 0.1945, 0.37, 0.0955, 0.28);
    cJSON_Delete(sel);
    free(w2);
}

/* The same from a checkpoint written before the validation calibration was kept (its
 * select_state 2 x tasks floats shorter): the selection is restored all the same, and the final
 * table says the validation calibration is unknown ("-") rather than showing another round's. */
static void test_resume_older_checkpoint(void **state)
{
    fx_t *f = *state;
    float *w2 = interrupted_after_round_3(f);
    char path[400];
    snprintf(path, sizeof path, "%s/checkpoint.moeh", f->dir);
    moeh_ckpt_t k;
    moeh_err_t err = {0};
    assert_int_equal(moeh_ckpt_load(path, &k, &err), 0);
    size_t i = 0;
    while (i < k.n_arrays && strcmp(k.names[i], "select_state"))
        i++;
    assert_true(i < k.n_arrays);
    k.counts[i] -= 2 * MOEH_N_TASKS; /* the older layout: no validation calibration */
    assert_int_equal(moeh_ckpt_save(path, &k, &err), 0);
    moeh_ckpt_free(&k);
    resume_round_4(f);
    assert_model_file(f, w2);
    int n_cal, n_ev;
    cJSON *sel = read_selection(f, &n_cal, &n_ev);
    assert_int_equal(jnum(sel, "selected_round"), 2);
    cJSON_Delete(sel);
    double v[MOEH_N_TASKS];
    final_row(f, "brier (test)", v);
    for (int t = 0; t < MOEH_N_TASKS; t++)
        assert_float_equal(v[t], 0.1945, 1e-4);
    char line[512];
    int unknown = 0;
    rewind(f->table);
    while (fgets(line, sizeof line, f->table)) {
        const char *label = !strncmp(line, "brier (val) ", 12) ? "brier (val)"
                            : !strncmp(line, "ece (val) ", 10) ? "ece (val)"
                                                               : NULL;
        char a[8], b[8], c[8];
        if (label && sscanf(line + strlen(label), "%7s %7s %7s", a, b, c) == 3)
            unknown += !strcmp(a, "-") && !strcmp(b, "-") && !strcmp(c, "-");
    }
    assert_int_equal(unknown, 2);
    fclose(f->table);
    f->table = NULL;
    free(w2);
}

static void one_round(moeh_coord_cfg_t *c)
{
    c->validate = 1;
    c->rounds = 1;
}

/* The answer to VALIDATE must carry both splits (protocol 9): an EvalResult with the test
 * split's figures only is refused (-EBADMSG) and not counted; the site's full answer that
 * follows is taken. */
static void test_validate_needs_both_splits(void **state)
{
    fx_t *f = *state;
    uint64_t v = fx_start(f, one_round);
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_VALIDATE);
    send_eval(f, 2, 1, v + 1, ROWS); /* the answer to EVALUATE */
    assert_non_null(strstr(last_error(f, f->site[2].rid, -EBADMSG), "no validation figures"));
    assert_int_equal(moeh_coord_core_replied(f->core), 0);
    for (int k = 0; k < N_SITES; k++)
        send_scores(f, k, 1, v + 1, 0.9, 0.5, 0.6);
    assert_int_equal(moeh_coord_core_replied(f->core), 3);
    tick(f, 10);
    finish(f);
    for (uint32_t t = 0; t < MOEH_N_TASKS; t++)
        assert_float_equal(moeh_coord_core_auroc(f->core, t), 0.6, 1e-9);
}

/* ---- validation replies bounded by the declared validation rows (Hello n_val) ---------- */

/* Site k's answer to VALIDATE over test_rows and val_rows rows (send_validate's perfectly
 * separated scores): 1 if the core took it, 0 if it refused it with an Error. */
static int val_reply(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t test_rows,
                     uint32_t val_rows)
{
    size_t before = moeh_coord_core_replied(f->core);
    send_validate(f, k, round, version, test_rows, val_rows);
    return moeh_coord_core_replied(f->core) == before + 1;
}

/* One round up to its open VALIDATE phase; the model version validated. */
static uint64_t open_validate(fx_t *f)
{
    join_and_stats(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_VALIDATE);
    return v + 1;
}

/* Every site declares 40 test rows and 100, 150, 200 training rows. site-3's validation split
 * (300 rows) is larger than its test split and than its test plus training splits (240): its
 * 260-row validation figures are taken (the bound was once test + training rows, which refused
 * them). site-2 declares 30 validation rows and is refused 40 rows of them, with a message naming
 * the validation rows; the test bound stays n_eval: 260 test rows from site-3 are refused. A
 * refused answer adds nothing, not even its split within bounds: the sums hold the three taken
 * answers' 40 test rows each. */
static void test_validation_bounded_by_n_val(void **state)
{
    fx_t *f = *state;
    fx_create(f, one_round);
    f->site[1].n_val = 30;
    f->site[2].n_val = 300;
    uint64_t v = open_validate(f);
    assert_false(val_reply(f, 2, 1, v, 260, 40));
    assert_non_null(strstr(last_error(f, f->site[2].rid, -ERANGE),
                           "more than the 40 test rows declared (capped)"));
    assert_true(val_reply(f, 2, 1, v, 40, 260));
    assert_false(val_reply(f, 1, 1, v, 40, 40));
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ERANGE),
                           "more than the 30 validation rows declared (capped)"));
    assert_true(val_reply(f, 1, 1, v, 40, 30));
    assert_true(val_reply(f, 0, 1, v, 40, 40));
    tick(f, 10);
    finish(f);
    cJSON *lines = fx_metrics(f), *j;
    int gates = 0;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(jstr(j, "event"), "gate")) continue; /* the test rows per combination */
        gates++;
        const cJSON *ehr = cJSON_GetObjectItem(j, moeh_combo_names[0]);
        assert_non_null(ehr);
        assert_float_equal(jnum(ehr, "rows"), 3 * 40, 0);
    }
    cJSON_Delete(lines);
    assert_int_equal(gates, 1);
}

/* A hostile site declares 2^40 validation rows: without registry limits its cap is --count-cap
 * (10) x the median of the declared n_val (40, 40, 2^40: 40), so 400 rows. */
static void test_absurd_n_val_capped(void **state)
{
    fx_t *f = *state;
    fx_create(f, one_round);
    f->site[2].n_val = 1ull << 40;
    uint64_t v = open_validate(f);
    assert_false(val_reply(f, 2, 1, v, 40, 401));
    assert_non_null(strstr(last_error(f, f->site[2].rid, -ERANGE),
                           "more than the 400 validation rows declared (capped)"));
    assert_true(val_reply(f, 2, 1, v, 40, 400));
}

/* The registry's [limits] MAX_VAL (here 100 for site-3) caps n_val instead of the median. */
static void fake_val_limit(void *ctx, const char *site_id, uint64_t *max_val)
{
    (void)ctx;
    *max_val = !strcmp(site_id, "site-3") ? 100 : 0;
}

static void test_registered_val_limit(void **state)
{
    fx_t *f = *state;
    fx_create(f, one_round);
    f->io.site_val_limit = fake_val_limit;
    f->site[2].n_val = 300;
    uint64_t v = open_validate(f);
    assert_false(val_reply(f, 2, 1, v, 40, 101));
    assert_non_null(strstr(last_error(f, f->site[2].rid, -ERANGE),
                           "more than the 100 validation rows declared (capped)"));
    assert_true(val_reply(f, 2, 1, v, 40, 100));
}

/* Site k's last RoundStart is round r's `task`, and carries the model (held 0: two frames) or
 * says the site holds it (held 1: no frames). */
static void assert_model_sent(const fx_t *f, int k, uint32_t r, Moeh__RoundTask task, int held)
{
    const Moeh__RoundStart *rs = round_start(f, k, r, task);
    assert_int_equal(rs->model_held, held);
    assert_int_equal(last_frames_to(f, f->site[k].rid, MOEH__MSG_TYPE__ROUND_START), held ? 0 : 2);
}

/* Protocol 8: the model goes out once a round. VALIDATE carries the new model; the next TRAIN
 * (the same version), to a site that was sent it and has not trained since, says model_held and
 * carries no frames. A site that answers Error{-ESTALE} (it does not hold it) or says Hello
 * again (a new connection, maybe a new process) is sent it in full. */
static void test_model_sent_once_a_round(void **state)
{
    fx_t *f = *state;
    fx_start(f, four_rounds);
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < N_SITES; k++) {
        assert_model_sent(f, k, 1, MOEH__ROUND_TASK__TRAIN, 0);
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    }
    tick(f, 10);
    for (int k = 0; k < N_SITES; k++)
        assert_model_sent(f, k, 1, MOEH__ROUND_TASK__VALIDATE, 0);
    /* site 1 says it does not hold the model */
    Moeh__Envelope env;
    Moeh__Error er;
    char buf[MOEH_MAX_STRING + 1];
    moeh_wire_error_env(&env, &er, buf, -ESTALE, "model version not held: send it in full");
    assert_int_equal(deliver(f, 1, &env, NULL, 0), 0);
    for (int k = 0; k < N_SITES; k++)
        send_scores(f, k, 1, v + 1, 0.6, 0.5, 0.6);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_model_version(f->core), v + 1);
    assert_model_sent(f, 0, 2, MOEH__ROUND_TASK__TRAIN, 1);
    assert_model_sent(f, 1, 2, MOEH__ROUND_TASK__TRAIN, 0);
    assert_model_sent(f, 2, 2, MOEH__ROUND_TASK__TRAIN, 1);
    hello(f, 2); /* a new connection: the phase's RoundStart again, with the model */
    assert_model_sent(f, 2, 2, MOEH__ROUND_TASK__TRAIN, 0);
    /* having trained, every site is sent the next model in full */
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(send_update(f, k, 2, v + 1, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    for (int k = 0; k < N_SITES; k++)
        assert_model_sent(f, k, 2, MOEH__ROUND_TASK__VALIDATE, 0);
}

MOEH_TEST_MAIN(
    NULL, NULL, cmocka_unit_test_setup_teardown(test_best_round_kept, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_select_by_loss, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_resume_older_checkpoint, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_patience_stops_early, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_resume_keeps_selection, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_validate_needs_both_splits, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_validation_bounded_by_n_val, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_absurd_n_val_capped, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_registered_val_limit, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_model_sent_once_a_round, fx_setup, fx_teardown))
