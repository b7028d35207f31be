/* test_wire_codec.c - the codec of proto/wire.c as a whole: every message type packed with
 * moeh_wire_pack() and decoded with moeh_wire_decode() comes back field for field; the header
 * rules (truncated, empty, oversized or random headers, the protocol version, type/body
 * mismatches, too many frames) refuse with the documented code and a message naming the field;
 * message type names, site ids and string lengths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

static void test_roundtrip_hello(void **state)
{
    msg_t m;
    mk_hello(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_non_null(e);
    assert_int_equal(e->protocol_version, MOEH_PROTOCOL_VERSION);
    assert_int_equal(e->type, MOEH__MSG_TYPE__HELLO);
    assert_int_equal(e->body_case, MOEH__ENVELOPE__BODY_HELLO);
    assert_int_equal(e->n_frames, 0);
    const Moeh__Hello *h = e->hello;
    assert_string_equal(h->site_id, "site-A.1_x");
    assert_int_equal(h->n_train, 1234);
    assert_int_equal(h->n_eval, 56);
    assert_int_equal(h->n_features, 17);
    assert_int_equal(h->n_combos, 2);
    assert_int_equal(h->combos[0]->combo, 1);
    assert_int_equal(h->combos[0]->count, 1000);
    assert_int_equal(h->combos[1]->combo, 7);
    assert_int_equal(h->combos[1]->count, 234);
    assert_int_equal(h->last_model_version, 42);
    moeh__envelope__free_unpacked(e, NULL);
    /* pack() borrowed nothing it left behind */
    assert_int_equal(m.env.n_frames, 0);
    assert_null(m.env.frames);
}

static void test_roundtrip_welcome(void **state)
{
    msg_t m;
    mk_welcome(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__WELCOME);
    const Moeh__Welcome *w = e->welcome;
    assert_string_equal(w->site_id, "site-A");
    assert_int_equal(w->heartbeat_ms, 500);
    assert_int_equal(w->eval_bins, N_BINS);
    assert_non_null(w->model);
    assert_string_equal(w->model->config_json, k_config_json);
    assert_int_equal(w->model->n_tasks, N_TASKS);
    assert_int_equal(w->model->n_experts, 7);
    assert_int_equal(w->model->n_norm, 47);
    assert_true(w->model->spec_hash == 0xdeadbeefcafef00dull);
    assert_int_equal(w->model->n_params, N_PARAMS);
    assert_int_equal(w->model->n_groups, N_GROUPS);
    moeh__envelope__free_unpacked(e, NULL);

    /* a welcome arrives before anything is negotiated: zero limits must accept it */
    moeh_wire_limits_t none = {0};
    check_accept(&m, &none);
}

static void test_roundtrip_round_start(void **state)
{
    msg_t m;
    mk_round_start(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__ROUND_START);
    const Moeh__RoundStart *r = e->round_start;
    assert_int_equal(r->round, 3);
    assert_int_equal(r->model_version, 8);
    assert_int_equal(r->task, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(r->deadline_ms, 30000);
    assert_int_equal(r->n_participants, 4);
    assert_non_null(r->config);
    assert_int_equal(r->config->local_epochs, 2);
    assert_int_equal(r->config->batch_size, 32);
    assert_true(r->config->lr == 0.05f);
    assert_true(r->config->weight_decay == 1e-4f);
    assert_true(r->config->clip == 5.0f);
    assert_int_equal(r->config->seed, 7);
    assert_int_equal(e->n_frames, 2);
    assert_string_equal(e->frames[0]->name, "params");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__F32);
    assert_int_equal(e->frames[0]->count, N_PARAMS);
    assert_string_equal(e->frames[1]->name, "norm");
    assert_int_equal(e->frames[1]->count, 2 * N_NORM);
    moeh__envelope__free_unpacked(e, NULL);

    m.rs.task = MOEH__ROUND_TASK__EVALUATE;
    check_accept(&m, &k_lim);
    /* STATS asks for sums and carries no tensor */
    m.rs.task = MOEH__ROUND_TASK__STATS;
    m.n_frames = 0;
    check_accept(&m, &k_lim);
    /* protocol 8: a site that holds the model of this version is sent none */
    for (int task = MOEH__ROUND_TASK__TRAIN; task <= MOEH__ROUND_TASK__VALIDATE; task++) {
        if (task == MOEH__ROUND_TASK__STATS) continue;
        mk_round_start(&m);
        m.rs.task = task;
        m.rs.model_held = 1;
        m.n_frames = 0;
        check_accept(&m, &k_lim);
        m.n_frames = 2; /* and then none may come */
        check_reject(&m, &k_lim, -EBADMSG, "round_start: carries 2 tensor frames, expected none");
    }
}

