/* coordinator.c - the coordinator's state machine (see coordinator.h and
 * docs/architecture.md for the messages of one round in order).
 *
 * Phases: WAIT (sites join) -> for each round: TRAIN (RoundStart{TRAIN} + params to every
 * admitted site; Updates folded into a running per-group FedAvg sum) -> EVAL (RoundStart
 * {EVALUATE} with the new model; score histograms summed) -> next round or DONE.
 * A phase closes when every live participant replied or at its deadline; it needs min_sites
 * replies, else it is retried (up to max_retries) and then the run fails with a clear message.
 * Nothing a site sends touches model state before it passed moeh_wire_decode() and the
 * session checks here (sender admitted, participant, round and model version current, first
 * reply). */
#include "coordinator.h"

#include "aggregate.h"
#include "checkpoint.h"
#include "keys.h"
#include "moeh_hist.h"
#include "moeh_mlp.h"
#include "npy.h"
#include "quant.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_SITES 4096

typedef struct {
    char id[MOEH_SITE_ID_MAX + 1];
    uint8_t rid[256];
    size_t rid_len;
    int admitted;   /* welcomed and not gone */
    int participant, replied;
    int64_t last_seen;
    uint64_t n_train, n_eval;
    double train_loss;
    uint64_t n_samples;
} site_t;

typedef enum { PH_WAIT, PH_TRAIN, PH_EVAL, PH_DONE } phase_t;

typedef struct {
    const moeh_coord_cfg_t *cfg;
    void *zctx, *router;
    moeh_zap_t *zap;
    moeh_keypair_t *kp;
    site_t *sites;
    size_t n_sites;
    uint32_t n_in;
    moeh_mlp_t *model;
    moeh_params_t *p;
    uint64_t spec_hash, model_version, hb_seq;
    moeh_wire_limits_t lim;
    moeh_fedavg_t agg;
    uint64_t *hist; /* (n_tasks, 2, bins) summed over sites */
    double eval_loss_sum;
    uint64_t eval_n_labels;
    phase_t phase;
    uint32_t round, retries, n_participants, n_replied;
    uint32_t wait_target; /* start as soon as this many sites joined */
    int64_t phase_deadline, wait_start, round_t0, last_hb;
    double round_train_loss; /* sample-weighted mean over the sites that replied */
    double w_cap, w_used;    /* bound on this round's total weight, and weight admitted */
    double quant_scale;      /* fixed-point scale of this round's updates */
    uint32_t round_train_sites;
    FILE *metrics;
    int table_header_done;
    char ckpt_path[4096];
    const char *task_names[16];
    char task_buf[16][16];
} coord_t;

void moeh_coord_cfg_defaults(moeh_coord_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->bind = "tcp://*:7400";
    c->rounds = 5;
    c->min_sites = 1;
    c->wait_sites = 0;
    c->start_timeout_ms = 60000;
    c->phase_deadline_ms = 60000;
    c->max_retries = 2;
    c->heartbeat_ms = 1000;
    c->heartbeat_timeout_ms = 5000;
    c->n_in = 0;
    c->n_hidden = 32;
    c->n_tasks = 3;
    c->seed = 1;
    c->local_epochs = 1;
    c->batch_size = 64;
    c->lr = 1e-3f;
    c->weight_decay = 1e-4f;
    c->clip = 5.0f;
    c->delta_clip = 1.0f;
    c->eval_bins = 1000;
    c->out_dir = ".";
    c->ready_fd = -1;
}

static site_t *site_by_rid(coord_t *c, const uint8_t *rid, size_t len)
{
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].admitted && c->sites[i].rid_len == len &&
            memcmp(c->sites[i].rid, rid, len) == 0)
            return &c->sites[i];
    return NULL;
}

static site_t *site_by_id(coord_t *c, const char *id)
{
    for (size_t i = 0; i < c->n_sites; i++)
        if (strcmp(c->sites[i].id, id) == 0)
            return &c->sites[i];
    return NULL;
}

static uint32_t n_admitted(const coord_t *c)
{
    uint32_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        n += c->sites[i].admitted != 0;
    return n;
}

static void site_gone(coord_t *c, site_t *s, const char *why)
{
    if (!s->admitted)
        return;
    s->admitted = 0;
    MOEH_WARN("site %s is gone (%s)", s->id, why);
    if (c->metrics) {
        fprintf(c->metrics, "{\"event\":\"site_gone\",\"round\":%u,\"site\":\"%s\",\"why\":\"%s\"}\n",
                c->round, s->id, why);
        fflush(c->metrics);
    }
}

