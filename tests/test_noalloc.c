/* test_noalloc.c - the training step allocates nothing: after a warm-up step, forward,
 * backward, predict, zero_grad and the AdamW step of MoE-Health (default widths, small data
 * shapes) must not call malloc/calloc/realloc/aligned_alloc from moeh code. This executable
 * interposes the allocator and counts, while a flag is set, the calls whose return address lies
 * in the executable's own text (where the static moeh libraries are linked); calls made inside
 * shared libraries are reported but not failed (OpenBLAS's small-matrix sgemm kernels malloc a
 * scratch buffer per call, which is outside our control).
 * Skipped under AddressSanitizer, which owns the allocator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moe_synth.h"
#include "moeh_moe.h"

#include <stdio.h>

#if defined(__SANITIZE_ADDRESS__)
#define MOEH_NOALLOC_SKIP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOEH_NOALLOC_SKIP 1
#endif
#endif

#ifndef MOEH_NOALLOC_SKIP
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern char __executable_start, etext;
static volatile int counting;
static volatile size_t n_alloc, n_alloc_libs;

static void count(const void *ret)
{
    if (!counting) return;
    if ((const char *)ret >= &__executable_start && (const char *)ret < &etext)
        n_alloc++;
    else
        n_alloc_libs++;
}

void *malloc(size_t n)
{
    count(__builtin_return_address(0));
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    count(__builtin_return_address(0));
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    count(__builtin_return_address(0));
    return __libc_realloc(p, n);
}
void *aligned_alloc(size_t al, size_t n)
{
    count(__builtin_return_address(0));
    return __libc_memalign(al, n);
}
#endif

static void test_step_allocates_nothing(void **state)
{
#ifdef MOEH_NOALLOC_SKIP
    skip();
#else
    moeh_moe_cfg_t cfg = moeh_moe_defaults(4, 5);
    cfg.n_steps = 12;
    cfg.max_batch = 16;
    cfg.top_k = 2;
    cfg.dropout = 0.1f;
    moeh_moe_t *m = NULL;
    assert_int_equal(moeh_moe_create(&cfg, &m, NULL), 0);
    synth_t s;
    const double pa[3] = {0.8, 0.7, 0.7};
    assert_int_equal(synth_make(&s, &cfg, 32, pa, 1.0, 3), 0);
    moeh_adamw_cfg_t ac = moeh_adamw_defaults();
    ac.clip = 1.0f;
    static float probs[16 * 3];
    double loss;
    for (uint64_t step = 1; step <= 4; step++) {
        moeh_batch_t b = synth_batch(&s, (step % 2) * 16, 16);
        moeh_moe_set_phase(m, step < 3 ? MOEH_PHASE_WARMUP : MOEH_PHASE_JOINT);
        counting = step > 1; /* the first step may warm up the BLAS library */
        int rc = moeh_moe_loss_backward(m, &b, &loss);
        moeh_moe_adamw_step(m, &ac, step);
        rc |= moeh_moe_predict(m, &b, probs);
        moeh_moe_zero_grad(m);
        counting = 0;
        assert_int_equal(rc, 0);
    }
    print_message("allocations during 3 training steps: %zu in moeh code, %zu inside shared "
                  "libraries (OpenBLAS)\n",
                  (size_t)n_alloc, (size_t)n_alloc_libs);
    assert_int_equal(n_alloc, 0);
    synth_free(&s);
    moeh_moe_destroy(&m);
#endif
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_step_allocates_nothing))