static void test_roundtrip_stats_result(void **state)
{
    msg_t m;
    mk_stats_result(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__STATS_RESULT);
    assert_int_equal(e->stats_result->n_rows, 321);
    assert_int_equal(e->n_frames, 1);
    assert_string_equal(e->frames[0]->name, "stats");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__F64);
    assert_int_equal(e->frames[0]->count, 3 * N_NORM);
    moeh__envelope__free_unpacked(e, NULL);
}

static void test_roundtrip_update(void **state)
{
    msg_t m;
    mk_update(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPDATE);
    const Moeh__Update *u = e->update;
    assert_int_equal(u->round, 3);
    assert_int_equal(u->model_version, 8);
    assert_true(u->train_loss == 0.6931);
    assert_int_equal(u->n_samples, 100);
    assert_int_equal(u->steps, 4);
    assert_int_equal(e->n_frames, 1);
    assert_string_equal(e->frames[0]->name, "update");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__U32);
    assert_int_equal(e->frames[0]->count, N_PARAMS + N_GROUPS);
    moeh__envelope__free_unpacked(e, NULL);
}

/* Tensor frames need not be aligned: a params frame decoded from an odd address. */
static void test_unaligned_frame(void **state)
{
    msg_t m;
    mk_round_start(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    uint8_t raw[4 * N_PARAMS + 1];
    memcpy(raw + 1, m.f32, 4 * N_PARAMS);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[2];
    pack_msg(&m, &hdr, &len, iov);
    iov[0].data = raw + 1;
    assert_int_equal(moeh_wire_decode(&k_lim, hdr, len, iov, 2, &e, &err), 0);
    moeh__envelope__free_unpacked(e, NULL);
    /* ...and a NaN at an odd address is still seen */
    float nan = NAN;
    memcpy(raw + 1 + 4 * 9, &nan, 4);
    check_reject_raw(&k_lim, hdr, len, iov, 2, -ERANGE, "element 9");
    free(hdr);
}

static void test_roundtrip_eval_result(void **state)
{
    msg_t m;
    mk_eval_result(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__EVAL_RESULT);
    const Moeh__EvalResult *r = e->eval_result;
    assert_int_equal(r->round, 3);
    assert_int_equal(r->model_version, 8);
    assert_true(r->loss_sum == 12.5);
    assert_int_equal(r->n_labels, m.ev.n_labels);
    assert_true(r->n_labels > 0);
    assert_int_equal(r->n_tasks, N_TASKS);
    assert_int_equal(r->n_bins, N_BINS);
    assert_int_equal(r->n_combo_rows, MOEH_N_COMBOS);
    assert_int_equal(r->combo_rows[6], 9);
    assert_int_equal(e->n_frames, 2);
    assert_string_equal(e->frames[0]->name, "hist");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__U32);
    assert_int_equal(e->frames[0]->count, N_HIST);
    assert_string_equal(e->frames[1]->name, "gate");
    assert_int_equal(e->frames[1]->count, N_GATE);
    moeh__envelope__free_unpacked(e, NULL);
}

