/* secagg_server.c - the coordinator's side of secure aggregation (see moeh_secagg_server.h and
 * docs/secagg.md). Everything held here is public to the coordinator: keys, ciphertexts it
 * cannot open, revealed shares meant for it. */
#include "moeh_secagg_server.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct moeh_sa_server {
    moeh_sa_step_t step;
    moeh_secagg_cfg_t cfg;            /* cfg.round is the session id sent to the sites */
    uint32_t need;                    /* max(t, min_sites): fewer at any step aborts the attempt */
    moeh_secagg_pubkeys_t *keys;      /* (n) advertised keys */
    uint8_t *u1, *u2, *u3, *revealed; /* (n) flags: advertised, shared, masked update, revealed */
    uint32_t *pos, deg;               /* (n) the SecAgg+ graph; neighbours per site */
    uint8_t *cts;                     /* (n, deg, CT bytes): from i to j at ct_at(i, j) */
    uint8_t *ct_have;                 /* (n, deg) */
    moeh_secagg_reveal_t *reveals;    /* (n, deg + 1) at most: shares of neighbours and self */
    size_t n_reveals;
};

static void sa_free(moeh_sa_server_t *sa)
{
    free(sa->keys);
    free(sa->u1);
    free(sa->u2);
    free(sa->u3);
    free(sa->revealed);
    free(sa->pos);
    free(sa->cts);
    free(sa->ct_have);
    free(sa->reveals);
    memset(sa, 0, sizeof *sa);
}

