/* test_secagg_keys.c - share encryption and the sites' share keys (fed/secagg_keys.c,
 * docs/secagg.md, "Share encryption").
 *
 * Known answers: three sealed shares equal what tests/secagg_kat.py computes with Python's
 * `cryptography` and hashlib, one of them with the ids in the opposite order to the c keys (the
 * lower key, not the lower id, plays the kx client). A share sealed for (i, j) in session r opens
 * only as (i, j, r) by j: not as (i, k), not from k, not in session r + 1, not reversed, not with
 * either side's s key of another session (so a repeated session id does not repeat a key), not
 * tampered. Share keys across sessions: six sites whose clients share one key each run three
 * whole sessions (shares, masks, unmasking with a dropout; the third with the first's session id):
 * every sum is exact, each site runs 5 agreements in the first session and none after, and a share
 * of the first session does not open in the third. A restarted site (new share key) costs each
 * peer one agreement; a client with a key of its own works beside the shared ones; two sites with
 * the same c key still agree (by id, uncached); past MOEH_SECAGG_MAX_CLIENTS peer keys the cache
 * starts again and the keys it gives are still right. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_secagg.h"
#include "test_util.h"

#include "secagg_keys.h" /* fed/'s private session keys: the cache test */

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

static void keys_of(moeh_secagg_pubkeys_t *k, uint8_t c_sk[32], int c_byte, int s_byte)
{
    uint8_t s_sk[32];
    memset(c_sk, c_byte, 32);
    memset(s_sk, s_byte, 32);
    assert_int_equal(crypto_scalarmult_base(k->c_pk, c_sk), 0);
    assert_int_equal(crypto_scalarmult_base(k->s_pk, s_sk), 0);
}

static void test_share_seal_kat(void **state)
{
    (void)state;
    moeh_secagg_pubkeys_t a, b, c, a2, b2;
    uint8_t ska[32], skb[32], skc[32], want[32];
    uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES], back[MOEH_SECAGG_SHARE_PLAIN_BYTES];
    uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES], ct2[MOEH_SECAGG_SHARE_CT_BYTES];
    keys_of(&a, ska, 0x11, 0x44);  /* site A */
    keys_of(&b, skb, 0x22, 0x55);  /* site B */
    keys_of(&c, skc, 0x33, 0x66);  /* site C */
    keys_of(&a2, ska, 0x11, 0x77); /* A in another session: same c key, another s key */
    keys_of(&b2, skb, 0x22, 0x78);
    for (int i = 0; i < (int)sizeof plain; i++)
        plain[i] = (uint8_t)i;
    /* A as 3 -> B as 1; B as 1 -> A as 3; A as 1 -> B as 3 (A's c key is the higher) */
    assert_int_equal(moeh_secagg_share_seal(ct, plain, 42, 3, 1, &a, &b, ska), 0);
    assert_int_equal(moeh_test_hex(want, "e3a3383e70fbdcd5a3107180854058ec", 16), 0);
    assert_int_equal(moeh_test_hex(want + 16, "a04abda1ec582501a8b6b0fa7e8038c6", 16), 0);
    assert_memory_equal(ct, want, 16);
    assert_memory_equal(ct + MOEH_SECAGG_SHARE_CT_BYTES - 16, want + 16, 16);
    assert_int_equal(moeh_secagg_share_seal(ct2, plain, 42, 1, 3, &b, &a, skb), 0);
    assert_int_equal(moeh_test_hex(want, "7663785f4bdce2e87dbfbf00a3f8c5fe", 16), 0);
    assert_memory_equal(ct2, want, 16);
    assert_int_equal(moeh_secagg_share_seal(ct2, plain, 42, 1, 3, &a, &b, ska), 0);
    assert_int_equal(moeh_test_hex(want, "b55bb0208266b6fe64577bd8376b8a1c", 16), 0);
    assert_memory_equal(ct2, want, 16);
    assert_int_equal(moeh_secagg_share_open(back, ct2, 42, 1, 3, &a, &b, skb), 0);
    assert_memory_equal(back, plain, sizeof plain);

    /* B opens what A sealed for (3, 1, session 42) */
    memset(back, 0, sizeof back);
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 1, &a, &b, skb), 0);
    assert_memory_equal(back, plain, sizeof plain);
    /* not as (3, 4) by C or by B (the pair is in the data) */
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 4, &a, &c, skc), -EBADMSG);
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 4, &a, &b, skb), -EBADMSG);
    /* not from C, not in session 43, not the other direction */
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 1, &c, &b, skb), -EBADMSG);
    assert_int_equal(moeh_secagg_share_open(back, ct, 43, 3, 1, &a, &b, skb), -EBADMSG);
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 1, 3, &b, &a, ska), -EBADMSG);
    /* not with either side's s key of another session: the same session id and c keys seal
     * under another key then */
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 1, &a2, &b, skb), -EBADMSG);
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 1, &a, &b2, skb), -EBADMSG);
    assert_int_equal(moeh_secagg_share_seal(ct2, plain, 42, 3, 1, &a2, &b, ska), 0);
    assert_memory_not_equal(ct, ct2, 16);
    /* a wrong open leaves no plaintext behind */
    for (size_t i = 0; i < sizeof back; i++)
        assert_int_equal(back[i], 0);
    ct[5] ^= 1;
    assert_int_equal(moeh_secagg_share_open(back, ct, 42, 3, 1, &a, &b, skb), -EBADMSG);
    /* a low-order peer key is refused */
    memset(c.c_pk, 0, 32);
    assert_int_equal(moeh_secagg_share_seal(ct, plain, 42, 3, 1, &a, &c, ska), -EINVAL);
}

