/* test_wire_fields.c - the fields of Hello, Welcome and RoundStart: site ids, counts and
 * combinations, the Welcome's layout counts, every RoundConfig bound (learning rate, clips,
 * fixed-point scale, deadline) and the DP-FedAvg settings. Reject cases are tables of
 * {name, maker + mutation, limits, code, substring of the message}. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

#include <math.h>

static void test_hello_site_ids(void **state)
{
    char s65[66];
    memset(s65, 'a', 65);
    s65[65] = '\0';
    char s64[65];
    memset(s64, 'b', 64);
    s64[64] = '\0';
    const char *bad[] = {"", s65, "a b", "../x", "a/b", "x\ty", "caf\xc3\xa9", "a:b", "a=b"};
    msg_t m;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mk_hello(&m);
        m.hello.site_id = (char *)bad[i];
        check_reject(&m, &k_lim, -EBADMSG, "hello.site_id");
    }
    mk_hello(&m);
    m.hello.site_id = s64;
    check_accept(&m, &k_lim);
    mk_hello(&m);
    m.hello.site_id = "Z";
    check_accept(&m, &k_lim);
}

static const wire_field_case_t k_hello_welcome_checks_fields[] = {
    /* other hello fields */
    {mk_hello, "hello.n_features", 0, NULL, &k_lim, -EBADMSG, "hello.n_features"},
    {mk_hello, "hello.combos[1].combo", 8, NULL, &k_lim, -EBADMSG, "hello.combos[1].combo"},
    {mk_hello, "hello.combos[0].combo", 0, NULL, &k_lim, -EBADMSG, "hello.combos[0].combo"},
    /* welcome too */
    {mk_welcome, "welcome.site_id", 0, "../x", &k_lim, -EBADMSG, "welcome.site_id"},
    {mk_welcome, "welcome.model", 0, NULL, &k_lim, -EBADMSG, "welcome.model: missing"},
    {mk_welcome, "welcome.eval_bins", 1, NULL, &k_lim, -EBADMSG, "welcome.eval_bins"},
    {mk_welcome, "welcome.model.n_groups", 33, NULL, &k_lim, -EBADMSG, "welcome.model"},
};

static void test_hello_welcome_checks(void **state)
{
    WIRE_RUN_FIELD_CASES(k_hello_welcome_checks_fields);
}

static void c_round_start_checks_17(msg_t *m)
{
    mk_round_start(m);
    m->cfg.delta_clip = 1.0f;
    m->cfg.quant_scale = 2147483648.0; /* scale * clip = 2^31 */
}

static void c_round_start_checks_18(msg_t *m)
{
    mk_round_start(m);
    m->cfg.delta_clip = 1.0f;
    m->cfg.quant_scale = 2147483648.0; /* scale * clip = 2^31 */
    m->cfg.quant_scale = 2147483647.0; /* just fits */
}

static const wire_case_t k_round_start_checks[] = {
    {"cfg.quant_scale = 2147483648.0", c_round_start_checks_17, &k_lim, -EBADMSG, "2^31"},
    {"cfg.quant_scale = 2147483647.0", c_round_start_checks_18, &k_lim, 0, NULL},
};

