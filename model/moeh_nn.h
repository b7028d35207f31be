/* moeh_nn.h - the layer kernels MoE-Health needs beyond layers.h: GELU, layer norm, dropout,
 * GRU over a sequence, embedding bag over hashed ids with sparse gradients, 3x3 convolution
 * (im2col + sgemm everywhere; direct AVX-512 kernels, picked at run time, where the CPU has
 * them and the channel counts fit), 2x2 max pooling, global average pooling, the softmax gate
 * with temperature and renormalised top-k, and the Switch-style load-balancing loss.
 *
 * Conventions (as layers.h): outputs first, then inputs, then sizes; row-major shapes in the
 * comment of each kernel; backward functions *add* into gradient buffers (zeroing is the
 * caller's job) unless the comment says "set"; workspaces are passed in by the caller, nothing
 * here allocates. Images are NHWC: a batch's convolution is one sgemm on the im2col path, and
 * the direct kernels vectorise over the contiguous channels. */
#ifndef MOEH_NN_H
#define MOEH_NN_H

#include "moeh_common.h"

#include <stddef.h>
#include <stdint.h>

/* ---- activations ----------------------------------------------------------------------- */
/* out (n) = gelu(inp) with the tanh approximation (PyTorch approximate="tanh"); may be in place
 * only if the backward pass gets the original input from elsewhere. */
void moeh_gelu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += dout * gelu'(inp). */
void moeh_gelu_backward(float *restrict dinp, const float *restrict dout, const float *restrict inp,
                        size_t n);

/* ---- layer norm ------------------------------------------------------------------------ */
/* out (N,C) = (inp - mean) * rstd * gamma + beta over the last axis; mean, rstd (N) are saved
 * for the backward pass. eps as PyTorch (1e-5 by default). */
void moeh_layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd,
                            const float *restrict inp, const float *restrict gamma,
                            const float *restrict beta, size_t N, size_t C, float eps);
/* dinp (N,C) += ...; dgamma, dbeta (C) += ... (any may be NULL). */
void moeh_layernorm_backward(float *restrict dinp, float *restrict dgamma, float *restrict dbeta,
                             const float *restrict dout, const float *restrict inp,
                             const float *restrict mean, const float *restrict rstd,
                             const float *restrict gamma, size_t N, size_t C);

/* ---- dropout --------------------------------------------------------------------------- */
/* out (n) = inp * keep / (1 - p), keep (n) drawn from rng (saved for backward). p in [0, 1). */
void moeh_dropout_forward(float *out, uint8_t *restrict keep, const float *inp, float p, size_t n,
                          moeh_rng_t *rng);
/* dinp (n) += dout * keep / (1 - p). */
void moeh_dropout_backward(float *restrict dinp, const float *restrict dout,
                           const uint8_t *restrict keep, float p, size_t n);

/* ---- GRU ------------------------------------------------------------------------------- *
 * PyTorch's GRU cell, gate order (r, z, n):
 *   r = s(Wir x + bir + Whr h + bhr), z = s(Wiz x + biz + Whz h + bhz),
 *   n = tanh(Win x + bin + r * (Whn h + bhn)), h' = (1 - z) * n + z * h, h_0 = 0.
 * x (B,T,I); wih (3H,I); whh (3H,H); bih, bhh (3H).
 * Saved for backward: xi (B*T,3H) input projections (row b*T+t), hs (T+1,B,H) hidden states
 * with hs[0] = 0, gates (T,B,4H) = r, z, n, (Whn h + bhn) per step. hh (B,3H) and
 * whhT (H,3H) (whh transposed once per call, read in place by every step; before that it
 * holds wih^T for the input projections when I <= H) are scratch.
 * The final hidden state is hs + T*B*H. */
void moeh_gru_forward(float *restrict hs, float *restrict xi, float *restrict gates,
                      float *restrict hh, float *restrict whhT, const float *restrict x,
                      const float *restrict wih, const float *restrict whh,
                      const float *restrict bih, const float *restrict bhh, size_t B, size_t T,
                      size_t In, size_t H);
/* Backward from dhT (B,H), the gradient of the final hidden state. dx (B,T,I) may be NULL.
 * Scratch: dxi (B*T,3H), dhh (T,B,3H), dh (B,H) (dh is overwritten, dhT is not). */
void moeh_gru_backward(float *restrict dx, float *restrict dwih, float *restrict dwhh,
                       float *restrict dbih, float *restrict dbhh, float *restrict dxi,
                       float *restrict dhh, float *restrict dh, const float *restrict dhT,
                       const float *restrict x, const float *restrict wih,
                       const float *restrict whh, const float *restrict hs,
                       const float *restrict gates, size_t B, size_t T, size_t In, size_t H);

