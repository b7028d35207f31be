/* test_wire.c - the validating codec of proto/wire.c. Every message type is packed with
 * moeh_wire_pack() and decoded with moeh_wire_decode() against negotiated limits (10 params,
 * 2 groups, 3 tasks, 4 bins) and must come back field for field; then each rule of the decoder
 * is broken once (truncated, empty, oversized or garbage headers, wrong protocol version,
 * type/body mismatch, frame count/length/name/dtype/size errors, non-finite floats, bad group
 * weights, inconsistent histograms, invalid site ids and round configs, frames where none are
 * allowed, over-long strings) and must be refused with the documented code and a message that
 * names the field. The secure-aggregation messages and RoundStart.secagg get the same: round
 * trips, then every count, size, order, session and limit rule broken once. Finally a real ZeroMQ
 * inproc PAIR carries messages through moeh_wire_send / moeh_wire_recv, including messages with too
 * many parts, which must be refused and drained. */
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
#define N_HIST (MOEH_WIRE_SLICES * N_SLICE)
#define N_GATE (MOEH_WIRE_COMBOS * N_EXPERTS)

static const moeh_wire_limits_t k_lim = {N_PARAMS, N_GROUPS, N_TASKS, N_BINS, N_NORM, N_EXPERTS};
/* Parts of a message with more small tensor parts than its (frameless) header describes. */
#define SMALL_PARTS (MOEH_MAX_FRAMES + 2u)

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
    uint32_t combo_rows[MOEH_WIRE_COMBOS + 1];
    Moeh__StatsResult st;
    double stats[3 * N_NORM + 3];
    uint32_t cnn_ch[3];
    moeh_frame_t frames[MOEH_MAX_FRAMES + 1];
    size_t n_frames;
} msg_t;

static void msg_init(msg_t *m)
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

static void mk_hello(msg_t *m)
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

static void mk_welcome(msg_t *m)
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

static void mk_round_start(msg_t *m)
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

static void mk_update(msg_t *m)
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

static void mk_eval_result(msg_t *m)
{
    msg_init(m);
    uint64_t total = 0;
    for (uint32_t i = 0; i < N_SLICE; i++) { /* slice 0: every row */
        m->hist[i] = (i * 7u) % 5u;
        total += m->hist[i];
    }
    for (uint32_t i = 0; i < N_SLICE; i++) /* the same rows, all of combination 7 */
        m->hist[7 * N_SLICE + i] = m->hist[i];
    for (uint32_t k = 0; k < MOEH_WIRE_COMBOS; k++)
        m->combo_rows[k] = k == 6 ? 9 : 0;
    m->ev.round = 3;
    m->ev.model_version = 8;
    m->ev.loss_sum = 12.5;
    m->ev.n_labels = total;
    m->ev.n_tasks = N_TASKS;
    m->ev.n_bins = N_BINS;
    m->ev.n_combo_rows = MOEH_WIRE_COMBOS;
    m->ev.combo_rows = m->combo_rows;
    m->env.type = MOEH__MSG_TYPE__EVAL_RESULT;
    m->env.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    m->env.eval_result = &m->ev;
    m->frames[0] = (moeh_frame_t){"hist", MOEH__DTYPE__U32, m->hist, N_HIST, NULL};
    m->frames[1] = (moeh_frame_t){"gate", MOEH__DTYPE__F32, m->gate, N_GATE, NULL};
    m->n_frames = 2;
}

static void mk_stats_result(msg_t *m)
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

static void mk_heartbeat(msg_t *m)
{
    msg_init(m);
    m->hb.seq = 77;
    m->env.type = MOEH__MSG_TYPE__HEARTBEAT;
    m->env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    m->env.heartbeat = &m->hb;
}

static void mk_error(msg_t *m)
{
    msg_init(m);
    m->er.code = -EBADMSG;
    m->er.message = "update.delta: element 3 is not finite";
    m->env.type = MOEH__MSG_TYPE__ERROR;
    m->env.body_case = MOEH__ENVELOPE__BODY_ERROR;
    m->env.error = &m->er;
}

static void mk_bye(msg_t *m)
{
    msg_init(m);
    m->bye.reason = "run complete";
    m->env.type = MOEH__MSG_TYPE__BYE;
    m->env.body_case = MOEH__ENVELOPE__BODY_BYE;
    m->env.bye = &m->bye;
}

static void mk_upload_ready(msg_t *m)
{
    msg_init(m);
    m->ready.round = 3;
    m->ready.model_version = 8;
    m->ready.session = 0x77;
    m->env.type = MOEH__MSG_TYPE__UPLOAD_READY;
    m->env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    m->env.upload_ready = &m->ready;
}

static void mk_upload_grant(msg_t *m)
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

static size_t frame_bytes(const moeh_frame_t *f)
{
    return (size_t)f->count * (f->dtype == MOEH__DTYPE__F64 ? 8 : 4);
}

/* Packs m (asserting success) into a malloc'd header and fills iov from m's frames. */
static void pack_msg(msg_t *m, uint8_t **hdr, size_t *len, moeh_iov_t *iov)
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
static int roundtrip(msg_t *m, const moeh_wire_limits_t *lim, Moeh__Envelope **out, moeh_err_t *err)
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
static void check_reject_raw(const moeh_wire_limits_t *lim, const void *hdr, size_t len,
                             const moeh_iov_t *iov, size_t nf, int code, const char *needle)
{
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = (Moeh__Envelope *)&err; /* must be reset to NULL */
    int rc = moeh_wire_decode(lim, hdr, len, iov, nf, &e, &err);
    if (rc != code || (needle && !strstr(err.msg, needle)))
        print_error("expected %d mentioning '%s', got %d: '%s'\n", code, needle ? needle : "", rc,
                    err.msg);
    assert_int_equal(rc, code);
    assert_null(e);
    assert_true(err.msg[0] != '\0');
    if (needle) assert_non_null(strstr(err.msg, needle));
}

static void check_reject(msg_t *m, const moeh_wire_limits_t *lim, int code, const char *needle)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    moeh_iov_t iov[MOEH_MAX_FRAMES + 1];
    pack_msg(m, &hdr, &len, iov);
    check_reject_raw(lim, hdr, len, iov, m->n_frames, code, needle);
    free(hdr);
}

static void check_accept(msg_t *m, const moeh_wire_limits_t *lim)
{
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    int rc = roundtrip(m, lim, &e, &err);
    if (rc) print_error("unexpected rejection %d: %s\n", rc, err.msg);
    assert_int_equal(rc, 0);
    assert_non_null(e);
    moeh__envelope__free_unpacked(e, NULL);
}

