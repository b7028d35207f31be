/* test_wire_transport.c - moeh_wire_send / moeh_wire_recv over real ZeroMQ inproc sockets
 * (PAIR, DEALER/ROUTER): whole messages, tensor frames split into MOEH_WIRE_CHUNK_BYTES parts and
 * joined, messages with too many parts refused and drained, routing ids, and one shared frame
 * broadcast to two receivers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

#include <string.h>
#include <zmq.h>

/* ---- over ZeroMQ ------------------------------------------------------------------------ */

typedef struct {
    void *ctx, *a, *b;
} zpair_t;

static void zpair_open(zpair_t *z, int type_a, int type_b)
{
    static int n;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://test_wire_%d", n++);
    z->ctx = zmq_ctx_new();
    assert_non_null(z->ctx);
    z->a = zmq_socket(z->ctx, type_a);
    z->b = zmq_socket(z->ctx, type_b);
    assert_non_null(z->a);
    assert_non_null(z->b);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(z->a, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(z->b, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(z->b, ep), 0);
    assert_int_equal(zmq_connect(z->a, ep), 0);
}

static void zpair_close(zpair_t *z)
{
    assert_int_equal(zmq_close(z->a), 0);
    assert_int_equal(zmq_close(z->b), 0);
    assert_int_equal(zmq_ctx_term(z->ctx), 0);
}

static void wait_readable(void *sock)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 2000), 1);
}

static void send_parts(void *sock, const void *const *data, const size_t *len, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_int_equal(zmq_send(sock, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0), (int)len[i]);
}

/* Sends a heartbeat's packed envelope followed by n - 1 frames of 4 bytes: n parts. */
static void send_heartbeat_parts(void *sock, size_t n)
{
    msg_t m;
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[1];
    mk_heartbeat(&m);
    pack_msg(&m, &hdr, &len, iov);
    assert_int_equal(zmq_send(sock, hdr, len, ZMQ_SNDMORE), (int)len);
    for (size_t i = 1; i < n; i++)
        assert_int_equal(zmq_send(sock, m.f32, 4, i + 1 < n ? ZMQ_SNDMORE : 0), 4);
    free(hdr);
}

static void test_zmq_pair(void **state)
{
    zpair_t z;
    zpair_open(&z, ZMQ_PAIR, ZMQ_PAIR);
    moeh_msg_t msg;
    moeh_err_t err = {{0}};

    /* nothing yet: non-blocking */
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), -EAGAIN);
    moeh_msg_clear(&msg);

    msg_t m;
    mk_round_start(&m);
    assert_int_equal(moeh_wire_send(z.a, NULL, 0, &m.env, m.frames, m.n_frames), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), 0);
    assert_non_null(msg.env);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__ROUND_START);
    assert_int_equal(msg.env->round_start->round, 3);
    assert_int_equal(msg.n_frames, 2);
    assert_int_equal(msg.frames[0].len, 4 * N_PARAMS);
    assert_memory_equal(msg.frames[1].data, m.norm, 4 * 2 * N_NORM);
    assert_memory_equal(msg.frames[0].data, m.f32, 4 * N_PARAMS);
    assert_string_equal(msg.peer, ""); /* no CURVE */
    moeh_msg_clear(&msg);
    assert_null(msg.env);
    assert_null(msg.parts_storage);

    assert_int_equal(moeh_wire_send_simple(z.a, NULL, 0, MOEH__MSG_TYPE__BYE, "done", 0), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__BYE);
    assert_string_equal(msg.env->bye->reason, "done");
    moeh_msg_clear(&msg);

    assert_int_equal(moeh_wire_send_error(z.a, NULL, 0, -EPROTO, "wrong version"), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__ERROR);
    assert_int_equal(msg.env->error->code, -EPROTO);
    assert_string_equal(msg.env->error->message, "wrong version");
    moeh_msg_clear(&msg);

    /* a decode failure is returned as such */
    mk_round_start(&m);
    m.f32[2] = NAN;
    assert_int_equal(moeh_wire_send(z.a, NULL, 0, &m.env, m.frames, m.n_frames), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), -ERANGE);
    assert_null(msg.env);
    assert_non_null(strstr(err.msg, "round_start.params: element 2"));
    moeh_msg_clear(&msg);

    /* far too many parts: refused with -EMSGSIZE and drained */
    send_heartbeat_parts(z.a, SMALL_PARTS + 3);
    assert_int_equal(moeh_wire_send_simple(z.a, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 5), 0);
    wait_readable(z.b);
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), -EMSGSIZE);
    assert_null(msg.env);
    assert_non_null(strstr(err.msg, "parts"));
    moeh_msg_clear(&msg);
    /* the next message is intact */
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__HEARTBEAT);
    assert_int_equal(msg.env->heartbeat->seq, 5);
    moeh_msg_clear(&msg);
    /* and nothing is left behind */
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), -EAGAIN);
    moeh_msg_clear(&msg);
    zpair_close(&z);
}

