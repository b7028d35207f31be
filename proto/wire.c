/* wire.c - validating decoder and encoder for moeh messages (see wire.h). */
#include "wire.h"

#include <math.h>
#include <string.h>
#include <zmq.h>

static const char *k_type_names[] = {"unspecified", "hello",     "welcome", "round_start", "update",
                                     "eval_result", "heartbeat", "error",   "bye"};

const char *moeh_msg_type_name(int type)
{
    return (type >= 0 && type <= 8) ? k_type_names[type] : "unknown";
}

int moeh_site_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MOEH_SITE_ID_MAX || s[0] == '.' || s[0] == '-')
        return 0; /* ids name files and log lines: no ".", "..", or option-like ids */
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static size_t dtype_size(int dt)
{
    return dt == MOEH__DTYPE__F32 || dt == MOEH__DTYPE__U32 ? 4 : 0;
}

static int check_string(const char *s, size_t max, const char *field, moeh_err_t *err)
{
    if (strnlen(s, max + 1) > max)
        return moeh_errf(err, -EBADMSG, "%s: longer than %zu bytes", field, max);
    return 0;
}

/* The single raw frame a message type must carry: its name, dtype and element count. */
static int expect_frame(const Moeh__Envelope *e, const moeh_iov_t *frames, size_t n_frames,
                        const char *name, int dtype, uint64_t count, moeh_err_t *err)
{
    if (n_frames != 1 || e->n_frames != 1)
        return moeh_errf(err, -EBADMSG, "%s: expected 1 tensor frame '%s', got %zu",
                         moeh_msg_type_name(e->type), name, n_frames);
    const Moeh__FrameDesc *d = e->frames[0];
    if (strcmp(d->name, name) != 0 || (int)d->dtype != dtype)
        return moeh_errf(err, -EBADMSG, "%s: frame 0 is '%s' (dtype %d), expected '%s' (dtype %d)",
                         moeh_msg_type_name(e->type), d->name, (int)d->dtype, name, dtype);
    if (count == 0)
        return moeh_errf(err, -EBADMSG, "%s: tensor frame before the model was negotiated",
                         moeh_msg_type_name(e->type));
    if (d->count != count)
        return moeh_errf(err, -EBADMSG, "%s: frame '%s' has %llu elements, expected %llu",
                         moeh_msg_type_name(e->type), name, (unsigned long long)d->count,
                         (unsigned long long)count);
    return 0;
}

static int check_finite_f32(const moeh_iov_t *f, const char *what, moeh_err_t *err)
{
    size_t n = f->len / 4;
    const uint8_t *p = f->data;
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, p + 4 * i, 4); /* frames need not be aligned */
        if (!isfinite(x))
            return moeh_errf(err, -ERANGE, "%s: element %zu is not finite", what, i);
    }
    return 0;
}

static int fin(double x, const char *field, moeh_err_t *err)
{
    return isfinite(x) ? 0 : moeh_errf(err, -ERANGE, "%s: not finite", field);
}

