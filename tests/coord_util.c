/* coord_util.c - the fixture shared by the in-process coordinator tests (coord_util.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "coord_util.h"

/* ---- the fake surroundings -------------------------------------------------------------- */

static int fake_send(void *ctx, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env,
                     const moeh_frame_t *frames, size_t n_frames)
{
    fx_t *f = ctx;
    (void)frames;
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
    s->n_frames = n_frames;
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
const Moeh__Envelope *last_to(const fx_t *f, const char *rid, Moeh__MsgType type)
{
    for (size_t i = f->n_sent; i-- > 0;)
        if (!strcmp(f->sent[i].rid, rid) && f->sent[i].env->type == type) return f->sent[i].env;
    return NULL;
}

size_t last_frames_to(const fx_t *f, const char *rid, Moeh__MsgType type)
{
    for (size_t i = f->n_sent; i-- > 0;)
        if (!strcmp(f->sent[i].rid, rid) && f->sent[i].env->type == type)
            return f->sent[i].n_frames;
    fail_msg("nothing of type %d was sent to %s", (int)type, rid);
    return 0;
}

size_t count_sent(const fx_t *f, Moeh__MsgType type)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n_sent; i++)
        n += f->sent[i].env->type == type;
    return n;
}

/* The message of the last Error sent to rid, asserting there is one. */
const char *last_error(const fx_t *f, const char *rid, int want_code)
{
    const Moeh__Envelope *e = last_to(f, rid, MOEH__MSG_TYPE__ERROR);
    assert_non_null(e);
    assert_int_equal(e->error->code, want_code);
    return e->error->message;
}

void fx_create(fx_t *f, void (*tweak)(moeh_coord_cfg_t *))
{
    FILE *table = f->table;
    memset(f, 0, sizeof *f);
    f->table = table;
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
    c->secagg = 0;           /* plain unless a test's tweak asks for secure aggregation */
    c->per_site_metrics = 1; /* the per-site rows are part of what these tests check */
    c->validate = 0;         /* TRAIN then EVAL, as these tests count; test_coordinator_select turns
                              * the VALIDATE phase on */
    c->model.d_emb = 8;
    c->model.d_hidden = 8;
    c->model.note_buckets = 64;
    c->batch_size = 4;
    c->eval_bins = 10;
    c->warmup_rounds = 0;
    c->data_shape = "4,3,6,8";
    c->out_dir = f->dir;
    c->secagg_allow_2 = 1;   /* the fixture's quorum is 2 of 3 (not a deployment) */
    c->per_site_metrics = 1; /* the plain-mode tests read the per-site rows */
    c->print_table = table != NULL;
    if (tweak) tweak(c);
    f->registry[0] = "site-1", f->registry[1] = "site-2", f->registry[2] = "site-3";
    f->n_registry = 3;
    f->io = (moeh_coord_io_t){.send = fake_send,
                              .registered = fake_registered,
                              .round_saved = fake_round_saved,
                              .table = table,
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
        f->site[k].n_val = 40;
    }
}

int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    return 0;
}

int fx_teardown(void **state)
{
    fx_t *f = *state;
    clear_sent(f);
    moeh_coord_core_destroy(&f->core);
    if (f->table) fclose(f->table);
    for (int k = 0; k < N_SITES; k++)
        moeh_secagg_client_destroy(&f->site[k].sa);
    if (f->dir[0]) moeh_test_rmtree(f->dir);
    free(f);
    return 0;
}

static int deliver_whole(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
                         const moeh_frame_t *frames, size_t n_frames);

/* A granted upload as a site sends it (moeh_stream.h): chunks, the first window at once, the
 * rest as the core's UploadCredits to rid allow; stops where no credit comes (an upload the
 * core refused). The first non-zero code of a chunk, else 0. */
static int deliver_stream(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
                          const moeh_frame_t *frames, size_t n_frames, uint64_t stream)
{
    moeh_stream_tx_t tx = {0};
    assert_int_equal(moeh_stream_tx_begin(&tx, stream, env, frames, n_frames), 0);
    int rc = 0;
    while (rc == 0 && moeh_stream_tx_active(&tx)) {
        Moeh__Envelope ce;
        Moeh__UploadChunk ch;
        if (!moeh_stream_tx_next(&tx, &ce, &ch)) {
            const Moeh__Envelope *cr = last_to(f, rid, MOEH__MSG_TYPE__UPLOAD_CREDIT);
            if (!cr || cr->upload_credit->up_to <= tx.credit) break; /* refused: no credit */
            assert_int_equal(
                moeh_stream_tx_credit(&tx, cr->upload_credit->stream, cr->upload_credit->up_to), 0);
            assert_true(moeh_stream_tx_next(&tx, &ce, &ch));
        }
        rc = deliver_whole(f, rid, peer, &ce, NULL, 0);
    }
    moeh_stream_tx_clear(&tx);
    return rc;
}

/* Packs env (with frames) like a site would, decodes it like run.c does, and hands it to the
 * core as coming from routing id rid and authenticated peer; with granted uploads
 * (cfg.upload_slots) an Update or a TRAIN SecaggMasked goes in chunks, as an agent sends
 * it. The decoder's code, or the core's. */
