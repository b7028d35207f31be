/* test_fed_dp.c - multi-process tests of DP-FedAvg and of granted uploads (see
 * test_federation.c and fed_util.h for the setting):
 *  - DP runs (plain, with secure aggregation, resumed) release the accounted epsilon;
 *  - granted uploads (--upload-slots): four sites taking turns through one slot end with the
 *    model of the run where they all push at once; an upload without a grant is refused; a
 *    granted site that dies releases its slot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

/* ---- granted uploads (--upload-slots) ------------------------------------------------------ */

/* Counts the "uploads" rows of a run and the most uploads in flight any of them reports. */
static int upload_rows(const char *out, int *max_in_flight)
{
    char line[8192];
    int n = 0;
    *max_in_flight = 0;
    FILE *fp = metrics_open(out);
    const char *ev;
    cJSON *j;
    while ((j = metrics_next(fp, line, sizeof line, &ev))) {
        if (!strcmp(ev, "uploads")) {
            n++;
            int m = (int)jget(j, "max_in_flight");
            if (m > *max_in_flight) *max_in_flight = m;
            assert_int_equal((int)jget(j, "expired"), 0);
        }
        cJSON_Delete(j);
    }
    fclose(fp);
    return n;
}

/* Four sites and one upload slot: the sites take turns to upload (at most one update in
 * flight, as every round's "uploads" row says), and the run ends with the model and global
 * metrics of the same run where every site pushes its update at once (--upload-slots 0),
 * bit for bit, in plain mode and under --secagg: the sums are of integers mod 2^32, so the
 * order in which updates are folded changes nothing. */
static void test_upload_slots_bit_exact(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    char out[3][300], path[400];
    const char *four[] = {"site-1", "site-2", "site-3", "site-4"};
    moeh_keypair_t *kp = NULL;
    snprintf(path, sizeof path, "%s/site-4", f->keys);
    assert_int_equal(moeh_keypair_generate(&kp), 0);
    assert_int_equal(moeh_keypair_write(kp, path, &err), 0);
    moeh_keypair_destroy(&kp);
    write_registry(f, four, 4);
    static const char *names[3] = {"push", "slots1", "slots1-secagg"};
    char *more[3][4] = {{"--upload-slots", "0", NULL},
                        {"--upload-slots", "1", NULL},
                        {"--upload-slots", "1", "--secagg", NULL}};
    for (int run = 0; run < 3; run++) {
        char log[64];
        snprintf(out[run], sizeof out[run], "%s/%s", f->dir, names[run]);
        snprintf(f->out, sizeof f->out, "%.290s", out[run]);
        snprintf(log, sizeof log, "coordinator-%s.log", names[run]);
        moeh_proc_t *c = start_coordinator_ex2(f, "3", "4", "4", NULL, log, more[run]);
        moeh_proc_t *a[4];
        for (int k = 0; k < 4; k++) /* site-4 holds site-1's data */
            a[k] = start_agent(f, four[k], four[k % 3], four[k], NULL);
        wait_exit(c, 120000, 0);
        for (int k = 0; k < 4; k++)
            wait_exit(a[k], 10000, 0);
        assert_round_sites(f, "444", -1);
        assert_false(log_contains(f, log, "refused"));
    }
    int most;
    assert_int_equal(upload_rows(out[0], &most), 0); /* no grants without slots */
    for (int run = 1; run < 3; run++) {
        assert_int_equal(upload_rows(out[run], &most), 3);
        assert_int_equal(most, 1);
    }
    assert_summed(out[2], "train", 3, 4, 4);
    assert_same_model(out[0], out[1]);
    assert_same_model(out[0], out[2]);
    assert_same_global_metrics(out[0], out[1]);
    assert_same_global_metrics(out[0], out[2]);
}

/* A site (this test) with one upload slot: an update sent without a grant is refused, as are
 * announcements for another round, with a session in a plain phase, and twice; announced
 * right, it is granted the slot at once (the real sites are still training) and then dies
 * without uploading. Its slot is released when the coordinator finds it gone, the three real
 * sites upload in turn and every round completes with them. */
