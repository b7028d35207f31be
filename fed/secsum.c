/* secsum.c - the vectors each phase sums (moeh_secsum.h): lengths, and the wide fixed-point
 * values written as 16-bit limbs so that sums of words never carry. */
#include "moeh_secsum.h"

#include <errno.h>
#include <math.h>
#include <string.h>

size_t moeh_secsum_eval_hist_words(moeh_secsum_dims_t d)
{
    return (size_t)MOEH_N_SLICES * d.n_tasks * 2 * d.eval_bins;
}

size_t moeh_secsum_eval_values_len(moeh_secsum_dims_t d)
{
    return ((size_t)MOEH_N_COMBOS * d.n_experts + MOEH_N_COMBOS + 2) * MOEH_SECSUM_FIX_WORDS;
}

size_t moeh_secsum_len(moeh_secsum_dims_t d, moeh_secsum_phase_t phase)
{
    const size_t V = MOEH_SECSUM_FIX_WORDS;
    switch (phase) {
    case MOEH_SECSUM_TRAIN:
        if (!d.n_params || !d.n_groups) return 0;
        return d.n_params + d.n_groups + MOEH_SECSUM_TRAIN_VALUES * V;
    case MOEH_SECSUM_STATS:
        return d.n_norm ? 3 * (size_t)d.n_norm * V : 0;
    case MOEH_SECSUM_EVALUATE:
        if (!d.n_tasks || !d.eval_bins) return 0;
        return moeh_secsum_eval_hist_words(d) + moeh_secsum_eval_values_len(d);
    case MOEH_SECSUM_VALIDATE: /* the test split's EVALUATE vector, then the validation's */
        return 2 * moeh_secsum_len(d, MOEH_SECSUM_EVALUATE);
    default:
        return 0;
    }
}

/* x with `frac` fractional bits: |x| * 2^frac < 2^117 keeps 2^10 sites' sum below 2^127. */
static int fix_put(uint32_t *w, double x, int frac, double limit)
{
    memset(w, 0, MOEH_SECSUM_FIX_WORDS * sizeof *w);
    if (!isfinite(x) || fabs(x) >= limit) return -ERANGE;
    /* x * 2^frac is exact (a power of two), below 2^117 in magnitude; rint rounds the bits
     * below 2^-frac to nearest, the same way on every site and in the plain path */
    __int128 q = (__int128)rint(ldexp(x, frac));
    unsigned __int128 u = (unsigned __int128)q; /* two's complement */
    for (unsigned k = 0; k < MOEH_SECSUM_FIX_WORDS; k++)
        w[k] = (uint32_t)(u >> (16 * k)) & 0xffffu;
    return 0;
}

static double fix_get(const uint32_t *w, int frac)
{
    unsigned __int128 u = 0;
    for (unsigned k = 0; k < MOEH_SECSUM_FIX_WORDS; k++)
        u += (unsigned __int128)w[k] << (16 * k); /* mod 2^128 */
    return ldexp((double)(__int128)u, -frac);     /* one rounding, then an exact scaling */
}

int moeh_secsum_fix_put(uint32_t *w, double x)
{
    return fix_put(w, x, 64, MOEH_SECSUM_FIX_LIMIT);
}

double moeh_secsum_fix_get(const uint32_t *w)
{
    return fix_get(w, 64);
}

void moeh_secsum_add(uint32_t *sum, const void *words, size_t len)
{
    const unsigned char *p = words;
    for (size_t i = 0; i < len; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        sum[i] += x; /* mod 2^32 */
    }
}

int moeh_secsum_train_put(uint32_t *w, double train_loss, uint64_t n_samples, uint32_t steps)
{
    const size_t V = MOEH_SECSUM_FIX_WORDS;
    int rc = moeh_secsum_fix_put(w, train_loss * (double)n_samples);
    if (!rc) rc = moeh_secsum_fix_put(w + V, (double)n_samples);
    if (!rc) rc = moeh_secsum_fix_put(w + 2 * V, (double)steps);
    return rc;
}

void moeh_secsum_train_get(const uint32_t *w, double *loss_x_samples, double *n_samples,
                           double *steps)
{
    const size_t V = MOEH_SECSUM_FIX_WORDS;
    *loss_x_samples = moeh_secsum_fix_get(w);
    *n_samples = moeh_secsum_fix_get(w + V);
    *steps = moeh_secsum_fix_get(w + 2 * V);
}

int moeh_secsum_stats_put(uint32_t *w, const double *stats, size_t n_norm)
{
    for (size_t i = 0; i < 3 * n_norm; i++)
        if (fix_put(w + i * MOEH_SECSUM_FIX_WORDS, stats[i], MOEH_SECSUM_STATS_FRAC,
                    MOEH_SECSUM_STATS_LIMIT) != 0)
            return -ERANGE;
    return 0;
}

void moeh_secsum_stats_get(const uint32_t *w, size_t n_norm, double *stats)
{
    for (size_t i = 0; i < 3 * n_norm; i++)
        stats[i] = fix_get(w + i * MOEH_SECSUM_FIX_WORDS, MOEH_SECSUM_STATS_FRAC);
}

int moeh_secsum_eval_put(uint32_t *values, moeh_secsum_dims_t d, const float *gate,
                         const uint32_t *combo_rows, double loss_sum, uint64_t n_labels)
{
    const size_t V = MOEH_SECSUM_FIX_WORDS, ng = (size_t)MOEH_N_COMBOS * d.n_experts;
    uint32_t *v = values;
    for (size_t i = 0; i < ng; i++, v += V)
        if (moeh_secsum_fix_put(v, gate[i]) != 0) return -ERANGE;
    for (size_t k = 0; k < MOEH_N_COMBOS; k++, v += V)
        if (moeh_secsum_fix_put(v, combo_rows[k]) != 0) return -ERANGE;
    if (moeh_secsum_fix_put(v, loss_sum) != 0) return -ERANGE;
    return moeh_secsum_fix_put(v + V, (double)n_labels);
}

/* A summed count as an integer: a hostile site can make a masked sum negative or huge, and
 * converting such a double to uint64_t would be undefined; it is clamped to [0, 2^63]. */
static uint64_t count_of(double x)
{
    if (!(x > 0)) return 0;
    return x < 0x1p63 ? (uint64_t)x : (uint64_t)1 << 63;
}

void moeh_secsum_eval_get(const uint32_t *w, moeh_secsum_dims_t d, uint64_t *hist, double *gate,
                          uint64_t *combo_rows, double *loss_sum, uint64_t *n_labels)
{
    const size_t V = MOEH_SECSUM_FIX_WORDS, ng = (size_t)MOEH_N_COMBOS * d.n_experts;
    size_t nh = moeh_secsum_eval_hist_words(d);
    for (size_t i = 0; i < nh; i++)
        hist[i] = w[i];
    const uint32_t *v = w + nh;
    for (size_t i = 0; i < ng; i++, v += V)
        gate[i] = moeh_secsum_fix_get(v);
    for (size_t k = 0; k < MOEH_N_COMBOS; k++, v += V)
        combo_rows[k] = count_of(moeh_secsum_fix_get(v));
    *loss_sum = moeh_secsum_fix_get(v);
    *n_labels = count_of(moeh_secsum_fix_get(v + V));
}