int deliver_from(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
                 const moeh_frame_t *frames, size_t n_frames)
{
    if (f->cfg.upload_slots && !f->whole_uploads && env->type == MOEH__MSG_TYPE__UPDATE)
        return deliver_stream(f, rid, peer, env, frames, n_frames, env->update->round + 1);
    if (f->cfg.upload_slots && !f->whole_uploads && env->type == MOEH__MSG_TYPE__SECAGG_MASKED &&
        env->secagg_masked->task == MOEH__ROUND_TASK__TRAIN)
        return deliver_stream(f, rid, peer, env, frames, n_frames,
                              (uint64_t)env->secagg_masked->round + 1);
    return deliver_whole(f, rid, peer, env, frames, n_frames);
}

static int deliver_whole(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
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

int deliver(fx_t *f, int k, Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames)
{
    return deliver_from(f, f->site[k].rid, f->site[k].id, env, frames, n_frames);
}

void upload_ready(fx_t *f, int k, uint32_t round, uint64_t version)
{
    Moeh__Envelope env;
    Moeh__UploadReady r = MOEH__UPLOAD_READY__INIT;
    r.round = round;
    r.model_version = version;
    moeh_env_upload_ready(&env, &r);
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
}

void tick(fx_t *f, int64_t advance_ms)
{
    f->now += advance_ms;
    moeh_err_t err = {0};
    int rc = moeh_coord_core_tick(f->core, f->now, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
}

Moeh__Envelope hello_env(Moeh__Hello *h, const fx_t *f, int k)
{
    Moeh__Envelope env;
    moeh__hello__init(h);
    h->site_id = (char *)f->site[k].id;
    h->n_train = f->site[k].n_train;
    h->n_eval = 40;
    h->n_val = f->site[k].n_val;
    h->n_features = 4;
    h->n_vars = 3;
    h->n_steps = 6;
    h->img_size = 8;
    moeh_env_hello(&env, h);
    return env;
}

void hello(fx_t *f, int k)
{
    Moeh__Hello h;
    Moeh__Envelope env = hello_env(&h, f, k);
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
    assert_non_null(last_to(f, f->site[k].rid, MOEH__MSG_TYPE__WELCOME));
}

void heartbeat(fx_t *f, int k)
{
    Moeh__Envelope env;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    moeh_env_heartbeat(&env, &hb);
    assert_int_equal(deliver(f, k, &env, NULL, 0), 0);
}

/* The RoundStart site k received last, asserting its round and task. */
const Moeh__RoundStart *round_start(const fx_t *f, int k, uint32_t round, Moeh__RoundTask task)
{
    const Moeh__Envelope *e = last_to(f, f->site[k].rid, MOEH__MSG_TYPE__ROUND_START);
    assert_non_null(e);
    assert_int_equal(e->round_start->round, round);
    assert_int_equal(e->round_start->task, task);
    return e->round_start;
}

/* Site k's normalisation statistics: count, sum, sum of squares per feature. */
void site_stats(int k, size_t n_norm, double *st)
{
    for (size_t i = 0; i < n_norm; i++) {
        double n = 10.0 + (double)k, mean = (double)i + 0.5 * k, var = 1.0 + 0.25 * (double)i;
        st[3 * i] = n;
        st[3 * i + 1] = n * mean;
        st[3 * i + 2] = n * (var + mean * mean);
    }
}

void send_stats(fx_t *f, int k)
{
    size_t n_norm;
    moeh_coord_core_norm(f->core, &n_norm);
    double *st = calloc(3 * n_norm, sizeof(double));
    assert_non_null(st);
    site_stats(k, n_norm, st);
    Moeh__Envelope env;
    Moeh__StatsResult r = MOEH__STATS_RESULT__INIT;
    r.round = 0;
    r.n_rows = 10;
    moeh_env_stats_result(&env, &r);
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
uint32_t *update_words(const fx_t *f, int k, const Moeh__RoundConfig *rc, uint32_t w, size_t extra)
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

Moeh__Envelope update_env(Moeh__Update *u, uint32_t round, uint64_t version)
{
    Moeh__Envelope env;
    moeh__update__init(u);
    u->round = round;
    u->model_version = version;
    u->train_loss = 0.5;
    u->n_samples = 10;
    u->steps = 3;
    moeh_env_update(&env, u);
    return env;
}

/* Sends site k's update (weight w) for round/version, encoded for the TRAIN RoundStart rs;
 * the core's code. */
int send_update_for(fx_t *f, int k, const Moeh__RoundStart *rs, uint32_t round, uint64_t version,
                    uint32_t w)
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
int send_update(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t w)
{
    return send_update_for(f, k, round_start(f, k, round, MOEH__ROUND_TASK__TRAIN), round, version,
                           w);
}

/* Joins every site and completes the STATS phase; TRAIN of round 1 is open afterwards. */
void join_all(fx_t *f)
{
    for (int k = 0; k < N_SITES; k++)
        hello(f, k);
    tick(f, 10);
}

void join_and_stats(fx_t *f)
{
    join_all(f);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_STATS);
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, 0, MOEH__ROUND_TASK__STATS);
        send_stats(f, k);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(moeh_coord_core_round(f->core), 1);
}

uint64_t fx_start(fx_t *f, void (*tweak)(moeh_coord_cfg_t *))
{
    fx_create(f, tweak);
    join_and_stats(f);
    return moeh_coord_core_model_version(f->core);
}

float *fx_model_copy(const fx_t *f)
{
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    float *w = malloc(p->n * sizeof(float));
    assert_non_null(w);
    memcpy(w, p->w, p->n * sizeof(float));
    return w;
}

cJSON *fx_metrics(const fx_t *f)
{
    char path[400], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    cJSON *all = cJSON_CreateArray();
    assert_non_null(all);
    while (fgets(line, sizeof line, fp)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) fail_msg("%s: a line that is not JSON: %s", path, line);
        cJSON_AddItemToArray(all, j);
    }
    fclose(fp);
    return all;
}

