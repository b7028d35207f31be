/* test_coordinator.c - the coordinator's state machine (coordinator/moeh_coord_core.h) driven
 * in-process: fake sites build real envelopes, which are packed with the wire encoder and
 * decoded with moeh_wire_decode() against the core's limits before the core sees them; a fake
 * clock drives deadlines, retries, grant expiry; every reply the core sends is captured (packed
 * and unpacked again, so that it is a real message); the fixture is in coord_util.h. Covers
 * admission, STATS / TRAIN / EVAL, quorum, deadline and retry, rejoin mid-phase, metrics.jsonl
 * staying valid JSON whatever a site's Bye says (and NaN written as null), and the DP ledger
 * on resume. The model after a round is checked against the hand-computed weighted mean of
 * the deltas the fake sites sent. Upload grants and secure aggregation: test_coordinator_secagg.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "coord_util.h"
#include "moeh_coordinator_testing.h"

#include <dirent.h>
#include <unistd.h>

/* ---- admission ------------------------------------------------------------------------- */

static void test_admission(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    Moeh__Hello h;
    Moeh__Envelope env;
    /* a message before hello is refused */
    heartbeat(f, 0);
    assert_string_equal(last_error(f, f->site[0].rid, -EPERM), "not admitted: send hello first");
    /* a peer whose key is not in the registry */
    env = hello_env(&h, f, 0);
    h.site_id = "intruder";
    assert_int_equal(deliver_from(f, "conn-x", "intruder", &env, NULL, 0), 0);
    last_error(f, "conn-x", -EACCES);
    /* a registered key claiming another site's id */
    env = hello_env(&h, f, 1);
    assert_int_equal(deliver_from(f, "conn-y", "site-1", &env, NULL, 0), 0);
    assert_non_null(strstr(last_error(f, "conn-y", -EACCES), "does not match"));
    /* a dataset of another shape */
    env = hello_env(&h, f, 2);
    h.n_vars = 5;
    assert_int_equal(deliver(f, 2, &env, NULL, 0), 0);
    last_error(f, f->site[2].rid, -EINVAL);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__WELCOME), 0);
    for (int k = 0; k < N_SITES; k++)
        assert_false(moeh_coord_core_admitted(f->core, f->site[k].id));
    /* the three registered sites join; the first phase waits for all of them */
    hello(f, 0);
    hello(f, 1);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_WAIT);
    hello(f, 2);
    const Moeh__Envelope *w = last_to(f, f->site[2].rid, MOEH__MSG_TYPE__WELCOME);
    assert_string_equal(w->welcome->site_id, "site-3");
    assert_int_equal(w->welcome->model->n_params, moeh_coord_core_params(f->core)->n);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(moeh_coord_core_participants(f->core), 3);
    /* a key revoked since: its site is told and dropped */
    f->n_registry = 2;
    moeh_coord_core_registry_changed(f->core, f->now);
    last_error(f, f->site[2].rid, -EACCES);
    assert_false(moeh_coord_core_admitted(f->core, "site-3"));
    assert_true(moeh_coord_core_admitted(f->core, "site-1"));
}

/* ---- one whole plain round ---------------------------------------------------------------- */

