/* replies.c - the coordinator core's handling of the sites' replies (coord_internal.h): the
 * session checks, STATS / TRAIN / EVAL results and the bounds of a plain update, granted
 * uploads (moeh_uploads.h), and the glue to the secure-aggregation server
 * (moeh_secagg_server.h): its members, their messages and the closing of each step. */
#include "coord_internal.h"
#include "moeh_evalsum.h"

#include "moeh_hist.h"
#include "moeh_secsum.h"

#include <math.h>
#include <string.h>

/* Session checks shared by Update and EvalResult: phase, participant, first reply, round and
 * model version. Returns NULL (having replied with an Error) if the message must be dropped. */
static int session_ok(coord_t *c, const moeh_msg_t *m, site_t *s, phase_t want, uint32_t round,
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
    coord_reply_error(c, m, -ESTALE, what, s->id);
    return 0;
}

/* ---- granted uploads (--upload-slots; moeh_uploads.h) ------------------------------------- */

static int site_alive(void *ctx, size_t i)
{
    const coord_t *c = ctx;
    return c->sites[i].admitted;
}

/* Grants uploads, first announced first, while a slot is free. */
void coord_grant_uploads(coord_t *c)
{
    const uint32_t slots = c->cfg->upload_slots;
    if (!slots || !coord_phase_has_replies(c->phase)) return;
    moeh_sa_step_t step = moeh_sa_server_step(c->sa);
    if (step != MOEH_SA_OFF && step != MOEH_SA_MASKED) return; /* masked vectors only now */
    long i;
    while ((i = moeh_uploads_grant_next(c->up, c->now, site_alive, c)) >= 0) {
        site_t *next = &c->sites[i];
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__UploadGrant g = MOEH__UPLOAD_GRANT__INIT;
        g.round = c->round;
        g.model_version = c->model_version;
        g.session = step != MOEH_SA_OFF ? moeh_sa_server_cfg(c->sa)->round : 0;
        moeh_env_upload_grant(&env, &g);
        /* a site found gone here releases the slot (site_gone); any other failure leaves
         * the grant to expire */
        coord_send_to(c, next, &env, NULL, 0);
        uint32_t in_use, most, expired;
        moeh_uploads_counts(c->up, &in_use, &most, &expired);
        MOEH_DEBUG("round %u: upload slot granted to %s (%u of %u in use)", c->round, next->id,
                   in_use, slots);
    }
}

/* A grant with no chunk for heartbeat_timeout_ms (from the grant, then from each chunk)
 * expires: the slot goes to the next site, the chunks so far are dropped, this site's upload
 * is refused for the rest of the phase and the phase no longer waits for it. An honest upload
 * sends a chunk well within that time (a window of chunks is 256 KiB). */
void coord_expire_grants(coord_t *c)
{
    long i;
    while ((i = moeh_uploads_expire_next(c->up, c->now)) >= 0) {
        moeh_stream_rx_clear(&c->sites[i].up_rx);
        MOEH_WARN("round %u: site %s has sent no chunk of its granted upload in %u ms; the "
                  "grant expires and its update is refused this round",
                  c->round, c->sites[i].id, c->cfg->heartbeat_timeout_ms);
    }
}

moeh_upload_state_t coord_upload_state(const coord_t *c, const site_t *s)
{
    return moeh_uploads_state(c->up, coord_site_index(c, s));
}

/* 1 if the phase waits for s: a live participant that has not replied, and under granted
 * uploads has not let its grant expire. */
int coord_waits_for(const coord_t *c, const site_t *s)
{
    return s->participant && s->admitted && !s->replied &&
           coord_upload_state(c, s) != MOEH_UP_EXPIRED;
}

/* Granted uploads: an update (or a masked TRAIN vector) is only taken from a site that holds a
 * grant; taking it frees the slot (its bytes have been read, whatever the checks that follow
 * decide). 1 if the upload may go on; else replied with an Error. */
