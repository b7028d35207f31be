/* test_federation.c - multi-process tests: the real moeh-coordinator and moeh-site-agent
 * binaries over CURVE on 127.0.0.1 (port chosen by the kernel and read back), training a
 * small MoE-Health on a small synthetic MIMIC-IV split into three sites with different
 * modality mixes (generated once per test program, shared read-only by the tests).
 *  - a full run: every round completes with all sites and the training loss falls;
 *  - an agent is SIGKILLed when round 3 starts: the run completes with the quorum of 2;
 *  - an agent with an unregistered key, and one claiming another site's id, are refused and
 *    the run that follows is unaffected;
 *  - with --secagg: the final model equals the plain run's bit for bit; a site killed after
 *    sharing its keys is unmasked from the survivors' shares; a site that holds its masked
 *    update until the unmask request is refused; a masked vector for another round, of
 *    another session, or sent twice is refused and the sum stays exact;
 *  - granted uploads (--upload-slots): four sites taking turns through one slot end with the
 *    model of the run where they all push at once; an upload without a grant is refused; a
 *    granted site that dies releases its slot.
 * Every process is reaped in teardown, also when an assertion fails; each test works in its
 * own temporary directory, removed afterwards. No sleeps: waits are on pidfds and pipes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "synth_fixture.h"

#include "test_util.h"

#include "moeh_keys.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_wire.h"
#include "moeh_localfed.h"
#include "moeh_checkpoint.h"
#include "moeh_dp.h"
#include "moeh_hist.h"
#include "moeh_moe.h"
#include "moeh_npy.h"
#include "moeh_trainer.h"
#include "moeh_split.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <zmq.h>
#include <string.h>

#define N_SITES 3
#define MAX_PROCS 20

typedef struct {
    char dir[256], data[300], keys[300], logs[300], out[300];
    char bin[2048];
    moeh_proc_t procs[MAX_PROCS];
    size_t n_procs;
    char endpoint[256];
} fixture_t;

/* Shared by every test: the site datasets and the keys (read-only). */
static char g_shared[256];

static int group_setup(void **state)
{
    moeh_err_t err = {0};
    char data[300], keys[300];
    moeh_dataset_t *ds = NULL;
    moeh_split_opts_t sp;
    moeh_split_opts_default(&sp);
    sp.seed = 5;
    const char *names[N_SITES] = {"site-1", "site-2", "site-3"};
    int rc = moeh_test_tmpdir(g_shared, sizeof g_shared, "fed_data");
    snprintf(data, sizeof data, "%s/sites", g_shared);
    snprintf(keys, sizeof keys, "%s/keys", g_shared);
    if (!rc) rc = moeh_test_synth_cohort(g_shared, 450, 5, &ds, &err);
    if (!rc)
        rc = moeh_split_parse_sites("site-1:0.4:ehr,site-2:0.3:ehr+notes,site-3:0.3:ehr+notes+img",
                                    &sp, &err);
    if (!rc) rc = moeh_split_write(ds, &sp, data, NULL, &err);
    if (!rc) rc = moeh_localfed_keys(keys, names, N_SITES, &err);
    moeh_dataset_destroy(&ds);
    if (rc) fprintf(stderr, "group setup: %s\n", err.msg);
    return rc;
}

static int group_teardown(void **state)
{
    return moeh_test_rmtree(g_shared);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    moeh_err_t err = {0};
    snprintf(f->dir, sizeof f->dir, "/tmp/moeh_test_fed_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->data, sizeof f->data, "%s/sites", g_shared);
    snprintf(f->keys, sizeof f->keys, "%s/keys", f->dir);
    snprintf(f->logs, sizeof f->logs, "%s/logs", f->dir);
    snprintf(f->out, sizeof f->out, "%s/out", f->dir);
    const char *bin = getenv("MOEH_BIN_DIR");
    snprintf(f->bin, sizeof f->bin, "%s", bin ? bin : "./bin");
    /* keys per test: one test adds a rogue key next to them */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp -r '%s/keys' '%s/keys'", g_shared, f->dir);
    if (moeh_mkdir_p(f->logs, &err) || system(cmd) != 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    for (size_t i = 0; i < f->n_procs; i++)
        moeh_proc_stop(&f->procs[i], 2000);
    if (getenv("MOEH_KEEP_TEST_DIR") == NULL) {
        if (moeh_test_rmtree(f->dir) != 0) return -1;
    } else {
        fprintf(stderr, "kept %s\n", f->dir);
    }
    free(f);
    return 0;
}

/* Starts the coordinator; bind may be NULL (any port) and wait_sites defaults to "3". */
static moeh_proc_t *start_coordinator_ex2(fixture_t *f, const char *rounds, const char *min_sites,
                                          const char *wait_sites, const char *bind,
                                          const char *log_name, char *const more[])
{
    char reg[400], key[400], log[400];
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    snprintf(log, sizeof log, "%s/%s", f->logs, log_name);
    char *args[64] = {"--registry",
                      reg,
                      "--key",
                      key,
                      "--rounds",
                      (char *)rounds,
                      "--min-sites",
                      (char *)min_sites,
                      "--wait-sites",
                      (char *)wait_sites,
                      "--out",
                      f->out,
                      "--heartbeat-ms",
                      "200",
                      "--heartbeat-timeout-ms",
                      "4000",
                      "--deadline-ms",
                      "20000",
                      "--start-timeout-ms",
                      "30000",
                      "--max-retries",
                      "1",
                      "--local-epochs",
                      "2",
                      "--lr",
                      "0.003",
                      "--d-emb",
                      "16",
                      "--d-hidden",
                      "16",
                      "--note-buckets",
                      "1024",
                      "--batch-size",
                      "32",
                      "--warmup-rounds",
                      "1",
                      "--table=false"};
    int n = 0;
    while (args[n])
        n++;
    if (bind) {
        args[n++] = "--bind";
        args[n++] = (char *)bind;
    }
    for (int i = 0; more && more[i] && n < 62; i++)
        args[n++] = more[i];
    args[n] = NULL;
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    int rc = moeh_localfed_start_coordinator(p, f->bin, args, NULL, log, f->endpoint,
                                             sizeof f->endpoint, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return p;
}

static moeh_proc_t *start_coordinator_ex(fixture_t *f, const char *rounds, const char *min_sites,
                                         const char *wait_sites, const char *bind,
                                         const char *log_name)
{
    return start_coordinator_ex2(f, rounds, min_sites, wait_sites, bind, log_name, NULL);
}

static moeh_proc_t *start_coordinator(fixture_t *f, const char *rounds, const char *min_sites)
{
    return start_coordinator_ex(f, rounds, min_sites, "3", NULL, "coordinator.log");
}

/* Starts an agent claiming site_id with the key file of key_site (so that the two may differ). */
static moeh_proc_t *start_agent(fixture_t *f, const char *site_id, const char *data_site,
                                const char *key_site, char *const extra[])
{
    char ds[400], key[400], pub[400], log[400];
    snprintf(ds, sizeof ds, "%s/%s", f->data, data_site);
    snprintf(key, sizeof key, "%s/%s.key", f->keys, key_site);
    snprintf(pub, sizeof pub, "%s/coordinator.pub", f->keys);
    snprintf(log, sizeof log, "%s/%s-as-%s.log", f->logs, key_site, site_id);
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    int rc =
        moeh_localfed_start_agent(p, f->bin, f->endpoint, site_id, ds, key, pub, extra, log, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return p;
}

typedef struct {
    int n_eval;
    int sites[64];
    double train_loss[64];
    double test_loss[64];
    double auroc_mean[64];
    double dp_epsilon[64], dp_epsilon_coord[64], dp_noise[64], dp_clip[64], dp_delta[64];
    int dp_rounds[64];
    int n_gone;
} metrics_t;

/* A number of a metrics line, NAN when absent or null. */
static double jget(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* The number `key` of the first metrics line of `event` for `round` (any round if < 0) in
 * OUT/metrics.jsonl; NAN if there is none. */
static double metric(const char *out, const char *event, int round, const char *key)
{
    char path[400], line[8192];
    double v = NAN;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (isnan(v) && fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        assert_non_null(ev);
        if (!strcmp(ev, event) && (round < 0 || jget(j, "round") == round)) v = jget(j, key);
        cJSON_Delete(j);
    }
    fclose(fp);
    return v;
}

/* 1 if OUT/metrics.jsonl has a line of `event` whose string `key` is `value`. */
static int has_line(const char *out, const char *event, const char *key, const char *value)
{
    char path[400], line[8192];
    int found = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (!found && fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(j, key));
        found = ev && v && !strcmp(ev, event) && !strcmp(v, value);
        cJSON_Delete(j);
    }
    fclose(fp);
    return found;
}

/* A securely aggregated phase summed `sites` masked vectors of `members` (the others dropped),
 * as its metrics line says. */
static void assert_summed(const char *out, const char *event, int round, int sites, int members)
{
    assert_int_equal((int)metric(out, event, round, "sites"), sites);
    if (members >= 0) assert_int_equal((int)metric(out, event, round, "participants"), members);
}

static void read_metrics(const fixture_t *f, metrics_t *m)
{
    char path[400], line[8192];
    memset(m, 0, sizeof *m);
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        assert_non_null(ev);
        if (!strcmp(ev, "eval") && m->n_eval < 64) {
            int r = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "round"));
            assert_int_equal(r, m->n_eval + 1); /* rounds in order, none skipped */
            m->sites[m->n_eval] = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "sites"));
            m->train_loss[m->n_eval] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "train_loss"));
            m->test_loss[m->n_eval] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "test_loss"));
            m->auroc_mean[m->n_eval] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "auroc_mean"));
            m->dp_epsilon[m->n_eval] = jget(j, "dp_epsilon");
            m->dp_epsilon_coord[m->n_eval] = jget(j, "dp_epsilon_coordinator");
            m->dp_noise[m->n_eval] = jget(j, "dp_noise");
            m->dp_clip[m->n_eval] = jget(j, "dp_clip");
            m->dp_delta[m->n_eval] = jget(j, "dp_delta");
            m->dp_rounds[m->n_eval] = (int)jget(j, "dp_rounds");
            m->n_eval++;
        } else if (!strcmp(ev, "site_gone")) {
            m->n_gone++;
        }
        cJSON_Delete(j);
    }
    fclose(fp);
}

