/* secagg.c - secure aggregation: masks, Shamir shares, unmasking (moeh_secagg.h, docs/secagg.md).
 * The mask PRG itself (AES-256-CTR, its engines) is in secagg_prg.c, share encryption and the
 * share key in secagg_keys.c.
 *
 * Field arithmetic is GF(p), p = 2^61 - 1 (a Mersenne prime: reduction is a shift and an add),
 * 128-bit products. Every buffer that holds a secret (keys, b, shares, polynomial coefficients,
 * mask seeds, session keys, plaintexts) is sodium_malloc'd or a local that is wiped
 * with sodium_memzero before the function returns, on every path. */
#include "moeh_secagg.h"

#include "secagg_keys.h"
#include "secagg_prg.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>

#define P MOEH_SECAGG_PRIME
#define NE MOEH_SECAGG_SHARE_ELEMS

/* ---- little-endian helpers ----------------------------------------------------------------- */
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- configuration and the SecAgg+ graph ----------------------------------------------- */
static uint32_t group_size(const moeh_secagg_cfg_t *cfg)
{
    return cfg->k == 0 ? cfg->n : cfg->k + 1;
}

int moeh_secagg_cfg_check(const moeh_secagg_cfg_t *cfg, moeh_err_t *err)
{
    if (!cfg) return moeh_errf(err, -EINVAL, "secagg: no configuration");
    if (cfg->n < 2 || cfg->n > MOEH_SECAGG_MAX_CLIENTS)
        return moeh_errf(err, -EINVAL, "secagg: n = %u clients, expected 2..%d", cfg->n,
                         MOEH_SECAGG_MAX_CLIENTS);
    if (cfg->k != 0 && (cfg->k % 2 != 0 || cfg->k < 2 || cfg->k > cfg->n - 1))
        return moeh_errf(err, -EINVAL,
                         "secagg: k = %u neighbours, expected 0 (all) or even in 2..%u", cfg->k,
                         cfg->n - 1);
    uint32_t g = group_size(cfg);
    /* t > |G|/2: even a server that lies about who dropped cannot collect t shares of both
     * b_i and s_i from honest clients (Bonawitz et al., section 4). */
    if (cfg->t < g / 2 + 1 || cfg->t > g)
        return moeh_errf(err, -EINVAL, "secagg: threshold t = %u, expected %u..%u (|G| = %u)",
                         cfg->t, g / 2 + 1, g, g);
    if (cfg->len == 0 || cfg->len > UINT32_MAX)
        return moeh_errf(err, -EINVAL, "secagg: vector of %zu words, expected 1..2^32-1", cfg->len);
    return 0;
}

