/* test_wire_secagg.c - the secure-aggregation messages (docs/secagg.md) and RoundStart.secagg,
 * and the granted-upload messages: round trips, then every count, size, order, session and limit
 * rule broken once (a table of {name, body + mutation, substring of the message}). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

/* ---- secure aggregation (docs/secagg.md) ------------------------------------------------ */

/* Every secagg body, with room for up to 4 list entries. */
typedef struct {
    Moeh__Envelope env;
    Moeh__SecaggAdvertise ad;
    Moeh__SecaggKeys keys;
    Moeh__SecaggKey key[4], *keyp[4];
    Moeh__SecaggShares sh;
    Moeh__SecaggCipher ci[4], *cip[4];
    uint32_t u2[4];
    Moeh__SecaggUnmask um;
    uint32_t surv[4], drop[4];
    Moeh__SecaggReveal rv;
    Moeh__SecaggShare share[4], *sharep[4];
    uint64_t y[4][MOEH_SECAGG_SHARE_ELEMS];
    uint8_t pk[2][MOEH_SECAGG_KEY_BYTES];
    uint8_t ct[MOEH_SECAGG_SHARE_CT_BYTES];
} sa_msg_t;

static void sa_init(sa_msg_t *m, Moeh__MsgType type)
{
    memset(m, 0, sizeof *m);
    moeh__envelope__init(&m->env);
    for (size_t i = 0; i < MOEH_SECAGG_KEY_BYTES; i++)
        m->pk[0][i] = (uint8_t)(i + 1), m->pk[1][i] = (uint8_t)(200 - i);
    for (size_t i = 0; i < MOEH_SECAGG_SHARE_CT_BYTES; i++)
        m->ct[i] = (uint8_t)(i * 7);
    m->env.type = type;
    switch (type) {
    case MOEH__MSG_TYPE__SECAGG_ADVERTISE:
        moeh__secagg_advertise__init(&m->ad);
        m->ad.session = 0x1122334455667788ull;
        m->ad.c_pk = (ProtobufCBinaryData){32, m->pk[0]};
        m->ad.s_pk = (ProtobufCBinaryData){32, m->pk[1]};
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE;
        m->env.secagg_advertise = &m->ad;
        break;
    case MOEH__MSG_TYPE__SECAGG_KEYS:
        moeh__secagg_keys__init(&m->keys);
        for (uint32_t i = 0; i < 3; i++) {
            moeh__secagg_key__init(&m->key[i]);
            m->key[i].id = 2 * i;
            m->key[i].c_pk = (ProtobufCBinaryData){32, m->pk[0]};
            m->key[i].s_pk = (ProtobufCBinaryData){32, m->pk[1]};
            m->keyp[i] = &m->key[i];
        }
        m->keys.session = 9;
        m->keys.n_keys = 3;
        m->keys.keys = m->keyp;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_KEYS;
        m->env.secagg_keys = &m->keys;
        break;
    case MOEH__MSG_TYPE__SECAGG_SHARES:
        moeh__secagg_shares__init(&m->sh);
        for (uint32_t i = 0; i < 2; i++) {
            moeh__secagg_cipher__init(&m->ci[i]);
            m->ci[i].peer = i + 1;
            m->ci[i].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES, m->ct};
            m->cip[i] = &m->ci[i];
        }
        m->u2[0] = 0, m->u2[1] = 1, m->u2[2] = 2;
        m->sh.session = 9;
        m->sh.n_ciphers = 2;
        m->sh.ciphers = m->cip;
        m->sh.n_u2 = 3;
        m->sh.u2 = m->u2;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES;
        m->env.secagg_shares = &m->sh;
        break;
    case MOEH__MSG_TYPE__SECAGG_UNMASK:
        moeh__secagg_unmask__init(&m->um);
        m->surv[0] = 0, m->surv[1] = 2, m->surv[2] = 3, m->drop[0] = 1;
        m->um.session = 9;
        m->um.n_survivors = 3;
        m->um.survivors = m->surv;
        m->um.n_dropped = 1;
        m->um.dropped = m->drop;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_UNMASK;
        m->env.secagg_unmask = &m->um;
        break;
    case MOEH__MSG_TYPE__SECAGG_REVEAL:
        moeh__secagg_reveal__init(&m->rv);
        for (uint32_t i = 0; i < 2; i++) {
            moeh__secagg_share__init(&m->share[i]);
            m->share[i].owner = i;
            m->share[i].kind = i ? MOEH__SECAGG_KIND__SECAGG_S : MOEH__SECAGG_KIND__SECAGG_B;
            for (size_t k = 0; k < MOEH_SECAGG_SHARE_ELEMS; k++)
                m->y[i][k] = MOEH_SECAGG_PRIME - 1 - k - 10 * i;
            m->share[i].n_y = MOEH_SECAGG_SHARE_ELEMS;
            m->share[i].y = m->y[i];
            m->sharep[i] = &m->share[i];
        }
        m->rv.session = 9;
        m->rv.n_shares = 2;
        m->rv.shares = m->sharep;
        m->env.body_case = MOEH__ENVELOPE__BODY_SECAGG_REVEAL;
        m->env.secagg_reveal = &m->rv;
        break;
    default:
        fail();
    }
}

