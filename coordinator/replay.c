/* replay.c - an earlier run's participation, replayed by a clean run (see
 * moeh_coordinator_testing.h): which sites' replies entered each sum of each round. */
#include "coord_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_KINDS 3 /* statistics, training, validation */

typedef struct {
    int have;
    char **ids;
    size_t n;
} idset_t;

typedef struct {
    idset_t set[N_KINDS];
    double w_cap;
    uint64_t hash;
    int have_hash;
} rec_t;

struct moeh_coord_replay {
    rec_t *rounds; /* index: round (0: the statistics phase) */
    size_t n_rounds;
};

static int kind_of(moeh_coord_phase_t ph)
{
    return ph == MOEH_COORD_STATS      ? 0
           : ph == MOEH_COORD_TRAIN    ? 1
           : ph == MOEH_COORD_VALIDATE ? 2
                                       : -1;
}

static void idset_clear(idset_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->ids[i]);
    free(s->ids);
    memset(s, 0, sizeof *s);
}

void moeh_coord_replay_destroy(moeh_coord_replay_t **self_p)
{
    moeh_coord_replay_t *r = self_p ? *self_p : NULL;
    if (!r) return;
    for (size_t i = 0; i < r->n_rounds; i++)
        for (int k = 0; k < N_KINDS; k++)
            idset_clear(&r->rounds[i].set[k]);
    free(r->rounds);
    free(r);
    *self_p = NULL;
}

static rec_t *round_rec(moeh_coord_replay_t *r, double round)
{
    if (!(round >= 0 && round <= 1e6) || round != (double)(uint32_t)round) return NULL;
    size_t i = (size_t)round;
    if (i >= r->n_rounds) {
        rec_t *g = realloc(r->rounds, (i + 1) * sizeof *g);
        if (!g) return NULL;
        memset(g + r->n_rounds, 0, (i + 1 - r->n_rounds) * sizeof *g);
        r->rounds = g;
        r->n_rounds = i + 1;
    }
    return &r->rounds[i];
}

/* set = the strings of array `a` (a later line of the same round and kind replaces it). */
static int take_ids(idset_t *set, const cJSON *a)
{
    if (!cJSON_IsArray(a)) return -EINVAL;
    idset_clear(set);
    size_t n = (size_t)cJSON_GetArraySize(a);
    set->ids = calloc(n + 1, sizeof *set->ids);
    if (!set->ids) return -ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it)) return -EINVAL;
        if (!(set->ids[set->n] = strdup(it->valuestring))) return -ENOMEM;
        set->n++;
    }
    set->have = 1;
    return 0;
}

/* One metrics line: the participation it carries, if any. */
static int take_line(moeh_coord_replay_t *r, const cJSON *j, const char **bad)
{
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    if (!cJSON_IsString(ev)) return 0;
    const char *e = ev->valuestring;
    int kind = !strcmp(e, "stats") ? 0 : !strcmp(e, "train") ? 1 : !strcmp(e, "eval") ? 2 : -1;
    if (kind < 0) return 0;
    const char *key = kind == 2 ? "val_contributors" : "contributors";
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!ids) return 0; /* a run that recorded no participation for this line */
    const cJSON *rd = cJSON_GetObjectItemCaseSensitive(j, "round");
    rec_t *rec = round_rec(r, kind == 0 ? 0.0 : cJSON_IsNumber(rd) ? rd->valuedouble : -1.0);
    if (!rec) {
        *bad = "\"round\" (a round number)";
        return -EINVAL;
    }
    int rc = take_ids(&rec->set[kind], ids);
    if (rc) {
        *bad = rc == -ENOMEM ? "memory" : key;
        return rc;
    }
    if (kind != 1) return 0;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "w_cap");
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "model_hash");
    rec->w_cap = cJSON_IsNumber(w) && w->valuedouble > 0 ? w->valuedouble : 0;
    rec->have_hash = 0;
    if (cJSON_IsString(h)) {
        char *end;
        errno = 0;
        rec->hash = strtoull(h->valuestring, &end, 16);
        rec->have_hash = !errno && end != h->valuestring && !*end;
    }
    return 0;
}

int moeh_coord_replay_load(const char *metrics_path, moeh_coord_replay_t **out, moeh_err_t *err)
{
    *out = NULL;
    FILE *f = fopen(metrics_path, "r");
    if (!f) return moeh_errf(err, -errno, "%s: %s", metrics_path, strerror(errno));
    moeh_coord_replay_t *r = calloc(1, sizeof *r);
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    int rc = r ? 0 : moeh_errf(err, -ENOMEM, "out of memory");
    while (!rc && getline(&line, &cap, f) > 0) {
        lineno++;
        cJSON *j = cJSON_Parse(line);
        const char *bad = "the line (one JSON object)";
        if (!cJSON_IsObject(j) || (rc = take_line(r, j, &bad)) != 0)
            rc = moeh_errf(err, rc ? rc : -EINVAL, "%s:%zu: bad %s", metrics_path, lineno, bad);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    if (!rc && (!r->n_rounds || !r->rounds[0].set[0].have))
        rc = moeh_errf(err, -EINVAL,
                       "%s: no participation recorded (a \"stats\" line with \"contributors\")",
                       metrics_path);
    if (rc) {
        moeh_coord_replay_destroy(&r);
        return rc;
    }
    *out = r;
    return 0;
}

int moeh_coord_replay_member(const moeh_coord_replay_t *r, uint32_t round, moeh_coord_phase_t phase,
                             const char *site)
{
    int k = kind_of(phase);
    if (!r || k < 0 || (k == 0 ? 0 : round) >= r->n_rounds) return -1;
    const idset_t *s = &r->rounds[k == 0 ? 0 : round].set[k];
    if (!s->have) return -1;
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->ids[i], site)) return 1;
    return 0;
}

double moeh_coord_replay_w_cap(const moeh_coord_replay_t *r, uint32_t round)
{
    return r && round < r->n_rounds ? r->rounds[round].w_cap : 0;
}

uint64_t moeh_coord_replay_model_hash(const moeh_coord_replay_t *r, uint32_t round, int *have)
{
    *have = r && round < r->n_rounds && r->rounds[round].have_hash;
    return *have ? r->rounds[round].hash : 0;
}

void moeh_coord_core_set_replay(moeh_coord_core_t *c, const moeh_coord_replay_t *r)
{
    c->replay = r;
}
