/* final.c - the end of a run (docs/architecture.md, "The end of a run"): the sites get the
 * result.
 *
 * After moeh_coord_core_finish wrote OUT/model.safetensors, every admitted site is sent those
 * very bytes (FinalModel, with their SHA-256; one shared copy for every send) and answers
 * FinalAck once the file is stored in its --out directory. A site that acknowledged is told
 * Bye FINISHED at once; a site that (re)joins while the coordinator still waits gets the file
 * right after its Welcome. The wait ends when every site of the run acknowledged (or reported
 * that it could not store the file), or after cfg->final_wait_ms; run.c then says Bye FINISHED
 * to whoever is still connected, and an agent that holds no final model exits with an error.
 * Sends never block (coord_send_to: a site that does not read is dropped, the others go on). */
#include "coord_internal.h"

#include "moeh_keys.h"

#include <sodium.h>
#include <string.h>

/* Resending the file on a Hello is bounded per site: repeated Hellos must not amplify into
 * many copies of the model (the Hello rate limit bounds them in time, this in total). */
#define FINAL_MAX_SENDS 8u

static int still_registered(const coord_t *c, const site_t *s)
{
    return c->cfg->insecure || c->io->registered(c->io->ctx, s->id);
}

/* To a site of the run that waits for the model, or that acknowledged it and rejoins (a new
 * agent process that does not know it holds it). */
void coord_final_send(coord_t *c, site_t *s)
{
    if (!c->final_buf ||
        (s->final_state != COORD_FINAL_PENDING && s->final_state != COORD_FINAL_ACKED))
        return;
    if (s->final_sends >= FINAL_MAX_SENDS) {
        MOEH_WARN("site %s was sent the final model %u times already; not again", s->id,
                  s->final_sends);
        return;
    }
    Moeh__Envelope env;
    Moeh__FinalModel fm = MOEH__FINAL_MODEL__INIT;
    fm.rounds = c->round;
    fm.selected_round = c->final_round;
    fm.model_version = c->model_version;
    fm.n_bytes = c->final_len;
    fm.sha256.data = c->final_sha;
    fm.sha256.len = sizeof c->final_sha;
    fm.spec_hash = c->spec_hash;
    moeh_env_final_model(&env, &fm);
    moeh_frame_t f = {.name = "model_file",
                      .dtype = MOEH__DTYPE__U8,
                      .data = c->final_buf,
                      .count = c->final_len,
                      .shared = c->final_frame};
    if (coord_send_to(c, s, &env, &f, 1) == 0) {
        s->final_sends++;
        MOEH_INFO("site %s: final model sent (%llu bytes)", s->id,
                  (unsigned long long)c->final_len);
    }
}

void moeh_coord_core_final_begin(moeh_coord_core_t *c, int64_t now)
{
    char path[4096];
    moeh_err_t err = {0};
    c->now = c->final_t0 = now;
    size_t len = 0;
    char *buf = NULL;
    const uint64_t cap = MOEH_WIRE_MODELFILE_MAX(&c->lim);
    int rc = -ENAMETOOLONG;
    if (moeh_path_join(path, sizeof path, c->cfg->out_dir, "model.safetensors") ||
        (rc = moeh_crypto_init()) != 0 ||
        (rc = moeh_file_read_all(path, cap ? (size_t)cap + 1 : 1, &buf, &len, &err)) != 0 ||
        (len > cap &&
         (rc = moeh_errf(&err, -EFBIG, "%s: %zu bytes, more than the %llu a FinalModel may carry",
                         path, len, (unsigned long long)cap)) != 0)) {
        MOEH_ERROR("the sites cannot be sent the final model: %s; they are told the run "
                   "finished without it (and their agents exit with an error)",
                   err.msg[0] ? err.msg : moeh_strerror(rc));
        free(buf);
        return;
    }
    crypto_hash_sha256(c->final_sha, (const unsigned char *)buf, len);
    c->final_buf = buf;
    c->final_len = len;
    c->final_round = c->cfg->validate && c->sel_round ? c->sel_round : c->round;
    if (moeh_shared_frame_create(buf, len, &c->final_frame) != 0)
        MOEH_WARN("out of memory for the shared model file frame; copying per site");
    uint32_t away = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        s->final_state = still_registered(c, s) ? COORD_FINAL_PENDING : COORD_FINAL_FAILED;
        s->final_sends = 0;
        away += s->final_state == COORD_FINAL_PENDING && !s->admitted;
    }
    MOEH_INFO("sending the final model (round %u's, %zu bytes) to %u connected sites; waiting "
              "for their acknowledgements",
              c->final_round, len, coord_n_admitted(c));
    if (away)
        MOEH_INFO("%u site(s) of this run are not connected: each gets the model if it rejoins "
                  "within %.0f s (--final-wait)",
                  away, c->cfg->final_wait_ms / 1000.0);
    for (size_t i = 0; i < c->n_sites; i++)
        if (c->sites[i].admitted) coord_final_send(c, &c->sites[i]);
}

