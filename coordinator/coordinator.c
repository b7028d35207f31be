/* coordinator.c - the coordinator's state machine (see coordinator.h and
 * docs/architecture.md for the messages of one round in order).
 *
 * Phases: WAIT (sites join) -> STATS (once: sums for the normalisation statistics) -> for
 * each round: TRAIN (RoundStart{TRAIN} + params to every
 * admitted site; Updates folded into a running per-group FedAvg sum) -> EVAL (RoundStart
 * {EVALUATE} with the new model; score histograms summed) -> next round or DONE.
 * A phase closes when every live participant replied or at its deadline; it needs min_sites
 * replies, else it is retried (up to max_retries) and then the run fails with a clear message.
 * Nothing a site sends touches model state before it passed moeh_wire_decode() and the
 * session checks here (sender admitted, participant, round and model version current, first
 * reply).
 *
 * Every phase's results are one vector of words per site (proto/moeh_secsum.h), summed mod 2^32
 * into c->vsum and decoded when the phase closes, so the plain path and secure aggregation
 * decode the very same sum. With --secagg every phase (STATS, TRAIN, EVAL) runs four steps of
 * secure aggregation (docs/secagg.md), each with its own deadline: KEYS (collect
 * SecaggAdvertise; U1) -> SHARES (collect SecaggShares and forward them; U2) -> MASKED
 * (collect SecaggMasked vectors into the running sum; U3) -> UNMASK (collect SecaggReveal from
 * U3, then moeh_secagg_server_unmask on the sum). Fewer than max(t, min_sites) sites at any
 * step aborts the attempt (retried as a phase without quorum); nothing is unmasked then.
 * Clear Updates, StatsResults and EvalResults are refused under --secagg.
 *
 * Granted uploads (--upload-slots G > 0, TRAIN only): a site whose update (plain Update, or
 * masked TRAIN vector) is ready sends UploadReady instead; the coordinator grants at most G
 * uploads at a time (UploadGrant, first come first served) and the next one when an upload
 * was read, the granted site is gone or its grant expired (heartbeat_timeout_ms). An upload
 * without a grant is refused. So ZeroMQ buffers at most G updates, not one per site. The sums
 * are of integers mod 2^32, so the order of the uploads changes nothing in the result. */
#include "moeh_coordinator.h"

#include "moeh_aggregate.h"
#include "moeh_checkpoint.h"
#include "moeh_dp.h"
#include "moeh_keys.h"
#include "moeh_hist.h"
#include "moeh_moe.h"
#include "moeh_npy.h"
#include "moeh_quant.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_wire.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_SITES 4096

typedef struct {
    char id[MOEH_SITE_ID_MAX + 1];
    uint8_t rid[256];
    size_t rid_len;
    int admitted; /* welcomed and not gone */
    int participant, replied;
    int64_t last_seen;
    uint64_t n_train, n_eval;
    uint64_t w_phase; /* training samples counted into this TRAIN phase's weight bound */
    int sa_in;        /* in this attempt's secure-aggregation session, as id sa_id */
    uint32_t sa_id;
    uint64_t dp_seen;   /* DP: plain (unmasked) updates received from this site by this process */
    int upload;         /* granted uploads of this TRAIN phase: upload_t */
    uint64_t ready_seq; /* order of its UploadReady (grants go first come first served) */
    int64_t granted_at;
} site_t;

/* A site's upload in a TRAIN phase with --upload-slots (docs/architecture.md). */
typedef enum {
    UP_NONE,    /* nothing announced (or its upload was read) */
    UP_READY,   /* announced, waiting for a slot */
    UP_GRANTED, /* holds a slot until its upload arrives, it is gone or the grant expires */
    UP_EXPIRED  /* did not use its grant in time: its upload is refused this phase */
} upload_t;

typedef enum { PH_WAIT, PH_STATS, PH_TRAIN, PH_EVAL, PH_DONE } phase_t;

/* Steps of a securely aggregated phase; SA_OFF: plain (or unmasked already). */
typedef enum { SA_OFF, SA_KEYS, SA_SHARES, SA_MASKED, SA_UNMASK } sa_step_t;

/* One secure-aggregation session (one attempt of a phase). Everything here is public
 * to the coordinator (keys, ciphertexts it cannot open, revealed shares meant for it). */
typedef struct {
    sa_step_t step;
    moeh_secagg_cfg_t cfg;            /* cfg.round is the session id sent to the sites */
    uint32_t need;                    /* max(t, min_sites): fewer at any step aborts the attempt */
    site_t **site;                    /* (n) id -> site */
    moeh_secagg_pubkeys_t *keys;      /* (n) advertised keys */
    uint8_t *u1, *u2, *u3, *revealed; /* (n) flags: advertised, shared, masked update, revealed */
    uint8_t *cts;                     /* (n, n, CT bytes): from i to j at i * n + j */
    uint8_t *ct_have;                 /* (n, n) */
    moeh_secagg_reveal_t *reveals;    /* (n, n) at most */
    size_t n_reveals;
} sa_session_t;

typedef struct {
    const moeh_coord_cfg_t *cfg;
    void *zctx, *router;
    moeh_zap_t *zap;
    moeh_keypair_t *kp;
    site_t *sites;
    size_t n_sites;
    moeh_moe_t *model;
    moeh_moe_cfg_t mcfg;
    moeh_params_t *p;
    uint32_t n_norm, n_experts;
    float *norm; /* (2, n_norm): means then standard deviations */
    int have_norm;
    double *stats_sum; /* (n_norm, 3) summed over sites */
    double *gate_sum;  /* (7, n_experts) summed over sites */
    /* this phase's vector sum (proto/moeh_secsum.h): the whole vector with --secagg; in plain
     * mode everything but what has its own sum (the update words, in agg) */
    uint32_t *vsum, *vtmp; /* (largest vector), and room for one site's values */
    size_t vsum_cap;
    uint64_t combo_rows[MOEH_WIRE_COMBOS];
    double last_auroc[MOEH_WIRE_SLICES][8]; /* of the last evaluation, per slice and task */
    uint64_t spec_hash, model_version, hb_seq;
    moeh_wire_limits_t lim;
    moeh_fedavg_t agg;
    moeh_server_opt_t sopt;
    /* this phase's parameters, copied once and shared by every site's RoundStart */
    moeh_shared_frame_t *params_frame;
    float *delta, *sm, *sv;      /* mean delta and server moments (adaptive strategies) */
    float *site_delta, *scratch; /* trimmed mean: each site's decoded delta, (slots, n) */
    uint32_t *site_w;            /* trimmed mean: each site's group weights, (slots, G) */
    size_t n_slots, cap_slots;
    uint8_t updated[MOEH_AGG_MAX_GROUPS];
    uint64_t *hist; /* (8 slices, n_tasks, 2, bins) summed over sites */
    double eval_loss_sum;
    uint64_t eval_n_labels;
    phase_t phase;
    uint32_t round, retries, n_participants, n_replied;
    uint32_t wait_target; /* start as soon as this many sites joined */
    int64_t phase_deadline, wait_start, round_t0, last_hb;
    double round_train_loss; /* sample-weighted mean over the sites that replied */
    double w_cap, w_used;    /* bound on this round's total weight, and weight admitted */
    double quant_scale;      /* fixed-point scale of this round's updates */
    float quant_range;       /* per-word range of the encoding: --delta-clip, or the DP range */
    int unit_weight;         /* weight 1 per site (--unweighted or DP), not its samples */
    /* DP accounting (docs/security.md, "Differential privacy"), kept in dp_ledger.json: */
    int dp;
    uint64_t dp_rounds;        /* noised sums applied to the model (anyone who sees it) */
    uint64_t dp_rounds_secagg; /* of which the coordinator saw only the sum (--secagg) */
    uint64_t dp_coord_base;    /* most plain updates of one site seen before this process */
    char dp_ledger_path[4096];
    uint32_t up_granted, up_max, up_expired; /* slots in use, most at once, grants expired */
    uint64_t up_seq;
    sa_session_t sa;
    int k_fallback_logged;
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
    c->upload_slots = 2;
    c->model = moeh_moe_defaults(0, 0); /* data shapes: from the sites (create_model) */
    c->warmup_rounds = 3;
    c->prox_mu = 0.0f;
    c->strategy = "fedavg";
    c->server_lr = 0.01f;
    c->server_beta1 = 0.9f;
    c->server_beta2 = 0.99f;
    c->server_tau = 1e-3f;
    c->trim = 0.2f;
    c->dp_delta = 1e-5f; /* far below 1 / (number of sites) for any consortium: docs/security.md */
    c->local_epochs = 1;
    c->batch_size = 32;
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
        if (strcmp(c->sites[i].id, id) == 0) return &c->sites[i];
    return NULL;
}

static uint32_t n_admitted(const coord_t *c)
{
    uint32_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        n += c->sites[i].admitted != 0;
    return n;
}

static Moeh__RoundTask phase_task(phase_t ph)
{
    return ph == PH_TRAIN  ? MOEH__ROUND_TASK__TRAIN
           : ph == PH_EVAL ? MOEH__ROUND_TASK__EVALUATE
                           : MOEH__ROUND_TASK__STATS;
}

static const char *phase_name(phase_t ph)
{
    return ph == PH_TRAIN ? "train" : ph == PH_EVAL ? "eval" : "statistics";
}

/* Writes ,"key":value to a metrics line; JSON has no NaN, so a missing value is null. */
static void jnum(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.6f", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

/* A site's weight in the round's fixed-point budget: 1 per site when unweighted (and under
 * DP), else its declared training samples (fed/moeh_quant.h). */
static double site_weight(const coord_t *c, const site_t *s)
{
    return c->unit_weight ? 1.0 : (double)s->n_train;
}

/* ---- DP-FedAvg accounting (fed/moeh_dp.h; docs/security.md, "Differential privacy") ----------
 * Two views, both composed with the RDP accountant at sampling rate 1 (every site takes part
 * in every round; dropped sites give no amplification):
 *  - the aggregate: every noised sum applied to the model is one Gaussian mechanism with noise
 *    multiplier Z (sensitivity dp_clip, noise std >= Z dp_clip when >= m = min_sites sites
 *    report). A sum never revealed (an attempt without quorum, an aborted secure-aggregation
 *    session) spends nothing. This is dp_epsilon: against anyone who sees the models.
 *  - the coordinator: with --secagg it sees only those sums; without, it sees each site's own
 *    update, which carries noise Z dp_clip / sqrt(m) only (multiplier Z / sqrt(m)), once per
 *    update received (late, refused and retried ones included). This is
 *    dp_epsilon_coordinator, from the largest count of any one site. */
static uint64_t dp_coord_releases(const coord_t *c)
{
    uint64_t most = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].dp_seen > most) most = c->sites[i].dp_seen;
    return c->dp_coord_base + most;
}

static void dp_epsilons(const coord_t *c, double *eps, double *eps_coord)
{
    double z = c->cfg->dp_noise, zs = z / sqrt((double)c->cfg->min_sites);
    moeh_dp_release_t agg = {z, c->dp_rounds};
    moeh_dp_release_t seen[2] = {{z, c->dp_rounds_secagg}, {zs, dp_coord_releases(c)}};
    *eps = moeh_dp_epsilon(&agg, 1, c->cfg->dp_delta, NULL);
    *eps_coord = moeh_dp_epsilon(seen, 2, c->cfg->dp_delta, NULL);
}

/* Writes the accountant's state to dp_ledger.json atomically, as soon as something was
 * released, so that --resume (and a crash between a release and the round's checkpoint) never
 * forgets a release. Failing to is fatal: the run could no longer report what it spent. */
