/* agent.c - the site agent's loop (see moeh_agent.h, agent_int.h and docs/architecture.md).
 *
 * States: connecting (Hello sent, waiting for Welcome) -> admitted (answers RoundStart with an
 * Update or an EvalResult, heartbeats) -> done (Bye). Lost contact -> new socket after a backoff
 * that doubles up to backoff_max_ms, and a new Hello. What leaves the site: the weighted
 * parameter delta, per-group sample counts, the mean training loss (agent_update.c), score
 * histograms and sums for the normalisation statistics.
 *
 * When a RoundStart carries secagg parameters (docs/secagg.md), the phase's vector of words
 * (fed/moeh_secsum.h) goes through secure aggregation (agent_secagg.c) instead of being sent in
 * clear. The site's own evaluation metrics are logged here, since the coordinator then has
 * none. */
#include "agent_int.h"
#include "moeh_evalsum.h"

#include "moeh_hist.h"
#include "moeh_secsum.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

void moeh_agent_cfg_defaults(moeh_agent_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->connect = "tcp://127.0.0.1:7400";
    c->silence_timeout_ms = 10000;
    c->backoff_max_ms = 30000;
    c->give_up_ms = 0;
}

/* Records the first fatal error (printf-style message); the loop stops at the next turn. */
void moeh_agent_set_fatal(agent_t *a, int rc, const char *fmt, ...)
{
    if (a->fatal_rc) return;
    a->fatal_rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->fatal.msg, sizeof a->fatal.msg, fmt, ap);
    va_end(ap);
}

void moeh_agent_send_error(agent_t *a, int code, const char *message)
{
    if (!a->sock) return;
    int rc = moeh_wire_send_error(a->sock, NULL, 0, code, message);
    if (rc) MOEH_WARN("could not tell the coordinator '%s': %s", message, moeh_strerror(rc));
}

static void close_socket(agent_t *a)
{
    if (a->sock) {
        moeh_monitor_stop(&a->mon);
        MOEH_ASSERT(zmq_close(a->sock) == 0); /* fails only for a bad handle */
        a->sock = NULL;
    }
    a->welcomed = 0;
    a->hs_ok = 0;              /* a new socket shakes hands anew */
    moeh_agent_upload_drop(a); /* a grant can only come over the connection that announced it */
}

static int send_hello(agent_t *a)
{
    Moeh__Envelope env;
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
    h.n_val = a->n_val; /* bounds its VALIDATE replies (coordinator/robust.c) */
    h.n_features = (uint32_t)a->n_static;
    h.n_vars = (uint32_t)a->n_vars;
    h.n_steps = (uint32_t)a->n_steps;
    h.img_size = (uint32_t)a->img_size;
    h.note_dim = (uint32_t)a->note_dim, h.img_dim = (uint32_t)a->img_dim; /* vectors */
    h.n_combos = nc;
    h.combos = ccp;
    moeh_env_hello(&env, &h);
    a->hello_at = moeh_now_ms();
    return moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
}

static int open_socket(agent_t *a, moeh_err_t *err)
{
    int rc, linger = 0, sndtimeo = 5000, ivl = 100, ivl_max = 5000;
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
        if ((rc = moeh_curve_client(a->sock, a->kp, a->server_pub)))
            return moeh_errf(err, rc, "CURVE set-up failed: %s", moeh_strerror(rc));
        /* watch the handshake, so that a refused key is reported instead of retried forever */
        if ((rc = moeh_monitor_start(a->zctx, a->sock,
                                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                         ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                         ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                         ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED,
                                     &a->mon, err)))
            return rc;
    }
    if (zmq_connect(a->sock, a->cfg->connect) != 0)
        return moeh_errf(err, -zmq_errno(), "cannot connect to %s: %s", a->cfg->connect,
                         zmq_strerror(zmq_errno()));
    a->last_rx = moeh_now_ms();
    rc = send_hello(a);
    if (rc && rc != -EAGAIN) return moeh_errf(err, rc, "cannot send hello: %s", moeh_strerror(rc));
    return 0;
}

/* A connection closed before its handshake succeeded, or no handshake succeeded before the
 * silence timeout: asks the peer what it is (at most every 5 s; it blocks up to 2 s, and only
 * while not admitted). A peer that is not ZeroMQ, or does not offer CURVE, is named as such and
 * stops the agent: retrying cannot help. A peer that accepts and sends nothing is not ZeroMQ
 * either (libzmq sends its greeting on accept), but a frozen coordinator looks the same for a
 * while: that stops the agent only when two probes at least 5 s apart found it silent and no
 * handshake at --connect ever succeeded. */
