/* nn_conv.c - 3x3 convolution (im2col + sgemm, and direct AVX-512 kernels for the forward pass,
 * the data gradient and the weight gradient), 2x2 max pooling and global average pooling (see
 * moeh_nn.h). Nothing here allocates; the direct kernels take their scratch from the caller. */
#include "moeh_nn.h"

#include "layers.h"
#include "nn_int.h"

#include <cblas.h>
#include <string.h>

/* ---- conv 3x3 ---------------------------------------------------------------------------- */
/* Rows of the 3x3 neighbourhood are copied with plain loops (C is often 1..32, where a
 * memcpy call per tap costs more than the copy). */
static void im2col_pixel(float *restrict c, const float *restrict inp, size_t b, size_t y, size_t x,
                         size_t H, size_t W, size_t C)
{
    for (size_t ky = 0; ky < 3; ky++) {
        long iy = (long)y + (long)ky - 1;
        for (size_t kx = 0; kx < 3; kx++) {
            long ix = (long)x + (long)kx - 1;
            float *dst = c + (ky * 3 + kx) * C;
            if (iy < 0 || iy >= (long)H || ix < 0 || ix >= (long)W) {
                for (size_t ci = 0; ci < C; ci++)
                    dst[ci] = 0.0f;
            } else {
                const float *src = inp + ((b * H + (size_t)iy) * W + (size_t)ix) * C;
                for (size_t ci = 0; ci < C; ci++)
                    dst[ci] = src[ci];
            }
        }
    }
}

/* Border pixels take the general path; interior pixels copy three rows of 3C contiguous floats
 * without bounds checks (and C == 1 gets its own unrolled loop). */
void moeh_im2col3x3(float *restrict col, const float *restrict inp, size_t B, size_t H, size_t W,
                    size_t C)
{
    size_t K = 9 * C, R = 3 * C;
    for (size_t b = 0; b < B; b++)
        for (size_t y = 0; y < H; y++) {
            float *crow = col + (b * H + y) * W * K;
            if (y == 0 || y + 1 == H || W < 3) {
                for (size_t x = 0; x < W; x++)
                    im2col_pixel(crow + x * K, inp, b, y, x, H, W, C);
                continue;
            }
            im2col_pixel(crow, inp, b, y, 0, H, W, C);
            im2col_pixel(crow + (W - 1) * K, inp, b, y, W - 1, H, W, C);
            const float *r0 = inp + (b * H + y - 1) * W * C, *r1 = r0 + W * C, *r2 = r1 + W * C;
            if (C == 1) {
                for (size_t x = 1; x + 1 < W; x++) {
                    float *c = crow + x * 9;
                    c[0] = r0[x - 1], c[1] = r0[x], c[2] = r0[x + 1];
                    c[3] = r1[x - 1], c[4] = r1[x], c[5] = r1[x + 1];
                    c[6] = r2[x - 1], c[7] = r2[x], c[8] = r2[x + 1];
                }
                continue;
            }
            for (size_t x = 1; x + 1 < W; x++) {
                float *c = crow + x * K;
                const float *s0 = r0 + (x - 1) * C, *s1 = r1 + (x - 1) * C, *s2 = r2 + (x - 1) * C;
                for (size_t i = 0; i < R; i++)
                    c[i] = s0[i];
                for (size_t i = 0; i < R; i++)
                    c[R + i] = s1[i];
                for (size_t i = 0; i < R; i++)
                    c[2 * R + i] = s2[i];
            }
        }
}

void moeh_col2im3x3_add(float *restrict dinp, const float *restrict dcol, size_t B, size_t H,
                        size_t W, size_t C)
{
    /* gather form: each input pixel sums the (up to) 9 columns that read it, so every dinp
     * element is written once (no read-modify-write races between taps) */
    size_t K = 9 * C;
    for (size_t b = 0; b < B; b++)
        for (size_t iy = 0; iy < H; iy++)
            for (size_t ix = 0; ix < W; ix++) {
                float *dst = dinp + ((b * H + iy) * W + ix) * C;
                for (size_t ky = 0; ky < 3; ky++) {
                    long y = (long)iy - (long)ky + 1; /* output row that used tap ky here */
                    if (y < 0 || y >= (long)H) continue;
                    for (size_t kx = 0; kx < 3; kx++) {
                        long x = (long)ix - (long)kx + 1;
                        if (x < 0 || x >= (long)W) continue;
                        const float *src =
                            dcol + ((b * H + (size_t)y) * W + (size_t)x) * K + (ky * 3 + kx) * C;
                        for (size_t ci = 0; ci < C; ci++)
                            dst[ci] += src[ci];
                    }
                }
            }
}