/* Sends to a site; a peer that vanished (ROUTER_MANDATORY) is marked gone. */
static int send_to(coord_t *c, site_t *s, Moeh__Envelope *env, const moeh_frame_t *frames,
                   size_t n_frames)
{
    int rc = moeh_wire_send(c->router, s->rid, s->rid_len, env, frames, n_frames);
    if (rc == -EHOSTUNREACH)
        site_gone(c, s, "connection closed");
    else if (rc)
        MOEH_WARN("send to site %s failed: %s", s->id, moeh_strerror(rc));
    return rc;
}

static int create_model(coord_t *c, uint32_t n_in, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    moeh_mlp_cfg_t mc = {.n_in = n_in, .n_hidden = cfg->n_hidden, .n_tasks = cfg->n_tasks,
                         .max_batch = 1, .seed = cfg->seed};
    int rc = moeh_mlp_create(&mc, &c->model);
    if (rc)
        return moeh_errf(err, rc, "cannot create the model: %s", moeh_strerror(rc));
    c->p = moeh_mlp_params(c->model);
    c->n_in = n_in;
    c->spec_hash = moeh_params_spec_hash(c->p);
    c->lim = (moeh_wire_limits_t){.n_params = c->p->n, .n_groups = (uint32_t)c->p->n_groups,
                                  .n_tasks = cfg->n_tasks, .eval_bins = cfg->eval_bins};
    if ((rc = moeh_fedavg_init(&c->agg, c->p->n, c->p->n_groups, c->p->group_off,
                               c->p->group_len)))
        return moeh_errf(err, rc, "cannot allocate the aggregation buffer");
    c->hist = calloc((size_t)cfg->n_tasks * 2 * cfg->eval_bins, sizeof(uint64_t));
    if (!c->hist)
        return moeh_errf(err, -ENOMEM, "out of memory");
    MOEH_INFO("model: mlp %u -> %u -> %u -> %u tasks, %zu parameters in %zu groups", n_in,
              cfg->n_hidden, cfg->n_hidden, cfg->n_tasks, c->p->n, c->p->n_groups);
    return 0;
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
    rc.seed = cfg->seed * 1000003u + c->round;
    rc.delta_clip = cfg->delta_clip;
    rc.quant_scale = c->quant_scale;
    rs.round = c->round;
    rs.model_version = c->model_version;
    rs.task = c->phase == PH_TRAIN ? MOEH__ROUND_TASK__TRAIN : MOEH__ROUND_TASK__EVALUATE;
    int64_t left = c->phase_deadline - moeh_now_ms();
    rs.deadline_ms = left > 1 ? (uint32_t)left : 1;
    rs.config = &rc;
    rs.n_participants = c->n_participants;
    env.type = MOEH__MSG_TYPE__ROUND_START;
    env.body_case = MOEH__ENVELOPE__BODY_ROUND_START;
    env.round_start = &rs;
    moeh_frame_t f = {.name = "params", .dtype = MOEH__DTYPE__F32, .data = c->p->w,
                      .count = c->p->n};
    send_to(c, s, &env, &f, 1);
}

static void open_phase(coord_t *c, phase_t ph)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    c->phase = ph;
    c->phase_deadline = moeh_now_ms() + c->cfg->phase_deadline_ms;
    c->n_participants = c->n_replied = 0;
    if (ph == PH_TRAIN) {
        moeh_fedavg_reset(&c->agg);
        c->round_train_loss = 0;
        c->round_train_sites = 0;
        /* Twice the participants' weight, so that late joiners fit; see proto/quant.h. */
        c->w_used = 0;
        for (size_t i = 0; i < c->n_sites; i++)
            if (c->sites[i].admitted)
                c->w_used += (double)c->sites[i].n_train;
        c->w_cap = 2.0 * (c->w_used > 1 ? c->w_used : 1);
        if (c->w_cap > 4294967295.0) /* weights are summed in 32-bit words too */
            c->w_cap = 4294967295.0;
        c->quant_scale = moeh_quant_scale(cfg->delta_clip, c->w_cap);
    } else {
        memset(c->hist, 0,
               (size_t)c->cfg->n_tasks * 2 * c->cfg->eval_bins * sizeof(uint64_t));
        c->eval_loss_sum = 0;
        c->eval_n_labels = 0;
    }
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        s->participant = s->admitted;
        s->replied = 0;
        c->n_participants += s->participant != 0;
    }
    MOEH_INFO("round %u: %s phase with %u sites (model version %llu)", c->round,
              ph == PH_TRAIN ? "train" : "eval", c->n_participants,
              (unsigned long long)c->model_version);
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].participant)
            send_round_start(c, &c->sites[i]);
}

static void reply_error(coord_t *c, const moeh_msg_t *m, int code, const char *what,
                        const char *who)
{
    MOEH_WARN("refused a message from %s: %s", who, what);
    if (m->routing_id_len)
        moeh_wire_send_error(c->router, m->routing_id, m->routing_id_len, code, what);
}