static void test_plain_round(void **state)
{
    fx_t *f = *state;
    fx_start(f, NULL);
    /* the normalisation is the one of the summed statistics */
    size_t n_norm;
    const float *norm = moeh_coord_core_norm(f->core, &n_norm);
    for (size_t i = 0; i < n_norm; i++) {
        double s0 = 0, s1 = 0, s2 = 0, st[3 * 16];
        assert_true(n_norm <= 16);
        for (int k = 0; k < N_SITES; k++) {
            site_stats(k, n_norm, st);
            s0 += st[3 * i], s1 += st[3 * i + 1], s2 += st[3 * i + 2];
        }
        double mean = s1 / s0, sd = sqrt(s2 / s0 - mean * mean);
        assert_float_equal(norm[i], mean, 1e-4);
        assert_float_equal(norm[n_norm + i], sd, 1e-4);
    }
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *w0 = fx_model_copy(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    /* late (another round) and duplicate updates are refused; neither changes the sum */
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "duplicate"));
    Moeh__Update u;
    Moeh__Envelope env = update_env(&u, 0, v);
    uint32_t *words = update_words(f, 1, round_start(f, 1, 1, MOEH__ROUND_TASK__TRAIN)->config,
                                   (uint32_t)f->site[1].n_train, 0);
    moeh_frame_t fr = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = p->n + p->n_groups};
    assert_int_equal(deliver(f, 1, &env, &fr, 1), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ESTALE), "stale"));
    /* a weight above the samples the site declared is refused */
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train + 1), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ERANGE), "exceeds"));
    free(words);
    assert_int_equal(moeh_coord_core_replied(f->core), 1);
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train), 0);
    tick(f, 10); /* site-3 has not replied and the deadline is far: still TRAIN */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_int_equal(moeh_coord_core_model_version(f->core), v + 1);
    assert_weighted_mean(f, w0, 7, 0);
    free(w0);
    /* EVAL: perfectly separated scores everywhere give an AUROC of 1 */
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, 1, MOEH__ROUND_TASK__EVALUATE);
        send_eval(f, k, 1, v + 1, 20);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_DONE);
    assert_int_equal(f->saved_round, 1);
    for (uint32_t t = 0; t < MOEH_N_TASKS; t++)
        assert_float_equal(moeh_coord_core_auroc(f->core, t), 1.0, 1e-12);
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_core_finish(f->core, &err), 0);
    /* calibration from the same sums: every negative at 0.25 and positive at 0.75 (the centres
     * of bins 2 and 7 of 10): Brier 0.0625, reliability bins 2 (observed 0) and 7 (1) */
    cJSON *lines = fx_metrics(f), *j;
    int n_calib = 0;
    const double ll = -log(0.75); /* the log loss of every row at its bin's centre */
    cJSON_ArrayForEach(j, lines)
    {
        const char *ev = jstr(j, "event");
        if (!strcmp(ev, "eval")) {
            assert_float_equal(jnum(j, "brier_los7"), 0.0625, 1e-9);
            assert_float_equal(jnum(j, "test_loss_mortality"), ll, 1e-6);
            assert_float_equal(jnum(j, "test_loss_readmit30"), ll, 1e-6);
            char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "test_contributors"));
            assert_non_null(ids);
            assert_string_equal(ids, "[\"site-1\",\"site-2\",\"site-3\"]");
            free(ids);
        }
        if (!strcmp(ev, "calibration")) {
            n_calib++;
            assert_float_equal(jnum(j, "loss"), ll, 1e-6);
            assert_float_equal(jnum(j, "brier"), 0.0625, 1e-9);
            assert_float_equal(jnum(j, "n"), 60, 0);
            const cJSON *bins = cJSON_GetObjectItem(j, "bins");
            assert_int_equal(cJSON_GetArraySize(bins), MOEH_CALIB_BINS);
            assert_float_equal(jnum(cJSON_GetArrayItem(bins, 2), "observed"), 0, 0);
            assert_float_equal(jnum(cJSON_GetArrayItem(bins, 7), "observed"), 1, 0);
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetArrayItem(bins, 0), "observed")));
        }
    }
    cJSON_Delete(lines);
    assert_int_equal(n_calib, MOEH_N_TASKS);
}

/* Counts the log lines that mention --no-secagg (a moeh_log_fn). */
static void count_no_secagg(void *ud, moeh_log_level_t lvl, const char *msg)
{
    (void)lvl;
    if (strstr(msg, "--no-secagg")) ++*(int *)ud;
}

/* Without secure aggregation the coordinator warns once per round that it sees the updates in
 * clear (it said it twice: two warnings of the same thing at the start of each TRAIN phase). */
static void test_no_secagg_warned_once_per_round(void **state)
{
    fx_t *f = *state;
    int n = 0;
    moeh_log_level_t lvl = moeh_log_level();
    moeh_log_configure(MOEH_LOG_WARN, NULL, count_no_secagg, &n);
    fx_start(f, NULL); /* stats, then round 1's TRAIN phase opens */
    moeh_log_configure(lvl, NULL, NULL, NULL);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(n, 1);
}

/* Counts the log lines that say a DP run is not expected to learn (a moeh_log_fn). */
static void count_dp_swamped(void *ud, moeh_log_level_t lvl, const char *msg)
{
    if (lvl == MOEH_LOG_WARN && strstr(msg, "not expected to learn")) ++*(int *)ud;
}

static void dp_noise_1(moeh_coord_cfg_t *c)
{
    c->dp_clip = 2.5f, c->dp_noise = 1.0f;
}

