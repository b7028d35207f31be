/* test_secsum.c - the vectors each phase sums (fed/moeh_secsum.h):
 *  - the wide fixed-point values: integers below 2^53 exact, reals rounded to 2^-64 once,
 *    out-of-range values refused, and the decoded sum of 1024 sites' words equal to the exact
 *    sum of their fixed-point integers (computed here in 128-bit arithmetic), in any order,
 *    also at the largest magnitudes the bound allows;
 *  - the vector lengths of each phase under given dimensions (none where a dimension it needs
 *    is unknown, or for no phase);
 *  - an EVALUATE vector of three sites through a real secure-aggregation session with one
 *    site dropped after sharing its keys: a site's masked words are not its histogram, and the
 *    unmasked sum decodes to exactly the survivors' histograms, gate sums, rows, loss and
 *    label count, as the plain path would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_secagg.h"
#include "moeh_secsum.h"

#include <math.h>
#include <sodium.h>
#include <string.h>

static const moeh_secsum_dims_t k_lim = {
    .n_params = 10, .n_groups = 2, .n_tasks = 3, .eval_bins = 4, .n_norm = 5, .n_experts = 6};

static double fix_roundtrip(double x)
{
    uint32_t w[MOEH_SECSUM_FIX_WORDS];
    assert_int_equal(moeh_secsum_fix_put(w, x), 0);
    for (unsigned k = 0; k < MOEH_SECSUM_FIX_WORDS; k++)
        assert_true(w[k] <= 0xffffu); /* 16-bit limbs: sums of 2^16 sites cannot carry */
    return moeh_secsum_fix_get(w);
}

static void test_fix_values(void **state)
{
    (void)state;
    const double ints[] = {0, 1, -1, 42, -123456789, 0x1p52, 0x1p53 - 1, -(0x1p53 - 1)};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        assert_true(fix_roundtrip(ints[i]) == ints[i]);
    /* reals: within half a unit of 2^-64, and exact when they are multiples of it */
    const double reals[] = {0.1, -0.1, 1.0 / 3, 3.14159, -2.718281828, 1e-30, 12345.678};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++)
        assert_true(fabs(fix_roundtrip(reals[i]) - reals[i]) <= 0x1p-65);
    assert_true(fix_roundtrip(0.5 + 0x1p-60) == 0.5 + 0x1p-60);
    /* out of range: refused, words zeroed */
    uint32_t w[MOEH_SECSUM_FIX_WORDS];
    const double bad[] = {0x1p53, -0x1p53, 1e300, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(w, 0xab, sizeof w);
        assert_int_equal(moeh_secsum_fix_put(w, bad[i]), -ERANGE);
        for (unsigned k = 0; k < MOEH_SECSUM_FIX_WORDS; k++)
            assert_int_equal(w[k], 0);
    }
}

/* The decoded sum of n sites' words is the exact sum of their fixed-point integers. */
static void check_sum(const double *x, size_t n)
{
    uint32_t sum[MOEH_SECSUM_FIX_WORDS] = {0}, rev[MOEH_SECSUM_FIX_WORDS] = {0};
    uint32_t w[MOEH_SECSUM_FIX_WORDS];
    __int128 exact = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(moeh_secsum_fix_put(w, x[i]), 0);
        moeh_secsum_add(sum, w, MOEH_SECSUM_FIX_WORDS);
        assert_int_equal(moeh_secsum_fix_put(w, x[n - 1 - i]), 0);
        moeh_secsum_add(rev, w, MOEH_SECSUM_FIX_WORDS);
        exact += (__int128)rint(x[i] * 0x1p64);
    }
    double want = (double)exact * 0x1p-64;
    assert_true(moeh_secsum_fix_get(sum) == want);
    assert_memory_equal(sum, rev, sizeof sum); /* the words themselves: order-free */
}

static void test_fix_sums(void **state)
{
    (void)state;
    enum { N = MOEH_SECSUM_FIX_MAX_SITES };
    static double x[N];
    moeh_rng_t rng;
    moeh_rng_seed(&rng, 7);
    for (size_t i = 0; i < N; i++) { /* mixed signs and magnitudes, 2^-40 .. 2^52 */
        double u = (double)(moeh_rng_u64(&rng) >> 11) * 0x1p-53;
        double mag = ldexp(1.0, (int)(moeh_rng_u64(&rng) % 93) - 40);
        x[i] = (moeh_rng_u64(&rng) & 1 ? -1 : 1) * u * mag;
    }
    check_sum(x, N);
    for (size_t i = 0; i < N; i++) /* the largest magnitudes the bound allows, one sign */
        x[i] = 0x1p53 - 1;
    check_sum(x, N);
    for (size_t i = 0; i < N; i++)
        x[i] = -(0x1p53 - 1);
    check_sum(x, N);
    for (size_t i = 0; i < N; i++) /* cancellation down to a tiny remainder */
        x[i] = i % 2 ? 1e15 : -1e15 + 0x1p-30;
    check_sum(x, N);
}