static int dp_ledger_write(coord_t *c, moeh_err_t *fatal)
{
    char buf[512];
    int n =
        snprintf(buf, sizeof buf,
                 "{\"dp_clip\":%.9g,\"dp_noise\":%.9g,\"dp_sites\":%u,\"dp_delta\":%.7g,"
                 "\"rounds_released\":%llu,\"rounds_secagg\":%llu,"
                 "\"coordinator_releases\":%llu}\n",
                 (double)c->cfg->dp_clip, (double)c->cfg->dp_noise, c->cfg->min_sites,
                 (double)c->cfg->dp_delta, (unsigned long long)c->dp_rounds,
                 (unsigned long long)c->dp_rounds_secagg, (unsigned long long)dp_coord_releases(c));
    moeh_err_t err = {0};
    int rc = moeh_file_write_atomic(c->dp_ledger_path, buf, (size_t)n, &err);
    if (rc) moeh_errf(fatal, rc, "cannot write the DP ledger: %s", err.msg);
    return rc;
}

static int ledger_u64(const cJSON *j, const char *key, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0)
        return -1;
    *out = (uint64_t)v->valuedouble;
    return 0;
}

/* --resume: the releases so far, from the ledger written next to the checkpoint. A run must be
 * resumed with the noise and the calibration count it was started with (the accounting of the
 * coordinator's view depends on both); a checkpoint of a run without DP cannot become
 * private, and a DP run cannot silently continue without DP. */
static int dp_ledger_load(coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    int have = access(c->dp_ledger_path, F_OK) == 0;
    if (!c->dp && !have) return 0;
    if (!c->dp)
        return moeh_errf(err, -EINVAL,
                         "%s: the run to resume used differential privacy; resume it with the "
                         "same --dp-clip and --dp-noise",
                         c->dp_ledger_path);
    if (!have)
        return moeh_errf(err, -EINVAL,
                         "%s is missing: the run to resume did not use differential privacy, so "
                         "its rounds so far are not private; start a new run with --dp-clip",
                         c->dp_ledger_path);
    char *buf = NULL;
    size_t len = 0;
    int rc = moeh_file_read_all(c->dp_ledger_path, 4096, &buf, &len, err);
    if (rc) return rc;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    const cJSON *noise = j ? cJSON_GetObjectItem(j, "dp_noise") : NULL;
    uint64_t sites = 0;
    if (!j || !cJSON_IsNumber(noise) || ledger_u64(j, "dp_sites", &sites) ||
        ledger_u64(j, "rounds_released", &c->dp_rounds) ||
        ledger_u64(j, "rounds_secagg", &c->dp_rounds_secagg) ||
        ledger_u64(j, "coordinator_releases", &c->dp_coord_base)) {
        rc = moeh_errf(err, -EBADMSG, "%s: not a DP ledger (a field is missing or wrong)",
                       c->dp_ledger_path);
    } else if (!(noise->valuedouble >= 0 && noise->valuedouble <= MOEH_WIRE_DP_MAX_NOISE) ||
               (float)noise->valuedouble != cfg->dp_noise || sites != cfg->min_sites) {
        rc = moeh_errf(err, -EINVAL,
                       "%s: the run to resume used --dp-noise %g over --min-sites %llu; this one "
                       "asks for %g over %u (resume with the same values)",
                       c->dp_ledger_path, noise->valuedouble, (unsigned long long)sites,
                       (double)cfg->dp_noise, cfg->min_sites);
    } else {
        MOEH_INFO("DP: resuming after %llu released rounds (%llu with secure aggregation; at most "
                  "%llu updates of one site seen by the coordinator)",
                  (unsigned long long)c->dp_rounds, (unsigned long long)c->dp_rounds_secagg,
                  (unsigned long long)c->dp_coord_base);
    }
    cJSON_Delete(j);
    return rc;
}

/* Appends the DP fields of a metrics line (nothing without DP); JSON has no infinity: an
 * unbounded epsilon (noise 0) is null. */
static void jdp(const coord_t *c, FILE *f)
{
    if (!c->dp) return;
    double eps, eps_coord;
    dp_epsilons(c, &eps, &eps_coord);
    const double v[6] = {eps,
                         eps_coord,
                         c->cfg->dp_delta,
                         c->cfg->dp_noise,
                         c->cfg->dp_clip,
                         (double)c->cfg->min_sites};
    static const char *k[6] = {
        "dp_epsilon", "dp_epsilon_coordinator", "dp_delta", "dp_noise", "dp_clip", "dp_sites"};
    for (int i = 0; i < 6; i++) /* epsilons to 9 digits; the float options as given */
        if (isfinite(v[i]))
            fprintf(f, i < 2 ? ",\"%s\":%.9g" : ",\"%s\":%.7g", k[i], v[i]);
        else
            fprintf(f, ",\"%s\":null", k[i]);
    fprintf(f, ",\"dp_rounds\":%llu", (unsigned long long)c->dp_rounds);
}

/* Frees the upload slot s holds, or takes it out of the queue. The caller grants the next. */
static void upload_release(coord_t *c, site_t *s)
{
    if (s->upload == UP_GRANTED) {
        MOEH_ASSERT(c->up_granted > 0);
        c->up_granted--;
    }
    s->upload = UP_NONE;
}

static void site_gone(coord_t *c, site_t *s, const char *why)
{
    if (!s->admitted) return;
    s->admitted = 0;
    MOEH_WARN("site %s is gone (%s)", s->id, why);
    if (s->upload == UP_GRANTED)
        MOEH_WARN("round %u: site %s held an upload slot; released", c->round, s->id);
    upload_release(c, s);
    if (c->metrics) {
        fprintf(c->metrics,
                "{\"event\":\"site_gone\",\"round\":%u,\"site\":\"%s\",\"why\":\"%s\"}\n", c->round,
                s->id, why);
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

/* Builds the model from the configuration and the sites' data shapes. */
static int create_model(coord_t *c, uint32_t n_static, uint32_t n_vars, uint32_t n_steps,
                        uint32_t img_size, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    moeh_moe_cfg_t mc = cfg->model;
    mc.n_static = n_static, mc.n_vars = n_vars, mc.n_steps = n_steps, mc.img_size = img_size;
    mc.max_batch = cfg->batch_size;
    moeh_err_t e2 = {0};
    int rc = moeh_moe_create(&mc, &c->model, &e2);
    if (rc) return moeh_errf(err, rc, "cannot create the model: %s", e2.msg);
    c->mcfg = mc;
    c->p = moeh_moe_params(c->model);
    c->spec_hash = moeh_params_spec_hash(c->p);
    c->n_norm = n_static + n_vars;
    /* replaced when a training phase opens; any value the decoder accepts before */
    c->quant_scale = moeh_quant_scale(c->quant_range, 2.0);
    c->n_experts = (uint32_t)moeh_moe_n_experts(c->model);
    c->lim = (moeh_wire_limits_t){.n_params = c->p->n,
                                  .n_groups = (uint32_t)c->p->n_groups,
                                  .n_tasks = (uint32_t)mc.n_tasks,
                                  .eval_bins = cfg->eval_bins,
                                  .n_norm = c->n_norm,
                                  .n_experts = c->n_experts};
    if ((rc = moeh_fedavg_init(&c->agg, c->p->n, c->p->n_groups, c->p->group_off, c->p->group_len)))
        return moeh_errf(err, rc, "cannot allocate the aggregation buffer");
    c->hist = calloc((size_t)MOEH_WIRE_SLICES * mc.n_tasks * 2 * cfg->eval_bins, sizeof(uint64_t));
    c->norm = calloc(2 * (size_t)c->n_norm + 1, sizeof(float));
    c->stats_sum = calloc(3 * (size_t)c->n_norm + 1, sizeof(double));
    c->gate_sum = calloc((size_t)MOEH_WIRE_COMBOS * c->n_experts, sizeof(double));
    size_t lt = moeh_secsum_len(&c->lim, MOEH__ROUND_TASK__TRAIN),
           ls = moeh_secsum_len(&c->lim, MOEH__ROUND_TASK__STATS),
           le = moeh_secsum_len(&c->lim, MOEH__ROUND_TASK__EVALUATE);
    c->vsum_cap = lt > ls ? (lt > le ? lt : le) : (ls > le ? ls : le);
    c->vsum = calloc(c->vsum_cap, sizeof(uint32_t));
    c->vtmp = calloc(ls + moeh_secsum_eval_values_len(&c->lim) +
                         MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS,
                     sizeof(uint32_t));
    if (!c->hist || !c->norm || !c->stats_sum || !c->gate_sum || !c->vsum || !c->vtmp)
        return moeh_errf(err, -ENOMEM, "out of memory");
    if (c->sopt.kind == MOEH_STRATEGY_FEDADAM || c->sopt.kind == MOEH_STRATEGY_FEDYOGI) {
        c->delta = calloc(c->p->n, sizeof(float));
        c->sm = calloc(c->p->n, sizeof(float));
        c->sv = calloc(c->p->n, sizeof(float));
        if (!c->delta || !c->sm || !c->sv)
            return moeh_errf(err, -ENOMEM, "out of memory for the server optimiser");
    }
    for (uint32_t i = 0; i < c->n_norm; i++)
        c->norm[c->n_norm + i] = 1.0f;
    MOEH_INFO("model: %s, %zu parameters in %zu groups (%u static features, %u hourly "
              "variables x %u h, %u x %u images)",
              mc.arch == MOEH_ARCH_MOE ? "MoE-Health" : "baseline", c->p->n, c->p->n_groups,
              n_static, n_vars, n_steps, img_size, img_size);
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
    rs.task = phase_task(c->phase);
    rc.warmup = c->round <= cfg->warmup_rounds;
    rc.prox_mu = cfg->prox_mu;
    int64_t left = c->phase_deadline - moeh_now_ms();
    rs.deadline_ms = left > 1 ? (uint32_t)left : 1;
    rs.config = &rc;
    rs.n_participants = c->n_participants;
    rs.grant_uploads = c->phase == PH_TRAIN && cfg->upload_slots > 0;
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    if (c->sa.step != SA_OFF) {
        if (!s->sa_in) return; /* not in this session: it cannot take part in this attempt */
        sp.session = c->sa.cfg.round;
        sp.n = c->sa.cfg.n;
        sp.t = c->sa.cfg.t;
        sp.k = c->sa.cfg.k;
        sp.graph_seed = c->sa.cfg.graph_seed;
        sp.id = s->sa_id;
        rs.secagg = &sp;
    }
    env.type = MOEH__MSG_TYPE__ROUND_START;
    env.body_case = MOEH__ENVELOPE__BODY_ROUND_START;
    env.round_start = &rs;
    moeh_frame_t f[2] = {{.name = "params",
                          .dtype = MOEH__DTYPE__F32,
                          .data = c->p->w,
                          .count = c->p->n,
                          .shared = c->params_frame},
                         {.name = "norm",
                          .dtype = MOEH__DTYPE__F32,
                          .data = c->norm,
                          .count = 2 * (uint64_t)c->n_norm}};
    send_to(c, s, &env, f, c->phase == PH_STATS ? 0 : 2);
}

static void sa_free(sa_session_t *sa)
{
    free(sa->site);
    free(sa->keys);
    free(sa->u1);
    free(sa->u2);
    free(sa->u3);
    free(sa->revealed);
    free(sa->cts);
    free(sa->ct_have);
    free(sa->reveals);
    memset(sa, 0, sizeof *sa);
}

/* Starts a session over the phase's participants (ids in site order). A session that cannot
 * run (fewer than 2 sites, too many, no memory) is left with n = 0 and an expired deadline,
 * so that step_phase aborts the attempt at once. */
static void sa_open(coord_t *c)
{
    sa_session_t *sa = &c->sa;
    sa_free(sa);
    sa->step = SA_KEYS;
    uint32_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        c->sites[i].sa_in = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        n += c->sites[i].participant != 0;
    if (n < 2 || n > MOEH_WIRE_SECAGG_MAX) {
        MOEH_WARN("round %u: secure aggregation needs 2..%u sites, %u are here", c->round,
                  MOEH_WIRE_SECAGG_MAX, n);
        c->phase_deadline = moeh_now_ms();
        return;
    }
    size_t nn = (size_t)n * n;
    sa->site = calloc(n, sizeof *sa->site);
    sa->keys = calloc(n, sizeof *sa->keys);
    sa->u1 = calloc(n, 1), sa->u2 = calloc(n, 1), sa->u3 = calloc(n, 1);
    sa->revealed = calloc(n, 1);
    sa->cts = malloc(nn * MOEH_SECAGG_SHARE_CT_BYTES);
    sa->ct_have = calloc(nn, 1);
    sa->reveals = malloc(nn * sizeof *sa->reveals);
    if (!sa->site || !sa->keys || !sa->u1 || !sa->u2 || !sa->u3 || !sa->revealed || !sa->cts ||
        !sa->ct_have || !sa->reveals) {
        MOEH_ERROR("round %u: out of memory for secure aggregation of %u sites", c->round, n);
        sa_free(sa);
        sa->step = SA_KEYS;
        c->phase_deadline = moeh_now_ms();
        return;
    }
    uint32_t id = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->participant) continue;
        s->sa_in = 1;
        s->sa_id = id;
        sa->site[id++] = s;
    }
    do
        randombytes_buf(&sa->cfg.round, sizeof sa->cfg.round);
    while (sa->cfg.round == 0);
    randombytes_buf(&sa->cfg.graph_seed, sizeof sa->cfg.graph_seed);
    /* SecAgg+ (--secagg-k): each site masks with k neighbours and shares its secrets with
     * them, t-of-(k + 1). With k + 1 >= n everyone is everyone's neighbour: classic SecAgg. */
    uint32_t k = c->cfg->secagg_k;
    if (k && k >= n - 1) {
        if (!c->k_fallback_logged)
            MOEH_INFO("secure aggregation: --secagg-k %u needs more than %u sites, %u are here: "
                      "every pair masks (k = 0) while that holds",
                      k, k + 1, n);
        c->k_fallback_logged = 1;
        k = 0;
    }
    sa->cfg.n = n;
    sa->cfg.k = k;
    sa->cfg.t = (k ? k + 1 : n) / 2 + 1;
    sa->cfg.len = moeh_secsum_len(&c->lim, phase_task(c->phase));
    sa->need = sa->cfg.t > c->cfg->min_sites ? sa->cfg.t : c->cfg->min_sites;
    moeh_err_t err = {0};
    MOEH_ASSERT(moeh_secagg_cfg_check(&sa->cfg, &err) == 0);
}