static void dp_noise_001(moeh_coord_cfg_t *c)
{
    c->dp_clip = 2.5f, c->dp_noise = 0.01f;
}

/* --dp-clip 2.5 --dp-noise 1 with a few sites puts noise of std Z C / m (1.25 here) on every
 * parameter each round (the test loss diverged to 1e7-1e8, as docs/security.md measured): the
 * coordinator says so once, when it builds the model; at --dp-noise 0.01 it does not. */
static void test_dp_swamping_noise_warned(void **state)
{
    fx_t *f = *state;
    int n = 0;
    moeh_log_level_t lvl = moeh_log_level();
    moeh_log_configure(MOEH_LOG_WARN, NULL, count_dp_swamped, &n);
    fx_start(f, dp_noise_1);
    moeh_log_configure(lvl, NULL, NULL, NULL);
    assert_int_equal(n, 1);
    fx_teardown(state);
    fx_setup(state);
    f = *state;
    n = 0;
    moeh_log_configure(MOEH_LOG_WARN, NULL, count_dp_swamped, &n);
    fx_start(f, dp_noise_001);
    moeh_log_configure(lvl, NULL, NULL, NULL);
    assert_int_equal(n, 0);
}

/* ---- quorum, deadline, retry ------------------------------------------------------------- */

/* The "retry" lines of metrics.jsonl, as "phase:outcome:attempt" joined by spaces. */
static void retry_lines(const fx_t *f, char *out, size_t cap)
{
    cJSON *lines = fx_metrics(f), *j;
    size_t n = 0;
    out[0] = '\0';
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(jstr(j, "event"), "retry")) continue;
        n += (size_t)snprintf(out + n, cap - n, "%s%s:%s:%g", n ? " " : "", jstr(j, "phase"),
                              jstr(j, "outcome"), jnum(j, "attempt"));
        assert_true(n < cap);
        assert_non_null(jstr(j, "why"));
        assert_float_equal(jnum(j, "max_retries"), 1, 0);
    }
    cJSON_Delete(lines);
}

static void test_deadline_retry_and_failure(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_all(f);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 3);
    send_stats(f, 0);
    tick(f, 500); /* before the deadline: waiting */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 3);
    tick(f, 600); /* past it with 1 of the 2 replies needed: the phase is retried */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 6);
    assert_int_equal(moeh_coord_core_replied(f->core), 0);
    send_stats(f, 1);
    f->now += 1100; /* again without quorum, and out of retries: the run fails */
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_core_tick(f->core, f->now, &err), -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "1 of the 2 sites needed replied, after 2 attempts"));
    /* both failed attempts are in the metrics: the retry, then the failure */
    char got[256];
    retry_lines(f, got, sizeof got);
    assert_string_equal(got, "statistics:retry:1 statistics:failed:2");
    cJSON *lines = fx_metrics(f), *j;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(jstr(j, "event"), "retry")) continue;
        assert_float_equal(jnum(j, "round"), 0, 0);
        assert_string_equal(jstr(j, "why"), "1 of the 2 sites needed replied");
        assert_float_equal(jnum(j, "connected"), 3, 0);
        assert_float_equal(jnum(j, "needed"), 2, 0);
    }
    cJSON_Delete(lines);
}

static void test_deadline_closes_with_quorum(void **state)
{
    fx_t *f = *state;
    fx_start(f, NULL);
    float *w0 = fx_model_copy(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    const Moeh__RoundStart *rs1 = round_start(f, 1, 1, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 999);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    tick(f, 2); /* the deadline passed with 2 of 3: quorum, the phase closes without site-2 */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_weighted_mean(f, w0, 1u | 4u, 0);
    free(w0);
    /* site-2's update arrives late, in the EVAL phase: refused */
    assert_int_equal(send_update_for(f, 1, rs1, 1, v, (uint32_t)f->site[1].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ESTALE), "outside its phase"));
}

/* ---- outages: fewer than min_sites connected ----------------------------------------------- */

static void outage_cfg(moeh_coord_cfg_t *c)
{
    c->heartbeat_timeout_ms = 300;
    c->outage_budget_ms = 5000;
}

/* Every site falls silent mid-phase: the attempt fails while none is connected, which is an
 * outage: no retry is counted however many deadlines pass (max_retries is 1), the phase starts
 * again once two sites are back, and the run goes on; an outage longer than the budget ends the
 * run with a message naming the option. */
