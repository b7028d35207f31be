/* modelfile.c - the self-describing model file: a safetensors file with every parameter, the
 * normalisation statistics and metadata that says what the model is and where it came from
 * (see moeh_modelfile.h and docs/model-file.md). Little-endian hosts only (asserted). */
#include "moeh_modelfile.h"
#include "moeh_safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#ifndef MOEH_GIT_VERSION
#define MOEH_GIT_VERSION "unknown"
#endif

#define MF_MAX_FILE ((size_t)1 << 34)

const char *moeh_modelfile_git_version(void)
{
    return MOEH_GIT_VERSION;
}

static int little_endian(void)
{
    uint16_t x = 1;
    return *(uint8_t *)&x == 1;
}

/* ---- writing ---- */

/* Adds one F32 tensor entry {dtype, shape, data_offsets} at byte offset *off. */
static bool add_tensor(cJSON *root, const char *name, size_t ndim, const size_t *shape,
                       size_t numel, size_t *off)
{
    cJSON *t = cJSON_AddObjectToObject(root, name);
    cJSON *sh =
        t && cJSON_AddStringToObject(t, "dtype", "F32") ? cJSON_AddArrayToObject(t, "shape") : NULL;
    cJSON *of = sh ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
    if (!of) return false;
    for (size_t d = 0; d < ndim; d++)
        if (!cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shape[d]))) return false;
    if (!cJSON_AddItemToArray(of, cJSON_CreateNumber((double)*off)) ||
        !cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(*off + numel * 4))))
        return false;
    *off += numel * 4;
    return true;
}

/* Adds key: JSON text of item (deleted) to meta. */
static bool add_json_string(cJSON *meta, const char *key, cJSON *item)
{
    char *txt = item ? cJSON_PrintUnformatted(item) : NULL;
    bool ok = txt && cJSON_AddStringToObject(meta, key, txt);
    cJSON_free(txt);
    cJSON_Delete(item);
    return ok;
}

