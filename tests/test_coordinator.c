/* test_coordinator.c - the coordinator's state machine (coordinator/moeh_coord_core.h) driven
 * in-process: fake sites build real envelopes, which are packed with the wire encoder and
 * decoded with moeh_wire_decode() against the core's limits before the core sees them; a fake
 * clock drives deadlines, retries, grant expiry; every reply the core sends is captured (packed
 * and unpacked again, so that it is a real message). Covers admission, STATS / TRAIN / EVAL,
 * quorum, deadline and retry, rejoin mid-phase, late and duplicate updates, upload grants
 * (slots, expiry), secure aggregation with a dropout, and metrics.jsonl staying valid JSON
 * whatever a site's Bye says. The model after a round is checked against the hand-computed
 * weighted mean of the deltas the fake sites sent. */
#include "moeh_coord_core.h"

#include "moeh_coord_report.h"

#include "moeh_dp_ledger.h"
#include "moeh_keys.h"
#include "moeh_quant.h"
#include "moeh_schema.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_uploads.h"
#include "moeh_wire.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#define N_SITES 3
#define MAX_SENT 4096

typedef struct {
    char rid[32];
    Moeh__Envelope *env; /* an unpacked copy of what the core sent */
} sent_t;

typedef struct {
    char id[16];
    char rid[32]; /* the routing id of its current connection */
    uint64_t n_train;
    moeh_secagg_client_t *sa;
} site_t;

typedef struct {
    char dir[256];
    moeh_coord_cfg_t cfg;
    moeh_coord_io_t io;
    moeh_coord_core_t *core;
    sent_t sent[MAX_SENT];
    size_t n_sent;
    const char *registry[8];
    size_t n_registry;
    uint32_t saved_round;
    int64_t now;
    site_t site[N_SITES];
} fx_t;

/* ---- the fake surroundings -------------------------------------------------------------- */

static int fake_send(void *ctx, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env,
                     const moeh_frame_t *frames, size_t n_frames)
{
    fx_t *f = ctx;
    (void)frames, (void)n_frames;
    assert_true(f->n_sent < MAX_SENT);
    assert_true(rid_len < sizeof f->sent[0].rid);
    size_t len = moeh__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(moeh__envelope__pack(env, buf), len);
    sent_t *s = &f->sent[f->n_sent++];
    memcpy(s->rid, rid, rid_len);
    s->rid[rid_len] = 0;
    s->env = moeh__envelope__unpack(NULL, len, buf);
    assert_non_null(s->env);
    free(buf);
    return 0;
}

static int fake_registered(void *ctx, const char *id)
{
    fx_t *f = ctx;
    for (size_t i = 0; i < f->n_registry; i++)
        if (!strcmp(f->registry[i], id)) return 1;
    return 0;
}

static void fake_round_saved(void *ctx, uint32_t round)
{
    ((fx_t *)ctx)->saved_round = round;
}

static void clear_sent(fx_t *f)
{
    for (size_t i = 0; i < f->n_sent; i++)
        moeh__envelope__free_unpacked(f->sent[i].env, NULL);
    f->n_sent = 0;
}

/* The last message of this type sent to rid (NULL: none). */
static const Moeh__Envelope *last_to(const fx_t *f, const char *rid, Moeh__MsgType type)
{
    for (size_t i = f->n_sent; i-- > 0;)
        if (!strcmp(f->sent[i].rid, rid) && f->sent[i].env->type == type) return f->sent[i].env;
    return NULL;
}

static size_t count_sent(const fx_t *f, Moeh__MsgType type)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n_sent; i++)
        n += f->sent[i].env->type == type;
    return n;
}

/* The message of the last Error sent to rid, asserting there is one. */
static const char *last_error(const fx_t *f, const char *rid, int want_code)
{
    const Moeh__Envelope *e = last_to(f, rid, MOEH__MSG_TYPE__ERROR);
    assert_non_null(e);
    assert_int_equal(e->error->code, want_code);
    return e->error->message;
}

static void fx_create(fx_t *f, void (*tweak)(moeh_coord_cfg_t *))
{
    memset(f, 0, sizeof *f);
    assert_int_equal(moeh_test_tmpdir(f->dir, sizeof f->dir, "coord"), 0);
    moeh_coord_cfg_t *c = &f->cfg;
    moeh_coord_cfg_defaults(c);
    c->rounds = 1;
    c->min_sites = 2;
    c->wait_sites = N_SITES;
    c->phase_deadline_ms = 1000;
    c->max_retries = 1;
    c->heartbeat_ms = 100;
    c->heartbeat_timeout_ms = 100000;
    c->upload_slots = 0;
    c->model.d_emb = 8;
    c->model.d_hidden = 8;
    c->model.note_buckets = 64;
    c->batch_size = 4;
    c->eval_bins = 10;
    c->warmup_rounds = 0;
    c->data_shape = "4,3,6,8";
    c->out_dir = f->dir;
    if (tweak) tweak(c);
    f->registry[0] = "site-1", f->registry[1] = "site-2", f->registry[2] = "site-3";
    f->n_registry = 3;
    f->io = (moeh_coord_io_t){.send = fake_send,
                              .registered = fake_registered,
                              .round_saved = fake_round_saved,
                              .ctx = f};
    moeh_err_t err = {0};
    int rc = moeh_coord_core_create(&f->cfg, &f->io, &f->core, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    f->now = 1000000;
    moeh_coord_core_start(f->core, 3, f->now);
    for (int k = 0; k < N_SITES; k++) {
        snprintf(f->site[k].id, sizeof f->site[k].id, "site-%d", k + 1);
        snprintf(f->site[k].rid, sizeof f->site[k].rid, "conn-%d-a", k + 1);
        f->site[k].n_train = 100 + 50 * (uint64_t)k;
    }
}

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    clear_sent(f);
    moeh_coord_core_destroy(&f->core);
    for (int k = 0; k < N_SITES; k++)
        moeh_secagg_client_destroy(&f->site[k].sa);
    if (f->dir[0]) moeh_test_rmtree(f->dir);
    free(f);
    return 0;
}