static void test_outage_waits_without_retries(void **state)
{
    fx_t *f = *state;
    fx_create(f, outage_cfg);
    join_all(f);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    send_stats(f, 0);
    for (int i = 0; i < 8; i++) /* 3.2 s: sites gone after 0.3 s, three deadlines of 1 s */
        tick(f, 400);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    size_t starts = count_sent(f, MOEH__MSG_TYPE__ROUND_START);
    for (int k = 0; k < 2; k++) { /* two sites reconnect */
        snprintf(f->site[k].rid, sizeof f->site[k].rid, "conn-%d-b", k + 1);
        hello(f, k);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_true(count_sent(f, MOEH__MSG_TYPE__ROUND_START) >= starts + 2);
    assert_int_equal(moeh_coord_core_replied(f->core), 0); /* a fresh attempt */
    send_stats(f, 0);
    send_stats(f, 1);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    /* each failed attempt of the outage is a "wait" line, no retry counted */
    char got[256];
    retry_lines(f, got, sizeof got);
    assert_non_null(strstr(got, "statistics:wait:0"));
    assert_null(strstr(got, ":retry:"));
    assert_null(strstr(got, ":failed:"));
    /* an outage past the budget: the run fails, naming the option */
    for (int i = 0; i < 5; i++) /* the sites fall silent again; the attempt fails */
        tick(f, 400);
    moeh_err_t err = {0};
    f->now += 5100;
    assert_int_equal(moeh_coord_core_tick(f->core, f->now, &err), -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "longer than --outage-budget"));
}

/* ---- the output directory belongs to one run --------------------------------------------- */

static void put(const char *dir, const char *name, const char *text)
{
    assert_int_equal(moeh_test_put(dir, name, text), 0);
}

static int has(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A new run refuses a directory with an earlier run's checkpoint or metrics, naming both ways
 * out; --new-run moves that run's files aside (kept, with their contents) and only those; an
 * empty metrics.jsonl (a run that never finished a line) is no earlier run; --resume and
 * --new-run together are refused. */
static void test_run_dir_never_overwritten(void **state)
{
    (void)state;
    char dir[300];
    moeh_err_t err = {0};
    assert_int_equal(moeh_test_tmpdir(dir, sizeof dir, "rundir"), 0);
    put(dir, "metrics.jsonl", "");
    assert_int_equal(moeh_coord_rundir_prepare(dir, 0, 0, &err), 0);
    put(dir, "metrics.jsonl", "{\"event\":\"stats\"}\n");
    put(dir, "checkpoint.moeh", "ckpt");
    put(dir, "config.json", "{}");
    put(dir, "site-1.key", "not a run file");
    assert_int_equal(moeh_coord_rundir_prepare(dir, 0, 0, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "checkpoint.moeh, metrics.jsonl"));
    assert_non_null(strstr(err.msg, "--resume"));
    assert_non_null(strstr(err.msg, "--new-run"));
    assert_true(has(dir, "checkpoint.moeh") && has(dir, "metrics.jsonl"));
    assert_int_equal(moeh_coord_rundir_prepare(dir, 1, 0, &err), 0); /* resume: untouched */
    assert_true(has(dir, "checkpoint.moeh"));
    assert_int_equal(moeh_coord_rundir_prepare(dir, 1, 1, &err), -EINVAL);
    assert_int_equal(moeh_coord_rundir_prepare(dir, 0, 1, &err), 0);
    assert_false(has(dir, "checkpoint.moeh") || has(dir, "metrics.jsonl") ||
                 has(dir, "config.json"));
    assert_true(has(dir, "site-1.key"));
    DIR *d = opendir(dir);
    assert_non_null(d);
    char moved[300] = "";
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "previous-run-", 13))
            snprintf(moved, sizeof moved, "%s", e->d_name);
    closedir(d);
    assert_true(moved[0]);
    char sub[700], path[800], line[64] = "";
    snprintf(sub, sizeof sub, "%s/%s", dir, moved);
    assert_true(has(sub, "checkpoint.moeh") && has(sub, "config.json"));
    snprintf(path, sizeof path, "%s/metrics.jsonl", sub);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    assert_non_null(fgets(line, sizeof line, fp));
    fclose(fp);
    assert_string_equal(line, "{\"event\":\"stats\"}\n");
    /* a second --new-run in the same second gets a directory of its own */
    put(dir, "model.npy", "m");
    assert_int_equal(moeh_coord_rundir_prepare(dir, 0, 1, &err), 0);
    assert_false(has(dir, "model.npy"));
}