/* Packs m (no frames) and decodes it; returns the code, *out owns the envelope on success. */
static int sa_roundtrip(sa_msg_t *m, Moeh__Envelope **out, moeh_err_t *err)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&m->env, NULL, 0, &hdr, &len), 0);
    int rc = moeh_wire_decode(&k_lim, hdr, len, NULL, 0, out, err);
    free(hdr);
    return rc;
}

static void sa_reject(sa_msg_t *m, const char *needle)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    assert_int_equal(moeh_wire_pack(&m->env, NULL, 0, &hdr, &len), 0);
    check_reject_raw(&k_lim, hdr, len, NULL, 0, -EBADMSG, needle);
    free(hdr);
}

static void check_accept_env(Moeh__Envelope *env)
{
    uint8_t *hdr = NULL;
    size_t len = 0;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(moeh_wire_pack(env, NULL, 0, &hdr, &len), 0);
    int rc = moeh_wire_decode(&k_lim, hdr, len, NULL, 0, &e, &err);
    if (rc) print_error("unexpected rejection %d: %s\n", rc, err.msg);
    assert_int_equal(rc, 0);
    moeh__envelope__free_unpacked(e, NULL);
    free(hdr);
}

/* A short key for the key-length cases. */
static uint8_t k_short_key[31];

/* One reject (or accept) case of a secagg message: a type's valid body, then one rule broken;
 * refused with -EBADMSG and `needle` (code 0: accepted). */
typedef struct {
    const char *name;
    void (*make)(sa_msg_t *m);
    int code;
    const char *needle;
} sa_case_t;

static void sa_run_cases(const sa_case_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sa_msg_t m;
        c[i].make(&m);
        g_wire_case = c[i].name;
        if (c[i].code == 0)
            check_accept_env(&m.env);
        else
            sa_reject(&m, c[i].needle);
    }
    g_wire_case = NULL;
}

