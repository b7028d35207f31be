/* test_wire_fields.c - the fields of Hello, Welcome and RoundStart: site ids, counts and
 * combinations, the Welcome's layout counts, every RoundConfig bound (learning rate, clips,
 * fixed-point scale, deadline) and the DP-FedAvg settings. Reject cases are tables of
 * {name, maker + mutation, limits, code, substring of the message}. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

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

static void c_hello_welcome_checks_0(msg_t *m)
{
    mk_hello(m);
    /* other hello fields */
    m->hello.n_features = 0;
}

static void c_hello_welcome_checks_1(msg_t *m)
{
    mk_hello(m);
    m->combo[1].combo = 8;
}

static void c_hello_welcome_checks_2(msg_t *m)
{
    mk_hello(m);
    m->combo[0].combo = 0;
}

static void c_hello_welcome_checks_3(msg_t *m)
{
    mk_welcome(m);
    /* welcome too */
    m->welcome.site_id = "../x";
}

static void c_hello_welcome_checks_4(msg_t *m)
{
    mk_welcome(m);
    m->welcome.model = NULL;
}

static void c_hello_welcome_checks_5(msg_t *m)
{
    mk_welcome(m);
    m->welcome.eval_bins = 1;
}

static void c_hello_welcome_checks_6(msg_t *m)
{
    mk_welcome(m);
    m->spec.n_groups = 33;
}

static const wire_case_t k_hello_welcome_checks[] = {
    {"hello.n_features = 0", c_hello_welcome_checks_0, &k_lim, -EBADMSG, "hello.n_features"},
    {"combo[1].combo = 8", c_hello_welcome_checks_1, &k_lim, -EBADMSG, "hello.combos[1].combo"},
    {"combo[0].combo = 0", c_hello_welcome_checks_2, &k_lim, -EBADMSG, "hello.combos[0].combo"},
    {"welcome.site_id = \"../x\"", c_hello_welcome_checks_3, &k_lim, -EBADMSG, "welcome.site_id"},
    {"welcome.model = NULL", c_hello_welcome_checks_4, &k_lim, -EBADMSG, "welcome.model: missing"},
    {"welcome.eval_bins = 1", c_hello_welcome_checks_5, &k_lim, -EBADMSG, "welcome.eval_bins"},
    {"spec.n_groups = 33", c_hello_welcome_checks_6, &k_lim, -EBADMSG, "welcome.model"},
};

static void test_hello_welcome_checks(void **state)
{
    wire_run_cases(k_hello_welcome_checks,
                   sizeof k_hello_welcome_checks / sizeof k_hello_welcome_checks[0]);
}

static void c_round_start_checks_0(msg_t *m)
{
    mk_round_start(m);
    m->rs.task = MOEH__ROUND_TASK__TASK_UNSPECIFIED;
}

static void c_round_start_checks_1(msg_t *m)
{
    mk_round_start(m);
    m->rs.task = (Moeh__RoundTask)4;
}

static void c_round_start_checks_2(msg_t *m)
{
    mk_round_start(m);
    m->rs.task = MOEH__ROUND_TASK__STATS; /* STATS carries no tensor */
}

static void c_round_start_checks_3(msg_t *m)
{
    mk_round_start(m);
    m->rs.config = NULL;
}

static void c_round_start_checks_4(msg_t *m)
{
    mk_round_start(m);
    m->cfg.lr = 0.0f;
}

static void c_round_start_checks_5(msg_t *m)
{
    mk_round_start(m);
    m->cfg.lr = -0.1f;
}

static void c_round_start_checks_6(msg_t *m)
{
    mk_round_start(m);
    m->cfg.lr = 11.0f;
}

static void c_round_start_checks_7(msg_t *m)
{
    mk_round_start(m);
    m->cfg.lr = NAN;
}

static void c_round_start_checks_8(msg_t *m)
{
    mk_round_start(m);
    m->cfg.clip = INFINITY;
}

static void c_round_start_checks_9(msg_t *m)
{
    mk_round_start(m);
    m->cfg.weight_decay = -1.0f;
}