static size_t recv_raw_parts(void *sock, size_t *len, size_t cap)
{
    size_t n = 0;
    int more = 1;
    wait_readable(sock);
    while (more) {
        zmq_msg_t p;
        zmq_msg_init(&p);
        assert_true(zmq_msg_recv(&p, sock, 0) >= 0);
        more = zmq_msg_more(&p);
        if (n < cap) len[n] = zmq_msg_size(&p);
        n++;
        zmq_msg_close(&p);
    }
    return n;
}

/* Tensor frames longer than MOEH_WIRE_CHUNK_BYTES travel in parts of that size (the last one
 * shorter), also from a shared frame, and are joined on receipt; a frame split any other way,
 * or in fewer or more parts, is refused. */
static void test_zmq_chunked_frames(void **state)
{
    const size_t C = MOEH_WIRE_CHUNK_BYTES;
    /* update frames of 3 parts and 8 bytes (not a multiple of the part size) and of exactly
     * 2 parts */
    const uint64_t words[2] = {(3 * C - C / 2 + 8) / 4, 2 * C / 4};
    const size_t parts[2] = {3, 2};
    uint32_t *w = malloc(3 * C);
    for (size_t i = 0; i < 3 * C / 4; i++)
        w[i] = (uint32_t)i * 2654435761u;
    zpair_t z;
    zpair_open(&z, ZMQ_PAIR, ZMQ_PAIR);
    for (int t = 0; t < 2; t++) {
        moeh_wire_limits_t lim = k_lim;
        lim.n_params = words[t] - lim.n_groups;
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__Update u = MOEH__UPDATE__INIT;
        u.round = 2;
        env.type = MOEH__MSG_TYPE__UPDATE, env.body_case = MOEH__ENVELOPE__BODY_UPDATE;
        env.update = &u;
        moeh_frame_t f = {
            .name = "update", .dtype = MOEH__DTYPE__U32, .data = w, .count = words[t]};
        size_t bytes = 4 * words[t], len[8];
        /* the layout on the wire: header, then the parts */
        assert_int_equal(moeh_wire_send(z.a, NULL, 0, &env, &f, 1), 0);
        assert_int_equal(recv_raw_parts(z.b, len, 8), 1 + parts[t]);
        for (size_t k = 0; k < parts[t]; k++)
            assert_int_equal(len[1 + k], k + 1 < parts[t] ? C : bytes - (parts[t] - 1) * C);
        /* joined on receipt, sent from a copy or from a shared frame */
        moeh_shared_frame_t *sf = NULL;
        assert_int_equal(moeh_shared_frame_create(w, bytes, &sf), 0);
        for (int shared = 0; shared < 2; shared++) {
            moeh_frame_t g = f;
            if (shared) g.data = NULL, g.shared = sf;
            assert_int_equal(moeh_wire_send(z.a, NULL, 0, &env, &g, 1), 0);
            wait_readable(z.b);
            moeh_msg_t msg;
            moeh_err_t err = {{0}};
            int rc = moeh_wire_recv(z.b, 0, &lim, &msg, &err);
            if (rc) print_error("%s\n", err.msg);
            assert_int_equal(rc, 0);
            assert_int_equal(msg.n_frames, 1);
            assert_int_equal(msg.frames[0].len, bytes);
            assert_memory_equal(msg.frames[0].data, w, bytes);
            moeh_msg_clear(&msg);
        }
        moeh_shared_frame_destroy(&sf);
        /* split otherwise: one part too big, then too few and too many parts */
        uint8_t *hdr = NULL;
        size_t hlen = 0;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &hlen), 0);
        const void *d[6] = {hdr, w, (uint8_t *)w + C + 1, (uint8_t *)w + 2 * C, w, w};
        size_t l[6] = {hlen, C + 1, C - 1, bytes - 2 * C, 0, 0};
        if (t == 1) l[1] = bytes, l[2] = 0; /* all in one part, then an empty one */
        const struct {
            size_t n;
            int code;
            const char *needle;
        } bad[3] = {{1 + parts[t], -EBADMSG, "part 1 of"},
                    {parts[t], -EBADMSG, "parts of at most"},
                    {2 + parts[t], -EMSGSIZE, "parts of at most"}};
        for (int b = 0; b < 3; b++) {
            send_parts(z.a, d, l, bad[b].n);
            wait_readable(z.b);
            moeh_msg_t msg;
            moeh_err_t err = {{0}};
            assert_int_equal(moeh_wire_recv(z.b, 0, &lim, &msg, &err), bad[b].code);
            assert_null(msg.env);
            if (!strstr(err.msg, bad[b].needle)) print_error("%s\n", err.msg);
            assert_non_null(strstr(err.msg, bad[b].needle));
            moeh_msg_clear(&msg);
        }
        free(hdr);
    }
    /* a header declaring far more tensor bytes than the negotiated model allows is refused
     * before any part is joined (no allocation of the declared size) */
    {
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
        env.type = MOEH__MSG_TYPE__HEARTBEAT, env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        moeh_frame_t f = {.name = "x", .dtype = MOEH__DTYPE__F32, .data = w, .count = 1u << 24};
        uint8_t *hdr = NULL;
        size_t hlen = 0;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &hlen), 0);
        const void *d[2] = {hdr, w};
        size_t l[2] = {hlen, C};
        send_parts(z.a, d, l, 2);
        wait_readable(z.b);
        moeh_msg_t msg;
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), -EMSGSIZE);
        assert_non_null(strstr(err.msg, "declares 67108864 bytes of tensor frames"));
        moeh_msg_clear(&msg);
        free(hdr);
    }
    zpair_close(&z);
    free(w);
}