static void open_phase(coord_t *c, phase_t ph)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    c->phase = ph;
    /* one copy of the parameters for every site's RoundStart of this phase (they do not change
     * until the phase closes); without it the sends fall back to a copy each */
    moeh_shared_frame_destroy(&c->params_frame);
    if (ph != PH_STATS &&
        moeh_shared_frame_create(c->p->w, c->p->n * sizeof(float), &c->params_frame) != 0)
        MOEH_WARN("out of memory for the shared parameter frame; copying per site");
    c->phase_deadline = moeh_now_ms() + c->cfg->phase_deadline_ms;
    c->n_participants = c->n_replied = 0;
    memset(c->vsum, 0, moeh_secsum_len(&c->lim, phase_task(ph)) * sizeof(uint32_t));
    if (ph == PH_TRAIN) {
        moeh_fedavg_reset(&c->agg);
        c->round_train_loss = 0;
        /* Twice the participants' weight, so that late joiners fit; see fed/moeh_quant.h. */
        c->w_used = 0;
        for (size_t i = 0; i < c->n_sites; i++) {
            site_t *si = &c->sites[i];
            si->w_phase = si->admitted ? si->n_train : 0;
            if (si->admitted) c->w_used += site_weight(c, si);
        }
        c->n_slots = 0;
        if (c->sopt.kind == MOEH_STRATEGY_TRIMMED && c->cap_slots < c->n_sites + 8) {
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
                MOEH_ERROR("out of memory for the trimmed mean of %zu sites", cap);
            }
        }
        c->w_cap = 2.0 * (c->w_used > 1 ? c->w_used : 1);
        if (c->w_cap > 4294967295.0) /* weights are summed in 32-bit words too */
            c->w_cap = 4294967295.0;
        /* under DP every site's words (noise) count, whatever its group weights: W counts
         * sites, and the range holds a clipped and noised coordinate (fed/moeh_dp.h) */
        c->quant_scale = moeh_quant_scale(c->quant_range, c->w_cap);
    }
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        s->participant = s->admitted;
        s->replied = 0;
        s->upload = UP_NONE;
        c->n_participants += s->participant != 0;
    }
    c->up_granted = c->up_max = c->up_expired = 0;
    if (cfg->secagg)
        sa_open(c);
    else
        c->sa.step = SA_OFF;
    MOEH_INFO("round %u: %s phase with %u sites (model version %llu)", c->round, phase_name(ph),
              c->n_participants, (unsigned long long)c->model_version);
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].participant) send_round_start(c, &c->sites[i]);
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
    if (!cfg->insecure && !moeh_zap_has_site(c->zap, m->peer)) {
        /* an old connection of a site whose key was revoked since it authenticated */
        reply_error(c, m, -EACCES, "this site's key is no longer in the registry", m->peer);
        return;
    }
    if (!cfg->insecure && strcmp(h->site_id, m->peer) != 0) {
        snprintf(what, sizeof what,
                 "site id '%s' does not match the id registered for your key ('%s')", h->site_id,
                 m->peer);
        reply_error(c, m, -EACCES, what, m->peer[0] ? m->peer : "an unauthenticated peer");
        return;
    }
    if (!c->model && create_model(c, h->n_features, h->n_vars, h->n_steps, h->img_size, fatal) != 0)
        return;
    if (h->n_features != c->mcfg.n_static || h->n_vars != c->mcfg.n_vars ||
        h->n_steps != c->mcfg.n_steps || h->img_size != c->mcfg.img_size) {
        snprintf(what, sizeof what,
                 "your dataset has %u static features, %u hourly variables x %u h and %u px "
                 "images; this federation's model expects %zu, %zu x %zu and %zu",
                 h->n_features, h->n_vars, h->n_steps, h->img_size, c->mcfg.n_static,
                 c->mcfg.n_vars, c->mcfg.n_steps, c->mcfg.img_size);
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
    if (s->upload == UP_GRANTED) /* its grant went to the old connection */
        MOEH_WARN("round %u: site %s rejoined while holding an upload slot; released", c->round,
                  s->id);
    int expired = s->upload == UP_EXPIRED; /* stays expired for the rest of the phase */
    upload_release(c, s);                  /* a new connection: it announces its update again */
    if (expired) s->upload = UP_EXPIRED;
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
    char *cfg_json = NULL;
    moeh_err_t e2 = {0};
    if (moeh_moe_cfg_to_json(&c->mcfg, &cfg_json, &e2) != 0) {
        reply_error(c, m, -ENOMEM, e2.msg, s->id);
        return;
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
    env.type = MOEH__MSG_TYPE__WELCOME;
    env.body_case = MOEH__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    int sent = send_to(c, s, &env, NULL, 0);
    free(cfg_json);
    if (sent != 0) return;
    /* A site that (re)joins while a phase is open takes part in it unless it already replied. */
    if (c->sa.step != SA_OFF && !s->replied) {
        /* A secure-aggregation session has a fixed membership: a site that (re)joins now has
         * lost (or never had) its round keys, and takes part from the next phase on. */
        if (s->participant && c->n_participants) c->n_participants--;
        s->participant = 0;
        s->sa_in = 0;
        return;
    }
    if ((c->phase == PH_TRAIN || c->phase == PH_EVAL || c->phase == PH_STATS) && !s->replied) {
        if (c->phase == PH_TRAIN && !s->participant) {
            if (c->w_used + site_weight(c, s) > c->w_cap)
                return; /* its weight does not fit this round's fixed-point range: next one */
            if (c->sopt.kind == MOEH_STRATEGY_TRIMMED && c->n_participants >= c->cap_slots)
                return; /* no slot left for its update this round */
            c->w_used += site_weight(c, s);
            s->w_phase = s->n_train;
        }
        if (!s->participant) c->n_participants++;
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

/* ---- granted uploads (--upload-slots; docs/architecture.md) ------------------------------ */

/* Grants uploads, first announced first, while a slot is free (TRAIN phase only). */
static void grant_uploads(coord_t *c)
{
    const uint32_t slots = c->cfg->upload_slots;
    if (!slots || c->phase != PH_TRAIN) return;
    if (c->sa.step != SA_OFF && c->sa.step != SA_MASKED) return; /* masked vectors only now */
    while (c->up_granted < slots) {
        site_t *next = NULL;
        for (size_t i = 0; i < c->n_sites; i++) {
            site_t *s = &c->sites[i];
            if (s->upload == UP_READY && s->admitted && (!next || s->ready_seq < next->ready_seq))
                next = s;
        }
        if (!next) return;
        next->upload = UP_GRANTED;
        next->granted_at = moeh_now_ms();
        c->up_granted++;
        if (c->up_granted > c->up_max) c->up_max = c->up_granted;
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__UploadGrant g = MOEH__UPLOAD_GRANT__INIT;
        g.round = c->round;
        g.model_version = c->model_version;
        g.session = c->sa.step != SA_OFF ? c->sa.cfg.round : 0;
        env.type = MOEH__MSG_TYPE__UPLOAD_GRANT;
        env.body_case = MOEH__ENVELOPE__BODY_UPLOAD_GRANT;
        env.upload_grant = &g;
        /* a site found gone here releases the slot (site_gone); any other failure leaves
         * the grant to expire */
        send_to(c, next, &env, NULL, 0);
        MOEH_DEBUG("round %u: upload slot granted to %s (%u of %u in use)", c->round, next->id,
                   c->up_granted, slots);
    }
}

/* A grant unused for heartbeat_timeout_ms expires: the slot goes to the next site, this site's
 * upload is refused for the rest of the phase and the phase no longer waits for it. An honest
 * upload fits in that time, as the liveness check already demands (nothing else arrives from
 * a site while its update is in transit). */
static void expire_grants(coord_t *c)
{
    if (!c->up_granted) return;
    int64_t now = moeh_now_ms();
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (s->upload != UP_GRANTED || now - s->granted_at <= (int64_t)c->cfg->heartbeat_timeout_ms)
            continue;
        MOEH_WARN("round %u: site %s has not used its upload grant in %u ms; the grant expires "
                  "and its update is refused this round",
                  c->round, s->id, c->cfg->heartbeat_timeout_ms);
        upload_release(c, s);
        s->upload = UP_EXPIRED;
        c->up_expired++;
    }
}

/* 1 if the phase waits for s: a live participant that has not replied, and under granted
 * uploads has not let its grant expire. */
static int waits_for(const site_t *s)
{
    return s->participant && s->admitted && !s->replied && s->upload != UP_EXPIRED;
}

/* Granted uploads: an update (or a masked TRAIN vector) is only taken from a site that holds a
 * grant; taking it frees the slot (its bytes have been read, whatever the checks that follow
 * decide). 1 if the upload may go on; else replied with an Error. */
static int upload_take(coord_t *c, moeh_msg_t *m, site_t *s)
{
    if (!c->cfg->upload_slots) return 1;
    if (s->upload != UP_GRANTED) {
        char what[200];
        snprintf(what, sizeof what,
                 "%s: no upload slot was granted to this site%s; announce the update with "
                 "upload_ready and send it on upload_grant",
                 moeh_msg_type_name(m->env->type),
                 s->upload == UP_EXPIRED ? " (its grant expired)" : "");
        reply_error(c, m, -ESTALE, what, s->id);
        return 0;
    }
    upload_release(c, s);
    return 1;
}

/* UploadReady: queues the site for a grant if its update is one this phase can take. */
static void handle_upload_ready(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__UploadReady *r = m->env->upload_ready;
    const sa_session_t *sa = &c->sa;
    char what[200];
    if (!c->cfg->upload_slots) {
        snprintf(what, sizeof what,
                 "upload_ready: uploads are not granted in this run (--upload-slots 0): send "
                 "the update");
    } else if (c->phase != PH_TRAIN || !s->participant) {
        snprintf(what, sizeof what, "upload_ready for round %u arrived outside its phase",
                 r->round);
    } else if (s->replied || s->upload != UP_NONE) {
        snprintf(what, sizeof what, "duplicate upload_ready for round %u%s", r->round,
                 s->upload == UP_EXPIRED ? " (its grant expired)" : "");
    } else if (r->round != c->round || r->model_version != c->model_version) {
        snprintf(what, sizeof what,
                 "stale upload_ready: round %u model %llu, current round %u model %llu", r->round,
                 (unsigned long long)r->model_version, c->round,
                 (unsigned long long)c->model_version);
    } else if (sa->step == SA_OFF && r->session != 0) {
        snprintf(what, sizeof what,
                 "upload_ready: session %llu, but this phase is not securely aggregated",
                 (unsigned long long)r->session);
    } else if (sa->step != SA_OFF &&
               (sa->step != SA_MASKED || !s->sa_in || r->session != sa->cfg.round ||
                !sa->u2[s->sa_id] || sa->u3[s->sa_id])) {
        snprintf(what, sizeof what,
                 "upload_ready: not expected now (another step or session, or shares not all "
                 "forwarded)");
    } else {
        s->upload = UP_READY;
        s->ready_seq = ++c->up_seq;
        grant_uploads(c);
        return;
    }
    reply_error(c, m, -ESTALE, what, s->id);
}

static void handle_update(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__Update *u = m->env->update;
    if (!session_ok(c, m, s, PH_TRAIN, u->round, u->model_version)) return;
    const uint8_t *words = m->frames[0].data;
    char what[160];
    if (c->cfg->secagg || u->secagg_session != 0) {
        /* under secure aggregation a site's vector travels masked, in SecaggMasked */
        reply_error(c, m, -ESTALE,
                    "update: not expected now: under secure aggregation the update travels "
                    "masked (secagg_masked)",
                    s->id);
        return;
    }
    if (!upload_take(c, m, s)) return;
    /* the header's values join the phase's vector sum, as they would under secure aggregation */
    uint32_t *xv = c->vtmp;
    if (moeh_secsum_train_put(xv, u->train_loss, u->n_samples, u->steps) != 0) {
        reply_error(c, m, -ERANGE, "update: train_loss x n_samples is out of range", s->id);
        return;
    }
    /* Without secure aggregation every word can be checked against the site's declared
     * weight, so a broken or hostile site cannot push the sum out of range. */
    for (size_t g = 0; g < c->p->n_groups; g++) {
        uint32_t w;
        memcpy(&w, words + 4 * (c->p->n + g), 4);
        if (c->unit_weight && w > 1) {
            snprintf(what, sizeof what,
                     "update: group %zu weight %u; unweighted aggregation allows 0 or 1", g, w);
            reply_error(c, m, -ERANGE, what, s->id);
            return;
        }
        if (w > s->w_phase) { /* the samples counted when the phase opened: a site that
                               * rejoins declaring more cannot widen its share of the range */
            snprintf(what, sizeof what,
                     "update: group %zu weight %u exceeds the %llu training "
                     "samples this site declared",
                     g, w, (unsigned long long)s->w_phase);
            reply_error(c, m, -ERANGE, what, s->id);
            return;
        }
        /* under DP every word carries noise with weight 1, trained or not */
        double bound = c->quant_scale * (c->dp ? 1.0 : (double)w) * c->quant_range + 1.0;
        for (size_t i = c->p->group_off[g]; i < c->p->group_off[g] + c->p->group_len[g]; i++) {
            uint32_t q;
            memcpy(&q, words + 4 * i, 4);
            if (fabs((double)moeh_quant_signed(q)) > bound) {
                snprintf(what, sizeof what,
                         "update: word %zu is outside the range its group's "
                         "weight and the delta clip allow",
                         i);
                reply_error(c, m, -ERANGE, what, s->id);
                return;
            }
        }
    }
    if (c->sopt.kind == MOEH_STRATEGY_TRIMMED) {
        if (c->n_slots >= c->cap_slots) {
            reply_error(c, m, -ENOSPC, "no room for this update in this round", s->id);
            return;
        }
        /* keep this site's own delta: the trimmed mean needs every site's value */
        size_t G = c->p->n_groups;
        float *d = c->site_delta + c->n_slots * c->p->n;
        uint32_t *w = c->site_w + c->n_slots * G;
        for (size_t g = 0; g < G; g++) {
            memcpy(&w[g], words + 4 * (c->p->n + g), 4);
            double inv = w[g] ? 1.0 / (c->quant_scale * (double)w[g]) : 0.0;
            for (size_t i = c->p->group_off[g]; i < c->p->group_off[g] + c->p->group_len[g]; i++) {
                uint32_t q;
                memcpy(&q, words + 4 * i, 4);
                d[i] = (float)((double)moeh_quant_signed(q) * inv);
            }
        }
        c->n_slots++;
    }
    moeh_fedavg_add(&c->agg, words);
    moeh_secsum_add(c->vsum + c->p->n + c->p->n_groups, xv,
                    MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS);
    s->replied = 1;
    c->n_replied++;
    if (c->metrics) {
        fprintf(c->metrics, "{\"event\":\"site_update\",\"round\":%u,\"site\":\"%s\"", c->round,
                s->id);
        jnum(c->metrics, "train_loss", c->dp ? NAN : u->train_loss);
        fprintf(c->metrics, ",\"n_samples\":%llu,\"steps\":%u}\n", (unsigned long long)u->n_samples,
                u->steps);
        fflush(c->metrics);
    }
    MOEH_DEBUG("round %u: update from %s (loss %.4f)", c->round, s->id, u->train_loss);
}

/* AUROC of task t in slice sl of a (slices, tasks, 2, bins) histogram of 32- or 64-bit counts
 * (the caller passes 64-bit; a site's own 32-bit histogram is widened first). */
static double slice_auroc(const uint64_t *hist, uint32_t n_tasks, uint32_t bins, size_t sl,
                          uint32_t t)
{
    const uint64_t *neg = hist + ((sl * n_tasks + t) * 2) * (size_t)bins;
    return moeh_hist_auroc(neg, neg + bins, bins);
}

static void handle_eval(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__EvalResult *r = m->env->eval_result;
    if (c->cfg->secagg) {
        reply_error(c, m, -ESTALE,
                    "eval_result: not expected now: under secure aggregation the evaluation "
                    "travels masked (secagg_masked)",
                    s->id);
        return;
    }
    if (!session_ok(c, m, s, PH_EVAL, r->round, r->model_version)) return;
    const uint32_t T = (uint32_t)c->cfg->model.n_tasks, nb = c->cfg->eval_bins;
    const uint8_t *p = m->frames[0].data;
    size_t per_slice = (size_t)T * 2 * nb, n = MOEH_WIRE_SLICES * per_slice;
    /* the summed counts are 32-bit words, as under secure aggregation (docs/secagg.md) */
    const size_t V = MOEH_SECSUM_FIX_WORDS, at = n + MOEH_WIRE_COMBOS * (c->n_experts + 1) * V;
    if (moeh_secsum_fix_get(c->vsum + at + V) + (double)r->n_labels > 4294967295.0) {
        reply_error(c, m, -ERANGE, "eval_result: the round's labels would exceed 2^32 - 1", s->id);
        return;
    }
    float *gate = malloc((size_t)MOEH_WIRE_COMBOS * c->n_experts * sizeof(float) + 1);
    if (!gate ||
        moeh_secsum_eval_put(c->vtmp, &c->lim, memcpy(gate, m->frames[1].data, m->frames[1].len),
                             r->combo_rows, r->loss_sum, r->n_labels) != 0) {
        free(gate);
        reply_error(c, m, gate ? -ERANGE : -ENOMEM,
                    "eval_result: a sum is out of range (or out of memory)", s->id);
        return;
    }
    free(gate);
    moeh_secsum_add(c->vsum, p, n);
    moeh_secsum_add(c->vsum + n, c->vtmp, moeh_secsum_eval_values_len(&c->lim));
    /* this site's own AUROC per task (slice 0) */
    uint64_t *own = malloc(per_slice * sizeof(uint64_t));
    for (size_t i = 0; own && i < per_slice; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        own[i] = v;
    }
    s->replied = 1;
    c->n_replied++;
    if (own && c->metrics) {
        fprintf(c->metrics, "{\"event\":\"site_eval\",\"round\":%u,\"site\":\"%s\"", c->round,
                s->id);
        jnum(c->metrics, "test_loss", r->n_labels ? r->loss_sum / (double)r->n_labels : NAN);
        for (uint32_t t = 0; t < T; t++) {
            char key[32];
            snprintf(key, sizeof key, "auroc_%s", c->task_names[t]);
            jnum(c->metrics, key, slice_auroc(own, T, nb, 0, t));
        }
        fprintf(c->metrics, "}\n");
        fflush(c->metrics);
    }
    free(own);
}

static void handle_stats(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__StatsResult *r = m->env->stats_result;
    if (c->cfg->secagg) {
        reply_error(c, m, -ESTALE,
                    "stats_result: not expected now: under secure aggregation the statistics "
                    "travel masked (secagg_masked)",
                    s->id);
        return;
    }
    if (!session_ok(c, m, s, PH_STATS, r->round, c->model_version)) return;
    size_t n = 3 * (size_t)c->n_norm;
    memcpy(c->stats_sum, m->frames[0].data, n * sizeof(double)); /* scratch */
    if (moeh_secsum_stats_put(c->vtmp, c->stats_sum, c->n_norm) != 0) {
        reply_error(c, m, -ERANGE,
                    "stats_result: a sum exceeds 2^53 in magnitude, the fixed-point range", s->id);
        return;
    }
    moeh_secsum_add(c->vsum, c->vtmp, n * MOEH_SECSUM_FIX_WORDS);
    s->replied = 1;
    c->n_replied++;
}

/* ---- secure aggregation: the coordinator's side of docs/secagg.md ------------------------ */

/* Session checks shared by the secagg messages: a phase in step `want`, a site of this
 * session, the current session id. 1 if the message may be used; else replied with an Error. */
static int sa_ok(coord_t *c, moeh_msg_t *m, site_t *s, sa_step_t want, uint64_t session)
{
    char what[160];
    if (c->sa.step != want || !s->sa_in || !s->participant || session != c->sa.cfg.round) {
        snprintf(what, sizeof what, "%s: not expected now (another step or session)",
                 moeh_msg_type_name(m->env->type));
        reply_error(c, m, -ESTALE, what, s->id);
        return 0;
    }
    return 1;
}

static void handle_sa_advertise(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggAdvertise *a = m->env->secagg_advertise;
    if (!sa_ok(c, m, s, SA_KEYS, a->session)) return;
    uint32_t i = s->sa_id;
    if (c->sa.u1[i]) {
        reply_error(c, m, -ESTALE, "secagg_advertise: duplicate", s->id);
        return;
    }
    memcpy(c->sa.keys[i].c_pk, a->c_pk.data, MOEH_SECAGG_KEY_BYTES);
    memcpy(c->sa.keys[i].s_pk, a->s_pk.data, MOEH_SECAGG_KEY_BYTES);
    c->sa.u1[i] = 1;
}

static void handle_sa_shares(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggShares *sh = m->env->secagg_shares;
    sa_session_t *sa = &c->sa;
    if (!sa_ok(c, m, s, SA_SHARES, sh->session)) return;
    uint32_t i = s->sa_id, n = sa->cfg.n;
    if (!sa->u1[i] || sa->u2[i] || sh->n_u2 != 0) {
        reply_error(c, m, -ESTALE,
                    "secagg_shares: duplicate, or from a site that did not "
                    "advertise keys",
                    s->id);
        return;
    }
    /* exactly one ciphertext for every neighbour in U1 (peers arrive strictly increasing) */
    size_t want = 0;
    for (uint32_t j = 0; j < n; j++)
        want += j != i && sa->u1[j] && moeh_secagg_neighbours(&sa->cfg, i, j);
    int ok = sh->n_ciphers == want;
    for (size_t k = 0; ok && k < sh->n_ciphers; k++) {
        uint32_t j = sh->ciphers[k]->peer;
        ok = j < n && j != i && sa->u1[j] && moeh_secagg_neighbours(&sa->cfg, i, j);
    }
    if (!ok) {
        reply_error(c, m, -EBADMSG,
                    "secagg_shares: expected one ciphertext for each "
                    "neighbour that advertised keys",
                    s->id);
        return;
    }
    for (size_t k = 0; k < sh->n_ciphers; k++) {
        size_t at = (size_t)i * n + sh->ciphers[k]->peer;
        memcpy(sa->cts + at * MOEH_SECAGG_SHARE_CT_BYTES, sh->ciphers[k]->ct.data,
               MOEH_SECAGG_SHARE_CT_BYTES);
        sa->ct_have[at] = 1;
    }
    sa->u2[i] = 1;
}

/* A site's masked vector (MASKED step), added into c->vsum. Masked words look uniformly random:
 * no range check is possible (docs/secagg.md). Once the unmask request went out a late vector
 * is refused (sa_ok): the s keys of the dropped sites may be revealed, and its pairwise masks
 * could then be stripped. */
static void handle_sa_masked(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggMasked *x = m->env->secagg_masked;
    if (!sa_ok(c, m, s, SA_MASKED, x->session)) return;
    char what[200];
    if (x->task != phase_task(c->phase) || x->round != c->round ||
        x->model_version != c->model_version) {
        snprintf(what, sizeof what,
                 "secagg_masked: task %d round %u model %llu, this session sums task %d round "
                 "%u model %llu",
                 (int)x->task, x->round, (unsigned long long)x->model_version,
                 (int)phase_task(c->phase), c->round, (unsigned long long)c->model_version);
        reply_error(c, m, -ESTALE, what, s->id);
        return;
    }
    if (!c->sa.u2[s->sa_id] || c->sa.u3[s->sa_id] || s->replied) {
        reply_error(c, m, -ESTALE,
                    "secagg_masked: duplicate, or from a site whose shares were not all "
                    "forwarded",
                    s->id);
        return;
    }
    if (c->phase == PH_TRAIN && !upload_take(c, m, s)) return; /* the small vectors are pushed */
    MOEH_ASSERT(m->frames[0].len == c->sa.cfg.len * 4);        /* the decoder checked it */
    moeh_secsum_add(c->vsum, m->frames[0].data, c->sa.cfg.len);
    c->sa.u3[s->sa_id] = 1;
    s->replied = 1;
    c->n_replied++;
}

static void handle_sa_reveal(coord_t *c, moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggReveal *r = m->env->secagg_reveal;
    sa_session_t *sa = &c->sa;
    if (!sa_ok(c, m, s, SA_UNMASK, r->session)) return;
    uint32_t h = s->sa_id, n = sa->cfg.n;
    if (!sa->u3[h] || sa->revealed[h]) {
        reply_error(c, m, -ESTALE,
                    "secagg_reveal: duplicate, or from a site that was not "
                    "asked",
                    s->id);
        return;
    }
    /* b shares of survivors, s shares of dropped clients only: never both of one owner */
    for (size_t k = 0; k < r->n_shares; k++) {
        const Moeh__SecaggShare *x = r->shares[k];
        int want_b = x->owner < n && sa->u3[x->owner];
        int want_s = x->owner < n && sa->u2[x->owner] && !sa->u3[x->owner];
        if (!(x->kind == MOEH__SECAGG_KIND__SECAGG_B ? want_b : want_s)) {
            reply_error(c, m, -EBADMSG,
                        "secagg_reveal: a share of a kind this session did "
                        "not ask for",
                        s->id);
            return;
        }
    }
    MOEH_ASSERT(sa->n_reveals + r->n_shares <= (size_t)n * n);
    for (size_t k = 0; k < r->n_shares; k++) {
        moeh_secagg_reveal_t *o = &sa->reveals[sa->n_reveals++];
        o->owner = r->shares[k]->owner;
        o->holder = h;
        o->kind = r->shares[k]->kind == MOEH__SECAGG_KIND__SECAGG_B ? MOEH_SECAGG_REVEAL_B
                                                                    : MOEH_SECAGG_REVEAL_S;
        memcpy(o->y, r->shares[k]->y, sizeof o->y);
    }
    sa->revealed[h] = 1;
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
        if (c->dp && type == MOEH__MSG_TYPE__UPDATE && m.env->update->secagg_session == 0) {
            /* a plain update shows this site's own (less) noised delta to the coordinator,
             * whether it is then accepted or not: count it before any check */
            site_t *from = s ? s : m.peer[0] ? site_by_id(c, m.peer) : NULL;
            if (from) {
                from->dp_seen++;
                if (dp_ledger_write(c, fatal) != 0) {
                    moeh_msg_clear(&m);
                    return;
                }
            }
        }
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
                grant_uploads(c); /* its slot may be free */
                break;
            case MOEH__MSG_TYPE__UPLOAD_READY:
                handle_upload_ready(c, &m, s);
                break;
            case MOEH__MSG_TYPE__EVAL_RESULT:
                handle_eval(c, &m, s);
                break;
            case MOEH__MSG_TYPE__STATS_RESULT:
                handle_stats(c, &m, s);
                break;
            case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
                handle_sa_advertise(c, &m, s);
                break;
            case MOEH__MSG_TYPE__SECAGG_SHARES:
                handle_sa_shares(c, &m, s);
                break;
            case MOEH__MSG_TYPE__SECAGG_REVEAL:
                handle_sa_reveal(c, &m, s);
                break;
            case MOEH__MSG_TYPE__SECAGG_MASKED:
                handle_sa_masked(c, &m, s);
                grant_uploads(c);
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
        if (fatal->msg[0]) return;
    }
}

static int finish_train(coord_t *c, moeh_err_t *fatal)
{
    size_t updated;
    if (c->dp) { /* the noised sum is about to shape the model: one release */
        c->dp_rounds++;
        c->dp_rounds_secagg += c->cfg->secagg != 0;
        if (dp_ledger_write(c, fatal) != 0) return -EIO;
    }
    if (c->sopt.kind == MOEH_STRATEGY_FEDAVG) {
        updated = moeh_fedavg_apply(&c->agg, c->p->w, c->quant_scale);
    } else if (c->sopt.kind == MOEH_STRATEGY_TRIMMED) {
        updated = moeh_trimmed_apply(&c->agg, c->p->w, c->site_delta, c->site_w, c->n_slots,
                                     c->cfg->trim, c->scratch);
    } else {
        updated = moeh_fedavg_mean_delta(&c->agg, c->quant_scale, c->delta, c->updated);
        moeh_server_opt_step(&c->sopt, &c->agg, c->p->w, c->sm, c->sv, c->delta, c->updated);
    }
    c->model_version++;
    /* the sample-weighted mean loss, from the sums only (secsum.h); under DP the sites keep
     * their loss (they send 0) */
    double lxs, ns, steps;
    moeh_secsum_train_get(c->vsum + c->p->n + c->p->n_groups, &lxs, &ns, &steps);
    double loss = ns > 0 && !c->dp ? lxs / ns : NAN;
    c->round_train_loss = loss;
    if (c->metrics) {
        fprintf(c->metrics, "{\"event\":\"train\",\"round\":%u,\"sites\":%u,\"participants\":%u",
                c->round, c->n_replied, c->n_participants);
        jnum(c->metrics, "train_loss", loss);
        fprintf(c->metrics, ",\"samples\":%.0f,\"steps\":%.0f", ns, steps);
        fprintf(c->metrics, ",\"groups_updated\":%zu,\"model_version\":%llu", updated,
                (unsigned long long)c->model_version);
        jdp(c, c->metrics);
        fprintf(c->metrics, "}\n");
        if (c->cfg->upload_slots)
            fprintf(c->metrics,
                    "{\"event\":\"uploads\",\"round\":%u,\"slots\":%u,\"max_in_flight\":%u,"
                    "\"expired\":%u}\n",
                    c->round, c->cfg->upload_slots, c->up_max, c->up_expired);
        fflush(c->metrics);
    }
    return 0;
}

static const char *k_combo_names[MOEH_WIRE_COMBOS] = {"E", "N", "EN", "I", "EI", "NI", "ENI"};

static void finish_stats(coord_t *c)
{
    size_t n = c->n_norm;
    double *st = c->stats_sum;
    moeh_secsum_stats_get(c->vsum, n, st);
    for (size_t i = 0; i < n; i++) {
        double cnt = st[3 * i], mean = 0, var = 1;
        if (cnt > 0) {
            mean = st[3 * i + 1] / cnt;
            var = st[3 * i + 2] / cnt - mean * mean;
        }
        c->norm[i] = (float)mean;
        c->norm[n + i] = (float)fmax(sqrt(fmax(var, 0.0)), 1e-3);
    }
    c->have_norm = 1;
    MOEH_INFO("normalisation statistics from %u sites over %zu features", c->n_replied, n);
    if (c->metrics) {
        fprintf(c->metrics, "{\"event\":\"stats\",\"sites\":%u,\"features\":%zu}\n", c->n_replied,
                n);
        fflush(c->metrics);
    }
}

static void finish_eval(coord_t *c)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    const uint32_t T = (uint32_t)cfg->model.n_tasks, nb = cfg->eval_bins;
    double mean = 0;
    int n_ok = 0;
    moeh_secsum_eval_get(c->vsum, &c->lim, c->hist, c->gate_sum, c->combo_rows, &c->eval_loss_sum,
                         &c->eval_n_labels);
    for (size_t sl = 0; sl < MOEH_WIRE_SLICES; sl++)
        for (uint32_t t = 0; t < T; t++)
            c->last_auroc[sl][t] = slice_auroc(c->hist, T, nb, sl, t);
    for (uint32_t t = 0; t < T; t++)
        if (!isnan(c->last_auroc[0][t])) {
            mean += c->last_auroc[0][t];
            n_ok++;
        }
    mean = n_ok ? mean / n_ok : NAN;
    double eval_loss = c->eval_n_labels ? c->eval_loss_sum / (double)c->eval_n_labels : NAN;
    double secs = (double)(moeh_now_ms() - c->round_t0) / 1000.0;
    if (c->metrics) {
        FILE *f = c->metrics;
        char key[32];
        fprintf(f, "{\"event\":\"eval\",\"round\":%u,\"sites\":%u", c->round, c->n_replied);
        jnum(f, "train_loss", c->round_train_loss);
        jnum(f, "test_loss", eval_loss);
        jnum(f, "auroc_mean", mean);
        jnum(f, "seconds", secs);
        for (uint32_t t = 0; t < T; t++) {
            snprintf(key, sizeof key, "auroc_%s", c->task_names[t]);
            jnum(f, key, c->last_auroc[0][t]);
        }
        jdp(c, f);
        fprintf(f, "}\n");
        for (uint32_t t = 0; t < T; t++) {
            fprintf(f, "{\"event\":\"task\",\"round\":%u,\"task\":\"%s\"", c->round,
                    c->task_names[t]);
            jnum(f, "auroc", c->last_auroc[0][t]);
            for (size_t k = 0; k < MOEH_WIRE_COMBOS; k++) {
                snprintf(key, sizeof key, "auroc_%s", k_combo_names[k]);
                jnum(f, key, c->last_auroc[k + 1][t]);
            }
            fprintf(f, "}\n");
        }
        /* mean gate weight per expert for each modality combination */
        fprintf(f, "{\"event\":\"gate\",\"round\":%u", c->round);
        for (size_t k = 0; k < MOEH_WIRE_COMBOS; k++) {
            fprintf(f, ",\"%s\":{\"rows\":%llu,\"weights\":[", k_combo_names[k],
                    (unsigned long long)c->combo_rows[k]);
            for (uint32_t e = 0; e < c->n_experts; e++)
                fprintf(f, "%s%.4f", e ? "," : "",
                        c->combo_rows[k]
                            ? c->gate_sum[k * c->n_experts + e] / (double)c->combo_rows[k]
                            : 0.0);
            fprintf(f, "]}");
        }
        fprintf(f, "}\n");
        if (cfg->secagg) /* the per-site rows of the plain path cannot exist */
            fprintf(f,
                    "{\"event\":\"site_metrics\",\"round\":%u,\"available\":false,\"why\":"
                    "\"secure aggregation: the coordinator learns only sums; each site logs its "
                    "own metrics\"}\n",
                    c->round);
        fflush(f);
    }
    if (cfg->print_table) {
        if (!c->table_header_done) {
            c->table_header_done = 1;
            printf("%5s %7s %10s %10s", "round", "sites", "train_loss", "test_loss");
            for (uint32_t t = 0; t < T && t < 4; t++)
                printf(" %11s", c->task_names[t]);
            printf(" %10s %7s", "auroc_mean", "time_s");
            if (c->dp) printf(" %9s", "epsilon");
            printf("\n");
        }
        char sites[32];
        snprintf(sites, sizeof sites, "%u/%u", c->n_replied, c->n_participants);
        printf("%5u %7s %10.4f %10.4f", c->round, sites, c->round_train_loss, eval_loss);
        for (uint32_t t = 0; t < T && t < 4; t++)
            printf(" %11.4f", c->last_auroc[0][t]);
        printf(" %10.4f %7.2f", mean, secs);
        if (c->dp) {
            double eps, eps_coord;
            dp_epsilons(c, &eps, &eps_coord);
            printf(" %9.3f", eps);
        }
        printf("\n");
        fflush(stdout);
    }
    MOEH_INFO("round %u done: %u sites, train loss %.4f, test loss %.4f, mean AUROC %.4f", c->round,
              c->n_replied, c->round_train_loss, eval_loss, mean);
    if (c->dp) {
        double eps, eps_coord;
        dp_epsilons(c, &eps, &eps_coord);
        MOEH_INFO("round %u: DP spent so far: epsilon %.4f at delta %g over %llu released rounds "
                  "(noise multiplier %g, clip %g); against this coordinator's view: %.4f",
                  c->round, eps, (double)c->cfg->dp_delta, (unsigned long long)c->dp_rounds,
                  (double)c->cfg->dp_noise, (double)c->cfg->dp_clip, eps_coord);
    }
}