static void wait_exit(moeh_proc_t *p, int timeout_ms, int want_code)
{
    int rc = moeh_proc_wait(p, timeout_ms);
    if (rc) print_error("%s did not exit within %d ms\n", p->name, timeout_ms);
    assert_int_equal(rc, 0);
    if (moeh_proc_exit_code(p) != want_code)
        print_error("%s exited with %d, expected %d\n", p->name, moeh_proc_exit_code(p), want_code);
    assert_int_equal(moeh_proc_exit_code(p), want_code);
}

static void test_full_run_loss_falls(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator(f, "6", "3");
    moeh_proc_t *a[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, NULL);
    }
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0); /* agents leave on the coordinator's bye */
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 6);
    for (int r = 0; r < 6; r++)
        assert_int_equal(m.sites[r], N_SITES);
    /* round 1 is the warm-up (its loss includes the gate supervision): compare joint rounds */
    assert_true(m.train_loss[5] < m.train_loss[1] - 0.05);
    assert_true(m.test_loss[5] < m.test_loss[0] - 0.05);
    assert_true(m.auroc_mean[5] > 0.6); /* the synthetic tasks are learnable */
    assert_int_equal(m.n_gone, 0);
}

/* Starts the three agents, site `victim` (0..2) with the fault option `opt value`; waits for
 * it to die by SIGKILL, for the coordinator c to exit with coord_rc, then for the two other
 * agents to exit 0. */
static void run_with_victim(fixture_t *f, moeh_proc_t *c, int victim, const char *opt,
                            const char *value, int coord_rc)
{
    moeh_proc_t *a[N_SITES];
    char *fault[] = {(char *)opt, (char *)value, NULL};
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, k == victim ? fault : NULL);
    }
    wait_exit(a[victim], 60000, 128 + SIGKILL);
    wait_exit(c, 60000, coord_rc);
    for (int k = 0; k < N_SITES; k++)
        if (k != victim) wait_exit(a[k], 10000, 0);
}

static void test_killed_agent_quorum_completes(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator(f, "5", "2");
    run_with_victim(f, c, 2, "--fault-kill-round", "3", 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 5);
    assert_int_equal(m.sites[0], 3);
    assert_int_equal(m.sites[1], 3);
    for (int r = 2; r < 5; r++)
        assert_int_equal(m.sites[r], 2);
    assert_int_equal(m.n_gone, 1);
}

static void test_unregistered_key_refused(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    /* a key pair the registry does not know */
    moeh_keypair_t *kp = NULL;
    char base[400];
    snprintf(base, sizeof base, "%s/rogue", f->keys);
    assert_int_equal(moeh_keypair_generate(&kp), 0);
    assert_int_equal(moeh_keypair_write(kp, base, &err), 0);
    moeh_keypair_destroy(&kp);

    moeh_proc_t *c = start_coordinator(f, "3", "3");
    /* refused at the CURVE handshake by the ZAP handler: exits 3 with a clear message */
    moeh_proc_t *rogue = start_agent(f, "site-1", "site-1", "rogue", NULL);
    wait_exit(rogue, 20000, 3);
    /* a registered key claiming another site's id: refused at hello, exits 3 */
    moeh_proc_t *liar = start_agent(f, "site-1", "site-2", "site-2", NULL);
    wait_exit(liar, 20000, 3);
    /* the run itself is unaffected */
    moeh_proc_t *a[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, NULL);
    }
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    for (int r = 0; r < 3; r++)
        assert_int_equal(m.sites[r], N_SITES);
    /* the logs say why */
    char path[400], *log = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/rogue-as-site-1.log", f->logs);
    assert_int_equal(moeh_file_read_all(path, 1 << 20, &log, &len, &err), 0);
    assert_non_null(strstr(log, "refused this site's key"));
    free(log);
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_int_equal(moeh_file_read_all(path, 1 << 22, &log, &len, &err), 0);
    assert_non_null(strstr(log, "is not in the site registry"));
    assert_non_null(strstr(log, "does not match the id registered for your key"));
    free(log);
}

static int file_contains(const char *path, const char *needle)
{
    char *buf = NULL;
    size_t len;
    moeh_err_t err = {0};
    if (moeh_file_read_all(path, 1 << 22, &buf, &len, &err) != 0) return 0;
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

/* Waits (at most 20 s, else the test fails) until the coordinator logged that every site
 * joined. The log is the only signal a waiting coordinator gives, so this polls the file in
 * 20 ms steps, waiting on the coordinator's pidfd in between (and so failing fast if it died). */
static void wait_all_joined(const fixture_t *f, moeh_proc_t *c, const char *log_name)
{
    char path[400], needle[64];
    snprintf(path, sizeof path, "%s/%s", f->logs, log_name);
    int64_t end = moeh_now_ms() + 20000;
    for (int k = 1; k <= N_SITES; k++) {
        snprintf(needle, sizeof needle, "site site-%d joined", k);
        while (!file_contains(path, needle)) {
            assert_true(moeh_now_ms() < end);
            assert_int_equal(moeh_proc_wait(c, 20), -ETIMEDOUT); /* still running */
        }
    }
}

/* Without a quorum the phase is retried, then the run fails with a message naming the round,
 * and the surviving agents are told to leave. */
static void test_no_quorum_fails_clearly(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator(f, "4", "3");
    run_with_victim(f, c, 0, "--fault-kill-round", "2", 1);
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_true(file_contains(path, "round 2 train phase: 2 of the 3 sites needed replied"));
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
    wait_exit(c2, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    for (int r = 0; r < 3; r++)
        assert_int_equal(m.sites[r], N_SITES);
}

/* SIGTERM stops the coordinator promptly; it says bye and the agents leave cleanly. */
static void test_sigterm_clean_shutdown(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator_ex(f, "3", "3", "4", NULL, "coordinator.log");
    moeh_proc_t *a[N_SITES];
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, NULL);
    }
    wait_all_joined(f, c, "coordinator.log");
    moeh_proc_signal(c, SIGTERM);
    int64_t t0 = moeh_now_ms();
    wait_exit(c, 5000, 130);
    assert_true(moeh_now_ms() - t0 < 2000);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 5000, 0);
}

/* The final models of two runs (OUT/model.npy) are equal byte for byte. */
static void assert_same_model(const char *out_a, const char *out_b)
{
    char path[400], *ma = NULL, *mb = NULL;
    size_t la, lb;
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/model.npy", out_a);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &ma, &la, &err), 0);
    snprintf(path, sizeof path, "%s/model.npy", out_b);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &mb, &lb, &err), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(ma, mb, la);
    free(ma);
    free(mb);
}

static void start_all_agents(fixture_t *f, moeh_proc_t **a, char *const extra[])
{
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, extra);
    }
}

/* Runs a federation of the three sites with the given coordinator options into f->dir/name. */
static void run_all(fixture_t *f, const char *name, const char *rounds, char *const more[])
{
    char log[64];
    moeh_proc_t *a[N_SITES];
    snprintf(f->out, sizeof f->out, "%s/%s", f->dir, name);
    snprintf(log, sizeof log, "coordinator-%s.log", name);
    moeh_proc_t *c = start_coordinator_ex2(f, rounds, "3", "3", NULL, log, more);
    start_all_agents(f, a, NULL);
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
}

/* The coordinator is SIGKILLed right after checkpointing round 2 and restarted with --resume
 * on the same endpoint; the agents rejoin, and the final model equals, bit for bit, that of an
 * uninterrupted run with the same seeds. */
static void resume_is_bit_exact(fixture_t *f, const char *strategy)
{
    char out_a[300], out_b[300], path[500];
    moeh_proc_t *a[N_SITES];
    char *fast[] = {"--silence-timeout-ms", "1500", "--backoff-max-ms", "1000", NULL};

    snprintf(out_a, sizeof out_a, "%s/uninterrupted", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_a);
    char *strat[] = {"--strategy", (char *)strategy, NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "4", "3", "3", NULL, "coordinator-a.log", strat);
    start_all_agents(f, a, fast);
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);

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
    wait_exit(c2, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);

    metrics_t m;
    read_metrics(f, &m); /* rounds 1-2 from the first process, 3-4 appended by the second */
    assert_int_equal(m.n_eval, 4);
    snprintf(path, sizeof path, "%s/coordinator-b2.log", f->logs);
    assert_true(file_contains(path, "resuming after round 2"));

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