static int validate_body(const moeh_wire_limits_t *lim, const Moeh__Envelope *e,
                         const moeh_iov_t *frames, size_t n_frames, moeh_err_t *err)
{
    int rc;
    switch (e->type) {
    case MOEH__MSG_TYPE__HELLO: {
        const Moeh__Hello *h = e->hello;
        if (!moeh_site_id_valid(h->site_id))
            return moeh_errf(err, -EBADMSG,
                             "hello.site_id: expected 1-%u characters of [A-Za-z0-9._-]",
                             MOEH_SITE_ID_MAX);
        if (h->n_features == 0 || h->n_features > (1u << 20))
            return moeh_errf(err, -EBADMSG, "hello.n_features: %u, expected 1..%u",
                             h->n_features, 1u << 20);
        if (h->n_combos > 7)
            return moeh_errf(err, -EBADMSG, "hello.combos: %zu entries, expected <= 7",
                             h->n_combos);
        for (size_t i = 0; i < h->n_combos; i++)
            if (h->combos[i]->combo < 1 || h->combos[i]->combo > 7)
                return moeh_errf(err, -EBADMSG, "hello.combos[%zu].combo: %u, expected 1..7", i,
                                 h->combos[i]->combo);
        break;
    }
    case MOEH__MSG_TYPE__WELCOME: {
        const Moeh__Welcome *w = e->welcome;
        const Moeh__ModelSpec *m = w->model;
        if (!moeh_site_id_valid(w->site_id))
            return moeh_errf(err, -EBADMSG, "welcome.site_id: invalid");
        if (!m)
            return moeh_errf(err, -EBADMSG, "welcome.model: missing");
        if ((rc = check_string(m->kind, 32, "welcome.model.kind", err)))
            return rc;
        if (m->n_in == 0 || m->n_in > (1u << 20) || m->n_hidden == 0 || m->n_hidden > 65536 ||
            m->n_tasks == 0 || m->n_tasks > 16)
            return moeh_errf(err, -EBADMSG, "welcome.model: sizes out of range "
                                            "(n_in 1..2^20, n_hidden 1..65536, n_tasks 1..16)");
        if (m->n_params == 0 || m->n_params > MOEH_MAX_PARAMS || m->n_groups == 0 ||
            m->n_groups > 32)
            return moeh_errf(err, -EBADMSG, "welcome.model: n_params 1..2^28 and n_groups "
                                            "1..32 expected");
        if (w->heartbeat_ms < 10 || w->heartbeat_ms > 600000)
            return moeh_errf(err, -EBADMSG, "welcome.heartbeat_ms: %u, expected 10..600000",
                             w->heartbeat_ms);
        if (w->eval_bins < 2 || w->eval_bins > 100000)
            return moeh_errf(err, -EBADMSG, "welcome.eval_bins: %u, expected 2..100000",
                             w->eval_bins);
        break;
    }
    case MOEH__MSG_TYPE__ROUND_START: {
        const Moeh__RoundStart *r = e->round_start;
        const Moeh__RoundConfig *c = r->config;
        if (r->task != MOEH__ROUND_TASK__TRAIN && r->task != MOEH__ROUND_TASK__EVALUATE)
            return moeh_errf(err, -EBADMSG, "round_start.task: %d, expected TRAIN or EVALUATE",
                             (int)r->task);
        if (!c)
            return moeh_errf(err, -EBADMSG, "round_start.config: missing");
        if (r->deadline_ms == 0)
            return moeh_errf(err, -EBADMSG, "round_start.deadline_ms: must be > 0");
        if (c->local_epochs == 0 || c->local_epochs > 1000 || c->batch_size == 0 ||
            c->batch_size > 65536)
            return moeh_errf(err, -EBADMSG, "round_start.config: local_epochs 1..1000 and "
                                            "batch_size 1..65536 expected");
        if ((rc = fin(c->lr, "round_start.config.lr", err)) ||
            (rc = fin(c->weight_decay, "round_start.config.weight_decay", err)) ||
            (rc = fin(c->clip, "round_start.config.clip", err)))
            return rc;
        if (!(c->lr > 0 && c->lr <= 10) || c->weight_decay < 0 || c->clip < 0)
            return moeh_errf(err, -EBADMSG, "round_start.config: lr in (0, 10], weight_decay "
                                            ">= 0 and clip >= 0 expected");
        if ((rc = fin(c->delta_clip, "round_start.config.delta_clip", err)) ||
            (rc = fin(c->quant_scale, "round_start.config.quant_scale", err)))
            return rc;
        if (!(c->delta_clip > 0) || !(c->quant_scale > 0) ||
            c->quant_scale * c->delta_clip > 2147483647.0)
            return moeh_errf(err, -EBADMSG, "round_start.config: delta_clip > 0 and quant_scale "
                                            "> 0 with quant_scale * delta_clip < 2^31 expected");
        if ((rc = expect_frame(e, frames, n_frames, "params", MOEH__DTYPE__F32, lim->n_params,
                               err)))
            return rc;
        return check_finite_f32(&frames[0], "round_start.params", err);
    }
    case MOEH__MSG_TYPE__UPDATE: {
        const Moeh__Update *u = e->update;
        if ((rc = fin(u->train_loss, "update.train_loss", err)))
            return rc;
        if (u->train_loss < 0)
            return moeh_errf(err, -EBADMSG, "update.train_loss: negative");
        if (lim->n_groups == 0)
            return moeh_errf(err, -EBADMSG, "update: before the model was negotiated");
        return expect_frame(e, frames, n_frames, "update", MOEH__DTYPE__U32,
                            lim->n_params ? lim->n_params + lim->n_groups : 0, err);
    }
    case MOEH__MSG_TYPE__EVAL_RESULT: {
        const Moeh__EvalResult *r = e->eval_result;
        if (lim->n_tasks == 0 || r->n_tasks != lim->n_tasks || r->n_bins != lim->eval_bins)
            return moeh_errf(err, -EBADMSG, "eval_result: %u tasks x %u bins, expected %u x %u",
                             r->n_tasks, r->n_bins, lim->n_tasks, lim->eval_bins);
        if ((rc = fin(r->loss_sum, "eval_result.loss_sum", err)))
            return rc;
        if (r->loss_sum < 0)
            return moeh_errf(err, -EBADMSG, "eval_result.loss_sum: negative");
        uint64_t count = (uint64_t)r->n_tasks * 2 * r->n_bins;
        if ((rc = expect_frame(e, frames, n_frames, "hist", MOEH__DTYPE__U32, count, err)))
            return rc;
        uint64_t total = 0;
        const uint8_t *p = frames[0].data;
        for (uint64_t i = 0; i < count; i++) {
            uint32_t v;
            memcpy(&v, p + 4 * i, 4);
            total += v;
        }
        if (total != r->n_labels)
            return moeh_errf(err, -EBADMSG, "eval_result: histogram holds %llu labels, "
                                            "n_labels says %llu",
                             (unsigned long long)total, (unsigned long long)r->n_labels);
        return 0;
    }
    case MOEH__MSG_TYPE__HEARTBEAT:
        break;
    case MOEH__MSG_TYPE__ERROR:
        if ((rc = check_string(e->error->message, MOEH_MAX_STRING, "error.message", err)))
            return rc;
        break;
    case MOEH__MSG_TYPE__BYE:
        if ((rc = check_string(e->bye->reason, MOEH_MAX_STRING, "bye.reason", err)))
            return rc;
        break;
    default:
        return moeh_errf(err, -EBADMSG, "type: %d is not a known message type", (int)e->type);
    }
    if (n_frames != 0 || e->n_frames != 0)
        return moeh_errf(err, -EBADMSG, "%s: carries %zu tensor frames, expected none",
                         moeh_msg_type_name(e->type), n_frames);
    return 0;
}

