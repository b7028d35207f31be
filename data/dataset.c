/* dataset.c - writing, mapping and validating the dataset directory (see moeh_dataset.h). */
#include "moeh_dataset.h"
#include "moeh_npy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

enum {
    A_IDS,
    A_STATIC,
    A_TSV,
    A_TSM,
    A_TSD,
    A_LAB,
    A_LABM,
    A_AVAIL,
    A_NOFF,
    A_NTOK,
    A_IMG,
    A_SPLIT,
    A_NVEC, /* optional from here on: absent unless the dataset has vectors */
    A_IVEC,
    A_COUNT
};
#define A_REQUIRED A_NVEC

typedef struct {
    const char *name;
    moeh_dtype_t dt;
    size_t ndim;
} arr_desc_t;

static const arr_desc_t k_arrays[A_COUNT] = {
    {"ids", MOEH_DT_I64, 2},         {"static", MOEH_DT_F32, 2},   {"ts_value", MOEH_DT_F32, 3},
    {"ts_mask", MOEH_DT_F32, 3},     {"ts_delta", MOEH_DT_F32, 3}, {"labels", MOEH_DT_F32, 2},
    {"label_mask", MOEH_DT_U8, 2},   {"avail", MOEH_DT_U8, 2},     {"note_offsets", MOEH_DT_I64, 1},
    {"note_tokens", MOEH_DT_I32, 1}, {"images", MOEH_DT_U8, 3},    {"split", MOEH_DT_U8, 1},
    {"note_vec", MOEH_DT_F32, 2},    {"img_vec", MOEH_DT_F32, 2},
};

struct moeh_ds_store {
    bool mapped;
    moeh_npy_map_t maps[A_COUNT];
};

/* Expected shape of array a for the dataset's dimensions. */
static void expected_shape(const moeh_dataset_t *ds, int a, size_t *s)
{
    switch (a) {
    case A_IDS:
        s[0] = ds->n, s[1] = 2;
        break;
    case A_STATIC:
        s[0] = ds->n, s[1] = ds->f_static;
        break;
    case A_TSV:
    case A_TSM:
    case A_TSD:
        s[0] = ds->n, s[1] = ds->t, s[2] = ds->f_ts;
        break;
    case A_LAB:
    case A_LABM:
        s[0] = ds->n, s[1] = MOEH_N_TASKS;
        break;
    case A_AVAIL:
        s[0] = ds->n, s[1] = MOEH_N_MODS;
        break;
    case A_NOFF:
        s[0] = ds->n + 1;
        break;
    case A_NTOK:
        s[0] = ds->n_tokens;
        break;
    case A_IMG:
        s[0] = ds->n, s[1] = ds->img_size, s[2] = ds->img_size;
        break;
    case A_SPLIT:
        s[0] = ds->n;
        break;
    case A_NVEC:
        s[0] = ds->n, s[1] = ds->note_dim;
        break;
    case A_IVEC:
        s[0] = ds->n, s[1] = ds->img_dim;
        break;
    default:
        MOEH_ASSERT(0);
    }
}

static void **array_ptr(moeh_dataset_t *ds, int a)
{
    switch (a) {
    case A_IDS:
        return (void **)&ds->ids;
    case A_STATIC:
        return (void **)&ds->static_x;
    case A_TSV:
        return (void **)&ds->ts_value;
    case A_TSM:
        return (void **)&ds->ts_mask;
    case A_TSD:
        return (void **)&ds->ts_delta;
    case A_LAB:
        return (void **)&ds->labels;
    case A_LABM:
        return (void **)&ds->label_mask;
    case A_AVAIL:
        return (void **)&ds->avail;
    case A_NOFF:
        return (void **)&ds->note_offsets;
    case A_NTOK:
        return (void **)&ds->note_tokens;
    case A_IMG:
        return (void **)&ds->images;
    case A_SPLIT:
        return (void **)&ds->split;
    case A_NVEC:
        return (void **)&ds->note_vec;
    case A_IVEC:
        return (void **)&ds->img_vec;
    default:
        MOEH_ASSERT(0);
    }
    return NULL;
}

static size_t array_bytes(const moeh_dataset_t *ds, int a)
{
    size_t s[MOEH_NPY_MAX_DIMS] = {0}, n = moeh_dtype_size(k_arrays[a].dt);
    expected_shape(ds, a, s);
    for (size_t i = 0; i < k_arrays[a].ndim; i++)
        n *= s[i];
    return n;
}