static void handle_hello(coord_t *c, moeh_msg_t *m, moeh_err_t *fatal)
{
    const Moeh__Hello *h = m->env->hello;
    const moeh_coord_cfg_t *cfg = c->cfg;
    char what[256];
    if (!cfg->insecure && strcmp(h->site_id, m->peer) != 0) {
        snprintf(what, sizeof what,
                 "site id '%s' does not match the id registered for your key ('%s')",
                 h->site_id, m->peer);
        reply_error(c, m, -EACCES, what, m->peer[0] ? m->peer : "an unauthenticated peer");
        return;
    }
    if (!c->model) {
        uint32_t n_in = cfg->n_in ? cfg->n_in : h->n_features;
        if (create_model(c, n_in, fatal) != 0)
            return;
    }
    if (h->n_features != c->n_in) {
        snprintf(what, sizeof what,
                 "your dataset has %u features per sample; this federation's model expects %u",
                 h->n_features, c->n_in);
        reply_error(c, m, -EINVAL, what, h->site_id);
        return;
    }
    site_t *s = site_by_id(c, h->site_id);
    int rejoin = s != NULL;
    if (!s) {
        if (c->n_sites == MAX_SITES) {
            reply_error(c, m, -ENOSPC, "too many sites", h->site_id);
            return;
        }
        s = &c->sites[c->n_sites++];
        memset(s, 0, sizeof *s);
        snprintf(s->id, sizeof s->id, "%s", h->site_id);
    }
    memcpy(s->rid, m->routing_id, m->routing_id_len);
    s->rid_len = m->routing_id_len;
    s->admitted = 1;
    s->last_seen = moeh_now_ms();
    s->n_train = h->n_train;
    s->n_eval = h->n_eval;
    MOEH_INFO("site %s %s (%llu train / %llu eval samples)", s->id, rejoin ? "rejoined" : "joined",
              (unsigned long long)h->n_train, (unsigned long long)h->n_eval);

    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Welcome w = MOEH__WELCOME__INIT;
    Moeh__ModelSpec ms = MOEH__MODEL_SPEC__INIT;
    ms.kind = "mlp";
    ms.n_in = c->n_in;
    ms.n_hidden = cfg->n_hidden;
    ms.n_tasks = cfg->n_tasks;
    ms.seed = cfg->seed;
    ms.spec_hash = c->spec_hash;
    ms.n_params = c->p->n;
    ms.n_groups = (uint32_t)c->p->n_groups;
    w.site_id = s->id;
    w.model = &ms;
    w.heartbeat_ms = cfg->heartbeat_ms;
    w.eval_bins = cfg->eval_bins;
    env.type = MOEH__MSG_TYPE__WELCOME;
    env.body_case = MOEH__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    if (send_to(c, s, &env, NULL, 0) != 0)
        return;
    /* A site that (re)joins while a phase is open takes part in it unless it already replied. */
    if ((c->phase == PH_TRAIN || c->phase == PH_EVAL) && !s->replied) {
        if (c->phase == PH_TRAIN && !s->participant) {
            if (c->w_used + (double)s->n_train > c->w_cap)
                return; /* its weight does not fit this round's fixed-point range: next one */
            c->w_used += (double)s->n_train;
        }
        if (!s->participant)
            c->n_participants++;
        s->participant = 1;
        send_round_start(c, s);
    }
}

/* Session checks shared by Update and EvalResult: phase, participant, first reply, round and
 * model version. Returns NULL (having replied with an Error) if the message must be dropped. */
static int session_ok(coord_t *c, moeh_msg_t *m, site_t *s, phase_t want, uint32_t round,
                      uint64_t version)
{
    char what[200];
    if (c->phase != want || !s->participant) {
        snprintf(what, sizeof what, "%s for round %u arrived outside its phase",
                 moeh_msg_type_name(m->env->type), round);
    } else if (s->replied) {
        snprintf(what, sizeof what, "duplicate %s for round %u", moeh_msg_type_name(m->env->type),
                 round);
    } else if (round != c->round || version != c->model_version) {
        snprintf(what, sizeof what, "stale %s: round %u model %llu, current round %u model %llu",
                 moeh_msg_type_name(m->env->type), round, (unsigned long long)version, c->round,
                 (unsigned long long)c->model_version);
    } else {
        return 1;
    }
    reply_error(c, m, -ESTALE, what, s->id);
    return 0;
}

