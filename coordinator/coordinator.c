/* coordinator.c - the coordinator's state machine (see moeh_coord_core.h, and
 * docs/architecture.md for the messages of one round in order).
 *
 * Phases: WAIT (sites join) -> STATS (once: sums for the normalisation statistics) -> for
 * each round: TRAIN (RoundStart{TRAIN} + params to every
 * admitted site; Updates folded into a running per-group FedAvg sum) -> VALIDATE (RoundStart
 * {VALIDATE} with the new model: the test and the validation splits' score histograms summed in
 * one reply, protocol 9; EVAL, RoundStart{EVALUATE}, the test split only, with --no-validate)
 * -> next round or DONE.
 * A phase closes when every live participant replied or at its deadline; it needs min_sites
 * replies, else it is retried (up to max_retries) and then the run fails with a clear message.
 * An attempt that fails while fewer than min_sites sites are connected is an outage: the phase
 * waits for min_sites connected sites (up to outage_budget_ms) and starts again, no retry
 * counted (docs/architecture.md, "Outages").
 * Nothing a site sends touches model state before it passed moeh_wire_decode() and the
 * session checks here (sender admitted, participant, round and model version current, first
 * reply).
 *
 * Every phase's results are one vector of words per site (proto/moeh_secsum.h), summed mod 2^32
 * into c->vsum and decoded when the phase closes, so the plain path and secure aggregation
 * decode the very same sum. With --secagg every phase runs the four steps of secure
 * aggregation (moeh_secagg_server.h), each with its own deadline; fewer than max(t, min_sites)
 * sites at any step aborts the attempt (retried as a phase without quorum); nothing is
 * unmasked then. Clear Updates, StatsResults and EvalResults are refused under --secagg.
 * Granted uploads (--upload-slots) are scheduled by moeh_uploads.h, the DP accounting kept by
 * moeh_dp_ledger.h, and metrics written by moeh_coord_report.h; this file owns the sites, the
 * model and the phase's sums. It never calls ZeroMQ or the clock: the time comes in with every
 * call (c->now) and replies go out through io->send. */
#include "coord_internal.h"

#include "moeh_aggregate.h"
#include "moeh_checkpoint.h"
#include "moeh_coord_report.h"
#include "moeh_dp.h"
#include "moeh_dp_ledger.h"
#include "moeh_hist.h"
#include "moeh_keys.h"
#include "moeh_moe.h"
#include "moeh_quant.h"
#include "moeh_schema.h"
#include "moeh_secagg_server.h"
#include "moeh_secsum.h"
#include "moeh_trainer.h"
#include "moeh_uploads.h"

#include <math.h>
#include <string.h>

static site_t *site_by_rid(coord_t *c, const uint8_t *rid, size_t len)
{
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].admitted && c->sites[i].rid_len == len &&
            memcmp(c->sites[i].rid, rid, len) == 0)
            return &c->sites[i];
    return NULL;
}

site_t *coord_site_by_id(const coord_t *c, const char *id)
{
    for (size_t i = 0; i < c->n_sites; i++)
        if (strcmp(c->sites[i].id, id) == 0) return &c->sites[i];
    return NULL;
}

size_t coord_site_index(const coord_t *c, const site_t *s)
{
    return (size_t)(s - c->sites);
}

uint32_t coord_n_admitted(const coord_t *c)
{
    uint32_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        n += c->sites[i].admitted != 0;
    return n;
}

/* A site's weight in the round's fixed-point budget: 1 per site when unweighted (and under
 * DP), else its declared training samples (fed/moeh_quant.h). */
static double site_weight(const coord_t *c, const site_t *s)
{
    return c->unit_weight ? 1.0 : (double)coord_cap_train(c, s); /* capped: robust.c */
}

/* DP: the most plain updates any one site sent to this process (moeh_dp_ledger.h). */
uint64_t coord_dp_most_seen(const coord_t *c)
{
    uint64_t most = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].dp_seen > most) most = c->sites[i].dp_seen;
    return most;
}

/* The DP fields of a metrics line (NULL without DP). */
const moeh_report_dp_t *coord_dp_row(const coord_t *c, moeh_report_dp_t *row)
{
    if (!c->dp) return NULL;
    moeh_dp_ledger_epsilons(&c->ledger, coord_dp_most_seen(c), &row->eps, &row->eps_coord);
    row->delta = c->cfg->dp_delta;
    row->noise = c->cfg->dp_noise;
    row->clip = c->cfg->dp_clip;
    row->sites = c->cfg->min_sites;
    row->rounds = c->ledger.rounds;
    return row;
}

static int send_env(coord_t *c, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env)
{
    return c->io->send(c->io->ctx, rid, rid_len, env, NULL, 0);
}

/* An Error to the peer rid (the message cut to MOEH_MAX_STRING bytes). */
static int send_error(coord_t *c, const uint8_t *rid, size_t rid_len, int code, const char *what)
{
    Moeh__Envelope env;
    Moeh__Error e;
    char buf[MOEH_MAX_STRING + 1];
    moeh_wire_error_env(&env, &e, buf, code, what);
    return send_env(c, rid, rid_len, &env);
}