/* Protocol 9: the answer to VALIDATE nests the validation split's figures in `validation`, with
 * four frames (hist, gate, val_hist, val_gate). The decoder checks the nested figures as the
 * outer ones: frame count and names, labels against the histograms, non-negative gate sums, no
 * deeper nesting. */
static void test_eval_result_validate(void **state)
{
    (void)state;
    msg_t m;
    mk_eval_result(&m);
    Moeh__EvalResult val = m.ev;
    val.round = 0, val.model_version = 0, val.loss_sum = 2.0;
    float vgate[N_GATE];
    memcpy(vgate, m.gate, sizeof vgate);
    m.ev.validation = &val;
    m.frames[2] = (moeh_frame_t){"val_hist", MOEH__DTYPE__U32, m.hist, N_HIST, NULL};
    m.frames[3] = (moeh_frame_t){"val_gate", MOEH__DTYPE__F32, vgate, N_GATE, NULL};
    m.n_frames = 4;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_non_null(e->eval_result->validation);
    assert_true(e->eval_result->validation->loss_sum == 2.0);
    assert_int_equal(e->n_frames, 4);
    assert_string_equal(e->frames[3]->name, "val_gate");
    moeh__envelope__free_unpacked(e, NULL);

    m.n_frames = 2; /* the validation figures without their frames */
    check_reject(&m, &k_lim, -EBADMSG, "eval_result: expected 4 tensor frames");
    m.n_frames = 4;
    val.n_labels++; /* the validation histograms hold one label fewer than it says */
    check_reject(&m, &k_lim, -EBADMSG, "eval_result.validation: histograms hold");
    val.n_labels--;
    vgate[3] = -1.0f;
    check_reject(&m, &k_lim, -EBADMSG, "eval_result.validation.gate: element 3 is negative");
    vgate[3] = 0.0f;
    Moeh__EvalResult deeper = val;
    val.validation = &deeper;
    check_reject(&m, &k_lim, -EBADMSG, "eval_result.validation.validation: not allowed");
    val.validation = NULL;
    check_accept(&m, &k_lim);
    m.ev.validation = NULL; /* four frames without the validation figures */
    check_reject(&m, &k_lim, -EBADMSG, "eval_result: expected 2 tensor frames");
}

static void test_roundtrip_simple(void **state)
{
    msg_t m;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;

    mk_heartbeat(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__HEARTBEAT);
    assert_int_equal(e->heartbeat->seq, 77);
    moeh__envelope__free_unpacked(e, NULL);

    mk_error(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__ERROR);
    assert_int_equal(e->error->code, -EBADMSG);
    assert_string_equal(e->error->message, "update.delta: element 3 is not finite");
    moeh__envelope__free_unpacked(e, NULL);

    mk_bye(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__BYE);
    assert_string_equal(e->bye->reason, "run complete");
    assert_int_equal(e->bye->status, MOEH__BYE_STATUS__BYE_STATUS_FINISHED);
    moeh__envelope__free_unpacked(e, NULL);
    mk_bye(&m); /* a Bye must say why: a pause is not the end of the run */
    m.bye.status = MOEH__BYE_STATUS__BYE_STATUS_UNSPECIFIED;
    check_reject(&m, &k_lim, -EBADMSG,
                 "bye.status: 0, expected finished, paused, refused or left (1-4)");
    m.bye.status = (Moeh__ByeStatus)9;
    check_reject(&m, &k_lim, -EBADMSG, "bye.status: 9");

    /* these need no negotiation */
    moeh_wire_limits_t none = {0};
    mk_heartbeat(&m);
    check_accept(&m, &none);
    mk_hello(&m);
    check_accept(&m, &none);
}