/* Packs env (with frames) like a site would, decodes it like run.c does, and hands it to the
 * core as coming from routing id rid and authenticated peer. The decoder's code, or the
 * core's. */
static int deliver_from(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
                        const moeh_frame_t *frames, size_t n_frames)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(env, frames, n_frames, &hdr, &len), 0);
    moeh_iov_t iov[MOEH_MAX_FRAMES];
    for (size_t i = 0; i < n_frames; i++) {
        size_t w = frames[i].dtype == MOEH__DTYPE__F64 ? 8 : 4;
        iov[i] = (moeh_iov_t){frames[i].data, frames[i].count * w};
    }
    moeh_msg_t m;
    memset(&m, 0, sizeof m);
    moeh_err_t err = {0};
    int rc =
        moeh_wire_decode(moeh_coord_core_limits(f->core), hdr, len, iov, n_frames, &m.env, &err);
    free(hdr);
    snprintf(m.peer, sizeof m.peer, "%s", peer);
    m.routing_id_len = strlen(rid);
    memcpy(m.routing_id, rid, m.routing_id_len);
    if (rc) {
        moeh_coord_core_on_bad_message(f->core, &m, rc, err.msg, f->now);
        return rc;
    }
    m.n_frames = n_frames;
    memcpy(m.frames, iov, n_frames * sizeof iov[0]);
    rc = moeh_coord_core_on_message(f->core, &m, f->now, &err);
    moeh__envelope__free_unpacked(m.env, NULL);
    return rc;
}

static int deliver(fx_t *f, int k, Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames)
{
    return deliver_from(f, f->site[k].rid, f->site[k].id, env, frames, n_frames);
}

static void tick(fx_t *f, int64_t advance_ms)
{
    f->now += advance_ms;
    moeh_err_t err = {0};
    int rc = moeh_coord_core_tick(f->core, f->now, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
}

static Moeh__Envelope hello_env(Moeh__Hello *h, const fx_t *f, int k)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    moeh__hello__init(h);
    h->site_id = (char *)f->site[k].id;
    h->n_train = f->site[k].n_train;
    h->n_eval = 40;
    h->n_features = 4;
    h->n_vars = 3;
    h->n_steps = 6;
    h->img_size = 8;
    env.type = MOEH__MSG_TYPE__HELLO;
    env.body_case = MOEH__ENVELOPE__BODY_HELLO;
    env.hello = h;
    return env;
}

static void hello(fx_t *f, int k)
{
    Moeh__Hello h;
    Moeh__Envelope env = hello_env(&h, f, k);
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
    assert_non_null(last_to(f, f->site[k].rid, MOEH__MSG_TYPE__WELCOME));
}

static void heartbeat(fx_t *f, int k)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    env.type = MOEH__MSG_TYPE__HEARTBEAT;
    env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
}

/* The RoundStart site k received last, asserting its round and task. */
static const Moeh__RoundStart *round_start(const fx_t *f, int k, uint32_t round,
                                           Moeh__RoundTask task)
{
    const Moeh__Envelope *e = last_to(f, f->site[k].rid, MOEH__MSG_TYPE__ROUND_START);
    assert_non_null(e);
    assert_int_equal(e->round_start->round, round);
    assert_int_equal(e->round_start->task, task);
    return e->round_start;
}

/* Site k's normalisation statistics: count, sum, sum of squares per feature. */
static void site_stats(int k, size_t n_norm, double *st)
{
    for (size_t i = 0; i < n_norm; i++) {
        double n = 10.0 + (double)k, mean = (double)i + 0.5 * k, var = 1.0 + 0.25 * (double)i;
        st[3 * i] = n;
        st[3 * i + 1] = n * mean;
        st[3 * i + 2] = n * (var + mean * mean);
    }
}

static void send_stats(fx_t *f, int k)
{
    size_t n_norm;
    moeh_coord_core_norm(f->core, &n_norm);
    double *st = calloc(3 * n_norm, sizeof(double));
    assert_non_null(st);
    site_stats(k, n_norm, st);
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult r = MOEH__STATS_RESULT__INIT;
    r.round = 0;
    r.n_rows = 10;
    env.type = MOEH__MSG_TYPE__STATS_RESULT;
    env.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    env.stats_result = &r;
    moeh_frame_t fr = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = 3 * n_norm};
    assert_int_equal(deliver(f, k, &env, &fr, 1), 0);
    free(st);
}

/* Site k's delta of parameter i (within the default delta clip of 1). */
static float site_delta(int k, size_t i)
{
    return 0.01f * (float)(k + 1) * sinf(0.37f * (float)i + (float)k);
}

/* Site k's update words for a round: every group trained with weight w. */
static uint32_t *update_words(const fx_t *f, int k, const Moeh__RoundConfig *rc, uint32_t w,
                              size_t extra)
{
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *d = malloc(p->n * sizeof(float));
    uint32_t *words = calloc(p->n + p->n_groups + extra, sizeof(uint32_t));
    assert_non_null(d);
    assert_non_null(words);
    for (size_t i = 0; i < p->n; i++)
        d[i] = site_delta(k, i);
    moeh_quant_encode(words, d, p->n, rc->delta_clip, (double)w, rc->quant_scale);
    for (size_t g = 0; g < p->n_groups; g++)
        words[p->n + g] = w;
    free(d);
    return words;
}

