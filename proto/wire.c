/* wire.c - validating decoder and encoder for moeh messages (see moeh_wire.h); the ZeroMQ
 * side (sending, receiving, joining parts) is transport.c. */
#include "moeh_wire.h"
#include "moeh_stream.h"

#include "moeh_dp.h"
#include "moeh_secagg.h"

#include <math.h>
#include <string.h>
#include <zmq.h>

static const char *k_type_names[] = {
    "unspecified",      "hello",        "welcome",       "round_start",   "update",
    "eval_result",      "heartbeat",    "error",         "bye",           "stats_result",
    "secagg_advertise", "secagg_keys",  "secagg_shares", "secagg_unmask", "secagg_reveal",
    "secagg_masked",    "upload_ready", "upload_grant",  "final_model",   "final_ack",
    "upload_chunk",     "upload_credit"};

const char *moeh_msg_type_name(int type)
{
    return (type >= 0 && (size_t)type < sizeof k_type_names / sizeof *k_type_names)
               ? k_type_names[type]
               : "unknown";
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

size_t moeh_wire_dtype_size(int dt)
{
    return dt == MOEH__DTYPE__F32 || dt == MOEH__DTYPE__U32 ? 4
           : dt == MOEH__DTYPE__F64                         ? 8
           : dt == MOEH__DTYPE__U8                          ? 1
                                                            : 0;
}

static int check_string(const char *s, size_t max, const char *field, moeh_err_t *err)
{
    if (strnlen(s, max + 1) > max)
        return moeh_errf(err, -EBADMSG, "%s: longer than %zu bytes", field, max);
    return 0;
}

/* A non-empty text of at most max bytes, valid UTF-8 (no overlong forms, surrogates or code
 * points above U+10FFFF). A C string cannot hold a NUL: the decoder's string ends at the first. */
static int check_utf8(const char *s, size_t max, const char *field, moeh_err_t *err)
{
    size_t n = strnlen(s, max + 1);
    if (n == 0) return moeh_errf(err, -EBADMSG, "%s: empty", field);
    if (n > max) return moeh_errf(err, -EBADMSG, "%s: longer than %zu bytes", field, max);
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        if (!len || i + len > n) goto bad;
        uint32_t cp = len == 1 ? c : c & (0x7fu >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) goto bad;
        i += len;
        continue;
    bad:
        return moeh_errf(err, -EBADMSG, "%s: invalid UTF-8 at byte %zu", field, i);
    }
    return 0;
}

/* A tensor frame a message type must carry: its name, dtype and element count. */
typedef struct {
    const char *name;
    int dtype;
    uint64_t count;
} frame_spec_t;

/* The frames must be exactly `want`, in order. A count of 0 means "not negotiated yet". */
static int expect_frames(const Moeh__Envelope *e, size_t n_frames, const frame_spec_t *want,
                         size_t n_want, moeh_err_t *err)
{
    if (n_frames != n_want || e->n_frames != n_want)
        return moeh_errf(err, -EBADMSG, "%s: expected %zu tensor frames ('%s'%s), got %zu",
                         moeh_msg_type_name(e->type), n_want, want[0].name,
                         n_want > 1 ? ", ..." : "", n_frames);
    for (size_t i = 0; i < n_want; i++) {
        const Moeh__FrameDesc *d = e->frames[i];
        if (strcmp(d->name, want[i].name) != 0 || (int)d->dtype != want[i].dtype)
            return moeh_errf(err, -EBADMSG,
                             "%s: frame %zu is '%s' (dtype %d), expected '%s' (dtype %d)",
                             moeh_msg_type_name(e->type), i, d->name, (int)d->dtype, want[i].name,
                             want[i].dtype);
        if (want[i].count == 0)
            return moeh_errf(err, -EBADMSG, "%s: tensor frame before the model was negotiated",
                             moeh_msg_type_name(e->type));
        if (d->count != want[i].count)
            return moeh_errf(err, -EBADMSG, "%s: frame '%s' has %llu elements, expected %llu",
                             moeh_msg_type_name(e->type), want[i].name,
                             (unsigned long long)d->count, (unsigned long long)want[i].count);
    }
    return 0;
}

static int expect_frame(const Moeh__Envelope *e, const moeh_iov_t *frames, size_t n_frames,
                        const char *name, int dtype, uint64_t count, moeh_err_t *err)
{
    (void)frames;
    frame_spec_t w = {name, dtype, count};
    return expect_frames(e, n_frames, &w, 1, err);
}

static int check_finite_f64(const moeh_iov_t *f, const char *what, moeh_err_t *err)
{
    size_t n = f->len / 8;
    const uint8_t *p = f->data;
    for (size_t i = 0; i < n; i++) {
        double x;
        memcpy(&x, p + 8 * i, 8);
        if (!isfinite(x)) return moeh_errf(err, -ERANGE, "%s: element %zu is not finite", what, i);
    }
    return 0;
}