/* Rewrites the test's registry to admit exactly the given sites (by their public keys). */
static void write_registry(const fixture_t *f, const char *const *sites, size_t n)
{
    char text[4096], path[400], pub[MOEH_Z85_KEY_LEN + 1];
    moeh_err_t err = {0};
    size_t len = (size_t)snprintf(text, sizeof text, "[sites]\n");
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s.pub", f->keys, sites[i]);
        assert_int_equal(moeh_pubkey_read(path, pub, &err), 0);
        len += (size_t)snprintf(text + len, sizeof text - len, "%s = %s\n", sites[i], pub);
    }
    snprintf(path, sizeof path, "%s/registry.ini", f->keys);
    assert_int_equal(moeh_file_write_atomic(path, text, len, &err), 0);
}

/* Waits (at most 20 s) until the log contains needle `count` times; fails if p exits. */
static void wait_log(const fixture_t *f, moeh_proc_t *p, const char *log_name, const char *needle)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", f->logs, log_name);
    int64_t end = moeh_now_ms() + 20000;
    while (!file_contains(path, needle)) {
        assert_true(moeh_now_ms() < end);
        assert_int_equal(moeh_proc_wait(p, 20), -ETIMEDOUT);
    }
}

/* A site whose key is added to the registry is admitted after SIGHUP, without a restart. */
static void test_sighup_admits_added_key(void **state)
{
    fixture_t *f = *state;
    const char *two[] = {"site-1", "site-2"}, *three[] = {"site-1", "site-2", "site-3"};
    write_registry(f, two, 2);
    moeh_proc_t *c = start_coordinator_ex(f, "3", "3", "3", NULL, "coordinator.log");
    moeh_proc_t *a1 = start_agent(f, "site-1", "site-1", "site-1", NULL);
    moeh_proc_t *a2 = start_agent(f, "site-2", "site-2", "site-2", NULL);
    moeh_proc_t *a3 = start_agent(f, "site-3", "site-3", "site-3", NULL);
    wait_exit(a3, 20000, 3); /* not registered yet */
    write_registry(f, three, 3);
    moeh_proc_signal(c, SIGHUP);
    wait_log(f, c, "coordinator.log", "registry reloaded");
    a3 = start_agent(f, "site-3", "site-3", "site-3", NULL);
    wait_exit(c, 60000, 0);
    wait_exit(a1, 10000, 0);
    wait_exit(a2, 10000, 0);
    wait_exit(a3, 10000, 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    for (int r = 0; r < 3; r++)
        assert_int_equal(m.sites[r], 3);
}

/* A site whose key is removed is dropped at once on SIGHUP (its agent stops with exit 3),
 * and the run goes on with the others. */
static void test_sighup_revokes_removed_key(void **state)
{
    fixture_t *f = *state;
    const char *two[] = {"site-1", "site-2"};
    moeh_proc_t *c = start_coordinator_ex(f, "12", "2", "3", NULL, "coordinator.log");
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    wait_log(f, c, "coordinator.log", "round 2 done");
    write_registry(f, two, 2);
    moeh_proc_signal(c, SIGHUP);
    wait_exit(a[2], 20000, 3);
    wait_exit(c, 60000, 0);
    wait_exit(a[0], 10000, 0);
    wait_exit(a[1], 10000, 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 12);
    assert_int_equal(m.sites[0], 3);
    assert_int_equal(m.sites[11], 2);
    assert_int_equal(m.n_gone, 1);
    assert_true(has_line(f->out, "site_gone", "site", "site-3"));
    assert_true(has_line(f->out, "site_gone", "why", "key revoked"));
}

/* ---- a hostile admitted site -------------------------------------------------------------- */

typedef struct {
    void *ctx, *sock;
    moeh_wire_limits_t lim;
} rogue_t;

/* Waits up to 10 s for the next message that is not a heartbeat; returns its decode code. */
static int rogue_next(rogue_t *r, moeh_msg_t *m)
{
    int64_t end = moeh_now_ms() + 10000;
    for (;;) {
        zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
        assert_true(moeh_now_ms() < end);
        zmq_poll(&it, 1, 100);
        moeh_err_t err = {0};
        int rc = moeh_wire_recv(r->sock, 0, &r->lim, m, &err);
        if (rc == -EAGAIN) {
            moeh_msg_clear(m);
            continue;
        }
        if (rc == 0 && m->env->type == MOEH__MSG_TYPE__HEARTBEAT) {
            moeh_msg_clear(m);
            continue;
        }
        return rc;
    }
}

/* Expects an Error reply with `code`. */
static void rogue_expect_code(rogue_t *r, int code)
{
    moeh_msg_t m;
    assert_int_equal(rogue_next(r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__ERROR);
    if (m.env->error->code != code)
        print_error("expected error %d, got %d: %s\n", code, m.env->error->code,
                    m.env->error->message);
    assert_int_equal(m.env->error->code, code);
    moeh_msg_clear(&m);
}

/* Sends raw parts and expects an Error reply with `code`. */
static void rogue_expect_error(rogue_t *r, const void *hdr, size_t len, const moeh_iov_t *frames,
                               size_t nf, int code)
{
    assert_true(zmq_send(r->sock, hdr, len, nf ? ZMQ_SNDMORE : 0) >= 0);
    for (size_t i = 0; i < nf; i++)
        assert_true(
            zmq_send(r->sock, frames[i].data, frames[i].len, i + 1 < nf ? ZMQ_SNDMORE : 0) >= 0);
    rogue_expect_code(r, code);
}

/* Sends a well-formed message (tensor frames in parts, as moeh_wire_send splits them) and, if
 * expect_code is not 0, expects an Error reply with that code. */
static void rogue_send(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf,
                       int expect_code)
{
    assert_true(moeh_wire_send(r->sock, NULL, 0, env, f, nf) == 0);
    if (expect_code) rogue_expect_code(r, expect_code);
}

static int rogue_next_alive(rogue_t *r, moeh_msg_t *m);

/* Says Bye (delivered: linger 1 s) and closes r. */
static void rogue_leave(rogue_t *r)
{
    assert_int_equal(moeh_wire_send_simple(r->sock, NULL, 0, MOEH__MSG_TYPE__BYE, "done", 0), 0);
    int linger = 1000;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

/* Registers a fourth site, "site-x", with a fresh key (the three real sites keep theirs). */
static void register_site_x(fixture_t *f)
{
    moeh_err_t err = {0};
    char path[400];
    moeh_keypair_t *kp = NULL;
    snprintf(path, sizeof path, "%s/site-x", f->keys);
    assert_int_equal(moeh_keypair_generate(&kp), 0);
    assert_int_equal(moeh_keypair_write(kp, path, &err), 0);
    moeh_keypair_destroy(&kp);
    const char *four[] = {"site-1", "site-2", "site-3", "site-x"};
    write_registry(f, four, 4);
}

/* Connects r to endpoint over CURVE with site-x's key and builds its Hello: site-1's data
 * shapes and no training rows (weight 0: its zeros change no sum). */
static void rogue_connect(fixture_t *f, rogue_t *r, const char *endpoint, Moeh__Envelope *env,
                          Moeh__Hello *h)
{
    moeh_err_t err = {0};
    char path[400], pub[MOEH_Z85_KEY_LEN + 1];
    moeh_keypair_t *kp = NULL;
    snprintf(path, sizeof path, "%s/site-x.key", f->keys);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), 0);
    snprintf(path, sizeof path, "%s/coordinator.pub", f->keys);
    assert_int_equal(moeh_pubkey_read(path, pub, &err), 0);
    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(moeh_curve_client(r->sock, kp, pub), 0);
    assert_int_equal(zmq_connect(r->sock, endpoint), 0);
    moeh_keypair_destroy(&kp);
    moeh_dataset_t *ds = NULL;
    snprintf(path, sizeof path, "%s/site-1", f->data);
    assert_int_equal(moeh_dataset_open(path, false, &ds, &err), 0);
    moeh__envelope__init(env);
    moeh__hello__init(h);
    h->site_id = "site-x";
    h->n_features = (uint32_t)ds->f_static, h->n_vars = (uint32_t)ds->f_ts;
    h->n_steps = (uint32_t)ds->t, h->img_size = (uint32_t)ds->img_size;
    moeh_dataset_destroy(&ds);
    env->type = MOEH__MSG_TYPE__HELLO, env->body_case = MOEH__ENVELOPE__BODY_HELLO;
    env->hello = h;
}

/* Takes r->lim from a Welcome (the message m, which is cleared). */
static void rogue_welcome(rogue_t *r, moeh_msg_t *m)
{
    assert_int_equal(m->env->type, MOEH__MSG_TYPE__WELCOME);
    const Moeh__ModelSpec *ms = m->env->welcome->model;
    r->lim = (moeh_wire_limits_t){.n_params = ms->n_params,
                                  .n_groups = ms->n_groups,
                                  .n_tasks = ms->n_tasks,
                                  .eval_bins = m->env->welcome->eval_bins,
                                  .n_norm = ms->n_norm,
                                  .n_experts = ms->n_experts};
    moeh_msg_clear(m);
}

/* The usual rogue test: site-x registered, the coordinator (3 rounds, quorum 2, waiting for 4
 * sites, with `extra` options) and the three real agents started, and site-x joined (Welcome
 * read). The coordinator's log path goes to log. */
static moeh_proc_t *rogue_join(fixture_t *f, rogue_t *r, char **extra, moeh_proc_t *a[N_SITES],
                               char *log, size_t log_len)
{
    register_site_x(f);
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "3", "4", NULL, "coordinator.log", extra);
    snprintf(log, log_len, "%s/coordinator.log", f->logs);
    start_all_agents(f, a, NULL);
    Moeh__Envelope env;
    Moeh__Hello h;
    rogue_connect(f, r, f->endpoint, &env, &h);
    assert_int_equal(moeh_wire_send(r->sock, NULL, 0, &env, NULL, 0), 0);
    moeh_msg_t m;
    assert_int_equal(rogue_next_alive(r, &m), 0);
    rogue_welcome(r, &m);
    return c;
}