static void test_truncated_headers(void **state)
{
    for (size_t t = 0; t < N_MAKERS; t++) {
        msg_t m;
        k_makers[t](&m);
        uint8_t *hdr;
        size_t len;
        moeh_iov_t iov[MOEH_MAX_FRAMES];
        pack_msg(&m, &hdr, &len, iov);
        for (size_t cut = 1; cut < len; cut++) {
            /* a copy of exactly `cut` bytes, so valgrind/ASan see any over-read */
            uint8_t *p = malloc(cut);
            assert_non_null(p);
            memcpy(p, hdr, cut);
            moeh_err_t err = {{0}};
            Moeh__Envelope *e = NULL;
            int rc = moeh_wire_decode(&k_lim, p, cut, iov, m.n_frames, &e, &err);
            if (rc == 0)
                print_error("%s: prefix of %zu/%zu bytes accepted\n",
                            moeh_msg_type_name((int)m.env.type), cut, len);
            assert_true(rc == -EBADMSG || rc == -EPROTO);
            assert_null(e);
            assert_true(err.msg[0] != '\0');
            free(p);
        }
        free(hdr);
    }
}

static void test_empty_and_oversized_header(void **state)
{
    uint8_t one = 0;
    check_reject_raw(&k_lim, &one, 0, NULL, 0, -EBADMSG, "empty");

    /* one byte over the cap, filled with a valid-looking heartbeat prefix: refused for size
     * before any parsing */
    size_t big = MOEH_MAX_HEADER_BYTES + 1;
    uint8_t *p = calloc(1, big);
    assert_non_null(p);
    check_reject_raw(&k_lim, p, big, NULL, 0, -EMSGSIZE, "limit");
    free(p);

    /* the encoder refuses to produce such a header */
    msg_t m;
    mk_error(&m);
    char *s = malloc(MOEH_MAX_HEADER_BYTES + 10);
    assert_non_null(s);
    memset(s, 'x', MOEH_MAX_HEADER_BYTES + 9);
    s[MOEH_MAX_HEADER_BYTES + 9] = '\0';
    m.er.message = s;
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&m.env, NULL, 0, &hdr, &len), -EMSGSIZE);
    assert_null(hdr);
    free(s);
}

static void test_too_many_frames(void **state)
{
    msg_t m;
    mk_heartbeat(&m);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[MOEH_MAX_FRAMES + 1];
    pack_msg(&m, &hdr, &len, iov);
    for (size_t i = 0; i < MOEH_MAX_FRAMES + 1; i++)
        iov[i] = (moeh_iov_t){m.f32, 4};
    check_reject_raw(&k_lim, hdr, len, iov, MOEH_MAX_FRAMES + 1, -EMSGSIZE, "tensor frames");
    free(hdr);

    /* the encoder does not write more descriptors than a receiver accepts */
    for (size_t i = 0; i < MOEH_MAX_FRAMES + 1; i++)
        m.frames[i] = (moeh_frame_t){"x", MOEH__DTYPE__F32, m.f32, 1, NULL};
    hdr = NULL;
    assert_true(moeh_wire_pack(&m.env, m.frames, MOEH_MAX_FRAMES + 1, &hdr, &len) < 0);
    assert_null(hdr);
}

/* Packs env by hand (no moeh_wire_pack, so protocol_version is ours) into a malloc'd buffer. */
static uint8_t *pack_raw(const Moeh__Envelope *env, size_t *len)
{
    *len = moeh__envelope__get_packed_size(env);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(moeh__envelope__pack(env, buf), *len);
    return buf;
}

