/* test_bounds.c - the poisoning bounds (coordinator/moeh_bounds.h): caps of declared counts,
 * the checks of statistics, evaluations and summed weights (each attack of issue 13 refused,
 * honest values accepted), and the registry's [limits] section (proto/moeh_keys.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_bounds.h"
#include "moeh_coord_core.h"
#include "moeh_keys.h"
#include "moeh_schema.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static void test_median_and_caps(void **state)
{
    (void)state;
    uint64_t scratch[8];
    uint64_t v[] = {700, 0, 2147483648ull, 650, 720};
    assert_int_equal(moeh_bounds_median(v, 5, scratch), 710); /* zeros left out: 650 700 720 2^31 */
    uint64_t odd[] = {5, 1, 3};
    assert_int_equal(moeh_bounds_median(odd, 3, scratch), 3);
    assert_int_equal(moeh_bounds_median(odd, 0, scratch), 0);
    assert_int_equal(odd[0], 5); /* unchanged */
    /* registered limit first, then k x median, else the declared count */
    assert_int_equal(moeh_bounds_count_cap(2147483648ull, 800, 710, 10), 800);
    assert_int_equal(moeh_bounds_count_cap(500, 800, 710, 10), 500);
    assert_int_equal(moeh_bounds_count_cap(2147483648ull, 0, 710, 10), 7100);
    assert_int_equal(moeh_bounds_count_cap(7000, 0, 710, 10), 7000); /* honest: not bitten */
    assert_int_equal(moeh_bounds_count_cap(2147483648ull, 0, 710, 0), 2147483648ull);
    assert_int_equal(moeh_bounds_count_cap(2147483648ull, 0, 0, 10), 2147483648ull);
}

/* 2 static features, 1 hourly variable over 48 h; 10 training rows. */
static moeh_stats_bounds_t sb(void)
{
    return (moeh_stats_bounds_t){
        .n_norm = 3, .n_static = 2, .n_steps = 48, .max_rows = 10, .max_abs = 1e6};
}

static void test_stats_honest_accepted(void **state)
{
    (void)state;
    /* values 1..10 for feature 0, the constant 65 for feature 1, 300 hourly values of 2.5 */
    double st[9] = {10, 55, 385, 10, 650, 42250, 300, 750, 1875};
    moeh_stats_bounds_t b = sb();
    char what[300] = "";
    assert_int_equal(moeh_bounds_stats_check(st, &b, what, sizeof what), 0);
    double none[9] = {0};
    assert_int_equal(moeh_bounds_stats_check(none, &b, what, sizeof what), 0);
}

static void test_stats_attacks_refused(void **state)
{
    (void)state;
    moeh_stats_bounds_t b = sb();
    char what[300];
    /* finding 4: count 1, sum and sum of squares 2^52: no real value has these sums */
    double f4[9] = {1, 0x1p52, 0x1p52, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(f4, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "below sum^2 / count"));
    /* consistent but far out of range: one value 2^26 */
    double big[9] = {1, 0x1p26, 0x1p52, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(big, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "plausible range"));
    b.max_abs = 0; /* no range check: accepted */
    assert_int_equal(moeh_bounds_stats_check(big, &b, what, sizeof what), 0);
    b = sb();
    /* more static values than rows; more hourly values than rows x hours */
    double many[9] = {11, 11, 11, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(many, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "feature 0 counts 11"));
    double hourly[9] = {0, 0, 0, 0, 0, 0, 481, 481, 481};
    assert_int_equal(moeh_bounds_stats_check(hourly, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "x the hours"));
    hourly[6] = hourly[7] = hourly[8] = 480; /* the most an honest site can have */
    assert_int_equal(moeh_bounds_stats_check(hourly, &b, what, sizeof what), 0);
    /* fractional or negative count, sums without values, negative squares, NaN */
    double frac[9] = {1.5, 1, 1, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(frac, &b, what, sizeof what), -ERANGE);
    double neg[9] = {-1, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(neg, &b, what, sizeof what), -ERANGE);
    double ghost[9] = {0, 5, 25, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(ghost, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "impossible"));
    double negsq[9] = {2, 0, -1, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(negsq, &b, what, sizeof what), -ERANGE);
    double nan[9] = {1, NAN, 1, 0, 0, 0, 0, 0, 0};
    assert_int_equal(moeh_bounds_stats_check(nan, &b, what, sizeof what), -ERANGE);
}

/* 3 tasks, 4 bins: slice sl, task t, label y, bin k. */
#define BINS 4
static uint32_t *hcell(uint32_t *h, size_t sl, size_t t, size_t y, size_t k)
{
    return &h[((sl * 3 + t) * 2 + y) * BINS + k];
}