int moeh_sa_server_create(moeh_sa_server_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

void moeh_sa_server_destroy(moeh_sa_server_t **self_p)
{
    if (!self_p || !*self_p) return;
    sa_free(*self_p);
    free(*self_p);
    *self_p = NULL;
}

int moeh_sa_server_open(moeh_sa_server_t *sa, uint32_t n, uint32_t k,
                        const moeh_secagg_plan_cfg_t *plan, uint32_t min_sites, size_t len,
                        int *k_dropped)
{
    sa_free(sa);
    sa->step = MOEH_SA_KEYS;
    *k_dropped = 0;
    if (n < 2 || n > MOEH_WIRE_SECAGG_MAX) return -ERANGE;
    sa->keys = calloc(n, sizeof *sa->keys);
    sa->u1 = calloc(n, 1), sa->u2 = calloc(n, 1), sa->u3 = calloc(n, 1);
    sa->revealed = calloc(n, 1);
    sa->pos = calloc(n, sizeof *sa->pos);
    if (!sa->keys || !sa->u1 || !sa->u2 || !sa->u3 || !sa->revealed || !sa->pos) {
        sa_free(sa);
        sa->step = MOEH_SA_KEYS;
        return -ENOMEM;
    }
    do
        randombytes_buf(&sa->cfg.round, sizeof sa->cfg.round);
    while (sa->cfg.round == 0);
    randombytes_buf(&sa->cfg.graph_seed, sizeof sa->cfg.graph_seed);
    /* SecAgg+ (--secagg-k): each site masks with k neighbours and shares its secrets with
     * them, t-of-(k + 1). With k + 1 >= n everyone is everyone's neighbour: classic SecAgg. */
    uint32_t t = 0;
    if (k == MOEH_SECAGG_K_AUTO) {
        moeh_secagg_plan_t p;
        if (moeh_secagg_plan(n, plan, &p) != 0) { /* the configuration check rules this out */
            sa_free(sa);
            sa->step = MOEH_SA_KEYS;
            return -EINVAL;
        }
        k = p.k, t = p.t;
    } else if (k && k >= n - 1) {
        *k_dropped = 1;
        k = 0;
    }
    sa->cfg.n = n;
    sa->cfg.k = k;
    sa->cfg.t = t ? t : (k ? k + 1 : n) / 2 + 1;
    sa->cfg.len = len;
    sa->need = sa->cfg.t > min_sites ? sa->cfg.t : min_sites;
    moeh_err_t err = {0};
    MOEH_ASSERT(moeh_secagg_cfg_check(&sa->cfg, &err) == 0);
    /* the graph once, and per site room for its neighbours only: n x k ciphertexts and
     * reveals, not n x n (25 MB of ciphertexts at 512 sites) */
    moeh_secagg_graph(&sa->cfg, sa->pos);
    sa->deg = moeh_secagg_degree(&sa->cfg);
    size_t nd = (size_t)n * sa->deg;
    sa->cts = malloc(nd * MOEH_SECAGG_SHARE_CT_BYTES);
    sa->ct_have = calloc(nd, 1);
    sa->reveals = malloc((nd + n) * sizeof *sa->reveals);
    if (!sa->cts || !sa->ct_have || !sa->reveals) {
        sa_free(sa);
        sa->step = MOEH_SA_KEYS;
        return -ENOMEM;
    }
    return 0;
}

/* j's slot among i's neighbours, -1 if j is not one */
static int slot(const moeh_sa_server_t *sa, uint32_t i, uint32_t j)
{
    return moeh_secagg_neighbour_slot(&sa->cfg, sa->pos, i, j);
}

void moeh_sa_server_off(moeh_sa_server_t *sa)
{
    sa->step = MOEH_SA_OFF;
}

moeh_sa_step_t moeh_sa_server_step(const moeh_sa_server_t *sa)
{
    return sa->step;
}

const moeh_secagg_cfg_t *moeh_sa_server_cfg(const moeh_sa_server_t *sa)
{
    return &sa->cfg;
}

uint32_t moeh_sa_server_need(const moeh_sa_server_t *sa)
{
    return sa->need;
}

int moeh_sa_server_in_u1(const moeh_sa_server_t *sa, uint32_t id)
{
    return id < sa->cfg.n && sa->u1[id];
}

int moeh_sa_server_in_u2(const moeh_sa_server_t *sa, uint32_t id)
{
    return id < sa->cfg.n && sa->u2[id];
}

int moeh_sa_server_in_u3(const moeh_sa_server_t *sa, uint32_t id)
{
    return id < sa->cfg.n && sa->u3[id];
}

void moeh_sa_server_progress(const moeh_sa_server_t *sa, const uint8_t *waiting, uint32_t *got,
                             uint32_t *pending)
{
    const uint8_t *in = sa->step == MOEH_SA_KEYS     ? NULL
                        : sa->step == MOEH_SA_SHARES ? sa->u1
                        : sa->step == MOEH_SA_MASKED ? sa->u2
                                                     : sa->u3;
    const uint8_t *done = sa->step == MOEH_SA_KEYS     ? sa->u1
                          : sa->step == MOEH_SA_SHARES ? sa->u2
                          : sa->step == MOEH_SA_MASKED ? sa->u3
                                                       : sa->revealed;
    *got = *pending = 0;
    for (uint32_t i = 0; i < sa->cfg.n; i++) {
        if (in && !in[i]) continue;
        *got += done[i] != 0;
        *pending += !done[i] && waiting[i];
    }
}

void moeh_sa_server_counts(const moeh_sa_server_t *sa, size_t *n_survivors, size_t *n_dropped)
{
    *n_survivors = *n_dropped = 0;
    for (uint32_t i = 0; i < sa->cfg.n; i++) {
        *n_survivors += sa->u3[i] != 0;
        *n_dropped += sa->u2[i] && !sa->u3[i];
    }
}

int moeh_sa_server_advertise(moeh_sa_server_t *sa, uint32_t id, const Moeh__SecaggAdvertise *a,
                             const char **what)
{
    MOEH_ASSERT(id < sa->cfg.n);
    if (sa->u1[id]) {
        *what = "secagg_advertise: duplicate";
        return -ESTALE;
    }
    memcpy(sa->keys[id].c_pk, a->c_pk.data, MOEH_SECAGG_KEY_BYTES);
    memcpy(sa->keys[id].s_pk, a->s_pk.data, MOEH_SECAGG_KEY_BYTES);
    sa->u1[id] = 1;
    return 0;
}

int moeh_sa_server_shares(moeh_sa_server_t *sa, uint32_t i, const Moeh__SecaggShares *sh,
                          const char **what)
{
    uint32_t n = sa->cfg.n;
    MOEH_ASSERT(i < n);
    if (!sa->u1[i] || sa->u2[i] || sh->n_u2 != 0) {
        *what = "secagg_shares: duplicate, or from a site that did not advertise keys";
        return -ESTALE;
    }
    /* exactly one ciphertext for every neighbour in U1 (peers arrive strictly increasing) */
    size_t want = 0;
    for (uint32_t j = 0; j < n; j++)
        want += sa->u1[j] && slot(sa, i, j) >= 0;
    int ok = sh->n_ciphers == want;
    for (size_t k = 0; ok && k < sh->n_ciphers; k++) {
        uint32_t j = sh->ciphers[k]->peer;
        ok = j < n && sa->u1[j] && slot(sa, i, j) >= 0;
    }
    if (!ok) {
        *what = "secagg_shares: expected one ciphertext for each neighbour that advertised keys";
        return -EBADMSG;
    }
    for (size_t k = 0; k < sh->n_ciphers; k++) {
        size_t at = (size_t)i * sa->deg + (size_t)slot(sa, i, sh->ciphers[k]->peer);
        memcpy(sa->cts + at * MOEH_SECAGG_SHARE_CT_BYTES, sh->ciphers[k]->ct.data,
               MOEH_SECAGG_SHARE_CT_BYTES);
        sa->ct_have[at] = 1;
    }
    sa->u2[i] = 1;
    return 0;
}

int moeh_sa_server_may_mask(const moeh_sa_server_t *sa, uint32_t id)
{
    return id < sa->cfg.n && sa->u2[id] && !sa->u3[id] ? 0 : -ESTALE;
}

void moeh_sa_server_masked(moeh_sa_server_t *sa, uint32_t id)
{
    MOEH_ASSERT(id < sa->cfg.n);
    sa->u3[id] = 1;
}

int moeh_sa_server_reveal(moeh_sa_server_t *sa, uint32_t h, const Moeh__SecaggReveal *r,
                          const char **what)
{
    uint32_t n = sa->cfg.n;
    MOEH_ASSERT(h < n);
    if (!sa->u3[h] || sa->revealed[h]) {
        *what = "secagg_reveal: duplicate, or from a site that was not asked";
        return -ESTALE;
    }
    /* b shares of survivors, s shares of dropped clients only: never both of one owner; and
     * only of owners whose shares h holds (itself and its neighbours: owners are strictly
     * increasing, so at most deg + 1 of them) */
    for (size_t k = 0; k < r->n_shares; k++) {
        const Moeh__SecaggShare *x = r->shares[k];
        if (x->owner >= n || (x->owner != h && slot(sa, x->owner, h) < 0)) {
            *what = "secagg_reveal: a share of a site that is not the sender's neighbour";
            return -EBADMSG;
        }
        int want_b = sa->u3[x->owner];
        int want_s = sa->u2[x->owner] && !sa->u3[x->owner];
        if (!(x->kind == MOEH__SECAGG_KIND__SECAGG_B ? want_b : want_s)) {
            *what = "secagg_reveal: a share of a kind this session did not ask for";
            return -EBADMSG;
        }
    }
    MOEH_ASSERT(sa->n_reveals + r->n_shares <= (size_t)n * (sa->deg + 1));
    for (size_t k = 0; k < r->n_shares; k++) {
        moeh_secagg_reveal_t *o = &sa->reveals[sa->n_reveals++];
        o->owner = r->shares[k]->owner;
        o->holder = h;
        o->kind = r->shares[k]->kind == MOEH__SECAGG_KIND__SECAGG_B ? MOEH_SECAGG_REVEAL_B
                                                                    : MOEH_SECAGG_REVEAL_S;
        memcpy(o->y, r->shares[k]->y, sizeof o->y);
    }
    sa->revealed[h] = 1;
    return 0;
}

/* Sends Keys (U1) to every connected member of U1. */
static void send_keys(moeh_sa_server_t *sa, const uint8_t *connected, moeh_sa_send_fn send,
                      void *ctx)
{
    uint32_t n = sa->cfg.n, m = 0;
    Moeh__SecaggKey *k = calloc(n, sizeof *k);
    Moeh__SecaggKey **kp = calloc(n, sizeof *kp);
    if (!k || !kp) {
        MOEH_ERROR("out of memory for the secure-aggregation key list");
        goto out; /* the sites miss their keys; the step times out and the attempt is retried */
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!sa->u1[i]) continue;
        moeh__secagg_key__init(&k[m]);
        k[m].id = i;
        k[m].c_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, sa->keys[i].c_pk};
        k[m].s_pk = (ProtobufCBinaryData){MOEH_SECAGG_KEY_BYTES, sa->keys[i].s_pk};
        kp[m] = &k[m];
        m++;
    }
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__SecaggKeys ks = MOEH__SECAGG_KEYS__INIT;
    ks.session = sa->cfg.round;
    ks.n_keys = m;
    ks.keys = kp;
    moeh_env_secagg_keys(&env, &ks);
    for (uint32_t i = 0; i < n; i++)
        if (sa->u1[i] && connected[i]) send(ctx, i, &env);