/* --resume: the rows the interrupted run wrote after its checkpoint (a later round's train row,
 * a line torn by the kill) are dropped, so every round's rows appear once; nothing else moves. */
static void test_resume_drops_rows_after_checkpoint(void **state)
{
    (void)state;
    char dir[300], path[400], *text = NULL;
    size_t dropped = 0, len = 0;
    moeh_err_t err = {0};
    assert_int_equal(moeh_test_tmpdir(dir, sizeof dir, "resume-rows"), 0);
    assert_int_equal(moeh_coord_report_resume_at(dir, 1, &dropped, &err), 0); /* no file yet */
    const char *kept = "{\"event\":\"stats\",\"sites\":3}\n"
                       "{\"event\":\"train\",\"round\":1}\n"
                       "{\"event\":\"eval\",\"round\":1}\n"
                       "{\"event\":\"train\",\"round\":2}\n"
                       "{\"event\":\"eval\",\"round\":2}\n";
    char all[512];
    snprintf(all, sizeof all, "%s%s", kept,
             "{\"event\":\"train\",\"round\":3}\n{\"event\":\"site_gone\",\"rou");
    put(dir, "metrics.jsonl", all);
    assert_int_equal(moeh_coord_report_resume_at(dir, 2, &dropped, &err), 0);
    assert_int_equal(dropped, 2);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    assert_int_equal(moeh_file_read_all(path, 4096, &text, &len, &err), 0);
    assert_string_equal(text, kept);
    free(text);
    assert_int_equal(moeh_coord_report_resume_at(dir, 2, &dropped, &err), 0); /* idempotent */
    assert_int_equal(dropped, 0);
}

/* ---- rejoin mid-phase -------------------------------------------------------------------- */

static void test_rejoin_mid_phase(void **state)
{
    fx_t *f = *state;
    uint64_t v = fx_start(f, NULL);
    size_t starts = count_sent(f, MOEH__MSG_TYPE__ROUND_START);
    /* site-3 reconnects declaring more samples: welcomed again and given the open phase */
    char old_rid[32];
    snprintf(old_rid, sizeof old_rid, "%s", f->site[2].rid);
    snprintf(f->site[2].rid, sizeof f->site[2].rid, "conn-3-b");
    uint64_t declared = f->site[2].n_train;
    f->site[2].n_train = declared * 10;
    hello(f, 2);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), starts + 1);
    round_start(f, 2, 1, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(moeh_coord_core_participants(f->core), 3);
    /* the old connection is no longer admitted */
    Moeh__Envelope env;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    moeh_env_heartbeat(&env, &hb);
    assert_int_equal(deliver_from(f, old_rid, "site-3", &env, NULL, 0), 0);
    last_error(f, old_rid, -EPERM);
    /* its weight is still bounded by the samples declared when the phase opened */
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[2].rid, -ERANGE), "exceeds"));
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)declared), 0);
    assert_int_equal(moeh_coord_core_replied(f->core), 1);
}

/* ---- metrics stay valid JSON -------------------------------------------------------------- */

static void test_bye_reason_stays_one_json_line(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    hello(f, 0);
    const char *reason = "disk \"full\"\nsee {log}\\ now";
    Moeh__Envelope env;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = (char *)reason;
    bye.status = MOEH__BYE_STATUS__BYE_STATUS_LEFT;
    moeh_env_bye(&env, &bye);
    assert_int_equal(deliver(f, 0, &env, NULL, 0), 0);
    assert_false(moeh_coord_core_admitted(f->core, "site-1"));
    cJSON *lines = fx_metrics(f), *j = cJSON_GetArrayItem(lines, 0);
    assert_int_equal(cJSON_GetArraySize(lines), 1);
    assert_string_equal(jstr(j, "event"), "site_gone");
    assert_string_equal(jstr(j, "site"), "site-1");
    assert_string_equal(jstr(j, "why"), reason);
    cJSON_Delete(lines);
}