static const wire_field_case_t k_round_start_checks_fields[] = {
    {mk_round_start, "round_start.task", MOEH__ROUND_TASK__TASK_UNSPECIFIED, NULL, &k_lim, -EBADMSG,
     "round_start.task"},
    {mk_round_start, "round_start.task", (Moeh__RoundTask)5, NULL, &k_lim, -EBADMSG,
     "round_start.task"},
    /* STATS carries no tensor */
    {mk_round_start, "round_start.task", MOEH__ROUND_TASK__STATS, NULL, &k_lim, -EBADMSG,
     "expected none"},
    {mk_round_start, "round_start.config", 0, NULL, &k_lim, -EBADMSG,
     "round_start.config: missing"},
    {mk_round_start, "round_start.config.lr", 0.0f, NULL, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {mk_round_start, "round_start.config.lr", -0.1f, NULL, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {mk_round_start, "round_start.config.lr", 11.0f, NULL, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {mk_round_start, "round_start.config.lr", NAN, NULL, &k_lim, -ERANGE, "round_start.config.lr"},
    {mk_round_start, "round_start.config.clip", INFINITY, NULL, &k_lim, -ERANGE,
     "round_start.config.clip"},
    {mk_round_start, "round_start.config.weight_decay", -1.0f, NULL, &k_lim, -EBADMSG,
     "weight_decay"},
    {mk_round_start, "round_start.config.batch_size", 0, NULL, &k_lim, -EBADMSG, "batch_size"},
    {mk_round_start, "round_start.config.local_epochs", 0, NULL, &k_lim, -EBADMSG, "local_epochs"},
    {mk_round_start, "round_start.deadline_ms", 0, NULL, &k_lim, -EBADMSG,
     "round_start.deadline_ms"},
    {mk_round_start, "round_start.config.delta_clip", 0.0f, NULL, &k_lim, -EBADMSG,
     "delta_clip > 0"},
    {mk_round_start, "round_start.config.delta_clip", NAN, NULL, &k_lim, -ERANGE,
     "round_start.config.delta_clip"},
    {mk_round_start, "round_start.config.quant_scale", 0.0, NULL, &k_lim, -EBADMSG, "quant_scale"},
    {mk_round_start, "round_start.config.quant_scale", INFINITY, NULL, &k_lim, -ERANGE,
     "round_start.config.quant_scale"},
};

static void test_round_start_checks(void **state)
{
    WIRE_RUN_CASES(k_round_start_checks);
    WIRE_RUN_FIELD_CASES(k_round_start_checks_fields);
}

/* DP-FedAvg fields of RoundConfig (fed/moeh_dp.h): all zero, or a consistent setting whose
 * fixed-point range holds a clipped, noised coordinate. */
static void mk_round_start_dp(msg_t *m)
{
    mk_round_start(m);
    m->cfg.dp_clip = 0.5f;
    m->cfg.dp_noise = 1.0f;
    m->cfg.dp_sites = 4;
    m->cfg.unweighted = 1;
    m->cfg.delta_clip = moeh_dp_range(0.5f, 1.0f, 4); /* 0.5 + 9 * 0.25 = 2.75 */
    m->cfg.quant_scale = 1e6;
}

static void test_round_start_dp(void **state)
{
    msg_t m;
    mk_round_start_dp(&m);
    moeh_err_t err = {{0}};
    Moeh__Envelope *e = NULL;
    assert_int_equal(roundtrip(&m, &k_lim, &e, &err), 0);
    const Moeh__RoundConfig *c = e->round_start->config;
    assert_true(c->dp_clip == 0.5f && c->dp_noise == 1.0f && c->dp_sites == 4 && c->unweighted);
    assert_true(c->delta_clip == 2.75f);
    moeh__envelope__free_unpacked(e, NULL);
    /* unweighted without DP, and clipping without noise, are fine */
    mk_round_start(&m);
    m.cfg.unweighted = 1;
    check_accept(&m, &k_lim);
    mk_round_start_dp(&m);
    m.cfg.dp_noise = 0.0f;
    check_accept(&m, &k_lim);
}

static void c_round_start_dp_checks_11(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_noise = 0.0f;
    m->cfg.delta_clip = 0.4f; /* below the clip itself */
}

static const wire_case_t k_round_start_dp_checks[] = {
    {"cfg.delta_clip = 0.4f", c_round_start_dp_checks_11, &k_lim, -EBADMSG, "cannot hold"},
};

static const wire_field_case_t k_round_start_dp_checks_fields[] = {
    {mk_round_start_dp, "round_start.config.dp_clip", NAN, NULL, &k_lim, -ERANGE,
     "round_start.config.dp_clip"},
    {mk_round_start_dp, "round_start.config.dp_noise", INFINITY, NULL, &k_lim, -ERANGE,
     "round_start.config.dp_noise"},
    {mk_round_start_dp, "round_start.config.dp_clip", -0.5f, NULL, &k_lim, -EBADMSG, "dp_clip > 0"},
    {mk_round_start_dp, "round_start.config.dp_noise", -1.0f, NULL, &k_lim, -EBADMSG,
     "dp_noise in [0, 1000]"},
    {mk_round_start_dp, "round_start.config.dp_noise", 1001.0f, NULL, &k_lim, -EBADMSG,
     "dp_noise in [0, 1000]"},
    {mk_round_start_dp, "round_start.config.dp_sites", 0, NULL, &k_lim, -EBADMSG, "dp_sites"},
    {mk_round_start_dp, "round_start.config.dp_sites", MOEH_WIRE_DP_MAX_SITES + 1, NULL, &k_lim,
     -EBADMSG, "dp_sites"},
    /* noise or a count without a clip: not a DP setting */
    {mk_round_start, "round_start.config.dp_noise", 1.0f, NULL, &k_lim, -EBADMSG,
     "must be 0 when dp_clip is 0"},
    {mk_round_start, "round_start.config.dp_sites", 3, NULL, &k_lim, -EBADMSG,
     "must be 0 when dp_clip is 0"},
    /* DP with sample-count weights: one site's influence would be unbounded */
    {mk_round_start_dp, "round_start.config.unweighted", 0, NULL, &k_lim, -EBADMSG, "unweighted"},
    /* a range that would clamp the noise (or the clipped delta) */
    {mk_round_start_dp, "round_start.config.delta_clip", 2.7f, NULL, &k_lim, -EBADMSG,
     "cannot hold a clipped, noised coordinate"},
    /* with DP, the range and scale must still fit 32 bits */
    {mk_round_start_dp, "round_start.config.quant_scale", 2147483647.0 / 2.7, NULL, &k_lim,
     -EBADMSG, "2^31"},
};

static void test_round_start_dp_checks(void **state)
{
    WIRE_RUN_CASES(k_round_start_dp_checks);
    WIRE_RUN_FIELD_CASES(k_round_start_dp_checks_fields);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_hello_site_ids),
               cmocka_unit_test(test_hello_welcome_checks),
               cmocka_unit_test(test_round_start_checks), cmocka_unit_test(test_round_start_dp),
               cmocka_unit_test(test_round_start_dp_checks))