/* The hostile site: joins with no training data, then sends everything wrong it can. */
static void rogue_attack(fixture_t *f, const char *endpoint)
{
    rogue_t r = {0};
    Moeh__Envelope env;
    Moeh__Hello h; /* the real data shapes but no training rows */
    rogue_connect(f, &r, endpoint, &env, &h);
    uint8_t *hello_hdr;
    size_t hello_len;
    assert_int_equal(moeh_wire_pack(&env, NULL, 0, &hello_hdr, &hello_len), 0);
    rogue_send(&r, &env, NULL, 0, 0);
    moeh_msg_t m;
    assert_int_equal(rogue_next(&r, &m), 0);
    rogue_welcome(&r, &m);
    /* the statistics phase starts once all four joined */
    assert_int_equal(rogue_next(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__ROUND_START);
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__STATS);
    moeh_msg_clear(&m);

    /* 1. oversized header */
    size_t big = MOEH_MAX_HEADER_BYTES + 1;
    uint8_t *junk = calloc(1, big);
    rogue_expect_error(&r, junk, big, NULL, 0, -EMSGSIZE);
    free(junk);
    /* 2. truncated header */
    rogue_expect_error(&r, hello_hdr, hello_len / 2, NULL, 0, -EBADMSG);
    free(hello_hdr);
    /* 3. another protocol version */
    Moeh__Envelope bye = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    bye.type = MOEH__MSG_TYPE__HEARTBEAT, bye.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    bye.heartbeat = &hb;
    bye.protocol_version = MOEH_PROTOCOL_VERSION + 1;
    uint8_t vbuf[64];
    size_t vlen = moeh__envelope__pack(&bye, vbuf);
    rogue_expect_error(&r, vbuf, vlen, NULL, 0, -EPROTO);
    /* 4. NaN and 5. wrong shape in the statistics */
    size_t nst = 3 * (size_t)r.lim.n_norm;
    double *st = calloc(nst, sizeof(double));
    Moeh__Envelope se = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    se.type = MOEH__MSG_TYPE__STATS_RESULT, se.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    se.stats_result = &sr;
    moeh_frame_t sf = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = nst};
    st[4] = NAN;
    rogue_send(&r, &se, &sf, 1, -ERANGE);
    st[4] = 0;
    sf.count = nst - 3;
    rogue_send(&r, &se, &sf, 1, -EBADMSG);
    sf.count = nst;
    /* 6. out of order: an update while statistics are being collected */
    size_t nw = r.lim.n_params + r.lim.n_groups;
    uint32_t *words = calloc(nw, sizeof(uint32_t));
    Moeh__Envelope ue = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    ue.type = MOEH__MSG_TYPE__UPDATE, ue.body_case = MOEH__ENVELOPE__BODY_UPDATE, ue.update = &u;
    moeh_frame_t uf = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = nw};
    rogue_send(&r, &ue, &uf, 1, -ESTALE);
    free(words);
    /* 7. replayed: all-zero statistics are taken once (they add nothing); the copy is refused */
    rogue_send(&r, &se, &sf, 1, 0);
    rogue_send(&r, &se, &sf, 1, -ESTALE);
    free(st);
    /* leave, so that the phases do not wait for this site */
    rogue_leave(&r);
}

/* A hostile admitted site gets an error for every bad message; the coordinator keeps running
 * and the final model is bit for bit that of the same run without it. */
static void test_hostile_site_changes_nothing(void **state)
{
    fixture_t *f = *state;
    char out_a[300], out_b[300], path[500];
    moeh_proc_t *a[N_SITES];
    run_all(f, "clean", "3", NULL);
    snprintf(out_a, sizeof out_a, "%s", f->out);

    register_site_x(f);
    snprintf(out_b, sizeof out_b, "%s/attacked", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_b);
    moeh_proc_t *c = start_coordinator_ex(f, "3", "3", "4", NULL, "coordinator-b.log");
    start_all_agents(f, a, NULL);
    rogue_attack(f, f->endpoint);
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    snprintf(path, sizeof path, "%s/coordinator-b.log", f->logs);
    assert_true(file_contains(path, "refused a message from site-x"));

    assert_same_model(out_a, out_b);
}

/* Two of three sites are killed after sharing their keys: one masked update is fewer than the
 * threshold t = 2, so the attempt is aborted without unmasking anything; the retry has a
 * single live site, too few for a secure session, and the run fails with a clear message. */
static void test_secagg_too_few_survivors_aborts(void **state)
{
    fixture_t *f = *state;
    char *sa[] = {"--secagg", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "1", "3", NULL, "coordinator.log", sa);
    moeh_proc_t *a[N_SITES];
    char *kill_at[] = {"--fault-kill-secagg-round", "1", NULL};
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, k > 0 ? kill_at : NULL);
    }
    wait_exit(a[1], 60000, 128 + SIGKILL);
    wait_exit(a[2], 60000, 128 + SIGKILL);
    wait_exit(c, 60000, 1);
    wait_exit(a[0], 10000, 0);
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_true(file_contains(path, "round 1 train phase: secure aggregation: 1 sites completed "
                                    "the masked update step, 2 needed (threshold 2, quorum 1); "
                                    "retry 1 of 1"));
    assert_true(file_contains(path, "secure aggregation needs 2..512 participants, after 2 "
                                    "attempts"));
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 0);
    assert_true(isnan(metric(f->out, "train", 1, "sites"))); /* no sum was ever unmasked */
}

/* ---- secure aggregation against a late or confused site ---------------------------------- */

/* Like rogue_next, but keeps the site alive with heartbeats while it waits. */
static int rogue_next_alive(rogue_t *r, moeh_msg_t *m)
{
    int64_t end = moeh_now_ms() + 20000, hb = 0;
    for (;;) {
        assert_true(moeh_now_ms() < end);
        if (moeh_now_ms() - hb >= 200) {
            hb = moeh_now_ms();
            int hb_rc = moeh_wire_send_simple(r->sock, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 1);
            (void)hb_rc; /* a heartbeat that cannot go out now only delays the next one */
        }
        zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        moeh_err_t err = {0};
        int rc = moeh_wire_recv(r->sock, 0, &r->lim, m, &err);
        if (rc == -EAGAIN || (rc == 0 && m->env->type == MOEH__MSG_TYPE__HEARTBEAT)) {
            moeh_msg_clear(m);
            continue;
        }
        return rc;
    }
}

/* Sends env and expects an Error with `code` whose message contains needle (or needle2, if
 * not NULL); RoundStarts arriving first are skipped. */
static void rogue_expect_reply2(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf,
                                int code, const char *needle, const char *needle2)
{
    assert_int_equal(moeh_wire_send(r->sock, NULL, 0, env, f, nf), 0);
    moeh_msg_t m;
    assert_int_equal(rogue_next_alive(r, &m), 0);
    while (m.env->type == MOEH__MSG_TYPE__ROUND_START) { /* the next phase may overtake */
        moeh_msg_clear(&m);
        assert_int_equal(rogue_next_alive(r, &m), 0);
    }
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__ERROR);
    const char *alt = needle2 ? needle2 : needle;
    int found = strstr(m.env->error->message, needle) || strstr(m.env->error->message, alt);
    if (m.env->error->code != code || !found)
        print_error("expected error %d '%s', got %d: %s\n", code, needle, m.env->error->code,
                    m.env->error->message);
    assert_int_equal(m.env->error->code, code);
    assert_true(found);
    moeh_msg_clear(&m);
}

static void rogue_expect_reply(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf,
                               int code, const char *needle)
{
    rogue_expect_reply2(r, env, f, nf, code, needle, NULL);
}

/* A site (this test, using fed/moeh_secagg.h itself) takes part in round 1's secure aggregation
 * up to the forwarded shares, sends a message of another session and an incomplete set of
 * shares on the way,
 * then holds its masked update until the coordinator asked the survivors to unmask, and sends
 * it only then: it must be refused, and the round completes with the three real sites. */
