/* agent_update.c - a training round's update, encoded and uploaded (agent_int.h).
 *
 * What leaves the site: for each parameter group the weighted delta as fixed-point words
 * (fed/moeh_quant.h) and the weight (samples that trained the group), then the mean training
 * loss, samples and steps. With DP (RoundConfig.dp_clip > 0, fed/moeh_dp.h) the delta is
 * clipped to an L2 norm and noised before it is encoded, weights are 0/1, and the training loss
 * is not sent. With secure aggregation the loss, samples and steps are summed with the words
 * (fed/moeh_secsum.h) instead of travelling in the header.
 *
 * Granted uploads (RoundStart.grant_uploads, every phase since protocol 7): the ready reply (the
 * Update, EvalResult or StatsResult, or the masked vector once the shares arrived) is packed as
 * a stream of chunks (moeh_stream.h), held, announced with UploadReady and sent only on the
 * matching UploadGrant, a window at a time as the coordinator's credits allow; the main loop
 * keeps heartbeating meanwhile. The wait is dropped
 * at the next RoundStart, on a (re)welcome, when the socket is replaced and when the secure
 * session ends, so a grant of an old round, session or coordinator is never answered. */
#include "agent_int.h"

#include "moeh_dp.h"
#include "moeh_quant.h"
#include "moeh_secsum.h"

#include <math.h>
#include <signal.h>
#include <string.h>

/* Encodes this round's delta (a->delta, after local training with result res) into a->upd and
 * sends it: in clear, held for its upload grant, or through secure aggregation. */
void moeh_agent_update_submit(agent_t *a, const Moeh__RoundStart *rs,
                              const moeh_train_result_t *res)
{
    const Moeh__RoundConfig *rc = rs->config;
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    /* A group this site did not train is no update (weight decay may still have moved it). */
    for (size_t g = 0; g < p->n_groups; g++)
        if (res->group_samples[g] == 0)
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
                moeh_agent_send_error(a, -EIO, "cannot draw the DP noise");
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
        uint64_t w = res->group_samples[g];
        if (w > a->n_train) /* a group is trained at most once per row per epoch */
            w = a->n_train;
        if (unweighted) w = w > 0;
        /* under DP a group's words carry the noise even where the site did not train it */
        moeh_quant_encode(a->upd + p->group_off[g], a->delta + p->group_off[g], p->group_len[g],
                          rc->delta_clip, dp ? 1.0 : (double)w, rc->quant_scale);
        a->upd[p->n + g] = (uint32_t)w;
    }
    double loss =
        res->steps ? res->mean_loss / (double)a->lim.n_tasks : 0.0; /* per task and step */
    MOEH_INFO("round %u%s: trained %u steps on %llu samples, mean loss %.4f, update L2 norm %.4g",
              rs->round, rc->warmup ? " (warm-up)" : "", res->steps,
              (unsigned long long)res->samples, loss, norm);
    if (dp)
        MOEH_INFO("round %u: DP: clipped to %g (%s), noise std %.4g per coordinate "
                  "(multiplier %g over %u sites)",
                  rs->round, (double)rc->dp_clip, norm > rc->dp_clip ? "scaled down" : "unchanged",
                  sd, (double)rc->dp_noise, rc->dp_sites);
    /* under DP the training loss (a statistic of the training data outside the accounting)
     * stays here */
    double sent_loss = dp ? 0.0 : loss;
    if (rs->secagg) { /* the header's values are summed with the update, never in clear */
        if (moeh_secsum_train_put(a->upd + p->n + p->n_groups, sent_loss, res->samples,
                                  res->steps)) {
            MOEH_ERROR("round %u: train loss x samples is out of the fixed-point range; no "
                       "update is sent",
                       rs->round);
            moeh_agent_send_error(a, -ERANGE, "train loss out of range");
            return;
        }
        moeh_agent_sa_input(a, a->upd, moeh_wire_secsum_len(&a->lim, MOEH__ROUND_TASK__TRAIN));
        return;
    }
    moeh_agent_update_send(a, rs->round, rs->model_version, sent_loss, res->samples, res->steps,
                           rs->grant_uploads);
}

/* Sends a->upd in clear as this round's Update (no secure aggregation), or holds it for its
 * grant (moeh_agent_upload_hold). */
