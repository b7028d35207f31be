/* moeh_dataset.h - the dataset on disk (DESIGN §3.2; the full format is in docs/data.md).
 *
 * A dataset is a directory of NumPy .npy arrays plus meta.json. N admissions, T = 48 hourly
 * steps, F time-series variables, F_s static features, S x S images, MOEH_N_TASKS = 3 tasks and
 * MOEH_N_MODS = 3 modalities (names and order from moeh_schema.h):
 *
 *   ids.npy          (N,2)     <i8  subject_id, hadm_id (rows sorted by subject, then hadm)
 *   static.npy       (N,F_s)   <f4  raw static features (names in meta.json)
 *   ts_value.npy     (N,T,F)   <f4  hourly mean in raw units, forward-filled; NaN before the
 *                                   first observation (the federation fills with global means)
 *   ts_mask.npy      (N,T,F)   <f4  1 if observed in that hour, else 0
 *   ts_delta.npy     (N,T,F)   <f4  hours since the last observation (t + 1 if none yet)
 *   labels.npy       (N,3)     <f4  mortality, los7, readmit30 (0/1; 0 where masked)
 *   label_mask.npy   (N,3)     |u1  1 if the label is defined
 *   avail.npy        (N,3)     |u1  ehr, notes, img present
 *   note_offsets.npy (N+1,)    <i8  CSR row pointers into note_tokens; [0] = 0, [N] = n_tok
 *   note_tokens.npy  (n_tok,)  <i4  hashed token ids in [0, 2^31): xxh64(token) & 0x7fffffff
 *   images.npy       (N,S,S)   |u1  grayscale, 0 where avail[:,2] = 0
 *   split.npy        (N,)      |u1  0 train, 1 val, 2 test
 * and, optionally (embeddings the site computed; docs/data.md section 5.1):
 *   note_vec.npy     (N,Dn)    <f4  the mean of the admission's note vectors; 0 where
 *                                   avail[:,1] = 0
 *   img_vec.npy      (N,Di)    <f4  the mean of the admission's X-ray vectors; 0 where
 *                                   avail[:,2] = 0
 *
 * meta.json: {"schema": "moeh-dataset", "schema_version": 1, "n", "t", "image_size",
 * "tasks" (moeh_task_names), "modalities" (moeh_mod_names), "static_features": [names],
 * "ts_features": [{"name","unit"}], "arrays": {name: {"file", "dtype", "shape", "xxh64"}}, plus
 * free-form members given by the writer (variable map, cohort counts, source). xxh64 is of the
 * array's data bytes (not the .npy header), seed 0, as 16 lower-case hex digits. With vectors,
 * "embeddings": {"notes" | "img": {"dim", "source", "model", ...}} describes each (an object
 * per vector array, "dim" equal to its width; the other members come from the writer). */
#ifndef MOEH_DATASET_H
#define MOEH_DATASET_H

#include "moeh_common.h"
#include "moeh_schema.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

#define MOEH_DS_T 48
#define MOEH_DS_SCHEMA_VERSION 1

enum { MOEH_SPLIT_TRAIN = 0, MOEH_SPLIT_VAL = 1, MOEH_SPLIT_TEST = 2 };

typedef struct moeh_ds_store moeh_ds_store_t; /* private: owned or mapped storage */

/* All arrays in C order, shapes as in the table above. Whether they are malloc'd (a dataset
 * being built) or mapped read-only (an opened dataset) is private: never free them. */
typedef struct {
    size_t n, f_static, f_ts, t, img_size, n_tokens;
    int64_t *ids;
    float *static_x, *ts_value, *ts_mask, *ts_delta, *labels;
    uint8_t *label_mask, *avail, *images, *split;
    int64_t *note_offsets;
    int32_t *note_tokens;
    size_t note_dim, img_dim;  /* widths of the optional vectors; 0 = absent (pointer NULL) */
    float *note_vec, *img_vec; /* (n,note_dim), (n,img_dim) */
    char **static_names;       /* f_static strings */
    char **ts_names;           /* f_ts strings */
    char **ts_units;           /* f_ts strings */
    cJSON *extra;              /* extra meta.json members (object, may be NULL); owned */
    moeh_ds_store_t *store;
} moeh_dataset_t;

