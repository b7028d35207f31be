/* bounds.c - caps of declared counts and checks of statistics, evaluations and summed weights
 * against them (see moeh_bounds.h). */
#include "moeh_bounds.h"

#include "moeh_schema.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

uint64_t moeh_bounds_median(const uint64_t *v, size_t n, uint64_t *scratch)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] > 0) scratch[m++] = v[i];
    if (m == 0) return 0;
    qsort(scratch, m, sizeof *scratch, cmp_u64);
    if (m % 2) return scratch[m / 2];
    uint64_t a = scratch[m / 2 - 1], b = scratch[m / 2];
    return a + (b - a) / 2 + (b - a) % 2; /* no overflow */
}

uint64_t moeh_bounds_count_cap(uint64_t declared, uint64_t registered, uint64_t median, double k)
{
    if (registered > 0) return declared < registered ? declared : registered;
    if (!(k > 0) || median == 0) return declared;
    double cap = ceil(k * (double)median);
    if (cap >= 0x1p64) return declared;
    return (double)declared <= cap ? declared : (uint64_t)cap;
}

int moeh_bounds_stats_check(const double *stats, const moeh_stats_bounds_t *b, char *what,
                            size_t what_len)
{
    for (size_t i = 0; i < b->n_norm; i++) {
        const double n = stats[3 * i], s = stats[3 * i + 1], q = stats[3 * i + 2];
        const int hourly = i >= b->n_static;
        const double max_n = (double)b->max_rows * (hourly ? (double)b->n_steps : 1.0);
        if (!isfinite(n) || !isfinite(s) || !isfinite(q)) {
            snprintf(what, what_len, "stats: feature %zu has a value that is not finite", i);
            return -ERANGE;
        }
        if (n < 0 || n != floor(n) || n > max_n) {
            snprintf(what, what_len,
                     "stats: feature %zu counts %.17g values; expected an integer in [0, %.0f] "
                     "(%llu training rows%s)",
                     i, n, max_n, (unsigned long long)b->max_rows,
                     hourly ? " x the hours of the window" : "");
            return -ERANGE;
        }
        if (q < 0 || (n == 0 && (s != 0 || q != 0))) {
            snprintf(what, what_len,
                     "stats: feature %zu: sum of squares %.17g with sum %.17g over %.0f values "
                     "is impossible",
                     i, q, s, n);
            return -ERANGE;
        }
        if (n == 0) continue;
        /* Cauchy-Schwarz: q >= s^2 / n exactly; the sums were rounded once per value */
        double need = s * s / n;
        if (q < need - 1e-9 * need - 1e-300) {
            snprintf(what, what_len,
                     "stats: feature %zu: sum of squares %.17g is below sum^2 / count = %.17g "
                     "(no set of %.0f real values has these sums)",
                     i, q, need, n);
            return -ERANGE;
        }
        if (b->max_abs > 0 && (fabs(s) > n * b->max_abs * (1 + 1e-12) ||
                               q > n * b->max_abs * b->max_abs * (1 + 1e-12))) {
            snprintf(what, what_len,
                     "stats: feature %zu: sum %.17g and sum of squares %.17g over %.0f values "
                     "need values beyond the plausible range +-%g (--stats-max-abs)",
                     i, s, q, n, b->max_abs);
            return -ERANGE;
        }
    }
    return 0;
}

static uint64_t words_total(const unsigned char *p, size_t off, size_t n)
{
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * (off + i), 4);
        t += x;
    }
    return t;
}

int moeh_bounds_eval_check(const void *hist_words, const uint64_t *combo_rows, uint64_t n_labels,
                           const moeh_eval_bounds_t *b, char *what, size_t what_len)
{
    const unsigned char *p = hist_words;
    const size_t per_task = 2 * b->bins;
    const char *split = b->split ? b->split : "test";
    for (size_t sl = 0; sl < MOEH_N_SLICES; sl++)
        for (size_t t = 0; t < b->n_tasks; t++) {
            uint64_t tot = words_total(p, (sl * b->n_tasks + t) * per_task, per_task);
            if (tot > b->max_rows) {
                snprintf(what, what_len,
                         "eval: task %zu has %llu labelled rows in slice %zu, more than the "
                         "%llu %s rows declared (capped)",
                         t, (unsigned long long)tot, sl, (unsigned long long)b->max_rows, split);
                return -ERANGE;
            }
        }
    uint64_t rows = 0;
    for (size_t k = 0; k < MOEH_N_COMBOS; k++) {
        if (combo_rows[k] > b->max_rows - rows) {
            snprintf(what, what_len,
                     "eval: the rows per modality combination add up to more than the %llu %s "
                     "rows declared (capped)",
                     (unsigned long long)b->max_rows, split);
            return -ERANGE;
        }
        rows += combo_rows[k];
    }
    if ((double)n_labels > (double)b->n_tasks * (double)b->max_rows) {
        snprintf(what, what_len,
                 "eval: %llu labels, more than %zu tasks x the %llu %s rows declared (capped)",
                 (unsigned long long)n_labels, b->n_tasks, (unsigned long long)b->max_rows, split);
        return -ERANGE;
    }
    return 0;
}

int moeh_bounds_train_header_check(double train_loss, uint64_t n_samples, uint64_t max_rows,
                                   char *what, size_t what_len)
{
    if (n_samples > max_rows) {
        snprintf(what, what_len,
                 "update: n_samples %llu exceeds the %llu training rows this site may count "
                 "(declared, capped)",
                 (unsigned long long)n_samples, (unsigned long long)max_rows);
        return -ERANGE;
    }
    if (!(train_loss >= 0)) {
        snprintf(what, what_len, "update: train_loss %g is negative (a cross-entropy cannot be)",
                 train_loss);
        return -ERANGE;
    }
    return 0;
}

int moeh_bounds_weight_sum_check(const void *weight_words, size_t n_groups, uint64_t max_total,
                                 char *what, size_t what_len)
{
    const unsigned char *p = weight_words;
    for (size_t g = 0; g < n_groups; g++) {
        uint32_t w;
        memcpy(&w, p + 4 * g, 4);
        if (w > max_total) {
            snprintf(what, what_len,
                     "update sum: group %zu weight %u exceeds the %llu the survivors may "
                     "contribute (their capped training samples)",
                     g, w, (unsigned long long)max_total);
            return -ERANGE;
        }
    }
    return 0;
}