static void secagg_rogue(fixture_t *f, int on_time)
{
    moeh_err_t err = {0};
    char log[400];
    char *sa[] = {"--secagg", "--deadline-ms", "4000", NULL};
    rogue_t r = {0};
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = rogue_join(f, &r, sa, a, log, sizeof log);
    moeh_msg_t m;
    /* statistics, securely summed: a clear StatsResult is refused, and this site stays out of
     * the session (its key step waits for it until the deadline, then goes on with three) */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__STATS);
    assert_non_null(m.env->round_start->secagg);
    moeh_msg_clear(&m);
    size_t nst = 3 * (size_t)r.lim.n_norm,
           nw = moeh_wire_secsum_len(&r.lim, MOEH__ROUND_TASK__TRAIN);
    double *st = calloc(nst, sizeof(double));
    Moeh__Envelope se = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    se.type = MOEH__MSG_TYPE__STATS_RESULT, se.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    se.stats_result = &sr;
    moeh_frame_t sf = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = nst};
    rogue_expect_reply(&r, &se, &sf, 1, -ESTALE, "travel masked");
    free(st);

    /* round 1: RoundStart{TRAIN, secagg} */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__ROUND_START);
    const Moeh__RoundStart *rs = m.env->round_start;
    assert_int_equal(rs->task, MOEH__ROUND_TASK__TRAIN);
    assert_non_null(rs->secagg);
    assert_int_equal(rs->secagg->n, 4);
    assert_int_equal(rs->secagg->t, 3);
    moeh_secagg_cfg_t cfg = {.round = rs->secagg->session,
                             .n = rs->secagg->n,
                             .t = rs->secagg->t,
                             .k = rs->secagg->k,
                             .graph_seed = rs->secagg->graph_seed,
                             .len = nw};
    uint32_t me = rs->secagg->id, round = rs->round;
    uint64_t version = rs->model_version;
    assert_true(rs->grant_uploads); /* --upload-slots 2 by default */
    moeh_msg_clear(&m);
    assert_int_equal(moeh_crypto_init(), 0);
    moeh_secagg_client_t *cl = NULL;
    assert_int_equal(moeh_secagg_client_create(&cfg, me, &cl, &err), 0);
    moeh_secagg_pubkeys_t pk;
    moeh_secagg_client_pubkeys(cl, &pk);
    Moeh__Envelope ae = MOEH__ENVELOPE__INIT;
    Moeh__SecaggAdvertise ad = MOEH__SECAGG_ADVERTISE__INIT;
    ad.c_pk = (ProtobufCBinaryData){32, pk.c_pk};
    ad.s_pk = (ProtobufCBinaryData){32, pk.s_pk};
    ae.type = MOEH__MSG_TYPE__SECAGG_ADVERTISE;
    ae.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE, ae.secagg_advertise = &ad;
    ad.session = cfg.round + 1; /* another session */
    rogue_expect_reply(&r, &ae, NULL, 0, -ESTALE, "not expected now");
    ad.session = cfg.round;
    /* (each wrong message goes out before the right one: the step waits for this live site,
     * so the reply cannot be overtaken by the next step's message) */
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &ae, NULL, 0), 0);

    /* keys -> shares */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__SECAGG_KEYS);
    const Moeh__SecaggKeys *ks = m.env->secagg_keys;
    assert_int_equal(ks->n_keys, 4);
    moeh_secagg_pubkeys_t keys[4];
    uint8_t present[4] = {0}, sent[4], cts[4 * MOEH_SECAGG_SHARE_CT_BYTES];
    for (size_t i = 0; i < ks->n_keys; i++) {
        memcpy(keys[ks->keys[i]->id].c_pk, ks->keys[i]->c_pk.data, 32);
        memcpy(keys[ks->keys[i]->id].s_pk, ks->keys[i]->s_pk.data, 32);
        present[ks->keys[i]->id] = 1;
    }
    moeh_msg_clear(&m);
    assert_int_equal(moeh_secagg_client_share_keys(cl, keys, present, cts, sent, &err), 0);
    Moeh__SecaggCipher ci[4], *cip[4];
    size_t nc = 0;
    for (uint32_t j = 0; j < 4; j++) {
        if (!sent[j]) continue;
        moeh__secagg_cipher__init(&ci[nc]);
        ci[nc].peer = j;
        ci[nc].ct =
            (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES, cts + j * MOEH_SECAGG_SHARE_CT_BYTES};
        cip[nc] = &ci[nc];
        nc++;
    }
    Moeh__Envelope she = MOEH__ENVELOPE__INIT;
    Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
    sh.session = cfg.round, sh.n_ciphers = nc, sh.ciphers = cip;
    she.type = MOEH__MSG_TYPE__SECAGG_SHARES;
    she.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES, she.secagg_shares = &sh;
    /* one ciphertext short of its neighbours: refused, then the full set */
    sh.n_ciphers = nc - 1;
    rogue_expect_reply(&r, &she, NULL, 0, -EBADMSG, "one ciphertext for each neighbour");
    sh.n_ciphers = nc;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &she, NULL, 0), 0);

    /* forwarded shares -> masked update, held back */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__SECAGG_SHARES);
    const Moeh__SecaggShares *fw = m.env->secagg_shares;
    uint8_t u2[4] = {0};
    for (size_t i = 0; i < fw->n_ciphers; i++)
        assert_int_equal(moeh_secagg_client_receive_share(cl, fw->ciphers[i]->peer,
                                                          fw->ciphers[i]->ct.data, &err),
                         0);
    for (size_t i = 0; i < fw->n_u2; i++)
        u2[fw->u2[i]] = 1;
    moeh_msg_clear(&m);
    uint32_t *words = calloc(nw, sizeof(uint32_t));
    assert_int_equal(moeh_secagg_client_mask(cl, words, words, u2, &err), 0);
    Moeh__Envelope ue = MOEH__ENVELOPE__INIT;
    Moeh__SecaggMasked u = MOEH__SECAGG_MASKED__INIT;
    u.session = cfg.round, u.round = round, u.model_version = version;
    u.task = MOEH__ROUND_TASK__TRAIN;
    ue.type = MOEH__MSG_TYPE__SECAGG_MASKED, ue.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED;
    ue.secagg_masked = &u;
    moeh_frame_t uf = {.name = "masked", .dtype = MOEH__DTYPE__U32, .data = words, .count = nw};
    if (on_time) {
        /* for another round, and of another session: refused; then the real one is taken and
         * a second copy is refused (the unmask request may come first: it is skipped) */
        u.round = round + 1;
        rogue_expect_reply(&r, &ue, &uf, 1, -ESTALE, "this session sums");
        u.round = round, u.session = cfg.round + 1;
        rogue_expect_reply(&r, &ue, &uf, 1, -ESTALE, "not expected now");
        u.session = cfg.round;
        /* the right one, but without a grant: refused (else the bound on uploads is void) */
        rogue_expect_reply(&r, &ue, &uf, 1, -ESTALE, "no upload slot was granted");
        /* announced for another session: refused; then announced right and granted */
        Moeh__Envelope re = MOEH__ENVELOPE__INIT;
        Moeh__UploadReady ur = MOEH__UPLOAD_READY__INIT;
        re.type = MOEH__MSG_TYPE__UPLOAD_READY, re.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
        re.upload_ready = &ur;
        ur.round = round, ur.model_version = version, ur.session = cfg.round + 1;
        rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "upload_ready: not expected now");
        ur.session = cfg.round;
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &re, NULL, 0), 0);
        assert_int_equal(rogue_next_alive(&r, &m), 0);
        assert_int_equal(m.env->type, MOEH__MSG_TYPE__UPLOAD_GRANT);
        assert_int_equal(m.env->upload_grant->session, cfg.round);
        assert_int_equal(m.env->upload_grant->round, round);
        moeh_msg_clear(&m);
        rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "duplicate upload_ready");
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &ue, &uf, 1), 0);
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &ue, &uf, 1), 0);
        for (;;) {
            assert_int_equal(rogue_next_alive(&r, &m), 0);
            if (m.env->type == MOEH__MSG_TYPE__ERROR) break;
            assert_true(m.env->type == MOEH__MSG_TYPE__SECAGG_UNMASK ||
                        m.env->type == MOEH__MSG_TYPE__ROUND_START);
            moeh_msg_clear(&m);
        }
        assert_int_equal(m.env->error->code, -ESTALE);
        assert_true(strstr(m.env->error->message, "duplicate") ||
                    strstr(m.env->error->message, "not expected now"));
        moeh_msg_clear(&m);
        /* this site then stays silent: the survivors' shares remove its self-mask */
    }
    int64_t end = moeh_now_ms() + 20000;
    while (!on_time &&
           !file_contains(log, "round 1: secure aggregation: 3 masked updates, 1 sites dropped")) {
        assert_true(moeh_now_ms() < end);
        assert_int_equal(moeh_wire_send_simple(r.sock, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 1),
                         0);
        assert_int_equal(moeh_proc_wait(c, 100), -ETIMEDOUT);
    }
    /* refused in the unmask step, or (if the survivors were quicker than this poll) in the
     * evaluation phase that follows: either way the sum never sees it */
    if (!on_time)
        rogue_expect_reply2(&r, &ue, &uf, 1, -ESTALE, "not expected now", "outside its phase");
    free(words);
    moeh_secagg_client_destroy(&cl);
    rogue_leave(&r);

    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    /* round 1 summed the rogue's vector only if it came on time; round 2 the three agents' */
    assert_summed(f->out, "train", 1, on_time ? 4 : 3, 4);
    assert_summed(f->out, "train", 2, 3, 3);
    metrics_t mt;
    read_metrics(f, &mt);
    assert_int_equal(mt.n_eval, 2);
}

