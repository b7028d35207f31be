/* test_secagg.c - secure aggregation (fed/secagg.c, docs/secagg.md).
 *
 * Known answers: the PRG's first words (and across the 4 KiB block boundary) and a pairwise seed
 * equal the values tests/secagg_kat.py computes independently with Python's `cryptography` and
 * hashlib (share encryption and share keys: test_secagg_keys.c). Clients refuse a share from the
 * wrong sender, at the wrong addressee, and twice. Shamir over
 * GF(2^61 - 1): every t-subset of n shares reconstructs, t - 1 shares are refused (-EPERM) and,
 * forced through as if t - 1 were the threshold, do not give the secret. Whole rounds with n = 5
 * and 10 clients (L = 10,000 random words) and SecAgg+ with n = 20, k = 6: the unmasked sum equals
 * the plain sum mod 2^32 exactly with 0, 1 and 2 clients dropping after sharing keys; fewer than t
 * survivors, or fewer than t shares of one client, are refused by clients and server and leave the
 * sum untouched (SecAgg+ n = 12, k = 4 under 24 random dropout sets: exact iff every group keeps
 * t holders, as predicted from the graph, else refused); requests naming a client both as survivor
 * and dropped, reveals of the wrong secret and a second, different request are refused. A single
 * masked vector is uniform: chi-square of the top byte over 256 bins, 65,536 words, below 330.5
 * (the 0.999 quantile of chi-square with 255 degrees of freedom, i.e. alpha = 0.001) for all-zero,
 * constant and random inputs, and uncorrelated with the input (|r| < 4 / sqrt(L)). Deterministic:
 * masks come from seeded clients where statistics are tested, so the statistics are fixed numbers;
 * elsewhere only exact identities are checked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_secagg.h"
#include "test_util.h"

#include "aes_ctr.h" /* fed/'s private kernels: test_aes_ctr_high_counters */

#include <openssl/evp.h>

#include <math.h>
#include <sodium.h>
#ifdef __x86_64__
#include <cpuid.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0; /* fed/ alone: no proto/ helper */
}

/* ---- known answers ------------------------------------------------------------------------ */
static void test_prg_kat(void **state)
{
    (void)state;
    uint8_t seed[32];
    for (int i = 0; i < 32; i++)
        seed[i] = (uint8_t)i;
    uint32_t *w = calloc(1030, sizeof *w);
    assert_non_null(w);
    assert_int_equal(moeh_secagg_prg_add(w, 1030, seed, 7, +1), 0);
    static const uint32_t first[4] = {0x50584e27, 0xd81ad2fb, 0x3e4cb493, 0x8f607e04};
    static const uint32_t at1024[3] = {0xd0e3c62a, 0xfb923b1a, 0x8c83e1a7};
    for (int i = 0; i < 4; i++)
        assert_int_equal(w[i], first[i]);
    for (int i = 0; i < 3; i++)
        assert_int_equal(w[1024 + i], at1024[i]);
    /* a shorter, odd length is a prefix of the same stream; subtracting restores zero */
    uint32_t *v = calloc(1027, sizeof *v);
    assert_non_null(v);
    assert_int_equal(moeh_secagg_prg_add(v, 1027, seed, 7, +1), 0);
    assert_memory_equal(v, w, 1027 * sizeof *v);
    assert_int_equal(moeh_secagg_prg_add(w, 1030, seed, 7, -1), 0);
    for (int i = 0; i < 1030; i++)
        assert_int_equal(w[i], 0);
    /* another round is another stream */
    assert_int_equal(moeh_secagg_prg_add(w, 4, seed, 8, +1), 0);
    assert_int_not_equal(w[0], first[0]);
    free(v);
    free(w);
}

/* The PRG expands in 4 KiB blocks, up to 32 streams at a time: it adds the very words of one
 * AES-256-CTR call over the whole length (OpenSSL's EVP, here): lengths around the 4-word AES
 * block, the 64- and 128-word steps of the VAES loops and the 1024-word block of the add loop,
 * both signs, on a vector that is not zero, rounds that differ in every byte of the IV's first 8;
 * nothing past len is touched. Run once per engine (test_prg_blocks_are_one_stream). */
static void prg_one_stream(void)
{
    static const size_t lens[] = {0,  1,   3,    4,    5,    7,    8,    9,    63,    64,
                                  65, 127, 1023, 1024, 1025, 1089, 2048, 5000, 100003};
    const size_t max = 100003;
    uint32_t *a = malloc(max * sizeof *a), *b = malloc(max * sizeof *b), *ks = malloc(max * 4);
    assert_true(a && b && ks);
    uint8_t seed[32], iv[16], zero[64] = {0};
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    assert_non_null(ctx);
    for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
        randombytes_buf(seed, sizeof seed);
        randombytes_buf(a, max * sizeof *a);
        memcpy(b, a, max * sizeof *a);
        uint64_t round = 0x0102030405060708ull * (t + 1);
        int sign = t % 2 ? -1 : +1;
        assert_int_equal(moeh_secagg_prg_add(a, lens[t], seed, round, sign), 0);
        for (int i = 0; i < 8; i++) /* round (LE), "mask", counter 0 (BE) */
            iv[i] = (uint8_t)(round >> (8 * i));
        memcpy(iv + 8, "mask\0\0\0\0", 8);
        assert_int_equal(EVP_EncryptInit_ex2(ctx, EVP_aes_256_ctr(), seed, iv, NULL), 1);
        for (size_t off = 0; off < 4 * lens[t]; off += sizeof zero) {
            int n = (int)(4 * lens[t] - off < sizeof zero ? 4 * lens[t] - off : sizeof zero), got;
            assert_int_equal(EVP_EncryptUpdate(ctx, (uint8_t *)ks + off, &got, zero, n), 1);
            assert_int_equal(got, n);
        }
        for (size_t i = 0; i < lens[t]; i++) {
            uint32_t w = (uint32_t)((uint8_t *)ks)[4 * i] |
                         (uint32_t)((uint8_t *)ks)[4 * i + 1] << 8 |
                         (uint32_t)((uint8_t *)ks)[4 * i + 2] << 16 |
                         (uint32_t)((uint8_t *)ks)[4 * i + 3] << 24;
            b[i] = sign > 0 ? b[i] + w : b[i] - w;
        }
        assert_memory_equal(a, b, max * sizeof *a); /* (and nothing past len moved) */
    }
    EVP_CIPHER_CTX_free(ctx);
    free(a);
    free(b);
    free(ks);
}

