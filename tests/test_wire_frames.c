/* test_wire_frames.c - the tensor frames and the bodies that describe them: frame count, byte
 * length, name, dtype and element count against the negotiated limits, tensors before
 * negotiation, non-finite floats, update words and group weights, evaluation histograms and
 * gate sums, normalisation statistics, frames where none are allowed. Reject cases are tables of
 * {name, maker + mutation, limits, code, substring of the message}. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

#include <math.h>

static void test_frame_count_mismatch(void **state)
{
    msg_t m;
    mk_round_start(&m);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[3];
    pack_msg(&m, &hdr, &len, iov);
    /* header describes 2 frames, none arrived */
    check_reject_raw(&k_lim, hdr, len, iov, 0, -EBADMSG, "header describes 2 tensor frames, 0");
    /* header describes 2 frames, 3 arrived */
    iov[2] = iov[1];
    check_reject_raw(&k_lim, hdr, len, iov, 3, -EBADMSG, "header describes 2 tensor frames, 3");
    free(hdr);

    /* header describes no frame, one arrived */
    mk_round_start(&m);
    m.n_frames = 0;
    pack_msg(&m, &hdr, &len, iov);
    iov[0] = (moeh_iov_t){m.f32, 4 * N_PARAMS};
    check_reject_raw(&k_lim, hdr, len, iov, 1, -EBADMSG, "header describes 0 tensor frames, 1");
    /* and none at all where round_start needs params and norm */
    check_reject_raw(&k_lim, hdr, len, iov, 0, -EBADMSG, "expected 2 tensor frames ('params'");
    free(hdr);
}

static void test_frame_byte_length(void **state)
{
    msg_t m;
    mk_round_start(&m);
    uint8_t *hdr;
    size_t len;
    moeh_iov_t iov[2];
    pack_msg(&m, &hdr, &len, iov);
    iov[0].len = 4 * N_PARAMS - 1;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    iov[0].len = 4 * N_PARAMS + 4;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    iov[0].len = 0;
    check_reject_raw(&k_lim, hdr, len, iov, 2, -EBADMSG, "frames[0] 'params'");
    free(hdr);

    /* dtype unspecified has no element size */
    mk_round_start(&m);
    m.frames[0].dtype = MOEH__DTYPE__DTYPE_UNSPECIFIED;
    uint8_t *h2;
    assert_int_equal(moeh_wire_pack(&m.env, m.frames, 1, &h2, &len), 0);
    iov[0] = (moeh_iov_t){m.f32, 4 * N_PARAMS};
    check_reject_raw(&k_lim, h2, len, iov, 1, -EBADMSG, "frames[0]: bad dtype");
    free(h2);
}

static void c_tensor_before_negotiation_0(msg_t *m)
{
    mk_round_start(m);
}

static void c_tensor_before_negotiation_1(msg_t *m)
{
    mk_update(m);
}

static void c_tensor_before_negotiation_2(msg_t *m)
{
    mk_update(m);
}

static void c_tensor_before_negotiation_3(msg_t *m)
{
    mk_eval_result(m);
}

static const wire_case_t k_tensor_before_negotiation[] = {
    {"before the model was negotiated", c_tensor_before_negotiation_0, &k_none, -EBADMSG,
     "before the model was negotiated"},
    {"update: before the model was negotiated", c_tensor_before_negotiation_1, &k_none, -EBADMSG,
     "update: before the model was negotiated"},
    {"before the model was negotiated", c_tensor_before_negotiation_2, &k_groups_only, -EBADMSG,
     "before the model was negotiated"},
    {"eval_result", c_tensor_before_negotiation_3, &k_none, -EBADMSG, "eval_result"},
};

static void test_tensor_before_negotiation(void **state)
{
    WIRE_RUN_CASES(k_tensor_before_negotiation);
}

static void c_frame_count_name_dtype_7(msg_t *m)
{
    static char longname[80]; /* over-long name */
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    mk_update(m);
    m->frames[0].name = longname;
}