static void test_secagg_late_update_refused(void **state)
{
    secagg_rogue(*state, 0);
}

/* The same site sends its masked vector on time, but first for another round and for another
 * session (both refused), then without an upload grant (refused), announces it for another
 * session (refused), then right and, once granted, sends it twice: the copy is refused, and
 * round 1 sums four sites (the rogue's zeros) with its self-mask removed by the survivors'
 * shares. */
static void test_secagg_masked_twice_refused(void **state)
{
    secagg_rogue(*state, 1);
}

/* Per-group aggregation end to end: with only the EHR-only and EHR + notes sites, no site
 * trains the image encoder, so it leaves the federation bit for bit as initialised, while the
 * notes encoder (trained by one site) and the gate (trained by both) change. */
static void test_untrained_group_unchanged(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    moeh_proc_t *c = start_coordinator_ex(f, "2", "2", "2", NULL, "coordinator.log");
    moeh_proc_t *a1 = start_agent(f, "site-1", "site-1", "site-1", NULL);
    moeh_proc_t *a2 = start_agent(f, "site-2", "site-2", "site-2", NULL);
    wait_exit(c, 60000, 0);
    wait_exit(a1, 10000, 0);
    wait_exit(a2, 10000, 0);

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
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 4);
    assert_true(m.test_loss[3] < m.test_loss[0]);
    assert_true(m.auroc_mean[3] > 0.55);
}

/* The federation-wide rows of OUT/metrics.jsonl (stats, train, eval, task, gate; the
 * wall-clock "seconds" left out), one canonical JSON line each, in order; and the number of
 * per-site rows (site_update, site_eval) and of rows saying they are unavailable. Caller frees. */
static char *global_rows(const char *out, int *site_rows, int *unavailable)
{
    char path[400], line[16384];
    size_t cap = 1u << 20, len = 0;
    char *buf = calloc(cap, 1);
    assert_non_null(buf);
    *site_rows = *unavailable = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        assert_non_null(ev);
        if (!strcmp(ev, "site_update") || !strcmp(ev, "site_eval")) (*site_rows)++;
        if (!strcmp(ev, "site_metrics") && cJSON_IsFalse(cJSON_GetObjectItem(j, "available")))
            (*unavailable)++;
        if (!strcmp(ev, "stats") || !strcmp(ev, "train") || !strcmp(ev, "eval") ||
            !strcmp(ev, "task") || !strcmp(ev, "gate")) {
            cJSON_DeleteItemFromObject(j, "seconds");
            char *t = cJSON_PrintUnformatted(j);
            size_t n = strlen(t);
            assert_true(len + n + 2 < cap);
            memcpy(buf + len, t, n);
            len += n;
            buf[len++] = '\n';
            free(t);
        }
        cJSON_Delete(j);
    }
    fclose(fp);
    return buf;
}

/* The global metrics of two runs are the same, value for value. */
static void assert_same_global_metrics(const char *out_a, const char *out_b)
{
    int sa, ua, sb, ub;
    char *a = global_rows(out_a, &sa, &ua), *b = global_rows(out_b, &sb, &ub);
    if (strcmp(a, b) != 0) print_error("metrics differ:\n%s\n---\n%s\n", a, b);
    assert_string_equal(a, b);
    assert_true(strstr(a, "\"event\":\"eval\"") != NULL);
    free(a);
    free(b);
}

/* Secure aggregation changes nothing in the result: the masks cancel exactly mod 2^32, so a
 * --secagg run ends with the model of the same run without it, bit for bit, and with the same
 * global metrics (normalisation from summed statistics, training loss from the summed header
 * values, AUROC from summed histograms, gate means), while the coordinator saw no site's
 * statistics, update header or evaluation in clear: no per-site row, and a row saying so. */
static void test_secagg_run_is_bit_exact(void **state)
{
    fixture_t *f = *state;
    char out_a[300], out_b[300], path[400];
    run_all(f, "plain", "3", NULL);
    snprintf(out_a, sizeof out_a, "%s", f->out);
    char *sa[] = {"--secagg", NULL};
    run_all(f, "secagg", "3", sa);
    snprintf(out_b, sizeof out_b, "%s", f->out);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    for (int r = 0; r < 3; r++)
        assert_int_equal(m.sites[r], N_SITES);
    assert_summed(out_b, "stats", -1, 3, -1);
    assert_summed(out_b, "train", 3, 3, 3);
    assert_summed(out_b, "eval", 3, 3, -1);
    snprintf(path, sizeof path, "%s/coordinator-secagg.log", f->logs);
    assert_false(file_contains(path, "refused"));
    assert_same_model(out_a, out_b);
    assert_same_global_metrics(out_a, out_b);
    int site_rows, unavailable;
    free(global_rows(out_a, &site_rows, &unavailable));
    assert_int_equal(site_rows, 2 * 3 * N_SITES); /* plain: one update and one eval per site */
    assert_int_equal(unavailable, 0);
    free(global_rows(out_b, &site_rows, &unavailable));
    assert_int_equal(site_rows, 0);
    assert_int_equal(unavailable, 3);
    /* each site logged its own evaluation instead */
    snprintf(path, sizeof path, "%s/site-1-as-site-1.log", f->logs);
    assert_true(file_contains(path, "round 3: this site's test loss"));
}

/* A site is SIGKILLed during the secure STATISTICS phase, after its shares went out and before
 * its masked vector: the survivors' sums are unmasked exactly, so the normalisation and then
 * the whole run equal, bit for bit and metric for metric, those of a plain run of the two
 * survivors alone. */
static void test_secagg_stats_dropout_exact(void **state)
{
    fixture_t *f = *state;
    char out_a[300], out_b[300], path[400];
    snprintf(out_a, sizeof out_a, "%s/plain2", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_a);
    moeh_proc_t *c = start_coordinator_ex(f, "2", "2", "2", NULL, "coordinator-a.log");
    moeh_proc_t *a1 = start_agent(f, "site-1", "site-1", "site-1", NULL);
    moeh_proc_t *a2 = start_agent(f, "site-2", "site-2", "site-2", NULL);
    wait_exit(c, 60000, 0);
    wait_exit(a1, 10000, 0);
    wait_exit(a2, 10000, 0);

    snprintf(out_b, sizeof out_b, "%s/secagg", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_b);
    char *sa[] = {"--secagg", NULL};
    c = start_coordinator_ex2(f, "2", "2", "3", NULL, "coordinator-b.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-at", "stats", 0);
    assert_summed(out_b, "stats", -1, 2, -1); /* the survivors' sums, once: no retry */
    snprintf(path, sizeof path, "%s/coordinator-b.log", f->logs);
    assert_false(file_contains(path, "retry"));
    assert_same_model(out_a, out_b);
    assert_same_global_metrics(out_a, out_b);
}

/* The sums of sites site-1 and site-2's test splits, scored by the model in OUT (model.npy and
 * the normalisation of checkpoint.moeh), as the agents score them: AUROC per task (slice 0)
 * and the test loss. */
static void survivors_eval(const fixture_t *f, double auroc[3], double *test_loss)
{
    moeh_err_t err = {0};
    char path[500];
    moeh_npy_t model;
    moeh_ckpt_t ck;
    snprintf(path, sizeof path, "%s/model.npy", f->out);
    assert_int_equal(moeh_npy_read(path, MOEH_DT_F32, 1, &model, &err), 0);
    snprintf(path, sizeof path, "%s/checkpoint.moeh", f->out);
    assert_int_equal(moeh_ckpt_load(path, &ck, &err), 0);
    const uint32_t bins = 1000, T = 3;
    size_t per_slice = (size_t)T * 2 * bins, nh = MOEH_N_SLICES * per_slice;
    uint32_t *h = calloc(nh, sizeof(uint32_t));
    uint64_t *sum = calloc(per_slice, sizeof(uint64_t));
    double loss = 0;
    uint64_t labels = 0;
    for (int k = 1; k <= 2; k++) {
        moeh_dataset_t *ds = NULL;
        moeh_trainer_t *t = NULL;
        snprintf(path, sizeof path, "%s/site-%d", f->data, k);
        assert_int_equal(moeh_dataset_open(path, false, &ds, &err), 0);
        moeh_moe_cfg_t mc = moeh_moe_defaults(ds->f_static, ds->f_ts);
        mc.n_steps = ds->t, mc.img_size = ds->img_size;
        mc.d_emb = 16, mc.d_hidden = 16, mc.note_buckets = 1024, mc.max_batch = 32, mc.seed = 1;
        assert_int_equal(moeh_trainer_create(&ds, &mc, &t, &err), 0);
        moeh_params_t *p = moeh_moe_params(moeh_trainer_model(t));
        assert_int_equal(model.shape[0], p->n);
        memcpy(p->w, model.data, p->n * sizeof(float));
        size_t nn = moeh_trainer_n_norm(t);
        const float *norm = moeh_ckpt_array(&ck, "norm", 2 * nn);
        assert_non_null(norm);
        moeh_trainer_set_norm(t, norm, norm + nn);
        /* round 1 is a warm-up round: the agents score with the model still in that phase */
        moeh_moe_set_phase(moeh_trainer_model(t), MOEH_PHASE_WARMUP);
        float *gate = calloc(MOEH_N_COMBOS * 64, sizeof(float));
        moeh_eval_sums_t es = {.hist = h, .gate_sum = gate};
        assert_int_equal(moeh_trainer_evaluate(t, MOEH_SPLIT_TEST, bins, &es, NULL, NULL, &err), 0);
        for (size_t i = 0; i < per_slice; i++)
            sum[i] += h[i];
        loss += es.loss_sum, labels += es.n_labels;
        free(gate);
        moeh_trainer_destroy(&t);
    }
    for (uint32_t t = 0; t < T; t++)
        auroc[t] =
            moeh_hist_auroc(sum + (size_t)t * 2 * bins, sum + ((size_t)t * 2 + 1) * bins, bins);
    *test_loss = loss / (double)labels;
    free(h);
    free(sum);
    moeh_ckpt_free(&ck);
    moeh_npy_free(&model);
}