static void test_unsolicited_upload_refused(void **state)
{
    fixture_t *f = *state;
    char log[400];
    char *slots[] = {"--upload-slots", "1", NULL};
    rogue_t r = {0};
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = rogue_join(f, &r, slots, a, log, sizeof log);
    moeh_msg_t m;
    /* statistics: granted too (protocol 7), but a reply pushed whole is still taken (all zero:
     * this site has no rows) */
    assert_true(rogue_next_round(&r, &m, MOEH__ROUND_TASK__STATS)->grant_uploads);
    moeh_msg_clear(&m);
    size_t nw = r.lim.n_params + r.lim.n_groups;
    rogue_send_zero_stats(&r);

    /* round 1: RoundStart{TRAIN} asks for granted uploads */
    const Moeh__RoundStart *rs = rogue_next_round(&r, &m, MOEH__ROUND_TASK__TRAIN);
    assert_true(rs->grant_uploads);
    uint32_t round = rs->round;
    uint64_t version = rs->model_version;
    moeh_msg_clear(&m);
    uint32_t *words = calloc(nw, sizeof(uint32_t));
    Moeh__Envelope ue;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = round, u.model_version = version;
    moeh_env_update(&ue, &u);
    moeh_frame_t uf = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = nw};
    rogue_expect_reply(&r, &ue, &uf, 1, -ESTALE, "update: no upload slot was granted");
    Moeh__Envelope re;
    Moeh__UploadReady ur = MOEH__UPLOAD_READY__INIT;
    moeh_env_upload_ready(&re, &ur);
    ur.round = round + 1, ur.model_version = version;
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "stale upload_ready");
    ur.round = round, ur.session = 99;
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "not securely aggregated");
    ur.session = 0;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &re, NULL, 0), 0);
    rogue_expect(&r, &m, MOEH__MSG_TYPE__UPLOAD_GRANT);
    assert_int_equal(m.env->upload_grant->round, round);
    assert_int_equal(m.env->upload_grant->model_version, version);
    assert_int_equal(m.env->upload_grant->session, 0);
    moeh_msg_clear(&m);
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "duplicate upload_ready");
    free(words);
    /* dies holding the slot: no upload, no bye */
    zmq_close(r.sock);
    zmq_ctx_term(r.ctx);

    wait_run(c, a);
    assert_true(file_contains(log, "site site-x held an upload slot; released"));
    metrics_t mt;
    read_metrics(f, &mt);
    assert_int_equal(mt.n_eval, 2);
    assert_int_equal(mt.sites[0], 3);
    assert_int_equal(mt.sites[1], 3);
    int most;
    assert_int_equal(upload_rows(f->out, &most), 2);
    assert_int_equal(most, 1);
}

/* A real agent is SIGKILLed on receiving its upload grant of round 2 (one slot, quorum 2): the
 * coordinator finds it gone, releases its slot, and the round and the run complete with the
 * two others. */
static void test_granted_site_killed_releases_slot(void **state)
{
    fixture_t *f = *state;
    char *slots[] = {"--upload-slots", "1", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "3", "2", "3", NULL, "coordinator.log", slots);
    run_with_victim(f, c, 1, "--fault-kill-upload-round", "2", 0);
    assert_round_sites(f, "322", 1);
    assert_true(
        log_contains(f, "coordinator.log", "round 2: site site-2 held an upload slot; released"));
    assert_false(log_contains(f, "coordinator.log", "retry"));
    assert_true(
        log_contains(f, "site-2-as-site-2.log", "killing myself on the upload grant of round 2"));
}

/* ---- DP-FedAvg (fed/moeh_dp.h, docs/security.md "Differential privacy") ---------------------- */

/* The epsilon after T released rounds, computed here from the accountant's formula. */
static double eps_after(double z, uint64_t T)
{
    moeh_dp_release_t r = {z, T};
    return moeh_dp_epsilon(&r, 1, 1e-5, NULL);
}

static void assert_close(double got, double want)
{
    if (!(fabs(got - want) <= 1e-7 * fabs(want))) print_error("%.9g != %.9g\n", got, want);
    assert_true(fabs(got - want) <= 1e-7 * fabs(want));
}

/* Every round of a DP run reports the epsilon of its rounds so far: exactly the accountant's
 * value for r releases at noise multiplier Z, increasing; without secure aggregation the
 * coordinator's own view is that of r releases at Z / sqrt(m) (it sees each site's update,
 * noised for m = 3 sites). */
static void assert_dp_rounds(const metrics_t *m, int rounds, double z, double clip, int secagg)
{
    assert_int_equal(m->n_eval, rounds);
    for (int r = 0; r < rounds; r++) {
        assert_int_equal(m->sites[r], N_SITES);
        assert_int_equal(m->dp_rounds[r], r + 1);
        assert_close(m->dp_epsilon[r], eps_after(z, (uint64_t)r + 1));
        moeh_dp_release_t seen = {secagg ? z : z / sqrt((double)N_SITES), (uint64_t)r + 1};
        assert_close(m->dp_epsilon_coord[r], moeh_dp_epsilon(&seen, 1, 1e-5, NULL));
        if (r > 0) assert_true(m->dp_epsilon[r] > m->dp_epsilon[r - 1]);
        assert_true(m->dp_noise[r] == z && m->dp_clip[r] == clip && m->dp_delta[r] > 0.99e-5 &&
                    m->dp_delta[r] < 1.01e-5);
        assert_true(isnan(m->train_loss[r])); /* the sites keep their training loss */
        assert_true(isfinite(m->test_loss[r]));
    }
}

/* Noise 0 and a clip no update reaches is the unweighted average bit for bit (the clip leaves
 * the updates alone, the range is the same); with noise 1 the run completes, reports its
 * epsilon every round, and ends with another model (the noise is there). */
