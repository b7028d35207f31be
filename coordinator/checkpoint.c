/* checkpoint.c - atomic coordinator checkpoints (see moeh_checkpoint.h). */
#include "moeh_checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define MAGIC "MOEHCKPT"

int moeh_ckpt_save(const char *path, const moeh_ckpt_t *c, moeh_err_t *err)
{
    int rc = -ENOMEM;
    char *hdr = NULL, hash[17];
    uint8_t *buf = NULL;
    cJSON *j = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!j || !arr) {
        cJSON_Delete(arr);
        goto out;
    }
    snprintf(hash, sizeof hash, "%016" PRIx64, c->spec_hash);
    cJSON_AddNumberToObject(j, "round", c->round);
    cJSON_AddNumberToObject(j, "model_version", (double)c->model_version);
    cJSON_AddStringToObject(j, "spec_hash", hash);
    cJSON_AddNumberToObject(j, "n_params", (double)c->n_params);
    cJSON_AddNumberToObject(j, "n_groups", (double)c->n_groups);
    for (size_t i = 0; i < c->n_arrays; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "name", c->names[i]);
        cJSON_AddNumberToObject(a, "count", (double)c->counts[i]);
        cJSON_AddItemToArray(arr, a);
    }
    cJSON_AddItemToObject(j, "arrays", arr);
    if (!(hdr = cJSON_PrintUnformatted(j))) goto out;
    uint32_t version = 1, hlen = (uint32_t)strlen(hdr);
    size_t body = 16 + hlen;
    for (size_t i = 0; i < c->n_arrays; i++)
        body += c->counts[i] * sizeof(float);
    if (!(buf = malloc(body + 8))) goto out;
    memcpy(buf, MAGIC, 8);
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &hlen, 4);
    memcpy(buf + 16, hdr, hlen);
    size_t off = 16 + hlen;
    for (size_t i = 0; i < c->n_arrays; i++) {
        memcpy(buf + off, c->arrays[i], c->counts[i] * sizeof(float));
        off += c->counts[i] * sizeof(float);
    }
    uint64_t h = XXH64(buf, body, 0);
    memcpy(buf + body, &h, 8);
    rc = moeh_file_write_atomic(path, buf, body + 8, err);
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "%s: out of memory", path);
    cJSON_Delete(j);
    free(hdr);
    free(buf);
    return rc;
}

static int get_num(const cJSON *j, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0) return -1;
    *out = v->valuedouble;
    return 0;
}

/* A header count: a whole number in [0, max]; otherwise says which field and what was expected. */
static int get_int(const cJSON *j, const char *key, double max, double *out, const char *path,
                   moeh_err_t *err)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (!cJSON_IsNumber(v))
        return moeh_errf(err, -EBADMSG, "%s: header field '%s' missing or not a number", path, key);
    double x = v->valuedouble;
    if (!isfinite(x) || x < 0 || x > max || x != floor(x))
        return moeh_errf(err, -EBADMSG,
                         "%s: header field '%s' is %g, expected an integer in 0..%.0f", path, key,
                         x, max);
    *out = x;
    return 0;
}

/* Limits of the data shapes a site may declare (the same as proto/wire.c's hello check). */
static const double shape_max[4] = {1u << 20, 4096, 1000, 1024};
static const char *const shape_name[4] = {"n_static", "n_vars", "n_steps", "img_size"};

/* Checks the values of a loaded array: every float finite (but in "select_state", where the
 * selected round's metrics of a slice without positives or negatives are NaN by definition);
 * the stored data shapes within the model's limits (before anything allocates a model from
 * them); the normalisation's standard deviations (second half of "norm") positive. */
static int check_array(const char *path, const char *name, const float *a, size_t n,
                       moeh_err_t *err)
{
    const int may_be_nan = strcmp(name, "select_state") == 0;
    for (size_t k = 0; k < n; k++)
        if (!isfinite(a[k]) && !(may_be_nan && isnan(a[k])))
            return moeh_errf(err, -EBADMSG, "%s: array '%s' element %zu is %g, expected finite",
                             path, name, k, (double)a[k]);
    if (strcmp(name, "data_shape") == 0) {
        if (n != 4)
            return moeh_errf(err, -EBADMSG, "%s: array 'data_shape' has %zu values, expected 4",
                             path, n);
        for (size_t k = 0; k < 4; k++)
            if (a[k] < 0 || a[k] > shape_max[k] || a[k] != floorf(a[k]))
                return moeh_errf(err, -EBADMSG,
                                 "%s: data_shape %s is %g, expected an integer in 0..%.0f", path,
                                 shape_name[k], (double)a[k], shape_max[k]);
    }
    if (strcmp(name, "norm") == 0) {
        if (n % 2)
            return moeh_errf(err, -EBADMSG,
                             "%s: array 'norm' has %zu values, expected an even count", path, n);
        for (size_t k = n / 2; k < n; k++)
            if (!(a[k] > 0))
                return moeh_errf(err, -EBADMSG,
                                 "%s: array 'norm' standard deviation %zu is %g, expected > 0",
                                 path, k - n / 2, (double)a[k]);
    }
    return 0;
}