/* A site is SIGKILLed during the secure EVALUATION of round 1 (after its shares, before its
 * masked vector): the round's metrics are exactly those of the two survivors' test splits
 * scored by the round's model, recomputed here from the datasets. */
static void test_secagg_eval_dropout_exact(void **state)
{
    fixture_t *f = *state;
    char *sa[] = {"--secagg", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "1", "2", "3", NULL, "coordinator.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-at", "eval:1", 0);
    char path[400], line[8192];
    assert_summed(f->out, "eval", 1, 2, -1);
    double auroc[3], loss;
    survivors_eval(f, auroc, &loss);
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int seen = 0;
    static const char *names[3] = {"auroc_mortality", "auroc_los7", "auroc_readmit30"};
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "event")), "eval")) {
            seen = 1;
            assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "sites")), 2);
            double tl = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "test_loss"));
            if (fabs(tl - loss) > 1e-6) print_error("test loss %.9f, expected %.9f\n", tl, loss);
            assert_true(fabs(tl - loss) <= 1e-6); /* metrics.jsonl prints 6 decimals */
            for (int t = 0; t < 3; t++) {
                double v = cJSON_GetNumberValue(cJSON_GetObjectItem(j, names[t]));
                if (fabs(v - auroc[t]) > 1e-6)
                    print_error("%s %.9f, expected %.9f\n", names[t], v, auroc[t]);
                assert_true(fabs(v - auroc[t]) <= 1e-6);
            }
        }
        cJSON_Delete(j);
    }
    fclose(fp);
    assert_true(seen);
}

/* SecAgg+ end to end: six sites (the three datasets twice, under six keys), each masking with
 * k = 4 neighbours and sharing its secrets 3-of-5: the run ends with the model and the
 * metrics of the same run without secure aggregation. */
static void test_secagg_k_neighbours(void **state)
{
    fixture_t *f = *state;
    moeh_err_t err = {0};
    char out_a[300], out_b[300], path[400];
    const char *six[] = {"site-1", "site-2", "site-3", "site-4", "site-5", "site-6"};
    for (int k = 3; k < 6; k++) {
        moeh_keypair_t *kp = NULL;
        snprintf(path, sizeof path, "%s/%s", f->keys, six[k]);
        assert_int_equal(moeh_keypair_generate(&kp), 0);
        assert_int_equal(moeh_keypair_write(kp, path, &err), 0);
        moeh_keypair_destroy(&kp);
    }
    write_registry(f, six, 6);
    moeh_proc_t *a[6];
    for (int run = 0; run < 2; run++) {
        char *out = run ? out_b : out_a;
        snprintf(out, 300, "%s/%s", f->dir, run ? "k4" : "plain");
        snprintf(f->out, sizeof f->out, "%s", out);
        char *sa[] = {"--secagg", "--secagg-k", "4", NULL};
        moeh_proc_t *c =
            start_coordinator_ex2(f, "2", "6", "6", NULL,
                                  run ? "coordinator-k4.log" : "coordinator.log", run ? sa : NULL);
        for (int k = 0; k < 6; k++)
            a[k] = start_agent(f, six[k], six[k % 3], six[k], NULL);
        wait_exit(c, 120000, 0);
        for (int k = 0; k < 6; k++)
            wait_exit(a[k], 10000, 0);
    }
    snprintf(path, sizeof path, "%s/coordinator-k4.log", f->logs);
    assert_true(file_contains(path, "round 2: secure aggregation: 6 masked updates, 0 sites "
                                    "dropped; asking the survivors for their shares (n = 6, k = 4, "
                                    "t = 3)"));
    assert_summed(out_b, "train", 2, 6, 6);
    assert_summed(out_b, "eval", 2, 6, -1);
    assert_same_model(out_a, out_b);
    assert_same_global_metrics(out_a, out_b);
}

/* --secagg-k is checked at start, with a message naming the constraint. */
static void test_secagg_k_refused(void **state)
{
    fixture_t *f = *state;
    const char *bad[][3] = {{"--secagg", "--secagg-k", "3"}, {"--secagg-k", "4", NULL}};
    const char *needle[] = {"--secagg-k 3: expected 0", "--secagg-k 4 needs --secagg"};
    char exe[2100], reg[400], key[400], log[400];
    moeh_err_t err = {0};
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", f->bin);
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    for (int i = 0; i < 2; i++) {
        snprintf(log, sizeof log, "%s/coordinator-%d.log", f->logs, i);
        char *argv[] = {exe,
                        "--bind",
                        "tcp://127.0.0.1:*",
                        "--registry",
                        reg,
                        "--key",
                        key,
                        "--out",
                        f->out,
                        (char *)bad[i][0],
                        (char *)bad[i][1],
                        (char *)bad[i][2],
                        NULL};
        moeh_proc_t *p = &f->procs[f->n_procs++];
        assert_int_equal(moeh_proc_spawn(p, "coordinator", argv, log, log, -1, &err), 0);
        wait_exit(p, 10000, 1);
        if (!file_contains(log, needle[i])) print_error("%s lacks '%s'\n", log, needle[i]);
        assert_true(file_contains(log, needle[i]));
    }
}

/* A site is SIGKILLed in round 2 after its shares went out and before its masked update: the
 * round completes by reconstructing its mask key from the two survivors' shares (n = 3,
 * t = 2), and the run goes on with two sites. */
static void test_secagg_dropout_unmasked(void **state)
{
    fixture_t *f = *state;
    char *sa[] = {"--secagg", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "3", "2", "3", NULL, "coordinator.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-round", "2", 0);
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    assert_int_equal(m.sites[0], 3);
    assert_int_equal(m.sites[1], 2);
    assert_int_equal(m.sites[2], 2);
    /* round 2 summed the two survivors' masked updates of its three members, at the first
     * attempt (a retry would have opened a session of the two survivors only) */
    assert_summed(f->out, "train", 2, 2, 3);
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_false(file_contains(path, "retry"));
}

/* ---- granted uploads (--upload-slots) ------------------------------------------------------ */