/* ---- round trips ------------------------------------------------------------------------ */

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
    assert_int_equal(r->n_combo_rows, MOEH_WIRE_COMBOS);
    assert_int_equal(r->combo_rows[6], 9);
    assert_int_equal(e->n_frames, 2);
    assert_string_equal(e->frames[0]->name, "hist");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__U32);
    assert_int_equal(e->frames[0]->count, N_HIST);
    assert_string_equal(e->frames[1]->name, "gate");
    assert_int_equal(e->frames[1]->count, N_GATE);
    moeh__envelope__free_unpacked(e, NULL);
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
    moeh__envelope__free_unpacked(e, NULL);

    /* these need no negotiation */
    moeh_wire_limits_t none = {0};
    mk_heartbeat(&m);
    check_accept(&m, &none);
    mk_hello(&m);
    check_accept(&m, &none);
}

/* ---- header-level rejection ------------------------------------------------------------- */

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
    /* protocol 2 (ModelSpec mirrored moeh_moe_cfg_t field by field) is not spoken any more */
    assert_int_equal(MOEH_PROTOCOL_VERSION, 3);
    m.env.protocol_version = 2;
    buf = pack_raw(&m.env, &len);
    check_reject_raw(&k_lim, buf, len, NULL, 0, -EPROTO, "protocol version 2, expected 3");
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

static void test_type_body_mismatch(void **state)
{
    msg_t m;
    mk_heartbeat(&m);
    m.env.type = MOEH__MSG_TYPE__HELLO; /* heartbeat body, hello type */
    check_reject(&m, &k_lim, -EBADMSG, "hello: body missing or of another type");

    mk_bye(&m);
    m.env.body_case = MOEH__ENVELOPE__BODY__NOT_SET; /* no body at all */
    check_reject(&m, &k_lim, -EBADMSG, "bye: body missing");

    mk_heartbeat(&m);
    m.env.type = MOEH__MSG_TYPE__SECAGG_ADVERTISE; /* a known type, a heartbeat body */
    check_reject(&m, &k_lim, -EBADMSG, "secagg_advertise: body missing or of another type");
    m.env.type = MOEH__MSG_TYPE__UPLOAD_READY;
    check_reject(&m, &k_lim, -EBADMSG, "upload_ready: body missing or of another type");
    mk_upload_ready(&m);
    m.env.type = MOEH__MSG_TYPE__UPLOAD_GRANT; /* the other one's body */
    check_reject(&m, &k_lim, -EBADMSG, "upload_grant: body missing or of another type");
    m.env.type = (Moeh__MsgType)18;
    check_reject(&m, &k_lim, -EBADMSG, "type: 18");
    m.env.type = (Moeh__MsgType)1000;
    check_reject(&m, &k_lim, -EBADMSG, "type: 1000");
    m.env.type = MOEH__MSG_TYPE__MSG_UNSPECIFIED;
    check_reject(&m, &k_lim, -EBADMSG, "type: 0");
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

/* ---- frame rejection -------------------------------------------------------------------- */

static void test_frame_count_mismatch(void **state)
{
    msg_t m;
    mk_round_start(&m);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[3];
    pack_msg(&m, &hdr, &len, iov);
    /* header describes 2 frames, none arrived */
    check_reject_raw(&k_lim, hdr, len, iov, 0, -EBADMSG, "header describes 2 tensor frames, 0");
    /* header describes 2 frames, 3 arrived */
    iov[2] = iov[1];
    check_reject_raw(&k_lim, hdr, len, iov, 3, -EBADMSG, "header describes 2 tensor frames, 3");
    free(hdr);

    /* header describes no frame, one arrived */
    mk_round_start(&m);
    m.n_frames = 0;
    pack_msg(&m, &hdr, &len, iov);
    iov[0] = (moeh_iov_t){m.f32, 4 * N_PARAMS};
    check_reject_raw(&k_lim, hdr, len, iov, 1, -EBADMSG, "header describes 0 tensor frames, 1");
    /* and none at all where round_start needs params and norm */
    check_reject_raw(&k_lim, hdr, len, iov, 0, -EBADMSG, "expected 2 tensor frames ('params'");
    free(hdr);
}

static void test_frame_byte_length(void **state)
{
    msg_t m;
    mk_round_start(&m);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[2];
    pack_msg(&m, &hdr, &len, iov);
    iov[0].len = 4 * N_PARAMS - 1;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    iov[0].len = 4 * N_PARAMS + 4;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    iov[0].len = 0;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    free(hdr);

    /* dtype unspecified has no element size */
    mk_round_start(&m);
    m.frames[0].dtype = MOEH__DTYPE__DTYPE_UNSPECIFIED;
    uint8_t *h2;
    assert_int_equal(moeh_wire_pack(&m.env, m.frames, 1, &h2, &len), 0);
    iov[0] = (moeh_iov_t){m.f32, 4 * N_PARAMS};
    check_reject_raw(&k_lim, h2, len, iov, 1, -EBADMSG, "frames[0]: bad dtype");
    free(h2);
}

static void test_tensor_before_negotiation(void **state)
{
    moeh_wire_limits_t none = {0};
    msg_t m;
    mk_round_start(&m);
    check_reject(&m, &none, -EBADMSG, "before the model was negotiated");
    mk_update(&m);
    check_reject(&m, &none, -EBADMSG, "update: before the model was negotiated");
    moeh_wire_limits_t groups_only = {0, N_GROUPS, 0, 0, 0, 0};
    check_reject(&m, &groups_only, -EBADMSG, "before the model was negotiated");
    mk_eval_result(&m);
    check_reject(&m, &none, -EBADMSG, "eval_result");
}

static void test_frame_count_name_dtype(void **state)
{
    msg_t m;
    /* wrong element count (the frame bytes agree with the descriptor) */
    mk_round_start(&m);
    m.frames[0].count = N_PARAMS - 1;
    check_reject(&m, &k_lim, -EBADMSG, "has 9 elements, expected 10");
    mk_update(&m);
    m.frames[0].count = N_PARAMS; /* the group weights missing */
    check_reject(&m, &k_lim, -EBADMSG, "'update' has 10 elements, expected 12");
    mk_update(&m);
    m.frames[0].count = N_PARAMS + N_GROUPS + 1;
    check_reject(&m, &k_lim, -EBADMSG, "'update' has 13 elements, expected 12");
    mk_eval_result(&m);
    m.frames[0].count = N_HIST - 1;
    check_reject(&m, &k_lim, -EBADMSG, "'hist' has 191 elements, expected 192");

    /* wrong name */
    mk_round_start(&m);
    m.frames[0].name = "delta";
    check_reject(&m, &k_lim, -EBADMSG, "expected 'params'");
    mk_update(&m);
    m.frames[0].name = "delta";
    check_reject(&m, &k_lim, -EBADMSG, "expected 'update'");
    mk_update(&m);
    m.frames[0].name = "";
    check_reject(&m, &k_lim, -EBADMSG, "expected 'update'");

    /* over-long name */
    char longname[80];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    mk_update(&m);
    m.frames[0].name = longname;
    check_reject(&m, &k_lim, -EBADMSG, "frames[0]: bad dtype or name");

    /* wrong dtype */
    mk_update(&m);
    m.frames[0].dtype = MOEH__DTYPE__F32;
    check_reject(&m, &k_lim, -EBADMSG, "expected 'update' (dtype 2)");
    mk_round_start(&m);
    m.frames[0].dtype = MOEH__DTYPE__U32;
    check_reject(&m, &k_lim, -EBADMSG, "expected 'params' (dtype 1)");
    mk_eval_result(&m);
    m.frames[0].dtype = MOEH__DTYPE__F32;
    check_reject(&m, &k_lim, -EBADMSG, "expected 'hist' (dtype 2)");
}

static void test_non_finite_tensors(void **state)
{
    msg_t m;
    mk_round_start(&m);
    m.f32[7] = NAN;
    check_reject(&m, &k_lim, -ERANGE, "round_start.params: element 7");
    mk_round_start(&m);
    m.f32[0] = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "round_start.params: element 0");
    mk_round_start(&m);
    m.f32[N_PARAMS - 1] = -INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "round_start.params: element 9");
    mk_round_start(&m);
    m.f32[N_PARAMS] = NAN; /* just past the frame: not part of the message */
    check_accept(&m, &k_lim);
    mk_round_start(&m);
    m.f32[4] = 3.4e38f; /* large but finite */
    m.f32[5] = -1e-45f; /* denormal */
    check_accept(&m, &k_lim);
}

