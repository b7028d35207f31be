/* quant.c - fixed-point encoding of updates (see moeh_quant.h). */
#include "moeh_quant.h"

#include <math.h>

double moeh_quant_scale(double clip, double w_total)
{
    return 2147483647.0 / (clip * w_total);
}

void moeh_quant_encode(uint32_t *restrict out, const float *restrict delta, size_t n, float clip,
                       double w, double scale)
{
    double k = scale * w;
    for (size_t i = 0; i < n; i++) {
        float d = delta[i];
        if (d != d) d = 0.0f;
        d = d > clip ? clip : d < -clip ? -clip : d;
        out[i] = (uint32_t)(int32_t)lrint(k * (double)d);
    }
}
