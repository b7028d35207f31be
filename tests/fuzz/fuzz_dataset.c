/* fuzz_dataset.c - libFuzzer target for the dataset reader (moeh_dataset_open with checksums
 * verified) with hash-valid inputs. A small valid dataset is written once; each input replaces
 * one of its files and the harness rewrites meta.json so the checksums match, so every input
 * gets past the xxhash and reaches the shape and value validation.
 *   input byte 0 (mod 13): 0..11 = which array file the rest of the input replaces (the
 *     harness recomputes that array's xxh64 in meta.json); 12 = the rest is meta.json, whose
 *     "arrays" object is put back to the valid one (so n, t, names and features are fuzzed).
 * The files live under /dev/shm when it exists (else /tmp); the directory is per process. */
#include "moeh_dataset.h"
#include "moeh_npy.h"

#include <cjson/cJSON.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *k_names[12] = {"ids",          "static",      "ts_value",   "ts_mask",
                                  "ts_delta",     "labels",      "label_mask", "avail",
                                  "note_offsets", "note_tokens", "images",     "split"};
static char g_dir[256];
static cJSON *g_meta;       /* the valid meta.json */
static uint8_t *g_file[12]; /* the valid array files */
static size_t g_len[12];

static void put_file(const char *name, const void *d, size_t n)
{
    char p[512];
    moeh_err_t err = {0};
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    MOEH_ASSERT(moeh_file_write_atomic(p, d, n, &err) == 0);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void cleanup(void)
{
    nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void init(void)
{
    snprintf(g_dir, sizeof g_dir, "%s/moeh_fuzz_dataset.%d",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    moeh_dataset_t *ds;
    moeh_err_t err = {0};
    MOEH_ASSERT(moeh_dataset_create(3, 2, 2, 4, &ds, &err) == 0);
    const char *sn[] = {"age", "sex"}, *tn[] = {"hr", "sbp"}, *tu[] = {"bpm", "mmHg"};
    MOEH_ASSERT(moeh_dataset_set_names(ds, sn, tn, tu, &err) == 0);
    int32_t tok[3] = {5, 9, 2};
    for (size_t i = 0; i < 3; i++) {
        ds->ids[2 * i] = 10 + (int64_t)i, ds->ids[2 * i + 1] = 100 + (int64_t)i;
        ds->static_x[2 * i] = 50.0f + (float)i;
        for (size_t k = 0; k < ds->t * 2; k++) {
            ds->ts_value[i * ds->t * 2 + k] = (float)k;
            ds->ts_mask[i * ds->t * 2 + k] = (float)(k % 2);
            ds->ts_delta[i * ds->t * 2 + k] = (float)(k % 3);
        }
        for (size_t t = 0; t < 3; t++)
            ds->labels[3 * i + t] = (float)((i + t) % 2), ds->label_mask[3 * i + t] = 1,
                               ds->avail[3 * i + t] = 1;
        ds->note_offsets[i] = (int64_t)i;
        ds->split[i] = (uint8_t)i;
    }
    ds->note_offsets[3] = 3;
    MOEH_ASSERT(moeh_dataset_set_tokens(ds, tok, 3, &err) == 0);
    MOEH_ASSERT(moeh_dataset_write(ds, g_dir, &err) == 0);
    atexit(cleanup);
    moeh_dataset_destroy(&ds);
    char p[512], *txt;
    size_t len;
    snprintf(p, sizeof p, "%s/meta.json", g_dir);
    MOEH_ASSERT(moeh_file_read_all(p, 1 << 20, &txt, &len, &err) == 0);
    MOEH_ASSERT((g_meta = cJSON_Parse(txt)));
    free(txt);
    const cJSON *arrs = cJSON_GetObjectItem(g_meta, "arrays");
    for (int a = 0; a < 12; a++) {
        const char *f = cJSON_GetStringValue(
            cJSON_GetObjectItem(cJSON_GetObjectItem(arrs, k_names[a]), "file"));
        MOEH_ASSERT(f);
        snprintf(p, sizeof p, "%s/%s", g_dir, f);
        MOEH_ASSERT(moeh_file_read_all(p, 1 << 20, (char **)&g_file[a], &g_len[a], &err) == 0);
    }
}

/* Writes meta (a JSON object) as meta.json. */
static void put_meta(const cJSON *meta)
{
    char *txt = cJSON_PrintUnformatted(meta);
    MOEH_ASSERT(txt);
    put_file("meta.json", txt, strlen(txt));
    free(txt);
}

static const char *file_of(int a)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(g_meta, "arrays"), k_names[a]), "file"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_meta) init();
    if (size == 0) return 0;
    int which = data[0] % 13;
    const uint8_t *rest = data + 1;
    size_t n = size - 1;
    for (int a = 0; a < 12; a++) /* every input starts from the valid dataset */
        put_file(file_of(a), g_file[a], g_len[a]);
    cJSON *meta = cJSON_Duplicate(g_meta, 1);
    MOEH_ASSERT(meta);
    if (which < 12) {
        put_file(file_of(which), rest, n);
        moeh_npy_t arr;
        moeh_err_t e = {0};
        if (moeh_npy_parse(rest, n, "fuzz", -1, 0, &arr, &e) == 0) { /* fix its checksum */
            size_t nb = moeh_npy_numel(&arr) * moeh_dtype_size(arr.dtype);
            moeh_npy_free(&arr);
            char hx[17];
            snprintf(hx, sizeof hx, "%016" PRIx64, XXH64(rest + n - nb, nb, 0));
            cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "arrays"), k_names[which]);
            cJSON_ReplaceItemInObject(o, "xxh64", cJSON_CreateString(hx));
        }
        put_meta(meta);
    } else {
        char *txt = malloc(n + 1);
        MOEH_ASSERT(txt);
        memcpy(txt, rest, n);
        txt[n] = '\0';
        cJSON *m = cJSON_Parse(txt);
        free(txt);
        if (cJSON_IsObject(m)) {
            cJSON_DeleteItemFromObject(m, "arrays");
            cJSON_AddItemToObject(m, "arrays",
                                  cJSON_Duplicate(cJSON_GetObjectItem(g_meta, "arrays"), 1));
            put_meta(m);
        } else {
            put_file("meta.json", rest, n);
        }
        cJSON_Delete(m);
    }
    cJSON_Delete(meta);

    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {0};
    if (moeh_dataset_open(g_dir, true, &ds, &err) == 0) {
        /* what the reader promises about values the model reads */
        for (size_t i = 0; i < ds->n * ds->t * ds->f_ts; i++)
            MOEH_ASSERT(isfinite(ds->ts_delta[i]) && ds->ts_delta[i] >= 0);
        for (size_t i = 0; i < ds->n * ds->f_static; i++)
            MOEH_ASSERT(isfinite(ds->static_x[i]));
        for (size_t i = 0; i < ds->n; i++)
            MOEH_ASSERT(ds->split[i] <= 2 && ds->note_offsets[i] <= ds->note_offsets[i + 1]);
        moeh_dataset_destroy(&ds);
    } else {
        MOEH_ASSERT(err.msg[0] != '\0' && ds == NULL);
    }
    return 0;
}