static void site_gone(coord_t *c, site_t *s, const char *why)
{
    if (!s->admitted) return;
    s->admitted = 0;
    MOEH_WARN("site %s is gone (%s)", s->id, why);
    if (moeh_uploads_state(c->up, coord_site_index(c, s)) == MOEH_UP_GRANTED)
        MOEH_WARN("round %u: site %s held an upload slot; released", c->round, s->id);
    moeh_uploads_release(c->up, coord_site_index(c, s));
    moeh_stream_rx_clear(&s->up_rx);
    moeh_coord_report_site_gone(c->report, c->round, s->id, why);
}

/* Sends to a site; a peer that vanished (ROUTER_MANDATORY) is marked gone, and so is one over
 * its outbound budget (-EAGAIN: the transport never waits; its queue is full because it does
 * not read): its messages are dropped until it sends Hello again. */
int coord_send_to(coord_t *c, site_t *s, Moeh__Envelope *env, const moeh_frame_t *frames,
                  size_t n_frames)
{
    int rc = c->io->send(c->io->ctx, s->rid, s->rid_len, env, frames, n_frames);
    if (rc == -EHOSTUNREACH)
        site_gone(c, s, "connection closed");
    else if (rc == -EAGAIN)
        site_gone(c, s, "over its outbound budget: it does not read what it is sent");
    else if (rc)
        MOEH_WARN("send to site %s failed: %s", s->id, moeh_strerror(rc));
    return rc;
}

static void send_round_start(coord_t *c, site_t *s)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__RoundStart rs = MOEH__ROUND_START__INIT;
    Moeh__RoundConfig rc = MOEH__ROUND_CONFIG__INIT;
    rc.local_epochs = cfg->local_epochs;
    rc.batch_size = cfg->batch_size;
    rc.lr = cfg->lr;
    rc.weight_decay = cfg->weight_decay;
    rc.clip = cfg->clip;
    rc.seed = cfg->model.seed * 1000003u + c->round;
    rc.delta_clip = c->quant_range;
    rc.quant_scale = c->quant_scale;
    rc.unweighted = c->unit_weight;
    if (c->dp) {
        rc.dp_clip = cfg->dp_clip;
        rc.dp_noise = cfg->dp_noise;
        rc.dp_sites = cfg->min_sites;
    }
    rs.round = c->round;
    rs.model_version = c->model_version;
    rs.task = coord_phase_task(c->phase);
    rc.warmup = c->round <= cfg->warmup_rounds;
    rc.prox_mu = cfg->prox_mu;
    int64_t left = c->phase_deadline - c->now;
    rs.deadline_ms = left > 1 ? (uint32_t)left : 1;
    rs.config = &rc;
    rs.n_participants = c->n_participants;
    rs.grant_uploads = cfg->upload_slots > 0; /* every phase's reply, in chunks */
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    if (moeh_sa_server_step(c->sa) != MOEH_SA_OFF) {
        if (!s->sa_in) return; /* not in this session: it cannot take part in this attempt */
        const moeh_secagg_cfg_t *sc = moeh_sa_server_cfg(c->sa);
        sp.session = sc->round;
        sp.n = sc->n;
        sp.t = sc->t;
        sp.k = sc->k;
        sp.graph_seed = sc->graph_seed;
        sp.id = s->sa_id;
        rs.secagg = &sp;
    }
    /* the site holds this version (sent in this round's VALIDATE or EVALUATE): the model goes
     * out once a round instead of twice (protocol 8) */
    rs.model_held = c->phase != PH_STATS && s->held && s->held_version == c->model_version;
    moeh_env_round_start(&env, &rs);
    moeh_frame_t f[2] = {{.name = "params",
                          .dtype = MOEH__DTYPE__F32,
                          .data = c->p->w,
                          .count = c->p->n,
                          .shared = c->params_frame},
                         {.name = "norm",
                          .dtype = MOEH__DTYPE__F32,
                          .data = c->norm,
                          .count = 2 * (uint64_t)c->n_norm}};
    int sent = coord_send_to(c, s, &env, f, c->phase == PH_STATS || rs.model_held ? 0 : 2) == 0;
    /* it keeps a model it evaluates; one it trains on changes */
    s->held = sent && (c->phase == PH_VAL || c->phase == PH_EVAL);
    s->held_version = c->model_version;
}

/* A participation replay (tests, moeh_coordinator_testing.h) lets a site take part in a phase
 * only if it did in the recorded run; without one every admitted site does. */
static int replay_admits(const coord_t *c, phase_t ph, const site_t *s)
{
    return moeh_coord_replay_member(c->replay, c->round, ph, s->id) != 0;
}

/* A replay: the recorded participants of this phase not connected now (the phase waits for
 * them, as for an outage, so that it sums the same sites). */
static uint32_t replay_missing(const coord_t *c, phase_t ph)
{
    uint32_t n = 0;
    for (size_t i = 0; c->replay && i < c->n_sites; i++)
        n += !c->sites[i].admitted &&
             moeh_coord_replay_member(c->replay, c->round, ph, c->sites[i].id) == 1;
    return n;
}

