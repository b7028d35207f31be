/* dp.c - DP-FedAvg clipping, distributed Gaussian noise and accounting (see dp.h). */
#include "moeh_dp.h"

#include "moeh_common.h"
#include "moeh_rdp.h"

#include <float.h>
#include <math.h>
#include <sodium.h>
#include <string.h>

double moeh_dp_clip(float *x, size_t n, double clip)
{
    MOEH_ASSERT(clip > 0);
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    double norm = sqrt(ss);
    if (norm <= clip) return norm;
    /* each float product is off by at most 2^-24 relative, far below the 1e-6 margin */
    double s = clip / norm * (1.0 - 1e-6);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((double)x[i] * s);
    return norm;
}

double moeh_dp_site_std(double clip, double noise, uint32_t sites)
{
    MOEH_ASSERT(sites > 0);
    return noise * clip / sqrt((double)sites);
}

double moeh_dp_avg_std(double clip, double noise, uint32_t sites)
{
    MOEH_ASSERT(sites > 0);
    return noise * clip / (double)sites;
}

float moeh_dp_range(float clip, float noise, uint32_t sites)
{
    double r = (double)clip + MOEH_DP_RANGE_SIGMAS * moeh_dp_site_std(clip, noise, sites);
    return r <= FLT_MAX ? (float)r : INFINITY; /* a float cast out of range is undefined */
}

#define BLOCK_WORDS 512 /* 4 KiB of keystream: 256 pairs of normals */

void moeh_dp_add_noise_keyed(float *x, size_t n, double std, const uint8_t key[MOEH_DP_KEY_BYTES])
{
    static const uint8_t zero[8 * BLOCK_WORDS];
    uint8_t nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {0};
    uint64_t w[BLOCK_WORDS];
    uint32_t ic = 0; /* 64-byte ChaCha20 blocks consumed */
    const double two_pi = 6.283185307179586476925286766559;
    MOEH_ASSERT((uint64_t)n < (1ull << 35));
    for (size_t i = 0; i < n;) {
        crypto_stream_chacha20_ietf_xor_ic((uint8_t *)w, zero, sizeof w, nonce, ic, key);
        ic += sizeof w / 64;
        for (size_t k = 0; k < BLOCK_WORDS && i < n; k += 2) {
            uint64_t a, b;
            memcpy(&a, (uint8_t *)w + 8 * k, 8); /* little-endian bytes as on every host */
            memcpy(&b, (uint8_t *)w + 8 * (k + 1), 8);
            double u = (double)((a >> 11) + 1) * 0x1p-53; /* (0, 1]: log(u) is finite */
            double v = (double)(b >> 11) * 0x1p-53;       /* [0, 1) */
            double r = sqrt(-2.0 * log(u));
            x[i] = (float)((double)x[i] + std * r * cos(two_pi * v));
            if (++i < n) {
                x[i] = (float)((double)x[i] + std * r * sin(two_pi * v));
                i++;
            }
        }
    }
    sodium_memzero(w, sizeof w);
}

void moeh_dp_add_noise(float *x, size_t n, double std)
{
    uint8_t key[MOEH_DP_KEY_BYTES];
    randombytes_buf(key, sizeof key);
    moeh_dp_add_noise_keyed(x, n, std, key);
    sodium_memzero(key, sizeof key);
}

double moeh_dp_epsilon(const moeh_dp_release_t *r, size_t n, double delta, double *best_order)
{
    double orders[MOEH_RDP_N_ORDERS], rdp[MOEH_RDP_N_ORDERS];
    moeh_rdp_default_orders(orders);
    for (size_t j = 0; j < MOEH_RDP_N_ORDERS; j++) {
        rdp[j] = 0;
        for (size_t k = 0; k < n; k++)
            if (r[k].count) rdp[j] += moeh_rdp_gaussian(1.0, r[k].noise, orders[j], r[k].count);
    }
    return moeh_rdp_epsilon(orders, rdp, MOEH_RDP_N_ORDERS, delta, best_order);
}