/* ---- embedding bag (mean) over hashed ids ---------------------------------------------- *
 * Bag b holds ids[off[b] .. off[b+1]) (offsets need not start at 0); every id must be < V
 * (the caller validates). E (V,D). An empty bag gives a zero row. */
void moeh_embbag_forward(float *restrict out, const float *restrict E, const uint64_t *restrict off,
                         const uint32_t *restrict ids, size_t B, size_t D);
/* dE rows += dout[b] / n_b for every id of bag b. Rows touched for the first time (touched[id]
 * == 0) are marked and appended to rows[*n_rows] (rows has room for V entries), so that the
 * optimiser and the gradient reset can visit only those rows. */
void moeh_embbag_backward(float *restrict dE, uint8_t *restrict touched, uint32_t *restrict rows,
                          size_t *restrict n_rows, const float *restrict dout,
                          const uint64_t *restrict off, const uint32_t *restrict ids, size_t B,
                          size_t D);

/* ---- 3x3 convolution, stride 1, zero padding 1, NHWC ----------------------------------- */
/* col (B*H*W, 9*C) = im2col of inp (B,H,W,C); column index (ky*3+kx)*C + c. */
void moeh_im2col3x3(float *restrict col, const float *restrict inp, size_t B, size_t H, size_t W,
                    size_t C);
/* dinp (B,H,W,C) += col2im of dcol (B*H*W, 9*C). */
void moeh_col2im3x3_add(float *restrict dinp, const float *restrict dcol, size_t B, size_t H,
                        size_t W, size_t C);
/* out (B,H,W,OC) = conv(inp) + b; w (OC,3,3,C), b (OC) or NULL. col (B*H*W,9C) is filled
 * (workspace, kept for the backward pass). */
void moeh_conv3x3_forward(float *restrict out, float *restrict col, const float *restrict inp,
                          const float *restrict w, const float *restrict b, size_t B, size_t H,
                          size_t W, size_t C, size_t OC);
/* dw (OC,9C) += dout^T @ col; db (OC) += sums; if dinp is non-NULL, dcol (B*H*W,9C) scratch is
 * set to dout @ w and folded into dinp (B,H,W,C). */
void moeh_conv3x3_backward(float *restrict dinp, float *restrict dcol, float *restrict dw,
                           float *restrict db, const float *restrict dout,
                           const float *restrict col, const float *restrict w, size_t B, size_t H,
                           size_t W, size_t C, size_t OC);

/* ---- direct 3x3 convolution (no im2col), NHWC, AVX-512 -------------------------------- *
 * The same convolution as above without the 9x column matrix: each output pixel block keeps its
 * OC accumulators in registers and reads a zero-padded copy of one input image. Used when
 * moeh_conv3x3_direct_ok(): an x86-64 CPU with AVX-512F (checked at run time) and OC a multiple
 * of 16 (OC <= 64); the im2col + sgemm kernels above stay the portable path and the reference. */
int moeh_conv3x3_direct_ok(size_t OC);
/* Floats of the padded-image scratch the direct kernels need: (H+2)*(W+2)*C. */
size_t moeh_conv3x3_pad_len(size_t H, size_t W, size_t C);
/* wt (9,C,OC) = w (OC,9,C) transposed: the forward kernel's weight layout. */
void moeh_conv3x3_wt_fwd(float *restrict wt, const float *restrict w, size_t C, size_t OC);
/* wt (9,OC,C) = w (OC,9,C) with the taps flipped: convolving dout (B,H,W,OC) with it gives
 * dinp (the backward-data convolution, output channels C). */
void moeh_conv3x3_wt_bwd(float *restrict wt, const float *restrict w, size_t C, size_t OC);
/* out (B,H,W,OC) = (acc ? out : b, or 0 if b is NULL) + conv(inp (B,H,W,C)) with wt (9,C,OC)
 * from moeh_conv3x3_wt_fwd (or, for the data gradient, wt_bwd with C and OC swapped).
 * pad: moeh_conv3x3_pad_len(H, W, C) floats of scratch. Requires moeh_conv3x3_direct_ok(OC). */
void moeh_conv3x3_direct(float *restrict out, float *restrict pad, const float *restrict inp,
                         const float *restrict wt, const float *restrict b, size_t B, size_t H,
                         size_t W, size_t C, size_t OC, int acc);
/* pl (B,H/2,W/2,OC) = relu(maxpool2(conv(inp) + b)) with arg as moeh_maxpool2_forward, one
 * pair of conv rows at a time (rows: 2 * W * OC floats of scratch), so the full-resolution
 * conv output is never written. H and W even; other requirements as moeh_conv3x3_direct. */