static void probe_peer(agent_t *a)
{
    int64_t now = moeh_now_ms();
    if (a->probed_at && now - a->probed_at < 5000) return;
    a->probed_at = now;
    char what[128];
    moeh_probe_t p = moeh_monitor_probe(a->cfg->connect, 2000, what, sizeof what);
    if (p != MOEH_PROBE_SILENT || a->hs_ever_ok)
        a->silent_probes = 0;
    else if (a->silent_probes++ == 0)
        a->first_silent_at = moeh_now_ms();
    if (a->cfg->insecure && (p == MOEH_PROBE_CURVE || p == MOEH_PROBE_OTHER_MECH))
        return; /* the probe offers CURVE; an --insecure agent does not need it */
    /* silent again: named, but not fatal. A proxy or firewall that holds the connection without
     * forwarding it (a black hole) looks the same as a server that is not ZeroMQ, and a site
     * restarted during such an outage must rejoin when it ends, not stop for good (systemd
     * does not restart an agent that exits 3); --give-up-ms bounds the wait */
    if (p == MOEH_PROBE_SILENT && a->silent_probes >= 2)
        MOEH_WARN("the peer at %s is not a ZeroMQ peer, or the coordinator is unreachable "
                  "behind a proxy or firewall that holds connections without forwarding them: "
                  "it accepts connections and sends nothing (%s, and again %.1f s earlier), "
                  "where a ZeroMQ peer greets at once (is --connect the coordinator's address "
                  "and port?); still trying (--give-up-ms)",
                  a->cfg->connect, what, (moeh_now_ms() - a->first_silent_at) / 1000.0);
    else if (p == MOEH_PROBE_NOT_ZMTP)
        moeh_agent_set_fatal(
            a, -EACCES,
            "the peer at %s is not a ZeroMQ peer: it answered a ZMTP greeting with '%s' "
            "(is --connect the coordinator's address and port?)",
            a->cfg->connect, what);
    else if (p == MOEH_PROBE_OTHER_MECH)
        moeh_agent_set_fatal(
            a, -EACCES,
            "the peer at %s does not speak CURVE: it is a ZeroMQ peer offering %s (a "
            "coordinator started with --insecure?)",
            a->cfg->connect, what);
    else if (p == MOEH_PROBE_CUT_SHORT)
        MOEH_WARN("the peer at %s sent %s and then nothing: a ZeroMQ peer that stalls (an "
                  "overloaded coordinator?)",
                  a->cfg->connect, what);
    else if (p == MOEH_PROBE_SILENT || p == MOEH_PROBE_HUNG_UP)
        MOEH_WARN("the peer at %s %s: is it a moeh-coordinator?", a->cfg->connect,
                  p == MOEH_PROBE_SILENT ? "accepts connections and sends nothing"
                                         : "closes connections without a word");
}

static void drain_monitor(agent_t *a)
{
    moeh_mon_event_t ev;
    int rc;
    while (a->mon && !a->fatal_rc && (rc = moeh_monitor_next(a->mon, &ev)) != 0) {
        if (rc < 0) {
            MOEH_DEBUG("socket monitor: %s", moeh_strerror(rc));
            return;
        }
        if (ev.kind == MOEH_MON_AUTH_REFUSED)
            moeh_agent_set_fatal(
                a, -EACCES,
                "the coordinator refused this site's key (%s): add the site's public key "
                "to the coordinator's registry",
                a->cfg->key_path);
        else if (ev.kind == MOEH_MON_AUTH_LATER) { /* ZeroMQ tries again; say so once a minute */
            int64_t now = moeh_now_ms();
            if (!a->auth_later_logged || now - a->auth_later_logged >= 60000) {
                a->auth_later_logged = now;
                MOEH_WARN("the coordinator asks this site's key to connect later: too many "
                          "connections of this key in a short time (another process with the "
                          "same key?); retrying");
            }
        } else if (ev.kind == MOEH_MON_NOT_CURVE)
            moeh_agent_set_fatal(a, -EACCES,
                                 "the peer at %s does not speak CURVE: it is a ZeroMQ peer without "
                                 "encryption (a coordinator started with --insecure?)",
                                 a->cfg->connect);
        else if (ev.kind == MOEH_MON_HANDSHAKE_OK)
            a->hs_ok = a->hs_ever_ok = 1, a->hs_dropped = 0, a->silent_probes = 0;
        else if (ev.kind == MOEH_MON_HANDSHAKE_ERR && !a->hs_ok)
            probe_peer(a); /* a timeout or a reset in the handshake */
        else if (ev.kind == MOEH_MON_DISCONNECTED && !a->hs_ok) {
            if (a->hs_dropped++ == 0) a->hs_first_drop = moeh_now_ms();
            probe_peer(a);
            if (!a->fatal_rc && a->hs_dropped >= 4 && moeh_now_ms() - a->hs_first_drop >= 3000)
                /* a CURVE server drops a client whose Hello it cannot decrypt, without a word:
                 * the Hello was boxed for another key. Every attempt for 3 s, not one or two: a
                 * coordinator that is exiting or restarting also drops a connection or two in
                 * the handshake (seen under load in CI), and that must not stop the agent. */
                moeh_agent_set_fatal(
                    a, -EACCES,
                    "the peer at %s closed the connection during the CURVE handshake %d "
                    "times in %.1f s: --server-key %s is not that coordinator's public key",
                    a->cfg->connect, a->hs_dropped, (moeh_now_ms() - a->hs_first_drop) / 1000.0,
                    a->cfg->server_key);
        } else if (ev.kind == MOEH_MON_PROTOCOL || ev.kind == MOEH_MON_WRONG_KEY)
            MOEH_WARN("CURVE handshake with %s failed (protocol error 0x%x); is --server-key "
                      "the coordinator's public key?",
                      a->cfg->connect, ev.value);
    }
}