static void test_eval_bounds(void **state)
{
    (void)state;
    static uint32_t h[MOEH_N_SLICES * 3 * 2 * BINS];
    memset(h, 0, sizeof h);
    /* 65 test rows; every task labelled on 60 of them, all EHR-only (combination 1) */
    for (size_t t = 0; t < 3; t++)
        for (size_t sl = 0; sl < 2; sl++) {
            *hcell(h, sl, t, 0, 0) = 50;
            *hcell(h, sl, t, 1, 3) = 10;
        }
    uint64_t rows[MOEH_N_COMBOS] = {65};
    moeh_eval_bounds_t b = {.n_tasks = 3, .bins = BINS, .max_rows = 65};
    char what[300];
    assert_int_equal(moeh_bounds_eval_check(h, rows, 180, &b, what, sizeof what), 0);
    /* finding 6: 6,000,000 perfectly separated labels from a site with 65 test rows */
    *hcell(h, 0, 1, 1, 3) = 3000000;
    *hcell(h, 0, 1, 0, 0) = 3000000;
    assert_int_equal(moeh_bounds_eval_check(h, rows, 180, &b, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "task 1 has 6000000 labelled rows in slice 0"));
    *hcell(h, 0, 1, 1, 3) = 10;
    *hcell(h, 0, 1, 0, 0) = 50;
    /* ... in a combination's slice only */
    *hcell(h, 5, 2, 1, 1) = 66;
    assert_int_equal(moeh_bounds_eval_check(h, rows, 180, &b, what, sizeof what), -ERANGE);
    *hcell(h, 5, 2, 1, 1) = 0;
    /* rows per combination, label count */
    uint64_t many[MOEH_N_COMBOS] = {40, 0, 0, 0, 0, 0, 26};
    assert_int_equal(moeh_bounds_eval_check(h, many, 180, &b, what, sizeof what), -ERANGE);
    uint64_t huge[MOEH_N_COMBOS] = {UINT64_MAX, UINT64_MAX}; /* no wrap-around */
    assert_int_equal(moeh_bounds_eval_check(h, huge, 180, &b, what, sizeof what), -ERANGE);
    assert_int_equal(moeh_bounds_eval_check(h, rows, 196, &b, what, sizeof what), -ERANGE);
    assert_int_equal(moeh_bounds_eval_check(h, rows, 195, &b, what, sizeof what), 0);
}

static void test_train_header_bound(void **state)
{
    (void)state;
    char what[300];
    assert_int_equal(moeh_bounds_train_header_check(0.67, 137, 137, what, sizeof what), 0);
    assert_int_equal(moeh_bounds_train_header_check(0.0, 0, 0, what, sizeof what), 0);
    assert_int_equal(moeh_bounds_train_header_check(0.67, 138, 137, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "n_samples 138 exceeds the 137"));
    assert_int_equal(moeh_bounds_train_header_check(-1e12, 10, 137, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "negative"));
}

static void test_weight_sum_bound(void **state)
{
    (void)state;
    uint32_t w[3] = {1400, 0, 700};
    char what[300];
    assert_int_equal(moeh_bounds_weight_sum_check(w, 3, 1400, what, sizeof what), 0);
    w[1] = 1401;
    assert_int_equal(moeh_bounds_weight_sum_check(w, 3, 1400, what, sizeof what), -ERANGE);
    assert_non_null(strstr(what, "group 1 weight 1401"));
}

