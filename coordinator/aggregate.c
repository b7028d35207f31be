/* aggregate.c - per-group FedAvg running fixed-point sum (see moeh_aggregate.h). */
#include "moeh_aggregate.h"

#include "moeh_common.h"
#include "moeh_quant.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int moeh_fedavg_init(moeh_fedavg_t *a, size_t n_params, size_t n_groups, const size_t *group_off,
                     const size_t *group_len)
{
    memset(a, 0, sizeof *a);
    if (n_groups == 0 || n_groups > MOEH_AGG_MAX_GROUPS) return -EINVAL;
    size_t next = 0;
    for (size_t g = 0; g < n_groups; g++) {
        if (group_off[g] != next || group_len[g] > n_params - next) return -EINVAL;
        next += group_len[g];
        a->group_off[g] = group_off[g];
        a->group_len[g] = group_len[g];
    }
    if (next != n_params) return -EINVAL;
    a->n_params = n_params;
    a->n_groups = n_groups;
    a->sum = calloc(n_params + n_groups, sizeof(uint32_t));
    return a->sum ? 0 : -ENOMEM;
}

void moeh_fedavg_free(moeh_fedavg_t *a)
{
    free(a->sum);
    memset(a, 0, sizeof *a);
}

void moeh_fedavg_reset(moeh_fedavg_t *a)
{
    memset(a->sum, 0, (a->n_params + a->n_groups) * sizeof(uint32_t));
    a->n_updates = 0;
}

void moeh_fedavg_add(moeh_fedavg_t *a, const void *words)
{
    const unsigned char *p = words;
    uint32_t *restrict s = a->sum;
    size_t n = a->n_params + a->n_groups;
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        s[i] += x; /* mod 2^32 */
    }
    a->n_updates++;
}

uint32_t moeh_fedavg_weight(const moeh_fedavg_t *a, size_t g)
{
    return a->sum[a->n_params + g];
}

size_t moeh_fedavg_apply(const moeh_fedavg_t *a, float *theta, double scale)
{
    MOEH_ASSERT(scale > 0);
    size_t updated = 0;
    for (size_t g = 0; g < a->n_groups; g++) {
        uint32_t w = moeh_fedavg_weight(a, g);
        if (w == 0) continue; /* no site trained this group: keep it */
        double inv = 1.0 / (scale * (double)w);
        for (size_t i = a->group_off[g]; i < a->group_off[g] + a->group_len[g]; i++)
            theta[i] = (float)((double)theta[i] + (double)moeh_quant_signed(a->sum[i]) * inv);
        updated++;
    }
    return updated;
}

size_t moeh_fedavg_mean_delta(const moeh_fedavg_t *a, double scale, float *delta, uint8_t *updated)
{
    MOEH_ASSERT(scale > 0);
    size_t n_up = 0;
    for (size_t g = 0; g < a->n_groups; g++) {
        uint32_t w = moeh_fedavg_weight(a, g);
        size_t lo = a->group_off[g], hi = lo + a->group_len[g];
        updated[g] = w != 0;
        if (w == 0) {
            memset(delta + lo, 0, (hi - lo) * sizeof(float));
            continue;
        }
        double inv = 1.0 / (scale * (double)w);
        for (size_t i = lo; i < hi; i++)
            delta[i] = (float)((double)moeh_quant_signed(a->sum[i]) * inv);
        n_up++;
    }
    return n_up;
}

int moeh_strategy_parse(const char *s, moeh_strategy_t *out)
{
    static const char *names[] = {"fedavg", "fedadam", "fedyogi", "trimmed", "median"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (moeh_strategy_t)i;
            return 0;
        }
    return -EINVAL;
}

const char *moeh_strategy_name(moeh_strategy_t k)
{
    return k == MOEH_STRATEGY_FEDADAM   ? "fedadam"
           : k == MOEH_STRATEGY_FEDYOGI ? "fedyogi"
           : k == MOEH_STRATEGY_TRIMMED ? "trimmed"
           : k == MOEH_STRATEGY_MEDIAN  ? "median"
                                        : "fedavg";
}

