/* agent.c - the site agent's loop (see agent.h and docs/architecture.md).
 *
 * States: connecting (Hello sent, waiting for Welcome) -> admitted (answers RoundStart with an
 * Update or an EvalResult, heartbeats) -> done (Bye). Lost contact -> new socket after a backoff
 * that doubles up to backoff_max_ms, and a new Hello. What leaves the site: the weighted
 * parameter delta, per-group sample counts, the mean training loss, score histograms and
 * sums for the normalisation statistics. With DP (RoundConfig.dp_clip > 0, fed/moeh_dp.h) the
 * delta is clipped to an L2 norm and noised before it is encoded, weights are 0/1, and the
 * training loss is not sent.
 *
 * When a RoundStart (TRAIN, STATS or EVALUATE) carries secagg parameters (docs/secagg.md), the
 * agent computes the phase's vector of words (proto/moeh_secsum.h: update + loss, sample and step
 * counts; statistics; histograms + evaluation sums) and runs its side of secure aggregation
 * instead of sending it in clear: fresh round keys (SecaggAdvertise) -> on SecaggKeys,
 * encrypted shares (SecaggShares) -> on the forwarded shares, the masked vector
 * (SecaggMasked) -> on SecaggUnmask, its shares (SecaggReveal). The moeh_secagg_client_t holds
 * the session's secrets and is destroyed at the next RoundStart, on any failure, and at exit.
 * The site's own evaluation metrics are logged here, since the coordinator then has none.
 *
 * Granted uploads (RoundStart.grant_uploads, TRAIN only): the ready update (the Update, or the
 * masked vector once the shares arrived) is held, announced with UploadReady and sent only on
 * the matching UploadGrant; the main loop keeps heartbeating meanwhile. The wait is dropped
 * at the next RoundStart, on a (re)welcome, when the socket is replaced and when the secure
 * session ends, so a grant of an old round, session or coordinator is never answered. */
#include "moeh_agent.h"

#include "moeh_dp.h"
#include "moeh_keys.h"
#include "moeh_quant.h"
#include "moeh_hist.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_trainer.h"
#include "moeh_wire.h"

#include <math.h>
#include <sodium.h>
#include <string.h>
#include <zmq.h>

typedef struct {
    const moeh_agent_cfg_t *cfg;
    void *zctx, *sock, *mon;
    unsigned mon_seq;
    moeh_keypair_t *kp;
    char server_pub[MOEH_Z85_KEY_LEN + 1];
    /* what this site holds (read once at start to introduce itself) */
    size_t n_static, n_vars, n_steps, img_size, n_train, n_test, combos[8];
    moeh_trainer_t *trainer;      /* built on Welcome, from the coordinator's model spec */
    uint64_t spec_hash, cfg_hash; /* of the layout, of the model spec's JSON */
    float *global, *delta, *norm;
    uint32_t *upd;  /* update words: n_params + n_groups, then the TRAIN values (secsum.h) */
    uint32_t *hist; /* evaluation histograms, then the EVALUATE values (secsum.h) */
    uint32_t *svec; /* the STATS vector (secsum.h) */
    float *gate_sum;
    moeh_wire_limits_t lim;
    int welcomed, ever_welcomed, done;
    uint32_t hb_ms, eval_bins;
    int64_t last_rx, last_hb, hello_at, start;
    uint32_t backoff_ms;
    uint64_t hb_seq, seed_salt;
    moeh_err_t fatal;
    int fatal_rc;
    /* secure aggregation of the current phase (sa == NULL: none in progress) */
    moeh_secagg_client_t *sa;
    uint64_t sa_session, sa_version;
    uint32_t sa_round, sa_n;
    Moeh__RoundTask sa_task;
    uint32_t *sa_vec; /* the phase's vector (upd, hist or svec), masked in place */
    size_t sa_len;
    int sa_grant; /* the session's RoundStart asked for granted uploads */
    /* granted uploads: the TRAIN update held until its grant (up_wait) */
    int up_wait;
    uint32_t up_round, up_steps;
    uint64_t up_version, up_session, up_samples;
    double up_loss;
} agent_t;

void moeh_agent_cfg_defaults(moeh_agent_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->connect = "tcp://127.0.0.1:7400";
    c->silence_timeout_ms = 10000;
    c->backoff_max_ms = 30000;
    c->give_up_ms = 0;
}

/* Records the first fatal error (printf-style message); the loop stops at the next turn. */
static void set_fatal(agent_t *a, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_fatal(agent_t *a, int rc, const char *fmt, ...)
{
    if (a->fatal_rc) return;
    a->fatal_rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->fatal.msg, sizeof a->fatal.msg, fmt, ap);
    va_end(ap);
}

static void close_socket(agent_t *a)
{
    if (a->sock) {
        zmq_socket_monitor(a->sock, NULL, 0);
        zmq_close(a->sock);
        a->sock = NULL;
    }
    if (a->mon) {
        zmq_close(a->mon);
        a->mon = NULL;
    }
    a->welcomed = 0;
    a->up_wait = 0; /* a grant can only come over the connection that announced the update */
}

static int send_hello(agent_t *a)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Hello h = MOEH__HELLO__INIT;
    Moeh__ComboCount cc[7], *ccp[7];
    size_t nc = 0;
    for (uint32_t c = 1; c <= 7; c++) {
        if (!a->combos[c]) continue;
        moeh__combo_count__init(&cc[nc]);
        cc[nc].combo = c;
        cc[nc].count = a->combos[c];
        ccp[nc] = &cc[nc];
        nc++;
    }
    h.site_id = (char *)a->cfg->site_id;
    h.n_train = a->n_train;
    h.n_eval = a->n_test;
    h.n_features = (uint32_t)a->n_static;
    h.n_vars = (uint32_t)a->n_vars;
    h.n_steps = (uint32_t)a->n_steps;
    h.img_size = (uint32_t)a->img_size;
    h.n_combos = nc;
    h.combos = ccp;
    env.type = MOEH__MSG_TYPE__HELLO;
    env.body_case = MOEH__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    a->hello_at = moeh_now_ms();
    return moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
}

