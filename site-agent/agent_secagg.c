/* agent_secagg.c - this site's side of secure aggregation, for every phase (docs/secagg.md;
 * agent_int.h).
 *
 * When a RoundStart (TRAIN, STATS, VALIDATE or EVALUATE) carries secagg parameters, the phase's
 * vector of words (fed/moeh_secsum.h) is not sent in clear. Keys first: at the RoundStart, a
 * fresh s key and the process's share key (SecaggAdvertise) -> on SecaggKeys, encrypted shares
 * (SecaggShares), then the phase's work, which makes the vector -> on the forwarded shares, the
 * masked vector (SecaggMasked) -> on SecaggUnmask, its shares (SecaggReveal). The
 * moeh_secagg_client_t holds the session's secrets and is destroyed at the next RoundStart, on
 * any failure, on a model rebuild and at exit. A message of another session is ignored. */
#include "agent_int.h"

#include <signal.h>
#include <sodium.h>
#include <string.h>

/* Ends the secure-aggregation session (wipes its secrets); reports why if `why` is set. */
void moeh_agent_sa_end(agent_t *a, const char *why, const char *detail)
{
    if (why) {
        char msg[MOEH_ERRMSG_MAX + 96];
        snprintf(msg, sizeof msg, "secure aggregation: %s%s%s", why, detail ? ": " : "",
                 detail ? detail : "");
        MOEH_WARN("round %u: %s", a->sa_round, msg);
        moeh_agent_send_error(a, -EBADMSG, msg);
    }
    moeh_secagg_client_destroy(&a->sa);
    a->sa_session = 0;
    a->sa_vec = NULL, a->sa_len = 0;
    moeh_msg_clear(&a->sa_work); /* a RoundStart whose key list never came */
    if (a->up_session) {         /* its masked vector, waiting or in flight, is of no use now */
        moeh_agent_upload_drop(a);
        a->up_session = 0;
    }
}

/* With RoundStart.secagg: a session, fresh round keys advertised, the phase's work kept for the
 * key list (agent_int.h). */
void moeh_agent_sa_begin(agent_t *a, const Moeh__RoundStart *rs, moeh_msg_t *m)
{
    const Moeh__SecaggParams *sp = rs->secagg;
    moeh_err_t err = {0};
    int rc = moeh_crypto_init();
    moeh_secagg_cfg_t cfg = {.round = sp->session,
                             .n = sp->n,
                             .t = sp->t,
                             .k = sp->k,
                             .graph_seed = sp->graph_seed,
                             .len = moeh_wire_secsum_len(&a->lim, rs->task)};
    a->sa_round = rs->round;
    a->sa_task = rs->task;
    a->sa_grant = rs->grant_uploads;
    if (rc) {
        moeh_agent_sa_end(a, "cannot start", "libsodium failed to initialise");
        return;
    }
    if (!a->sa_ident) { /* once: kept for every session until exit (fed/moeh_secagg.h) */
        if ((rc = moeh_secagg_ident_create(&a->sa_ident, &err)) != 0) {
            moeh_agent_sa_end(a, "cannot start", err.msg);
            return;
        }
        MOEH_INFO("secure aggregation: made this process's share key, kept for every session");
    }
    if ((rc = moeh_secagg_client_create_with(&cfg, sp->id, a->sa_ident, &a->sa, &err)) != 0) {
        moeh_agent_sa_end(a, "cannot start", err.msg);
        return;
    }
    a->sa_session = sp->session;
    a->sa_version = rs->model_version;
    a->sa_n = sp->n;
    a->sa_vec = NULL, a->sa_len = cfg.len;
    moeh_secagg_pubkeys_t pk;
    moeh_secagg_client_pubkeys(a->sa, &pk);
    Moeh__Envelope env;
    Moeh__SecaggAdvertise ad = MOEH__SECAGG_ADVERTISE__INIT;
    ad.session = sp->session;
    ad.c_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, pk.c_pk};
    ad.s_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, pk.s_pk};
    moeh_env_secagg_advertise(&env, &ad);
    if ((rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0)) != 0) {
        moeh_agent_sa_end(a, "cannot send the round keys", moeh_strerror(rc));
        return;
    }
    a->sa_work = *m; /* moved: the work runs on the key list */
    memset(m, 0, sizeof *m);
}

void moeh_agent_sa_input(agent_t *a, uint32_t *vec, size_t len)
{
    if (!a->sa) return;     /* the session ended while the work ran */
    if (len != a->sa_len) { /* cannot happen: both lengths come from moeh_wire_secsum_len */
        moeh_agent_sa_end(a, "internal error", "the phase's vector has another length");
        return;
    }
    a->sa_vec = vec;
}