static const char *const k_engines[] = {"vaes512", "vaes", "openssl"};

static void test_prg_blocks_are_one_stream(void **state)
{
    (void)state;
    for (int e = 0; e < 3; e++) {
        if (moeh_secagg_prg_set_engine(k_engines[e]) != 0) {
            printf("mask PRG engine %s: not on this CPU\n", k_engines[e]);
            continue;
        }
        assert_string_equal(moeh_secagg_prg_engine(), k_engines[e]);
        prg_one_stream();
    }
    assert_int_equal(moeh_secagg_prg_set_engine("openssl"), 0); /* every machine has it */
    assert_int_equal(moeh_secagg_prg_set_engine("chacha"), -ENOTSUP);
    assert_string_equal(moeh_secagg_prg_engine(), "openssl"); /* a refused name changes nothing */
    assert_int_equal(moeh_secagg_prg_set_engine(NULL), 0);
}

/* The VAES engines this process's CPU runs: *vaes for AES + AVX + AVX2 + VAES with the AVX
 * registers saved by the OS, *wide for AVX-512 F + BW as well with their registers saved. Read
 * from CPUID here, apart from fed/aes_ctr.c's own check, and not from /proc/cpuinfo: under
 * valgrind the process sees valgrind's virtual CPU (no VAES), not the host's. */
static void cpu_engines(int *vaes, int *wide)
{
    *vaes = *wide = 0;
#ifdef __x86_64__
    unsigned l1[4], l7[4];
    if (!__get_cpuid(1, &l1[0], &l1[1], &l1[2], &l1[3]) ||
        !__get_cpuid_count(7, 0, &l7[0], &l7[1], &l7[2], &l7[3]))
        return;
    const unsigned aes = 1u << 25, osxsave = 1u << 27, avx = 1u << 28;
    if ((l1[2] & (aes | osxsave | avx)) != (aes | osxsave | avx)) return;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const unsigned ymm_state = 0x6, zmm_state = 0xe0;
    const unsigned avx2 = 1u << 5, avx512f = 1u << 16, avx512bw = 1u << 30, vaes_bit = 1u << 9;
    *vaes = (lo & ymm_state) == ymm_state && (l7[1] & avx2) && (l7[2] & vaes_bit);
    *wide = *vaes && (lo & zmm_state) == zmm_state && (l7[1] & avx512f) && (l7[1] & avx512bw);
#endif
}

/* 1 if the variable is set to something other than "" or "0" (the library's reading) */
static int env_on(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0");
}

/* The default engine is the fastest the CPU has (so the fast path is not silently off), unless
 * the environment says otherwise; every engine this CPU runs adds the same words as OpenSSL's,
 * 70 streams one after the other into one vector whose length ends mid-block (the multi-stream
 * path: test_round_40_mixed_engines). */
static void test_prg_engines_agree(void **state)
{
    (void)state;
    const char *engine = moeh_secagg_prg_engine();
    printf("mask PRG engine on this machine: %s\n", engine);
    /* what the CPU runs (moeh_secagg_prg_set_engine), and what the environment leaves (default) */
    int cpu_vaes, cpu_wide;
    cpu_engines(&cpu_vaes, &cpu_wide);
    int vaes = cpu_vaes && !env_on("MOEH_NO_VAES");
    int wide = cpu_wide && vaes && !env_on("MOEH_NO_AVX512");
    assert_string_equal(engine, wide ? "vaes512" : vaes ? "vaes" : "openssl");
    enum { LEN = 70001, M = 70 };
    uint32_t *init = malloc(LEN * sizeof *init), *ref = malloc(LEN * sizeof *ref),
             *x = malloc(LEN * sizeof *x);
    assert_true(init && ref && x);
    randombytes_buf(init, LEN * sizeof *init);
    uint8_t seed[M][32];
    randombytes_buf(seed, sizeof seed);
    int ran = 0;
    for (int e = 2; e >= 0; e--) { /* openssl first: the reference */
        if (moeh_secagg_prg_set_engine(k_engines[e]) != 0) continue;
        uint32_t *v = e == 2 ? ref : x;
        memcpy(v, init, LEN * sizeof *v);
        for (int s = 0; s < M; s++)
            assert_int_equal(moeh_secagg_prg_add(v, LEN, seed[s], 99, s % 3 ? +1 : -1), 0);
        if (e != 2) assert_memory_equal(x, ref, LEN * sizeof *x);
        ran++;
    }
    assert_int_equal(ran, 1 + cpu_vaes + cpu_wide);
    assert_int_equal(moeh_secagg_prg_set_engine(NULL), 0);
    assert_string_equal(moeh_secagg_prg_engine(), engine);
    free(init);
    free(ref);
    free(x);
}

