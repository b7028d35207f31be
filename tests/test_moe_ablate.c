/* test_moe_ablate.c - the two model ablations of issue 15 (model/moe_cfg.c, moe.c, moe_pass.c):
 *   missing_zero:  an absent modality's encoding is a zero vector (no missing.* parameters);
 *   gate_no_avail: the gate does not see the availability columns of z.
 * Each passes the finite-difference gradient check; each equals the default model with the
 * corresponding weights zeroed (exactly, same arithmetic); the options are absent from the
 * default canonical JSON (its hash is unchanged), round-trip when set, and are refused where
 * the architecture has no such part. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moe_small.h"

#include <math.h>
#include <string.h>

static moeh_moe_cfg_t small_cfg(moeh_arch_t arch)
{
    return moe_small_cfg(arch, 0);
}

/* the same tolerances as test_moe's gradcheck */
static void gradcheck(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label)
{
    moe_gradcheck(cfg, phase, label, 300, NULL, 1.0f);
}

static void test_grad_missing_zero(void **state)
{
    (void)state;
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE);
    c.missing_zero = 1;
    gradcheck(c, MOEH_PHASE_JOINT, "moe_missing_zero");
    gradcheck(c, MOEH_PHASE_WARMUP, "moe_missing_zero_warmup");
    moeh_moe_cfg_t j = small_cfg(MOEH_ARCH_JOINT);
    j.missing_zero = 1;
    gradcheck(j, MOEH_PHASE_JOINT, "joint_missing_zero");
}

static void test_grad_gate_no_avail(void **state)
{
    (void)state;
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE);
    c.gate_no_avail = 1;
    /* seed 6: at seed 5 one row's gate argmax lies within eps of a tie, where the Switch
     * load-balancing term (a count of argmaxes) jumps, so 3 of the 5 gate.fc1.bias entries
     * need the one-sided fallback; with lambda_lb = 0 seed 5 passes without any */
    c.seed = 6;
    gradcheck(c, MOEH_PHASE_JOINT, "moe_gate_no_avail");
    c.top_k = 2;
    c.missing_zero = 1;
    gradcheck(c, MOEH_PHASE_JOINT, "moe_gate_no_avail_top2_missing_zero");
}

/* Copies every tensor of `from` into the tensor of the same name in `to` (same shapes). */
static void copy_by_name(moeh_moe_t *to, moeh_moe_t *from)
{
    moeh_params_t *pt = moeh_moe_params(to), *pf = moeh_moe_params(from);
    for (size_t v = 0; v < pf->n_views; v++) {
        int k = moeh_params_find(pt, pf->views[v].name);
        assert_true(k >= 0);
        assert_int_equal(pt->views[k].numel, pf->views[v].numel);
        memcpy(pt->w + pt->views[k].offset, pf->w + pf->views[v].offset,
               pf->views[v].numel * sizeof(float));
    }
}

static void predict(moeh_moe_t *m, const synth_t *s, float *probs)
{
    moeh_batch_t b = synth_batch(s, 0, 10);
    assert_int_equal(moeh_moe_predict(m, &b, probs), 0);
}

/* The default small MoE (c0, m0) and the same with one ablation set (c1, m1), and their data. */
typedef struct {
    moeh_moe_cfg_t c0, c1;
    moeh_moe_t *m0, *m1;
    moeh_params_t *p0, *p1;
    synth_t s;
} ablation_t;

static void ablation_create(ablation_t *t, int missing_zero, int gate_no_avail)
{
    t->c0 = t->c1 = small_cfg(MOEH_ARCH_MOE);
    t->c1.missing_zero = missing_zero, t->c1.gate_no_avail = gate_no_avail;
    t->m0 = t->m1 = NULL;
    assert_int_equal(moeh_moe_create(&t->c0, &t->m0, NULL), 0);
    assert_int_equal(moeh_moe_create(&t->c1, &t->m1, NULL), 0);
    t->p0 = moeh_moe_params(t->m0), t->p1 = moeh_moe_params(t->m1);
    moe_small_data(&t->s, &t->c0);
}

/* The two models' predictions (a: default, b: ablated), which must differ. */
static void ablation_predict_differ(ablation_t *t, float a[30], float b[30])
{
    predict(t->m0, &t->s, a);
    predict(t->m1, &t->s, b);
    int differ = 0;
    for (int i = 0; i < 30; i++)
        differ |= a[i] != b[i];
    assert_true(differ);
}

static void ablation_destroy(ablation_t *t)
{
    synth_free(&t->s);
    moeh_moe_destroy(&t->m0);
    moeh_moe_destroy(&t->m1);
}

/* missing_zero = the default model whose missing.* embeddings are zeros, and it has no
 * missing.* tensors (nothing for the federation to aggregate in that group). */
static void test_missing_zero_is_zero_embedding(void **state)
{
    (void)state;
    ablation_t t;
    ablation_create(&t, 1, 0);
    moeh_params_t *p0 = t.p0, *p1 = t.p1;
    assert_int_equal(p1->n_views + 3, p0->n_views);
    for (size_t v = 0; v < p1->n_views; v++)
        assert_true(strncmp(p1->views[v].name, "missing.", 8) != 0);
    assert_true(moeh_params_group_index(p1, "missing") < 0);
    copy_by_name(t.m0, t.m1);
    float a[30], b[30];
    /* the default's learnable embeddings (N(0, 0.02^2)) do matter */
    ablation_predict_differ(&t, a, b);
    for (size_t v = 0; v < p0->n_views; v++)
        if (!strncmp(p0->views[v].name, "missing.", 8))
            memset(p0->w + p0->views[v].offset, 0, p0->views[v].numel * sizeof(float));
    predict(t.m0, &t.s, a);
    assert_memory_equal(a, b, sizeof a);
    ablation_destroy(&t);
}