static void test_update_checks(void **state)
{
    msg_t m;
    mk_update(&m);
    m.upd.train_loss = NAN;
    check_reject(&m, &k_lim, -ERANGE, "update.train_loss");
    mk_update(&m);
    m.upd.train_loss = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "update.train_loss");
    mk_update(&m);
    m.upd.train_loss = -0.5;
    check_reject(&m, &k_lim, -EBADMSG, "update.train_loss: negative");
    /* every word is legal: the sums are mod 2^32 */
    mk_update(&m);
    for (size_t i = 0; i < N_PARAMS + N_GROUPS; i++)
        m.words[i] = 0xffffffffu;
    check_accept(&m, &k_lim);
    /* the frame must be present */
    mk_update(&m);
    m.n_frames = 0;
    check_reject(&m, &k_lim, -EBADMSG, "expected 1 tensor frames ('update')");
}

static void test_eval_result_checks(void **state)
{
    msg_t m;
    mk_eval_result(&m);
    m.ev.n_labels += 1;
    check_reject(&m, &k_lim, -EBADMSG, "n_labels");
    mk_eval_result(&m);
    m.ev.n_labels -= 1;
    check_reject(&m, &k_lim, -EBADMSG, "n_labels");
    mk_eval_result(&m);
    m.ev.n_bins = N_BINS + 1;
    m.frames[0].count = N_TASKS * 2 * (N_BINS + 1);
    assert_true(m.frames[0].count <= sizeof m.hist / sizeof m.hist[0]);
    check_reject(&m, &k_lim, -EBADMSG, "eval_result: 3 tasks x 5 bins, expected 3 x 4");
    mk_eval_result(&m);
    m.ev.n_tasks = 2;
    m.frames[0].count = 2 * 2 * N_BINS;
    check_reject(&m, &k_lim, -EBADMSG, "eval_result: 2 tasks x 4 bins, expected 3 x 4");
    mk_eval_result(&m);
    m.ev.loss_sum = NAN;
    check_reject(&m, &k_lim, -ERANGE, "eval_result.loss_sum");
    mk_eval_result(&m);
    m.ev.loss_sum = -1.0;
    check_reject(&m, &k_lim, -EBADMSG, "eval_result.loss_sum");
    /* counts near 2^32 are summed in 64 bits */
    mk_eval_result(&m);
    m.hist[0] = 0xffffffffu;
    m.hist[1] = 0xffffffffu;
    uint64_t total = 0;
    for (size_t i = 0; i < N_SLICE; i++) /* n_labels counts slice 0 (every row) */
        total += m.hist[i];
    m.ev.n_labels = total;
    check_accept(&m, &k_lim);
    m.ev.n_labels = total & 0xffffffffu; /* what a 32-bit sum would give */
    check_reject(&m, &k_lim, -EBADMSG, "n_labels");
}

static void test_hello_site_ids(void **state)
{
    char s65[66];
    memset(s65, 'a', 65);
    s65[65] = '\0';
    char s64[65];
    memset(s64, 'b', 64);
    s64[64] = '\0';
    const char *bad[] = {"", s65, "a b", "../x", "a/b", "x\ty", "caf\xc3\xa9", "a:b", "a=b"};
    msg_t m;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mk_hello(&m);
        m.hello.site_id = (char *)bad[i];
        check_reject(&m, &k_lim, -EBADMSG, "hello.site_id");
    }
    mk_hello(&m);
    m.hello.site_id = s64;
    check_accept(&m, &k_lim);
    mk_hello(&m);
    m.hello.site_id = "Z";
    check_accept(&m, &k_lim);

    /* other hello fields */
    mk_hello(&m);
    m.hello.n_features = 0;
    check_reject(&m, &k_lim, -EBADMSG, "hello.n_features");
    mk_hello(&m);
    m.combo[1].combo = 8;
    check_reject(&m, &k_lim, -EBADMSG, "hello.combos[1].combo");
    mk_hello(&m);
    m.combo[0].combo = 0;
    check_reject(&m, &k_lim, -EBADMSG, "hello.combos[0].combo");

    /* welcome too */
    mk_welcome(&m);
    m.welcome.site_id = "../x";
    check_reject(&m, &k_lim, -EBADMSG, "welcome.site_id");
    mk_welcome(&m);
    m.welcome.model = NULL;
    check_reject(&m, &k_lim, -EBADMSG, "welcome.model: missing");
    mk_welcome(&m);
    m.welcome.eval_bins = 1;
    check_reject(&m, &k_lim, -EBADMSG, "welcome.eval_bins");
    mk_welcome(&m);
    m.spec.n_groups = 33;
    check_reject(&m, &k_lim, -EBADMSG, "welcome.model");
}

