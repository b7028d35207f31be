/* wire_util.h - what the test_wire_*.c suites share: negotiated limits (10 params, 2 groups,
 * 3 tasks, 4 bins, 3 normalisation features, 2 experts), one valid message of every plain type
 * (msg_t + mk_*), pack/decode helpers, and the table-driven reject runner: a wire_case_t names a
 * case, builds its message (a maker, then one rule broken) and says the code and the substring
 * of the message the decoder must answer with (code 0: the message must be accepted); a
 * wire_field_case_t does the same for one field set from the table row (wire_set). */
#ifndef MOEH_TEST_WIRE_UTIL_H
#define MOEH_TEST_WIRE_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "moeh_secagg.h"
#include "moeh_dp.h"
#include "moeh_secsum.h"
#include "moeh_wire.h"

#include <math.h>
#include <string.h>
#include <zmq.h>

#define N_PARAMS 10
#define N_GROUPS 2
#define N_TASKS 3
#define N_BINS 4
#define N_NORM 3
#define N_EXPERTS 2
#define N_SLICE (N_TASKS * 2 * N_BINS)
#define N_HIST (MOEH_N_SLICES * N_SLICE)
#define N_GATE (MOEH_N_COMBOS * N_EXPERTS)

static const moeh_wire_limits_t k_lim = {N_PARAMS, N_GROUPS, N_TASKS, N_BINS, N_NORM, N_EXPERTS};
/* Parts of a message with more small tensor parts than its (frameless) header describes. */
#define SMALL_PARTS (MOEH_MAX_FRAMES + 2u)

/* The table case being run (wire_run_cases), named in failure messages. */
static const char *g_wire_case;

/* One message under construction: the envelope, every possible body and the frame data. */
typedef struct {
    Moeh__Envelope env;
    Moeh__Hello hello;
    Moeh__ComboCount combo[2];
    Moeh__ComboCount *combop[2];
    Moeh__Welcome welcome;
    Moeh__ModelSpec spec;
    Moeh__RoundStart rs;
    Moeh__RoundConfig cfg;
    Moeh__Update upd;
    uint32_t words[N_PARAMS + N_GROUPS + 2];
    Moeh__EvalResult ev;
    Moeh__Heartbeat hb;
    Moeh__Error er;
    Moeh__Bye bye;
    Moeh__UploadReady ready;
    Moeh__UploadGrant grant;
    float f32[N_PARAMS + 2];
    uint32_t hist[N_HIST + N_SLICE];
    float norm[2 * N_NORM + 2];
    float gate[N_GATE + 2];
    uint32_t combo_rows[MOEH_N_COMBOS + 1];
    Moeh__StatsResult st;
    double stats[3 * N_NORM + 3];
    uint32_t cnn_ch[3];
    moeh_frame_t frames[MOEH_MAX_FRAMES + 1];
    size_t n_frames;
} msg_t;

static inline void msg_init(msg_t *m)
{
    memset(m, 0, sizeof *m);
    moeh__envelope__init(&m->env);
    moeh__hello__init(&m->hello);
    moeh__combo_count__init(&m->combo[0]);
    moeh__combo_count__init(&m->combo[1]);
    moeh__welcome__init(&m->welcome);
    moeh__model_spec__init(&m->spec);
    moeh__round_start__init(&m->rs);
    moeh__round_config__init(&m->cfg);
    moeh__update__init(&m->upd);
    moeh__eval_result__init(&m->ev);
    moeh__heartbeat__init(&m->hb);
    moeh__error__init(&m->er);
    moeh__bye__init(&m->bye);
    moeh__upload_ready__init(&m->ready);
    moeh__upload_grant__init(&m->grant);
    moeh__stats_result__init(&m->st);
    for (size_t i = 0; i < N_PARAMS + 2; i++)
        m->f32[i] = 0.25f * (float)i - 1.0f;
    for (size_t i = 0; i < 2 * N_NORM + 2; i++) /* means, then positive deviations */
        m->norm[i] = i < N_NORM ? 0.5f * (float)i : 1.0f + (float)i;
    for (size_t i = 0; i < N_GATE + 2; i++)
        m->gate[i] = 0.125f * (float)(i % 8);
    for (size_t i = 0; i < 3 * N_NORM + 3; i++)
        m->stats[i] = (double)(i + 1);
}

