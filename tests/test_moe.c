/* test_moe.c - MoE-Health as a whole: finite-difference gradient check of every parameter for
 * each architecture and phase (MoE warm-up and joint, dense and top-k; unimodal, joint and
 * late and early fusion; hashed notes and CNN images as well as precomputed vectors), group sample
 * counts, sparse gradient reset, validation messages, the LR schedule, determinism. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "gradcheck.h"
#include "moe_synth.h"
#include "moeh_moe.h"

#include <math.h>
#include <string.h>

static moeh_moe_cfg_t small_cfg(moeh_arch_t arch, int precomputed)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    c.arch = arch;
    c.d_emb = 6;
    c.d_hidden = 5;
    c.n_steps = 4;
    c.note_buckets = precomputed ? 0 : 40;
    c.note_dim = precomputed ? 7 : 0;
    c.img_size = precomputed ? 0 : 8;
    c.img_dim = precomputed ? 5 : 0;
    c.cnn_ch[0] = 2, c.cnn_ch[1] = 3, c.cnn_ch[2] = 4;
    c.max_batch = 10;
    c.lambda_lb = 0.1f;
    c.temperature = 0.8f;
    c.pos_weight[0] = 2.0f;
    c.seed = 5;
    return c;
}

typedef struct {
    moeh_moe_t *m;
    moeh_batch_t b;
} mctx;

static double model_loss(void *c_)
{
    mctx *c = c_;
    double l;
    assert_int_equal(moeh_moe_loss(c->m, &c->b, &l), 0);
    return l;
}

/* Central differences over every parameter (up to 300 per tensor, spread evenly), loss in
 * double from a float32 forward: eps = 1e-3, |num - g| <= 2e-2 (|num| + |g|) + 2e-4; ReLU and
 * max-pool kinks fall back to a one-sided difference (at most 10% of entries per tensor). */
/* gradcheck_model_n with the weights of every tensor whose name starts with `prefix` (NULL:
 * none) multiplied by `scale`: at the default initialisation the gradients of the deeper
 * encoder layers can sit below what central differences of a float32 loss resolve. */
static void gradcheck_model_scaled(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label,
                                   size_t max_checks, const char *prefix, float scale)
{
    moeh_moe_t *m = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_moe_create(&cfg, &m, &err), 0);
    moeh_moe_set_phase(m, phase);
    if (prefix) {
        moeh_params_t *pp = moeh_moe_params(m);
        for (size_t v = 0; v < pp->n_views; v++)
            if (!strncmp(pp->views[v].name, prefix, strlen(prefix)))
                for (size_t i = 0; i < pp->views[v].numel; i++)
                    pp->w[pp->views[v].offset + i] *= scale;
    }
    synth_t s;
    const double pa[3] = {0.7, 0.6, 0.6};
    assert_int_equal(synth_make(&s, &cfg, 10, pa, 1.0, 17), 0);
    /* make sure the batch has every combination including "nothing" */
    static const uint8_t av[10][3] = {{1, 0, 0}, {0, 1, 0}, {1, 1, 0}, {0, 0, 1}, {1, 0, 1},
                                      {0, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}, {1, 0, 1}};
    memcpy(s.avail, av, sizeof av);
    mctx c = {m, synth_batch(&s, 0, 10)};
    moeh_params_t *p = moeh_moe_params(m);
    double l1, l2;
    moeh_moe_zero_grad(m);
    assert_int_equal(moeh_moe_loss_backward(m, &c.b, &l1), 0);
    assert_int_equal(moeh_moe_loss(m, &c.b, &l2), 0);
    assert_true(fabs(l1 - l2) < 1e-9 && isfinite(l1));
    gc_opts_t o = {
        .eps = 1e-3, .rtol = 2e-2, .atol = 2e-4, .max_kink_frac = 0.1, .max_checks = max_checks};
    int fails = 0;
    for (size_t v = 0; v < p->n_views; v++) {
        char name[160];
        snprintf(name, sizeof name, "%s:%s", label, p->views[v].name);
        fails += gc_check(name, p->w + p->views[v].offset, p->g + p->views[v].offset,
                          p->views[v].numel, model_loss, &c, o);
    }
    assert_int_equal(fails, 0);
    synth_free(&s);
    moeh_moe_destroy(&m);
}

static void gradcheck_model_n(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label,
                              size_t max_checks)
{
    gradcheck_model_scaled(cfg, phase, label, max_checks, NULL, 1.0f);
}

static void gradcheck_model(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label)
{
    gradcheck_model_n(cfg, phase, label, 300);
}

/* 64x64 images with channel counts that make every conv layer run in several im2col chunks
 * (one image per chunk at these sizes), so chunked forward and the
 * recomputed columns in backward are checked too. 40 entries per tensor. */