static void test_zmq_max_parts_without_routing_id(void **state)
{
    zpair_t z;
    zpair_open(&z, ZMQ_PAIR, ZMQ_PAIR);
    moeh_msg_t msg;
    moeh_err_t err = {{0}};
    /* exactly SMALL_PARTS parts on a socket without routing id: envelope + 5 frames, one
     * frame more than msg->frames holds. Must be refused without writing past msg->frames
     * (peer, right behind it, must stay "") */
    send_heartbeat_parts(z.a, SMALL_PARTS);
    wait_readable(z.b);
    memset(&err, 0, sizeof err);
    int rc = moeh_wire_recv(z.b, 0, &k_lim, &msg, &err);
    assert_int_equal(rc, -EMSGSIZE);
    assert_null(msg.env);
    char zero[sizeof msg.peer];
    memset(zero, 0, sizeof zero);
    int peer_clean = memcmp(msg.peer, zero, sizeof zero) == 0;
    if (!peer_clean)
        print_error("moeh_wire_recv wrote frame %u past msg->frames[] into msg->peer\n",
                    MOEH_MAX_FRAMES);
    moeh_msg_clear(&msg);

    /* the next message is intact */
    assert_int_equal(moeh_wire_send_simple(z.a, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 6), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 0, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->heartbeat->seq, 6);
    moeh_msg_clear(&msg);
    zpair_close(&z);
    assert_true(peer_clean); /* checked last so that a failure leaks nothing */
}

