/* secagg_keys.h - private to fed/: share encryption under a site's share key (secagg_keys.c),
 * used by the client in secagg.c. The public side (moeh_secagg_ident_t, moeh_secagg_share_seal
 * and _open) is in moeh_secagg.h; docs/secagg.md, "Share encryption", gives the construction. */
#ifndef MOEH_SECAGG_KEYS_H
#define MOEH_SECAGG_KEYS_H

#include "moeh_secagg.h"

#include <sodium.h>

/* Little-endian encoding, for the hashed and authenticated messages of secagg.c and
 * secagg_keys.c. */
static inline void moeh_sa_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void moeh_sa_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A share key derived from seed (crypto_kx_seed_keypair), for known-answer tests only. */
int moeh_secagg_ident_create_seeded(moeh_secagg_ident_t **out,
                                    const uint8_t seed[crypto_kx_SEEDBYTES],
                                    moeh_err_t *err) MOEH_SECAGG_WUR;

/* The session keys between this site (client id me, s key my_s_pk) and the peer with share key
 * peer_c_pk (client id peer, s key peer_s_pk) in session round: tx seals what me sends to peer,
 * rx opens what peer sends to me. The pair's crypto_kx keys come from the ident's cache, or one
 * X25519 on a miss. 0 or -EINVAL (a low-order peer key). */
int moeh_secagg_ident_session_keys(moeh_secagg_ident_t *ident, const uint8_t peer_c_pk[32],
                                   uint32_t me, uint32_t peer, uint64_t round,
                                   const uint8_t my_s_pk[32], const uint8_t peer_s_pk[32],
                                   uint8_t tx[crypto_kx_SESSIONKEYBYTES],
                                   uint8_t rx[crypto_kx_SESSIONKEYBYTES]) MOEH_SECAGG_WUR;

/* Seals (seal != 0: plain `in` -> ciphertext `out`) or opens (ciphertext `in` -> plain `out`,
 * zeroed when refused) the share sent from -> to in session round, under that direction's
 * session key. 0, -EIO (seal) or -EBADMSG (open). */
int moeh_secagg_share_crypt_key(int seal, uint8_t *out, const uint8_t *in, uint64_t round,
                                uint32_t from, uint32_t to,
                                const uint8_t key[crypto_kx_SESSIONKEYBYTES]) MOEH_SECAGG_WUR;

#endif