static void test_protocol_version(void **state)
{
    msg_t m;
    mk_heartbeat(&m);
    size_t len;
    uint8_t *buf;
    char want[64];
    m.env.protocol_version = MOEH_PROTOCOL_VERSION + 1;
    buf = pack_raw(&m.env, &len);
    snprintf(want, sizeof want, "protocol version %u, expected %u", MOEH_PROTOCOL_VERSION + 1,
             MOEH_PROTOCOL_VERSION);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, want);
    free(buf);
    /* protocol 9 (shares sealed under per-session c keys: a 10 agent cannot open a 9 agent's
     * shares, nor the reverse), 8 (VALIDATE and EVALUATE two phases: an 8 agent would answer
     * VALIDATE with the validation split only, which the coordinator refuses), 7 (every RoundStart
     * carries the model: a 7 agent would refuse a model_held one), 6 (granted uploads in one
     * multipart message, which libzmq holds whole before the coordinator can refuse it), 5 (no
     * Hello.n_val: the coordinator would bound the site's validation replies by 0 rows) and 4 (no
     * final model) are not spoken any more */
    assert_int_equal(MOEH_PROTOCOL_VERSION, 10);
    m.env.protocol_version = 9;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 9, expected 10");
    free(buf);
    m.env.protocol_version = 8;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 8, expected 10");
    free(buf);
    m.env.protocol_version = 7;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 7, expected 10");
    free(buf);
    m.env.protocol_version = 6;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 6, expected 10");
    free(buf);
    m.env.protocol_version = 5;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 5, expected 10");
    free(buf);
    m.env.protocol_version = 4;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 4, expected 10");
    free(buf);
    m.env.protocol_version = 0; /* absent */
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 0");
    free(buf);
    m.env.protocol_version = MOEH_PROTOCOL_VERSION; /* control: the hand-packed one is fine */
    buf = pack_raw(&m.env, &len);
    Moeh__Envelope *e = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_wire_decode(&k_lim, buf, len, NULL, 0, &e, &err), 0);
    moeh__envelope__free_unpacked(e, NULL);
    free(buf);
}

static const wire_field_case_t k_type_body_mismatch_fields[] = {
    /* heartbeat body, hello type */
    {mk_heartbeat, "type", MOEH__MSG_TYPE__HELLO, NULL, &k_lim, -EBADMSG,
     "hello: body missing or of another type"},
    /* no body at all */
    {mk_bye, "body_case", MOEH__ENVELOPE__BODY__NOT_SET, NULL, &k_lim, -EBADMSG,
     "bye: body missing"},
    /* a known type, a heartbeat body */
    {mk_heartbeat, "type", MOEH__MSG_TYPE__SECAGG_ADVERTISE, NULL, &k_lim, -EBADMSG,
     "secagg_advertise: body missing or of another type"},
    /* a known type, a heartbeat body */
    {mk_heartbeat, "type", MOEH__MSG_TYPE__UPLOAD_READY, NULL, &k_lim, -EBADMSG,
     "upload_ready: body missing or of another type"},
    /* the other one's body */
    {mk_upload_ready, "type", MOEH__MSG_TYPE__UPLOAD_GRANT, NULL, &k_lim, -EBADMSG,
     "upload_grant: body missing or of another type"},
    /* the other one's body */
    {mk_upload_ready, "type", MOEH__MSG_TYPE__FINAL_MODEL, NULL, &k_lim, -EBADMSG,
     "final_model: body missing or of another type"},
    /* the other one's body */
    {mk_upload_ready, "type", MOEH__MSG_TYPE__UPLOAD_CHUNK, NULL, &k_lim, -EBADMSG,
     "upload_chunk: body missing or of another type"},
    /* the other one's body */
    {mk_upload_ready, "type", (Moeh__MsgType)22, NULL, &k_lim, -EBADMSG, "type: 22"},
    /* the other one's body */
    {mk_upload_ready, "type", (Moeh__MsgType)1000, NULL, &k_lim, -EBADMSG, "type: 1000"},
    /* the other one's body */
    {mk_upload_ready, "type", MOEH__MSG_TYPE__MSG_UNSPECIFIED, NULL, &k_lim, -EBADMSG, "type: 0"},
};

static void test_type_body_mismatch(void **state)
{
    WIRE_RUN_FIELD_CASES(k_type_body_mismatch_fields);
}

