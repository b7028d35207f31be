/* fuzz_ckpt.c - libFuzzer target for the coordinator's checkpoint reader (--resume) with
 * hash-valid inputs: the fuzzer mutates the header JSON and the array payload, the harness
 * frames them as a checkpoint (magic, version 1, header length) and appends the correct
 * xxhash64, so every input gets past the checksum and reaches the field-by-field validation.
 *   input: header JSON, one NUL byte, then the float32 payload (no NUL: all header, no payload)
 * The file lives in a memfd (/proc/self/fd/N): nothing touches the disk. */
#define _GNU_SOURCE
#include "moeh_checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_ckpt", MFD_CLOEXEC);
        MOEH_ASSERT(fd >= 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    const uint8_t *nul = memchr(data, 0, size);
    uint32_t version = 1, hlen = (uint32_t)(nul ? (size_t)(nul - data) : size);
    size_t payload = nul ? size - hlen - 1 : 0, body = 16 + (size_t)hlen + payload;
    uint8_t *buf = malloc(body + 8);
    MOEH_ASSERT(buf);
    memcpy(buf, "MOEHCKPT", 8);
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &hlen, 4);
    memcpy(buf + 16, data, hlen);
    if (payload) memcpy(buf + 16 + hlen, nul + 1, payload);
    uint64_t h = XXH64(buf, body, 0);
    memcpy(buf + body, &h, 8);
    MOEH_ASSERT(ftruncate(fd, 0) == 0 && pwrite(fd, buf, body + 8, 0) == (ssize_t)(body + 8));
    free(buf);

    moeh_ckpt_t c;
    moeh_err_t err = {0};
    if (moeh_ckpt_load(path, &c, &err) == 0) {
        /* what the loader promises: every float finite, shapes and stds in range */
        for (size_t i = 0; i < c.n_arrays; i++) {
            for (size_t k = 0; k < c.counts[i]; k++)
                MOEH_ASSERT(isfinite(c.arrays[i][k]));
            if (!strcmp(c.names[i], "data_shape"))
                for (size_t k = 0; k < 4; k++)
                    MOEH_ASSERT(c.arrays[i][k] >= 0 && c.arrays[i][k] <= (float)(1u << 20));
            if (!strcmp(c.names[i], "norm"))
                for (size_t k = c.counts[i] / 2; k < c.counts[i]; k++)
                    MOEH_ASSERT(c.arrays[i][k] > 0);
        }
        moeh_ckpt_free(&c);
    } else {
        MOEH_ASSERT(err.msg[0] != '\0');
        MOEH_ASSERT(c.n_arrays == 0);
    }
    return 0;
}