/* SecaggKeys (U1): encrypts this site's shares for every neighbour in U1 and sends them. */
void moeh_agent_sa_on_keys(agent_t *a, const Moeh__SecaggKeys *k)
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
    Moeh__Envelope env;
    Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
    sh.session = a->sa_session;
    sh.n_ciphers = m;
    sh.ciphers = cp;
    moeh_env_secagg_shares(&env, &sh);
    if ((rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0)) != 0) {
        why = "cannot send the shares";
        snprintf(err.msg, sizeof err.msg, "%s", moeh_strerror(rc));
    }
out:
    if (why) moeh_agent_sa_end(a, why, err.msg[0] ? err.msg : NULL);
    free(keys);
    free(present);
    free(sent);
    free(cts);
    free(cs);
    free(cp);
    if (!why && a->sa_work.env) { /* the shares are out: now the phase's work */
        moeh_msg_t w = a->sa_work;
        memset(&a->sa_work, 0, sizeof a->sa_work);
        moeh_agent_run_phase(a, &w);
        moeh_msg_clear(&w);
        if (a->sa && !a->sa_vec) /* the work failed (and said so): nothing to mask */
            moeh_agent_sa_end(a, NULL, NULL);
    }
}

/* The shares addressed to this site and U2: masks the kept update and sends it. */
void moeh_agent_sa_on_shares(agent_t *a, const Moeh__SecaggShares *sh)
{
    if (!a->sa || sh->session != a->sa_session) return;
    if (!a->sa_vec) { /* shares forwarded before this site sent its own: out of order */
        moeh_agent_sa_end(a, "the forwarded shares came before the key list", NULL);
        return;
    }
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
    /* "eval:N" (EVALUATE) is the round's evaluation, with or without the validation split */
    const Moeh__RoundTask kind =
        a->sa_task == MOEH__ROUND_TASK__VALIDATE ? MOEH__ROUND_TASK__EVALUATE : a->sa_task;
    if ((a->faults.kill_secagg_round && a->sa_task == MOEH__ROUND_TASK__TRAIN &&
         a->sa_round == a->faults.kill_secagg_round) ||
        (a->faults.kill_secagg_task && kind == a->faults.kill_secagg_task &&
         a->sa_round == a->faults.kill_secagg_at)) {
        MOEH_WARN("fault injection: killing myself after sharing keys in round %u (task %d)",
                  a->sa_round, (int)a->sa_task);
        raise(SIGKILL);
    }
    if (moeh_secagg_client_mask(a->sa, a->sa_vec, a->sa_vec, u2, &err) != 0) {
        why = "cannot mask the vector";
        goto out;
    }
    moeh_agent_sa_send_masked(a, a->sa_grant); /* granted: sent on the grant */
out:
    if (why) moeh_agent_sa_end(a, why, err.msg[0] ? err.msg : NULL);
    free(u2);
}

/* Sends the masked vector of the session. */
void moeh_agent_sa_send_masked(agent_t *a, int held)
{
    Moeh__Envelope env;
    Moeh__SecaggMasked sm = MOEH__SECAGG_MASKED__INIT;
    sm.session = a->sa_session;
    sm.round = a->sa_round;
    sm.model_version = a->sa_version;
    sm.task = a->sa_task;
    moeh_env_secagg_masked(&env, &sm);
    moeh_frame_t f = {
        .name = "masked", .dtype = MOEH__DTYPE__U32, .data = a->sa_vec, .count = a->sa_len};
    if (held) {
        moeh_agent_upload_hold(a, &env, &f, 1, a->sa_task, a->sa_round, a->sa_version,
                               a->sa_session, 1);
        return;
    }
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, &f, 1);
    if (rc)
        MOEH_WARN("round %u: could not send the masked vector: %s", a->sa_round, moeh_strerror(rc));
    else
        moeh_agent_lm_sent(a, a->sa_task, a->sa_round, 1); /* local_metrics.jsonl */
}

/* SecaggUnmask: reveals this site's shares of the survivors' b and the dropped sites' s keys
 * (the library refuses a request naming one site in both lists, or changing its answer). */
void moeh_agent_sa_on_unmask(agent_t *a, const Moeh__SecaggUnmask *um)
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
    Moeh__Envelope env;
    Moeh__SecaggReveal rv = MOEH__SECAGG_REVEAL__INIT;
    rv.session = a->sa_session;
    rv.n_shares = n_out;
    rv.shares = xp;
    moeh_env_secagg_reveal(&env, &rv);
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
    if (rc)
        MOEH_WARN("round %u: could not send the unmask shares: %s", a->sa_round, moeh_strerror(rc));
done:
    if (why) moeh_agent_sa_end(a, why, err.msg[0] ? err.msg : NULL);
    if (out) sodium_memzero(out, n * sizeof *out);
    free(out);
    free(xs);
    free(xp);
}