static void handle_update(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__Update *u = m->env->update;
    if (!session_ok(c, m, s, PH_TRAIN, u->round, u->model_version))
        return;
    /* Without secure aggregation every word can be checked against the site's declared
     * weight, so a broken or hostile site cannot push the sum out of range. */
    const uint8_t *words = m->frames[0].data;
    char what[160];
    for (size_t g = 0; g < c->p->n_groups; g++) {
        uint32_t w;
        memcpy(&w, words + 4 * (c->p->n + g), 4);
        if (w > s->n_train) {
            snprintf(what, sizeof what, "update: group %zu weight %u exceeds the %llu training "
                                        "samples this site declared",
                     g, w, (unsigned long long)s->n_train);
            reply_error(c, m, -ERANGE, what, s->id);
            return;
        }
        double bound = c->quant_scale * (double)w * c->cfg->delta_clip + 1.0;
        for (size_t i = c->p->group_off[g]; i < c->p->group_off[g] + c->p->group_len[g]; i++) {
            uint32_t q;
            memcpy(&q, words + 4 * i, 4);
            if (fabs((double)moeh_quant_signed(q)) > bound) {
                snprintf(what, sizeof what, "update: word %zu is outside the range its group's "
                                            "weight and the delta clip allow", i);
                reply_error(c, m, -ERANGE, what, s->id);
                return;
            }
        }
    }
    moeh_fedavg_add(&c->agg, words);
    s->replied = 1;
    s->train_loss = u->train_loss;
    s->n_samples = u->n_samples;
    c->n_replied++;
    c->round_train_loss += u->train_loss * (double)u->n_samples;
    c->round_train_sites++;
    if (c->metrics) {
        fprintf(c->metrics,
                "{\"event\":\"site_update\",\"round\":%u,\"site\":\"%s\",\"train_loss\":%.6f,"
                "\"n_samples\":%llu,\"steps\":%u}\n",
                c->round, s->id, u->train_loss, (unsigned long long)u->n_samples, u->steps);
        fflush(c->metrics);
    }
    MOEH_DEBUG("round %u: update from %s (loss %.4f)", c->round, s->id, u->train_loss);
}

static void handle_eval(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__EvalResult *r = m->env->eval_result;
    if (!session_ok(c, m, s, PH_EVAL, r->round, r->model_version))
        return;
    const uint8_t *p = m->frames[0].data;
    size_t n = (size_t)r->n_tasks * 2 * r->n_bins;
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        c->hist[i] += v;
    }
    c->eval_loss_sum += r->loss_sum;
    c->eval_n_labels += r->n_labels;
    s->replied = 1;
    c->n_replied++;
}

static void handle_message(coord_t *c, moeh_err_t *fatal)
{
    for (int budget = 0; budget < 256; budget++) {
        moeh_msg_t m;
        moeh_err_t err = {0};
        int rc = moeh_wire_recv(c->router, 1, &c->lim, &m, &err);
        if (rc == -EAGAIN) {
            moeh_msg_clear(&m);
            return;
        }
        site_t *s = m.routing_id_len ? site_by_rid(c, m.routing_id, m.routing_id_len) : NULL;
        const char *who = s ? s->id : (m.peer[0] ? m.peer : "an unadmitted peer");
        if (rc) {
            reply_error(c, &m, rc, err.msg, who);
            moeh_msg_clear(&m);
            continue;
        }
        int type = m.env->type;
        if (type == MOEH__MSG_TYPE__HELLO) {
            handle_hello(c, &m, fatal);
        } else if (!s) {
            reply_error(c, &m, -EPERM, "not admitted: send hello first", who);
        } else {
            s->last_seen = moeh_now_ms();
            switch (type) {
            case MOEH__MSG_TYPE__HEARTBEAT:
                break;
            case MOEH__MSG_TYPE__UPDATE:
                handle_update(c, &m, s);
                break;
            case MOEH__MSG_TYPE__EVAL_RESULT:
                handle_eval(c, &m, s);
                break;
            case MOEH__MSG_TYPE__ERROR:
                MOEH_WARN("site %s reports: %s", s->id, m.env->error->message);
                break;
            case MOEH__MSG_TYPE__BYE:
                site_gone(c, s, m.env->bye->reason[0] ? m.env->bye->reason : "said bye");
                break;
            default:
                reply_error(c, &m, -EBADMSG, "unexpected message type for a site", who);
            }
        }
        moeh_msg_clear(&m);
        if (fatal->msg[0])
            return;
    }
}

static const char *task_name(coord_t *c, uint32_t t)
{
    return c->task_names[t];
}