static void free_names(char **v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void moeh_dataset_destroy(moeh_dataset_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_dataset_t *ds = *self_p;
    for (int a = 0; a < A_COUNT; a++) {
        if (ds->store && ds->store->mapped)
            moeh_npy_unmap(&ds->store->maps[a]);
        else
            free(*array_ptr(ds, a));
    }
    free_names(ds->static_names, ds->f_static);
    free_names(ds->ts_names, ds->f_ts);
    free_names(ds->ts_units, ds->f_ts);
    cJSON_Delete(ds->extra);
    free(ds->store);
    free(ds);
    *self_p = NULL;
}

int moeh_dataset_create(size_t n, size_t f_static, size_t f_ts, size_t img_size,
                        moeh_dataset_t **out, moeh_err_t *err)
{
    *out = NULL;
    moeh_dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->store = calloc(1, sizeof *ds->store))) {
        free(ds);
        return moeh_errf(err, -ENOMEM, "dataset: out of memory");
    }
    ds->n = n, ds->f_static = f_static, ds->f_ts = f_ts, ds->t = MOEH_DS_T;
    ds->img_size = img_size, ds->n_tokens = 0;
    for (int a = 0; a < A_REQUIRED; a++) {
        size_t b = array_bytes(ds, a);
        void *p = calloc(1, b ? b : 1);
        if (!p) {
            moeh_dataset_destroy(&ds);
            return moeh_errf(err, -ENOMEM, "dataset: out of memory for %s (%zu bytes)",
                             k_arrays[a].name, b);
        }
        *array_ptr(ds, a) = p;
    }
    *out = ds;
    return 0;
}

int moeh_dataset_set_tokens(moeh_dataset_t *ds, const int32_t *tok, size_t n_tok, moeh_err_t *err)
{
    MOEH_ASSERT(!ds->store->mapped);
    int32_t *p = malloc(n_tok ? n_tok * sizeof *p : 1);
    if (!p) return moeh_errf(err, -ENOMEM, "dataset: out of memory for %zu note tokens", n_tok);
    if (n_tok) memcpy(p, tok, n_tok * sizeof *p);
    free(ds->note_tokens);
    ds->note_tokens = p;
    ds->n_tokens = n_tok;
    return 0;
}

/* The vector array of modality mod (notes or img): its array index, width and pointer. */
static int vec_array(int mod)
{
    return mod == MOEH_MOD_NOTES ? A_NVEC : mod == MOEH_MOD_IMG ? A_IVEC : -1;
}

int moeh_dataset_add_vectors(moeh_dataset_t *ds, int mod, size_t dim, const cJSON *info,
                             moeh_err_t *err)
{
    MOEH_ASSERT(!ds->store->mapped);
    int a = vec_array(mod);
    if (a < 0 || dim == 0 || dim > 65536)
        return moeh_errf(err, -EINVAL,
                         "dataset: vectors for modality %d of width %zu: expected notes or img "
                         "and a width of 1..65536",
                         mod, dim);
    float *v = calloc(ds->n ? ds->n * dim : 1, sizeof *v);
    cJSON *o = info ? cJSON_Duplicate(info, 1) : cJSON_CreateObject();
    if (!ds->extra) ds->extra = cJSON_CreateObject();
    cJSON *emb = ds->extra ? cJSON_GetObjectItemCaseSensitive(ds->extra, "embeddings") : NULL;
    if (ds->extra && !cJSON_IsObject(emb)) {
        cJSON_DeleteItemFromObjectCaseSensitive(ds->extra, "embeddings");
        emb = cJSON_AddObjectToObject(ds->extra, "embeddings");
    }
    if (!v || !o || !emb || !cJSON_IsObject(o)) {
        free(v);
        cJSON_Delete(o);
        return moeh_errf(err, cJSON_IsObject(o) || !o ? -ENOMEM : -EINVAL,
                         "dataset: %s vectors: out of memory or a description that is not an "
                         "object",
                         moeh_mod_names[mod]);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o, "dim");
    cJSON_AddNumberToObject(o, "dim", (double)dim);
    cJSON_DeleteItemFromObjectCaseSensitive(emb, moeh_mod_names[mod]);
    cJSON_AddItemToObject(emb, moeh_mod_names[mod], o);
    free(*array_ptr(ds, a));
    *array_ptr(ds, a) = v;
    *(mod == MOEH_MOD_NOTES ? &ds->note_dim : &ds->img_dim) = dim;
    return 0;
}

static char **dup_names(const char *const *src, size_t n)
{
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(v[i] = strdup(src ? src[i] : ""))) {
            free_names(v, n);
            return NULL;
        }
    return v;
}

