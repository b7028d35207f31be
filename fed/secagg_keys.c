/* secagg_keys.c - share encryption (docs/secagg.md, "Share encryption"): a site's share key, the
 * pair keys it agrees with each peer's, kept for the next sessions, and the per-session keys
 * drawn from them with both sides' fresh s keys.
 *
 * A site's c key used to be fresh each session, which cost an X25519 key pair and one agreement
 * per neighbour per session: half of a site's X25519 work. The c secret key is never revealed
 * (only s keys and self-mask seeds are reconstructed), so it can live as long as the process;
 * what must stay fresh is the key a share is sealed with, since the nonce is the session id and
 * a hostile coordinator could repeat that. It is: each session's key hashes the two sites' s
 * public keys of that session, and an honest site draws its s key at random every session.
 *
 * Secrets (the c secret key, pair keys, session keys) live in sodium_malloc memory or in locals
 * wiped before return. */
#include "secagg_keys.h"

#include <string.h>

#define SLOTS (2u * MOEH_SECAGG_MAX_CLIENTS) /* a power of two */
#define MAX_PAIRS (SLOTS / 2)                /* then the cache is wiped and starts again */

typedef struct {
    uint8_t used;
    uint8_t pk[32];                               /* the peer's share key */
    uint8_t to_peer[crypto_kx_SESSIONKEYBYTES];   /* this site's crypto_kx tx with it */
    uint8_t from_peer[crypto_kx_SESSIONKEYBYTES]; /* and rx */
} pair_t;

struct moeh_secagg_ident { /* sodium_malloc'd */
    uint8_t pk[32], sk[32];
    pair_t *pairs; /* sodium_malloc'd, SLOTS: open addressing, linear probing */
    uint32_t n_pairs;
    uint64_t agreements;
};

static int ident_alloc(moeh_secagg_ident_t **out, moeh_err_t *err)
{
    moeh_secagg_ident_t *id = sodium_malloc(sizeof *id);
    pair_t *pairs = sodium_malloc(SLOTS * sizeof *pairs);
    if (!id || !pairs) {
        sodium_free(id);
        sodium_free(pairs);
        return moeh_errf(err, -ENOMEM, "secagg: out of secure memory");
    }
    sodium_memzero(id, sizeof *id);
    sodium_memzero(pairs, SLOTS * sizeof *pairs);
    id->pairs = pairs;
    *out = id;
    return 0;
}

int moeh_secagg_ident_create(moeh_secagg_ident_t **out, moeh_err_t *err)
{
    int rc = ident_alloc(out, err);
    if (rc) return rc;
    if (crypto_kx_keypair((*out)->pk, (*out)->sk) != 0) {
        moeh_secagg_ident_destroy(out);
        return moeh_errf(err, -EIO, "secagg: key generation failed");
    }
    return 0;
}

int moeh_secagg_ident_create_seeded(moeh_secagg_ident_t **out,
                                    const uint8_t seed[crypto_kx_SEEDBYTES], moeh_err_t *err)
{
    int rc = ident_alloc(out, err);
    if (rc) return rc;
    if (crypto_kx_seed_keypair((*out)->pk, (*out)->sk, seed) != 0) {
        moeh_secagg_ident_destroy(out);
        return moeh_errf(err, -EIO, "secagg: key derivation failed");
    }
    return 0;
}

void moeh_secagg_ident_destroy(moeh_secagg_ident_t **self_p)
{
    if (!self_p || !*self_p) return;
    sodium_free((*self_p)->pairs); /* wipes */
    sodium_free(*self_p);
    *self_p = NULL;
}

void moeh_secagg_ident_pk(const moeh_secagg_ident_t *ident, uint8_t pk[MOEH_SECAGG_KEY_BYTES])
{
    memcpy(pk, ident->pk, MOEH_SECAGG_KEY_BYTES);
}

uint64_t moeh_secagg_ident_agreements(const moeh_secagg_ident_t *ident)
{
    return ident->agreements;
}

/* crypto_kx between my key and peer_pk: the site with the lower key (bytes compared; the lower
 * client id when the keys are equal) plays the kx client, so both ends agree which of the two
 * keys carries which direction whatever their ids in a session. */
static int kx(uint8_t to_peer[crypto_kx_SESSIONKEYBYTES],
              uint8_t from_peer[crypto_kx_SESSIONKEYBYTES], const uint8_t my_pk[32],
              const uint8_t my_sk[32], const uint8_t peer_pk[32], uint32_t me, uint32_t peer)
{
    int c = memcmp(my_pk, peer_pk, 32), client = c < 0 || (c == 0 && me < peer);
    int rc = client ? crypto_kx_client_session_keys(from_peer, to_peer, my_pk, my_sk, peer_pk)
                    : crypto_kx_server_session_keys(from_peer, to_peer, my_pk, my_sk, peer_pk);
    return rc == 0 ? 0 : -EINVAL;
}