static cJSON *string_array(const char *const *s, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && s && i < n; i++)
        if (!cJSON_AddItemToArray(a, cJSON_CreateString(s[i] ? s[i] : ""))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

/* The metadata object (every value a string). NULL when out of memory. */
static cJSON *build_meta(const moeh_moe_cfg_t *cfg, const char *cfg_json, uint64_t hash,
                         const moeh_modelfile_info_t *info)
{
    char hex[32];
    snprintf(hex, sizeof hex, "%016" PRIx64, hash);
    cJSON *meta = cJSON_CreateObject();
    bool ok = meta && cJSON_AddStringToObject(meta, "moeh_format", MOEH_MODELFILE_FORMAT) &&
              cJSON_AddStringToObject(meta, "format", "pt") &&
              cJSON_AddStringToObject(meta, "moeh_config", cfg_json) &&
              cJSON_AddStringToObject(meta, "moeh_spec_hash", hex);
    cJSON *shape = cJSON_CreateObject();
    ok = ok && shape && cJSON_AddNumberToObject(shape, "n_static", (double)cfg->n_static) &&
         cJSON_AddNumberToObject(shape, "n_vars", (double)cfg->n_vars) &&
         cJSON_AddNumberToObject(shape, "n_steps", (double)cfg->n_steps) &&
         cJSON_AddNumberToObject(shape, "image_size", (double)cfg->img_size);
    ok = add_json_string(meta, "data_shape", shape) && ok;
    ok = ok &&
         add_json_string(meta, "static_features",
                         string_array(info->static_names, info->static_names ? cfg->n_static : 0));
    cJSON *ts = cJSON_CreateArray();
    for (size_t i = 0; ok && ts && info->ts_names && i < cfg->n_vars; i++) {
        cJSON *v = cJSON_CreateObject();
        ok = v && cJSON_AddItemToArray(ts, v) &&
             cJSON_AddStringToObject(v, "name", info->ts_names[i] ? info->ts_names[i] : "") &&
             cJSON_AddStringToObject(v, "unit",
                                     info->ts_units && info->ts_units[i] ? info->ts_units[i] : "");
    }
    ok = add_json_string(meta, "ts_features", ts) && ok;
    ok = ok && add_json_string(meta, "tasks", string_array(moeh_task_names, MOEH_N_TASKS)) &&
         add_json_string(meta, "modalities", string_array(moeh_mod_names, MOEH_N_MODS)) &&
         add_json_string(meta, "combinations", string_array(moeh_combo_names, MOEH_N_COMBOS));
    const moeh_modelfile_prov_t *pv = &info->prov;
    cJSON *p = cJSON_CreateObject();
    ok = ok && p && cJSON_AddStringToObject(p, "source", pv->source ? pv->source : "") &&
         cJSON_AddNumberToObject(p, "rounds", pv->rounds) &&
         cJSON_AddNumberToObject(p, "selected_round", pv->selected_round) &&
         cJSON_AddNumberToObject(p, "sites", pv->sites) &&
         cJSON_AddStringToObject(p, "strategy", pv->strategy ? pv->strategy : "") &&
         cJSON_AddBoolToObject(p, "secure_aggregation", pv->secagg) &&
         (isfinite(pv->dp_epsilon) ? cJSON_AddNumberToObject(p, "dp_epsilon", pv->dp_epsilon)
                                   : cJSON_AddNullToObject(p, "dp_epsilon")) &&
         cJSON_AddStringToObject(p, "git_version", MOEH_GIT_VERSION);
    ok = add_json_string(meta, "provenance", p) && ok;
    if (!ok) {
        cJSON_Delete(meta);
        return NULL;
    }
    return meta;
}

int moeh_modelfile_write(const char *path, moeh_moe_t *m, const moeh_modelfile_info_t *info,
                         moeh_err_t *err)
{
    MOEH_ASSERT(little_endian());
    const moeh_moe_cfg_t *cfg = moeh_moe_cfg(m);
    const moeh_params_t *p = moeh_moe_params(m);
    size_t nn = cfg->n_static + cfg->n_vars;
    for (size_t i = 0; i < nn; i++)
        if (!isfinite(info->mean[i]) || !isfinite(info->std[i]) || !(info->std[i] > 0))
            return moeh_errf(err, -EINVAL,
                             "%s: normalisation of feature %zu: mean %g, std %g (expected finite, "
                             "std > 0)",
                             path, i, (double)info->mean[i], (double)info->std[i]);
    for (size_t i = 0; i < p->n; i++)
        if (!isfinite(p->w[i]))
            return moeh_errf(err, -EINVAL, "%s: parameter %zu is not finite", path, i);
    char *cfg_json = NULL, *buf = NULL, *d;
    int rc = moeh_moe_cfg_to_json(cfg, &cfg_json, err);
    if (rc) return rc;
    rc = -ENOMEM;
    cJSON *root = cJSON_CreateObject(), *meta = NULL;
    if (!root || !(meta = build_meta(cfg, cfg_json, moeh_params_spec_hash(p), info))) goto out;
    cJSON_AddItemToObject(root, "__metadata__", meta);
    size_t off = 0;
    for (size_t i = 0; i < p->n_views; i++) {
        const moeh_param_view_t *v = &p->views[i];
        if (!add_tensor(root, v->name, v->ndim, v->shape, v->numel, &off)) goto out;
    }
    if (!add_tensor(root, "norm.mean", 1, &nn, nn, &off) ||
        !add_tensor(root, "norm.std", 1, &nn, nn, &off))
        goto out;
    size_t total;
    if (moeh_safetensors_pack(root, off, &buf, &total, &d) != 0) goto out;
    for (size_t i = 0; i < p->n_views; i++) { /* in the order of the offsets above */
        memcpy(d, p->w + p->views[i].offset, p->views[i].numel * 4);
        d += p->views[i].numel * 4;
    }
    memcpy(d, info->mean, nn * 4);
    memcpy(d + nn * 4, info->std, nn * 4);
    rc = moeh_file_write_atomic(path, buf, total, err);
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "%s: out of memory writing the model file", path);
    cJSON_Delete(root);
    free(cfg_json);
    free(buf);
    return rc;
}

