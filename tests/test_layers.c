/* test_layers.c - finite-difference gradient checks for every kernel in moeh_nn.h and
 * layers.h, plus hand-value checks of the forward passes where a hand value is easy
 * (pooling, gate, load balance, embedding bag).
 *
 * Each check uses the scalar loss L = sum(out * R) for a fixed random R, so the analytic
 * gradient comes from backward with dout = R. Tolerances are stated at each check; smooth
 * layers use eps = 1e-2 (truncation O(eps^2) ~ 1e-4 relative) and rtol 1e-2, atol 1e-4. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "gradcheck.h"
#include "layers.h"
#include "moeh_nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const gc_opts_t SMOOTH = {
    .eps = 1e-2, .rtol = 1e-2, .atol = 1e-4, .max_kink_frac = 0, .max_checks = 400};
static const gc_opts_t KINKY = {
    .eps = 1e-3, .rtol = 1e-2, .atol = 1e-4, .max_kink_frac = 0.1, .max_checks = 400};

static void fill_normal(float *x, size_t n, moeh_rng_t *r, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = s * (float)moeh_rng_normal(r);
}

static double dot_d(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* ---- linear ------------------------------------------------------------------------------ */
typedef struct {
    float *x, *w, *b, *out, *R;
    size_t B, C, OC;
} lin_ctx;
static double lin_loss(void *c_)
{
    lin_ctx *c = c_;
    moeh_linear_forward(c->out, c->x, c->w, c->b, c->B, c->C, c->OC);
    return dot_d(c->out, c->R, c->B * c->OC);
}
static void test_linear_grad(void **state)
{
    enum { B = 5, C = 7, OC = 4 };
    float x[B * C], w[OC * C], b[OC], out[B * OC], R[B * OC], dx[B * C] = {0}, dw[OC * C] = {0},
                                                                     db[OC] = {0};
    moeh_rng_t r;
    moeh_rng_seed(&r, 1);
    fill_normal(x, B * C, &r, 1), fill_normal(w, OC * C, &r, 0.5f), fill_normal(b, OC, &r, 1);
    fill_normal(R, B * OC, &r, 1);
    lin_ctx c = {x, w, b, out, R, B, C, OC};
    lin_loss(&c);
    moeh_linear_backward(dx, dw, db, R, x, w, B, C, OC);
    assert_int_equal(gc_check("linear.x", x, dx, B * C, lin_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("linear.w", w, dw, OC * C, lin_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("linear.b", b, db, OC, lin_loss, &c, SMOOTH), 0);
}

/* ---- relu / gelu --------------------------------------------------------------------------- */
typedef struct {
    float *x, *out, *R;
    size_t n;
    int gelu;
} act_ctx;
static double act_loss(void *c_)
{
    act_ctx *c = c_;
    if (c->gelu)
        moeh_gelu_forward(c->out, c->x, c->n);
    else
        moeh_relu_forward(c->out, c->x, c->n);
    return dot_d(c->out, c->R, c->n);
}
static void test_activations_grad(void **state)
{
    enum { N = 64 };
    float x[N], out[N], R[N], dx[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 2);
    fill_normal(x, N, &r, 2), fill_normal(R, N, &r, 1);
    act_ctx c = {x, out, R, N, 1};
    memset(dx, 0, sizeof dx);
    act_loss(&c);
    moeh_gelu_backward(dx, R, x, N);
    assert_int_equal(gc_check("gelu.x", x, dx, N, act_loss, &c, SMOOTH), 0);
    /* gelu(1) with the tanh form: 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.841192 */
    float one = 1.0f, g1;
    moeh_gelu_forward(&g1, &one, 1);
    assert_true(fabsf(g1 - 0.841192f) < 1e-5f);
    c.gelu = 0;
    memset(dx, 0, sizeof dx);
    act_loss(&c);
    moeh_relu_backward(dx, R, out, N);
    assert_int_equal(gc_check("relu.x", x, dx, N, act_loss, &c, KINKY), 0);
}

/* ---- layer norm ---------------------------------------------------------------------------- */
typedef struct {
    float *x, *gm, *bt, *out, *mean, *rstd, *R;
    size_t N, C;
} ln_ctx;
static double ln_loss(void *c_)
{
    ln_ctx *c = c_;
    moeh_layernorm_forward(c->out, c->mean, c->rstd, c->x, c->gm, c->bt, c->N, c->C, 1e-5f);
    return dot_d(c->out, c->R, c->N * c->C);
}
static void test_layernorm_grad(void **state)
{
    enum { N = 4, C = 9 };
    float x[N * C], gm[C], bt[C], out[N * C], mean[N], rstd[N], R[N * C];
    float dx[N * C] = {0}, dg[C] = {0}, db[C] = {0};
    moeh_rng_t r;
    moeh_rng_seed(&r, 3);
    fill_normal(x, N * C, &r, 2), fill_normal(gm, C, &r, 1), fill_normal(bt, C, &r, 1);
    fill_normal(R, N * C, &r, 1);
    ln_ctx c = {x, gm, bt, out, mean, rstd, R, N, C};
    ln_loss(&c);
    moeh_layernorm_backward(dx, dg, db, R, x, mean, rstd, gm, N, C);
    assert_int_equal(gc_check("ln.x", x, dx, N * C, ln_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("ln.gamma", gm, dg, C, ln_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("ln.beta", bt, db, C, ln_loss, &c, SMOOTH), 0);
}

/* ---- dropout (mask fixed after the first draw) ------------------------------------------- */
static void test_dropout(void **state)
{
    enum { N = 4000 };
    static float x[N], out[N], dx[N], ones[N];
    static uint8_t keep[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 4);
    for (size_t i = 0; i < N; i++)
        x[i] = 1.0f, ones[i] = 1.0f, dx[i] = 0;
    moeh_dropout_forward(out, keep, x, 0.25f, N, &r);
    size_t kept = 0;
    for (size_t i = 0; i < N; i++) {
        kept += keep[i];
        assert_true(out[i] == (keep[i] ? 1.0f / 0.75f : 0.0f));
    }
    /* 3000 expected, sd ~27: 6 sd */
    assert_true(kept > 2840 && kept < 3160);
    moeh_dropout_backward(dx, ones, keep, 0.25f, N);
    for (size_t i = 0; i < N; i++) /* linear in x for a fixed mask: d out/d x = keep/(1-p) */
        assert_true(dx[i] == out[i]);
}

/* ---- GRU ----------------------------------------------------------------------------------- */
typedef struct {
    float *x, *wih, *whh, *bih, *bhh, *hs, *xi, *gates, *hh, *whhT, *R;
    size_t B, T, I, H;
} gru_ctx;
static double gru_loss(void *c_)
{
    gru_ctx *c = c_;
    moeh_gru_forward(c->hs, c->xi, c->gates, c->hh, c->whhT, c->x, c->wih, c->whh, c->bih, c->bhh,
                     c->B, c->T, c->I, c->H);
    return dot_d(c->hs + c->T * c->B * c->H, c->R, c->B * c->H);
}
/* The next n floats of the buffer at *q, which moves past them. */
static float *take(float **q, size_t n)
{
    float *p = *q;
    *q += n;
    return p;
}

/* One shape; 3H a multiple of 16 takes the AVX-512 recurrence kernel (where the CPU has it),
 * other sizes the OpenBLAS path. */
static void gru_grad_case(size_t B, size_t T, size_t I, size_t H, unsigned seed)
{
    size_t G = 3 * H;
    float *buf = calloc(B * T * I * 3 + G * I * 2 + G * H * 3 + G * 4 + (T + 1) * B * H +
                            B * T * G * 2 + T * B * 4 * H + B * G + B * H * 2 + T * B * G,
                        sizeof(float));
    assert_non_null(buf);
    float *q = buf;
    float *x = take(&q, B * T * I), *wih = take(&q, G * I), *whh = take(&q, G * H),
          *bih = take(&q, G), *bhh = take(&q, G), *hs = take(&q, (T + 1) * B * H),
          *xi = take(&q, B * T * G), *gates = take(&q, T * B * 4 * H), *hh = take(&q, B * G),
          *whhT = take(&q, G * H), *R = take(&q, B * H);
    float *dx = take(&q, B * T * I), *dwih = take(&q, G * I), *dwhh = take(&q, G * H),
          *dbih = take(&q, G), *dbhh = take(&q, G), *dxi = take(&q, B * T * G),
          *dhh = take(&q, T * B * G), *dh = q;
    moeh_rng_t r;
    moeh_rng_seed(&r, seed);
    fill_normal(x, B * T * I, &r, 1), fill_normal(wih, G * I, &r, 0.5f);
    fill_normal(whh, G * H, &r, 0.5f), fill_normal(bih, G, &r, 0.3f);
    fill_normal(bhh, G, &r, 0.3f), fill_normal(R, B * H, &r, 1);
    gru_ctx c = {x, wih, whh, bih, bhh, hs, xi, gates, hh, whhT, R, B, T, I, H};
    gru_loss(&c);
    /* the forward against a plain double-precision GRU (PyTorch's cell) */
    double *h = calloc(B * H, sizeof(double)), *hn = calloc(B * H, sizeof(double));
    assert_non_null(h), assert_non_null(hn);
    for (size_t t = 0; t < T; t++) {
        for (size_t b = 0; b < B; b++)
            for (size_t j = 0; j < H; j++) {
                double gi[3], gh[3];
                for (int k = 0; k < 3; k++) {
                    size_t row = (size_t)k * H + j;
                    gi[k] = bih[row], gh[k] = bhh[row];
                    for (size_t i = 0; i < I; i++)
                        gi[k] += (double)wih[row * I + i] * x[(b * T + t) * I + i];
                    for (size_t i = 0; i < H; i++)
                        gh[k] += (double)whh[row * H + i] * h[b * H + i];
                }
                double rr = 1 / (1 + exp(-(gi[0] + gh[0]))), zz = 1 / (1 + exp(-(gi[1] + gh[1])));
                double nn = tanh(gi[2] + rr * gh[2]);
                hn[b * H + j] = (1 - zz) * nn + zz * h[b * H + j];
            }
        memcpy(h, hn, B * H * sizeof(double));
    }
    for (size_t i = 0; i < B * H; i++)
        assert_true(fabs(h[i] - hs[T * B * H + i]) < 1e-5);
    free(h), free(hn);
    moeh_gru_backward(dx, dwih, dwhh, dbih, dbhh, dxi, dhh, dh, R, x, wih, whh, hs, gates, B, T, I,
                      H);
    assert_int_equal(gc_check("gru.x", x, dx, B * T * I, gru_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("gru.wih", wih, dwih, G * I, gru_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("gru.whh", whh, dwhh, G * H, gru_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("gru.bih", bih, dbih, G, gru_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("gru.bhh", bhh, dbhh, G, gru_loss, &c, SMOOTH), 0);
    free(buf);
}
static void test_gru_grad(void **state)
{
    (void)state;
    gru_grad_case(3, 6, 4, 5, 5);   /* OpenBLAS recurrence */
    gru_grad_case(7, 4, 3, 16, 6);  /* kernel: a 6-row block + 1 row, 48 = 3 x 16 columns */
    gru_grad_case(2, 3, 2, 32, 7);  /* kernel: rows only in the tail, 96 = 64 + 32 columns */
    gru_grad_case(10, 2, 3, 16, 8); /* 6 + 4 rows */
    gru_grad_case(11, 2, 3, 16, 9); /* 6 + 5 rows */
    gru_grad_case(3, 2, 2, 16, 10); /* 3 rows */
}

/* ---- embedding bag --------------------------------------------------------------------------- */
typedef struct {
    float *E, *out, *R;
    const uint64_t *off;
    const uint32_t *ids;
    size_t B, D;
} eb_ctx;
static double eb_loss(void *c_)
{
    eb_ctx *c = c_;
    moeh_embbag_forward(c->out, c->E, c->off, c->ids, c->B, c->D);
    return dot_d(c->out, c->R, c->B * c->D);
}
static void test_embbag(void **state)
{
    enum { V = 10, D = 3, B = 3 };
    /* offsets start at 2 (a slice of a bigger CSR); bag 1 is empty; id 4 appears twice */
    uint64_t off[B + 1] = {2, 5, 5, 7};
    uint32_t ids[7] = {99, 99, 4, 1, 4, 7, 1};
    float E[V * D], out[B * D], R[B * D], dE[V * D] = {0};
    uint8_t touched[V] = {0};
    uint32_t rows[V];
    size_t n_rows = 0;
    moeh_rng_t r;
    moeh_rng_seed(&r, 6);
    fill_normal(E, V * D, &r, 1), fill_normal(R, B * D, &r, 1);
    eb_ctx c = {E, out, R, off, ids, B, D};
    eb_loss(&c);
    for (size_t d = 0; d < D; d++) {
        assert_true(fabsf(out[d] - (2 * E[4 * D + d] + E[1 * D + d]) / 3) < 1e-6f);
        assert_true(out[D + d] == 0.0f);
    }
    moeh_embbag_backward(dE, touched, rows, &n_rows, R, off, ids, B, D);
    assert_int_equal(n_rows, 3); /* rows 4, 1, 7 in first-touch order */
    assert_int_equal(rows[0], 4);
    assert_int_equal(rows[1], 1);
    assert_int_equal(rows[2], 7);
    assert_int_equal(touched[0], 0);
    assert_int_equal(gc_check("embbag.E", E, dE, V * D, eb_loss, &c, SMOOTH), 0);
}

/* ---- conv 3x3 -------------------------------------------------------------------------------- */
typedef struct {
    float *x, *w, *b, *out, *col, *R;
    size_t B, H, W, C, OC;
} cv_ctx;
static double cv_loss(void *c_)
{
    cv_ctx *c = c_;
    moeh_conv3x3_forward(c->out, c->col, c->x, c->w, c->b, c->B, c->H, c->W, c->C, c->OC);
    return dot_d(c->out, c->R, c->B * c->H * c->W * c->OC);
}
static void test_conv_grad(void **state)
{
    enum { B = 2, H = 5, W = 4, C = 3, OC = 4, N = B * H * W };
    float x[N * C], w[OC * 9 * C], b[OC], out[N * OC], col[N * 9 * C], R[N * OC];
    float dx[N * C] = {0}, dw[OC * 9 * C] = {0}, db[OC] = {0}, dcol[N * 9 * C];
    moeh_rng_t r;
    moeh_rng_seed(&r, 7);
    fill_normal(x, N * C, &r, 1), fill_normal(w, OC * 9 * C, &r, 0.3f), fill_normal(b, OC, &r, 1);
    fill_normal(R, N * OC, &r, 1);
    cv_ctx c = {x, w, b, out, col, R, B, H, W, C, OC};
    cv_loss(&c);
    /* direct convolution at one interior and one corner pixel */
    for (size_t pix = 0; pix < 2; pix++) {
        size_t bb = pix, y = pix ? 0 : 2, xx = pix ? 3 : 1;
        for (size_t o = 0; o < OC; o++) {
            double s = b[o];
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    long iy = (long)y + ky - 1, ix = (long)xx + kx - 1;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                    for (size_t ci = 0; ci < C; ci++)
                        s += w[((o * 3 + (size_t)ky) * 3 + (size_t)kx) * C + ci] *
                             x[((bb * H + (size_t)iy) * W + (size_t)ix) * C + ci];
                }
            assert_true(fabs(out[((bb * H + y) * W + xx) * OC + o] - s) < 1e-5);
        }
    }
    moeh_conv3x3_backward(dx, dcol, dw, db, R, col, w, B, H, W, C, OC);
    assert_int_equal(gc_check("conv.x", x, dx, N * C, cv_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("conv.w", w, dw, OC * 9 * C, cv_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("conv.b", b, db, OC, cv_loss, &c, SMOOTH), 0);
}

/* ---- direct conv 3x3 (AVX-512): finite differences, and agreement with im2col + sgemm ------- */
typedef struct {
    float *x, *w, *b, *out, *pad, *wt, *R;
    size_t B, H, W, C, OC;
} dcv_ctx;
static double dcv_loss(void *c_)
{
    dcv_ctx *c = c_;
    moeh_conv3x3_wt_fwd(c->wt, c->w, c->C, c->OC);
    moeh_conv3x3_direct(c->out, c->pad, c->x, c->wt, c->b, c->B, c->H, c->W, c->C, c->OC, 0);
    return dot_d(c->out, c->R, c->B * c->H * c->W * c->OC);
}
static void test_conv_direct_grad(void **state)
{
    (void)state;
    enum { B = 2, H = 3, W = 5, C = 2, OC = 16, N = B * H * W };
    if (!moeh_conv3x3_direct_ok(OC)) skip();
    static float x[N * C], w[OC * 9 * C], b[OC], out[N * OC], R[N * OC], wt[9 * C * OC];
    static float pad[(H + 2) * (W + 2) * OC], dx[N * 16], dw[OC * 9 * C], db[OC];
    moeh_rng_t r;
    moeh_rng_seed(&r, 17);
    fill_normal(x, N * C, &r, 1), fill_normal(w, OC * 9 * C, &r, 0.3f), fill_normal(b, OC, &r, 1);
    fill_normal(R, N * OC, &r, 1);
    dcv_ctx c = {x, w, b, out, pad, wt, R, B, H, W, C, OC};
    dcv_loss(&c);
    static float dwt[9 * C * OC];
    moeh_conv3x3_direct_dw(dw, db, pad, dwt, R, x, B, H, W, C, OC);
    assert_int_equal(gc_check("dconv.w", w, dw, OC * 9 * C, dcv_loss, &c, SMOOTH), 0);
    assert_int_equal(gc_check("dconv.b", b, db, OC, dcv_loss, &c, SMOOTH), 0);
    /* data gradient: dout convolved with the flipped weights (needs C % 16 == 0) */
    enum { C2 = 16, N2 = 1 * 2 * 3 };
    static float x2[N2 * C2], w2[OC * 9 * C2], o2[N2 * OC], R2[N2 * OC], wt2[9 * C2 * OC];
    fill_normal(x2, N2 * C2, &r, 1), fill_normal(w2, OC * 9 * C2, &r, 0.3f);
    fill_normal(R2, N2 * OC, &r, 1);
    dcv_ctx c2 = {x2, w2, b, o2, pad, wt2, R2, 1, 2, 3, C2, OC};
    dcv_loss(&c2);
    moeh_conv3x3_wt_bwd(wt2, w2, C2, OC);
    moeh_conv3x3_direct(dx, pad, R2, wt2, NULL, 1, 2, 3, OC, C2, 0);
    assert_int_equal(gc_check("dconv.x", x2, dx, N2 * C2, dcv_loss, &c2, SMOOTH), 0);
    /* weight gradient by channel groups (9 * 16 taps x channels do not fit in registers) */
    static float dw2[OC * 9 * C2], dwt2[9 * C2 * OC];
    moeh_conv3x3_direct_dw(dw2, NULL, pad, dwt2, R2, x2, 1, 2, 3, C2, OC);
    assert_int_equal(gc_check("dconv.w16", w2, dw2, OC * 9 * C2, dcv_loss, &c2, SMOOTH), 0);
}

/* direct forward, data gradient and (where supported) weight gradient == the im2col kernels */
static void conv_direct_vs_im2col(size_t B, size_t H, size_t W, size_t C, size_t OC, unsigned seed)
{
    size_t N = B * H * W;
    float *x = malloc(N * C * 4), *w = malloc(OC * 9 * C * 4), *b = malloc(OC * 4);
    float *o1 = malloc(N * OC * 4), *o2 = malloc(N * OC * 4), *col = malloc(N * 9 * C * 4);
    float *dcol = malloc(N * 9 * C * 4), *R = malloc(N * OC * 4);
    float *dx1 = calloc(N * C, 4), *dx2 = malloc(N * C * 4), *dw1 = calloc(OC * 9 * C, 4);
    float *dw2 = calloc(OC * 9 * C, 4), *db1 = calloc(OC, 4), *db2 = calloc(OC, 4);
    size_t pl = moeh_conv3x3_pad_len(H, W, C > OC ? C : OC);
    float *pad = malloc(pl * 4), *wt = malloc(9 * C * OC * 4);
    assert_non_null(x), assert_non_null(w), assert_non_null(b), assert_non_null(o1);
    assert_non_null(o2), assert_non_null(col), assert_non_null(dcol), assert_non_null(R);
    assert_non_null(dx1), assert_non_null(dx2), assert_non_null(dw1), assert_non_null(dw2);
    assert_non_null(db1), assert_non_null(db2), assert_non_null(pad), assert_non_null(wt);
    moeh_rng_t r;
    moeh_rng_seed(&r, seed);
    fill_normal(x, N * C, &r, 1), fill_normal(w, OC * 9 * C, &r, 0.3f), fill_normal(b, OC, &r, 1);
    fill_normal(R, N * OC, &r, 1);
    moeh_conv3x3_forward(o1, col, x, w, b, B, H, W, C, OC);
    moeh_conv3x3_wt_fwd(wt, w, C, OC);
    moeh_conv3x3_direct(o2, pad, x, wt, b, B, H, W, C, OC, 0);
    double tol = 1e-5 * (double)(9 * C);
    for (size_t i = 0; i < N * OC; i++)
        assert_true(fabs(o1[i] - o2[i]) <= tol * (1 + fabs(o1[i])));
    /* acc = 1 adds into out: o2 = 2 * conv + b */
    moeh_conv3x3_direct(o2, pad, x, wt, NULL, B, H, W, C, OC, 1);
    for (size_t i = 0; i < N * OC; i++)
        assert_true(fabs(2 * o1[i] - b[i % OC] - o2[i]) <= 2 * tol * (1 + fabs(o1[i])));
    if (H % 2 == 0 && W % 2 == 0) { /* fused conv + 2x2 max pool + ReLU == the three steps */
        size_t np = B * (H / 2) * (W / 2) * OC;
        float *p1 = malloc(np * 4), *p2 = malloc(np * 4), *rows = malloc(2 * W * OC * 4);
        uint8_t *a1 = malloc(np), *a2 = malloc(np);
        assert_non_null(p1), assert_non_null(p2), assert_non_null(rows);
        assert_non_null(a1), assert_non_null(a2);
        moeh_maxpool2_forward(p1, a1, o1, B, H, W, OC);
        moeh_relu_forward(p1, p1, np);
        moeh_conv3x3_pool_relu_direct(p2, a2, rows, pad, x, wt, b, B, H, W, C, OC);
        for (size_t i = 0; i < np; i++)
            assert_true(fabs(p1[i] - p2[i]) <= tol * (1 + fabs(p1[i])));
        /* the argmax may differ only where two window entries are (nearly) tied */
        size_t diff = 0;
        for (size_t i = 0; i < np; i++)
            diff += a1[i] != a2[i];
        assert_true(diff * 100 <= np);
        if (moeh_conv3x3_direct_dw_pooled_ok(C, OC)) { /* dW from the pooled gradient */
            float *dp = malloc(np * 4), *da = malloc(N * OC * 4), *g1 = calloc(OC * 9 * C, 4);
            float *g2 = calloc(OC * 9 * C, 4), *b1 = calloc(OC, 4), *b2 = calloc(OC, 4);
            float *dwt = malloc(9 * C * OC * 4);
            assert_non_null(dp), assert_non_null(da), assert_non_null(g1), assert_non_null(g2);
            assert_non_null(b1), assert_non_null(b2), assert_non_null(dwt);
            fill_normal(dp, np, &r, 1);
            moeh_maxpool2_backward_set(da, dp, a2, B, H, W, OC);
            moeh_conv3x3_direct_dw(g1, b1, pad, dwt, da, x, B, H, W, C, OC);
            moeh_conv3x3_direct_dw_pooled(g2, b2, pad, dwt, dp, a2, x, B, H, W, C, OC);
            for (size_t i = 0; i < OC * 9 * C; i++)
                assert_true(fabs(g1[i] - g2[i]) <= 1e-6 * (1 + fabs(g1[i])));
            for (size_t i = 0; i < OC; i++)
                assert_true(fabs(b1[i] - b2[i]) <= 1e-6 * (1 + fabs(b1[i])));
            free(dp), free(da), free(g1), free(g2), free(b1), free(b2), free(dwt);
        }
        free(p1), free(p2), free(rows), free(a1), free(a2);
    }
    moeh_conv3x3_backward(dx1, dcol, dw1, db1, R, col, w, B, H, W, C, OC);
    if (moeh_conv3x3_direct_ok(C)) {
        moeh_conv3x3_wt_bwd(wt, w, C, OC);
        moeh_conv3x3_direct(dx2, pad, R, wt, NULL, B, H, W, OC, C, 0);
        double t2 = 1e-5 * (double)(9 * OC);
        for (size_t i = 0; i < N * C; i++)
            assert_true(fabs(dx1[i] - dx2[i]) <= t2 * (1 + fabs(dx1[i])));
    }
    if (moeh_conv3x3_direct_dw_ok(C, OC)) {
        moeh_conv3x3_direct_dw(dw2, db2, pad, wt, R, x, B, H, W, C, OC);
        double t3 = 1e-5 * (double)N;
        for (size_t i = 0; i < OC * 9 * C; i++)
            assert_true(fabs(dw1[i] - dw2[i]) <= t3 * (1 + fabs(dw1[i])));
        for (size_t i = 0; i < OC; i++)
            assert_true(fabs(db1[i] - db2[i]) <= t3 * (1 + fabs(db1[i])));
    }
    free(x), free(w), free(b), free(o1), free(o2), free(col), free(dcol), free(R), free(dx1);
    free(dx2), free(dw1), free(dw2), free(db1), free(db2), free(pad), free(wt);
}
static void test_conv_direct(void **state)
{
    (void)state;
    if (!moeh_conv3x3_direct_ok(16)) skip();
    /* the default CNN's shapes (forward and data gradient), odd widths for the block tails */
    conv_direct_vs_im2col(2, 7, 19, 1, 16, 1);
    conv_direct_vs_im2col(2, 6, 10, 16, 32, 2);
    conv_direct_vs_im2col(2, 5, 9, 32, 64, 3);
    conv_direct_vs_im2col(1, 4, 5, 2, 16, 4);
    conv_direct_vs_im2col(2, 3, 17, 64, 32, 5);
    conv_direct_vs_im2col(1, 3, 7, 16, 48, 6);
    conv_direct_vs_im2col(1, 1, 1, 1, 32, 7);
    conv_direct_vs_im2col(2, 8, 12, 1, 16, 8); /* first layer, fused pooling */
    conv_direct_vs_im2col(1, 4, 4, 32, 64, 9);
    conv_direct_vs_im2col(1, 6, 4, 2, 16, 10); /* two channels: dW from the pooled gradient */
}

/* ---- pooling --------------------------------------------------------------------------------- */
typedef struct {
    float *x, *out, *R;
    uint8_t *arg;
    size_t B, H, W, C;
    int gap;
} pool_ctx;
static double pool_loss(void *c_)
{
    pool_ctx *c = c_;
    if (c->gap) {
        moeh_gap_forward(c->out, c->x, c->B, c->H * c->W, c->C);
        return dot_d(c->out, c->R, c->B * c->C);
    }
    moeh_maxpool2_forward(c->out, c->arg, c->x, c->B, c->H, c->W, c->C);
    return dot_d(c->out, c->R, c->B * c->H * c->W * c->C / 4);
}
static void test_pool(void **state)
{
    enum { B = 2, H = 4, W = 6, C = 3, N = B * H * W * C };
    float x[N], out[N], R[N], dx[N] = {0};
    uint8_t arg[N];
    moeh_rng_t r;
    moeh_rng_seed(&r, 8);
    /* distinct values so no max ties within eps */
    for (size_t i = 0; i < N; i++)
        x[i] = (float)((i * 37) % N) * 0.1f;
    fill_normal(R, N, &r, 1);
    pool_ctx c = {x, out, R, arg, B, H, W, C, 0};
    pool_loss(&c);
    /* hand value: window (b=0, y=0, x=0, c=0) covers pixels (0,0),(0,1),(1,0),(1,1) */
    float m = fmaxf(fmaxf(x[0], x[C]), fmaxf(x[W * C], x[W * C + C]));
    assert_true(out[0] == m);
    moeh_maxpool2_backward(dx, R, arg, B, H, W, C);
    assert_int_equal(gc_check("maxpool.x", x, dx, N, pool_loss, &c, KINKY), 0);
    c.gap = 1;
    memset(dx, 0, sizeof dx);
    pool_loss(&c);
    double s = 0;
    for (size_t i = 0; i < H * W; i++)
        s += x[i * C + 1];
    assert_true(fabs(out[1] - s / (H * W)) < 1e-5);
    moeh_gap_backward(dx, R, B, H * W, C);
    assert_int_equal(gc_check("gap.x", x, dx, N, pool_loss, &c, SMOOTH), 0);
}

/* ---- gate + load balance --------------------------------------------------------------------- */
typedef struct {
    float *l, *w, *p, *Rw, *Rp;
    uint8_t *sel;
    size_t B, K, top_k;
    float temp, lb;
} gate_ctx;
static double gate_loss(void *c_)
{
    gate_ctx *c = c_;
    moeh_gate_forward(c->w, c->p, c->sel, c->l, c->B, c->K, c->top_k, c->temp);
    return dot_d(c->w, c->Rw, c->B * c->K) + dot_d(c->p, c->Rp, c->B * c->K) +
           moeh_load_balance(NULL, c->p, c->sel, c->B, c->K, c->lb);
}
static void test_gate_grad(void **state)
{
    enum { B = 4, K = 7 };
    float l[B * K], w[B * K], p[B * K], Rw[B * K], Rp[B * K], dl[B * K], dp[B * K];
    uint8_t sel[B * K];
    moeh_rng_t r;
    moeh_rng_seed(&r, 9);
    fill_normal(l, B * K, &r, 1.5f), fill_normal(Rw, B * K, &r, 1), fill_normal(Rp, B * K, &r, 1);
    for (size_t top_k = 0; top_k <= 2; top_k += 2) {
        gate_ctx c = {l, w, p, Rw, Rp, sel, B, K, top_k, 0.7f, 0.3f};
        gate_loss(&c);
        memset(dl, 0, sizeof dl);
        memcpy(dp, Rp, sizeof dp);
        moeh_load_balance(dp, p, sel, B, K, 0.3f);
        moeh_gate_backward(dl, Rw, dp, w, p, sel, B, K, 0.7f);
        /* the top-k set and f_k change only at kinks; eps 1e-3 stays clear of them here */
        gc_opts_t o = SMOOTH;
        o.eps = 1e-3;
        o.rtol = 2e-2;
        assert_int_equal(
            gc_check(top_k ? "gate_top2.logits" : "gate.logits", l, dl, B * K, gate_loss, &c, o),
            0);
        for (size_t b = 0; b < B; b++) {
            double sw = 0, sp = 0;
            size_t ns = 0;
            for (size_t k = 0; k < K; k++)
                sw += w[b * K + k], sp += p[b * K + k], ns += sel[b * K + k];
            assert_true(fabs(sw - 1) < 1e-5 && fabs(sp - 1) < 1e-5);
            assert_int_equal(ns, top_k ? top_k : K);
        }
    }
    /* hand values: logits (0, ln 3) at temp 1 -> probs (1/4, 3/4); top-1 -> w = (0, 1) */
    float l2[2] = {0.0f, logf(3.0f)}, w2[2], p2[2];
    uint8_t s2[2];
    moeh_gate_forward(w2, p2, s2, l2, 1, 2, 1, 1.0f);
    assert_true(fabsf(p2[0] - 0.25f) < 1e-6f && w2[0] == 0.0f && fabsf(w2[1] - 1) < 1e-6f);
    /* load balance: uniform probs and one-hot balanced routing give exactly 1 */
    float pu[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    uint8_t su[4] = {1, 0, 0, 1};
    assert_true(fabs(moeh_load_balance(NULL, pu, su, 2, 2, 1.0f) - 1.0) < 1e-12);
    /* all routed to expert 0 with probs (0.9, 0.1): K * (1 * 0.9) = 1.8 */
    float pc[4] = {0.9f, 0.1f, 0.9f, 0.1f};
    uint8_t sc[4] = {1, 0, 1, 0};
    assert_true(fabs(moeh_load_balance(NULL, pc, sc, 2, 2, 1.0f) - 1.8) < 1e-6);
    /* a dense gate (every expert selected) counts each row's top-1 expert: the same 1.8, and
     * the gradient lowers the favoured expert's logit (with f_k = 1/K it would be zero) */
    uint8_t sd[4] = {1, 1, 1, 1};
    assert_true(fabs(moeh_load_balance(NULL, pc, sd, 2, 2, 1.0f) - 1.8) < 1e-6);
    float dpd[4] = {0}, dld[4] = {0};
    moeh_load_balance(dpd, pc, sd, 2, 2, 1.0f);
    moeh_gate_backward(dld, NULL, dpd, pc, pc, sd, 2, 2, 1.0f);
    assert_true(fabsf(dld[0] - 0.09f) < 1e-6f && fabsf(dld[1] + 0.09f) < 1e-6f); /* p(dp - p.dp) */
}

/* ---- masked BCE ------------------------------------------------------------------------------ */
typedef struct {
    float *z, *y, *pw;
    uint8_t *m;
    size_t B, T;
} bce_ctx;
static double bce_loss(void *c_)
{
    bce_ctx *c = c_;
    return moeh_bce_masked(NULL, c->z, c->y, c->m, c->pw, c->B, c->T);
}
static void test_bce_grad(void **state)
{
    enum { B = 6, T = 3 };
    float z[B * T], y[B * T], pw[T] = {2.0f, 1.0f, 0.5f}, dz[B * T];
    uint8_t m[B * T];
    moeh_rng_t r;
    moeh_rng_seed(&r, 10);
    fill_normal(z, B * T, &r, 2);
    for (size_t i = 0; i < B * T; i++)
        y[i] = moeh_rng_uniform(&r) < 0.5, m[i] = moeh_rng_uniform(&r) < 0.7;
    bce_ctx c = {z, y, pw, m, B, T};
    moeh_bce_masked(dz, z, y, m, pw, B, T);
    assert_int_equal(gc_check("bce.logits", z, dz, B * T, bce_loss, &c, SMOOTH), 0);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_linear_grad),
               cmocka_unit_test(test_activations_grad), cmocka_unit_test(test_layernorm_grad),
               cmocka_unit_test(test_dropout), cmocka_unit_test(test_gru_grad),
               cmocka_unit_test(test_embbag), cmocka_unit_test(test_conv_grad),
               cmocka_unit_test(test_conv_direct_grad), cmocka_unit_test(test_conv_direct),
               cmocka_unit_test(test_pool), cmocka_unit_test(test_gate_grad),
               cmocka_unit_test(test_bce_grad))
