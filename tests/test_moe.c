/* test_moe.c - MoE-Health as a whole: finite-difference gradient check of every parameter for
 * each architecture and phase (MoE warm-up and joint, dense and top-k; unimodal, joint and
 * late and early fusion; hashed notes and CNN images as well as precomputed vectors), group sample
 * counts, sparse gradient reset, validation messages, the LR schedule, determinism; and the
 * model spec: canonical JSON round trip, the strict reader, every limit of the validator and
 * the option fragment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moe_small.h"

#include <math.h>
#include <string.h>

/* moe_small_cfg with task 0's positive class weighted 2 (the weighted loss is checked too) */
static moeh_moe_cfg_t small_cfg(moeh_arch_t arch, int precomputed)
{
    moeh_moe_cfg_t c = moe_small_cfg(arch, precomputed);
    c.pos_weight[0] = 2.0f;
    return c;
}

static void gradcheck_model_n(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label,
                              size_t max_checks)
{
    moe_gradcheck(cfg, phase, label, max_checks, NULL, 1.0f);
}

static void gradcheck_model(moeh_moe_cfg_t cfg, moeh_phase_t phase, const char *label)
{
    gradcheck_model_n(cfg, phase, label, 300);
}

/* The image-only model with size x size images and conv widths c1/c2/c3, max_checks entries per
 * tensor checked. */
static void gradcheck_cnn(size_t size, size_t c1, size_t c2, size_t c3, const char *label,
                          size_t max_checks)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_UNI_IMG, 0);
    c.img_size = size;
    c.cnn_ch[0] = c1, c.cnn_ch[1] = c2, c.cnn_ch[2] = c3;
    gradcheck_model_n(c, MOEH_PHASE_JOINT, label, max_checks);
}

/* 64x64 images with channel counts that make every conv layer run in several im2col chunks
 * (one image per chunk at these sizes), so chunked forward and the
 * recomputed columns in backward are checked too. 40 entries per tensor. */
static void test_grad_cnn_chunked(void **state)
{
    gradcheck_cnn(64, 16, 40, 8, "cnn64", 40);
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
    moe_gradcheck(c, MOEH_PHASE_JOINT, "direct_img", 40, "img.", 3.0f);
    c = small_cfg(MOEH_ARCH_UNI_EHR, 0);
    c.d_emb = 16;
    moe_gradcheck(c, MOEH_PHASE_JOINT, "direct_ehr", 40, "ehr.", 2.0f);
}

/* 128x128 images: the same code path at the other supported size; a few entries checked. */
static void test_grad_cnn_128(void **state)
{
    gradcheck_cnn(128, 4, 6, 8, "cnn128", 12);
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

/* ---- the model spec (moe_cfg.c) ----------------------------------------------------------- */

/* A configuration with every field away from its default (floats without a short decimal). */
static moeh_moe_cfg_t odd_cfg(void)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(11, 13);
    c.arch = MOEH_ARCH_LATE;
    c.d_emb = 7, c.d_hidden = 9, c.n_steps = 17, c.note_buckets = 19, c.note_dim = 23;
    c.img_size = 24, c.img_dim = 29, c.cnn_ch[0] = 3, c.cnn_ch[1] = 5, c.cnn_ch[2] = 1024;
    c.n_tasks = 4, c.top_k = 2;
    c.temperature = 0.1f, c.lambda_lb = 1e-7f, c.gate_sup = 3.3f;
    c.gate_sup_joint = nextafterf(0.25f, 1.0f), c.dropout = 0.3f, c.missing_init = 0.07f;
    for (int t = 0; t < MOEH_MAX_TASKS; t++)
        c.pos_weight[t] = 0.7f * (float)t + 1e-3f;
    c.max_batch = 99, c.threads = 2, c.seed = UINT64_MAX - 12345;
    return c;
}