static void test_grad_cnn_chunked(void **state)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_UNI_IMG, 0);
    c.img_size = 64;
    c.cnn_ch[0] = 16, c.cnn_ch[1] = 40, c.cnn_ch[2] = 8;
    gradcheck_model_n(c, MOEH_PHASE_JOINT, "cnn64", 40);
}

/* The default CNN widths (16/32/64) and d = 16: on a CPU with AVX-512 every conv layer runs
 * the direct kernels (forward, data gradient, first-layer weight gradient) and the GRU the
 * in-place recurrence kernel (3d = 48 columns); elsewhere the same checks cover im2col and
 * OpenBLAS. Encoder weights are scaled up so that their gradients are well above the
 * finite-difference noise (a wrong data gradient in conv2/conv3 fails this check). */
static void test_grad_direct_kernels(void **state)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_UNI_IMG, 0);
    c.d_emb = 16;
    c.img_size = 16;
    c.cnn_ch[0] = 16, c.cnn_ch[1] = 32, c.cnn_ch[2] = 64;
    gradcheck_model_scaled(c, MOEH_PHASE_JOINT, "direct_img", 40, "img.", 3.0f);
    c = small_cfg(MOEH_ARCH_UNI_EHR, 0);
    c.d_emb = 16;
    gradcheck_model_scaled(c, MOEH_PHASE_JOINT, "direct_ehr", 40, "ehr.", 2.0f);
}

/* 128x128 images: the same code path at the other supported size; a few entries checked. */
static void test_grad_cnn_128(void **state)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_UNI_IMG, 0);
    c.img_size = 128;
    c.cnn_ch[0] = 4, c.cnn_ch[1] = 6, c.cnn_ch[2] = 8;
    gradcheck_model_n(c, MOEH_PHASE_JOINT, "cnn128", 12);
}

static void test_grad_moe_joint(void **state)
{
    gradcheck_model(small_cfg(MOEH_ARCH_MOE, 0), MOEH_PHASE_JOINT, "moe");
}
static void test_grad_moe_topk(void **state)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE, 0);
    c.top_k = 2;
    gradcheck_model(c, MOEH_PHASE_JOINT, "moe_top2");
}
/* the gate supervision kept in joint rounds (gate_sup_joint) on top of routing and load
 * balance: its gradient reaches the gate through the same logits */
static void test_grad_moe_joint_gate_sup(void **state)
{
    (void)state;
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE, 0);
    c.gate_sup_joint = 0.7f;
    gradcheck_model(c, MOEH_PHASE_JOINT, "moe_joint_sup");
    c.top_k = 2;
    gradcheck_model(c, MOEH_PHASE_JOINT, "moe_joint_sup_top2");
}
static void test_grad_moe_warmup(void **state)
{
    gradcheck_model(small_cfg(MOEH_ARCH_MOE, 0), MOEH_PHASE_WARMUP, "moe_warmup");
}
static void test_grad_moe_precomputed(void **state)
{
    gradcheck_model(small_cfg(MOEH_ARCH_MOE, 1), MOEH_PHASE_JOINT, "moe_pre");
}
static void test_grad_baselines(void **state)
{
    gradcheck_model(small_cfg(MOEH_ARCH_UNI_EHR, 0), MOEH_PHASE_JOINT, "uni_ehr");
    gradcheck_model(small_cfg(MOEH_ARCH_UNI_NOTES, 0), MOEH_PHASE_JOINT, "uni_notes");
    gradcheck_model(small_cfg(MOEH_ARCH_UNI_IMG, 0), MOEH_PHASE_JOINT, "uni_img");
    gradcheck_model(small_cfg(MOEH_ARCH_JOINT, 0), MOEH_PHASE_JOINT, "joint");
    gradcheck_model(small_cfg(MOEH_ARCH_LATE, 1), MOEH_PHASE_JOINT, "late");
    gradcheck_model(small_cfg(MOEH_ARCH_LATE, 0), MOEH_PHASE_JOINT, "late_raw");
    gradcheck_model(small_cfg(MOEH_ARCH_EARLY, 0), MOEH_PHASE_JOINT, "early");
    gradcheck_model(small_cfg(MOEH_ARCH_EARLY, 1), MOEH_PHASE_JOINT, "early_pre");
}

