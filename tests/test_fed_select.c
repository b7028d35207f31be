/* test_fed_select.c - model selection with the real binaries (multi-process, as
 * test_federation.c): a 4-round run validates every round (an "eval" line with
 * val_auroc_mean per round, "calibration" lines of split val), writes one "selection" line
 * naming the round of best mean validation AUROC, and its model.npy is that round's model:
 * bit for bit the model.npy of a second run stopped after that many rounds without
 * validation (training does not depend on the validation phase). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

static float *read_model(const fixture_t *f, size_t *n)
{
    char path[400];
    snprintf(path, sizeof path, "%s/model.npy", f->out);
    moeh_npy_t a;
    moeh_err_t err = {0};
    int rc = moeh_npy_read(path, MOEH_DT_F32, 1, &a, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    *n = moeh_npy_numel(&a);
    return a.data; /* owned by the caller now */
}

static void test_selected_round_is_the_model(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES], *c = start_coordinator(f, "4", "3");
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    char line[16384];
    FILE *fp = metrics_open(f->out);
    int n_val = 0, n_val_calib = 0, n_sel = 0, selected = 0;
    double best = -1, best_round = 0, value = 0;
    const char *ev;
    cJSON *j;
    while ((j = metrics_next(fp, line, sizeof line, &ev))) {
        const char *split = cJSON_GetStringValue(cJSON_GetObjectItem(j, "split"));
        const cJSON *v = cJSON_GetObjectItem(j, "val_auroc_mean");
        if (!strcmp(ev, "eval") && cJSON_IsNumber(v)) {
            n_val++;
            assert_non_null(cJSON_GetObjectItem(j, "val_loss"));
            assert_non_null(cJSON_GetObjectItem(j, "val_auroc_mortality"));
            assert_non_null(cJSON_GetObjectItem(j, "val_brier_mortality"));
            if (v->valuedouble > best) { /* the first of equals, as the coordinator */
                best = v->valuedouble;
                best_round = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "round"));
            }
        }
        if (!strcmp(ev, "calibration") && split && !strcmp(split, "val")) n_val_calib++;
        if (!strcmp(ev, "selection")) {
            n_sel++;
            selected = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "selected_round"));
            value = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "value"));
            assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "selected_by")),
                                "val_auroc_mean");
        }
        cJSON_Delete(j);
    }
    fclose(fp);
    assert_int_equal(n_val, 4);
    assert_int_equal(n_val_calib, 4 * MOEH_N_TASKS);
    assert_int_equal(n_sel, 1);
    assert_int_equal(selected, (int)best_round);
    assert_float_equal(value, best, 1e-6);
    size_t n1, n2;
    float *w1 = read_model(f, &n1);
    /* the same training stopped at the selected round, without validation */
    char rounds[16];
    snprintf(rounds, sizeof rounds, "%d", selected);
    char *more[] = {"--no-validate", "--new-run", NULL};
    c = start_coordinator_ex2(f, rounds, "3", "3", NULL, "coordinator-2.log", more);
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    float *w2 = read_model(f, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1 * sizeof(float));
    print_message("selected round %d of 4 (validation mean AUROC %.4f)\n", selected, value);
    free(w1);
    free(w2);
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_selected_round_is_the_model))
