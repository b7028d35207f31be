/* test_fed_secagg.c - multi-process tests of secure aggregation (see test_federation.c and
 * fed_util.h for the setting): with --secagg the final model equals the plain run's bit for
 * bit; a site killed after sharing its keys is unmasked from the survivors' shares; a site that
 * holds its masked update until the unmask request is refused; a masked vector for another
 * round, of another session, or sent twice is refused and the sum stays exact; too few
 * survivors abort; statistics and evaluation survive dropouts exactly; SecAgg+ (k neighbours);
 * keys first (a site shares its keys before it trains); each site makes its share key once a
 * run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

/* Two of three sites are killed after sharing their keys: one masked update is fewer than the
 * threshold t = 2, so the attempt is aborted without unmasking anything; a single live site
 * is too few for a secure session: the coordinator waits for more within its outage budget
 * (2 s here), and the run fails with a clear message. */
static void test_secagg_too_few_survivors_aborts(void **state)
{
    fixture_t *f = *state;
    char *sa[] = {"--secagg", "--secagg-allow-2", "--outage-budget", "2s", NULL};
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
    stop_paused_agent(f, a[0], "site-1"); /* a failed run is paused: site-1 waits for --resume */
    const char *log = "coordinator.log";
    assert_true(log_contains(f, log,
                             "round 1 train phase: secure aggregation: 1 sites completed "
                             "the masked update step, 2 needed (threshold 2, quorum 1)"));
    assert_true(log_contains(f, log, "longer than --outage-budget") ||
                log_contains(f, log, "after 2 attempts"));
    metrics_t m;
    read_metrics(f, &m);
    assert_int_equal(m.n_eval, 0);
    assert_true(isnan(metric(f->out, "train", 1, "sites"))); /* no sum was ever unmasked */
}

/* ---- secure aggregation against a late or confused site ---------------------------------- */

/* A site (this test, using fed/moeh_secagg.h itself) takes part in round 1's secure aggregation
 * up to the forwarded shares, sends a message of another session and an incomplete set of
 * shares on the way,
 * then holds its masked update until the coordinator asked the survivors to unmask, and sends
 * it only then: it must be refused, and the round completes with the three real sites. */