out:
    free(k);
    free(kp);
}

/* Forwards to every connected member j of U2 the ciphertexts addressed to j by U2, and U2. */
static void forward_shares(moeh_sa_server_t *sa, const uint8_t *connected, moeh_sa_send_fn send,
                           void *ctx)
{
    uint32_t n = sa->cfg.n, nu2 = 0;
    Moeh__SecaggCipher *cs = calloc(n, sizeof *cs);
    Moeh__SecaggCipher **cp = calloc(n, sizeof *cp);
    uint32_t *u2 = calloc(n, sizeof *u2);
    if (!cs || !cp || !u2) {
        MOEH_ERROR("out of memory for forwarding the secure-aggregation shares");
        goto out;
    }
    for (uint32_t i = 0; i < n; i++)
        if (sa->u2[i]) u2[nu2++] = i;
    for (uint32_t j = 0; j < n; j++) {
        if (!sa->u2[j] || !connected[j]) continue;
        size_t m = 0;
        for (uint32_t i = 0; i < n; i++) {
            int sl = slot(sa, i, j);
            size_t at = (size_t)i * sa->deg + (size_t)(sl < 0 ? 0 : sl);
            if (sl < 0 || !sa->u2[i] || !sa->ct_have[at]) continue;
            moeh__secagg_cipher__init(&cs[m]);
            cs[m].peer = i;
            cs[m].ct = (ProtobufCBinaryData){MOEH_SECAGG_SHARE_CT_BYTES,
                                             sa->cts + at * MOEH_SECAGG_SHARE_CT_BYTES};
            cp[m] = &cs[m];
            m++;
        }
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
        sh.session = sa->cfg.round;
        sh.n_ciphers = m;
        sh.ciphers = cp;
        sh.n_u2 = nu2;
        sh.u2 = u2;
        moeh_env_secagg_shares(&env, &sh);
        send(ctx, j, &env);
    }
out:
    free(cs);
    free(cp);
    free(u2);
}