void moeh_conv3x3_forward(float *restrict out, float *restrict col, const float *restrict inp,
                          const float *restrict w, const float *restrict b, size_t B, size_t H,
                          size_t W, size_t C, size_t OC)
{
    size_t N = B * H * W;
    moeh_im2col3x3(col, inp, B, H, W, C);
    /* out (N,OC) = b broadcast (a loop: rows are short, a memcpy call per row costs more) */
    if (b)
        for (size_t i = 0; i < N; i++)
            for (size_t o = 0; o < OC; o++)
                out[i * OC + o] = b[o];
    /* out (N,OC) += col (N,9C) @ w^T (9C,OC) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)(9 * C), 1.0f, col,
                (int)(9 * C), w, (int)(9 * C), b ? 1.0f : 0.0f, out, (int)OC);
}

void moeh_conv3x3_backward(float *restrict dinp, float *restrict dcol, float *restrict dw,
                           float *restrict db, const float *restrict dout,
                           const float *restrict col, const float *restrict w, size_t B, size_t H,
                           size_t W, size_t C, size_t OC)
{
    size_t N = B * H * W, K = 9 * C;
    moeh_linear_backward(NULL, dw, db, dout, col, w, N, K, OC);
    if (dinp) {
        /* dcol (N,K) = dout (N,OC) @ w (OC,K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)K, (int)OC, 1.0f, dout,
                    (int)OC, w, (int)K, 0.0f, dcol, (int)K);
        moeh_col2im3x3_add(dinp, dcol, B, H, W, C);
    }
}

/* ---- direct conv 3x3 (AVX-512) ------------------------------------------------------------ */
size_t moeh_conv3x3_pad_len(size_t H, size_t W, size_t C)
{
    return (H + 2) * (W + 2) * C;
}

void moeh_conv3x3_wt_fwd(float *restrict wt, const float *restrict w, size_t C, size_t OC)
{
    for (size_t o = 0; o < OC; o++)
        for (size_t k = 0; k < 9 * C; k++)
            wt[k * OC + o] = w[o * 9 * C + k];
}

void moeh_conv3x3_wt_bwd(float *restrict wt, const float *restrict w, size_t C, size_t OC)
{
    for (size_t o = 0; o < OC; o++)
        for (size_t t = 0; t < 9; t++)
            for (size_t c = 0; c < C; c++)
                wt[((8 - t) * OC + o) * C + c] = w[(o * 9 + t) * C + c];
}

/* pad ((H+2),(W+2),C) = image img of inp with a zero border */
static void conv_pad(float *restrict pad, const float *restrict img, size_t H, size_t W, size_t C)
{
    size_t rs = (W + 2) * C;
    memset(pad, 0, rs * sizeof(float));
    memset(pad + (H + 1) * rs, 0, rs * sizeof(float));
    for (size_t y = 0; y < H; y++) {
        float *d = pad + (y + 1) * rs;
        for (size_t c = 0; c < C; c++)
            d[c] = 0.0f, d[rs - C + c] = 0.0f;
        memcpy(d + C, img + y * W * C, W * C * sizeof(float));
    }
}

#ifdef HAVE_AVX512_KERNELS
int moeh_conv3x3_direct_ok(size_t OC)
{
    return cpu_avx512() && OC % 16 == 0 && OC >= 16 && OC <= 64;
}

/* P output pixels (consecutive x) x NV*16 channels: src is the padded image at the block's
 * top-left tap, rs the padded row stride, wt (9,C,OC). P and NV are constants after inlining,
 * so acc lives in registers (P * NV <= 24). */
INLINE_AVX512 void conv_block(float *restrict out, const float *restrict src,
                              const float *restrict wt, const float *restrict b, size_t rs,
                              size_t C, size_t OC, int acc_in, const int P, const int NV)
{
    __m512 acc[16][4];
#pragma GCC unroll 16
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[p][v] = acc_in ? _mm512_loadu_ps(out + p * OC + 16 * v)
                        : b    ? _mm512_loadu_ps(b + 16 * v)
                               : _mm512_setzero_ps();
    for (size_t ky = 0; ky < 3; ky++)
        for (size_t kx = 0; kx < 3; kx++) {
            const float *s = src + ky * rs + kx * C, *wp = wt + (ky * 3 + kx) * C * OC;
            for (size_t c = 0; c < C; c++) {
                __m512 wv[4];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    wv[v] = _mm512_loadu_ps(wp + c * OC + 16 * v);
#pragma GCC unroll 16
                for (int p = 0; p < P; p++) {
                    __m512 x = _mm512_set1_ps(s[p * C + c]);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++)
                        acc[p][v] = _mm512_fmadd_ps(x, wv[v], acc[p][v]);
                }
            }
        }
#pragma GCC unroll 16
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(out + p * OC + 16 * v, acc[p][v]);
}