/* No copy of a mask seed is left on the stack once the PRG returns, whichever engine: the VAES
 * kernels' frames may hold spilled round keys (round key 0 is the seed's first half, 1 its
 * second) and a lazily bound call saves the vector registers below them, so prg_add_many_vaes
 * clears the stack they used. The check is one-way: a copy found is a leak, none found under
 * another compiler's layout proves little. Without the clearing it finds 2 copies (gcc 12 -O2,
 * engine "vaes"). Skipped under valgrind, which would report the reads of stale stack as
 * uninitialised (they are, by design). */
static uint8_t g_seed[32];

__attribute__((noinline)) static void prg_call(uint32_t *v, size_t n)
{
    assert_int_equal(moeh_secagg_prg_add(v, n, g_seed, 7, +1), 0);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((noinline)) static int stack_copies_of_seed(void)
{
    volatile uint8_t probe[32768]; /* uninitialised: whatever the calls before left here */
    int found = 0;
    for (size_t i = 0; i + 16 <= sizeof probe; i++) {
        int lo = 1, hi = 1;
        for (int j = 0; j < 16 && (lo || hi); j++) {
            lo = lo && probe[i + j] == g_seed[j];
            hi = hi && probe[i + j] == g_seed[16 + j];
        }
        found += lo + hi;
    }
    return found;
}
#pragma GCC diagnostic pop

static void test_prg_leaves_no_seed_on_stack(void **state)
{
    (void)state;
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload")) {
        printf("under valgrind: stack scan skipped\n");
        return;
    }
    static uint32_t v[4096];
    for (int e = 0; e < 3; e++) {
        if (moeh_secagg_prg_set_engine(k_engines[e]) != 0) continue;
        randombytes_buf(g_seed, sizeof g_seed);
        prg_call(v, 4096);
        int found = stack_copies_of_seed();
        if (found)
            fail_msg("engine %s left %d copies of seed halves on the stack", k_engines[e], found);
    }
    assert_int_equal(moeh_secagg_prg_set_engine(NULL), 0);
}

/* The VAES kernels from a block counter far from 0 (the whole-vector tests reach block 25,000:
 * counter bytes 12-13 stay 0 there): 65535, 65536, 2^24 - 1, 2^24, 2^31 and up to 2^32 - 1,
 * tails of every class, both signs, against OpenSSL's CTR from the same IV. A wrong byte order
 * in the counter's upper bytes fails here only. */
static void test_aes_ctr_high_counters(void **state)
{
    (void)state;
#ifdef MOEH_HAVE_VAES_CTR
    int cpu = moeh_aes_ctr_vaes_cpu();
    if (!cpu) {
        printf("no VAES on this CPU: nothing to check\n");
        return;
    }
    static const uint32_t block0s[] = {65535, 65536, 0xffffff, 0x1000000, 0x80000000u, 0xffffff00u};
    static const size_t nws[] = {1, 7, 8, 9, 64, 127, 128, 129, 300, 1024};
    uint8_t key[32], iv[16], zero[4096] = {0};
    uint32_t a[1024], b[1024], ks[1024];
    moeh_aes256_key_t k;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    assert_non_null(ctx);
    for (size_t t = 0; t < sizeof block0s / sizeof *block0s; t++)
        for (size_t u = 0; u < sizeof nws / sizeof *nws; u++)
            for (int wide = 0; wide <= (cpu == 2); wide++) {
                uint32_t b0 = block0s[t];
                size_t nw = nws[u];
                if ((uint64_t)b0 + (nw + 3) / 4 > (UINT64_C(1) << 32)) continue;
                int sign = (t + u) % 2 ? -1 : +1;
                randombytes_buf(key, sizeof key);
                randombytes_buf(iv, 12);
                for (int i = 0; i < 4; i++)
                    iv[12 + i] = (uint8_t)(b0 >> (24 - 8 * i)); /* big-endian counter */
                randombytes_buf(a, sizeof a);
                memcpy(b, a, sizeof a);
                moeh_aes256_expand(&k, key);
                (wide ? moeh_aes256_ctr_add512 : moeh_aes256_ctr_add)(a, nw, &k, iv, b0, sign);
                int got = 0;
                assert_int_equal(EVP_EncryptInit_ex2(ctx, EVP_aes_256_ctr(), key, iv, NULL), 1);
                assert_int_equal(EVP_EncryptUpdate(ctx, (uint8_t *)ks, &got, zero, (int)(4 * nw)),
                                 1);
                for (size_t i = 0; i < nw; i++) { /* (little-endian machine: VAES is x86) */
                    b[i] = sign > 0 ? b[i] + ks[i] : b[i] - ks[i];
                }
                if (memcmp(a, b, sizeof a))
                    fail_msg("%s kernel differs from OpenSSL at block %u, %zu words",
                             wide ? "512-bit" : "256-bit", b0, nw);
            }
    EVP_CIPHER_CTX_free(ctx);
    sodium_memzero(&k, sizeof k);
#else
    printf("no VAES code in this build\n");
#endif
}

