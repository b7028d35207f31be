/* aes_ctr.c - AES-256-CTR added to a vector of words with VAES (see aes_ctr.h).
 *
 * The key schedule is FIPS 197's for a 256-bit key, computed with AESKEYGENASSIST: round key
 * 2i takes SubWord(RotWord(last word of round key 2i-1)) xor rcon_i, round key 2i+1 takes
 * SubWord(last word of round key 2i), each xor-folded into the key two places back. The
 * counter blocks are kept with the counter little-endian in the last lane of each 128-bit half
 * (a plain 32-bit add steps it) and byte-swapped into big-endian order as each block is made.
 * Eight registers (16 blocks, 64 words, or 32 blocks with AVX-512) are in flight so that the AES
 * unit's latency is hidden. */
#include "aes_ctr.h"

#ifdef MOEH_HAVE_VAES_CTR

#include <cpuid.h>
#include <immintrin.h>
#include <sodium.h>
#include <string.h>

#define VAES_FN __attribute__((target("aes,avx2,vaes")))
#define VAES512_FN __attribute__((target("aes,avx2,avx512f,avx512bw,vaes")))

/* cpuid, as gcc's and clang's __builtin_cpu_supports do not all know VAES (clang 14 does not):
 * leaf 1 ECX has AES (25), OSXSAVE (27) and AVX (28); leaf 7 EBX AVX2 (5), AVX512F (16) and
 * AVX512BW (30), ECX VAES (9); XCR0 bits 1 and 2 say the OS saves the SSE and AVX registers,
 * bits 5-7 the AVX-512 ones. */
int moeh_aes_ctr_vaes_cpu(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & 1u << 25) || !(c & 1u << 27) || !(c & 1u << 28)) return 0;
    unsigned xcr0, hi;
    __asm__("xgetbv" : "=a"(xcr0), "=d"(hi) : "c"(0));
    if ((xcr0 & 6u) != 6u) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(b & 1u << 5) || !(c & 1u << 9)) return 0;
    return (b & 1u << 16) && (b & 1u << 30) && (xcr0 & 0xe6u) == 0xe6u ? 2 : 1;
}

/* v ^= v << 32 ^ v << 64 ^ v << 96: each word becomes the xor of itself and the words below */
VAES_FN static inline __m128i fold(__m128i v)
{
    v = _mm_xor_si128(v, _mm_slli_si128(v, 4));
    v = _mm_xor_si128(v, _mm_slli_si128(v, 4));
    return _mm_xor_si128(v, _mm_slli_si128(v, 4));
}

/* round key i from a (two back) and b (the last); then, unless i is the last (14), round key
 * i + 1 from b and the new a. The AESKEYGENASSIST immediate must be a constant: macros. */
#define EXPAND_EVEN(i, rcon)                                                                       \
    do {                                                                                           \
        a = _mm_xor_si128(fold(a), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(b, rcon), 0xff));   \
        memcpy(k->rk[i], &a, 16);                                                                  \
    } while (0)
#define EXPAND_PAIR(i, rcon)                                                                       \
    do {                                                                                           \
        EXPAND_EVEN(i, rcon);                                                                      \
        b = _mm_xor_si128(fold(b), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(a, 0), 0xaa));      \
        memcpy(k->rk[(i) + 1], &b, 16);                                                            \
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
    EXPAND_EVEN(14, 0x40);
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
    const int neg = sign <= 0; /* as secagg.c's add_signed: only sign > 0 adds */
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
    _mm256_zeroall(); /* no round key or keystream left in a register (ymm0-15: all this uses) */
    sodium_memzero(rk, sizeof rk);
}

