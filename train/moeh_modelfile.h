/* moeh_modelfile.h - the self-describing model file (docs/model-file.md): one safetensors file
 * that holds everything needed to score new admissions and to know what the model is.
 *
 * Layout (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes
 * of JSON header padded with spaces to a multiple of 8, then the raw little-endian data. The
 * header maps each tensor name to {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
 * (offsets into the data, which the tensors tile in order) and "__metadata__" to a map of strings:
 *
 *   every parameter tensor of the model, by its name in model/ (e.g. "gate.fc1.w")
 *   norm.mean, norm.std  (n_static + n_vars,): normalisation of static features, then of
 *                        hourly variables: x -> (x - mean) / std
 *   moeh_format      "moeh-model/1"
 *   format           "pt" (safetensors convention)
 *   moeh_config      the canonical JSON of the model config (moeh_moe_cfg_to_json)
 *   moeh_spec_hash   16 hex digits: moeh_params_spec_hash of the parameter layout
 *   data_shape       JSON {"n_static", "n_vars", "n_steps", "image_size"}
 *   static_features  JSON [name, ...] (n_static), or [] when the writer did not know them
 *   ts_features      JSON [{"name", "unit"}, ...] (n_vars), or []
 *   tasks            JSON [moeh_task_names...]; modalities, combinations likewise
 *   provenance       JSON {"source", "rounds", "selected_round", "sites", "strategy",
 *                    "secure_aggregation", "dp_epsilon" (null: no DP), "git_version"}
 *
 * The reader checks everything before it returns a model: the header bounds, every entry's
 * dtype, shape and offsets (in range, no overlap, no gap), the metadata (format, config,
 * spec hash, data shape, names, tasks), finite values and positive standard deviations. */
#ifndef MOEH_MODELFILE_H
#define MOEH_MODELFILE_H

#include "moeh_dataset.h"
#include "moeh_moe.h"

#define MOEH_MODELFILE_FORMAT "moeh-model/1"

/* Where a model came from; strings may be NULL (written as ""). */
typedef struct {
    const char *source;      /* "federated" or "central" */
    uint32_t rounds;         /* federated rounds or central epochs run */
    uint32_t selected_round; /* the round (epoch) whose parameters these are */
    uint32_t sites;          /* sites that took part (1 for central training) */
    const char *strategy;    /* server strategy (fedavg, ...) or "central" */
    int secagg;              /* secure aggregation on */
    double dp_epsilon;       /* privacy spent (NAN: no DP) */
} moeh_modelfile_prov_t;

/* What the writer knows beside the parameters. mean/std: n_static + n_vars entries each.
 * The name arrays may be NULL (unknown, e.g. a coordinator that never sees a dataset); then
 * the file carries empty lists and readers can compare only counts. */
typedef struct {
    const float *mean, *std;
    const char *const *static_names; /* n_static */
    const char *const *ts_names;     /* n_vars */
    const char *const *ts_units;     /* n_vars; may be NULL with ts_names set */
    moeh_modelfile_prov_t prov;
} moeh_modelfile_info_t;

/* Writes the model m (its config, parameters) and info to path atomically. 0 or a negative
 * code with err (-EINVAL: a non-finite value or std <= 0, named; -ENOMEM; I/O errors). */
int moeh_modelfile_write(const char *path, moeh_moe_t *m, const moeh_modelfile_info_t *info,
                         moeh_err_t *err) MOEH_WUR;

/* A model file read back: the model built from its config with its parameters loaded, the
 * normalisation and the metadata. Owned by the caller (moeh_modelfile_destroy). */
typedef struct {
    moeh_moe_t *model;
    moeh_moe_cfg_t cfg;
    size_t n_norm; /* n_static + n_vars */
    float *mean, *std;
    size_t n_static_names, n_ts_names; /* 0 (unknown) or n_static / n_vars */
    char **static_names, **ts_names, **ts_units;
    uint64_t spec_hash;
    char source[32], strategy[32], git_version[64];
    uint32_t rounds, selected_round, sites;
    int secagg;
    double dp_epsilon; /* NAN: no DP */
} moeh_modelfile_t;

/* Reads and validates path (see the top of this file). max_batch sets the model's workspace
 * rows (0: the file's). 0, -ENOENT/-EIO (the file), -EINVAL (what is wrong, naming the file and
 * the field: "m.safetensors: tensor gate.fc1.w: data_offsets [0,40] overlap norm.mean") or
 * -ENOMEM. The caller owns *out. */
int moeh_modelfile_read(const char *path, size_t max_batch, moeh_modelfile_t **out,
                        moeh_err_t *err) MOEH_WUR;
/* NULL-safe; sets *self_p = NULL. */
void moeh_modelfile_destroy(moeh_modelfile_t **self_p);

/* 0 if the dataset has the model's data shape (static features, hourly variables, hours, image
 * size) and, where the file knows them, the same static feature names and hourly variable names
 * and units in the same order; else -EINVAL with err naming the first differences
 * ("hourly variable 3: model 'sbp' (mmHg), dataset 'dbp' (mmHg)"). ds_name labels the dataset. */
int moeh_modelfile_check_dataset(const moeh_modelfile_t *mf, const moeh_dataset_t *ds,
                                 const char *ds_name, moeh_err_t *err) MOEH_WUR;

/* Static feature names and hourly variables (names, units) read from a dataset's meta.json, for
 * a writer that has no dataset open (the coordinator). path: the meta.json or its directory.
 * 0 or a negative code with err naming the file and field; free with moeh_modelfile_names_free. */
typedef struct {
    size_t n_static, n_vars;
    char **static_names, **ts_names, **ts_units;
} moeh_modelfile_names_t;
int moeh_modelfile_names_load(const char *path, moeh_modelfile_names_t *out,
                              moeh_err_t *err) MOEH_WUR;
void moeh_modelfile_names_free(moeh_modelfile_names_t *n);

/* The writer's git version (git describe at configure time, or "unknown"). */
const char *moeh_modelfile_git_version(void);

#endif