static void open_phase(coord_t *c, phase_t ph)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    c->phase = ph;
    if (replay_missing(c, ph) > 0) { /* outage_tick opens it once they are back */
        MOEH_INFO("round %u %s phase: replay: waiting for %u of the recorded sites", c->round,
                  coord_phase_name(ph), replay_missing(c, ph));
        c->outage_since = c->now;
        return;
    }
    c->phase_serial++;
    /* one copy of the parameters for every site's RoundStart of this phase (they do not change
     * until the phase closes); without it the sends fall back to a copy each */
    moeh_shared_frame_destroy(&c->params_frame);
    if (ph != PH_STATS &&
        moeh_shared_frame_create(c->p->w, c->p->n * sizeof(float), &c->params_frame) != 0)
        MOEH_WARN("out of memory for the shared parameter frame; copying per site");
    c->phase_deadline = c->now + c->cfg->phase_deadline_ms;
    c->n_participants = c->n_replied = 0;
    memset(c->vsum, 0, moeh_wire_secsum_len(&c->lim, coord_phase_task(ph)) * sizeof(uint32_t));
    coord_bounds_refresh(c); /* registry limits and medians of the declared rows */
    if (ph == PH_TRAIN) {
        moeh_fedavg_reset(&c->agg);
        c->round_train_loss = 0;
        /* Twice the participants' weight, so that late joiners fit; see fed/moeh_quant.h. */
        c->w_used = 0;
        for (size_t i = 0; i < c->n_sites; i++) {
            site_t *si = &c->sites[i];
            si->w_phase = si->admitted ? coord_cap_train(c, si) : 0;
            if (si->admitted) c->w_used += site_weight(c, si);
        }
        c->n_slots = 0;
        if (coord_keeps_updates(c) && c->cap_slots < c->n_sites + 8) {
            size_t cap = c->n_sites + 8; /* room for late joiners */
            float *d = realloc(c->site_delta, cap * c->p->n * sizeof(float));
            if (d) c->site_delta = d;
            uint32_t *w = d ? realloc(c->site_w, cap * c->p->n_groups * sizeof(uint32_t)) : NULL;
            if (w) c->site_w = w;
            float *sc = w ? realloc(c->scratch, cap * sizeof(float)) : NULL;
            if (sc) {
                c->scratch = sc;
                c->cap_slots = cap;
            } else {
                MOEH_ERROR("out of memory for the updates of %zu sites", cap);
            }
        }
        c->w_cap = 2.0 * (c->w_used > 1 ? c->w_used : 1);
        if (moeh_coord_replay_w_cap(c->replay, c->round) > 0) /* the replayed round's scale */
            c->w_cap = moeh_coord_replay_w_cap(c->replay, c->round);
        if (c->w_cap > 4294967295.0) /* weights are summed in 32-bit words too */
            c->w_cap = 4294967295.0;
        /* under DP every site's words (noise) count, whatever its group weights: W counts
         * sites, and the range holds a clipped and noised coordinate (fed/moeh_dp.h) */
        c->quant_scale = moeh_quant_scale(c->quant_range, c->w_cap);
    }
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        s->participant = s->admitted && replay_admits(c, ph, s);
        s->replied = 0;
        c->n_participants += s->participant != 0;
        moeh_stream_rx_clear(&s->up_rx);
    }
    moeh_uploads_reset(c->up);
    if (cfg->secagg)
        coord_sa_open(c);
    else
        moeh_sa_server_off(c->sa);
    MOEH_INFO("round %u: %s phase with %u sites (model version %llu)", c->round,
              coord_phase_name(ph), c->n_participants, (unsigned long long)c->model_version);
    if (ph == PH_TRAIN && !cfg->secagg) /* once per round */
        MOEH_WARN("round %u: no secure aggregation (--no-secagg): the coordinator sees each "
                  "site's update and evaluation histograms in clear%s",
                  c->round, cfg->per_site_metrics ? ", and records them per site" : "");
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].participant) send_round_start(c, &c->sites[i]);
}

/* Error replies are rate-limited per key (a refused flood is neither answered nor logged past
 * the rate); a reply to a peer whose queue is full (-EAGAIN) is dropped. */
void coord_reply_error(coord_t *c, const moeh_msg_t *m, int code, const char *what, const char *who)
{
    if (!coord_rate_allow(c, m, COORD_RATE_ERROR)) return;
    MOEH_WARN("refused a message from %s: %s", who, what);
    if (m->routing_id_len) send_error(c, m->routing_id, m->routing_id_len, code, what);
}

static int registered(const coord_t *c, const char *id)
{
    return c->cfg->insecure || c->io->registered(c->io->ctx, id);
}

