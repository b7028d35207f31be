/* aes_ctr.c - AES-256-CTR added to a vector of words with VAES (see aes_ctr.h).
 *
 * The key schedule is FIPS 197's for a 256-bit key, computed with AESKEYGENASSIST: round key
 * 2i takes SubWord(RotWord(last word of round key 2i-1)) xor rcon_i, round key 2i+1 takes
 * SubWord(last word of round key 2i), each xor-folded into the key two places back. The
 * counter blocks are kept with the counter little-endian in the last lane of each 128-bit half
 * (a plain 32-bit add steps it) and byte-swapped into big-endian order as each block is made.
 * Eight registers (16 blocks, 64 words) are in flight so that the AES unit's latency is hidden. */
#include "aes_ctr.h"

#ifdef MOEH_HAVE_VAES_CTR

#include <immintrin.h>
#include <sodium.h>
#include <string.h>

#define VAES_FN __attribute__((target("aes,avx2,vaes")))

int moeh_aes_ctr_vaes_cpu(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("vaes");
}

/* v ^= v << 32 ^ v << 64 ^ v << 96: each word becomes the xor of itself and the words below */
VAES_FN static inline __m128i fold(__m128i v)
{
    v = _mm_xor_si128(v, _mm_slli_si128(v, 4));
    v = _mm_xor_si128(v, _mm_slli_si128(v, 4));
    return _mm_xor_si128(v, _mm_slli_si128(v, 4));
}

/* round keys i (from a, two back, and b, the last) and i + 1 (from b and the new a); the
 * AESKEYGENASSIST immediate must be a constant, hence a macro */
#define EXPAND_PAIR(i, rcon)                                                                       \
    do {                                                                                           \
        a = _mm_xor_si128(fold(a), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(b, rcon), 0xff));   \
        memcpy(k->rk[i], &a, 16);                                                                  \
        if ((i) < 14) {                                                                            \
            b = _mm_xor_si128(fold(b), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(a, 0), 0xaa));  \
            memcpy(k->rk[(i) + 1], &b, 16);                                                        \
        }                                                                                          \
    } while (0)

VAES_FN void moeh_aes256_expand(moeh_aes256_key_t *k, const uint8_t key[32])
{
    __m128i a = _mm_loadu_si128((const __m128i *)key);
    __m128i b = _mm_loadu_si128((const __m128i *)(key + 16));
    memcpy(k->rk[0], &a, 16);
    memcpy(k->rk[1], &b, 16);
    EXPAND_PAIR(2, 0x01);
    EXPAND_PAIR(4, 0x02);
    EXPAND_PAIR(6, 0x04);
    EXPAND_PAIR(8, 0x08);
    EXPAND_PAIR(10, 0x10);
    EXPAND_PAIR(12, 0x20);
    EXPAND_PAIR(14, 0x40);
    a = b = _mm_setzero_si128();
}

/* out[0..7] +=/-= x's words, or only the first m < 8 */
VAES_FN static inline void add_words(uint32_t *out, __m256i x, int neg, size_t m)
{
    if (m >= 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)out);
        v = neg ? _mm256_sub_epi32(v, x) : _mm256_add_epi32(v, x);
        _mm256_storeu_si256((__m256i *)out, v);
        return;
    }
    uint32_t t[8];
    _mm256_storeu_si256((__m256i *)t, x);
    for (size_t w = 0; w < m; w++)
        out[w] = neg ? out[w] - t[w] : out[w] + t[w];
    sodium_memzero(t, sizeof t);
}

VAES_FN void moeh_aes256_ctr_add(uint32_t *out, size_t nw, const moeh_aes256_key_t *k,
                                 const uint8_t iv[12], uint32_t block0, int sign)
{
    const int neg = sign < 0;
    __m256i rk[15];
    for (int r = 0; r < 15; r++)
        rk[r] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k->rk[r]));
    /* bytes 0-11 stay, bytes 12-15 (the counter) are reversed, in both halves */
    const __m256i to_be = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 14, 13, 12, 0,
                                           1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 14, 13, 12);
    const __m256i step = _mm256_setr_epi32(0, 0, 0, 2, 0, 0, 0, 2);
    uint8_t iv16[16] = {0};
    memcpy(iv16, iv, 12);
    __m256i ctr = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iv16));
    ctr = _mm256_insert_epi32(ctr, (int)block0, 3);
    ctr = _mm256_insert_epi32(ctr, (int)(block0 + 1), 7);
    size_t i = 0;
    for (; i + 64 <= nw; i += 64) {
        /* eight named registers, not an array: gcc -O2 keeps an array in memory */
        __m256i x0, x1, x2, x3, x4, x5, x6, x7;
#define CTR_BLOCK(x)                                                                               \
    x = _mm256_xor_si256(_mm256_shuffle_epi8(ctr, to_be), rk[0]);                                  \
    ctr = _mm256_add_epi32(ctr, step)
        CTR_BLOCK(x0);
        CTR_BLOCK(x1);
        CTR_BLOCK(x2);
        CTR_BLOCK(x3);
        CTR_BLOCK(x4);
        CTR_BLOCK(x5);
        CTR_BLOCK(x6);
        CTR_BLOCK(x7);
        for (int r = 1; r < 14; r++) {
            const __m256i key = rk[r];
            x0 = _mm256_aesenc_epi128(x0, key);
            x1 = _mm256_aesenc_epi128(x1, key);
            x2 = _mm256_aesenc_epi128(x2, key);
            x3 = _mm256_aesenc_epi128(x3, key);
            x4 = _mm256_aesenc_epi128(x4, key);
            x5 = _mm256_aesenc_epi128(x5, key);
            x6 = _mm256_aesenc_epi128(x6, key);
            x7 = _mm256_aesenc_epi128(x7, key);
        }
        add_words(out + i, _mm256_aesenclast_epi128(x0, rk[14]), neg, 8);
        add_words(out + i + 8, _mm256_aesenclast_epi128(x1, rk[14]), neg, 8);
        add_words(out + i + 16, _mm256_aesenclast_epi128(x2, rk[14]), neg, 8);
        add_words(out + i + 24, _mm256_aesenclast_epi128(x3, rk[14]), neg, 8);
        add_words(out + i + 32, _mm256_aesenclast_epi128(x4, rk[14]), neg, 8);
        add_words(out + i + 40, _mm256_aesenclast_epi128(x5, rk[14]), neg, 8);
        add_words(out + i + 48, _mm256_aesenclast_epi128(x6, rk[14]), neg, 8);
        add_words(out + i + 56, _mm256_aesenclast_epi128(x7, rk[14]), neg, 8);
#undef CTR_BLOCK
    }
    for (; i < nw; i += 8) { /* the last < 64 words, two blocks at a time */
        __m256i x = _mm256_xor_si256(_mm256_shuffle_epi8(ctr, to_be), rk[0]);
        ctr = _mm256_add_epi32(ctr, step);
        for (int r = 1; r < 14; r++)
            x = _mm256_aesenc_epi128(x, rk[r]);
        add_words(out + i, _mm256_aesenclast_epi128(x, rk[14]), neg, nw - i);
    }
    sodium_memzero(rk, sizeof rk);
}

#endif
