/* transport.c - moeh messages over ZeroMQ (see moeh_wire.h): an envelope and its tensor
 * frames sent as parts of MOEH_WIRE_CHUNK_BYTES without ever blocking, received with every
 * part counted and sized against the limits before it is joined. The codec is wire.c. */
#include "moeh_wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* One frame's bytes as the parts moeh_wire_send sends (see MOEH_WIRE_CHUNK_BYTES). */
struct moeh_shared_frame {
    size_t n, len;
    zmq_msg_t parts[];
};

/* Parts a frame of `bytes` travels in: one per MOEH_WIRE_CHUNK_BYTES, at least one. */
static size_t n_chunks(size_t bytes)
{
    return bytes ? (bytes + MOEH_WIRE_CHUNK_BYTES - 1) / MOEH_WIRE_CHUNK_BYTES : 1;
}

/* Bytes of part k of a frame of `bytes`. */
static size_t chunk_len(size_t bytes, size_t k)
{
    size_t off = k * (size_t)MOEH_WIRE_CHUNK_BYTES;
    return bytes - off < MOEH_WIRE_CHUNK_BYTES ? bytes - off : MOEH_WIRE_CHUNK_BYTES;
}

int moeh_wire_send(void *sock, const uint8_t *routing_id, size_t routing_id_len,
                   Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames)
{
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    int rc = moeh_wire_pack(env, frames, n_frames, &hdr, &hlen);
    if (rc) return rc;
    if (routing_id && zmq_send(sock, routing_id, routing_id_len, ZMQ_SNDMORE) < 0) {
        rc = -zmq_errno();
        goto out;
    }
    if (zmq_send(sock, hdr, hlen, n_frames ? ZMQ_SNDMORE : 0) < 0) {
        rc = -zmq_errno();
        goto out;
    }
    for (size_t i = 0; i < n_frames; i++) {
        size_t bytes = frames[i].count * moeh_wire_dtype_size(frames[i].dtype),
               nc = n_chunks(bytes);
        moeh_shared_frame_t *sh = (moeh_shared_frame_t *)frames[i].shared;
        MOEH_ASSERT(!sh || (sh->len == bytes && sh->n == nc));
        for (size_t k = 0; k < nc; k++) {
            int more = i + 1 < n_frames || k + 1 < nc ? ZMQ_SNDMORE : 0;
            if (sh) { /* share the one copy: zmq_msg_copy takes a reference */
                zmq_msg_t m;
                MOEH_ASSERT(zmq_msg_init(&m) == 0); /* cannot fail */
                if (zmq_msg_copy(&m, &sh->parts[k]) != 0 || zmq_msg_send(&m, sock, more) < 0) {
                    rc = -zmq_errno();
                    MOEH_ASSERT(zmq_msg_close(&m) == 0);
                    goto out;
                }
            } else if (zmq_send(sock, (const uint8_t *)frames[i].data + k * MOEH_WIRE_CHUNK_BYTES,
                                chunk_len(bytes, k), more) < 0) {
                rc = -zmq_errno();
                goto out;
            }
        }
    }
out:
    free(hdr);
    return rc;
}

int moeh_shared_frame_create(const void *data, size_t len, moeh_shared_frame_t **out)
{
    size_t nc = n_chunks(len);
    moeh_shared_frame_t *f = malloc(sizeof *f + nc * sizeof(zmq_msg_t));
    if (!f) return -ENOMEM;
    f->len = len;
    for (f->n = 0; f->n < nc; f->n++) {
        size_t cl = chunk_len(len, f->n);
        if (zmq_msg_init_size(&f->parts[f->n], cl) != 0) {
            moeh_shared_frame_destroy(&f);
            return -ENOMEM;
        }
        if (cl)
            memcpy(zmq_msg_data(&f->parts[f->n]),
                   (const uint8_t *)data + f->n * MOEH_WIRE_CHUNK_BYTES, cl);
    }
    *out = f;
    return 0;
}

void moeh_shared_frame_destroy(moeh_shared_frame_t **self_p)
{
    if (!self_p || !*self_p) return;
    for (size_t k = 0; k < (*self_p)->n; k++)
        MOEH_ASSERT(zmq_msg_close(&(*self_p)->parts[k]) == 0);
    free(*self_p);
    *self_p = NULL;
}

int moeh_wire_send_error(void *sock, const uint8_t *rid, size_t rid_len, int code,
                         const char *message)
{
    Moeh__Envelope env;
    Moeh__Error e;
    char buf[MOEH_MAX_STRING + 1];
    moeh_wire_error_env(&env, &e, buf, code, message);
    return moeh_wire_send(sock, rid, rid_len, &env, NULL, 0);
}

int moeh_wire_send_simple(void *sock, const uint8_t *rid, size_t rid_len, Moeh__MsgType type,
                          const char *text, uint64_t seq)
{
    Moeh__Envelope env;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    Moeh__Bye bye = MOEH__BYE__INIT;
    if (type == MOEH__MSG_TYPE__HEARTBEAT) {
        hb.seq = seq;
        moeh_env_heartbeat(&env, &hb);
    } else if (type == MOEH__MSG_TYPE__BYE) {
        bye.reason = (char *)(text ? text : "");
        bye.status = seq ? (Moeh__ByeStatus)seq : MOEH__BYE_STATUS__BYE_STATUS_LEFT;
        moeh_env_bye(&env, &bye);
    } else {
        return -EINVAL;
    }
    return moeh_wire_send(sock, rid, rid_len, &env, NULL, 0);
}