static void finish_train(coord_t *c)
{
    size_t updated = moeh_fedavg_apply(&c->agg, c->p->w, c->quant_scale);
    c->model_version++;
    double loss = 0;
    uint64_t ns = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].replied)
            ns += c->sites[i].n_samples;
    loss = ns ? c->round_train_loss / (double)ns : NAN;
    c->round_train_loss = loss;
    if (c->metrics) {
        fprintf(c->metrics,
                "{\"event\":\"train\",\"round\":%u,\"sites\":%u,\"participants\":%u,"
                "\"train_loss\":%.6f,\"groups_updated\":%zu,\"model_version\":%llu}\n",
                c->round, c->n_replied, c->n_participants, loss, updated,
                (unsigned long long)c->model_version);
        fflush(c->metrics);
    }
}

static void finish_eval(coord_t *c)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    double auroc[16], mean = 0;
    int n_ok = 0;
    for (uint32_t t = 0; t < cfg->n_tasks; t++) {
        const uint64_t *neg = c->hist + (size_t)t * 2 * cfg->eval_bins;
        auroc[t] = moeh_hist_auroc(neg, neg + cfg->eval_bins, cfg->eval_bins);
        if (!isnan(auroc[t])) {
            mean += auroc[t];
            n_ok++;
        }
    }
    mean = n_ok ? mean / n_ok : NAN;
    double eval_loss = c->eval_n_labels ? c->eval_loss_sum / (double)c->eval_n_labels : NAN;
    double secs = (double)(moeh_now_ms() - c->round_t0) / 1000.0;
    if (c->metrics) {
        fprintf(c->metrics,
                "{\"event\":\"eval\",\"round\":%u,\"sites\":%u,\"train_loss\":%.6f,"
                "\"test_loss\":%.6f,\"auroc_mean\":%.6f,\"seconds\":%.3f",
                c->round, c->n_replied, c->round_train_loss, eval_loss, mean, secs);
        for (uint32_t t = 0; t < cfg->n_tasks; t++)
            fprintf(c->metrics, ",\"auroc_%s\":%.6f", task_name(c, t), auroc[t]);
        fprintf(c->metrics, "}\n");
        for (uint32_t t = 0; t < cfg->n_tasks; t++)
            fprintf(c->metrics,
                    "{\"event\":\"task\",\"round\":%u,\"task\":\"%s\",\"auroc\":%.6f}\n", c->round,
                    task_name(c, t), auroc[t]);
        fflush(c->metrics);
    }
    if (cfg->print_table) {
        if (!c->table_header_done) {
            c->table_header_done = 1;
            printf("%5s %7s %10s %10s", "round", "sites", "train_loss", "test_loss");
            for (uint32_t t = 0; t < cfg->n_tasks && t < 4; t++)
                printf(" %11s", task_name(c, t));
            printf(" %10s %7s\n", "auroc_mean", "time_s");
        }
        char sites[32];
        snprintf(sites, sizeof sites, "%u/%u", c->n_replied, c->n_participants);
        printf("%5u %7s %10.4f %10.4f", c->round, sites, c->round_train_loss, eval_loss);
        for (uint32_t t = 0; t < cfg->n_tasks && t < 4; t++)
            printf(" %11.4f", auroc[t]);
        printf(" %10.4f %7.3f\n", mean, secs);
        fflush(stdout);
    }
    MOEH_INFO("round %u done: %u sites, train loss %.4f, test loss %.4f, mean AUROC %.4f",
              c->round, c->n_replied, c->round_train_loss, eval_loss, mean);
}

/* Writes the state that --resume needs, atomically. Failing to is fatal: the run promised it. */
static int save_checkpoint(coord_t *c, moeh_err_t *fatal)
{
    moeh_ckpt_t k = {.round = c->round, .model_version = c->model_version,
                     .spec_hash = c->spec_hash, .n_in = c->n_in, .n_hidden = c->cfg->n_hidden,
                     .n_tasks = c->cfg->n_tasks, .seed = c->cfg->seed, .n_params = c->p->n,
                     .n_groups = c->p->n_groups, .n_arrays = 1};
    snprintf(k.names[0], sizeof k.names[0], "params");
    k.arrays[0] = c->p->w;
    moeh_err_t err = {0};
    int rc = moeh_ckpt_save(c->ckpt_path, &k, &err);
    if (rc)
        moeh_errf(fatal, rc, "cannot write the checkpoint: %s", err.msg);
    return rc;
}