#define CFG_SAME(a, b)                                                                             \
    do {                                                                                           \
        assert_int_equal((a).arch, (b).arch);                                                      \
        assert_int_equal((a).d_emb, (b).d_emb);                                                    \
        assert_int_equal((a).d_hidden, (b).d_hidden);                                              \
        assert_int_equal((a).n_static, (b).n_static);                                              \
        assert_int_equal((a).n_vars, (b).n_vars);                                                  \
        assert_int_equal((a).n_steps, (b).n_steps);                                                \
        assert_int_equal((a).note_buckets, (b).note_buckets);                                      \
        assert_int_equal((a).note_dim, (b).note_dim);                                              \
        assert_int_equal((a).img_size, (b).img_size);                                              \
        assert_int_equal((a).img_dim, (b).img_dim);                                                \
        assert_memory_equal((a).cnn_ch, (b).cnn_ch, sizeof(a).cnn_ch);                             \
        assert_int_equal((a).n_tasks, (b).n_tasks);                                                \
        assert_int_equal((a).top_k, (b).top_k);                                                    \
        assert_memory_equal(&(a).temperature, &(b).temperature, sizeof(float));                    \
        assert_memory_equal(&(a).lambda_lb, &(b).lambda_lb, sizeof(float));                        \
        assert_memory_equal(&(a).gate_sup, &(b).gate_sup, sizeof(float));                          \
        assert_memory_equal(&(a).gate_sup_joint, &(b).gate_sup_joint, sizeof(float));              \
        assert_memory_equal(&(a).dropout, &(b).dropout, sizeof(float));                            \
        assert_memory_equal(&(a).missing_init, &(b).missing_init, sizeof(float));                  \
        assert_memory_equal((a).pos_weight, (b).pos_weight, sizeof(a).pos_weight);                 \
        assert_int_equal((a).max_batch, (b).max_batch);                                            \
        assert_int_equal((a).threads, (b).threads);                                                \
        assert_true((a).seed == (b).seed);                                                         \
    } while (0)

/* Every field survives the JSON exactly (floats bit for bit); the text is canonical (the same
 * config writes the same bytes, keys in the fixed order); random floats round-trip too. */
static void test_cfg_json_roundtrip(void **state)
{
    moeh_err_t err = {{0}};
    moeh_moe_cfg_t c = odd_cfg(), back;
    memset(&back, 0, sizeof back);
    char *js = NULL, *js2 = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js, &err), 0);
    assert_int_equal(moeh_moe_cfg_from_json(js, &back, &err), 0);
    CFG_SAME(c, back);
    assert_int_equal(moeh_moe_cfg_to_json(&back, &js2, &err), 0);
    assert_string_equal(js, js2);
    assert_true(moeh_moe_cfg_json_hash(js) == moeh_moe_cfg_json_hash(js2));
    assert_non_null(strstr(js, "\"seed\":\"18446744073709539270\""));
    free(js2);
    /* whitespace and key order do not matter to the reader */
    moeh_moe_cfg_t d = moeh_moe_defaults(3, 2);
    free(js);
    assert_int_equal(moeh_moe_cfg_to_json(&d, &js, &err), 0);
    assert_string_equal(
        js, "{\"arch\":0,\"d_emb\":128,\"d_hidden\":128,\"n_static\":3,\"n_vars\":2,\"n_steps\":48,"
            "\"note_buckets\":65536,\"note_dim\":0,\"img_size\":64,\"img_dim\":0,\"cnn_ch\":[16,32,"
            "64],\"n_tasks\":3,\"top_k\":0,\"temperature\":1,\"lambda_lb\":0.01,\"gate_sup\":1,"
            "\"gate_sup_joint\":0,\"dropout\":0,\"missing_init\":0.02,\"pos_weight\":[0,0,0,0,0,0,"
            "0,0],\"max_batch\":64,"
            "\"threads\":0,\"seed\":\"1\"}");
    const char *shuffled =
        "{ \"seed\" : \"1\", \"threads\":0,\"max_batch\":64,\"pos_weight\":[0,0,0,0,0,0,0,0],"
        "\"missing_init\":0.02,\"dropout\":0,\"gate_sup_joint\":0,\"gate_sup\":1,\"lambda_lb\":0."
        "01,\"temperature\":1,"
        "\"top_k\":0,\"n_tasks\":3,\"cnn_ch\":[16,32,64],\"img_dim\":0,\"img_size\":64,"
        "\"note_dim\":0,\"note_buckets\":65536,\"n_steps\":48,\"n_vars\":2,\"n_static\":3,"
        "\"d_hidden\":128,\"d_emb\":128,\"arch\":0 }\n";
    assert_int_equal(moeh_moe_cfg_from_json(shuffled, &back, &err), 0);
    CFG_SAME(d, back);
    free(js);
    /* floats: any finite value comes back bit for bit */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t bits = (uint32_t)x;
        float f;
        memcpy(&f, &bits, 4);
        if (!isfinite(f)) continue;
        d.gate_sup = f;
        assert_int_equal(moeh_moe_cfg_to_json(&d, &js, &err), 0);
        assert_int_equal(moeh_moe_cfg_from_json(js, &back, &err), 0);
        assert_memory_equal(&back.gate_sup, &f, 4);
        free(js);
    }
    /* a non-finite float has no JSON: refused, naming the field */
    d.dropout = NAN;
    assert_int_equal(moeh_moe_cfg_to_json(&d, &js, &err), -EINVAL);
    assert_null(js);
    assert_non_null(strstr(err.msg, "dropout"));
}

