/* moeh_secagg.h - the local computations of secure aggregation (Bonawitz et al., CCS 2017, with the
 * SecAgg+ neighbourhoods of Bell et al., CCS 2020) over vectors of uint32 words mod 2^32.
 * docs/secagg.md describes the protocol, its parameters and what it does and does not protect.
 *
 * One round, n clients with ids 0..n-1 (their position in the round's participant list):
 *   0. advertise  each client creates a fresh X25519 pair s (masks) and self-mask seed b_i;
 *                 it sends s_pk and its site's share key c_pk (share encryption, kept
 *                 across sessions: moeh_secagg_ident_t);           moeh_secagg_client_pubkeys()
 *   1. share      given everyone's public keys, each client Shamir-splits its self-mask seed
 *                 b_i and its s secret key t-of-|G(i)| and encrypts one share pair per peer;
 *                 the server forwards each ciphertext to its addressee.
 *                               moeh_secagg_client_share_keys(), moeh_secagg_client_receive_share()
 *   2. mask       y_i = x_i + PRG(b_i) + sum_{j in N(i), j > i} PRG(s_ij)
 *                                  - sum_{j in N(i), j < i} PRG(s_ij)   moeh_secagg_client_mask()
 *                 over the peers N(i) whose shares were delivered (the set U2);
 *   3. unmask     the server names the survivors U3 (who sent y) and the dropped D = U2 \ U3;
 *                 each survivor reveals its shares of b_i for i in U3 and of s_i for i in D,
 *                 never both for one client;                     moeh_secagg_client_reveal()
 *                 the server reconstructs them and removes every mask from sum_{U3} y_i.
 *                                                                 moeh_secagg_server_unmask()
 * N(i) is everyone else (cfg.k == 0) or the k neighbours of i on a ring shuffled by the public
 * cfg.graph_seed (SecAgg+); G(i) = N(i) + {i} holds the shares of i.
 *
 * Secrets (key pairs, b_i, shares held, expanded mask blocks) live in sodium_malloc memory or on
 * the stack and are wiped on every exit path. moeh_crypto_init() (keys.h) must have run first.
 * Objects are not thread-safe; distinct objects may be used from distinct threads. */
#ifndef MOEH_SECAGG_H
#define MOEH_SECAGG_H

#include "moeh_common.h"

#define MOEH_SECAGG_MAX_CLIENTS 1024
#define MOEH_SECAGG_KEY_BYTES 32
/* A 32-byte secret is 5 elements of GF(2^61 - 1): bytes 0-6, 7-13, 14-20, 21-27, 28-31. */
#define MOEH_SECAGG_SHARE_ELEMS 5
#define MOEH_SECAGG_PRIME ((UINT64_C(1) << 61) - 1)
/* Plaintext of one share pair: b share then s share, 8 little-endian bytes per element. */
#define MOEH_SECAGG_SHARE_PLAIN_BYTES (2 * MOEH_SECAGG_SHARE_ELEMS * 8)
/* ChaCha20-Poly1305 (IETF) ciphertext: plaintext + 16-byte tag. */
#define MOEH_SECAGG_SHARE_CT_BYTES (MOEH_SECAGG_SHARE_PLAIN_BYTES + 16)

#define MOEH_SECAGG_WUR __attribute__((warn_unused_result))

typedef struct {
    uint64_t round;      /* round id: in every hash, nonce and associated data */
    uint32_t n;          /* clients in the round, ids 0..n-1; 2 <= n <= MOEH_SECAGG_MAX_CLIENTS */
    uint32_t t;          /* Shamir threshold: 2 <= t <= |G(i)| (n, or k + 1 with SecAgg+) */
    uint32_t k;          /* SecAgg+ neighbours, even, 2 <= k < n - 1; 0 = all (classic SecAgg) */
    uint64_t graph_seed; /* public seed of the SecAgg+ graph (unused when k == 0) */
    size_t len;          /* words per vector, >= 1 */
} moeh_secagg_cfg_t;

/* The advertised public keys of one client (phase 0). */
typedef struct {
    uint8_t c_pk[MOEH_SECAGG_KEY_BYTES]; /* crypto_kx key: share encryption */
    uint8_t s_pk[MOEH_SECAGG_KEY_BYTES]; /* X25519 key: pairwise mask agreement */
} moeh_secagg_pubkeys_t;

/* One Shamir share: the point x (holder id + 1) and one value per secret element. */
typedef struct {
    uint32_t x;
    uint64_t y[MOEH_SECAGG_SHARE_ELEMS];
} moeh_secagg_share_t;