/* Restores the model and round counter from the checkpoint (--resume). */
static int load_checkpoint(coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    moeh_ckpt_t k;
    int rc = moeh_ckpt_load(c->ckpt_path, &k, err);
    if (rc)
        return rc;
    float *params = moeh_ckpt_array(&k, "params");
    if (!params) {
        rc = moeh_errf(err, -EBADMSG, "%s: no params array", c->ckpt_path);
        goto out;
    }
    if (k.n_hidden != cfg->n_hidden || k.n_tasks != cfg->n_tasks || k.seed != cfg->seed ||
        (cfg->n_in && k.n_in != cfg->n_in)) {
        rc = moeh_errf(err, -EINVAL,
                       "%s was made with n_in %u, hidden %u, tasks %u, seed %llu; this run has "
                       "n_in %u, hidden %u, tasks %u, seed %llu",
                       c->ckpt_path, k.n_in, k.n_hidden, k.n_tasks, (unsigned long long)k.seed,
                       cfg->n_in, cfg->n_hidden, cfg->n_tasks, (unsigned long long)cfg->seed);
        goto out;
    }
    if ((rc = create_model(c, k.n_in, err)))
        goto out;
    if (c->spec_hash != k.spec_hash || c->p->n != k.n_params) {
        rc = moeh_errf(err, -EINVAL, "%s: the model layout differs from this build's", c->ckpt_path);
        goto out;
    }
    memcpy(c->p->w, params, k.n_params * sizeof(float));
    c->round = k.round;
    c->model_version = k.model_version;
    MOEH_INFO("resuming after round %u (model version %llu) from %s", k.round,
              (unsigned long long)k.model_version, c->ckpt_path);
out:
    moeh_ckpt_free(&k);
    return rc;
}

/* Closes the current phase if it is complete or past its deadline. Sets fatal on failure. */
static void step_phase(coord_t *c, moeh_err_t *fatal)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    int64_t now = moeh_now_ms();
    uint32_t pending = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        pending += c->sites[i].participant && c->sites[i].admitted && !c->sites[i].replied;
    if (pending > 0 && now < c->phase_deadline)
        return;
    const char *name = c->phase == PH_TRAIN ? "train" : "eval";
    if (c->n_replied < cfg->min_sites) {
        if (++c->retries > cfg->max_retries) {
            moeh_errf(fatal, -ETIMEDOUT,
                      "round %u %s phase: %u of the %u sites needed replied, after %u attempts "
                      "(is every site running and reachable?)",
                      c->round, name, c->n_replied, cfg->min_sites, c->retries);
            return;
        }
        MOEH_WARN("round %u %s phase: only %u of %u sites needed replied; retry %u of %u",
                  c->round, name, c->n_replied, cfg->min_sites, c->retries, cfg->max_retries);
        open_phase(c, c->phase);
        return;
    }
    if (pending > 0)
        MOEH_WARN("round %u %s phase: deadline passed, closing with %u of %u sites", c->round,
                  name, c->n_replied, c->n_participants);
    c->retries = 0;
    if (c->phase == PH_TRAIN) {
        finish_train(c);
        open_phase(c, PH_EVAL);
    } else {
        finish_eval(c);
        if (save_checkpoint(c, fatal) != 0)
            return;
        if (cfg->fault_kill_after_round && c->round == cfg->fault_kill_after_round) {
            MOEH_WARN("fault injection: killing myself after round %u", c->round);
            raise(SIGKILL);
        }
        if (c->round == cfg->rounds) {
            c->phase = PH_DONE;
        } else {
            c->round++;
            c->round_t0 = moeh_now_ms();
            open_phase(c, PH_TRAIN);
        }
    }
}

static void heartbeat_and_liveness(coord_t *c)
{
    int64_t now = moeh_now_ms();
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (s->admitted && now - s->last_seen > (int64_t)c->cfg->heartbeat_timeout_ms)
            site_gone(c, s, "no heartbeat");
    }
    if (now - c->last_hb < (int64_t)c->cfg->heartbeat_ms)
        return;
    c->last_hb = now;
    c->hb_seq++;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->admitted)
            continue;
        if (moeh_wire_send_simple(c->router, s->rid, s->rid_len, MOEH__MSG_TYPE__HEARTBEAT, NULL,
                                  c->hb_seq) == -EHOSTUNREACH)
            site_gone(c, s, "connection closed");
    }
}