/* Output rows [y0, y1) of one image (out points at row y0): blocks of P pixels along each
 * row, single pixels for the rest. */
INLINE_AVX512 void conv_image(float *restrict out, const float *restrict pad,
                              const float *restrict wt, const float *restrict b, size_t y0,
                              size_t y1, size_t W, size_t C, size_t OC, int acc, const int P,
                              const int NV)
{
    size_t rs = (W + 2) * C;
    for (size_t y = y0; y < y1; y++) {
        float *orow = out + (y - y0) * W * OC;
        size_t x = 0;
        for (; x + P <= W; x += P)
            conv_block(orow + x * OC, pad + y * rs + x * C, wt, b, rs, C, OC, acc, P, NV);
        for (; x < W; x++)
            conv_block(orow + x * OC, pad + y * rs + x * C, wt, b, rs, C, OC, acc, 1, NV);
    }
}

AVX512 static void conv_image_16(float *restrict out, const float *restrict pad,
                                 const float *restrict wt, const float *restrict b, size_t y0,
                                 size_t y1, size_t W, size_t C, int acc)
{
    conv_image(out, pad, wt, b, y0, y1, W, C, 16, acc, 16, 1);
}
AVX512 static void conv_image_32(float *restrict out, const float *restrict pad,
                                 const float *restrict wt, const float *restrict b, size_t y0,
                                 size_t y1, size_t W, size_t C, int acc)
{
    conv_image(out, pad, wt, b, y0, y1, W, C, 32, acc, 8, 2);
}
AVX512 static void conv_image_48(float *restrict out, const float *restrict pad,
                                 const float *restrict wt, const float *restrict b, size_t y0,
                                 size_t y1, size_t W, size_t C, int acc)
{
    conv_image(out, pad, wt, b, y0, y1, W, C, 48, acc, 6, 3);
}
AVX512 static void conv_image_64(float *restrict out, const float *restrict pad,
                                 const float *restrict wt, const float *restrict b, size_t y0,
                                 size_t y1, size_t W, size_t C, int acc)
{
    conv_image(out, pad, wt, b, y0, y1, W, C, 64, acc, 4, 4);
}

/* Output rows [y0, y1) of the padded image into out (row y0 first). */
static void conv_rows(float *restrict out, const float *restrict pad, const float *restrict wt,
                      const float *restrict b, size_t y0, size_t y1, size_t W, size_t C, size_t OC,
                      int acc)
{
    switch (OC) {
    case 16:
        conv_image_16(out, pad, wt, b, y0, y1, W, C, acc);
        break;
    case 32:
        conv_image_32(out, pad, wt, b, y0, y1, W, C, acc);
        break;
    case 48:
        conv_image_48(out, pad, wt, b, y0, y1, W, C, acc);
        break;
    default:
        conv_image_64(out, pad, wt, b, y0, y1, W, C, acc);
        break;
    }
}

void moeh_conv3x3_direct(float *restrict out, float *restrict pad, const float *restrict inp,
                         const float *restrict wt, const float *restrict b, size_t B, size_t H,
                         size_t W, size_t C, size_t OC, int acc)
{
    MOEH_ASSERT(moeh_conv3x3_direct_ok(OC));
    for (size_t i = 0; i < B; i++) {
        conv_pad(pad, inp + i * H * W * C, H, W, C);
        conv_rows(out + i * H * W * OC, pad, wt, b, 0, H, W, C, OC, acc);
    }
}