static int upload_take(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    moeh_upload_state_t was = coord_upload_state(c, s);
    char what[200];
    if (c->cfg->upload_slots && was == MOEH_UP_GRANTED && !c->in_stream) {
        /* sent whole, which libzmq held whole: refused, the grant stays for the chunks */
        snprintf(what, sizeof what,
                 "%s: a granted upload travels in upload_chunks (protocol 7), not whole",
                 moeh_msg_type_name(m->env->type));
        coord_reply_error(c, m, -EBADMSG, what, s->id);
        return 0;
    }
    if (moeh_uploads_take(c->up, coord_site_index(c, s)) == 0) return 1;
    snprintf(what, sizeof what,
             "%s: no upload slot was granted to this site%s; announce the update with "
             "upload_ready and send it on upload_grant",
             moeh_msg_type_name(m->env->type),
             was == MOEH_UP_EXPIRED ? " (its grant expired)" : "");
    coord_reply_error(c, m, -ESTALE, what, s->id);
    return 0;
}

/* The phase's small replies (EvalResult, StatsResult, their masked vectors): in chunks, the
 * grant is taken like an update's; pushed whole they are still taken (a site's whole reply is
 * within what the connection guard lets one connection have in transit), and a grant the site
 * held is freed for the next. 1 if it may go on; else replied with an Error. */
static int reply_take(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    if (c->in_stream) return upload_take(c, m, s);
    moeh_uploads_release(c->up, coord_site_index(c, s));
    return 1;
}

/* UploadReady: queues the site for a grant if its update is one this phase can take. */
void coord_handle_upload_ready(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__UploadReady *r = m->env->upload_ready;
    moeh_sa_step_t step = moeh_sa_server_step(c->sa);
    moeh_upload_state_t up = coord_upload_state(c, s);
    char what[200];
    if (!c->cfg->upload_slots) {
        snprintf(what, sizeof what,
                 "upload_ready: uploads are not granted in this run (--upload-slots 0): send "
                 "the update");
    } else if (!coord_phase_has_replies(c->phase) || !s->participant) {
        snprintf(what, sizeof what, "upload_ready for round %u arrived outside its phase",
                 r->round);
    } else if (s->replied || up != MOEH_UP_NONE) {
        snprintf(what, sizeof what, "duplicate upload_ready for round %u%s", r->round,
                 up == MOEH_UP_EXPIRED ? " (its grant expired)" : "");
    } else if (r->round != c->round || r->model_version != c->model_version) {
        snprintf(what, sizeof what,
                 "stale upload_ready: round %u model %llu, current round %u model %llu", r->round,
                 (unsigned long long)r->model_version, c->round,
                 (unsigned long long)c->model_version);
    } else if (step == MOEH_SA_OFF && r->session != 0) {
        snprintf(what, sizeof what,
                 "upload_ready: session %llu, but this phase is not securely aggregated",
                 (unsigned long long)r->session);
    } else if (step != MOEH_SA_OFF &&
               (step != MOEH_SA_MASKED || !s->sa_in ||
                r->session != moeh_sa_server_cfg(c->sa)->round ||
                !moeh_sa_server_in_u2(c->sa, s->sa_id) || moeh_sa_server_in_u3(c->sa, s->sa_id))) {
        snprintf(what, sizeof what,
                 "upload_ready: not expected now (another step or session, or shares not all "
                 "forwarded)");
    } else {
        moeh_uploads_ready(c->up, coord_site_index(c, s));
        coord_grant_uploads(c);
        return;
    }
    coord_reply_error(c, m, -ESTALE, what, s->id);
}

/* UploadChunk (moeh_stream.h): taken only from a site that holds a grant, for the grant's
 * round; each chunk is credited once copied, so the site never has more than the window in
 * flight, and the whole is allocated once, at the size the first chunk declares within the
 * model's (moeh_stream_max_bytes). The completed upload is decoded as any message and handled
 * as the Update or TRAIN SecaggMasked it carries: nothing else travels in chunks. */