static void test_dp_run(void **state)
{
    fixture_t *f = *state;
    char *unweighted[] = {"--unweighted", "--delta-clip", "1000", NULL};
    run_all(f, "unweighted", "3", unweighted);
    char *dp0[] = {"--dp-clip", "1000", "--dp-noise", "0", NULL};
    run_all(f, "dp0", "3", dp0);
    char *dp1[] = {"--dp-clip", "0.5", "--dp-noise", "1", NULL};
    run_all(f, "dp1", "3", dp1);
    char out_u[300], out_0[300], out_1[300];
    snprintf(out_u, sizeof out_u, "%s/unweighted", f->dir);
    snprintf(out_0, sizeof out_0, "%s/dp0", f->dir);
    snprintf(out_1, sizeof out_1, "%s/dp1", f->dir);
    assert_same_model(out_u, out_0);

    metrics_t m;
    snprintf(f->out, sizeof f->out, "%s", out_0);
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    for (int r = 0; r < 3; r++)
        assert_true(isnan(m.dp_epsilon[r])); /* unbounded: null in JSON */
    snprintf(f->out, sizeof f->out, "%s", out_1);
    read_metrics(f, &m);
    assert_dp_rounds(&m, 3, 1.0, 0.5, 0);
    print_message("dp1: epsilon per round %.3f %.3f %.3f, test AUROC %.3f\n", m.dp_epsilon[0],
                  m.dp_epsilon[1], m.dp_epsilon[2], m.auroc_mean[2]);

    /* the final models differ (noise), and the sites clipped their updates */
    assert_models(out_u, out_1, 0);
    assert_true(log_contains(f, "site-1-as-site-1.log", "update L2 norm"));
    assert_true(log_contains(f, "site-1-as-site-1.log", "DP: clipped to 0.5"));
}

/* DP composes with secure aggregation: the noise is added before masking, the coordinator
 * unmasks only the noised sum, and its own view is then that of the aggregate. */
static void test_dp_secagg(void **state)
{
    fixture_t *f = *state;
    char *dp[] = {"--dp-clip", "0.5", "--dp-noise", "1.5", "--secagg", NULL};
    run_all(f, "dpsa", "3", dp);
    metrics_t m;
    read_metrics(f, &m);
    assert_dp_rounds(&m, 3, 1.5, 0.5, 1);
    assert_summed(f->out, "train", 3, 3, 3);
}

/* The accountant survives --resume: the coordinator is killed after checkpointing round 2 and
 * restarted; round 4 reports the epsilon of 4 releases, as an uninterrupted run does
 * (test_dp_run checks that one reports exactly eps_after(Z, r) after round r). A resume with
 * other DP settings, or without DP, is refused. */
static void test_dp_resume(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES];
    char *fast[] = {"--silence-timeout-ms", "1500", "--backoff-max-ms", "1000", NULL};
    snprintf(f->out, sizeof f->out, "%s/resumed", f->dir);
    char *crash[] = {
        "--fault-kill-after-round", "2", "--dp-clip", "0.5", "--dp-noise", "0.7", NULL};
    moeh_proc_t *c1 = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator-1.log", crash);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", f->endpoint);
    start_all_agents(f, a, fast);
    wait_exit(c1, 60000, 128 + SIGKILL);

    /* refused: other noise, and no DP at all (setup fails before binding) */
    char *other[] = {"--resume",   "--min-sites", "3", FED_MODEL_ARGS, "--dp-clip", "0.5",
                     "--dp-noise", "0.9",         NULL};
    coordinator_exits(f, "coordinator-refused.log", other, 1);
    assert_true(log_contains(f, "coordinator-refused.log", "resume with the same values"));
    other[11] = NULL; /* without --dp-clip / --dp-noise */
    coordinator_exits(f, "coordinator-refused-2.log", other, 1);
    assert_true(log_contains(f, "coordinator-refused-2.log",
                             "the run to resume used differential privacy"));

    char *resume[] = {"--resume", "--dp-clip", "0.5", "--dp-noise", "0.7", NULL};
    moeh_proc_t *c2 =
        start_coordinator_ex2(f, "4", "3", "3", endpoint, "coordinator-2.log", resume);
    wait_run(c2, a);
    metrics_t m;
    read_metrics(f, &m); /* rounds 1-2 from the first process, 3-4 from the second */
    assert_int_equal(m.n_eval, 4);
    for (int r = 0; r < 4; r++) {
        assert_int_equal(m.dp_rounds[r], r + 1);
        assert_close(m.dp_epsilon[r], eps_after(0.7, (uint64_t)r + 1));
    }
    assert_true(log_contains(f, "coordinator-2.log", "DP: resuming after 2 released rounds"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_upload_slots_bit_exact),
                    FED_TEST(test_unsolicited_upload_refused),
                    FED_TEST(test_granted_site_killed_releases_slot), FED_TEST(test_dp_run),
                    FED_TEST(test_dp_secagg), FED_TEST(test_dp_resume))
