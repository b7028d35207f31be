/* moeh_extract.h - MIMIC-IV cohort extraction (DESIGN §3.1; docs/data.md) and the pieces it
 * shares with the synthetic generator and tests: the variable map, the note tokenizer and
 * the image preprocessing. */
#ifndef MOEH_EXTRACT_H
#define MOEH_EXTRACT_H

#include "moeh_common.h"
#include "moeh_dataset.h"

#include <stdbool.h>

/* ---- variable map (sim/variables.csv, embedded in the binary) ------------------------- */
typedef struct {
    char name[32], table[16], unit[16], label[80];
    int32_t itemid;
    double mul, add, lo, hi;
    int var; /* index of the variable (rows with the same name share it) */
} moeh_varmap_row_t;

typedef struct {
    moeh_varmap_row_t *rows;
    size_t n_rows, n_vars;
    char (*var_names)[32]; /* n_vars */
    char (*var_units)[16];
} moeh_varmap_t;

/* Parses a variable map (CSV text; lines starting with '#' are comments). path_or_null
 * NULL means the map shipped in the binary. 0, -ENOENT or -EBADMSG (file:line:column). */
int moeh_varmap_load(const char *path_or_null, moeh_varmap_t *out, moeh_err_t *err) MOEH_WUR;
void moeh_varmap_free(moeh_varmap_t *m);
/* The shipped map's text (NUL-terminated). */
const char *moeh_varmap_default_text(void);

/* ---- notes ----------------------------------------------------------------------------
 * Tokens are maximal runs of ASCII letters and digits, lower-cased; a token's id is
 * XXH64(token, seed 0) & 0x7fffffff. Appends to *tok (growing it; *cap elements). */
int moeh_tokenize(const char *text, size_t len, int32_t **tok, size_t *n, size_t *cap) MOEH_WUR;
int32_t moeh_token_id(const char *tok, size_t len);

/* ---- images ----------------------------------------------------------------------------
 * Decodes a JPEG or PNG file (by content, not name) to 8-bit grayscale, centre-crops it to a
 * square and box-filters it to S x S into out (S*S bytes). JPEGs are decoded with
 * TurboJPEG's DCT scaling to the smallest size >= S (so a 2500 px X-ray decodes at 1/8),
 * PNGs at full size; both then go through the same crop and box filter.
 * 0, -ENOENT, -EBADMSG (not a decodable JPEG/PNG) or -ENOMEM. */
int moeh_image_load_gray(const char *path, size_t S, uint8_t *out, moeh_err_t *err) MOEH_WUR;
/* The crop + box filter alone: src is (h,w) gray. */
void moeh_image_resize_gray(uint8_t *out, size_t S, const uint8_t *src, size_t w, size_t h);

/* ---- extraction ------------------------------------------------------------------------ */
typedef struct {
    const char *mimic_dir;      /* contains hosp/ and icu/ */
    const char *note_dir;       /* MIMIC-IV-Note root (note/radiology.csv.gz), or NULL */
    const char *cxr_dir;        /* MIMIC-CXR-JPG root (metadata + files/), or NULL */
    const char *var_map;        /* NULL: the shipped map */
    size_t img_size;            /* S, default 64 */
    bool strict;                /* a malformed row is fatal (default: reported and skipped) */
    double val_frac, test_frac; /* subject-grouped split fractions (0.1, 0.2) */
    uint64_t seed;              /* for the split */
    /* Precomputed vectors (docs/data.md section 5.1): X.npy (K,D) <f4 + X.ids.txt (one id per
     * line) [+ X.json, the embedding model's description]. note_emb is keyed by note_id and needs
     * note_dir; cxr_emb by dicom_id and needs cxr_dir (its metadata; the JPEGs are then not
     * decoded). An admission's vector is the mean over its notes (its AP/PA images) in the
     * window; every such note (image) needs a vector. NULL: none. */
    const char *note_emb, *cxr_emb;
} moeh_extract_opts_t;

typedef struct {
    size_t admissions, with_icu, adult, alive_48h, cohort, subjects;
    size_t positives[MOEH_N_TASKS], labelled[MOEH_N_TASKS];
    size_t avail[MOEH_N_MODS];
    uint64_t chart_rows, lab_rows, used_rows, out_of_range, malformed;
    uint64_t event_bytes; /* uncompressed bytes of chartevents + labevents read */
    bool have_vitals, have_labs, have_notes, have_cxr;
    size_t vec_rows[2], vec_unused[2]; /* note / X-ray vectors: admissions with one, unmatched */
} moeh_extract_stats_t;

void moeh_extract_opts_default(moeh_extract_opts_t *o);

/* Builds the cohort and labels of DESIGN §3.1 from the MIMIC-IV tables under o->mimic_dir
 * (+ notes, + CXR) and returns it as a writable dataset (caller frees). A missing event
 * table or modality directory is a warning and an absent modality; the core tables
 * (patients, admissions, icustays) are required. Progress lines go to the log.
 * 0 or a negative errno code with the reason in err. */
int moeh_extract(const moeh_extract_opts_t *o, moeh_dataset_t **out, moeh_extract_stats_t *st,
                 moeh_err_t *err) MOEH_WUR;

/* Assigns a subject-grouped train/val/test split in place: all rows of a subject get the same
 * split, drawn from a hash of (seed, subject_id) so it does not depend on row order. */
void moeh_assign_split(moeh_dataset_t *ds, double val_frac, double test_frac, uint64_t seed);

#endif