static int check_finite_f32(const moeh_iov_t *f, const char *what, moeh_err_t *err)
{
    size_t n = f->len / 4;
    const uint8_t *p = f->data;
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, p + 4 * i, 4); /* frames need not be aligned */
        if (!isfinite(x)) return moeh_errf(err, -ERANGE, "%s: element %zu is not finite", what, i);
    }
    return 0;
}

static int fin(double x, const char *field, moeh_err_t *err)
{
    return isfinite(x) ? 0 : moeh_errf(err, -ERANGE, "%s: not finite", field);
}

/* RoundConfig's DP-FedAvg fields (fed/moeh_dp.h): all zero (off), or a clip > 0, a noise
 * multiplier in [0, MOEH_WIRE_DP_MAX_NOISE], a calibration count 1..MOEH_WIRE_DP_MAX_SITES,
 * unweighted aggregation (bounded sensitivity) and a fixed-point range that holds a clipped,
 * noised coordinate without clamping it (delta_clip >= moeh_dp_range). */
static int validate_dp(const Moeh__RoundConfig *c, moeh_err_t *err)
{
    int rc;
    if ((rc = fin(c->dp_clip, "round_start.config.dp_clip", err)) ||
        (rc = fin(c->dp_noise, "round_start.config.dp_noise", err)))
        return rc;
    if (c->dp_clip == 0) {
        if (c->dp_noise != 0 || c->dp_sites != 0)
            return moeh_errf(err, -EBADMSG,
                             "round_start.config: dp_noise and dp_sites must be 0 "
                             "when dp_clip is 0 (DP off)");
        return 0;
    }
    if (!(c->dp_clip > 0) || !(c->dp_noise >= 0 && c->dp_noise <= MOEH_WIRE_DP_MAX_NOISE) ||
        c->dp_sites == 0 || c->dp_sites > MOEH_WIRE_DP_MAX_SITES)
        return moeh_errf(err, -EBADMSG,
                         "round_start.config: dp_clip > 0, dp_noise in [0, %g] and dp_sites "
                         "1..%u expected",
                         MOEH_WIRE_DP_MAX_NOISE, MOEH_WIRE_DP_MAX_SITES);
    if (!c->unweighted)
        return moeh_errf(err, -EBADMSG,
                         "round_start.config: DP needs unweighted aggregation (one weight per "
                         "site, so that one site's influence is bounded by dp_clip)");
    float range = moeh_dp_range(c->dp_clip, c->dp_noise, c->dp_sites);
    if (!(c->delta_clip >= range))
        return moeh_errf(err, -EBADMSG,
                         "round_start.config: delta_clip %g cannot hold a clipped, noised "
                         "coordinate (dp_clip %g, dp_noise %g, dp_sites %u need >= %g)",
                         (double)c->delta_clip, (double)c->dp_clip, (double)c->dp_noise,
                         c->dp_sites, (double)range);
    return 0;
}

/* ---- secure aggregation (docs/secagg.md): ids below MOEH_WIRE_SECAGG_MAX, lists strictly
 * increasing (so without repeats), keys and ciphertexts of their exact sizes. Whether an id
 * is below this session's n, and who may send what, are session checks. */
static int check_session(uint64_t session, const char *what, moeh_err_t *err)
{
    return session ? 0 : moeh_errf(err, -EBADMSG, "%s.session: must be non-zero", what);
}

static int check_bytes(const ProtobufCBinaryData *b, size_t want, const char *field,
                       moeh_err_t *err)
{
    if (b->len != want)
        return moeh_errf(err, -EBADMSG, "%s: %zu bytes, expected %zu", field, b->len, want);
    return 0;
}

/* ids[n]: each < MOEH_WIRE_SECAGG_MAX and strictly increasing. */
static int check_ids(const uint32_t *ids, size_t n, const char *field, moeh_err_t *err)
{
    if (n > MOEH_WIRE_SECAGG_MAX)
        return moeh_errf(err, -EBADMSG, "%s: %zu entries, limit %u", field, n,
                         MOEH_WIRE_SECAGG_MAX);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= MOEH_WIRE_SECAGG_MAX)
            return moeh_errf(err, -EBADMSG, "%s[%zu]: id %u, expected < %u", field, i, ids[i],
                             MOEH_WIRE_SECAGG_MAX);
        if (i > 0 && ids[i] <= ids[i - 1])
            return moeh_errf(err, -EBADMSG, "%s[%zu]: ids must be strictly increasing", field, i);
    }
    return 0;
}

