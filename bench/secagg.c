/* bench/secagg.c - cost of secure aggregation (fed/secagg.c) against plain summation.
 *
 * For n = 5, 10, 20 clients and L words per update (default 1,252,746, the federation model's
 * n_params + n_groups), in one process on one core:
 *   plain    the server adds n vectors mod 2^32 (what moeh_fedavg_add does per update);
 *   setup    key generation, Shamir sharing, share encryption and decryption, all clients;
 *   mask     every client masks its vector (1 self mask + n - 1 pairwise PRG expansions);
 *   unmask   reveals + the server's reconstruction and mask removal, with no client dropped
 *            and with one dropped after sharing keys (n - 1 more PRG expansions).
 * Every phase is the best of 3 runs. Ratios are to plain summation of the same round. Clients run
 * in parallel in a deployment, so "mask per client" is the latency a site adds. The table is
 * measured with each mask PRG engine this machine has (moeh_secagg_prg_set_engine: "vaes512",
 * "vaes", "openssl"), and the next lines give the ratio of mask per client, openssl over each.
 * Last, the key setup per client and session with fresh c keys (as before protocol 10) and with
 * share keys kept from an earlier session (a site agent's), n = 5, 10, 20 and 25 (k + 1 at 100
 * sites).
 * Usage: bench_secagg [L] */
#include "moeh_keys.h"
#include "moeh_secagg.h"

#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    double setup, mask, unmask;
} times_t;

/* Phases 0-1 of a session of cfg->n clients (share keys ids, or NULL: fresh ones): keys, Shamir
 * sharing, share encryption and decryption. cts has room for n * n ciphertexts. 0 or a negative
 * code (message in err); the clients made are in c either way. */
static int setup_session(const moeh_secagg_cfg_t *cfg, moeh_secagg_ident_t **ids,
                         moeh_secagg_client_t **c, moeh_secagg_pubkeys_t *keys, uint8_t *cts,
                         moeh_err_t *err)
{
    const uint32_t n = cfg->n;
    uint8_t present[32], sent[32];
    int rc;
    memset(present, 1, n);
    for (uint32_t i = 0; i < n; i++) {
        if ((rc = moeh_secagg_client_create_with(cfg, i, ids ? ids[i] : NULL, &c[i], err)) != 0)
            return rc;
        moeh_secagg_client_pubkeys(c[i], &keys[i]);
    }
    for (uint32_t i = 0; i < n; i++)
        if ((rc = moeh_secagg_client_share_keys(c[i], keys, present,
                                                cts + (size_t)i * n * MOEH_SECAGG_SHARE_CT_BYTES,
                                                sent, err)) != 0)
            return rc;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++)
            if (i != j &&
                (rc = moeh_secagg_client_receive_share(
                     c[j], i, cts + ((size_t)i * n + j) * MOEH_SECAGG_SHARE_CT_BYTES, err)) != 0)
                return rc;
    return 0;
}

/* One round with n clients, `drop` of them (the last ids) dropping after sharing keys.
 * Adds into sum; returns 0 or a negative code. */
static int one_round(uint32_t n, size_t L, uint32_t drop, const uint32_t *x, uint32_t *y,
                     uint32_t *sum, times_t *tm)
{
    moeh_secagg_cfg_t cfg = {.round = 1, .n = n, .t = n / 2 + 1, .len = L};
    moeh_err_t err = {{0}};
    moeh_secagg_client_t *c[32] = {0};
    moeh_secagg_pubkeys_t keys[32];
    moeh_secagg_reveal_t *rev = calloc((size_t)n * n, sizeof *rev);
    uint8_t u2[32];
    uint8_t *cts = malloc((size_t)n * n * MOEH_SECAGG_SHARE_CT_BYTES);
    uint32_t surv[32], dropped[32], ns = 0, nd = 0;
    size_t nrev = 0;
    int rc = -ENOMEM;
    if (!rev || !cts || n > 32) goto out;
    memset(u2, 1, n);
    double t0 = now_s();
    if ((rc = setup_session(&cfg, NULL, c, keys, cts, &err)) != 0) goto out;
    double t1 = now_s(), tmask = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i >= n - drop) {
            dropped[nd++] = i;
            continue;
        }
        surv[ns++] = i;
        double ta = now_s();
        if ((rc = moeh_secagg_client_mask(c[i], y, x, u2, &err)) != 0) goto out;
        tmask += now_s() - ta;
        for (size_t w = 0; w < L; w++) /* the server's plain addition: not secagg's cost */
            sum[w] += y[w];
    }
    double t2 = now_s();
    for (uint32_t a = 0; a < ns; a++) {
        size_t k = 0;
        if ((rc = moeh_secagg_client_reveal(c[surv[a]], surv, ns, dropped, nd, rev + nrev, &k,
                                            &err)) != 0)
            goto out;
        nrev += k;
    }
    rc = moeh_secagg_server_unmask(&cfg, keys, surv, ns, dropped, nd, rev, nrev, sum, &err);
    double t3 = now_s();
    tm->setup = t1 - t0;
    tm->mask = tmask;
    tm->unmask = t3 - t2;
