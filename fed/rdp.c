/* rdp.c - Rényi-DP accountant for the subsampled Gaussian mechanism (see moeh_rdp.h). */
#include "moeh_rdp.h"

#include <math.h>

/* log(exp(a) + exp(b)) without overflow */
static double log_add(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    double hi = a > b ? a : b, lo = a > b ? b : a;
    return hi + log1p(exp(lo - hi));
}

double moeh_rdp_gaussian(double q, double sigma, double alpha, uint64_t steps)
{
    if (!(q >= 0 && q <= 1) || !(sigma >= 0) || !(alpha > 1) || isnan(alpha)) return NAN;
    if (q == 0 || steps == 0) return 0.0;
    if (sigma == 0) return INFINITY;
    if (isinf(alpha)) return INFINITY;
    if (q == 1) return (double)steps * alpha / (2 * sigma * sigma);
    if (alpha != floor(alpha)) return NAN;
    /* log A for integer alpha, term by term in log space */
    double log_a = -INFINITY, lq = log(q), l1q = log1p(-q);
    long a = (long)alpha;
    for (long k = 0; k <= a; k++) {
        double lbinom = lgamma((double)a + 1) - lgamma((double)k + 1) - lgamma((double)(a - k) + 1);
        double term = lbinom + (double)k * lq + (double)(a - k) * l1q +
                      ((double)k * (double)k - (double)k) / (2 * sigma * sigma);
        log_a = log_add(log_a, term);
    }
    return (double)steps * log_a / (alpha - 1);
}

double moeh_rdp_epsilon(const double *orders, const double *rdp, size_t n, double delta,
                        double *best_order)
{
    double best = INFINITY, best_a = NAN;
    if (!(delta > 0 && delta < 1)) return NAN;
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i];
        if (!(a > 1) || isnan(r) || isinf(r)) continue;
        if (r == 0) { /* a zero Rényi divergence means identical outputs: (0, 0)-DP */
            best = 0;
            best_a = a;
            break;
        }
        double eps = r + log1p(-1 / a) - log(delta * a) / (a - 1);
        if (eps < 0) eps = 0;
        if (eps < best) {
            best = eps;
            best_a = a;
        }
    }
    if (best_order) *best_order = best_a;
    return best;
}

void moeh_rdp_default_orders(double *orders)
{
    for (int i = 0; i < MOEH_RDP_N_ORDERS; i++)
        orders[i] = 2.0 + i;
}
