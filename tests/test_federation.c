/* test_federation.c - multi-process tests: the real moeh-coordinator and moeh-site-agent
 * binaries over CURVE on 127.0.0.1 (port chosen by the kernel and read back), training a
 * small MoE-Health on a small synthetic MIMIC-IV split into three sites with different
 * modality mixes (generated once per test program, shared read-only by its tests).
 *  - a full run: every round completes with all sites and the training loss falls;
 *  - without a quorum the run fails clearly; agents survive a coordinator restart; SIGTERM
 *    shuts down cleanly;
 *  - a coordinator killed after a checkpoint resumes bit for bit (FedAvg and FedAdam), and
 *    refuses a damaged checkpoint;
 *  - an untrained expert group stays unchanged; trimmed-mean runs; the data shape is pinned.
 * The other multi-process tests are in test_fed_faults.c, test_fed_secagg.c and test_fed_dp.c;
 * their shared helpers in fed_util.h. Every process is reaped in teardown, also when an
 * assertion fails; each test works in its own temporary directory, removed afterwards. No
 * sleeps: waits are on pidfds and pipes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

#include <sys/stat.h>

static void test_full_run_loss_falls(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator(f, "6", "3");
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    assert_round_sites(f, "333333", 0);
    metrics_t m;
    read_metrics(f, &m);
    /* round 1 is the warm-up (its loss includes the gate supervision): compare joint rounds */
    assert_true(m.train_loss[5] < m.train_loss[1] - 0.05);
    assert_true(m.test_loss[5] < m.test_loss[0] - 0.05);
    assert_true(m.auroc_mean[5] > 0.6); /* the synthetic tasks are learnable */
}

/* Waits (wait_log_of: at most 20 s a site, failing fast if the coordinator died) until the
 * coordinator logged that every site joined: the only signal a waiting coordinator gives. */
static void wait_all_joined(const fixture_t *f, moeh_proc_t *c, const char *log_name)
{
    char needle[64];
    for (int k = 1; k <= N_SITES; k++) {
        snprintf(needle, sizeof needle, "site site-%d joined", k);
        wait_log_of(f, c, log_name, needle);
    }
}

/* Without a quorum (a site killed) the phase waits for --outage-budget (the site may be
 * restarted), then the run fails with a message naming the round,
 * and the surviving agents are told to leave. */
/* Started again on the directory of a finished run without --resume or --new-run, the
 * coordinator refuses at once (exit 2, naming both options) and the run's files are untouched;
 * with --new-run it moves them aside and runs. */
static void test_existing_run_dir_refused(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES], *c = start_coordinator(f, "1", "3");
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    char path[400], aside[400];
    snprintf(path, sizeof path, "%s/model.npy", f->out);
    struct stat st0, st1;
    assert_int_equal(stat(path, &st0), 0);
    char *again[] = {"--rounds", "1", NULL};
    coordinator_exits(f, "coordinator-again.log", again, 2);
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(st0.st_size, st1.st_size);
    assert_true(st0.st_mtim.tv_sec == st1.st_mtim.tv_sec &&
                st0.st_mtim.tv_nsec == st1.st_mtim.tv_nsec);
    assert_true(log_contains(f, "coordinator-again.log", "holds an earlier run"));
    assert_true(log_contains(f, "coordinator-again.log", "--resume to continue it, or --new-run"));
    char *new_run[] = {"--new-run", NULL};
    c = start_coordinator_ex2(f, "1", "3", "3", NULL, "coordinator-new.log", new_run);
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    assert_true(log_contains(f, "coordinator-new.log", "--new-run: the earlier run's files"));
    snprintf(aside, sizeof aside, "%s/model.npy", f->out);
    assert_int_equal(stat(aside, &st1), 0); /* the new run's model */
}

static void test_no_quorum_fails_clearly(void **state)
{
    fixture_t *f = *state;
    /* 2 of the 3 sites needed stay connected: an outage (the dead site may be restarted), which
     * the coordinator waits out for --outage-budget before the run fails */
    char *budget[] = {"--outage-budget", "3s", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator.log", budget);
    run_with_victim(f, c, 0, "--fault-kill-round", "2", 1);
    assert_true(
        log_contains(f, "coordinator.log", "round 2 train phase: 2 of the 3 sites needed replied"));
    assert_true(log_contains(f, "coordinator.log", "longer than --outage-budget"));
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 1);
}

/* The coordinator is killed before the run starts and a new one is started on the same
 * endpoint: the agents notice, join the new coordinator, and the run completes. */
