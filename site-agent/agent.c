/* agent.c - the site agent's loop (see agent.h and docs/architecture.md).
 *
 * States: connecting (Hello sent, waiting for Welcome) -> admitted (answers RoundStart with an
 * Update or an EvalResult, heartbeats) -> done (Bye). Lost contact -> new socket after a backoff
 * that doubles up to backoff_max_ms, and a new Hello. What leaves the site: the weighted
 * parameter delta, per-group sample counts, the mean training loss, and score histograms. */
#include "agent.h"

#include "keys.h"
#include "layers.h"
#include "local_data.h"
#include "moeh_hist.h"
#include "moeh_mlp.h"
#include "quant.h"
#include "wire.h"

#include <math.h>
#include <string.h>
#include <zmq.h>

#define EVAL_BATCH 256u

typedef struct {
    const moeh_agent_cfg_t *cfg;
    void *zctx, *sock, *mon;
    unsigned mon_seq;
    moeh_keypair_t *kp;
    char server_pub[MOEH_Z85_KEY_LEN + 1];
    moeh_local_data_t data;
    moeh_mlp_t *model;
    moeh_params_t *p;
    moeh_mlp_cfg_t mcfg;
    uint64_t spec_hash;
    float *global, *delta;
    uint32_t *upd; /* the update words: n_params + n_groups */
    uint32_t *hist;
    float *bx, *by;
    uint8_t *bm;
    size_t *order;
    moeh_wire_limits_t lim;
    int welcomed, ever_welcomed, done;
    uint32_t hb_ms, eval_bins;
    int64_t last_rx, last_hb, hello_at, start;
    uint32_t backoff_ms;
    uint64_t hb_seq, seed_salt;
    moeh_err_t fatal;
    int fatal_rc;
} agent_t;

void moeh_agent_cfg_defaults(moeh_agent_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->connect = "tcp://127.0.0.1:7400";
    c->silence_timeout_ms = 10000;
    c->backoff_max_ms = 30000;
    c->give_up_ms = 0;
}

static void set_fatal(agent_t *a, int rc, const char *fmt, const char *arg)
{
    if (a->fatal_rc)
        return;
    a->fatal_rc = rc;
    snprintf(a->fatal.msg, sizeof a->fatal.msg, fmt, arg);
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
}

static int send_hello(agent_t *a)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Hello h = MOEH__HELLO__INIT;
    Moeh__ComboCount cc = MOEH__COMBO_COUNT__INIT, *ccp = &cc;
    h.site_id = (char *)a->cfg->site_id;
    h.n_train = a->data.n_train;
    h.n_eval = a->data.n_test;
    h.n_features = (uint32_t)a->data.n_features;
    cc.combo = 1; /* EHR only: the tabular model sees one modality */
    cc.count = a->data.n;
    h.n_combos = 1;
    h.combos = &ccp;
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
    int64_t maxmsg = (int64_t)MOEH_MAX_PARAMS * 4 + MOEH_MAX_HEADER_BYTES;
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
        if (rc)
            return moeh_errf(err, rc, "CURVE set-up failed: %s", moeh_strerror(rc));
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
    if (rc && rc != -EAGAIN)
        return moeh_errf(err, rc, "cannot send hello: %s", moeh_strerror(rc));
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

static int ensure_model(agent_t *a, const Moeh__ModelSpec *ms, size_t batch)
{
    if (a->model && a->mcfg.n_in == ms->n_in && a->mcfg.n_hidden == ms->n_hidden &&
        a->mcfg.n_tasks == ms->n_tasks && a->mcfg.max_batch >= batch)
        return 0;
    moeh_mlp_destroy(&a->model);
    free(a->global);
    free(a->delta);
    free(a->upd);
    free(a->bx);
    free(a->by);
    free(a->bm);
    a->upd = NULL;
    a->global = a->delta = a->bx = a->by = NULL;
    a->bm = NULL;
    a->mcfg = (moeh_mlp_cfg_t){.n_in = ms->n_in, .n_hidden = ms->n_hidden,
                               .n_tasks = ms->n_tasks, .max_batch = batch, .seed = ms->seed};
    int rc = moeh_mlp_create(&a->mcfg, &a->model);
    if (rc)
        return rc;
    a->p = moeh_mlp_params(a->model);
    a->spec_hash = moeh_params_spec_hash(a->p);
    a->global = malloc(a->p->n * sizeof(float));
    a->delta = malloc(a->p->n * sizeof(float));
    a->upd = malloc((a->p->n + a->p->n_groups) * sizeof(uint32_t));
    a->bx = malloc(batch * ms->n_in * sizeof(float));
    a->by = malloc(batch * ms->n_tasks * sizeof(float));
    a->bm = malloc(batch * ms->n_tasks);
    if (!a->global || !a->delta || !a->upd || !a->bx || !a->by || !a->bm)
        return -ENOMEM;
    return 0;
}