/* pos[id] = place of id on the ring, a permutation drawn from the public graph seed. */
static void graph_positions(const moeh_secagg_cfg_t *cfg, uint32_t *pos)
{
    uint32_t perm[MOEH_SECAGG_MAX_CLIENTS];
    moeh_rng_t r;
    moeh_rng_seed(&r, cfg->graph_seed ^ (cfg->round * UINT64_C(0x9e3779b97f4a7c15)));
    for (uint32_t i = 0; i < cfg->n; i++)
        perm[i] = i;
    for (uint32_t i = cfg->n - 1; i > 0; i--) { /* Fisher-Yates, unbiased bound */
        uint64_t m = (uint64_t)i + 1, lim = UINT64_MAX - UINT64_MAX % m, v;
        do
            v = moeh_rng_u64(&r);
        while (v >= lim);
        uint32_t j = (uint32_t)(v % m), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (uint32_t p = 0; p < cfg->n; p++)
        pos[perm[p]] = p;
}

/* i and j are neighbours: within k/2 places of each other on the ring (everyone with k = 0) */
static int nbr_at(const moeh_secagg_cfg_t *cfg, const uint32_t *pos, uint32_t i, uint32_t j)
{
    return moeh_secagg_neighbour_slot(cfg, pos, i, j) >= 0;
}

void moeh_secagg_graph(const moeh_secagg_cfg_t *cfg, uint32_t *pos)
{
    MOEH_ASSERT(cfg->n >= 2 && cfg->n <= MOEH_SECAGG_MAX_CLIENTS);
    if (cfg->k == 0) {
        for (uint32_t i = 0; i < cfg->n; i++)
            pos[i] = i;
        return;
    }
    graph_positions(cfg, pos);
}

uint32_t moeh_secagg_degree(const moeh_secagg_cfg_t *cfg)
{
    return cfg->k ? cfg->k : cfg->n - 1;
}

int moeh_secagg_neighbour_slot(const moeh_secagg_cfg_t *cfg, const uint32_t *pos, uint32_t i,
                               uint32_t j)
{
    const uint32_t n = cfg->n, h = cfg->k / 2;
    if (i == j || i >= n || j >= n) return -1;
    if (cfg->k == 0) return (int)(j < i ? j : j - 1);
    uint32_t off = (pos[j] + n - pos[i]) % n;          /* j's place after i's on the ring, 1..n-1 */
    if (off <= h) return (int)(off - 1);               /* the k/2 after i */
    if (off >= n - h) return (int)(h + (n - off) - 1); /* the k/2 before i (disjoint: k < n) */
    return -1;
}

int moeh_secagg_neighbours(const moeh_secagg_cfg_t *cfg, uint32_t i, uint32_t j)
{
    uint32_t pos[MOEH_SECAGG_MAX_CLIENTS];
    MOEH_ASSERT(cfg->n >= 2 && cfg->n <= MOEH_SECAGG_MAX_CLIENTS && i < cfg->n && j < cfg->n);
    if (cfg->k == 0) return i != j;
    graph_positions(cfg, pos);
    return nbr_at(cfg, pos, i, j);
}

int moeh_secagg_pair_seed(uint8_t seed[MOEH_SECAGG_KEY_BYTES], const uint8_t my_sk[32],
                          const uint8_t my_pk[32], const uint8_t peer_pk[32], uint32_t me,
                          uint32_t peer, uint64_t round)
{
    static const char tag[] = "moeh-secagg-pair-v1";
    uint8_t q[crypto_scalarmult_BYTES], msg[sizeof tag - 1 + 8 + 4 + 4 + 64];
    int rc = -EINVAL;
    if (me == peer || crypto_scalarmult(q, my_sk, peer_pk) != 0) goto out;
    const uint8_t *pk_lo = me < peer ? my_pk : peer_pk, *pk_hi = me < peer ? peer_pk : my_pk;
    size_t o = 0;
    memcpy(msg, tag, sizeof tag - 1), o += sizeof tag - 1;
    moeh_sa_put_u64(msg + o, round), o += 8;
    moeh_sa_put_u32(msg + o, me < peer ? me : peer), o += 4;
    moeh_sa_put_u32(msg + o, me < peer ? peer : me), o += 4;
    memcpy(msg + o, pk_lo, 32), o += 32;
    memcpy(msg + o, pk_hi, 32), o += 32;
    MOEH_ASSERT(o == sizeof msg);
    rc = crypto_generichash(seed, MOEH_SECAGG_KEY_BYTES, msg, sizeof msg, q, sizeof q) == 0 ? 0
                                                                                            : -EIO;
out:
    sodium_memzero(q, sizeof q);
    return rc;
}

/* ---- GF(2^61 - 1) and Shamir ------------------------------------------------------------- */
static uint64_t f_add(uint64_t a, uint64_t b)
{
    uint64_t r = a + b; /* < 2^62 */
    return r >= P ? r - P : r;
}
static uint64_t f_sub(uint64_t a, uint64_t b)
{
    return a >= b ? a - b : a + P - b;
}
static uint64_t f_mul(uint64_t a, uint64_t b)
{
    unsigned __int128 m = (unsigned __int128)a * b;       /* < 2^122 */
    uint64_t r = (uint64_t)(m & P) + (uint64_t)(m >> 61); /* < 2^62 */
    r = (r & P) + (r >> 61);
    return r >= P ? r - P : r;
}
static uint64_t f_inv(uint64_t a) /* a != 0: a^(p-2) */
{
    uint64_t r = 1, e = P - 2;
    while (e) {
        if (e & 1) r = f_mul(r, a);
        a = f_mul(a, a);
        e >>= 1;
    }
    return r;
}
static uint64_t f_random(void)
{
    uint64_t v;
    do {
        randombytes_buf(&v, sizeof v);
        v &= P;
    } while (v == P);
    return v;
}

/* Element e of a 32-byte secret: 7 bytes (the last one 4), little-endian. */
static size_t elem_bytes(int e)
{
    return e < NE - 1 ? 7 : 32 - 7 * (NE - 1);
}

int moeh_secagg_shamir_split(moeh_secagg_share_t *out, const uint32_t *xs, size_t n, uint32_t t,
                             const uint8_t secret[32])
{
    if (t < 1 || t > n || n > MOEH_SECAGG_MAX_CLIENTS) return -EINVAL;
    for (size_t h = 0; h < n; h++) {
        if (xs[h] == 0 || xs[h] >= (UINT32_C(1) << 31)) return -EINVAL;
        for (size_t g = 0; g < h; g++)
            if (xs[g] == xs[h]) return -EINVAL;
    }
    /* coef[e * t + d]: coefficient of x^d of the polynomial of element e; coef[e * t] = secret */
    uint64_t *coef = sodium_malloc((size_t)NE * t * sizeof *coef);
    if (!coef) return -ENOMEM;
    for (int e = 0; e < NE; e++) {
        uint64_t s = 0;
        for (size_t b = 0; b < elem_bytes(e); b++)
            s |= (uint64_t)secret[7 * e + b] << (8 * b);
        coef[(size_t)e * t] = s;
        for (uint32_t d = 1; d < t; d++)
            coef[(size_t)e * t + d] = f_random();
    }
    for (size_t h = 0; h < n; h++) {
        out[h].x = xs[h];
        for (int e = 0; e < NE; e++) { /* Horner */
            uint64_t acc = 0;
            for (uint32_t d = t; d-- > 0;)
                acc = f_add(f_mul(acc, xs[h]), coef[(size_t)e * t + d]);
            out[h].y[e] = acc;
        }
    }
    sodium_free(coef);
    return 0;
}

int moeh_secagg_shamir_combine(uint8_t secret[32], const moeh_secagg_share_t *shares,
                               size_t n_shares, uint32_t t)
{
    uint64_t acc[NE] = {0};
    int rc = 0;
    memset(secret, 0, 32);
    if (t < 1) return -EINVAL;
    if (n_shares < t) return -EPERM;
    for (uint32_t j = 0; j < t; j++) {
        if (shares[j].x == 0) return -EINVAL;
        for (uint32_t m = 0; m < j; m++)
            if (shares[m].x == shares[j].x) return -EINVAL;
    }
    for (uint32_t j = 0; j < t; j++) {
        /* Lagrange basis at 0: prod_{m != j} x_m / (x_m - x_j) */
        uint64_t num = 1, den = 1;
        for (uint32_t m = 0; m < t; m++) {
            if (m == j) continue;
            num = f_mul(num, shares[m].x);
            den = f_mul(den, f_sub(shares[m].x, shares[j].x));
        }
        uint64_t lj = f_mul(num, f_inv(den));
        for (int e = 0; e < NE; e++) {
            if (shares[j].y[e] >= P) {
                rc = -EBADMSG;
                goto out;
            }
            acc[e] = f_add(acc[e], f_mul(lj, shares[j].y[e]));
        }
    }
    for (int e = 0; e < NE; e++) {
        if (acc[e] >> (8 * elem_bytes(e))) { /* not a chunk of any 32-byte secret */
            rc = -EBADMSG;
            goto out;
        }
        for (size_t b = 0; b < elem_bytes(e); b++)
            secret[7 * e + b] = (uint8_t)(acc[e] >> (8 * b));
    }
out:
    if (rc) sodium_memzero(secret, 32);
    sodium_memzero(acc, sizeof acc);
    return rc;
}

/* ---- client ------------------------------------------------------------------------------ */
enum { PH_CREATED, PH_SHARED, PH_MASKED, PH_REVEALED };
enum { ST_NONE = 0, ST_SURVIVED = 1, ST_DROPPED = 2 };

typedef uint64_t held_pair_t[2][NE]; /* [0] share of the owner's b, [1] of its s key */

struct moeh_secagg_client { /* sodium_malloc'd: it holds the secrets */
    moeh_secagg_cfg_t cfg;
    uint32_t id;
    int phase;
    moeh_secagg_ident_t *ident; /* the share key: borrowed, or owned if own_ident */
    int own_ident;
    uint8_t s_pk[32], s_sk[32], b[32];
    held_pair_t *held; /* sodium_malloc'd, n: shares held, of each owner */
    /* sodium_malloc'd, n: the session key of the share each neighbour sends here, drawn in
     * phase 1 with the key this client seals its own share for it with */
    uint8_t (*rx)[crypto_kx_SESSIONKEYBYTES];
    /* public state, one malloc'd block */
    moeh_secagg_pubkeys_t *keys;            /* n advertised keys (copied in phase 1) */
    uint8_t *nbr, *u1, *have, *u2, *status; /* n flags each */
};

static int client_alloc(const moeh_secagg_cfg_t *cfg, uint32_t id, moeh_secagg_client_t **out,
                        moeh_err_t *err)
{
    int rc = moeh_secagg_cfg_check(cfg, err);
    if (rc) return rc;
    if (id >= cfg->n)
        return moeh_errf(err, -EINVAL, "secagg: client id %u, expected < n = %u", id, cfg->n);
    moeh_secagg_client_t *c = sodium_malloc(sizeof *c);
    if (!c) return moeh_errf(err, -ENOMEM, "secagg: out of secure memory");
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->id = id;
    size_t n = cfg->n;
    c->held = sodium_malloc(n * sizeof *c->held);
    c->rx = sodium_malloc(n * sizeof *c->rx);
    uint8_t *pub = malloc(n * sizeof *c->keys + 5 * n);
    if (!c->held || !c->rx || !pub) {
        free(pub);
        moeh_secagg_client_destroy(&c);
        return moeh_errf(err, -ENOMEM, "secagg: out of memory");
    }
    sodium_memzero(c->held, n * sizeof *c->held);
    sodium_memzero(c->rx, n * sizeof *c->rx);
    memset(pub, 0, n * sizeof *c->keys + 5 * n);
    c->keys = (moeh_secagg_pubkeys_t *)pub;
    c->nbr = pub + n * sizeof *c->keys;
    c->u1 = c->nbr + n;
    c->have = c->u1 + n;
    c->u2 = c->have + n;
    c->status = c->u2 + n;
    uint32_t pos[MOEH_SECAGG_MAX_CLIENTS];
    graph_positions(cfg, pos);
    for (uint32_t j = 0; j < cfg->n; j++)
        c->nbr[j] = (uint8_t)nbr_at(cfg, pos, id, j);
    *out = c;
    return 0;
}

int moeh_secagg_client_create_with(const moeh_secagg_cfg_t *cfg, uint32_t id,
                                   moeh_secagg_ident_t *ident, moeh_secagg_client_t **out,
                                   moeh_err_t *err)
{
    moeh_secagg_client_t *c = NULL;
    int rc = client_alloc(cfg, id, &c, err);
    if (rc) return rc;
    if (!ident) {
        if ((rc = moeh_secagg_ident_create(&c->ident, err)) != 0) {
            moeh_secagg_client_destroy(&c);
            return rc;
        }
        c->own_ident = 1;
    } else
        c->ident = ident;
    randombytes_buf(c->s_sk, sizeof c->s_sk);
    randombytes_buf(c->b, sizeof c->b);
    if (crypto_scalarmult_base(c->s_pk, c->s_sk) != 0) {
        moeh_secagg_client_destroy(&c);
        return moeh_errf(err, -EIO, "secagg: key generation failed");
    }
    *out = c;
    return 0;
}

int moeh_secagg_client_create(const moeh_secagg_cfg_t *cfg, uint32_t id, moeh_secagg_client_t **out,
                              moeh_err_t *err)
{
    return moeh_secagg_client_create_with(cfg, id, NULL, out, err);
}

int moeh_secagg_client_create_seeded(const moeh_secagg_cfg_t *cfg, uint32_t id,
                                     const uint8_t seed[32], moeh_secagg_client_t **out,
                                     moeh_err_t *err)
{
    moeh_secagg_client_t *c = NULL;
    uint8_t cseed[crypto_kx_SEEDBYTES];
    int rc = client_alloc(cfg, id, &c, err);
    if (rc) return rc;
    if (crypto_generichash(cseed, sizeof cseed, (const uint8_t *)"c", 1, seed, 32) != 0 ||
        crypto_generichash(c->s_sk, 32, (const uint8_t *)"s", 1, seed, 32) != 0 ||
        crypto_generichash(c->b, 32, (const uint8_t *)"b", 1, seed, 32) != 0 ||
        crypto_scalarmult_base(c->s_pk, c->s_sk) != 0)
        rc = moeh_errf(err, -EIO, "secagg: key derivation failed");
    else if ((rc = moeh_secagg_ident_create_seeded(&c->ident, cseed, err)) == 0)
        c->own_ident = 1;
    if (rc) moeh_secagg_client_destroy(&c);
    sodium_memzero(cseed, sizeof cseed);
    *out = c;
    return rc;
}

void moeh_secagg_client_destroy(moeh_secagg_client_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_secagg_client_t *c = *self_p;
    if (c->own_ident) moeh_secagg_ident_destroy(&c->ident);
    sodium_free(c->held); /* NULL-safe; wipes */
    sodium_free(c->rx);
    free(c->keys);
    sodium_free(c); /* wipes the keys and b */
    *self_p = NULL;
}

void moeh_secagg_client_pubkeys(const moeh_secagg_client_t *c, moeh_secagg_pubkeys_t *out)
{
    moeh_secagg_ident_pk(c->ident, out->c_pk);
    memcpy(out->s_pk, c->s_pk, 32);
}

static void pack_pair(uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES], const moeh_secagg_share_t *sb,
                      const moeh_secagg_share_t *ss)
{
    for (int e = 0; e < NE; e++) {
        moeh_sa_put_u64(plain + 8 * e, sb->y[e]);
        moeh_sa_put_u64(plain + 8 * (NE + e), ss->y[e]);
    }
}

