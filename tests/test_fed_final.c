/* test_fed_final.c - the sites get the result (issue 11 item 4), with the real binaries
 * (multi-process, as test_federation.c):
 *  - after a plain run and after a --secagg run, every agent's --out/model.safetensors is the
 *    coordinator's OUT/model.safetensors byte for byte (and loads as a model file), every agent
 *    exited 0, and its --out/local_metrics.jsonl has one line per round saying what left the
 *    site (unmasked in clear, masked under secure aggregation);
 *  - a site killed on receiving the final model exits by SIGKILL without a model file; the
 *    coordinator waits for it (--final-wait), a restarted agent of that site rejoins, gets the
 *    model and exits 0, and the coordinator ends at once (not at the end of its wait);
 *  - with a short --final-wait, a site that never comes back is named in the coordinator's log
 *    and the run still finishes (exit 0);
 *  - an agent told Bye FINISHED without having received the final model exits with an error
 *    (here from a scripted coordinator that says only that);
 *  - a site that never reads what it is sent (a scripted site-x that only heartbeats) delays
 *    nobody: the honest sites hold the model and exit 0 while the coordinator still waits for
 *    site-x, which it then names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

#include "moeh_modelfile.h"

#include <sys/stat.h>

/* f->dir/site-out/SITE (the --out of fed_util's agents) / name */
static void site_path(const fixture_t *f, const char *site, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/site-out/%s/%s", f->dir, site, name);
}

static char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    moeh_err_t err = {0};
    int rc = moeh_file_read_all(path, 1u << 28, &buf, len, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return buf;
}

/* The site's model file is the coordinator's, byte for byte, and a valid model file. */
static void assert_site_model(const fixture_t *f, const char *site)
{
    char path[400];
    size_t lc, ls;
    snprintf(path, sizeof path, "%s/model.safetensors", f->out);
    char *coord = slurp(path, &lc);
    site_path(f, site, "model.safetensors", path, sizeof path);
    char *mine = slurp(path, &ls);
    assert_true(lc > 1000);
    assert_int_equal(ls, lc);
    assert_memory_equal(mine, coord, lc);
    free(coord);
    free(mine);
    moeh_modelfile_t *mf = NULL;
    moeh_err_t err = {0};
    int rc = moeh_modelfile_read(path, 1, &mf, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_string_equal(mf->source, "federated");
    moeh_modelfile_destroy(&mf);
    site_path(f, site, "model.safetensors.incoming", path, sizeof path);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0); /* no temporary file left */
}

/* local_metrics.jsonl of the site: one line per round 1..rounds in order, each saying that the
 * update and both evaluations left the site `how` ("masked" or "unmasked"). */
static void assert_local_metrics(const fixture_t *f, const char *site, int rounds, const char *how)
{
    char path[400], line[4096];
    site_path(f, site, "local_metrics.jsonl", path, sizeof path);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        n++;
        assert_int_equal((int)jget(j, "round"), n);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "site")), site);
        /* the fixture's --warmup-rounds 1 */
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "phase")),
                            n == 1 ? "warmup" : "joint");
        assert_true(jget(j, "train_rows") > 0);
        assert_true(jget(j, "train_loss") > 0);
        assert_true(jget(j, "train_seconds") >= 0);
        /* the process's CPU over the round: at least its training's (measured around the
         * training alone), which is not nothing */
        assert_true(jget(j, "train_cpu_seconds") > 0);
        if (jget(j, "cpu_seconds") < jget(j, "train_cpu_seconds"))
            print_error("round %d: cpu_seconds %g < train_cpu_seconds %g\n", n,
                        jget(j, "cpu_seconds"), jget(j, "train_cpu_seconds"));
        assert_true(jget(j, "cpu_seconds") >= jget(j, "train_cpu_seconds"));
        assert_true(jget(j, "test_rows") > 0);
        assert_true(jget(j, "test_loss") > 0);
        assert_non_null(cJSON_GetObjectItem(j, "test_auroc"));
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "update")), how);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "test_histograms")), how);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "validation_histograms")),
                            how);
        cJSON_Delete(j);
    }
    fclose(fp);
    if (n != rounds) print_error("%s: %d lines, expected %d\n", path, n, rounds);
    assert_int_equal(n, rounds);
}

