/* test_envelope.c - the envelope builders of proto/moeh_wire.h (moeh_env_<body>):
 *  - for every message type, the builder sets the type, the matching body case (the pairing
 *    moeh_wire_decode insists on) and the body pointer, whatever *env held before;
 *  - the built envelope packs (moeh_wire_pack) and unpacks with the same type, body case and
 *    protocol version;
 *  - moeh_wire_send_error / moeh_wire_send_simple send envelopes that moeh_wire_recv accepts
 *    (they are built the same way), and send_simple refuses a type it does not build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_wire.h"

#include <string.h>
#include <zmq.h>

/* Nothing negotiated: messages without tensors only. */
static const moeh_wire_limits_t k_none = {0};

/* One body of each type, default-initialised. */
typedef struct {
    Moeh__Hello hello;
    Moeh__Welcome welcome;
    Moeh__RoundStart round_start;
    Moeh__Update update;
    Moeh__EvalResult eval_result;
    Moeh__Heartbeat heartbeat;
    Moeh__Error error;
    Moeh__Bye bye;
    Moeh__StatsResult stats_result;
    Moeh__SecaggAdvertise secagg_advertise;
    Moeh__SecaggKeys secagg_keys;
    Moeh__SecaggShares secagg_shares;
    Moeh__SecaggUnmask secagg_unmask;
    Moeh__SecaggReveal secagg_reveal;
    Moeh__SecaggMasked secagg_masked;
    Moeh__UploadReady upload_ready;
    Moeh__UploadGrant upload_grant;
} bodies_t;

static void bodies_init(bodies_t *b)
{
    moeh__hello__init(&b->hello);
    moeh__welcome__init(&b->welcome);
    moeh__round_start__init(&b->round_start);
    moeh__update__init(&b->update);
    moeh__eval_result__init(&b->eval_result);
    moeh__heartbeat__init(&b->heartbeat);
    moeh__error__init(&b->error);
    moeh__bye__init(&b->bye);
    b->bye.status = MOEH__BYE_STATUS__BYE_STATUS_LEFT;
    moeh__stats_result__init(&b->stats_result);
    moeh__secagg_advertise__init(&b->secagg_advertise);
    moeh__secagg_keys__init(&b->secagg_keys);
    moeh__secagg_shares__init(&b->secagg_shares);
    moeh__secagg_unmask__init(&b->secagg_unmask);
    moeh__secagg_reveal__init(&b->secagg_reveal);
    moeh__secagg_masked__init(&b->secagg_masked);
    moeh__upload_ready__init(&b->upload_ready);
    moeh__upload_grant__init(&b->upload_grant);
}

/* Builds the envelope of `type` around its body in b; returns the body's address. */
static const void *build(Moeh__Envelope *env, bodies_t *b, Moeh__MsgType type)
{
    switch (type) {
    case MOEH__MSG_TYPE__HELLO:
        return moeh_env_hello(env, &b->hello), &b->hello;
    case MOEH__MSG_TYPE__WELCOME:
        return moeh_env_welcome(env, &b->welcome), &b->welcome;
    case MOEH__MSG_TYPE__ROUND_START:
        return moeh_env_round_start(env, &b->round_start), &b->round_start;
    case MOEH__MSG_TYPE__UPDATE:
        return moeh_env_update(env, &b->update), &b->update;
    case MOEH__MSG_TYPE__EVAL_RESULT:
        return moeh_env_eval_result(env, &b->eval_result), &b->eval_result;
    case MOEH__MSG_TYPE__HEARTBEAT:
        return moeh_env_heartbeat(env, &b->heartbeat), &b->heartbeat;
    case MOEH__MSG_TYPE__ERROR:
        return moeh_env_error(env, &b->error), &b->error;
    case MOEH__MSG_TYPE__BYE:
        return moeh_env_bye(env, &b->bye), &b->bye;
    case MOEH__MSG_TYPE__STATS_RESULT:
        return moeh_env_stats_result(env, &b->stats_result), &b->stats_result;
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
        return moeh_env_secagg_advertise(env, &b->secagg_advertise), &b->secagg_advertise;
    case MOEH__MSG_TYPE__SECAGG_KEYS:
        return moeh_env_secagg_keys(env, &b->secagg_keys), &b->secagg_keys;
    case MOEH__MSG_TYPE__SECAGG_SHARES:
        return moeh_env_secagg_shares(env, &b->secagg_shares), &b->secagg_shares;
    case MOEH__MSG_TYPE__SECAGG_UNMASK:
        return moeh_env_secagg_unmask(env, &b->secagg_unmask), &b->secagg_unmask;
    case MOEH__MSG_TYPE__SECAGG_REVEAL:
        return moeh_env_secagg_reveal(env, &b->secagg_reveal), &b->secagg_reveal;
    case MOEH__MSG_TYPE__SECAGG_MASKED:
        return moeh_env_secagg_masked(env, &b->secagg_masked), &b->secagg_masked;
    case MOEH__MSG_TYPE__UPLOAD_READY:
        return moeh_env_upload_ready(env, &b->upload_ready), &b->upload_ready;
    case MOEH__MSG_TYPE__UPLOAD_GRANT:
        return moeh_env_upload_grant(env, &b->upload_grant), &b->upload_grant;
    default:
        fail_msg("no builder for type %d", (int)type);
        return NULL;
    }
}

/* The body pointer the envelope holds (the oneof is a union of pointers). */
static const void *body_of(const Moeh__Envelope *env)
{
    return env->hello;
}