/* The received parts, in blocks allocated as they arrive (a zmq_msg_t is never moved), and
 * the frames joined from several parts. */
#define PARTS_PER_BLOCK 256u
typedef struct {
    zmq_msg_t *blk[MOEH_WIRE_MAX_PARTS / PARTS_PER_BLOCK + 1];
    size_t n;
    uint8_t *joined[MOEH_MAX_FRAMES];
} parts_t;

static zmq_msg_t *part(parts_t *ps, size_t i)
{
    return &ps->blk[i / PARTS_PER_BLOCK][i % PARTS_PER_BLOCK];
}

void moeh_msg_clear(moeh_msg_t *msg)
{
    if (msg->env) moeh__envelope__free_unpacked(msg->env, NULL);
    parts_t *ps = msg->parts_storage;
    if (ps) {
        for (size_t i = 0; i < ps->n; i++)
            MOEH_ASSERT(zmq_msg_close(part(ps, i)) == 0);
        for (size_t b = 0; b < sizeof ps->blk / sizeof ps->blk[0]; b++)
            free(ps->blk[b]);
        for (size_t i = 0; i < MOEH_MAX_FRAMES; i++)
            free(ps->joined[i]);
        free(ps);
    }
    memset(msg, 0, sizeof *msg);
}

/* Maps the np tensor parts from part `at` on onto the frames the header describes (each split
 * as moeh_wire_send splits it) and joins a frame of several parts into one buffer. A header
 * that cannot be read here leaves the parts as frames (at most MOEH_MAX_FRAMES) for
 * moeh_wire_decode to refuse with its own message. */
/* The most tensor bytes any one message may carry under `lim`: the largest of the frame sets
 * moeh_wire_decode accepts (RoundStart's parameters and normalisation, an Update, a masked
 * vector of any phase, an EvalResult, a StatsResult), doubled for slack. Checked against the
 * sizes a header declares before any part is joined, so that a site cannot make the receiver
 * allocate more than a legitimate message's worth (the decoder then checks the exact sizes). */
uint64_t moeh_wire_max_tensor_bytes(const moeh_wire_limits_t *lim)
{
    if (!lim || lim->n_params == 0) return 0; /* nothing negotiated: no tensors yet */
    uint64_t words = lim->n_params + lim->n_groups + 2 * (uint64_t)lim->n_norm; /* RoundStart */
    uint64_t m = moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__TRAIN);
    if (moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__VALIDATE) > m) /* holds an EVALUATE's */
        m = moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__VALIDATE);
    if (moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__STATS) > m)
        m = moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__STATS);
    uint64_t stats = 3 * (uint64_t)lim->n_norm * 2; /* f64 sums in 4-byte words */
    if (stats > m) m = stats;
    if (m > words) words = m;
    return 2 * 4 * (words + 4096);
}

static int join_frames(parts_t *ps, size_t at, size_t np, const void *hdr, size_t hlen,
                       const moeh_wire_limits_t *lim, moeh_msg_t *msg, moeh_err_t *err)
{
    Moeh__Envelope *e = NULL;
    size_t bytes[MOEH_MAX_FRAMES], nf = 0, want = 0;
    int plan = hlen > 0 && hlen <= MOEH_MAX_HEADER_BYTES &&
               (e = moeh__envelope__unpack(NULL, hlen, hdr)) != NULL &&
               e->n_frames <= MOEH_MAX_FRAMES;
    for (size_t i = 0; plan && i < e->n_frames; i++) {
        size_t es = moeh_wire_dtype_size(e->frames[i]->dtype);
        plan = es != 0 && e->frames[i]->count <= MOEH_MAX_PARAMS;
        bytes[i] = plan ? (size_t)e->frames[i]->count * es : 0;
        want += n_chunks(bytes[i]);
    }
    if (plan) nf = e->n_frames;
    if (e) moeh__envelope__free_unpacked(e, NULL);
    uint64_t total = 0, cap = moeh_wire_max_tensor_bytes(lim);
    for (size_t i = 0; plan && i < nf; i++)
        total += bytes[i];
    if (plan && total > cap)
        return moeh_errf(err, -EMSGSIZE,
                         "the header declares %llu bytes of tensor frames; at most %llu are "
                         "possible with the negotiated model",
                         (unsigned long long)total, (unsigned long long)cap);
    if (!plan) {
        if (np > MOEH_MAX_FRAMES)
            return moeh_errf(err, -EMSGSIZE, "%zu tensor parts after an unreadable header", np);
        for (size_t i = 0; i < np; i++)
            msg->frames[i] =
                (moeh_iov_t){zmq_msg_data(part(ps, at + i)), zmq_msg_size(part(ps, at + i))};
        msg->n_frames = np;
        return 0;
    }
    if (np != want)
        return moeh_errf(err, np > want ? -EMSGSIZE : -EBADMSG,
                         "message has %zu tensor parts; its header describes %zu frames in %zu "
                         "parts of at most %u bytes",
                         np, nf, want, MOEH_WIRE_CHUNK_BYTES);
    for (size_t i = 0, k = at; i < nf; i++) {
        size_t nc = n_chunks(bytes[i]);
        for (size_t j = 0; j < nc; j++)
            if (zmq_msg_size(part(ps, k + j)) != chunk_len(bytes[i], j))
                return moeh_errf(err, -EBADMSG,
                                 "frames[%zu]: part %zu of %zu has %zu bytes, expected %zu", i,
                                 j + 1, nc, zmq_msg_size(part(ps, k + j)), chunk_len(bytes[i], j));
        if (nc == 1) {
            msg->frames[i] = (moeh_iov_t){zmq_msg_data(part(ps, k)), bytes[i]};
        } else {
            uint8_t *buf = ps->joined[i] = malloc(bytes[i]);
            if (!buf)
                return moeh_errf(err, -ENOMEM, "out of memory for a %zu-byte frame", bytes[i]);
            for (size_t j = 0; j < nc; j++)
                memcpy(buf + j * MOEH_WIRE_CHUNK_BYTES, zmq_msg_data(part(ps, k + j)),
                       chunk_len(bytes[i], j));
            msg->frames[i] = (moeh_iov_t){buf, bytes[i]};
        }
        k += nc;
    }
    msg->n_frames = nf;
    return 0;
}