static int open_socket(agent_t *a, moeh_err_t *err)
{
    char mon_ep[64];
    int linger = 0, sndtimeo = 5000, ivl = 100, ivl_max = 5000;
    int64_t maxmsg = MOEH_WIRE_MAX_PART_BYTES; /* per part: tensors travel in parts */
    if (!(a->sock = zmq_socket(a->zctx, ZMQ_DEALER)))
        return moeh_errf(err, -zmq_errno(), "cannot create a socket");
    if (zmq_setsockopt(a->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(a->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(a->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) ||
        zmq_setsockopt(a->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) ||
        zmq_setsockopt(a->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        return moeh_errf(err, -zmq_errno(), "socket options: %s", zmq_strerror(zmq_errno()));
    if (!a->cfg->insecure) {
        int rc = moeh_curve_client(a->sock, a->kp, a->server_pub);
        if (rc) return moeh_errf(err, rc, "CURVE set-up failed: %s", moeh_strerror(rc));
        /* watch the handshake, so that a refused key is reported instead of retried forever */
        snprintf(mon_ep, sizeof mon_ep, "inproc://agent-monitor-%u", a->mon_seq++);
        if (zmq_socket_monitor(a->sock, mon_ep,
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                   ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0 ||
            !(a->mon = zmq_socket(a->zctx, ZMQ_PAIR)) ||
            zmq_setsockopt(a->mon, ZMQ_LINGER, &linger, sizeof linger) ||
            zmq_connect(a->mon, mon_ep) != 0)
            return moeh_errf(err, -zmq_errno(), "socket monitor: %s", zmq_strerror(zmq_errno()));
    }
    if (zmq_connect(a->sock, a->cfg->connect) != 0)
        return moeh_errf(err, -zmq_errno(), "cannot connect to %s: %s", a->cfg->connect,
                         zmq_strerror(zmq_errno()));
    a->last_rx = moeh_now_ms();
    int rc = send_hello(a);
    if (rc && rc != -EAGAIN) return moeh_errf(err, rc, "cannot send hello: %s", moeh_strerror(rc));
    return 0;
}

static void drain_monitor(agent_t *a)
{
    while (a->mon) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, a->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (char *)zmq_msg_data(&ev) + 2, 4);
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            zmq_msg_recv(&addr, a->mon, 0);
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            set_fatal(a, -EACCES,
                      "the coordinator refused this site's key (%s): add the site's public key "
                      "to the coordinator's registry",
                      a->cfg->key_path);
        else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            MOEH_WARN("CURVE handshake failed (protocol error %u); is --server-key the "
                      "coordinator's public key?",
                      value);
    }
}

/* Keeps the session alive during long local work: heartbeats only (messages wait). */
static void service(agent_t *a)
{
    int64_t now = moeh_now_ms();
    if (a->welcomed && a->sock && now - a->last_hb >= (int64_t)a->hb_ms) {
        a->last_hb = now;
        moeh_wire_send_simple(a->sock, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, ++a->hb_seq);
    }
}

static void free_model(agent_t *a)
{
    moeh_trainer_destroy(&a->trainer);
    free(a->global);
    free(a->delta);
    free(a->norm);
    free(a->upd);
    free(a->hist);
    free(a->svec);
    free(a->gate_sum);
    a->global = a->delta = a->norm = a->gate_sum = NULL;
    a->upd = a->hist = a->svec = NULL;
}

static void sa_end(agent_t *a, const char *why, const char *detail);

/* Builds the trainer for the coordinator's model spec, already parsed and validated into *mc
 * (the dataset is opened again: the trainer owns it). 0 or a negative code with a message in
 * a->fatal. */
static int build_model(agent_t *a, const Moeh__Welcome *w, const moeh_moe_cfg_t *mc)
{
    const Moeh__ModelSpec *ms = w->model;
    moeh_err_t err = {0};
    moeh_dataset_t *ds = NULL;
    /* a secure session's vector and a held update live in the buffers freed here: a new model
     * ends them (a plain re-welcome with the same model keeps them, so a reconnected survivor
     * can still reveal its shares) */
    sa_end(a, NULL, NULL);
    a->up_wait = 0;
    free_model(a);
    a->cfg_hash = 0;
    int rc = moeh_dataset_open(a->cfg->dataset_dir, false, &ds, &err);
    if (!rc) rc = moeh_trainer_create(&ds, mc, &a->trainer, &err);
    moeh_dataset_free(&ds);
    if (rc) {
        set_fatal(a, rc, "cannot build the model on this site's data: %s", err.msg);
        return rc;
    }
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    a->spec_hash = moeh_params_spec_hash(p);
    if (a->spec_hash != ms->spec_hash || p->n != ms->n_params || p->n_groups != ms->n_groups ||
        moeh_moe_n_experts(moeh_trainer_model(a->trainer)) != ms->n_experts ||
        moeh_trainer_n_norm(a->trainer) != ms->n_norm || mc->n_tasks != ms->n_tasks) {
        set_fatal(a, -EPROTO, "%s",
                  "the coordinator's model layout differs from this agent's "
                  "(different moeh versions?)");
        return -EPROTO;
    }
    /* room for the secure-aggregation vectors (proto/moeh_secsum.h) of each phase */
    moeh_wire_limits_t lim = {.n_params = p->n,
                              .n_groups = (uint32_t)p->n_groups,
                              .n_tasks = ms->n_tasks,
                              .eval_bins = w->eval_bins,
                              .n_norm = ms->n_norm,
                              .n_experts = ms->n_experts};
    a->global = malloc(p->n * sizeof(float));
    a->delta = malloc(p->n * sizeof(float));
    a->norm = malloc(2 * (size_t)ms->n_norm * sizeof(float) + 1);
    a->upd = malloc(moeh_secsum_len(&lim, MOEH__ROUND_TASK__TRAIN) * sizeof(uint32_t));
    a->hist = malloc(moeh_secsum_len(&lim, MOEH__ROUND_TASK__EVALUATE) * sizeof(uint32_t));
    a->svec = malloc(moeh_secsum_len(&lim, MOEH__ROUND_TASK__STATS) * sizeof(uint32_t) + 1);
    a->gate_sum = malloc((size_t)MOEH_N_COMBOS * ms->n_experts * sizeof(float));
    if (!a->global || !a->delta || !a->norm || !a->upd || !a->hist || !a->svec || !a->gate_sum) {
        set_fatal(a, -ENOMEM, "%s", "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static void handle_welcome(agent_t *a, const Moeh__Welcome *w)
{
    const Moeh__ModelSpec *ms = w->model;
    if (strcmp(w->site_id, a->cfg->site_id) != 0) {
        set_fatal(a, -EPROTO, "the coordinator welcomed us as '%s', not '%s'", w->site_id,
                  a->cfg->site_id);
        return;
    }
    /* the wire checked sizes and types; the model library checks the spec itself */
    moeh_moe_cfg_t mc;
    moeh_err_t err = {0};
    if (moeh_moe_cfg_from_json(ms->config_json, &mc, &err) != 0 ||
        moeh_moe_cfg_validate(&mc, &err) != 0) {
        set_fatal(a, -EPROTO, "the coordinator's model spec is refused: %s", err.msg);
        return;
    }
    uint64_t cfg_hash = moeh_moe_cfg_json_hash(ms->config_json);
    if (!a->trainer || a->cfg_hash != cfg_hash || a->spec_hash != ms->spec_hash ||
        a->eval_bins != w->eval_bins) {
        a->eval_bins = w->eval_bins;
        if (build_model(a, w, &mc) != 0) return;
        a->cfg_hash = cfg_hash;
    }
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    a->lim = (moeh_wire_limits_t){.n_params = p->n,
                                  .n_groups = (uint32_t)p->n_groups,
                                  .n_tasks = ms->n_tasks,
                                  .eval_bins = w->eval_bins,
                                  .n_norm = ms->n_norm,
                                  .n_experts = ms->n_experts};
    a->hb_ms = w->heartbeat_ms;
    a->up_wait = 0; /* (re)admitted: the coordinator knows of no update of ours */
    a->welcomed = a->ever_welcomed = 1;
    a->backoff_ms = 0;
    MOEH_INFO("admitted as %s: %zu parameters in %zu groups", w->site_id, p->n, p->n_groups);
}

static void service_cb(void *ctx)
{
    service(ctx);
}

/* Loads the global parameters and normalisation of a TRAIN or EVALUATE round. */
static moeh_params_t *load_round(agent_t *a, const moeh_msg_t *m)
{
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    size_t nn = moeh_trainer_n_norm(a->trainer);
    memcpy(p->w, m->frames[0].data, p->n * sizeof(float));
    memcpy(a->norm, m->frames[1].data, 2 * nn * sizeof(float));
    moeh_trainer_set_norm(a->trainer, a->norm, a->norm + nn);
    return p;
}

static void sa_begin(agent_t *a, const Moeh__RoundStart *rs, uint32_t *vec, size_t len);
static void sa_send_masked(agent_t *a);

static void send_stats(agent_t *a, const Moeh__RoundStart *rs)
{
    size_t nn = moeh_trainer_n_norm(a->trainer);
    double *st = malloc(3 * nn * sizeof(double) + 1);
    if (!st) {
        set_fatal(a, -ENOMEM, "%s", "out of memory");
        return;
    }
    moeh_trainer_local_stats(a->trainer, st);
    if (rs->secagg) { /* summed securely: the coordinator learns only the federation's sums */
        if (moeh_secsum_stats_put(a->svec, st, nn) != 0) {
            MOEH_ERROR("statistics: a sum exceeds 2^53 in magnitude, the fixed-point range of "
                       "secure aggregation (docs/secagg.md); not sent");
            moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "statistics out of range");
        } else {
            sa_begin(a, rs, a->svec, moeh_secsum_len(&a->lim, MOEH__ROUND_TASK__STATS));
        }
        free(st);
        return;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult r = MOEH__STATS_RESULT__INIT;
    r.round = rs->round;
    r.n_rows = moeh_trainer_rows(a->trainer, MOEH_SPLIT_TRAIN);
    env.type = MOEH__MSG_TYPE__STATS_RESULT;
    env.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    env.stats_result = &r;
    moeh_frame_t f = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = 3 * nn};
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc) MOEH_WARN("could not send the statistics: %s", moeh_strerror(rc));
    free(st);
}

/* Sends a->upd in clear as this round's Update (no secure aggregation). */
static void send_update(agent_t *a, uint32_t round, uint64_t version, double loss, uint64_t samples,
                        uint32_t steps)
{
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = round;
    u.model_version = version;
    u.train_loss = loss;
    u.n_samples = samples;
    u.steps = steps;
    env.type = MOEH__MSG_TYPE__UPDATE;
    env.body_case = MOEH__ENVELOPE__BODY_UPDATE;
    env.update = &u;
    moeh_frame_t f = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = a->upd, .count = p->n + p->n_groups};
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc) MOEH_WARN("round %u: could not send the update: %s", round, moeh_strerror(rc));
}

/* Ends the secure-aggregation session (wipes its secrets); reports why if `why` is set. */
static void sa_end(agent_t *a, const char *why, const char *detail)
{
    if (why) {
        char msg[MOEH_ERRMSG_MAX + 96];
        snprintf(msg, sizeof msg, "secure aggregation: %s%s%s", why, detail ? ": " : "",
                 detail ? detail : "");
        MOEH_WARN("round %u: %s", a->sa_round, msg);
        if (a->sock) moeh_wire_send_error(a->sock, NULL, 0, -EBADMSG, msg);
    }
    moeh_secagg_client_destroy(&a->sa);
    a->sa_session = 0;
    a->sa_vec = NULL, a->sa_len = 0;
    if (a->up_session) a->up_wait = 0, a->up_session = 0;
}

/* Announces the held TRAIN update (session: its secure-aggregation session, 0 if plain) and
 * waits for the grant in the main loop. */
static void upload_ready(agent_t *a, uint32_t round, uint64_t version, uint64_t session)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__UploadReady r = MOEH__UPLOAD_READY__INIT;
    r.round = round;
    r.model_version = version;
    r.session = session;
    env.type = MOEH__MSG_TYPE__UPLOAD_READY;
    env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    env.upload_ready = &r;
    a->up_wait = 1;
    a->up_round = round, a->up_version = version, a->up_session = session;
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
    if (rc) MOEH_WARN("round %u: could not announce the update: %s", round, moeh_strerror(rc));
}

/* With RoundStart.secagg, once the phase's vector (len words at vec, kept until the session
 * ends) is ready: fresh round keys, advertised to the coordinator. */
static void sa_begin(agent_t *a, const Moeh__RoundStart *rs, uint32_t *vec, size_t len)
{
    const Moeh__SecaggParams *sp = rs->secagg;
    moeh_err_t err = {0};
    int rc = moeh_crypto_init();
    moeh_secagg_cfg_t cfg = {.round = sp->session,
                             .n = sp->n,
                             .t = sp->t,
                             .k = sp->k,
                             .graph_seed = sp->graph_seed,
                             .len = len};
    a->sa_round = rs->round;
    a->sa_task = rs->task;
    a->sa_grant = rs->grant_uploads;
    if (rc || (rc = moeh_secagg_client_create(&cfg, sp->id, &a->sa, &err)) != 0) {
        sa_end(a, "cannot start", rc == -EIO ? "libsodium failed to initialise" : err.msg);
        return;
    }
    a->sa_session = sp->session;
    a->sa_version = rs->model_version;
    a->sa_n = sp->n;
    a->sa_vec = vec, a->sa_len = len;
    moeh_secagg_pubkeys_t pk;
    moeh_secagg_client_pubkeys(a->sa, &pk);
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggAdvertise ad = MOEH__SECAGG_ADVERTISE__INIT;
    ad.session = sp->session;
    ad.c_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, pk.c_pk};
    ad.s_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, pk.s_pk};
    env.type = MOEH__MSG_TYPE__SECAGG_ADVERTISE;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE;
    env.secagg_advertise = &ad;
    if ((rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0)) != 0)
        sa_end(a, "cannot send the round keys", moeh_strerror(rc));
}