static inline void mk_hello(msg_t *m)
{
    msg_init(m);
    m->hello.site_id = "site-A.1_x";
    m->hello.n_train = 1234;
    m->hello.n_eval = 56;
    m->hello.n_features = 17;
    m->hello.n_vars = 30;
    m->hello.n_steps = 48;
    m->hello.img_size = 64;
    m->combo[0].combo = 1;
    m->combo[0].count = 1000;
    m->combo[1].combo = 7;
    m->combo[1].count = 234;
    m->combop[0] = &m->combo[0];
    m->combop[1] = &m->combo[1];
    m->hello.n_combos = 2;
    m->hello.combos = m->combop;
    m->hello.last_model_version = 42;
    m->env.type = MOEH__MSG_TYPE__HELLO;
    m->env.body_case = MOEH__ENVELOPE__BODY_HELLO;
    m->env.hello = &m->hello;
}

/* Any text passes the wire: the model library checks what it says (moeh_moe_cfg_validate). */
static const char k_config_json[] = "{\"arch\":0,\"d_emb\":8,\"note\":\"caf\xc3\xa9\"}";

static inline void mk_welcome(msg_t *m)
{
    msg_init(m);
    m->spec.config_json = (char *)k_config_json;
    m->spec.n_experts = 7;
    m->spec.n_norm = 47;
    m->spec.n_tasks = N_TASKS;
    m->spec.spec_hash = 0xdeadbeefcafef00dull;
    m->spec.n_params = N_PARAMS;
    m->spec.n_groups = N_GROUPS;
    m->welcome.site_id = "site-A";
    m->welcome.model = &m->spec;
    m->welcome.heartbeat_ms = 500;
    m->welcome.eval_bins = N_BINS;
    m->env.type = MOEH__MSG_TYPE__WELCOME;
    m->env.body_case = MOEH__ENVELOPE__BODY_WELCOME;
    m->env.welcome = &m->welcome;
}

static inline void mk_round_start(msg_t *m)
{
    msg_init(m);
    m->cfg.local_epochs = 2;
    m->cfg.batch_size = 32;
    m->cfg.lr = 0.05f;
    m->cfg.weight_decay = 1e-4f;
    m->cfg.clip = 5.0f;
    m->cfg.seed = 7;
    m->cfg.delta_clip = 0.5f;
    m->cfg.quant_scale = 1e6;
    m->rs.round = 3;
    m->rs.model_version = 8;
    m->rs.task = MOEH__ROUND_TASK__TRAIN;
    m->rs.deadline_ms = 30000;
    m->rs.config = &m->cfg;
    m->rs.n_participants = 4;
    m->env.type = MOEH__MSG_TYPE__ROUND_START;
    m->env.body_case = MOEH__ENVELOPE__BODY_ROUND_START;
    m->env.round_start = &m->rs;
    m->frames[0] = (moeh_frame_t){"params", MOEH__DTYPE__F32, m->f32, N_PARAMS, NULL};
    m->frames[1] = (moeh_frame_t){"norm", MOEH__DTYPE__F32, m->norm, 2 * N_NORM, NULL};
    m->n_frames = 2;
}

static inline void mk_update(msg_t *m)
{
    msg_init(m);
    for (uint32_t i = 0; i < N_PARAMS + N_GROUPS; i++)
        m->words[i] = 0xfffffff0u + 3u * i; /* wraps: two's complement deltas */
    m->words[N_PARAMS] = 100;               /* w_0 */
    m->words[N_PARAMS + 1] = 0;             /* w_1: group 1 untouched */
    m->upd.round = 3;
    m->upd.model_version = 8;
    m->upd.train_loss = 0.6931;
    m->upd.n_samples = 100;
    m->upd.steps = 4;
    m->env.type = MOEH__MSG_TYPE__UPDATE;
    m->env.body_case = MOEH__ENVELOPE__BODY_UPDATE;
    m->env.update = &m->upd;
    m->frames[0] = (moeh_frame_t){"update", MOEH__DTYPE__U32, m->words, N_PARAMS + N_GROUPS, NULL};
    m->n_frames = 1;
}

static inline void mk_eval_result(msg_t *m)
{
    msg_init(m);
    uint64_t total = 0;
    for (uint32_t i = 0; i < N_SLICE; i++) { /* slice 0: every row */
        m->hist[i] = (i * 7u) % 5u;
        total += m->hist[i];
    }
    for (uint32_t i = 0; i < N_SLICE; i++) /* the same rows, all of combination 7 */
        m->hist[7 * N_SLICE + i] = m->hist[i];
    for (uint32_t k = 0; k < MOEH_N_COMBOS; k++)
        m->combo_rows[k] = k == 6 ? 9 : 0;
    m->ev.round = 3;
    m->ev.model_version = 8;
    m->ev.loss_sum = 12.5;
    m->ev.n_labels = total;
    m->ev.n_tasks = N_TASKS;
    m->ev.n_bins = N_BINS;
    m->ev.n_combo_rows = MOEH_N_COMBOS;
    m->ev.combo_rows = m->combo_rows;
    m->env.type = MOEH__MSG_TYPE__EVAL_RESULT;
    m->env.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    m->env.eval_result = &m->ev;
    m->frames[0] = (moeh_frame_t){"hist", MOEH__DTYPE__U32, m->hist, N_HIST, NULL};
    m->frames[1] = (moeh_frame_t){"gate", MOEH__DTYPE__F32, m->gate, N_GATE, NULL};
    m->n_frames = 2;
}