int coord_handle_upload_chunk(coord_t *c, const moeh_msg_t *m, site_t *s, moeh_err_t *fatal)
{
    const Moeh__UploadChunk *ch = m->env->upload_chunk;
    moeh_upload_state_t up = coord_upload_state(c, s);
    char what[400];
    if (up != MOEH_UP_GRANTED || !coord_phase_has_replies(c->phase)) {
        moeh_stream_rx_clear(&s->up_rx);
        snprintf(what, sizeof what,
                 "upload_chunk: no upload slot is granted to this site%s; announce the update "
                 "with upload_ready and send it on upload_grant",
                 up == MOEH_UP_EXPIRED ? " (its grant expired)" : "");
        coord_reply_error(c, m, -ESTALE, what, s->id);
        return 0;
    }
    if (ch->stream != (uint64_t)c->round + 1) {
        moeh_stream_rx_clear(&s->up_rx);
        snprintf(what, sizeof what, "upload_chunk: stream %llu, expected this round's (%llu)",
                 (unsigned long long)ch->stream, (unsigned long long)c->round + 1);
        coord_reply_error(c, m, -ESTALE, what, s->id);
        return 0;
    }
    if (ch->index == 0 && c->dp && c->phase == PH_TRAIN &&
        moeh_sa_server_step(c->sa) == MOEH_SA_OFF) {
        /* DP: a plain upload shows this site's less noised delta chunk by chunk; count it at
         * its first chunk, whether it is ever completed or not */
        s->dp_seen++;
        int rc = moeh_dp_ledger_write(&c->ledger, coord_dp_most_seen(c), fatal);
        if (rc != 0) return rc;
    }
    moeh_err_t err = {0};
    uint32_t up_to = 0;
    int rc = moeh_stream_rx_put(&s->up_rx, ch, moeh_stream_max_bytes(&c->lim), &up_to, &err);
    if (rc < 0) { /* the grant stays: a fresh chunk 0 may start over before it expires */
        coord_reply_error(c, m, rc, err.msg, s->id);
        return 0;
    }
    moeh_uploads_touch(c->up, coord_site_index(c, s), c->now);
    if (rc == 0) {
        Moeh__Envelope env;
        Moeh__UploadCredit cr = MOEH__UPLOAD_CREDIT__INIT;
        cr.stream = ch->stream;
        cr.up_to = up_to;
        moeh_env_upload_credit(&env, &cr);
        coord_send_to(c, s, &env, NULL, 0);
        return 0;
    }
    moeh_msg_t whole = {0};
    memcpy(whole.peer, m->peer, sizeof whole.peer);
    memcpy(whole.routing_id, m->routing_id, m->routing_id_len);
    whole.routing_id_len = m->routing_id_len;
    whole.src_fd = m->src_fd;
    rc = moeh_stream_rx_decode(&s->up_rx, &c->lim, &whole.env, whole.frames, &whole.n_frames, &err);
    int type = rc == 0 ? whole.env->type : 0;
    if (rc == 0 && type != MOEH__MSG_TYPE__UPDATE && type != MOEH__MSG_TYPE__SECAGG_MASKED &&
        type != MOEH__MSG_TYPE__EVAL_RESULT && type != MOEH__MSG_TYPE__STATS_RESULT)
        rc = moeh_errf(&err, -EBADMSG,
                       "upload: carries a %s, expected a phase's reply (update, eval_result, "
                       "stats_result, secagg_masked)",
                       moeh_msg_type_name(type));
    if (rc == 0 && type == MOEH__MSG_TYPE__UPDATE && c->dp &&
        whole.env->update->secagg_session == 0 && s->dp_seen)
        s->dp_seen--; /* counted at its first chunk; moeh_coord_core_on_message counts it again */
    if (rc == 0) {
        c->in_stream = 1;
        rc = moeh_coord_core_on_message(c, &whole, c->now, fatal);
        c->in_stream = 0;
    } else {
        coord_reply_error(c, m, rc, err.msg, s->id);
        rc = 0;
    }
    moeh_msg_clear(&whole);
    moeh_stream_rx_clear(&s->up_rx);
    return rc;
}