static void test_round_start_checks(void **state)
{
    msg_t m;
    mk_round_start(&m);
    m.rs.task = MOEH__ROUND_TASK__TASK_UNSPECIFIED;
    check_reject(&m, &k_lim, -EBADMSG, "round_start.task");
    mk_round_start(&m);
    m.rs.task = (Moeh__RoundTask)4;
    check_reject(&m, &k_lim, -EBADMSG, "round_start.task");
    mk_round_start(&m);
    m.rs.task = MOEH__ROUND_TASK__STATS; /* STATS carries no tensor */
    check_reject(&m, &k_lim, -EBADMSG, "expected none");
    mk_round_start(&m);
    m.rs.config = NULL;
    check_reject(&m, &k_lim, -EBADMSG, "round_start.config: missing");
    mk_round_start(&m);
    m.cfg.lr = 0.0f;
    check_reject(&m, &k_lim, -EBADMSG, "lr in (0, 10]");
    mk_round_start(&m);
    m.cfg.lr = -0.1f;
    check_reject(&m, &k_lim, -EBADMSG, "lr in (0, 10]");
    mk_round_start(&m);
    m.cfg.lr = 11.0f;
    check_reject(&m, &k_lim, -EBADMSG, "lr in (0, 10]");
    mk_round_start(&m);
    m.cfg.lr = NAN;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.lr");
    mk_round_start(&m);
    m.cfg.clip = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.clip");
    mk_round_start(&m);
    m.cfg.weight_decay = -1.0f;
    check_reject(&m, &k_lim, -EBADMSG, "weight_decay");
    mk_round_start(&m);
    m.cfg.batch_size = 0;
    check_reject(&m, &k_lim, -EBADMSG, "batch_size");
    mk_round_start(&m);
    m.cfg.local_epochs = 0;
    check_reject(&m, &k_lim, -EBADMSG, "local_epochs");
    mk_round_start(&m);
    m.rs.deadline_ms = 0;
    check_reject(&m, &k_lim, -EBADMSG, "round_start.deadline_ms");
    mk_round_start(&m);
    m.cfg.delta_clip = 0.0f;
    check_reject(&m, &k_lim, -EBADMSG, "delta_clip > 0");
    mk_round_start(&m);
    m.cfg.delta_clip = NAN;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.delta_clip");
    mk_round_start(&m);
    m.cfg.quant_scale = 0.0;
    check_reject(&m, &k_lim, -EBADMSG, "quant_scale");
    mk_round_start(&m);
    m.cfg.quant_scale = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.quant_scale");
    mk_round_start(&m);
    m.cfg.delta_clip = 1.0f;
    m.cfg.quant_scale = 2147483648.0; /* scale * clip = 2^31 */
    check_reject(&m, &k_lim, -EBADMSG, "2^31");
    m.cfg.quant_scale = 2147483647.0; /* just fits */
    check_accept(&m, &k_lim);
}

/* DP-FedAvg fields of RoundConfig (fed/moeh_dp.h): all zero, or a consistent setting whose
 * fixed-point range holds a clipped, noised coordinate. */
static void mk_round_start_dp(msg_t *m)
{
    mk_round_start(m);
    m->cfg.dp_clip = 0.5f;
    m->cfg.dp_noise = 1.0f;
    m->cfg.dp_sites = 4;
    m->cfg.unweighted = 1;
    m->cfg.delta_clip = moeh_dp_range(0.5f, 1.0f, 4); /* 0.5 + 9 * 0.25 = 2.75 */
    m->cfg.quant_scale = 1e6;
}

static void test_round_start_dp(void **state)
{
    msg_t m;
    mk_round_start_dp(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    const Moeh__RoundConfig *c = e->round_start->config;
    assert_true(c->dp_clip == 0.5f && c->dp_noise == 1.0f && c->dp_sites == 4 && c->unweighted);
    assert_true(c->delta_clip == 2.75f);
    moeh__envelope__free_unpacked(e, NULL);
    /* unweighted without DP, and clipping without noise, are fine */
    mk_round_start(&m);
    m.cfg.unweighted = 1;
    check_accept(&m, &k_lim);
    mk_round_start_dp(&m);
    m.cfg.dp_noise = 0.0f;
    check_accept(&m, &k_lim);

    mk_round_start_dp(&m);
    m.cfg.dp_clip = NAN;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.dp_clip");
    mk_round_start_dp(&m);
    m.cfg.dp_noise = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "round_start.config.dp_noise");
    mk_round_start_dp(&m);
    m.cfg.dp_clip = -0.5f;
    check_reject(&m, &k_lim, -EBADMSG, "dp_clip > 0");
    mk_round_start_dp(&m);
    m.cfg.dp_noise = -1.0f;
    check_reject(&m, &k_lim, -EBADMSG, "dp_noise in [0, 1000]");
    mk_round_start_dp(&m);
    m.cfg.dp_noise = 1001.0f;
    check_reject(&m, &k_lim, -EBADMSG, "dp_noise in [0, 1000]");
    mk_round_start_dp(&m);
    m.cfg.dp_sites = 0;
    check_reject(&m, &k_lim, -EBADMSG, "dp_sites");
    mk_round_start_dp(&m);
    m.cfg.dp_sites = MOEH_WIRE_DP_MAX_SITES + 1;
    check_reject(&m, &k_lim, -EBADMSG, "dp_sites");
    /* noise or a count without a clip: not a DP setting */
    mk_round_start(&m);
    m.cfg.dp_noise = 1.0f;
    check_reject(&m, &k_lim, -EBADMSG, "must be 0 when dp_clip is 0");
    mk_round_start(&m);
    m.cfg.dp_sites = 3;
    check_reject(&m, &k_lim, -EBADMSG, "must be 0 when dp_clip is 0");
    /* DP with sample-count weights: one site's influence would be unbounded */
    mk_round_start_dp(&m);
    m.cfg.unweighted = 0;
    check_reject(&m, &k_lim, -EBADMSG, "unweighted");
    /* a range that would clamp the noise (or the clipped delta) */
    mk_round_start_dp(&m);
    m.cfg.delta_clip = 2.7f;
    check_reject(&m, &k_lim, -EBADMSG, "cannot hold a clipped, noised coordinate");
    mk_round_start_dp(&m);
    m.cfg.dp_noise = 0.0f;
    m.cfg.delta_clip = 0.4f; /* below the clip itself */
    check_reject(&m, &k_lim, -EBADMSG, "cannot hold");
    /* with DP, the range and scale must still fit 32 bits */
    mk_round_start_dp(&m);
    m.cfg.quant_scale = 2147483647.0 / 2.7;
    check_reject(&m, &k_lim, -EBADMSG, "2^31");
}