int moeh_secagg_client_share_keys(moeh_secagg_client_t *c, const moeh_secagg_pubkeys_t *keys,
                                  const uint8_t *present, uint8_t *cts, uint8_t *sent,
                                  moeh_err_t *err)
{
    const uint32_t n = c->cfg.n, me = c->id;
    uint32_t xs[MOEH_SECAGG_MAX_CLIENTS], holders[MOEH_SECAGG_MAX_CLIENTS], nh = 0;
    uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES];
    moeh_secagg_share_t *sh = NULL; /* [0, nh): shares of b; [nh, 2 nh): of s */
    int rc = 0;
    if (c->phase != PH_CREATED)
        return moeh_errf(err, -EALREADY, "secagg: client %u has shared its keys already", me);
    uint8_t my_c_pk[32];
    moeh_secagg_ident_pk(c->ident, my_c_pk);
    if (!present[me] || sodium_memcmp(keys[me].c_pk, my_c_pk, 32) != 0 ||
        sodium_memcmp(keys[me].s_pk, c->s_pk, 32) != 0)
        return moeh_errf(err, -EINVAL, "secagg: client %u's own keys are not in the key list", me);
    memset(sent, 0, n);
    for (uint32_t j = 0; j < n; j++)
        if (j == me || (c->nbr[j] && present[j])) {
            holders[nh] = j;
            xs[nh++] = j + 1;
        }
    if (nh < c->cfg.t)
        return moeh_errf(err, -EINVAL,
                         "secagg: only %u of client %u's group advertised keys, threshold %u", nh,
                         me, c->cfg.t);
    if (!(sh = sodium_malloc(2 * (size_t)nh * sizeof *sh)))
        return moeh_errf(err, -ENOMEM, "secagg: out of secure memory");
    if ((rc = moeh_secagg_shamir_split(sh, xs, nh, c->cfg.t, c->b)) != 0 ||
        (rc = moeh_secagg_shamir_split(sh + nh, xs, nh, c->cfg.t, c->s_sk)) != 0) {
        rc = moeh_errf(err, rc, "secagg: Shamir split failed: %s", moeh_strerror(rc));
        goto out;
    }
    for (uint32_t h = 0; h < nh; h++) {
        uint32_t j = holders[h];
        if (j == me) {
            memcpy(c->held[me][0], sh[h].y, sizeof c->held[me][0]);
            memcpy(c->held[me][1], sh[nh + h].y, sizeof c->held[me][1]);
            c->have[me] = 1;
            continue;
        }
        pack_pair(plain, &sh[h], &sh[nh + h]);
        uint8_t tx[crypto_kx_SESSIONKEYBYTES];
        rc = moeh_secagg_ident_session_keys(c->ident, keys[j].c_pk, me, j, c->cfg.round, c->s_pk,
                                            keys[j].s_pk, tx, c->rx[j]);
        if (rc == 0)
            rc = moeh_secagg_share_crypt_key(1, cts + (size_t)j * MOEH_SECAGG_SHARE_CT_BYTES, plain,
                                             c->cfg.round, me, j, tx);
        sodium_memzero(tx, sizeof tx);
        if (rc) {
            rc = moeh_errf(err, rc, "secagg: client %u's c key is not usable", j);
            memset(sent, 0, n);
            goto out;
        }
        sent[j] = 1;
    }
    memcpy(c->keys, keys, (size_t)n * sizeof *keys);
    memcpy(c->u1, present, n);
    for (uint32_t j = 0; j < n; j++)
        c->u1[j] = c->u1[j] != 0;
    c->phase = PH_SHARED;
