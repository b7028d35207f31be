/* dp_ledger.c - DP accounting of the coordinator and dp_ledger.json (see moeh_dp_ledger.h). */
#include "moeh_dp_ledger.h"

#include "moeh_dp.h"
#include "moeh_wire.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

int moeh_dp_ledger_init(moeh_dp_ledger_t *l, float clip, float noise, float delta, uint32_t sites,
                        const char *out_dir)
{
    memset(l, 0, sizeof *l);
    l->clip = clip;
    l->noise = noise;
    l->delta = delta;
    l->sites = sites;
    if (moeh_path_join(l->path, sizeof l->path, out_dir, "dp_ledger.json")) return -ENAMETOOLONG;
    return 0;
}

uint64_t moeh_dp_ledger_coord_releases(const moeh_dp_ledger_t *l, uint64_t most_seen)
{
    return l->coord_base + most_seen;
}

void moeh_dp_ledger_epsilons(const moeh_dp_ledger_t *l, uint64_t most_seen, double *eps,
                             double *eps_coord)
{
    double z = l->noise, zs = z / sqrt((double)l->sites);
    moeh_dp_release_t agg = {z, l->rounds};
    moeh_dp_release_t seen[2] = {{z, l->rounds_secagg},
                                 {zs, moeh_dp_ledger_coord_releases(l, most_seen)}};
    *eps = moeh_dp_epsilon(&agg, 1, l->delta, NULL);
    *eps_coord = moeh_dp_epsilon(seen, 2, l->delta, NULL);
}

void moeh_dp_ledger_release(moeh_dp_ledger_t *l, int secagg)
{
    l->rounds++;
    l->rounds_secagg += secagg != 0;
}

int moeh_dp_ledger_write(const moeh_dp_ledger_t *l, uint64_t most_seen, moeh_err_t *fatal)
{
    moeh_err_t err = {0};
    char *s = NULL;
    int rc = -ENOMEM;
    cJSON *j = cJSON_CreateObject();
    if (j) {
        cJSON_AddNumberToObject(j, "dp_clip", l->clip);
        cJSON_AddNumberToObject(j, "dp_noise", l->noise);
        cJSON_AddNumberToObject(j, "dp_sites", l->sites);
        cJSON_AddNumberToObject(j, "dp_delta", l->delta);
        cJSON_AddNumberToObject(j, "rounds_released", (double)l->rounds);
        cJSON_AddNumberToObject(j, "rounds_secagg", (double)l->rounds_secagg);
        cJSON_AddNumberToObject(j, "coordinator_releases",
                                (double)moeh_dp_ledger_coord_releases(l, most_seen));
        s = cJSON_PrintUnformatted(j);
    }
    if (!s) {
        moeh_errf(&err, rc, "out of memory");
        goto out;
    }
    size_t n = strlen(s);
    s[n] = '\n'; /* the terminator becomes the file's last newline */
    rc = moeh_file_write_atomic(l->path, s, n + 1, &err);
out:
    if (rc) moeh_errf(fatal, rc, "cannot write the DP ledger: %s", err.msg);
    cJSON_Delete(j);
    free(s);
    return rc;
}

int moeh_dp_ledger_start(moeh_dp_ledger_t *l, moeh_err_t *err)
{
    if (unlink(l->path) != 0 && errno != ENOENT)
        return moeh_errf(err, -errno, "%s: cannot remove: %s", l->path, strerror(errno));
    return moeh_dp_ledger_on(l) ? moeh_dp_ledger_write(l, 0, err) : 0;
}

static int ledger_u64(const cJSON *j, const char *key, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0)
        return -1;
    *out = (uint64_t)v->valuedouble;
    return 0;
}

int moeh_dp_ledger_load(moeh_dp_ledger_t *l, moeh_err_t *err)
{
    int dp = moeh_dp_ledger_on(l);
    int have = access(l->path, F_OK) == 0;
    if (!dp && !have) return 0;
    if (!dp)
        return moeh_errf(err, -EINVAL,
                         "%s: the run to resume used differential privacy; resume it with the "
                         "same --dp-clip and --dp-noise",
                         l->path);
    if (!have)
        return moeh_errf(err, -EINVAL,
                         "%s is missing: the run to resume did not use differential privacy, so "
                         "its rounds so far are not private; start a new run with --dp-clip",
                         l->path);
    char *buf = NULL;
    size_t len = 0;
    int rc = moeh_file_read_all(l->path, 4096, &buf, &len, err);
    if (rc) return rc;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    const cJSON *noise = j ? cJSON_GetObjectItem(j, "dp_noise") : NULL;
    uint64_t sites = 0;
    if (!j || !cJSON_IsNumber(noise) || ledger_u64(j, "dp_sites", &sites) ||
        ledger_u64(j, "rounds_released", &l->rounds) ||
        ledger_u64(j, "rounds_secagg", &l->rounds_secagg) ||
        ledger_u64(j, "coordinator_releases", &l->coord_base)) {
        rc = moeh_errf(err, -EBADMSG, "%s: not a DP ledger (a field is missing or wrong)", l->path);
    } else if (!(noise->valuedouble >= 0 && noise->valuedouble <= MOEH_WIRE_DP_MAX_NOISE) ||
               (float)noise->valuedouble != l->noise || sites != l->sites) {
        rc = moeh_errf(err, -EINVAL,
                       "%s: the run to resume used --dp-noise %g over --min-sites %llu; this one "
                       "asks for %g over %u (resume with the same values)",
                       l->path, noise->valuedouble, (unsigned long long)sites, (double)l->noise,
                       l->sites);
    } else {
        MOEH_INFO("DP: resuming after %llu released rounds (%llu with secure aggregation; at most "
                  "%llu updates of one site seen by the coordinator)",
                  (unsigned long long)l->rounds, (unsigned long long)l->rounds_secagg,
                  (unsigned long long)l->coord_base);
    }
    cJSON_Delete(j);
    return rc;
}