static int handle_hello(coord_t *c, const moeh_msg_t *m, moeh_err_t *fatal)
{
    const Moeh__Hello *h = m->env->hello;
    const moeh_coord_cfg_t *cfg = c->cfg;
    char what[256];
    if (!coord_rate_allow(c, m, COORD_RATE_HELLO)) return 0; /* counted, logged once */
    if (!registered(c, m->peer)) {
        /* an old connection of a site whose key was revoked since it authenticated */
        coord_reply_error(c, m, -EACCES, "this site's key is no longer in the registry", m->peer);
        return 0;
    }
    if (!cfg->insecure && strcmp(h->site_id, m->peer) != 0) {
        snprintf(what, sizeof what,
                 "site id '%s' does not match the id registered for your key ('%s')", h->site_id,
                 m->peer);
        coord_reply_error(c, m, -EACCES, what, m->peer[0] ? m->peer : "an unauthenticated peer");
        return 0;
    }
    int rc;
    if (!c->model) /* the first site's vector widths (0: none) shape the model */
        c->vec_dim[0] = h->note_dim, c->vec_dim[1] = h->img_dim;
    if (!c->model &&
        (rc = coord_build_model(c, h->n_features, h->n_vars, h->n_steps, h->img_size, fatal)) != 0)
        return rc;
    if (h->note_dim != c->vec_dim[0] || h->img_dim != c->vec_dim[1]) {
        snprintf(what, sizeof what,
                 "your dataset has note vectors of width %u and X-ray vectors of width %u; this "
                 "federation's model takes %u and %u (0: none, tokens / pixels)",
                 h->note_dim, h->img_dim, c->vec_dim[0], c->vec_dim[1]);
        coord_reply_error(c, m, -EINVAL, what, h->site_id);
        return 0;
    }
    if (h->n_features != c->mcfg.n_static || h->n_vars != c->mcfg.n_vars ||
        h->n_steps != c->mcfg.n_steps ||
        (!c->vec_dim[1] && h->img_size != c->mcfg.img_size)) { /* X-ray vectors: no pixels */
        snprintf(what, sizeof what,
                 "your dataset has %u static features, %u hourly variables x %u h and %u px "
                 "images; this federation's model expects %zu, %zu x %zu and %zu",
                 h->n_features, h->n_vars, h->n_steps, h->img_size, c->mcfg.n_static,
                 c->mcfg.n_vars, c->mcfg.n_steps, c->mcfg.img_size);
        coord_reply_error(c, m, -EINVAL, what, h->site_id);
        return 0;
    }
    site_t *s = coord_site_by_id(c, h->site_id);
    int rejoin = s != NULL;
    if (!s) {
        if (c->n_sites == MAX_SITES) {
            coord_reply_error(c, m, -ENOSPC, "too many sites", h->site_id);
            return 0;
        }
        s = &c->sites[c->n_sites++];
        memset(s, 0, sizeof *s);
        snprintf(s->id, sizeof s->id, "%s", h->site_id);
    }
    /* a new connection: it announces its update again (an expired grant stays expired) */
    if (moeh_uploads_rejoin(c->up,
                            coord_site_index(c, s))) /* its grant went to the old connection */
        MOEH_WARN("round %u: site %s rejoined while holding an upload slot; released", c->round,
                  s->id);
    moeh_stream_rx_clear(&s->up_rx); /* its chunks came on the old connection */
    memcpy(s->rid, m->routing_id, m->routing_id_len);
    s->rid_len = m->routing_id_len;
    s->held = 0; /* a new connection: no model it was sent (the agent may be a new process) */
    s->admitted = 1;
    s->last_seen = c->now;
    s->n_train = h->n_train;
    s->n_eval = h->n_eval;
    s->n_val = h->n_val;
    coord_bounds_refresh(c);
    MOEH_INFO("site %s %s (%llu train / %llu validation / %llu test samples)", s->id,
              rejoin ? "rejoined" : "joined", (unsigned long long)h->n_train,
              (unsigned long long)h->n_val, (unsigned long long)h->n_eval);

    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Welcome w = MOEH__WELCOME__INIT;
    Moeh__ModelSpec ms = MOEH__MODEL_SPEC__INIT;
    char *cfg_json = NULL;
    moeh_err_t e2 = {0};
    if (moeh_moe_cfg_to_json(&c->mcfg, &cfg_json, &e2) != 0) {
        coord_reply_error(c, m, -ENOMEM, e2.msg, s->id);
        return 0;
    }
    ms.config_json = cfg_json;
    ms.n_experts = c->n_experts;
    ms.n_norm = c->n_norm;
    ms.n_tasks = (uint32_t)c->mcfg.n_tasks;
    ms.spec_hash = c->spec_hash;
    ms.n_params = c->p->n;
    ms.n_groups = (uint32_t)c->p->n_groups;
    w.site_id = s->id;
    w.model = &ms;
    w.heartbeat_ms = cfg->heartbeat_ms;
    w.eval_bins = cfg->eval_bins;
    moeh_env_welcome(&env, &w);
    int sent = coord_send_to(c, s, &env, NULL, 0);
    free(cfg_json);
    if (sent != 0) return 0;
    if (c->final_buf) { /* the run is over: it gets the final model (final.c) */
        coord_final_send(c, s);
        return 0;
    }
    /* A site that (re)joins while a phase is open takes part in it unless it already replied. */
    if (moeh_sa_server_step(c->sa) != MOEH_SA_OFF && !s->replied) {
        /* A secure-aggregation session has a fixed membership: a site that (re)joins now has
         * lost (or never had) its round keys, and takes part from the next phase on. */
        if (s->participant && c->n_participants) c->n_participants--;
        s->participant = 0;
        s->sa_in = 0;
        return 0;
    }
    if ((c->phase == PH_TRAIN || c->phase == PH_EVAL || c->phase == PH_VAL ||
         c->phase == PH_STATS) &&
        !s->replied) {
        if (!s->participant && !replay_admits(c, c->phase, s))
            return 0; /* a replay: this site did not take part in this phase */
        if (c->phase == PH_TRAIN && !s->participant) {
            if (c->w_used + site_weight(c, s) > c->w_cap)
                return 0; /* its weight does not fit this round's fixed-point range: next one */
            if (coord_keeps_updates(c) && c->n_participants >= c->cap_slots)
                return 0; /* no slot left for its update this round */
            c->w_used += site_weight(c, s);
            s->w_phase = coord_cap_train(c, s);
        }
        if (!s->participant) c->n_participants++;
        s->participant = 1;
        /* the model goes out to a key on a Hello at most once per phase (each RoundStart is
         * the whole model: repeated Hellos must not amplify into gigabytes) */
        if (s->hello_model_phase == c->phase_serial) {
            MOEH_WARN("round %u: site %s sent Hello again in this phase; it already got the "
                      "model on a Hello and gets it again when the next phase opens",
                      c->round, s->id);
            return 0;
        }
        s->hello_model_phase = c->phase_serial;
        send_round_start(c, s);
    }
    return 0;
}