/* 1 if m or any message inside it carries fields this protocol version does not define.
 * v1 is strict: a new field means a new protocol version, so unknown fields are refused (this
 * also closes protobuf-c's acceptance of odd encodings such as field number 0). */
static int has_unknown_fields(const ProtobufCMessage *m, int depth)
{
    if (!m)
        return 0;
    if (m->n_unknown_fields || depth > 8)
        return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (has_unknown_fields(arr[k], depth + 1))
                    return 1;
        } else if (has_unknown_fields(*(ProtobufCMessage *const *)(base + f->offset),
                                      depth + 1)) {
            return 1;
        }
    }
    return 0;
}

int moeh_wire_decode(const moeh_wire_limits_t *lim, const void *hdr, size_t hdr_len,
                     const moeh_iov_t *frames, size_t n_frames, Moeh__Envelope **out,
                     moeh_err_t *err)
{
    int rc;
    Moeh__Envelope *e = NULL;
    *out = NULL;
    if (hdr_len == 0)
        return moeh_errf(err, -EBADMSG, "empty header frame");
    if (hdr_len > MOEH_MAX_HEADER_BYTES)
        return moeh_errf(err, -EMSGSIZE, "header is %zu bytes, limit %u", hdr_len,
                         MOEH_MAX_HEADER_BYTES);
    if (n_frames > MOEH_MAX_FRAMES)
        return moeh_errf(err, -EMSGSIZE, "%zu tensor frames, limit %u", n_frames,
                         MOEH_MAX_FRAMES);
    if (!(e = moeh__envelope__unpack(NULL, hdr_len, hdr))) {
        rc = moeh_errf(err, -EBADMSG, "header is not a valid moeh.Envelope");
        goto fail;
    }
    if (has_unknown_fields(&e->base, 0)) {
        rc = moeh_errf(err, -EBADMSG, "header carries fields protocol version %u does not define",
                       MOEH_PROTOCOL_VERSION);
        goto fail;
    }
    if (e->protocol_version != MOEH_PROTOCOL_VERSION) {
        rc = moeh_errf(err, -EPROTO, "protocol version %u, expected %u", e->protocol_version,
                       MOEH_PROTOCOL_VERSION);
        goto fail;
    }
    if (e->type < MOEH__MSG_TYPE__HELLO || e->type > MOEH__MSG_TYPE__BYE) {
        rc = moeh_errf(err, -EBADMSG, "type: %d is not a known message type", (int)e->type);
        goto fail;
    }
    if ((int)e->body_case != (int)e->type + 9) {
        rc = moeh_errf(err, -EBADMSG, "%s: body missing or of another type",
                       moeh_msg_type_name(e->type));
        goto fail;
    }
    if (e->n_frames != n_frames) {
        rc = moeh_errf(err, -EBADMSG, "header describes %zu tensor frames, %zu arrived",
                       e->n_frames, n_frames);
        goto fail;
    }
    for (size_t i = 0; i < n_frames; i++) {
        const Moeh__FrameDesc *d = e->frames[i];
        size_t es = dtype_size(d->dtype);
        if (es == 0 || strnlen(d->name, 65) > 64) {
            rc = moeh_errf(err, -EBADMSG, "frames[%zu]: bad dtype or name", i);
            goto fail;
        }
        if (d->count > MOEH_MAX_PARAMS || d->count * es != frames[i].len) {
            rc = moeh_errf(err, -EBADMSG, "frames[%zu] '%s': %zu bytes, header says %llu x %zu",
                           i, d->name, frames[i].len, (unsigned long long)d->count, es);
            goto fail;
        }
    }
    if ((rc = validate_body(lim, e, frames, n_frames, err)))
        goto fail;
    *out = e;
    return 0;
fail:
    if (e)
        moeh__envelope__free_unpacked(e, NULL);
    return rc;
}