void moeh_server_opt_step(const moeh_server_opt_t *o, const moeh_fedavg_t *a, float *theta,
                          float *m, float *v, const float *delta, const uint8_t *updated)
{
    for (size_t g = 0; g < a->n_groups; g++) {
        if (!updated[g]) continue;
        size_t lo = a->group_off[g], hi = lo + a->group_len[g];
        if (o->kind == MOEH_STRATEGY_FEDAVG) {
            for (size_t i = lo; i < hi; i++)
                theta[i] += delta[i];
            continue;
        }
        for (size_t i = lo; i < hi; i++) {
            float d = delta[i], d2 = d * d;
            m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * d;
            if (o->kind == MOEH_STRATEGY_FEDADAM)
                v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * d2;
            else /* Yogi: v moves toward d^2 by at most (1 - b2) d^2 */
                v[i] -= (1.0f - o->beta2) * d2 * (v[i] > d2 ? 1.0f : v[i] < d2 ? -1.0f : 0.0f);
            theta[i] += o->lr * m[i] / (sqrtf(v[i]) + o->tau);
        }
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

size_t moeh_trimmed_apply(const moeh_fedavg_t *layout, float *theta, const float *deltas,
                          const uint32_t *weights, size_t S, double trim, float *scratch)
{
    size_t n = layout->n_params, G = layout->n_groups, n_up = 0;
    for (size_t g = 0; g < G; g++) {
        size_t m = 0;
        for (size_t s = 0; s < S; s++)
            m += weights[s * G + g] > 0;
        if (m == 0) continue;
        size_t k = (size_t)(trim * (double)m);
        if (2 * k >= m) k = (m - 1) / 2;
        for (size_t i = layout->group_off[g]; i < layout->group_off[g] + layout->group_len[g];
             i++) {
            size_t j = 0;
            for (size_t s = 0; s < S; s++)
                if (weights[s * G + g] > 0) scratch[j++] = deltas[s * n + i];
            qsort(scratch, m, sizeof(float), cmp_float);
            double sum = 0;
            for (size_t q = k; q < m - k; q++)
                sum += scratch[q];
            theta[i] = (float)((double)theta[i] + sum / (double)(m - 2 * k));
        }
        n_up++;
    }
    return n_up;
}

size_t moeh_trimmed_untrimmed_groups(const moeh_fedavg_t *layout, const uint32_t *weights, size_t S,
                                     double trim)
{
    size_t G = layout->n_groups, n = 0;
    for (size_t g = 0; g < G; g++) {
        size_t m = 0;
        for (size_t s = 0; s < S; s++)
            m += weights[s * G + g] > 0;
        n += m > 0 && trim > 0 && (size_t)(trim * (double)m) == 0;
    }
    return n;
}

double moeh_update_norm(const moeh_fedavg_t *a, const void *param_words, const uint32_t *weights,
                        double scale)
{
    const unsigned char *p = param_words;
    double ss = 0;
    for (size_t g = 0; g < a->n_groups; g++) {
        if (weights[g] == 0) continue;
        double inv = 1.0 / (scale * (double)weights[g]), gs = 0;
        for (size_t i = a->group_off[g]; i < a->group_off[g] + a->group_len[g]; i++) {
            uint32_t q;
            memcpy(&q, p + 4 * i, 4);
            double d = (double)moeh_quant_signed(q);
            gs += d * d;
        }
        ss += gs * inv * inv;
    }
    return sqrt(ss);
}

double moeh_delta_norm(const float *d, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)d[i] * (double)d[i];
    return sqrt(ss);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

size_t moeh_norm_bound_factors(const double *norms, size_t S, double k, double *factors,
                               double *median, double *scratch)
{
    size_t m = 0, clipped = 0;
    for (size_t s = 0; s < S; s++)
        if (norms[s] > 0) scratch[m++] = norms[s];
    double med = 0;
    if (m > 0) {
        qsort(scratch, m, sizeof *scratch, cmp_double);
        med = m % 2 ? scratch[m / 2] : 0.5 * (scratch[m / 2 - 1] + scratch[m / 2]);
    }
    *median = med;
    for (size_t s = 0; s < S; s++) {
        double bound = k * med;
        factors[s] = norms[s] > bound && norms[s] > 0 ? bound / norms[s] : 1.0;
        clipped += factors[s] < 1.0;
    }
    return clipped;
}

void moeh_fedavg_add_scaled(moeh_fedavg_t *a, const void *param_words, const uint32_t *weights,
                            double factor)
{
    const unsigned char *p = param_words;
    uint32_t *restrict s = a->sum;
    for (size_t i = 0; i < a->n_params; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        if (factor != 1.0) /* |rint(q f)| <= |q| for f in (0, 1]: it stays in range */
            x = (uint32_t)(int32_t)rint((double)moeh_quant_signed(x) * factor);
        s[i] += x; /* mod 2^32 */
    }
    for (size_t g = 0; g < a->n_groups; g++)
        s[a->n_params + g] += weights[g];
    a->n_updates++;
}

int moeh_update_check(const moeh_fedavg_t *a, const void *words_, const moeh_update_bounds_t *b,
                      char *what, size_t what_len)
{
    const uint8_t *words = words_;
    for (size_t g = 0; g < a->n_groups; g++) {
        uint32_t w;
        memcpy(&w, words + 4 * (a->n_params + g), 4);
        if (b->unit_weight && w > 1) {
            snprintf(what, what_len,
                     "update: group %zu weight %u; unweighted aggregation allows 0 or 1", g, w);
            return -ERANGE;
        }
        if (w > b->max_weight) { /* the samples counted when the phase opened: a site that
                                  * rejoins declaring more cannot widen its share of the range */
            snprintf(what, what_len,
                     "update: group %zu weight %u exceeds the %llu training "
                     "samples this site may weigh (declared, capped by its registry limit "
                     "or --count-cap)",
                     g, w, (unsigned long long)b->max_weight);
            return -ERANGE;
        }
        /* under DP every word carries noise with weight 1, trained or not */
        double bound = b->scale * (b->dp ? 1.0 : (double)w) * b->range + 1.0;
        for (size_t i = a->group_off[g]; i < a->group_off[g] + a->group_len[g]; i++) {
            uint32_t q;
            memcpy(&q, words + 4 * i, 4);
            if (fabs((double)moeh_quant_signed(q)) > bound) {
                snprintf(what, what_len,
                         "update: word %zu is outside the range its group's "
                         "weight and the delta clip allow",
                         i);
                return -ERANGE;
            }
        }
    }
    return 0;
}

void moeh_update_decode(const moeh_fedavg_t *a, const void *words_, double scale, float *d,
                        uint32_t *w)
{
    const uint8_t *words = words_;
    for (size_t g = 0; g < a->n_groups; g++) {
        memcpy(&w[g], words + 4 * (a->n_params + g), 4);
        double inv = w[g] ? 1.0 / (scale * (double)w[g]) : 0.0;
        for (size_t i = a->group_off[g]; i < a->group_off[g] + a->group_len[g]; i++) {
            uint32_t q;
            memcpy(&q, words + 4 * i, 4);
            d[i] = (float)((double)moeh_quant_signed(q) * inv);
        }
    }
}
