/* test_fed_faults.c - multi-process tests of faulty and hostile sites (see test_federation.c
 * and fed_util.h for the setting):
 *  - an agent is SIGKILLed when round 3 starts: the run completes with the quorum of 2;
 *  - an agent with an unregistered key, and one claiming another site's id, are refused and
 *    the run that follows is unaffected;
 *  - SIGHUP re-reads the registry: an added key is admitted, a removed one revoked;
 *  - a hostile admitted site changes nothing; a rejoining site cannot raise its weight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

/* 1 if OUT/metrics.jsonl has a line of `event` whose string `key` is `value`. */
static int has_line(const char *out, const char *event, const char *key, const char *value)
{
    char line[8192];
    int found = 0;
    FILE *fp = metrics_open(out);
    const char *ev;
    cJSON *j;
    while (!found && (j = metrics_next(fp, line, sizeof line, &ev))) {
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(j, key));
        found = v && !strcmp(ev, event) && !strcmp(v, value);
        cJSON_Delete(j);
    }
    fclose(fp);
    return found;
}

static void test_killed_agent_quorum_completes(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *c = start_coordinator(f, "5", "2");
    run_with_victim(f, c, 2, "--fault-kill-round", "3", 0);
    assert_round_sites(f, "33222", 1);
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
    start_all_agents(f, a, NULL);
    wait_run(c, a);
    assert_round_sites(f, "333", -1);
    /* the logs say why */
    assert_true(log_contains(f, "rogue-as-site-1.log", "refused this site's key"));
    assert_true(log_contains(f, "coordinator.log", "is not in the site registry"));
    assert_true(
        log_contains(f, "coordinator.log", "does not match the id registered for your key"));
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
    wait_log_of(f, c, "coordinator.log", "registry reloaded");
    a3 = start_agent(f, "site-3", "site-3", "site-3", NULL);
    wait_exit(c, 60000, 0);
    wait_exit(a1, 10000, 0);
    wait_exit(a2, 10000, 0);
    wait_exit(a3, 10000, 0);
    assert_round_sites(f, "333", -1);
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
    wait_log_of(f, c, "coordinator.log", "round 2 done");
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
    char out_a[300], out_b[300];
    moeh_proc_t *a[N_SITES];
    run_all(f, "clean", "3", NULL);
    snprintf(out_a, sizeof out_a, "%s", f->out);

    register_site_x(f);
    snprintf(out_b, sizeof out_b, "%s/attacked", f->dir);
    snprintf(f->out, sizeof f->out, "%s", out_b);
    moeh_proc_t *c = start_coordinator_ex(f, "3", "3", "4", NULL, "coordinator-b.log");
    start_all_agents(f, a, NULL);
    rogue_attack(f, f->endpoint);
    wait_run(c, a);
    assert_true(log_contains(f, "coordinator-b.log", "refused a message from site-x"));

    assert_same_model(out_a, out_b);
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
    char *push[] = {"--upload-slots", "0", "--no-validate", NULL}; /* the rogue: no VALIDATE */
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
    size_t nw = r.lim.n_params + r.lim.n_groups;
    rogue_send_zero_stats(&r);
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
    wait_run(c, a);
    metrics_t mt;
    read_metrics(f, &mt);
    assert_int_equal(mt.n_eval, 2);
    assert_true(file_contains(log, "site site-x rejoined"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_killed_agent_quorum_completes),
                    FED_TEST(test_unregistered_key_refused), FED_TEST(test_sighup_admits_added_key),
                    FED_TEST(test_sighup_revokes_removed_key),
                    FED_TEST(test_hostile_site_changes_nothing),
                    FED_TEST(test_rejoin_cannot_raise_weight))
