/* moeh_dp.h - the arithmetic of DP-FedAvg (McMahan, Ramage, Talwar and Zhang, "Learning
 * Differentially Private Recurrent Language Models", ICLR 2018) with the noise distributed over
 * the sites, so that it composes with secure aggregation (docs/security.md, "Differential
 * privacy").
 *
 * Each site clips its whole update delta to L2 norm C and adds N(0, (Z C)^2 / m) to every
 * coordinate; if at least m sites report, the sum carries noise of standard deviation at least
 * Z C, which is the Gaussian mechanism with noise multiplier Z on a sum of L2 sensitivity C.
 * The coordinator composes the rounds with the Rényi-DP accountant of fed/moeh_rdp.h.
 *
 * Noise comes from a ChaCha20 keystream under a fresh 256-bit key from libsodium's
 * randombytes_buf (never from the public round seed); the keyed variant exists for tests.
 * Standard normals are drawn by Box-Muller from 53-bit uniforms u in (0, 1], so no draw exceeds
 * sqrt(-2 ln 2^-53) = 8.572 in magnitude: with the encoding range moeh_dp_range() (C plus 9
 * per-site standard deviations) a noised coordinate is never clamped by the fixed-point
 * encoding (fed/moeh_quant.h). Nothing here allocates; secrets (keys, keystream) are wiped. */
#ifndef MOEH_DP_H
#define MOEH_DP_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_DP_KEY_BYTES 32
/* Largest |z| moeh_dp_add_noise can draw, rounded up: sqrt(2 * 53 * ln 2) = 8.5717... */
#define MOEH_DP_MAX_Z 8.572
/* Per-site standard deviations of headroom in the encoding range (> MOEH_DP_MAX_Z). */
#define MOEH_DP_RANGE_SIGMAS 9.0

/* Scales x (n floats) so that its L2 norm is at most `clip` (> 0): when the norm exceeds clip,
 * x is multiplied by clip / norm, shrunk by a relative 1e-6 so that float rounding cannot leave
 * it above clip; otherwise x is left exactly as it was. Returns the norm before clipping
 * (computed in double). Non-finite entries are the caller's bug (checked before). */
double moeh_dp_clip(float *x, size_t n, double clip);

/* The standard deviation each of m sites adds: Z C / sqrt(m). */
double moeh_dp_site_std(double clip, double noise, uint32_t sites);

/* The noise's standard deviation on each coordinate of the average of m sites' updates:
 * Z C / m (m sites' shares, Z C in all, divided by m). */
double moeh_dp_avg_std(double clip, double noise, uint32_t sites);

/* Above this moeh_dp_avg_std a model is not expected to learn: trained weights are of the order
 * of 0.1 (docs/security.md, "Measured: what site-level DP costs": 0.04 cost some AUROC, 0.4
 * left none). */
#define MOEH_DP_SWAMPING_STD 0.1

/* The per-word range of the fixed-point encoding under DP: C + 9 Z C / sqrt(m) (INFINITY if
 * that exceeds the float range; callers refuse it). A clipped
 * coordinate is at most C in magnitude and one site's noise at most 8.572 standard deviations,
 * so the encoding never clamps a noised value. */
float moeh_dp_range(float clip, float noise, uint32_t sites);

/* x[i] += std * z_i, i < n, with z_i standard normals from the ChaCha20-IETF keystream of `key`
 * (nonce 0; word pairs -> Box-Muller). Deterministic in key: for tests. The keystream is
 * expanded 4 KiB at a time on the stack and wiped. n < 2^35 (8 bytes per
 * coordinate of a 32-bit block counter). */
void moeh_dp_add_noise_keyed(float *x, size_t n, double std, const uint8_t key[MOEH_DP_KEY_BYTES]);

/* The same under a fresh key from randombytes_buf, wiped afterwards: the noise cannot be
 * reproduced by anyone, including from the round's seed. libsodium must be initialised
 * (moeh_crypto_init, keys.h). */
void moeh_dp_add_noise(float *x, size_t n, double std);

/* Privacy accounting: releases of Gaussian mechanisms without sampling (q = 1) that compose.
 * One entry per kind of release: `count` releases at noise multiplier `noise`. */
typedef struct {
    double noise;
    uint64_t count;
} moeh_dp_release_t;

/* The smallest epsilon for `delta` over the default orders (2..256, moeh_rdp.h) of the
 * composition of every release listed: RDP(alpha) = sum_k count_k alpha / (2 noise_k^2)
 * (Mironov 2017), converted as in moeh_rdp_epsilon. 0 when nothing was released; INFINITY when
 * a release had noise 0. *best_order (may be NULL) receives the order that gives it. */
double moeh_dp_epsilon(const moeh_dp_release_t *r, size_t n, double delta, double *best_order);

#endif