/* SecaggKeys (U1): encrypts this site's shares for every neighbour in U1 and sends them. */
static void sa_on_keys(agent_t *a, const Moeh__SecaggKeys *k)
{
    if (!a->sa || k->session != a->sa_session) return; /* a stale session: ignored */
    uint32_t n = a->sa_n;
    moeh_err_t err = {0};
    moeh_secagg_pubkeys_t *keys = calloc(n, sizeof *keys);
    uint8_t *present = calloc(n, 1), *sent = calloc(n, 1);
    uint8_t *cts = malloc((size_t)n * MOEH_SECAGG_SHARE_CT_BYTES);
    Moeh__SecaggCipher *cs = calloc(n, sizeof *cs);
    Moeh__SecaggCipher **cp = calloc(n, sizeof *cp);
    const char *why = NULL;
    int rc = -ENOMEM;
    if (!keys || !present || !sent || !cts || !cs || !cp) {
        why = "out of memory";
        goto out;
    }
    for (size_t i = 0; i < k->n_keys; i++) {
        uint32_t id = k->keys[i]->id;
        if (id >= n) {
            why = "the key list names an id outside the session";
            goto out;
        }
        memcpy(keys[id].c_pk, k->keys[i]->c_pk.data, MOEH_SECAGG_KEY_BYTES);
        memcpy(keys[id].s_pk, k->keys[i]->s_pk.data, MOEH_SECAGG_KEY_BYTES);
        present[id] = 1;
    }
    if ((rc = moeh_secagg_client_share_keys(a->sa, keys, present, cts, sent, &err)) != 0) {
        why = "refused the key list";
        goto out;
    }
    size_t m = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (!sent[j]) continue;
        moeh__secagg_cipher__init(&cs[m]);
        cs[m].peer = j;
        cs[m].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES,
                                         cts + (size_t)j * MOEH_SECAGG_SHARE_CT_BYTES};
        cp[m] = &cs[m];
        m++;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
    sh.session = a->sa_session;
    sh.n_ciphers = m;
    sh.ciphers = cp;
    env.type = MOEH__MSG_TYPE__SECAGG_SHARES;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES;
    env.secagg_shares = &sh;
    if ((rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0)) != 0) {
        why = "cannot send the shares";
        snprintf(err.msg, sizeof err.msg, "%s", moeh_strerror(rc));
    }