static void test_groups_counts_and_sparse_zero(void **state)
{
    moeh_moe_cfg_t cfg = small_cfg(MOEH_ARCH_MOE, 0);
    moeh_moe_t *m = NULL;
    assert_int_equal(moeh_moe_create(&cfg, &m, NULL), 0);
    moeh_params_t *p = moeh_moe_params(m);
    static const char *groups[] = {"encoder_ehr", "encoder_notes", "encoder_img", "missing",
                                   "expert_0",    "expert_6",      "gate",        "heads"};
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++)
        assert_true(moeh_params_group_index(p, groups[i]) >= 0);
    synth_t s;
    const double pa[3] = {1, 1, 0};
    assert_int_equal(synth_make(&s, &cfg, 10, pa, 1.0, 3), 0);
    moeh_batch_t b = synth_batch(&s, 0, 10);
    /* warm-up: EHR+notes rows (combination 3 -> expert_2) only */
    moeh_moe_set_phase(m, MOEH_PHASE_WARMUP);
    double l;
    moeh_moe_zero_grad(m);
    assert_int_equal(moeh_moe_loss_backward(m, &b, &l), 0);
    const uint64_t *cnt = moeh_moe_group_samples(m);
    assert_int_equal(cnt[moeh_params_group_index(p, "encoder_ehr")], 10);
    assert_int_equal(cnt[moeh_params_group_index(p, "encoder_img")], 0);
    assert_int_equal(cnt[moeh_params_group_index(p, "missing")], 10);
    assert_int_equal(cnt[moeh_params_group_index(p, "expert_2")], 10);
    assert_int_equal(cnt[moeh_params_group_index(p, "expert_0")], 0);
    assert_int_equal(cnt[moeh_params_group_index(p, "gate")], 10);
    /* untrained groups have exactly zero gradient */
    for (const char *gname = "expert_0"; gname;
         gname = strcmp(gname, "expert_0") ? NULL : "encoder_img") {
        int g = moeh_params_group_index(p, gname);
        for (size_t i = 0; i < p->group_len[g]; i++)
            assert_true(p->g[p->group_off[g] + i] == 0.0f);
    }
    /* sparse zeroing leaves the whole gradient zero */
    moeh_moe_zero_grad(m);
    for (size_t i = 0; i < p->n; i++)
        assert_true(p->g[i] == 0.0f);
    moeh_moe_reset_group_samples(m);
    assert_int_equal(moeh_moe_group_samples(m)[moeh_params_group_index(p, "heads")], 0);
    /* a bad id is refused with a message */
    s.note_ids[3] = 1000;
    assert_int_equal(moeh_moe_loss_backward(m, &b, &l), -EINVAL);
    assert_non_null(strstr(moeh_moe_last_error(m), "note id 1000"));
    synth_free(&s);
    moeh_moe_destroy(&m);
    moeh_moe_destroy(&m);
}

static void test_schedule(void **state)
{
    assert_true(fabsf(moeh_lr_schedule(1.0f, 5, 10, 110, 0.1f) - 0.5f) < 1e-6f);
    assert_true(fabsf(moeh_lr_schedule(1.0f, 10, 10, 110, 0.1f) - 1.0f) < 1e-6f);
    assert_true(fabsf(moeh_lr_schedule(1.0f, 60, 10, 110, 0.1f) - 0.55f) < 1e-6f);
    assert_true(fabsf(moeh_lr_schedule(1.0f, 110, 10, 110, 0.1f) - 0.1f) < 1e-6f);
    assert_true(fabsf(moeh_lr_schedule(1.0f, 500, 10, 110, 0.1f) - 0.1f) < 1e-6f);
}

/* Two models from the same seed trained on the same batches end bit-identical; the lazy
 * AdamW touches only rows of the embedding table that were used. */
static void test_deterministic_and_lazy(void **state)
{
    moeh_moe_cfg_t cfg = small_cfg(MOEH_ARCH_MOE, 0);
    cfg.dropout = 0.2f;
    cfg.top_k = 3;
    moeh_moe_t *a = NULL, *b = NULL;
    assert_int_equal(moeh_moe_create(&cfg, &a, NULL), 0);
    assert_int_equal(moeh_moe_create(&cfg, &b, NULL), 0);
    synth_t s;
    const double pa[3] = {0.8, 0.5, 0.5};
    assert_int_equal(synth_make(&s, &cfg, 30, pa, 1.0, 9), 0);
    /* restrict note ids to the first 20 buckets */
    for (size_t i = 0; i < 30 * s.tokens_per_note; i++)
        s.note_ids[i] %= 20;
    moeh_params_t *pa_ = moeh_moe_params(a), *pb = moeh_moe_params(b);
    int e = moeh_params_find(pa_, "notes.embed.weight");
    float row25[6];
    memcpy(row25, moeh_params_w(pa_, e) + 25 * 6, sizeof row25);
    moeh_adamw_cfg_t ac = moeh_adamw_defaults();
    ac.clip = 1.0f;
    for (uint64_t step = 1; step <= 6; step++) {
        moeh_batch_t bt = synth_batch(&s, (step % 3) * 10, 10);
        double la, lb;
        assert_int_equal(moeh_moe_loss_backward(a, &bt, &la), 0);
        assert_int_equal(moeh_moe_loss_backward(b, &bt, &lb), 0);
        assert_true(la == lb);
        moeh_moe_adamw_step(a, &ac, step);
        moeh_moe_adamw_step(b, &ac, step);
    }
    assert_memory_equal(pa_->w, pb->w, pa_->n * sizeof(float));
    assert_memory_equal(moeh_params_w(pa_, e) + 25 * 6, row25, sizeof row25);
    assert_true(memcmp(pa_->w, pb->w, 4) == 0);
    synth_free(&s);
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&b);
}

