/* nn_gru.c - the GRU forward and backward (see moeh_nn.h), with the small row-major matmul of
 * its recurrence (an AVX-512 kernel when the CPU has it, else OpenBLAS) and the branch-free
 * exp/sigmoid/tanh of its gates. Nothing here allocates. */
#include "moeh_nn.h"

#include "layers.h"
#include "nn_int.h"

#include <cblas.h>
#include <string.h>

/* ---- small row-major matmul for the GRU recurrence ------------------------------------- *
 * c (M,N) = (acc ? c : bias broadcast, or 0) + a (M,K) @ b (K,N), leading dimensions lda, ldb,
 * ldc. The recurrence's 64 x 384 x 128 products are too small for OpenBLAS to amortise packing
 * its operands on every one of the 48 steps; with b already in (K,N) layout this kernel reads
 * it in place: blocks of 6 rows x 64 columns of c in 24 AVX-512 accumulators. */
#ifdef HAVE_AVX512_KERNELS
INLINE_AVX512 void gemm_block(float *restrict c, const float *restrict a, const float *restrict b,
                              const float *restrict bias, size_t lda, size_t ldb, size_t ldc,
                              size_t K, int acc, const int R, const int NV)
{
    __m512 s[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            s[r][v] = acc    ? _mm512_loadu_ps(c + r * ldc + 16 * v)
                      : bias ? _mm512_loadu_ps(bias + 16 * v)
                             : _mm512_setzero_ps();
    for (size_t k = 0; k < K; k++) {
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 x = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                s[r][v] = _mm512_fmadd_ps(x, bv[v], s[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(c + r * ldc + 16 * v, s[r][v]);
}

INLINE_AVX512 void gemm_cols(float *restrict c, const float *restrict a, const float *restrict b,
                             const float *restrict bias, size_t lda, size_t ldb, size_t ldc,
                             size_t K, int acc, const int R, size_t N)
{
    size_t j = 0;
    for (; j + 64 <= N; j += 64)
        gemm_block(c + j, a, b + j, bias ? bias + j : NULL, lda, ldb, ldc, K, acc, R, 4);
    switch ((N - j) / 16) {
    case 3:
        gemm_block(c + j, a, b + j, bias ? bias + j : NULL, lda, ldb, ldc, K, acc, R, 3);
        break;
    case 2:
        gemm_block(c + j, a, b + j, bias ? bias + j : NULL, lda, ldb, ldc, K, acc, R, 2);
        break;
    case 1:
        gemm_block(c + j, a, b + j, bias ? bias + j : NULL, lda, ldb, ldc, K, acc, R, 1);
        break;
    default:
        break;
    }
}

AVX512 static void gemm_nn_avx512(float *restrict c, const float *restrict a,
                                  const float *restrict b, const float *restrict bias, size_t M,
                                  size_t N, size_t K, size_t lda, size_t ldb, size_t ldc, int acc)
{
    size_t i = 0;
    for (; i + 6 <= M; i += 6)
        gemm_cols(c + i * ldc, a + i * lda, b, bias, lda, ldb, ldc, K, acc, 6, N);
    c += i * ldc, a += i * lda;
    switch (M - i) { /* the last rows in one block (64 = 10 x 6 + 4) */
    case 5:
        gemm_cols(c, a, b, bias, lda, ldb, ldc, K, acc, 5, N);
        break;
    case 4:
        gemm_cols(c, a, b, bias, lda, ldb, ldc, K, acc, 4, N);
        break;
    case 3:
        gemm_cols(c, a, b, bias, lda, ldb, ldc, K, acc, 3, N);
        break;
    case 2:
        gemm_cols(c, a, b, bias, lda, ldb, ldc, K, acc, 2, N);
        break;
    case 1:
        gemm_cols(c, a, b, bias, lda, ldb, ldc, K, acc, 1, N);
        break;
    default:
        break;
    }
}
#endif

static void gemm_nn(float *restrict c, const float *restrict a, const float *restrict b,
                    const float *restrict bias, size_t M, size_t N, size_t K, size_t lda,
                    size_t ldb, size_t ldc, int acc)
{
#ifdef HAVE_AVX512_KERNELS
    if (cpu_avx512() && N % 16 == 0) {
        gemm_nn_avx512(c, a, b, bias, M, N, K, lda, ldb, ldc, acc);
        return;
    }
#endif
    if (!acc && bias)
        for (size_t i = 0; i < M; i++)
            memcpy(c + i * ldc, bias, N * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a,
                (int)lda, b, (int)ldb, (acc || bias) ? 1.0f : 0.0f, c, (int)ldc);
}

/* ---- GRU ------------------------------------------------------------------------------- */
/* exp(x) for the GRU gates, branch-free so that the gate loop vectorises: x = n ln2 + f with
 * n = round(x / ln2) (the 1.5 * 2^23 trick rounds to nearest), e^f by its degree-6 Taylor
 * polynomial on |f| <= ln2/2 (relative error < 2e-7), 2^n through the exponent bits.
 * x is clamped to [-87, 88] so the result stays a normal finite float. */
static inline float vexpf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * 1.44269504088896341f;
    float r = (t + 12582912.0f) - 12582912.0f;
    float f = x - r * 0.693145751953125f - r * 1.428606765330187e-06f;
    float p =
        1.0f +
        f * (1.0f +
             f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
    int32_t bits = ((int32_t)r + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return p * sc;
}
static inline float vsigmoid(float x)
{
    return 1.0f / (1.0f + vexpf(-x));
}
static inline float vtanh(float x)
{
    return 2.0f / (1.0f + vexpf(-2.0f * x)) - 1.0f;
}

MOEH_CLONES void moeh_gru_forward(float *restrict hs, float *restrict xi, float *restrict gates,
                                  float *restrict hh, float *restrict whhT, const float *restrict x,
                                  const float *restrict wih, const float *restrict whh,
                                  const float *restrict bih, const float *restrict bhh, size_t B,
                                  size_t T, size_t In, size_t H)
{
    size_t G = 3 * H;
    /* all input projections at once: xi (B*T,3H) = x (B*T,I) @ wih^T + bih; with the kernel,
     * wih^T (I,3H) goes through whhT first (room for it when I <= H), which saves OpenBLAS's
     * bias broadcast over B*T rows */
#ifdef HAVE_AVX512_KERNELS
    if (cpu_avx512() && G % 16 == 0 && In <= H) {
        for (size_t j = 0; j < G; j++)
            for (size_t k = 0; k < In; k++)
                whhT[k * G + j] = wih[j * In + k];
        gemm_nn(xi, x, whhT, bih, B * T, G, In, In, G, G, 0);
    } else
#endif
        moeh_linear_forward(xi, x, wih, bih, B * T, In, G);
    memset(hs, 0, B * H * sizeof(float));
    /* whhT (H,3H) = whh^T once, so that every step reads it in place */
    for (size_t j = 0; j < G; j++)
        for (size_t k = 0; k < H; k++)
            whhT[k * G + j] = whh[j * H + k];
    for (size_t t = 0; t < T; t++) {
        const float *h = hs + t * B * H;
        float *hn_out = hs + (t + 1) * B * H, *gt = gates + t * B * 4 * H;
        /* hh (B,3H) = h (B,H) @ whhT (H,3H) + bhh */
        gemm_nn(hh, h, whhT, bhh, B, G, H, H, G, G, 0);
        for (size_t b = 0; b < B; b++) {
            const float *xr = xi + (b * T + t) * G, *hr = hh + b * G, *hb = h + b * H;
            float *g = gt + b * 4 * H, *ho = hn_out + b * H;
            for (size_t j = 0; j < H; j++) {
                float r = vsigmoid(xr[j] + hr[j]);
                float z = vsigmoid(xr[H + j] + hr[H + j]);
                float hn = hr[2 * H + j];
                float n = vtanh(xr[2 * H + j] + r * hn);
                g[j] = r;
                g[H + j] = z;
                g[2 * H + j] = n;
                g[3 * H + j] = hn;
                ho[j] = (1.0f - z) * n + z * hb[j];
            }
        }
    }
}

MOEH_CLONES void moeh_gru_backward(float *restrict dx, float *restrict dwih, float *restrict dwhh,
                                   float *restrict dbih, float *restrict dbhh, float *restrict dxi,
                                   float *restrict dhh, float *restrict dh,
                                   const float *restrict dhT, const float *restrict x,
                                   const float *restrict wih, const float *restrict whh,
                                   const float *restrict hs, const float *restrict gates, size_t B,
                                   size_t T, size_t In, size_t H)
{
    size_t G = 3 * H;
    memcpy(dh, dhT, B * H * sizeof(float));
    for (size_t t = T; t-- > 0;) {
        const float *h = hs + t * B * H, *gt = gates + t * B * 4 * H;
        float *dht = dhh + t * B * G;
        for (size_t b = 0; b < B; b++) {
            const float *g = gt + b * 4 * H, *hb = h + b * H;
            float *dhb = dh + b * H, *dxr = dxi + (b * T + t) * G, *dhr = dht + b * G;
            for (size_t j = 0; j < H; j++) {
                float r = g[j], z = g[H + j], n = g[2 * H + j], hn = g[3 * H + j];
                float d = dhb[j];
                float dn = d * (1.0f - z), dz = d * (hb[j] - n);
                float dnp = dn * (1.0f - n * n);
                float drp = dnp * hn * r * (1.0f - r);
                float dzp = dz * z * (1.0f - z);
                dxr[j] = drp;
                dxr[H + j] = dzp;
                dxr[2 * H + j] = dnp;
                dhr[j] = drp;
                dhr[H + j] = dzp;
                dhr[2 * H + j] = dnp * r;
                dhb[j] = d * z; /* direct path h -> h' */
            }
        }
        /* dh (B,H) += dhh_t (B,3H) @ whh (3H,H); the weight gradient waits for all steps */
        gemm_nn(dh, dht, whh, NULL, B, H, G, G, H, H, 1);
    }
    /* dwhh (3H,H) += dhh^T (3H,T*B) @ hs[0..T) (T*B,H) and dbhh += sums: one sgemm for all
     * steps instead of T small ones */
    moeh_linear_backward(NULL, dwhh, dbhh, dhh, hs, whh, T * B, H, G);
    /* dx (B*T,I) += dxi @ wih; dwih (3H,I) += dxi^T @ x; dbih += sums */
    moeh_linear_backward(dx, dwih, dbih, dxi, x, wih, B * T, In, G);
}