static inline void mk_stats_result(msg_t *m)
{
    msg_init(m);
    m->st.round = 0;
    m->st.n_rows = 321;
    m->env.type = MOEH__MSG_TYPE__STATS_RESULT;
    m->env.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    m->env.stats_result = &m->st;
    m->frames[0] = (moeh_frame_t){"stats", MOEH__DTYPE__F64, m->stats, 3 * N_NORM, NULL};
    m->n_frames = 1;
}

static inline void mk_heartbeat(msg_t *m)
{
    msg_init(m);
    m->hb.seq = 77;
    m->env.type = MOEH__MSG_TYPE__HEARTBEAT;
    m->env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    m->env.heartbeat = &m->hb;
}

static inline void mk_error(msg_t *m)
{
    msg_init(m);
    m->er.code = -EBADMSG;
    m->er.message = "update.delta: element 3 is not finite";
    m->env.type = MOEH__MSG_TYPE__ERROR;
    m->env.body_case = MOEH__ENVELOPE__BODY_ERROR;
    m->env.error = &m->er;
}

static inline void mk_bye(msg_t *m)
{
    msg_init(m);
    m->bye.reason = "run complete";
    m->bye.status = MOEH__BYE_STATUS__BYE_STATUS_FINISHED;
    m->env.type = MOEH__MSG_TYPE__BYE;
    m->env.body_case = MOEH__ENVELOPE__BODY_BYE;
    m->env.bye = &m->bye;
}

static inline void mk_upload_ready(msg_t *m)
{
    msg_init(m);
    m->ready.round = 3;
    m->ready.model_version = 8;
    m->ready.session = 0x77;
    m->env.type = MOEH__MSG_TYPE__UPLOAD_READY;
    m->env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    m->env.upload_ready = &m->ready;
}

static inline void mk_upload_grant(msg_t *m)
{
    msg_init(m);
    m->grant.round = 3;
    m->grant.model_version = 8;
    m->env.type = MOEH__MSG_TYPE__UPLOAD_GRANT;
    m->env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_GRANT;
    m->env.upload_grant = &m->grant;
}

typedef void (*mk_fn)(msg_t *m);
static const mk_fn k_makers[] = {mk_hello,        mk_welcome,      mk_round_start, mk_update,
                                 mk_eval_result,  mk_heartbeat,    mk_error,       mk_bye,
                                 mk_stats_result, mk_upload_ready, mk_upload_grant};
#define N_MAKERS (sizeof k_makers / sizeof k_makers[0])

static inline size_t frame_bytes(const moeh_frame_t *f)
{
    return (size_t)f->count * (f->dtype == MOEH__DTYPE__F64 ? 8 : 4);
}

/* Packs m (asserting success) into a malloc'd header and fills iov from m's frames. */
static inline void pack_msg(msg_t *m, uint8_t **hdr, size_t *len, moeh_iov_t *iov)
{
    assert_int_equal(moeh_wire_pack(&m->env, m->frames, m->n_frames, hdr, len), 0);
    assert_non_null(*hdr);
    assert_true(*len > 0);
    for (size_t i = 0; i < m->n_frames; i++) {
        iov[i].data = m->frames[i].data;
        iov[i].len = frame_bytes(&m->frames[i]);
    }
}

/* Packs and decodes m against lim; returns the code, *out owns the envelope on success. */
static inline int roundtrip(msg_t *m, const moeh_wire_limits_t *lim, Moeh__Envelope **out,
                            moeh_err_t *err)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    moeh_iov_t iov[MOEH_MAX_FRAMES + 1];
    pack_msg(m, &hdr, &len, iov);
    int rc = moeh_wire_decode(lim, hdr, len, iov, m->n_frames, out, err);
    free(hdr);
    return rc;
}