static void test_lengths(void **state)
{
    (void)state;
    const size_t V = MOEH_SECSUM_FIX_WORDS, H = 8 * 3 * 2 * 4;
    assert_int_equal(moeh_secsum_len(k_lim, MOEH_SECSUM_TRAIN), 10 + 2 + 3 * V);
    assert_int_equal(moeh_secsum_len(k_lim, MOEH_SECSUM_STATS), 3 * 5 * V);
    assert_int_equal(moeh_secsum_eval_hist_words(k_lim), H);
    assert_int_equal(moeh_secsum_eval_values_len(k_lim), (7 * 6 + 7 + 2) * V);
    assert_int_equal(moeh_secsum_len(k_lim, MOEH_SECSUM_EVALUATE), H + (7 * 6 + 9) * V);
    moeh_secsum_dims_t none = {0};
    assert_int_equal(moeh_secsum_len(none, MOEH_SECSUM_TRAIN), 0);
    assert_int_equal(moeh_secsum_len(none, MOEH_SECSUM_STATS), 0);
    assert_int_equal(moeh_secsum_len(none, MOEH_SECSUM_EVALUATE), 0);
    assert_int_equal(moeh_secsum_len(k_lim, MOEH_SECSUM_NONE), 0);
    assert_int_equal(moeh_secsum_len(k_lim, (moeh_secsum_phase_t)99), 0);
    moeh_secsum_dims_t no_experts = k_lim; /* no gate sums; the rest of EVALUATE stays */
    no_experts.n_experts = 0;
    assert_int_equal(moeh_secsum_len(no_experts, MOEH_SECSUM_EVALUATE), H + 9 * V);
    /* TRAIN and STATS values */
    uint32_t w[3 * 5 * MOEH_SECSUM_FIX_WORDS] = {0}, one[3 * 5 * MOEH_SECSUM_FIX_WORDS];
    double lxs, ns, steps, st[15], back[15];
    assert_int_equal(moeh_secsum_train_put(one, 0.5, 100, 7), 0);
    moeh_secsum_add(w, one, 3 * V);
    assert_int_equal(moeh_secsum_train_put(one, 0.25, 60, 3), 0);
    moeh_secsum_add(w, one, 3 * V);
    moeh_secsum_train_get(w, &lxs, &ns, &steps);
    assert_true(lxs == 65.0 && ns == 160.0 && steps == 10.0);
    for (size_t i = 0; i < 15; i++)
        st[i] = i % 3 == 0 ? 40.0 : (i % 3 == 1 ? -3.5 * (double)i : 0.125 * (double)i);
    assert_int_equal(moeh_secsum_stats_put(w, st, 5), 0);
    moeh_secsum_stats_get(w, 5, back);
    assert_memory_equal(st, back, sizeof st);
    /* raw values far beyond the 2^53 of the other values still sum exactly (a sum of squares of
     * timestamps, say); the STATS limit is 2^85 */
    st[4] = 0x1p60 + 4096.0, st[5] = 1e20;
    assert_int_equal(moeh_secsum_stats_put(w, st, 5), 0);
    moeh_secsum_add(w, w, 15 * V); /* two sites with the same values */
    moeh_secsum_stats_get(w, 5, back);
    assert_true(back[4] == 2 * st[4] && back[5] == 2 * st[5] && back[3] == 2 * st[3]);
    st[4] = 0x1p85;
    assert_int_equal(moeh_secsum_stats_put(w, st, 5), -ERANGE);
}

/* One site's EVALUATE inputs. */
typedef struct {
    uint32_t *vec; /* the vector: histograms (filled here) then values */
    float gate[7 * 6];
    uint32_t rows[7];
    double loss;
    uint64_t labels;
} site_eval_t;

static void make_site(site_eval_t *s, moeh_rng_t *rng, size_t len)
{
    size_t H = moeh_secsum_eval_hist_words(k_lim);
    s->vec = calloc(len, sizeof(uint32_t));
    assert_non_null(s->vec);
    s->labels = 0;
    for (size_t i = 0; i < H; i++) {
        s->vec[i] = (uint32_t)(moeh_rng_u64(rng) % 50);
        if (i < 3 * 2 * 4) s->labels += s->vec[i]; /* slice 0 */
    }
    for (size_t i = 0; i < 7 * 6; i++)
        s->gate[i] = (float)(moeh_rng_u64(rng) % 1000) / 7.0f;
    for (size_t k = 0; k < 7; k++)
        s->rows[k] = (uint32_t)(moeh_rng_u64(rng) % 100);
    s->loss = (double)(moeh_rng_u64(rng) % 100000) / 997.0;
    assert_int_equal(moeh_secsum_eval_put(s->vec + H, k_lim, s->gate, s->rows, s->loss, s->labels),
                     0);
}

