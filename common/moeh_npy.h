/* moeh_npy.h - reading and writing NumPy .npy files (format 1.0/2.0, little-endian, C order).
 *
 * The dataset on disk is a directory of .npy arrays so that it opens in numpy as is.
 * Readers validate magic, header, dtype, shape and the file size, and say what is wrong. */
#ifndef MOEH_NPY_H
#define MOEH_NPY_H

#include "moeh_common.h"

#define MOEH_NPY_MAX_DIMS 4

typedef enum {
    MOEH_DT_F32 = 0, /* '<f4' */
    MOEH_DT_U8,      /* '|u1' */
    MOEH_DT_I32,     /* '<i4' */
    MOEH_DT_I64,     /* '<i8' */
    MOEH_DT_COUNT
} moeh_dtype_t;

size_t moeh_dtype_size(moeh_dtype_t dt);
const char *moeh_dtype_name(moeh_dtype_t dt); /* numpy descr, e.g. "<f4" */

typedef struct {
    moeh_dtype_t dtype;
    size_t ndim;
    size_t shape[MOEH_NPY_MAX_DIMS];
    void *data; /* malloc'd, owned by the array; moeh_npy_free() releases it */
} moeh_npy_t;

size_t moeh_npy_numel(const moeh_npy_t *a);

/* Writes data (numel from shape, C order) as path, atomically. */
int moeh_npy_write(const char *path, moeh_dtype_t dt, size_t ndim, const size_t *shape,
                   const void *data, moeh_err_t *err) MOEH_WUR;

/* Reads path into *out (caller frees with moeh_npy_free). If want_dtype >= 0 the dtype must
 * match; if want_ndim > 0 the rank must match. Errors name the file and what differs. */
int moeh_npy_read(const char *path, int want_dtype, size_t want_ndim, moeh_npy_t *out,
                  moeh_err_t *err) MOEH_WUR;
void moeh_npy_free(moeh_npy_t *a);
/* The same validation on bytes in memory; path only names the source in messages. */
int moeh_npy_parse(const void *data, size_t len, const char *path, int want_dtype, size_t want_ndim,
                   moeh_npy_t *out, moeh_err_t *err) MOEH_WUR;

/* A read-only memory map of a .npy file: data points into the mapping (page-aligned file,
 * data at the header offset, which numpy pads to a multiple of 64 bytes). */
typedef struct {
    moeh_dtype_t dtype;
    size_t ndim;
    size_t shape[MOEH_NPY_MAX_DIMS];
    const void *data;
    size_t nbytes; /* numel * dtype size */
    void *map;     /* the whole mapping; owned, released by moeh_npy_unmap() */
    size_t map_len;
} moeh_npy_map_t;

/* Maps path read-only and checks it as moeh_npy_read() does (same errors). The caller
 * releases it with moeh_npy_unmap() (NULL-safe, idempotent). */
int moeh_npy_map(const char *path, int want_dtype, size_t want_ndim, moeh_npy_map_t *out,
                 moeh_err_t *err) MOEH_WUR;
void moeh_npy_unmap(moeh_npy_map_t *m);

#endif