int moeh_wire_pack(Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames,
                   uint8_t **buf_out, size_t *len_out)
{
    if (n_frames > MOEH_MAX_FRAMES)
        return -EINVAL;
    Moeh__FrameDesc descs[MOEH_MAX_FRAMES], *dp[MOEH_MAX_FRAMES];
    for (size_t i = 0; i < n_frames; i++) {
        moeh__frame_desc__init(&descs[i]);
        descs[i].name = (char *)frames[i].name;
        descs[i].dtype = frames[i].dtype;
        descs[i].count = frames[i].count;
        dp[i] = &descs[i];
    }
    env->protocol_version = MOEH_PROTOCOL_VERSION;
    env->n_frames = n_frames;
    env->frames = n_frames ? dp : NULL;
    size_t len = moeh__envelope__get_packed_size(env);
    int rc = 0;
    uint8_t *buf = NULL;
    if (len > MOEH_MAX_HEADER_BYTES) {
        rc = -EMSGSIZE;
        goto out;
    }
    if (!(buf = malloc(len ? len : 1))) {
        rc = -ENOMEM;
        goto out;
    }
    MOEH_ASSERT(moeh__envelope__pack(env, buf) == len);
    *buf_out = buf;
    *len_out = len;
out:
    env->frames = NULL; /* the descs live on this stack frame */
    env->n_frames = 0;
    return rc;
}

int moeh_wire_send(void *sock, const uint8_t *routing_id, size_t routing_id_len,
                   Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames)
{
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    int rc = moeh_wire_pack(env, frames, n_frames, &hdr, &hlen);
    if (rc)
        return rc;
    if (routing_id && zmq_send(sock, routing_id, routing_id_len, ZMQ_SNDMORE) < 0) {
        rc = -zmq_errno();
        goto out;
    }
    if (zmq_send(sock, hdr, hlen, n_frames ? ZMQ_SNDMORE : 0) < 0) {
        rc = -zmq_errno();
        goto out;
    }
    for (size_t i = 0; i < n_frames; i++) {
        size_t bytes = frames[i].count * dtype_size(frames[i].dtype);
        if (zmq_send(sock, frames[i].data, bytes, i + 1 < n_frames ? ZMQ_SNDMORE : 0) < 0) {
            rc = -zmq_errno();
            goto out;
        }
    }
out:
    free(hdr);
    return rc;
}