/* Counts the "uploads" rows of a run and the most uploads in flight any of them reports. */
static int upload_rows(const char *out, int *max_in_flight)
{
    char path[400], line[8192];
    int n = 0;
    *max_in_flight = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        if (ev && !strcmp(ev, "uploads")) {
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
        metrics_t m;
        read_metrics(f, &m);
        assert_int_equal(m.n_eval, 3);
        for (int r = 0; r < 3; r++)
            assert_int_equal(m.sites[r], 4);
        snprintf(path, sizeof path, "%s/%s", f->logs, log);
        assert_false(file_contains(path, "refused"));
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

/* A site joins declaring 10 training samples, takes part in round 1, then reconnects declaring
 * a million and sends an update whose group weight (1000) fits the new figure but not the
 * one counted when the phase opened: it is refused (it could otherwise widen its share of the
 * fixed-point range and wrap the sum), and the run completes with the three real sites. */
static void test_rejoin_cannot_raise_weight(void **state)
{
    fixture_t *f = *state;
    char log[400];
    register_site_x(f);
    char *push[] = {"--upload-slots", "0", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "3", "4", NULL, "coordinator.log", push);
    snprintf(log, sizeof log, "%s/coordinator.log", f->logs);
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    rogue_t r = {0};
    Moeh__Envelope env;
    Moeh__Hello h;
    rogue_connect(f, &r, f->endpoint, &env, &h);
    h.n_train = 10;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &env, NULL, 0), 0);
    moeh_msg_t m;
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    rogue_welcome(&r, &m);
    assert_int_equal(rogue_next_alive(&r, &m), 0); /* statistics: zeros */
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__STATS);
    moeh_msg_clear(&m);
    size_t nst = 3 * (size_t)r.lim.n_norm, nw = r.lim.n_params + r.lim.n_groups;
    double *st = calloc(nst, sizeof(double));
    Moeh__Envelope se = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    se.type = MOEH__MSG_TYPE__STATS_RESULT, se.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    se.stats_result = &sr;
    moeh_frame_t sf = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = nst};
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &se, &sf, 1), 0);
    free(st);
    assert_int_equal(rogue_next_alive(&r, &m), 0); /* round 1 opens with 10 samples counted */
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__TRAIN);
    uint32_t round = m.env->round_start->round;
    uint64_t version = m.env->round_start->model_version;
    moeh_msg_clear(&m);
    /* a new connection, the same key, a million samples */
    zmq_close(r.sock);
    zmq_ctx_term(r.ctx);
    rogue_connect(f, &r, f->endpoint, &env, &h);
    h.n_train = 1000000;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &env, NULL, 0), 0);
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    rogue_welcome(&r, &m);
    uint32_t *words = calloc(nw, sizeof(uint32_t));
    words[r.lim.n_params] = 1000; /* group 0's weight */
    Moeh__Envelope ue = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = round, u.model_version = version, u.n_samples = 1000;
    ue.type = MOEH__MSG_TYPE__UPDATE, ue.body_case = MOEH__ENVELOPE__BODY_UPDATE, ue.update = &u;
    moeh_frame_t uf = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = nw};
    rogue_expect_reply(&r, &ue, &uf, 1, -ERANGE,
                       "group 0 weight 1000 exceeds the 10 training samples");
    free(words);
    rogue_leave(&r);
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    metrics_t mt;
    read_metrics(f, &mt);
    assert_int_equal(mt.n_eval, 2);
    assert_true(file_contains(log, "site site-x rejoined"));
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
    /* statistics: pushed as always (all zero: this site has no rows) */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__STATS);
    assert_false(m.env->round_start->grant_uploads);
    moeh_msg_clear(&m);
    size_t nst = 3 * (size_t)r.lim.n_norm, nw = r.lim.n_params + r.lim.n_groups;
    double *st = calloc(nst, sizeof(double));
    Moeh__Envelope se = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    se.type = MOEH__MSG_TYPE__STATS_RESULT, se.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    se.stats_result = &sr;
    moeh_frame_t sf = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = nst};
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &se, &sf, 1), 0);
    free(st);

    /* round 1: RoundStart{TRAIN} asks for granted uploads */
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__ROUND_START);
    assert_int_equal(m.env->round_start->task, MOEH__ROUND_TASK__TRAIN);
    assert_true(m.env->round_start->grant_uploads);
    uint32_t round = m.env->round_start->round;
    uint64_t version = m.env->round_start->model_version;
    moeh_msg_clear(&m);
    uint32_t *words = calloc(nw, sizeof(uint32_t));
    Moeh__Envelope ue = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = round, u.model_version = version;
    ue.type = MOEH__MSG_TYPE__UPDATE, ue.body_case = MOEH__ENVELOPE__BODY_UPDATE, ue.update = &u;
    moeh_frame_t uf = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = nw};
    rogue_expect_reply(&r, &ue, &uf, 1, -ESTALE, "update: no upload slot was granted");
    Moeh__Envelope re = MOEH__ENVELOPE__INIT;
    Moeh__UploadReady ur = MOEH__UPLOAD_READY__INIT;
    re.type = MOEH__MSG_TYPE__UPLOAD_READY, re.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    re.upload_ready = &ur;
    ur.round = round + 1, ur.model_version = version;
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "stale upload_ready");
    ur.round = round, ur.session = 99;
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "not securely aggregated");
    ur.session = 0;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &re, NULL, 0), 0);
    assert_int_equal(rogue_next_alive(&r, &m), 0);
    assert_int_equal(m.env->type, MOEH__MSG_TYPE__UPLOAD_GRANT);
    assert_int_equal(m.env->upload_grant->round, round);
    assert_int_equal(m.env->upload_grant->model_version, version);
    assert_int_equal(m.env->upload_grant->session, 0);
    moeh_msg_clear(&m);
    rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "duplicate upload_ready");
    free(words);
    /* dies holding the slot: no upload, no bye */
    zmq_close(r.sock);
    zmq_ctx_term(r.ctx);

    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
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
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 3);
    assert_int_equal(m.sites[0], 3);
    assert_int_equal(m.sites[1], 2);
    assert_int_equal(m.sites[2], 2);
    assert_int_equal(m.n_gone, 1);
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_true(file_contains(path, "round 2: site site-2 held an upload slot; released"));
    assert_false(file_contains(path, "retry"));
    snprintf(path, sizeof path, "%s/site-2-as-site-2.log", f->logs);
    assert_true(file_contains(path, "killing myself on the upload grant of round 2"));
}

/* Pinned data shapes: the model is built at start, and a site whose data differs is refused
 * with a message naming both shapes; a malformed value stops the coordinator with a message. */
static void test_pinned_data_shape(void **state)
{
    fixture_t *f = *state;
    char *pin[] = {"--data-shape", "3,2,48,64", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "1", "1", NULL, "coordinator.log", pin);
    moeh_proc_t *a = start_agent(f, "site-1", "site-1", "site-1", NULL);
    wait_exit(a, 20000, 1);
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator.log", f->logs);
    assert_true(file_contains(path, "this federation's model expects 3, 2 x 48 and 64"));
    moeh_proc_stop(c, 5000);

    char exe[2100], reg[400], key[400], log[400];
    moeh_err_t err = {0};
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", f->bin);
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    snprintf(log, sizeof log, "%s/coordinator-bad.log", f->logs);
    char *argv[] = {exe,     "--bind", "tcp://127.0.0.1:*", "--registry", reg, "--key", key,
                    "--out", f->out,   "--data-shape",      "35,33",      NULL};
    moeh_proc_t *p = &f->procs[f->n_procs++];
    assert_int_equal(moeh_proc_spawn(p, "coordinator", argv, log, log, -1, &err), 0);
    wait_exit(p, 10000, 1);
    assert_true(file_contains(log, "expected STATIC,VARS,HOURS,IMAGE"));
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
    char path[400];
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
    char *ma = NULL, *mb = NULL;
    size_t la, lb;
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/model.npy", out_u);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &ma, &la, &err), 0);
    snprintf(path, sizeof path, "%s/model.npy", out_1);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &mb, &lb, &err), 0);
    assert_int_equal(la, lb);
    assert_memory_not_equal(ma, mb, la);
    free(ma);
    free(mb);
    snprintf(path, sizeof path, "%s/site-1-as-site-1.log", f->logs);
    assert_true(file_contains(path, "update L2 norm"));
    assert_true(file_contains(path, "DP: clipped to 0.5"));
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
    char exe[2100], reg[400], key[400], log[400];
    moeh_err_t err = {0};
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", f->bin);
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    snprintf(log, sizeof log, "%s/coordinator-refused.log", f->logs);
    char *other[] = {exe,
                     "--bind",
                     "tcp://127.0.0.1:*",
                     "--registry",
                     reg,
                     "--key",
                     key,
                     "--out",
                     f->out,
                     "--resume",
                     "--min-sites",
                     "3",
                     "--d-emb",
                     "16",
                     "--d-hidden",
                     "16",
                     "--note-buckets",
                     "1024",
                     "--batch-size",
                     "32",
                     "--dp-clip",
                     "0.5",
                     "--dp-noise",
                     "0.9",
                     NULL};
    moeh_proc_t *p = &f->procs[f->n_procs++];
    assert_int_equal(moeh_proc_spawn(p, "coordinator", other, log, log, -1, &err), 0);
    wait_exit(p, 10000, 1);
    assert_true(file_contains(log, "resume with the same values"));
    other[20] = NULL; /* without --dp-clip / --dp-noise */
    p = &f->procs[f->n_procs++];
    assert_int_equal(moeh_proc_spawn(p, "coordinator", other, log, log, -1, &err), 0);
    wait_exit(p, 10000, 1);
    assert_true(file_contains(log, "the run to resume used differential privacy"));

    char *resume[] = {"--resume", "--dp-clip", "0.5", "--dp-noise", "0.7", NULL};
    moeh_proc_t *c2 =
        start_coordinator_ex2(f, "4", "3", "3", endpoint, "coordinator-2.log", resume);
    wait_exit(c2, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    metrics_t m;
    read_metrics(f, &m); /* rounds 1-2 from the first process, 3-4 from the second */
    assert_int_equal(m.n_eval, 4);
    for (int r = 0; r < 4; r++) {
        assert_int_equal(m.dp_rounds[r], r + 1);
        assert_close(m.dp_epsilon[r], eps_after(0.7, (uint64_t)r + 1));
    }
    char path[400];
    snprintf(path, sizeof path, "%s/coordinator-2.log", f->logs);
    assert_true(file_contains(path, "DP: resuming after 2 released rounds"));
}

int main(void)
{
    setenv("OPENBLAS_NUM_THREADS", "1", 1); /* bit-exact comparisons across processes */
    if (getenv("MOEH_TEST_FILTER"))         /* e.g. MOEH_TEST_FILTER='test_secagg*' */
        cmocka_set_test_filter(getenv("MOEH_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_full_run_loss_falls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_agent_quorum_completes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregistered_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_quorum_fails_clearly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agents_survive_coordinator_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_clean_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_is_bit_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_is_bit_exact_fedadam, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_refuses_damaged_checkpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_admits_added_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_revokes_removed_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_site_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrained_group_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trimmed_mean_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_data_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_secagg, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_run_is_bit_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_dropout_unmasked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_late_update_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_masked_twice_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_too_few_survivors_aborts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_stats_dropout_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_eval_dropout_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_k_neighbours, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secagg_k_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_slots_bit_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsolicited_upload_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejoin_cannot_raise_weight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_granted_site_killed_releases_slot, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
