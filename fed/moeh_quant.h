/* moeh_quant.h - the fixed-point arithmetic of updates (docs/architecture.md, messages).
 *
 * A site sends, per parameter i of group g, q_i = round(S * w_g * clip(d_i, C)) as a two's
 * complement 32-bit word, and w_g itself; the coordinator adds words mod 2^32. With
 * S = (2^31 - 1) / (C * W), W >= the sum of all weights in the round, the true sum
 * sum_s q_si lies in (-2^31, 2^31), so the wrapped sum decodes exactly as a signed value:
 * no overflow whatever the order, and the result does not depend on arrival order at all.
 * One site's delta is resolved to C W / (w (2^31 - 1)). */
#ifndef MOEH_QUANT_H
#define MOEH_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* The scale for clip C and total weight bound W (both > 0). */
double moeh_quant_scale(double clip, double w_total);

/* out[i] = round(scale * w * clamp(delta[i], -clip, clip)), as uint32 two's complement.
 * The caller guarantees scale * w * clip < 2^31 and that every delta is finite (a NaN is
 * encoded as 0 rather than left to lrint's undefined result). */
void moeh_quant_encode(uint32_t *restrict out, const float *restrict delta, size_t n, float clip,
                       double w, double scale);

/* The signed value of a (summed) word. */
static inline int32_t moeh_quant_signed(uint32_t x)
{
    return (int32_t)x; /* two's complement on every platform moeh supports (C11 impl.-defined) */
}

#endif