static void test_agents_survive_coordinator_restart(void **state)
{
    fixture_t *f = *state;
    /* waits for 4 sites, so with 3 agents it never starts */
    moeh_proc_t *c1 = start_coordinator_ex(f, "3", "3", "4", NULL, "coordinator-1.log");
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", f->endpoint);
    char *fast[] = {"--silence-timeout-ms", "1500", "--backoff-max-ms", "1000", NULL};
    moeh_proc_t *a[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, fast);
    }
    wait_all_joined(f, c1, "coordinator-1.log");
    moeh_proc_signal(c1, SIGKILL);
    wait_exit(c1, 10000, 128 + SIGKILL);
    moeh_proc_t *c2 = start_coordinator_ex(f, "3", "3", "3", endpoint, "coordinator-2.log");
    assert_string_equal(f->endpoint, endpoint);
    wait_run(c2, a);
    assert_round_sites(f, "333", -1);
}

/* SIGTERM stops the coordinator promptly (130); it tells the sites the run is paused, and the
 * agents wait for a resumed coordinator instead of exiting 0 (test_lifecycle resumes it). */
static void test_sigterm_clean_shutdown(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator_ex(f, "3", "3", "4", NULL, "coordinator.log");
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    wait_all_joined(f, c, "coordinator.log");
    moeh_proc_signal(c, SIGTERM);
    int64_t t0 = moeh_now_ms();
    wait_exit(c, 5000, 130);
    assert_true(moeh_now_ms() - t0 < 2000);
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        stop_paused_agent(f, a[k], id);
    }
}

/* The coordinator is SIGKILLed right after checkpointing round 2 and restarted with --resume
 * on the same endpoint; the agents rejoin, and the final model equals, bit for bit, that of an
 * uninterrupted run with the same seeds. */
static void resume_is_bit_exact(fixture_t *f, const char *strategy)
{
    char out_a[300], out_b[300];
    moeh_proc_t *a[N_SITES];
    char *fast[] = {"--silence-timeout-ms", "1500", "--backoff-max-ms", "1000", NULL};

    snprintf(out_a, sizeof out_a, "%s/uninterrupted", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_a);
    char *strat[] = {"--strategy", (char *)strategy, NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator-a.log", strat);
    start_all_agents(f, a, fast);
    wait_run(c, a);

    snprintf(out_b, sizeof out_b, "%s/resumed", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_b);
    char *crash[] = {"--fault-kill-after-round", "2", "--strategy", (char *)strategy, NULL};
    moeh_proc_t *c1 = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator-b1.log", crash);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", f->endpoint);
    start_all_agents(f, a, fast);
    wait_exit(c1, 60000, 128 + SIGKILL);
    char *resume[] = {"--resume", "--strategy", (char *)strategy, NULL};
    moeh_proc_t *c2 =
        start_coordinator_ex2(f, "4", "3", "3", endpoint, "coordinator-b2.log", resume);
    wait_run(c2, a);

    metrics_t m;
    read_metrics(f, &m); /* rounds 1-2 from the first process, 3-4 appended by the second */
    assert_int_equal(m.n_eval, 4);
    assert_true(log_contains(f, "coordinator-b2.log", "resuming after round 2"));

    assert_same_model(out_a, out_b);
}

static void test_resume_is_bit_exact(void **state)
{
    resume_is_bit_exact(*state, "fedavg");
}

/* The same with FedAdam: the server's moments are part of the checkpoint. */
static void test_resume_is_bit_exact_fedadam(void **state)
{
    resume_is_bit_exact(*state, "fedadam");
}

/* A damaged checkpoint is refused with a clear message instead of resuming from garbage. */
static void test_resume_refuses_damaged_checkpoint(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    char path[500];
    assert_int_equal(moeh_mkdir_p(f->out, &err), 0);
    snprintf(path, sizeof path, "%s/checkpoint.moeh", f->out);
    assert_int_equal(
        moeh_file_write_atomic(path, "MOEHCKPT\1\0\0\0garbage-garbage-garbage", 31, &err), 0);
    char exe[2100], reg[400], key[400], log[400];
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", f->bin);
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    snprintf(log, sizeof log, "%s/coordinator.log", f->logs);
    char *argv[] = {exe,     "--bind", "tcp://127.0.0.1:*", "--registry", reg, "--key", key,
                    "--out", f->out,   "--resume",          NULL};
    moeh_proc_t *p = &f->procs[f->n_procs++];
    assert_int_equal(moeh_proc_spawn(p, "coordinator", argv, log, log, -1, &err), 0);
    wait_exit(p, 10000, 1);
    assert_true(file_contains(log, "checkpoint.moeh: checksum mismatch"));
}

