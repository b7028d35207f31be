/* nn_int.h - private to model/nn*.c: the switch for the hand-written AVX-512 kernels shared by
 * the GRU's small matmul (nn_gru.c) and the direct 3x3 convolutions (nn_conv.c). The AVX-512
 * code is compiled with per-function target attributes and entered only after a run-time CPU
 * check (cpu_avx512), so the library still runs on any x86-64 (and builds elsewhere). */
#ifndef MOEH_NN_INT_H
#define MOEH_NN_INT_H

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX512_KERNELS 1
#define AVX512 __attribute__((target("avx512f")))
#define INLINE_AVX512 static inline __attribute__((always_inline, target("avx512f")))
static inline int cpu_avx512(void)
{
    static int has = -1;
    if (has < 0) { /* MOEH_NO_AVX512=1 forces the portable kernels (CI runs both paths) */
        const char *off = getenv("MOEH_NO_AVX512");
        has = __builtin_cpu_supports("avx512f") && !(off && *off && strcmp(off, "0")) ? 1 : 0;
    }
    return has;
}
#endif

#endif