/* The decoder must refuse with exactly `code`, return no envelope and say `needle`. */
static inline void check_reject_raw(const moeh_wire_limits_t *lim, const void *hdr, size_t len,
                                    const moeh_iov_t *iov, size_t nf, int code, const char *needle)
{
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = (Moeh__Envelope *)&err; /* must be reset to NULL */
    int rc = moeh_wire_decode(lim, hdr, len, iov, nf, &e, &err);
    if (rc != code || (needle && !strstr(err.msg, needle)))
        print_error("%s%sexpected %d mentioning '%s', got %d: '%s'\n",
                    g_wire_case ? g_wire_case : "", g_wire_case ? ": " : "", code,
                    needle ? needle : "", rc, err.msg);
    assert_int_equal(rc, code);
    assert_null(e);
    assert_true(err.msg[0] != '\0');
    if (needle) assert_non_null(strstr(err.msg, needle));
}

static inline void check_reject(msg_t *m, const moeh_wire_limits_t *lim, int code,
                                const char *needle)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    moeh_iov_t iov[MOEH_MAX_FRAMES + 1];
    pack_msg(m, &hdr, &len, iov);
    check_reject_raw(lim, hdr, len, iov, m->n_frames, code, needle);
    free(hdr);
}

static inline void check_accept(msg_t *m, const moeh_wire_limits_t *lim)
{
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    int rc = roundtrip(m, lim, &e, &err);
    if (rc)
        print_error("%s%sunexpected rejection %d: %s\n", g_wire_case ? g_wire_case : "",
                    g_wire_case ? ": " : "", rc, err.msg);
    assert_int_equal(rc, 0);
    assert_non_null(e);
    moeh__envelope__free_unpacked(e, NULL);
}

/* Nothing negotiated yet; only the group count; everything but the normalisation features. */
static const moeh_wire_limits_t k_none = {0};
static const moeh_wire_limits_t k_groups_only = {0, N_GROUPS, 0, 0, 0, 0};
static const moeh_wire_limits_t k_no_norm = {N_PARAMS, N_GROUPS, N_TASKS, N_BINS, 0, N_EXPERTS};

/* One reject (or accept) case of a table. */
typedef struct {
    const char *name;
    void (*make)(msg_t *m); /* a maker, then the mutation */
    const moeh_wire_limits_t *lim;
    int code;           /* what moeh_wire_decode must return (0: accepted) */
    const char *needle; /* a substring of its message */
} wire_case_t;

static inline void wire_run_cases(const wire_case_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        msg_t m;
        c[i].make(&m);
        g_wire_case = c[i].name;
        if (c[i].code == 0)
            check_accept(&m, c[i].lim);
        else
            check_reject(&m, c[i].lim, c[i].code, c[i].needle);
    }
    g_wire_case = NULL;
}

/* Table cases that break one field: `path` names it from the envelope down, as moeh.proto
 * spells it ("round_start.config.lr", "hello.combos[1].combo"; "hello.n_combos" is a repeated
 * field's count), or one of the message's frames and buffers ("frames[0].count", "f32[3]",
 * "words[10]", "hist[0]", "norm[4]", "gate[1]", "stats[2]", "n_frames", "body_case"). The field
 * takes `num` (numbers, enums, booleans) or `str` (strings; a sub-message is set to NULL). The
 * protobuf-c descriptors find the field and its type, so a case is one table row. */
static inline void *wire_elem(void *base, size_t size, size_t idx)
{
    return (char *)base + idx * size;
}

/* The index of "name[i]" (0 without brackets); name is cut at the bracket. */
static inline size_t wire_path_index(char *name)
{
    char *br = strchr(name, '[');
    if (!br) return 0;
    *br = '\0';
    return (size_t)strtoul(br + 1, NULL, 10);
}

static inline size_t wire_scalar_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

static inline void wire_set_scalar(void *at, ProtobufCType t, double num, const char *str)
{
    switch (t) {
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)at = (float)num;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)at = num;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)at = num != 0.0;
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        *(int32_t *)at = (int32_t)num;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)at = (uint32_t)num;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)at = (int64_t)num;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)at = (uint64_t)num;
        break;
    case PROTOBUF_C_TYPE_STRING:
        *(const char **)at = str;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        *(void **)at = NULL;
        break;
    default:
        fail_msg("wire_set: field type %d is not settable from a table", (int)t);
    }
}

#define WIRE_BUF_SET(arr, type)                                                                    \
    do {                                                                                           \
        assert_true(idx < sizeof(arr) / sizeof(arr)[0]);                                           \
        (arr)[idx] = (type)num;                                                                    \
    } while (0)