static void secagg_rogue(fixture_t *f, int on_time)
{
    moeh_err_t err = {0};
    char log[400];
    char *sa[] = {"--secagg", "--secagg-allow-2", "--deadline-ms", "4000", NULL};
    rogue_t r = {0};
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = rogue_join(f, &r, sa, a, log, sizeof log);
    moeh_msg_t m;
    /* statistics, securely summed: a clear StatsResult is refused, and this site stays out of
     * the session (its key step waits for it until the deadline, then goes on with three) */
    assert_non_null(rogue_next_round(&r, &m, MOEH__ROUND_TASK__STATS)->secagg);
    moeh_msg_clear(&m);
    size_t nw = moeh_wire_secsum_len(&r.lim, MOEH__ROUND_TASK__TRAIN);
    rogue_stats(&r, NULL, -ESTALE, "travel masked");

    /* round 1: RoundStart{TRAIN, secagg} */
    const Moeh__RoundStart *rs = rogue_next_round(&r, &m, MOEH__ROUND_TASK__TRAIN);
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
    Moeh__Envelope ae;
    Moeh__SecaggAdvertise ad = MOEH__SECAGG_ADVERTISE__INIT;
    ad.c_pk = (ProtobufCBinaryData){32, pk.c_pk};
    ad.s_pk = (ProtobufCBinaryData){32, pk.s_pk};
    moeh_env_secagg_advertise(&ae, &ad);
    ad.session = cfg.round + 1; /* another session */
    rogue_expect_reply(&r, &ae, NULL, 0, -ESTALE, "not expected now");
    ad.session = cfg.round;
    /* (each wrong message goes out before the right one: the step waits for this live site,
     * so the reply cannot be overtaken by the next step's message) */
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &ae, NULL, 0), 0);

    /* keys -> shares */
    rogue_expect(&r, &m, MOEH__MSG_TYPE__SECAGG_KEYS);
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
    Moeh__Envelope she;
    Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
    sh.session = cfg.round, sh.n_ciphers = nc, sh.ciphers = cip;
    moeh_env_secagg_shares(&she, &sh);
    /* one ciphertext short of its neighbours: refused, then the full set */
    sh.n_ciphers = nc - 1;
    rogue_expect_reply(&r, &she, NULL, 0, -EBADMSG, "one ciphertext for each neighbour");
    sh.n_ciphers = nc;
    assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &she, NULL, 0), 0);

    /* forwarded shares -> masked update, held back */
    rogue_expect(&r, &m, MOEH__MSG_TYPE__SECAGG_SHARES);
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
    Moeh__Envelope ue;
    Moeh__SecaggMasked u = MOEH__SECAGG_MASKED__INIT;
    u.session = cfg.round, u.round = round, u.model_version = version;
    u.task = MOEH__ROUND_TASK__TRAIN;
    moeh_env_secagg_masked(&ue, &u);
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
        Moeh__Envelope re;
        Moeh__UploadReady ur = MOEH__UPLOAD_READY__INIT;
        moeh_env_upload_ready(&re, &ur);
        ur.round = round, ur.model_version = version, ur.session = cfg.round + 1;
        rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "upload_ready: not expected now");
        ur.session = cfg.round;
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &re, NULL, 0), 0);
        rogue_expect(&r, &m, MOEH__MSG_TYPE__UPLOAD_GRANT);
        assert_int_equal(m.env->upload_grant->session, cfg.round);
        assert_int_equal(m.env->upload_grant->round, round);
        moeh_msg_clear(&m);
        rogue_expect_reply(&r, &re, NULL, 0, -ESTALE, "duplicate upload_ready");
        /* granted, but whole (protocol 6): refused, the grant stays; then in chunks */
        rogue_expect_reply(&r, &ue, &uf, 1, -EBADMSG, "travels in upload_chunks");
        rogue_send_stream(&r, round + 1, &ue, &uf, 1); /* stream: round + 1 */
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &ue, &uf, 1), 0);
        for (;;) {
            assert_int_equal(rogue_next_alive(&r, &m), 0);
            if (m.env->type == MOEH__MSG_TYPE__ERROR) break;
            assert_true(m.env->type == MOEH__MSG_TYPE__SECAGG_UNMASK ||
                        m.env->type == MOEH__MSG_TYPE__ROUND_START ||
                        m.env->type == MOEH__MSG_TYPE__UPLOAD_CREDIT); /* late ones */
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

    wait_run(c, a);
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

/* Secure aggregation changes nothing in the result: the masks cancel exactly mod 2^32, so a
 * --secagg run ends with the model of the same run without it, bit for bit, and with the same
 * global metrics (normalisation from summed statistics, training loss from the summed header
 * values, AUROC from summed histograms, gate means), while the coordinator saw no site's
 * statistics, update header or evaluation in clear: no per-site row, and a row saying so. */
static void test_secagg_run_is_bit_exact(void **state)
{
    fixture_t *f = *state;
    char out_a[300], out_b[300];
    run_all(f, "plain", "3", NULL);
    snprintf(out_a, sizeof out_a, "%s", f->out);
    char *sa[] = {"--secagg", "--secagg-allow-2", NULL}; /* dropouts leave 2 */
    run_all(f, "secagg", "3", sa);
    snprintf(out_b, sizeof out_b, "%s", f->out);
    assert_round_sites(f, "333", -1);
    assert_summed(out_b, "stats", -1, 3, -1);
    assert_summed(out_b, "train", 3, 3, 3);
    assert_summed(out_b, "eval", 3, 3, -1);
    assert_false(log_contains(f, "coordinator-secagg.log", "refused"));
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
    assert_true(log_contains(f, "site-1-as-site-1.log", "round 3: this site's test loss"));
    /* and made its share key once for the run's seven sessions (STATS, then TRAIN and
     * VALIDATE of three rounds): protocol 10 keeps it */
    for (int k = 1; k <= N_SITES; k++) {
        char log[64];
        snprintf(log, sizeof log, "site-%d-as-site-%d.log", k, k);
        assert_int_equal(log_count(f, log, "made this process's share key"), 1);
    }
}

/* A site is SIGKILLed during the secure STATISTICS phase, after its shares went out and before
 * its masked vector: the survivors' sums are unmasked exactly, so the normalisation and then
 * the whole run equal, bit for bit and metric for metric, those of a plain run of the two
 * survivors alone. */
static void test_secagg_stats_dropout_exact(void **state)
{
    fixture_t *f = *state;
    char out_a[300], out_b[300];
    snprintf(out_a, sizeof out_a, "%s/plain2", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_a);
    run_two_sites(f, "2", "coordinator-a.log");

    snprintf(out_b, sizeof out_b, "%s/secagg", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_b);
    char *sa[] = {"--secagg", "--secagg-allow-2", NULL}; /* dropouts leave 2 */
    moeh_proc_t *c = start_coordinator_ex2(f, "2", "2", "3", NULL, "coordinator-b.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-at", "stats", 0);
    assert_summed(out_b, "stats", -1, 2, -1); /* the survivors' sums, once: no retry */
    assert_false(log_contains(f, "coordinator-b.log", "retry"));
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
    char *sa[] = {"--secagg", "--secagg-allow-2", NULL}; /* dropouts leave 2 */
    moeh_proc_t *c = start_coordinator_ex2(f, "1", "2", "3", NULL, "coordinator.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-at", "eval:1", 0);
    char line[8192];
    assert_summed(f->out, "eval", 1, 2, -1);
    double auroc[3], loss;
    survivors_eval(f, auroc, &loss);
    FILE *fp = metrics_open(f->out);
    int seen = 0;
    static const char *names[3] = {"auroc_mortality", "auroc_los7", "auroc_readmit30"};
    const char *ev;
    cJSON *j;
    while ((j = metrics_next(fp, line, sizeof line, &ev))) {
        if (!strcmp(ev, "eval")) {
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
    assert_true(log_contains(f, "coordinator-k4.log",
                             "round 2: secure aggregation: 6 masked updates, 0 sites "
                             "dropped; asking the survivors for their shares (n = 6, k = 4, "
                             "t = 3)"));
    assert_summed(out_b, "train", 2, 6, 6);
    assert_summed(out_b, "eval", 2, 6, -1);
    assert_same_model(out_a, out_b);
    assert_same_global_metrics(out_a, out_b);
}

/* --secagg-k is checked at start (exit 2), with a message naming the constraint. */
static void test_secagg_k_refused(void **state)
{
    fixture_t *f = *state;
    const char *bad[][3] = {{"--secagg", "--secagg-k", "3"}, {"--no-secagg", "--secagg-k", "4"}};
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
        wait_exit(p, 10000, 2); /* a usage error */
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
    char *sa[] = {"--secagg", "--secagg-allow-2", NULL}; /* dropouts leave 2 */
    moeh_proc_t *c = start_coordinator_ex2(f, "3", "2", "3", NULL, "coordinator.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-secagg-round", "2", 0);
    assert_round_sites(f, "322", -1);
    /* round 2 summed the two survivors' masked updates of its three members, at the first
     * attempt (a retry would have opened a session of the two survivors only) */
    assert_summed(f->out, "train", 2, 2, 3);
    assert_false(log_contains(f, "coordinator.log", "retry"));
}

/* Keys first: a site advertises its keys and sends its shares before it trains. Killed as its
 * round-2 training starts, it is therefore in U2 and dropped from U3 (its mask key is
 * reconstructed from the survivors' shares), not missing from U1 as it would be if it trained
 * first; the round completes at the first attempt with the two survivors' updates. */
static void test_secagg_keys_first(void **state)
{
    fixture_t *f = *state;
    char *sa[] = {"--secagg", "--secagg-allow-2", NULL}; /* dropouts leave 2 */
    moeh_proc_t *c = start_coordinator_ex2(f, "3", "2", "3", NULL, "coordinator.log", sa);
    run_with_victim(f, c, 2, "--fault-kill-work-round", "2", 0);
    assert_true(log_contains(f, "coordinator.log",
                             "round 2: secure aggregation: 2 masked updates, 1 sites dropped"));
    assert_summed(f->out, "train", 2, 2, 3);
    assert_false(log_contains(f, "coordinator.log", "retry"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_secagg_too_few_survivors_aborts),
                    FED_TEST(test_secagg_late_update_refused),
                    FED_TEST(test_secagg_masked_twice_refused),
                    FED_TEST(test_secagg_run_is_bit_exact),
                    FED_TEST(test_secagg_stats_dropout_exact),
                    FED_TEST(test_secagg_eval_dropout_exact), FED_TEST(test_secagg_k_neighbours),
                    FED_TEST(test_secagg_k_refused), FED_TEST(test_secagg_dropout_unmasked),
                    FED_TEST(test_secagg_keys_first))