out:
    if (rc) fprintf(stderr, "bench_secagg: %s (%s)\n", err.msg, moeh_strerror(rc));
    for (uint32_t i = 0; i < n && i < 32; i++)
        moeh_secagg_client_destroy(&c[i]);
    free(rev);
    free(cts);
    return rc;
}

/* The key setup of one session (keys, Shamir sharing, share encryption and decryption) of n
 * clients with share keys ids (NULL: fresh ones per client, as before protocol 10). Seconds, or
 * a negative value on an error. */
static double key_setup(uint32_t n, moeh_secagg_ident_t **ids, uint64_t round)
{
    moeh_secagg_cfg_t cfg = {.round = round, .n = n, .t = n / 2 + 1, .len = 1};
    moeh_err_t err = {{0}};
    moeh_secagg_client_t *c[32] = {0};
    moeh_secagg_pubkeys_t keys[32];
    uint8_t *cts = malloc((size_t)n * n * MOEH_SECAGG_SHARE_CT_BYTES);
    int rc = -ENOMEM;
    double t0 = now_s(), dt = -1;
    if (cts && n <= 32 && (rc = setup_session(&cfg, ids, c, keys, cts, &err)) == 0)
        dt = now_s() - t0;
    if (rc) fprintf(stderr, "bench_secagg: %s (%s)\n", err.msg, moeh_strerror(rc));
    for (uint32_t i = 0; i < n && i < 32; i++)
        moeh_secagg_client_destroy(&c[i]);
    free(cts);
    return dt;
}

/* Key setup per client and session with fresh c keys against share keys kept from a session
 * before (a site's agent keeps one for its life): best of 5 each. 0 or 1. */