static void test_eval_secure_sum(void **state)
{
    (void)state;
    assert_true(sodium_init() >= 0);
    enum { N = 3 };
    const size_t len = moeh_secsum_len(k_lim, MOEH_SECSUM_EVALUATE);
    const size_t H = moeh_secsum_eval_hist_words(k_lim);
    moeh_secagg_cfg_t cfg = {.round = 5, .n = N, .t = 2, .k = 0, .graph_seed = 1, .len = len};
    moeh_err_t err = {{0}};
    moeh_rng_t rng;
    moeh_rng_seed(&rng, 11);
    site_eval_t site[N];
    moeh_secagg_client_t *c[N];
    moeh_secagg_pubkeys_t keys[N];
    uint8_t present[N] = {1, 1, 1}, sent[N * N], u2[N] = {1, 1, 1};
    uint8_t cts[N * N * MOEH_SECAGG_SHARE_CT_BYTES];
    for (uint32_t i = 0; i < N; i++) {
        make_site(&site[i], &rng, len);
        assert_int_equal(moeh_secagg_client_create(&cfg, i, &c[i], &err), 0);
        moeh_secagg_client_pubkeys(c[i], &keys[i]);
    }
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(moeh_secagg_client_share_keys(c[i], keys, present,
                                                       cts + i * N * MOEH_SECAGG_SHARE_CT_BYTES,
                                                       sent + i * N, &err),
                         0);
    for (uint32_t i = 0; i < N; i++)
        for (uint32_t j = 0; j < N; j++)
            if (sent[i * N + j])
                assert_int_equal(moeh_secagg_client_receive_share(
                                     c[j], i, cts + (i * N + j) * MOEH_SECAGG_SHARE_CT_BYTES, &err),
                                 0);
    /* sites 0 and 2 send masked vectors; site 1 dropped after sharing its keys */
    uint32_t *sum = calloc(len, sizeof(uint32_t)), *plain = calloc(len, sizeof(uint32_t));
    uint32_t *y = malloc(len * sizeof(uint32_t));
    assert_true(sum && plain && y);
    const uint32_t surv[2] = {0, 2}, drop[1] = {1};
    for (size_t a = 0; a < 2; a++) {
        uint32_t i = surv[a];
        assert_int_equal(moeh_secagg_client_mask(c[i], y, site[i].vec, u2, &err), 0);
        size_t same = 0; /* the coordinator's view of one site: not its histogram */
        for (size_t w = 0; w < H; w++)
            same += y[w] == site[i].vec[w];
        assert_true(same < H / 16);
        moeh_secsum_add(sum, y, len);
        moeh_secsum_add(plain, site[i].vec, len); /* what the plain path would add */
    }
    moeh_secagg_reveal_t rev[2 * N];
    size_t nrev = 0;
    for (size_t a = 0; a < 2; a++) {
        size_t k = 0;
        assert_int_equal(
            moeh_secagg_client_reveal(c[surv[a]], surv, 2, drop, 1, rev + nrev, &k, &err), 0);
        nrev += k;
    }
    assert_int_equal(moeh_secagg_server_unmask(&cfg, keys, surv, 2, drop, 1, rev, nrev, sum, &err),
                     0);
    assert_memory_equal(sum, plain, len * sizeof(uint32_t));
    /* decoded: exactly the survivors' sums */
    uint64_t hist[8 * 3 * 2 * 4], rows[7], labels;
    double gate[7 * 6], loss;
    moeh_secsum_eval_get(sum, k_lim, hist, gate, rows, &loss, &labels);
    for (size_t w = 0; w < H; w++)
        assert_int_equal(hist[w], (uint64_t)site[0].vec[w] + site[2].vec[w]);
    for (size_t i = 0; i < 7 * 6; i++)
        assert_true(gate[i] == (double)site[0].gate[i] + (double)site[2].gate[i]);
    for (size_t k = 0; k < 7; k++)
        assert_int_equal(rows[k], (uint64_t)site[0].rows[k] + site[2].rows[k]);
    assert_int_equal(labels, site[0].labels + site[2].labels);
    __int128 exact = (__int128)rint(site[0].loss * 0x1p64) + (__int128)rint(site[2].loss * 0x1p64);
    assert_true(loss == (double)exact * 0x1p-64);
    assert_true(fabs(loss - (site[0].loss + site[2].loss)) < 1e-12);
    for (uint32_t i = 0; i < N; i++) {
        moeh_secagg_client_destroy(&c[i]);
        free(site[i].vec);
    }
    free(sum);
    free(plain);
    free(y);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_fix_values), cmocka_unit_test(test_fix_sums),
               cmocka_unit_test(test_lengths), cmocka_unit_test(test_eval_secure_sum))