/* Replaces the first occurrence of `from` in the canonical JSON of the defaults by `to`. */
static char *edited_json(const char *from, const char *to)
{
    moeh_moe_cfg_t d = moeh_moe_defaults(3, 2);
    char *js = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&d, &js, NULL), 0);
    char *p = strstr(js, from);
    assert_non_null(p);
    char *out = malloc(strlen(js) + strlen(to) + 1);
    size_t pre = (size_t)(p - js);
    memcpy(out, js, pre);
    strcpy(out + pre, to);
    strcat(out, p + strlen(from));
    free(js);
    return out;
}

static void test_cfg_from_json_refuses(void **state)
{
    static const struct {
        const char *from, *to, *needle;
    } cases[] = {
        {"\"arch\":0,", "\"arch\":0,\"d_embb\":3,", "unknown key \"d_embb\""},
        {"\"top_k\":0,", "", "missing key \"top_k\""},
        {",\"seed\":\"1\"", "", "missing key \"seed\""},
        {"\"arch\":0,", "\"arch\":0,\"arch\":0,", "\"arch\" appears twice"},
        {"\"d_emb\":128", "\"d_emb\":\"128\"", "d_emb: expected a number"},
        {"\"d_emb\":128", "\"d_emb\":6.5", "d_emb: 6.5 is not a non-negative integer"},
        {"\"d_hidden\":128", "\"d_hidden\":-1", "d_hidden: -1 is not a non-negative integer"},
        {"\"threads\":0", "\"threads\":true", "threads: expected a number"},
        {"\"temperature\":1", "\"temperature\":null", "temperature: expected a number"},
        {"\"lambda_lb\":0.01", "\"lambda_lb\":1e39", "lambda_lb: 1e+39 does not fit a float"},
        {"[16,32,64]", "[16,32]", "cnn_ch: expected an array of 3 numbers"},
        {"[16,32,64]", "16", "cnn_ch: expected an array of 3 numbers"},
        {"[16,32,64]", "[16,\"32\",64]", "cnn_ch: expected a number in each element"},
        {"[0,0,0,0,0,0,0,0]", "[0,0,0]", "pos_weight: expected an array of 8 numbers"},
        {"\"seed\":\"1\"", "\"seed\":1", "seed: expected a string of decimal digits"},
        {"\"seed\":\"1\"", "\"seed\":\"-1\"", "seed: expected a string of decimal digits"},
        {"\"seed\":\"1\"", "\"seed\":\"18446744073709551616\"", "seed: 18446744073709551616"},
        {"\"seed\":\"1\"}", "\"seed\":\"1\"} x", "not a JSON object"},
        {"{", "[", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *js = edited_json(cases[i].from, cases[i].to);
        moeh_moe_cfg_t c = odd_cfg(), keep = c;
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_moe_cfg_from_json(js, &c, &err), -EINVAL);
        if (!strstr(err.msg, cases[i].needle))
            print_message("case %zu: '%s' lacks '%s'\n", i, err.msg, cases[i].needle);
        assert_non_null(strstr(err.msg, cases[i].needle));
        CFG_SAME(c, keep); /* untouched on failure */
        free(js);
    }
}