int moeh_coord_core_on_message(moeh_coord_core_t *c, const moeh_msg_t *m, int64_t now,
                               moeh_err_t *fatal)
{
    c->now = now;
    site_t *s = m->routing_id_len ? site_by_rid(c, m->routing_id, m->routing_id_len) : NULL;
    const char *who = s ? s->id : (m->peer[0] ? m->peer : "an unadmitted peer");
    int type = m->env->type, rc;
    if (c->dp && type == MOEH__MSG_TYPE__UPDATE && m->env->update->secagg_session == 0) {
        /* a plain update shows this site's own (less) noised delta to the coordinator,
         * whether it is then accepted or not: count it before any check */
        site_t *from = s ? s : m->peer[0] ? coord_site_by_id(c, m->peer) : NULL;
        if (from) {
            from->dp_seen++;
            if ((rc = moeh_dp_ledger_write(&c->ledger, coord_dp_most_seen(c), fatal)) != 0)
                return rc;
        }
    }
    if (type == MOEH__MSG_TYPE__HELLO) return handle_hello(c, m, fatal);
    if (!s) {
        if (coord_final_left(c, m)) return 0; /* final.c: it holds the model and leaves */
        coord_reply_error(c, m, -EPERM, "not admitted: send hello first", who);
        return 0;
    }
    s->last_seen = c->now;
    switch (type) {
    case MOEH__MSG_TYPE__HEARTBEAT:
        break;
    case MOEH__MSG_TYPE__UPDATE:
        coord_handle_update(c, m, s);
        coord_grant_uploads(c); /* its slot may be free */
        break;
    case MOEH__MSG_TYPE__UPLOAD_READY:
        coord_handle_upload_ready(c, m, s);
        break;
    case MOEH__MSG_TYPE__UPLOAD_CHUNK:
        if ((rc = coord_handle_upload_chunk(c, m, s, fatal)) != 0) return rc;
        coord_grant_uploads(c); /* a completed upload frees its slot */
        break;
    case MOEH__MSG_TYPE__EVAL_RESULT:
        coord_handle_eval(c, m, s);
        break;
    case MOEH__MSG_TYPE__STATS_RESULT:
        coord_handle_stats(c, m, s);
        break;
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
        coord_handle_sa_advertise(c, m, s);
        break;
    case MOEH__MSG_TYPE__SECAGG_SHARES:
        coord_handle_sa_shares(c, m, s);
        break;
    case MOEH__MSG_TYPE__SECAGG_REVEAL:
        coord_handle_sa_reveal(c, m, s);
        break;
    case MOEH__MSG_TYPE__SECAGG_MASKED:
        coord_handle_sa_masked(c, m, s);
        coord_grant_uploads(c);
        break;
    case MOEH__MSG_TYPE__FINAL_ACK:
        coord_handle_final_ack(c, m, s); /* final.c */
        break;
    case MOEH__MSG_TYPE__ERROR:
        MOEH_WARN("site %s reports: %s", s->id, m->env->error->message);
        if (m->env->error->code == -ESTALE) s->held = 0; /* the model goes in full next time */
        break;
    case MOEH__MSG_TYPE__BYE:
        site_gone(c, s, m->env->bye->reason[0] ? m->env->bye->reason : "said bye");
        break;
    default:
        coord_reply_error(c, m, -EBADMSG, "unexpected message type for a site", who);
    }
    return 0;
}

void moeh_coord_core_on_bad_message(moeh_coord_core_t *c, const moeh_msg_t *m, int code,
                                    const char *why, int64_t now)
{
    c->now = now;
    site_t *s = m->routing_id_len ? site_by_rid(c, m->routing_id, m->routing_id_len) : NULL;
    coord_reply_error(c, m, code, why, s ? s->id : (m->peer[0] ? m->peer : "an unadmitted peer"));
}

void moeh_coord_core_registry_changed(moeh_coord_core_t *c, int64_t now)
{
    c->now = now;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->admitted || registered(c, s->id)) continue;
        send_error(c, s->rid, s->rid_len, -EACCES, "this site's key was revoked");
        site_gone(c, s, "key revoked");
    }
}

/* Connected sites an attempt needs: the quorum, and under secure aggregation 3 (2 with
 * --secagg-allow-2), since a session of fewer is refused. */
static uint32_t sites_needed(const coord_t *c)
{
    uint32_t need = c->cfg->min_sites, sa = c->cfg->secagg_allow_2 ? 2 : 3;
    return c->cfg->secagg && sa > need ? sa : need;
}

/* A phase attempt failed: with fewer than min_sites sites connected, wait for them (an outage,
 * bounded by outage_budget_ms); else retry it (up to max_retries), else the run fails with
 * `what`. */