/* ---- whole sessions with share keys ------------------------------------------------------- */
enum { N = 6, L = 300 };

typedef struct {
    moeh_secagg_client_t *c[N];
    moeh_secagg_pubkeys_t keys[N];
    uint8_t cts[N][N][MOEH_SECAGG_SHARE_CT_BYTES], sent[N][N];
} session_t;

/* Phases 0-1 of session `round` for the clients of `ids` (NULL: a key of the client's own). */
static void session_share(session_t *s, uint64_t round, moeh_secagg_ident_t **ids)
{
    moeh_err_t err = {{0}};
    moeh_secagg_cfg_t cfg = {.round = round, .n = N, .t = 4, .len = L};
    uint8_t present[N];
    memset(s, 0, sizeof *s);
    memset(present, 1, sizeof present);
    for (uint32_t i = 0; i < N; i++) {
        assert_int_equal(moeh_secagg_client_create_with(&cfg, i, ids[i], &s->c[i], &err), 0);
        moeh_secagg_client_pubkeys(s->c[i], &s->keys[i]);
    }
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(moeh_secagg_client_share_keys(s->c[i], s->keys, present, s->cts[i][0],
                                                       s->sent[i], &err),
                         0);
    for (uint32_t i = 0; i < N; i++)
        for (uint32_t j = 0; j < N; j++)
            if (j != i) {
                assert_true(s->sent[i][j]);
                assert_int_equal(moeh_secagg_client_receive_share(s->c[j], i, s->cts[i][j], &err),
                                 0);
            }
}

/* Phases 2-3 with client `drop` dropping before its masked input: the sum must be exact. */
static void session_finish(session_t *s, uint64_t round, uint32_t drop, uint64_t seed)
{
    moeh_err_t err = {{0}};
    moeh_secagg_cfg_t cfg = {.round = round, .n = N, .t = 4, .len = L};
    uint32_t x[L], y[L], sum[L] = {0}, want[L] = {0}, surv[N], dropped[1] = {drop}, ns = 0;
    uint8_t u2[N];
    moeh_secagg_reveal_t rev[N * N];
    size_t nrev = 0;
    moeh_rng_t rng;
    moeh_rng_seed(&rng, seed);
    memset(u2, 1, sizeof u2);
    for (uint32_t i = 0; i < N; i++) {
        if (i == drop) continue;
        surv[ns++] = i;
        for (size_t w = 0; w < L; w++)
            x[w] = (uint32_t)moeh_rng_u64(&rng);
        assert_int_equal(moeh_secagg_client_mask(s->c[i], y, x, u2, &err), 0);
        for (size_t w = 0; w < L; w++)
            sum[w] += y[w], want[w] += x[w];
    }
    assert_memory_not_equal(sum, want, sizeof sum);
    for (uint32_t a = 0; a < ns; a++) {
        size_t k = 0;
        assert_int_equal(
            moeh_secagg_client_reveal(s->c[surv[a]], surv, ns, dropped, 1, rev + nrev, &k, &err),
            0);
        nrev += k;
    }
    assert_int_equal(
        moeh_secagg_server_unmask(&cfg, s->keys, surv, ns, dropped, 1, rev, nrev, sum, &err), 0);
    assert_memory_equal(sum, want, sizeof sum);
    for (uint32_t i = 0; i < N; i++)
        moeh_secagg_client_destroy(&s->c[i]);
}