void moeh_conv3x3_pool_relu_direct(float *restrict pl, uint8_t *restrict arg, float *restrict rows,
                                   float *restrict pad, const float *restrict inp,
                                   const float *restrict wt, const float *restrict b, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC)
{
    MOEH_ASSERT(moeh_conv3x3_direct_ok(OC) && H % 2 == 0 && W % 2 == 0);
    size_t per = (W / 2) * OC; /* one pooled row */
    for (size_t i = 0; i < B; i++) {
        conv_pad(pad, inp + i * H * W * C, H, W, C);
        for (size_t y = 0; y < H; y += 2) {
            float *o = pl + (i * (H / 2) + y / 2) * per;
            conv_rows(rows, pad, wt, b, y, y + 2, W, C, OC, 0);
            moeh_maxpool2_forward(o, arg + (i * (H / 2) + y / 2) * per, rows, 1, 2, W, OC);
            moeh_relu_forward(o, o, per);
        }
    }
}

int moeh_conv3x3_direct_dw_ok(size_t C, size_t OC)
{
    return moeh_conv3x3_direct_ok(OC) && (9 * C * (OC / 16) <= 18 || C % 4 == 0);
}

/* dwt (9C, NV*16) += sum over pixels of pad neighbourhood (x) dout, accumulators in registers */
INLINE_AVX512 void conv_dw_image(float *restrict dwt, float *restrict db, const float *restrict pad,
                                 const float *restrict dout, size_t H, size_t W, const int C,
                                 const int NV, const uint8_t *restrict arg)
{
    __m512 acc[18][2], accb[2];
    size_t rs = (W + 2) * (size_t)C, OC = 16 * (size_t)NV;
#pragma GCC unroll 18
    for (int k = 0; k < 9 * C; k++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[k][v] = _mm512_loadu_ps(dwt + k * OC + 16 * v);
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++)
        accb[v] = _mm512_setzero_ps();
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++) {
            const float *s = pad + y * rs + x * C;
            __m512 dv[2];
            if (arg) { /* dout is the pooled gradient (H/2,W/2,OC) routed by arg */
                size_t q = ((y / 2) * (W / 2) + x / 2) * OC;
                __m512i pos = _mm512_set1_epi32((int)((y & 1) * 2 + (x & 1)));
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++) {
                    __m128i a8 = _mm_loadu_si128((const __m128i *)(arg + q + 16 * v));
                    __mmask16 k = _mm512_cmpeq_epi32_mask(_mm512_cvtepu8_epi32(a8), pos);
                    dv[v] = _mm512_maskz_loadu_ps(k, dout + q + 16 * v);
                }
            } else {
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    dv[v] = _mm512_loadu_ps(dout + (y * W + x) * OC + 16 * v);
            }
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                accb[v] = _mm512_add_ps(accb[v], dv[v]);
#pragma GCC unroll 3
            for (int ky = 0; ky < 3; ky++)
#pragma GCC unroll 3
                for (int kx = 0; kx < 3; kx++)
#pragma GCC unroll 2
                    for (int c = 0; c < C; c++) {
                        __m512 xv = _mm512_set1_ps(s[ky * rs + kx * C + c]);
                        int k = (ky * 3 + kx) * C + c;
#pragma GCC unroll 2
                        for (int v = 0; v < NV; v++)
                            acc[k][v] = _mm512_fmadd_ps(xv, dv[v], acc[k][v]);
                    }
        }
#pragma GCC unroll 18
    for (int k = 0; k < 9 * C; k++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(dwt + k * OC + 16 * v, acc[k][v]);
    if (db) {
        float tmp[32];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(tmp + 16 * v, accb[v]);
        for (size_t o = 0; o < OC; o++)
            db[o] += tmp[o];
    }
}