out:
    sodium_memzero(plain, sizeof plain);
    sodium_free(sh);
    return rc;
}

int moeh_secagg_client_receive_share(moeh_secagg_client_t *c, uint32_t from,
                                     const uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES], moeh_err_t *err)
{
    uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES];
    int rc;
    if (c->phase != PH_SHARED)
        return moeh_errf(err, -EINVAL, "secagg: client %u does not accept shares now", c->id);
    if (from >= c->cfg.n || !c->nbr[from] || !c->u1[from])
        return moeh_errf(err, -EINVAL, "secagg: client %u expects no share from %u", c->id, from);
    if (c->have[from])
        return moeh_errf(err, -EINVAL, "secagg: client %u has %u's share already", c->id, from);
    /* the key of phase 1 (from is a neighbour in U1, so its c key was usable there) */
    rc = moeh_secagg_share_crypt_key(0, plain, ct, c->cfg.round, from, c->id, c->rx[from]);
    if (rc) {
        rc = moeh_errf(err, -EBADMSG, "secagg: the share from %u to %u does not authenticate", from,
                       c->id);
        goto out;
    }
    for (int e = 0; e < 2 * NE; e++)
        if (get_u64(plain + 8 * e) >= P) {
            rc = moeh_errf(err, -EBADMSG, "secagg: the share from %u is not a field element", from);
            goto out;
        }
    for (int e = 0; e < NE; e++) {
        c->held[from][0][e] = get_u64(plain + 8 * e);
        c->held[from][1][e] = get_u64(plain + 8 * (NE + e));
    }
    c->have[from] = 1;