/* ---- reading ---- */

typedef struct {
    const char *name;
    size_t ndim, shape[MOEH_PARAM_MAX_DIMS], numel;
    size_t begin, end;
    int used;
} entry_t;

/* A JSON number that is a non-negative integer below 2^53. */
static int as_size(const cJSON *x, size_t *out)
{
    if (!cJSON_IsNumber(x)) return -1;
    double v = x->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v)) return -1;
    *out = (size_t)v;
    return 0;
}

/* Parses one tensor entry; 0 or -EINVAL with err naming it. */
static int parse_entry(const char *path, cJSON *t, size_t dlen, entry_t *e, moeh_err_t *err)
{
    e->name = t->string;
    if (!cJSON_IsObject(t))
        return moeh_errf(err, -EINVAL, "%s: tensor %s: expected an object", path, t->string);
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
    cJSON *of = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    if (!cJSON_IsString(dt))
        return moeh_errf(err, -EINVAL, "%s: tensor %s: dtype missing", path, t->string);
    if (strcmp(dt->valuestring, "F32") != 0)
        return moeh_errf(err, -EINVAL, "%s: tensor %s: dtype %s, expected F32", path, t->string,
                         dt->valuestring);
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > MOEH_PARAM_MAX_DIMS)
        return moeh_errf(err, -EINVAL,
                         "%s: tensor %s: shape: expected an array of at most %d "
                         "sizes",
                         path, t->string, MOEH_PARAM_MAX_DIMS);
    e->ndim = (size_t)cJSON_GetArraySize(sh);
    e->numel = 1;
    for (size_t d = 0; d < e->ndim; d++) {
        if (as_size(cJSON_GetArrayItem(sh, (int)d), &e->shape[d]) || e->shape[d] > (1u << 30))
            return moeh_errf(err, -EINVAL, "%s: tensor %s: shape[%zu] is not a size", path,
                             t->string, d);
        e->numel *= e->shape[d];
    }
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 ||
        as_size(cJSON_GetArrayItem(of, 0), &e->begin) ||
        as_size(cJSON_GetArrayItem(of, 1), &e->end))
        return moeh_errf(err, -EINVAL, "%s: tensor %s: data_offsets: expected [begin, end]", path,
                         t->string);
    if (e->end < e->begin)
        return moeh_errf(err, -EINVAL, "%s: tensor %s: data_offsets [%zu,%zu]: end before begin",
                         path, t->string, e->begin, e->end);
    if (e->end > dlen)
        return moeh_errf(err, -EINVAL,
                         "%s: tensor %s: data_offsets [%zu,%zu] outside the data (%zu bytes)", path,
                         t->string, e->begin, e->end, dlen);
    if (e->end - e->begin != e->numel * 4)
        return moeh_errf(
            err, -EINVAL,
            "%s: tensor %s: data_offsets [%zu,%zu] hold %zu bytes, its shape needs %zu", path,
            t->string, e->begin, e->end, e->end - e->begin, e->numel * 4);
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* The string value of metadata key, or NULL with err set. */
static const char *meta_str(const char *path, const cJSON *meta, const char *key, moeh_err_t *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (!cJSON_IsString(v)) {
        moeh_errf(err, -EINVAL, "%s: __metadata__.%s: missing or not a string", path, key);
        return NULL;
    }
    return v->valuestring;
}

/* Parses the JSON text in metadata key; NULL with err set. Caller deletes. */
static cJSON *meta_json(const char *path, const cJSON *meta, const char *key, moeh_err_t *err)
{
    const char *s = meta_str(path, meta, key, err);
    if (!s) return NULL;
    cJSON *j = cJSON_Parse(s);
    if (!j) moeh_errf(err, -EINVAL, "%s: __metadata__.%s: not valid JSON", path, key);
    return j;
}

static char **str_list(size_t n)
{
    return calloc(n ? n : 1, sizeof(char *));
}

