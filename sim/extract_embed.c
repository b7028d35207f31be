/* extract_embed.c - precomputed note and X-ray vectors imported by `moeh extract`
 * (--note-embeddings, --cxr-embeddings; docs/data.md section 5.1).
 *
 * A site computes one vector per note (keyed by MIMIC-IV-Note's note_id) or per image (keyed by
 * MIMIC-CXR's dicom_id) with a model of its choice, e.g. scripts/cxr_embed.py, and gives them as
 * X.npy, (K,D) float32, with X.ids.txt, the K ids in row order, one per line, and optionally
 * X.json, a JSON object describing the model (copied into meta.json "embeddings"). The passes
 * over the note table and the CXR metadata call emb_add for every note / AP-PA image they keep
 * for an admission; emb_finish turns the sums into means. Errors name the file and line. */
#include "extract_ctx.h"
#include "moeh_npy.h"

#include <math.h>
#include <string.h>
#include <xxhash.h>

static const char *const k_item[2] = {"note", "AP/PA image"};
static const char *const k_key[2] = {"note_id", "dicom_id"};
static const char *const k_flag[2] = {"--note-embeddings", "--cxr-embeddings"};

static int64_t id_key(const char *id, size_t len)
{
    int64_t k = (int64_t)XXH64(id, len, 0x656d62);
    return k == INT64_MIN ? INT64_MIN + 1 : k; /* INT64_MIN marks an empty slot */
}

/* Row of id in e, or -1. */
static long emb_find(const emb_t *e, const char *id, size_t len)
{
    uint32_t r;
    if (!moeh_i64map_get(&e->map, id_key(id, len), &r)) return -1;
    return strlen(e->ids[r]) == len && !memcmp(e->ids[r], id, len) ? (long)r : -1;
}

void emb_free(emb_t *e)
{
    if (!e) return;
    free(e->vec);
    free(e->text);
    free(e->ids);
    free(e->used);
    free(e->cnt);
    moeh_i64map_free(&e->map);
    cJSON_Delete(e->info);
    const char *path = e->path;
    memset(e, 0, sizeof *e);
    e->path = path;
}