out:
    sodium_memzero(plain, sizeof plain);
    return rc;
}

int moeh_secagg_client_mask(moeh_secagg_client_t *c, uint32_t *y, const uint32_t *x,
                            const uint8_t *u2, moeh_err_t *err)
{
    const uint32_t n = c->cfg.n, me = c->id;
    uint32_t ng = 1;
    if (c->phase != PH_SHARED)
        return moeh_errf(err, c->phase > PH_SHARED ? -EALREADY : -EINVAL,
                         "secagg: client %u cannot mask now", me);
    if (!u2[me]) return moeh_errf(err, -EINVAL, "secagg: client %u is not in U2", me);
    for (uint32_t j = 0; j < n; j++) {
        if (j == me || !c->nbr[j] || !u2[j]) continue;
        if (!c->have[j])
            return moeh_errf(err, -EINVAL, "secagg: U2 names %u, whose share %u never received", j,
                             me);
        ng++;
    }
    if (ng < c->cfg.t)
        return moeh_errf(err, -EINVAL, "secagg: only %u of client %u's group in U2, threshold %u",
                         ng, me, c->cfg.t);
    /* all seeds first (a bad key fails before y is touched), then one pass over y */
    uint8_t(*seeds)[MOEH_SECAGG_KEY_BYTES] = sodium_malloc((size_t)ng * MOEH_SECAGG_KEY_BYTES);
    int8_t sign[MOEH_SECAGG_MAX_CLIENTS];
    if (!seeds) return moeh_errf(err, -ENOMEM, "secagg: out of secure memory");
    size_t m = 0;
    memcpy(seeds[m], c->b, MOEH_SECAGG_KEY_BYTES);
    sign[m++] = 1;
    for (uint32_t j = 0; j < n; j++) {
        if (j == me || !c->nbr[j] || !u2[j]) continue;
        if (moeh_secagg_pair_seed(seeds[m], c->s_sk, c->s_pk, c->keys[j].s_pk, me, j,
                                  c->cfg.round) != 0) {
            sodium_free(seeds);
            return moeh_errf(err, -EINVAL, "secagg: client %u's s key is not usable", j);
        }
        sign[m++] = j > me ? 1 : -1;
    }
    MOEH_ASSERT(m == ng);
    if (y != x) memmove(y, x, c->cfg.len * sizeof *y);
    int rc = moeh_secagg_prg_add_many(y, c->cfg.len, (const uint8_t(*)[MOEH_SECAGG_KEY_BYTES])seeds,
                                      sign, m, c->cfg.round);
    sodium_free(seeds);
    if (rc) { /* nothing was added: y holds x in clear, which must not leave */
        if (y != x) sodium_memzero(y, c->cfg.len * sizeof *y);
        return moeh_errf(err, rc, "secagg: cannot expand the masks (%s)",
                         rc == -ENOSYS ? "OpenSSL provides no AES-256-CTR" : "out of memory");
    }
    for (uint32_t j = 0; j < n; j++)
        c->u2[j] = u2[j] != 0;
    c->phase = PH_MASKED;
    return 0;
}