int moeh_ckpt_load(const char *path, moeh_ckpt_t *c, moeh_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    cJSON *j = NULL;
    memset(c, 0, sizeof *c);
    int rc = moeh_file_read_all(path, (size_t)1 << 34, &buf, &len, err);
    if (rc) return rc;
    rc = -EBADMSG;
    uint32_t version, hlen;
    if (len < 24 || memcmp(buf, MAGIC, 8) != 0) {
        moeh_errf(err, rc, "%s: not a moeh checkpoint", path);
        goto out;
    }
    uint64_t h, want;
    memcpy(&want, buf + len - 8, 8);
    h = XXH64(buf, len - 8, 0);
    if (h != want) {
        moeh_errf(err, rc, "%s: checksum mismatch (the file is damaged)", path);
        goto out;
    }
    memcpy(&version, buf + 8, 4);
    memcpy(&hlen, buf + 12, 4);
    if (version != 1) {
        moeh_errf(err, rc, "%s: checkpoint version %u, this moeh reads version 1", path, version);
        goto out;
    }
    if ((size_t)hlen > len - 24) {
        moeh_errf(err, rc, "%s: truncated (header)", path);
        goto out;
    }
    char save = buf[16 + hlen];
    buf[16 + hlen] = '\0';
    j = cJSON_Parse(buf + 16);
    buf[16 + hlen] = save;
    double round, mv, n_params, n_groups;
    const char *hash = j ? cJSON_GetStringValue(cJSON_GetObjectItem(j, "spec_hash")) : NULL;
    const cJSON *arr = j ? cJSON_GetObjectItem(j, "arrays") : NULL;
    if (!j || !hash || !cJSON_IsArray(arr)) {
        moeh_errf(err, rc, "%s: header is not JSON with spec_hash (string) and arrays (list)",
                  path);
        goto out;
    }
    if (get_int(j, "round", UINT32_MAX, &round, path, err) ||
        get_int(j, "model_version", 9007199254740992.0, &mv, path, err) ||
        get_int(j, "n_params", MOEH_CKPT_MAX_PARAMS, &n_params, path, err) ||
        get_int(j, "n_groups", 1024, &n_groups, path, err))
        goto out;
    c->round = (uint32_t)round;
    c->model_version = (uint64_t)mv;
    c->spec_hash = strtoull(hash, NULL, 16);
    c->n_params = (size_t)n_params;
    c->n_groups = (size_t)n_groups;
    size_t na = (size_t)cJSON_GetArraySize(arr), off = 16 + hlen, need = off + 8;
    if (na > MOEH_CKPT_MAX_ARRAYS) {
        moeh_errf(err, rc, "%s: %zu arrays, at most %d", path, na, MOEH_CKPT_MAX_ARRAYS);
        goto out;
    }
    for (size_t i = 0; i < na; i++) {
        const cJSON *a = cJSON_GetArrayItem(arr, (int)i);
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(a, "name"));
        double cnt;
        if (!name || strlen(name) >= sizeof c->names[i] || get_num(a, "count", &cnt) ||
            cnt > (double)MOEH_CKPT_MAX_PARAMS || cnt != floor(cnt)) {
            moeh_errf(err, rc, "%s: array %zu has no valid name or count", path, i);
            goto out;
        }
        snprintf(c->names[i], sizeof c->names[i], "%s", name);
        c->counts[i] = (size_t)cnt;
        need += c->counts[i] * sizeof(float);
    }
    if (need != len) {
        moeh_errf(err, rc, "%s: the arrays listed need %zu bytes, the file has %zu", path, need,
                  len);
        goto out;
    }
    for (size_t i = 0; i < na; i++) {
        if (!(c->arrays[i] = malloc(c->counts[i] * sizeof(float) + 1))) {
            rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
            goto out;
        }
        memcpy(c->arrays[i], buf + off, c->counts[i] * sizeof(float));
        off += c->counts[i] * sizeof(float);
        c->n_arrays++;
        if ((rc = check_array(path, c->names[i], c->arrays[i], c->counts[i], err))) goto out;
    }
    rc = 0;
out:
    if (rc) moeh_ckpt_free(c);
    cJSON_Delete(j);
    free(buf);
    return rc;
}

void moeh_ckpt_free(moeh_ckpt_t *c)
{
    for (size_t i = 0; i < c->n_arrays; i++)
        free(c->arrays[i]);
    memset(c, 0, sizeof *c);
}

float *moeh_ckpt_array(const moeh_ckpt_t *c, const char *name, size_t count)
{
    for (size_t i = 0; i < c->n_arrays; i++)
        if (strcmp(c->names[i], name) == 0 && c->counts[i] == count) return c->arrays[i];
    return NULL;
}

int moeh_ckpt_remove_stale(const char *path, size_t *removed, moeh_err_t *err)
{
    *removed = 0;
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (size_t)(slash - path) : 1;
    if (dlen >= sizeof dir || strlen(base) + 5 >= sizeof prefix)
        return moeh_errf(err, -ENAMETOOLONG, "%s: path too long", path);
    memcpy(dir, slash ? path : ".", dlen);
    dir[dlen] = '\0';
    if (dlen == 0) snprintf(dir, sizeof dir, "/");
    snprintf(prefix, sizeof prefix, "%s.tmp.", base);
    size_t plen = strlen(prefix);
    DIR *d = opendir(dir);
    if (!d) return moeh_errf(err, -errno, "%s: cannot list: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const char *tail = e->d_name + plen;
        char *end;
        if (strncmp(e->d_name, prefix, plen) != 0 || *tail < '0' || *tail > '9') continue;
        errno = 0;
        long pid = strtol(tail, &end, 10);
        if (*end || errno || pid <= 0 || pid > INT_MAX) continue;
        if (pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno == EPERM) {
            MOEH_WARN("%s/%s: left in place, process %ld (its writer?) is alive", dir, e->d_name,
                      pid);
            continue;
        }
        char full[PATH_MAX + NAME_MAX + 2];
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        if (unlink(full) != 0) {
            rc = moeh_errf(err, -errno, "%s: cannot remove: %s", full, strerror(errno));
            break;
        }
        MOEH_INFO("removed %s, a temporary checkpoint left by an interrupted write (pid %ld)", full,
                  pid);
        (*removed)++;
    }
    closedir(d);
    return rc;
}
