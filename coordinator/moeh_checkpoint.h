/* moeh_checkpoint.h - the coordinator's durable state, written atomically after every round
 * (temp file, fsync, rename, fsync of the directory) and read back by --resume.
 *
 * File layout (little-endian):
 *   "MOEHCKPT"  u32 version (1)  u32 header length H
 *   H bytes of JSON: round, model_version, spec_hash (hex), n_params, n_groups and the
 *     arrays that follow (name, count)
 *   the arrays, float32 each, in the order listed
 *   u64 xxhash64 of everything before it
 * Loading checks the magic, version, sizes, checksum and that the JSON agrees with the array
 * bytes, and says what is wrong; then field by field, naming the file: round, model_version,
 * n_params, n_groups whole numbers in range (a round of 1e300 is refused, not wrapped), every
 * float finite, "data_shape" within the limits a site may declare (checked before any model is
 * built from it) and the standard deviations of "norm" positive. */
#ifndef MOEH_CHECKPOINT_H
#define MOEH_CHECKPOINT_H

#include "moeh_common.h"

#define MOEH_CKPT_MAX_ARRAYS 8
#define MOEH_CKPT_MAX_PARAMS (1u << 28) /* per array, as proto's MOEH_MAX_PARAMS */

typedef struct {
    uint32_t round; /* last completed round */
    uint64_t model_version;
    uint64_t spec_hash;
    size_t n_params, n_groups;
    size_t n_arrays;
    char names[MOEH_CKPT_MAX_ARRAYS][32];
    size_t counts[MOEH_CKPT_MAX_ARRAYS];
    float *arrays[MOEH_CKPT_MAX_ARRAYS]; /* borrowed when saving, malloc'd (caller frees) when
                                            loading */
} moeh_ckpt_t;

int moeh_ckpt_save(const char *path, const moeh_ckpt_t *c, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* On success *c owns its arrays: moeh_ckpt_free(c). */
int moeh_ckpt_load(const char *path, moeh_ckpt_t *c, moeh_err_t *err)
    __attribute__((warn_unused_result));
void moeh_ckpt_free(moeh_ckpt_t *c);
/* Removes the temporary files (PATH.tmp.<pid>) that writes killed before their rename left
 * next to path, each logged; one whose pid is a live process other than this one is left (and
 * warned about). *removed counts them. 0 or a negative errno with err set. */
int moeh_ckpt_remove_stale(const char *path, size_t *removed, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* The array with that name and count, or NULL. */
float *moeh_ckpt_array(const moeh_ckpt_t *c, const char *name, size_t count);

#endif