static void handle_welcome(agent_t *a, const Moeh__Welcome *w)
{
    const Moeh__ModelSpec *ms = w->model;
    if (strcmp(w->site_id, a->cfg->site_id) != 0 || strcmp(ms->kind, "mlp") != 0) {
        set_fatal(a, -EPROTO, "the coordinator welcomed us with another site id or a model kind "
                              "this agent does not know (%s)",
                  ms->kind);
        return;
    }
    if (ms->n_in != a->data.n_features || ms->n_tasks != a->data.n_tasks) {
        set_fatal(a, -EINVAL, "the federation's model does not fit this site's dataset %s",
                  a->cfg->dataset_dir);
        return;
    }
    size_t batch = a->model ? a->mcfg.max_batch : EVAL_BATCH;
    int rc = ensure_model(a, ms, batch);
    if (rc) {
        set_fatal(a, rc, "cannot create the model: %s", moeh_strerror(rc));
        return;
    }
    if (a->spec_hash != ms->spec_hash || a->p->n != ms->n_params ||
        a->p->n_groups != ms->n_groups) {
        set_fatal(a, -EPROTO, "%s", "the coordinator's model layout differs from this agent's "
                                    "(different moeh versions?)");
        return;
    }
    free(a->hist);
    a->eval_bins = w->eval_bins;
    a->hist = calloc((size_t)ms->n_tasks * 2 * w->eval_bins, sizeof(uint32_t));
    if (!a->hist) {
        set_fatal(a, -ENOMEM, "%s", "out of memory");
        return;
    }
    a->lim = (moeh_wire_limits_t){.n_params = a->p->n, .n_groups = (uint32_t)a->p->n_groups,
                                  .n_tasks = ms->n_tasks, .eval_bins = w->eval_bins};
    a->hb_ms = w->heartbeat_ms;
    a->welcomed = a->ever_welcomed = 1;
    a->backoff_ms = 0;
    MOEH_INFO("admitted as %s: %zu parameters in %zu groups", w->site_id, a->p->n,
              a->p->n_groups);
}

static void gather(agent_t *a, const size_t *rows, size_t B)
{
    const moeh_local_data_t *d = &a->data;
    for (size_t b = 0; b < B; b++) {
        size_t r = rows[b];
        memcpy(a->bx + b * d->n_features, d->x + r * d->n_features, d->n_features * sizeof(float));
        memcpy(a->by + b * d->n_tasks, d->y + r * d->n_tasks, d->n_tasks * sizeof(float));
        memcpy(a->bm + b * d->n_tasks, d->mask + r * d->n_tasks, d->n_tasks);
    }
}