static Moeh__Envelope update_env(Moeh__Update *u, uint32_t round, uint64_t version)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    moeh__update__init(u);
    u->round = round;
    u->model_version = version;
    u->train_loss = 0.5;
    u->n_samples = 10;
    u->steps = 3;
    env.type = MOEH__MSG_TYPE__UPDATE;
    env.body_case = MOEH__ENVELOPE__BODY_UPDATE;
    env.update = u;
    return env;
}

/* Sends site k's update (weight w) for round/version, encoded for the TRAIN RoundStart rs;
 * the core's code. */
static int send_update_for(fx_t *f, int k, const Moeh__RoundStart *rs, uint32_t round,
                           uint64_t version, uint32_t w)
{
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    uint32_t *words = update_words(f, k, rs->config, w, 0);
    Moeh__Update u;
    Moeh__Envelope env = update_env(&u, round, version);
    moeh_frame_t fr = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = p->n + p->n_groups};
    int rc = deliver(f, k, &env, &fr, 1);
    free(words);
    return rc;
}

/* The same for the last RoundStart site k received, which must be round's TRAIN. */
static int send_update(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t w)
{
    return send_update_for(f, k, round_start(f, k, round, MOEH__ROUND_TASK__TRAIN), round, version,
                           w);
}

/* Site k's evaluation: every task perfectly separated (negatives in bin 2, positives in bin 7)
 * over `rows` rows, all with EHR only. */
static void send_eval(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t rows)
{
    const uint32_t T = MOEH_N_TASKS, nb = f->cfg.eval_bins;
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    (void)p;
    size_t per_slice = (size_t)T * 2 * nb;
    uint32_t *hist = calloc(MOEH_N_SLICES * per_slice, sizeof(uint32_t));
    float gate[MOEH_N_COMBOS * 16] = {0};
    assert_non_null(hist);
    for (size_t sl = 0; sl < 2; sl++) /* all rows, and combination E */
        for (uint32_t t = 0; t < T; t++) {
            uint32_t *neg = hist + sl * per_slice + (size_t)t * 2 * nb;
            neg[2] = rows / 2;
            neg[nb + 7] = rows - rows / 2;
        }
    uint32_t combo_rows[MOEH_N_COMBOS] = {rows};
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__EvalResult r = MOEH__EVAL_RESULT__INIT;
    r.round = round;
    r.model_version = version;
    r.loss_sum = 0.25 * rows * T;
    r.n_labels = (uint64_t)rows * T;
    r.n_tasks = T;
    r.n_bins = nb;
    r.n_combo_rows = MOEH_N_COMBOS;
    r.combo_rows = combo_rows;
    env.type = MOEH__MSG_TYPE__EVAL_RESULT;
    env.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &r;
    const moeh_wire_limits_t *lim = moeh_coord_core_limits(f->core);
    moeh_frame_t fr[2] = {{.name = "hist",
                           .dtype = MOEH__DTYPE__U32,
                           .data = hist,
                           .count = MOEH_N_SLICES * per_slice},
                          {.name = "gate",
                           .dtype = MOEH__DTYPE__F32,
                           .data = gate,
                           .count = (uint64_t)MOEH_N_COMBOS * lim->n_experts}};
    assert_true(lim->n_experts <= 16);
    assert_int_equal(deliver(f, k, &env, fr, 2), 0);
    free(hist);
}

/* Joins every site and completes the STATS phase; TRAIN of round 1 is open afterwards. */
static void join_and_stats(fx_t *f)
{
    for (int k = 0; k < N_SITES; k++)
        hello(f, k);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, 0, MOEH__ROUND_TASK__STATS);
        send_stats(f, k);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(moeh_coord_core_round(f->core), 1);
}

/* The expected model after sites (mask) sent site_delta() with weights n_train: the
 * hand-computed weighted mean of their deltas added to w0. */
static void assert_weighted_mean(const fx_t *f, const float *w0, unsigned mask, int unweighted)
{
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    double worst = 0;
    for (size_t i = 0; i < p->n; i++) {
        double num = 0, den = 0;
        for (int k = 0; k < N_SITES; k++) {
            if (!(mask & (1u << k))) continue;
            double w = unweighted ? 1.0 : (double)f->site[k].n_train;
            num += w * site_delta(k, i);
            den += w;
        }
        double want = w0[i] + num / den, err = fabs(p->w[i] - want);
        if (err > worst) worst = err;
    }
    assert_true(worst < 1e-5);
}

/* ---- admission ------------------------------------------------------------------------- */