/* The final table: test AUROC per task, overall and per modality combination. */
static void print_final_table(const coord_t *c)
{
    const uint32_t T = (uint32_t)c->cfg->model.n_tasks;
    printf("\ntest AUROC of the final model, per modality combination "
           "(E = EHR, N = notes, I = image; n = test rows):\n");
    printf("%-6s %7s", "combo", "n");
    for (uint32_t t = 0; t < T && t < 4; t++)
        printf(" %11s", c->task_names[t]);
    printf("\n");
    for (size_t sl = 0; sl < MOEH_WIRE_SLICES; sl++) {
        uint64_t rows = 0;
        if (sl == 0)
            for (size_t k = 0; k < MOEH_WIRE_COMBOS; k++)
                rows += c->combo_rows[k];
        else
            rows = c->combo_rows[sl - 1];
        if (sl > 0 && rows == 0) continue;
        printf("%-6s %7llu", sl == 0 ? "all" : k_combo_names[sl - 1], (unsigned long long)rows);
        for (uint32_t t = 0; t < T && t < 4; t++) {
            if (isnan(c->last_auroc[sl][t]))
                printf(" %11s", "-");
            else
                printf(" %11.4f", c->last_auroc[sl][t]);
        }
        printf("\n");
    }
    fflush(stdout);
}