/* xorshift64*: deterministic garbage. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void test_random_garbage(void **state)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint8_t frame[64];
    for (size_t i = 0; i < sizeof frame; i++)
        frame[i] = (uint8_t)rnd(&seed);
    size_t accepted = 0;
    for (int it = 0; it < 4000; it++) {
        size_t len = 1 + rnd(&seed) % 300;
        uint8_t *p = malloc(len);
        assert_non_null(p);
        for (size_t i = 0; i < len; i++)
            p[i] = (uint8_t)rnd(&seed);
        moeh_iov_t iov = {frame, 4 * (rnd(&seed) % 17)};
        size_t nf = rnd(&seed) % 2;
        moeh_err_t err = {{0}};
        Moeh__Envelope *e = NULL;
        int rc = moeh_wire_decode(&k_lim, p, len, &iov, nf, &e, &err);
        if (rc == 0) { /* astronomically unlikely; must then be a whole valid message */
            assert_non_null(e);
            moeh__envelope__free_unpacked(e, NULL);
            accepted++;
        } else {
            assert_true(rc == -EBADMSG || rc == -EPROTO || rc == -ERANGE);
            assert_null(e);
            assert_true(err.msg[0] != '\0');
        }
        free(p);
    }
    /* mutations of valid messages: flip 1..4 random bytes */
    for (int it = 0; it < 4000; it++) {
        msg_t m;
        k_makers[it % N_MAKERS](&m);
        uint8_t *hdr;
        size_t len;
        moeh_iov_t iov[MOEH_MAX_FRAMES];
        pack_msg(&m, &hdr, &len, iov);
        int flips = 1 + (int)(rnd(&seed) % 4);
        for (int f = 0; f < flips; f++)
            hdr[rnd(&seed) % len] ^= (uint8_t)(1 + rnd(&seed) % 255);
        moeh_err_t err = {{0}};
        Moeh__Envelope *e = NULL;
        int rc = moeh_wire_decode(&k_lim, hdr, len, iov, m.n_frames, &e, &err);
        if (rc == 0) {
            assert_non_null(e);
            moeh__envelope__free_unpacked(e, NULL);
        } else {
            assert_true(rc == -EBADMSG || rc == -EPROTO || rc == -ERANGE);
            assert_null(e);
            assert_true(err.msg[0] != '\0');
        }
        free(hdr);
    }
    assert_true(accepted < 4);
}

static void test_names_and_site_ids(void **state)
{
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__HELLO), "hello");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__ROUND_START), "round_start");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__EVAL_RESULT), "eval_result");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__BYE), "bye");
    assert_string_equal(moeh_msg_type_name(0), "unspecified");
    assert_string_equal(moeh_msg_type_name(9), "stats_result");
    assert_string_equal(moeh_msg_type_name(10), "secagg_advertise");
    assert_string_equal(moeh_msg_type_name(14), "secagg_reveal");
    assert_string_equal(moeh_msg_type_name(15), "secagg_masked");
    assert_string_equal(moeh_msg_type_name(16), "upload_ready");
    assert_string_equal(moeh_msg_type_name(17), "upload_grant");
    assert_string_equal(moeh_msg_type_name(18), "final_model");
    assert_string_equal(moeh_msg_type_name(19), "final_ack");
    assert_string_equal(moeh_msg_type_name(20), "upload_chunk");
    assert_string_equal(moeh_msg_type_name(21), "upload_credit");
    assert_string_equal(moeh_msg_type_name(22), "unknown");
    assert_string_equal(moeh_msg_type_name(-1), "unknown");

    assert_true(moeh_site_id_valid("a"));
    assert_true(moeh_site_id_valid("Site_01.b-c"));
    char s[66];
    memset(s, 'q', 64);
    s[64] = '\0';
    assert_true(moeh_site_id_valid(s));
    s[64] = 'q';
    s[65] = '\0';
    assert_false(moeh_site_id_valid(s));
    assert_false(moeh_site_id_valid(""));
    assert_false(moeh_site_id_valid("a b"));
    assert_false(moeh_site_id_valid("../x"));
    assert_false(moeh_site_id_valid("a\nb"));
    assert_false(moeh_site_id_valid("\xff"));
}