static void test_admission(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    Moeh__Hello h;
    Moeh__Envelope env;
    /* a message before hello is refused */
    heartbeat(f, 0);
    assert_string_equal(last_error(f, f->site[0].rid, -EPERM), "not admitted: send hello first");
    /* a peer whose key is not in the registry */
    env = hello_env(&h, f, 0);
    h.site_id = "intruder";
    assert_int_equal(deliver_from(f, "conn-x", "intruder", &env, NULL, 0), 0);
    last_error(f, "conn-x", -EACCES);
    /* a registered key claiming another site's id */
    env = hello_env(&h, f, 1);
    assert_int_equal(deliver_from(f, "conn-y", "site-1", &env, NULL, 0), 0);
    assert_non_null(strstr(last_error(f, "conn-y", -EACCES), "does not match"));
    /* a dataset of another shape */
    env = hello_env(&h, f, 2);
    h.n_vars = 5;
    assert_int_equal(deliver(f, 2, &env, NULL, 0), 0);
    last_error(f, f->site[2].rid, -EINVAL);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__WELCOME), 0);
    for (int k = 0; k < N_SITES; k++)
        assert_false(moeh_coord_core_admitted(f->core, f->site[k].id));
    /* the three registered sites join; the first phase waits for all of them */
    hello(f, 0);
    hello(f, 1);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_WAIT);
    hello(f, 2);
    const Moeh__Envelope *w = last_to(f, f->site[2].rid, MOEH__MSG_TYPE__WELCOME);
    assert_string_equal(w->welcome->site_id, "site-3");
    assert_int_equal(w->welcome->model->n_params, moeh_coord_core_params(f->core)->n);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(moeh_coord_core_participants(f->core), 3);
    /* a key revoked since: its site is told and dropped */
    f->n_registry = 2;
    moeh_coord_core_registry_changed(f->core, f->now);
    last_error(f, f->site[2].rid, -EACCES);
    assert_false(moeh_coord_core_admitted(f->core, "site-3"));
    assert_true(moeh_coord_core_admitted(f->core, "site-1"));
}

/* ---- one whole plain round ---------------------------------------------------------------- */

static void test_plain_round(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_and_stats(f);
    /* the normalisation is the one of the summed statistics */
    size_t n_norm;
    const float *norm = moeh_coord_core_norm(f->core, &n_norm);
    for (size_t i = 0; i < n_norm; i++) {
        double s0 = 0, s1 = 0, s2 = 0, st[3 * 16];
        assert_true(n_norm <= 16);
        for (int k = 0; k < N_SITES; k++) {
            site_stats(k, n_norm, st);
            s0 += st[3 * i], s1 += st[3 * i + 1], s2 += st[3 * i + 2];
        }
        double mean = s1 / s0, sd = sqrt(s2 / s0 - mean * mean);
        assert_float_equal(norm[i], mean, 1e-4);
        assert_float_equal(norm[n_norm + i], sd, 1e-4);
    }
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *w0 = malloc(p->n * sizeof(float));
    assert_non_null(w0);
    memcpy(w0, p->w, p->n * sizeof(float));
    uint64_t v = moeh_coord_core_model_version(f->core);
    /* late (another round) and duplicate updates are refused; neither changes the sum */
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "duplicate"));
    Moeh__Update u;
    Moeh__Envelope env = update_env(&u, 0, v);
    uint32_t *words = update_words(f, 1, round_start(f, 1, 1, MOEH__ROUND_TASK__TRAIN)->config,
                                   (uint32_t)f->site[1].n_train, 0);
    moeh_frame_t fr = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = p->n + p->n_groups};
    assert_int_equal(deliver(f, 1, &env, &fr, 1), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ESTALE), "stale"));
    /* a weight above the samples the site declared is refused */
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train + 1), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ERANGE), "exceeds"));
    free(words);
    assert_int_equal(moeh_coord_core_replied(f->core), 1);
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train), 0);
    tick(f, 10); /* site-3 has not replied and the deadline is far: still TRAIN */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_int_equal(moeh_coord_core_model_version(f->core), v + 1);
    assert_weighted_mean(f, w0, 7, 0);
    free(w0);
    /* EVAL: perfectly separated scores everywhere give an AUROC of 1 */
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, 1, MOEH__ROUND_TASK__EVALUATE);
        send_eval(f, k, 1, v + 1, 20);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_DONE);
    assert_int_equal(f->saved_round, 1);
    for (uint32_t t = 0; t < MOEH_N_TASKS; t++)
        assert_float_equal(moeh_coord_core_auroc(f->core, t), 1.0, 1e-12);
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_core_finish(f->core, &err), 0);
}

/* ---- quorum, deadline, retry ------------------------------------------------------------- */

static void test_deadline_retry_and_failure(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    for (int k = 0; k < N_SITES; k++)
        hello(f, k);
    tick(f, 10);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 3);
    send_stats(f, 0);
    tick(f, 500); /* before the deadline: waiting */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 3);
    tick(f, 600); /* past it with 1 of the 2 replies needed: the phase is retried */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), 6);
    assert_int_equal(moeh_coord_core_replied(f->core), 0);
    send_stats(f, 1);
    f->now += 1100; /* again without quorum, and out of retries: the run fails */
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_core_tick(f->core, f->now, &err), -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "1 of the 2 sites needed replied, after 2 attempts"));
}

static void test_deadline_closes_with_quorum(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_and_stats(f);
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *w0 = malloc(p->n * sizeof(float));
    assert_non_null(w0);
    memcpy(w0, p->w, p->n * sizeof(float));
    uint64_t v = moeh_coord_core_model_version(f->core);
    const Moeh__RoundStart *rs1 = round_start(f, 1, 1, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 999);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    tick(f, 2); /* the deadline passed with 2 of 3: quorum, the phase closes without site-2 */
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_weighted_mean(f, w0, 1u | 4u, 0);
    free(w0);
    /* site-2's update arrives late, in the EVAL phase: refused */
    assert_int_equal(send_update_for(f, 1, rs1, 1, v, (uint32_t)f->site[1].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ESTALE), "outside its phase"));
}

/* ---- rejoin mid-phase -------------------------------------------------------------------- */