static void test_zmq_router(void **state)
{
    zpair_t z;
    zpair_open(&z, ZMQ_DEALER, ZMQ_ROUTER);
    moeh_msg_t msg;
    moeh_err_t err = {{0}};
    msg_t m;

    mk_hello(&m);
    assert_int_equal(moeh_wire_send(z.a, NULL, 0, &m.env, NULL, 0), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 1, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__HELLO);
    assert_string_equal(msg.env->hello->site_id, "site-A.1_x");
    assert_true(msg.routing_id_len > 0);
    uint8_t rid[256];
    size_t rid_len = msg.routing_id_len;
    memcpy(rid, msg.routing_id, rid_len);
    moeh_msg_clear(&msg);

    /* reply through the routing id: the dealer gets the frames */
    mk_round_start(&m);
    assert_int_equal(moeh_wire_send(z.b, rid, rid_len, &m.env, m.frames, m.n_frames), 0);
    wait_readable(z.a);
    assert_int_equal(moeh_wire_recv(z.a, 0, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->type, MOEH__MSG_TYPE__ROUND_START);
    assert_int_equal(msg.n_frames, 2);
    assert_memory_equal(msg.frames[0].data, m.f32, 4 * N_PARAMS);
    moeh_msg_clear(&msg);

    /* too many parts at the router: refused, routing id still known, drained */
    send_heartbeat_parts(z.a, SMALL_PARTS); /* + routing id = MAX_PARTS + 1 */
    assert_int_equal(moeh_wire_send_simple(z.a, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, 9), 0);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 1, &k_lim, &msg, &err), -EMSGSIZE);
    assert_int_equal(msg.routing_id_len, rid_len);
    assert_memory_equal(msg.routing_id, rid, rid_len);
    moeh_msg_clear(&msg);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 1, &k_lim, &msg, &err), 0);
    assert_int_equal(msg.env->heartbeat->seq, 9);
    moeh_msg_clear(&msg);

    /* a header-only garbage message: decode error, routing id filled in for the reply */
    uint8_t junk[3] = {0xff, 0xff, 0xff};
    assert_int_equal(zmq_send(z.a, junk, sizeof junk, 0), 3);
    wait_readable(z.b);
    assert_int_equal(moeh_wire_recv(z.b, 1, &k_lim, &msg, &err), -EBADMSG);
    assert_int_equal(msg.routing_id_len, rid_len);
    moeh_msg_clear(&msg);
    zpair_close(&z);
}

/* A shared frame (one copy for many sends) arrives intact at two receivers, also when the
 * sender destroys it right after sending: ZeroMQ holds its own references. */
static void test_shared_frame_broadcast(void **state)
{
    void *ctx = zmq_ctx_new();
    void *tx1 = zmq_socket(ctx, ZMQ_PAIR), *rx1 = zmq_socket(ctx, ZMQ_PAIR);
    void *tx2 = zmq_socket(ctx, ZMQ_PAIR), *rx2 = zmq_socket(ctx, ZMQ_PAIR);
    assert_int_equal(zmq_bind(rx1, "inproc://shared-1"), 0);
    assert_int_equal(zmq_bind(rx2, "inproc://shared-2"), 0);
    assert_int_equal(zmq_connect(tx1, "inproc://shared-1"), 0);
    assert_int_equal(zmq_connect(tx2, "inproc://shared-2"), 0);
    msg_t m;
    mk_round_start(&m);
    moeh_shared_frame_t *sf = NULL;
    assert_int_equal(moeh_shared_frame_create(m.f32, 4 * N_PARAMS, &sf), 0);
    m.frames[0].shared = sf;
    m.frames[0].data = NULL; /* the shared copy is what goes out */
    assert_int_equal(moeh_wire_send(tx1, NULL, 0, &m.env, m.frames, m.n_frames), 0);
    assert_int_equal(moeh_wire_send(tx2, NULL, 0, &m.env, m.frames, m.n_frames), 0);
    moeh_shared_frame_destroy(&sf);
    assert_null(sf);
    void *rx[2] = {rx1, rx2};
    for (int i = 0; i < 2; i++) {
        moeh_msg_t msg;
        moeh_err_t err = {{0}};
        wait_readable(rx[i]);
        assert_int_equal(moeh_wire_recv(rx[i], 0, &k_lim, &msg, &err), 0);
        assert_int_equal(msg.n_frames, 2);
        assert_memory_equal(msg.frames[0].data, m.f32, 4 * N_PARAMS);
        moeh_msg_clear(&msg);
    }
    int linger = 0;
    void *socks[4] = {tx1, rx1, tx2, rx2};
    for (int i = 0; i < 4; i++) {
        zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(socks[i]);
    }
    zmq_ctx_term(ctx);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_zmq_pair),
               cmocka_unit_test(test_zmq_chunked_frames),
               cmocka_unit_test(test_zmq_max_parts_without_routing_id),
               cmocka_unit_test(test_zmq_router), cmocka_unit_test(test_shared_frame_broadcast))