out:
    if (why) sa_end(a, why, err.msg[0] ? err.msg : NULL);
    free(keys);
    free(present);
    free(sent);
    free(cts);
    free(cs);
    free(cp);
}

/* The shares addressed to this site and U2: masks the kept update and sends it. */
static void sa_on_shares(agent_t *a, const Moeh__SecaggShares *sh)
{
    if (!a->sa || sh->session != a->sa_session) return;
    uint32_t n = a->sa_n;
    moeh_err_t err = {0};
    uint8_t *u2 = calloc(n, 1);
    const char *why = NULL;
    if (!u2) {
        why = "out of memory";
        goto out;
    }
    for (size_t i = 0; i < sh->n_ciphers; i++)
        if (moeh_secagg_client_receive_share(a->sa, sh->ciphers[i]->peer, sh->ciphers[i]->ct.data,
                                             &err) != 0) {
            why = "refused a forwarded share";
            goto out;
        }
    for (size_t i = 0; i < sh->n_u2; i++) {
        if (sh->u2[i] >= n) {
            why = "U2 names an id outside the session";
            goto out;
        }
        u2[sh->u2[i]] = 1;
    }
    if ((a->cfg->fault_kill_secagg_round && a->sa_task == MOEH__ROUND_TASK__TRAIN &&
         a->sa_round == a->cfg->fault_kill_secagg_round) ||
        (a->cfg->fault_kill_secagg_task && (uint32_t)a->sa_task == a->cfg->fault_kill_secagg_task &&
         a->sa_round == a->cfg->fault_kill_secagg_at)) {
        MOEH_WARN("fault injection: killing myself after sharing keys in round %u (task %d)",
                  a->sa_round, (int)a->sa_task);
        raise(SIGKILL);
    }
    if (moeh_secagg_client_mask(a->sa, a->sa_vec, a->sa_vec, u2, &err) != 0) {
        why = "cannot mask the vector";
        goto out;
    }
    if (a->sa_grant && a->sa_task == MOEH__ROUND_TASK__TRAIN) /* sent on the grant */
        upload_ready(a, a->sa_round, a->sa_version, a->sa_session);
    else
        sa_send_masked(a);
out:
    if (why) sa_end(a, why, err.msg[0] ? err.msg : NULL);
    free(u2);
}