static void test_rejoin_mid_phase(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_and_stats(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    size_t starts = count_sent(f, MOEH__MSG_TYPE__ROUND_START);
    /* site-3 reconnects declaring more samples: welcomed again and given the open phase */
    char old_rid[32];
    snprintf(old_rid, sizeof old_rid, "%s", f->site[2].rid);
    snprintf(f->site[2].rid, sizeof f->site[2].rid, "conn-3-b");
    uint64_t declared = f->site[2].n_train;
    f->site[2].n_train = declared * 10;
    hello(f, 2);
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__ROUND_START), starts + 1);
    round_start(f, 2, 1, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(moeh_coord_core_participants(f->core), 3);
    /* the old connection is no longer admitted */
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    env.type = MOEH__MSG_TYPE__HEARTBEAT;
    env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    assert_int_equal(deliver_from(f, old_rid, "site-3", &env, NULL, 0), 0);
    last_error(f, old_rid, -EPERM);
    /* its weight is still bounded by the samples declared when the phase opened */
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[2].rid, -ERANGE), "exceeds"));
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)declared), 0);
    assert_int_equal(moeh_coord_core_replied(f->core), 1);
}

/* ---- granted uploads -------------------------------------------------------------------- */

static void slots_1(moeh_coord_cfg_t *c)
{
    c->upload_slots = 1;
    c->heartbeat_timeout_ms = 500; /* also the grant's lifetime */
}

static void upload_ready(fx_t *f, int k, uint32_t round, uint64_t version)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__UploadReady r = MOEH__UPLOAD_READY__INIT;
    r.round = round;
    r.model_version = version;
    env.type = MOEH__MSG_TYPE__UPLOAD_READY;
    env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    env.upload_ready = &r;
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
}

static void test_upload_grants(void **state)
{
    fx_t *f = *state;
    fx_create(f, slots_1);
    join_and_stats(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    assert_true(round_start(f, 0, 1, MOEH__ROUND_TASK__TRAIN)->grant_uploads);
    /* an update without a grant is refused */
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "no upload slot"));
    /* one slot: first come first served */
    upload_ready(f, 1, 1, v);
    upload_ready(f, 0, 1, v);
    assert_non_null(last_to(f, f->site[1].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    assert_null(last_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    upload_ready(f, 0, 1, v); /* announcing twice is refused */
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "duplicate upload_ready"));
    /* site-2 does not use its grant: it expires, and the slot goes to site-1 */
    f->now += 300;
    for (int k = 0; k < N_SITES; k++)
        heartbeat(f, k);
    tick(f, 250);
    assert_non_null(last_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train), 0);
    assert_non_null(strstr(last_error(f, f->site[1].rid, -ESTALE), "grant expired"));
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    upload_ready(f, 2, 1, v); /* the freed slot goes to site-3 at once */
    assert_non_null(last_to(f, f->site[2].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    /* the phase does not wait for the expired site */
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_int_equal(moeh_coord_core_replied(f->core), 0);
    /* metrics.jsonl says how the slots were used */
    char path[400], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int seen = 0;
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "event")), "uploads")) {
            assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "expired")), 1);
            assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "max_in_flight")), 1);
            seen++;
        }
        cJSON_Delete(j);
    }
    fclose(fp);
    assert_int_equal(seen, 1);
}

/* A site that leaves while holding the only slot releases it: the next site is granted at the
 * next tick, and the phase closes without the site that left. */
static void test_upload_slot_released_by_site_gone(void **state)
{
    fx_t *f = *state;
    fx_create(f, slots_1);
    join_and_stats(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    upload_ready(f, 0, 1, v);
    upload_ready(f, 1, 1, v);
    assert_non_null(last_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    assert_null(last_to(f, f->site[1].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = "shutting down";
    env.type = MOEH__MSG_TYPE__BYE;
    env.body_case = MOEH__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    assert_int_equal(deliver(f, 0, &env, NULL, 0), 0);
    tick(f, 10);
    assert_non_null(last_to(f, f->site[1].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    assert_int_equal(send_update(f, 1, 1, v, (uint32_t)f->site[1].n_train), 0);
    upload_ready(f, 2, 1, v);
    assert_int_equal(send_update(f, 2, 1, v, (uint32_t)f->site[2].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_int_equal(moeh_coord_core_participants(f->core), 2);
}

/* ---- metrics stay valid JSON -------------------------------------------------------------- */

static void test_bye_reason_stays_one_json_line(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    hello(f, 0);
    const char *reason = "disk \"full\"\nsee {log}\\ now";
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = (char *)reason;
    env.type = MOEH__MSG_TYPE__BYE;
    env.body_case = MOEH__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    assert_int_equal(deliver(f, 0, &env, NULL, 0), 0);
    assert_false(moeh_coord_core_admitted(f->core, "site-1"));
    char path[400], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int lines = 0;
    while (fgets(line, sizeof line, fp)) {
        lines++;
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "event")), "site_gone");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "site")), "site-1");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "why")), reason);
        cJSON_Delete(j);
    }
    fclose(fp);
    assert_int_equal(lines, 1);
}

/* ---- secure aggregation with a dropout ----------------------------------------------------- */

static void secagg_on(moeh_coord_cfg_t *c)
{
    c->secagg = 1;
}

/* Plays one securely aggregated phase: every site masks x[k] (len words); site `drop` (-1:
 * none) stops after the share exchange. The phase is closed afterwards. */
