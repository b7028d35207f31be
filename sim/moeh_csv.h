/* moeh_csv.h - streaming reader for (gzip-compressed) CSV files as MIMIC-IV publishes them.
 *
 * RFC 4180 CSV: fields separated by ',', rows by '\n' (a '\r' before it is dropped), a field
 * may be quoted with '"' and then contain ',', '\n' and '""' (an escaped quote). The first
 * row is the header. Input ending in ".gz" is inflated on the fly (multi-member gzip is
 * fine); anything else is read as is. Memory is one input buffer (grows only for rows longer
 * than it) plus a scratch buffer for unescaped quoted fields, independent of the file size.
 *
 * Errors carry "file:line:column" where line is the 1-based physical line on which the row
 * starts and column the 1-based field number (header name in parentheses when known).
 * A reader is used by one thread at a time; a gzip reader runs its own inflate thread
 * (joined by moeh_csv_destroy). */
#ifndef MOEH_CSV_H
#define MOEH_CSV_H

#include "moeh_common.h"

#include <stdbool.h>

typedef struct moeh_csv moeh_csv_t;

/* A view into the reader's buffers, valid until the next moeh_csv_next(). Not NUL-terminated. */
typedef struct {
    const char *p;
    size_t len;
} moeh_csv_field_t;

/* Opens path and reads its header row. 0, -ENOENT (file missing), -EBADMSG (no header, bad
 * gzip) or -ENOMEM; message in err. On success the caller owns *out: moeh_csv_destroy(&r). */
int moeh_csv_open(const char *path, moeh_csv_t **out, moeh_err_t *err) MOEH_WUR;
/* The same over an in-memory CSV text (copied; name is used in messages). */
int moeh_csv_open_mem(const char *name, const char *data, size_t len, moeh_csv_t **out,
                      moeh_err_t *err) MOEH_WUR;
void moeh_csv_destroy(moeh_csv_t **self_p); /* NULL-safe, sets *self_p = NULL */

/* Reads the next row. Returns 1 with a row, 0 at end of file, -EBADMSG for a malformed row
 * (wrong number of fields, bad quoting; the row is consumed, so the caller may log err and
 * carry on), -EIO for a read or inflate error (fatal). */
int moeh_csv_next(moeh_csv_t *r, moeh_err_t *err) MOEH_WUR;

/* Header: number of columns, and the index of a column by exact name (-1 if absent). */
size_t moeh_csv_ncols(const moeh_csv_t *r);
int moeh_csv_col(const moeh_csv_t *r, const char *name) MOEH_WUR;
/* Index of a required column, or -EBADMSG with "file: no column 'name'" in err. */
int moeh_csv_require_col(const moeh_csv_t *r, const char *name, moeh_err_t *err) MOEH_WUR;

/* The i-th field of the current row (i < ncols). */
moeh_csv_field_t moeh_csv_field(const moeh_csv_t *r, size_t i);

/* Line on which the current row starts (1-based; the header is line 1), and the path. */
uint64_t moeh_csv_line(const moeh_csv_t *r);
const char *moeh_csv_path(const moeh_csv_t *r);
/* Uncompressed bytes consumed so far, and the compressed file size (0 if unknown). */
uint64_t moeh_csv_bytes(const moeh_csv_t *r);
uint64_t moeh_csv_file_size(const moeh_csv_t *r);
/* Bytes of the file taken in so far: of a gzip file the compressed bytes behind the inflated
 * bytes handed to the parser (interpolated within a 4 MiB block), else the bytes read. Reaches
 * moeh_csv_file_size() at the end of the file; for a progress meter. */
uint64_t moeh_csv_raw_bytes(const moeh_csv_t *r);

/* Formats "file:line:column (name): <msg>" for field col of the current row into err and
 * returns -EBADMSG. */
int moeh_csv_field_error(const moeh_csv_t *r, size_t col, moeh_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- field parsers: 0 on success, -EBADMSG if the text is not of that type. An empty field
 * gives -ENODATA (a missing value is not an error of syntax). ---------------------------- */
int moeh_csv_parse_i64(moeh_csv_field_t f, int64_t *out) MOEH_WUR;
int moeh_csv_parse_f64(moeh_csv_field_t f, double *out) MOEH_WUR;
/* "YYYY-MM-DD HH:MM:SS[.fff]" or "YYYY-MM-DD" -> seconds since 1970-01-01 (proleptic
 * Gregorian, no time zone: MIMIC's shifted dates are just arithmetic). */
int moeh_csv_parse_time(moeh_csv_field_t f, int64_t *out) MOEH_WUR;
/* Days from 1970-01-01 to the civil date y-m-d (any year). */
int64_t moeh_days_from_civil(int64_t y, unsigned m, unsigned d);
/* Copies the field into out (cap bytes incl. NUL), truncating; returns out. */
char *moeh_csv_copy(moeh_csv_field_t f, char *out, size_t cap);
/* True if the field equals s exactly. */
bool moeh_csv_eq(moeh_csv_field_t f, const char *s);

#endif