int moeh_dataset_set_names(moeh_dataset_t *ds, const char *const *static_names,
                           const char *const *ts_names, const char *const *ts_units,
                           moeh_err_t *err)
{
    char **a = dup_names(static_names, ds->f_static), **b = dup_names(ts_names, ds->f_ts),
         **c = dup_names(ts_units, ds->f_ts);
    if (!a || !b || !c) {
        free_names(a, ds->f_static), free_names(b, ds->f_ts), free_names(c, ds->f_ts);
        return moeh_errf(err, -ENOMEM, "dataset: out of memory");
    }
    free_names(ds->static_names, ds->f_static);
    free_names(ds->ts_names, ds->f_ts);
    free_names(ds->ts_units, ds->f_ts);
    ds->static_names = a, ds->ts_names = b, ds->ts_units = c;
    return 0;
}

static void hex64(char out[17], uint64_t h)
{
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

int moeh_dataset_write(const moeh_dataset_t *ds, const char *dir, moeh_err_t *err)
{
    int rc;
    char path[PATH_MAX], *txt = NULL;
    cJSON *meta = NULL;
    if ((rc = moeh_mkdir_p(dir, err)) != 0) return rc;
    rc = -ENOMEM;
    if (!(meta = cJSON_CreateObject())) goto out; /* rc is -ENOMEM */
    cJSON_AddStringToObject(meta, "schema", "moeh-dataset");
    cJSON_AddNumberToObject(meta, "schema_version", MOEH_DS_SCHEMA_VERSION);
    cJSON_AddNumberToObject(meta, "n", (double)ds->n);
    cJSON_AddNumberToObject(meta, "t", (double)ds->t);
    cJSON_AddNumberToObject(meta, "image_size", (double)ds->img_size);
    cJSON_AddItemToObject(meta, "tasks", cJSON_CreateStringArray(moeh_task_names, MOEH_N_TASKS));
    cJSON_AddItemToObject(meta, "modalities", cJSON_CreateStringArray(moeh_mod_names, MOEH_N_MODS));
    cJSON *sf = cJSON_AddArrayToObject(meta, "static_features");
    for (size_t i = 0; i < ds->f_static; i++)
        cJSON_AddItemToArray(sf, cJSON_CreateString(ds->static_names ? ds->static_names[i] : ""));
    cJSON *tf = cJSON_AddArrayToObject(meta, "ts_features");
    for (size_t i = 0; i < ds->f_ts; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", ds->ts_names ? ds->ts_names[i] : "");
        cJSON_AddStringToObject(o, "unit", ds->ts_units ? ds->ts_units[i] : "");
        cJSON_AddItemToArray(tf, o);
    }
    cJSON *arrs = cJSON_AddObjectToObject(meta, "arrays");
    for (int a = 0; a < A_COUNT; a++) {
        size_t s[MOEH_NPY_MAX_DIMS];
        expected_shape(ds, a, s);
        const void *p = *array_ptr((moeh_dataset_t *)ds, a);
        if (a >= A_REQUIRED && !p) continue; /* optional and absent */
        char file[64], hx[17];
        snprintf(file, sizeof file, "%s.npy", k_arrays[a].name);
        if ((rc = moeh_path_join(path, sizeof path, dir, file)) != 0) {
            rc = moeh_errf(err, rc, "%s: path too long", dir);
            goto out;
        }
        if ((rc = moeh_npy_write(path, k_arrays[a].dt, k_arrays[a].ndim, s, p, err)) != 0) goto out;
        hex64(hx, XXH64(p, array_bytes(ds, a), 0));
        cJSON *o = cJSON_AddObjectToObject(arrs, k_arrays[a].name);
        cJSON_AddStringToObject(o, "file", file);
        cJSON_AddStringToObject(o, "dtype", moeh_dtype_name(k_arrays[a].dt));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (size_t i = 0; i < k_arrays[a].ndim; i++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)s[i]));
        cJSON_AddStringToObject(o, "xxh64", hx);
    }
    if (ds->extra)
        for (cJSON *it = ds->extra->child; it; it = it->next)
            if (!cJSON_GetObjectItemCaseSensitive(meta, it->string))
                cJSON_AddItemToObject(meta, it->string, cJSON_Duplicate(it, 1));
    if (!(txt = cJSON_Print(meta))) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = moeh_path_join(path, sizeof path, dir, "meta.json")) != 0) {
        rc = moeh_errf(err, rc, "%s: path too long", dir);
        goto out;
    }
    rc = moeh_file_write_atomic(path, txt, strlen(txt), err);
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "%s: out of memory writing meta.json", dir);
    free(txt);
    cJSON_Delete(meta);
    return rc;
}