static void play_secagg(fx_t *f, Moeh__RoundTask task, uint32_t round, uint32_t **x, int drop)
{
    moeh_secagg_cfg_t sc[N_SITES];
    uint32_t id[N_SITES];
    const moeh_wire_limits_t *lim = moeh_coord_core_limits(f->core);
    for (int k = 0; k < N_SITES; k++) {
        const Moeh__RoundStart *rs = round_start(f, k, round, task);
        assert_non_null(rs->secagg);
        sc[k] = (moeh_secagg_cfg_t){.round = rs->secagg->session,
                                    .n = rs->secagg->n,
                                    .t = rs->secagg->t,
                                    .k = rs->secagg->k,
                                    .graph_seed = rs->secagg->graph_seed,
                                    .len = moeh_wire_secsum_len(lim, task)};
        id[k] = rs->secagg->id;
        assert_int_equal(sc[k].n, N_SITES);
        moeh_secagg_client_destroy(&f->site[k].sa);
        moeh_err_t err = {0};
        assert_int_equal(moeh_secagg_client_create(&sc[k], id[k], &f->site[k].sa, &err), 0);
        moeh_secagg_pubkeys_t pk;
        moeh_secagg_client_pubkeys(f->site[k].sa, &pk);
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggAdvertise a = MOEH__SECAGG_ADVERTISE__INIT;
        a.session = sc[k].round;
        a.c_pk = (ProtobufCBinaryData){32, pk.c_pk};
        a.s_pk = (ProtobufCBinaryData){32, pk.s_pk};
        env.type = MOEH__MSG_TYPE__SECAGG_ADVERTISE;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE;
        env.secagg_advertise = &a;
        assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
    }
    tick(f, 10); /* every key advertised: the coordinator sends the key list */
    for (int k = 0; k < N_SITES; k++) {
        const Moeh__Envelope *e = last_to(f, f->site[k].rid, MOEH__MSG_TYPE__SECAGG_KEYS);
        assert_non_null(e);
        moeh_secagg_pubkeys_t keys[N_SITES];
        uint8_t present[N_SITES] = {0}, sent[N_SITES];
        uint8_t cts[N_SITES * MOEH_SECAGG_SHARE_CT_BYTES];
        for (size_t i = 0; i < e->secagg_keys->n_keys; i++) {
            const Moeh__SecaggKey *kk = e->secagg_keys->keys[i];
            memcpy(keys[kk->id].c_pk, kk->c_pk.data, 32);
            memcpy(keys[kk->id].s_pk, kk->s_pk.data, 32);
            present[kk->id] = 1;
        }
        moeh_err_t err = {0};
        assert_int_equal(
            moeh_secagg_client_share_keys(f->site[k].sa, keys, present, cts, sent, &err), 0);
        Moeh__SecaggCipher cs[N_SITES], *cp[N_SITES];
        size_t m = 0;
        for (uint32_t j = 0; j < N_SITES; j++) {
            if (!sent[j]) continue;
            moeh__secagg_cipher__init(&cs[m]);
            cs[m].peer = j;
            cs[m].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES,
                                             cts + j * MOEH_SECAGG_SHARE_CT_BYTES};
            cp[m] = &cs[m];
            m++;
        }
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
        sh.session = sc[k].round;
        sh.n_ciphers = m;
        sh.ciphers = cp;
        env.type = MOEH__MSG_TYPE__SECAGG_SHARES;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES;
        env.secagg_shares = &sh;
        assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
    }
    tick(f, 10); /* every share in: forwarded */
    for (int k = 0; k < N_SITES; k++) {
        const Moeh__Envelope *e = last_to(f, f->site[k].rid, MOEH__MSG_TYPE__SECAGG_SHARES);
        assert_non_null(e);
        moeh_err_t err = {0};
        uint8_t u2[N_SITES] = {0};
        for (size_t i = 0; i < e->secagg_shares->n_ciphers; i++)
            assert_int_equal(
                moeh_secagg_client_receive_share(f->site[k].sa, e->secagg_shares->ciphers[i]->peer,
                                                 e->secagg_shares->ciphers[i]->ct.data, &err),
                0);
        for (size_t i = 0; i < e->secagg_shares->n_u2; i++)
            u2[e->secagg_shares->u2[i]] = 1;
        if (k == drop) continue; /* gone silent after the share exchange */
        uint32_t *y = malloc(sc[k].len * sizeof(uint32_t));
        assert_non_null(y);
        assert_int_equal(moeh_secagg_client_mask(f->site[k].sa, y, x[k], u2, &err), 0);
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggMasked mk = MOEH__SECAGG_MASKED__INIT;
        mk.session = sc[k].round;
        mk.round = round;
        mk.model_version = moeh_coord_core_model_version(f->core);
        mk.task = task;
        env.type = MOEH__MSG_TYPE__SECAGG_MASKED;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED;
        env.secagg_masked = &mk;
        moeh_frame_t fr = {
            .name = "masked", .dtype = MOEH__DTYPE__U32, .data = y, .count = sc[k].len};
        assert_int_equal(deliver(f, k, &env, &fr, 1), 0);
        if (k == 0) { /* a second masked vector is refused */
            assert_int_equal(deliver(f, k, &env, &fr, 1), 0);
            assert_non_null(strstr(last_error(f, f->site[k].rid, -ESTALE), "duplicate"));
        }
        free(y);
    }
    size_t unmasks = count_sent(f, MOEH__MSG_TYPE__SECAGG_UNMASK);
    if (drop >= 0) {
        tick(f, 10); /* waits for the silent site until the deadline */
        assert_int_equal(count_sent(f, MOEH__MSG_TYPE__SECAGG_UNMASK), unmasks);
        tick(f, 1000);
    } else {
        tick(f, 10);
    }
    /* the unmask request goes to the survivors only */
    assert_int_equal(count_sent(f, MOEH__MSG_TYPE__SECAGG_UNMASK),
                     unmasks + (drop >= 0 ? N_SITES - 1 : N_SITES));
    for (int k = 0; k < N_SITES; k++) {
        if (k == drop) continue;
        const Moeh__Envelope *e = last_to(f, f->site[k].rid, MOEH__MSG_TYPE__SECAGG_UNMASK);
        assert_non_null(e);
        assert_int_equal(e->secagg_unmask->n_dropped, drop >= 0 ? 1 : 0);
        moeh_secagg_reveal_t out[N_SITES];
        size_t n_out = 0;
        moeh_err_t err = {0};
        assert_int_equal(moeh_secagg_client_reveal(f->site[k].sa, e->secagg_unmask->survivors,
                                                   e->secagg_unmask->n_survivors,
                                                   e->secagg_unmask->dropped,
                                                   e->secagg_unmask->n_dropped, out, &n_out, &err),
                         0);
        Moeh__SecaggShare sh[N_SITES], *sp[N_SITES];
        for (size_t i = 0; i < n_out; i++) {
            moeh__secagg_share__init(&sh[i]);
            sh[i].owner = out[i].owner;
            sh[i].kind = out[i].kind == MOEH_SECAGG_REVEAL_B ? MOEH__SECAGG_KIND__SECAGG_B
                                                             : MOEH__SECAGG_KIND__SECAGG_S;
            sh[i].n_y = MOEH_SECAGG_SHARE_ELEMS;
            sh[i].y = out[i].y;
            sp[i] = &sh[i];
        }
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggReveal r = MOEH__SECAGG_REVEAL__INIT;
        r.session = sc[k].round;
        r.n_shares = n_out;
        r.shares = sp;
        env.type = MOEH__MSG_TYPE__SECAGG_REVEAL;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_REVEAL;
        env.secagg_reveal = &r;
        assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
    }
    tick(f, 10); /* every survivor revealed: the sum is unmasked and the phase closes */
}