/* metrics.jsonl: a number JSON cannot hold is null, and every line parses. */
static void test_report_nan_is_null(void **state)
{
    fx_t *f = *state;
    memset(f, 0, sizeof *f);
    assert_int_equal(moeh_test_tmpdir(f->dir, sizeof f->dir, "report"), 0);
    moeh_coord_report_t *r = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_report_open(f->dir, 0, 3, NULL, &r, &err), 0);
    moeh_coord_report_site_update(r, 2, "site-\"1\"", NAN, 10, 3);
    const double auroc[3] = {0.5, INFINITY, 0.75};
    moeh_coord_report_site_eval(r, 2, "site-1", 0.125, auroc);
    moeh_coord_report_destroy(&r);
    assert_null(r);
    cJSON *lines = fx_metrics(f); /* every line parses */
    assert_int_equal(cJSON_GetArraySize(lines), 2);
    const cJSON *j = cJSON_GetArrayItem(lines, 0);
    assert_string_equal(jstr(j, "site"), "site-\"1\"");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "train_loss")));
    assert_int_equal(jnum(j, "n_samples"), 10);
    j = cJSON_GetArrayItem(lines, 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "auroc_los7")));
    assert_float_equal(jnum(j, "auroc_readmit30"), 0.75, 0);
    cJSON_Delete(lines);
}

/* ---- the DP ledger ------------------------------------------------------------------------ */

static void test_dp_ledger_resume(void **state)
{
    fx_t *f = *state;
    memset(f, 0, sizeof *f);
    assert_int_equal(moeh_test_tmpdir(f->dir, sizeof f->dir, "ledger"), 0);
    moeh_dp_ledger_t a, b;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dp_ledger_init(&a, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_start(&a, &err), 0); /* a new DP run writes an empty one */
    moeh_dp_ledger_release(&a, 0);
    moeh_dp_ledger_release(&a, 1);
    assert_int_equal(moeh_dp_ledger_write(&a, 5, &err), 0);
    double eps, eps_coord;
    moeh_dp_ledger_epsilons(&a, 5, &eps, &eps_coord);
    assert_true(eps > 0 && isfinite(eps));
    assert_true(eps_coord > eps); /* the coordinator saw 5 plain updates with less noise */
    /* resumed with the same settings: the releases so far come back */
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), 0);
    assert_int_equal(b.rounds, 2);
    assert_int_equal(b.rounds_secagg, 1);
    assert_int_equal(moeh_dp_ledger_coord_releases(&b, 0), 5);
    double eps_b, eps_coord_b;
    moeh_dp_ledger_epsilons(&b, 0, &eps_b, &eps_coord_b);
    assert_true(eps_b == eps && eps_coord_b == eps_coord);
    /* other noise, other calibration count, or no DP at all: refused */
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.9f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "resume with the same values"));
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 4, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_int_equal(moeh_dp_ledger_init(&b, 0.0f, 0.0f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "used differential privacy"));
    /* a new run without DP removes the old ledger; resuming it with DP is then refused */
    assert_int_equal(moeh_dp_ledger_start(&b, &err), 0);
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is missing"));
}

/* ---- participation replay (tests only: moeh_coordinator_testing.h) ----------------------- */

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* A recorded run's participation: site-2 was not in round 1's update sum, and the round's
 * weight bound was 1000. The replaying core invites only sites 1 and 3 to TRAIN (a Hello from
 * site 2 mid-phase does not let it in), closes the phase on their two updates, uses the
 * recorded bound for the fixed-point scale, and records the same participation. */