static void test_long_strings(void **state)
{
    char *s = malloc(MOEH_MAX_STRING + 2);
    assert_non_null(s);
    memset(s, 'e', MOEH_MAX_STRING + 1);
    s[MOEH_MAX_STRING + 1] = '\0';
    msg_t m;
    mk_error(&m);
    m.er.message = s;
    check_reject(&m, &k_lim, -EBADMSG, "error.message: longer than 1024");
    mk_bye(&m);
    m.bye.reason = s;
    check_reject(&m, &k_lim, -EBADMSG, "bye.reason: longer than 1024");
    s[MOEH_MAX_STRING] = '\0'; /* exactly at the limit */
    mk_error(&m);
    m.er.message = s;
    check_accept(&m, &k_lim);
    mk_bye(&m);
    m.bye.reason = s;
    check_accept(&m, &k_lim);
    free(s);
}

/* Hello.n_val (protocol 6), the validation rows that bound the site's VALIDATE replies: it
 * round-trips; it and the other row counts are refused from 2^53 on (the coordinator caps
 * what passes: test_coordinator_select's test_validation_bounded_by_n_val). */
static void test_hello_n_val(void **state)
{
    (void)state;
    msg_t m;
    mk_hello(&m);
    m.hello.n_val = 789;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->hello->n_val, 789);
    assert_int_equal(e->hello->n_train, 1234);
    assert_int_equal(e->hello->n_eval, 56);
    moeh__envelope__free_unpacked(e, NULL);
    mk_hello(&m); /* no validation split: n_val 0 */
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->hello->n_val, 0);
    moeh__envelope__free_unpacked(e, NULL);
    mk_hello(&m);
    m.hello.n_val = MOEH_WIRE_MAX_ROWS; /* 2^53 - 1: the largest */
    check_accept(&m, &k_lim);
    m.hello.n_val = MOEH_WIRE_MAX_ROWS + 1;
    check_reject(&m, &k_lim, -EBADMSG, "n_val 9007199254740992: each expected below 2^53");
    m.hello.n_val = UINT64_MAX;
    check_reject(&m, &k_lim, -EBADMSG, "n_val 18446744073709551615");
    mk_hello(&m);
    m.hello.n_train = MOEH_WIRE_MAX_ROWS + 1;
    check_reject(&m, &k_lim, -EBADMSG, "hello: n_train 9007199254740992");
    mk_hello(&m);
    m.hello.n_eval = UINT64_MAX;
    check_reject(&m, &k_lim, -EBADMSG, "n_eval 18446744073709551615");
}

MOEH_TEST_MAIN(
    NULL, NULL, cmocka_unit_test(test_roundtrip_hello), cmocka_unit_test(test_roundtrip_welcome),
    cmocka_unit_test(test_roundtrip_round_start), cmocka_unit_test(test_roundtrip_stats_result),
    cmocka_unit_test(test_roundtrip_update), cmocka_unit_test(test_unaligned_frame),
    cmocka_unit_test(test_roundtrip_eval_result), cmocka_unit_test(test_eval_result_validate),
    cmocka_unit_test(test_roundtrip_simple), cmocka_unit_test(test_truncated_headers),
    cmocka_unit_test(test_empty_and_oversized_header), cmocka_unit_test(test_too_many_frames),
    cmocka_unit_test(test_protocol_version), cmocka_unit_test(test_type_body_mismatch),
    cmocka_unit_test(test_random_garbage), cmocka_unit_test(test_names_and_site_ids),
    cmocka_unit_test(test_long_strings), cmocka_unit_test(test_hello_n_val))