/* Allocates a zeroed, writable dataset (note_tokens empty; names NULL for the caller to set
 * with strdup). 0 or -ENOMEM. The caller owns *out: moeh_dataset_destroy(&ds). */
int moeh_dataset_create(size_t n, size_t f_static, size_t f_ts, size_t img_size,
                        moeh_dataset_t **out, moeh_err_t *err) MOEH_WUR;
/* Replaces the token array of a writable dataset by a copy of tok (n_tok entries); the offsets
 * must be set by the caller. 0 or -ENOMEM. */
int moeh_dataset_set_tokens(moeh_dataset_t *ds, const int32_t *tok, size_t n_tok,
                            moeh_err_t *err) MOEH_WUR;
/* Adds zeroed precomputed vectors of width dim (1..65536) for modality mod (MOEH_MOD_NOTES or
 * MOEH_MOD_IMG) to a writable dataset, replacing any; info (may be NULL) is copied as the
 * modality's member of meta.json "embeddings" ("dim" is set here). 0, -EINVAL or -ENOMEM. */
int moeh_dataset_add_vectors(moeh_dataset_t *ds, int mod, size_t dim, const cJSON *info,
                             moeh_err_t *err) MOEH_WUR;

/* Sets ds->static_names/ts_names/ts_units from arrays of strings (copied); units may be NULL. */
int moeh_dataset_set_names(moeh_dataset_t *ds, const char *const *static_names,
                           const char *const *ts_names, const char *const *ts_units,
                           moeh_err_t *err) MOEH_WUR;

/* Writes ds into dir (created if needed): every array (atomically) and then meta.json, so a
 * directory with a meta.json is complete. 0 or a negative errno code (message in err). */
int moeh_dataset_write(const moeh_dataset_t *ds, const char *dir, moeh_err_t *err) MOEH_WUR;

/* Opens dir read-only: parses meta.json, maps every array and checks its dtype, shape
 * (against n, t, F, S and each other) and xxh64, and the contents that have a domain (masks
 * and flags 0/1, split 0..2, CSR offsets monotone from 0 to n_tok; vectors finite, zero where
 * the modality is absent, width equal to meta.json's "embeddings"). Errors name the array
 * and what is wrong, e.g. "ds/ts_mask.npy: shape (10,48,30), meta.json and ts_value say
 * (10,48,31)". verify_checksums = false skips hashing (for huge datasets, at your risk).
 * meta.json's "tasks" and "modalities" must be moeh_schema.h's names in its order (an error
 * names both lists otherwise).
 * 0, -ENOENT, -EBADMSG or -ENOMEM; the caller owns *out: moeh_dataset_destroy(&ds). */
int moeh_dataset_open(const char *dir, bool verify_checksums, moeh_dataset_t **out,
                      moeh_err_t *err) MOEH_WUR;

/* NULL-safe; frees or unmaps everything and sets *self_p = NULL. */
void moeh_dataset_destroy(moeh_dataset_t **self_p);

/* A new writable dataset holding the rows idx[0..k) of src (in that order); modality m is
 * dropped (avail 0, note emptied, image and vector zeroed) where keep_mods bit m is 0. Names,
 * vectors and extra are copied. 0 or -ENOMEM. */
int moeh_dataset_subset(const moeh_dataset_t *src, const size_t *idx, size_t k, unsigned keep_mods,
                        moeh_dataset_t **out, moeh_err_t *err) MOEH_WUR;

/* Counts of admissions per availability mask: out[c] for c = ehr | notes<<1 | img<<2, i.e.
 * out[0] rows without any modality, out[1 + k] rows of combination k (moeh_combo_of). */
void moeh_dataset_combo_counts(const moeh_dataset_t *ds, size_t out[MOEH_N_COMBOS + 1]);

#endif