void coord_handle_update(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__Update *u = m->env->update;
    if (!session_ok(c, m, s, PH_TRAIN, u->round, u->model_version)) return;
    const uint8_t *words = m->frames[0].data;
    char what[300];
    if (c->cfg->secagg || u->secagg_session != 0) {
        /* under secure aggregation a site's vector travels masked, in SecaggMasked */
        coord_reply_error(c, m, -ESTALE,
                          "update: not expected now: under secure aggregation the update travels "
                          "masked (secagg_masked)",
                          s->id);
        return;
    }
    if (!upload_take(c, m, s)) return;
    if (coord_check_update_header(c, s, u->train_loss, u->n_samples, what, sizeof what) != 0) {
        coord_reply_error(c, m, -ERANGE, what, s->id); /* robust.c: samples within the cap */
        return;
    }
    /* the header's values join the phase's vector sum, as they would under secure aggregation */
    uint32_t *xv = c->vtmp;
    if (moeh_secsum_train_put(xv, u->train_loss, u->n_samples, u->steps) != 0) {
        coord_reply_error(c, m, -ERANGE, "update: train_loss x n_samples is out of range", s->id);
        return;
    }
    /* Without secure aggregation every word can be checked against the site's declared
     * weight, so a broken or hostile site cannot push the sum out of range. */
    const moeh_update_bounds_t b = {.scale = c->quant_scale,
                                    .range = c->quant_range,
                                    .unit_weight = c->unit_weight,
                                    .dp = c->dp,
                                    .max_weight = s->w_phase};
    if (moeh_update_check(&c->agg, words, &b, what, sizeof what) != 0) {
        coord_reply_error(c, m, -ERANGE, what, s->id);
        return;
    }
    if (coord_keeps_updates(c) && c->n_slots >= c->cap_slots) {
        coord_reply_error(c, m, -ENOSPC, "no room for this update in this round", s->id);
        return;
    }
    coord_take_update(c, words); /* robust.c: summed, or kept for a robust aggregate */
    moeh_secsum_add(c->vsum + c->p->n + c->p->n_groups, xv,
                    MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS);
    s->replied = 1;
    c->n_replied++;
    if (c->cfg->per_site_metrics)
        moeh_coord_report_site_update(c->report, c->round, s->id, c->dp ? NAN : u->train_loss,
                                      u->n_samples, u->steps);
    MOEH_DEBUG("round %u: update from %s (loss %.4f)", c->round, s->id, u->train_loss);
}

/* EvalResult: the test split's figures (frames "hist", "gate"), and in the VALIDATE phase the
 * validation split's too (its `validation`, frames "val_hist", "val_gate"), each checked against
 * the site's rows of that split before either goes into the phase's sum at its place in the
 * VALIDATE vector (moeh_secsum.h: test, then validation). */
void coord_handle_eval(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__EvalResult *r = m->env->eval_result;
    if (c->cfg->secagg) {
        coord_reply_error(c, m, -ESTALE,
                          "eval_result: not expected now: under secure aggregation the evaluation "
                          "travels masked (secagg_masked)",
                          s->id);
        return;
    }
    if (!session_ok(c, m, s, c->phase == PH_VAL ? PH_VAL : PH_EVAL, r->round, r->model_version) ||
        !reply_take(c, m, s))
        return;
    const int val = c->phase == PH_VAL;
    if ((r->validation != NULL) != val) {
        coord_reply_error(c, m, -EBADMSG,
                          val ? "eval_result: no validation figures: the answer to VALIDATE "
                                "holds the test and the validation split's (protocol 9)"
                              : "eval_result: validation figures in the answer to EVALUATE",
                          s->id);
        return;
    }
    const Moeh__EvalResult *part[2] = {r, r->validation};
    const moeh_secsum_dims_t d = moeh_wire_secsum_dims(&c->lim);
    const uint32_t T = (uint32_t)c->cfg->model.n_tasks, nb = c->cfg->eval_bins;
    const size_t le = moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__EVALUATE),
                 nh = moeh_secsum_eval_hist_words(d), nv = moeh_secsum_eval_values_len(d);
    /* the summed counts are 32-bit words, as under secure aggregation (docs/secagg.md) */
    const size_t V = MOEH_SECSUM_FIX_WORDS, labels_at = nh + nv - V;
    char what[300]; /* robust.c: no more rows than the site's (capped) test/validation rows */
    for (int k = 0; k <= val; k++) {
        if (coord_check_eval(c, s, k, m->frames[2 * k].data, part[k]->combo_rows, part[k]->n_labels,
                             what, sizeof what) != 0) {
            coord_reply_error(c, m, -ERANGE, what, s->id);
            return;
        }
        if (moeh_secsum_fix_get(c->vsum + k * le + labels_at) + (double)part[k]->n_labels >
            4294967295.0) {
            coord_reply_error(c, m, -ERANGE,
                              "eval_result: the round's labels would exceed 2^32 - 1", s->id);
            return;
        }
    }
    /* both splits' values encoded before either is added: all of the reply or none of it */
    float *gate = malloc((size_t)MOEH_N_COMBOS * c->n_experts * sizeof(float) + 1);
    uint32_t *vals = malloc(2 * nv * sizeof(uint32_t));
    int rc = gate && vals ? 0 : -ENOMEM;
    for (int k = 0; !rc && k <= val; k++)
        rc = moeh_secsum_eval_put(vals + k * nv, d,
                                  memcpy(gate, m->frames[2 * k + 1].data, m->frames[2 * k + 1].len),
                                  part[k]->combo_rows, part[k]->loss_sum, part[k]->n_labels);
    free(gate);
    if (rc) {
        free(vals);
        coord_reply_error(c, m, rc, "eval_result: a sum is out of range (or out of memory)", s->id);
        return;
    }
    for (int k = 0; k <= val; k++) {
        moeh_secsum_add(c->vsum + k * le, m->frames[2 * k].data, nh);
        moeh_secsum_add(c->vsum + k * le + nh, vals + k * nv, nv);
    }
    free(vals);
    s->replied = 1;
    c->n_replied++;
    if (!c->cfg->per_site_metrics) return;
    /* this site's own test AUROC per task (slice 0) */
    const size_t per_slice = (size_t)T * 2 * nb;
    uint64_t *own = malloc(per_slice * sizeof(uint64_t));
    const uint8_t *p = m->frames[0].data;
    for (size_t i = 0; own && i < per_slice; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        own[i] = v;
    }
    if (own) {
        double auroc[MOEH_N_TASKS];
        for (uint32_t t = 0; t < T; t++)
            auroc[t] = moeh_eval_slice_auroc(own, T, nb, 0, t);
        moeh_coord_report_site_eval(c->report, c->round, s->id,
                                    r->n_labels ? r->loss_sum / (double)r->n_labels : NAN, auroc);
    }
    free(own);
}

