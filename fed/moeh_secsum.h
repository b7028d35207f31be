/* moeh_secsum.h - what each phase adds up, as one vector of uint32 words summed mod 2^32.
 *
 * Part of fed/: it knows nothing of the wire. Its lengths follow from the dimensions the
 * daemons negotiated (moeh_secsum_dims_t; proto/moeh_wire.h translates its limits and round
 * tasks into them: moeh_wire_secsum_dims, moeh_wire_secsum_len).
 *
 * With --secagg the coordinator learns only sums (docs/secagg.md): every phase hands the
 * secure-aggregation protocol (moeh_secagg.h) one vector of words per site, and the plain path adds
 * the same words in clear, so both paths decode the very same sum. A phase's vector is:
 *
 *   TRAIN     the update words (n_params + n_groups, fed/moeh_quant.h), then three values:
 *             train_loss * n_samples, n_samples, steps;
 *   STATS     for each normalisation feature, three values: count, sum, sum of squares;
 *   EVALUATE  the score histograms (MOEH_N_SLICES x n_tasks x 2 x eval_bins counts, one
 *             word each, summed as they are), then the values gate sums (MOEH_N_COMBOS x
 *             n_experts), rows per combination (MOEH_N_COMBOS), loss_sum and n_labels;
 *   VALIDATE  the EVALUATE vector of the test split, then the EVALUATE vector of the
 *             validation split (one phase evaluates both since protocol 9): an EVALUATE
 *             vector is a prefix of it.
 *
 * A "value" is a real x with |x| < MOEH_SECSUM_FIX_LIMIT encoded in fixed point: the 128-bit
 * two's complement integer X = rint(x * 2^64), written as MOEH_SECSUM_FIX_WORDS words of 16-bit
 * limbs (word k holds bits 16k..16k+15 of X). Summing the words of up to
 * MOEH_SECSUM_FIX_MAX_SITES sites never carries out of a word, and the limb sums recombine to
 * the exact sum of the X mod 2^128, which is the exact signed sum: at most 2^10 sites with
 * |x| < 2^53 each keep it below 2^63 in magnitude (|X| below 2^127). Integers below 2^53 are exact;
 * a real is rounded to 2^-64 once per site, and the decoded sum is the exact sum of those, rounded
 * to double once: it does not depend on the order in which sites arrive.
 *
 * Pure functions; no allocation; thread-safe. */
#ifndef MOEH_SECSUM_H
#define MOEH_SECSUM_H

#include "moeh_schema.h"

#include <stddef.h>
#include <stdint.h>

#define MOEH_SECSUM_FIX_WORDS 8u
#define MOEH_SECSUM_FIX_LIMIT 0x1p53 /* |x| per site and value */
#define MOEH_SECSUM_FIX_MAX_SITES 1024u
/* The STATS values (counts, sums and sums of squares of raw feature values, which can be
 * large: timestamps, sentinels like 99999999) use 32 fractional bits instead of 64, so each
 * site's value may reach 2^85 (~3.9e25) at a resolution of 2^-32. */
#define MOEH_SECSUM_STATS_FRAC 32
#define MOEH_SECSUM_STATS_LIMIT 0x1p85
#define MOEH_SECSUM_TRAIN_VALUES 3u /* loss * samples, samples, steps */

/* The phases whose results are summed. */
typedef enum {
    MOEH_SECSUM_NONE = 0, /* no vector: length 0 */
    MOEH_SECSUM_TRAIN,
    MOEH_SECSUM_STATS,
    MOEH_SECSUM_EVALUATE,
    MOEH_SECSUM_VALIDATE,
} moeh_secsum_phase_t;

/* The dimensions that fix every phase's vector: a small value, passed by value. A zero field
 * means "not known yet": a phase that needs it has no vector (length 0). TRAIN needs n_params
 * and n_groups, STATS n_norm, EVALUATE and VALIDATE n_tasks and eval_bins (n_experts 0: no gate
 * sums). */
typedef struct {
    uint64_t n_params;  /* model parameters (TRAIN) */
    uint32_t n_groups;  /* aggregation groups, one weight word each (TRAIN) */
    uint32_t n_tasks;   /* prediction tasks (EVALUATE) */
    uint32_t eval_bins; /* histogram bins per task and label (EVALUATE) */
    uint32_t n_norm;    /* normalisation features (STATS) */
    uint32_t n_experts; /* columns of the gate sums (EVALUATE) */
} moeh_secsum_dims_t;

/* Words of the vector that `phase` sums under dims d; 0 if d does not define it (a dimension
 * it needs is 0, or MOEH_SECSUM_NONE / an unknown phase). */
size_t moeh_secsum_len(moeh_secsum_dims_t d, moeh_secsum_phase_t phase);
/* Offset of the first value after the histograms in an EVALUATE vector. */
size_t moeh_secsum_eval_hist_words(moeh_secsum_dims_t d);

/* Writes x as MOEH_SECSUM_FIX_WORDS words. 0, or -ERANGE if x is not finite or
 * |x| >= MOEH_SECSUM_FIX_LIMIT (w is then zeroed). */
int moeh_secsum_fix_put(uint32_t *w, double x) __attribute__((warn_unused_result));
/* The value of MOEH_SECSUM_FIX_WORDS summed words (of at most MOEH_SECSUM_FIX_MAX_SITES
 * sites), rounded to the nearest double. */
double moeh_secsum_fix_get(const uint32_t *w);

/* sum[i] += words[i] mod 2^32 for len words; words need not be aligned. */
void moeh_secsum_add(uint32_t *sum, const void *words, size_t len);

/* The three TRAIN values (3 * MOEH_SECSUM_FIX_WORDS words at w). 0 or -ERANGE. */
int moeh_secsum_train_put(uint32_t *w, double train_loss, uint64_t n_samples, uint32_t steps)
    __attribute__((warn_unused_result));
/* Their sums: sum of train_loss * n_samples, of n_samples and of steps. */
void moeh_secsum_train_get(const uint32_t *w, double *loss_x_samples, double *n_samples,
                           double *steps);

/* STATS: stats (n_norm, 3) as values with MOEH_SECSUM_STATS_FRAC fractional bits. 0 or -ERANGE
 * (|value| >= MOEH_SECSUM_STATS_LIMIT or not finite). */
int moeh_secsum_stats_put(uint32_t *w, const double *stats, size_t n_norm)
    __attribute__((warn_unused_result));
void moeh_secsum_stats_get(const uint32_t *w, size_t n_norm, double *stats);

/* EVALUATE: writes the values that follow the histograms (values = the vector +
 * moeh_secsum_eval_hist_words(d); the histogram words are the site's counts as they are):
 * gate (MOEH_N_COMBOS, n_experts), combo_rows (MOEH_N_COMBOS), loss_sum and n_labels,
 * moeh_secsum_eval_values_len(d) words. 0 or -ERANGE. */
size_t moeh_secsum_eval_values_len(moeh_secsum_dims_t d);
int moeh_secsum_eval_put(uint32_t *values, moeh_secsum_dims_t d, const float *gate,
                         const uint32_t *combo_rows, double loss_sum, uint64_t n_labels)
    __attribute__((warn_unused_result));
/* Decodes a summed EVALUATE vector: hist (widened), gate sums, rows, loss_sum, n_labels. */
void moeh_secsum_eval_get(const uint32_t *w, moeh_secsum_dims_t d, uint64_t *hist, double *gate,
                          uint64_t *combo_rows, double *loss_sum, uint64_t *n_labels);

#endif