static int validate_secagg(const moeh_wire_limits_t *lim, const Moeh__Envelope *e, moeh_err_t *err)
{
    int rc;
    uint32_t ids[MOEH_WIRE_SECAGG_MAX];
    switch (e->type) {
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE: {
        const Moeh__SecaggAdvertise *a = e->secagg_advertise;
        if ((rc = check_session(a->session, "secagg_advertise", err)) ||
            (rc = check_bytes(&a->c_pk, MOEH_SECAGG_KEY_BYTES, "secagg_advertise.c_pk", err)) ||
            (rc = check_bytes(&a->s_pk, MOEH_SECAGG_KEY_BYTES, "secagg_advertise.s_pk", err)))
            return rc;
        return 0;
    }
    case MOEH__MSG_TYPE__SECAGG_KEYS: {
        const Moeh__SecaggKeys *k = e->secagg_keys;
        if ((rc = check_session(k->session, "secagg_keys", err))) return rc;
        if (k->n_keys < 2 || k->n_keys > MOEH_WIRE_SECAGG_MAX)
            return moeh_errf(err, -EBADMSG, "secagg_keys.keys: %zu entries, expected 2..%u",
                             k->n_keys, MOEH_WIRE_SECAGG_MAX);
        for (size_t i = 0; i < k->n_keys; i++) {
            ids[i] = k->keys[i]->id;
            if ((rc = check_bytes(&k->keys[i]->c_pk, MOEH_SECAGG_KEY_BYTES, "secagg_keys.keys.c_pk",
                                  err)) ||
                (rc = check_bytes(&k->keys[i]->s_pk, MOEH_SECAGG_KEY_BYTES, "secagg_keys.keys.s_pk",
                                  err)))
                return rc;
        }
        return check_ids(ids, k->n_keys, "secagg_keys.keys.id", err);
    }
    case MOEH__MSG_TYPE__SECAGG_SHARES: {
        const Moeh__SecaggShares *s = e->secagg_shares;
        if ((rc = check_session(s->session, "secagg_shares", err))) return rc;
        if (s->n_ciphers < 1 || s->n_ciphers > MOEH_WIRE_SECAGG_MAX)
            return moeh_errf(err, -EBADMSG, "secagg_shares.ciphers: %zu entries, expected 1..%u",
                             s->n_ciphers, MOEH_WIRE_SECAGG_MAX);
        for (size_t i = 0; i < s->n_ciphers; i++) {
            ids[i] = s->ciphers[i]->peer;
            if ((rc = check_bytes(&s->ciphers[i]->ct, MOEH_SECAGG_SHARE_CT_BYTES,
                                  "secagg_shares.ciphers.ct", err)))
                return rc;
        }
        if ((rc = check_ids(ids, s->n_ciphers, "secagg_shares.ciphers.peer", err))) return rc;
        return check_ids(s->u2, s->n_u2, "secagg_shares.u2", err);
    }
    case MOEH__MSG_TYPE__SECAGG_UNMASK: {
        const Moeh__SecaggUnmask *u = e->secagg_unmask;
        if ((rc = check_session(u->session, "secagg_unmask", err)) ||
            (rc = check_ids(u->survivors, u->n_survivors, "secagg_unmask.survivors", err)) ||
            (rc = check_ids(u->dropped, u->n_dropped, "secagg_unmask.dropped", err)))
            return rc;
        if (u->n_survivors < 2)
            return moeh_errf(err, -EBADMSG, "secagg_unmask.survivors: %zu, expected >= 2",
                             u->n_survivors);
        for (size_t i = 0, j = 0; i < u->n_survivors && j < u->n_dropped;) {
            if (u->survivors[i] == u->dropped[j])
                return moeh_errf(err, -EBADMSG,
                                 "secagg_unmask: id %u is both a survivor and "
                                 "dropped",
                                 u->dropped[j]);
            if (u->survivors[i] < u->dropped[j])
                i++;
            else
                j++;
        }
        return 0;
    }
    case MOEH__MSG_TYPE__SECAGG_REVEAL: {
        const Moeh__SecaggReveal *r = e->secagg_reveal;
        if ((rc = check_session(r->session, "secagg_reveal", err))) return rc;
        if (r->n_shares > MOEH_WIRE_SECAGG_MAX)
            return moeh_errf(err, -EBADMSG, "secagg_reveal.shares: %zu entries, limit %u",
                             r->n_shares, MOEH_WIRE_SECAGG_MAX);
        for (size_t i = 0; i < r->n_shares; i++) {
            const Moeh__SecaggShare *sh = r->shares[i];
            ids[i] = sh->owner;
            if (sh->kind != MOEH__SECAGG_KIND__SECAGG_B && sh->kind != MOEH__SECAGG_KIND__SECAGG_S)
                return moeh_errf(err, -EBADMSG,
                                 "secagg_reveal.shares[%zu].kind: %d, expected "
                                 "SECAGG_B or SECAGG_S",
                                 i, (int)sh->kind);
            if (sh->n_y != MOEH_SECAGG_SHARE_ELEMS)
                return moeh_errf(err, -EBADMSG,
                                 "secagg_reveal.shares[%zu].y: %zu elements, "
                                 "expected %u",
                                 i, sh->n_y, MOEH_SECAGG_SHARE_ELEMS);
            for (size_t k = 0; k < sh->n_y; k++)
                if (sh->y[k] >= MOEH_SECAGG_PRIME)
                    return moeh_errf(err, -EBADMSG,
                                     "secagg_reveal.shares[%zu].y[%zu]: not an "
                                     "element of GF(2^61 - 1)",
                                     i, k);
        }
        return check_ids(ids, r->n_shares, "secagg_reveal.shares.owner", err);
    }
    default:
        break;
    }
    (void)lim;
    return moeh_errf(err, -EBADMSG, "type: %d is not a secure-aggregation message", (int)e->type);
}