/* Keeps the session alive during long local work: heartbeats only (messages wait). */
static void service(agent_t *a)
{
    int64_t now = moeh_now_ms();
    if (a->welcomed && a->sock && now - a->last_hb >= (int64_t)a->hb_ms) {
        a->last_hb = now;
        int rc =
            moeh_wire_send_simple(a->sock, NULL, 0, MOEH__MSG_TYPE__HEARTBEAT, NULL, ++a->hb_seq);
        if (rc) /* the coordinator's silence timeout decides; the next one may get through */
            MOEH_DEBUG("could not send a heartbeat: %s", moeh_strerror(rc));
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
    moeh_stream_tx_clear(&a->up_tx);
    a->global = a->delta = a->norm = a->gate_sum = NULL;
    a->upd = a->hist = a->svec = NULL;
}

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
    moeh_agent_sa_end(a, NULL, NULL);
    moeh_agent_upload_drop(a);
    free_model(a);
    a->cfg_hash = 0;
    int rc = moeh_dataset_open(a->cfg->dataset_dir, false, &ds, &err);
    if (!rc) rc = moeh_trainer_create(&ds, mc, &a->trainer, &err);
    moeh_dataset_destroy(&ds);
    if (rc) {
        moeh_agent_set_fatal(a, rc, "cannot build the model on this site's data: %s", err.msg);
        return rc;
    }
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    a->spec_hash = moeh_params_spec_hash(p);
    if (a->spec_hash != ms->spec_hash || p->n != ms->n_params || p->n_groups != ms->n_groups ||
        moeh_moe_n_experts(moeh_trainer_model(a->trainer)) != ms->n_experts ||
        moeh_trainer_n_norm(a->trainer) != ms->n_norm || mc->n_tasks != ms->n_tasks) {
        moeh_agent_set_fatal(a, -EPROTO, "%s",
                             "the coordinator's model layout differs from this agent's "
                             "(different moeh versions?)");
        return -EPROTO;
    }
    /* room for the secure-aggregation vectors (fed/moeh_secsum.h) of each phase */
    moeh_wire_limits_t lim = {.n_params = p->n,
                              .n_groups = (uint32_t)p->n_groups,
                              .n_tasks = ms->n_tasks,
                              .eval_bins = w->eval_bins,
                              .n_norm = ms->n_norm,
                              .n_experts = ms->n_experts};
    a->global = malloc(p->n * sizeof(float));
    a->delta = malloc(p->n * sizeof(float));
    a->norm = malloc(2 * (size_t)ms->n_norm * sizeof(float) + 1);
    a->upd = malloc(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__TRAIN) * sizeof(uint32_t));
    a->hist = malloc(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__VALIDATE) * sizeof(uint32_t));
    a->svec = malloc(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__STATS) * sizeof(uint32_t) + 1);
    a->gate_sum = malloc(2 * (size_t)MOEH_N_COMBOS * ms->n_experts * sizeof(float) + 1);
    if (!a->global || !a->delta || !a->norm || !a->upd || !a->hist || !a->svec || !a->gate_sum) {
        moeh_agent_set_fatal(a, -ENOMEM, "%s", "out of memory");
        return -ENOMEM;
    }
    return 0;
}