/* Writes the state that --resume needs, atomically. Failing to is fatal: the run promised it. */
static int save_checkpoint(coord_t *c, moeh_err_t *fatal)
{
    float shape[4] = {(float)c->mcfg.n_static, (float)c->mcfg.n_vars, (float)c->mcfg.n_steps,
                      (float)c->mcfg.img_size};
    moeh_ckpt_t k = {.round = c->round,
                     .model_version = c->model_version,
                     .spec_hash = c->spec_hash,
                     .n_params = c->p->n,
                     .n_groups = c->p->n_groups,
                     .n_arrays = 3,
                     .counts = {c->p->n, 2 * (size_t)c->n_norm, 4, c->p->n, c->p->n},
                     .arrays = {c->p->w, c->norm, shape, c->sm, c->sv}};
    snprintf(k.names[0], sizeof k.names[0], "params");
    snprintf(k.names[1], sizeof k.names[1], "norm");
    snprintf(k.names[2], sizeof k.names[2], "data_shape");
    if (c->sm) { /* the server moments, for exact resume */
        snprintf(k.names[3], sizeof k.names[3], "server_m");
        snprintf(k.names[4], sizeof k.names[4], "server_v");
        k.n_arrays = 5;
    }
    moeh_err_t err = {0};
    int rc = moeh_ckpt_save(c->ckpt_path, &k, &err);
    if (rc) moeh_errf(fatal, rc, "cannot write the checkpoint: %s", err.msg);
    return rc;
}