/* RoundStart.secagg: a configuration fed/moeh_secagg.h accepts for this model's update length. */
static int validate_secagg_params(const moeh_wire_limits_t *lim, const Moeh__RoundStart *r,
                                  moeh_err_t *err)
{
    const Moeh__SecaggParams *p = r->secagg;
    int rc;
    if ((rc = check_session(p->session, "round_start.secagg", err))) return rc;
    if (p->n < 2 || p->n > MOEH_WIRE_SECAGG_MAX || p->id >= p->n)
        return moeh_errf(err, -EBADMSG,
                         "round_start.secagg: n %u (expected 2..%u) and id %u "
                         "(expected < n)",
                         p->n, MOEH_WIRE_SECAGG_MAX, p->id);
    size_t len = moeh_wire_secsum_len(lim, r->task);
    if (len == 0)
        return moeh_errf(err, -EBADMSG, "round_start.secagg: before the model was negotiated");
    moeh_secagg_cfg_t cfg = {.round = p->session,
                             .n = p->n,
                             .t = p->t,
                             .k = p->k,
                             .graph_seed = p->graph_seed,
                             .len = len};
    moeh_err_t e2 = {0};
    if (moeh_secagg_cfg_check(&cfg, &e2))
        return moeh_errf(err, -EBADMSG, "round_start.secagg: %s", e2.msg);
    return 0;
}

/* One split's figures of an EvalResult (the test split, or its validation): its shape (tasks,
 * bins, combinations), then (the frames' names and sizes checked by expect_frames) histograms
 * that hold exactly n_labels labels and non-negative finite gate sums. */
static int check_eval_shape(const moeh_wire_limits_t *lim, const Moeh__EvalResult *r,
                            const char *what, moeh_err_t *err)
{
    if (lim->n_tasks == 0 || r->n_tasks != lim->n_tasks || r->n_bins != lim->eval_bins)
        return moeh_errf(err, -EBADMSG, "%s: %u tasks x %u bins, expected %u x %u", what,
                         r->n_tasks, r->n_bins, lim->n_tasks, lim->eval_bins);
    if (r->n_combo_rows != MOEH_N_COMBOS)
        return moeh_errf(err, -EBADMSG, "%s.combo_rows: %zu entries, expected %u", what,
                         r->n_combo_rows, MOEH_N_COMBOS);
    return 0;
}