static const wire_case_t k_frame_count_name_dtype[] = {
    {"frames[0].name = longname", c_frame_count_name_dtype_7, &k_lim, -EBADMSG,
     "frames[0]: bad dtype or name"},
};

static const wire_field_case_t k_frame_count_name_dtype_fields[] = {
    /* wrong element count (the frame bytes agree with the descriptor) */
    {mk_round_start, "frames[0].count", N_PARAMS - 1, NULL, &k_lim, -EBADMSG,
     "has 9 elements, expected 10"},
    /* the group weights missing */
    {mk_update, "frames[0].count", N_PARAMS, NULL, &k_lim, -EBADMSG,
     "'update' has 10 elements, expected 12"},
    {mk_update, "frames[0].count", N_PARAMS + N_GROUPS + 1, NULL, &k_lim, -EBADMSG,
     "'update' has 13 elements, expected 12"},
    {mk_eval_result, "frames[0].count", N_HIST - 1, NULL, &k_lim, -EBADMSG,
     "'hist' has 191 elements, expected 192"},
    /* wrong name */
    {mk_round_start, "frames[0].name", 0, "delta", &k_lim, -EBADMSG, "expected 'params'"},
    {mk_update, "frames[0].name", 0, "delta", &k_lim, -EBADMSG, "expected 'update'"},
    {mk_update, "frames[0].name", 0, "", &k_lim, -EBADMSG, "expected 'update'"},
    /* wrong dtype */
    {mk_update, "frames[0].dtype", MOEH__DTYPE__F32, NULL, &k_lim, -EBADMSG,
     "expected 'update' (dtype 2)"},
    {mk_round_start, "frames[0].dtype", MOEH__DTYPE__U32, NULL, &k_lim, -EBADMSG,
     "expected 'params' (dtype 1)"},
    {mk_eval_result, "frames[0].dtype", MOEH__DTYPE__F32, NULL, &k_lim, -EBADMSG,
     "expected 'hist' (dtype 2)"},
};

static void test_frame_count_name_dtype(void **state)
{
    WIRE_RUN_CASES(k_frame_count_name_dtype);
    WIRE_RUN_FIELD_CASES(k_frame_count_name_dtype_fields);
}

static void c_non_finite_tensors_2(msg_t *m)
{
    mk_round_start(m);
    m->f32[N_PARAMS - 1] = -INFINITY;
}

static void c_non_finite_tensors_3(msg_t *m)
{
    mk_round_start(m);
    m->f32[N_PARAMS] = NAN; /* just past the frame: not part of the message */
}

static void c_non_finite_tensors_4(msg_t *m)
{
    mk_round_start(m);
    m->f32[4] = 3.4e38f; /* large but finite */
    m->f32[5] = -1e-45f; /* denormal */
}

static const wire_case_t k_non_finite_tensors[] = {
    {"f32[N_PARAMS - 1] = -INFINITY", c_non_finite_tensors_2, &k_lim, -ERANGE,
     "round_start.params: element 9"},
    {"f32[N_PARAMS] = NAN", c_non_finite_tensors_3, &k_lim, 0, NULL},
    {"f32[5] = -1e-45f", c_non_finite_tensors_4, &k_lim, 0, NULL},
};

static const wire_field_case_t k_non_finite_tensors_fields[] = {
    {mk_round_start, "f32[7]", NAN, NULL, &k_lim, -ERANGE, "round_start.params: element 7"},
    {mk_round_start, "f32[0]", INFINITY, NULL, &k_lim, -ERANGE, "round_start.params: element 0"},
};

static void test_non_finite_tensors(void **state)
{
    WIRE_RUN_CASES(k_non_finite_tensors);
    WIRE_RUN_FIELD_CASES(k_non_finite_tensors_fields);
}

static void c_update_checks_3(msg_t *m)
{
    mk_update(m);
    /* every word is legal: the sums are mod 2^32 */
    for (size_t i = 0; i < N_PARAMS + N_GROUPS; i++)
        m->words[i] = 0xffffffffu;
}