static void test_pair_seed_kat(void **state)
{
    (void)state;
    uint8_t ska[32], skb[32], pka[32], pkb[32], s1[32], s2[32], want[32], zero[32] = {0};
    memset(ska, 0x11, 32);
    memset(skb, 0x22, 32);
    assert_int_equal(crypto_scalarmult_base(pka, ska), 0);
    assert_int_equal(crypto_scalarmult_base(pkb, skb), 0);
    assert_int_equal(
        moeh_test_hex(want, "84a26309c4dad9e543adb1834d75abccf85845c543272b943e610c3fe7efda40", 32),
        0);
    assert_int_equal(moeh_secagg_pair_seed(s1, ska, pka, pkb, 3, 1, 42), 0);
    assert_int_equal(moeh_secagg_pair_seed(s2, skb, pkb, pka, 1, 3, 42), 0);
    assert_memory_equal(s1, want, 32);
    assert_memory_equal(s2, want, 32);
    assert_int_equal(moeh_secagg_pair_seed(s2, ska, pka, pkb, 3, 1, 43), 0);
    assert_memory_not_equal(s2, want, 32);
    assert_int_equal(moeh_secagg_pair_seed(s2, ska, pka, pkb, 3, 2, 42), 0);
    assert_memory_not_equal(s2, want, 32);
    /* a low-order peer key gives the all-zero secret: refused */
    assert_int_equal(moeh_secagg_pair_seed(s2, ska, pka, zero, 3, 1, 42), -EINVAL);
}

/* ---- Shamir -------------------------------------------------------------------------------- */
static void test_shamir(void **state)
{
    (void)state;
    enum { N = 7, T = 4 };
    uint8_t secret[32], back[32];
    uint32_t xs[N];
    moeh_secagg_share_t sh[N], pick[N];
    for (int i = 0; i < N; i++)
        xs[i] = (uint32_t)(3 * i + 1);
    for (int trial = 0; trial < 3; trial++) {
        if (trial == 0)
            memset(secret, 0xff, 32); /* every element at its maximum */
        else
            randombytes_buf(secret, 32);
        assert_int_equal(moeh_secagg_shamir_split(sh, xs, N, T, secret), 0);
        int subsets = 0;
        for (unsigned m = 0; m < (1u << N); m++) {
            if (__builtin_popcount(m) != T) continue;
            int k = 0;
            for (int i = N - 1; i >= 0; i--) /* any order */
                if (m & (1u << i)) pick[k++] = sh[i];
            assert_int_equal(moeh_secagg_shamir_combine(back, pick, T, T), 0);
            assert_memory_equal(back, secret, 32);
            subsets++;
        }
        assert_int_equal(subsets, 35);
        /* all n: the first t are used */
        assert_int_equal(moeh_secagg_shamir_combine(back, sh, N, T), 0);
        assert_memory_equal(back, secret, 32);
        /* t - 1: refused, nothing written */
        memset(back, 0xaa, 32);
        assert_int_equal(moeh_secagg_shamir_combine(back, sh + 2, T - 1, T), -EPERM);
        for (int i = 0; i < 32; i++)
            assert_int_equal(back[i], 0);
        /* t - 1 forced through as a threshold: garbage, not the secret */
        int rc = moeh_secagg_shamir_combine(back, sh + 2, T - 1, T - 1);
        assert_true(rc == -EBADMSG || (rc == 0 && memcmp(back, secret, 32) != 0));
        /* a corrupted share: not the secret */
        pick[0] = sh[0], pick[1] = sh[1], pick[2] = sh[2], pick[3] = sh[3];
        pick[2].y[1] ^= 1;
        rc = moeh_secagg_shamir_combine(back, pick, T, T);
        assert_true(rc == -EBADMSG || (rc == 0 && memcmp(back, secret, 32) != 0));
    }
    /* a repeated point, point 0, t > n */
    pick[0] = sh[0], pick[1] = sh[0], pick[2] = sh[1], pick[3] = sh[2];
    assert_int_equal(moeh_secagg_shamir_combine(back, pick, T, T), -EINVAL);
    xs[1] = xs[0];
    assert_int_equal(moeh_secagg_shamir_split(sh, xs, N, T, secret), -EINVAL);
    xs[1] = 0;
    assert_int_equal(moeh_secagg_shamir_split(sh, xs, N, T, secret), -EINVAL);
    xs[1] = 4;
    assert_int_equal(moeh_secagg_shamir_split(sh, xs, 3, T, secret), -EINVAL);
}

/* ---- whole rounds --------------------------------------------------------------------------- */
typedef struct {
    moeh_secagg_cfg_t cfg;
    moeh_secagg_client_t *c[MOEH_SECAGG_MAX_CLIENTS];
    moeh_secagg_pubkeys_t *keys;
    uint32_t **x, *sum, *want;
    uint32_t surv[MOEH_SECAGG_MAX_CLIENTS], drop[MOEH_SECAGG_MAX_CLIENTS];
    size_t ns, nd;
    moeh_secagg_reveal_t *rev;
    size_t nrev;
} round_t;