/* Fills status[n] from a request; the checks shared by client and server.
 * -EINVAL (malformed), -EPERM (a client named twice: both of its secrets would be revealed). */
static int request_status(uint8_t *status, uint32_t n, const uint32_t *survivors,
                          size_t n_survivors, const uint32_t *dropped, size_t n_dropped,
                          moeh_err_t *err)
{
    memset(status, ST_NONE, n);
    for (size_t a = 0; a < n_survivors; a++) {
        if (survivors[a] >= n)
            return moeh_errf(err, -EINVAL, "secagg: survivor id %u out of range", survivors[a]);
        if (status[survivors[a]])
            return moeh_errf(err, -EINVAL, "secagg: survivor %u listed twice", survivors[a]);
        status[survivors[a]] = ST_SURVIVED;
    }
    for (size_t a = 0; a < n_dropped; a++) {
        if (dropped[a] >= n)
            return moeh_errf(err, -EINVAL, "secagg: dropped id %u out of range", dropped[a]);
        if (status[dropped[a]] == ST_SURVIVED)
            return moeh_errf(err, -EPERM,
                             "secagg: client %u listed as survivor and dropped: refusing to "
                             "reveal both its self mask and its key",
                             dropped[a]);
        if (status[dropped[a]])
            return moeh_errf(err, -EINVAL, "secagg: dropped %u listed twice", dropped[a]);
        status[dropped[a]] = ST_DROPPED;
    }
    return 0;
}

