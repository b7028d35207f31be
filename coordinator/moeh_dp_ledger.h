/* moeh_dp_ledger.h - the coordinator's DP-FedAvg accounting (fed/moeh_dp.h; docs/security.md,
 * "Differential privacy") and its durable form, dp_ledger.json next to the checkpoint.
 *
 * Two views, both composed with the RDP accountant at sampling rate 1 (every site takes part in
 * every round; dropped sites give no amplification):
 *  - the aggregate: every noised sum applied to the model is one Gaussian mechanism with noise
 *    multiplier Z (sensitivity clip, noise std >= Z clip when >= m = min_sites sites report).
 *    A sum never revealed (an attempt without quorum, an aborted secure-aggregation session)
 *    spends nothing. This is dp_epsilon: against anyone who sees the models.
 *  - the coordinator: with --secagg it sees only those sums; without, it sees each site's own
 *    update, which carries noise Z clip / sqrt(m) only (multiplier Z / sqrt(m)), once per update
 *    received (late, refused and retried ones included). This is dp_epsilon_coordinator, from
 *    the largest count of any one site (`most_seen`, which the caller keeps per site).
 * The ledger is plain data owned by its holder; nothing here is thread-safe. */
#ifndef MOEH_DP_LEDGER_H
#define MOEH_DP_LEDGER_H

#include "moeh_common.h"

#define MOEH_DP_LEDGER_WUR __attribute__((warn_unused_result))

typedef struct {
    float clip, noise, delta; /* --dp-clip (0: no DP), --dp-noise, --dp-delta */
    uint32_t sites;           /* --min-sites: the noise is calibrated for this many */
    uint64_t rounds;          /* noised sums applied to the model (anyone who sees it) */
    uint64_t rounds_secagg;   /* of which the coordinator saw only the sum (--secagg) */
    uint64_t coord_base;      /* most plain updates of one site seen before this process */
    char path[4096];          /* out_dir/dp_ledger.json */
} moeh_dp_ledger_t;

/* A ledger with no release yet, kept in out_dir/dp_ledger.json. 0 or -ENAMETOOLONG. */
int moeh_dp_ledger_init(moeh_dp_ledger_t *l, float clip, float noise, float delta, uint32_t sites,
                        const char *out_dir) MOEH_DP_LEDGER_WUR;
/* 1 when DP is on (clip > 0). */
static inline int moeh_dp_ledger_on(const moeh_dp_ledger_t *l)
{
    return l->clip > 0;
}
/* Updates of one site the coordinator has seen in all, given the most any site sent to this
 * process. */
uint64_t moeh_dp_ledger_coord_releases(const moeh_dp_ledger_t *l, uint64_t most_seen);
/* The (epsilon, delta) spent: against the models, and against the coordinator's view. */
void moeh_dp_ledger_epsilons(const moeh_dp_ledger_t *l, uint64_t most_seen, double *eps,
                             double *eps_coord);
/* One noised sum is about to shape the model (secagg: the coordinator saw only the sum). */
void moeh_dp_ledger_release(moeh_dp_ledger_t *l, int secagg);
/* Writes the ledger atomically, as soon as something was released, so that --resume (and a
 * crash between a release and the round's checkpoint) never forgets a release. 0 or a negative
 * code with err->msg; failing is fatal to the caller (it could no longer report what it spent). */
int moeh_dp_ledger_write(const moeh_dp_ledger_t *l, uint64_t most_seen,
                         moeh_err_t *err) MOEH_DP_LEDGER_WUR;
/* A new run: removes a ledger an earlier run left in out_dir, and writes a fresh one when DP is
 * on. 0 or a negative code with err->msg. */
int moeh_dp_ledger_start(moeh_dp_ledger_t *l, moeh_err_t *err) MOEH_DP_LEDGER_WUR;
/* --resume: the releases so far, from the ledger on disk. A run must be resumed with the noise
 * and the calibration count it was started with; a checkpoint of a run without DP cannot
 * become private, and a DP run cannot silently continue without DP. 0, -EINVAL or -EBADMSG
 * with err->msg. */
int moeh_dp_ledger_load(moeh_dp_ledger_t *l, moeh_err_t *err) MOEH_DP_LEDGER_WUR;

#endif