void coord_handle_final_ack(coord_t *c, const moeh_msg_t *m, site_t *s)
{
    const Moeh__FinalAck *a = m->env->final_ack;
    if (!c->final_buf) {
        coord_reply_error(c, m, -EBADMSG, "final_ack: no final model was sent", s->id);
        return;
    }
    if (a->code != 0) {
        MOEH_ERROR("site %s could not store the final model: %s", s->id, a->message);
        if (s->final_state == COORD_FINAL_PENDING) s->final_state = COORD_FINAL_FAILED;
        return;
    }
    if (a->model_version != c->model_version || a->sha256.len != sizeof c->final_sha ||
        sodium_memcmp(a->sha256.data, c->final_sha, sizeof c->final_sha) != 0) {
        coord_reply_error(c, m, -EINVAL,
                          "final_ack: not the model file this coordinator sent (digest or "
                          "model version differ)",
                          s->id);
        return;
    }
    if (s->final_state != COORD_FINAL_ACKED)
        MOEH_INFO("site %s holds the final model (SHA-256 %02x%02x%02x%02x...)", s->id,
                  c->final_sha[0], c->final_sha[1], c->final_sha[2], c->final_sha[3]);
    s->final_state = COORD_FINAL_ACKED;
    Moeh__Envelope env;
    Moeh__Bye bye = MOEH__BYE__INIT;
    bye.reason = "run finished; this site holds its model";
    bye.status = MOEH__BYE_STATUS__BYE_STATUS_FINISHED;
    moeh_env_bye(&env, &bye);
    coord_send_to(c, s, &env, NULL, 0);
    /* it is done and leaves: no more heartbeats to it, and its closed connection is not a
     * site that went missing (no site_gone line in metrics.jsonl) */
    s->admitted = 0;
}

int coord_final_left(const coord_t *c, const moeh_msg_t *m)
{
    for (size_t i = 0; c->final_buf && i < c->n_sites; i++) {
        const site_t *s = &c->sites[i];
        if (s->final_state == COORD_FINAL_ACKED && !s->admitted &&
            s->rid_len == m->routing_id_len && memcmp(s->rid, m->routing_id, s->rid_len) == 0)
            return 1;
    }
    return 0;
}

int moeh_coord_core_final_done(moeh_coord_core_t *c, int64_t now)
{
    if (!c->final_buf) return 1;
    if (c->final_over) return 1;
    uint32_t waiting = 0, away = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        const site_t *s = &c->sites[i];
        if (s->final_state != COORD_FINAL_PENDING) continue;
        waiting++;
        away += !s->admitted;
    }
    if (waiting == 0) {
        MOEH_INFO("every site of the run holds the final model");
        return c->final_over = 1;
    }
    if (now - c->final_t0 < (int64_t)c->cfg->final_wait_ms) return 0;
    char list[512];
    size_t at = 0;
    list[0] = '\0';
    for (size_t i = 0; i < c->n_sites && at + 80 < sizeof list; i++) {
        const site_t *s = &c->sites[i];
        if (s->final_state == COORD_FINAL_PENDING)
            at += (size_t)snprintf(list + at, sizeof list - at, "%s%s (%s)", at ? ", " : "", s->id,
                                   s->admitted ? "connected, no acknowledgement" : "away");
    }
    MOEH_WARN("%u site(s) do not hold the final model after %.0f s (--final-wait), %u of them "
              "away: %s; the model stays in %s/model.safetensors",
              waiting, c->cfg->final_wait_ms / 1000.0, away, list, c->cfg->out_dir);
    return c->final_over = 1;
}
