/* ckpt_craft.h - hostile coordinator checkpoints with a valid xxhash, shared by the test of the
 * loader (test_badfiles_ckpt.c) and of the real moeh-coordinator --resume
 * (test_badfiles_proc.c): the writer, laid out exactly as moeh_ckpt_save lays a checkpoint
 * out, and the table of crafted contents with the refusal each must get. Header-only. */
#ifndef MOEH_TESTS_CKPT_CRAFT_H
#define MOEH_TESTS_CKPT_CRAFT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* The header JSON of a checkpoint of 2 parameters in 1 group, with 2 normalisation numbers and
 * the 4 numbers of data_shape; %s is the round, written as given (it may be 1e300). */
#define MOEH_TEST_CKPT_HDR                                                                         \
    "{\"round\":%s,\"model_version\":3,\"spec_hash\":\"1\",\"n_params\":2,\"n_groups\":1,"         \
    "\"arrays\":[{\"name\":\"params\",\"count\":2},{\"name\":\"norm\",\"count\":2},"               \
    "{\"name\":\"data_shape\",\"count\":4}]}"

/* Writes the checkpoint file at path: the header MOEH_TEST_CKPT_HDR for round, then the 8
 * floats d (params, norm mean and std, data_shape), the hash recomputed so that only the field
 * checks can refuse it. 0 or -1. */
static inline int moeh_test_craft_ckpt(const char *path, const char *round, const float d[8])
{
    char hdr[512];
    if (snprintf(hdr, sizeof hdr, MOEH_TEST_CKPT_HDR, round) >= (int)sizeof hdr) return -1;
    uint32_t version = 1, hlen = (uint32_t)strlen(hdr);
    size_t body = 16 + hlen + 8 * sizeof(float);
    unsigned char *buf = malloc(body + 8);
    if (!buf) return -1;
    memcpy(buf, "MOEHCKPT", 8);
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &hlen, 4);
    memcpy(buf + 16, hdr, hlen);
    memcpy(buf + 16 + hlen, d, 8 * sizeof(float));
    uint64_t h = XXH64(buf, body, 0);
    memcpy(buf + body, &h, 8);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(buf, 1, body + 8, f) == body + 8;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

typedef struct {
    const char *name, *round; /* a name for the case; the header's round as written */
    float d[8];               /* params (2), norm mean and std (2), data_shape (4) */
    const char *want;         /* what the refusal must say (beside the file's path) */
} moeh_test_bad_ckpt_t;

/* An honest checkpoint's 8 floats are {0.5, -1, 0, 1, 3, 2, 4, 0} with round "7"; each case
 * below changes one value. */
static const moeh_test_bad_ckpt_t moeh_test_bad_ckpts[] = {
    {"shape", "7", {0.5f, -1, 0, 1, 1e10f, 2, 4, 0}, "data_shape n_static is 1e+10"},
    {"round", "1e300", {0.5f, -1, 0, 1, 3, 2, 4, 0}, "header field 'round' is 1e+300"},
    {"round-frac", "2.5", {0.5f, -1, 0, 1, 3, 2, 4, 0}, "'round' is 2.5"},
    {"round-big", "4294967296", {0.5f, -1, 0, 1, 3, 2, 4, 0}, "'round'"},
    {"nan", "7", {NAN, -1, 0, 1, 3, 2, 4, 0}, "array 'params' element 0 is nan"},
    {"inf", "7", {0, INFINITY, 0, 1, 3, 2, 4, 0}, "array 'params' element 1 is inf"},
    {"std", "7", {0.5f, -1, 0, -2, 3, 2, 4, 0}, "'norm' standard deviation 0 is -2"},
    {"std0", "7", {0.5f, -1, 0, 0, 3, 2, 4, 0}, "'norm' standard deviation 0 is 0"},
    {"shape-frac", "7", {0.5f, -1, 0, 1, 3, 2.5f, 4, 0}, "data_shape n_vars is 2.5"},
};

#endif