static void test_roundtrip_secagg(void **state)
{
    sa_msg_t m;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_advertise->session, 0x1122334455667788ull);
    assert_memory_equal(e->secagg_advertise->c_pk.data, m.pk[0], 32);
    assert_memory_equal(e->secagg_advertise->s_pk.data, m.pk[1], 32);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_KEYS);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_keys->n_keys, 3);
    assert_int_equal(e->secagg_keys->keys[2]->id, 4);
    assert_memory_equal(e->secagg_keys->keys[1]->s_pk.data, m.pk[1], 32);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_SHARES);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_shares->n_ciphers, 2);
    assert_int_equal(e->secagg_shares->ciphers[1]->peer, 2);
    assert_memory_equal(e->secagg_shares->ciphers[0]->ct.data, m.ct, sizeof m.ct);
    assert_int_equal(e->secagg_shares->n_u2, 3);
    moeh__envelope__free_unpacked(e, NULL);
    m.sh.n_u2 = 0; /* a site's own shares carry no U2 */
    check_accept_env(&m.env);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_unmask->n_survivors, 3);
    assert_int_equal(e->secagg_unmask->survivors[2], 3);
    assert_int_equal(e->secagg_unmask->dropped[0], 1);
    moeh__envelope__free_unpacked(e, NULL);

    sa_init(&m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    assert_int_equal(sa_roundtrip(&m, &e, &err), 0);
    assert_int_equal(e->secagg_reveal->n_shares, 2);
    assert_int_equal(e->secagg_reveal->shares[1]->kind, MOEH__SECAGG_KIND__SECAGG_S);
    assert_memory_equal(e->secagg_reveal->shares[1]->y, m.y[1], sizeof m.y[1]);
    moeh__envelope__free_unpacked(e, NULL);
    m.rv.n_shares = 0; /* nothing to reveal is a valid answer */
    check_accept_env(&m.env);

    /* RoundStart{TRAIN} with secagg parameters, and the masked update's session */
    msg_t r;
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    sp.session = 77, sp.n = 5, sp.t = 3, sp.graph_seed = 99, sp.id = 4;
    mk_round_start(&r);
    r.rs.secagg = &sp;
    assert_int_equal(roundtrip(&r, &k_lim, &e, &err), 0);
    assert_non_null(e->round_start->secagg);
    assert_int_equal(e->round_start->secagg->session, 77);
    assert_int_equal(e->round_start->secagg->n, 5);
    assert_int_equal(e->round_start->secagg->t, 3);
    assert_int_equal(e->round_start->secagg->graph_seed, 99);
    assert_int_equal(e->round_start->secagg->id, 4);
    moeh__envelope__free_unpacked(e, NULL);
    mk_update(&r);
    r.upd.secagg_session = 77;
    assert_int_equal(roundtrip(&r, &k_lim, &e, &err), 0);
    assert_int_equal(e->update->secagg_session, 77);
    moeh__envelope__free_unpacked(e, NULL);
}

static void c_secagg_checks_0(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    /* sessions are never 0 */
    m->ad.session = 0;
}

static void c_secagg_checks_1(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m->keys.session = 0;
}

static void c_secagg_checks_2(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m->sh.session = 0;
}

static void c_secagg_checks_3(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m->um.session = 0;
}

static void c_secagg_checks_4(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m->rv.session = 0;
}

static void c_secagg_checks_5(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    /* keys of exactly 32 bytes */
    m->ad.c_pk = (ProtobufCBinaryData){31, k_short_key};
}

static void c_secagg_checks_6(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    m->ad.s_pk = (ProtobufCBinaryData){0, NULL};
}

static void c_secagg_checks_7(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m->key[1].s_pk = (ProtobufCBinaryData){31, k_short_key};
}

static void c_secagg_checks_8(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_KEYS);
    /* key lists: 2.. entries, ids strictly increasing and below the wire limit */
    m->keys.n_keys = 1;
}

static void c_secagg_checks_9(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m->key[2].id = 2; /* repeats id 2 */
}

static void c_secagg_checks_10(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_KEYS);
    m->key[2].id = MOEH_WIRE_SECAGG_MAX;
}

static void c_secagg_checks_11(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_SHARES);
    /* shares: ciphertexts of exactly 96 bytes, peers increasing, at least one */
    m->ci[1].ct.len = MOEH_SECAGG_SHARE_CT_BYTES - 1;
}

static void c_secagg_checks_12(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m->ci[1].peer = 1;
}

static void c_secagg_checks_13(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m->sh.n_ciphers = 0;
}

