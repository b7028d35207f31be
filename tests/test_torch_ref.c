/* test_torch_ref.c - MoE-Health against PyTorch. tests/torch_ref/make_fixture.py built the
 * same architecture from PyTorch's own layers (nn.GRU, embedding_bag, conv2d, max_pool2d,
 * topk, BCE with logits) in float64 and wrote config, inputs, weights, logits, gate weights,
 * loss and every gradient into tests/torch_ref/moe_fixture.bin (committed; CI needs no torch).
 * Here the C model (float32) loads the same weights and inputs and must match:
 *   loss:       |c - t| <= 1e-4 |t|
 *   logits, gate weights, each parameter gradient: max |c - t| <= 1e-4 max |t| per tensor
 *   (relative to the tensor's largest entry, since float32 sums of mixed-sign terms make
 *   entry-wise relative error meaningless for entries near 0).
 * Case c0: joint phase, top-2 gate, load balance. Case c1: warm-up phase (one-hot routing +
 * gate supervision), dense gate. Both have every modality combination and a row with none. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_moe.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    char name[96];
    uint32_t dtype, ndim;
    uint64_t dims[4];
    size_t numel;
    const void *data;
} fx_tensor_t;

typedef struct {
    char *buf;
    size_t n;
    fx_tensor_t t[512];
} fixture_t;

static const size_t DT_SIZE[5] = {4, 8, 1, 4, 8};

static int fx_load(fixture_t *f, const char *path)
{
    moeh_err_t err = {{0}};
    size_t len;
    if (moeh_file_read_all(path, 64u << 20, &f->buf, &len, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    const char *p = f->buf, *end = f->buf + len;
    if (len < 12 || memcmp(p, "MOEHFIX1", 8) != 0) return -1;
    uint32_t count;
    memcpy(&count, p + 8, 4);
    p += 12;
    f->n = 0;
    for (uint32_t i = 0; i < count && f->n < 512; i++) {
        fx_tensor_t *t = &f->t[f->n++];
        uint32_t nl;
        if (end - p < 4) return -1;
        memcpy(&nl, p, 4);
        p += 4;
        if (nl >= sizeof t->name || end - p < (long)nl + 8) return -1;
        memcpy(t->name, p, nl);
        t->name[nl] = 0;
        p += nl;
        memcpy(&t->dtype, p, 4);
        memcpy(&t->ndim, p + 4, 4);
        p += 8;
        if (t->dtype > 4 || t->ndim > 4 || end - p < (long)(8 * t->ndim)) return -1;
        t->numel = 1;
        for (uint32_t d = 0; d < t->ndim; d++) {
            memcpy(&t->dims[d], p, 8);
            p += 8;
            t->numel *= t->dims[d];
        }
        size_t bytes = t->numel * DT_SIZE[t->dtype];
        if ((size_t)(end - p) < bytes) return -1;
        /* the file packs tensors without alignment: copy each into its own (aligned) block */
        void *copy = malloc(bytes ? bytes : 1);
        if (!copy) return -1;
        memcpy(copy, p, bytes);
        t->data = copy;
        p += bytes;
    }
    return 0;
}

static const fx_tensor_t *fx_get(const fixture_t *f, const char *prefix, const char *name)
{
    char full[160];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, full) == 0) return &f->t[i];
    fail_msg("fixture has no tensor %s", full);
    return NULL;
}

/* max |c - t| / max |t| */
static double rel_err_f64(const float *c, const double *t, size_t n)
{
    double me = 0, mt = 0;
    for (size_t i = 0; i < n; i++) {
        me = fmax(me, fabs((double)c[i] - t[i]));
        mt = fmax(mt, fabs(t[i]));
    }
    return me / fmax(mt, 1e-12);
}