/* Restores the model, the normalisation and the round counter (--resume). The model is
 * rebuilt from this run's configuration and the stored data shapes; the layout hash must
 * match the stored one, so a checkpoint never loads into a different architecture. */
static int load_checkpoint(coord_t *c, moeh_err_t *err)
{
    moeh_ckpt_t k;
    int rc = moeh_ckpt_load(c->ckpt_path, &k, err);
    if (rc) return rc;
    float *shape = moeh_ckpt_array(&k, "data_shape", 4);
    if (!shape) {
        rc = moeh_errf(err, -EBADMSG, "%s: no data_shape array", c->ckpt_path);
        goto out;
    }
    if ((rc = create_model(c, (uint32_t)shape[0], (uint32_t)shape[1], (uint32_t)shape[2],
                           (uint32_t)shape[3], err)))
        goto out;
    float *params = moeh_ckpt_array(&k, "params", c->p->n),
          *norm = moeh_ckpt_array(&k, "norm", 2 * (size_t)c->n_norm);
    if (c->spec_hash != k.spec_hash || !params || !norm) {
        rc = moeh_errf(err, -EINVAL,
                       "%s: the model layout differs from this run's "
                       "configuration (architecture, widths or buckets changed?)",
                       c->ckpt_path);
        goto out;
    }
    if (c->sm) {
        float *sm = moeh_ckpt_array(&k, "server_m", c->p->n),
              *sv = moeh_ckpt_array(&k, "server_v", c->p->n);
        if (!sm || !sv) {
            rc = moeh_errf(err, -EINVAL,
                           "%s has no server moments: it was written by a %s run, "
                           "this one is %s",
                           c->ckpt_path, "fedavg", moeh_strategy_name(c->sopt.kind));
            goto out;
        }
        memcpy(c->sm, sm, c->p->n * sizeof(float));
        memcpy(c->sv, sv, c->p->n * sizeof(float));
    }
    memcpy(c->p->w, params, c->p->n * sizeof(float));
    memcpy(c->norm, norm, 2 * (size_t)c->n_norm * sizeof(float));
    c->have_norm = 1;
    c->round = k.round;
    c->model_version = k.model_version;
    MOEH_INFO("resuming after round %u (model version %llu) from %s", k.round,
              (unsigned long long)k.model_version, c->ckpt_path);
out:
    moeh_ckpt_free(&k);
    return rc;
}

/* Re-reads the registry (SIGHUP): added keys are admitted from now on; sites whose key was
 * removed are told and dropped at once, also on connections they already hold. A registry
 * that does not load leaves the current one in force. */
static void reload_registry(coord_t *c)
{
    moeh_registry_t reg;
    moeh_err_t err = {0};
    if (moeh_registry_load(c->cfg->registry_path, &reg, &err) != 0) {
        MOEH_ERROR("registry not reloaded, the current one stays in force: %s", err.msg);
        return;
    }
    size_t n = reg.n;
    moeh_zap_replace_registry(c->zap, &reg);
    MOEH_INFO("registry reloaded from %s: %zu sites", c->cfg->registry_path, n);
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->admitted || moeh_zap_has_site(c->zap, s->id)) continue;
        moeh_wire_send_error(c->router, s->rid, s->rid_len, -EACCES, "this site's key was revoked");
        site_gone(c, s, "key revoked");
    }
}

/* A phase attempt failed: retry it (up to max_retries), else the run fails with `what`. */
static void retry_phase(coord_t *c, moeh_err_t *fatal, const char *name, const char *what)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    if (++c->retries > cfg->max_retries) {
        moeh_errf(fatal, -ETIMEDOUT,
                  "round %u %s phase: %s, after %u attempts (is every site "
                  "running and reachable?)",
                  c->round, name, what, c->retries);
        return;
    }
    MOEH_WARN("round %u %s phase: %s; retry %u of %u", c->round, name, what, c->retries,
              cfg->max_retries);
    open_phase(c, c->phase);
}

/* Sends Keys (U1) to every live member of U1. */
static void sa_send_keys(coord_t *c)
{
    sa_session_t *sa = &c->sa;
    uint32_t n = sa->cfg.n, m = 0;
    Moeh__SecaggKey *k = calloc(n, sizeof *k);
    Moeh__SecaggKey **kp = calloc(n, sizeof *kp);
    if (!k || !kp) {
        MOEH_ERROR("out of memory for the secure-aggregation key list");
        goto out; /* the sites miss their keys; the step times out and the attempt is retried */
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!sa->u1[i]) continue;
        moeh__secagg_key__init(&k[m]);
        k[m].id = i;
        k[m].c_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, sa->keys[i].c_pk};
        k[m].s_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, sa->keys[i].s_pk};
        kp[m] = &k[m];
        m++;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggKeys ks = MOEH__SECAGG_KEYS__INIT;
    ks.session = sa->cfg.round;
    ks.n_keys = m;
    ks.keys = kp;
    env.type = MOEH__MSG_TYPE__SECAGG_KEYS;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_KEYS;
    env.secagg_keys = &ks;
    for (uint32_t i = 0; i < n; i++)
        if (sa->u1[i] && sa->site[i]->admitted) send_to(c, sa->site[i], &env, NULL, 0);
out:
    free(k);
    free(kp);
}