static void c_secagg_checks_14(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_SHARES);
    m->u2[2] = 0;
}

static void c_secagg_checks_15(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    /* unmask: disjoint sorted lists, at least 2 survivors */
    m->drop[0] = 2;
}

static void c_secagg_checks_16(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m->um.n_survivors = 1;
}

static void c_secagg_checks_17(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_UNMASK);
    m->surv[1] = 0;
}

static void c_secagg_checks_18(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    /* reveal: known kind, 5 elements below p, owners increasing */
    m->share[0].kind = MOEH__SECAGG_KIND__SECAGG_KIND_UNSPECIFIED;
}

static void c_secagg_checks_19(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m->share[1].n_y = 4;
}

static void c_secagg_checks_20(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m->y[0][3] = MOEH_SECAGG_PRIME;
}

static void c_secagg_checks_21(sa_msg_t *m)
{
    sa_init(m, MOEH__MSG_TYPE__SECAGG_REVEAL);
    m->share[1].owner = 0;
}

static const sa_case_t k_secagg_checks[] = {
    {"ad.session = 0", c_secagg_checks_0, -EBADMSG, "secagg_advertise.session"},
    {"keys.session = 0", c_secagg_checks_1, -EBADMSG, "secagg_keys.session"},
    {"sh.session = 0", c_secagg_checks_2, -EBADMSG, "secagg_shares.session"},
    {"um.session = 0", c_secagg_checks_3, -EBADMSG, "secagg_unmask.session"},
    {"rv.session = 0", c_secagg_checks_4, -EBADMSG, "secagg_reveal.session"},
    {"secagg_advertise.c_pk: 31 bytes", c_secagg_checks_5, -EBADMSG,
     "secagg_advertise.c_pk: 31 bytes"},
    {"secagg_advertise.s_pk: 0 bytes", c_secagg_checks_6, -EBADMSG,
     "secagg_advertise.s_pk: 0 bytes"},
    {"secagg_keys.keys.s_pk", c_secagg_checks_7, -EBADMSG, "secagg_keys.keys.s_pk"},
    {"keys.n_keys = 1", c_secagg_checks_8, -EBADMSG, "secagg_keys.keys: 1 entries"},
    {"key[2].id = 2", c_secagg_checks_9, -EBADMSG, "strictly increasing"},
    {"key[2].id = MOEH_WIRE_SECAGG_MAX", c_secagg_checks_10, -EBADMSG, "secagg_keys.keys.id[2]"},
    {"ci[1].ct.len = MOEH_SECAGG_SHARE_CT_BYTES - 1", c_secagg_checks_11, -EBADMSG,
     "secagg_shares.ciphers.ct: 95 bytes"},
    {"ci[1].peer = 1", c_secagg_checks_12, -EBADMSG, "secagg_shares.ciphers.peer[1]"},
    {"sh.n_ciphers = 0", c_secagg_checks_13, -EBADMSG, "secagg_shares.ciphers: 0 entries"},
    {"u2[2] = 0", c_secagg_checks_14, -EBADMSG, "secagg_shares.u2[2]"},
    {"drop[0] = 2", c_secagg_checks_15, -EBADMSG, "id 2 is both a survivor and dropped"},
    {"um.n_survivors = 1", c_secagg_checks_16, -EBADMSG, "secagg_unmask.survivors: 1"},
    {"surv[1] = 0", c_secagg_checks_17, -EBADMSG, "secagg_unmask.survivors[1]"},
    {"share[0].kind = MOEH__SECAGG_KIND__SECAGG_KIND_UNSPECIFIED", c_secagg_checks_18, -EBADMSG,
     "secagg_reveal.shares[0].kind"},
    {"share[1].n_y = 4", c_secagg_checks_19, -EBADMSG, "secagg_reveal.shares[1].y: 4 elements"},
    {"y[0][3] = MOEH_SECAGG_PRIME", c_secagg_checks_20, -EBADMSG,
     "secagg_reveal.shares[0].y[3]: not an element"},
    {"share[1].owner = 0", c_secagg_checks_21, -EBADMSG, "secagg_reveal.shares.owner[1]"},
};