static uint32_t slot_of(const uint8_t pk[32])
{
    return ((uint32_t)pk[0] | (uint32_t)pk[1] << 8 | (uint32_t)pk[2] << 16 |
            (uint32_t)pk[3] << 24) &
           (SLOTS - 1);
}

/* The cached pair keys with peer_pk, agreed now on a miss. A key equal to this site's is not
 * cached (which end is the kx client then depends on the ids). */
static int pair_keys(moeh_secagg_ident_t *id, const uint8_t peer_pk[32], uint32_t me, uint32_t peer,
                     uint8_t to_peer[crypto_kx_SESSIONKEYBYTES],
                     uint8_t from_peer[crypto_kx_SESSIONKEYBYTES])
{
    uint32_t h = slot_of(peer_pk); /* chosen keys can collide: the probe is < MAX_PAIRS long */
    for (pair_t *p = &id->pairs[h]; p->used; h = (h + 1) & (SLOTS - 1), p = &id->pairs[h])
        if (memcmp(p->pk, peer_pk, 32) == 0) {
            memcpy(to_peer, p->to_peer, sizeof p->to_peer);
            memcpy(from_peer, p->from_peer, sizeof p->from_peer);
            return 0;
        }
    id->agreements++;
    int rc = kx(to_peer, from_peer, id->pk, id->sk, peer_pk, me, peer);
    if (rc || memcmp(peer_pk, id->pk, 32) == 0) return rc;
    if (id->n_pairs >= MAX_PAIRS) { /* a long run, or a coordinator inventing keys */
        sodium_memzero(id->pairs, SLOTS * sizeof *id->pairs);
        id->n_pairs = 0;
        h = slot_of(peer_pk);
    }
    pair_t *p = &id->pairs[h]; /* the free slot the probe stopped at (or h of an empty table) */
    p->used = 1;
    memcpy(p->pk, peer_pk, 32);
    memcpy(p->to_peer, to_peer, sizeof p->to_peer);
    memcpy(p->from_peer, from_peer, sizeof p->from_peer);
    id->n_pairs++;
    return 0;
}

/* A direction's session key: BLAKE2b-256 keyed by the pair key of that direction, of
 * "moeh-secagg-share-v2" || round || from || to || s_pk(from) || s_pk(to). */
#define SK_TAG "moeh-secagg-share-v2"
static int session_key(uint8_t out[crypto_kx_SESSIONKEYBYTES],
                       const uint8_t dir_key[crypto_kx_SESSIONKEYBYTES], uint64_t round,
                       uint32_t from, uint32_t to, const uint8_t from_s_pk[32],
                       const uint8_t to_s_pk[32])
{
    uint8_t msg[sizeof SK_TAG - 1 + 8 + 4 + 4 + 64];
    size_t o = 0;
    memcpy(msg, SK_TAG, sizeof SK_TAG - 1), o += sizeof SK_TAG - 1;
    moeh_sa_put_u64(msg + o, round), o += 8;
    moeh_sa_put_u32(msg + o, from), o += 4;
    moeh_sa_put_u32(msg + o, to), o += 4;
    memcpy(msg + o, from_s_pk, 32), o += 32;
    memcpy(msg + o, to_s_pk, 32), o += 32;
    MOEH_ASSERT(o == sizeof msg);
    return crypto_generichash(out, crypto_kx_SESSIONKEYBYTES, msg, sizeof msg, dir_key,
                              crypto_kx_SESSIONKEYBYTES) == 0
               ? 0
               : -EIO;
}

static int session_keys(uint8_t tx[crypto_kx_SESSIONKEYBYTES],
                        uint8_t rx[crypto_kx_SESSIONKEYBYTES],
                        const uint8_t to_peer[crypto_kx_SESSIONKEYBYTES],
                        const uint8_t from_peer[crypto_kx_SESSIONKEYBYTES], uint32_t me,
                        uint32_t peer, uint64_t round, const uint8_t my_s_pk[32],
                        const uint8_t peer_s_pk[32])
{
    int rc = session_key(tx, to_peer, round, me, peer, my_s_pk, peer_s_pk);
    if (rc == 0) rc = session_key(rx, from_peer, round, peer, me, peer_s_pk, my_s_pk);
    return rc;
}