void moeh_agent_update_send(agent_t *a, uint32_t round, uint64_t version, double loss,
                            uint64_t samples, uint32_t steps, int held)
{
    moeh_params_t *p = moeh_moe_params(moeh_trainer_model(a->trainer));
    Moeh__Envelope env;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = round;
    u.model_version = version;
    u.train_loss = loss;
    u.n_samples = samples;
    u.steps = steps;
    moeh_env_update(&env, &u);
    moeh_frame_t f = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = a->upd, .count = p->n + p->n_groups};
    if (held) {
        moeh_agent_upload_hold(a, &env, &f, 1, MOEH__ROUND_TASK__TRAIN, round, version, 0, 0);
        return;
    }
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc) MOEH_WARN("round %u: could not send the update: %s", round, moeh_strerror(rc));
    if (!rc) moeh_agent_lm_sent(a, MOEH__ROUND_TASK__TRAIN, round, 0); /* local_metrics.jsonl */
}

/* Announces the held reply (session: its secure-aggregation session, 0 if plain) and waits
 * for the grant in the main loop. */
static void upload_ready(agent_t *a, uint32_t round, uint64_t version, uint64_t session)
{
    Moeh__Envelope env;
    Moeh__UploadReady r = MOEH__UPLOAD_READY__INIT;
    r.round = round;
    r.model_version = version;
    r.session = session;
    moeh_env_upload_ready(&env, &r);
    a->up_wait = 1;
    a->up_round = round, a->up_version = version, a->up_session = session;
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
    if (rc) MOEH_WARN("round %u: could not announce the reply: %s", round, moeh_strerror(rc));
}

void moeh_agent_upload_hold(agent_t *a, Moeh__Envelope *env, const moeh_frame_t *frames,
                            size_t n_frames, Moeh__RoundTask task, uint32_t round, uint64_t version,
                            uint64_t session, int masked)
{
    int rc = moeh_stream_tx_begin(&a->up_tx, (uint64_t)round + 1, env, frames, n_frames);
    if (rc) {
        MOEH_WARN("round %u: could not prepare the upload: %s", round, moeh_strerror(rc));
        return;
    }
    a->up_tx.credit = 0; /* nothing goes before the grant */
    a->up_tx_task = task;
    a->up_tx_round = round;
    a->up_tx_masked = masked;
    MOEH_DEBUG("round %u: %zu bytes to upload in %u chunks, waiting for the grant", round,
               a->up_tx.len, a->up_tx.n_chunks);
    upload_ready(a, round, version, session);
}

/* UploadGrant: sends the held update it names; a grant for anything else is ignored (the
 * coordinator's grant then expires). */
void moeh_agent_on_grant(agent_t *a, const Moeh__UploadGrant *g)
{
    if (!a->up_wait || g->round != a->up_round || g->model_version != a->up_version ||
        g->session != a->up_session || (g->session && (!a->sa || a->sa_session != g->session))) {
        MOEH_WARN("ignored an upload grant for round %u (session %llu): no such update waits",
                  g->round, (unsigned long long)g->session);
        return;
    }
    if (a->faults.kill_upload_round && g->round == a->faults.kill_upload_round) {
        MOEH_WARN("fault injection: killing myself on the upload grant of round %u", g->round);
        raise(SIGKILL);
    }
    a->up_wait = 0;
    if (moeh_stream_tx_credit(&a->up_tx, a->up_tx.stream, MOEH_STREAM_WINDOW) != 0) return;
    moeh_agent_upload_credit(a, NULL); /* the first window; the rest as credits come */
}

void moeh_agent_upload_credit(agent_t *a, const Moeh__UploadCredit *cr)
{
    /* a credit for another stream, or before the grant (a late one of an earlier reply of the
     * round: the same stream id), is stale */
    if (cr && (a->up_wait || moeh_stream_tx_credit(&a->up_tx, cr->stream, cr->up_to) != 0)) return;
    Moeh__Envelope env;
    Moeh__UploadChunk ch;
    while (moeh_stream_tx_next(&a->up_tx, &env, &ch)) {
        int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
        if (rc) { /* its grant expires at the coordinator: the update is lost this round */
            MOEH_WARN("round %u: could not send chunk %u of %u of the upload: %s", a->up_tx_round,
                      ch.index, ch.n_chunks, moeh_strerror(rc));
            moeh_stream_tx_clear(&a->up_tx);
            return;
        }
    }
    if (a->up_tx.buf && !moeh_stream_tx_active(&a->up_tx)) { /* the last chunk is out */
        moeh_agent_lm_sent(a, a->up_tx_task, a->up_tx_round,
                           a->up_tx_masked); /* local_metrics.jsonl */
        moeh_stream_tx_clear(&a->up_tx);
    }
}

void moeh_agent_upload_drop(agent_t *a)
{
    a->up_wait = 0;
    moeh_stream_tx_clear(&a->up_tx);
}
