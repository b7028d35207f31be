/* moeh_rdp.h - a Rényi-DP accountant for the (Poisson-subsampled) Gaussian mechanism, the
 * mechanism of DP-FedAvg (clip each site's update, add Gaussian noise to the sum).
 *
 * RDP of one step at order alpha, noise multiplier sigma, sampling rate q:
 *   q = 1:  alpha / (2 sigma^2)                                  (Mironov 2017, Prop. 7)
 *   q < 1:  log(A) / (alpha - 1) with, for integer alpha,
 *           A = sum_{k=0..alpha} C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2))
 *           (Mironov, Talwar and Zhang 2019, "Rényi Differential Privacy of the Sampled
 *           Gaussian Mechanism", Sec. 3.3); fractional orders with q < 1 are not supported.
 * T steps compose additively. Conversion to (epsilon, delta), minimised over the orders:
 *   epsilon = rdp + log1p(-1/alpha) - log(delta alpha) / (alpha - 1)
 *   (Canonne, Kamath and Steinke 2020, Prop. 12; the conversion used by Google's
 *   dp_accounting), clamped at 0; an RDP of exactly 0 (no loss) gives epsilon 0. */
#ifndef MOEH_RDP_H
#define MOEH_RDP_H

#include <stddef.h>
#include <stdint.h>

/* RDP at `alpha` (> 1) of `steps` compositions; NAN for an unsupported (fractional order,
 * q < 1) or invalid input; 0 when q == 0; INFINITY when sigma == 0 and q > 0. */
double moeh_rdp_gaussian(double q, double sigma, double alpha, uint64_t steps);

/* The smallest epsilon over the orders (rdp[i] at orders[i]) for `delta` in (0, 1);
 * *best_order receives the order that gives it (may be NULL). INFINITY if none is finite. */
double moeh_rdp_epsilon(const double *orders, const double *rdp, size_t n, double delta,
                        double *best_order);

/* The default orders: 2, 3, ..., 256 (integer, so that q < 1 is supported). */
#define MOEH_RDP_N_ORDERS 255
void moeh_rdp_default_orders(double *orders);

#endif