/* Sends the masked vector of the session. */
static void sa_send_masked(agent_t *a)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggMasked sm = MOEH__SECAGG_MASKED__INIT;
    sm.session = a->sa_session;
    sm.round = a->sa_round;
    sm.model_version = a->sa_version;
    sm.task = a->sa_task;
    env.type = MOEH__MSG_TYPE__SECAGG_MASKED;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED;
    env.secagg_masked = &sm;
    moeh_frame_t f = {
        .name = "masked", .dtype = MOEH__DTYPE__U32, .data = a->sa_vec, .count = a->sa_len};
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc)
        MOEH_WARN("round %u: could not send the masked vector: %s", a->sa_round, moeh_strerror(rc));
}

/* SecaggUnmask: reveals this site's shares of the survivors' b and the dropped sites' s keys
 * (the library refuses a request naming one site in both lists, or changing its answer). */
static void sa_on_unmask(agent_t *a, const Moeh__SecaggUnmask *um)
{
    if (!a->sa || um->session != a->sa_session) return;
    uint32_t n = a->sa_n;
    moeh_err_t err = {0};
    size_t n_out = 0;
    moeh_secagg_reveal_t *out = calloc(n, sizeof *out);
    Moeh__SecaggShare *xs = calloc(n, sizeof *xs);
    Moeh__SecaggShare **xp = calloc(n, sizeof *xp);
    const char *why = NULL;
    if (!out || !xs || !xp) {
        why = "out of memory";
        goto done;
    }
    if (moeh_secagg_client_reveal(a->sa, um->survivors, um->n_survivors, um->dropped, um->n_dropped,
                                  out, &n_out, &err) != 0) {
        why = "refused the unmask request";
        goto done;
    }
    for (size_t i = 0; i < n_out; i++) { /* the library lists owners in increasing order */
        moeh__secagg_share__init(&xs[i]);
        xs[i].owner = out[i].owner;
        xs[i].kind = out[i].kind == MOEH_SECAGG_REVEAL_B ? MOEH__SECAGG_KIND__SECAGG_B
                                                         : MOEH__SECAGG_KIND__SECAGG_S;
        xs[i].n_y = MOEH_SECAGG_SHARE_ELEMS;
        xs[i].y = out[i].y;
        xp[i] = &xs[i];
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggReveal rv = MOEH__SECAGG_REVEAL__INIT;
    rv.session = a->sa_session;
    rv.n_shares = n_out;
    rv.shares = xp;
    env.type = MOEH__MSG_TYPE__SECAGG_REVEAL;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_REVEAL;
    env.secagg_reveal = &rv;
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
    if (rc)
        MOEH_WARN("round %u: could not send the unmask shares: %s", a->sa_round, moeh_strerror(rc));
done:
    if (why) sa_end(a, why, err.msg[0] ? err.msg : NULL);
    if (out) sodium_memzero(out, n * sizeof *out);
    free(out);
    free(xs);
    free(xp);
}

static void train(agent_t *a, const Moeh__RoundStart *rs, const moeh_msg_t *m)
{
    const Moeh__RoundConfig *rc = rs->config;
    if (rc->dp_clip > 0 && rc->dp_sites > rs->n_participants) {
        /* the noise is calibrated for more sites than take part: the sum could not reach it */
        MOEH_ERROR("round %u: DP noise calibrated for %u sites, but only %u take part; no update "
                   "is sent",
                   rs->round, rc->dp_sites, rs->n_participants);
        moeh_wire_send_error(a->sock, NULL, 0, -EINVAL,
                             "DP noise calibrated for more sites than take part");
        return;
    }
    moeh_params_t *p = load_round(a, m);
    memcpy(a->global, p->w, p->n * sizeof(float));
    moeh_adamw_reset(p);
    moeh_train_cfg_t tc = {.epochs = rc->local_epochs,
                           .batch_size = rc->batch_size,
                           .adamw = moeh_adamw_defaults(),
                           .phase = rc->warmup ? MOEH_PHASE_WARMUP : MOEH_PHASE_JOINT,
                           .prox_mu = rc->prox_mu,
                           .seed = rc->seed ^ a->seed_salt,
                           .service = service_cb,
                           .service_ctx = a};
    tc.adamw.lr = rc->lr;
    tc.adamw.weight_decay = rc->weight_decay;
    tc.adamw.clip = rc->clip;
    moeh_train_result_t res;
    moeh_err_t err = {0};
    int e = moeh_trainer_train(a->trainer, &tc, &res, &err);
    for (size_t i = 0; !e && i < p->n; i++) {
        a->delta[i] = p->w[i] - a->global[i];
        if (!isfinite(a->delta[i]))
            e = moeh_errf(&err, -ERANGE, "non-finite parameters after training");
    }
    if (e) {
        MOEH_ERROR("round %u: local training failed (%s); no update is sent", rs->round, err.msg);
        moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "local training failed");
        return;
    }
    /* A group this site did not train is no update (weight decay may still have moved it). */
    for (size_t g = 0; g < p->n_groups; g++)
        if (res.group_samples[g] == 0)
            memset(a->delta + p->group_off[g], 0, p->group_len[g] * sizeof(float));
    /* DP-FedAvg (fed/moeh_dp.h): clip the whole delta to L2 norm dp_clip, add this site's share of
     * the noise to every coordinate (also of groups it did not train, so that every group's sum
     * carries the full noise), and send it with weight 1: one site moves the sum by at most
     * dp_clip whatever its size. The pre-clip norm is logged here (never sent) to help choose
     * the clip. */
    int dp = rc->dp_clip > 0, unweighted = dp || rc->unweighted;
    double norm, sd = 0;
    if (dp) {
        norm = moeh_dp_clip(a->delta, p->n, rc->dp_clip);
        sd = moeh_dp_site_std(rc->dp_clip, rc->dp_noise, rc->dp_sites);
        if (sd > 0) {
            if (moeh_crypto_init() != 0) {
                MOEH_ERROR("round %u: libsodium failed to initialise; no update is sent",
                           rs->round);
                moeh_wire_send_error(a->sock, NULL, 0, -EIO, "cannot draw the DP noise");
                return;
            }
            moeh_dp_add_noise(a->delta, p->n, sd);
        }
    } else {
        double ss = 0;
        for (size_t i = 0; i < p->n; i++)
            ss += (double)a->delta[i] * (double)a->delta[i];
        norm = sqrt(ss);
    }
    /* Each group's delta is weighted by the samples that trained it (or by 1 per site,
     * unweighted); weight 0 leaves the group out of the average. */
    for (size_t g = 0; g < p->n_groups; g++) {
        uint64_t w = res.group_samples[g];
        if (w > a->n_train) /* a group is trained at most once per row per epoch */
            w = a->n_train;
        if (unweighted) w = w > 0;
        /* under DP a group's words carry the noise even where the site did not train it */
        moeh_quant_encode(a->upd + p->group_off[g], a->delta + p->group_off[g], p->group_len[g],
                          rc->delta_clip, dp ? 1.0 : (double)w, rc->quant_scale);
        a->upd[p->n + g] = (uint32_t)w;
    }
    double loss = res.steps ? res.mean_loss / 3.0 : 0.0; /* mean BCE per task and step */
    MOEH_INFO("round %u%s: trained %u steps on %llu samples, mean loss %.4f, update L2 norm %.4g",
              rs->round, rc->warmup ? " (warm-up)" : "", res.steps, (unsigned long long)res.samples,
              loss, norm);
    if (dp)
        MOEH_INFO("round %u: DP: clipped to %g (%s), noise std %.4g per coordinate "
                  "(multiplier %g over %u sites)",
                  rs->round, (double)rc->dp_clip, norm > rc->dp_clip ? "scaled down" : "unchanged",
                  sd, (double)rc->dp_noise, rc->dp_sites);
    /* under DP the training loss (a statistic of the training data outside the accounting)
     * stays here */
    double sent_loss = dp ? 0.0 : loss;
    if (rs->secagg) { /* the header's values are summed with the update, never in clear */
        if (moeh_secsum_train_put(a->upd + p->n + p->n_groups, sent_loss, res.samples, res.steps)) {
            MOEH_ERROR("round %u: train loss x samples is out of the fixed-point range; no "
                       "update is sent",
                       rs->round);
            moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "train loss out of range");
            return;
        }
        sa_begin(a, rs, a->upd, moeh_secsum_len(&a->lim, MOEH__ROUND_TASK__TRAIN));
        return;
    }
    if (rs->grant_uploads) { /* held in a->upd until the coordinator grants the upload */
        a->up_loss = sent_loss, a->up_samples = res.samples, a->up_steps = res.steps;
        upload_ready(a, rs->round, rs->model_version, 0);
        return;
    }
    send_update(a, rs->round, rs->model_version, sent_loss, res.samples, res.steps);
}