void coord_handle_stats(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__StatsResult *r = m->env->stats_result;
    if (c->cfg->secagg) {
        coord_reply_error(c, m, -ESTALE,
                          "stats_result: not expected now: under secure aggregation the statistics "
                          "travel masked (secagg_masked)",
                          s->id);
        return;
    }
    if (!session_ok(c, m, s, PH_STATS, r->round, c->model_version) || !reply_take(c, m, s)) return;
    size_t n = 3 * (size_t)c->n_norm;
    memcpy(c->stats_sum, m->frames[0].data, n * sizeof(double)); /* scratch */
    char what[300]; /* robust.c: counts within the site's (capped) rows, consistent sums */
    if (coord_check_stats(c, s, c->stats_sum, what, sizeof what) != 0) {
        coord_reply_error(c, m, -ERANGE, what, s->id);
        return;
    }
    if (moeh_secsum_stats_put(c->vtmp, c->stats_sum, c->n_norm) != 0) {
        coord_reply_error(c, m, -ERANGE,
                          "stats_result: a sum exceeds 2^53 in magnitude, the fixed-point range",
                          s->id);
        return;
    }
    moeh_secsum_add(c->vsum, c->vtmp, n * MOEH_SECSUM_FIX_WORDS);
    s->replied = 1;
    c->n_replied++;
}

/* Starts a secure-aggregation session over the phase's participants (ids in site order). A
 * session that cannot run (fewer than 2 sites, too many, no memory) is left with n = 0 and an
 * expired deadline, so that step_phase aborts the attempt at once. */