typedef void (*cfg_mut_t)(moeh_moe_cfg_t *c);
#define MUT(name, body)                                                                            \
    static void name(moeh_moe_cfg_t *c)                                                            \
    {                                                                                              \
        body;                                                                                      \
    }
MUT(m_arch, c->arch = (moeh_arch_t)7)
MUT(m_demb0, c->d_emb = 0)
MUT(m_demb_big, c->d_emb = 65537)
MUT(m_dhid0, c->d_hidden = 0)
MUT(m_static_big, c->n_static = (1u << 20) + 1)
MUT(m_vars_big, c->n_vars = 4097)
MUT(m_steps_big, c->n_steps = 1001)
MUT(m_buckets_big, c->note_buckets = (1u << 24) + 1)
MUT(m_notedim_big, c->note_dim = (1u << 16) + 1)
MUT(m_img_big, c->img_size = 1028)
MUT(m_imgdim_big, c->img_dim = (1u << 16) + 1)
MUT(m_cnn_big, c->cnn_ch[1] = 1025)
MUT(m_tasks0, c->n_tasks = 0)
MUT(m_tasks9, c->n_tasks = MOEH_MAX_TASKS + 1)
MUT(m_topk, c->top_k = 8)
MUT(m_temp0, c->temperature = 0)
MUT(m_temp_nan, c->temperature = NAN)
MUT(m_lb_neg, c->lambda_lb = -1e-3f)
MUT(m_gs_neg, c->gate_sup = -1)
MUT(m_gsj_inf, c->gate_sup_joint = INFINITY)
MUT(m_drop1, c->dropout = 1)
MUT(m_pw_neg, c->pos_weight[2] = -1)
MUT(m_mi_neg, c->missing_init = -0.5f)
MUT(m_batch0, c->max_batch = 0)
MUT(m_batch_big, c->max_batch = 65537)
MUT(m_threads, c->threads = 65)
MUT(m_early8, (c->arch = MOEH_ARCH_EARLY, c->img_size = 12))
MUT(m_ehr_static, c->n_static = 0)
MUT(m_ehr_steps, c->n_steps = 0)
MUT(m_notes, (c->note_buckets = 0, c->note_dim = 0))
MUT(m_img4, c->img_size = 66)
MUT(m_cnn0, c->cnn_ch[0] = 0)
MUT(m_img_none, (c->img_size = 0, c->img_dim = 0))

/* Every limit of moeh_moe_cfg_validate, each refused with a message naming the field; the same
 * configs are refused by moeh_moe_create; the limits are inclusive where they say so. */