typedef enum { MOEH_SECAGG_REVEAL_B = 1, MOEH_SECAGG_REVEAL_S = 2 } moeh_secagg_reveal_kind_t;

/* A share revealed to the server in phase 3: holder's share of owner's b (owner survived) or of
 * owner's s secret key (owner dropped). Meant for the server; not secret from it. */
typedef struct {
    uint32_t owner, holder;
    moeh_secagg_reveal_kind_t kind;
    uint64_t y[MOEH_SECAGG_SHARE_ELEMS];
} moeh_secagg_reveal_t;

/* 0 or -EINVAL (message in err) if cfg is not a usable configuration. */
int moeh_secagg_cfg_check(const moeh_secagg_cfg_t *cfg, moeh_err_t *err) MOEH_SECAGG_WUR;

/* 1 if i and j (i != j) are mask partners (and hold each other's shares) under cfg. O(n): it
 * draws the graph; a caller that asks many times draws it once with moeh_secagg_graph. */
int moeh_secagg_neighbours(const moeh_secagg_cfg_t *cfg, uint32_t i, uint32_t j);
/* The SecAgg+ graph of cfg: pos[id] (cfg.n entries) = id's place on the ring of the public
 * graph seed (the identity with k = 0). */
void moeh_secagg_graph(const moeh_secagg_cfg_t *cfg, uint32_t *pos);
/* Each client's number of neighbours: k, or n - 1 with k = 0 (everyone). */
uint32_t moeh_secagg_degree(const moeh_secagg_cfg_t *cfg);
/* j's index among i's neighbours (0..moeh_secagg_degree - 1; each neighbour of i has its own),
 * or -1 if j is not i's neighbour (i == j, or out of range); pos from moeh_secagg_graph. O(1). */
int moeh_secagg_neighbour_slot(const moeh_secagg_cfg_t *cfg, const uint32_t *pos, uint32_t i,
                               uint32_t j);

/* ---- building blocks (public for tests and known-answer vectors) ----------------------- */

/* out (len words) += PRG(seed) if sign > 0, -= PRG(seed) if sign < 0, mod 2^32.
 * PRG = AES-256-CTR keyed by seed, IV = round (8 bytes LE) || "mask" || a 32-bit big-endian
 * block counter from 0 (protocol 9; ChaCha20 before); word w is keystream bytes 4w..4w+3
 * little-endian. Streams in 4 KiB blocks. 0, or -ENOMEM / -ENOSYS (OpenSSL provides no
 * AES-256-CTR) with out untouched. */
int moeh_secagg_prg_add(uint32_t *out, size_t len, const uint8_t seed[MOEH_SECAGG_KEY_BYTES],
                        uint64_t round, int sign) MOEH_SECAGG_WUR;

/* The code that expands masks in this process, the fastest this CPU runs: "vaes512" (fed/aes_ctr.c:
 * AES with the VAES instructions on AVX-512 registers, the stream added as it is made), "vaes"
 * (the same on AVX2 registers) or "openssl" (EVP AES-256-CTR into a buffer, then added). All give
 * the same words. MOEH_NO_VAES=1 in the environment makes it "openssl", MOEH_NO_AVX512=1 rules
 * out "vaes512" (CI runs the tests both ways). */
const char *moeh_secagg_prg_engine(void);
/* Tests and benchmarks: expand with engine `name` from now on; NULL returns to the default.
 * 0, or -ENOTSUP (this CPU does not run it, or unknown name; nothing changes). Not thread-safe:
 * call it while no other thread expands masks. */
int moeh_secagg_prg_set_engine(const char *name);

/* The pairwise seed of clients i != j: BLAKE2b-256 keyed by the X25519 secret
 * X25519(my_sk, peer_pk) of message "moeh-secagg-pair-v1" || round || min || max ||
 * pk(min) || pk(max) (ids as 4 bytes LE). 0 or -EINVAL (peer key of low order). */
int moeh_secagg_pair_seed(uint8_t seed[MOEH_SECAGG_KEY_BYTES], const uint8_t my_sk[32],
                          const uint8_t my_pk[32], const uint8_t peer_pk[32], uint32_t me,
                          uint32_t peer, uint64_t round) MOEH_SECAGG_WUR;