/* UploadGrant: sends the held update it names; a grant for anything else is ignored (the
 * coordinator's grant then expires). */
static void on_grant(agent_t *a, const Moeh__UploadGrant *g)
{
    if (!a->up_wait || g->round != a->up_round || g->model_version != a->up_version ||
        g->session != a->up_session || (g->session && (!a->sa || a->sa_session != g->session))) {
        MOEH_WARN("ignored an upload grant for round %u (session %llu): no such update waits",
                  g->round, (unsigned long long)g->session);
        return;
    }
    if (a->cfg->fault_kill_upload_round && g->round == a->cfg->fault_kill_upload_round) {
        MOEH_WARN("fault injection: killing myself on the upload grant of round %u", g->round);
        raise(SIGKILL);
    }
    a->up_wait = 0;
    if (g->session)
        sa_send_masked(a);
    else
        send_update(a, a->up_round, a->up_version, a->up_loss, a->up_samples, a->up_steps);
}

/* Logs this site's own test loss and AUROC per task (all rows): with secure aggregation the
 * coordinator only learns the federation's sums, so this log is where a site's own figures are
 * (aggregates of the site's rows, never a single prediction). */
static void log_own_metrics(agent_t *a, uint32_t round, const moeh_eval_sums_t *es)
{
    static const char *names3[] = {"mortality", "los7", "readmit30"};
    const uint32_t T = a->lim.n_tasks, nb = a->eval_bins;
    uint64_t *neg = malloc(2 * (size_t)nb * sizeof(uint64_t));
    char line[512];
    int at = snprintf(line, sizeof line, "round %u: this site's test loss %.4f", round,
                      es->n_labels ? es->loss_sum / (double)es->n_labels : NAN);
    for (uint32_t t = 0; neg && t < T && at > 0 && (size_t)at < sizeof line; t++) {
        const uint32_t *h = a->hist + (size_t)t * 2 * nb; /* slice 0: all rows */
        for (size_t b = 0; b < 2 * (size_t)nb; b++)
            neg[b] = h[b];
        char name[16];
        snprintf(name, sizeof name, "%s", T == 3 ? names3[t] : "task");
        at += snprintf(line + at, sizeof line - (size_t)at, ", AUROC %s %.4f", name,
                       moeh_hist_auroc(neg, neg + nb, nb));
    }
    free(neg);
    MOEH_INFO("%s (kept at this site)", line);
}