int moeh_secagg_client_reveal(moeh_secagg_client_t *c, const uint32_t *survivors,
                              size_t n_survivors, const uint32_t *dropped, size_t n_dropped,
                              moeh_secagg_reveal_t *out, size_t *n_out, moeh_err_t *err)
{
    const uint32_t n = c->cfg.n, me = c->id;
    uint8_t st[MOEH_SECAGG_MAX_CLIENTS];
    *n_out = 0;
    if (c->phase < PH_MASKED)
        return moeh_errf(err, -EINVAL, "secagg: client %u has not masked yet", me);
    int rc = request_status(st, n, survivors, n_survivors, dropped, n_dropped, err);
    if (rc) return rc;
    for (uint32_t j = 0; j < n; j++)
        if ((st[j] != ST_NONE) != (c->u2[j] != 0))
            return moeh_errf(err, -EINVAL, "secagg: the request does not partition U2 (client %u)",
                             j);
    if (st[me] != ST_SURVIVED)
        return moeh_errf(err, -EINVAL, "secagg: client %u is not among the survivors", me);
    if (n_survivors < c->cfg.t)
        return moeh_errf(err, -EPERM, "secagg: %zu survivors, fewer than t = %u", n_survivors,
                         c->cfg.t);
    if (c->phase == PH_REVEALED && memcmp(st, c->status, n) != 0)
        return moeh_errf(err, -EPERM,
                         "secagg: client %u answered a different unmask request already", me);
    size_t k = 0;
    for (uint32_t o = 0; o < n; o++) {
        if (!c->have[o] || st[o] == ST_NONE) continue;
        int which = st[o] == ST_SURVIVED ? 0 : 1;
        out[k].owner = o;
        out[k].holder = me;
        out[k].kind = which == 0 ? MOEH_SECAGG_REVEAL_B : MOEH_SECAGG_REVEAL_S;
        memcpy(out[k].y, c->held[o][which], sizeof out[k].y);
        k++;
    }
    memcpy(c->status, st, n);
    c->phase = PH_REVEALED;
    *n_out = k;
    return 0;
}