static void check_run(fixture_t *f, const char *how)
{
    char log[400];
    snprintf(log, sizeof log, "%s/coordinator.log", f->logs);
    assert_true(file_contains(log, "every site of the run holds the final model"));
    for (int k = 1; k <= N_SITES; k++) {
        char id[16], alog[400];
        snprintf(id, sizeof id, "site-%d", k);
        assert_site_model(f, id);
        assert_local_metrics(f, id, 2, how);
        snprintf(alog, sizeof alog, "%s/%s-as-%s.log", f->logs, id, id);
        assert_true(file_contains(alog, "they stay at this site"));
        assert_true(file_contains(alog, "the run's model (round "));
    }
}

static void test_plain_run_sites_hold_the_model(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES], *c = start_coordinator(f, "2", "3");
    start_all_agents(f, a, NULL);
    wait_run(c, a); /* every agent exits 0: each holds the model */
    check_run(f, "unmasked");
}

static void test_secagg_run_sites_hold_the_model(void **state)
{
    fixture_t *f = *state;
    char *more[] = {"--secagg", NULL};
    moeh_proc_t *a[N_SITES],
        *c = start_coordinator_ex2(f, "2", "3", "3", NULL, "coordinator.log", more);
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    check_run(f, "masked");
}

/* Site-3 dies on receiving the final model; the coordinator waits; site-3 comes back. */
static void test_site_back_after_the_end_gets_it(void **state)
{
    fixture_t *f = *state;
    char *more[] = {"--final-wait", "90s", NULL};
    char log[400], path[400];
    snprintf(log, sizeof log, "%s/coordinator.log", f->logs);
    moeh_proc_t *a[N_SITES],
        *c = start_coordinator_ex2(f, "2", "3", "3", NULL, "coordinator.log", more);
    char *kill_final[] = {"--fault-kill-final", NULL};
    a[0] = start_agent(f, "site-1", "site-1", "site-1", NULL);
    a[1] = start_agent(f, "site-2", "site-2", "site-2", NULL);
    a[2] = start_agent(f, "site-3", "site-3", "site-3", kill_final);
    wait_exit(a[2], 60000, 128 + SIGKILL); /* killed before it held the model */
    site_path(f, "site-3", "model.safetensors", path, sizeof path);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0);
    wait_exit(a[0], 20000, 0); /* the others hold it and leave */
    wait_exit(a[1], 20000, 0);
    assert_int_equal(moeh_proc_wait(c, 0), -ETIMEDOUT); /* the coordinator waits for site-3 */
    int64_t t0 = moeh_now_ms();
    a[2] = start_agent(f, "site-3", "site-3", "site-3", NULL);
    wait_exit(a[2], 30000, 0);
    wait_exit(c, 30000, 0);
    assert_true(moeh_now_ms() - t0 < 60000); /* it ended when site-3 acknowledged, not at 90 s */
    assert_site_model(f, "site-3");
    assert_local_metrics(f, "site-3", 2, "unmasked"); /* written before the kill */
    assert_true(file_contains(log, "site site-3 rejoined"));
    assert_true(file_contains(log, "every site of the run holds the final model"));
}

/* --final-wait 2s and site-3 never returns: the run ends, naming it. */
static void test_site_gone_for_good_is_named(void **state)
{
    fixture_t *f = *state;
    char *more[] = {"--final-wait", "2s", NULL};
    char log[400];
    snprintf(log, sizeof log, "%s/coordinator.log", f->logs);
    moeh_proc_t *c = start_coordinator_ex2(f, "1", "3", "3", NULL, "coordinator.log", more);
    moeh_proc_t *a[N_SITES];
    char *kill_final[] = {"--fault-kill-final", NULL};
    a[0] = start_agent(f, "site-1", "site-1", "site-1", NULL);
    a[1] = start_agent(f, "site-2", "site-2", "site-2", NULL);
    a[2] = start_agent(f, "site-3", "site-3", "site-3", kill_final);
    wait_exit(a[2], 60000, 128 + SIGKILL);
    wait_exit(c, 30000, 0); /* the run is finished; the model stays at the coordinator */
    wait_exit(a[0], 10000, 0);
    wait_exit(a[1], 10000, 0);
    assert_true(file_contains(log, "1 site(s) do not hold the final model after 2 s"));
    assert_true(file_contains(log, "site-3 (away)"));
}