static void test_secagg_dropout(void **state)
{
    fx_t *f = *state;
    fx_create(f, secagg_on);
    assert_int_equal(moeh_crypto_init(), 0);
    for (int k = 0; k < N_SITES; k++)
        hello(f, k);
    tick(f, 10);
    const moeh_wire_limits_t *lim = moeh_coord_core_limits(f->core);
    /* STATS, securely summed, everyone present */
    uint32_t *x[N_SITES];
    size_t n_norm;
    moeh_coord_core_norm(f->core, &n_norm);
    for (int k = 0; k < N_SITES; k++) {
        double st[3 * 16];
        assert_true(n_norm <= 16);
        site_stats(k, n_norm, st);
        x[k] = calloc(moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__STATS), sizeof(uint32_t));
        assert_non_null(x[k]);
        assert_int_equal(moeh_secsum_stats_put(x[k], st, n_norm), 0);
    }
    /* a clear StatsResult is refused under secure aggregation */
    send_stats(f, 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "travel masked"));
    play_secagg(f, MOEH__ROUND_TASK__STATS, 0, x, -1);
    for (int k = 0; k < N_SITES; k++)
        free(x[k]);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    const float *norm = moeh_coord_core_norm(f->core, &n_norm);
    double s0 = 0, s1 = 0, st[3 * 16];
    for (int k = 0; k < N_SITES; k++) {
        site_stats(k, n_norm, st);
        s0 += st[0], s1 += st[1];
    }
    assert_float_equal(norm[0], s1 / s0, 1e-5);
    /* TRAIN: site-3 drops out after the share exchange; the model moves by the weighted mean
     * of the two survivors' deltas */
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *w0 = malloc(p->n * sizeof(float));
    assert_non_null(w0);
    memcpy(w0, p->w, p->n * sizeof(float));
    for (int k = 0; k < N_SITES; k++) {
        const Moeh__RoundStart *rs = round_start(f, k, 1, MOEH__ROUND_TASK__TRAIN);
        x[k] = update_words(f, k, rs->config, (uint32_t)f->site[k].n_train,
                            MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS);
        assert_int_equal(moeh_secsum_train_put(x[k] + p->n + p->n_groups, 0.5, 10, 3), 0);
    }
    uint64_t v = moeh_coord_core_model_version(f->core);
    play_secagg(f, MOEH__ROUND_TASK__TRAIN, 1, x, 2);
    for (int k = 0; k < N_SITES; k++)
        free(x[k]);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    assert_int_equal(moeh_coord_core_model_version(f->core), v + 1);
    assert_weighted_mean(f, w0, 1u | 2u, 0);
    free(w0);
}

/* ---- the modules on their own ------------------------------------------------------------- */

static int all_alive(void *ctx, size_t site)
{
    const uint8_t *gone = ctx;
    return !gone[site];
}

/* The upload scheduler: first come first served within the slots, grants expire after the
 * timeout (and stay expired across a rejoin), a gone site is skipped, a take needs a grant. */