static void handle_welcome(agent_t *a, const Moeh__Welcome *w)
{
    const Moeh__ModelSpec *ms = w->model;
    if (strcmp(w->site_id, a->cfg->site_id) != 0) {
        moeh_agent_set_fatal(a, -EPROTO, "the coordinator welcomed us as '%s', not '%s'",
                             w->site_id, a->cfg->site_id);
        return;
    }
    /* the wire checked sizes and types; the model library checks the spec itself */
    moeh_moe_cfg_t mc;
    moeh_err_t err = {0};
    if (moeh_moe_cfg_from_json(ms->config_json, &mc, &err) != 0 ||
        moeh_moe_cfg_validate(&mc, &err) != 0) {
        moeh_agent_set_fatal(a, -EPROTO, "the coordinator's model spec is refused: %s", err.msg);
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
    moeh_agent_upload_drop(a); /* (re)admitted: the coordinator knows of no update of ours */
    a->welcomed = a->ever_welcomed = 1;
    a->held = 0; /* a new trainer, or another coordinator: nothing it sent is held */
    a->backoff_ms = 0;
    MOEH_INFO("admitted as %s: %zu parameters in %zu groups", w->site_id, p->n, p->n_groups);
}

static void service_cb(void *ctx)
{
    service(ctx);
}

/* Loads the global parameters and normalisation of a TRAIN, VALIDATE or EVALUATE round: from
 * its frames, or (model_held) the ones it holds. NULL, with an Error{-ESTALE} to the
 * coordinator, if it was told to use a model it does not hold. */
static moeh_params_t *load_round(agent_t *a, const Moeh__RoundStart *rs, const moeh_msg_t *m)
{
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    if (rs->model_held) {
        if (a->held && a->held_version == rs->model_version) return p;
        MOEH_WARN("round %u: the coordinator sent no model (it expects this site to hold version "
                  "%llu, which it does not); it will send it in full next time",
                  rs->round, (unsigned long long)rs->model_version);
        moeh_agent_send_error(a, -ESTALE, "model version not held: send it in full");
        return NULL;
    }
    size_t nn = moeh_trainer_n_norm(a->trainer);
    memcpy(p->w, m->frames[0].data, p->n * sizeof(float));
    memcpy(a->norm, m->frames[1].data, 2 * nn * sizeof(float));
    moeh_trainer_set_norm(a->trainer, a->norm, a->norm + nn);
    a->held = 1;
    a->held_version = rs->model_version;
    return p;
}

/* STATS: this site's sums for the normalisation statistics, in clear or through secure
 * aggregation. */
static void send_stats(agent_t *a, const Moeh__RoundStart *rs)
{
    size_t nn = moeh_trainer_n_norm(a->trainer);
    double *st = malloc(3 * nn * sizeof(double) + 1);
    if (!st) {
        moeh_agent_set_fatal(a, -ENOMEM, "%s", "out of memory");
        return;
    }
    moeh_trainer_local_stats(a->trainer, st);
    if (rs->secagg) { /* summed securely: the coordinator learns only the federation's sums */
        if (moeh_secsum_stats_put(a->svec, st, nn) != 0) {
            MOEH_ERROR("statistics: a sum exceeds 2^53 in magnitude, the fixed-point range of "
                       "secure aggregation (docs/secagg.md); not sent");
            moeh_agent_send_error(a, -ERANGE, "statistics out of range");
        } else {
            moeh_agent_sa_input(a, a->svec, moeh_wire_secsum_len(&a->lim, MOEH__ROUND_TASK__STATS));
        }
        free(st);
        return;
    }
    Moeh__Envelope env;
    Moeh__StatsResult r = MOEH__STATS_RESULT__INIT;
    r.round = rs->round;
    r.n_rows = moeh_trainer_rows(a->trainer, MOEH_SPLIT_TRAIN);
    moeh_env_stats_result(&env, &r);
    moeh_frame_t f = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = st, .count = 3 * nn};
    if (rs->grant_uploads) { /* packed (a copy) and held for the grant */
        moeh_agent_upload_hold(a, &env, &f, 1, rs->task, rs->round, rs->model_version, 0, 0);
        free(st);
        return;
    }
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc) MOEH_WARN("could not send the statistics: %s", moeh_strerror(rc));
    free(st);
}

/* TRAIN: local training from the round's global model (heartbeats continue through
 * service_cb), then the delta goes to agent_update.c to be encoded and uploaded. */
static void train(agent_t *a, const Moeh__RoundStart *rs, const moeh_msg_t *m)
{
    const Moeh__RoundConfig *rc = rs->config;
    if (rc->dp_clip > 0 && rc->dp_sites > rs->n_participants) {
        /* the noise is calibrated for more sites than take part: the sum could not reach it */
        MOEH_ERROR("round %u: DP noise calibrated for %u sites, but only %u take part; no update "
                   "is sent",
                   rs->round, rc->dp_sites, rs->n_participants);
        moeh_agent_send_error(a, -EINVAL, "DP noise calibrated for more sites than take part");
        return;
    }
    moeh_params_t *p = load_round(a, rs, m);
    if (!p) return;
    memcpy(a->global, p->w, p->n * sizeof(float));
    a->held = 0; /* training changes the parameters */
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
    const int64_t t0 = moeh_now_ms();
    const double c0 = moeh_agent_cpu_s();
    int e = moeh_trainer_train(a->trainer, &tc, &res, &err);
    for (size_t i = 0; !e && i < p->n; i++) {
        a->delta[i] = p->w[i] - a->global[i];
        if (!isfinite(a->delta[i]))
            e = moeh_errf(&err, -ERANGE, "non-finite parameters after training");
    }
    if (e) {
        /* badfiles: say why and on which dataset; the coordinator logs the reason (not the
         * path: that stays at the site) */
        MOEH_ERROR("round %u: local training on the dataset %s failed: %s; no update is sent",
                   rs->round, a->cfg->dataset_dir ? a->cfg->dataset_dir : "(in memory)", err.msg);
        char why[256];
        snprintf(why, sizeof why, "local training failed: %.200s", err.msg);
        moeh_agent_send_error(a, -ERANGE, why);
        return;
    }
    moeh_agent_lm_train(a, rs, &res, (double)(moeh_now_ms() - t0) / 1000.0,
                        moeh_agent_cpu_s() - c0); /* agent_final.c */
    moeh_agent_update_submit(a, rs, &res);
}

/* Logs this site's own test loss and AUROC per task (all rows): with secure aggregation the
 * coordinator only learns the federation's sums, so this log is where a site's own figures are
 * (aggregates of the site's rows, never a single prediction). */