/* Phases 0-2 for cfg; the clients in drop_mask (bit i) share keys but send no input. */
static void round_run(round_t *r, const moeh_secagg_cfg_t *cfg, uint64_t drop_mask, uint64_t seed)
{
    moeh_err_t err = {{0}};
    const uint32_t n = cfg->n;
    const size_t L = cfg->len;
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    r->keys = calloc(n, sizeof *r->keys);
    r->x = calloc(n, sizeof *r->x);
    r->sum = calloc(L, sizeof *r->sum);
    r->want = calloc(L, sizeof *r->want);
    r->rev = calloc((size_t)n * n, sizeof *r->rev);
    uint8_t *present = malloc(n), *sent = malloc(n), *u2 = malloc(n);
    uint8_t *cts = malloc((size_t)n * n * MOEH_SECAGG_SHARE_CT_BYTES);
    uint8_t *sent_all = malloc((size_t)n * n);
    assert_true(r->keys && r->x && r->sum && r->want && r->rev && present && sent && u2 && cts &&
                sent_all);
    moeh_rng_t rng;
    moeh_rng_seed(&rng, seed);
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(moeh_secagg_client_create(cfg, i, &r->c[i], &err), 0);
        moeh_secagg_client_pubkeys(r->c[i], &r->keys[i]);
        present[i] = 1;
        r->x[i] = malloc(L * sizeof *r->x[i]);
        assert_non_null(r->x[i]);
        for (size_t w = 0; w < L; w++)
            r->x[i][w] = (uint32_t)moeh_rng_u64(&rng);
    }
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(
            moeh_secagg_client_share_keys(r->c[i], r->keys, present,
                                          cts + (size_t)i * n * MOEH_SECAGG_SHARE_CT_BYTES,
                                          sent_all + (size_t)i * n, &err),
            0);
        assert_int_equal(moeh_secagg_client_share_keys(r->c[i], r->keys, present, cts, sent, &err),
                         -EALREADY);
    }
    for (uint32_t i = 0; i < n; i++) /* the server forwards i's ciphertext for j to j */
        for (uint32_t j = 0; j < n; j++) {
            assert_int_equal(sent_all[(size_t)i * n + j], moeh_secagg_neighbours(cfg, i, j));
            if (sent_all[(size_t)i * n + j])
                assert_int_equal(
                    moeh_secagg_client_receive_share(
                        r->c[j], i, cts + ((size_t)i * n + j) * MOEH_SECAGG_SHARE_CT_BYTES, &err),
                    0);
        }
    memset(u2, 1, n); /* everyone's shares were delivered */
    uint32_t *y = malloc(L * sizeof *y);
    assert_non_null(y);
    for (uint32_t i = 0; i < n; i++) {
        if (drop_mask >> i & 1) {
            r->drop[r->nd++] = i;
            continue;
        }
        r->surv[r->ns++] = i;
        if (i == 0) { /* in place */
            memcpy(y, r->x[i], L * sizeof *y);
            assert_int_equal(moeh_secagg_client_mask(r->c[i], y, y, u2, &err), 0);
        } else {
            assert_int_equal(moeh_secagg_client_mask(r->c[i], y, r->x[i], u2, &err), 0);
        }
        assert_int_equal(moeh_secagg_client_mask(r->c[i], y, r->x[i], u2, &err), -EALREADY);
        for (size_t w = 0; w < L; w++) {
            r->sum[w] += y[w];
            r->want[w] += r->x[i][w];
        }
    }
    free(y);
    free(present);
    free(sent);
    free(u2);
    free(cts);
    free(sent_all);
}

/* Phase 3 at every survivor; returns the first refusal (0 if all answered). */
static int round_reveal(round_t *r)
{
    moeh_err_t err = {{0}};
    int first = 0;
    r->nrev = 0;
    for (size_t a = 0; a < r->ns; a++) {
        size_t k = 0;
        int rc = moeh_secagg_client_reveal(r->c[r->surv[a]], r->surv, r->ns, r->drop, r->nd,
                                           r->rev + r->nrev, &k, &err);
        if (rc && !first) first = rc;
        r->nrev += k;
    }
    return first;
}

static void round_free(round_t *r)
{
    for (uint32_t i = 0; i < r->cfg.n; i++) {
        moeh_secagg_client_destroy(&r->c[i]);
        free(r->x[i]);
    }
    free(r->x);
    free(r->keys);
    free(r->sum);
    free(r->want);
    free(r->rev);
}

static int unmask(round_t *r)
{
    moeh_err_t err = {{0}};
    return moeh_secagg_server_unmask(&r->cfg, r->keys, r->surv, r->ns, r->drop, r->nd, r->rev,
                                     r->nrev, r->sum, &err);
}

static void check_round(uint32_t n, uint32_t t, uint32_t k, uint64_t drop_mask)
{
    moeh_secagg_cfg_t cfg = {
        .round = 100 + n, .n = n, .t = t, .k = k, .graph_seed = 99, .len = 10000};
    round_t r;
    round_run(&r, &cfg, drop_mask, 1000 + n + drop_mask);
    /* masked, the sum is not the plain sum */
    assert_memory_not_equal(r.sum, r.want, cfg.len * sizeof *r.sum);
    assert_int_equal(round_reveal(&r), 0);
    assert_int_equal(unmask(&r), 0);
    assert_memory_equal(r.sum, r.want, cfg.len * sizeof *r.sum);
    round_free(&r);
}

static void test_round_5(void **state)
{
    (void)state;
    check_round(5, 3, 0, 0);
    check_round(5, 3, 0, 1u << 2);               /* one drops */
    check_round(5, 3, 0, (1u << 0) | (1u << 4)); /* two drop: t = 3 survive */
}

static void test_round_10(void **state)
{
    (void)state;
    check_round(10, 6, 0, 0);
    check_round(10, 6, 0, 1u << 9);
    check_round(10, 6, 0, (1u << 3) | (1u << 7));
}

/* 40 clients, every pair masking: each mask sums 40 streams and the server's unmasking 40 or
 * more, past the 32 the PRG expands at once. */
static void test_round_40(void **state)
{
    (void)state;
    check_round(40, 21, 0, 0);
    check_round(40, 21, 0, (1ull << 0) | (1ull << 17) | (1ull << 39));
}