static void test_cfg_validate(void **state)
{
    static const struct {
        cfg_mut_t mut;
        const char *needle;
    } cases[] = {
        {m_arch, "arch = 7, expected 0..6"},
        {m_demb0, "d_emb = 0, expected 1..65536"},
        {m_demb_big, "d_emb = 65537"},
        {m_dhid0, "d_hidden = 0"},
        {m_static_big, "n_static = 1048577"},
        {m_vars_big, "n_vars = 4097"},
        {m_steps_big, "n_steps = 1001"},
        {m_buckets_big, "note_buckets = 16777217"},
        {m_notedim_big, "note_dim = 65537"},
        {m_img_big, "img_size = 1028"},
        {m_imgdim_big, "img_dim = 65537"},
        {m_cnn_big, "cnn_ch[1] = 1025, expected 0..1024"},
        {m_tasks0, "n_tasks = 0, expected 1..8"},
        {m_tasks9, "n_tasks = 9"},
        {m_topk, "top_k = 8, expected 0..7"},
        {m_temp0, "temperature = 0, expected a finite number > 0"},
        {m_temp_nan, "temperature = nan"},
        {m_lb_neg, "lambda_lb = -0.001, expected a finite number >= 0"},
        {m_gs_neg, "gate_sup = -1"},
        {m_gsj_inf, "gate_sup_joint = inf"},
        {m_drop1, "dropout = 1, expected [0, 1)"},
        {m_pw_neg, "pos_weight[2] = -1"},
        {m_mi_neg, "missing_init = -0.5, expected a finite number >= 0"},
        {m_batch0, "max_batch = 0"},
        {m_batch_big, "max_batch = 65537"},
        {m_threads, "threads = 65"},
        {m_early8, "img_size = 12, early fusion"},
        {m_ehr_static, "n_static = 0"},
        {m_ehr_steps, "n_steps = 0"},
        {m_notes, "note_buckets and note_dim are 0"},
        {m_img4, "img_size = 66, expected a multiple of 4"},
        {m_cnn0, "cnn_ch[0] = 0"},
        {m_img_none, "img_size and img_dim are 0"},
    };
    moeh_moe_cfg_t ok = moeh_moe_defaults(3, 2);
    assert_int_equal(moeh_moe_cfg_validate(&ok, NULL), 0);
    /* the upper limits themselves are allowed */
    ok.d_emb = ok.d_hidden = ok.max_batch = 65536, ok.top_k = 7, ok.n_tasks = MOEH_MAX_TASKS;
    ok.cnn_ch[2] = 1024, ok.img_size = 1024, ok.note_buckets = 1u << 24;
    assert_int_equal(moeh_moe_cfg_validate(&ok, NULL), 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE, 0);
        assert_int_equal(moeh_moe_cfg_validate(&c, NULL), 0);
        cases[i].mut(&c);
        moeh_err_t err = {{0}};
        assert_int_equal(moeh_moe_cfg_validate(&c, &err), -EINVAL);
        if (!strstr(err.msg, cases[i].needle))
            print_message("case %zu: '%s' lacks '%s'\n", i, err.msg, cases[i].needle);
        assert_non_null(strstr(err.msg, cases[i].needle));
        moeh_moe_t *m = NULL;
        moeh_err_t e2 = {{0}};
        assert_int_equal(moeh_moe_create(&c, &m, &e2), -EINVAL);
        assert_null(m);
        assert_string_equal(err.msg, e2.msg);
    }
    /* before the data: shapes are stood in for, every other field checked */
    moeh_moe_cfg_t h = moeh_moe_defaults(0, 0);
    assert_int_equal(moeh_moe_cfg_validate(&h, NULL), -EINVAL); /* no EHR shapes */
    assert_int_equal(moeh_moe_cfg_validate_hyper(&h, NULL), 0);
    h.arch = MOEH_ARCH_EARLY;
    assert_int_equal(moeh_moe_cfg_validate_hyper(&h, NULL), 0);
    h.top_k = 8;
    moeh_err_t eh = {{0}};
    assert_int_equal(moeh_moe_cfg_validate_hyper(&h, &eh), -EINVAL);
    assert_non_null(strstr(eh.msg, "top_k = 8"));
    /* an encoder an arch does not use needs nothing */
    moeh_moe_cfg_t u = small_cfg(MOEH_ARCH_UNI_NOTES, 0);
    u.n_static = 0, u.img_size = 0, u.img_dim = 0;
    assert_int_equal(moeh_moe_cfg_validate(&u, NULL), 0);
}

/* The option fragment: one entry per hyperparameter, parsed straight into the config; the
 * data shapes and the seed are not options; a full table is -ENOSPC. */