static void test_replay_participation(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/recorded.jsonl", f->dir);
    write_text(path, "{\"event\":\"stats\",\"sites\":3,\"features\":4,"
                     "\"contributors\":[\"site-1\",\"site-2\",\"site-3\"]}\n"
                     "{\"event\":\"site_gone\",\"round\":1,\"site\":\"site-2\",\"why\":\"x\"}\n"
                     "{\"event\":\"train\",\"round\":1,\"contributors\":[\"site-1\",\"site-3\"],"
                     "\"w_cap\":1000,\"model_hash\":\"00000000000000ff\"}\n");
    moeh_coord_replay_t *r = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_replay_load(path, &r, &err), 0);
    assert_int_equal(moeh_coord_replay_member(r, 0, MOEH_COORD_STATS, "site-2"), 1);
    assert_int_equal(moeh_coord_replay_member(r, 1, MOEH_COORD_TRAIN, "site-2"), 0);
    assert_int_equal(moeh_coord_replay_member(r, 1, MOEH_COORD_TRAIN, "site-3"), 1);
    assert_int_equal(moeh_coord_replay_member(r, 1, MOEH_COORD_VALIDATE, "site-2"), -1);
    assert_int_equal(moeh_coord_replay_member(r, 2, MOEH_COORD_TRAIN, "site-2"), -1);
    int have;
    assert_int_equal(moeh_coord_replay_model_hash(r, 1, &have), 0xff);
    assert_true(have);
    assert_float_equal(moeh_coord_replay_w_cap(r, 1), 1000, 0);
    moeh_coord_core_set_replay(f->core, r);
    join_and_stats(f); /* every site was in the recorded statistics */
    const Moeh__RoundStart *rs = round_start(f, 0, 1, MOEH__ROUND_TASK__TRAIN);
    assert_float_equal(rs->config->quant_scale, moeh_quant_scale(f->cfg.delta_clip, 1000.0), 0);
    round_start(f, 2, 1, MOEH__ROUND_TASK__TRAIN);
    hello(f, 1);
    round_start(f, 1, 0, MOEH__ROUND_TASK__STATS); /* still its last RoundStart */
    float *w0 = fx_model_copy(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 10); /* both invited sites replied: closed long before the deadline */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_weighted_mean(f, w0, 5, 0);
    free(w0);
    cJSON *lines = fx_metrics(f), *j;
    int n_train = 0;
    cJSON_ArrayForEach(j, lines)
    {
        if (strcmp(jstr(j, "event"), "train")) continue;
        n_train++;
        char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "contributors"));
        assert_string_equal(ids, "[\"site-1\",\"site-3\"]");
        free(ids);
        assert_float_equal(jnum(j, "w_cap"), 1000, 0);
        const char *h = jstr(j, "model_hash");
        assert_non_null(h);
        assert_int_equal(strspn(h, "0123456789abcdef"), 16);
        assert_int_equal(strlen(h), 16);
    }
    cJSON_Delete(lines);
    assert_int_equal(n_train, 1);
    moeh_coord_core_destroy(&f->core);
    moeh_coord_replay_destroy(&r);
    assert_null(r);
}

/* A recorded file that cannot be replayed is refused with file:line and the field. */
static void test_replay_bad_files(void **state)
{
    (void)state;
    char dir[256], path[300];
    assert_int_equal(moeh_test_tmpdir(dir, sizeof dir, "replay"), 0);
    snprintf(path, sizeof path, "%s/m.jsonl", dir);
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"{\"event\":\"stats\",\"contributors\":[\"a\"]}\nnot json\n", "m.jsonl:2: bad the line"},
        {"{\"event\":\"stats\",\"contributors\":\"a\"}\n", "m.jsonl:1: bad contributors"},
        {"{\"event\":\"stats\",\"contributors\":[1]}\n", "m.jsonl:1: bad contributors"},
        {"{\"event\":\"stats\",\"contributors\":[\"a\"]}\n"
         "{\"event\":\"train\",\"round\":-3,\"contributors\":[\"a\"]}\n",
         "m.jsonl:2: bad \"round\""},
        {"{\"event\":\"eval\",\"round\":1,\"val_contributors\":[\"a\"]}\n",
         "no participation recorded"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(path, cases[i].text);
        moeh_coord_replay_t *r = NULL;
        moeh_err_t err = {0};
        assert_true(moeh_coord_replay_load(path, &r, &err) < 0);
        assert_null(r);
        if (!strstr(err.msg, cases[i].want))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err.msg, cases[i].want);
    }
    moeh_test_rmtree(dir);
}

MOEH_TEST_MAIN(
    NULL, NULL, cmocka_unit_test_setup_teardown(test_admission, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_plain_round, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_no_secagg_warned_once_per_round, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_dp_swamping_noise_warned, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_deadline_retry_and_failure, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_deadline_closes_with_quorum, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_outage_waits_without_retries, fx_setup, fx_teardown),
    cmocka_unit_test(test_run_dir_never_overwritten),
    cmocka_unit_test(test_resume_drops_rows_after_checkpoint),
    cmocka_unit_test_setup_teardown(test_rejoin_mid_phase, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_bye_reason_stays_one_json_line, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_dp_ledger_resume, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_report_nan_is_null, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_replay_participation, fx_setup, fx_teardown),
    cmocka_unit_test(test_replay_bad_files))