static void test_frames_where_none_allowed(void **state)
{
    const mk_fn frameless[] = {mk_hello, mk_welcome,      mk_heartbeat,   mk_error,
                               mk_bye,   mk_upload_ready, mk_upload_grant};
    for (size_t i = 0; i < sizeof frameless / sizeof frameless[0]; i++) {
        msg_t m;
        frameless[i](&m);
        m.frames[0] = (moeh_frame_t){"params", MOEH__DTYPE__F32, m.f32, N_PARAMS, NULL};
        m.n_frames = 1;
        check_reject(&m, &k_lim, -EBADMSG, "carries 1 tensor frames, expected none");
    }
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
    assert_string_equal(moeh_msg_type_name(18), "unknown");
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

/* ---- secure aggregation (docs/secagg.md) ------------------------------------------------ */

/* Every secagg body, with room for up to 4 list entries. */
typedef struct {
    Moeh__Envelope env;
    Moeh__SecaggAdvertise ad;
    Moeh__SecaggKeys keys;
    Moeh__SecaggKey key[4], *keyp[4];
    Moeh__SecaggShares sh;
    Moeh__SecaggCipher ci[4], *cip[4];
    uint32_t u2[4];
    Moeh__SecaggUnmask um;
    uint32_t surv[4], drop[4];
    Moeh__SecaggReveal rv;
    Moeh__SecaggShare share[4], *sharep[4];
    uint64_t y[4][MOEH_SECAGG_SHARE_ELEMS];
    uint8_t pk[2][MOEH_SECAGG_KEY_BYTES];
    uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES];
} sa_msg_t;

static void sa_init(sa_msg_t *m, Moeh__MsgType type)
{
    memset(m, 0, sizeof *m);
    moeh__envelope__init(&m->env);
    for (size_t i = 0; i < MOEH_SECAGG_KEY_BYTES; i++)
        m->pk[0][i] = (uint8_t)(i + 1), m->pk[1][i] = (uint8_t)(200 - i);
    for (size_t i = 0; i < MOEH_SECAGG_SHARE_CT_BYTES; i++)
        m->ct[i] = (uint8_t)(i * 7);
    m->env.type = type;
    switch (type) {
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
        moeh__secagg_advertise__init(&m->ad);
        m->ad.session = 0x1122334455667788ull;
        m->ad.c_pk = (ProtobufCBinaryData){32, m->pk[0]};
        m->ad.s_pk = (ProtobufCBinaryData){32, m->pk[1]};
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE;
        m->env.secagg_advertise = &m->ad;
        break;
    case MOEH__MSG_TYPE__SECAGG_KEYS:
        moeh__secagg_keys__init(&m->keys);
        for (uint32_t i = 0; i < 3; i++) {
            moeh__secagg_key__init(&m->key[i]);
            m->key[i].id = 2 * i;
            m->key[i].c_pk = (ProtobufCBinaryData){32, m->pk[0]};
            m->key[i].s_pk = (ProtobufCBinaryData){32, m->pk[1]};
            m->keyp[i] = &m->key[i];
        }
        m->keys.session = 9;
        m->keys.n_keys = 3;
        m->keys.keys = m->keyp;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_KEYS;
        m->env.secagg_keys = &m->keys;
        break;
    case MOEH__MSG_TYPE__SECAGG_SHARES:
        moeh__secagg_shares__init(&m->sh);
        for (uint32_t i = 0; i < 2; i++) {
            moeh__secagg_cipher__init(&m->ci[i]);
            m->ci[i].peer = i + 1;
            m->ci[i].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES, m->ct};
            m->cip[i] = &m->ci[i];
        }
        m->u2[0] = 0, m->u2[1] = 1, m->u2[2] = 2;
        m->sh.session = 9;
        m->sh.n_ciphers = 2;
        m->sh.ciphers = m->cip;
        m->sh.n_u2 = 3;
        m->sh.u2 = m->u2;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES;
        m->env.secagg_shares = &m->sh;
        break;
    case MOEH__MSG_TYPE__SECAGG_UNMASK:
        moeh__secagg_unmask__init(&m->um);
        m->surv[0] = 0, m->surv[1] = 2, m->surv[2] = 3, m->drop[0] = 1;
        m->um.session = 9;
        m->um.n_survivors = 3;
        m->um.survivors = m->surv;
        m->um.n_dropped = 1;
        m->um.dropped = m->drop;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_UNMASK;
        m->env.secagg_unmask = &m->um;
        break;
    case MOEH__MSG_TYPE__SECAGG_REVEAL:
        moeh__secagg_reveal__init(&m->rv);
        for (uint32_t i = 0; i < 2; i++) {
            moeh__secagg_share__init(&m->share[i]);
            m->share[i].owner = i;
            m->share[i].kind = i ? MOEH__SECAGG_KIND__SECAGG_S : MOEH__SECAGG_KIND__SECAGG_B;
            for (size_t k = 0; k < MOEH_SECAGG_SHARE_ELEMS; k++)
                m->y[i][k] = MOEH_SECAGG_PRIME - 1 - k - 10 * i;
            m->share[i].n_y = MOEH_SECAGG_SHARE_ELEMS;
            m->share[i].y = m->y[i];
            m->sharep[i] = &m->share[i];
        }
        m->rv.session = 9;
        m->rv.n_shares = 2;
        m->rv.shares = m->sharep;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_REVEAL;
        m->env.secagg_reveal = &m->rv;
        break;
    default:
        fail();
    }
}

/* Packs m (no frames) and decodes it; returns the code, *out owns the envelope on success. */
static int sa_roundtrip(sa_msg_t *m, Moeh__Envelope **out, moeh_err_t *err)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&m->env, NULL, 0, &hdr, &len), 0);
    int rc = moeh_wire_decode(&k_lim, hdr, len, NULL, 0, out, err);
    free(hdr);
    return rc;
}

