/* moeh_secagg_server.h - the coordinator's side of secure aggregation (docs/secagg.md): one
 * session per attempt of a securely aggregated phase, in four steps, each closed by the caller
 * (at its deadline, or when every live member answered):
 *   KEYS    collect SecaggAdvertise (U1)         -> advance: send SecaggKeys to U1
 *   SHARES  collect SecaggShares (U2)            -> advance: forward each its ciphertexts
 *   MASKED  collect masked vectors (U3; the caller sums them)
 *                                                -> advance: send SecaggUnmask to U3
 *   UNMASK  collect SecaggReveal from U3         -> advance: remove the masks from the sum
 * The session owns the members' public keys, the ciphertexts it forwards (it cannot open them)
 * and the shares revealed to it; it names members by their session id 0..n-1 and sends through
 * the caller's callback. Not thread-safe. */
#ifndef MOEH_SECAGG_SERVER_H
#define MOEH_SECAGG_SERVER_H

#include "moeh_secagg.h"
#include "moeh_secagg_plan.h"
#include "moeh_wire.h"

#define MOEH_SA_WUR __attribute__((warn_unused_result))

typedef enum {
    MOEH_SA_OFF,    /* plain phase (or unmasked already) */
    MOEH_SA_KEYS,   /* collecting SecaggAdvertise */
    MOEH_SA_SHARES, /* collecting SecaggShares */
    MOEH_SA_MASKED, /* collecting masked vectors */
    MOEH_SA_UNMASK  /* collecting SecaggReveal */
} moeh_sa_step_t;

typedef struct moeh_sa_server moeh_sa_server_t;

/* Sends env to session member id; returns what the transport returned. */
typedef int (*moeh_sa_send_fn)(void *ctx, uint32_t id, Moeh__Envelope *env);

/* An idle server (step OFF). 0 or -ENOMEM; caller owns *out: moeh_sa_server_destroy(&s). */
int moeh_sa_server_create(moeh_sa_server_t **out) MOEH_SA_WUR;
/* NULL-safe; sets *self_p = NULL. */
void moeh_sa_server_destroy(moeh_sa_server_t **self_p);

/* Opens a session of n members summing vectors of len words, with a fresh random session id
 * and graph seed. k is --secagg-k: MOEH_SECAGG_K_AUTO takes k and the threshold t from
 * moeh_secagg_plan(n, plan) (fed/moeh_secagg_plan.h; every pair masks while n is small);
 * otherwise with k + 1 >= n every pair masks (k = 0; *k_dropped set to 1, else 0) and the
 * threshold is t = (k ? k + 1 : n) / 2 + 1. Every step needs max(t, min_sites) members. The step is
 * KEYS afterwards even on failure: 0, -ERANGE (n not in 2..MOEH_WIRE_SECAGG_MAX), -EINVAL (a plan
 * out of range) or -ENOMEM, and then n = 0, which the caller treats as an aborted attempt. */
int moeh_sa_server_open(moeh_sa_server_t *sa, uint32_t n, uint32_t k,
                        const moeh_secagg_plan_cfg_t *plan, uint32_t min_sites, size_t len,
                        int *k_dropped) MOEH_SA_WUR;
/* Back to plain (step OFF), e.g. a phase without --secagg. */
void moeh_sa_server_off(moeh_sa_server_t *sa);
moeh_sa_step_t moeh_sa_server_step(const moeh_sa_server_t *sa);
/* The session's configuration: cfg.round is the session id sent to the sites. */
const moeh_secagg_cfg_t *moeh_sa_server_cfg(const moeh_sa_server_t *sa);
/* Members a step needs: max(t, min_sites). */
uint32_t moeh_sa_server_need(const moeh_sa_server_t *sa);
/* 1 if member id advertised keys (U1), its shares were all forwarded (U2), sent its masked
 * vector (U3). */
int moeh_sa_server_in_u1(const moeh_sa_server_t *sa, uint32_t id);
int moeh_sa_server_in_u2(const moeh_sa_server_t *sa, uint32_t id);
int moeh_sa_server_in_u3(const moeh_sa_server_t *sa, uint32_t id);
/* Of the members this step waits on (all, U1, U2, U3 for KEYS..UNMASK): *got answered, and
 * *pending did not but may still (waiting[id] non-zero: live, and not dropped by the caller). */
void moeh_sa_server_progress(const moeh_sa_server_t *sa, const uint8_t *waiting, uint32_t *got,
                             uint32_t *pending);
/* U3 (survivors) and U2 \ U3 (dropped), counted. */
void moeh_sa_server_counts(const moeh_sa_server_t *sa, size_t *n_survivors, size_t *n_dropped);

/* The messages of the current step from member id. 0 if taken; else -ESTALE (duplicate, wrong
 * step or from a member that skipped a step) or -EBADMSG (malformed for this session), with
 * *what saying why (a static string). The caller checked the step and session id. */
int moeh_sa_server_advertise(moeh_sa_server_t *sa, uint32_t id, const Moeh__SecaggAdvertise *a,
                             const char **what) MOEH_SA_WUR;
int moeh_sa_server_shares(moeh_sa_server_t *sa, uint32_t id, const Moeh__SecaggShares *sh,
                          const char **what) MOEH_SA_WUR;
/* 0 if member id may send its masked vector now (it is in U2 and not in U3): the caller adds
 * the vector to its sum and calls moeh_sa_server_masked(). */
int moeh_sa_server_may_mask(const moeh_sa_server_t *sa, uint32_t id) MOEH_SA_WUR;
void moeh_sa_server_masked(moeh_sa_server_t *sa, uint32_t id);
int moeh_sa_server_reveal(moeh_sa_server_t *sa, uint32_t id, const Moeh__SecaggReveal *r,
                          const char **what) MOEH_SA_WUR;

/* Closes the current step (the caller decided: everyone live answered, or the deadline passed
 * with at least need() members). KEYS, SHARES, MASKED: sends the next step's message to the
 * members concerned that are connected (connected[id] non-zero) and returns 0. UNMASK: removes
 * every mask from sum (cfg.len words, the sum of U3's masked vectors), sets the step OFF and
 * returns 1; or a negative code with err->msg if the sum cannot be unmasked. */
int moeh_sa_server_advance(moeh_sa_server_t *sa, const uint8_t *connected, moeh_sa_send_fn send,
                           void *ctx, uint32_t *sum, moeh_err_t *err) MOEH_SA_WUR;

#endif