static void test_uploads_scheduler(void **state)
{
    (void)state;
    moeh_uploads_t *u = NULL;
    uint8_t gone[8] = {0};
    uint32_t in_use, most, expired;
    assert_int_equal(moeh_uploads_create(2, 100, 8, &u), 0);
    assert_int_equal(moeh_uploads_take(u, 3), -EACCES);
    moeh_uploads_ready(u, 5);
    moeh_uploads_ready(u, 1);
    moeh_uploads_ready(u, 3);
    gone[1] = 1;
    assert_int_equal(moeh_uploads_grant_next(u, 0, all_alive, gone), 5);
    assert_int_equal(moeh_uploads_grant_next(u, 10, all_alive, gone), 3);  /* 1 is gone */
    assert_int_equal(moeh_uploads_grant_next(u, 10, all_alive, gone), -1); /* slots full */
    assert_int_equal(moeh_uploads_take(u, 3), 0);
    assert_int_equal(moeh_uploads_state(u, 3), MOEH_UP_NONE);
    assert_int_equal(moeh_uploads_expire_next(u, 100), -1); /* 5 granted at 0: not yet */
    assert_int_equal(moeh_uploads_expire_next(u, 101), 5);
    assert_int_equal(moeh_uploads_expire_next(u, 101), -1);
    assert_int_equal(moeh_uploads_state(u, 5), MOEH_UP_EXPIRED);
    assert_int_equal(moeh_uploads_take(u, 5), -EACCES);
    assert_int_equal(moeh_uploads_rejoin(u, 5), 0);
    assert_int_equal(moeh_uploads_state(u, 5), MOEH_UP_EXPIRED);
    moeh_uploads_counts(u, &in_use, &most, &expired);
    assert_int_equal(in_use, 0);
    assert_int_equal(most, 2);
    assert_int_equal(expired, 1);
    gone[1] = 0;
    assert_int_equal(moeh_uploads_grant_next(u, 200, all_alive, gone), 1);
    assert_int_equal(moeh_uploads_rejoin(u, 1), 1); /* its grant went to the old connection */
    assert_int_equal(moeh_uploads_state(u, 1), MOEH_UP_NONE);
    moeh_uploads_reset(u);
    moeh_uploads_counts(u, &in_use, &most, &expired);
    assert_int_equal(in_use + most + expired, 0);
    assert_int_equal(moeh_uploads_state(u, 5), MOEH_UP_NONE);
    moeh_uploads_destroy(&u);
    moeh_uploads_destroy(&u); /* NULL-safe */
    assert_null(u);
    /* without slots every take succeeds */
    assert_int_equal(moeh_uploads_create(0, 100, 8, &u), 0);
    assert_int_equal(moeh_uploads_take(u, 2), 0);
    moeh_uploads_destroy(&u);
}

/* metrics.jsonl: a number JSON cannot hold is null, and every line parses. */
static void test_report_nan_is_null(void **state)
{
    fx_t *f = *state;
    memset(f, 0, sizeof *f);
    assert_int_equal(moeh_test_tmpdir(f->dir, sizeof f->dir, "report"), 0);
    moeh_coord_report_t *r = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_coord_report_open(f->dir, 0, 3, NULL, &r, &err), 0);
    moeh_coord_report_site_update(r, 2, "site-\"1\"", NAN, 10, 3);
    const double auroc[3] = {0.5, INFINITY, 0.75};
    moeh_coord_report_site_eval(r, 2, "site-1", 0.125, auroc);
    moeh_coord_report_destroy(&r);
    assert_null(r);
    char path[400], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        if (n == 0) {
            assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "site")), "site-\"1\"");
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "train_loss")));
            assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "n_samples")), 10);
        } else {
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "auroc_los7")));
            assert_float_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "auroc_readmit30")),
                               0.75, 0);
        }
        cJSON_Delete(j);
        n++;
    }
    fclose(fp);
    assert_int_equal(n, 2);
}

/* ---- the DP ledger ------------------------------------------------------------------------ */

static void test_dp_ledger_resume(void **state)
{
    fx_t *f = *state;
    memset(f, 0, sizeof *f);
    assert_int_equal(moeh_test_tmpdir(f->dir, sizeof f->dir, "ledger"), 0);
    moeh_dp_ledger_t a, b;
    moeh_err_t err = {0};
    assert_int_equal(moeh_dp_ledger_init(&a, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_start(&a, &err), 0); /* a new DP run writes an empty one */
    moeh_dp_ledger_release(&a, 0);
    moeh_dp_ledger_release(&a, 1);
    assert_int_equal(moeh_dp_ledger_write(&a, 5, &err), 0);
    double eps, eps_coord;
    moeh_dp_ledger_epsilons(&a, 5, &eps, &eps_coord);
    assert_true(eps > 0 && isfinite(eps));
    assert_true(eps_coord > eps); /* the coordinator saw 5 plain updates with less noise */
    /* resumed with the same settings: the releases so far come back */
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), 0);
    assert_int_equal(b.rounds, 2);
    assert_int_equal(b.rounds_secagg, 1);
    assert_int_equal(moeh_dp_ledger_coord_releases(&b, 0), 5);
    double eps_b, eps_coord_b;
    moeh_dp_ledger_epsilons(&b, 0, &eps_b, &eps_coord_b);
    assert_true(eps_b == eps && eps_coord_b == eps_coord);
    /* other noise, other calibration count, or no DP at all: refused */
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.9f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "resume with the same values"));
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 4, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_int_equal(moeh_dp_ledger_init(&b, 0.0f, 0.0f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "used differential privacy"));
    /* a new run without DP removes the old ledger; resuming it with DP is then refused */
    assert_int_equal(moeh_dp_ledger_start(&b, &err), 0);
    assert_int_equal(moeh_dp_ledger_init(&b, 0.5f, 0.7f, 1e-5f, 3, f->dir), 0);
    assert_int_equal(moeh_dp_ledger_load(&b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is missing"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_admission, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_plain_round, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_retry_and_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_closes_with_quorum, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_rejoin_mid_phase, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_upload_grants, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_upload_slot_released_by_site_gone, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_bye_reason_stays_one_json_line, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_secagg_dropout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dp_ledger_resume, fx_setup, fx_teardown),
        cmocka_unit_test(test_uploads_scheduler),
        cmocka_unit_test_setup_teardown(test_report_nan_is_null, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
