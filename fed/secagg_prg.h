/* secagg_prg.h - private to fed/: the mask PRG's many-stream entry point (secagg_prg.c), used by
 * the client's masking and the server's unmasking in secagg.c. The single-stream form and the
 * engine choice are public (moeh_secagg.h: moeh_secagg_prg_add, moeh_secagg_prg_engine). */
#ifndef MOEH_SECAGG_PRG_H
#define MOEH_SECAGG_PRG_H

#include "moeh_secagg.h"

/* out (len words) += sum_s sign[s] PRG(seeds[s]) for s < m (sign +1 adds, anything else
 * subtracts); the result is that of m moeh_secagg_prg_add() calls. len / 4 < 2^32 - 1. 0, or
 * -ENOMEM / -ENOSYS (OpenSSL engine only: no AES-256-CTR) before anything is added. */
int moeh_secagg_prg_add_many(uint32_t *out, size_t len,
                             const uint8_t (*seeds)[MOEH_SECAGG_KEY_BYTES], const int8_t *sign,
                             size_t m, uint64_t round) MOEH_SECAGG_WUR;

#endif