static void train(agent_t *a, const Moeh__RoundStart *rs, const moeh_iov_t *params)
{
    const Moeh__RoundConfig *rc = rs->config;
    moeh_params_t *p;
    Moeh__ModelSpec ms = {.n_in = a->mcfg.n_in, .n_hidden = a->mcfg.n_hidden,
                          .n_tasks = a->mcfg.n_tasks, .seed = a->mcfg.seed};
    size_t B = rc->batch_size;
    int err = ensure_model(a, &ms, B > EVAL_BATCH ? B : EVAL_BATCH);
    if (err) {
        set_fatal(a, err, "cannot allocate the training workspace: %s", moeh_strerror(err));
        return;
    }
    p = a->p;
    memcpy(p->w, params->data, p->n * sizeof(float));
    memcpy(a->global, p->w, p->n * sizeof(float));
    moeh_adamw_reset(p);
    moeh_adamw_cfg_t ac = moeh_adamw_defaults();
    ac.lr = rc->lr;
    ac.weight_decay = rc->weight_decay;
    ac.clip = rc->clip;
    size_t n = 0;
    for (size_t i = 0; i < a->data.n; i++)
        if (a->data.split[i] == 0)
            a->order[n++] = i;
    moeh_rng_t rng;
    moeh_rng_seed(&rng, rc->seed ^ a->seed_salt);
    double loss_sum = 0;
    uint32_t steps = 0;
    for (uint32_t e = 0; e < rc->local_epochs && n > 0; e++) {
        for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
            size_t j = (size_t)(moeh_rng_u64(&rng) % (i + 1));
            size_t t = a->order[i];
            a->order[i] = a->order[j];
            a->order[j] = t;
        }
        for (size_t s = 0; s < n; s += B) {
            size_t bs = n - s < B ? n - s : B;
            gather(a, a->order + s, bs);
            double loss;
            moeh_params_zero_grad(p);
            moeh_mlp_loss_backward(a->model, a->bx, a->by, a->bm, bs, &loss);
            moeh_adamw_step(p, &ac, ++steps);
            loss_sum += loss;
            service(a);
        }
    }
    /* Every group of the tabular model is trained by every local sample: w_g = n. */
    for (size_t i = 0; i < p->n; i++) {
        a->delta[i] = p->w[i] - a->global[i];
        if (!isfinite(a->delta[i])) {
            MOEH_ERROR("round %u: local training diverged (non-finite parameters); no update "
                       "is sent", rs->round);
            moeh_wire_send_error(a->sock, NULL, 0, -ERANGE, "local training diverged");
            return;
        }
    }
    for (size_t g = 0; g < p->n_groups; g++) {
        moeh_quant_encode(a->upd + p->group_off[g], a->delta + p->group_off[g], p->group_len[g],
                          rc->delta_clip, (double)n, rc->quant_scale);
        a->upd[p->n + g] = (uint32_t)n;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = rs->round;
    u.model_version = rs->model_version;
    /* mean BCE per task and step, comparable with the evaluation loss per label */
    u.train_loss = steps ? loss_sum / steps / (double)a->data.n_tasks : 0.0;
    u.n_samples = n;
    u.steps = steps;
    env.type = MOEH__MSG_TYPE__UPDATE;
    env.body_case = MOEH__ENVELOPE__BODY_UPDATE;
    env.update = &u;
    moeh_frame_t f = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = a->upd,
                      .count = p->n + p->n_groups};
    int rc2 = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc2)
        MOEH_WARN("round %u: could not send the update: %s", rs->round, moeh_strerror(rc2));
    else
        MOEH_INFO("round %u: trained %u steps on %zu samples, mean loss %.4f", rs->round, steps,
                  n, u.train_loss);
}