void coord_sa_open(coord_t *c)
{
    uint32_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        c->sites[i].sa_in = 0;
    for (size_t i = 0; i < c->n_sites; i++)
        n += c->sites[i].participant != 0;
    int k_dropped = 0, two = n == 2 && !c->cfg->secagg_allow_2;
    if (two) {
        MOEH_WARN("round %u: only 2 sites take part: secure aggregation of 2 would let each "
                  "learn the other's contribution (--secagg-allow-2 permits it); this attempt "
                  "is abandoned",
                  c->round);
        n = 0; /* opened empty below: an aborted attempt, like too few sites */
    }
    int rc =
        moeh_sa_server_open(c->sa, n, c->cfg->secagg_k, &c->cfg->secagg_plan, c->cfg->min_sites,
                            moeh_wire_secsum_len(&c->lim, coord_phase_task(c->phase)), &k_dropped);
    if (rc) {
        if (rc == -ERANGE && !two)
            MOEH_WARN("round %u: secure aggregation needs 2..%u sites, %u are here", c->round,
                      MOEH_WIRE_SECAGG_MAX, n);
        else if (rc != -ERANGE)
            MOEH_ERROR("round %u: out of memory for secure aggregation of %u sites", c->round, n);
        c->phase_deadline = c->now;
        return;
    }
    uint32_t id = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        if (!s->participant) continue;
        s->sa_in = 1;
        s->sa_id = id;
        c->sa_site[id++] = i;
    }
    if (c->cfg->secagg_k == MOEH_SECAGG_K_AUTO && c->sa_logged_n != n) {
        const moeh_secagg_cfg_t *sc = moeh_sa_server_cfg(c->sa);
        if (sc->k)
            MOEH_INFO("secure aggregation of %u sites: SecAgg+ with k = %u neighbours, threshold "
                      "%u (--secagg-k auto: up to %.0f%% dropped, %.0f%% colluding)",
                      n, sc->k, sc->t, 100 * c->cfg->secagg_plan.dropout,
                      100 * c->cfg->secagg_plan.corrupt);
        else
            MOEH_INFO("secure aggregation of %u sites: every pair masks, threshold %u "
                      "(--secagg-k auto: SecAgg+ saves nothing at this size)",
                      n, sc->t);
        c->sa_logged_n = n;
    }
    if (k_dropped && !c->k_fallback_logged)
        MOEH_INFO("secure aggregation: --secagg-k %u needs more than %u sites, %u are here: "
                  "every pair masks (k = 0) while that holds",
                  c->cfg->secagg_k, c->cfg->secagg_k + 1, n);
    c->k_fallback_logged |= k_dropped;
}

/* ---- secure aggregation: the session's members and their messages (moeh_secagg_server.h) -- */

/* Session checks shared by the secagg messages: a phase in step `want`, a site of this
 * session, the current session id. 1 if the message may be used; else replied with an Error. */
static int sa_ok(coord_t *c, const moeh_msg_t *m, site_t *s, moeh_sa_step_t want, uint64_t session)
{
    char what[160];
    if (moeh_sa_server_step(c->sa) != want || !s->sa_in || !s->participant ||
        session != moeh_sa_server_cfg(c->sa)->round) {
        snprintf(what, sizeof what, "%s: not expected now (another step or session)",
                 moeh_msg_type_name(m->env->type));
        coord_reply_error(c, m, -ESTALE, what, s->id);
        return 0;
    }
    return 1;
}

void coord_handle_sa_advertise(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggAdvertise *a = m->env->secagg_advertise;
    const char *what = NULL;
    int rc;
    if (sa_ok(c, m, s, MOEH_SA_KEYS, a->session) &&
        (rc = moeh_sa_server_advertise(c->sa, s->sa_id, a, &what)) != 0)
        coord_reply_error(c, m, rc, what, s->id);
}

void coord_handle_sa_shares(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggShares *sh = m->env->secagg_shares;
    const char *what = NULL;
    int rc;
    if (sa_ok(c, m, s, MOEH_SA_SHARES, sh->session) &&
        (rc = moeh_sa_server_shares(c->sa, s->sa_id, sh, &what)) != 0)
        coord_reply_error(c, m, rc, what, s->id);
}

/* A site's masked vector (MASKED step), added into c->vsum. Masked words look uniformly random:
 * no range check is possible (docs/secagg.md). Once the unmask request went out a late vector
 * is refused (sa_ok): the s keys of the dropped sites may be revealed, and its pairwise masks
 * could then be stripped. */
void coord_handle_sa_masked(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggMasked *x = m->env->secagg_masked;
    if (!sa_ok(c, m, s, MOEH_SA_MASKED, x->session)) return;
    char what[200];
    if (x->task != coord_phase_task(c->phase) || x->round != c->round ||
        x->model_version != c->model_version) {
        snprintf(what, sizeof what,
                 "secagg_masked: task %d round %u model %llu, this session sums task %d round "
                 "%u model %llu",
                 (int)x->task, x->round, (unsigned long long)x->model_version,
                 (int)coord_phase_task(c->phase), c->round, (unsigned long long)c->model_version);
        coord_reply_error(c, m, -ESTALE, what, s->id);
        return;
    }
    if (moeh_sa_server_may_mask(c->sa, s->sa_id) != 0 || s->replied) {
        coord_reply_error(c, m, -ESTALE,
                          "secagg_masked: duplicate, or from a site whose shares were not all "
                          "forwarded",
                          s->id);
        return;
    }
    if (!(c->phase == PH_TRAIN ? upload_take(c, m, s) : reply_take(c, m, s))) return;
    size_t len = moeh_sa_server_cfg(c->sa)->len;
    MOEH_ASSERT(m->frames[0].len == len * 4); /* the decoder checked it */
    moeh_secsum_add(c->vsum, m->frames[0].data, len);
    moeh_sa_server_masked(c->sa, s->sa_id);
    s->replied = 1;
    c->n_replied++;
}

