/* fuzz_input.h - how a fuzzer's byte string maps onto a multipart message:
 *   byte 0: number of raw frames k (mod MOEH_MAX_FRAMES + 2, so "too many" is reachable)
 *   then k little-endian u16 frame lengths, then the frames, then the header (the rest).
 * Lengths that run past the end are cut. The seed corpus writer uses the same layout. */
#ifndef MOEH_FUZZ_INPUT_H
#define MOEH_FUZZ_INPUT_H

#include "moeh_wire.h"

#include <string.h>

#define FUZZ_MAX_FRAMES (MOEH_MAX_FRAMES + 2)

/* The limits every wire fuzzer and seed uses. */
static const moeh_wire_limits_t k_fuzz_limits = {
    .n_params = 16, .n_groups = 2, .n_tasks = 3, .eval_bins = 8, .n_norm = 4, .n_experts = 7};

typedef struct {
    moeh_iov_t frames[FUZZ_MAX_FRAMES];
    size_t n_frames;
    const uint8_t *hdr;
    size_t hdr_len;
} fuzz_msg_t;

static inline void fuzz_split(const uint8_t *d, size_t n, fuzz_msg_t *m)
{
    memset(m, 0, sizeof *m);
    if (n == 0) return;
    size_t k = d[0] % (FUZZ_MAX_FRAMES + 1), pos = 1;
    size_t lens[FUZZ_MAX_FRAMES];
    for (size_t i = 0; i < k; i++) {
        lens[i] = pos + 2 <= n ? (size_t)(d[pos] | (d[pos + 1] << 8)) : 0;
        pos = pos + 2 <= n ? pos + 2 : n;
    }
    for (size_t i = 0; i < k; i++) {
        size_t l = lens[i] <= n - pos ? lens[i] : n - pos;
        m->frames[i].data = d + pos;
        m->frames[i].len = l;
        pos += l;
    }
    m->n_frames = k;
    m->hdr = d + pos;
    m->hdr_len = n - pos;
}

#endif