static void log_own_metrics(agent_t *a, uint32_t round, int secure, const moeh_eval_sums_t *es)
{
    const uint32_t T = a->lim.n_tasks, nb = a->eval_bins;
    uint64_t *scratch = malloc(2 * (size_t)nb * sizeof(uint64_t));
    char line[512];
    int at = snprintf(line, sizeof line, "round %u: this site's test loss %.4f", round,
                      es->n_labels ? es->loss_sum / (double)es->n_labels : NAN);
    for (uint32_t t = 0; scratch && t < T && at > 0 && (size_t)at < sizeof line; t++)
        at += snprintf(line + at, sizeof line - (size_t)at, ", AUROC %s %.4f",
                       t < MOEH_N_TASKS ? moeh_task_names[t] : "task",
                       moeh_eval_slice_auroc_u32(a->hist, T, nb, 0, t, scratch)); /* all rows */
    free(scratch);
    /* say truthfully what leaves the site: masked sums, or this site's own histograms */
    if (secure)
        MOEH_INFO("%s (kept at this site: only masked histograms leave it, the coordinator "
                  "learns the federation's sums)",
                  line);
    else
        MOEH_INFO("%s (secure aggregation is off: this site's score histograms and loss go to "
                  "the coordinator unmasked, so it can compute these figures)",
                  line);
}

/* EVALUATE: the figures of the test split. VALIDATE (protocol 9): the same, then the same on the
 * validation split (model selection; a site without validation rows sends empty ones), in one
 * reply: the secure vector is the two EVALUATE vectors one after the other (moeh_secsum.h), the
 * plain EvalResult carries the validation split's in `validation`. */
static void evaluate(agent_t *a, const Moeh__RoundStart *rs, const moeh_msg_t *m)
{
    if (!load_round(a, rs, m)) return;
    const int val = rs->task == MOEH__ROUND_TASK__VALIDATE;
    const moeh_secsum_dims_t d = moeh_wire_secsum_dims(&a->lim);
    const size_t le = moeh_wire_secsum_len(&a->lim, MOEH__ROUND_TASK__EVALUATE),
                 G = (size_t)MOEH_N_COMBOS * a->lim.n_experts;
    moeh_eval_sums_t es[2] = {{.hist = a->hist, .gate_sum = a->gate_sum},
                              {.hist = a->hist + le, .gate_sum = a->gate_sum + G}};
    for (int k = 0; k <= val; k++) {
        moeh_err_t err = {0};
        const char *split = k ? "validation" : "test";
        const int64_t t0 = moeh_now_ms();
        if (moeh_trainer_evaluate(a->trainer, k ? MOEH_SPLIT_VAL : MOEH_SPLIT_TEST, a->eval_bins,
                                  &es[k], service_cb, a, &err) != 0) {
            MOEH_ERROR("round %u: evaluation on the %s split failed: %s", rs->round, split,
                       err.msg);
            moeh_agent_send_error(a, -ERANGE, "evaluation failed");
            return;
        }
        moeh_agent_lm_eval(a, rs, &es[k], k, (double)(moeh_now_ms() - t0) / 1000.0);
        /* summed securely: the coordinator learns only the federation's sums */
        if (rs->secagg &&
            moeh_secsum_eval_put(es[k].hist + moeh_secsum_eval_hist_words(d), d, es[k].gate_sum,
                                 es[k].combo_rows, es[k].loss_sum, es[k].n_labels) != 0) {
            MOEH_ERROR("round %u: %s evaluation sums out of the fixed-point range; not sent",
                       rs->round, split);
            moeh_agent_send_error(a, -ERANGE, "evaluation out of range");
            return;
        }
    }
    log_own_metrics(a, rs->round, rs->secagg != NULL, &es[0]);
    if (rs->secagg) {
        moeh_agent_sa_input(a, a->hist, moeh_wire_secsum_len(&a->lim, rs->task));
        return;
    }
    Moeh__Envelope env;
    Moeh__EvalResult r[2] = {MOEH__EVAL_RESULT__INIT, MOEH__EVAL_RESULT__INIT};
    moeh_frame_t f[4];
    static const char *const names[4] = {"hist", "gate", "val_hist", "val_gate"};
    for (int k = 0; k <= val; k++) {
        r[k].loss_sum = es[k].loss_sum;
        r[k].n_labels = es[k].n_labels;
        r[k].n_tasks = a->lim.n_tasks;
        r[k].n_bins = a->eval_bins;
        r[k].n_combo_rows = MOEH_N_COMBOS;
        r[k].combo_rows = es[k].combo_rows;
        f[2 * k] = (moeh_frame_t){.name = names[2 * k],
                                  .dtype = MOEH__DTYPE__U32,
                                  .data = es[k].hist,
                                  .count = moeh_secsum_eval_hist_words(d)};
        f[2 * k + 1] = (moeh_frame_t){.name = names[2 * k + 1],
                                      .dtype = MOEH__DTYPE__F32,
                                      .data = es[k].gate_sum,
                                      .count = G};
    }
    r[0].round = rs->round;
    r[0].model_version = rs->model_version;
    if (val) r[0].validation = &r[1];
    moeh_env_eval_result(&env, &r[0]);
    const size_t nf = val ? 4 : 2;
    if (rs->grant_uploads) { /* packed (a copy) and held for the grant */
        moeh_agent_upload_hold(a, &env, f, nf, rs->task, rs->round, rs->model_version, 0, 0);
        return;
    }
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, f, nf);
    if (rc) MOEH_WARN("round %u: could not send the evaluation: %s", rs->round, moeh_strerror(rc));
    if (!rc) moeh_agent_lm_sent(a, rs->task, rs->round, 0); /* local_metrics.jsonl */
}