void coord_handle_sa_reveal(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__SecaggReveal *r = m->env->secagg_reveal;
    const char *what = NULL;
    int rc;
    if (sa_ok(c, m, s, MOEH_SA_UNMASK, r->session) &&
        (rc = moeh_sa_server_reveal(c->sa, s->sa_id, r, &what)) != 0)
        coord_reply_error(c, m, rc, what, s->id);
}

static int sa_send(void *ctx, uint32_t id, Moeh__Envelope *env)
{
    coord_t *c = ctx;
    return coord_send_to(c, &c->sites[c->sa_site[id]], env, NULL, 0);
}

/* Advances a securely aggregated phase: closes the current step when every live site it waits
 * for answered or at the step's deadline. 1 when the unmasked sum is ready (c->vsum holds the
 * plain sum of U3's vectors, and for TRAIN c->agg that of their update words); 0 otherwise
 * (waiting, or the attempt was aborted and retried); negative with fatal set if out of
 * retries. */
int coord_sa_step(coord_t *c, moeh_err_t *fatal)
{
    const moeh_secagg_cfg_t *sc = moeh_sa_server_cfg(c->sa);
    const moeh_sa_step_t step = moeh_sa_server_step(c->sa);
    uint32_t n = sc->n, pending = 0, got = 0;
    uint8_t waiting[MOEH_WIRE_SECAGG_MAX], connected[MOEH_WIRE_SECAGG_MAX];
    for (uint32_t i = 0; i < n; i++) {
        const site_t *s = &c->sites[c->sa_site[i]];
        connected[i] = s->admitted != 0;
        /* (a site whose upload grant expired is not waited for: it is dropped) */
        waiting[i] = s->admitted && s->participant && s->sa_in &&
                     coord_upload_state(c, s) != MOEH_UP_EXPIRED;
    }
    moeh_sa_server_progress(c->sa, waiting, &got, &pending);
    if (pending > 0 && (c->now < c->phase_deadline || c->replay)) return 0; /* a replay waits */
    static const char *k_step[] = {"", "key advertisement", "share exchange", "masked update",
                                   "unmasking"};
    char what[MOEH_ERRMSG_MAX + 64], tag[48];
    const char *name = coord_phase_name(c->phase);
    if (c->phase == PH_TRAIN)
        snprintf(tag, sizeof tag, "round %u", c->round);
    else if (c->phase == PH_EVAL)
        snprintf(tag, sizeof tag, "round %u eval", c->round);
    else if (c->phase == PH_VAL)
        snprintf(tag, sizeof tag, "round %u validation", c->round);
    else
        snprintf(tag, sizeof tag, "statistics");
    if (n == 0) {
        snprintf(what, sizeof what, "secure aggregation needs 2..%u participants",
                 MOEH_WIRE_SECAGG_MAX);
        return coord_retry_phase(c, fatal, name, what);
    }
    if (got < moeh_sa_server_need(c->sa)) {
        snprintf(what, sizeof what,
                 "secure aggregation: %u sites completed the %s step, %u "
                 "needed (threshold %u, quorum %u)",
                 got, k_step[step], moeh_sa_server_need(c->sa), sc->t, c->cfg->min_sites);
        return coord_retry_phase(c, fatal, name, what);
    }
    if (pending > 0)
        MOEH_WARN("%s: secure aggregation %s step: deadline passed with %u of the sites", tag,
                  k_step[step], got);
    c->phase_deadline = c->now + c->cfg->phase_deadline_ms;
    size_t ns, nd;
    moeh_sa_server_counts(c->sa, &ns, &nd);
    if (step == MOEH_SA_MASKED)
        MOEH_INFO("%s: secure aggregation: %zu masked %s, %zu sites dropped; asking the "
                  "survivors for their shares (n = %u, k = %u, t = %u)",
                  tag, ns, c->phase == PH_TRAIN ? "updates" : "vectors", nd, sc->n, sc->k, sc->t);
    MOEH_DEBUG("%s: secure aggregation: %s step closed with %u sites", tag, k_step[step], got);
    moeh_err_t err = {0};
    int rc = moeh_sa_server_advance(c->sa, connected, sa_send, c, c->vsum, &err);
    if (rc < 0) {
        snprintf(what, sizeof what, "secure aggregation: cannot unmask the sum: %s", err.msg);
        return coord_retry_phase(c, fatal, name, what);
    }
    if (rc == 0) return 0;
    if (coord_check_sa_sum(c, what, sizeof what) != 0) /* robust.c: the sum within the caps */
        return coord_retry_phase(c, fatal, name, what);
    if (c->phase == PH_TRAIN) { /* the update words go to the server step */
        memcpy(c->agg.sum, c->vsum, (c->p->n + c->p->n_groups) * sizeof(uint32_t));
        c->agg.n_updates = ns;
    }
    MOEH_INFO("%s: secure aggregation: unmasked the sum of %zu sites (%zu dropped)", tag, ns, nd);
    return 1;
}