/* Clients masking with one engine and the server unmasking with another still recover the exact
 * sum: the engines' multi-stream paths (40 streams a client, past the 32 expanded at once; the
 * server's self masks and, with one dropped, the survivors' pairwise masks with it) give the very
 * same words. Every ordered pair of the engines this CPU runs. */
static void test_round_40_mixed_engines(void **state)
{
    (void)state;
    int pairs = 0;
    for (int ce = 0; ce < 3; ce++)
        for (int se = 0; se < 3; se++) {
            if (ce == se || moeh_secagg_prg_set_engine(k_engines[ce]) != 0 ||
                moeh_secagg_prg_set_engine(k_engines[se]) != 0)
                continue;
            moeh_secagg_cfg_t cfg = {.round = 4000 + ce * 3 + se,
                                     .n = 40,
                                     .t = 21,
                                     .k = 0,
                                     .graph_seed = 5,
                                     .len = 3001};
            round_t r;
            assert_int_equal(moeh_secagg_prg_set_engine(k_engines[ce]), 0); /* the clients' */
            round_run(&r, &cfg, 1ull << 11, 77 + ce);
            assert_int_equal(moeh_secagg_prg_set_engine(k_engines[se]), 0); /* the server's */
            assert_int_equal(round_reveal(&r), 0);
            assert_int_equal(unmask(&r), 0);
            assert_memory_equal(r.sum, r.want, cfg.len * sizeof *r.sum);
            round_free(&r);
            pairs++;
        }
    assert_int_equal(moeh_secagg_prg_set_engine(NULL), 0);
    printf("%d ordered pairs of mask engines\n", pairs);
}

static void test_round_secagg_plus(void **state)
{
    (void)state;
    moeh_secagg_cfg_t cfg = {.round = 5, .n = 20, .t = 4, .k = 6, .graph_seed = 99, .len = 100};
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_secagg_cfg_check(&cfg, &err), 0);
    for (uint32_t i = 0; i < cfg.n; i++) { /* a symmetric k-regular graph */
        uint32_t deg = 0;
        for (uint32_t j = 0; j < cfg.n; j++) {
            assert_int_equal(moeh_secagg_neighbours(&cfg, i, j),
                             moeh_secagg_neighbours(&cfg, j, i));
            deg += (uint32_t)moeh_secagg_neighbours(&cfg, i, j);
        }
        assert_int_equal(deg, cfg.k);
    }
    check_round(20, 4, 6, 0);
    check_round(20, 4, 6, 1u << 11);
    check_round(20, 4, 6, (1u << 2) | (1u << 13));
    /* threshold must exceed half the group; k even and < n */
    cfg.t = 3;
    assert_int_equal(moeh_secagg_cfg_check(&cfg, &err), -EINVAL);
    cfg.t = 4, cfg.k = 5;
    assert_int_equal(moeh_secagg_cfg_check(&cfg, &err), -EINVAL);
    cfg.k = 20;
    assert_int_equal(moeh_secagg_cfg_check(&cfg, &err), -EINVAL);
}

/* SecAgg+ under random dropouts: unmasking succeeds, exactly, iff every client of U2 keeps t
 * surviving share holders in its group (itself included when it survived); otherwise -EPERM
 * with the sum untouched. */
static void test_random_drops(void **state)
{
    (void)state;
    moeh_secagg_cfg_t cfg = {.round = 31, .n = 12, .t = 3, .k = 4, .graph_seed = 7, .len = 1000};
    moeh_rng_t rng;
    moeh_rng_seed(&rng, 2024);
    int n_ok = 0, n_refused = 0;
    for (int trial = 0; trial < 24; trial++) {
        uint64_t drop = 0;
        int nd = (int)(moeh_rng_u64(&rng) % 5);
        while (__builtin_popcountll(drop) < nd)
            drop |= UINT64_C(1) << (moeh_rng_u64(&rng) % cfg.n);
        int predicted = cfg.n - (uint32_t)nd >= cfg.t;
        for (uint32_t o = 0; o < cfg.n; o++) {
            uint32_t holders = (drop >> o & 1) ? 0 : 1;
            for (uint32_t j = 0; j < cfg.n; j++)
                holders += !(drop >> j & 1) && moeh_secagg_neighbours(&cfg, o, j);
            predicted &= holders >= cfg.t;
        }
        round_t r;
        round_run(&r, &cfg, drop, 500 + (uint64_t)trial);
        assert_int_equal(round_reveal(&r), 0); /* 8+ survivors: every client answers */
        uint32_t *copy = malloc(cfg.len * sizeof *copy);
        assert_non_null(copy);
        memcpy(copy, r.sum, cfg.len * sizeof *copy);
        int rc = unmask(&r);
        if (predicted) {
            assert_int_equal(rc, 0);
            assert_memory_equal(r.sum, r.want, cfg.len * sizeof *r.sum);
            n_ok++;
        } else {
            assert_int_equal(rc, -EPERM);
            assert_memory_equal(r.sum, copy, cfg.len * sizeof *copy);
            n_refused++;
        }
        free(copy);
        round_free(&r);
    }
    print_message("random drops: %d unmasked, %d refused\n", n_ok, n_refused);
    assert_true(n_ok > 0 && n_refused > 0);
}