/* ---- server ------------------------------------------------------------------------------ */
int moeh_secagg_server_unmask(const moeh_secagg_cfg_t *cfg, const moeh_secagg_pubkeys_t *keys,
                              const uint32_t *survivors, size_t n_survivors,
                              const uint32_t *dropped, size_t n_dropped,
                              const moeh_secagg_reveal_t *reveals, size_t n_reveals, uint32_t *sum,
                              moeh_err_t *err)
{
    uint32_t pos[MOEH_SECAGG_MAX_CLIENTS], cnt[MOEH_SECAGG_MAX_CLIENTS],
        start[MOEH_SECAGG_MAX_CLIENTS + 1];
    uint8_t st[MOEH_SECAGG_MAX_CLIENTS], pk[32];
    size_t *order = NULL;
    uint8_t *secrets = NULL;        /* sodium_malloc'd: 32 bytes per client, b or s key */
    moeh_secagg_share_t *sh = NULL; /* sodium_malloc'd: t shares being combined */
    uint8_t(*seeds)[MOEH_SECAGG_KEY_BYTES] = NULL; /* sodium_malloc'd: n mask seeds */
    int rc = moeh_secagg_cfg_check(cfg, err);
    if (rc) return rc;
    const uint32_t n = cfg->n, t = cfg->t;
    if ((rc = request_status(st, n, survivors, n_survivors, dropped, n_dropped, err)) != 0)
        return rc;
    if (n_survivors < t)
        return moeh_errf(err, -EPERM,
                         "secagg: %zu survivors, fewer than t = %u: refusing to "
                         "unmask",
                         n_survivors, t);
    graph_positions(cfg, pos);
    /* every key that takes part must be usable before anything is touched */
    for (uint32_t j = 0; j < n; j++) {
        static const uint8_t probe[32] = {9};
        if (st[j] != ST_NONE && crypto_scalarmult(pk, probe, keys[j].s_pk) != 0)
            return moeh_errf(err, -EINVAL, "secagg: client %u's s key is of low order", j);
    }
    /* validate every reveal and bucket them by owner (counting sort) */
    memset(cnt, 0, sizeof cnt);
    for (size_t r = 0; r < n_reveals; r++) {
        const moeh_secagg_reveal_t *v = &reveals[r];
        if (v->owner >= n || v->holder >= n)
            return moeh_errf(err, -EINVAL, "secagg: reveal %zu names clients out of range", r);
        if (st[v->holder] != ST_SURVIVED)
            return moeh_errf(err, -EINVAL, "secagg: reveal %zu comes from %u, not a survivor", r,
                             v->holder);
        if (st[v->owner] == ST_NONE ||
            (v->owner != v->holder && !nbr_at(cfg, pos, v->owner, v->holder)))
            return moeh_errf(err, -EINVAL, "secagg: %u holds no share of %u", v->holder, v->owner);
        if (v->kind != (st[v->owner] == ST_SURVIVED ? MOEH_SECAGG_REVEAL_B : MOEH_SECAGG_REVEAL_S))
            return moeh_errf(err, -EPERM,
                             "secagg: reveal %zu is the wrong secret of client %u: refusing to "
                             "hold both",
                             r, v->owner);
        cnt[v->owner]++;
    }
    start[0] = 0;
    for (uint32_t o = 0; o < n; o++)
        start[o + 1] = start[o] + cnt[o];
    for (uint32_t o = 0; o < n; o++)
        if (st[o] != ST_NONE && cnt[o] < t)
            return moeh_errf(err, -EPERM,
                             "secagg: %u shares of client %u's %s, fewer than t = %u: refusing "
                             "to unmask",
                             cnt[o], o, st[o] == ST_SURVIVED ? "self mask" : "key", t);
    order = malloc((n_reveals ? n_reveals : 1) * sizeof *order);
    secrets = sodium_malloc((size_t)n * 32);
    sh = sodium_malloc((size_t)t * sizeof *sh);
    seeds = sodium_malloc((size_t)n * MOEH_SECAGG_KEY_BYTES);
    if (!order || !secrets || !sh || !seeds) {
        rc = moeh_errf(err, -ENOMEM, "secagg: out of memory");
        goto out;
    }
    {
        uint32_t fill[MOEH_SECAGG_MAX_CLIENTS];
        memcpy(fill, start, n * sizeof *fill);
        for (size_t r = 0; r < n_reveals; r++)
            order[fill[reveals[r].owner]++] = r;
    }
    for (uint32_t o = 0; o < n; o++) {
        if (st[o] == ST_NONE) continue;
        uint32_t k = 0;
        for (uint32_t a = start[o]; a < start[o + 1] && k < t; a++) {
            const moeh_secagg_reveal_t *v = &reveals[order[a]];
            for (uint32_t b = 0; b < k; b++)
                if (sh[b].x == v->holder + 1) {
                    rc = moeh_errf(err, -EINVAL, "secagg: %u revealed its share of %u twice",
                                   v->holder, o);
                    goto out;
                }
            sh[k].x = v->holder + 1;
            memcpy(sh[k].y, v->y, sizeof sh[k].y);
            k++;
        }
        rc = moeh_secagg_shamir_combine(secrets + (size_t)o * 32, sh, k, t);
        if (rc) {
            rc = moeh_errf(err, rc == -EPERM ? -EPERM : -EBADMSG,
                           "secagg: the shares of client %u do not reconstruct", o);
            goto out;
        }
        if (st[o] == ST_DROPPED && (crypto_scalarmult_base(pk, secrets + (size_t)o * 32) != 0 ||
                                    sodium_memcmp(pk, keys[o].s_pk, 32) != 0)) {
            rc = moeh_errf(err, -EBADMSG,
                           "secagg: the key reconstructed for client %u is not its own", o);
            goto out;
        }
    }
    /* remove the masks, one pass over sum per group of seeds; only the PRG can fail now (out of
     * memory), and then the sum is of no use (moeh_secagg.h) */
    {
        int8_t sign[MOEH_SECAGG_MAX_CLIENTS] = {0}; /* = {0}: gcc sees m == 0 as a read */
        size_t m = 0;
        for (uint32_t o = 0; o < n; o++)
            if (st[o] == ST_SURVIVED) {
                memcpy(seeds[m], secrets + (size_t)o * 32, 32);
                sign[m++] = -1;
            }
        rc = moeh_secagg_prg_add_many(sum, cfg->len, (const uint8_t(*)[MOEH_SECAGG_KEY_BYTES])seeds,
                                      sign, m, cfg->round);
        for (uint32_t d = 0; d < n && rc == 0; d++) {
            if (st[d] != ST_DROPPED) continue;
            m = 0;
            for (uint32_t j = 0; j < n; j++) {
                if (st[j] != ST_SURVIVED || !nbr_at(cfg, pos, d, j)) continue;
                rc = moeh_secagg_pair_seed(seeds[m], secrets + (size_t)d * 32, keys[d].s_pk,
                                           keys[j].s_pk, d, j, cfg->round);
                MOEH_ASSERT(rc == 0); /* keys probed above */
                /* survivor j added sign(j, d) PRG(s_jd): + if d > j */
                sign[m++] = d > j ? -1 : 1;
            }
            rc = moeh_secagg_prg_add_many(
                sum, cfg->len, (const uint8_t(*)[MOEH_SECAGG_KEY_BYTES])seeds, sign, m, cfg->round);
        }
        if (rc)
            rc = moeh_errf(err, rc, "secagg: cannot expand the masks (%s)",
                           rc == -ENOSYS ? "OpenSSL provides no AES-256-CTR" : "out of memory");
    }
out:
    sodium_memzero(pk, sizeof pk);
    sodium_free(seeds);
    sodium_free(sh);
    sodium_free(secrets);
    free(order);
    return rc;
}