int coord_retry_phase(coord_t *c, moeh_err_t *fatal, const char *name, const char *what)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    uint32_t up = coord_n_admitted(c), need = sites_needed(c);
    const int wait = cfg->outage_budget_ms > 0 && up < need;
    if (!wait) ++c->retries;
    moeh_report_retry_t x = {.round = c->round,
                             .phase = name,
                             .outcome = wait                            ? "wait"
                                        : c->retries > cfg->max_retries ? "failed"
                                                                        : "retry",
                             .attempt = c->retries,
                             .max_retries = cfg->max_retries,
                             .connected = up,
                             .needed = need,
                             .why = what};
    moeh_coord_report_retry(c->report, &x); /* a "retry" line of metrics.jsonl */
    if (wait) {
        MOEH_WARN("round %u %s phase: %s; only %u of the %u sites needed are connected: waiting "
                  "up to %.0f s for them (--outage-budget), no retry counted",
                  c->round, name, what, up, need, cfg->outage_budget_ms / 1000.0);
        moeh_sa_server_off(c->sa);
        c->outage_since = c->now;
        return 0;
    }
    if (c->retries > cfg->max_retries)
        return moeh_errf(fatal, -ETIMEDOUT,
                         "round %u %s phase: %s, after %u attempts (is every site "
                         "running and reachable?)",
                         c->round, name, what, c->retries);
    MOEH_WARN("round %u %s phase: %s; retry %u of %u", c->round, name, what, c->retries,
              cfg->max_retries);
    open_phase(c, c->phase);
    return 0;
}

/* Closes the current phase if it is complete or past its deadline. 0, or negative with fatal
 * set when the run cannot go on. */
static int step_phase(coord_t *c, moeh_err_t *fatal)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    uint32_t pending = 0;
    int rc;
    if (moeh_sa_server_step(c->sa) != MOEH_SA_OFF) {
        if ((rc = coord_sa_step(c, fatal)) <= 0) return rc;
    } else {
        for (size_t i = 0; i < c->n_sites; i++)
            pending += coord_waits_for(c, &c->sites[i]);
        /* a replay waits past the deadline for every invited site still connected */
        if (pending > 0 && (c->now < c->phase_deadline || c->replay)) return 0;
    }
    const char *name = coord_phase_name(c->phase);
    if (c->n_replied < cfg->min_sites) {
        char what[160];
        snprintf(what, sizeof what, "%u of the %u sites needed replied", c->n_replied,
                 cfg->min_sites);
        return coord_retry_phase(c, fatal, name, what);
    }
    if (pending > 0)
        MOEH_WARN("round %u %s phase: deadline passed, closing with %u of %u sites", c->round, name,
                  c->n_replied, c->n_participants);
    c->retries = 0;
    if (c->phase == PH_STATS) {
        coord_finish_stats(c);
        c->round++;
        c->round_t0 = c->now;
        open_phase(c, PH_TRAIN);
    } else if (c->phase == PH_TRAIN) {
        if ((rc = coord_finish_train(c, fatal)) != 0) return rc;
        open_phase(c, cfg->validate ? PH_VAL : PH_EVAL);
    } else {
        /* VALIDATE (protocol 9): the selection from the validation split's sums first, then
         * the test split's metrics, which keep the test figures of a round just selected */
        if (c->phase == PH_VAL) coord_finish_val(c); /* select.c: the best round so far */
        coord_finish_eval(c);
        /* a checkpoint that cannot be written (no descriptor left, disk full: the old one
         * stays) is written again after the next round; only the last round's is fatal */
        moeh_err_t ck = {0};
        if ((rc = coord_save_checkpoint(c, &ck)) != 0) {
            if (c->round == cfg->rounds) return moeh_errf(fatal, rc, "%s", ck.msg);
            MOEH_ERROR("round %u: %s; the run goes on and writes it again after round %u (a "
                       "--resume now would start from the previous checkpoint)",
                       c->round, ck.msg, c->round + 1);
        } else if (c->io->round_saved) {
            c->io->round_saved(c->io->ctx, c->round);
        }
        if (c->round == cfg->rounds || coord_select_stop(c)) {
            if (c->round < cfg->rounds)
                MOEH_INFO("round %u: %u rounds without improvement of the validation %s "
                          "(--patience %u): stopping; the selected round is %u",
                          c->round, c->sel_bad, cfg->select_by_loss ? "loss" : "AUROC",
                          cfg->patience, c->sel_round);
            c->phase = PH_DONE;
        } else {
            c->round++;
            c->round_t0 = c->now;
            open_phase(c, PH_TRAIN);
        }
    }
    return 0;
}

static void heartbeat_and_liveness(coord_t *c)
{
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (s->admitted && c->now - s->last_seen > (int64_t)c->cfg->heartbeat_timeout_ms)
            site_gone(c, s, "no heartbeat");
    }
    if (c->now - c->last_hb < (int64_t)c->cfg->heartbeat_ms) return;
    c->last_hb = c->now;
    c->hb_seq++;
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    hb.seq = c->hb_seq;
    moeh_env_heartbeat(&env, &hb);
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->admitted) continue;
        int rc = send_env(c, s->rid, s->rid_len, &env);
        if (rc == -EHOSTUNREACH)
            site_gone(c, s, "connection closed");
        else if (rc == -EAGAIN)
            site_gone(c, s, "over its outbound budget: it does not read what it is sent");
    }
}

/* An outage (coord_retry_phase): the phase starts again once min_sites sites are connected;
 * the run fails when that takes longer than outage_budget_ms. */
