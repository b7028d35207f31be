/* safetensors.c - safetensors checkpoints of a parameter store and of MoE-Health
 * (see moeh_safetensors.h). Little-endian hosts only (asserted at save/load). */
#include "moeh_safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

static int little_endian(void)
{
    uint16_t x = 1;
    return *(uint8_t *)&x == 1;
}

int moeh_safetensors_pack(const cJSON *root, size_t data_len, char **buf, size_t *total,
                          char **data)
{
    *buf = *data = NULL;
    char *hdr = cJSON_PrintUnformatted(root);
    if (!hdr) return -ENOMEM;
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7; /* spaces pad to 8 bytes */
    *total = 8 + padded + data_len;
    if (!(*buf = malloc(*total))) {
        free(hdr);
        return -ENOMEM;
    }
    uint64_t h64 = padded;
    memcpy(*buf, &h64, 8);
    memcpy(*buf + 8, hdr, hl);
    memset(*buf + 8 + hl, ' ', padded - hl);
    *data = *buf + 8 + padded;
    free(hdr);
    return 0;
}

int moeh_safetensors_parse(const char *path, const char *buf, size_t len, cJSON **root,
                           const char **data, size_t *dlen, moeh_err_t *err)
{
    MOEH_ASSERT(little_endian());
    *root = NULL;
    uint64_t hl;
    if (len < 8)
        return moeh_errf(err, -EINVAL,
                         "%s: not a safetensors file (%zu bytes: too short for its header)", path,
                         len);
    memcpy(&hl, buf, 8);
    if (hl > MOEH_SAFETENSORS_MAX_HEADER || hl > len - 8)
        return moeh_errf(err, -EINVAL, "%s: header length %" PRIu64 " exceeds the file (%zu bytes)",
                         path, hl, len);
    const char *hend = NULL;
    cJSON *r = cJSON_ParseWithLengthOpts(buf + 8, (size_t)hl, &hend, 0);
    if (!r || !cJSON_IsObject(r)) {
        cJSON_Delete(r);
        return moeh_errf(err, -EINVAL, "%s: the header is not a JSON object", path);
    }
    for (const char *q = hend; q < buf + 8 + hl; q++)
        if (*q != ' ' && *q != '\0') {
            cJSON_Delete(r);
            return moeh_errf(err, -EINVAL, "%s: text after the header's JSON object", path);
        }
    *root = r;
    *data = buf + 8 + hl;
    *dlen = len - 8 - (size_t)hl;
    return 0;
}

int moeh_safetensors_save(const moeh_params_t *p, const char *path, const char *const *meta_keys,
                          const char *const *meta_vals, size_t n_meta, moeh_err_t *err)
{
    MOEH_ASSERT(little_endian());
    if (!p->finalized) return moeh_errf(err, -EINVAL, "safetensors: parameter store not finalized");
    int rc = -ENOMEM;
    char *buf = NULL, *data;
    cJSON *root = cJSON_CreateObject();
    if (!root) goto out;
    if (n_meta) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        if (!meta) goto out;
        for (size_t i = 0; i < n_meta; i++)
            if (!cJSON_AddStringToObject(meta, meta_keys[i], meta_vals[i])) goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < p->n_views; i++) {
        const moeh_param_view_t *v = &p->views[i];
        cJSON *t = cJSON_AddObjectToObject(root, v->name);
        cJSON *shape = t ? cJSON_AddArrayToObject(t, "shape") : NULL;
        cJSON *offs = shape ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        if (!offs || !cJSON_AddStringToObject(t, "dtype", "F32")) goto out;
        for (size_t d = 0; d < v->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)v->shape[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + v->numel * 4)));
        off += v->numel * 4;
    }
    size_t total;
    if (moeh_safetensors_pack(root, off, &buf, &total, &data) != 0) goto out;
    for (size_t i = 0; i < p->n_views; i++) { /* in view order, as the offsets above */
        const moeh_param_view_t *v = &p->views[i];
        memcpy(data, p->w + v->offset, v->numel * 4);
        data += v->numel * 4;
    }
    rc = moeh_file_write_atomic(path, buf, total, err);
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "safetensors: out of memory writing %s", path);
    cJSON_Delete(root);
    free(buf);
    return rc;
}