static void test_refusals(void **state)
{
    (void)state;
    moeh_secagg_cfg_t cfg = {.round = 9, .n = 5, .t = 3, .k = 0, .len = 1000};
    moeh_err_t err = {{0}};
    round_t r;
    uint32_t *copy = malloc(cfg.len * sizeof *copy);
    assert_non_null(copy);

    /* three of five drop: two survivors < t. Clients refuse to reveal, the server to unmask. */
    round_run(&r, &cfg, 0x7, 1);
    assert_int_equal(r.ns, 2);
    assert_int_equal(round_reveal(&r), -EPERM);
    assert_int_equal(r.nrev, 0);
    memcpy(copy, r.sum, cfg.len * sizeof *copy);
    assert_int_equal(unmask(&r), -EPERM);
    assert_memory_equal(copy, r.sum, cfg.len * sizeof *copy);
    round_free(&r);

    /* one drops; then refusals of bad requests and too few shares */
    round_run(&r, &cfg, 1u << 1, 2);
    memcpy(copy, r.sum, cfg.len * sizeof *copy);
    moeh_secagg_reveal_t out[5];
    size_t nout;
    uint32_t both_d[2] = {1, 3}; /* 3 survived but is also named dropped */
    assert_int_equal(moeh_secagg_client_reveal(r.c[0], r.surv, r.ns, both_d, 2, out, &nout, &err),
                     -EPERM);
    assert_non_null(strstr(err.msg, "both"));
    assert_int_equal(
        moeh_secagg_server_unmask(&cfg, r.keys, r.surv, r.ns, both_d, 2, r.rev, 0, r.sum, &err),
        -EPERM);
    /* a request that leaves someone out of U2's partition */
    assert_int_equal(moeh_secagg_client_reveal(r.c[0], r.surv, r.ns, NULL, 0, out, &nout, &err),
                     -EINVAL);
    assert_int_equal(round_reveal(&r), 0);
    /* having answered, client 0 refuses a different request (2 now "dropped") */
    uint32_t surv2[3] = {0, 3, 4}, drop2[2] = {1, 2};
    assert_int_equal(moeh_secagg_client_reveal(r.c[0], surv2, 3, drop2, 2, out, &nout, &err),
                     -EPERM);
    /* ... but repeats the same answer */
    assert_int_equal(
        moeh_secagg_client_reveal(r.c[0], r.surv, r.ns, r.drop, r.nd, out, &nout, &err), 0);
    assert_int_equal(nout, 5); /* b of 0, 2, 3, 4 and s of 1 */
    /* the server refuses a reveal of the wrong secret (b of the dropped client) */
    moeh_secagg_reveal_t *wrong = malloc((r.nrev + 1) * sizeof *wrong);
    assert_non_null(wrong);
    memcpy(wrong, r.rev, r.nrev * sizeof *wrong);
    wrong[r.nrev] = out[0];
    wrong[r.nrev].owner = 1;
    wrong[r.nrev].kind = MOEH_SECAGG_REVEAL_B;
    assert_int_equal(moeh_secagg_server_unmask(&cfg, r.keys, r.surv, r.ns, r.drop, r.nd, wrong,
                                               r.nrev + 1, r.sum, &err),
                     -EPERM);
    /* too few shares of the dropped client's key: keep only t - 1 of them */
    size_t k = 0, s_kept = 0;
    for (size_t a = 0; a < r.nrev; a++)
        if (r.rev[a].kind != MOEH_SECAGG_REVEAL_S || s_kept++ < cfg.t - 1) wrong[k++] = r.rev[a];
    assert_int_equal(
        moeh_secagg_server_unmask(&cfg, r.keys, r.surv, r.ns, r.drop, r.nd, wrong, k, r.sum, &err),
        -EPERM);
    assert_memory_equal(copy, r.sum, cfg.len * sizeof *copy);
    /* a tampered share of the dropped key is caught by the public key check (a change of the
     * lowest 3 bits of the key would not be: X25519 clamps them away, the key is equivalent) */
    memcpy(wrong, r.rev, r.nrev * sizeof *wrong);
    for (size_t a = 0; a < r.nrev; a++)
        if (wrong[a].kind == MOEH_SECAGG_REVEAL_S) {
            wrong[a].y[1] = (wrong[a].y[1] + 1000003) % MOEH_SECAGG_PRIME;
            break;
        }
    assert_int_equal(moeh_secagg_server_unmask(&cfg, r.keys, r.surv, r.ns, r.drop, r.nd, wrong,
                                               r.nrev, r.sum, &err),
                     -EBADMSG);
    assert_memory_equal(copy, r.sum, cfg.len * sizeof *copy);
    /* and the honest answers unmask */
    assert_int_equal(unmask(&r), 0);
    assert_memory_equal(r.sum, r.want, cfg.len * sizeof *r.sum);
    free(wrong);
    round_free(&r);
    free(copy);
}

static void test_phase_errors(void **state)
{
    (void)state;
    moeh_secagg_cfg_t cfg = {.round = 1, .n = 3, .t = 2, .len = 8};
    moeh_err_t err = {{0}};
    moeh_secagg_client_t *c = NULL;
    uint32_t x[8] = {0}, y[8];
    uint8_t u2[3] = {1, 1, 1};
    assert_int_equal(moeh_secagg_client_create(&cfg, 3, &c, &err), -EINVAL);
    assert_null(c);
    cfg.len = 0;
    assert_int_equal(moeh_secagg_client_create(&cfg, 0, &c, &err), -EINVAL);
    cfg.len = 8;
    assert_int_equal(moeh_secagg_client_create(&cfg, 0, &c, &err), 0);
    assert_int_equal(moeh_secagg_client_mask(c, y, x, u2, &err), -EINVAL); /* not shared yet */
    moeh_secagg_client_destroy(&c);
    assert_null(c);
    moeh_secagg_client_destroy(&c);
    moeh_secagg_client_destroy(NULL);
}