/* cfg.threads = 2 (images split between two workers, the second one summing its image
 * gradients in afterwards) gives the same loss, gradients equal up to float summation order
 * (max error <= 1e-5 of the tensor's largest entry), and is itself deterministic. */
static void test_threads_consistent(void **state)
{
    moeh_moe_cfg_t cfg = small_cfg(MOEH_ARCH_MOE, 0);
    moeh_moe_t *a = NULL, *b = NULL, *b2 = NULL;
    assert_int_equal(moeh_moe_create(&cfg, &a, NULL), 0);
    cfg.threads = 2;
    assert_int_equal(moeh_moe_create(&cfg, &b, NULL), 0);
    assert_int_equal(moeh_moe_create(&cfg, &b2, NULL), 0);
    synth_t s;
    const double pa[3] = {0.8, 0.7, 0.7};
    assert_int_equal(synth_make(&s, &cfg, 10, pa, 1.0, 5), 0);
    moeh_batch_t bt = synth_batch(&s, 0, 10);
    double la, lb, lb2;
    moeh_moe_zero_grad(a);
    moeh_moe_zero_grad(b);
    moeh_moe_zero_grad(b2);
    assert_int_equal(moeh_moe_loss_backward(a, &bt, &la), 0);
    assert_int_equal(moeh_moe_loss_backward(b, &bt, &lb), 0);
    assert_int_equal(moeh_moe_loss_backward(b2, &bt, &lb2), 0);
    assert_true(fabs(la - lb) <= 1e-6 * fabs(la) && lb == lb2);
    moeh_params_t *pa_ = moeh_moe_params(a), *pb = moeh_moe_params(b), *pb2 = moeh_moe_params(b2);
    assert_memory_equal(pb->g, pb2->g, pb->n * sizeof(float));
    for (size_t v = 0; v < pa_->n_views; v++) {
        const float *ga = pa_->g + pa_->views[v].offset, *gb = pb->g + pb->views[v].offset;
        double me = 0, mx = 0;
        for (size_t i = 0; i < pa_->views[v].numel; i++) {
            me = fmax(me, fabs((double)ga[i] - gb[i]));
            mx = fmax(mx, fabs((double)ga[i]));
        }
        assert_true(me <= 1e-5 * mx + 1e-12);
    }
    /* the two-worker AdamW step (dense + lazy rows split) matches the serial one */
    moeh_adamw_cfg_t ac = moeh_adamw_defaults();
    ac.clip = 0.5f;
    memcpy(pb->g, pa_->g, pa_->n * sizeof(float)); /* same gradients in */
    memcpy(pb2->g, pa_->g, pa_->n * sizeof(float));
    moeh_moe_adamw_step(a, &ac, 1);
    moeh_moe_adamw_step(b, &ac, 1);
    moeh_moe_adamw_step(b2, &ac, 1);
    assert_memory_equal(pb->w, pb2->w, pb->n * sizeof(float));
    for (size_t i = 0; i < pa_->n; i++)
        assert_true(fabs((double)pa_->w[i] - pb->w[i]) <= 1e-6 * (fabs((double)pa_->w[i]) + 1e-3));
    for (size_t i = 0; i < pa_->n; i++)
        assert_true(pa_->g[i] == 0.0f && pb->g[i] == 0.0f);
    synth_free(&s);
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&b);
    moeh_moe_destroy(&b2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_moe_joint),
        cmocka_unit_test(test_grad_moe_topk),
        cmocka_unit_test(test_grad_moe_joint_gate_sup),
        cmocka_unit_test(test_grad_moe_warmup),
        cmocka_unit_test(test_grad_moe_precomputed),
        cmocka_unit_test(test_grad_baselines),
        cmocka_unit_test(test_grad_cnn_chunked),
        cmocka_unit_test(test_grad_direct_kernels),
        cmocka_unit_test(test_grad_cnn_128),
        cmocka_unit_test(test_groups_counts_and_sparse_zero),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_deterministic_and_lazy),
        cmocka_unit_test(test_threads_consistent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