/* Share encryption (protocol 10). The pair keys of `from` and `to` are crypto_kx's on their c
 * keys (the lower key, bytes compared, plays the kx client; the lower id if the keys are equal);
 * the direction's session key is BLAKE2b-256 keyed by the pair key of that direction, of
 * "moeh-secagg-share-v2" || round || from || to || s_pk(from) || s_pk(to); ChaCha20-Poly1305-IETF
 * with nonce = round || 0 and associated data "moeh-secagg-share-v2" || round || from || to.
 * The s keys are fresh each session and each direction carries one message, so no key meets a
 * nonce twice even when c keys live across sessions and a session id repeats.
 * Seal, run by `from` with its c secret key: 0 or -EINVAL (bad peer key). */
int moeh_secagg_share_seal(uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES],
                           const uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES], uint64_t round,
                           uint32_t from, uint32_t to, const moeh_secagg_pubkeys_t *from_keys,
                           const moeh_secagg_pubkeys_t *to_keys,
                           const uint8_t from_c_sk[32]) MOEH_SECAGG_WUR;
/* The inverse, run by `to` with its c secret key on a ciphertext claimed to come from `from`.
 * 0, or -EBADMSG if it was not sealed for exactly (round, from, to) with these keys. */
int moeh_secagg_share_open(uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES],
                           const uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES], uint64_t round,
                           uint32_t from, uint32_t to, const moeh_secagg_pubkeys_t *from_keys,
                           const moeh_secagg_pubkeys_t *to_keys,
                           const uint8_t to_c_sk[32]) MOEH_SECAGG_WUR;

/* t-of-n Shamir split of a 32-byte secret: out[h] is the share of point xs[h] (distinct, in
 * [1, 2^31)). Random coefficients from randombytes. 0, -EINVAL or -ENOMEM. */
int moeh_secagg_shamir_split(moeh_secagg_share_t *out, const uint32_t *xs, size_t n, uint32_t t,
                             const uint8_t secret[32]) MOEH_SECAGG_WUR;
/* Reconstructs the secret from the first t of n_shares shares. -EPERM if n_shares < t (secret
 * left zeroed), -EINVAL on a repeated or zero x, -EBADMSG if the result is not a valid encoding
 * (inconsistent shares). */
int moeh_secagg_shamir_combine(uint8_t secret[32], const moeh_secagg_share_t *shares,
                               size_t n_shares, uint32_t t) MOEH_SECAGG_WUR;

/* ---- client ------------------------------------------------------------------------------ */
typedef struct moeh_secagg_client moeh_secagg_client_t;

/* A site's share key: the c key pair its clients advertise, kept across sessions (its secret is
 * never revealed: only s keys and self-mask seeds are), with the crypto_kx keys agreed with each
 * peer key met so far (up to MOEH_SECAGG_MAX_CLIENTS; then forgotten and agreed again), so that
 * a session costs one X25519 per new peer key instead of a key pair and one per neighbour.
 * sodium_malloc'd. Not thread-safe. 0, -EIO or -ENOMEM (message in err). */
typedef struct moeh_secagg_ident moeh_secagg_ident_t;
int moeh_secagg_ident_create(moeh_secagg_ident_t **out, moeh_err_t *err) MOEH_SECAGG_WUR;
/* NULL-safe; wipes; sets *self_p = NULL. */
void moeh_secagg_ident_destroy(moeh_secagg_ident_t **self_p);
void moeh_secagg_ident_pk(const moeh_secagg_ident_t *ident, uint8_t pk[MOEH_SECAGG_KEY_BYTES]);
/* The X25519 agreements the share key has run so far (tests, benchmarks). */
uint64_t moeh_secagg_ident_agreements(const moeh_secagg_ident_t *ident);

/* A client with a fresh s key pair and self-mask seed, and the share key `ident` (borrowed: it
 * must outlive the client), or a share key of its own when ident is NULL. 0, -EINVAL or -ENOMEM
 * (message in err). Caller owns *out: moeh_secagg_client_destroy(&c). */
int moeh_secagg_client_create_with(const moeh_secagg_cfg_t *cfg, uint32_t id,
                                   moeh_secagg_ident_t *ident, moeh_secagg_client_t **out,
                                   moeh_err_t *err) MOEH_SECAGG_WUR;
/* moeh_secagg_client_create_with(cfg, id, NULL, out, err): every key fresh. */
int moeh_secagg_client_create(const moeh_secagg_cfg_t *cfg, uint32_t id, moeh_secagg_client_t **out,
                              moeh_err_t *err) MOEH_SECAGG_WUR;
/* The same with keys and b derived from seed (BLAKE2b), for known-answer tests only: anybody
 * with the seed can unmask. Shamir coefficients remain random. */
