/* fuzz_recv.c - libFuzzer target for moeh_wire_recv(): the receive path of every process, from
 * the ZeroMQ parts of one message (header, then tensor frames split into parts of at most
 * MOEH_WIRE_CHUNK_BYTES) to a decoded message. The input uses the wire fuzzer's layout
 * (fuzz_input.h: the frames travel as separate parts after the header) and its seed corpus;
 * the parts go through a real inproc PAIR socket. Any input must be refused or accepted without
 * a crash, a leak or undefined behaviour, and must leave nothing behind in the socket. */
#include "fuzz_input.h"

#include <zmq.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void *g_ctx, *g_tx, *g_rx;

static void open_pair(void)
{
    g_ctx = zmq_ctx_new();
    g_tx = zmq_socket(g_ctx, ZMQ_PAIR);
    g_rx = zmq_socket(g_ctx, ZMQ_PAIR);
    MOEH_ASSERT(g_ctx && g_tx && g_rx);
    MOEH_ASSERT(zmq_bind(g_rx, "inproc://fuzz-recv") == 0);
    MOEH_ASSERT(zmq_connect(g_tx, "inproc://fuzz-recv") == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_ctx) open_pair();
    fuzz_msg_t m;
    fuzz_split(data, size, &m);
    int more = m.n_frames ? ZMQ_SNDMORE : 0;
    MOEH_ASSERT(zmq_send(g_tx, m.hdr, m.hdr_len, more) == (int)m.hdr_len);
    for (size_t i = 0; i < m.n_frames; i++) {
        int fl = i + 1 < m.n_frames ? ZMQ_SNDMORE : 0;
        MOEH_ASSERT(zmq_send(g_tx, m.frames[i].data, m.frames[i].len, fl) == (int)m.frames[i].len);
    }
    zmq_pollitem_t it = {.socket = g_rx, .events = ZMQ_POLLIN};
    MOEH_ASSERT(zmq_poll(&it, 1, 1000) == 1);
    moeh_msg_t msg;
    moeh_err_t err = {0};
    int rc = moeh_wire_recv(g_rx, 0, &k_fuzz_limits, &msg, &err);
    MOEH_ASSERT(rc != -EAGAIN);
    if (rc == 0) {
        MOEH_ASSERT(msg.env != NULL && msg.n_frames == msg.env->n_frames);
        for (size_t i = 0; i < msg.n_frames; i++) /* every byte of an accepted frame is readable */
            MOEH_ASSERT(msg.frames[i].len == 0 || msg.frames[i].data != NULL);
    } else {
        MOEH_ASSERT(err.msg[0] != '\0');
    }
    moeh_msg_clear(&msg);
    /* the whole message was consumed: nothing is left for the next input */
    MOEH_ASSERT(zmq_poll(&it, 1, 0) == 0);
    return 0;
}