/* Copies ns static feature names (the strings of st) and nt hourly variables (the {"name",
 * "unit"} objects of ts; a missing unit reads as "" if unit_optional) into the lists *sn, *tn
 * and *tu (allocated here, freed by the caller even on failure), counting the names copied in
 * *n_sn and *n_tn. 0, -ENOMEM, or -EINVAL with err naming path, key_prefix (e.g.
 * "__metadata__.") and the item. */
static int copy_names(const char *path, const char *key_prefix, const cJSON *st, size_t ns,
                      const cJSON *ts, size_t nt, int unit_optional, char ***sn, size_t *n_sn,
                      char ***tn, char ***tu, size_t *n_tn, moeh_err_t *err)
{
    if (!(*sn = str_list(ns)) || !(*tn = str_list(nt)) || !(*tu = str_list(nt))) return -ENOMEM;
    for (size_t i = 0; i < ns; i++) {
        cJSON *s = cJSON_GetArrayItem(st, (int)i);
        if (!cJSON_IsString(s))
            return moeh_errf(err, -EINVAL, "%s: %sstatic_features[%zu]: not a string", path,
                             key_prefix, i);
        if (!((*sn)[i] = strdup(s->valuestring))) return -ENOMEM;
        *n_sn = i + 1;
    }
    for (size_t i = 0; i < nt; i++) {
        cJSON *v = cJSON_GetArrayItem(ts, (int)i);
        cJSON *nm = cJSON_GetObjectItemCaseSensitive(v, "name");
        cJSON *un = cJSON_GetObjectItemCaseSensitive(v, "unit");
        if (!cJSON_IsString(nm) || (!cJSON_IsString(un) && (un || !unit_optional)))
            return moeh_errf(err, -EINVAL, "%s: %sts_features[%zu]: expected {\"name\", \"unit\"}",
                             path, key_prefix, i);
        if (!((*tn)[i] = strdup(nm->valuestring)) ||
            !((*tu)[i] = strdup(un ? un->valuestring : "")))
            return -ENOMEM;
        *n_tn = i + 1;
    }
    return 0;
}

/* The __metadata__ list key into *out (the caller deletes it) and its length into *n: want
 * entries (what they are: "names"), or none. 0, or -EINVAL with err. */
static int meta_names(const char *path, const cJSON *meta, const char *key, size_t want,
                      const char *what, cJSON **out, size_t *n, moeh_err_t *err)
{
    if (!(*out = meta_json(path, meta, key, err))) return -EINVAL;
    *n = cJSON_IsArray(*out) ? (size_t)cJSON_GetArraySize(*out) : SIZE_MAX;
    if (*n != 0 && *n != want)
        return moeh_errf(err, -EINVAL, "%s: __metadata__.%s: expected %zu %s (or none)", path, key,
                         want, what);
    return 0;
}