AVX512 static void conv_dw_image_c1(float *restrict dwt, float *restrict db,
                                    const float *restrict pad, const float *restrict dout, size_t H,
                                    size_t W, size_t OC)
{
    if (OC == 16)
        conv_dw_image(dwt, db, pad, dout, H, W, 1, 1, NULL);
    else
        conv_dw_image(dwt, db, pad, dout, H, W, 1, 2, NULL);
}
AVX512 static void conv_dw_image_c2(float *restrict dwt, float *restrict db,
                                    const float *restrict pad, const float *restrict dout, size_t H,
                                    size_t W)
{
    conv_dw_image(dwt, db, pad, dout, H, W, 2, 1, NULL);
}
AVX512 static void conv_dw_image_pooled(float *restrict dwt, float *restrict db,
                                        const float *restrict pad, const float *restrict dpl,
                                        const uint8_t *restrict arg, size_t H, size_t W, size_t C,
                                        size_t OC)
{
    if (C == 1 && OC == 16)
        conv_dw_image(dwt, db, pad, dpl, H, W, 1, 1, arg);
    else if (C == 1)
        conv_dw_image(dwt, db, pad, dpl, H, W, 1, 2, arg);
    else
        conv_dw_image(dwt, db, pad, dpl, H, W, 2, 1, arg);
}

void moeh_conv3x3_direct_dw_pooled(float *restrict dw, float *restrict db, float *restrict pad,
                                   float *restrict dwt, const float *restrict dpl,
                                   const uint8_t *restrict arg, const float *restrict inp, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC)
{
    MOEH_ASSERT(moeh_conv3x3_direct_dw_pooled_ok(C, OC) && H % 2 == 0 && W % 2 == 0);
    memset(dwt, 0, 9 * C * OC * sizeof(float));
    size_t per = (H / 2) * (W / 2) * OC;
    for (size_t i = 0; i < B; i++) {
        conv_pad(pad, inp + i * H * W * C, H, W, C);
        conv_dw_image_pooled(dwt, db, pad, dpl + i * per, arg + i * per, H, W, C, OC);
    }
    for (size_t o = 0; o < OC; o++)
        for (size_t k = 0; k < 9 * C; k++)
            dw[o * 9 * C + k] += dwt[k * OC + o];
}

int moeh_conv3x3_direct_dw_pooled_ok(size_t C, size_t OC)
{
    return moeh_conv3x3_direct_ok(OC) && 9 * C * (OC / 16) <= 18;
}

/* dwt rows [k0, k0+G) (G channels c0.. of one tap, offset toff into the padded image) +=
 * sum over the image's pixels of pad[p + toff + g] * dout[p]: G x NV accumulators. */
INLINE_AVX512 void conv_dw_group(float *restrict dwt, const float *restrict pad,
                                 const float *restrict dout, size_t H, size_t W, size_t C,
                                 size_t toff, const int G, const int NV)
{
    __m512 acc[8][4];
    size_t rs = (W + 2) * C, OC = 16 * (size_t)NV;
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[g][v] = _mm512_loadu_ps(dwt + g * OC + 16 * v);
    for (size_t y = 0; y < H; y++) {
        const float *s = pad + y * rs + toff, *d = dout + y * W * OC;
        for (size_t x = 0; x < W; x++, s += C, d += OC) {
            __m512 dv[4];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                dv[v] = _mm512_loadu_ps(d + 16 * v);
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                __m512 xv = _mm512_set1_ps(s[g]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[g][v] = _mm512_fmadd_ps(xv, dv[v], acc[g][v]);
            }
        }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(dwt + g * OC + 16 * v, acc[g][v]);
}

/* One image, every (tap, channel group): G = 8 channels for OC <= 32, 4 above. */
AVX512 static void conv_dw_image_groups(float *restrict dwt, const float *restrict pad,
                                        const float *restrict dout, size_t H, size_t W, size_t C,
                                        size_t OC)
{
    size_t rs = (W + 2) * C, G = OC <= 32 && C % 8 == 0 ? 8 : 4;
    for (size_t ky = 0; ky < 3; ky++)
        for (size_t kx = 0; kx < 3; kx++)
            for (size_t c0 = 0; c0 < C; c0 += G) {
                float *dt = dwt + ((ky * 3 + kx) * C + c0) * OC;
                size_t toff = ky * rs + kx * C + c0;
                if (G == 8 && OC == 16)
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 8, 1);
                else if (G == 8)
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 8, 2);
                else if (OC == 16)
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 4, 1);
                else if (OC == 32)
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 4, 2);
                else if (OC == 48)
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 4, 3);
                else
                    conv_dw_group(dt, pad, dout, H, W, C, toff, 4, 4);
            }
}

