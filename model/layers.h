/* layers.h - layer kernels as free functions: outputs first, then inputs, then sizes.
 * Backward functions *add* into gradient buffers; zeroing is the caller's job.
 * Shapes are row-major and given in the comment of each kernel. Nothing here allocates. */
#ifndef MOEH_LAYERS_H
#define MOEH_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* For the memory-bound elementwise kernels (optimiser, pooling, embedding bag, masks): an
 * AVX-512 clone besides the baseline x86-64 one, picked at load time (gcc ifunc). The default
 * build targets plain x86-64, whose vectoriser only has 4-wide SSE. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MOEH_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define MOEH_CLONES
#endif

/* out (B,OC) = inp (B,C) @ w^T + b; w is (OC,C), b is (OC) or NULL. */
void moeh_linear_forward(float *restrict out, const float *restrict inp, const float *restrict w,
                         const float *restrict b, size_t B, size_t C, size_t OC);
/* dinp (B,C) += dout @ w; dw (OC,C) += dout^T @ inp; db (OC) += sum_b dout.
 * Any of dinp, dw, db may be NULL to skip it. */
void moeh_linear_backward(float *restrict dinp, float *restrict dw, float *restrict db,
                          const float *restrict dout, const float *restrict inp,
                          const float *restrict w, size_t B, size_t C, size_t OC);

/* out (n) = max(inp, 0); may be in place. */
void moeh_relu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += dout * (out > 0), where out is the forward output. */
void moeh_relu_backward(float *restrict dinp, const float *restrict dout, const float *restrict out,
                        size_t n);

/* Masked binary cross-entropy with logits, summed over tasks and averaged per task over the
 * samples whose label is present: loss = sum_t pos_weight-weighted mean_{b: mask[b,t]} bce.
 * logits, y (B,T); mask (B,T) 0/1; pos_weight (T) or NULL (all 1). Tasks with no label in the
 * batch contribute nothing. If dlogits is non-NULL it is *set* (not added) to d loss / d logits.
 * Returns the loss (in double). */
double moeh_bce_masked(float *restrict dlogits, const float *restrict logits,
                       const float *restrict y, const uint8_t *restrict mask,
                       const float *restrict pos_weight, size_t B, size_t T);

static inline float moeh_sigmoid(float x)
{
    return x >= 0 ? 1.0f / (1.0f + __builtin_expf(-x))
                  : __builtin_expf(x) / (1.0f + __builtin_expf(x));
}

#endif