static void evaluate(agent_t *a, const Moeh__RoundStart *rs, const moeh_iov_t *params)
{
    moeh_params_t *p = a->p;
    const moeh_local_data_t *d = &a->data;
    size_t T = d->n_tasks, nb = a->eval_bins;
    memcpy(p->w, params->data, p->n * sizeof(float));
    memset(a->hist, 0, T * 2 * nb * sizeof(uint32_t));
    double loss_sum = 0;
    uint64_t n_labels = 0;
    size_t n = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->split[i] == 2)
            a->order[n++] = i;
    for (size_t s = 0; s < n; s += a->mcfg.max_batch) {
        size_t bs = n - s < a->mcfg.max_batch ? n - s : a->mcfg.max_batch;
        gather(a, a->order + s, bs);
        const float *logits;
        moeh_mlp_forward(a->model, a->bx, bs, &logits);
        for (size_t b = 0; b < bs; b++)
            for (size_t t = 0; t < T; t++) {
                if (!a->bm[b * T + t])
                    continue;
                float z = logits[b * T + t];
                int y = a->by[b * T + t] > 0.5f;
                size_t bin = moeh_hist_bin(moeh_sigmoid(z), nb);
                a->hist[(t * 2 + (size_t)y) * nb + bin]++;
                /* BCE with logits, stable */
                loss_sum += fmax(z, 0.0) - z * y + log1p(exp(-fabs((double)z)));
                n_labels++;
            }
        service(a);
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__EvalResult r = MOEH__EVAL_RESULT__INIT;
    r.round = rs->round;
    r.model_version = rs->model_version;
    r.loss_sum = loss_sum;
    r.n_labels = n_labels;
    r.n_tasks = (uint32_t)T;
    r.n_bins = (uint32_t)nb;
    env.type = MOEH__MSG_TYPE__EVAL_RESULT;
    env.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &r;
    moeh_frame_t f = {.name = "hist", .dtype = MOEH__DTYPE__U32, .data = a->hist,
                      .count = T * 2 * nb};
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc)
        MOEH_WARN("round %u: could not send the evaluation: %s", rs->round, moeh_strerror(rc));
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
            MOEH_WARN("dropped a message from the coordinator: %s", err.msg);
            moeh_msg_clear(&m);
            continue;
        }
        switch (m.env->type) {
        case MOEH__MSG_TYPE__WELCOME:
            handle_welcome(a, m.env->welcome);
            break;
        case MOEH__MSG_TYPE__ROUND_START:
            if (!a->welcomed)
                break;
            if (a->cfg->fault_kill_round &&
                m.env->round_start->round == a->cfg->fault_kill_round &&
                m.env->round_start->task == MOEH__ROUND_TASK__TRAIN) {
                MOEH_WARN("fault injection: killing myself in round %u", a->cfg->fault_kill_round);
                raise(SIGKILL);
            }
            if (m.env->round_start->task == MOEH__ROUND_TASK__TRAIN)
                train(a, m.env->round_start, &m.frames[0]);
            else
                evaluate(a, m.env->round_start, &m.frames[0]);
            break;
        case MOEH__MSG_TYPE__HEARTBEAT:
            break;
        case MOEH__MSG_TYPE__ERROR: {
            const Moeh__Error *e = m.env->error;
            if (e->code == -EPERM) { /* it does not know us (e.g. it restarted): join again */
                MOEH_INFO("the coordinator does not know this site (did it restart?); joining "
                          "again");
                a->welcomed = 0;
                send_hello(a);
                break;
            }
            MOEH_WARN("coordinator says: %s", e->message);
            if (!a->welcomed && (e->code == -EACCES || e->code == -EINVAL)) {
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
    if ((rc = moeh_local_data_load(cfg->dataset_dir, &a.data, err)))
        goto out;
    if (!(a.order = malloc(a.data.n * sizeof(size_t)))) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (const char *s = cfg->site_id; *s; s++) /* FNV-1a: per-site shuffling */
        a.seed_salt = (a.seed_salt ^ (uint8_t)*s) * 0x100000001b3ULL;
    if (!cfg->insecure) {
        if (!cfg->key_path || !cfg->server_key) {
            rc = moeh_errf(err, -EINVAL, "--key (this site's key) and --server-key (the "
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
    MOEH_INFO("site %s: %zu samples (%zu train, %zu val, %zu test), %zu features; "
              "connecting to %s",
              cfg->site_id, a.data.n, a.data.n_train, a.data.n_val, a.data.n_test,
              a.data.n_features, cfg->connect);
    a.start = moeh_now_ms();
    int64_t reconnect_at = 0;
    if ((rc = open_socket(&a, err)))
        goto out;
    while (!*stop && !a.done && !a.fatal_rc) {
        if (!a.sock) { /* backing off before a new connection */
            if (moeh_now_ms() >= reconnect_at) {
                if ((rc = open_socket(&a, err)))
                    goto out;
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
            if (a.backoff_ms > cfg->backoff_max_ms)
                a.backoff_ms = cfg->backoff_max_ms;
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
    if (a.zctx)
        zmq_ctx_term(a.zctx);
    moeh_keypair_destroy(&a.kp);
    moeh_local_data_free(&a.data);
    moeh_mlp_destroy(&a.model);
    free(a.global);
    free(a.delta);
    free(a.upd);
    free(a.hist);
    free(a.bx);
    free(a.by);
    free(a.bm);
    free(a.order);
    return rc;
}