/* ---- per-key rate limits (token buckets, on the core's clock) ------------------------------ */

/* Burst and refill per second of each kind: an honest agent sends Hello once per connection
 * (it reconnects with backoff) and earns an Error only for a mistake; a flood earns neither
 * more replies nor more log lines than this. */
static const double k_rate_burst[2] = {4.0, 20.0};
static const double k_rate_per_s[2] = {0.5, 5.0};
static const char *k_rate_name[2] = {"Hello", "Error reply"};

/* The bucket of m's peer: its authenticated key (site id), else (--insecure) its connection.
 * A new key takes a free entry or the least recently used one (which starts full again). */
static coord_rate_t *rate_entry(coord_t *c, const moeh_msg_t *m)
{
    char key[sizeof c->rate[0].key];
    if (m->peer[0]) {
        snprintf(key, sizeof key, "k:%s", m->peer);
    } else {
        size_t n = m->routing_id_len < 8 ? m->routing_id_len : 8; /* ZeroMQ's ids: 5 bytes */
        int at = snprintf(key, sizeof key, "c:");
        for (size_t i = 0; i < n; i++)
            at += snprintf(key + at, sizeof key - at, "%02x", m->routing_id[i]);
    }
    coord_rate_t *lru = &c->rate[0];
    for (size_t i = 0; i < COORD_RATE_KEYS; i++) {
        coord_rate_t *e = &c->rate[i];
        if (e->key[0] && strcmp(e->key, key) == 0) return e;
        if (!e->key[0] || (lru->key[0] && e->t < lru->t)) lru = e;
    }
    memset(lru, 0, sizeof *lru);
    snprintf(lru->key, sizeof lru->key, "%s", key);
    lru->tokens[0] = k_rate_burst[0], lru->tokens[1] = k_rate_burst[1];
    lru->t = c->now;
    return lru;
}

int coord_rate_allow(coord_t *c, const moeh_msg_t *m, coord_rate_kind_t kind)
{
    coord_rate_t *e = rate_entry(c, m);
    double dt = c->now > e->t ? (double)(c->now - e->t) / 1000.0 : 0.0;
    for (int k = 0; k < 2; k++) {
        e->tokens[k] += dt * k_rate_per_s[k];
        if (e->tokens[k] > k_rate_burst[k]) e->tokens[k] = k_rate_burst[k];
    }
    e->t = c->now;
    if (e->tokens[kind] < 1.0) {
        if (e->refused[kind]++ == 0)
            MOEH_WARN("%s is over its rate of %s messages (%.1f/s, burst %.0f): dropping them",
                      e->key + 2, k_rate_name[kind], k_rate_per_s[kind], k_rate_burst[kind]);
        return 0;
    }
    if (e->refused[kind]) {
        MOEH_WARN("%s: %llu %s messages over the rate were dropped", e->key + 2,
                  (unsigned long long)e->refused[kind], k_rate_name[kind]);
        e->refused[kind] = 0;
    }
    e->tokens[kind] -= 1.0;
    return 1;
}