/* The same with 512-bit registers, four blocks each: 128 words per step, the tail with masks. */
VAES512_FN void moeh_aes256_ctr_add512(uint32_t *out, size_t nw, const moeh_aes256_key_t *k,
                                       const uint8_t iv[12], uint32_t block0, int sign)
{
    const int neg = sign <= 0; /* as secagg.c's add_signed: only sign > 0 adds */
    __m512i rk[15];
    for (int r = 0; r < 15; r++)
        rk[r] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k->rk[r]));
    const __m512i to_be =
        _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 14, 13, 12));
    const __m512i step = _mm512_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
    uint8_t iv16[16] = {0};
    memcpy(iv16, iv, 12);
    __m512i ctr =
        _mm512_add_epi32(/* the IV's counter bytes are 0: add the four counters */
                         _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)iv16)),
                         _mm512_setr_epi32(0, 0, 0, (int)block0, 0, 0, 0, (int)(block0 + 1), 0, 0,
                                           0, (int)(block0 + 2), 0, 0, 0, (int)(block0 + 3)));
    size_t i = 0;
    for (; i + 128 <= nw; i += 128) {
        __m512i x0, x1, x2, x3, x4, x5, x6, x7;
#define CTR_BLOCK(x)                                                                               \
    x = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, to_be), rk[0]);                                  \
    ctr = _mm512_add_epi32(ctr, step)
        CTR_BLOCK(x0);
        CTR_BLOCK(x1);
        CTR_BLOCK(x2);
        CTR_BLOCK(x3);
        CTR_BLOCK(x4);
        CTR_BLOCK(x5);
        CTR_BLOCK(x6);
        CTR_BLOCK(x7);
#undef CTR_BLOCK
        for (int r = 1; r < 14; r++) {
            const __m512i key = rk[r];
            x0 = _mm512_aesenc_epi128(x0, key);
            x1 = _mm512_aesenc_epi128(x1, key);
            x2 = _mm512_aesenc_epi128(x2, key);
            x3 = _mm512_aesenc_epi128(x3, key);
            x4 = _mm512_aesenc_epi128(x4, key);
            x5 = _mm512_aesenc_epi128(x5, key);
            x6 = _mm512_aesenc_epi128(x6, key);
            x7 = _mm512_aesenc_epi128(x7, key);
        }
#define ADD_BLOCK(x, o)                                                                            \
    do {                                                                                           \
        __m512i ks = _mm512_aesenclast_epi128(x, rk[14]);                                          \
        __m512i v = _mm512_loadu_si512((const void *)(out + i + (o)));                             \
        v = neg ? _mm512_sub_epi32(v, ks) : _mm512_add_epi32(v, ks);                               \
        _mm512_storeu_si512((void *)(out + i + (o)), v);                                           \
    } while (0)
        ADD_BLOCK(x0, 0);
        ADD_BLOCK(x1, 16);
        ADD_BLOCK(x2, 32);
        ADD_BLOCK(x3, 48);
        ADD_BLOCK(x4, 64);
        ADD_BLOCK(x5, 80);
        ADD_BLOCK(x6, 96);
        ADD_BLOCK(x7, 112);
#undef ADD_BLOCK
    }
    for (; i < nw; i += 16) { /* the last < 128 words, four blocks at a time */
        __m512i x = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, to_be), rk[0]);
        ctr = _mm512_add_epi32(ctr, step);
        for (int r = 1; r < 14; r++)
            x = _mm512_aesenc_epi128(x, rk[r]);
        x = _mm512_aesenclast_epi128(x, rk[14]);
        const __mmask16 m = nw - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nw - i)) - 1);
        __m512i v = _mm512_maskz_loadu_epi32(m, out + i);
        v = neg ? _mm512_sub_epi32(v, x) : _mm512_add_epi32(v, x);
        _mm512_mask_storeu_epi32(out + i, m, v);
    }
    /* no round key or keystream left in a register: vzeroall clears ymm0-15 (and the upper
     * halves of zmm0-15), the xors zmm16-31, which the compiler uses here */
    __asm__ volatile("vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
                     "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
                     "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
                     "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
                     "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
                     "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
                     "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
                     "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31"
                     :
                     :
                     : "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
                       "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
    _mm256_zeroall();
    sodium_memzero(rk, sizeof rk);
}

#endif