void moeh_conv3x3_pool_relu_direct(float *restrict pl, uint8_t *restrict arg, float *restrict rows,
                                   float *restrict pad, const float *restrict inp,
                                   const float *restrict wt, const float *restrict b, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC);
/* dw (OC,9,C) += dout (B,H,W,OC) correlated with the neighbourhoods of inp (B,H,W,C);
 * db (OC) += sums of dout (db may be NULL). All of dw in registers when 9 * C * OC / 16 <= 18
 * (the 1-channel first layer, where an sgemm with K = 9 is slow), else by groups of 4 or 8
 * channels of one tap (C a multiple of 4). Scratch: pad as above, dwt 9 * C * OC floats.
 * Requires moeh_conv3x3_direct_dw_ok(C, OC). */
void moeh_conv3x3_direct_dw(float *restrict dw, float *restrict db, float *restrict pad,
                            float *restrict dwt, const float *restrict dout,
                            const float *restrict inp, size_t B, size_t H, size_t W, size_t C,
                            size_t OC);
/* True when moeh_conv3x3_direct_dw supports (C, OC). */
int moeh_conv3x3_direct_dw_ok(size_t C, size_t OC);
/* As moeh_conv3x3_direct_dw with dout given as the gradient of a following 2x2 max pool: dout
 * = dpl (B,H/2,W/2,OC) routed by arg (moeh_maxpool2_forward's), built on the fly instead of
 * written out at full resolution. H and W even; for the register case only (see _ok). */
void moeh_conv3x3_direct_dw_pooled(float *restrict dw, float *restrict db, float *restrict pad,
                                   float *restrict dwt, const float *restrict dpl,
                                   const uint8_t *restrict arg, const float *restrict inp, size_t B,
                                   size_t H, size_t W, size_t C, size_t OC);
int moeh_conv3x3_direct_dw_pooled_ok(size_t C, size_t OC);

/* ---- pooling (NHWC) -------------------------------------------------------------------- */
/* out (B,H/2,W/2,C) = max over 2x2 windows (H, W even); arg (same shape) keeps the window
 * position 0..3 of the maximum (first one on ties). */
void moeh_maxpool2_forward(float *restrict out, uint8_t *restrict arg, const float *restrict inp,
                           size_t B, size_t H, size_t W, size_t C);
/* dinp (B,H,W,C) += dout routed to the argmax. */
void moeh_maxpool2_backward(float *restrict dinp, const float *restrict dout,
                            const uint8_t *restrict arg, size_t B, size_t H, size_t W, size_t C);
/* dinp (B,H,W,C) = dout routed to the argmax, 0 elsewhere (*sets*, so no zeroing pass). */
void moeh_maxpool2_backward_set(float *restrict dinp, const float *restrict dout,
                                const uint8_t *restrict arg, size_t B, size_t H, size_t W,
                                size_t C);
/* out (B,C) = mean over H*W of inp (B,HW,C). */
void moeh_gap_forward(float *restrict out, const float *restrict inp, size_t B, size_t HW,
                      size_t C);
/* dinp (B,HW,C) += dout / HW. */
void moeh_gap_backward(float *restrict dinp, const float *restrict dout, size_t B, size_t HW,
                       size_t C);

/* ---- gate ------------------------------------------------------------------------------ */
/* probs (B,K) = softmax(logits / temp). If 0 < top_k < K, the top_k largest (lowest index on
 * ties) are selected and w (B,K) = probs renormalised over them (0 elsewhere); otherwise
 * w = probs and every expert is selected. sel (B,K) is 0/1. */
void moeh_gate_forward(float *restrict w, float *restrict probs, uint8_t *restrict sel,
                       const float *restrict logits, size_t B, size_t K, size_t top_k, float temp);
/* dlogits (B,K) += gradient through w (from dw, may be NULL) and through probs (from dprobs,
 * may be NULL). */
void moeh_gate_backward(float *restrict dlogits, const float *restrict dw,
                        const float *restrict dprobs, const float *restrict w,
                        const float *restrict probs, const uint8_t *restrict sel, size_t B,
                        size_t K, float temp);
/* Switch-style load balance: L = K * sum_k f_k P_k, f_k = share of the (row, selected expert)
 * assignments that went to k (not differentiated; a row that selects every expert, i.e. a
 * dense gate, counts its top-1 expert, as in the Switch Transformer: with f_k = 1/K the loss
 * would be constant), P_k = mean_b probs[b,k]. Returns
 * scale * L and adds scale * dL/dprobs into dprobs (B,K) if non-NULL. L = 1 when balanced. */
double moeh_load_balance(float *restrict dprobs, const float *restrict probs,
                         const uint8_t *restrict sel, size_t B, size_t K, float scale);

#endif
