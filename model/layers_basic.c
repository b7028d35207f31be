/* layers_basic.c - linear, ReLU and masked BCE kernels (see layers.h). */
#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void moeh_linear_forward(float *restrict out, const float *restrict inp, const float *restrict w,
                         const float *restrict b, size_t B, size_t C, size_t OC)
{
    if (b) {
        for (size_t i = 0; i < B; i++)
            memcpy(out + i * OC, b, OC * sizeof(float));
    }
    /* out = inp @ w^T (+ out when a bias was broadcast into it) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)OC, (int)C, 1.0f, inp, (int)C,
                w, (int)C, b ? 1.0f : 0.0f, out, (int)OC);
}

void moeh_linear_backward(float *restrict dinp, float *restrict dw, float *restrict db,
                          const float *restrict dout, const float *restrict inp,
                          const float *restrict w, size_t B, size_t C, size_t OC)
{
    if (dinp) /* dinp (B,C) += dout (B,OC) @ w (OC,C) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, (int)C, (int)OC, 1.0f, dout,
                    (int)OC, w, (int)C, 1.0f, dinp, (int)C);
    if (dw) /* dw (OC,C) += dout^T (OC,B) @ inp (B,C) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C, (int)B, 1.0f, dout,
                    (int)OC, inp, (int)C, 1.0f, dw, (int)C);
    if (db)
        for (size_t i = 0; i < B; i++)
            for (size_t o = 0; o < OC; o++)
                db[o] += dout[i * OC + o];
}

void moeh_relu_forward(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] > 0 ? inp[i] : 0.0f;
}

void moeh_relu_backward(float *restrict dinp, const float *restrict dout, const float *restrict out,
                        size_t n)
{
    for (size_t i = 0; i < n; i++)
        dinp[i] += out[i] > 0 ? dout[i] : 0.0f;
}

double moeh_bce_masked(float *restrict dlogits, const float *restrict logits,
                       const float *restrict y, const uint8_t *restrict mask,
                       const float *restrict pos_weight, size_t B, size_t T)
{
    double loss = 0;
    for (size_t t = 0; t < T; t++) {
        size_t n = 0;
        for (size_t b = 0; b < B; b++)
            n += mask[b * T + t] != 0;
        float pw = pos_weight ? pos_weight[t] : 1.0f;
        for (size_t b = 0; b < B; b++) {
            size_t k = b * T + t;
            if (!mask[k] || n == 0) {
                if (dlogits) dlogits[k] = 0.0f;
                continue;
            }
            double z = logits[k], yy = y[k];
            /* log(1 + e^-|z|) stable forms of -log sigmoid(z) and -log(1 - sigmoid(z)) */
            double sp_neg = fmax(-z, 0.0) + log1p(exp(-fabs(z))); /* -log sigmoid(z) */
            double sp_pos = fmax(z, 0.0) + log1p(exp(-fabs(z)));  /* -log(1 - sigmoid(z)) */
            loss += (pw * yy * sp_neg + (1.0 - yy) * sp_pos) / (double)n;
            if (dlogits) {
                double s = 1.0 / (1.0 + exp(-z));
                /* d/dz [pw*y*(-log s) + (1-y)*(-log(1-s))] = pw*y*(s-1) + (1-y)*s */
                dlogits[k] = (float)((pw * yy * (s - 1.0) + (1.0 - yy) * s) / (double)n);
            }
        }
    }
    return loss;
}