int moeh_secagg_client_create_seeded(const moeh_secagg_cfg_t *cfg, uint32_t id,
                                     const uint8_t seed[32], moeh_secagg_client_t **out,
                                     moeh_err_t *err) MOEH_SECAGG_WUR;
/* NULL-safe; wipes and frees every secret; sets *self_p = NULL. */
void moeh_secagg_client_destroy(moeh_secagg_client_t **self_p);

void moeh_secagg_client_pubkeys(const moeh_secagg_client_t *c, moeh_secagg_pubkeys_t *out);

/* Phase 1. keys[n] are the advertised keys, present[n] flags who advertised (U1, which must
 * include this client and at least t members of its G). For each peer j in N(me) that is
 * present, writes the ciphertext for j to cts + j * MOEH_SECAGG_SHARE_CT_BYTES and sets
 * sent[j] = 1 (sent[j] = 0 elsewhere). Once per client. 0, -EINVAL, -EALREADY or -ENOMEM. */
int moeh_secagg_client_share_keys(moeh_secagg_client_t *c, const moeh_secagg_pubkeys_t *keys,
                                  const uint8_t *present, uint8_t *cts, uint8_t *sent,
                                  moeh_err_t *err) MOEH_SECAGG_WUR;

/* Phase 1 (receiving side): the ciphertext that peer `from` addressed to this client. 0,
 * -EINVAL (not a neighbour, not in U1, already received, wrong phase) or -EBADMSG. */
int moeh_secagg_client_receive_share(moeh_secagg_client_t *c, uint32_t from,
                                     const uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES],
                                     moeh_err_t *err) MOEH_SECAGG_WUR;

/* Phase 2. u2[n] flags the clients whose shares reached everyone (the server's U2; it must
 * include this client, and every neighbour flagged must have delivered its share to this
 * client). y (cfg.len words) = x masked; y may equal x. Once per client.
 * 0, -EINVAL, -EALREADY, -ENOMEM or -ENOSYS (OpenSSL provides no AES-256-CTR); on an error y
 * holds nothing masked (zeros, or x itself when y is x), which must not be sent. */
int moeh_secagg_client_mask(moeh_secagg_client_t *c, uint32_t *y, const uint32_t *x,
                            const uint8_t *u2, moeh_err_t *err) MOEH_SECAGG_WUR;

/* Phase 3. The server's request: survivors (U3) and dropped (D), which must partition U2 with
 * this client among the survivors and at least t survivors. Writes one reveal per neighbour
 * (or self) that is in U2 and whose share this client holds: b share if it survived, s share
 * if it dropped. out has room for n entries; *n_out is the count. A client never reveals
 * both of one client: a request naming a client in both lists, or differing from a request
 * already answered, is refused with -EPERM and nothing is written.
 * 0, -EINVAL, -EPERM. */
int moeh_secagg_client_reveal(moeh_secagg_client_t *c, const uint32_t *survivors,
                              size_t n_survivors, const uint32_t *dropped, size_t n_dropped,
                              moeh_secagg_reveal_t *out, size_t *n_out,
                              moeh_err_t *err) MOEH_SECAGG_WUR;

/* ---- server ------------------------------------------------------------------------------ */

/* Removes every mask from sum (cfg.len words = sum mod 2^32 of y_i over the survivors), so
 * that it becomes sum_{i in survivors} x_i. keys[n] are the advertised keys; survivors and
 * dropped partition U2 (no id in both: -EPERM). reveals are the survivors' answers; for each
 * survivor i, b_i needs at least t b-shares from distinct survivors in G(i), and for each
 * dropped i, s_i needs t s-shares from distinct survivors in N(i). Fewer, fewer than t
 * survivors, or a share of the wrong kind: -EPERM with sum untouched. A reconstructed s key
 * that does not match the advertised public key: -EBADMSG with sum untouched.
 * 0, -EINVAL, -EPERM, -EBADMSG, -ENOMEM or -ENOSYS (message in err); after -ENOMEM or -ENOSYS
 * the sum may be partly unmasked: of no use. */
int moeh_secagg_server_unmask(const moeh_secagg_cfg_t *cfg, const moeh_secagg_pubkeys_t *keys,
                              const uint32_t *survivors, size_t n_survivors,
                              const uint32_t *dropped, size_t n_dropped,
                              const moeh_secagg_reveal_t *reveals, size_t n_reveals, uint32_t *sum,
                              moeh_err_t *err) MOEH_SECAGG_WUR;

#endif