static void test_secagg_checks(void **state)
{
    sa_run_cases(k_secagg_checks, sizeof k_secagg_checks / sizeof k_secagg_checks[0]);
}

/* No tensor frames on a secagg message; RoundStart.secagg. */
static void test_secagg_frames_and_params(void **state)
{
    sa_msg_t m;
    sa_init(&m, MOEH__MSG_TYPE__SECAGG_ADVERTISE);
    {
        uint32_t w = 1;
        moeh_frame_t f = {.name = "update", .dtype = MOEH__DTYPE__U32, .data = &w, .count = 1};
        uint8_t *hdr = NULL;
        size_t len = 0;
        assert_int_equal(moeh_wire_pack(&m.env, &f, 1, &hdr, &len), 0);
        moeh_iov_t iov = {&w, 4};
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "expected none");
        free(hdr);
    }

    /* RoundStart.secagg: any phase (each sums its own vector), a session, 2 <= n <= limit,
     * id < n, t > n / 2 */
    msg_t r;
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    sp.session = 77, sp.n = 5, sp.t = 3, sp.id = 4;
    mk_round_start(&r);
    r.rs.secagg = &sp;
    r.rs.task = MOEH__ROUND_TASK__EVALUATE;
    check_accept(&r, &k_lim);
    r.rs.task = MOEH__ROUND_TASK__TRAIN;
    sp.session = 0;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg.session");
    sp.session = 77, sp.id = 5;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 5");
    sp.id = 0, sp.n = 1;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 1");
    sp.n = MOEH_WIRE_SECAGG_MAX + 1, sp.t = sp.n;
    check_reject(&r, &k_lim, -EBADMSG, "round_start.secagg: n 513");
    sp.n = 5, sp.t = 2; /* t must exceed n / 2 */
    check_reject(&r, &k_lim, -EBADMSG, "threshold t = 2");
    sp.t = 3, sp.k = 3; /* SecAgg+ k is even */
    check_reject(&r, &k_lim, -EBADMSG, "k = 3 neighbours");
    sp.k = 0;
    moeh_wire_limits_t none = {0};
    check_reject(&r, &none, -EBADMSG, "round_start.secagg: before the model was negotiated");
    check_accept(&r, &k_lim);
}

/* SecaggMasked: a session, a known task, and one U32 frame "masked" of exactly the length
 * proto/moeh_secsum.h gives that task under the negotiated limits. */