static int write_config(const coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *k = c->cfg;
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return moeh_errf(err, -ENOMEM, "out of memory");
    cJSON_AddStringToObject(j, "bind", k->bind);
    cJSON_AddBoolToObject(j, "insecure", k->insecure);
    cJSON_AddStringToObject(j, "registry", k->registry_path ? k->registry_path : "");
    cJSON_AddNumberToObject(j, "rounds", k->rounds);
    cJSON_AddNumberToObject(j, "min_sites", k->min_sites);
    cJSON_AddNumberToObject(j, "wait_sites", k->wait_sites);
    cJSON_AddNumberToObject(j, "start_timeout_ms", k->start_timeout_ms);
    cJSON_AddNumberToObject(j, "phase_deadline_ms", k->phase_deadline_ms);
    cJSON_AddNumberToObject(j, "max_retries", k->max_retries);
    cJSON_AddNumberToObject(j, "heartbeat_ms", k->heartbeat_ms);
    cJSON_AddNumberToObject(j, "heartbeat_timeout_ms", k->heartbeat_timeout_ms);
    cJSON_AddNumberToObject(j, "n_in", k->n_in);
    cJSON_AddNumberToObject(j, "n_hidden", k->n_hidden);
    cJSON_AddNumberToObject(j, "n_tasks", k->n_tasks);
    cJSON_AddNumberToObject(j, "seed", (double)k->seed);
    cJSON_AddNumberToObject(j, "local_epochs", k->local_epochs);
    cJSON_AddNumberToObject(j, "batch_size", k->batch_size);
    cJSON_AddNumberToObject(j, "lr", k->lr);
    cJSON_AddNumberToObject(j, "weight_decay", k->weight_decay);
    cJSON_AddNumberToObject(j, "clip", k->clip);
    cJSON_AddNumberToObject(j, "delta_clip", k->delta_clip);
    cJSON_AddNumberToObject(j, "eval_bins", k->eval_bins);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s)
        return moeh_errf(err, -ENOMEM, "out of memory");
    char path[4096];
    moeh_path_join(path, sizeof path, k->out_dir, "config.json");
    int rc = moeh_file_write_atomic(path, s, strlen(s), err);
    free(s);
    return rc;
}