static void c_round_start_checks_10(msg_t *m)
{
    mk_round_start(m);
    m->cfg.batch_size = 0;
}

static void c_round_start_checks_11(msg_t *m)
{
    mk_round_start(m);
    m->cfg.local_epochs = 0;
}

static void c_round_start_checks_12(msg_t *m)
{
    mk_round_start(m);
    m->rs.deadline_ms = 0;
}

static void c_round_start_checks_13(msg_t *m)
{
    mk_round_start(m);
    m->cfg.delta_clip = 0.0f;
}

static void c_round_start_checks_14(msg_t *m)
{
    mk_round_start(m);
    m->cfg.delta_clip = NAN;
}

static void c_round_start_checks_15(msg_t *m)
{
    mk_round_start(m);
    m->cfg.quant_scale = 0.0;
}

static void c_round_start_checks_16(msg_t *m)
{
    mk_round_start(m);
    m->cfg.quant_scale = INFINITY;
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
    {"rs.task = MOEH__ROUND_TASK__TASK_UNSPECIFIED", c_round_start_checks_0, &k_lim, -EBADMSG,
     "round_start.task"},
    {"rs.task = (Moeh__RoundTask)4", c_round_start_checks_1, &k_lim, -EBADMSG, "round_start.task"},
    {"rs.task = MOEH__ROUND_TASK__STATS", c_round_start_checks_2, &k_lim, -EBADMSG,
     "expected none"},
    {"rs.config = NULL", c_round_start_checks_3, &k_lim, -EBADMSG, "round_start.config: missing"},
    {"cfg.lr = 0.0f", c_round_start_checks_4, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {"cfg.lr = -0.1f", c_round_start_checks_5, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {"cfg.lr = 11.0f", c_round_start_checks_6, &k_lim, -EBADMSG, "lr in (0, 10]"},
    {"cfg.lr = NAN", c_round_start_checks_7, &k_lim, -ERANGE, "round_start.config.lr"},
    {"cfg.clip = INFINITY", c_round_start_checks_8, &k_lim, -ERANGE, "round_start.config.clip"},
    {"cfg.weight_decay = -1.0f", c_round_start_checks_9, &k_lim, -EBADMSG, "weight_decay"},
    {"cfg.batch_size = 0", c_round_start_checks_10, &k_lim, -EBADMSG, "batch_size"},
    {"cfg.local_epochs = 0", c_round_start_checks_11, &k_lim, -EBADMSG, "local_epochs"},
    {"rs.deadline_ms = 0", c_round_start_checks_12, &k_lim, -EBADMSG, "round_start.deadline_ms"},
    {"cfg.delta_clip = 0.0f", c_round_start_checks_13, &k_lim, -EBADMSG, "delta_clip > 0"},
    {"cfg.delta_clip = NAN", c_round_start_checks_14, &k_lim, -ERANGE,
     "round_start.config.delta_clip"},
    {"cfg.quant_scale = 0.0", c_round_start_checks_15, &k_lim, -EBADMSG, "quant_scale"},
    {"cfg.quant_scale = INFINITY", c_round_start_checks_16, &k_lim, -ERANGE,
     "round_start.config.quant_scale"},
    {"cfg.quant_scale = 2147483648.0", c_round_start_checks_17, &k_lim, -EBADMSG, "2^31"},
    {"cfg.quant_scale = 2147483647.0", c_round_start_checks_18, &k_lim, 0, NULL},
};

static void test_round_start_checks(void **state)
{
    wire_run_cases(k_round_start_checks,
                   sizeof k_round_start_checks / sizeof k_round_start_checks[0]);
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

static void c_round_start_dp_checks_0(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_clip = NAN;
}

static void c_round_start_dp_checks_1(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_noise = INFINITY;
}

static void c_round_start_dp_checks_2(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_clip = -0.5f;
}

static void c_round_start_dp_checks_3(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_noise = -1.0f;
}

static void c_round_start_dp_checks_4(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_noise = 1001.0f;
}

static void c_round_start_dp_checks_5(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_sites = 0;
}

static void c_round_start_dp_checks_6(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_sites = MOEH_WIRE_DP_MAX_SITES + 1;
}

static void c_round_start_dp_checks_7(msg_t *m)
{
    mk_round_start(m);
    /* noise or a count without a clip: not a DP setting */
    m->cfg.dp_noise = 1.0f;
}

static void c_round_start_dp_checks_8(msg_t *m)
{
    mk_round_start(m);
    m->cfg.dp_sites = 3;
}

static void c_round_start_dp_checks_9(msg_t *m)
{
    mk_round_start_dp(m);
    /* DP with sample-count weights: one site's influence would be unbounded */
    m->cfg.unweighted = 0;
}

static void c_round_start_dp_checks_10(msg_t *m)
{
    mk_round_start_dp(m);
    /* a range that would clamp the noise (or the clipped delta) */
    m->cfg.delta_clip = 2.7f;
}

static void c_round_start_dp_checks_11(msg_t *m)
{
    mk_round_start_dp(m);
    m->cfg.dp_noise = 0.0f;
    m->cfg.delta_clip = 0.4f; /* below the clip itself */
}

static void c_round_start_dp_checks_12(msg_t *m)
{
    mk_round_start_dp(m);
    /* with DP, the range and scale must still fit 32 bits */
    m->cfg.quant_scale = 2147483647.0 / 2.7;
}

static const wire_case_t k_round_start_dp_checks[] = {
    {"cfg.dp_clip = NAN", c_round_start_dp_checks_0, &k_lim, -ERANGE, "round_start.config.dp_clip"},
    {"cfg.dp_noise = INFINITY", c_round_start_dp_checks_1, &k_lim, -ERANGE,
     "round_start.config.dp_noise"},
    {"cfg.dp_clip = -0.5f", c_round_start_dp_checks_2, &k_lim, -EBADMSG, "dp_clip > 0"},
    {"cfg.dp_noise = -1.0f", c_round_start_dp_checks_3, &k_lim, -EBADMSG, "dp_noise in [0, 1000]"},
    {"cfg.dp_noise = 1001.0f", c_round_start_dp_checks_4, &k_lim, -EBADMSG,
     "dp_noise in [0, 1000]"},
    {"cfg.dp_sites = 0", c_round_start_dp_checks_5, &k_lim, -EBADMSG, "dp_sites"},
    {"cfg.dp_sites = MOEH_WIRE_DP_MAX_SITES + 1", c_round_start_dp_checks_6, &k_lim, -EBADMSG,
     "dp_sites"},
    {"cfg.dp_noise = 1.0f", c_round_start_dp_checks_7, &k_lim, -EBADMSG,
     "must be 0 when dp_clip is 0"},
    {"cfg.dp_sites = 3", c_round_start_dp_checks_8, &k_lim, -EBADMSG,
     "must be 0 when dp_clip is 0"},
    {"cfg.unweighted = 0", c_round_start_dp_checks_9, &k_lim, -EBADMSG, "unweighted"},
    {"cfg.delta_clip = 2.7f", c_round_start_dp_checks_10, &k_lim, -EBADMSG,
     "cannot hold a clipped, noised coordinate"},
    {"cfg.delta_clip = 0.4f", c_round_start_dp_checks_11, &k_lim, -EBADMSG, "cannot hold"},
    {"cfg.quant_scale = 2147483647.0 / 2.7", c_round_start_dp_checks_12, &k_lim, -EBADMSG, "2^31"},
};

static void test_round_start_dp_checks(void **state)
{
    wire_run_cases(k_round_start_dp_checks,
                   sizeof k_round_start_dp_checks / sizeof k_round_start_dp_checks[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_site_ids),        cmocka_unit_test(test_hello_welcome_checks),
        cmocka_unit_test(test_round_start_checks),    cmocka_unit_test(test_round_start_dp),
        cmocka_unit_test(test_round_start_dp_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