static int outage_tick(coord_t *c, moeh_err_t *fatal)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    const char *name = coord_phase_name(c->phase);
    uint32_t up = coord_n_admitted(c), need = sites_needed(c);
    int64_t waited = c->now - c->outage_since;
    if (up >= need && replay_missing(c, c->phase) == 0) {
        MOEH_INFO("round %u %s phase: %u sites connected again after %.1f s: starting the "
                  "phase again",
                  c->round, name, up, waited / 1000.0);
        c->outage_since = -1;
        open_phase(c, c->phase);
        return 0;
    }
    if (waited > (int64_t)cfg->outage_budget_ms)
        return moeh_errf(fatal, -ETIMEDOUT,
                         "round %u %s phase: only %u of the %u sites needed were connected for "
                         "%.0f s, longer than --outage-budget (is every site running and "
                         "reachable?)",
                         c->round, name, up, need, waited / 1000.0);
    return 0;
}

int moeh_coord_core_tick(moeh_coord_core_t *c, int64_t now, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    c->now = now;
    heartbeat_and_liveness(c);
    coord_expire_grants(c);
    coord_grant_uploads(c); /* slots freed by sites gone or grants expired */
    if (c->outage_since >= 0 && c->phase != PH_WAIT && c->phase != PH_DONE)
        return outage_tick(c, err);
    if (c->phase != PH_WAIT) return c->phase == PH_DONE ? 0 : step_phase(c, err);
    uint32_t n = coord_n_admitted(c);
    int64_t waited = c->now - c->wait_start;
    if (c->round >= cfg->rounds || coord_select_stop(c)) { /* resumed a run that had finished */
        c->phase = PH_DONE;
        return 0;
    }
    if (n >= c->wait_target || (waited >= cfg->start_timeout_ms && n >= cfg->min_sites)) {
        if (!c->have_norm) {
            open_phase(c, PH_STATS);
        } else {
            c->round++;
            c->round_t0 = c->now;
            open_phase(c, PH_TRAIN);
        }
    } else if (waited >= cfg->start_timeout_ms) {
        return moeh_errf(err, -ETIMEDOUT,
                         "only %u of the %u sites needed joined within %.0f s (--join-window; "
                         "are the agents running, with registered keys?)",
                         n, cfg->min_sites, cfg->start_timeout_ms / 1000.0);
    }
    return 0;
}

int moeh_coord_core_create(const moeh_coord_cfg_t *cfg, const moeh_coord_io_t *io,
                           moeh_coord_core_t **out, moeh_err_t *err)
{
    int rc;
    *out = NULL;
    coord_t *c = calloc(1, sizeof *c);
    if (!c) return moeh_errf(err, -ENOMEM, "out of memory");
    c->cfg = cfg;
    c->outage_since = -1;
    c->io = io;
    if ((rc = moeh_coord_cfg_check(cfg, &c->sopt, err))) goto fail;
    if (cfg->secagg && (rc = moeh_crypto_init())) {
        rc = moeh_errf(err, rc, "libsodium failed to initialise");
        goto fail;
    }
    if (cfg->secagg)
        MOEH_INFO("secure aggregation: the coordinator learns only sums; per-site metrics are "
                  "not available to it (each site logs its own)");
    c->dp = cfg->dp_clip > 0;
    c->unit_weight = c->dp || cfg->unweighted;
    c->quant_range = cfg->delta_clip;
    if (c->dp) {
        c->quant_range = moeh_dp_range(cfg->dp_clip, cfg->dp_noise, cfg->min_sites);
        if (!isfinite(c->quant_range)) {
            rc = moeh_errf(err, -EINVAL, "--dp-clip %g with --dp-noise %g is too large",
                           (double)cfg->dp_clip, (double)cfg->dp_noise);
            goto fail;
        }
        MOEH_INFO("DP-FedAvg: every site clips its update to L2 norm %g and adds noise of std "
                  "%.4g per coordinate, so that the sum over >= %u sites (--min-sites) has noise "
                  "multiplier %g; epsilon reported at delta %g; unweighted aggregation; update "
                  "range +-%g per coordinate (--delta-clip is not used)",
                  (double)cfg->dp_clip,
                  moeh_dp_site_std(cfg->dp_clip, cfg->dp_noise, cfg->min_sites), cfg->min_sites,
                  (double)cfg->dp_noise, (double)cfg->dp_delta, (double)c->quant_range);
        if (cfg->dp_noise == 0)
            MOEH_WARN("--dp-noise 0: updates are clipped but not noised; epsilon is unbounded");
    }
    if ((rc = moeh_mkdir_p(cfg->out_dir, err))) goto fail;
    if ((rc = moeh_coord_rundir_prepare(cfg->out_dir, cfg->resume, cfg->new_run, err))) goto fail;
    if ((rc = moeh_coord_report_config(cfg, err))) goto fail;
    if (moeh_path_join(c->ckpt_path, sizeof c->ckpt_path, cfg->out_dir, "checkpoint.moeh")) {
        rc = moeh_errf(err, -ENAMETOOLONG, "--out is too long");
        goto fail;
    }
    size_t n_stale; /* badfiles: temp checkpoints of killed writes */
    if ((rc = moeh_ckpt_remove_stale(c->ckpt_path, &n_stale, err))) goto fail;
    if (cfg->resume && (rc = coord_load_checkpoint(c, err))) goto fail;
    if (moeh_dp_ledger_init(&c->ledger, cfg->dp_clip, cfg->dp_noise, cfg->dp_delta, cfg->min_sites,
                            cfg->out_dir)) {
        rc = moeh_errf(err, -ENAMETOOLONG, "--out is too long");
        goto fail;
    }
    /* resumed: the releases so far; a new run: none, and no ledger of an earlier run in --out */
    if ((rc = cfg->resume ? moeh_dp_ledger_load(&c->ledger, err)
                          : moeh_dp_ledger_start(&c->ledger, err)))
        goto fail;
    if (cfg->data_shape) { /* pinned shapes: the model exists before any site says hello */
        unsigned v[4];
        char extra;
        if (sscanf(cfg->data_shape, "%u,%u,%u,%u%c", &v[0], &v[1], &v[2], &v[3], &extra) != 4 ||
            v[0] > (1u << 20) || v[1] > 4096 || v[2] == 0 || v[2] > 1000 || v[3] > 1024) {
            rc = moeh_errf(err, -EINVAL,
                           "--data-shape '%s': expected STATIC,VARS,HOURS,IMAGE (e.g. "
                           "35,33,48,64)",
                           cfg->data_shape);
            goto fail;
        }
        if (c->model) { /* resumed: the checkpoint must agree */
            if (c->mcfg.n_static != v[0] || c->mcfg.n_vars != v[1] || c->mcfg.n_steps != v[2] ||
                c->mcfg.img_size != v[3]) {
                rc = moeh_errf(err, -EINVAL,
                               "--data-shape %s differs from the checkpoint's (%zu,%zu,%zu,%zu)",
                               cfg->data_shape, c->mcfg.n_static, c->mcfg.n_vars, c->mcfg.n_steps,
                               c->mcfg.img_size);
                goto fail;
            }
        } else if ((rc = coord_build_model(c, v[0], v[1], v[2], v[3], err))) {
            goto fail;
        }
    }
    size_t dropped = 0;
    if (cfg->resume && (rc = moeh_coord_report_resume_at(cfg->out_dir, c->round, &dropped, err)))
        goto fail;
    if (dropped)
        MOEH_INFO("--resume from round %u: %zu line(s) of metrics.jsonl written after that "
                  "checkpoint (the interrupted round) dropped; the round runs again",
                  c->round, dropped);
    if ((rc = moeh_coord_report_open(cfg->out_dir, cfg->resume, (uint32_t)cfg->model.n_tasks,
                                     cfg->print_table ? (io->table ? io->table : stdout) : NULL,
                                     &c->report, err)))
        goto fail;
    if (!(c->sites = calloc(MAX_SITES, sizeof *c->sites)) ||
        moeh_uploads_create(cfg->upload_slots, cfg->heartbeat_timeout_ms, MAX_SITES, &c->up) ||
        moeh_sa_server_create(&c->sa)) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto fail;
    }
    c->phase = PH_WAIT;
    *out = c;
    return 0;