/* FINISHED ends the agent (exit 0) once it holds the final model (agent_final.c; without it the
 * agent fails: the run is over but this site did not get its result); PAUSED keeps it reconnecting
 * until a resumed coordinator admits it again (or --give-up-ms runs out); REFUSED is fatal. */
static void on_bye(agent_t *a, const Moeh__Bye *b)
{
    switch (b->status) {
    case MOEH__BYE_STATUS__BYE_STATUS_FINISHED:
        if (!a->have_final) {
            moeh_agent_set_fatal(
                a, -EPROTO,
                "the coordinator says the run finished (%s), but this site did not get the "
                "final model (it was away or could not store it while the coordinator "
                "waited, --final-wait); ask the consortium for its model.safetensors",
                b->reason);
            break;
        }
        MOEH_INFO("the coordinator says the run finished: %s", b->reason);
        a->done = 1;
        break;
    case MOEH__BYE_STATUS__BYE_STATUS_PAUSED:
        MOEH_WARN("the coordinator paused the run (%s); waiting for it to resume%s", b->reason,
                  a->cfg->give_up_ms ? "" : " (no --give-up-ms: for as long as it takes)");
        a->paused = 1;
        break;
    case MOEH__BYE_STATUS__BYE_STATUS_REFUSED:
        moeh_agent_set_fatal(a, -EACCES, "the coordinator refused this site: %s", b->reason);
        break;
    default: /* LEFT: the wire accepts it, but a coordinator does not send it */
        MOEH_WARN("the coordinator left (%s); reconnecting", b->reason);
        a->paused = 1;
    }
}

void moeh_agent_run_phase(agent_t *a, const moeh_msg_t *m)
{
    const Moeh__RoundStart *rs = m->env->round_start;
    if (a->faults.kill_work_round && rs->round == a->faults.kill_work_round &&
        rs->task == MOEH__ROUND_TASK__TRAIN) {
        MOEH_WARN("fault injection: killing myself as round %u's training starts", rs->round);
        /* a crash during training comes later than this: let ZeroMQ's I/O thread send what is
         * queued (the shares), which a SIGKILL at once would lose */
        usleep(300 * 1000);
        raise(SIGKILL);
    }
    if (rs->task == MOEH__ROUND_TASK__TRAIN)
        train(a, rs, m);
    else if (rs->task == MOEH__ROUND_TASK__EVALUATE || rs->task == MOEH__ROUND_TASK__VALIDATE)
        evaluate(a, rs, m);
    else
        send_stats(a, rs);
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
            moeh_agent_send_error(a, rc, what);
            moeh_msg_clear(&m);
            continue;
        }
        switch (m.env->type) {
        case MOEH__MSG_TYPE__WELCOME:
            handle_welcome(a, m.env->welcome);
            break;
        case MOEH__MSG_TYPE__ROUND_START:
            if (!a->welcomed) break;
            if (a->faults.kill_round && m.env->round_start->round == a->faults.kill_round &&
                m.env->round_start->task == MOEH__ROUND_TASK__TRAIN) {
                MOEH_WARN("fault injection: killing myself in round %u", a->faults.kill_round);
                raise(SIGKILL);
            }
            moeh_agent_sa_end(a, NULL, NULL); /* a new phase or attempt: the old session is over */
            moeh_agent_lm_round(a, m.env->round_start->round); /* local_metrics.jsonl */
            moeh_agent_upload_drop(a);      /* and an update waiting or in flight is stale */
            if (m.env->round_start->secagg) /* keys first; the work on the key list */
                moeh_agent_sa_begin(a, m.env->round_start, &m);
            else
                moeh_agent_run_phase(a, &m);
            break;
        case MOEH__MSG_TYPE__SECAGG_KEYS:
            moeh_agent_sa_on_keys(a, m.env->secagg_keys);
            break;
        case MOEH__MSG_TYPE__SECAGG_SHARES:
            moeh_agent_sa_on_shares(a, m.env->secagg_shares);
            break;
        case MOEH__MSG_TYPE__SECAGG_UNMASK:
            moeh_agent_sa_on_unmask(a, m.env->secagg_unmask);
            break;
        case MOEH__MSG_TYPE__UPLOAD_GRANT:
            moeh_agent_on_grant(a, m.env->upload_grant);
            break;
        case MOEH__MSG_TYPE__UPLOAD_CREDIT:
            moeh_agent_upload_credit(a, m.env->upload_credit);
            break;
        case MOEH__MSG_TYPE__FINAL_MODEL:
            if (a->welcomed) moeh_agent_on_final(a, m.env->final_model, &m); /* agent_final.c */
            break;
        case MOEH__MSG_TYPE__HEARTBEAT:
            break;
        case MOEH__MSG_TYPE__ERROR: {
            const Moeh__Error *e = m.env->error;
            if (e->code == -EPERM) { /* it does not know us (e.g. it restarted): join again */
                MOEH_INFO("the coordinator does not know this site (did it restart?); joining "
                          "again");
                a->welcomed = 0;
                moeh_agent_upload_drop(a);
                int hr = send_hello(a); /* if it is lost, the silence timeout reconnects */
                if (hr) MOEH_WARN("could not send hello: %s", moeh_strerror(hr));
                break;
            }
            MOEH_WARN("coordinator says: %s", e->message);
            if (e->code == -EACCES || (!a->welcomed && e->code == -EINVAL)) {
                moeh_agent_set_fatal(a, e->code, "the coordinator refused this site: %s",
                                     e->message);
            }
            break;
        }
        case MOEH__MSG_TYPE__BYE:
            on_bye(a, m.env->bye);
            break;
        default:
            MOEH_WARN("ignored an unexpected %s message", moeh_msg_type_name(m.env->type));
        }
        moeh_msg_clear(&m);
    }
}