static int setup(coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    int rc;
    char path[4096];
    if (cfg->rounds == 0 || cfg->min_sites == 0 || cfg->n_tasks == 0 || cfg->n_tasks > 16 ||
        cfg->eval_bins < 2 || cfg->eval_bins > 100000 || cfg->heartbeat_ms < 10 ||
        !(cfg->delta_clip > 0))
        return moeh_errf(err, -EINVAL, "invalid configuration: rounds, min_sites and n_tasks "
                                       "(<= 16) must be > 0, eval_bins 2..100000, "
                                       "heartbeat_ms >= 10, delta_clip > 0");
    static const char *names3[] = {"mortality", "los7", "readmit30"};
    for (uint32_t t = 0; t < cfg->n_tasks; t++) {
        if (cfg->n_tasks == 3)
            snprintf(c->task_buf[t], sizeof c->task_buf[t], "%s", names3[t]);
        else
            snprintf(c->task_buf[t], sizeof c->task_buf[t], "task%u", t);
        c->task_names[t] = c->task_buf[t];
    }
    if ((rc = moeh_mkdir_p(cfg->out_dir, err)))
        return rc;
    if ((rc = write_config(c, err)))
        return rc;
    if (moeh_path_join(c->ckpt_path, sizeof c->ckpt_path, cfg->out_dir, "checkpoint.moeh"))
        return moeh_errf(err, -ENAMETOOLONG, "--out is too long");
    if (cfg->resume && (rc = load_checkpoint(c, err)))
        return rc;
    moeh_path_join(path, sizeof path, cfg->out_dir, "metrics.jsonl");
    if (!(c->metrics = fopen(path, cfg->resume ? "a" : "w")))
        return moeh_errf(err, -errno, "%s: cannot create: %s", path, strerror(errno));
    if (!(c->sites = calloc(MAX_SITES, sizeof *c->sites)))
        return moeh_errf(err, -ENOMEM, "out of memory");
    if (!(c->zctx = zmq_ctx_new()))
        return moeh_errf(err, -ENOMEM, "cannot create a ZeroMQ context");
    uint32_t registered = 0;
    if (!cfg->insecure) {
        if (!cfg->registry_path || !cfg->key_path)
            return moeh_errf(err, -EINVAL, "a site registry (--registry) and the coordinator's "
                                           "key (--key) are required (or --insecure for tests)");
        if ((rc = moeh_crypto_init()))
            return moeh_errf(err, rc, "libsodium failed to initialise");
        moeh_registry_t reg;
        if ((rc = moeh_registry_load(cfg->registry_path, &reg, err)))
            return rc;
        if (reg.n == 0) {
            moeh_registry_free(&reg);
            return moeh_errf(err, -EINVAL, "%s: no site is registered under [sites]",
                             cfg->registry_path);
        }
        registered = (uint32_t)reg.n;
        if ((rc = moeh_keypair_read(cfg->key_path, &c->kp, err)))
            return rc;
        if ((rc = moeh_zap_start(c->zctx, &reg, &c->zap))) {
            moeh_registry_free(&reg);
            return moeh_errf(err, rc, "cannot start the ZAP handler: %s", moeh_strerror(rc));
        }
    }
    if (!(c->router = zmq_socket(c->zctx, ZMQ_ROUTER)))
        return moeh_errf(err, -zmq_errno(), "cannot create a socket");
    int one = 1, linger = 0, sndtimeo = 2000;
    int64_t maxmsg = (int64_t)MOEH_MAX_PARAMS * 4 + MOEH_MAX_HEADER_BYTES;
    if (zmq_setsockopt(c->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(c->router, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->router, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(c->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        return moeh_errf(err, -zmq_errno(), "socket options: %s", zmq_strerror(zmq_errno()));
    if (!cfg->insecure && (rc = moeh_curve_server(c->router, c->kp)))
        return moeh_errf(err, rc, "CURVE set-up failed: %s", moeh_strerror(rc));
    if (zmq_bind(c->router, cfg->bind) != 0)
        return moeh_errf(err, -zmq_errno(), "cannot bind %s: %s", cfg->bind,
                         zmq_strerror(zmq_errno()));
    c->wait_target = cfg->wait_sites ? cfg->wait_sites : (registered ? registered : cfg->min_sites);
    if (c->wait_target < cfg->min_sites)
        c->wait_target = cfg->min_sites;
    char ep[256];
    size_t eplen = sizeof ep;
    zmq_getsockopt(c->router, ZMQ_LAST_ENDPOINT, ep, &eplen);
    MOEH_INFO("listening on %s (%s); waiting for %u sites", ep,
              cfg->insecure ? "INSECURE: no encryption, no admission control" : "CURVE",
              c->wait_target);
    if (cfg->ready_fd >= 0) {
        dprintf(cfg->ready_fd, "%s\n", ep);
        close(cfg->ready_fd);
    }
    return 0;
}

static void teardown(coord_t *c)
{
    if (c->router) {
        /* tell every live site the run is over */
        for (size_t i = 0; i < c->n_sites; i++)
            if (c->sites[i].admitted)
                moeh_wire_send_simple(c->router, c->sites[i].rid, c->sites[i].rid_len,
                                      MOEH__MSG_TYPE__BYE, "run finished", 0);
        /* let the byes go out (linger was 0 so that nothing else blocks), at most 1 s */
        int linger = 1000;
        zmq_setsockopt(c->router, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(c->router);
    }
    moeh_zap_stop(&c->zap);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    moeh_keypair_destroy(&c->kp);
    if (c->metrics)
        fclose(c->metrics);
    moeh_fedavg_free(&c->agg);
    moeh_mlp_destroy(&c->model);
    free(c->hist);
    free(c->sites);
}

int moeh_coord_run(const moeh_coord_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
{
    coord_t c;
    memset(&c, 0, sizeof c);
    c.cfg = cfg;
    moeh_err_t fatal = {0};
    int rc = setup(&c, err);
    if (rc)
        goto out;
    c.wait_start = moeh_now_ms();
    c.phase = PH_WAIT;
    while (!*stop && c.phase != PH_DONE) {
        zmq_pollitem_t it = {.socket = c.router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 50) < 0 && zmq_errno() != EINTR) {
            rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
            goto out;
        }
        handle_message(&c, &fatal);
        if (fatal.msg[0])
            break;
        heartbeat_and_liveness(&c);
        if (c.phase == PH_WAIT) {
            uint32_t n = n_admitted(&c);
            int64_t waited = moeh_now_ms() - c.wait_start;
            if (c.round >= cfg->rounds) { /* resumed a run that had finished */
                c.phase = PH_DONE;
                break;
            }
            if (n >= c.wait_target || (waited >= cfg->start_timeout_ms && n >= cfg->min_sites)) {
                c.round++;
                c.round_t0 = moeh_now_ms();
                open_phase(&c, PH_TRAIN);
            } else if (waited >= cfg->start_timeout_ms) {
                rc = moeh_errf(err, -ETIMEDOUT,
                               "only %u of the %u sites needed joined within %.0f s "
                               "(are the agents running, with registered keys?)",
                               n, cfg->min_sites, cfg->start_timeout_ms / 1000.0);
                goto out;
            }
        } else {
            step_phase(&c, &fatal);
        }
        if (fatal.msg[0])
            break;
    }
    if (fatal.msg[0]) {
        rc = moeh_errf(err, -ETIMEDOUT, "%s", fatal.msg);
        goto out;
    }
    if (*stop && c.phase != PH_DONE) {
        rc = moeh_errf(err, -EINTR, "stopped by a signal during round %u", c.round);
        goto out;
    }
    char path[4096];
    size_t shape[1] = {c.p->n};
    moeh_path_join(path, sizeof path, cfg->out_dir, "model.npy");
    if ((rc = moeh_npy_write(path, MOEH_DT_F32, 1, shape, c.p->w, err)))
        goto out;
    MOEH_INFO("all %u rounds done; model written to %s", cfg->rounds, path);
    rc = 0;
out:
    teardown(&c);
    return rc;
}