static void test_share_keys_across_sessions(void **state)
{
    (void)state;
    moeh_err_t err = {{0}};
    moeh_secagg_ident_t *ids[N];
    session_t *s1 = malloc(sizeof *s1), *s3 = malloc(sizeof *s3);
    assert_non_null(s1);
    assert_non_null(s3);
    for (int i = 0; i < N; i++) {
        assert_int_equal(moeh_secagg_ident_create(&ids[i], &err), 0);
        assert_int_equal(moeh_secagg_ident_agreements(ids[i]), 0);
    }
    session_share(s1, 77, ids);
    for (int i = 0; i < N; i++) /* one agreement per peer, not two */
        assert_int_equal(moeh_secagg_ident_agreements(ids[i]), N - 1);
    uint8_t first[MOEH_SECAGG_SHARE_CT_BYTES]; /* 0 -> 1 in the first session */
    memcpy(first, s1->cts[0][1], sizeof first);
    session_finish(s1, 77, 2, 1);

    session_share(s1, 78, ids); /* a second session: every pair key from the cache */
    for (int i = 0; i < N; i++)
        assert_int_equal(moeh_secagg_ident_agreements(ids[i]), N - 1);
    session_finish(s1, 78, 5, 2);

    /* the first session's id again (a hostile coordinator): fresh s keys, so fresh session keys */
    session_share(s3, 77, ids);
    for (int i = 0; i < N; i++)
        assert_int_equal(moeh_secagg_ident_agreements(ids[i]), N - 1);
    assert_memory_not_equal(first, s3->cts[0][1], sizeof first);
    moeh_secagg_client_t *late = NULL; /* 1 of session 3, before its share from 0 came */
    moeh_secagg_cfg_t cfg = {.round = 77, .n = N, .t = 4, .len = L};
    moeh_secagg_pubkeys_t keys[N];
    uint8_t present[N], cts[N][MOEH_SECAGG_SHARE_CT_BYTES], sent[N];
    memset(present, 1, sizeof present);
    memcpy(keys, s3->keys, sizeof keys);
    assert_int_equal(moeh_secagg_client_create_with(&cfg, 1, ids[1], &late, &err), 0);
    moeh_secagg_client_pubkeys(late, &keys[1]);
    assert_int_equal(moeh_secagg_client_share_keys(late, keys, present, cts[0], sent, &err), 0);
    assert_int_equal(moeh_secagg_client_receive_share(late, 0, first, &err), -EBADMSG);
    moeh_secagg_client_destroy(&late);
    session_finish(s3, 77, 0, 3);

    /* site 4 restarts (a new share key) and site 3 runs a client with a key of its own: each
     * other site agrees once with each new key */
    moeh_secagg_ident_destroy(&ids[4]);
    assert_null(ids[4]);
    assert_int_equal(moeh_secagg_ident_create(&ids[4], &err), 0);
    moeh_secagg_ident_t *keep3 = ids[3];
    ids[3] = NULL;
    session_share(s1, 79, ids);
    ids[3] = keep3;
    for (int i = 0; i < N; i++)
        assert_int_equal(moeh_secagg_ident_agreements(ids[i]), i == 3 || i == 4 ? N - 1 : N + 1);
    session_finish(s1, 79, 1, 4);
    for (int i = 0; i < N; i++) {
        moeh_secagg_ident_destroy(&ids[i]);
        assert_null(ids[i]);
    }
    moeh_secagg_ident_destroy(NULL);
    free(s1);
    free(s3);
}

/* Two sites with the same c key (a site copying another's public key gets nothing it can open,
 * but must not break the agreement): the ids decide the kx roles, and nothing is cached. */