static int check_eval_split(const Moeh__EvalResult *r, const char *what, const moeh_iov_t *hist,
                            const moeh_iov_t *gate, moeh_err_t *err)
{
    int rc;
    char field[64];
    snprintf(field, sizeof field, "%s.loss_sum", what);
    if ((rc = fin(r->loss_sum, field, err))) return rc;
    if (r->loss_sum < 0) return moeh_errf(err, -EBADMSG, "%s: negative", field);
    snprintf(field, sizeof field, "%s.gate", what);
    if ((rc = check_finite_f32(gate, field, err))) return rc;
    const uint64_t per_slice = (uint64_t)r->n_tasks * 2 * r->n_bins;
    uint64_t total = 0, in_combos = 0;
    const uint8_t *p = hist->data;
    for (uint64_t i = 0; i < MOEH_N_SLICES * per_slice; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        if (i < per_slice)
            total += x;
        else
            in_combos += x;
    }
    if (total != r->n_labels || in_combos > r->n_labels)
        return moeh_errf(err, -EBADMSG,
                         "%s: histograms hold %llu labels (%llu in combinations), n_labels "
                         "says %llu",
                         what, (unsigned long long)total, (unsigned long long)in_combos,
                         (unsigned long long)r->n_labels);
    const uint8_t *g = gate->data;
    for (size_t i = 0; i < gate->len / 4; i++) {
        float x;
        memcpy(&x, g + 4 * i, 4);
        if (x < 0) return moeh_errf(err, -EBADMSG, "%s: element %zu is negative", field, i);
    }
    return 0;
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
            return moeh_errf(err, -EBADMSG, "hello.n_features: %u, expected 1..%u", h->n_features,
                             1u << 20);
        if (h->n_vars > 4096 || h->n_steps > 1000 || h->img_size > 1024)
            return moeh_errf(err, -EBADMSG,
                             "hello: n_vars <= 4096, n_steps <= 1000 and "
                             "img_size <= 1024 expected");
        if (h->n_train > MOEH_WIRE_MAX_ROWS || h->n_eval > MOEH_WIRE_MAX_ROWS ||
            h->n_val > MOEH_WIRE_MAX_ROWS) /* the coordinator caps them further (robust.c) */
            return moeh_errf(err, -EBADMSG,
                             "hello: n_train %llu, n_eval %llu, n_val %llu: each expected below "
                             "2^53",
                             (unsigned long long)h->n_train, (unsigned long long)h->n_eval,
                             (unsigned long long)h->n_val);
        if (h->note_dim > 65536 || h->img_dim > 65536) /* precomputed vectors (data/) */
            return moeh_errf(err, -EBADMSG, "hello: note_dim %u, img_dim %u: expected <= 65536",
                             h->note_dim, h->img_dim);
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
        if (!m) return moeh_errf(err, -EBADMSG, "welcome.model: missing");
        /* the layer limits are the model library's (moeh_moe_cfg_validate): here only what
         * sizes the tensors and that the configuration is a bounded UTF-8 text */
        if ((rc = check_utf8(m->config_json, MOEH_WIRE_MAX_CONFIG_JSON, "welcome.model.config_json",
                             err)))
            return rc;
        if (m->n_tasks == 0 || m->n_tasks > MOEH_WIRE_MAX_TASKS)
            return moeh_errf(err, -EBADMSG, "welcome.model.n_tasks: %u, expected 1..%u", m->n_tasks,
                             MOEH_WIRE_MAX_TASKS);
        if (m->n_experts == 0 || m->n_experts > MOEH_N_COMBOS)
            return moeh_errf(err, -EBADMSG, "welcome.model.n_experts: %u, expected 1..%u",
                             m->n_experts, MOEH_N_COMBOS);
        if (m->n_norm > (1u << 21))
            return moeh_errf(err, -EBADMSG, "welcome.model.n_norm: %u, expected <= %u", m->n_norm,
                             1u << 21);
        if (m->n_params == 0 || m->n_params > MOEH_MAX_PARAMS || m->n_groups == 0 ||
            m->n_groups > 32)
            return moeh_errf(err, -EBADMSG,
                             "welcome.model: n_params 1..2^28 and n_groups "
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
        if (r->task != MOEH__ROUND_TASK__TRAIN && r->task != MOEH__ROUND_TASK__EVALUATE &&
            r->task != MOEH__ROUND_TASK__STATS && r->task != MOEH__ROUND_TASK__VALIDATE)
            return moeh_errf(err, -EBADMSG,
                             "round_start.task: %d, expected TRAIN, EVALUATE, VALIDATE or STATS",
                             (int)r->task);
        if (!c) return moeh_errf(err, -EBADMSG, "round_start.config: missing");
        if (r->deadline_ms == 0)
            return moeh_errf(err, -EBADMSG, "round_start.deadline_ms: must be > 0");
        if (c->local_epochs == 0 || c->local_epochs > 1000 || c->batch_size == 0 ||
            c->batch_size > 65536)
            return moeh_errf(err, -EBADMSG,
                             "round_start.config: local_epochs 1..1000 and "
                             "batch_size 1..65536 expected");
        if ((rc = fin(c->lr, "round_start.config.lr", err)) ||
            (rc = fin(c->weight_decay, "round_start.config.weight_decay", err)) ||
            (rc = fin(c->clip, "round_start.config.clip", err)) ||
            (rc = fin(c->prox_mu, "round_start.config.prox_mu", err)))
            return rc;
        if (!(c->lr > 0 && c->lr <= 10) || c->weight_decay < 0 || c->clip < 0 || c->prox_mu < 0)
            return moeh_errf(err, -EBADMSG,
                             "round_start.config: lr in (0, 10], weight_decay, "
                             "clip and prox_mu >= 0 expected");
        if ((rc = fin(c->delta_clip, "round_start.config.delta_clip", err)) ||
            (rc = fin(c->quant_scale, "round_start.config.quant_scale", err)))
            return rc;
        if (!(c->delta_clip > 0) || !(c->quant_scale > 0) ||
            c->quant_scale * c->delta_clip > 2147483647.0)
            return moeh_errf(err, -EBADMSG,
                             "round_start.config: delta_clip > 0 and quant_scale "
                             "> 0 with quant_scale * delta_clip < 2^31 expected");
        if ((rc = validate_dp(c, err))) return rc;
        if (r->secagg && (rc = validate_secagg_params(lim, r, err))) return rc;
        /* no frames: STATS, or the site holds the model (checked after the switch) */
        if (r->task == MOEH__ROUND_TASK__STATS || r->model_held) break;
        frame_spec_t want[2] = {{"params", MOEH__DTYPE__F32, lim->n_params},
                                {"norm", MOEH__DTYPE__F32, 2 * (uint64_t)lim->n_norm}};
        if (lim->n_norm == 0) want[1].count = 0;
        if ((rc = expect_frames(e, n_frames, want, 2, err)) ||
            (rc = check_finite_f32(&frames[0], "round_start.params", err)) ||
            (rc = check_finite_f32(&frames[1], "round_start.norm", err)))
            return rc;
        const uint8_t *np = frames[1].data;
        for (size_t i = lim->n_norm; i < 2 * (size_t)lim->n_norm; i++) {
            float sd;
            memcpy(&sd, np + 4 * i, 4);
            if (!(sd > 0))
                return moeh_errf(err, -EBADMSG,
                                 "round_start.norm: standard deviation %zu is "
                                 "not positive",
                                 i - lim->n_norm);
        }
        return 0;
    }
    case MOEH__MSG_TYPE__UPDATE: {
        const Moeh__Update *u = e->update;
        if ((rc = fin(u->train_loss, "update.train_loss", err))) return rc;
        if (u->train_loss < 0) return moeh_errf(err, -EBADMSG, "update.train_loss: negative");
        if (lim->n_groups == 0)
            return moeh_errf(err, -EBADMSG, "update: before the model was negotiated");
        return expect_frame(e, frames, n_frames, "update", MOEH__DTYPE__U32,
                            lim->n_params ? lim->n_params + lim->n_groups : 0, err);
    }
    case MOEH__MSG_TYPE__EVAL_RESULT: {
        const Moeh__EvalResult *r = e->eval_result, *v = r->validation;
        if (v && v->validation)
            return moeh_errf(err, -EBADMSG, "eval_result.validation.validation: not allowed");
        if ((rc = check_eval_shape(lim, r, "eval_result", err)) ||
            (v && (rc = check_eval_shape(lim, v, "eval_result.validation", err))))
            return rc;
        const uint64_t hist = (uint64_t)MOEH_N_SLICES * lim->n_tasks * 2 * lim->eval_bins,
                       gate = (uint64_t)MOEH_N_COMBOS * lim->n_experts;
        frame_spec_t want[4] = {{"hist", MOEH__DTYPE__U32, hist},
                                {"gate", MOEH__DTYPE__F32, gate},
                                {"val_hist", MOEH__DTYPE__U32, hist},
                                {"val_gate", MOEH__DTYPE__F32, gate}};
        if ((rc = expect_frames(e, n_frames, want, v ? 4 : 2, err)) ||
            (rc = check_eval_split(r, "eval_result", &frames[0], &frames[1], err)))
            return rc;
        return v ? check_eval_split(v, "eval_result.validation", &frames[2], &frames[3], err) : 0;
    }
    case MOEH__MSG_TYPE__STATS_RESULT: {
        if ((rc = expect_frame(e, frames, n_frames, "stats", MOEH__DTYPE__F64,
                               3 * (uint64_t)lim->n_norm, err)) ||
            (rc = check_finite_f64(&frames[0], "stats_result.stats", err)))
            return rc;
        const uint8_t *p = frames[0].data;
        for (size_t i = 0; i < lim->n_norm; i++) {
            double cnt, sq;
            memcpy(&cnt, p + 8 * (3 * i), 8);
            memcpy(&sq, p + 8 * (3 * i + 2), 8);
            if (cnt < 0 || sq < 0)
                return moeh_errf(err, -EBADMSG,
                                 "stats_result: feature %zu has a negative count "
                                 "or sum of squares",
                                 i);
        }
        return 0;
    }
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
    case MOEH__MSG_TYPE__SECAGG_KEYS:
    case MOEH__MSG_TYPE__SECAGG_SHARES:
    case MOEH__MSG_TYPE__SECAGG_UNMASK:
    case MOEH__MSG_TYPE__SECAGG_REVEAL:
        if ((rc = validate_secagg(lim, e, err))) return rc;
        break;
    case MOEH__MSG_TYPE__SECAGG_MASKED: {
        /* uniform words: only the session, the task and the vector's length can be checked */
        const Moeh__SecaggMasked *sm = e->secagg_masked;
        if ((rc = check_session(sm->session, "secagg_masked", err))) return rc;
        if (sm->task != MOEH__ROUND_TASK__TRAIN && sm->task != MOEH__ROUND_TASK__EVALUATE &&
            sm->task != MOEH__ROUND_TASK__STATS && sm->task != MOEH__ROUND_TASK__VALIDATE)
            return moeh_errf(err, -EBADMSG,
                             "secagg_masked.task: %d, expected TRAIN, EVALUATE, VALIDATE or STATS",
                             (int)sm->task);
        return expect_frame(e, frames, n_frames, "masked", MOEH__DTYPE__U32,
                            moeh_wire_secsum_len(lim, sm->task), err);
    }
    case MOEH__MSG_TYPE__UPLOAD_READY:
    case MOEH__MSG_TYPE__UPLOAD_GRANT:
        /* round (0: the statistics), version and session (0: plain) are session checks */
        break;
    case MOEH__MSG_TYPE__UPLOAD_CHUNK: {
        /* each field in range here; the sequence and the sizes against the first chunk are
         * the receiver's (moeh_stream_rx_put) */
        const Moeh__UploadChunk *ch = e->upload_chunk;
        const uint64_t most = moeh_stream_max_bytes(lim);
        if (most == 0)
            return moeh_errf(err, -EBADMSG, "upload_chunk: before the model was negotiated");
        if (ch->stream == 0)
            return moeh_errf(err, -EBADMSG, "upload_chunk.stream: must be non-zero");
        const uint64_t max_chunks = (most + MOEH_STREAM_CHUNK_BYTES - 1) / MOEH_STREAM_CHUNK_BYTES;
        if (ch->n_chunks == 0 || ch->n_chunks > max_chunks || ch->index >= ch->n_chunks)
            return moeh_errf(err, -EBADMSG,
                             "upload_chunk: chunk %u of %u, expected 1..%llu chunks for this model",
                             ch->index, ch->n_chunks, (unsigned long long)max_chunks);
        if (ch->data.len == 0 || ch->data.len > MOEH_STREAM_CHUNK_BYTES ||
            (ch->index + 1 < ch->n_chunks && ch->data.len != MOEH_STREAM_CHUNK_BYTES))
            return moeh_errf(err, -EBADMSG,
                             "upload_chunk.data: %zu bytes in chunk %u of %u, expected %u (the "
                             "last: 1..%u)",
                             ch->data.len, ch->index, ch->n_chunks, MOEH_STREAM_CHUNK_BYTES,
                             MOEH_STREAM_CHUNK_BYTES);
        if (ch->index == 0 ? ch->n_part_bytes < 1 || ch->n_part_bytes > 1 + MOEH_MAX_FRAMES
                           : ch->n_part_bytes != 0)
            return moeh_errf(err, -EBADMSG,
                             "upload_chunk.part_bytes: %zu entries in chunk %u, expected 1..%u in "
                             "chunk 0 and none after",
                             ch->n_part_bytes, ch->index, 1 + MOEH_MAX_FRAMES);
        break;
    }
    case MOEH__MSG_TYPE__UPLOAD_CREDIT:
        if (e->upload_credit->stream == 0 || e->upload_credit->up_to == 0)
            return moeh_errf(err, -EBADMSG, "upload_credit: stream and up_to must be non-zero");
        break;
    case MOEH__MSG_TYPE__FINAL_MODEL: {
        /* the file itself is checked by the agent's model-file reader; here its size */
        const Moeh__FinalModel *fm = e->final_model;
        const uint64_t cap = MOEH_WIRE_MODELFILE_MAX(lim);
        if (fm->sha256.len != MOEH_WIRE_SHA256_BYTES)
            return moeh_errf(err, -EBADMSG, "final_model.sha256: %zu bytes, expected %u",
                             fm->sha256.len, MOEH_WIRE_SHA256_BYTES);
        if (cap == 0)
            return moeh_errf(err, -EBADMSG, "final_model: before the model was negotiated");
        if (fm->n_bytes < 16 || fm->n_bytes > cap)
            return moeh_errf(err, -EBADMSG,
                             "final_model.n_bytes: %llu, expected 16..%llu for this model",
                             (unsigned long long)fm->n_bytes, (unsigned long long)cap);
        return expect_frame(e, frames, n_frames, "model_file", MOEH__DTYPE__U8, fm->n_bytes, err);
    }
    case MOEH__MSG_TYPE__FINAL_ACK:
        if (e->final_ack->code == 0 && e->final_ack->sha256.len != MOEH_WIRE_SHA256_BYTES)
            return moeh_errf(err, -EBADMSG, "final_ack.sha256: %zu bytes, expected %u",
                             e->final_ack->sha256.len, MOEH_WIRE_SHA256_BYTES);
        if (e->final_ack->code > 0)
            return moeh_errf(err, -EBADMSG, "final_ack.code: %d, expected 0 or negative",
                             (int)e->final_ack->code);
        if ((rc = check_string(e->final_ack->message, MOEH_MAX_STRING, "final_ack.message", err)))
            return rc;
        break;
    case MOEH__MSG_TYPE__HEARTBEAT:
        break;
    case MOEH__MSG_TYPE__ERROR:
        if ((rc = check_string(e->error->message, MOEH_MAX_STRING, "error.message", err)))
            return rc;
        break;
    case MOEH__MSG_TYPE__BYE:
        if ((rc = check_string(e->bye->reason, MOEH_MAX_STRING, "bye.reason", err))) return rc;
        if ((int)e->bye->status < MOEH__BYE_STATUS__BYE_STATUS_FINISHED ||
            (int)e->bye->status > MOEH__BYE_STATUS__BYE_STATUS_LEFT)
            return moeh_errf(err, -EBADMSG,
                             "bye.status: %d, expected finished, paused, refused or left (1-4)",
                             (int)e->bye->status);
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
    if (!m) return 0;
    if (m->n_unknown_fields || depth > 8) return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (has_unknown_fields(arr[k], depth + 1)) return 1;
        } else if (has_unknown_fields(*(ProtobufCMessage *const *)(base + f->offset), depth + 1)) {
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
    if (hdr_len == 0) return moeh_errf(err, -EBADMSG, "empty header frame");
    if (hdr_len > MOEH_MAX_HEADER_BYTES)
        return moeh_errf(err, -EMSGSIZE, "header is %zu bytes, limit %u", hdr_len,
                         MOEH_MAX_HEADER_BYTES);
    if (n_frames > MOEH_MAX_FRAMES)
        return moeh_errf(err, -EMSGSIZE, "%zu tensor frames, limit %u", n_frames, MOEH_MAX_FRAMES);
    if (!(e = moeh__envelope__unpack(NULL, hdr_len, hdr))) {
        rc = moeh_errf(err, -EBADMSG, "header is not a valid moeh.Envelope");
        goto fail;
    }
    if (e->protocol_version != MOEH_PROTOCOL_VERSION) { /* first: a peer of another version
                                                         * is told so, whatever its fields */
        rc = moeh_errf(err, -EPROTO, "protocol version %u, expected %u", e->protocol_version,
                       MOEH_PROTOCOL_VERSION);
        goto fail;
    }
    if (has_unknown_fields(&e->base, 0)) {
        rc = moeh_errf(err, -EBADMSG, "header carries fields protocol version %u does not define",
                       MOEH_PROTOCOL_VERSION);
        goto fail;
    }
    if (e->type < MOEH__MSG_TYPE__HELLO || e->type > MOEH__MSG_TYPE__UPLOAD_CREDIT) {
        rc = moeh_errf(err, -EBADMSG, "type: %d is not a known message type", (int)e->type);
        goto fail;
    }
    if ((int)e->body_case != (int)e->type + 9) {
        rc = moeh_errf(err, -EBADMSG, "%s: body missing or of another type",
                       moeh_msg_type_name(e->type));
        goto fail;
    }
    if (e->type == MOEH__MSG_TYPE__WELCOME && moeh__envelope__get_packed_size(e) != hdr_len) {
        /* the decoder ends a string at its first NUL byte, so such a string re-encodes shorter
         * (as does a non-canonical encoding, which no protobuf encoder writes) */
        rc = moeh_errf(err, -EBADMSG,
                       "welcome: a string holds a NUL byte (or the encoding is not canonical)");
        goto fail;
    }
    if (e->n_frames != n_frames) {
        rc = moeh_errf(err, -EBADMSG, "header describes %zu tensor frames, %zu arrived",
                       e->n_frames, n_frames);
        goto fail;
    }
    for (size_t i = 0; i < n_frames; i++) {
        const Moeh__FrameDesc *d = e->frames[i];
        size_t es = moeh_wire_dtype_size(d->dtype);
        if (es == 0 || strnlen(d->name, 65) > 64) {
            rc = moeh_errf(err, -EBADMSG, "frames[%zu]: bad dtype or name", i);
            goto fail;
        }
        if (d->count > MOEH_MAX_PARAMS || d->count * es != frames[i].len) {
            rc = moeh_errf(err, -EBADMSG, "frames[%zu] '%s': %zu bytes, header says %llu x %zu", i,
                           d->name, frames[i].len, (unsigned long long)d->count, es);
            goto fail;
        }
    }
    if ((rc = validate_body(lim, e, frames, n_frames, err))) goto fail;
    *out = e;
    return 0;
fail:
    if (e) moeh__envelope__free_unpacked(e, NULL);
    return rc;
}

int moeh_wire_pack(Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames,
                   uint8_t **buf_out, size_t *len_out)
{
    if (n_frames > MOEH_MAX_FRAMES) return -EINVAL;
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
