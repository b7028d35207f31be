/* aes_ctr.h - private to fed/: AES-256 in counter mode, the stream added to (or subtracted from)
 * a vector of words in the same pass, with the VAES instructions (two AES blocks per
 * instruction in AVX2 registers, four in AVX-512 ones) on the x86-64 CPUs that have them. It is
 * the fast path of the mask PRG of secagg_prg.c (moeh_secagg.h); OpenSSL's EVP AES-256-CTR is the
 * other, and both give the very same words (tests/test_secagg.c compares them at every length
 * class).
 *
 * Why a hand-written AES: expanding k + 1 masks of the whole update is most of what secure
 * aggregation costs a site, and OpenSSL 3.0 runs CTR with the 128-bit AES-NI instructions only,
 * into a buffer that a second pass adds to the vector. Here the keystream goes from the AES
 * registers straight into the add: `bench_secagg` measures 1.6-1.9x less time for a client's
 * masks than with OpenSSL's CTR and the add (docs/secagg.md, "Cost"). AES rounds are single
 * instructions, so the code has no table lookups and no secret-dependent branches or addresses.
 *
 * The stream: block j (from 0) is AES-256_key(iv[0..11] || j as 32-bit big-endian), and word
 * i of the vector gets the little-endian word at bytes 4(i mod 4).. of block i / 4, which is
 * what OpenSSL's CTR gives as long as the 32-bit counter does not wrap (the caller's job).
 *
 * Secrets: each call wipes its round-key array and clears the vector registers it used before
 * returning; the compiler may still spill a round key elsewhere in its frame, so a caller clears
 * the stack below it once done (secagg_prg.c: sodium_stackzero). */
#ifndef MOEH_AES_CTR_H
#define MOEH_AES_CTR_H

#include <stddef.h>
#include <stdint.h>

/* (-DMOEH_NO_VAES_BUILD compiles the other platforms' way on x86-64 too, OpenSSL only: to check
 * that build; test_secagg then fails on a VAES machine, as it expects the fast path there) */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(MOEH_NO_VAES_BUILD)
#define MOEH_HAVE_VAES_CTR 1

/* An expanded AES-256 key: 15 round keys. A secret: wipe it after use. */
typedef struct {
    uint8_t rk[15][16];
} moeh_aes256_key_t;

/* What of the VAES code this CPU runs: 0 none, 1 moeh_aes256_ctr_add (AES-NI, AVX2 and VAES,
 * with the OS saving the AVX registers), 2 moeh_aes256_ctr_add512 as well (AVX-512 F and BW, the
 * OS saving their registers). */
int moeh_aes_ctr_vaes_cpu(void);

/* The key schedule of `key`. Only on a CPU where moeh_aes_ctr_vaes_cpu() is not 0. */
void moeh_aes256_expand(moeh_aes256_key_t *k, const uint8_t key[32]);

/* out[i] += (sign > 0) or -= (sign < 0) word i of the stream of key k under iv[0..11] from block
 * `block0` on, for i < nw (the caller keeps block0 + (nw + 3) / 4 <= 2^32). Only on a CPU where
 * moeh_aes_ctr_vaes_cpu() is not 0. */
void moeh_aes256_ctr_add(uint32_t *out, size_t nw, const moeh_aes256_key_t *k, const uint8_t iv[12],
                         uint32_t block0, int sign);
/* The same with AVX-512 registers (four blocks per instruction). Only where
 * moeh_aes_ctr_vaes_cpu() is 2. */
void moeh_aes256_ctr_add512(uint32_t *out, size_t nw, const moeh_aes256_key_t *k,
                            const uint8_t iv[12], uint32_t block0, int sign);
#endif

#endif