static int meta_size(const cJSON *meta, const char *key, const char *path, size_t *out,
                     moeh_err_t *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e15 ||
        v->valuedouble != (double)(size_t)v->valuedouble)
        return moeh_errf(err, -EBADMSG, "%s: \"%s\" missing or not a non-negative integer", path,
                         key);
    *out = (size_t)v->valuedouble;
    return 0;
}

/* Checks that meta.json's array of strings `key` is exactly want[0..n) (the schema's tasks or
 * modalities, in that order); the error names both lists. */
static int meta_names(const cJSON *meta, const char *key, const char *const *want, size_t n,
                      const char *path, moeh_err_t *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    bool same = cJSON_IsArray(v) && (size_t)cJSON_GetArraySize(v) == n;
    for (size_t i = 0; same && i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, (int)i);
        same = cJSON_IsString(e) && !strcmp(e->valuestring, want[i]);
    }
    if (same) return 0;
    char got[256] = "missing", exp[256];
    if (v && !cJSON_PrintPreallocated((cJSON *)v, got, sizeof got, 0))
        snprintf(got, sizeof got, "(too long to show)");
    int at = snprintf(exp, sizeof exp, "[");
    for (size_t i = 0; i < n && at > 0 && (size_t)at < sizeof exp; i++)
        at += snprintf(exp + at, sizeof exp - (size_t)at, "%s\"%s\"", i ? "," : "", want[i]);
    if (at > 0 && (size_t)at < sizeof exp) snprintf(exp + at, sizeof exp - (size_t)at, "]");
    return moeh_errf(err, -EBADMSG, "%s: \"%s\" is %s, this build expects %s", path, key, got, exp);
}

static int read_names(const cJSON *arr, const char *field, size_t n, char ***out)
{
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(arr, (int)i);
        if (field) e = cJSON_GetObjectItemCaseSensitive(e, field);
        const char *s = cJSON_IsString(e) ? e->valuestring : "";
        if (!(v[i] = strdup(s))) {
            free_names(v, n);
            return -ENOMEM;
        }
    }
    *out = v;
    return 0;
}

static void fmt_shape(char *out, size_t cap, const size_t *s, size_t nd)
{
    int k = snprintf(out, cap, "(");
    for (size_t i = 0; i < nd && (size_t)k < cap; i++)
        k += snprintf(out + k, cap - (size_t)k, "%zu%s", s[i], i + 1 < nd ? "," : "");
    if ((size_t)k < cap) snprintf(out + k, cap - (size_t)k, ")");
}

/* Checks the values of arrays with a domain. static and ts_delta must be finite (only ts_value
 * may hold NaN, before the first observation), ts_delta also >= 0; a bad value is reported by
 * array, row, hour and column (with the feature's name), e.g. a ts_delta of all NaN. */