static void test_registry_limits(void **state)
{
    (void)state;
    char text[600], K1[MOEH_Z85_KEY_LEN + 1], K2[MOEH_Z85_KEY_LEN + 1], K3[MOEH_Z85_KEY_LEN + 1];
    char *keys[3] = {K1, K2, K3};
    moeh_keypair_t *kp = NULL;
    assert_int_equal(moeh_crypto_init(), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(moeh_keypair_generate(&kp), 0);
        memcpy(keys[i], kp->public_z85, MOEH_Z85_KEY_LEN + 1);
        moeh_keypair_destroy(&kp);
    }
    moeh_registry_t r;
    moeh_err_t err = {0};
    uint64_t mt = 1, me = 1, mv = 1;
    /* [limits] before or after [sites]; a site without limits has none; MAX_VAL is optional */
    snprintf(text, sizeof text,
             "[limits]\nsite-1 = 800,200,150\nsite-3 = 700,100\n[sites]\nsite-1 = %s\n"
             "site-2 = %s\nsite-3 = %s\n",
             K1, K2, K3);
    assert_int_equal(moeh_registry_parse(text, "reg", &r, &err), 0);
    assert_int_equal(moeh_registry_limits(&r, "site-1", &mt, &me, &mv), 0);
    assert_true(mt == 800 && me == 200 && mv == 150);
    assert_int_equal(moeh_registry_limits(&r, "site-2", &mt, &me, &mv), 0);
    assert_true(mt == 0 && me == 0 && mv == 0);
    assert_int_equal(moeh_registry_limits(&r, "site-3", &mt, &me, &mv), 0);
    assert_true(mt == 700 && me == 100 && mv == 0); /* no MAX_VAL: no registered limit */
    mt = me = mv = 1;
    assert_int_equal(moeh_registry_limits(&r, "site-9", &mt, &me, &mv), -ENOENT);
    assert_true(mt == 0 && me == 0 && mv == 0);
    moeh_registry_free(&r);
    /* a registry without [limits] loads as before */
    snprintf(text, sizeof text, "[sites]\nsite-1 = %s\n", K1);
    assert_int_equal(moeh_registry_parse(text, "reg", &r, &err), 0);
    assert_int_equal(moeh_registry_limits(&r, "site-1", &mt, &me, &mv), 0);
    assert_true(mt == 0 && me == 0 && mv == 0);
    moeh_registry_free(&r);
    /* errors name what is wrong */
    static const struct {
        const char *limits, *needle;
    } bad[] = {
        {"site-1 = 800", "expected MAX_TRAIN,MAX_TEST"},
        {"site-1 = 800,", "expected MAX_TRAIN,MAX_TEST"},
        {"site-1 = -5,10", "expected MAX_TRAIN,MAX_TEST"},
        {"site-1 = 1e3,10", "expected MAX_TRAIN,MAX_TEST"},
        {"site-1 = 99999999999999999,10", "expected MAX_TRAIN,MAX_TEST"},
        {"site-1 = 800,200,", "expected MAX_TRAIN,MAX_TEST[,MAX_VAL]"},
        {"site-1 = 800,200,x", "expected MAX_TRAIN,MAX_TEST[,MAX_VAL]"},
        {"site-1 = 800,200,9007199254740992", "expected MAX_TRAIN,MAX_TEST[,MAX_VAL]"},
        {"site-1 = 800,200,100,5", "expected MAX_TRAIN,MAX_TEST[,MAX_VAL]"},
        {"site-1 = 1,2\nsite-1 = 3,4", "listed twice"},
        {"site-3 = 1,2", "site-3, which is not under [sites]"},
        {"bad id! = 1,2", "must be 1-64"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "[sites]\nsite-1 = %s\n[limits]\n%s\n", K1, bad[i].limits);
        memset(&err, 0, sizeof err);
        assert_int_equal(moeh_registry_parse(text, "reg", &r, &err), -EINVAL);
        if (!strstr(err.msg, bad[i].needle)) fail_msg("'%s': %s", bad[i].limits, err.msg);
        assert_int_equal(r.n, 0); /* nothing half-loaded */
    }
    snprintf(text, sizeof text, "[other]\nx = 1\n");
    assert_int_equal(moeh_registry_parse(text, "reg", &r, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "[sites] (or [limits])"));
}

/* The options that need each site's update are refused where only sums exist. */
static void test_options_refused(void **state)
{
    (void)state;
    static const struct {
        const char *strategy;
        int secagg;
        float norm_bound, dp_clip, count_cap;
        const char *needle;
    } bad[] = {
        {"median", 1, 0, 0, 10, "--secagg and --strategy median exclude each other"},
        {"fedavg", 1, 2, 0, 10, "--norm-bound needs each site's update"},
        {"median", 0, 0, 1, 10, "--dp-clip and --strategy median"},
        {"fedavg", 0, 2, 1, 10, "--norm-bound exclude each other"},
        {"fedavg", 0, -1, 0, 10, "--count-cap, --stats-max-abs and --norm-bound"},
        {"fedavg", 0, 0, 0, -3, "--count-cap, --stats-max-abs and --norm-bound"},
    };
    moeh_coord_io_t io = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moeh_coord_cfg_t cfg;
        moeh_coord_cfg_defaults(&cfg);
        cfg.strategy = bad[i].strategy;
        cfg.secagg = bad[i].secagg;
        cfg.norm_bound = bad[i].norm_bound;
        cfg.dp_clip = bad[i].dp_clip;
        cfg.count_cap = bad[i].count_cap;
        cfg.out_dir = "never-created"; /* the configuration is refused first */
        moeh_coord_core_t *core = NULL;
        moeh_err_t err = {0};
        assert_int_equal(moeh_coord_core_create(&cfg, &io, &core, &err), -EINVAL);
        if (!strstr(err.msg, bad[i].needle)) fail_msg("case %zu: %s", i, err.msg);
        assert_null(core);
    }
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_median_and_caps),
               cmocka_unit_test(test_stats_honest_accepted),
               cmocka_unit_test(test_stats_attacks_refused), cmocka_unit_test(test_eval_bounds),
               cmocka_unit_test(test_weight_sum_bound), cmocka_unit_test(test_train_header_bound),
               cmocka_unit_test(test_options_refused), cmocka_unit_test(test_registry_limits))
