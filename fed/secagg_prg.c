/* secagg_prg.c - the mask PRG of secure aggregation (moeh_secagg.h, docs/secagg.md "PRG"):
 * AES-256-CTR expanded and added to a vector of words, by OpenSSL's EVP or, where the CPU has
 * VAES, by fed/aes_ctr.c (the "engines"); the rest of the protocol is in secagg.c.
 *
 * Every buffer that holds a secret (key schedules, expanded keystream blocks) is a local wiped
 * with sodium_memzero before the function returns, and the stack the VAES kernels used is
 * cleared. */
#include "secagg_prg.h"

#include "aes_ctr.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define PRG_BLOCK_WORDS 1024 /* 4 KiB of keystream per cipher call */

static const uint8_t k_zero_block[PRG_BLOCK_WORDS * 4];

/* ---- PRG --------------------------------------------------------------------------------- */
/* The mask PRG is AES-256 in counter mode keyed by the seed, IV = round (8 bytes LE) || "mask" ||
 * a 32-bit big-endian block counter from 0 (moeh_secagg.h, protocol 9). It is most of what secure
 * aggregation costs a site (k + 1 expansions of the whole update, bench/secagg.c): AES-256-CTR
 * with AES-NI runs at 8.1 GB/s on the AVX-512 machine of docs/secagg.md against 5.2 for ChaCha20
 * (the PRG until protocol 8; `openssl speed -evp`, 4 KiB blocks), and every OpenSSL
 * configuration, FIPS included, has it. (Without AES instructions OpenSSL falls back to
 * constant-time bit-sliced code, slower than ChaCha20 but not leaky.) Where the CPU has VAES,
 * fed/aes_ctr.c computes the same stream faster and adds it as it goes (the engines below). */
static EVP_CIPHER *g_aes;
static pthread_once_t g_aes_once = PTHREAD_ONCE_INIT;

static void aes_fetch(void)
{
    g_aes = EVP_CIPHER_fetch(NULL, "AES-256-CTR", NULL);
    if (!g_aes) ERR_clear_error();
}

static void prg_iv(uint8_t iv[16], uint64_t round)
{
    for (int i = 0; i < 8; i++) /* little-endian */
        iv[i] = (uint8_t)(round >> (8 * i));
    memcpy(iv + 8, "mask", 4);
    memset(iv + 12, 0, 4); /* the block counter (CTR increments the IV as a big-endian number) */
}

/* An AVX2 clone besides the baseline x86-64 one, picked at load time (gcc ifunc), as for the
 * model's elementwise kernels (model/layers.h): the baseline has 4-wide SSE2 only. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PRG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PRG_CLONES
#endif

PRG_CLONES static void add_signed(uint32_t *o, const uint32_t *buf, size_t nw, int8_t sign)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t *b = (uint32_t *)buf;
    for (size_t i = 0; i < nw; i++)
        b[i] = __builtin_bswap32(b[i]);
#endif
    /* 8 words at a time in a vector of the compiler's (one AVX2 add, or two SSE2 adds):
     * -O2 does not vectorise a loop of unknown length itself, and this one is a third of the
     * PRG's time when scalar */
    typedef uint32_t u32x8 __attribute__((vector_size(32)));
    size_t i = 0;
    for (; i + 8 <= nw; i += 8) {
        u32x8 x, y;
        memcpy(&x, o + i, sizeof x);
        memcpy(&y, buf + i, sizeof y);
        x = sign > 0 ? x + y : x - y;
        memcpy(o + i, &x, sizeof x);
    }
    for (; i < nw; i++)
        o[i] = sign > 0 ? o[i] + buf[i] : o[i] - buf[i];
}

#define PRG_STREAMS 32

/* The engines, fastest first; g_engine_cpu is the fastest this CPU runs (with MOEH_NO_VAES and
 * MOEH_NO_AVX512 heard), decided once; g_engine_set (moeh_secagg_prg_set_engine) overrides it. */
enum { ENGINE_OPENSSL, ENGINE_VAES, ENGINE_VAES512 };
static const char *const k_engine_name[] = {"openssl", "vaes", "vaes512"};
static int g_engine_cpu;
static _Atomic int g_engine_set = -1; /* (atomic: read while a test may set it) */
static pthread_once_t g_engine_once = PTHREAD_ONCE_INIT;

static void engine_probe(void)
{
#ifdef MOEH_HAVE_VAES_CTR
    const char *no_vaes = getenv("MOEH_NO_VAES"), *no_avx512 = getenv("MOEH_NO_AVX512");
#define ENV_ON(v) ((v) && *(v) && strcmp((v), "0"))
    int cpu = moeh_aes_ctr_vaes_cpu();
    if (ENV_ON(no_vaes)) cpu = 0;
    if (cpu == 2 && ENV_ON(no_avx512)) cpu = 1;
#undef ENV_ON
    g_engine_cpu = cpu == 2 ? ENGINE_VAES512 : cpu == 1 ? ENGINE_VAES : ENGINE_OPENSSL;
#endif
}

static int prg_engine(void)
{
    pthread_once(&g_engine_once, engine_probe);
    return g_engine_set >= 0 ? g_engine_set : g_engine_cpu;
}

const char *moeh_secagg_prg_engine(void)
{
    return k_engine_name[prg_engine()];
}

int moeh_secagg_prg_set_engine(const char *name)
{
    pthread_once(&g_engine_once, engine_probe);
    if (!name) {
        g_engine_set = -1;
        return 0;
    }
    int e = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, k_engine_name[i])) e = i;
#ifdef MOEH_HAVE_VAES_CTR
    int cpu = moeh_aes_ctr_vaes_cpu(); /* what the CPU runs, whatever the environment says */
    if (e < 0 || (e == ENGINE_VAES && cpu < 1) || (e == ENGINE_VAES512 && cpu < 2)) return -ENOTSUP;