int moeh_secagg_ident_session_keys(moeh_secagg_ident_t *ident, const uint8_t peer_c_pk[32],
                                   uint32_t me, uint32_t peer, uint64_t round,
                                   const uint8_t my_s_pk[32], const uint8_t peer_s_pk[32],
                                   uint8_t tx[crypto_kx_SESSIONKEYBYTES],
                                   uint8_t rx[crypto_kx_SESSIONKEYBYTES])
{
    uint8_t to_peer[crypto_kx_SESSIONKEYBYTES], from_peer[crypto_kx_SESSIONKEYBYTES];
    int rc = me == peer ? -EINVAL : pair_keys(ident, peer_c_pk, me, peer, to_peer, from_peer);
    if (rc == 0) rc = session_keys(tx, rx, to_peer, from_peer, me, peer, round, my_s_pk, peer_s_pk);
    sodium_memzero(to_peer, sizeof to_peer);
    sodium_memzero(from_peer, sizeof from_peer);
    return rc;
}

#define AD_TAG "moeh-secagg-share-v2"
#define AD_BYTES (sizeof AD_TAG - 1 + 8 + 4 + 4)

int moeh_secagg_share_crypt_key(int seal, uint8_t *out, const uint8_t *in, uint64_t round,
                                uint32_t from, uint32_t to,
                                const uint8_t key[crypto_kx_SESSIONKEYBYTES])
{
    uint8_t ad[AD_BYTES], nonce[12] = {0};
    unsigned long long len = 0;
    memcpy(ad, AD_TAG, sizeof AD_TAG - 1);
    moeh_sa_put_u64(ad + sizeof AD_TAG - 1, round);
    moeh_sa_put_u32(ad + sizeof AD_TAG - 1 + 8, from);
    moeh_sa_put_u32(ad + sizeof AD_TAG - 1 + 12, to);
    moeh_sa_put_u64(nonce, round);
    if (seal)
        return crypto_aead_chacha20poly1305_ietf_encrypt(out, &len, in,
                                                         MOEH_SECAGG_SHARE_PLAIN_BYTES, ad,
                                                         sizeof ad, NULL, nonce, key) == 0 &&
                       len == MOEH_SECAGG_SHARE_CT_BYTES
                   ? 0
                   : -EIO;
    int rc = crypto_aead_chacha20poly1305_ietf_decrypt(
                 out, &len, NULL, in, MOEH_SECAGG_SHARE_CT_BYTES, ad, sizeof ad, nonce, key) == 0 &&
                     len == MOEH_SECAGG_SHARE_PLAIN_BYTES
                 ? 0
                 : -EBADMSG;
    if (rc) sodium_memzero(out, MOEH_SECAGG_SHARE_PLAIN_BYTES);
    return rc;
}

/* seal: `me` is from, its c secret key my_c_sk; open: `me` is to. No cache. */
static int share_crypt(int seal, uint8_t *out, const uint8_t *in, uint64_t round, uint32_t from,
                       uint32_t to, const moeh_secagg_pubkeys_t *from_keys,
                       const moeh_secagg_pubkeys_t *to_keys, const uint8_t my_c_sk[32])
{
    uint8_t to_peer[crypto_kx_SESSIONKEYBYTES], from_peer[crypto_kx_SESSIONKEYBYTES];
    uint8_t tx[crypto_kx_SESSIONKEYBYTES], rx[crypto_kx_SESSIONKEYBYTES];
    const moeh_secagg_pubkeys_t *mine = seal ? from_keys : to_keys,
                                *theirs = seal ? to_keys : from_keys;
    uint32_t me = seal ? from : to, peer = seal ? to : from;
    int rc =
        from == to ? -EINVAL : kx(to_peer, from_peer, mine->c_pk, my_c_sk, theirs->c_pk, me, peer);
    if (rc == 0)
        rc = session_keys(tx, rx, to_peer, from_peer, me, peer, round, mine->s_pk, theirs->s_pk);
    if (rc == 0) rc = moeh_secagg_share_crypt_key(seal, out, in, round, from, to, seal ? tx : rx);
    sodium_memzero(to_peer, sizeof to_peer);
    sodium_memzero(from_peer, sizeof from_peer);
    sodium_memzero(tx, sizeof tx);
    sodium_memzero(rx, sizeof rx);
    return rc;
}

int moeh_secagg_share_seal(uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES],
                           const uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES], uint64_t round,
                           uint32_t from, uint32_t to, const moeh_secagg_pubkeys_t *from_keys,
                           const moeh_secagg_pubkeys_t *to_keys, const uint8_t from_c_sk[32])
{
    return share_crypt(1, ct, plain, round, from, to, from_keys, to_keys, from_c_sk);
}

int moeh_secagg_share_open(uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES],
                           const uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES], uint64_t round,
                           uint32_t from, uint32_t to, const moeh_secagg_pubkeys_t *from_keys,
                           const moeh_secagg_pubkeys_t *to_keys, const uint8_t to_c_sk[32])
{
    return share_crypt(0, plain, ct, round, from, to, from_keys, to_keys, to_c_sk);
}