/* gate_no_avail = the default model whose gate.fc1 columns for the availability inputs (the
 * last n_used = 3 of z) are zero; those columns get no gradient and changing them changes
 * nothing. */
static void test_gate_no_avail_ignores_availability(void **state)
{
    (void)state;
    ablation_t t;
    ablation_create(&t, 0, 1);
    moeh_moe_cfg_t c0 = t.c0;
    moeh_moe_t *m0 = t.m0, *m1 = t.m1;
    moeh_params_t *p0 = t.p0, *p1 = t.p1;
    assert_int_equal(p0->n, p1->n);
    assert_memory_equal(p0->w, p1->w, p0->n * sizeof(float)); /* same init */
    float a[30], b[30];
    ablation_predict_differ(&t, a, b);
    int g = moeh_params_find(p0, "gate.fc1.weight");
    assert_true(g >= 0);
    size_t dh = c0.d_hidden, Dz = p0->views[g].numel / dh;
    assert_int_equal(Dz, 3 * (c0.d_emb + 1));
    for (size_t r = 0; r < dh; r++)
        for (size_t k = Dz - 3; k < Dz; k++)
            p0->w[p0->views[g].offset + r * Dz + k] = 0.0f;
    predict(m0, &t.s, a);
    assert_memory_equal(a, b, sizeof a);
    /* the availability columns of gate.fc1 get no gradient; moving them changes nothing */
    moeh_batch_t bt = synth_batch(&t.s, 0, 10);
    double l1, l2;
    moeh_moe_zero_grad(m1);
    assert_int_equal(moeh_moe_loss_backward(m1, &bt, &l1), 0);
    float gsum = 0;
    for (size_t r = 0; r < dh; r++)
        for (size_t k = Dz - 3; k < Dz; k++) {
            gsum += fabsf(p1->g[p1->views[g].offset + r * Dz + k]);
            p1->w[p1->views[g].offset + r * Dz + k] += 5.0f;
        }
    assert_true(gsum == 0.0f);
    assert_int_equal(moeh_moe_loss(m1, &bt, &l2), 0);
    assert_true(l1 == l2);
    ablation_destroy(&t);
}

/* The default JSON has neither key (the spec hash of every earlier model stays); set keys
 * round-trip; a JSON without them reads as 0; the validator refuses them where they make no
 * sense; the option fragment offers them. */
static void test_cfg_ablation_keys(void **state)
{
    (void)state;
    moeh_err_t err = {{0}};
    moeh_moe_cfg_t c = moeh_moe_defaults(10, 20), back;
    char *js = NULL, *js2 = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js, &err), 0);
    assert_null(strstr(js, "missing_zero"));
    assert_null(strstr(js, "gate_no_avail"));
    memset(&back, 0xff, sizeof back);
    assert_int_equal(moeh_moe_cfg_from_json(js, &back, &err), 0);
    assert_int_equal(back.missing_zero, 0);
    assert_int_equal(back.gate_no_avail, 0);
    c.missing_zero = 1, c.gate_no_avail = 1;
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js2, &err), 0);
    assert_non_null(strstr(js2, "\"missing_zero\":1"));
    assert_non_null(strstr(js2, "\"gate_no_avail\":1"));
    assert_true(moeh_moe_cfg_json_hash(js) != moeh_moe_cfg_json_hash(js2));
    assert_int_equal(moeh_moe_cfg_from_json(js2, &back, &err), 0);
    assert_int_equal(back.missing_zero, 1);
    assert_int_equal(back.gate_no_avail, 1);
    assert_int_equal(moeh_moe_cfg_validate(&back, &err), 0);
    free(js);
    free(js2);
    c.missing_zero = 2;
    assert_int_equal(moeh_moe_cfg_validate(&c, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "missing_zero"));
    c.missing_zero = 0;
    c.arch = MOEH_ARCH_JOINT;
    assert_int_equal(moeh_moe_cfg_validate(&c, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "gate_no_avail"));
    c.gate_no_avail = 0, c.missing_zero = 1, c.arch = MOEH_ARCH_EARLY;
    assert_int_equal(moeh_moe_cfg_validate(&c, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "missing_zero"));
    moeh_opt_t opts[64];
    size_t n = 0;
    moeh_moe_cfg_t o = moeh_moe_defaults(1, 1);
    assert_int_equal(moeh_moe_cfg_options(&o, opts, &n, 64), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        found += !strcmp(opts[i].name, "missing-zero") || !strcmp(opts[i].name, "gate-no-avail");
    assert_int_equal(found, 2);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_grad_missing_zero),
               cmocka_unit_test(test_grad_gate_no_avail),
               cmocka_unit_test(test_missing_zero_is_zero_embedding),
               cmocka_unit_test(test_gate_no_avail_ignores_availability),
               cmocka_unit_test(test_cfg_ablation_keys))