/* Lists U3 (survivors) and D = U2 \ U3 (dropped) in increasing order. */
static void lists(const moeh_sa_server_t *sa, uint32_t *surv, size_t *ns, uint32_t *drop,
                  size_t *nd)
{
    *ns = *nd = 0;
    for (uint32_t i = 0; i < sa->cfg.n; i++) {
        if (sa->u3[i])
            surv[(*ns)++] = i;
        else if (sa->u2[i])
            drop[(*nd)++] = i;
    }
}

int moeh_sa_server_advance(moeh_sa_server_t *sa, const uint8_t *connected, moeh_sa_send_fn send,
                           void *ctx, uint32_t *sum, moeh_err_t *err)
{
    if (sa->step == MOEH_SA_KEYS) {
        sa->step = MOEH_SA_SHARES;
        send_keys(sa, connected, send, ctx);
        return 0;
    }
    if (sa->step == MOEH_SA_SHARES) {
        sa->step = MOEH_SA_MASKED;
        forward_shares(sa, connected, send, ctx);
        return 0;
    }
    uint32_t surv[MOEH_WIRE_SECAGG_MAX], drop[MOEH_WIRE_SECAGG_MAX];
    size_t ns, nd;
    lists(sa, surv, &ns, drop, &nd);
    if (sa->step == MOEH_SA_MASKED) {
        /* from here on masked vectors are refused: the dropped sites' s keys may be revealed */
        sa->step = MOEH_SA_UNMASK;
        Moeh__Envelope env = MOEH__ENVELOPE__INIT;
        Moeh__SecaggUnmask um = MOEH__SECAGG_UNMASK__INIT;
        um.session = sa->cfg.round;
        um.n_survivors = ns;
        um.survivors = surv;
        um.n_dropped = nd;
        um.dropped = drop;
        moeh_env_secagg_unmask(&env, &um);
        for (size_t k = 0; k < ns; k++)
            if (connected[surv[k]]) send(ctx, surv[k], &env);
        return 0;
    }
    MOEH_ASSERT(sa->step == MOEH_SA_UNMASK);
    int rc = moeh_secagg_server_unmask(&sa->cfg, sa->keys, surv, ns, drop, nd, sa->reveals,
                                       sa->n_reveals, sum, err);
    if (rc) return rc;
    sa->step = MOEH_SA_OFF;
    return 1;
}