/* Forwards to every live member j of U2 the ciphertexts addressed to j by U2, and U2. */
static void sa_forward_shares(coord_t *c)
{
    sa_session_t *sa = &c->sa;
    uint32_t n = sa->cfg.n, nu2 = 0;
    Moeh__SecaggCipher *cs = calloc(n, sizeof *cs);
    Moeh__SecaggCipher **cp = calloc(n, sizeof *cp);
    uint32_t *u2 = calloc(n, sizeof *u2);
    if (!cs || !cp || !u2) {
        MOEH_ERROR("out of memory for forwarding the secure-aggregation shares");
        goto out;
    }
    for (uint32_t i = 0; i < n; i++)
        if (sa->u2[i]) u2[nu2++] = i;
    for (uint32_t j = 0; j < n; j++) {
        if (!sa->u2[j] || !sa->site[j]->admitted) continue;
        size_t m = 0;
        for (uint32_t i = 0; i < n; i++) {
            size_t at = (size_t)i * n + j;
            if (i == j || !sa->u2[i] || !sa->ct_have[at]) continue;
            moeh__secagg_cipher__init(&cs[m]);
            cs[m].peer = i;
            cs[m].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES,
                                             sa->cts + at * MOEH_SECAGG_SHARE_CT_BYTES};
            cp[m] = &cs[m];
            m++;
        }
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
        sh.session = sa->cfg.round;
        sh.n_ciphers = m;
        sh.ciphers = cp;
        sh.n_u2 = nu2;
        sh.u2 = u2;
        env.type = MOEH__MSG_TYPE__SECAGG_SHARES;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES;
        env.secagg_shares = &sh;
        send_to(c, sa->site[j], &env, NULL, 0);
    }
out:
    free(cs);
    free(cp);
    free(u2);
}

/* Lists U3 (survivors) and D = U2 \ U3 (dropped) in increasing order. */
static void sa_lists(const sa_session_t *sa, uint32_t *surv, size_t *ns, uint32_t *drop, size_t *nd)
{
    *ns = *nd = 0;
    for (uint32_t i = 0; i < sa->cfg.n; i++) {
        if (sa->u3[i])
            surv[(*ns)++] = i;
        else if (sa->u2[i])
            drop[(*nd)++] = i;
    }
}

static void sa_send_unmask(coord_t *c, const uint32_t *surv, size_t ns, const uint32_t *drop,
                           size_t nd)
{
    sa_session_t *sa = &c->sa;
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggUnmask um = MOEH__SECAGG_UNMASK__INIT;
    um.session = sa->cfg.round;
    um.n_survivors = ns;
    um.survivors = (uint32_t *)surv;
    um.n_dropped = nd;
    um.dropped = (uint32_t *)drop;
    env.type = MOEH__MSG_TYPE__SECAGG_UNMASK;
    env.body_case = MOEH__ENVELOPE__BODY_SECAGG_UNMASK;
    env.secagg_unmask = &um;
    for (size_t k = 0; k < ns; k++)
        if (sa->site[surv[k]]->admitted) send_to(c, sa->site[surv[k]], &env, NULL, 0);
}

/* Advances a securely aggregated phase: closes the current step when every live site it waits
 * for answered or at the step's deadline. Returns 1 when the unmasked sum is ready (c->vsum
 * holds the plain sum of U3's vectors, and for TRAIN c->agg that of their update words), 0
 * otherwise (waiting, or the attempt was aborted and retried; fatal set if out of retries). */
static int sa_step(coord_t *c, moeh_err_t *fatal)
{
    sa_session_t *sa = &c->sa;
    uint32_t n = sa->cfg.n, pending = 0, got = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *in = sa->step == SA_KEYS     ? NULL
                            : sa->step == SA_SHARES ? sa->u1
                            : sa->step == SA_MASKED ? sa->u2
                                                    : sa->u3;
        const uint8_t *done = sa->step == SA_KEYS     ? sa->u1
                              : sa->step == SA_SHARES ? sa->u2
                              : sa->step == SA_MASKED ? sa->u3
                                                      : sa->revealed;
        if (in && !in[i]) continue;
        const site_t *s = sa->site[i];
        got += done[i] != 0;
        /* (a site whose upload grant expired is not waited for: it is dropped) */
        pending += !done[i] && s->admitted && s->participant && s->sa_in && s->upload != UP_EXPIRED;
    }
    int64_t now = moeh_now_ms();
    if (pending > 0 && now < c->phase_deadline) return 0;
    static const char *k_step[] = {"", "key advertisement", "share exchange", "masked update",
                                   "unmasking"};
    char what[MOEH_ERRMSG_MAX + 64], tag[48];
    const char *name = phase_name(c->phase);
    if (c->phase == PH_TRAIN)
        snprintf(tag, sizeof tag, "round %u", c->round);
    else if (c->phase == PH_EVAL)
        snprintf(tag, sizeof tag, "round %u eval", c->round);
    else
        snprintf(tag, sizeof tag, "statistics");
    if (n == 0) {
        snprintf(what, sizeof what, "secure aggregation needs 2..%u participants",
                 MOEH_WIRE_SECAGG_MAX);
        retry_phase(c, fatal, name, what);
        return 0;
    }
    if (got < sa->need) {
        snprintf(what, sizeof what,
                 "secure aggregation: %u sites completed the %s step, %u "
                 "needed (threshold %u, quorum %u)",
                 got, k_step[sa->step], sa->need, sa->cfg.t, c->cfg->min_sites);
        retry_phase(c, fatal, name, what);
        return 0;
    }
    if (pending > 0)
        MOEH_WARN("%s: secure aggregation %s step: deadline passed with %u of the sites", tag,
                  k_step[sa->step], got);
    c->phase_deadline = now + c->cfg->phase_deadline_ms;
    if (sa->step == SA_KEYS) {
        sa->step = SA_SHARES;
        sa_send_keys(c);
        return 0;
    }
    if (sa->step == SA_SHARES) {
        sa->step = SA_MASKED;
        sa_forward_shares(c);
        return 0;
    }
    uint32_t surv[MOEH_WIRE_SECAGG_MAX], drop[MOEH_WIRE_SECAGG_MAX];
    size_t ns, nd;
    sa_lists(sa, surv, &ns, drop, &nd);
    if (sa->step == SA_MASKED) {
        /* from here on updates are refused: the dropped sites' s keys may be revealed */
        sa->step = SA_UNMASK;
        MOEH_INFO("%s: secure aggregation: %zu masked %s, %zu sites dropped; asking the "
                  "survivors for their shares (n = %u, k = %u, t = %u)",
                  tag, ns, c->phase == PH_TRAIN ? "updates" : "vectors", nd, sa->cfg.n, sa->cfg.k,
                  sa->cfg.t);
        sa_send_unmask(c, surv, ns, drop, nd);
        return 0;
    }
    moeh_err_t err = {0};
    int rc = moeh_secagg_server_unmask(&sa->cfg, sa->keys, surv, ns, drop, nd, sa->reveals,
                                       sa->n_reveals, c->vsum, &err);
    if (rc) {
        snprintf(what, sizeof what, "secure aggregation: cannot unmask the sum: %s", err.msg);
        retry_phase(c, fatal, name, what);
        return 0;
    }
    if (c->phase == PH_TRAIN) { /* the update words go to the server step */
        memcpy(c->agg.sum, c->vsum, (c->p->n + c->p->n_groups) * sizeof(uint32_t));
        c->agg.n_updates = ns;
    }
    MOEH_INFO("%s: secure aggregation: unmasked the sum of %zu sites (%zu dropped)", tag, ns, nd);
    sa->step = SA_OFF;
    return 1;
}

/* Closes the current phase if it is complete or past its deadline. Sets fatal on failure. */
static void step_phase(coord_t *c, moeh_err_t *fatal)
{
    const moeh_coord_cfg_t *cfg = c->cfg;
    int64_t now = moeh_now_ms();
    uint32_t pending = 0;
    if (c->sa.step != SA_OFF) {
        if (!sa_step(c, fatal)) return;
    } else {
        for (size_t i = 0; i < c->n_sites; i++)
            pending += waits_for(&c->sites[i]);
        if (pending > 0 && now < c->phase_deadline) return;
    }
    const char *name = phase_name(c->phase);
    if (c->n_replied < cfg->min_sites) {
        char what[160];
        snprintf(what, sizeof what, "%u of the %u sites needed replied", c->n_replied,
                 cfg->min_sites);
        retry_phase(c, fatal, name, what);
        return;
    }
    if (pending > 0)
        MOEH_WARN("round %u %s phase: deadline passed, closing with %u of %u sites", c->round, name,
                  c->n_replied, c->n_participants);
    c->retries = 0;
    if (c->phase == PH_STATS) {
        finish_stats(c);
        c->round++;
        c->round_t0 = moeh_now_ms();
        open_phase(c, PH_TRAIN);
    } else if (c->phase == PH_TRAIN) {
        if (finish_train(c, fatal) != 0) return;
        open_phase(c, PH_EVAL);
    } else {
        finish_eval(c);
        if (save_checkpoint(c, fatal) != 0) return;
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
    if (now - c->last_hb < (int64_t)c->cfg->heartbeat_ms) return;
    c->last_hb = now;
    c->hb_seq++;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->admitted) continue;
        if (moeh_wire_send_simple(c->router, s->rid, s->rid_len, MOEH__MSG_TYPE__HEARTBEAT, NULL,
                                  c->hb_seq) == -EHOSTUNREACH)
            site_gone(c, s, "connection closed");
    }
}