static void test_secagg_masked(void **state)
{
    const Moeh__RoundTask tasks[3] = {MOEH__ROUND_TASK__TRAIN, MOEH__ROUND_TASK__STATS,
                                      MOEH__ROUND_TASK__EVALUATE};
    size_t want[3] = {N_PARAMS + N_GROUPS + 3 * MOEH_SECSUM_FIX_WORDS,
                      3 * N_NORM * MOEH_SECSUM_FIX_WORDS,
                      N_HIST + (N_GATE + MOEH_N_COMBOS + 2) * MOEH_SECSUM_FIX_WORDS};
    uint32_t *w = calloc(want[2] + 1, sizeof(uint32_t));
    for (size_t i = 0; i < want[2] + 1; i++)
        w[i] = 0x9e3779b9u * (uint32_t)i; /* masked words look like anything */
    for (int k = 0; k < 3; k++) {
        assert_int_equal(moeh_wire_secsum_len(&k_lim, tasks[k]), want[k]);
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggMasked sm = MOEH__SECAGG_MASKED__INIT;
        sm.session = 0x77, sm.round = 3, sm.model_version = 8, sm.task = tasks[k];
        env.type = MOEH__MSG_TYPE__SECAGG_MASKED;
        env.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED;
        env.secagg_masked = &sm;
        moeh_frame_t f = {.name = "masked", .dtype = MOEH__DTYPE__U32, .data = w, .count = want[k]};
        uint8_t *hdr = NULL;
        size_t len = 0;
        moeh_iov_t iov = {w, want[k] * 4};
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        Moeh__Envelope *e = NULL;
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_wire_decode(&k_lim, hdr, len, &iov, 1, &e, &err), 0);
        assert_int_equal(e->secagg_masked->task, tasks[k]);
        assert_int_equal(e->secagg_masked->model_version, 8);
        moeh__envelope__free_unpacked(e, NULL);
        free(hdr);
        /* one word short or long */
        for (int d = -1; d <= 1; d += 2) {
            f.count = want[k] + d, iov.len = f.count * 4;
            assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
            check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "frame 'masked' has");
            free(hdr);
        }
        f.count = want[k], iov.len = want[k] * 4;
        /* not negotiated yet */
        moeh_wire_limits_t none = {0};
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&none, hdr, len, &iov, 1, -EBADMSG, "before the model was negotiated");
        free(hdr);
        /* session 0, unknown task */
        sm.session = 0;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "secagg_masked.session");
        free(hdr);
        sm.session = 0x77, sm.task = MOEH__ROUND_TASK__TASK_UNSPECIFIED;
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "secagg_masked.task");
        free(hdr);
        /* a frame of another name or dtype */
        sm.task = tasks[k];
        f.name = "update";
        assert_int_equal(moeh_wire_pack(&env, &f, 1, &hdr, &len), 0);
        check_reject_raw(&k_lim, hdr, len, &iov, 1, -EBADMSG, "expected 'masked'");
        free(hdr);
    }
    free(w);
}

/* Granted uploads: UploadReady and UploadGrant carry a training round (>= 1), a model version
 * and a session (0: plain), and no frame; RoundStart.grant_uploads only with TRAIN. */
static void test_upload_grant_messages(void **state)
{
    msg_t m;
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    mk_upload_ready(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPLOAD_READY);
    assert_int_equal(e->upload_ready->round, 3);
    assert_int_equal(e->upload_ready->model_version, 8);
    assert_int_equal(e->upload_ready->session, 0x77);
    moeh__envelope__free_unpacked(e, NULL);
    m.ready.session = 0; /* plain */
    check_accept(&m, &k_lim);
    moeh_wire_limits_t none = {0}; /* nothing negotiated is needed */
    check_accept(&m, &none);
    m.ready.round = 0; /* the statistics' reply (protocol 7: every phase's reply is granted) */
    check_accept(&m, &none);

    mk_upload_grant(&m);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPLOAD_GRANT);
    assert_int_equal(e->upload_grant->round, 3);
    assert_int_equal(e->upload_grant->session, 0);
    moeh__envelope__free_unpacked(e, NULL);
    m.grant.round = 0;
    check_accept(&m, &k_lim);
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__UPLOAD_READY), "upload_ready");
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__UPLOAD_GRANT), "upload_grant");
    assert_string_equal(moeh_msg_type_name(1000), "unknown");

    mk_round_start(&m);
    m.rs.grant_uploads = 1;
    check_accept(&m, &k_lim);
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_true(e->round_start->grant_uploads);
    moeh__envelope__free_unpacked(e, NULL);
    m.rs.task = MOEH__ROUND_TASK__EVALUATE; /* every phase grants its replies (protocol 7) */
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    assert_true(e->round_start->grant_uploads);
    moeh__envelope__free_unpacked(e, NULL);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_roundtrip_secagg),
               cmocka_unit_test(test_secagg_checks),
               cmocka_unit_test(test_secagg_frames_and_params),
               cmocka_unit_test(test_secagg_masked), cmocka_unit_test(test_upload_grant_messages))