static void test_builders(void **state)
{
    (void)state;
    bodies_t b;
    bodies_init(&b);
    for (int t = MOEH__MSG_TYPE__HELLO; t <= MOEH__MSG_TYPE__UPLOAD_GRANT; t++) {
        Moeh__Envelope env;
        memset(&env, 0xa5, sizeof env); /* whatever was there before */
        const void *body = build(&env, &b, (Moeh__MsgType)t);
        assert_ptr_equal(env.base.descriptor, &moeh__envelope__descriptor);
        assert_int_equal(env.type, t);
        /* the pairing the decoder checks; the body case names the same message */
        assert_int_equal((int)env.body_case, t + 9);
        assert_ptr_equal(body_of(&env), body);
        assert_int_equal(env.n_frames, 0);
        assert_null(env.frames);
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(moeh_wire_pack(&env, NULL, 0, &buf, &len), 0);
        Moeh__Envelope *back = moeh__envelope__unpack(NULL, len, buf);
        assert_non_null(back);
        assert_int_equal(back->protocol_version, MOEH_PROTOCOL_VERSION);
        assert_int_equal(back->type, t);
        assert_int_equal(back->body_case, env.body_case);
        assert_non_null(body_of(back));
        moeh__envelope__free_unpacked(back, NULL);
        free(buf);
    }
}

/* A builder carries the body's fields: a Bye's reason and an UploadGrant's numbers. */
static void test_builder_fields(void **state)
{
    (void)state;
    Moeh__Envelope env;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = "done";
    bye.status = MOEH__BYE_STATUS__BYE_STATUS_PAUSED;
    moeh_env_bye(&env, &bye);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&env, NULL, 0, &buf, &len), 0);
    moeh_err_t err = {{0}};
    Moeh__Envelope *back = NULL;
    assert_int_equal(moeh_wire_decode(&k_none, buf, len, NULL, 0, &back, &err), 0);
    assert_string_equal(back->bye->reason, "done");
    assert_int_equal(back->bye->status, MOEH__BYE_STATUS__BYE_STATUS_PAUSED);
    moeh__envelope__free_unpacked(back, NULL);
    free(buf);

    Moeh__UploadGrant g = MOEH__UPLOAD_GRANT__INIT;
    g.round = 3, g.model_version = 7, g.session = 11;
    moeh_env_bye(&env, &bye); /* rebuilt as another type: nothing of the Bye remains */
    moeh_env_upload_grant(&env, &g);
    assert_int_equal(moeh_wire_pack(&env, NULL, 0, &buf, &len), 0);
    assert_int_equal(moeh_wire_decode(&k_none, buf, len, NULL, 0, &back, &err), 0);
    assert_int_equal(back->type, MOEH__MSG_TYPE__UPLOAD_GRANT);
    assert_int_equal(back->upload_grant->round, 3);
    assert_int_equal(back->upload_grant->model_version, 7);
    assert_int_equal(back->upload_grant->session, 11);
    moeh__envelope__free_unpacked(back, NULL);
    free(buf);
}

/* send_error and send_simple over an inproc pair: received and decoded as sent. */
static void test_send_helpers(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *a = zmq_socket(ctx, ZMQ_PAIR), *b = zmq_socket(ctx, ZMQ_PAIR);
    assert_true(a && b);
    int linger = 0, tmo = 5000;
    assert_int_equal(zmq_setsockopt(a, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(b, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(b, ZMQ_RCVTIMEO, &tmo, sizeof tmo), 0);
    assert_int_equal(zmq_bind(b, "inproc://test-envelope"), 0);
    assert_int_equal(zmq_connect(a, "inproc://test-envelope"), 0);

    assert_int_equal(moeh_wire_send_error(a, NULL, 0, -EPROTO, "wrong version"), 0);
    assert_int_equal(moeh_wire_send_simple(a, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 42), 0);
    assert_int_equal(moeh_wire_send_simple(a, NULL, 0, MOEH__MSG_TYPE__BYE, NULL, 0), 0);
    assert_int_equal(moeh_wire_send_simple(a, NULL, 0, MOEH__MSG_TYPE__UPDATE, NULL, 0), -EINVAL);

    zmq_pollitem_t it = {.socket = b, .events = ZMQ_POLLIN};
    const Moeh__MsgType want[] = {MOEH__MSG_TYPE__ERROR, MOEH__MSG_TYPE__HEARTBEAT,
                                  MOEH__MSG_TYPE__BYE};
    for (size_t k = 0; k < 3; k++) {
        assert_int_equal(zmq_poll(&it, 1, 5000), 1);
        moeh_msg_t m;
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_wire_recv(b, 0, &k_none, &m, &err), 0);
        assert_int_equal(m.env->type, want[k]);
        if (k == 0) {
            assert_int_equal(m.env->error->code, -EPROTO);
            assert_string_equal(m.env->error->message, "wrong version");
        } else if (k == 1) {
            assert_int_equal(m.env->heartbeat->seq, 42);
        } else {
            assert_string_equal(m.env->bye->reason, "");
        }
        moeh_msg_clear(&m);
    }
    assert_int_equal(zmq_poll(&it, 1, 0), 0); /* the refused UPDATE sent nothing */
    assert_int_equal(zmq_close(a), 0);
    assert_int_equal(zmq_close(b), 0);
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_builders), cmocka_unit_test(test_builder_fields),
               cmocka_unit_test(test_send_helpers))