double jnum(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    return cJSON_IsNumber(v) ? cJSON_GetNumberValue(v) : NAN;
}

const char *jstr(const cJSON *j, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(j, key));
}

/* The expected model after sites (mask) sent site_delta() with weights n_train: the
 * hand-computed weighted mean of their deltas added to w0. */
void assert_weighted_mean(const fx_t *f, const float *w0, unsigned mask, int unweighted)
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

void deliver_eval_splits(fx_t *f, int k, uint32_t round, uint64_t version, const fx_split_t *test,
                         const fx_split_t *val)
{
    const uint32_t T = MOEH_N_TASKS, nb = f->cfg.eval_bins;
    float gate[MOEH_N_COMBOS * 16] = {0};
    const fx_split_t *sp[2] = {test, val};
    uint32_t combo_rows[2][MOEH_N_COMBOS] = {{0}};
    Moeh__EvalResult r[2] = {MOEH__EVAL_RESULT__INIT, MOEH__EVAL_RESULT__INIT};
    const moeh_wire_limits_t *lim = moeh_coord_core_limits(f->core);
    assert_true(lim->n_experts <= 16);
    static const char *const names[4] = {"hist", "gate", "val_hist", "val_gate"};
    moeh_frame_t fr[4];
    for (int i = 0; i < 1 + (val != NULL); i++) {
        combo_rows[i][0] = sp[i]->rows;
        r[i].loss_sum = sp[i]->loss * sp[i]->rows * T;
        r[i].n_labels = (uint64_t)sp[i]->rows * T;
        r[i].n_tasks = T;
        r[i].n_bins = nb;
        r[i].n_combo_rows = MOEH_N_COMBOS;
        r[i].combo_rows = combo_rows[i];
        fr[2 * i] = (moeh_frame_t){.name = names[2 * i],
                                   .dtype = MOEH__DTYPE__U32,
                                   .data = (void *)sp[i]->hist,
                                   .count = (uint64_t)MOEH_N_SLICES * T * 2 * nb};
        fr[2 * i + 1] = (moeh_frame_t){.name = names[2 * i + 1],
                                       .dtype = MOEH__DTYPE__F32,
                                       .data = gate,
                                       .count = (uint64_t)MOEH_N_COMBOS * lim->n_experts};
    }
    r[0].round = round;
    r[0].model_version = version;
    if (val) r[0].validation = &r[1];
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    moeh_env_eval_result(&env, &r[0]);
    assert_int_equal(deliver(f, k, &env, fr, val ? 4 : 2), 0);
}

void deliver_eval(fx_t *f, int k, uint32_t round, uint64_t version, const uint32_t *hist,
                  uint32_t rows, double loss)
{
    const fx_split_t test = {hist, rows, loss};
    deliver_eval_splits(f, k, round, version, &test, NULL);
}

uint32_t *fx_separated_hist(const fx_t *f, uint32_t rows)
{
    const uint32_t T = MOEH_N_TASKS, nb = f->cfg.eval_bins;
    size_t per_slice = (size_t)T * 2 * nb;
    uint32_t *hist = calloc(MOEH_N_SLICES * per_slice, sizeof(uint32_t));
    assert_non_null(hist);
    for (size_t sl = 0; sl < 2; sl++) /* all rows, and combination E */
        for (uint32_t t = 0; t < T; t++) {
            uint32_t *neg = hist + sl * per_slice + (size_t)t * 2 * nb;
            neg[2] = rows / 2;
            neg[nb + 7] = rows - rows / 2;
        }
    return hist;
}

void send_eval(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t rows)
{
    uint32_t *hist = fx_separated_hist(f, rows);
    deliver_eval(f, k, round, version, hist, rows, 0.25);
    free(hist);
}

void send_validate(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t test_rows,
                   uint32_t val_rows)
{
    uint32_t *th = fx_separated_hist(f, test_rows), *vh = fx_separated_hist(f, val_rows);
    const fx_split_t test = {th, test_rows, 0.25}, val = {vh, val_rows, 0.25};
    deliver_eval_splits(f, k, round, version, &test, &val);
    free(th);
    free(vh);
}