/* ---- statistics of one masked vector ------------------------------------------------------- */
static double chi2_top_byte(const uint32_t *y, size_t L)
{
    double cnt[256] = {0}, e = (double)L / 256.0, chi = 0;
    for (size_t i = 0; i < L; i++)
        cnt[y[i] >> 24] += 1;
    for (int b = 0; b < 256; b++)
        chi += (cnt[b] - e) * (cnt[b] - e) / e;
    return chi;
}

static void test_masked_uniform(void **state)
{
    (void)state;
    enum { NC = 5, L = 65536 };
    const double crit = 330.5; /* chi-square, 255 dof, 0.999 quantile */
    moeh_secagg_cfg_t cfg = {.round = 77, .n = NC, .t = 3, .len = L};
    moeh_err_t err = {{0}};
    moeh_secagg_client_t *c[NC];
    moeh_secagg_pubkeys_t keys[NC];
    uint8_t present[NC], sent[NC], u2[NC], seed[32];
    uint8_t *cts = malloc((size_t)NC * NC * MOEH_SECAGG_SHARE_CT_BYTES);
    uint32_t *x = malloc(L * sizeof *x), *y = malloc(L * sizeof *y);
    assert_true(cts && x && y);
    memset(present, 1, NC);
    memset(u2, 1, NC);
    for (int i = 0; i < NC; i++) {
        memset(seed, 0x40 + i, 32);
        assert_int_equal(moeh_secagg_client_create_seeded(&cfg, (uint32_t)i, seed, &c[i], &err), 0);
        moeh_secagg_client_pubkeys(c[i], &keys[i]);
    }
    for (int i = 0; i < NC; i++)
        assert_int_equal(
            moeh_secagg_client_share_keys(
                c[i], keys, present, cts + (size_t)i * NC * MOEH_SECAGG_SHARE_CT_BYTES, sent, &err),
            0);
    /* 0's share for 1, handed to 2 as if from 0 (or to 1 as if from 3): does not open */
    const uint8_t *ct01 = cts + (size_t)1 * MOEH_SECAGG_SHARE_CT_BYTES;
    assert_int_equal(moeh_secagg_client_receive_share(c[2], 0, ct01, &err), -EBADMSG);
    assert_int_equal(moeh_secagg_client_receive_share(c[1], 3, ct01, &err), -EBADMSG);
    assert_int_equal(moeh_secagg_client_receive_share(c[1], 1, ct01, &err), -EINVAL); /* self */
    for (int i = 0; i < NC; i++)
        for (int j = 0; j < NC; j++)
            if (i != j)
                assert_int_equal(moeh_secagg_client_receive_share(
                                     c[j], (uint32_t)i,
                                     cts + ((size_t)i * NC + j) * MOEH_SECAGG_SHARE_CT_BYTES, &err),
                                 0);
    assert_int_equal(moeh_secagg_client_receive_share(c[1], 0, ct01, &err), -EINVAL); /* twice */
    moeh_rng_t rng;
    moeh_rng_seed(&rng, 5);
    for (int kind = 0; kind < 3; kind++) {
        for (size_t w = 0; w < L; w++) /* zeros, a constant near the top, random */
            x[w] = kind == 0 ? 0 : kind == 1 ? 0x7fffff00u : (uint32_t)moeh_rng_u64(&rng);
        /* each input through a client of its own: masking is once per client and round */
        assert_int_equal(moeh_secagg_client_mask(c[kind], y, x, u2, &err), 0);
        double chi = chi2_top_byte(y, L);
        print_message("masked input %d: chi-square(top byte) = %.1f (critical %.1f)\n", kind, chi,
                      crit);
        assert_true(chi < crit);
        /* the input does not show through: Pearson r of x and y words */
        if (kind == 2) {
            double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
            for (size_t w = 0; w < L; w++) {
                double a = x[w], b = y[w];
                sx += a, sy += b, sxx += a * a, syy += b * b, sxy += a * b;
            }
            double cov = sxy / L - sx / L * sy / L;
            double rr = cov / sqrt((sxx / L - sx / L * sx / L) * (syy / L - sy / L * sy / L));
            print_message("corr(x, y) = %.5f (bound %.5f)\n", rr, 4 / sqrt((double)L));
            assert_true(fabs(rr) < 4 / sqrt((double)L));
        }
    }
    for (int i = 0; i < NC; i++)
        moeh_secagg_client_destroy(&c[i]);
    free(cts);
    free(x);
    free(y);
}

MOEH_TEST_MAIN(setup, NULL, cmocka_unit_test(test_prg_kat),
               cmocka_unit_test(test_prg_blocks_are_one_stream),
               cmocka_unit_test(test_prg_engines_agree),
               cmocka_unit_test(test_prg_leaves_no_seed_on_stack),
               cmocka_unit_test(test_aes_ctr_high_counters), cmocka_unit_test(test_pair_seed_kat),
               cmocka_unit_test(test_shamir), cmocka_unit_test(test_round_5),
               cmocka_unit_test(test_round_10), cmocka_unit_test(test_round_40),
               cmocka_unit_test(test_round_40_mixed_engines),
               cmocka_unit_test(test_round_secagg_plus), cmocka_unit_test(test_random_drops),
               cmocka_unit_test(test_refusals), cmocka_unit_test(test_phase_errors),
               cmocka_unit_test(test_masked_uniform))