int moeh_wire_recv(void *sock, int with_routing_id, const moeh_wire_limits_t *lim, moeh_msg_t *msg,
                   moeh_err_t *err)
{
    memset(msg, 0, sizeof *msg);
    msg->src_fd = -1;
    parts_t *ps = calloc(1, sizeof *ps);
    if (!ps) return moeh_errf(err, -ENOMEM, "out of memory");
    msg->parts_storage = ps;
    int more = 1, too_many = 0, flags = ZMQ_DONTWAIT;
    while (more) {
        zmq_msg_t scratch, *p = &scratch;
        if (ps->n < MOEH_WIRE_MAX_PARTS) {
            zmq_msg_t **b = &ps->blk[ps->n / PARTS_PER_BLOCK];
            if (!*b) *b = malloc(PARTS_PER_BLOCK * sizeof(zmq_msg_t));
            if (*b) p = part(ps, ps->n); /* else drained and refused below, as too many */
        }
        MOEH_ASSERT(zmq_msg_init(p) == 0);
        if (zmq_msg_recv(p, sock, flags) < 0) {
            int e = zmq_errno();
            MOEH_ASSERT(zmq_msg_close(p) == 0);
            return e == EAGAIN ? -EAGAIN
                               : moeh_errf(err, -e, "receive failed: %s", zmq_strerror(e));
        }
        flags = 0; /* the rest of a multipart message is already here */
        more = zmq_msg_more(p);
        msg->wire_bytes += zmq_msg_size(p);
        msg->wire_parts++;
        if (p == &scratch) { /* drain parts beyond the limit */
            MOEH_ASSERT(zmq_msg_close(p) == 0);
            too_many = 1;
        } else {
            ps->n++;
        }
    }
    size_t first = 0;
    if (ps->n == 0) return moeh_errf(err, -ENOMEM, "out of memory for the message parts");
    if (with_routing_id) {
        size_t rl = zmq_msg_size(part(ps, 0));
        if (rl > sizeof msg->routing_id) return moeh_errf(err, -EBADMSG, "routing id too long");
        memcpy(msg->routing_id, zmq_msg_data(part(ps, 0)), rl);
        msg->routing_id_len = rl;
        msg->wire_bytes -= rl; /* added by the ROUTER, not sent by the peer */
        msg->wire_parts--;
        first = 1;
    }
    if (ps->n <= first) return moeh_errf(err, -EBADMSG, "message has no header frame");
    /* The ZAP handler sets User-Id to the admitted site's id; absent without CURVE. */
    zmq_msg_t *h = part(ps, first);
    const char *uid = zmq_msg_gets(h, "User-Id");
    if (uid) snprintf(msg->peer, sizeof msg->peer, "%s", uid);
    /* (deprecated in libzmq's documentation, kept in 4.3: the connection guard's only way to
     * tell which TCP connection a key speaks on) */
    int fd = zmq_msg_get(h, ZMQ_SRCFD);
    msg->src_fd = fd >= 0 ? fd : -1;
    if (too_many)
        return moeh_errf(err, -EMSGSIZE, "message has more than %u parts", MOEH_WIRE_MAX_PARTS);
    int rc = join_frames(ps, first + 1, ps->n - first - 1, zmq_msg_data(h), zmq_msg_size(h), lim,
                         msg, err);
    if (rc) return rc;
    return moeh_wire_decode(lim, zmq_msg_data(h), zmq_msg_size(h), msg->frames, msg->n_frames,
                            &msg->env, err);
}