static void test_equal_share_keys(void **state)
{
    (void)state;
    moeh_err_t err = {{0}};
    uint8_t seed[crypto_kx_SEEDBYTES], s_a[32], s_b[32];
    uint8_t tx0[32], rx0[32], tx1[32], rx1[32];
    moeh_secagg_ident_t *a = NULL, *b = NULL;
    memset(seed, 7, sizeof seed);
    memset(s_a, 1, sizeof s_a);
    memset(s_b, 2, sizeof s_b);
    assert_int_equal(moeh_secagg_ident_create_seeded(&a, seed, &err), 0);
    assert_int_equal(moeh_secagg_ident_create_seeded(&b, seed, &err), 0);
    uint8_t pk[32];
    moeh_secagg_ident_pk(b, pk);
    for (int rep = 1; rep <= 2; rep++) {
        assert_int_equal(moeh_secagg_ident_session_keys(a, pk, 0, 1, 9, s_a, s_b, tx0, rx0), 0);
        assert_int_equal(moeh_secagg_ident_session_keys(b, pk, 1, 0, 9, s_b, s_a, tx1, rx1), 0);
        assert_memory_equal(tx0, rx1, 32);
        assert_memory_equal(rx0, tx1, 32);
        assert_memory_not_equal(tx0, rx0, 32);
        assert_int_equal(moeh_secagg_ident_agreements(a), (uint64_t)rep); /* not cached */
    }
    assert_int_equal(moeh_secagg_ident_session_keys(a, pk, 0, 0, 9, s_a, s_b, tx0, rx0), -EINVAL);
    moeh_secagg_ident_destroy(&a);
    moeh_secagg_ident_destroy(&b);
}

/* Past the cache's size: it starts again, and every key it gives is the one computed without it. */
static void test_cache_overflow(void **state)
{
    (void)state;
    enum { PEERS = MOEH_SECAGG_MAX_CLIENTS + 100 };
    moeh_err_t err = {{0}};
    moeh_secagg_ident_t *me = NULL;
    uint8_t(*pk)[32] = malloc(PEERS * sizeof *pk), sk[32], my_sk[32];
    uint8_t s_me[32], s_peer[32], tx[32], rx[32], ct[MOEH_SECAGG_SHARE_CT_BYTES];
    uint8_t plain[MOEH_SECAGG_SHARE_PLAIN_BYTES] = {1, 2, 3}, back[sizeof plain];
    assert_non_null(pk);
    memset(my_sk, 9, sizeof my_sk);
    assert_int_equal(moeh_secagg_ident_create_seeded(&me, my_sk, &err), 0);
    moeh_secagg_pubkeys_t mine, theirs;
    moeh_secagg_ident_pk(me, mine.c_pk);
    randombytes_buf(s_me, sizeof s_me);
    randombytes_buf(s_peer, sizeof s_peer);
    memcpy(mine.s_pk, s_me, 32);
    memcpy(theirs.s_pk, s_peer, 32);
    uint8_t sk0[32];
    for (uint32_t p = 0; p < PEERS; p++) {
        assert_int_equal(crypto_kx_keypair(pk[p], sk), 0);
        if (p == 0) memcpy(sk0, sk, 32);
        assert_int_equal(moeh_secagg_ident_session_keys(me, pk[p], 0, 1, 5, s_me, s_peer, tx, rx),
                         0);
        assert_int_equal(moeh_secagg_ident_agreements(me), (uint64_t)p + 1);
    }
    /* the first peer key was forgotten when the cache started again: agreed once more, and the
     * share sealed with the keys the cache now gives opens with the peer's own computation */
    assert_int_equal(moeh_secagg_ident_session_keys(me, pk[0], 0, 1, 5, s_me, s_peer, tx, rx), 0);
    assert_int_equal(moeh_secagg_ident_agreements(me), (uint64_t)PEERS + 1);
    assert_int_equal(moeh_secagg_ident_session_keys(me, pk[0], 0, 1, 5, s_me, s_peer, tx, rx), 0);
    assert_int_equal(moeh_secagg_ident_agreements(me), (uint64_t)PEERS + 1); /* cached again */
    assert_int_equal(moeh_secagg_share_crypt_key(1, ct, plain, 5, 0, 1, tx), 0);
    memcpy(theirs.c_pk, pk[0], 32);
    assert_int_equal(moeh_secagg_share_open(back, ct, 5, 0, 1, &mine, &theirs, sk0), 0);
    assert_memory_equal(back, plain, sizeof plain);
    /* and the last peer key, met after the restart, is still cached */
    assert_int_equal(
        moeh_secagg_ident_session_keys(me, pk[PEERS - 1], 0, 1, 5, s_me, s_peer, tx, rx), 0);
    assert_int_equal(moeh_secagg_ident_agreements(me), (uint64_t)PEERS + 1);
    moeh_secagg_ident_destroy(&me);
    sodium_memzero(sk, sizeof sk);
    free(pk);
}

MOEH_TEST_MAIN(setup, NULL, cmocka_unit_test(test_share_seal_kat),
               cmocka_unit_test(test_share_keys_across_sessions),
               cmocka_unit_test(test_equal_share_keys), cmocka_unit_test(test_cache_overflow))