/* A scripted coordinator answers the agent's Hello with Bye FINISHED and nothing else: the
 * agent must not exit 0 (it holds no model). */
static void test_bye_without_model_is_an_error(void **state)
{
    fixture_t *f = *state;
    void *ctx = zmq_ctx_new(), *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 1000;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
    char ds[400], out[400], alog[400];
    snprintf(ds, sizeof ds, "%s/site-1", f->data);
    snprintf(out, sizeof out, "%s/site-out/site-1", f->dir);
    snprintf(alog, sizeof alog, "%s/agent.log", f->logs);
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    assert_int_equal(moeh_localfed_start_agent(p, f->bin, f->endpoint, "site-1", ds, out, NULL,
                                               NULL, NULL, alog, &err),
                     0);
    moeh_wire_limits_t lim = {0};
    moeh_msg_t m;
    int64_t end = moeh_now_ms() + 20000;
    int rc;
    do { /* the Hello */
        assert_true(moeh_now_ms() < end);
        zmq_pollitem_t it = {.socket = router, .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        rc = moeh_wire_recv(router, 1, &lim, &m, &err);
        if (rc == -EAGAIN) moeh_msg_clear(&m);
    } while (rc == -EAGAIN);
    assert_int_equal(rc, 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__HELLO);
    Moeh__Envelope env;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = "run finished";
    bye.status = MOEH__BYE_STATUS__BYE_STATUS_FINISHED;
    moeh_env_bye(&env, &bye);
    assert_int_equal(moeh_wire_send(router, m.routing_id, m.routing_id_len, &env, NULL, 0), 0);
    moeh_msg_clear(&m);
    wait_exit(p, 20000, MOEH_EXIT_ERROR);
    assert_true(file_contains(alog, "did not get the final model"));
    zmq_close(router);
    zmq_ctx_term(ctx);
}

static void test_site_that_does_not_read_stalls_nobody(void **state)
{
    fixture_t *f = *state;
    rogue_t r;
    moeh_proc_t *a[N_SITES];
    char log[400];
    /* site-x answers no phase: each closes at its 3 s deadline with the three others */
    char *extra[] = {"--deadline-ms", "3000", "--final-wait", "10s", NULL};
    moeh_proc_t *c = rogue_join(f, &r, extra, a, log, sizeof log);
    int64_t t0 = moeh_now_ms(), others_done = 0;
    while (moeh_proc_wait(c, 0) == -ETIMEDOUT) { /* site-x: heartbeats, never a read */
        assert_true(moeh_now_ms() - t0 < 180000);
        int hb = moeh_wire_send_simple(r.sock, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 1);
        (void)hb; /* a heartbeat that cannot go out now only delays the next one */
        zmq_poll(NULL, 0, 200);
        int done = 1;
        for (int k = 0; k < N_SITES; k++)
            done &= moeh_proc_wait(a[k], 0) == 0;
        if (done && !others_done) others_done = moeh_now_ms();
    }
    assert_true(others_done > 0); /* every honest agent was gone while the coordinator waited */
    assert_int_equal(moeh_proc_exit_code(c), 0);
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        assert_int_equal(moeh_proc_exit_code(a[k]), 0);
        assert_site_model(f, id);
    }
    assert_true(file_contains(log, "site-x (connected, no acknowledgement)"));
    zmq_close(r.sock);
    zmq_ctx_term(r.ctx);
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_plain_run_sites_hold_the_model),
                    FED_TEST(test_secagg_run_sites_hold_the_model),
                    FED_TEST(test_site_back_after_the_end_gets_it),
                    FED_TEST(test_site_gone_for_good_is_named),
                    FED_TEST(test_bye_without_model_is_an_error),
                    FED_TEST(test_site_that_does_not_read_stalls_nobody))
