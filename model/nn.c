/* nn.c - GELU, layer norm, dropout, embedding bag, gate and load balance (see moeh_nn.h); the
 * GRU is in nn_gru.c, the 3x3 convolutions and pooling in nn_conv.c. Nothing here allocates. */
#include "moeh_nn.h"

#include "layers.h"

#include <math.h>
#include <string.h>

/* ---- GELU (tanh approximation) --------------------------------------------------------- */
#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

void moeh_gelu_forward(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x)));
    }
}

void moeh_gelu_backward(float *restrict dinp, const float *restrict dout, const float *restrict inp,
                        size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_K * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += dout[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
}

/* ---- layer norm ------------------------------------------------------------------------ */
void moeh_layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd,
                            const float *restrict inp, const float *restrict gamma,
                            const float *restrict beta, size_t N, size_t C, float eps)
{
    for (size_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        double s = 0, ss = 0;
        for (size_t c = 0; c < C; c++)
            s += x[c];
        double mu = s / (double)C;
        for (size_t c = 0; c < C; c++)
            ss += (x[c] - mu) * (x[c] - mu);
        float rs = (float)(1.0 / sqrt(ss / (double)C + eps));
        mean[i] = (float)mu;
        rstd[i] = rs;
        for (size_t c = 0; c < C; c++)
            out[i * C + c] = ((x[c] - (float)mu) * rs) * gamma[c] + beta[c];
    }
}

void moeh_layernorm_backward(float *restrict dinp, float *restrict dgamma, float *restrict dbeta,
                             const float *restrict dout, const float *restrict inp,
                             const float *restrict mean, const float *restrict rstd,
                             const float *restrict gamma, size_t N, size_t C)
{
    for (size_t i = 0; i < N; i++) {
        const float *x = inp + i * C, *dy = dout + i * C;
        float mu = mean[i], rs = rstd[i];
        /* dxhat = dy * gamma; dx = rs * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
        float m1 = 0, m2 = 0;
        for (size_t c = 0; c < C; c++) {
            float xh = (x[c] - mu) * rs, dxh = dy[c] * gamma[c];
            m1 += dxh;
            m2 += dxh * xh;
            if (dgamma) dgamma[c] += dy[c] * xh;
            if (dbeta) dbeta[c] += dy[c];
        }
        m1 /= (float)C;
        m2 /= (float)C;
        if (dinp)
            for (size_t c = 0; c < C; c++) {
                float xh = (x[c] - mu) * rs;
                dinp[i * C + c] += rs * (dy[c] * gamma[c] - m1 - xh * m2);
            }
    }
}

/* ---- dropout --------------------------------------------------------------------------- */
void moeh_dropout_forward(float *out, uint8_t *restrict keep, const float *inp, float p, size_t n,
                          moeh_rng_t *rng)
{
    float s = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++) {
        keep[i] = moeh_rng_uniform(rng) >= p;
        out[i] = keep[i] ? inp[i] * s : 0.0f;
    }
}

void moeh_dropout_backward(float *restrict dinp, const float *restrict dout,
                           const uint8_t *restrict keep, float p, size_t n)
{
    float s = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++)
        if (keep[i]) dinp[i] += dout[i] * s;
}

/* ---- embedding bag --------------------------------------------------------------------- */
/* The bag's rows are scattered over the table (hashed ids), which the hardware prefetcher
 * cannot predict: each row EMB_AHEAD ids ahead is requested while the current one is summed. */
enum { EMB_AHEAD = 6 };
static inline void prefetch_row(const float *row, size_t D, int write)
{
    for (size_t d = 0; d < D; d += 16) {
        if (write)
            __builtin_prefetch(row + d, 1, 3);
        else
            __builtin_prefetch(row + d, 0, 3);
    }
}

MOEH_CLONES void moeh_embbag_forward(float *restrict out, const float *restrict E,
                                     const uint64_t *restrict off, const uint32_t *restrict ids,
                                     size_t B, size_t D)
{
    for (size_t b = 0; b < B; b++) {
        float *o = out + b * D;
        memset(o, 0, D * sizeof(float));
        uint64_t n = off[b + 1] - off[b];
        if (n == 0) continue;
        for (uint64_t j = off[b]; j < off[b + 1]; j++) {
            const float *e = E + (size_t)ids[j] * D;
            if (j + EMB_AHEAD < off[b + 1]) prefetch_row(E + (size_t)ids[j + EMB_AHEAD] * D, D, 0);
            for (size_t d = 0; d < D; d++)
                o[d] += e[d];
        }
        float s = 1.0f / (float)n;
        for (size_t d = 0; d < D; d++)
            o[d] *= s;
    }
}