static int check_contents(const moeh_dataset_t *ds, const char *dir, moeh_err_t *err)
{
    for (size_t i = 0; i < ds->n; i++)
        for (size_t f = 0; f < ds->f_static; f++) {
            float v = ds->static_x[i * ds->f_static + f];
            if (!isfinite(v))
                return moeh_errf(err, -EBADMSG,
                                 "%s/static.npy: row %zu column %zu (%s) is %g, expected a "
                                 "finite value",
                                 dir, i, f, ds->static_names ? ds->static_names[f] : "?",
                                 (double)v);
        }
    for (size_t i = 0; i < ds->n; i++)
        for (size_t t = 0; t < ds->t; t++)
            for (size_t f = 0; f < ds->f_ts; f++) {
                float v = ds->ts_delta[(i * ds->t + t) * ds->f_ts + f];
                if (!isfinite(v) || v < 0)
                    return moeh_errf(err, -EBADMSG,
                                     "%s/ts_delta.npy: row %zu hour %zu column %zu (%s) is %g, "
                                     "expected finite hours >= 0",
                                     dir, i, t, f, ds->ts_names ? ds->ts_names[f] : "?", (double)v);
            }
    size_t nt = ds->n * ds->t * ds->f_ts;
    for (size_t i = 0; i < nt; i++)
        if (ds->ts_mask[i] != 0.0f && ds->ts_mask[i] != 1.0f)
            return moeh_errf(err, -EBADMSG, "%s/ts_mask.npy: element %zu is %g, expected 0 or 1",
                             dir, i, (double)ds->ts_mask[i]);
    for (size_t i = 0; i < ds->n * MOEH_N_MODS; i++)
        if (ds->avail[i] > 1)
            return moeh_errf(err, -EBADMSG, "%s/avail.npy: element %zu is %u, expected 0/1", dir, i,
                             ds->avail[i]);
    for (size_t i = 0; i < ds->n * MOEH_N_TASKS; i++) {
        if (ds->label_mask[i] > 1)
            return moeh_errf(err, -EBADMSG, "%s/label_mask.npy: element %zu is %u, expected 0/1",
                             dir, i, ds->label_mask[i]);
        if (ds->labels[i] != 0.0f && ds->labels[i] != 1.0f)
            return moeh_errf(err, -EBADMSG, "%s/labels.npy: element %zu is %g, expected 0/1", dir,
                             i, (double)ds->labels[i]);
    }
    for (size_t i = 0; i < ds->n; i++)
        if (ds->split[i] > 2)
            return moeh_errf(err, -EBADMSG, "%s/split.npy: element %zu is %u, expected 0..2", dir,
                             i, ds->split[i]);
    if (ds->note_offsets[0] != 0 || ds->note_offsets[ds->n] != (int64_t)ds->n_tokens)
        return moeh_errf(err, -EBADMSG,
                         "%s/note_offsets.npy: must run from 0 to %zu (note_tokens length), "
                         "runs from %lld to %lld",
                         dir, ds->n_tokens, (long long)ds->note_offsets[0],
                         (long long)ds->note_offsets[ds->n]);
    for (size_t i = 0; i < ds->n; i++)
        if (ds->note_offsets[i + 1] < ds->note_offsets[i])
            return moeh_errf(err, -EBADMSG, "%s/note_offsets.npy: decreases at row %zu", dir, i);
    for (size_t i = 0; i < ds->n_tokens; i++)
        if (ds->note_tokens[i] < 0)
            return moeh_errf(err, -EBADMSG, "%s/note_tokens.npy: element %zu is negative", dir, i);
    for (int mod = MOEH_MOD_NOTES; mod <= MOEH_MOD_IMG; mod++) {
        const float *v = mod == MOEH_MOD_NOTES ? ds->note_vec : ds->img_vec;
        size_t D = mod == MOEH_MOD_NOTES ? ds->note_dim : ds->img_dim;
        const char *nm = k_arrays[vec_array(mod)].name;
        for (size_t i = 0; v && i < ds->n; i++)
            for (size_t k = 0; k < D; k++) {
                float x = v[i * D + k];
                if (!isfinite(x))
                    return moeh_errf(err, -EBADMSG,
                                     "%s/%s.npy: row %zu (hadm_id %lld) column %zu is %g, "
                                     "expected a finite value",
                                     dir, nm, i, (long long)ds->ids[2 * i + 1], k, (double)x);
                if (x != 0.0f && !ds->avail[i * MOEH_N_MODS + (size_t)mod])
                    return moeh_errf(err, -EBADMSG,
                                     "%s/%s.npy: row %zu (hadm_id %lld) has no %s (avail.npy 0) "
                                     "but a non-zero vector (column %zu is %g)",
                                     dir, nm, i, (long long)ds->ids[2 * i + 1], moeh_mod_names[mod],
                                     k, (double)x);
            }
    }
    return 0;
}

/* The vector arrays and meta.json "embeddings" must describe each other: an object per vector
 * array whose "dim" is the array's width, and no description without its array. */
static int check_embeddings(const moeh_dataset_t *ds, const cJSON *meta, const char *path,
                            moeh_err_t *err)
{
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(meta, "embeddings");
    if (emb && !cJSON_IsObject(emb))
        return moeh_errf(err, -EBADMSG, "%s: \"embeddings\" is not an object", path);
    for (int mod = MOEH_MOD_NOTES; mod <= MOEH_MOD_IMG; mod++) {
        const char *mn = moeh_mod_names[mod], *an = k_arrays[vec_array(mod)].name;
        size_t D = mod == MOEH_MOD_NOTES ? ds->note_dim : ds->img_dim;
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(emb, mn),
                    *dim = cJSON_GetObjectItemCaseSensitive(o, "dim");
        if (!D && o)
            return moeh_errf(err, -EBADMSG,
                             "%s: embeddings.%s describes %s vectors but arrays.%s is missing",
                             path, mn, mn, an);
        if (D && !cJSON_IsObject(o))
            return moeh_errf(err, -EBADMSG,
                             "%s: arrays.%s is present but embeddings.%s (its description, "
                             "with \"dim\") is missing",
                             path, an, mn);
        if (D && (!cJSON_IsNumber(dim) || dim->valuedouble != (double)D))
            return moeh_errf(err, -EBADMSG,
                             "%s: embeddings.%s.dim is %g, array '%s' has %zu columns", path, mn,
                             cJSON_IsNumber(dim) ? dim->valuedouble : -1.0, an, D);
    }
    return 0;
}