int moeh_wire_send_error(void *sock, const uint8_t *rid, size_t rid_len, int code,
                         const char *message)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Error e = MOEH__ERROR__INIT;
    char buf[MOEH_MAX_STRING + 1];
    snprintf(buf, sizeof buf, "%s", message);
    e.code = code;
    e.message = buf;
    env.type = MOEH__MSG_TYPE__ERROR;
    env.body_case = MOEH__ENVELOPE__BODY_ERROR;
    env.error = &e;
    return moeh_wire_send(sock, rid, rid_len, &env, NULL, 0);
}

int moeh_wire_send_simple(void *sock, const uint8_t *rid, size_t rid_len, Moeh__MsgType type,
                          const char *text, uint64_t seq)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    Moeh__Bye bye = MOEH__BYE__INIT;
    env.type = type;
    if (type == MOEH__MSG_TYPE__HEARTBEAT) {
        hb.seq = seq;
        env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
    } else if (type == MOEH__MSG_TYPE__BYE) {
        bye.reason = (char *)(text ? text : "");
        env.body_case = MOEH__ENVELOPE__BODY_BYE;
        env.bye = &bye;
    } else {
        return -EINVAL;
    }
    return moeh_wire_send(sock, rid, rid_len, &env, NULL, 0);
}

typedef struct {
    zmq_msg_t parts[MOEH_MAX_PARTS];
    size_t n;
} parts_t;

void moeh_msg_clear(moeh_msg_t *msg)
{
    if (msg->env)
        moeh__envelope__free_unpacked(msg->env, NULL);
    parts_t *ps = msg->parts_storage;
    if (ps) {
        for (size_t i = 0; i < ps->n; i++)
            zmq_msg_close(&ps->parts[i]);
        free(ps);
    }
    memset(msg, 0, sizeof *msg);
}

int moeh_wire_recv(void *sock, int with_routing_id, const moeh_wire_limits_t *lim,
                   moeh_msg_t *msg, moeh_err_t *err)
{
    memset(msg, 0, sizeof *msg);
    parts_t *ps = calloc(1, sizeof *ps);
    if (!ps)
        return moeh_errf(err, -ENOMEM, "out of memory");
    msg->parts_storage = ps;
    int more = 1, too_many = 0, flags = ZMQ_DONTWAIT;
    while (more) {
        zmq_msg_t scratch, *p = ps->n < MOEH_MAX_PARTS ? &ps->parts[ps->n] : &scratch;
        zmq_msg_init(p);
        if (zmq_msg_recv(p, sock, flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(p);
            return e == EAGAIN ? -EAGAIN
                               : moeh_errf(err, -e, "receive failed: %s", zmq_strerror(e));
        }
        flags = 0; /* the rest of a multipart message is already here */
        more = zmq_msg_more(p);
        if (p == &scratch) { /* drain parts beyond the limit */
            zmq_msg_close(p);
            too_many = 1;
        } else {
            ps->n++;
        }
    }
    size_t first = 0;
    if (with_routing_id) {
        size_t rl = zmq_msg_size(&ps->parts[0]);
        if (rl > sizeof msg->routing_id)
            return moeh_errf(err, -EBADMSG, "routing id too long");
        memcpy(msg->routing_id, zmq_msg_data(&ps->parts[0]), rl);
        msg->routing_id_len = rl;
        first = 1;
    }
    if (ps->n <= first)
        return moeh_errf(err, -EBADMSG, "message has no header frame");
    /* The ZAP handler sets User-Id to the admitted site's id; absent without CURVE. */
    const char *uid = zmq_msg_gets(&ps->parts[first], "User-Id");
    if (uid)
        snprintf(msg->peer, sizeof msg->peer, "%s", uid);
    if (too_many)
        return moeh_errf(err, -EMSGSIZE, "message has more than %u parts", MOEH_MAX_PARTS);
    size_t nf = ps->n - first - 1;
    if (nf > MOEH_MAX_FRAMES)
        return moeh_errf(err, -EMSGSIZE, "%zu tensor frames, limit %u", nf, MOEH_MAX_FRAMES);
    for (size_t i = 0; i < nf; i++) {
        msg->frames[i].data = zmq_msg_data(&ps->parts[first + 1 + i]);
        msg->frames[i].len = zmq_msg_size(&ps->parts[first + 1 + i]);
    }
    msg->n_frames = nf;
    return moeh_wire_decode(lim, zmq_msg_data(&ps->parts[first]), zmq_msg_size(&ps->parts[first]),
                            msg->frames, nf, &msg->env, err);
}