MOEH_CLONES void moeh_embbag_backward(float *restrict dE, uint8_t *restrict touched,
                                      uint32_t *restrict rows, size_t *restrict n_rows,
                                      const float *restrict dout, const uint64_t *restrict off,
                                      const uint32_t *restrict ids, size_t B, size_t D)
{
    for (size_t b = 0; b < B; b++) {
        uint64_t n = off[b + 1] - off[b];
        if (n == 0) continue;
        float s = 1.0f / (float)n;
        const float *g = dout + b * D;
        for (uint64_t j = off[b]; j < off[b + 1]; j++) {
            uint32_t id = ids[j];
            if (!touched[id]) {
                touched[id] = 1;
                rows[(*n_rows)++] = id;
            }
            float *de = dE + (size_t)id * D;
            if (j + EMB_AHEAD < off[b + 1]) prefetch_row(dE + (size_t)ids[j + EMB_AHEAD] * D, D, 1);
            for (size_t d = 0; d < D; d++)
                de[d] += g[d] * s;
        }
    }
}

/* ---- gate -------------------------------------------------------------------------------- */
void moeh_gate_forward(float *restrict w, float *restrict probs, uint8_t *restrict sel,
                       const float *restrict logits, size_t B, size_t K, size_t top_k, float temp)
{
    for (size_t b = 0; b < B; b++) {
        const float *l = logits + b * K;
        float *p = probs + b * K, *wb = w + b * K;
        uint8_t *s = sel + b * K;
        float mx = l[0];
        for (size_t k = 1; k < K; k++)
            mx = l[k] > mx ? l[k] : mx;
        double sum = 0;
        for (size_t k = 0; k < K; k++) {
            p[k] = expf((l[k] - mx) / temp);
            sum += p[k];
        }
        for (size_t k = 0; k < K; k++)
            p[k] = (float)(p[k] / sum);
        if (top_k == 0 || top_k >= K) {
            memcpy(wb, p, K * sizeof(float));
            memset(s, 1, K);
            continue;
        }
        memset(s, 0, K);
        double ssel = 0;
        for (size_t i = 0; i < top_k; i++) {
            size_t best = K;
            for (size_t k = 0; k < K; k++)
                if (!s[k] && (best == K || p[k] > p[best])) best = k;
            s[best] = 1;
            ssel += p[best];
        }
        for (size_t k = 0; k < K; k++)
            wb[k] = s[k] ? (float)(p[k] / ssel) : 0.0f;
    }
}

void moeh_gate_backward(float *restrict dlogits, const float *restrict dw,
                        const float *restrict dprobs, const float *restrict w,
                        const float *restrict probs, const uint8_t *restrict sel, size_t B,
                        size_t K, float temp)
{
    for (size_t b = 0; b < B; b++) {
        float *dl = dlogits + b * K;
        if (dw) { /* w = softmax over the selected logits / temp */
            const float *wb = w + b * K, *dwb = dw + b * K;
            const uint8_t *s = sel + b * K;
            double dot = 0;
            for (size_t k = 0; k < K; k++)
                if (s[k]) dot += (double)wb[k] * dwb[k];
            for (size_t k = 0; k < K; k++)
                if (s[k]) dl[k] += (float)(wb[k] * (dwb[k] - dot) / temp);
        }
        if (dprobs) {
            const float *p = probs + b * K, *dp = dprobs + b * K;
            double dot = 0;
            for (size_t k = 0; k < K; k++)
                dot += (double)p[k] * dp[k];
            for (size_t k = 0; k < K; k++)
                dl[k] += (float)(p[k] * (dp[k] - dot) / temp);
        }
    }
}

double moeh_load_balance(float *restrict dprobs, const float *restrict probs,
                         const uint8_t *restrict sel, size_t B, size_t K, float scale)
{
    double f[64] = {0}, P[64] = {0}, nsel = 0;
    MOEH_ASSERT(K <= 64);
    for (size_t b = 0; b < B; b++) {
        const uint8_t *s = sel + b * K;
        const float *p = probs + b * K;
        size_t ns = 0, top = 0;
        for (size_t k = 0; k < K; k++) {
            ns += s[k] != 0;
            P[k] += p[k];
            if (p[k] > p[top]) top = k;
        }
        if (ns == K) { /* dense: count the top-1 expert, else f_k = 1/K and L is constant */
            f[top] += 1;
            nsel += 1;
        } else {
            for (size_t k = 0; k < K; k++)
                f[k] += s[k];
            nsel += (double)ns;
        }
    }
    double L = 0;
    for (size_t k = 0; k < K; k++) {
        f[k] = nsel > 0 ? f[k] / nsel : 0;
        P[k] /= (double)B;
        L += f[k] * P[k];
    }
    L *= (double)K;
    if (dprobs)
        for (size_t b = 0; b < B; b++)
            for (size_t k = 0; k < K; k++)
                dprobs[b * K + k] += (float)(scale * (double)K * f[k] / (double)B);
    return scale * L;
}