static int key_setup_table(void)
{
    static const uint32_t ns[4] = {5, 10, 20, 25};
    printf("key setup per client and session, ms: fresh c keys / share keys kept\n");
    for (int a = 0; a < 4; a++) {
        uint32_t n = ns[a];
        moeh_secagg_ident_t *ids[32] = {0};
        moeh_err_t err = {{0}};
        double fresh = 1e9, kept = 1e9;
        int rc = 0;
        for (uint32_t i = 0; i < n && !rc; i++)
            rc = moeh_secagg_ident_create(&ids[i], &err);
        if (!rc && key_setup(n, ids, 1) < 0) rc = -1; /* the pair keys are agreed here */
        for (int rep = 0; rep < 5 && !rc; rep++) {    /* alternately: the same load for both */
            double f = key_setup(n, NULL, 2 + rep), k = f < 0 ? -1 : key_setup(n, ids, 2 + rep);
            if (f < 0 || k < 0) rc = -1;
            fresh = f < fresh ? f : fresh;
            kept = k < kept ? k : kept;
        }
        uint64_t agreed = ids[0] ? moeh_secagg_ident_agreements(ids[0]) : 0;
        for (uint32_t i = 0; i < n; i++)
            moeh_secagg_ident_destroy(&ids[i]);
        if (rc) return 1;
        printf("n = %2u (%2u neighbours): %.2f / %.2f ms, %.2fx (X25519 agreements by client 0 "
               "over 6 sessions: %llu)\n",
               n, n - 1, 1e3 * fresh / n, 1e3 * kept / n, fresh / kept, (unsigned long long)agreed);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: bench_secagg [L]\n  secure aggregation of n = 5, 10, 20 clients against "
               "plain summation, L words per\n  vector (default 1252746, the default model's "
               "update); one core; times in ms;\n  with each mask PRG engine of this machine "
               "(vaes512, vaes, openssl)\n");
        return 0;
    }
    char *end = NULL;
    size_t L = argc > 1 ? strtoull(argv[1], &end, 10) : 1252746;
    if (argc > 2 || (argc > 1 && (end == argv[1] || *end))) {
        fprintf(stderr, "bench_secagg: expected one number of words L, got '%s' (see --help)\n",
                argv[argc - 1]);
        return 2;
    }
    static const uint32_t ns[3] = {5, 10, 20};
    uint32_t *x = malloc(L * sizeof *x), *y = malloc(L * sizeof *y);
    uint32_t *sum = malloc(L * sizeof *sum), *plain = malloc(L * sizeof *plain);
    if (L == 0 || !x || !y || !sum || !plain || moeh_crypto_init() != 0) {
        fprintf(stderr, "bench_secagg: bad L or out of memory\n");
        return 1;
    }
    moeh_rng_t rng;
    moeh_rng_seed(&rng, 1);
    for (size_t w = 0; w < L; w++)
        x[w] = (uint32_t)moeh_rng_u64(&rng);
    printf("bench_secagg: L = %zu words, times in ms (one core)\n", L);
    printf("%8s %3s %9s %9s %9s %12s %9s %12s %12s %12s\n", "engine", "n", "plain", "setup", "mask",
           "mask/client", "unmask", "unmask-1drop", "(mask+unm)/", "per-client/");
    printf("%8s %3s %9s %9s %9s %12s %9s %12s %12s %12s\n", "", "", "", "", "", "", "", "", "plain",
           "plain-add");
    memset(y, 0, L * sizeof *y); /* touch every page before timing */
    memset(sum, 0, L * sizeof *sum);
    static const char *const engines[3] = {"vaes512", "vaes", "openssl"};
    double per_client[3][3] = {{0}};
    for (int e = 0; e < 3; e++)
        for (int a = 0; a < 3 && moeh_secagg_prg_set_engine(engines[e]) == 0; a++) {
            uint32_t n = ns[a];
            /* plain summation: best of 3 */
            double tp = 1e9;
            for (int rep = 0; rep < 3; rep++) {
                memset(plain, 0, L * sizeof *plain);
                double t0 = now_s();
                for (uint32_t i = 0; i < n; i++)
                    for (size_t w = 0; w < L; w++)
                        plain[w] += x[w];
                double dt = now_s() - t0;
                tp = dt < tp ? dt : tp;
            }
            times_t t0 = {1e9, 1e9, 1e9}, t1 = {1e9, 1e9, 1e9}, tr;
            for (int rep = 0; rep < 3; rep++) { /* best of 3 of each phase */
                memset(sum, 0, L * sizeof *sum);
                if (one_round(n, L, 0, x, y, sum, &tr) != 0) return 1;
                if (memcmp(sum, plain, L * sizeof *sum) != 0) {
                    fprintf(stderr, "bench_secagg: unmasked sum differs from the plain sum\n");
                    return 1;
                }
                t0.setup = tr.setup < t0.setup ? tr.setup : t0.setup;
                t0.mask = tr.mask < t0.mask ? tr.mask : t0.mask;
                t0.unmask = tr.unmask < t0.unmask ? tr.unmask : t0.unmask;
                memset(sum, 0, L * sizeof *sum);
                if (one_round(n, L, 1, x, y, sum, &tr) != 0) return 1;
                t1.unmask = tr.unmask < t1.unmask ? tr.unmask : t1.unmask;
            }
            printf("%8s %3u %9.2f %9.2f %9.1f %12.1f %9.1f %12.1f %12.1f %12.1f\n",
                   moeh_secagg_prg_engine(), n, 1e3 * tp, 1e3 * t0.setup, 1e3 * t0.mask,
                   1e3 * t0.mask / n, 1e3 * t0.unmask, 1e3 * t1.unmask, (t0.mask + t0.unmask) / tp,
                   (t0.mask / n) / (tp / n));
            per_client[e][a] = t0.mask / n;
        }
    for (int e = 0; e < 2; e++)
        for (int a = 0; a < 3 && per_client[e][a] > 0; a++)
            printf("n = %2u: mask per client, openssl / %s = %.2f\n", ns[a], engines[e],
                   per_client[2][a] / per_client[e][a]);
    (void)moeh_secagg_prg_set_engine(NULL);
    if (key_setup_table() != 0) return 1;
    free(x);
    free(y);
    free(sum);
    free(plain);
    return 0;
}