static void sa_reject(sa_msg_t *m, const char *needle)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&m->env, NULL, 0, &hdr, &len), 0);
    check_reject_raw(&k_lim, hdr, len, NULL, 0, -EBADMSG, needle);
    free(hdr);
}

static void check_accept_env(Moeh__Envelope *env)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(moeh_wire_pack(env, NULL, 0, &hdr, &len), 0);
    int rc = moeh_wire_decode(&k_lim, hdr, len, NULL, 0, &e, &err);
    if (rc) print_error("unexpected rejection %d: %s\n", rc, err.msg);
    assert_int_equal(rc, 0);
    moeh__envelope__free_unpacked(e, NULL);
    free(hdr);
}

static void test_roundtrip_secagg(void **state)
{
    sa_msg_t m;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_advertise->session, 0x1122334455667788ull);
    assert_memory_equal(e->secagg_advertise->c_pk.data, m.pk[0], 32);
    assert_memory_equal(e->secagg_advertise->s_pk.data, m.pk[1], 32);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_keys->n_keys, 3);
    assert_int_equal(e->secagg_keys->keys[2]->id, 4);
    assert_memory_equal(e->secagg_keys->keys[1]->s_pk.data, m.pk[1], 32);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_shares->n_ciphers, 2);
    assert_int_equal(e->secagg_shares->ciphers[1]->peer, 2);
    assert_memory_equal(e->secagg_shares->ciphers[0]->ct.data, m.ct, sizeof m.ct);
    assert_int_equal(e->secagg_shares->n_u2, 3);
    moeh__envelope__free_unpacked(e, NULL);
    m.sh.n_u2 = 0; /* a site's own shares carry no U2 */
    check_accept_env(&m.env);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_unmask->n_survivors, 3);
    assert_int_equal(e->secagg_unmask->survivors[2], 3);
    assert_int_equal(e->secagg_unmask->dropped[0], 1);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_reveal->n_shares, 2);
    assert_int_equal(e->secagg_reveal->shares[1]->kind, MOEH__SECAGG_KIND__SECAGG_S);
    assert_memory_equal(e->secagg_reveal->shares[1]->y, m.y[1], sizeof m.y[1]);
    moeh__envelope__free_unpacked(e, NULL);
    m.rv.n_shares = 0; /* nothing to reveal is a valid answer */
    check_accept_env(&m.env);

    /* RoundStart{TRAIN} with secagg parameters, and the masked update's session */
    msg_t r;
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    sp.session = 77, sp.n = 5, sp.t = 3, sp.graph_seed = 99, sp.id = 4;
    mk_round_start(&r);
    r.rs.secagg = &sp;
    assert_int_equal(roundtrip(&r, &k_lim, &e, &err), 0);
    assert_non_null(e->round_start->secagg);
    assert_int_equal(e->round_start->secagg->session, 77);
    assert_int_equal(e->round_start->secagg->n, 5);
    assert_int_equal(e->round_start->secagg->t, 3);
    assert_int_equal(e->round_start->secagg->graph_seed, 99);
    assert_int_equal(e->round_start->secagg->id, 4);
    moeh__envelope__free_unpacked(e, NULL);
    mk_update(&r);
    r.upd.secagg_session = 77;
    assert_int_equal(roundtrip(&r, &k_lim, &e, &err), 0);
    assert_int_equal(e->update->secagg_session, 77);
    moeh__envelope__free_unpacked(e, NULL);
}

static void test_secagg_checks(void **state)
{
    sa_msg_t m;
    uint8_t short_key[31] = {0};
    /* sessions are never 0 */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    m.ad.session = 0;
    sa_reject(&m, "secagg_advertise.session");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m.keys.session = 0;
    sa_reject(&m, "secagg_keys.session");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m.sh.session = 0;
    sa_reject(&m, "secagg_shares.session");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m.um.session = 0;
    sa_reject(&m, "secagg_unmask.session");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m.rv.session = 0;
    sa_reject(&m, "secagg_reveal.session");
    /* keys of exactly 32 bytes */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    m.ad.c_pk = (ProtobufCBinaryData){31, short_key};
    sa_reject(&m, "secagg_advertise.c_pk: 31 bytes");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    m.ad.s_pk = (ProtobufCBinaryData){0, NULL};
    sa_reject(&m, "secagg_advertise.s_pk: 0 bytes");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m.key[1].s_pk = (ProtobufCBinaryData){31, short_key};
    sa_reject(&m, "secagg_keys.keys.s_pk");
    /* key lists: 2.. entries, ids strictly increasing and below the wire limit */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m.keys.n_keys = 1;
    sa_reject(&m, "secagg_keys.keys: 1 entries");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m.key[2].id = 2; /* repeats id 2 */
    sa_reject(&m, "strictly increasing");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m.key[2].id = MOEH_WIRE_SECAGG_MAX;
    sa_reject(&m, "secagg_keys.keys.id[2]");
    /* shares: ciphertexts of exactly 96 bytes, peers increasing, at least one */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m.ci[1].ct.len = MOEH_SECAGG_SHARE_CT_BYTES - 1;
    sa_reject(&m, "secagg_shares.ciphers.ct: 95 bytes");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m.ci[1].peer = 1;
    sa_reject(&m, "secagg_shares.ciphers.peer[1]");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m.sh.n_ciphers = 0;
    sa_reject(&m, "secagg_shares.ciphers: 0 entries");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m.u2[2] = 0;
    sa_reject(&m, "secagg_shares.u2[2]");
    /* unmask: disjoint sorted lists, at least 2 survivors */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m.drop[0] = 2;
    sa_reject(&m, "id 2 is both a survivor and dropped");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m.um.n_survivors = 1;
    sa_reject(&m, "secagg_unmask.survivors: 1");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m.surv[1] = 0;
    sa_reject(&m, "secagg_unmask.survivors[1]");
    /* reveal: known kind, 5 elements below p, owners increasing */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m.share[0].kind = MOEH__SECAGG_KIND__SECAGG_KIND_UNSPECIFIED;
    sa_reject(&m, "secagg_reveal.shares[0].kind");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m.share[1].n_y = 4;
    sa_reject(&m, "secagg_reveal.shares[1].y: 4 elements");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m.y[0][3] = MOEH_SECAGG_PRIME;
    sa_reject(&m, "secagg_reveal.shares[0].y[3]: not an element");
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m.share[1].owner = 0;
    sa_reject(&m, "secagg_reveal.shares.owner[1]");
    /* no tensor frames on a secagg message */
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    {
        uint32_t w = 1;
        moeh_frame_t f = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = &w, .count = 1};
        uint8_t *hdr = NULL;
        size_t len = 0;
        assert_int_equal(moeh_wire_pack(&m.env, &f, 1, &hdr, &len), 0);
        moeh_iov_t iov = {&w, 4};
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "expected none");
        free(hdr);
    }

    /* RoundStart.secagg: any phase (each sums its own vector), a session, 2 <= n <= limit,
     * id < n, t > n / 2 */
    msg_t r;
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    sp.session = 77, sp.n = 5, sp.t = 3, sp.id = 4;
    mk_round_start(&r);
    r.rs.secagg = &sp;
    r.rs.task = MOEH__ROUND_TASK__EVALUATE;
    check_accept(&r, &k_lim);
    r.rs.task = MOEH__ROUND_TASK__TRAIN;
    sp.session = 0;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg.session");
    sp.session = 77, sp.id = 5;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 5");
    sp.id = 0, sp.n = 1;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 1");
    sp.n = MOEH_WIRE_SECAGG_MAX + 1, sp.t = sp.n;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 513");
    sp.n = 5, sp.t = 2; /* t must exceed n / 2 */
    check_reject(&r, &k_lim, -EBADMSG, "threshold t = 2");
    sp.t = 3, sp.k = 3; /* SecAgg+ k is even */
    check_reject(&r, &k_lim, -EBADMSG, "k = 3 neighbours");
    sp.k = 0;
    moeh_wire_limits_t none = {0};
    check_reject(&r, &none, -EBADMSG, "round_start.secagg: before the model was negotiated");
    check_accept(&r, &k_lim);
}