/* The frames and buffers of msg_t that are not protobuf fields; 0 if path is not one. */
static inline int wire_set_buffer(msg_t *m, char *name, size_t idx, const char *rest, double num,
                                  const char *str)
{
    if (!strcmp(name, "n_frames")) {
        m->n_frames = (size_t)num;
    } else if (!strcmp(name, "body_case")) { /* the oneof's case, not a field */
        m->env.body_case = (Moeh__Envelope__BodyCase)num;
    } else if (!strcmp(name, "frames")) {
        assert_true(idx < MOEH_MAX_FRAMES + 1);
        moeh_frame_t *f = &m->frames[idx];
        if (!strcmp(rest, "count"))
            f->count = (uint64_t)num;
        else if (!strcmp(rest, "dtype"))
            f->dtype = (Moeh__DType)num;
        else if (!strcmp(rest, "name"))
            f->name = str;
        else
            fail_msg("wire_set: frames[].%s is not a frame field", rest);
    } else if (!strcmp(name, "f32")) {
        WIRE_BUF_SET(m->f32, float);
    } else if (!strcmp(name, "norm")) {
        WIRE_BUF_SET(m->norm, float);
    } else if (!strcmp(name, "gate")) {
        WIRE_BUF_SET(m->gate, float);
    } else if (!strcmp(name, "stats")) {
        WIRE_BUF_SET(m->stats, double);
    } else if (!strcmp(name, "words")) {
        WIRE_BUF_SET(m->words, uint32_t);
    } else if (!strcmp(name, "hist")) {
        WIRE_BUF_SET(m->hist, uint32_t);
    } else {
        return 0;
    }
    return 1;
}

static inline void wire_set(msg_t *m, const char *path, double num, const char *str)
{
    char buf[128];
    assert_true(strlen(path) < sizeof buf);
    strcpy(buf, path);
    char *dot = strchr(buf, '.');
    if (dot) *dot = '\0';
    size_t idx0 = wire_path_index(buf);
    if (wire_set_buffer(m, buf, idx0, dot ? dot + 1 : "", num, str)) return;
    strcpy(buf, path);
    ProtobufCMessage *msg = &m->env.base;
    for (char *save = NULL, *name = strtok_r(buf, ".", &save); name;) {
        char *next = strtok_r(NULL, ".", &save);
        size_t idx = wire_path_index(name);
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
        if (!f && !next && !strncmp(name, "n_", 2)) { /* a repeated field's count */
            f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name + 2);
            if (f && f->label == PROTOBUF_C_LABEL_REPEATED) {
                *(size_t *)((char *)msg + f->quantifier_offset) = (size_t)num;
                return;
            }
        }
        if (!f) fail_msg("wire_set: %s has no field '%s'", msg->descriptor->name, name);
        void *at = (char *)msg + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            assert_true(idx < *(size_t *)((char *)msg + f->quantifier_offset));
            at = wire_elem(*(void **)at, wire_scalar_size(f->type), idx);
        }
        if (!next) {
            wire_set_scalar(at, f->type, num, str);
            return;
        }
        assert_int_equal(f->type, PROTOBUF_C_TYPE_MESSAGE);
        msg = *(ProtobufCMessage **)at;
        assert_non_null(msg);
        name = next;
    }
}

/* One case that breaks (or, with code 0, keeps valid) one field of a maker's message. */
typedef struct {
    mk_fn make;
    const char *path; /* see wire_set */
    double num;
    const char *str;
    const moeh_wire_limits_t *lim;
    int code;           /* what moeh_wire_decode must return (0: accepted) */
    const char *needle; /* a substring of its message */
} wire_field_case_t;

static inline void wire_run_field_cases(const wire_field_case_t *c, size_t n)
{
    char name[160];
    for (size_t i = 0; i < n; i++) {
        msg_t m;
        c[i].make(&m);
        wire_set(&m, c[i].path, c[i].num, c[i].str);
        snprintf(name, sizeof name, "%s = %s%g", c[i].path, c[i].str ? c[i].str : "",
                 c[i].str ? 0.0 : c[i].num);
        g_wire_case = name;
        if (c[i].code == 0)
            check_accept(&m, c[i].lim);
        else
            check_reject(&m, c[i].lim, c[i].code, c[i].needle);
    }
    g_wire_case = NULL;
}

/* Runs a whole table of either kind. */
#define WIRE_RUN_CASES(table) wire_run_cases((table), sizeof(table) / sizeof(table)[0])
#define WIRE_RUN_FIELD_CASES(table) wire_run_field_cases((table), sizeof(table) / sizeof(table)[0])

#endif