/* Appends to a bounded message. */
static void add_msg(char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_msg(char *msg, size_t cap, const char *fmt, ...)
{
    size_t l = strlen(msg);
    if (l + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + l, cap - l, fmt, ap);
    va_end(ap);
}

int moeh_safetensors_load(moeh_params_t *p, const char *path, char **meta_json, moeh_err_t *err)
{
    MOEH_ASSERT(little_endian());
    if (meta_json) *meta_json = NULL;
    char *buf = NULL;
    size_t len = 0;
    size_t max = 8 + MOEH_SAFETENSORS_MAX_HEADER + p->n * 4 + 1;
    int rc = moeh_file_read_all(path, max, &buf, &len, err);
    if (rc) return rc;
    cJSON *root = NULL;
    size_t *off0 = NULL;
    char diff[MOEH_ERRMSG_MAX] = "";
    size_t ndiff = 0;
    const char *data;
    size_t dlen;
    if ((rc = moeh_safetensors_parse(path, buf, len, &root, &data, &dlen, err))) goto out;
    rc = -EINVAL;
    if (!(off0 = calloc(p->n_views ? p->n_views : 1, sizeof *off0))) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    uint8_t *seen = (uint8_t *)calloc(p->n_views ? p->n_views : 1, 1);
    if (!seen) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (cJSON *t = root->child; t; t = t->next) {
        if (strcmp(t->string, "__metadata__") == 0) continue;
        int vi = moeh_params_find(p, t->string);
        if (vi < 0) {
            add_msg(diff, sizeof diff, "%sunexpected tensor %s", ndiff++ ? "; " : "", t->string);
            continue;
        }
        const moeh_param_view_t *v = &p->views[vi];
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) ||
            cJSON_GetArraySize(of) != 2) {
            add_msg(diff, sizeof diff, "%s%s: malformed entry", ndiff++ ? "; " : "", t->string);
            continue;
        }
        if (strcmp(dt->valuestring, "F32") != 0) {
            add_msg(diff, sizeof diff, "%s%s: dtype %s, expected F32", ndiff++ ? "; " : "",
                    t->string, dt->valuestring);
            continue;
        }
        int same = (size_t)cJSON_GetArraySize(sh) == v->ndim;
        for (size_t d = 0; same && d < v->ndim; d++)
            same = cJSON_GetArrayItem(sh, (int)d)->valuedouble == (double)v->shape[d];
        if (!same) {
            char fs[96] = "", ms[96] = "";
            for (int d = 0; d < cJSON_GetArraySize(sh); d++)
                add_msg(fs, sizeof fs, "%s%.0f", d ? "," : "",
                        cJSON_GetArrayItem(sh, d)->valuedouble);
            for (size_t d = 0; d < v->ndim; d++)
                add_msg(ms, sizeof ms, "%s%zu", d ? "," : "", v->shape[d]);
            add_msg(diff, sizeof diff, "%s%s: shape [%s] in file, [%s] in model",
                    ndiff++ ? "; " : "", t->string, fs, ms);
            continue;
        }
        double b0 = cJSON_GetArrayItem(of, 0)->valuedouble,
               b1 = cJSON_GetArrayItem(of, 1)->valuedouble;
        if (b0 < 0 || b1 < b0 || b1 > (double)dlen || b1 - b0 != (double)(v->numel * 4)) {
            add_msg(diff, sizeof diff, "%s%s: data_offsets [%.0f,%.0f] invalid (data %zu bytes)",
                    ndiff++ ? "; " : "", t->string, b0, b1, dlen);
            continue;
        }
        off0[vi] = (size_t)b0;
        seen[vi] = 1;
    }
    for (size_t i = 0; i < p->n_views; i++)
        if (!seen[i])
            add_msg(diff, sizeof diff, "%smissing tensor %s", ndiff++ ? "; " : "",
                    p->views[i].name);
    /* values must be finite before anything touches the model */
    for (size_t i = 0; i < p->n_views && !ndiff; i++) {
        const float *src = (const float *)(const void *)(data + off0[i]);
        float x;
        for (size_t j = 0; j < p->views[i].numel; j++) {
            memcpy(&x, src + j, 4);
            if (!isfinite(x)) {
                add_msg(diff, sizeof diff, "%s[%zu] is not finite", p->views[i].name, j);
                ndiff++;
                break;
            }
        }
    }
    free(seen);
    if (ndiff) {
        moeh_errf(err, -EINVAL, "%s: %zu difference(s) from the model: %s", path, ndiff, diff);
        goto out;
    }
    for (size_t i = 0; i < p->n_views; i++)
        memcpy(p->w + p->views[i].offset, data + off0[i], p->views[i].numel * 4);
    if (meta_json) {
        cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
        if (meta && !(*meta_json = cJSON_PrintUnformatted(meta))) {
            rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    free(off0);
    free(buf);
    return rc;
}

int moeh_moe_save(moeh_moe_t *m, const char *path, moeh_err_t *err)
{
    char *cfg = NULL;
    int rc = moeh_moe_cfg_to_json(moeh_moe_cfg(m), &cfg, err);
    if (rc) return rc;
    char hash[32];
    snprintf(hash, sizeof hash, "%016" PRIx64, moeh_params_spec_hash(moeh_moe_params(m)));
    const char *keys[] = {"format", "moeh_config", "moeh_spec_hash"};
    const char *vals[] = {"pt", cfg, hash};
    rc = moeh_safetensors_save(moeh_moe_params(m), path, keys, vals, 3, err);
    free(cfg);
    return rc;
}

int moeh_moe_load(moeh_moe_t *m, const char *path, moeh_err_t *err)
{
    moeh_params_t *p = moeh_moe_params(m);
    /* load into a scratch copy first so that a config mismatch leaves m untouched */
    float *keep = malloc(p->n * sizeof(float));
    if (!keep) return moeh_errf(err, -ENOMEM, "out of memory");
    memcpy(keep, p->w, p->n * sizeof(float));
    char *meta = NULL;
    int rc = moeh_safetensors_load(p, path, &meta, err);
    if (rc == 0 && meta) {
        cJSON *mo = cJSON_Parse(meta);
        cJSON *cs = cJSON_GetObjectItemCaseSensitive(mo, "moeh_config");
        moeh_moe_cfg_t fc;
        if (cJSON_IsString(cs) && moeh_moe_cfg_from_json(cs->valuestring, &fc, err) == 0) {
            char diff[MOEH_ERRMSG_MAX] = "";
            if (moeh_moe_cfg_diff(&fc, moeh_moe_cfg(m), "file", "model", diff, sizeof diff)) {
                rc = moeh_errf(err, -EINVAL, "%s: model config differs:%s", path, diff);
                memcpy(p->w, keep, p->n * sizeof(float));
            }
        } else if (cJSON_IsString(cs)) {
            rc = -EINVAL; /* err says why the stored config does not parse */
            memcpy(p->w, keep, p->n * sizeof(float));
        }
        cJSON_Delete(mo);
    }
    free(meta);
    free(keep);
    return rc;
}
