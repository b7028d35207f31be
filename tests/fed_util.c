/* fed_util.c - the helpers shared by the multi-process federation tests (fed_util.h),
 * compiled into each of them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "fed_util.h"

#include "synth_fixture.h"

/* Shared by every test: the site datasets and the keys (read-only). */
static char g_shared[256];

int fed_group_setup(void **state)
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

int fed_group_teardown(void **state)
{
    return moeh_test_rmtree(g_shared);
}

int fed_setup(void **state)
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

int fed_teardown(void **state)
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
moeh_proc_t *start_coordinator_ex2(fixture_t *f, const char *rounds, const char *min_sites,
                                   const char *wait_sites, const char *bind, const char *log_name,
                                   char *const more[])
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
                      "--join-window",
                      "30s",
                      "--final-wait", /* a killed site does not come back: no minute's wait */
                      "5s",
                      "--no-secagg", /* the daemon's default is on: tests ask for it (--secagg) */
                      "--secagg-allow-2",   /* the tests' 2-site rounds (not a deployment) */
                      "--per-site-metrics", /* plain-mode tests read the per-site rows */
                      "--max-retries",
                      "1",
                      "--local-epochs",
                      "2",
                      "--lr",
                      "0.003",
                      FED_MODEL_ARGS,
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

moeh_proc_t *start_coordinator_ex(fixture_t *f, const char *rounds, const char *min_sites,
                                  const char *wait_sites, const char *bind, const char *log_name)
{
    return start_coordinator_ex2(f, rounds, min_sites, wait_sites, bind, log_name, NULL);
}

moeh_proc_t *start_coordinator(fixture_t *f, const char *rounds, const char *min_sites)
{
    return start_coordinator_ex(f, rounds, min_sites, "3", NULL, "coordinator.log");
}