/* Per-group aggregation end to end: with only the EHR-only and EHR + notes sites, no site
 * trains the image encoder, so it leaves the federation bit for bit as initialised, while the
 * notes encoder (trained by one site) and the gate (trained by both) change. */
static void test_untrained_group_unchanged(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    run_two_sites(f, "2", "coordinator.log");

    /* the initial model, built as the coordinator builds it (start_coordinator_ex's flags) */
    moeh_dataset_t *ds = NULL;
    char path[500];
    snprintf(path, sizeof path, "%s/site-1", f->data);
    assert_int_equal(moeh_dataset_open(path, false, &ds, &err), 0);
    moeh_moe_cfg_t mc = moeh_moe_defaults(ds->f_static, ds->f_ts);
    mc.n_steps = ds->t, mc.img_size = ds->img_size;
    mc.d_emb = 16, mc.d_hidden = 16, mc.note_buckets = 1024, mc.max_batch = 32, mc.seed = 1;
    moeh_dataset_destroy(&ds);
    moeh_moe_t *init = NULL;
    assert_int_equal(moeh_moe_create(&mc, &init, &err), 0);
    const moeh_params_t *p = moeh_moe_params(init);

    moeh_npy_t final;
    snprintf(path, sizeof path, "%s/model.npy", f->out);
    assert_int_equal(moeh_npy_read(path, MOEH_DT_F32, 1, &final, &err), 0);
    assert_int_equal(final.shape[0], p->n); /* same layout as the coordinator's */
    const float *w = final.data;
    int gi = moeh_params_group_index(p, "encoder_img"),
        gn = moeh_params_group_index(p, "encoder_notes"), gg = moeh_params_group_index(p, "gate");
    assert_true(gi >= 0 && gn >= 0 && gg >= 0);
    assert_memory_equal(w + p->group_off[gi], p->w + p->group_off[gi],
                        p->group_len[gi] * sizeof(float));
    assert_memory_not_equal(w + p->group_off[gn], p->w + p->group_off[gn],
                            p->group_len[gn] * sizeof(float));
    assert_memory_not_equal(w + p->group_off[gg], p->w + p->group_off[gg],
                            p->group_len[gg] * sizeof(float));
    moeh_npy_free(&final);
    moeh_moe_destroy(&init);
}

/* The robust server step: a trimmed-mean run completes and learns. */
static void test_trimmed_mean_run(void **state)
{
    fixture_t *f = *state;
    char *strat[] = {"--strategy", "trimmed", "--trim", "0.34", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator.log", strat);
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 4);
    assert_true(m.test_loss[3] < m.test_loss[0]);
    assert_true(m.auroc_mean[3] > 0.55);
}

/* Pinned data shapes: the model is built at start, and a site whose data differs is refused
 * with a message naming both shapes; a malformed value is a usage error (exit 2). */
static void test_pinned_data_shape(void **state)
{
    fixture_t *f = *state;
    char *pin[] = {"--data-shape", "3,2,48,64", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "1", "1", NULL, "coordinator.log", pin);
    moeh_proc_t *a = start_agent(f, "site-1", "site-1", "site-1", NULL);
    wait_exit(a, 20000, 1);
    assert_true(
        log_contains(f, "coordinator.log", "this federation's model expects 3, 2 x 48 and 64"));
    moeh_proc_stop(c, 5000);

    char *bad[] = {"--data-shape", "35,33", NULL};
    coordinator_exits(f, "coordinator-bad.log", bad, 2); /* a usage error */
    assert_true(log_contains(f, "coordinator-bad.log", "expected STATIC,VARS,HOURS,IMAGE"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_full_run_loss_falls), FED_TEST(test_existing_run_dir_refused),
                    FED_TEST(test_no_quorum_fails_clearly),
                    FED_TEST(test_agents_survive_coordinator_restart),
                    FED_TEST(test_sigterm_clean_shutdown), FED_TEST(test_resume_is_bit_exact),
                    FED_TEST(test_resume_is_bit_exact_fedadam),
                    FED_TEST(test_resume_refuses_damaged_checkpoint),
                    FED_TEST(test_untrained_group_unchanged), FED_TEST(test_trimmed_mean_run),
                    FED_TEST(test_pinned_data_shape))