#else
    if (e != ENGINE_OPENSSL) return -ENOTSUP;
#endif
    g_engine_set = e;
    return 0;
}

#ifdef MOEH_HAVE_VAES_CTR
/* prg_add_many with the VAES code (wide: on AVX-512 registers): the same blocking (PRG_STREAMS key
 * schedules, each 4 KiB block of out in L1 while they are added to it), the stream added as it is
 * made. Cannot fail. */
static void prg_add_many_vaes(uint32_t *out, size_t len,
                              const uint8_t (*seeds)[MOEH_SECAGG_KEY_BYTES], const int8_t *sign,
                              size_t m, uint64_t round, int wide)
{
    moeh_aes256_key_t ks[PRG_STREAMS];
    uint8_t iv[16];
    prg_iv(iv, round);
    for (size_t s0 = 0; s0 < m; s0 += PRG_STREAMS) {
        size_t ms = m - s0 < PRG_STREAMS ? m - s0 : PRG_STREAMS;
        for (size_t s = 0; s < ms; s++)
            moeh_aes256_expand(&ks[s], seeds[s0 + s]);
        for (size_t off = 0; off < len; off += PRG_BLOCK_WORDS) {
            size_t nw = len - off < PRG_BLOCK_WORDS ? len - off : PRG_BLOCK_WORDS;
            for (size_t s = 0; s < ms; s++)
                (wide ? moeh_aes256_ctr_add512 : moeh_aes256_ctr_add)(
                    out + off, nw, &ks[s], iv, (uint32_t)(off / 4), sign[s0 + s]);
        }
    }
    sodium_memzero(ks, sizeof ks);
    /* The kernels wipe their round-key arrays and registers, but the compiler may spill a round
     * key elsewhere in their frames, and a lazily bound call (sodium_memzero's first) saves the
     * vector registers below them: clear the stack the kernels used (review of 2026-12-07 found
     * seed bytes there without this). */
    sodium_stackzero(16384);
}
#endif

/* out (len words) += sum_s sign[s] PRG(seeds[s]); the result is that of m moeh_secagg_prg_add()
 * calls. Up to PRG_STREAMS streams at once, each a cipher context that runs on from block to
 * block; each 4 KiB block of out stays in L1 while the streams are added to it, so out crosses
 * the memory bus once per PRG_STREAMS streams, not once per stream. 0, or -ENOMEM / -ENOSYS (no
 * AES-256-CTR) before anything is added; once keyed, a counter-mode cipher cannot fail. */
int moeh_secagg_prg_add_many(uint32_t *out, size_t len,
                             const uint8_t (*seeds)[MOEH_SECAGG_KEY_BYTES], const int8_t *sign,
                             size_t m, uint64_t round)
{
    MOEH_ASSERT(len / 4 < UINT32_MAX); /* the 32-bit block counter must not wrap */
#ifdef MOEH_HAVE_VAES_CTR
    int engine = prg_engine();
    if (engine != ENGINE_OPENSSL) {
        prg_add_many_vaes(out, len, seeds, sign, m, round, engine == ENGINE_VAES512);
        return 0;
    }
#endif
    pthread_once(&g_aes_once, aes_fetch);
    if (!g_aes) return -ENOSYS;
    uint32_t buf[PRG_BLOCK_WORDS];
    uint8_t iv[16];
    EVP_CIPHER_CTX *ctx[PRG_STREAMS] = {0};
    const size_t nctx = m < PRG_STREAMS ? m : PRG_STREAMS;
    int rc = 0;
    prg_iv(iv, round);
    for (size_t s = 0; s < nctx && rc == 0; s++)
        if (!(ctx[s] = EVP_CIPHER_CTX_new()) ||
            EVP_EncryptInit_ex2(ctx[s], g_aes, seeds[s], iv, NULL) != 1)
            rc = -ENOMEM;
    for (size_t s0 = 0; s0 < m && rc == 0; s0 += PRG_STREAMS) {
        size_t ms = m - s0 < PRG_STREAMS ? m - s0 : PRG_STREAMS;
        for (size_t s = 0; s < ms && s0 > 0; s++) { /* the first group was keyed above */
            /* no cipher: the context keeps its implementation's state, only key and IV change */
            int ok = EVP_EncryptInit_ex2(ctx[s], NULL, seeds[s0 + s], iv, NULL);
            MOEH_ASSERT(ok == 1);
        }
        for (size_t off = 0; off < len; off += PRG_BLOCK_WORDS) {
            size_t nw = len - off < PRG_BLOCK_WORDS ? len - off : PRG_BLOCK_WORDS;
            for (size_t s = 0; s < ms; s++) {
                int got = 0;
                int ok = EVP_EncryptUpdate(ctx[s], (unsigned char *)buf, &got, k_zero_block,
                                           (int)(nw * 4));
                MOEH_ASSERT(ok == 1 && got == (int)(nw * 4));
                add_signed(out + off, buf, nw, sign[s0 + s]);
            }
        }
    }
    for (size_t s = 0; s < nctx; s++)
        EVP_CIPHER_CTX_free(ctx[s]); /* (frees and wipes the key state) */
    sodium_memzero(buf, sizeof buf);
    if (rc) ERR_clear_error();
    return rc;
}

int moeh_secagg_prg_add(uint32_t *out, size_t len, const uint8_t seed[MOEH_SECAGG_KEY_BYTES],
                        uint64_t round, int sign)
{
    const int8_t sg = sign > 0 ? 1 : -1;
    return moeh_secagg_prg_add_many(out, len, (const uint8_t(*)[MOEH_SECAGG_KEY_BYTES])seed, &sg, 1,
                                    round);
}