void moeh_conv3x3_direct_dw(float *restrict dw, float *restrict db, float *restrict pad,
                            float *restrict dwt, const float *restrict dout,
                            const float *restrict inp, size_t B, size_t H, size_t W, size_t C,
                            size_t OC)
{
    MOEH_ASSERT(moeh_conv3x3_direct_dw_ok(C, OC));
    /* dwt (9C,OC): the transposed gradient, accumulated over the images */
    memset(dwt, 0, 9 * C * OC * sizeof(float));
    int regs = 9 * C * (OC / 16) <= 18;
    for (size_t i = 0; i < B; i++) {
        const float *d = dout + i * H * W * OC;
        conv_pad(pad, inp + i * H * W * C, H, W, C);
        if (regs && C == 1)
            conv_dw_image_c1(dwt, db, pad, d, H, W, OC);
        else if (regs)
            conv_dw_image_c2(dwt, db, pad, d, H, W);
        else
            conv_dw_image_groups(dwt, pad, d, H, W, C, OC);
    }
    if (!regs && db)
        for (size_t p = 0; p < B * H * W; p++)
            for (size_t o = 0; o < OC; o++)
                db[o] += dout[p * OC + o];
    for (size_t o = 0; o < OC; o++)
        for (size_t k = 0; k < 9 * C; k++)
            dw[o * 9 * C + k] += dwt[k * OC + o];
}
#else
int moeh_conv3x3_direct_ok(size_t OC)
{
    (void)OC;
    return 0;
}
int moeh_conv3x3_direct_dw_ok(size_t C, size_t OC)
{
    (void)C, (void)OC;
    return 0;
}
void moeh_conv3x3_direct(float *restrict out, float *restrict pad, const float *restrict inp,
                         const float *restrict wt, const float *restrict b, size_t B, size_t H,
                         size_t W, size_t C, size_t OC, int acc)
{
    (void)out, (void)pad, (void)inp, (void)wt, (void)b, (void)B, (void)H, (void)W, (void)C,
        (void)OC, (void)acc;
    MOEH_ASSERT(0 && "direct convolution needs x86-64 with AVX-512");
}
int moeh_conv3x3_direct_dw_pooled_ok(size_t C, size_t OC)
{
    (void)C, (void)OC;
    return 0;
}
void moeh_conv3x3_direct_dw_pooled(float *restrict dw, float *restrict db, float *restrict pad,
                                   float *restrict dwt, const float *restrict dpl,
                                   const uint8_t *restrict arg, const float *restrict inp, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC)
{
    (void)dw, (void)db, (void)pad, (void)dwt, (void)dpl, (void)arg, (void)inp, (void)B, (void)H,
        (void)W, (void)C, (void)OC;
    MOEH_ASSERT(0 && "direct convolution needs x86-64 with AVX-512");
}
void moeh_conv3x3_pool_relu_direct(float *restrict pl, uint8_t *restrict arg, float *restrict rows,
                                   float *restrict pad, const float *restrict inp,
                                   const float *restrict wt, const float *restrict b, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC)
{
    (void)pl, (void)arg, (void)rows, (void)pad, (void)inp, (void)wt, (void)b, (void)B, (void)H,
        (void)W, (void)C, (void)OC;
    MOEH_ASSERT(0 && "direct convolution needs x86-64 with AVX-512");
}
void moeh_conv3x3_direct_dw(float *restrict dw, float *restrict db, float *restrict pad,
                            float *restrict dwt, const float *restrict dout,
                            const float *restrict inp, size_t B, size_t H, size_t W, size_t C,
                            size_t OC)
{
    (void)dw, (void)db, (void)pad, (void)dwt, (void)dout, (void)inp, (void)B, (void)H, (void)W,
        (void)C, (void)OC;
    MOEH_ASSERT(0 && "direct convolution needs x86-64 with AVX-512");
}
#endif