/* Checks the metadata against the config and fills the names and provenance of mf. */
static int read_meta(const char *path, const cJSON *meta, moeh_modelfile_t *mf, moeh_err_t *err)
{
    const moeh_moe_cfg_t *c = &mf->cfg;
    int rc = -EINVAL;
    cJSON *shape = NULL, *names = NULL, *ts = NULL, *prov = NULL, *list = NULL;
    if (!(shape = meta_json(path, meta, "data_shape", err))) goto out;
    const char *keys[4] = {"n_static", "n_vars", "n_steps", "image_size"};
    size_t want[4] = {c->n_static, c->n_vars, c->n_steps, c->img_size};
    for (size_t k = 0; k < 4; k++) {
        size_t v;
        if (as_size(cJSON_GetObjectItemCaseSensitive(shape, keys[k]), &v) || v != want[k]) {
            moeh_errf(err, rc, "%s: __metadata__.data_shape.%s: expected %zu (moeh_config)", path,
                      keys[k], want[k]);
            goto out;
        }
    }
    const char *lists[3] = {"tasks", "modalities", "combinations"};
    const char *const *ref[3] = {moeh_task_names, moeh_mod_names, moeh_combo_names};
    const size_t n_ref[3] = {MOEH_N_TASKS, MOEH_N_MODS, MOEH_N_COMBOS};
    for (size_t k = 0; k < 3; k++) {
        if (!(list = meta_json(path, meta, lists[k], err))) goto out;
        int same = cJSON_IsArray(list) && (size_t)cJSON_GetArraySize(list) == n_ref[k];
        for (size_t i = 0; same && i < n_ref[k]; i++) {
            cJSON *s = cJSON_GetArrayItem(list, (int)i);
            same = cJSON_IsString(s) && !strcmp(s->valuestring, ref[k][i]);
        }
        cJSON_Delete(list);
        list = NULL;
        if (!same) {
            moeh_errf(err, rc,
                      "%s: __metadata__.%s differs from this build's schema "
                      "(data/moeh_schema.h)",
                      path, lists[k]);
            goto out;
        }
    }
    size_t ns, nt;
    if (meta_names(path, meta, "static_features", c->n_static, "names", &names, &ns, err) ||
        meta_names(path, meta, "ts_features", c->n_vars, "variables", &ts, &nt, err))
        goto out;
    rc = copy_names(path, "__metadata__.", names, ns, ts, nt, 0, &mf->static_names,
                    &mf->n_static_names, &mf->ts_names, &mf->ts_units, &mf->n_ts_names, err);
    if (rc == -ENOMEM) goto oom;
    if (rc) goto out;
    rc = -EINVAL;
    if (!(prov = meta_json(path, meta, "provenance", err))) goto out;
    cJSON *src = cJSON_GetObjectItemCaseSensitive(prov, "source");
    cJSON *st = cJSON_GetObjectItemCaseSensitive(prov, "strategy");
    cJSON *gv = cJSON_GetObjectItemCaseSensitive(prov, "git_version");
    cJSON *sa = cJSON_GetObjectItemCaseSensitive(prov, "secure_aggregation");
    cJSON *eps = cJSON_GetObjectItemCaseSensitive(prov, "dp_epsilon");
    size_t r, sr, ns2;
    if (!cJSON_IsObject(prov) || !cJSON_IsString(src) || !cJSON_IsString(st) ||
        !cJSON_IsString(gv) || !cJSON_IsBool(sa) || !(cJSON_IsNull(eps) || cJSON_IsNumber(eps)) ||
        as_size(cJSON_GetObjectItemCaseSensitive(prov, "rounds"), &r) || r > UINT32_MAX ||
        as_size(cJSON_GetObjectItemCaseSensitive(prov, "selected_round"), &sr) || sr > r ||
        as_size(cJSON_GetObjectItemCaseSensitive(prov, "sites"), &ns2) || ns2 > UINT32_MAX) {
        moeh_errf(err, rc,
                  "%s: __metadata__.provenance: expected {source, rounds, selected_round <= "
                  "rounds, sites, strategy, secure_aggregation, dp_epsilon, git_version}",
                  path);
        goto out;
    }
    snprintf(mf->source, sizeof mf->source, "%s", src->valuestring);
    snprintf(mf->strategy, sizeof mf->strategy, "%s", st->valuestring);
    snprintf(mf->git_version, sizeof mf->git_version, "%s", gv->valuestring);
    mf->rounds = (uint32_t)r, mf->selected_round = (uint32_t)sr, mf->sites = (uint32_t)ns2;
    mf->secagg = cJSON_IsTrue(sa);
    mf->dp_epsilon = cJSON_IsNumber(eps) ? eps->valuedouble : NAN;
    rc = 0;
    goto out;
oom:
    rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
out:
    cJSON_Delete(shape);
    cJSON_Delete(names);
    cJSON_Delete(ts);
    cJSON_Delete(prov);
    cJSON_Delete(list);
    return rc;
}