static void evaluate(agent_t *a, const Moeh__RoundStart *rs, const moeh_msg_t *m)
{
    load_round(a, m);
    moeh_eval_sums_t es = {.hist = a->hist, .gate_sum = a->gate_sum};
    moeh_err_t err = {0};
    if (moeh_trainer_evaluate(a->trainer, MOEH_SPLIT_TEST, a->eval_bins, &es, service_cb, a,
                              &err) != 0) {
        MOEH_ERROR("round %u: evaluation failed: %s", rs->round, err.msg);
        moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "evaluation failed");
        return;
    }
    log_own_metrics(a, rs->round, &es);
    if (rs->secagg) { /* summed securely: the coordinator learns only the federation's sums */
        if (moeh_secsum_eval_put(a->hist + moeh_secsum_eval_hist_words(&a->lim), &a->lim,
                                 a->gate_sum, es.combo_rows, es.loss_sum, es.n_labels) != 0) {
            MOEH_ERROR("round %u: evaluation sums out of the fixed-point range; not sent",
                       rs->round);
            moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "evaluation out of range");
            return;
        }
        sa_begin(a, rs, a->hist, moeh_secsum_len(&a->lim, MOEH__ROUND_TASK__EVALUATE));
        return;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__EvalResult r = MOEH__EVAL_RESULT__INIT;
    r.round = rs->round;
    r.model_version = rs->model_version;
    r.loss_sum = es.loss_sum;
    r.n_labels = es.n_labels;
    r.n_tasks = a->lim.n_tasks;
    r.n_bins = a->eval_bins;
    r.n_combo_rows = MOEH_N_COMBOS;
    r.combo_rows = es.combo_rows;
    env.type = MOEH__MSG_TYPE__EVAL_RESULT;
    env.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &r;
    moeh_frame_t f[2] = {{.name = "hist",
                          .dtype = MOEH__DTYPE__U32,
                          .data = a->hist,
                          .count = (uint64_t)MOEH_EVAL_SLICES * a->lim.n_tasks * 2 * a->eval_bins},
                         {.name = "gate",
                          .dtype = MOEH__DTYPE__F32,
                          .data = a->gate_sum,
                          .count = (uint64_t)MOEH_N_COMBOS * a->lim.n_experts}};
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, f, 2);
    if (rc) MOEH_WARN("round %u: could not send the evaluation: %s", rs->round, moeh_strerror(rc));
}

static void handle_messages(agent_t *a)
{
    for (int budget = 0; budget < 64 && a->sock && !a->done && !a->fatal_rc; budget++) {
        moeh_msg_t m;
        moeh_err_t err = {0};
        int rc = moeh_wire_recv(a->sock, 0, &a->lim, &m, &err);
        if (rc == -EAGAIN) {
            moeh_msg_clear(&m);
            return;
        }
        a->last_rx = moeh_now_ms();
        if (rc) {
            /* say so: a refused RoundStart would otherwise only show as a missed deadline */
            MOEH_WARN("dropped a message from the coordinator: %s", err.msg);
            char what[MOEH_ERRMSG_MAX + 32];
            snprintf(what, sizeof what, "message refused: %s", err.msg);
            moeh_wire_send_error(a->sock, NULL, 0, rc, what);
            moeh_msg_clear(&m);
            continue;
        }
        switch (m.env->type) {
        case MOEH__MSG_TYPE__WELCOME:
            handle_welcome(a, m.env->welcome);
            break;
        case MOEH__MSG_TYPE__ROUND_START:
            if (!a->welcomed) break;
            if (a->cfg->fault_kill_round && m.env->round_start->round == a->cfg->fault_kill_round &&
                m.env->round_start->task == MOEH__ROUND_TASK__TRAIN) {
                MOEH_WARN("fault injection: killing myself in round %u", a->cfg->fault_kill_round);
                raise(SIGKILL);
            }
            sa_end(a, NULL, NULL); /* a new phase or attempt: the old session is over */
            a->up_wait = 0;        /* and an update still waiting for its grant is stale */
            if (m.env->round_start->task == MOEH__ROUND_TASK__TRAIN)
                train(a, m.env->round_start, &m);
            else if (m.env->round_start->task == MOEH__ROUND_TASK__EVALUATE)
                evaluate(a, m.env->round_start, &m);
            else
                send_stats(a, m.env->round_start);
            break;
        case MOEH__MSG_TYPE__SECAGG_KEYS:
            sa_on_keys(a, m.env->secagg_keys);
            break;
        case MOEH__MSG_TYPE__SECAGG_SHARES:
            sa_on_shares(a, m.env->secagg_shares);
            break;
        case MOEH__MSG_TYPE__SECAGG_UNMASK:
            sa_on_unmask(a, m.env->secagg_unmask);
            break;
        case MOEH__MSG_TYPE__UPLOAD_GRANT:
            on_grant(a, m.env->upload_grant);
            break;
        case MOEH__MSG_TYPE__HEARTBEAT:
            break;
        case MOEH__MSG_TYPE__ERROR: {
            const Moeh__Error *e = m.env->error;
            if (e->code == -EPERM) { /* it does not know us (e.g. it restarted): join again */
                MOEH_INFO("the coordinator does not know this site (did it restart?); joining "
                          "again");
                a->welcomed = 0;
                a->up_wait = 0;
                send_hello(a);
                break;
            }
            MOEH_WARN("coordinator says: %s", e->message);
            if (e->code == -EACCES || (!a->welcomed && e->code == -EINVAL)) {
                set_fatal(a, e->code, "the coordinator refused this site: %s", e->message);
            }
            break;
        }
        case MOEH__MSG_TYPE__BYE:
            MOEH_INFO("coordinator says bye: %s", m.env->bye->reason);
            a->done = 1;
            break;
        default:
            MOEH_WARN("ignored an unexpected %s message", moeh_msg_type_name(m.env->type));
        }
        moeh_msg_clear(&m);
    }
}