/* SecaggMasked: a session, a known task, and one U32 frame "masked" of exactly the length
 * proto/moeh_secsum.h gives that task under the negotiated limits. */
static void test_secagg_masked(void **state)
{
    const Moeh__RoundTask tasks[3] = {MOEH__ROUND_TASK__TRAIN, MOEH__ROUND_TASK__STATS,
                                      MOEH__ROUND_TASK__EVALUATE};
    size_t want[3] = {N_PARAMS + N_GROUPS + 3 * MOEH_SECSUM_FIX_WORDS,
                      3 * N_NORM * MOEH_SECSUM_FIX_WORDS,
                      N_HIST + (N_GATE + MOEH_WIRE_COMBOS + 2) * MOEH_SECSUM_FIX_WORDS};
    uint32_t *w = calloc(want[2] + 1, sizeof(uint32_t));
    for (size_t i = 0; i < want[2] + 1; i++)
        w[i] = 0x9e3779b9u * (uint32_t)i; /* masked words look like anything */
    for (int k = 0; k < 3; k++) {
        assert_int_equal(moeh_secsum_len(&k_lim, tasks[k]), want[k]);
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggMasked sm = MOEH__SECAGG_MASKED__INIT;
        sm.session = 0x77, sm.round = 3, sm.model_version = 8, sm.task = tasks[k];
        env.type = MOEH__MSG_TYPE__SECAGG_MASKED;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED;
        env.secagg_masked = &sm;
        moeh_frame_t f = {.name = "masked", .dtype = MOEH__DTYPE__U32, .data = w, .count = want[k]};
        uint8_t *hdr = NULL;
        size_t len = 0;
        moeh_iov_t iov = {w, want[k] * 4};
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        Moeh__Envelope *e = NULL;
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_wire_decode(&k_lim, hdr, len, &iov, 1, &e, &err), 0);
        assert_int_equal(e->secagg_masked->task, tasks[k]);
        assert_int_equal(e->secagg_masked->model_version, 8);
        moeh__envelope__free_unpacked(e, NULL);
        free(hdr);
        /* one word short or long */
        for (int d = -1; d <= 1; d += 2) {
            f.count = want[k] + d, iov.len = f.count * 4;
            assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
            check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "frame 'masked' has");
            free(hdr);
        }
        f.count = want[k], iov.len = want[k] * 4;
        /* not negotiated yet */
        moeh_wire_limits_t none = {0};
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&none, hdr, len, &iov, 1, -EBADMSG, "before the model was negotiated");
        free(hdr);
        /* session 0, unknown task */
        sm.session = 0;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "secagg_masked.session");
        free(hdr);
        sm.session = 0x77, sm.task = MOEH__ROUND_TASK__TASK_UNSPECIFIED;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "secagg_masked.task");
        free(hdr);
        /* a frame of another name or dtype */
        sm.task = tasks[k];
        f.name = "update";
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "expected 'masked'");
        free(hdr);
    }
    free(w);
}

/* Granted uploads: UploadReady and UploadGrant carry a training round (>= 1), a model version
 * and a session (0: plain), and no frame; RoundStart.grant_uploads only with TRAIN. */
static void test_upload_grant_messages(void **state)
{
    msg_t m;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    mk_upload_ready(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPLOAD_READY);
    assert_int_equal(e->upload_ready->round, 3);
    assert_int_equal(e->upload_ready->model_version, 8);
    assert_int_equal(e->upload_ready->session, 0x77);
    moeh__envelope__free_unpacked(e, NULL);
    m.ready.session = 0; /* plain */
    check_accept(&m, &k_lim);
    moeh_wire_limits_t none = {0}; /* nothing negotiated is needed */
    check_accept(&m, &none);
    m.ready.round = 0;
    check_reject(&m, &k_lim, -EBADMSG, "upload_ready.round: 0");

    mk_upload_grant(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPLOAD_GRANT);
    assert_int_equal(e->upload_grant->round, 3);
    assert_int_equal(e->upload_grant->session, 0);
    moeh__envelope__free_unpacked(e, NULL);
    m.grant.round = 0;
    check_reject(&m, &k_lim, -EBADMSG, "upload_grant.round: 0");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__UPLOAD_READY), "upload_ready");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__UPLOAD_GRANT), "upload_grant");
    assert_string_equal(moeh_msg_type_name(18), "unknown");

    mk_round_start(&m);
    m.rs.grant_uploads = 1;
    check_accept(&m, &k_lim);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_true(e->round_start->grant_uploads);
    moeh__envelope__free_unpacked(e, NULL);
    m.rs.task = MOEH__ROUND_TASK__EVALUATE;
    check_reject(&m, &k_lim, -EBADMSG, "round_start.grant_uploads: only a TRAIN phase");
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
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[1];
    mk_heartbeat(&m);
    pack_msg(&m, &hdr, &len, iov);
    const void *data[SMALL_PARTS + 3];
    size_t lens[SMALL_PARTS + 3];
    data[0] = hdr;
    lens[0] = len;
    for (size_t i = 1; i < SMALL_PARTS + 3; i++) {
        data[i] = m.f32;
        lens[i] = 4;
    }
    send_parts(z.a, data, lens, SMALL_PARTS + 3);
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

    free(hdr);
    zpair_close(&z);
}