static void run_case(const fixture_t *f, const char *pre)
{
    const uint64_t *cv = fx_get(f, pre, "cfg")->data;
    const float *cf = fx_get(f, pre, "cfg_f")->data;
    moeh_moe_cfg_t cfg = moeh_moe_defaults(cv[2], cv[3]);
    cfg.d_emb = cv[0], cfg.d_hidden = cv[1], cfg.n_steps = cv[4], cfg.note_buckets = cv[5];
    cfg.img_size = cv[6], cfg.cnn_ch[0] = cv[7], cfg.cnn_ch[1] = cv[8], cfg.cnn_ch[2] = cv[9];
    cfg.n_tasks = cv[10], cfg.top_k = cv[11], cfg.max_batch = cv[12];
    cfg.temperature = cf[0], cfg.lambda_lb = cf[1], cfg.gate_sup = cf[2];
    for (size_t t = 0; t < cfg.n_tasks; t++)
        cfg.pos_weight[t] = cf[3 + t];
    moeh_moe_t *m = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_moe_create(&cfg, &m, &err), 0);
    moeh_moe_set_phase(m, cv[13] ? MOEH_PHASE_WARMUP : MOEH_PHASE_JOINT);
    moeh_params_t *p = moeh_moe_params(m);
    /* every C parameter exists in the fixture with the same shape; load it */
    size_t n_fx_w = 0;
    for (size_t i = 0; i < f->n; i++)
        n_fx_w += strncmp(f->t[i].name, pre, strlen(pre)) == 0 &&
                  strncmp(f->t[i].name + strlen(pre), "w.", 2) == 0;
    assert_int_equal(n_fx_w, p->n_views);
    for (size_t v = 0; v < p->n_views; v++) {
        char nm[128];
        snprintf(nm, sizeof nm, "w.%s", p->views[v].name);
        const fx_tensor_t *t = fx_get(f, pre, nm);
        assert_int_equal(t->ndim, p->views[v].ndim);
        for (size_t d = 0; d < t->ndim; d++)
            assert_int_equal(t->dims[d], p->views[v].shape[d]);
        memcpy(p->w + p->views[v].offset, t->data, t->numel * sizeof(float));
    }
    moeh_batch_t b = {
        .B = cfg.max_batch,
        .static_x = fx_get(f, pre, "static")->data,
        .ts_value = fx_get(f, pre, "ts_value")->data,
        .ts_mask = fx_get(f, pre, "ts_mask")->data,
        .ts_delta = fx_get(f, pre, "ts_delta")->data,
        .note_off = fx_get(f, pre, "note_off")->data,
        .note_ids = fx_get(f, pre, "note_ids")->data,
        .img = fx_get(f, pre, "img")->data,
        .avail = fx_get(f, pre, "avail")->data,
        .y = fx_get(f, pre, "y")->data,
        .y_mask = fx_get(f, pre, "y_mask")->data,
    };
    moeh_params_zero_grad(p);
    double loss;
    assert_int_equal(moeh_moe_loss_backward(m, &b, &loss), 0);
    double tl = *(const double *)fx_get(f, pre, "loss")->data;
    print_message("%s loss C %.8f torch %.8f\n", pre, loss, tl);
    assert_true(fabs(loss - tl) <= 1e-4 * fabs(tl));
    size_t B = b.B, E = moeh_moe_n_experts(m);
    double e =
        rel_err_f64(moeh_moe_last_logits(m), fx_get(f, pre, "logits")->data, B * cfg.n_tasks);
    assert_true(e <= 1e-4);
    e = rel_err_f64(moeh_moe_last_gate(m), fx_get(f, pre, "gate")->data, B * E);
    assert_true(e <= 1e-4);
    double worst = 0;
    for (size_t v = 0; v < p->n_views; v++) {
        char nm[128];
        snprintf(nm, sizeof nm, "g.%s", p->views[v].name);
        const fx_tensor_t *t = fx_get(f, pre, nm);
        e = rel_err_f64(p->g + p->views[v].offset, t->data, t->numel);
        if (e > 1e-4) print_message("%s%s: relative error %.3g\n", pre, nm, e);
        assert_true(e <= 1e-4);
        worst = fmax(worst, e);
    }
    print_message("%s: %zu gradients match, worst relative error %.2e\n", pre, p->n_views, worst);
    moeh_moe_destroy(&m);
}

static void test_against_torch(void **state)
{
    const char *src = getenv("MOEH_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/torch_ref/moe_fixture.bin", src ? src : "..");
    static fixture_t f;
    assert_int_equal(fx_load(&f, path), 0);
    run_case(&f, "c0.");
    run_case(&f, "c1.");
    for (size_t i = 0; i < f.n; i++)
        free((void *)f.t[i].data);
    free(f.buf);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_against_torch))