/* Copies n floats from src to dst; -EINVAL naming the first non-finite one. */
static int copy_finite(const char *path, const char *name, float *dst, const char *src, size_t n,
                       moeh_err_t *err)
{
    memcpy(dst, src, n * 4);
    for (size_t j = 0; j < n; j++)
        if (!isfinite(dst[j]))
            return moeh_errf(err, -EINVAL, "%s: tensor %s[%zu] is not finite", path, name, j);
    return 0;
}

int moeh_modelfile_read(const char *path, size_t max_batch, moeh_modelfile_t **out, moeh_err_t *err)
{
    MOEH_ASSERT(little_endian());
    char *buf = NULL;
    size_t len = 0, n_ent = 0;
    cJSON *root = NULL;
    entry_t *ent = NULL;
    moeh_modelfile_t *mf = NULL;
    int rc = moeh_file_read_all(path, MF_MAX_FILE, &buf, &len, err);
    if (rc) return rc;
    const char *data;
    size_t dlen;
    if ((rc = moeh_safetensors_parse(path, buf, len, &root, &data, &dlen, err))) goto out;
    rc = -EINVAL;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    if (!cJSON_IsObject(meta)) {
        moeh_errf(err, rc, "%s: no __metadata__: not a moeh model file", path);
        goto out;
    }
    for (const cJSON *m = meta->child; m; m = m->next)
        if (!cJSON_IsString(m)) {
            moeh_errf(err, rc, "%s: __metadata__.%s: not a string", path, m->string);
            goto out;
        }
    const char *fmt = meta_str(path, meta, "moeh_format", err);
    if (!fmt) goto out;
    if (strcmp(fmt, MOEH_MODELFILE_FORMAT) != 0) {
        moeh_errf(err, rc, "%s: __metadata__.moeh_format '%s', expected '%s'", path, fmt,
                  MOEH_MODELFILE_FORMAT);
        goto out;
    }
    /* the tensor entries: parsed, then sorted by offset so that overlaps and gaps show */
    for (const cJSON *t = root->child; t; t = t->next)
        n_ent += strcmp(t->string, "__metadata__") != 0;
    if (!(ent = calloc(n_ent ? n_ent : 1, sizeof *ent)) || !(mf = calloc(1, sizeof *mf))) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t k = 0;
    for (cJSON *t = root->child; t; t = t->next)
        if (strcmp(t->string, "__metadata__") != 0 &&
            (rc = parse_entry(path, t, dlen, &ent[k++], err)))
            goto out;
    rc = -EINVAL;
    qsort(ent, n_ent, sizeof *ent, cmp_begin);
    size_t at = 0;
    for (k = 0; k < n_ent; k++) {
        if (ent[k].begin < at) {
            moeh_errf(err, rc, "%s: tensor %s: data_offsets [%zu,%zu] overlap tensor %s", path,
                      ent[k].name, ent[k].begin, ent[k].end, ent[k - 1].name);
            goto out;
        }
        if (ent[k].begin > at) {
            moeh_errf(err, rc, "%s: tensor %s: data_offsets [%zu,%zu] leave bytes %zu..%zu unused",
                      path, ent[k].name, ent[k].begin, ent[k].end, at, ent[k].begin);
            goto out;
        }
        at = ent[k].end;
    }
    if (at != dlen) {
        moeh_errf(err, rc, "%s: the tensors cover %zu of the %zu data bytes", path, at, dlen);
        goto out;
    }
    /* the model config, the model and its spec */
    const char *cj = meta_str(path, meta, "moeh_config", err);
    if (!cj) goto out;
    moeh_err_t e2 = {0};
    if (moeh_moe_cfg_from_json(cj, &mf->cfg, &e2) || moeh_moe_cfg_validate(&mf->cfg, &e2)) {
        moeh_errf(err, rc, "%s: __metadata__.moeh_config: %s", path, e2.msg);
        goto out;
    }
    if (max_batch) mf->cfg.max_batch = max_batch;
    mf->cfg.threads = 0;
    if ((rc = moeh_moe_create(&mf->cfg, &mf->model, err))) goto out;
    rc = -EINVAL;
    moeh_params_t *p = moeh_moe_params(mf->model);
    mf->spec_hash = moeh_params_spec_hash(p);
    const char *hs = meta_str(path, meta, "moeh_spec_hash", err);
    char want[32];
    snprintf(want, sizeof want, "%016" PRIx64, mf->spec_hash);
    if (!hs) goto out;
    if (strcmp(hs, want) != 0) {
        moeh_errf(err, rc, "%s: __metadata__.moeh_spec_hash %s, the config's layout gives %s", path,
                  hs, want);
        goto out;
    }
    if ((rc = read_meta(path, meta, mf, err))) goto out;
    rc = -EINVAL;
    /* every tensor: a parameter of the layout or the normalisation, with its shape */
    mf->n_norm = mf->cfg.n_static + mf->cfg.n_vars;
    if (!(mf->mean = malloc(mf->n_norm * 4 + 4)) || !(mf->std = malloc(mf->n_norm * 4 + 4))) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t found = 0;
    for (k = 0; k < n_ent; k++) {
        entry_t *e = &ent[k];
        int is_norm = !strcmp(e->name, "norm.mean") || !strcmp(e->name, "norm.std");
        int vi = is_norm ? -1 : moeh_params_find(p, e->name);
        if (!is_norm && vi < 0) {
            moeh_errf(err, rc, "%s: tensor %s: not a parameter of this model config", path,
                      e->name);
            goto out;
        }
        size_t ndim = is_norm ? 1 : p->views[vi].ndim;
        const size_t *shape = is_norm ? &mf->n_norm : p->views[vi].shape;
        int same = e->ndim == ndim;
        for (size_t d = 0; same && d < ndim; d++)
            same = e->shape[d] == shape[d];
        if (!same) {
            char sh[96] = "", fs[96] = "";
            for (size_t d = 0, l = 0; d < ndim && l < sizeof sh; d++)
                l += (size_t)snprintf(sh + l, sizeof sh - l, "%s%zu", d ? "," : "", shape[d]);
            for (size_t d = 0, l = 0; d < e->ndim && l < sizeof fs; d++)
                l += (size_t)snprintf(fs + l, sizeof fs - l, "%s%zu", d ? "," : "", e->shape[d]);
            moeh_errf(err, rc, "%s: tensor %s: shape [%s], the config's layout gives [%s]", path,
                      e->name, fs, sh);
            goto out;
        }
        float *dst = is_norm ? (e->name[5] == 'm' ? mf->mean : mf->std) : moeh_params_w(p, vi);
        if ((rc = copy_finite(path, e->name, dst, data + e->begin, e->numel, err))) goto out;
        rc = -EINVAL;
        found++;
    }
    if (found != p->n_views + 2) { /* names are unique JSON keys: something is missing */
        for (size_t i = 0; i < p->n_views; i++) {
            int seen = 0;
            for (k = 0; k < n_ent && !seen; k++)
                seen = !strcmp(ent[k].name, p->views[i].name);
            if (!seen) {
                moeh_errf(err, rc, "%s: tensor %s is missing", path, p->views[i].name);
                goto out;
            }
        }
        moeh_errf(err, rc, "%s: tensor norm.mean or norm.std is missing", path);
        goto out;
    }
    for (size_t i = 0; i < mf->n_norm; i++)
        if (!(mf->std[i] > 0)) {
            moeh_errf(err, rc, "%s: tensor norm.std[%zu] = %g: expected > 0", path, i,
                      (double)mf->std[i]);
            goto out;
        }
    rc = 0;
    *out = mf;
    mf = NULL;
out:
    moeh_modelfile_destroy(&mf);
    cJSON_Delete(root);
    free(ent);
    free(buf);
    return rc;
}