/* Receives one raw multipart message; returns its parts' sizes in len[] (at most cap). */
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
    msg_t m;
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[1];
    mk_heartbeat(&m);
    pack_msg(&m, &hdr, &len, iov);
    const void *data[SMALL_PARTS];
    size_t lens[SMALL_PARTS];
    data[0] = hdr;
    lens[0] = len;
    for (size_t i = 1; i < SMALL_PARTS; i++) {
        data[i] = m.f32;
        lens[i] = 4;
    }
    /* exactly SMALL_PARTS parts on a socket without routing id: envelope + 5 frames, one
     * frame more than msg->frames holds. Must be refused without writing past msg->frames
     * (peer, right behind it, must stay "") */
    send_parts(z.a, data, lens, SMALL_PARTS);
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
    free(hdr);
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
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[1];
    mk_heartbeat(&m);
    pack_msg(&m, &hdr, &len, iov);
    const void *data[SMALL_PARTS];
    size_t lens[SMALL_PARTS];
    data[0] = hdr;
    lens[0] = len;
    for (size_t i = 1; i < SMALL_PARTS; i++) {
        data[i] = m.f32;
        lens[i] = 4;
    }
    send_parts(z.a, data, lens, SMALL_PARTS); /* + routing id = MAX_PARTS + 1 */
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

    free(hdr);
    zpair_close(&z);
}

/* The MoE-Health fields: normalisation, statistics, gate sums, combination slices, spec. */
static void test_moe_field_checks(void **state)
{
    msg_t m;
    mk_round_start(&m);
    m.norm[N_NORM + 1] = 0.0f; /* a standard deviation must be positive */
    check_reject(&m, &k_lim, -EBADMSG, "round_start.norm: standard deviation 1");
    mk_round_start(&m);
    m.norm[0] = NAN;
    check_reject(&m, &k_lim, -ERANGE, "round_start.norm");
    mk_round_start(&m);
    m.frames[1].count = 2 * N_NORM - 1;
    check_reject(&m, &k_lim, -EBADMSG, "'norm' has 5 elements, expected 6");
    mk_round_start(&m);
    m.cfg.prox_mu = -1.0f;
    check_reject(&m, &k_lim, -EBADMSG, "prox_mu");

    mk_stats_result(&m);
    m.stats[3] = -1.0; /* feature 1's count */
    check_reject(&m, &k_lim, -EBADMSG, "feature 1");
    mk_stats_result(&m);
    m.stats[2] = INFINITY;
    check_reject(&m, &k_lim, -ERANGE, "stats_result.stats");
    mk_stats_result(&m);
    moeh_wire_limits_t no_norm = k_lim;
    no_norm.n_norm = 0; /* before the model is known */
    check_reject(&m, &no_norm, -EBADMSG, "before the model was negotiated");

    mk_eval_result(&m);
    m.gate[3] = -0.5f;
    check_reject(&m, &k_lim, -EBADMSG, "eval_result.gate: element 3");
    mk_eval_result(&m);
    m.gate[0] = NAN;
    check_reject(&m, &k_lim, -ERANGE, "eval_result.gate");
    mk_eval_result(&m);
    m.ev.n_combo_rows = MOEH_WIRE_COMBOS - 1;
    check_reject(&m, &k_lim, -EBADMSG, "combo_rows");
    mk_eval_result(&m);
    m.hist[2 * N_SLICE] += 1000; /* more labels in the combinations than in all rows */
    check_reject(&m, &k_lim, -EBADMSG, "in combinations");
    mk_eval_result(&m);
    m.frames[1].count = N_GATE + 1;
    check_reject(&m, &k_lim, -EBADMSG, "'gate' has 15 elements, expected 14");

    mk_welcome(&m);
    m.spec.n_experts = 8;
    check_reject(&m, &k_lim, -EBADMSG, "welcome.model.n_experts: 8");
    mk_hello(&m);
    m.hello.n_steps = 1001;
    check_reject(&m, &k_lim, -EBADMSG, "n_steps");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_hello),
        cmocka_unit_test(test_roundtrip_welcome),
        cmocka_unit_test(test_roundtrip_round_start),
        cmocka_unit_test(test_roundtrip_update),
        cmocka_unit_test(test_unaligned_frame),
        cmocka_unit_test(test_roundtrip_eval_result),
        cmocka_unit_test(test_roundtrip_stats_result),
        cmocka_unit_test(test_shared_frame_broadcast),
        cmocka_unit_test(test_moe_field_checks),
        cmocka_unit_test(test_roundtrip_simple),
        cmocka_unit_test(test_truncated_headers),
        cmocka_unit_test(test_empty_and_oversized_header),
        cmocka_unit_test(test_too_many_frames),
        cmocka_unit_test(test_protocol_version),
        cmocka_unit_test(test_type_body_mismatch),
        cmocka_unit_test(test_random_garbage),
        cmocka_unit_test(test_frame_count_mismatch),
        cmocka_unit_test(test_frame_byte_length),
        cmocka_unit_test(test_tensor_before_negotiation),
        cmocka_unit_test(test_frame_count_name_dtype),
        cmocka_unit_test(test_non_finite_tensors),
        cmocka_unit_test(test_update_checks),
        cmocka_unit_test(test_eval_result_checks),
        cmocka_unit_test(test_hello_site_ids),
        cmocka_unit_test(test_round_start_checks),
        cmocka_unit_test(test_round_start_dp),
        cmocka_unit_test(test_frames_where_none_allowed),
        cmocka_unit_test(test_long_strings),
        cmocka_unit_test(test_names_and_site_ids),
        cmocka_unit_test(test_roundtrip_secagg),
        cmocka_unit_test(test_secagg_checks),
        cmocka_unit_test(test_secagg_masked),
        cmocka_unit_test(test_upload_grant_messages),
        cmocka_unit_test(test_zmq_pair),
        cmocka_unit_test(test_zmq_router),
        cmocka_unit_test(test_zmq_max_parts_without_routing_id),
        cmocka_unit_test(test_zmq_chunked_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
