/* synth_io.h - internal to sim/synth*.c: the buffered gzip table writer (one per MIMIC table,
 * rows formatted straight into a 1 MiB buffer) and a snprintf for paths. */
#ifndef MOEH_SYNTH_IO_H
#define MOEH_SYNTH_IO_H

#include "moeh_common.h"
#include "moeh_synth.h"

#include <limits.h>
#include <zlib.h>

typedef struct {
    gzFile g;
    char *buf;
    size_t len, cap;
    uint64_t rows;
    char path[PATH_MAX];
} tw_t;

/* snprintf for paths: the result is checked by the callers through moeh_mkdir_p/fopen;
 * truncation is reported as an empty string, which those calls reject. */
__attribute__((format(printf, 3, 4))) void synth_pathf(char *out, size_t cap, const char *fmt, ...);
int tw_open(tw_t *w, const char *dir, const char *name, int level, const char *header,
            moeh_err_t *err);
/* Appends one formatted row (rows must be < 64 KiB). */
__attribute__((format(printf, 3, 4))) int tw_row(tw_t *w, moeh_err_t *err, const char *fmt, ...);
int tw_close(tw_t *w, moeh_err_t *err);

/* Writes path (truth.json) from st with cJSON (synth_io.c); het: the heterogeneous profile's
 * extra fields. 0 or a negative errno (err set). */
int synth_write_truth(const char *path, const moeh_synth_opts_t *o, const moeh_synth_stats_t *st,
                      bool het, moeh_err_t *err);

#endif