static void free_list(char ***l, size_t n)
{
    for (size_t i = 0; *l && i < n; i++)
        free((*l)[i]);
    free(*l);
    *l = NULL;
}

void moeh_modelfile_destroy(moeh_modelfile_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_modelfile_t *mf = *self_p;
    moeh_moe_destroy(&mf->model);
    free(mf->mean);
    free(mf->std);
    free_list(&mf->static_names, mf->n_static_names);
    free_list(&mf->ts_names, mf->n_ts_names);
    free_list(&mf->ts_units, mf->n_ts_names);
    free(mf);
    *self_p = NULL;
}

int moeh_modelfile_check_dataset(const moeh_modelfile_t *mf, const moeh_dataset_t *ds,
                                 const char *ds_name, moeh_err_t *err)
{
    const moeh_moe_cfg_t *c = &mf->cfg;
    if (ds->f_static != c->n_static || ds->f_ts != c->n_vars || ds->t != c->n_steps ||
        (c->img_size && ds->img_size != c->img_size))
        return moeh_errf(err, -EINVAL,
                         "%s does not fit the model: the model expects %zu static features, %zu "
                         "hourly variables over %zu hours and %zu x %zu images; the dataset has "
                         "%zu, %zu, %zu and %zu x %zu",
                         ds_name, c->n_static, c->n_vars, c->n_steps, c->img_size, c->img_size,
                         ds->f_static, ds->f_ts, ds->t, ds->img_size, ds->img_size);
    for (size_t i = 0; i < mf->n_static_names; i++) {
        const char *d = ds->static_names && ds->static_names[i] ? ds->static_names[i] : "";
        if (strcmp(mf->static_names[i], d) != 0)
            return moeh_errf(err, -EINVAL,
                             "%s does not fit the model: static feature %zu is '%s' in the model, "
                             "'%s' in the dataset",
                             ds_name, i, mf->static_names[i], d);
    }
    for (size_t i = 0; i < mf->n_ts_names; i++) {
        const char *d = ds->ts_names && ds->ts_names[i] ? ds->ts_names[i] : "";
        const char *u = ds->ts_units && ds->ts_units[i] ? ds->ts_units[i] : "";
        if (strcmp(mf->ts_names[i], d) != 0 || strcmp(mf->ts_units[i], u) != 0)
            return moeh_errf(err, -EINVAL,
                             "%s does not fit the model: hourly variable %zu is '%s' (%s) in the "
                             "model, '%s' (%s) in the dataset",
                             ds_name, i, mf->ts_names[i], mf->ts_units[i], d, u);
    }
    return 0;
}