static const wire_case_t k_update_checks[] = {
    {"words[i] = 0xffffffffu", c_update_checks_3, &k_lim, 0, NULL},
};

static const wire_field_case_t k_update_checks_fields[] = {
    {mk_update, "update.train_loss", NAN, NULL, &k_lim, -ERANGE, "update.train_loss"},
    {mk_update, "update.train_loss", INFINITY, NULL, &k_lim, -ERANGE, "update.train_loss"},
    {mk_update, "update.train_loss", -0.5, NULL, &k_lim, -EBADMSG, "update.train_loss: negative"},
    /* the frame must be present */
    {mk_update, "n_frames", 0, NULL, &k_lim, -EBADMSG, "expected 1 tensor frames ('update')"},
};

static void test_update_checks(void **state)
{
    WIRE_RUN_CASES(k_update_checks);
    WIRE_RUN_FIELD_CASES(k_update_checks_fields);
}

static void c_eval_result_checks_0(msg_t *m)
{
    mk_eval_result(m);
    m->ev.n_labels += 1;
}

static void c_eval_result_checks_1(msg_t *m)
{
    mk_eval_result(m);
    m->ev.n_labels -= 1;
}

static void c_eval_result_checks_2(msg_t *m)
{
    mk_eval_result(m);
    m->ev.n_bins = N_BINS + 1;
    m->frames[0].count = N_TASKS * 2 * (N_BINS + 1);
    assert_true(m->frames[0].count <= sizeof m->hist / sizeof m->hist[0]);
}

static void c_eval_result_checks_3(msg_t *m)
{
    mk_eval_result(m);
    m->ev.n_tasks = 2;
    m->frames[0].count = 2 * 2 * N_BINS;
}

static void c_eval_result_checks_6(msg_t *m)
{
    mk_eval_result(m);
    /* counts near 2^32 are summed in 64 bits */
    m->hist[0] = 0xffffffffu;
    m->hist[1] = 0xffffffffu;
    uint64_t total = 0;
    for (size_t i = 0; i < N_SLICE; i++) /* n_labels counts slice 0 (every row) */
        total += m->hist[i];
    m->ev.n_labels = total;
}

static void c_eval_result_checks_7(msg_t *m)
{
    c_eval_result_checks_6(m);
    m->ev.n_labels &= 0xffffffffu; /* what a 32-bit sum would give */
}

static const wire_case_t k_eval_result_checks[] = {
    {"ev.n_labels += 1", c_eval_result_checks_0, &k_lim, -EBADMSG, "n_labels"},
    {"ev.n_labels -= 1", c_eval_result_checks_1, &k_lim, -EBADMSG, "n_labels"},
    {"assert_true(frames[0].count <= sizeof hist / sizeof hist[0])", c_eval_result_checks_2, &k_lim,
     -EBADMSG, "eval_result: 3 tasks x 5 bins, expected 3 x 4"},
    {"frames[0].count = 2 * 2 * N_BINS", c_eval_result_checks_3, &k_lim, -EBADMSG,
     "eval_result: 2 tasks x 4 bins, expected 3 x 4"},
    {"ev.n_labels = total", c_eval_result_checks_6, &k_lim, 0, NULL},
    {"ev.n_labels = total & 0xffffffffu", c_eval_result_checks_7, &k_lim, -EBADMSG, "n_labels"},
};

static const wire_field_case_t k_eval_result_checks_fields[] = {
    {mk_eval_result, "eval_result.loss_sum", NAN, NULL, &k_lim, -ERANGE, "eval_result.loss_sum"},
    {mk_eval_result, "eval_result.loss_sum", -1.0, NULL, &k_lim, -EBADMSG, "eval_result.loss_sum"},
};

static void test_eval_result_checks(void **state)
{
    WIRE_RUN_CASES(k_eval_result_checks);
    WIRE_RUN_FIELD_CASES(k_eval_result_checks_fields);
}