static void test_cfg_options(void **state)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    moeh_opt_t opts[16];
    size_t n = 0;
    assert_int_equal(moeh_moe_cfg_options(&c, opts, &n, 16), 0);
    assert_true(n >= 10);
    for (size_t i = 0; i < n; i++) {
        assert_true(strcmp(opts[i].name, "seed") != 0 && strcmp(opts[i].name, "n-static") != 0);
        assert_non_null(opts[i].help);
    }
    moeh_opts_t o = {.prog = "t", .synopsis = "", .opts = opts, .n_opts = n};
    char *argv[] = {"t",     "--arch",         "4",    "--d-emb",        "7",   "--d-hidden",
                    "9",     "--note-buckets", "33",   "--top-k",        "2",   "--temperature",
                    "0.5",   "--lambda-lb",    "0.25", "--gate-sup",     "2",   "--gate-sup-joint",
                    "0.125", "--dropout",      "0.1",  "--missing-init", "0.5", NULL};
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_opts_parse(&o, 23, argv, &err), 0);
    assert_int_equal(c.arch, MOEH_ARCH_JOINT);
    assert_true(c.d_emb == 7 && c.d_hidden == 9 && c.note_buckets == 33 && c.top_k == 2);
    assert_true(c.temperature == 0.5f && c.lambda_lb == 0.25f && c.gate_sup == 2.0f);
    assert_true(c.gate_sup_joint == 0.125f && c.dropout == 0.1f && c.missing_init == 0.5f);
    assert_true(c.n_static == 3 && c.n_vars == 2 && c.seed == 1);
    moeh_opts_free(&o);
    size_t m = 14;
    assert_int_equal(moeh_moe_cfg_options(&c, opts, &m, 16), -ENOSPC);
}

/* cfg.missing_init scales the missing-modality embeddings at initialisation (same draws: the
 * same seed gives exactly twice the values at twice the std) and nothing else. */
static void test_missing_init(void **state)
{
    moeh_moe_cfg_t c = small_cfg(MOEH_ARCH_MOE, 0);
    assert_true(c.missing_init == 0.02f);
    moeh_moe_t *a = NULL, *b = NULL;
    assert_int_equal(moeh_moe_create(&c, &a, NULL), 0);
    c.missing_init = 0.04f;
    assert_int_equal(moeh_moe_create(&c, &b, NULL), 0);
    moeh_params_t *pa = moeh_moe_params(a), *pb = moeh_moe_params(b);
    size_t n_missing = 0;
    for (size_t v = 0; v < pa->n_views; v++) {
        const float *wa = pa->w + pa->views[v].offset, *wb = pb->w + pb->views[v].offset;
        int missing = strncmp(pa->views[v].name, "missing.", 8) == 0;
        for (size_t i = 0; i < pa->views[v].numel; i++) {
            float want = missing ? (0.04f / 0.02f) * wa[i] : wa[i];
            assert_true(fabsf(wb[i] - want) <= 1e-7f * fabsf(want));
            n_missing += missing && wa[i] != 0.0f;
        }
    }
    assert_true(n_missing >= 3 * c.d_emb - 1);
    moeh_moe_destroy(&a);
    moeh_moe_destroy(&b);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_grad_moe_joint),
               cmocka_unit_test(test_grad_moe_topk), cmocka_unit_test(test_grad_moe_joint_gate_sup),
               cmocka_unit_test(test_grad_moe_warmup), cmocka_unit_test(test_grad_moe_precomputed),
               cmocka_unit_test(test_grad_baselines), cmocka_unit_test(test_grad_cnn_chunked),
               cmocka_unit_test(test_grad_direct_kernels), cmocka_unit_test(test_grad_cnn_128),
               cmocka_unit_test(test_groups_counts_and_sparse_zero),
               cmocka_unit_test(test_schedule), cmocka_unit_test(test_deterministic_and_lazy),
               cmocka_unit_test(test_threads_consistent), cmocka_unit_test(test_cfg_json_roundtrip),
               cmocka_unit_test(test_cfg_from_json_refuses), cmocka_unit_test(test_cfg_validate),
               cmocka_unit_test(test_cfg_options), cmocka_unit_test(test_missing_init))