void moeh_modelfile_names_free(moeh_modelfile_names_t *n)
{
    free_list(&n->static_names, n->n_static);
    free_list(&n->ts_names, n->n_vars);
    free_list(&n->ts_units, n->n_vars);
    n->n_static = n->n_vars = 0;
}

int moeh_modelfile_names_load(const char *path, moeh_modelfile_names_t *out, moeh_err_t *err)
{
    char file[4096], *txt = NULL;
    size_t len = strlen(path), tl;
    memset(out, 0, sizeof *out);
    if (len >= 9 && !strcmp(path + len - 9, "meta.json"))
        snprintf(file, sizeof file, "%s", path);
    else if (moeh_path_join(file, sizeof file, path, "meta.json"))
        return moeh_errf(err, -ENAMETOOLONG, "%s/meta.json: path too long", path);
    int rc = moeh_file_read_all(file, 64u << 20, &txt, &tl, err);
    if (rc) return rc;
    cJSON *j = cJSON_ParseWithLength(txt, tl);
    free(txt);
    cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "static_features");
    cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "ts_features");
    rc = -EINVAL;
    if (!cJSON_IsArray(st) || !cJSON_IsArray(ts)) {
        moeh_errf(err, rc, "%s: expected arrays static_features and ts_features", file);
        goto out;
    }
    size_t ns = (size_t)cJSON_GetArraySize(st), nv = (size_t)cJSON_GetArraySize(ts);
    rc = copy_names(file, "", st, ns, ts, nv, 1, &out->static_names, &out->n_static, &out->ts_names,
                    &out->ts_units, &out->n_vars, err);
    if (rc == -ENOMEM) moeh_errf(err, rc, "%s: out of memory", file);
out:
    cJSON_Delete(j);
    if (rc) moeh_modelfile_names_free(out);
    return rc;
}