/* The MoE-Health fields: normalisation, statistics, gate sums, combination slices, spec. */
static void c_moe_field_checks_0(msg_t *m)
{
    mk_round_start(m);
    m->norm[N_NORM + 1] = 0.0f; /* a standard deviation must be positive */
}

static void c_moe_field_checks_6(msg_t *m)
{
    mk_stats_result(m);
}

static void c_moe_field_checks_10(msg_t *m)
{
    mk_eval_result(m);
    m->hist[2 * N_SLICE] += 1000; /* more labels in the combinations than in all rows */
}

static const wire_case_t k_moe_field_checks[] = {
    {"norm[N_NORM + 1] = 0.0f", c_moe_field_checks_0, &k_lim, -EBADMSG,
     "round_start.norm: standard deviation 1"},
    {"before the model is known", c_moe_field_checks_6, &k_no_norm, -EBADMSG,
     "before the model was negotiated"},
    {"hist[2 * N_SLICE] += 1000", c_moe_field_checks_10, &k_lim, -EBADMSG, "in combinations"},
};

static const wire_field_case_t k_moe_field_checks_fields[] = {
    {mk_round_start, "norm[0]", NAN, NULL, &k_lim, -ERANGE, "round_start.norm"},
    {mk_round_start, "frames[1].count", 2 * N_NORM - 1, NULL, &k_lim, -EBADMSG,
     "'norm' has 5 elements, expected 6"},
    {mk_round_start, "round_start.config.prox_mu", -1.0f, NULL, &k_lim, -EBADMSG, "prox_mu"},
    /* feature 1's count */
    {mk_stats_result, "stats[3]", -1.0, NULL, &k_lim, -EBADMSG, "feature 1"},
    {mk_stats_result, "stats[2]", INFINITY, NULL, &k_lim, -ERANGE, "stats_result.stats"},
    {mk_eval_result, "gate[3]", -0.5f, NULL, &k_lim, -EBADMSG, "eval_result.gate: element 3"},
    {mk_eval_result, "gate[0]", NAN, NULL, &k_lim, -ERANGE, "eval_result.gate"},
    {mk_eval_result, "eval_result.n_combo_rows", MOEH_N_COMBOS - 1, NULL, &k_lim, -EBADMSG,
     "combo_rows"},
    {mk_eval_result, "frames[1].count", N_GATE + 1, NULL, &k_lim, -EBADMSG,
     "'gate' has 15 elements, expected 14"},
    {mk_welcome, "welcome.model.n_experts", 8, NULL, &k_lim, -EBADMSG,
     "welcome.model.n_experts: 8"},
    {mk_hello, "hello.n_steps", 1001, NULL, &k_lim, -EBADMSG, "n_steps"},
};

static void test_moe_field_checks(void **state)
{
    WIRE_RUN_CASES(k_moe_field_checks);
    WIRE_RUN_FIELD_CASES(k_moe_field_checks_fields);
}

static void test_frames_where_none_allowed(void **state)
{
    const mk_fn frameless[] = {mk_hello, mk_welcome,      mk_heartbeat,   mk_error,
                               mk_bye,   mk_upload_ready, mk_upload_grant};
    for (size_t i = 0; i < sizeof frameless / sizeof frameless[0]; i++) {
        msg_t m;
        frameless[i](&m);
        m.frames[0] = (moeh_frame_t){"params", MOEH__DTYPE__F32, m.f32, N_PARAMS, NULL};
        m.n_frames = 1;
        check_reject(&m, &k_lim, -EBADMSG, "carries 1 tensor frames, expected none");
    }
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_frame_count_mismatch),
               cmocka_unit_test(test_frame_byte_length),
               cmocka_unit_test(test_tensor_before_negotiation),
               cmocka_unit_test(test_frame_count_name_dtype),
               cmocka_unit_test(test_non_finite_tensors), cmocka_unit_test(test_update_checks),
               cmocka_unit_test(test_eval_result_checks), cmocka_unit_test(test_moe_field_checks),
               cmocka_unit_test(test_frames_where_none_allowed))