int moeh_agent_faults_parse_secagg_at(moeh_agent_faults_t *f, const char *spec)
{
    unsigned r = 0;
    char extra;
    Moeh__RoundTask task;
    if (strcmp(spec, "stats") == 0)
        task = MOEH__ROUND_TASK__STATS;
    else if (sscanf(spec, "eval:%u%c", &r, &extra) == 1 && r > 0)
        task = MOEH__ROUND_TASK__EVALUATE;
    else if (sscanf(spec, "train:%u%c", &r, &extra) == 1 && r > 0)
        task = MOEH__ROUND_TASK__TRAIN;
    else
        return -EINVAL;
    f->kill_secagg_task = task;
    f->kill_secagg_at = r;
    return 0;
}

/* --key's pair into *kp (caller owns it: moeh_keypair_destroy) and --server-key's public key
 * into server_pub. A file that cannot serve (missing, a .pub as --key, a .key as --server-key)
 * is -ENOKEY, the same public key in both -EACCES; each message names its option. */
static int read_keys(const moeh_agent_cfg_t *cfg, moeh_keypair_t **kp,
                     char server_pub[MOEH_Z85_KEY_LEN + 1], moeh_err_t *err)
{
    char m[MOEH_ERRMSG_MAX];
    int rc = moeh_crypto_init();
    if (rc) return moeh_errf(err, rc, "cannot initialise libsodium");
    if (moeh_keypair_read(cfg->key_path, kp, err)) {
        snprintf(m, sizeof m, "%s", err->msg);
        return moeh_errf(err, -ENOKEY, "--key %s", m);
    }
    if (moeh_pubkey_read(cfg->server_key, server_pub, err)) {
        snprintf(m, sizeof m, "%s", err->msg);
        rc = moeh_errf(err, -ENOKEY, "--server-key %s", m);
    } else if (strcmp(server_pub, (*kp)->public_z85) == 0) {
        rc = moeh_errf(err, -EACCES,
                       "--key %s and --server-key %s hold the same public key: --key is this "
                       "site's own key pair (moeh-keygen --site ID NAME), --server-key the "
                       "coordinator's public key (its coordinator.pub); one of them is the "
                       "wrong file",
                       cfg->key_path, cfg->server_key);
    }
    if (rc) moeh_keypair_destroy(kp);
    return rc;
}