fail:
    moeh_coord_core_destroy(&c);
    return rc;
}

void moeh_coord_core_destroy(moeh_coord_core_t **self_p)
{
    if (!self_p || !*self_p) return;
    coord_t *c = *self_p;
    moeh_coord_report_destroy(&c->report);
    moeh_fedavg_free(&c->agg);
    moeh_sa_server_destroy(&c->sa);
    moeh_uploads_destroy(&c->up);
    moeh_shared_frame_destroy(&c->params_frame);
    moeh_moe_destroy(&c->model);
    free(c->hist);
    free(c->norm);
    free(c->stats_sum);
    free(c->gate_sum);
    free(c->vsum);
    free(c->vtmp);
    free(c->delta);
    free(c->sm);
    free(c->sv);
    free(c->site_delta);
    free(c->site_w);
    free(c->scratch);
    free(c->sel_w);
    moeh_shared_frame_destroy(&c->final_frame);
    free(c->final_buf);
    for (size_t i = 0; c->sites && i < c->n_sites; i++)
        moeh_stream_rx_clear(&c->sites[i].up_rx);
    free(c->sites);
    free(c);
    *self_p = NULL;
}

void moeh_coord_core_start(moeh_coord_core_t *c, uint32_t registered, int64_t now)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    c->now = c->wait_start = now;
    c->phase = PH_WAIT;
    c->wait_target = cfg->wait_sites ? cfg->wait_sites : (registered ? registered : cfg->min_sites);
    if (c->wait_target < cfg->min_sites) c->wait_target = cfg->min_sites;
}

uint32_t moeh_coord_core_wait_target(const moeh_coord_core_t *c)
{
    return c->wait_target;
}

const moeh_wire_limits_t *moeh_coord_core_limits(const moeh_coord_core_t *c)
{
    return &c->lim;
}

void moeh_coord_core_bye_all(moeh_coord_core_t *c, Moeh__ByeStatus status, const char *reason)
{
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = (char *)reason;
    bye.status = status;
    moeh_env_bye(&env, &bye);
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].admitted) send_env(c, c->sites[i].rid, c->sites[i].rid_len, &env);
}

moeh_coord_phase_t moeh_coord_core_phase(const moeh_coord_core_t *c)
{
    return c->phase;
}

uint32_t moeh_coord_core_round(const moeh_coord_core_t *c)
{
    return c->round;
}

uint32_t moeh_coord_core_replied(const moeh_coord_core_t *c)
{
    return c->n_replied;
}

uint32_t moeh_coord_core_participants(const moeh_coord_core_t *c)
{
    return c->n_participants;
}

int moeh_coord_core_admitted(const moeh_coord_core_t *c, const char *site_id)
{
    const site_t *s = coord_site_by_id(c, site_id);
    return s && s->admitted;
}