int moeh_agent_run(const moeh_agent_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
{
    agent_t a;
    memset(&a, 0, sizeof a);
    a.cfg = cfg;
    int rc;
    if (!cfg->site_id || !moeh_site_id_valid(cfg->site_id)) {
        rc = moeh_errf(err, -EINVAL, "--site-id is required: 1-64 of [A-Za-z0-9._-]");
        goto out;
    }
    if (!cfg->dataset_dir) {
        rc = moeh_errf(err, -EINVAL, "--dataset is required");
        goto out;
    }
    {
        moeh_dataset_t *ds = NULL; /* read once to introduce the site; checksums verified */
        if ((rc = moeh_dataset_open(cfg->dataset_dir, true, &ds, err))) goto out;
        a.n_static = ds->f_static, a.n_vars = ds->f_ts, a.n_steps = ds->t;
        a.img_size = ds->img_size;
        for (size_t i = 0; i < ds->n; i++) {
            a.n_train += ds->split[i] == MOEH_SPLIT_TRAIN;
            a.n_test += ds->split[i] == MOEH_SPLIT_TEST;
        }
        moeh_dataset_combo_counts(ds, a.combos);
        moeh_dataset_free(&ds);
    }
    for (const char *s = cfg->site_id; *s; s++) /* FNV-1a: per-site shuffling */
        a.seed_salt = (a.seed_salt ^ (uint8_t)*s) * 0x100000001b3ULL;
    if (!cfg->insecure) {
        if (!cfg->key_path || !cfg->server_key) {
            rc = moeh_errf(err, -EINVAL,
                           "--key (this site's key) and --server-key (the "
                           "coordinator's public key) are required, or --insecure");
            goto out;
        }
        if ((rc = moeh_crypto_init()) || (rc = moeh_keypair_read(cfg->key_path, &a.kp, err)) ||
            (rc = moeh_pubkey_read(cfg->server_key, a.server_pub, err)))
            goto out;
    }
    if (!(a.zctx = zmq_ctx_new())) {
        rc = moeh_errf(err, -ENOMEM, "cannot create a ZeroMQ context");
        goto out;
    }
    MOEH_INFO("site %s: %zu train and %zu test admissions (EHR only %zu, with notes %zu, with "
              "images %zu, all three %zu); connecting to %s",
              cfg->site_id, a.n_train, a.n_test, a.combos[1], a.combos[3], a.combos[5], a.combos[7],
              cfg->connect);
    a.start = moeh_now_ms();
    int64_t reconnect_at = 0;
    if ((rc = open_socket(&a, err))) goto out;
    while (!*stop && !a.done && !a.fatal_rc) {
        if (!a.sock) { /* backing off before a new connection */
            if (moeh_now_ms() >= reconnect_at) {
                if ((rc = open_socket(&a, err))) goto out;
            } else {
                zmq_poll(NULL, 0, 50);
                continue;
            }
        }
        zmq_pollitem_t items[2] = {{.socket = a.sock, .events = ZMQ_POLLIN},
                                   {.socket = a.mon, .events = ZMQ_POLLIN}};
        if (zmq_poll(items, a.mon ? 2 : 1, 50) < 0 && zmq_errno() != EINTR) {
            rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
            goto out;
        }
        drain_monitor(&a);
        handle_messages(&a);
        service(&a);
        int64_t now = moeh_now_ms();
        if (cfg->give_up_ms && !a.ever_welcomed && now - a.start > (int64_t)cfg->give_up_ms) {
            rc = moeh_errf(err, -ETIMEDOUT, "not admitted by %s within %.1f s", cfg->connect,
                           cfg->give_up_ms / 1000.0);
            goto out;
        }
        int64_t quiet_since = a.welcomed ? a.last_rx : a.hello_at;
        if (!a.done && !a.fatal_rc && now - quiet_since > (int64_t)cfg->silence_timeout_ms) {
            a.backoff_ms = a.backoff_ms ? a.backoff_ms * 2 : 500;
            if (a.backoff_ms > cfg->backoff_max_ms) a.backoff_ms = cfg->backoff_max_ms;
            MOEH_WARN("no word from the coordinator for %.1f s; reconnecting in %.1f s",
                      (now - quiet_since) / 1000.0, a.backoff_ms / 1000.0);
            close_socket(&a);
            reconnect_at = now + a.backoff_ms;
        }
    }
    if (a.fatal_rc) {
        rc = moeh_errf(err, a.fatal_rc, "%s", a.fatal.msg);
    } else if (*stop && !a.done) {
        if (a.sock) {
            moeh_wire_send_simple(a.sock, NULL, 0, MOEH__MSG_TYPE__BYE, "site agent stopped", 0);
            int linger = 1000; /* let the bye go out, at most 1 s */
            zmq_setsockopt(a.sock, ZMQ_LINGER, &linger, sizeof linger);
        }
        rc = moeh_errf(err, -EINTR, "stopped by a signal");
    } else {
        rc = 0;
    }
out:
    close_socket(&a);
    if (a.zctx) zmq_ctx_term(a.zctx);
    moeh_keypair_destroy(&a.kp);
    moeh_secagg_client_destroy(&a.sa);
    free_model(&a);
    return rc;
}