/* X.npy -> X<suffix> (X.foo -> X.foo<suffix> for another extension). */
static int sibling(char *out, size_t cap, const char *path, const char *suffix)
{
    size_t l = strlen(path);
    if (l > 4 && !strcmp(path + l - 4, ".npy")) l -= 4;
    int n = snprintf(out, cap, "%.*s%s", (int)l, path, suffix);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Splits the ids file into e->ids (trimmed, in place); errors as file:line. */
static int read_ids(emb_t *e, moeh_err_t *err)
{
    size_t len = 0, cap = 0, n = 0;
    int rc = moeh_file_read_all(e->ids_path, (size_t)1 << 30, &e->text, &len, err);
    if (rc == -ENOENT)
        return moeh_errf(err, rc,
                         "%s: missing: the ids of %s, one per line in row order, are read from it",
                         e->ids_path, e->path);
    if (rc) return rc;
    char *p = e->text, *end = e->text + len;
    for (size_t line = 1; p < end; line++) {
        char *nl = memchr(p, '\n', (size_t)(end - p)), *a = p, *b = nl ? nl : end;
        *b = '\0'; /* at end: the NUL read_all adds */
        p = nl ? nl + 1 : end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
            *--b = '\0';
        if (a == b) {
            if (p >= end) break; /* a blank last line */
            return moeh_errf(err, -EBADMSG, "%s:%zu: empty id", e->ids_path, line);
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            char **v = realloc(e->ids, cap * sizeof *v);
            if (!v) return moeh_errf(err, -ENOMEM, "%s: out of memory", e->ids_path);
            e->ids = v;
        }
        e->ids[n++] = a;
    }
    if (n != e->K)
        return moeh_errf(err, -EBADMSG,
                         "%s has %zu ids (lines), %s has %zu rows: expected one id "
                         "per row",
                         e->ids_path, n, e->path, e->K);
    return 0;
}

int emb_load(ctx_t *c, int k, moeh_err_t *err)
{
    emb_t *e = &c->emb[k];
    moeh_npy_t a = {0};
    char jpath[PATH_MAX], *jtxt = NULL;
    size_t jlen = 0;
    cJSON *side = NULL;
    int rc = moeh_npy_read(e->path, MOEH_DT_F32, 2, &a, err);
    if (rc) {
        if (rc == -EBADMSG || rc == -EINVAL)
            moeh_errf(err, rc,
                      "%s %s (expected a (K,D) float32 .npy: numpy "
                      "np.save(path, X.astype(np.float32)))",
                      k_flag[k], err->msg);
        return rc;
    }
    e->vec = a.data, e->K = a.shape[0], e->D = a.shape[1];
    if (e->D == 0 || e->D > 65536)
        return moeh_errf(err, -EBADMSG, "%s: width %zu, expected 1..65536 columns", e->path, e->D);
    if ((rc = sibling(e->ids_path, sizeof e->ids_path, e->path, ".ids.txt")) ||
        (rc = sibling(jpath, sizeof jpath, e->path, ".json")))
        return moeh_errf(err, rc, "%s: path too long", e->path);
    if ((rc = read_ids(e, err))) return rc;
    if (!(e->used = calloc(e->K + 1, 1)) || moeh_i64map_init(&e->map, e->K + 1))
        return moeh_errf(err, -ENOMEM, "%s: out of memory", e->path);
    for (size_t r = 0; r < e->K; r++) {
        size_t l = strlen(e->ids[r]);
        uint32_t prev;
        if (moeh_i64map_get(&e->map, id_key(e->ids[r], l), &prev)) {
            if (!strcmp(e->ids[prev], e->ids[r]))
                return moeh_errf(err, -EBADMSG, "%s:%zu: id '%s' repeats line %u", e->ids_path,
                                 r + 1, e->ids[r], prev + 1);
            return moeh_errf(err, -EBADMSG, "%s:%zu: ids '%s' and '%s' (line %u) collide in xxh64",
                             e->ids_path, r + 1, e->ids[r], e->ids[prev], prev + 1);
        }
        if (moeh_i64map_put(&e->map, id_key(e->ids[r], l), (uint32_t)r))
            return moeh_errf(err, -ENOMEM, "%s: out of memory", e->path);
        for (size_t d = 0; d < e->D; d++)
            if (!isfinite(e->vec[r * e->D + d]))
                return moeh_errf(err, -EBADMSG,
                                 "%s: row %zu (%s '%s', %s:%zu) column %zu is %g, expected a "
                                 "finite value",
                                 e->path, r, k_key[k], e->ids[r], e->ids_path, r + 1, d,
                                 (double)e->vec[r * e->D + d]);
    }
    /* the description: X.json (optional) plus what moeh knows of the file */
    rc = moeh_file_read_all(jpath, (size_t)1 << 20, &jtxt, &jlen, err);
    if (rc && rc != -ENOENT) return rc;
    if (!rc) {
        side = cJSON_Parse(jtxt);
        free(jtxt);
        if (!cJSON_IsObject(side)) {
            cJSON_Delete(side);
            return moeh_errf(err, -EBADMSG, "%s: not a JSON object (the description of %s)", jpath,
                             e->path);
        }
        const cJSON *dim = cJSON_GetObjectItemCaseSensitive(side, "dim");
        if (dim && (!cJSON_IsNumber(dim) || dim->valuedouble != (double)e->D)) {
            double dv = cJSON_IsNumber(dim) ? dim->valuedouble : -1;
            cJSON_Delete(side);
            return moeh_errf(err, -EBADMSG, "%s says dim %g, %s has %zu columns", jpath, dv,
                             e->path, e->D);
        }
    }
    e->info = side ? side : cJSON_CreateObject();
    char hx[17];
    snprintf(hx, sizeof hx, "%016llx",
             (unsigned long long)XXH64(e->vec, e->K * e->D * sizeof(float), 0));
    static const char *const own[] = {"dim",     "source", "ids",    "source_xxh64",
                                      "vectors", "key",    "pooling"};
    for (size_t i = 0; e->info && i < sizeof own / sizeof own[0]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(e->info, own[i]);
    if (!e->info || !cJSON_AddStringToObject(e->info, "source", e->path) ||
        !cJSON_AddStringToObject(e->info, "ids", e->ids_path) ||
        !cJSON_AddStringToObject(e->info, "source_xxh64", hx) ||
        !cJSON_AddNumberToObject(e->info, "vectors", (double)e->K) ||
        !cJSON_AddStringToObject(e->info, "key", k_key[k]) ||
        !cJSON_AddStringToObject(e->info, "pooling",
                                 k ? "mean over the admission's AP/PA images in the window"
                                   : "mean over the admission's radiology notes in the window"))
        return moeh_errf(err, -ENOMEM, "%s: out of memory", e->path);
    if (!cJSON_GetObjectItemCaseSensitive(e->info, "model"))
        cJSON_AddStringToObject(e->info, "model", "unspecified (no description file)");
    MOEH_INFO("%s: %zu vectors of width %zu", e->path, e->K, e->D);
    return 0;
}

int emb_attach(ctx_t *c, int k, moeh_err_t *err)
{
    emb_t *e = &c->emb[k];
    int rc = moeh_dataset_add_vectors(c->ds, k ? MOEH_MOD_IMG : MOEH_MOD_NOTES, e->D, e->info, err);
    if (rc) return rc;
    if (!(e->cnt = calloc(c->n + 1, sizeof *e->cnt)))
        return moeh_errf(err, -ENOMEM, "%s: out of memory", e->path);
    return 0;
}

void emb_add(ctx_t *c, int k, size_t j, const char *id, size_t len, const char *what)
{
    emb_t *e = &c->emb[k];
    long r = emb_find(e, id, len);
    if (r < 0) {
        if (e->missing < 5)
            snprintf(e->first_missing[e->missing], sizeof e->first_missing[0],
                     "%s '%.*s' (hadm_id %lld)", what, (int)(len > 64 ? 64 : len), id,
                     (long long)c->ds->ids[2 * j + 1]);
        e->missing++;
        return;
    }
    float *dst = (k ? c->ds->img_vec : c->ds->note_vec) + j * e->D;
    const float *src = e->vec + (size_t)r * e->D;
    for (size_t d = 0; d < e->D; d++)
        dst[d] += src[d];
    e->used[r] = 1;
    e->cnt[j]++;
}

int emb_finish(ctx_t *c, int k, moeh_err_t *err)
{
    emb_t *e = &c->emb[k];
    if (e->missing) {
        char ex[600] = "";
        for (size_t i = 0; i < e->missing && i < 5; i++)
            snprintf(ex + strlen(ex), sizeof ex - strlen(ex), "%s%s", i ? ", " : "",
                     e->first_missing[i]);
        return moeh_errf(err, -ENOENT,
                         "%s %s: %zu %ss of the cohort's windows have no vector (every one "
                         "needs one; compute them and run again): %s%s",
                         k_flag[k], e->path, e->missing, k_item[k], ex,
                         e->missing > 5 ? ", ..." : "");
    }
    size_t unused = 0, first = 0;
    for (size_t r = e->K; r-- > 0;)
        if (!e->used[r]) unused++, first = r;
    c->st->vec_unused[k] = unused;
    if (unused && c->o->strict)
        return moeh_errf(err, -EBADMSG,
                         "%s:%zu: %s '%s' matches no %s of the cohort's windows (%zu of %zu "
                         "vectors unused; --strict refuses them)",
                         e->ids_path, first + 1, k_key[k], e->ids[first], k_item[k], unused, e->K);
    if (unused)
        MOEH_WARN("%s: %zu of %zu vectors match no %s of the cohort's windows (e.g. %s '%s', "
                  "line %zu): ignored",
                  e->path, unused, e->K, k_item[k], k_key[k], e->ids[first], first + 1);
    float *v = k ? c->ds->img_vec : c->ds->note_vec;
    for (size_t j = 0; j < c->n; j++) {
        /* the modality is present where a vector is (for notes: where a note is, the same rows
         * since none lacks a vector) */
        c->ds->avail[MOEH_N_MODS * j + (k ? MOEH_MOD_IMG : MOEH_MOD_NOTES)] = e->cnt[j] > 0;
        if (!e->cnt[j]) continue;
        c->st->vec_rows[k]++;
        float inv = 1.0f / (float)e->cnt[j];
        for (size_t d = 0; d < e->D; d++)
            v[j * e->D + d] *= inv;
    }
    return 0;
}