/* Starts an agent claiming site_id with the key file of key_site (so that the two may differ). */
moeh_proc_t *start_agent(fixture_t *f, const char *site_id, const char *data_site,
                         const char *key_site, char *const extra[])
{
    char ds[400], key[400], pub[400], log[400], out[400];
    snprintf(ds, sizeof ds, "%s/%s", f->data, data_site);
    snprintf(out, sizeof out, "%s/site-out/%s", f->dir, site_id); /* the agent's --out */
    snprintf(key, sizeof key, "%s/%s.key", f->keys, key_site);
    snprintf(pub, sizeof pub, "%s/coordinator.pub", f->keys);
    snprintf(log, sizeof log, "%s/%s-as-%s.log", f->logs, key_site, site_id);
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    int rc = moeh_localfed_start_agent(p, f->bin, f->endpoint, site_id, ds, out, key, pub, extra,
                                       log, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return p;
}

/* A number of a metrics line, NAN when absent or null. */
double jget(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* OUT/metrics.jsonl, opened for metrics_next (the test fails if it is missing). */
FILE *metrics_open(const char *out)
{
    char path[400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *fp = fopen(path, "r");
    if (!fp) print_error("%s: cannot open\n", path);
    assert_non_null(fp);
    return fp;
}

/* The next line of a metrics file as a JSON object (the caller deletes it) with its "event"
 * in *ev, or NULL at the end; a line that is not such an object fails the test. */
cJSON *metrics_next(FILE *fp, char *line, size_t cap, const char **ev)
{
    if (!fgets(line, (int)cap, fp)) return NULL;
    cJSON *j = cJSON_Parse(line);
    assert_non_null(j);
    *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
    assert_non_null(*ev);
    return j;
}

/* The number `key` of the first metrics line of `event` for `round` (any round if < 0) in
 * OUT/metrics.jsonl; NAN if there is none. */
double metric(const char *out, const char *event, int round, const char *key)
{
    char line[8192];
    double v = NAN;
    FILE *fp = metrics_open(out);
    const char *ev;
    cJSON *j;
    while (isnan(v) && (j = metrics_next(fp, line, sizeof line, &ev))) {
        if (!strcmp(ev, event) && (round < 0 || jget(j, "round") == round)) v = jget(j, key);
        cJSON_Delete(j);
    }
    fclose(fp);
    return v;
}

/* A securely aggregated phase summed `sites` masked vectors of `members` (the others dropped),
 * as its metrics line says. */
void assert_summed(const char *out, const char *event, int round, int sites, int members)
{
    assert_int_equal((int)metric(out, event, round, "sites"), sites);
    if (members >= 0) assert_int_equal((int)metric(out, event, round, "participants"), members);
}

void read_metrics(const fixture_t *f, metrics_t *m)
{
    char line[8192];
    memset(m, 0, sizeof *m);
    FILE *fp = metrics_open(f->out);
    const char *ev;
    cJSON *j;
    while ((j = metrics_next(fp, line, sizeof line, &ev))) {
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

void assert_round_sites(const fixture_t *f, const char *sites, int n_gone)
{
    metrics_t m;
    read_metrics(f, &m);
    int n = (int)strlen(sites);
    if (m.n_eval != n) print_error("%d evaluated rounds, expected %d\n", m.n_eval, n);
    assert_int_equal(m.n_eval, n);
    for (int r = 0; r < n; r++) {
        if (m.sites[r] != sites[r] - '0')
            print_error("round %d: %d sites, expected %c\n", r + 1, m.sites[r], sites[r]);
        assert_int_equal(m.sites[r], sites[r] - '0');
    }
    if (n_gone >= 0) assert_int_equal(m.n_gone, n_gone);
}

void coordinator_exits(fixture_t *f, const char *log_name, char *const args[], int code)
{
    char exe[2100], reg[400], key[400], log[400];
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", f->bin);
    snprintf(reg, sizeof reg, "%s/registry.ini", f->keys);
    snprintf(key, sizeof key, "%s/coordinator.key", f->keys);
    snprintf(log, sizeof log, "%s/%s", f->logs, log_name);
    char *argv[64] = {exe,     "--bind", "tcp://127.0.0.1:*", "--registry", reg, "--key", key,
                      "--out", f->out};
    int n = 9;
    for (int i = 0; args[i]; i++) {
        assert_true(n < 63);
        argv[n++] = args[i];
    }
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    assert_int_equal(moeh_proc_spawn(p, "coordinator", argv, log, log, -1, &err), 0);
    wait_exit(p, 20000, code);
}

void wait_exit(moeh_proc_t *p, int timeout_ms, int want_code)
{
    int rc = moeh_proc_wait(p, timeout_ms);
    if (rc) print_error("%s did not exit within %d ms\n", p->name, timeout_ms);
    assert_int_equal(rc, 0);
    if (moeh_proc_exit_code(p) != want_code)
        print_error("%s exited with %d, expected %d\n", p->name, moeh_proc_exit_code(p), want_code);
    assert_int_equal(moeh_proc_exit_code(p), want_code);
}

/* Starts the three agents, site `victim` (0..2) with the fault option `opt value`; waits for
 * it to die by SIGKILL, for the coordinator c to exit with coord_rc, then for the two other
 * agents to exit 0. */
void run_with_victim(fixture_t *f, moeh_proc_t *c, int victim, const char *opt, const char *value,
                     int coord_rc)
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
    for (int k = 0; k < N_SITES; k++) {
        if (k == victim) continue;
        if (coord_rc == 0) {
            wait_exit(a[k], 10000, 0);
        } else { /* a failed run is paused, not finished: the agents wait for --resume */
            char id[16];
            snprintf(id, sizeof id, "site-%d", k + 1);
            stop_paused_agent(f, a[k], id);
        }
    }
}

void wait_log_of(const fixture_t *f, moeh_proc_t *p, const char *log_name, const char *needle)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", f->logs, log_name);
    int64_t end = moeh_now_ms() + 20000;
    while (!file_contains(path, needle)) {
        if (moeh_now_ms() >= end) print_error("%s: no '%s' within 20 s\n", path, needle);
        assert_true(moeh_now_ms() < end);
        assert_int_equal(moeh_proc_wait(p, 20), -ETIMEDOUT); /* still running */
    }
}

void stop_paused_agent(const fixture_t *f, moeh_proc_t *a, const char *site)
{
    char log[200];
    snprintf(log, sizeof log, "%s-as-%s.log", site, site);
    wait_log_of(f, a, log, "the coordinator paused the run");
    assert_int_equal(moeh_proc_wait(a, 0), -ETIMEDOUT); /* it did not exit on the pause */
    moeh_proc_signal(a, SIGTERM);
    wait_exit(a, 10000, MOEH_EXIT_INTERRUPTED);
}

int file_contains(const char *path, const char *needle)
{
    char *buf = NULL;
    size_t len;
    moeh_err_t err = {0};
    if (moeh_file_read_all(path, 1 << 22, &buf, &len, &err) != 0) return 0;
    int found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

int log_count(const fixture_t *f, const char *log_name, const char *needle)
{
    char path[400], *buf = NULL;
    size_t len;
    moeh_err_t err = {0};
    int n = 0;
    snprintf(path, sizeof path, "%s/%s", f->logs, log_name);
    if (moeh_file_read_all(path, 1 << 22, &buf, &len, &err) != 0) return 0;
    for (const char *p = strstr(buf, needle); p; p = strstr(p + 1, needle))
        n++;
    free(buf);
    return n;
}

int log_contains(const fixture_t *f, const char *log_name, const char *needle)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", f->logs, log_name);
    return file_contains(path, needle);
}

/* The final models of two runs (OUT/model.npy) are equal byte for byte (same != 0) or differ
 * (same == 0) in content of one size. */
void assert_models(const char *out_a, const char *out_b, int same)
{
    char path[400], *ma = NULL, *mb = NULL;
    size_t la, lb;
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/model.npy", out_a);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &ma, &la, &err), 0);
    snprintf(path, sizeof path, "%s/model.npy", out_b);
    assert_int_equal(moeh_file_read_all(path, 1u << 28, &mb, &lb, &err), 0);
    assert_int_equal(la, lb);
    if (same)
        assert_memory_equal(ma, mb, la);
    else
        assert_memory_not_equal(ma, mb, la);
    free(ma);
    free(mb);
}

void start_all_agents(fixture_t *f, moeh_proc_t **a, char *const extra[])
{
    for (int k = 0; k < N_SITES; k++) {
        char id[16];
        snprintf(id, sizeof id, "site-%d", k + 1);
        a[k] = start_agent(f, id, id, id, extra);
    }
}

/* Waits for the coordinator c to finish the run (exit 0) and then for every agent of a to
 * leave on its bye (exit 0). */
void wait_run(moeh_proc_t *c, moeh_proc_t **a)
{
    wait_exit(c, 60000, 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
}

/* Runs a federation of the three sites with the given coordinator options into f->dir/name. */
void run_two_sites(fixture_t *f, const char *rounds, const char *log_name)
{
    moeh_proc_t *c = start_coordinator_ex(f, rounds, "2", "2", NULL, log_name);
    moeh_proc_t *a1 = start_agent(f, "site-1", "site-1", "site-1", NULL);
    moeh_proc_t *a2 = start_agent(f, "site-2", "site-2", "site-2", NULL);
    wait_exit(c, 60000, 0);
    wait_exit(a1, 10000, 0);
    wait_exit(a2, 10000, 0);
}

void run_all(fixture_t *f, const char *name, const char *rounds, char *const more[])
{
    char log[64];
    moeh_proc_t *a[N_SITES];
    snprintf(f->out, sizeof f->out, "%s/%s", f->dir, name);
    snprintf(log, sizeof log, "coordinator-%s.log", name);
    moeh_proc_t *c = start_coordinator_ex2(f, rounds, "3", "3", NULL, log, more);
    start_all_agents(f, a, NULL);
    wait_run(c, a);
}

/* Rewrites the test's registry to admit exactly the given sites (by their public keys). */
void write_registry(const fixture_t *f, const char *const *sites, size_t n)
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

/* Says Bye (delivered: linger 1 s) and closes r. */
void rogue_leave(rogue_t *r)
{
    assert_int_equal(moeh_wire_send_simple(r->sock, NULL, 0, MOEH__MSG_TYPE__BYE, "done", 0), 0);
    int linger = 1000;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

/* Registers a fourth site, "site-x", with a fresh key (the three real sites keep theirs). */
void register_site_x(fixture_t *f)
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

/* Makes sock a CURVE client with site-x's key pair, expecting the coordinator's public key
 * (both from f->keys). */
static void site_x_curve(const fixture_t *f, void *sock)
{
    moeh_err_t err = {0};
    char path[400], pub[MOEH_Z85_KEY_LEN + 1];
    moeh_keypair_t *kp = NULL;
    snprintf(path, sizeof path, "%s/site-x.key", f->keys);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), 0);
    snprintf(path, sizeof path, "%s/coordinator.pub", f->keys);
    assert_int_equal(moeh_pubkey_read(path, pub, &err), 0);
    assert_int_equal(moeh_curve_client(sock, kp, pub), 0);
    moeh_keypair_destroy(&kp);
}

/* Connects r to endpoint over CURVE with site-x's key and builds its Hello: site-1's data
 * shapes and no training rows (weight 0: its zeros change no sum). */
void rogue_connect(fixture_t *f, rogue_t *r, const char *endpoint, Moeh__Envelope *env,
                   Moeh__Hello *h)
{
    moeh_err_t err = {0};
    char path[400];
    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof linger);
    site_x_curve(f, r->sock);
    assert_int_equal(zmq_connect(r->sock, endpoint), 0);
    moeh_dataset_t *ds = NULL;
    snprintf(path, sizeof path, "%s/site-1", f->data);
    assert_int_equal(moeh_dataset_open(path, false, &ds, &err), 0);
    moeh__hello__init(h);
    h->site_id = "site-x";
    h->n_features = (uint32_t)ds->f_static, h->n_vars = (uint32_t)ds->f_ts;
    h->n_steps = (uint32_t)ds->t, h->img_size = (uint32_t)ds->img_size;
    moeh_dataset_destroy(&ds);
    moeh_env_hello(env, h);
}

/* Takes r->lim from a Welcome (the message m, which is cleared). */
void rogue_welcome(rogue_t *r, moeh_msg_t *m)
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
char **rogue_opts(char **extra, char **buf, size_t cap)
{
    size_t n = 0;
    for (; extra && extra[n] && n + 2 < cap; n++)
        buf[n] = extra[n];
    buf[n++] = "--no-validate"; /* a rogue plays the TRAIN and EVALUATE phases only */
    buf[n] = NULL;
    return buf;
}

moeh_proc_t *rogue_join(fixture_t *f, rogue_t *r, char **extra, moeh_proc_t *a[N_SITES], char *log,
                        size_t log_len)
{
    register_site_x(f);
    char *more[32];
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "3", "4", NULL, "coordinator.log",
                                           rogue_opts(extra, more, 32));
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

/* ---- a rogue site waiting for and expecting replies -------------------------------------- */

/* Like rogue_next, but keeps the site alive with heartbeats while it waits. */
int rogue_next_alive(rogue_t *r, moeh_msg_t *m)
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

void rogue_send_stream(rogue_t *r, uint64_t stream, Moeh__Envelope *env, const moeh_frame_t *f,
                       size_t nf)
{
    moeh_stream_tx_t tx = {0};
    assert_int_equal(moeh_stream_tx_begin(&tx, stream, env, f, nf), 0);
    while (moeh_stream_tx_active(&tx)) {
        Moeh__Envelope ce;
        Moeh__UploadChunk ch;
        while (moeh_stream_tx_next(&tx, &ce, &ch))
            assert_int_equal(moeh_wire_send(r->sock, NULL, 0, &ce, NULL, 0), 0);
        if (!moeh_stream_tx_active(&tx)) break;
        moeh_msg_t m;
        assert_int_equal(rogue_next_alive(r, &m), 0);
        if (m.env->type == MOEH__MSG_TYPE__ERROR)
            print_error("the upload was refused: %s\n", m.env->error->message);
        assert_int_equal(m.env->type, MOEH__MSG_TYPE__UPLOAD_CREDIT);
        assert_int_equal(
            moeh_stream_tx_credit(&tx, m.env->upload_credit->stream, m.env->upload_credit->up_to),
            0);
        moeh_msg_clear(&m);
    }
    moeh_stream_tx_clear(&tx);
}

/* Sends env and expects an Error with `code` whose message contains needle (or needle2, if
 * not NULL); RoundStarts arriving first are skipped. */
void rogue_expect_reply2(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf,
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

void rogue_expect_reply(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf, int code,
                        const char *needle)
{
    rogue_expect_reply2(r, env, f, nf, code, needle, NULL);
}

/* The federation-wide rows of OUT/metrics.jsonl (stats, train, eval, task, gate; the
 * wall-clock "seconds" left out), one canonical JSON line each, in order; and the number of
 * per-site rows (site_update, site_eval) and of rows saying they are unavailable. Caller frees. */
char *global_rows(const char *out, int *site_rows, int *unavailable)
{
    char line[16384];
    size_t cap = 1u << 20, len = 0;
    char *buf = calloc(cap, 1);
    assert_non_null(buf);
    *site_rows = *unavailable = 0;
    FILE *fp = metrics_open(out);
    const char *ev;
    cJSON *j;
    while ((j = metrics_next(fp, line, sizeof line, &ev))) {
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
void assert_same_global_metrics(const char *out_a, const char *out_b)
{
    int sa, ua, sb, ub;
    char *a = global_rows(out_a, &sa, &ua), *b = global_rows(out_b, &sb, &ub);
    if (strcmp(a, b) != 0) print_error("metrics differ:\n%s\n---\n%s\n", a, b);
    assert_string_equal(a, b);
    assert_true(strstr(a, "\"event\":\"eval\"") != NULL);
    free(a);
    free(b);
}

void fed_main_init(void)
{
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    if (getenv("MOEH_TEST_FILTER")) cmocka_set_test_filter(getenv("MOEH_TEST_FILTER"));
}

void rogue_send_expect(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf, int code,
                       const char *needle)
{
    if (needle)
        rogue_expect_reply(r, env, f, nf, code, needle);
    else
        assert_int_equal(moeh_wire_send(r->sock, NULL, 0, env, f, nf), 0);
}

void rogue_stats(rogue_t *r, const double first[3], int code, const char *needle)
{
    size_t nst = 3 * (size_t)r->lim.n_norm;
    double *st = calloc(nst, sizeof(double));
    assert_non_null(st);
    if (first) memcpy(st, first, 3 * sizeof(double));
    Moeh__Envelope se;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    moeh_env_stats_result(&se, &sr);
    moeh_frame_t sf = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = nst};
    rogue_send_expect(r, &se, &sf, 1, code, needle);
    free(st);
}

void rogue_send_zero_stats(rogue_t *r)
{
    rogue_stats(r, NULL, 0, NULL);
}

void rogue_expect(rogue_t *r, moeh_msg_t *m, Moeh__MsgType type)
{
    assert_int_equal(rogue_next_alive(r, m), 0);
    if (m->env->type != type)
        print_error("the rogue site got message type %d, expected %d\n", (int)m->env->type,
                    (int)type);
    assert_int_equal(m->env->type, type);
}

const Moeh__RoundStart *rogue_next_round(rogue_t *r, moeh_msg_t *m, Moeh__RoundTask task)
{
    rogue_expect(r, m, MOEH__MSG_TYPE__ROUND_START);
    assert_int_equal(m->env->round_start->task, task);
    return m->env->round_start;
}

/* A DEALER of site-x's key (registered, so CURVE and ZAP admit it) on f->endpoint that keeps at
 * most one message and ~1 KiB of kernel buffer for reading, and never reads. */
void *fed_flood_socket(fixture_t *f, void *ctx)
{
    return fed_flood_socket_ivl(f, ctx, 100);
}

void *fed_flood_socket_ivl(fixture_t *f, void *ctx, int reconnect_ms)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0, one = 1, rcvbuf = 1024;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    /* set before zmq_connect: a connection takes its options when it is made */
    assert_int_equal(zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &reconnect_ms, sizeof reconnect_ms), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_RCVHWM, &one, sizeof one), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    site_x_curve(f, s);
    assert_int_equal(zmq_connect(s, f->endpoint), 0);
    return s;
}