static int write_config(const coord_t *c, moeh_err_t *err)
{
    const moeh_coord_cfg_t *k = c->cfg;
    cJSON *j = cJSON_CreateObject();
    if (!j) return moeh_errf(err, -ENOMEM, "out of memory");
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
    cJSON_AddNumberToObject(j, "upload_slots", k->upload_slots);
    char *model = NULL; /* the configured model spec (data shapes 0: the sites give them) */
    int mrc = moeh_moe_cfg_to_json(&k->model, &model, err);
    cJSON *mj = mrc ? NULL : cJSON_Parse(model);
    free(model);
    if (!mj) {
        cJSON_Delete(j);
        return mrc ? mrc : moeh_errf(err, -ENOMEM, "out of memory");
    }
    cJSON_AddItemToObject(j, "model", mj);
    cJSON_AddNumberToObject(j, "seed", (double)k->model.seed);
    cJSON_AddNumberToObject(j, "warmup_rounds", k->warmup_rounds);
    cJSON_AddNumberToObject(j, "prox_mu", k->prox_mu);
    cJSON_AddStringToObject(j, "strategy", k->strategy);
    cJSON_AddNumberToObject(j, "server_lr", k->server_lr);
    cJSON_AddNumberToObject(j, "server_beta1", k->server_beta1);
    cJSON_AddNumberToObject(j, "server_beta2", k->server_beta2);
    cJSON_AddNumberToObject(j, "server_tau", k->server_tau);
    cJSON_AddNumberToObject(j, "trim", k->trim);
    cJSON_AddStringToObject(j, "data_shape", k->data_shape ? k->data_shape : "");
    cJSON_AddBoolToObject(j, "secagg", k->secagg);
    cJSON_AddNumberToObject(j, "secagg_k", k->secagg_k);
    cJSON_AddBoolToObject(j, "unweighted", k->unweighted || k->dp_clip > 0);
    cJSON_AddNumberToObject(j, "dp_clip", k->dp_clip);
    cJSON_AddNumberToObject(j, "dp_noise", k->dp_noise);
    cJSON_AddNumberToObject(j, "dp_delta", k->dp_delta);
    cJSON_AddNumberToObject(j, "local_epochs", k->local_epochs);
    cJSON_AddNumberToObject(j, "batch_size", k->batch_size);
    cJSON_AddNumberToObject(j, "lr", k->lr);
    cJSON_AddNumberToObject(j, "weight_decay", k->weight_decay);
    cJSON_AddNumberToObject(j, "clip", k->clip);
    cJSON_AddNumberToObject(j, "delta_clip", k->delta_clip);
    cJSON_AddNumberToObject(j, "eval_bins", k->eval_bins);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) return moeh_errf(err, -ENOMEM, "out of memory");
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
    if (cfg->rounds == 0 || cfg->min_sites == 0 || cfg->model.n_tasks != 3 || cfg->model.arch > 6 ||
        cfg->batch_size == 0 || cfg->prox_mu < 0 || cfg->eval_bins < 2 || cfg->eval_bins > 100000 ||
        cfg->heartbeat_ms < 10 || !(cfg->delta_clip > 0))
        return moeh_errf(err, -EINVAL,
                         "invalid configuration: rounds, min_sites and batch_size "
                         "must be > 0, 3 tasks, arch 0..6, eval_bins 2..100000, "
                         "heartbeat_ms >= 10, delta_clip > 0");
    c->sopt = (moeh_server_opt_t){.lr = cfg->server_lr,
                                  .beta1 = cfg->server_beta1,
                                  .beta2 = cfg->server_beta2,
                                  .tau = cfg->server_tau};
    if (moeh_strategy_parse(cfg->strategy, &c->sopt.kind) != 0)
        return moeh_errf(err, -EINVAL,
                         "--strategy '%s': expected fedavg, fedadam, fedyogi or trimmed",
                         cfg->strategy);
    if (cfg->secagg && c->sopt.kind == MOEH_STRATEGY_TRIMMED)
        return moeh_errf(err, -EINVAL,
                         "--secagg and --strategy trimmed exclude each other: the "
                         "trimmed mean needs every site's update, secure "
                         "aggregation reveals only their sum");
    if (cfg->secagg_k && !cfg->secagg)
        return moeh_errf(err, -EINVAL, "--secagg-k %u needs --secagg", cfg->secagg_k);
    if (cfg->secagg_k % 2 != 0 || cfg->secagg_k >= MOEH_WIRE_SECAGG_MAX)
        return moeh_errf(err, -EINVAL,
                         "--secagg-k %u: expected 0 (every pair masks) or an even number of "
                         "neighbours in 2..%u (SecAgg+: the threshold is then k/2 + 1 of each "
                         "site's k + 1)",
                         cfg->secagg_k, MOEH_WIRE_SECAGG_MAX - 2);
    if (cfg->secagg && (rc = moeh_crypto_init()))
        return moeh_errf(err, rc, "libsodium failed to initialise");
    if (cfg->secagg)
        MOEH_INFO("secure aggregation: the coordinator learns only sums; per-site metrics are "
                  "not available to it (each site logs its own)");
    if (c->sopt.kind == MOEH_STRATEGY_TRIMMED && !(cfg->trim >= 0 && cfg->trim < 0.5))
        return moeh_errf(err, -EINVAL, "--trim %g: expected a fraction in [0, 0.5)",
                         (double)cfg->trim);
    if ((c->sopt.kind == MOEH_STRATEGY_FEDADAM || c->sopt.kind == MOEH_STRATEGY_FEDYOGI) &&
        !(cfg->server_lr > 0 && cfg->server_beta1 >= 0 && cfg->server_beta1 < 1 &&
          cfg->server_beta2 >= 0 && cfg->server_beta2 < 1 && cfg->server_tau > 0))
        return moeh_errf(err, -EINVAL,
                         "server optimiser: lr > 0, betas in [0, 1) and tau > 0 "
                         "expected");
    if (!(isfinite(cfg->dp_clip) && cfg->dp_clip >= 0) ||
        !(isfinite(cfg->dp_noise) && cfg->dp_noise >= 0 &&
          cfg->dp_noise <= MOEH_WIRE_DP_MAX_NOISE) ||
        !(cfg->dp_delta > 0 && cfg->dp_delta < 1))
        return moeh_errf(err, -EINVAL,
                         "--dp-clip >= 0, --dp-noise in [0, %g] and --dp-delta in (0, 1) "
                         "expected",
                         MOEH_WIRE_DP_MAX_NOISE);
    c->dp = cfg->dp_clip > 0;
    c->unit_weight = c->dp || cfg->unweighted;
    c->quant_range = cfg->delta_clip;
    if (!c->dp && cfg->dp_noise > 0)
        return moeh_errf(err, -EINVAL,
                         "--dp-noise needs --dp-clip: the noise is calibrated to the clip");
    if (c->dp) {
        if (c->sopt.kind == MOEH_STRATEGY_TRIMMED)
            return moeh_errf(err, -EINVAL,
                             "--dp-clip and --strategy trimmed exclude each other: the "
                             "noise is calibrated for the sum of the sites' updates, the "
                             "trimmed mean does not use their sum");
        if (cfg->min_sites > MOEH_WIRE_DP_MAX_SITES)
            return moeh_errf(err, -EINVAL, "--min-sites %u: at most %u with DP", cfg->min_sites,
                             MOEH_WIRE_DP_MAX_SITES);
        c->quant_range = moeh_dp_range(cfg->dp_clip, cfg->dp_noise, cfg->min_sites);
        if (!isfinite(c->quant_range))
            return moeh_errf(err, -EINVAL, "--dp-clip %g with --dp-noise %g is too large",
                             (double)cfg->dp_clip, (double)cfg->dp_noise);
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
    static const char *names3[] = {"mortality", "los7", "readmit30"};
    for (uint32_t t = 0; t < cfg->model.n_tasks; t++) {
        if (cfg->model.n_tasks == 3)
            snprintf(c->task_buf[t], sizeof c->task_buf[t], "%s", names3[t]);
        else
            snprintf(c->task_buf[t], sizeof c->task_buf[t], "task%u", t);
        c->task_names[t] = c->task_buf[t];
    }
    if ((rc = moeh_mkdir_p(cfg->out_dir, err))) return rc;
    if ((rc = write_config(c, err))) return rc;
    if (moeh_path_join(c->ckpt_path, sizeof c->ckpt_path, cfg->out_dir, "checkpoint.moeh"))
        return moeh_errf(err, -ENAMETOOLONG, "--out is too long");
    if (cfg->resume && (rc = load_checkpoint(c, err))) return rc;
    if (moeh_path_join(c->dp_ledger_path, sizeof c->dp_ledger_path, cfg->out_dir, "dp_ledger.json"))
        return moeh_errf(err, -ENAMETOOLONG, "--out is too long");
    if (cfg->resume) {
        if ((rc = dp_ledger_load(c, err))) return rc;
    } else { /* a new run: no releases yet, and no ledger of an earlier run in --out */
        if (unlink(c->dp_ledger_path) != 0 && errno != ENOENT)
            return moeh_errf(err, -errno, "%s: cannot remove: %s", c->dp_ledger_path,
                             strerror(errno));
        if (c->dp && (rc = dp_ledger_write(c, err))) return rc;
    }
    if (cfg->data_shape) { /* pinned shapes: the model exists before any site says hello */
        unsigned v[4];
        char extra;
        if (sscanf(cfg->data_shape, "%u,%u,%u,%u%c", &v[0], &v[1], &v[2], &v[3], &extra) != 4 ||
            v[0] > (1u << 20) || v[1] > 4096 || v[2] == 0 || v[2] > 1000 || v[3] > 1024)
            return moeh_errf(err, -EINVAL,
                             "--data-shape '%s': expected STATIC,VARS,HOURS,IMAGE (e.g. "
                             "35,33,48,64)",
                             cfg->data_shape);
        if (c->model) { /* resumed: the checkpoint must agree */
            if (c->mcfg.n_static != v[0] || c->mcfg.n_vars != v[1] || c->mcfg.n_steps != v[2] ||
                c->mcfg.img_size != v[3])
                return moeh_errf(err, -EINVAL,
                                 "--data-shape %s differs from the checkpoint's (%zu,%zu,%zu,%zu)",
                                 cfg->data_shape, c->mcfg.n_static, c->mcfg.n_vars, c->mcfg.n_steps,
                                 c->mcfg.img_size);
        } else if ((rc = create_model(c, v[0], v[1], v[2], v[3], err))) {
            return rc;
        }
    }
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
            return moeh_errf(err, -EINVAL,
                             "a site registry (--registry) and the coordinator's "
                             "key (--key) are required (or --insecure for tests)");
        if ((rc = moeh_crypto_init())) return moeh_errf(err, rc, "libsodium failed to initialise");
        moeh_registry_t reg;
        if ((rc = moeh_registry_load(cfg->registry_path, &reg, err))) return rc;
        if (reg.n == 0) {
            moeh_registry_free(&reg);
            return moeh_errf(err, -EINVAL, "%s: no site is registered under [sites]",
                             cfg->registry_path);
        }
        registered = (uint32_t)reg.n;
        if ((rc = moeh_keypair_read(cfg->key_path, &c->kp, err))) return rc;
        if ((rc = moeh_zap_start(c->zctx, &reg, &c->zap))) {
            moeh_registry_free(&reg);
            return moeh_errf(err, rc, "cannot start the ZAP handler: %s", moeh_strerror(rc));
        }
    }
    if (!(c->router = zmq_socket(c->zctx, ZMQ_ROUTER)))
        return moeh_errf(err, -zmq_errno(), "cannot create a socket");
    int one = 1, linger = 0, sndtimeo = 2000;
    int64_t maxmsg = MOEH_WIRE_MAX_PART_BYTES; /* per part: tensors travel in parts */
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
    if (c->wait_target < cfg->min_sites) c->wait_target = cfg->min_sites;
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
    if (c->zctx) zmq_ctx_term(c->zctx);
    moeh_keypair_destroy(&c->kp);
    if (c->metrics) fclose(c->metrics);
    moeh_fedavg_free(&c->agg);
    sa_free(&c->sa);
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
    free(c->sites);
}

int moeh_coord_run(const moeh_coord_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
{
    coord_t c;
    memset(&c, 0, sizeof c);
    c.cfg = cfg;
    moeh_err_t fatal = {0};
    int rc = setup(&c, err);
    if (rc) goto out;
    c.wait_start = moeh_now_ms();
    c.phase = PH_WAIT;
    while (!*stop && c.phase != PH_DONE) {
        zmq_pollitem_t it = {.socket = c.router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 50) < 0 && zmq_errno() != EINTR) {
            rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
            goto out;
        }
        if (cfg->reload && *cfg->reload) {
            *cfg->reload = 0;
            if (c.zap) reload_registry(&c);
        }
        handle_message(&c, &fatal);
        if (fatal.msg[0]) break;
        heartbeat_and_liveness(&c);
        expire_grants(&c);
        grant_uploads(&c); /* slots freed by sites gone or grants expired */
        if (c.phase == PH_WAIT) {
            uint32_t n = n_admitted(&c);
            int64_t waited = moeh_now_ms() - c.wait_start;
            if (c.round >= cfg->rounds) { /* resumed a run that had finished */
                c.phase = PH_DONE;
                break;
            }
            if (n >= c.wait_target || (waited >= cfg->start_timeout_ms && n >= cfg->min_sites)) {
                if (!c.have_norm) {
                    open_phase(&c, PH_STATS);
                } else {
                    c.round++;
                    c.round_t0 = moeh_now_ms();
                    open_phase(&c, PH_TRAIN);
                }
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
        if (fatal.msg[0]) break;
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
    if ((rc = moeh_npy_write(path, MOEH_DT_F32, 1, shape, c.p->w, err))) goto out;
    if (cfg->print_table && c.table_header_done) print_final_table(&c);
    MOEH_INFO("all %u rounds done; model written to %s", cfg->rounds, path);
    rc = 0;
out:
    teardown(&c);
    return rc;
}