int moeh_agent_run(const moeh_agent_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
{
    return moeh_agent_run_faulty(cfg, NULL, stop, err);
}

int moeh_agent_run_faulty(const moeh_agent_cfg_t *cfg, const moeh_agent_faults_t *faults,
                          volatile sig_atomic_t *stop, moeh_err_t *err)
{
    agent_t a;
    memset(&a, 0, sizeof a);
    a.cfg = cfg;
    if (faults) a.faults = *faults;
    int rc;
    if (!cfg->site_id || !moeh_site_id_valid(cfg->site_id)) {
        rc = moeh_errf(err, -EINVAL, "--site-id is required: 1-64 of [A-Za-z0-9._-]");
        goto out;
    }
    if (!cfg->dataset_dir) {
        rc = moeh_errf(err, -EINVAL, "--dataset is required");
        goto out;
    }
    if (!cfg->out_dir || !cfg->out_dir[0]) {
        rc = moeh_errf(err, -EINVAL,
                       "--out DIR is required (where this site keeps the final "
                       "model and its own metrics)");
        goto out;
    }
    if (!cfg->insecure) { /* the keys first: quick to check, a dataset may take a while */
        if (!cfg->key_path || !cfg->server_key) {
            rc = moeh_errf(err, -EINVAL,
                           "--key (this site's key) and --server-key (the "
                           "coordinator's public key) are required, or --insecure");
            goto out;
        }
        if ((rc = read_keys(cfg, &a.kp, a.server_pub, err))) goto out;
    }
    {
        moeh_dataset_t *ds = NULL; /* read once to introduce the site; checksums verified */
        if ((rc = moeh_dataset_open(cfg->dataset_dir, true, &ds, err))) goto out;
        a.n_static = ds->f_static, a.n_vars = ds->f_ts, a.n_steps = ds->t;
        a.img_size = ds->img_size;
        a.note_dim = ds->note_dim, a.img_dim = ds->img_dim; /* precomputed vectors */
        for (size_t i = 0; i < ds->n; i++) {
            a.n_train += ds->split[i] == MOEH_SPLIT_TRAIN;
            a.n_test += ds->split[i] == MOEH_SPLIT_TEST;
            a.n_val += ds->split[i] == MOEH_SPLIT_VAL;
        }
        moeh_dataset_combo_counts(ds, a.combos);
        moeh_dataset_destroy(&ds);
    }
    for (const char *s = cfg->site_id; *s; s++) /* FNV-1a: per-site shuffling */
        a.seed_salt = (a.seed_salt ^ (uint8_t)*s) * 0x100000001b3ULL;
    if ((rc = moeh_agent_lm_open(&a, err))) goto out; /* --out, before any connection */
    if (!(a.zctx = zmq_ctx_new())) {
        rc = moeh_errf(err, -ENOMEM, "cannot create a ZeroMQ context");
        goto out;
    }
    MOEH_INFO("site %s: %zu train, %zu validation and %zu test admissions (EHR only %zu, with "
              "notes %zu, with images %zu, all three %zu); connecting to %s",
              cfg->site_id, a.n_train, a.n_val, a.n_test, a.combos[1], a.combos[3], a.combos[5],
              a.combos[7], cfg->connect);
    a.start = a.unadmitted_since = moeh_now_ms();
    int64_t reconnect_at = 0;
    if ((rc = open_socket(&a, err))) goto out;
    while (!*stop && !a.done && !a.fatal_rc) {
        /* --give-up-ms bounds every wait for admission: at the start, after a pause, after
         * lost contact */
        if (cfg->give_up_ms && !a.welcomed && a.unadmitted_since &&
            moeh_now_ms() - a.unadmitted_since > (int64_t)cfg->give_up_ms) {
            rc = moeh_errf(err, -ETIMEDOUT, "not %sadmitted by %s within %.1f s (--give-up-ms)",
                           a.ever_welcomed ? "re-" : "", cfg->connect, cfg->give_up_ms / 1000.0);
            goto out;
        }
        if (!a.sock) { /* backing off before a new connection */
            if (moeh_now_ms() >= reconnect_at) {
                if ((rc = open_socket(&a, err))) goto out;
            } else {
                if (zmq_poll(NULL, 0, 50) < 0 && zmq_errno() != EINTR) { /* a 50 ms wait */
                    rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
                    goto out;
                }
                continue;
            }
        }
        zmq_pollitem_t items[2] = {
            {.socket = a.sock, .events = ZMQ_POLLIN},
            {.socket = a.mon ? moeh_monitor_socket(a.mon) : NULL, .events = ZMQ_POLLIN}};
        if (zmq_poll(items, a.mon ? 2 : 1, 50) < 0 && zmq_errno() != EINTR) {
            rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
            goto out;
        }
        drain_monitor(&a);
        handle_messages(&a);
        service(&a);
        int64_t now = moeh_now_ms();
        if (a.paused) { /* the coordinator is gone until it is resumed: a new socket, later */
            a.paused = 0;
            if (a.welcomed) a.unadmitted_since = now;
            close_socket(&a);
            a.backoff_ms = 500;
            reconnect_at = now + a.backoff_ms;
            continue;
        }
        if (a.welcomed) a.unadmitted_since = 0;
        int64_t quiet_since = a.welcomed ? a.last_rx : a.hello_at;
        if (!a.done && !a.fatal_rc && now - quiet_since > (int64_t)cfg->silence_timeout_ms) {
            /* no handshake yet: ask what listens (a silent non-ZeroMQ server keeps libzmq in
             * its handshake for 30 s, longer than the silence timeout) */
            if (!a.welcomed && !a.hs_ok) probe_peer(&a);
            if (a.fatal_rc) break;
            a.backoff_ms = a.backoff_ms ? a.backoff_ms * 2 : 500;
            if (a.backoff_ms > cfg->backoff_max_ms) a.backoff_ms = cfg->backoff_max_ms;
            MOEH_WARN("no word from the coordinator for %.1f s; reconnecting in %.1f s",
                      (now - quiet_since) / 1000.0, a.backoff_ms / 1000.0);
            if (a.welcomed) a.unadmitted_since = now;
            close_socket(&a);
            reconnect_at = now + a.backoff_ms;
        }
    }
    if (a.fatal_rc) {
        rc = moeh_errf(err, a.fatal_rc, "%s", a.fatal.msg);
    } else if (*stop && !a.done) {
        if (a.sock) {
            int linger = 1000; /* let the bye go out, at most 1 s */
            if ((rc = moeh_wire_send_simple(a.sock, NULL, 0, MOEH__MSG_TYPE__BYE,
                                            "site agent stopped", 0)) != 0)
                MOEH_WARN("could not say bye: %s", moeh_strerror(rc));
            else if (zmq_setsockopt(a.sock, ZMQ_LINGER, &linger, sizeof linger) != 0)
                MOEH_WARN("the bye may be lost: %s", zmq_strerror(zmq_errno()));
        }
        rc = moeh_errf(err, -EINTR, "stopped by a signal");
    } else {
        rc = 0;
    }
out:
    moeh_agent_lm_close(&a);
    close_socket(&a);
    while (a.zctx && zmq_ctx_term(a.zctx) != 0) /* every socket is closed: only EINTR */
        MOEH_ASSERT(zmq_errno() == EINTR);
    moeh_keypair_destroy(&a.kp);
    moeh_agent_sa_end(&a, NULL, NULL); /* its secrets, and a RoundStart kept for the keys */
    moeh_secagg_ident_destroy(&a.sa_ident);
    free_model(&a);
    return rc;
}