/* Refuses anything but a regular file (a FIFO, device or directory given as an array file):
 * opened with O_NONBLOCK so that a FIFO without a writer cannot hang the reader. */
static int check_regular(const char *path, moeh_err_t *err)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    int rc = fstat(fd, &st) != 0 ? -errno : 0;
    close(fd);
    if (rc) return moeh_errf(err, rc, "%s: %s", path, strerror(-rc));
    if (!S_ISREG(st.st_mode))
        return moeh_errf(err, -EINVAL, "%s: not a regular file (%s), a dataset file must be one",
                         path,
                         S_ISFIFO(st.st_mode)   ? "a FIFO"
                         : S_ISDIR(st.st_mode)  ? "a directory"
                         : S_ISCHR(st.st_mode)  ? "a character device"
                         : S_ISSOCK(st.st_mode) ? "a socket"
                                                : "neither file nor directory");
    return 0;
}

int moeh_dataset_open(const char *dir, bool verify_checksums, moeh_dataset_t **out, moeh_err_t *err)
{
    *out = NULL;
    int rc;
    char path[PATH_MAX], *txt = NULL;
    size_t len;
    cJSON *meta = NULL;
    moeh_dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->store = calloc(1, sizeof *ds->store))) {
        free(ds);
        return moeh_errf(err, -ENOMEM, "%s: out of memory", dir);
    }
    ds->store->mapped = true;
    if ((rc = moeh_path_join(path, sizeof path, dir, "meta.json")) != 0) {
        rc = moeh_errf(err, rc, "%s: path too long", dir);
        goto fail;
    }
    if ((rc = check_regular(path, err)) != 0 ||
        (rc = moeh_file_read_all(path, (size_t)64 << 20, &txt, &len, err)) != 0)
        goto fail;
    rc = -EBADMSG;
    if (!(meta = cJSON_Parse(txt))) {
        moeh_errf(err, rc, "%s: not valid JSON near byte %td", path,
                  cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - txt : (ptrdiff_t)-1);
        goto fail;
    }
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(meta, "schema");
    if (!cJSON_IsString(schema) || strcmp(schema->valuestring, "moeh-dataset") != 0) {
        moeh_errf(err, rc, "%s: \"schema\" is not \"moeh-dataset\"", path);
        goto fail;
    }
    size_t ver = 0;
    if ((rc = meta_size(meta, "schema_version", path, &ver, err)) != 0) goto fail;
    if (ver != MOEH_DS_SCHEMA_VERSION) {
        rc = moeh_errf(err, -EBADMSG, "%s: schema_version %zu, this build reads %d", path, ver,
                       MOEH_DS_SCHEMA_VERSION);
        goto fail;
    }
    if ((rc = meta_size(meta, "n", path, &ds->n, err)) ||
        (rc = meta_size(meta, "t", path, &ds->t, err)) ||
        (rc = meta_size(meta, "image_size", path, &ds->img_size, err)))
        goto fail;
    if ((rc = meta_names(meta, "tasks", moeh_task_names, MOEH_N_TASKS, path, err)) ||
        (rc = meta_names(meta, "modalities", moeh_mod_names, MOEH_N_MODS, path, err)))
        goto fail;
    if (ds->t != MOEH_DS_T) {
        rc = moeh_errf(err, -EBADMSG, "%s: t = %zu, expected %d", path, ds->t, MOEH_DS_T);
        goto fail;
    }
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(meta, "static_features"),
                *tf = cJSON_GetObjectItemCaseSensitive(meta, "ts_features"),
                *arrs = cJSON_GetObjectItemCaseSensitive(meta, "arrays");
    if (!cJSON_IsArray(sf) || !cJSON_IsArray(tf) || !cJSON_IsObject(arrs)) {
        rc = moeh_errf(err, -EBADMSG,
                       "%s: \"static_features\", \"ts_features\" or \"arrays\" missing", path);
        goto fail;
    }
    ds->f_static = (size_t)cJSON_GetArraySize(sf);
    ds->f_ts = (size_t)cJSON_GetArraySize(tf);
    if (read_names(sf, NULL, ds->f_static, &ds->static_names) ||
        read_names(tf, "name", ds->f_ts, &ds->ts_names) ||
        read_names(tf, "unit", ds->f_ts, &ds->ts_units)) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    /* note_tokens first: its length is a dimension the others do not fix */
    static const int order[A_COUNT] = {A_NTOK, A_IDS,   A_STATIC, A_TSV, A_TSM,   A_TSD,  A_LAB,
                                       A_LABM, A_AVAIL, A_NOFF,   A_IMG, A_SPLIT, A_NVEC, A_IVEC};
    for (int k = 0; k < A_COUNT; k++) {
        int a = order[k];
        const char *nm = k_arrays[a].name;
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(arrs, nm);
        if (a >= A_REQUIRED && !o) continue; /* optional vectors: absent */
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(o, "file"),
                    *hx = cJSON_GetObjectItemCaseSensitive(o, "xxh64");
        if (!cJSON_IsString(file) || !cJSON_IsString(hx) || strchr(file->valuestring, '/')) {
            rc = moeh_errf(err, -EBADMSG, "%s: arrays.%s lacks \"file\" or \"xxh64\"", path, nm);
            goto fail;
        }
        char ap[PATH_MAX];
        if ((rc = moeh_path_join(ap, sizeof ap, dir, file->valuestring)) != 0) {
            rc = moeh_errf(err, rc, "%s: path too long", dir);
            goto fail;
        }
        moeh_npy_map_t *m = &ds->store->maps[a];
        moeh_err_t e2 = {0};
        if ((rc = check_regular(ap, &e2)) != 0) {
            moeh_errf(err, rc, "array '%s': %s", nm, e2.msg);
            goto fail;
        }
        if ((rc = moeh_npy_map(ap, (int)k_arrays[a].dt, k_arrays[a].ndim, m, &e2)) != 0) {
            moeh_errf(err, rc, "array '%s': %s", nm, e2.msg);
            goto fail;
        }
        if (a == A_NTOK) ds->n_tokens = m->shape[0];
        if (a == A_NVEC || a == A_IVEC) { /* the width is the array's own */
            if (m->shape[1] == 0 || m->shape[1] > 65536) {
                rc = moeh_errf(err, -EBADMSG, "array '%s' (%s): width %zu, expected 1..65536", nm,
                               ap, m->shape[1]);
                goto fail;
            }
            *(a == A_NVEC ? &ds->note_dim : &ds->img_dim) = m->shape[1];
        }
        size_t want[MOEH_NPY_MAX_DIMS];
        expected_shape(ds, a, want);
        if (memcmp(want, m->shape, k_arrays[a].ndim * sizeof want[0]) != 0) {
            char got_s[96], want_s[96];
            fmt_shape(got_s, sizeof got_s, m->shape, m->ndim);
            fmt_shape(want_s, sizeof want_s, want, k_arrays[a].ndim);
            rc = moeh_errf(err, -EBADMSG,
                           "array '%s' (%s): shape %s, meta.json (n=%zu, t=%zu, %zu static, "
                           "%zu ts features, image %zu) says %s",
                           nm, ap, got_s, ds->n, ds->t, ds->f_static, ds->f_ts, ds->img_size,
                           want_s);
            goto fail;
        }
        if (verify_checksums) {
            char got[17];
            hex64(got, XXH64(m->data, m->nbytes, 0));
            if (strcmp(got, hx->valuestring) != 0) {
                rc = moeh_errf(err, -EBADMSG,
                               "array '%s' (%s): checksum mismatch: data hashes to xxh64 %s, "
                               "meta.json says %s (file modified or corrupt)",
                               nm, ap, got, hx->valuestring);
                goto fail;
            }
        }
        *array_ptr(ds, a) = (void *)m->data;
    }
    if ((rc = check_embeddings(ds, meta, path, err)) != 0 ||
        (rc = check_contents(ds, dir, err)) != 0)
        goto fail;
    cJSON *extra = cJSON_CreateObject();
    static const char *own[] = {"schema",      "schema_version", "n",          "t",
                                "image_size",  "tasks",          "modalities", "static_features",
                                "ts_features", "arrays"};
    for (cJSON *it = meta->child; it && extra; it = it->next) {
        bool skip = false;
        for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
            skip |= !strcmp(it->string, own[i]);
        if (!skip) cJSON_AddItemToObject(extra, it->string, cJSON_Duplicate(it, 1));
    }
    ds->extra = extra;
    rc = 0;
    *out = ds;
    ds = NULL;