/* ---- pooling ----------------------------------------------------------------------------- */
MOEH_CLONES void moeh_maxpool2_forward(float *restrict out, uint8_t *restrict arg,
                                       const float *restrict inp, size_t B, size_t H, size_t W,
                                       size_t C)
{
    size_t Ho = H / 2, Wo = W / 2;
    for (size_t b = 0; b < B; b++)
        for (size_t y = 0; y < Ho; y++)
            for (size_t x = 0; x < Wo; x++) {
                float *o = out + ((b * Ho + y) * Wo + x) * C;
                uint8_t *a = arg + ((b * Ho + y) * Wo + x) * C;
                const float *s0 = inp + ((b * H + 2 * y) * W + 2 * x) * C, *s1 = s0 + C,
                            *s2 = s0 + W * C, *s3 = s2 + C;
                for (size_t c = 0; c < C; c++) {
                    float m = s0[c];
                    uint8_t k = 0;
                    k = s1[c] > m ? 1 : k, m = s1[c] > m ? s1[c] : m;
                    k = s2[c] > m ? 2 : k, m = s2[c] > m ? s2[c] : m;
                    k = s3[c] > m ? 3 : k, m = s3[c] > m ? s3[c] : m;
                    o[c] = m;
                    a[c] = k;
                }
            }
}

/* One output pixel's gradient into the four input pixels of its window (a helper with restrict
 * parameters, so that gcc vectorises the channel loop). */
static void pool_bwd_pixel(float *restrict t0, float *restrict t1, float *restrict t2,
                           float *restrict t3, const float *restrict d, const uint8_t *restrict a,
                           size_t C)
{
    for (size_t c = 0; c < C; c++) { /* products with 0/1, not selects: gcc 12 vectorises these */
        float dv = d[c], k = (float)a[c];
        t0[c] = dv * (float)(k == 0.0f);
        t1[c] = dv * (float)(k == 1.0f);
        t2[c] = dv * (float)(k == 2.0f);
        t3[c] = dv * (float)(k == 3.0f);
    }
}

MOEH_CLONES void moeh_maxpool2_backward_set(float *restrict dinp, const float *restrict dout,
                                            const uint8_t *restrict arg, size_t B, size_t H,
                                            size_t W, size_t C)
{
    size_t Ho = H / 2, Wo = W / 2;
    for (size_t b = 0; b < B; b++)
        for (size_t y = 0; y < Ho; y++)
            for (size_t x = 0; x < Wo; x++) {
                size_t o = ((b * Ho + y) * Wo + x) * C;
                float *t0 = dinp + ((b * H + 2 * y) * W + 2 * x) * C;
                pool_bwd_pixel(t0, t0 + C, t0 + W * C, t0 + W * C + C, dout + o, arg + o, C);
            }
}

void moeh_maxpool2_backward(float *restrict dinp, const float *restrict dout,
                            const uint8_t *restrict arg, size_t B, size_t H, size_t W, size_t C)
{
    size_t Ho = H / 2, Wo = W / 2;
    for (size_t b = 0; b < B; b++)
        for (size_t y = 0; y < Ho; y++)
            for (size_t x = 0; x < Wo; x++) {
                const float *d = dout + ((b * Ho + y) * Wo + x) * C;
                const uint8_t *a = arg + ((b * Ho + y) * Wo + x) * C;
                for (size_t c = 0; c < C; c++) {
                    size_t k = a[c];
                    dinp[((b * H + 2 * y + k / 2) * W + 2 * x + k % 2) * C + c] += d[c];
                }
            }
}

MOEH_CLONES void moeh_gap_forward(float *restrict out, const float *restrict inp, size_t B,
                                  size_t HW, size_t C)
{
    for (size_t b = 0; b < B; b++) {
        float *o = out + b * C;
        memset(o, 0, C * sizeof(float));
        for (size_t i = 0; i < HW; i++)
            for (size_t c = 0; c < C; c++)
                o[c] += inp[(b * HW + i) * C + c];
        for (size_t c = 0; c < C; c++)
            o[c] /= (float)HW;
    }
}

MOEH_CLONES void moeh_gap_backward(float *restrict dinp, const float *restrict dout, size_t B,
                                   size_t HW, size_t C)
{
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < HW; i++)
            for (size_t c = 0; c < C; c++)
                dinp[(b * HW + i) * C + c] += dout[b * C + c] / (float)HW;
}
