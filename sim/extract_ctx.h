/* extract_ctx.h - private to the cohort extraction (extract.c, extract_streams.c): the context
 * the passes share and the small helpers both use. Not installed, not for other callers. */
#ifndef MOEH_EXTRACT_CTX_H
#define MOEH_EXTRACT_CTX_H

#include "i64map.h"
#include "moeh_csv.h"
#include "moeh_extract.h"
#include "moeh_progress.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define HOUR 3600
#define WINDOW (MOEH_DS_T * HOUR)
#define MAX_REPORTED 20

typedef struct {
    int64_t subject, hadm, admit, disch, death, t0;
    int32_t admit_year, type, ins, race, unit;
    int8_t expire, icu;
} adm_t;

typedef struct {
    int32_t anchor_age, anchor_year;
    int8_t female;
} pat_t;

/* Precomputed vectors of one modality (extract_embed.c): X.npy (K,D) <f4 and X.ids.txt, one id
 * per line; ids found by the xxh64 of their text (a hit is confirmed by comparing the text). */
typedef struct {
    const char *path; /* X.npy as given, NULL: no vectors for this modality */
    char ids_path[PATH_MAX];
    size_t K, D;
    float *vec;        /* (K,D) */
    char *text;        /* the ids file, ids NUL-terminated in place */
    char **ids;        /* K pointers into text */
    uint8_t *used;     /* K: matched an item of the cohort */
    moeh_i64map_t map; /* id hash -> row */
    uint32_t *cnt;     /* per cohort row: vectors summed into the dataset's row */
    size_t missing;    /* cohort items without a vector */
    char first_missing[5][112];
    cJSON *info; /* the dataset's "embeddings" member for this modality */
} emb_t;

typedef struct {
    const moeh_extract_opts_t *o;
    moeh_extract_stats_t *st;
    moeh_varmap_t vm;
    pat_t *pats;
    moeh_i64map_t pat_map, adm_map, cohort_hadm, cohort_subj;
    adm_t *adms;
    size_t n_adms;
    int32_t *cohort; /* adms index per cohort row */
    size_t n;
    float *sum; /* hourly sums: the dataset's ts_value, turned into means in place */
    uint16_t *cnt;
    int32_t *lut_chart, *lut_lab; /* itemid -> varmap row or -1 */
    size_t lut_chart_n, lut_lab_n;
    moeh_dataset_t *ds;
    emb_t emb[2]; /* note vectors, X-ray vectors (extract_embed.c) */
} ctx_t;

static inline int path2(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s/%s", a, b);
    return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

static inline bool file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Handles a malformed row: reports it (the first MAX_REPORTED) and returns 0 to skip, or the
 * error if --strict. */
static inline int malformed(ctx_t *c, int rc, moeh_err_t *e, moeh_err_t *err)
{
    c->st->malformed++;
    if (c->o->strict) {
        *err = *e;
        return rc;
    }
    if (c->st->malformed <= MAX_REPORTED) MOEH_WARN("skipping malformed row: %s", e->msg);
    if (c->st->malformed == MAX_REPORTED)
        MOEH_WARN("(further malformed rows are counted, not shown)");
    return 0;
}

/* Required columns by name into idx[]. */
static inline int cols(moeh_csv_t *r, const char *const *names, int *idx, size_t n, moeh_err_t *err)
{
    for (size_t i = 0; i < n; i++)
        if ((idx[i] = moeh_csv_require_col(r, names[i], err)) < 0) return idx[i];
    return 0;
}

/* A meter over one source table (moeh_progress.h): compressed bytes taken in of its file size,
 * labelled with the last two parts of its path ("hosp/labevents.csv.gz"). table_tick every few
 * thousand rows; table_done logs the summary line with the rows and uncompressed bytes. */
static inline void table_begin(moeh_progress_t *m, const moeh_csv_t *r)
{
    const char *path = moeh_csv_path(r), *a = strrchr(path, '/'), *b = a;
    while (b && b > path && b[-1] != '/')
        b--;
    moeh_progress_begin(m, b ? b : path, moeh_csv_file_size(r), MOEH_PROGRESS_BYTES);
}

static inline void table_tick(moeh_progress_t *m, const moeh_csv_t *r)
{
    moeh_progress_update(m, moeh_csv_raw_bytes(r));
}

static inline void table_done(moeh_progress_t *m, const moeh_csv_t *r, uint64_t rows)
{
    char note[96], raw[48];
    moeh_progress_update(m, moeh_csv_raw_bytes(r));
    moeh_progress_fmt_amount(raw, sizeof raw, (double)moeh_csv_bytes(r), MOEH_PROGRESS_BYTES);
    snprintf(note, sizeof note, "%llu rows, %s uncompressed", (unsigned long long)rows, raw);
    moeh_progress_end(m, note);
}

/* The next row of table r (meter m): 1 a row, 0 the end, or a negative code (the reader's
 * message in e, or with --strict malformed()'s in err). A row the reader refuses as malformed
 * is reported and skipped (malformed()). *rows counts every row read, refused ones too, and the
 * meter moves every 4096; rows NULL: the caller counts (and moves the meter) itself. */
static inline int table_next(ctx_t *c, moeh_csv_t *r, moeh_progress_t *m, uint64_t *rows,
                             moeh_err_t *e, moeh_err_t *err)
{
    for (;;) {
        int rc = moeh_csv_next(r, e);
        if (rc != 0 && rows && (++*rows & 0xfff) == 0) table_tick(m, r);
        if (rc != -EBADMSG) return rc;
        if ((rc = malformed(c, rc, e, err))) return rc;
    }
}

/* Passes 2 and 3 (extract_streams.c) over the cohort of pass 1 (c->ds created, c->cohort and
 * the maps filled): the hourly series from chartevents and labevents, then the notes and the
 * chest X-rays where their directories are given. 0 or a negative code (message in err);
 * what it allocates hangs off c and is freed with it. */
int moeh_extract_streams(ctx_t *c, moeh_err_t *err) MOEH_WUR;

/* ---- precomputed vectors (extract_embed.c); k = 0 notes, 1 X-rays ----------------------------
 * emb_load: reads and checks c->emb[k] (X.npy + X.ids.txt, + X.json if present), before the
 * long passes so that a bad file fails fast. emb_attach: adds zeroed vectors to c->ds (after the
 * cohort is built). emb_add: sums the vector of item id (len bytes) into cohort row j, or
 * records it as missing (what names the item, e.g. "note_id"). emb_finish: refuses missing
 * vectors, warns about (or, --strict, refuses) vectors that matched nothing, and turns sums into
 * means. emb_free releases everything (NULL-safe). 0 or a negative code with err. */
int emb_load(ctx_t *c, int k, moeh_err_t *err) MOEH_WUR;
int emb_attach(ctx_t *c, int k, moeh_err_t *err) MOEH_WUR;
void emb_add(ctx_t *c, int k, size_t j, const char *id, size_t len, const char *what);
int emb_finish(ctx_t *c, int k, moeh_err_t *err) MOEH_WUR;
void emb_free(emb_t *e);

#endif