fail:
    moeh_dataset_destroy(&ds);
    cJSON_Delete(meta);
    free(txt);
    return rc;
}

int moeh_dataset_subset(const moeh_dataset_t *src, const size_t *idx, size_t k, unsigned keep_mods,
                        moeh_dataset_t **out, moeh_err_t *err)
{
    moeh_dataset_t *d = NULL;
    int32_t *tok = NULL;
    int rc = moeh_dataset_create(k, src->f_static, src->f_ts, src->img_size, &d, err);
    if (rc) return rc;
    if ((rc = moeh_dataset_set_names(d, (const char *const *)src->static_names,
                                     (const char *const *)src->ts_names,
                                     (const char *const *)src->ts_units, err)))
        goto fail;
    if (src->extra && !(d->extra = cJSON_Duplicate(src->extra, 1))) {
        rc = moeh_errf(err, -ENOMEM, "subset: out of memory");
        goto fail;
    }
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(src->extra, "embeddings");
    if ((src->note_vec &&
         (rc = moeh_dataset_add_vectors(d, MOEH_MOD_NOTES, src->note_dim,
                                        cJSON_GetObjectItemCaseSensitive(emb, "notes"), err))) ||
        (src->img_vec &&
         (rc = moeh_dataset_add_vectors(d, MOEH_MOD_IMG, src->img_dim,
                                        cJSON_GetObjectItemCaseSensitive(emb, "img"), err))))
        goto fail;
    size_t ntok = 0;
    bool notes = keep_mods & (1u << MOEH_MOD_NOTES), img = keep_mods & (1u << MOEH_MOD_IMG);
    for (size_t j = 0; j < k; j++)
        if (notes) ntok += (size_t)(src->note_offsets[idx[j] + 1] - src->note_offsets[idx[j]]);
    if (!(tok = malloc(ntok ? ntok * sizeof *tok : 1))) {
        rc = moeh_errf(err, -ENOMEM, "subset: out of memory");
        goto fail;
    }
    size_t T = src->t, F = src->f_ts, S2 = src->img_size * src->img_size, pos = 0;
    for (size_t j = 0; j < k; j++) {
        size_t i = idx[j];
        MOEH_ASSERT(i < src->n);
        memcpy(d->ids + 2 * j, src->ids + 2 * i, 2 * sizeof *d->ids);
        memcpy(d->static_x + j * src->f_static, src->static_x + i * src->f_static,
               src->f_static * sizeof(float));
        memcpy(d->ts_value + j * T * F, src->ts_value + i * T * F, T * F * sizeof(float));
        memcpy(d->ts_mask + j * T * F, src->ts_mask + i * T * F, T * F * sizeof(float));
        memcpy(d->ts_delta + j * T * F, src->ts_delta + i * T * F, T * F * sizeof(float));
        memcpy(d->labels + MOEH_N_TASKS * j, src->labels + MOEH_N_TASKS * i,
               MOEH_N_TASKS * sizeof(float));
        memcpy(d->label_mask + MOEH_N_TASKS * j, src->label_mask + MOEH_N_TASKS * i, MOEH_N_TASKS);
        for (int m = 0; m < MOEH_N_MODS; m++)
            d->avail[MOEH_N_MODS * j + m] =
                (keep_mods >> m & 1u) ? src->avail[MOEH_N_MODS * i + m] : 0;
        d->split[j] = src->split[i];
        d->note_offsets[j] = (int64_t)pos;
        if (notes) {
            size_t a = (size_t)src->note_offsets[i], b = (size_t)src->note_offsets[i + 1];
            memcpy(tok + pos, src->note_tokens + a, (b - a) * sizeof *tok);
            pos += b - a;
        }
        if (img) memcpy(d->images + j * S2, src->images + i * S2, S2);
        if (notes && src->note_vec)
            memcpy(d->note_vec + j * src->note_dim, src->note_vec + i * src->note_dim,
                   src->note_dim * sizeof(float));
        if (img && src->img_vec)
            memcpy(d->img_vec + j * src->img_dim, src->img_vec + i * src->img_dim,
                   src->img_dim * sizeof(float));
    }
    d->note_offsets[k] = (int64_t)pos;
    if ((rc = moeh_dataset_set_tokens(d, tok, pos, err))) goto fail;
    *out = d;
    d = NULL;
fail:
    free(tok);
    moeh_dataset_destroy(&d);
    return rc;
}

void moeh_dataset_combo_counts(const moeh_dataset_t *ds, size_t out[MOEH_N_COMBOS + 1])
{
    memset(out, 0, (MOEH_N_COMBOS + 1) * sizeof out[0]);
    for (size_t i = 0; i < ds->n; i++)
        out[moeh_combo_of(ds->avail + MOEH_N_MODS * i) + 1]++;
}
